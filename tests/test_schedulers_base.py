"""The scheduler registry, option parsing, the Profiler oracle and run_scheduler."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from schedulers.base import (
    REGISTRY,
    Profiler,
    RunResult,
    SchedulerError,
    discover,
    make_scheduler,
    parse_options,
    register,
    run_scheduler,
    scheduler_names,
)
from schedulers.sequential import Sequential, SequentialGraph
from simgpu.errors import SimGPUError
from simgpu.graph import Op, OpGraph
from simgpu.hardware import Machine, preset
from simgpu.kernels import lower_graph, sequential_kernel_time_us
from simgpu.models import build_model
from simgpu.program import validate_program
from simgpu.schedule import StreamSchedule, validate_schedule

V100 = preset("v100")


@pytest.fixture(scope="module")
def inception() -> OpGraph:
    return build_model("inception_v3")


@pytest.fixture
def small() -> OpGraph:
    s = (1, 64, 28, 28)
    return OpGraph(
        [
            Op("x", "input", (), s),
            Op("a", "relu", ("x",), s),
            Op("b", "sigmoid", ("x",), s),
            Op("c", "add", ("a", "b"), s),
        ]
    )


# --- registry -------------------------------------------------------------------------


def test_discovery_lists_the_sequential_schedulers() -> None:
    reg = discover()
    assert {"sequential", "sequential-graph"} <= set(reg)
    assert reg["sequential"].cls is Sequential
    assert reg["sequential-graph"].cls is SequentialGraph
    assert not reg["sequential"].multi_gpu
    assert reg["sequential"].description  # first docstring line
    names = scheduler_names()
    assert names == sorted(names)
    assert {"sequential", "sequential-graph"} <= set(scheduler_names(single_gpu_only=True))
    assert all(not reg[n].multi_gpu for n in scheduler_names(single_gpu_only=True))
    assert discover() is reg  # idempotent


def test_registering_a_name_twice_is_refused() -> None:
    discover()
    before = dict(REGISTRY)

    @dataclass
    class Impostor:
        """Not the real one."""

    with pytest.raises(ValueError, match="registered twice"):
        register("sequential")(Impostor)
    assert before == REGISTRY


def test_make_scheduler_defaults_and_options() -> None:
    s = make_scheduler("sequential")
    assert isinstance(s, Sequential) and s.graph_mode is False
    assert make_scheduler("sequential-graph").graph_mode is True
    for text, want in [("true", True), ("1", True), ("On", True), ("no", False), ("0", False)]:
        assert make_scheduler("sequential", {"graph_mode": text}).graph_mode is want
    # non-string values pass through unchanged
    assert make_scheduler("sequential", {"graph_mode": True}).graph_mode is True


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("nosuch", None, r"unknown scheduler 'nosuch' \(known: .*sequential"),
        ("sequential", {"depth": "3"}, r"scheduler 'sequential' has no option 'depth'"),
        ("sequential", {"graph_mode": "maybe"}, r"sequential\.graph_mode: cannot read 'maybe'"),
    ],
)
def test_make_scheduler_errors(name: str, options: dict | None, match: str) -> None:
    with pytest.raises(SchedulerError, match=match):
        make_scheduler(name, options)
    assert issubclass(SchedulerError, SimGPUError)


def test_parse_options() -> None:
    assert parse_options([]) == {}
    assert parse_options(["ios.r=1"]) == {"ios": {"r": "1"}}
    assert parse_options(["ios.r=1", "ios.s=3", "lios.depth = 2 "]) == {
        "ios": {"r": "1", "s": "3"},
        "lios": {"depth": "2"},
    }
    assert parse_options(["ios.r=1", "ios.r=2"]) == {"ios": {"r": "2"}}  # last wins
    assert parse_options(["a.b=c=d"]) == {"a": {"b": "c=d"}}
    assert parse_options(["a.b="]) == {"a": {"b": ""}}


@pytest.mark.parametrize("item", ["ios", "ios=1", "r=1", ".r=1", "ios.=1", "ios.r", ""])
def test_malformed_option_string(item: str) -> None:
    with pytest.raises(SchedulerError, match=r"SCHEDULER\.NAME=VALUE"):
        parse_options([item])


# --- the Profiler ---------------------------------------------------------------------


def test_profiler_counts_calls_and_distinct_measurements(small: OpGraph) -> None:
    prof = Profiler(Machine.single(V100))
    seq = StreamSchedule([list(small.topo_order)])
    lat = prof.measure(seq, small)
    assert lat > 0
    assert prof.measure(seq, small) == lat
    assert (prof.calls, prof.distinct) == (2, 1)
    assert prof.gpu_search_s == pytest.approx((prof.warmup + prof.repeat) * lat / 1e6)
    # a genuinely different schedule is a new measurement
    two = StreamSchedule([["x", "a", "c"], ["b"]])
    lat2 = prof.measure(two, small)
    assert (prof.calls, prof.distinct) == (3, 2)
    assert prof.gpu_search_s == pytest.approx((prof.warmup + prof.repeat) * (lat + lat2) / 1e6)
    assert prof.sim_wall_s > 0


def test_profiler_warmup_and_repeat_scale_the_search_cost(small: OpGraph) -> None:
    prof = Profiler(Machine.single(V100), warmup=1, repeat=9)
    lat = prof.measure(StreamSchedule([list(small.topo_order)]), small)
    prof.measure(StreamSchedule([list(small.topo_order)]), small)
    assert prof.gpu_search_s == pytest.approx(10 * lat / 1e6)


def test_profiler_measure_program_matches_measure(small: OpGraph) -> None:
    prof = Profiler(Machine.single(V100))
    sched = StreamSchedule([["x", "a", "c"], ["b"]])
    prog = prof.program(sched, small)
    validate_program(prog, small)
    assert prof.measure_program(prog) == prof.measure(sched, small)
    assert prof.distinct == 1 and prof.calls == 2
    assert prof.gpu is V100


# --- run_scheduler ----------------------------------------------------------------------


def test_run_sequential_on_inception(inception: OpGraph) -> None:
    m = Machine.single(V100)
    r = run_scheduler("sequential", inception, m, runtime="cudnn")  # the graph's own ops
    assert isinstance(r, RunResult)
    assert r.scheduler == "sequential"
    validate_schedule(r.schedule, inception)
    validate_program(r.program, inception)
    assert r.streams == 1 and r.syncs == 0
    assert r.program.kernels == sum(len(ks) for ks in lower_graph(inception, V100).values())
    assert r.profiler_calls == 0 and r.profiler_distinct == 0 and r.gpu_search_s == 0
    assert r.schedule_s >= 0
    # launch overheads and gaps only add to the kernels' own standalone times
    assert r.latency_ms * 1e3 >= sequential_kernel_time_us(inception, V100)
    assert r.latency_ms == r.timeline.latency_ms


def test_sequential_graph_is_faster_than_sequential(inception: OpGraph) -> None:
    m = Machine.single(V100)
    eager = run_scheduler("sequential", inception, m)
    graph = run_scheduler("sequential-graph", inception, m)
    assert graph.program.graph_mode and not eager.program.graph_mode
    assert graph.latency_ms < eager.latency_ms
    assert graph.latency_ms * 1e3 >= sequential_kernel_time_us(inception, V100)


def test_run_scheduler_with_options(small: OpGraph) -> None:
    m = Machine.single(V100)
    r = run_scheduler("sequential", small, m, {"graph_mode": "true"})
    assert r.program.graph_mode
    with pytest.raises(SchedulerError):
        run_scheduler("sequential", small, m, {"nope": "1"})
    with pytest.raises(SchedulerError):
        run_scheduler("nosuch", small, m)


def test_run_is_deterministic(small: OpGraph) -> None:
    m = Machine.single(V100)
    a = run_scheduler("sequential", small, m)
    b = run_scheduler("sequential", small, m)
    assert a.latency_ms == b.latency_ms
    assert a.program.commands == b.program.commands


def test_profiler_memo_tells_apart_kernels_of_one_name_and_grid() -> None:
    # the same op name as a 1x1 and as a 5x5 conv: same tile, same grid, different work
    def conv(k: int) -> OpGraph:
        attrs = {"kernel": k, "padding": k // 2, "out_channels": 256}
        return OpGraph(
            [
                Op("x", "input", (), (1, 256, 14, 14)),
                Op("a", "conv", ("x",), (1, 256, 14, 14), attrs=attrs),
            ]
        )

    machine = Machine.single(preset("v100"))
    shared = Profiler(machine)
    small = shared.measure(StreamSchedule([["x", "a"]]), conv(1))
    big = shared.measure(StreamSchedule([["x", "a"]]), conv(5))
    alone = Profiler(machine).measure(StreamSchedule([["x", "a"]]), conv(5))
    assert big == alone > small
    assert shared.distinct == 2
