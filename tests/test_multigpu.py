"""Several GPUs: machines and links, peer copies on copy engines, events across devices,
one host thread per device, lowering with transfers, and the validator's copy checks.

Unit tests on hand-made programs, then Hypothesis property tests over random DAGs on
random machines (random GPUs, links, switches, copy engines, host threading).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import assignments, dags, gpus, make_kernel

from simgpu.chrome_trace import to_chrome_trace
from simgpu.cli import main
from simgpu.errors import DeadlockError, ProgramError, SpecError
from simgpu.gantt import plot_gantt
from simgpu.graph import Op, OpGraph
from simgpu.hardware import (
    LINK_KINDS,
    MACHINE_PRESETS,
    Link,
    Machine,
    load_gpu,
    load_machine,
    machine_from_json,
)
from simgpu.kernels import standalone_time_us
from simgpu.program import (
    Command,
    Copy,
    Launch,
    Record,
    StreamProgram,
    Synchronize,
    Wait,
    lower,
    output_bytes,
    validate_program,
)
from simgpu.schedule import StreamSchedule
from simgpu.sim.engine import simulate
from simgpu.timeline import KernelRecord, Timeline

V100 = load_gpu("v100")
GBPS, LAT = 10.0, 3.0  # a slow custom link: 1e4 bytes/us, 3 us latency


def _pair(gpu=V100, gbps: float = GBPS, lat: float = LAT, **kw) -> Machine:
    return Machine("pair", (gpu, gpu), (Link(0, 1, "custom", 1, gbps, lat),), **kw)


def _k(tl: Timeline, op: str) -> KernelRecord:
    (rec,) = [k for k in tl.kernels if k.op == op]
    return rec


def _run(cmds: list[Command], machine: Machine, graph_mode: bool = False) -> Timeline:
    return simulate(StreamProgram(cmds, graph_mode=graph_mode), machine)


# --- machines -----------------------------------------------------------------------------


def test_presets_named_in_the_issue_exist_and_are_connected() -> None:
    for name in (
        "2xv100-nvlink",
        "2xa100-nvlink",
        "4xa100-nvlink",
        "8xh100-nvswitch",
        "2xgpu-pcie4",
    ):
        m = load_machine(name)
        n = len(m.devices)
        assert n == int(name[0])
        for a in range(n):
            for b in range(n):
                if a != b:
                    assert m.route(a, b) is not None


def test_datasheet_bandwidths() -> None:
    assert load_machine("2xv100-nvlink").route(0, 1).gbps == 50.0  # 2 x 25 GB/s
    assert load_machine("2xa100-nvlink").route(0, 1).gbps == 300.0
    assert load_machine("4xa100-nvlink").route(2, 3).gbps == 100.0
    r = load_machine("8xh100-nvswitch").route(3, 6)
    assert r.gbps == 450.0 and r.channels == ((3, "nvswitch"), ("nvswitch", 6))
    assert load_machine("2xgpu-pcie4").route(1, 0).gbps == 31.5
    assert {"nvlink2", "nvlink3", "nvlink4", "pcie3", "pcie4", "pcie5"} <= set(LINK_KINDS)


def test_gpu_name_is_a_one_device_machine() -> None:
    m = load_machine("a100")
    assert len(m.devices) == 1 and m.gpu.name == "a100-sxm4-40gb"


def test_direct_link_preferred_over_switch_and_gpus_do_not_forward() -> None:
    data = {
        "gpus": ["v100"] * 3,
        "switches": ["pcie"],
        "links": [
            {"between": [0, 1], "kind": "nvlink2", "count": 2},
            {"between": [1, 2], "kind": "nvlink2", "count": 6},
            {"between": [0, "pcie"], "kind": "pcie3"},
            {"between": [1, "pcie"], "kind": "pcie3"},
            {"between": [2, "pcie"], "kind": "pcie3"},
        ],
    }
    m = machine_from_json(data)
    assert m.route(0, 1).channels == ((0, 1),)
    # 0 -> 2 has no direct link: through the PCIe switch, never through GPU 1
    assert m.route(0, 2).channels == ((0, "pcie"), ("pcie", 2))
    assert m.transfer_us(0, 2, 15.75e3) == pytest.approx(5.0 + 1.0)


def test_machine_json_file_with_base_and_gpu_objects(tmp_path: Path) -> None:
    p = tmp_path / "m.json"
    p.write_text(
        json.dumps(
            {
                "base": "2xv100-nvlink",
                "gpus": ["v100", {"base": "v100", "hw_queues": 4}],
                "shared_host": True,
            }
        )
    )
    m = load_machine(p)
    assert m.devices[1].hw_queues == 4 and m.shared_host
    assert m.route(0, 1).gbps == 50.0


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ([1, 2], "must be a JSON object"),
        ({"gpus": []}, "non-empty list"),
        ({"gpus": ["v100", 7]}, r"gpus\[1\]"),
        ({"gpus": ["nope"]}, "unknown GPU"),
        (
            {"gpus": ["v100"] * 2, "links": [{"between": [0, 1], "kind": "nvlink9"}]},
            "unknown link kind",
        ),
        ({"gpus": ["v100"] * 2, "links": [{"between": [0, 0], "kind": "pcie4"}]}, "to itself"),
        ({"gpus": ["v100"] * 2, "links": [{"between": [0, 5], "kind": "pcie4"}]}, "neither a GPU"),
        ({"gpus": ["v100"] * 2, "links": [{"between": [0], "kind": "pcie4"}]}, "two nodes"),
        ({"gpus": ["v100"] * 2, "links": [{"between": [0, 1]}]}, 'give a "kind"'),
        (
            {"gpus": ["v100"] * 2, "links": [{"between": [0, 1], "gbps": -1, "latency_us": 1}]},
            "positive",
        ),
        (
            {"gpus": ["v100"] * 2, "links": [{"between": [0, 1], "kind": "pcie4", "count": 0}]},
            "count",
        ),
        (
            {"gpus": ["v100"] * 2, "links": [{"between": [0, 1], "kind": "pcie4", "x": 1}]},
            "unknown key",
        ),
        ({"gpus": ["v100"] * 2}, "no route from GPU 0 to GPU 1"),
        ({"gpus": ["v100"] * 2, "wires": []}, "unknown machine key"),
        ({"base": "10xnothing"}, "unknown base machine"),
        ({"gpus": ["v100"], "shared_host": "yes"}, "shared_host"),
        ({"gpus": ["v100"] * 2, "switches": ["s", "s"], "links": []}, "named twice"),
    ],
)
def test_malformed_machine_json_is_one_line_spec_error(data: object, match: str) -> None:
    with pytest.raises(SpecError, match=match) as e:
        machine_from_json(data, source="m.json")
    assert "\n" not in str(e.value) and str(e.value).startswith("m.json")


def test_unknown_machine_name() -> None:
    with pytest.raises(SpecError, match=r"unknown machine 'zz'.*2xv100-nvlink"):
        load_machine("zz")


# --- copies -------------------------------------------------------------------------------


def test_copy_takes_latency_plus_bytes_over_bandwidth() -> None:
    m = _pair()
    for nbytes in (0, 1, 1_000_000, 12_345_678):
        tl = _run([Copy(nbytes, 0, 1, 0, 0, "x")], m)
        (c,) = tl.copies
        assert c.end_us - c.start_us == pytest.approx(LAT + nbytes / (GBPS * 1e3), rel=1e-12)
        # issued after one launch-priced API call, visible after the launch latency
        assert c.start_us == pytest.approx(V100.launch_api_us + V100.framework_dispatch_us + 3.0)
        assert (c.src, c.dst, c.bytes, c.tensor) == (0, 1, nbytes, "x")
        assert tl.makespan_us == c.end_us


def test_copy_overlaps_kernels_without_slowing_them() -> None:
    m = _pair()
    big = make_kernel(V100, "k", grid=V100.sm_count * 4, threads=256, block_us=500.0)
    alone = _k(_run([Launch("k", big, 0, 0)], m), "k")
    tl = _run([Launch("k", big, 0, 0), Copy(2_000_000, 0, 1, 1, 0, "t")], m)
    k = _k(tl, "k")
    (c,) = tl.copies
    assert k.end_us - k.start_us == pytest.approx(alone.end_us - alone.start_us)
    assert c.end_us - c.start_us == pytest.approx(LAT + 200.0)
    assert min(k.end_us, c.end_us) - max(k.start_us, c.start_us) > 100.0  # they overlap
    assert k.end_us - k.start_us == pytest.approx(standalone_time_us(big, V100), rel=1e-9)


def test_copies_share_a_link_direction_fairly_and_duplex_does_not() -> None:
    m = _pair()
    nb = 1_000_000  # 100 us alone
    # in one CUDA Graph both copies become visible at the same instant
    same = _run([Copy(nb, 0, 1, 1, 0), Copy(nb, 0, 1, 2, 0)], m, graph_mode=True).copies
    assert [c.end_us - c.start_us for c in same] == pytest.approx([LAT + 200.0, LAT + 200.0])
    both = _run([Copy(nb, 0, 1, 1, 0), Copy(nb, 1, 0, 1, 1)], m, graph_mode=True).copies
    assert [c.end_us - c.start_us for c in both] == pytest.approx([LAT + 100.0] * 2)
    # a short copy finishes first; the long one then gets the whole link
    mixed = _run([Copy(nb, 0, 1, 1, 0), Copy(nb // 4, 0, 1, 2, 0)], m, graph_mode=True).copies
    # issued one launch apart, they overlap for all but that gap
    gap = V100.launch_api_us + V100.framework_dispatch_us
    a, b = _run([Copy(nb, 0, 1, 1, 0), Copy(nb, 0, 1, 2, 0)], m).copies
    assert b.start_us - a.start_us == pytest.approx(gap)
    assert a.end_us - a.start_us == pytest.approx(LAT + gap + 2 * (100.0 - gap))
    assert b.end_us == pytest.approx(a.end_us + gap)
    short, long_ = sorted(mixed, key=lambda c: c.bytes)
    assert short.end_us - short.start_us == pytest.approx(LAT + 50.0)
    assert long_.end_us - long_.start_us == pytest.approx(LAT + 125.0)


def test_copy_engines_limit_concurrent_copies() -> None:
    one = replace(V100, copy_engines=1)
    tl = _run([Copy(1_000_000, 0, 1, 1, 0), Copy(1_000_000, 0, 1, 2, 0)], _pair(one))
    a, b = tl.copies
    assert b.start_us == pytest.approx(a.end_us)  # queued for the only engine
    assert b.end_us - b.start_us == pytest.approx(LAT + 100.0)


def test_switch_routes_share_only_common_ports() -> None:
    m = load_machine("8xh100-nvswitch")
    nb = 45_000_000  # 100 us at 450 GB/s
    apart = _run([Copy(nb, 0, 1, 1, 0), Copy(nb, 2, 3, 1, 2)], m, graph_mode=True).copies
    assert [c.end_us - c.start_us for c in apart] == pytest.approx([102.0, 102.0])
    # both into GPU 1 (the host threads of GPUs 0 and 2 issue them at the same instant)
    fan_in = _run([Copy(nb, 0, 1, 1, 0), Copy(nb, 2, 1, 1, 2)], m).copies
    assert [c.end_us - c.start_us for c in fan_in] == pytest.approx([202.0, 202.0])


def test_copy_stream_order_and_event_after_copy() -> None:
    m = _pair()
    k = make_kernel(V100, "b", grid=4, block_us=10.0)
    tl = _run(
        [
            Copy(1_000_000, 0, 1, 0, 0, "a"),
            Record("moved", 0, 0),
            Wait("moved", 0, 1),
            Launch("b", k, 0, 1),
        ],
        m,
    )
    (c,) = tl.copies
    assert _k(tl, "b").start_us >= c.end_us + V100.event_latency_us - 1e-9


@pytest.mark.parametrize(
    ("cmd", "match"),
    [
        (Copy(10, 0, 0, 0, 0), "two different"),
        (Copy(10, 0, 2, 0, 0), "machine has 2 GPUs"),
        (Copy(-1, 0, 1, 0, 0), "-1 bytes"),
    ],
)
def test_bad_copies_are_program_errors(cmd: Copy, match: str) -> None:
    with pytest.raises(ProgramError, match=match):
        _run([cmd], _pair())
    with pytest.raises(ProgramError, match=match):
        _run([cmd], _pair(shared_host=True))


def test_copy_between_unlinked_gpus() -> None:
    with pytest.raises(ProgramError, match="no link from GPU 0 to GPU 1"):
        simulate(StreamProgram([Copy(10, 0, 1, 0, 0)]), [V100, V100])


# --- events across devices and host threads -------------------------------------------------


def test_wait_on_another_device_orders_its_stream() -> None:
    m = _pair()
    slow = make_kernel(V100, "a", grid=4, block_us=300.0)
    fast = make_kernel(V100, "b", grid=4, block_us=10.0)
    tl = _run(
        [Launch("a", slow, 0, 0), Record("e", 0, 0), Wait("e", 0, 1), Launch("b", fast, 0, 1)], m
    )
    a, b = _k(tl, "a"), _k(tl, "b")
    assert b.device == 1 and a.device == 0
    assert b.start_us >= a.end_us + V100.event_latency_us - 1e-9
    free = _run([Launch("a", slow, 0, 0), Launch("b", fast, 0, 1)], m)
    assert _k(free, "b").end_us < _k(free, "a").end_us  # without the event b runs at once


def test_cross_device_wait_never_recorded_is_a_deadlock_naming_the_device() -> None:
    k = make_kernel(V100, "b", grid=4)
    with pytest.raises(DeadlockError, match="device 1 stream 3 waits for event 'never'"):
        _run([Wait("never", 3, 1), Launch("b", k, 3, 1)], _pair())


def test_cross_device_wait_cycle_names_devices() -> None:
    k = make_kernel(V100, "x", grid=4)
    cmds = [
        Wait("e1", 0, 0),
        Record("e0", 0, 0),
        Wait("e0", 0, 1),
        Record("e1", 0, 1),
        Launch("x", k, 0, 0),
    ]
    with pytest.raises(DeadlockError, match="recorded on device 1 stream 0"):
        _run(cmds, _pair())


def test_each_device_has_its_own_host_thread() -> None:
    m = _pair()
    k = make_kernel(V100, "k", grid=1, block_us=1.0)
    cmds = [Launch(f"a{i}", k, 0, 0) for i in range(20)] + [
        Launch(f"b{i}", k, 0, 1) for i in range(20)
    ]
    own = _run(cmds, m)
    shared = _run(cmds, replace(m, shared_host=True))
    first_b = min(h.start_us for h in own.host if h.device == 1)
    assert first_b == 0.0  # device 1's thread starts at once
    cost = V100.launch_api_us + V100.framework_dispatch_us
    assert min(h.start_us for h in shared.host if h.device == 1) == pytest.approx(20 * cost)
    assert own.makespan_us < shared.makespan_us


def test_synchronize_blocks_only_its_own_thread() -> None:
    m = _pair()
    slow = make_kernel(V100, "a", grid=4, block_us=500.0)
    k = make_kernel(V100, "b", grid=1, block_us=1.0)
    tl = _run([Launch("a", slow, 0, 0), Synchronize(0), Launch("b", k, 0, 1)], m)
    assert _k(tl, "b").end_us < _k(tl, "a").end_us
    sync = [h for h in tl.host if h.api == "synchronize"]
    assert sync and sync[0].device == 0 and sync[0].end_us >= _k(tl, "a").end_us


def test_handoff_delays_the_waiting_thread_until_the_record_is_issued() -> None:
    m = _pair()
    k = make_kernel(V100, "k", grid=1, block_us=1.0)
    cmds: list[Command] = [Launch(f"a{i}", k, 0, 0) for i in range(10)]
    cmds += [Record("e", 0, 0), Wait("e", 0, 1), Launch("b", k, 0, 1)]
    tl = _run(cmds, m)
    rec = next(h for h in tl.host if h.api == "event_record")
    wait = next(h for h in tl.host if h.api == "stream_wait_event")
    assert wait.device == 1 and wait.start_us == pytest.approx(rec.end_us)


def test_graph_mode_on_two_devices() -> None:
    m = _pair()
    k = make_kernel(V100, "k", grid=4, block_us=20.0)
    tl = _run([Launch("a", k, 0, 0), Launch("b", k, 0, 1)], m, graph_mode=True)
    assert [h.api for h in tl.host] == ["graph_launch", "graph_launch"]
    assert abs(_k(tl, "a").start_us - _k(tl, "b").start_us) < 1e-9


def test_single_device_program_same_on_a_bigger_machine() -> None:
    k1 = make_kernel(V100, "a", grid=200, block_us=20.0)
    k2 = make_kernel(V100, "b", grid=30, block_us=7.0)
    cmds = [Launch("a", k1, 0), Record("e", 0), Wait("e", 1), Launch("b", k2, 1), Synchronize(0)]
    one = simulate(StreamProgram(cmds), V100)
    two = simulate(StreamProgram(cmds), _pair())
    assert one.kernels == two.kernels and one.commands == two.commands
    assert one.makespan_us == two.makespan_us


# --- lowering and validation ----------------------------------------------------------------


def _chain() -> OpGraph:
    return OpGraph(
        [
            Op("x", "input", (), (1, 64, 56, 56)),
            Op("a", "relu", ("x",), (1, 64, 56, 56)),
            Op("b", "relu", ("a",), (1, 64, 56, 56)),
            Op("c", "add", ("a", "b"), (1, 64, 56, 56)),
        ],
        name="chain",
    )


def test_lowering_inserts_one_copy_per_tensor_and_destination() -> None:
    g = _chain()
    m = _pair(load_gpu("v100"), gbps=50.0, lat=2.0)
    sched = StreamSchedule([["x", "a", "c"], ["b"]], devices=[0, 1])
    prog = lower(sched, g, m)
    copies = [c for c in prog.commands if isinstance(c, Copy)]
    assert [(c.tensor, c.src, c.dst) for c in copies] == [("a", 0, 1), ("b", 1, 0)]
    assert copies[0].bytes == output_bytes(g, "a") == 64 * 56 * 56 * 4
    validate_program(prog, g)
    tl = simulate(prog, m)
    copy_a = next(c for c in tl.copies if c.tensor == "a")
    assert _k(tl, "b").start_us >= copy_a.end_us
    assert copy_a.start_us >= _k(tl, "a").end_us
    copy_b = next(c for c in tl.copies if c.tensor == "b")
    assert _k(tl, "c").start_us >= copy_b.end_us


def test_copy_streams_after_schedule_streams_and_readers_reuse_a_copy() -> None:
    g = _chain()
    sched = StreamSchedule([["x", "a"], ["b", "c"]], devices=[0, 1])
    prog = lower(sched, g, _pair())
    copies = [c for c in prog.commands if isinstance(c, Copy)]
    assert [(c.tensor, c.stream, c.device) for c in copies] == [("a", 3, 0)]  # b and c share it
    waits = [c for c in prog.commands if isinstance(c, Wait) and c.device == 1]
    assert [w.event for w in waits] == ["copied:a>1"]  # c knows through b's stream order


@pytest.mark.parametrize(
    ("cmds", "match"),
    [
        ([Launch("x", None, 0, 0), Launch("a", None, 0, 1)], "no copy of 'x' to device 1"),
        (
            [Launch("x", None, 0, 0), Copy(1, 0, 1, 1, 0, "x"), Launch("a", None, 0, 1)],
            "not ordered after the copy of its input 'x'",
        ),
        (
            [Copy(1, 0, 1, 1, 0, "x"), Launch("x", None, 0, 0)],
            "copy of 'x' is issued before 'x' runs",
        ),
        (
            [Launch("x", None, 0, 0), Copy(1, 1, 0, 1, 1, "x")],
            "from device 1, but 'x' runs on device 0",
        ),
        ([Copy(1, 1, 1, 1, 1)], "two different GPUs"),
    ],
)
def test_validator_checks_transfers(cmds: list[Command], match: str) -> None:
    g = OpGraph([Op("x", "input", (), (1, 8)), Op("a", "relu", ("x",), (1, 8))])
    with pytest.raises(ProgramError, match=match):
        validate_program(StreamProgram(cmds), g)


def test_validator_copy_not_ordered_after_producer() -> None:
    g = OpGraph([Op("x", "input", (), (1, 8)), Op("a", "relu", ("x",), (1, 8))])
    k = make_kernel(V100, "x")
    cmds = [
        Launch("x", k, 0, 0),
        Copy(32, 0, 1, 1, 0, "x"),
        Record("c", 1, 0),
        Wait("c", 0, 1),
        Launch("a", None, 0, 1),
    ]
    with pytest.raises(ProgramError, match="copy of 'x' is not ordered after 'x'"):
        validate_program(StreamProgram(cmds), g)


def test_validator_synchronize_orders_only_its_device() -> None:
    g = OpGraph([Op("x", "input", (), (1, 8)), Op("a", "relu", ("x",), (1, 8))])
    same = [Launch("x", None, 0, 0), Synchronize(0), Launch("a", None, 1, 0)]
    validate_program(StreamProgram(same), g)
    other = [
        Launch("x", None, 0, 0),
        Copy(32, 0, 1, 1, 0, "x"),
        Synchronize(0),
        Launch("a", None, 0, 1),
    ]
    with pytest.raises(ProgramError, match="not ordered after the copy"):
        validate_program(StreamProgram(other), g)


def test_trace_and_gantt_show_copies(tmp_path: Path) -> None:
    g = _chain()
    m = _pair()
    tl = simulate(lower(StreamSchedule([["x", "a", "c"], ["b"]], devices=[0, 1]), g, m), m)
    trace = to_chrome_trace(tl)
    mem = [e for e in trace["traceEvents"] if e.get("cat") == "gpu_memcpy"]
    assert len(mem) == len(tl.copies) == 2
    assert {(e["pid"], e["args"]["src_device"], e["args"]["dst_device"]) for e in mem} == {
        (0, 0, 1),
        (1, 1, 0),
    }
    assert all(e["ph"] == "X" and e["dur"] > 0 and e["args"]["bytes"] > 0 for e in mem)
    assert trace["otherData"]["copies"] == 2
    out = tmp_path / "g.png"
    plot_gantt(tl, out)
    assert out.read_bytes()[:4] == b"\x89PNG"


# --- CLI ----------------------------------------------------------------------------------


def test_cli_machines_lists_presets(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["machines", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list(MACHINE_PRESETS)
    assert main(["machines"]) == 0
    assert "8xh100-nvswitch" in capsys.readouterr().out


def test_cli_simulate_with_machine(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    trace = tmp_path / "t.json"
    rc = main(
        ["simulate", "squeezenet1_1", "--machine", "2xv100-nvlink", "--scheduler", "hios-mr",
         "--json", "--trace", str(trace)]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert rc == 0, err
    res = json.loads(out)
    assert res["devices"] == 2 and res["machine"] == "2xv100-nvlink"
    assert res["copies"] == sum(
        1 for e in json.loads(trace.read_text())["traceEvents"] if e.get("cat") == "gpu_memcpy"
    )


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "invalid JSON"),
        ('{"gpus": ["v100", "v100"]}', "no route from GPU 0 to GPU 1"),
        (
            '{"gpus": ["v100", "v100"], "links": [{"between": [0, 1], "kind": "x"}]}',
            "unknown link kind",
        ),
    ],
)
def test_cli_malformed_machine_file_is_one_line_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, content: str, match: str
) -> None:
    p = tmp_path / "bad.json"
    p.write_text(content)
    for argv in (
        ["run", "squeezenet1_1", "--machine", str(p), "--scheduler", "sequential"],
        ["simulate", "squeezenet1_1", "--machine", str(p)],
    ):
        rc = main(argv)
        _, err = capsys.readouterr()
        assert rc == 2 and "Traceback" not in err
        (line,) = err.strip().splitlines()
        assert line.startswith("simgpu: error:") and match in line


def test_cli_gpu_and_machine_together_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "squeezenet1_1", "--gpu", "v100", "--machine", "2xv100-nvlink"]) == 2
    assert "not both" in capsys.readouterr().err


# --- properties over random machines ------------------------------------------------------

SETTINGS = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}


@st.composite
def machines(draw: st.DrawFn, min_gpus: int = 2, max_gpus: int = 4) -> Machine:
    """2-4 random GPUs (same or mixed), joined all to all, through one switch, or by a
    random spanning set of direct links plus a switch; random bandwidths, latencies,
    copy engines and host threading."""
    n = draw(st.integers(min_gpus, max_gpus))
    base = draw(gpus(max_sm=40))
    devices = [
        replace(
            base if draw(st.booleans()) else draw(gpus(max_sm=40)),
            copy_engines=draw(st.integers(1, 3)),
        )
        for _ in range(n)
    ]
    bw = st.floats(0.5, 500.0)
    lat = st.floats(0.0, 10.0)
    topo = draw(st.sampled_from(("pairs", "switch", "mixed")))
    links: list[Link] = []
    switches: tuple[str, ...] = ()
    if topo == "pairs":
        links = [
            Link(a, b, "custom", 1, draw(bw), draw(lat)) for a in range(n) for b in range(a + 1, n)
        ]
    else:
        switches = ("sw",)
        links = [Link(i, "sw", "custom", 1, draw(bw), draw(lat)) for i in range(n)]
        if topo == "mixed":
            for a in range(n):
                for b in range(a + 1, n):
                    if draw(st.booleans()):
                        links.append(Link(a, b, "custom", 1, draw(bw), draw(lat)))
    m = Machine("random", tuple(devices), tuple(links), switches, shared_host=draw(st.booleans()))
    m.check_connected()
    return m


@st.composite
def multi_gpu_cases(draw: st.DrawFn, max_ops: int = 25) -> tuple[Machine, OpGraph, StreamSchedule]:
    m = draw(machines())
    graph = draw(dags(max_ops=max_ops))
    a = draw(assignments(graph, max_streams=6))
    sched = a.schedule(graph_mode=draw(st.booleans()))
    sched.devices = [draw(st.integers(0, len(m.devices) - 1)) for _ in sched.streams]
    return m, graph, sched


def _op_spans(tl: Timeline) -> dict[str, tuple[float, float]]:
    """(start, end) of every op: its kernels, or the completion of its no-op."""
    spans: dict[str, tuple[float, float]] = {}
    for k in tl.kernels:
        s, e = spans.get(k.op, (k.start_us, k.end_us))
        spans[k.op] = (min(s, k.start_us), max(e, k.end_us))
    for c in tl.commands:
        if c.kind == "noop":
            spans[c.op] = (c.done_us, c.done_us)
    return spans


@settings(max_examples=60, **SETTINGS)
@given(multi_gpu_cases())
def test_random_multi_gpu_programs_are_valid_and_order_every_transfer(case) -> None:
    m, graph, sched = case
    prog = lower(sched, graph, m)
    validate_program(prog, graph)
    tl = simulate(prog, m)  # never a deadlock
    spans = _op_spans(tl)
    assert set(spans) == set(graph.ops)
    dev = {op: sched.devices[i] for i, ops in enumerate(sched.streams) for op in ops}
    copies = {(c.tensor, c.dst): c for c in tl.copies}
    assert len(copies) == len(tl.copies) == prog.copies  # one copy per tensor and destination
    eps = 1e-9 * max(1.0, tl.makespan_us)
    for u, v in graph.edges():
        if dev[u] == dev[v]:
            assert spans[v][0] >= spans[u][1] - eps
            continue
        c = copies[(u, dev[v])]
        assert c.src == dev[u] and c.bytes == output_bytes(graph, u)
        assert c.start_us >= spans[u][1] - eps  # the transfer follows its producer
        assert spans[v][0] >= c.end_us - eps  # and precedes its consumer
        route = m.route(c.src, c.dst)
        assert c.end_us - c.start_us >= route.transfer_us(c.bytes) - eps  # never faster
    for c in tl.copies:
        assert (c.tensor, c.dst) in {(u, dev[v]) for u, v in graph.edges() if dev[u] != dev[v]}
    again = simulate(prog, m)
    assert again.kernels == tl.kernels and again.copies == tl.copies  # deterministic


@settings(max_examples=40, **SETTINGS)
@given(multi_gpu_cases(max_ops=15), st.data())
def test_random_copies_alone_take_their_route_time(case, data: st.DataObject) -> None:
    m, _, _ = case
    src = data.draw(st.integers(0, len(m.devices) - 1))
    dst = data.draw(st.integers(0, len(m.devices) - 1).filter(lambda d: d != src))
    nbytes = data.draw(st.integers(0, 10**8))
    (c,) = simulate(StreamProgram([Copy(nbytes, src, dst, 0, src)]), m).copies
    assert c.end_us - c.start_us == pytest.approx(m.route(src, dst).transfer_us(nbytes), rel=1e-9)


@settings(max_examples=40, **SETTINGS)
@given(machines(), dags(max_ops=20), st.data())
def test_single_device_programs_run_alike_on_any_machine(m: Machine, graph: OpGraph, data) -> None:
    """All on device 0: the per-device host threads and the single host give one timeline."""
    a = data.draw(assignments(graph, max_streams=4))
    gpu = m.devices[0]
    prog = lower(a.schedule(graph_mode=data.draw(st.booleans())), graph, gpu)
    one = simulate(prog, gpu)
    many = simulate(prog, m)
    assert one.kernels == many.kernels and one.commands == many.commands
    assert one.makespan_us == many.makespan_us
