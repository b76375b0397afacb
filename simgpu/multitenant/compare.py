"""Run several multi-tenant policies on one workload: what the CLI and benchmark call."""

from __future__ import annotations

from dataclasses import dataclass

from simgpu.errors import SimGPUError
from simgpu.hardware import GPUSpec
from simgpu.multitenant.genome import BASELINES, Genome, TenantContext
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


def compare(
    workload: Workload,
    gpu: GPUSpec,
    schedulers: list[str] | None = None,
    budget: int = 40,
    seed: int | None = None,
    time_budget_s: float | None = None,
    runtime: Runtime | None = None,
) -> tuple[TenantContext, Evaluator, list[PolicyResult]]:
    """Each named policy's metrics (search's seed defaults to the workload's), every
    request's host calls priced by ``runtime`` (None: the GPU's flat costs)."""
    names = scheduler_list(schedulers)
    ctx = TenantContext(workload, gpu, runtime)
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
