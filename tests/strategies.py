"""Hypothesis strategies for simgpu: random GPUs, kernels, op DAGs, schedules and programs.

Shared by the simulator property tests and (later) scheduler property tests. pytest puts
``tests/`` on ``sys.path`` (no ``__init__.py`` there), so import it as ``import strategies``.

Everything here builds *valid* inputs: GPUs pass ``GPUSpec`` validation, kernels fit on one
SM of their GPU, DAGs are acyclic ``OpGraph`` s, schedules respect dependencies, and every
program passes ``validate_program`` against its graph. Sizes are capped (waves per kernel,
tensor widths) so that one simulation takes milliseconds.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from hypothesis import strategies as st

from simgpu.errors import LoweringError
from simgpu.graph import Op, OpGraph
from simgpu.hardware import _MAY_BE_ZERO, KB, PRESETS, GPUSpec
from simgpu.kernels import Kernel, Occupancy, occupancy, timed_kernel
from simgpu.program import Command, Launch, Record, StreamProgram, Synchronize, Wait, lower
from simgpu.schedule import StageSchedule, StreamSchedule

PRESET_NAMES = sorted(PRESETS)

# host/GPU cost fields that may be zero (GPUSpec allows it); varied by ``gpus(vary_costs=True)``
COST_FIELDS = tuple(sorted(_MAY_BE_ZERO - {"smem_reserved_per_block"}))

# tensor widths for DAG ops: elementwise kernels of 1..512 blocks once lowered
WIDTHS = (64, 1000, 4096, 1 << 14, 1 << 16, 1 << 18)


# --- GPUs -------------------------------------------------------------------------------


@st.composite
def gpus(
    draw: st.DrawFn,
    min_sm: int = 1,
    max_sm: int = 132,
    hw_queues: int | None = None,
    vary_limits: bool = True,
    vary_costs: bool = True,
    presets: Sequence[str] = PRESET_NAMES,
) -> GPUSpec:
    """A random preset with random SM count, hardware queues, per-SM limits, DRAM
    bandwidth and (optionally) host/GPU costs. Limits stay in ranges where the
    cost model's elementwise kernels (128 threads, 32 registers, no smem) still fit."""
    base = PRESETS[draw(st.sampled_from(list(presets)))]
    ch: dict = {
        "sm_count": draw(st.integers(min_sm, max_sm)),
        "hw_queues": hw_queues if hw_queues is not None else draw(st.integers(1, 32)),
        "dram_gbps": draw(st.floats(50.0, 5000.0)),
    }
    if vary_limits and draw(st.booleans()):
        smem_per_sm = draw(st.integers(16, 228)) * KB
        ch.update(
            max_threads_per_sm=draw(st.integers(4, 64)) * 32,
            max_threads_per_block=draw(st.sampled_from((256, 512, 1024))),
            max_blocks_per_sm=draw(st.integers(1, 32)),
            regs_per_sm=draw(st.sampled_from((16384, 32768, 65536, 131072))),
            smem_per_sm=smem_per_sm,
            max_smem_per_block=draw(st.integers(1, smem_per_sm // 256)) * 256,
            smem_reserved_per_block=draw(st.sampled_from((0, 1 * KB))),
        )
    if vary_costs and draw(st.booleans()):
        for f in COST_FIELDS:
            choice = draw(st.integers(0, 3))
            if choice == 0:
                ch[f] = 0.0
            elif choice == 1:
                ch[f] = draw(st.floats(0.0, 20.0))
            # else keep the preset's value
    return base.replace(**ch)


# --- kernels ----------------------------------------------------------------------------


def fit_launch(threads: int, regs: int, smem: int, gpu: GPUSpec) -> tuple[int, int, int, Occupancy]:
    """Shrink a launch configuration until one block fits on an SM of ``gpu``."""
    threads = max(1, min(threads, gpu.max_threads_per_block, gpu.max_warps_per_sm * gpu.warp_size))
    regs = max(1, min(regs, gpu.max_regs_per_thread))
    smem = max(0, min(smem, gpu.max_smem_per_block))
    while True:
        try:
            return threads, regs, smem, occupancy(threads, regs, smem, gpu)
        except LoweringError:
            if smem:
                smem //= 2
            elif regs > 16:
                regs = max(16, regs // 2)
            elif threads > 32:
                threads = max(32, threads // 2)
            else:  # pragma: no cover - gpus() never builds an SM this small
                raise


def make_kernel(
    gpu: GPUSpec,
    op: str = "k",
    grid: int = 1,
    threads: int = 128,
    regs: int = 32,
    smem: int = 0,
    block_us: float = 10.0,
    block_bytes: float = 0.0,
    name: str | None = None,
    fixed: bool = False,
) -> Kernel:
    """A kernel with an explicit per-block time (no cost model); launch config fitted.
    Its blocks are compute work that takes ``block_us`` in the first wave alone, or, if
    ``fixed``, a fixed time whatever shares the SM (see ``timed_kernel``)."""
    threads, regs, smem, _ = fit_launch(threads, regs, smem, gpu)
    return timed_kernel(gpu, name or f"k_{op}", op, grid, threads, regs, smem, block_us,
                        block_bytes, fixed=fixed)  # fmt: skip


@st.composite
def kernels(
    draw: st.DrawFn,
    gpu: GPUSpec,
    op: str = "k",
    max_grid: int = 5000,
    max_waves: int = 6,
    memory: bool = True,
) -> Kernel:
    """A random kernel that fits on ``gpu``: threads 32..1024, regs 16..255, smem up to the
    block limit. Its blocks are one of: compute work (0.5..200 SM-us), DRAM traffic
    (0..1e6 bytes; with ``memory``), both, or a fixed time (0.5..200 us) that nothing
    shares; with a setup of 0..2 us. The grid is capped at ``max_waves`` full waves so
    simulations stay fast."""
    threads = draw(st.integers(32, 1024))
    regs = draw(st.integers(16, 255))
    smem = draw(st.one_of(st.just(0), st.integers(0, gpu.max_smem_per_block)))
    threads, regs, smem, occ = fit_launch(threads, regs, smem, gpu)
    wave = occ.blocks * gpu.sm_count
    grid = draw(st.integers(1, max(1, min(max_grid, max_waves * wave))))
    kind = draw(
        st.sampled_from(("compute", "memory", "both", "fixed") if memory else ("compute", "fixed"))
    )
    work = draw(st.floats(0.5, 200.0)) if kind in ("compute", "both") else 0.0
    nbytes = draw(st.floats(1.0, 1e6)) if kind in ("memory", "both") else 0.0
    if kind == "fixed":
        setup = draw(st.floats(0.5, 200.0))
    else:
        setup = draw(st.one_of(st.just(0.0), st.floats(0.0, 2.0)))
    return Kernel(f"k_{op}", op, grid, threads, regs, smem, 0.0, nbytes, work, setup, occ)


# --- DAGs -------------------------------------------------------------------------------


@st.composite
def dags(
    draw: st.DrawFn,
    min_ops: int = 1,
    max_ops: int = 40,
    max_inputs: int = 3,
    views: bool = True,
) -> OpGraph:
    """An acyclic OpGraph: op0 is an input; op j reads 0..3 of ops 0..j-1 (edges only go
    i -> j with i < j). No input -> another "input"; one -> relu/sigmoid/gelu (or an
    "identity" view); two or more -> add/mul. All ops share one shape (1, width)."""
    n = draw(st.integers(min_ops, max_ops))
    shape = (1, draw(st.sampled_from(WIDTHS)))
    unary = ("relu", "sigmoid", "gelu", "identity") if views else ("relu", "sigmoid", "gelu")
    ops = [Op("op0", "input", (), shape)]
    for j in range(1, n):
        k = draw(st.integers(0, min(j, max_inputs)))
        ins = sorted(draw(st.lists(st.integers(0, j - 1), min_size=k, max_size=k, unique=True)))
        if k == 0:
            kind = "input"
        elif k == 1:
            kind = draw(st.sampled_from(unary))
        else:
            kind = draw(st.sampled_from(("add", "mul")))
        ops.append(Op(f"op{j}", kind, tuple(f"op{i}" for i in ins), shape))
    return OpGraph(ops, name=f"dag{n}")


@st.composite
def topo_orders(draw: st.DrawFn, graph: OpGraph) -> list[str]:
    """A uniformly-seeded random topological order of ``graph`` (Kahn, random priorities)."""
    names = list(graph.ops)
    prio = dict(zip(names, draw(st.permutations(range(len(names)))), strict=True))
    indeg = {n: len(graph.predecessors(n)) for n in names}
    heap = [(prio[n], n) for n in names if indeg[n] == 0]
    heapq.heapify(heap)
    out = []
    while heap:
        _, n = heapq.heappop(heap)
        out.append(n)
        for v in graph.successors(n):
            indeg[v] -= 1
            if indeg[v] == 0:
                heapq.heappush(heap, (prio[v], v))
    return out


@dataclass
class Assignment:
    """Ops of a graph spread over streams: ``order`` is a topological issue order and
    ``stream_of`` the stream index (0..n_streams-1) of every op."""

    order: list[str]
    stream_of: dict[str, int]
    n_streams: int

    def schedule(self, graph_mode: bool = False) -> StreamSchedule:
        streams: list[list[str]] = [[] for _ in range(self.n_streams)]
        for op in self.order:
            streams[self.stream_of[op]].append(op)
        return StreamSchedule(streams, graph_mode=graph_mode)


@st.composite
def assignments(draw: st.DrawFn, graph: OpGraph, max_streams: int = 8) -> Assignment:
    order = draw(topo_orders(graph))
    n = draw(st.integers(1, max_streams))
    where = draw(st.lists(st.integers(0, n - 1), min_size=len(order), max_size=len(order)))
    return Assignment(order, dict(zip(order, where, strict=True)), n)


@st.composite
def stream_schedules(draw: st.DrawFn, graph: OpGraph, max_streams: int = 8) -> StreamSchedule:
    """A valid StreamSchedule: each stream's ops in a common random topological order."""
    return draw(assignments(graph, max_streams)).schedule(graph_mode=draw(st.booleans()))


def levels(graph: OpGraph) -> dict[str, int]:
    """Longest-path depth of every op from the graph's sources."""
    depth: dict[str, int] = {}
    for n in graph.topo_order:
        depth[n] = max((depth[u] + 1 for u in graph.predecessors(n)), default=0)
    return depth


@st.composite
def stage_schedules(draw: st.DrawFn, graph: OpGraph, max_groups: int = 4) -> StageSchedule:
    """A valid StageSchedule: one stage per op depth (ops of equal depth are independent),
    ops spread over 1..max_groups random groups; random barrier kind and graph mode."""
    depth = levels(graph)
    n_levels = max(depth.values()) + 1
    stages: list[list[list[str]]] = []
    for lv in range(n_levels):
        ops = [n for n in graph.topo_order if depth[n] == lv]
        g = draw(st.integers(1, max_groups))
        groups: list[list[str]] = [[] for _ in range(g)]
        for op in ops:
            groups[draw(st.integers(0, g - 1))].append(op)
        stages.append([grp for grp in groups if grp])
    return StageSchedule(
        stages,
        barrier=draw(st.sampled_from(("sync", "events"))),
        graph_mode=draw(st.booleans()),
    )


# --- programs ---------------------------------------------------------------------------


@dataclass
class SimCase:
    """A program to simulate, the GPU to run it on, and the graph it implements."""

    gpu: GPUSpec
    graph: OpGraph
    program: StreamProgram
    origin: str  # "hand" (random kernels) | "streams" | "stages" (through ``lower``)

    def __repr__(self) -> str:  # Hypothesis prints this on failure: keep it readable
        lines = [f"SimCase({self.origin}, graph_mode={self.program.graph_mode}, gpu={self.gpu!r}"]
        lines += [f"  {c!r}" for c in self.program.commands]
        return "\n".join([*lines, ")"])


def hand_program(
    graph: OpGraph,
    a: Assignment,
    op_kernels: dict[str, list[Kernel]],
    stream_ids: Sequence[int],
    graph_mode: bool = False,
    sync_after: frozenset[str] = frozenset(),
) -> StreamProgram:
    """Issue ``a.order``; a Wait before each op for every input on another stream (once per
    stream and producer), a Record after each op some other stream consumes, and a
    Synchronize after the ops in ``sync_after`` (eager mode only)."""
    sid = [stream_ids[i] for i in range(a.n_streams)]
    consumed_elsewhere = {u for u, v in graph.edges() if a.stream_of[u] != a.stream_of[v]}
    waited: set[tuple[int, str]] = set()
    cmds: list[Command] = []
    for op in a.order:
        s = sid[a.stream_of[op]]
        for u in graph.predecessors(op):
            if a.stream_of[u] != a.stream_of[op] and (s, u) not in waited:
                waited.add((s, u))
                cmds.append(Wait(f"done:{u}", s))
        ks = op_kernels.get(op) or []
        if ks:
            cmds.extend(Launch(op, k, s) for k in ks)
        else:
            cmds.append(Launch(op, None, s))
        if op in consumed_elsewhere:
            cmds.append(Record(f"done:{op}", s))
        if op in sync_after and not graph_mode:
            cmds.append(Synchronize(0))
    return StreamProgram(cmds, graph_mode=graph_mode, name="hand")


@st.composite
def hand_built_cases(
    draw: st.DrawFn,
    gpu: GPUSpec | st.SearchStrategy[GPUSpec] | None = None,
    max_ops: int = 40,
    max_streams: int = 8,
    graph_mode: bool | None = None,
    syncs: bool = True,
    max_waves: int = 4,
) -> SimCase:
    """A random DAG on random streams, built into a program by hand with random kernels
    (1-2 per op, some ops kernel-less), random stream ids (so streams alias onto hardware
    queues in varied ways), optional synchronizes and CUDA Graph mode."""
    gpu = _gpu(draw, gpu)
    graph = draw(dags(max_ops=max_ops))
    a = draw(assignments(graph, max_streams))
    stream_ids = draw(
        st.lists(st.integers(0, 63), min_size=a.n_streams, max_size=a.n_streams, unique=True)
    )
    gm = draw(st.booleans()) if graph_mode is None else graph_mode
    op_kernels: dict[str, list[Kernel]] = {}
    sync_after: set[str] = set()
    for op in a.order:
        if graph[op].kind != "input" and draw(st.integers(0, 9)):
            n = draw(st.integers(1, 2))
            op_kernels[op] = [draw(kernels(gpu, op=op, max_waves=max_waves)) for _ in range(n)]
        if syncs and not gm and draw(st.integers(0, 19)) == 0:
            sync_after.add(op)
    prog = hand_program(graph, a, op_kernels, stream_ids, gm, frozenset(sync_after))
    return SimCase(gpu, graph, prog, "hand")


@st.composite
def lowered_cases(
    draw: st.DrawFn,
    gpu: GPUSpec | st.SearchStrategy[GPUSpec] | None = None,
    max_ops: int = 40,
    max_streams: int = 8,
    stages: bool = True,
    graph_mode: bool | None = None,
) -> SimCase:
    """A random DAG through a random StreamSchedule (or StageSchedule) and ``lower``: the
    cost model's kernels, the lowering's events and synchronizes."""
    gpu = _gpu(draw, gpu)
    graph = draw(dags(max_ops=max_ops))
    if stages and draw(st.integers(0, 3)) == 0:
        sched: StreamSchedule | StageSchedule = draw(stage_schedules(graph))
        origin = "stages"
    else:
        sched = draw(stream_schedules(graph, max_streams))
        origin = "streams"
    if graph_mode is not None:
        sched.graph_mode = graph_mode
    return SimCase(gpu, graph, lower(sched, graph, gpu), origin)


def sim_cases(
    gpu: GPUSpec | st.SearchStrategy[GPUSpec] | None = None, **kw
) -> st.SearchStrategy[SimCase]:
    """Either kind of program."""
    return st.one_of(hand_built_cases(gpu, **kw), lowered_cases(gpu, **kw))


@st.composite
def event_programs(
    draw: st.DrawFn,
    gpu: GPUSpec,
    max_cmds: int = 40,
    max_streams: int = 6,
    n_events: int = 3,
) -> StreamProgram:
    """Unstructured programs over a few event names that get re-recorded: launches,
    records, and waits on events already recorded at least once (so each wait binds
    backwards, to the latest record before it, and the program cannot deadlock)."""
    n_streams = draw(st.integers(1, max_streams))
    cmds: list[Command] = []
    recorded: list[str] = []
    for i in range(draw(st.integers(1, max_cmds))):
        s = draw(st.integers(0, n_streams - 1))
        what = draw(st.sampled_from(("launch", "launch", "record", "wait")))
        if what == "record":
            ev = f"e{draw(st.integers(0, n_events - 1))}"
            cmds.append(Record(ev, s))
            if ev not in recorded:
                recorded.append(ev)
        elif what == "wait" and recorded:
            cmds.append(Wait(draw(st.sampled_from(recorded)), s))
        else:
            cmds.append(Launch(f"op{i}", draw(kernels(gpu, op=f"op{i}", max_waves=3)), s))
    return StreamProgram(cmds, graph_mode=draw(st.booleans()), name="events")


def _gpu(draw: st.DrawFn, gpu: GPUSpec | st.SearchStrategy[GPUSpec] | None) -> GPUSpec:
    if gpu is None:
        return draw(gpus())
    if isinstance(gpu, GPUSpec):
        return gpu
    return draw(gpu)


__all__ = [
    "COST_FIELDS",
    "PRESET_NAMES",
    "Assignment",
    "SimCase",
    "assignments",
    "dags",
    "event_programs",
    "fit_launch",
    "gpus",
    "hand_built_cases",
    "hand_program",
    "kernels",
    "levels",
    "lowered_cases",
    "make_kernel",
    "sim_cases",
    "stage_schedules",
    "stream_schedules",
    "topo_orders",
]


def set_partitions(items: list[str]) -> Iterator[list[list[str]]]:
    """Every partition of ``items`` into non-empty groups (brute-force references)."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in set_partitions(rest):
        yield [[first], *part]
        for i in range(len(part)):
            yield [*part[:i], [first, *part[i]], *part[i + 1 :]]
