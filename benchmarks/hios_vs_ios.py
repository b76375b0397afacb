"""HIOS vs IOS vs sequential over input sizes, as in the HIOS paper (Kundu & Shu, 2023).

For each model and input size, runs ``sequential`` and ``ios`` (one GPU: device 0 of
the machine) and ``hios`` (every GPU of the machine) through ``run_scheduler`` and
writes, under ``--out``:

* ``hios_vs_ios.csv`` — one row per (model, size, scheduler): latency, search time,
  Profiler measurements, GPUs used, copies; rows already there are kept and not rerun
  (a long sweep resumes where it stopped);
* ``hios_vs_ios.md`` — the table: latencies, speedups over sequential, HIOS vs IOS;
* ``hios_vs_ios.png`` — latency against input size, one panel per model.

``--ablation`` adds HIOS with one host thread driving both GPUs and HIOS over PCIe 3.0
instead of NVLink (331/768/1280 px), summarised in ``hios_ablation/summary.md``.

Usage:
    python benchmarks/hios_vs_ios.py [--models M ...] [--sizes N ...] [--machine NAME]
        [--schedulers S ...] [--workers N] [--out DIR] [--ablation]
"""

from __future__ import annotations

import argparse
import csv
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

MODELS = ("inception_v3", "nasnet_a_large", "randwire_large")
SIZES = (331, 512, 768, 1024, 1280)
SCHEDULERS = ("sequential", "ios", "hios")
FIELDS = [
    "model",
    "image_size",
    "machine",
    "scheduler",
    "status",
    "latency_ms",
    "schedule_s",
    "profiler_calls",
    "profiler_distinct",
    "gpus_used",
    "copies",
    "copy_mb",
    "error",
]


def run_one(model: str, size: int, machine_name: str, scheduler: str) -> dict[str, object]:
    """One scheduler on one model and size: a CSV row (errors reported, not raised)."""
    from schedulers.base import run_scheduler
    from simgpu.errors import SimGPUError
    from simgpu.hardware import load_machine
    from simgpu.models import build_model

    row: dict[str, object] = dict.fromkeys(FIELDS, "")
    row.update(model=model, image_size=size, machine=machine_name, scheduler=scheduler)
    try:
        machine = load_machine(machine_name)
        row["machine"] = machine.name
        graph = build_model(model, image_size=size)
        # sequential under IOS's and HIOS's runtime (cudnn): like with like
        r = run_scheduler(scheduler, graph, machine, runtime="cudnn")
    except SimGPUError as e:
        row.update(status="failed", error=str(e).splitlines()[0])
        return row
    tl = r.timeline
    row.update(
        status="ok",
        latency_ms=f"{r.latency_ms:.6f}",
        schedule_s=f"{r.schedule_s:.2f}",
        profiler_calls=r.profiler_calls,
        profiler_distinct=r.profiler_distinct,
        gpus_used=len({k.device for k in tl.kernels}),
        copies=len(tl.copies),
        copy_mb=f"{sum(c.bytes for c in tl.copies) / 1e6:.3f}",
    )
    return row


def _key(row: dict[str, object]) -> tuple[str, int, str, str]:
    return (str(row["model"]), int(row["image_size"]), str(row["machine"]), str(row["scheduler"]))


def read_rows(path: Path) -> dict[tuple[str, int, str, str], dict[str, object]]:
    if not path.exists():
        return {}
    with path.open(newline="") as f:
        return {_key(r): r for r in csv.DictReader(f) if r.get("status") == "ok"}


def write_rows(path: Path, rows: dict[tuple[str, int, str, str], dict[str, object]]) -> None:
    order = {s: i for i, s in enumerate(SCHEDULERS)}
    keys = sorted(rows, key=lambda k: (k[0], k[1], k[2], order.get(k[3], 99), k[3]))
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for k in keys:
            w.writerow({f: rows[k].get(f, "") for f in FIELDS})


def _lat(rows, model: str, size: int, machine: str, sched: str) -> float | None:
    r = rows.get((model, size, machine, sched))
    return float(r["latency_ms"]) if r and r.get("status") == "ok" else None


def markdown(rows, models, sizes, machine: str) -> str:
    lines = [
        f"Latency (ms, batch 1, fp32) on `{machine}`: sequential and IOS on one GPU, "
        "HIOS on every GPU of the machine. Speedups are over sequential; the last column "
        "is HIOS's latency change against IOS (negative = HIOS faster).",
        "",
        "| model | size | sequential | IOS | HIOS | IOS speedup | HIOS speedup | HIOS vs IOS |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def f(x: float | None, fmt: str, unit: str = "") -> str:
        return "-" if x is None else format(x, fmt) + unit

    for m in models:
        for s in sizes:
            seq, ios, hios = (_lat(rows, m, s, machine, n) for n in SCHEDULERS)
            ios_x = seq / ios if seq and ios else None
            hios_x = seq / hios if seq and hios else None
            gain = 100 * (hios / ios - 1) if ios and hios else None
            lines.append(
                f"| {m} | {s} | {f(seq, '.3f')} | {f(ios, '.3f')} | {f(hios, '.3f')} | "
                f"{f(ios_x, '.2f', 'x')} | {f(hios_x, '.2f', 'x')} | {f(gain, '+.1f', '%')} |"
            )
    return "\n".join(lines) + "\n"


def plot(rows, models, sizes, machine: str, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * len(models), 3.6), layout="constrained")
    axes = fig.subplots(1, len(models), squeeze=False)[0]
    styles = {"sequential": ("#7f7f7f", "s"), "ios": ("#1f77b4", "o"), "hios": ("#d62728", "^")}
    for ax, m in zip(axes, models, strict=True):
        for sched in SCHEDULERS:
            pts = [(s, _lat(rows, m, s, machine, sched)) for s in sizes]
            pts = [(s, v) for s, v in pts if v is not None]
            if not pts:
                continue
            color, marker = styles.get(sched, ("k", "x"))
            label = {"ios": "IOS (1 GPU)", "hios": "HIOS (all GPUs)"}.get(sched, sched)
            ax.plot(*zip(*pts, strict=True), marker=marker, color=color, label=label)
        ax.set_title(m, fontsize=10)
        ax.set_xlabel("input size (px)")
        ax.set_xticks(list(sizes))
        ax.grid(alpha=0.4, linewidth=0.5)
    axes[0].set_ylabel("latency (ms)")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"HIOS vs IOS vs sequential, simulated on {machine}", fontsize=11)
    fig.savefig(path, dpi=120)


def sweep(models, sizes, machine: str, schedulers, workers: int, out: Path) -> dict:
    """Run what ``out/hios_vs_ios.csv`` lacks; return every row."""
    from simgpu.hardware import load_machine

    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "hios_vs_ios.csv"
    rows = read_rows(csv_path)
    name = load_machine(machine).name  # rows name the machine, not the file it came from
    todo = [
        (m, s, machine, sched)
        for m in models
        for s in sizes
        for sched in schedulers
        if (m, s, name, sched) not in rows
    ]
    # the slowest searches first, so two workers finish together
    todo.sort(key=lambda t: (t[3] == "sequential", -t[1], t[0]))
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {t: pool.submit(run_one, *t) for t in todo}
        for t, fut in futures.items():
            row = fut.result()
            rows[_key(row)] = row
            write_rows(csv_path, rows)  # after each result: an interrupted run resumes
            print(
                f"[{time.perf_counter() - t0:7.1f}s] {t[0]} {t[1]} {t[3]}: {row['status']} "
                f"{row['latency_ms']} ms (search {row['schedule_s']} s)",
                flush=True,
            )
    return rows


# HIOS under two changes of the machine: one host thread for both GPUs, and PCIe 3.0
# instead of NVLink; what separates the simulator's gains from the paper's
ABLATION_SIZES = (331, 768, 1280)
VARIANTS = (
    (
        "one host thread",
        "1host",
        str(Path(__file__).parent / "results" / "hios_ablation" / "2xv100-nvlink-1host.json"),
    ),
    ("PCIe 3.0 x16", "pcie3", "2xv100-pcie3"),
)


def _cell(v: float | None, ios: float | None) -> str:
    """A latency, with its change against IOS when IOS's is known."""
    if v is None:
        return "-"
    return f"{v:.3f}" if ios is None else f"{v:.3f} ({100 * (v / ios - 1):+.1f}%)"


def ablation(rows, models, workers: int, out: Path) -> str:
    from simgpu.hardware import load_machine

    variants = []
    for label, sub, machine in VARIANTS:
        vr = sweep(models, ABLATION_SIZES, machine, ["hios"], workers, out / sub)
        variants.append((label, load_machine(machine).name, vr))
    head = "| model | size | IOS (1 GPU) | HIOS, NVLink, a host thread per GPU |"
    head += "".join(f" HIOS, {label} |" for label, _, _ in variants)
    lines = [
        "HIOS under changes of `2xv100-nvlink` (latency ms; in brackets the change against "
        "IOS on one V100, from `../hios_vs_ios.csv`).",
        "",
        head,
        "|---|---:|---:|---:|" + "---:|" * len(variants),
    ]
    for m in models:
        for s in ABLATION_SIZES:
            ios = _lat(rows, m, s, "2xv100-nvlink", "ios")
            hios = _lat(rows, m, s, "2xv100-nvlink", "hios")

            line = f"| {m} | {s} | {_cell(ios, None)} | {_cell(hios, ios)} |"
            line += "".join(
                f" {_cell(_lat(vr, m, s, machine, 'hios'), ios)} |" for _, machine, vr in variants
            )
            lines.append(line)
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--sizes", nargs="+", type=int, default=list(SIZES))
    ap.add_argument("--machine", default="2xv100-nvlink")
    ap.add_argument("--schedulers", nargs="+", default=list(SCHEDULERS))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument(
        "--ablation",
        action="store_true",
        help="also HIOS with one host thread and over PCIe 3.0 (331/768/1280 px): "
        "OUT/hios_ablation/summary.md",
    )
    args = ap.parse_args()
    out = Path(args.out)
    rows = sweep(args.models, args.sizes, args.machine, args.schedulers, args.workers, out)
    from simgpu.hardware import load_machine

    name = load_machine(args.machine).name
    (out / "hios_vs_ios.md").write_text(markdown(rows, args.models, args.sizes, name))
    plot(rows, args.models, args.sizes, name, out / "hios_vs_ios.png")
    print((out / "hios_vs_ios.md").read_text())
    if args.ablation:
        print(ablation(rows, args.models, args.workers, out / "hios_ablation"))


if __name__ == "__main__":
    main()
