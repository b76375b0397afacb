"""Errors of the calibration package: all SimGPUErrors, so the CLI prints one line."""

from __future__ import annotations

from simgpu.errors import FormatError, SimGPUError


class TraceError(FormatError):
    """A profiler trace is unreadable or lacks what replay needs (names file and event)."""


class CalibrationError(SimGPUError):
    """Calibration input or output is unusable (bad measurements, unwritable folder)."""


class NoGPUError(CalibrationError):
    """A step that must run on a CUDA GPU was asked to run where there is none."""


def require_cuda(what: str):
    """Import torch and check for a CUDA device; refuse clearly otherwise.

    Returns the torch module so callers need no import of their own.
    """
    try:
        import torch
    except ImportError:
        raise NoGPUError(
            f"{what} needs PyTorch with CUDA, and torch is not installed here"
        ) from None
    if not torch.cuda.is_available():
        raise NoGPUError(f"{what} needs a CUDA GPU, and torch sees none on this machine")
    return torch
