"""LIOS (Ping et al., IEEE TSC 2023): list scheduling driven by a latency model.

Operator prioritising: each op's upward rank is its own latency plus the largest rank
among its successors, so long chains of expensive ops go first. Stream selection: the
ready op of highest rank goes to the stream where it would finish earliest, given when
that stream frees up and when its inputs finish. Latencies are the Profiler's per-op
measurements (each op run alone), one per distinct op signature — far fewer than the
stage measurements IOS needs, which is the paper's point.

The model assumes streams run side by side without slowing each other; the simulator
does not, so what the model promises and what the schedule achieves can differ.

Under a memory limit (``Profiler.memory_limit``) the model also tracks estimated live
bytes (schedulers._memory.LiveModel): an op whose output and workspace would take them
over the limit waits — a lower-priority ready op goes first, or a later stream — until
its inputs' last readers have freed enough. The result is replayed exactly and, if
still over, rebuilt with a lower estimated budget, then fewer streams, at worst one.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass

from schedulers._memory import LOOKAHEAD, LiveModel, fit_list_schedule
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


@register("lios", runtime="cudnn", memory_aware=True)
@dataclass
class LIOS:
    """LIOS: latency-rank priority, earliest-finish stream selection over k streams."""

    streams: int = 4
    graph_mode: bool = False

    def schedule(self, graph: OpGraph, profiler: Profiler) -> StreamSchedule:
        if self.streams < 1:
            raise SchedulerError(f"lios: streams must be at least 1, got {self.streams}")
        lat = op_latencies(graph, profiler)
        key = priority_order(graph, upward_rank(graph, lat))

        def build(width: int, model: LiveModel | None) -> StreamSchedule:
            return list_schedule(graph, lat, key, width, self.graph_mode, model)

        if profiler.memory_limit is None:
            return build(self.streams, None)
        return fit_list_schedule("lios", graph, profiler, build, self.streams, self.graph_mode)


def list_schedule(
    graph: OpGraph,
    lat: dict[str, float],
    key: dict[str, tuple[float, int]],
    width: int,
    graph_mode: bool,
    model: LiveModel | None = None,
) -> StreamSchedule:
    """LIOS's list scheduling on ``width`` streams. With a ``model`` (a memory limit), an
    op is placed only where the estimated live bytes stay within its budget: on the
    earliest-finishing stream where they do, else a lower-priority ready op goes first
    and the op waits (at most ``LOOKAHEAD`` tried; if none fits, the first is placed
    anyway and counted in ``model.forced``)."""
    indeg = {n: len(graph.predecessors(n)) for n in graph.ops}
    ready = [(key[n], n) for n in graph.ops if indeg[n] == 0]
    heapq.heapify(ready)
    free = [0.0] * width  # when each stream's last op ends, in the model
    finish: dict[str, float] = {}
    out: list[list[str]] = [[] for _ in range(width)]

    def inputs_done(op: str) -> float:
        return max((finish[u] for u in graph.predecessors(op)), default=0.0)

    while ready:
        if model is None:
            _, op = heapq.heappop(ready)
            done = inputs_done(op)
            s = min(range(width), key=lambda i: (max(free[i], done), i))
        else:
            op, s = _fitting(graph, ready, free, lat, model, inputs_done)
            done = inputs_done(op)
        start = max(free[s], done)
        finish[op] = free[s] = start + lat[op]
        out[s].append(op)
        if model is not None:
            model.place(op, start, finish[op])
        for v in graph.successors(op):
            indeg[v] -= 1
            if indeg[v] == 0:
                heapq.heappush(ready, (key[v], v))
    streams = [s for s in out if s]
    meta: dict = {"model_latency_us": max(finish.values(), default=0.0)}
    if model is not None:
        meta["memory_model_over"] = model.forced
    return StreamSchedule(streams, graph_mode=graph_mode, meta=meta)


def _fitting(
    graph: OpGraph,
    ready: list[tuple[tuple[float, int], str]],
    free: list[float],
    lat: dict[str, float],
    model: LiveModel,
    inputs_done: Callable[[str], float],
) -> tuple[str, int]:
    """The highest-priority ready op that fits somewhere, and its earliest-start stream
    among those where it fits; popped from ``ready`` (the others tried go back). If none
    of those tried fits, the one that raises the estimate least (then grows the live set
    least, then the first) on its earliest-start stream."""
    tried = []
    choice: tuple[str, int] | None = None
    while ready and len(tried) < LOOKAHEAD and choice is None:
        item = heapq.heappop(ready)
        tried.append(item)
        op = item[1]
        done = inputs_done(op)
        for s in sorted(range(len(free)), key=lambda i: (max(free[i], done), i)):
            start = max(free[s], done)
            if model.fits(op, start, start + lat[op]):
                choice = (op, s)
                break
    if choice is None:
        least = None
        for i, (_, op) in enumerate(tried):
            done = inputs_done(op)
            s = min(range(len(free)), key=lambda j: (max(free[j], done), j))
            start = max(free[s], done)
            cand = (*model.assess(op, start, start + lat[op]), i, op, s)
            if least is None or cand < least:
                least = cand
        assert least is not None
        choice = (least[3], least[4])
        model.forced += 1
    for item in tried:
        if item[1] != choice[0]:
            heapq.heappush(ready, item)
    return choice
