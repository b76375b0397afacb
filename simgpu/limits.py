"""Size limits on user input, checked before the work they would cause.

A batch of 10^9, 10^9 output channels or 10^8 streams would not fail: they would run
until the machine ran out of memory. Each limit here is far above anything the zoo needs
(every model runs at batch 1024 and image size 2048) and can be raised with an
environment variable, ``SIMGPU_MAX_<NAME>``; hitting one is a one-line error that says
which and how.
"""

from __future__ import annotations

import os

from simgpu.errors import SimGPUError

DEFAULTS: dict[str, int] = {
    "batch": 4096,
    "image_size": 8192,
    "op_elements": 2**34,  # elements of one op's output (64 GiB of fp32)
    "ops": 1_000_000,  # ops of one graph
    "streams": 1024,  # streams or groups of one schedule, and stream options
    "gpus": 128,  # GPUs of one machine (an NVL72 rack has 72)
    "requests": 1_000_000,  # requests per tenant of a multi-tenant run
    "budget": 100_000,  # candidates a multi-tenant search simulates
    "grid_rows": 100_000,  # combinations of one sweep
    "kernel_blocks": 2**27,  # blocks of one recorded or measured kernel
    # kernels one multi-tenant comparison simulates: about 30k a second, so ~10 minutes
    "simulated_kernels": 20_000_000,
}


class LimitError(SimGPUError):
    """Input larger than a size limit."""


def limit(name: str) -> int:
    env = f"SIMGPU_MAX_{name.upper()}"
    raw = os.environ.get(env)
    if raw is None:
        return DEFAULTS[name]
    try:
        v = int(raw)
    except ValueError:
        raise LimitError(f"{env} must be an integer, got {raw!r}") from None
    if v <= 0:
        raise LimitError(f"{env} must be positive, got {raw!r}")
    return v


def check(name: str, value: int, what: str) -> None:
    """Raise a LimitError if ``value`` is over the ``name`` limit; ``what`` says where."""
    lim = limit(name)
    if value > lim:
        raise LimitError(
            f"{what} is {value:,}, over the limit of {lim:,} "
            f"(set SIMGPU_MAX_{name.upper()} to raise it)"
        )
