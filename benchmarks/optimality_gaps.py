"""Gaps to ``optimal`` on Inception V3's Mixed blocks.

Cuts every Mixed block of Inception V3 out of the graph (``schedulers.optimal.cut_out``:
each tensor read from outside the block becomes an ``input`` op), keeps those of at most
12 ops — the most ``optimal`` handles — and reports each heuristic's latency against the
optimal stage schedule's (``schedulers.optimal.optimality_gaps``), every schedule under
optimal's runtime (``cudnn``), so the gaps compare like with like. A ``*`` marks a
schedule outside the space of stage schedules (events instead of barriers, CUDA Graph,
merged convs), which can beat the optimal stage schedule. Usage:
    python benchmarks/optimality_gaps.py [--gpu v100] [--json]
"""

from __future__ import annotations

import argparse
import json

from schedulers.optimal import cut_out, optimality_gaps
from simgpu.hardware import load_machine
from simgpu.models import build_model

SCHEDULERS = ("sequential", "greedy", "ios", "lios", "nimble", "autograph")
MAX_OPS = 12


def blocks(graph) -> dict[str, list[str]]:
    """Mixed block name -> its ops, in topological order."""
    out: dict[str, list[str]] = {}
    for n in graph.topo_order:
        if n.startswith("Mixed_"):
            out.setdefault(n.split(".", 1)[0], []).append(n)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpu", default="v100")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    machine = load_machine(args.gpu)
    g = build_model("inception_v3")
    rows = []
    for block, ops in blocks(g).items():
        sub = cut_out(g, ops, name=block)
        if len(sub) > MAX_OPS:
            continue
        gaps = optimality_gaps(sub, machine, SCHEDULERS)
        rows.append(
            {
                "block": block,
                "ops": len(sub),
                "optimal_us": gaps[0].optimal_us,
                "gaps": {
                    x.scheduler: {"latency_us": x.latency_us, "gap": x.gap, "in_space": x.in_space}
                    for x in gaps
                },
            }
        )
    if args.json:
        print(json.dumps({"model": "inception_v3", "gpu": args.gpu, "blocks": rows}))
        return
    print("| block (ops) | optimal µs | " + " | ".join(SCHEDULERS) + " |")
    print("|---|---:|" + "---:|" * len(SCHEDULERS))
    for r in rows:
        cells = []
        for s in SCHEDULERS:
            x = r["gaps"][s]
            pct = f"{100 * x['gap']:+.1f}%".replace("-", "−")
            cells.append(pct + ("" if x["in_space"] else "*"))
        print(f"| {r['block']} ({r['ops']}) | {r['optimal_us']:.1f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
