"""GoogLeNet / Inception v1 (Szegedy et al. 2015), layer for layer as torchvision's
``googlenet``.

Nine Inception modules, each four independent branches (1x1; 1x1 -> 3x3; 1x1 -> 3x3;
3x3 max pool -> 1x1) joined by one channel concat: the same kind of inter-operator
parallelism as Inception V3, on a smaller, cheaper network. torchvision's variant is
the one built here: every conv is a ``BasicConv2d`` (Conv-BN-ReLU, no conv bias), so
each is one ``conv`` op with BN folded (``folded_bn``) and ReLU fused, and the "5x5"
branch (``branch3``, the third) has a 3x3 conv where the paper has 5x5 (a known quirk
torchvision keeps so that its ported weights load). Max pools use ``ceil_mode`` as torchvision's do. The auxiliary
classifiers are off (eval mode, as torchvision drops them after loading weights),
``transform_input``'s input re-normalisation is omitted as in ``inception_v3``, and
Dropout is omitted. Op names follow torchvision's modules ("inception4a.branch3.1";
a branch's pool is "branch4.0", the block's concat "concat").
"""

from __future__ import annotations

from simgpu.graph import OpGraph
from simgpu.models import register_model
from simgpu.models.builder import GraphBuilder

# (ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj) per Inception module, with the
# max pools between them; torchvision's arguments (the paper's Table 1).
_BLOCKS: tuple[tuple[str, tuple[int, int, int, int, int, int]] | str, ...] = (
    ("inception3a", (64, 96, 128, 16, 32, 32)),
    ("inception3b", (128, 128, 192, 32, 96, 64)),
    "maxpool3",
    ("inception4a", (192, 96, 208, 16, 48, 64)),
    ("inception4b", (160, 112, 224, 24, 64, 64)),
    ("inception4c", (128, 128, 256, 24, 64, 64)),
    ("inception4d", (112, 144, 288, 32, 64, 64)),
    ("inception4e", (256, 160, 320, 32, 128, 128)),
    "maxpool4",
    ("inception5a", (256, 160, 320, 32, 128, 128)),
    ("inception5b", (384, 192, 384, 48, 128, 128)),
)


def _inception(
    b: GraphBuilder, x: str, c1: int, r3: int, c3: int, r5: int, c5: int, pp: int
) -> str:
    b1 = b.conv(x, c1, 1, name="branch1")
    b2 = b.conv(x, r3, 1, name="branch2.0")
    b2 = b.conv(b2, c3, 3, padding=1, name="branch2.1")
    b3 = b.conv(x, r5, 1, name="branch3.0")
    b3 = b.conv(b3, c5, 3, padding=1, name="branch3.1")  # 3x3, not 5x5, as torchvision
    b4 = b.pool(x, "max", 3, 1, padding=1, ceil_mode=True, name="branch4.0")
    b4 = b.conv(b4, pp, 1, name="branch4.1")
    return b.concat([b1, b2, b3, b4], name="concat")


def googlenet(
    batch: int = 1, image_size: int = 224, dtype: str = "fp32", num_classes: int = 1000
) -> OpGraph:
    """GoogLeNet for ``batch`` images of ``image_size``² pixels (logits, no softmax)."""
    b = GraphBuilder("googlenet", dtype)
    x = b.input((batch, 3, image_size, image_size))
    x = b.conv(x, 64, 7, stride=2, padding=3, name="conv1")
    x = b.pool(x, "max", 3, 2, ceil_mode=True, name="maxpool1")
    x = b.conv(x, 64, 1, name="conv2")
    x = b.conv(x, 192, 3, padding=1, name="conv3")
    x = b.pool(x, "max", 3, 2, ceil_mode=True, name="maxpool2")
    for spec in _BLOCKS:
        if spec == "maxpool3":
            x = b.pool(x, "max", 3, 2, ceil_mode=True, name="maxpool3")
        elif spec == "maxpool4":
            x = b.pool(x, "max", 2, 2, ceil_mode=True, name="maxpool4")
        else:
            assert not isinstance(spec, str)
            block, channels = spec
            with b.scope(block):
                x = _inception(b, x, *channels)
    x = b.global_pool(x, name="avgpool")
    x = b.flatten(x, name="flatten")
    b.linear(x, num_classes, name="fc")
    return b.build()


register_model(
    "googlenet",
    googlenet,
    224,
    "GoogLeNet / Inception v1 (Szegedy et al. 2015), torchvision layout (BN, 3x3 in branch 3), "
    "BN folded; 57 convs, 9 Inception modules",
)
