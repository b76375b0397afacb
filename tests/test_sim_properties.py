"""Property tests of the simulator: invariants every timeline must satisfy, on random
GPUs, random DAGs, random stream assignments and random kernels (see strategies.py).

Each program is matched command by command to the timeline (``align``), so the checks
speak of program order, not of the order records happen to be logged in.
"""

from __future__ import annotations

import itertools
import math
import os
import signal
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, reject, settings
from hypothesis import strategies as st
from strategies import (
    SimCase,
    event_programs,
    gpus,
    hand_built_cases,
    kernels,
    lowered_cases,
    sim_cases,
)

from simgpu.chrome_trace import dumps_chrome_trace
from simgpu.errors import DeadlockError
from simgpu.graph import OpGraph
from simgpu.hardware import PRESETS, GPUSpec, Machine
from simgpu.kernels import Kernel, demand_of, kernel_floor_us, min_block_us, standalone_time_us
from simgpu.program import (
    Command,
    Launch,
    Record,
    StreamProgram,
    Synchronize,
    Wait,
    validate_program,
)
from simgpu.sim.device import WAIT
from simgpu.sim.engine import Simulation, simulate
from simgpu.timeline import Timeline

SETTINGS = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    # the same examples on every run, so CI is reproducible: a counterexample a random
    # run finds is pinned as its own test (see the pinned throughput case below). Set
    # SIMGPU_EXPLORE=1 for fresh random examples on every run.
    "derandomize": not os.environ.get("SIMGPU_EXPLORE"),
}


def _tol(tl: Timeline) -> float:
    """Float slack for comparisons of simulated times (sums of many float increments)."""
    return 1e-9 * max(1.0, tl.makespan_us)


# --- matching a program to its timeline -------------------------------------------------


class Item:
    """What the timeline says about one command: [start, end] on the device."""

    __slots__ = ("end", "issue", "kind", "rec", "start")

    def __init__(self, kind: str, start: float, end: float, issue: float, rec: object) -> None:
        self.kind, self.start, self.end, self.issue, self.rec = kind, start, end, issue, rec


def _key(c: Command) -> tuple[str, str]:
    if isinstance(c, Launch):
        return ("kernel" if c.kernel is not None else "noop", c.op)
    return ("record" if isinstance(c, Record) else "wait", c.event)


def align(program: StreamProgram, tl: Timeline) -> list[Item | None]:
    """One timeline item per command of ``program`` (None for a Synchronize), matched by
    (device, stream, kind, op/event) and occurrence on that stream. Asserts that every
    command appears exactly once and the timeline has nothing else."""
    pools: dict[tuple, list[Item]] = defaultdict(list)
    for k in tl.kernels:
        pools[(k.device, k.stream, ("kernel", k.op))].append(
            Item("kernel", k.start_us, k.end_us, k.issue_us, k)
        )
    for c in tl.commands:
        key = ("noop", c.op) if c.kind == "noop" else (c.kind, c.event)
        pools[(c.device, c.stream, key)].append(Item(c.kind, c.done_us, c.done_us, c.issue_us, c))
    for items in pools.values():
        items.sort(key=lambda it: it.start)  # stable: same-stream ties keep log order
    used: Counter = Counter()
    out: list[Item | None] = []
    for i, c in enumerate(program.commands):
        if isinstance(c, Synchronize):
            out.append(None)
            continue
        pk = (c.device, c.stream, _key(c))
        j = used[pk]
        used[pk] += 1
        assert j < len(pools.get(pk, ())), f"command {i} {c!r} missing from the timeline"
        out.append(pools[pk][j])
    extra = {pk: len(v) - used[pk] for pk, v in pools.items() if len(v) != used[pk]}
    assert not extra, f"timeline has records no command issued: {extra}"
    return out


# The simulator can lose a queue wake-up to float rounding and report a deadlock on a
# valid program (see test_sim_unit.py::test_queue_wakeup_survives_float_rounding).
# While that bug stands, property tests discard such draws instead of failing at random;
# set this to False once it is fixed.
TOLERATE_LOST_WAKEUP = False

# Same root cause, milder symptom: a batch released by a timer is logged as ending at the
# timer's nominal time t, but blocks placed in that callback start at env.now, which can be
# one ulp before t (test_sim_unit.py::test_next_wave_starts_after_previous_ends).
# While it stands, the SM check counts a batch as ended up to ``_tol`` before its end.
TOLERATE_ULP_OVERLAP = False


def lost_wakeup(program: StreamProgram, gpu: GPUSpec) -> bool:
    """Re-run a program that deadlocked and tell whether some hardware queue was left with
    a head command that was visible, not waiting on an event, on an idle stream: a queue
    the simulator forgot to advance (not a deadlock of the program)."""
    sim = Simulation(Machine.single(gpu))
    with pytest.raises(DeadlockError):
        sim.run(program)
    now = sim.env.now
    for d in sim.devices:
        for q in d.queues:
            if not q.items:
                continue
            e = q.items[0]
            blocked = e.kind == WAIT and not e.event.done
            if not blocked and not e.stream.busy and e.available <= now + 1e-9 * max(1.0, now):
                return True
    return False


def simulate_valid(program: StreamProgram, gpu: GPUSpec, **kw) -> Timeline:
    """Simulate a program that cannot deadlock."""
    try:
        return simulate(program, gpu, **kw)
    except DeadlockError:
        if TOLERATE_LOST_WAKEUP and lost_wakeup(program, gpu):
            event("rejected: lost queue wake-up (known bug)")
            reject()
        raise


def run(case: SimCase) -> Timeline:
    return simulate_valid(case.program, case.gpu, record_batches=True)


# --- checks (each property is one function, reused across strategies) --------------------


def check_sm_resources(tl: Timeline, gpu: GPUSpec, program: StreamProgram) -> None:
    """Per SM, at every batch start, live batches fit its warps/regs/smem/block slots;
    every batch placed whole blocks on valid, distinct SMs; each op's blocks sum to its
    kernels' grids; and each batch holds exactly its kernel's per-block allocation."""
    batches = tl.batches[0]  # type: ignore[attr-defined]
    n = gpu.sm_count
    cap = np.array([gpu.max_warps_per_sm, gpu.regs_per_sm, gpu.smem_per_sm, gpu.max_blocks_per_sm])
    grids: Counter = Counter()
    needs: dict[str, set] = defaultdict(set)
    for c in program.commands:
        if isinstance(c, Launch) and c.kernel is not None:
            grids[c.op] += c.kernel.grid
            o = c.kernel.occupancy
            needs[c.op].add((o.warps, o.regs_alloc, o.smem_alloc))
    blocks: Counter = Counter()
    events = []
    slack = _tol(tl) if TOLERATE_ULP_OVERLAP else 0.0
    for bi, (start, end, op, where, need, *_) in enumerate(batches):
        assert end >= start >= 0, f"batch {bi} of {op}: [{start}, {end}] never ended or inverted"
        assert (need.warps, need.regs, need.smem) in needs[op], f"batch {bi}: wrong need {need}"
        sms = [i for s, _ in where for i in s]
        assert len(sms) == len(set(sms)), f"batch {bi} of {op} names an SM twice: {where}"
        assert all(0 <= i < n for i in sms), f"batch {bi} of {op}: SM out of range {where}"
        assert all(k >= 1 for _, k in where)
        blocks[op] += sum(len(s) * k for s, k in where)
        events.append((end - slack, 0, bi))
        events.append((start, 1, bi))
    assert blocks == grids, "blocks placed differ from the grids launched"
    events.sort()  # at equal times ends (0) come before starts (1): intervals are [start, end)
    usage = np.zeros((n, 4), dtype=np.int64)
    for t, is_start, bi in events:
        _, _, op, where, need, *_ = batches[bi]
        per = np.array([need.warps, need.regs, need.smem, 1], dtype=np.int64)
        for s, k in where:
            idx = np.asarray(s, dtype=np.int64)
            if is_start:
                usage[idx] += per * k
                over = usage[idx] > cap
                assert not over.any(), (
                    f"t={t}: SM(s) {idx[over.any(axis=1)].tolist()} over capacity "
                    f"(warps, regs, smem, blocks) {usage[idx][over.any(axis=1)][0].tolist()} "
                    f"> {cap.tolist()} after batch {bi} of {op}"
                )
            else:
                usage[idx] -= per * k
    assert not usage.any()


def check_stream_order(tl: Timeline, gpu: GPUSpec, program: StreamProgram, items) -> None:
    """On each stream, every command starts at or after the previous one's end, and no
    command starts before the GPU can see it (plus the per-kernel start-up)."""
    tol = _tol(tl)
    last: dict[tuple[int, int], tuple[int, float]] = {}
    graph = program.graph_mode
    base = gpu.graph_launch_api_us + gpu.launch_latency_us
    gap = gpu.graph_node_us if graph else gpu.kernel_gap_us
    for i, (c, it) in enumerate(zip(program.commands, items, strict=True)):
        if it is None:
            continue
        visible = base if graph else it.issue + gpu.launch_latency_us
        if it.kind == "kernel":
            visible += gap
        assert it.start >= visible - tol, f"command {i} {c!r} starts {it.start} < {visible}"
        assert it.end >= it.start
        key = (c.device, c.stream)
        if key in last:
            j, end = last[key]
            assert it.start >= end - tol, (
                f"stream {c.stream}: command {i} {c!r} starts at {it.start} before command "
                f"{j} ({program.commands[j]!r}) ends at {end}"
            )
        last[key] = (i, it.end)


def bound_record(program: StreamProgram, i: int) -> int:
    """Index of the Record that the Wait at ``i`` binds to: the latest one of its event
    issued before it, or else the next one."""
    w = program.commands[i]
    recs = [
        j
        for j, c in enumerate(program.commands)
        if isinstance(c, Record) and c.event == w.event and c.device == w.device
    ]
    before = [j for j in recs if j < i]
    return before[-1] if before else min(j for j in recs if j > i)


def check_event_order(tl: Timeline, gpu: GPUSpec, program: StreamProgram, items) -> None:
    """A Wait completes, and everything after it on its stream starts, no earlier than its
    bound Record's completion plus the event latency."""
    tol = _tol(tl)
    cmds = program.commands
    for i, c in enumerate(cmds):
        if not isinstance(c, Wait):
            continue
        t = items[bound_record(program, i)].end + gpu.event_latency_us
        assert items[i].end >= t - tol, f"wait {i} {c!r} done {items[i].end} < record+lat {t}"
        for j in range(i + 1, len(cmds)):
            d = cmds[j]
            if isinstance(d, Synchronize) or (d.device, d.stream) != (c.device, c.stream):
                continue
            assert items[j].start >= t - tol, (
                f"command {j} {d!r} starts {items[j].start} before its stream's wait {i} on "
                f"'{c.event}' is released at {t}"
            )


def op_spans(tl: Timeline) -> dict[str, tuple[float, float]]:
    """First start and last end of each op's kernels (or its no-op command)."""
    span: dict[str, tuple[float, float]] = {}
    for k in tl.kernels:
        s, e = span.get(k.op, (math.inf, -math.inf))
        span[k.op] = (min(s, k.start_us), max(e, k.end_us))
    for c in tl.commands:
        if c.kind == "noop":
            s, e = span.get(c.op, (math.inf, -math.inf))
            span[c.op] = (min(s, c.done_us), max(e, c.done_us))
    return span


def check_dependencies(tl: Timeline, graph: OpGraph) -> None:
    tol = _tol(tl)
    span = op_spans(tl)
    for u, v in graph.edges():
        assert span[v][0] >= span[u][1] - tol, (
            f"edge {u} -> {v}: {v} starts at {span[v][0]} before {u} ends at {span[u][1]}"
        )


def op_kernels(program: StreamProgram) -> dict[str, list[Kernel]]:
    out: dict[str, list[Kernel]] = defaultdict(list)
    for c in program.commands:
        if isinstance(c, Launch) and c.kernel is not None:
            out[c.op].append(c.kernel)
    return out


def lower_bounds(program: StreamProgram, graph: OpGraph, gpu: GPUSpec) -> tuple[float, float]:
    """(critical path of kernel floors, resource-area bound)."""
    ks = op_kernels(program)
    weight = {op: math.fsum(kernel_floor_us(k, gpu) for k in ks.get(op, ())) for op in graph.ops}
    finish: dict[str, float] = {}
    for op in graph.topo_order:
        finish[op] = weight[op] + max((finish[u] for u in graph.predecessors(op)), default=0.0)
    cp = max(finish.values())
    allk = [k for v in ks.values() for k in v]
    n = gpu.sm_count
    by_blocks = math.fsum(k.grid * min_block_us(k, gpu) for k in allk) / (n * gpu.max_blocks_per_sm)
    by_warps = math.fsum(k.grid * min_block_us(k, gpu) * k.occupancy.warps for k in allk) / (
        n * gpu.max_warps_per_sm
    )
    by_compute = math.fsum(k.grid * k.work_us for k in allk) / n
    return cp, max(by_blocks, by_warps, by_compute)


def check_lower_bounds(tl: Timeline, gpu: GPUSpec, program: StreamProgram, graph) -> None:
    cp, area = lower_bounds(program, graph, gpu)
    slack = 1e-9 * max(1.0, cp, area)
    assert tl.makespan_us >= cp - slack, f"makespan {tl.makespan_us} < critical path {cp}"
    assert tl.makespan_us >= area - slack, f"makespan {tl.makespan_us} < resource bound {area}"


def check_all(case: SimCase, tl: Timeline) -> None:
    items = align(case.program, tl)
    check_sm_resources(tl, case.gpu, case.program)
    check_stream_order(tl, case.gpu, case.program, items)
    check_event_order(tl, case.gpu, case.program, items)
    check_dependencies(tl, case.graph)
    check_lower_bounds(tl, case.gpu, case.program, case.graph)


# --- 1. SM resources --------------------------------------------------------------------


@settings(max_examples=150, **SETTINGS)
@given(sim_cases())
def test_sm_resources_never_exceed_limits(case: SimCase) -> None:
    tl = run(case)
    check_sm_resources(tl, case.gpu, case.program)


@settings(max_examples=100, **SETTINGS)
@given(hand_built_cases(gpus(max_sm=4), max_ops=25, max_waves=3))
def test_sm_resources_few_sms(case: SimCase) -> None:
    """Few SMs and many mixed kernels: blocks of different kernels share SMs heavily."""
    check_sm_resources(run(case), case.gpu, case.program)


# --- 2. stream order --------------------------------------------------------------------


@settings(max_examples=120, **SETTINGS)
@given(sim_cases())
def test_stream_order(case: SimCase) -> None:
    tl = run(case)
    check_stream_order(tl, case.gpu, case.program, align(case.program, tl))


# --- 3. event order ---------------------------------------------------------------------


@settings(max_examples=120, **SETTINGS)
@given(sim_cases())
def test_event_order(case: SimCase) -> None:
    tl = run(case)
    check_event_order(tl, case.gpu, case.program, align(case.program, tl))


@settings(max_examples=120, **SETTINGS)
@given(st.data())
def test_event_order_rerecorded_events(data: st.DataObject) -> None:
    """Events recorded several times, on several streams: each wait binds to the latest
    record before it."""
    gpu = data.draw(gpus(max_sm=16), label="gpu")
    prog = data.draw(event_programs(gpu), label="program")
    validate_program(prog)
    tl = simulate_valid(prog, gpu, record_batches=True)
    items = align(prog, tl)
    check_stream_order(tl, gpu, prog, items)
    check_event_order(tl, gpu, prog, items)
    check_sm_resources(tl, gpu, prog)


# --- 4. dependencies --------------------------------------------------------------------


@settings(max_examples=120, **SETTINGS)
@given(lowered_cases())
def test_dependencies_lowered(case: SimCase) -> None:
    validate_program(case.program, case.graph)
    check_dependencies(run(case), case.graph)


@settings(max_examples=100, **SETTINGS)
@given(hand_built_cases())
def test_dependencies_hand_built(case: SimCase) -> None:
    validate_program(case.program, case.graph)
    check_dependencies(run(case), case.graph)


# --- 5. lower bounds on the makespan ----------------------------------------------------


@settings(max_examples=150, **SETTINGS)
@given(sim_cases())
def test_makespan_lower_bounds(case: SimCase) -> None:
    check_lower_bounds(run(case), case.gpu, case.program, case.graph)


# --- 6. a lone kernel -------------------------------------------------------------------


@settings(max_examples=200, **SETTINGS)
@given(st.data())
def test_lone_kernel_time(data: st.DataObject) -> None:
    """The cost model's promise: a kernel alone takes its analytic time (full waves,
    then the tail at its own residency) after the launch costs, eager or in a graph."""
    gpu = data.draw(gpus(), label="gpu")
    k = data.draw(kernels(gpu, op="a", max_waves=20), label="kernel")
    alone = standalone_time_us(k, gpu)
    eager = simulate_valid(StreamProgram([Launch("a", k, 0)]), gpu)
    want = (
        gpu.launch_api_us
        + gpu.framework_dispatch_us
        + gpu.launch_latency_us
        + gpu.kernel_gap_us
        + alone
    )
    assert eager.makespan_us == pytest.approx(want, rel=1e-9, abs=1e-12)
    graph = simulate_valid(StreamProgram([Launch("a", k, 0)], graph_mode=True), gpu)
    want_g = gpu.graph_launch_api_us + gpu.launch_latency_us + gpu.graph_node_us + alone
    assert graph.makespan_us == pytest.approx(want_g, rel=1e-9, abs=1e-12)
    (rec,) = eager.kernels
    assert rec.batches == -(-k.grid // (k.occupancy.blocks * gpu.sm_count))


@settings(max_examples=150, **SETTINGS)
@given(st.data())
def test_lone_full_waves_by_hand(data: st.DataObject) -> None:
    """Whole waves of one kernel, worked out by hand: each wave's block takes its setup
    plus the slowest of its compute at ``min(warps cap, 1 / blocks per SM)`` of an SM,
    its traffic through its SM's memory port shared by the SM's blocks, and the wave's
    traffic through DRAM."""
    gpu = data.draw(gpus(vary_costs=False), label="gpu")
    k = data.draw(kernels(gpu, op="a", max_waves=1), label="kernel")
    per = k.occupancy.blocks
    n_waves = data.draw(st.integers(1, 4), label="waves")
    k = replace(k, grid=per * gpu.sm_count * n_waves)
    cap = gpu.dram_bytes_per_us * gpu.dram_efficiency
    port = cap / (gpu.dram_saturation_fraction * gpu.sm_count)
    share = min(k.occupancy.warps / gpu.warps_to_saturate, 1.0, 1.0 / per)
    fluid = max(
        k.work_us / share,
        k.block_bytes * per / port,
        k.block_bytes * per * gpu.sm_count / cap,
    )
    want = n_waves * (k.setup_us + fluid)
    tl = simulate_valid(StreamProgram([Launch("a", k, 0)], graph_mode=True), gpu)
    (rec,) = tl.kernels
    assert rec.end_us - rec.start_us == pytest.approx(want, rel=1e-9, abs=1e-12)


# --- 7. one hardware queue --------------------------------------------------------------


def check_issue_order_starts(tl: Timeline, program: StreamProgram) -> None:
    items = align(program, tl)
    starts = [(i, it.start) for i, it in enumerate(items) if it is not None and it.kind == "kernel"]
    for (i, a), (j, b) in itertools.pairwise(starts):
        assert b >= a, (
            f"hw_queues=1: kernel of command {j} ({program.commands[j].op}) starts at {b}, "
            f"before the earlier-issued command {i} ({program.commands[i].op}) at {a}"
        )


@settings(max_examples=120, **SETTINGS)
@given(sim_cases(gpus(hw_queues=1)))
def test_one_hw_queue_starts_in_issue_order(case: SimCase) -> None:
    assume(len(case.program.streams) > 1)
    check_issue_order_starts(run(case), case.program)


# --- 8. determinism ---------------------------------------------------------------------


@settings(max_examples=60, **SETTINGS)
@given(sim_cases())
def test_deterministic(case: SimCase) -> None:
    a, b = run(case), run(case)
    assert a.kernels == b.kernels
    assert a.commands == b.commands
    assert a.host == b.host
    assert a.makespan_us == b.makespan_us
    assert a.counters == b.counters
    assert a.batches == b.batches  # type: ignore[attr-defined]
    assert dumps_chrome_trace(a) == dumps_chrome_trace(b)
    # recording batches is observation only
    c = simulate_valid(case.program, case.gpu)
    assert (c.kernels, c.commands, c.makespan_us) == (a.kernels, a.commands, a.makespan_us)


# --- 9. deadlocks raise ------------------------------------------------------------------


class Hang(Exception):
    pass


@contextmanager
def wall_clock_limit(seconds: int) -> Iterator[None]:
    def on_alarm(signum, frame):  # pragma: no cover - only on a hang
        raise Hang(f"simulation still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _streams_used(cmds: list[Command]) -> set[int]:
    return {c.stream for c in cmds if not isinstance(c, Synchronize)}


@settings(max_examples=80, **SETTINGS)
@given(hand_built_cases(max_ops=15), st.data())
def test_wait_never_recorded_raises(case: SimCase, data: st.DataObject) -> None:
    cmds = list(case.program.commands)
    pos = data.draw(st.integers(0, len(cmds)), label="position")
    stream = data.draw(st.sampled_from(sorted(_streams_used(cmds) | {99})), label="stream")
    cmds.insert(pos, Wait("ghost", stream))
    prog = StreamProgram(cmds, case.program.graph_mode)
    with wall_clock_limit(10), pytest.raises(DeadlockError) as err:
        simulate(prog, case.gpu)
    if "'ghost'" not in str(err.value) and TOLERATE_LOST_WAKEUP and lost_wakeup(prog, case.gpu):
        reject()
    assert "'ghost'" in str(err.value)
    assert "never recorded" in str(err.value)


@settings(max_examples=80, **SETTINGS)
@given(hand_built_cases(max_ops=15), st.integers(2, 4), st.data())
def test_wait_cycle_raises(case: SimCase, n: int, data: st.DataObject) -> None:
    """Stream c_i waits for cyc_i, launches, records cyc_{i+1}; the first wait binds
    forward to the last record, closing a cycle. Interleaved with a valid program."""
    gpu = case.gpu
    cyc_streams = data.draw(
        st.lists(st.integers(64, 127), min_size=n, max_size=n, unique=True), label="streams"
    )
    cycle: list[Command] = []
    for i, s in enumerate(cyc_streams):
        k = data.draw(kernels(gpu, op=f"cyc_op{i}", max_waves=2), label=f"kernel {i}")
        cycle += [Wait(f"cyc{i}", s), Launch(f"cyc_op{i}", k, s), Record(f"cyc{(i + 1) % n}", s)]
    base = list(case.program.commands)
    # random interleaving keeping each sequence's own order
    picks = data.draw(st.permutations([0] * len(base) + [1] * len(cycle)), label="interleave")
    it = [iter(base), iter(cycle)]
    cmds = [next(it[p]) for p in picks]
    prog = StreamProgram(cmds, case.program.graph_mode)
    with wall_clock_limit(10), pytest.raises(DeadlockError) as err:
        simulate(prog, gpu)
    msg = str(err.value)
    if TOLERATE_LOST_WAKEUP and lost_wakeup(prog, gpu):
        reject()
    assert "'cyc0'" in msg, msg  # the first stuck command in issue order is its queue's head
    queues = [s % gpu.hw_queues for s in cyc_streams]
    others = {s % gpu.hw_queues for s in _streams_used(base)}
    # the host may stop at a synchronize before issuing the rest of the cycle
    host_can_block = any(isinstance(c, Synchronize) for c in base)
    if not host_can_block and len(set(queues)) == n and not set(queues) & others:
        for i in range(n):  # each cycle stream heads its own queue
            assert f"'cyc{i}'" in msg, msg


# --- 10. no work lost -------------------------------------------------------------------


@settings(max_examples=100, **SETTINGS)
@given(sim_cases())
def test_every_launch_runs_exactly_once(case: SimCase) -> None:
    tl = run(case)
    align(case.program, tl)  # one timeline record per command, nothing extra
    launched = Counter(
        (c.op, c.stream) for c in case.program.commands if isinstance(c, Launch) and c.kernel
    )
    assert Counter((k.op, k.stream) for k in tl.kernels) == launched
    noops = Counter(
        (c.op, c.stream) for c in case.program.commands if isinstance(c, Launch) and not c.kernel
    )
    assert Counter((c.op, c.stream) for c in tl.commands if c.kind == "noop") == noops
    assert set(case.graph.ops) == {k.op for k in tl.kernels} | {op for op, _ in noops}
    for k in tl.kernels:
        assert k.start_us < k.end_us <= tl.makespan_us


# --- everything at once on one draw (cheap extra coverage) --------------------------------


@settings(max_examples=150, **SETTINGS)
@given(sim_cases(max_streams=8))
def test_all_invariants_together(case: SimCase) -> None:
    check_all(case, run(case))


# --- 11. throughput: SMs, DRAM and work (simgpu.sharing) ----------------------------------


def check_throughput(tl: Timeline, gpu: GPUSpec) -> None:
    """From every batch's logged rates: at every instant each SM computes at most one
    SM's sustained rate, the GPU at most ``sm_count`` of them (peak x efficiency), DRAM
    delivers at most its bandwidth; and every batch did exactly one block's work."""
    batches = tl.batches[0]  # type: ignore[attr-defined]
    n = gpu.sm_count
    cap = gpu.dram_bytes_per_us * gpu.dram_efficiency
    port = cap / (gpu.dram_saturation_fraction * n)
    points: set[float] = set()
    segs = []  # per batch: (end, kernel demand, SMs, blocks per SM, [(t, rate)])
    for bi, (start, end, op, where, _, rates, k) in enumerate(batches):
        d = demand_of(k, gpu)
        ((sms, per),) = where
        assert rates, f"batch {bi} of {op} never had a rate"
        t0 = rates[0][0]
        assert t0 == pytest.approx(start + d.setup_us, rel=1e-12, abs=1e-12), (bi, op)
        # conservation: the rates integrate to exactly one block's work
        if math.isinf(rates[-1][1]):
            assert end == t0, f"batch {bi} of {op}: no work, yet it ran past its setup"
        else:
            done = 0.0
            for (ta, p), (tb, _) in zip(rates, [*rates[1:], (end, 0.0)], strict=True):
                done += (tb - ta) * p
            # timestamps resolve to an ulp of the clock: a block of a nanosecond late in a
            # long run can only be timed to that (found by Hypothesis: 1 byte at 8 ms)
            slack = 4 * math.ulp(end) * max(p for _, p in rates)
            assert done == pytest.approx(1.0, rel=1e-6, abs=slack), f"batch {bi} of {op} did {done}"
        # no block ever beats its rate alone on an idle SM
        assert all(p <= d.rate * (1 + 1e-9) for _, p in rates), (bi, op)
        points.update(t for t, _ in rates)
        points.add(end)
        segs.append((end, d, sms, per, rates))
    times = sorted(points)
    for ta, tb in itertools.pairwise(times):
        if tb - ta <= 1e-9 * max(1.0, tb):
            continue
        mid = 0.5 * (ta + tb)
        per_sm = np.zeros(n)
        dram = compute = 0.0
        for end, d, sms, per, rates in segs:
            if not rates[0][0] <= mid < end:
                continue
            p = next(r for t, r in reversed(rates) if t <= mid)
            if math.isinf(p):
                continue
            c = per * p * d.work_us  # SM-us of compute per us on each of its SMs
            per_sm[np.asarray(sms, dtype=np.int64)] += c
            compute += c * len(sms)
            dram += per * len(sms) * p * d.bytes
            assert per * p * d.bytes <= port * (1 + 1e-9), f"t={mid}: an SM's port exceeded"
        assert per_sm.max(initial=0.0) <= 1 + 1e-9, f"t={mid}: SM over its rate {per_sm.max()}"
        assert compute <= n * (1 + 1e-9), f"t={mid}: GPU computes {compute / n:.4f} x its peak"
        assert dram <= cap * (1 + 1e-9), f"t={mid}: DRAM draws {dram / cap:.4f} x its bandwidth"


@settings(max_examples=150, **SETTINGS)
@given(sim_cases(max_streams=8))
def test_throughput_never_exceeds_the_hardware(case: SimCase) -> None:
    check_throughput(run(case), case.gpu)


def test_throughput_pinned_case_two_kernels_over_an_sm() -> None:
    """A counterexample Hypothesis found, pinned: one SM looked to compute at 1.28x its
    rate. The timeline was right; the record was not. Two twin groups (same residents at
    the same progress) had merged, and the merged batch's one SM list was read as its
    whole history, crediting one group's past rates to the other's SMs. Recorded runs now
    keep twins apart (test_recording_batches_changes_no_time shows it changes nothing)."""
    from simgpu.kernels import Kernel, Occupancy

    gpu = PRESETS["a10"].replace(sm_count=83, hw_queues=2, dram_gbps=50.0)

    def k(op: str, grid: int, threads: int, warps: int, blocks: int, limiter: str,
          work: float, setup: float = 0.0) -> Kernel:  # fmt: skip
        occ = Occupancy(blocks, limiter, warps, warps * 32 * 16, 1024)
        return Kernel(f"k_{op}", op, grid, threads, 16, 0, 0.0, 0.0, work, setup, occ)

    cmds = [
        Launch("op1", None, 0), Record("done:op1", 0),
        Launch("op7", k("op7", 1, 32, 1, 16, "blocks", 1.0), 0),
        Launch("op0", None, 0), Record("done:op0", 0),
        Launch("op5", k("op5", 260, 289, 10, 4, "threads", 1.0), 0),
        Launch("op6", k("op6", 5, 32, 1, 16, "blocks", 1.0), 0),
        Wait("done:op0", 1),
        Launch("op10", k("op10", 239, 513, 17, 2, "threads", 0.0, 1.0), 1),
        Wait("done:op1", 1),
        Launch("op14", k("op14", 235, 97, 4, 12, "threads", 6.0), 1),
    ]  # fmt: skip
    tl = simulate(StreamProgram(cmds, graph_mode=True), gpu, record_batches=True)
    check_throughput(tl, gpu)


@settings(max_examples=100, **SETTINGS)
@given(sim_cases(max_streams=8))
def test_recording_batches_changes_no_time(case: SimCase) -> None:
    """The invariant tests read recorded batches, and a recorded run keeps twin groups
    apart: it must give exactly the timeline of an unrecorded run, bit for bit."""
    plain = simulate(case.program, case.gpu)
    recorded = run(case)
    assert recorded.makespan_us == plain.makespan_us
    assert [(k.op, k.start_us, k.end_us) for k in recorded.kernels] == [
        (k.op, k.start_us, k.end_us) for k in plain.kernels
    ]


@settings(max_examples=100, **SETTINGS)
@given(hand_built_cases(gpus(max_sm=4), max_ops=25, max_waves=3))
def test_throughput_few_sms_many_kernels(case: SimCase) -> None:
    """Few SMs and many mixed kernels: every SM is shared by several kernels at once."""
    check_throughput(run(case), case.gpu)


@settings(max_examples=150, **SETTINGS)
@given(st.data())
def test_a_co_runner_never_speeds_a_kernel_up(data: st.DataObject) -> None:
    """A kernel issued first, then other kernels on other streams: the others only take
    shares of its SMs and of DRAM, so it ends no earlier than alone. (It is the head of
    the dispatch queue, so its blocks are placed where they would be alone.)"""
    gpu = data.draw(gpus(max_sm=16), label="gpu")
    k = data.draw(kernels(gpu, op="k", max_waves=3), label="kernel")
    others = data.draw(st.lists(kernels(gpu, max_waves=2), min_size=1, max_size=5), label="co")
    graph_mode = data.draw(st.booleans(), label="graph mode")
    alone = simulate_valid(StreamProgram([Launch("k", k, 0)], graph_mode=graph_mode), gpu)
    cmds = [Launch("k", k, 0)]
    cmds += [Launch(f"c{i}", replace(o, op=f"c{i}"), 1 + i) for i, o in enumerate(others)]
    both = simulate_valid(StreamProgram(cmds, graph_mode=graph_mode), gpu)
    (solo,) = alone.kernels
    (shared,) = [r for r in both.kernels if r.op == "k"]
    assert shared.start_us == solo.start_us
    assert shared.end_us >= solo.end_us * (1 - 1e-9)
