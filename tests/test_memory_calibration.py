"""Calibration hooks of GPU memory (issue 17, part 4): per-op sizes overridden from the GPU
JSON; per-op and per-schedule peak memory recorded by `calibrate profile`, the plan and
the validation harness (on the fake device here, on a GPU in the marked tests); the
comparison of simulated with measured peaks; files from before all this unchanged."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from _cli import run_error, run_json
from _gpu import gpu_only

from calibrate.errors import CalibrationError
from calibrate.executor import plan, releases
from calibrate.fakedevice import FakeDevice
from calibrate.fidelity import build_report, format_report
from calibrate.plan import main as plan_main
from calibrate.profile import (
    OpProfile,
    add_memory_ops,
    memory_entry,
    op_peak_memory,
    read_memory_ops,
    read_table,
    write_table,
)
from calibrate.validate import (
    MEMORY_NOTE,
    format_table,
    resimulate,
    simulated_peak_memory,
    summarise,
)
from schedulers.base import run_scheduler
from simgpu.cli import main as simgpu_main
from simgpu.graph import Op, OpGraph
from simgpu.hardware import PRESETS, Machine, load_gpu
from simgpu.kernels import signature
from simgpu.memory import MB, tensors_of
from simgpu.models import build_model
from simgpu.program import Launch
from simgpu.schedule import schedule_to_json

V100 = PRESETS["v100-sxm2"]


def _chain() -> OpGraph:
    """x -> a (conv) -> b (relu) -> c (conv): small enough to count by hand."""
    return OpGraph(
        [
            Op("x", "input", (), (1, 16, 32, 32)),
            Op(
                "a",
                "conv",
                ("x",),
                (1, 32, 32, 32),
                attrs={"out_channels": 32, "kernel": 3, "padding": 1},
            ),
            Op("b", "relu", ("a",), (1, 32, 32, 32)),
            Op("c", "conv", ("b",), (1, 8, 32, 32), attrs={"out_channels": 8, "kernel": 1}),
        ],
        name="chain",
    )


# --- 1. overrides from the GPU JSON -----------------------------------------------------


def test_override_by_name_and_by_signature_changes_sizes_and_workspace() -> None:
    g = _chain()
    plain = tensors_of(g, V100)
    assert plain.size["b"] == 32 * 32 * 32 * 4
    sig = signature(g, "c")
    spec = V100.replace(
        memory={"ops": {"b": {"output_bytes": 1000}, sig: {"workspace_bytes": 5 * MB + 1}}}
    )
    t = tensors_of(g, spec)
    assert t.size["b"] == 1024  # rounded to the 512 B block
    assert t.workspace["c"] == 5 * MB + 512
    assert t.size["a"] == plain.size["a"] and t.workspace["a"] == plain.workspace["a"]
    # an entry by name wins over one by signature for the same op
    both = V100.replace(memory={"ops": {"c": {"workspace_bytes": 0}, sig: {"workspace_bytes": 4096}}})  # fmt: skip
    assert tensors_of(g, both).workspace["c"] == 0


def test_override_moves_the_peak_of_a_run() -> None:
    g = _chain()
    base = run_scheduler("sequential", g, Machine.single(V100)).memory
    big = 64 * MB
    spec = V100.replace(memory={"ops": {"c": {"workspace_bytes": big}}})
    over = run_scheduler("sequential", g, Machine.single(spec)).memory
    # while c runs: its input b, its output and the workspace, over the resident bytes
    t = tensors_of(g, spec)
    expect = t.resident() + t.size["b"] + t.size["c"] + big
    assert over.peak_allocated == max(expect, base.peak_allocated)
    assert over.peak_allocated >= base.peak_allocated + big - t.workspace.get("c", 0) - 4 * MB


def _gpu_file(tmp_path: Path, memory: object) -> str:
    p = tmp_path / "gpu.json"
    p.write_text(json.dumps({"base": "v100", "memory": memory}))
    return str(p)


@pytest.mark.parametrize(
    ("memory", "field"),
    [
        ({"ops": {"conv1": {"workspace_bytes": -4}}}, "memory.ops['conv1'].workspace_bytes"),
        ({"ops": {"conv1": {"output_bytes": 1.5}}}, "memory.ops['conv1'].output_bytes"),
        ({"ops": {"conv1": {"workspace": 1}}}, "memory.ops['conv1']: unknown key(s) workspace"),
        ({"ops": {"conv1": 7}}, "memory.ops['conv1'] must be a non-empty object"),
        ({"ops": []}, "memory.ops must be an object"),
        ({"block_bytes": 1000}, "memory.block_bytes must be a power of two"),
        ({"segments": 2}, "memory: unknown key(s) segments"),
        ([], "memory must be an object"),
    ],
)
def test_bad_memory_json_is_one_line_naming_the_field(tmp_path, capsys, memory, field) -> None:
    line = run_error(capsys, "run", "squeezenet1_1", "--scheduler", "sequential",
                     "--gpu", _gpu_file(tmp_path, memory))  # fmt: skip
    assert field in line


def test_cli_run_reports_the_overridden_peak(tmp_path, capsys) -> None:
    g = build_model("squeezenet1_1")
    plain = run_json(capsys, "run", "squeezenet1_1", "--scheduler", "sequential", "--json")
    op = next(n for n in g.topo_order if g[n].kind == "conv")
    gpu = _gpu_file(tmp_path, {"ops": {op: {"workspace_bytes": 256 * MB}}})
    over = run_json(capsys, "run", "squeezenet1_1", "--scheduler", "sequential", "--gpu", gpu,
                    "--json")  # fmt: skip

    def peak(doc: object) -> float:
        (row,) = doc["results"]  # type: ignore[index]
        return row["peak_memory_mb"]

    assert peak(over) >= 256 and peak(over) > peak(plain) + 200


# --- 2. what is measured: the GPU code on a recording stand-in for torch ----------------


class _FakeCuda:
    """torch.cuda's memory statistics over a scripted allocation history: ``fn`` calls
    :meth:`alloc`/:meth:`free`; the stand-in keeps allocated and peak as PyTorch does."""

    def __init__(self, held: int) -> None:
        self.allocated = held
        self.peak = held
        self.calls: list[str] = []

    def alloc(self, n: int) -> None:
        self.allocated += n
        self.peak = max(self.peak, self.allocated)

    def free(self, n: int) -> None:
        self.allocated -= n

    def synchronize(self, dev: object) -> None:
        self.calls.append("sync")

    def memory_allocated(self, dev: object) -> int:
        self.calls.append("allocated")
        return self.allocated

    def reset_peak_memory_stats(self, dev: object) -> None:
        self.calls.append("reset")
        self.peak = self.allocated

    def max_memory_allocated(self, dev: object) -> int:
        self.calls.append("max")
        return self.peak


class _Tensor:
    def __init__(self, cuda: _FakeCuda, n: int) -> None:
        self.n, self.cuda = n, cuda
        cuda.alloc(n)

    def untyped_storage(self) -> SimpleNamespace:
        return SimpleNamespace(nbytes=lambda: self.n)

    def __del__(self) -> None:
        self.cuda.free(self.n)


def test_op_peak_memory_counts_output_and_transients_not_inputs() -> None:
    cuda = _FakeCuda(held=10 * MB)  # the op's inputs and weights
    torch = SimpleNamespace(cuda=cuda)
    first = []

    def conv_relu() -> _Tensor:
        if not first:  # a library workspace allocated once and kept (cuBLAS's)
            first.append(_Tensor(cuda, 4 * MB))
        ws = _Tensor(cuda, 3 * MB)  # workspace
        pre = _Tensor(cuda, 1000)  # the pre-activation tensor
        del ws
        out = _Tensor(cuda, 1000)
        del pre
        return out

    m = op_peak_memory(torch, conv_relu, "cuda:0")
    # peak of this call over what was held before it: ws + pre (3 MiB + 1000 B), then
    # pre + out; the kept library workspace is not the op's
    assert m == {"peak_memory_bytes": 3 * MB + 1000, "output_bytes": 1000,
                 "workspace_bytes": 3 * MB + 1000 - 1024}  # fmt: skip
    i = cuda.calls.index("reset")
    assert cuda.calls[i - 1] == "allocated" and "max" in cuda.calls[i:]
    assert cuda.allocated == 14 * MB  # the output was dropped after measuring


def test_memory_entry_refuses_bad_figures() -> None:
    assert memory_entry(0, 0)["workspace_bytes"] == 0
    assert memory_entry(100, 4096)["workspace_bytes"] == 0  # never negative
    for bad in (-1, 1.5, True):
        with pytest.raises(CalibrationError, match="must be an integer >= 0"):
            memory_entry(bad, 0)  # type: ignore[arg-type]


def test_executor_keeps_each_output_until_its_last_reader() -> None:
    g = OpGraph(
        [
            Op("x", "input", (), (1, 8, 8, 8)),
            Op("a", "relu", ("x",), (1, 8, 8, 8)),
            Op("v", "reshape", ("a",), (1, 512), attrs={"shape": [1, 512]}),
            Op("b", "relu", ("a",), (1, 8, 8, 8)),
            Op("c", "relu", ("v",), (1, 512)),
            Op("d", "add", ("b", "a"), (1, 8, 8, 8)),
        ]
    )
    sched = run_scheduler("sequential", g, Machine.single(V100))
    steps = plan(sched.program, g)
    idx = {s.op: i for i, s in enumerate(steps) if s.action == "run"}
    assert "v" not in idx  # a view: no call
    drops = releases(steps, g)
    when = {op: i for i, ops in drops.items() for op in ops}
    # a is read by b, d and (through the view v) c: dropped after the last of them
    assert when["a"] == max(idx["b"], idx["c"], idx["d"])
    assert when["b"] == idx["d"]
    assert "c" not in when and "d" not in when  # graph outputs: held to the end of the run


# --- 2. the fake device and the plan record memory ----------------------------------------


def test_fake_device_memory_is_the_simulators_with_the_planted_intermediate() -> None:
    g = _chain()
    dev = FakeDevice()
    t = tensors_of(g, dev.gpu)
    m = dev.op_memory(g, "c")
    assert m["output_bytes"] == 8 * 32 * 32 * 4
    assert m["peak_memory_bytes"] == t.size["c"] + t.workspace["c"]
    fused = OpGraph([*(_chain()[n] for n in ("x", "a")),
                     Op("f", "conv", ("a",), (1, 8, 32, 32),
                        attrs={"out_channels": 8, "kernel": 1, "activation": "relu"})], name="fused")  # fmt: skip
    tf = tensors_of(fused, dev.gpu)
    mf = dev.op_memory(fused, "f")
    assert mf["workspace_bytes"] == tf.workspace["f"] + tf.size["f"]  # planted
    with pytest.raises(CalibrationError, match="no device work"):
        dev.op_memory(g, "x")
    run = run_scheduler("sequential", g, Machine.single(dev.gpu))
    got = dev.program_memory(run.program, g)["peak_memory_bytes"]
    assert got == simulated_peak_memory(run.program, g, dev.gpu) == t.sequential_peak() - t.resident()  # fmt: skip


@pytest.fixture(scope="module")
def dry(tmp_path_factory):
    """A short plan on the fake device: profile and validate squeezenet1_1, then fit."""
    out = tmp_path_factory.mktemp("memplan") / "fake"
    code = plan_main(["--out", str(out), "--dry-run", "--only", "profile", "--only", "validate",
                      "--profile", "squeezenet1_1", "--validate", "squeezenet1_1",
                      "--scheduler", "sequential", "--scheduler", "nimble"])  # fmt: skip
    return SimpleNamespace(out=out, code=code)


def test_plan_profile_records_op_memory_and_the_fit_writes_it(dry) -> None:
    assert dry.code == 0
    path = dry.out / "kernels-squeezenet1_1-b1.json"
    data = json.loads(path.read_text())
    g = build_model("squeezenet1_1")
    dev = FakeDevice()
    for e in data["ops"]:
        assert e | dev.op_memory(g, e["op"]) == e  # the fake's figures, written as they came
        assert e["workspace_bytes"] == max(0, e["peak_memory_bytes"] - (-(-e["output_bytes"] // 512) * 512))  # fmt: skip
    mem = read_memory_ops(path)
    assert set(mem) == set(read_table(path)) and len(mem) == len(data["ops"])
    cal = load_gpu(str(dry.out / "calibration.json"))
    assert cal.memory["ops"] == mem
    # the calibrated spec now carries the fused activations' intermediates
    fused = next(e for e in data["ops"] if g[e["op"]].attrs.get("activation"))
    assert tensors_of(g, cal).workspace[fused["op"]] == fused["workspace_bytes"]


def test_plan_validation_records_and_compares_peak_memory(dry, capsys) -> None:
    p = dry.out / "validation-squeezenet1_1.json"
    rec = json.loads(p.read_text())
    assert rec["peak_memory"] == MEMORY_NOTE
    for e in rec["schedules"]:
        assert e["measured_peak_memory_bytes"] > 0 and e["simulated_peak_memory_bytes"] > 0
    assert simgpu_main(["calibrate", "validate", "--recorded", str(p), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["memory_schedules"] == 2 and s["memory_mape"] > 0  # the planted intermediates
    # after the fit the measured op memories close most of the gap
    after = resimulate({**rec, "gpu": load_gpu(str(dry.out / "calibration.json")).to_json()})
    assert after["memory_mape"] < s["memory_mape"] / 2
    md = (dry.out / "summary.md").read_text()
    assert "## Peak memory" in md and "| squeezenet1_1 |" in md


class _NoMemory(FakeDevice):
    """A device without the memory primitives (a TorchDevice from before them)."""

    op_memory = None  # type: ignore[assignment]
    program_memory = None  # type: ignore[assignment]


@pytest.mark.parametrize("device", ["failing", "without"])
def test_plan_without_memory_readings_keeps_the_latencies(tmp_path, capsys, device) -> None:
    dev = FakeDevice(fail={"op_memory", "program_memory"}) if device == "failing" else _NoMemory()
    out = tmp_path / "o"
    assert plan_main(["--out", str(out), "--dry-run", "--only", "profile", "--only", "validate",
                      "--profile", "squeezenet1_1", "--validate", "squeezenet1_1",
                      "--scheduler", "sequential"], device=dev) == 0  # fmt: skip
    kt = json.loads((out / "kernels-squeezenet1_1-b1.json").read_text())
    assert "memory_ops" not in kt and all("peak_memory_bytes" not in e for e in kt["ops"])
    rec = json.loads((out / "validation-squeezenet1_1.json").read_text())
    (e,) = rec["schedules"]
    assert e["measured_ms"] > 0 and "measured_peak_memory_bytes" not in e
    if device == "failing":
        assert rec["memory_failures"] == {"sequential": "injected failure of program_memory (fake device)"}  # fmt: skip
        assert "injected failure of op_memory" in (out / "plan.log").read_text()
    else:
        assert "peak_memory" not in rec and "memory_failures" not in rec
        assert "no op_memory: op memory not measured" in (out / "plan.log").read_text()
    s = resimulate(rec)
    assert "memory_mape" not in s
    assert "memory" not in load_gpu(str(out / "calibration.json")).memory
    capsys.readouterr()


# --- 4. the validation harness ------------------------------------------------------------


def _record(measured_mem: dict[str, int | None]) -> dict:
    """A hand-made validation file: latencies as simulated (so their error is 0) and
    the given measured peaks (None: no memory field, as in older files)."""
    g = build_model("squeezenet1_1")
    entries = []
    for name, mem in measured_mem.items():
        r = run_scheduler(name, g, Machine.single(V100))
        e = {"scheduler": name, "measured_ms": r.latency_ms, "runtime": r.runtime,
             "schedule": schedule_to_json(r.schedule)}  # fmt: skip
        if mem is not None:
            e["measured_peak_memory_bytes"] = mem
        entries.append(e)
    return {"format": "simgpu.validation", "version": 1, "device": "Tesla V100-SXM2-16GB",
            "model": {"name": "squeezenet1_1", "batch": 1}, "gpu": V100.to_json(),
            "schedules": entries}  # fmt: skip


def _sequential_activation_peak() -> int:
    """The sequential schedule's peak beyond weights and inputs, by hand: one stream in
    the graph's order (its launch order, checked), :meth:`Tensors.sequential_peak`'s
    liveness."""
    g = build_model("squeezenet1_1")
    r = run_scheduler("sequential", g, Machine.single(V100))
    launched = list(dict.fromkeys(c.op for c in r.program.commands if isinstance(c, Launch)))
    assert launched == [n for n in g.topo_order if n in launched]
    t = tensors_of(g, V100)
    return t.sequential_peak(g.topo_order) - t.resident()


def test_memory_error_on_a_hand_made_file(tmp_path, capsys) -> None:
    sim = _sequential_activation_peak()
    data = _record({"sequential": 2 * sim, "greedy": None})
    s = resimulate(data)
    rows = {r["scheduler"]: r for r in s["per_schedule"]}
    seq = rows["sequential"]
    assert seq["simulated_peak_memory_bytes"] == sim
    assert seq["measured_peak_memory_mb"] == pytest.approx(2 * sim / MB)
    assert seq["memory_error_pct"] == pytest.approx(-50.0)
    assert "memory_error_pct" not in rows["greedy"]
    assert s["memory_schedules"] == 1 and s["memory_mape"] == pytest.approx(50.0)
    text = format_table(s)
    assert "mem error %" in text and "-50.0" in text and "peak memory MAPE 50.0%" in text
    greedy_line = next(x for x in text.splitlines() if x.startswith("greedy"))
    assert greedy_line.count("—") == 3
    # fidelity: the same comparison beside the latency row
    d = tmp_path / "rec"
    d.mkdir()
    (d / "validation-squeezenet1_1.json").write_text(json.dumps(data))
    rep = build_report([d], logo=lambda ds: {})
    (row,) = rep.rows
    m = row.extra["memory"]
    assert m["n"] == 1 and m["mape"] == pytest.approx(50.0)
    assert m["worst"] == {"source": "validation-squeezenet1_1.json:sequential", "ratio": pytest.approx(0.5)}  # fmt: skip
    assert "peak memory of 1 schedule(s)" in format_report(rep)
    assert json.loads(json.dumps(rep.to_json()))["rows"][0]["extra"]["memory"]["n"] == 1


def test_zero_measured_peak_has_no_error_figure() -> None:
    s = summarise([{"scheduler": "a", "measured_ms": 1.0, "simulated_ms": 1.0,
                    "measured_peak_memory_bytes": 0, "simulated_peak_memory_bytes": 512}])  # fmt: skip
    assert s["per_schedule"][0]["memory_error_pct"] is None and s["memory_mape"] is None
    assert "n/a" in format_table(s)


def test_old_files_validate_unchanged(tmp_path, capsys) -> None:
    data = _record({"sequential": None, "greedy": None})
    s = resimulate(data)
    assert "memory_schedules" not in s and "memory_mape" not in s
    assert all("memory_error_pct" not in r for r in s["per_schedule"])
    head = format_table(s).splitlines()[0]
    assert head.split() == ["scheduler", "measured", "ms", "simulated", "ms", "error", "%"]
    d = tmp_path / "old"
    d.mkdir()
    (d / "validation-squeezenet1_1.json").write_text(json.dumps(data))
    (row,) = build_report([d], logo=lambda ds: {}).rows
    assert "memory" not in row.extra


@pytest.mark.parametrize(
    ("entry", "top", "msg"),
    [
        (
            {"measured_peak_memory_bytes": -1},
            {},
            "measured_peak_memory_bytes: expected a non-negative integer",
        ),
        (
            {"measured_peak_memory_bytes": 1.5},
            {},
            "measured_peak_memory_bytes: expected a non-negative integer",
        ),
        ({"simulated_peak_memory_bytes": "x"}, {}, "simulated_peak_memory_bytes: expected"),
        ({"peak_memory_byte": 1}, {}, "unknown field 'peak_memory_byte'"),
        ({}, {"peak_memory": 3}, "peak_memory: expected a non-empty string"),
        ({}, {"memory_failures": []}, '"memory_failures" must be an object'),
    ],
)
def test_bad_memory_fields_in_a_validation_file(tmp_path, capsys, entry, top, msg) -> None:
    data = _record({"sequential": None})
    data["schedules"][0].update(entry)
    data.update(top)
    p = tmp_path / "v.json"
    p.write_text(json.dumps(data))
    line = run_error(capsys, "calibrate", "validate", "--recorded", str(p))
    assert msg in line


# --- 3. kernel tables and the calibration's memory.ops ----------------------------------------


def test_kernel_table_memory_ops_round_trip_into_a_gpu_json(tmp_path, capsys) -> None:
    g = _chain()
    k = {"name": "k", "grid": 4, "threads": 128, "regs": 32, "smem": 0, "duration_us": 3.0}
    profiles = [
        OpProfile(signature(g, "a"), "a", 3.0, 5, (k,), 3 * MB, 131072),
        OpProfile(signature(g, "c"), "c", 3.0, 5, (k,)),  # memory not measured
    ]
    path = write_table(tmp_path / "kt.json", profiles, {"model": "chain"})
    data = json.loads(path.read_text())
    assert data["ops"][0]["workspace_bytes"] == 3 * MB - 131072
    assert "peak_memory_bytes" not in data["ops"][1]
    mem = read_memory_ops(path)
    assert mem == {signature(g, "a"): {"output_bytes": 131072, "workspace_bytes": 3 * MB - 131072}}  # fmt: skip
    # old tables (no memory_ops) read as none
    old = tmp_path / "old.json"
    old.write_text(json.dumps({k: v for k, v in data.items() if k != "memory_ops"}))
    assert read_memory_ops(old) == {}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**data, "memory_ops": {"a": {"output_bytes": -3}}}))
    with pytest.raises(CalibrationError, match=r"memory_ops\['a'\].output_bytes"):
        read_memory_ops(bad)
    # calibrate fit writes them under memory.ops, keeping what the base had
    gpu = add_memory_ops({"base": "v100", "memory": {"block_bytes": 512, "ops": {"x": {"output_bytes": 0}}}}, mem)  # fmt: skip
    assert gpu["memory"]["block_bytes"] == 512 and set(gpu["memory"]["ops"]) == {"x", *mem}
    out = tmp_path / "cal.json"
    assert simgpu_main(["calibrate", "fit", "--base", "v100", "--kernel-table", str(path),
                        "-o", str(out)]) == 0  # fmt: skip
    assert "1 measured op memories" in capsys.readouterr().out
    cal = load_gpu(str(out))
    assert cal.memory["ops"] == mem
    assert tensors_of(g, cal).workspace["a"] == 3 * MB - 131072


# --- on a GPU -------------------------------------------------------------------------------


@pytest.mark.gpu
@gpu_only
def test_op_and_schedule_memory_on_the_gpu() -> None:
    """On a real GPU: an op allocates at least its output; a schedule's measured peak
    holds at least two activations at once (an op's input and output), eager and
    captured, and is of the simulated figure's order (library workspaces differ)."""
    import torch

    from calibrate.executor import Executor
    from calibrate.profile import build, op_call

    g = _chain()
    dev = torch.device("cuda", 0)
    fn = build(op_call(g, "a"), torch, dev)  # type: ignore[arg-type]
    m = op_peak_memory(torch, fn, dev)
    act = 32 * 32 * 32 * 4
    assert m["output_bytes"] == act
    assert m["peak_memory_bytes"] >= act
    for name in ("sequential", "nimble"):  # eager, then a CUDA Graph
        r = run_scheduler(name, g, Machine.single(V100))
        measured = Executor(r.program, g).peak_memory()
        sim = simulated_peak_memory(r.program, g, V100, r.timeline)
        assert 2 * act <= measured <= sim + 256 * MB, (name, measured, sim)
