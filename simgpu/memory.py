"""GPU memory of a schedule: which tensors are live when, and what the allocator reserves.

Running branches concurrently keeps more tensors alive at once, so the fastest schedule
is rarely the leanest. This module reads a finished run (its program and timeline) and
replays the run's allocations through the caching allocator of :mod:`simgpu.allocator`:

* an op's output is allocated when its first kernel starts and freed when the last
  kernel of its last reader ends (views alias their input's storage, so a view's readers
  keep that storage alive);
* weights are resident for the whole run, on every device that runs their op; the
  graph's inputs are pinned from the start and its outputs from when they are produced;
* a library call's workspace (split-K partial sums, Winograd's transformed tensors) is
  held from the op's first kernel start to its last kernel end;
* a peer copy's destination buffer lives on the receiving GPU from the copy's start
  until its last reader there ends.

Sizes are the allocator's rounded block sizes, as ``torch.cuda.memory_allocated`` counts
them. ``MB`` in reports is MiB (2^20 bytes), as PyTorch and nvidia-smi print it.

It also gives the bounds a memory-aware scheduler needs without simulating: the live
bytes after a set of ops ran (:meth:`Tensors.live_after`), a lower bound on any
schedule's peak, and the peak of one stream in a topological order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from simgpu.allocator import AllocatorConfig, CachingAllocator, config_from
from simgpu.errors import SimGPUError
from simgpu.graph import OpGraph
from simgpu.hardware import GPUSpec, Machine
from simgpu.kernels import Kernel, KernelCache, signature
from simgpu.ops import kind_of, numel
from simgpu.program import Launch, StreamProgram
from simgpu.timeline import MemoryTrack, Timeline

MB = 1 << 20


class MemoryLimitError(SimGPUError):
    """A schedule's live tensors (or the segments backing them) exceed the memory limit."""


def mb(nbytes: float) -> float:
    return nbytes / MB


# --- the tensors of a graph -----------------------------------------------------------


def _is_view(graph: OpGraph, name: str) -> bool:
    op = graph[name]
    return kind_of(op).view or (op.kind == "slice" and op.attrs.get("view") is True)


@dataclass
class Tensors:
    """Every allocation a graph makes, independent of any schedule.

    ``root[op]`` is the op whose storage ``op``'s output is (itself unless it is a view);
    ``size`` holds the rounded bytes of each storage root; ``readers[root]`` the ops with
    device work that read that storage (through any chain of views); ``workspace`` and
    ``weights`` are per op, rounded; ``inputs`` are the graph's input roots (pinned from
    the start) and ``outputs`` the roots of ops nobody reads (pinned once produced)."""

    graph: OpGraph
    config: AllocatorConfig
    root: dict[str, str]
    size: dict[str, int]
    readers: dict[str, list[str]]
    workspace: dict[str, int]
    weights: dict[str, int]
    inputs: list[str]
    outputs: set[str]
    unmatched: list[str] = field(default_factory=list)  # memory.ops names matching no op

    @property
    def weight_bytes(self) -> int:
        return sum(self.weights.values())

    @property
    def input_bytes(self) -> int:
        return sum(self.size[r] for r in self.inputs)

    def footprint(self, op: str) -> int:
        """Bytes an op needs live while it runs: its inputs' storage, its output and its
        workspace (weights and pinned inputs not included)."""
        roots = {self.root[i] for i in self.graph[op].inputs} | {self.root[op]}
        return sum(self.size.get(r, 0) for r in roots if r not in self.inputs) + self.workspace[op]

    def live_after(self, done: Iterable[str]) -> int:
        """Activation bytes live once exactly the ops in ``done`` have finished (and no
        other has started): outputs not yet read by every reader, and graph outputs.
        Weights and the graph's inputs are not included."""
        done = set(done)
        total = 0
        for r, size in self.size.items():
            if r in self.inputs or r not in done:
                continue
            if r in self.outputs or any(u not in done for u in self.readers[r]):
                total += size
        return total

    def resident(self) -> int:
        """Bytes held for the whole run: weights and the graph's inputs."""
        return self.weight_bytes + self.input_bytes

    def lower_bound(self, devices: int = 1) -> int:
        """Bytes any schedule must hold at once on one GPU: the resident bytes plus the
        largest single op's footprint, or plus all graph outputs (alive together at the
        end), whichever is more. The least peak over all orders is NP-hard in general;
        this is what every order must pay. Over ``devices`` GPUs: the most loaded GPU
        holds at least its share of the weights, and every op's GPU its footprint."""
        if devices > 1:
            return max(
                -(-self.weight_bytes // devices),
                max((self.footprint(op) + self.weights[op] for op in self.graph.ops), default=0),
            )
        outs = sum(self.size[r] for r in self.outputs if r not in self.inputs)
        largest = max((self.footprint(op) for op in self.graph.ops), default=0)
        return self.resident() + max(largest, outs)

    def sequential_peak(self, order: Sequence[str] | None = None) -> int:
        """Peak allocated bytes of the ops run one at a time in ``order`` (a topological
        order; by default the graph's): each op's output and workspace are allocated
        as it starts, its workspace and every tensor it was the last reader of freed as
        it ends."""
        order = list(order) if order is not None else self.graph.topo_order
        pos = {op: i for i, op in enumerate(order)}
        last: dict[int, list[str]] = {}
        for r, users in self.readers.items():
            if r in self.inputs or r in self.outputs:
                continue
            end = max((pos[u] for u in users), default=pos[r])
            last.setdefault(max(end, pos[r]), []).append(r)
        live = self.resident()
        peak = live
        for i, op in enumerate(order):
            if self.root[op] == op and op not in self.inputs:
                live += self.size.get(op, 0)
            peak = max(peak, live + self.workspace[op])
            live -= sum(self.size[r] for r in last.get(i, ()))
        return peak


def _overrides(gpu: GPUSpec) -> Mapping[str, Mapping[str, int]]:
    return gpu.memory.get("ops", {}) if gpu.memory else {}


def allocator_config(gpu: GPUSpec) -> AllocatorConfig:
    return config_from(gpu.memory) if gpu.memory else AllocatorConfig()


def op_override(gpu: GPUSpec, graph: OpGraph, op: str) -> tuple[str | None, Mapping[str, int]]:
    """A GPU JSON's ``memory.ops`` entry for an op, by its name, else by its signature:
    (the key that matched or None, the entry)."""
    table = _overrides(gpu)
    if not table:
        return None, {}
    if op in table:
        return op, table[op]
    sig = signature(graph, op)
    return (sig, table[sig]) if sig in table else (None, {})


def tensors_of(
    graph: OpGraph,
    gpu: GPUSpec,
    kernels: Mapping[str, Sequence[Kernel]] | KernelCache | None = None,
) -> Tensors:
    """The tensor table of ``graph`` on ``gpu``. ``kernels`` gives each op's kernels (for
    their workspace); by default the ops are lowered here."""
    cfg = allocator_config(gpu)
    if kernels is None:
        kernels = KernelCache(gpu)

    def ks(op: str) -> Sequence[Kernel]:
        if isinstance(kernels, KernelCache):
            return kernels.lower(graph, op)
        return kernels.get(op, ())

    root: dict[str, str] = {}
    size: dict[str, int] = {}
    readers: dict[str, list[str]] = {}
    workspace: dict[str, int] = {}
    weights: dict[str, int] = {}
    inputs: list[str] = []
    matched: set[str] = set()
    for name in graph.topo_order:
        op = graph[name]
        key, over = op_override(gpu, graph, name)
        if key is not None:
            matched.add(key)
        if _is_view(graph, name) and op.inputs:
            if "output_bytes" in over:
                raise SimGPUError(
                    f"GPU '{gpu.name}': memory.ops[{key!r}]: output_bytes given for '{name}', "
                    f"a {op.kind} view: it has no storage of its own"
                )
            root[name] = root[op.inputs[0]]
        else:
            root[name] = name
            raw = over.get("output_bytes", numel(op.output_shape) * op.dtype_bytes)
            size[name] = cfg.round(raw)
            readers[name] = []
            if op.kind == "input" or not op.inputs:
                inputs.append(name)
        if not _is_view(graph, name):
            for r in dict.fromkeys(root[i] for i in op.inputs):
                readers[r].append(name)
        ws = over.get("workspace_bytes", max((k.workspace_bytes for k in ks(name)), default=0))
        workspace[name] = cfg.round(ws)
        weights[name] = cfg.round(graph.stats(name).params * op.dtype_bytes)
    # storage nobody reads is a result of the graph (a view that is an output keeps its
    # root's storage: that root is then read by nothing with device work after it)
    read_by_view_output = {root[n] for n in graph.ops if not graph.successors(n)}
    outputs = {r for r, users in readers.items() if not users} | read_by_view_output
    # entries by op name that name no op here: a typo, or another model's names (an
    # entry keyed by signature applies wherever the shape recurs, so it is not listed)
    unmatched = sorted(k for k in _overrides(gpu) if k not in matched and not k.startswith("["))
    return Tensors(graph, cfg, root, size, readers, workspace, weights, inputs, outputs, unmatched)


# --- replaying a run's allocations ----------------------------------------------------


class Interval(NamedTuple):
    """One allocation: ``key`` is the storage root's op name, ``op#workspace`` or
    ``root@device`` (a peer copy's buffer); ``end_us`` is None while it is never freed
    (weights, the graph's inputs and outputs). ``nbytes`` is the rounded request."""

    key: str
    op: str
    device: int
    stream: int
    start_us: float
    end_us: float | None
    nbytes: int


@dataclass
class MemoryReport:
    """Peak allocated and reserved bytes of a run, per device, and the bounds."""

    tracks: list[MemoryTrack]
    lower_bound: int
    sequential_peak: int
    notes: list[str] = field(default_factory=list)
    # every allocation of the run: what it was, where, and when it lived
    intervals: list[Interval] = field(default_factory=list)

    @property
    def peak_allocated(self) -> int:
        return max((t.peak_allocated for t in self.tracks), default=0)

    @property
    def peak_reserved(self) -> int:
        return max((t.peak_reserved for t in self.tracks), default=0)

    @property
    def peak_memory_mb(self) -> float:
        return mb(self.peak_allocated)

    @property
    def reserved_memory_mb(self) -> float:
        return mb(self.peak_reserved)

    def to_json(self) -> dict:
        return {
            "peak_memory_mb": self.peak_memory_mb,
            "reserved_memory_mb": self.reserved_memory_mb,
            "memory_lower_bound_mb": mb(self.lower_bound),
            "sequential_peak_mb": mb(self.sequential_peak),
            "per_device": [
                {
                    "device": t.device,
                    "peak_memory_mb": mb(t.peak_allocated),
                    "reserved_memory_mb": mb(t.peak_reserved),
                    "peak_at_us": t.peak_at_us,
                    "peak_op": t.peak_op,
                    "weights_mb": mb(t.weights),
                }
                for t in self.tracks
            ],
        }


# event kinds, in the order they apply at one instant: frees first (a tensor dead at t
# makes room for one born at t), then allocations
_FREE, _ALLOC = 0, 1


def _spans(
    timeline: Timeline,
) -> dict[str, tuple[int, int, float, float]]:
    """op -> (device, stream, first start, last end) of its kernels (or of its no-work
    command, for a view)."""
    spans: dict[str, tuple[int, int, float, float]] = {}
    for k in timeline.kernels:
        s = spans.get(k.op)
        if s is None:
            spans[k.op] = (k.device, k.stream, k.start_us, k.end_us)
        else:
            spans[k.op] = (s[0], s[1], min(s[2], k.start_us), max(s[3], k.end_us))
    for c in timeline.commands:
        if c.kind == "noop" and c.op is not None and c.op not in spans:
            spans[c.op] = (c.device, c.stream, c.done_us, c.done_us)
    return spans


def account(
    timeline: Timeline,
    program: StreamProgram,
    graph: OpGraph,
    machine: Machine | GPUSpec,
    limit_bytes: int | None = None,
    tensors: Tensors | None = None,
) -> MemoryReport:
    """Replay the run's allocations; set ``timeline.memory`` and return the report.

    ``graph`` is the graph the program runs (a rewritten one where a scheduler rewrote
    it). ``limit_bytes`` (per GPU) makes a live set above it a :class:`MemoryLimitError`
    naming the op and the instant."""
    gpus = [machine] if isinstance(machine, GPUSpec) else list(machine.devices)
    kernels: dict[str, list[Kernel]] = {}
    for c in program.commands:
        if isinstance(c, Launch) and c.kernel is not None:
            kernels.setdefault(c.op, []).append(c.kernel)
    t = tensors if tensors is not None else tensors_of(graph, gpus[0], kernels)
    spans = _spans(timeline)
    missing = [op for op in graph.ops if op not in spans]
    if missing:
        raise SimGPUError(
            f"memory: op '{missing[0]}' has no record in the timeline "
            f"({len(missing)} op(s) missing): the program does not run the whole graph"
        )
    # the device each storage is read on: a peer copy gives the reader its own buffer
    events: list[
        tuple[float, int, int, int, int, str, str]
    ] = []  # t, kind, seq, dev, stream, key, op
    seq = 0

    def ev(time: float, kind: int, dev: int, stream: int, key: str, op: str) -> None:
        nonlocal seq
        events.append((time, kind, seq, dev, stream, key, op))
        seq += 1

    ndev = len(gpus)
    weights = [0] * ndev
    for op, w in t.weights.items():
        weights[spans[op][0]] += w
    copies_to: dict[tuple[str, int], float] = {}  # (root, device) -> copy start
    copy_read_end: dict[str, float] = {}  # root -> end of the last copy reading it
    for c in timeline.copies:
        if c.tensor is None or c.tensor not in t.root:
            continue
        r = t.root[c.tensor]
        key = (r, c.dst)
        copies_to[key] = min(copies_to.get(key, c.start_us), c.start_us)
        copy_read_end[r] = max(copy_read_end.get(r, 0.0), c.end_us)
    makespan = timeline.makespan_us
    for r in t.inputs:
        ev(0.0, _ALLOC, spans[r][0], spans[r][1], r, r)
    for r in t.size:
        if r in t.inputs:
            continue
        dev, stream, start, end = spans[r]
        ev(start, _ALLOC, dev, stream, r, r)
        if r in t.outputs:
            continue
        ends = [spans[u][3] for u in t.readers[r] if spans[u][0] == dev]
        ev(max([end, *ends, copy_read_end.get(r, end)]), _FREE, dev, stream, r, r)
    for (r, dev), start in copies_to.items():
        ends = [spans[u][3] for u in t.readers[r] if spans[u][0] == dev]
        key = f"{r}@{dev}"
        ev(start, _ALLOC, dev, -1, key, r)  # a copy's buffer: the copy stream's pool
        if r not in t.outputs:
            ev(max([start, *ends]), _FREE, dev, -1, key, r)
    for op, ws in t.workspace.items():
        if ws:
            dev, stream, start, end = spans[op]
            ev(start, _ALLOC, dev, stream, f"{op}#workspace", op)
            ev(end, _FREE, dev, stream, f"{op}#workspace", op)
    events.sort(key=lambda e: (e[0], e[1], e[2]))

    # which storage some other stream also used: under capture its block stays out of
    # the pool until the graph ends
    stream_of = {op: s[1] for op, s in spans.items()}
    cross = {
        r for r, users in t.readers.items() if any(stream_of[u] != stream_of[r] for u in users)
    }
    sizes = dict(t.size)
    for op, ws in t.workspace.items():
        sizes[f"{op}#workspace"] = ws
    for r, dev in copies_to:
        sizes[f"{r}@{dev}"] = t.size[r]
    alloc = [CachingAllocator(t.config) for _ in gpus]
    tracks = [MemoryTrack(d, [(0.0, 0, 0)], 0, 0, 0.0, None, weights[d]) for d in range(ndev)]
    for d in range(ndev):  # weights load first, on the default stream, and stay
        for op in graph.ops:
            if t.weights[op] and spans[op][0] == d:
                alloc[d].alloc(t.weights[op], 0)
        tracks[d].samples[0] = (0.0, alloc[d].allocated, alloc[d].reserved)
    live: dict[str, object] = {}
    born: dict[str, int] = {}  # key -> index in intervals
    intervals: list[Interval] = []
    for d in range(ndev):
        for op in graph.ops:
            if t.weights[op] and spans[op][0] == d:
                intervals.append(Interval(f"{op}#weights", op, d, 0, 0.0, None, t.weights[op]))
    for time, kind, _, dev, stream, key, op in events:
        a = alloc[dev]
        if kind == _FREE:
            a.free(live.pop(key), deferred=program.graph_mode and key in cross)  # type: ignore[arg-type]
            intervals[born[key]] = intervals[born[key]]._replace(end_us=time)
        else:
            need = sizes[key]
            if limit_bytes is not None and a.allocated + need > limit_bytes:
                raise MemoryLimitError(_over(op, key, dev, time, need, a.allocated, limit_bytes))
            live[key] = a.alloc(need, stream)
            born[key] = len(intervals)
            intervals.append(Interval(key, op, dev, stream, time, None, need))
        tr = tracks[dev]
        if a.allocated > tr.peak_allocated:
            tr.peak_allocated, tr.peak_at_us, tr.peak_op = a.allocated, time, op
        sample = (time, a.allocated, a.reserved)
        if tr.samples[-1][0] == time:
            tr.samples[-1] = sample
        else:
            tr.samples.append(sample)
    for d, tr in enumerate(tracks):
        alloc[d].release_deferred()
        tr.peak_reserved = alloc[d].peak_reserved
        tr.peak_allocated = max(tr.peak_allocated, alloc[d].peak_allocated)
        if tr.samples[-1][0] < makespan:
            tr.samples.append((makespan, alloc[d].allocated, alloc[d].reserved))
    report = MemoryReport(tracks, t.lower_bound(ndev), t.sequential_peak(), intervals=intervals)
    capacity = min(int(g.memory_gb * (1 << 30)) for g in gpus)
    if report.peak_allocated > capacity:
        report.notes.append(
            f"peak {report.peak_memory_mb:.0f} MB exceeds the GPU's {capacity / MB:.0f} MB"
        )
    timeline.memory = tracks
    return report


def apart(a: int, b: int) -> tuple[str, str]:
    """Two byte counts in MB with as few decimals (1 to 6) as tell them apart: a limit
    just below a bound must not print as equal to it."""
    for d in range(1, 7):
        x, y = f"{mb(a):.{d}f}", f"{mb(b):.{d}f}"
        if x != y:
            break
    return x, y


def _over(op: str, key: str, dev: int, time: float, need: int, live: int, limit: int) -> str:
    what = (
        "workspace"
        if key.endswith("#workspace")
        else "copy of its output"
        if "@" in key and key.rsplit("@", 1)[0] == op
        else "output"
    )
    lim, now = apart(limit, live + need)
    return (
        f"memory limit {lim} MB exceeded on GPU {dev} at {time:.1f} us: op '{op}' "
        f"allocates its {mb(need):.2f} MB {what}, bringing the live set to {now} MB"
    )


def parse_limit_mb(value: float | None, where: str = "--memory-limit") -> int | None:
    """A memory limit in MB (MiB) as bytes; None stays None. The one rule every entry
    point (CLI flags, sweep grids) applies."""
    import math

    if value is None:
        return None
    if isinstance(value, bool) or not math.isfinite(value) or value <= 0 or value > 2**30:
        raise SimGPUError(f"{where}: expected a positive number of MB, got {value!r}")
    return int(value * MB)


def check_limit_feasible(tensors: Tensors, limit_bytes: int, devices: int = 1) -> None:
    """A limit below what any schedule must hold is an error before anything runs."""
    bound = tensors.lower_bound(devices)
    if devices == 1:
        what = "weights, inputs and the largest op's inputs, output and workspace"
    else:
        what = f"a {devices}-GPU share of the weights, or the largest op's footprint"
    if limit_bytes < bound:
        lim, need = apart(limit_bytes, bound)
        raise MemoryLimitError(
            f"memory limit {lim} MB is below the {need} MB any schedule "
            f"of '{tensors.graph.name}' must hold ({what})"
        )
