"""ONNX import: a ``.onnx`` model as an OpGraph, so any exported network can be simulated.

Needs the optional ``onnx`` package (``pip install 'simgpu[onnx]'``). Each ONNX node
becomes one op (Split one ``slice`` per output) named after the node; initializers,
``Constant``/``ConstantOfShape`` nodes and shape ops on constants (folded at import, as
an exporter's constant folding would) become parameters of the ops that read them (a
weight, a bias, a scale), never ops. BatchNormalization's running mean and variance are
buffers, not parameters (PyTorch's count). Shapes come from our own op kinds' inference, checked node by node
against ``onnx.shape_inference`` wherever ONNX knows the shape too, so a mapping that
drifts from ONNX semantics fails loudly instead of simulating the wrong tensor sizes.

Nothing is dropped silently: a node that cannot be mapped (an unknown operator, a
custom domain, a weight that is not a constant, asymmetric padding that changes the
output size...) is collected, and the import fails with one line listing every such
node with its type, name and reason.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from simgpu.errors import FormatError, GraphError
from simgpu.graph import Op, OpGraph
from simgpu.ops import DTYPE_BYTES, Shape, kind_of
from simgpu.schema import shown
from simgpu.userfiles import read_bytes

if TYPE_CHECKING:  # pragma: no cover
    import onnx

INSTALL_HINT = "reading ONNX models needs the 'onnx' package: pip install 'simgpu[onnx]'"

# ONNX TensorProto element types we can simulate
_DTYPES = {1: "fp32", 10: "fp16", 16: "bf16", 11: "fp64", 3: "int8"}

# unary elementwise operators without a kind of their own: FLOPs per element
_UNARY = {
    "Abs": 1,
    "Neg": 1,
    "Reciprocal": 1,
    "Floor": 1,
    "Ceil": 1,
    "Round": 1,
    "Sign": 1,
    "LeakyRelu": 2,
    "ThresholdedRelu": 2,
    "HardSigmoid": 3,
    "HardSwish": 4,
    "Sqrt": 4,
    "Exp": 4,
    "Log": 4,
    "Elu": 4,
    "Selu": 4,
    "Celu": 4,
    "Softsign": 3,
    "Softplus": 5,
    "Sin": 4,
    "Cos": 4,
    "Erf": 8,
    "Mish": 10,
}
_OWN_KIND = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Gelu": "gelu"}
# binary operators: the kind for two tensors (``op`` attr where the kind's name differs)
# and the FLOPs per element against a constant operand
_BINARY = {
    "Add": ("add", 1),
    "Sub": ("add", 1),
    "Mul": ("mul", 1),
    "Div": ("mul", 4),
    "Max": ("add", 1),
    "Min": ("add", 1),
    "Pow": ("mul", 8),
}


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise FormatError(INSTALL_HINT) from None
    return onnx


class Unmappable(Exception):
    """One node this importer cannot represent (collected, then reported together)."""


# constants up to this many elements keep their values when folded (shapes, scales);
# larger ones (weights made by ConstantOfShape, reshaped weights) keep only their shape
SMALL_CONST = 1 << 16


@dataclass(frozen=True)
class _Const:
    """A constant computed at import (a folded shape op, a ConstantOfShape): its shape,
    and its values where small enough to hold (None: only the shape is known)."""

    dims: tuple[int, ...]
    value: Any = None


def load_onnx(
    src: str | Path | bytes | onnx.ModelProto,
    batch: int | None = None,
    dtype: str | None = None,
) -> OpGraph:
    """An ONNX model (a path, its bytes or a ``ModelProto``) as an OpGraph.

    ``batch`` replaces the leading dimension of every graph input (a symbolic batch
    dimension defaults to 1); ``dtype`` overrides the model's element type (e.g. to
    simulate an fp32 export in fp16)."""
    onnx = _onnx()
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch <= 0):
        raise GraphError(f"batch must be a positive integer, got {batch!r}")
    if dtype is not None and dtype not in DTYPE_BYTES:
        raise GraphError(f"unknown dtype {dtype!r} (known: {', '.join(DTYPE_BYTES)})")
    if isinstance(src, onnx.ModelProto):
        model, source = src, src.graph.name or "<onnx model>"
    elif isinstance(src, bytes | bytearray):
        model, source = _parse(onnx, bytes(src), "<onnx bytes>"), "<onnx bytes>"
    else:
        p = Path(src)
        model, source = _parse(onnx, read_bytes(p), str(p)), str(p)
    _check(onnx, model, source)
    name = model.graph.name or (Path(source).stem if source[:1] != "<" else "onnx_model")
    return _Importer(onnx, model, source, batch, dtype).run(name)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0].strip() if text else type(e).__name__


def _parse(onnx: Any, data: bytes, source: str) -> Any:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as e:  # protobuf raises DecodeError (and others) on garbage bytes
        raise FormatError(f"{source}: not a valid ONNX model ({_first_line(e)})") from None
    _check_text(model.graph, source)
    return model


def _check_text(graph: Any, source: str) -> None:
    """Protobuf hands a string field that is not UTF-8 back as bytes; a name must be
    text, or it reaches outputs (JSON, tables) as something they cannot hold."""
    named = [("the graph's name", graph.name)]
    for n in graph.node:
        named += [("a node's name", n.name), ("a node's op_type", n.op_type),
                  ("a node's domain", n.domain)]  # fmt: skip
        named += [("a node's input", x) for x in n.input]
        named += [("a node's output", x) for x in n.output]
        named += [("an attribute's name", a.name) for a in n.attribute]
    for vi in [*graph.input, *graph.output, *graph.value_info, *graph.initializer]:
        named.append(("a tensor's name", vi.name))
    for what, v in named:
        if not isinstance(v, str):
            raise FormatError(f"{source}: {what} is not UTF-8 text ({shown(v)})")


def _check(onnx: Any, model: Any, source: str) -> None:
    """Garbage can parse as an (almost) empty protobuf: the checker tells it apart."""
    if not model.graph.node:
        raise FormatError(f"{source}: not a valid ONNX model (its graph has no nodes)")
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # onnx.checker.ValidationError, or C++ errors as RuntimeError
        raise FormatError(f"{source}: not a valid ONNX model ({_first_line(e)})") from None


def _pairs(v: Sequence[int], n: int = 2, least: int = 1) -> tuple[int, ...]:
    """The first ``n`` values of an int-list attribute, each at least ``least`` (a kernel,
    stride or dilation of 0 cannot be run; ``least=0`` for paddings)."""
    out = tuple(int(x) for x in v[:n])
    if any(x < least for x in out):
        raise Unmappable(f"values {list(out)} must be at least {least}")
    return out


class _Importer:
    def __init__(
        self, onnx: Any, model: Any, source: str, batch: int | None, dtype: str | None
    ) -> None:
        self.onnx = onnx
        self.model = model
        self.g = model.graph
        self.source = source
        self.batch = batch
        self.dtype = dtype
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.consts: dict[str, Any] = {}  # tensor name -> TensorProto (values read lazily)
        self.tensor_op: dict[str, str] = {}  # tensor name -> op producing it
        self.ops: dict[str, Op] = {}
        self.failed: set[str] = set()  # tensors whose producer could not be mapped
        self.problems: list[str] = []
        self.onnx_shapes: dict[str, tuple[int, ...]] = {}
        self.orig_batch: int | None = None

    # -- driver -------------------------------------------------------------------------

    def run(self, name: str) -> OpGraph:
        for t in self.g.initializer:
            self.consts[t.name] = t
        self._inputs()
        self._infer_onnx_shapes()
        used = {i for n in self.g.node for i in n.input if i}
        for idx, node in enumerate(self.g.node):
            self._node(idx, node, used)
        if self.problems:
            raise GraphError(
                f"{self.source}: cannot map {len(self.problems)} ONNX operator(s): "
                + "; ".join(self.problems)
            )
        if not self.ops:
            raise GraphError(f"{self.source}: the model has no tensor inputs to simulate")
        return OpGraph(self.ops.values(), name=name)

    def _inputs(self) -> None:
        for vi in self.g.input:
            if vi.name in self.consts:
                continue  # an initializer listed as an input (IR < 4): a parameter
            tt = vi.type.tensor_type
            label = f"graph input '{vi.name}'"
            dtype = _DTYPES.get(tt.elem_type)
            if dtype is None:
                name = self.onnx.TensorProto.DataType.Name(tt.elem_type)
                self.problems.append(f"{label} (element type {name} is not simulated)")
                self.failed.add(vi.name)
                continue
            if not tt.HasField("shape"):
                self.problems.append(f"{label} (its shape is not given)")
                self.failed.add(vi.name)
                continue
            dims = []
            for i, d in enumerate(tt.shape.dim):
                if d.HasField("dim_value") and d.dim_value > 0:
                    dims.append(d.dim_value)
                    if i == 0 and self.orig_batch is None:
                        self.orig_batch = d.dim_value
                elif d.HasField("dim_value"):  # 0 or negative: no tensor, not batch 1
                    self.problems.append(f"{label} (dimension {i} is {d.dim_value})")
                    self.failed.add(vi.name)
                    break
                elif i == 0:  # a symbolic batch: 1, or --batch
                    dims.append(1)
                else:
                    self.problems.append(
                        f"{label} (dimension {i} {d.dim_param or '?'!r} is not fixed; "
                        "only the batch dimension may be symbolic)"
                    )
                    self.failed.add(vi.name)
                    break
            else:
                if not dims:
                    self.problems.append(f"{label} (a scalar input has nothing to simulate)")
                    self.failed.add(vi.name)
                    continue
                if self.batch is not None:
                    dims[0] = self.batch
                op_name = self._unique(vi.name)
                self.ops[op_name] = Op(op_name, "input", (), tuple(dims), self.dtype or dtype)
                self.tensor_op[vi.name] = op_name

    def _infer_onnx_shapes(self) -> None:
        """ONNX's own shape inference at our input shapes, to cross-check ours."""
        m = self.onnx.ModelProto()
        m.CopyFrom(self.model)
        # shapes the file declares are for its own batch: let ONNX infer them afresh
        m.graph.ClearField("value_info")
        for vi in m.graph.output:
            vi.type.tensor_type.ClearField("shape")
        for vi in m.graph.input:
            op = self.ops.get(self.tensor_op.get(vi.name, ""))
            if op is None:
                continue
            for d, v in zip(vi.type.tensor_type.shape.dim, op.output_shape, strict=True):
                d.Clear()
                d.dim_value = v
        try:
            inferred = self.onnx.shape_inference.infer_shapes(m, data_prop=True)
        except Exception:  # inference is only a cross-check; the importer's own decides
            return
        for vi in [*inferred.graph.value_info, *inferred.graph.output]:
            dims = vi.type.tensor_type.shape.dim
            if dims and all(d.HasField("dim_value") for d in dims):
                self.onnx_shapes[vi.name] = tuple(d.dim_value for d in dims)

    def _node(self, idx: int, node: Any, used: set[str]) -> None:
        label = f"{node.op_type} '{node.name or node.output[0]}'"
        outs = [o for o in node.output if o]
        if node.domain not in ("", "ai.onnx"):
            self.problems.append(f"{node.domain}.{label} (custom operator domain)")
            self.failed.update(outs)
            return
        mapper = _MAPPERS.get(node.op_type)
        if mapper is None:
            self.problems.append(label)
            self.failed.update(outs)
            return
        if any(i in self.failed for i in node.input if i):
            self.failed.update(outs)  # its producer is already reported
            return
        base = node.name or f"{node.op_type}_{idx}"
        try:
            for i in node.input:
                if i and i not in self.consts and i not in self.tensor_op:
                    raise Unmappable(f"input '{i}' is not produced by any node")
            extra = [o for o in node.output[1:] if o and o in used]
            if extra and node.op_type not in ("Split",):
                raise Unmappable(f"its extra output '{extra[0]}' is used (training mode?)")
            if not _fold(self, node):
                mapper(self, node, base)
            for o in outs:
                if o in self.tensor_op and o in self.onnx_shapes:
                    ours = self.ops[self.tensor_op[o]].output_shape
                    if ours != self.onnx_shapes[o]:
                        raise Unmappable(
                            f"simgpu infers shape {list(ours)} for '{o}', ONNX infers "
                            f"{list(self.onnx_shapes[o])}"
                        )
        except Unmappable as e:
            self.problems.append(f"{label} ({e})")
            self.failed.update(outs)
        except GraphError as e:
            self.problems.append(f"{label} ({e})")
            self.failed.update(outs)
        except (TypeError, ValueError, IndexError, KeyError) as e:  # malformed attributes
            self.problems.append(f"{label} (malformed: {type(e).__name__}: {_first_line(e)})")
            self.failed.update(outs)

    # -- helpers for mappers ------------------------------------------------------------

    def _unique(self, name: str) -> str:
        out, i = name, 0
        while out in self.ops:
            i += 1
            out = f"{name}_{i}"
        return out

    def attr(self, node: Any, name: str, default: Any = None) -> Any:
        for a in node.attribute:
            if a.name == name:
                v = self.onnx.helper.get_attribute_value(a)
                return v.decode() if isinstance(v, bytes) else v
        return default

    def is_const(self, tensor: str) -> bool:
        return tensor in self.consts

    def const_shape(self, tensor: str) -> tuple[int, ...]:
        return tuple(int(d) for d in self.consts[tensor].dims)

    def const_value(self, tensor: str) -> Any:
        c = self.consts[tensor]
        if isinstance(c, _Const):
            if c.value is None:
                raise Unmappable(f"the values of constant '{tensor}' are not known here")
            return c.value
        try:
            return self.onnx.numpy_helper.to_array(c)
        except Exception as e:  # external data not loaded, unsupported type...
            raise Unmappable(f"cannot read constant '{tensor}' ({_first_line(e)})") from None

    def small_value(self, tensor: str) -> Any:
        """The values of a small constant, else None (only its shape matters then)."""
        c = self.consts[tensor]
        if isinstance(c, _Const):
            return c.value
        if math.prod(self.const_shape(tensor)) > SMALL_CONST:
            return None
        try:
            return self.onnx.numpy_helper.to_array(c)
        except Exception:  # external or exotic data: the shape is what is used
            return None

    def const_ints(self, tensor: str) -> list[int]:
        return [int(v) for v in self.const_value(tensor).reshape(-1).tolist()]

    def x(self, tensor: str) -> str:
        """The op producing a tensor that must be computed, not a constant."""
        if tensor in self.consts:
            raise Unmappable(f"constant '{tensor}' where a computed tensor is expected")
        return self.tensor_op[tensor]

    def shape(self, tensor: str) -> Shape:
        if tensor in self.consts:
            return self.const_shape(tensor)
        return self.ops[self.tensor_op[tensor]].output_shape

    def weight(self, node: Any, i: int, rank: int | None = None) -> tuple[int, ...]:
        if len(node.input) <= i or not node.input[i]:
            raise Unmappable(f"input {i} is missing")
        t = node.input[i]
        if t not in self.consts:
            raise Unmappable(f"weight '{t}' is computed, not a constant initializer")
        s = self.const_shape(t)
        if rank is not None and len(s) != rank:
            raise Unmappable(f"weight '{t}' has rank {len(s)}, expected {rank}")
        return s

    def emit(
        self,
        node: Any,
        kind: str,
        inputs: Sequence[str],
        attrs: dict[str, Any],
        name: str,
        output: int = 0,
        shape: Shape | None = None,
    ) -> str:
        """Add one op (its shape inferred by its kind) producing ``node.output[output]``."""
        op_name = self._unique(name)
        dtype = self.ops[inputs[0]].dtype if inputs else (self.dtype or "fp32")
        provisional = Op(op_name, kind, tuple(inputs), shape or (1,), dtype, attrs)
        ins = [self.ops[i].output_shape for i in inputs]
        try:
            out = kind_of(provisional).infer(provisional, ins)
        except (KeyError, TypeError, ValueError) as e:
            raise Unmappable(f"bad attributes ({_first_line(e)})") from None
        op = Op(op_name, kind, tuple(inputs), out, dtype, attrs)
        self.ops[op_name] = op
        self.tensor_op[node.output[output]] = op_name
        return op_name


# --- mappers ------------------------------------------------------------------------------


def _spatial_pads(
    imp: _Importer,
    node: Any,
    hw: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    ceil: bool = False,
) -> tuple[tuple[int, int], dict[str, Any], tuple[int, int]]:
    """Symmetric (h, w) padding giving the output size ONNX's pads/auto_pad give.

    Our conv and pool take one padding per dimension; an asymmetric ONNX padding (TF
    "SAME") is represented by a symmetric one of the same output size — the work of a
    conv or pool depends only on that size. Where none exists the node is unmappable."""
    auto = imp.attr(node, "auto_pad", "NOTSET")
    pads = list(imp.attr(node, "pads", [0, 0, 0, 0]))
    if len(pads) != 4:
        raise Unmappable(f"pads {pads} are not 2-D")
    out_pad: list[int] = []
    want: list[int] = []
    extra: dict[str, Any] = {}
    for i in range(2):
        span = dilations[i] * (kernel[i] - 1) + 1
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            out = -(-hw[i] // strides[i])
            total = max((out - 1) * strides[i] + span - hw[i], 0)
            lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
            b, e = lo, total - lo
        elif auto == "VALID":
            b = e = 0
        elif auto == "NOTSET":
            b, e = pads[i], pads[i + 2]
        else:
            raise Unmappable(f"unknown auto_pad {auto!r}")

        def size(total: int, i: int = i, span: int = span) -> int:
            num = hw[i] + total - span
            return (-(-num // strides[i]) if ceil else num // strides[i]) + 1

        want.append(size(b + e))
        for p in sorted({(b + e) // 2, -(-(b + e) // 2)}):
            if size(2 * p) == want[-1]:
                out_pad.append(p)
                break
        else:
            raise Unmappable(f"asymmetric padding {b},{e} has no symmetric equivalent")
        if b != e:
            extra["onnx_pads"] = pads if auto == "NOTSET" else auto
    return (out_pad[0], out_pad[1]), extra, (want[0], want[1])


def _check_hw(imp: _Importer, op_name: str, want: tuple[int, int]) -> None:
    got = imp.ops[op_name].output_shape[2:]
    if tuple(got) != want:
        raise Unmappable(f"output size {list(got)} differs from ONNX's {list(want)}")


def _conv(imp: _Importer, node: Any, name: str) -> None:
    x = imp.x(node.input[0])
    xs = imp.shape(node.input[0])
    w = imp.weight(node, 1)
    if len(xs) != 4 or len(w) != 4:
        raise Unmappable("only 2-D convolutions (NCHW input, 4-D weight) are supported")
    groups = int(imp.attr(node, "group", 1))
    kernel = _pairs(imp.attr(node, "kernel_shape", w[2:]))
    if kernel != w[2:]:
        raise Unmappable(f"kernel_shape {list(kernel)} differs from the weight's {list(w[2:])}")
    if w[1] * groups != xs[1]:
        raise Unmappable(f"weight {list(w)} x {groups} groups does not read {xs[1]} channels")
    strides = _pairs(imp.attr(node, "strides", [1, 1]))
    dil = _pairs(imp.attr(node, "dilations", [1, 1]))
    pad, extra, want = _spatial_pads(imp, node, xs[2:], kernel, strides, dil)
    bias = len(node.input) > 2 and bool(node.input[2])
    if bias:
        imp.weight(node, 2, rank=1)
    attrs = {
        "kernel": kernel,
        "stride": strides,
        "padding": pad,
        "dilation": dil,
        "groups": groups,
        "out_channels": w[0],
        "bias": bias,
        "activation": None,
        **extra,
    }
    _check_hw(imp, imp.emit(node, "conv", [x], attrs, name), want)


def _conv_transpose(imp: _Importer, node: Any, name: str) -> None:
    x = imp.x(node.input[0])
    xs = imp.shape(node.input[0])
    w = imp.weight(node, 1)
    if len(xs) != 4 or len(w) != 4:
        raise Unmappable("only 2-D transposed convolutions (NCHW) are supported")
    groups = int(imp.attr(node, "group", 1))
    if w[0] != xs[1]:
        raise Unmappable(f"weight {list(w)} does not read {xs[1]} channels")
    kernel = _pairs(imp.attr(node, "kernel_shape", w[2:]))
    strides = _pairs(imp.attr(node, "strides", [1, 1]))
    dil = _pairs(imp.attr(node, "dilations", [1, 1]))
    opad = list(_pairs(imp.attr(node, "output_padding", [0, 0]), least=0))
    pads = list(imp.attr(node, "pads", [0, 0, 0, 0]))
    auto = imp.attr(node, "auto_pad", "NOTSET")
    want_shape = imp.attr(node, "output_shape", None)
    padding, out_padding = [], []
    for i in range(2):
        span = dil[i] * (kernel[i] - 1) + 1
        full = strides[i] * (xs[2 + i] - 1) + opad[i] + span
        if want_shape is not None or auto in ("SAME_UPPER", "SAME_LOWER"):
            out = int(want_shape[-2 + i]) if want_shape is not None else xs[2 + i] * strides[i]
            total = full - out
            if total < 0:
                raise Unmappable(f"output_shape {list(want_shape or [])} needs negative padding")
            half = total // 2
            b, e = (half, total - half) if auto != "SAME_LOWER" else (total - half, half)
        else:
            b, e = pads[i], pads[i + 2]
        if b == e:
            padding.append(b)
            out_padding.append(opad[i])
            continue
        t = b + e - opad[i]  # we need 2 * p - output_padding == t
        p = max(0, -(-t // 2))
        o = 2 * p - t
        if o < 0 or o >= max(strides[i], dil[i]):
            raise Unmappable(f"asymmetric padding {b},{e} has no symmetric equivalent")
        padding.append(p)
        out_padding.append(o)
    bias = len(node.input) > 2 and bool(node.input[2])
    if bias:
        imp.weight(node, 2, rank=1)
    attrs = {
        "kernel": kernel,
        "stride": strides,
        "padding": tuple(padding),
        "output_padding": tuple(out_padding),
        "dilation": dil,
        "groups": groups,
        "out_channels": w[1] * groups,
        "bias": bias,
    }
    imp.emit(node, "conv_transpose", [x], attrs, name)


def _gemm(imp: _Importer, node: Any, name: str) -> None:
    if int(imp.attr(node, "transA", 0)):
        raise Unmappable("transA=1 is not supported")
    a = imp.x(node.input[0])
    trans_b = int(imp.attr(node, "transB", 0))
    has_c = len(node.input) > 2 and bool(node.input[2])
    k = imp.shape(node.input[0])[-1]
    if imp.is_const(node.input[1]):
        ws = imp.weight(node, 1, rank=2)
        kk, n = (ws[1], ws[0]) if trans_b else ws
        if kk != k:
            raise Unmappable(
                f"weight {list(ws)} does not match input {list(imp.shape(node.input[0]))}"
            )
        if has_c:
            if not imp.is_const(node.input[2]):
                raise Unmappable("a computed C operand is not supported")
            if math.prod(imp.const_shape(node.input[2])) != n:
                raise Unmappable(f"C {list(imp.const_shape(node.input[2]))} is not a bias of {n}")
        # alpha and beta scale constants: folded into the weights, no work of their own
        imp.emit(node, "linear", [a], {"out_features": n, "bias": has_c}, name)
        return
    if trans_b or has_c:
        raise Unmappable("a computed B operand with transB or C is not supported")
    imp.emit(node, "matmul", [a, imp.x(node.input[1])], {}, name)


def _matmul(imp: _Importer, node: Any, name: str) -> None:
    a = imp.x(node.input[0])
    if imp.is_const(node.input[1]):
        ws = imp.weight(node, 1)
        if len(ws) != 2:
            raise Unmappable(f"a constant right operand of rank {len(ws)} is not supported")
        if imp.shape(node.input[0])[-1] != ws[0]:
            raise Unmappable(f"shapes {list(imp.shape(node.input[0]))} @ {list(ws)} differ")
        imp.emit(node, "linear", [a], {"out_features": ws[1], "bias": False}, name)
        return
    b = imp.x(node.input[1])
    if len(imp.shape(node.input[0])) < 2 or len(imp.shape(node.input[1])) < 2:
        raise Unmappable("1-D operands of a MatMul of two computed tensors are not supported")
    imp.emit(node, "matmul", [a, b], {}, name)


def _batchnorm(imp: _Importer, node: Any, name: str) -> None:
    x = imp.x(node.input[0])
    c = imp.shape(node.input[0])[1] if len(imp.shape(node.input[0])) > 1 else 0
    for i in range(1, 5):
        if imp.weight(node, i) != (c,):
            raise Unmappable(f"input {i} is not a constant of {c} channels")
    attrs = {"axis": 1, "eps": float(imp.attr(node, "epsilon", 1e-5))}
    imp.emit(node, "batchnorm", [x], attrs, name)


def _layernorm(imp: _Importer, node: Any, name: str) -> None:
    x = imp.x(node.input[0])
    rank = len(imp.shape(node.input[0]))
    axis = _axis(imp.attr(node, "axis", -1), rank)
    if axis != rank - 1:
        raise Unmappable(f"normalising over axes {axis}.. (not only the last) is not supported")
    imp.weight(node, 1)
    attrs = {"axis": -1, "eps": float(imp.attr(node, "epsilon", 1e-5))}
    imp.emit(node, "layernorm", [x], attrs, name)


def _softmax(imp: _Importer, node: Any, name: str) -> None:
    x = imp.x(node.input[0])
    shape = imp.shape(node.input[0])
    rank = len(shape)
    axis = _axis(imp.attr(node, "axis", -1 if imp.opset >= 13 else 1), rank)
    if imp.opset < 13 and math.prod(shape[axis + 1 :]) > 1:
        raise Unmappable("opset < 13 softmax over several flattened axes is not supported")
    attrs: dict[str, Any] = {"axis": axis - rank}
    if node.op_type == "LogSoftmax":
        attrs["log"] = True
    imp.emit(node, "softmax", [x], attrs, name)


def _axis(a: Any, rank: int) -> int:
    """An ONNX axis in ``[-rank, rank)`` as a non-negative one; outside it the model is
    invalid, and wrapping it (axis 10 of a rank-4 tensor as axis 2) would simulate
    another model."""
    if not -rank <= int(a) < rank:
        raise Unmappable(f"axis {a} is outside [{-rank}, {rank}) for a rank-{rank} tensor")
    return int(a) % rank


def _concat(imp: _Importer, node: Any, name: str) -> None:
    ins = [imp.x(i) for i in node.input]
    rank = len(imp.shape(node.input[0]))
    if imp.attr(node, "axis") is None:
        raise Unmappable("Concat needs an axis")
    imp.emit(node, "concat", ins, {"axis": _axis(imp.attr(node, "axis"), rank)}, name)


def _split(imp: _Importer, node: Any, name: str) -> None:
    x = imp.x(node.input[0])
    shape = imp.shape(node.input[0])
    axis = _axis(imp.attr(node, "axis", 0), len(shape))
    n_out = len(node.output)
    if len(node.input) > 1 and node.input[1]:
        if not imp.is_const(node.input[1]):
            raise Unmappable("computed split sizes are not supported")
        sizes = imp.const_ints(node.input[1])
    elif imp.attr(node, "split") is not None:
        sizes = [int(v) for v in imp.attr(node, "split")]
    else:  # equal parts; the last one smaller if the size does not divide (opset 18)
        part = -(-shape[axis] // n_out)
        sizes = [min(part, shape[axis] - i * part) for i in range(n_out)]
    if len(sizes) != n_out or sum(sizes) != shape[axis] or min(sizes) <= 0:
        raise Unmappable(f"split sizes {sizes} do not cut dimension {axis} of {list(shape)}")
    begin = 0
    for i, s in enumerate(sizes):
        if node.output[i]:
            attrs = {"axis": axis, "begin": begin, "end": begin + s}
            imp.emit(node, "slice", [x], attrs, f"{name}.{i}", output=i)
        begin += s


def _slice(imp: _Importer, node: Any, name: str) -> None:
    x = imp.x(node.input[0])
    shape = imp.shape(node.input[0])
    if imp.opset < 10:
        starts, ends = imp.attr(node, "starts"), imp.attr(node, "ends")
        axes = imp.attr(node, "axes", list(range(len(starts))))
        steps = [1] * len(starts)
    else:
        for i in node.input[1:]:
            if i and not imp.is_const(i):
                raise Unmappable("computed slice bounds are not supported")
        starts, ends = imp.const_ints(node.input[1]), imp.const_ints(node.input[2])
        has = [len(node.input) > i and bool(node.input[i]) for i in (3, 4)]
        axes = imp.const_ints(node.input[3]) if has[0] else list(range(len(starts)))
        steps = imp.const_ints(node.input[4]) if has[1] else [1] * len(starts)
    cut = []
    for s, e, a, st in zip(starts, ends, axes, steps, strict=True):
        a = _axis(a, len(shape))
        dim = shape[a]
        s = min(max(s + dim if s < 0 else s, 0), dim)
        e = min(max(e + dim if e < 0 else e, 0), dim)
        if st != 1:
            raise Unmappable(f"step {st} is not supported")
        if (s, e) != (0, dim):
            cut.append((a, s, e))
    if len(cut) > 1:
        raise Unmappable("slicing several axes at once is not supported")
    if not cut:
        imp.emit(node, "identity", [x], {}, name)
        return
    a, s, e = cut[0]
    if s >= e:
        raise Unmappable(f"empty slice [{s}, {e}) of axis {a}")
    imp.emit(node, "slice", [x], {"axis": a, "begin": s, "end": e}, name)


def _reshaped(imp: _Importer, node: Any, name: str, shape: Sequence[int]) -> None:
    x = imp.x(node.input[0])
    if math.prod(shape) != math.prod(imp.shape(node.input[0])) or min(shape, default=1) <= 0:
        raise Unmappable(f"cannot reshape {list(imp.shape(node.input[0]))} to {list(shape)}")
    imp.emit(node, "reshape", [x], {}, name, shape=tuple(shape))


def _reshape(imp: _Importer, node: Any, name: str) -> None:
    _reshaped(imp, node, name, _reshape_target(imp, node))


def _reshape_target(imp: _Importer, node: Any) -> list[int]:
    if not imp.is_const(node.input[1]):
        raise Unmappable("a computed target shape is not supported (fold shape arithmetic)")
    src = imp.shape(node.input[0])
    target = imp.const_ints(node.input[1])
    allow_zero = int(imp.attr(node, "allowzero", 0))
    out = [
        src[i] if (v == 0 and not allow_zero and i < len(src)) else v for i, v in enumerate(target)
    ]
    if out.count(-1) > 1:
        raise Unmappable(f"target shape {target} has more than one -1")
    if -1 in out:
        known = math.prod(v for v in out if v != -1)
        if known <= 0 or math.prod(src) % known:
            raise Unmappable(f"cannot reshape {list(src)} to {target}")
        out[out.index(-1)] = math.prod(src) // known
    lead = target[0] if target else 0
    if (
        imp.batch is not None
        and imp.orig_batch not in (None, imp.batch)
        and lead == imp.orig_batch
        and src[0] == imp.batch
    ):
        raise Unmappable(
            f"its target shape hard-codes the exported batch {lead}; re-export with a "
            "dynamic batch axis to change the batch"
        )
    return out


def _flatten_axis(imp: _Importer, node: Any) -> int:
    axis, rank = int(imp.attr(node, "axis", 1)), len(imp.shape(node.input[0]))
    if not -rank <= axis <= rank:
        raise Unmappable(f"axis {axis} is outside [{-rank}, {rank}] for a rank-{rank} tensor")
    return axis + rank if axis < 0 else axis


def _flatten_target(imp: _Importer, node: Any) -> list[int]:
    shape, axis = imp.shape(node.input[0]), _flatten_axis(imp, node)
    return [math.prod(shape[:axis]), math.prod(shape[axis:])]


def _flatten(imp: _Importer, node: Any, name: str) -> None:
    if _flatten_axis(imp, node) == 1:
        imp.emit(node, "flatten", [imp.x(node.input[0])], {"start_dim": 1}, name)
        return
    _reshaped(imp, node, name, _flatten_target(imp, node))


def _axes(imp: _Importer, node: Any) -> list[int] | None:
    if len(node.input) > 1 and node.input[1]:
        if not imp.is_const(node.input[1]):
            raise Unmappable("computed axes are not supported")
        return imp.const_ints(node.input[1])
    axes = imp.attr(node, "axes")
    return None if axes is None else [int(a) for a in axes]


def _squeeze(imp: _Importer, node: Any, name: str) -> None:
    _reshaped(imp, node, name, _squeeze_target(imp, node))


def _squeeze_target(imp: _Importer, node: Any) -> list[int]:
    shape = list(imp.shape(node.input[0]))
    axes = _axes(imp, node)
    drop = (
        {_axis(a, len(shape)) for a in axes}
        if axes is not None
        else {i for i, d in enumerate(shape) if d == 1}
    )
    if any(shape[a] != 1 for a in drop):
        raise Unmappable(f"cannot squeeze axes {sorted(drop)} of {shape}")
    return [d for i, d in enumerate(shape) if i not in drop]


def _unsqueeze(imp: _Importer, node: Any, name: str) -> None:
    _reshaped(imp, node, name, _unsqueeze_target(imp, node))


def _unsqueeze_target(imp: _Importer, node: Any) -> list[int]:
    shape = list(imp.shape(node.input[0]))
    axes = _axes(imp, node)
    if axes is None:
        raise Unmappable("Unsqueeze needs axes")
    rank = len(shape) + len(axes)
    out = iter(shape)
    put = {_axis(a, rank) for a in axes}
    return [1 if i in put else next(out) for i in range(rank)]


def _perm(imp: _Importer, node: Any) -> list[int]:
    rank = len(imp.shape(node.input[0]))
    return [int(p) for p in imp.attr(node, "perm", list(range(rank))[::-1])]


_SHAPE_TARGETS: dict[str, Callable[[_Importer, Any], list[int]]] = {
    "Reshape": _reshape_target,
    "Flatten": _flatten_target,
    "Squeeze": _squeeze_target,
    "Unsqueeze": _unsqueeze_target,
    "Identity": lambda imp, node: list(imp.shape(node.input[0])),
    "Transpose": lambda imp, node: [imp.shape(node.input[0])[p] for p in _perm(imp, node)],
}


def _fold(imp: _Importer, node: Any) -> bool:
    """Shape ops on constants (an Unsqueeze of a BatchNorm scale) and ConstantOfShape run
    at import, as an exporter's constant folding would: the result is a constant (a
    parameter of whatever reads it), not an op. False: the node is mapped as usual."""
    if node.op_type == "ConstantOfShape":
        if not imp.is_const(node.input[0]):
            raise Unmappable("a computed shape is not supported")
        dims = tuple(imp.const_ints(node.input[0]))
        fill = imp.attr(node, "value")
        v = imp.onnx.numpy_helper.to_array(fill).reshape(-1)[0] if fill is not None else 0.0
        value = np.full(dims, v) if math.prod(dims) <= SMALL_CONST else None
        imp.consts[node.output[0]] = _Const(dims, value)
        return True
    target = _SHAPE_TARGETS.get(node.op_type)
    if target is None or not all(imp.is_const(i) for i in node.input if i):
        return False
    dims = tuple(target(imp, node))
    src = imp.small_value(node.input[0])
    if src is None:
        value = None
    elif node.op_type == "Transpose":
        value = np.transpose(src, _perm(imp, node))
    else:
        value = np.reshape(src, dims)
    imp.consts[node.output[0]] = _Const(dims, value)
    return True


def _transpose(imp: _Importer, node: Any, name: str) -> None:
    perm = tuple(_perm(imp, node))
    imp.emit(node, "transpose", [imp.x(node.input[0])], {"perm": perm}, name)


def _lrn(imp: _Importer, node: Any, name: str) -> None:
    """Local response normalisation (AlexNet, GoogLeNet): a sum of squares over ``size``
    neighbouring channels per element, then a power — elementwise-like work."""
    size = int(imp.attr(node, "size"))
    attrs = {"fn": "lrn", "cost": 2 * size + 4, "size": size}
    imp.emit(node, "eltwise", [imp.x(node.input[0])], attrs, name)


def _identity(imp: _Importer, node: Any, name: str) -> None:
    imp.emit(node, "identity", [imp.x(node.input[0])], {}, name)


def _own_kind(imp: _Importer, node: Any, name: str) -> None:
    attrs = {}
    if node.op_type == "Gelu" and imp.attr(node, "approximate", "none") != "none":
        attrs["approximate"] = imp.attr(node, "approximate")
    imp.emit(node, _OWN_KIND[node.op_type], [imp.x(node.input[0])], attrs, name)


def _clip(imp: _Importer, node: Any, name: str) -> None:
    attrs: dict[str, Any] = {}
    if imp.opset < 11:
        for k in ("min", "max"):
            if imp.attr(node, k) is not None:
                attrs[k] = float(imp.attr(node, k))
    else:
        for i, k in ((1, "min"), (2, "max")):
            if len(node.input) > i and node.input[i]:
                if not imp.is_const(node.input[i]):
                    raise Unmappable(f"a computed {k} bound is not supported")
                attrs[k] = float(imp.const_value(node.input[i]).reshape(-1)[0])
    imp.emit(node, "clip", [imp.x(node.input[0])], attrs, name)


def _unary(imp: _Importer, node: Any, name: str) -> None:
    attrs = {"fn": node.op_type.lower(), "cost": _UNARY[node.op_type]}
    imp.emit(node, "eltwise", [imp.x(node.input[0])], attrs, name)


def _binary(imp: _Importer, node: Any, name: str) -> None:
    kind, cost = _BINARY.get(node.op_type, ("add", 1))
    ins = list(node.input)
    consts = [i for i, t in enumerate(ins) if imp.is_const(t)]
    if len(consts) == len(ins):
        raise Unmappable("all inputs are constants (fold them before import)")
    if not consts:
        attrs = (
            {}
            if node.op_type.lower() == kind or node.op_type == "Sum"
            else {"op": node.op_type.lower()}
        )
        imp.emit(node, kind, [imp.x(t) for t in ins], attrs, name)
        return
    if len(ins) != 2:
        raise Unmappable("constant operands of an n-ary operator are not supported")
    c = consts[0]
    attrs = {
        "fn": node.op_type.lower(),
        "cost": cost,
        "const_shape": imp.const_shape(ins[c]),
        "const_operand": c,
    }
    imp.emit(node, "eltwise", [imp.x(ins[1 - c])], attrs, name)


def _prelu(imp: _Importer, node: Any, name: str) -> None:
    if not imp.is_const(node.input[1]):
        raise Unmappable("a computed slope is not supported")
    attrs = {"fn": "prelu", "cost": 2, "const_shape": imp.const_shape(node.input[1])}
    imp.emit(node, "eltwise", [imp.x(node.input[0])], attrs, name)


def _pool(imp: _Importer, node: Any, name: str) -> None:
    x = imp.x(node.input[0])
    xs = imp.shape(node.input[0])
    if len(xs) != 4:
        raise Unmappable("only 2-D pooling (NCHW) is supported")
    kernel = _pairs(imp.attr(node, "kernel_shape"))
    strides = _pairs(imp.attr(node, "strides", [1, 1]))
    dil = _pairs(imp.attr(node, "dilations", [1, 1]))
    if dil != (1, 1):
        raise Unmappable("dilated pooling is not supported")
    ceil = bool(imp.attr(node, "ceil_mode", 0))
    kind = "max" if node.op_type == "MaxPool" else "avg"
    count_pad = bool(imp.attr(node, "count_include_pad", 0))
    try:
        pad, extra, want = _spatial_pads(imp, node, xs[2:], kernel, strides, dil, ceil)
    except Unmappable:
        # one window over the whole (padded) input — Caffe exports of GoogLeNet end so —
        # is a global pool when padding does not count: the same values, one output
        pads = list(imp.attr(node, "pads", [0, 0, 0, 0]))
        whole = imp.attr(node, "auto_pad", "NOTSET") == "NOTSET" and all(
            kernel[i] >= xs[2 + i] and xs[2 + i] + pads[i] + pads[i + 2] - kernel[i] < strides[i]
            for i in range(2)
        )
        if not whole or (kind == "avg" and count_pad):
            raise
        attrs = {"pool_type": kind, "onnx_window": kernel, "onnx_pads": tuple(pads)}
        imp.emit(node, "global_pool", [x], attrs, name)
        return
    attrs = {
        "pool_type": kind,
        "kernel": kernel,
        "stride": strides,
        "padding": pad,
        "ceil_mode": ceil,
        **extra,
    }
    if node.op_type == "AveragePool":
        attrs["count_include_pad"] = count_pad
    _check_hw(imp, imp.emit(node, "pool", [x], attrs, name), want)


def _global_pool(imp: _Importer, node: Any, name: str) -> None:
    if len(imp.shape(node.input[0])) != 4:
        raise Unmappable("only 2-D global pooling (NCHW) is supported")
    kind = "max" if node.op_type == "GlobalMaxPool" else "avg"
    imp.emit(node, "global_pool", [imp.x(node.input[0])], {"pool_type": kind}, name)


def _reduce_mean(imp: _Importer, node: Any, name: str) -> None:
    """ReduceMean over H and W keeping them: global average pooling (TF exports)."""
    shape = imp.shape(node.input[0])
    axes = _axes(imp, node)
    keep = int(imp.attr(node, "keepdims", 1))
    if len(shape) != 4 or axes is None or sorted(a % 4 for a in axes) != [2, 3] or not keep:
        raise Unmappable("only a mean over H and W with keepdims (global pooling) is supported")
    imp.emit(node, "global_pool", [imp.x(node.input[0])], {"pool_type": "avg"}, name)


def _constant(imp: _Importer, node: Any, name: str) -> None:
    a = node.attribute[0] if len(node.attribute) == 1 else None
    if a is None:
        raise Unmappable("a Constant needs exactly one value attribute")
    oh = imp.onnx.helper
    if a.name == "value":
        t = a.t
    elif a.name in ("value_float", "value_floats", "value_int", "value_ints"):
        v = oh.get_attribute_value(a)
        elem = imp.onnx.TensorProto.FLOAT if "float" in a.name else imp.onnx.TensorProto.INT64
        t = oh.make_tensor(
            node.output[0],
            elem,
            [len(v)] if isinstance(v, list) else [],
            v if isinstance(v, list) else [v],
        )
    else:
        raise Unmappable(f"constant attribute {a.name!r} is not supported")
    imp.consts[node.output[0]] = t


_MAPPERS: dict[str, Callable[[_Importer, Any, str], None]] = {
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "BatchNormalization": _batchnorm,
    "LayerNormalization": _layernorm,
    "Softmax": _softmax,
    "LogSoftmax": _softmax,
    "Concat": _concat,
    "Split": _split,
    "Slice": _slice,
    "Reshape": _reshape,
    "Flatten": _flatten,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Transpose": _transpose,
    "Identity": _identity,
    "Dropout": _identity,
    "Clip": _clip,
    "PRelu": _prelu,
    "MaxPool": _pool,
    "AveragePool": _pool,
    "GlobalAveragePool": _global_pool,
    "GlobalMaxPool": _global_pool,
    "ReduceMean": _reduce_mean,
    "Constant": _constant,
    "ConstantOfShape": _constant,  # always folded (see _fold)
    "LRN": _lrn,
    "Sum": _binary,
    **dict.fromkeys(_OWN_KIND, _own_kind),
    **dict.fromkeys(_UNARY, _unary),
    **dict.fromkeys(_BINARY, _binary),
}
