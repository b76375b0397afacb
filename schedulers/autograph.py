"""AutoGraph (Zhao et al., AAAI 2023): rewrite the graph for parallel kernels, guided by
the mixed critical path cost, and let simulated CUDA Graph runs decide when to stop.

Our concrete reading of the paper, in four steps:

1. **Cost.** Every op gets a cost from the Profiler (``op_latency_us``: the op alone,
   one stream, every kernel the runtime launches for it); ops without device work
   (views, inputs, the slices a merge leaves) cost nothing. A graph's *mixed critical
   path cost* is ``(1 + alpha) * sum(cost on the critical path) + sum(cost of the
   other ops)``,
   i.e. total work plus ``alpha`` times the longest path: ``alpha`` says how much the
   GPU is latency-bound (large: parallel branches are nearly free) rather than
   throughput-bound (0: only total work counts).
2. **Backtracking search over rewrites.** Three exact substitutions, each new op priced
   by the simulator's kernel-cost model (the Profiler runs it alone): *merge* — sibling
   convs of one merge class become one wider conv, kernels of different sizes
   zero-padded, centred, to the largest (a 1x1 beside a 3x3 becomes a 3x3: its MACs grow
   ninefold) (``schedulers._merge``); *fuse* — a conv, its folded BatchNorm and
   activation and the chain of elementwise ops after it become one conv whose kernel
   runs the chain in its epilogue, and a merged conv folds its own BatchNorm and
   activation likewise (``schedulers._rewrites``); *split* — one of the ``split_top``
   most expensive convs becomes two convs over halves of its output channels and a
   channel concat, so the halves can run beside each other and other work. A state is a
   set of disjoint rewrites (merge order does not matter), visited once; its cost is
   computed on the original DAG without building a graph. From the original graph a
   depth-first search evaluates every rewrite one step away, then, per state, the
   ``branch`` rewrites whose last evaluation lowered the cost most; it descends,
   children best-cost first, into those that do not raise the cost by more than
   ``relax`` (so it can climb out of a local minimum) but change it (a rewrite the cost
   cannot see, as fusing a conv whose runtime fuses it anyway, is not built on), and
   backtracks; ``max_nodes`` bounds the cost evaluations. ``rewrites`` names the
   substitutions searched (``""``: none, the DP alone).
3. **DP for the schedule (stream/stage partition).** For a rewritten graph, a dynamic
   program over a topological order cuts it into stages of at most ``window`` ops;
   the weakly connected components of a stage are its groups, one stream each (so no
   events inside a stage). A stage costs its total work plus ``alpha`` times its
   longest group plus the event latency of its barrier — the mixed critical path cost
   of the staged graph, summed stage by stage. Three topological orders (definition,
   as-soon-as-possible and as-late-as-possible levels) are tried; the cheapest wins.
4. **Measured convergence.** The unrewritten graph runs first, then the rewritten
   candidates best-cost first (of equal costs, the fewest rewrites); each candidate's
   schedule runs as one multi-stream CUDA Graph in the simulator (``Profiler.measure``,
   stage barriers as events). The loop stops at the first rewrite whose run fails to
   improve the best run so far by more than ``tolerance`` (relative) — the cost model's
   next idea no longer pays — or after ``budget`` runs. The fastest run wins; one-stream
   CUDA Graph execution of the original graph is measured too, so the result is never
   slower than that.

Still narrower than the paper: the substitutions are these three, not a general rule set
(no TASO-style algebraic rewrites, no fusion into pools or GEMMs; a merged conv folds
only its own BatchNorm and activation, not the ops after it; a split conv is not fused,
and whether a merged conv folds is not searched separately); a split is only along
output channels, in two, of the ``split_top`` most expensive convs; the search is a
bounded depth-first search whose deeper levels evaluate only ``branch`` children; the
final schedule is a stage partition by a DP over three fixed topological orders, not a
search over all stage partitions; and "real runtime measurements" are simulated CUDA
Graph runs. A fused conv's kernel is priced as the library's implicit-GEMM conv with the
chain's FLOPs and operand bytes in its epilogue (as a CUTLASS epilogue or cuDNN's
conv-bias-add-activation call would run it); the original graph's convs run as eager
PyTorch runs them under CUDA Graph capture (conv, BatchNorm and activation kernels), so
most of what fusion gains is kernels removed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from schedulers._merge import merge_candidates, merged_name, merged_ops
from schedulers._rewrites import (
    apply_rewrites,
    can_fold,
    can_split,
    fold_epilogue,
    fuse_candidates,
    fused_op,
    split_ops,
    tiny_graph,
)
from schedulers.base import Profiler, SchedulerError, register
from simgpu.graph import OpGraph
from simgpu.limits import check as check_limit
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


Local = tuple[int, ...]  # sorted indices into _Rewrites.local (fusions and splits)
State = tuple[Merges, Local]
REWRITES = ("merge", "fuse", "split")


class _Rewrites:
    """The search space of one graph: merge classes (:mod:`schedulers._merge`), fusions
    and splits (:mod:`schedulers._rewrites`), each new op's profiled cost, and the mixed
    cost of any disjoint set of rewrites evaluated on the original DAG."""

    def __init__(
        self,
        graph: OpGraph,
        profiler: Profiler,
        alpha: float,
        kinds: Sequence[str] = REWRITES,
        split_top: int = 8,
    ) -> None:
        self.graph = graph
        self.profiler = profiler
        self.alpha = alpha
        self.cost = op_costs(graph, profiler)
        self.pos = graph.index
        self.classes = merge_candidates(graph) if "merge" in kinds else []
        self.class_of = {m: i for i, cls in enumerate(self.classes) for m in cls}
        # with fusion on, a merged conv runs its BatchNorm and activation in its kernel
        self.fold_merged = "fuse" in kinds
        # fusions and splits: (kind, ops), each touching ``ops`` of the original graph
        self.local: list[tuple[str, tuple[str, ...]]] = []
        if "fuse" in kinds:
            self.local += [("fuse", ops) for ops in fuse_candidates(graph)]
        if "split" in kinds and split_top > 0:
            big = sorted(
                (n for n in graph.ops if can_split(graph, n)),
                key=lambda n: (-self.cost[n], self.pos[n]),
            )[:split_top]
            self.local += [("split", (n,)) for n in sorted(big, key=self.pos.__getitem__)]
        self._merged_cost: dict[tuple[str, ...], float] = {}
        self._local_cost: dict[int, tuple[float, ...]] = {}
        self._fuse_in: dict[int, list[int]] = {}  # a fused conv's inputs, as positions
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
            if self.fold_merged and can_fold(conv):
                conv = fold_epilogue(conv)
            tiny = tiny_graph(self.graph, [conv])
            hit = self._merged_cost[members] = self.profiler.op_latency_us(tiny, conv.name)
        return hit

    def local_cost(self, i: int) -> tuple[float, ...]:
        """Profiled costs of a fusion's fused conv, or of a split's two halves and concat."""
        hit = self._local_cost.get(i)
        if hit is None:
            kind, ops = self.local[i]
            new = [fused_op(self.graph, ops)] if kind == "fuse" else split_ops(self.graph, ops[0])
            tiny = tiny_graph(self.graph, new)
            hit = tuple(self.profiler.op_latency_us(tiny, o.name) for o in new)
            self._local_cost[i] = hit
            if kind == "fuse":
                self._fuse_in[i] = [self.pos[u] for u in new[0].inputs]
        return hit

    def evaluate(self, merges: Merges, local: Local = ()) -> float:
        """Mixed cost of the graph with ``merges`` and ``local`` rewrites applied: each
        merged conv runs after the members' common input, each member becomes a free
        view of it; a fused conv runs where the chain's last op ran, after the conv's
        input and the chain's other operands, its other ops gone; a split conv's halves
        run side by side, then the concat."""
        cost = list(self._base)
        total = self._total
        for members in merges:
            c = self.merged_cost(members)
            total += c - sum(self.cost[m] for m in members)
            for m in members:
                cost[self.pos[m]] = c
        preds_of: dict[int, list[int]] = {}
        split_at: dict[int, tuple[float, ...]] = {}
        for i in local:
            kind, ops = self.local[i]
            cs = self.local_cost(i)
            total += sum(cs) - sum(self.cost[o] for o in ops)
            if kind == "fuse":
                for o in ops[:-1]:
                    cost[self.pos[o]] = 0.0  # nobody but the chain reads them
                last = self.pos[ops[-1]]
                cost[last] = cs[0]
                preds_of[last] = self._fuse_in[i]
            else:
                split_at[self.pos[ops[0]]] = cs
        finish = [0.0] * len(cost)
        for i, preds in self._order:
            start = 0.0
            for u in preds_of.get(i, preds):
                if finish[u] > start:
                    start = finish[u]
            sp = split_at.get(i)
            finish[i] = start + (cost[i] if sp is None else max(sp[0], sp[1]) + sp[2])
        return total + self.alpha * max(finish)

    def moves(self, state: State) -> Iterator[tuple[tuple, State]]:
        """Every state one rewrite away, with a key naming the rewrite: join two groups
        (singletons included) of a merge class, or add a fusion or split that touches no
        op another rewrite of the state touches."""
        merges, local = state
        used = {o for i in local for o in self.local[i][1]}
        group_of: dict[str, tuple[str, ...]] = {}
        for members in merges:
            for m in members:
                group_of[m] = members
                used.add(m)
        for cls in self.classes:
            units: list[tuple[str, ...]] = []
            for m in cls:
                if m in used and m not in group_of:
                    continue  # fused or split
                u = group_of.get(m, (m,))
                if u not in units:
                    units.append(u)
            for i in range(len(units)):
                for j in range(i + 1, len(units)):
                    joined = tuple(sorted(units[i] + units[j], key=self.pos.__getitem__))
                    rest = [x for x in merges if x not in (units[i], units[j])]
                    nxt = tuple(sorted([*rest, joined], key=lambda x: self.pos[x[0]]))
                    yield ("merge", joined), (nxt, local)
        for i, (_, ops) in enumerate(self.local):
            if i not in local and used.isdisjoint(ops):
                yield ("local", i), (merges, tuple(sorted((*local, i))))

    def apply(self, merges: Merges, local: Local = ()) -> OpGraph:
        if not merges and not local:
            return self.graph
        fuses = [self.local[i][1] for i in local if self.local[i][0] == "fuse"]
        splits = [self.local[i][1][0] for i in local if self.local[i][0] == "split"]
        return apply_rewrites(self.graph, merges, fuses, splits, self.fold_merged)

    def describe(self, state: State) -> dict[str, list[str]]:
        merges, local = state
        return {
            "merged": [merged_name(m) for m in merges],
            "fused": ["+".join(self.local[i][1]) for i in local if self.local[i][0] == "fuse"],
            "split": [self.local[i][1][0] for i in local if self.local[i][0] == "split"],
        }


@dataclass
class _SearchResult:
    states: list[tuple[float, State]] = field(default_factory=list)
    nodes: int = 0


def backtracking_search(
    rw: _Rewrites, max_nodes: int, relax: float, branch: int = 0
) -> _SearchResult:
    """Depth-first over rewrite sets from the original graph, children best-cost first,
    descending while the cost rises by at most ``relax``; every state evaluated is kept.

    All rewrites one step from the original graph are evaluated; deeper, ``branch``
    (0: all) children are evaluated per state, the rewrites whose last evaluation
    lowered the cost most first, so that a graph with a hundred independent fusions is
    searched to depth a hundred within ``max_nodes``."""
    out = _SearchResult()
    root: State = ((), ())
    seen: dict[State, float] = {root: rw.evaluate(*root)}
    out.nodes = 1
    gain: dict[tuple, float] = {}  # a rewrite's cost change when last evaluated

    def dfs(state: State, cost: float, top: bool) -> None:
        moves = [(k, s) for k, s in rw.moves(state) if s not in seen]
        if not top:
            moves.sort(key=lambda m: gain.get(m[0], 0.0))  # stable: ties keep order
            if branch:
                moves = moves[:branch]
        children = []
        for key, nxt in moves:
            if out.nodes >= max_nodes:
                break
            out.nodes += 1
            c = seen[nxt] = rw.evaluate(*nxt)
            gain[key] = c - cost
            children.append((c, nxt))
        children.sort(key=lambda x: x[0])  # stable: ties keep generation order
        for c, nxt in children:
            if c == cost:
                continue  # neutral: a rewrite the cost cannot see (k of them: 2^k states)
            if c <= cost * (1.0 + relax) and out.nodes < max_nodes:
                dfs(nxt, c, False)

    dfs(root, seen[root], True)
    out.states = sorted(
        ((c, s) for s, c in seen.items()), key=lambda x: (x[0], len(x[1][0]) + len(x[1][1]))
    )
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
    """AutoGraph: mixed-critical-path-guided rewrites (merge, fuse, split) + stage DP, CUDA Graph runs to converge."""

    alpha: float = 1.0
    relax: float = 0.02
    max_nodes: int = 3000
    branch: int = 4
    window: int = 32
    budget: int = 8
    tolerance: float = 0.005
    rewrites: str = "merge,fuse,split"  # any of merge, fuse, split, comma-separated; "" none
    split_top: int = 8  # the convs a split is tried on: the most expensive ones

    def _kinds(self) -> tuple[str, ...]:
        kinds = tuple(k.strip() for k in self.rewrites.split(",") if k.strip())
        bad = [k for k in kinds if k not in REWRITES]
        if bad:
            raise SchedulerError(
                f"option autograph.rewrites: unknown rewrite {bad[0]!r} (known: {', '.join(REWRITES)})"
            )
        return kinds

    def _check(self) -> None:
        for key, ok, want in (
            ("alpha", self.alpha >= 0, ">= 0"),
            ("relax", self.relax >= 0, ">= 0"),
            ("max_nodes", self.max_nodes >= 1, ">= 1"),
            ("branch", self.branch >= 0, ">= 0"),
            ("window", self.window >= 1, ">= 1"),
            ("budget", self.budget >= 1, ">= 1"),
            ("tolerance", self.tolerance >= 0, ">= 0"),
            ("split_top", self.split_top >= 0, ">= 0"),
        ):
            if not ok:
                raise SchedulerError(
                    f"option autograph.{key} must be {want}, got {getattr(self, key)}"
                )
        for key in ("max_nodes", "budget"):  # evaluations: bounded like any search budget
            check_limit("budget", getattr(self, key), f"option autograph.{key}")

    def schedule(self, graph: OpGraph, profiler: Profiler) -> StageSchedule | StreamSchedule:
        self._check()
        rw = _Rewrites(graph, profiler, self.alpha, self._kinds(), self.split_top)
        found = backtracking_search(rw, self.max_nodes, self.relax, self.branch)
        barrier = profiler.gpu.event_latency_us
        # the fallback every candidate must beat: the original graph on one stream
        best_sched: StageSchedule | StreamSchedule = StreamSchedule(
            [list(graph.topo_order)], graph_mode=True
        )
        best_lat = profiler.measure(best_sched, graph)
        best_state: State = ((), ())
        history: list[dict] = []
        root: State = ((), ())
        start = next(c for c, st in found.states if st == root)
        # of states of equal cost, only the one with fewest rewrites: the others differ
        # by rewrites the cost cannot see, which would stop the loop without a reason
        rewritten: list[tuple[float, State]] = []
        for c, st in found.states:
            if st != root and c != start and (not rewritten or c != rewritten[-1][0]):
                rewritten.append((c, st))
        run_best = float("inf")
        for mc, state in [(start, root), *rewritten][: self.budget]:
            g = rw.apply(*state)
            cost = rw.cost if g is graph else op_costs(g, profiler)
            _, stages = stage_dp(g, cost, self.alpha, self.window, barrier)
            sched = StageSchedule(
                stages, graph=None if g is graph else g, barrier="events", graph_mode=True
            )
            lat = profiler.measure(sched, graph)
            history.append(
                {
                    "merges": len(state[0]),
                    "fusions": sum(rw.local[i][0] == "fuse" for i in state[1]),
                    "splits": sum(rw.local[i][0] == "split" for i in state[1]),
                    "cost": mc,
                    "stages": len(stages),
                    "latency_us": lat,
                }
            )
            if lat < best_lat:
                best_sched, best_lat, best_state = sched, lat, state
            if state != root and not lat < run_best * (1.0 - self.tolerance):
                break  # converged: the next-best rewrite no longer pays in a real run
            run_best = min(run_best, lat)
        if best_sched.graph is None:
            best_state = root
        best_sched.meta.update(
            {
                "search_nodes": found.nodes,
                "iterations": len(history),
                "history": history,
                **rw.describe(best_state),
                "latency_us": best_lat,
            }
        )
        return best_sched
