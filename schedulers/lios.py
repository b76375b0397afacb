"""LIOS (Ping et al., IEEE TSC 2023): list scheduling driven by a latency model.

Operator prioritising: each op's upward rank is its own latency plus the largest rank
among its successors, so long chains of expensive ops go first. Stream selection: the
ready op of highest rank goes to the stream where it would finish earliest, given when
that stream frees up and when its inputs finish. Latencies are the Profiler's per-op
measurements (each op run alone), one per distinct op signature — far fewer than the
stage measurements IOS needs, which is the paper's point.

The model assumes streams run side by side without slowing each other; the simulator
does not, so what the model promises and what the schedule achieves can differ.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from schedulers.base import Profiler, SchedulerError, register
from simgpu.graph import OpGraph
from simgpu.schedule import StreamSchedule


def op_latencies(graph: OpGraph, profiler: Profiler) -> dict[str, float]:
    return {n: profiler.op_latency_us(graph, n) for n in graph.topo_order}


def upward_rank(graph: OpGraph, latency: dict[str, float]) -> dict[str, float]:
    """rank(v) = latency(v) + max over successors s of rank(s) (0 for a sink)."""
    rank: dict[str, float] = {}
    for n in reversed(graph.topo_order):
        rank[n] = latency[n] + max((rank[s] for s in graph.successors(n)), default=0.0)
    return rank


def priority_order(graph: OpGraph, rank: dict[str, float]) -> dict[str, tuple[float, int]]:
    """Sort key: higher rank first, then topological position. Rank never increases
    along an edge, so a producer never sorts after its consumer, and ties are
    deterministic."""
    pos = {n: i for i, n in enumerate(graph.topo_order)}
    return {n: (-rank[n], pos[n]) for n in graph.ops}


@register("lios", runtime="cudnn")
@dataclass
class LIOS:
    """LIOS: latency-rank priority, earliest-finish stream selection over k streams."""

    streams: int = 4
    graph_mode: bool = False

    def schedule(self, graph: OpGraph, profiler: Profiler) -> StreamSchedule:
        if self.streams < 1:
            raise SchedulerError(f"lios: streams must be at least 1, got {self.streams}")
        lat = op_latencies(graph, profiler)
        rank = upward_rank(graph, lat)
        key = priority_order(graph, rank)
        indeg = {n: len(graph.predecessors(n)) for n in graph.ops}
        ready = [(key[n], n) for n in graph.ops if indeg[n] == 0]
        heapq.heapify(ready)
        free = [0.0] * self.streams  # when each stream's last op ends, in the model
        finish: dict[str, float] = {}
        out: list[list[str]] = [[] for _ in range(self.streams)]
        while ready:
            _, op = heapq.heappop(ready)
            inputs_done = max((finish[u] for u in graph.predecessors(op)), default=0.0)
            s = min(range(self.streams), key=lambda i: (max(free[i], inputs_done), i))
            finish[op] = free[s] = max(free[s], inputs_done) + lat[op]
            out[s].append(op)
            for v in graph.successors(op):
                indeg[v] -= 1
                if indeg[v] == 0:
                    heapq.heappush(ready, (key[v], v))
        streams = [s for s in out if s]
        return StreamSchedule(
            streams,
            graph_mode=self.graph_mode,
            meta={"model_latency_us": max(finish.values(), default=0.0)},
        )
