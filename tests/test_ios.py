"""The ``ios`` scheduler, its conv-merge rewrite and the Profiler's stage measurement.

The optimality check enumerates IOS's whole space of stage schedules naively (forwards,
every closed next stage, each stage as parallel groups or, where the ops allow, merged)
with none of the scheduler's code, and compares the best total with the DP's.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterator

import numpy as np
import pytest
import strategies
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schedulers._merge import (
    MERGED_ATTR,
    MergeError,
    apply_merge,
    apply_merges,
    check_merge,
    merge_candidates,
    merge_key,
    merged_ops,
)
from schedulers.base import (
    Profiler,
    SchedulerError,
    make_scheduler,
    run_scheduler,
    scheduler_names,
)
from schedulers.ios import (
    chain_units,
    count_states,
    cut_points,
    plan_parts,
    unit_masks,
)
from simgpu.cli import main
from simgpu.errors import SimGPUError
from simgpu.graph import Op, OpGraph
from simgpu.hardware import GPUSpec, Machine, preset
from simgpu.kernels import KernelCache
from simgpu.models import build_model
from simgpu.models.builder import GraphBuilder
from simgpu.program import Launch, lower, validate_program
from simgpu.runtimes import get_runtime
from simgpu.schedule import StageSchedule, schedule_to_json, validate_schedule
from simgpu.sim.engine import simulate

V100 = preset("v100")
M100 = Machine.single(V100)
REL = 1e-9  # stage latencies add up exactly but for floating-point rounding
UNPRUNED = {"r": 64, "s": 64, "part_size": 64}  # no cap on states: the default
SLOW = [HealthCheck.too_slow, HealthCheck.data_too_large]


@pytest.fixture(scope="module")
def inception() -> OpGraph:
    return build_model("inception_v3")


@pytest.fixture(scope="module")
def inception_ios(inception: OpGraph):
    return run_scheduler("ios", inception, M100)


def mixed_block(name: str = "mini") -> OpGraph:
    """One Inception-A block on a 35x35 input: four branches, mergeable 1x1 convs."""
    b = GraphBuilder(name)
    x = b.input((1, 192, 35, 35), name="x")
    b1 = b.conv(x, 64, 1, name="b1")
    b5 = b.conv(b.conv(x, 48, 1, name="b5_1"), 64, 5, padding=2, name="b5_2")
    b3 = b.conv(x, 64, 1, name="b3_1")
    b3 = b.conv(b.conv(b3, 96, 3, padding=1, name="b3_2"), 96, 3, padding=1, name="b3_3")
    bp = b.conv(b.pool(x, "avg", 3, 1, padding=1, name="pool"), 32, 1, name="bp")
    b.concat([b1, b5, b3, bp], name="cat")
    return b.build()


def ios(graph: OpGraph, gpu: GPUSpec = V100, **opts: object) -> tuple[StageSchedule, float]:
    m = Machine.single(gpu)
    sched = make_scheduler("ios", opts).schedule(graph, Profiler(m))
    assert isinstance(sched, StageSchedule)
    ran = sched.graph or graph
    validate_schedule(sched, ran)
    return sched, Profiler(m).measure(sched, graph)


# --- r = s = 1 is sequential ----------------------------------------------------------------


def test_r1_s1_is_exactly_sequential_on_inception(inception: OpGraph) -> None:
    r = run_scheduler("ios", inception, M100, {"r": 1, "s": 1})
    seq = run_scheduler("sequential", inception, M100, runtime="cudnn")
    assert r.program.commands == seq.program.commands
    assert r.timeline.makespan_us == seq.timeline.makespan_us
    assert r.schedule.graph is None and not r.schedule.meta["merges"]
    # the DP itself chose one op per stage; only the barriers between them were dropped
    assert all(len(s["groups"]) == 1 for s in r.schedule.meta["dp_stages"])
    assert r.schedule.meta["barriers_elided"] == len(inception) - 1


@settings(max_examples=15, deadline=None, suppress_health_check=SLOW)
@given(g=strategies.dags(max_ops=14), gpu=strategies.gpus(max_sm=64))
def test_r1_s1_equals_sequential_on_random_graphs(g: OpGraph, gpu: GPUSpec) -> None:
    m = Machine.single(gpu)
    r = run_scheduler("ios", g, m, {"r": 1, "s": 1})
    seq = run_scheduler("sequential", g, m, runtime="cudnn")
    assert r.timeline.makespan_us == seq.timeline.makespan_us


# --- against greedy, sequential and the brute force -------------------------------------------


@pytest.mark.skipif("greedy" not in scheduler_names(), reason="no greedy scheduler yet")
def test_ios_at_least_as_fast_as_greedy_and_sequential_on_inception(
    inception: OpGraph, inception_ios
) -> None:
    """Both under IOS's runtime (cuDNN calls, a synchronize between stages). IOS's
    space holds greedy's stages and the sequential schedule IOS's runtime runs, one op
    per stage; both are beaten. (One stream with no barrier at all is not in its
    space: see benchmarks/ios_runtime.py.)"""
    assert inception_ios.runtime == "cudnn"
    greedy = run_scheduler("greedy", inception, M100)
    assert greedy.runtime == "cudnn"
    staged = StageSchedule([[[op]] for op in inception.topo_order], barrier="sync")
    per_op = simulate(lower(staged, inception, M100, runtime=get_runtime("cudnn")), M100)
    assert inception_ios.latency_ms <= greedy.latency_ms
    assert inception_ios.latency_ms < per_op.latency_ms
    validate_program(inception_ios.program, inception_ios.schedule.graph or inception)


def _components(graph: OpGraph, ops: tuple[str, ...]) -> list[list[str]]:
    """Weakly connected components of the ops, each in topological order, by first op."""
    pos = {n: i for i, n in enumerate(graph.topo_order)}
    left = set(ops)
    out = []
    while left:
        todo = [min(left, key=pos.__getitem__)]
        comp = set(todo)
        while todo:
            n = todo.pop()
            for v in [*graph.predecessors(n), *graph.successors(n)]:
                if v in left and v not in comp:
                    comp.add(v)
                    todo.append(v)
        left -= comp
        out.append(sorted(comp, key=pos.__getitem__))
    return sorted(out, key=lambda c: pos[c[0]])


def ios_space(
    graph: OpGraph, p: Profiler, r: int = 64, s: int = 64
) -> Iterator[tuple[float, list, list]]:
    """Every stage schedule of IOS's space with its summed stage latency: a next stage is
    any set whose inputs ran before or in it, run as its connected components on
    separate streams (at most ``s`` of them, each of at most ``r`` ops) — or, for two to
    ``s`` mergeable convs, as one merged conv."""
    topo = graph.topo_order

    def rec(done: frozenset[str]) -> Iterator[tuple[float, list, list]]:
        rest = [n for n in topo if n not in done]
        if not rest:
            yield 0.0, [], []
            return
        for k in range(1, len(rest) + 1):
            for stage in itertools.combinations(rest, k):
                now = done | set(stage)
                if any(u not in now for v in stage for u in graph.predecessors(v)):
                    continue
                comps = _components(graph, stage)
                options = []
                if len(comps) <= s and all(len(c) <= r for c in comps):
                    options.append((p.measure_stage(graph, comps), None))
                if 2 <= k <= s:
                    try:
                        check_merge(graph, stage)
                    except MergeError:
                        pass
                    else:
                        g2 = apply_merge(graph, stage)
                        conv = next(o for o in g2 if o.attrs.get(MERGED_ATTR) == stage)
                        options.append((p.measure_stage(g2, [[conv.name, *stage]]), stage))
                for lat, merged in options:
                    groups = [[conv.name, *stage]] if merged else _components(graph, stage)
                    for tail_lat, tail, merges in rec(frozenset(now)):
                        yield (
                            lat + tail_lat,
                            [groups, *tail],
                            [merged, *merges] if merged else merges,
                        )

    yield from rec(frozenset())


@st.composite
def conv_dags(draw: st.DrawFn, max_convs: int = 4) -> OpGraph:
    """An input and a few convs of kernel 1, 3 or 5 ('same' padding), most reading the
    input directly, so that some of them can merge."""
    b = GraphBuilder("convs")
    c = draw(st.sampled_from((16, 64, 256)))
    hw = draw(st.sampled_from((7, 14, 28)))
    names = [b.input((1, c, hw, hw), name="x")]
    for j in range(draw(st.integers(1, max_convs))):
        src = names[0] if draw(st.integers(0, 2)) else draw(st.sampled_from(names))
        k = draw(st.sampled_from((1, 3, 5)))
        act = draw(st.sampled_from(("relu", "relu", None)))
        cout = draw(st.sampled_from((32, 64, 256)))
        names.append(b.conv(src, cout, k, padding=k // 2, act=act, name=f"c{j}"))
    return b.build()


def _check_optimal(g: OpGraph, gpu: GPUSpec, **opts: int) -> None:
    """The DP's best equals the brute force's over the same space (``r``/``s`` given, else
    unpruned) — with the default options otherwise: no state cap."""
    m = Machine.single(gpu)
    p = Profiler(m)
    r, s = opts.get("r", 64), opts.get("s", 64)
    best_lat, best_stages, best_merges = min(ios_space(g, p, r, s), key=lambda t: t[0])
    sched, lat = ios(g, gpu, **(opts or UNPRUNED))
    assert sched.meta["dp_latency_us"] == pytest.approx(best_lat, rel=REL)
    # the brute force's best, simulated whole, is its summed stages less one barrier
    g2 = apply_merges(g, best_merges) if best_merges else None
    whole = p.measure(StageSchedule(best_stages, g2), g)
    assert whole == pytest.approx(best_lat - gpu.sync_api_us, rel=REL)
    # and ios's schedule is no slower (dropping single-stream barriers only helps)
    assert lat <= whole * (1 + REL)


@settings(max_examples=20, deadline=None, suppress_health_check=SLOW)
@given(g=strategies.dags(max_ops=5), gpu=strategies.gpus(max_sm=32))
def test_ios_is_optimal_among_stage_schedules(g: OpGraph, gpu: GPUSpec) -> None:
    _check_optimal(g, gpu)


@settings(max_examples=15, deadline=None, suppress_health_check=SLOW)
@given(g=conv_dags(), gpu=strategies.gpus(max_sm=80, vary_limits=False))
def test_ios_is_optimal_among_stage_schedules_with_merges(g: OpGraph, gpu: GPUSpec) -> None:
    _check_optimal(g, gpu)


@settings(max_examples=25, deadline=None, suppress_health_check=SLOW)
@given(
    g=strategies.dags(max_ops=6),
    gpu=strategies.gpus(max_sm=32),
    r=st.integers(1, 3),
    s=st.integers(1, 3),
)
def test_pruned_ios_is_optimal_in_the_pruned_space(
    g: OpGraph, gpu: GPUSpec, r: int, s: int
) -> None:
    """With the paper's pruning (r ops per group, s groups per stage) and no state cap,
    the DP finds the brute force's best over exactly that space: a search that allowed
    only s - 1 groups, or r - 1 ops, would miss it wherever the best needs them."""
    _check_optimal(g, gpu, r=r, s=s)


@settings(max_examples=10, deadline=None, suppress_health_check=SLOW)
@given(g=conv_dags(), gpu=strategies.gpus(max_sm=80, vary_limits=False), s=st.integers(1, 3))
def test_pruned_ios_with_merges_is_optimal_in_the_pruned_space(
    g: OpGraph, gpu: GPUSpec, s: int
) -> None:
    _check_optimal(g, gpu, r=2, s=s)


def paper_stage_count(graph: OpGraph, r: int, s: int, strategy: str = "both") -> int:
    """The stages IOS's search measures, by brute force: every convex set of ops (a
    possible last stage of some prefix) whose connected components are at most s, of at
    most r ops each, once per strategy that applies to it."""
    names = list(graph.topo_order)
    anc: dict[str, set[str]] = {}
    for n in names:
        anc[n] = set()
        for u in graph.predecessors(n):
            anc[n] |= anc[u] | {u}
    count = 0
    for k in range(1, len(names) + 1):
        for stage in itertools.combinations(names, k):
            inside = set(stage)
            below = set().union(*(anc[n] for n in stage)) - inside
            if any(anc[n] & inside for n in below):
                continue  # a path leaves the set and comes back: not convex
            comps = _components(graph, stage)
            pruned = len(comps) <= s and all(len(c) <= r for c in comps)
            # merge alone still measures single ops (one group, run as they are)
            count += pruned if strategy != "merge" else k == 1
            if strategy != "parallel" and 2 <= k <= s:
                try:
                    check_merge(graph, stage)
                except MergeError:
                    continue
                count += 1
    return count


@pytest.mark.parametrize(
    ("r", "s", "strategy"),
    [
        (1, 1, "both"),
        (1, 2, "both"),
        (2, 3, "both"),
        (3, 8, "both"),
        (1, 3, "parallel"),
        (2, 2, "merge"),
    ],
)
def test_stage_counts_are_the_paper_space_then_fewer(r: int, s: int, strategy: str) -> None:
    """``stages_paper`` is every stage the paper's search would measure (counted by
    brute force here), ``stages_measured`` those the exact bounds could not rule out,
    ``simulations`` the distinct measurements left after the memo of identical stages."""
    g = mixed_block()
    sched, _ = ios(g, r=r, s=s, strategy=strategy)
    meta = sched.meta
    assert meta["stages_paper"] == paper_stage_count(g, r, s, strategy)
    assert meta["stages_paper"] >= meta["stages_measured"] >= meta["simulations"] > 0
    assert meta["stages_measured"] == meta["profiler_calls"]


@settings(max_examples=15, deadline=None, suppress_health_check=SLOW)
@given(g=strategies.dags(max_ops=8), r=st.integers(1, 3), s=st.integers(1, 3))
def test_paper_stage_count_on_random_graphs(g: OpGraph, r: int, s: int) -> None:
    sched, _ = ios(g, r=r, s=s)
    assert sched.meta["stages_paper"] == paper_stage_count(g, r, s)


@pytest.mark.skipif("optimal" not in scheduler_names(), reason="no optimal scheduler yet")
@settings(max_examples=10, deadline=None, suppress_health_check=SLOW)
@given(g=strategies.dags(max_ops=7), gpu=strategies.gpus(max_sm=32))
def test_optimal_bounds_ios_without_merges(g: OpGraph, gpu: GPUSpec) -> None:
    """``optimal`` searches a superset of IOS's parallel space (a group may hold several
    components), so no ios schedule without merges beats it."""
    m = Machine.single(gpu)
    opt = run_scheduler("optimal", g, m)
    r = run_scheduler("ios", g, m, {**UNPRUNED, "strategy": "parallel"})
    assert r.timeline.makespan_us >= opt.timeline.makespan_us * (1 - REL)


def test_merge_finds_the_side_by_side_win_on_one_block() -> None:
    """Inception-A's 1x1 convs on one input: 'both' is never worse than either strategy
    alone (its space holds both), and each alone is never worse than r = s = 1."""
    g = mixed_block()
    dp = {}
    for strategy in ("parallel", "merge", "both"):
        sched, _ = ios(g, strategy=strategy)
        dp[strategy] = sched.meta["dp_latency_us"]
        if strategy == "parallel":
            assert sched.graph is None and not sched.meta["merges"]
        if strategy == "merge":
            for st_ in sched.meta["dp_stages"]:
                assert st_["merge"] or (len(st_["groups"]) == 1 and len(st_["groups"][0]) == 1)
    serial, _ = ios(g, r=1, s=1)
    assert dp["both"] <= min(dp["parallel"], dp["merge"]) * (1 + REL)
    assert max(dp["parallel"], dp["merge"]) <= serial.meta["dp_latency_us"] * (1 + REL)


# --- pruning, parts, units --------------------------------------------------------------------


@pytest.mark.parametrize(("r", "s"), [(2, 3), (3, 8), (1, 4)])
def test_every_dp_stage_respects_the_pruning(r: int, s: int) -> None:
    g = mixed_block()
    sched, _ = ios(g, r=r, s=s, strategy="parallel")
    _check_pruning(g, sched.meta["dp_stages"], r, s)


def _check_pruning(g: OpGraph, stages: list[dict], r: int, s: int) -> None:
    adjacent = {frozenset(e) for e in g.edges()}
    for stage in stages:
        groups = stage["groups"]
        assert 1 <= len(groups) <= s
        assert all(1 <= len(grp) <= r for grp in groups)
        for a, b in itertools.combinations(groups, 2):  # no edge between groups
            assert not any(frozenset((u, v)) in adjacent for u in a for v in b)
        if not stage["merge"]:  # and each parallel group is one connected component
            assert all(len(_components(g, tuple(grp))) == 1 for grp in groups)


@settings(max_examples=20, deadline=None, suppress_health_check=SLOW)
@given(g=strategies.dags(max_ops=16), r=st.integers(1, 3), s=st.integers(1, 4))
def test_no_cap_every_group_has_at_most_r_ops_and_every_stage_s_groups(
    g: OpGraph, r: int, s: int
) -> None:
    """By default (no state cap) the DP's units are ops, so r bounds the ops of a group
    (the capped mode's chains did not: on randwire_small, up to 18 ops at r = 3)."""
    sched, _ = ios(g, r=r, s=s, part_size=8)
    assert sched.meta["max_states"] == 0
    assert all(not p["chains"] for p in sched.meta["parts"])
    _check_pruning(g, sched.meta["dp_stages"], r, s)


def test_a_part_too_large_to_search_exactly_is_refused_not_shrunk() -> None:
    """RandWire's op-level parts have up to 589,130 DP states: ``units="ops"`` refuses
    them, naming the ways out, before measuring anything; IOS's chains fit the limit,
    and the default (``auto``) takes chains where ops do not fit, so no part is over."""
    g = build_model("randwire_small")
    p = Profiler(M100)
    with pytest.raises(SchedulerError, match=r"more than 20000 DP states.*units=chains"):
        make_scheduler("ios", {"units": "ops"}).schedule(g, p)
    assert p.calls == 0
    parts = plan_parts(g, 64, 0, "chains")
    assert all(count_states(*unit_masks(g, u), 20_000) <= 20_000 for u in parts)
    assert max(count_states(*unit_masks(g, u), 10**6) for u in plan_parts(g, 64)) == 589_130
    auto = plan_parts(g, 64, 0, "auto", 20_000)
    assert all(count_states(*unit_masks(g, u), 20_000) <= 20_000 for u in auto)
    assert sorted(o for u in auto for us in u for o in us) == sorted(g.topo_order)


def test_chain_units_count_chains_against_r() -> None:
    """``units="chains"``: IOS's IR granularity, where a chain is one node, so r bounds
    the chains of a group, not its ops; every chain stays whole within its stage."""
    g = mixed_block()
    chains = chain_units(g, list(g.topo_order))
    unit_of = {o: i for i, u in enumerate(chains) for o in u}
    sched, _ = ios(g, r=1, s=8, units="chains", strategy="parallel")
    assert sched.meta["units"] == "chains"
    assert any(len(grp) > 1 for st_ in sched.meta["dp_stages"] for grp in st_["groups"])
    for st_ in sched.meta["dp_stages"]:
        for grp in st_["groups"]:
            assert len({unit_of[o] for o in grp}) == 1
            assert sorted(grp) == sorted(chains[unit_of[grp[0]]])


def test_parts_cover_the_graph_in_order(inception: OpGraph) -> None:
    for size in (1, 7, 20, 64):
        parts = plan_parts(inception, size, 5000)
        ops = [o for part in parts for unit in part for o in unit]
        assert sorted(ops) == sorted(inception.ops)
        seen: set[str] = set()
        for part in parts:
            assert 1 <= len(part) <= size
            mine = {o for unit in part for o in unit}
            for o in mine:  # a part depends only on itself and earlier parts
                assert all(u in seen or u in mine for u in inception.predecessors(o))
            seen |= mine
    cuts = set(cut_points(inception))
    assert {"input", "Mixed_5b.concat", "Mixed_7c.concat", "fc"} <= cuts
    assert "Mixed_5b.branch1x1" not in cuts


def test_chains_and_state_counts() -> None:
    g = mixed_block()
    ops = list(g.topo_order)
    units = chain_units(g, ops)
    assert ["b3_1", "b3_2", "b3_3"] in units and ["pool", "bp"] in units
    assert ["b5_1", "b5_2"] in units and ["x"] in units and ["cat"] in units
    # x, then the four branches independently (2, 3, 4 and 3 states), then cat
    single = [[o] for o in ops]
    assert count_states(*unit_masks(g, single), 10**6) == 1 + 2 * 3 * 4 * 3 + 1
    assert count_states(*unit_masks(g, units), 10**6) == 1 + 2**4 + 1
    assert count_states(*unit_masks(g, single), 10) == 11  # saturates at cap + 1


def test_a_tight_state_budget_runs_the_dp_over_chains() -> None:
    g = mixed_block()
    sched, lat = ios(g, max_states=20)
    parts = sched.meta["parts"]
    assert any(p["chains"] for p in parts)
    assert all(p["states"] <= 20 for p in parts)
    assert math.isfinite(lat)
    tiny, _ = ios(g, part_size=1)
    assert len(tiny.meta["parts"]) == len(g)


# --- the schedule carries the rewritten graph ---------------------------------------------------


def test_merged_schedule_runs_on_its_rewritten_graph(inception: OpGraph, inception_ios) -> None:
    s = inception_ios.schedule
    assert s.meta["merges"], "ios merges some of Inception's sibling convs on a V100"
    assert s.graph is not None and s.graph is not inception
    validate_schedule(s, s.graph)
    launched = {c.op for c in inception_ios.program.commands if isinstance(c, Launch)}
    for merged in s.meta["merges"]:
        conv = next(o for o in s.graph if o.attrs.get(MERGED_ATTR) == tuple(merged))
        assert conv.name in launched
        for name in merged:  # originals are zero-cost views now
            assert s.graph[name].kind == "slice" and s.graph[name].inputs == (conv.name,)
    kernels = [c for c in inception_ios.program.commands if isinstance(c, Launch)]
    assert all(
        c.kernel is None for c in kernels if c.op in {n for m in s.meta["merges"] for n in m}
    )
    # the search statistics are there
    for key in ("states", "transitions", "stages_measured", "simulations", "search_s", "parts"):
        assert key in s.meta
    assert s.meta["stages_paper"] >= s.meta["stages_measured"] >= s.meta["simulations"] > 0
    assert inception_ios.profiler_distinct == s.meta["simulations"]


def test_inception_search_is_well_under_ten_seconds(inception_ios) -> None:
    """The issue's figure: IOS's search on Inception V3 (r = 3, s = 8, V100) in under 10 s
    on one core (it takes well under one; IOS's own took 48 s on a GPU)."""
    meta = inception_ios.schedule.meta
    assert (meta["r"], meta["s"]) == (3, 8)
    assert meta["search_s"] < 10.0
    assert inception_ios.schedule_s < 10.0


def test_deterministic(inception: OpGraph, inception_ios) -> None:
    again = run_scheduler("ios", inception, M100)
    assert schedule_to_json(again.schedule) == schedule_to_json(inception_ios.schedule)
    assert again.program.commands == inception_ios.program.commands
    assert again.timeline.makespan_us == inception_ios.timeline.makespan_us
    timing = {"search_s", "simulate_s", "parts"}
    a = {k: v for k, v in again.schedule.meta.items() if k not in timing}
    b = {k: v for k, v in inception_ios.schedule.meta.items() if k not in timing}
    assert a == b
    strip = [{k: v for k, v in p.items() if k != "wall_s"} for p in again.schedule.meta["parts"]]
    assert strip == [
        {k: v for k, v in p.items() if k != "wall_s"} for p in inception_ios.schedule.meta["parts"]
    ]


# --- Profiler.measure_stage ---------------------------------------------------------------------


def test_measure_stage_is_the_stage_with_a_barrier_and_memoised_by_content() -> None:
    g = mixed_block()
    p = Profiler(M100)
    lat = p.measure_stage(g, [["b1"], ["b3_1"]])
    assert p.calls == 1 and p.distinct == 1
    # b1 and b3_1 are the same conv: swapping them is the same stage content
    assert p.measure_stage(g, [["b3_1"], ["b1"]]) == lat
    assert p.calls == 2 and p.distinct == 1
    # a stage schedule with synchronize barriers costs the sum of its stages, less the
    # last barrier (the program ends when the GPU does)
    stages = [[["x"]], [["b1"], ["b5_1", "b5_2"], ["pool"]], [["b3_1", "b3_2"]]]
    total = sum(p.measure_stage(g, st_) for st_ in stages)
    part = OpGraph([g[o] for o in ("x", "b1", "b5_1", "b5_2", "pool", "b3_1", "b3_2")], "part")
    whole = p.measure(StageSchedule(stages), part)
    assert whole == pytest.approx(total - V100.sync_api_us, rel=REL)
    assert p.gpu_search_s > 0
    with pytest.raises(SchedulerError, match="'nope'"):
        p.measure_stage(g, [["nope"]])


# --- conv merge ---------------------------------------------------------------------------------


def convs(
    *specs: tuple[str, int, int, int, int], hw: int = 12, act: str | None = "relu"
) -> OpGraph:
    """x (1, 8, hw, hw) and convs given as (name, out channels, kernel, stride, padding)."""
    b = GraphBuilder("convs")
    x = b.input((1, 8, hw, hw), name="x")
    for name, cout, k, stride, pad in specs:
        b.conv(x, cout, k, stride=stride, padding=pad, act=act, name=name)
    return b.build()


def test_merge_shapes_macs_and_views() -> None:
    g = convs(("a", 16, 1, 1, 0), ("b", 24, 3, 1, 1), ("c", 8, 5, 1, 2))
    g2 = apply_merge(g, ["a", "b", "c"])
    conv = g2["a+b+c"]
    assert conv.kind == "conv" and conv.attrs[MERGED_ATTR] == ("a", "b", "c")
    assert conv.output_shape == (1, 48, 12, 12)
    assert conv.attrs["kernel"] == (5, 5) and conv.attrs["padding"] == (2, 2)
    # MACs: every member pays the padded 5x5 kernel
    assert g2.stats("a+b+c").macs == 48 * 8 * 5 * 5 * 12 * 12
    assert g2.stats("a+b+c").macs > sum(g.stats(n).macs for n in "abc")
    begin = 0
    for n, c in (("a", 16), ("b", 24), ("c", 8)):
        sl = g2[n]
        assert sl.kind == "slice" and sl.output_shape == g[n].output_shape
        assert (sl.attrs["begin"], sl.attrs["end"], sl.attrs["axis"]) == (begin, begin + c, 1)
        assert KernelCache(V100).lower(g2, n) == []  # a view: no kernel, no bytes
        assert g2.stats(n).bytes_read == g2.stats(n).bytes_written == 0
        begin += c
    # equal kernels: merged MACs are exactly the members' sum
    h = convs(("p", 16, 3, 1, 1), ("q", 32, 3, 1, 1))
    assert apply_merge(h, ["p", "q"]).stats("p+q").macs == h.stats("p").macs + h.stats("q").macs


def test_merge_leaves_consumers_unchanged(inception: OpGraph) -> None:
    ms = ("Mixed_5b.branch1x1", "Mixed_5b.branch5x5_1", "Mixed_5b.branch3x3dbl_1")
    assert ms in merge_candidates(inception)
    g2 = apply_merge(inception, ms)
    assert len(g2) == len(inception) + 1
    for op in inception:
        if op.name not in ms:
            assert g2[op.name] == op  # same inputs, shape and attributes
        assert g2[op.name].output_shape == op.output_shape
        want = [v for v in inception.successors(op.name) if v not in ms]
        if len(want) < len(inception.successors(op.name)):  # the input now feeds the merge
            want.append("+".join(ms))
        assert sorted(g2.successors(op.name)) == sorted(want)
    assert g2.macs == inception.macs  # three 1x1 kernels: nothing padded


def test_merge_candidates_of_inception(inception: OpGraph) -> None:
    cands = merge_candidates(inception)
    assert cands == merge_candidates(inception)  # deterministic
    for cand in cands:
        assert len(cand) >= 2
        check_merge(inception, cand)  # any whole class merges ...
        check_merge(inception, cand[:2])  # ... and any two of it
        assert len({inception[n].inputs for n in cand}) == 1
    flat = [n for c in cands for n in c]
    assert len(flat) == len(set(flat))
    # Mixed_7b's 1x3 and 3x1 convs read one input with 'same' padding: they merge (3x3)
    pair = ("Mixed_7b.branch3x3_2a", "Mixed_7b.branch3x3_2b")
    assert any(set(pair) <= set(c) for c in cands)
    conv, _ = merged_ops(inception, pair)
    assert conv.attrs["kernel"] == (3, 3) and conv.attrs["padding"] == (1, 1)


@pytest.mark.parametrize(
    ("specs", "act", "match"),
    [
        ([("a", 8, 1, 1, 0)], "relu", "at least two"),
        ([("a", 8, 1, 1, 0), ("b", 8, 3, 2, 1)], "relu", "output size|stride"),
        ([("a", 8, 5, 3, 2), ("b", 8, 3, 3, 0)], "relu", "centre"),
        ([("a", 8, 2, 2, 0), ("b", 8, 1, 2, 0)], "relu", "centre"),
    ],
)
def test_invalid_merges_are_refused(specs, act, match) -> None:
    g = convs(*specs, hw=9 if match == "centre" and specs[0][2] == 5 else 8, act=act)
    names = [s[0] for s in specs]
    with pytest.raises(MergeError, match=match):
        apply_merge(g, names)
    assert merge_candidates(g) == []


def test_invalid_merges_name_what_is_wrong() -> None:
    b = GraphBuilder("mixed")
    x = b.input((1, 8, 8, 8), name="x")
    y = b.input((1, 8, 8, 8), name="y")
    b.conv(x, 8, 3, padding=1, name="a")
    b.conv(y, 8, 3, padding=1, name="b")
    b.conv(x, 8, 3, padding=1, act=None, name="c")
    b.conv(x, 8, 3, padding=1, groups=8, name="d")
    b.relu(x, name="r")
    g = b.build()
    cases = {
        ("a", "b"): "reads 'y'",
        ("a", "c"): "activation",
        ("a", "d"): "grouped",
        ("a", "r"): "not a conv",
        ("a", "zz"): "not an op",
        ("a", "a"): "twice",
    }
    for ops, what in cases.items():
        with pytest.raises(MergeError, match=what) as err:
            check_merge(g, ops)
        assert isinstance(err.value, SimGPUError) and "\n" not in str(err.value)
    with pytest.raises(MergeError, match="two merges"):
        apply_merges(convs(("p", 8, 1, 1, 0), ("q", 8, 1, 1, 0)), [["p", "q"], ["q", "p"]])
    assert merge_key(g, "r") is None and merge_key(g, "d") is None


def _conv2d(x: np.ndarray, w: np.ndarray, stride: tuple, pad: tuple) -> np.ndarray:
    """Direct NCHW convolution (cross-correlation), batch 1."""
    xp = np.pad(x, ((0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    _, kh, kw = w.shape[1:]
    ho = (xp.shape[1] - kh) // stride[0] + 1
    wo = (xp.shape[2] - kw) // stride[1] + 1
    out = np.zeros((w.shape[0], ho, wo))
    for i in range(ho):
        for j in range(wo):
            win = xp[:, i * stride[0] : i * stride[0] + kh, j * stride[1] : j * stride[1] + kw]
            out[:, i, j] = np.tensordot(w, win, axes=([1, 2, 3], [0, 1, 2]))
    return out


@pytest.mark.parametrize(
    "specs",
    [
        [("a", 3, (1, 1), 1, (0, 0)), ("b", 2, (3, 3), 1, (1, 1)), ("c", 4, (5, 5), 1, (2, 2))],
        [("a", 3, (1, 3), 1, (0, 1)), ("b", 2, (3, 1), 1, (1, 0))],
        [("a", 3, (3, 3), 2, (1, 1)), ("b", 2, (1, 1), 2, (0, 0))],
        [("a", 3, (5, 5), 3, (1, 1)), ("b", 2, (3, 3), 3, (0, 0))],
    ],
)
def test_merged_conv_computes_the_members(specs) -> None:
    """Numerically: zero-padding each kernel, centred, into the merged kernel and running
    the merged conv gives every member's output in its channel slice."""
    b = GraphBuilder("num")
    x = b.input((1, 3, 11, 11), name="x")
    for name, cout, k, stride, pad in specs:
        b.conv(x, cout, k, stride=stride, padding=pad, act=None, name=name)
    g = b.build()
    rng = np.random.default_rng(7)
    data = rng.standard_normal((3, 11, 11))
    names = [s[0] for s in specs]
    conv, slices = merged_ops(g, names)
    big = conv.attrs["kernel"]
    weights, padded = {}, []
    for name, cout, k, _, _ in specs:
        w = rng.standard_normal((cout, 3, *k))
        weights[name] = w
        wp = np.zeros((cout, 3, *big))
        oh, ow = (big[0] - k[0]) // 2, (big[1] - k[1]) // 2
        wp[:, :, oh : oh + k[0], ow : ow + k[1]] = w
        padded.append(wp)
    merged = _conv2d(data, np.concatenate(padded), conv.attrs["stride"], conv.attrs["padding"])
    assert merged.shape == conv.output_shape[1:]
    for (name, _, _, stride, pad), sl in zip(specs, slices, strict=True):
        ref = _conv2d(data, weights[name], (stride, stride), pad)
        assert ref.shape == g[name].output_shape[1:]
        np.testing.assert_allclose(merged[sl.attrs["begin"] : sl.attrs["end"]], ref, atol=1e-9)


def test_merged_graph_round_trips_through_json() -> None:
    g2 = apply_merge(convs(("a", 16, 1, 1, 0), ("b", 24, 3, 1, 1)), ["a", "b"])
    assert OpGraph.from_json(json.loads(json.dumps(g2.to_json()))) == g2


# --- options and the CLI ------------------------------------------------------------------------


def test_options_reach_the_scheduler() -> None:
    s = make_scheduler("ios", {"r": "1", "s": "3", "part_size": "50", "strategy": "merge"})
    assert (s.r, s.s, s.part_size, s.strategy) == (1, 3, 50, "merge")
    d = make_scheduler("ios")
    assert (d.r, d.s, d.part_size, d.strategy) == (3, 8, 64, "both")
    # no cap; ops as units wherever they fit the state limit, IOS's chains elsewhere
    assert (d.max_states, d.units, d.state_limit) == (0, "auto", 20_000)
    c = make_scheduler("ios", {"max_states": "20000", "units": "chains"})
    assert (c.max_states, c.units) == (20000, "chains")


def test_cli_run_with_options(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["run", "inception_v3", "--scheduler", "ios", "--scheduler", "sequential"]
    argv += ["--option", "ios.r=1", "--option", "ios.s=3", "--json"]
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 0, err
    rows = {r["scheduler"]: r for r in json.loads(out)["results"]}
    assert rows["ios"]["profiler_calls"] > 0 and rows["ios"]["gpu_search_s"] > 0
    assert rows["ios"]["latency_ms"] < rows["sequential"]["latency_ms"]
    rc = main(["run", "inception_v3", "--scheduler", "ios", "--option", "ios.r=1"])
    out, err = capsys.readouterr()
    assert rc == 0 and "ios" in out


@pytest.mark.parametrize(
    ("option", "match"),
    [
        ("ios.r=0", "ios.r"),
        ("ios.r=three", "ios.r"),
        ("ios.s=-2", "ios.s"),
        ("ios.part_size=0", "ios.part_size"),
        ("ios.max_states=1", "ios.max_states"),
        ("ios.units=cells", "ios.units"),
        ("ios.state_limit=-1", "ios.state_limit"),
        ("ios.strategy=fast", "ios.strategy"),
        ("ios.depth=2", "no option 'depth'"),
    ],
)
def test_cli_bad_option_is_one_line(
    capsys: pytest.CaptureFixture[str], option: str, match: str
) -> None:
    rc = main(["run", "inception_v3", "--scheduler", "ios", "--option", option])
    _, err = capsys.readouterr()
    assert rc == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("simgpu: error:")
    assert match in lines[0]


def test_bad_option_values_raise_scheduler_errors() -> None:
    bad = ({"r": 0}, {"s": 65}, {"strategy": "all"}, {"part_size": True}, {"max_states": 1},
           {"max_states": -1}, {"units": "nodes"})  # fmt: skip
    for opts in bad:
        with pytest.raises(SchedulerError):
            make_scheduler("ios", opts)


def test_a_one_op_graph() -> None:
    g = OpGraph([Op("x", "input", (), (1, 64))], name="one")
    sched, lat = ios(g)
    assert sched.stages == [[["x"]]] and lat > 0
