"""Model zoo part A: ResNet-50, SqueezeNet 1.0/1.1, MobileNetV2, EfficientNet-B0,
BERT-base, ensembles and multi-task models.

Scheduler comparisons are only as credible as these graphs, so each model is checked
against the *published* MACs/params (constants below, never recomputed), against the
exact torchvision / Hugging Face parameter counts (which pins the architecture down to
the channel), and for the structure that gives inter-operator parallelism.
"""

from __future__ import annotations

import itertools
import json
import math
from functools import cache

import networkx as nx
import pytest

from simgpu.cli import main
from simgpu.errors import GraphError, SimGPUError
from simgpu.graph import Op, OpGraph
from simgpu.hardware import preset
from simgpu.kernels import lower_graph, lower_op, standalone_time_us
from simgpu.models import MODELS, build_model, inception_v3
from simgpu.models.bert import bert_base
from simgpu.models.combinators import (
    ENSEMBLE_MEMBERS,
    MULTITASK_HEADS,
    Head,
    ensemble,
    feature_op,
    multitask,
)
from simgpu.models.mobilenet import mobilenet_v2
from simgpu.models.resnet import resnet50
from simgpu.ops import KINDS

# Published figures at batch 1 and default resolution: (GMACs, M params).
PUBLISHED: dict[str, tuple[float, float]] = {
    "inception_v3": (5.71, 23.8),
    "resnet50": (4.09, 25.6),
    "squeezenet1_0": (0.82, 1.25),
    "squeezenet1_1": (0.35, 1.24),
    "mobilenet_v2": (0.30, 3.5),
    "efficientnet_b0": (0.39, 5.3),
    "bert_base": (11.2, 110.0),
}
INCEPTION_AUX_PARAMS = 27.2e6
MACS_TOL, PARAMS_TOL = 0.05, 0.03

# Exact parameter counts of the reference implementations (torchvision, Hugging Face
# BertModel with pooler), BatchNorm counted as weight + bias per channel.
REFERENCE_PARAMS = {
    "resnet50": 25_557_032,
    "squeezenet1_0": 1_248_424,
    "squeezenet1_1": 1_235_496,
    "mobilenet_v2": 3_504_872,
    "efficientnet_b0": 5_288_548,
    "bert_base": 109_482_240,
}

ZOO_A = ["resnet50", "squeezenet1_0", "squeezenet1_1", "mobilenet_v2", "efficientnet_b0"]
COMBINED = ["ensemble_resnet50_inception_v3_squeezenet1_1", "multitask_resnet50"]
MINE = [*ZOO_A, "bert_base", *COMBINED]


@cache
def model(name: str, batch: int = 1, image_size: int | None = None, dtype: str = "fp32") -> OpGraph:
    return build_model(name, batch=batch, image_size=image_size, dtype=dtype)


def within(value: float, published: float, rel: float) -> bool:
    return abs(value - published) <= rel * published


def width(g: OpGraph) -> int:
    """Largest antichain (ops that may all run at once), by Dilworth: ops minus a maximum
    matching in the reachability relation."""
    closure = nx.transitive_closure_dag(g.nx)
    bip = nx.Graph()
    left = [("o", n) for n in g.ops]
    bip.add_nodes_from(left, bipartite=0)
    bip.add_nodes_from((("i", n) for n in g.ops), bipartite=1)
    bip.add_edges_from((("o", u), ("i", v)) for u, v in closure.edges())
    matching = nx.bipartite.hopcroft_karp_matching(bip, top_nodes=left)
    return len(g) - len(matching) // 2


def folded_channels(g: OpGraph) -> int:
    """Channels of BN-folded convs: each folded BN's 2*C parameters became C biases."""
    return sum(op.attrs["out_channels"] for op in g if op.attrs.get("folded_bn"))


def unreachable(g: OpGraph, names: list[str]) -> bool:
    return all(
        not nx.has_path(g.nx, a, b) and not nx.has_path(g.nx, b, a)
        for a, b in itertools.combinations(names, 2)
    )


# --- published figures --------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_macs_and_params(name: str) -> None:
    g = model(name)
    gmacs, mparams = PUBLISHED[name]
    assert within(g.macs, gmacs * 1e9, MACS_TOL), (name, g.macs)
    assert within(g.params, mparams * 1e6, PARAMS_TOL), (name, g.params)


def test_inception_v3_aux_logits_params() -> None:
    g = inception_v3(aux_logits=True)
    assert within(g.params, INCEPTION_AUX_PARAMS, PARAMS_TOL), g.params
    assert not within(inception_v3().params, INCEPTION_AUX_PARAMS, PARAMS_TOL)


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_exact_reference_parameter_count(name: str) -> None:
    g = model(name)
    assert g.params + folded_channels(g) == REFERENCE_PARAMS[name]


@pytest.mark.parametrize(
    ("name", "kwargs", "figure", "which"),
    [
        ("squeezenet1_1", {}, "squeezenet1_0", "macs"),  # the other version's figures
        ("squeezenet1_0", {}, "squeezenet1_1", "macs"),
        ("resnet50", {"image_size": 256}, "resnet50", "macs"),  # 31% more MACs
        ("efficientnet_b0", {"image_size": 240}, "efficientnet_b0", "macs"),  # 15% more
        ("bert_base", {"seq_len": 140}, "bert_base", "macs"),  # 10% more
        ("mobilenet_v2", {"num_classes": 10}, "mobilenet_v2", "params"),  # no 1000-way fc
    ],
)
def test_figure_tolerance_can_fail(name: str, kwargs: dict, figure: str, which: str) -> None:
    """A wrong graph is caught: the check compares with the published constant."""
    builders = {
        "resnet50": resnet50,
        "mobilenet_v2": mobilenet_v2,
        "bert_base": bert_base,
    }
    g = builders[name](**kwargs) if name in builders else build_model(name, **kwargs)
    gmacs, mparams = PUBLISHED[figure]
    if which == "macs":
        assert not within(g.macs, gmacs * 1e9, MACS_TOL), g.macs
    else:
        assert not within(g.params, mparams * 1e6, PARAMS_TOL), g.params


# --- scaling and dtypes -----------------------------------------------------------------


@pytest.mark.parametrize("name", MINE)
def test_batch_scales_macs_not_params(name: str) -> None:
    g1, g3 = model(name), model(name, batch=3)
    assert g3.macs == 3 * g1.macs
    assert g3.params == g1.params
    assert len(g3) == len(g1)
    for op in g3.inputs:
        assert op.output_shape[0] in (1, 3)
    assert any(op.output_shape[0] == 3 for op in g3.inputs)


@pytest.mark.parametrize("name", [*ZOO_A, *COMBINED])
def test_image_size_changes_macs(name: str) -> None:
    default = MODELS[name].default_image_size
    assert default is not None
    small, big = model(name, image_size=default - 32), model(name, image_size=default + 32)
    assert small.macs < model(name).macs < big.macs
    assert small.params == big.params == model(name).params
    for op in big.inputs:
        assert op.output_shape[-2:] == (default + 32, default + 32)


def test_bert_seq_len_and_no_image_size() -> None:
    g = bert_base(seq_len=64)
    assert g["input_ids"].output_shape == (1, 64)
    assert 0 < g.macs < model("bert_base").macs
    assert g.params == model("bert_base").params
    with pytest.raises(GraphError, match="no image size"):
        build_model("bert_base", image_size=224)
    with pytest.raises(GraphError, match="seq_len 513"):
        bert_base(seq_len=513)


@pytest.mark.parametrize("name", MINE)
def test_builds_at_fp16(name: str) -> None:
    g = model(name, dtype="fp16")
    assert all(op.dtype == "fp16" for op in g)
    assert g.macs == model(name).macs and g.params == model(name).params
    assert (
        g.stats(g.topo_order[-1]).bytes_written * 2
        == model(name).stats(g.topo_order[-1]).bytes_written
    )


@pytest.mark.parametrize("name", MINE)
def test_deterministic_and_json_round_trip(name: str) -> None:
    g = model(name)
    again = build_model(name)
    assert again == g and list(again.ops) == list(g.ops)
    assert OpGraph.from_json(json.loads(json.dumps(g.to_json()))) == g


@pytest.mark.parametrize("name", MINE)
def test_bad_sizes_are_one_line_errors(name: str) -> None:
    for kwargs in ({"batch": 0}, {"image_size": 0} if name != "bert_base" else {"seq_len": 0}):
        with pytest.raises(SimGPUError) as e:
            if "seq_len" in kwargs:
                bert_base(**kwargs)
            else:
                build_model(name, **kwargs)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("name", "size", "op"),
    [("squeezenet1_0", 28, "features.11"), ("squeezenet1_1", 24, "features.8")],
)
def test_too_small_image_names_the_op(name: str, size: int, op: str) -> None:
    # the last pool's window no longer fits (PyTorch refuses these sizes too)
    with pytest.raises(GraphError, match=rf"op '{op}' \(pool\): window 3"):
        build_model(name, image_size=size)
    assert build_model(name, image_size=size + 1)["flatten"].output_shape == (1, 1000)


# --- architecture -----------------------------------------------------------------------


def _count(g: OpGraph, kind: str) -> int:
    return sum(op.kind == kind for op in g)


def test_resnet50_structure() -> None:
    g = model("resnet50")
    assert _count(g, "conv") == 1 + 16 * 3 + 4 == 53
    assert _count(g, "add") == _count(g, "relu") == 16
    assert g["layer1.2.relu"].output_shape == (1, 256, 56, 56)
    assert g["layer4.2.relu"].output_shape == (1, 2048, 7, 7)
    assert g["fc"].output_shape == (1, 1000)
    downs = [op.name for op in g if op.name.endswith("downsample.0")]
    assert downs == [f"layer{i}.0.downsample.0" for i in range(1, 5)]
    # v1.5: the stride is on the 3x3 conv, and the projection shortcut is the only branch
    assert g["layer2.0.conv2"].attrs["stride"] == (2, 2)
    assert g["layer2.0.conv1"].attrs["stride"] == (1, 1)
    assert g["layer2.0.add"].inputs == ("layer2.0.conv3", "layer2.0.downsample.0")
    assert g["layer2.1.add"].inputs == ("layer2.1.conv3", "layer2.0.relu")
    assert g["layer1.0.conv3"].attrs["activation"] is None
    assert all(op.attrs["folded_bn"] for op in g if op.kind == "conv")
    assert width(g) == 2


@pytest.mark.parametrize("name", ["squeezenet1_0", "squeezenet1_1"])
def test_squeezenet_fire_modules(name: str) -> None:
    g = model(name)
    fires = [op.name[: -len(".concat")] for op in g if op.name.endswith(".concat")]
    assert len(fires) == 8
    assert _count(g, "conv") == 2 + 8 * 3
    for f in fires:
        e1, e3 = g[f"{f}.concat"].inputs
        assert (e1, e3) == (f"{f}.expand1x1", f"{f}.expand3x3")
        assert g[e1].inputs == g[e3].inputs == (f"{f}.squeeze",)
        assert g[e3].attrs["kernel"] == (3, 3) and g[e3].attrs["padding"] == (1, 1)
    assert all(op.attrs["bias"] and not op.attrs["folded_bn"] for op in g if op.kind == "conv")
    assert sum(op.attrs.get("ceil_mode", False) for op in g if op.kind == "pool") == 3
    assert g["features.12.concat"].output_shape == (1, 512, 13, 13)
    assert g["classifier.1"].output_shape == (1, 1000, 13, 13)
    assert g["flatten"].output_shape == (1, 1000)
    assert width(g) == 2


def test_squeezenet_versions_differ_where_published() -> None:
    a, b = model("squeezenet1_0"), model("squeezenet1_1")
    assert a["features.0"].attrs["kernel"] == (7, 7) and a["features.0"].output_shape[1] == 96
    assert b["features.0"].attrs["kernel"] == (3, 3) and b["features.0"].output_shape[1] == 64
    assert a["features.6"].kind == "pool" and b["features.5"].kind == "pool"


def test_mobilenet_v2_structure() -> None:
    g = model("mobilenet_v2")
    assert _count(g, "conv") == 1 + 2 + 16 * 3 + 1 == 52
    assert _count(g, "add") == 10  # stride-1 blocks whose channels do not change
    dw = [op for op in g if op.kind == "conv" and op.attrs["groups"] > 1]
    assert len(dw) == 17
    assert all(op.attrs["groups"] == op.output_shape[1] for op in dw)
    assert g["features.1.conv.0"].attrs["groups"] == 32  # t = 1: no expansion conv
    assert g["features.2.conv.0"].output_shape == (1, 96, 112, 112)  # expand 16 -> 96
    assert g["features.2.conv.2"].attrs["activation"] is None  # linear bottleneck
    assert g["features.3.add"].inputs == ("features.2.conv.2", "features.3.conv.2")
    assert g["features.18"].output_shape == (1, 1280, 7, 7)
    assert {op.attrs["activation"] for op in g if op.kind == "conv"} == {"relu6", None}


def test_efficientnet_b0_structure() -> None:
    g = model("efficientnet_b0")
    assert _count(g, "conv") == 81  # 49 Conv-BN + 16 SE blocks x 2 1x1 convs
    assert _count(g, "sigmoid") == _count(g, "mul") == 16
    assert _count(g, "add") == 9
    se = "features.2.0.block.2"
    assert g[f"{se}.avgpool"].inputs == ("features.2.0.block.1",)
    assert g[f"{se}.fc1"].output_shape == (1, 4, 1, 1)  # squeeze = in_channels // 4
    assert g[f"{se}.fc2"].output_shape == (1, 96, 1, 1)
    assert g[f"{se}.scale"].inputs == ("features.2.0.block.1", f"{se}.scale_activation")
    assert g[f"{se}.scale"].output_shape == (1, 96, 56, 56)  # broadcast over H x W
    assert g["features.2.0.block.1"].attrs["groups"] == 96
    assert g["features.3.0.block.1"].attrs["kernel"] == (5, 5)
    assert g["features.8"].output_shape == (1, 1280, 7, 7)
    main_convs = [op for op in g if op.kind == "conv" and op.attrs["folded_bn"]]
    assert {op.attrs["activation"] for op in main_convs} == {"silu", None}


def test_bert_base_structure() -> None:
    g = model("bert_base")
    assert [op.name for op in g.inputs] == ["input_ids", "token_type_ids", "position_ids"]
    assert g["embeddings.LayerNorm"].output_shape == (1, 128, 768)
    assert _count(g, "embedding") == 3 and _count(g, "layernorm") == 1 + 12 * 2
    assert _count(g, "softmax") == 12 * 12
    assert _count(g, "matmul") == 12 * 12 * 2
    assert _count(g, "linear") == 12 * 6 + 1
    layer = "encoder.layer.5.attention.self"
    qkv = [f"{layer}.{p}" for p in ("query", "key", "value")]
    assert unreachable(g, qkv)  # Q/K/V projections are parallel branches
    heads = [f"{layer}.head{h}.context" for h in range(12)]
    assert unreachable(g, heads)  # and so are the 12 heads
    assert g[f"{layer}.concat"].inputs == tuple(heads)
    assert g[f"{layer}.head3.scores"].output_shape == (1, 128, 128)
    assert g[f"{layer}.head3.softmax"].attrs["scale"] == pytest.approx(1 / 8)
    assert g[f"{layer}.head3.context"].output_shape == (1, 128, 64)
    assert g["encoder.layer.0.intermediate.dense"].attrs["activation"] == "gelu"
    assert g["pooler.dense"].output_shape == (1, 768)


def test_bert_embedding_is_a_cheap_gather() -> None:
    g = model("bert_base")
    word = g["embeddings.word_embeddings"]
    assert word.output_shape == (1, 128, 768)
    st = g.stats(word.name)
    assert (st.macs, st.flops, st.params) == (0, 0, 30522 * 768)
    ks = lower_op(g, word.name, preset("v100"))
    assert len(ks) == 1 and ks[0].name == "embedding_gather"
    moved = sum(k.block_bytes * k.grid for k in ks)
    assert moved == pytest.approx(128 * 8 + 2 * 128 * 768 * 4)


# --- the embedding op kind ----------------------------------------------------------------


def _emb(vocab: int, dim: int, ids: tuple[int, ...] = (2, 5), dtype: str = "fp32") -> OpGraph:
    return OpGraph(
        [
            Op("ids", "input", (), ids, dtype),
            Op(
                "e",
                "embedding",
                ("ids",),
                (*ids, dim),
                dtype,
                {"num_embeddings": vocab, "embedding_dim": dim},
            ),
        ]
    )


def test_embedding_infer_and_count() -> None:
    g = _emb(100, 16)
    assert g["e"].output_shape == (2, 5, 16)
    assert g.params == 1600 and g.macs == 0 and g.flops == 0
    assert _emb(7, 3, ids=(4,))["e"].output_shape == (4, 3)


@pytest.mark.parametrize(
    ("attrs", "match"),
    [
        ({"num_embeddings": 0, "embedding_dim": 4}, "must be positive"),
        ({"num_embeddings": 10, "embedding_dim": -1}, "must be positive"),
        ({"embedding_dim": 4}, "missing attribute 'num_embeddings'"),
        ({"num_embeddings": "many", "embedding_dim": 4}, "must be an integer"),
    ],
)
def test_embedding_bad_attrs_name_the_op(attrs: dict, match: str) -> None:
    with pytest.raises(GraphError, match=rf"op 'e' \(embedding\).*{match}"):
        OpGraph(
            [Op("ids", "input", (), (2, 5)), Op("e", "embedding", ("ids",), (2, 5, 4), attrs=attrs)]
        )


def test_embedding_declared_shape_is_checked() -> None:
    with pytest.raises(GraphError, match="inputs imply"):
        OpGraph(
            [
                Op("ids", "input", (), (2, 5)),
                Op(
                    "e",
                    "embedding",
                    ("ids",),
                    (2, 5, 8),
                    attrs={"num_embeddings": 3, "embedding_dim": 4},
                ),
            ]
        )


def test_embedding_kernel_cost_ignores_table_size() -> None:
    """A gather touches one row per index: a 100x larger table costs no more time."""
    gpu = preset("v100")
    small, big = _emb(300, 64, (8, 128)), _emb(30_000, 64, (8, 128))
    (ks,), (kb,) = lower_op(small, "e", gpu), lower_op(big, "e", gpu)
    assert standalone_time_us(ks, gpu) == standalone_time_us(kb, gpu)
    assert big.params == 100 * small.params
    longer = _emb(300, 64, (8, 512))
    (kl,) = lower_op(longer, "e", gpu)
    assert standalone_time_us(kl, gpu) > standalone_time_us(ks, gpu)
    (kh,) = lower_op(_emb(300, 64, (8, 128), "fp16"), "e", gpu)
    assert kh.block_bytes * kh.grid < ks.block_bytes * ks.grid


# --- ensembles ----------------------------------------------------------------------------


def test_registered_ensemble_sums_members() -> None:
    g = model("ensemble_resnet50_inception_v3_squeezenet1_1")
    members = [model(m, image_size=299) for m in ENSEMBLE_MEMBERS]
    assert g.params == sum(m.params for m in members)
    assert g.macs == sum(m.macs for m in members)
    assert len(g) == sum(len(m) - 1 for m in members) + 2  # one shared input, one mean
    assert g["input"].output_shape == (1, 3, 299, 299)
    assert g.successors("input") == [
        "resnet50.conv1",
        "inception_v3.Conv2d_1a_3x3",
        "squeezenet1_1.features.0",
    ]
    outs = ["resnet50.fc", "inception_v3.fc", "squeezenet1_1.flatten"]
    assert g["ensemble.mean"].inputs == tuple(outs)
    assert unreachable(g, outs)
    # no path between members: their widest points add up
    assert width(g) == sum(width(m) for m in members) >= 3


def test_ensemble_from_python_any_registered_models() -> None:
    g = ensemble("mobilenet_v2", "efficientnet_b0", "mobilenet_v2")
    assert g.name == "ensemble_mobilenet_v2_efficientnet_b0_mobilenet_v2_1"
    assert g["input"].output_shape == (1, 3, 224, 224)
    assert "mobilenet_v2_1.features.0" in g and "efficientnet_b0.features.0" in g
    mb, ef = model("mobilenet_v2"), model("efficientnet_b0")
    assert g.params == 2 * mb.params + ef.params
    assert g.macs == 2 * mb.macs + ef.macs
    assert len(g.successors("input")) == 3
    g8 = ensemble("squeezenet1_0", "resnet50", batch=8, image_size=160, dtype="fp16")
    assert g8["ensemble.mean"].output_shape == (8, 1000)
    assert all(op.dtype == "fp16" for op in g8)


def test_ensemble_of_graphs_and_without_combining() -> None:
    a = inception_v3(aux_logits=True)
    g = ensemble(a, model("squeezenet1_1", image_size=299), combine=False)
    assert "ensemble.mean" not in g
    sinks = sorted(n for n in g.ops if g.nx.out_degree(n) == 0)
    assert sinks == [
        "inception_v3_aux.AuxLogits.fc",
        "inception_v3_aux.fc",
        "squeezenet1_1.flatten",
    ]
    with pytest.raises(GraphError, match="2 outputs"):
        ensemble(a, model("squeezenet1_1", image_size=299))


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((), {}, "at least one model"),
        (("resnet50", "bert_base"), {}, "must share one input"),
        (("resnet50", "no_such_model"), {}, "unknown model 'no_such_model'"),
        ((42,), {}, "registered name or an OpGraph"),
    ],
)
def test_ensemble_errors(args: tuple, kwargs: dict, match: str) -> None:
    with pytest.raises(GraphError, match=match) as e:
        ensemble(*args, **kwargs)
    assert "\n" not in str(e.value)


def test_ensemble_output_shapes_must_agree_to_average() -> None:
    ten = resnet50(num_classes=10)
    with pytest.raises(GraphError, match="differ in shape"):
        ensemble(ten, model("resnet50"))
    assert "ensemble.mean" not in ensemble(ten, model("resnet50"), combine=False)


# --- multi-task ---------------------------------------------------------------------------


def _head_params(feature_channels: int, h: Head) -> int:
    if h.task == "classify":
        n = feature_channels
        extra = 0
        if h.hidden:
            extra, n = n * h.hidden + h.hidden, h.hidden
        return extra + n * h.outputs + h.outputs
    conv = feature_channels * 9 * h.hidden + h.hidden if h.hidden else 0  # BN folded to a bias
    return conv + (h.hidden or feature_channels) * h.outputs + h.outputs


def test_registered_multitask_params_and_width() -> None:
    g = model("multitask_resnet50")
    r = model("resnet50")
    trunk = r.params - (2048 * 1000 + 1000)  # resnet50 without its fc
    assert g.params == trunk + sum(_head_params(2048, h) for h in MULTITASK_HEADS)
    singles = [multitask("resnet50", h) for h in MULTITASK_HEADS]
    assert g.params == sum(s.params for s in singles) - 2 * trunk  # backbone shared once
    assert g.successors("layer4.2.relu") == [
        "imagenet.avgpool",
        "places365.avgpool",
        "segmentation.conv",
    ]
    assert g["imagenet.classifier"].output_shape == (1, 1000)
    assert g["places365.classifier"].output_shape == (1, 365)
    assert g["segmentation.classifier"].output_shape == (1, 21, 7, 7)
    assert "fc" not in g and "avgpool" not in g
    assert width(g) == len(MULTITASK_HEADS) == 3


def test_multitask_with_the_backbone_head_is_the_backbone() -> None:
    r = model("resnet50")
    g = multitask("resnet50", Head("cls", "classify", 1000))
    assert (g.params, g.macs, len(g)) == (r.params, r.macs, len(r))
    assert feature_op(r) == "layer4.2.relu"


def test_multitask_other_backbones() -> None:
    sq = multitask("squeezenet1_1", Head("a", "classify", 10), Head("b", "dense", 5, 64))
    assert sq.successors("features.12.concat") == ["a.avgpool", "b.conv"]
    assert "classifier.1" not in sq
    bert = multitask("bert_base", Head("cls", "classify", 2), Head("ner", "dense", 9, 768))
    assert feature_op(model("bert_base")) == "encoder.layer.11.output.LayerNorm"
    assert bert["ner.classifier"].output_shape == (1, 128, 9)
    assert bert["cls.classifier"].output_shape == (1, 2)
    assert "pooler.dense" not in bert
    inc = multitask(
        inception_v3(aux_logits=True), Head("x", "classify", 7), feature="Mixed_7c.concat"
    )
    assert not any(n.startswith("AuxLogits") for n in inc.ops)
    assert inc.params == inception_v3().params - (2048 * 1000 + 1000) + 2048 * 7 + 7


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (("resnet50",), {}, "at least one head"),
        (("resnet50", Head("a", "classify", 3), Head("a", "dense", 3)), {}, "repeat: a"),
        (("resnet50", Head("a", "detect", 3)), {}, "unknown task 'detect'"),
        (("resnet50", Head("a", "classify", 0)), {}, "outputs 0"),
        (("resnet50", Head("a.b", "classify", 3)), {}, "contain no '.'"),
        (("resnet50", Head("fc", "classify", 3)), {}, "'fc' is an op"),
        (("resnet50", "classify"), {}, "heads must be Head"),
        (("resnet50", Head("a", "classify", 3)), {"feature": "nope"}, "'nope' is not an op"),
        ((inception_v3(aux_logits=True), Head("a", "classify", 3)), {}, "2 outputs"),
    ],
)
def test_multitask_errors(args: tuple, kwargs: dict, match: str) -> None:
    with pytest.raises(GraphError, match=match) as e:
        multitask(*args, **kwargs)
    assert "\n" not in str(e.value)


def test_dense_head_needs_spatial_features() -> None:
    flat = model("resnet50")
    with pytest.raises(GraphError, match="dense head needs"):
        multitask(flat, Head("d", "dense", 3), feature="flatten")


# --- CLI ----------------------------------------------------------------------------------


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_lists_every_model(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _cli(capsys, "models", "--json")
    assert rc == 0, err
    rows = {r["name"]: r for r in json.loads(out)}
    for name in MINE:
        assert rows[name]["macs"] == model(name).macs
        assert rows[name]["params"] == model(name).params
        assert rows[name]["ops"] == len(model(name))
    assert rows["resnet50"]["input"] == [1, 3, 224, 224]
    assert rows["bert_base"]["input"] == [[1, 128], [1, 128], [1, 128]]


@pytest.mark.parametrize(
    "argv", [["squeezenet1_1", "--batch", "2", "--image-size", "160"], ["multitask_resnet50"]]
)
def test_cli_run_sequential(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    rc, out, err = _cli(
        capsys, "run", *argv, "--scheduler", "sequential", "--runtime", "cudnn", "--json"
    )
    assert rc == 0, err
    data = json.loads(out)
    batch = 2 if "--batch" in argv else 1
    size = 160 if "--image-size" in argv else None
    g = model(argv[0], batch=batch, image_size=size)
    assert (data["model"], data["ops"], data["macs"]) == (g.name, len(g), g.macs)
    (r,) = data["results"]
    assert r["scheduler"] == "sequential" and r["latency_ms"] > 0 and math.isfinite(r["latency_ms"])
    # every op with device work launches its library's kernels (several for Winograd or
    # split-K), so at least one each
    assert r["kernels"] == sum(len(ks) for ks in lower_graph(g, preset("v100")).values())
    assert r["kernels"] >= sum(not KINDS[op.kind].view for op in g)


def test_cli_bert_rejects_image_size(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _cli(
        capsys, "run", "bert_base", "--image-size", "224", "--scheduler", "sequential"
    )
    assert rc == 2 and "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert line.startswith("simgpu: error:") and "no image size" in line
