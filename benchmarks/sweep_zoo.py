"""Sweep benchmark: the whole model zoo x every single-GPU scheduler x three GPUs.

Runs the same grid once per worker count (default 1 and 2 local processes), each into a
fresh CSV, and reports the wall time, the scaling ratio, and whether every run gave the
same rows (they must: only the wall-time columns may differ). Generic over whatever
``simgpu.models.model_names()`` and ``scheduler_names(single_gpu_only=True)`` hold.

Each combination is capped at ``--timeout`` seconds (default 10; 0 for none) so that an
exhaustive search on a wide graph cannot hold the benchmark for hours: such rows are
``timeout`` and are left out of the identical-rows check (where a limit falls is a
wall-clock matter). The load average is printed: on a shared machine it explains a lot.
Usage:
    python benchmarks/sweep_zoo.py [--json] [--workers 1,2] [--gpus v100,a100,h100]
        [--models a,b] [--schedulers a,b] [--timeout S] [--dask local:2] [--keep out.csv]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from schedulers.base import scheduler_names
from simgpu.models import model_names
from simgpu.sweep import Grid, run_sweep, without_wall_time


def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--workers", default="1,2", help="worker counts to time (default 1,2)")
    ap.add_argument("--gpus", default="v100,a100,h100")
    ap.add_argument("--models", help="default: the whole zoo")
    ap.add_argument("--schedulers", help="default: every single-GPU scheduler")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per combination")
    ap.add_argument("--dask", help="also time this Dask cluster (ADDRESS or local:N)")
    ap.add_argument("--keep", help="copy the last run's CSV here (for `simgpu report`)")
    args = ap.parse_args()

    grid = Grid(
        models=_csv_list(args.models) if args.models else model_names(),
        gpus=_csv_list(args.gpus),
        schedulers=_csv_list(args.schedulers)
        if args.schedulers
        else scheduler_names(single_gpu_only=True),
    )
    combos = grid.combos()
    runs: list[dict] = []
    rows_of: dict[str, list] = {}
    with tempfile.TemporaryDirectory() as tmp:
        plans: list[tuple[str, dict]] = [
            (f"{w} worker{'s' if w > 1 else ''}", {"workers": w})
            for w in (int(x) for x in _csv_list(args.workers))
        ]
        if args.dask:
            plans.append((f"dask {args.dask}", {"dask": args.dask}))
        last = None
        for i, (label, kw) in enumerate(plans):
            out = Path(tmp) / f"run{i}.csv"
            if "dask" not in kw and args.timeout > 0:
                kw["timeout_s"] = args.timeout
            load0 = _load()
            t0 = time.perf_counter()
            res = run_sweep(grid, out, progress=not args.json, **kw)
            wall = time.perf_counter() - t0
            rows_of[label] = res.rows
            runs.append(
                {
                    "run": label,
                    **kw,
                    "wall_s": wall,
                    "rows": len(res.rows),
                    "failed": res.failed,
                    "timeouts": sum(r["status"] == "timeout" for r in res.rows),
                    "cpu_s": sum(float(r["wall_s"]) for r in res.rows),
                    "load_before": load0,
                    "load_after": _load(),
                }
            )
            last = out
        if args.keep and last is not None:
            shutil.copyfile(last, args.keep)

    base = runs[0]["wall_s"]
    for r in runs:
        r["scaling"] = base / r["wall_s"] if r["wall_s"] > 0 else float("nan")
    timed_out = {
        (r["model"], r["gpu"], r["scheduler"])
        for rs in rows_of.values()
        for r in rs
        if r["status"] == "timeout"
    }

    def comparable(rows: list) -> list:
        keep = [r for r in rows if (r["model"], r["gpu"], r["scheduler"]) not in timed_out]
        return without_wall_time(keep)

    ref = comparable(next(iter(rows_of.values())))
    identical = all(comparable(rs) == ref for rs in rows_of.values())
    first = next(iter(rows_of.values()))
    per_sched: dict[str, float] = defaultdict(float)
    per_model: dict[str, float] = defaultdict(float)
    for r in first:
        per_sched[r["scheduler"]] += float(r["wall_s"])
        per_model[r["model"]] += float(r["wall_s"])
    slowest = sorted(first, key=lambda r: -float(r["wall_s"]))[:5]
    errors = sorted(
        {f"{r['scheduler']} on {r['model']}: {r['error']}" for r in first if r["status"] != "ok"}
    )
    summary = {
        "models": len({c.model for c in combos}),
        "schedulers": len({c.scheduler for c in combos}),
        "gpus": grid.gpus,
        "combinations": len(combos),
        "cores": _cores(),
        "runs": runs,
        "timeout_s": args.timeout,
        "identical_rows": identical,
        "compared_rows": len(ref),
        "seconds_per_scheduler": dict(sorted(per_sched.items(), key=lambda kv: -kv[1])),
        "seconds_per_model": dict(sorted(per_model.items(), key=lambda kv: -kv[1])),
        "slowest": [
            {
                "combination": f"{r['model']} {r['gpu']} {r['scheduler']}",
                "wall_s": float(r["wall_s"]),
            }
            for r in slowest
        ],
        "errors": errors,
    }
    if args.json:
        print(json.dumps(summary, indent=1))
        return
    print(
        f"{summary['combinations']} combinations: {summary['models']} models x "
        f"{summary['schedulers']} schedulers x {len(grid.gpus)} GPUs ({', '.join(grid.gpus)}); "
        f"{summary['cores']} cores"
    )
    head = f"{'run':<16}{'wall s':>9}{'rows':>7}{'failed':>8}{'timeouts':>10}"
    print(head + f"{'row-s sum':>11}{'scaling':>9}{'load avg':>16}")
    for r in runs:
        print(
            f"{r['run']:<16}{r['wall_s']:>9.1f}{r['rows']:>7}{r['failed']:>8}{r['timeouts']:>10}"
            f"{r['cpu_s']:>11.1f}{r['scaling']:>8.2f}x"
            f"{r['load_before']:>8.1f}->{r['load_after']:.1f}"
        )
    same = "yes" if identical else "NO"
    print(f"identical rows (wall-time columns aside, {len(ref)} compared): {same}")
    print("time per scheduler (s): " + ", ".join(f"{k} {v:.1f}" for k, v in per_sched.items()))
    print(
        "slowest: "
        + "; ".join(f"{s['combination']} {s['wall_s']:.1f}s" for s in summary["slowest"])
    )
    for e in errors:
        print(f"failed: {e}")
    if not identical:
        sys.exit(1)


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def _cores() -> int:
    from simgpu.sweep import default_workers

    return default_workers()


if __name__ == "__main__":
    main()
