"""What cuBLAS and cuDNN launch for a GEMM or a convolution, and which one they pick.

A library call has several *algorithms*, each a short sequence of kernels:

* **tiled GEMM** on CUDA cores (``simt``) or tensor cores, one tile shape per kernel,
  with tile padding where M or N is not a multiple of the tile;
* **split-K** (cuBLAS GEMMs): when the tiles cannot fill the GPU, K is cut into slices
  that run as more blocks, and a reduction kernel sums the fp32 partials;
* **skinny tiles** for GEMV-like shapes (one dimension of a few rows): memory-bound;
* **implicit-GEMM convolution** (M = N·P·Q, N = K, K = C·R·S per group);
* **Winograd (non-fused)** for 3x3 and 5x5 stride-1 convolutions: input and filter
  transforms, a batch of alpha² GEMMs with far fewer multiply-adds, an output transform;
* **direct** kernels for depthwise-like convolutions.

A :class:`Library` says which of these a library has: cuBLAS, cuDNN (forward), and TVM's
``direct`` conv template (what the AutoTVM logs timed). The library runs the fastest
(cuDNN's ``Find``, cuBLAS's heuristics), so the lowering
prices every candidate with the simulator's own lone-kernel time and keeps the least.
Kernels are described first without costs (:class:`KernelSpec`) so that the public fit
(``calibrate/costfit.py``) can price the same candidates under other parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

from simgpu.costs import LibraryCosts
from simgpu.hardware import GPUSpec

TENSOR_DTYPES = ("fp16", "bf16", "int8")
DTYPE_BYTES = {"fp16": 2, "bf16": 2, "int8": 1}
STREAM = ""  # the unit of memory-bound helper kernels: the GPU's own efficiency


@dataclass(frozen=True)
class Tile:
    name: str
    m: int
    n: int
    threads: int
    regs: int
    smem: int


# Launch configurations after the cuBLAS/cuDNN kernels seen in profiler traces
# (volta_sgemm_128x64, volta_sgemm_32x128, scudnn_128x128, sgemm_32x32_sliced1x4, ...).
SIMT_TILES = (
    Tile("128x128", 128, 128, 256, 128, 32768),
    Tile("128x64", 128, 64, 128, 128, 16384),
    Tile("64x128", 64, 128, 128, 128, 16384),
    Tile("128x32", 128, 32, 256, 57, 16384),
    Tile("32x128", 32, 128, 256, 57, 16384),
    Tile("64x64", 64, 64, 64, 126, 8192),
    Tile("32x32", 32, 32, 128, 86, 16384),
    Tile("128x16", 128, 16, 128, 48, 8192),
    Tile("16x128", 16, 128, 128, 48, 8192),
)
TENSOR_TILES = (
    Tile("256x128", 256, 128, 256, 232, 49152),
    Tile("128x256", 128, 256, 256, 232, 49152),
    Tile("128x128", 128, 128, 256, 168, 32768),
    Tile("128x64", 128, 64, 128, 168, 24576),
    Tile("64x128", 64, 128, 128, 168, 24576),
    Tile("64x64", 64, 64, 128, 128, 16384),
)
# TVM's direct template tiles each shape by search, down to small blocks
TVM_TILES = (
    *SIMT_TILES,
    Tile("64x32", 64, 32, 128, 64, 8192),
    Tile("32x64", 32, 64, 128, 64, 8192),
    Tile("32x16", 32, 16, 64, 48, 4096),
    Tile("16x32", 16, 32, 64, 48, 4096),
    Tile("16x16", 16, 16, 64, 40, 2048),
)
K_STEP = {"simt": 8, "tensor": 32}  # K per main-loop iteration
WINOGRAD_OUTPUT_TILES = {3: (2, 4), 5: (2,)}  # F(m x m, r x r) that cuDNN implements


@dataclass(frozen=True)
class Library:
    """Which algorithms a kernel library has, and the prefix of its cost units."""

    name: str
    split_k: bool
    winograd: bool
    tensor_cores: bool
    unit_prefix: str
    simt_tiles: tuple[Tile, ...]
    simt_k_step: int = 8  # K per main-loop iteration on CUDA cores


# cuBLAS and cuDNN (what PyTorch runs); TVM's ``direct`` conv2d template, whose tuned
# kernels the IOS authors measured: tiles chosen per shape, no cross-block reduction, no
# Winograd, CUDA cores only, and its own fitted main-loop costs
CUBLAS = Library("cublas", split_k=True, winograd=False, tensor_cores=True, unit_prefix="",
                 simt_tiles=SIMT_TILES)  # fmt: skip
# cuDNN's forward convolutions split K where their tiles cannot fill the GPU, as
# cuBLAS's GEMMs do. The public kernel data fit either way (batch 4 and up is not grid-
# starved); batch 1 decides. Without split-K, ResNet-50 under Nimble on the V100
# simulates at 3.62 ms against the 1.888 ms Nimble measured, and the eager-PyTorch host
# costs fitted to Nimble's speedups come out 1.9x the Kineto trace's; with it, 1.72 ms,
# and the host fit agrees with the trace (README, "Runtimes and their host costs")
CUDNN = Library("cudnn", split_k=True, winograd=True, tensor_cores=True, unit_prefix="",
                simt_tiles=SIMT_TILES)  # fmt: skip
TVM_DIRECT = Library("tvm-direct", split_k=False, winograd=False, tensor_cores=False,
                     unit_prefix="tvm.", simt_tiles=TVM_TILES, simt_k_step=32)  # fmt: skip
LIBRARIES = {lib.name: lib for lib in (CUBLAS, CUDNN, TVM_DIRECT)}


@dataclass(frozen=True)
class KernelSpec:
    """A kernel launch before it is priced: its configuration and the work of a block."""

    name: str
    grid: int
    threads: int
    regs: int
    smem: int
    block_flops: float
    block_bytes: float  # DRAM traffic per block
    unit: str  # library cost unit ("simt_fp32", "tensor_fp16", ...) or STREAM
    peak: float  # FLOP/s of that unit on this GPU
    iters: int  # main-loop iterations of one block (0 for streaming kernels)


@dataclass(frozen=True)
class Candidate:
    algorithm: str
    kernels: tuple[KernelSpec, ...]
    workspace: int = 0  # bytes of scratch the call holds (cuDNN's workspace size)


def dtype_bytes(dtype: str) -> int:
    return DTYPE_BYTES.get(dtype, 8 if dtype == "fp64" else 4)


def block_limit(threads: int, gpu: GPUSpec) -> int:
    """Threads per block, capped at what one block may have and one SM can hold (in
    whole warps): a kernel is launched with a configuration the device can run."""
    cap = min(gpu.max_threads_per_block, gpu.max_warps_per_sm * gpu.warp_size)
    return threads if threads <= cap else max(gpu.warp_size, cap // gpu.warp_size * gpu.warp_size)


def stream_spec(
    name: str,
    elements: int,
    flops: float,
    nbytes: float,
    dtype: str,
    gpu: GPUSpec,
    threads: int = 128,
    per_thread: int = 4,
    regs: int = 32,
) -> KernelSpec:
    """An elementwise-style kernel: each thread handles a few elements, no shared memory."""
    threads = block_limit(threads, gpu)
    grid = max(1, -(-elements // (threads * per_thread)))
    peak = gpu.peak_flops(dtype, False)
    return KernelSpec(name, grid, threads, regs, 0, flops / grid, nbytes / grid, STREAM, peak, 0)


def _splits(grid: int, k: int, step: int, gpu: GPUSpec) -> list[int]:
    """Split-K factors worth trying: 1, then doublings while the previous one still
    left SMs without a block and each slice keeps a few iterations."""
    out = [1]
    s = 2
    while grid * (s // 2) < gpu.sm_count and -(-k // s) >= 2 * step:
        out.append(s)
        s *= 2
    return out


def tensor_unit(dtype: str, gpu: GPUSpec, conv: bool) -> bool:
    """Whether the library can use tensor cores for this dtype on this GPU. PyTorch lets
    cuDNN convolutions use TF32 (``torch.backends.cudnn.allow_tf32``); fp32 matmuls stay
    on CUDA cores (``torch.backends.cuda.matmul.allow_tf32`` is False)."""
    if dtype == "fp32":
        return conv and "tf32_tensor" in gpu.peak_tflops
    return dtype in TENSOR_DTYPES and f"{dtype}_tensor" in gpu.peak_tflops


def gemm_candidates(
    kind: str,
    batch: int,
    m: int,
    n: int,
    k: int,
    dtype: str,
    io_bytes: float,
    extra_flops: float,
    gpu: GPUSpec,
    tensor: bool,
    library: Library = CUDNN,
) -> list[Candidate]:
    """Every tile x split-K of a (batched) GEMM C[m,n] = A[m,k] B[k,n] on the units it
    may use. ``io_bytes``: its unique DRAM traffic; ``extra_flops``: its epilogue."""
    size = dtype_bytes(dtype)
    tensor = tensor and library.tensor_cores
    units = [("simt", library.simt_tiles)] + ([("tensor", TENSOR_TILES)] if tensor else [])
    out = []
    for unit, tiles in units:
        step = library.simt_k_step if unit == "simt" else K_STEP[unit]
        key = f"{library.unit_prefix}{unit}_{dtype}"
        peak = gpu.peak_flops(dtype, unit == "tensor")
        for t in tiles:
            grid1 = batch * -(-m // t.m) * -(-n // t.n)
            for s in _splits(grid1, k, step, gpu) if library.split_k else (1,):
                kk = -(-k // s)
                grid = grid1 * s
                partials = 4.0 * batch * m * n * s if s > 1 else 0.0
                name = f"{unit}_{kind}_{t.name}" + (f"_splitk{s}" if s > 1 else "")
                main = KernelSpec(
                    name,
                    grid,
                    t.threads,
                    t.regs,
                    t.smem,
                    2.0 * t.m * t.n * kk + extra_flops / grid,
                    (io_bytes + partials) / grid,
                    key,
                    peak,
                    -(-kk // step),
                )
                ks: tuple[KernelSpec, ...] = (main,)
                if s > 1:
                    outs = batch * m * n
                    ks += (stream_spec("splitk_reduce", outs, float(outs * s), partials + outs * size,
                                       dtype, gpu),)  # fmt: skip
                out.append(Candidate(name, ks, int(partials)))
    return out


def conv_candidates(
    n: int,
    c: int,
    h: int,
    w: int,
    cout: int,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
    out_hw: tuple[int, int],
    dtype: str,
    io_bytes: float,
    epilogue: float,
    flops: float,
    gpu: GPUSpec,
    library: Library = CUDNN,
) -> list[Candidate]:
    """A library's forward algorithms for one convolution (NCHW)."""
    kh, kw = kernel
    ho, wo = out_hw
    cin_g, cout_g = c // groups, cout // groups
    size = dtype_bytes(dtype)
    if groups > 1 and cin_g <= 4:  # depthwise-like: a direct, memory-bound kernel
        spec = stream_spec("direct_conv_depthwise", n * cout * ho * wo, flops, io_bytes, dtype,
                           gpu, threads=256, per_thread=1, regs=40)  # fmt: skip
        return [Candidate("direct", (spec,))]
    tensor = tensor_unit(dtype, gpu, conv=True) and cin_g % 8 == 0 and cout_g % 8 == 0
    tensor = tensor and library.tensor_cores
    in_bytes, out_bytes = n * c * h * w * size, n * cout * ho * wo * size
    implicit = gemm_candidates("conv", groups, n * ho * wo, cout_g, cin_g * kh * kw, dtype,
                               io_bytes, epilogue, gpu, tensor, library)  # fmt: skip
    out = list(implicit)
    if library.winograd and groups == 1 and kh == kw and stride == (1, 1) and dilation == (1, 1):
        for mt in WINOGRAD_OUTPUT_TILES.get(kh, ()):
            alpha = mt + kh - 1
            a2 = alpha * alpha
            tiles = n * -(-ho // mt) * -(-wo // mt)
            data = stream_spec(f"winograd{mt}x{mt}_data", tiles * c, 4.0 * alpha**3 * tiles * c,
                               in_bytes + a2 * tiles * c * size, dtype, gpu)  # fmt: skip
            filt = stream_spec(f"winograd{mt}x{mt}_filter", cout * c, 4.0 * alpha**3 * cout * c,
                               (kh * kw + a2) * cout * c * size, dtype, gpu)  # fmt: skip
            outp = stream_spec(f"winograd{mt}x{mt}_output", tiles * cout,
                               4.0 * alpha**3 * tiles * cout + epilogue,
                               a2 * tiles * cout * size + out_bytes, dtype, gpu)  # fmt: skip
            io = a2 * (tiles * c + c * cout + tiles * cout) * size
            # cuDNN's non-fused Winograd multiplies on CUDA cores
            gemms = gemm_candidates(f"winograd{mt}x{mt}_gemm", a2, tiles, cout, c, dtype, io,
                                    0.0, gpu, False, library)  # fmt: skip
            for g in gemms:  # workspace: the transformed input, filter and output
                out.append(Candidate(f"winograd{mt}x{mt}", (data, filt, *g.kernels, outp),
                                     int(io) + g.workspace))  # fmt: skip
    return out


def block_costs(spec: KernelSpec, costs: LibraryCosts, gpu: GPUSpec) -> tuple[float, float, float]:
    """(work_us, setup_us, latency_us) of one block of a library kernel under ``costs``:
    its multiply-adds at the unit's sustained rate, its prologue and epilogue, and the
    latency chain of its main loop (a floor on its progress, see
    :func:`simgpu.sharing.demand`)."""
    u = costs.unit(spec.unit)
    sm_rate = spec.peak * u.efficiency / gpu.sm_count / 1e6  # flop per us
    return (spec.block_flops / sm_rate, u.block_cycles / gpu.clock_mhz,
            u.iter_cycles * spec.iters / gpu.clock_mhz)  # fmt: skip
