"""SqueezeNet 1.0 and 1.1 (Iandola et al. 2016), layer for layer as torchvision's.

SqueezeNet is one of the IOS paper's four benchmarks: each Fire module squeezes with a
1x1 conv, then runs two independent expand convs (1x1 and 3x3) whose outputs are
concatenated — small parallel branches a scheduler can overlap. SqueezeNet has no
BatchNorm: every conv has a bias and a fused ReLU (``folded_bn`` False). Op names follow
torchvision's modules: ``features.N`` for the stem conv and pools, ``features.N.squeeze``
/ ``.expand1x1`` / ``.expand3x3`` inside a Fire, ``features.N.concat`` for its join, and
``classifier.1`` for the final 1x1 conv (Dropout, ``classifier.0``, is omitted).
"""

from __future__ import annotations

from simgpu.graph import OpGraph
from simgpu.models import register_model
from simgpu.models.builder import GraphBuilder

# Fire(squeeze, expand1x1, expand3x3) or "pool" for a 3x3/2 ceil-mode max pool, in
# torchvision's ``features`` order after the stem conv, its ReLU and the first pool.
_FIRES_1_0: tuple[tuple[int, int, int] | str, ...] = (
    (16, 64, 64),
    (16, 64, 64),
    (32, 128, 128),
    "pool",
    (32, 128, 128),
    (48, 192, 192),
    (48, 192, 192),
    (64, 256, 256),
    "pool",
    (64, 256, 256),
)
_FIRES_1_1: tuple[tuple[int, int, int] | str, ...] = (
    (16, 64, 64),
    (16, 64, 64),
    "pool",
    (32, 128, 128),
    (32, 128, 128),
    "pool",
    (48, 192, 192),
    (48, 192, 192),
    (64, 256, 256),
    (64, 256, 256),
)


def _fire(b: GraphBuilder, x: str, squeeze: int, e1: int, e3: int) -> str:
    s = b.conv_bias(x, squeeze, 1, "squeeze")
    a = b.conv_bias(s, e1, 1, "expand1x1")
    c = b.conv_bias(s, e3, 3, "expand3x3", padding=1)
    return b.concat([a, c], name="concat")


def _squeezenet(version: str, batch: int, image_size: int, dtype: str, num_classes: int) -> OpGraph:
    b = GraphBuilder(f"squeezenet{version}", dtype)
    x = b.input((batch, 3, image_size, image_size))
    if version == "1_0":
        x = b.conv_bias(x, 96, 7, "features.0", stride=2)
        fires = _FIRES_1_0
    else:
        x = b.conv_bias(x, 64, 3, "features.0", stride=2)
        fires = _FIRES_1_1
    # features.1 is the stem's ReLU (fused into features.0), features.2 the first pool
    x = b.pool(x, "max", 3, 2, ceil_mode=True, name="features.2")
    for i, spec in enumerate(fires, start=3):
        if spec == "pool":
            x = b.pool(x, "max", 3, 2, ceil_mode=True, name=f"features.{i}")
        else:
            assert not isinstance(spec, str)
            with b.scope(f"features.{i}"):
                x = _fire(b, x, *spec)
    x = b.conv_bias(x, num_classes, 1, "classifier.1")  # ReLU (classifier.2) fused
    x = b.global_pool(x, name="classifier.3")
    b.flatten(x, name="flatten")
    return b.build()


def squeezenet1_0(
    batch: int = 1, image_size: int = 224, dtype: str = "fp32", num_classes: int = 1000
) -> OpGraph:
    """SqueezeNet 1.0: 7x7/2 stem with 96 channels, pools after Fire 4 and Fire 8."""
    return _squeezenet("1_0", batch, image_size, dtype, num_classes)


def squeezenet1_1(
    batch: int = 1, image_size: int = 224, dtype: str = "fp32", num_classes: int = 1000
) -> OpGraph:
    """SqueezeNet 1.1: 3x3/2 stem with 64 channels and earlier pools (2.4x fewer MACs)."""
    return _squeezenet("1_1", batch, image_size, dtype, num_classes)


register_model(
    "squeezenet1_0",
    squeezenet1_0,
    224,
    "SqueezeNet 1.0 (Iandola et al. 2016), torchvision layout; 8 Fire modules, no BN",
)
register_model(
    "squeezenet1_1",
    squeezenet1_1,
    224,
    "SqueezeNet 1.1 (Iandola et al. 2016), torchvision layout; 8 Fire modules, no BN",
)
