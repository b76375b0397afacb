"""Multi-tenant benchmark: ResNet-50 + Inception V3 + SqueezeNet 1.1 sharing one V100.

The setting of Yu et al. (ICCAD 2021), who report 1.3-1.7x over plain runtimes and
multi-stream. Two workloads, batch 1, default image sizes:

* ``closed`` — each tenant a closed-loop client sending ``--requests`` requests (a
  fixed mix of work, so throughput compares policies fairly);
* ``poisson`` — open-loop Poisson arrivals at ``--rate`` requests/s per tenant for
  ``--duration`` ms, with a latency SLO: the search maximises goodput there.

Every baseline (sequential, multistream, breadth-first, depth-first) and the search
(``--budget`` simulated candidates, seeds ``--seeds``) run on each; the table reports
throughput, p50/p99 latency, SLO attainment and utilisation, and the search's gain over
sequential and multistream against the targets (>= 1.2x and >= 1.05x throughput).
Writes ``--out``.md (table), .json (all figures) and .png (plots).

Usage:
    python benchmarks/multitenant.py [--gpu v100] [--requests 20] [--budget 60]
        [--seeds 0,1,2] [--rate 200] [--duration 200] [--slo-ms 10]
        [--out benchmarks/results/multitenant]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

from simgpu.hardware import load_gpu
from simgpu.models import build_model
from simgpu.multitenant.compare import compare, rerun
from simgpu.multitenant.genome import TenantContext
from simgpu.multitenant.search import SearchResult, search
from simgpu.tenants import Arrival, Workload, make_tenants

MODELS = ("resnet50", "inception_v3", "squeezenet1_1")
TARGET_SEQ, TARGET_MS = 1.2, 1.05


def run_workload(
    label: str, workload: Workload, gpu: Any, budget: int, seeds: list[int]
) -> dict[str, Any]:
    """Baselines once (they do not depend on the search seed), the search per seed."""
    t0 = time.perf_counter()
    _, ev, results = compare(workload, gpu, None, budget=budget, seed=seeds[0])
    rows = [r.metrics.to_json() for r in results]
    searches: list[dict[str, Any]] = []
    unguided: list[dict[str, Any]] = []
    runs = {r.name: r for r in results}
    for i, seed in enumerate(seeds):
        if i == 0:
            res = runs["search"].search
        else:  # a fresh context: each seed's search pays for its own simulations
            res = compare(workload, gpu, ["search"], budget=budget, seed=seed)[2][0].search
        assert res is not None
        searches.append(_search_row(res, seed))
        # ablation: the same search picking candidates at random instead of by the model
        blind = search(TenantContext(workload, gpu), budget=budget, seed=seed, guided=False)
        unguided.append(_search_row(blind, seed))
    slo = any(t.slo_ms is not None for t in workload.tenants)
    key = "goodput_rps" if slo else "throughput_rps"
    by = {r["scheduler"]: r for r in rows}
    gains = {
        "objective": key,
        "vs_sequential": by["search"][key] / by["sequential"][key],
        "vs_multistream": by["search"][key] / by["multistream"][key],
        "throughput_vs_sequential": by["search"]["throughput_rps"]
        / by["sequential"]["throughput_rps"],
        "throughput_vs_multistream": by["search"]["throughput_rps"]
        / by["multistream"]["throughput_rps"],
        "seed_gains_vs_multistream": [s["best"][key] / by["multistream"][key] for s in searches],
        "p99_ms": {n: by[n]["p99_ms"] for n in ("sequential", "multistream", "search")},
    }
    gantt = {n: rerun(ev, runs[n]) for n in ("multistream", "search")}
    return {
        "label": label,
        "workload": workload.describe(),
        "results": rows,
        "search_seeds": searches,
        "unguided_seeds": unguided,
        "gains": gains,
        "wall_s": time.perf_counter() - t0,
        "_gantt": gantt,
    }


def _search_row(res: SearchResult, seed: int) -> dict[str, Any]:
    slo = bool(res.meta.get("slo"))
    best = -1.0
    progress = []  # best objective after each simulated candidate (baselines first)
    for c in res.history:
        best = max(best, c.score(slo)[0])
        progress.append(best)
    return {
        "seed": seed,
        "best": res.best.metrics.to_json(),
        "best_source": res.best.source,
        "genome": res.best.genome.to_json(),
        "rank_correlation": res.rank_correlation,
        "candidates_scored": res.scored,
        "simulated": res.meta["simulated"],
        "wall_s": res.wall_s,
        "progress": progress,
        "to_best": next(i for i, v in enumerate(progress) if v >= progress[-1]) + 1,
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Multi-tenant benchmark: ResNet-50 + Inception V3 + SqueezeNet 1.1 on one GPU",
        "",
        f"GPU `{report['gpu']}`, batch 1, default image sizes; search budget "
        f"{report['budget']} simulated candidates, seeds {report['seeds']}. "
        f"Command: `{report['command']}` ({report['wall_s']:.0f} s on {report['machine']}).",
        "",
        "Simulated figures (simgpu's V100 model, not a measurement on a real V100). "
        "Targets: search >= 1.2x sequential and >= 1.05x multistream throughput.",
    ]
    for w in report["workloads"]:
        wl = w["workload"]
        g = w["gains"]
        arrival = wl["tenants"][0]["arrival"]
        size = (
            f"{wl['requests']} requests per tenant"
            if wl["requests"]
            else f"{wl['duration_ms']:g} ms"
        )
        slo = wl["tenants"][0]["slo_ms"]
        lines += [
            "",
            f"## {w['label']}: {arrival} arrivals, {size}" + (f", SLO {slo:g} ms" if slo else ""),
            "",
            "| policy | mode | req/s | goodput req/s | p50 ms | p99 ms | SLO % | dropped "
            "| SM util | DRAM util | streams |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in w["results"]:
            att = "-" if r["slo_attainment"] is None else f"{100 * r['slo_attainment']:.1f}"
            lines.append(
                f"| {r['scheduler']} | {r['mode']} | {r['throughput_rps']:.1f} | "
                f"{r['goodput_rps']:.1f} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {att} | "
                f"{r['dropped']} | {100 * r['sm_utilisation']:.0f}% | "
                f"{100 * r['dram_utilisation']:.0f}% | {r['streams']} |"
            )
        s0 = w["search_seeds"][0]
        p99 = g["p99_ms"]
        key = g["objective"]
        obj = key.replace("_rps", "")
        if w["label"] == "closed loop":
            ok_seq = "met" if g["vs_sequential"] >= TARGET_SEQ else "MISSED"
            ok_ms = "met" if g["vs_multistream"] >= TARGET_MS else "MISSED"
            verdict = (
                f"Search throughput: **{g['vs_sequential']:.2f}x sequential** (target "
                f"{TARGET_SEQ}x: {ok_seq}), **{g['vs_multistream']:.2f}x multistream** (target "
                f"{TARGET_MS}x: {ok_ms})."
            )
        else:
            verdict = (
                f"Search {obj}: {g['vs_sequential']:.2f}x sequential, "
                f"{g['vs_multistream']:.2f}x multistream (open loop: throughput follows the "
                "arrival rate unless a policy falls behind it)."
            )
        lines += [
            "",
            verdict + f" p99 latency: search {p99['search']:.2f} ms, multistream "
            f"{p99['multistream']:.2f} ms, sequential {p99['sequential']:.2f} ms. Over seeds, "
            f"{obj} vs multistream: "
            + ", ".join(f"{x:.3f}x" for x in g["seed_gains_vs_multistream"])
            + ".",
            f"Best plan (seed {s0['seed']}, from {s0['best_source']}): `{json.dumps(s0['genome'])}`. "
            f"Cost-model rank correlation (predicted vs simulated, candidates it picked): "
            + ", ".join(
                "-"
                if s["rank_correlation"] != s["rank_correlation"]
                else f"{s['rank_correlation']:.2f}"
                for s in w["search_seeds"]
            )
            + f"; {s0['candidates_scored']} candidates ranked by the model for "
            f"{s0['simulated']} simulated; search {s0['wall_s']:.1f} s.",
            "Cost-model ablation (same budget and seeds, candidates picked at random from "
            f"the same pools): best {obj} "
            + ", ".join(f"{u['best'][key]:.1f}" for u in w["unguided_seeds"])
            + " vs guided "
            + ", ".join(f"{x['best'][key]:.1f}" for x in w["search_seeds"])
            + "; plans simulated (baselines included) until the final best: guided "
            + ", ".join(str(x["to_best"]) for x in w["search_seeds"])
            + ", unguided "
            + ", ".join(str(u["to_best"]) for u in w["unguided_seeds"])
            + ".",
        ]
    lines += ["", report["notes"], ""]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure

    ws = report["workloads"]
    fig = Figure(figsize=(13, 3.6 * len(ws)), layout="constrained")
    axes = fig.subplots(len(ws), 3, squeeze=False)
    for row, w in zip(axes, ws, strict=True):
        names = [r["scheduler"] for r in w["results"]]
        key = w["gains"]["objective"]
        vals = [r[key] for r in w["results"]]
        colors = ["#1f77b4"] * (len(names) - 1) + ["#d62728"]
        row[0].bar(names, vals, color=colors)
        row[0].set_ylabel(key.replace("_rps", " (req/s)"))
        row[0].set_title(f"{w['label']}: {key.replace('_rps', '')}", fontsize=10)
        row[0].tick_params(axis="x", labelsize=8, rotation=20)
        p50 = [r["p50_ms"] for r in w["results"]]
        p99 = [r["p99_ms"] for r in w["results"]]
        x = range(len(names))
        row[1].bar([i - 0.2 for i in x], p50, width=0.4, label="p50")
        row[1].bar([i + 0.2 for i in x], p99, width=0.4, label="p99")
        row[1].set_xticks(list(x), names, fontsize=8, rotation=20)
        row[1].set_ylabel("latency (ms)")
        row[1].set_title(f"{w['label']}: latency", fontsize=10)
        row[1].legend(fontsize=8)
        for s in w["search_seeds"]:
            row[2].plot(range(len(s["progress"])), s["progress"], label=f"search seed {s['seed']}")
        for s in w["unguided_seeds"]:
            row[2].plot(
                range(len(s["progress"])),
                s["progress"],
                linestyle="--",
                linewidth=0.8,
                label=f"no cost model, seed {s['seed']}",
            )
        for r in w["results"][:-1]:
            row[2].axhline(r[key], linestyle=":", linewidth=0.8, color="#555555")
            row[2].annotate(r["scheduler"], (0, r[key]), fontsize=7, va="bottom")
        row[2].set_xlabel("plans simulated (4 baselines first)")
        row[2].set_ylabel(f"best {key.replace('_rps', '')} so far")
        row[2].set_title(f"{w['label']}: search progress", fontsize=10)
        row[2].legend(fontsize=7, loc="lower right")
    fig.savefig(path, dpi=100)


NOTES = """How to read it. Throughput is completed requests over the span from time 0 to
the last completion (closed loop: a fixed mix of work, so policies compare on equal
terms); latency is arrival to completion on the GPU, nearest-rank percentiles; SLO
attainment counts drops as misses. *sequential* serves one request at a time, oldest
first; *multistream* gives each tenant its own host thread and stream; *breadth-first*
and *depth-first* issue the waiting requests of all tenants together by one issue
token, layer by layer or model by model, with a barrier per round. The search explores
the unified representation (mode, lanes per model, stream sharing, interleave keys,
sync points), ranks candidates with a ridge-regression cost model refit on every
simulated run, and simulates only the top of each generation (plus one random pick).

Why the gains look as they do. {idle} Over plain multi-stream,
what the search finds is intra-model concurrency: {lanes}, so the slowest tenant stops
being the bottleneck of the mix. Round-based co-issue (breadth/depth-first) pays
for its single issue token (9 us of host time per eager launch, serialised over three
models) and for the barrier ending every round, so it trails multistream here: the
interleaving order matters less than whether each model's own host thread keeps its
streams fed. {order}

Caveats. These are simulated figures. {paper} Read simulated gains as an upper bound: the
simulator shares SMs between
concurrent kernels at block granularity and DRAM bandwidth by processor sharing, but
models no L2 or instruction-cache interference between tenants and no scheduling
overhead of many streams beyond the hardware-queue aliasing. The search space is small
for three models (mode x lanes x stream groups dominate; interleaving only matters in
rounds mode), so every guided seed converges to the same plan; the ablation shows
the cost model's part: it gets there in fewer simulations than random picks do.
"""


def observations(workloads: list[dict[str, Any]], lanes: str) -> str:
    """NOTES with its data-dependent sentences written from the closed-loop results, so
    the text never claims what the figures do not show."""
    w = workloads[0]
    by = {r["scheduler"]: r for r in w["results"]}
    seq, ms, srch = by["sequential"], by["multistream"], by["search"]
    bf, df = by["breadth-first"]["throughput_rps"], by["depth-first"]["throughput_rps"]
    idle = (
        f"One request at a time keeps {100 * seq['sm_utilisation']:.0f}% of the GPU's SMs "
        f"busy, so overlapping the tenants (multistream) gains "
        f"{ms['throughput_rps'] / seq['throughput_rps']:.2f}x over sequential."
    )
    ahead, behind = (
        ("Breadth-first", "depth-first") if bf >= df else ("Depth-first", "breadth-first")
    )
    order = (
        f"{ahead} is ahead of {behind} here ({max(bf, df):.0f} vs {min(bf, df):.0f} req/s); "
        "Yu et al. observe breadth-first ahead."
    )
    g = srch["throughput_rps"] / seq["throughput_rps"]
    where = "within" if 1.3 <= g <= 1.7 else "above" if g > 1.7 else "below"
    paper = f"The search's {g:.2f}x over sequential is {where} the 1.3-1.7x Yu et al. measured on real GPUs."
    return NOTES.format(lanes=lanes, idle=idle, order=order, paper=paper)


def lane_gains(closed: dict[str, Any], graphs: list[Any], gpu: Any) -> str:
    """Each tenant's latency alone with one lane and with the lanes of the closed-loop
    search's best plan (seed 0), in words: what intra-model concurrency buys here."""
    lanes = closed["search_seeds"][0]["genome"]["lanes"]
    ctx = TenantContext(Workload(make_tenants(graphs), requests=1), gpu)
    parts = []
    for t, (model, k) in enumerate(zip(MODELS, lanes, strict=True)):
        one, more = ctx.alone(t, 1)[0] / 1e3, ctx.alone(t, k)[0] / 1e3
        parts.append(
            f"{model} alone takes {one:.2f} ms on one lane"
            + (f" and {more:.2f} ms on its {k}" if k > 1 else "")
        )
    return "; ".join(parts) + " (in this model)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu", default="v100")
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--budget", type=int, default=60)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--rate", type=float, default=200.0, help="Poisson requests/s per tenant")
    ap.add_argument("--duration", type=float, default=200.0, help="Poisson window, ms")
    ap.add_argument("--slo-ms", type=float, default=10.0)
    ap.add_argument("--out", default="benchmarks/results/multitenant")
    ap.add_argument("--json", action="store_true", help="print the JSON report")
    ap.add_argument(
        "--render",
        metavar="JSON",
        help="rewrite the notes and the Markdown of a report this script wrote, without rerunning",
    )
    args = ap.parse_args()
    if args.render:
        report = json.loads(Path(args.render).read_text())
        lanes = report.get("lanes")
        if lanes is None:  # a report from before the notes were computed: keep its lanes text
            lanes = report["notes"].split("the search finds is intra-model concurrency: ")[1]
            lanes = lanes.split(", so the slowest tenant")[0]
            report["lanes"] = lanes
        report["notes"] = observations(report["workloads"], lanes)
        Path(args.render).write_text(json.dumps(report, indent=1) + "\n")
        Path(args.render).with_suffix(".md").write_text(markdown(report))
        return
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    gpu = load_gpu(args.gpu)
    graphs = [build_model(m) for m in MODELS]
    t0 = time.perf_counter()
    workloads = [
        run_workload(
            "closed loop",
            Workload(make_tenants(graphs), requests=args.requests, seed=0),
            gpu,
            args.budget,
            seeds,
        ),
        run_workload(
            "Poisson",
            Workload(
                make_tenants(graphs, Arrival("poisson", rate_rps=args.rate), slo_ms=args.slo_ms),
                duration_ms=args.duration,
                seed=0,
            ),
            gpu,
            args.budget,
            seeds,
        ),
    ]
    report = {
        "gpu": gpu.name,
        "models": list(MODELS),
        "budget": args.budget,
        "seeds": seeds,
        "command": "python benchmarks/multitenant.py"
        + (f" --requests {args.requests}" if args.requests != 20 else "")
        + (f" --budget {args.budget}" if args.budget != 60 else "")
        + (f" --seeds {args.seeds}" if args.seeds != "0,1,2" else ""),
        "machine": f"{platform.machine()} {platform.python_implementation()} "
        f"{platform.python_version()}",
        "wall_s": time.perf_counter() - t0,
        "lanes": lane_gains(workloads[0], graphs, gpu),
        "workloads": workloads,
    }
    report["notes"] = observations(workloads, report["lanes"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    gantts = {w["label"]: w.pop("_gantt") for w in workloads}
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    plot(report, out.with_suffix(".png"))
    from simgpu.multitenant.outputs import plot_tenant_gantt

    plot_tenant_gantt(gantts["closed loop"], out.parent / f"{out.name}_gantt.png", max_ms=15.0)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(markdown(report))


if __name__ == "__main__":
    main()
