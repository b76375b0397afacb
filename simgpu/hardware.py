"""GPU and machine specifications.

Presets carry datasheet figures (SM counts, per-SM limits, clocks, peak rates, memory
bandwidth). Behavioural costs (launch, events, efficiencies) start from published
measurements and are what calibration overrides: a JSON file names a ``base`` preset
and any fields to change, or defines a GPU outright.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from simgpu.errors import SpecError
from simgpu.graph import read_json
from simgpu.limits import check as check_limit
from simgpu.ops import DTYPE_BYTES

KB = 1024


@dataclass(frozen=True)
class GPUSpec:
    """One GPU. Sizes in bytes, rates in TFLOP/s and GB/s, times in microseconds."""

    name: str
    sm_count: int
    clock_mhz: float
    compute_capability: str
    # per-SM limits (CUDA occupancy rules)
    max_threads_per_sm: int
    max_blocks_per_sm: int
    regs_per_sm: int
    smem_per_sm: int
    max_smem_per_block: int
    max_threads_per_block: int = 1024
    max_regs_per_thread: int = 255
    warp_size: int = 32
    reg_alloc_unit: int = 256  # registers are allocated per warp in units of this many
    smem_alloc_unit: int = 256
    smem_reserved_per_block: int = 0  # CUDA reserves 1 KiB per block from sm_80 on
    # peak rates, TFLOP/s, keyed "<dtype>" (CUDA cores) or "<dtype>_tensor"
    peak_tflops: Mapping[str, float] = field(default_factory=dict)
    dram_gbps: float = 900.0
    memory_gb: float = 16.0
    l2_mb: float = 6.0
    # streams map onto this many hardware queues (CUDA_DEVICE_MAX_CONNECTIONS)
    hw_queues: int = 8
    # DMA copy engines (deviceQuery's asyncEngineCount): peer copies run on these, beside
    # kernels; more copies than engines queue for one
    copy_engines: int = 2
    # host-side API costs (CPU time of the issuing thread)
    launch_api_us: float = 5.0  # cudaLaunchKernel
    framework_dispatch_us: float = 4.0  # eager framework overhead per op kernel
    event_record_api_us: float = 1.5
    event_wait_api_us: float = 1.0
    sync_api_us: float = 2.0  # return from a synchronize once the GPU is idle
    graph_launch_api_us: float = 8.0  # cudaGraphLaunch of a whole program
    # device-side latencies
    launch_latency_us: float = 3.0  # host issue -> command visible to the GPU
    kernel_gap_us: float = 1.0  # per-kernel start-up on the device in eager mode
    graph_node_us: float = 0.5  # per-kernel start-up inside a CUDA Graph
    event_latency_us: float = 0.5  # a recorded event releasing a waiting stream
    block_setup_us: float = 0.2  # fixed cost of every block (scheduling, prologue)
    # efficiency of the analytic cost model (calibrated)
    compute_efficiency: float = 0.75  # fraction of peak a saturated SM sustains
    dram_efficiency: float = 0.85  # fraction of peak DRAM bandwidth achievable
    warps_to_saturate: int = 8  # resident warps an SM needs to reach its peak rate
    dram_saturation_fraction: float = 0.5  # fraction of SMs that can saturate DRAM
    # measured kernels by op signature (simgpu.kernels.signature) -> list of
    # {"name", "grid", "threads", "regs", "smem", "duration_us"}; filled by calibration
    kernel_table: Mapping[str, Any] = field(default_factory=dict, repr=False)
    # fitted costs of library kernels ({"units": {...}}, see simgpu.costs); empty: the
    # committed fit of this GPU's architecture
    library_costs: Mapping[str, Any] = field(default_factory=dict, repr=False)
    # the caching allocator's sizes and per-op output/workspace bytes (simgpu.allocator:
    # check_memory_json); empty: PyTorch's defaults and sizes from shapes and algorithms
    memory: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise SpecError(f"a GPU's name must be a non-empty string, got {self.name!r}")
        cc = self.compute_capability
        if not isinstance(cc, str) or not re.fullmatch(r"\d{1,2}\.\d{1,2}", cc):
            raise SpecError(
                f"GPU '{self.name}': compute_capability must look like \"8.0\", got {cc!r}"
            )
        if not isinstance(self.peak_tflops, Mapping):
            raise SpecError(f"GPU '{self.name}': peak_tflops must be an object")
        object.__setattr__(self, "peak_tflops", dict(self.peak_tflops))
        if not isinstance(self.kernel_table, Mapping):
            raise SpecError(f"GPU '{self.name}': kernel_table must be an object")
        object.__setattr__(self, "kernel_table", dict(self.kernel_table))
        if not isinstance(self.library_costs, Mapping):
            raise SpecError(f"GPU '{self.name}': library_costs must be an object")
        object.__setattr__(self, "library_costs", dict(self.library_costs))
        if not isinstance(self.memory, Mapping):
            raise SpecError(f"GPU '{self.name}': memory must be an object")
        object.__setattr__(self, "memory", dict(self.memory))
        if self.memory:
            from simgpu.allocator import check_memory_json

            check_memory_json(self.memory, f"GPU '{self.name}': memory")
        if self.library_costs:  # checked here, so a bad file fails when it is read
            from simgpu.costs import calls_from_json, units_from_json

            where = f"GPU '{self.name}': library_costs"
            unknown = set(self.library_costs) - {"units", "calls_us"}
            if unknown:
                raise SpecError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
            units_from_json(self.library_costs.get("units"), where)
            calls_from_json(self.library_costs.get("calls_us"), where)
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("name", "compute_capability", "peak_tflops", "kernel_table",
                          "library_costs", "memory"):  # fmt: skip
                continue
            if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
                raise SpecError(f"GPU '{self.name}': field {f.name} must be a number, got {v!r}")
            if v < 0 or (v == 0 and f.name not in _MAY_BE_ZERO):
                raise SpecError(f"GPU '{self.name}': field {f.name} must be positive, got {v!r}")
            if f.type == "int":
                if not float(v).is_integer():
                    raise SpecError(
                        f"GPU '{self.name}': field {f.name} must be an integer, got {v!r}"
                    )
                object.__setattr__(self, f.name, int(v))
            hi = _UPPER.get(f.name, _TIME_UPPER if f.name.endswith("_us") else None)
            if hi is not None and v > hi:
                raise SpecError(
                    f"GPU '{self.name}': field {f.name} must be at most {hi:g}, got {v!r}"
                )
        if not self.peak_tflops or any(
            not isinstance(v, int | float)
            or isinstance(v, bool)
            or not math.isfinite(v)
            or v <= 0
            or v > 1e6
            for v in self.peak_tflops.values()
        ):
            raise SpecError(f"GPU '{self.name}': peak_tflops needs positive rates, e.g. fp32")
        if "fp32" not in self.peak_tflops:
            raise SpecError(f"GPU '{self.name}': peak_tflops must include fp32")
        rate_keys = {*DTYPE_BYTES, *(f"{d}_tensor" for d in DTYPE_BYTES)}
        unknown = sorted(k for k in self.peak_tflops if k not in rate_keys)
        if unknown:  # a misspelt "fp16_tensr" would silently mean no tensor cores
            raise SpecError(
                f"GPU '{self.name}': peak_tflops has unknown precision(s) {', '.join(map(repr, unknown))} "
                f"(known: a dtype ({', '.join(DTYPE_BYTES)}), optionally with _tensor)"
            )
        if not 1 <= self.hw_queues <= 32:
            raise SpecError(f"GPU '{self.name}': hw_queues must be 1..32, got {self.hw_queues}")
        if self.max_smem_per_block > self.smem_per_sm:
            raise SpecError(f"GPU '{self.name}': max_smem_per_block exceeds smem_per_sm")

    # -- derived figures ----------------------------------------------------------------

    @property
    def max_warps_per_sm(self) -> int:
        return self.max_threads_per_sm // self.warp_size

    def peak_flops(self, dtype: str, tensor: bool) -> float:
        """Peak FLOP/s for a dtype, on tensor cores when asked and present."""
        rates = self.peak_tflops
        if tensor:
            for key in (f"{dtype}_tensor", "tf32_tensor" if dtype == "fp32" else ""):
                if key in rates:
                    return rates[key] * 1e12
        return rates.get(dtype, rates["fp32"]) * 1e12

    @property
    def dram_bytes_per_us(self) -> float:
        return self.dram_gbps * 1e3  # GB/s == kB/ms == 1e3 bytes/us

    def replace(self, **changes: Any) -> GPUSpec:
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise SpecError(f"GPU '{self.name}': unknown field(s) {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["peak_tflops"] = dict(self.peak_tflops)
        d["kernel_table"] = dict(self.kernel_table)
        d["library_costs"] = dict(self.library_costs)
        d["memory"] = dict(self.memory)
        return d


# Upper limits: far above any GPU, low enough that no simulation overflows to inf or
# allocates per SM without bound (a GPU file is user input). Efficiencies are fractions.
_TIME_UPPER = 1e6  # every host or device cost, in microseconds: one second
_UPPER: dict[str, float] = {
    "sm_count": 4096,
    "clock_mhz": 1e5,
    "max_threads_per_sm": 65536,
    "max_blocks_per_sm": 1024,
    "regs_per_sm": 2**24,
    "smem_per_sm": 2**30,
    "max_smem_per_block": 2**30,
    "max_threads_per_block": 65536,
    "max_regs_per_thread": 65536,
    "warp_size": 1024,
    "reg_alloc_unit": 2**20,
    "smem_alloc_unit": 2**20,
    "smem_reserved_per_block": 2**20,
    "dram_gbps": 1e6,
    "memory_gb": 1e6,
    "l2_mb": 1e6,
    "copy_engines": 64,
    "compute_efficiency": 1.0,
    "dram_efficiency": 1.0,
    "dram_saturation_fraction": 1.0,
    "warps_to_saturate": 4096,
}

_MAY_BE_ZERO = {
    "smem_reserved_per_block",
    "framework_dispatch_us",
    "launch_api_us",
    "event_record_api_us",
    "event_wait_api_us",
    "sync_api_us",
    "graph_launch_api_us",
    "launch_latency_us",
    "kernel_gap_us",
    "graph_node_us",
    "event_latency_us",
    "block_setup_us",
}


def _volta_like(**kw: Any) -> dict[str, Any]:
    base = dict(max_threads_per_sm=2048, max_blocks_per_sm=32, regs_per_sm=65536)
    base.update(kw)
    return base


# Per-SM limits by compute capability: the CUDA C++ Programming Guide's "Technical
# Specifications per Compute Capability" table (the occupancy calculator's figures).
# Shared memory per block is the opt-in maximum; from sm_80 on CUDA reserves 1 KiB of
# shared memory per block. The presets above spell these out; those below take them
# from here, and a test checks that every preset agrees with this table.
_SM_LIMITS: dict[str, dict[str, int]] = {
    "3.7": dict(max_threads_per_sm=2048, max_blocks_per_sm=16, regs_per_sm=131072,
                smem_per_sm=112 * KB, max_smem_per_block=48 * KB, smem_reserved_per_block=0),
    "6.0": dict(max_threads_per_sm=2048, max_blocks_per_sm=32, regs_per_sm=65536,
                smem_per_sm=64 * KB, max_smem_per_block=48 * KB, smem_reserved_per_block=0),
    "6.1": dict(max_threads_per_sm=2048, max_blocks_per_sm=32, regs_per_sm=65536,
                smem_per_sm=96 * KB, max_smem_per_block=48 * KB, smem_reserved_per_block=0),
    "7.0": dict(max_threads_per_sm=2048, max_blocks_per_sm=32, regs_per_sm=65536,
                smem_per_sm=96 * KB, max_smem_per_block=96 * KB, smem_reserved_per_block=0),
    "7.5": dict(max_threads_per_sm=1024, max_blocks_per_sm=16, regs_per_sm=65536,
                smem_per_sm=64 * KB, max_smem_per_block=64 * KB, smem_reserved_per_block=0),
    "8.0": dict(max_threads_per_sm=2048, max_blocks_per_sm=32, regs_per_sm=65536,
                smem_per_sm=164 * KB, max_smem_per_block=163 * KB, smem_reserved_per_block=KB),
    "8.6": dict(max_threads_per_sm=1536, max_blocks_per_sm=16, regs_per_sm=65536,
                smem_per_sm=100 * KB, max_smem_per_block=99 * KB, smem_reserved_per_block=KB),
    "8.9": dict(max_threads_per_sm=1536, max_blocks_per_sm=24, regs_per_sm=65536,
                smem_per_sm=100 * KB, max_smem_per_block=99 * KB, smem_reserved_per_block=KB),
    "9.0": dict(max_threads_per_sm=2048, max_blocks_per_sm=32, regs_per_sm=65536,
                smem_per_sm=228 * KB, max_smem_per_block=227 * KB, smem_reserved_per_block=KB),
}  # fmt: skip


def _cc(compute_capability: str) -> dict[str, Any]:
    """The compute capability and its per-SM limits, as GPUSpec keywords."""
    return {"compute_capability": compute_capability, **_SM_LIMITS[compute_capability]}


# Datasheet figures (NVIDIA product briefs and CUDA occupancy tables). Dense tensor rates.
PRESETS: dict[str, GPUSpec] = {
    s.name: s
    for s in (
        GPUSpec(
            name="v100-sxm2",
            sm_count=80,
            clock_mhz=1530,
            compute_capability="7.0",
            **_volta_like(smem_per_sm=96 * KB, max_smem_per_block=96 * KB),
            peak_tflops={"fp64": 7.8, "fp32": 15.7, "fp16": 31.4, "fp16_tensor": 125.0},
            dram_gbps=900,
            memory_gb=32,
            l2_mb=6,
            copy_engines=6,
        ),
        GPUSpec(
            name="a100-sxm4-40gb",
            sm_count=108,
            clock_mhz=1410,
            compute_capability="8.0",
            **_volta_like(smem_per_sm=164 * KB, max_smem_per_block=163 * KB),
            smem_reserved_per_block=1 * KB,
            peak_tflops={
                "fp64": 9.7,
                "fp32": 19.5,
                "fp16": 78.0,
                "bf16": 39.0,
                "tf32_tensor": 156.0,
                "fp16_tensor": 312.0,
                "bf16_tensor": 312.0,
                "int8_tensor": 624.0,
            },
            dram_gbps=1555,
            memory_gb=40,
            l2_mb=40,
            copy_engines=3,
        ),
        GPUSpec(
            name="h100-sxm",
            sm_count=132,
            clock_mhz=1980,
            compute_capability="9.0",
            **_volta_like(smem_per_sm=228 * KB, max_smem_per_block=227 * KB),
            smem_reserved_per_block=1 * KB,
            peak_tflops={
                "fp64": 34.0,
                "fp32": 67.0,
                "fp16": 133.8,
                "bf16": 133.8,
                "tf32_tensor": 494.7,
                "fp16_tensor": 989.4,
                "bf16_tensor": 989.4,
                "int8_tensor": 1978.9,
            },
            dram_gbps=3350,
            memory_gb=80,
            l2_mb=50,
            copy_engines=3,
        ),
        GPUSpec(
            name="t4",
            sm_count=40,
            clock_mhz=1590,
            compute_capability="7.5",
            max_threads_per_sm=1024,
            max_blocks_per_sm=16,
            regs_per_sm=65536,
            smem_per_sm=64 * KB,
            max_smem_per_block=64 * KB,
            peak_tflops={
                "fp64": 0.25,
                "fp32": 8.1,
                "fp16": 16.2,
                "fp16_tensor": 65.0,
                "int8_tensor": 130.0,
            },
            dram_gbps=320,
            memory_gb=16,
            l2_mb=4,
            copy_engines=3,
        ),
        GPUSpec(
            name="rtx3080",
            sm_count=68,
            clock_mhz=1710,
            compute_capability="8.6",
            max_threads_per_sm=1536,
            max_blocks_per_sm=16,
            regs_per_sm=65536,
            smem_per_sm=100 * KB,
            max_smem_per_block=99 * KB,
            smem_reserved_per_block=1 * KB,
            peak_tflops={
                "fp64": 0.47,
                "fp32": 29.8,
                "fp16": 29.8,
                "tf32_tensor": 29.8,
                "fp16_tensor": 59.5,
                "bf16_tensor": 59.5,
                "int8_tensor": 238.0,
            },
            dram_gbps=760,
            memory_gb=10,
            l2_mb=5,
        ),
        GPUSpec(
            # one GK210 die of the dual-GPU K80 board (the board shows as two devices)
            name="k80",
            sm_count=13,
            clock_mhz=875,
            compute_capability="3.7",
            max_threads_per_sm=2048,
            max_blocks_per_sm=16,
            regs_per_sm=131072,
            smem_per_sm=112 * KB,
            max_smem_per_block=48 * KB,
            peak_tflops={"fp64": 1.46, "fp32": 4.37},
            dram_gbps=240,
            memory_gb=12,
            l2_mb=1.5,
            launch_api_us=7.0,
            framework_dispatch_us=6.0,
        ),
    )
}

# Same silicon, different memory: derived so the shared figures live in one place.
PRESETS["a100-sxm4-80gb"] = dataclasses.replace(
    PRESETS["a100-sxm4-40gb"], name="a100-sxm4-80gb", dram_gbps=2039, memory_gb=80
)
PRESETS["h200-sxm"] = dataclasses.replace(
    PRESETS["h100-sxm"], name="h200-sxm", dram_gbps=4800, memory_gb=141
)

# GPUs that public benchmarks (DeepBench, MLPerf, framework and paper measurements) ran
# on. Datasheet figures as above: boost clock, dense tensor rates (the sparse figures
# datasheets print beside them are twice these). Rates NVIDIA does not print are derived
# from the architecture whitepaper's per-SM rates: FP16 on CUDA cores is 2x FP32 on
# sm_60/7.x, 1/64 of FP32 on sm_61 (GTX 10xx), equal to FP32 on GA10x/AD10x; FP64 is
# 1/32 of FP32 on GP10x/TU10x GeForce and 1/64 on GA10x/AD10x. GeForce tensor cores
# (Turing, Ampere, Ada) run FP16/BF16 with FP32 accumulate at half their FP16-accumulate
# rate: fp16_tensor/bf16_tensor below are the FP32-accumulate figures, which cuBLAS and
# cuDNN (PyTorch's default) use; data-centre parts (T4, A10, A40, L4, L40S) run both at
# full rate. copy_engines is the asyncEngineCount deviceQuery reports on the family: 2 on
# Pascal and on GeForce Ampere/Ada, 3 on Turing, GA100 and GH100 (as the T4, A100 and
# H100 presets above); A10, A30, A40, L4 and L40S take their family's value, unconfirmed.
PRESETS.update(
    (s.name, s)
    for s in (
        GPUSpec(
            # NVIDIA Tesla P100 datasheet (P100 for NVLink-optimized servers); Pascal
            # GP100 whitepaper: 56 SMs, 1480 MHz boost, 4 MB L2, FP16 = 2x FP32
            name="p100-sxm2",
            sm_count=56,
            clock_mhz=1480,
            **_cc("6.0"),
            peak_tflops={"fp64": 5.3, "fp32": 10.6, "fp16": 21.2},
            dram_gbps=732,
            memory_gb=16,
            l2_mb=4,
            copy_engines=2,
        ),
        GPUSpec(
            # NVIDIA Tesla P100 datasheet (P100 for PCIe-based servers, 16 GB); Pascal
            # GP100 whitepaper: 56 SMs, 1303 MHz boost
            name="p100-pcie-16gb",
            sm_count=56,
            clock_mhz=1303,
            **_cc("6.0"),
            peak_tflops={"fp64": 4.7, "fp32": 9.3, "fp16": 18.7},
            dram_gbps=732,
            memory_gb=16,
            l2_mb=4,
            copy_engines=2,
        ),
        GPUSpec(
            # NVIDIA GeForce GTX 1060 6GB specifications (1280 CUDA cores, 1708 MHz boost,
            # 8 Gbps GDDR5 on 192 bits); Pascal GP104 (GTX 1080) whitepaper for the
            # sm_61 rates (FP16 1/64, FP64 1/32 of FP32); GP106: 10 SMs, 1.5 MB L2
            name="gtx1060-6gb",
            sm_count=10,
            clock_mhz=1708,
            **_cc("6.1"),
            peak_tflops={"fp64": 0.137, "fp32": 4.37, "fp16": 0.068},
            dram_gbps=192,
            memory_gb=6,
            l2_mb=1.5,
            copy_engines=2,
        ),
        GPUSpec(
            # NVIDIA GeForce GTX 1080 Ti specifications (3584 CUDA cores, 1582 MHz boost,
            # 11 Gbps GDDR5X on 352 bits, 484 GB/s); Pascal GP104 whitepaper for the sm_61
            # rates; GP102 with 28 SMs and 2.75 MB L2
            name="gtx1080ti",
            sm_count=28,
            clock_mhz=1582,
            **_cc("6.1"),
            peak_tflops={"fp64": 0.354, "fp32": 11.34, "fp16": 0.177},
            dram_gbps=484,
            memory_gb=11,
            l2_mb=2.75,
            copy_engines=2,
        ),
        GPUSpec(
            # NVIDIA TITAN Xp specifications (3840 CUDA cores, 1582 MHz boost, 11.4 Gbps
            # GDDR5X on 384 bits, 547.7 GB/s); full GP102: 30 SMs, 3 MB L2; sm_61 rates
            name="titanxp",
            sm_count=30,
            clock_mhz=1582,
            **_cc("6.1"),
            peak_tflops={"fp64": 0.380, "fp32": 12.15, "fp16": 0.190},
            dram_gbps=547.7,
            memory_gb=12,
            l2_mb=3,
            copy_engines=2,
        ),
        GPUSpec(
            # NVIDIA Turing architecture whitepaper, RTX 2080 reference (Founders
            # Edition: 1800 MHz, 5% higher rates): 46 SMs, 1710 MHz boost, 4 MB L2,
            # 14 Gbps GDDR6 on 256 bits; FP16 tensor 80.5 with FP16 accumulate, 40.3
            # with FP32 accumulate (GeForce half rate); INT8 161.1 TOPS
            name="rtx2080",
            sm_count=46,
            clock_mhz=1710,
            **_cc("7.5"),
            peak_tflops={
                "fp64": 0.31,
                "fp32": 10.07,
                "fp16": 20.1,
                "fp16_tensor": 40.3,
                "int8_tensor": 161.1,
            },
            dram_gbps=448,
            memory_gb=8,
            l2_mb=4,
            copy_engines=3,
        ),
        GPUSpec(
            # NVIDIA GeForce RTX 2080 SUPER specifications (3072 CUDA cores, 1815 MHz
            # boost, 15.5 Gbps GDDR6 on 256 bits, 496 GB/s); TU104 with 48 SMs, 4 MB L2;
            # tensor rates from the Turing whitepaper's per-SM rates (FP32 accumulate at
            # half rate on GeForce)
            name="rtx2080super",
            sm_count=48,
            clock_mhz=1815,
            **_cc("7.5"),
            peak_tflops={
                "fp64": 0.35,
                "fp32": 11.15,
                "fp16": 22.3,
                "fp16_tensor": 44.6,
                "int8_tensor": 178.4,
            },
            dram_gbps=496,
            memory_gb=8,
            l2_mb=4,
            copy_engines=3,
        ),
        GPUSpec(
            # NVIDIA Turing architecture whitepaper, RTX 2080 Ti reference (Founders
            # Edition: 1635 MHz, 6% higher rates): 68 SMs, 1545 MHz boost, 5.5 MB L2,
            # 14 Gbps GDDR6 on 352 bits; FP16 tensor 107.6 with FP16 accumulate, 53.8
            # with FP32 accumulate; INT8 215.2 TOPS
            name="rtx2080ti",
            sm_count=68,
            clock_mhz=1545,
            **_cc("7.5"),
            peak_tflops={
                "fp64": 0.42,
                "fp32": 13.45,
                "fp16": 26.9,
                "fp16_tensor": 53.8,
                "int8_tensor": 215.2,
            },
            dram_gbps=616,
            memory_gb=11,
            l2_mb=5.5,
            copy_engines=3,
        ),
        GPUSpec(
            # NVIDIA Ampere GA102 GPU architecture whitepaper, RTX 3090: 82 SMs, 1695 MHz
            # boost, 6 MB L2, 19.5 Gbps GDDR6X on 384 bits; FP16/BF16 tensor 71 with FP32
            # accumulate (142 with FP16 accumulate), TF32 35.6, INT8 284 TOPS
            name="rtx3090",
            sm_count=82,
            clock_mhz=1695,
            **_cc("8.6"),
            peak_tflops={
                "fp64": 0.56,
                "fp32": 35.6,
                "fp16": 35.6,
                "tf32_tensor": 35.6,
                "fp16_tensor": 71.0,
                "bf16_tensor": 71.0,
                "int8_tensor": 284.0,
            },
            dram_gbps=936,
            memory_gb=24,
            l2_mb=6,
            copy_engines=2,
        ),
        GPUSpec(
            # NVIDIA Ada GPU architecture whitepaper, RTX 4090: 128 SMs, 2520 MHz boost,
            # 72 MB L2, 21 Gbps GDDR6X on 384 bits; FP16/BF16 tensor 165.2 with FP32
            # accumulate (330.3 with FP16 accumulate), TF32 82.6, INT8 660.6 TOPS
            name="rtx4090",
            sm_count=128,
            clock_mhz=2520,
            **_cc("8.9"),
            peak_tflops={
                "fp64": 1.29,
                "fp32": 82.6,
                "fp16": 82.6,
                "tf32_tensor": 82.6,
                "fp16_tensor": 165.2,
                "bf16_tensor": 165.2,
                "int8_tensor": 660.6,
            },
            dram_gbps=1008,
            memory_gb=24,
            l2_mb=72,
            copy_engines=2,
        ),
        GPUSpec(
            # NVIDIA A10 Tensor Core GPU datasheet; GA102 whitepaper: 72 SMs, 1695 MHz
            # boost, 6 MB L2. copy_engines assumed as GeForce GA102 (no report known)
            name="a10",
            sm_count=72,
            clock_mhz=1695,
            **_cc("8.6"),
            peak_tflops={
                "fp64": 0.49,
                "fp32": 31.2,
                "fp16": 31.2,
                "tf32_tensor": 62.5,
                "fp16_tensor": 125.0,
                "bf16_tensor": 125.0,
                "int8_tensor": 250.0,
            },
            dram_gbps=600,
            memory_gb=24,
            l2_mb=6,
            copy_engines=2,
        ),
        GPUSpec(
            # NVIDIA A30 Tensor Core GPU datasheet; NVIDIA A100 Tensor Core GPU
            # architecture whitepaper for GA100's CUDA-core FP16 (4x) and BF16 (2x FP32):
            # 56 SMs, 1440 MHz boost, 24 MB L2. copy_engines assumed as A100 (same die)
            name="a30",
            sm_count=56,
            clock_mhz=1440,
            **_cc("8.0"),
            peak_tflops={
                "fp64": 5.2,
                "fp32": 10.3,
                "fp16": 41.3,
                "bf16": 20.6,
                "tf32_tensor": 82.0,
                "fp16_tensor": 165.0,
                "bf16_tensor": 165.0,
                "int8_tensor": 330.0,
            },
            dram_gbps=933,
            memory_gb=24,
            l2_mb=24,
            copy_engines=3,
        ),
        GPUSpec(
            # NVIDIA A40 datasheet; GA102 whitepaper: 84 SMs, 1740 MHz boost, 6 MB L2.
            # copy_engines assumed as GeForce GA102 (no report known)
            name="a40",
            sm_count=84,
            clock_mhz=1740,
            **_cc("8.6"),
            peak_tflops={
                "fp64": 0.58,
                "fp32": 37.4,
                "fp16": 37.4,
                "tf32_tensor": 74.8,
                "fp16_tensor": 149.7,
                "bf16_tensor": 149.7,
                "int8_tensor": 299.3,
            },
            dram_gbps=696,
            memory_gb=48,
            l2_mb=6,
            copy_engines=2,
        ),
        GPUSpec(
            # NVIDIA L4 Tensor Core GPU datasheet (tensor figures there are with sparsity:
            # halved here); Ada whitepaper: AD104 with 58 SMs, 2040 MHz boost, 48 MB L2.
            # copy_engines assumed as GeForce Ada (no report known)
            name="l4",
            sm_count=58,
            clock_mhz=2040,
            **_cc("8.9"),
            peak_tflops={
                "fp64": 0.47,
                "fp32": 30.3,
                "fp16": 30.3,
                "tf32_tensor": 60.0,
                "fp16_tensor": 121.0,
                "bf16_tensor": 121.0,
                "int8_tensor": 242.5,
            },
            dram_gbps=300,
            memory_gb=24,
            l2_mb=48,
            copy_engines=2,
        ),
        GPUSpec(
            # NVIDIA L40S GPU datasheet; Ada whitepaper: AD102 with 142 SMs, 2520 MHz
            # boost, 96 MB L2. copy_engines assumed as GeForce Ada (no report known)
            name="l40s",
            sm_count=142,
            clock_mhz=2520,
            **_cc("8.9"),
            peak_tflops={
                "fp64": 1.43,
                "fp32": 91.6,
                "fp16": 91.6,
                "tf32_tensor": 183.0,
                "fp16_tensor": 362.05,
                "bf16_tensor": 362.05,
                "int8_tensor": 733.0,
            },
            dram_gbps=864,
            memory_gb=48,
            l2_mb=96,
            copy_engines=2,
        ),
        GPUSpec(
            # NVIDIA H100 Tensor Core GPU datasheet and Hopper architecture whitepaper,
            # H100 PCIe: 114 SMs, 1755 MHz boost, 50 MB L2, 80 GB HBM2e at 2 TB/s. As for
            # the SXM part, NVIDIA's tensor rates assume a lower clock than the boost
            name="h100-pcie",
            sm_count=114,
            clock_mhz=1755,
            **_cc("9.0"),
            peak_tflops={
                "fp64": 25.6,
                "fp32": 51.2,
                "fp16": 102.4,
                "bf16": 102.4,
                "tf32_tensor": 378.0,
                "fp16_tensor": 756.0,
                "bf16_tensor": 756.0,
                "int8_tensor": 1513.0,
            },
            dram_gbps=2000,
            memory_gb=80,
            l2_mb=50,
            copy_engines=3,
        ),
    )
)
# NVIDIA A100 datasheet: the PCIe 40 GB card has the SXM4 part's SMs, clock, peak rates
# and 1,555 GB/s (its 250 W limit lowers sustained clocks, not the datasheet)
PRESETS["a100-pcie-40gb"] = dataclasses.replace(PRESETS["a100-sxm4-40gb"], name="a100-pcie-40gb")

ALIASES: dict[str, str] = {
    "v100": "v100-sxm2",
    "a100": "a100-sxm4-40gb",
    "a100-40gb": "a100-sxm4-40gb",
    "a100-80gb": "a100-sxm4-80gb",
    "h100": "h100-sxm",
    "h200": "h200-sxm",
    "rtx-3080": "rtx3080",
    "3080": "rtx3080",
    "p100": "p100-sxm2",
    "p100-pcie": "p100-pcie-16gb",
    "p100-16gb": "p100-pcie-16gb",
    "gtx-1060": "gtx1060-6gb",
    "gtx1060": "gtx1060-6gb",
    "1060": "gtx1060-6gb",
    "gtx-1080ti": "gtx1080ti",
    "1080ti": "gtx1080ti",
    "1080-ti": "gtx1080ti",
    "titan-xp": "titanxp",
    "rtx-2080": "rtx2080",
    "2080": "rtx2080",
    "rtx-2080-super": "rtx2080super",
    "rtx2080s": "rtx2080super",
    "2080super": "rtx2080super",
    "2080-super": "rtx2080super",
    "2080s": "rtx2080super",
    "rtx-2080ti": "rtx2080ti",
    "2080ti": "rtx2080ti",
    "2080-ti": "rtx2080ti",
    "rtx-3090": "rtx3090",
    "3090": "rtx3090",
    "rtx-4090": "rtx4090",
    "4090": "rtx4090",
    "a100-pcie": "a100-pcie-40gb",
    "h100-pcie-80gb": "h100-pcie",
}


def gpu_from_json(data: Any, source: str = "<json>") -> GPUSpec:
    """A GPU from a JSON object: ``{"base": PRESET, ...overrides}`` or a full definition.

    A calibration file keeps its fitted fields under ``"gpu"``; that form is accepted too.
    """
    if isinstance(data, dict) and isinstance(data.get("gpu"), dict):
        data = data["gpu"]
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a GPU spec must be a JSON object")
    data = dict(data)
    base_name = data.pop("base", None)
    try:
        if base_name is not None:
            base = preset(str(base_name))
            data.setdefault("name", f"{base.name}+{Path(source).stem}")
            return base.replace(**data)
        missing = [
            f.name
            for f in fields(GPUSpec)
            if f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
            and f.name not in data
        ]
        if missing:
            raise SpecError(f'GPU spec lacks {", ".join(missing)} (or give "base": a preset)')
        unknown = set(data) - {f.name for f in fields(GPUSpec)}
        if unknown:
            raise SpecError(f"unknown field(s) {', '.join(sorted(unknown))}")
        return GPUSpec(**data)
    except SpecError as e:
        raise SpecError(f"{source}: {e}") from None
    except TypeError as e:
        raise SpecError(f"{source}: {e}") from None


def preset(name: str) -> GPUSpec:
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in PRESETS:
        known = ", ".join(sorted(PRESETS))
        raise SpecError(f"unknown GPU '{name}' (presets: {known}; or a JSON file)")
    return PRESETS[key]


def load_gpu(name_or_path: str | Path) -> GPUSpec:
    """A preset by name or alias, or a JSON file defining or overriding one."""
    s = str(name_or_path)
    if s.endswith(".json") or Path(s).is_file():
        return gpu_from_json(read_json(s), source=s)
    return preset(s)


# --- machines: several GPUs and the links between them ------------------------------


@dataclass(frozen=True)
class LinkKind:
    """A kind of interconnect, per unit (one NVLink link, one x16 PCIe slot): bandwidth
    per direction in GB/s, and the latency of a peer copy over it in microseconds."""

    name: str
    gbps: float
    latency_us: float
    description: str = ""


# Datasheet bandwidths per direction. NVLink 2/3/4 run 25 GB/s per link and direction
# (V100: 6 links, A100: 12, H100: 18); PCIe x16 after line coding: gen3 15.75, gen4 31.5,
# gen5 63 GB/s. Latencies are round figures of p2pBandwidthLatencyTest reports (about
# 2 us between NVLink peers, about 5 us over PCIe); calibration overrides them per link.
LINK_KINDS: dict[str, LinkKind] = {
    k.name: k
    for k in (
        LinkKind("nvlink2", 25.0, 2.0, "NVLink 2.0 (Volta), per link"),
        LinkKind("nvlink3", 25.0, 2.0, "NVLink 3.0 (Ampere), per link"),
        LinkKind("nvlink4", 25.0, 2.0, "NVLink 4.0 (Hopper), per link"),
        LinkKind("pcie3", 15.75, 5.0, "PCIe 3.0 x16"),
        LinkKind("pcie4", 31.5, 5.0, "PCIe 4.0 x16"),
        LinkKind("pcie5", 63.0, 5.0, "PCIe 5.0 x16"),
    )
}

Node = int | str  # a GPU index or a switch name


@dataclass(frozen=True)
class Link:
    """A full-duplex connection between two nodes; ``gbps`` per direction (``count``
    units of ``kind`` together)."""

    a: Node
    b: Node
    kind: str
    count: int
    gbps: float
    latency_us: float

    @property
    def bytes_per_us(self) -> float:
        return self.gbps * 1e3


@dataclass(frozen=True)
class Route:
    """How a peer copy travels: the directed hops it occupies, its bottleneck bandwidth
    and its latency (the largest of its hops': a switch forwards without adding a copy's
    start-up again)."""

    channels: tuple[tuple[Node, Node], ...]
    gbps: float
    latency_us: float

    def transfer_us(self, nbytes: float) -> float:
        """Uncontended time of a copy of ``nbytes``: latency + bytes / bandwidth."""
        return self.latency_us + nbytes / (self.gbps * 1e3)


@dataclass(frozen=True)
class Machine:
    """One or more GPUs driven from one host thread, and the links between them.

    Nodes are GPU indices and named switches (NVSwitch, a PCIe switch). A copy between
    two GPUs takes the route with the fewest hops — only switches forward, GPUs do not
    — and, among those, the widest bottleneck.
    """

    name: str
    devices: tuple[GPUSpec, ...]
    links: tuple[Link, ...] = ()
    switches: tuple[str, ...] = ()
    description: str = ""
    # one host thread per GPU (a runtime with a thread per device), or one thread issuing
    # to all of them (a single-threaded framework): host launch costs then add up
    shared_host: bool = False

    def __post_init__(self) -> None:
        if not self.devices:
            raise SpecError(f"machine '{self.name}' has no GPU")
        object.__setattr__(self, "devices", tuple(self.devices))
        object.__setattr__(self, "links", tuple(self.links))
        object.__setattr__(self, "switches", tuple(self.switches))
        n = len(self.devices)
        if len(set(self.switches)) != len(self.switches):
            raise SpecError(f"machine '{self.name}': a switch is named twice")
        for i, link in enumerate(self.links):
            for end in (link.a, link.b):
                if isinstance(end, bool) or not (
                    (isinstance(end, int) and 0 <= end < n)
                    or (isinstance(end, str) and end in self.switches)
                ):
                    raise SpecError(
                        f"machine '{self.name}': link {i} names {end!r}, which is neither a GPU "
                        f"(0..{n - 1}) nor a switch ({', '.join(self.switches) or 'none'})"
                    )
            if link.a == link.b:
                raise SpecError(f"machine '{self.name}': link {i} joins {link.a!r} to itself")
            for what, v in (("gbps", link.gbps), ("latency_us", link.latency_us)):
                if not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
                    raise SpecError(f"machine '{self.name}': link {i} {what} must be >= 0")
            if link.gbps <= 0:
                raise SpecError(f"machine '{self.name}': link {i} gbps must be positive")

    @classmethod
    def single(cls, gpu: GPUSpec) -> Machine:
        return cls(gpu.name, (gpu,))

    @property
    def gpu(self) -> GPUSpec:
        return self.devices[0]

    @property
    def n_devices(self) -> int:
        return len(self.devices)

    @functools.cached_property
    def _routes(self) -> dict[tuple[int, int], Route | None]:
        adj: dict[Node, list[tuple[Node, Link]]] = {}
        for link in self.links:
            adj.setdefault(link.a, []).append((link.b, link))
            adj.setdefault(link.b, []).append((link.a, link))
        out: dict[tuple[int, int], Route | None] = {}
        n = len(self.devices)
        for src in range(n):
            # breadth-first by hops; at each depth keep the widest route to every node
            best: dict[Node, tuple[float, float, tuple]] = {src: (math.inf, 0.0, ())}
            frontier: list[Node] = [src]
            while frontier:
                nxt: dict[Node, tuple[float, float, tuple]] = {}
                for node in frontier:
                    if isinstance(node, int) and node != src:
                        continue  # GPUs do not forward
                    bw, lat, hops = best[node]
                    for other, link in adj.get(node, ()):
                        if other in best:
                            continue
                        cand = (
                            min(bw, link.gbps),
                            max(lat, link.latency_us),
                            (*hops, (node, other)),
                        )
                        cur = nxt.get(other)
                        if cur is None or (cand[0], -cand[1]) > (cur[0], -cur[1]):
                            nxt[other] = cand
                for node in sorted(nxt, key=_node_key):
                    best[node] = nxt[node]
                frontier = sorted(nxt, key=_node_key)
            for dst in range(n):
                if dst == src:
                    continue
                hit = best.get(dst)
                out[(src, dst)] = None if hit is None else Route(hit[2], hit[0], hit[1])
        return out

    def route(self, src: int, dst: int) -> Route | None:
        """The route of a copy from GPU ``src`` to GPU ``dst`` (None if they are not
        connected, or the same GPU)."""
        return self._routes.get((src, dst))

    def transfer_us(self, src: int, dst: int, nbytes: float) -> float:
        """Uncontended time to copy ``nbytes`` from ``src`` to ``dst`` (0 on one GPU)."""
        if src == dst:
            return 0.0
        r = self.route(src, dst)
        if r is None:
            raise SpecError(f"machine '{self.name}': no route from GPU {src} to GPU {dst}")
        return r.transfer_us(nbytes)

    def check_connected(self, source: str | None = None) -> None:
        """Every GPU can reach every other: what a loaded machine must satisfy."""
        for (src, dst), r in sorted(self._routes.items()):
            if r is None:
                where = f"{source}: " if source else ""
                raise SpecError(
                    f"{where}machine '{self.name}': no route from GPU {src} to GPU {dst} "
                    f"(only switches forward copies; add a link)"
                )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "gpus": [g.name for g in self.devices],
            "switches": list(self.switches),
            "shared_host": self.shared_host,
            "links": [
                {
                    "between": [link.a, link.b],
                    "kind": link.kind,
                    "count": link.count,
                    "gbps": link.gbps,
                    "latency_us": link.latency_us,
                }
                for link in self.links
            ],
        }


def _node_key(node: Node) -> tuple[int, int | str]:
    return (0, node) if isinstance(node, int) else (1, node)


_MACHINE_KEYS = {"name", "gpus", "links", "switches", "base", "description", "shared_host"}
_LINK_KEYS = {"between", "kind", "count", "gbps", "latency_us"}


def machine_from_json(data: Any, source: str = "<json>", base_dir: Path | None = None) -> Machine:
    """A machine from JSON: ``{"name", "gpus": [preset or GPU object...], "switches":
    [names], "links": [{"between": [a, b], "kind": K, "count": N, "gbps": X,
    "latency_us": Y}]}``; ``"base": PRESET`` takes a machine preset and replaces the
    keys given. A link needs a ``kind`` or both ``gbps`` and ``latency_us``; given
    figures override the kind's."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a machine must be a JSON object")
    data = dict(data)
    if "base" in data:
        base_name = data.pop("base")
        key = str(base_name).strip().lower()
        if key not in MACHINE_PRESETS:
            known = ", ".join(sorted(MACHINE_PRESETS))
            raise SpecError(f"{source}: unknown base machine {base_name!r} (presets: {known})")
        merged = dict(MACHINE_PRESETS[key])
        merged.update(data)
        if "name" not in data:
            merged["name"] = f"{key}+{Path(source).stem}"
        data = merged
    unknown = sorted(set(data) - _MACHINE_KEYS)
    if unknown:
        raise SpecError(
            f"{source}: unknown machine key(s) {', '.join(unknown)} "
            f"(known: {', '.join(sorted(_MACHINE_KEYS))})"
        )
    name = data.get("name", Path(source).stem)
    if not isinstance(name, str) or not name:
        raise SpecError(f'{source}: "name" must be a non-empty string')
    gpus_in = data.get("gpus")
    if not isinstance(gpus_in, list) or not gpus_in:
        raise SpecError(f'{source}: "gpus" must be a non-empty list of GPU presets or objects')
    check_limit("gpus", len(gpus_in), f"{source}: the number of GPUs")
    devices = []
    for i, g in enumerate(gpus_in):
        where = f"{source}: gpus[{i}]"
        if isinstance(g, str):
            path = Path(g)
            if base_dir is not None and not path.is_absolute() and (base_dir / path).is_file():
                path = base_dir / path
            try:
                devices.append(load_gpu(path if path.is_file() else g))
            except SpecError as e:
                raise SpecError(f"{where}: {e}") from None
        elif isinstance(g, dict):
            devices.append(gpu_from_json(g, source=where))
        else:
            raise SpecError(f"{where}: must be a GPU preset name or a GPU object, got {g!r}")
    switches = data.get("switches", [])
    if not isinstance(switches, list) or not all(isinstance(x, str) and x for x in switches):
        raise SpecError(f'{source}: "switches" must be a list of names')
    links_in = data.get("links", [])
    if not isinstance(links_in, list):
        raise SpecError(f'{source}: "links" must be a list')
    links = [_link_from_json(x, f"{source}: links[{i}]") for i, x in enumerate(links_in)]
    try:
        shared = data.get("shared_host", False)
        if not isinstance(shared, bool):
            raise SpecError(f'"shared_host" must be true or false, got {shared!r}')
        m = Machine(
            name,
            tuple(devices),
            tuple(links),
            tuple(switches),
            str(data.get("description", "")),
            shared,
        )
    except SpecError as e:
        raise SpecError(f"{source}: {e}") from None
    m.check_connected(source)
    return m


def _link_from_json(x: Any, where: str) -> Link:
    if not isinstance(x, dict):
        raise SpecError(f"{where}: a link must be an object, got {x!r}")
    unknown = sorted(set(x) - _LINK_KEYS)
    if unknown:
        raise SpecError(
            f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(_LINK_KEYS))})"
        )
    ends = x.get("between")
    if (
        not isinstance(ends, list)
        or len(ends) != 2
        or not all(
            isinstance(e, str) or (isinstance(e, int) and not isinstance(e, bool)) for e in ends
        )
    ):
        raise SpecError(f'{where}: "between" must list two nodes (GPU indices or switch names)')
    count = x.get("count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise SpecError(f'{where}: "count" must be a positive integer, got {count!r}')
    kind_name = x.get("kind")
    if kind_name is None:
        if "gbps" not in x or "latency_us" not in x:
            raise SpecError(
                f'{where}: give a "kind" ({", ".join(LINK_KINDS)}) or "gbps" and "latency_us"'
            )
        kind = LinkKind("custom", 0.0, 0.0)
    else:
        kind = LINK_KINDS.get(str(kind_name).lower())
        if kind is None:
            raise SpecError(
                f"{where}: unknown link kind {kind_name!r} (kinds: {', '.join(LINK_KINDS)})"
            )
    gbps = x.get("gbps", kind.gbps * count)
    latency = x.get("latency_us", kind.latency_us)
    for what, v in (("gbps", gbps), ("latency_us", latency)):
        if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
            raise SpecError(f'{where}: "{what}" must be a number, got {v!r}')
    if gbps <= 0 or latency < 0:
        raise SpecError(f'{where}: "gbps" must be positive and "latency_us" not negative')
    return Link(ends[0], ends[1], kind.name, count, float(gbps), float(latency))


def _pairs(n: int, kind: str, count: int) -> list[dict[str, Any]]:
    return [
        {"between": [a, b], "kind": kind, "count": count} for a in range(n) for b in range(a + 1, n)
    ]


def _star(n: int, switch: str, kind: str, count: int) -> list[dict[str, Any]]:
    return [{"between": [i, switch], "kind": kind, "count": count} for i in range(n)]


# Machine presets, as the JSON a user would write. Each documents the system it models.
MACHINE_PRESETS: dict[str, dict[str, Any]] = {
    "2xv100-nvlink": {
        "name": "2xv100-nvlink",
        "description": "two V100-SXM2 joined by two NVLink 2 links (50 GB/s per direction), "
        "as the doubly linked GPU pairs of a DGX-1",
        "gpus": ["v100-sxm2"] * 2,
        "links": _pairs(2, "nvlink2", 2),
    },
    "2xa100-nvlink": {
        "name": "2xa100-nvlink",
        "description": "two A100s joined by 12 NVLink 3 links (300 GB/s per direction)",
        "gpus": ["a100-sxm4-40gb"] * 2,
        "links": _pairs(2, "nvlink3", 12),
    },
    "4xa100-nvlink": {
        "name": "4xa100-nvlink",
        "description": "HGX A100 4-GPU: every pair joined by 4 NVLink 3 links "
        "(100 GB/s per direction)",
        "gpus": ["a100-sxm4-40gb"] * 4,
        "links": _pairs(4, "nvlink3", 4),
    },
    "8xh100-nvswitch": {
        "name": "8xh100-nvswitch",
        "description": "HGX H100 8-GPU: each GPU's 18 NVLink 4 links into NVSwitch "
        "(450 GB/s per direction, all to all)",
        "gpus": ["h100-sxm"] * 8,
        "switches": ["nvswitch"],
        "links": _star(8, "nvswitch", "nvlink4", 18),
    },
    "2xgpu-pcie4": {
        "name": "2xgpu-pcie4",
        "description": "two A100s on a PCIe 4.0 x16 switch, no NVLink (31.5 GB/s per direction)",
        "gpus": ["a100-sxm4-40gb"] * 2,
        "switches": ["pcie"],
        "links": _star(2, "pcie", "pcie4", 1),
    },
    "2xv100-pcie3": {
        "name": "2xv100-pcie3",
        "description": "two V100s on a PCIe 3.0 x16 switch, no NVLink (15.75 GB/s per direction)",
        "gpus": ["v100-sxm2"] * 2,
        "switches": ["pcie"],
        "links": _star(2, "pcie", "pcie3", 1),
    },
    "2xh100-pcie5": {
        "name": "2xh100-pcie5",
        "description": "two H100s on a PCIe 5.0 x16 switch, no NVLink (63 GB/s per direction)",
        "gpus": ["h100-sxm"] * 2,
        "switches": ["pcie"],
        "links": _star(2, "pcie", "pcie5", 1),
    },
}


def machine_preset(name: str) -> Machine:
    key = name.strip().lower()
    if key not in MACHINE_PRESETS:
        raise SpecError(f"unknown machine '{name}'")
    return machine_from_json(MACHINE_PRESETS[key], source=key)


def load_machine(name_or_path: str | Path) -> Machine:
    """A machine preset, a machine JSON file, or a GPU (preset or file): one device."""
    s = str(name_or_path)
    path = Path(s)
    if s.endswith(".json") or path.is_file():
        data = read_json(path)
        if isinstance(data, dict) and (
            "gpus" in data or str(data.get("base", "")).lower() in MACHINE_PRESETS
        ):
            return machine_from_json(data, source=s, base_dir=path.parent)
        return Machine.single(gpu_from_json(data, source=s))
    key = s.strip().lower()
    if key in MACHINE_PRESETS:
        return machine_preset(key)
    try:
        return Machine.single(preset(s))
    except SpecError:
        known = ", ".join(sorted(MACHINE_PRESETS))
        raise SpecError(
            f"unknown machine '{s}' (machines: {known}; or a GPU preset, or a JSON file)"
        ) from None
