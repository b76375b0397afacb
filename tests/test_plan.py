"""The measurement plan (``python -m calibrate.plan``) rehearsed on the fake device: every
step's bookkeeping and files, the budget cut-off, the resume, failing steps and the exit
codes; the co-run analysis. GPU-only tests are marked ``gpu`` and skip without CUDA."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from _gpu import gpu_only, has_cuda

from calibrate.corun import (
    CLASSES,
    CoKernel,
    analytic_kernels,
    default_kernels,
    fitted_kernels,
    pairs,
    simulate_streams,
)
from calibrate.fakedevice import FakeDevice, truth
from calibrate.plan import GROUPS, main
from calibrate.profile import read_table
from calibrate.validate import resimulate_file
from simgpu.cli import main as simgpu_main
from simgpu.hardware import PRESETS, load_gpu

REPO = Path(__file__).resolve().parent.parent
SMALL = ["--profile", "squeezenet1_1", "--validate", "squeezenet1_1",
         "--scheduler", "sequential", "--scheduler", "nimble", "--scheduler", "greedy"]  # fmt: skip


def dry(out: Path, *args: str, device: FakeDevice | None = None) -> int:
    return main(["--out", str(out), "--dry-run", *args], device=device)


def state(out: Path) -> dict:
    return json.loads((out / "plan.json").read_text())


def errors(capsys) -> list[str]:
    return [x for x in capsys.readouterr().err.splitlines() if x.startswith("simgpu: error:")]


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """The whole default plan once, as the GPU run would do it."""
    out = tmp_path_factory.mktemp("plan") / "h100"
    dev = FakeDevice()
    t0 = time.perf_counter()
    code = dry(out, "--pack", str(out.parent / "results.tar.gz"), device=dev)
    return SimpleNamespace(out=out, code=code, dev=dev, wall=time.perf_counter() - t0)


# --- the whole plan --------------------------------------------------------------------


def test_dry_run_completes_every_step(full):
    assert full.code == 0
    st = state(full.out)
    steps = st["steps"]
    expected = {"probe", "fit", "summary"}
    expected |= {f"microbench/{b}" for b in ("launch", "events", "waves", "overlap", "bandwidth", "connections")}  # fmt: skip
    expected |= {"corun/kernels"} | {f"corun/{c}" for c in CLASSES}
    expected |= {"profile/inception_v3-b1", "profile/googlenet-b1", "profile/resnet50-b1",
                 "profile/resnet50-b32", "validate/inception_v3", "validate/squeezenet1_1"}  # fmt: skip
    assert set(steps) == expected
    assert {k: r["status"] for k, r in steps.items()} == dict.fromkeys(expected, "done")
    assert all(r["wall_s"] >= 0 and r["outputs"] for r in steps.values())
    assert all((full.out / o).exists() for r in steps.values() for o in r["outputs"])
    (run,) = st["runs"]
    assert run["skipped"] == {} and run["failed"] == {} and len(run["ran"]) == len(expected)
    # the virtual clock ran about as long as the GPU would; the CPU took seconds
    assert 30 < run["wall_s"] < 300 and full.wall < 60
    assert not list(full.out.rglob("*.tmp")) and not list(full.out.rglob("*.partial.json"))


def test_dry_run_outputs_load_anywhere(full, capsys):
    out = full.out
    cal = load_gpu(out / "calibration.json")
    t = truth()
    # the microbenchmarks recover the fake GPU's host costs (2% noise)
    assert cal.launch_api_us == pytest.approx(t.launch_api_us, rel=0.05)
    assert cal.kernel_gap_us == pytest.approx(t.kernel_gap_us, rel=0.1)
    assert cal.dram_efficiency == pytest.approx(t.dram_efficiency, rel=0.05)
    tables = sorted(p.name for p in out.glob("kernels-*.json"))
    assert tables == ["kernels-googlenet-b1.json", "kernels-inception_v3-b1.json",
                      "kernels-resnet50-b1.json", "kernels-resnet50-b32.json"]  # fmt: skip
    assert set(cal.kernel_table) == {sig for n in tables for sig in read_table(out / n)}
    assert load_gpu(out / "probe.json").sm_count == 132
    for model in ("inception_v3", "squeezenet1_1"):
        p = out / f"validation-{model}.json"
        rec = json.loads(p.read_text())
        assert rec["fake"] is True and rec["trace"] == f"kineto-{model}.json.gz"
        assert (out / rec["trace"]).read_bytes()[:2] == b"\x1f\x8b"  # gzipped
        assert set(rec["failures"]) == {"optimal"}  # skipped by design: too many ops
        s = resimulate_file(p)
        assert s["schedules"] == len(rec["schedules"]) >= 9
        sim = {e["scheduler"]: e["simulated_ms"] for e in rec["schedules"]}
        assert {r["scheduler"]: r["simulated_ms"] for r in s["per_schedule"]} == pytest.approx(sim)  # fmt: skip
        assert simgpu_main(["calibrate", "validate", "--recorded", str(p)]) == 0
        assert "MAPE" in capsys.readouterr().out


def test_dry_run_summary_reports_fit_and_interference(full):
    s = json.loads((full.out / "summary.json").read_text())
    inc = s["validation"]["inception_v3"]
    assert inc["schedules"] >= 9
    assert inc["after"]["mape"] < inc["before"]["mape"]  # the fit moves towards the truth
    assert -1 <= inc["before"]["kendall_tau"] <= 1
    classes = s["corun"]["classes"]
    assert set(classes) == set(CLASSES)
    # the fake device plants 8% extra slowdown in copy+copy that the model lacks
    for label in ("fitted", "analytic"):
        assert 1.03 < classes["memory-memory"][label]["geomean_ratio"] < 1.14
    assert {"launch_api_us", "kernel_gap_us", "event_latency_us"} <= set(s["microbench"]["fields"])  # fmt: skip
    md = (full.out / "summary.md").read_text()
    assert "fake device" in md and "| inception_v3 |" in md and "memory-memory" in md


def test_pack_holds_the_folder(full):
    p = full.out.parent / "results.tar.gz"
    assert p.stat().st_size < 16 * 2**20
    with tarfile.open(p) as tar:
        names = set(tar.getnames())
    assert {"h100/plan.json", "h100/calibration.json", "h100/summary.md",
            "h100/validation-inception_v3.json", "h100/corun/kernels.json"} <= names  # fmt: skip


def test_second_run_keeps_everything(full, tmp_path, capsys):
    out = tmp_path / "h100"
    shutil.copytree(full.out, out)
    dev = FakeDevice()
    assert dry(out, device=dev) == 0
    run = state(out)["runs"][-1]
    assert run["ran"] == [] and run["skipped"] == {} and len(run["kept"]) == 19
    assert dev.calls == {}  # nothing measured again
    assert errors(capsys) == []


def test_dry_run_imports_no_torch(tmp_path):
    """The dry run needs neither torch, CuPy nor NVML: importing them fails here."""
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "cupy", "pynvml"):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
from calibrate.plan import main
sys.exit(main(["--out", {str(tmp_path / "o")!r}, "--dry-run", *{SMALL!r}]))
"""
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert state(tmp_path / "o")["steps"]["validate/squeezenet1_1"]["status"] == "done"


# --- budget and resume -------------------------------------------------------------------


def test_tiny_budget_stops_early_and_a_second_run_resumes(tmp_path, capsys):
    out = tmp_path / "o"
    assert dry(out, "--budget-s", "25", *SMALL) == 0
    st = state(out)
    steps = st["steps"]
    assert steps["probe"]["status"] == "done"
    skipped = st["runs"][0]["skipped"]
    assert "validate/squeezenet1_1" in skipped and skipped["validate/squeezenet1_1"].startswith("budget")  # fmt: skip
    assert all(r["status"] == "done" for r in steps.values())  # what ran, finished
    assert st["runs"][0]["wall_s"] <= 25 + 1
    assert not list(out.rglob("*.tmp"))
    first = {k for k, r in steps.items() if k not in ("fit", "summary")}
    assert 1 <= len(first) < 8
    capsys.readouterr()
    dev = FakeDevice()
    assert dry(out, *SMALL, device=dev) == 0
    st = state(out)
    assert set(st["runs"][1]["kept"]) >= first
    assert "probe" not in dev.calls  # not measured again
    ran_mb = {k.split(":")[1] for k in dev.calls if k.startswith("microbench:")}
    assert not ran_mb & {k.split("/")[1] for k in first if k.startswith("microbench/")}
    assert all(r["status"] == "done" for r in st["steps"].values())
    assert st["runs"][1]["skipped"] == {}


def test_budget_too_small_for_anything_exits_2(tmp_path, capsys):
    assert dry(tmp_path / "o", "--budget-s", "3", *SMALL) == 2
    (err,) = errors(capsys)
    assert "nothing was measured" in err and "probe" in err and "budget" in err


class SlowPrograms(FakeDevice):
    """Every program replay costs 20 virtual seconds (a big model on a slow GPU)."""

    def time_program(self, program, graph, warmup, repeats):
        self.virtual_s += 20.0
        return super().time_program(program, graph, warmup, repeats)


def test_validation_stops_between_schedulers_and_resumes_there(tmp_path):
    out = tmp_path / "o"
    scheds = ["sequential", "nimble", "greedy", "heft"]
    args = ["--only", "validate", "--validate", "squeezenet1_1"]
    for s in scheds:
        args += ["--scheduler", s]
    dev = SlowPrograms()
    assert dry(out, "--budget-s", "75", *args, device=dev) == 0
    rec = state(out)["steps"]["validate/squeezenet1_1"]
    assert rec["status"] == "partial" and "time up" in rec["reason"]
    first = json.loads((out / "validation-squeezenet1_1.json").read_text())
    done = [e["scheduler"] for e in first["schedules"]]
    assert 1 <= len(done) < 4 and done == scheds[: len(done)]
    assert not first.get("trace") and dev.calls.get("trace_program") is None
    assert dev.calls["time_program"] == len(done)
    dev2 = SlowPrograms()
    assert dry(out, *args, device=dev2) == 0
    assert dev2.calls["time_program"] == 4 - len(done)  # only what was left
    assert all(f"time_program:{s}" not in dev2.calls for s in done)
    assert state(out)["steps"]["validate/squeezenet1_1"]["status"] == "done"
    rec = json.loads((out / "validation-squeezenet1_1.json").read_text())
    assert [e["scheduler"] for e in rec["schedules"]] == scheds and rec["trace"]
    assert resimulate_file(out / "validation-squeezenet1_1.json")["schedules"] == 4
    # the learned seconds per schedule include the 20 s replays
    assert state(out)["steps"]["validate/squeezenet1_1"]["unit_s"] / 4 > 20


class SlowOps(FakeDevice):
    def time_op(self, graph, op, warmup, repeats):
        self.virtual_s += 2.0
        return super().time_op(graph, op, warmup, repeats)


def test_profile_stops_between_ops_and_resumes_there(tmp_path):
    out = tmp_path / "o"
    args = ["--only", "profile", "--profile", "squeezenet1_1"]
    dev = SlowOps()
    assert dry(out, "--budget-s", "60", *args, device=dev) == 0
    rec = state(out)["steps"]["profile/squeezenet1_1-b1"]
    assert rec["status"] == "partial"
    partial = json.loads((out / "kernels-squeezenet1_1-b1.partial.json").read_text())
    n = len(partial["ops"])
    assert n == dev.calls["time_op"] > 0
    dev2 = SlowOps()
    assert dry(out, *args, device=dev2) == 0
    total = n + dev2.calls["time_op"]
    assert len(read_table(out / "kernels-squeezenet1_1-b1.json")) == total == 26
    assert not (out / "kernels-squeezenet1_1-b1.partial.json").exists()


# --- failures -------------------------------------------------------------------------------


def test_a_failing_step_is_recorded_and_the_plan_goes_on(tmp_path, capsys):
    out = tmp_path / "o"
    code = dry(out, *SMALL, "--fake-fail", "microbench:waves", "--fake-fail", "time_program:greedy")  # fmt: skip
    assert code == 0
    st = state(out)
    waves = st["steps"]["microbench/waves"]
    assert waves["status"] == "failed" and "injected failure" in waves["reason"]
    assert "\n" not in waves["reason"]
    assert st["steps"]["microbench/overlap"]["status"] == "done"  # the next one ran
    val = st["steps"]["validate/squeezenet1_1"]
    assert val["status"] == "partial" and "greedy" in val["reason"]
    assert st["steps"]["fit"]["status"] == "done" and st["steps"]["summary"]["status"] == "done"
    assert "Traceback" in (out / "plan.log").read_text()
    assert errors(capsys) == []  # a step failure is no error of the command
    # a second run retries what failed, and only that
    dev = FakeDevice()
    assert dry(out, *SMALL, device=dev) == 0
    assert dev.calls["microbench"] == 1 and dev.calls["time_program"] == 1
    assert "time_program:greedy" in dev.calls
    st = state(out)
    assert all(r["status"] == "done" for r in st["steps"].values())
    rec = json.loads((out / "validation-squeezenet1_1.json").read_text())
    assert sorted(e["scheduler"] for e in rec["schedules"]) == ["greedy", "nimble", "sequential"]
    assert rec["failures"] == {}


def test_a_failing_op_costs_only_itself(tmp_path):
    from simgpu.models import build_model

    g = build_model("squeezenet1_1")
    op = [n for n in g.topo_order if g[n].kind == "conv"][3]
    out = tmp_path / "o"
    args = ["--only", "profile", "--profile", "squeezenet1_1"]
    assert dry(out, *args, "--fake-fail", f"time_op:{op}") == 0
    rec = state(out)["steps"]["profile/squeezenet1_1-b1"]
    assert rec["status"] == "partial" and op in rec["reason"]
    assert len(read_table(out / "kernels-squeezenet1_1-b1.json")) == 25  # the others are in
    dev = FakeDevice()
    assert dry(out, *args, device=dev) == 0
    assert dev.calls["time_op"] == 1 and f"time_op:{op}" in dev.calls
    assert len(read_table(out / "kernels-squeezenet1_1-b1.json")) == 26
    assert state(out)["steps"]["profile/squeezenet1_1-b1"]["status"] == "done"


def test_a_step_killed_mid_way_is_skipped_then_retried_on_request(tmp_path):
    out = tmp_path / "o"
    args = ["--only", "microbench", "--microbench", "launch", "--microbench", "events"]
    assert dry(out, *args) == 0
    st = state(out)
    st["steps"]["microbench/events"] = {"started": "then", "running": True}
    (out / "plan.json").write_text(json.dumps(st))
    dev = FakeDevice()
    assert dry(out, *args, device=dev) == 0
    rec = state(out)["steps"]["microbench/events"]
    assert rec["status"] == "failed" and rec["killed"] == 1 and dev.calls == {}
    assert dry(out, *args, "--retry-killed", device=dev) == 0
    assert state(out)["steps"]["microbench/events"]["status"] == "done"


def test_unreadable_state_is_set_aside(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "plan.json").write_text("{not json")
    assert dry(out, "--only", "probe") == 0
    assert (out / "plan.json.bad").read_text() == "{not json"
    assert state(out)["steps"]["probe"]["status"] == "done"
    assert "unreadable" in (out / "plan.log").read_text()


def test_nothing_measurable_exits_2_with_one_line(tmp_path, capsys):
    fails = []
    for f in ("probe", "microbench", "time_kernels", "time_op"):
        fails += ["--fake-fail", f]
    code = dry(tmp_path / "o", *SMALL, "--only", "probe", "--only", "microbench",
               "--only", "profile", *fails)  # fmt: skip
    assert code == 2
    (err,) = errors(capsys)
    assert "nothing was measured" in err and "injected failure" in err


def test_command_line_errors(tmp_path, capsys):
    cases = [
        ["--out", str(tmp_path / "a"), "--dry-run", "--validate", "no_such_model"],
        ["--out", str(tmp_path / "b"), "--dry-run", "--scheduler", "no_such_scheduler"],
        ["--out", str(tmp_path / "c"), "--dry-run", "--budget-s", "0"],
        ["--out", str(tmp_path / "d"), "--fake-fail", "probe"],
    ]
    for argv in cases:
        assert main(argv) == 2, argv
        assert len(errors(capsys)) == 1, argv
    with pytest.raises(SystemExit) as e:
        main(["--out", str(tmp_path / "e"), "--only", "nothing"])
    assert e.value.code == 2
    capsys.readouterr()
    assert set(GROUPS) == {"probe", "microbench", "corun", "profile", "validate"}


def test_without_cuda_the_real_plan_refuses_in_one_line(tmp_path, capsys):
    if has_cuda():
        pytest.skip("a CUDA GPU is present")
    assert main(["--out", str(tmp_path / "o")]) == 2
    (err,) = errors(capsys)
    assert "CUDA" in err and "--dry-run" in err
    assert not (tmp_path / "o").exists()


def test_module_entry_point(tmp_path):
    res = subprocess.run([sys.executable, "-m", "calibrate.plan", "--out", str(tmp_path / "o"), "--dry-run",
                          "--only", "probe", "--only", "microbench", "--microbench", "launch"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert "# Measurement plan" in res.stdout and "microbench/launch: done" in res.stderr


# --- co-run analysis ---------------------------------------------------------------------------


def test_corun_kernels_and_pairs():
    ks = default_kernels(132, 2048)
    assert [k.kind for k in ks] == ["gemm_tc"] * 3 + ["fma32"] * 3 + ["copy"] * 3
    assert [k.size for k in ks if k.kind == "fma32"] == [528, 1056, 1584]  # 0.5, 1, 1.5 waves
    p = pairs(ks)
    assert {c: len(v) for c, v in p.items()} == {"compute-compute": 12, "compute-memory": 8, "memory-memory": 4}  # fmt: skip
    kinds = {c: {tuple(n.split("-")[0] for n in ab) for ab in v} for c, v in p.items()}
    assert kinds["memory-memory"] == {("copy", "copy")}
    assert ("gemm_tc", "fma32") in kinds["compute-compute"]
    assert CoKernel.from_json(ks[0].to_json()) == ks[0]
    assert ks[0].flops == 2 * 1024 * 1024 * 4096 and ks[-1].nbytes == 2 * 256 * 2**20


def test_fitted_corun_kernels_take_their_measured_time_alone():
    gpu = PRESETS["h100-sxm"]
    for ck in default_kernels(gpu.sm_count, gpu.max_threads_per_sm):
        ana = analytic_kernels(ck, gpu)
        assert ana and simulate_streams([ana], gpu)[0] > 0
        configs = [{"name": k.name, "grid": k.grid, "threads": k.threads, "regs": k.regs,
                    "smem": k.smem, "duration_us": 50.0 + 10 * i} for i, k in enumerate(ana)]  # fmt: skip
        fitted = fitted_kernels(ck, configs, gpu)
        assert [k.grid for k in fitted] == [k.grid for k in ana]
        alone = simulate_streams([fitted], gpu)[0]
        total = sum(c["duration_us"] for c in configs)
        assert alone == pytest.approx(total + gpu.kernel_gap_us * (len(configs) - 1), rel=0.02)
    a, b = default_kernels(gpu.sm_count)[6], default_kernels(gpu.sm_count)[7]  # two copies
    ea, eb = simulate_streams([analytic_kernels(a, gpu), analytic_kernels(b, gpu)], gpu)
    alone = simulate_streams([analytic_kernels(a, gpu)], gpu)[0]
    assert max(ea, eb) == pytest.approx(2 * alone, rel=0.05)  # DRAM shared: no overlap gain
    assert math.isfinite(ea)


def test_profiler_kernels_are_assigned_to_their_call_range():
    """The real device's one-session profiling (TorchDevice._profile_calls), on a
    synthetic trace: a kernel belongs to the range its launch (or itself) falls in."""
    from calibrate.device import kernels_by_range

    def x(cat, name, ts, dur, **args):
        return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "args": args}

    def kernel(name, ts, corr, grid):
        return x("kernel", name, ts, 5.0, device=0, stream=7, correlation=corr, grid=[grid, 1, 1],
                 block=[128, 1, 1], **{"registers per thread": 40, "shared memory": 1024})  # fmt: skip

    events = [
        x("user_annotation", "simgpu#0", 100.0, 50.0),
        x("cuda_runtime", "cudaLaunchKernel", 110.0, 4.0, correlation=1),
        kernel("conv_a", 120.0, 1, 64),
        x("cuda_runtime", "cudaLaunchKernel", 115.0, 4.0, correlation=2),
        kernel("conv_b", 126.0, 2, 8),
        x("user_annotation", "simgpu#1", 200.0, 50.0),
        kernel("raw_copy", 210.0, 99, 132),  # its launch is not in the trace
        x("user_annotation", "other", 300.0, 10.0),
        x("cuda_runtime", "cudaLaunchKernel", 301.0, 4.0, correlation=3),
        kernel("stray", 305.0, 3, 1),
    ]
    out = kernels_by_range({"traceEvents": events}, ["op0", "op1"])
    assert [k["name"] for k in out["op0"]] == ["conv_a", "conv_b"]
    assert [k["name"] for k in out["op1"]] == ["raw_copy"]
    assert out["op0"][0] == {"name": "conv_a", "grid": 64, "threads": 128, "regs": 40,
                             "smem": 1024, "duration_us": 5.0}  # fmt: skip
    assert kernels_by_range({"traceEvents": events[1:5]}, ["op0"]) is None  # no ranges


# --- on a GPU ---------------------------------------------------------------------------------


@pytest.mark.gpu
@gpu_only
def test_torch_device_primitives_on_the_gpu():
    from calibrate.device import TorchDevice
    from simgpu.graph import Op, OpGraph

    dev = TorchDevice(0)
    g = CoKernel("gemm_tc-1024", "gemm_tc", 1024)
    c = CoKernel("copy-132", "copy", 132, mib=64)
    alone = dev.time_kernels([g], repeats=3)
    assert len(alone) == 3 and alone[0][0] > 0
    pair = dev.time_kernels([g, c], repeats=3)
    assert all(len(r) == 2 for r in pair)
    cfg = dev.kernel_configs([g, c])
    assert cfg["gemm_tc-1024"] and all(k["grid"] >= 1 for k in cfg["gemm_tc-1024"])
    graph = OpGraph([Op("x", "input", (), (1, 64, 56, 56)), Op("y", "relu", ("x",), (1, 64, 56, 56))])  # fmt: skip
    assert dev.time_op(graph, "y", 2, 3)[0] > 0
    assert dev.op_kernels(graph, ["y"])["y"]


@pytest.mark.gpu
@gpu_only
def test_short_plan_on_the_gpu(tmp_path):
    out = tmp_path / "o"
    assert main(["--out", str(out), "--budget-s", "120", "--only", "probe", "--only", "microbench",
                 "--microbench", "launch", "--microbench", "events"]) == 0  # fmt: skip
    assert load_gpu(out / "calibration.json").launch_api_us > 0
