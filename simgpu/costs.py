"""Fitted efficiency parameters of library kernels (cuBLAS/cuDNN-like GEMM main loops).

A GEMM-like kernel's block runs a main loop over K: each iteration does its tile's
multiply-adds at a sustained fraction of the unit's peak (``efficiency``) and pays a
latency (``iter_cycles``) that throughput cannot hide, and each block pays a prologue
and epilogue (``block_cycles``). These three numbers per *unit* (CUDA cores or tensor
cores, per dtype) are not tuned by hand: ``simgpu calibrate fit-public`` fits them by
least squares to public measurements and writes ``simgpu/data/library_costs.json`` with
their source. Latencies are in clock cycles and efficiencies are fractions of the
datasheet peak, so a GPU that was never measured takes its architecture's fit (or the
nearest measured architecture's) scaled by its own datasheet.

A GPU JSON may carry its own ``library_costs`` (``{"units": {...}}``), which wins.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simgpu.errors import SpecError
from simgpu.hardware import GPUSpec

DATA = Path(__file__).parent / "data" / "library_costs.json"

# compute capability major.minor -> architecture; the order is the fallback order
ARCHS = (
    ("3.", "kepler"),
    ("5.", "maxwell"),
    ("6.", "pascal"),
    ("7.0", "volta"),
    ("7.2", "volta"),
    ("7.5", "turing"),
    ("8.", "ampere"),
    ("9.", "hopper"),
)
ARCH_ORDER = ("kepler", "maxwell", "pascal", "volta", "turing", "ampere", "hopper")


@dataclass(frozen=True)
class UnitCosts:
    """A GEMM main loop on one unit: sustained fraction of peak and fixed latencies."""

    efficiency: float  # fraction of the unit's datasheet peak an SM sustains
    iter_cycles: float  # latency per main-loop iteration, not shared with co-runners
    block_cycles: float  # prologue + epilogue of one block

    def __post_init__(self) -> None:
        for name in ("efficiency", "iter_cycles", "block_cycles"):
            v = getattr(self, name)
            if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
                raise SpecError(f"library costs: {name} must be a number, got {v!r}")
        if not 0 < self.efficiency <= 1:
            raise SpecError(f"library costs: efficiency must be in (0, 1], got {self.efficiency}")
        if self.iter_cycles < 0 or self.block_cycles < 0:
            raise SpecError("library costs: cycles must be >= 0")


@dataclass(frozen=True)
class LibraryCosts:
    """Per-unit costs of one architecture (units keyed ``simt_fp32``, ``tensor_fp16``...)."""

    arch: str
    units: Mapping[str, UnitCosts]
    # host microseconds of one call of a library (cuDNN's or cuBLAS's own CPU cost, its
    # launches): a benchmark loop of tiny calls runs at this rate, not the GPU's
    calls: Mapping[str, float] = field(default_factory=dict)

    def unit(self, key: str) -> UnitCosts:
        """The costs of ``key`` (``[library.]unit_dtype``), else of the nearest unit
        that was fitted: the same unit in another dtype, then the default library's."""
        if key in self.units:
            return self.units[key]
        lib, _, rest = key.rpartition(".")
        kind = rest.split("_")[0]
        for prefix in dict.fromkeys((f"{lib}." if lib else "", "")):
            if prefix + rest in self.units:
                return self.units[prefix + rest]
            for k in sorted(self.units):
                if k.startswith(f"{prefix}{kind}_"):
                    return self.units[k]
        return self.units[sorted(self.units)[0]]


def units_from_json(data: Any, where: str) -> dict[str, UnitCosts]:
    if not isinstance(data, Mapping) or not data:
        raise SpecError(f"{where}: units must be a non-empty object")
    out = {}
    for key, v in data.items():
        if not isinstance(v, Mapping):
            raise SpecError(f"{where}: unit '{key}' must be an object")
        extra = set(v) - {"efficiency", "iter_cycles", "block_cycles"}
        if extra:
            raise SpecError(f"{where}: unit '{key}' has unknown key(s) {', '.join(sorted(extra))}")
        try:
            out[str(key)] = UnitCosts(v["efficiency"], v["iter_cycles"], v["block_cycles"])
        except KeyError as e:
            raise SpecError(f"{where}: unit '{key}' lacks {e.args[0]}") from None
        except SpecError as e:
            raise SpecError(f"{where}: unit '{key}': {e}") from None
    return out


def calls_from_json(data: Any, where: str) -> dict[str, float]:
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise SpecError(f"{where}: calls_us must be an object")
    out = {}
    for lib, us in data.items():
        if (
            not isinstance(us, int | float)
            or isinstance(us, bool)
            or not (math.isfinite(us) and us >= 0)
        ):
            raise SpecError(f"{where}: calls_us of '{lib}' must be a number >= 0, got {us!r}")
        out[str(lib)] = float(us)
    return out


@functools.cache
def _fitted() -> dict[str, LibraryCosts]:
    """The committed fit, by architecture."""
    data = json.loads(DATA.read_text())
    return {
        arch: LibraryCosts(arch, units_from_json(entry["units"], f"{DATA.name}: {arch}"),
                           calls_from_json(entry.get("calls_us"), f"{DATA.name}: {arch}"))
        for arch, entry in data["archs"].items()
    }  # fmt: skip


def arch_of(gpu: GPUSpec) -> str:
    cc = gpu.compute_capability
    for prefix, arch in ARCHS:
        if cc.startswith(prefix):
            return arch
    return "volta"


def library_costs(gpu: GPUSpec) -> LibraryCosts:
    """The costs ``gpu`` runs with: its own, else its architecture's fit, else the fit of
    the nearest architecture that was measured."""
    arch = arch_of(gpu)
    if gpu.library_costs:
        where = f"GPU '{gpu.name}': library_costs"
        return LibraryCosts(arch, units_from_json(gpu.library_costs.get("units"), where),
                            calls_from_json(gpu.library_costs.get("calls_us"), where))  # fmt: skip
    fitted = _fitted()
    if arch not in fitted:
        i = ARCH_ORDER.index(arch)
        arch = min(fitted, key=lambda a: (abs(ARCH_ORDER.index(a) - i), -ARCH_ORDER.index(a)))
    return fitted[arch]
