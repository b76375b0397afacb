"""Model zoo part B: NASNet-A and RandWire-WS must match their papers' published figures
and carry the inter-operator parallelism that makes them worth scheduling."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import networkx as nx
import pytest
from hypothesis import given, settings
from strategies import dags

from simgpu.cli import main
from simgpu.errors import FormatError, GraphError, SimGPUError
from simgpu.graph import OpGraph
from simgpu.models import MODELS, GraphBuilder, build_model
from simgpu.models.nasnet import nasnet_a_large, nasnet_a_mobile
from simgpu.models.randwire import (
    WiredGraph,
    randwire_large,
    randwire_small,
    read_ios_graph,
    ws_graph,
)

IOS_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ios"
IOS_FILES = [
    IOS_DATA / "randwire_ws-16-4-0.75-2.txt",
    *(IOS_DATA / f"randwire_ws-32-4-0.75-{i}.txt" for i in (3, 4, 5)),
]
needs_ios = pytest.mark.skipif(not IOS_DATA.is_dir(), reason="../shared/data absent")

ZOO_B = ("nasnet_a_large", "nasnet_a_mobile", "randwire_small", "randwire_large")


@pytest.fixture(scope="module")
def graphs() -> dict[str, OpGraph]:
    return {name: build_model(name) for name in ZOO_B}


# -- published figures --------------------------------------------------------------------

# (builder, kwargs, MACs, params): the papers' figures at batch 1, default resolution.
# NASNet-A: Zoph et al. 2018, Table 2 (Mobile 4@1056: 564 M mult-adds, 5.3 M; Large
# 6@4032: 23.8 B, 88.9 M). RandWire-WS: Xie et al. 2019, Table 3 (small, C=78: 583 M
# FLOPs counted as mult-adds, 5.6 M) and Table 4 (regular, C=109: 4.0 B, 31.9 M;
# C=154: 7.9 B, 61.5 M); the paper's figures are means over random graphs.
PUBLISHED: list[tuple[str, Callable[..., OpGraph], dict, float, float]] = [
    ("nasnet_a_large", nasnet_a_large, {}, 23.8e9, 88.9e6),
    ("nasnet_a_mobile", nasnet_a_mobile, {}, 0.564e9, 5.3e6),
    ("randwire_small_c78", randwire_small, {}, 583e6, 5.6e6),
    ("randwire_regular_c109", randwire_large, {"channels": 109}, 4.0e9, 31.9e6),
    ("randwire_regular_c154", randwire_large, {}, 7.9e9, 61.5e6),
]


@pytest.mark.parametrize(
    ("builder", "kwargs", "macs", "params"),
    [p[1:] for p in PUBLISHED],
    ids=[p[0] for p in PUBLISHED],
)
def test_macs_and_params_match_published(
    builder: Callable[..., OpGraph], kwargs: dict, macs: float, params: float
) -> None:
    g = builder(**kwargs)
    assert g.macs == pytest.approx(macs, rel=0.05)
    assert g.params == pytest.approx(params, rel=0.03)


@needs_ios
@pytest.mark.parametrize(
    ("channels", "macs", "params"), [(109, 4.0e9, 31.9e6), (154, 7.9e9, 61.5e6)]
)
def test_ios_graphs_match_published(channels: int, macs: float, params: float) -> None:
    g = randwire_large(channels=channels, graph_files=IOS_FILES)
    assert g.macs == pytest.approx(macs, rel=0.05)
    assert g.params == pytest.approx(params, rel=0.03)


# -- NASNet structure ---------------------------------------------------------------------


def _cells(g: OpGraph) -> list[str]:
    return sorted({n.split(".")[0] for n in g.ops if n.endswith(".concat") and n.count(".") == 1})


@pytest.mark.parametrize(
    ("name", "n", "penultimate", "final_px", "convs"),
    # convs: conv0 1; stem 0: 1x1 + 5 separable branches x 4 = 21; stem 1: 2 factorized
    # path convs + 21 = 23; 3 first cells 23; other normal cells and reductions 22.
    [
        ("nasnet_a_large", 6, 4032, 11, 1 + 21 + 23 + 3 * 23 + 15 * 22 + 2 * 22),
        ("nasnet_a_mobile", 4, 1056, 7, 1 + 21 + 23 + 3 * 23 + 9 * 22 + 2 * 22),
    ],
)
def test_nasnet_layout(
    graphs: dict[str, OpGraph], name: str, n: int, penultimate: int, final_px: int, convs: int
) -> None:
    g = graphs[name]
    cells = _cells(g)
    normal = [c for c in cells if c.startswith("cell_") and not c.startswith("cell_stem")]
    assert len(normal) == 3 * n
    assert sorted(c for c in cells if c not in normal) == [
        "cell_stem_0",
        "cell_stem_1",
        "reduction_cell_0",
        "reduction_cell_1",
    ]
    assert g[f"cell_{3 * n - 1}.concat"].output_shape == (1, penultimate, final_px, final_px)
    assert g["last_linear"].output_shape == (1, 1000)
    assert sum(op.kind == "conv" for op in g) == convs
    # BN folded into every pointwise/1x1 conv and said so; depthwise convs carry none
    for op in g:
        if op.kind == "conv" and op.name.endswith("depthwise"):
            assert op.attrs["groups"] == g.input_shapes(op.name)[0][1] == op.output_shape[1]
            assert op.attrs["folded_bn"] is False
        elif op.kind == "conv" and op.name != "conv0":
            assert op.attrs["folded_bn"] is True and op.attrs["kernel"] == (1, 1)


def test_nasnet_cell_inputs(graphs: dict[str, OpGraph]) -> None:
    large, mobile = graphs["nasnet_a_large"], graphs["nasnet_a_mobile"]
    # first cell of a stack: factorized reduction of the previous input, second path shifted
    assert large["cell_0.relu_prev"].inputs == ("cell_stem_0.concat",)
    assert large["cell_0.path_2.avgpool"].attrs["offset"] == (1, 1)
    assert large["cell_0.path_concat"].output_shape == (1, 168, 42, 42)
    # other cells adjust the previous input with ReLU + 1x1 conv
    assert large["cell_1.relu_prev"].inputs == ("cell_stem_1.concat",)
    assert large["cell_1.conv_prev_1x1"].output_shape == (1, 168, 42, 42)
    # TF-slim skip_reduction_layer_input: on for Large, off for Mobile
    assert large["reduction_cell_0.relu_prev"].inputs == ("cell_4.concat",)
    assert large["cell_6.relu_prev"].inputs == ("cell_4.concat",)
    assert mobile["reduction_cell_0.relu_prev"].inputs == ("cell_2.concat",)
    assert mobile["cell_4.relu_prev"].inputs == ("cell_3.concat",)
    # reduction cell: branches on cell inputs stride 2, branches on block outputs stride 1
    sep = large["reduction_cell_0.comb_iter_0_right.separable_1.depthwise"].attrs
    assert (sep["kernel"], sep["stride"]) == ((7, 7), (2, 2))
    assert large["reduction_cell_0.comb_iter_4_left.separable_1.depthwise"].attrs["stride"] == (
        1,
        1,
    )
    assert large["reduction_cell_0.concat"].output_shape == (1, 1344, 21, 21)


@pytest.mark.parametrize("name", ["nasnet_a_large", "nasnet_a_mobile"])
def test_nasnet_branches_are_separate_ops(graphs: dict[str, OpGraph], name: str) -> None:
    g = graphs[name]
    pairs = 0
    for cell in _cells(g):
        for i in range(5):
            block = f"{cell}.comb_iter_{i}"
            left, right = g[block].inputs
            # a real branch is a pool or a separable chain of this block; the rest are
            # identities (a hidden state added as it is)
            if left.startswith(f"{block}_") and right.startswith(f"{block}_"):
                pairs += 1
                assert not nx.has_path(g.nx, left, right), block
                assert not nx.has_path(g.nx, right, left), block
        # each separable branch has its own ReLU, feeding only that branch
        for op in g:
            if op.kind == "relu" and op.name.startswith(f"{cell}.comb_iter"):
                assert g.successors(op.name) == [op.name.replace("relu", "separable_1.depthwise")]
    # normal cells: blocks 0, 1, 3 pair two branches; reduction and stem cells: 0, 1, 2, 4
    cells = _cells(g)
    reductions = sum(c.startswith(("cell_stem", "reduction")) for c in cells)
    assert pairs == 3 * (len(cells) - reductions) + 4 * reductions


# -- RandWire structure ---------------------------------------------------------------------


def _stage_wiring(g: OpGraph, stage: str) -> tuple[int, set[tuple[int, int]], list[int]]:
    """Node count, node-level edges and input nodes of a random stage, read off the ops."""
    prefix = f"{stage}.node"
    node_of = {n: int(n[len(prefix) : len(prefix) + 2]) for n in g.ops if n.startswith(prefix)}
    edges, inputs = set(), []
    for name, v in node_of.items():
        for src in g[name].inputs:
            u = node_of.get(src)
            if u is None:
                if not src.startswith(prefix):  # reads the stage input
                    inputs.append(v)
            elif u != v:
                edges.add((u, v))
    return len(set(node_of.values())), edges, sorted(set(inputs))


@pytest.mark.parametrize(
    ("name", "stages"),
    [
        ("randwire_small", {"conv3": 32, "conv4": 32, "conv5": 32}),
        ("randwire_large", {"conv2": 16, "conv3": 32, "conv4": 32, "conv5": 32}),
    ],
)
def test_randwire_structure(graphs: dict[str, OpGraph], name: str, stages: dict) -> None:
    g = graphs[name]
    assert nx.is_directed_acyclic_graph(g.nx)
    for stage, n in stages.items():
        count, edges, inputs = _stage_wiring(g, stage)
        assert count == n
        # the wiring is the seeded WS graph, each edge from lower to higher index
        ws = ws_graph(n, 4, 0.75, seed=int(stage[-1]))
        assert edges == set(ws.edges)
        assert len(ws.edges) == n * 4 // 2
        assert all(u < v for u, v in edges)
        # every node has an input: a predecessor, or the stage input for the sources
        has_pred = {v for _, v in edges}
        assert inputs == [v for v in range(n) if v not in has_pred]
        for v in range(n):
            first = f"{stage}.node{v:02d}.aggregate"
            first = first if first in g else f"{stage}.node{v:02d}.relu"
            assert len(g[first].inputs) >= 1
            stride = g[f"{stage}.node{v:02d}.depthwise"].attrs["stride"]
            assert stride == ((2, 2) if v in inputs else (1, 1))
        sinks = [f"{stage}.node{v:02d}.pointwise" for v in ws.sinks()]
        if len(sinks) == 1:
            assert f"{stage}.output" not in g
        else:
            assert list(g[f"{stage}.output"].inputs) == sinks
    assert g["classifier.fc"].output_shape == (1, 1000)


def test_randwire_node_op(graphs: dict[str, OpGraph]) -> None:
    g = graphs["randwire_small"]
    ws = ws_graph(32, seed=4)
    v = next(i for i, p in enumerate(ws.predecessors()) if len(p) >= 2)
    node = f"conv4.node{v:02d}"
    assert g[f"{node}.aggregate"].attrs["weighted"] is True
    assert len(g[f"{node}.aggregate"].inputs) == len(ws.predecessors()[v])
    assert g[f"{node}.relu"].inputs == (f"{node}.aggregate",)
    dw, pw = g[f"{node}.depthwise"], g[f"{node}.pointwise"]
    assert dw.attrs["groups"] == 156 and dw.attrs["kernel"] == (3, 3)
    assert pw.attrs["folded_bn"] is True and pw.output_shape == (1, 156, 14, 14)
    assert g["conv2.conv"].output_shape == (1, 78, 56, 56)
    assert g["conv1"].output_shape == (1, 39, 112, 112)


def test_ws_graph_seeded() -> None:
    a, b = ws_graph(32, seed=7), ws_graph(32, seed=7)
    assert a == b
    assert ws_graph(32, seed=8) != a
    assert randwire_small(seed=1).to_json() != randwire_small().to_json()
    with pytest.raises(GraphError, match="n > k"):
        ws_graph(4, 4)


# -- all four ---------------------------------------------------------------------------------


def _width(g: OpGraph) -> int:
    """Maximum antichain, the most ops that can run at once: by Dilworth, ops minus a
    maximum matching of the reachability relation (bitsets and BFS augmenting paths,
    fast enough for NASNet-A Large's 860 ops)."""
    order = g.topo_order
    idx = {n: i for i, n in enumerate(order)}
    reach = [0] * len(order)
    for n in reversed(order):
        for s in g.successors(n):
            reach[idx[n]] |= reach[idx[s]] | (1 << idx[s])
    right_of: dict[int, int] = {}  # matched pairs u -> v: u reaches v
    left_of: dict[int, int] = {}

    def augment(root: int) -> bool:
        via: dict[int, int] = {}
        seen, queue = 0, [root]
        for x in queue:
            free = reach[x] & ~seen
            seen |= free
            while free:
                low = free & -free
                free ^= low
                v = low.bit_length() - 1
                via[v] = x
                if v not in left_of:  # flip the path back to the root
                    w: int | None = v
                    while w is not None:
                        x = via[w]
                        prev = right_of.get(x)
                        right_of[x], left_of[w] = w, x
                        w = prev
                    return True
                queue.append(left_of[v])
        return False

    return len(order) - sum(augment(u) for u in range(len(order)))


def _width_nx(g: OpGraph) -> int:
    """The same by networkx (transitive closure + Hopcroft-Karp): the slow reference."""
    tc = nx.transitive_closure_dag(g.nx)
    left = [("o", n) for n in tc]
    bip = nx.Graph()
    bip.add_nodes_from(left)
    bip.add_nodes_from(("i", n) for n in tc)
    bip.add_edges_from((("o", u), ("i", v)) for u, v in tc.edges())
    matching = nx.bipartite.hopcroft_karp_matching(bip, top_nodes=left)
    return len(tc) - len(matching) // 2


@settings(max_examples=60, deadline=None)
@given(dags(max_ops=25))
def test_width_matches_networkx(g: OpGraph) -> None:
    w = _width(g)
    assert w == _width_nx(g)
    # the ops with no predecessor (inputs) are an antichain: the width is at least theirs
    assert len(g.inputs) <= w <= len(g)


def test_width_of_zoo_b_matches_networkx() -> None:
    g = build_model("randwire_small")
    assert _width(g) == _width_nx(g) == 10


def test_width_of_a_chain_and_a_fork() -> None:
    g = build_model("randwire_small")
    chain = OpGraph([g[n] for n in ("input", "conv1", "conv2.relu", "conv2.conv")])
    assert _width(chain) == 1
    b = GraphBuilder("fork")
    x = b.input((1, 4, 8, 8))
    b.concat([b.relu(x) for _ in range(3)])
    assert _width(b.build()) == 3


@pytest.mark.parametrize("name", ZOO_B)
def test_wide_graphs(graphs: dict[str, OpGraph], name: str) -> None:
    w = _width(graphs[name])
    assert w >= 8
    # NASNet's width is fixed by its cells (RandWire's by the random graphs): 16 and 13
    assert w == {"nasnet_a_large": 16, "nasnet_a_mobile": 13}.get(name, w)


@pytest.mark.parametrize("name", ZOO_B)
def test_deterministic(graphs: dict[str, OpGraph], name: str) -> None:
    again = build_model(name)
    assert json.dumps(again.to_json()) == json.dumps(graphs[name].to_json())
    assert OpGraph.from_json(json.loads(json.dumps(again.to_json()))) == graphs[name]


@pytest.mark.parametrize("name", ZOO_B)
def test_batch_and_image_scaling(graphs: dict[str, OpGraph], name: str) -> None:
    g = graphs[name]
    g2 = build_model(name, batch=2)
    assert g2.macs == 2 * g.macs and g2.params == g.params
    assert len(g2) == len(g)
    size = MODELS[name].default_image_size
    assert size is not None
    big = build_model(name, image_size=size + 96)
    assert big.macs > 1.3 * g.macs
    assert big.params == g.params
    logits = [op for op in big if op.kind == "linear"]
    assert [op.output_shape for op in logits] == [(1, 1000)]


@pytest.mark.parametrize("name", ZOO_B)
def test_fp16(graphs: dict[str, OpGraph], name: str) -> None:
    g = build_model(name, dtype="fp16")
    assert all(op.dtype == "fp16" for op in g)
    assert g.macs == graphs[name].macs and g.params == graphs[name].params
    assert g.stats("input").bytes_written == 0  # inputs are views; real ops halve bytes
    conv = next(op.name for op in g if op.kind == "conv")
    assert 2 * g.stats(conv).bytes_written == graphs[name].stats(conv).bytes_written


@pytest.mark.parametrize(
    ("name", "size", "op"),
    [
        ("nasnet_a_large", 2, "conv0"),  # unpadded 3x3 stem conv
        ("nasnet_a_mobile", 2, "conv0"),
    ],
)
def test_bad_image_size_names_the_op(name: str, size: int, op: str) -> None:
    with pytest.raises(GraphError, match=f"op '{op}'") as e:
        build_model(name, image_size=size)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", ZOO_B)
def test_a_non_positive_image_size_is_refused_before_building(name: str) -> None:
    with pytest.raises(GraphError, match=f"{name}: image size must be a positive integer, got 0"):
        build_model(name, image_size=0)


@pytest.mark.parametrize("name", ["randwire_small", "randwire_large"])
def test_randwire_tiny_image(name: str) -> None:
    # every RandWire conv is padded: even a 1-pixel image is a valid (if silly) input
    assert build_model(name, image_size=1)["classifier.fc"].output_shape == (1, 1000)


@pytest.mark.parametrize("name", ZOO_B)
def test_bad_batch_and_dtype(name: str) -> None:
    for kwargs in ({"batch": 0}, {"dtype": "fp7"}):
        with pytest.raises(SimGPUError):
            build_model(name, **kwargs)


def test_cli_export_and_models(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rw.json"
    assert (
        main(["export", "randwire_small", "--batch", "2", "--image-size", "256", "-o", str(out)])
        == 0
    )
    g = OpGraph.load(out)
    assert g == randwire_small(batch=2, image_size=256)
    capsys.readouterr()
    assert main(["run", "nasnet_a_mobile", "--scheduler", "sequential", "--json"]) == 0
    assert "Traceback" not in capsys.readouterr().err


# -- IOS randwire files ---------------------------------------------------------------------


@needs_ios
def test_read_ios_files() -> None:
    for path, n in zip(IOS_FILES, (16, 32, 32, 32), strict=True):
        wg = read_ios_graph(path)
        lines = path.read_text().split()
        assert wg.n == n == int(lines[0])
        assert len(wg.edges) == int(lines[1]) == 2 * n
        listed = {
            tuple(sorted(map(int, lines[2 + 2 * i : 4 + 2 * i]))) for i in range(len(wg.edges))
        }
        assert set(wg.edges) == listed


@needs_ios
def test_randwire_from_ios_files() -> None:
    g = randwire_large(graph_files=[str(p) for p in IOS_FILES])
    for stage, path in zip(("conv2", "conv3", "conv4", "conv5"), IOS_FILES, strict=True):
        wg = read_ios_graph(path)
        n, edges, _ = _stage_wiring(g, stage)
        assert (n, edges) == (wg.n, set(wg.edges))
    assert g != randwire_large()
    assert randwire_large(graph_files=IOS_FILES).to_json() == g.to_json()


def test_ios_reader_on_a_written_file(tmp_path: Path) -> None:
    p = tmp_path / "g.txt"
    p.write_text("4\n4\n0 1\n2 1\n1 3\n0 3\n")
    wg = read_ios_graph(p)
    assert wg == WiredGraph(4, ((0, 1), (0, 3), (1, 2), (1, 3)))
    assert wg.predecessors() == [[], [0], [1], [0, 1]]
    assert wg.sinks() == [2, 3]
    files = [p] * 3
    g = randwire_small(graph_files=files)
    n, edges, inputs = _stage_wiring(g, "conv3")
    assert (n, edges, inputs) == (4, {(0, 1), (0, 3), (1, 2), (1, 3)}, [0])
    assert g["conv3.output"].inputs == ("conv3.node02.pointwise", "conv3.node03.pointwise")
    assert g["conv3.output"].attrs["average"] is True
    with pytest.raises(GraphError, match="3 random stages, got 1 graph files"):
        randwire_small(graph_files=[p])


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "expected node count and edge count"),
        ("4\n", "expected node count and edge count"),
        ("four\n1\n0 1\n", r":1: expected the node count"),
        ("4\n2\n0 1\n", "header says 2 edges, file has 1"),
        ("4\n1\n0 x\n", r":3: expected an edge"),
        ("4\n1\n0 1 2\n", r":3: expected an edge"),
        ("4\n1\n0 -1\n", r":3: expected an edge"),
        ("4\n1\n0 4\n", r":3: edge 0 4 is not between two of the 4 nodes"),
        ("4\n1\n2 2\n", "edge 2 2 is not between"),
        ("4\n2\n0 1\n1 0\n", r":4: edge 1 0 appears twice"),
        ("0\n0\n", "node count must be positive"),
    ],
)
def test_malformed_ios_file(tmp_path: Path, text: str, match: str) -> None:
    p = tmp_path / "bad.txt"
    p.write_text(text)
    with pytest.raises(FormatError, match=match) as e:
        read_ios_graph(p)
    msg = str(e.value)
    assert "\n" not in msg and str(p) in msg


def test_missing_ios_file(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="no such file"):
        randwire_large(graph_files=[tmp_path / "nope.txt"] * 4)
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(FormatError, match="not UTF-8 text"):
        read_ios_graph(tmp_path / "bin.txt")
