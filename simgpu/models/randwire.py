"""RandWire-WS (Xie et al. 2019, "Exploring Randomly Wired Neural Networks for Image
Recognition"): stages whose wiring is a random Watts-Strogatz graph.

Random wiring is the zoo's most irregular parallelism: 32 nodes per stage joined by a
random DAG, so the width and the critical path differ from stage to stage and seed to
seed. It is one of the four networks the IOS paper schedules.

Construction, as in the paper (Sec. 3):

- Each random stage is ``networkx.connected_watts_strogatz_graph(N, K=4, P=0.75,
  seed=...)`` (or a graph read from an IOS ``randwire_ws-*.txt`` file), made a DAG by
  pointing every edge from the lower to the higher node index.
- A node aggregates its inputs by a weighted sum (learned positive weights; the scalar
  weights are negligible and not counted as parameters), then ReLU -> 3x3 separable
  conv -> BN. The separable conv is a depthwise ``conv`` (groups = channels) and a
  pointwise 1x1 ``conv`` with BN folded in (``folded_bn``). A node with one input has
  no aggregation op.
- Nodes without a predecessor read the stage input (the paper's extra input node) and
  convolve with stride 2; the stage output (the extra output node) is the unweighted
  average of the nodes without a successor (an ``add`` with ``average``).

Regimes (the paper's Table 2, 224 px input):

==========  =======  ===========================  ===============================
stage       output   small (C=78)                 regular (C=109 or 154)
==========  =======  ===========================  ===============================
conv1       112²     3x3 conv, C/2                3x3 conv, C/2
conv2       56²      3x3 conv, C                  random wiring, N/2 nodes, C
conv3       28²      random wiring, N, C          random wiring, N, 2C
conv4       14²      random wiring, N, 2C         random wiring, N, 4C
conv5       7²       random wiring, N, 4C         random wiring, N, 8C
classifier  1²       1x1 conv 1280, global average pool, fully connected 1000
==========  =======  ===========================  ===============================

with N=32. Each convolution is ReLU-conv-BN; conv1 is conv-BN. Stage ``convK`` uses
seed ``1000 * seed + K`` (``seed`` defaults to 0: seeds 2..5). The IOS repository's
graphs (``randwire_ws-16-4-0.75-2.txt`` for conv2, ``randwire_ws-32-4-0.75-{3,4,5}.txt``
for conv3..5) are those of the regular regime; pass them as ``graph_files``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import networkx as nx

from simgpu.errors import FormatError, GraphError
from simgpu.graph import OpGraph
from simgpu.models import register_model
from simgpu.models.builder import GraphBuilder
from simgpu.userfiles import read_bytes

WS_K = 4
WS_P = 0.75
NODES = 32


@dataclass(frozen=True)
class WiredGraph:
    """An undirected random graph on nodes 0..n-1; ``edges`` sorted, each (u, v), u < v.

    Its DAG points every edge from the lower index to the higher one.
    """

    n: int
    edges: tuple[tuple[int, int], ...]

    def predecessors(self) -> list[list[int]]:
        preds: list[list[int]] = [[] for _ in range(self.n)]
        for u, v in self.edges:
            preds[v].append(u)
        return preds

    def sinks(self) -> list[int]:
        has_succ = {u for u, _ in self.edges}
        return [i for i in range(self.n) if i not in has_succ]


def ws_graph(n: int, k: int = WS_K, p: float = WS_P, seed: int = 0) -> WiredGraph:
    """A connected Watts-Strogatz graph from networkx; the same seed gives the same graph."""
    if n <= k or k < 2 or not 0.0 <= p <= 1.0:
        raise GraphError(f"Watts-Strogatz graph needs n > k >= 2 and 0 <= p <= 1 (n={n}, k={k})")
    g = nx.connected_watts_strogatz_graph(n, k, p, tries=100, seed=seed)
    return WiredGraph(n, tuple(sorted((min(u, v), max(u, v)) for u, v in g.edges())))


def read_ios_graph(path: str | Path) -> WiredGraph:
    """Read an IOS ``randwire_ws-*.txt`` file: n, then m, then m lines ``u v``.

    Every way the file can be wrong is a one-line FormatError naming the file and line.
    """
    p = Path(path)
    try:
        lines = read_bytes(p).decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise FormatError(f"{p}: not UTF-8 text at byte {e.start}") from None
    rows = [(i + 1, line.split()) for i, line in enumerate(lines) if line.strip()]

    def ints(row: tuple[int, list[str]], count: int, what: str) -> list[int]:
        lineno, fields = row
        if len(fields) != count or not all(f.isascii() and f.isdigit() for f in fields):
            raise FormatError(f"{p}:{lineno}: expected {what}, got {' '.join(fields)!r}")
        return [int(f) for f in fields]

    if len(rows) < 2:
        raise FormatError(f"{p}: expected node count and edge count lines, file has {len(rows)}")
    (n,) = ints(rows[0], 1, "the node count")
    (m,) = ints(rows[1], 1, "the edge count")
    if n < 1:
        raise FormatError(f"{p}:{rows[0][0]}: node count must be positive")
    if len(rows) - 2 != m:
        raise FormatError(f"{p}: header says {m} edges, file has {len(rows) - 2} edge lines")
    edges: set[tuple[int, int]] = set()
    for row in rows[2:]:
        u, v = ints(row, 2, "an edge 'u v'")
        if u >= n or v >= n or u == v:
            raise FormatError(f"{p}:{row[0]}: edge {u} {v} is not between two of the {n} nodes")
        e = (min(u, v), max(u, v))
        if e in edges:
            raise FormatError(f"{p}:{row[0]}: edge {u} {v} appears twice")
        edges.add(e)
    return WiredGraph(n, tuple(sorted(edges)))


# -- ops --------------------------------------------------------------------------------


def _node(b: GraphBuilder, inputs: list[str], cout: int, stride: int) -> str:
    """Weighted-sum aggregation -> ReLU -> 3x3 separable conv (stride) -> BN."""
    x = inputs[0]
    if len(inputs) > 1:
        x = b.op("add", inputs, "aggregate", weighted=True)
    x = b.relu(x, name="relu")
    c = b.shape(x)[1]
    x = b.conv(x, c, 3, stride, 1, groups=c, act=None, folded_bn=False, name="depthwise")
    return b.conv(x, cout, 1, act=None, name="pointwise")


def _stage(b: GraphBuilder, x: str, graph: WiredGraph, cout: int) -> str:
    """One random-wiring stage: halves the resolution, outputs ``cout`` channels."""
    preds = graph.predecessors()
    out: list[str] = []
    for i in range(graph.n):  # index order is a topological order of the DAG
        with b.scope(f"node{i:02d}"):
            if preds[i]:
                out.append(_node(b, [out[j] for j in preds[i]], cout, 1))
            else:
                out.append(_node(b, [x], cout, 2))
    sinks = [out[i] for i in graph.sinks()]
    if len(sinks) == 1:
        return sinks[0]
    return b.op("add", sinks, "output", average=True)


@dataclass(frozen=True)
class Regime:
    """Which stages are plain convs and which are random, with their node counts."""

    name: str
    random_nodes: tuple[int, ...]  # node counts of the random stages, last stages last
    widths: tuple[int, ...]  # channel multiples of C for conv2..conv5


SMALL = Regime("small", (NODES, NODES, NODES), (1, 1, 2, 4))
REGULAR = Regime("regular", (NODES // 2, NODES, NODES, NODES), (1, 2, 4, 8))


def randwire(
    regime: Regime,
    channels: int,
    batch: int = 1,
    image_size: int = 224,
    dtype: str = "fp32",
    seed: int = 0,
    graph_files: Sequence[str | Path] | None = None,
    num_classes: int = 1000,
    name: str | None = None,
) -> OpGraph:
    """RandWire-WS in ``regime`` with base width C = ``channels``.

    ``graph_files`` replaces the generated graphs, one file per random stage in stage
    order (IOS ``randwire_ws-*.txt`` format); their node counts may differ from N.
    """
    n_random = len(regime.random_nodes)
    first_random = 6 - n_random  # conv stage number of the first random stage
    if graph_files is not None:
        if len(graph_files) != n_random:
            raise GraphError(
                f"RandWire {regime.name} regime has {n_random} random stages, "
                f"got {len(graph_files)} graph files"
            )
        graphs = [read_ios_graph(f) for f in graph_files]
    else:
        graphs = [
            ws_graph(n, seed=1000 * seed + first_random + i)
            for i, n in enumerate(regime.random_nodes)
        ]
    b = GraphBuilder(name or f"randwire_{regime.name}", dtype)
    x = b.input((batch, 3, image_size, image_size))
    x = b.conv(x, channels // 2, 3, stride=2, padding=1, act=None, name="conv1")
    for stage in range(2, 6):
        cout = channels * regime.widths[stage - 2]
        with b.scope(f"conv{stage}"):
            if stage < first_random:
                r = b.relu(x, name="relu")
                x = b.conv(r, cout, 3, stride=2, padding=1, act=None, name="conv")
            else:
                x = _stage(b, x, graphs[stage - first_random], cout)
    with b.scope("classifier"):
        x = b.relu(x, name="relu")
        x = b.conv(x, 1280, 1, act="relu", name="conv")
        x = b.global_pool(x, name="avgpool")
        x = b.flatten(x, name="flatten")
        b.linear(x, num_classes, name="fc")
    return b.build()


def randwire_small(
    batch: int = 1,
    image_size: int = 224,
    dtype: str = "fp32",
    channels: int = 78,
    seed: int = 0,
    graph_files: Sequence[str | Path] | None = None,
) -> OpGraph:
    """RandWire-WS, small computation regime, C=78 (paper Table 3: 583 M MACs, 5.6 M params)."""
    return randwire(
        SMALL, channels, batch, image_size, dtype, seed, graph_files, name="randwire_small"
    )


def randwire_large(
    batch: int = 1,
    image_size: int = 224,
    dtype: str = "fp32",
    channels: int = 154,
    seed: int = 0,
    graph_files: Sequence[str | Path] | None = None,
) -> OpGraph:
    """RandWire-WS, regular computation regime, C=154 by default (paper Table 4:
    7.9 G MACs, 61.5 M params; C=109: 4.0 G, 31.9 M); the IOS graphs are of this regime."""
    return randwire(
        REGULAR, channels, batch, image_size, dtype, seed, graph_files, name="randwire_large"
    )


register_model(
    "randwire_small",
    randwire_small,
    224,
    "RandWire-WS(32, 4, 0.75) small regime C=78 (Xie et al. 2019), seeded networkx graphs, "
    "BN folded; 3 random stages",
)
register_model(
    "randwire_large",
    randwire_large,
    224,
    "RandWire-WS(32, 4, 0.75) regular regime C=154 (Xie et al. 2019), seeded networkx graphs, "
    "BN folded; 4 random stages (16 + 3x32 nodes)",
)
