"""HIOS (Kundu & Shu, CLUSTER 2023): one DAG over several GPUs, in two levels.

*Inter-GPU mapping.* ``hios`` (HIOS-LP) repeatedly takes the longest path among the
ops not yet mapped — op latencies as node weights, the transfer time of the
producer's output as edge weights — and tries the whole path on each GPU. Each try is
the partial schedule of every op mapped so far (each GPU running its ops in priority
order on one stream, transfers inserted by the lowering), measured through the
Profiler; the path stays on the GPU where that partial schedule is fastest.
``hios-mr`` maps op by op instead: in latest-start order, each op goes to the GPU
where it would finish earliest, counting its inputs' transfers (a list-scheduling
model over the per-op latencies, as HEFT's).

*Intra-GPU scheduling.* Per GPU, ops in latest-start order start as one stage each. A
window of ``window`` consecutive stages is merged into one concurrent stage (each of
their groups on its own stream, at most ``streams``) whenever no path joins two of
the groups and the measured latency of the whole schedule does not increase; a merged
stage meets the stages after it while streams are left. A path through any op, on any
GPU, counts: that is the cycle check across GPUs of the paper — ops joined through
another GPU placed side by side in one stage would make the stage wait for itself.

Latest start times come from the same weights: ``LST(v) = CP - bottom(v)`` with
``bottom(v) = w(v) + max over successors s of (c(v, s) + bottom(s))``. Since every
weight is non-negative, sorting by (LST, topological position) never puts a consumer
before its producer, so every GPU's order, and every stream built from it, agrees with
one global topological order: no schedule HIOS builds can deadlock, which
:func:`find_cycle` verifies for every mapping tried.

A multi-GPU schedule is a StreamSchedule with ``devices``; stage barriers are not kept
(only data dependencies order streams), which never orders more than the stages do.

*Memory limit* (``Profiler.memory_limit``, bytes per GPU; both schedulers). Without
barriers a stream runs ahead into its next stage, and peer copies put buffers on the
receiving GPU, so no stage bound holds: every schedule HIOS would keep is replayed
(simulated and its allocations accounted per GPU) and kept only within the limit. The
window then merges only where the replay fits; the starting point (one stream per GPU)
falls back from latest-start order to topological order, then to every op on GPU 0,
whose peak is the graph's sequential peak (:func:`_finish_within`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from schedulers.base import Profiler, SchedulerError, register
from simgpu.graph import OpGraph
from simgpu.memory import MB
from simgpu.program import lower, output_bytes
from simgpu.schedule import StreamSchedule

# --- costs --------------------------------------------------------------------------------


@dataclass
class Costs:
    """What both levels need about a graph on a machine: per-op latencies (Profiler,
    each op alone), transfer estimates, a topological index and reachability."""

    graph: OpGraph
    profiler: Profiler
    graph_mode: bool = False  # measure (and return) schedules as one CUDA Graph
    kernels: dict[tuple[str, int], list] = field(default_factory=dict)  # lowering memo
    latency: dict[str, float] = field(default_factory=dict)
    comm: dict[str, float] = field(default_factory=dict)  # mean transfer of the output
    topo: dict[str, int] = field(default_factory=dict)
    preds: dict[str, list[str]] = field(default_factory=dict)
    succs: dict[str, list[str]] = field(default_factory=dict)
    desc: dict[str, int] = field(default_factory=dict)  # bitmask of descendants (topo idx)

    @classmethod
    def of(cls, graph: OpGraph, profiler: Profiler, graph_mode: bool = False) -> Costs:
        c = cls(graph, profiler, graph_mode)
        order = graph.topo_order
        c.topo = {op: i for i, op in enumerate(order)}
        c.preds = {op: graph.predecessors(op) for op in order}
        c.succs = {op: [] for op in order}
        for v in order:
            for u in c.preds[v]:
                c.succs[u].append(v)
        c.latency = {op: profiler.op_latency_us(graph, op) for op in order}
        m = profiler.machine
        pairs = [(a, b) for a in range(m.n_devices) for b in range(m.n_devices) if a != b]
        for op in order:
            if pairs:
                nbytes = output_bytes(graph, op)
                c.comm[op] = sum(m.transfer_us(a, b, nbytes) for a, b in pairs) / len(pairs)
            else:
                c.comm[op] = 0.0
        for op in reversed(order):
            d = 0
            for s in c.succs[op]:
                d |= c.desc[s] | (1 << c.topo[s])
            c.desc[op] = d
        return c

    @property
    def n_gpus(self) -> int:
        return self.profiler.machine.n_devices

    def transfer_us(self, op: str, src: int, dst: int) -> float:
        if src == dst:
            return 0.0
        return self.profiler.machine.transfer_us(src, dst, output_bytes(self.graph, op))

    def latest_start(self, edge: Callable[[str, str], float]) -> dict[str, tuple[float, int]]:
        """Sort key (LST, topological index) per op, edge weights from ``edge(u, v)``."""
        bottom: dict[str, float] = {}
        order = self.graph.topo_order
        for op in reversed(order):
            tail = max((edge(op, s) + bottom[s] for s in self.succs[op]), default=0.0)
            bottom[op] = self.latency[op] + tail
        cp = max(bottom.values(), default=0.0)
        return {op: (cp - bottom[op], self.topo[op]) for op in order}


# --- cycle check ----------------------------------------------------------------------


def find_cycle(graph: OpGraph, streams: Sequence[Sequence[str]]) -> list[str] | None:
    """Ops on a cycle of data dependencies plus stream order (streams of every GPU), or
    None. A cycle means some stream waits, through other GPUs, for an op queued behind
    it: the schedule would deadlock. Ops the streams leave out are ignored."""
    placed = {op for s in streams for op in s}
    succ: dict[str, list[str]] = {op: [] for op in placed}
    indeg = dict.fromkeys(placed, 0)
    for s in streams:
        for a, b in itertools.pairwise(s):
            succ[a].append(b)
            indeg[b] += 1
    for v in placed:
        for u in graph.predecessors(v):
            if u in placed:
                succ[u].append(v)
                indeg[v] += 1
    ready = [op for op, d in indeg.items() if d == 0]
    done = 0
    while ready:
        op = ready.pop()
        done += 1
        for v in succ[op]:
            indeg[v] -= 1
            if indeg[v] == 0:
                ready.append(v)
    if done == len(placed):
        return None
    return sorted((op for op, d in indeg.items() if d > 0), key=graph.index.__getitem__)


# --- inter-GPU mapping ------------------------------------------------------------------


def longest_path(c: Costs, unmapped: set[str]) -> list[str]:
    """The heaviest path among ``unmapped`` ops (node latency + transfer edge weights);
    ties go to the path found first in topological order."""
    best: dict[str, float] = {}
    back: dict[str, str | None] = {}
    end, top = None, -1.0
    for op in c.graph.topo_order:
        if op not in unmapped:
            continue
        w, via = 0.0, None
        for u in c.preds[op]:  # a weightless input (a view) still extends the path
            if u in unmapped and (via is None or best[u] + c.comm[u] > w):
                w, via = best[u] + c.comm[u], u
        best[op] = w + c.latency[op]
        back[op] = via
        if best[op] > top:
            end, top = op, best[op]
    path: list[str] = []
    while end is not None:
        path.append(end)
        end = back[end]
    return path[::-1]


def _per_gpu(mapping: dict[str, int], key: dict[str, tuple[float, int]], n: int) -> list[list[str]]:
    lanes: list[list[str]] = [[] for _ in range(n)]
    for op in sorted(mapping, key=key.__getitem__):
        lanes[mapping[op]].append(op)
    return lanes


def measure_partial(c: Costs, lanes: list[list[str]]) -> float:
    """Latency of the mapped ops, each GPU's on one stream (Profiler, memoised)."""
    streams = [lane for lane in lanes if lane]
    devices = [g for g, lane in enumerate(lanes) if lane]
    sched = StreamSchedule(streams, devices=devices, graph_mode=c.graph_mode)
    p = c.profiler
    prog = lower(
        sched, c.graph, list(p.machine.devices), cache=p.kernels, subset=True, memo=c.kernels
    )
    return p.measure_program(prog)


def map_longest_paths(c: Costs) -> tuple[dict[str, int], dict[str, float]]:
    """HIOS-LP: every longest path to the GPU where the partial schedule is fastest."""
    key = c.latest_start(lambda u, v: c.comm[u])
    unmapped = set(c.graph.ops)
    mapping: dict[str, int] = {}
    paths = 0
    rejected = 0
    while unmapped:
        path = longest_path(c, unmapped)
        paths += 1
        best: tuple[float, int] | None = None
        for g in range(c.n_gpus):
            trial = dict(mapping)
            trial.update((op, g) for op in path)
            lanes = _per_gpu(trial, key, c.n_gpus)
            if find_cycle(c.graph, lanes) is not None:
                rejected += 1
                continue
            if c.n_gpus == 1:
                best = (0.0, g)  # one choice: nothing to measure
                break
            lat = measure_partial(c, lanes)
            if best is None or (lat, g) < best:
                best = (lat, g)
        if best is None:  # pragma: no cover - the priority order makes cycles impossible
            raise SchedulerError(f"hios: path starting at '{path[0]}' fits no GPU without a cycle")
        mapping.update((op, best[1]) for op in path)
        unmapped.difference_update(path)
    return mapping, {"paths": paths, "cycle_rejections": rejected}


def map_earliest_finish(c: Costs) -> tuple[dict[str, int], dict[str, float]]:
    """HIOS-MR: in latest-start order, each op to the GPU where it finishes earliest,
    its inputs' transfers included (no insertion into idle gaps)."""
    key = c.latest_start(lambda u, v: c.comm[u])
    free = [0.0] * c.n_gpus
    finish: dict[str, float] = {}
    mapping: dict[str, int] = {}
    for op in sorted(c.graph.ops, key=key.__getitem__):
        best: tuple[float, int] | None = None
        for g in range(c.n_gpus):
            ready = max(
                (finish[u] + c.transfer_us(u, mapping[u], g) for u in c.preds[op]), default=0.0
            )
            cand = (max(ready, free[g]) + c.latency[op], g)
            if best is None or cand < best:
                best = cand
        assert best is not None
        finish[op], g = best
        free[g] = finish[op]
        mapping[op] = g
    return mapping, {"model_latency_us": max(finish.values(), default=0.0)}


# --- intra-GPU sliding window ------------------------------------------------------------

Stage = list[list[str]]  # groups, each a chain of ops on one stream


def merge_stages(c: Costs, stages: Sequence[Stage], streams: int) -> Stage | None:
    """The groups of ``stages`` side by side in one concurrent stage, or None when
    that is impossible: more than ``streams`` groups, or a path between two of them.
    Paths count through any op on any GPU — the cross-GPU cycle check: ops joined
    through another GPU cannot run side by side."""
    groups = [g for stage in stages for g in stage]
    if len(groups) > streams:
        return None
    masks = [_mask(c, g) for g in groups]
    reach = [_reach(c, g) for g in groups]
    for i, r in enumerate(reach):
        for j, m in enumerate(masks):
            if i != j and r & m:
                return None
    return [list(g) for g in groups]


def _mask(c: Costs, ops: Sequence[str]) -> int:
    m = 0
    for op in ops:
        m |= 1 << c.topo[op]
    return m


def _reach(c: Costs, ops: Sequence[str]) -> int:
    m = 0
    for op in ops:
        m |= c.desc[op]
    return m


def stages_to_schedule(per_gpu: Sequence[Sequence[Stage]], streams: int) -> StreamSchedule:
    """Group j of every stage of GPU p runs on that GPU's stream j."""
    lanes: list[list[str]] = []
    devices: list[int] = []
    for p, stages in enumerate(per_gpu):
        mine: list[list[str]] = [[] for _ in range(streams)]
        for stage in stages:
            for j, group in enumerate(stage):
                mine[j].extend(group)
        for lane in mine:
            if lane:
                lanes.append(lane)
                devices.append(p)
    return StreamSchedule(lanes, devices=devices)


def measure_schedule(c: Costs, sched: StreamSchedule) -> float:
    p = c.profiler
    sched.graph_mode = c.graph_mode
    prog = lower(
        sched, c.graph, list(p.machine.devices), cache=p.kernels, validate=False, memo=c.kernels
    )
    return p.measure_program(prog)


def intra_gpu(
    c: Costs,
    mapping: dict[str, int],
    window: int,
    streams: int,
    key: dict[str, tuple[float, int]] | None = None,
    fits: Callable[[StreamSchedule], bool] | None = None,
) -> tuple[StreamSchedule, dict[str, float]]:
    """The sliding window over every GPU's ops in latest-start order (with the transfers
    the mapping makes), or in the order of ``key``; returns the schedule and what the
    search did. ``fits`` (a memory limit) must also accept a merge the latency keeps."""
    if key is None:
        key = c.latest_start(lambda u, v: c.comm[u] if mapping[u] != mapping[v] else 0.0)
    per_gpu: list[list[Stage]] = [
        [[[op]] for op in lane] for lane in _per_gpu(mapping, key, c.n_gpus)
    ]
    best = measure_schedule(c, stages_to_schedule(per_gpu, streams))
    start = best
    tried = merged = 0
    if window >= 2 and streams >= 2:
        for p in range(c.n_gpus):
            stages = per_gpu[p]
            i = 0
            while i < len(stages) - 1:
                hi = min(i + window, len(stages))
                cand = merge_stages(c, stages[i:hi], streams)
                if cand is not None:
                    trial = [*stages[:i], cand, *stages[hi:]]
                    per_gpu[p] = trial
                    tried += 1
                    sched = stages_to_schedule(per_gpu, streams)
                    lat = measure_schedule(c, sched)
                    if lat <= best and (fits is None or fits(sched)):
                        best, stages = lat, trial
                        merged += 1
                        continue  # the grown stage meets the stages after it
                    per_gpu[p] = stages
                i += 1
    sched = stages_to_schedule(per_gpu, streams)
    stats = {
        "sequential_per_gpu_us": start,
        "window_trials": tried,
        "window_merges": merged,
        "stages": sum(len(s) for s in per_gpu),
        "latency_us": best,
    }
    return sched, stats


# --- the schedulers ---------------------------------------------------------------------


def _check(name: str, window: int, streams: int) -> None:
    if window < 1:
        raise SchedulerError(f"{name}: window must be at least 1, got {window}")
    if streams < 1:
        raise SchedulerError(f"{name}: streams must be at least 1, got {streams}")


def _finish(
    name: str, c: Costs, mapping: dict[str, int], stats: dict[str, float], window: int, streams: int
) -> StreamSchedule:
    if c.profiler.memory_limit is not None:
        return _finish_within(name, c, mapping, stats, window, streams)
    sched, intra = intra_gpu(c, mapping, window, streams)
    lanes = [list(s) for s in sched.streams]
    cycle = find_cycle(c.graph, lanes)
    if cycle is not None:  # pragma: no cover - guarded by construction
        raise SchedulerError(f"{name}: schedule has a cycle across GPUs around {cycle[:4]}")
    sched.graph_mode = c.graph_mode
    per_gpu = [sum(1 for g in mapping.values() if g == p) for p in range(c.n_gpus)]
    sched.meta = {"mapping": dict(mapping), "ops_per_gpu": per_gpu, **stats, **intra}
    return sched


def _finish_within(
    name: str, c: Costs, mapping: dict[str, int], stats: dict[str, Any], window: int, streams: int
) -> StreamSchedule:
    """The schedule under a memory limit (bytes per GPU), replayed, not bounded.

    HIOS keeps no barriers (each stream runs ahead to its next stage as soon as its data
    is there) and copies tensors between GPUs, so no stage of its model bounds what is
    live on a GPU. Every candidate is therefore replayed (:meth:`Profiler.memory`,
    per device) and kept only if every GPU stays within the limit: the starting point
    (each GPU's ops on one stream), and each window merge the latency accepts. The
    starting point falls back, in this order, from the mapping in latest-start order,
    to the same mapping in the graph's topological order, to every op on GPU 0 in that
    order, whose peak is the graph's sequential peak."""
    p = c.profiler
    limit = p.memory_limit
    assert limit is not None
    order = {op: (0.0, i) for i, op in enumerate(c.graph.topo_order)}
    tries: list[tuple[str, dict[str, int], dict[str, tuple[float, int]] | None]] = [
        ("mapping, latest-start order", mapping, None),
        ("mapping, topological order", mapping, order),
        ("one GPU, topological order", dict.fromkeys(mapping, 0), order),
    ]
    peaks: list[str] = []
    replays = 0

    def fits(sched: StreamSchedule) -> bool:
        nonlocal replays
        replays += 1
        sched.graph_mode = c.graph_mode
        return p.memory(sched, c.graph).peak_allocated <= limit

    for what, mp, key in tries:
        k = key or c.latest_start(lambda u, v, mp=mp: c.comm[u] if mp[u] != mp[v] else 0.0)
        start = stages_to_schedule(
            [[[[op]] for op in lane] for lane in _per_gpu(mp, k, c.n_gpus)], streams
        )
        start.graph_mode = c.graph_mode
        report = p.memory(start, c.graph)
        replays += 1
        if report.peak_allocated > limit:
            peaks.append(f"{what} {report.peak_memory_mb:.2f} MB")
            continue
        sched, intra = intra_gpu(c, mp, window, streams, k, fits)
        cycle = find_cycle(c.graph, [list(s) for s in sched.streams])
        if cycle is not None:  # pragma: no cover - guarded by construction
            raise SchedulerError(f"{name}: schedule has a cycle across GPUs around {cycle[:4]}")
        sched.graph_mode = c.graph_mode
        per_gpu = [sum(1 for g in mp.values() if g == q) for q in range(c.n_gpus)]
        sched.meta = {
            "mapping": dict(mp),
            "ops_per_gpu": per_gpu,
            **stats,
            **intra,
            "memory_limit_mb": limit / MB,
            "memory_start": what,
            "memory_replays": replays,
        }
        return sched
    raise SchedulerError(
        f"{name}: no schedule within the {limit / MB:.2f} MB memory limit per GPU: one "
        f"stream per GPU peaks at {'; '.join(peaks)}"
    )


@register("hios", multi_gpu=True, runtime="cudnn", memory_aware=True)
@dataclass
class HIOS:
    """HIOS-LP: longest paths to the GPU where the partial schedule is fastest, then a
    sliding window of concurrent stages per GPU."""

    window: int = 2
    streams: int = 2
    graph_mode: bool = False

    def schedule(self, graph: OpGraph, profiler: Profiler) -> StreamSchedule:
        _check("hios", self.window, self.streams)
        c = Costs.of(graph, profiler, self.graph_mode)
        mapping, stats = map_longest_paths(c)
        return _finish("hios", c, mapping, stats, self.window, self.streams)


@register("hios-mr", multi_gpu=True, runtime="cudnn", memory_aware=True)
@dataclass
class HIOSMR:
    """HIOS-MR: each op, in latest-start order, to the GPU where it finishes earliest;
    then the same sliding window."""

    window: int = 2
    streams: int = 2
    graph_mode: bool = False

    def schedule(self, graph: OpGraph, profiler: Profiler) -> StreamSchedule:
        _check("hios-mr", self.window, self.streams)
        c = Costs.of(graph, profiler, self.graph_mode)
        mapping, stats = map_earliest_finish(c)
        return _finish("hios-mr", c, mapping, stats, self.window, self.streams)


__all__ = [
    "HIOS",
    "HIOSMR",
    "Costs",
    "find_cycle",
    "intra_gpu",
    "longest_path",
    "map_earliest_finish",
    "map_longest_paths",
    "merge_stages",
    "stages_to_schedule",
]
