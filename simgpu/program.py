"""StreamProgram: the exact sequence of host API calls a schedule becomes.

It is the single point of truth between the simulator and a real-GPU executor: both
run the same commands. Lowering turns either schedule shape into one; the validator
proves, before anything runs, that every op is launched once and every dependency is
ordered by stream order, an event chain or a synchronize.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from simgpu.errors import ProgramError, ScheduleError
from simgpu.graph import OpGraph
from simgpu.hardware import GPUSpec, Machine
from simgpu.kernels import Kernel, KernelCache
from simgpu.limits import check as check_limit
from simgpu.ops import numel
from simgpu.schedule import Schedule, StageSchedule, StreamSchedule, validate_schedule

if TYPE_CHECKING:
    from simgpu.runtimes import Runtime


@dataclass(frozen=True, slots=True)
class Launch:
    """Launch one kernel of ``op`` on a stream; ``kernel`` is None for an op with no
    device work (a view), which still takes its place in stream order.

    ``host_us`` is the CPU time of the call that issues it, as the runtime that lowered
    the program prices it (:mod:`simgpu.runtimes`); None takes the GPU's flat costs
    (``launch_api_us + framework_dispatch_us``, or the dispatch alone for a view)."""

    op: str
    kernel: Kernel | None
    stream: int
    device: int = 0
    host_us: float | None = None


@dataclass(frozen=True, slots=True)
class Record:
    """Record ``event`` on a stream. Event names are machine-wide, as CUDA events are
    handles: a stream of another device may wait on it (cudaStreamWaitEvent)."""

    event: str
    stream: int
    device: int = 0
    host_us: float | None = None  # None: the GPU's event_record_api_us


@dataclass(frozen=True, slots=True)
class Wait:
    event: str
    stream: int
    device: int = 0
    host_us: float | None = None  # None: the GPU's event_wait_api_us


@dataclass(frozen=True, slots=True)
class Copy:
    """Copy ``bytes`` from GPU ``src`` to GPU ``dst`` (cudaMemcpyPeerAsync), in stream
    order on ``stream`` of ``device``. It runs on a copy engine and over the machine's
    links, beside kernels, not on SMs. ``tensor`` names the op whose output it moves
    (the validator then checks it is ordered after that op and before its readers)."""

    bytes: int
    src: int
    dst: int
    stream: int
    device: int = 0
    tensor: str | None = None


@dataclass(frozen=True, slots=True)
class Synchronize:
    """Block the host until the device is idle (cudaDeviceSynchronize)."""

    device: int = 0


Command = Launch | Record | Wait | Copy | Synchronize


@dataclass
class StreamProgram:
    """Host commands in issue order. In graph mode the whole program is one CUDA Graph
    launch: no per-kernel host cost, and no synchronize inside it."""

    commands: list[Command] = field(default_factory=list)
    graph_mode: bool = False
    name: str = "program"
    runtime: str | None = None  # the runtime that lowered it; None: the GPU's flat costs

    @property
    def streams(self) -> list[tuple[int, int]]:
        return sorted(
            {(c.device, c.stream) for c in self.commands if not isinstance(c, Synchronize)}
        )

    @property
    def kernels(self) -> int:
        return sum(1 for c in self.commands if isinstance(c, Launch) and c.kernel is not None)

    @property
    def copies(self) -> int:
        return sum(1 for c in self.commands if isinstance(c, Copy))

    @property
    def syncs(self) -> int:
        """Cross-stream waits plus device synchronisations."""
        return sum(1 for c in self.commands if isinstance(c, Wait | Synchronize))

    def ops(self) -> list[str]:
        return list(dict.fromkeys(c.op for c in self.commands if isinstance(c, Launch)))


# --- lowering -------------------------------------------------------------------------


def _launches(op: str, kernels: list[Kernel], stream: int, device: int) -> list[Command]:
    if not kernels:
        return [Launch(op, None, stream, device)]
    return [Launch(op, k, stream, device) for k in kernels]


def lower(
    schedule: Schedule,
    graph: OpGraph,
    gpu: GPUSpec | Sequence[GPUSpec] | Machine,
    name: str = "program",
    cache: KernelCache | None = None,
    validate: bool = True,
    subset: bool = False,
    memo: dict[tuple[str, int], list[Kernel]] | None = None,
    runtime: Runtime | None = None,
) -> StreamProgram:
    """Turn a schedule into the host calls that run it.

    ``graph`` is the original graph; a schedule carrying a rewritten graph is lowered
    against that one. ``gpu`` may list one spec per device (or be a Machine). A stream
    schedule whose ``devices`` put a producer and a consumer on different GPUs gets the
    transfer of the producer's output as a Copy, with the events that order it.

    ``subset``: the schedule runs only some of the graph's ops (a scheduler's partial
    schedule); inputs from ops it leaves out count as ready and already in place.
    ``memo``: (op, device) -> kernels, kept by a caller that lowers many schedules of
    one graph on one machine (a search), so each op is lowered once.
    ``runtime``: how ops become host calls and what each costs (:mod:`simgpu.runtimes`);
    its ``graph_mode`` replaces the schedule's. None keeps the GPU's flat per-launch
    costs and the schedule's ``graph_mode``.
    """
    g = schedule.graph or graph
    if subset:
        _check_subset(schedule, g)
    elif validate:
        validate_schedule(schedule, g)
    if isinstance(gpu, Machine):
        gpus = list(gpu.devices)
    elif isinstance(gpu, GPUSpec):
        gpus = [gpu]
    else:
        gpus = list(gpu)
    caches: list[KernelCache] = []
    for s in gpus:  # one cache per distinct GPU: equal devices share their kernels
        hit = next((c for c in caches if c.gpu is s), None)
        if hit is None and cache is not None and (cache.gpu is s or cache.gpu == s):
            hit = cache
        caches.append(hit if hit is not None else KernelCache(s))

    def kernels(op: str, device: int) -> list[Kernel]:
        if device >= len(caches):
            raise ProgramError(f"op '{op}' placed on device {device}, machine has {len(caches)}")
        if memo is None:
            return caches[device].lower(g, op)
        ks = memo.get((op, device))
        if ks is None:
            ks = memo[(op, device)] = caches[device].lower(g, op)
        return ks

    graph_mode = schedule.graph_mode if runtime is None else runtime.graph_mode
    if runtime is None:

        def launches(op: str, stream: int, device: int) -> list[Command]:
            return _launches(op, kernels(op, device), stream, device)

    else:

        def launches(op: str, stream: int, device: int) -> list[Command]:
            ks = kernels(op, device)
            return runtime.launches(g, op, ks, stream, device, gpus[device])  # type: ignore[return-value]

    cmds: list[Command] = []
    if isinstance(schedule, StageSchedule):
        _lower_stages(schedule, launches, cmds, graph_mode)
    else:
        _lower_streams(schedule, g, launches, cmds)
    if runtime is not None and not graph_mode:
        rec = [runtime.record_us(s) for s in gpus]
        wait = [runtime.wait_us(s) for s in gpus]
        cmds = [
            Record(c.event, c.stream, c.device, rec[c.device])
            if type(c) is Record
            else Wait(c.event, c.stream, c.device, wait[c.device])
            if type(c) is Wait
            else c
            for c in cmds
        ]
    return StreamProgram(cmds, graph_mode, name, None if runtime is None else runtime.name)


def _check_subset(schedule: Schedule, g: OpGraph) -> None:
    seen: set[str] = set()
    for op in schedule.ops():
        if op not in g:
            raise ScheduleError(f"schedule names op '{op}', not in graph '{g.name}'")
        if op in seen:
            raise ScheduleError(f"schedule runs op '{op}' more than once")
        seen.add(op)


def output_bytes(g: OpGraph, op: str) -> int:
    """Bytes of an op's output: what moves when a consumer runs on another GPU."""
    o = g[op]
    return numel(o.output_shape) * o.dtype_bytes


def copy_stream(n_streams: int, dst: int) -> int:
    """Stream id of the copies a device sends to ``dst``: after every schedule stream, so
    it never shares a stream with kernels (it may still share a hardware queue)."""
    return n_streams + dst


def _lower_stages(schedule: StageSchedule, launches, cmds: list[Command], graph_mode: bool) -> None:
    last = len(schedule.stages) - 1
    for si, stage in enumerate(schedule.stages):
        for gi, group in enumerate(stage):
            for op in group:
                cmds.extend(launches(op, gi, 0))
        if si == last:
            break
        if schedule.barrier == "sync" and not graph_mode:
            cmds.append(Synchronize(0))
        else:  # every stream of the next stage waits for every group of this one
            nxt = range(len(schedule.stages[si + 1]))
            events = [f"stage{si}.g{gi}" for gi in range(len(stage))]
            for gi, ev in enumerate(events):
                cmds.append(Record(ev, gi, 0))
            for s in nxt:
                cmds.extend(Wait(ev, s, 0) for gi, ev in enumerate(events) if gi != s)


def _lower_streams(schedule: StreamSchedule, g: OpGraph, launches, cmds: list[Command]) -> None:
    """Issue ops in a topological order that interleaves streams by position, and add an
    event only where the consumer's stream does not already know the producer finished
    (vector clocks), so transitive and same-stream dependencies cost nothing.

    An output read on another GPU is copied there once, right after its producer is
    issued, on the producer device's copy stream for that destination: the copy waits
    for the producer's event, and readers wait for the copy's event unless their stream
    already knows the copy finished. Copy streams are extra vector-clock components.
    """
    # the vector clocks below are streams x ops: a schedule of 20,000 one-op streams (any
    # scheduler's, not only a file's) would take hours, so its size is a limit
    check_limit("streams", len(schedule.streams), "the schedule's number of streams")
    where = {op: (si, pos) for si, ops in enumerate(schedule.streams) for pos, op in enumerate(ops)}
    order = _issue_order(schedule, g, where)
    n = len(schedule.streams)
    dev = [schedule.device_of(s) for s in range(n)]
    # producers latest-issued first: a later producer's clock already covers any earlier
    # one it depends on, so a transitive input never gets a wait of its own
    rank = {op: i for i, op in enumerate(order)}
    preds = {
        op: sorted(
            (u for u in g.predecessors(op) if u in where), key=rank.__getitem__, reverse=True
        )
        for op in order
    }
    # copies: destinations of every op read on another GPU, and one clock per channel
    targets: dict[str, list[int]] = {}
    if len(set(dev)) > 1:
        for v in order:
            dv = dev[where[v][0]]
            for u in preds[v]:
                du = dev[where[u][0]]
                if du != dv and dv not in targets.setdefault(u, []):
                    targets[u].append(dv)
        for ts in targets.values():
            ts.sort()
    chans = sorted({(dev[where[u][0]], t) for u, ts in targets.items() for t in ts})
    chan = {c: n + i for i, c in enumerate(chans)}
    width = n + len(chans)
    # pass 1: which ops need an event recorded after them, and who waits for what
    clock = [[-1] * width for _ in range(width)]  # clock[s][t]: latest position of t s saw
    rec_clock: dict[str, list[int]] = {}
    copied: dict[tuple[str, int], tuple[int, int, list[int]]] = {}
    needs: dict[str, list[str]] = {}
    recorded: set[str] = set()
    for op in order:
        s, pos = where[op]
        d = dev[s]
        for u in preds[op]:
            su, pu = where[u]
            if dev[su] == d:
                if su != s and clock[s][su] < pu:
                    needs.setdefault(op, []).append(f"done:{u}")
                    recorded.add(u)
                    rc = rec_clock.get(u)
                    if rc is None:
                        raise ProgramError(f"internal: producer '{u}' of '{op}' not issued yet")
                    clock[s] = [max(a, b) for a, b in zip(clock[s], rc, strict=True)]
            else:
                comp, cpos, cc = copied[(u, d)]
                if clock[s][comp] < cpos:
                    needs.setdefault(op, []).append(f"copied:{u}>{d}")
                    clock[s] = [max(a, b) for a, b in zip(clock[s], cc, strict=True)]
        clock[s][s] = pos
        rec_clock[op] = list(clock[s])
        for t in targets.get(op, ()):
            comp = chan[(d, t)]
            recorded.add(op)  # the copy waits for the producer's event
            cc = clock[comp] = [max(a, b) for a, b in zip(clock[comp], rec_clock[op], strict=True)]
            cc[comp] += 1
            copied[(op, t)] = (comp, cc[comp], list(cc))
    # pass 2: emit
    for op in order:
        s, _ = where[op]
        d = dev[s]
        for ev in needs.get(op, ()):
            cmds.append(Wait(ev, s, d))
        cmds.extend(launches(op, s, d))
        if op in recorded:
            cmds.append(Record(f"done:{op}", s, d))
        ts = targets.get(op)
        if ts:
            nbytes = output_bytes(g, op)
            for t in ts:
                cs = copy_stream(n, t)
                cmds.append(Wait(f"done:{op}", cs, d))
                cmds.append(Copy(nbytes, d, t, cs, d, op))
                cmds.append(Record(f"copied:{op}>{t}", cs, d))


def _issue_order(
    schedule: StreamSchedule, g: OpGraph, where: dict[str, tuple[int, int]]
) -> list[str]:
    """Kahn's algorithm over dependencies plus stream order, smallest (position, stream)
    first: deterministic, and it interleaves streams as a round-robin launcher would.
    A schedule's own ``order`` replaces that key, so a valid one is followed exactly."""
    import heapq

    indeg = {op: 0 for op in where}
    succ: dict[str, list[str]] = {op: [] for op in where}
    for u, v in g.edges():
        if u in indeg and v in indeg:  # a subset schedule leaves some ops out
            succ[u].append(v)
            indeg[v] += 1
    for ops in schedule.streams:
        for a, b in itertools.pairwise(ops):
            succ[a].append(b)
            indeg[b] += 1
    if schedule.order is not None:
        at = {op: i for i, op in enumerate(schedule.order)}
        key = {op: (at.get(op, len(at)), 0) for op in where}
    else:
        key = {op: (where[op][1], where[op][0]) for op in where}
    heap = [(*key[op], op) for op, d in indeg.items() if d == 0]
    heapq.heapify(heap)
    out = []
    while heap:
        _, _, op = heapq.heappop(heap)
        out.append(op)
        for v in succ[op]:
            indeg[v] -= 1
            if indeg[v] == 0:
                heapq.heappush(heap, (*key[v], v))
    if len(out) != len(where):
        raise ProgramError("stream order contradicts dependencies (no issue order exists)")
    return out


# --- validation -----------------------------------------------------------------------


def validate_program(program: StreamProgram, graph: OpGraph | None = None) -> None:
    """Check a program before it runs; raise ProgramError naming the ops and streams.

    Without a graph only the event and copy discipline is checked. With one: every op
    launched exactly once (all its kernels on one stream, back to back), and every
    dependency u -> v ordered: v's stream must have seen u's last command through
    stream order, waits on recorded events, or a synchronize (vector clocks over
    streams). When u and v run on different GPUs, u's output must also reach v's GPU:
    a Copy of u to that GPU, ordered after u and before v.
    """
    recorded: dict[str, dict[tuple[int, int], int]] = {}  # events are machine-wide
    clocks: dict[tuple[int, int], dict[tuple[int, int], int]] = {}
    seq: dict[tuple[int, int], int] = {}
    op_at: dict[str, tuple[tuple[int, int], int, int]] = {}  # op -> stream, first, last seq
    last_op: dict[tuple[int, int], str] = {}
    floors: dict[int, dict[tuple[int, int], int]] = {}  # per device, what a sync taught it
    seen: list[tuple[str, int, str, int]] = []  # (op, its stream, input, input seq seen)
    copies: dict[tuple[str, int], tuple[tuple[int, int], int]] = {}  # (op, dst) -> stream, seq
    copy_saw: list[tuple[int, str, int]] = []  # (command, tensor, its producer's seq seen)
    for i, c in enumerate(program.commands):
        if isinstance(c, Synchronize):
            if program.graph_mode:
                raise ProgramError(f"command {i}: synchronize inside a CUDA Graph program")
            # everything issued so far on that device happens before everything its host
            # thread issues after (each GPU of a machine has its own host thread)
            merged: dict[tuple[int, int], int] = dict(floors.get(c.device, {}))
            mine = [cl for st, cl in clocks.items() if st[0] == c.device]
            for cl in mine:
                for k, v in cl.items():
                    if merged.get(k, -1) < v:
                        merged[k] = v
            for cl in mine:
                cl.update(merged)
            floors[c.device] = merged  # streams first used after the sync inherit it too
            continue
        key = (c.device, c.stream)
        if c.stream < 0 or c.device < 0:
            raise ProgramError(f"command {i}: negative stream or device in {c}")
        n = seq[key] = seq.get(key, -1) + 1
        cl = clocks.get(key)
        if cl is None:
            cl = clocks[key] = dict(floors.get(c.device, {}))
        cl[key] = n
        if isinstance(c, Record):
            recorded[c.event] = dict(cl)
        elif isinstance(c, Wait):
            rc = recorded.get(c.event)
            if rc is None:
                raise ProgramError(
                    f"command {i}: stream {c.stream} waits on event '{c.event}' "
                    f"that is never recorded before it (it would deadlock or be a no-op)"
                )
            for k, v in rc.items():
                if cl.get(k, -1) < v:
                    cl[k] = v
        elif isinstance(c, Copy):
            if c.src < 0 or c.dst < 0 or c.src == c.dst:
                raise ProgramError(
                    f"command {i}: a copy goes between two different GPUs, not from device "
                    f"{c.src} to device {c.dst}"
                )
            if c.bytes < 0:
                raise ProgramError(f"command {i}: copy of {c.bytes} bytes")
            if c.tensor is not None and graph is not None:
                pu = op_at.get(c.tensor)
                if pu is None:
                    raise ProgramError(
                        f"command {i}: copy of '{c.tensor}' is issued before '{c.tensor}' runs"
                    )
                if pu[0][0] != c.src:
                    raise ProgramError(
                        f"command {i}: copy of '{c.tensor}' from device {c.src}, but "
                        f"'{c.tensor}' runs on device {pu[0][0]}"
                    )
                copy_saw.append((i, c.tensor, cl.get(pu[0], -1)))
                copies[(c.tensor, c.dst)] = (key, n)
        else:
            prev = op_at.get(c.op)
            if prev is None:
                op_at[c.op] = (key, n, n)
                if graph is not None and c.op in graph:
                    for u in graph.predecessors(c.op):
                        pu = op_at.get(u)
                        if pu is None:
                            raise ProgramError(
                                f"op '{c.op}' (stream {c.stream}) is launched before its input '{u}'"
                            )
                        if pu[0][0] != c.device:
                            _check_copied(c, u, pu[0][0], copies, cl)
                        seen.append((c.op, c.stream, u, cl.get(pu[0], -1)))
            else:
                pkey, first, last = prev
                if pkey != key or last_op.get(key) != c.op or last != n - 1:
                    raise ProgramError(
                        f"op '{c.op}' is launched more than once (streams {pkey[1]} and {c.stream})"
                    )
                op_at[c.op] = (key, first, n)
            last_op[key] = c.op
            continue
        last_op[key] = ""
    if graph is not None:
        unknown = [op for op in op_at if op not in graph]
        if unknown:
            raise ProgramError(f"program launches op(s) not in the graph: {', '.join(unknown[:5])}")
        missing = [op for op in graph.ops if op not in op_at]
        if missing:
            raise ProgramError(f"program never launches op(s): {', '.join(missing[:5])}")
        for i, u, saw in copy_saw:  # a transfer too early is the root cause: first
            (udev, ustream), _, ulast = op_at[u]
            if saw < ulast:
                raise ProgramError(
                    f"command {i}: the copy of '{u}' is not ordered after '{u}' on stream "
                    f"{ustream} (device {udev}): add an event"
                )
        for op, stream, u, saw in seen:
            (udev, ustream), _, ulast = op_at[u]
            if saw < ulast:
                raise ProgramError(
                    f"op '{op}' on stream {stream} is not ordered after its input '{u}' on "
                    f"stream {ustream} (device {udev}): add an event or a synchronize"
                )


def _check_copied(
    c: Launch,
    u: str,
    udev: int,
    copies: dict[tuple[str, int], tuple[tuple[int, int], int]],
    cl: dict[tuple[int, int], int],
) -> None:
    """``c`` reads ``u``'s output from another GPU: a copy must have brought it over and
    ``c``'s stream must have seen that copy end."""
    hit = copies.get((u, c.device))
    if hit is None:
        raise ProgramError(
            f"op '{c.op}' on device {c.device} reads '{u}' from device {udev}, but no copy "
            f"of '{u}' to device {c.device} is issued before it"
        )
    ckey, cseq = hit
    if cl.get(ckey, -1) < cseq:
        raise ProgramError(
            f"op '{c.op}' on stream {c.stream} (device {c.device}) is not ordered after the "
            f"copy of its input '{u}' (stream {ckey[1]} of device {ckey[0]}): add an event"
        )
