"""IOS search time: the ``ios`` scheduler's DP (r = 3, s = 8) on the IOS paper's networks.

IOS's own search on a V100 took 48 s (Inception V3), 4,407 s (RandWire) and 3,653 s
(NASNet), measuring every distinct stage of its space on the GPU (about 5,500 / 213,000 /
241,000 stages). Here stages are measured by the simulator. What is compared, per model:

* ``paper stages``: the stages the paper's search measures in *our* space — every
  distinct (ending, strategy) of every DP state, counted exactly while the DP runs;
* ``measured``: those left after the exact bounds (branch and bound, same result);
* ``sims``: distinct simulations left after the memo of identical stages (by content);
* the wall time of the whole search (one process, one core) against IOS's published
  search time for the same r and s, and the schedule's latency against sequential.

The space is the same only where the graph is: IOS's IR holds a chain of ops (relu,
separable conv, bn) as one sequential node, this zoo has one op per kernel. By default
(``--units auto``, the scheduler's default) r counts ops where a part's op-level space is
searchable exactly (Inception V3) and chains, as IOS counts nodes, where it is not
(RandWire, NASNet); ``--units ops`` counts ops everywhere (RandWire's and NASNet's parts
are then refused), ``--units chains`` chains everywhere. The two stage counts side by side
say how alike the spaces are; the speedup is only like for like where they are close.
``--max-states N`` runs the capped mode (off by default: it shrinks the space).

    python benchmarks/ios_search.py [--json] [--models M ...] [--gpu v100]
        [--r 3] [--s 8] [--part-size 64] [--max-states 0] [--units auto]
        [--state-limit 20000] [--strategy both]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any

import schedulers.base as base
from schedulers.base import (
    Profiler,
    SchedulerError,
    make_scheduler,
    run_scheduler,
    runtime_of,
)
from simgpu.graph import OpGraph
from simgpu.hardware import Machine, load_gpu
from simgpu.models import MODELS, build_model
from simgpu.program import lower
from simgpu.sim.engine import simulate

# IOS paper (Ding et al., MLSys 2021), V100, r = 3, s = 8: search seconds, distinct stages
PAPER = {
    "inception_v3": (48.0, 5_500),
    "randwire_large": (4_407.0, 213_000),
    "nasnet_a_large": (3_653.0, 241_000),
}


class TimedProfiler(Profiler):
    """A Profiler that also clocks the time spent inside ``measure_stage`` and counts the
    kernels of the programs it simulates."""

    stage_s = 0.0
    n_simulations = 0
    n_kernels = 0

    def measure_stage(self, graph, groups):  # type: ignore[override]
        t0 = time.perf_counter()
        try:
            return super().measure_stage(graph, groups)
        finally:
            self.stage_s += time.perf_counter() - t0


def _counting(simulate_fn, prof: list[TimedProfiler]):
    def run(program, machine, *args, **kw):
        if prof:
            prof[0].n_simulations += 1
            prof[0].n_kernels += program.kernels
        return simulate_fn(program, machine, *args, **kw)

    return run


_CURRENT: list[TimedProfiler] = []
base.simulate = _counting(base.simulate, _CURRENT)  # the profiler's simulator, counted


def bench(name: str, graph: OpGraph, machine: Machine, options: dict[str, Any]) -> dict:
    sched = make_scheduler("ios", options)
    runtime = runtime_of(sched)  # IOS's own (cudnn), as `simgpu run` runs it
    prof = TimedProfiler(machine, runtime=runtime)
    _CURRENT[:] = [prof]
    cpu0, t0 = time.process_time(), time.perf_counter()
    schedule = sched.schedule(graph, prof)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    _CURRENT.clear()
    meta = schedule.meta
    program = lower(schedule, graph, machine.gpu, cache=prof.kernels, runtime=runtime)
    latency = simulate(program, machine).makespan_us
    seq = run_scheduler("sequential", graph, machine, runtime=runtime).timeline.makespan_us
    paper_s, paper_stages = PAPER.get(name, (None, None))
    out = {
        "model": name,
        "ops": len(graph),
        "parts": len(meta["parts"]),
        "chain_parts": sum(p["chains"] for p in meta["parts"]),
        "units": meta["units"],
        "states": meta["states"],
        "transitions": meta["transitions"],
        "stages_paper": meta["stages_paper"],
        "stages_measured": meta["stages_measured"],
        "simulations": prof.n_simulations,
        "search_s": round(wall, 3),
        "search_cpu_s": round(cpu, 3),
        "dp_s": round(wall - prof.stage_s, 3),
        "measure_overhead_s": round(prof.stage_s - prof.sim_wall_s, 3),
        "simulate_s": round(prof.sim_wall_s, 3),
        "us_per_simulation": round(1e6 * prof.sim_wall_s / max(1, prof.n_simulations), 1),
        "kernels_per_simulation": round(prof.n_kernels / max(1, prof.n_simulations), 2),
        "gpu_search_s": round(prof.gpu_search_s, 2),
        "sequential_ms": round(seq / 1e3, 4),
        "ios_ms": round(latency / 1e3, 4),
        "speedup_vs_sequential": round(seq / latency, 3),
        "merges": len(meta["merges"]),
        "paper_s": paper_s,
        "paper_stages": paper_stages,
        "speedup_vs_paper": round(paper_s / wall, 1) if paper_s else None,
    }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--models", nargs="+", default=list(PAPER))
    ap.add_argument("--gpu", default="v100")
    ap.add_argument("--r", type=int, default=3)
    ap.add_argument("--s", type=int, default=8)
    ap.add_argument("--part-size", type=int, default=64)
    ap.add_argument("--max-states", type=int, default=0, help="0: no cap (the paper's space)")
    ap.add_argument("--units", default="auto", choices=("auto", "ops", "chains"))
    ap.add_argument("--state-limit", type=int, default=20_000, help="0: search any part")
    ap.add_argument("--strategy", default="both")
    args = ap.parse_args()
    machine = Machine.single(load_gpu(args.gpu))
    options = {
        "r": args.r,
        "s": args.s,
        "part_size": args.part_size,
        "max_states": args.max_states,
        "units": args.units,
        "state_limit": args.state_limit,
        "strategy": args.strategy,
    }
    rows, missing = [], []
    refused: list[tuple[str, str]] = []
    for name in args.models:
        if name not in MODELS:
            missing.append(name)
            continue
        try:
            rows.append(bench(name, build_model(name), machine, options))
        except SchedulerError as e:  # a part too large to search exactly: say so, go on
            refused.append((name, str(e)))
    result = {
        "gpu": machine.gpu.name,
        "options": options,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "models": rows,
        "missing": missing,
        "refused": dict(refused),
    }
    if args.json:
        print(json.dumps(result))
        return
    cols = [
        ("model", "model", "{}"),
        ("ops", "ops", "{}"),
        ("parts", "parts", "{}"),
        ("states", "states", "{}"),
        ("paper stages", "stages_paper", "{}"),
        ("measured", "stages_measured", "{}"),
        ("sims", "simulations", "{}"),
        ("IOS stages", "paper_stages", "{}"),
        ("krn/sim", "kernels_per_simulation", "{:.1f}"),
        ("us/sim", "us_per_simulation", "{:.0f}"),
        ("search s", "search_s", "{:.2f}"),
        ("DP s", "dp_s", "{:.2f}"),
        ("measure s", "measure_overhead_s", "{:.2f}"),
        ("sim s", "simulate_s", "{:.2f}"),
        ("paper s", "paper_s", "{:.0f}"),
        ("x paper", "speedup_vs_paper", "{:.0f}x"),
        ("seq ms", "sequential_ms", "{:.3f}"),
        ("ios ms", "ios_ms", "{:.3f}"),
        ("x seq", "speedup_vs_sequential", "{:.3f}"),
    ]
    table = [[h for h, _, _ in cols]]
    for r in rows:
        table.append(["-" if r[k] is None else f.format(r[k]) for _, k, f in cols])
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    print(
        f"IOS search on {machine.gpu.name}: r={args.r} s={args.s} part_size={args.part_size} "
        f"max_states={args.max_states} units={args.units} state_limit={args.state_limit} "
        f"strategy={args.strategy} "
        "(one process; paper stages: the paper's search in this space, IOS stages: "
        "IOS's published count in its own)"
    )
    for j, row in enumerate(table):
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if j == 0:
            print("  ".join("-" * w for w in widths))
    for name in missing:
        print(f"{name}: not in the model zoo, skipped", file=sys.stderr)
    for name, why in refused:
        print(f"{name}: refused: {why}", file=sys.stderr)


if __name__ == "__main__":
    main()
