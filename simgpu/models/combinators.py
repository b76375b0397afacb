"""Ensembles and multi-task models: the workloads that motivate inter-operator parallelism.

An ensemble runs several whole networks on one shared input, so its width is at least
the number of members; a multi-task model runs one shared backbone, then several task
heads side by side. Both are built from registered models (by name) or from any
OpGraph, so every scheduler can be compared on them:

    ensemble("resnet50", "inception_v3", "squeezenet1_1", batch=8)
    multitask("resnet50", Head("imagenet", "classify", 1000), Head("seg", "dense", 21, 512))

Ensemble members' ops are prefixed with the member's name ("resnet50.conv1"; a member
named twice gets "resnet50_1."), and all members read the same input ops. By default
the members' logits are averaged by one ``add`` op ("ensemble.mean", its 1/n scale in
the epilogue). A multi-task model keeps the backbone's op names up to its feature op
(the backbone's own classifier is cut off) and prefixes each head's ops with its name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import networkx as nx

from simgpu.errors import GraphError
from simgpu.graph import Op, OpGraph
from simgpu.models import MODELS, build_model, register_model
from simgpu.models.builder import GraphBuilder

Member = str | OpGraph

# Ops a classifier tail is made of: walking back from the output through these finds the
# backbone's feature op (the last op of its trunk). BERT's pooler slices the first token.
_HEAD_KINDS = frozenset(
    {"linear", "flatten", "reshape", "global_pool", "softmax", "identity", "slice"}
)
# Backbones whose classifier is not made of those kinds (SqueezeNet's is a 1x1 conv).
FEATURE_OPS: dict[str, str] = {
    "squeezenet1_0": "features.12.concat",
    "squeezenet1_1": "features.12.concat",
}


def _sinks(g: OpGraph) -> list[str]:
    return [op.name for op in g if op.kind != "input" and g.nx.out_degree(op.name) == 0]


def _build(member: Member, batch: int, image_size: int | None, dtype: str) -> OpGraph:
    if isinstance(member, OpGraph):
        return member
    if not isinstance(member, str):
        raise GraphError(f"model must be a registered name or an OpGraph, got {member!r}")
    info = MODELS.get(member)
    if info is not None and info.default_image_size is None:
        image_size = None  # no image input: the shared input must then match by itself
    return build_model(member, batch=batch, image_size=image_size, dtype=dtype)


def _default_size(members: Sequence[Member]) -> int | None:
    """The largest default resolution among members: none of them runs below its own."""
    sizes = [
        MODELS[m].default_image_size
        for m in members
        if isinstance(m, str) and m in MODELS and MODELS[m].default_image_size is not None
    ]
    return max(sizes) if sizes else None  # type: ignore[type-var]


def _input_signature(g: OpGraph) -> list[tuple[str, tuple[int, ...]]]:
    return [(op.name, op.output_shape) for op in g.inputs]


def ensemble(
    *models: Member,
    batch: int = 1,
    image_size: int | None = None,
    dtype: str = "fp32",
    combine: bool = True,
    name: str | None = None,
) -> OpGraph:
    """Several models on one shared input, side by side (optionally averaged).

    ``image_size`` defaults to the largest default resolution of the named members.
    With ``combine`` every member must have one output, all of one shape; they are
    averaged into "ensemble.mean". Members must take identical inputs.
    """
    if not models:
        raise GraphError("ensemble: give at least one model")
    size = image_size if image_size is not None else _default_size(models)
    graphs = [_build(m, batch, size, dtype) for m in models]
    tags: list[str] = []
    for g in graphs:
        tag, k = g.name, 0
        while tag in tags:
            k += 1
            tag = f"{g.name}_{k}"
        tags.append(tag)
    first = _input_signature(graphs[0])
    if not first:
        raise GraphError(f"ensemble: model '{tags[0]}' has no input op")
    for tag, g in zip(tags[1:], graphs[1:], strict=True):
        sig = _input_signature(g)
        if sig != first:
            raise GraphError(
                f"ensemble: model '{tag}' takes inputs {_show(sig)} but '{tags[0]}' takes "
                f"{_show(first)}; members must share one input"
            )
    ops: list[Op] = [graphs[0][n] for n, _ in first]
    shared = {n for n, _ in first}
    outputs: list[str] = []
    for tag, g in zip(tags, graphs, strict=True):

        def rename(n: str, tag: str = tag) -> str:
            return n if n in shared else f"{tag}.{n}"

        for op in g:
            if op.kind != "input":
                ops.append(
                    Op(
                        rename(op.name),
                        op.kind,
                        tuple(rename(i) for i in op.inputs),
                        op.output_shape,
                        op.dtype,
                        op.attrs,
                    )
                )
        sinks = _sinks(g)
        if combine and len(graphs) > 1:
            if len(sinks) != 1:
                raise GraphError(
                    f"ensemble: model '{tag}' has {len(sinks)} outputs {sinks}; averaging "
                    "needs one each (pass combine=False to keep them all)"
                )
            outputs.append(rename(sinks[0]))
    if outputs:
        by_name = {op.name: op for op in ops}
        shapes = [list(by_name[o].output_shape) for o in outputs]
        if any(s != shapes[0] for s in shapes):
            raise GraphError(
                f"ensemble: outputs {outputs} differ in shape {shapes}; averaging needs one "
                "shape (pass combine=False to keep them all)"
            )
        out = by_name[outputs[0]]
        ops.append(
            Op(
                "ensemble.mean",
                "add",
                tuple(outputs),
                out.output_shape,
                out.dtype,
                {"scale": 1 / len(outputs)},
            )
        )
    return OpGraph(ops, name=name or "ensemble_" + "_".join(tags))


def _show(sig: list[tuple[str, tuple[int, ...]]]) -> str:
    return ", ".join(f"{n} {list(s)}" for n, s in sig)


# --- multi-task -------------------------------------------------------------------------


@dataclass(frozen=True)
class Head:
    """One task on a shared feature map.

    ``classify``: a label per input (global average pool or first token, then a linear
    layer; an optional hidden layer first). ``dense``: a prediction per position (an
    FCN-style 3x3 conv of ``hidden`` channels, BN folded, ReLU, then a 1x1 conv with
    bias; a per-token linear for sequence features). Output at feature resolution.
    """

    name: str
    task: str
    outputs: int
    hidden: int = 0

    def check(self) -> None:
        if not self.name or "." in self.name:
            raise GraphError(f"head name {self.name!r} must be non-empty and contain no '.'")
        if self.task not in ("classify", "dense"):
            raise GraphError(f"head '{self.name}': unknown task {self.task!r} (classify, dense)")
        if self.outputs < 1 or self.hidden < 0:
            raise GraphError(
                f"head '{self.name}': outputs {self.outputs} must be >= 1, hidden {self.hidden} >= 0"
            )


def feature_op(g: OpGraph) -> str:
    """The last op of a backbone's trunk: the graph's output, its classifier walked back."""
    if g.name in FEATURE_OPS and FEATURE_OPS[g.name] in g:
        return FEATURE_OPS[g.name]
    sinks = _sinks(g)
    if len(sinks) != 1:
        raise GraphError(
            f"multitask: backbone '{g.name}' has {len(sinks)} outputs {sinks}; name its "
            "feature op (feature=...)"
        )
    x = sinks[0]
    while g[x].kind in _HEAD_KINDS and len(g[x].inputs) == 1 and g[g[x].inputs[0]].kind != "input":
        x = g[x].inputs[0]
    if x == sinks[0]:
        raise GraphError(
            f"multitask: backbone '{g.name}' ends in '{x}' ({g[x].kind}), not a classifier; "
            "name its feature op (feature=...)"
        )
    return x


def _head(b: GraphBuilder, x: str, head: Head) -> str:
    shape = b.shape(x)
    rank = len(shape)
    if rank not in (2, 3, 4):
        raise GraphError(
            f"head '{head.name}': feature of shape {list(shape)} (rank 2, 3 or 4 expected)"
        )
    if head.task == "dense":
        if rank == 4:
            if head.hidden:
                x = b.conv(x, head.hidden, 3, padding=1, name="conv")
            return b.op(
                "conv",
                [x],
                "classifier",
                kernel=(1, 1),
                stride=(1, 1),
                padding=(0, 0),
                dilation=(1, 1),
                groups=1,
                out_channels=head.outputs,
                bias=True,
                folded_bn=False,
                activation=None,
            )
        if rank == 2:
            raise GraphError(
                f"head '{head.name}': a dense head needs a spatial or sequence feature"
            )
        if head.hidden:
            x = b.linear(x, head.hidden, act="gelu", name="dense")
        return b.linear(x, head.outputs, name="classifier")
    if rank == 4:
        x = b.flatten(b.global_pool(x, name="avgpool"), name="flatten")
    elif rank == 3:
        x = b.op("slice", [x], "first_token", axis=1, begin=0, end=1)
        x = b.flatten(x, name="flatten")
    if head.hidden:
        x = b.linear(x, head.hidden, act="relu", name="dense")
    return b.linear(x, head.outputs, name="classifier")


def multitask(
    backbone: Member,
    *heads: Head,
    batch: int = 1,
    image_size: int | None = None,
    dtype: str = "fp32",
    feature: str | None = None,
    name: str | None = None,
) -> OpGraph:
    """A shared backbone trunk feeding several task heads in parallel.

    The trunk is the backbone up to ``feature`` (default: :func:`feature_op`, i.e. the
    backbone without its classifier), everything ``feature`` depends on and nothing else.
    """
    if not heads:
        raise GraphError("multitask: give at least one head")
    for h in heads:
        if not isinstance(h, Head):
            raise GraphError(f"multitask: heads must be Head(...), got {h!r}")
        h.check()
    names = [h.name for h in heads]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise GraphError(f"multitask: head names repeat: {', '.join(dup)}")
    size = image_size if image_size is not None else _default_size([backbone])
    g = _build(backbone, batch, size, dtype)
    feat = feature if feature is not None else feature_op(g)
    if feat not in g:
        raise GraphError(f"multitask: feature op '{feat}' is not an op of '{g.name}'")
    keep = nx.ancestors(g.nx, feat) | {feat}
    trunk = [op for op in g if op.name in keep]
    b = GraphBuilder("heads", g[feat].dtype)
    b.input(g[feat].output_shape, name=feat)  # stands for the trunk's feature op
    for h in heads:
        if h.name in g:
            raise GraphError(f"multitask: head name '{h.name}' is an op of '{g.name}'")
        with b.scope(h.name):
            _head(b, feat, h)
    head_ops = [op for op in b.build() if op.name != feat]
    tasks = "_".join(names)
    return OpGraph([*trunk, *head_ops], name=name or f"multitask_{g.name}_{tasks}")


# --- registered examples ----------------------------------------------------------------

ENSEMBLE_MEMBERS = ("resnet50", "inception_v3", "squeezenet1_1")
MULTITASK_HEADS = (
    Head("imagenet", "classify", 1000),
    Head("places365", "classify", 365),
    Head("segmentation", "dense", 21, hidden=512),
)


def ensemble_resnet50_inception_v3_squeezenet1_1(
    batch: int = 1, image_size: int = 299, dtype: str = "fp32"
) -> OpGraph:
    """Three ImageNet classifiers on one image, logits averaged."""
    return ensemble(
        *ENSEMBLE_MEMBERS,
        batch=batch,
        image_size=image_size,
        dtype=dtype,
        name="ensemble_resnet50_inception_v3_squeezenet1_1",
    )


def multitask_resnet50(batch: int = 1, image_size: int = 224, dtype: str = "fp32") -> OpGraph:
    """A ResNet-50 trunk with ImageNet, Places365 and FCN-style segmentation heads."""
    return multitask(
        "resnet50",
        *MULTITASK_HEADS,
        batch=batch,
        image_size=image_size,
        dtype=dtype,
        name="multitask_resnet50",
    )


register_model(
    "ensemble_resnet50_inception_v3_squeezenet1_1",
    ensemble_resnet50_inception_v3_squeezenet1_1,
    299,
    "ensemble: resnet50 + inception_v3 + squeezenet1_1 on one input, logits averaged",
)
register_model(
    "multitask_resnet50",
    multitask_resnet50,
    224,
    "multi-task: resnet50 trunk, ImageNet + Places365 classifiers + VOC segmentation head",
)
