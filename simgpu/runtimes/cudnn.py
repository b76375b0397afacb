"""A C++ runtime calling cuDNN and cuBLAS directly, as IOS's does."""

from __future__ import annotations

from simgpu.runtimes import register_runtime
from simgpu.runtimes.base import Runtime


@register_runtime("cudnn")
class CuDNN(Runtime):
    """C++ over cuDNN/cuBLAS: fused conv + bias + activation, concat by copy kernels.

    The graph's ops are run as they are (BatchNorm folded into the conv, the activation
    in its epilogue); each library call costs the library's own CPU time (descriptor
    checks, algorithm dispatch), each custom kernel (copies, adds) a bare launch. No
    interpreter runs between calls. Stage barriers are ``cudaDeviceSynchronize``.
    """

    description = "C++ over cuDNN/cuBLAS (IOS): fused conv+bias+act, no Python"
