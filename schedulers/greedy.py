"""Greedy: the baseline of the IOS paper — every stage runs what is ready.

Each stage takes every op whose inputs all ran in earlier stages, at most ``max_ops``
of them (the rest wait for the next stage), one op per stream, and the stages are
separated by a host synchronize as IOS's engine does. Ready ops are taken in the
graph's definition order, so the schedule is deterministic. It needs no profiling:
its point is to show what concurrency without cost awareness buys (or loses).
"""

from __future__ import annotations

from dataclasses import dataclass

from schedulers.base import Profiler, SchedulerError, register
from simgpu.graph import OpGraph
from simgpu.schedule import StageSchedule


def ready_stages(graph: OpGraph, max_ops: int) -> list[list[str]]:
    """Ops by stage: each stage the first ``max_ops`` ready ops in definition order."""
    index = graph.index
    indeg = {n: len(graph.predecessors(n)) for n in graph.ops}
    ready = sorted((n for n, d in indeg.items() if d == 0), key=index.__getitem__)
    stages: list[list[str]] = []
    while ready:
        stage, ready = ready[:max_ops], ready[max_ops:]
        stages.append(stage)
        for op in stage:
            for v in graph.successors(op):
                indeg[v] -= 1
                if indeg[v] == 0:
                    ready.append(v)
        ready.sort(key=index.__getitem__)
    return stages


@register("greedy", runtime="cudnn")
@dataclass
class Greedy:
    """IOS's baseline: each stage runs every ready op (at most max_ops), one per stream."""

    max_ops: int = 10
    graph_mode: bool = False

    def schedule(self, graph: OpGraph, profiler: Profiler) -> StageSchedule:
        if self.max_ops < 1:
            raise SchedulerError(f"greedy: max_ops must be at least 1, got {self.max_ops}")
        stages = [[[op] for op in ops] for ops in ready_stages(graph, self.max_ops)]
        return StageSchedule(
            stages, barrier="sync", graph_mode=self.graph_mode, meta={"stages": len(stages)}
        )
