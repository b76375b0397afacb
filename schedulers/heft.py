"""HEFT (Topcuoglu et al., 2002) on the streams of one GPU.

Classic list scheduling: ops in decreasing upward rank (the same latency rank as
LIOS), each placed on the stream where it finishes earliest. Two things set it apart
from LIOS: a dependency that crosses streams costs an event (``event_latency_us``)
before the consumer may start, and placement is *insertion-based* — an op may go into
an idle gap between ops already on a stream if it fits there, not only at the end.
The streams are homogeneous (one GPU), so every op has the same cost on each.

Each stream's ops are issued in the order of their model start times; since every
op starts no earlier than its inputs end, that order never contradicts a dependency.

Under a memory limit, as LIOS (schedulers._memory): an op whose allocation would take
the estimated live bytes over the limit is delayed into a slot after an op whose end
frees enough, on that op's stream, so the stream order enforces the delay in the run.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass

from schedulers._memory import FREE_CANDIDATES, LOOKAHEAD, LiveModel, fit_list_schedule
from schedulers.base import Profiler, SchedulerError, register
from schedulers.lios import op_latencies, priority_order, upward_rank
from simgpu.graph import OpGraph
from simgpu.schedule import StreamSchedule

Slot = tuple[float, float, int]  # (model end, model start, stream)


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


@register("heft", runtime="cudnn", memory_aware=True)
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

        def build(width: int, model: LiveModel | None) -> StreamSchedule:
            return heft_schedule(graph, lat, order, width, comm, self.graph_mode, model)

        if profiler.memory_limit is None:
            return build(self.streams, None)
        return fit_list_schedule("heft", graph, profiler, build, self.streams, self.graph_mode)


def heft_schedule(
    graph: OpGraph,
    lat: dict[str, float],
    order: list[str],
    width: int,
    comm: float,
    graph_mode: bool,
    model: LiveModel | None = None,
) -> StreamSchedule:
    """HEFT's placement of ``order`` (rank order) on ``width`` streams. With a ``model``
    (a memory limit), an op goes only where the estimated live bytes stay within its
    budget: the earliest-finishing stream slot where they do; else, delayed, after an
    op whose end frees bytes, on that op's stream (so stream order enforces the delay
    in the real run); else a lower-ranked ready op goes first (at most ``LOOKAHEAD``
    tried; if none fits, the first is placed anyway, counted in ``model.forced``)."""
    busy: list[list[tuple[float, float, int]]] = [[] for _ in range(width)]
    where: dict[str, int] = {}
    finish: dict[str, float] = {}
    seq_of = {op: i for i, op in enumerate(order)}

    def placements(op: str) -> list[Slot]:
        out = []
        for s in range(width):
            ready = max(
                (finish[u] + (comm if where[u] != s else 0.0) for u in graph.predecessors(op)),
                default=0.0,
            )
            start = earliest_slot(busy[s], ready, lat[op])
            out.append((start + lat[op], start, s))
        return out

    def delayed(
        op: str, natural: list[tuple[float, float, int]]
    ) -> tuple[float, float, int] | None:
        assert model is not None
        earliest = min(start for _, start, _ in natural)
        for t, x in model.frees_after(earliest)[:FREE_CANDIDATES]:
            s = where[x]
            start = earliest_slot(busy[s], max(natural[s][1], t), lat[op])
            if model.fits(op, start, start + lat[op]):
                return (start + lat[op], start, s)
        return None

    remaining = list(order)
    while remaining:
        if model is None:
            op = remaining.pop(0)
            best = min(placements(op))
        else:
            op, best = _fitting(graph, remaining, where, placements, delayed, model)
            remaining.remove(op)
        end, start, s = best
        bisect.insort(busy[s], (start, end, seq_of[op]))
        where[op] = s
        finish[op] = end
        if model is not None:
            model.place(op, start, end)
    streams = [[order[seq] for _, _, seq in b] for b in busy if b]
    meta: dict = {"model_latency_us": max(finish.values(), default=0.0)}
    if model is not None:
        meta["memory_model_over"] = model.forced
    return StreamSchedule(streams, graph_mode=graph_mode, meta=meta)


def _fitting(
    graph: OpGraph,
    remaining: list[str],
    where: dict[str, int],
    placements: Callable[[str], list[Slot]],
    delayed: Callable[[str, list[Slot]], Slot | None],
    model: LiveModel,
) -> tuple[str, Slot]:
    """The highest-ranked ready op that fits (undelayed, else delayed) and its slot. If
    none of those tried fits, the one that raises the estimate least (then grows the
    live set least, then the first) at its earliest-finishing slot."""
    tried = []
    for op in remaining:
        if len(tried) >= LOOKAHEAD:
            break
        if any(u not in where for u in graph.predecessors(op)):
            continue
        tried.append(op)
        natural = placements(op)
        fitting = [p for p in natural if model.fits(op, p[1], p[0])]
        if fitting:
            return op, min(fitting)
        late = delayed(op, natural)
        if late is not None:
            return op, late
    least = None
    for i, op in enumerate(tried):
        slot = min(placements(op))
        cand = (*model.assess(op, slot[1], slot[0]), i, op, slot)
        if least is None or cand < least:
            least = cand
    assert least is not None
    model.forced += 1
    return least[3], least[4]
