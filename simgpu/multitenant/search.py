"""Runtime-aware automated scheduling search (after Yu et al., ICCAD 2021).

An evolutionary search over :class:`~simgpu.multitenant.genome.Genome` s — stream
assignment and sharing, cross-model interleaving, sync points — guided by a learned
cost model (:mod:`simgpu.multitenant.costmodel`):

1. the four baselines are simulated first (they seed the population, so the search can
   only return one of them or something the simulator found better);
2. a few random candidates are simulated to give the model data;
3. then, each generation: refit the model on every simulated candidate, breed a pool of
   mutants and crossovers of the best ones, let the model rank the pool, and simulate
   only the top few (plus one random pick, to keep the model honest).

``budget`` counts simulated candidates beyond the baselines; ``time_budget_s`` stops
early by wall clock (the only input that can make two runs differ: leave it unset for
bit-identical results). Everything random draws from one seeded numpy Generator.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from simgpu.errors import SimGPUError
from simgpu.multitenant.costmodel import RidgeModel, features, spearman
from simgpu.multitenant.genome import (
    BASELINES,
    LANE_CHOICES,
    Genome,
    TenantContext,
    baseline_genome,
)
from simgpu.multitenant.memory import RunMemory, replay
from simgpu.multitenant.metrics import RunMetrics, measure, objective
from simgpu.sim.tenants import MultiTenantRun, simulate_tenants


class SearchError(SimGPUError):
    """Bad search settings (budget, pool size...)."""


@dataclass
class Candidate:
    genome: Genome
    metrics: RunMetrics
    source: str  # "baseline:<name>", "random", "mutation" or "crossover"
    predicted: float | None = None  # the model's score before it was simulated

    def score(self, slo: bool) -> tuple[float, float]:
        return objective(self.metrics, slo)


class Evaluator:
    """Simulates genomes of one workload, memoised by what makes plans identical."""

    def __init__(self, ctx: TenantContext) -> None:
        self.ctx = ctx
        self.memo: dict[tuple, RunMetrics] = {}
        self.simulations = 0
        self.sim_wall_s = 0.0

    def simulate(self, g: Genome, name: str) -> tuple[MultiTenantRun, RunMemory]:
        """Simulate ``g`` under the context's memory admission, and its memory report
        (which also sets the run's memory track, ``run.timeline.memory``)."""
        ctx = self.ctx
        run = simulate_tenants(
            ctx.workload, ctx.plan(g, name), ctx.gpu, programs=ctx.programs(g),
            memory=ctx.budget(g),
        )  # fmt: skip
        return run, replay(run, ctx.tensors)

    def run(self, g: Genome, name: str) -> MultiTenantRun:
        return self.simulate(g, name)[0]

    def metrics(self, g: Genome, name: str) -> RunMetrics:
        key = self.ctx.ident(g)
        hit = self.memo.get(key)
        if hit is None:
            t0 = time.perf_counter()
            run, memory = self.simulate(g, name)
            hit = self.memo[key] = measure(run, name, memory)
            self.sim_wall_s += time.perf_counter() - t0
            self.simulations += 1
        if hit.scheduler != name:  # same plan under another name: same figures
            hit = RunMetrics(**{**hit.__dict__, "scheduler": name})
        return hit

    def baseline(self, name: str) -> tuple[Genome, RunMetrics]:
        g = baseline_genome(name, len(self.ctx.workload.tenants), self.ctx.max_depth)
        return g, self.metrics(g, name)


@dataclass
class SearchResult:
    best: Candidate
    baselines: dict[str, Candidate]
    history: list[Candidate]
    model: RidgeModel | None
    rank_correlation: float  # predicted vs simulated, over candidates the model picked
    scored: int  # candidates the model ranked
    wall_s: float
    stopped: str  # "budget" or "time"
    meta: dict[str, object] = field(default_factory=dict)

    @property
    def best_baseline(self) -> Candidate:
        slo = self.meta.get("slo", False)
        return max(self.baselines.values(), key=lambda c: c.score(bool(slo)))


# --- variation ----------------------------------------------------------------------------


def random_genome(n: int, rng: np.random.Generator, depth: int) -> Genome:
    mode = str(rng.choice(["independent", "rounds", "rounds", "exclusive"]))
    lanes = tuple(int(rng.choice(LANE_CHOICES)) for _ in range(n))
    groups = tuple(int(rng.integers(0, n)) for _ in range(n))
    offsets = tuple(float(rng.uniform(0, (depth + 1) * (n - 1) or 1)) for _ in range(n))
    stretch = tuple(float(np.exp(rng.uniform(-0.7, 0.7))) for _ in range(n))
    syncs = tuple(float(rng.uniform(0.05, 0.95)) for _ in range(int(rng.integers(0, 2))))
    return Genome(mode, lanes, groups, offsets, stretch, syncs)


def mutate(g: Genome, rng: np.random.Generator, depth: int) -> Genome:
    """One to three random changes to a genome."""
    n = g.n
    mode, lanes, groups = g.mode, list(g.lanes), list(g.groups)
    offsets, stretch, syncs = list(g.offsets), list(g.stretch), list(g.syncs)
    for _ in range(int(rng.integers(1, 4))):
        what = rng.choice(["mode", "lanes", "lanes", "groups", "offset", "stretch", "syncs"])
        t = int(rng.integers(0, n))
        if what == "mode":
            mode = str(rng.choice([m for m in ("exclusive", "independent", "rounds") if m != mode]))
        elif what == "lanes":
            lanes[t] = int(rng.choice(LANE_CHOICES))
        elif what == "groups":
            groups[t] = int(rng.integers(0, n + 1))  # n + 1 choices: possibly a new group
        elif what == "offset":
            if rng.random() < 0.3:
                offsets[t] = 0.0
            else:
                offsets[t] = max(0.0, offsets[t] + float(rng.normal(0, (depth + 1) / 4)))
        elif what == "stretch":
            stretch[t] = float(np.clip(stretch[t] * np.exp(rng.normal(0, 0.3)), 0.25, 4.0))
        elif syncs and rng.random() < 0.5:
            syncs.pop(int(rng.integers(0, len(syncs))))
        elif len(syncs) < 3:
            syncs.append(float(rng.uniform(0.05, 0.95)))
    return Genome(mode, tuple(lanes), tuple(groups), tuple(offsets), tuple(stretch), tuple(syncs))


def crossover(a: Genome, b: Genome, rng: np.random.Generator) -> Genome:
    """Per tenant, every gene of that tenant from one parent; mode and syncs from one."""
    pick = [bool(rng.random() < 0.5) for _ in range(a.n)]

    def mix(x: tuple, y: tuple) -> tuple:
        return tuple(yi if p else xi for xi, yi, p in zip(x, y, pick, strict=True))

    whole = b if rng.random() < 0.5 else a
    return Genome(
        whole.mode,
        mix(a.lanes, b.lanes),
        mix(a.groups, b.groups),
        mix(a.offsets, b.offsets),
        mix(a.stretch, b.stretch),
        whole.syncs,
    )


# --- the search ---------------------------------------------------------------------------


def search(
    ctx: TenantContext,
    budget: int = 40,
    seed: int = 0,
    time_budget_s: float | None = None,
    pool: int = 64,
    batch: int = 4,
    init: int = 6,
    elite: int = 4,
    evaluator: Evaluator | None = None,
    guided: bool = True,
) -> SearchResult:
    """Search multi-tenant plans for ``ctx``'s workload; see the module docstring.
    ``guided=False`` simulates random picks from each pool instead of the model's top
    ones: the ablation that shows what the cost model is worth."""
    if not isinstance(budget, int) or budget < 0:
        raise SearchError(f"search budget must be a non-negative integer, got {budget!r}")
    if time_budget_s is not None and not time_budget_s > 0:
        raise SearchError(f"search time budget must be positive seconds, got {time_budget_s!r}")
    if pool < 1 or batch < 1 or init < 0 or elite < 1:
        raise SearchError("search pool, batch and elite must be >= 1, init >= 0")
    t_start = time.perf_counter()
    ev = evaluator if evaluator is not None and evaluator.ctx is ctx else Evaluator(ctx)
    rng = np.random.default_rng(seed)
    slo = any(t.slo_ms is not None for t in ctx.workload.tenants)
    depth = ctx.max_depth
    n = len(ctx.workload.tenants)
    history: list[Candidate] = []
    seen: set[tuple] = set()
    baselines: dict[str, Candidate] = {}
    for name in BASELINES:
        g, m = ev.baseline(name)
        c = Candidate(g, m, f"baseline:{name}")
        baselines[name] = c
        history.append(c)
        seen.add(ctx.ident(g))
    model: RidgeModel | None = None
    picked_pred: list[float] = []
    picked_true: list[float] = []
    scored = 0
    spent = 0
    stopped = "budget"

    def out_of_time() -> bool:
        return time_budget_s is not None and time.perf_counter() - t_start > time_budget_s

    def simulate(g: Genome, source: str, pred: float | None) -> None:
        nonlocal spent
        m = ev.metrics(g, "search")
        c = Candidate(g, m, source, pred)
        history.append(c)
        seen.add(ctx.ident(g))
        spent += 1
        if pred is not None:
            picked_pred.append(pred)
            picked_true.append(c.score(slo)[0])

    # a few random candidates, so the model has more than the baselines to learn from
    tries = 0
    init = min(init, budget // 3)  # leave most of a small budget to the model-guided part
    while spent < init and tries < 50 * (init + 1):
        tries += 1
        if out_of_time():
            stopped = "time"
            break
        g = random_genome(n, rng, depth)
        if ctx.ident(g) not in seen:
            simulate(g, "random", None)
    stale = 0
    while spent < budget and stopped == "budget":
        if out_of_time():
            stopped = "time"
            break
        if guided:
            X = np.array([features(c.genome, ctx) for c in history])
            y = np.array([c.score(slo)[0] for c in history])
            model = RidgeModel(alpha=1.0).fit(X, y)
        ranked = sorted(
            range(len(history)), key=lambda i: (history[i].score(slo), -i), reverse=True
        )
        parents = [history[i].genome for i in ranked[:elite]]
        cands: list[tuple[Genome, str]] = []
        keys: set[tuple] = set()
        for _ in range(pool * 4):
            if len(cands) >= pool:
                break
            if len(parents) > 1 and rng.random() < 0.3:
                i, j = rng.choice(len(parents), size=2, replace=False)
                g = mutate(crossover(parents[int(i)], parents[int(j)], rng), rng, depth)
                src = "crossover"
            else:
                g = mutate(parents[int(rng.integers(0, len(parents)))], rng, depth)
                src = "mutation"
            k = ctx.ident(g)
            if k in seen or k in keys:
                continue
            keys.add(k)
            cands.append((g, src))
        if not cands:
            stale += 1
            if stale > 3:  # the neighbourhood is exhausted: nothing new to simulate
                break
            continue
        stale = 0
        if model is not None:
            pred = model.predict(np.array([features(g, ctx) for g, _ in cands]))
            scored += len(cands)
            order = sorted(range(len(cands)), key=lambda i: (-pred[i], i))
            take = order[: max(1, batch - 1)]
            rest = order[len(take) :]
            if rest:  # one random pick per generation keeps the model from fooling itself
                take.append(rest[int(rng.integers(0, len(rest)))])
        else:
            picks = rng.choice(len(cands), size=min(batch, len(cands)), replace=False)
            take = [int(i) for i in picks]
        for i in take:
            if spent >= budget:
                break
            if out_of_time():
                stopped = "time"
                break
            g, src = cands[i]
            simulate(g, src, float(pred[i]) if model is not None else None)
    best_i = max(range(len(history)), key=lambda i: (history[i].score(slo), -i))
    h = history[best_i]  # reported with lane counts that matter (same plan, same figures)
    best = Candidate(ctx.effective(h.genome), h.metrics, h.source, h.predicted)
    return SearchResult(
        best=best,
        baselines=baselines,
        history=history,
        model=model,
        rank_correlation=spearman(picked_pred, picked_true),
        scored=scored,
        wall_s=time.perf_counter() - t_start,
        stopped=stopped,
        meta={
            "slo": slo,
            "budget": budget,
            "seed": seed,
            "simulated": spent,
            "simulations": ev.simulations,
            "sim_wall_s": ev.sim_wall_s,
            "guided": guided,
        },
    )


def search_summary(res: SearchResult) -> dict[str, object]:
    """The search's own figures, for JSON output."""
    slo = bool(res.meta.get("slo"))
    base = res.best_baseline
    b, s = base.score(slo)[0], res.best.score(slo)[0]
    return {
        "objective": "goodput" if slo else "throughput",
        "best_source": res.best.source,
        "genome": res.best.genome.to_json(),
        "candidates_simulated": res.meta["simulated"],
        "candidates_scored": res.scored,
        "rank_correlation": None if math.isnan(res.rank_correlation) else res.rank_correlation,
        "best_baseline": base.metrics.scheduler,
        "gain_over_best_baseline": s / b if b > 0 else None,
        "stopped": res.stopped,
        "search_s": res.wall_s,
    }
