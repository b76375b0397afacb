"""A 10,000-op random DAG: simulation wall time and peak memory (target < 2 s, < 500 MB).

Times ``simulate`` alone (the graph, lowering and program are built first) for a
sequential and an 8-stream program, and reports the process's peak RSS. Usage:
    python benchmarks/random_dag.py [--ops N] [--json]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _programs import level_streams, random_dag

from simgpu.hardware import load_gpu
from simgpu.program import lower
from simgpu.schedule import StreamSchedule
from simgpu.sim.engine import simulate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ops", type=int, default=10_000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    gpu = load_gpu("v100")
    t0 = time.perf_counter()
    g = random_dag(args.ops, seed=0)
    build_s = time.perf_counter() - t0
    out: dict = {"ops": len(g), "build_graph_s": round(build_s, 3)}
    for name, sched in (
        ("sequential", StreamSchedule([list(g.topo_order)])),
        ("8-streams", level_streams(g, 8)),
    ):
        t0 = time.perf_counter()
        prog = lower(sched, g, gpu)
        lower_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        tl = simulate(prog, gpu)
        sim_s = time.perf_counter() - t0
        out[name] = {
            "lower_s": round(lower_s, 3),
            "simulate_s": round(sim_s, 3),
            "kernels": len(tl.kernels),
            "latency_ms": round(tl.latency_ms, 3),
        }
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(out) if args.json else json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
