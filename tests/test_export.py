"""Chrome-trace and Gantt exports on small hand-built timelines."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from simgpu.chrome_trace import dumps_chrome_trace, to_chrome_trace, write_chrome_trace
from simgpu.gantt import op_color, plot_gantt, plot_gantt_compare
from simgpu.timeline import CommandRecord, HostRecord, KernelRecord, Timeline

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _kernel(op: str, stream: int, issue: float, start: float, end: float) -> KernelRecord:
    return KernelRecord(
        op=op,
        name=f"{op}_kernel",
        device=0,
        stream=stream,
        queue=stream,
        issue_us=issue,
        start_us=start,
        end_us=end,
        grid=80,
        threads=256,
        batches=1,
    )


@pytest.fixture
def timeline() -> Timeline:
    """Two streams: conv on s0, then relu on s1 after an event; add on s0 waits for nothing."""
    kernels = [
        _kernel("conv1", 0, issue=5.0, start=6.0, end=40.0),
        _kernel("add", 0, issue=15.0, start=40.0, end=55.5),
        _kernel("relu", 1, issue=25.0, start=41.0, end=60.0),
    ]
    commands = [
        CommandRecord("record", 0, 0, issue_us=10.0, done_us=40.0, event="e0", op="conv1"),
        CommandRecord("wait", 0, 1, issue_us=20.0, done_us=40.0, event="e0", op="relu"),
    ]
    host = [
        HostRecord("launch", 0, 0.0, 5.0, op="conv1"),
        HostRecord("record", 0, 5.0, 10.0, op="conv1"),
        HostRecord("launch", 0, 10.0, 15.0, op="add"),
        HostRecord("wait", 0, 15.0, 20.0, op="relu"),
        HostRecord("launch", 0, 20.0, 25.0, op="relu"),
        HostRecord("synchronize", 0, 25.0, 60.0),
    ]
    counters = [
        [(0.0, 0, 0.0, 0.0), (6.0, 80, 300.0, 0.5), (41.0, 80, 450.5, 0.25), (60.0, 0, 0.0, 0.0)]
    ]
    return Timeline(
        gpu_names=["v100-sxm2"],
        sm_counts=[80],
        kernels=kernels,
        commands=commands,
        host=host,
        makespan_us=60.0,
        counters=counters,
        sm_busy_us=[np.full(80, 50.0)],
    )


def _events(trace: dict, ph: str) -> list[dict]:
    return [e for e in trace["traceEvents"] if e["ph"] == ph]


def test_json_valid_and_reparses(timeline: Timeline, tmp_path: Path) -> None:
    path = tmp_path / "trace.json"
    write_chrome_trace(timeline, path, title="t")
    trace = json.loads(path.read_text())
    assert trace == json.loads(json.dumps(to_chrome_trace(timeline, title="t")))
    assert trace["displayTimeUnit"] == "ns"
    assert trace["otherData"]["title"] == "t"
    for e in trace["traceEvents"]:
        assert {"ph", "name", "pid"} <= e.keys()


def test_kernels_once_on_right_track(timeline: Timeline) -> None:
    trace = to_chrome_trace(timeline)
    kernels = [e for e in _events(trace, "X") if e["cat"] == "kernel"]
    assert len(kernels) == len(timeline.kernels)
    for k in timeline.kernels:
        (ev,) = [e for e in kernels if e["args"]["op"] == k.op]
        assert ev["name"] == k.name
        assert (ev["pid"], ev["tid"]) == (k.device, k.stream)
        assert ev["ts"] == pytest.approx(k.start_us)
        assert ev["dur"] == pytest.approx(k.end_us - k.start_us)
        assert ev["args"]["issue_us"] == pytest.approx(k.issue_us)
        # Kineto's launch configuration: dim3 lists, as calibrate.kineto reads them
        assert ev["args"]["grid"] == [k.grid, 1, 1] and ev["args"]["block"] == [k.threads, 1, 1]
        assert ev["args"]["threads"] == k.threads
        assert ev["args"]["device"] == k.device and ev["args"]["stream"] == k.stream
        assert ev["args"]["queue"] == k.queue and ev["args"]["batches"] == k.batches


def test_metadata_names_processes_and_streams(timeline: Timeline) -> None:
    meta = _events(to_chrome_trace(timeline), "M")
    names = {(e["name"], e["pid"], e.get("tid")): e["args"].get("name") for e in meta}
    assert names[("process_name", 0, None)] == "GPU 0 (v100-sxm2)"
    assert names[("thread_name", 0, 0)] == "stream 0"
    assert names[("thread_name", 0, 1)] == "stream 1"
    host_pid = next(e["pid"] for e in meta if e["args"].get("name") == "Host")
    assert host_pid != 0
    assert any(e["name"] == "process_sort_index" and e["pid"] == 0 for e in meta)
    assert ("thread_name", host_pid, 0) in names


def test_commands_and_host_calls(timeline: Timeline) -> None:
    trace = to_chrome_trace(timeline)
    inst = _events(trace, "i")
    assert len(inst) == 2
    wait = next(e for e in inst if e["args"]["kind"] == "wait")
    assert (wait["pid"], wait["tid"], wait["ts"]) == (0, 1, 40.0)
    assert wait["args"]["event"] == "e0"
    host = [e for e in _events(trace, "X") if e["cat"] == "cuda_runtime"]
    # named as the CUDA runtime names the calls, each with its own correlation id
    assert [e["name"] for e in host] == [
        "cudaLaunchKernel",
        "cudaEventRecord",
        "cudaLaunchKernel",
        "cudaStreamWaitEvent",
        "cudaLaunchKernel",
        "cudaDeviceSynchronize",
    ]
    assert [e["args"]["correlation"] for e in host] == [1, 2, 3, 4, 5, 6]
    assert all(e["pid"] != 0 for e in host)


def test_counters(timeline: Timeline) -> None:
    counters = _events(to_chrome_trace(timeline), "C")
    sms = [(e["ts"], e["args"]["SMs busy"]) for e in counters if e["name"] == "SMs busy"]
    dram = [(e["ts"], e["args"]["DRAM GB/s"]) for e in counters if e["name"] == "DRAM GB/s"]
    comp = [(e["ts"], e["args"]["SM compute %"]) for e in counters if e["name"] == "SM compute %"]
    assert sms == [(t, b) for t, b, _, _ in timeline.counters[0]]
    assert dram == [(t, g) for t, _, g, _ in timeline.counters[0]]
    assert comp == [(t, 100.0 * c) for t, _, _, c in timeline.counters[0]]
    assert all(e["pid"] == 0 for e in counters)


def test_flows_pair_up_launch_to_kernel(timeline: Timeline) -> None:
    trace = to_chrome_trace(timeline)
    starts = {e["id"]: e for e in _events(trace, "s")}
    finishes = {e["id"]: e for e in _events(trace, "f")}
    assert starts.keys() == finishes.keys()
    assert len(starts) == len(timeline.kernels)
    kernels = {(e["pid"], e["tid"], e["ts"]): e for e in _events(trace, "X")}
    for fid, f in finishes.items():
        s = starts[fid]
        assert s["cat"] == f["cat"] == "ac2g" and f["bp"] == "e"
        k = kernels[(f["pid"], f["tid"], f["ts"])]
        host = [
            e
            for e in _events(trace, "X")
            if e["pid"] == s["pid"] and e["tid"] == s["tid"] and e["ts"] == s["ts"]
        ]
        assert host[0]["name"] == "cudaLaunchKernel" and host[0]["args"]["op"] == k["args"]["op"]
        assert host[0]["args"]["correlation"] == k["args"]["correlation"]


def test_deterministic_bytes(timeline: Timeline, tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    write_chrome_trace(timeline, a)
    write_chrome_trace(timeline, b)
    assert a.read_bytes() == b.read_bytes()
    assert dumps_chrome_trace(timeline) == dumps_chrome_trace(timeline)
    ts = [e["ts"] for e in json.loads(a.read_text())["traceEvents"] if e["ph"] != "M"]
    assert ts == sorted(ts)


def test_op_color_is_stable() -> None:
    assert op_color("conv1") == op_color("conv1")
    assert len(op_color("x")) == 4


def test_plot_gantt_png(timeline: Timeline, tmp_path: Path) -> None:
    path = tmp_path / "g.png"
    plot_gantt(timeline, path, title="tiny")
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 5_000
    plot_gantt(timeline, tmp_path / "g2.png", max_kernels=1)
    assert (tmp_path / "g2.png").read_bytes().startswith(PNG_MAGIC)


def test_plot_gantt_compare_png(timeline: Timeline, tmp_path: Path) -> None:
    path = tmp_path / "cmp.png"
    plot_gantt_compare({"greedy": timeline, "serial": timeline}, path)
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 5_000


def test_empty_timeline(tmp_path: Path) -> None:
    empty = Timeline(gpu_names=["v100-sxm2"], sm_counts=[80])
    trace = json.loads(dumps_chrome_trace(empty))
    assert not [e for e in trace["traceEvents"] if e["ph"] != "M"]
    plot_gantt(empty, tmp_path / "e.png")
    plot_gantt_compare({"empty": empty}, tmp_path / "ec.png")
    assert (tmp_path / "e.png").read_bytes().startswith(PNG_MAGIC)
    assert (tmp_path / "ec.png").read_bytes().startswith(PNG_MAGIC)
