"""The Scheduler protocol, the registry, and the Profiler oracle schedulers consult.

A scheduler is one module in this package: a class with a ``schedule(graph, profiler)``
method, decorated with ``@register("name")``. Its options are dataclass fields, so
``--option name.field=value`` on the CLI reaches it with type checking and a clear
error for a misspelt field. Modules are discovered on first use: adding a scheduler
is adding a file.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import pkgutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from simgpu.errors import SimGPUError
from simgpu.graph import OpGraph
from simgpu.hardware import GPUSpec, Machine
from simgpu.kernels import Kernel, KernelCache, signature
from simgpu.limits import check
from simgpu.memory import (
    MemoryLimitError,
    MemoryReport,
    Tensors,
    account,
    check_limit_feasible,
    tensors_of,
)
from simgpu.program import Copy, Launch, Record, StreamProgram, Synchronize, Wait, lower
from simgpu.runtimes import Runtime, get_runtime
from simgpu.schedule import Schedule
from simgpu.sim.engine import simulate
from simgpu.timeline import Timeline


class SchedulerError(SimGPUError):
    """Unknown scheduler, bad option, or a scheduler that cannot handle its input."""


class SchedulerSkipped(SchedulerError):
    """The scheduler does not apply to this input by design (an exact search past its
    size limit, say): a comparison reports it as skipped, not as a failure."""


@runtime_checkable
class Scheduler(Protocol):
    name: ClassVar[str]
    multi_gpu: ClassVar[bool]

    def schedule(self, graph: OpGraph, profiler: Profiler) -> Schedule: ...


@dataclass(frozen=True)
class SchedulerInfo:
    name: str
    cls: type
    description: str
    multi_gpu: bool
    runtime: str = "pytorch-eager"  # the runtime its paper ran on (simgpu.runtimes)
    memory_aware: bool = False  # keeps its schedules within a memory limit


REGISTRY: dict[str, SchedulerInfo] = {}
_NOT_SCHEDULERS = {"base", "bounds"}
_discovered = False


def register(
    name: str,
    *,
    multi_gpu: bool = False,
    runtime: str = "pytorch-eager",
    memory_aware: bool = False,
) -> Callable[[type], type]:
    """Class decorator: make a scheduler available by ``name``. ``runtime`` is the
    runtime its paper measured on; a schedule asking for a CUDA Graph (its
    ``graph_mode`` option) runs as ``cuda-graph`` whatever the paper's runtime.
    ``memory_aware``: it keeps its schedule within ``profiler.memory_limit`` (bytes per
    GPU) when one is set; the others' schedules are only checked against it."""

    def deco(cls: type) -> type:
        if name in REGISTRY and REGISTRY[name].cls is not cls:
            raise ValueError(f"scheduler '{name}' registered twice")
        cls.name = name
        cls.multi_gpu = multi_gpu
        cls.runtime = runtime
        cls.memory_aware = memory_aware
        doc = (cls.__doc__ or "").strip().splitlines()
        REGISTRY[name] = SchedulerInfo(
            name, cls, doc[0] if doc else "", multi_gpu, runtime, memory_aware
        )
        return cls

    return deco


def runtime_of(sched: Scheduler, override: str | Runtime | None = None) -> Runtime:
    """The runtime a scheduler's schedules run under: ``override`` if given, else
    ``cuda-graph`` when the scheduler captures its schedule (``graph_mode``), else the
    runtime its paper ran on."""
    if override is not None:
        return get_runtime(override)
    if getattr(sched, "graph_mode", False):
        return get_runtime("cuda-graph")
    return get_runtime(getattr(sched, "runtime", "pytorch-eager"))


def discover() -> dict[str, SchedulerInfo]:
    """Import every module of the package once, so their ``@register`` calls run."""
    global _discovered
    if not _discovered:
        import schedulers

        for mod in pkgutil.iter_modules(schedulers.__path__):
            if mod.name not in _NOT_SCHEDULERS and not mod.name.startswith("_"):
                importlib.import_module(f"schedulers.{mod.name}")
        _discovered = True
    return REGISTRY


def scheduler_names(single_gpu_only: bool = False) -> list[str]:
    reg = discover()
    return sorted(n for n, i in reg.items() if not (single_gpu_only and i.multi_gpu))


def make_scheduler(name: str, options: Mapping[str, str | Any] | None = None) -> Scheduler:
    """Instantiate a scheduler; string option values are converted to the field's type."""
    reg = discover()
    if name not in reg:
        raise SchedulerError(f"unknown scheduler '{name}' (known: {', '.join(sorted(reg))})")
    cls = reg[name].cls
    options = dict(options or {})
    fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
    kwargs = {}
    for key, raw in options.items():
        f = fields.get(key)
        if f is None:
            known = ", ".join(fields) or "none"
            raise SchedulerError(f"scheduler '{name}' has no option '{key}' (options: {known})")
        kwargs[key] = v = _convert(name, key, raw, f)
        if "streams" in key and isinstance(v, int):
            check("streams", v, f"option {name}.{key}")
        if isinstance(v, float) and not math.isfinite(v):  # inf or nan is no weight or rate
            raise SchedulerError(f"option {name}.{key}: must be a finite number, got {raw!r}")
    return cls(**kwargs)


def _convert(sched: str, key: str, raw: Any, f: dataclasses.Field) -> Any:
    if not isinstance(raw, str):
        return raw
    default = f.default if f.default is not dataclasses.MISSING else None
    typ = type(default) if default is not None else str
    try:
        if typ is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        return typ(raw)
    except ValueError:
        raise SchedulerError(
            f"option {sched}.{key}: cannot read {raw!r} as {typ.__name__}"
        ) from None


def parse_options(items: list[str]) -> dict[str, dict[str, str]]:
    """``["ios.r=1", "ios.s=3"]`` -> ``{"ios": {"r": "1", "s": "3"}}``."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        key, eq, value = item.partition("=")
        sched, dot, opt = key.partition(".")
        if not eq or not dot or not sched or not opt:
            raise SchedulerError(f"option {item!r} must look like SCHEDULER.NAME=VALUE")
        out.setdefault(sched.strip(), {})[opt.strip()] = value.strip()
    return out


# --- the Profiler ---------------------------------------------------------------------


@dataclass
class Profiler:
    """The latency oracle schedulers ask, backed by the simulator.

    It memoises by program content and counts both calls and distinct measurements;
    ``gpu_search_s`` is what the same search would have cost on a real GPU, where each
    distinct measurement runs ``warmup + repeat`` times — the figure the IOS and LIOS
    papers argue about.
    """

    machine: Machine
    warmup: int = 2
    repeat: int = 5
    # how ops become host calls (simgpu.runtimes); None: the GPU's flat launch costs
    runtime: Runtime | None = None
    # bytes per GPU a memory-aware scheduler must keep its schedule within (None: no cap)
    memory_limit: int | None = None
    calls: int = 0
    cache: dict[tuple, float] = field(default_factory=dict)
    gpu_search_us: float = 0.0
    sim_wall_s: float = 0.0
    _stage_ops: dict[int, tuple[OpGraph, dict[str, tuple]]] = field(
        default_factory=dict, repr=False
    )
    _stage_content: dict[tuple, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.kernels = KernelCache(self.machine.gpu)
        self._tensors: dict[int, tuple[OpGraph, Tensors]] = {}

    def tensors(self, graph: OpGraph) -> Tensors:
        """The tensor table of ``graph`` on this GPU (simgpu.memory), made once per graph:
        what a memory-aware search asks (live bytes, footprints, bounds)."""
        hit = self._tensors.get(id(graph))
        if hit is None or hit[0] is not graph:
            hit = self._tensors[id(graph)] = (graph, tensors_of(graph, self.gpu, self.kernels))
        return hit[1]

    def memory(self, schedule: Schedule, graph: OpGraph) -> MemoryReport:
        """Simulate ``schedule`` and replay its allocations (no limit applied): the peak a
        memory-aware scheduler compares with ``memory_limit``. Not memoised, not counted
        as a profiling run: a real GPU reports its memory on the runs it times."""
        program = self.program(schedule, graph)
        tl = simulate(program, self.machine)
        g = schedule.graph or graph  # the tensor table is made once per graph, not per replay
        return account(tl, program, g, self.machine, tensors=self.tensors(g))

    def fits(self, schedule: Schedule, graph: OpGraph) -> bool:
        """Whether ``schedule`` stays within ``memory_limit`` (always, without one)."""
        if self.memory_limit is None:
            return True
        return self.memory(schedule, graph).peak_allocated <= self.memory_limit

    @property
    def gpu(self) -> GPUSpec:
        return self.machine.gpu

    @property
    def distinct(self) -> int:
        return len(self.cache)

    @property
    def gpu_search_s(self) -> float:
        return self.gpu_search_us / 1e6

    def program(self, schedule: Schedule, graph: OpGraph) -> StreamProgram:
        return lower(
            schedule, graph, list(self.machine.devices), cache=self.kernels, runtime=self.runtime
        )

    def launches(self, graph: OpGraph, op: str, stream: int = 0) -> list[Launch]:
        """The launch commands of one op on ``stream`` of device 0, as the runtime
        lowers them (several per op where it un-fuses, each with its host cost)."""
        ks = self.kernels.lower(graph, op)
        if self.runtime is None:
            return [Launch(op, k, stream) for k in ks] or [Launch(op, None, stream)]
        return self.runtime.launches(graph, op, ks, stream, 0, self.gpu)

    def view_cost_us(self) -> float:
        """Host cost of an op without device work (a view) under the runtime."""
        if self.runtime is None:
            return self.gpu.framework_dispatch_us
        return self.runtime.costs.framework_us("view")

    def op_commands(self, graph: OpGraph, op: str) -> list[tuple[float, Kernel | None]]:
        """Per launch of an op: its host cost and kernel (None for a view) — what a
        search's lower bounds need of the runtime."""
        return [(host_cost_us(c, self.gpu), c.kernel) for c in self.launches(graph, op)]

    def measure(self, schedule: Schedule, graph: OpGraph) -> float:
        """Latency in microseconds of ``schedule`` run on ``graph`` (or a subgraph)."""
        return self.measure_program(self.program(schedule, graph))

    def measure_program(self, program: StreamProgram) -> float:
        self.calls += 1
        key = _program_key(program)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        return self._simulate(key, program)

    def _simulate(self, key: tuple, program: StreamProgram, until_host: bool = False) -> float:
        """Simulate a program not measured before, memoise its latency under ``key`` and
        charge what measuring it would cost on a GPU. ``until_host``: the latency runs
        until the host's last call returns (a stage ending in a synchronize)."""
        t0 = time.perf_counter()
        tl = simulate(program, self.machine)
        self.sim_wall_s += time.perf_counter() - t0
        lat = tl.makespan_us
        if until_host:
            lat = max(lat, max((h.end_us for h in tl.host), default=0.0))
        self.cache[key] = lat
        self.gpu_search_us += (self.warmup + self.repeat) * lat
        return lat

    def op_latency_us(self, graph: OpGraph, op_name: str) -> float:
        """Latency in microseconds of one op run alone (eager, one stream): what a
        per-op profile gives list schedulers such as LIOS and HEFT. Memoised by the op's
        kernel signature, so ops of equal shape cost one measurement; counted in
        ``calls``/``distinct``/``gpu_search_s`` like :meth:`measure`."""
        if op_name not in graph:
            raise SchedulerError(f"profiler: op '{op_name}' is not in graph '{graph.name}'")
        self.calls += 1
        key = ("op", signature(graph, op_name))
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        cmds = self.launches(graph, op_name)
        return self._simulate(key, StreamProgram(cmds, name=f"op:{op_name}"))

    def measure_stage(self, graph: OpGraph, groups: Sequence[Sequence[str]]) -> float:
        """Latency in microseconds of one stage measured as IOS measures it: group i's
        ops in order on stream i, then a synchronize; from the first API call until the
        synchronize returns (so a chain of stages costs the sum of its stages).

        Built straight from kernels (no subgraph, no lowering) and memoised by kernel
        content, not op names: stages of equal shapes (repeated blocks) cost one
        simulation. Counted in ``calls``/``distinct``/``gpu_search_s`` like :meth:`measure`.
        """
        self.calls += 1
        memo = self._stage_ops.get(id(graph))
        if memo is None or memo[0] is not graph:  # the graph is kept, so its id stays its own
            memo = self._stage_ops[id(graph)] = (graph, {})
        per_op = memo[1]
        ids = self._stage_content
        key: list = ["stage"]
        for gi, group in enumerate(groups):
            key.append(-1 - gi)  # a group separator: stream gi starts here
            for op in group:
                hit = per_op.get(op)
                if hit is None:
                    if op not in graph:
                        raise SchedulerError(f"profiler: op '{op}' is not in graph '{graph.name}'")
                    ls = self.launches(graph, op)
                    content = tuple(
                        (None if c.kernel is None else _kernel_key(c.kernel), c.host_us) for c in ls
                    )
                    hit = per_op[op] = (ls, ids.setdefault(content, len(ids)))
                key.append(hit[1])
        key = tuple(key)
        lat = self.cache.get(key)
        if lat is not None:
            return lat
        cmds: list = []
        for gi, group in enumerate(groups):
            for op in group:
                cmds.extend(Launch(op, c.kernel, gi, 0, c.host_us) for c in per_op[op][0])
        cmds.append(Synchronize(0))
        return self._simulate(key, StreamProgram(cmds, name="stage"), until_host=True)


def _kernel_key(k: Kernel) -> tuple:
    """Everything of a kernel the simulator reads: two kernels alike in name and grid
    but not in work (a 1x1 and a 5x5 conv of one op name) must not share a memo entry."""
    return (k.name, k.grid, k.threads, k.regs, k.smem, k.block_bytes, k.work_us, k.setup_us,
            k.latency_us)  # fmt: skip


def host_cost_us(c: Launch, gpu: GPUSpec) -> float:
    """CPU time of a launch command: the runtime's price, else the GPU's flat costs."""
    if c.host_us is not None:
        return c.host_us
    if c.kernel is None:
        return gpu.framework_dispatch_us
    return gpu.launch_api_us + gpu.framework_dispatch_us


def _program_key(p: StreamProgram) -> tuple:
    parts: list[tuple] = [("graph", p.graph_mode)]
    for c in p.commands:
        if isinstance(c, Launch):
            k = c.kernel
            parts.append(
                ("L", c.device, c.stream, c.op, None if k is None else _kernel_key(k), c.host_us)
            )
        elif isinstance(c, Record | Wait):
            parts.append((type(c).__name__, c.device, c.stream, c.event, c.host_us))
        elif isinstance(c, Copy):
            parts.append(("C", c.device, c.stream, c.src, c.dst, c.bytes))
        else:
            parts.append(("S", c.device))
    return tuple(parts)


# --- running schedulers ---------------------------------------------------------------


@dataclass
class RunResult:
    """One scheduler on one graph and machine: its schedule, program and timeline."""

    scheduler: str
    schedule: Schedule
    program: StreamProgram
    timeline: Timeline
    schedule_s: float
    profiler_calls: int
    profiler_distinct: int
    gpu_search_s: float
    runtime: str = "pytorch-eager"
    memory: MemoryReport | None = None  # peak allocated/reserved bytes (simgpu.memory)

    @property
    def latency_ms(self) -> float:
        return self.timeline.latency_ms

    @property
    def streams(self) -> int:
        return len(self.program.streams)

    @property
    def syncs(self) -> int:
        return self.program.syncs


def run_scheduler(
    name: str,
    graph: OpGraph,
    machine: Machine,
    options: Mapping[str, Any] | None = None,
    runtime: str | Runtime | None = None,
    memory_limit: int | None = None,
) -> RunResult:
    """Schedule ``graph`` with ``name``, lower the schedule and simulate it once.

    The scheduler searches and its schedule runs under ``runtime`` (a name or a
    Runtime), by default the one its paper ran on (:func:`runtime_of`).
    ``memory_limit`` (bytes per GPU): a memory-aware scheduler schedules within it; any
    schedule whose live tensors exceed it raises :class:`MemoryLimitError`, as does a
    limit below what every schedule must hold."""
    sched = make_scheduler(name, options)
    rt = runtime_of(sched, runtime)
    if not sched.multi_gpu and len(machine.devices) > 1:
        machine_for_search = Machine(machine.name, machine.devices[:1])
    else:
        machine_for_search = machine
    profiler = Profiler(machine_for_search, runtime=rt, memory_limit=memory_limit)
    if memory_limit is not None:
        check_limit_feasible(profiler.tensors(graph), memory_limit, len(machine.devices))
    t0 = time.perf_counter()
    schedule = sched.schedule(graph, profiler)
    schedule_s = time.perf_counter() - t0
    program = lower(
        schedule, graph, list(machine.devices), name=name, cache=profiler.kernels, runtime=rt
    )
    timeline = simulate(program, machine)
    try:
        memory = account(timeline, program, schedule.graph or graph, machine, memory_limit)
    except MemoryLimitError as e:
        if getattr(sched, "memory_aware", False):
            raise
        raise MemoryLimitError(f"{name} does not schedule within a memory limit: {e}") from None
    if schedule.graph is not None:  # the bounds are the model's, not a rewrite's
        t = profiler.tensors(graph)
        memory.lower_bound = t.lower_bound(len(machine.devices))
        memory.sequential_peak = t.sequential_peak()
    return RunResult(
        name,
        schedule,
        program,
        timeline,
        schedule_s,
        profiler.calls,
        profiler.distinct,
        profiler.gpu_search_s,
        rt.name,
        memory,
    )
