"""Latency against peak memory per scheduler: the README's memory table.

    python benchmarks/memory_table.py                      # Inception V3, NASNet-A Large, batch 1 and 32
    python benchmarks/memory_table.py --model inception_v3 --batch 1 --out /tmp/mem.jsonl

Each (model, batch) on the V100: every single-GPU scheduler that applies (``optimal`` is
for small graphs and is left out), its latency, its peak allocated and reserved MB
(:mod:`simgpu.memory`), the bound every schedule must hold and the peak of one stream in
topological order. One JSON line per row goes to ``--out`` as soon as it is measured, so a
long run keeps what it finished; the Markdown table is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from schedulers.base import SchedulerError, parse_options, run_scheduler
from simgpu.errors import SimGPUError
from simgpu.hardware import Machine, load_gpu
from simgpu.memory import mb, tensors_of
from simgpu.models import build_model

SCHEDULERS = (
    "sequential",
    "sequential-graph",
    "greedy",
    "wavefront",
    "lios",
    "heft",
    "nimble",
    "opara",
    "ios",
    "autograph",
)


def rows(model: str, batch: int, gpu: str, names: list[str], options: dict) -> list[dict]:
    g = build_model(model, batch=batch)
    machine = Machine.single(load_gpu(gpu))
    t = tensors_of(g, machine.gpu)
    head = {"model": model, "batch": batch, "gpu": machine.gpu.name}
    out = [{**head, "scheduler": "(bounds)", "lower_bound_mb": mb(t.lower_bound()),
            "sequential_peak_mb": mb(t.sequential_peak()), "weights_mb": mb(t.weight_bytes)}]  # fmt: skip
    print(json.dumps(out[0]), flush=True)
    for name in names:
        t0 = time.perf_counter()
        try:
            r = run_scheduler(name, g, machine, options.get(name))
        except (SchedulerError, SimGPUError) as e:
            row = {**head, "scheduler": name, "error": str(e).splitlines()[0]}
        else:
            row = {
                **head,
                "scheduler": name,
                "runtime": r.runtime,
                "latency_ms": r.latency_ms,
                "peak_memory_mb": r.memory.peak_memory_mb,
                "reserved_memory_mb": r.memory.reserved_memory_mb,
                "streams": r.streams,
                "schedule_s": r.schedule_s,
            }
        row["wall_s"] = time.perf_counter() - t0
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def markdown(all_rows: list[dict]) -> str:
    lines = [
        "| model | batch | scheduler | runtime | latency ms | peak MB | reserved MB |",
        "|---|---:|---|---|---:|---:|---:|",
    ]
    for r in all_rows:
        if r["scheduler"] == "(bounds)":
            lines.append(
                f"| {r['model']} | {r['batch']} | *bound / one stream* | | | "
                f"{r['lower_bound_mb']:.1f} / {r['sequential_peak_mb']:.1f} | |"
            )
        elif "error" in r:
            lines.append(
                f"| {r['model']} | {r['batch']} | {r['scheduler']} | | failed: {r['error']} | | |"
            )
        else:
            lines.append(
                f"| {r['model']} | {r['batch']} | {r['scheduler']} | {r['runtime']} | "
                f"{r['latency_ms']:.3f} | {r['peak_memory_mb']:.1f} | {r['reserved_memory_mb']:.0f} |"
            )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", help="default: inception_v3, nasnet_a_large")
    p.add_argument("--batch", action="append", type=int, help="default: 1 and 32")
    p.add_argument("--scheduler", action="append", help="default: " + ", ".join(SCHEDULERS))
    p.add_argument("--option", action="append", default=[], metavar="SCHED.KEY=VALUE")
    p.add_argument("--gpu", default="v100")
    p.add_argument("--out", type=Path, help="append one JSON line per row here")
    a = p.parse_args()
    options = parse_options(a.option)
    all_rows = []
    for model in a.model or ["inception_v3", "nasnet_a_large"]:
        for batch in a.batch or [1, 32]:
            got = rows(model, batch, a.gpu, a.scheduler or list(SCHEDULERS), options)
            all_rows += got
            if a.out:
                with a.out.open("a") as f:
                    f.writelines(json.dumps(r) + "\n" for r in got)
    print(markdown(all_rows))


if __name__ == "__main__":
    main()
