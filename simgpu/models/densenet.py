"""DenseNet-121 and DenseNet-201 (Huang et al. 2017), layer for layer as torchvision's
``densenet121`` / ``densenet201``.

Four dense blocks of "bottleneck" layers; each layer reads the channel concat of the
block's input and every earlier layer's 32 new channels (growth rate), and the block
ends with the concat of them all, which a transition (BN-ReLU, 1x1 conv halving the
channels, 2x2 average pool) shrinks. The graph is a long chain of ever wider concats,
almost no parallelism, and a lot of memory traffic per MAC.

DenseNet uses pre-activation (BN-ReLU-conv), so the BN that *precedes* a conv cannot
be folded into it (a ReLU sits between them). Each layer is therefore, as torchvision
runs it: ``cat`` (``torch.cat`` of the layer's inputs), ``norm1`` (a standalone
``batchnorm`` op, weight + bias = 2*C parameters), ``relu1``, then ``conv1`` (1x1 to
4 x 32 channels) with the *following* ``norm2`` folded (``folded_bn``) and ``relu2``
fused, and ``conv2`` (3x3 to 32 channels, no bias, no BN after it, no activation). The
stem conv0 folds norm0 and fuses relu0 (Conv-BN-ReLU); a transition's conv has neither
BN nor activation after it; the network ends with ``norm5``, the functional ReLU of
torchvision's ``forward``, global average pooling and ``classifier``. The first layer of
a block reads one tensor: torchvision's ``torch.cat`` of that one-element list (a copy)
is not an op here. Op names follow torchvision's modules
("features.denseblock2.denselayer3.conv1", "features.transition1.pool").
"""

from __future__ import annotations

from simgpu.graph import OpGraph
from simgpu.models import register_model
from simgpu.models.builder import GraphBuilder

GROWTH = 32
BN_SIZE = 4
INIT_FEATURES = 64
DENSENET121_BLOCKS = (6, 12, 24, 16)
DENSENET201_BLOCKS = (6, 12, 48, 32)


def _bn_relu(b: GraphBuilder, x: str, norm: str, relu: str) -> str:
    """A BatchNorm that precedes a conv (pre-activation): its own op, then the ReLU."""
    return b.relu(b.op("batchnorm", [x], norm), name=relu)


def _dense_layer(b: GraphBuilder, features: list[str]) -> str:
    x = features[0] if len(features) == 1 else b.concat(features, name="cat")
    h = _bn_relu(b, x, "norm1", "relu1")
    h = b.conv(h, BN_SIZE * GROWTH, 1, name="conv1")  # + norm2 folded, relu2 fused
    return b.conv(h, GROWTH, 3, padding=1, act=None, folded_bn=False, name="conv2")


def _densenet(
    name: str, blocks: tuple[int, ...], batch: int, image_size: int, dtype: str, num_classes: int
) -> OpGraph:
    b = GraphBuilder(name, dtype)
    x = b.input((batch, 3, image_size, image_size))
    with b.scope("features"):
        x = b.conv(x, INIT_FEATURES, 7, stride=2, padding=3, name="conv0")  # norm0, relu0
        x = b.pool(x, "max", 3, 2, padding=1, name="pool0")
        channels = INIT_FEATURES
        for i, layers in enumerate(blocks, start=1):
            with b.scope(f"denseblock{i}"):
                features = [x]
                for j in range(1, layers + 1):
                    with b.scope(f"denselayer{j}"):
                        features.append(_dense_layer(b, features))
                x = b.concat(features, name="cat")
            channels += layers * GROWTH
            if i < len(blocks):
                channels //= 2
                with b.scope(f"transition{i}"):
                    h = _bn_relu(b, x, "norm", "relu")
                    h = b.conv(h, channels, 1, act=None, folded_bn=False, name="conv")
                    x = b.pool(h, "avg", 2, 2, name="pool")
        x = b.op("batchnorm", [x], "norm5")
    x = b.relu(x, name="relu")  # F.relu in DenseNet.forward
    x = b.global_pool(x, name="avgpool")
    x = b.flatten(x, name="flatten")
    b.linear(x, num_classes, name="classifier")
    return b.build()


def densenet121(
    batch: int = 1, image_size: int = 224, dtype: str = "fp32", num_classes: int = 1000
) -> OpGraph:
    """DenseNet-121 (growth 32, blocks 6-12-24-16) for ``batch`` images of ``image_size``²."""
    return _densenet("densenet121", DENSENET121_BLOCKS, batch, image_size, dtype, num_classes)


def densenet201(
    batch: int = 1, image_size: int = 224, dtype: str = "fp32", num_classes: int = 1000
) -> OpGraph:
    """DenseNet-201 (growth 32, blocks 6-12-48-32) for ``batch`` images of ``image_size``²."""
    return _densenet("densenet201", DENSENET201_BLOCKS, batch, image_size, dtype, num_classes)


register_model(
    "densenet121",
    densenet121,
    224,
    "DenseNet-121 (Huang et al. 2017), torchvision layout, pre-activation BN as its own op "
    "(BN after a conv folded); 58 dense layers, 120 convs",
)
register_model(
    "densenet201",
    densenet201,
    224,
    "DenseNet-201 (Huang et al. 2017), torchvision layout, pre-activation BN as its own op "
    "(BN after a conv folded); 98 dense layers, 200 convs",
)
