"""EfficientNet-B0 and -B5 (Tan & Le 2019), layer for layer as torchvision's
``efficientnet_b0`` / ``efficientnet_b5``.

MBConv blocks (1x1 expansion, depthwise kxk, squeeze-excitation, 1x1 projection) with
SiLU. The squeeze-excitation is a side branch of tiny ops (global pool, two 1x1 convs,
sigmoid) that gates the depthwise output through a broadcast multiply: a serial chain
of launch-bound kernels, typical of modern mobile networks. Every Conv-BN(-SiLU) is
one ``conv`` op with BN folded (``folded_bn``) and SiLU fused (``activation="silu"``);
the SE convs have biases and no BN, fc1 fuses its SiLU, and the gate's sigmoid and
multiply are ops of their own as in torchvision's ``SqueezeExcitation`` (``fc1``,
``fc2``, ``scale_activation``, then ``scale``). Op names follow torchvision's modules
("features.2.0.block.2.fc1"). Dropout and stochastic depth (identity at inference) are
omitted.

B5 is B0 scaled as torchvision scales it: every stage's channels times 1.6 rounded to a
multiple of 8 (``_make_divisible``), every stage's depth times 2.2 rounded up, and the
head conv 4x the last stage's channels (2048); its default image is 456 px. The SE
squeeze width stays a quarter of the block's (scaled) input channels.
"""

from __future__ import annotations

import math

from simgpu.graph import OpGraph
from simgpu.models import register_model
from simgpu.models.builder import GraphBuilder

# (expand ratio, kernel, first stride, in channels, out channels, layers): B0's stages
_STAGES = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)
ACT = "silu"


def _make_divisible(v: float, divisor: int = 8) -> int:
    """torchvision's channel rounding: nearest multiple of ``divisor``, never 10% below."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def _se_conv(b: GraphBuilder, x: str, out: int, act: str | None, name: str) -> str:
    """A 1x1 conv with bias and no BatchNorm (the excitation's fully connected layers)."""
    return b.op(
        "conv",
        [x],
        name,
        kernel=(1, 1),
        stride=(1, 1),
        padding=(0, 0),
        dilation=(1, 1),
        groups=1,
        out_channels=out,
        bias=True,
        folded_bn=False,
        activation=act,
    )


def _squeeze_excitation(b: GraphBuilder, x: str, channels: int, squeeze: int) -> str:
    s = b.global_pool(x, name="avgpool")
    s = _se_conv(b, s, squeeze, ACT, "fc1")  # + activation (SiLU), fused
    s = _se_conv(b, s, channels, None, "fc2")
    s = b.op("sigmoid", [s], "scale_activation")
    return b.op("mul", [x, s], "scale")  # broadcast over H x W


def _mbconv(
    b: GraphBuilder, x: str, cin: int, cout: int, kernel: int, stride: int, expand: int
) -> str:
    hidden = cin * expand
    h, i = x, 0
    if expand != 1:
        h = b.conv(h, hidden, 1, act=ACT, name="block.0")
        i = 1
    h = b.conv(
        h,
        hidden,
        kernel,
        stride=stride,
        padding=(kernel - 1) // 2,
        groups=hidden,
        act=ACT,
        name=f"block.{i}",
    )
    with b.scope(f"block.{i + 1}"):
        h = _squeeze_excitation(b, h, hidden, max(1, cin // 4))
    h = b.conv(h, cout, 1, act=None, name=f"block.{i + 2}")
    if stride == 1 and cin == cout:
        h = b.add(h, x, name="add")
    return h


def _efficientnet(
    name: str,
    width_mult: float,
    depth_mult: float,
    batch: int,
    image_size: int,
    dtype: str,
    num_classes: int,
) -> OpGraph:
    def ch(c: int) -> int:
        return _make_divisible(c * width_mult)

    b = GraphBuilder(name, dtype)
    x = b.input((batch, 3, image_size, image_size))
    x = b.conv(x, ch(32), 3, stride=2, padding=1, act=ACT, name="features.0")
    for stage, (expand, kernel, stride, cin, cout, layers) in enumerate(_STAGES, start=1):
        cin, cout = ch(cin), ch(cout)
        for j in range(math.ceil(layers * depth_mult)):
            with b.scope(f"features.{stage}.{j}"):
                x = _mbconv(
                    b, x, cin if j == 0 else cout, cout, kernel, stride if j == 0 else 1, expand
                )
    head = 4 * ch(_STAGES[-1][4])  # torchvision: 4 x the last stage's output channels
    x = b.conv(x, head, 1, act=ACT, name=f"features.{len(_STAGES) + 1}")
    x = b.global_pool(x, name="avgpool")
    x = b.flatten(x, name="flatten")
    b.linear(x, num_classes, name="classifier.1")
    return b.build()


def efficientnet_b0(
    batch: int = 1, image_size: int = 224, dtype: str = "fp32", num_classes: int = 1000
) -> OpGraph:
    """EfficientNet-B0 for ``batch`` images of ``image_size``² pixels (logits, no softmax)."""
    return _efficientnet("efficientnet_b0", 1.0, 1.0, batch, image_size, dtype, num_classes)


def efficientnet_b5(
    batch: int = 1, image_size: int = 456, dtype: str = "fp32", num_classes: int = 1000
) -> OpGraph:
    """EfficientNet-B5 (width 1.6, depth 2.2) for ``batch`` images of ``image_size``² px."""
    return _efficientnet("efficientnet_b5", 1.6, 2.2, batch, image_size, dtype, num_classes)


register_model(
    "efficientnet_b0",
    efficientnet_b0,
    224,
    "EfficientNet-B0 (Tan & Le 2019), torchvision layout, BN folded, SiLU; 16 MBConv with SE",
)
register_model(
    "efficientnet_b5",
    efficientnet_b5,
    456,
    "EfficientNet-B5 (Tan & Le 2019), torchvision layout (width 1.6, depth 2.2), BN folded, "
    "SiLU; 39 MBConv with SE",
)
