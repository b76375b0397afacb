"""LIOS, HEFT, Nimble (eager too) and Opara under a memory limit (issue 17).

The graphs are fans: an input read by k parallel chains whose intermediates are large,
each pooled to a few bytes and joined by a concat. Running the chains side by side
holds k intermediates at once; one chain at a time holds one or two. So concurrency
raises the peak above the sequential one, and a limit between the two must cost
latency, not correctness.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import dags

from schedulers._memory import LiveModel, merge_pair
from schedulers.base import Profiler, SchedulerError, run_scheduler
from simgpu.graph import Op, OpGraph
from simgpu.hardware import Machine, preset
from simgpu.memory import MemoryLimitError, tensors_of
from simgpu.schedule import StreamSchedule, validate_schedule

MACHINE = Machine.single(preset("v100"))
AWARE = ["lios", "heft", "nimble", "nimble-eager", "opara"]


def fan(
    k: int = 4, c: int = 64, hw: int = 16, depth: int = 2, breadth_first: bool = False
) -> OpGraph:
    """Input -> k chains of ``depth`` 3x3 convs (c x hw x hw fp32 each) -> global pool ->
    concat. ``breadth_first`` defines the chains' ops level by level, so the graph's
    own topological order starts every chain before finishing any."""
    levels: list[list[Op]] = [[] for _ in range(depth + 1)]
    for i in range(k):
        prev = "x"
        for d in range(depth):
            name = f"c{i}_{d}"
            attrs = {"out_channels": c, "kernel": 3, "padding": 1}
            levels[d].append(Op(name, "conv", (prev,), (1, c, hw, hw), attrs=attrs))
            prev = name
        levels[depth].append(Op(f"p{i}", "global_pool", (prev,), (1, c, 1, 1)))
    if breadth_first:
        body = [op for level in levels for op in level]
    else:
        body = [levels[d][i] for i in range(k) for d in range(depth + 1)]
    tails = tuple(f"p{i}" for i in range(k))
    cat = Op("cat", "concat", tails, (1, c * k, 1, 1), attrs={"axis": 1})
    return OpGraph([Op("x", "input", (), (1, 8, hw, hw)), *body, cat], name=f"fan{k}")


@pytest.mark.parametrize("name", AWARE)
def test_limit_between_sequential_and_concurrent_peak(name: str) -> None:
    """Under one runtime (a CUDA Graph, where streams pay off): the limited schedule
    keeps its peak within the limit, and its latency lies between the unconstrained
    schedule's and one stream's."""
    g = fan()
    free = run_scheduler(name, g, MACHINE, runtime="cuda-graph")
    one = run_scheduler("sequential", g, MACHINE, runtime="cuda-graph")
    seq, peak = free.memory.sequential_peak, free.memory.peak_allocated
    assert seq < peak  # the fan makes concurrency cost memory
    limit = (seq + peak) // 2
    capped = run_scheduler(name, g, MACHINE, runtime="cuda-graph", memory_limit=limit)
    assert capped.memory.peak_allocated <= limit
    assert free.latency_ms <= capped.latency_ms <= one.latency_ms
    assert capped.schedule.meta["memory_replays"] >= 1
    if name in ("nimble", "nimble-eager", "opara"):
        merges = capped.schedule.meta["memory_merges"]
        assert merges >= 1
        assert len(capped.schedule.streams) == len(free.schedule.streams) - merges


@pytest.mark.parametrize("name", AWARE)
def test_default_runtime_within_limit(name: str) -> None:
    """Under each scheduler's own runtime too (eager for LIOS/HEFT), the cap holds."""
    g = fan(k=3)
    free = run_scheduler(name, g, MACHINE)
    seq, peak = free.memory.sequential_peak, free.memory.peak_allocated
    limit = (seq + peak) // 2
    capped = run_scheduler(name, g, MACHINE, memory_limit=limit)
    assert capped.memory.peak_allocated <= limit


@pytest.mark.parametrize("name", AWARE)
def test_no_limit_leaves_the_meta_alone(name: str) -> None:
    r = run_scheduler(name, fan(k=2), MACHINE)
    mine = {"memory_replays", "memory_merges", "memory_streams", "memory_budget_mb"}
    assert not mine & set(r.schedule.meta)


@pytest.mark.parametrize("name", ["lios", "heft"])
def test_one_stream_delays_below_the_graph_order(name: str) -> None:
    """The graph's own order starts every chain first, so its sequential peak holds all
    k intermediates; on one stream the list scheduler delays the chain starts and fits
    a limit below that peak."""
    g = fan(k=4, breadth_first=True)
    t = tensors_of(g, MACHINE.gpu)
    graph_order = t.sequential_peak()
    limit = (t.lower_bound() + graph_order) // 2
    r = run_scheduler(name, g, MACHINE, {"streams": 1}, memory_limit=limit)
    assert r.memory.peak_allocated <= limit < graph_order


def test_infeasible_limit_is_a_scheduler_error_with_the_reason() -> None:
    """a -> b, a -> c with b and c results of the graph: the lower bound (a's reader and
    its output, or both results) is 2 tensors, but every order holds a, b and c at
    once when the second reader runs."""
    shape = (1, 1 << 16)
    g = OpGraph(
        [
            Op("x", "input", (), (1, 64)),
            Op("a", "linear", ("x",), shape, attrs={"out_features": shape[1]}),
            Op("b", "relu", ("a",), shape),
            Op("c", "sigmoid", ("a",), shape),
        ],
        name="split",
    )
    t = tensors_of(g, MACHINE.gpu)
    limit = (t.lower_bound() + t.sequential_peak()) // 2
    for name in AWARE:
        with pytest.raises(SchedulerError, match=rf"{name}: memory limit .* one stream"):
            run_scheduler(name, g, MACHINE, memory_limit=limit)


def test_merge_pair_runs_one_stream_then_the_other() -> None:
    """Two chains of the fan merge into one stream that finishes one chain before the
    other starts, and the merged schedule still respects every dependency."""
    g = fan(k=3, breadth_first=True)
    chains = [["x", "c0_0", "c0_1", "p0", "cat"], ["c1_0", "c1_1", "p1"], ["c2_0", "c2_1", "p2"]]
    streams, order = merge_pair(g, chains, 1, 2, g.topo_order)
    assert streams[0] == chains[0]
    assert streams[1] == ["c1_0", "c1_1", "p1", "c2_0", "c2_1", "p2"]
    assert sorted(order) == sorted(g.ops)
    validate_schedule(StreamSchedule(streams, order=order), g)


def test_live_model_counts_an_open_output_until_its_last_reader() -> None:
    """A tensor whose readers are not all placed counts as live for ever; placing its
    last reader frees it at that reader's end."""
    g = fan(k=2, depth=1)
    t = tensors_of(g, MACHINE.gpu)
    big = t.size["c0_0"]
    model = LiveModel(t, budget=10 * big)
    model.place("x", 0.0, 0.0)
    model.place("c0_0", 0.0, 1.0)
    assert model.assess("c1_0", 5.0, 6.0)[0] == 2 * big + t.workspace["c1_0"]
    peak, growth = model.assess("p0", 1.0, 2.0)
    assert peak == big + t.size["p0"] + t.workspace["p0"]
    assert growth == t.size["p0"] - big  # p0 frees c0_0 when it ends
    model.place("p0", 1.0, 2.0)
    assert model.assess("c1_0", 5.0, 6.0)[0] == big + t.size["p0"] + t.workspace["c1_0"]
    conv_ws = [(1.0, "c0_0")] if t.workspace["c0_0"] else []  # a workspace ends with its op
    assert model.frees_after(0.0) == [*conv_ws, (2.0, "p0")]


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(g=dags(min_ops=2, max_ops=14), name=st.sampled_from(AWARE), data=st.data())
def test_never_over_the_limit(g: OpGraph, name: str, data: st.DataObject) -> None:
    """Any limit from the lower bound up: a schedule within it, or (only below the
    sequential peak) a SchedulerError saying why; never a schedule over the limit."""
    free = run_scheduler(name, g, MACHINE)
    t = Profiler(MACHINE).tensors(g)
    low, seq = t.lower_bound(), t.sequential_peak()
    top = max(seq, free.memory.peak_allocated)
    # half the draws where it matters most: between the sequential and the free peak
    limit = data.draw(st.integers(low, top) | st.integers(seq, top), label="limit")
    try:
        r = run_scheduler(name, g, MACHINE, memory_limit=limit)
    except MemoryLimitError as e:  # a schedule over the limit got out: never
        raise AssertionError(f"{name} returned a schedule over the limit: {e}") from None
    except SchedulerError as e:
        assert limit < seq, f"{name} failed at or above the sequential peak: {e}"
        assert "memory limit" in str(e)
        return
    assert r.memory.peak_allocated <= limit
