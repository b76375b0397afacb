"""Operator kinds: shape inference and work counts.

Each kind knows two things: what output shape its inputs and attributes imply (so a
graph can check itself), and how much work it is (MACs, FLOPs, parameters). Kernels
and costs live in :mod:`simgpu.kernels`; this module is only the arithmetic of the op.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from simgpu.errors import GraphError

if TYPE_CHECKING:
    from simgpu.graph import Op

Shape = tuple[int, ...]

DTYPE_BYTES: dict[str, int] = {"fp64": 8, "fp32": 4, "tf32": 4, "fp16": 2, "bf16": 2, "int8": 1}


def numel(shape: Sequence[int]) -> int:
    return math.prod(shape)


@dataclass(frozen=True)
class Counts:
    """Work of one op. ``flops`` counts a multiply-add as two FLOPs; ``macs`` as one MAC."""

    macs: int
    flops: int
    params: int


@dataclass(frozen=True)
class OpKind:
    """How one kind of op infers its shape and counts its work."""

    name: str
    arity: tuple[int, int | None]  # (min inputs, max inputs or None for any)
    infer: Callable[[Op, list[Shape]], Shape]
    count: Callable[[Op, list[Shape]], Counts]
    view: bool = False  # no device work: a reshape of the same bytes
    #: attributes a file may give an op of this kind; another is a misspelling, refused
    #: when a graph is read (:meth:`simgpu.graph.Op.from_dict`)
    attrs: frozenset[str] = frozenset()


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


_MISSING = object()


def _int_of(op: Op, key: str, default: object = _MISSING) -> int:
    """An integer attribute, strictly: 8.9, true or "8" is an error, not 8, 1 or 8."""
    v = op.attrs.get(key, default)
    if v is _MISSING:
        raise KeyError(key)
    if not _is_int(v):
        raise _fail(op, f"attribute {key} must be an integer, got {v!r}")
    return v  # type: ignore[return-value]


def _pair_of(op: Op, key: str, default: object = _MISSING) -> tuple[int, int]:
    """An integer or a pair of integers (kernel, stride, padding, ...), strictly."""
    v = op.attrs.get(key, default)
    if v is _MISSING:
        raise KeyError(key)
    if _is_int(v):
        return (v, v)  # type: ignore[return-value]
    if isinstance(v, list | tuple) and len(v) == 2 and all(_is_int(x) for x in v):
        return (v[0], v[1])
    raise _fail(op, f"attribute {key} must be an integer or a pair of integers, got {v!r}")


def _fail(op: Op, msg: str) -> GraphError:
    return GraphError(f"op '{op.name}' ({op.kind}): {msg}")


def _need_rank(op: Op, shape: Shape, rank: int, what: str = "input") -> None:
    if len(shape) != rank:
        raise _fail(op, f"{what} must have rank {rank}, got shape {list(shape)}")


def _window_out(op: Op, size: int, k: int, s: int, p: int, d: int = 1, ceil: bool = False) -> int:
    span = d * (k - 1) + 1
    if size + 2 * p < span:
        raise _fail(op, f"window {k} (dilation {d}) larger than padded input {size}+2*{p}")
    num = size + 2 * p - span
    out = (-(-num // s) if ceil else num // s) + 1
    if ceil and (out - 1) * s >= size + p:  # PyTorch: last window must start inside input
        out -= 1
    return out


# --- conv -----------------------------------------------------------------------------


def _conv_infer(op: Op, ins: list[Shape]) -> Shape:
    x = ins[0]
    _need_rank(op, x, 4)
    n, c, h, w = x
    kh, kw = _pair_of(op, "kernel")
    sh, sw = _pair_of(op, "stride", 1)
    ph, pw = _pair_of(op, "padding", 0)
    dh, dw = _pair_of(op, "dilation", 1)
    groups = _int_of(op, "groups", 1)
    cout = _int_of(op, "out_channels")
    if min(kh, kw, sh, sw, dh, dw, groups, cout) <= 0 or min(ph, pw) < 0:
        raise _fail(op, "kernel, stride, dilation, groups and out_channels must be positive")
    if c % groups or cout % groups:
        raise _fail(op, f"channels in {c} / out {cout} not divisible by groups {groups}")
    out = (n, cout, _window_out(op, h, kh, sh, ph, dh), _window_out(op, w, kw, sw, pw, dw))
    _check_epilogue(op, out, ins[1:])
    return out


#: elementwise ops a conv may run in its kernel's epilogue (attribute ``epilogue``, in
#: order, after bias and activation), with their FLOPs per element as the ops count
#: them; a binary one takes the conv's next extra input as its other operand
EPILOGUE_FLOPS: dict[str, int] = {
    "relu": 1, "sigmoid": 4, "tanh": 4, "gelu": 8, "silu": 5, "clip": 2, "add": 1, "mul": 1,
}  # fmt: skip
EPILOGUE_BINARY = frozenset({"add", "mul"})


def _epilogue(op: Op) -> tuple[str, ...]:
    steps = op.attrs.get("epilogue", ())
    if not isinstance(steps, tuple) or not all(isinstance(s, str) for s in steps):
        raise _fail(op, f"epilogue must be a list of op kinds, got {steps!r}")
    bad = [s for s in steps if s not in EPILOGUE_FLOPS]
    if bad:
        raise _fail(op, f"epilogue step {bad[0]!r} is not one of {', '.join(EPILOGUE_FLOPS)}")
    return steps


def _check_epilogue(op: Op, out: Shape, operands: list[Shape]) -> None:
    """A conv's inputs past the first are the operands of its binary epilogue steps, one
    each, broadcasting to its output without changing it (a fused residual add)."""
    need = sum(s in EPILOGUE_BINARY for s in _epilogue(op))
    if len(operands) != need:
        raise _fail(
            op, f"takes 1 + {need} inputs (its epilogue's operands), got {1 + len(operands)}"
        )
    for s in operands:
        try:
            ok = _broadcast(out, s) == tuple(out)
        except ValueError:
            ok = False
        if not ok:
            raise _fail(op, f"epilogue operand {list(s)} does not broadcast to {list(out)}")


def _conv_count(op: Op, ins: list[Shape]) -> Counts:
    n, c, _, _ = ins[0]
    _, cout, ho, wo = op.output_shape
    kh, kw = _pair_of(op, "kernel")
    groups = _int_of(op, "groups", 1)
    per_out = (c // groups) * kh * kw
    macs = n * cout * ho * wo * per_out
    has_bias = bool(op.attrs.get("bias", False)) or bool(op.attrs.get("folded_bn", False))
    params = cout * per_out + (cout if has_bias else 0)
    per_elem = int(has_bias) + int(bool(op.attrs.get("activation")))
    per_elem += sum(EPILOGUE_FLOPS[s] for s in _epilogue(op))
    return Counts(macs, 2 * macs + numel(op.output_shape) * per_elem, params)


def _conv_transpose_infer(op: Op, ins: list[Shape]) -> Shape:
    """Transposed conv (the gradient of a conv w.r.t. its input): each input pixel
    scatters a kernel-sized patch; ``output_padding`` resolves the size ambiguity."""
    x = ins[0]
    _need_rank(op, x, 4)
    n, c, h, w = x
    kh, kw = _pair_of(op, "kernel")
    sh, sw = _pair_of(op, "stride", 1)
    ph, pw = _pair_of(op, "padding", 0)
    oh, ow = _pair_of(op, "output_padding", 0)
    dh, dw = _pair_of(op, "dilation", 1)
    groups = _int_of(op, "groups", 1)
    cout = _int_of(op, "out_channels")
    if min(kh, kw, sh, sw, dh, dw, groups, cout) <= 0 or min(ph, pw, oh, ow) < 0:
        raise _fail(op, "kernel, stride, dilation, groups and out_channels must be positive")
    if c % groups or cout % groups:
        raise _fail(op, f"channels in {c} / out {cout} not divisible by groups {groups}")
    if oh >= max(sh, dh) or ow >= max(sw, dw):
        raise _fail(op, "output_padding must be smaller than stride or dilation")
    ho = (h - 1) * sh - 2 * ph + dh * (kh - 1) + oh + 1
    wo = (w - 1) * sw - 2 * pw + dw * (kw - 1) + ow + 1
    if ho <= 0 or wo <= 0:
        raise _fail(op, f"padding {ph},{pw} leaves no output from input {h}x{w}")
    return (n, cout, ho, wo)


def _conv_transpose_count(op: Op, ins: list[Shape]) -> Counts:
    n, c, h, w = ins[0]
    cout = _int_of(op, "out_channels")
    kh, kw = _pair_of(op, "kernel")
    groups = _int_of(op, "groups", 1)
    per_in = (cout // groups) * kh * kw  # outputs each input element contributes to
    macs = n * c * h * w * per_in
    bias = bool(op.attrs.get("bias", False))
    params = c * per_in + (cout if bias else 0)
    return Counts(macs, 2 * macs + numel(op.output_shape) * int(bias), params)


# --- linear / matmul ------------------------------------------------------------------


def _linear_infer(op: Op, ins: list[Shape]) -> Shape:
    x = ins[0]
    if len(x) < 1:
        raise _fail(op, "input must have at least one dimension")
    out = _int_of(op, "out_features")
    if out <= 0:
        raise _fail(op, "out_features must be positive")
    return (*x[:-1], out)


def _linear_count(op: Op, ins: list[Shape]) -> Counts:
    x = ins[0]
    k, out = x[-1], _int_of(op, "out_features")
    macs = numel(x[:-1]) * k * out
    bias = bool(op.attrs.get("bias", True))
    act = int(bool(op.attrs.get("activation")))
    return Counts(
        macs, 2 * macs + numel(op.output_shape) * (int(bias) + act), k * out + (out if bias else 0)
    )


def _matmul_infer(op: Op, ins: list[Shape]) -> Shape:
    a, b = ins
    if len(a) < 2 or len(b) < 2:
        raise _fail(op, f"matmul needs rank >= 2 inputs, got {list(a)} and {list(b)}")
    if a[-1] != b[-2]:
        raise _fail(op, f"inner dimensions differ: {list(a)} @ {list(b)}")
    try:
        batch = _broadcast(a[:-2], b[:-2])
    except ValueError:
        raise _fail(op, f"batch dimensions do not broadcast: {list(a)} @ {list(b)}") from None
    return (*batch, a[-2], b[-1])


def _matmul_count(op: Op, ins: list[Shape]) -> Counts:
    a, _ = ins
    macs = numel(op.output_shape) * a[-1]
    return Counts(macs, 2 * macs, 0)


# --- elementwise ----------------------------------------------------------------------


def _broadcast(*shapes: Shape) -> Shape:
    rank = max(len(s) for s in shapes)
    out = []
    for i in range(rank):
        dims = {s[len(s) - rank + i] for s in shapes if len(s) - rank + i >= 0} - {1}
        if len(dims) > 1:
            raise ValueError
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def _same_infer(op: Op, ins: list[Shape]) -> Shape:
    try:
        return _broadcast(*ins)
    except ValueError:
        raise _fail(op, f"input shapes do not broadcast: {[list(s) for s in ins]}") from None


def _per_element(cost: int) -> Callable[[Op, list[Shape]], Counts]:
    def count(op: Op, ins: list[Shape]) -> Counts:
        return Counts(0, cost * numel(op.output_shape) * max(1, len(ins) - 1), 0)

    return count


def _eltwise_infer(op: Op, ins: list[Shape]) -> Shape:
    """One tensor input, optionally against a constant operand of ``const_shape``."""
    const = op.attrs.get("const_shape", ())
    if not isinstance(const, list | tuple) or not all(_is_int(d) for d in const):
        raise _fail(op, f"const_shape must be a list of integers, got {const!r}")
    if any(d <= 0 for d in const):
        raise _fail(op, f"const_shape {list(const)} must be positive")
    if _int_of(op, "cost", 1) < 0:
        raise _fail(op, "cost (FLOPs per element) must not be negative")
    try:
        return _broadcast(ins[0], const) if "const_shape" in op.attrs else ins[0]
    except ValueError:
        raise _fail(
            op, f"constant {list(const)} does not broadcast with input {list(ins[0])}"
        ) from None


def _eltwise_count(op: Op, ins: list[Shape]) -> Counts:
    """``cost`` FLOPs per output element; a constant operand (a bias, a scale) is
    part of the model, so its elements count as parameters."""
    const = op.attrs.get("const_shape")
    params = numel(const) if const is not None else 0
    return Counts(0, _int_of(op, "cost", 1) * numel(op.output_shape), params)


def _norm_infer(op: Op, ins: list[Shape]) -> Shape:
    """Same shape out; the normalised ``axis`` (channels for batchnorm, the last for
    layernorm) must exist, since its size sets the parameter count."""
    axis = op.attrs.get("axis", 1 if op.kind == "batchnorm" else -1)
    rank = len(ins[0])
    if not isinstance(axis, int) or isinstance(axis, bool) or not -rank <= axis < rank:
        raise _fail(op, f"axis {axis!r} is not an axis of a rank-{rank} input")
    return _same_infer(op, ins)


def _norm_count(cost: int) -> Callable[[Op, list[Shape]], Counts]:
    def count(op: Op, ins: list[Shape]) -> Counts:
        axis = op.attrs.get("axis", 1 if op.kind == "batchnorm" else -1)
        return Counts(0, cost * numel(op.output_shape), 2 * op.output_shape[axis])

    return count


# --- pooling --------------------------------------------------------------------------


def _pool_infer(op: Op, ins: list[Shape]) -> Shape:
    x = ins[0]
    _need_rank(op, x, 4)
    n, c, h, w = x
    kh, kw = _pair_of(op, "kernel")
    sh, sw = _pair_of(op, "stride", op.attrs["kernel"])
    ph, pw = _pair_of(op, "padding", 0)
    if op.attrs.get("pool_type", "max") not in ("max", "avg"):
        raise _fail(op, f"unknown pool_type {op.attrs.get('pool_type')!r} (max or avg)")
    if min(kh, kw, sh, sw) <= 0 or min(ph, pw) < 0:
        raise _fail(op, "kernel and stride must be positive")
    ceil = bool(op.attrs.get("ceil_mode", False))
    return (
        n,
        c,
        _window_out(op, h, kh, sh, ph, ceil=ceil),
        _window_out(op, w, kw, sw, pw, ceil=ceil),
    )


def _pool_count(op: Op, ins: list[Shape]) -> Counts:
    kh, kw = _pair_of(op, "kernel")
    return Counts(0, numel(op.output_shape) * kh * kw, 0)


def _gpool_infer(op: Op, ins: list[Shape]) -> Shape:
    x = ins[0]
    _need_rank(op, x, 4)
    return (x[0], x[1], 1, 1)


def _gpool_count(op: Op, ins: list[Shape]) -> Counts:
    return Counts(0, numel(ins[0]), 0)


# --- data movement --------------------------------------------------------------------


def _concat_infer(op: Op, ins: list[Shape]) -> Shape:
    axis = _int_of(op, "axis", 1)
    rank = len(ins[0])
    ax = axis % rank if -rank <= axis < rank else None
    if ax is None or any(len(s) != rank for s in ins):
        raise _fail(op, f"axis {axis} invalid or ranks differ: {[list(s) for s in ins]}")
    for s in ins[1:]:
        if any(s[i] != ins[0][i] for i in range(rank) if i != ax):
            raise _fail(op, f"inputs differ outside axis {axis}: {[list(s) for s in ins]}")
    return tuple(sum(s[i] for s in ins) if i == ax else ins[0][i] for i in range(rank))


def _slice_infer(op: Op, ins: list[Shape]) -> Shape:
    x = ins[0]
    axis = _int_of(op, "axis", 1)
    if not -len(x) <= axis < len(x):
        raise _fail(op, f"axis {axis} out of range for rank {len(x)}")
    axis %= len(x)
    begin, end = _int_of(op, "begin"), _int_of(op, "end")
    if not 0 <= begin < end <= x[axis]:
        raise _fail(op, f"slice [{begin}, {end}) outside dimension {axis} of size {x[axis]}")
    return tuple(end - begin if i == axis else d for i, d in enumerate(x))


def _reshape_infer(op: Op, ins: list[Shape]) -> Shape:
    if numel(op.output_shape) != numel(ins[0]):
        raise _fail(
            op, f"reshape {list(ins[0])} -> {list(op.output_shape)} changes the element count"
        )
    return op.output_shape


def _flatten_infer(op: Op, ins: list[Shape]) -> Shape:
    x = ins[0]
    start = _int_of(op, "start_dim", 1)
    if not 0 <= start < len(x):
        raise _fail(op, f"start_dim {start} out of range for rank {len(x)}")
    return (*x[:start], numel(x[start:]))


def _transpose_infer(op: Op, ins: list[Shape]) -> Shape:
    perm = op.attrs["perm"]  # a KeyError is reported as the missing attribute
    if not isinstance(perm, list | tuple) or not all(_is_int(p) for p in perm):
        raise _fail(op, f"perm must be a list of integers, got {perm!r}")
    if sorted(perm) != list(range(len(ins[0]))):
        raise _fail(op, f"perm {list(perm)} is not a permutation of {len(ins[0])} axes")
    return tuple(ins[0][p] for p in perm)


# --- embedding lookup -----------------------------------------------------------------


def _embedding_infer(op: Op, ins: list[Shape]) -> Shape:
    vocab, dim = _int_of(op, "num_embeddings"), _int_of(op, "embedding_dim")
    if vocab <= 0 or dim <= 0:
        raise _fail(op, f"num_embeddings {vocab} and embedding_dim {dim} must be positive")
    return (*ins[0], dim)


def _embedding_count(op: Op, ins: list[Shape]) -> Counts:
    """A gather: no arithmetic, but the whole table is parameters."""
    return Counts(0, 0, _int_of(op, "num_embeddings") * _int_of(op, "embedding_dim"))


def _input_infer(op: Op, ins: list[Shape]) -> Shape:
    return op.output_shape


def _zero(op: Op, ins: list[Shape]) -> Counts:
    return Counts(0, 0, 0)


KINDS: dict[str, OpKind] = {}


#: attributes any op may carry: where an imported op came from (IOS's format: the node
#: it assembles an input for, the sequential node it is inside, its own and hint names)
#: and the ops a merged op replaces
COMMON_ATTRS = frozenset(
    {"ios_term", "ios_seq", "ios_name", "ios_one_term", "ios_hint", "replaces"}
)


def _attrs(*names: str) -> frozenset[str]:
    return frozenset(names) | COMMON_ATTRS


def register_kind(kind: OpKind) -> OpKind:
    KINDS[kind.name] = kind
    return kind


_CONV = ("kernel", "stride", "padding", "dilation", "groups", "out_channels", "bias",
         "folded_bn", "activation", "replaces")  # fmt: skip
_POOL = ("pool_type", "kernel", "stride", "padding", "ceil_mode", "count_include_pad", "offset")
_UNARY = ("fn", "op")  # provenance: the ONNX operator a kind was imported from

for _k in (
    OpKind("input", (0, 0), _input_infer, _zero, view=True),
    OpKind("conv", (1, None), _conv_infer, _conv_count, attrs=_attrs(*_CONV, "epilogue")),
    OpKind(
        "conv_transpose",
        (1, 1),
        _conv_transpose_infer,
        _conv_transpose_count,
        attrs=_attrs(*_CONV, "output_padding"),
    ),
    OpKind(
        "linear",
        (1, 1),
        _linear_infer,
        _linear_count,
        attrs=_attrs("out_features", "bias", "activation"),
    ),
    OpKind("matmul", (2, 2), _matmul_infer, _matmul_count, attrs=_attrs(*_UNARY)),
    OpKind(
        "embedding",
        (1, 1),
        _embedding_infer,
        _embedding_count,
        attrs=_attrs("num_embeddings", "embedding_dim"),
    ),
    OpKind("pool", (1, 1), _pool_infer, _pool_count, attrs=_attrs(*_POOL)),
    OpKind(
        "global_pool",
        (1, 1),
        _gpool_infer,
        _gpool_count,
        attrs=_attrs("pool_type", "onnx_window", "onnx_pads"),
    ),
    OpKind("concat", (1, None), _concat_infer, _zero, attrs=_attrs("axis")),
    OpKind("slice", (1, 1), _slice_infer, _zero, attrs=_attrs("axis", "begin", "end", "view")),
    OpKind(
        "add",
        (2, None),
        _same_infer,
        _per_element(1),
        attrs=_attrs("average", "scale", "weighted", *_UNARY),
    ),
    OpKind("mul", (2, None), _same_infer, _per_element(1), attrs=_attrs(*_UNARY)),
    OpKind("relu", (1, 1), _same_infer, _per_element(1), attrs=_attrs(*_UNARY)),
    OpKind("sigmoid", (1, 1), _same_infer, _per_element(4), attrs=_attrs(*_UNARY)),
    OpKind("tanh", (1, 1), _same_infer, _per_element(4), attrs=_attrs(*_UNARY)),
    OpKind("gelu", (1, 1), _same_infer, _per_element(8), attrs=_attrs("approximate", *_UNARY)),
    OpKind("silu", (1, 1), _same_infer, _per_element(5), attrs=_attrs(*_UNARY)),
    OpKind("clip", (1, 1), _same_infer, _per_element(2), attrs=_attrs("min", "max", *_UNARY)),
    OpKind(
        "eltwise",
        (1, 1),
        _eltwise_infer,
        _eltwise_count,
        attrs=_attrs("cost", "const_shape", "const_operand", "size", "log", *_UNARY),
    ),
    OpKind("batchnorm", (1, 1), _norm_infer, _norm_count(2), attrs=_attrs("axis", "eps")),
    OpKind("layernorm", (1, 1), _norm_infer, _norm_count(8), attrs=_attrs("axis", "eps")),
    OpKind("softmax", (1, 1), _same_infer, _per_element(5), attrs=_attrs("axis", "scale", "log")),
    OpKind("transpose", (1, 1), _transpose_infer, _zero, attrs=_attrs("perm")),
    OpKind("reshape", (1, 1), _reshape_infer, _zero, view=True),
    OpKind("flatten", (1, 1), _flatten_infer, _zero, view=True, attrs=_attrs("start_dim")),
    OpKind("identity", (1, 1), _same_infer, _zero, view=True),
):
    register_kind(_k)


def kind_of(op: Op) -> OpKind:
    try:
        return KINDS[op.kind]
    except KeyError:
        known = ", ".join(sorted(KINDS))
        raise _fail(op, f"unknown op kind (known: {known})") from None
