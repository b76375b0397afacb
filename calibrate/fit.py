"""Fit simulator parameters to measurements: traces, microbenchmarks, per-op profiles.

Everything here is plain arithmetic on recorded numbers (medians and least squares in
numpy), so it is tested on the shared real traces and on synthetic data without a GPU.
The output is a calibration JSON whose ``"gpu"`` object ``--gpu FILE`` accepts:

    {"format": "simgpu.calibration", "version": 1,
     "gpu": {"base": "h100-sxm", ...fitted fields, "kernel_table": {...}},
     "fits": {...how each field was obtained...}}
"""

from __future__ import annotations

import datetime as _dt
import itertools
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from calibrate.errors import CalibrationError
from calibrate.kineto import (
    RECORD_CALLS,
    WAIT_CALLS,
    GpuActivity,
    KinetoTrace,
    issue_time,
    launch_groups,
)
from simgpu.hardware import GPUSpec, gpu_from_json

LAUNCH_CALLS = {"cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx"}


def _median(xs: Sequence[float], what: str) -> float:
    if not xs:
        raise CalibrationError(f"no samples to fit {what}")
    return float(statistics.median(xs))


def _pct(xs: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs, dtype=float), q))


@dataclass(frozen=True)
class Distribution:
    """Summary of a sample (microseconds)."""

    n: int
    median: float
    mean: float
    p10: float
    p90: float
    min: float
    max: float

    @classmethod
    def of(cls, xs: Sequence[float]) -> Distribution:
        if not xs:
            raise CalibrationError("empty sample")
        return cls(
            len(xs),
            float(statistics.median(xs)),
            float(statistics.fmean(xs)),
            _pct(xs, 10),
            _pct(xs, 90),
            float(min(xs)),
            float(max(xs)),
        )

    def to_json(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in ("n", "median", "mean", "p10", "p90", "min", "max")}


# --- from a trace ---------------------------------------------------------------------


def launch_overheads(trace: KinetoTrace) -> dict[str, Distribution]:
    """Host-side distributions: launch call durations, launch-to-launch intervals, and
    event record / stream wait call durations (only the kinds the trace has)."""
    launches = [c for c in trace.calls if c.name in LAUNCH_CALLS]
    out: dict[str, Distribution] = {}
    if launches:
        out["launch_call_us"] = Distribution.of([c.dur for c in launches])
        by_tid: dict[int, list] = {}
        for c in launches:
            by_tid.setdefault(c.tid, []).append(c)
        intervals = [b.ts - a.ts for cs in by_tid.values() for a, b in itertools.pairwise(cs)]
        if intervals:
            out["launch_interval_us"] = Distribution.of(intervals)
    rec = [c.dur for c in trace.calls if c.name in RECORD_CALLS]
    if rec:
        out["event_record_call_us"] = Distribution.of(rec)
    wait = [c.dur for c in trace.calls if c.name in WAIT_CALLS]
    if wait:
        out["stream_wait_call_us"] = Distribution.of(wait)
    return out


def fit_host_costs(trace: KinetoTrace, max_dispatch_us: float = 100.0) -> dict[str, float]:
    """GPUSpec host-cost fields from a trace's runtime calls (medians).

    ``launch_api_us`` is the median launch call; ``framework_dispatch_us`` the median
    host time between one launch's return and the next launch on the same thread, over
    intervals under ``max_dispatch_us`` (longer ones are the program's own CPU work —
    data loading, Python — not per-op dispatch).
    """
    launches = [c for c in trace.calls if c.name in LAUNCH_CALLS]
    if not launches:
        raise CalibrationError(f"{trace.source}: no kernel launch calls to fit host costs")
    out = {"launch_api_us": _median([c.dur for c in launches], "launch_api_us")}
    by_tid: dict[int, list] = {}
    for c in launches:
        by_tid.setdefault(c.tid, []).append(c)
    between = [
        b.ts - a.end
        for cs in by_tid.values()
        for a, b in itertools.pairwise(cs)
        if 0 <= b.ts - a.end < max_dispatch_us
    ]
    out["framework_dispatch_us"] = _median(between, "framework_dispatch_us") if between else 0.0
    rec = [c.dur for c in trace.calls if c.name in RECORD_CALLS]
    if rec:
        out["event_record_api_us"] = _median(rec, "event_record_api_us")
    wait = [c.dur for c in trace.calls if c.name in WAIT_CALLS]
    if wait:
        out["event_wait_api_us"] = _median(wait, "event_wait_api_us")
    ret = sync_return_samples(trace)
    if ret:
        out["sync_api_us"] = max(0.0, _median(ret, "sync_api_us"))
    return out


def sync_return_samples(trace: KinetoTrace) -> list[float]:
    """How long each host synchronisation took to return once its device had finished
    the work issued before it: ``call end - max(call start, last such activity end)``.

    Replay treats every sync as a device sync, so "finished" is device-wide.
    """
    issued: list[tuple[float, float, int]] = []  # (issue time, activity end, device)
    for call, acts in launch_groups(trace):
        t = issue_time(call, acts)
        issued.extend((t, a.end, a.device) for a in acts)
    issued.sort()
    out = []
    for s in trace.syncs:
        busy = max(
            (end for t, end, dev in issued if t <= s.call.ts and dev == s.device),
            default=-math.inf,
        )
        out.append(s.call.end - max(s.call.ts, busy))
    return out


def latency_samples(trace: KinetoTrace) -> tuple[list[float], list[float]]:
    """(idle, queued) samples of device-side launch timing, per stream.

    *Queued*: the kernel was issued before its stream's previous activity ended, so it
    started a fixed gap after that end — a sample of ``kernel_gap_us``. *Idle*: its
    stream was empty when issued, so it started a latency after the issue — a sample of
    ``launch_latency_us + kernel_gap_us``. Only kernels count (copies use copy engines);
    issue times follow :func:`calibrate.kineto.issue_time`.
    """
    issue: dict[int, float] = {}
    for call, acts in launch_groups(trace):
        t = issue_time(call, acts)
        for a in acts:
            issue[a.index] = t
    # a kernel whose stream was told to wait for an event may have been held by that
    # event, not by the launch latency: such kernels are no sample of either figure
    waits: dict[tuple[int, int | None], list[float]] = {}
    for w in trace.waits:
        waits.setdefault((w.device, w.stream), []).append(w.call.ts)
    idle, queued = [], []
    last: dict[tuple[int, int], GpuActivity] = {}
    for a in trace.activities:
        key = (a.device, a.stream)
        prev = last.get(key)
        last[key] = a
        t = issue.get(a.index)
        if a.kind != "kernel" or t is None:
            continue
        since = prev.ts if prev is not None else -math.inf
        if any(since < ts <= t for ts in waits.get(key, ())):
            continue
        if prev is not None and t < prev.end:
            queued.append(a.ts - prev.end)
        else:
            idle.append(a.ts - t)
    return idle, queued


def fit_device_latencies(trace: KinetoTrace) -> dict[str, float]:
    """``kernel_gap_us`` and ``launch_latency_us`` from a trace (medians, clipped at 0).

    A trace with no queued kernels keeps the gap at 0 and puts the whole idle latency
    into the launch latency; one with no idle kernels fits only the gap.
    """
    idle, queued = latency_samples(trace)
    out: dict[str, float] = {}
    gap = max(0.0, _median(queued, "kernel_gap_us")) if queued else 0.0
    out["kernel_gap_us"] = gap
    if idle:
        out["launch_latency_us"] = max(0.0, _median(idle, "launch_latency_us") - gap)
    return out


@dataclass(frozen=True)
class KernelStat:
    """Recorded durations of one kernel at one launch configuration."""

    name: str
    grid: int
    threads: int
    regs: int
    smem: int
    durations: Distribution

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "grid": self.grid,
            "threads": self.threads,
            "regs": self.regs,
            "smem": self.smem,
            "duration_us": self.durations.median,
            "stats": self.durations.to_json(),
        }


def kernel_durations(trace: KinetoTrace) -> list[KernelStat]:
    """Kernel duration table: one row per (kernel, launch configuration), most total
    time first. The rows are in the kernel-table entry format of simgpu.kernels."""
    groups: dict[tuple[str, int, int, int, int], list[float]] = {}
    for a in trace.activities:
        if a.kind == "kernel":
            groups.setdefault((a.name, a.blocks, a.threads, max(1, a.regs), a.smem), []).append(
                a.dur
            )
    rows = [KernelStat(*k, Distribution.of(v)) for k, v in groups.items()]
    rows.sort(key=lambda r: (-r.durations.mean * r.durations.n, r.name, r.grid))
    return rows


# --- from microbenchmarks -------------------------------------------------------------


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float, float]:
    """Least-squares ``y = a + b x``: (a, b, r^2)."""
    x = np.asarray(xs, dtype=float)
    y = np.asarray(ys, dtype=float)
    if len(x) < 2 or len(x) != len(y) or np.ptp(x) == 0:
        raise CalibrationError("a line needs at least two distinct x values")
    A = np.vstack([np.ones_like(x), x]).T
    (a, b), *_ = np.linalg.lstsq(A, y, rcond=None)
    pred = a + b * x
    ss = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum((y - pred) ** 2)) / ss if ss > 0 else 1.0
    return float(a), float(b), r2


# --- writing --------------------------------------------------------------------------


def calibration(
    base: str | Mapping[str, Any],
    fields: Mapping[str, Any] | None = None,
    kernel_table: Mapping[str, Any] | None = None,
    fits: Mapping[str, Any] | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """A calibration JSON object. ``base`` is a preset name or a probe's spec JSON
    (``{"base": ..., ...}`` or a full definition); ``fields`` override it."""
    gpu: dict[str, Any] = {"base": base} if isinstance(base, str) else dict(base)
    for k, v in (fields or {}).items():
        if isinstance(v, float) and not math.isfinite(v):
            raise CalibrationError(f"fitted field {k} is {v}")
        gpu[k] = v
    if name:
        gpu["name"] = name
    if kernel_table:
        table = dict(gpu.get("kernel_table", {}))
        table.update(kernel_table)
        gpu["kernel_table"] = table
    gpu_from_json(dict(gpu), source="calibration")  # refuse to write what cannot load
    return {
        "format": "simgpu.calibration",
        "version": 1,
        "date": _dt.date.today().isoformat(),
        "gpu": gpu,
        "fits": dict(fits or {}),
    }


def fit_trace(
    trace: KinetoTrace, base: str | Mapping[str, Any] | None = None, name: str | None = None
) -> dict[str, Any]:
    """Calibration from one trace: host costs and device latencies (the per-kernel
    durations go under ``fits`` as a table; they key by kernel, not by op signature)."""
    from calibrate.probe import spec_from_facts

    if base is None:
        props = trace.props(trace.devices[0])
        if props is None:
            raise CalibrationError(f"{trace.source}: no deviceProperties: give a base GPU")
        base = spec_from_facts(props)
    fields = {**fit_host_costs(trace), **fit_device_latencies(trace)}
    fits = {
        "source": trace.source,
        "host": {k: v.to_json() for k, v in launch_overheads(trace).items()},
        "latency_samples": {
            k: len(v) for k, v in zip(("idle", "queued"), latency_samples(trace), strict=True)
        },
        "kernels": [r.to_json() for r in kernel_durations(trace)],
    }
    return calibration(base, fields, fits=fits, name=name)


def write_json(data: Any, path: str | Path) -> Path:
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
    except OSError as e:
        raise CalibrationError(f"cannot write {p}: {e.strerror or e}") from None
    return p


def load_spec(path: str | Path) -> GPUSpec:
    """The GPUSpec a calibration (or probe, or plain spec) file stands for."""
    from simgpu.hardware import load_gpu

    return load_gpu(str(path))
