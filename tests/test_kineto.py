"""Kineto trace import and replay: the shared real traces, synthetic traces with known
answers, corrupt files, and the replay/fit CLI."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from calibrate.errors import TraceError
from calibrate.fit import (
    fit_device_latencies,
    fit_host_costs,
    fit_trace,
    kernel_durations,
    latency_samples,
    launch_overheads,
    write_json,
)
from calibrate.kineto import build_program, gpu_for_trace, load_trace, parse_trace, replay
from simgpu.cli import main
from simgpu.hardware import PRESETS, load_gpu
from simgpu.program import Launch, Record, Synchronize, Wait

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kineto"
A100_PROPS = {
    "id": 0,
    "name": "NVIDIA A100-SXM4-40GB",
    "totalGlobalMem": 42297524224,
    "computeMajor": 8,
    "computeMinor": 0,
    "maxThreadsPerBlock": 1024,
    "maxThreadsPerMultiprocessor": 2048,
    "regsPerBlock": 65536,
    "regsPerMultiprocessor": 65536,
    "warpSize": 32,
    "sharedMemPerBlock": 49152,
    "sharedMemPerMultiprocessor": 167936,
    "numSms": 108,
    "sharedMemPerBlockOptin": 166912,
}


def real(name: str) -> Path:
    p = DATA / name
    if not p.exists():
        pytest.skip(f"shared trace {name} not present")
    return p


# --- a synthetic trace builder ---------------------------------------------------------


class TB:
    """Builds a Kineto-shaped trace: host calls and the GPU activities they launched."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.corr = 100

    def _call(self, name: str, ts: float, dur: float) -> int:
        self.corr += 1
        self.events.append(
            {"ph": "X", "cat": "cuda_runtime", "name": name, "pid": 1, "tid": 1, "ts": ts,
             "dur": dur, "args": {"correlation": self.corr}}
        )  # fmt: skip
        return self.corr

    def kernel(self, ts, stream, start, dur, grid=(1, 1, 1), block=(128, 1, 1), call_dur=5.0):
        c = self._call("cudaLaunchKernel", ts, call_dur)
        self.events.append(
            {"ph": "X", "cat": "kernel", "name": f"k{c}", "pid": 0, "tid": stream, "ts": start,
             "dur": dur, "args": {"device": 0, "stream": stream, "correlation": c,
                                  "registers per thread": 32, "shared memory": 0,
                                  "grid": list(grid), "block": list(block)}}
        )  # fmt: skip
        return c

    def record(self, ts, dur=2.0) -> int:
        return self._call("cudaEventRecord", ts, dur)

    def wait(self, ts, stream, record_corr, record_stream, dur=2.0):
        c = self._call("cudaStreamWaitEvent", ts, dur)
        self.events.append(
            {"ph": "X", "cat": "cuda_sync", "name": "Stream Wait Event", "pid": 0, "tid": stream,
             "ts": ts, "dur": 1, "args": {"stream": stream, "correlation": c, "device": 0,
                                          "wait_on_stream": record_stream,
                                          "wait_on_cuda_event_record_corr_id": record_corr}}
        )  # fmt: skip

    def sync(self, ts, dur):
        c = self._call("cudaDeviceSynchronize", ts, dur)
        self.events.append(
            {"ph": "X", "cat": "cuda_sync", "name": "Context Sync", "pid": 0, "tid": -1,
             "ts": ts, "dur": dur, "args": {"stream": -1, "correlation": c, "device": 0}}
        )  # fmt: skip

    def data(self) -> dict:
        return {"deviceProperties": [A100_PROPS], "traceEvents": list(self.events)}

    def trace(self):
        return parse_trace(self.data(), source="synthetic")


def sim_kernels(res):
    return sorted((k for k in res.timeline.kernels if k.device == 0), key=lambda k: k.start_us)


# --- real traces -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kernels", "memcpys", "memsets", "streams", "sms"),
    [
        ("a100_alexnet_2streams.json.gz", 79, 16, 3, 2, 108),
        ("a100_event_sync.json.gz", 4, 1, 0, 1, 108),
        ("a100_event_sync_3streams.json.gz", 3, 0, 3, 3, 108),
        ("v100_training_1stream.json.gz", 4350, 1600, 145, 1, 80),
    ],
)
def test_import_real_traces(name, kernels, memcpys, memsets, streams, sms):
    t = load_trace(real(name))
    assert (t.count("kernel"), t.count("memcpy"), t.count("memset")) == (kernels, memcpys, memsets)
    assert len(t.streams) == streams
    assert t.props(0)["numSms"] == sms
    assert not t.orphans  # every activity is matched to its launching call
    k = next(a for a in t.activities if a.kind == "kernel")
    assert k.blocks >= 1 and k.threads >= 1 and k.regs >= 1
    assert gpu_for_trace(t).sm_count == sms


def test_alexnet_events_bound_through_cuda_sync():
    t = load_trace(real("a100_alexnet_2streams.json.gz"))
    bound = [r for r in t.records if r.stream is not None]
    assert bound and {7, 20} & {r.stream for r in bound}
    waits = [w for w in t.waits if w.stream is not None and w.record is not None]
    assert {w.stream for w in waits} == {7, 20}
    prog, _, info = build_program(t, {0: gpu_for_trace(t)})
    recs = [c for c in prog.commands if isinstance(c, Record)]
    waits_c = [c for c in prog.commands if isinstance(c, Wait)]
    assert len(recs) == info["counts"]["records"] > 0
    assert len(waits_c) == info["counts"]["waits"] > 0
    assert info["counts"]["records"] + info["counts"]["records_host_only"] == len(t.records)
    recorded = {c.event for c in recs}
    assert all(w.event in recorded for w in waits_c)


@pytest.mark.parametrize(
    "name",
    [
        "a100_alexnet_2streams.json.gz",
        "a100_event_sync.json.gz",
        "a100_event_sync_3streams.json.gz",
        "v100_training_1stream.json.gz",
    ],
)
def test_replay_real_trace_within_5_percent(name):
    t = load_trace(real(name))
    r = replay(t)
    assert r.recorded_ms == pytest.approx(t.span_us() / 1e3)
    assert abs(r.error_pct) < 5.0, r.to_json()
    for s in r.per_stream:
        assert abs(s.error_pct) < 5.0, s
    assert r.kernels + r.memcpys + r.memsets == len(t.activities)
    assert len(sim_kernels(r)) == len(t.activities)
    # the simulation decided the starts: they are not the recorded ones
    origin_free = [k.start_us for k in sim_kernels(r)]
    assert len(set(origin_free)) > 1


def test_replay_v100_median_host_mode_is_close_but_recorded_is_closer():
    t = load_trace(real("v100_training_1stream.json.gz"))
    rec = replay(t, host="recorded")
    med = replay(t, host="median")
    assert med.params["launch_api_us"] == pytest.approx(fit_host_costs(t)["launch_api_us"])
    assert abs(med.error_pct) < 5.0
    assert rec.start_mae_us < med.start_mae_us


def test_median_mode_cannot_replay_host_bound_trace():
    """The AlexNet benchmark's GPU idles 99% of its span waiting for the host: without
    the recorded host gaps the span collapses — why the recorded mode exists."""
    t = load_trace(real("a100_alexnet_2streams.json.gz"))
    assert replay(t, host="median").error_pct < -90
    assert abs(replay(t, host="recorded").error_pct) < 1


def test_fit_on_real_v100_trace():
    t = load_trace(real("v100_training_1stream.json.gz"))
    host = fit_host_costs(t)
    assert 3 < host["launch_api_us"] < 10  # the DESIGN figure: 5-9 us per launch
    dev = fit_device_latencies(t)
    assert 0 <= dev["kernel_gap_us"] < 3
    rows = kernel_durations(t)
    assert sum(r.durations.n for r in rows) == 4350
    assert rows == sorted(rows, key=lambda r: (-r.durations.mean * r.durations.n, r.name, r.grid))
    dist = launch_overheads(t)
    assert dist["launch_call_us"].n == 4350
    assert dist["launch_call_us"].p10 <= dist["launch_call_us"].median <= dist["launch_call_us"].p90


# --- synthetic traces: known answers ---------------------------------------------------


def test_back_to_back_kernels_queue_on_their_stream():
    b = TB()
    for i in range(3):
        b.kernel(ts=i * 10.0, stream=7, start=1000.0 + i * 500, dur=100.0)  # starts ignored
    t = b.trace()
    g = gpu_for_trace(t).replace(launch_latency_us=2.0, kernel_gap_us=1.0)
    r = replay(t, gpu=g, fit=False)
    ks = sim_kernels(r)
    assert ks[0].start_us == pytest.approx(5.0 + 2.0 + 1.0)  # call end + latency + gap
    assert ks[1].start_us == pytest.approx(ks[0].end_us + 1.0)
    assert r.simulated_ms * 1e3 == pytest.approx(3 * 100 + 2 * 1.0)
    assert r.recorded_ms * 1e3 == pytest.approx(1100.0)


def test_event_orders_streams_and_independent_small_kernels_overlap():
    b = TB()
    a = b.kernel(0.0, 1, 10.0, 200.0)
    rec = b.record(6.0)
    b.wait(9.0, 2, rec, 1)
    b.kernel(12.0, 2, 300.0, 50.0)
    b.kernel(20.0, 3, 30.0, 50.0)  # independent stream: runs beside the first kernel
    t = b.trace()
    assert a
    r = replay(t, gpu=gpu_for_trace(t).replace(event_latency_us=3.0), fit=False)
    k = {x.stream: x for x in sim_kernels(r)}
    s1, s2, s3 = (k[i] for i in sorted(k))
    assert s2.start_us >= s1.end_us + 3.0 - 1e-9
    assert s3.start_us < s1.end_us  # one block each: they share the GPU


def test_left_over_dispatch_serialises_full_grids():
    gpu = PRESETS["a100-sxm4-40gb"]
    per_wave = gpu.sm_count * 16  # 128-thread blocks, 32 regs: 16 per SM
    b = TB()
    b.kernel(0.0, 1, 10.0, 100.0, grid=(per_wave, 1, 1))
    b.kernel(1.0, 2, 10.0, 100.0, grid=(per_wave, 1, 1))
    r = replay(b.trace(), gpu=gpu, fit=False)
    assert r.simulated_ms * 1e3 == pytest.approx(200.0 + gpu.kernel_gap_us, rel=0.02)
    b = TB()
    b.kernel(0.0, 1, 10.0, 100.0, grid=(per_wave // 2, 1, 1))
    b.kernel(1.0, 2, 10.0, 100.0, grid=(per_wave // 2, 1, 1))
    r = replay(b.trace(), gpu=gpu, fit=False)
    assert r.simulated_ms * 1e3 < 110.0  # half grids fit side by side


def test_recorded_host_gaps_are_replayed():
    b = TB()
    b.kernel(0.0, 7, 10.0, 20.0)
    b.kernel(1000.0, 7, 1010.0, 20.0)  # the host was busy for a millisecond
    t = b.trace()
    rec = replay(t, fit=False)
    assert rec.counts["host_gaps"] == 2
    ks = sim_kernels(rec)
    assert ks[1].start_us - ks[0].start_us == pytest.approx(1000.0, abs=0.01)
    med = replay(t, host="median", fit=False)
    assert med.simulated_ms < 0.1 * rec.simulated_ms


def test_device_sync_blocks_the_host_until_idle():
    b = TB()
    b.kernel(0.0, 7, 10.0, 500.0)
    b.sync(10.0, 505.0)
    b.kernel(520.0, 7, 530.0, 10.0)
    t = b.trace()
    g = gpu_for_trace(t).replace(sync_api_us=4.0)
    r = replay(t, gpu=g, fit=False)
    prog = r.program
    assert any(isinstance(c, Synchronize) and c.device == 0 for c in prog.commands)
    ks = sim_kernels(r)
    sync_end = ks[0].end_us + 4.0
    # the sync returned once the GPU idled (+ its return cost); the next launch's call
    # returned 10 us after the recorded sync did (525 - 515), and so it does here
    assert ks[1].issue_us == pytest.approx(sync_end + 10.0)
    none = replay(t, gpu=g, fit=False, syncs="none")
    assert none.counts["syncs_host_only"] == 1


def test_unbound_waits_and_records_stay_on_the_host():
    b = TB()
    b.kernel(0.0, 7, 10.0, 5.0)
    b.record(7.0)  # no wait names it: its stream is unknown
    c = b._call("cudaStreamWaitEvent", 8.0, 1.0)  # no cuda_sync: stream unknown
    assert c
    t = b.trace()
    _, _, info = build_program(t, {0: gpu_for_trace(t)})
    assert info["counts"]["records_host_only"] == 1
    assert info["counts"]["waits_host_only"] == 1


def test_orphan_activity_is_issued_first_and_counted():
    b = TB()
    b.kernel(0.0, 7, 10.0, 5.0)
    ev = json.loads(json.dumps(b.events[-1]))
    ev["args"]["correlation"] = 9999
    ev["ts"] = 2.0
    b.events.append(ev)
    r = replay(b.trace(), fit=False)
    assert r.counts["orphan_activities"] == 1
    first = next(c for c in r.program.commands if isinstance(c, Launch) and c.device == 0)
    assert first.op == "a0"  # the orphan (recorded first) is issued first


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(1, 3),  # stream
            st.floats(1.0, 50.0),  # host gap before the launch
            st.floats(0.5, 80.0),  # duration
            st.integers(1, 4000),  # grid
            st.floats(-500.0, 500.0),  # a shift of the recorded start
        ),
        min_size=1,
        max_size=12,
    )
)
def test_replay_never_reads_recorded_start_times(specs):
    """Moving recorded starts (durations and host calls fixed) changes nothing simulated."""
    out = []
    for shifted in (False, True):
        b = TB()
        t = 0.0
        for stream, gap, dur, grid, shift in specs:
            t += gap
            start = t + 10.0 + (shift if shifted else 0.0)
            b.kernel(t, stream, start, dur, grid=(grid, 1, 1))
        t = b.trace()
        r = replay(t, fit=False)
        corr = {f"a{a.index}": a.correlation for a in t.activities}
        out.append(sorted((corr[k.op], k.start_us, k.end_us) for k in sim_kernels(r)))
        # the simulated span is at least the longest kernel and at most all of them in turn
        durs = [d for _, _, d, _, _ in specs]
        assert r.simulated_ms * 1e3 >= max(durs) - 1e-6
    assert out[0] == out[1]


# --- corrupt files --------------------------------------------------------------------


def test_corrupt_files_give_one_line_errors(tmp_path, capsys):
    good = tmp_path / "good.json.gz"
    b = TB()
    b.kernel(0.0, 7, 10.0, 5.0)
    good.write_bytes(gzip.compress(json.dumps(b.data()).encode()))
    assert load_trace(good).count("kernel") == 1
    cases = {
        "trunc.json.gz": good.read_bytes()[:40],
        "bad.json": b'{"traceEvents": [',
        "obj.json": b"[1, 2]",
        "nokernels.json": json.dumps({"traceEvents": []}).encode(),
        "noevents.json": b'{"x": 1}',
        "binary.json": b"\xff\xfe\x00",
    }
    bad_kernel = b.data()
    del bad_kernel["traceEvents"][1]["args"]["grid"]
    cases["nogrid.json"] = json.dumps(bad_kernel).encode()
    expect = {
        "trunc.json.gz": "truncated gzip",
        "bad.json": "invalid JSON",
        "obj.json": "not an object",
        "nokernels.json": "no GPU kernels",
        "noevents.json": "traceEvents",
        "binary.json": "not UTF-8",
        "nogrid.json": "args.grid",
    }
    for name, raw in cases.items():
        p = tmp_path / name
        p.write_bytes(raw)
        with pytest.raises(TraceError, match=expect[name]):
            load_trace(p)
        rc = main(["replay", str(p)])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and err[0].startswith("simgpu: error:"), (name, err)
        assert "Traceback" not in err[0]
    with pytest.raises(TraceError, match="no such file"):
        load_trace(tmp_path / "missing.json")


def test_trace_without_device_properties_needs_a_gpu():
    b = TB()
    b.kernel(0.0, 7, 10.0, 5.0)
    data = b.data()
    del data["deviceProperties"]
    t = parse_trace(data, "noprops")
    with pytest.raises(TraceError, match="--gpu"):
        replay(t)
    assert replay(t, gpu=PRESETS["v100-sxm2"]).kernels == 1


# --- CLI ------------------------------------------------------------------------------


def test_cli_replay_json(capsys):
    p = real("a100_event_sync_3streams.json.gz")
    assert main(["replay", str(p), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("recorded_ms", "simulated_ms", "kernels", "streams", "error_pct", "per_stream"):
        assert key in out
    assert out["streams"] == 3 and len(out["per_stream"]) == 3
    assert main(["replay", str(p), "--gpu", "a100", "--host", "median", "--no-fit"]) == 0
    assert "error" in capsys.readouterr().out


def test_fit_writes_a_gpu_file_that_simulate_accepts(tmp_path, capsys):
    p = real("v100_training_1stream.json.gz")
    out = tmp_path / "cal.json"
    assert main(["calibrate", "fit", "--trace", str(p), "-o", str(out)]) == 0
    capsys.readouterr()
    g = load_gpu(str(out))
    t = load_trace(p)
    assert g.launch_api_us == pytest.approx(fit_host_costs(t)["launch_api_us"])
    assert g.sm_count == 80
    assert main(["simulate", "squeezenet1_1", "--gpu", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["latency_ms"] > 0
    data = fit_trace(t)
    write_json(data, tmp_path / "again.json")
    assert load_gpu(str(tmp_path / "again.json")).kernel_gap_us == g.kernel_gap_us


def test_kernels_held_by_an_event_wait_are_no_launch_latency_sample():
    # stream 2's kernel is issued at 12 us but waits for stream 1's event until ~210 us:
    # counting it would put ~290 us of event wait into launch_latency_us
    b = TB()
    b.kernel(0.0, 1, 10.0, 200.0)
    rec = b.record(6.0)
    b.wait(9.0, 2, rec, 1)
    b.kernel(12.0, 2, 300.0, 50.0)
    b.kernel(20.0, 3, 30.0, 50.0)
    idle, queued = latency_samples(b.trace())
    assert sorted(idle) == pytest.approx([10.0 - 5.0, 30.0 - 25.0])  # issue = call end
    assert queued == []
    assert fit_device_latencies(b.trace())["launch_latency_us"] == pytest.approx(5.0)


# --- what replay reports beyond the span ------------------------------------------------


def test_busy_time_and_p95_known_answers():
    from calibrate.kineto import busy_us, p95

    assert busy_us([(0.0, 1.0), (0.5, 2.0), (3.0, 4.0), (3.5, 3.6)]) == 3.0
    assert busy_us([]) == 0.0
    assert p95([float(x) for x in range(1, 11)]) == 10.0  # nearest rank: 10th of 10
    assert p95([float(x) for x in range(1, 101)]) == 95.0
    assert p95([]) == 0.0


def test_replay_start_and_busy_errors_known_answer():
    """Kernel A is recorded 3 us later than its launch allows, B on time: the span is
    11% off, the busy time exact, and the start errors say which kernel and by how much."""
    tb = TB()
    tb.kernel(0.0, 7, 10.0, 10.0)  # issued at 5: starts at 7 in the replay
    tb.kernel(20.0, 7, 27.0, 10.0)  # issued at 25: starts at 27 in both
    gpu = PRESETS["a100-sxm4-40gb"].replace(launch_latency_us=2.0, kernel_gap_us=0.0)
    r = replay(tb.trace(), gpu=gpu, fit=False)
    assert (r.recorded_ms, r.simulated_ms) == pytest.approx((0.027, 0.030))
    assert (r.start_mae_us, r.start_p95_us) == pytest.approx((1.5, 3.0))
    # with both first kernels at 0: A matches, B is 3 us off (20 after A, 17 simulated)
    assert (r.aligned_mae_us, r.aligned_p95_us) == pytest.approx((1.5, 3.0))
    assert (r.busy_recorded_ms, r.busy_simulated_ms, r.busy_error_pct) == pytest.approx(
        (0.020, 0.020, 0.0)
    )
    assert r.busy_share == pytest.approx(20 / 27)
    (s,) = r.per_stream
    assert (s.start_mae_us, s.start_p95_us, s.busy_error_pct) == pytest.approx((1.5, 3.0, 0.0))
    j = r.to_json()
    for key in ("start_p95_us", "busy_error_pct", "busy_share", "aligned_mae_us"):
        assert key in j
    assert {"start_p95_us", "busy_recorded_ms", "busy_error_pct"} <= j["per_stream"][0].keys()


def test_alexnet_span_error_hides_start_errors():
    """The headline figure of the issue: the AlexNet span comes back to 0.01% while its
    kernels start hundreds of microseconds off, over a span the GPU is idle 99% of."""
    r = replay(load_trace(real("a100_alexnet_2streams.json.gz")))
    assert abs(r.error_pct) < 0.01
    assert r.start_mae_us > 100 and r.start_p95_us >= r.start_mae_us
    assert r.busy_share < 0.01
    assert abs(r.busy_error_pct) < 1.0


def test_cli_replay_text_reports_start_and_busy_errors(capsys):
    assert main(["replay", str(real("a100_event_sync_3streams.json.gz"))]) == 0
    out = capsys.readouterr().out
    assert "GPU busy" in out and "p95" in out and "start mean" in out
    assert out.count("stream ") >= 3


def test_every_replay_and_calibrate_flag_has_help():
    import argparse

    from calibrate.cli import add_commands

    parser = argparse.ArgumentParser(prog="simgpu")
    add_commands(parser.add_subparsers(dest="cmd"))
    missing: list[str] = []

    def walk(p: argparse.ArgumentParser, path: str) -> None:
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sp in a.choices.items():
                    walk(sp, f"{path} {name}".strip())
            elif not isinstance(a, argparse._HelpAction) and not (a.help or "").strip():
                missing.append(f"{path} {'/'.join(a.option_strings) or a.dest}")

    walk(parser, "")
    assert not missing, missing


def test_calibrate_progress_is_silent_off_a_terminal(capsys):
    from calibrate.cli import _progress

    show = _progress("microbench")  # stderr is captured here: not a terminal
    for i in range(3):
        show(f"bench{i}", i, 3)
    assert capsys.readouterr().err == ""
