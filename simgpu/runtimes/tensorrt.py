"""TensorRT: an engine of fused layers."""

from __future__ import annotations

from simgpu.graph import OpGraph
from simgpu.hardware import GPUSpec
from simgpu.kernels import Kernel
from simgpu.runtimes import register_runtime
from simgpu.runtimes.base import Call, Runtime, family


@register_runtime("tensorrt")
class TensorRT(Runtime):
    """TensorRT: fused layers, one launch per layer, no Python; concatenation elided.

    A layer is the graph's fused op (conv + BN + activation). Concatenations cost no
    kernel: TensorRT has the producers write into the concatenated buffer. ``enqueue``
    is the launches themselves, plus the engine's small per-layer bookkeeping.
    """

    description = "TensorRT engine: fused layers, one launch each, concat elided"

    def calls(self, graph: OpGraph, op: str, kernels: list[Kernel], gpu: GPUSpec) -> list[Call]:
        o = graph[op]
        if o.kind == "concat":
            return [Call("view", [])]  # its producers write into the concatenated buffer
        return [Call(family(o, kernels), kernels)]
