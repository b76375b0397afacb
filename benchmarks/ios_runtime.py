"""IOS's stage schedules under IOS's own runtime (C++ over cuDNN), against one stream.

For each model this runs ``ios`` and two sequential baselines under the ``cudnn``
runtime on the V100 preset: one stream with no barrier (``sequential``), and IOS's
own sequential schedule, one op per stage with a ``cudaDeviceSynchronize`` after each
(how IOS's runtime runs an unoptimised network). The IOS paper reports 1.4-1.6x over
sequential on a V100 for these networks.

Usage:
    python benchmarks/ios_runtime.py [--models M ...] [--gpu v100] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from schedulers.base import run_scheduler  # noqa: E402
from simgpu.hardware import Machine, load_gpu  # noqa: E402
from simgpu.models import build_model  # noqa: E402
from simgpu.program import lower  # noqa: E402
from simgpu.runtimes import get_runtime  # noqa: E402
from simgpu.schedule import StageSchedule  # noqa: E402
from simgpu.sim.engine import simulate  # noqa: E402

MODELS = ("inception_v3", "squeezenet1_1", "randwire_small", "randwire_large", "nasnet_a_mobile")


def row(model: str, gpu_name: str) -> dict[str, object]:
    gpu = load_gpu(gpu_name)
    machine = Machine.single(gpu)
    g = build_model(model)
    t0 = time.perf_counter()
    ios = run_scheduler("ios", g, machine, runtime="cudnn")
    search_s = time.perf_counter() - t0
    seq = run_scheduler("sequential", g, machine, runtime="cudnn").latency_ms
    staged = StageSchedule([[[op]] for op in g.topo_order], barrier="sync")
    per_op = simulate(lower(staged, g, gpu, runtime=get_runtime("cudnn")), machine).latency_ms
    return {
        "model": model,
        "ios_ms": ios.latency_ms,
        "sequential_ms": seq,
        "synced_sequential_ms": per_op,
        "speedup": seq / ios.latency_ms,
        "speedup_over_synced": per_op / ios.latency_ms,
        "stages": len(ios.schedule.stages),
        "search_s": search_s,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--gpu", default="v100")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    table = [row(m, args.gpu) for m in args.models]
    if args.json:
        print(json.dumps(table, indent=1))
        return 0
    print(f"{'model':16s} {'IOS ms':>8s} {'1 stream':>9s} {'speedup':>8s} "
          f"{'op/stage':>9s} {'speedup':>8s} {'stages':>6s} {'search s':>8s}")  # fmt: skip
    for r in table:
        print(f"{r['model']:16s} {r['ios_ms']:8.3f} {r['sequential_ms']:9.3f} "
              f"{r['speedup']:7.2f}x {r['synced_sequential_ms']:9.3f} "
              f"{r['speedup_over_synced']:7.2f}x {r['stages']:6d} {r['search_s']:8.1f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
