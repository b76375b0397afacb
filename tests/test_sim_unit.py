"""Unit tests of the simulator's behaviour on small hand-made programs: concurrency,
the left-over block policy, idle SMs, DRAM sharing, CUDA Graph mode, synchronisation,
event binding and hardware-queue aliasing."""

from __future__ import annotations

import pytest
from strategies import make_kernel

from simgpu.errors import DeadlockError
from simgpu.hardware import GPUSpec, load_gpu
from simgpu.kernels import Kernel, standalone_time_us
from simgpu.program import Command, Launch, Record, StreamProgram, Synchronize, Wait
from simgpu.sim.engine import simulate
from simgpu.timeline import KernelRecord, Timeline

V100 = load_gpu("v100")


def _k(tl: Timeline, op: str) -> KernelRecord:
    (rec,) = [k for k in tl.kernels if k.op == op]
    return rec


def _run(cmds: list[Command], gpu: GPUSpec = V100, graph_mode: bool = False) -> Timeline:
    return simulate(StreamProgram(cmds, graph_mode=graph_mode), gpu, record_batches=True)


def _small(op: str, gpu: GPUSpec = V100, block_us: float = 100.0) -> Kernel:
    return make_kernel(gpu, op, grid=10, threads=128, block_us=block_us)


def _overlap(a: KernelRecord, b: KernelRecord) -> float:
    return max(0.0, min(a.end_us, b.end_us) - max(a.start_us, b.start_us))


def test_two_small_kernels_overlap_on_two_streams() -> None:
    a, b = _small("a"), _small("b")
    two = _run([Launch("a", a, 0), Launch("b", b, 1)])
    one = _run([Launch("a", a, 0), Launch("b", b, 0)])
    assert _overlap(_k(two, "a"), _k(two, "b")) > 0.8 * 100.0
    assert _overlap(_k(one, "a"), _k(one, "b")) == 0.0
    assert two.makespan_us < one.makespan_us - 80.0
    # each still runs at its standalone speed: 10 blocks fit on 80 SMs side by side
    for tl in (one, two):
        for op in "ab":
            rec = _k(tl, op)
            assert rec.end_us - rec.start_us == pytest.approx(100.0)
    # the two kernels took different SMs
    batches = two.batches[0]  # type: ignore[attr-defined]
    sms = [set(i for s, _ in where for i in s) for _, _, _, where, *_ in batches]
    assert len(sms) == 2 and not sms[0] & sms[1]


def test_two_gpu_filling_kernels_do_not_overlap() -> None:
    """Left-over policy: the second kernel gets blocks only as the first's free up."""
    occ_blocks = 2  # 1024-thread blocks on a 2048-thread SM
    full = V100.sm_count * occ_blocks
    a = make_kernel(V100, "a", grid=full, threads=1024, regs=32, block_us=50.0)
    b = make_kernel(V100, "b", grid=full, threads=1024, regs=32, block_us=50.0)
    assert a.occupancy.blocks == occ_blocks
    tl = _run([Launch("a", a, 0), Launch("b", b, 1)])
    ka, kb = _k(tl, "a"), _k(tl, "b")
    assert _overlap(ka, kb) == 0.0
    assert kb.start_us == pytest.approx(ka.end_us)  # starts the moment the first frees SMs
    assert tl.makespan_us >= 2 * 50.0


def test_partly_filling_kernel_shares_left_over_sms() -> None:
    """The second kernel fills the SMs the first left free, then takes the rest later."""
    a = make_kernel(V100, "a", grid=40, threads=1024, block_us=50.0)  # 40 SMs... of 80
    b = make_kernel(V100, "b", grid=320, threads=1024, block_us=50.0)  # 2 waves alone
    tl = _run([Launch("a", a, 0), Launch("b", b, 1)])
    ka, kb = _k(tl, "a"), _k(tl, "b")
    assert kb.start_us < ka.end_us  # started on what a left over
    assert kb.batches >= 2


def test_small_grid_leaves_sms_idle() -> None:
    k = _small("a")
    tl = _run([Launch("a", k, 0)])
    util = tl.sm_utilisation()
    assert len(util) == V100.sm_count
    assert (util == 0).sum() == V100.sm_count - 10
    assert (util > 0).sum() == 10
    assert tl.mean_sm_utilisation() < 10 / V100.sm_count


def test_dram_contention_slows_each_but_pair_beats_sequential() -> None:
    cap = V100.dram_bytes_per_us * V100.dram_efficiency
    grid, block_us = V100.sm_count, 100.0
    bb = 0.75 * cap * block_us / grid  # each kernel alone draws 75% of the bandwidth
    a = make_kernel(V100, "a", grid=grid, block_us=block_us, block_bytes=bb)
    b = make_kernel(V100, "b", grid=grid, block_us=block_us, block_bytes=bb)
    alone = _run([Launch("a", a, 0)])
    assert _k(alone, "a").end_us - _k(alone, "a").start_us == pytest.approx(block_us)
    pair = _run([Launch("a", a, 0), Launch("b", b, 1)])
    seq = _run([Launch("a", a, 0), Launch("b", b, 0)])
    for op in "ab":
        rec = _k(pair, op)
        assert rec.end_us - rec.start_us > block_us * 1.2  # sharing 150% demand
    assert _overlap(_k(pair, "a"), _k(pair, "b")) > 0
    assert pair.makespan_us <= seq.makespan_us
    # while both run, DRAM use is capped at the achievable bandwidth
    assert max(gbps for _, _, gbps, _ in pair.counters[0]) == pytest.approx(cap / 1e3)


def test_graph_mode_faster_for_chain_of_tiny_kernels() -> None:
    cmds: list[Command] = [
        Launch(f"k{i}", make_kernel(V100, f"k{i}", grid=1, block_us=1.0), 0) for i in range(50)
    ]
    eager = _run(cmds)
    graph = _run(cmds, graph_mode=True)
    assert graph.makespan_us < eager.makespan_us / 2
    # eager: launch-bound, the host issues one kernel per launch+dispatch cost
    assert eager.makespan_us >= 50 * (V100.launch_api_us + V100.framework_dispatch_us)
    assert graph.makespan_us == pytest.approx(
        V100.graph_launch_api_us + V100.launch_latency_us + 50 * (V100.graph_node_us + 1.0)
    )
    assert [h.api for h in graph.host] == ["graph_launch"]


def test_synchronize_makes_host_wait() -> None:
    a, b = _small("a"), _small("b", block_us=5.0)
    tl = _run([Launch("a", a, 0), Synchronize(0), Launch("b", b, 1)])
    ka, kb = _k(tl, "a"), _k(tl, "b")
    (launch_b,) = [h for h in tl.host if h.api == "launch" and h.op == "b"]
    (sync,) = [h for h in tl.host if h.api == "synchronize"]
    assert sync.end_us >= ka.end_us
    assert launch_b.start_us >= ka.end_us
    assert kb.start_us >= ka.end_us + V100.launch_latency_us
    # without the synchronize the second stream would have run concurrently
    free = _run([Launch("a", a, 0), Launch("b", b, 1)])
    assert _k(free, "b").start_us < _k(free, "a").end_us


def test_lone_kernel_matches_standalone_time() -> None:
    k = make_kernel(V100, "a", grid=1000, threads=256, block_us=7.0)
    tl = _run([Launch("a", k, 0)])
    rec = _k(tl, "a")
    assert rec.end_us - rec.start_us == pytest.approx(standalone_time_us(k, V100))
    assert rec.batches == -(-1000 // (k.occupancy.blocks * V100.sm_count))


def test_wait_binds_to_latest_record_before_it() -> None:
    slow, fast, c = _small("slow", block_us=200.0), _small("fast", block_us=5.0), _small("c")
    tl = _run(
        [
            Launch("slow", slow, 1),
            Record("e", 1),
            Launch("fast", fast, 2),
            Record("e", 2),  # re-recorded: later waits follow this one
            Wait("e", 0),
            Launch("c", c, 0),
        ]
    )
    kc = _k(tl, "c")
    assert kc.start_us >= _k(tl, "fast").end_us + V100.event_latency_us
    assert kc.start_us < _k(tl, "slow").end_us


def test_wait_before_any_record_binds_to_next_record() -> None:
    a, c = _small("a", block_us=50.0), _small("c")
    tl = _run([Wait("e", 0), Launch("c", c, 0), Launch("a", a, 1), Record("e", 1)])
    assert _k(tl, "c").start_us >= _k(tl, "a").end_us + V100.event_latency_us


def test_aliased_streams_block_each_other() -> None:
    """Streams 0 and 2 share hardware queue 0 when there are 2 queues: a wait at its head
    holds back the other stream's later launch (a false dependency)."""
    slow, x, y = _small("slow", block_us=200.0), _small("x"), _small("y")
    cmds: list[Command] = [
        Launch("slow", slow, 1),
        Record("e", 1),
        Wait("e", 0),
        Launch("x", x, 0),
        Launch("y", y, 2),
    ]
    aliased = _run(cmds, V100.replace(hw_queues=2))
    assert _k(aliased, "y").start_us >= _k(aliased, "slow").end_us
    assert {k.queue for k in aliased.kernels if k.stream in (0, 2)} == {0}
    separate = _run(cmds, V100.replace(hw_queues=4))
    assert _k(separate, "y").start_us < _k(separate, "slow").end_us


def test_one_queue_keeps_issue_order_across_event_latency() -> None:
    """hw_queues=1: y, issued after x, must not start before it even though x's stream is
    still inside the event latency of its wait when both leave the queue."""
    gpu = V100.replace(hw_queues=1, event_latency_us=5.0)
    slow, x, y = _small("slow", gpu, 50.0), _small("x", gpu), _small("y", gpu)
    tl = _run(
        [
            Launch("slow", slow, 1),
            Record("e", 1),
            Wait("e", 0),
            Launch("x", x, 0),
            Launch("y", y, 2),
        ],
        gpu,
    )
    assert _k(tl, "y").start_us >= _k(tl, "x").start_us


def test_two_stream_wait_cycle_names_both_events() -> None:
    a, b = _small("a"), _small("b")
    cmds: list[Command] = [
        Wait("ea", 0),
        Launch("a", a, 0),
        Record("eb", 0),
        Wait("eb", 1),
        Launch("b", b, 1),
        Record("ea", 1),
    ]
    with pytest.raises(DeadlockError) as err:
        _run(cmds)
    msg = str(err.value)
    assert "'ea'" in msg and "'eb'" in msg


def test_wait_never_recorded_names_event() -> None:
    with pytest.raises(DeadlockError, match="'ghost', which is never recorded"):
        _run([Launch("a", _small("a"), 0), Wait("ghost", 0), Launch("b", _small("b"), 0)])


def test_queue_wakeup_survives_float_rounding() -> None:
    """A valid 3-command program reported as a deadlock. Kernel a ends at
    13.799999999999999; the host then issues b, visible at 31.2; the wake-up scheduled
    from now=13.8 with delay 31.2 - 13.8 fires at 31.199999999999996 < 31.2."""
    gpu = V100.replace(
        launch_api_us=5.8,
        framework_dispatch_us=3.9,
        launch_latency_us=3.7,
        sync_api_us=9.8,
        kernel_gap_us=0.1,
    )
    a = make_kernel(gpu, "a", grid=1, block_us=0.3)
    tl = _run([Launch("a", a, 0), Synchronize(0), Launch("b", None, 0)], gpu)
    assert [c.kind for c in tl.commands] == ["noop"]


def test_next_wave_starts_after_previous_ends() -> None:
    """One SM, room for 2 of the 3 blocks: wave 1 is logged [0.4, 0.9) and wave 2 starts at
    0.8999999999999999 — on paper 3 blocks of 32 warps sit on a 64-warp SM."""
    gpu = V100.replace(
        sm_count=1, launch_latency_us=0.2, graph_launch_api_us=0.0, graph_node_us=0.2
    )
    k = make_kernel(gpu, "a", grid=3, threads=1024, block_us=0.5)
    tl = _run([Launch("a", k, 0)], gpu, graph_mode=True)
    (w1, w2) = tl.batches[0]  # type: ignore[attr-defined]
    assert w1[1] == 0.9
    assert w2[0] >= w1[1]


def _mixed_program() -> list[Command]:
    """Kernels on three streams with events, a synchronize and a no-op."""
    a, b, c = _small("a"), _small("b"), make_kernel(V100, "c", grid=500, threads=256)
    return [
        Launch("in", None, 0),
        Launch("a", a, 0),
        Record("ea", 0),
        Launch("b", b, 1),
        Wait("ea", 2),
        Launch("c", c, 2),
        Synchronize(),
        Launch("a2", a, 1),
    ]


def test_device_reports_every_completion() -> None:
    """``Device.on_done`` hears each kernel and stream command once, at its end time."""
    from simgpu.hardware import Machine
    from simgpu.sim.engine import Simulation

    sim = Simulation(Machine.single(V100))
    heard: list[tuple[str | None, float]] = []
    sim.devices[0].on_done = lambda e, t: heard.append((e.op, t))
    tl = sim.run(StreamProgram(_mixed_program()))
    ends = [(k.op, k.end_us) for k in tl.kernels] + [(c.op, c.done_us) for c in tl.commands]
    assert sorted(heard, key=repr) == sorted(ends, key=repr)
    assert len(heard) == 7  # everything but the synchronize


def test_a_run_leaves_no_cycles_for_the_collector() -> None:
    """simulate() frees a run by reference counting: the cyclic collector finds nothing
    (its pass over a run's objects had cost a tenth of the run)."""
    import gc

    from simgpu.hardware import load_machine
    from simgpu.program import Copy

    gc.collect()
    was = gc.isenabled()
    gc.disable()
    try:
        tl = simulate(StreamProgram(_mixed_program()), V100)
        assert gc.collect() == 0
        two = load_machine("2xv100-nvlink")
        k = _small("x")
        prog = [Launch("x", k, 0, 0), Record("ex", 0, 0), Copy(1 << 20, 0, 1, 0, 0, "x"),
                Wait("ex", 1, 1), Launch("y", k, 1, 1)]  # fmt: skip
        simulate(StreamProgram(prog), two)
        assert gc.collect() == 0
    finally:
        if was:
            gc.enable()
    assert tl.events >= len(tl.kernels)  # every SimPy event counted, one per batch at least
