"""Timeline: what happened, when — the simulator's output and the metrics read from it.

The same types describe a simulated run and (later) a measured one, so the two can be
compared field by field. Times are microseconds from the start of the program.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

# Records are NamedTuples, not frozen dataclasses: a simulation makes one per command,
# and a tuple is built several times faster — it showed in the throughput profile.


class KernelRecord(NamedTuple):
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
    # when it left its hardware queue (its host issue, stream order and event waits all
    # met); its first block then waits for the kernel gap and SM space. -1: not recorded
    # (a record read from a trace). Read by `simgpu explain`.
    release_us: float = -1.0


class CommandRecord(NamedTuple):
    """A non-kernel stream command: event record, event wait, or an op with no device work."""

    kind: str  # "record" | "wait" | "noop"
    device: int
    stream: int
    issue_us: float
    done_us: float
    event: str | None = None
    op: str | None = None


class CopyRecord(NamedTuple):
    """A peer copy: issued on ``stream`` of ``device``, moved ``bytes`` from GPU ``src``
    to GPU ``dst`` on a copy engine from ``start_us`` (latency included) to ``end_us``."""

    tensor: str | None
    device: int
    stream: int
    src: int
    dst: int
    bytes: int
    issue_us: float
    start_us: float
    end_us: float


class HostRecord(NamedTuple):
    """Time the host thread spent in one API call (or blocked in a synchronize)."""

    api: str
    device: int
    start_us: float
    end_us: float
    op: str | None = None


@dataclass
class MemoryTrack:
    """One device's memory over a run (:mod:`simgpu.memory` fills it): ``samples`` are
    (time_us, allocated bytes, reserved bytes) at every change."""

    device: int
    samples: list[tuple[float, int, int]]
    peak_allocated: int
    peak_reserved: int
    peak_at_us: float
    peak_op: str | None
    weights: int


@dataclass
class Timeline:
    """A finished run. ``counters`` sample SMs busy, DRAM GB/s and the fraction of the
    GPU's compute in use at every change."""

    gpu_names: list[str]
    sm_counts: list[int]
    kernels: list[KernelRecord] = field(default_factory=list)
    commands: list[CommandRecord] = field(default_factory=list)
    host: list[HostRecord] = field(default_factory=list)
    makespan_us: float = 0.0
    # per device: change points (time_us, busy SMs, DRAM GB/s drawn, compute fraction)
    counters: list[list[tuple[float, int, float, float]]] = field(default_factory=list)
    # per device: microseconds each SM had at least one resident block. A simulator
    # fills ``sm_transitions`` (time, +1 busy / -1 idle, SM indices) instead, and the
    # array is derived on first use: most runs (a scheduler's search) never ask for it.
    sm_busy_us: list[np.ndarray] = field(default_factory=list)
    sm_transitions: list[list[tuple[float, int, list[int]]]] = field(default_factory=list)
    events: int = 0  # SimPy events scheduled, for the throughput benchmark
    copies: list[CopyRecord] = field(default_factory=list)  # peer copies, by start
    # per device, set by simgpu.memory.account (None: memory not accounted for this run)
    memory: list[MemoryTrack] | None = None

    def sm_busy(self, device: int = 0) -> np.ndarray:
        """Microseconds each SM of ``device`` had a resident block."""
        if not self.sm_busy_us and self.sm_transitions:
            self.sm_busy_us = [
                _busy_from_transitions(tr, n, self.makespan_us)
                for tr, n in zip(self.sm_transitions, self.sm_counts, strict=True)
            ]
        if not self.sm_busy_us:
            return np.zeros(self.sm_counts[device])
        return self.sm_busy_us[device]

    @property
    def latency_ms(self) -> float:
        return self.makespan_us / 1e3

    @property
    def streams(self) -> list[tuple[int, int]]:
        """(device, stream) pairs that ran anything."""
        seen = {(k.device, k.stream) for k in self.kernels}
        seen |= {(c.device, c.stream) for c in self.commands}
        seen |= {(c.device, c.stream) for c in self.copies}
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
        return self.sm_busy(device) / self.makespan_us

    def mean_sm_utilisation(self, device: int = 0) -> float:
        return float(self.sm_utilisation(device).mean())

    def kernel_time_us(self) -> float:
        """Sum of kernel durations: the time a fully serial GPU would spend in kernels."""
        return float(sum(k.end_us - k.start_us for k in self.kernels))


def _busy_from_transitions(
    transitions: list[tuple[float, int, list[int]]], n: int, end: float
) -> np.ndarray:
    """Per-SM busy time: each SM's busy periods start and end at logged transitions."""
    acc = np.zeros(n)
    if not transitions:
        return acc
    idx = np.fromiter((i for _, _, sms in transitions for i in sms), dtype=np.int64)
    sign = np.fromiter((sg for _, sg, sms in transitions for _ in sms), dtype=np.float64)
    when = np.fromiter((t for t, _, sms in transitions for _ in sms), dtype=np.float64)
    np.add.at(acc, idx, -sign * when)
    still = np.zeros(n)
    np.add.at(still, idx, sign)
    return acc + still * end
