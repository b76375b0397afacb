"""The ``autograph`` scheduler: its cost, its rewrite search, its DP, its measured
convergence, and the program it produces."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import strategies
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schedulers._merge import merge_candidates
from schedulers._rewrites import (
    RewriteError,
    apply_rewrites,
    fuse_candidates,
    fused_op,
    split_ops,
)
from schedulers.autograph import (
    AutoGraph,
    _Rewrites,
    backtracking_search,
    mixed_cost,
    op_costs,
    stage_dp,
)
from schedulers.base import Profiler, SchedulerError, make_scheduler, run_scheduler
from schedulers.optimal import cut_out
from simgpu.cli import main
from simgpu.errors import ScheduleError
from simgpu.graph import Op, OpGraph
from simgpu.hardware import Machine, preset
from simgpu.models import build_model
from simgpu.models.builder import GraphBuilder
from simgpu.program import validate_program
from simgpu.runtimes import get_runtime
from simgpu.schedule import (
    StageSchedule,
    StreamSchedule,
    check_rewrite,
    schedule_from_json,
    schedule_to_json,
    validate_schedule,
)

V100 = preset("v100")
MACHINE = Machine.single(V100)


@pytest.fixture(scope="module")
def inception() -> OpGraph:
    return build_model("inception_v3")


def block(
    channels: tuple[int, ...] = (64, 48, 64), kernels: tuple[int, ...] = (1, 1, 3)
) -> OpGraph:
    """An Inception-like block: sibling convs reading one input (mergeable: same stride,
    output size, activation, centred padding), a second conv on each branch, a concat."""
    b = GraphBuilder("block")
    x = b.input((1, 192, 35, 35), name="x")
    outs = []
    for i, (c, k) in enumerate(zip(channels, kernels, strict=True)):
        h = b.conv(x, c, k, padding=k // 2, name=f"b{i}_1")
        outs.append(b.conv(h, 64, 3, padding=1, name=f"b{i}_2"))
    b.concat(outs, name="cat")
    return b.build()


@st.composite
def conv_blocks(draw: st.DrawFn) -> OpGraph:
    """Random branchy conv graphs: 2-4 branches of 1-2 convs from one input, joined."""
    b = GraphBuilder("rand_block")
    hw = draw(st.sampled_from((7, 14, 28)))
    x = b.input((1, draw(st.sampled_from((32, 64, 256))), hw, hw), name="x")
    outs = []
    for i in range(draw(st.integers(2, 4))):
        h = x
        for j in range(draw(st.integers(1, 2))):
            k = draw(st.sampled_from((1, 3)))
            h = b.conv(h, draw(st.sampled_from((16, 64, 128))), k, padding=k // 2, name=f"b{i}_{j}")
        outs.append(h)
    b.concat(outs, name="cat")
    return b.build()


# --- cost -----------------------------------------------------------------------------------


def test_mixed_critical_path_cost_by_hand() -> None:
    s = (1, 1024)
    g = OpGraph(
        [
            Op("x", "input", (), s),
            Op("a", "relu", ("x",), s),
            Op("b", "sigmoid", ("x",), s),
            Op("c", "add", ("a", "b"), s),
        ]
    )
    cost = {"x": 0.0, "a": 10.0, "b": 4.0, "c": 1.0}
    # critical path x-a-c = 11, everything = 15: (1 + alpha) * 11 + 4
    assert mixed_cost(g, cost, 0.5) == pytest.approx(1.5 * 11 + 4)
    assert mixed_cost(g, cost, 0.0) == pytest.approx(15)


def test_costs_come_from_the_profiler_and_views_are_free() -> None:
    g = block()
    p = Profiler(MACHINE)
    cost = op_costs(g, p)
    assert cost["x"] == 0.0
    assert cost["b0_1"] == p.op_latency_us(g, "b0_1") > 0


def test_cost_of_a_merge_set_equals_the_cost_of_the_rewritten_graph() -> None:
    g = block()
    p = Profiler(MACHINE)
    rw = _Rewrites(g, p, alpha=0.7)
    (cls,) = merge_candidates(g)
    assert cls == ("b0_1", "b1_1", "b2_1")
    for merges in [(), (cls[:2],), ((cls[0], cls[2]),), (cls,)]:
        real = rw.apply(merges)
        assert rw.evaluate(merges) == pytest.approx(mixed_cost(real, op_costs(real, p), 0.7))


# --- rewrites -------------------------------------------------------------------------------


def test_backtracking_search_reaches_the_best_merge_set() -> None:
    """With room to climb (relax) and budget, the search visits every merge set of a
    block; its best equals a brute force over all partitions of the merge class."""
    g = block(channels=(64, 48, 64, 32), kernels=(1, 1, 3, 3))
    rw = _Rewrites(g, Profiler(MACHINE), alpha=1.0, kinds=("merge",))
    (cls,) = rw.classes
    brute = {}
    for part in strategies.set_partitions(list(cls)):
        merges = tuple(sorted(tuple(sorted(p, key=g.index.get)) for p in part if len(p) > 1))
        merges = tuple(sorted(merges, key=lambda m: g.index[m[0]]))
        brute[(merges, ())] = rw.evaluate(merges)
    found = backtracking_search(rw, max_nodes=10_000, relax=10.0)
    assert len(found.states) == len(brute) == 15  # Bell(4)
    assert found.states[0][0] == pytest.approx(min(brute.values()))
    assert [c for c, _ in found.states] == sorted(c for c, _ in found.states)


def test_search_budget_limits_the_evaluations() -> None:
    rw = _Rewrites(build_model("inception_v3"), Profiler(MACHINE), alpha=1.0)
    found = backtracking_search(rw, max_nodes=25, relax=0.0)
    assert found.nodes == len(found.states) == 25


def _padded_macs(g: OpGraph, name: str, kernel: tuple[int, int]) -> int:
    op = g[name]
    n, cout, h, w = op.output_shape
    cin = g[op.inputs[0]].output_shape[1]
    return n * cout * h * w * cin * kernel[0] * kernel[1]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(g=conv_blocks(), data=st.data())
def test_rewrites_keep_every_output_and_account_for_padding(
    g: OpGraph, data: st.DataObject
) -> None:
    """Whatever merges the search may pick: every original op still exists under its
    name with its shape (slices of the merged conv), every consumer reads the same
    inputs, and the MACs are the original ones with merged kernels zero-padded."""
    rw = _Rewrites(g, Profiler(MACHINE), alpha=1.0, kinds=("merge",))
    states = [m for _, (m, _) in backtracking_search(rw, 200, 10.0).states]
    merges = data.draw(st.sampled_from(states))
    new = rw.apply(merges)
    for op in g:
        assert op.name in new and new[op.name].output_shape == op.output_shape
        if not any(op.name in m for m in merges):
            assert new[op.name].inputs == op.inputs
    sinks = {n for n in g.ops if not g.successors(n)}
    assert sinks == {n for n in new.ops if not new.successors(n)}
    expected = g.macs
    for members in merges:
        big = tuple(max(g[m].attrs["kernel"][d] for m in members) for d in range(2))
        expected += sum(_padded_macs(g, m, big) - g.stats(m).macs for m in members)
        assert new[members[0]].kind == "slice"
    assert new.macs == expected


# --- the DP ---------------------------------------------------------------------------------


def test_stage_dp_alpha_trades_concurrency() -> None:
    g = block()
    cost = op_costs(g, Profiler(MACHINE))
    _, flat = stage_dp(g, cost, alpha=0.0, window=64, barrier_us=0.5)
    assert flat == [[g.topo_order]]  # concurrency worth nothing: one stage, one stream
    total, par = stage_dp(g, cost, alpha=1.0, window=64, barrier_us=0.5)
    validate_schedule(StageSchedule(par), g)
    assert max(len(stage) for stage in par) == 3  # the three branches side by side
    work = sum(cost.values())
    assert total < work + 1.0 * work + 0.5  # cheaper than the one-stream stage
    assert total == pytest.approx(
        sum(
            sum(cost[n] for grp in st for n in grp)
            + max(sum(cost[n] for n in grp) for grp in st)
            + 0.5
            for st in par
        )
    )


@settings(max_examples=25, deadline=None)
@given(g=strategies.dags(max_ops=30), alpha=st.floats(0, 5), window=st.integers(1, 12))
def test_stage_dp_gives_valid_stages(g: OpGraph, alpha: float, window: int) -> None:
    cost = {n: float(len(n)) for n in g.ops}
    total, stages = stage_dp(g, cost, alpha, window, barrier_us=1.0)
    validate_schedule(StageSchedule(stages), g)
    assert all(sum(len(grp) for grp in stage) <= window for stage in stages)
    assert total >= sum(cost.values())


# --- the scheduler --------------------------------------------------------------------------


def test_inception_v100_valid_and_faster_than_sequential(inception: OpGraph) -> None:
    r = run_scheduler("autograph", inception, MACHINE)
    s = r.schedule
    validate_schedule(s, s.graph or inception)
    validate_program(r.program, s.graph or inception)
    assert s.graph_mode
    seq = run_scheduler("sequential", inception, MACHINE)
    seq_graph = run_scheduler("sequential-graph", inception, MACHINE)
    assert r.latency_ms <= seq.latency_ms
    assert r.latency_ms <= seq_graph.latency_ms
    assert s.meta["latency_us"] == pytest.approx(r.timeline.makespan_us)
    assert 1 <= s.meta["iterations"] <= AutoGraph().budget


def test_merges_are_kept_only_when_a_run_says_so() -> None:
    """The result is the fastest measured run; a rewritten graph is returned only if
    its run beat the unrewritten one (A100, high alpha: the search does propose merges)."""
    g = build_model("inception_v3")
    m = Machine.single(preset("a100"))
    r = run_scheduler("autograph", g, m, {"alpha": 3.0, "rewrites": "merge"})
    s = r.schedule
    hist = s.meta["history"]
    assert hist[0]["merges"] == 0 and any(h["merges"] for h in hist[1:])
    assert r.timeline.makespan_us <= min(h["latency_us"] for h in hist) * (1 + 1e-12)
    if s.meta["merged"]:
        assert s.graph is not None and r.timeline.makespan_us < hist[0]["latency_us"]
        assert sorted(s.meta["merged"]) == sorted(
            "+".join(op.attrs["replaces"]) for op in s.graph if "replaces" in op.attrs
        )
    else:
        assert s.graph is None


def test_convergence_budget_and_tolerance() -> None:
    g = block()
    one = make_scheduler("autograph", {"budget": 1}).schedule(g, Profiler(MACHINE))
    assert one.meta["iterations"] == 1 and one.meta["history"][0]["merges"] == 0
    strict = make_scheduler("autograph", {"tolerance": 1.0}).schedule(g, Profiler(MACHINE))
    assert strict.meta["iterations"] <= 2  # no run can improve by 100 %


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(g=st.one_of(conv_blocks(), strategies.dags(max_ops=25)), gpu=strategies.gpus())
def test_never_slower_than_one_stream_cuda_graph(g: OpGraph, gpu) -> None:
    m = Machine.single(gpu)
    r = run_scheduler("autograph", g, m)
    s = r.schedule
    validate_program(r.program, s.graph or g)
    base = run_scheduler("sequential-graph", g, m)
    assert r.timeline.makespan_us <= base.timeline.makespan_us * (1 + 1e-9)


def test_deterministic(inception: OpGraph) -> None:
    a = run_scheduler("autograph", inception, MACHINE, {"alpha": 3.0})
    b = run_scheduler("autograph", inception, MACHINE, {"alpha": 3.0})
    assert a.schedule.meta == b.schedule.meta
    assert isinstance(a.schedule, StageSchedule | StreamSchedule)
    assert a.program.commands == b.program.commands
    assert a.timeline.makespan_us == b.timeline.makespan_us


def test_same_result_under_any_hash_seed() -> None:
    """No set or dict-of-strings iteration order leaks into the search (two processes,
    different PYTHONHASHSEED)."""
    code = (
        "import json;from schedulers.base import run_scheduler;"
        "from simgpu.hardware import Machine, preset;"
        "from test_autograph import block;"
        "r = run_scheduler('autograph', block((64, 48, 64, 32), (1, 1, 3, 3)), "
        "Machine.single(preset('a100')), {'alpha': 3.0});"
        "print(json.dumps([r.schedule.meta, r.timeline.makespan_us], default=str))"
    )
    outs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
        res = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        outs.append(res.stdout)
    assert outs[0] == outs[1] and outs[0].strip()


def test_bad_options_are_one_line_errors() -> None:
    for key, value in (("alpha", -1.0), ("budget", 0), ("window", 0), ("tolerance", -0.1)):
        with pytest.raises(SchedulerError, match=rf"^option autograph\.{key} must be"):
            make_scheduler("autograph", {key: value}).schedule(block(), Profiler(MACHINE))


def test_cli_alpha_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert make_scheduler("autograph", {"alpha": "0.5"}).alpha == 0.5
    rc = main(
        [
            "run",
            "inception_v3",
            "--scheduler",
            "autograph",
            "--option",
            "autograph.alpha=0.5",
            "--json",
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 0, err
    (row,) = [r for r in json.loads(out)["results"] if r["scheduler"] == "autograph"]
    assert row["speedup"] >= 1.0
    rc = main(["run", "inception_v3", "--scheduler", "autograph", "--option", "autograph.alpha=x"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("simgpu: error: option autograph.alpha")
    assert len(err.strip().splitlines()) == 1


def test_alpha_changes_the_search() -> None:
    g = block()
    low = make_scheduler("autograph", {"alpha": 0.0}).schedule(g, Profiler(MACHINE))
    high = make_scheduler("autograph", {"alpha": 4.0}).schedule(g, Profiler(MACHINE))
    assert low.meta["history"][0]["cost"] < high.meta["history"][0]["cost"]


# --- fusion, splitting, zero-padded merges ---------------------------------------------------


def chain_graph() -> OpGraph:
    """conv -> relu -> add(., y) -> relu: a chain the conv's epilogue can run."""
    b = GraphBuilder("chain")
    x = b.input((1, 64, 28, 28), name="x")
    y = b.input((1, 64, 28, 28), name="y")
    c = b.conv(x, 64, 3, padding=1, name="c", act=None, folded_bn=False)
    b.relu(b.add(b.relu(c, name="r"), y, name="a"), name="out")
    return b.build()


def late_residual_graph() -> OpGraph:
    """A conv added to the end of a six-conv branch: fusing the add into the conv makes
    the conv wait for the branch instead of running beside it."""
    b = GraphBuilder("late")
    x = b.input((1, 256, 14, 14), name="x")
    c = b.conv(x, 256, 3, padding=1, name="c", act=None, folded_bn=False)
    h = x
    for i in range(6):
        h = b.conv(h, 256, 3, padding=1, name=f"l{i}", act=None, folded_bn=False)
    b.add(c, h, name="a")
    return b.build()


def split_graph() -> OpGraph:
    """A large 1x1 conv beside a pool (on a V100 its two halves beat it, concat included)."""
    b = GraphBuilder("split")
    x = b.input((1, 1024, 14, 14), name="x")
    big = b.conv(x, 768, 1, name="big", act=None, folded_bn=False)
    b.concat([big, b.pool(x, "max", 3, stride=1, padding=1, name="side")], name="cat")
    return b.build()


def pad_graph(c: int, hw: int, cout: int) -> OpGraph:
    """A 1x1 and a 3x3 conv reading one input: mergeable by zero-padding the 1x1."""
    b = GraphBuilder("pad")
    x = b.input((1, c, hw, hw), name="x")
    b.concat([b.conv(x, cout, 1, name="a"), b.conv(x, cout, 3, padding=1, name="d")], name="cat")
    return b.build()


def _sinks(g: OpGraph) -> set[str]:
    return {n for n in g.ops if not g.successors(n)}


def _assert_rewrite_of(new: OpGraph, g: OpGraph) -> None:
    """``new`` computes ``g``'s outputs: every op of ``g`` is there with its shape or is
    fused away into an op that names it, inputs and outputs are the same, and a
    schedule carrying ``new`` validates against ``g``."""
    check_rewrite(g, StageSchedule([[list(new.topo_order)]], graph=new))
    fused = {r: o.name for o in new for r in o.attrs.get("replaces", ()) if r not in new}
    for op in g:
        if op.name in new:
            assert new[op.name].output_shape == op.output_shape
        else:
            assert op.name in fused
    assert _sinks(new) == _sinks(g)
    assert {o.name for o in new.inputs} == {o.name for o in g.inputs}


def test_fusion_candidates_and_the_fused_conv() -> None:
    g = chain_graph()
    assert fuse_candidates(g) == [("c", "r"), ("c", "r", "a"), ("c", "r", "a", "out")]
    f = fused_op(g, ("c", "r", "a", "out"))
    assert (f.name, f.kind, f.inputs) == ("out", "conv", ("x", "y"))
    assert f.attrs["epilogue"] == ("relu", "add", "relu") and f.attrs["activation"] is None
    new = apply_rewrites(g, fuses=[("c", "r", "a", "out")])
    _assert_rewrite_of(new, g)
    assert [o.name for o in new] == ["x", "y", "out"]
    # the same work in one kernel: FLOPs of the four ops, bytes without the three
    # intermediate tensors (written and read back) but with y read by the epilogue
    assert new.stats("out").flops == sum(g.stats(n).flops for n in ("c", "r", "a", "out"))
    tensor = 64 * 28 * 28 * 4
    assert new.stats("out").bytes_read == 2 * tensor + g.stats("c").params * 4
    # a conv's own BatchNorm and activation fold too (chain of length 0)
    b = GraphBuilder("own")
    b.conv(b.input((1, 16, 8, 8), name="x"), 16, 3, padding=1, name="c")
    own = b.build()
    assert fuse_candidates(own) == [("c",)]
    fc = fused_op(own, ("c",))
    assert fc.attrs["bias"] and not fc.attrs["folded_bn"] and fc.attrs["epilogue"] == ("relu",)
    assert apply_rewrites(own, fuses=[("c",)]).stats("c").flops == own.stats("c").flops


def test_fusion_stops_where_a_value_has_another_reader() -> None:
    b = GraphBuilder("fork")
    x = b.input((1, 16, 8, 8), name="x")
    c = b.conv(x, 16, 3, padding=1, name="c", act=None, folded_bn=False)
    r = b.relu(c, name="r")
    b.add(r, b.relu(r, name="r2"), name="a")  # r has two readers: the chain ends at r
    g = b.build()
    assert fuse_candidates(g) == [("c", "r")]
    with pytest.raises(RewriteError):
        fused_op(g, ("c", "r", "a"))
    ok = OpGraph([g["x"], fused_op(g, ("c", "r")), g["r2"], g["a"]], name=g.name)
    check_rewrite(g, StageSchedule([[list(ok.topo_order)]], graph=ok))
    # a graph that drops c and r while naming them, though r2 read r, is no rewrite
    forged = OpGraph(
        [g["x"], Op("r2", "relu", ("x",), (1, 16, 8, 8)), Op("a", "add", ("x", "r2"), (1, 16, 8, 8),
         attrs={"replaces": ("c", "r")})], name=g.name)  # fmt: skip
    with pytest.raises(ScheduleError, match="lacks op"):
        check_rewrite(g, StageSchedule([[list(forged.topo_order)]], graph=forged))


def test_split_is_exact() -> None:
    g = split_graph()
    half0, half1, cat = split_ops(g, "big")
    assert (half0.attrs["out_channels"], half1.attrs["out_channels"]) == (384, 384)
    assert cat.name == "big" and cat.kind == "concat" and cat.inputs == (half0.name, half1.name)
    new = apply_rewrites(g, splits=["big"])
    _assert_rewrite_of(new, g)
    assert new.macs == g.macs and new.flops == g.flops  # the same MACs, in two launches
    b = GraphBuilder("odd")
    b.conv(b.input((1, 8, 8, 8), name="x"), 20, 1, name="c")
    h0, h1, _ = split_ops(b.build(), "c")
    assert (h0.attrs["out_channels"], h1.attrs["out_channels"]) == (8, 12)


def test_zero_padded_merge_of_a_1x1_and_a_3x3() -> None:
    g = pad_graph(256, 7, 64)
    (cls,) = merge_candidates(g)
    new = apply_rewrites(g, merges=[cls])
    _assert_rewrite_of(new, g)
    merged = new["a+d"]
    assert merged.attrs["kernel"] == (3, 3) and merged.attrs["padding"] == (1, 1)
    assert merged.attrs["out_channels"] == 128
    assert new.macs == 2 * 64 * 7 * 7 * 256 * 9  # the 1x1 now costs a 3x3's MACs
    assert new.macs > g.macs


def _measured(g: OpGraph, gpu: str, rewrites: str, state) -> float:
    """What autograph's measured step gives one rewrite set on ``g``."""
    p = Profiler(Machine.single(preset(gpu)), runtime=get_runtime("cuda-graph"))
    rw = _Rewrites(g, p, 1.0, tuple(rewrites.split(",")))
    new = rw.apply(*state)
    _, stages = stage_dp(new, op_costs(new, p), 1.0, 32, p.gpu.event_latency_us)
    sched = StageSchedule(stages, graph=None if new is g else new, barrier="events",
                          graph_mode=True)  # fmt: skip
    return p.measure(sched, g)


def _autograph(g: OpGraph, gpu: str, rewrites: str) -> StageSchedule | StreamSchedule:
    return make_scheduler("autograph", {"rewrites": rewrites}).schedule(
        g, Profiler(Machine.single(preset(gpu)), runtime=get_runtime("cuda-graph"))
    )


@pytest.mark.parametrize(
    ("kind", "make", "gpu", "key", "want"),
    [
        ("fuse", chain_graph, "v100", "fused", ["c+r+a+out"]),
        ("fuse", chain_graph, "a100", "fused", ["c+r+a+out"]),
        ("split", split_graph, "v100", "split", ["big"]),
        ("merge", lambda: pad_graph(1024, 7, 64), "v100", "merged", ["a+d"]),
    ],
)
def test_a_rewrite_that_pays_is_chosen(
    kind: str, make: Callable[[], OpGraph], gpu: str, key: str, want: list[str]
) -> None:
    g = make()
    none = _autograph(g, gpu, "")
    got = _autograph(g, gpu, kind)
    assert got.meta[key] == want
    assert got.meta["latency_us"] < none.meta["latency_us"] * 0.97
    validate_schedule(got, got.graph)
    _assert_rewrite_of(got.graph, g)


def test_a_rewrite_that_does_not_pay_is_not_chosen() -> None:
    # fusing the add into c: c waits for the six-conv branch (measured slower)
    g = late_residual_graph()
    rw = _Rewrites(g, Profiler(MACHINE), 1.0, ("fuse",))
    i = rw.local.index(("fuse", ("c", "a")))
    assert _measured(g, "v100", "fuse", ((), (i,))) > _measured(g, "v100", "fuse", ((), ()))
    assert "c+a" not in _autograph(g, "v100", "fuse").meta["fused"]
    # the split that pays on a V100 does not on an A100: not taken there
    s = split_graph()
    assert _measured(s, "a100", "split", ((), (0,))) > _measured(s, "a100", "split", ((), ()))
    got = _autograph(s, "a100", "split")
    assert got.meta["split"] == [] and got.graph is None
    # padding a 1x1 to a 3x3 at 56x56 costs nine times its MACs: not taken
    big = pad_graph(256, 56, 256)
    assert _measured(big, "v100", "merge", ((("a", "d"),), ())) > _measured(
        big, "v100", "merge", ((), ())
    )
    assert _autograph(big, "v100", "merge").meta["merged"] == []


@pytest.mark.parametrize("gpu", ["v100", "a100"])
def test_never_slower_than_without_rewrites(gpu: str) -> None:
    g = build_model("googlenet")
    m = Machine.single(preset(gpu))
    full = run_scheduler("autograph", g, m)
    plain = run_scheduler("autograph", g, m, {"rewrites": ""})
    assert full.timeline.makespan_us <= plain.timeline.makespan_us
    assert plain.schedule.graph is None and plain.schedule.meta["iterations"] == 1
    s = full.schedule
    if s.graph is not None:
        _assert_rewrite_of(s.graph, g)
        validate_program(full.program, s.graph)


def test_unknown_rewrite_is_a_one_line_error() -> None:
    with pytest.raises(
        SchedulerError, match=r"^option autograph\.rewrites: unknown rewrite 'fold'"
    ):
        make_scheduler("autograph", {"rewrites": "merge,fold"}).schedule(block(), Profiler(MACHINE))


# --- numeric check: a rewritten graph computes the original's outputs --------------------


def _weights(g: OpGraph, rng: np.random.Generator) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Weights and bias of each original conv (a folded BatchNorm is a bias)."""
    out = {}
    for op in g:
        if op.kind == "conv":
            kh, kw = op.attrs["kernel"]
            cin = g[op.inputs[0]].output_shape[1]
            w = rng.standard_normal((op.attrs["out_channels"], cin, kh, kw))
            has_b = op.attrs.get("bias") or op.attrs.get("folded_bn")
            out[op.name] = (w, rng.standard_normal(w.shape[0]) if has_b else np.zeros(w.shape[0]))
    return out


def _conv_weights(op: Op, orig: dict) -> tuple[np.ndarray, np.ndarray]:
    """A conv's weights in a rewritten graph, derived only from the originals: a fused
    conv has its producer's, a split half its slice, a merged conv its members'
    zero-padded and stacked."""
    reps = op.attrs.get("replaces", ())
    if "epilogue" in op.attrs and not (len(reps) > 1 and all(r in orig for r in reps)):
        return orig[reps[0]]  # a fused chain (a merge names only convs)
    for i, suffix in enumerate((".split0", ".split1")):
        if op.name.endswith(suffix):
            w, b = orig[op.name[: -len(suffix)]]
            c = op.attrs["out_channels"]
            sl = slice(0, c) if i == 0 else slice(w.shape[0] - c, w.shape[0])
            return w[sl], b[sl]
    if reps:
        kh, kw = op.attrs["kernel"]
        ws, bs = [], []
        for m in reps:
            w, b = orig[m]
            ph, pw = (kh - w.shape[2]) // 2, (kw - w.shape[3]) // 2
            ws.append(np.pad(w, ((0, 0), (0, 0), (ph, ph), (pw, pw))))
            bs.append(b)
        return np.concatenate(ws), np.concatenate(bs)
    return orig[op.name]


def _run(g: OpGraph, orig: dict, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    act = {"relu": lambda v: np.maximum(v, 0.0), None: lambda v: v}
    val: dict[str, np.ndarray] = {}
    for n in g.topo_order:
        op = g[n]
        ins = [val[i] for i in op.inputs]
        if op.kind == "input":
            val[n] = feeds[n]
        elif op.kind == "conv":
            w, b = _conv_weights(op, orig)
            (ph, pw), (kh, kw) = op.attrs["padding"], op.attrs["kernel"]
            x = np.pad(ins[0], ((0, 0), (0, 0), (ph, ph), (pw, pw)))
            ho, wo = op.output_shape[2:]
            cols = np.stack(
                [x[:, :, i : i + ho, j : j + wo] for i in range(kh) for j in range(kw)], axis=-1
            )  # n, c, ho, wo, kh*kw
            y = np.einsum("nchwk,ock->nohw", cols, w.reshape(*w.shape[:2], -1)) + b[:, None, None]
            y = act[op.attrs.get("activation")](y)
            operands = iter(ins[1:])
            for step in op.attrs.get("epilogue", ()):
                y = y + next(operands) if step == "add" else act[step](y)
            val[n] = y
        elif op.kind == "relu":
            val[n] = act["relu"](ins[0])
        elif op.kind == "add":
            val[n] = ins[0] + ins[1]
        elif op.kind == "concat":
            val[n] = np.concatenate(ins, axis=1)
        elif op.kind == "slice":
            val[n] = ins[0][:, op.attrs["begin"] : op.attrs["end"]]
        else:
            raise AssertionError(f"no reference for {op.kind}")
    return val


def test_rewritten_graphs_compute_the_same_outputs() -> None:
    """Fusions, splits and zero-padded merges, alone and together, on a graph that has
    each: the rewritten graph's outputs (and every op it keeps) equal the original's."""
    b = GraphBuilder("mix")
    x = b.input((1, 8, 6, 6), name="x")
    y = b.input((1, 16, 6, 6), name="y")
    a = b.conv(x, 16, 1, name="a")  # 1x1 and 3x3 siblings: mergeable
    d = b.conv(x, 16, 3, padding=1, name="d")
    c = b.conv(d, 16, 3, padding=1, name="c", act=None, folded_bn=False)
    r = b.add(b.relu(c, name="r"), y, name="res")
    big = b.conv(x, 24, 1, name="big", folded_bn=False, act=None)
    b.concat([a, b.relu(r, name="out"), big], name="cat")
    g = b.build()
    rng = np.random.default_rng(0)
    orig = _weights(g, rng)
    feeds = {"x": rng.standard_normal((1, 8, 6, 6)), "y": rng.standard_normal((1, 16, 6, 6))}
    want = _run(g, orig, feeds)
    for merges, fuses, splits in [
        ([("a", "d")], [], []),
        ([], [("c", "r", "res", "out")], []),
        ([], [("a",)], ["big"]),
        ([("a", "d")], [("c", "r", "res")], ["big"]),  # the merged a+d folds its BN, ReLU
    ]:
        new = apply_rewrites(g, merges, fuses, splits, fold_merged=bool(fuses))
        _assert_rewrite_of(new, g)
        got = _run(new, orig, feeds)
        for n in new.ops:
            if n in g:
                np.testing.assert_allclose(got[n], want[n], rtol=1e-9, atol=1e-9)
    assert fuse_candidates(g)[:2] == [("a",), ("d",)]


def test_rewrites_the_cost_cannot_see_do_not_stop_the_search(inception: OpGraph) -> None:
    """Under ``cudnn`` a conv's BatchNorm and ReLU already run in its kernel, so fusing
    them changes nothing: such states tie with their parents. They must neither eat the
    search (2^k orderings) nor end the measured loop before the second merge of
    Mixed_7b, which the merge-only search finds."""
    block = cut_out(inception, [n for n in inception.topo_order if n.startswith("Mixed_7b.")])
    m = Machine.single(V100)
    full = run_scheduler("autograph", block, m, runtime="cudnn")
    merge = run_scheduler("autograph", block, m, {"rewrites": "merge"}, runtime="cudnn")
    assert len(merge.schedule.meta["merged"]) == 2
    assert full.schedule.meta["merged"] == merge.schedule.meta["merged"]
    assert full.timeline.makespan_us <= merge.timeline.makespan_us
    assert full.schedule.meta["search_nodes"] < AutoGraph().max_nodes


def test_a_rewritten_schedule_survives_its_json_file() -> None:
    """A schedule carrying a fused, split and merged graph is written and read back
    (the strict reader knows ``epilogue``), still validates against the graph given,
    and runs to the same latency."""
    g = chain_graph()
    p = Profiler(MACHINE, runtime=get_runtime("cuda-graph"))
    new = apply_rewrites(g, fuses=[("c", "r", "a", "out")])
    sched = StageSchedule([[list(new.topo_order)]], graph=new, barrier="events", graph_mode=True)
    back = schedule_from_json(json.loads(json.dumps(schedule_to_json(sched))))
    assert back.graph == new
    check_rewrite(g, back)
    assert p.measure(back, g) == p.measure(sched, g)
