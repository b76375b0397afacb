"""The learned cost model of the search: ridge regression on schedule features.

Yu et al. guide their search with a learned model of schedule performance, refit as
simulated (on a GPU: measured) runs come in. Here: features of a :class:`Genome`
under its workload — mode, lanes, stream sharing, interleaving, sync points, plus
*runtime-aware* figures from each tenant's standalone run with its lane count (latency,
SM time) combined into throughput bounds — and a ridge regression fit by least squares
in numpy, with the familiar ``fit``/``predict`` interface. It only has to *rank*
candidates well; the simulator has the last word on every schedule the search keeps.
"""

from __future__ import annotations

import math

import numpy as np

from simgpu.multitenant.genome import Genome, TenantContext

MODE_ORDER = ("exclusive", "independent", "rounds")


class RidgeModel:
    """Ridge regression on standardised features (intercept not penalised), with the
    scikit-learn ``fit``/``predict``/``score`` interface."""

    def __init__(self, alpha: float = 1.0) -> None:
        if not alpha >= 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        self.alpha = alpha
        self.coef_: np.ndarray | None = None
        self.intercept_ = 0.0
        self._mu: np.ndarray | None = None
        self._sd: np.ndarray | None = None

    def fit(self, X: np.ndarray, y: np.ndarray) -> RidgeModel:
        X = np.asarray(X, dtype=float)
        y = np.asarray(y, dtype=float)
        if X.ndim != 2 or len(X) != len(y) or len(y) == 0:
            raise ValueError(f"fit needs X (n, d) and y (n,), got {X.shape} and {y.shape}")
        self._mu = X.mean(axis=0)
        sd = X.std(axis=0)
        self._sd = np.where(sd > 0, sd, 1.0)
        Z = (X - self._mu) / self._sd
        ym = float(y.mean())
        d = Z.shape[1]
        # ridge as an augmented least-squares problem: lstsq's minimum-norm solution stays
        # defined when features are collinear or constant (few samples, alpha = 0)
        A = np.vstack([Z, math.sqrt(self.alpha) * np.eye(d)])
        rhs = np.concatenate([y - ym, np.zeros(d)])
        self.coef_ = np.linalg.lstsq(A, rhs, rcond=None)[0]
        self.intercept_ = ym
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        if self.coef_ is None or self._mu is None or self._sd is None:
            raise ValueError("predict before fit")
        Z = (np.asarray(X, dtype=float) - self._mu) / self._sd
        return Z @ self.coef_ + self.intercept_

    def score(self, X: np.ndarray, y: np.ndarray) -> float:
        """Coefficient of determination R^2 (1 is a perfect fit)."""
        y = np.asarray(y, dtype=float)
        res = float(((self.predict(X) - y) ** 2).sum())
        tot = float(((y - y.mean()) ** 2).sum())
        return 1.0 - res / tot if tot > 0 else 0.0


FEATURES = (
    "mode_exclusive",
    "mode_independent",
    "mode_rounds",
    "bound_rps",
    "serial_bound_ms",
    "work_bound_ms",
    "sum_alone_ms",
    "lane_speedup_mean",
    "streams",
    "aliased_streams",
    "shared_tenants",
    "syncs",
    "stagger",
    "stretch_spread",
    "rounds_x_bound",
    "exclusive_x_sum",
)


def features(g: Genome, ctx: TenantContext) -> np.ndarray:
    """The feature vector of one candidate (names in :data:`FEATURES`)."""
    wl = ctx.workload
    n = g.n
    reqs = [float(wl.requests or 1)] * n
    alone = [ctx.alone(t, g.lanes[t]) for t in range(n)]
    base = [ctx.alone(t, 1)[0] for t in range(n)]
    lat = [a[0] for a in alone]
    sm_time = [a[1] for a in alone]
    total = sum(reqs)
    group_load: dict[int, float] = {}
    for t in range(n):
        group_load[g.groups[t]] = group_load.get(g.groups[t], 0.0) + reqs[t] * lat[t]
    per_tenant = max(reqs[t] * lat[t] for t in range(n))
    sum_alone = sum(reqs[t] * lat[t] for t in range(n))
    # exclusive runs one request at a time; otherwise a tenant, or tenants sharing
    # streams, can be the bottleneck
    serial = sum_alone if g.mode == "exclusive" else max(per_tenant, *group_load.values())
    work = sum(reqs[t] * sm_time[t] for t in range(n)) / ctx.gpu.sm_count
    bound = max(serial, work, 1e-9)
    lanes = [len(ctx.lanes(t, g.lanes[t])) for t in range(n)]
    streams = len({(j, g.groups[t]) for t in range(n) for j in range(lanes[t])})
    queues = ctx.gpu.hw_queues
    shared = n - len(set(g.groups))
    rounds = g.mode == "rounds"
    if rounds:
        span = max(ctx.max_depth, 1) * max(g.stretch) + max(g.offsets) - min(g.offsets)
        stagger = (max(g.offsets) - min(g.offsets)) / span if span > 0 else 0.0
        spread = float(np.std(np.log(g.stretch)))
    else:
        stagger = spread = 0.0
    return np.array(
        [
            g.mode == "exclusive",
            g.mode == "independent",
            rounds,
            total / bound * 1e6,
            serial / 1e3,
            work / 1e3,
            sum_alone / 1e3,
            float(np.mean([base[t] / lat[t] if lat[t] > 0 else 1.0 for t in range(n)])),
            streams,
            max(0, streams - queues),
            shared,
            len(g.syncs) if rounds else 0,
            stagger,
            spread,
            (total / bound * 1e6) if rounds else 0.0,
            (sum_alone / 1e3) if g.mode == "exclusive" else 0.0,
        ],
        dtype=float,
    )


def spearman(a: list[float], b: list[float]) -> float:
    """Rank correlation of predictions and outcomes (NaN with fewer than 3 pairs)."""
    if len(a) < 3:
        return math.nan
    ra = np.argsort(np.argsort(a, kind="stable"), kind="stable").astype(float)
    rb = np.argsort(np.argsort(b, kind="stable"), kind="stable").astype(float)
    if ra.std() == 0 or rb.std() == 0:
        return math.nan
    return float(np.corrcoef(ra, rb)[0, 1])
