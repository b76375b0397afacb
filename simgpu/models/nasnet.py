"""NASNet-A (Zoph et al. 2018), Large and Mobile, cell for cell as TF-slim's ``nasnet.py``
(the layout Cadene's ``pretrainedmodels`` ports to PyTorch).

NASNet is the zoo's widest graph: every cell is five blocks, each the sum of two
independent branches (separable convs, pools, identities), so a scheduler has up to ten
branches per cell to run side by side. Every branch is therefore its own chain of ops.

Conventions (the builder's): a separable conv is a depthwise ``conv`` (groups = channels)
then a pointwise 1x1 ``conv``; the BatchNorm after each separable conv is folded into
its pointwise conv (``folded_bn``), the ReLU before the second separable conv fused into
the first pointwise conv. ReLUs that read a cell input are separate ``relu`` ops, one
per branch, exactly as TF-slim applies them (the same tensor also feeds identities and
pools un-rectified, so they cannot be fused upstream). Factorized reduction ("adjust"
for a previous input of twice the resolution) is two 1x1 stride-2 paths, the second
shifted by one pixel (``offset``), concatenated; its final BN is folded into the two
path convs. Dropout and the auxiliary head are omitted (inference).

Layout: stem conv -> two reduction cells as stem -> N normal cells -> reduction -> N
normal -> reduction -> N normal -> ReLU, global average pool, fully connected. The
first normal cell of each stack reads a previous input at twice its resolution, so it
uses factorized reduction; the others adjust the previous input with ReLU+1x1 conv.
"""

from __future__ import annotations

from dataclasses import dataclass

from simgpu.errors import GraphError
from simgpu.graph import OpGraph
from simgpu.models import register_model
from simgpu.models.builder import GraphBuilder


@dataclass(frozen=True)
class NASNetConfig:
    """The hyperparameters that tell Large from Mobile (TF-slim's ImageNet configs)."""

    name: str
    stem_filters: int  # 32 * stem_multiplier
    num_conv_filters: int  # filters of the first stack; penultimate = 24 * this
    cells_per_stack: int  # N
    # TF-slim's ``skip_reduction_layer_input``: the first cell after a reduction reads
    # the cell two before the reduction (Large) instead of the one just before (Mobile)
    skip_reduction_layer_input: bool


LARGE = NASNetConfig("nasnet_a_large", 96, 168, 6, True)
MOBILE = NASNetConfig("nasnet_a_mobile", 32, 44, 4, False)


# -- branches ---------------------------------------------------------------------------


def _separable_branch(b: GraphBuilder, x: str, cout: int, kernel: int, stride: int) -> str:
    """ReLU -> sep conv (stride) -> BN -> ReLU -> sep conv -> BN: TF-slim's
    ``_stacked_separable_conv`` with two layers; the first maps to ``cout`` channels."""
    pad = kernel // 2
    h = b.relu(x, name="relu")
    for i, s in ((1, stride), (2, 1)):
        c = b.shape(h)[1]
        dw = f"separable_{i}.depthwise"
        h = b.conv(h, c, kernel, s, pad, groups=c, act=None, folded_bn=False, name=dw)
        h = b.conv(h, cout, 1, act="relu" if i == 1 else None, name=f"separable_{i}.pointwise")
    return h


def _branch(b: GraphBuilder, x: str, op: str, cout: int, stride: int, name: str) -> str:
    """One branch of a block: ``sep3``/``sep5``/``sep7``, ``avg``/``max`` (3x3 pool,
    padding 1) or ``id`` (no op at all: the block adds the tensor itself)."""
    if op == "id":
        if stride != 1:
            raise GraphError(f"NASNet branch {name}: identity cannot have stride {stride}")
        return x
    if op.startswith("sep"):
        with b.scope(name):
            return _separable_branch(b, x, cout, int(op[3:]), stride)
    if b.shape(x)[1] != cout:
        raise GraphError(f"NASNet branch {name}: pool keeps {b.shape(x)[1]} channels, not {cout}")
    return b.pool(x, op, 3, stride, padding=1, name=name)


# (left op, left input, right op, right input) per block: inputs name a hidden state —
# "cur" (current input after its 1x1), "prev" (adjusted previous input) or "comb<i>".
# From the NASNet-A cells of Zoph et al. 2018, Fig. 4 (TF-slim's operation lists).
NORMAL_BLOCKS = (
    ("sep5", "cur", "sep3", "prev"),
    ("sep5", "prev", "sep3", "prev"),
    ("avg", "cur", "id", "prev"),
    ("avg", "prev", "avg", "prev"),
    ("sep3", "cur", "id", "cur"),
)
NORMAL_CONCAT = ("prev", "comb0", "comb1", "comb2", "comb3", "comb4")

REDUCTION_BLOCKS = (
    ("sep5", "cur", "sep7", "prev"),
    ("max", "cur", "sep7", "prev"),
    ("avg", "cur", "sep5", "prev"),
    ("avg", "comb0", "id", "comb1"),
    ("sep3", "comb0", "max", "cur"),
)
REDUCTION_CONCAT = ("comb1", "comb2", "comb3", "comb4")


def _blocks(
    b: GraphBuilder,
    states: dict[str, str],
    blocks: tuple[tuple[str, str, str, str], ...],
    concat: tuple[str, ...],
    filters: int,
    stride: int,
) -> str:
    """The five blocks of a cell, then the channel concat of the unused hidden states.

    In a reduction cell, branches that read a cell input ("cur"/"prev") have stride 2;
    branches on a block output are already at the reduced resolution.
    """
    for i, (lop, lin, rop, rin) in enumerate(blocks):
        sides = []
        for side, op, src in (("left", lop, lin), ("right", rop, rin)):
            s = stride if src in ("cur", "prev") else 1
            sides.append(_branch(b, states[src], op, filters, s, f"comb_iter_{i}_{side}"))
        states[f"comb{i}"] = b.add(sides[0], sides[1], name=f"comb_iter_{i}")
    return b.concat([states[s] for s in concat], name="concat")


# -- cell inputs ------------------------------------------------------------------------


def _factorized_reduction(b: GraphBuilder, x: str, cout: int) -> str:
    """ReLU, then two 1x1 stride-2 paths (the second shifted one pixel), concatenated:
    halves the resolution of a previous input without dropping every other pixel."""
    r = b.relu(x, name="relu_prev")
    p1 = b.pool(r, "avg", 1, 2, name="path_1.avgpool")
    p1 = b.conv(p1, cout // 2, 1, act=None, name="path_1.conv")
    # TF-slim: pad one row/column at the bottom/right, crop the first: a one-pixel shift
    p2 = b.op(
        "pool",
        [r],
        "path_2.avgpool",
        pool_type="avg",
        kernel=(1, 1),
        stride=(2, 2),
        padding=(0, 0),
        ceil_mode=False,
        offset=(1, 1),
    )
    p2 = b.conv(p2, cout - cout // 2, 1, act=None, name="path_2.conv")
    return b.concat([p1, p2], name="path_concat")


def _adjust_prev(b: GraphBuilder, prev: str, cur: str, filters: int) -> str:
    """TF-slim's ``_reduce_prev_layer``: bring the previous input to the current
    resolution (factorized reduction) or channel count (ReLU + 1x1 conv)."""
    _, c_prev, h_prev, _ = b.shape(prev)
    h_cur = b.shape(cur)[2]
    if h_prev != h_cur:
        if -(-h_prev // 2) != h_cur:
            raise GraphError(
                f"NASNet cell: previous input {h_prev}px is not twice the current {h_cur}px"
            )
        return _factorized_reduction(b, prev, filters)
    if c_prev != filters:
        r = b.relu(prev, name="relu_prev")
        return b.conv(r, filters, 1, act=None, name="conv_prev_1x1")
    return prev


def _cell(
    b: GraphBuilder, cur: str, prev: str | None, filters: int, reduction: bool, name: str
) -> str:
    """A normal or reduction cell on (current, previous) inputs; ``prev`` None is the
    first stem cell, whose "previous" input is its raw current input."""
    with b.scope(name):
        p = cur if prev is None else _adjust_prev(b, prev, cur, filters)
        r = b.relu(cur, name="relu")
        c = b.conv(r, filters, 1, act=None, name="conv_1x1")
        states = {"cur": c, "prev": p}
        if reduction:
            return _blocks(b, states, REDUCTION_BLOCKS, REDUCTION_CONCAT, filters, 2)
        return _blocks(b, states, NORMAL_BLOCKS, NORMAL_CONCAT, filters, 1)


# -- network ----------------------------------------------------------------------------


def nasnet_a(
    cfg: NASNetConfig,
    batch: int = 1,
    image_size: int = 224,
    dtype: str = "fp32",
    num_classes: int = 1000,
) -> OpGraph:
    """NASNet-A with ``cfg`` for ``batch`` images of ``image_size``² pixels (logits)."""
    b = GraphBuilder(cfg.name, dtype)
    x = b.input((batch, 3, image_size, image_size))
    f = cfg.num_conv_filters
    conv0 = b.conv(x, cfg.stem_filters, 3, stride=2, act=None, name="conv0")
    stem0 = _cell(b, conv0, None, f // 4, True, "cell_stem_0")
    stem1 = _cell(b, stem0, conv0, f // 2, True, "cell_stem_1")
    # cell_outputs as in TF-slim's _build_nasnet_base: [.., second to last, last]
    outputs = [stem0, stem1]
    n = cfg.cells_per_stack
    for stack in range(3):
        filters = f * 2**stack
        if stack > 0:
            red = _cell(b, outputs[-1], outputs[-2], filters, True, f"reduction_cell_{stack - 1}")
            skip_prev = outputs[-2]
            outputs.append(red)
        for i in range(n):
            cell_num = stack * n + i
            prev = outputs[-2]
            if stack > 0 and i == 0 and cfg.skip_reduction_layer_input:
                prev = skip_prev
            outputs.append(_cell(b, outputs[-1], prev, filters, False, f"cell_{cell_num}"))
    h = b.relu(outputs[-1], name="relu")
    h = b.global_pool(h, name="avg_pool")
    h = b.flatten(h, name="flatten")
    b.linear(h, num_classes, name="last_linear")
    return b.build()


def nasnet_a_large(
    batch: int = 1, image_size: int = 331, dtype: str = "fp32", num_classes: int = 1000
) -> OpGraph:
    """NASNet-A Large (6 @ 4032): N=6 cells per stack, penultimate 4032 filters, 331 px."""
    return nasnet_a(LARGE, batch, image_size, dtype, num_classes)


def nasnet_a_mobile(
    batch: int = 1, image_size: int = 224, dtype: str = "fp32", num_classes: int = 1000
) -> OpGraph:
    """NASNet-A Mobile (4 @ 1056): N=4 cells per stack, penultimate 1056 filters, 224 px."""
    return nasnet_a(MOBILE, batch, image_size, dtype, num_classes)


register_model(
    "nasnet_a_large",
    nasnet_a_large,
    331,
    "NASNet-A Large 6@4032 (Zoph et al. 2018), TF-slim layout, BN folded; 18 normal + "
    "2 reduction + 2 stem cells, every branch its own ops",
)
register_model(
    "nasnet_a_mobile",
    nasnet_a_mobile,
    224,
    "NASNet-A Mobile 4@1056 (Zoph et al. 2018), TF-slim layout, BN folded; 12 normal + "
    "2 reduction + 2 stem cells, every branch its own ops",
)
