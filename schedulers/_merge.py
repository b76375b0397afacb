"""IOS's operator merge as an explicit graph rewrite: sibling convolutions become one.

Convolutions that read the same input with the same stride, dilation, output size,
activation and dtype (and no channel groups) compute one wider convolution: output
channels are summed and every kernel is zero-padded, centred, to the largest kernel
(per dimension). One launch then fills the GPU where several small ones left it idle —
at the price of the padded MACs. The rewrite is explicit: the merged conv is a new op
whose ``replaces`` attribute names the ops it stands for, and each original name
becomes a zero-cost ``slice`` view (``view=True``) of its channels of the merged
output, so every consumer reads the same name and shape as before.

API (shared by the ``ios`` and ``autograph`` schedulers):

- :func:`merge_key` — the compatibility class of one op (``None``: never mergeable);
  ops of one class can be merged in any combination of two or more.
- :func:`merge_candidates` — every class of two or more ops, in definition order.
- :func:`check_merge` — raise :class:`MergeError` saying why a set cannot be merged.
- :func:`merged_ops` — the merged conv and the slice views for a set (no graph built).
- :func:`apply_merge` / :func:`apply_merges` — the rewritten :class:`OpGraph`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from simgpu.errors import GraphError
from simgpu.graph import Op, OpGraph

MERGED_ATTR = "replaces"  # kernels.signature() ignores it, so measured tables still apply


class MergeError(GraphError):
    """A set of ops that cannot be merged into one convolution (the message says why)."""


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    a, b = v
    return (int(a), int(b))


def _conv_geometry(
    op: Op,
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]]:
    a = op.attrs
    return (
        _pair(a["kernel"]),
        _pair(a.get("stride", 1)),
        _pair(a.get("padding", 0)),
        _pair(a.get("dilation", 1)),
    )


def _why_not(graph: OpGraph, name: str) -> str | None:
    """Why one op can never take part in a merge (None: it can)."""
    if name not in graph:
        return f"'{name}' is not an op of graph '{graph.name}'"
    op = graph[name]
    if op.kind != "conv":
        return f"'{name}' is a {op.kind}, not a conv"
    if int(op.attrs.get("groups", 1)) != 1:
        return f"'{name}' is a grouped conv (groups={op.attrs.get('groups')})"
    if len(op.output_shape) != 4:
        return f"'{name}' does not have a 4-d output"
    return None


def merge_key(graph: OpGraph, name: str) -> tuple | None:
    """The class of ops ``name`` can merge with, or None if it can merge with none.

    Centred zero-padding to a common kernel K keeps every output aligned exactly when
    all members share ``2 * padding - dilation * kernel`` and the kernel's parity (per
    dimension): then the merged padding ``padding + dilation * (K - kernel) / 2`` is the
    same for all of them, whatever K is. So the class does not depend on which members
    are merged together.
    """
    if _why_not(graph, name) is not None:
        return None
    op = graph[name]
    k, s, p, d = _conv_geometry(op)
    centre = tuple(2 * p[i] - d[i] * k[i] for i in range(2))
    parity = (k[0] % 2, k[1] % 2)
    return (
        op.inputs[0],
        s,
        d,
        centre,
        parity,
        tuple(op.output_shape[2:]),
        op.attrs.get("activation"),
        op.dtype,
    )


def merge_candidates(graph: OpGraph) -> list[tuple[str, ...]]:
    """Every class of two or more mutually mergeable convs, members in definition order,
    classes ordered by their first member. Any two or more ops of one class merge."""
    classes: dict[tuple, list[str]] = {}
    for name in graph.ops:
        key = merge_key(graph, name)
        if key is not None:
            classes.setdefault(key, []).append(name)
    return [tuple(ms) for ms in classes.values() if len(ms) >= 2]


def check_merge(graph: OpGraph, ops: Sequence[str]) -> None:
    """Raise MergeError (one line, naming the ops) unless ``ops`` can be merged."""
    names = list(ops)
    if len(names) < 2:
        raise MergeError(f"a merge needs at least two convs, got {names}")
    if len(set(names)) != len(names):
        raise MergeError(f"merge names an op twice: {names}")
    for n in names:
        why = _why_not(graph, n)
        if why is not None:
            raise MergeError(f"cannot merge {names}: {why}")
    first = graph[names[0]]
    key0 = merge_key(graph, names[0])
    for n in names[1:]:
        if merge_key(graph, n) == key0:
            continue
        op = graph[n]
        if op.inputs != first.inputs:
            what = f"reads '{op.inputs[0]}', '{names[0]}' reads '{first.inputs[0]}'"
        elif op.output_shape[2:] != first.output_shape[2:]:
            what = f"output size {list(op.output_shape[2:])} differs from {list(first.output_shape[2:])}"
        elif op.attrs.get("activation") != first.attrs.get("activation"):
            what = f"activation {op.attrs.get('activation')!r} differs from {first.attrs.get('activation')!r}"
        elif op.dtype != first.dtype:
            what = f"dtype {op.dtype} differs from {first.dtype}"
        elif _conv_geometry(op)[1] != _conv_geometry(first)[1]:
            what = "stride differs"
        elif _conv_geometry(op)[3] != _conv_geometry(first)[3]:
            what = "dilation differs"
        else:
            what = "padding does not align its kernel centre with the others'"
        raise MergeError(f"cannot merge '{n}' with '{names[0]}': {what}")


def merged_name(ops: Sequence[str]) -> str:
    return "+".join(ops)


def merged_ops(graph: OpGraph, ops: Sequence[str], name: str | None = None) -> tuple[Op, list[Op]]:
    """The merged conv (named ``name``, default the members joined by '+') and, for each
    member in order, a ``slice`` view of its channels under the member's own name."""
    check_merge(graph, ops)
    names = list(ops)
    members = [graph[n] for n in names]
    geo = [_conv_geometry(op) for op in members]
    big = tuple(max(g[0][i] for g in geo) for i in range(2))
    k0, s, p0, d = geo[0]
    pad = tuple(p0[i] + d[i] * (big[i] - k0[i]) // 2 for i in range(2))
    couts = [int(op.attrs["out_channels"]) for op in members]
    first = members[0]
    merged = name or merged_name(names)
    if merged in graph and merged not in names:
        raise MergeError(
            f"cannot name the merged conv '{merged}': the graph has an op of that name"
        )
    conv = Op(
        merged,
        "conv",
        first.inputs,
        (first.output_shape[0], sum(couts), *first.output_shape[2:]),
        first.dtype,
        {
            "kernel": big,
            "stride": s,
            "padding": pad,
            "dilation": d,
            "groups": 1,
            "out_channels": sum(couts),
            "bias": any(bool(op.attrs.get("bias", False)) for op in members),
            "folded_bn": any(bool(op.attrs.get("folded_bn", False)) for op in members),
            "activation": first.attrs.get("activation"),
            MERGED_ATTR: tuple(names),
        },
    )
    slices = []
    begin = 0
    for op, c in zip(members, couts, strict=True):
        slices.append(
            Op(
                op.name,
                "slice",
                (merged,),
                op.output_shape,
                op.dtype,
                {"axis": 1, "begin": begin, "end": begin + c, "view": True},
            )
        )
        begin += c
    return conv, slices


def apply_merge(graph: OpGraph, ops: Sequence[str], name: str | None = None) -> OpGraph:
    """``graph`` with ``ops`` merged: the merged conv and the slice views take the place
    of the first member; consumers are untouched. Raises MergeError if not mergeable."""
    return apply_merges(graph, [ops], [name] if name is not None else None)


def apply_merges(
    graph: OpGraph, groups: Iterable[Sequence[str]], names: Sequence[str | None] | None = None
) -> OpGraph:
    """Apply several disjoint merges at once (each checked against ``graph``)."""
    groups = [list(g) for g in groups]
    names = list(names) if names is not None else [None] * len(groups)
    if len(names) != len(groups):
        raise MergeError(f"{len(groups)} merges but {len(names)} names")
    placed: dict[str, list[Op]] = {}
    dropped: set[str] = set()
    for g, nm in zip(groups, names, strict=True):
        taken = dropped.intersection(g)
        if taken:
            raise MergeError(f"op '{sorted(taken)[0]}' appears in two merges")
        conv, slices = merged_ops(graph, g, nm)
        placed[g[0]] = [conv, *slices]
        dropped.update(g)
    return rebuild(graph, placed, dropped)


def rebuild(graph: OpGraph, placed: dict[str, list[Op]], dropped: set[str]) -> OpGraph:
    """``graph`` with the ops in ``placed`` standing where the op of each key stood and
    the other ``dropped`` ops gone: one rewrite's ops take one original's place."""
    out: list[Op] = []
    for op in graph:
        if op.name in placed:
            out.extend(placed[op.name])
        elif op.name not in dropped:
            out.append(op)
    return OpGraph(out, name=graph.name)
