"""A CUDA Graph captured from eager PyTorch and replayed."""

from __future__ import annotations

from simgpu.graph import OpGraph
from simgpu.hardware import GPUSpec
from simgpu.kernels import Kernel
from simgpu.runtimes import register_runtime
from simgpu.runtimes.base import Call, Runtime, unfused_calls


@register_runtime("cuda-graph")
class CudaGraph(Runtime):
    """CUDA Graph: capture once, replay with one launch; kernels pay only device latency.

    What is captured is what eager PyTorch launches (Nimble captures a PyTorch model's
    kernels), so convs, BatchNorms and activations stay separate kernels; each pays the
    GPU's ``graph_node_us`` on the device instead of a host call.
    """

    description = "CUDA Graph replay of the eager kernels: one launch, no per-op host cost"
    graph_mode = True
    costs_of = "pytorch-eager"  # only used if a caller prices the calls anyway

    def calls(self, graph: OpGraph, op: str, kernels: list[Kernel], gpu: GPUSpec) -> list[Call]:
        return unfused_calls(graph, op, kernels, gpu)
