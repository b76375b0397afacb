"""The marker of tests that need a CUDA GPU (skipped on CI's machines, which have none)."""

from __future__ import annotations

import pytest


def has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


gpu_only = pytest.mark.skipif(not has_cuda(), reason="needs torch with a CUDA GPU")
