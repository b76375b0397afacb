"""Ops to kernels, occupancy, and the analytic per-block cost model.

A kernel here is what a GPU's block scheduler sees: a grid of blocks, each with its
thread count, registers and shared memory, and the work one block carries (compute and
DRAM traffic, :mod:`simgpu.sharing`). A kernel's time is never fixed at lowering: it
*emerges* in the simulator from blocks placed in waves on the SMs and sharing their
throughput with whatever else is resident, so a small kernel leaves SMs idle that a
concurrent one can use, and two kernels on one SM each get part of it. A table of
measured kernels (from calibration) replaces the analytic estimate for the ops it knows.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from simgpu.costs import LibraryCosts, library_costs
from simgpu.errors import LoweringError
from simgpu.graph import OpGraph
from simgpu.hardware import GPUSpec
from simgpu.libraries import (
    CUBLAS,
    CUDNN,
    STREAM,
    Candidate,
    KernelSpec,
    Library,
    block_costs,
    block_limit,
    conv_candidates,
    gemm_candidates,
    stream_spec,
    tensor_unit,
)
from simgpu.limits import check as check_limit
from simgpu.ops import kind_of, numel
from simgpu.sharing import INF, Demand, demand, dram_capacity, lone_kernel_us, warp_cap


@dataclass(frozen=True)
class Occupancy:
    """Resident blocks per SM and the resource that limits them (CUDA occupancy rules)."""

    blocks: int
    limiter: str  # "threads" | "registers" | "shared memory" | "blocks"
    warps: int  # warps per block
    regs_alloc: int  # registers one block holds (allocated per warp)
    smem_alloc: int  # shared memory one block holds, granularity and reservation included


@dataclass(frozen=True)
class Kernel:
    """One kernel launch, bound to a GPU: launch configuration plus the work of a block.

    A block carries work, not a duration (see :mod:`simgpu.sharing`): ``work_us`` of
    compute at its SM's whole sustained rate, ``block_bytes`` of DRAM traffic and a
    fixed ``setup_us``. How long it takes depends on what shares its SM and DRAM.
    """

    name: str
    op: str
    grid: int
    threads: int
    regs: int  # per thread
    smem: int  # bytes per block
    block_flops: float
    block_bytes: float  # DRAM traffic per block
    work_us: float  # SM-microseconds of compute per block (its SM's full rate)
    setup_us: float  # fixed latency of every block, shared with nobody
    occupancy: Occupancy
    measured: bool = False  # the work comes from a measured duration
    # the least time a block's progress takes in any company (its main loop's latency
    # chain): other kernels' warps may use the SM meanwhile (simgpu.sharing.demand)
    latency_us: float = 0.0
    # device memory the library call holds while it runs (split-K partials, Winograd's
    # transformed tensors); every kernel of the call carries the call's figure
    workspace_bytes: int = 0
    # the simulator's per-GPU constants of this kernel, made on first use (a memo: not
    # part of the kernel's value, not copied by ``dataclasses.replace``)
    sim: Any = field(default=None, init=False, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without the simulator's memo (it belongs to this process's run)."""
        state = dict(self.__dict__)
        state.pop("sim", None)
        return state


def occupancy(threads: int, regs: int, smem: int, gpu: GPUSpec, what: str = "kernel") -> Occupancy:
    """Blocks of one kernel an SM can hold, by the CUDA occupancy calculator's rules."""
    if not 1 <= threads <= gpu.max_threads_per_block:
        raise LoweringError(
            f"{what}: {threads} threads per block (GPU {gpu.name} allows 1..{gpu.max_threads_per_block})"
        )
    if not 1 <= regs <= gpu.max_regs_per_thread:
        raise LoweringError(
            f"{what}: {regs} registers per thread (GPU {gpu.name} allows {gpu.max_regs_per_thread})"
        )
    if not 0 <= smem <= gpu.max_smem_per_block:
        raise LoweringError(
            f"{what}: {smem} bytes of shared memory per block "
            f"(GPU {gpu.name} allows {gpu.max_smem_per_block})"
        )
    warps = -(-threads // gpu.warp_size)
    regs_per_warp = -(-regs * gpu.warp_size // gpu.reg_alloc_unit) * gpu.reg_alloc_unit
    unit = gpu.smem_alloc_unit
    smem_alloc = -(-(smem + gpu.smem_reserved_per_block) // unit) * unit
    limits = {
        "threads": gpu.max_warps_per_sm // warps,
        "registers": (gpu.regs_per_sm // regs_per_warp) // warps,
        "shared memory": gpu.smem_per_sm // smem_alloc if smem_alloc else gpu.max_blocks_per_sm,
        "blocks": gpu.max_blocks_per_sm,
    }
    limiter = min(limits, key=lambda k: (limits[k], k != "blocks"))
    blocks = limits[limiter]
    if blocks < 1:
        raise LoweringError(f"{what}: one block does not fit on an SM of {gpu.name} ({limiter})")
    return Occupancy(blocks, limiter, warps, warps * regs_per_warp, smem_alloc)


def work_us(block_flops: float, peak_flops: float, gpu: GPUSpec) -> float:
    """SM-microseconds of compute in ``block_flops``: one SM sustains its share of the
    GPU's peak for the dtype and unit, times ``compute_efficiency``."""
    sm_rate = peak_flops * gpu.compute_efficiency / gpu.sm_count / 1e6  # flop per us
    return block_flops / sm_rate


def demand_of(k: Kernel, gpu: GPUSpec) -> Demand:
    """What one block of ``k`` asks of its SM and of DRAM on ``gpu``."""
    return demand(k.occupancy.warps, k.work_us, k.block_bytes, k.setup_us, gpu, k.latency_us)


def standalone_time_us(k: Kernel, gpu: GPUSpec) -> float:
    """Analytic time of a kernel alone on an idle GPU: full waves at full residency,
    then a tail wave at the residency it has (its blocks may have an SM to themselves).

    The simulator must reproduce this for a lone kernel (plus launch latency); it is the
    cost model's promise, tested, not a shortcut the simulator takes.
    """
    return lone_kernel_us(demand_of(k, gpu), k.grid, k.occupancy.blocks, gpu)


def min_block_us(k: Kernel, gpu: GPUSpec) -> float:
    """The least time one block of ``k`` can take anywhere: alone on an idle SM, with
    the DRAM it asks for. Every block holds its SM resources at least this long."""
    d = demand_of(k, gpu)
    return d.setup_us + (1.0 / d.rate if d.rate < INF else 0.0)


def kernel_floor_us(k: Kernel, gpu: GPUSpec) -> float:
    """The least time ``k`` can take in any company, from its first block's placement to
    its last block's end. Not its standalone time: blocks placed at different instants
    can beat a lone kernel's tail. Three floors, each physics:

    * an SM holds at most ``occupancy.blocks`` blocks of it, each for at least
      :func:`min_block_us`, so some SM runs ``waves`` of them one after another;
    * all its compute, spread over every SM at the whole of each SM's rate;
    * all its traffic at the whole DRAM bandwidth.
    """
    d = demand_of(k, gpu)
    rounds = waves(k.grid, k.occupancy, gpu) * min_block_us(k, gpu)
    compute = d.setup_us + k.grid * d.work_us / gpu.sm_count
    memory = d.setup_us + k.grid * d.bytes / dram_capacity(gpu)
    return max(rounds, compute, memory)


def waves(grid: int, occ: Occupancy, gpu: GPUSpec) -> int:
    """Full rounds of blocks a grid needs on an otherwise idle GPU."""
    return -(-grid // (occ.blocks * gpu.sm_count))


def first_wave_load(grid: int, occ: Occupancy, gpu: GPUSpec) -> int:
    """Blocks the most loaded SM holds in a kernel's first wave on an idle GPU."""
    return min(occ.blocks, -(-grid // gpu.sm_count))


def timed_kernel(
    gpu: GPUSpec,
    name: str,
    op: str,
    grid: int,
    threads: int,
    regs: int,
    smem: int,
    block_us: float,
    block_bytes: float = 0.0,
    fixed: bool = False,
    measured: bool = False,
) -> Kernel:
    """A kernel given by the time of one block, not by its work.

    ``fixed``: the block takes ``block_us`` whatever runs beside it (a spin loop, or a
    recorded duration being replayed): all setup, no work, no traffic. Otherwise the
    block is compute work that takes ``block_us`` in the kernel's first wave alone on the
    GPU (on its most loaded SM), and shares its SM with whatever else is resident.
    """
    occ = occupancy(threads, regs, smem, gpu, what=f"op '{op}'")
    if fixed:
        return Kernel(name, op, grid, threads, regs, smem, 0.0, 0.0, 0.0, block_us, occ,
                      measured)  # fmt: skip
    share = min(warp_cap(occ.warps, gpu), 1.0 / first_wave_load(grid, occ, gpu))
    return Kernel(name, op, grid, threads, regs, smem, 0.0, block_bytes,
                  block_us * share, 0.0, occ, measured)  # fmt: skip


def _fit_duration(k: Kernel, duration_us: float, gpu: GPUSpec) -> Kernel:
    """``k`` with its work (or, if its traffic alone takes longer, its traffic) scaled so
    that it runs ``duration_us`` alone on an idle GPU: a measured time is the truth."""

    def alone(work: float, nbytes: float) -> float:
        d = demand(k.occupancy.warps, work, nbytes, k.setup_us, gpu, k.latency_us)
        return lone_kernel_us(d, k.grid, k.occupancy.blocks, gpu)

    def largest(fits: Any, hi: float) -> float:
        """The largest x in [0, hi] with ``fits(x)`` (monotone), by bisection."""
        lo = 0.0
        for _ in range(100):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        return lo

    nbytes = k.block_bytes
    if alone(0.0, nbytes) > duration_us:  # traffic alone is too slow: scale it down
        fit = largest(lambda b: alone(0.0, b) <= duration_us, nbytes)
        return dataclasses.replace(k, work_us=0.0, block_bytes=fit)
    # a block with this much work takes at least this long
    fit = largest(lambda w: alone(w, nbytes) <= duration_us, duration_us)
    return dataclasses.replace(k, work_us=fit)


# --- lowering -------------------------------------------------------------------------


def spec_occupancy(spec: KernelSpec, gpu: GPUSpec, op: str = "kernel") -> Occupancy:
    """Occupancy of a library kernel on ``gpu``: a library built for this device stages
    less of a tile where shared memory is short."""
    smem = min(spec.smem, gpu.max_smem_per_block)
    return occupancy(spec.threads, spec.regs, smem, gpu, what=f"op '{op}'")


def price(spec: KernelSpec, op: str, gpu: GPUSpec, costs: LibraryCosts | None = None) -> Kernel:
    """The kernel of ``spec`` with the work and latencies ``costs`` (default: the GPU's)
    give its unit, or, for a streaming kernel, the GPU's own efficiency and setup."""
    occ = spec_occupancy(spec, gpu, op)
    smem = min(spec.smem, gpu.max_smem_per_block)
    latency = 0.0
    if spec.unit == STREAM:
        work, setup = work_us(spec.block_flops, spec.peak, gpu), gpu.block_setup_us
    else:
        work, setup, latency = block_costs(spec, costs or library_costs(gpu), gpu)
    return Kernel(spec.name, op, spec.grid, spec.threads, spec.regs, smem,
                  spec.block_flops, spec.block_bytes, work, setup, occ, latency_us=latency)  # fmt: skip


def plan_time_us(kernels: list[Kernel], gpu: GPUSpec) -> float:
    """A library call's kernels back to back on an idle GPU, each paying the device's
    per-kernel start-up: what a benchmark loop measures per call."""
    return math.fsum(standalone_time_us(k, gpu) + gpu.kernel_gap_us for k in kernels)


def cheapest(op: str, candidates: list[Candidate], gpu: GPUSpec) -> list[Kernel]:
    """The kernels of the fastest candidate, as the library's algorithm search picks;
    candidates whose blocks do not fit on an SM are not launchable and are skipped."""
    costs = library_costs(gpu)
    best: list[Kernel] | None = None
    best_t = math.inf
    for cand in candidates:
        try:
            ks = [price(s, op, gpu, costs) for s in cand.kernels]
        except LoweringError:
            continue
        t = plan_time_us(ks, gpu)
        if t < best_t:
            if cand.workspace:
                ks = [dataclasses.replace(k, workspace_bytes=cand.workspace) for k in ks]
            best, best_t = ks, t
    if best is None:
        raise LoweringError(f"op '{op}': no library kernel (GEMM tile) fits on an SM of {gpu.name}")
    return best


def _streaming(
    op_name: str, name: str, elements: int, flops: float, nbytes: float, dtype: str,
    gpu: GPUSpec, **launch: int,
) -> Kernel:  # fmt: skip
    """An op's elementwise-style kernel (:func:`simgpu.libraries.stream_spec`), priced."""
    return price(stream_spec(name, elements, flops, nbytes, dtype, gpu, **launch), op_name, gpu)


def _rowwise(
    op_name: str,
    name: str,
    rows: int,
    row_len: int,
    flops: float,
    nbytes: float,
    dtype: str,
    gpu: GPUSpec,
) -> Kernel:
    """A reduction over rows (softmax, norms, global pooling): one block per row."""
    threads = block_limit(min(1024, max(32, 1 << max(0, (row_len // 4 - 1).bit_length()))), gpu)
    occ = occupancy(threads, 32, threads * 4 // 32 * 4, gpu, what=f"op '{op_name}'")
    bf, bb = flops / rows, nbytes / rows
    peak = gpu.peak_flops(dtype, False)
    smem = threads * 4 // 32 * 4
    return Kernel(
        name,
        op_name,
        rows,
        threads,
        32,
        smem,
        bf,
        bb,
        work_us(bf, peak, gpu),
        gpu.block_setup_us,
        occ,
    )


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def signature(graph: OpGraph, name: str) -> str:
    """The key a measured kernel table uses: everything that determines an op's kernels."""
    op = graph[name]
    return json.dumps(
        [
            op.kind,
            op.dtype,
            [list(s) for s in graph.input_shapes(name)],
            list(op.output_shape),
            {k: op.attrs[k] for k in sorted(op.attrs) if k != "replaces"},
        ],
        separators=(",", ":"),
        default=list,
    )


def _measured(graph: OpGraph, name: str, entries: Any, gpu: GPUSpec) -> list[Kernel]:
    """Kernels from a measured table: launch configs as recorded, work fitted so that each
    kernel alone takes its measured duration (it still shares its SMs when co-running)."""
    st = graph.stats(name)
    out = []
    total_bytes = st.bytes_read + st.bytes_written
    if not isinstance(entries, list):
        raise LoweringError(f"op '{name}': kernel table value must be a list of kernels")

    def whole(e: Any, key: str, default: Any = None) -> int:
        v = e.get(key, default) if default is not None else e[key]
        if not isinstance(v, int) or isinstance(v, bool):  # true or 8.9 is no grid
            raise ValueError(f"{key} must be an integer, got {v!r}")
        return v

    for e in entries:
        try:
            if not isinstance(e, dict):
                raise TypeError("an entry must be an object")
            grid, threads = whole(e, "grid"), whole(e, "threads")
            regs, smem = whole(e, "regs", 32), whole(e, "smem", 0)
            duration = e["duration_us"]
            if not isinstance(duration, int | float) or isinstance(duration, bool):
                raise ValueError(f"duration_us must be a number, got {duration!r}")
            kname = e.get("name", "measured")
            if not isinstance(kname, str):
                raise ValueError(f"name must be a string, got {kname!r}")
        except (KeyError, TypeError, ValueError) as err:
            raise LoweringError(f"op '{name}': bad kernel table entry {e!r} ({err})") from None
        if grid < 1 or not (math.isfinite(duration) and duration > 0):
            raise LoweringError(f"op '{name}': kernel table entry needs grid >= 1, duration > 0")
        check_limit("kernel_blocks", grid, f"op '{name}': a kernel table entry's grid")
        occ = occupancy(threads, regs, smem, gpu, what=f"op '{name}' (measured)")
        k = Kernel(
            kname,
            name,
            grid,
            threads,
            regs,
            smem,
            st.flops / len(entries) / grid,
            total_bytes / len(entries) / grid,
            0.0,
            0.0,
            occ,
            measured=True,
        )
        out.append(_fit_duration(k, duration, gpu))
    return out


def library_candidates(
    graph: OpGraph, name: str, gpu: GPUSpec, library: Library | None = None
) -> list[Candidate] | None:
    """The algorithms a library could run for a conv, transposed conv, linear or matmul
    op (:mod:`simgpu.libraries`); None for every other kind of op. By default convs run
    on cuDNN and GEMMs on cuBLAS, as PyTorch does."""
    op = graph[name]
    st = graph.stats(name)
    ins = graph.input_shapes(name)
    nbytes = float(st.bytes_read + st.bytes_written)
    dt = op.dtype
    epilogue = st.flops - 2 * st.macs
    a = op.attrs
    conv_lib, gemm_lib = library or CUDNN, library or CUBLAS
    if op.kind == "conv":
        n, c, h, w = ins[0]
        _, cout, ho, wo = op.output_shape
        return conv_candidates(n, c, h, w, cout, _pair(a["kernel"]), _pair(a.get("stride", 1)),
                               _pair(a.get("dilation", 1)), int(a.get("groups", 1)), (ho, wo), dt,
                               nbytes, epilogue, st.flops, gpu, conv_lib)  # fmt: skip
    if op.kind == "conv_transpose":
        # cuDNN's dgrad as a GEMM: input pixels x (Cout/g * kh * kw) x Cin/g
        n, c, h, w = ins[0]
        kh, kw = _pair(a["kernel"])
        groups = int(a.get("groups", 1))
        cout_g = op.output_shape[1] // groups
        return gemm_candidates("deconv", groups, n * h * w, cout_g * kh * kw, c // groups, dt,
                               nbytes, epilogue, gpu, tensor_unit(dt, gpu, conv=True),
                               conv_lib)  # fmt: skip
    if op.kind == "linear":
        x = ins[0]
        return gemm_candidates("gemm", 1, numel(x[:-1]), op.output_shape[-1], x[-1], dt, nbytes,
                               epilogue, gpu, tensor_unit(dt, gpu, conv=False),
                               gemm_lib)  # fmt: skip
    if op.kind == "matmul":
        x, _ = ins
        out = op.output_shape
        return gemm_candidates("bmm", numel(out[:-2]), out[-2], out[-1], x[-1], dt, nbytes, 0.0,
                               gpu, tensor_unit(dt, gpu, conv=False), gemm_lib)  # fmt: skip
    return None


def lower_op(graph: OpGraph, name: str, gpu: GPUSpec) -> list[Kernel]:
    """The kernels an op launches on ``gpu``; an empty list for views (no device work)."""
    op = graph[name]
    k = kind_of(op)
    if k.view or (op.kind == "slice" and op.attrs.get("view") is True):
        return []  # a slice marked as a view (of a merged conv's output) moves no bytes
    table = gpu.kernel_table
    if table:
        entries = table.get(signature(graph, name))
        if entries:
            return _measured(graph, name, entries, gpu)
    cands = library_candidates(graph, name, gpu)
    if cands is not None:
        return cheapest(name, cands, gpu)
    st = graph.stats(name)
    ins = graph.input_shapes(name)
    out_n = numel(op.output_shape)
    nbytes = float(st.bytes_read + st.bytes_written)
    dt = op.dtype
    if op.kind == "embedding":
        # a gather: read each (int64) index and its table row, write the row; the rest of
        # the table is never touched, so the op's parameter bytes are not traffic here
        moved = numel(ins[0]) * 8 + 2.0 * out_n * op.dtype_bytes
        return [_streaming(name, "embedding_gather", out_n, 0, moved, dt, gpu)]
    if op.kind in ("softmax", "layernorm"):
        row = op.output_shape[-1]
        return [_rowwise(name, f"{op.kind}_rows", out_n // row, row, st.flops, nbytes, dt, gpu)]
    if op.kind == "global_pool":
        n, c, h, w = ins[0]
        return [_rowwise(name, "global_avg_pool", n * c, h * w, st.flops, nbytes, dt, gpu)]
    if op.kind in ("concat", "slice", "transpose"):
        # a copy: read and write every output element once
        size = op.dtype_bytes
        return [_streaming(name, f"{op.kind}_copy", out_n, 0, 2.0 * out_n * size, dt, gpu)]
    if op.kind == "pool":
        return [
            _streaming(
                name,
                f"{op.attrs.get('pool_type', 'max')}_pool",
                out_n,
                st.flops,
                nbytes,
                dt,
                gpu,
                per_thread=1,
            )
        ]
    # every remaining kind is elementwise
    return [_streaming(name, f"elementwise_{op.kind}", out_n, st.flops, nbytes, dt, gpu)]


class KernelCache:
    """Lowers each distinct op signature once per GPU (models repeat shapes a lot)."""

    def __init__(self, gpu: GPUSpec) -> None:
        self.gpu = gpu
        self._by_sig: dict[str, list[Kernel]] = {}

    def lower(self, graph: OpGraph, name: str) -> list[Kernel]:
        sig = signature(graph, name)
        hit = self._by_sig.get(sig)
        if hit is None:
            hit = self._by_sig[sig] = lower_op(graph, name, self.gpu)
            return hit
        return [k if k.op == name else _renamed(k, name) for k in hit]


def _renamed(k: Kernel, op: str) -> Kernel:
    return dataclasses.replace(k, op=op)


def lower_graph(graph: OpGraph, gpu: GPUSpec) -> dict[str, list[Kernel]]:
    cache = KernelCache(gpu)
    return {name: cache.lower(graph, name) for name in graph.ops}


def sequential_kernel_time_us(graph: OpGraph, gpu: GPUSpec) -> float:
    """Sum of standalone kernel times: a floor for a one-stream run without overheads."""
    return math.fsum(
        standalone_time_us(k, gpu) for ks in lower_graph(graph, gpu).values() for k in ks
    )
