"""Runtimes: one module each, registered by name, as schedulers are.

``(graph, schedule, runtime) -> StreamProgram`` is lowering: a runtime decides which
host calls and kernels each op becomes and what each call costs the CPU
(:mod:`simgpu.runtimes.base`). Adding a runtime is adding a module here whose class is
decorated with :func:`register_runtime`.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

from simgpu.runtimes.base import (
    FAMILIES,
    Call,
    HostCosts,
    Runtime,
    UnknownRuntime,
    committed_costs,
    family,
    unfused_calls,
)

__all__ = [
    "FAMILIES",
    "RUNTIMES",
    "Call",
    "HostCosts",
    "Runtime",
    "UnknownRuntime",
    "committed_costs",
    "family",
    "get_runtime",
    "register_runtime",
    "runtime_names",
    "unfused_calls",
]

RUNTIMES: dict[str, type[Runtime]] = {}
_discovered = False


def register_runtime(name: str) -> Callable[[type[Runtime]], type[Runtime]]:
    """Class decorator: make a runtime available by ``name``."""

    def deco(cls: type[Runtime]) -> type[Runtime]:
        if name in RUNTIMES and RUNTIMES[name] is not cls:
            raise ValueError(f"runtime '{name}' registered twice")
        cls.name = name
        RUNTIMES[name] = cls
        return cls

    return deco


def _discover() -> dict[str, type[Runtime]]:
    global _discovered
    if not _discovered:
        import simgpu.runtimes as pkg

        for mod in pkgutil.iter_modules(pkg.__path__):
            if mod.name != "base" and not mod.name.startswith("_"):
                importlib.import_module(f"simgpu.runtimes.{mod.name}")
        _discovered = True
    return RUNTIMES


def runtime_names() -> list[str]:
    return sorted(_discover())


def get_runtime(name: str | Runtime) -> Runtime:
    """The runtime called ``name`` with its committed host costs (a Runtime passes)."""
    if isinstance(name, Runtime):
        return name
    reg = _discover()
    cls = reg.get(name)
    if cls is None:
        raise UnknownRuntime(f"unknown runtime '{name}' (known: {', '.join(sorted(reg))})")
    return cls()
