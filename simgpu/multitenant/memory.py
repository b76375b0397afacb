"""GPU memory of a multi-tenant run: resident weights, in-flight requests, admission.

What a run holds on its one GPU (allocated bytes, as ``torch.cuda.memory_allocated``
counts them: the caching allocator's rounded blocks, :mod:`simgpu.memory`'s rules
applied per request):

* every tenant's **weights** are resident for the whole run, loaded at time 0 on the
  default stream, whatever the request traffic;
* each **request** holds its own activations: its input from its first issued command
  to its completion, each op's output from the op's first kernel start to the end of
  its last reader's last kernel (the graph's outputs until the request completes: the
  caller reads them), and each op's library workspace while the op runs.

**Admission** (:class:`~simgpu.sim.tenants.MemoryBudget`): the memory limit (the GPU's
``memory_gb`` unless one is given) minus every tenant's weights is what the requests in
flight may hold together. Each request *reserves* :func:`lane_bound` bytes — the most
its activations can hold at any instant under its tenant's lanes, whatever the timing —
from its first issued command until it completes; one that does not fit waits. Since
every request's live bytes stay within its reservation, the GPU's allocated bytes never
exceed the limit. The reserved bytes (the allocator's segments) can: fragmentation and
per-stream pools are not reserved for, as the reports' notes say. That is the quantity
that matters: when ``cudaMalloc`` fails, PyTorch's allocator frees its cached segments
and retries, so only allocated bytes make a request fail (the replay frees nothing).

The **report** (:func:`replay`) is exact: every request's allocations at the instants
the run made them, replayed through one caching allocator (per-stream pools) for the
GPU's peak allocated and reserved bytes. Per tenant: its weights plus the peak of its
own live activations (allocated), and its own allocations replayed alone (reserved:
the segments its pools would hold; tenants sharing a stream share pools, so the GPU's
reserved bytes are not the tenants' sum).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from simgpu.allocator import CachingAllocator
from simgpu.errors import SimGPUError
from simgpu.graph import OpGraph
from simgpu.hardware import GPUSpec
from simgpu.kernels import Kernel
from simgpu.memory import MB, MemoryLimitError, Tensors, mb, tensors_of
from simgpu.multitenant.plan import Cmd
from simgpu.sim.tenants import MultiTenantRun, parse_label
from simgpu.timeline import MemoryTrack


def gpu_capacity(gpu: GPUSpec) -> int:
    """The GPU's memory in bytes."""
    return int(gpu.memory_gb * (1 << 30))


def request_tensors(graph: OpGraph, gpu: GPUSpec, cmds: Sequence[Cmd]) -> Tensors:
    """The tensor table of one request, workspaces from the kernels its commands launch
    (the runtime that lowered them may pick other kernels than a plain lowering)."""
    kernels: dict[str, list[Kernel]] = {}
    for c in cmds:
        if c[2] is not None:
            kernels.setdefault(c[3], []).append(c[2])
    return tensors_of(graph, gpu, kernels)


def lane_bound(t: Tensors, lanes: Sequence[Sequence[str]]) -> int:
    """Bytes one request's activations can hold at once under ``lanes``, whatever the
    timing: the reservation admission makes for it.

    A lane's *position* is its first unfinished op (its length once done). An op starts
    only after its schedule ancestors (graph predecessors and everything before it on
    its lane) finished, so while a tensor is live — its producer started, some reader
    not finished — every lane holding one of its unfinished readers sits between the
    last of the producer's ancestors on that lane (exclusive) and that reader
    (inclusive); a graph output sits on its producer's lane from the producer to the
    lane's end (once the producer started, its lane never sits before it). Charging
    each tensor to those windows on every lane holding a reader (a graph output to its
    producer's lane alone; workspace to its op's position) and summing each lane's
    heaviest position bounds every instant. On one lane this is exactly the sequential
    peak of that order (less the weights)."""
    g = t.graph
    where: dict[str, tuple[int, int]] = {}
    for li, lane in enumerate(lanes):
        for i, op in enumerate(lane):
            where[op] = (li, i)
    missing = [op for op in g.ops if op not in where]
    if missing:
        raise SimGPUError(f"'{g.name}': op '{missing[0]}' is on no lane")
    k = len(lanes)
    # last[op][L]: the last op on lane L that must finish before op starts (-1: none)
    last: dict[str, list[int]] = {}
    order = _schedule_order(g, lanes, where)
    for op in order:
        li, i = where[op]
        row = [-1] * k
        preds = list(g.predecessors(op))
        if i > 0:
            preds.append(lanes[li][i - 1])
        for u in preds:
            lu, iu = where[u]
            lu_row = last[u]
            for L in range(k):
                if lu_row[L] > row[L]:
                    row[L] = lu_row[L]
            if iu > row[lu]:
                row[lu] = iu
        last[op] = row
    diff = [[0] * (len(lane) + 2) for lane in lanes]

    def charge(L: int, lo: int, hi: int, nbytes: int) -> None:
        diff[L][lo] += nbytes
        diff[L][hi + 1] -= nbytes

    for r, size in t.size.items():
        if r in t.inputs or not size:
            continue
        lp, ip = where[r]
        if r in t.outputs:  # live from its producer's start on: its lane covers that
            charge(lp, ip, len(lanes[lp]), size)
            continue
        hi: dict[int, int] = {}
        for u in t.readers[r]:
            lu, iu = where[u]
            hi[lu] = max(hi.get(lu, -1), iu)
        for lane_i, h in hi.items():
            lo = ip if lane_i == lp else last[r][lane_i] + 1
            charge(lane_i, lo, max(lo, h), size)
    for op, ws in t.workspace.items():
        if ws:
            L, i = where[op]
            charge(L, i, i, ws)
    total = t.input_bytes
    for d in diff:
        run = best = 0
        for v in d[:-1]:
            run += v
            best = max(best, run)
        total += best
    return total


def _schedule_order(
    g: OpGraph, lanes: Sequence[Sequence[str]], where: dict[str, tuple[int, int]]
) -> list[str]:
    """The ops in an order where graph predecessors and lane predecessors come first."""
    indeg = {op: len(g.predecessors(op)) + (where[op][1] > 0) for op in g.ops}
    ready = [op for op in g.topo_order if indeg[op] == 0]
    out: list[str] = []
    while ready:
        op = ready.pop()
        out.append(op)
        li, i = where[op]
        nxt = [*g.successors(op)]
        if i + 1 < len(lanes[li]):
            nxt.append(lanes[li][i + 1])
        for v in nxt:
            indeg[v] -= 1
            if indeg[v] == 0:
                ready.append(v)
    if len(out) != len(g.ops):
        raise SimGPUError(f"'{g.name}': its lanes contradict its dependencies")
    return out


def check_weights(names: Sequence[str], weights: Sequence[int], limit: int, what: str) -> None:
    """The tenants' weights must fit, with room for requests: one-line error if not."""
    total = sum(weights)
    if total >= limit:
        each = ", ".join(f"{n} {mb(w):.1f}" for n, w in zip(names, weights, strict=True))
        raise MemoryLimitError(
            f"the tenants' weights ({mb(total):.1f} MB: {each}) do not fit in {what} "
            f"({mb(limit):.1f} MB)"
        )


# --- the report ----------------------------------------------------------------------


@dataclass
class TenantMemory:
    """One tenant in a run: its weights, the reservation each request makes, its peak
    allocated (weights + its live activations) and its pools' peak reserved bytes."""

    name: str
    weights: int
    request: int
    peak_allocated: int = 0
    peak_reserved: int = 0


@dataclass
class RunMemory:
    """A multi-tenant run's memory on its GPU (see the module docstring)."""

    limit: int
    weights: int
    peak_allocated: int
    peak_reserved: int
    peak_at_us: float
    peak_op: str | None
    tenants: list[TenantMemory]
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The run-level fields a result row carries."""
        return {
            "peak_memory_mb": mb(self.peak_allocated),
            "reserved_memory_mb": mb(self.peak_reserved),
            "weights_memory_mb": mb(self.weights),
            "memory_limit_mb": mb(self.limit),
            "memory_peak_at_us": self.peak_at_us,
            "memory_notes": list(self.notes),
        }

    def tenant_json(self, i: int) -> dict[str, float]:
        t = self.tenants[i]
        return {
            "peak_memory_mb": mb(t.peak_allocated),
            "reserved_memory_mb": mb(t.peak_reserved),
            "weights_memory_mb": mb(t.weights),
            "request_memory_mb": mb(t.request),
        }


_FREE, _ALLOC = 0, 1


def replay(run: MultiTenantRun, tensors: Sequence[Tensors] | None = None) -> RunMemory:
    """Replay every request's allocations at the instants the run made them (module
    docstring); set ``run.timeline.memory`` (the GPU's track) and return the report.
    ``tensors``: each tenant's table (default: from a plain lowering of its graph).
    The limit and reservations are the run's admission budget's; a run without one is
    reported against the GPU's memory, with the bound of each tenant's lanes."""
    wl = run.workload
    if tensors is None:
        tensors = [tensors_of(t.graph, run.gpu) for t in wl.tenants]
    weights = sum(t.weight_bytes for t in tensors)
    if run.memory is not None:
        requests = list(run.memory.request)
        limit = weights + run.memory.capacity
    else:
        requests = [lane_bound(t, lanes) for t, lanes in zip(tensors, run.plan.lanes, strict=True)]
        limit = gpu_capacity(run.gpu)
    idx = {t.name: i for i, t in enumerate(wl.tenants)}
    # (tenant, rid, op) -> (stream, first start, last end)
    spans: dict[tuple[int, int, str], tuple[int, float, float]] = {}

    def see(label: str, stream: int, start: float, end: float) -> None:
        name, rid, op = parse_label(label)
        key = (idx[name], rid, op)
        s = spans.get(key)
        if s is None:
            spans[key] = (stream, start, end)
        else:
            spans[key] = (s[0], min(s[1], start), max(s[2], end))

    tl = run.timeline
    for k in tl.kernels:
        see(k.op, k.stream, k.start_us, k.end_us)
    for c in tl.commands:
        if c.kind == "noop" and c.op is not None:
            see(c.op, c.stream, c.done_us, c.done_us)
    # events: (time, kind, seq, tenant, stream, key, size, label)
    events: list[tuple[float, int, int, int, int, tuple[int, int, str], int, str]] = []
    seq = 0

    def ev(time: float, kind: int, ti: int, stream: int, key: tuple, size: int, op: str) -> None:
        nonlocal seq
        events.append((time, kind, seq, ti, stream, key, size, op))
        seq += 1

    for rec in run.requests:
        if rec.done_us is None:
            continue
        ti, rid, t = rec.tenant, rec.rid, tensors[rec.tenant]
        assert rec.issue_us is not None
        name = wl.tenants[ti].name

        def span(op: str, ti: int = ti, rid: int = rid, name: str = name) -> tuple:
            s = spans.get((ti, rid, op))
            if s is None:
                raise SimGPUError(f"memory: op '{op}' of request {name}#{rid} never ran")
            return s

        for r in t.inputs:
            ev(rec.issue_us, _ALLOC, ti, span(r)[0], (ti, rid, r), t.size[r], f"{name}#{rid}/{r}")
            ev(rec.done_us, _FREE, ti, 0, (ti, rid, r), 0, "")
        for r, size in t.size.items():
            if r in t.inputs:
                continue
            stream, start, end = span(r)
            key = (ti, rid, r)
            ev(start, _ALLOC, ti, stream, key, size, f"{name}#{rid}/{r}")
            if r in t.outputs:
                free = rec.done_us
            else:
                free = max([end, *(span(u)[2] for u in t.readers[r])])
            ev(free, _FREE, ti, 0, key, 0, "")
        for op, ws in t.workspace.items():
            if ws:
                stream, start, end = span(op)
                key = (ti, rid, op + "#workspace")
                ev(start, _ALLOC, ti, stream, key, ws, f"{name}#{rid}/{op}")
                ev(end, _FREE, ti, 0, key, 0, "")
    events.sort(key=lambda e: (e[0], e[1], e[2]))

    cfg = tensors[0].config if tensors else None
    gpu_alloc = CachingAllocator(cfg) if cfg is not None else None
    assert gpu_alloc is not None
    own = [CachingAllocator(t.config) for t in tensors]
    tenants = [
        TenantMemory(ten.name, t.weight_bytes, req)
        for ten, t, req in zip(wl.tenants, tensors, requests, strict=True)
    ]
    for ti, t in enumerate(tensors):  # weights load first, on the default stream, and stay
        for op in t.graph.ops:
            w = t.weights[op]
            if w:
                gpu_alloc.alloc(w, 0)
                own[ti].alloc(w, 0)
    live = [t.weight_bytes for t in tensors]
    for ti, tm in enumerate(tenants):
        tm.peak_allocated = live[ti]
    samples: list[tuple[float, int, int]] = [(0.0, gpu_alloc.allocated, gpu_alloc.reserved)]
    peak, peak_at, peak_op = gpu_alloc.allocated, 0.0, None
    held: dict[tuple, tuple[Any, Any, int]] = {}
    for time, kind, _, ti, stream, key, size, op in events:
        if kind == _FREE:
            b_gpu, b_own, size = held.pop(key)
            gpu_alloc.free(b_gpu)
            own[ti].free(b_own)
            live[ti] -= size
        else:
            held[key] = (gpu_alloc.alloc(size, stream), own[ti].alloc(size, stream), size)
            live[ti] += size
            if live[ti] > tenants[ti].peak_allocated:
                tenants[ti].peak_allocated = live[ti]
            if gpu_alloc.allocated > peak:
                peak, peak_at, peak_op = gpu_alloc.allocated, time, op
        sample = (time, gpu_alloc.allocated, gpu_alloc.reserved)
        if samples[-1][0] == time:
            samples[-1] = sample
        else:
            samples.append(sample)
    end = run.end_us
    if samples[-1][0] < end:
        samples.append((end, gpu_alloc.allocated, gpu_alloc.reserved))
    for tm, a in zip(tenants, own, strict=True):
        tm.peak_reserved = a.peak_reserved
    report = RunMemory(limit, weights, peak, gpu_alloc.peak_reserved, peak_at, peak_op, tenants)
    if peak > limit:
        if run.memory is not None:  # admission keeps allocated bytes within it: a bug
            raise SimGPUError(
                f"memory: {mb(peak):.1f} MB allocated at {peak_at:.1f} us exceeds the "
                f"admission limit {mb(limit):.1f} MB ({peak_op})"
            )
        report.notes.append(
            f"peak {mb(peak):.0f} MB exceeds the GPU's {limit / MB:.0f} MB (run without "
            "memory admission)"
        )
    elif report.peak_reserved > limit:
        report.notes.append(
            f"reserved {mb(report.peak_reserved):.0f} MB exceeds the {limit / MB:.0f} MB limit: "
            "admission counts allocated bytes (PyTorch frees cached segments and retries "
            "before it fails an allocation)"
        )
    tl.memory = [MemoryTrack(0, samples, peak, gpu_alloc.peak_reserved, peak_at, peak_op, weights)]
    return report


__all__ = [
    "RunMemory",
    "TenantMemory",
    "check_weights",
    "gpu_capacity",
    "lane_bound",
    "replay",
    "request_tensors",
]
