"""IOS (Ding et al., MLSys 2021): a dynamic program over stage endings.

A schedule is a sequence of stages with a barrier after each. For a set S of ops still
to run (closed under predecessors), ``cost[S] = min over endings E of cost[S - E] +
latency(E)``, where an ending E ⊆ S has no edge from E into S - E, so it can run last.
Two stage strategies:

* *parallel* — as in the paper, E is partitioned into its weakly connected components
  (the finest split with no edge between groups); each group runs in topological order
  on its own stream. Pruning: at most ``r`` ops per group, at most ``s`` groups.
* *merge* — two or more sibling convolutions that :mod:`schedulers._merge` can merge run
  as one wider conv (an explicit graph rewrite; the schedule carries the new graph).

Blocks and parts: the graph is cut into blocks at single-op cut points (every other op
is an ancestor or a descendant of the cut), as IOS's blocks; a block of more than
``part_size`` units is split where the fewest tensors are live (NASNet's cell
boundaries), small pieces packed together. The DP runs per part over bitmask states.

By default (``units="auto"``) the DP's units are ops wherever a part's op-level space
has at most ``state_limit`` (20,000) states, and IOS's nodes (chains, below) in the
parts where it has more, halved at the fewest live tensors if still over: Inception V3
is searched at op granularity, RandWire and NASNet mostly at IOS's node granularity,
in spaces larger than IOS's own (distinct stages: RandWire-large 374,377 against IOS's
212,895, NASNet-A Large 640,490 against about 241,000), searched in 79 s and 119 s on one
core. Within a part nothing caps the search: ``r`` units per group and ``s`` groups per
stage, exactly. Options:

* ``units="ops"``: ops everywhere, the space the paper's r and s would give over this
  zoo's one-op-per-kernel graphs; RandWire and NASNet parts then reach 589,130 and
  437,898 states, and are refused unless ``state_limit=0``.
* ``units="chains"``: IOS's IR holds a chain of ops (relu-sepconv-bn) as one sequential
  node where this zoo has one op per kernel; with chains as units, ``r`` counts chains
  as IOS counts nodes (an op whose only input has no other consumer joins its chain).
  On RandWire this space is IOS's: about as many distinct stages as IOS measured.
* ``max_states=N`` (capped mode, off by default): a block whose ops give more than N
  states uses its chains, a part with more is halved. It shrinks the space, and moves
  the latency either way.
* ``state_limit`` (default 20,000, every zoo model searched in minutes on one core): with
  ``units="ops"`` or ``"chains"`` a part with
  more states is refused with an error naming these options, rather than searched for
  hours (0 searches anyway); with ``"auto"`` it is where chains take over.

Stage latency comes from :meth:`Profiler.measure_stage` (each group on its own stream,
then a synchronize), memoised per ending here and by kernel content in the profiler.
A synchronize leaves the GPU idle, so a stage schedule costs the sum of its stages: the
DP is exact for its model. It is also branch and bound, best first: an ending is
measured only if its lower bounds (the host time to issue it; per stream the least
device time of its kernels) say it could beat every other ending of its state — the
result is the one measuring every ending would give, with far fewer measurements. The
statistics keep the three apart: ``stages_paper`` (every distinct ending and strategy
the paper's search measures), ``stages_measured`` (after the bounds), ``simulations``
(distinct simulations after the memo of identical stages).

One lowering-level step follows the search: consecutive stages of a single group each
run on one stream, so the barriers between them order nothing and are dropped (their
ops become one group, in topological order). It never slows a schedule, and with
``r = s = 1`` it makes IOS's schedule exactly the sequential one.

*Memory limit* (``Profiler.memory_limit``, bytes per GPU; issue 17): "stages whose live
set fits". An ending E of state S is admitted only if the weights and inputs, the
tensors live once ``S - E`` is done (kept per prefix, :class:`_PartMemory`), and what
E's groups allocate fit: per group its own sequential peak of outputs and workspaces
(groups are connected components, so each frees its own tensors), or for a merged stage
the merged conv's output, workspace and the weights its padded kernel adds. Endings
that do not fit are never taken and states only they reach never visited, so the DP is
exact over the stage schedules its bound admits. Then:

* a part with no admitted sequence (units of chains can miss an order of single ops)
  runs its ops one at a time in topological order if that fits, else a one-line
  :class:`SchedulerError` names the part and its peak;
* the schedule is replayed (:meth:`Profiler.memory`); a merge can keep its members'
  outputs alive until their last reader and widens weights for the whole run, which no
  state of the DP sees, so a replay over the limit is searched again without merges
  (where the bound holds for the whole run), and a replay still over is an error, never
  a schedule;
* one-group stages are joined in their own order, not the graph's (a later stage's
  allocation could otherwise start while an earlier stage's tensors live), and the
  faster of the DP's schedule and one stream (in stage order, or in the graph's order
  when that fits) is returned: the DP prices a barrier per stage that the joined run
  does not pay, and a limit pushes it towards such stages.

A limit that rejects no stage changes nothing: the schedule is the unconstrained one.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import time
from dataclasses import dataclass
from typing import Any

from schedulers._merge import apply_merges, merge_key, merged_name, merged_ops
from schedulers.base import Profiler, SchedulerError, register
from simgpu.graph import Op, OpGraph
from simgpu.kernels import kernel_floor_us
from simgpu.memory import MB, Tensors, tensors_of
from simgpu.schedule import StageSchedule

STRATEGIES = ("parallel", "merge", "both")
# endings of one DP state (and connected groups of one part): the zoo's largest at r=3,
# s=8 is about 10,000 (BERT-base); with r=s=64 there can be billions, which no search
# finishes
MAX_ENDINGS = 200_000
UNITS = ("auto", "ops", "chains")
# under a memory limit, the strategy an ending may still use, in the bits above its units
_PARALLEL, _MERGED = 1, 2


# --- blocks and parts -------------------------------------------------------------------


def cut_points(graph: OpGraph) -> list[str]:
    """Ops every other op is an ancestor or a descendant of, in topological order."""
    order = graph.topo_order
    n = len(order)
    idx = {op: i for i, op in enumerate(order)}
    anc = [0] * n
    for i, op in enumerate(order):
        a = 0
        for p in graph.predecessors(op):
            j = idx[p]
            a |= anc[j] | (1 << j)
        anc[i] = a
    desc = [0] * n
    for i in range(n - 1, -1, -1):
        d = 0
        for c in graph.successors(order[i]):
            j = idx[c]
            d |= desc[j] | (1 << j)
        desc[i] = d
    return [order[i] for i in range(n) if (anc[i] | desc[i]).bit_count() == n - 1]


def blocks(graph: OpGraph) -> list[list[str]]:
    """The graph cut after every cut point: each block ends at a cut (the last may not)."""
    cuts = set(cut_points(graph))
    out: list[list[str]] = [[]]
    for op in graph.topo_order:
        out[-1].append(op)
        if op in cuts:
            out.append([])
    return [b for b in out if b]


def frontier(graph: OpGraph, units: list[list[str]]) -> list[int]:
    """``fr[b]``: how many of ``units[:b]`` feed a unit at or after position ``b`` — the
    tensors live across a cut there (units feeding beyond the list count to its end)."""
    n = len(units)
    pos = {o: i for i, u in enumerate(units) for o in u}
    diff = [0] * (n + 2)
    for i, u in enumerate(units):
        last = i
        for o in u:
            for c in graph.successors(o):
                last = max(last, pos.get(c, n))
        if last > i:
            diff[i + 1] += 1
            diff[last + 1] -= 1
    fr = [0] * (n + 1)
    acc = 0
    for b in range(n + 1):
        acc += diff[b]
        fr[b] = acc
    return fr


def _cut_at(fr: list[int], lo: int, hi: int) -> int:
    """The boundary in lo..hi with the fewest live tensors, the latest of equals."""
    return min(range(lo, hi + 1), key=lambda b: (fr[b], -b))


def chain_units(graph: OpGraph, ops: list[str]) -> list[list[str]]:
    """Maximal chains of ``ops``: an op whose only input has no other consumer continues
    that input's chain. They are what IOS's IR holds as one node (a Sequential, e.g.
    relu-sepconv-bn), where this zoo has one op per kernel."""
    inside = set(ops)
    units: list[list[str]] = []
    unit_of: dict[str, int] = {}
    for o in ops:
        ps = graph.predecessors(o)
        if len(ps) == 1 and ps[0] in inside and len(graph.successors(ps[0])) == 1:
            u = unit_of[ps[0]]
            units[u].append(o)
        else:
            u = len(units)
            units.append([o])
        unit_of[o] = u
    return units


def unit_masks(graph: OpGraph, units: list[list[str]]) -> tuple[list[int], list[int]]:
    """Successor and predecessor bitmasks between units (edges leaving them ignored)."""
    unit_of = {o: i for i, u in enumerate(units) for o in u}
    succ = [0] * len(units)
    pred = [0] * len(units)
    for i, u in enumerate(units):
        for o in u:
            for c in graph.successors(o):
                j = unit_of.get(c)
                if j is not None and j != i:
                    succ[i] |= 1 << j
                    pred[j] |= 1 << i
    return succ, pred


def count_states(succ: list[int], pred: list[int], cap: int) -> int:
    """The number of down-sets (DP states) of a DAG given by bitmasks, or ``cap + 1`` if
    there are more. Independent components multiply; otherwise a middle node x splits
    the count into down-sets without x (drop x's descendants) and with it (drop x's
    ancestors) — convex subsets all the way, so edges inside them tell reachability."""
    m = len(succ)
    adj = [succ[i] | pred[i] for i in range(m)]
    memo: dict[int, int] = {}
    over = cap + 1

    def closure(x: int, S: int, nb: list[int]) -> int:
        c = fr = 1 << x
        while fr:
            low = fr & -fr
            fr ^= low
            new = nb[low.bit_length() - 1] & S & ~c
            c |= new
            fr |= new
        return c

    def count(S: int) -> int:
        if S == 0:
            return 1
        hit = memo.get(S)
        if hit is not None:
            return hit
        low = S & -S
        comp = closure(low.bit_length() - 1, S, adj)
        if comp != S:
            a = count(comp)
            total = over if a >= over else min(over, a * count(S & ~comp))
        else:
            bits = [i for i in range(m) if S >> i & 1]
            x = bits[len(bits) // 2]
            a = count(S & ~closure(x, S, succ))
            total = over if a >= over else min(over, a + count(S & ~closure(x, S, pred)))
        memo[S] = total
        return total

    return count((1 << m) - 1)


def _states(graph: OpGraph, units: list[list[str]], cap: int) -> int:
    return count_states(*unit_masks(graph, units), cap)


def _fit(graph: OpGraph, units: list[list[str]], max_states: int) -> list[list[list[str]]]:
    """Halve ``units`` where the fewest tensors are live until each piece has at most
    ``max_states`` DP states."""
    n = len(units)
    if n == 1 or _states(graph, units, max_states) <= max_states:
        return [units]
    b = _cut_at(frontier(graph, units), max(1, n // 4), max(1, 3 * n // 4))
    return _fit(graph, units[:b], max_states) + _fit(graph, units[b:], max_states)


def plan_parts(
    graph: OpGraph,
    part_size: int,
    max_states: int = 0,
    units: str = "ops",
    state_limit: int = 0,
) -> list[list[list[str]]]:
    """The parts the DP runs on, each a list of units (the DP's nodes) in topological
    order; every part depends only on itself and earlier ones, so a schedule is the
    concatenation of the parts' schedules.

    Per block (cut at single-op cut points, as IOS's blocks) the units are its ops, or
    with ``units="chains"`` its maximal chains (IOS's IR holds such a chain as one
    sequential node). A block of more than ``part_size`` units is split where the fewest
    tensors are live (NASNet's cell boundaries), pieces of at least half ``part_size``;
    consecutive small pieces are packed into one part while it stays within
    ``part_size`` units. That is the paper's partition, and the default.

    ``max_states > 0`` is the capped mode (off by default; it shrinks the space): a block
    whose ops give more than ``max_states`` DP states uses its chains instead, and a
    piece with too many states is halved until it fits. ``units="auto"`` is the same
    rule at ``state_limit``: ops wherever exact search at op granularity is feasible,
    IOS's nodes (chains) where it is not, and a piece of chains still over the limit
    halved where the fewest tensors are live, as IOS's blocks cut NASNet at its cells.
    """
    if units == "auto":  # state_limit 0: no limit, every part at op granularity
        units, max_states = "ops", max_states or state_limit
    capped = max_states > 0
    pieces: list[list[list[str]]] = []
    for block in blocks(graph):
        us = chain_units(graph, block) if units == "chains" else [[o] for o in block]
        if capped and units == "ops" and _states(graph, us, max_states) > max_states:
            chains = chain_units(graph, block)
            if len(chains) < len(us):
                us = chains
        fr = frontier(graph, us)
        start = 0
        while len(us) - start > part_size:
            b = _cut_at(fr, start + max(1, part_size // 2), start + part_size)
            piece = us[start:b]
            pieces.extend(_fit(graph, piece, max_states) if capped else [piece])
            start = b
        pieces.extend(_fit(graph, us[start:], max_states) if capped else [us[start:]])
    parts: list[list[list[str]]] = []
    for piece in pieces:
        if parts and len(parts[-1]) + len(piece) <= part_size:
            joined = parts[-1] + piece
            if not capped or _states(graph, joined, max_states) <= max_states:
                parts[-1] = joined
                continue
        parts.append(piece)
    return parts


# --- the DP over one part ---------------------------------------------------------------


@dataclass
class PartStats:
    ops: int
    units: int  # DP nodes: ops, or chains of ops when single ops give too many states
    chains: bool
    states: int = 0
    transitions: int = 0
    paper_stages: int = 0  # distinct (ending, strategy) pairs: what IOS would measure
    stages: int = 0  # of those, measured here: the rest the exact bounds ruled out
    wall_s: float = 0.0
    latency_us: float = 0.0


class _PartMemory:
    """Live bytes of one part's DP states and stages, for a memory limit.

    A DP state S is a prefix (closed under predecessors) and an ending E of it runs
    last, after the ops of earlier parts and the part's units in ``S - E``. Every stage
    before E has ended (a barrier), so as E starts exactly the tensors of done ops that
    a pending op reads (or that are graph outputs) are live: :meth:`live` of the done
    prefix, kept per prefix and derived from the prefix less its last unit, so a prefix
    costs the reads of one unit. A stage's groups are its connected components,
    so a tensor one group allocates is read inside that group or after the stage: each
    group runs its ops in order on its own stream and holds at most its own sequential
    peak (:meth:`group_peak`; tensors it frees that were live before the stage are not
    credited), and the stage at most ``live(S)`` plus the sum over its groups. Weights
    and graph inputs are resident (``budget`` is the limit less them)."""

    def __init__(
        self,
        tensors: Tensors,
        units: list[list[str]],
        done_before: set[str],
        limit: int,
        profiler: Profiler,
    ) -> None:
        t = self.t = tensors
        self.profiler = profiler
        self.done_before = done_before
        self.budget = limit - t.resident()
        m = len(units)
        self.full = (1 << m) - 1
        unit_of = {o: i for i, u in enumerate(units) for o in u}
        inputs = set(t.inputs)
        self.inputs = inputs
        # per unit: (size, part readers, always live) of each storage it allocates, and
        # (size, part readers) of each storage allocated before it that it reads and
        # that dies with its last reader in this part
        self.prod: list[list[tuple[int, int, bool]]] = [[] for _ in range(m)]
        self.cons: list[list[tuple[int, int]]] = [[] for _ in range(m)]
        for r, size in t.size.items():
            if r in inputs or not size:
                continue
            pu = unit_of.get(r)
            if pu is None and r not in done_before:
                continue  # allocated by a later part
            mask = 0
            later = False
            for u in t.readers[r]:
                j = unit_of.get(u)
                if j is not None:
                    mask |= 1 << j
                elif u not in done_before:
                    later = True
            always = later or r in t.outputs
            if pu is not None:
                self.prod[pu].append((size, mask & ~(1 << pu), always))
                mask &= ~(1 << pu)
            if always:
                continue
            rest = mask
            while rest:
                low = rest & -rest
                rest ^= low
                self.cons[low.bit_length() - 1].append((size, mask))
        self.live_memo: dict[int, int] = {0: t.live_after(done_before)}
        self.group_memo: dict[int, int] = {}
        self.bound_memo: dict[int, int] = {}
        self.merged_memo: dict[int, int] = {}

    def live(self, P: int) -> int:
        """Activation bytes live once the units of prefix P (and earlier parts) are done
        and no other op has started."""
        memo = self.live_memo
        v = memo.get(P)
        if v is not None:
            return v
        path: list[tuple[int, int]] = []
        while P not in memo:
            # P's unit of the highest index has no successor in P: P without it is a
            # prefix too
            u = P.bit_length() - 1
            path.append((P, u))
            P ^= 1 << u
        v = memo[P]
        for P, u in reversed(path):
            for size, mask, always in self.prod[u]:
                if always or mask & ~P:
                    v += size
            for size, mask in self.cons[u]:
                if not mask & ~P:
                    v -= size
            memo[P] = v
        return v

    def group_peak(self, g: int, ops: list[str]) -> int:
        """The most bytes group ``g`` (its ops in order, one stream) holds at once of
        what it allocates: outputs until their last reader in the group ends (never,
        if read after it), and each op's workspace while it runs."""
        hit = self.group_memo.get(g)
        if hit is not None:
            return hit
        t = self.t
        pos = {o: i for i, o in enumerate(ops)}
        freed = [0] * len(ops)
        for o in ops:
            if t.root[o] == o and o not in self.inputs and o not in t.outputs:
                rs = t.readers[o]
                if rs and all(x in pos for x in rs):
                    freed[max(pos[x] for x in rs)] += t.size[o]
        cur = peak = 0
        for i, o in enumerate(ops):
            if t.root[o] == o and o not in self.inputs:
                cur += t.size[o]
            peak = max(peak, cur + t.workspace[o])
            cur -= freed[i]
        self.group_memo[g] = peak
        return peak

    def merged_peak(self, E: int, graph: OpGraph, ops: list[str]) -> int:
        """Bytes a merged stage allocates: the merged conv's output (the members' outputs
        side by side) and its workspace, plus the weights the padded kernel adds (held
        for the whole run; counted here so that the stage alone stays honest)."""
        hit = self.merged_memo.get(E)
        if hit is not None:
            return hit
        conv, slices = merged_ops(graph, ops)
        src = graph[conv.inputs[0]]
        frag = OpGraph(
            [Op(src.name, "input", (), src.output_shape, src.dtype), conv, *slices],
            name=f"{graph.name}:merge",
        )
        ft = tensors_of(frag, self.profiler.gpu, self.profiler.kernels)
        extra = ft.weights[conv.name] - sum(self.t.weights[o] for o in ops)
        hit = ft.size[conv.name] + ft.workspace[conv.name] + max(0, extra)
        self.merged_memo[E] = hit
        return hit

    def sequential_peak(self, ops: list[str]) -> int:
        """Exact activation peak of ``ops`` (a whole part, in a topological order) on one
        stream from the part's first state: each storage freed as its last reader ends."""
        t = self.t
        left = {r: sum(1 for u in us if u not in self.done_before) for r, us in t.readers.items()}
        reads: dict[str, list[str]] = {}
        for r, us in t.readers.items():
            for u in us:
                reads.setdefault(u, []).append(r)
        cur = peak = self.live_memo[0]
        for o in ops:
            if t.root[o] == o and o not in self.inputs:
                cur += t.size[o]
            peak = max(peak, cur + t.workspace[o])
            for r in reads.get(o, ()):
                left[r] -= 1
                if not left[r] and r not in t.outputs and r not in self.inputs:
                    cur -= t.size[r]
        return peak


class _PartSearch:
    """The DP over the ops of one part; states and endings are bitmasks over them."""

    def __init__(
        self,
        graph: OpGraph,
        units: list[list[str]],
        position: dict[str, int],
        profiler: Profiler,
        r: int,
        s: int,
        parallel: bool,
        merge: bool,
        memory: _PartMemory | None = None,
    ) -> None:
        self.graph = graph
        self.units = units
        self.mem = memory  # None: no memory limit
        self.rejected = 0  # endings, or strategies of one, the limit ruled out
        self.position = position
        self.profiler = profiler
        self.s = s
        self.parallel = parallel
        self.merge = merge
        m = self.m = len(units)
        self.succ, pred = unit_masks(graph, units)
        self.adj = [self.succ[i] | pred[i] for i in range(m)]
        # merge classes: single convs of one class (and only those) merge in any combination
        self.mclass = [-1] * m
        if merge:
            ids: dict[tuple, int] = {}
            for i, u in enumerate(units):
                key = merge_key(graph, u[0]) if len(u) == 1 else None
                if key is not None:
                    self.mclass[i] = ids.setdefault(key, len(ids))
        # host time to issue each unit: a stage can end no earlier than its host has
        # issued every command, the last became visible and the synchronize returned
        gpu = profiler.gpu
        # per op, its commands as the runtime lowers them: (host time, least device time
        # or None for a view); a kernel takes at least its start-up gap plus its floor in
        # any company
        self.cmds: dict[str, list[tuple[float, float | None]]] = {}
        for u in units:
            for o in u:
                self.cmds[o] = [
                    (cost, None if k is None else gpu.kernel_gap_us + kernel_floor_us(k, gpu))
                    for cost, k in profiler.op_commands(graph, o)
                ]
        self.host = [sum(c for o in u for c, _ in self.cmds[o]) for u in units]
        self.fixed_us = gpu.launch_latency_us + gpu.sync_api_us
        # a merged conv's launch costs at least the cheapest launch of the part's ops (it
        # is a conv like them), and each of its views a view's dispatch
        launch = min((c for cs in self.cmds.values() for c, d in cs if d is not None), default=0.0)
        self.merge_host = (launch, profiler.view_cost_us())  # one conv, then n views
        self.chain_memo: dict[int, float] = {}  # per ending, its lower bound
        self.group_memo: dict[int, tuple[float, float]] = {}
        # groups a stage may use: connected unit sets of at most r units (single units
        # when the only strategy is merge), indexed by their last unit in topological order
        self.by_last = self._connected_sets(r if parallel else 1)
        self.stage_memo: dict[int, tuple[float, bool, tuple[int, ...]]] = {}
        n_ops = sum(len(u) for u in units)
        self.stats = PartStats(n_ops, m, m < n_ops)

    def _connected_sets(self, r: int) -> list[list[tuple[int, int, int, float, int]]]:
        """Per unit t: (mask, successors outside the set, set plus its neighbours, host
        time, merge class or -1) of every connected set of at most r units whose highest
        index is t."""
        m = len(self.units)
        seen: set[int] = set()
        level = [1 << i for i in range(m)]
        seen.update(level)
        every = list(level)
        for _ in range(r - 1):
            nxt: list[int] = []
            for a in level:
                nb = 0
                rest = a
                while rest:
                    low = rest & -rest
                    nb |= self.adj[low.bit_length() - 1]
                    rest ^= low
                nb &= ~a
                while nb:
                    low = nb & -nb
                    nb ^= low
                    b = a | low
                    if b not in seen:
                        seen.add(b)
                        nxt.append(b)
            level = nxt
            every.extend(nxt)
            if len(every) > MAX_ENDINGS:
                raise SchedulerError(
                    f"ios: more than {MAX_ENDINGS:,} connected groups of at most r={r} units "
                    "in one part, too many to search exactly; lower ios.r (the paper: r=3)"
                )
        by_last: list[list[tuple[int, int, int, float, int]]] = [[] for _ in range(m)]
        for a in sorted(every):
            out = closed = 0
            host = 0.0
            rest = a
            while rest:
                low = rest & -rest
                i = low.bit_length() - 1
                out |= self.succ[i]
                closed |= self.adj[i]
                host += self.host[i]
                rest ^= low
            t = a.bit_length() - 1
            mcls = self.mclass[t] if a & (a - 1) == 0 else -1
            by_last[t].append((a, out & ~a, closed | a, host, mcls))
        return by_last

    def _endings(self, S: int) -> list[tuple[int, float, int]]:
        """Every ending of S allowed by the pruning: (mask, host time of its commands,
        merge class if it is two or more single convs of one class, else -1). Its groups
        are its connected components (:meth:`_groups`)."""
        atoms: list[tuple[int, int, float, int]] = []
        rest = S
        succ = self.succ
        while rest:
            low = rest & -rest
            rest ^= low
            t = low.bit_length() - 1
            if succ[t] & S:
                continue  # not a sink of S: no group of an ending can end here
            for a, out, closed, host, mcls in self.by_last[t]:
                if a & S == a and not out & S:
                    atoms.append((a, closed, host, mcls))
        s = self.s
        if not self.parallel:  # merge only: one op, or a mergeable set of single convs
            found = [(a, host, -1) for a, _, host, _ in atoms]
            if s > 1:
                by_class: dict[int, list[tuple[int, float]]] = {}
                for a, _, host, mcls in atoms:
                    if mcls >= 0:
                        by_class.setdefault(mcls, []).append((a, host))
                for c, members in by_class.items():
                    self._subsets(members, s, c, found)
            return found
        found = []
        append = found.append
        n = len(atoms)
        # collections of pairwise disjoint, non-adjacent groups: each ending exactly once;
        # cls tracks whether all chosen groups are single convs of one merge class
        stack: list[tuple[int, int, int, int, float, int]] = [(0, 0, 0, 0, 0.0, -2)]
        while stack:
            if len(found) > MAX_ENDINGS:
                raise SchedulerError(
                    f"ios: a state has more than {MAX_ENDINGS:,} endings at r={self.r}, "
                    f"s={s}, too many to search exactly; lower ios.r or ios.s (the paper: "
                    "r=3, s=8)"
                )
            start, E, blocked, count, host, cls = stack.pop()
            count += 1
            for k in range(n - 1, start - 1, -1):
                a, closed, h, mcls = atoms[k]
                if a & blocked:
                    continue
                c = mcls if cls == -2 or cls == mcls else -1
                append((E | a, host + h, c if count > 1 else -1))
                if count < s:
                    stack.append((k + 1, E | a, blocked | closed, count, host + h, c))
        return found

    @staticmethod
    def _subsets(members: list[tuple[int, float]], s: int, cls: int, found: list) -> None:
        """Subsets of two to s single-op masks of one merge class (siblings: not adjacent)."""
        stack: list[tuple[int, int, int, float]] = [(0, 0, 0, 0.0)]
        while stack:
            start, E, count, host = stack.pop()
            count += 1
            for k in range(start, len(members)):
                a, h = members[k]
                if count >= 2:
                    found.append((E | a, host + h, cls))
                if count < s:
                    stack.append((k + 1, E | a, count, host + h))

    def _groups(self, E: int) -> tuple[int, ...]:
        """The connected components of E, ordered by their first unit."""
        out = []
        adj = self.adj
        rest = E
        while rest:
            low = rest & -rest
            comp = frontier = low
            while frontier:
                f = frontier & -frontier
                frontier ^= f
                new = adj[f.bit_length() - 1] & E & ~comp
                comp |= new
                frontier |= new
            out.append(comp)
            rest &= ~comp
        return tuple(out)

    def _ops(self, mask: int) -> list[str]:
        """The ops of a set of units, in topological order."""
        out: list[str] = []
        while mask:
            low = mask & -mask
            out.extend(self.units[low.bit_length() - 1])
            mask ^= low
        return sorted(out, key=self.position.__getitem__)

    def _stage(
        self, E: int, groups: tuple[int, ...], key: int | None = None
    ) -> tuple[float, bool, tuple[int, ...]]:
        """The stage's best latency, whether merged, and its groups. ``key`` is E with
        a strategy a memory limit leaves (:data:`_PARALLEL`/:data:`_MERGED` above the
        units' bits); by default both."""
        key = E if key is None else key
        hit = self.stage_memo.get(key)
        if hit is not None:
            return hit
        mode = key >> self.m
        best = float("inf")
        merged = False
        if (self.parallel or len(groups) == 1) and mode != _MERGED:
            self.stats.stages += 1
            best = self.profiler.measure_stage(self.graph, [self._ops(g) for g in groups])
        if self.merge and len(groups) >= 2 and mode != _PARALLEL:
            cls = {self.mclass[g.bit_length() - 1] for g in groups}
            if all(g & (g - 1) == 0 for g in groups) and len(cls) == 1 and -1 not in cls:
                self.stats.stages += 1
                lat = self._measure_merged([self._ops(g)[0] for g in groups])
                if lat < best:
                    best, merged = lat, True
        hit = self.stage_memo[key] = (best, merged, groups)
        return hit

    def _admissible(
        self, S: int, ends: list[tuple[int, float, int]]
    ) -> list[tuple[int, float, int]]:
        """The endings of S whose stage fits the memory limit (what is live once S - E
        is done, plus the stage's bound), each keyed by the strategies that fit (E
        alone: both; see :meth:`_stage`); a mergeable ending that fits only run in
        parallel loses its merge class."""
        mem = self.mem
        assert mem is not None
        out = []
        shift = self.m
        bound_memo = mem.bound_memo
        live, budget = mem.live, mem.budget
        for E, host, mcls in ends:
            room = budget - live(S ^ E)
            if room < 0:
                self.rejected += 1
                continue
            par = bound_memo.get(E)
            if par is None:
                par = 0
                for g in self._groups(E):
                    par += mem.group_peak(g, self._ops(g))
                bound_memo[E] = par
            if mcls >= 0 and self.merge:
                mrg = mem.merged_peak(E, self.graph, self._ops(E)) <= room
                fits = par <= room
                if not mrg or (self.parallel and not fits):
                    self.rejected += 1
                par = fits and self.parallel
                if mrg and (par or not self.parallel):  # every strategy it has fits
                    out.append((E, host, mcls))
                elif par:
                    out.append((E | _PARALLEL << shift, host, -1))
                elif mrg:
                    out.append((E | _MERGED << shift, host, mcls))
            elif par <= room:
                out.append((E, host, mcls))
            else:
                self.rejected += 1
        return out

    def _group_profile(self, g: int) -> tuple[float, float]:
        """(host time, span) of one group issued from host time 0: its commands issue one
        after another and become visible after the launch latency, run in order, each
        kernel for at least its least device time; the span is when the last can end.
        Issued from host time t instead, the group can end no earlier than t + span."""
        hit = self.group_memo.get(g)
        if hit is not None:
            return hit
        latency = self.profiler.gpu.launch_latency_us
        t = end = 0.0
        for op in self._ops(g):
            for cost, least in self.cmds[op]:
                t += cost
                if end < t + latency:
                    end = t + latency
                if least is not None:
                    end += least
        hit = self.group_memo[g] = (t, end)
        return hit

    def _chain_bound(self, groups: tuple[int, ...]) -> float:
        """A lower bound on the parallel stage's latency: its groups issued in order, each
        ending no earlier than its profile allows, the host's last command visible, and
        then the synchronize."""
        t = worst = 0.0
        for g in groups:
            host, span = self._group_profile(g)
            if t + span > worst:
                worst = t + span
            t += host
        gpu = self.profiler.gpu
        return max(worst, t + gpu.launch_latency_us) + gpu.sync_api_us

    def _measure_merged(self, ops: list[str]) -> float:
        """The merged conv and its slice views alone: a fragment graph of three kinds."""
        conv, slices = merged_ops(self.graph, ops)
        src = self.graph[conv.inputs[0]]
        frag = OpGraph(
            [Op(src.name, "input", (), src.output_shape, src.dtype), conv, *slices],
            name=f"{self.graph.name}:merge",
        )
        return self.profiler.measure_stage(frag, [[conv.name, *(sl.name for sl in slices)]])

    def run(self) -> list[tuple[bool, list[list[str]]]] | None:
        """The part's best stages in order: (merged?, groups of op names).

        Every state (a prefix of ops closed under predecessors) gets its exact cost. Its
        endings are taken best-first by what they can at best cost: the host bound, then
        the chain bound (:meth:`_chain_bound`), then the measured latency — each refined
        only when it is the least in the heap. An ending popped with its measured cost
        is the state's best, so an ending is measured only if its bounds say it could
        be: the result is the one measuring every ending would give.

        Under a memory limit only endings whose stage fits are taken
        (:meth:`_admissible`), states no fitting stage reaches are not visited, and a
        state from which no sequence of fitting stages ends costs infinity: None when
        the whole part has no schedule that fits."""
        t0 = time.perf_counter()
        full = (1 << len(self.units)) - 1
        limited = self.mem is not None
        inf = math.inf
        cost: dict[int, float] = {0: 0.0}
        choice: dict[int, tuple[int, tuple[float, bool, tuple[int, ...]]]] = {}
        pending: dict[int, list[tuple[int, float, int]]] = {}
        fixed = self.fixed_us
        merge = self.merge
        # the stages IOS would measure: each distinct ending once per strategy, parallel
        # (every ending when that strategy is on, else single groups) and merged. An
        # ending E is counted at one state only, the least it ends (E and its
        # ancestors): the one whose sinks all lie in E. Every down-set is a state.
        par_w = 1 if self.parallel else 0
        succ = self.succ
        paper = 0
        chain_memo = self.chain_memo
        memo = self.stage_memo
        launch, view = self.merge_host
        heapify, heappop, heappush = heapq.heapify, heapq.heappop, heapq.heappush
        safe = 1 - 1e-12  # bounds a hair low, so rounding never prunes an equal ending
        stack = [full]
        while stack:
            S = stack[-1]
            if S in cost:
                stack.pop()
                continue
            ends = pending.get(S)
            if ends is None:
                ends = self._endings(S)
                if not ends:
                    raise SchedulerError(f"ios: no ending for a state of {len(self.units)} units")
                if limited:
                    ends = self._admissible(S, ends)
                pending[S] = ends
                todo = [S ^ (e[0] & full) for e in ends if S ^ (e[0] & full) not in cost]
                if todo:
                    stack.extend(todo)
                    continue
            sinks = 0
            rest = S
            while rest:
                low = rest & -rest
                rest ^= low
                if not succ[low.bit_length() - 1] & S:
                    sinks |= low
            # entries carry the ending's key: E itself, or under a memory limit E with
            # the one strategy that fits (memo and bounds are kept per key)
            heap: list[tuple[float, int, int, int]] = []
            for K, host, mcls in ends:
                E = K & full
                if not sinks & ~E:
                    paper += 1 if mcls < 0 else merge + par_w
                before = cost[S ^ E]
                if before == inf:  # no fitting schedule from there
                    continue
                hit = memo.get(K)
                if hit is not None:
                    heap.append((before + hit[0], -2, K, mcls))
                    continue
                lb = chain_memo.get(K)
                if lb is not None:
                    heap.append((before + lb, -1, K, mcls))
                    continue
                if mcls >= 0 and merge:  # a merged stage issues one conv and n views
                    host = min(host, launch + view * E.bit_count())
                heap.append((before + (host + fixed) * safe, 0, K, mcls))
            if not heap:
                cost[S] = inf
                self.stats.transitions += len(ends)
                del pending[S]
                stack.pop()
                continue
            heapify(heap)
            while True:
                key, level, K, mcls = heappop(heap)
                if level == -2:  # measured, and no other ending can cost less
                    break
                E = K & full
                before = cost[S ^ E]
                if level == 0:
                    # a mergeable ending may run merged: the host bound is all it has
                    lb = (
                        key - before
                        if mcls >= 0 and merge
                        else self._chain_bound(self._groups(E)) * safe
                    )
                    chain_memo[K] = lb
                    heappush(heap, (before + lb, -1, K, mcls))
                    continue
                st = self._stage(E, self._groups(E), K)
                heappush(heap, (before + st[0], -2, K, mcls))
            cost[S] = key
            choice[S] = (K & full, memo[K])
            self.stats.transitions += len(ends)
            del pending[S]
            stack.pop()
        self.stats.states = len(cost) - 1
        self.stats.paper_stages = paper
        self.stats.latency_us = cost[full]
        if cost[full] == inf:
            self.stats.wall_s = time.perf_counter() - t0
            return None
        stages: list[tuple[bool, list[list[str]]]] = []
        S = full
        while S:
            E, (_, merged, groups) = choice[S]
            stages.append((merged, [self._ops(g) for g in groups]))
            S ^= E
        stages.reverse()
        self.stats.wall_s = time.perf_counter() - t0
        return stages


# --- the scheduler ----------------------------------------------------------------------


@register("ios", runtime="cudnn", memory_aware=True)
@dataclass
class IOS:
    """IOS: DP over stage endings, parallel groups or merged convs (Ding et al. 2021)."""

    r: int = 3  # units (ops by default) per group, the paper's default
    s: int = 8  # groups per stage (the paper's default)
    part_size: int = 64  # units per part (the paper uses parts of 50-100 operators)
    strategy: str = "both"  # "parallel", "merge" or "both"
    max_states: int = 0  # 0: the paper's space, exactly; N > 0: the capped mode (see above)
    units: str = "auto"  # "ops", "chains" (IOS's sequential nodes), or per part (see above)
    state_limit: int = 20_000  # auto: chains and halving above it; ops/chains: refused

    def __post_init__(self) -> None:
        limits = (
            ("r", 1, 64),
            ("s", 1, 64),
            ("part_size", 1, 512),
            ("max_states", 0, 10**7),
            ("state_limit", 0, 10**9),
        )
        for name, lo, hi in limits:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise SchedulerError(
                    f"option ios.{name}: must be an integer in {lo}..{hi}, got {v!r}"
                )
        if self.max_states == 1:
            raise SchedulerError("option ios.max_states: must be 0 (no cap) or at least 2, got 1")
        if self.strategy not in STRATEGIES:
            raise SchedulerError(
                f"option ios.strategy: must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}"
            )
        if self.units not in UNITS:
            raise SchedulerError(
                f"option ios.units: must be one of {', '.join(UNITS)}, got {self.units!r}"
            )

    def schedule(self, graph: OpGraph, profiler: Profiler) -> StageSchedule:
        t0 = time.perf_counter()
        calls0, distinct0, sim0 = profiler.calls, profiler.distinct, profiler.sim_wall_s
        parallel = self.strategy in ("parallel", "both")
        merge = self.strategy in ("merge", "both")
        parts = plan_parts(graph, self.part_size, self.max_states, self.units, self.state_limit)
        if self.state_limit:
            for i, units in enumerate(parts):
                n = _states(graph, units, self.state_limit)
                if n > self.state_limit:
                    raise SchedulerError(
                        f"ios: part {i + 1} of {len(parts)} ({len(units)} {self.units}) has "
                        f"more than {self.state_limit} DP states, too many to search exactly "
                        "in reasonable time; ios.units=chains searches at IOS's node "
                        "granularity, ios.max_states=N caps the space, ios.state_limit=0 "
                        "searches anyway"
                    )
        limit = profiler.memory_limit
        raw, stats, fallback, rejected = self._search(graph, profiler, parts, parallel, merge)
        # a limit that rejected no stage leaves the search as it is without one: then
        # the schedule is the unconstrained one, if its replay fits
        binds = limit is not None and (rejected > 0 or fallback > 0)
        sched = self._build(graph, raw, keep_order=binds)
        memory: dict[str, Any] = {}
        if limit is not None:
            report = profiler.memory(sched, graph)
            merges_dropped = False
            if report.peak_allocated > limit and not binds:
                binds = True  # the graph's order joined stages into a higher peak
                sched = self._build(graph, raw, keep_order=True)
                report = profiler.memory(sched, graph)
            if report.peak_allocated > limit and sched.graph is not None:
                # a merge keeps its members' outputs alive until the last of their
                # readers and widens kernels for the whole run: search without merges,
                # where the stage bound holds for the whole schedule
                raw, stats, fallback, rejected = self._search(
                    graph, profiler, parts, parallel, False
                )
                sched = self._build(graph, raw, keep_order=True)
                report = profiler.memory(sched, graph)
                merges_dropped = True
            if report.peak_allocated > limit:  # the stage bound failed: never return it
                track = max(report.tracks, key=lambda t: t.peak_allocated)
                raise SchedulerError(
                    f"ios: the schedule found peaks at {report.peak_memory_mb:.2f} MB (op "
                    f"'{track.peak_op}' at {track.peak_at_us:.1f} us), above the "
                    f"{limit / MB:.2f} MB limit its stage bounds allowed"
                )
            chosen, peak = "dp, limit not binding", report.peak_allocated
            if binds:
                sched, chosen, peak = _one_stream_if_faster(sched, graph, profiler, peak)
            memory = {
                "memory_limit_mb": limit / MB,
                "peak_memory_mb": peak / MB,
                "stages_rejected_for_memory": rejected,
                "merges_dropped_for_memory": merges_dropped,
                "sequential_parts": fallback,
                "memory_schedule": chosen,
            }
        meta: dict[str, Any] = {
            "r": self.r,
            "s": self.s,
            "part_size": self.part_size,
            "strategy": self.strategy,
            "max_states": self.max_states,
            "units": self.units,
            "state_limit": self.state_limit,
            "blocks": len(blocks(graph)),
            "parts": [dataclasses.asdict(p) for p in stats],
            "states": sum(p.states for p in stats),
            "transitions": sum(p.transitions for p in stats),
            "stages_paper": sum(p.paper_stages for p in stats),
            "stages_measured": sum(p.stages for p in stats),
            "profiler_calls": profiler.calls - calls0,
            "simulations": profiler.distinct - distinct0,
            "simulate_s": profiler.sim_wall_s - sim0,
            "dp_latency_us": sum(p.latency_us for p in stats),
            **sched.meta,
            **memory,
            "search_s": time.perf_counter() - t0,
        }
        sched.meta = meta
        return sched

    def _search(
        self,
        graph: OpGraph,
        profiler: Profiler,
        parts: list[list[list[str]]],
        parallel: bool,
        merge: bool,
    ) -> tuple[list[tuple[bool, list[list[str]]]], list[PartStats], int, int]:
        """The DP over every part: the stages (merged?, groups), per-part statistics,
        and under a memory limit how many parts fell back to one sequential stage and
        how many endings (or strategies of one) the limit rejected."""
        limit = profiler.memory_limit
        tensors = profiler.tensors(graph) if limit is not None else None
        raw: list[tuple[bool, list[list[str]]]] = []
        stats: list[PartStats] = []
        position = {o: i for i, o in enumerate(graph.topo_order)}
        done: set[str] = set()
        fallback = rejected = 0
        for i, units in enumerate(parts):
            mem = None
            if tensors is not None and limit is not None:
                mem = _PartMemory(tensors, units, done, limit, profiler)
            search = _PartSearch(
                graph, units, position, profiler, self.r, self.s, parallel, merge, mem
            )
            stages = search.run()
            stats.append(search.stats)
            rejected += search.rejected
            ops = sorted((o for u in units for o in u), key=position.__getitem__)
            if stages is None:
                # units of chains can miss an order of single ops that fits: the part's
                # ops one at a time, in topological order, is the last resort
                assert mem is not None and tensors is not None and limit is not None
                peak = mem.sequential_peak(ops) + tensors.resident()
                if peak > limit:
                    raise SchedulerError(
                        f"ios: no schedule within the {limit / MB:.2f} MB memory limit: "
                        f"part {i + 1} of {len(parts)} ('{ops[0]}' .. '{ops[-1]}') fits no "
                        f"stage sequence, and its ops one at a time peak at {peak / MB:.2f} "
                        f"MB (sequential peak of the graph: "
                        f"{tensors.sequential_peak() / MB:.2f} MB)"
                    )
                stages = [(False, [ops])]
                fallback += 1
            raw.extend(stages)
            done.update(ops)
        return raw, stats, fallback, rejected

    def _build(
        self,
        graph: OpGraph,
        raw: list[tuple[bool, list[list[str]]]],
        keep_order: bool,
    ) -> StageSchedule:
        """The stage schedule of the DP's stages: merges applied to the graph, and runs
        of one-group stages joined (see :func:`_drop_redundant_barriers`)."""
        merges = [tuple(g[0] for g in groups) for m, groups in raw if m]
        out_graph = apply_merges(graph, merges) if merges else graph
        stages: list[list[list[str]]] = []
        for m, groups in raw:
            if m:
                ops = [g[0] for g in groups]
                stages.append([[merged_name(ops), *ops]])
            else:
                stages.append(groups)
        stages, elided = _drop_redundant_barriers(stages, out_graph, keep_order)
        meta: dict[str, Any] = {
            "merges": [list(g) for g in merges],
            "dp_stages": [{"merge": m, "groups": groups} for m, groups in raw],
            "barriers_elided": elided,
        }
        return StageSchedule(stages, out_graph if merges else None, "sync", False, meta)


def _one_stream_if_faster(
    sched: StageSchedule, graph: OpGraph, profiler: Profiler, peak: int
) -> tuple[StageSchedule, str, int]:
    """Under a memory limit: the fastest of the DP's schedule and one stream running
    its ops in stage order (which fits wherever the stages did) or in the graph's order
    (which fits if the limit is at least the sequential peak). Each is simulated once.

    Why: the DP prices a barrier after every stage. A limit pushes it to stages of one
    group, where that price is paid in the model but not in the run (the barriers are
    elided, :func:`_drop_redundant_barriers`), so it can prefer a few concurrent stages
    that run slower than one stream. Without a binding limit IOS is left as the paper has
    it."""
    limit = profiler.memory_limit
    assert limit is not None
    in_stages = [op for stage in sched.stages for group in stage for op in group]
    cands = [
        ("dp", sched, peak),
        ("one stream, stage order", StageSchedule([[in_stages]], sched.graph, "sync", False), -1),
        (
            "one stream, graph order",
            StageSchedule([[list(graph.topo_order)]], None, "sync", False),
            -1,
        ),
    ]
    best: tuple[float, str, StageSchedule, int] | None = None
    for what, cand, cpeak in cands:
        if cpeak < 0:
            cpeak = profiler.memory(cand, graph).peak_allocated
            if cpeak > limit:
                continue
        lat = profiler.measure(cand, graph)
        if best is None or lat < best[0]:
            best = (lat, what, cand, cpeak)
    assert best is not None
    _, what, chosen, cpeak = best
    chosen.meta = dict(sched.meta)
    return chosen, what, cpeak


def _drop_redundant_barriers(
    stages: list[list[list[str]]], graph: OpGraph, keep_order: bool = False
) -> tuple[list[list[list[str]]], int]:
    """Join runs of consecutive one-group stages into one group in topological order:
    the barrier between two stages on the same single stream orders nothing.

    ``keep_order`` (under a memory limit) keeps the stages' order instead: one stream
    then runs exactly the ops, in the order, the barriers ran them, so every instant
    holds what it held between barriers and the peak cannot rise. (The graph's order
    could start a later stage's allocation while an earlier one's tensors are live.)"""
    idx = {n: i for i, n in enumerate(graph.topo_order)}
    out: list[list[list[str]]] = []
    elided = 0
    run: list[str] = []
    for stage in stages:
        if len(stage) == 1:
            if run:
                elided += 1
            run.extend(stage[0])
            continue
        if run:
            out.append([run if keep_order else sorted(run, key=idx.__getitem__)])
            run = []
        out.append(stage)
    if run:
        out.append([run if keep_order else sorted(run, key=idx.__getitem__)])
    return out, elided
