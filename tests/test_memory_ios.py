"""Memory-aware IOS and HIOS (issue 17): schedules within ``--memory-limit``.

Graphs where concurrency costs memory: an input feeding k branches, each a 1x1 conv to
a wide tensor and a 3x3 conv whose Winograd workspace is large, summed at the end. Run
side by side, the branches hold their workspaces at once; run one after another they
do not. Limits between the sequential peak and the free schedule's peak must give a
schedule within the limit whose latency lies between the two."""

from __future__ import annotations

import pytest
from _cli import run_error
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import dags

from schedulers.base import Profiler, SchedulerError, run_scheduler
from schedulers.ios import IOS, _drop_redundant_barriers, _PartMemory, plan_parts
from simgpu.graph import Op, OpGraph
from simgpu.hardware import Link, Machine, load_gpu
from simgpu.memory import MB, MemoryLimitError, tensors_of

V100 = load_gpu("v100")
ONE = Machine("v100", (V100,))
TWO = Machine("2x", (V100, V100), (Link(0, 1, "custom", 1, 50.0, 2.0),))
PROPS = settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# the DP's stage-sum model is closest to the run where host costs vanish
GRAPHED = "cuda-graph"
PAR = {"strategy": "parallel"}


def fan(k: int = 4, c: int = 64, wide: int = 256, hw: int = 28) -> OpGraph:
    ops = [Op("x", "input", (), (1, c, hw, hw))]
    ends = []
    for b in range(k):
        a = {"kernel": [1, 1], "stride": [1, 1], "padding": [0, 0], "out_channels": wide}
        ops.append(Op(f"b{b}a", "conv", ("x",), (1, wide, hw, hw), attrs=a))
        a2 = {"kernel": [3, 3], "stride": [1, 1], "padding": [1, 1], "out_channels": c}
        ops.append(Op(f"b{b}b", "conv", (f"b{b}a",), (1, c, hw, hw), attrs=a2))
        ends.append(f"b{b}b")
    ops.append(Op("sum", "add", tuple(ends), (1, c, hw, hw)))
    return OpGraph(ops, name=f"fan{k}")


def seq_peak(graph: OpGraph) -> int:
    return tensors_of(graph, V100).sequential_peak()


# --- IOS ------------------------------------------------------------------------------


def test_ios_limit_between_sequential_and_free_peaks() -> None:
    g = fan()
    free = run_scheduler("ios", g, ONE, PAR, runtime=GRAPHED)
    seq = run_scheduler("ios", g, ONE, {"r": 1, "s": 1}, runtime=GRAPHED)
    lo, hi = seq_peak(g), free.memory.peak_allocated
    assert seq.memory.peak_allocated == lo  # r = s = 1: the sequential schedule
    assert hi > 2 * lo  # concurrency costs memory here
    assert free.latency_ms < 0.8 * seq.latency_ms  # ... and buys time
    lats = []
    for frac in (0.0, 0.25, 0.5, 0.75):
        limit = int(lo + frac * (hi - lo))
        r = run_scheduler("ios", g, ONE, PAR, runtime=GRAPHED, memory_limit=limit)
        assert r.memory.peak_allocated <= limit
        assert free.latency_ms <= r.latency_ms <= seq.latency_ms + 1e-9
        assert r.schedule.meta["memory_limit_mb"] == pytest.approx(limit / MB)
        lats.append(r.latency_ms)
    assert lats[0] == pytest.approx(seq.latency_ms)  # at the sequential peak: one stream
    assert lats[-1] < 0.8 * seq.latency_ms  # room for three branches: most of the gain


def test_ios_limit_with_merges_counts_the_merged_conv() -> None:
    """A merged conv writes its members' outputs side by side and widens the weights:
    the stage bound counts both, so merging stays possible within the limit."""
    g = fan(2, 256, 512, 14)
    lo = seq_peak(g)
    free = run_scheduler("ios", g, ONE)
    seq = run_scheduler("sequential", g, ONE, runtime="cudnn").latency_ms
    merged = 0
    for frac in (0.0, 0.25, 0.5, 1.0):
        limit = int(lo + frac * (free.memory.peak_allocated - lo))
        r = run_scheduler("ios", g, ONE, memory_limit=limit)
        assert r.memory.peak_allocated <= limit
        if r.schedule.meta["stages_rejected_for_memory"]:  # binding: never slower than one stream
            assert r.latency_ms <= seq
        merged += bool(r.schedule.meta["merges"])
    assert merged  # some limit kept a merge


def test_ios_without_a_limit_has_no_memory_meta() -> None:
    r = run_scheduler("ios", fan(3), ONE)
    assert "memory_limit_mb" not in r.schedule.meta
    assert r.memory is not None


def test_ios_limit_that_does_not_bind_changes_nothing() -> None:
    g = fan(3)
    free = run_scheduler("ios", g, ONE)
    r = run_scheduler("ios", g, ONE, memory_limit=4 * free.memory.peak_allocated)
    assert r.schedule.stages == free.schedule.stages
    assert r.latency_ms == free.latency_ms
    meta = r.schedule.meta
    assert meta["memory_schedule"] == "dp, limit not binding"
    assert meta["stages_rejected_for_memory"] == 0
    for key in ("states", "transitions", "stages_measured", "simulations", "merges"):
        assert meta[key] == free.schedule.meta[key], key


def test_ios_infeasible_limit_is_one_line() -> None:
    """Between the lower bound and every order's peak: refused with the reason. Three
    branches each feed two of three sums: every order holds four branch tensors at
    once at some point, while no single op needs more than three."""
    w = (1, 1 << 18)
    g = OpGraph(
        [
            Op("x", "input", (), w),
            *(Op(n, "relu", ("x",), w) for n in "abc"),
            Op("d", "add", ("a", "b"), w),
            Op("e", "add", ("b", "c"), w),
            Op("f", "add", ("c", "a"), w),
            Op("s", "add", ("d", "e", "f"), w),
        ]
    )
    t = tensors_of(g, V100)
    assert t.lower_bound() < t.sequential_peak()
    with pytest.raises(SchedulerError) as e:
        run_scheduler("ios", g, ONE, memory_limit=t.lower_bound())
    msg = str(e.value)
    assert "\n" not in msg and "memory limit" in msg and "one at a time" in msg


def test_stage_order_join_keeps_the_peak() -> None:
    """Under a limit, one-group stages join in their own order, not the graph's."""
    g = fan(2)
    stages = [[["x"]], [["b1a", "b1b"]], [["b0a", "b0b"]], [["sum"]]]
    joined, elided = _drop_redundant_barriers(stages, g, keep_order=True)
    assert joined == [[["x", "b1a", "b1b", "b0a", "b0b", "sum"]]] and elided == 3
    assert _drop_redundant_barriers(stages, g)[0] == [[list(g.topo_order)]]


@PROPS
@given(dags(min_ops=2, max_ops=12, views=True), st.floats(0.0, 1.2))
def test_part_live_bytes_match_live_after(g: OpGraph, _: float) -> None:
    """The DP's incremental live bytes equal the tensor table's, for every prefix."""
    t = tensors_of(g, V100)
    (units,) = plan_parts(g, 64)
    mem = _PartMemory(t, units, set(), 1 << 40, Profiler(ONE))
    n = len(units)
    preds = [0] * n
    idx = {u[0]: i for i, u in enumerate(units)}
    for i, u in enumerate(units):
        for p in g.predecessors(u[0]):
            preds[i] |= 1 << idx[p]
    prefix = 0
    for i in range(n):  # every prefix of the topological order, and a few others
        prefix |= 1 << i
        assert mem.live(prefix) == t.live_after(g.topo_order[: i + 1])
    for i in range(n):
        only = preds[i] | 1 << i
        closed = {units[j][0] for j in range(n) if only >> j & 1}
        if all(set(g.predecessors(o)) <= closed for o in closed):
            assert mem.live(only) == t.live_after(closed)


@PROPS
@given(dags(min_ops=2, max_ops=10, views=True), st.floats(0.0, 1.5))
def test_ios_random_dags_stay_within_the_limit(g: OpGraph, frac: float) -> None:
    lo = seq_peak(g)
    free = run_scheduler("ios", g, ONE)
    limit = int(lo + frac * max(0, free.memory.peak_allocated - lo))
    r = run_scheduler("ios", g, ONE, memory_limit=limit)
    assert r.memory.peak_allocated <= limit


# --- HIOS -----------------------------------------------------------------------------


def test_hios_limit_per_gpu_between_one_stream_and_free() -> None:
    g = fan(3, 64, 256, 56)
    free = run_scheduler("hios", g, TWO)
    start = run_scheduler("hios", g, TWO, {"window": 1})  # one stream per GPU
    lo = start.memory.peak_allocated
    assert free.memory.peak_allocated > lo
    limit = (lo + free.memory.peak_allocated) // 2
    r = run_scheduler("hios", g, TWO, memory_limit=limit)
    assert r.memory.peak_allocated <= limit
    assert all(t.peak_allocated <= limit for t in r.memory.tracks)
    # HIOS's window measures its trials without the runtime's host costs (as without
    # a limit), so the run can come out a little slower than one stream per GPU
    assert free.latency_ms <= r.latency_ms <= 1.02 * start.latency_ms
    assert r.schedule.meta["memory_start"] == "mapping, latest-start order"


def test_hios_falls_back_to_one_gpu_then_refuses() -> None:
    g = fan(3, 64, 256, 56)
    lo = seq_peak(g)
    r = run_scheduler("hios-mr", g, TWO, memory_limit=lo)
    assert r.memory.peak_allocated <= lo
    t = tensors_of(g, V100)
    with pytest.raises(SchedulerError) as e:
        run_scheduler("hios", g, TWO, memory_limit=t.lower_bound(2))
    assert "\n" not in str(e.value) and "one stream per GPU peaks at" in str(e.value)


@PROPS
@given(dags(min_ops=2, max_ops=10, views=True), st.floats(0.0, 1.0))
def test_hios_random_dags_stay_within_the_limit(g: OpGraph, frac: float) -> None:
    lo = seq_peak(g)
    free = run_scheduler("hios", g, TWO)
    limit = int(lo + frac * max(0, free.memory.peak_allocated - lo))
    r = run_scheduler("hios", g, TWO, memory_limit=limit)
    assert max(t.peak_allocated for t in r.memory.tracks) <= limit


# --- the CLI --------------------------------------------------------------------------


def test_cli_limit_below_the_lower_bound(capsys: pytest.CaptureFixture[str]) -> None:
    line = run_error(capsys, "run", "squeezenet1_1", "--scheduler", "ios", "--memory-limit", "1")
    assert "memory limit 1.0 MB is below" in line


def test_limit_below_lower_bound_is_refused_before_search() -> None:
    with pytest.raises(MemoryLimitError):
        run_scheduler("ios", fan(2), ONE, memory_limit=MB)
    assert IOS.memory_aware
