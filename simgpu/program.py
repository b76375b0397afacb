"""StreamProgram: the exact sequence of host API calls a schedule becomes.

It is the single point of truth between the simulator and a real-GPU executor: both
run the same commands. Lowering turns either schedule shape into one; the validator
proves, before anything runs, that every op is launched once and every dependency is
ordered by stream order, an event chain or a synchronize.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from simgpu.errors import ProgramError
from simgpu.graph import OpGraph
from simgpu.hardware import GPUSpec
from simgpu.kernels import Kernel, KernelCache
from simgpu.schedule import Schedule, StageSchedule, StreamSchedule, validate_schedule


@dataclass(frozen=True, slots=True)
class Launch:
    """Launch one kernel of ``op`` on a stream; ``kernel`` is None for an op with no
    device work (a view), which still takes its place in stream order."""

    op: str
    kernel: Kernel | None
    stream: int
    device: int = 0


@dataclass(frozen=True, slots=True)
class Record:
    event: str
    stream: int
    device: int = 0


@dataclass(frozen=True, slots=True)
class Wait:
    event: str
    stream: int
    device: int = 0


@dataclass(frozen=True, slots=True)
class Synchronize:
    """Block the host until the device is idle (cudaDeviceSynchronize)."""

    device: int = 0


Command = Launch | Record | Wait | Synchronize


@dataclass
class StreamProgram:
    """Host commands in issue order. In graph mode the whole program is one CUDA Graph
    launch: no per-kernel host cost, and no synchronize inside it."""

    commands: list[Command] = field(default_factory=list)
    graph_mode: bool = False
    name: str = "program"

    @property
    def streams(self) -> list[tuple[int, int]]:
        return sorted(
            {(c.device, c.stream) for c in self.commands if not isinstance(c, Synchronize)}
        )

    @property
    def kernels(self) -> int:
        return sum(1 for c in self.commands if isinstance(c, Launch) and c.kernel is not None)

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
    gpu: GPUSpec | list[GPUSpec],
    name: str = "program",
    cache: KernelCache | None = None,
    validate: bool = True,
) -> StreamProgram:
    """Turn a schedule into the host calls that run it.

    ``graph`` is the original graph; a schedule carrying a rewritten graph is lowered
    against that one. ``gpu`` may list one spec per device.
    """
    g = schedule.graph or graph
    if validate:
        validate_schedule(schedule, g)
    gpus = gpu if isinstance(gpu, list) else [gpu]
    caches = [cache if cache is not None and cache.gpu is s else KernelCache(s) for s in gpus]

    def kernels(op: str, device: int) -> list[Kernel]:
        if device >= len(caches):
            raise ProgramError(f"op '{op}' placed on device {device}, machine has {len(caches)}")
        return caches[device].lower(g, op)

    cmds: list[Command] = []
    if isinstance(schedule, StageSchedule):
        _lower_stages(schedule, kernels, cmds)
    else:
        _lower_streams(schedule, g, kernels, cmds)
    return StreamProgram(cmds, schedule.graph_mode, name)


def _lower_stages(schedule: StageSchedule, kernels, cmds: list[Command]) -> None:
    last = len(schedule.stages) - 1
    for si, stage in enumerate(schedule.stages):
        for gi, group in enumerate(stage):
            for op in group:
                cmds.extend(_launches(op, kernels(op, 0), gi, 0))
        if si == last:
            break
        if schedule.barrier == "sync" and not schedule.graph_mode:
            cmds.append(Synchronize(0))
        else:  # every stream of the next stage waits for every group of this one
            nxt = range(len(schedule.stages[si + 1]))
            events = [f"stage{si}.g{gi}" for gi in range(len(stage))]
            for gi, ev in enumerate(events):
                cmds.append(Record(ev, gi, 0))
            for s in nxt:
                cmds.extend(Wait(ev, s, 0) for gi, ev in enumerate(events) if gi != s)


def _lower_streams(schedule: StreamSchedule, g: OpGraph, kernels, cmds: list[Command]) -> None:
    """Issue ops in a topological order that interleaves streams by position, and add an
    event only where the consumer's stream does not already know the producer finished
    (vector clocks), so transitive and same-stream dependencies cost nothing."""
    where = {op: (si, pos) for si, ops in enumerate(schedule.streams) for pos, op in enumerate(ops)}
    order = _issue_order(schedule, g, where)
    n = len(schedule.streams)
    # pass 1: which ops need an event recorded after them
    clock = [[-1] * n for _ in range(n)]  # clock[s][t]: latest position of t that s has seen
    rec_clock: dict[str, list[int]] = {}
    needs: dict[str, list[str]] = {}
    for op in order:
        s, pos = where[op]
        for u in g.predecessors(op):
            su, pu = where[u]
            if su != s and clock[s][su] < pu:
                needs.setdefault(op, []).append(u)
                rc = rec_clock.get(u)
                if rc is None:
                    raise ProgramError(f"internal: producer '{u}' of '{op}' not issued yet")
                clock[s] = [max(a, b) for a, b in zip(clock[s], rc, strict=True)]
        clock[s][s] = pos
        rec_clock[op] = list(clock[s])
    recorded = {u for us in needs.values() for u in us}
    # pass 2: emit
    for op in order:
        s, _ = where[op]
        dev = schedule.device_of(s)
        for u in needs.get(op, ()):
            cmds.append(Wait(f"done:{u}", s, dev))
        cmds.extend(_launches(op, kernels(op, dev), s, dev))
        if op in recorded:
            cmds.append(Record(f"done:{op}", s, dev))


def _issue_order(
    schedule: StreamSchedule, g: OpGraph, where: dict[str, tuple[int, int]]
) -> list[str]:
    """Kahn's algorithm over dependencies plus stream order, smallest (position, stream)
    first: deterministic, and it interleaves streams as a round-robin launcher would."""
    import heapq

    indeg = {op: 0 for op in where}
    succ: dict[str, list[str]] = {op: [] for op in where}
    for u, v in g.edges():
        succ[u].append(v)
        indeg[v] += 1
    for ops in schedule.streams:
        for a, b in itertools.pairwise(ops):
            succ[a].append(b)
            indeg[b] += 1
    heap = [(where[op][1], where[op][0], op) for op, d in indeg.items() if d == 0]
    heapq.heapify(heap)
    out = []
    while heap:
        _, _, op = heapq.heappop(heap)
        out.append(op)
        for v in succ[op]:
            indeg[v] -= 1
            if indeg[v] == 0:
                heapq.heappush(heap, (where[v][1], where[v][0], v))
    if len(out) != len(where):
        raise ProgramError("stream order contradicts dependencies (no issue order exists)")
    return out


# --- validation -----------------------------------------------------------------------


def validate_program(program: StreamProgram, graph: OpGraph | None = None) -> None:
    """Check a program before it runs; raise ProgramError naming the ops and streams.

    Without a graph only the event discipline is checked. With one: every op launched
    exactly once (all its kernels on one stream, back to back), and every dependency
    u -> v ordered: v's stream must have seen u's last command through stream order,
    waits on recorded events, or a synchronize (vector clocks over streams).
    """
    recorded: dict[tuple[int, str], dict[tuple[int, int], int]] = {}
    clocks: dict[tuple[int, int], dict[tuple[int, int], int]] = {}
    seq: dict[tuple[int, int], int] = {}
    op_at: dict[str, tuple[tuple[int, int], int, int]] = {}  # op -> stream, first, last seq
    last_op: dict[tuple[int, int], str] = {}
    floor: dict[tuple[int, int], int] = {}
    seen: list[tuple[str, int, str, int]] = []  # (op, its stream, input, input seq seen)
    for i, c in enumerate(program.commands):
        if isinstance(c, Synchronize):
            if program.graph_mode:
                raise ProgramError(f"command {i}: synchronize inside a CUDA Graph program")
            # everything issued so far happens before everything after
            merged: dict[tuple[int, int], int] = dict(floor)
            for cl in clocks.values():
                for k, v in cl.items():
                    if merged.get(k, -1) < v:
                        merged[k] = v
            for st in clocks:
                clocks[st] = dict(merged)
            floor = merged  # streams first used after the sync inherit it too
            continue
        key = (c.device, c.stream)
        if c.stream < 0 or c.device < 0:
            raise ProgramError(f"command {i}: negative stream or device in {c}")
        n = seq[key] = seq.get(key, -1) + 1
        cl = clocks.get(key)
        if cl is None:
            cl = clocks[key] = dict(floor)
        cl[key] = n
        if isinstance(c, Record):
            recorded[(c.device, c.event)] = dict(cl)
        elif isinstance(c, Wait):
            rc = recorded.get((c.device, c.event))
            if rc is None:
                raise ProgramError(
                    f"command {i}: stream {c.stream} waits on event '{c.event}' "
                    f"that is never recorded before it (it would deadlock or be a no-op)"
                )
            for k, v in rc.items():
                if cl.get(k, -1) < v:
                    cl[k] = v
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
        for op, stream, u, saw in seen:
            (udev, ustream), _, ulast = op_at[u]
            if saw < ulast:
                raise ProgramError(
                    f"op '{op}' on stream {stream} is not ordered after its input '{u}' on "
                    f"stream {ustream} (device {udev}): add an event or a synchronize"
                )
