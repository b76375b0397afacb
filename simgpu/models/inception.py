"""Inception V3 (Szegedy et al. 2016), layer for layer as torchvision's ``Inception3``.

It is the model the IOS paper schedules: each Mixed block is several independent
branches joined by one channel concat, so there is real inter-operator parallelism.
Every ``BasicConv2d`` (Conv-BN-ReLU) is one ``conv`` op with BN folded and ReLU fused;
op names follow torchvision's module names ("Mixed_5b.branch5x5_2"). Dropout is omitted
(inference). Where torchvision concatenates inside a branch (InceptionE's 1x3/3x1 pairs)
the pairs feed the block's single concat directly: same channel order, one copy fewer.
"""

from __future__ import annotations

from simgpu.graph import OpGraph
from simgpu.models import register_model
from simgpu.models.builder import GraphBuilder


def _inception_a(b: GraphBuilder, x: str, pool_features: int) -> str:
    b1 = b.conv(x, 64, 1, name="branch1x1")
    b5 = b.conv(x, 48, 1, name="branch5x5_1")
    b5 = b.conv(b5, 64, 5, padding=2, name="branch5x5_2")
    b3 = b.conv(x, 64, 1, name="branch3x3dbl_1")
    b3 = b.conv(b3, 96, 3, padding=1, name="branch3x3dbl_2")
    b3 = b.conv(b3, 96, 3, padding=1, name="branch3x3dbl_3")
    bp = b.pool(x, "avg", 3, 1, padding=1, name="avg_pool")
    bp = b.conv(bp, pool_features, 1, name="branch_pool")
    return b.concat([b1, b5, b3, bp], name="concat")


def _inception_b(b: GraphBuilder, x: str) -> str:
    b3 = b.conv(x, 384, 3, stride=2, name="branch3x3")
    bd = b.conv(x, 64, 1, name="branch3x3dbl_1")
    bd = b.conv(bd, 96, 3, padding=1, name="branch3x3dbl_2")
    bd = b.conv(bd, 96, 3, stride=2, name="branch3x3dbl_3")
    bp = b.pool(x, "max", 3, 2, name="max_pool")
    return b.concat([b3, bd, bp], name="concat")


def _inception_c(b: GraphBuilder, x: str, c7: int) -> str:
    b1 = b.conv(x, 192, 1, name="branch1x1")
    b7 = b.conv(x, c7, 1, name="branch7x7_1")
    b7 = b.conv(b7, c7, (1, 7), padding=(0, 3), name="branch7x7_2")
    b7 = b.conv(b7, 192, (7, 1), padding=(3, 0), name="branch7x7_3")
    bd = b.conv(x, c7, 1, name="branch7x7dbl_1")
    bd = b.conv(bd, c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")
    bd = b.conv(bd, c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")
    bd = b.conv(bd, c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")
    bd = b.conv(bd, 192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")
    bp = b.pool(x, "avg", 3, 1, padding=1, name="avg_pool")
    bp = b.conv(bp, 192, 1, name="branch_pool")
    return b.concat([b1, b7, bd, bp], name="concat")


def _inception_d(b: GraphBuilder, x: str) -> str:
    b3 = b.conv(x, 192, 1, name="branch3x3_1")
    b3 = b.conv(b3, 320, 3, stride=2, name="branch3x3_2")
    b7 = b.conv(x, 192, 1, name="branch7x7x3_1")
    b7 = b.conv(b7, 192, (1, 7), padding=(0, 3), name="branch7x7x3_2")
    b7 = b.conv(b7, 192, (7, 1), padding=(3, 0), name="branch7x7x3_3")
    b7 = b.conv(b7, 192, 3, stride=2, name="branch7x7x3_4")
    bp = b.pool(x, "max", 3, 2, name="max_pool")
    return b.concat([b3, b7, bp], name="concat")


def _inception_e(b: GraphBuilder, x: str) -> str:
    b1 = b.conv(x, 320, 1, name="branch1x1")
    b3 = b.conv(x, 384, 1, name="branch3x3_1")
    b3a = b.conv(b3, 384, (1, 3), padding=(0, 1), name="branch3x3_2a")
    b3b = b.conv(b3, 384, (3, 1), padding=(1, 0), name="branch3x3_2b")
    bd = b.conv(x, 448, 1, name="branch3x3dbl_1")
    bd = b.conv(bd, 384, 3, padding=1, name="branch3x3dbl_2")
    bda = b.conv(bd, 384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")
    bdb = b.conv(bd, 384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")
    bp = b.pool(x, "avg", 3, 1, padding=1, name="avg_pool")
    bp = b.conv(bp, 192, 1, name="branch_pool")
    return b.concat([b1, b3a, b3b, bda, bdb, bp], name="concat")


def _aux_logits(b: GraphBuilder, x: str, num_classes: int) -> str:
    x = b.pool(x, "avg", 5, 3, name="avg_pool")
    x = b.conv(x, 128, 1, name="conv0")
    x = b.conv(x, 768, 5, name="conv1")
    x = b.global_pool(x, name="adaptive_avg_pool")
    x = b.flatten(x, name="flatten")
    return b.linear(x, num_classes, name="fc")


def inception_v3(
    batch: int = 1,
    image_size: int = 299,
    dtype: str = "fp32",
    aux_logits: bool = False,
    num_classes: int = 1000,
) -> OpGraph:
    """Inception V3 for ``batch`` images of ``image_size``² pixels (logits, no softmax)."""
    b = GraphBuilder("inception_v3_aux" if aux_logits else "inception_v3", dtype)
    x = b.input((batch, 3, image_size, image_size))
    x = b.conv(x, 32, 3, stride=2, name="Conv2d_1a_3x3")
    x = b.conv(x, 32, 3, name="Conv2d_2a_3x3")
    x = b.conv(x, 64, 3, padding=1, name="Conv2d_2b_3x3")
    x = b.pool(x, "max", 3, 2, name="maxpool1")
    x = b.conv(x, 80, 1, name="Conv2d_3b_1x1")
    x = b.conv(x, 192, 3, name="Conv2d_4a_3x3")
    x = b.pool(x, "max", 3, 2, name="maxpool2")
    for block, pool_features in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
        with b.scope(block):
            x = _inception_a(b, x, pool_features)
    with b.scope("Mixed_6a"):
        x = _inception_b(b, x)
    for block, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
        with b.scope(block):
            x = _inception_c(b, x, c7)
    if aux_logits:
        with b.scope("AuxLogits"):
            _aux_logits(b, x, num_classes)
    with b.scope("Mixed_7a"):
        x = _inception_d(b, x)
    for block in ("Mixed_7b", "Mixed_7c"):
        with b.scope(block):
            x = _inception_e(b, x)
    x = b.global_pool(x, name="avgpool")
    x = b.flatten(x, name="flatten")
    b.linear(x, num_classes, name="fc")
    return b.build()


register_model(
    "inception_v3",
    inception_v3,
    299,
    "Inception V3 (Szegedy et al. 2016), torchvision layout, BN folded; 94 convs, 11 Mixed blocks",
)
