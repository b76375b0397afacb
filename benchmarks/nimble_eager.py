"""Nimble over eager PyTorch on a V100: simulated speedups against the published ones.

For each of the eight models of ``../shared/data/published/nimble_v100.json`` this
simulates ``sequential`` under ``pytorch-eager`` (eager PyTorch at batch 1) and
``nimble`` under ``cuda-graph`` (Nimble's multi-stream CUDA Graph) on the V100 preset
with the committed host costs (``simgpu/data/host_costs.json``), and prints both
latencies, the speedup, Nimble's published speedup and the error; with the
leave-one-model-out prediction recorded by ``simgpu calibrate fit-host``.

Usage:
    python benchmarks/nimble_eager.py [--published FILE] [--gpu v100] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from schedulers.base import run_scheduler  # noqa: E402
from simgpu.hardware import Machine, load_gpu  # noqa: E402
from simgpu.models import MODELS, build_model  # noqa: E402
from simgpu.runtimes.base import DATA  # noqa: E402


def rows(published: dict[str, float], gpu_name: str) -> list[dict[str, object]]:
    machine = Machine.single(load_gpu(gpu_name))
    logo = json.loads(DATA.read_text())["fit"].get("logo_predicted", {})
    out = []
    for model, pub in published.items():
        if model not in MODELS:
            out.append({"model": model, "published": pub, "status": "not in the zoo"})
            continue
        g = build_model(model)
        eager = run_scheduler("sequential", g, machine, runtime="pytorch-eager").latency_ms
        nimble = run_scheduler("nimble", g, machine, runtime="cuda-graph").latency_ms
        sim = eager / nimble
        out.append({
            "model": model,
            "status": "ok",
            "eager_ms": eager,
            "nimble_ms": nimble,
            "speedup": sim,
            "published": pub,
            "error": sim / pub - 1.0,
            "logo_speedup": logo.get(model),
            "logo_error": logo[model] / pub - 1.0 if model in logo else None,
        })  # fmt: skip
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--published", default=str(ROOT.parent / "shared/data/published/nimble_v100.json")
    )
    ap.add_argument("--gpu", default="v100")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    pub = json.loads(Path(args.published).read_text())["nimble_speedup_over_pytorch_eager"]
    table = rows({str(k): float(v) for k, v in pub.items()}, args.gpu)
    if args.json:
        print(json.dumps(table, indent=1))
        return 0
    print(f"{'model':17s} {'eager ms':>9s} {'nimble ms':>9s} {'simulated':>9s} "
          f"{'published':>9s} {'error':>7s} {'LOMO':>7s}")  # fmt: skip
    for r in table:
        if r["status"] != "ok":
            print(f"{r['model']:17s} {r['status']}")
            continue
        lomo = "-" if r["logo_error"] is None else f"{100 * r['logo_error']:+.1f}%"
        print(f"{r['model']:17s} {r['eager_ms']:9.3f} {r['nimble_ms']:9.3f} "
              f"{r['speedup']:8.2f}x {r['published']:8.2f}x {100 * r['error']:+6.1f}% {lomo:>7s}")  # fmt: skip
    ok = [r for r in table if r["status"] == "ok"]
    worst = max(abs(r["error"]) for r in ok)
    print(f"largest error {100 * worst:.1f}% over {len(ok)} models")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
