"""Opara (Chen et al., IEEE Transactions on Computers 2025; arXiv 2312.10351): streams
with maximum logical concurrency, then a launch order chosen from each op's resource
demand, the whole schedule captured as one CUDA Graph.

1. Streams. As Nimble's, every stream is a chain of ops joined by edges, so ops with no
   path between them never share a stream (maximum logical concurrency). Opara builds
   the chains in one pass instead of by maximum matching on the transitive reduction:
   in topological order, an op joins the stream of its latest predecessor that still
   ends its stream, else it opens a new stream. The latest such predecessor is the one
   least likely to be implied by another path, so few dependencies cross streams. This
   is linear in the graph — the reason Opara's stream plan is 0.27–2.8 ms where
   Nimble's is 5.8–258 ms. ``assign="nimble"`` takes Nimble's streams instead (the
   launch order alone, on Nimble's assignment).
2. Launch order. Under left-over block dispatch a kernel gets SM space only after every
   block of the kernels launched before it is placed, so a large kernel launched first
   can hold back a small one on another stream. Opara therefore launches, among the ops
   whose inputs are launched, those that need few resources first, and alternates
   compute-bound and memory-bound ops so neighbours in the dispatch queue contend for
   different units. From the Profiler's kernels:
   - compute- or memory-bound: the kernels' compute time on the whole GPU against their
     DRAM time at full bandwidth — their FLOPs per byte against the GPU's ridge point,
     in the cost model's own units (tensor-core or not, as the kernel was priced);
   - resource demand: the share of the GPU's block slots the op's largest kernel asks
     for in its first wave, grid / (resident blocks per SM x SMs), at most 1.
   Each step launches an op of the other class than the last launched one if one is
   ready, else one of the same class; within the class the smallest demand first, ties
   by topological position. Ops without device work go as soon as they are ready.
3. The program is one CUDA Graph (runtime ``cuda-graph``): the launch order is the
   capture order, which the simulator's queues and dispatcher then follow. What that
   order gains or loses comes out of the simulation, not from this module.

Under a memory limit, streams are merged until the replayed peak fits, and the launch
order is recomputed for the merged streams (schedulers._memory.merge_until_fits).
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass

from schedulers._memory import merge_until_fits
from schedulers.base import Profiler, SchedulerError, register
from schedulers.nimble import chains, nimble_streams
from simgpu.graph import OpGraph
from simgpu.hardware import GPUSpec
from simgpu.kernels import Kernel
from simgpu.schedule import StreamSchedule
from simgpu.sharing import dram_capacity

COMPUTE, MEMORY, NONE = 0, 1, 2


@dataclass(frozen=True)
class Demand:
    """What an op asks of the GPU, as Opara's launch order reads it."""

    kind: int  # COMPUTE, MEMORY, or NONE (no device work)
    share: float  # share of the GPU's block slots its largest kernel asks for, 0..1


def opara_streams(graph: OpGraph) -> list[list[str]]:
    """One pass in topological order: each op continues the stream of its latest
    predecessor that still ends a stream, else starts one. Streams are chains of edges."""
    ops = graph.topo_order
    pos = {n: i for i, n in enumerate(ops)}
    succ: dict[str, str] = {}  # a stream's next op after each op, as nimble.chains reads it
    for v in ops:
        free = [u for u in graph.predecessors(v) if u not in succ]
        if free:
            succ[max(free, key=pos.__getitem__)] = v
    return chains(ops, succ)


def op_demand(kernels: list[Kernel], gpu: GPUSpec) -> Demand:
    """Compute- or memory-bound, and the block-slot share, of an op's kernels."""
    if not kernels:
        return Demand(NONE, 0.0)
    compute = sum(k.grid * k.work_us for k in kernels) / gpu.sm_count
    memory = sum(k.grid * k.block_bytes for k in kernels) / dram_capacity(gpu)
    share = max(min(1.0, k.grid / (k.occupancy.blocks * gpu.sm_count)) for k in kernels)
    return Demand(COMPUTE if compute >= memory else MEMORY, share)


def launch_order(graph: OpGraph, streams: list[list[str]], demand: dict[str, Demand]) -> list[str]:
    """Opara's launch order: a topological order of dependencies and stream order that
    alternates compute- and memory-bound ops and launches small demands first."""
    pos = {n: i for i, n in enumerate(graph.topo_order)}
    preds: dict[str, set[str]] = {n: set(graph.predecessors(n)) for n in graph.ops}
    for s in streams:
        for a, b in itertools.pairwise(s):
            preds[b].add(a)
    succ: dict[str, list[str]] = {n: [] for n in graph.ops}
    for v, us in preds.items():
        for u in us:
            succ[u].append(v)
    indeg = {n: len(us) for n, us in preds.items()}
    ready: list[list[tuple[float, int, str]]] = [[], [], []]  # per kind: (share, pos, op)

    def push(n: str) -> None:
        d = demand[n]
        heapq.heappush(ready[d.kind], (d.share, pos[n], n))

    for n in graph.topo_order:
        if indeg[n] == 0:
            push(n)
    out: list[str] = []
    last = MEMORY  # so the first kernel launched is a compute-bound one when one is ready
    while any(ready):
        if ready[NONE]:
            kind = NONE
        else:
            other = COMPUTE if last == MEMORY else MEMORY
            kind = other if ready[other] else last
            last = kind
        _, _, n = heapq.heappop(ready[kind])
        out.append(n)
        for v in succ[n]:
            indeg[v] -= 1
            if indeg[v] == 0:
                push(v)
    return out


@register("opara", runtime="cuda-graph", memory_aware=True)
@dataclass
class Opara:
    """Opara: one-pass concurrent streams, resource-aware launch order, one CUDA Graph."""

    assign: str = "opara"  # "opara" (one pass) or "nimble" (maximum matching)
    graph_mode: bool = True

    def schedule(self, graph: OpGraph, profiler: Profiler) -> StreamSchedule:
        if self.assign == "opara":
            streams = opara_streams(graph)
        elif self.assign == "nimble":
            streams = nimble_streams(graph)[0]
        else:
            raise SchedulerError(f"opara: assign must be 'opara' or 'nimble', got {self.assign!r}")
        gpu = profiler.gpu
        demand = {n: op_demand(profiler.kernels.lower(graph, n), gpu) for n in graph.ops}
        order = launch_order(graph, streams, demand)
        stream_of = {op: si for si, s in enumerate(streams) for op in s}
        meta = {
            "assign": self.assign,
            "cross_edges": sum(1 for u, v in graph.edges() if stream_of[u] != stream_of[v]),
            "compute_bound": sum(1 for d in demand.values() if d.kind == COMPUTE),
            "memory_bound": sum(1 for d in demand.values() if d.kind == MEMORY),
        }
        sched = StreamSchedule(streams, graph_mode=self.graph_mode, meta=meta, order=order)
        if profiler.memory_limit is None:
            return sched
        return merge_until_fits(
            "opara", graph, profiler, sched, lambda ss: launch_order(graph, ss, demand)
        )
