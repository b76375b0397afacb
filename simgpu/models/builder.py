"""GraphBuilder: write a model as a few lines of calls instead of hand-computed shapes.

Each call creates one :class:`~simgpu.graph.Op`, infers its output shape with the op
kind's own ``infer`` (so a bad shape fails at the line that caused it, as a
``GraphError`` naming the op) and returns the op's name for the next call to consume.
Names are deterministic: an explicit name, or the kind with a counter, prefixed by the
enclosing :meth:`GraphBuilder.scope` names ("Mixed_5b.branch1x1").
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from simgpu.errors import GraphError
from simgpu.graph import Op, OpGraph
from simgpu.ops import Shape, kind_of

IntPair = int | tuple[int, int]


def _pair(v: IntPair) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    a, b = v
    return (int(a), int(b))


class GraphBuilder:
    """Accumulates ops in definition order; :meth:`build` validates them as an OpGraph."""

    def __init__(self, name: str, dtype: str = "fp32") -> None:
        self.name = name
        self.dtype = dtype
        self._ops: dict[str, Op] = {}
        self._scopes: list[str] = []

    # -- naming -------------------------------------------------------------------------

    @contextmanager
    def scope(self, name: str) -> Iterator[None]:
        """Prefix the names of ops created inside the block with ``name.``."""
        self._scopes.append(name)
        try:
            yield
        finally:
            self._scopes.pop()

    def _qualify(self, name: str | None, base: str) -> str:
        prefix = "".join(f"{s}." for s in self._scopes)
        if name is not None:
            full = prefix + name
            if full in self._ops:
                raise GraphError(f"op '{full}' is defined twice")
            return full
        full, i = prefix + base, 0
        while full in self._ops:  # auto names: conv, conv_1, conv_2, ... per scope
            i += 1
            full = f"{prefix}{base}_{i}"
        return full

    # -- core ---------------------------------------------------------------------------

    def shape(self, x: str) -> Shape:
        """Output shape of an op already added."""
        return self._ops[x].output_shape

    def op(self, kind: str, inputs: Sequence[str], name: str | None = None, **attrs: Any) -> str:
        """Add an op of any kind; its shape comes from the kind's infer function."""
        return self._add(kind, inputs, name, kind, attrs)

    def _add(
        self, kind: str, inputs: Sequence[str], name: str | None, base: str, attrs: dict[str, Any]
    ) -> str:
        full = self._qualify(name, base)
        for src in inputs:
            if src not in self._ops:
                raise GraphError(f"op '{full}': input '{src}' is not an op of the graph")
        provisional = Op(full, kind, tuple(inputs), (1,), self.dtype, attrs)
        k = kind_of(provisional)
        lo, hi = k.arity
        if len(inputs) < lo or (hi is not None and len(inputs) > hi):
            raise GraphError(f"op '{full}' ({kind}): got {len(inputs)} inputs, takes {lo}..{hi}")
        try:
            shape = k.infer(provisional, [self.shape(s) for s in inputs])
        except KeyError as e:
            raise GraphError(f"op '{full}' ({kind}): missing attribute {e}") from None
        self._ops[full] = Op(full, kind, tuple(inputs), shape, self.dtype, attrs)
        return full

    def build(self) -> OpGraph:
        return OpGraph(self._ops.values(), name=self.name)

    # -- layers -------------------------------------------------------------------------

    def input(self, shape: Sequence[int], name: str = "input") -> str:
        full = self._qualify(name, "input")
        self._ops[full] = Op(full, "input", (), tuple(shape), self.dtype)
        return full

    def conv(
        self,
        x: str,
        out_channels: int,
        kernel: IntPair,
        stride: IntPair = 1,
        padding: IntPair = 0,
        groups: int = 1,
        act: str | None = "relu",
        folded_bn: bool = True,
        dilation: IntPair = 1,
        name: str | None = None,
    ) -> str:
        """Conv with BatchNorm folded in and the activation fused: one op, as engines run it."""
        return self.op(
            "conv",
            [x],
            name,
            kernel=_pair(kernel),
            stride=_pair(stride),
            padding=_pair(padding),
            dilation=_pair(dilation),
            groups=groups,
            out_channels=out_channels,
            bias=False,
            folded_bn=folded_bn,
            activation=act,
        )

    def conv_bias(
        self, x: str, out: int, kernel: int, name: str, stride: int = 1, padding: int = 0
    ) -> str:
        """A plain Conv2d with bias and a fused ReLU: networks without BatchNorm to fold
        (SqueezeNet, VGG, AlexNet)."""
        return self.op(
            "conv",
            [x],
            name,
            kernel=(kernel, kernel),
            stride=(stride, stride),
            padding=(padding, padding),
            dilation=(1, 1),
            groups=1,
            out_channels=out,
            bias=True,
            folded_bn=False,
            activation="relu",
        )

    def pool(
        self,
        x: str,
        pool_type: str,
        kernel: IntPair,
        stride: IntPair | None = None,
        padding: IntPair = 0,
        ceil_mode: bool = False,
        name: str | None = None,
    ) -> str:
        attrs = {
            "pool_type": pool_type,
            "kernel": _pair(kernel),
            "stride": _pair(kernel if stride is None else stride),
            "padding": _pair(padding),
            "ceil_mode": ceil_mode,
        }
        return self._add("pool", [x], name, f"{pool_type}pool", attrs)

    def global_pool(self, x: str, pool_type: str = "avg", name: str | None = None) -> str:
        return self.op("global_pool", [x], name, pool_type=pool_type)

    def concat(self, xs: Sequence[str], axis: int = 1, name: str | None = None) -> str:
        return self.op("concat", xs, name, axis=axis)

    def add(self, a: str, b: str, name: str | None = None) -> str:
        return self.op("add", [a, b], name)

    def relu(self, x: str, name: str | None = None) -> str:
        return self.op("relu", [x], name)

    def flatten(self, x: str, start_dim: int = 1, name: str | None = None) -> str:
        return self.op("flatten", [x], name, start_dim=start_dim)

    def linear(
        self,
        x: str,
        out_features: int,
        bias: bool = True,
        act: str | None = None,
        name: str | None = None,
    ) -> str:
        return self.op("linear", [x], name, out_features=out_features, bias=bias, activation=act)

    def softmax(self, x: str, axis: int = -1, name: str | None = None) -> str:
        return self.op("softmax", [x], name, axis=axis)
