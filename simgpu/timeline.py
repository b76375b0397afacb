"""Timeline: what happened, when — the simulator's output and the metrics read from it.

The same types describe a simulated run and (later) a measured one, so the two can be
compared field by field. Times are microseconds from the start of the program.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class KernelRecord:
    """One kernel: issued by the host at ``issue_us``, ran from ``start_us`` to ``end_us``."""

    op: str
    name: str
    device: int
    stream: int
    queue: int
    issue_us: float
    start_us: float
    end_us: float
    grid: int
    threads: int
    batches: int  # dispatch batches (waves) it took


@dataclass(frozen=True)
class CommandRecord:
    """A non-kernel stream command: event record, event wait, or an op with no device work."""

    kind: str  # "record" | "wait" | "noop"
    device: int
    stream: int
    issue_us: float
    done_us: float
    event: str | None = None
    op: str | None = None


@dataclass(frozen=True)
class HostRecord:
    """Time the host thread spent in one API call (or blocked in a synchronize)."""

    api: str
    device: int
    start_us: float
    end_us: float
    op: str | None = None


@dataclass
class Timeline:
    """A finished run. ``counters`` sample SMs busy and DRAM GB/s at every change."""

    gpu_names: list[str]
    sm_counts: list[int]
    kernels: list[KernelRecord] = field(default_factory=list)
    commands: list[CommandRecord] = field(default_factory=list)
    host: list[HostRecord] = field(default_factory=list)
    makespan_us: float = 0.0
    # per device: change points (time_us, busy SMs, DRAM GB/s in use)
    counters: list[list[tuple[float, int, float]]] = field(default_factory=list)
    # per device: microseconds each SM had at least one resident block
    sm_busy_us: list[np.ndarray] = field(default_factory=list)
    events: int = 0  # SimPy events processed, for the throughput benchmark

    @property
    def latency_ms(self) -> float:
        return self.makespan_us / 1e3

    @property
    def streams(self) -> list[tuple[int, int]]:
        """(device, stream) pairs that ran anything."""
        seen = {(k.device, k.stream) for k in self.kernels}
        seen |= {(c.device, c.stream) for c in self.commands}
        return sorted(seen)

    def stream_utilisation(self) -> dict[tuple[int, int], float]:
        """Fraction of the makespan each stream had a kernel running."""
        if self.makespan_us <= 0:
            return {}
        busy: dict[tuple[int, int], float] = {}
        for k in self.kernels:
            key = (k.device, k.stream)
            busy[key] = busy.get(key, 0.0) + (k.end_us - k.start_us)
        return {s: busy.get(s, 0.0) / self.makespan_us for s in self.streams}

    def sm_utilisation(self, device: int = 0) -> np.ndarray:
        """Per SM, the fraction of the makespan it had at least one resident block."""
        if self.makespan_us <= 0:
            return np.zeros(self.sm_counts[device])
        return self.sm_busy_us[device] / self.makespan_us

    def mean_sm_utilisation(self, device: int = 0) -> float:
        return float(self.sm_utilisation(device).mean())

    def kernel_time_us(self) -> float:
        """Sum of kernel durations: the time a fully serial GPU would spend in kernels."""
        return float(sum(k.end_us - k.start_us for k in self.kernels))
