"""AutoGraph (Zhao et al., AAAI 2023): rewrite the graph for parallel kernels, guided by
the mixed critical path cost, and let simulated CUDA Graph runs decide when to stop.

Our concrete reading of the paper, in four steps:

1. **Cost.** Every op gets a cost from the Profiler (``op_latency_us``: the op alone,
   eager, one stream); ops without device work (views, inputs, the slices a merge
   leaves) cost nothing. A graph's *mixed critical path cost* is
   ``(1 + alpha) * sum(cost on the critical path) + sum(cost of the other ops)``,
   i.e. total work plus ``alpha`` times the longest path: ``alpha`` says how much the
   GPU is latency-bound (large: parallel branches are nearly free) rather than
   throughput-bound (0: only total work counts).
2. **Backtracking search over rewrites.** The substitution is IOS's sibling
   convolution merge (``schedulers._merge``): two convs of one merge class — or a
   conv already merged and another member — become one wider conv. From the original
   graph, a depth-first search tries every such merge, children best-cost first,
   descends into those that do not raise the cost by more than ``relax`` (so it can
   climb out of a local minimum), and backtracks; ``max_nodes`` bounds the cost
   evaluations. States are sets of merges (merge order does not matter), visited once;
   their cost is computed on the original DAG without building a graph.
3. **DP for the schedule (stream/stage partition).** For a rewritten graph, a dynamic
   program over a topological order cuts it into stages of at most ``window`` ops;
   the weakly connected components of a stage are its groups, one stream each (so no
   events inside a stage). A stage costs its total work plus ``alpha`` times its
   longest group plus the event latency of its barrier — the mixed critical path cost
   of the staged graph, summed stage by stage. Three topological orders (definition,
   as-soon-as-possible and as-late-as-possible levels) are tried; the cheapest wins.
4. **Measured convergence.** The unrewritten graph runs first, then the rewritten
   candidates best-cost first; each candidate's schedule runs as one multi-stream CUDA
   Graph in the simulator (``Profiler.measure``, stage barriers as events). The loop
   stops at the first rewrite whose run fails to improve the best run so far by more
   than ``tolerance`` (relative) — the cost model's next idea no longer pays — or after
   ``budget`` runs. The fastest run wins; one-stream CUDA Graph execution of the
   original graph is measured too, so the result is never slower than that.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from schedulers._merge import (
    MERGED_ATTR,
    apply_merges,
    merge_candidates,
    merged_name,
    merged_ops,
)
from schedulers.base import Profiler, SchedulerError, register
from simgpu.graph import Op, OpGraph
from simgpu.schedule import StageSchedule, StreamSchedule

Merges = tuple[tuple[str, ...], ...]  # disjoint merge groups, each in definition order


# --- costs ---------------------------------------------------------------------------------


def op_costs(graph: OpGraph, profiler: Profiler) -> dict[str, float]:
    """Profiled latency of each op alone; 0 for ops the GPU never runs (views)."""
    return {
        n: profiler.op_latency_us(graph, n) if profiler.kernels.lower(graph, n) else 0.0
        for n in graph.topo_order
    }


def mixed_cost(graph: OpGraph, cost: dict[str, float], alpha: float) -> float:
    """``(1 + alpha) * critical path + everything else`` on a real graph."""
    finish: dict[str, float] = {}
    for n in graph.topo_order:
        finish[n] = cost[n] + max((finish[u] for u in graph.predecessors(n)), default=0.0)
    total = sum(cost.values())
    return total + alpha * max(finish.values())


class _Rewrites:
    """The merge search space of one graph: merge classes, the cost of any merged conv,
    and the mixed cost of any set of merges evaluated on the original DAG."""

    def __init__(self, graph: OpGraph, profiler: Profiler, alpha: float) -> None:
        self.graph = graph
        self.profiler = profiler
        self.alpha = alpha
        self.cost = op_costs(graph, profiler)
        self.classes = merge_candidates(graph)
        self.class_of = {m: i for i, cls in enumerate(self.classes) for m in cls}
        self.pos = graph.index
        self._merged_cost: dict[tuple[str, ...], float] = {}
        # the DAG as index arrays (definition positions), walked in topological order
        self._base = [self.cost[n] for n in graph.ops]
        self._total = sum(self._base)
        self._order = [
            (self.pos[n], [self.pos[u] for u in graph.predecessors(n)]) for n in graph.topo_order
        ]

    def merged_cost(self, members: tuple[str, ...]) -> float:
        """Profiled cost of the conv that replaces ``members`` (a two-op graph: the
        Profiler memoises by kernel signature, so this is one simulation per shape)."""
        hit = self._merged_cost.get(members)
        if hit is None:
            conv, _ = merged_ops(self.graph, members)
            src = self.graph[conv.inputs[0]]
            tiny = OpGraph([Op(src.name, "input", (), src.output_shape, src.dtype), conv])
            hit = self._merged_cost[members] = self.profiler.op_latency_us(tiny, conv.name)
        return hit

    def evaluate(self, merges: Merges) -> float:
        """Mixed cost of the graph with ``merges`` applied: each merged conv runs after
        the members' common input, each member becomes a free view of it."""
        cost = list(self._base)
        total = self._total
        for members in merges:
            c = self.merged_cost(members)
            total += c - sum(self.cost[m] for m in members)
            for m in members:
                cost[self.pos[m]] = c
        finish = [0.0] * len(cost)
        for i, preds in self._order:
            start = 0.0
            for u in preds:
                if finish[u] > start:
                    start = finish[u]
            finish[i] = start + cost[i]
        return total + self.alpha * max(finish)

    def moves(self, merges: Merges) -> Iterator[Merges]:
        """Every state one merge away: join two groups (singletons included) of a class."""
        group_of: dict[str, tuple[str, ...]] = {}
        for members in merges:
            for m in members:
                group_of[m] = members
        for cls in self.classes:
            units: list[tuple[str, ...]] = []
            for m in cls:
                u = group_of.get(m, (m,))
                if u not in units:
                    units.append(u)
            for i in range(len(units)):
                for j in range(i + 1, len(units)):
                    joined = tuple(sorted(units[i] + units[j], key=self.pos.__getitem__))
                    rest = [x for x in merges if x not in (units[i], units[j])]
                    yield tuple(sorted([*rest, joined], key=lambda x: self.pos[x[0]]))

    def apply(self, merges: Merges) -> OpGraph:
        return apply_merges(self.graph, merges) if merges else self.graph


@dataclass
class _SearchResult:
    states: list[tuple[float, Merges]] = field(default_factory=list)
    nodes: int = 0


def backtracking_search(rw: _Rewrites, max_nodes: int, relax: float) -> _SearchResult:
    """Depth-first over merge sets from the original graph, children best-cost first,
    descending while the cost rises by at most ``relax``; every state evaluated is kept."""
    out = _SearchResult()
    seen: dict[Merges, float] = {(): rw.evaluate(())}
    out.nodes = 1

    def dfs(state: Merges, cost: float) -> None:
        children = []
        for nxt in rw.moves(state):
            if nxt in seen:
                continue
            if out.nodes >= max_nodes:
                break
            out.nodes += 1
            c = seen[nxt] = rw.evaluate(nxt)
            children.append((c, nxt))
        children.sort(key=lambda x: x[0])  # stable: ties keep generation order
        for c, nxt in children:
            if c <= cost * (1.0 + relax) and out.nodes < max_nodes:
                dfs(nxt, c)

    dfs((), seen[()])
    out.states = sorted(((c, s) for s, c in seen.items()), key=lambda x: (x[0], len(x[1])))
    return out


# --- the DP pass -------------------------------------------------------------------------------


def _orders(graph: OpGraph) -> list[list[str]]:
    """Definition order, ASAP levels and ALAP levels (ties by definition order)."""
    topo = graph.topo_order
    asap: dict[str, int] = {}
    for n in topo:
        asap[n] = max((asap[u] + 1 for u in graph.predecessors(n)), default=0)
    alap: dict[str, int] = {}
    depth = max(asap.values())
    for n in reversed(topo):
        alap[n] = min((alap[v] - 1 for v in graph.successors(n)), default=depth)
    pos = graph.index
    orders = [list(topo)]
    for level in (asap, alap):
        o = sorted(topo, key=lambda n: (level[n], pos[n]))
        if o not in orders:
            orders.append(o)
    return orders


def stage_dp(
    graph: OpGraph, cost: dict[str, float], alpha: float, window: int, barrier_us: float
) -> tuple[float, list[list[list[str]]]]:
    """Cut a topological order into stages minimising the staged mixed cost; each stage's
    groups are its weakly connected components. Best of the orders of ``_orders``."""
    best: tuple[float, list[list[list[str]]]] | None = None
    for order in _orders(graph):
        total, stages = _dp_one(graph, order, cost, alpha, window, barrier_us)
        if best is None or total < best[0]:
            best = (total, stages)
    assert best is not None
    return best


def _dp_one(
    graph: OpGraph,
    order: list[str],
    cost: dict[str, float],
    alpha: float,
    window: int,
    barrier_us: float,
) -> tuple[float, list[list[list[str]]]]:
    n = len(order)
    at = {name: i for i, name in enumerate(order)}
    nbrs = [
        [at[u] for u in graph.predecessors(name)] + [at[v] for v in graph.successors(name)]
        for name in order
    ]
    dp = [0.0] + [float("inf")] * n
    cut = [0] * (n + 1)
    for i in range(n):  # stage = order[j..i], grown backwards with a union-find
        parent: dict[int, int] = {}
        weight: dict[int, float] = {}

        longest = work = 0.0
        for j in range(i, max(-1, i - window), -1):
            parent[j] = j
            weight[j] = cost[order[j]]
            work += weight[j]
            for k in nbrs[j]:
                if k in parent:
                    a, b = _find(parent, j), _find(parent, k)
                    if a != b:
                        parent[b] = a
                        weight[a] += weight.pop(b)
            longest = max(longest, weight[_find(parent, j)])
            c = dp[j] + work + alpha * longest + barrier_us
            if c < dp[i + 1]:
                dp[i + 1], cut[i + 1] = c, j
    stages: list[list[list[str]]] = []
    end = n
    while end:
        start = cut[end]
        stages.append(_groups(graph, order[start:end]))
        end = start
    stages.reverse()
    return dp[n], stages


def _find(parent: dict[int, int], x: int) -> int:
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


def _groups(graph: OpGraph, ops: Sequence[str]) -> list[list[str]]:
    """Weakly connected components of ``ops``, each in topological (definition) order,
    ordered by first op."""
    inside = set(ops)
    pos = graph.index
    comp: dict[str, int] = {}
    groups: list[list[str]] = []
    for start in sorted(ops, key=pos.__getitem__):
        if start in comp:
            continue
        comp[start] = len(groups)
        members, stack = [start], [start]
        while stack:
            x = stack.pop()
            for y in (*graph.predecessors(x), *graph.successors(x)):
                if y in inside and y not in comp:
                    comp[y] = comp[start]
                    members.append(y)
                    stack.append(y)
        groups.append(sorted(members, key=pos.__getitem__))
    return groups


# --- the scheduler -------------------------------------------------------------------------


@register("autograph", runtime="cuda-graph")
@dataclass
class AutoGraph:
    """AutoGraph: mixed-critical-path-guided conv merges + stage DP, CUDA Graph runs to converge."""

    alpha: float = 1.0
    relax: float = 0.02
    max_nodes: int = 1000
    window: int = 32
    budget: int = 8
    tolerance: float = 0.005

    def _check(self) -> None:
        for key, ok, want in (
            ("alpha", self.alpha >= 0, ">= 0"),
            ("relax", self.relax >= 0, ">= 0"),
            ("max_nodes", self.max_nodes >= 1, ">= 1"),
            ("window", self.window >= 1, ">= 1"),
            ("budget", self.budget >= 1, ">= 1"),
            ("tolerance", self.tolerance >= 0, ">= 0"),
        ):
            if not ok:
                raise SchedulerError(
                    f"option autograph.{key} must be {want}, got {getattr(self, key)}"
                )

    def schedule(self, graph: OpGraph, profiler: Profiler) -> StageSchedule | StreamSchedule:
        self._check()
        rw = _Rewrites(graph, profiler, self.alpha)
        found = backtracking_search(rw, self.max_nodes, self.relax)
        barrier = profiler.gpu.event_latency_us
        # the fallback every candidate must beat: the original graph on one stream
        best_sched: StageSchedule | StreamSchedule = StreamSchedule(
            [list(graph.topo_order)], graph_mode=True
        )
        best_lat = profiler.measure(best_sched, graph)
        history: list[dict] = []
        rewritten = [(c, m) for c, m in found.states if m]
        start = next(c for c, m in found.states if not m)
        run_best = float("inf")
        for mc, merges in [(start, ()), *rewritten][: self.budget]:
            g = rw.apply(merges)
            cost = rw.cost if not merges else op_costs(g, profiler)
            _, stages = stage_dp(g, cost, self.alpha, self.window, barrier)
            sched = StageSchedule(
                stages, graph=g if merges else None, barrier="events", graph_mode=True
            )
            lat = profiler.measure(sched, graph)
            history.append(
                {"merges": len(merges), "cost": mc, "stages": len(stages), "latency_us": lat}
            )
            if lat < best_lat:
                best_sched, best_lat = sched, lat
            if merges and not lat < run_best * (1.0 - self.tolerance):
                break  # converged: the next-best rewrite no longer pays in a real run
            run_best = min(run_best, lat)
        best_sched.meta.update(
            {
                "search_nodes": found.nodes,
                "iterations": len(history),
                "history": history,
                "merged": [merged_name(m) for m in _merges_of(best_sched)],
                "latency_us": best_lat,
            }
        )
        return best_sched


def _merges_of(sched: StageSchedule | StreamSchedule) -> list[tuple[str, ...]]:
    g = sched.graph
    if g is None:
        return []
    return [tuple(op.attrs[MERGED_ATTR]) for op in g if MERGED_ATTR in op.attrs]
