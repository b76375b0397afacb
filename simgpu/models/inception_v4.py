"""Inception-v4 (Szegedy et al. 2017), layer for layer as Cadene's pretrained-models /
timm ``inception_v4`` (299x299).

A deeper, more uniform Inception: a stem that already branches (Mixed_3a, 4a, 5a), then
4 Inception-A, Reduction-A, 7 Inception-B, Reduction-B and 3 Inception-C blocks, each
block several independent branches joined by one channel concat, so the graph has the
inter-operator parallelism of Inception V3 at twice its MACs. Every ``BasicConv2d``
(Conv-BN-ReLU, no conv bias) is one ``conv`` op with BN folded (``folded_bn``) and ReLU
fused. Op names follow the modules of Cadene's/timm's ``features`` Sequential
("features.4.branch1.2", "features.19.branch2_3a") and ``last_linear``. The branch
pools' ``count_include_pad=False`` only changes the divisor at the borders (same cost)
and is not an attribute here. Where Inception-C concatenates inside a branch (its 1x3 /
3x1 pairs) the pairs feed the block's single concat directly, as in ``inception_v3``:
same channel order, one copy fewer. Dropout is omitted (inference).
"""

from __future__ import annotations

from simgpu.graph import OpGraph
from simgpu.models import register_model
from simgpu.models.builder import GraphBuilder


def _mixed_3a(b: GraphBuilder, x: str) -> str:
    p = b.pool(x, "max", 3, 2, name="maxpool")
    c = b.conv(x, 96, 3, stride=2, name="conv")
    return b.concat([p, c], name="concat")


def _mixed_4a(b: GraphBuilder, x: str) -> str:
    b0 = b.conv(x, 64, 1, name="branch0.0")
    b0 = b.conv(b0, 96, 3, name="branch0.1")
    b1 = b.conv(x, 64, 1, name="branch1.0")
    b1 = b.conv(b1, 64, (1, 7), padding=(0, 3), name="branch1.1")
    b1 = b.conv(b1, 64, (7, 1), padding=(3, 0), name="branch1.2")
    b1 = b.conv(b1, 96, 3, name="branch1.3")
    return b.concat([b0, b1], name="concat")


def _mixed_5a(b: GraphBuilder, x: str) -> str:
    c = b.conv(x, 192, 3, stride=2, name="conv")
    p = b.pool(x, "max", 3, 2, name="maxpool")
    return b.concat([c, p], name="concat")


def _inception_a(b: GraphBuilder, x: str) -> str:
    b0 = b.conv(x, 96, 1, name="branch0")
    b1 = b.conv(x, 64, 1, name="branch1.0")
    b1 = b.conv(b1, 96, 3, padding=1, name="branch1.1")
    b2 = b.conv(x, 64, 1, name="branch2.0")
    b2 = b.conv(b2, 96, 3, padding=1, name="branch2.1")
    b2 = b.conv(b2, 96, 3, padding=1, name="branch2.2")
    b3 = b.pool(x, "avg", 3, 1, padding=1, name="branch3.0")
    b3 = b.conv(b3, 96, 1, name="branch3.1")
    return b.concat([b0, b1, b2, b3], name="concat")


def _reduction_a(b: GraphBuilder, x: str) -> str:
    b0 = b.conv(x, 384, 3, stride=2, name="branch0")
    b1 = b.conv(x, 192, 1, name="branch1.0")
    b1 = b.conv(b1, 224, 3, padding=1, name="branch1.1")
    b1 = b.conv(b1, 256, 3, stride=2, name="branch1.2")
    b2 = b.pool(x, "max", 3, 2, name="branch2")
    return b.concat([b0, b1, b2], name="concat")


def _inception_b(b: GraphBuilder, x: str) -> str:
    b0 = b.conv(x, 384, 1, name="branch0")
    b1 = b.conv(x, 192, 1, name="branch1.0")
    b1 = b.conv(b1, 224, (1, 7), padding=(0, 3), name="branch1.1")
    b1 = b.conv(b1, 256, (7, 1), padding=(3, 0), name="branch1.2")
    b2 = b.conv(x, 192, 1, name="branch2.0")
    b2 = b.conv(b2, 192, (7, 1), padding=(3, 0), name="branch2.1")
    b2 = b.conv(b2, 224, (1, 7), padding=(0, 3), name="branch2.2")
    b2 = b.conv(b2, 224, (7, 1), padding=(3, 0), name="branch2.3")
    b2 = b.conv(b2, 256, (1, 7), padding=(0, 3), name="branch2.4")
    b3 = b.pool(x, "avg", 3, 1, padding=1, name="branch3.0")
    b3 = b.conv(b3, 128, 1, name="branch3.1")
    return b.concat([b0, b1, b2, b3], name="concat")


def _reduction_b(b: GraphBuilder, x: str) -> str:
    b0 = b.conv(x, 192, 1, name="branch0.0")
    b0 = b.conv(b0, 192, 3, stride=2, name="branch0.1")
    b1 = b.conv(x, 256, 1, name="branch1.0")
    b1 = b.conv(b1, 256, (1, 7), padding=(0, 3), name="branch1.1")
    b1 = b.conv(b1, 320, (7, 1), padding=(3, 0), name="branch1.2")
    b1 = b.conv(b1, 320, 3, stride=2, name="branch1.3")
    b2 = b.pool(x, "max", 3, 2, name="branch2")
    return b.concat([b0, b1, b2], name="concat")


def _inception_c(b: GraphBuilder, x: str) -> str:
    b0 = b.conv(x, 256, 1, name="branch0")
    b1 = b.conv(x, 384, 1, name="branch1_0")
    b1a = b.conv(b1, 256, (1, 3), padding=(0, 1), name="branch1_1a")
    b1b = b.conv(b1, 256, (3, 1), padding=(1, 0), name="branch1_1b")
    b2 = b.conv(x, 384, 1, name="branch2_0")
    b2 = b.conv(b2, 448, (3, 1), padding=(1, 0), name="branch2_1")
    b2 = b.conv(b2, 512, (1, 3), padding=(0, 1), name="branch2_2")
    b2a = b.conv(b2, 256, (1, 3), padding=(0, 1), name="branch2_3a")
    b2b = b.conv(b2, 256, (3, 1), padding=(1, 0), name="branch2_3b")
    b3 = b.pool(x, "avg", 3, 1, padding=1, name="branch3.0")
    b3 = b.conv(b3, 256, 1, name="branch3.1")
    return b.concat([b0, b1a, b1b, b2a, b2b, b3], name="concat")


def inception_v4(
    batch: int = 1, image_size: int = 299, dtype: str = "fp32", num_classes: int = 1000
) -> OpGraph:
    """Inception-v4 for ``batch`` images of ``image_size``² pixels (logits, no softmax)."""
    b = GraphBuilder("inception_v4", dtype)
    x = b.input((batch, 3, image_size, image_size))
    x = b.conv(x, 32, 3, stride=2, name="features.0")
    x = b.conv(x, 32, 3, name="features.1")
    x = b.conv(x, 64, 3, padding=1, name="features.2")
    blocks = [_mixed_3a, _mixed_4a, _mixed_5a, *[_inception_a] * 4, _reduction_a]
    blocks += [*[_inception_b] * 7, _reduction_b, *[_inception_c] * 3]
    for i, block in enumerate(blocks, start=3):
        with b.scope(f"features.{i}"):
            x = block(b, x)
    x = b.global_pool(x, name="avg_pool")
    x = b.flatten(x, name="flatten")
    b.linear(x, num_classes, name="last_linear")
    return b.build()


register_model(
    "inception_v4",
    inception_v4,
    299,
    "Inception-v4 (Szegedy et al. 2017), Cadene/timm layout, BN folded; 149 convs, "
    "3 stem Mixed + 16 Inception/Reduction blocks",
)
