"""Eager PyTorch, as torchvision models run in it."""

from __future__ import annotations

from simgpu.graph import OpGraph
from simgpu.hardware import GPUSpec
from simgpu.kernels import Kernel
from simgpu.runtimes import register_runtime
from simgpu.runtimes.base import Call, Runtime, unfused_calls


@register_runtime("pytorch-eager")
class PyTorchEager(Runtime):
    """Eager PyTorch: unfused conv, BatchNorm and activation, one Python call per op.

    Every op is an ``nn.Module`` or functional call: the interpreter between calls, then
    the dispatcher and the library call, then one ``cudaLaunchKernel`` per kernel. The
    caching allocator never blocks (it reuses freed blocks), so it is part of each
    call's framework time. Concatenation is a copy kernel (``torch.cat``).
    """

    description = "eager PyTorch: unfused conv/BN/activation, Python + dispatcher per op"

    def calls(self, graph: OpGraph, op: str, kernels: list[Kernel], gpu: GPUSpec) -> list[Call]:
        return unfused_calls(graph, op, kernels, gpu)
