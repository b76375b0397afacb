"""A compact encoding of multi-tenant plans, the baselines in it, and lane assignment.

The search works on a :class:`Genome` — a handful of numbers per tenant — and turns it
into a :class:`~simgpu.multitenant.plan.TenantPlan` through a :class:`TenantContext`
that caches what does not change between candidates (lane assignments, lowered
commands, layer depths, each tenant's standalone latency per lane count). The four
baselines are genomes too, so the search starts from them and can only improve on them.

Memory: the context also holds each tenant's tensor table and the admission budget
(:mod:`simgpu.multitenant.memory`). The tenants' weights must fit the limit, and one
request of each on one lane beside them (one-line errors otherwise). A tenant whose
request would not fit on ``k`` lanes (more lanes keep more tensors alive at once)
gets the most lanes below ``k`` that fit, as Nimble merges streams until it fits.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field, replace

from simgpu.errors import ScheduleError
from simgpu.graph import OpGraph
from simgpu.hardware import GPUSpec
from simgpu.kernels import KernelCache, standalone_time_us
from simgpu.memory import MemoryLimitError, Tensors, mb
from simgpu.multitenant.memory import check_weights, gpu_capacity, lane_bound, request_tensors
from simgpu.multitenant.plan import (
    MODES,
    Cmd,
    RequestProgram,
    TenantPlan,
    chunk,
    depth_levels,
    lower_tenant,
)
from simgpu.runtimes import Runtime
from simgpu.sim.tenants import MemoryBudget
from simgpu.tenants import Arrival, Workload

BASELINES = ("sequential", "multistream", "breadth-first", "depth-first")
LANE_CHOICES = (1, 2, 3, 4, 6)
_EVENT_US = 3.0  # what a cross-lane dependency costs in the lane model (record + wait)


def op_costs(graph: OpGraph, gpu: GPUSpec, cache: KernelCache) -> dict[str, float]:
    """Each op's standalone time: its kernels' wave times on an idle GPU."""
    return {
        op: math.fsum(standalone_time_us(k, gpu) for k in cache.lower(graph, op))
        for op in graph.topo_order
    }


def assign_lanes(graph: OpGraph, k: int, cost: dict[str, float]) -> list[list[str]]:
    """Split a model's ops over at most ``k`` lanes by list scheduling: ready ops by
    upward rank (longest remaining path first), each on the lane where it could start
    earliest, preferring its heaviest input's lane (no event) on ties. One lane is the
    plain topological order. Empty lanes are dropped."""
    if k < 1:
        raise ScheduleError(f"lanes must be at least 1, got {k}")
    topo = graph.topo_order
    if k == 1:
        return [list(topo)]
    pos = {op: i for i, op in enumerate(topo)}
    rank: dict[str, float] = {}
    for op in reversed(topo):
        rank[op] = cost[op] + max((rank[s] for s in graph.successors(op)), default=0.0)
    indeg = {op: len(graph.predecessors(op)) for op in topo}
    ready = [(-rank[op], pos[op], op) for op in topo if indeg[op] == 0]
    heapq.heapify(ready)
    free = [0.0] * k
    finish: dict[str, float] = {}
    lane_of: dict[str, int] = {}
    out: list[list[str]] = [[] for _ in range(k)]
    while ready:
        _, _, op = heapq.heappop(ready)
        preds = graph.predecessors(op)
        home = max(preds, key=lambda u: (finish[u], -pos[u])) if preds else None

        def start(lane: int, preds: list[str] = preds) -> float:
            t = free[lane]
            for u in preds:
                t = max(t, finish[u] + (0.0 if lane_of[u] == lane else _EVENT_US))
            return t

        best = min(
            range(k),
            key=lambda ln: (start(ln), home is None or lane_of[home] != ln, ln),
        )
        finish[op] = free[best] = start(best) + cost[op]
        lane_of[op] = best
        out[best].append(op)
        for v in graph.successors(op):
            indeg[v] -= 1
            if indeg[v] == 0:
                heapq.heappush(ready, (-rank[v], pos[v], v))
    return [lane for lane in out if lane]


@dataclass(frozen=True)
class Genome:
    """A multi-tenant plan in a few numbers. Per tenant: ``lanes`` (intra-model
    streams), ``groups`` (tenants of one group share their lanes' streams), and the
    interleave key ``offset + stretch * depth`` of each op. ``syncs`` are sync points as
    fractions of the key range (rounds mode only)."""

    mode: str
    lanes: tuple[int, ...]
    groups: tuple[int, ...]
    offsets: tuple[float, ...]
    stretch: tuple[float, ...]
    syncs: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ScheduleError(f"genome mode {self.mode!r} unknown ({', '.join(MODES)})")
        n = len(self.lanes)
        if not (len(self.groups) == len(self.offsets) == len(self.stretch) == n):
            raise ScheduleError("genome: lanes, groups, offsets and stretch need one entry each")
        if any(k < 1 for k in self.lanes):
            raise ScheduleError("genome: every tenant needs at least one lane")
        if any(s <= 0 or not math.isfinite(s) for s in self.stretch):
            raise ScheduleError("genome: stretch must be positive")
        if any(not 0.0 < q < 1.0 for q in self.syncs):
            raise ScheduleError("genome: sync points are fractions strictly inside (0, 1)")
        # canonical form: groups numbered in order of first appearance, syncs sorted
        seen: dict[int, int] = {}
        canon = tuple(seen.setdefault(g, len(seen)) for g in self.groups)
        object.__setattr__(self, "groups", canon)
        object.__setattr__(self, "syncs", tuple(sorted(self.syncs)))

    @property
    def n(self) -> int:
        return len(self.lanes)

    def ident(self) -> tuple:
        """What makes two genomes the same plan (floats rounded; inactive genes dropped)."""
        if self.mode != "rounds":
            return (self.mode, self.lanes, self.groups)
        return (
            self.mode,
            self.lanes,
            self.groups,
            tuple(round(o, 3) for o in self.offsets),
            tuple(round(s, 3) for s in self.stretch),
            tuple(round(q, 3) for q in self.syncs),
        )

    def to_json(self) -> dict[str, object]:
        """The genes that shape the plan (interleaving and syncs only in rounds mode)."""
        d: dict[str, object] = {
            "mode": self.mode,
            "lanes": list(self.lanes),
            "groups": list(self.groups),
        }
        if self.mode == "rounds":
            d["offsets"] = [round(o, 6) for o in self.offsets]
            d["stretch"] = [round(s, 6) for s in self.stretch]
            d["syncs"] = [round(q, 6) for q in self.syncs]
        return d


@dataclass
class TenantContext:
    """Everything about a workload on a GPU that candidate plans share, computed once."""

    workload: Workload
    gpu: GPUSpec
    # how requests become host calls (simgpu.runtimes); None: the GPU's flat costs
    runtime: Runtime | None = None
    # bytes the run may allocate on the GPU; None: the GPU's memory
    memory_limit: int | None = None
    cache: KernelCache = field(init=False)
    tensors: list[Tensors] = field(init=False)
    limit: int = field(init=False)  # bytes the run may allocate: the limit or the GPU's
    capacity: int = field(init=False)  # what the requests in flight may hold together
    levels: list[dict[str, int]] = field(init=False)
    max_depth: int = field(init=False)
    _costs: dict[int, dict[str, float]] = field(default_factory=dict, init=False)
    _lanes: dict[tuple[int, int], list[list[str]]] = field(default_factory=dict, init=False)
    _lowered: dict[tuple[int, int], tuple[list[Cmd], list[str]]] = field(
        default_factory=dict, init=False
    )
    _alone: dict[tuple[int, int], tuple[float, float]] = field(default_factory=dict, init=False)
    _request: dict[tuple[int, int], int] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.cache = KernelCache(self.gpu)
        self.levels = [depth_levels(t.graph) for t in self.workload.tenants]
        self.max_depth = max(max(lv.values()) for lv in self.levels)
        tenants = self.workload.tenants
        self.capacity = 0  # set below; lanes(t, 1) needs no budget
        self.tensors = [
            request_tensors(t.graph, self.gpu, self.lowered(i, 1)[0]) for i, t in enumerate(tenants)
        ]
        if self.memory_limit is None:
            limit, what = gpu_capacity(self.gpu), f"the {self.gpu.name}'s memory"
        else:
            limit, what = self.memory_limit, "the memory limit"
        self.limit = limit
        check_weights(
            [t.name for t in tenants], [t.weight_bytes for t in self.tensors], limit, what
        )
        weights = sum(t.weight_bytes for t in self.tensors)
        self.capacity = limit - weights
        for i, t in enumerate(tenants):
            need = self.request_bytes(i, 1)
            if need > self.capacity:
                raise MemoryLimitError(
                    f"one request of tenant '{t.name}' needs {mb(need):.1f} MB of activations "
                    f"beside the tenants' {mb(weights):.1f} MB of weights: {what} "
                    f"({mb(limit):.1f} MB) is too small, {mb(weights + need):.1f} MB at least"
                )

    @property
    def graphs(self) -> list[OpGraph]:
        return [t.graph for t in self.workload.tenants]

    def lanes(self, t: int, k: int) -> list[list[str]]:
        """Tenant ``t``'s ops on ``k`` lanes, or on the most lanes below ``k`` whose
        request fits the memory budget (one lane always does)."""
        hit = self._lanes.get((t, k))
        if hit is None:
            g = self.workload.tenants[t].graph
            if t not in self._costs:
                self._costs[t] = op_costs(g, self.gpu, self.cache)
            hit = assign_lanes(g, k, self._costs[t])
            if k > 1 and lane_bound(self.tensors[t], hit) > self.capacity:
                fewer = max((c for c in LANE_CHOICES if c < k), default=1)
                hit = self.lanes(t, fewer)
            self._lanes[(t, k)] = hit
        return hit

    def request_bytes(self, t: int, k: int) -> int:
        """What admission reserves for one request of tenant ``t`` on ``k`` lanes."""
        hit = self._request.get((t, k))
        if hit is None:
            hit = self._request[(t, k)] = lane_bound(self.tensors[t], self.lanes(t, k))
        return hit

    def budget(self, g: Genome) -> MemoryBudget:
        """The memory admission of a run of ``g``: plain numbers for the engine."""
        return MemoryBudget(
            self.capacity, tuple(self.request_bytes(t, k) for t, k in enumerate(g.lanes))
        )

    def effective(self, g: Genome) -> Genome:
        """The same plan with each lane count replaced by the smallest one that gives the
        same lanes (a model two branches wide splits the same way over 2 or 6 lanes)."""
        lanes = []
        for t, k in enumerate(g.lanes):
            mine = self.lanes(t, k)
            lanes.append(next(c for c in (*LANE_CHOICES, k) if c <= k and self.lanes(t, c) == mine))
        return replace(g, lanes=tuple(lanes))

    def ident(self, g: Genome) -> tuple:
        """What makes two genomes the same plan on this workload."""
        return self.effective(g).ident()

    def lowered(self, t: int, k: int) -> tuple[list[Cmd], list[str]]:
        hit = self._lowered.get((t, k))
        if hit is None:
            g = self.workload.tenants[t].graph
            hit = self._lowered[(t, k)] = lower_tenant(
                t, g, self.lanes(t, k), self.gpu, self.cache, self.runtime
            )
        return hit

    def alone(self, t: int, k: int) -> tuple[float, float]:
        """(latency us, SM-busy us summed over SMs) of one request of tenant ``t`` with
        ``k`` lanes, run alone on the GPU: the runtime-aware input of the cost model."""
        hit = self._alone.get((t, k))
        if hit is None:
            from simgpu.sim.tenants import TenantSimulation

            tenant = replace(self.workload.tenants[t], arrival=Arrival("closed"), max_queue=None)
            lanes = self.lanes(t, k)
            plan = TenantPlan("alone", "independent", [lanes], [list(range(len(lanes)))])
            cmds, owner = self.lowered(t, k)
            prog = RequestProgram(0, cmds, chunk(owner, dict.fromkeys(owner, 0.0)), len(lanes))
            run = TenantSimulation(
                Workload((tenant,), requests=1), plan, self.gpu, programs=[prog]
            ).run()
            lat = run.requests[0].latency_us or 0.0
            hit = self._alone[(t, k)] = (lat, float(run.timeline.sm_busy(0).sum()))
        return hit

    # -- genome -> plan ------------------------------------------------------------------

    def keys(self, g: Genome, t: int) -> dict[str, float]:
        off, st = g.offsets[t], g.stretch[t]
        return {op: off + st * lv for op, lv in self.levels[t].items()}

    def plan(self, g: Genome, name: str = "candidate") -> TenantPlan:
        if g.n != len(self.workload.tenants):
            raise ScheduleError(
                f"genome for {g.n} tenants, workload has {len(self.workload.tenants)}"
            )
        lanes = [self.lanes(t, g.lanes[t]) for t in range(g.n)]
        # (lane, group) pairs numbered lane-major: every group's first lane gets a low id,
        # so few streams alias onto one hardware queue (stream id mod queue count)
        pairs = sorted({(j, g.groups[t]) for t in range(g.n) for j in range(len(lanes[t]))})
        sid = {p: i for i, p in enumerate(pairs)}
        ids = [[sid[(j, g.groups[t])] for j in range(len(lanes[t]))] for t in range(g.n)]
        keys = [self.keys(g, t) for t in range(g.n)]
        syncs: tuple[float, ...] = ()
        if g.mode == "rounds" and g.syncs:
            lo = min(min(k.values()) for k in keys)
            hi = max(max(k.values()) for k in keys)
            syncs = tuple(lo + q * (hi - lo) for q in g.syncs)
        return TenantPlan(name, g.mode, lanes, ids, keys, syncs, meta={"genome": g.to_json()})

    def programs(self, g: Genome) -> list[RequestProgram]:
        out = []
        for t in range(g.n):
            cmds, owner = self.lowered(t, g.lanes[t])
            out.append(
                RequestProgram(
                    t, cmds, chunk(owner, self.keys(g, t)), len(self.lanes(t, g.lanes[t]))
                )
            )
        return out


def baseline_genome(name: str, n: int, max_depth: int) -> Genome:
    """The plain runtimes as genomes (see :mod:`simgpu.multitenant.plan`)."""
    ones = (1,) * n
    zeros = (0.0,) * n
    own = tuple(range(n))
    if name == "sequential":
        return Genome("exclusive", ones, (0,) * n, zeros, (1.0,) * n)
    if name == "multistream":
        return Genome("independent", ones, own, zeros, (1.0,) * n)
    if name == "breadth-first":
        return Genome("rounds", ones, own, zeros, (1.0,) * n)
    if name == "depth-first":
        step = float(max_depth + 1)
        return Genome("rounds", ones, own, tuple(t * step for t in range(n)), (1.0,) * n)
    raise ScheduleError(f"unknown baseline {name!r} ({', '.join(BASELINES)})")
