"""AutoGraph's substitutions besides the sibling-conv merge: fusion and splitting.

Both are exact graph rewrites: the rewritten graph computes the same outputs under the
same names and shapes, and every new op is an ordinary op the simulator's kernel-cost
model prices (:mod:`simgpu.kernels`), so what a rewrite costs or saves is simulated,
never assumed.

- **Fuse** (:func:`fuse_candidates`, :func:`fused_op`): a conv and the chain of
  elementwise ops after it (each the only consumer of the one before; unary ``relu``,
  ``sigmoid``, ``tanh``, ``gelu``, ``silu``; binary ``add``/``mul`` of two inputs)
  become one conv whose kernel runs the chain in its epilogue (``epilogue`` attribute,
  :data:`simgpu.ops.EPILOGUE_FLOPS`): its BatchNorm is folded into a bias and its
  activation becomes the first epilogue step, so the runtime launches one kernel where
  eager PyTorch launched conv, BatchNorm, activation and one kernel per chain op. The
  fused op reads each binary step's other operand (its bytes count) and keeps the name
  of the chain's last op; ``replaces`` names every op it stands for. A chain of length
  0 fuses only the conv's own BatchNorm and activation. Fusing a residual add makes
  the conv wait for the add's other operand, which can cost more than it saves.
- **Split** (:func:`split_ops`): a conv becomes two convs over its output channels
  (the first a multiple of 8 near half) and a channel concat under the conv's name, so
  the halves can run on two streams beside other work. The concat is a copy kernel,
  priced as any concat.

The third substitution, merging sibling convs of different kernel sizes by centred
zero-padding, is :mod:`schedulers._merge`; with fusion on, a merged conv folds its
own BatchNorm and activation too (``fold_merged``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from schedulers._merge import MERGED_ATTR, merged_ops, rebuild
from simgpu.errors import GraphError
from simgpu.graph import Op, OpGraph
from simgpu.ops import EPILOGUE_BINARY, EPILOGUE_FLOPS

SPLIT_SUFFIX = (".split0", ".split1")


class RewriteError(GraphError):
    """A rewrite that does not apply to the graph (the message says why)."""


def _fusable_producer(graph: OpGraph, name: str) -> bool:
    op = graph[name]
    act = op.attrs.get("activation")
    return (
        op.kind == "conv"
        and len(op.inputs) == 1
        and "epilogue" not in op.attrs
        and MERGED_ATTR not in op.attrs
        and len(op.output_shape) == 4
        and (act is None or (act in EPILOGUE_FLOPS and act not in EPILOGUE_BINARY))
    )


def _chain_step(graph: OpGraph, cur: str) -> str | None:
    """The elementwise op ``cur``'s value flows into if it can join a fused epilogue."""
    succ = graph.successors(cur)
    if len(succ) != 1:
        return None
    s = graph[succ[0]]
    if s.kind not in EPILOGUE_FLOPS or s.attrs or s.dtype != graph[cur].dtype:
        return None  # attributes (clip bounds, a weighted add) have no epilogue form
    if s.output_shape != graph[cur].output_shape:
        return None  # a broadcast that grows the tensor is not an epilogue
    if s.kind in EPILOGUE_BINARY:
        if len(s.inputs) != 2 or s.inputs[0] == s.inputs[1]:
            return None
    elif s.inputs != (cur,):
        return None
    return s.name


def fuse_candidates(graph: OpGraph) -> list[tuple[str, ...]]:
    """Every fusion: a conv followed by the first k ops of its elementwise chain, for
    each k (k = 0 only where the conv has a BatchNorm or activation to fold), in
    definition order of the conv, then k."""
    out: list[tuple[str, ...]] = []
    for name in graph.ops:
        if not _fusable_producer(graph, name):
            continue
        p = graph[name]
        chain = [name]
        if p.attrs.get("folded_bn") or p.attrs.get("activation"):
            out.append(tuple(chain))
        cur: str | None = name
        while (cur := _chain_step(graph, cur)) is not None:
            chain.append(cur)
            out.append(tuple(chain))
    return out


def fused_op(graph: OpGraph, ops: Sequence[str]) -> Op:
    """The conv that computes ``ops`` (a conv and a prefix of its elementwise chain) in
    one kernel, named after the last of them."""
    names = list(ops)
    if not names or names[0] not in graph or not _fusable_producer(graph, names[0]):
        raise RewriteError(f"cannot fuse {names}: the first op is not a fusable conv")
    p = graph[names[0]]
    steps = [p.attrs["activation"]] if p.attrs.get("activation") else []
    operands: list[str] = []
    for prev, cur in itertools.pairwise(names):
        if _chain_step(graph, prev) != cur:
            raise RewriteError(
                f"cannot fuse {names}: '{cur}' is not the fusable consumer of '{prev}'"
            )
        op = graph[cur]
        steps.append(op.kind)
        if op.kind in EPILOGUE_BINARY:
            operands.append(op.inputs[1] if op.inputs[0] == prev else op.inputs[0])
    if len(names) == 1 and not steps and not p.attrs.get("folded_bn"):
        raise RewriteError(f"cannot fuse {names}: nothing to fuse")
    folded = fold_epilogue(p)
    attrs = {**folded.attrs, "epilogue": tuple(steps), MERGED_ATTR: tuple(names)}
    return Op(names[-1], "conv", (p.inputs[0], *operands), p.output_shape, p.dtype, attrs)


def fold_epilogue(conv: Op) -> Op:
    """``conv`` running its own BatchNorm and activation in its kernel: the BatchNorm
    folded into the weights and a bias (as inference engines do), the activation the
    first epilogue step. The same values, one kernel instead of three."""
    act = conv.attrs.get("activation")
    if act is not None and (act not in EPILOGUE_FLOPS or act in EPILOGUE_BINARY):
        raise RewriteError(f"cannot fold '{conv.name}': activation {act!r} has no epilogue form")
    attrs = {
        **conv.attrs,
        "bias": bool(conv.attrs.get("bias")) or bool(conv.attrs.get("folded_bn")),
        "folded_bn": False,
        "activation": None,
        "epilogue": (*([act] if act else []), *conv.attrs.get("epilogue", ())),
    }
    return Op(conv.name, conv.kind, conv.inputs, conv.output_shape, conv.dtype, attrs)


def can_fold(conv: Op) -> bool:
    act = conv.attrs.get("activation")
    return (act is None or (act in EPILOGUE_FLOPS and act not in EPILOGUE_BINARY)) and bool(
        act or conv.attrs.get("folded_bn")
    )


def can_split(graph: OpGraph, name: str) -> bool:
    op = graph[name]
    return (
        op.kind == "conv"
        and len(op.inputs) == 1
        and int(op.attrs.get("groups", 1)) == 1
        and MERGED_ATTR not in op.attrs
        and len(op.output_shape) == 4
        and int(op.attrs["out_channels"]) >= 16
        and not any(name + s in graph for s in SPLIT_SUFFIX)
    )


def split_ops(graph: OpGraph, name: str) -> list[Op]:
    """Two convs over the output channels of ``name`` and the channel concat that takes
    its name: the first half has a multiple of 8 channels (tensor-core friendly)."""
    if name not in graph or not can_split(graph, name):
        raise RewriteError(f"cannot split '{name}': not a plain conv of 16 or more channels")
    op = graph[name]
    cout = int(op.attrs["out_channels"])
    first = max(8, cout // 2 // 8 * 8)
    halves = []
    for suffix, c in zip(SPLIT_SUFFIX, (first, cout - first), strict=True):
        attrs = {**op.attrs, "out_channels": c}
        shape = (op.output_shape[0], c, *op.output_shape[2:])
        halves.append(Op(name + suffix, "conv", op.inputs, shape, op.dtype, attrs))
    cat = Op(name, "concat", tuple(h.name for h in halves), op.output_shape, op.dtype, {"axis": 1})
    return [*halves, cat]


def apply_rewrites(
    graph: OpGraph,
    merges: Sequence[Sequence[str]] = (),
    fuses: Sequence[Sequence[str]] = (),
    splits: Sequence[str] = (),
    fold_merged: bool = False,
) -> OpGraph:
    """``graph`` with disjoint merges, fusions and splits applied at once (each checked
    against ``graph``); every rewrite's ops take the place of one of its originals.
    ``fold_merged``: each merged conv also runs its BatchNorm and activation in its
    kernel (:func:`fold_epilogue`)."""
    placed: dict[str, list[Op]] = {}
    dropped: set[str] = set()

    def claim(ops: Sequence[str]) -> None:
        taken = dropped.intersection(ops)
        if taken:
            raise RewriteError(f"op '{sorted(taken)[0]}' appears in two rewrites")
        dropped.update(ops)

    for members in merges:
        claim(members)
        conv, slices = merged_ops(graph, list(members))
        if fold_merged and can_fold(conv):
            conv = fold_epilogue(conv)
        placed[members[0]] = [conv, *slices]
    for ops in fuses:
        claim(ops)
        placed[ops[-1]] = [fused_op(graph, ops)]
    for name in splits:
        claim([name])
        placed[name] = split_ops(graph, name)
    return rebuild(graph, placed, dropped)


def tiny_graph(graph: OpGraph, ops: Sequence[Op]) -> OpGraph:
    """``ops`` alone, their inputs from ``graph`` as graph inputs: what a rewrite's new
    ops cost is measured on (the Profiler memoises by kernel signature)."""
    made = {o.name for o in ops}
    srcs: dict[str, Op] = {}
    for o in ops:
        for i in o.inputs:
            if i not in made and i not in srcs:
                src = graph[i]
                srcs[i] = Op(i, "input", (), src.output_shape, src.dtype)
    return OpGraph([*srcs.values(), *ops], name=graph.name)
