"""GPU and machine specifications.

Presets carry datasheet figures (SM counts, per-SM limits, clocks, peak rates, memory
bandwidth). Behavioural costs (launch, events, efficiencies) start from published
measurements and are what calibration overrides: a JSON file names a ``base`` preset
and any fields to change, or defines a GPU outright.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from simgpu.errors import SpecError
from simgpu.graph import read_json

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

    def __post_init__(self) -> None:
        if not isinstance(self.peak_tflops, Mapping):
            raise SpecError(f"GPU '{self.name}': peak_tflops must be an object")
        object.__setattr__(self, "peak_tflops", dict(self.peak_tflops))
        if not isinstance(self.kernel_table, Mapping):
            raise SpecError(f"GPU '{self.name}': kernel_table must be an object")
        object.__setattr__(self, "kernel_table", dict(self.kernel_table))
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("name", "compute_capability", "peak_tflops", "kernel_table"):
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
        if not self.peak_tflops or any(
            not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v) or v <= 0
            for v in self.peak_tflops.values()
        ):
            raise SpecError(f"GPU '{self.name}': peak_tflops needs positive rates, e.g. fp32")
        if "fp32" not in self.peak_tflops:
            raise SpecError(f"GPU '{self.name}': peak_tflops must include fp32")
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
        return d


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

ALIASES: dict[str, str] = {
    "v100": "v100-sxm2",
    "a100": "a100-sxm4-40gb",
    "a100-40gb": "a100-sxm4-40gb",
    "a100-80gb": "a100-sxm4-80gb",
    "h100": "h100-sxm",
    "h200": "h200-sxm",
    "rtx-3080": "rtx3080",
    "3080": "rtx3080",
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


@dataclass(frozen=True)
class Machine:
    """One or more GPUs driven from one host. The multi-GPU issue adds links here."""

    name: str
    devices: tuple[GPUSpec, ...]

    def __post_init__(self) -> None:
        if not self.devices:
            raise SpecError(f"machine '{self.name}' has no GPU")

    @classmethod
    def single(cls, gpu: GPUSpec) -> Machine:
        return cls(gpu.name, (gpu,))

    @property
    def gpu(self) -> GPUSpec:
        return self.devices[0]
