"""PyTorch profiler (Kineto) traces: import, and replay on the simulator.

Import reads a Chrome trace (plain or gzipped JSON) into typed records: the GPU
activities (kernels with their launch configuration, memcpys, memsets), the runtime
calls that launched them (matched by correlation id), event records and stream waits
(bound through the ``cuda_sync`` events that name the recording stream), host
synchronisations, and the ``deviceProperties`` block.

Replay turns the trace into a :class:`~simgpu.program.StreamProgram` and simulates it.
Each kernel carries its recorded duration; the simulator decides when it *starts*, from
the host's issue times, stream order, events and the SMs it must share — recorded start
times are never used. The host side is replayed one of two ways:

- ``host="recorded"``: every command is issued at its recorded host time. The engine
  charges fixed per-API costs, so those are set to zero and each recorded gap between
  two commands becomes a *host-gap* command pair on an extra, otherwise unused device:
  a kernel lasting exactly the gap, then a synchronize on that device. The host is
  blocked for the gap, as the real thread was busy for it. Gaps are measured from the
  previous command (from a synchronize's recorded return), so a sync that returns
  earlier or later in the simulation shifts everything after it, as it would for real.
- ``host="median"``: no gaps; the GPU spec's host costs are the trace's medians
  (:func:`calibrate.fit.fit_host_costs`) — what a simulation of a schedule would use.

simgpu's own traces (:mod:`simgpu.chrome_trace`) read the same way: their GPU is the
preset they name, and the event records and waits inside a CUDA Graph, which CUPTI does
not report, are cuda_sync events tied to their cudaGraphLaunch (:class:`GraphNode`), so
a graph's cross-stream dependencies replay too.

The comparison reports more than the GPU span (first activity start to last end), which
a trace idle most of its span matches whatever the starts: per-activity start errors
(mean and p95 of |simulated - recorded| start, from the host origin and with both first
activities aligned), the GPU busy time (union of activity intervals) per device and per
stream, and per-stream spans.

What would make the recorded mode exact without the extra device: an optional
per-command host cost (or absolute issue time) on ``Launch``/``Record``/``Wait`` that
``Simulation.host`` uses in place of the spec's per-API cost.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from calibrate.errors import TraceError
from simgpu.errors import LoweringError, SimGPUError
from simgpu.hardware import GPUSpec, Machine, gpu_from_json
from simgpu.kernels import Kernel, Occupancy, occupancy, timed_kernel, waves
from simgpu.limits import check as check_limit
from simgpu.program import Command, Launch, Record, StreamProgram, Synchronize, Wait
from simgpu.timeline import Timeline
from simgpu.userfiles import max_file_bytes, parse_json, read_bytes

GPU_CATEGORIES = {
    "kernel": "kernel",
    "gpu_memcpy": "memcpy",
    "memcpy": "memcpy",
    "gpu_memset": "memset",
    "memset": "memset",
}
CALL_CATEGORIES = {"cuda_runtime", "runtime", "cuda_driver", "driver"}
SYNC_CALLS = {
    "cudaDeviceSynchronize": "device",
    "cuCtxSynchronize": "device",
    "cudaStreamSynchronize": "stream",
    "cuStreamSynchronize": "stream",
    "cudaEventSynchronize": "event",
    "cuEventSynchronize": "event",
}
RECORD_CALLS = {"cudaEventRecord", "cudaEventRecordWithFlags", "cuEventRecord"}
WAIT_CALLS = {"cudaStreamWaitEvent", "cuStreamWaitEvent"}
NO_STREAM = {-1, 4294967295}


# --- records --------------------------------------------------------------------------


def _end(ts: float, dur: float) -> float:
    """``ts + dur`` to the nanosecond: traces hold times to the nanosecond at best, and the
    float sum's noise (5.0 + 15.74 = 20.740000000000002) must not order a call after the
    next one that starts where it ends."""
    return round(ts + dur, 3)


@dataclass(frozen=True)
class RuntimeCall:
    """A CUDA runtime (or driver) API call on a host thread; times in microseconds."""

    name: str
    ts: float
    dur: float
    correlation: int
    tid: int = 0

    @property
    def end(self) -> float:
        return _end(self.ts, self.dur)


@dataclass(frozen=True)
class GpuActivity:
    """A kernel, memcpy or memset as the GPU ran it."""

    index: int  # position among the trace's activities, by recorded start
    kind: str  # "kernel" | "memcpy" | "memset"
    name: str
    device: int
    stream: int
    ts: float
    dur: float
    correlation: int
    grid: tuple[int, int, int] = (1, 1, 1)
    block: tuple[int, int, int] = (1, 1, 1)
    regs: int = 0
    smem: int = 0
    nbytes: int = 0

    @property
    def end(self) -> float:
        return _end(self.ts, self.dur)

    @property
    def blocks(self) -> int:
        return math.prod(self.grid)

    @property
    def threads(self) -> int:
        return math.prod(self.block)


@dataclass(frozen=True)
class EventRecordCall:
    """cudaEventRecord; its stream is known only where a wait or sync names it."""

    call: RuntimeCall
    stream: int | None
    device: int = 0


@dataclass(frozen=True)
class StreamWaitCall:
    """cudaStreamWaitEvent: ``stream`` waits for the record whose call is ``record``."""

    call: RuntimeCall
    stream: int | None
    record: int | None  # correlation id of the cudaEventRecord call
    device: int = 0


@dataclass(frozen=True)
class SyncCall:
    """A host synchronisation: ``kind`` is "device", "stream" or "event"."""

    call: RuntimeCall
    kind: str
    stream: int | None
    device: int = 0


@dataclass(frozen=True)
class GraphNode:
    """An event record or wait inside a CUDA Graph, as simgpu's own traces write it
    (a cuda_sync event whose ``args.graph`` is its cudaGraphLaunch's correlation); CUPTI
    reports no such thing, so real traces have none. ``ts`` is when it completed."""

    kind: str  # "record" | "wait"
    ts: float
    device: int
    stream: int
    correlation: int
    graph: int
    record: int | None = None  # a wait's record (its correlation)


@dataclass
class KinetoTrace:
    source: str
    device_properties: list[dict[str, Any]]
    activities: list[GpuActivity]
    calls: list[RuntimeCall]
    launches: dict[int, RuntimeCall]  # correlation -> the call that launched it
    records: list[EventRecordCall] = field(default_factory=list)
    waits: list[StreamWaitCall] = field(default_factory=list)
    syncs: list[SyncCall] = field(default_factory=list)
    graph_nodes: list[GraphNode] = field(default_factory=list)

    @property
    def devices(self) -> list[int]:
        return sorted({a.device for a in self.activities})

    @property
    def streams(self) -> list[tuple[int, int]]:
        return sorted({(a.device, a.stream) for a in self.activities})

    def count(self, kind: str) -> int:
        return sum(1 for a in self.activities if a.kind == kind)

    def props(self, device: int = 0) -> dict[str, Any] | None:
        for p in self.device_properties:
            if isinstance(p, dict) and _is_int(p.get("id")) and p["id"] == device:
                return p
        return None

    def launcher(self, a: GpuActivity) -> RuntimeCall | None:
        return self.launches.get(a.correlation)

    @property
    def orphans(self) -> list[GpuActivity]:
        """Activities whose launching call is not in the trace (launched before it began)."""
        return [a for a in self.activities if a.correlation not in self.launches]

    def span_us(self) -> float:
        """Recorded GPU span: first activity start to last activity end."""
        return max(a.end for a in self.activities) - min(a.ts for a in self.activities)


# --- reading ---------------------------------------------------------------------------


def read_trace_json(path: str | Path) -> Any:
    """The JSON of a trace file, gzipped or not; every failure is one TraceError line
    (:mod:`simgpu.userfiles`: a regular file under the size limit, and its decompressed
    text under it too, bounded nesting)."""
    p = Path(path)
    raw = read_bytes(p, TraceError)
    if raw[:2] == b"\x1f\x8b":
        limit = max_file_bytes()
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out = d.decompress(raw, limit + 1)
        except zlib.error as e:
            raise TraceError(f"{p}: corrupt gzip data ({e})") from None
        if len(out) > limit:
            raise TraceError(
                f"{p}: decompresses to more than the {limit / 2**20:.0f} MiB limit "
                "(set SIMGPU_MAX_FILE_MB to raise it)"
            )
        if not d.eof:
            raise TraceError(f"{p}: truncated gzip file (the compressed stream ends early)")
        raw = out
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TraceError(f"{p}: not UTF-8 text at byte {e.start} (not a JSON trace)") from None
    return parse_json(text, str(p), TraceError)


def load_trace(path: str | Path) -> KinetoTrace:
    return parse_trace(read_trace_json(path), source=str(path))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _opt_int(v: Any, what: str) -> int | None:
    """An optional integer field of an event's args: None where the profiler omitted it
    or wrote null; a value of another type is an error, not a default (issue 20)."""
    if v is None:
        return None
    if not _is_int(v):
        raise ValueError(f"{what} is {v!r}, not an integer")
    return v


def _num(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        raise ValueError(f"{what} is {v!r}")
    x = float(v)
    if not math.isfinite(x):
        raise ValueError(f"{what} is {v!r}")
    return x


def _int(v: Any, what: str) -> int:
    x = _num(v, what)
    if not x.is_integer():
        raise ValueError(f"{what} is {v!r}, not an integer")
    return int(x)


def _dim3(v: Any, what: str) -> tuple[int, int, int]:
    if isinstance(v, int | float) and not isinstance(v, bool):
        v = [v, 1, 1]
    if not isinstance(v, list | tuple) or not 1 <= len(v) <= 3:
        raise ValueError(f"{what} is {v!r}, not [x, y, z]")
    dims = [_int(x, what) for x in v] + [1] * (3 - len(v))
    if any(d < 1 for d in dims):
        raise ValueError(f"{what} is {v!r}: dimensions must be positive")
    # CUDA's own limits on a grid (x < 2^31, y and z < 2^16); a block's are lower still
    if dims[0] > 2**31 - 1 or dims[1] > 65535 or dims[2] > 65535:
        raise ValueError(f"{what} is {v!r}: beyond what CUDA launches")
    return (dims[0], dims[1], dims[2])


def parse_trace(data: Any, source: str = "<trace>") -> KinetoTrace:
    """Typed records from a trace's JSON. Malformed events are errors that name the
    event; events of other categories (CPU ops, annotations, flows) are ignored."""
    if isinstance(data, dict):
        events = data.get("traceEvents")
        props = data.get("deviceProperties", [])
    else:
        events, props = data, []
    if not isinstance(events, list):
        raise TraceError(f'{source}: not a Chrome trace (no "traceEvents" list)')
    if not isinstance(props, list) or not all(isinstance(p, dict) for p in props):
        raise TraceError(f"{source}: deviceProperties must be a list of objects")
    raw_acts: list[tuple[float, int, int, dict[str, Any]]] = []
    calls: list[RuntimeCall] = []
    call_cat: dict[int, str] = {}
    sync_args: dict[int, dict[str, Any]] = {}
    nodes: list[GraphNode] = []
    for i, e in enumerate(events):
        if not isinstance(e, dict):
            raise TraceError(f"{source}: traceEvents[{i}] is not an object")
        if e.get("ph") != "X":
            continue
        cat = str(e.get("cat", "")).lower()
        if cat not in GPU_CATEGORIES and cat not in CALL_CATEGORIES and cat != "cuda_sync":
            continue
        name = str(e.get("name", ""))
        where = f"{source}: traceEvents[{i}] ({cat} '{name[:60]}')"
        args = e.get("args", {})
        if not isinstance(args, dict):
            raise TraceError(f"{where}: args is not an object")
        try:
            ts, dur = _num(e.get("ts"), "ts"), _num(e.get("dur"), "dur")
            if dur < 0:
                raise ValueError(f"dur is {dur}")
            corr = _int(args.get("correlation"), "args.correlation")
            if cat == "cuda_sync" and args.get("graph") is not None:
                nodes.append(_graph_node(args, ts, corr))
            elif cat == "cuda_sync":  # checked here, where a bad field can be named
                sync_args[corr] = {
                    k: _opt_int(args.get(k), f"args.{k}")
                    for k in ("wait_on_cuda_event_record_corr_id", "wait_on_stream", "device",
                              "stream", "wait_on_device")
                }  # fmt: skip
            elif cat in CALL_CATEGORIES:
                tid = e.get("tid", 0)  # a thread id may be a name: it only groups calls
                c = RuntimeCall(name, ts, dur, corr, tid if _is_int(tid) else 0)
                calls.append(c)
                prev = call_cat.get(corr)
                # a runtime call and the driver call beneath it may share an id: runtime wins
                if prev is None or (prev != "cuda_runtime" and cat == "cuda_runtime"):
                    call_cat[corr] = cat
            else:
                kind = GPU_CATEGORIES[cat]
                fields: dict[str, Any] = {
                    "kind": kind,
                    "name": name,
                    "device": _int(args.get("device", 0), "args.device"),
                    "stream": _int(args.get("stream"), "args.stream"),
                    "ts": ts,
                    "dur": dur,
                    "correlation": corr,
                }
                if kind == "kernel":
                    fields["grid"] = _dim3(args.get("grid"), "args.grid")
                    blocks = math.prod(fields["grid"])
                    check_limit("kernel_blocks", blocks, f"kernel '{name}': its blocks")
                    fields["block"] = _dim3(args.get("block"), "args.block")
                    fields["regs"] = _int(args.get("registers per thread", 0), "registers")
                    fields["smem"] = _int(args.get("shared memory", 0), "shared memory")
                else:
                    fields["nbytes"] = _int(args.get("bytes", 0), "args.bytes")
                raw_acts.append((ts, corr, i, fields))
        except ValueError as err:
            raise TraceError(f"{where}: {err}") from None
    if not raw_acts:
        raise TraceError(f"{source}: no GPU kernels, memcpys or memsets in the trace")
    raw_acts.sort(key=lambda x: (x[0], x[1], x[2]))
    acts = [GpuActivity(index=n, **f) for n, (_, _, _, f) in enumerate(raw_acts)]
    calls.sort(key=lambda c: (c.ts, c.correlation, c.name))
    launched = {a.correlation for a in acts}
    launches: dict[int, RuntimeCall] = {}
    for c in calls:
        if c.correlation in launched and c.correlation not in launches:
            launches[c.correlation] = c
    # a record's stream comes from the cuda_sync events that wait on it
    rec_stream: dict[int, tuple[int, int]] = {}
    for a in sync_args.values():
        rc, ws = a["wait_on_cuda_event_record_corr_id"], a["wait_on_stream"]
        if rc is not None and rc >= 0 and ws is not None and ws not in NO_STREAM:
            # simgpu names the recording device of a cross-GPU wait; Kineto does not
            dev = a["wait_on_device"] if a["wait_on_device"] is not None else a["device"]
            rec_stream.setdefault(rc, (ws, dev or 0))
    records, waits, syncs = [], [], []
    for c in calls:
        if c.name in RECORD_CALLS:
            s = rec_stream.get(c.correlation)
            records.append(EventRecordCall(c, s[0] if s else None, s[1] if s else 0))
        elif c.name in WAIT_CALLS:
            a = sync_args.get(c.correlation, {})
            st = _opt_stream(a.get("stream"))
            rc = a.get("wait_on_cuda_event_record_corr_id")
            rc = rc if rc is not None and rc >= 0 else None
            waits.append(StreamWaitCall(c, st, rc, a.get("device") or 0))
        elif c.name in SYNC_CALLS:
            a = sync_args.get(c.correlation, {})
            syncs.append(
                SyncCall(c, SYNC_CALLS[c.name], _opt_stream(a.get("stream")), a.get("device") or 0)
            )
    nodes.sort(key=lambda n: (n.ts, n.kind != "record", n.correlation))
    return KinetoTrace(source, props, acts, calls, launches, records, waits, syncs, nodes)


def _graph_node(args: dict[str, Any], ts: float, corr: int) -> GraphNode:
    kind = {"Event Record": "record", "Stream Wait Event": "wait"}.get(args.get("cuda_sync_kind"))
    if kind is None:
        raise ValueError(f"args.cuda_sync_kind is {args.get('cuda_sync_kind')!r} in a graph")
    rec = _opt_int(args.get("wait_on_cuda_event_record_corr_id"), "args.wait_on_...corr_id")
    if kind == "wait" and rec is None:
        raise ValueError("a graph's wait names no record (wait_on_cuda_event_record_corr_id)")
    return GraphNode(
        kind,
        ts,
        _int(args.get("device", 0), "args.device"),
        _int(args.get("stream"), "args.stream"),
        corr,
        _int(args.get("graph"), "args.graph"),
        rec,
    )


def _opt_stream(v: Any) -> int | None:
    if isinstance(v, int) and not isinstance(v, bool) and v not in NO_STREAM:
        return v
    return None


# --- host timing rules ----------------------------------------------------------------


def blocking_copy(call: RuntimeCall, acts: Sequence[GpuActivity]) -> bool:
    """A copy whose call spans it: a synchronous cudaMemcpy, or one from or to pageable
    host memory (the driver stages it through a pinned buffer inside the call, sending
    chunks as they are staged). The copy is issued when the call begins: issuing it at
    the call's return, as for kernels, would start a copy of many chunks far too late."""
    copies = [a for a in acts if a.kind == "memcpy"]
    if not copies:
        return False
    if "Async" not in call.name:
        return True
    return any("pageable" in a.name.lower() for a in copies)


def issue_time(call: RuntimeCall, acts: Sequence[GpuActivity]) -> float:
    """When a launch reaches the GPU's queues, by host timestamps only: when its call
    returns (the kernel is visible by then), or when it begins for a blocking copy."""
    return call.ts if blocking_copy(call, acts) else call.end


def launch_groups(trace: KinetoTrace) -> list[tuple[RuntimeCall, list[GpuActivity]]]:
    """Launching calls in host order with the activities each launched (several for a
    CUDA Graph launch), activities in recorded order."""
    by_corr: dict[int, list[GpuActivity]] = {}
    for a in trace.activities:
        if a.correlation in trace.launches:
            by_corr.setdefault(a.correlation, []).append(a)
    groups = [(trace.launches[c], acts) for c, acts in by_corr.items()]
    groups.sort(key=lambda g: (g[0].ts, g[0].correlation))
    return groups


# --- replay ---------------------------------------------------------------------------

HOST_COST_FIELDS = (
    "launch_api_us",
    "framework_dispatch_us",
    "event_record_api_us",
    "event_wait_api_us",
    "sync_api_us",
)


@dataclass(frozen=True)
class StreamError:
    """One stream's replay against its recording. A span that matches can hide starts
    that do not (a stream idle most of its span): the start errors and busy time say."""

    device: int
    stream: int
    kernels: int  # activities on the stream (kernels, copies, memsets)
    recorded_ms: float  # the stream's own span: its first start to its last end
    simulated_ms: float
    error_pct: float
    start_mae_us: float  # mean |simulated - recorded| start, both from the host origin
    start_p95_us: float = 0.0  # 95th percentile of the same
    busy_recorded_ms: float = 0.0  # time the stream had an activity running
    busy_simulated_ms: float = 0.0

    @property
    def busy_error_pct(self) -> float:
        return _err(self.busy_simulated_ms, self.busy_recorded_ms)

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "stream": self.stream,
            "kernels": self.kernels,
            "recorded_ms": self.recorded_ms,
            "simulated_ms": self.simulated_ms,
            "error_pct": self.error_pct,
            "start_mae_us": self.start_mae_us,
            "start_p95_us": self.start_p95_us,
            "busy_recorded_ms": self.busy_recorded_ms,
            "busy_simulated_ms": self.busy_simulated_ms,
            "busy_error_pct": self.busy_error_pct,
        }


@dataclass
class ReplayResult:
    source: str
    gpu: str
    host: str
    syncs: str
    recorded_ms: float
    simulated_ms: float
    kernels: int
    memcpys: int
    memsets: int
    streams: int
    per_stream: list[StreamError]
    start_mae_us: float
    kernel_time_ms: float
    counts: dict[str, int]  # what became which command, and what stayed host-only
    params: dict[str, float]  # the GPU spec fields the replay set
    timeline: Timeline | None = field(default=None, repr=False)
    program: StreamProgram | None = field(default=None, repr=False)
    # per activity |simulated - recorded| start, both from the host origin: 95th percentile
    start_p95_us: float = 0.0
    # time each device had at least one activity running, summed over devices
    busy_recorded_ms: float = 0.0
    busy_simulated_ms: float = 0.0
    # the same start errors with both runs' first activity at 0: shifts of the whole run
    # (the host's time before its first launch) left out, jitter kept
    aligned_mae_us: float = 0.0
    aligned_p95_us: float = 0.0

    @property
    def error_pct(self) -> float:
        """Error of the GPU span (first activity start to last end): the headline, and
        the least demanding figure (see the start and busy-time errors)."""
        return _err(self.simulated_ms, self.recorded_ms)

    @property
    def busy_error_pct(self) -> float:
        return _err(self.busy_simulated_ms, self.busy_recorded_ms)

    @property
    def busy_share(self) -> float:
        """Recorded busy time over the recorded span (per device, summed): how much of
        the span a matching span error speaks for."""
        n = max(len({s.device for s in self.per_stream}), 1)
        return self.busy_recorded_ms / (self.recorded_ms * n) if self.recorded_ms > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "trace": self.source,
            "gpu": self.gpu,
            "host": self.host,
            "syncs": self.syncs,
            "recorded_ms": self.recorded_ms,
            "simulated_ms": self.simulated_ms,
            "error_pct": self.error_pct,
            "kernels": self.kernels,
            "memcpys": self.memcpys,
            "memsets": self.memsets,
            "streams": self.streams,
            "start_mae_us": self.start_mae_us,
            "start_p95_us": self.start_p95_us,
            "busy_recorded_ms": self.busy_recorded_ms,
            "busy_simulated_ms": self.busy_simulated_ms,
            "busy_error_pct": self.busy_error_pct,
            "busy_share": self.busy_share,
            "aligned_mae_us": self.aligned_mae_us,
            "aligned_p95_us": self.aligned_p95_us,
            "kernel_time_ms": self.kernel_time_ms,
            "per_stream": [s.to_json() for s in self.per_stream],
            "counts": dict(self.counts),
            "params": dict(self.params),
        }


def _err(sim: float, rec: float) -> float:
    return (sim - rec) / rec * 100.0 if rec > 0 else (0.0 if sim == rec else math.inf)


def busy_us(intervals: Sequence[tuple[float, float]]) -> float:
    """Length of the union of ``(start, end)`` intervals: time something was running."""
    total = 0.0
    cur: list[float] | None = None  # the merged interval being extended
    for a, b in sorted(intervals):
        if cur is None or a > cur[1]:
            if cur is not None:
                total += cur[1] - cur[0]
            cur = [a, b]
        else:
            cur[1] = max(cur[1], b)
    if cur is not None:
        total += cur[1] - cur[0]
    return total


def p95(values: Sequence[float]) -> float:
    """95th percentile by nearest rank (a value that occurred; 0 for none)."""
    if not values:
        return 0.0
    v = sorted(values)
    return v[max(math.ceil(0.95 * len(v)) - 1, 0)]


def gpu_for_trace(trace: KinetoTrace, device: int | None = None) -> GPUSpec:
    """The GPU a trace ran on, from its deviceProperties (a preset overridden by the
    recorded limits, so recorded launch configurations fit as they did)."""
    from calibrate.probe import spec_from_facts
    from simgpu.hardware import PRESETS

    dev = trace.devices[0] if device is None else device
    props = trace.props(dev)
    if props is None:
        raise TraceError(
            f"{trace.source}: no deviceProperties for device {dev}: name the GPU (--gpu)"
        )
    if "computeMajor" not in props and props.get("name") in PRESETS:
        # simgpu's own traces name the preset they ran on instead of CUDA properties
        return PRESETS[props["name"]]
    try:
        return gpu_from_json(spec_from_facts(props), source=trace.source)
    except SimGPUError as e:
        raise TraceError(f"{trace.source}: deviceProperties of device {dev}: {e}") from None
    except (TypeError, ValueError, KeyError, AttributeError) as e:  # a field of the wrong type
        raise TraceError(
            f"{trace.source}: deviceProperties of device {dev} malformed ({type(e).__name__}: {e})"
        ) from None


_COPY_OCC: dict[int, Occupancy] = {}


def activity_kernel(a: GpuActivity, gpu: GPUSpec, op: str) -> Kernel:
    """A Kernel that runs ``a`` for its recorded duration when it has the GPU to itself.

    Its launch configuration is the recorded one, so it takes the SMs it took; each block
    takes the duration over its waves, a fixed time: no work or DRAM traffic that
    co-running kernels would share, since the recorded durations already include the
    contention of their run. Copies and memsets run on copy engines: one single-thread
    block, so they keep their stream's order without taking SM room.
    """
    if a.kind == "kernel":
        regs = max(1, a.regs)
        try:
            occ = occupancy(a.threads, regs, a.smem, gpu, what=f"kernel '{a.name[:60]}'")
        except LoweringError as e:
            raise TraceError(f"activity {a.index}: {e}") from None
        grid, threads, smem = a.blocks, a.threads, a.smem
    else:
        occ = occupancy(1, 1, 0, gpu)
        grid, threads, regs, smem = 1, 1, 1, 0
    rounds = waves(grid, occ, gpu)
    return timed_kernel(gpu, a.name[:120], op, grid, threads, regs, smem, a.dur / rounds,
                        fixed=True, measured=True)  # fmt: skip


def _zero_host(gpu: GPUSpec) -> GPUSpec:
    """Per-API costs off: recorded gaps carry the host time. A synchronize keeps its
    return cost, paid after the GPU is idle, which no recorded gap can stand for."""
    return gpu.replace(**{f: 0.0 for f in HOST_COST_FIELDS if f != "sync_api_us"})


@dataclass
class _Builder:
    """Commands in host order; in recorded mode, host-gap pairs between them."""

    recorded: bool
    gap_device: int
    gap_gpu: GPUSpec | None
    cmds: list[Command] = field(default_factory=list)
    anchor: float = 0.0
    gaps: int = 0
    gap_us: float = 0.0

    def at(self, t: float) -> None:
        if not self.recorded or self.gap_gpu is None:
            return
        gap = t - self.anchor
        if gap > 1e-9:
            occ = _gap_occupancy(self.gap_gpu)
            k = Kernel("host_gap", "host_gap", 1, 1, 1, 0, 0.0, 0.0, 0.0, gap, occ, True)
            self.cmds.append(Launch("host_gap", k, 0, self.gap_device))
            self.cmds.append(Synchronize(self.gap_device))
            self.gaps += 1
            self.gap_us += gap
        self.anchor = max(self.anchor, t)

    def add(self, t: float, c: Command, anchor_after: float | None = None) -> None:
        self.at(t)
        self.cmds.append(c)
        if anchor_after is not None:
            self.anchor = anchor_after


def _gap_occupancy(gpu: GPUSpec) -> Occupancy:
    occ = _COPY_OCC.get(id(gpu))
    if occ is None:
        occ = _COPY_OCC[id(gpu)] = occupancy(1, 1, 0, gpu)
    return occ


def build_program(
    trace: KinetoTrace,
    gpus: Mapping[int, GPUSpec],
    host: str = "recorded",
    syncs: str = "device",
) -> tuple[StreamProgram, list[GPUSpec], dict[str, Any]]:
    """The StreamProgram a trace replays as, the per-device specs to run it on (plus the
    host-gap device in recorded mode), and bookkeeping (what became which command)."""
    if host not in ("recorded", "median"):
        raise TraceError(f"host mode must be 'recorded' or 'median', got {host!r}")
    if syncs not in ("device", "none"):
        raise TraceError(f"sync mode must be 'device' or 'none', got {syncs!r}")
    devs = trace.devices
    dmap = {d: i for i, d in enumerate(devs)}
    smap: dict[tuple[int, int], int] = {}
    for d, s in trace.streams:
        smap[(d, s)] = sum(1 for k in smap if k[0] == d)
    specs = [gpus[d] for d in devs]
    recorded = host == "recorded"
    gap_gpu = None
    if recorded:
        specs = [_zero_host(g) for g in specs]
        gap_gpu = specs[0].replace(
            name="host-gaps", launch_latency_us=0.0, kernel_gap_us=0.0, sync_api_us=0.0, hw_queues=1
        )
    b = _Builder(recorded, len(specs), gap_gpu)
    counts = {
        "orphan_activities": 0,
        "records": 0,
        "records_host_only": 0,
        "waits": 0,
        "waits_host_only": 0,
        "syncs": 0,
        "syncs_host_only": 0,
        "graph_records": 0,
        "graph_waits": 0,
    }
    kernels: dict[int, Kernel] = {}

    def launch(a: GpuActivity) -> Launch:
        op = f"a{a.index}"
        k = activity_kernel(a, gpus[a.device], op)
        kernels[a.index] = k
        return Launch(op, k, smap[(a.device, a.stream)], dmap[a.device])

    items: list[tuple[float, int, int, Any]] = []  # (time, seq, kind, payload)
    origin = min(
        [c.ts for c in trace.launches.values()]
        + [r.call.ts for r in trace.records]
        + [w.call.ts for w in trace.waits]
        + [s.call.ts for s in trace.syncs],
        default=0.0,
    )
    # activities launched before the trace began: issued first, in recorded order
    for a in trace.orphans:
        counts["orphan_activities"] += 1
        items.append((origin, a.index - len(trace.activities), 0, [a]))
    nodes_of: dict[int, list[GraphNode]] = {}
    for n in trace.graph_nodes:
        if (n.device, n.stream) in smap:
            nodes_of.setdefault(n.graph, []).append(n)
    for call, acts in launch_groups(trace):
        group: list[Any] = list(acts)
        if call.correlation in nodes_of:  # a graph's nodes in GPU time order among its kernels
            keyed = [((a.ts, 2, a.index), a) for a in acts]
            keyed += [((n.ts, 0 if n.kind == "record" else 1, n.correlation), n)
                      for n in nodes_of[call.correlation]]  # fmt: skip
            group = [x for _, x in sorted(keyed, key=lambda kx: kx[0])]
        items.append((issue_time(call, acts), call.correlation, 0, group))
    recorded_streams = {r.call.correlation: r for r in trace.records if r.stream is not None}
    for r in trace.records:
        if r.stream is None or (r.device, r.stream) not in smap:
            counts["records_host_only"] += 1
            continue
        items.append((r.call.end, r.call.correlation, 1, r))
    for w in trace.waits:
        rec = recorded_streams.get(w.record) if w.record is not None else None
        if w.stream is None or rec is None or (w.device, w.stream) not in smap:
            counts["waits_host_only"] += 1
            continue
        if (rec.device, rec.stream) not in smap:
            counts["waits_host_only"] += 1
            continue
        items.append((w.call.end, w.call.correlation, 2, w))
    for s in trace.syncs:
        if syncs == "none" or s.device not in dmap:
            counts["syncs_host_only"] += 1
            continue
        items.append((s.call.ts, s.call.correlation, 3, s))
    items.sort(key=lambda x: (x[0], x[1], x[2]))
    for t, _, kind, payload in items:
        rel = t - origin
        if kind == 0:
            for a in payload:
                if isinstance(a, GpuActivity):
                    b.add(rel, launch(a))
                elif a.kind == "record":
                    counts["graph_records"] += 1
                    b.add(rel, Record(f"r{a.correlation}", smap[(a.device, a.stream)], dmap[a.device]))  # fmt: skip
                else:
                    counts["graph_waits"] += 1
                    b.add(rel, Wait(f"r{a.record}", smap[(a.device, a.stream)], dmap[a.device]))  # fmt: skip
        elif kind == 1:
            counts["records"] += 1
            b.add(rel, Record(f"r{payload.call.correlation}", smap[(payload.device, payload.stream)], dmap[payload.device]))  # fmt: skip
        elif kind == 2:
            counts["waits"] += 1
            b.add(rel, Wait(f"r{payload.record}", smap[(payload.device, payload.stream)], dmap[payload.device]))  # fmt: skip
        else:
            counts["syncs"] += 1
            b.add(rel, Synchronize(dmap[payload.device]), anchor_after=payload.call.end - origin)
    if gap_gpu is not None:
        specs.append(gap_gpu)
    counts["host_gaps"] = b.gaps
    info = {"counts": counts, "smap": smap, "dmap": dmap, "origin": origin, "kernels": kernels}
    return StreamProgram(b.cmds, False, Path(trace.source).name), specs, info


def replay_machine(specs: Sequence[GPUSpec]) -> Machine:
    """The machine a replay runs on: the trace's GPUs and, in recorded mode, the
    host-gap device — all driven by *one* host thread, as the recorded process was
    (a gap's synchronize must hold back every later command, whatever its device)."""
    names = {f.name for f in dataclasses.fields(Machine)}
    if "shared_host" in names:
        return Machine("replay", tuple(specs), shared_host=True)
    return Machine("replay", tuple(specs))


def _graph_waits_as_calls(trace: KinetoTrace) -> KinetoTrace:
    """The trace with each wait inside a CUDA Graph also listed as a stream wait issued
    with its graph, so the latency fit does not take a kernel held back by the graph's
    dependencies for one started a launch latency after its issue."""
    if not trace.graph_nodes:
        return trace
    calls = {c.correlation: c for c in trace.launches.values()}
    extra = []
    for n in trace.graph_nodes:
        g = calls.get(n.graph)
        if n.kind == "wait" and g is not None:
            at = RuntimeCall("graph wait", g.end, 0.0, n.correlation, g.tid)
            extra.append(StreamWaitCall(at, n.stream, n.record, n.device))
    return dataclasses.replace(trace, waits=[*trace.waits, *extra])


def replay(
    trace: KinetoTrace,
    gpu: GPUSpec | None = None,
    host: str = "recorded",
    syncs: str = "device",
    fit: bool = True,
) -> ReplayResult:
    """Simulate a trace and compare with what was recorded.

    ``gpu`` defaults to the one the trace names. With ``fit`` the device-side launch
    latency and the gap between back-to-back kernels are fitted to the trace first
    (:func:`calibrate.fit.fit_device_latencies`); in ``median`` mode the host costs too.
    """
    from calibrate.fit import fit_device_latencies, fit_host_costs
    from simgpu.sim.engine import simulate

    base = {d: (gpu if gpu is not None else gpu_for_trace(trace, d)) for d in trace.devices}
    params: dict[str, float] = {}
    if host == "median":  # the mode is defined by the trace's median host costs
        params.update(fit_host_costs(trace))
    if fit:
        params.update(fit_device_latencies(_graph_waits_as_calls(trace)))
        if host == "recorded" and trace.syncs:
            params["sync_api_us"] = fit_host_costs(trace)["sync_api_us"]
    if params:
        base = {d: g.replace(**params) for d, g in base.items()}
    program, specs, info = build_program(trace, base, host=host, syncs=syncs)
    tl = simulate(program, replay_machine(specs))
    return _compare(trace, tl, program, info, base, host, syncs, params)


def _compare(trace, tl, program, info, base, host, syncs, params) -> ReplayResult:
    n_real = len(info["dmap"])
    origin = info["origin"]
    sim: dict[int, tuple[float, float]] = {}
    for k in tl.kernels:
        if k.device < n_real:
            sim[int(k.op[1:])] = (k.start_us, k.end_us)
    missing = [a.index for a in trace.activities if a.index not in sim]
    if missing:  # pragma: no cover - every activity is launched; a gap here is a bug
        raise SimGPUError(f"replay lost {len(missing)} activities (first: {missing[0]})")
    acts = trace.activities
    rec_span = trace.span_us()
    sim_span = max(e for _, e in sim.values()) - min(s for s, _ in sim.values())
    start_err = {a.index: abs(sim[a.index][0] - (a.ts - origin)) for a in acts}
    per_stream = []
    for (d, s), _ in sorted(info["smap"].items()):
        mine = [a for a in acts if a.device == d and a.stream == s]
        r0, r1 = min(a.ts for a in mine), max(a.end for a in mine)
        s0 = min(sim[a.index][0] for a in mine)
        s1 = max(sim[a.index][1] for a in mine)
        errs = [start_err[a.index] for a in mine]
        per_stream.append(
            StreamError(d, s, len(mine), (r1 - r0) / 1e3, (s1 - s0) / 1e3, _err(s1 - s0, r1 - r0),
                        statistics.fmean(errs), p95(errs),
                        busy_us([(a.ts, a.end) for a in mine]) / 1e3,
                        busy_us([sim[a.index] for a in mine]) / 1e3)
        )  # fmt: skip
    errs = list(start_err.values())
    mae = statistics.fmean(errs)
    r_first = min(a.ts for a in acts)
    s_first = min(s for s, _ in sim.values())
    aligned = [abs((sim[a.index][0] - s_first) - (a.ts - r_first)) for a in acts]
    busy_rec = busy_sim = 0.0
    for d in trace.devices:
        mine = [a for a in acts if a.device == d]
        busy_rec += busy_us([(a.ts, a.end) for a in mine])
        busy_sim += busy_us([sim[a.index] for a in mine])
    first = base[trace.devices[0]]
    return ReplayResult(
        source=trace.source,
        gpu=first.name,
        host=host,
        syncs=syncs,
        recorded_ms=rec_span / 1e3,
        simulated_ms=sim_span / 1e3,
        kernels=trace.count("kernel"),
        memcpys=trace.count("memcpy"),
        memsets=trace.count("memset"),
        streams=len(info["smap"]),
        per_stream=per_stream,
        start_mae_us=mae,
        kernel_time_ms=math.fsum(a.dur for a in acts) / 1e3,
        counts=info["counts"],
        params=params,
        timeline=tl,
        program=program,
        start_p95_us=p95(errs),
        busy_recorded_ms=busy_rec / 1e3,
        busy_simulated_ms=busy_sim / 1e3,
        aligned_mae_us=statistics.fmean(aligned),
        aligned_p95_us=p95(aligned),
    )


def replay_file(path: str | Path, **kw: Any) -> ReplayResult:
    return replay(load_trace(path), **kw)
