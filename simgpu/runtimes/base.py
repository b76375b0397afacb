"""What a runtime is: how the ops of a schedule become host calls and kernels.

The same schedule costs very different amounts of CPU time in eager PyTorch (Python,
the dispatcher and one library call per *unfused* op), in a C++ runtime calling cuDNN
directly, as one CUDA Graph replay, or in TensorRT. A runtime says, per op of the
graph, which calls the host makes (each with its CPU time) and which kernels each call
launches; lowering (:func:`simgpu.program.lower`) writes them into the StreamProgram,
so the simulator stays runtime-agnostic: it runs host calls with costs attached.

Host costs are data (``simgpu/data/host_costs.json``), fitted by ``simgpu calibrate
fit-host`` (:mod:`calibrate.hostfit`): per-op framework time by op family from the
``cpu_op`` and ``cuda_runtime`` spans of a Kineto trace, and the framework's CPU speed
from published end-to-end speedups. A call's CPU time is its framework time plus one
``cudaLaunchKernel`` (the GPU's ``launch_api_us``, a driver cost) per kernel.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from simgpu.errors import SimGPUError, SpecError
from simgpu.graph import Op, OpGraph
from simgpu.hardware import GPUSpec
from simgpu.kernels import Kernel, _streaming
from simgpu.ops import numel
from simgpu.program import Launch

DATA = Path(__file__).resolve().parent.parent / "data" / "host_costs.json"

# the families host costs are measured by; every op kind maps to one (``family``)
FAMILIES = ("conv", "gemm", "norm", "elementwise", "pool", "reduce", "concat", "view")
_FAMILY = {
    "conv": "conv",
    "conv_transpose": "conv",
    "linear": "gemm",
    "matmul": "gemm",
    "embedding": "gemm",
    "batchnorm": "norm",
    "layernorm": "norm",
    "pool": "pool",
    "global_pool": "reduce",
    "softmax": "reduce",
    "concat": "concat",
    "slice": "concat",
    "transpose": "concat",
}


class UnknownRuntime(SimGPUError):
    """A runtime name that is not registered."""


def family(op: Op, kernels: list[Kernel]) -> str:
    """The host-cost family of an op: its kind's, else ``view`` for an op without
    device work and ``elementwise`` for every other kind."""
    fam = _FAMILY.get(op.kind)
    if fam is not None:
        return fam
    return "elementwise" if kernels else "view"


@dataclass(frozen=True)
class HostCosts:
    """CPU time of one runtime's calls, in microseconds, launches excluded.

    ``op_us[family]`` is the framework's own time for one op call (Python, the
    dispatcher, descriptor set-up, the allocator), ``python_us`` the interpreter's time
    between two calls, and ``scale`` the fitted speed of the CPU and framework version
    the published figures ran on relative to the trace the per-op times come from.
    """

    op_us: Mapping[str, float]
    python_us: float = 0.0
    scale: float = 1.0
    record_us: float = 0.0  # framework share of an event record (torch.cuda.Event.record)
    wait_us: float = 0.0  # framework share of a stream wait
    source: str = ""

    def __post_init__(self) -> None:
        for k in FAMILIES:
            if k not in self.op_us:
                raise SpecError(f"host costs: op_us lacks family '{k}'")
        for k, v in [*self.op_us.items(), ("python_us", self.python_us), ("scale", self.scale),
                     ("record_us", self.record_us), ("wait_us", self.wait_us)]:  # fmt: skip
            if k not in FAMILIES and k not in ("python_us", "scale", "record_us", "wait_us"):
                raise SpecError(f"host costs: unknown family '{k}' (known: {', '.join(FAMILIES)})")
            if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
                raise SpecError(f"host costs: {k} must be a number, got {v!r}")
            if v < 0:
                raise SpecError(f"host costs: {k} must be >= 0, got {v!r}")
        object.__setattr__(self, "op_us", {k: float(self.op_us[k]) for k in FAMILIES})

    def framework_us(self, fam: str) -> float:
        """CPU time of one op call before its launches: what the framework spends."""
        return self.scale * (self.python_us + self.op_us[fam])

    @classmethod
    def from_json(cls, d: Any, where: str) -> HostCosts:
        if not isinstance(d, Mapping):
            raise SpecError(f"{where}: host costs must be an object")
        known = {"op_us", "python_us", "scale", "record_us", "wait_us", "source"}
        unknown = set(d) - known
        if unknown:
            raise SpecError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        if not isinstance(d.get("op_us"), Mapping):
            raise SpecError(f"{where}: op_us must be an object of family -> microseconds")
        try:
            return cls(
                dict(d["op_us"]),
                d.get("python_us", 0.0),
                d.get("scale", 1.0),
                d.get("record_us", 0.0),
                d.get("wait_us", 0.0),
                str(d.get("source", "")),
            )
        except SpecError as e:
            raise SpecError(f"{where}: {e}") from None

    def to_json(self) -> dict[str, Any]:
        return {
            "op_us": dict(self.op_us),
            "python_us": self.python_us,
            "scale": self.scale,
            "record_us": self.record_us,
            "wait_us": self.wait_us,
            "source": self.source,
        }


@functools.cache
def committed_costs() -> dict[str, HostCosts]:
    """The committed fit, by runtime name."""
    data = json.loads(DATA.read_text())
    return {
        name: HostCosts.from_json(entry, f"{DATA.name}: {name}")
        for name, entry in data["runtimes"].items()
    }


@dataclass(frozen=True)
class Call:
    """One host call of a runtime: the framework time before it, its kernels."""

    family: str
    kernels: list[Kernel] = field(default_factory=list)


class Runtime:
    """How a graph's ops become host calls. Subclasses set the class attributes and,
    where the runtime does not run the graph's (fused) ops one call each, ``calls``.

    ``graph_mode``: the program is captured once and replayed as one CUDA Graph; host
    costs of its calls then do not count, only the graph launch does.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    graph_mode: ClassVar[bool] = False
    # the entry of host_costs.json this runtime's CPU times come from
    costs_of: ClassVar[str] = ""

    def __init__(self, costs: HostCosts | None = None) -> None:
        self._costs = costs

    @property
    def costs(self) -> HostCosts:
        if self._costs is None:
            self._costs = committed_costs()[self.costs_of or self.name]
        return self._costs

    def calls(self, graph: OpGraph, op: str, kernels: list[Kernel], gpu: GPUSpec) -> list[Call]:
        """The host calls that run ``op``, given the kernels its fused form lowers to."""
        return [Call(family(graph[op], kernels), kernels)]

    def launches(
        self, graph: OpGraph, op: str, kernels: list[Kernel], stream: int, device: int,
        gpu: GPUSpec,
    ) -> list[Launch]:  # fmt: skip
        """Launch commands of ``op``: the first kernel of each call carries the call's
        framework time and its launch, every further kernel one more launch. Captured
        in a CUDA Graph, calls cost the host nothing (the graph launch is the host's)."""
        if self.graph_mode:
            return [Launch(op, k, stream, device, 0.0)
                    for call in self.calls(graph, op, kernels, gpu)
                    for k in (call.kernels or [None])]  # fmt: skip
        if graph[op].kind == "input":  # the caller's tensor: no call makes it
            return [Launch(op, None, stream, device, 0.0)]
        costs = self.costs
        api = gpu.launch_api_us
        out: list[Launch] = []
        for call in self.calls(graph, op, kernels, gpu):
            fw = costs.framework_us(call.family)
            if not call.kernels:
                out.append(Launch(op, None, stream, device, fw))
                continue
            for i, k in enumerate(call.kernels):
                out.append(Launch(op, k, stream, device, (fw if i == 0 else 0.0) + api))
        return out

    def record_us(self, gpu: GPUSpec) -> float:
        return self.costs.scale * self.costs.record_us + gpu.event_record_api_us

    def wait_us(self, gpu: GPUSpec) -> float:
        return self.costs.scale * self.costs.wait_us + gpu.event_wait_api_us


# --- un-fusing: what eager frameworks run as separate kernels --------------------------


def unfused_calls(graph: OpGraph, op: str, kernels: list[Kernel], gpu: GPUSpec) -> list[Call]:
    """A conv (or linear) with BatchNorm folded in and its activation fused, as eager
    PyTorch runs it: the conv's kernels, then a BatchNorm kernel, then the activation's,
    each its own call. Every other op is one call."""
    o = graph[op]
    if o.kind not in ("conv", "conv_transpose", "linear") or not kernels:
        return [Call(family(o, kernels), kernels)]
    out = [Call(family(o, kernels), kernels)]
    n = numel(o.output_shape)
    nbytes = float(n * o.dtype_bytes)
    if o.attrs.get("folded_bn"):
        # y = x * scale + shift per channel: read and write the tensor once
        out.append(Call("norm", [_streaming(op, "batch_norm_inference", n, 2.0 * n,
                                            2.0 * nbytes, o.dtype, gpu)]))  # fmt: skip
    act = o.attrs.get("activation")
    if act:
        out.append(Call("elementwise", [_streaming(op, f"elementwise_{act}", n, float(n),
                                                   2.0 * nbytes, o.dtype, gpu)]))  # fmt: skip
    return out
