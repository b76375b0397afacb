"""Opara: its one-pass streams, its launch order, and the launch-order effect it relies
on — which must come out of the simulator (left-over block dispatch), not be assumed."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from strategies import dags

from schedulers.base import Profiler, SchedulerError, make_scheduler, run_scheduler
from schedulers.nimble import nimble_streams
from schedulers.opara import (
    COMPUTE,
    MEMORY,
    NONE,
    Demand,
    launch_order,
    op_demand,
    opara_streams,
)
from simgpu.errors import ScheduleError
from simgpu.graph import Op, OpGraph
from simgpu.hardware import Machine, preset
from simgpu.models import build_model
from simgpu.program import lower, validate_program
from simgpu.schedule import (
    StreamSchedule,
    schedule_from_json,
    schedule_to_json,
    validate_schedule,
)
from simgpu.sim.engine import simulate

A100 = preset("a100")
SETTINGS = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}


def _big_and_small() -> tuple[OpGraph, list[list[str]]]:
    """A ReLU over 2^24 floats (32,768 short blocks, many waves, every SM's threads
    full) and a GEMV (128 long blocks); each on its own stream, inputs on a third."""
    n = 1 << 24
    g = OpGraph(
        [
            Op("x", "input", (), (n,)),
            Op("big", "relu", ("x",), (n,)),
            Op("y", "input", (), (1, 65536)),
            Op("small", "linear", ("y",), (1, 64), attrs={"out_features": 64}),
        ],
        name="big_and_small",
    )
    return g, [["x", "y"], ["big"], ["small"]]


def _run(g: OpGraph, streams: list[list[str]], order: list[str]):
    s = StreamSchedule(streams, graph_mode=True, order=order)
    return simulate(lower(s, g, A100), A100)


def _first_kernels(tl) -> dict:
    """Each op's first kernel (the GEMV has a split-K reduction after its GEMM)."""
    out: dict = {}
    for k in sorted(tl.kernels, key=lambda k: k.start_us):
        out.setdefault(k.op, k)
    return out


def test_launch_order_alone_moves_latency_through_left_over_dispatch() -> None:
    """Same streams, two capture orders. Big first: its blocks fill every SM and the
    small op gets no space until the big one's last wave is placed, so the two run one
    after the other. Small first: its blocks are placed, the big one flows around them."""
    g, streams = _big_and_small()
    big_first = _run(g, streams, ["x", "y", "big", "small"])
    small_first = _run(g, streams, ["x", "y", "small", "big"])
    rec = {o: _first_kernels(tl) for o, tl in (("bf", big_first), ("sf", small_first))}
    big, small = rec["bf"]["big"], rec["bf"]["small"]
    assert big.batches > 1  # several waves: the big op holds the GPU a long time
    # big first: the small op starts only once the big one's blocks are all placed,
    # that is within its last wave, not beside its first
    assert small.start_us > big.start_us + 0.5 * (big.end_us - big.start_us)
    # small first: it starts at once, and the big op starts right beside it
    assert rec["sf"]["small"].start_us <= rec["sf"]["big"].start_us
    assert rec["sf"]["big"].start_us < big.start_us + 1.0
    assert small_first.makespan_us < 0.9 * big_first.makespan_us


def test_opara_orders_the_small_op_first_and_that_order_is_the_faster_one() -> None:
    g, streams = _big_and_small()
    p = Profiler(Machine.single(A100))
    demand = {n: op_demand(p.kernels.lower(g, n), A100) for n in g.ops}
    assert demand["big"].share == 1.0 and demand["small"].share < 0.2
    assert demand["x"].kind == NONE
    order = launch_order(g, streams, demand)
    assert order.index("small") < order.index("big")
    rev = [n for n in order if n not in ("big", "small")] + ["big", "small"]
    assert _run(g, streams, order).makespan_us < _run(g, streams, rev).makespan_us


def test_launch_order_alternates_kinds_and_takes_small_demands_first() -> None:
    """Four independent ops off one input: two compute-bound, two memory-bound, the
    demands chosen so that smallest-first alone would launch both memory ops first."""
    s = (1, 64)
    g = OpGraph([Op("x", "input", (), s)] + [Op(n, "relu", ("x",), s) for n in "abcd"])
    demand = {
        "x": Demand(NONE, 0.0),
        "a": Demand(MEMORY, 0.1),
        "b": Demand(MEMORY, 0.2),
        "c": Demand(COMPUTE, 0.9),
        "d": Demand(COMPUTE, 0.5),
    }
    streams = [["x", "a"], ["b"], ["c"], ["d"]]
    # the first kernel is compute-bound, then memory, compute, memory; within a kind
    # the smaller demand first
    assert launch_order(g, streams, demand) == ["x", "d", "a", "c", "b"]
    # with one kind only it is smallest first
    same = {n: Demand(MEMORY, d.share) if d.kind != NONE else d for n, d in demand.items()}
    assert launch_order(g, streams, same) == ["x", "a", "b", "d", "c"]


@settings(max_examples=60, **SETTINGS)
@given(graph=dags(max_ops=25))
def test_opara_streams_are_chains_of_edges_and_the_order_is_topological(graph: OpGraph) -> None:
    streams = opara_streams(graph)
    assert sorted(op for s in streams for op in s) == sorted(graph.ops)
    edges = set(graph.edges())
    for s in streams:  # maximum logical concurrency: a stream follows edges
        assert all((a, b) in edges for a, b in itertools.pairwise(s))
    sched = make_scheduler("opara").schedule(graph, Profiler(Machine.single(A100)))
    validate_schedule(sched, graph)
    assert sched.streams == streams
    at = {op: i for i, op in enumerate(sched.order)}
    assert all(at[u] < at[v] for u, v in graph.edges())
    prog = lower(sched, graph, A100)
    validate_program(prog, graph)
    assert prog.ops() == sched.order  # lowering follows the launch order exactly


def test_opara_can_take_nimbles_streams() -> None:
    g = build_model("googlenet")
    p = Profiler(Machine.single(A100))
    s = make_scheduler("opara", {"assign": "nimble"}).schedule(g, p)
    assert s.streams == nimble_streams(g)[0]
    with pytest.raises(SchedulerError, match="assign"):
        make_scheduler("opara", {"assign": "nope"}).schedule(g, p)


def test_a_launch_order_survives_json_and_a_bad_one_is_refused() -> None:
    g, streams = _big_and_small()
    s = StreamSchedule(streams, graph_mode=True, order=["x", "y", "small", "big"])
    back = schedule_from_json(schedule_to_json(s))
    assert back.order == s.order and back.streams == s.streams
    validate_schedule(back, g)
    with pytest.raises(ScheduleError, match="before"):
        validate_schedule(StreamSchedule(streams, order=["big", "x", "y", "small"]), g)
    with pytest.raises(ScheduleError, match="every op"):
        validate_schedule(StreamSchedule(streams, order=["x", "y", "big"]), g)
    # stream order counts too: y follows x on stream 0
    with pytest.raises(ScheduleError, match="before"):
        validate_schedule(StreamSchedule(streams, order=["y", "x", "big", "small"]), g)


@pytest.mark.parametrize("model", ["googlenet", "inception_v3"])
def test_opara_is_at_least_as_fast_as_nimble_on_an_a100(model: str) -> None:
    """The issue's bar, on the cuda-graph runtime both run under."""
    g = build_model(model)
    m = Machine.single(A100)
    opara = run_scheduler("opara", g, m)
    nimble = run_scheduler("nimble", g, m)
    assert opara.runtime == nimble.runtime == "cuda-graph"
    assert opara.latency_ms <= nimble.latency_ms
