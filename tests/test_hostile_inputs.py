"""Hostile inputs end in one clean line, never a wrong answer or invalid JSON (issue 20)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from _cli import run_error, run_json

from simgpu.cli import main
from simgpu.errors import SimGPUError
from simgpu.output import dumps


def _gpu(tmp_path: Path, **fields) -> str:
    p = tmp_path / "gpu.json"
    p.write_text(json.dumps({"base": "v100", **fields}))
    return str(p)


@pytest.mark.parametrize(
    "field, value, why",
    [
        ("launch_latency_us", 1.7e308, "launch_latency_us must be at most 1e+06"),
        ("compute_efficiency", 100, "compute_efficiency must be at most 1"),
        ("dram_efficiency", 1.5, "dram_efficiency must be at most 1"),
        ("sm_count", 10**12, "sm_count must be at most 4096"),
        ("dram_gbps", 1e300, "dram_gbps must be at most 1e+06"),
        ("sm_count", True, "sm_count must be a number"),
        ("sm_count", 80.5, "sm_count must be an integer"),
        ("peak_tflops", {"fp32": 15.7, "fp16_tensr": 125.0}, "unknown precision(s) 'fp16_tensr'"),
    ],
)
def test_gpu_figures_out_of_range_are_refused(tmp_path, capsys, field, value, why) -> None:
    line = run_error(capsys, "run", "squeezenet1_1", "--scheduler", "sequential",
                     "--gpu", _gpu(tmp_path, **{field: value}))  # fmt: skip
    assert why in line


def test_the_largest_accepted_costs_still_print_valid_json(tmp_path, capsys) -> None:
    big = {f: 1e6 for f in ("launch_latency_us", "launch_api_us", "kernel_gap_us")}
    out = run_json(capsys, "run", "squeezenet1_1", "--scheduler", "sequential", "--json",
                   "--gpu", _gpu(tmp_path, **big))  # fmt: skip
    assert math.isfinite(out["results"][0]["latency_ms"])


def test_json_output_is_never_infinity_or_nan() -> None:
    assert json.loads(dumps({"x": 1.5})) == {"x": 1.5}
    for bad in (math.inf, -math.inf, math.nan):
        with pytest.raises(SimGPUError, match="not a finite number"):
            dumps({"latency_ms": bad})


# --- files: bounded, strict, one line ------------------------------------------------------


@pytest.mark.parametrize("command", [["simulate"], ["replay"]])
def test_a_device_or_a_fifo_is_refused_without_reading(tmp_path, capsys, command) -> None:
    import os

    fifo = tmp_path / "f.json"
    os.mkfifo(fifo)  # reading it would block forever
    for p in ("/dev/zero", str(fifo)):
        line = run_error(capsys, *command, p)
        assert "not a regular file" in line or "unrecognised file" in line, line


def test_json_nested_100000_deep_is_one_line(tmp_path, capsys) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    for argv in (["simulate", str(deep)], ["replay", str(deep)],
                 ["run", "squeezenet1_1", "--gpu", str(deep)],
                 ["calibrate", "validate", "--recorded", str(deep)]):  # fmt: skip
        line = run_error(capsys, *argv)
        assert "nested deeper than 64 levels" in line, (argv, line)


def test_a_file_over_the_size_limit_is_refused(tmp_path, capsys, monkeypatch) -> None:
    big = tmp_path / "big.json"
    big.write_text('{"pad": "' + "x" * (2 * 2**20) + '"}')
    monkeypatch.setenv("SIMGPU_MAX_FILE_MB", "1")
    line = run_error(capsys, "simulate", str(big))
    assert "larger than the 1 MiB limit" in line and "SIMGPU_MAX_FILE_MB" in line


def test_a_gzip_bomb_trace_is_refused(tmp_path, capsys, monkeypatch) -> None:
    import gzip

    bomb = tmp_path / "t.json.gz"
    bomb.write_bytes(gzip.compress(b" " * (3 * 2**20)))
    monkeypatch.setenv("SIMGPU_MAX_FILE_MB", "1")
    line = run_error(capsys, "replay", str(bomb))
    assert "decompresses to more than the 1 MiB limit" in line


# --- no silent coercion in graph files ----------------------------------------------------


@pytest.fixture(scope="module")
def graph_json(tmp_path_factory) -> dict:
    from simgpu.models import build_model

    return build_model("squeezenet1_1", image_size=64).to_json()


def _mutated(tmp_path: Path, graph: dict, op_index: int, **change) -> str:
    import copy

    d = copy.deepcopy(graph)
    op = d["ops"][op_index]
    for k, v in change.items():
        if k.startswith("attr_"):
            op["attrs"][k[5:]] = v
        else:
            op[k] = v
    p = tmp_path / "g.json"
    p.write_text(json.dumps(d))
    return str(p)


@pytest.mark.parametrize(
    "change, why",
    [
        ({"shape": [1, 3, 64.0, 64]}, "shape[2]: expected a positive integer, got 64.0"),
        ({"shape": [1, 3, 8.9, 64]}, "shape[2]: expected a positive integer, got 8.9"),
        ({"shape": [True, 3, 64, 64]}, "shape[0]: expected a positive integer, got True"),
        ({"name": ["conv"]}, "ops[0].name: expected a non-empty string"),
        ({"kind": {"conv": 1}}, "kind: expected a non-empty string"),
        ({"inputs": [["input"]]}, "inputs[0]: expected a non-empty string"),
        ({"strid": 2}, "ops[0] ('input'): unknown field 'strid'"),
        ({"attrs": {"stride": 2}}, "unknown attribute(s) 'stride' of a input op"),
        ({"attrs": {"x_mine": [1, {"a": 2}]}}, None),  # a note: kept, never read
    ],
)
def test_op_fields_are_strict(tmp_path, capsys, graph_json, change, why) -> None:
    i = next(i for i, o in enumerate(graph_json["ops"]) if o["kind"] == "input")
    path = _mutated(tmp_path, graph_json, i, **change)
    if why is None:
        run_json(capsys, "simulate", str(path), "--json")
        return
    line = run_error(capsys, "simulate", path)
    assert why in line


@pytest.mark.parametrize(
    "attr, value",
    [("out_channels", "8"), ("out_channels", 8.0), ("out_channels", True),
     ("kernel", [3.5, 3.5]), ("kernel", ["3", "3"]), ("groups", 1.0), ("stride", [1, 1, 1])],
)  # fmt: skip
def test_conv_attributes_are_strict(tmp_path, capsys, graph_json, attr, value) -> None:
    i = next(i for i, o in enumerate(graph_json["ops"]) if o["kind"] == "conv")
    line = run_error(
        capsys, "simulate", _mutated(tmp_path, graph_json, i, **{f"attr_{attr}": value})
    )
    assert f"attribute {attr} must be an integer" in line


# --- numbers that are not figures ---------------------------------------------------------


def test_sweep_timeout_must_be_finite(tmp_path, capsys) -> None:
    line = run_error(capsys, "sweep", "--model", "squeezenet1_1", "--timeout", "inf",
                     "-o", str(tmp_path / "r.csv"))  # fmt: skip
    assert "timeout must be a positive number of seconds" in line


@pytest.mark.parametrize("spec", ["poisson:1e-300", "poisson:1e12", "periodic:1e-9"])
def test_arrival_rates_outside_any_workload_are_refused(capsys, spec) -> None:
    line = run_error(capsys, "multitenant", "squeezenet1_1", "--arrival", spec,
                     "--duration", "10")  # fmt: skip
    assert "takes" in line and spec in line


@pytest.mark.parametrize("bad", ["-5.0", "nan", "inf", "0.0"])
def test_a_report_refuses_a_row_whose_latency_is_not_a_figure(tmp_path, capsys, bad) -> None:
    from simgpu.cli import main
    from simgpu.sweep import read_results

    out = tmp_path / "r.csv"
    assert main(["sweep", "--model", "squeezenet1_1", "--image-size", "64", "--scheduler",
                 "sequential", "--scheduler", "greedy", "--quiet", "-o", str(out)]) == 0  # fmt: skip
    capsys.readouterr()
    rows = read_results(out)
    header = out.read_text().splitlines()[0]
    cols = header.split(",")
    lines = [header]
    for r in rows:
        if r["scheduler"] == "greedy":
            r["latency_ms"] = bad
        lines.append(",".join(r[c] for c in cols))
    out.write_text("\n".join(lines) + "\n")
    line = run_error(capsys, "report", str(out), "--out", str(tmp_path / "rep"))
    assert "latency_ms of an ok row must be a positive number" in line


@pytest.mark.parametrize(
    "model_change, entry_change, why",
    [
        ({"batch": 1.9}, {}, "model.batch: expected a positive integer, got 1.9"),
        ({"batch": True}, {}, "model.batch: expected a positive integer, got True"),
        ({"name": ["squeezenet1_1"]}, {}, "model.name: expected a non-empty string"),
        ({}, {"measured_ms": True}, "schedules[0].measured_ms: expected a positive number"),
        ({}, {"measured_ms": "1.5"}, "schedules[0].measured_ms: expected a positive number"),
        ({}, {"scheduler": {"x": 1}}, "schedules[0].scheduler: expected a non-empty string"),
        ({"batsh": 2}, {}, "model: unknown field 'batsh'"),
        ({}, {"runtme": "cudnn"}, "schedules[0]: unknown field 'runtme'"),
        ({}, {"runtime": 3}, "schedules[0].runtime: expected a non-empty string"),
    ],
)
def test_recorded_validations_are_strict(tmp_path, capsys, model_change, entry_change, why):
    from schedulers.base import run_scheduler
    from simgpu.hardware import Machine, preset
    from simgpu.models import build_model
    from simgpu.schedule import schedule_to_json

    gpu = preset("v100")
    r = run_scheduler("sequential", build_model("squeezenet1_1"), Machine.single(gpu))
    entry = {"scheduler": "sequential", "measured_ms": 1.0, "runtime": r.runtime,
             "schedule": schedule_to_json(r.schedule), **entry_change}  # fmt: skip
    data = {"format": "simgpu.validation", "version": 1, "gpu": gpu.to_json(),
            "model": {"name": "squeezenet1_1", "batch": 1, **model_change},
            "schedules": [entry]}  # fmt: skip
    p = tmp_path / "v.json"
    p.write_text(json.dumps(data))
    line = run_error(capsys, "calibrate", "validate", "--recorded", str(p))
    assert why in line


# --- sizes: a clear limit before the work, never a hang ---------------------------------


@pytest.mark.parametrize(
    "argv, why",
    [
        (["run", "squeezenet1_1", "--batch", "1000000000"], "batch is 1,000,000,000, over"),
        (["run", "squeezenet1_1", "--image-size", "100000"], "image size is 100,000, over"),
        (["run", "squeezenet1_1", "--scheduler", "lios", "--option", "lios.streams=100000000"],
         "option lios.streams is 100,000,000, over"),
        (["run", "squeezenet1_1", "--scheduler", "heft", "--option", "heft.streams=1000000"],
         "option heft.streams is 1,000,000, over"),
        (["multitenant", "squeezenet1_1", "--requests", "100000000"], "--requests is"),
        (["multitenant", "squeezenet1_1", "--budget", "1000000000"], "--budget is"),
    ],
)  # fmt: skip
def test_sizes_over_a_limit_stop_at_once_with_the_way_to_raise_it(capsys, argv, why) -> None:
    line = run_error(capsys, *argv)
    assert why in line and "SIMGPU_MAX_" in line


def test_a_huge_op_in_a_graph_file_is_refused(tmp_path, capsys, graph_json) -> None:
    i = next(i for i, o in enumerate(graph_json["ops"]) if o["kind"] == "conv")
    op = graph_json["ops"][i]
    big = _mutated(tmp_path, graph_json, i, attr_out_channels=10**9,
                   shape=[op["shape"][0], 10**9, *op["shape"][2:]])  # fmt: skip
    line = run_error(capsys, "simulate", big)
    assert "its output's elements" in line and "SIMGPU_MAX_OP_ELEMENTS" in line


def test_limits_are_raised_by_the_environment(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("SIMGPU_MAX_GRID_ROWS", "2")
    line = run_error(capsys, "sweep", "--model", "squeezenet1_1", "--scheduler", "sequential",
                     "--batch", "1", "--batch", "2", "--batch", "3", "-o", str(tmp_path / "r.csv"))  # fmt: skip
    assert "number of combinations is 3, over the limit of 2" in line
    monkeypatch.setenv("SIMGPU_MAX_BATCH", "8192")
    out = run_json(capsys, "run", "squeezenet1_1", "--image-size", "32", "--batch", "5000",
                   "--scheduler", "sequential", "--runtime", "cudnn", "--json")  # fmt: skip
    assert out["batch"] == 5000


def test_a_schedule_file_with_too_many_streams_is_refused(tmp_path, capsys) -> None:
    data = {"format": "simgpu.schedule", "version": 1, "graph_mode": False,
            "kind": "streams", "streams": [[f"op{i}"] for i in range(100_000)]}  # fmt: skip
    p = tmp_path / "s.json"
    p.write_text(json.dumps(data))
    line = run_error(capsys, "simulate", "squeezenet1_1", "--schedule", str(p))
    assert "number of streams is 100,000, over the limit" in line


# --- outputs: written as named or one line -------------------------------------------------


def test_a_chart_goes_to_exactly_the_path_named(tmp_path, capsys) -> None:
    noext = tmp_path / "chart"
    run_json(capsys, "run", "squeezenet1_1", "--scheduler", "sequential", "--json",
             "--gantt", str(noext))  # fmt: skip
    assert noext.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "chart.png").exists()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")
def test_a_full_disk_is_one_line(capsys) -> None:
    import subprocess
    import sys

    line = run_error(capsys, "run", "squeezenet1_1", "--scheduler", "sequential",
                     "--gantt", "/dev/full")  # fmt: skip
    assert "No space left on device" in line
    assert not Path("/dev/full.png").exists()
    with open("/dev/full", "w") as full:
        p = subprocess.run([sys.executable, "-m", "simgpu.cli", "run", "squeezenet1_1",
                            "--scheduler", "sequential", "--json"], stdout=full,
                           stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [
        "simgpu: error: cannot write output: No space left on device"
    ]


def test_an_unwritable_output_is_one_line(tmp_path, capsys) -> None:
    (tmp_path / "f").write_text("a file, not a folder")
    for argv in (["export", "squeezenet1_1", "-o", str(tmp_path / "f" / "g.json")],
                 ["run", "squeezenet1_1", "--scheduler", "sequential",
                  "--schedule-out", str(tmp_path / "f" / "s.json")],
                 ["run", "squeezenet1_1", "--scheduler", "sequential",
                  "--trace", str(tmp_path / "f" / "t.json")]):  # fmt: skip
        line = run_error(capsys, *argv)
        assert "cannot write" in line and "Not a directory" in line


def test_control_characters_in_names_are_escaped(tmp_path, capsys) -> None:
    line = run_error(capsys, "run", "evil\x1b[31m\nname")
    assert "\x1b" not in line and "\\x1b" in line and "\\n" in line


@pytest.mark.parametrize(
    "entry, why",
    [
        ({"grid": True, "threads": 128, "duration_us": 5.0}, "grid must be an integer"),
        ({"grid": 8.9, "threads": 128, "duration_us": 5.0}, "grid must be an integer"),
        ({"grid": 80, "threads": 128, "duration_us": "5"}, "duration_us must be a number"),
        ({"grid": 10**12, "threads": 128, "duration_us": 5.0}, "SIMGPU_MAX_KERNEL_BLOCKS"),
    ],
)
def test_kernel_table_entries_are_strict(tmp_path, capsys, entry, why) -> None:
    from simgpu.kernels import signature
    from simgpu.models import build_model

    g = build_model("squeezenet1_1", image_size=64)
    op = next(n for n in g.ops if g[n].kind == "conv")
    line = run_error(capsys, "run", "squeezenet1_1", "--image-size", "64", "--scheduler",
                     "sequential", "--gpu",
                     _gpu(tmp_path, kernel_table={signature(g, op): [entry]}))  # fmt: skip
    assert why in line


def test_a_trace_kernel_beyond_cuda_s_grid_limits_is_refused(tmp_path, capsys) -> None:
    ev = [{"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 1, "tid": 1,
           "ts": 0.0, "dur": 5.0, "args": {"correlation": 1}},
          {"ph": "X", "cat": "kernel", "name": "k", "pid": 0, "tid": 7, "ts": 10.0, "dur": 20.0,
           "args": {"correlation": 1, "stream": 7, "device": 0, "grid": [10**12, 1, 1],
                    "block": [128, 1, 1]}}]  # fmt: skip
    p = tmp_path / "t.json"
    p.write_text(json.dumps({"traceEvents": ev}))
    line = run_error(capsys, "replay", str(p), "--gpu", "v100")
    assert "beyond what CUDA launches" in line


@pytest.mark.parametrize(
    "change, why",
    [
        ({"numSms": "80"}, "numSms: expected an integer in [1, 4096], got '80'"),
        ({"numSms": 80.5}, "numSms: expected an integer in [1, 4096], got 80.5"),
        ({"computeMajor": True}, "computeMajor: expected an integer in [1, 99], got True"),
        (
            {"maxThreadsPerMultiprocessor": 2048.0},
            "maxThreadsPerMultiprocessor: expected a positive integer",
        ),
        ({"totalGlobalMem": "32GB"}, "totalGlobalMem: expected a positive number"),
        ({"name": ["V100"]}, "name: expected a non-empty string"),
    ],
)
def test_a_trace_s_device_properties_are_not_coerced(tmp_path, capsys, change, why) -> None:
    """int("80"), int(80.5) or int(True) on a trace's deviceProperties made another GPU
    or a traceback (issue 20)."""
    ev = [{"ph": "X", "cat": "kernel", "name": "k", "pid": 0, "tid": 7, "ts": 10.0, "dur": 20.0,
           "args": {"correlation": 1, "stream": 7, "device": 0, "grid": [80, 1, 1],
                    "block": [128, 1, 1]}}]  # fmt: skip
    props = {"id": 0, "name": "Tesla V100-SXM2-32GB", "numSms": 80, "computeMajor": 7,
             "computeMinor": 0, "totalGlobalMem": 34089730048, **change}  # fmt: skip
    p = tmp_path / "t.json"
    p.write_text(json.dumps({"traceEvents": ev, "deviceProperties": [props]}))
    line = run_error(capsys, "replay", str(p))
    assert why in line


@pytest.mark.parametrize(
    "where, why",
    [
        ((), "the graph: unknown field(s) 'pading' for graph"),
        (("blocks", 0), "block 0: unknown field(s) 'pading' for block"),
        (("blocks", 0, "exit_node"), "IOS node 'stem': unknown field(s) 'pading' for conv"),
        (("input",), "unknown field(s) 'pading' for placeholder"),
    ],
)
def test_ios_files_refuse_unknown_fields(tmp_path, capsys, where, why) -> None:
    """A misspelt field of an IOS node (``pading``) was ignored, so the conv ran unpadded
    (issue 20): every object of the format refuses fields it does not have."""
    from simgpu.models.builder import GraphBuilder
    from simgpu.models.ios import write_ios

    b = GraphBuilder("block")
    x = b.input((1, 16, 16, 16))
    s = b.conv(x, 32, 1, name="stem")
    b.concat([b.conv(s, 16, 1, name="a"), s], name="cat")
    doc = write_ios(b.build())
    obj = doc
    for k in where:
        obj = obj[k]
    obj["pading"] = [1, 1]
    p = tmp_path / "ios.json"
    p.write_text(json.dumps(doc))
    assert why in run_error(capsys, "simulate", str(p))


@pytest.mark.parametrize(
    "edit, why",
    [
        (lambda t: t[:-1] + ', "ops": []}', "key 'ops' given twice in one object"),
        (
            lambda t: t.replace('"version": 1', '"version": 1e400', 1),
            "the number 1e400 is too large",
        ),
        (lambda t: t.replace('"version": 1', '"version": ' + "1" * 5000, 1), "Exceeds the limit"),
    ],
)
def test_json_that_python_would_bend_is_refused(tmp_path, capsys, graph_json, edit, why) -> None:
    """A key given twice (the last silently won), 1e400 (read as infinity) and a
    5,000-digit integer (a ValueError traceback) are each one clean line."""
    p = tmp_path / "g.json"
    p.write_text(edit(json.dumps(graph_json)))
    assert why in run_error(capsys, "simulate", str(p))


@pytest.mark.parametrize("argv", [["--gpu", ""], ["--trace", " "], ["--runtime", ""]])
def test_a_blank_argument_is_an_error_not_the_default(capsys, argv) -> None:
    """``--gpu ""`` ran on the default V100 (issue 20's silent coercion, on the CLI)."""
    with pytest.raises(SystemExit) as e:
        main(["run", "squeezenet1_1", "--scheduler", "sequential", *argv])
    assert e.value.code == 2
    assert "an empty value" in capsys.readouterr().err


@pytest.mark.parametrize("target", ["/dev/zero", "dir", "deep"])
def test_every_reader_refuses_devices_directories_and_deep_nesting(
    tmp_path, capsys, target
) -> None:
    """The sweep grid, results CSV and RandWire graph files were read without the
    size, kind and nesting checks of the JSON readers (/dev/zero ran out of memory)."""
    if target == "dir":
        path = str(tmp_path)
    elif target == "deep":
        path = str(tmp_path / "deep.toml")
        Path(path).write_text("models = " + "[" * 50_000 + "]" * 50_000 + "\n")
    else:
        path = target
    line = run_error(capsys, "sweep", "--grid", path, "-o", str(tmp_path / "r.csv"))
    assert any(w in line for w in ("not a regular file", "is a directory", "nested too deeply"))
    if target != "deep":
        assert any(w in run_error(capsys, "report", path) for w in ("not a regular", "directory"))


@pytest.mark.parametrize(
    "argv",
    [
        ["--duration", "1e308"],
        ["--requests", "1000000"],
        ["--arrival", "poisson:1e7", "--duration", "1e6"],
        ["--requests", "2000", "--budget", "1000"],
    ],
)
def test_a_multitenant_run_too_large_to_finish_is_refused_before_it_starts(capsys, argv) -> None:
    """``--duration 1e308`` and a million requests ran for hours within every per-field
    limit: the comparison's work (requests x kernels x runs) is estimated first."""
    line = run_error(capsys, "multitenant", "squeezenet1_1", "squeezenet1_1",
                     "--image-size", "64", *argv)  # fmt: skip
    assert "SIMGPU_MAX_SIMULATED_KERNELS" in line


def test_the_work_estimate_counts_what_is_simulated() -> None:
    from simgpu.hardware import preset
    from simgpu.kernels import KernelCache
    from simgpu.models import build_model
    from simgpu.multitenant.compare import kernels_to_simulate
    from simgpu.tenants import Workload, make_tenants

    g = build_model("squeezenet1_1", image_size=64)
    gpu = preset("v100")
    per_request = sum(len(KernelCache(gpu).lower(g, op)) for op in g.topo_order)
    w = Workload(make_tenants([g, g]), requests=3)
    runs = 2 + (5 + 1)  # two baselines, and the search: its budget and its start
    got = kernels_to_simulate(w, gpu, ["sequential", "multistream", "search"], budget=5)
    assert got == 2 * 3 * per_request * runs


def test_a_scheduler_s_own_schedule_is_held_to_the_stream_limit(tmp_path, capsys) -> None:
    """Nimble on 20,000 independent ops made 20,000 streams and lowering's vector clocks
    ran for hours: the limit holds for every schedule, not only for schedule files."""
    ops = [{"name": "input", "kind": "input", "inputs": [], "shape": [1, 8]}]
    ops += [{"name": f"r{i}", "kind": "relu", "inputs": ["input"], "shape": [1, 8]}
            for i in range(1100)]  # fmt: skip
    p = tmp_path / "wide.json"
    p.write_text(json.dumps({"format": "simgpu.opgraph", "version": 1, "name": "w", "ops": ops}))
    line = run_error(capsys, "simulate", str(p), "--scheduler", "nimble")
    assert "number of streams is 1,100, over the limit of 1,024" in line


def test_a_machine_of_ten_thousand_gpus_is_refused(tmp_path, capsys) -> None:
    p = tmp_path / "m.json"
    p.write_text(json.dumps({"name": "big", "gpus": ["v100"] * 10_000, "links": []}))
    line = run_error(capsys, "run", "squeezenet1_1", "--scheduler", "hios", "--machine", str(p))
    assert "the number of GPUs is 10,000, over the limit of 128 (set SIMGPU_MAX_GPUS" in line


@pytest.mark.parametrize(
    "option, why",
    [
        ("autograph.max_nodes=1000000000000", "over the limit of 100,000 (set SIMGPU_MAX_BUDGET"),
        ("autograph.alpha=inf", "autograph.alpha: must be a finite number"),
        ("autograph.relax=nan", "must be a finite number"),
    ],
)
def test_scheduler_options_are_finite_and_bounded(capsys, option, why) -> None:
    """``autograph.max_nodes=10**12`` searched for hours and ``alpha=inf`` made every
    cost infinite and still returned a schedule: a float option is finite, a search
    budget bounded."""
    line = run_error(capsys, "run", "squeezenet1_1", "--image-size", "64",
                     "--scheduler", "autograph", "--option", option)  # fmt: skip
    assert why in line


@pytest.mark.parametrize(
    "option, why",
    [
        ("optimal.max_ops=200", "optimal.max_ops must be 1..20"),
        ("optimal.max_nodes=1000000000000", "optimal.max_nodes must be 1..10,000,000"),
    ],
)
def test_the_exact_search_cannot_be_asked_for_days(capsys, option, why) -> None:
    """``optimal.max_ops=200`` enumerated 2^40 subsets of a 40-op graph, whatever its
    node budget: the sizes it can finish are the only ones it takes."""
    line = run_error(capsys, "run", "squeezenet1_1", "--image-size", "64",
                     "--scheduler", "optimal", "--option", option)  # fmt: skip
    assert why in line


def test_ios_at_r_and_s_no_search_finishes_is_refused_at_once(capsys) -> None:
    """``ios.r=64 ios.s=64`` enumerated every connected group of up to 64 ops of a part,
    for hours: the group and ending counts are bounded and the error names the way out."""
    line = run_error(capsys, "run", "inception_v3", "--scheduler", "ios",
                     "--option", "ios.r=64", "--option", "ios.s=64")  # fmt: skip
    assert "too many to search exactly; lower ios.r" in line
