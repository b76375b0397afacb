"""A model given by name or by file, one rule for every command and the Python API.

``run``, ``simulate``, ``sweep``, ``explain``, ``multitenant`` and the sweep's worker
processes all accept a built-in model name or a graph file (simgpu graph JSON, IOS graph
JSON or ONNX, told apart by content), so a user's own model is never second-class. The
sweep's rows hold the spec as given and each worker loads the file again by path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simgpu.errors import FormatError, SimGPUError
from simgpu.graph import OpGraph
from simgpu.output import printable


@dataclass
class LoadedGraph:
    """A graph and where it came from: ``format`` is "model", "opgraph", "ios" or "onnx";
    ``stages`` holds the schedule an IOS file carries (None otherwise)."""

    graph: OpGraph
    format: str
    stages: Any = None
    spec: str = ""

    @property
    def batch(self) -> int | None:
        g = self.graph
        return g.inputs[0].output_shape[0] if g.inputs and g.inputs[0].output_shape else None

    @property
    def dtype(self) -> str | None:
        return self.graph.inputs[0].dtype if self.graph.inputs else None


def is_graph_file(spec: str) -> bool:
    """Whether ``spec`` names a file rather than a built-in model: an existing path, or a
    name with a graph file's extension (so a missing ``r50.json`` says "no such file")."""
    from simgpu.models import MODELS

    if spec in MODELS and not Path(spec).is_file():
        return False
    return Path(spec).exists() or Path(spec).suffix.lower() in (".json", ".onnx")


def file_format(path: Path) -> str:
    """The file's format, "json" or "onnx", by content: JSON starts with a brace or a
    bracket, an ONNX ModelProto with field 1 (ir_version, a varint: byte 0x08); the
    extension decides what an unreadable file is reported as."""
    from simgpu.userfiles import read_bytes

    head = read_bytes(path)[:64]  # a regular file under the size limit, or one line
    if head.lstrip()[:1] in (b"{", b"["):
        return "json"
    if path.suffix.lower() == ".onnx" or head[:1] == b"\x08":
        return "onnx"
    if path.suffix.lower() == ".json":
        return "json"  # reported with the JSON parser's line and column
    raise FormatError(
        f"{path}: unrecognised file (not a simgpu graph JSON, an IOS graph JSON or an ONNX model)"
    )


def load_graph(
    spec: str,
    batch: int | None = None,
    image_size: int | None = None,
    dtype: str | None = None,
) -> LoadedGraph:
    """A built-in model or a graph file. None means "not given": a model's defaults
    (batch 1, its own image size, fp32), an ONNX model's own batch and dtype.

    ``batch``/``dtype`` rebuild IOS and ONNX graphs; a simgpu graph file has fixed
    shapes, so asking it for another batch or dtype is an error, as is an image size
    for any file (only built-in models are built at a chosen resolution)."""
    from simgpu.graph import read_json
    from simgpu.models import MODELS, build_model

    if not is_graph_file(spec):
        if spec in MODELS:
            g = build_model(spec, batch=batch or 1, image_size=image_size, dtype=dtype or "fp32")
            return LoadedGraph(g, "model", spec=spec)
        raise SimGPUError(
            f"{printable(spec)}: unknown model, and no such file (see `simgpu models`; a "
            "graph file is simgpu graph JSON, IOS graph JSON or ONNX)"
        )
    path = Path(spec)
    if image_size is not None:
        raise SimGPUError(
            f"{printable(spec)}: --image-size applies to built-in models; a graph file has "
            "its own shapes"
        )
    if file_format(path) == "onnx":
        from simgpu.models.onnx import load_onnx

        return LoadedGraph(load_onnx(path, batch=batch, dtype=dtype), "onnx", spec=spec)
    data = read_json(path)
    from simgpu.models.ios import is_ios, read_ios

    if is_ios(data):
        g, stages = read_ios(data, batch or 1, dtype or "fp32", source=spec)
        return LoadedGraph(g, "ios", stages, spec)
    g = OpGraph.from_json(data, source=spec)
    loaded = LoadedGraph(g, "opgraph", spec=spec)
    if batch is not None and batch != loaded.batch:
        raise SimGPUError(
            f"{spec}: a simgpu graph file has fixed shapes (batch {loaded.batch}); "
            f"--batch {batch} applies to models, IOS and ONNX files"
        )
    if dtype is not None and any(op.dtype != dtype for op in g):
        raise SimGPUError(f"{spec}: a simgpu graph file has fixed dtypes; --dtype {dtype} differs")
    return loaded


def image_size_of(loaded: LoadedGraph, asked: int | None = None) -> int | None:
    """The input resolution a run used: the one asked for, a model's default, or a
    file's square NCHW input (None for graphs without an image input)."""
    from simgpu.models import MODELS

    if asked is not None:
        return asked
    if loaded.format == "model":
        info = MODELS.get(loaded.spec)
        if info is not None:
            return info.default_image_size
    g = loaded.graph
    if len(g.inputs) == 1:
        shape = g.inputs[0].output_shape
        if len(shape) == 4 and shape[2] == shape[3]:
            return int(shape[2])
    return None
