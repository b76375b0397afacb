"""Run several multi-tenant policies on one workload: what the CLI and benchmark call."""

from __future__ import annotations

import math
from dataclasses import dataclass

from simgpu.errors import SimGPUError
from simgpu.hardware import GPUSpec
from simgpu.kernels import KernelCache
from simgpu.limits import check as check_limit
from simgpu.multitenant.genome import BASELINES, Genome, TenantContext, op_costs
from simgpu.multitenant.metrics import RunMetrics
from simgpu.multitenant.search import Evaluator, SearchResult, search, search_summary
from simgpu.runtimes import Runtime
from simgpu.sim.tenants import MultiTenantRun
from simgpu.tenants import Workload

SCHEDULERS = (*BASELINES, "search")


@dataclass
class PolicyResult:
    name: str
    metrics: RunMetrics
    genome: Genome
    search: SearchResult | None = None


def scheduler_list(names: list[str] | None) -> list[str]:
    """Expand 'all' and check names; duplicates kept once, in order."""
    out: list[str] = []
    for n in names or ["all"]:
        for m in SCHEDULERS if n == "all" else [n]:
            if m not in SCHEDULERS:
                raise SimGPUError(
                    f"unknown multi-tenant scheduler '{m}' (known: {', '.join(SCHEDULERS)}, all)"
                )
            if m not in out:
                out.append(m)
    return out


def kernels_to_simulate(
    workload: Workload,
    gpu: GPUSpec,
    schedulers: list[str],
    budget: int,
    cache: KernelCache | None = None,
) -> int:
    """How many kernels a comparison will simulate, known before it simulates any:
    per tenant its kernels per request times its requests, times the runs (each
    baseline once, the search its budget plus one: its baselines are cached). A duration
    gives the requests: rate x duration (poisson), duration / period (periodic), and for
    a closed loop duration / the request's critical path on an idle GPU, which no
    request can beat. ``cache``: the comparison's, so ops are lowered once."""
    cache = cache if cache is not None else KernelCache(gpu)
    per_run = 0.0
    for t in workload.tenants:
        g = t.graph
        kernels = sum(len(cache.lower(g, op)) for op in g.topo_order)
        if workload.requests is not None:
            per_run += workload.requests * kernels
        else:
            span_us = workload.duration_ms * 1e3
            a = t.arrival
            if a.kind == "poisson":
                n = a.rate_rps * span_us / 1e6
            elif a.kind == "periodic":
                n = span_us / (a.period_ms * 1e3)
            else:
                cost = op_costs(g, gpu, cache)
                finish: dict[str, float] = {}
                for op in g.topo_order:
                    finish[op] = cost[op] + max((finish[p] for p in g.predecessors(op)), default=0)
                n = span_us / max(max(finish.values()), 1e-3)
            per_run += (math.floor(min(n, 2.0**62)) + 1) * kernels
    runs = sum(1 for s in schedulers if s != "search") + (budget + 1) * ("search" in schedulers)
    return int(min(per_run * runs, 2**62))


def compare(
    workload: Workload,
    gpu: GPUSpec,
    schedulers: list[str] | None = None,
    budget: int = 40,
    seed: int | None = None,
    time_budget_s: float | None = None,
    runtime: Runtime | None = None,
    memory_limit: int | None = None,
) -> tuple[TenantContext, Evaluator, list[PolicyResult]]:
    """Each named policy's metrics (search's seed defaults to the workload's), every
    request's host calls priced by ``runtime`` (None: the GPU's flat costs), requests
    admitted within ``memory_limit`` bytes (None: the GPU's memory; see
    :mod:`simgpu.multitenant.memory`)."""
    names = scheduler_list(schedulers)
    ctx = TenantContext(workload, gpu, runtime, memory_limit)
    check_limit(
        "simulated_kernels",
        kernels_to_simulate(workload, gpu, names, budget, ctx.cache),
        "the kernels this comparison would simulate (requests x kernels x runs)",
    )
    ev = Evaluator(ctx)
    out: list[PolicyResult] = []
    for name in names:
        if name == "search":
            res = search(
                ctx,
                budget=budget,
                seed=workload.seed if seed is None else seed,
                time_budget_s=time_budget_s,
                evaluator=ev,
            )
            m = RunMetrics(**{**res.best.metrics.__dict__, "scheduler": "search"})
            m.extra = {"search": search_summary(res)}
            out.append(PolicyResult("search", m, res.best.genome, res))
        else:
            g, m = ev.baseline(name)
            out.append(PolicyResult(name, m, g))
    return ctx, ev, out


def rerun(ev: Evaluator, result: PolicyResult) -> MultiTenantRun:
    """Simulate a result's plan again, keeping the timeline (for traces and charts)."""
    return ev.run(result.genome, result.name)
