"""The memory of a schedule (simgpu.memory, simgpu.allocator): the caching allocator's
rules, and the invariants every replayed run must satisfy on random DAGs, random
schedules and random GPUs."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import dags, gpus, lowered_cases, topo_orders

from simgpu.allocator import MIB, AllocatorConfig, CachingAllocator
from simgpu.errors import SimGPUError, SpecError
from simgpu.graph import Op, OpGraph
from simgpu.hardware import Machine, load_gpu
from simgpu.memory import (
    MB,
    MemoryLimitError,
    account,
    check_limit_feasible,
    tensors_of,
)
from simgpu.program import lower
from simgpu.schedule import StreamSchedule
from simgpu.sim.engine import simulate

V100 = load_gpu("v100")
PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- the allocator ------------------------------------------------------------------


def test_rounding_and_segment_sizes_follow_pytorch() -> None:
    c = AllocatorConfig()
    assert [c.round(n) for n in (0, 1, 512, 513, 4096)] == [0, 512, 512, 1024, 4096]
    assert c.segment_bytes(512) == 2 * MIB  # small pool: 2 MiB segments
    assert c.segment_bytes(MIB) == 2 * MIB
    assert c.segment_bytes(MIB + 512) == 20 * MIB  # mid-size: a 20 MiB segment
    assert c.segment_bytes(10 * MIB) == 10 * MIB  # large: its own, rounded to 2 MiB
    assert c.segment_bytes(11 * MIB) == 12 * MIB


def test_blocks_split_reuse_best_fit_and_coalesce() -> None:
    a = CachingAllocator(AllocatorConfig())
    x = a.alloc(1000, stream=0)
    y = a.alloc(3000, stream=0)
    assert a.reserved == 2 * MIB and a.allocated == 1024 + 3072
    a.free(x)
    z = a.alloc(600, stream=0)  # best fit: x's freed 1024 B block, split, not a new segment
    assert z.segment == x.segment and z.offset == 0 and a.reserved == 2 * MIB
    a.free(z)
    a.free(y)
    # every block back and coalesced: the segment is one free block again
    (seg,) = a.segments.values()
    assert len(seg) == 1 and seg[0].free and seg[0].size == 2 * MIB
    assert a.allocated == 0 and a.reserved == 2 * MIB  # segments stay cached


def test_pools_are_per_stream() -> None:
    a = CachingAllocator(AllocatorConfig())
    x = a.alloc(4 * MIB, stream=1)
    a.free(x)
    a.alloc(4 * MIB, stream=2)  # stream 1's cached block does not serve stream 2
    assert a.reserved == 40 * MIB
    a.alloc(4 * MIB, stream=1)  # ... it serves stream 1
    assert a.reserved == 40 * MIB


def test_deferred_frees_return_only_when_released() -> None:
    a = CachingAllocator(AllocatorConfig())
    x = a.alloc(12 * MIB, stream=0)  # a segment of its own, nothing left to split
    a.free(x, deferred=True)
    assert a.allocated == 0  # dead at once...
    a.alloc(12 * MIB, stream=0)
    assert a.reserved == 24 * MIB  # ... but its block did not serve the next request
    a.release_deferred()
    a.alloc(12 * MIB, stream=0)
    assert a.reserved == 24 * MIB


@given(st.lists(st.tuples(st.integers(1, 30 * MIB), st.integers(0, 2), st.booleans()), max_size=60))
@PROPS
def test_allocator_conserves_bytes(requests: list[tuple[int, int, bool]]) -> None:
    """allocated is the sum of live rounded requests; reserved never shrinks and always
    backs every block; blocks of one segment tile it exactly."""
    a = CachingAllocator(AllocatorConfig())
    live = []
    last_reserved = 0
    for size, stream, free_one in requests:
        if free_one and live:
            a.free(live.pop(len(live) // 2))
        else:
            live.append(a.alloc(size, stream))
        assert a.allocated == sum(b.requested for b in live)
        assert a.reserved >= last_reserved and a.reserved >= a.allocated
        last_reserved = a.reserved
        for blocks in a.segments.values():
            offset = 0
            for b in blocks:
                assert b.offset == offset
                offset += b.size
    assert a.peak_reserved == a.reserved


# --- tensors and bounds -------------------------------------------------------------


def _chain_graph() -> OpGraph:
    """x -> a -> b, a -> c, (b, c) -> d, with sizes 1 KiB, 2 KiB... (fp32, (1, n))."""
    return OpGraph(
        [
            Op("x", "input", (), (1, 256)),  # 1 KiB
            Op("a", "relu", ("x",), (1, 256)),  # 1 KiB
            Op("b", "reshape", ("a",), (1, 16, 16), attrs={"shape": [1, 16, 16]}),  # view of a
            Op("c", "sigmoid", ("a",), (1, 256)),
            Op("d", "add", ("c", "c"), (1, 256)),
            Op("e", "add", ("b", "b"), (1, 16, 16)),
        ],
        name="hand",
    )


def test_views_alias_their_input_and_outputs_are_pinned() -> None:
    t = tensors_of(_chain_graph(), V100)
    assert t.root["b"] == "a" and "b" not in t.size
    assert t.readers["a"] == ["c", "e"]  # e reads a's storage through the view b
    assert t.inputs == ["x"] and t.outputs == {"d", "e"}
    assert t.weight_bytes == 0 and all(v == 0 for v in t.workspace.values())


def test_sequential_liveness_by_hand() -> None:
    """One stream in the order x a b c d e, by hand (all tensors 1 KiB):
    x pinned; a (+1 = 2); c (+1 = 3); d (+1 = 4, c dies after d); e (+1 = 4, a dies)."""
    g = _chain_graph()
    t = tensors_of(g, V100)
    assert t.sequential_peak(["x", "a", "b", "c", "d", "e"]) == 4 * 1024
    # e before c: x a e, then c (4 KiB; a dies after c), then d (4 KiB again)
    assert t.sequential_peak(["x", "a", "b", "e", "c", "d"]) == 4 * 1024
    prog = lower(StreamSchedule([["x", "a", "b", "c", "d", "e"]]), g, V100)
    tl = simulate(prog, V100)
    rep = account(tl, prog, g, V100)
    assert rep.peak_allocated == 4 * 1024
    # x, plus the largest of: an op with its input (a+c, c+d, a+e: 2 KiB) or the outputs d+e
    assert rep.lower_bound == 1024 + 2 * 1024


def test_lower_bound_counts_weights_inputs_and_the_largest_op() -> None:
    g = OpGraph(
        [
            Op("x", "input", (), (1, 1024)),
            Op("fc", "linear", ("x",), (1, 4096), attrs={"out_features": 4096}),
            Op("r", "relu", ("fc",), (1, 4096)),
        ],
        name="fc",
    )
    t = tensors_of(g, V100)
    w = t.weights["fc"]
    assert w == AllocatorConfig().round((1024 * 4096 + 4096) * 4)
    ws = t.workspace["fc"]  # a batch-1 GEMM splits K: its fp32 partial sums
    assert ws > 0
    assert t.lower_bound() == w + 4096 + max(4 * 4096 + ws, 4 * 4096 * 2)


def test_a_limit_below_the_bound_is_one_error() -> None:
    t = tensors_of(_chain_graph(), V100)
    with pytest.raises(MemoryLimitError, match=r"below the .* any schedule"):
        check_limit_feasible(t, t.lower_bound() - 1)
    check_limit_feasible(t, t.lower_bound())


# --- invariants of every replayed run ------------------------------------------------


def _check_run(case) -> None:
    g, prog = case.graph, case.program
    tl = simulate(prog, case.gpu)
    rep = account(tl, prog, g, case.gpu)
    t = tensors_of(g, case.gpu)
    spans: dict[str, tuple[float, float]] = {}
    for k in tl.kernels:
        s0, e0 = spans.get(k.op, (k.start_us, k.end_us))
        spans[k.op] = (min(s0, k.start_us), max(e0, k.end_us))
    for c in tl.commands:
        if c.kind == "noop" and c.op is not None:
            spans.setdefault(c.op, (c.done_us, c.done_us))
    (track,) = tl.memory
    # at every sample, the allocated bytes are the sum of the tensors live then
    for time, allocated, reserved in track.samples:
        live = sum(
            iv.nbytes
            for iv in rep.intervals
            if iv.start_us <= time and (iv.end_us is None or iv.end_us > time)
        )
        assert allocated == live, (time, allocated, live)
        assert reserved >= allocated
    # the peak is never below what any schedule must hold
    assert rep.peak_allocated >= rep.lower_bound
    # no tensor is freed before its last reader (or its producer) has ended
    for iv in rep.intervals:
        if iv.end_us is None or iv.key.endswith("#workspace"):
            continue
        root = iv.key
        assert iv.end_us >= spans[root][1]
        for u in t.readers[root]:
            assert iv.end_us >= spans[u][1], (root, u)
        assert iv.start_us == spans[root][0] or root in t.inputs
    # every storage root, the weights and every workspace were allocated exactly once
    keys = [iv.key for iv in rep.intervals]
    assert len(keys) == len(set(keys))
    assert set(t.size) <= set(keys)


@given(lowered_cases(gpu=gpus(max_sm=16), max_ops=25))
@PROPS
def test_live_bytes_equal_live_tensors_on_random_runs(case) -> None:
    _check_run(case)


@given(dags(max_ops=20), st.data())
@PROPS
def test_one_stream_matches_the_order_liveness(g: OpGraph, data: st.DataObject) -> None:
    """One stream in a topological order peaks exactly where the order's liveness
    (computed without simulating) does."""
    order = data.draw(topo_orders(g))
    gpu = data.draw(gpus(max_sm=8))
    prog = lower(StreamSchedule([order]), g, gpu)
    rep = account(simulate(prog, gpu), prog, g, gpu)
    assert rep.peak_allocated == tensors_of(g, gpu).sequential_peak(order)


def test_model_run_with_workspaces_keeps_the_invariants() -> None:
    """GoogLeNet on a V100 under Nimble's many streams: weights, Winograd/split-K
    workspaces and cross-stream tensors all at once."""
    from schedulers.base import run_scheduler
    from simgpu.models import build_model

    g = build_model("googlenet")
    r = run_scheduler("nimble", g, Machine.single(V100))
    t = tensors_of(g, V100)
    assert any(t.workspace.values())  # some conv picked a workspace algorithm
    rep = r.memory
    assert rep.peak_allocated >= rep.lower_bound >= t.weight_bytes
    assert rep.peak_reserved >= rep.peak_allocated
    for time, allocated, _ in r.timeline.memory[0].samples:
        live = sum(
            iv.nbytes
            for iv in rep.intervals
            if iv.start_us <= time and (iv.end_us is None or iv.end_us > time)
        )
        assert allocated == live


def test_capture_holds_cross_stream_blocks_for_the_graph() -> None:
    """The same streams captured as a CUDA Graph reserve at least what eager PyTorch
    does: cross-stream blocks are not reused inside a capture."""
    from schedulers.base import run_scheduler
    from simgpu.models import build_model

    g = build_model("googlenet")
    m = Machine.single(V100)
    eager = run_scheduler("nimble", g, m, runtime="pytorch-eager").memory
    graph = run_scheduler("nimble", g, m, runtime="cuda-graph").memory
    assert graph.peak_reserved > eager.peak_reserved


def test_limit_names_the_op_and_the_instant() -> None:
    g = _chain_graph()
    prog = lower(StreamSchedule([["x", "a", "b", "c", "d", "e"]]), g, V100)
    tl = simulate(prog, V100)
    with pytest.raises(
        MemoryLimitError, match=r"op 'd' allocates .* at [\d.]+ us|at [\d.]+ us: op 'd'"
    ):
        account(tl, prog, g, V100, limit_bytes=3 * 1024)
    account(tl, prog, g, V100, limit_bytes=4 * 1024)


# --- GPU JSON overrides --------------------------------------------------------------


def test_gpu_json_overrides_sizes(tmp_path) -> None:
    g = _chain_graph()
    spec = V100.replace(memory={"block_bytes": 4096, "ops": {"c": {"output_bytes": 10 * 4096}}})
    t = tensors_of(g, spec)
    assert t.size["a"] == 4096 and t.size["c"] == 10 * 4096
    path = tmp_path / "gpu.json"
    path.write_text(json.dumps({"base": "v100", "memory": {"ops": {"c": {"workspace": 1}}}}))
    with pytest.raises(SpecError, match=r"memory.ops\['c'\]: unknown key"):
        load_gpu(str(path))
    for bad, what in (
        ({"block_bytes": 1000}, "power of two"),
        ({"block_bytes": 1.5}, "integer number of bytes"),
        ({"ops": {"c": {"output_bytes": -1}}}, "between 0"),
        ({"ops": []}, "must be an object"),
        ({"segment": 1}, "unknown key"),
    ):
        with pytest.raises(SimGPUError, match=what):
            V100.replace(memory=bad)


def test_memory_json_round_trips() -> None:
    spec = V100.replace(memory={"ops": {"c": {"workspace_bytes": 0}}})
    assert spec.to_json()["memory"] == {"ops": {"c": {"workspace_bytes": 0}}}
    assert MB == 1 << 20


def test_overrides_that_match_nothing_are_named_and_views_have_no_storage() -> None:
    g = _chain_graph()
    t = tensors_of(
        g, V100.replace(memory={"ops": {"a": {"output_bytes": 8}, "cc": {"output_bytes": 8}}})
    )
    assert t.unmatched == ["cc"] and t.size["a"] == 512
    with pytest.raises(SimGPUError, match=r"output_bytes given for 'b', a reshape view"):
        tensors_of(g, V100.replace(memory={"ops": {"b": {"output_bytes": 8}}}))
