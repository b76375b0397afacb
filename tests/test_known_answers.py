"""Known answers that pin what a scheduler decides, not only that its schedule is valid.

Each test here was checked against a broken scheduler that the rest of the suite let
through (issue 16 §3): LIOS choosing streams round-robin, LIOS taking the lowest rank
first, ``optimal`` never putting two components in one group, IOS allowing only s - 1
groups per stage. The brute forces below share no code with the schedulers: they
enumerate stage schedules naively and take every stage latency from the Profiler.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from functools import cache

import pytest

from schedulers.base import Profiler, make_scheduler
from schedulers.lios import upward_rank
from simgpu.graph import OpGraph
from simgpu.hardware import GPUSpec, Machine, preset
from simgpu.models.builder import GraphBuilder
from simgpu.schedule import StageSchedule, validate_schedule

V100 = preset("v100")
T4 = preset("t4")
REL = 1e-9


# --- LIOS: earliest-finish streams, highest rank first ---------------------------------------


def _fan() -> OpGraph:
    """x feeds one heavy 3x3 conv and three light 1x1 convs, all independent."""
    b = GraphBuilder("fan")
    x = b.input((1, 256, 28, 28), name="x")
    b.conv(x, 256, 3, padding=1, name="heavy")
    for i in range(3):
        b.conv(x, 32, 1, name=f"light{i}")
    return b.build()


def _lios(g: OpGraph, streams: int) -> tuple[list[list[str]], dict[str, float], float]:
    p = Profiler(Machine.single(V100))
    s = make_scheduler("lios", {"streams": streams}).schedule(g, p)
    validate_schedule(s, g)
    lat = {n: p.op_latency_us(g, n) for n in g.ops}
    return s.streams, lat, s.meta["model_latency_us"]


def test_lios_puts_each_op_on_the_stream_where_it_finishes_earliest() -> None:
    """Two streams. The heavy conv (the highest rank after x) could start when x ends on
    either stream; the tie goes to stream 0, behind x. Every light conv then finishes earliest
    on stream 1, which frees long before the heavy conv ends. Round-robin would put a
    light conv behind the heavy one."""
    g = _fan()
    streams, lat, model = _lios(g, 2)
    light = [f"light{i}" for i in range(3)]
    assert lat["heavy"] > 3 * lat["light0"]  # the premise: one heavy op outweighs the rest
    assert streams == [["x", "heavy"], light]
    # the model's latency is the earliest-finish timeline, computed here by hand
    t_x = lat["x"]
    assert model == pytest.approx(max(t_x + lat["heavy"], t_x + sum(lat[n] for n in light)))


def test_lios_with_three_streams_spreads_light_ops_by_finish_time() -> None:
    """Three streams: light0 takes the idle stream 1; light1 then finishes earliest on
    stream 2 (idle) rather than behind light0; light2 behind light0 on stream 1, the
    earlier of the two streams to free (stream 2 ties and loses on index)."""
    g = _fan()
    streams, _, _ = _lios(g, 3)
    assert streams == [["x", "heavy"], ["light0", "light2"], ["light1"]]


def test_lios_takes_the_highest_rank_first() -> None:
    """The heavy conv has the highest rank of the ready ops, so it is placed first: on
    stream 0 right after x. Lowest rank first would place the light convs first and
    leave the heavy conv to whichever stream frees first, behind a light conv."""
    g = _fan()
    streams, lat, _ = _lios(g, 2)
    rank = upward_rank(g, lat)
    assert rank["heavy"] > max(rank[f"light{i}"] for i in range(3))
    assert streams[0][:2] == ["x", "heavy"]
    # with one stream the order of the stream is exactly the priority order
    (only,), _, _ = _lios(g, 1)
    assert only == ["x", "heavy", "light0", "light1", "light2"]


def _rank_chain() -> OpGraph:
    """Two branches off x: a chain of two convs (a1 -> a2) and a single conv m that
    alone takes longer than a1. a1's upward rank (its latency plus a2's) is the higher:
    priority is by rank, not by an op's own latency."""
    b = GraphBuilder("rank_chain")
    x = b.input((1, 256, 28, 28), name="x")
    a = b.conv(x, 64, 1, name="a1")
    b.conv(a, 64, 3, padding=1, name="a2")
    b.conv(x, 128, 1, name="m")
    return b.build()


def test_lios_priority_is_the_upward_rank() -> None:
    g = _rank_chain()
    (only,), lat, _ = _lios(g, 1)
    rank = upward_rank(g, lat)
    assert lat["m"] > lat["a1"]  # m is the longer op on its own ...
    assert rank["a1"] > rank["m"]  # ... but a1 heads the longer path
    # one stream: each step takes the ready op of highest rank
    done: list[str] = []
    while len(done) < len(g):
        ready = [n for n in g.ops if n not in done and all(u in done for u in g.predecessors(n))]
        done.append(max(ready, key=lambda n: (rank[n], -g.topo_order.index(n))))
    assert only == done
    assert only.index("a1") < only.index("m")


# --- brute forces over stage schedules ------------------------------------------------------


def _components(g: OpGraph, ops: frozenset[str]) -> list[list[str]]:
    """Weakly connected components of ``ops`` (edges inside it), each in topological
    order, ordered by their first op."""
    pos = {n: i for i, n in enumerate(g.topo_order)}
    left = set(ops)
    out = []
    while left:
        start = min(left, key=pos.__getitem__)
        comp, todo = {start}, [start]
        while todo:
            n = todo.pop()
            for m in (*g.predecessors(n), *g.successors(n)):
                if m in left and m not in comp:
                    comp.add(m)
                    todo.append(m)
        left -= comp
        out.append(sorted(comp, key=pos.__getitem__))
    return sorted(out, key=lambda c: pos[c[0]])


def _partitions(items: list) -> Iterator[list[list]]:
    """Every set partition of ``items`` (restricted growth: each once)."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in _partitions(rest):
        yield [[first], *part]
        for i in range(len(part)):
            yield [*part[:i], [first, *part[i]], *part[i + 1 :]]


def _best_stage_schedule(
    g: OpGraph, p: Profiler, stage_groups
) -> tuple[float, list[list[list[str]]]]:
    """The best stage schedule of ``g``, by exhaustive search over every next stage (a
    non-empty set of the ops left whose inputs ran before or in it) and every grouping
    ``stage_groups(ops)`` allows; each stage measured as IOS measures it (its groups on
    streams 0.., then a synchronize). Returns the summed stage latencies and the stages."""
    pos = {n: i for i, n in enumerate(g.topo_order)}

    @cache
    def best(done: frozenset[str]) -> tuple[float, tuple]:
        rest = [n for n in g.topo_order if n not in done]
        if not rest:
            return 0.0, ()
        out: tuple[float, tuple] = (float("inf"), ())
        for k in range(1, len(rest) + 1):
            for stage in itertools.combinations(rest, k):
                now = done | set(stage)
                if any(u not in now for v in stage for u in g.predecessors(v)):
                    continue
                for groups in stage_groups(frozenset(stage)):
                    canon = sorted(
                        (sorted(gr, key=pos.__getitem__) for gr in groups),
                        key=lambda gr: pos[gr[0]],
                    )
                    lat = p.measure_stage(g, canon)
                    tail, stages = best(frozenset(now))
                    if lat + tail < out[0]:
                        out = (lat + tail, (tuple(map(tuple, canon)), *stages))
        return out

    total, stages = best(frozenset())
    return total, [[list(gr) for gr in st] for st in stages]


def optimal_space(g: OpGraph):
    """optimal's stages: any grouping of the stage's components (no r, no s)."""

    def groups(ops: frozenset[str]) -> Iterator[list[list[str]]]:
        for part in _partitions(_components(g, ops)):
            yield [[op for comp in grp for op in comp] for grp in part]

    return groups


def ios_space(g: OpGraph, r: int, s: int):
    """IOS's parallel stages: one group per component, at most r ops each, at most s."""

    def groups(ops: frozenset[str]) -> Iterator[list[list[str]]]:
        comps = _components(g, ops)
        if len(comps) <= s and all(len(c) <= r for c in comps):
            yield comps

    return groups


# --- optimal: grouping several components in one group pays ----------------------------------


def five_thin_convs() -> OpGraph:
    """Five 1x1 convs 64 -> 32 on one 28x28 map, one of them followed by another: seven
    ops. On a V100 the best stage after x runs one conv on a stream of its own and the
    other four components one after another on a second stream."""
    b = GraphBuilder("five_thin_convs")
    x = b.input((1, 64, 28, 28), name="x")
    for i in range(5):
        b.conv(x, 32, 1, name=f"c{i}")
    b.conv("c4", 32, 1, name="c5")
    return b.build()


def thin_convs_and_a_3x3() -> OpGraph:
    """Eight ops on a T4: five 1x1 convs, a 3x3 conv and a ReLU after one 1x1 conv."""
    b = GraphBuilder("thin_convs_and_a_3x3")
    x = b.input((1, 64, 28, 28), name="x")
    for i in range(5):
        b.conv(x, 32, 1, name=f"c{i}")
    b.conv(x, 64, 3, padding=1, name="c5")
    b.relu("c0", name="r6")
    return b.build()


def _optimal(g: OpGraph, gpu: GPUSpec) -> tuple[StageSchedule, float, Profiler]:
    p = Profiler(Machine.single(gpu))
    sched = make_scheduler("optimal").schedule(g, p)
    validate_schedule(sched, g)
    return sched, p.measure(StageSchedule(sched.stages), g), p


@pytest.mark.parametrize(("build", "gpu"), [(five_thin_convs, V100), (thin_convs_and_a_3x3, T4)])
def test_optimal_equals_the_brute_force_where_grouping_components_pays(build, gpu) -> None:
    g = build()
    sched, lat, p = _optimal(g, gpu)
    best, stages = _best_stage_schedule(g, p, optimal_space(g))
    whole = p.measure(StageSchedule(stages), g)
    assert whole == pytest.approx(best - gpu.sync_api_us, rel=REL)  # stages add up
    assert lat == pytest.approx(whole, rel=REL)
    # the premise: the optimum puts several components into one group, and no schedule
    # with one component per group reaches it
    comps_per_group = [
        len(_components(g, frozenset(grp))) for stage in sched.stages for grp in stage
    ]
    assert max(comps_per_group) >= 3
    ungrouped, _ = _best_stage_schedule(g, p, ios_space(g, r=len(g), s=len(g)))
    assert ungrouped - gpu.sync_api_us > lat * (1 + 1e-4)


# --- IOS: s groups per stage, not s - 1 --------------------------------------------------------


def three_branches() -> OpGraph:
    """x feeds three independent 3x3 convs of 256 channels at 14x14 (each too small to
    fill a V100) and one 1x1 conv after each: seven ops, three branches of two."""
    b = GraphBuilder("three_branches")
    x = b.input((1, 256, 14, 14), name="x")
    for i in range(3):
        y = b.conv(x, 256, 3, padding=1, name=f"b{i}")
        b.conv(y, 64, 1, name=f"p{i}")
    return b.build()


def _ios_dp(g: OpGraph, p: Profiler, r: int, s: int) -> StageSchedule:
    sched = make_scheduler("ios", {"r": r, "s": s, "strategy": "parallel"}).schedule(g, p)
    validate_schedule(sched, g)
    return sched


@pytest.mark.parametrize(("r", "s"), [(2, 3), (2, 2), (1, 3), (3, 8)])
def test_ios_equals_the_brute_force_over_its_pruned_space(r: int, s: int) -> None:
    g = three_branches()
    p = Profiler(Machine.single(V100))
    sched = _ios_dp(g, p, r, s)
    best, _ = _best_stage_schedule(g, p, ios_space(g, r, s))
    assert sched.meta["dp_latency_us"] == pytest.approx(best, rel=REL)


@pytest.mark.parametrize("s", [2, 3])
def test_ios_uses_all_s_groups_of_a_stage_when_that_pays(s: int) -> None:
    """With s groups allowed, the best stage runs s branches side by side, and it beats
    every schedule of at most s - 1 groups per stage: an IOS that stops at s - 1 groups
    misses it."""
    g = three_branches()
    p = Profiler(Machine.single(V100))
    sched = _ios_dp(g, p, 2, s)
    assert max(len(stage) for stage in sched.stages) == s
    best_s, _ = _best_stage_schedule(g, p, ios_space(g, 2, s))
    best_fewer, _ = _best_stage_schedule(g, p, ios_space(g, 2, s - 1))
    assert best_s < best_fewer * (1 - 1e-3)
    assert sched.meta["dp_latency_us"] == pytest.approx(best_s, rel=REL)
