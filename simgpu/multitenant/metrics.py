"""What a multi-tenant run reports: throughput, latency percentiles, SLOs, utilisation.

Throughput counts completed requests over the run's span — from time 0 to the last
completion, or to the end of the arrival window when that is later — so a fixed
request count per tenant compares policies on the same mix of work. Percentiles are
nearest-rank (an observed latency, never an interpolation). SLO attainment is the
fraction of *arrivals* that completed within the SLO: a dropped request is a miss.
Memory figures (peak allocated and reserved MB, per tenant and for the GPU) come from
:func:`simgpu.multitenant.memory.replay`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from simgpu.multitenant.memory import RunMemory, replay
from simgpu.sim.tenants import MultiTenantRun


def percentile_ms(lat_us: list[float], q: float) -> float | None:
    if not lat_us:
        return None
    return float(np.percentile(np.asarray(lat_us), q, method="inverted_cdf")) / 1e3


@dataclass
class TenantMetrics:
    name: str
    model: str
    arrivals: int
    completed: int
    dropped: int
    throughput_rps: float
    mean_ms: float | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    slo_ms: float | None
    slo_attainment: float | None
    kernels_per_request: int
    # memory (None without a memory report): weights + peak live activations, the peak
    # segments of its own pools, its weights, and what admission reserves per request
    peak_memory_mb: float | None = None
    reserved_memory_mb: float | None = None
    weights_memory_mb: float | None = None
    request_memory_mb: float | None = None


@dataclass
class RunMetrics:
    """One policy's run of a workload (JSON keys are these field names)."""

    scheduler: str
    throughput_rps: float
    goodput_rps: float
    arrivals: int
    completed: int
    dropped: int
    mean_ms: float | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    slo_attainment: float | None
    sm_utilisation: float
    dram_utilisation: float
    span_ms: float
    kernels: int
    streams: int
    mode: str
    tenants: list[TenantMetrics] = field(default_factory=list)
    # the GPU's peak allocated and reserved MB (None without a memory report), the
    # tenants' weights, the admission limit, and requests that waited for memory
    peak_memory_mb: float | None = None
    reserved_memory_mb: float | None = None
    weights_memory_mb: float | None = None
    memory_limit_mb: float | None = None
    memory_waits: int = 0
    memory_notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        extra = d.pop("extra")
        d.update(extra)
        return d


def measure(
    run: MultiTenantRun, scheduler: str | None = None, memory: RunMemory | None = None
) -> RunMetrics:
    """Metrics of a finished run; its memory figures from ``memory`` (default: the
    run's allocations replayed here, :func:`simgpu.multitenant.memory.replay`)."""
    if memory is None:
        memory = replay(run)
    wl = run.workload
    span_us = run.end_us
    span_s = span_us / 1e6 if span_us > 0 else float("nan")
    tenants: list[TenantMetrics] = []
    all_lat: list[float] = []
    met_total = 0
    slo_arrivals = 0
    any_slo = False
    for t, ten in enumerate(wl.tenants):
        recs = [r for r in run.requests if r.tenant == t]
        lat = [r.latency_us for r in recs if r.latency_us is not None]
        dropped = sum(1 for r in recs if r.dropped)
        all_lat += lat
        att = None
        if ten.slo_ms is not None:
            any_slo = True
            met = sum(1 for x in lat if x <= ten.slo_ms * 1e3)
            met_total += met
            slo_arrivals += len(recs)
            att = met / len(recs) if recs else None
        else:
            met_total += len(lat)
        tenants.append(
            TenantMetrics(
                name=ten.name,
                model=ten.model,
                arrivals=len(recs),
                completed=len(lat),
                dropped=dropped,
                throughput_rps=len(lat) / span_s if span_us > 0 else 0.0,
                mean_ms=float(np.mean(lat)) / 1e3 if lat else None,
                p50_ms=percentile_ms(lat, 50),
                p95_ms=percentile_ms(lat, 95),
                p99_ms=percentile_ms(lat, 99),
                slo_ms=ten.slo_ms,
                slo_attainment=att,
                kernels_per_request=run.kernels_per_request[t],
                **memory.tenant_json(t),
            )
        )
    slo_met = sum(
        1
        for r in run.requests
        if r.latency_us is not None
        and wl.tenants[r.tenant].slo_ms is not None
        and r.latency_us <= wl.tenants[r.tenant].slo_ms * 1e3  # type: ignore[operator]
    )
    tl = run.timeline
    sm = float(tl.sm_busy(0).mean()) / span_us if span_us > 0 else 0.0
    return RunMetrics(
        scheduler=scheduler or run.plan.name,
        throughput_rps=len(all_lat) / span_s if span_us > 0 else 0.0,
        goodput_rps=met_total / span_s if span_us > 0 else 0.0,
        arrivals=len(run.requests),
        completed=len(all_lat),
        dropped=sum(1 for r in run.requests if r.dropped),
        mean_ms=float(np.mean(all_lat)) / 1e3 if all_lat else None,
        p50_ms=percentile_ms(all_lat, 50),
        p95_ms=percentile_ms(all_lat, 95),
        p99_ms=percentile_ms(all_lat, 99),
        slo_attainment=(slo_met / slo_arrivals if slo_arrivals else None) if any_slo else None,
        sm_utilisation=sm,
        dram_utilisation=dram_utilisation(run, span_us),
        span_ms=span_us / 1e3,
        kernels=len(tl.kernels),
        streams=len(run.plan.streams),
        mode=run.plan.mode,
        tenants=tenants,
        memory_waits=sum(1 for r in run.requests if r.memory_wait),
        **_run_memory(memory),
    )


def _run_memory(memory: RunMemory) -> dict[str, Any]:
    j = memory.to_json()
    return {k: j[k] for k in ("peak_memory_mb", "reserved_memory_mb", "weights_memory_mb",
                              "memory_limit_mb", "memory_notes")}  # fmt: skip


def dram_utilisation(run: MultiTenantRun, span_us: float) -> float:
    """DRAM traffic over the span as a fraction of the GPU's peak bandwidth."""
    points = run.timeline.counters[0] if run.timeline.counters else []
    if span_us <= 0 or not points:
        return 0.0
    total = 0.0  # GB/s x us
    for (t0, _, bw, _), (t1, *_) in zip(points, [*points[1:], (span_us, 0, 0.0, 0.0)], strict=True):
        if t1 > t0:
            total += bw * (min(t1, span_us) - t0)
    return total / (run.gpu.dram_gbps * span_us)


def objective(m: RunMetrics, slo: bool) -> tuple[float, float]:
    """What the search maximises: throughput (goodput when SLOs are set), then lower p99."""
    primary = m.goodput_rps if slo else m.throughput_rps
    return (primary, -(m.p99_ms if m.p99_ms is not None else float("inf")))


__all__ = ["RunMetrics", "TenantMetrics", "dram_utilisation", "measure", "objective"]
