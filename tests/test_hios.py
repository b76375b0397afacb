"""HIOS (hios, hios-mr): the longest-path and earliest-finish mappings, the intra-GPU
sliding window, the cross-GPU cycle checks, one-GPU reduction, random DAGs on random
machines, and the CLI comparison with --machine."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import dags
from test_multigpu import machines

from schedulers.base import Profiler, SchedulerError, make_scheduler, run_scheduler
from schedulers.hios import (
    Costs,
    find_cycle,
    intra_gpu,
    longest_path,
    map_earliest_finish,
    map_longest_paths,
    merge_stages,
)
from simgpu.cli import main
from simgpu.graph import Op, OpGraph
from simgpu.hardware import Link, Machine, load_gpu, load_machine
from simgpu.program import lower, validate_program
from simgpu.schedule import StreamSchedule, validate_schedule
from simgpu.sim.engine import simulate

V100 = load_gpu("v100")
SETTINGS = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}

SHAPE = (1, 256, 28, 28)


def _conv(name: str, src: str) -> Op:
    attrs = {"kernel": [3, 3], "stride": [1, 1], "padding": [1, 1], "out_channels": 256}
    return Op(name, "conv", (src,), SHAPE, attrs=attrs)


def branches(n: int = 2, depth: int = 4) -> OpGraph:
    """An input, ``n`` independent chains of ``depth`` heavy convs, and a sum."""
    ops = [Op("x", "input", (), SHAPE)]
    ends = []
    for b in range(n):
        prev = "x"
        for i in range(depth):
            ops.append(_conv(f"b{b}c{i}", prev))
            prev = f"b{b}c{i}"
        ends.append(prev)
    ops.append(Op("sum", "add", tuple(ends), SHAPE))
    return OpGraph(ops, name=f"branches{n}x{depth}")


def _machine(gbps: float = 50.0, n: int = 2) -> Machine:
    links = tuple(Link(a, b, "custom", 1, gbps, 2.0) for a in range(n) for b in range(a + 1, n))
    return Machine(f"{n}x", (V100,) * n, links)


def _valid(sched: StreamSchedule, graph: OpGraph, machine: Machine) -> float:
    validate_schedule(sched, graph)
    prog = lower(sched, graph, machine)
    validate_program(prog, graph)
    return simulate(prog, machine).makespan_us


# --- building blocks ----------------------------------------------------------------------


def test_longest_path_counts_transfer_edges() -> None:
    g = OpGraph(
        [
            Op("x", "input", (), (1, 8)),
            Op("a", "relu", ("x",), (1, 8)),
            Op("b", "relu", ("x",), (1, 8)),
            Op("c", "add", ("a", "b"), (1, 8)),
        ]
    )
    c = Costs.of(g, Profiler(_machine()))
    assert c.comm["a"] == pytest.approx(2.0 + 32 / 50e3)  # latency + bytes / bandwidth
    c.latency = {"x": 0.0, "a": 10.0, "b": 5.0, "c": 1.0}
    c.comm = {"x": 0.0, "a": 0.0, "b": 100.0, "c": 0.0}
    # b's output is costly to move: x-b-c outweighs x-a-c although b is faster
    assert longest_path(c, set(g.ops)) == ["x", "b", "c"]
    assert longest_path(c, {"a", "c"}) == ["a", "c"]
    c.comm = dict.fromkeys(g.ops, 0.0)
    assert longest_path(c, set(g.ops)) == ["x", "a", "c"]


def test_find_cycle_across_gpus() -> None:
    g = OpGraph(
        [
            Op("a", "input", (), (1, 8)),
            Op("b", "relu", ("a",), (1, 8)),
            Op("c", "relu", ("b",), (1, 8)),
        ]
    )
    assert find_cycle(g, [["a", "c"], ["b"]]) is None
    # GPU 0 runs c before a, while a -> b (GPU 1) -> c: every stream waits on another
    assert find_cycle(g, [["c", "a"], ["b"]]) == ["a", "b", "c"]
    assert find_cycle(g, [["c"], ["b"]]) is None  # ops left out are ignored


def test_merge_rejects_ops_joined_through_another_gpu() -> None:
    g = OpGraph(
        [
            Op("x", "input", (), (1, 64)),
            Op("a", "relu", ("x",), (1, 64)),
            Op("m", "relu", ("a",), (1, 64)),  # on the other GPU
            Op("b", "relu", ("m",), (1, 64)),
            Op("d", "relu", ("x",), (1, 64)),
        ]
    )
    c = Costs.of(g, Profiler(_machine()))
    assert merge_stages(c, [[["a"]], [["b"]]], streams=2) is None  # a -> m -> b
    assert merge_stages(c, [[["a"]], [["d"]]], streams=2) == [["a"], ["d"]]
    assert merge_stages(c, [[["a"], ["d"]], [["b"]]], streams=4) is None
    assert merge_stages(c, [[["a"]], [["d"]]], streams=1) is None  # one stream only


def test_options_are_checked() -> None:
    g = branches()
    for name in ("hios", "hios-mr"):
        with pytest.raises(SchedulerError, match="window must be at least 1"):
            make_scheduler(name, {"window": "0"}).schedule(g, Profiler(_machine()))
        with pytest.raises(SchedulerError, match="streams must be at least 1"):
            make_scheduler(name, {"streams": "0"}).schedule(g, Profiler(_machine()))


# --- mapping ------------------------------------------------------------------------------


def test_independent_branches_go_to_different_gpus() -> None:
    g = branches(2, 4)
    m = _machine(gbps=50.0)
    for name in ("hios", "hios-mr"):
        r = run_scheduler(name, g, m)
        mapping = r.schedule.meta["mapping"]
        assert {mapping[f"b0c{i}"] for i in range(4)} != {mapping[f"b1c{i}"] for i in range(4)}
        assert len({mapping[f"b0c{i}"] for i in range(4)}) == 1  # a chain stays together
        seq = run_scheduler("sequential", g, m).latency_ms
        assert r.latency_ms < 0.8 * seq, name
        assert r.timeline.copies  # the branch on the other GPU gets and returns its data


def test_a_slow_link_keeps_everything_on_one_gpu() -> None:
    g = branches(2, 2)
    m = _machine(gbps=0.01)  # 1e4 bytes/us: moving a 3 MB tensor costs 300 us
    for name in ("hios", "hios-mr"):
        r = run_scheduler(name, g, m)
        assert set(r.schedule.meta["mapping"].values()) == {0}, name
        assert not r.timeline.copies


def test_hios_lp_measures_each_path_on_each_gpu() -> None:
    g = branches(3, 2)
    m = _machine(n=3)
    p = Profiler(m)
    c = Costs.of(g, p)
    before = p.calls
    mapping, stats = map_longest_paths(c)
    assert stats["paths"] >= 3 and stats["cycle_rejections"] == 0
    assert p.calls - before == stats["paths"] * 3  # every path tried on every GPU
    assert set(mapping) == set(g.ops)
    assert len({mapping[f"b{b}c0"] for b in range(3)}) == 3  # three branches, three GPUs


def test_hios_mr_earliest_finish_model() -> None:
    g = branches(2, 3)
    c = Costs.of(g, Profiler(_machine()))
    mapping, stats = map_earliest_finish(c)
    lat = c.latency
    chain = sum(lat[f"b0c{i}"] for i in range(3))
    assert stats["model_latency_us"] < 2 * chain  # the chains overlap in the model
    assert mapping["b0c0"] != mapping["b1c0"]


# --- one GPU ------------------------------------------------------------------------------


@pytest.mark.parametrize(("window", "streams"), [(2, 2), (3, 2), (2, 4), (1, 2), (2, 1)])
def test_one_gpu_hios_is_its_intra_gpu_schedule(window: int, streams: int) -> None:
    g = branches(3, 3)
    m = Machine.single(V100)
    opts = {"window": window, "streams": streams}
    got = make_scheduler("hios", opts).schedule(g, Profiler(m))
    want, _ = intra_gpu(Costs.of(g, Profiler(m)), dict.fromkeys(g.ops, 0), window, streams)
    assert got.streams == want.streams and got.devices == want.devices == [0] * len(want.streams)
    if window == 1 or streams == 1:
        assert len(got.streams) == 1  # no window: one stream in latest-start order


def test_one_gpu_mapping_costs_no_measurement() -> None:
    g = branches(3, 3)
    p = Profiler(Machine.single(V100))
    c = Costs.of(g, p)
    calls = p.calls
    mapping, _ = map_longest_paths(c)
    assert p.calls == calls and set(mapping.values()) == {0}


def test_window_merges_independent_ops_on_one_gpu() -> None:
    g = branches(4, 1)  # four independent small convs: concurrency pays on one GPU
    r = run_scheduler("hios", g, Machine.single(V100))
    assert r.schedule.meta["window_merges"] >= 1
    assert len(r.schedule.streams) == 2
    assert r.latency_ms <= run_scheduler("sequential", g, Machine.single(V100)).latency_ms


# --- properties ---------------------------------------------------------------------------


@settings(max_examples=25, **SETTINGS)
@given(machines(max_gpus=3), dags(max_ops=14), st.sampled_from(("hios", "hios-mr")), st.data())
def test_random_dags_on_random_machines(m: Machine, g: OpGraph, name: str, data) -> None:
    window = data.draw(st.integers(1, 3))
    streams = data.draw(st.integers(1, 3))
    sched = make_scheduler(name, {"window": window, "streams": streams}).schedule(g, Profiler(m))
    assert sorted(sched.ops()) == sorted(g.ops)
    assert all(0 <= d < len(m.devices) for d in sched.devices)
    per_gpu = [sum(1 for d in sched.devices if d == p) for p in range(len(m.devices))]
    assert max(per_gpu) <= streams  # at most `streams` streams per GPU
    assert find_cycle(g, sched.streams) is None
    lat = _valid(sched, g, m)
    assert lat == pytest.approx(sched.meta["latency_us"])  # what the search measured
    assert lat <= sched.meta["sequential_per_gpu_us"] + 1e-9  # the window never slows it
    again = make_scheduler(name, {"window": window, "streams": streams}).schedule(g, Profiler(m))
    assert again.streams == sched.streams and again.devices == sched.devices


# --- CLI ----------------------------------------------------------------------------------


def test_cli_run_compares_hios_with_single_gpu_schedulers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["run", "squeezenet1_0", "--image-size", "331", "--machine", "2xv100-nvlink"]
    argv += ["--scheduler", "sequential", "--scheduler", "greedy", "--scheduler", "hios"]
    assert main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["machine"] == "2xv100-nvlink" and out["devices"] == 2
    rows = {r["scheduler"]: r for r in out["results"]}
    assert set(rows) == {"sequential", "greedy", "hios"}
    assert all(r["status"] == "ok" for r in rows.values())
    assert rows["hios"]["latency_ms"] < rows["sequential"]["latency_ms"]
    assert all(r["bound_gap"] >= -1e-9 for r in rows.values())  # the machine bound holds
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "on 2xv100-nvlink" in text and "hios" in text


def test_cli_all_on_a_machine_includes_multi_gpu_schedulers() -> None:
    from schedulers.base import scheduler_names

    assert {"hios", "hios-mr"} <= set(scheduler_names())
    assert not {"hios", "hios-mr"} & set(scheduler_names(single_gpu_only=True))


def test_single_gpu_schedulers_run_on_device_zero_of_a_machine() -> None:
    g = branches(2, 2)
    m = load_machine("2xv100-nvlink")
    r = run_scheduler("greedy", g, m)
    assert {k.device for k in r.timeline.kernels} == {0}
    assert r.latency_ms == run_scheduler("greedy", g, Machine.single(m.gpu)).latency_ms
