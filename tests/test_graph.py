"""Op and OpGraph: construction checks, work counts, topological order and JSON.

An OpGraph is the contract every scheduler and the simulator rely on, so every way of
building a bad one must end in a GraphError (or FormatError for files) that names the
op at fault — never a KeyError or an IndexError escaping from deep inside.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest

from simgpu.errors import FormatError, GraphError, SimGPUError
from simgpu.graph import FORMAT, VERSION, Op, OpGraph, read_json
from simgpu.models import build_model
from simgpu.ops import DTYPE_BYTES, KINDS, numel


def inp(name: str = "x", shape: tuple[int, ...] = (1, 4, 8, 8), dtype: str = "fp32") -> Op:
    return Op(name, "input", (), shape, dtype)


def conv(
    name: str,
    src: str,
    shape: tuple[int, ...],
    dtype: str = "fp32",
    **attrs: object,
) -> Op:
    return Op(name, "conv", (src,), shape, dtype, attrs)


# --- Op construction ------------------------------------------------------------------


def test_op_normalises_fields() -> None:
    op = Op("c", "conv", ["x"], [1, 8, 8, 8], attrs={"kernel": [3, 3], "out_channels": 8})
    assert op.inputs == ("x",)
    assert op.output_shape == (1, 8, 8, 8)
    assert op.attrs["kernel"] == (3, 3)  # lists are frozen to tuples
    assert op.dtype == "fp32"
    assert op.dtype_bytes == 4


@pytest.mark.parametrize("shape", [(1, 0), (1, -3), (), (0,)])
def test_non_positive_shape_is_graph_error(shape: tuple[int, ...]) -> None:
    with pytest.raises(GraphError, match="'bad'"):
        Op("bad", "input", (), shape)


def test_unknown_dtype_is_graph_error() -> None:
    with pytest.raises(GraphError, match=r"op 'y'.*unknown dtype 'fp8'"):
        Op("y", "relu", ("x",), (1, 4), dtype="fp8")


@pytest.mark.parametrize("name", ["", None, 5])
def test_bad_op_name_is_graph_error(name: object) -> None:
    with pytest.raises(GraphError):
        Op(name, "input", (), (1,))  # type: ignore[arg-type]


# --- graph structure errors -----------------------------------------------------------


def test_cycle_message_lists_the_cycle_path() -> None:
    ops = [
        inp("x", (1, 4)),
        Op("a", "add", ("x", "c"), (1, 4)),
        Op("b", "relu", ("a",), (1, 4)),
        Op("c", "relu", ("b",), (1, 4)),
        Op("out", "relu", ("c",), (1, 4)),
    ]
    with pytest.raises(GraphError, match="cycle") as ei:
        OpGraph(ops, name="loop")
    msg = str(ei.value)
    path = msg.split("cycle:", 1)[1].strip().split(" -> ")
    assert path[0] == path[-1], msg
    assert set(path) == {"a", "b", "c"}, msg
    assert len(path) == 4, msg
    # consecutive names are real edges, in the direction data flows
    edges = {("a", "b"), ("b", "c"), ("c", "a")}
    assert all((u, v) in edges for u, v in itertools.pairwise(path)), msg


def test_self_loop_is_a_cycle() -> None:
    with pytest.raises(GraphError, match="cycle: a -> a"):
        OpGraph([inp("x", (1, 4)), Op("a", "add", ("x", "a"), (1, 4))])


def test_dangling_input_names_op_and_input() -> None:
    with pytest.raises(GraphError, match=r"op 'b'.*input 'nope'"):
        OpGraph([inp("x", (1, 4)), Op("b", "relu", ("nope",), (1, 4))])


def test_duplicate_name() -> None:
    with pytest.raises(GraphError, match=r"op 'x' is defined twice"):
        OpGraph([inp("x", (1, 4)), inp("x", (1, 4))])


def test_empty_graph() -> None:
    with pytest.raises(GraphError, match="no ops"):
        OpGraph([], name="empty")


@pytest.mark.parametrize(
    ("op", "want"),
    [
        (Op("r", "relu", ("x", "y"), (1, 4)), "takes 1 inputs, got 2"),
        (Op("r", "add", ("x",), (1, 4)), "takes 2..n inputs, got 1"),
        (Op("r", "matmul", ("x", "y", "x"), (1, 4)), "takes 2 inputs, got 3"),
        (Op("r", "input", ("x",), (1, 4)), "takes 0 inputs, got 1"),
    ],
)
def test_wrong_arity(op: Op, want: str) -> None:
    with pytest.raises(GraphError, match=rf"op 'r' \({op.kind}\).*{re.escape(want)}"):
        OpGraph([inp("x", (1, 4)), inp("y", (1, 4)), op])


def test_unknown_kind_names_the_op() -> None:
    with pytest.raises(GraphError, match=r"op 'f' \(frobnicate\): unknown op kind"):
        OpGraph([inp("x", (1, 4)), Op("f", "frobnicate", ("x",), (1, 4))])


@pytest.mark.parametrize(
    "ops",
    [
        # conv: 3x3, stride 1, no padding on 8x8 -> 6x6, not 8x8
        [inp("x"), conv("bad", "x", (1, 8, 8, 8), kernel=3, out_channels=8)],
        # conv: wrong output channel count
        [inp("x"), conv("bad", "x", (1, 16, 8, 8), kernel=3, padding=1, out_channels=8)],
        # concat along axis 1 with mismatched H
        [
            inp("x", (1, 4, 8, 8)),
            inp("y", (1, 4, 7, 8)),
            Op("bad", "concat", ("x", "y"), (1, 8, 8, 8), attrs={"axis": 1}),
        ],
        # concat: declared channels are not the sum
        [
            inp("x", (1, 4, 8, 8)),
            inp("y", (1, 3, 8, 8)),
            Op("bad", "concat", ("x", "y"), (1, 8, 8, 8)),
        ],
        # add: shapes do not broadcast
        [
            inp("x", (1, 4, 8, 8)),
            inp("y", (1, 3, 8, 8)),
            Op("bad", "add", ("x", "y"), (1, 4, 8, 8)),
        ],
        # matmul inner dimensions differ
        [inp("x", (2, 3)), inp("y", (4, 5)), Op("bad", "matmul", ("x", "y"), (2, 5))],
        # relu must keep its input shape
        [inp("x", (2, 3)), Op("bad", "relu", ("x",), (3, 2))],
        # reshape changing the element count
        [inp("x", (2, 3)), Op("bad", "reshape", ("x",), (7,))],
        # pool window larger than the input
        [inp("x", (1, 4, 2, 2)), Op("bad", "pool", ("x",), (1, 4, 1, 1), attrs={"kernel": 3})],
        # slice out of range
        [
            inp("x", (1, 4, 2, 2)),
            Op("bad", "slice", ("x",), (1, 4, 2, 2), attrs={"begin": 2, "end": 6}),
        ],
        # transpose with a non-permutation
        [inp("x", (2, 3)), Op("bad", "transpose", ("x",), (3, 2), attrs={"perm": [1, 1]})],
        # grouped conv whose channels do not divide
        [inp("x"), conv("bad", "x", (1, 6, 8, 8), kernel=1, out_channels=6, groups=3)],
    ],
    ids=[
        "conv-spatial",
        "conv-channels",
        "concat-H",
        "concat-sum",
        "add-broadcast",
        "matmul-inner",
        "relu",
        "reshape",
        "pool-window",
        "slice",
        "transpose",
        "conv-groups",
    ],
)
def test_inconsistent_shape_names_the_op(ops: list[Op]) -> None:
    with pytest.raises(GraphError, match=r"op 'bad'"):
        OpGraph(ops)


def test_shape_error_message_gives_both_shapes() -> None:
    with pytest.raises(GraphError, match=r"declared shape \[1, 8, 8, 8\].*imply \[1, 8, 6, 6\]"):
        OpGraph([inp("x"), conv("c", "x", (1, 8, 8, 8), kernel=3, out_channels=8)])


@pytest.mark.parametrize(
    ("op", "attr"),
    [
        (Op("bad", "conv", ("x",), (1, 8, 8, 8), attrs={"out_channels": 8}), "kernel"),
        (Op("bad", "conv", ("x",), (1, 8, 8, 8), attrs={"kernel": 1}), "out_channels"),
        (Op("bad", "pool", ("x",), (1, 4, 4, 4)), "kernel"),
        (Op("bad", "linear", ("x",), (1, 4, 8, 3)), "out_features"),
        (Op("bad", "slice", ("x",), (1, 2, 8, 8), attrs={"begin": 0}), "end"),
        (Op("bad", "transpose", ("x",), (1, 4, 8, 8)), "perm"),
    ],
)
def test_missing_attribute_is_graph_error_not_key_error(op: Op, attr: str) -> None:
    with pytest.raises(GraphError, match=rf"op 'bad' \({op.kind}\): missing attribute '{attr}'"):
        OpGraph([inp("x"), op])


@pytest.mark.parametrize(
    "attrs",
    [
        {"kernel": "three", "out_channels": 8},
        {"kernel": 3.5, "out_channels": 8},
        {"kernel": [1, 2, 3], "out_channels": 8},
        {"kernel": 1, "out_channels": "eight"},
        {"kernel": 0, "out_channels": 8},
        {"kernel": 1, "out_channels": 8, "stride": -1},
    ],
)
def test_bad_attribute_value_is_graph_error(attrs: dict) -> None:
    with pytest.raises(GraphError, match=r"op 'bad'"):
        OpGraph([inp("x"), Op("bad", "conv", ("x",), (1, 8, 8, 8), attrs=attrs)])


@pytest.mark.parametrize(
    ("kind", "axis"), [("layernorm", 5), ("batchnorm", "a")], ids=["range", "type"]
)
def test_norm_axis_is_checked(kind: str, axis: object) -> None:
    with pytest.raises(GraphError, match=r"op 'n'"):
        g = OpGraph([inp("x", (2, 8)), Op("n", kind, ("x",), (2, 8), attrs={"axis": axis})])
        g.stats("n")


def test_every_graph_error_is_a_simgpu_error() -> None:
    assert issubclass(GraphError, SimGPUError)
    assert issubclass(FormatError, SimGPUError)


# --- counts -----------------------------------------------------------------------------


def _conv_graph(bias: bool, activation: str | None, dtype: str = "fp32") -> OpGraph:
    attrs: dict = {"kernel": 3, "padding": 1, "out_channels": 16, "groups": 2, "bias": bias}
    if activation:
        attrs["activation"] = activation
    return OpGraph(
        [inp("x", (2, 8, 16, 16), dtype), conv("c", "x", (2, 16, 16, 16), dtype, **attrs)]
    )


@pytest.mark.parametrize(("bias", "act"), [(True, "relu"), (False, "relu"), (True, None)])
def test_conv_counts(bias: bool, act: str | None) -> None:
    g = _conv_graph(bias, act)
    st = g.stats("c")
    n, cout, ho, wo, cin, groups, kh, kw = 2, 16, 16, 16, 8, 2, 3, 3
    macs = n * cout * ho * wo * (cin // groups) * kh * kw
    assert st.macs == macs == 294_912
    epilogue = n * cout * ho * wo * (int(bias) + int(act is not None))
    assert st.flops == 2 * macs + epilogue
    assert st.params == cout * (cin // groups) * kh * kw + (cout if bias else 0)
    assert g.macs == macs and g.flops == st.flops and g.params == st.params


def test_conv_folded_bn_counts_a_bias() -> None:
    g = OpGraph(
        [
            inp("x", (1, 3, 8, 8)),
            conv("c", "x", (1, 4, 8, 8), kernel=1, out_channels=4, folded_bn=True),
        ]
    )
    assert g.stats("c").params == 4 * 3 + 4


def test_strided_dilated_conv_shape_and_macs() -> None:
    # 17x17, kernel 3, dilation 2 (span 5), stride 2, padding 2 -> (17 + 4 - 5) // 2 + 1 = 9
    g = OpGraph(
        [
            inp("x", (1, 4, 17, 17)),
            conv("c", "x", (1, 8, 9, 9), kernel=3, stride=2, padding=2, dilation=2, out_channels=8),
        ]
    )
    assert g.stats("c").macs == 1 * 8 * 9 * 9 * 4 * 3 * 3


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_conv_bytes(dtype: str) -> None:
    g = _conv_graph(True, "relu", dtype)
    st = g.stats("c")
    b = DTYPE_BYTES[dtype]
    assert st.bytes_read == (2 * 8 * 16 * 16 + st.params) * b
    assert st.bytes_written == 2 * 16 * 16 * 16 * b


@pytest.mark.parametrize("bias", [True, False])
def test_linear_counts(bias: bool) -> None:
    g = OpGraph(
        [
            inp("x", (4, 32)),
            Op("fc", "linear", ("x",), (4, 10), attrs={"out_features": 10, "bias": bias}),
        ]
    )
    st = g.stats("fc")
    assert st.macs == 4 * 32 * 10
    assert st.params == 32 * 10 + (10 if bias else 0)
    assert st.flops == 2 * st.macs + (4 * 10 if bias else 0)


def test_linear_bias_defaults_to_true() -> None:
    g = OpGraph([inp("x", (3, 5)), Op("fc", "linear", ("x",), (3, 2), attrs={"out_features": 2})])
    assert g.stats("fc").params == 5 * 2 + 2


def test_matmul_counts_with_broadcast_batch() -> None:
    g = OpGraph([inp("a", (3, 4, 5)), inp("b", (5, 6)), Op("mm", "matmul", ("a", "b"), (3, 4, 6))])
    st = g.stats("mm")
    assert st.macs == 3 * 4 * 6 * 5
    assert st.flops == 2 * st.macs
    assert st.params == 0
    assert st.bytes_read == (3 * 4 * 5 + 5 * 6) * 4
    assert st.bytes_written == 3 * 4 * 6 * 4


def test_views_move_no_bytes() -> None:
    g = OpGraph(
        [
            inp("x", (2, 4, 3, 3)),
            Op("r", "reshape", ("x",), (2, 36)),
            Op("f", "flatten", ("x",), (2, 36)),
            Op("i", "identity", ("r",), (2, 36)),
        ]
    )
    for name in ("x", "r", "f", "i"):
        st = g.stats(name)
        assert (st.bytes_read, st.bytes_written, st.flops, st.macs) == (0, 0, 0, 0), name


def test_elementwise_add_counts_and_bytes() -> None:
    g = OpGraph(
        [
            inp("x", (2, 3, 4)),
            inp("y", (1, 3, 1)),
            inp("z", (2, 3, 4)),
            Op("s", "add", ("x", "y", "z"), (2, 3, 4)),
        ]
    )
    st = g.stats("s")
    assert st.flops == 2 * 24  # n-1 additions per element
    assert st.bytes_read == (24 + 3 + 24) * 4
    assert st.bytes_written == 24 * 4


# --- order and structure ----------------------------------------------------------------


def _diamond(order: list[str]) -> OpGraph:
    defs = {
        "x": inp("x", (1, 4)),
        "p": Op("p", "relu", ("x",), (1, 4)),
        "q": Op("q", "sigmoid", ("x",), (1, 4)),
        "s": Op("s", "add", ("p", "q"), (1, 4)),
    }
    return OpGraph([defs[n] for n in order])


def test_topo_order_valid_and_deterministic() -> None:
    g = build_model("inception_v3")
    order = g.topo_order
    assert sorted(order) == sorted(g.ops)
    pos = {n: i for i, n in enumerate(order)}
    assert all(pos[u] < pos[v] for u, v in g.edges())
    again = build_model("inception_v3").topo_order
    assert order == again


def test_topo_order_breaks_ties_by_definition_order() -> None:
    assert _diamond(["x", "p", "q", "s"]).topo_order == ["x", "p", "q", "s"]
    assert _diamond(["x", "q", "p", "s"]).topo_order == ["x", "q", "p", "s"]
    # defined consumer-first: the order still respects the dependencies
    assert _diamond(["s", "q", "p", "x"]).topo_order == ["x", "q", "p", "s"]


def test_structure_queries() -> None:
    g = _diamond(["x", "p", "q", "s"])
    assert len(g) == 4
    assert "p" in g and "nope" not in g
    assert [op.name for op in g] == ["x", "p", "q", "s"]
    assert g.predecessors("s") == ["p", "q"]
    assert sorted(g.successors("x")) == ["p", "q"]
    assert sorted(g.edges()) == [("p", "s"), ("q", "s"), ("x", "p"), ("x", "q")]
    assert [op.name for op in g.inputs] == ["x"]
    assert g.input_shapes("s") == [(1, 4), (1, 4)]


# --- JSON -------------------------------------------------------------------------------


def test_json_round_trip_is_lossless_with_tuple_attrs(tmp_path: Path) -> None:
    g = OpGraph(
        [
            inp("x", (1, 4, 9, 9), "fp16"),
            conv(
                "c",
                "x",
                (1, 6, 9, 9),
                "fp16",
                kernel=(3, 1),
                padding=(1, 0),
                out_channels=6,
                activation="relu",
                x_extra={"nested": [1, [2, 3]]},  # a note (x_): kept, never read
            ),
            Op("t", "transpose", ("c",), (1, 9, 9, 6), "fp16", {"perm": (0, 2, 3, 1)}),
        ],
        name="small",
    )
    data = json.loads(json.dumps(g.to_json()))
    assert data["format"] == FORMAT and data["version"] == VERSION
    back = OpGraph.from_json(data)
    assert back == g
    assert back["c"].attrs["kernel"] == (3, 1)
    assert back["c"].attrs["x_extra"] == {"nested": (1, (2, 3))}
    assert back.name == "small"
    path = tmp_path / "g.json"
    g.save(path)
    assert OpGraph.load(path) == g


def test_json_round_trip_of_a_model() -> None:
    g = build_model("inception_v3")
    back = OpGraph.from_json(json.loads(json.dumps(g.to_json())))
    assert back == g
    assert back.macs == g.macs and back.params == g.params
    assert back.topo_order == g.topo_order


def test_graphs_with_different_names_or_ops_differ() -> None:
    a = _diamond(["x", "p", "q", "s"])
    assert a != OpGraph(list(a), name="other")
    assert a != _diamond(["x", "q", "p", "s"])
    assert a != "graph"


@pytest.mark.parametrize(
    "data",
    [
        [],
        "graph",
        {"version": VERSION, "ops": []},
        {"format": "something.else", "version": VERSION, "ops": []},
        {"format": FORMAT, "version": 99, "ops": []},
        {"format": FORMAT, "ops": []},
        {"format": FORMAT, "version": VERSION, "ops": {"x": {}}},
        {"format": FORMAT, "version": VERSION},
        {"format": FORMAT, "version": VERSION, "ops": [{"name": "x", "kind": "input"}]},
        {"format": FORMAT, "version": VERSION, "ops": ["x"]},
        {"format": FORMAT, "version": VERSION, "ops": [{"name": "x", "kind": "input", "shape": 3}]},
    ],
    ids=[
        "list",
        "string",
        "no-format",
        "wrong-format",
        "wrong-version",
        "no-version",
        "ops-dict",
        "no-ops",
        "op-without-shape",
        "op-not-object",
        "shape-not-list",
    ],
)
def test_from_json_rejects_wrong_format(data: object) -> None:
    with pytest.raises(FormatError, match=r"<json>|op 'x'|op '\?'"):
        OpGraph.from_json(data)


def test_from_json_version_message_names_source() -> None:
    with pytest.raises(FormatError, match=r"g\.json: op graph version 2 not supported"):
        OpGraph.from_json({"format": FORMAT, "version": 2, "ops": []}, source="g.json")


def test_from_json_graph_errors_stay_graph_errors() -> None:
    data = {
        "format": FORMAT,
        "version": VERSION,
        "ops": [
            {"name": "x", "kind": "input", "shape": [1, 4]},
            {"name": "y", "kind": "relu", "inputs": ["missing"], "shape": [1, 4]},
        ],
    }
    with pytest.raises(GraphError, match="op 'y'"):
        OpGraph.from_json(data)


def test_read_json_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.json"
    with pytest.raises(FormatError, match=r"nope\.json: no such file"):
        read_json(path)
    with pytest.raises(FormatError):
        OpGraph.load(path)


def test_read_json_invalid_json_reports_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{\n  "a": 1,\n  "b": ,\n}\n')
    with pytest.raises(FormatError, match=r"bad\.json: invalid JSON at line 3 column 8") as ei:
        read_json(path)
    assert "\n" not in str(ei.value)


def test_read_json_directory_is_format_error(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="is a directory, not a file"):
        read_json(tmp_path)


def test_read_json_binary_garbage(tmp_path: Path) -> None:
    path = tmp_path / "bin.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(FormatError):
        read_json(path)


def test_all_kinds_have_a_positive_arity_spec() -> None:
    for name, k in KINDS.items():
        lo, hi = k.arity
        assert lo >= 0 and (hi is None or hi >= lo), name
    assert numel((2, 3, 4)) == 24
