"""Optimal: an exact search over stage schedules, for graphs small enough to enumerate.

It exists to give every heuristic an optimality gap (``optimality_gaps``). The search
space is that of IOS's dynamic program without its pruning:

* a *stage* is a set of concurrent groups followed by a synchronize; a group is a
  list of ops on one stream. Ops of different groups of a stage must be independent
  (no edge between them: the stage lowers to streams with no events), so every weakly
  connected component of the stage's ops lies inside one group, and **every** set
  partition of those components is a valid stage — all of them are enumerated (no
  ``r``/``s`` limit);
* a schedule is a sequence of stages; the last stage of a downward-closed set ``S`` is
  an *ending* ``E`` of ``S`` (no edge from ``E`` into ``S - E``), and
  ``cost[S] = min over endings E, partitions P of E: cost[S - E] + lat(E, P) + sync``,
  a bitmask DP over downward-closed sets.

Issue order is canonical, as in IOS's measurements: inside a group ops run in the
graph's topological order, and groups are issued by their first op. The search is
therefore exact over *which ops share a stage and which share a stream*, not over
launch orders of independent ops (that space is factorially larger).

Stage latency comes from the Profiler (the simulator): the stage's ops alone, group
``i`` on stream ``i``, exactly the commands ``lower`` emits for that stage. A
synchronize returns ``sync_api_us`` after the device drains and the simulated GPU
keeps no state across it, so the latency of the whole schedule is the sum of its stage
latencies plus one ``sync_api_us`` per barrier — what the DP minimises. A stage's
latency is at least the host time to issue its commands plus the launch latency; that
bound prunes endings that cannot beat the best found (branch and bound), leaving the
result exact.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from schedulers.base import Profiler, SchedulerError, SchedulerSkipped, register, run_scheduler
from simgpu.graph import Op, OpGraph
from simgpu.hardware import Machine
from simgpu.kernels import kernel_floor_us
from simgpu.program import Command, Launch, StreamProgram
from simgpu.schedule import Schedule, StageSchedule, StreamSchedule

MAX_OPS = 20  # 2^20 subsets take a second or two to enumerate; 2^40 would take days
MAX_NODES = 10**7  # search nodes and ending candidates: minutes at most


@register("optimal", runtime="cudnn")
@dataclass
class Optimal:
    """Exact DP over all stage schedules (every ending, every group partition); small graphs."""

    max_ops: int = 12  # at most MAX_OPS
    max_nodes: int = 2_000_000  # search nodes and ending candidates, at most MAX_NODES

    def schedule(self, graph: OpGraph, profiler: Profiler) -> StageSchedule:
        if not 1 <= self.max_ops <= MAX_OPS:
            raise SchedulerError(
                f"option optimal.max_ops must be 1..{MAX_OPS} (the DP visits every subset of "
                f"the ops: 2^n), got {self.max_ops}"
            )
        if not 1 <= self.max_nodes <= MAX_NODES:
            raise SchedulerError(
                f"option optimal.max_nodes must be 1..{MAX_NODES:,}, got {self.max_nodes}"
            )
        if len(graph) > self.max_ops:
            raise SchedulerSkipped(
                f"optimal handles at most {self.max_ops} ops; graph has {len(graph)}"
            )
        search = _Search(graph, profiler, self.max_nodes)
        stages, total = search.run()
        return StageSchedule(
            stages,
            meta={
                "predicted_us": total,
                "states": search.states,
                "nodes": search.nodes,
                "scanned": search.scanned,
                "stage_measurements": search.measured,
            },
        )


@dataclass
class _Known:
    """What the partition search of one ending has established: the best partition with
    latency below ``bound`` is ``groups`` (None if there is none)."""

    bound: float
    lat: float
    groups: tuple[int, ...] | None


class _Search:
    """The bitmask DP. Bit ``i`` is ``graph.topo_order[i]``, so ascending bit order is a
    topological order and every tie is broken the same way on every run."""

    def __init__(self, graph: OpGraph, profiler: Profiler, budget: int) -> None:
        self.graph = graph
        self.profiler = profiler
        self.budget = budget
        self.names = list(graph.topo_order)
        idx = {n: i for i, n in enumerate(self.names)}
        n = len(self.names)
        self.pred = [0] * n
        self.succ = [0] * n
        for u, v in graph.edges():
            self.pred[idx[v]] |= 1 << idx[u]
            self.succ[idx[u]] |= 1 << idx[v]
        self.nbr = [self.pred[i] | self.succ[i] for i in range(n)]
        gpu = profiler.gpu
        self.sync_us = gpu.sync_api_us
        self.latency_us = gpu.launch_latency_us
        # per op, its launches as the runtime lowers them, and their (host cost, minimum
        # device time or None for a no-op)
        self.launches = [profiler.launches(graph, name) for name in self.names]
        self.cmds: list[list[tuple[float, float | None]]] = [
            [
                (cost, None if k is None else gpu.kernel_gap_us + kernel_floor_us(k, gpu))
                for cost, k in profiler.op_commands(graph, name)
            ]
            for name in self.names
        ]
        self.host_us = [sum(c for c, _ in cs) for cs in self.cmds]
        self.known: dict[int, _Known] = {}
        self.states = 0
        self.nodes = 0
        self.scanned = 0  # ending candidates looked at
        self.measured = 0

    # -- structure ------------------------------------------------------------------------

    @staticmethod
    def _bits(mask: int) -> Iterator[int]:
        while mask:
            low = mask & -mask
            yield low.bit_length() - 1
            mask ^= low

    def _downward_closed(self) -> list[int]:
        n = len(self.names)
        return [
            s for s in range(1, 1 << n) if all(self.pred[i] & ~s == 0 for i in self._bits(s))
        ]  # ascending masks: every proper subset comes first

    def _endings(self, s: int) -> list[int]:
        """Non-empty E ⊆ S with no edge from E into S - E; largest mask (S itself) first,
        so a good bound is found early."""
        out = []
        e = s
        while e:
            self.scanned += 1  # 2^|S| subsets: counted, so the budget bounds the time too
            if self.scanned + self.nodes > self.budget:
                self._over()
            if all(self.succ[i] & s & ~e == 0 for i in self._bits(e)):
                out.append(e)
            e = (e - 1) & s
        return out

    def _over(self) -> None:
        raise SchedulerError(
            f"optimal: graph '{self.graph.name}' needs more than {self.budget} search "
            f"nodes and ending candidates (raise optimal.max_nodes, or schedule a smaller "
            "graph)"
        )

    def _components(self, e: int) -> list[int]:
        comps = []
        rest = e
        while rest:
            low = rest & -rest
            comp, frontier = low, low
            while frontier:
                grow = 0
                for i in self._bits(frontier):
                    grow |= self.nbr[i]
                frontier = grow & e & ~comp
                comp |= frontier
            comps.append(comp)
            rest &= ~comp
        return comps  # ordered by lowest bit

    # -- bounds and measurement -----------------------------------------------------------

    def _host_bound(self, e: int) -> float:
        """Any stage on ``e`` ends after the host issued all its commands and the last
        became visible to the GPU."""
        return sum(self.host_us[i] for i in self._bits(e)) + self.latency_us

    def _chain_bound(self, groups: list[int]) -> float:
        """A lower bound on the stage's latency: commands become visible at their issue
        time plus the launch latency; each group is one stream, so its commands run one
        after another; a kernel takes at least its gap plus its floor in any company
        (``kernel_floor_us``). Adding ops to any
        group only delays later issues and lengthens chains, so it also bounds every
        completion of a partial partition."""
        t = 0.0
        worst = 0.0
        for g in groups:
            end = 0.0
            for i in self._bits(g):
                for cost, dmin in self.cmds[i]:
                    t += cost
                    ready = t + self.latency_us
                    if end < ready:
                        end = ready
                    if dmin is not None:
                        end += dmin
            if end > worst:
                worst = end
        return worst

    def _measure(self, groups: tuple[int, ...]) -> float:
        cmds: list[Command] = []
        for gi, g in enumerate(groups):
            for i in self._bits(g):
                cmds.extend(Launch(c.op, c.kernel, gi, 0, c.host_us) for c in self.launches[i])
        self.measured += 1
        return self.profiler.measure_program(StreamProgram(cmds, name="optimal-stage"))

    def _best_stage(self, e: int, bound: float) -> tuple[float, tuple[int, ...] | None]:
        """The fastest partition of ``e`` into groups if one is faster than ``bound``."""
        k = self.known.get(e)
        if k is not None and bound <= k.bound:
            return (k.lat, k.groups) if k.lat < bound else (float("inf"), None)
        comps = self._components(e)
        floor = self._host_bound(e)
        best: list = [float("inf"), None, bound]  # lat, groups, current cut-off
        groups: list[int] = []

        def rec(j: int) -> None:
            self.nodes += 1
            if self.nodes + self.scanned > self.budget:
                self._over()
            if max(floor, self._chain_bound(groups)) >= best[2]:
                return
            if j == len(comps):
                lat = self._measure(tuple(groups))
                if lat < best[2]:
                    best[0], best[1], best[2] = lat, tuple(groups), lat
                return
            c = comps[j]
            for gi in range(len(groups)):  # join an existing group ...
                groups[gi] |= c
                rec(j + 1)
                groups[gi] &= ~c
            groups.append(c)  # ... or open a new one (restricted growth: each partition once)
            rec(j + 1)
            groups.pop()

        rec(0)
        self.known[e] = _Known(bound, best[0], best[1])
        return best[0], best[1]

    # -- the DP ---------------------------------------------------------------------------

    def run(self) -> tuple[list[list[list[str]]], float]:
        cost: dict[int, float] = {0: 0.0}
        choice: dict[int, tuple[int, tuple[int, ...]]] = {}
        for s in self._downward_closed():
            self.states += 1
            best = float("inf")
            pick: tuple[int, tuple[int, ...]] | None = None
            for e in self._endings(s):
                before = cost[s & ~e] + self.sync_us
                if before + self._host_bound(e) >= best:
                    continue
                lat, groups = self._best_stage(e, best - before)
                if groups is not None and before + lat < best:
                    best, pick = before + lat, (e, groups)
            assert pick is not None
            cost[s], choice[s] = best, pick
        full = (1 << len(self.names)) - 1
        stages: list[list[list[str]]] = []
        s = full
        while s:
            e, groups = choice[s]
            stages.append([[self.names[i] for i in self._bits(g)] for g in groups])
            s &= ~e
        stages.reverse()
        return stages, cost[full] - self.sync_us


# --- optimality gaps ---------------------------------------------------------------------


@dataclass(frozen=True)
class Gap:
    """One scheduler's latency against the optimal stage schedule's. ``in_space`` says
    whether its schedule lies in optimal's search space (``in_search_space``): only then
    is a negative gap impossible — a stream schedule with events, a CUDA Graph or a
    rewritten graph can beat every stage schedule."""

    scheduler: str
    latency_us: float
    optimal_us: float
    in_space: bool

    @property
    def gap(self) -> float:
        """Relative excess over optimal: 0.1 means 10 % slower. A graph with no work on
        a GPU with no costs takes 0 us: any schedule of it is then optimal."""
        if self.optimal_us == 0.0:
            return 0.0 if self.latency_us == 0.0 else math.inf
        return self.latency_us / self.optimal_us - 1.0


def in_search_space(schedule: Schedule, graph: OpGraph) -> bool:
    """Whether ``schedule`` is one of the schedules ``optimal`` ranges over, so that it can
    never beat it: eager stages with synchronize barriers on the original graph, ops of a
    group in the graph's topological order, groups issued by their first op. One eager
    stream in topological order (``sequential``) is the one-stage, one-group case."""
    if schedule.graph_mode or schedule.graph is not None:
        return False
    if isinstance(schedule, StreamSchedule):
        if schedule.devices not in (None, [0]):
            return False
        stages = [[list(schedule.streams[0])]] if len(schedule.streams) == 1 else []
        if not stages:
            return False
    else:
        if schedule.barrier != "sync":
            return False
        stages = schedule.stages
    pos = {n: i for i, n in enumerate(graph.topo_order)}
    for stage in stages:
        if any(not g for g in stage):
            return False
        firsts = [pos[g[0]] for g in stage]
        if firsts != sorted(firsts):
            return False
        for g in stage:
            idx = [pos[n] for n in g]
            if idx != sorted(idx):
                return False
    return True


def cut_out(graph: OpGraph, ops: Sequence[str], name: str | None = None) -> OpGraph:
    """``ops`` as a graph of their own, small enough for ``optimal``: every tensor they
    read from outside becomes an ``input`` op of the same shape (named ``in0``, ``in1``,
    ... in order of first use). Ops keep their names and attributes."""
    wanted = set(ops)
    unknown = [n for n in ops if n not in graph]
    if unknown:
        raise SchedulerError(f"cut_out: op '{unknown[0]}' is not in graph '{graph.name}'")
    inside = [n for n in graph.topo_order if n in wanted]
    outside: dict[str, Op] = {}
    for n in inside:
        for src in graph[n].inputs:
            if src not in wanted and src not in outside:
                s = graph[src]
                outside[src] = Op(f"in{len(outside)}", "input", (), s.output_shape, s.dtype)
    body = []
    for n in inside:
        op = graph[n]
        ins = tuple(outside[i].name if i in outside else i for i in op.inputs)
        body.append(Op(n, op.kind, ins, op.output_shape, op.dtype, dict(op.attrs)))
    return OpGraph([*outside.values(), *body], name=name or f"{graph.name}-cut")


def optimality_gaps(
    graph: OpGraph,
    machine: Machine,
    names: Sequence[str],
    options: Mapping[str, Mapping[str, Any]] | None = None,
    runtime: str | None = None,
) -> list[Gap]:
    """Run ``optimal`` and each of ``names`` on ``graph`` and report their gaps, in the
    order given. Latencies are full simulations of each schedule, as ``simgpu run`` does,
    every schedule under one runtime: ``runtime``, else optimal's own (like with like)."""
    options = options or {}
    opt = run_scheduler("optimal", graph, machine, options.get("optimal"), runtime)
    opt_us = opt.timeline.makespan_us
    out = []
    for name in names:
        r = run_scheduler(name, graph, machine, options.get(name), opt.runtime)
        comparable = in_search_space(r.schedule, graph)
        out.append(Gap(name, r.timeline.makespan_us, opt_us, comparable))
    return out
