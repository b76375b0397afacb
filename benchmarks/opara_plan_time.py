"""Opara's and Nimble's planning time, split into its parts (issue 16, part 1).

Opara's paper times its stream plan (0.27-2.8 ms) against Nimble's (5.8-258 ms). Here
the stream plans and Opara's launch order are timed alone on a graph built once (both
read its cached topological order), best of 20; "demands" is Opara's reading of each
op's resource demand from kernels already lowered; ``schedule_s`` is what ``simgpu
run`` reports (run_scheduler's timer around ``schedule()``, median of 5), which for
Opara includes lowering every op to kernels the first time. Usage:

    python benchmarks/opara_plan_time.py
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from schedulers.base import Profiler, run_scheduler
from schedulers.nimble import nimble_streams
from schedulers.opara import launch_order, op_demand, opara_streams
from simgpu.hardware import Machine, preset
from simgpu.models import build_model


def best_ms(f: Callable[[], object], n: int = 20) -> float:
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return min(ts) * 1e3


def main() -> None:
    for model in ("googlenet", "inception_v3"):
        for gname in ("a100", "rtx2080s"):
            gpu = preset(gname)
            m = Machine.single(gpu)
            g = build_model(model)
            p = Profiler(m)
            demand = {n: op_demand(p.kernels.lower(g, n), gpu) for n in g.ops}
            streams = opara_streams(g)
            nim = best_ms(lambda g=g: nimble_streams(g))
            opa = best_ms(lambda g=g: opara_streams(g))
            order = best_ms(lambda g=g, s=streams, d=demand: launch_order(g, s, d))
            dem = best_ms(
                lambda g=g, p=p, gpu=gpu: {n: op_demand(p.kernels.lower(g, n), gpu) for n in g.ops}
            )
            run = {
                name: statistics.median(run_scheduler(name, g, m).schedule_s for _ in range(5))
                * 1e3
                for name in ("nimble", "opara")
            }
            print(
                f"{model:13s} {gname:9s} nimble stream plan {nim:6.2f} ms | opara stream plan "
                f"{opa:5.3f} ms + launch order {order:5.3f} ms = {(opa + order) / nim:5.3f} of "
                f"nimble's | demands {dem:5.2f} ms | schedule_s: nimble {run['nimble']:6.1f} ms, "
                f"opara {run['opara']:6.1f} ms"
            )


if __name__ == "__main__":
    main()
