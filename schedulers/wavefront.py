"""Wavefront: Rammer-style (Ma et al., OSDI 2020) scheduling by waves of independent ops.

Rammer splits every operator into tasks (rTasks) and places them, at compile time, on
virtual execution units (vEUs) mapped onto the SMs; its wavefront policy walks the
graph in waves — an op joins the first wave after all its inputs — packs each wave's
tasks onto the vEUs by their profiled cost, and puts a device-wide barrier between
waves. The whole plan runs as one launch, without per-operator host work.

Our model at kernel granularity (the simulator's block dispatcher, not the schedule,
decides which SMs a kernel's blocks land on):

* wave = one stage; an op's wave is its longest-path depth from the graph's inputs,
  so the ops of a wave are independent and a wave starts right after the waves it
  depends on;
* vEU = a stream: the wave's ops are packed onto at most ``streams`` groups, longest
  profiled latency first onto the least-loaded group (LPT), which balances the wave;
* barrier = device-side events between waves, and the program is one CUDA Graph
  launch (``graph_mode``), standing in for Rammer's single compiled kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

from schedulers.base import Profiler, SchedulerError, register
from schedulers.lios import op_latencies
from simgpu.graph import OpGraph
from simgpu.schedule import StageSchedule


def waves(graph: OpGraph) -> list[list[str]]:
    """Ops by longest-path depth from the sources, each wave in topological order."""
    depth: dict[str, int] = {}
    for n in graph.topo_order:
        depth[n] = max((depth[u] + 1 for u in graph.predecessors(n)), default=0)
    out: list[list[str]] = [[] for _ in range(max(depth.values()) + 1)]
    for n in graph.topo_order:
        out[depth[n]].append(n)
    return out


def pack(ops: list[str], latency: dict[str, float], groups: int) -> list[list[str]]:
    """Longest processing time first onto the least-loaded group; ties by position."""
    pos = {n: i for i, n in enumerate(ops)}
    load = [0.0] * min(groups, len(ops))
    out: list[list[str]] = [[] for _ in load]
    for op in sorted(ops, key=lambda n: (-latency[n], pos[n])):
        g = min(range(len(load)), key=lambda i: (load[i], i))
        out[g].append(op)
        load[g] += latency[op]
    return [sorted(g, key=pos.__getitem__) for g in out if g]


@register("wavefront", runtime="cuda-graph")
@dataclass
class Wavefront:
    """Rammer-style waves: each BFS wave a stage of LPT-packed groups, one CUDA Graph."""

    streams: int = 8
    graph_mode: bool = True

    def schedule(self, graph: OpGraph, profiler: Profiler) -> StageSchedule:
        if self.streams < 1:
            raise SchedulerError(f"wavefront: streams must be at least 1, got {self.streams}")
        lat = op_latencies(graph, profiler)
        stages = [pack(w, lat, self.streams) for w in waves(graph)]
        return StageSchedule(
            stages, barrier="events", graph_mode=self.graph_mode, meta={"waves": len(stages)}
        )
