"""Fuzzing: single-value mutations of valid files of every format, through the CLI.

Each mutation must end in success (exit 0) or one clean ``simgpu: error:`` line (exit 2),
never a traceback, within a time bound. A few examples per format run in CI; for long
runs::

    python -m pytest tests/test_fuzz.py --hypothesis-profile=fuzz

(``fuzz``: 2,000 examples per format, no deadline but a per-run limit.)
"""

from __future__ import annotations

import copy
import io
import json
import math
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simgpu.cli import main

# the loaded profile decides (pytest loads --hypothesis-profile before collecting): a
# handful per format in CI, the fuzz profile's count for long runs
LONG = settings.default.max_examples >= 1000
CI = settings(
    max_examples=settings.default.max_examples if LONG else 12,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
LIMIT_S = 60.0  # one command on one mutated file

HOSTILE: list[Any] = [
    None, True, False, 0, -1, 1, 8.9, -0.5, 1e308, -1e308, 2**63, 10**12, "", "x", "8",
    "false", "NaN", [], [0], [1.5, 2.5], {}, {"a": 1}, [[[[[]]]]], "\x1b[31m\n",
]  # fmt: skip


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value in a JSON document (capped per list, so big files stay fast)."""
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:6]):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def mutations(draw: st.DrawFn, doc: Any) -> Any:
    """``doc`` with one value replaced by a hostile one, or one key or item removed."""
    new = copy.deepcopy(doc)
    paths = [p for p in _paths(new) if p]
    path = draw(st.sampled_from(paths))
    parent = new
    for k in path[:-1]:
        parent = parent[k]
    if draw(st.booleans()) and isinstance(parent, dict | list):
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(st.sampled_from(HOSTILE))
    return new


def run_cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    t0 = time.perf_counter()
    with redirect_stdout(io.StringIO()), redirect_stderr(err):
        rc = main(argv)
    assert time.perf_counter() - t0 < LIMIT_S, f"{argv}: took too long"
    return rc, err.getvalue()


def check_outcome(rc: int, err: str, doc: Any) -> None:
    if rc == 0:
        return
    lines = err.strip().splitlines()
    assert rc == 2, (rc, err, doc)
    assert len(lines) == 1 and lines[0].startswith("simgpu: error: "), (err, doc)
    assert "Traceback" not in err


# --- the valid files ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, tuple[Path, Any]]:
    from schedulers.base import run_scheduler
    from simgpu.hardware import Machine, load_machine, preset
    from simgpu.models import build_model
    from simgpu.models.ios import write_ios
    from simgpu.schedule import schedule_to_json

    d = tmp_path_factory.mktemp("fuzz")
    g = build_model("squeezenet1_1", image_size=64)
    gpu = preset("v100")
    r = run_scheduler("greedy", g, Machine.single(gpu))
    docs: dict[str, Any] = {
        "graph": g.to_json(),
        "schedule": schedule_to_json(r.schedule),
        "gpu": {"base": "v100", "name": "mine", "launch_api_us": 6.0, "hw_queues": 4,
                "peak_tflops": {"fp32": 15.7, "fp16_tensor": 125.0}},
        "machine": load_machine("2xv100-nvlink").to_json(),
        "ios": write_ios(_ios_block()),
        "validation": {"format": "simgpu.validation", "version": 1, "gpu": gpu.to_json(),
                       "model": {"name": "squeezenet1_1", "batch": 1, "image_size": 64},
                       "schedules": [{"scheduler": "greedy", "measured_ms": 0.5,
                                      "runtime": r.runtime,
                                      "schedule": schedule_to_json(r.schedule)}]},
        "trace": {"traceEvents": [
            {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 1, "tid": 1,
             "ts": 0.0, "dur": 5.0, "args": {"correlation": 1}},
            {"ph": "X", "cat": "kernel", "name": "k", "pid": 0, "tid": 7, "ts": 10.0,
             "dur": 20.0, "args": {"correlation": 1, "stream": 7, "device": 0,
                                   "grid": [80, 1, 1], "block": [128, 1, 1],
                                   "registers per thread": 32, "shared memory": 0}}],
            "deviceProperties": [{"id": 0, "name": "Tesla V100-SXM2-32GB", "numSms": 80,
                                  "computeMajor": 7, "computeMinor": 0}]},
    }  # fmt: skip
    out = {}
    for name, doc in docs.items():
        p = d / f"{name}.json"
        p.write_text(json.dumps(doc))
        out[name] = (p, doc)
    return out


def _ios_block() -> Any:
    """A small Inception-style block IOS's format can hold (NCHW, no flatten or ceil)."""
    from simgpu.models.builder import GraphBuilder

    b = GraphBuilder("block")
    x = b.input((1, 16, 16, 16))
    s = b.conv(x, 32, 1, name="stem")
    a = b.conv(s, 16, 1, name="a")
    c = b.conv(s, 16, 3, padding=1, name="c")
    p = b.pool(s, "max", 3, 1, 1, name="p")
    b.concat([a, c, p], name="cat")
    return b.build()


def _argv(kind: str, path: str) -> list[str]:
    return {
        "graph": ["simulate", path, "--json"],
        "schedule": ["simulate", str(Path(path).with_name("graph.json")), "--schedule", path,
                     "--json"],
        "gpu": ["run", "squeezenet1_1", "--image-size", "64", "--scheduler", "sequential",
                "--gpu", path, "--json"],
        "machine": ["run", "squeezenet1_1", "--image-size", "64", "--scheduler", "hios",
                    "--machine", path, "--json"],
        "ios": ["simulate", path, "--json"],
        "validation": ["calibrate", "validate", "--recorded", path, "--json"],
        "trace": ["replay", path, "--json"],
    }[kind]  # fmt: skip


@pytest.mark.parametrize(
    "kind", ["graph", "schedule", "gpu", "machine", "ios", "validation", "trace"]
)
def test_the_valid_files_run(files, kind: str) -> None:
    path, _ = files[kind]
    rc, err = run_cli(_argv(kind, str(path)))
    assert rc == 0, err


@pytest.mark.parametrize(
    "kind", ["graph", "schedule", "gpu", "machine", "ios", "validation", "trace"]
)
@CI
@given(data=st.data())
def test_every_mutation_succeeds_or_is_one_clean_line(files, kind: str, data) -> None:
    path, doc = files[kind]
    bad = data.draw(mutations(doc))
    p = path.with_name(f"mut-{kind}.json")
    p.write_text(json.dumps(bad, allow_nan=True))
    rc, err = run_cli(_argv(kind, str(p)))
    check_outcome(rc, err, bad)


# --- unknown fields -----------------------------------------------------------------------

# maps whose keys are data, not field names: a kernel table's op signatures
FREE_FORM = {("gpu", "kernel_table"), ("validation", "gpu", "kernel_table")}


def _at(doc: Any, path: tuple) -> Any:
    for k in path:
        doc = doc[k]
    return doc


@pytest.mark.parametrize("kind", ["graph", "schedule", "gpu", "machine", "ios", "validation"])
def test_an_unknown_field_anywhere_is_an_error(files, kind: str) -> None:
    """Every object of every format refuses a field it does not have, at any depth: a
    misspelt field would otherwise silently mean its default."""
    path, doc = files[kind]
    seen = set()
    for p in _paths(doc):
        shape = (kind, *("#" if isinstance(k, int) else k for k in p))
        if not isinstance(_at(doc, p), dict) or shape in seen or shape in FREE_FORM:
            continue
        seen.add(shape)
        bad = copy.deepcopy(doc)
        _at(bad, p)["zz_unknown"] = 1
        q = path.with_name(f"unknown-{kind}.json")
        q.write_text(json.dumps(bad))
        rc, err = run_cli(_argv(kind, str(q)))
        assert rc == 2 and "zz_unknown" in err, (shape, err)
    assert seen


# --- ONNX ---------------------------------------------------------------------------------


def _onnx_model() -> Any:
    """A small ONNX network with a branch, a concat and a classifier head."""
    import numpy as np
    from onnx import TensorProto as TP
    from onnx import helper as oh
    from onnx import numpy_helper as nh

    def w(name: str, *shape: int) -> Any:
        return nh.from_array(np.zeros(shape, np.float32), name)

    nodes = [
        oh.make_node("Conv", ["x", "w1"], ["a"], name="c1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        oh.make_node("Relu", ["a"], ["b"], name="r1"),
        oh.make_node("Conv", ["b", "w2"], ["c"], name="c2", kernel_shape=[1, 1], strides=[1, 1]),
        oh.make_node("MaxPool", ["b"], ["d"], name="p1", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                     strides=[1, 1]),
        oh.make_node("Concat", ["c", "d"], ["e"], name="cat", axis=1),
        oh.make_node("GlobalAveragePool", ["e"], ["f"], name="gap"),
        oh.make_node("Flatten", ["f"], ["g"], name="fl", axis=1),
        oh.make_node("Gemm", ["g", "w3", "b3"], ["y"], name="fc", transB=1),
    ]  # fmt: skip
    graph = oh.make_graph(
        nodes,
        "fuzz",
        [oh.make_tensor_value_info("x", TP.FLOAT, ["N", 3, 16, 16])],
        [oh.make_tensor_value_info("y", TP.FLOAT, ["N", 10])],
        [w("w1", 8, 3, 3, 3), w("w2", 8, 8, 1, 1), w("w3", 10, 16), w("b3", 10)],
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


ONNX_INTS = [0, -1, 1, 2, 5, 10**9, -(2**40), 2**62]


@st.composite
def onnx_mutations(draw: st.DrawFn, model: Any) -> bytes:
    """The model with one attribute, dimension, name or op type changed, or its bytes cut
    or flipped."""
    m = copy.deepcopy(model)
    g = m.graph
    what = draw(st.sampled_from(["attr", "dim", "init", "name", "op", "bytes", "drop"]))
    if what == "attr":
        node = draw(st.sampled_from([n for n in g.node if n.attribute]))
        a = draw(st.sampled_from(list(node.attribute)))
        if a.ints:
            i = draw(st.integers(0, len(a.ints) - 1))
            a.ints[i] = draw(st.sampled_from(ONNX_INTS))
            if draw(st.booleans()):
                del a.ints[draw(st.integers(0, len(a.ints) - 1))]
        else:
            a.i = draw(st.sampled_from(ONNX_INTS))
    elif what == "dim":
        dims = g.input[0].type.tensor_type.shape.dim
        d = dims[draw(st.integers(0, len(dims) - 1))]
        d.dim_value = draw(st.sampled_from(ONNX_INTS))
    elif what == "init":
        t = draw(st.sampled_from(list(g.initializer)))
        t.dims[draw(st.integers(0, len(t.dims) - 1))] = draw(st.sampled_from(ONNX_INTS))
    elif what == "name":
        node = draw(st.sampled_from(list(g.node)))
        node.input[draw(st.integers(0, len(node.input) - 1))] = draw(
            st.sampled_from(["", "nowhere", "y", node.output[0]])
        )
    elif what == "op":
        node = draw(st.sampled_from(list(g.node)))
        node.op_type = draw(st.sampled_from(["Conv", "Add", "Softmax", "Loop", "", "\x1b[31m"]))
    elif what == "drop":
        del g.node[draw(st.integers(0, len(g.node) - 1))]
    data = m.SerializeToString()
    if what == "bytes":
        i = draw(st.integers(0, len(data) - 1))
        if draw(st.booleans()):
            data = data[:i]
        else:
            data = data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1 :]
    return data


@CI
@given(data=st.data())
def test_every_onnx_mutation_succeeds_or_is_one_clean_line(tmp_path_factory, data) -> None:
    pytest.importorskip("onnx")
    d = _onnx_dir(tmp_path_factory)
    p = d / "mut.onnx"
    p.write_bytes(data.draw(onnx_mutations(_onnx_model())))
    rc, err = run_cli(["simulate", str(p), "--json"])
    check_outcome(rc, err, str(p))


_ONNX_DIR: list[Path] = []


def _onnx_dir(factory: Any) -> Path:
    if not _ONNX_DIR:
        _ONNX_DIR.append(factory.mktemp("onnx"))
    return _ONNX_DIR[0]


def test_the_valid_onnx_model_runs(tmp_path) -> None:
    pytest.importorskip("onnx")
    p = tmp_path / "ok.onnx"
    p.write_bytes(_onnx_model().SerializeToString())
    rc, err = run_cli(["simulate", str(p), "--json"])
    assert rc == 0, err


# --- sweep grids (TOML) -------------------------------------------------------------------

GRID = {"models": ["squeezenet1_1"], "image_sizes": [64], "batches": [1], "gpus": ["v100"],
        "schedulers": ["sequential", "greedy"], "options": {"greedy": {"max_ops": [2]}}}  # fmt: skip


def toml_value(v: Any) -> str:
    """A value in TOML's syntax (inline tables for objects; None has no TOML form)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return (
            "nan" if v != v else ("inf" if v == math.inf else "-inf" if v == -math.inf else repr(v))
        )
    if isinstance(v, str):
        return json.dumps(v)  # TOML's basic strings take JSON's escapes
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v if x is not None) + "]"
    return (
        "{"
        + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items() if x is not None)
        + "}"
    )


def toml_document(doc: dict[str, Any]) -> str:
    return "".join(f"{json.dumps(k)} = {toml_value(v)}\n" for k, v in doc.items() if v is not None)


def test_the_valid_grid_runs(tmp_path) -> None:
    p = tmp_path / "g.toml"
    p.write_text(toml_document(GRID))
    rc, err = run_cli(["sweep", "--grid", str(p), "-o", str(tmp_path / "r.csv"), "--quiet"])
    assert rc == 0, err


@CI
@given(data=st.data())
def test_every_grid_mutation_succeeds_or_is_one_clean_line(tmp_path_factory, data) -> None:
    d = _onnx_dir(tmp_path_factory)
    bad = data.draw(mutations(GRID))
    p = d / "mut.toml"
    p.write_text(toml_document(bad))
    out = d / "mut.csv"
    out.unlink(missing_ok=True)
    rc, err = run_cli(["sweep", "--grid", str(p), "-o", str(out), "--quiet", "--workers", "1"])
    check_outcome(rc, err, bad)
