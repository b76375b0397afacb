"""End-to-end tests of the ``simgpu`` command line.

Mostly through ``simgpu.cli.main(argv)`` in-process (fast), plus real subprocess runs of
the console script. Every user error must exit 2 with exactly one line on stderr that
starts with ``simgpu: error:`` — never a traceback.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _cli import run_error, run_json, run_ok

from schedulers.base import scheduler_names
from simgpu.cli import main
from simgpu.graph import FORMAT, VERSION
from simgpu.hardware import PRESETS
from simgpu.models import MODELS, build_model

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RESULT_KEYS = {
    "scheduler",
    "runtime",
    "sequential_ms",
    "latency_ms",
    "speedup",
    "streams",
    "syncs",
    "schedule_s",
    "profiler_calls",
}


def _graph_file(tmp_path: Path, ops: list[dict], name: str = "g.json") -> Path:
    p = tmp_path / name
    p.write_text(json.dumps({"format": FORMAT, "version": VERSION, "name": "small", "ops": ops}))
    return p


S = [1, 64, 28, 28]
SMALL_OPS = [
    {"name": "x", "kind": "input", "shape": S},
    {"name": "a", "kind": "relu", "inputs": ["x"], "shape": S},
    {"name": "b", "kind": "sigmoid", "inputs": ["x"], "shape": S},
    {"name": "c", "kind": "add", "inputs": ["a", "b"], "shape": S},
]


def _schedule_file(tmp_path: Path, streams: list[list[str]], name: str = "s.json") -> Path:
    p = tmp_path / name
    p.write_text(
        json.dumps(
            {"format": "simgpu.schedule", "version": 1, "kind": "streams", "streams": streams}
        )
    )
    return p


# --- run ------------------------------------------------------------------------------


def test_run_json(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_json(
        capsys,
        "run",
        "inception_v3",
        "--gpu",
        "v100",
        "--scheduler",
        "sequential",
        "--scheduler",
        "sequential-graph",
        "--json",
    )
    assert isinstance(out, dict)
    assert {"model", "batch", "gpu", "results"} <= set(out)
    assert (out["model"], out["batch"], out["gpu"]) == ("inception_v3", 1, "v100-sxm2")
    results = {r["scheduler"]: r for r in out["results"]}
    assert list(results) == ["sequential", "sequential-graph"]
    for r in out["results"]:
        assert set(r) >= RESULT_KEYS, r
        assert r["latency_ms"] > 0
        assert r["streams"] == 1 and r["syncs"] == 0
    seq = results["sequential"]
    assert seq["speedup"] == 1.0 and seq["runtime"] == "pytorch-eager"
    g = results["sequential-graph"]
    # each is its runtime's own baseline: like with like
    assert g["runtime"] == "cuda-graph" and g["speedup"] == 1.0
    assert g["sequential_ms"] == g["latency_ms"] < seq["latency_ms"]


def test_run_json_default_scheduler_is_all(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_json(capsys, "run", "inception_v3", "--json")
    assert [r["scheduler"] for r in out["results"]] == scheduler_names(single_gpu_only=True)


def test_run_scheduler_all_runs_every_single_gpu_scheduler(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = run_json(
        capsys, "run", "inception_v3", "--scheduler", "all", "--scheduler", "sequential", "--json"
    )
    names = [r["scheduler"] for r in out["results"]]
    assert names == scheduler_names(single_gpu_only=True)  # no duplicates
    assert {"sequential", "sequential-graph"} <= set(names)
    assert next(r for r in out["results"] if r["scheduler"] == "sequential")["speedup"] == 1.0


def test_run_speedup_is_relative_to_sequential_even_when_not_run(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = run_json(capsys, "run", "inception_v3", "--scheduler", "nimble", "--json")
    (r,) = out["results"]
    assert r["runtime"] == "cuda-graph" and r["speedup"] > 1.0
    graph = run_json(capsys, "run", "inception_v3", "--scheduler", "sequential-graph", "--json")
    assert r["sequential_ms"] == graph["results"][0]["latency_ms"]


def test_run_batch_and_dtype(capsys: pytest.CaptureFixture[str]) -> None:
    # a CUDA Graph: eager PyTorch is host-bound at batch 1 and 4 alike
    one = run_json(capsys, "run", "inception_v3", "--scheduler", "sequential-graph", "--json")
    four = run_json(
        capsys, "run", "inception_v3", "--scheduler", "sequential-graph", "--batch", "4", "--json"
    )
    half = run_json(
        capsys,
        "run",
        "inception_v3",
        "--scheduler",
        "sequential-graph",
        "--batch",
        "4",
        "--dtype",
        "fp16",
        "--json",
    )
    assert four["batch"] == 4 and four["macs"] == 4 * one["macs"]
    lat = [d["results"][0]["latency_ms"] for d in (one, four, half)]
    assert lat[1] > lat[0]
    assert lat[2] < lat[1]  # tensor cores on V100


def test_run_option_reaches_the_scheduler(capsys: pytest.CaptureFixture[str]) -> None:
    base = run_json(capsys, "run", "inception_v3", "--scheduler", "sequential", "--json")
    opt = run_json(
        capsys,
        "run",
        "inception_v3",
        "--scheduler",
        "sequential",
        "--option",
        "sequential.graph_mode=true",
        "--json",
    )
    assert opt["results"][0]["latency_ms"] < base["results"][0]["latency_ms"]


def test_run_table_output(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_ok(capsys, "run", "inception_v3", "--scheduler", "sequential")
    assert "inception_v3" in out and "v100-sxm2" in out
    assert "sequential" in out and "1.00x" in out


def test_run_writes_gantt_and_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png, trace = tmp_path / "X.png", tmp_path / "T.json"
    out = run_ok(
        capsys,
        "run",
        "inception_v3",
        "--scheduler",
        "sequential",
        "--scheduler",
        "sequential-graph",
        "--gantt",
        str(png),
        "--trace",
        str(trace),
    )
    assert png.read_bytes().startswith(PNG_MAGIC)
    data = json.loads(trace.read_text())
    assert isinstance(data["traceEvents"], list) and data["traceEvents"]
    assert all({"ph", "pid"} <= set(e) for e in data["traceEvents"])
    kernels = [e for e in data["traceEvents"] if e["ph"] == "X"]
    assert kernels and all(e["dur"] >= 0 and "ts" in e for e in kernels)
    # the trace is of the fastest schedule
    assert data["otherData"]["title"] == "sequential-graph"
    assert str(png) in out and str(trace) in out


def test_run_trace_per_scheduler(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pattern = str(tmp_path / "out_{scheduler}.json")
    run_ok(
        capsys,
        "run",
        "inception_v3",
        "--scheduler",
        "sequential",
        "--scheduler",
        "sequential-graph",
        "--trace",
        pattern,
    )
    for name in ("sequential", "sequential-graph"):
        data = json.loads((tmp_path / f"out_{name}.json").read_text())
        assert data["otherData"]["title"] == name
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "out_sequential-graph.json",
        "out_sequential.json",
    ]


def test_run_single_scheduler_gantt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "one.png"
    run_ok(capsys, "run", "inception_v3", "--scheduler", "sequential", "--gantt", str(png))
    assert png.read_bytes().startswith(PNG_MAGIC)


def test_run_gpu_override_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gpu = tmp_path / "oneq.json"
    gpu.write_text(json.dumps({"base": "v100", "hw_queues": 1}))
    out = run_json(
        capsys, "run", "inception_v3", "--scheduler", "sequential", "--gpu", str(gpu), "--json"
    )
    assert out["gpu"] == "v100-sxm2+oneq"
    assert out["results"][0]["latency_ms"] > 0


def test_run_on_every_preset(capsys: pytest.CaptureFixture[str]) -> None:
    for name in PRESETS:
        out = run_json(
            capsys, "run", "inception_v3", "--scheduler", "sequential", "--gpu", name, "--json"
        )
        assert out["gpu"] == name


# --- listings -------------------------------------------------------------------------


def test_gpus(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_ok(capsys, "gpus")
    for name in PRESETS:
        assert name in out
    assert "v100" in out  # aliases column
    data = run_json(capsys, "gpus", "--json")
    assert [g["name"] for g in data] == list(PRESETS)
    assert {g["name"]: g["sm_count"] for g in data}["v100-sxm2"] == 80


def test_models(capsys: pytest.CaptureFixture[str]) -> None:
    data = run_json(capsys, "models", "--json")
    assert [m["name"] for m in data] == list(MODELS)
    for m in data:
        assert {"name", "ops", "macs", "flops", "params", "input", "inputs"} <= set(m)
        assert m["ops"] > 0 and m["macs"] > 0 and m["params"] > 0
        assert m["flops"] >= 2 * m["macs"]
        g = build_model(m["name"])
        assert (m["ops"], m["macs"], m["params"]) == (len(g), g.macs, g.params)
        assert [i["shape"] for i in m["inputs"]] == [list(op.output_shape) for op in g.inputs]
        assert [i["name"] for i in m["inputs"]] == [op.name for op in g.inputs]
        assert m["input"] == (
            m["inputs"][0]["shape"] if len(m["inputs"]) == 1 else [i["shape"] for i in m["inputs"]]
        )
        assert m["image_size"] == MODELS[m["name"]].default_image_size
    inc = next(m for m in data if m["name"] == "inception_v3")
    assert inc["input"] == [1, 3, 299, 299] and inc["image_size"] == 299
    table = run_ok(capsys, "models")
    assert "inception_v3" in table and "1x3x299x299" in table
    assert "[" not in table  # several inputs read "3 x 1x128", not Python lists


def test_schedulers(capsys: pytest.CaptureFixture[str]) -> None:
    data = run_json(capsys, "schedulers", "--json")
    names = [s["name"] for s in data]
    assert names == sorted(names)
    assert {"sequential", "sequential-graph"} <= set(names)
    for s in data:
        assert {"name", "multi_gpu", "description"} <= set(s)
    assert "sequential-graph" in run_ok(capsys, "schedulers")


# --- export / simulate ----------------------------------------------------------------


@pytest.fixture
def exported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    path = tmp_path / "g.json"
    out = run_ok(capsys, "export", "inception_v3", "-o", str(path))
    assert str(path) in out
    return path


def test_export_then_simulate(exported: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = json.loads(exported.read_text())
    assert data["format"] == FORMAT and data["name"] == "inception_v3"
    out = run_json(capsys, "simulate", str(exported), "--gpu", "v100", "--json")
    assert {"latency_ms", "kernels", "streams"} <= set(out)
    assert out["latency_ms"] > 0 and out["streams"] == 1
    assert out["kernels"] > 90
    assert out["schedule"] == "sequential"
    table = run_ok(capsys, "simulate", str(exported))
    assert "latency_ms" in table


def test_schedule_out_then_simulate_gives_the_same_latency(
    exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sched = tmp_path / "s.json"
    run = run_json(
        capsys,
        "run",
        "inception_v3",
        "--scheduler",
        "sequential",
        "--schedule-out",
        str(sched),
        "--json",
    )
    assert json.loads(sched.read_text())["format"] == "simgpu.schedule"
    sim = run_json(capsys, "simulate", str(exported), "--schedule", str(sched), "--json")
    assert sim["latency_ms"] == run["results"][0]["latency_ms"]
    assert sim["schedule"] == str(sched)


def test_simulate_with_scheduler_and_outputs(
    exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace, png = tmp_path / "t.json", tmp_path / "g.png"
    out = run_json(
        capsys,
        "simulate",
        str(exported),
        "--scheduler",
        "sequential-graph",
        "--trace",
        str(trace),
        "--gantt",
        str(png),
        "--json",
    )
    assert out["schedule"] == "sequential-graph"
    assert json.loads(trace.read_text())["traceEvents"]
    assert png.read_bytes().startswith(PNG_MAGIC)


def test_simulate_built_in_model_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_json(capsys, "simulate", "inception_v3", "--json")
    assert out["graph"] == "inception_v3"


def test_simulate_small_graph_with_two_streams(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    g = _graph_file(tmp_path, SMALL_OPS)
    s = _schedule_file(tmp_path, [["x", "a", "c"], ["b"]])
    out = run_json(capsys, "simulate", str(g), "--schedule", str(s), "--json")
    assert out["streams"] == 2 and out["syncs"] >= 2 and out["kernels"] == 3


# --- real subprocesses ------------------------------------------------------------------


def _cli() -> list[str]:
    exe = shutil.which("simgpu")
    return [exe] if exe else [sys.executable, "-m", "simgpu.cli"]


def test_console_script_runs() -> None:
    proc = subprocess.run(
        [*_cli(), "run", "inception_v3", "--scheduler", "sequential", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["results"][0]["speedup"] == 1.0


def test_module_entry_point_reports_errors_cleanly() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "simgpu.cli", "run", "no_such_model"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("simgpu: error:")
    assert "no_such_model" in lines[0]


# --- errors ---------------------------------------------------------------------------


def test_unknown_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert "nosuch" in run_error(capsys, "run", "nosuch")
    assert "nosuch" in run_error(capsys, "export", "nosuch", "-o", "x.json")


def test_unknown_gpu(capsys: pytest.CaptureFixture[str]) -> None:
    assert "zz9" in run_error(capsys, "run", "inception_v3", "--gpu", "zz9")


def test_unknown_scheduler(capsys: pytest.CaptureFixture[str]) -> None:
    assert "nosuch" in run_error(capsys, "run", "inception_v3", "--scheduler", "nosuch")
    assert "nosuch" in run_error(capsys, "simulate", "inception_v3", "--scheduler", "nosuch")


@pytest.mark.parametrize(
    "option",
    ["bad", "sequential.graph_mode", "sequential.graph_mode=maybe", "sequential.nope=1"],
)
def test_bad_option(capsys: pytest.CaptureFixture[str], option: str) -> None:
    run_error(capsys, "run", "inception_v3", "--scheduler", "sequential", "--option", option)


def test_option_for_a_scheduler_not_run(capsys: pytest.CaptureFixture[str]) -> None:
    line = run_error(
        capsys,
        "run",
        "inception_v3",
        "--scheduler",
        "sequential",
        "--option",
        "sequential-graph.graph_mode=0",
    )
    assert "sequential-graph" in line


def test_simulate_option_for_a_scheduler_not_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = run_error(capsys, "simulate", "inception_v3", "--option", "ios.r=1")
    assert "'ios'" in line and "not being run" in line
    line = run_error(
        capsys,
        "simulate",
        "inception_v3",
        "--scheduler",
        "sequential-graph",
        "--option",
        "sequential.graph_mode=1",
    )
    assert "'sequential'" in line
    # with --schedule no scheduler runs, so every option is an error
    g = _graph_file(tmp_path, SMALL_OPS)
    s = _schedule_file(tmp_path, [["x", "a", "b", "c"]])
    line = run_error(
        capsys, "simulate", str(g), "--schedule", str(s), "--option", "sequential.graph_mode=1"
    )
    assert "'sequential'" in line and str(s) in line


def test_simulate_option_reaches_the_scheduler(capsys: pytest.CaptureFixture[str]) -> None:
    base = run_json(capsys, "simulate", "inception_v3", "--json")
    opt = run_json(
        capsys, "simulate", "inception_v3", "--option", "sequential.graph_mode=true", "--json"
    )
    assert opt["schedule"] == "sequential"
    assert opt["latency_ms"] < base["latency_ms"]  # graph mode: no per-kernel launch cost


def test_simulate_batch_and_dtype_of_a_model(capsys: pytest.CaptureFixture[str]) -> None:
    rt = ("--runtime", "cudnn")  # eager PyTorch is host-bound at batch 1 and 4 alike
    one = run_json(capsys, "simulate", "inception_v3", *rt, "--json")
    four = run_json(capsys, "simulate", "inception_v3", "--batch", "4", *rt, "--json")
    half = run_json(
        capsys, "simulate", "inception_v3", "--batch", "4", "--dtype", "fp16", *rt, "--json"
    )
    assert (one["batch"], four["batch"], one["format"]) == (1, 4, "model")
    assert four["latency_ms"] > one["latency_ms"] > 0
    assert half["latency_ms"] < four["latency_ms"]


def test_simulate_graph_file_has_fixed_batch_and_dtype(
    exported: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = run_json(capsys, "simulate", str(exported), "--batch", "1", "--json")
    assert out["format"] == "opgraph" and out["batch"] == 1
    assert "--batch 2" in run_error(capsys, "simulate", str(exported), "--batch", "2")
    assert "--dtype fp16" in run_error(capsys, "simulate", str(exported), "--dtype", "fp16")


@pytest.mark.parametrize(
    "content",
    [b"", b"\x00\x01garbage\xff", b"hello world", b"\xef\xbb\xbf{}"],
    ids=["empty", "binary", "text", "bom"],
)
@pytest.mark.parametrize("suffix", ["", ".json", ".bin"])
def test_simulate_unreadable_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, suffix: str
) -> None:
    p = tmp_path / f"junk{suffix}"
    p.write_bytes(content)
    assert str(p) in run_error(capsys, "simulate", str(p))


def test_simulate_onnx_without_the_onnx_package(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    p = tmp_path / "m.onnx"
    p.write_bytes(b"\x08\x07")
    assert "pip install 'simgpu[onnx]'" in run_error(capsys, "simulate", str(p))


def test_simulate_directory_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "dir.json"
    d.mkdir()
    assert str(d) in run_error(capsys, "simulate", str(d))


def test_missing_graph_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "no such file" in run_error(capsys, "simulate", str(tmp_path / "missing.json"))
    assert "no such file" in run_error(capsys, "simulate", "not_a_model_or_file")


def test_corrupt_graph_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "bad.json"
    p.write_text('{"format": "simgpu.opgraph",\n "ops": [\n')
    line = run_error(capsys, "simulate", str(p))
    assert "bad.json" in line and "line" in line and "column" in line


def test_not_a_graph_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "other.json"
    p.write_text('{"hello": "world"}')
    assert "not a simgpu op graph" in run_error(capsys, "simulate", str(p))


def test_graph_json_with_a_cycle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ops = [
        {"name": "x", "kind": "input", "shape": S},
        {"name": "loop_a", "kind": "add", "inputs": ["x", "loop_c"], "shape": S},
        {"name": "loop_b", "kind": "relu", "inputs": ["loop_a"], "shape": S},
        {"name": "loop_c", "kind": "relu", "inputs": ["loop_b"], "shape": S},
    ]
    line = run_error(capsys, "simulate", str(_graph_file(tmp_path, ops)))
    assert "cycle" in line and "loop_b" in line


def test_graph_json_with_a_bad_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ops = [
        *SMALL_OPS[:3],
        {"name": "c", "kind": "add", "inputs": ["a", "b"], "shape": [1, 64, 28, 27]},
    ]
    assert "op 'c'" in run_error(capsys, "simulate", str(_graph_file(tmp_path, ops)))


def test_schedule_missing_an_op(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    g = _graph_file(tmp_path, SMALL_OPS)
    s = _schedule_file(tmp_path, [["x", "a"], ["b"]])
    line = run_error(capsys, "simulate", str(g), "--schedule", str(s))
    assert "misses" in line and "c" in line.split("misses", 1)[1]


def test_schedule_breaking_a_dependency(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    g = _graph_file(tmp_path, SMALL_OPS)
    s = _schedule_file(tmp_path, [["x", "c", "a"], ["b"]])
    line = run_error(capsys, "simulate", str(g), "--schedule", str(s))
    assert "contradicts dependencies" in line


def test_corrupt_schedule_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    g = _graph_file(tmp_path, SMALL_OPS)
    s = tmp_path / "s.json"
    s.write_text('{"format": "simgpu.schedule", "kind": "streams", "streams": "x"}')
    assert "s.json" in run_error(capsys, "simulate", str(g), "--schedule", str(s))
    s.write_text("[")
    assert "s.json" in run_error(capsys, "simulate", str(g), "--schedule", str(s))


def test_schedule_and_scheduler_together(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    g = _graph_file(tmp_path, SMALL_OPS)
    s = _schedule_file(tmp_path, [["x", "a", "b", "c"]])
    assert "not both" in run_error(
        capsys, "simulate", str(g), "--schedule", str(s), "--scheduler", "sequential"
    )


def test_gpu_json_with_unknown_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gpu = tmp_path / "typo.json"
    gpu.write_text(json.dumps({"base": "v100", "hw_queue": 1}))
    line = run_error(capsys, "run", "inception_v3", "--gpu", str(gpu))
    assert "typo.json" in line and "hw_queue" in line


def test_gpu_json_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "no such file" in run_error(
        capsys, "run", "inception_v3", "--gpu", str(tmp_path / "nope.json")
    )


def test_unwritable_outputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = str(tmp_path / "no" / "dir" / "x.json")
    for flag in ("--trace", "--schedule-out"):
        assert "cannot write" in run_error(
            capsys, "run", "inception_v3", "--scheduler", "sequential", flag, bad
        )
    assert "cannot write" in run_error(capsys, "export", "inception_v3", "-o", bad)


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "inception_v3", "--batch", "0"],
        ["run", "inception_v3", "--batch", "x"],
        ["run"],
        [],
        ["frobnicate"],
    ],
)
def test_argparse_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    with pytest.raises(SystemExit) as ei:
        main(argv)
    assert ei.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err


def test_batch_zero_message(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "inception_v3", "--batch", "0"])
    assert "0 must be positive" in capsys.readouterr().err


@pytest.mark.parametrize("pattern", ["out_{scheduler}_{run}.json", "out_{scheduler}_{.json"])
def test_trace_pattern_keeps_other_braces_literally(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], pattern: str
) -> None:
    # only {scheduler} is a placeholder: other braces are part of the file name
    assert main(["run", "inception_v3", "--scheduler", "sequential", "--trace",
                 str(tmp_path / pattern)]) == 0  # fmt: skip
    expected = tmp_path / pattern.replace("{scheduler}", "sequential")
    assert json.loads(expected.read_text())["traceEvents"]


def test_gantt_with_unsupported_extension(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_error(
        capsys,
        "run",
        "inception_v3",
        "--scheduler",
        "sequential",
        "--gantt",
        str(tmp_path / "g.xyz"),
    )


def test_gpu_json_with_non_object_rates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gpu = tmp_path / "rates.json"
    gpu.write_text(json.dumps({"base": "v100", "peak_tflops": "fast"}))
    run_error(capsys, "run", "inception_v3", "--gpu", str(gpu))


def test_schedule_with_non_numeric_devices(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    g = _graph_file(tmp_path, SMALL_OPS)
    s = tmp_path / "s.json"
    s.write_text(
        json.dumps(
            {
                "format": "simgpu.schedule",
                "kind": "streams",
                "streams": [["x", "a", "b", "c"]],
                "devices": ["gpu0"],
            }
        )
    )
    run_error(capsys, "simulate", str(g), "--schedule", str(s))


def test_graph_with_out_of_range_norm_axis(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ops = [
        {"name": "x", "kind": "input", "shape": [2, 8]},
        {"name": "n", "kind": "layernorm", "inputs": ["x"], "shape": [2, 8], "attrs": {"axis": 5}},
    ]
    assert "op 'n'" in run_error(capsys, "simulate", str(_graph_file(tmp_path, ops)))


# --- issue 18: users' own models, help, metadata and outputs ----------------------------


def _tiny_onnx(path: Path) -> Path:
    """A two-node ONNX model (Conv, Relu) with a symbolic batch."""
    onnx = pytest.importorskip("onnx")
    import numpy as np
    from onnx import TensorProto as TP
    from onnx import helper as oh
    from onnx import numpy_helper as nh

    nodes = [
        oh.make_node("Conv", ["x", "w"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1] * 4),
        oh.make_node("Relu", ["c"], ["y"], name="relu"),
    ]
    g = oh.make_graph(
        nodes,
        "tiny",
        [oh.make_tensor_value_info("x", TP.FLOAT, ["N", 3, 32, 32])],
        [oh.make_tensor_value_info("y", TP.FLOAT, ["N", 8, 32, 32])],
        [nh.from_array(np.zeros((8, 3, 3, 3), np.float32), "w")],
    )
    onnx.save(oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)]), str(path))
    return path


def test_run_takes_graph_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`run FILE` for a simgpu graph JSON and an ONNX model, as for a built-in name."""
    g = _graph_file(tmp_path, SMALL_OPS)
    out = run_json(capsys, "run", str(g), "--scheduler", "sequential", "--scheduler", "lios",
                   "--json")  # fmt: skip
    assert out["format"] == "opgraph" and out["source"] == str(g) and out["ops"] == 4
    assert out["batch"] == 1 and out["image_size"] == 28  # a square NCHW input
    assert [r["status"] for r in out["results"]] == ["ok", "ok"]
    onnx_path = _tiny_onnx(tmp_path / "tiny.onnx")
    out = run_json(capsys, "run", str(onnx_path), "--scheduler", "sequential", "--batch", "4",
                   "--json")  # fmt: skip
    assert out["format"] == "onnx" and out["batch"] == 4 and out["image_size"] == 32
    text = run_ok(capsys, "run", str(onnx_path), "--scheduler", "sequential")
    assert "batch 1" in text and "sequential" in text
    err = run_error(capsys, "run", str(g), "--batch", "2")
    assert "fixed shapes" in err
    err = run_error(capsys, "run", str(onnx_path), "--image-size", "64")
    assert "--image-size applies to built-in models" in err
    assert "r50.json: no such file" in run_error(capsys, "run", "r50.json")
    assert "unknown model" in run_error(capsys, "run", "resnet_typo")


def test_run_json_reports_the_image_size(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_json(capsys, "run", "squeezenet1_1", "--scheduler", "sequential", "--json")
    assert out["image_size"] == MODELS["squeezenet1_1"].default_image_size == 224
    assert out["format"] == "model" and out["source"] is None
    out = run_json(capsys, "run", "squeezenet1_1", "--image-size", "64", "--scheduler",
                   "sequential", "--json")  # fmt: skip
    assert out["image_size"] == 64


def test_simulate_compares_several_schedulers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    g = _graph_file(tmp_path, SMALL_OPS)
    out = run_json(capsys, "simulate", str(g), "--scheduler", "all", "--json")
    assert [r["scheduler"] for r in out["results"]] == scheduler_names(single_gpu_only=True)
    text = run_ok(capsys, "simulate", str(g), "--scheduler", "sequential", "--scheduler", "lios")
    assert "speedup" in text and "lios" in text and "vs bound" in text
    # one scheduler keeps the single-schedule table
    one = run_json(capsys, "simulate", str(g), "--scheduler", "lios", "--json")
    assert one["schedule"] == "lios"


def test_run_prints_the_trace_files_it_wrote(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pattern = str(tmp_path / "x_{scheduler}.json")
    text = run_ok(capsys, "run", "squeezenet1_1", "--scheduler", "sequential", "--scheduler",
                  "lios", "--trace", pattern)  # fmt: skip
    lines = [ln for ln in text.splitlines() if ln.startswith("trace: ")]
    assert lines == [
        f"trace: {tmp_path / 'x_sequential.json'}",
        f"trace: {tmp_path / 'x_lios.json'}",
    ]
    assert "{scheduler}" not in text


def test_scheduler_error_is_not_prefixed_twice(capsys: pytest.CaptureFixture[str]) -> None:
    err = run_error(capsys, "run", "squeezenet1_1", "--scheduler", "lios", "--option",
                    "lios.streams=0")  # fmt: skip
    assert "lios: streams must be at least 1" in err
    assert "lios: lios:" not in err


def test_report_on_a_bad_file_says_what_to_give(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "x.csv"
    bad.write_text("a,b\n1,2\n")
    err = run_error(capsys, "report", str(bad))
    assert "not a simgpu sweep results file" in err
    assert "another output file" not in err and "written by `simgpu sweep`" in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"simgpu {version('simgpu')}"


HELP_COMMANDS = ("run", "simulate", "explain", "sweep", "multitenant", "export", "models",
                 "gpus", "machines", "schedulers", "runtimes", "report")  # fmt: skip


def test_every_flag_has_help() -> None:
    import argparse

    from simgpu.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = []
    for name in HELP_COMMANDS:
        for action in sub.choices[name]._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if not (action.help or "").strip():
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, missing


def test_models_table_has_flops_and_image_size(capsys: pytest.CaptureFixture[str]) -> None:
    table = run_ok(capsys, "models").splitlines()
    header = table[0].split()
    assert "GFLOPs" in header and "image" in header
    inc = next(ln for ln in table if ln.startswith("inception_v3 "))
    g = build_model("inception_v3")
    assert f"{g.flops / 1e9:.2f}" in inc.split() and "299" in inc.split()
    bert = next(ln for ln in table if ln.startswith("bert_base "))
    assert " - " in bert  # no image input


def test_schedulers_json_lists_options_and_whole_sentences(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import dataclasses

    from schedulers.base import discover

    data = run_json(capsys, "schedulers", "--json")
    by = {s["name"]: s for s in data}
    for name, info in discover().items():
        fields = {f.name: f for f in dataclasses.fields(info.cls) if f.init}
        assert [o["name"] for o in by[name]["options"]] == list(fields)
        for o in by[name]["options"]:
            f = fields[o["name"]]
            if f.default is not dataclasses.MISSING:
                assert o["default"] == f.default
            assert o["type"]
        assert by[name]["description"].rstrip().endswith((".", ")")), by[name]["description"]
    ios = {o["name"]: o for o in by["ios"]["options"]}
    assert ios["r"]["type"] == "int" and ios["r"]["default"] == fields_default("ios", "r")
    table = run_ok(capsys, "schedulers")
    hios = next(ln for ln in table.splitlines() if ln.startswith("hios "))
    assert hios.rstrip().endswith(".")  # not cut mid-sentence


def fields_default(sched: str, name: str) -> object:
    import dataclasses

    from schedulers.base import discover

    (f,) = [f for f in dataclasses.fields(discover()[sched].cls) if f.name == name]
    return f.default


def test_run_progress_only_on_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    """`run` prints a line per scheduler as it finishes on a terminal, nothing elsewhere."""
    import io

    from simgpu.cli import _Progress

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty, pipe = Tty(), io.StringIO()
    for stream in (tty, pipe):
        p = _Progress(2, stream)
        for n in ("a", "b"):
            p.start(n)
            p.finish(n, "1.000 ms")
    assert pipe.getvalue() == ""
    lines = tty.getvalue().split("\n")
    assert lines[0].startswith("[1/2] a ...\r") and lines[0].endswith("[1/2] a: 1.000 ms (0.0 s)")
    assert "[2/2] b: 1.000 ms" in lines[1]
    run_ok(capsys, "run", "squeezenet1_1", "--scheduler", "sequential", "--scheduler", "lios")
    assert capsys.readouterr().err == ""  # captured stderr is no terminal


def test_run_progress_on_a_pseudo_terminal() -> None:
    """End to end: stderr a pty gets one line per scheduler; stdout is the table."""
    import os
    import pty
    import select

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [*_cli(), "run", "squeezenet1_1", "--scheduler", "sequential", "--scheduler", "lios"],
        stdout=subprocess.PIPE, stderr=slave, text=True,
    )  # fmt: skip
    os.close(slave)
    out, _ = proc.communicate(timeout=120)
    err = b""
    while select.select([master], [], [], 0.5)[0]:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        err += chunk
    os.close(master)
    assert proc.returncode == 0
    text = err.decode()
    assert "[1/2] sequential:" in text and "[2/2] lios:" in text
    assert "[1/2]" not in out and "lios" in out
