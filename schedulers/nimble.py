"""Nimble (Kwon et al., NeurIPS 2020): stream assignment by maximum matching, run ahead
of time as one CUDA Graph.

1. Take the transitive reduction G' of the op DAG: an edge of G' is a dependency no
   other path implies, so it is the only kind that may ever need an event.
2. Build the bipartite graph with a left copy of every op, a right copy of every op,
   and an edge u_L - v_R for every edge u -> v of G'; find a maximum matching M
   (Hopcroft-Karp, networkx).
3. A matched edge u -> v puts v right after u on u's stream, so the streams are the
   chains M forms: |ops| - |M| of them. Ops with no path between them never share a
   stream (maximum logical concurrency), and every edge of G' that is not matched
   crosses streams and costs exactly one event: |E'| - |M| synchronisations, the
   fewest any such assignment has.

Because the chains follow edges of G', |ops| - |M| is the smallest number of *paths*
covering G', which can exceed the graph's width (its largest antichain, the smallest
number of *chains* by Dilworth): a -> c, b -> c, c -> d, c -> e has width 2 but needs
3 paths. ``cover="closure"`` matches on the transitive closure instead, which gives
exactly the width in streams (Dilworth/Fulkerson) at the price of matched edges that
are not edges of G', hence possibly more events.

``nimble`` captures the program in one CUDA Graph (no per-kernel launch cost);
``nimble-eager`` issues the same streams kernel by kernel.

Under a memory limit, streams are merged until the replayed peak fits
(schedulers._memory.merge_until_fits): maximum concurrency is what costs the memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from schedulers._memory import merge_until_fits
from schedulers.base import Profiler, SchedulerError, register
from simgpu.graph import OpGraph
from simgpu.schedule import StreamSchedule


def transitive_reduction(graph: OpGraph) -> list[tuple[str, str]]:
    """Edges of the transitive reduction, sorted by (producer, consumer) definition order."""
    idx = graph.index
    red = nx.transitive_reduction(graph.nx)
    return sorted(red.edges(), key=lambda e: (idx[e[0]], idx[e[1]]))


def transitive_closure(graph: OpGraph) -> list[tuple[str, str]]:
    """Every pair u -> v with a path from u to v, sorted by definition order."""
    idx = graph.index
    out = [(u, v) for u in graph.ops for v in nx.descendants(graph.nx, u)]
    return sorted(out, key=lambda e: (idx[e[0]], idx[e[1]]))


def maximum_matching(edges: list[tuple[str, str]], ops: list[str]) -> dict[str, str]:
    """Maximum matching of the split graph (left copy u -> right copy v per edge), as
    ``{u: v}``, by networkx's Hopcroft-Karp. Its walk follows set iteration order, so
    the copies are integers (left ``i``, right ``n + i``): their hashes, hence the
    matching, are the same in every process, whatever PYTHONHASHSEED."""
    num = {op: i for i, op in enumerate(ops)}
    n = len(ops)
    b = nx.Graph()
    b.add_nodes_from(range(2 * n))
    b.add_edges_from((num[u], n + num[v]) for u, v in edges)
    m = nx.bipartite.hopcroft_karp_matching(b, top_nodes=range(n))
    return {ops[u]: ops[v - n] for u, v in sorted(m.items()) if u < n}


def chains(ops: list[str], succ: dict[str, str]) -> list[list[str]]:
    """Follow matched edges from every op that is nobody's match: one list per stream,
    in the order of their first op."""
    matched = set(succ.values())
    heads = [n for n in ops if n not in matched]
    out = []
    for h in heads:
        chain = [h]
        while chain[-1] in succ:
            chain.append(succ[chain[-1]])
        out.append(chain)
    return out


def nimble_streams(graph: OpGraph, cover: str = "reduced") -> tuple[list[list[str]], dict]:
    """The stream assignment and the figures it was built from."""
    ops = graph.topo_order
    reduced = transitive_reduction(graph)
    if cover == "reduced":
        candidates = reduced
    elif cover == "closure":
        candidates = transitive_closure(graph)
    else:
        raise SchedulerError(f"nimble: cover must be 'reduced' or 'closure', got {cover!r}")
    succ = maximum_matching(candidates, ops)
    streams = chains(ops, succ)
    stream_of = {op: si for si, s in enumerate(streams) for op in s}
    crossing = sum(1 for u, v in reduced if stream_of[u] != stream_of[v])
    meta = {
        "reduced_edges": len(reduced),
        "matching": len(succ),
        "events": crossing,  # reduced edges that cross streams
    }
    return streams, meta


@register("nimble", runtime="cuda-graph", memory_aware=True)
@dataclass
class Nimble:
    """Nimble: matching on the transitive reduction -> streams; one CUDA Graph launch."""

    cover: str = "reduced"
    graph_mode: bool = True

    def schedule(self, graph: OpGraph, profiler: Profiler) -> StreamSchedule:
        streams, meta = nimble_streams(graph, self.cover)
        sched = StreamSchedule(streams, graph_mode=self.graph_mode, meta=meta)
        if profiler.memory_limit is None:
            return sched
        return merge_until_fits(self.name, graph, profiler, sched)


@register("nimble-eager", memory_aware=True)
@dataclass
class NimbleEager(Nimble):
    """Nimble's stream assignment issued kernel by kernel (no CUDA Graph)."""

    graph_mode: bool = False
