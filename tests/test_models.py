"""Model zoo: Inception V3 must match the published architecture, and the builder must
fail cleanly, because every scheduler result in the project is measured on these graphs."""

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
