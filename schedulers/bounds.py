"""Lower bounds on the simulated latency of *any* schedule of a graph on one GPU.

Not a scheduler (``discover`` skips this module): ``simgpu run`` reports each
schedule's gap to the best bound and which bound binds, and the property tests check
every scheduler against them. Each bound follows from what the simulator guarantees
(:mod:`simgpu.sharing`), for either launch mode (eager or one CUDA Graph), so it holds
whichever mode a schedule uses:

* no kernel starts before the host's first call reached the GPU: in eager mode its
  launch call (``launch_api_us + framework_dispatch_us``), in graph mode the graph
  launch (``graph_launch_api_us``), then ``launch_latency_us``, then the per-kernel
  start-up (``kernel_gap_us`` eager, ``graph_node_us`` in a graph);
* a kernel starts no earlier than that start-up after whatever it depends on ended
  (stream order, an event or a synchronize), and event latency only adds to it;
* a kernel takes at least :func:`~simgpu.kernels.kernel_floor_us` in any company (not
  its standalone time: a lone kernel's tail wave can be beaten);
* a block holds its warps, registers, shared memory and block slot for at least
  :func:`~simgpu.kernels.min_block_us` (its time alone on an idle SM);
* under an eager runtime, one host thread per GPU issues every call one after another;
* at any instant the blocks of all kernels compute at most one SM's sustained rate
  per SM, and draw at most the DRAM bandwidth the simulator shares out (``dram_gbps x
  dram_efficiency``).

Merged ops (IOS conv merge) change the graph, so a bound is for the graph run.

Under a runtime (:mod:`simgpu.runtimes`) the bounds are of the kernels it launches (an
eager framework's un-fused BatchNorms and activations, TensorRT's elided concats) and
of its launch mode: its first call costs at least a launch plus its cheapest framework
time, or one graph launch for ``cuda-graph``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from simgpu.graph import OpGraph
from simgpu.hardware import GPUSpec, Machine
from simgpu.kernels import Kernel, KernelCache, kernel_floor_us, min_block_us
from simgpu.runtimes import FAMILIES, Runtime, get_runtime

RuntimeArg = Runtime | str | None


def _modes(gpu: GPUSpec, runtime: RuntimeArg = None) -> list[tuple[float, float]]:
    """(host cost before the first kernel is visible, per-kernel start-up) of each
    launch mode a schedule may use: eager and one CUDA Graph launch, or the runtime's."""
    graph = (gpu.graph_launch_api_us, gpu.graph_node_us)
    if runtime is None:
        return [(gpu.launch_api_us + gpu.framework_dispatch_us, gpu.kernel_gap_us), graph]
    rt = get_runtime(runtime)
    if rt.graph_mode:
        return [graph]
    cheapest = min(rt.costs.framework_us(f) for f in FAMILIES)
    return [(gpu.launch_api_us + cheapest, gpu.kernel_gap_us)]


def first_start_us(gpu: GPUSpec, runtime: RuntimeArg = None) -> float:
    """Earliest time any kernel can start, counted from the host's first API call."""
    return gpu.launch_latency_us + min(host + gap for host, gap in _modes(gpu, runtime))


def _kernels(
    graph: OpGraph, gpu: GPUSpec, cache: KernelCache | None, runtime: RuntimeArg = None
) -> dict[str, list[Kernel]]:
    c = cache if cache is not None and cache.gpu is gpu else KernelCache(gpu)
    if runtime is None:
        return {name: c.lower(graph, name) for name in graph.ops}
    rt = get_runtime(runtime)
    return {
        name: [k for call in rt.calls(graph, name, c.lower(graph, name), gpu) for k in call.kernels]
        for name in graph.ops
    }


def critical_path_bound_us(
    graph: OpGraph, gpu: GPUSpec, cache: KernelCache | None = None, runtime: RuntimeArg = None
) -> float:
    """Longest dependency path, each kernel on it at its floor plus its start-up, after
    the launch cost of the first; the cheaper launch mode decides. Ops without kernels
    (views) cost nothing on the path."""
    ks = _kernels(graph, gpu, cache, runtime)
    times = {n: [kernel_floor_us(k, gpu) for k in kernels] for n, kernels in ks.items()}
    if not any(times.values()):
        return 0.0
    best = math.inf
    for host, gap in _modes(gpu, runtime):
        finish: dict[str, float] = {}
        for n in graph.topo_order:
            own = math.fsum(t + gap for t in times[n])
            finish[n] = own + max((finish[u] for u in graph.predecessors(n)), default=0.0)
        best = min(best, gpu.launch_latency_us + host + max(finish.values()))
    return best


@dataclass(frozen=True)
class WorkBreakdown:
    """Busy time the GPU needs at full capacity, per resource, in microseconds."""

    warps: float
    registers: float
    shared_memory: float
    block_slots: float
    dram: float
    compute: float

    @property
    def binding(self) -> tuple[str, float]:
        items = [
            ("compute", self.compute),
            ("DRAM", self.dram),
            ("warps", self.warps),
            ("registers", self.registers),
            ("shared memory", self.shared_memory),
            ("block slots", self.block_slots),
        ]
        return max(items, key=lambda kv: kv[1])


def work_breakdown(
    graph: OpGraph, gpu: GPUSpec, cache: KernelCache | None = None, runtime: RuntimeArg = None
) -> WorkBreakdown:
    """Resource-time each SM resource, the SMs' compute and DRAM must supply, divided
    by its capacity.

    A block holds its warps, registers, shared memory and one block slot for at least
    ``min_block_us``; all SMs together offer ``sm_count x`` the per-SM capacity of each,
    so no schedule finishes the blocks sooner than sum(grid x min_block_us x use) /
    capacity, for every resource separately (blocks of different kernels may be limited
    by different resources, so the resources are not added). Compute likewise: every
    block's work passes through SMs that each sustain one SM's rate; and every byte
    through the shared DRAM bandwidth.
    """
    warps = regs = smem = slots = 0.0
    nbytes = work = 0.0
    for kernels in _kernels(graph, gpu, cache, runtime).values():
        for k in kernels:
            o = k.occupancy
            busy = k.grid * min_block_us(k, gpu)
            warps += busy * o.warps
            regs += busy * o.regs_alloc
            smem += busy * o.smem_alloc
            slots += busy
            nbytes += k.grid * k.block_bytes
            work += k.grid * k.work_us
    n = gpu.sm_count
    return WorkBreakdown(
        warps / (gpu.max_warps_per_sm * n),
        regs / (gpu.regs_per_sm * n),
        smem / (gpu.smem_per_sm * n),
        slots / (gpu.max_blocks_per_sm * n),
        nbytes / (gpu.dram_bytes_per_us * gpu.dram_efficiency),
        work / n,
    )


def work_bound_us(
    graph: OpGraph, gpu: GPUSpec, cache: KernelCache | None = None, runtime: RuntimeArg = None
) -> float:
    """Launch cost before the first kernel plus the binding resource's busy time."""
    w = work_breakdown(graph, gpu, cache, runtime)
    busy = w.binding[1]
    return first_start_us(gpu, runtime) + busy if busy > 0 else 0.0


def host_calls_us(
    graph: OpGraph, gpu: GPUSpec, cache: KernelCache | None = None, runtime: RuntimeArg = None
) -> dict[str, float]:
    """Per op, the CPU time of the calls an eager runtime makes to issue it (events left
    out: a schedule may need none); empty for no runtime or a CUDA Graph runtime."""
    if runtime is None:
        return {}
    rt = get_runtime(runtime)
    if rt.graph_mode:
        return {}
    c = cache if cache is not None and cache.gpu is gpu else KernelCache(gpu)
    return {
        name: math.fsum(
            x.host_us or 0.0 for x in rt.launches(graph, name, c.lower(graph, name), 0, 0, gpu)
        )
        for name in graph.ops
    }


def host_bound_us(
    graph: OpGraph, gpu: GPUSpec, cache: KernelCache | None = None, runtime: RuntimeArg = None
) -> float:
    """One host thread issues every call one after another, and the last becomes visible
    to the GPU a launch latency later: under an eager runtime no schedule beats the sum
    of its calls' CPU time. (0 without a runtime or under a CUDA Graph.)"""
    calls = host_calls_us(graph, gpu, cache, runtime)
    return math.fsum(calls.values()) + gpu.launch_latency_us if calls else 0.0


def lower_bound_us(
    graph: OpGraph, gpu: GPUSpec, cache: KernelCache | None = None, runtime: RuntimeArg = None
) -> float:
    """The best of the bounds: no schedule of ``graph`` on ``gpu`` can be faster."""
    return max(
        critical_path_bound_us(graph, gpu, cache, runtime),
        work_bound_us(graph, gpu, cache, runtime),
        host_bound_us(graph, gpu, cache, runtime),
    )


def binding_bound(graph: OpGraph, machine: Machine, runtime: RuntimeArg = None) -> str:
    """Which bound binds on ``machine``: ``host``, ``critical path`` or ``work
    (<resource>)``, the resource being the busiest one of the first GPU (compute, DRAM,
    warps, ...)."""
    cp, work = machine_bounds_us(graph, machine, runtime)
    if machine_host_bound_us(graph, machine, runtime) > max(cp, work):
        return "host"
    if cp >= work:
        return "critical path"
    return f"work ({work_breakdown(graph, machine.devices[0], runtime=runtime).binding[0]})"


def machine_bounds_us(
    graph: OpGraph, machine: Machine, runtime: RuntimeArg = None
) -> tuple[float, float]:
    """(critical path, work) lower bounds in us for any schedule on ``machine``: the
    best device's critical path, and the work shared by every device at its rate. On
    one GPU they are :func:`critical_path_bound_us` and :func:`work_bound_us`."""
    if len(machine.devices) == 1:
        gpu = machine.gpu
        return (
            critical_path_bound_us(graph, gpu, runtime=runtime),
            work_bound_us(graph, gpu, runtime=runtime),
        )
    gpus = list({id(g): g for g in machine.devices}.values())
    counts = [sum(1 for d in machine.devices if d is g) for g in gpus]
    cp = min(critical_path_bound_us(graph, g, runtime=runtime) for g in gpus)
    first = min(first_start_us(g, runtime) for g in gpus)
    rate = 0.0
    for g, n in zip(gpus, counts, strict=True):
        busy = work_bound_us(graph, g, runtime=runtime) - first_start_us(g, runtime)
        if busy <= 0:
            return cp, 0.0
        rate += n / busy
    return cp, first + 1.0 / rate


def machine_host_bound_us(graph: OpGraph, machine: Machine, runtime: RuntimeArg = None) -> float:
    """The host bound on ``machine``: every op's calls at its cheapest GPU's price,
    shared by the host threads (one per GPU, or one for all with ``shared_host``)."""
    gpus = list({id(g): g for g in machine.devices}.values())
    per = [host_calls_us(graph, g, runtime=runtime) for g in gpus]
    if not per[0]:
        return 0.0
    total = math.fsum(min(p[n] for p in per) for n in graph.ops)
    threads = 1 if machine.shared_host else len(machine.devices)
    return total / threads + min(g.launch_latency_us for g in gpus)


def schedule_bound_us(
    graph: OpGraph,
    machine: Machine,
    run_graph: OpGraph | None = None,
    runtime: RuntimeArg = None,
) -> float:
    """The bound a schedule is measured against: the best of the bounds on ``machine``;
    a schedule that rewrote the graph (merged ops) is bounded by the better of both."""

    def best(g: OpGraph) -> float:
        return max(
            *machine_bounds_us(g, machine, runtime), machine_host_bound_us(g, machine, runtime)
        )

    bound = best(graph)
    if run_graph is not None and run_graph is not graph:
        bound = min(bound, best(run_graph))
    return bound
