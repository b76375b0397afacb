"""Model zoo: Inception V3 (and the classic CNNs added beside it: ResNet-101,
EfficientNet-B5, GoogLeNet, DenseNet-121/201, VGG-16, AlexNet, Inception-v4) must match
the published architecture, and the builder must fail cleanly, because every scheduler
result in the project is measured on these graphs."""

from __future__ import annotations

import itertools
import json

import networkx as nx
import pytest

from simgpu.errors import GraphError, SimGPUError
from simgpu.graph import OpGraph
from simgpu.models import MODELS, GraphBuilder, build_model, inception_v3, model_names

# torchvision Inception3 parameter counts (BN weight+bias = 2*Cout per conv, no conv bias).
TV_PARAMS = 23_834_568
TV_PARAMS_AUX = 27_161_264

MIXED = [
    *("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a"),
    *("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"),
]


@pytest.fixture(scope="module")
def g() -> OpGraph:
    return build_model("inception_v3")


@pytest.fixture(scope="module")
def g_aux() -> OpGraph:
    return inception_v3(aux_logits=True)


def _convs(graph: OpGraph) -> list[str]:
    return [op.name for op in graph if op.kind == "conv"]


def test_macs_and_params_match_published(g: OpGraph, g_aux: OpGraph) -> None:
    assert g.macs == pytest.approx(5.71e9, rel=0.05)
    assert g.params == pytest.approx(23.8e6, rel=0.03)
    assert g_aux.params == pytest.approx(27.2e6, rel=0.03)
    # Exactly torchvision's count once BN is folded: 2*Cout BN params become Cout biases.
    for graph, tv in ((g, TV_PARAMS), (g_aux, TV_PARAMS_AUX)):
        cout = sum(graph[c].attrs["out_channels"] for c in _convs(graph))
        assert graph.params == tv - cout


def test_output_shape(g: OpGraph, g_aux: OpGraph) -> None:
    assert g["fc"].output_shape == (1, 1000)
    assert g["Mixed_7c.concat"].output_shape == (1, 2048, 8, 8)
    assert g["Mixed_6e.concat"].output_shape == (1, 768, 17, 17)
    assert g["Mixed_5b.concat"].output_shape == (1, 256, 35, 35)
    assert g_aux["AuxLogits.fc"].output_shape == (1, 1000)
    assert g_aux["fc"].output_shape == (1, 1000)


def test_conv_count(g: OpGraph, g_aux: OpGraph) -> None:
    # Stem 5 (1a, 2a, 2b, 3b, 4a); InceptionA 7 (1x1, 5x5 x2, 3x3dbl x3, pool) x3 = 21;
    # InceptionB 4 (3x3, 3x3dbl x3); InceptionC 10 (1x1, 7x7 x3, 7x7dbl x5, pool) x4 = 40;
    # InceptionD 6 (3x3 x2, 7x7x3 x4); InceptionE 9 (1x1, 3x3_1/2a/2b, dbl_1/2/3a/3b, pool)
    # x2 = 18. 5 + 21 + 4 + 40 + 6 + 18 = 94; AuxLogits adds conv0 and conv1.
    assert len(_convs(g)) == 5 + 7 * 3 + 4 + 10 * 4 + 6 + 9 * 2 == 94
    assert len(_convs(g_aux)) == 96
    conv = g["Mixed_5b.branch1x1"]
    assert conv.attrs["folded_bn"] is True and conv.attrs["activation"] == "relu"
    assert not any(op.kind in ("batchnorm", "relu") for op in g)


def test_factorised_kernels(g: OpGraph) -> None:
    a = g["Mixed_6b.branch7x7_2"].attrs
    assert (a["kernel"], a["padding"]) == ((1, 7), (0, 3))
    a = g["Mixed_6b.branch7x7_3"].attrs
    assert (a["kernel"], a["padding"]) == ((7, 1), (3, 0))
    pool = g["Mixed_5b.avg_pool"].attrs
    assert (pool["pool_type"], pool["kernel"], pool["stride"], pool["padding"]) == (
        "avg",
        (3, 3),
        (1, 1),
        (1, 1),
    )


def test_batch_scaling(g: OpGraph) -> None:
    g4 = build_model("inception_v3", batch=4)
    assert g4.macs == 4 * g.macs
    assert g4.params == g.params
    assert g4["fc"].output_shape == (4, 1000)


def test_larger_image(g: OpGraph) -> None:
    big = build_model("inception_v3", image_size=512)
    assert big.macs > 2 * g.macs
    assert big.params == g.params
    assert big["fc"].output_shape == (1, 1000)


def test_mixed_blocks_have_independent_branches(g: OpGraph) -> None:
    assert not nx.has_path(g.nx, "Mixed_5b.branch1x1", "Mixed_5b.branch5x5_2")
    assert not nx.has_path(g.nx, "Mixed_5b.branch5x5_2", "Mixed_5b.branch1x1")
    for block in MIXED:
        branches = g[f"{block}.concat"].inputs
        assert len(branches) >= 3, block
        for a, b in itertools.combinations(branches, 2):
            assert not nx.has_path(g.nx, a, b) and not nx.has_path(g.nx, b, a), (block, a, b)


def test_deterministic_and_json_round_trip(g: OpGraph, g_aux: OpGraph) -> None:
    assert build_model("inception_v3") == g
    assert list(build_model("inception_v3").ops) == list(g.ops)
    for graph in (g, g_aux):
        text = json.dumps(graph.to_json())
        assert OpGraph.from_json(json.loads(text)) == graph


def test_registry() -> None:
    assert "inception_v3" in model_names()
    assert MODELS["inception_v3"].default_image_size == 299
    with pytest.raises(GraphError, match=r"known: .*inception_v3") as e:
        build_model("no_such_model")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("size", [32, 74])
def test_too_small_image_names_an_op(size: int) -> None:
    with pytest.raises(GraphError, match=r"op '[\w.]+'"):
        build_model("inception_v3", image_size=size)


def test_smallest_image() -> None:
    assert build_model("inception_v3", image_size=75)["fc"].output_shape == (1, 1000)


def test_bad_batch_and_dtype_are_user_errors() -> None:
    with pytest.raises(SimGPUError):
        build_model("inception_v3", batch=0)
    with pytest.raises(SimGPUError):
        build_model("inception_v3", dtype="fp7")
    assert all(op.dtype == "fp16" for op in build_model("inception_v3", dtype="fp16"))


def test_builder_names_and_errors() -> None:
    b = GraphBuilder("toy")
    x = b.input((2, 3, 8, 8))
    with b.scope("block"):
        c1 = b.conv(x, 4, 3, padding=1)
        c2 = b.conv(x, 4, 3, padding=1)
        p = b.pool(x, "max", 2)
        with b.scope("inner"):
            r = b.relu(c1, name="act")
    assert (c1, c2, p, r) == ("block.conv", "block.conv_1", "block.maxpool", "block.inner.act")
    assert b.shape(p) == (2, 3, 4, 4)
    s = b.add(c1, c2)
    y = b.softmax(b.linear(b.flatten(b.global_pool(s)), 10))
    graph = b.build()
    assert graph[y].output_shape == (2, 10)
    with pytest.raises(GraphError, match="defined twice"):
        b.relu(x, name="block.conv")
    with pytest.raises(GraphError, match="'missing'"):
        b.relu("missing")
    with pytest.raises(GraphError, match="inputs differ"):
        b.concat([x, p])


# --- the classic CNNs ---------------------------------------------------------------------

# Published figures at batch 1 and default resolution: (GMACs, M params). torchvision's
# weight tables (its "GFLOPS" column counts multiply-adds, i.e. GMACs): resnet101 7.80 /
# 44.55, efficientnet_b5 at 456 px 10.27 / 30.39, googlenet 1.50 / 6.62, densenet121
# 2.83 / 7.98, densenet201 4.29 / 20.01, vgg16 15.47 / 138.36, alexnet 0.71 / 61.10;
# timm's inception_v4 at 299 px 12.27 / 42.68. Same tolerances as the rest of the zoo.
CLASSIC_PUBLISHED: dict[str, tuple[float, float]] = {
    "resnet101": (7.80, 44.55),
    "efficientnet_b5": (10.27, 30.39),
    "googlenet": (1.50, 6.62),
    "densenet121": (2.83, 7.98),
    "densenet201": (4.29, 20.01),
    "vgg16": (15.47, 138.36),
    "alexnet": (0.71, 61.10),
    "inception_v4": (12.27, 42.68),
}
MACS_REL, PARAMS_REL = 0.05, 0.03
CLASSIC = sorted(CLASSIC_PUBLISHED)

# Exact parameter counts of the reference implementations (torchvision; timm for
# inception_v4), BatchNorm counted as weight + bias per channel.
CLASSIC_REFERENCE_PARAMS = {
    "resnet101": 44_549_160,
    "efficientnet_b5": 30_389_784,
    "googlenet": 6_624_904,
    "densenet121": 7_978_856,
    "densenet201": 20_013_928,
    "vgg16": 138_357_544,
    "alexnet": 61_100_840,
    "inception_v4": 42_679_816,
}

# (default image size, classifier op) of each
CLASSIC_IO = {
    "resnet101": (224, "fc"),
    "efficientnet_b5": (456, "classifier.1"),
    "googlenet": (224, "fc"),
    "densenet121": (224, "classifier"),
    "densenet201": (224, "classifier"),
    "vgg16": (224, "classifier.6"),
    "alexnet": (224, "classifier.6"),
    "inception_v4": (299, "last_linear"),
}

_classic_cache: dict[tuple[str, int, int | None], OpGraph] = {}


def classic(name: str, batch: int = 1, image_size: int | None = None) -> OpGraph:
    key = (name, batch, image_size)
    if key not in _classic_cache:
        _classic_cache[key] = build_model(name, batch=batch, image_size=image_size)
    return _classic_cache[key]


def _kind_count(graph: OpGraph, kind: str) -> int:
    return sum(op.kind == kind for op in graph)


def _folded_channels(graph: OpGraph) -> int:
    return sum(op.attrs["out_channels"] for op in graph if op.attrs.get("folded_bn"))


def _independent(graph: OpGraph, names: tuple[str, ...] | list[str]) -> bool:
    return all(
        not nx.has_path(graph.nx, a, b) and not nx.has_path(graph.nx, b, a)
        for a, b in itertools.combinations(names, 2)
    )


@pytest.mark.parametrize("name", CLASSIC)
def test_classic_macs_and_params_match_published(name: str) -> None:
    g = classic(name)
    gmacs, mparams = CLASSIC_PUBLISHED[name]
    assert g.macs == pytest.approx(gmacs * 1e9, rel=MACS_REL)
    assert g.params == pytest.approx(mparams * 1e6, rel=PARAMS_REL)
    # Exactly the reference count once BN is folded: 2*Cout BN params become Cout biases.
    assert g.params + _folded_channels(g) == CLASSIC_REFERENCE_PARAMS[name]


@pytest.mark.parametrize(
    ("name", "figure"),
    [
        ("resnet101", "resnet50"),  # the other depth's figures are caught
        ("densenet121", "densenet201"),
        ("densenet201", "densenet121"),
        ("googlenet", "inception_v3"),
        ("inception_v4", "inception_v3"),
    ],
)
def test_classic_figures_tell_models_apart(name: str, figure: str) -> None:
    figures = {**CLASSIC_PUBLISHED, "resnet50": (4.09, 25.6), "inception_v3": (5.71, 23.8)}
    gmacs, mparams = figures[figure]
    g = classic(name)
    assert g.macs != pytest.approx(gmacs * 1e9, rel=MACS_REL)
    assert g.params != pytest.approx(mparams * 1e6, rel=PARAMS_REL)


def test_efficientnet_b5_figures_need_its_image_size() -> None:
    gmacs, _ = CLASSIC_PUBLISHED["efficientnet_b5"]
    small = classic("efficientnet_b5", image_size=224)
    assert small.macs != pytest.approx(gmacs * 1e9, rel=MACS_REL)


@pytest.mark.parametrize("name", CLASSIC)
def test_classic_registry_and_valid_graph(name: str) -> None:
    size, head = CLASSIC_IO[name]
    assert name in model_names() and MODELS[name].default_image_size == size
    assert MODELS[name].description
    g = classic(name)
    assert g.name == name
    assert [op.name for op in g.inputs] == ["input"]
    assert g["input"].output_shape == (1, 3, size, size)
    assert nx.is_directed_acyclic_graph(g.nx)
    sinks = [n for n in g.ops if g.nx.out_degree(n) == 0]
    assert sinks == [head] and g[head].output_shape == (1, 1000)
    assert nx.descendants(g.nx, "input") == set(g.ops) - {"input"}  # nothing dangling
    # re-validated from its ops (shapes re-inferred) and through JSON, deterministically
    assert OpGraph(g.ops.values(), name=g.name) == g
    assert OpGraph.from_json(json.loads(json.dumps(g.to_json()))) == g
    again = build_model(name)
    assert again == g and list(again.ops) == list(g.ops)


@pytest.mark.parametrize("name", CLASSIC)
def test_classic_batch_2(name: str) -> None:
    g1, g2 = classic(name), classic(name, batch=2)
    _, head = CLASSIC_IO[name]
    assert g2.macs == 2 * g1.macs
    assert g2.params == g1.params
    assert len(g2) == len(g1)
    assert g2[head].output_shape == (2, 1000)


@pytest.mark.parametrize("name", CLASSIC)
def test_classic_image_size(name: str) -> None:
    size, head = CLASSIC_IO[name]
    big = classic(name, image_size=size + 32)
    assert big.macs > classic(name).macs
    assert big.params == classic(name).params
    assert big["input"].output_shape == (1, 3, size + 32, size + 32)
    assert big[head].output_shape == (1, 1000)
    if name not in ("vgg16", "alexnet"):  # global pooling: any size works
        small = classic(name, image_size=size - 32)
        assert small.macs < classic(name).macs and small.params == classic(name).params


@pytest.mark.parametrize(("name", "smallest"), [("vgg16", 224), ("alexnet", 223)])
def test_adaptive_pool_of_the_fc_networks(name: str, smallest: int) -> None:
    """The 7x7 (6x6) adaptive pool before the first linear layer: a 1x1 average pool at
    the default size, a fixed pool to the same output above it, refused below."""
    out = 7 if name == "vgg16" else 6
    g = classic(name)
    a = g["avgpool"].attrs
    assert (a["pool_type"], a["kernel"], a["stride"]) == ("avg", (1, 1), (1, 1))
    big = classic(name, image_size=256)
    assert big.input_shapes("avgpool")[0][-1] > out
    assert big["avgpool"].output_shape[-2:] == (out, out)
    assert build_model(name, image_size=smallest)["avgpool"].output_shape[-2:] == (out, out)
    with pytest.raises(GraphError, match=r"op 'avgpool' \(pool\): adaptive pooling up") as e:
        build_model(name, image_size=smallest - 1)
    assert "\n" not in str(e.value)


def test_resnet101_structure() -> None:
    g = classic("resnet101")
    assert _kind_count(g, "conv") == 1 + 33 * 3 + 4 == 104
    assert _kind_count(g, "add") == _kind_count(g, "relu") == 33
    assert g["layer3.22.relu"].output_shape == (1, 1024, 14, 14)
    assert "layer3.23.conv1" not in g
    assert g["layer4.2.relu"].output_shape == (1, 2048, 7, 7)
    assert g["layer3.0.conv2"].attrs["stride"] == (2, 2)  # v1.5
    assert all(op.attrs["folded_bn"] for op in g if op.kind == "conv")
    # ResNet-50 is the same code with 6 blocks in layer3
    assert build_model("resnet50")["layer3.5.conv3"].attrs == g["layer3.5.conv3"].attrs


def test_efficientnet_b5_structure() -> None:
    g = classic("efficientnet_b5")
    # depths ceil(2.2 x (1, 2, 2, 3, 3, 4, 1)) = 3, 5, 5, 7, 7, 9, 3: 39 MBConv blocks
    blocks = {op.name.split(".block")[0] for op in g if ".block." in op.name}
    assert len(blocks) == 39
    assert {b for b in blocks if b.startswith("features.4.")} == {
        f"features.4.{j}" for j in range(7)
    }
    assert _kind_count(g, "sigmoid") == _kind_count(g, "mul") == 39
    assert _kind_count(g, "add") == 39 - 7  # all but each stage's first block
    # channels x 1.6 rounded to multiples of 8: 32->48, 16->24, 112->176, 320->512
    assert g["features.0"].output_shape == (1, 48, 228, 228)
    assert g["features.1.2.block.2"].output_shape == (1, 24, 228, 228)
    assert g["features.5.6.block.3"].output_shape == (1, 176, 29, 29)
    assert g["features.7.2.block.3"].output_shape == (1, 512, 15, 15)
    assert g["features.8"].output_shape == (1, 2048, 15, 15)  # 4 x 512
    se = "features.2.0.block.2"
    assert g[f"{se}.fc1"].output_shape == (1, 6, 1, 1)  # squeeze = in_channels (24) // 4
    assert g[f"{se}.fc1"].attrs["bias"] and not g[f"{se}.fc1"].attrs["folded_bn"]
    main_convs = [op for op in g if op.kind == "conv" and op.attrs["folded_bn"]]
    assert {op.attrs["activation"] for op in main_convs} == {"silu", None}
    # the B0 entry is unchanged by the shared code
    assert _kind_count(build_model("efficientnet_b0"), "conv") == 81


def test_googlenet_structure() -> None:
    g = classic("googlenet")
    blocks = [op.name[: -len(".concat")] for op in g if op.name.endswith(".concat")]
    stages = ("3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b")
    assert blocks == [f"inception{s}" for s in stages]
    assert _kind_count(g, "conv") == 3 + 9 * 6 == 57
    for block in blocks:
        branches = g[f"{block}.concat"].inputs
        ends = ("branch1", "branch2.1", "branch3.1", "branch4.1")
        assert branches == tuple(f"{block}.{b}" for b in ends)
        assert _independent(g, branches)
        assert g[f"{block}.branch3.1"].attrs["kernel"] == (3, 3)  # torchvision's, not 5x5
        pool = g[f"{block}.branch4.0"].attrs
        assert (pool["kernel"], pool["stride"], pool["ceil_mode"]) == ((3, 3), (1, 1), True)
    assert g["inception3a.concat"].output_shape == (1, 256, 28, 28)
    assert g["inception4e.concat"].output_shape == (1, 832, 14, 14)
    assert g["inception5b.concat"].output_shape == (1, 1024, 7, 7)
    assert g["maxpool4"].attrs["kernel"] == (2, 2)
    convs = [op for op in g if op.kind == "conv"]
    assert all(op.attrs["folded_bn"] and op.attrs["activation"] == "relu" for op in convs)
    assert not any(op.kind in ("batchnorm", "relu") for op in g)


@pytest.mark.parametrize(
    ("name", "blocks", "final"),
    [("densenet121", (6, 12, 24, 16), 1024), ("densenet201", (6, 12, 48, 32), 1920)],
)
def test_densenet_structure(name: str, blocks: tuple[int, ...], final: int) -> None:
    g = classic(name)
    layers = sum(blocks)
    assert _kind_count(g, "conv") == 1 + 2 * layers + 3
    # a standalone BN (+ ReLU) before every dense layer and transition, and norm5
    assert _kind_count(g, "batchnorm") == layers + 3 + 1
    assert _kind_count(g, "relu") == layers + 3 + 1
    assert _kind_count(g, "concat") == sum(n - 1 for n in blocks) + len(blocks)
    layer = "features.denseblock2.denselayer3"
    # pre-activation: cat -> BN -> ReLU -> conv1 (norm2 folded, relu2 fused) -> conv2
    assert g[f"{layer}.norm1"].kind == "batchnorm"
    assert g[f"{layer}.norm1"].inputs == (f"{layer}.cat",)
    assert g[f"{layer}.relu1"].inputs == (f"{layer}.norm1",)
    assert g[f"{layer}.conv1"].inputs == (f"{layer}.relu1",)
    c1, c2 = g[f"{layer}.conv1"].attrs, g[f"{layer}.conv2"].attrs
    assert (c1["folded_bn"], c1["activation"], c1["bias"]) == (True, "relu", False)
    assert (c2["folded_bn"], c2["activation"], c2["bias"]) == (False, None, False)
    assert g[f"{layer}.conv1"].output_shape == (1, 128, 28, 28)
    assert g[f"{layer}.conv2"].output_shape == (1, 32, 28, 28)
    # each layer reads the block input and every earlier layer's 32 channels
    assert g[f"{layer}.cat"].inputs == (
        "features.transition1.pool",
        "features.denseblock2.denselayer1.conv2",
        "features.denseblock2.denselayer2.conv2",
    )
    assert g[f"{layer}.cat"].output_shape == (1, 128 + 2 * 32, 28, 28)
    assert g["features.denseblock2.denselayer1.norm1"].inputs == ("features.transition1.pool",)
    assert g["features.denseblock1.cat"].output_shape == (1, 64 + 6 * 32, 56, 56)
    t = g["features.transition1.conv"].attrs
    assert (t["folded_bn"], t["activation"], t["bias"]) == (False, None, False)
    assert g["features.transition1.pool"].output_shape == (1, 128, 28, 28)
    assert g["features.norm5"].output_shape == (1, final, 7, 7)
    assert g["classifier"].inputs == ("flatten",)
    st = g.stats("features.norm5")
    assert (st.macs, st.params) == (0, 2 * final)  # weight + bias, as torchvision counts


@pytest.mark.parametrize(("name", "convs", "fcs"), [("vgg16", 13, 3), ("alexnet", 5, 3)])
def test_fc_networks_structure(name: str, convs: int, fcs: int) -> None:
    g = classic(name)
    conv_ops = [op for op in g if op.kind == "conv"]
    assert len(conv_ops) == convs and _kind_count(g, "linear") == fcs
    # no BatchNorm: conv bias and a fused ReLU; the first two linear layers fuse theirs
    assert all(
        op.attrs["bias"] and not op.attrs["folded_bn"] and op.attrs["activation"] == "relu"
        for op in conv_ops
    )
    linears = [op for op in g if op.kind == "linear"]
    assert [op.attrs["activation"] for op in linears] == ["relu", "relu", None]
    assert all(g.nx.out_degree(n) <= 1 for n in g.ops)  # a chain: nothing to overlap
    if name == "vgg16":
        assert g["features.28"].output_shape == (1, 512, 14, 14)
        assert g["features.30"].output_shape == (1, 512, 7, 7)
        assert g.input_shapes("classifier.0") == [(1, 25088)]
    else:
        assert g["features.0"].output_shape == (1, 64, 55, 55)
        assert g["features.12"].output_shape == (1, 256, 6, 6)
        assert g.input_shapes("classifier.1") == [(1, 9216)]


def test_inception_v4_structure() -> None:
    g = classic("inception_v4")
    assert _kind_count(g, "conv") == 3 + 1 + 6 + 1 + 7 * 4 + 4 + 10 * 7 + 6 + 10 * 3 == 149
    shapes = {
        "features.3": (1, 160, 73, 73),  # Mixed_3a
        "features.4": (1, 192, 71, 71),  # Mixed_4a
        "features.5": (1, 384, 35, 35),  # Mixed_5a
        "features.9": (1, 384, 35, 35),  # last Inception-A
        "features.10": (1, 1024, 17, 17),  # Reduction-A
        "features.17": (1, 1024, 17, 17),  # last Inception-B
        "features.18": (1, 1536, 8, 8),  # Reduction-B
        "features.21": (1, 1536, 8, 8),  # last Inception-C
    }
    for block, shape in shapes.items():
        concat = g[f"{block}.concat"]
        assert concat.output_shape == shape, block
        assert _independent(g, concat.inputs), block
    a = g["features.12.branch2.1"].attrs  # Inception-B's factorised 7x7
    assert (a["kernel"], a["padding"]) == ((7, 1), (3, 0))
    c = g["features.19.concat"].inputs  # Inception-C's 1x3/3x1 pairs feed the concat
    assert c[1:3] == ("features.19.branch1_1a", "features.19.branch1_1b")
    assert g["features.19.branch2_2"].output_shape == (1, 512, 8, 8)
    convs = [op for op in g if op.kind == "conv"]
    assert all(op.attrs["folded_bn"] and op.attrs["activation"] == "relu" for op in convs)
    assert g.input_shapes("last_linear") == [(1, 1536)]
