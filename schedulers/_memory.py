"""What the list schedulers (LIOS, HEFT) and the stream-merging ones (Nimble, Opara)
share to keep a schedule within ``Profiler.memory_limit`` (issue 17).

* :class:`LiveModel` estimates live bytes along a list scheduler's model timeline, so
  placing an op can be delayed until the tensors it waits for are freed. The model
  timeline is not the simulation (streams slow each other down there), so
* :func:`fit_list_schedule` replays what the estimate built (``Profiler.memory``) and
  tightens in a bounded ladder: a lower estimated budget, then fewer streams, then one
  stream;
* :func:`merge_until_fits` merges two streams at a time, chosen where the replayed peak
  is, until the replay fits;
* :func:`one_stream` is where both end at worst: one stream in a topological order,
  whose peak is that order's sequential peak, or a :class:`SchedulerError` saying why.

Every replay is a full simulation, so each loop here is bounded by a constant.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from schedulers.base import Profiler, SchedulerError
from simgpu.graph import OpGraph
from simgpu.memory import MB, MemoryReport, Tensors, account
from simgpu.schedule import StreamSchedule
from simgpu.sim.engine import simulate
from simgpu.timeline import Timeline

INF = math.inf
# replays (simulations) a stream-merging scheduler spends before one stream
MERGE_REPLAYS = 12
# merges per replay: one at a time for this many replays, then doubling
MERGE_SINGLE_STEPS = 4
# estimated budgets a list scheduler tries per stream count before halving the streams
TRIES_PER_WIDTH = 3
# ready ops a list scheduler tries (in priority order) before forcing the first
LOOKAHEAD = 16
# free instants a delayed op is tried after (earliest first)
FREE_CANDIDATES = 32


# --- the estimate along a model timeline ------------------------------------------------


class LiveModel:
    """Activation bytes live along a list scheduler's model timeline.

    An op's output lives from its model start to the model end of its last reader; while
    a reader is still unplaced that end is unknown and counted as never, so a placement
    that fits stays fitting whatever is placed later. A workspace lives while its op
    runs. Weights and graph inputs are resident: ``budget`` is the limit less
    :meth:`Tensors.resident`.

    A placement that leaves more bytes live than it frees must also leave room for the
    largest allocation still to come: without that headroom, branches started while
    there was room could each need one more tensor to go on, and none could."""

    def __init__(self, tensors: Tensors, budget: int) -> None:
        self.t = tensors
        self.budget = budget
        self.forced = 0  # placements made although the estimate went over the budget
        self._inputs = set(tensors.inputs)
        self._reads: dict[str, list[str]] = {op: [] for op in tensors.graph.ops}
        for r, users in tensors.readers.items():
            for u in users:
                self._reads[u].append(r)
        self._pending = {r: len(users) for r, users in tensors.readers.items()}
        self._last: dict[str, tuple[float, str]] = {}  # root -> (latest reader end, reader)
        self._end: dict[str, float] = {}
        # allocation key -> [start, end, bytes]; an unknown end is INF
        self._spans: dict[tuple[str, str], list] = {}
        self._ender: dict[tuple[str, str], str] = {}  # allocation key -> op whose end frees it
        # ops by what they allocate, largest first: the headroom still needed
        self._by_size = sorted((-sum(self.own(op)), op) for op in tensors.graph.ops)
        self._next = 0

    def own(self, op: str) -> tuple[int, int]:
        """(output bytes, workspace bytes) ``op`` allocates as it starts."""
        t = self.t
        out = t.size[op] if t.root[op] == op and op not in self._inputs else 0
        return out, t.workspace[op]

    def headroom(self, op: str) -> int:
        """The largest allocation of an unplaced op other than ``op``."""
        while self._next < len(self._by_size) and self._by_size[self._next][1] in self._end:
            self._next += 1
        for size, other in self._by_size[self._next :]:
            if other != op and other not in self._end:
                return -size
        return 0

    def assess(self, op: str, start: float, end: float) -> tuple[int, int]:
        """(estimated live bytes at their most from ``start`` on, bytes live once it ends
        less bytes live before), were ``op`` placed to run from ``start`` to ``end``."""
        closes = {}
        for r in self._reads[op]:
            if self._pending[r] == 1 and r not in self.t.outputs and ("out", r) in self._spans:
                closes[("out", r)] = max(self._last.get(r, (0.0, ""))[0], self._end[r], end)
        base = 0
        events: list[tuple[float, int, int]] = []  # frees (0) before allocations (1)
        for key, (s, e, b) in self._spans.items():
            e = closes.get(key, e)
            if e <= start:
                continue
            if s <= start:
                base += b
            else:
                events.append((s, 1, b))
            if e != INF:
                events.append((e, 0, -b))
        out, ws = self.own(op)
        base += out + ws
        if ws:
            events.append((end, 0, -ws))
        events.sort()
        peak = live = base
        for _, _, d in events:
            live += d
            peak = max(peak, live)
        return peak, out - sum(self._spans[k][2] for k in closes)

    def fits(self, op: str, start: float, end: float) -> bool:
        peak, growth = self.assess(op, start, end)
        if peak > self.budget:
            return False
        return growth <= 0 or peak + self.headroom(op) <= self.budget

    def place(self, op: str, start: float, end: float) -> None:
        self._end[op] = end
        out, ws = self.own(op)
        if out:
            self._spans[("out", op)] = [start, INF, out]
        if ws:
            self._spans[("ws", op)] = [start, end, ws]
            self._ender[("ws", op)] = op
        for r in self._reads[op]:
            self._pending[r] -= 1
            if end >= self._last.get(r, (-INF, ""))[0]:
                self._last[r] = (end, op)
            key = ("out", r)
            if self._pending[r] == 0 and r not in self.t.outputs and key in self._spans:
                last_end, last_op = self._last[r]
                self._spans[key][1] = max(last_end, self._end[r])
                self._ender[key] = last_op

    def frees_after(self, t: float) -> list[tuple[float, str]]:
        """(instant, op whose end frees bytes then) for every known free after ``t``,
        earliest first, one per instant."""
        out: dict[float, str] = {}
        for key, (_, e, _) in self._spans.items():
            if t < e < INF:
                op = self._ender[key]
                if e not in out or op < out[e]:
                    out[e] = op
        return sorted(out.items())


# --- the exact check and the fallback ---------------------------------------------------


def replay(
    profiler: Profiler, schedule: StreamSchedule, graph: OpGraph
) -> tuple[MemoryReport, Timeline]:
    """``Profiler.memory`` that also hands back the timeline (where the peak is)."""
    program = profiler.program(schedule, graph)
    tl = simulate(program, profiler.machine)
    return account(tl, program, schedule.graph or graph, profiler.machine), tl


def _mb(b: float) -> str:
    return f"{b / MB:.1f} MB"


def one_stream(
    who: str,
    graph: OpGraph,
    profiler: Profiler,
    orders: Sequence[Sequence[str]],
    graph_mode: bool,
    meta: dict,
) -> StreamSchedule:
    """One stream in whichever of ``orders`` (topological) has the least sequential peak
    (the first on ties), replayed; a SchedulerError naming the peak if even it is over."""
    limit = profiler.memory_limit
    assert limit is not None
    tensors = profiler.tensors(graph)
    best = min(orders, key=tensors.sequential_peak)
    sched = StreamSchedule([list(best)], graph_mode=graph_mode, meta=dict(meta))
    report = profiler.memory(sched, graph)
    meta["memory_replays"] = meta.get("memory_replays", 0) + 1
    if report.peak_allocated > limit:
        track = max(report.tracks, key=lambda tr: tr.peak_allocated)
        raise SchedulerError(
            f"{who}: memory limit {_mb(limit)} is below the {_mb(report.peak_allocated)} one "
            f"stream in topological order holds (at op '{track.peak_op}'; sequential peak "
            f"{_mb(tensors.sequential_peak())}): no {who} schedule fits"
        )
    sched.meta = {**meta, "memory_one_stream": True}
    return sched


# --- list schedulers: estimate, replay, tighten -----------------------------------------


def fit_list_schedule(
    who: str,
    graph: OpGraph,
    profiler: Profiler,
    build: Callable[[int, LiveModel | None], StreamSchedule],
    streams: int,
    graph_mode: bool,
) -> StreamSchedule:
    """Build with ``build(width, model)`` until the replay fits ``profiler.memory_limit``.

    Ladder: ``TRIES_PER_WIDTH`` estimated budgets per stream count (the limit less the
    resident bytes, then lowered by the replay's overshoot, at least an eighth each
    time), the stream count halved after each, down to one; then one stream in the
    unconstrained list order or the graph's order, whichever holds less."""
    limit = profiler.memory_limit
    assert limit is not None
    tensors = profiler.tensors(graph)
    full = limit - tensors.resident()
    replays = 0
    width = streams
    while True:
        budget = full
        for _ in range(TRIES_PER_WIDTH if width > 1 else 1):
            model = LiveModel(tensors, budget)
            sched = build(width, model)
            replays += 1
            peak = profiler.memory(sched, graph).peak_allocated
            if peak <= limit:
                sched.meta.update(
                    memory_replays=replays,
                    memory_streams=width,
                    memory_budget_mb=budget / MB,
                    memory_model_over=model.forced,
                )
                return sched
            budget -= max(peak - limit, budget // 8, 1)
            if budget <= 0:
                break
        if width == 1:
            break
        width = max(1, width // 2)
    listed = build(1, None).streams[0]
    meta = {"memory_replays": replays, "memory_streams": 1}
    return one_stream(who, graph, profiler, [listed, graph.topo_order], graph_mode, meta)


# --- stream mergers ---------------------------------------------------------------------


@dataclass
class _Load:
    """What a stream holds at the replay's peak instant."""

    running: bool  # one of its ops runs then (or allocates the peak)
    held: int  # bytes of its ops' outputs and workspaces live then


def peak_loads(
    streams: list[list[str]], tensors: Tensors, report: MemoryReport, tl: Timeline
) -> list[_Load]:
    """Per stream, whether it runs at the replay's peak instant and what it holds then."""
    track = max(report.tracks, key=lambda tr: tr.peak_allocated)
    at, peak_op = track.peak_at_us, track.peak_op
    span: dict[str, tuple[float, float]] = {}
    for k in tl.kernels:
        s = span.get(k.op)
        span[k.op] = (
            (k.start_us, k.end_us) if s is None else (min(s[0], k.start_us), max(s[1], k.end_us))
        )
    for c in tl.commands:
        if c.kind == "noop" and c.op is not None and c.op not in span:
            span[c.op] = (c.done_us, c.done_us)
    inputs = set(tensors.inputs)
    loads = []
    for ops in streams:
        running, held = False, 0
        for op in ops:
            start, end = span[op]
            if start > at:
                continue
            if end > at or op == peak_op:
                running = True
                if end > at:
                    held += tensors.workspace[op]
            if tensors.root[op] == op and op not in inputs:
                if op in tensors.outputs:
                    free = INF
                else:
                    free = max([end, *(span[u][1] for u in tensors.readers[op])])
                if free > at:
                    held += tensors.size[op]
        loads.append(_Load(running, held))
    return loads


def merge_pair(
    graph: OpGraph, streams: list[list[str]], a: int, b: int, ref: Sequence[str]
) -> tuple[list[list[str]], list[str]]:
    """Streams ``a`` < ``b`` become one at ``a``'s place, and a topological order of the
    result. The merged stream runs one of the two as far as dependencies let it before
    switching to the other (so their tensors are not live side by side); every other
    op is ordered as soon as it is ready, ties by position in ``ref`` (a topological
    order consistent with every stream)."""
    pos = {op: i for i, op in enumerate(ref)}
    owner = {op: si for si, s in enumerate(streams) for op in s}
    succ: dict[str, list[str]] = {op: list(graph.successors(op)) for op in graph.ops}
    indeg = {op: len(graph.predecessors(op)) for op in graph.ops}
    for s in streams:
        for x, y in itertools.pairwise(s):
            succ[x].append(y)
            indeg[y] += 1
    others: list[tuple[int, str]] = []
    pair: dict[int, str] = {}  # a stream is a chain here: at most one ready op of each

    def ready(op: str) -> None:
        si = owner[op]
        if si in (a, b):
            pair[si] = op
        else:
            heapq.heappush(others, (pos[op], op))

    for op in graph.ops:
        if indeg[op] == 0:
            ready(op)
    order: list[str] = []
    last: int | None = None
    while others or pair:
        if others:
            op = heapq.heappop(others)[1]
        else:
            si = last if last in pair else min(pair, key=lambda i: pos[pair[i]])
            op = pair.pop(si)
            last = si
        order.append(op)
        for v in succ[op]:
            indeg[v] -= 1
            if indeg[v] == 0:
                ready(v)
    merged = [op for op in order if owner[op] in (a, b)]
    out = [merged if i == a else s for i, s in enumerate(streams) if i != b]
    return out, order


def merge_until_fits(
    who: str,
    graph: OpGraph,
    profiler: Profiler,
    schedule: StreamSchedule,
    relaunch: Callable[[list[list[str]]], list[str]] | None = None,
) -> StreamSchedule:
    """Merge streams of ``schedule`` until its replay fits ``profiler.memory_limit``.

    Rule: at the replay's peak instant, the two streams that run then and hold the most
    bytes then merge (streams that do not run count after those that do; then the
    lower index); merged streams add up. One merge per replay for the first
    ``MERGE_SINGLE_STEPS`` replays, then twice as many each replay, at most
    ``MERGE_REPLAYS`` replays; then one stream. ``relaunch(streams)`` gives a
    scheduler's own launch order for merged streams (None: lowering's)."""
    limit = profiler.memory_limit
    if limit is None:
        return schedule
    tensors = profiler.tensors(graph)
    streams = [list(s) for s in schedule.streams]
    ref = list(schedule.order) if schedule.order is not None else list(graph.topo_order)
    merges = replays = 0
    current = schedule
    while True:
        report, tl = replay(profiler, current, graph)
        replays += 1
        if report.peak_allocated <= limit:
            current.meta = {**current.meta, "memory_merges": merges, "memory_replays": replays}
            return current
        if len(streams) == 1 or replays >= MERGE_REPLAYS:
            break
        loads = peak_loads(streams, tensors, report, tl)
        step = 1 if replays <= MERGE_SINGLE_STEPS else 2 ** (replays - MERGE_SINGLE_STEPS)
        for _ in range(min(step, len(streams) - 1)):
            rank = sorted(
                range(len(streams)), key=lambda i: (not loads[i].running, -loads[i].held, i)
            )
            a, b = sorted(rank[:2])
            streams, ref = merge_pair(graph, streams, a, b, ref)
            loads[a] = _Load(loads[a].running or loads[b].running, loads[a].held + loads[b].held)
            del loads[b]
            merges += 1
        order = relaunch(streams) if relaunch is not None else None
        if order is not None:
            ref = order
        current = StreamSchedule(
            streams,
            graph=schedule.graph,
            graph_mode=schedule.graph_mode,
            meta=dict(schedule.meta),
            order=order,
        )
    meta = {**schedule.meta, "memory_merges": merges, "memory_replays": replays}
    return one_stream(who, graph, profiler, [ref, graph.topo_order], schedule.graph_mode, meta)
