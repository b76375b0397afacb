"""HEFT (Topcuoglu et al., 2002) on the streams of one GPU.

Classic list scheduling: ops in decreasing upward rank (the same latency rank as
LIOS), each placed on the stream where it finishes earliest. Two things set it apart
from LIOS: a dependency that crosses streams costs an event (``event_latency_us``)
before the consumer may start, and placement is *insertion-based* — an op may go into
an idle gap between ops already on a stream if it fits there, not only at the end.
The streams are homogeneous (one GPU), so every op has the same cost on each.

Each stream's ops are issued in the order of their model start times; since every
op starts no earlier than its inputs end, that order never contradicts a dependency.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from schedulers.base import Profiler, SchedulerError, register
from schedulers.lios import op_latencies, priority_order, upward_rank
from simgpu.graph import OpGraph
from simgpu.schedule import StreamSchedule


def earliest_slot(busy: list[tuple[float, float, int]], ready: float, length: float) -> float:
    """Earliest start >= ``ready`` of an idle gap of ``length`` among ``busy`` intervals
    (sorted (start, end, seq) triples of one stream)."""
    t = ready
    for start, end, _ in busy:
        if end <= t:
            continue
        if start >= t + length:
            return t
        t = max(t, end)
    return t


@register("heft", runtime="cudnn")
@dataclass
class HEFT:
    """HEFT: rank order, insertion-based earliest-finish placement on k streams."""

    streams: int = 4
    graph_mode: bool = False

    def schedule(self, graph: OpGraph, profiler: Profiler) -> StreamSchedule:
        if self.streams < 1:
            raise SchedulerError(f"heft: streams must be at least 1, got {self.streams}")
        comm = profiler.gpu.event_latency_us
        lat = op_latencies(graph, profiler)
        key = priority_order(graph, upward_rank(graph, lat))
        order = sorted(graph.ops, key=key.__getitem__)
        busy: list[list[tuple[float, float, int]]] = [[] for _ in range(self.streams)]
        where: dict[str, int] = {}
        finish: dict[str, float] = {}
        for seq, op in enumerate(order):
            best: tuple[float, float, int] | None = None
            for s in range(self.streams):
                ready = max(
                    (finish[u] + (comm if where[u] != s else 0.0) for u in graph.predecessors(op)),
                    default=0.0,
                )
                start = earliest_slot(busy[s], ready, lat[op])
                cand = (start + lat[op], start, s)
                if best is None or cand < best:
                    best = cand
            assert best is not None
            end, start, s = best
            bisect.insort(busy[s], (start, end, seq))
            where[op] = s
            finish[op] = end
        streams = [[order[seq] for _, _, seq in b] for b in busy if b]
        return StreamSchedule(
            streams,
            graph_mode=self.graph_mode,
            meta={"model_latency_us": max(finish.values(), default=0.0)},
        )
