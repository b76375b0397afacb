"""simgpu: a discrete-event GPU simulator for inter-operator scheduling.

The names a script needs are importable from here (``from simgpu import build_model``):

- :func:`build_model` (a built-in model) and :func:`load_graph` (a model name or a graph
  file: simgpu graph JSON, IOS graph JSON or ONNX),
- :func:`load_gpu` and :func:`load_machine` (a preset name or a JSON file),
- :func:`run_scheduler` (schedule, lower and simulate once: a RunResult),
- :func:`simulate` (a StreamProgram on a GPU or machine: a Timeline), :class:`Timeline`.

(:func:`simgpu.explain.explain` reads a Timeline's critical path; it is not re-exported:
the name ``simgpu.explain`` is its module.)

They load on first use: ``import simgpu`` stays cheap, and the simulator package
(:mod:`simgpu.sim`) never imports a scheduler (the schedulers import it).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "build_model": "simgpu.models",
    "load_graph": "simgpu.graphfile",
    "load_gpu": "simgpu.hardware",
    "load_machine": "simgpu.hardware",
    "run_scheduler": "schedulers.base",
    "simulate": "simgpu.sim.engine",
    "Timeline": "simgpu.timeline",
}

__all__ = [
    "Timeline",
    "__version__",
    "build_model",
    "load_gpu",
    "load_graph",
    "load_machine",
    "run_scheduler",
    "simulate",
]

if TYPE_CHECKING:
    from schedulers.base import run_scheduler
    from simgpu.graphfile import load_graph
    from simgpu.hardware import load_gpu, load_machine
    from simgpu.models import build_model
    from simgpu.sim.engine import simulate
    from simgpu.timeline import Timeline


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'simgpu' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # once: later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
