"""AlexNet (Krizhevsky et al. 2012), layer for layer as torchvision's ``alexnet``.

torchvision's single-tower variant ("One weird trick", Krizhevsky 2014): five convs
(11x11/4, 5x5, three 3x3) with three 3x3/2 max pools, then three fully connected
layers. A linear graph of few, large kernels; 59 M of its 61 M parameters are in the
classifier. AlexNet has no BatchNorm: every conv has a bias and a fused ReLU
(``folded_bn`` False), and the first two linear layers fuse their ReLU. Dropout is
omitted; ``AdaptiveAvgPool2d((6, 6))`` is modelled as in :mod:`simgpu.models.vgg`
(images under 223 px, whose features are smaller than 6x6, are refused). Op names
follow torchvision's modules ("features.3", "classifier.4").
"""

from __future__ import annotations

from simgpu.graph import OpGraph
from simgpu.models import register_model
from simgpu.models.builder import GraphBuilder
from simgpu.models.vgg import adaptive_avg_pool


def alexnet(
    batch: int = 1, image_size: int = 224, dtype: str = "fp32", num_classes: int = 1000
) -> OpGraph:
    """AlexNet for ``batch`` images of ``image_size``² pixels (logits, no softmax)."""
    b = GraphBuilder("alexnet", dtype)
    x = b.input((batch, 3, image_size, image_size))
    x = b.conv_bias(x, 64, 11, "features.0", stride=4, padding=2)
    x = b.pool(x, "max", 3, 2, name="features.2")
    x = b.conv_bias(x, 192, 5, "features.3", padding=2)
    x = b.pool(x, "max", 3, 2, name="features.5")
    x = b.conv_bias(x, 384, 3, "features.6", padding=1)
    x = b.conv_bias(x, 256, 3, "features.8", padding=1)
    x = b.conv_bias(x, 256, 3, "features.10", padding=1)
    x = b.pool(x, "max", 3, 2, name="features.12")
    x = adaptive_avg_pool(b, x, 6, "avgpool")
    x = b.flatten(x, name="flatten")
    x = b.linear(x, 4096, act="relu", name="classifier.1")
    x = b.linear(x, 4096, act="relu", name="classifier.4")
    b.linear(x, num_classes, name="classifier.6")
    return b.build()


register_model(
    "alexnet",
    alexnet,
    224,
    "AlexNet (Krizhevsky et al. 2012), torchvision layout (one tower), no BN; 5 convs, 3 FC",
)
