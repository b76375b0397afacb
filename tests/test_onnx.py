"""ONNX import: models built here with ``onnx.helper`` (a chain, an Inception-like block,
a transformer layer, transposed convs, unmappable operators, corrupt files), and the CLI
on ``.onnx`` files. Skipped where the optional ``onnx`` package is not installed."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

onnx = pytest.importorskip("onnx")
from onnx import TensorProto as TP  # noqa: E402
from onnx import helper as oh  # noqa: E402
from onnx import numpy_helper as nh  # noqa: E402

from simgpu.cli import main  # noqa: E402
from simgpu.errors import FormatError, GraphError  # noqa: E402
from simgpu.graph import OpGraph  # noqa: E402
from simgpu.hardware import Machine, load_gpu  # noqa: E402
from simgpu.kernels import lower_op  # noqa: E402
from simgpu.models import GraphBuilder  # noqa: E402
from simgpu.models.onnx import load_onnx  # noqa: E402
from simgpu.program import lower  # noqa: E402
from simgpu.schedule import StreamSchedule  # noqa: E402
from simgpu.sim.engine import simulate  # noqa: E402

V100 = load_gpu("v100")


def w(name: str, *shape: int, value: Any = None) -> Any:
    if value is not None:
        return nh.from_array(np.asarray(value), name)
    return nh.from_array(np.zeros(shape, np.float32), name)


def model(
    nodes: list,
    inits: list,
    inputs: dict[str, list],
    outputs: dict[str, list],
    opset: int = 17,
    elem: int = TP.FLOAT,
    name: str = "m",
) -> Any:
    if not outputs:  # the last node's output, of unknown size (ONNX infers it)
        outputs = {nodes[-1].output[0]: ["d0", "d1", "d2", "d3"]}
    g = oh.make_graph(
        nodes,
        name,
        [oh.make_tensor_value_info(k, elem, v) for k, v in inputs.items()],
        [oh.make_tensor_value_info(k, elem, v) for k, v in outputs.items()],
        inits,
    )
    return oh.make_model(g, opset_imports=[oh.make_opsetid("", opset)])


def onnx_shapes(m: Any) -> dict[str, tuple[int, ...]]:
    inferred = onnx.shape_inference.infer_shapes(m)
    out = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            out[vi.name] = tuple(d.dim_value for d in dims)
    return out


def run_seq(graph: OpGraph) -> float:
    machine = Machine.single(V100)
    prog = lower(StreamSchedule([graph.topo_order]), graph, V100)
    return simulate(prog, machine).latency_ms


# --- a linear chain ----------------------------------------------------------------------


def chain_model(batch: Any = "N") -> Any:
    nodes = [
        oh.make_node(
            "Conv",
            ["x", "w1", "b1"],
            ["c1"],
            name="conv1",
            kernel_shape=[3, 3],
            pads=[1, 1, 1, 1],
            strides=[2, 2],
        ),
        oh.make_node("BatchNormalization", ["c1", "s", "bb", "m", "v"], ["bn"], name="bn1"),
        oh.make_node("Relu", ["bn"], ["r"], name="relu1"),
        oh.make_node(
            "MaxPool",
            ["r"],
            ["p"],
            name="pool1",
            kernel_shape=[3, 3],
            strides=[2, 2],
            pads=[0, 0, 1, 1],
        ),
        oh.make_node("GlobalAveragePool", ["p"], ["g"], name="gap"),
        oh.make_node("Flatten", ["g"], ["f"], name="flat"),
        oh.make_node("Gemm", ["f", "wf", "bf"], ["y0"], name="fc", transB=1),
        oh.make_node("Dropout", ["y0"], ["y1"], name="drop"),
        oh.make_node("Softmax", ["y1"], ["y"], name="prob"),
    ]
    inits = [
        w("w1", 16, 3, 3, 3), w("b1", 16),
        w("s", 16), w("bb", 16), w("m", 16), w("v", 16),
        w("wf", 10, 16), w("bf", 10),
    ]  # fmt: skip
    return model(nodes, inits, {"x": [batch, 3, 32, 32]}, {"y": [batch, 10]}, name="chain")


def test_chain_maps_node_for_node() -> None:
    g = load_onnx(chain_model())
    assert g.name == "chain"
    assert [(op.name, op.kind) for op in g] == [
        ("x", "input"),
        ("conv1", "conv"),
        ("bn1", "batchnorm"),
        ("relu1", "relu"),
        ("pool1", "pool"),
        ("gap", "global_pool"),
        ("flat", "flatten"),
        ("fc", "linear"),
        ("drop", "identity"),
        ("prob", "softmax"),
    ]
    assert g["x"].output_shape == (1, 3, 32, 32)  # a symbolic batch defaults to 1
    assert g["conv1"].output_shape == (1, 16, 16, 16)
    assert g["pool1"].output_shape == (1, 16, 8, 8)  # asymmetric pads, same output size
    assert g["pool1"].attrs["onnx_pads"] == (0, 0, 1, 1)
    assert g["prob"].output_shape == (1, 10)
    assert g["conv1"].attrs["bias"] is True
    # work: conv 16x16x16 outputs x 27 MACs, fc 16 x 10
    assert g.macs == 16 * 16 * 16 * 27 + 16 * 10
    # initializers are parameters, not ops; BatchNorm's running statistics are buffers
    # (PyTorch's convention): weight and bias count, mean and variance do not
    assert g.params == (16 * 27 + 16) + 2 * 16 + (160 + 10)
    assert run_seq(g) > 0


def test_chain_batch_dtype_path_and_bytes(tmp_path: Path) -> None:
    m = chain_model()
    p = tmp_path / "chain.onnx"
    onnx.save(m, p)
    g1 = load_onnx(p)
    assert g1 == load_onnx(p.read_bytes()) == load_onnx(m)
    g4 = load_onnx(p, batch=4)
    assert g4["prob"].output_shape == (4, 10) and g4.macs == 4 * g1.macs
    half = load_onnx(m, dtype="fp16")
    assert {op.dtype for op in half} == {"fp16"} and {op.dtype for op in g1} == {"fp32"}
    fixed = load_onnx(chain_model(batch=2))
    assert fixed["x"].output_shape[0] == 2
    assert load_onnx(chain_model(batch=2), batch=3)["x"].output_shape[0] == 3
    with pytest.raises(GraphError, match="batch"):
        load_onnx(m, batch=0)
    with pytest.raises(GraphError, match="dtype"):
        load_onnx(m, dtype="fp8")


def test_fp16_model_keeps_its_dtype() -> None:
    nodes = [oh.make_node("Relu", ["x"], ["y"], name="r")]
    g = load_onnx(model(nodes, [], {"x": [1, 8]}, {"y": [1, 8]}, elem=TP.FLOAT16))
    assert g["r"].dtype == "fp16"


# --- a multi-branch (Inception-like) block -------------------------------------------------


def inception_block() -> Any:
    def conv(name: str, x: str, cout: int, cin: int, k: int) -> Any:
        return oh.make_node(
            "Conv", [x, f"{name}.w"], [name], name=name, kernel_shape=[k, k], pads=[k // 2] * 4
        )

    nodes = [
        conv("b1", "x", 64, 192, 1),
        conv("b5_1", "x", 48, 192, 1),
        conv("b5_2", "b5_1", 64, 48, 5),
        conv("b3_1", "x", 64, 192, 1),
        conv("b3_2", "b3_1", 96, 64, 3),
        oh.make_node(
            "AveragePool", ["x"], ["bp"], name="pool", kernel_shape=[3, 3], pads=[1, 1, 1, 1]
        ),
        conv("bp_1", "bp", 32, 192, 1),
        oh.make_node("Concat", ["b1", "b5_2", "b3_2", "bp_1"], ["y"], name="cat", axis=1),
    ]
    shapes = {"b1": (64, 192, 1), "b5_1": (48, 192, 1), "b5_2": (64, 48, 5)}
    shapes |= {"b3_1": (64, 192, 1), "b3_2": (96, 64, 3), "bp_1": (32, 192, 1)}
    inits = [w(f"{n}.w", co, ci, k, k) for n, (co, ci, k) in shapes.items()]
    return model(nodes, inits, {"x": [1, 192, 35, 35]}, {"y": [1, 256, 35, 35]})


def test_inception_block_keeps_its_branches() -> None:
    g = load_onnx(inception_block())
    assert g["cat"].output_shape == (1, 256, 35, 35)
    assert g["cat"].inputs == ("b1", "b5_2", "b3_2", "bp_1")
    assert g["pool"].attrs["pool_type"] == "avg" and g["pool"].attrs["stride"] == (1, 1)
    # four branches, no path between ops of different branches
    branches = [["b1"], ["b5_1", "b5_2"], ["b3_1", "b3_2"], ["pool", "bp_1"]]
    import networkx as nx

    for i, a in enumerate(branches):
        for b in branches[i + 1 :]:
            assert not any(nx.has_path(g.nx, u, v) or nx.has_path(g.nx, v, u) for u in a for v in b)
    # the same block written with the builder does the same work
    b = GraphBuilder("ref")
    x = b.input((1, 192, 35, 35))
    kw = {"act": None, "folded_bn": False}
    outs = [
        b.conv(x, 64, 1, **kw),
        b.conv(b.conv(x, 48, 1, **kw), 64, 5, padding=2, **kw),
        b.conv(b.conv(x, 64, 1, **kw), 96, 3, padding=1, **kw),
        b.conv(b.pool(x, "avg", 3, 1, padding=1), 32, 1, **kw),
    ]
    b.concat(outs)
    ref = b.build()
    assert (g.macs, g.params) == (ref.macs, ref.params)
    assert run_seq(g) > 0


# --- a transformer layer ---------------------------------------------------------------------


def transformer_layer(seq: int = 16, d: int = 32, heads: int = 2) -> Any:
    hd = d // heads
    i64 = np.int64
    nodes = [
        oh.make_node("MatMul", ["x", "wqkv"], ["qkv0"], name="qkv"),
        oh.make_node("Add", ["qkv0", "bqkv"], ["qkv1"], name="qkv_bias"),
        oh.make_node("Split", ["qkv1", "split"], ["q", "k", "v"], name="split", axis=2),
        *[oh.make_node("Reshape", [t, "heads_shape"], [f"{t}4"], name=f"{t}_heads") for t in "qkv"],
        *[
            oh.make_node("Transpose", [f"{t}4"], [f"{t}t"], name=f"{t}_t", perm=[0, 2, 1, 3])
            for t in "qv"
        ],
        oh.make_node("Transpose", ["k4"], ["kt"], name="k_t", perm=[0, 2, 3, 1]),
        oh.make_node("MatMul", ["qt", "kt"], ["s0"], name="scores"),
        oh.make_node("Div", ["s0", "scale"], ["s1"], name="scale"),
        oh.make_node("Softmax", ["s1"], ["a"], name="attn", axis=-1),
        oh.make_node("MatMul", ["a", "vt"], ["o0"], name="context"),
        oh.make_node("Transpose", ["o0"], ["o1"], name="o_t", perm=[0, 2, 1, 3]),
        oh.make_node("Reshape", ["o1", "model_shape"], ["o2"], name="merge"),
        oh.make_node("MatMul", ["o2", "wo"], ["o3"], name="out_proj"),
        oh.make_node("Add", ["o3", "x"], ["res"], name="residual"),
        oh.make_node("LayerNormalization", ["res", "ln_s", "ln_b"], ["n"], name="ln", axis=-1),
        oh.make_node("MatMul", ["n", "w1"], ["h0"], name="ffn1"),
        oh.make_node("Mul", ["h0", "half_sqrt"], ["h1"], name="gelu_scale"),
        oh.make_node("Erf", ["h1"], ["h2"], name="gelu_erf"),
        oh.make_node("Add", ["h2", "one"], ["h3"], name="gelu_add"),
        oh.make_node("Mul", ["h0", "h3"], ["h4"], name="gelu_mul"),
        oh.make_node("MatMul", ["h4", "w2"], ["y"], name="ffn2"),
    ]
    inits = [
        w("wqkv", d, 3 * d), w("bqkv", 3 * d), w("split", value=np.array([d, d, d], i64)),
        w("heads_shape", value=np.array([0, 0, heads, hd], i64)),
        w("model_shape", value=np.array([0, 0, -1], i64)),
        w("scale", value=np.array(math.sqrt(hd), np.float32)),
        w("wo", d, d), w("ln_s", d), w("ln_b", d), w("w1", d, 4 * d),
        w("half_sqrt", value=np.array(0.7071, np.float32)),
        w("one", value=np.array(1.0, np.float32)), w("w2", 4 * d, d),
    ]  # fmt: skip
    return model(nodes, inits, {"x": ["B", seq, d]}, {"y": ["B", seq, d]})


def test_transformer_layer() -> None:
    seq, d, heads = 16, 32, 2
    g = load_onnx(transformer_layer(seq, d, heads), batch=2)
    kinds = {op.name: op.kind for op in g}
    assert kinds["qkv"] == "linear" and not g["qkv"].attrs["bias"]
    assert kinds["qkv_bias"] == "eltwise" and g["qkv_bias"].attrs["const_shape"] == (3 * d,)
    assert [kinds[f"split.{i}"] for i in range(3)] == ["slice"] * 3
    assert g["split.1"].attrs == {"axis": 2, "begin": d, "end": 2 * d}
    assert kinds["q_heads"] == "reshape" and g["q_heads"].output_shape == (2, seq, heads, d // 2)
    assert g["k_t"].output_shape == (2, heads, d // 2, seq)
    assert kinds["scores"] == "matmul" and g["scores"].output_shape == (2, heads, seq, seq)
    assert kinds["scale"] == "eltwise" and g["scale"].attrs["fn"] == "div"
    assert kinds["residual"] == "add" and kinds["gelu_mul"] == "mul"
    assert kinds["ln"] == "layernorm" and kinds["gelu_erf"] == "eltwise"
    assert g["merge"].output_shape == (2, seq, d)
    tokens = 2 * seq
    proj = tokens * d * (3 * d + d + 4 * d + 4 * d)
    attn = 2 * heads * seq * seq * (d // heads) * 2
    assert g.macs == proj + attn
    weights = d * 3 * d + 3 * d + d * d + 2 * d + d * 4 * d + 4 * d * d
    assert g.params == weights + 3  # + the three scalar constants (scale, 1/sqrt2, 1)
    assert run_seq(g) > 0


# --- transposed convolutions -----------------------------------------------------------------


@pytest.mark.parametrize(
    "attrs",
    [
        {"strides": [2, 2]},
        {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]},
        {"strides": [2, 2], "pads": [0, 0, 1, 1]},  # asymmetric
        {"strides": [2, 2], "output_shape": [16, 16]},
        {"strides": [2, 2], "auto_pad": "SAME_UPPER"},
        {"strides": [3, 2], "dilations": [2, 1], "group": 2},
    ],
)
def test_conv_transpose(attrs: dict) -> None:
    group = attrs.get("group", 1)
    node = oh.make_node("ConvTranspose", ["x", "w", "b"], ["y"], name="up", **attrs)
    m = model([node], [w("w", 8, 6 // group, 3, 3), w("b", 6)], {"x": [1, 8, 8, 8]}, {})
    g = load_onnx(m)
    op = g["up"]
    assert op.kind == "conv_transpose"
    assert op.output_shape == onnx_shapes(m)["y"]
    assert g.macs == 8 * 8 * 8 * (6 // group) * 9  # each input pixel scatters a 3x3 patch
    assert g.params == 8 * (6 // group) * 9 + 6
    (k,) = lower_op(g, "up", V100)
    assert "deconv" in k.name and k.block_flops > 0
    assert run_seq(g) > 0


# --- every operator the importer maps, against ONNX's own shape inference ----------------------


def small_ops_model() -> Any:
    i64 = np.int64
    nodes = [
        oh.make_node(
            "Conv",
            ["x", "cw"],
            ["c"],
            name="conv_same",
            kernel_shape=[3, 3],
            strides=[2, 2],
            auto_pad="SAME_UPPER",
        ),
        oh.make_node("Clip", ["c", "lo", "hi"], ["c6"], name="relu6"),
        oh.make_node("Sigmoid", ["c6"], ["sg"], name="sig"),
        oh.make_node("Tanh", ["sg"], ["th"], name="tanh"),
        oh.make_node("LeakyRelu", ["th"], ["lr"], name="leaky", alpha=0.1),
        oh.make_node("PRelu", ["lr", "slope"], ["pr"], name="prelu"),
        oh.make_node("HardSwish", ["pr"], ["hs"], name="hswish"),
        oh.make_node("Sub", ["hs", "pr"], ["sub"], name="sub"),
        oh.make_node("Max", ["sub", "hs"], ["mx"], name="max"),
        oh.make_node("Sum", ["mx", "hs", "sub"], ["sm"], name="sum3"),
        oh.make_node("ReduceMean", ["sm"], ["rm"], name="mean", axes=[2, 3], keepdims=1),
        oh.make_node("GlobalMaxPool", ["sm"], ["gm"], name="gmax"),
        oh.make_node("Mul", ["rm", "gm"], ["se"], name="se"),
        oh.make_node("Mul", ["sm", "se"], ["scaled"], name="excite"),
        oh.make_node("Slice", ["scaled", "st", "en", "ax"], ["sl"], name="crop"),
        oh.make_node("Squeeze", ["rm", "sq_axes"], ["sq"], name="squeeze"),
        oh.make_node("Unsqueeze", ["sq", "sq_axes"], ["usq"], name="unsqueeze"),
        oh.make_node("Flatten", ["sl"], ["fl"], name="flat2", axis=2),
        oh.make_node("LogSoftmax", ["fl"], ["ls"], name="logsm", axis=1),
        oh.make_node("Identity", ["usq"], ["idn"], name="ident"),
    ]
    inits = [
        w("cw", 8, 4, 3, 3), w("lo", value=np.array(0.0, np.float32)),
        w("hi", value=np.array(6.0, np.float32)), w("slope", 8, 1, 1),
        w("st", value=np.array([1], i64)), w("en", value=np.array([3], i64)),
        w("ax", value=np.array([2], i64)), w("sq_axes", value=np.array([2, 3], i64)),
    ]  # fmt: skip
    return model(nodes, inits, {"x": [2, 4, 9, 9]}, {"ls": [16, 10], "idn": [2, 8, 1, 1]})


def test_many_operators_match_onnx_shape_inference() -> None:
    m = small_ops_model()
    g = load_onnx(m)
    ref = onnx_shapes(m)
    by_tensor = {n.output[0]: n.name for n in m.graph.node}
    for tensor, shape in ref.items():
        assert g[by_tensor[tensor]].output_shape == shape, tensor
    kinds = {op.name: op.kind for op in g}
    assert kinds["relu6"] == "clip" and g["relu6"].attrs == {"min": 0.0, "max": 6.0}
    assert (kinds["mean"], kinds["gmax"]) == ("global_pool", "global_pool")
    assert g["gmax"].attrs["pool_type"] == "max"
    assert (kinds["sub"], g["sub"].attrs["op"]) == ("add", "sub")
    assert (kinds["crop"], g["crop"].attrs["begin"], g["crop"].attrs["end"]) == ("slice", 1, 3)
    assert kinds["squeeze"] == kinds["unsqueeze"] == kinds["flat2"] == "reshape"
    assert g["logsm"].attrs == {"axis": -1, "log": True}
    assert g["conv_same"].output_shape == (2, 8, 5, 5)
    assert run_seq(g) > 0


# --- unmappable operators and bad files --------------------------------------------------------


def test_every_unmappable_operator_is_listed() -> None:
    nodes = [
        oh.make_node("Relu", ["x"], ["r"], name="ok"),
        oh.make_node("Resize", ["r", "", "scales"], ["up"], name="upsample"),
        oh.make_node("NonZero", ["r"], ["nz"], name="nonzero"),
        oh.make_node("Relu", ["wx"], ["wr"], name="wsrc"),
        oh.make_node("Conv", ["r", "wr"], ["c"], name="conv_dyn", kernel_shape=[1, 1]),
        oh.make_node(
            "Conv", ["r", "w3"], ["c2"], name="asym", kernel_shape=[3, 3], pads=[0, 0, 1, 1]
        ),
        oh.make_node("MyOp", ["r"], ["cu"], name="custom", domain="com.example"),
        oh.make_node("Gather", ["table", "ids"], ["emb"], name="embed", axis=0),
        oh.make_node("Relu", ["up"], ["after"], name="downstream"),  # after a failure
    ]
    inits = [
        w("scales", value=np.array([1, 1, 2, 2], np.float32)),
        w("w3", 4, 4, 3, 3),
        w("table", 10, 4),
    ]
    outs = {"after": 4, "c": 4, "c2": 4, "cu": 4, "emb": 3}
    g = oh.make_graph(
        nodes,
        "bad",
        [
            oh.make_tensor_value_info("x", TP.FLOAT, [1, 4, 8, 8]),
            oh.make_tensor_value_info("wx", TP.FLOAT, [4, 4, 1, 1]),
            oh.make_tensor_value_info("ids", TP.INT64, [1, 5]),
        ],
        [
            oh.make_tensor_value_info(o, TP.FLOAT, [f"{o}{i}" for i in range(r)])
            for o, r in outs.items()
        ]
        + [oh.make_tensor_value_info("nz", TP.INT64, ["a", "b"])],
        inits,
    )
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid("com.example", 1)])
    with pytest.raises(GraphError) as ei:
        load_onnx(m)
    msg = str(ei.value)
    assert "\n" not in msg
    for needle in (
        "Resize 'upsample'",
        "NonZero 'nonzero'",
        "Conv 'conv_dyn' (weight 'wr' is computed",
        "Conv 'asym' (asymmetric padding",
        "com.example.MyOp 'custom'",
        "Gather 'embed'",
        "graph input 'ids' (element type INT64",
    ):
        assert needle in msg, needle
    assert "'ok'" not in msg and "'downstream'" not in msg and "'wsrc'" not in msg
    assert "cannot map 7 ONNX operator(s)" in msg


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_corrupt_and_truncated_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = chain_model().SerializeToString()
    cases = {
        "garbage.onnx": b"\x00\xff\x13garbage\x9c" * 10,
        "truncated.onnx": good[: len(good) // 2],
        "empty.onnx": b"",
        "header_only.onnx": good[:2],  # ir_version and nothing else: parses, no graph
        "noext": good[: len(good) // 3],  # found by its 0x08 magic, then fails cleanly
    }
    for name, data in cases.items():
        p = _write(tmp_path, name, data)
        with pytest.raises(FormatError, match="not a valid ONNX model") as ei:
            load_onnx(p)
        assert str(p) in str(ei.value) and "\n" not in str(ei.value)
        rc = main(["simulate", str(p)])
        _, err = capsys.readouterr()
        assert rc == 2 and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1 and str(p) in err, err
    with pytest.raises(FormatError, match="no such file"):
        load_onnx(tmp_path / "missing.onnx")


# --- CLI ---------------------------------------------------------------------------------------


def test_cli_simulates_onnx_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "block.onnx"
    onnx.save(inception_block(), p)
    rc = main(["simulate", str(p), "--gpu", "v100", "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    res = json.loads(out)
    assert res["format"] == "onnx" and res["ops"] == 9 and res["kernels"] >= 8
    assert res["batch"] == 1 and res["schedule"] == "sequential"
    # no extension: told by content
    bare = tmp_path / "block_model"
    bare.write_bytes(p.read_bytes())
    rc = main(["simulate", str(bare), "--batch", "4", "--scheduler", "sequential-graph", "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    four = json.loads(out)
    assert four["format"] == "onnx" and four["batch"] == 4
    assert four["schedule"] == "sequential-graph"
    # a batch the model hard-codes in a Reshape cannot be changed silently
    nodes = [
        oh.make_node("Reshape", ["x", "shp"], ["y"], name="flat"),
    ]
    m = model(
        nodes, [w("shp", value=np.array([1, -1], np.int64))], {"x": [1, 4, 2, 2]}, {"y": [1, 16]}
    )
    q = tmp_path / "fixed.onnx"
    onnx.save(m, q)
    rc = main(["simulate", str(q), "--batch", "2"])
    _, err = capsys.readouterr()
    assert rc == 2 and "hard-codes the exported batch 1" in err and "'flat'" in err
    rc = main(["simulate", str(q), "--json"])
    out, err = capsys.readouterr()
    assert rc == 0 and json.loads(out)["ops"] == 2


def test_cli_lists_unmappable_operators(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nodes = [
        oh.make_node("Relu", ["x"], ["r"], name="ok"),
        oh.make_node("Resize", ["r", "", "scales"], ["y"], name="upsample"),
    ]
    m = model(
        nodes,
        [w("scales", value=np.array([1, 1, 2, 2], np.float32))],
        {"x": [1, 4, 8, 8]},
        {"y": [1, 4, 16, 16]},
    )
    p = tmp_path / "resize.onnx"
    onnx.save(m, p)
    rc = main(["simulate", str(p)])
    _, err = capsys.readouterr()
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "Resize 'upsample'" in err and "Traceback" not in err


# --- property: convolutions and pools agree with ONNX whenever they map ---------------------------


@settings(max_examples=80, deadline=None)
@given(
    hw=st.integers(5, 17),
    k=st.integers(1, 4),
    s=st.integers(1, 3),
    d=st.integers(1, 2),
    pads=st.lists(st.integers(0, 2), min_size=4, max_size=4),
    auto=st.sampled_from(["NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]),
    pool=st.sampled_from([None, "MaxPool", "AveragePool"]),
    ceil=st.booleans(),
)
def test_conv_and_pool_shapes_agree_with_onnx(
    hw: int, k: int, s: int, d: int, pads: list[int], auto: str, pool: str | None, ceil: bool
) -> None:
    attrs: dict[str, Any] = {"kernel_shape": [k, k], "strides": [s, s], "auto_pad": auto}
    if auto == "NOTSET":
        attrs["pads"] = pads
    if pool is None:
        attrs["dilations"] = [d, d]
        node = oh.make_node("Conv", ["x", "w"], ["y"], name="op", **attrs)
        inits = [w("w", 6, 4, k, k)]
    else:
        if ceil:
            attrs["ceil_mode"] = 1
        if max(pads) >= k and auto == "NOTSET":
            return  # ONNX itself rejects pads as large as the kernel for pooling
        node = oh.make_node(pool, ["x"], ["y"], name="op", **attrs)
        inits = []
    m = model([node], inits, {"x": [1, 4, hw, hw]}, {})
    try:
        want = onnx_shapes(m).get("y")
    except Exception:
        return  # ONNX itself rejects this configuration
    if want is None or min(want) <= 0:
        return
    try:
        g = load_onnx(m)
    except GraphError as e:
        # ONNX's shape inference truncates (in - window) / stride toward zero, so it
        # reports 1 for a dilated window larger than the padded input: refusing it is right
        reasons = ("asymmetric padding", "differs from ONNX", "larger than padded input")
        assert any(r in str(e) for r in reasons), str(e)
        return
    assert g["op"].output_shape == want
    if pool is None:
        assert g.macs == math.prod(want) * 4 * k * k


def test_conv_transpose_output_padding_must_be_below_stride() -> None:
    node = oh.make_node(
        "ConvTranspose", ["x", "w"], ["y"], name="up", strides=[2, 2], output_padding=[2, 2]
    )
    m = model([node], [w("w", 8, 6, 3, 3)], {"x": [1, 8, 8, 8]}, {})
    with pytest.raises(GraphError, match=r"ConvTranspose 'up' .*output_padding"):
        load_onnx(m)


# --- real networks: the ONNX package ships them (weights made by ConstantOfShape) ---------

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


@pytest.mark.skipif(not LIGHT.is_dir(), reason="this onnx build ships no backend test models")
def test_shipped_real_networks_import_with_published_figures() -> None:
    from simgpu.models import build_model

    got = {p.stem[len("light_") :]: load_onnx(p) for p in sorted(LIGHT.glob("light_*.onnx"))}
    assert len(got) == 9  # alexnet, densenet121, inception v1/v2, resnet50, shufflenet, ...
    # exact: the same networks as our built-in ResNet-50 (BN unfolded here: +C params per
    # BN) and SqueezeNet 1.1; VGG-19 and Caffe's AlexNet as torchvision / Caffe count them
    r50 = build_model("resnet50")
    assert got["resnet50"].macs == r50.macs
    assert got["resnet50"].params == 25_557_032  # torchvision's resnet50
    sq = build_model("squeezenet1_1")
    assert (got["squeezenet"].macs, got["squeezenet"].params) == (sq.macs, sq.params)
    assert got["vgg19"].params == 143_667_240
    assert got["vgg19"].macs == pytest.approx(19.6e9, rel=0.01)
    assert got["bvlc_alexnet"].params == 60_965_224
    assert got["densenet121"].macs == pytest.approx(2.87e9, rel=0.03)
    assert got["inception_v1"].params == pytest.approx(7.0e6, rel=0.03)
    # GoogLeNet's last pool is one window over its whole padded input: a global pool
    gl = got["inception_v1"]
    assert any(op.kind == "global_pool" and "onnx_window" in op.attrs for op in gl)
    assert {op.kind for op in got["bvlc_alexnet"]} >= {"conv", "eltwise", "pool", "linear"}
    for g in got.values():
        assert run_seq(g) > 0


@pytest.mark.parametrize("attr", [{"strides": [0, 1]}, {"dilations": [1, 0]}])
def test_a_zero_stride_or_dilation_is_a_clear_error(tmp_path: Path, capsys, attr) -> None:
    """ONNX stride 0 used to raise ZeroDivisionError (issue 20)."""
    from _cli import run_error

    node = oh.make_node("Conv", ["x", "w1"], ["y"], name="c0", kernel_shape=[3, 3], **attr)
    m = model([node], [w("w1", 4, 3, 3, 3)], {"x": [1, 3, 16, 16]}, {})
    p = tmp_path / "z.onnx"
    p.write_bytes(m.SerializeToString())
    line = run_error(capsys, "simulate", str(p))
    assert "c0" in line and "must be at least 1" in line


@pytest.mark.parametrize("axis", [10, 4, -5])
def test_an_axis_outside_the_rank_is_an_error_not_wrapped(tmp_path: Path, capsys, axis) -> None:
    """Concat axis 10 of rank-4 tensors used to wrap to axis 2 (issue 20): the model is
    invalid, and simulating another one silently is worse than saying so."""
    from _cli import run_error

    node = oh.make_node("Concat", ["x", "x"], ["y"], name="cat", axis=axis)
    m = model([node], [], {"x": [1, 3, 8, 8]}, {})
    p = tmp_path / "a.onnx"
    p.write_bytes(m.SerializeToString())
    line = run_error(capsys, "simulate", str(p))
    assert "cat" in line and f"axis {axis} is outside [-4, 4)" in line


def test_a_zero_batch_dimension_is_an_error_a_symbolic_one_is_one(tmp_path: Path, capsys) -> None:
    """A batch dimension of 0 used to become 1 (issue 20); a symbolic one still is 1."""
    from _cli import run_error, run_json

    node = oh.make_node("Relu", ["x"], ["y"], name="r")
    zero = model([node], [], {"x": [0, 3, 8, 8]}, {"y": [0, 3, 8, 8]})
    p = tmp_path / "z.onnx"
    p.write_bytes(zero.SerializeToString())
    line = run_error(capsys, "simulate", str(p))
    assert "graph input 'x' (dimension 0 is 0)" in line
    sym = model([node], [], {"x": ["N", 3, 8, 8]}, {"y": ["N", 3, 8, 8]})
    p.write_bytes(sym.SerializeToString())
    out = run_json(capsys, "simulate", str(p), "--json")
    assert out["latency_ms"] > 0
