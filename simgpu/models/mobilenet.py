"""MobileNetV2 (Sandler et al. 2018), layer for layer as torchvision's ``mobilenet_v2``.

A mobile network of inverted residuals: 1x1 expansion, 3x3 depthwise conv, 1x1 linear
projection, and a residual add where the shape allows. Depthwise convs are
memory-bound kernels that leave most of a big GPU idle, which is what makes such
models interesting for concurrent execution. Every Conv-BN(-ReLU6) is one ``conv`` op
with BN folded (``folded_bn``) and ReLU6 fused (``activation="relu6"``); the
projection conv has no activation. Op names follow torchvision's modules
("features.2.conv.0" expand, ".conv.1" depthwise, ".conv.2" projection; the first
block has no expansion, so its depthwise is ".conv.0"). Dropout is omitted.
"""

from __future__ import annotations

from simgpu.graph import OpGraph
from simgpu.models import register_model
from simgpu.models.builder import GraphBuilder

# (expand ratio t, output channels c, repeats n, first stride s): Table 2 of the paper
_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
ACT = "relu6"


def _inverted_residual(b: GraphBuilder, x: str, cin: int, cout: int, stride: int, t: int) -> str:
    hidden = cin * t
    h, i = x, 0
    if t != 1:
        h = b.conv(h, hidden, 1, act=ACT, name="conv.0")
        i = 1
    h = b.conv(h, hidden, 3, stride=stride, padding=1, groups=hidden, act=ACT, name=f"conv.{i}")
    h = b.conv(h, cout, 1, act=None, name=f"conv.{i + 1}")
    if stride == 1 and cin == cout:
        h = b.add(x, h, name="add")
    return h


def mobilenet_v2(
    batch: int = 1, image_size: int = 224, dtype: str = "fp32", num_classes: int = 1000
) -> OpGraph:
    """MobileNetV2 (width 1.0) for ``batch`` images of ``image_size``² pixels (logits)."""
    b = GraphBuilder("mobilenet_v2", dtype)
    x = b.input((batch, 3, image_size, image_size))
    x = b.conv(x, 32, 3, stride=2, padding=1, act=ACT, name="features.0")
    cin, idx = 32, 1
    for t, c, n, s in _SETTINGS:
        for j in range(n):
            with b.scope(f"features.{idx}"):
                x = _inverted_residual(b, x, cin, c, s if j == 0 else 1, t)
            cin, idx = c, idx + 1
    x = b.conv(x, 1280, 1, act=ACT, name=f"features.{idx}")
    x = b.global_pool(x, name="avgpool")
    x = b.flatten(x, name="flatten")
    b.linear(x, num_classes, name="classifier.1")
    return b.build()


register_model(
    "mobilenet_v2",
    mobilenet_v2,
    224,
    "MobileNetV2 (Sandler et al. 2018), torchvision layout, BN folded, ReLU6; 17 inverted residuals",
)
