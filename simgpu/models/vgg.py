"""VGG-16 (Simonyan & Zisserman 2015), layer for layer as torchvision's ``vgg16`` (no BN).

Thirteen 3x3 convs in five stages separated by 2x2 max pools, then three fully
connected layers: a strictly linear graph with no inter-operator parallelism, heavy
convs (15.5 GMACs) and 124 M of its 138 M parameters in the classifier, whose
batch-1 GEMVs are memory bound. VGG has no BatchNorm: every conv has a bias and a fused
ReLU (``folded_bn`` False), and the first two linear layers fuse their ReLU. Dropout is
omitted. Op names follow torchvision's modules ("features.28", "classifier.3").

torchvision's ``AdaptiveAvgPool2d((7, 7))`` is the ``avgpool`` op, an average pool with
stride ``in // 7`` and the kernel that makes the output 7x7. That is PyTorch's own
adaptive windows when ``in`` is a multiple of 7 (a 1x1 window at the default 224 px,
where eager PyTorch still launches the pooling kernel); otherwise the output shape is
right but the windows are wider than PyTorch's (a 10x10 map gets 4x4 windows where
PyTorch's are 2 or 3 wide), a negligible error on a 25 K-element op. Pooling *up* to
7x7 (images under 224 px) is not expressible as a pool and is refused with a
GraphError naming the op.
"""

from __future__ import annotations

from simgpu.errors import GraphError
from simgpu.graph import OpGraph
from simgpu.models import register_model
from simgpu.models.builder import GraphBuilder

# torchvision's configuration "D": conv output channels, "M" a 2x2/2 max pool
VGG16_CFG: tuple[int | str, ...] = (
    *(64, 64, "M", 128, 128, "M", 256, 256, 256, "M"),
    *(512, 512, 512, "M", 512, 512, 512, "M"),
)


def adaptive_avg_pool(b: GraphBuilder, x: str, out: int, name: str) -> str:
    """``AdaptiveAvgPool2d((out, out))`` as a fixed average pool (see the module doc)."""
    size = b.shape(x)[-1]
    if size < out:  # (called outside any scope, so ``name`` is the op's full name)
        raise GraphError(
            f"op '{name}' (pool): adaptive pooling up from {size}x{size} to {out}x{out} "
            "is not modelled (the image is too small)"
        )
    stride = size // out
    return b.pool(x, "avg", size - (out - 1) * stride, stride, name=name)


def _vgg(
    name: str, cfg: tuple[int | str, ...], batch: int, image_size: int, dtype: str, num_classes: int
) -> OpGraph:
    b = GraphBuilder(name, dtype)
    x = b.input((batch, 3, image_size, image_size))
    i = 0
    for v in cfg:
        if v == "M":
            x = b.pool(x, "max", 2, 2, name=f"features.{i}")
            i += 1
        else:
            assert isinstance(v, int)
            x = b.conv_bias(x, v, 3, f"features.{i}", padding=1)  # ReLU features.{i+1}
            i += 2
    x = adaptive_avg_pool(b, x, 7, "avgpool")
    x = b.flatten(x, name="flatten")
    x = b.linear(x, 4096, act="relu", name="classifier.0")
    x = b.linear(x, 4096, act="relu", name="classifier.3")
    b.linear(x, num_classes, name="classifier.6")
    return b.build()


def vgg16(
    batch: int = 1, image_size: int = 224, dtype: str = "fp32", num_classes: int = 1000
) -> OpGraph:
    """VGG-16 for ``batch`` images of ``image_size``² pixels (logits, no softmax)."""
    return _vgg("vgg16", VGG16_CFG, batch, image_size, dtype, num_classes)


register_model(
    "vgg16",
    vgg16,
    224,
    "VGG-16 (Simonyan & Zisserman 2015), torchvision layout, no BN; 13 convs, 3 FC layers",
)
