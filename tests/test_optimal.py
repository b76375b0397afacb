"""The ``optimal`` scheduler: known answers, a brute force that shares none of its code,
the optimality gap of every other scheduler, errors and determinism."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import strategies
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schedulers.base import Profiler, SchedulerError, make_scheduler, run_scheduler
from schedulers.base import scheduler_names as registered
from schedulers.optimal import Gap, cut_out, in_search_space, optimality_gaps
from simgpu.cli import main
from simgpu.graph import Op, OpGraph
from simgpu.hardware import GPUSpec, Machine, preset
from simgpu.models import build_model
from simgpu.models.builder import GraphBuilder
from simgpu.program import lower
from simgpu.schedule import StageSchedule, StreamSchedule, validate_schedule
from simgpu.sim.engine import simulate

V100 = preset("v100")
REL = 1e-9  # stage latencies add up exactly but for floating-point rounding


def optimal(graph: OpGraph, gpu: GPUSpec = V100, **opts: object) -> tuple[StageSchedule, float]:
    m = Machine.single(gpu)
    sched = make_scheduler("optimal", opts).schedule(graph, Profiler(m))
    assert isinstance(sched, StageSchedule)
    validate_schedule(sched, graph)
    return sched, simulate(lower(sched, graph, gpu), m).makespan_us


def chain(n: int) -> OpGraph:
    ops = [Op("x", "input", (), (1, 1 << 16))]
    for i in range(n - 1):
        kind = ("relu", "sigmoid", "gelu")[i % 3]
        ops.append(Op(f"c{i}", kind, (ops[-1].name,), (1, 1 << 16)))
    return OpGraph(ops, name=f"chain{n}")


def two_convs() -> OpGraph:
    """Two independent 1x1 convs of a batch-1 28x28 map with long main loops (K = 1024):
    latency-bound blocks that leave issue slots a co-running conv can use."""
    b = GraphBuilder("two_convs")
    x = b.input((1, 1024, 28, 28), name="x")
    b.conv(x, 256, 1, name="a")
    b.conv(x, 256, 1, name="b")
    return b.build()


# --- known answers ------------------------------------------------------------------------


def test_a_chain_is_one_stage_one_stream_like_sequential() -> None:
    g = chain(7)
    sched, lat = optimal(g)
    assert sched.stages == [[g.topo_order]]
    seq = simulate(lower(StreamSchedule([g.topo_order]), g, V100), Machine.single(V100)).makespan_us
    assert lat == pytest.approx(seq, rel=REL)


def test_two_heavy_independent_convs_run_side_by_side() -> None:
    g = two_convs()
    m = Machine.single(V100)
    p = Profiler(m)
    side = p.measure(StageSchedule([[["x"]], [["a"], ["b"]]]), g)
    serial = p.measure(StageSchedule([[["x", "a", "b"]]]), g)
    assert side < 0.9 * serial  # the simulator says concurrency pays here
    sched, lat = optimal(g)
    assert sched.stages == [[["x"]], [["a"], ["b"]]]
    assert lat == pytest.approx(side, rel=REL)


def test_prediction_is_the_simulated_latency_of_the_whole_schedule() -> None:
    g = two_convs()
    sched, lat = optimal(g)
    assert sched.meta["predicted_us"] == pytest.approx(lat, rel=REL)
    assert sched.meta["stage_measurements"] >= 1 and sched.meta["states"] >= 1


# --- against a brute force ----------------------------------------------------------------


def all_stage_schedules(graph: OpGraph) -> Iterator[list[list[list[str]]]]:
    """Every stage schedule in optimal's space, built forwards and naively: a next stage is
    any set that keeps what ran closed under inputs; any set partition of it whose groups
    share no edge; ops in topological order, groups ordered by their first op."""
    pos = {n: i for i, n in enumerate(graph.topo_order)}
    edges = set(graph.edges())

    def rec(done: frozenset[str]) -> Iterator[list[list[list[str]]]]:
        rest = [n for n in graph.topo_order if n not in done]
        if not rest:
            yield []
            return
        for k in range(1, len(rest) + 1):
            for stage in itertools.combinations(rest, k):
                now = done | set(stage)
                if any(u not in now for v in stage for u in graph.predecessors(v)):
                    continue
                for part in strategies.set_partitions(list(stage)):
                    if any(
                        (u, v) in edges
                        for a, b in itertools.permutations(part, 2)
                        for u in a
                        for v in b
                    ):
                        continue
                    groups = sorted(
                        (sorted(gr, key=pos.__getitem__) for gr in part),
                        key=lambda gr: pos[gr[0]],
                    )
                    for tail in rec(frozenset(now)):
                        yield [groups, *tail]

    yield from rec(frozenset())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_optimal_equals_brute_force_on_tiny_graphs(data: st.DataObject) -> None:
    """Random DAGs of up to 5 ops on random GPUs (SM counts, limits, host costs): the DP
    with its pruning finds the latency of the best of all stage schedules, each simulated
    whole — which also checks that stage latencies add up."""
    g = data.draw(strategies.dags(max_ops=5))
    gpu = data.draw(strategies.gpus(max_sm=16))
    m = Machine.single(gpu)
    p = Profiler(m)
    best = min(p.measure(StageSchedule(s), g) for s in all_stage_schedules(g))
    _, lat = optimal(g, gpu)
    assert lat == pytest.approx(best, rel=REL)


def _canonical(sched: StageSchedule, graph: OpGraph) -> StageSchedule:
    pos = {n: i for i, n in enumerate(graph.topo_order)}
    stages = [
        sorted((sorted(g, key=pos.__getitem__) for g in stage), key=lambda g: pos[g[0]])
        for stage in sched.stages
    ]
    return StageSchedule(stages)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(g=strategies.dags(min_ops=2, max_ops=9), gpu=strategies.gpus(max_sm=80))
def test_no_stage_scheduler_beats_optimal(g: OpGraph, gpu: GPUSpec) -> None:
    """Every registered single-GPU scheduler whose schedule lies in optimal's space
    (sequential, greedy, ios without merges, ...) is at least as slow. Stream schedules
    (nimble, lios, heft, wavefront: events instead of barriers), CUDA Graph runs and
    rewritten graphs are outside it and may legitimately be faster; a stage schedule
    with another issue order is put in canonical order first."""
    m = Machine.single(gpu)
    names = [n for n in registered(single_gpu_only=True) if n != "optimal"]
    gaps = optimality_gaps(g, m, names)
    assert [x.scheduler for x in gaps] == names
    assert any(x.in_space for x in gaps)  # sequential at least
    for x in gaps:
        if x.in_space:
            assert x.gap >= -REL, x
    opt = gaps[0].optimal_us
    for name in names:
        r = run_scheduler(name, g, m)
        s = r.schedule
        if isinstance(s, StageSchedule) and s.graph is None and not in_search_space(s, g):
            canon = Profiler(m).measure(_canonical(s, g), g)
            assert canon >= opt * (1 - REL), name


# --- the gap report -----------------------------------------------------------------------


def test_optimality_gaps_report() -> None:
    g = two_convs()
    m = Machine.single(V100)
    gaps = optimality_gaps(g, m, ["sequential", "sequential-graph", "optimal"])
    seq, graph_mode, opt = gaps
    assert isinstance(seq, Gap) and seq.in_space and not graph_mode.in_space
    assert opt.in_space and opt.gap == pytest.approx(0.0, abs=REL)
    # every schedule under optimal's runtime: the serial convs trail the side-by-side ones
    assert seq.gap > 0.1
    assert seq.optimal_us == opt.latency_us


def test_cut_out_makes_a_model_block_a_graph_of_its_own() -> None:
    g = build_model("inception_v3")
    names = [n for n in g.topo_order if n.startswith("Mixed_5c.")]
    sub = cut_out(g, names, name="Mixed_5c")
    assert list(sub.ops) == ["in0", *names]
    assert sub["in0"].kind == "input"
    assert sub["in0"].output_shape == g["Mixed_5b.concat"].output_shape
    for n in names:
        assert sub[n].attrs == g[n].attrs and sub[n].output_shape == g[n].output_shape
    assert sub.macs == sum(g.stats(n).macs for n in names)
    with pytest.raises(SchedulerError, match="op 'nope' is not in graph"):
        cut_out(g, ["nope"])


@pytest.mark.parametrize("block", ["Mixed_5c", "Mixed_7a"])
def test_no_scheduler_in_the_space_beats_optimal_on_inception_blocks(block: str) -> None:
    """Real convolutions on a V100: the heuristics' gaps, none negative in the space."""
    g = build_model("inception_v3")
    sub = cut_out(g, [n for n in g.topo_order if n.startswith(block + ".")], name=block)
    names = [n for n in registered(single_gpu_only=True) if n != "optimal"]
    gaps = optimality_gaps(sub, Machine.single(V100), names)
    assert sum(x.in_space for x in gaps) >= 2  # sequential and greedy at least
    for x in gaps:
        if x.in_space:
            assert x.gap >= -REL, x


def test_search_space_membership() -> None:
    g = chain(3)
    x, c0, c1 = g.topo_order
    assert in_search_space(StreamSchedule([[x, c0, c1]]), g)
    assert not in_search_space(StreamSchedule([[x, c0, c1]], graph_mode=True), g)
    assert not in_search_space(StreamSchedule([[x, c0], [c1]]), g)
    assert in_search_space(StageSchedule([[[x]], [[c0, c1]]]), g)
    assert not in_search_space(StageSchedule([[[x]], [[c0, c1]]], barrier="events"), g)
    h = two_convs()
    assert not in_search_space(StageSchedule([[["x"]], [["b"], ["a"]]]), h)  # issue order
    assert in_search_space(StageSchedule([[["x"]], [["a"], ["b"]]]), h)


# --- errors, options, determinism ---------------------------------------------------------


def test_too_large_graph_is_a_one_line_error() -> None:
    with pytest.raises(SchedulerError, match=r"^optimal handles at most 12 ops; graph has 13$"):
        optimal(chain(13))
    with pytest.raises(SchedulerError, match="at most 4 ops; graph has 7"):
        optimal(chain(7), max_ops=4)
    with pytest.raises(SchedulerError, match=r"max_ops must be 1\.\.20"):
        optimal(chain(2), max_ops=0)


def test_search_budget_is_a_clear_error() -> None:
    wide = OpGraph(
        [Op("x", "input", (), (1, 4096))]
        + [Op(f"r{i}", "relu", ("x",), (1, 4096)) for i in range(8)]
    )
    with pytest.raises(SchedulerError, match=r"needs more than 50 search nodes"):
        optimal(wide, max_nodes=50)


def test_wide_graph_of_twelve_ops_is_solved() -> None:
    """Eleven independent ops: Bell(11) = 678,570 partitions of the last stage alone,
    nearly all cut by the bounds."""
    wide = OpGraph(
        [Op("x", "input", (), (1, 1 << 16))]
        + [Op(f"r{i}", ("relu", "gelu")[i % 2], ("x",), (1, 1 << 16)) for i in range(11)]
    )
    sched, lat = optimal(wide)
    seq = run_scheduler("sequential", wide, Machine.single(V100)).timeline.makespan_us
    assert lat <= seq * (1 + REL)
    assert sched.meta["nodes"] < 200_000


def test_deterministic() -> None:
    g = two_convs()
    a, la = optimal(g)
    b, lb = optimal(g)
    assert a.stages == b.stages and a.meta == b.meta and la == lb


def _write_graph(tmp_path: Path, g: OpGraph) -> Path:
    p = tmp_path / "g.json"
    p.write_text(json.dumps(g.to_json()))
    return p


def test_cli_simulate_with_optimal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write_graph(tmp_path, two_convs())
    assert main(["simulate", str(path), "--gpu", "v100", "--scheduler", "optimal"]) == 0
    out = capsys.readouterr().out
    assert out.strip()


def test_cli_run_too_large_model_fails_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["run", "inception_v3", "--scheduler", "optimal"])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    text = out + err
    assert "optimal handles at most 12 ops; graph has" in text
    if rc != 0:  # a lone failing scheduler is an error exit, or a 'failed' row in the table
        assert rc == 2 and err.startswith("simgpu: error:")


def test_cli_option_reaches_optimal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write_graph(tmp_path, chain(6))
    rc = main(["simulate", str(path), "--scheduler", "optimal", "--option", "optimal.max_ops=3"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.strip() == "simgpu: error: optimal handles at most 3 ops; graph has 6"
