"""``simgpu fidelity``: the report card's arithmetic, its readers' errors and the CLI."""

from __future__ import annotations

import gzip
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _cli import run_error, run_json, run_ok

from calibrate.errors import CalibrationError
from calibrate.fidelity import build_report, format_report, gpu_of_device, score
from simgpu.errors import LoweringError
from simgpu.hardware import PRESETS, Machine

SHARED = (Path(__file__).parents[1] / ".." / "shared" / "data").resolve()

GEMM_HEAD = "app,M,N,K,a_t,b_t,time_ms\n"
# measured 10, 20, 40, 100 us; M = 5 is a shape the fake lowering rejects
GEMM_ROWS = "a,1,1,1,N,N,0.010\na,2,1,1,N,N,0.020\nb,3,1,1,N,N,0.040\nb,4,1,1,N,N,0.100\nb,5,1,1,N,N,0.1\n"  # fmt: skip
FAKE_US = {1: 12.0, 2: 20.0, 3: 30.0, 4: 300.0}  # ratios 1.2, 1.0, 0.75, 3.0


def fake_predictor(m, gpu):
    if m.get("M") not in FAKE_US:
        raise LoweringError(f"gemm M={m.get('M')}: no tile fits")
    return FAKE_US[m.get("M")]


def no_logo(datasets):
    return {}


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def tvm_line(n=1, c=8, hw=8, k=8, r=3, seconds=1e-5, err=0, dtype="float32") -> str:
    args = [["TENSOR", [n, c, hw, hw], dtype], ["TENSOR", [k, c, r, r], dtype], [1, 1],
            [r // 2, r // 2], [1, 1], "NCHW", dtype]  # fmt: skip
    return json.dumps({"i": ["cuda", "topi_nn_conv2d", args, {}], "r": [[seconds], err, 1.0, 0]})


# --- arithmetic ---------------------------------------------------------------------------


def test_score_by_hand():
    s = score("x", "v100-sxm2", [12, 20, 30, 300], [10, 20, 40, 100], ["r1", "r2", "r3", "r4"])
    assert s.n == 4
    assert s.mape == pytest.approx((0.2 + 0 + 0.25 + 2.0) / 4 * 100)  # 61.25
    assert s.median_ratio == pytest.approx((1.0 + 1.2) / 2)
    assert s.within_25 == pytest.approx(3 / 4)  # 0.75 is exactly on the edge: in
    assert s.worst == ("r4", pytest.approx(3.0))
    assert s.logo_mape is None
    # the worst is furthest from 1 in log scale: 1/4 beats 3
    assert score("y", "g", [1, 3], [4, 1], ["a", "b"]).worst == ("a", 0.25)
    lg = score("z", "g", [1, 1], [1, 2], ["a", "b"], logo=[1.1, math.nan])
    assert lg.logo_mape == pytest.approx(10.0)  # the row the fit could not price is out


@pytest.mark.parametrize(
    "args",
    [
        ([], [], []),
        ([1.0], [1.0, 2.0], ["a", "b"]),
        ([1.0], [0.0], ["a"]),
        ([math.nan], [1.0], ["a"]),
        ([-1.0], [1.0], ["a"]),
    ],
)
def test_score_rejects_bad_input(args):
    with pytest.raises(CalibrationError):
        score("x", "g", *args)


def test_report_on_a_synthetic_csv_by_hand(tmp_path):
    _write(tmp_path / "v100_fp32_gemm.csv", GEMM_HEAD + GEMM_ROWS)
    name = "deepbench v100 fp32 gemm"

    def logo(datasets):
        assert [d.name for d in datasets] == [name]
        return {name: [11.0, 20.0, 40.0, 100.0, 5.0]}  # the last row is not priced

    rep = build_report([tmp_path], predictor=fake_predictor, logo=logo)
    assert rep.skipped == []
    (s,) = rep.rows
    assert (s.dataset, s.gpu, s.kind, s.n) == (name, "v100-sxm2", "calls", 4)
    assert s.mape == pytest.approx(61.25)
    assert s.median_ratio == pytest.approx(1.1)
    assert s.within_25 == pytest.approx(0.75)
    assert s.worst == ("v100_fp32_gemm.csv:5", pytest.approx(3.0))
    assert s.logo_mape == pytest.approx(10 / 4)  # (1/10 + 0 + 0 + 0) / 4 * 100
    assert s.skipped == (("v100_fp32_gemm.csv:6", "gemm M=5: no tile fits"),)
    text = format_report(rep)
    assert f"{s.mape:.1f}%" in text and "2.5%" in text and "1 row(s) not priced" in text
    js = rep.to_json()["rows"][0]
    assert js["skipped_rows"] == 1 and js["worst"]["source"] == "v100_fp32_gemm.csv:5"


def test_rows_that_all_fail_skip_the_dataset(tmp_path):
    _write(tmp_path / "v100_fp32_gemm.csv", GEMM_HEAD + "a,5,1,1,N,N,0.1\n")
    _write(tmp_path / "x" / "v100_fp16_gemm.csv", GEMM_HEAD + "a,1,1,1,N,N,0.01\n")
    rep = build_report([tmp_path], predictor=fake_predictor, logo=no_logo)
    assert [r.dataset for r in rep.rows] == ["deepbench v100 fp16 gemm"]
    (sk,) = rep.skipped
    assert sk.path.endswith("v100_fp32_gemm.csv") and "none of its 1 rows" in sk.reason
    assert "no tile fits" in sk.reason


def test_gpu_override_prices_every_dataset_on_it(tmp_path):
    _write(tmp_path / "v100_fp32_gemm.csv", GEMM_HEAD + GEMM_ROWS)
    seen = set()

    def pred(m, gpu):
        seen.add(gpu.name)
        return fake_predictor(m, gpu)

    rep = build_report([tmp_path], gpu=PRESETS["t4"], predictor=pred, logo=no_logo)
    assert seen == {"t4"} and rep.gpu == "t4"
    assert (rep.rows[0].gpu, rep.rows[0].recorded_gpu) == ("t4", "v100-sxm2")
    assert "t4 (data: v100-sxm2)" in format_report(rep)


def test_a_failing_logo_fit_is_a_note(tmp_path):
    _write(tmp_path / "v100_fp32_gemm.csv", GEMM_HEAD + GEMM_ROWS)

    def broken(datasets):
        raise CalibrationError("fit diverged")

    rep = build_report([tmp_path], predictor=fake_predictor, logo=broken)
    assert rep.rows[0].logo_mape is None and rep.notes == ["LOGO fit failed: fit diverged"]


# --- readers' errors ----------------------------------------------------------------------


def test_malformed_files_are_skipped_with_reasons(tmp_path):
    bad = {
        "nocol/v100_fp32_gemm.csv": "app,M,N,K,a_t,b_t\na,1,1,1,N,N\n",
        "nonnum/v100_fp32_gemm.csv": GEMM_HEAD + "a,x,1,1,N,N,0.01\n",
        "neg/v100_fp32_gemm.csv": GEMM_HEAD + "a,1,1,1,N,N,-0.01\n",
        "zero/v100_fp32_gemm.csv": GEMM_HEAD + "a,1,1,1,N,N,0\n",
        "tvm/squeezenet_v100_bs1.log": tvm_line() + "\n{not json\n",
        "zz9_fp32_gemm.csv": GEMM_HEAD + "a,1,1,1,N,N,0.01\n",
        "zz8_fp32_gemm.csv": GEMM_HEAD + "a,1,1,1,N,N,0.01\n",
        "good/v100_fp32_gemm.csv": GEMM_HEAD + "a,1,1,1,N,N,0.01\n",
    }
    for name, text in bad.items():
        _write(tmp_path / name, text)
    rep = build_report([tmp_path], predictor=fake_predictor, logo=no_logo)
    assert [r.path for r in rep.rows] == [str(tmp_path / "good/v100_fp32_gemm.csv")]
    why = {Path(s.path).relative_to(tmp_path).as_posix(): s.reason for s in rep.skipped}
    assert set(why) == set(bad) - {"good/v100_fp32_gemm.csv"}
    assert "missing column(s) time_ms" in why["nocol/v100_fp32_gemm.csv"]
    assert "M is not a number" in why["nonnum/v100_fp32_gemm.csv"]
    assert "non-negative" in why["neg/v100_fp32_gemm.csv"]
    assert "must be positive" in why["zero/v100_fp32_gemm.csv"]
    assert "squeezenet_v100_bs1.log:2: not an AutoTVM conv2d record" in why["tvm/squeezenet_v100_bs1.log"]  # fmt: skip
    assert why["zz9_fp32_gemm.csv"] == "no simgpu preset for GPU 'zz9'"
    assert why["zz8_fp32_gemm.csv"] == "no simgpu preset for GPU 'zz8'"
    text = format_report(rep)
    assert text.count("\nskipped ") == len(bad) - 1


def test_missing_folder_and_nothing_found(tmp_path):
    with pytest.raises(CalibrationError, match="no such folder"):
        build_report([tmp_path / "nope"])
    with pytest.raises(CalibrationError, match="no datasets found in"):
        build_report([tmp_path])
    _write(tmp_path / "other.json", '{"a": 1}')  # JSON that is no dataset is ignored
    with pytest.raises(CalibrationError, match="no datasets found in"):
        build_report([tmp_path])


# --- Kineto traces ------------------------------------------------------------------------

A100 = {"id": 0, "name": "NVIDIA A100-PG509-200", "totalGlobalMem": 42297524224,
        "computeMajor": 8, "computeMinor": 0, "maxThreadsPerBlock": 1024,
        "maxThreadsPerMultiprocessor": 2048, "regsPerBlock": 65536,
        "regsPerMultiprocessor": 65536, "warpSize": 32, "sharedMemPerBlock": 49152,
        "sharedMemPerMultiprocessor": 167936, "numSms": 108, "sharedMemPerBlockOptin": 166912}  # fmt: skip


def tiny_trace(props: dict) -> dict:
    """Two kernels on one stream, each launched by a cudaLaunchKernel."""
    ev = []
    for i, (ts, start) in enumerate([(0.0, 10.0), (20.0, 40.0)]):
        c = 100 + i
        ev.append({"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 1,
                   "tid": 1, "ts": ts, "dur": 5.0, "args": {"correlation": c}})  # fmt: skip
        ev.append({"ph": "X", "cat": "kernel", "name": f"k{i}", "pid": 0, "tid": 7, "ts": start,
                   "dur": 25.0, "args": {"device": 0, "stream": 7, "correlation": c,
                                         "registers per thread": 32, "shared memory": 0,
                                         "grid": [4, 1, 1], "block": [128, 1, 1]}})  # fmt: skip
    return {"deviceProperties": [props], "traceEvents": ev}


def test_gpu_of_device():
    assert gpu_of_device({"name": "Tesla V100-SXM2-32GB"}) == "v100-sxm2"
    assert gpu_of_device(A100) == "a100-sxm4-40gb"
    assert gpu_of_device({**A100, "totalGlobalMem": 85 * 2**30}) == "a100-sxm4-80gb"
    assert gpu_of_device({"name": "Quadro RTX 6000"}) is None
    assert gpu_of_device({}) is None


def test_kineto_trace_is_replayed_and_an_unknown_gpu_skipped(tmp_path):
    (tmp_path / "run.json.gz").write_bytes(gzip.compress(json.dumps(tiny_trace(A100)).encode()))
    _write(tmp_path / "q.json", json.dumps(tiny_trace({**A100, "name": "Quadro RTX 6000"})))
    _write(tmp_path / "broken.json", '{"traceEvents": [')
    rep = build_report([tmp_path], logo=no_logo)
    (r,) = rep.rows
    assert (r.dataset, r.kind, r.gpu, r.n) == ("kineto run", "replay", "a100-sxm4-40gb", 1)
    assert r.extra["recorded_ms"] == pytest.approx(0.055)  # 10 .. 65 us
    assert r.mape == pytest.approx(abs(r.median_ratio - 1) * 100)
    why = {Path(s.path).name: s.reason for s in rep.skipped}
    assert why["q.json"] == "no simgpu preset for GPU 'Quadro RTX 6000' (device 0)"
    assert why["broken.json"].startswith("invalid JSON")
    # with --gpu the unknown GPU is the user's call, not a guess
    rep = build_report([tmp_path], gpu=PRESETS["a100-sxm4-40gb"], logo=no_logo)
    assert sorted(r.dataset for r in rep.rows) == ["kineto q", "kineto run"]


# --- recorded validations -----------------------------------------------------------------


def test_recorded_validation_row(tmp_path):
    from schedulers.base import run_scheduler
    from simgpu.models import build_model
    from simgpu.schedule import schedule_to_json

    gpu = PRESETS["v100-sxm2"]
    g = build_model("squeezenet1_1")
    entries, sims = [], []
    for name, f in {"sequential": 1.25, "greedy": 0.5}.items():  # synthetic "measurements"
        r = run_scheduler(name, g, Machine.single(gpu))
        sims.append(r.latency_ms)
        entries.append({"scheduler": name, "measured_ms": r.latency_ms / f, "runtime": r.runtime,
                        "schedule": schedule_to_json(r.schedule)})  # fmt: skip
    entries.append({"scheduler": "broken", "measured_ms": 1.0})  # no schedule: a skipped row
    data = {"format": "simgpu.validation", "version": 1, "device": "Tesla V100-SXM2-16GB",
            "model": {"name": "squeezenet1_1", "batch": 1}, "gpu": gpu.to_json(),
            "schedules": entries}  # fmt: skip
    _write(tmp_path / "v100" / "validation-squeezenet1_1.json", json.dumps(data))
    rep = build_report([tmp_path], logo=no_logo)
    (r,) = rep.rows
    assert (r.dataset, r.kind, r.gpu, r.n) == ("validation validation-squeezenet1_1", "schedules", "v100-sxm2", 2)  # fmt: skip
    assert r.mape == pytest.approx((0.25 + 0.5) / 2 * 100)
    assert r.median_ratio == pytest.approx((1.25 + 0.5) / 2)
    assert r.within_25 == pytest.approx(0.5)
    assert r.worst == ("validation-squeezenet1_1.json:greedy", pytest.approx(0.5))
    assert r.skipped_rows == 1 and r.skipped[0][0] == "validation-squeezenet1_1.json:broken"
    same_order = (sims[0] > sims[1]) == (sims[0] / 1.25 > sims[1] / 0.5)
    assert r.extra["kendall_tau"] == (1.0 if same_order else -1.0)


# --- the CLI ------------------------------------------------------------------------------


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    _write(tmp_path / "d" / "v100_fp32_gemm.csv", GEMM_HEAD + "a,64,64,64,N,N,0.01\nb,1024,1024,1024,N,T,0.2\n")  # fmt: skip
    _write(tmp_path / "d" / "tiny_v100_bs1.log", tvm_line() + "\n" + tvm_line(k=16, seconds=2e-5) + "\n")  # fmt: skip
    _write(tmp_path / "d" / "zz9_fp16_gemm.csv", GEMM_HEAD + "a,1,1,1,N,N,0.01\n")
    return tmp_path / "d"


def test_cli_text(data_dir, capsys):
    out = run_ok(capsys, "fidelity", "--data", str(data_dir))
    lines = out.splitlines()
    assert lines[0].split()[:5] == ["dataset", "kind", "GPU", "n", "MAPE"]
    assert "LOGO MAPE" in lines[0]
    assert lines[2].startswith("autotvm v100 tiny bs1 ") and " 2 " in lines[2]
    assert lines[3].startswith("deepbench v100 fp32 gemm ") and " 2 " in lines[3]
    assert lines[-1].startswith("skipped ") and "no simgpu preset for GPU 'zz9'" in lines[-1]


def test_cli_json(data_dir, capsys):
    out = run_json(capsys, "fidelity", "--data", str(data_dir), "--json", "--gpu", "v100")
    assert out["dirs"] == [str(data_dir)] and out["gpu_override"] == "v100-sxm2"
    assert [(r["dataset"], r["n"]) for r in out["rows"]] == [("autotvm v100 tiny bs1", 2), ("deepbench v100 fp32 gemm", 2)]  # fmt: skip
    for r in out["rows"]:
        assert math.isfinite(r["mape"]) and r["mape"] >= 0 and 0 <= r["within_25"] <= 1
        assert r["worst"]["ratio"] > 0
        assert r["logo_mape"] is None or r["logo_mape"] >= 0  # the fit's, when it has one
    assert out["skipped"][0]["reason"] == "no simgpu preset for GPU 'zz9'"


def test_cli_errors(tmp_path, capsys, monkeypatch):
    assert "no such folder" in run_error(capsys, "fidelity", "--data", str(tmp_path / "nope"))
    assert "no datasets found in" in run_error(capsys, "fidelity", "--data", str(tmp_path))
    monkeypatch.chdir(tmp_path)  # neither ../shared/data nor traces/ here
    assert "../shared/data, traces" in run_error(capsys, "fidelity")
    assert "unknown GPU" in run_error(capsys, "fidelity", "--data", str(tmp_path), "--gpu", "zz")


def test_cli_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        run_ok(capsys, "fidelity", "--help")
    out = capsys.readouterr().out
    for opt in ("--data DIR", "--gpu NAME|FILE", "--json"):
        line = next(x for x in out.splitlines() if x.strip().startswith(opt))
        assert len(line.strip()) > len(opt) + 5, line  # a help string beside it
    assert "../shared/data" in out and "traces/" in out


# --- the real public data -----------------------------------------------------------------


def test_real_public_data():
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not present")
    rep = build_report([SHARED], logo=no_logo)  # the LOGO fit is costfit's to test
    calls = [r for r in rep.rows if r.kind == "calls"]
    assert [(r.dataset, r.n) for r in calls] == [
        ("deepbench v100 fp16 conv_fwd", 94),
        ("deepbench v100 fp16 gemm", 160),
        ("deepbench v100 fp32 conv_fwd", 94),
        ("deepbench v100 fp32 gemm", 160),
        ("autotvm v100 inception_v3 bs1", 42),
        ("autotvm v100 squeezenet bs1", 26),
    ]
    assert all(r.gpu == "v100-sxm2" and r.skipped_rows == 0 for r in calls)
    for r in rep.rows:
        assert math.isfinite(r.mape) and math.isfinite(r.median_ratio)
    replays = {r.dataset: r.gpu for r in rep.rows if r.kind == "replay"}
    assert replays == {
        "kineto a100_alexnet_2streams": "a100-sxm4-40gb",
        "kineto a100_event_sync": "a100-sxm4-40gb",
        "kineto a100_event_sync_3streams": "a100-sxm4-40gb",
        "kineto v100_training_1stream": "v100-sxm2",
    }
    json.dumps(rep.to_json(), allow_nan=False)


def test_console_script_reads_shared_data_and_traces_by_default(tmp_path):
    """A real subprocess, in a folder laid out like the repository's: ../shared/data and
    traces/ are read without --data."""
    root = tmp_path / "main"
    _write(tmp_path / "shared" / "data" / "v100_fp32_gemm.csv", GEMM_HEAD + "a,64,64,64,N,N,0.01\n")
    _write(root / "traces" / "zz9_fp32_gemm.csv", GEMM_HEAD + "a,1,1,1,N,N,0.01\n")
    exe = shutil.which("simgpu")
    cmd = [exe] if exe else [sys.executable, "-m", "simgpu.cli"]
    proc = subprocess.run([*cmd, "fidelity", "--json", "--no-logo"], cwd=root, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert out["dirs"] == ["../shared/data", "traces"] and out["gpu_override"] is None
    assert [(r["dataset"], r["n"], r["logo_mape"]) for r in out["rows"]] == [("deepbench v100 fp32 gemm", 1, None)]  # fmt: skip
    assert out["skipped"] == [{"path": "traces/zz9_fp32_gemm.csv", "reason": "no simgpu preset for GPU 'zz9'"}]  # fmt: skip
    assert out["notes"] == ["LOGO MAPE not computed (--no-logo)"]
