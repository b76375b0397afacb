"""Device facts -> a GPU spec JSON that ``--gpu FILE`` accepts.

Two sources, because neither has everything: NVML (package ``nvidia-ml-py``) knows the
name, clocks, memory size and bus width, power limit, compute capability and driver,
but not the SM count; the CUDA device properties (``torch.cuda.get_device_properties``,
or the ``deviceProperties`` block of a Kineto trace) know the SM count and the per-SM
limits. The conversion works on plain dicts, so it is tested without a GPU; only
:func:`probe` touches the device.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from typing import Any

from calibrate.errors import CalibrationError, NoGPUError, require_cuda
from simgpu.hardware import PRESETS, GPUSpec, gpu_from_json
from simgpu.schema import Checker

_UPPER_SMS = 4096  # far above any GPU's SM count; simgpu.hardware bounds the spec itself

KB = 1024

# Resident blocks per SM by compute capability (CUDA programming guide, table of
# technical specifications): not in cudaDeviceProp before CUDA 11, so kept here.
MAX_BLOCKS_PER_SM = {
    "3.5": 16, "3.7": 16, "5.0": 32, "5.2": 32, "6.0": 32, "6.1": 32, "7.0": 32,
    "7.2": 32, "7.5": 16, "8.0": 32, "8.6": 16, "8.7": 16, "8.9": 24, "9.0": 32,
}  # fmt: skip
# FP32 lanes per SM by compute capability, for GPUs without a preset to borrow rates from
FP32_LANES_PER_SM = {
    "3.5": 192, "3.7": 192, "5.0": 128, "5.2": 128, "6.0": 64, "6.1": 128, "7.0": 64,
    "7.2": 64, "7.5": 64, "8.0": 64, "8.6": 128, "8.7": 128, "8.9": 128, "9.0": 128,
}  # fmt: skip

# name fragments -> preset, most specific first (A100 80 GB is told apart by memory)
# words a device name must hold -> its preset; the most specific first (an "H100 PCIe"
# is not an H100 SXM, a "2080 SUPER" not a 2080)
_NAME_PRESETS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("H200",), "h200-sxm"),
    (("H100", "PCIE"), "h100-pcie"),
    (("H100",), "h100-sxm"),
    (("A100", "PCIE"), "a100-pcie-40gb"),
    (("A100",), "a100-sxm4-40gb"),
    (("V100",), "v100-sxm2"),
    (("P100", "PCIE"), "p100-pcie-16gb"),
    (("P100",), "p100-sxm2"),
    (("T4",), "t4"),
    (("L40S",), "l40s"),
    (("L4",), "l4"),
    (("A40",), "a40"),
    (("A30",), "a30"),
    (("A10",), "a10"),
    (("2080", "SUPER"), "rtx2080super"),
    (("2080", "TI"), "rtx2080ti"),
    (("2080",), "rtx2080"),
    (("3080",), "rtx3080"),
    (("3090",), "rtx3090"),
    (("4090",), "rtx4090"),
    (("1080", "TI"), "gtx1080ti"),
    (("1060",), "gtx1060-6gb"),
    (("TITAN", "XP"), "titanxp"),
    (("K80",), "k80"),
)


def preset_for(name: str, memory_bytes: float | None = None) -> str | None:
    """The preset a device name belongs to, or None (then the spec is defined outright)."""
    words = set(name.upper().replace("-", " ").replace("_", " ").split())
    big = bool(memory_bytes and memory_bytes > 60 * 2**30)
    for frags, preset in _NAME_PRESETS:
        if words.issuperset(frags):
            if preset == "a100-sxm4-40gb" and big:
                return "a100-sxm4-80gb"
            if preset == "a100-pcie-40gb" and big:
                return None  # an A100 PCIe 80GB: no preset, defined outright
            return preset
    return None


def torch_properties(props: Any) -> dict[str, Any]:
    """``torch.cuda.get_device_properties`` -> the cudaDeviceProp names Kineto also uses.

    Attributes differ between torch versions, so each is optional except the SM count
    and the compute capability.
    """

    def get(*names: str) -> Any:
        for n in names:
            v = getattr(props, n, None)
            if v is not None:
                return v
        return None

    out = {
        "name": get("name"),
        "computeMajor": get("major"),
        "computeMinor": get("minor"),
        "totalGlobalMem": get("total_memory"),
        "numSms": get("multi_processor_count"),
        "maxThreadsPerMultiprocessor": get("max_threads_per_multi_processor"),
        "maxThreadsPerBlock": get("max_threads_per_block"),
        "regsPerMultiprocessor": get("regs_per_multiprocessor"),
        "warpSize": get("warp_size"),
        "sharedMemPerBlock": get("shared_memory_per_block"),
        "sharedMemPerBlockOptin": get("shared_memory_per_block_optin"),
        "sharedMemPerMultiprocessor": get("shared_memory_per_multiprocessor"),
        "l2CacheSize": get("L2_cache_size", "l2_cache_size"),
        "maxBlocksPerMultiProcessor": get("max_blocks_per_multi_processor"),
    }
    missing = [k for k in ("numSms", "computeMajor", "computeMinor") if out[k] is None]
    if missing:
        raise CalibrationError(f"device properties lack {', '.join(missing)}")
    return {k: v for k, v in out.items() if v is not None}


def nvml_facts(index: int = 0) -> dict[str, Any]:
    """What NVML knows about device ``index``; raises NoGPUError without a driver."""
    try:
        import pynvml
    except ImportError:
        raise NoGPUError("probing needs nvidia-ml-py (pip install nvidia-ml-py)") from None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        raise NoGPUError(f"NVML cannot start ({e}): no NVIDIA driver on this machine") from None
    try:
        h = pynvml.nvmlDeviceGetHandleByIndex(index)

        def opt(fn, *args):
            try:
                return fn(*args)
            except pynvml.NVMLError:
                return None

        def text(v: Any) -> Any:
            return v.decode() if isinstance(v, bytes) else v

        cc = opt(pynvml.nvmlDeviceGetCudaComputeCapability, h)
        mem = opt(pynvml.nvmlDeviceGetMemoryInfo, h)
        power = opt(pynvml.nvmlDeviceGetEnforcedPowerLimit, h)
        return {
            "name": text(pynvml.nvmlDeviceGetName(h)),
            "driver": text(opt(pynvml.nvmlSystemGetDriverVersion)),
            "cuda_driver": opt(pynvml.nvmlSystemGetCudaDriverVersion),
            "compute_capability": f"{cc[0]}.{cc[1]}" if cc else None,
            "sm_clock_max_mhz": opt(pynvml.nvmlDeviceGetMaxClockInfo, h, pynvml.NVML_CLOCK_SM),
            "mem_clock_max_mhz": opt(pynvml.nvmlDeviceGetMaxClockInfo, h, pynvml.NVML_CLOCK_MEM),
            "memory_bytes": mem.total if mem else None,
            "bus_width_bits": opt(pynvml.nvmlDeviceGetMemoryBusWidth, h),
            "power_limit_w": power / 1000.0 if power else None,
        }
    finally:
        pynvml.nvmlShutdown()


def dram_gbps(bus_width_bits: float, mem_clock_mhz: float) -> float:
    """Peak DRAM bandwidth: NVML's memory clock moves two transfers per cycle per pin
    for HBM and GDDR alike (V100: 4096 bits x 877 MHz x 2 = 898 GB/s)."""
    return bus_width_bits / 8 * mem_clock_mhz * 2 / 1e3


def spec_from_facts(
    props: Mapping[str, Any],
    nvml: Mapping[str, Any] | None = None,
    base: str | None = None,
) -> dict[str, Any]:
    """A GPU spec JSON object from device properties (and NVML facts, when known).

    With a preset (named, or found from the device name) the result overrides it: the
    datasheet peak rates and behavioural costs stay, every measured fact replaces its
    field. Without one, the GPU is defined outright and its FP32/FP16 rates are
    estimated from lanes per SM x SMs x clock (tensor rates are left out: not knowable
    from properties). The result always loads with ``gpu_from_json``.
    """
    nvml = dict(nvml or {})
    # properties come from a device or from a trace a user gives: checked, not coerced
    # (int("80"), int(8.9) or int(True) would make another GPU); other fields are kept
    check = Checker("device properties", CalibrationError)
    f = check.fields(props)
    major = f.integer("computeMajor", lo=1, hi=99)
    minor = f.integer("computeMinor", lo=0, hi=99)
    sms = f.integer("numSms", lo=1, hi=_UPPER_SMS)
    cc = f"{major}.{minor}"
    name = f.string("name", None) or str(nvml.get("name") or f"gpu-sm{major}{minor}")
    mem_bytes = f.number("totalGlobalMem", None, lo=0, lo_open=True) or nvml.get("memory_bytes")
    facts: dict[str, Any] = {
        "name": name,
        "sm_count": sms,
        "compute_capability": cc,
    }
    limits = {
        "max_threads_per_sm": "maxThreadsPerMultiprocessor",
        "regs_per_sm": "regsPerMultiprocessor",
        "smem_per_sm": "sharedMemPerMultiprocessor",
        "max_smem_per_block": "sharedMemPerBlockOptin",
        "max_threads_per_block": "maxThreadsPerBlock",
        "warp_size": "warpSize",
        "max_blocks_per_sm": "maxBlocksPerMultiProcessor",
    }
    for field, key in limits.items():
        v = f.integer(key, None, lo=1)  # the spec bounds each field
        if v is not None:
            facts[field] = v
    smem_block = f.integer("sharedMemPerBlock", None, lo=1)
    if "max_smem_per_block" not in facts and smem_block is not None:
        facts["max_smem_per_block"] = smem_block
    l2 = f.number("l2CacheSize", None, lo=0)
    if "max_blocks_per_sm" not in facts and cc in MAX_BLOCKS_PER_SM:
        facts["max_blocks_per_sm"] = MAX_BLOCKS_PER_SM[cc]
    facts["smem_reserved_per_block"] = 1 * KB if major >= 8 else 0
    if mem_bytes:
        facts["memory_gb"] = round(float(mem_bytes) / 1e9, 3)
    if l2:
        facts["l2_mb"] = round(l2 / 2**20, 3)
    if nvml.get("sm_clock_max_mhz"):
        facts["clock_mhz"] = float(nvml["sm_clock_max_mhz"])
    if nvml.get("bus_width_bits") and nvml.get("mem_clock_max_mhz"):
        facts["dram_gbps"] = round(dram_gbps(nvml["bus_width_bits"], nvml["mem_clock_max_mhz"]), 1)
    preset = base or preset_for(name, mem_bytes)
    if preset is not None:
        if preset not in PRESETS:
            raise CalibrationError(f"unknown base preset '{preset}'")
        p = PRESETS[preset]
        out: dict[str, Any] = {"base": preset}
        for k, v in facts.items():
            if k == "name" or getattr(p, k) != v:
                out[k] = v
        if "clock_mhz" in facts and facts["clock_mhz"] != p.clock_mhz:
            # the preset's rates assume its clock and SM count: scale them to this part
            scale = facts["clock_mhz"] / p.clock_mhz * sms / p.sm_count
            out["peak_tflops"] = {k: round(v * scale, 3) for k, v in p.peak_tflops.items()}
        elif sms != p.sm_count:
            scale = sms / p.sm_count
            out["peak_tflops"] = {k: round(v * scale, 3) for k, v in p.peak_tflops.items()}
    else:
        need = ("max_threads_per_sm", "regs_per_sm", "smem_per_sm", "max_smem_per_block")
        missing = [k for k in need if k not in facts]
        if missing or "max_blocks_per_sm" not in facts:
            raise CalibrationError(
                f"GPU '{name}' (sm_{major}{minor}) has no preset and the properties lack "
                f"{', '.join(missing) or 'max_blocks_per_sm'}: give a base preset"
            )
        if "clock_mhz" not in facts:
            raise CalibrationError(
                f"GPU '{name}' has no preset and no clock from NVML: give a base preset"
            )
        lanes = FP32_LANES_PER_SM.get(cc, 64)
        fp32 = lanes * 2 * sms * facts["clock_mhz"] * 1e6 / 1e12
        out = dict(facts)
        out["peak_tflops"] = {"fp32": round(fp32, 3), "fp16": round(fp32 * 2, 3)}
    gpu_from_json(dict(out), source=name)  # fails here, not in a later user's run
    return out


def probe(device: int = 0) -> dict[str, Any]:
    """Probe CUDA device ``device``: ``{"gpu": spec JSON, "facts": raw facts, ...}``.

    The file it becomes is accepted by ``--gpu FILE`` (the spec sits under ``"gpu"``).
    """
    torch = require_cuda("probing a GPU")
    if not 0 <= device < torch.cuda.device_count():
        raise NoGPUError(f"no CUDA device {device} (this machine has {torch.cuda.device_count()})")
    props = torch_properties(torch.cuda.get_device_properties(device))
    try:
        nvml = nvml_facts(device)
    except NoGPUError as e:
        nvml = {"error": str(e)}
    gpu = spec_from_facts(props, {k: v for k, v in nvml.items() if k != "error"})
    return {
        "format": "simgpu.probe",
        "version": 1,
        "gpu": gpu,
        "properties": props,
        "nvml": nvml,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "date": _dt.date.today().isoformat(),
    }


def spec(data: Mapping[str, Any]) -> GPUSpec:
    """The GPUSpec a probe result (or a bare spec JSON) stands for."""
    return gpu_from_json(dict(data), source=str(data.get("name", "probe")))
