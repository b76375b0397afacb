"""Multi-tenant workloads: several models sharing one GPU, each with its own requests.

A :class:`Tenant` is a model (an OpGraph at a batch size), a request arrival process and
an optional latency SLO; a :class:`Workload` is the tenants plus how long to run and a
seed. Arrival times come from a seeded numpy Generator, one independent stream per
tenant (``SeedSequence.spawn``), so adding a tenant never changes another's arrivals and
the same seed gives the same requests bit for bit.

Arrival processes (the setting of Yu et al., ICCAD 2021):

* ``closed`` — closed loop: the next request arrives the moment the previous one
  completes (a client that always waits for its answer); one request outstanding.
* ``poisson:RATE`` — open loop, exponential inter-arrival times, RATE requests/s.
* ``periodic:MS`` — open loop, one request every MS milliseconds (a camera frame rate).

A run stops issuing new arrivals after ``requests`` per tenant or after ``duration_ms``;
every admitted request then runs to completion. Admission: with ``max_queue`` set, a
request that finds that many requests of its tenant already waiting is dropped (and
reported as such) instead of queued.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from simgpu.errors import SimGPUError
from simgpu.graph import OpGraph


class WorkloadError(SimGPUError):
    """A tenant or workload description is malformed (bad arrival spec, bad count...)."""


ARRIVAL_KINDS = ("closed", "poisson", "periodic")


@dataclass(frozen=True)
class Arrival:
    """How a tenant's requests arrive. ``rate_rps`` for poisson, ``period_ms`` for
    periodic, neither for closed."""

    kind: str = "closed"
    rate_rps: float | None = None
    period_ms: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in ARRIVAL_KINDS:
            raise WorkloadError(
                f"arrival kind {self.kind!r} unknown (closed, poisson:RATE, periodic:MS)"
            )
        if self.kind == "poisson" and not _positive_finite(self.rate_rps):
            raise WorkloadError(f"poisson arrival needs a positive rate, got {self.rate_rps!r}")
        if self.kind == "periodic" and not _positive_finite(self.period_ms):
            raise WorkloadError(f"periodic arrival needs a positive period, got {self.period_ms!r}")

    @property
    def open_loop(self) -> bool:
        return self.kind != "closed"

    def __str__(self) -> str:
        if self.kind == "poisson":
            return f"poisson:{self.rate_rps:g}"
        if self.kind == "periodic":
            return f"periodic:{self.period_ms:g}"
        return "closed"


def _positive_finite(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def parse_arrival(spec: str) -> Arrival:
    """``closed``, ``poisson:RATE`` (requests/s) or ``periodic:MS`` -> Arrival."""
    text = spec.strip()
    kind, colon, arg = text.partition(":")
    kind = kind.strip().lower()
    if kind == "closed":
        if colon:
            raise WorkloadError(f"arrival {spec!r}: closed takes no argument")
        return Arrival("closed")
    if kind not in ("poisson", "periodic"):
        raise WorkloadError(
            f"arrival {spec!r}: unknown process (closed, poisson:RATE or periodic:MS)"
        )
    if not colon or not arg.strip():
        what = "RATE in requests/s" if kind == "poisson" else "MS between requests"
        raise WorkloadError(f"arrival {spec!r}: {kind} needs {what}, e.g. {kind}:100")
    try:
        value = float(arg)
    except ValueError:
        raise WorkloadError(f"arrival {spec!r}: {arg.strip()!r} is not a number") from None
    if not _positive_finite(value):
        raise WorkloadError(f"arrival {spec!r}: {arg.strip()} must be a positive number")
    # bounds far outside any serving workload: below them no request ever arrives in a
    # run, above them the arrival list itself would not fit in memory
    lo, hi, unit = (1e-3, 1e7, "requests/s") if kind == "poisson" else (1e-4, 1e7, "ms")
    if not lo <= value <= hi:
        raise WorkloadError(f"arrival {spec!r}: {kind} takes {lo:g} to {hi:g} {unit}")
    if kind == "poisson":
        return Arrival("poisson", rate_rps=value)
    return Arrival("periodic", period_ms=value)


@dataclass(frozen=True)
class Tenant:
    """One model served on the shared GPU. ``name`` tags its ops in traces."""

    name: str
    graph: OpGraph
    arrival: Arrival = field(default_factory=Arrival)
    slo_ms: float | None = None
    max_queue: int | None = None  # admission: drop a request finding this many waiting (>= 1)

    def __post_init__(self) -> None:
        if not self.name or any(c in self.name for c in "#/\n"):
            raise WorkloadError(f"tenant name {self.name!r} must be non-empty without '#' or '/'")
        if not isinstance(self.graph, OpGraph):
            raise WorkloadError(f"tenant '{self.name}': graph must be an OpGraph")
        if self.slo_ms is not None and not _positive_finite(self.slo_ms):
            raise WorkloadError(
                f"tenant '{self.name}': SLO must be positive ms, got {self.slo_ms!r}"
            )
        if self.max_queue is not None and (
            not isinstance(self.max_queue, int) or isinstance(self.max_queue, bool)
            or self.max_queue < 1
        ):  # fmt: skip
            raise WorkloadError(
                f"tenant '{self.name}': max_queue must be a positive integer, "
                f"got {self.max_queue!r}"
            )

    @property
    def model(self) -> str:
        return self.graph.name


@dataclass(frozen=True)
class Workload:
    """Tenants sharing one GPU, for ``requests`` arrivals per tenant or ``duration_ms``."""

    tenants: tuple[Tenant, ...]
    requests: int | None = None  # neither this nor a duration: 10 requests per tenant
    duration_ms: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "tenants", tuple(self.tenants))
        if not self.tenants:
            raise WorkloadError("a workload needs at least one tenant")
        names = [t.name for t in self.tenants]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise WorkloadError(f"tenant names must be unique: {', '.join(dup)} repeated")
        if self.requests is None and self.duration_ms is None:
            object.__setattr__(self, "requests", 10)
        if self.requests is not None and self.duration_ms is not None:
            raise WorkloadError("give a request count or a duration, not both")
        if self.requests is not None and (
            not isinstance(self.requests, int) or isinstance(self.requests, bool)
            or self.requests < 1
        ):  # fmt: skip
            raise WorkloadError(f"requests must be a positive integer, got {self.requests!r}")
        if self.duration_ms is not None and not _positive_finite(self.duration_ms):
            raise WorkloadError(f"duration must be positive ms, got {self.duration_ms!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise WorkloadError(f"seed must be a non-negative integer, got {self.seed!r}")

    @property
    def horizon_us(self) -> float | None:
        return None if self.duration_ms is None else self.duration_ms * 1e3

    def generators(self) -> list[np.random.Generator]:
        """One independent Generator per tenant, from the workload seed."""
        seqs = np.random.SeedSequence(self.seed).spawn(len(self.tenants))
        return [np.random.default_rng(s) for s in seqs]

    def open_arrivals_us(self) -> list[list[float] | None]:
        """Per tenant, its open-loop arrival times in microseconds (None: closed loop)."""
        out: list[list[float] | None] = []
        for tenant, rng in zip(self.tenants, self.generators(), strict=True):
            out.append(arrival_times_us(tenant.arrival, rng, self.requests, self.horizon_us))
        return out

    def describe(self) -> dict[str, object]:
        return {
            "tenants": [
                {
                    "name": t.name,
                    "model": t.model,
                    "ops": len(t.graph),
                    "arrival": str(t.arrival),
                    "slo_ms": t.slo_ms,
                    "max_queue": t.max_queue,
                }
                for t in self.tenants
            ],
            "requests": self.requests,
            "duration_ms": self.duration_ms,
            "seed": self.seed,
        }


def arrival_times_us(
    arrival: Arrival,
    rng: np.random.Generator,
    requests: int | None,
    horizon_us: float | None,
) -> list[float] | None:
    """Open-loop arrival times: the first ``requests`` of them, or all before the horizon.
    Closed loop has none in advance (they follow completions): None."""
    if arrival.kind == "closed":
        return None
    times: list[float] = []
    t = 0.0
    while True:
        if arrival.kind == "poisson":
            assert arrival.rate_rps is not None
            t += float(rng.exponential(1e6 / arrival.rate_rps))
        elif times:  # periodic: the first request at time 0
            assert arrival.period_ms is not None
            t = len(times) * arrival.period_ms * 1e3
        if horizon_us is not None and t >= horizon_us:
            return times
        times.append(t)
        if requests is not None and len(times) >= requests:
            return times


def make_tenants(
    graphs: Sequence[OpGraph],
    arrivals: Sequence[Arrival] | Arrival = Arrival(),
    slo_ms: float | None = None,
    max_queue: int | None = None,
) -> tuple[Tenant, ...]:
    """Tenants named after their graphs ("resnet50", a repeat "resnet50_1")."""
    if isinstance(arrivals, Arrival):
        arrivals = [arrivals] * len(graphs)
    if len(arrivals) != len(graphs):
        raise WorkloadError(
            f"{len(arrivals)} arrival processes for {len(graphs)} tenants: give one, or one each"
        )
    names: list[str] = []
    for g in graphs:
        name, k = g.name.replace("/", "_").replace("#", "_") or "model", 0
        base = name
        while name in names:
            k += 1
            name = f"{base}_{k}"
        names.append(name)
    return tuple(
        Tenant(n, g, a, slo_ms, max_queue) for n, g, a in zip(names, graphs, arrivals, strict=True)
    )
