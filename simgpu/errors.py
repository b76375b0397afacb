"""Errors that simgpu raises on bad input.

Every error a user can provoke is a ``SimGPUError``: the CLI prints its message on one
line and exits non-zero. Anything else escaping is a bug in simgpu.
"""


class SimGPUError(Exception):
    """Base of every user-facing error."""


class GraphError(SimGPUError):
    """An operator graph is malformed (cycle, dangling input, bad shape...)."""


class SpecError(SimGPUError):
    """A GPU or machine description is malformed or unknown."""


class LoweringError(SimGPUError):
    """An op cannot be lowered to kernels on the given GPU."""


class ScheduleError(SimGPUError):
    """A schedule misses an op, repeats one or breaks a dependency."""


class ProgramError(SimGPUError):
    """A stream program is invalid (wait before record, dependency not ordered...)."""


class DeadlockError(SimGPUError):
    """Simulation stopped with work pending and nothing able to move."""


class FormatError(SimGPUError):
    """A file is not in the format it claims to be (corrupt JSON, wrong version...)."""
