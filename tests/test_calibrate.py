"""Calibration without a GPU: probe conversion, microbenchmark analyses on synthetic
data, the op -> PyTorch mapping, kernel tables, the executor's plan, the validation
harness on a synthetic recorded file. GPU-only tests are marked ``gpu`` and skipped
where torch or CUDA is missing."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
from _gpu import gpu_only, has_cuda

from calibrate.errors import CalibrationError, NoGPUError
from calibrate.executor import plan
from calibrate.microbench import (
    analyse,
    analyse_bandwidth,
    analyse_connections,
    analyse_events,
    analyse_launch,
    analyse_overlap,
    analyse_waves,
    simulate_connections,
    simulate_pair,
)
from calibrate.probe import dram_gbps, preset_for, spec_from_facts, torch_properties
from calibrate.profile import OpProfile, op_call, read_table, table_from_profiles, write_table
from calibrate.validate import format_table, kendall_tau, resimulate, scatter, summarise
from schedulers.base import run_scheduler
from simgpu.cli import main
from simgpu.hardware import PRESETS, Machine, gpu_from_json, load_gpu
from simgpu.kernels import lower_op, signature, standalone_time_us
from simgpu.models import MODELS, build_model
from simgpu.program import Launch, Record, StreamProgram, Synchronize, Wait
from simgpu.schedule import schedule_to_json

V100_PROPS = {
    "name": "Tesla V100-SXM2-32GB",
    "totalGlobalMem": 34079637504,
    "computeMajor": 7,
    "computeMinor": 0,
    "maxThreadsPerBlock": 1024,
    "maxThreadsPerMultiprocessor": 2048,
    "regsPerMultiprocessor": 65536,
    "warpSize": 32,
    "sharedMemPerBlock": 49152,
    "sharedMemPerMultiprocessor": 98304,
    "numSms": 80,
    "sharedMemPerBlockOptin": 98304,
}


# --- probe ----------------------------------------------------------------------------


def test_probe_conversion_of_known_gpu_overrides_its_preset():
    spec = spec_from_facts(V100_PROPS, {"sm_clock_max_mhz": 1530, "bus_width_bits": 4096, "mem_clock_max_mhz": 877})  # fmt: skip
    assert spec["base"] == "v100-sxm2"
    g = gpu_from_json(spec)
    assert g.sm_count == 80 and g.max_smem_per_block == 98304
    assert g.dram_gbps == pytest.approx(898.0, abs=0.5)
    assert g.peak_tflops == PRESETS["v100-sxm2"].peak_tflops  # same clock, same SMs
    assert g.memory_gb == pytest.approx(34.08, abs=0.01)


def test_probe_scales_rates_with_clock_and_unknown_gpu_is_defined_outright():
    spec = spec_from_facts(V100_PROPS, {"sm_clock_max_mhz": 1530 / 2})
    assert gpu_from_json(spec).peak_tflops["fp32"] == pytest.approx(15.7 / 2, rel=1e-3)
    odd = dict(V100_PROPS, name="Mystery GPU 9000", computeMajor=8, computeMinor=9, numSms=10)
    with pytest.raises(CalibrationError, match="no clock"):
        spec_from_facts(odd)
    full = spec_from_facts(odd, {"sm_clock_max_mhz": 2000})
    g = gpu_from_json(full)
    assert "base" not in full and g.max_blocks_per_sm == 24
    assert g.peak_tflops["fp32"] == pytest.approx(128 * 2 * 10 * 2000e6 / 1e12)
    assert g.smem_reserved_per_block == 1024


def test_probe_from_fake_torch_properties_and_presets_by_name():
    props = SimpleNamespace(
        name="NVIDIA H100 80GB HBM3",
        major=9,
        minor=0,
        total_memory=85e9,
        multi_processor_count=132,
        max_threads_per_multi_processor=2048,
        regs_per_multiprocessor=65536,
        warp_size=32,
        shared_memory_per_block=49152,
        shared_memory_per_block_optin=232448,
        shared_memory_per_multiprocessor=233472,
        L2_cache_size=50 * 2**20,
    )
    d = torch_properties(props)
    assert d["numSms"] == 132 and d["l2CacheSize"] == 50 * 2**20
    g = gpu_from_json(spec_from_facts(d))
    assert g.sm_count == 132 and g.smem_per_sm == 233472 and g.l2_mb == pytest.approx(50)
    with pytest.raises(CalibrationError, match="numSms"):
        torch_properties(SimpleNamespace(major=9, minor=0))
    assert preset_for("NVIDIA A100-SXM4-80GB", 85e9) == "a100-sxm4-80gb"
    assert preset_for("NVIDIA A100-PG509-200", 42e9) == "a100-sxm4-40gb"
    assert preset_for("NVIDIA GeForce RTX 3080") == "rtx3080"
    assert preset_for("NVIDIA RTX 4000") is None
    names = {
        "NVIDIA H100 PCIe": "h100-pcie",
        "NVIDIA H100 80GB HBM3": "h100-sxm",
        "NVIDIA A100-PCIE-40GB": "a100-pcie-40gb",
        "Tesla P100-PCIE-16GB": "p100-pcie-16gb",
        "Tesla P100-SXM2-16GB": "p100-sxm2",
        "NVIDIA GeForce RTX 2080 SUPER": "rtx2080super",
        "NVIDIA GeForce RTX 2080 Ti": "rtx2080ti",
        "GeForce RTX 2080": "rtx2080",
        "NVIDIA GeForce GTX 1080 Ti": "gtx1080ti",
        "GeForce GTX 1060 6GB": "gtx1060-6gb",
        "NVIDIA TITAN Xp": "titanxp",
        "NVIDIA L40S": "l40s",
        "NVIDIA L4": "l4",
        "NVIDIA A10": "a10",
        "NVIDIA GeForce RTX 4090": "rtx4090",
    }
    assert {n: preset_for(n) for n in names} == names
    assert preset_for("NVIDIA A100 80GB PCIe", 85e9) is None  # no preset: defined outright
    assert preset_for("NVIDIA GeForce GTX 1080") is None
    assert dram_gbps(5120, 1215) == pytest.approx(1555.2)


def test_gpu_steps_refuse_clearly_without_cuda(capsys, tmp_path):
    if has_cuda():
        pytest.skip("a CUDA GPU is present")
    for argv in (
        ["calibrate", "probe"],
        ["calibrate", "microbench", "--out", str(tmp_path / "mb")],
        ["calibrate", "profile", "squeezenet1_1", "-o", str(tmp_path / "k.json")],
        ["calibrate", "validate", "squeezenet1_1", "--gpu", "v100"],
        ["calibrate", "all", "--out", str(tmp_path / "all")],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "simgpu: error:" in err[0] and "CUDA" in err[0], err


# --- microbenchmark analyses (synthetic raw data) ---------------------------------------


def test_analyse_launch_and_events():
    raw = {
        "eager": {"n": 100, "host_us": 1500.0},
        "raw": {"n": 100, "host_us": 600.0, "queued_gpu_us": 250.0, "kernel_us": 1.5},
        "graph": {"n": 100, "launch_host_us": 9.0, "queued_gpu_us": 200.0},
    }
    f = analyse_launch(raw)
    assert f == pytest.approx(
        {"launch_api_us": 6.0, "framework_dispatch_us": 9.0, "kernel_gap_us": 1.0,
         "graph_node_us": 0.5, "graph_launch_api_us": 9.0}
    )  # fmt: skip
    with pytest.raises(CalibrationError, match="malformed"):
        analyse_launch({"eager": {}})
    ev = analyse_events({"record_host_us": [1, 2, 9], "wait_host_us": [1, 1, 1], "wait_latency_us": [3, 4, 5]})  # fmt: skip
    assert ev == {"event_record_api_us": 2, "event_wait_api_us": 1, "event_latency_us": 4}


def test_analyse_waves_recovers_a_staircase():
    per_wave = 1000
    grids = [250, 500, 1000, 1250, 1500, 2000, 2500, 3000, 4000]
    times = [3.0 + 20.0 * -(-g // per_wave) for g in grids]
    w = analyse_waves(grids, times, per_wave)
    assert w["wave_us"] == pytest.approx(20.0) and w["fixed_us"] == pytest.approx(3.0)
    assert w["staircase_r2"] == pytest.approx(1.0) and w["linear_r2"] < 0.99
    with pytest.raises(CalibrationError):
        analyse_waves([1, 2], [1.0, 2.0], 10)


def test_overlap_analysis_against_the_left_over_model():
    gpu = PRESETS["a100-sxm4-40gb"]
    per_wave = gpu.sm_count * 16
    # small grids share the GPU; two full waves take two block times
    assert simulate_pair(gpu, per_wave // 4, per_wave // 4, 50.0) == pytest.approx(50.0)
    assert simulate_pair(gpu, per_wave, per_wave, 50.0) == pytest.approx(100.0)
    cases = [{"grid_a": per_wave // 2, "grid_b": per_wave // 2, "span_us": 55.0}]
    res = analyse_overlap({"block_us": 50.0, "cases": cases}, gpu)
    assert res["cases"][0]["simulated_us"] == pytest.approx(50.0)
    assert res["mape"] == pytest.approx(abs(50.0 - 55.0) / 55.0 * 100)


def test_bandwidth_and_connections_analyses():
    gpu = PRESETS["v100-sxm2"]
    nbytes = 2 * 512 * 2**20
    alone = nbytes / (765.0 * 1e3)  # 765 GB/s achieved
    bw = analyse_bandwidth({"bytes": nbytes, "alone_us": [alone], "pair_us": [2 * alone]}, gpu)
    assert bw["dram_efficiency"] == pytest.approx(765 / 900)
    assert bw["sharing"] == pytest.approx(1.0)
    one = simulate_connections(gpu, 1, 4, 2, 50.0)
    eight = simulate_connections(gpu, 8, 4, 2, 50.0)
    assert eight == pytest.approx(100.0 + gpu.kernel_gap_us) and one > eight  # aliased: serial
    res = analyse_connections(
        {"streams": 4, "per_stream": 2, "block_us": 50.0, "spans": {"1": one, "8": eight}}, gpu
    )
    assert [c["connections"] for c in res["cases"]] == [1, 8]
    assert all(abs(c["error_pct"]) < 1e-9 for c in res["cases"])


def test_analyse_folder_merges_fields(tmp_path):
    gpu = PRESETS["h100-sxm"]
    raw = {
        "launch": {
            "eager": {"n": 10, "host_us": 100.0},
            "raw": {"n": 10, "host_us": 40.0, "queued_gpu_us": 20.0, "kernel_us": 1.0},
            "graph": {"n": 10, "launch_host_us": 7.0, "queued_gpu_us": 10.0},
        },
        "events": {"record_host_us": [2.0], "wait_host_us": [1.0], "wait_latency_us": [0.8]},
        "bandwidth": {"bytes": 1e9, "alone_us": [1e9 / 3000e3], "pair_us": [2e9 / 3000e3]},
    }
    for name, r in raw.items():
        (tmp_path / f"{name}.json").write_text(json.dumps({"bench": name, "raw": r}))
    res = analyse(tmp_path, gpu)
    f = res["fields"]
    assert f["launch_api_us"] == 4.0 and f["event_latency_us"] == 0.8
    assert f["dram_efficiency"] == pytest.approx(3000 / 3350)
    out = tmp_path / "cal.json"
    assert main(["calibrate", "fit", "--microbench", str(tmp_path), "--base", "h100", "-o", str(out)]) == 0  # fmt: skip
    g = load_gpu(str(out))
    assert g.launch_api_us == 4.0 and g.graph_node_us == pytest.approx(0.0)
    (tmp_path / "waves.json").write_text("{not json")
    with pytest.raises(CalibrationError, match="unreadable"):
        analyse(tmp_path, gpu)


# --- per-op profiling -------------------------------------------------------------------


@pytest.mark.parametrize("model", sorted(MODELS))
def test_every_zoo_op_maps_to_a_torch_call(model):
    g = build_model(model)
    calls = {n: op_call(g, n) for n in g.ops}
    kinds = {g[n].kind for n, c in calls.items() if c is not None}
    assert kinds, model
    for n, c in calls.items():
        if c is None:
            continue
        assert c.dtype == g[n].dtype
        assert list(c.inputs) == [tuple(s) for s in g.input_shapes(n)]
        if g[n].kind == "conv":
            cout = g[n].attrs["out_channels"]
            assert c.fn == "conv2d" and c.params["weight"][0] == cout
            assert c.kwargs["groups"] == g[n].attrs.get("groups", 1)


def test_op_call_refuses_what_it_cannot_express():
    from simgpu.graph import Op, OpGraph

    g = OpGraph([Op("x", "input", (), (1, 8)), Op("y", "relu", ("x",), (1, 8), dtype="fp32")])
    assert op_call(g, "x") is None and op_call(g, "y").fn == "relu"
    g8 = OpGraph([Op("x", "input", (), (1, 8), dtype="int8"), Op("y", "relu", ("x",), (1, 8), dtype="int8")])  # fmt: skip
    with pytest.raises(CalibrationError, match="int8"):
        op_call(g8, "y")


def test_torch_calls_compute_the_declared_shapes_on_cpu():
    torch = pytest.importorskip("torch")
    from calibrate.profile import build

    g = build_model("squeezenet1_1")
    dev = torch.device("cpu")
    for n in g.ops:
        c = op_call(g, n)
        if c is not None:
            y = build(c, torch, dev)()
            assert tuple(y.shape) == g[n].output_shape, n


def test_kernel_table_written_read_and_used_by_the_cost_model(tmp_path):
    g = build_model("squeezenet1_1")
    ops = [n for n in g.ops if g[n].kind == "conv"][:3]
    profiles = [
        OpProfile(signature(g, n), n, 40.0 + i, 50, ({"name": "sgemm", "grid": 96, "threads": 128,
                  "regs": 64, "smem": 8192, "duration_us": 30.0 + i},))
        for i, n in enumerate(ops)
    ]  # fmt: skip
    p = write_table(tmp_path / "k.json", profiles, {"model": "squeezenet1_1"})
    table = read_table(p)
    assert set(table) == {signature(g, n) for n in ops}
    gpu = PRESETS["v100-sxm2"].replace(kernel_table=table)
    for i, n in enumerate(ops):
        (k,) = lower_op(g, n, gpu)
        assert k.measured and k.grid == 96
        assert standalone_time_us(k, gpu) == pytest.approx(30.0 + i)
    bad = [OpProfile("sig", "op", 1.0, 1, ())]
    with pytest.raises(CalibrationError, match="no kernel"):
        table_from_profiles(bad)
    out = tmp_path / "cal.json"
    assert main(["calibrate", "fit", "--kernel-table", str(p), "--base", "v100", "-o", str(out)]) == 0  # fmt: skip
    assert len(load_gpu(str(out)).kernel_table) == 3


# --- executor plan ----------------------------------------------------------------------


@pytest.mark.parametrize("sched", ["sequential", "nimble", "greedy"])
def test_executor_plan_follows_the_program(sched):
    g = build_model("squeezenet1_1")
    res = run_scheduler(sched, g, Machine.single(PRESETS["v100-sxm2"]))
    prog = res.program
    steps = plan(prog, res.schedule.graph or g)
    first_launch = list(
        dict.fromkeys(c.op for c in prog.commands if isinstance(c, Launch) and c.kernel is not None)
    )
    assert [s.op for s in steps if s.action == "run"] == first_launch
    stream_of = {c.op: c.stream for c in prog.commands if isinstance(c, Launch)}
    assert all(s.stream == stream_of[s.op] for s in steps if s.action == "run")
    ev = [(type(c).__name__, c.event, c.stream) for c in prog.commands if isinstance(c, Record | Wait)]  # fmt: skip
    assert [(("Record" if s.action == "record" else "Wait"), s.event, s.stream) for s in steps if s.action in ("record", "wait")] == ev  # fmt: skip
    assert sum(s.action == "sync" for s in steps) == sum(isinstance(c, Synchronize) for c in prog.commands)  # fmt: skip


def test_executor_plan_rejects_other_devices():
    prog = StreamProgram([Launch("a", None, 0, 1)])
    with pytest.raises(CalibrationError, match="one GPU"):
        plan(prog)


# --- validation harness -------------------------------------------------------------------


def test_kendall_tau():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
    assert kendall_tau([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / math.sqrt(6))
    assert math.isnan(kendall_tau([1, 1], [2, 2]))


def _synthetic_record(factors: dict[str, float]) -> dict:
    """A validation file whose 'measured' numbers are the simulator's times multiplied
    by given factors: synthetic, for testing the harness only (never committed)."""
    gpu = PRESETS["v100-sxm2"]
    g = build_model("squeezenet1_1")
    entries = []
    for name, f in factors.items():
        r = run_scheduler(name, g, Machine.single(gpu))
        entries.append({"scheduler": name, "measured_ms": r.latency_ms * f, "runtime": r.runtime,
                        "schedule": schedule_to_json(r.schedule)})  # fmt: skip
    return {
        "format": "simgpu.validation",
        "version": 1,
        "model": {"name": "squeezenet1_1", "batch": 1},
        "gpu": gpu.to_json(),
        "schedules": entries,
    }


def test_resimulate_recorded_file(tmp_path, capsys):
    data = _synthetic_record({"sequential": 1.10, "nimble": 0.95, "greedy": 1.0})
    s = resimulate(data)
    assert s["schedules"] == 3
    errs = {r["scheduler"]: r["error_pct"] for r in s["per_schedule"]}
    assert errs["sequential"] == pytest.approx((1 / 1.10 - 1) * 100)
    assert errs["greedy"] == pytest.approx(0.0, abs=1e-9)
    assert s["mape"] == pytest.approx(sum(abs(e) for e in errs.values()) / 3)
    assert "MAPE" in format_table(s)
    p = tmp_path / "validation-squeezenet1_1.json"
    p.write_text(json.dumps(data))
    png = tmp_path / "scatter.png"
    assert main(["calibrate", "validate", "--recorded", str(p), "--json", "--plot", str(png)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"schedules", "mape", "kendall_tau", "per_schedule"} <= set(out)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert scatter(s, tmp_path / "b.png").exists()


def test_bad_validation_files(tmp_path, capsys):
    cases = {
        "fmt.json": {"format": "other"},
        "ver.json": {"format": "simgpu.validation", "version": 9},
        "nogpu.json": {
            "format": "simgpu.validation",
            "version": 1,
            "model": {"name": "squeezenet1_1"},
        },
    }
    for name, data in cases.items():
        p = tmp_path / name
        p.write_text(json.dumps(data))
        assert main(["calibrate", "validate", "--recorded", str(p)]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    with pytest.raises(CalibrationError, match="measured_ms"):
        summarise([{"scheduler": "x", "measured_ms": 0, "simulated_ms": 1}])


# --- on a GPU -----------------------------------------------------------------------------


@pytest.mark.gpu
@gpu_only
def test_probe_on_the_gpu():
    from calibrate.probe import probe

    data = probe(0)
    assert gpu_from_json(data["gpu"]).sm_count == data["properties"]["numSms"]


@pytest.mark.gpu
@gpu_only
def test_microbench_launch_and_events_on_the_gpu(tmp_path):
    from calibrate.microbench import run

    run(tmp_path, benches=["launch", "events"], repeats=3)
    f = analyse(tmp_path, PRESETS["h100-sxm"])["fields"]
    assert 0 < f["launch_api_us"] < 100


@pytest.mark.gpu
@gpu_only
def test_executor_measures_a_schedule_on_the_gpu():
    from calibrate.executor import measure

    g = build_model("squeezenet1_1")
    res = run_scheduler("nimble", g, Machine.single(PRESETS["h100-sxm"]))
    m = measure(res.program, res.schedule.graph or g, repeats=3, warmup=1)
    assert m["median_us"] > 0


@pytest.mark.gpu
@gpu_only
def test_profile_one_op_on_the_gpu():
    from calibrate.profile import profile_graph
    from simgpu.graph import Op, OpGraph

    g = OpGraph([Op("x", "input", (), (1, 64, 56, 56)), Op("y", "relu", ("x",), (1, 64, 56, 56))])
    (p,) = profile_graph(g, repeats=5, warmup=2)
    assert p.median_us > 0 and p.kernels and NoGPUError
