"""Sequential: one stream, ops in topological order — what eager PyTorch does."""

from __future__ import annotations

from dataclasses import dataclass

from schedulers.base import Profiler, register
from simgpu.graph import OpGraph
from simgpu.schedule import StreamSchedule


@register("sequential")
@dataclass
class Sequential:
    """One stream, topological order (eager PyTorch); the baseline every speedup uses."""

    graph_mode: bool = False

    def schedule(self, graph: OpGraph, profiler: Profiler) -> StreamSchedule:
        return StreamSchedule([list(graph.topo_order)], graph_mode=self.graph_mode)


@register("sequential-graph", runtime="cuda-graph")
@dataclass
class SequentialGraph(Sequential):
    """Sequential captured in one CUDA Graph: no per-kernel launch cost, no concurrency."""

    graph_mode: bool = True
