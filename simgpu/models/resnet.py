"""ResNet-50 and ResNet-101 (He et al. 2016), layer for layer as torchvision's
``resnet50`` / ``resnet101`` (v1.5).

The residual network is the common baseline of inter-operator scheduling papers: its
only parallelism is the downsample branch beside the first block of each stage, so it
shows what a scheduler gains (little) on a nearly linear graph. Every Conv-BN(-ReLU)
is one ``conv`` op with BN folded (``folded_bn``) and ReLU fused; the ReLU after the
residual add is its own op because it follows the add, not a conv. The stride of a
downsampling bottleneck sits on its 3x3 conv (v1.5, torchvision's layout). Op names
follow torchvision's modules ("layer2.0.downsample.0"); the add is "layerX.Y.add".
ResNet-101 is the same network with 23 bottlenecks instead of 6 in its third stage.
"""

from __future__ import annotations

from simgpu.graph import OpGraph
from simgpu.models import register_model
from simgpu.models.builder import GraphBuilder

EXPANSION = 4
RESNET50_LAYERS = (3, 4, 6, 3)
RESNET101_LAYERS = (3, 4, 23, 3)


def _bottleneck(b: GraphBuilder, x: str, width: int, stride: int, downsample: bool) -> str:
    out = b.conv(x, width, 1, name="conv1")
    out = b.conv(out, width, 3, stride=stride, padding=1, name="conv2")
    out = b.conv(out, width * EXPANSION, 1, act=None, name="conv3")
    identity = x
    if downsample:
        identity = b.conv(x, width * EXPANSION, 1, stride=stride, act=None, name="downsample.0")
    out = b.add(out, identity, name="add")
    return b.relu(out, name="relu")


def _resnet(
    name: str,
    layers: tuple[int, ...],
    batch: int,
    image_size: int,
    dtype: str,
    num_classes: int,
) -> OpGraph:
    b = GraphBuilder(name, dtype)
    x = b.input((batch, 3, image_size, image_size))
    x = b.conv(x, 64, 7, stride=2, padding=3, name="conv1")
    x = b.pool(x, "max", 3, 2, padding=1, name="maxpool")
    channels = 64
    for i, blocks in enumerate(layers):
        width = 64 * 2**i
        for j in range(blocks):
            stride = 2 if i > 0 and j == 0 else 1
            with b.scope(f"layer{i + 1}.{j}"):
                down = j == 0 and (stride != 1 or channels != width * EXPANSION)
                x = _bottleneck(b, x, width, stride, down)
            channels = width * EXPANSION
    x = b.global_pool(x, name="avgpool")
    x = b.flatten(x, name="flatten")
    b.linear(x, num_classes, name="fc")
    return b.build()


def resnet50(
    batch: int = 1, image_size: int = 224, dtype: str = "fp32", num_classes: int = 1000
) -> OpGraph:
    """ResNet-50 for ``batch`` images of ``image_size``² pixels (logits, no softmax)."""
    return _resnet("resnet50", RESNET50_LAYERS, batch, image_size, dtype, num_classes)


def resnet101(
    batch: int = 1, image_size: int = 224, dtype: str = "fp32", num_classes: int = 1000
) -> OpGraph:
    """ResNet-101 for ``batch`` images of ``image_size``² pixels (logits, no softmax)."""
    return _resnet("resnet101", RESNET101_LAYERS, batch, image_size, dtype, num_classes)


register_model(
    "resnet50",
    resnet50,
    224,
    "ResNet-50 (He et al. 2016), torchvision v1.5 layout, BN folded; 53 convs, 16 bottlenecks",
)
register_model(
    "resnet101",
    resnet101,
    224,
    "ResNet-101 (He et al. 2016), torchvision v1.5 layout, BN folded; 104 convs, 33 bottlenecks",
)
