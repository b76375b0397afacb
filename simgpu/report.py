"""Reports of sweep results: speedup bars, the latency/scheduling-time Pareto front,
latency against peak memory with its Pareto front per configuration, Gantt charts of the
winners, and a Markdown plus a self-contained HTML summary.

Everything is read back from the results CSV, so a report can be made from a sweep run
elsewhere (on a cluster, say). Only the Gantt charts simulate again: a row keeps
metrics, not timelines, and the simulator is deterministic, so re-running the winning
combination gives exactly the timeline the sweep measured.
"""

from __future__ import annotations

import base64
import functools
import html
import math
import shlex
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simgpu.errors import SimGPUError
from simgpu.output import save_figure
from simgpu.sweep import Combo, read_results, typed_value


class ReportError(SimGPUError):
    """Results that cannot be reported (empty, unreadable) or an unwritable output folder."""


@dataclass(frozen=True)
class Result:
    """One results row, typed. ``config`` is everything but the scheduler and its options."""

    combo: Combo
    status: str
    error: str
    values: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def failed(self) -> bool:
        """An error or a timeout; ``n/a`` (the scheduler does not apply) is neither."""
        return self.status not in ("ok", "n/a")

    @property
    def config(self) -> tuple[Any, ...]:
        """Model, batch, size, dtype, GPU, machine and memory limit (inf: none): the rows
        a winner is picked among."""
        c = self.combo
        limit = math.inf if c.memory_limit_mb is None else c.memory_limit_mb
        return (c.model, c.batch, c.image_size or 0, c.dtype, c.gpu, c.machine, limit)

    @property
    def workload(self) -> tuple[Any, ...]:
        """The configuration without the hardware: a row of the speedup chart."""
        return (*self.config[:4], self.config[6])

    @property
    def memory_group(self) -> tuple[Any, ...]:
        """The configuration without the memory limit: the schedules (under any limit)
        one latency-against-memory panel compares."""
        return self.config[:6]

    @property
    def hardware(self) -> str:
        return self.combo.gpu or self.combo.machine

    @property
    def variant(self) -> str:
        """The scheduler with its options, e.g. ``ios[r=1;s=3]``, and the runtime it ran
        under where that is not its own (``ios@tensorrt``)."""
        c = self.combo
        name = f"{c.scheduler}[{c.options_text}]" if c.options else c.scheduler
        return f"{name}@{c.runtime}" if c.runtime and c.runtime != _own_runtime(c) else name

    def get(self, column: str) -> Any:
        return self.values.get(column)


@functools.lru_cache(maxsize=256)
def _own_runtime(c: Combo) -> str:
    """The runtime a scheduler variant runs under by default ('' if it cannot be made)."""
    from schedulers.base import SchedulerError, make_scheduler, runtime_of

    try:
        return runtime_of(make_scheduler(c.scheduler, dict(c.options))).name
    except SchedulerError:
        return ""


def load_results(path: str | Path) -> list[Result]:
    out = []
    for n, row in enumerate(read_results(path), start=2):
        try:
            vals = {c: typed_value(c, v) for c, v in row.items()}
            opts = tuple(
                tuple(kv.split("=", 1)) for kv in row["options"].split(";") if row["options"]
            )
            combo = Combo(
                row["model"],
                vals["batch"],
                vals["image_size"],
                row["dtype"],
                row["gpu"],
                row["machine"],
                row["scheduler"],
                opts,  # type: ignore[arg-type]
                row.get("runtime", ""),
                vals.get("memory_limit_mb"),
            )
        except (ValueError, TypeError):
            raise ReportError(f"{path}: line {n}: a number column does not hold a number") from None
        if combo.batch is None:
            raise ReportError(f"{path}: line {n}: no batch size")
        if row["status"] == "ok":  # a hand-edited -5 or nan must not become the winner
            for col in ("latency_ms", "sequential_ms", "speedup"):
                v = vals.get(col)
                if v is not None and not (isinstance(v, float) and math.isfinite(v) and v > 0):
                    raise ReportError(
                        f"{path}: line {n}: {col} of an ok row must be a positive number, "
                        f"got {row[col]!r}"
                    )
            for col in ("peak_memory_mb", "reserved_memory_mb"):
                v = vals.get(col)  # absent in a file from before the memory columns
                if v is not None and not (math.isfinite(v) and v >= 0):
                    raise ReportError(
                        f"{path}: line {n}: {col} of an ok row must be a number of MB, "
                        f"got {row[col]!r}"
                    )
        lim = combo.memory_limit_mb
        if lim is not None and not (math.isfinite(lim) and lim > 0):
            raise ReportError(
                f"{path}: line {n}: memory_limit_mb must be a positive number or empty, "
                f"got {row['memory_limit_mb']!r}"
            )
        out.append(Result(combo, row["status"], row["error"], vals))
    return out


# --- summaries ------------------------------------------------------------------------


def geomean(xs: Iterable[float]) -> float:
    vals = [x for x in xs if x is not None and x > 0 and math.isfinite(x)]
    return math.exp(sum(map(math.log, vals)) / len(vals)) if vals else math.nan


@dataclass
class VariantStats:
    """One scheduler variant across every configuration it ran on."""

    variant: str
    ok: int = 0
    failed: int = 0
    na: int = 0  # configurations it does not apply to (status n/a)
    wins: int = 0
    speedups: list[float] = field(default_factory=list)
    schedule_s: list[float] = field(default_factory=list)
    gpu_search_s: list[float] = field(default_factory=list)
    bound_gaps: list[float] = field(default_factory=list)

    @property
    def speedup(self) -> float:
        return geomean(self.speedups)

    @property
    def rel_latency(self) -> float:
        s = self.speedup
        return 1.0 / s if s > 0 else math.nan

    @property
    def sched_s(self) -> float:
        return geomean(max(t, 1e-7) for t in self.schedule_s)


def winners(results: Sequence[Result]) -> dict[tuple[Any, ...], Result]:
    """The lowest-latency ok row of each configuration (ties: the smaller variant name)."""
    best: dict[tuple[Any, ...], Result] = {}
    for r in results:
        if not r.ok or r.get("latency_ms") is None:
            continue
        cur = best.get(r.config)
        if cur is None or (r.get("latency_ms"), r.variant) < (cur.get("latency_ms"), cur.variant):
            best[r.config] = r
    return best


def variant_stats(results: Sequence[Result]) -> list[VariantStats]:
    stats: dict[str, VariantStats] = {}
    wins = winners(results)
    for r in results:
        s = stats.setdefault(r.variant, VariantStats(r.variant))
        if not r.ok:
            if r.failed:
                s.failed += 1
            else:
                s.na += 1
            continue
        s.ok += 1
        s.wins += wins.get(r.config) is r
        for attr, col in (
            ("speedups", "speedup"),
            ("schedule_s", "schedule_s"),
            ("gpu_search_s", "gpu_search_s"),
            ("bound_gaps", "bound_gap"),
        ):
            v = r.get(col)
            if v is not None and math.isfinite(v):
                getattr(s, attr).append(v)
    return sorted(stats.values(), key=lambda s: (-_nan_low(s.speedup), s.variant))


def _nan_low(x: float) -> float:
    return -math.inf if math.isnan(x) else x


def pareto_front(points: Sequence[tuple[str, float, float]]) -> list[tuple[str, float, float]]:
    """Points ``(name, cost, value)`` not dominated by any other (lower cost and lower value
    are both better), sorted by cost: the trade-off curve IOS and LIOS argue about."""
    pts = sorted(
        (p for p in points if math.isfinite(p[1]) and math.isfinite(p[2])),
        key=lambda p: (p[1], p[2], p[0]),
    )
    front: list[tuple[str, float, float]] = []
    best = math.inf
    for p in pts:
        if p[2] < best:
            front.append(p)
            best = p[2]
    return front


# --- figures --------------------------------------------------------------------------


def _config_labels(
    results: Sequence[Result], with_limit: bool = True
) -> dict[tuple[Any, ...], str]:
    """Short labels: the model plus whichever of batch, size, dtype and (``with_limit``)
    memory limit vary in the file."""
    vary = {
        i: len({r.config[i] for r in results}) > 1
        for i in (1, 2, 3, 6)  # batch, image size, dtype, memory limit
    }
    vary[6] = vary[6] and with_limit
    labels = {}
    for r in results:
        m, b, size, dt = r.config[:4]
        parts = [m]
        if vary[1]:
            parts.append(f"b{b}")
        if vary[2] and size:
            parts.append(f"{size}px")
        if vary[3]:
            parts.append(dt)
        if vary[6]:
            parts.append(_limit_label(r.config[6]))
        labels[r.config] = " ".join(parts)
    return labels


def _limit_label(limit_mb: float) -> str:
    return "no limit" if math.isinf(limit_mb) else f"limit {limit_mb:g} MB"


def _colors(names: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab20" if len(names) > 10 else "tab10"]
    return {n: cmap(i % cmap.N) for i, n in enumerate(names)}


def plot_speedups(results: Sequence[Result], path: Path) -> None:
    """Horizontal grouped bars: speedup over sequential per configuration (rows), one
    panel per GPU/machine side by side; a log axis when speedups span a decade."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ok = [r for r in results if r.ok and r.get("speedup") is not None]
    hws = sorted({r.hardware for r in ok})
    variants = sorted({r.variant for r in ok})
    colors = _colors(variants)
    labels = _config_labels(ok)
    cfgs = sorted({r.workload for r in ok})  # the rows: model, batch, size, dtype, limit
    y_of = {c: i for i, c in enumerate(cfgs)}
    label_of = {r.workload: labels[r.config] for r in ok}
    speeds = [r.get("speedup") for r in ok if r.get("speedup") > 0]
    log = bool(speeds) and max(speeds) / min(speeds) > 10
    height = min(max(3.0, 0.11 * len(cfgs) * len(variants) + 1.5), 60.0)
    fig = Figure(figsize=(4.5 * len(hws) + 2.5, height), layout="constrained")
    axes = fig.subplots(1, len(hws), squeeze=False, sharey=True)[0]
    bar_h = 0.8 / max(len(variants), 1)
    for ax, hw in zip(axes, hws, strict=True):
        rows = [r for r in ok if r.hardware == hw]
        for j, v in enumerate(variants):
            pts = [(y_of[r.workload], r.get("speedup")) for r in rows if r.variant == v]
            if pts:
                ys = [y + (j - (len(variants) - 1) / 2) * bar_h for y, _ in pts]
                ax.barh(ys, [s for _, s in pts], bar_h, color=colors[v], label=v)
        ax.axvline(1.0, color="black", linewidth=0.8)
        if log:
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("speedup over sequential" + (" (log)" if log else ""))
        ax.set_title(hw, fontsize=10)
        ax.grid(axis="x", linewidth=0.4, alpha=0.5)
    axes[0].set_yticks(range(len(cfgs)), [label_of[c] for c in cfgs])
    axes[0].invert_yaxis()  # first configuration at the top
    handles, names = [], []
    for ax in axes:  # a variant may only have run on some of the GPUs
        for h, n in zip(*ax.get_legend_handles_labels(), strict=True):
            if n not in names:
                handles.append(h)
                names.append(n)
    order = sorted(range(len(names)), key=lambda i: names[i])
    fig.legend(
        [handles[i] for i in order],
        [names[i] for i in order],
        fontsize=7,
        ncols=min(len(variants), 6),
        loc="outside upper center",
    )
    save_figure(fig, path, dpi=110)


def plot_pareto(results: Sequence[Result], stats: Sequence[VariantStats], path: Path) -> None:
    """Latency (relative to sequential) against scheduling wall time, with the Pareto front."""
    from matplotlib.figure import Figure

    ok = [r for r in results if r.ok and r.get("speedup") and r.get("schedule_s") is not None]
    variants = sorted({r.variant for r in ok})
    colors = _colors(variants)
    fig = Figure(figsize=(8.5, 5.5), layout="constrained")
    ax = fig.subplots()
    for v in variants:
        rows = [r for r in ok if r.variant == v]
        ax.scatter(
            [max(r.get("schedule_s"), 1e-7) for r in rows],
            [1.0 / r.get("speedup") for r in rows],
            s=12,
            alpha=0.35,
            color=colors[v],
        )
    agg = [(s.variant, s.sched_s, s.rel_latency) for s in stats if s.ok]
    for name, x, y in agg:
        if math.isfinite(x) and math.isfinite(y):
            ax.scatter([x], [y], s=70, color=colors[name], edgecolor="black", label=name, zorder=3)
    front = pareto_front(agg)
    if front:
        ax.step(
            [p[1] for p in front],
            [p[2] for p in front],
            where="post",
            color="black",
            linewidth=1.2,
            linestyle="--",
            label="Pareto front",
            zorder=2,
        )
    ax.set_xscale("log")
    ax.axhline(1.0, color="grey", linewidth=0.6)
    ax.set_xlabel("scheduling wall time (s, log; large markers: geometric mean)")
    ax.set_ylabel("latency / sequential latency (lower is better)")
    ax.set_title("Schedule quality against scheduling cost", fontsize=10)
    ax.grid(linewidth=0.4, alpha=0.5)
    ax.legend(fontsize=7, loc="best")
    save_figure(fig, path, dpi=110)


# --- latency against memory ---------------------------------------------------------


@dataclass
class MemoryPoint:
    """One schedule of a configuration: a row with its peak memory."""

    name: str  # the variant, and its memory limit where it ran under one
    peak_mb: float
    reserved_mb: float | None
    latency_ms: float
    result: Result


def _memory_name(r: Result) -> str:
    lim = r.config[6]
    return r.variant if math.isinf(lim) else f"{r.variant} (limit {lim:g} MB)"


def memory_groups(results: Sequence[Result]) -> dict[tuple[Any, ...], list[MemoryPoint]]:
    """Per configuration without its memory limit (:attr:`Result.memory_group`), every
    ok row that records its peak memory, in name order. Rows from a results file
    written before the memory columns have none and are left out."""
    groups: dict[tuple[Any, ...], list[MemoryPoint]] = defaultdict(list)
    for r in results:
        peak, lat = r.get("peak_memory_mb"), r.get("latency_ms")
        if r.ok and peak is not None and lat is not None:
            point = MemoryPoint(_memory_name(r), peak, r.get("reserved_memory_mb"), lat, r)
            groups[r.memory_group].append(point)
    return {g: sorted(pts, key=lambda p: p.name) for g, pts in sorted(groups.items())}


def memory_front(points: Sequence[MemoryPoint]) -> list[MemoryPoint]:
    """The points no other beats on both peak memory and latency (at least as good on
    both and better on one), by peak memory; equal points are all on it."""

    def beats(p: MemoryPoint, q: MemoryPoint) -> bool:
        return (
            p.peak_mb <= q.peak_mb
            and p.latency_ms <= q.latency_ms
            and (p.peak_mb < q.peak_mb or p.latency_ms < q.latency_ms)
        )

    front = [q for q in points if not any(beats(p, q) for p in points)]
    return sorted(front, key=lambda p: (p.peak_mb, p.latency_ms, p.name))


_LIMIT_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "h")


def plot_memory_pareto(groups: Sequence[tuple[str, Sequence[MemoryPoint]]], path: Path) -> None:
    """One panel per configuration: latency against peak allocated memory, a point per
    schedule (colour: scheduler; marker: memory limit), the Pareto front drawn as a
    dashed step with its points ringed and named, and each memory limit a dotted line."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    variants = sorted({p.result.variant for _, pts in groups for p in pts})
    colors = _colors(variants)
    limits = sorted({p.result.config[6] for _, pts in groups for p in pts})
    finite = [lim for lim in limits if not math.isinf(lim)]  # no limit: always a circle
    marker = {
        lim: _LIMIT_MARKERS[1 + i % (len(_LIMIT_MARKERS) - 1)] for i, lim in enumerate(finite)
    }
    marker[math.inf] = _LIMIT_MARKERS[0]
    cols = min(len(groups), 3)
    rows = math.ceil(len(groups) / cols)
    fig = Figure(figsize=(5.2 * cols, 3.9 * rows + 0.8), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (title, pts) in zip(axes, groups, strict=False):
        front = memory_front(pts)
        on_front = {id(p) for p in front}
        for p in pts:
            hit = id(p) in on_front
            ax.scatter([p.peak_mb], [p.latency_ms], s=60 if hit else 28,
                       marker=marker[p.result.config[6]], color=colors[p.result.variant],
                       edgecolor="black" if hit else "none", linewidth=1.0, zorder=3,
                       alpha=1.0 if hit else 0.7)  # fmt: skip
        steps = list(dict.fromkeys((p.peak_mb, p.latency_ms) for p in front))
        if steps:
            ax.step([x for x, _ in steps], [y for _, y in steps], where="post", color="black",
                    linestyle="--", linewidth=1.0, zorder=2)  # fmt: skip
        named: set[tuple[float, float]] = set()
        for p in front:  # name each point of the front once (ties share a label)
            at = (p.peak_mb, p.latency_ms)
            same = [q.name for q in front if (q.peak_mb, q.latency_ms) == at]
            if at not in named:
                named.add(at)
                ax.annotate(", ".join(same), at, xytext=(5, 4), textcoords="offset points",
                            fontsize=6, clip_on=True)  # fmt: skip
        for lim in sorted({p.result.config[6] for p in pts} - {math.inf}):
            ax.axvline(lim, color="grey", linestyle=":", linewidth=0.9)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("peak allocated memory (MB)", fontsize=8)
        ax.set_ylabel("latency (ms)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(linewidth=0.4, alpha=0.5)
        _span_at_least(ax, [p.peak_mb for p in pts], [p.latency_ms for p in pts])
    for ax in axes[len(groups) :]:
        ax.set_visible(False)
    handles: list[Any] = [
        Line2D([], [], marker="o", linestyle="", color=colors[v], label=v) for v in variants
    ]
    if finite:
        handles += [
            Line2D([], [], marker=marker[lim], linestyle="", color="grey", label=_limit_label(lim))
            for lim in limits
        ]
    handles.append(Line2D([], [], color="black", linestyle="--", marker="o",
                          markerfacecolor="none", label="Pareto front"))  # fmt: skip
    fig.legend(handles=handles, loc="outside upper center", ncols=min(len(handles), 6),
               fontsize=7, frameon=False)  # fmt: skip
    save_figure(fig, path, dpi=110)


def _span_at_least(ax: Any, xs: Sequence[float], ys: Sequence[float], rel: float = 0.05) -> None:
    """Axis limits around the points, at least ``rel`` of their size either side and no
    offset notation: schedules a few bytes apart must not look a panel apart."""
    for vals, set_lim, axis in ((xs, ax.set_xlim, "x"), (ys, ax.set_ylim, "y")):
        lo, hi = min(vals), max(vals)
        pad = max(0.15 * (hi - lo), rel * max(abs(hi), abs(lo)), 1e-9)
        set_lim(max(lo - pad, 0.0) if lo >= 0 else lo - pad, hi + pad)
        ax.ticklabel_format(axis=axis, useOffset=False, style="plain")


def resimulate(result: Result, scheduler: str | None = None) -> Any:
    """Run a row's combination again, under its memory limit (or ``scheduler`` on its
    configuration, without one): a RunResult.

    The simulator is deterministic, so its latency is the row's, bit for bit."""
    from schedulers.base import run_scheduler
    from simgpu.sweep import combo_graph, machine_for

    c = result.combo
    graph = combo_graph(c.model, c.batch, c.image_size, c.dtype)  # a model or a graph file
    machine = machine_for(c.gpu, c.machine)
    if scheduler is not None:  # a baseline: without the row's memory limit, as its speedup
        return run_scheduler(scheduler, graph, machine, runtime=c.runtime or None)
    return run_scheduler(
        c.scheduler, graph, machine, dict(c.options), c.runtime or None, c.memory_limit_bytes
    )


def plot_winner_gantt(winner: Result, path: Path) -> Any:
    """Re-simulate the winning combination (and sequential) and stack their Gantt charts;
    the winner's RunResult, for :func:`explain_row`."""
    from simgpu.gantt import plot_gantt, plot_gantt_compare

    c = winner.combo
    res = resimulate(winner)
    title = f"{c.model} b{c.batch} on {winner.hardware}"
    if winner.variant == "sequential":
        plot_gantt(res.timeline, path, title=f"{title}: sequential")
        return res
    seq = resimulate(winner, "sequential")
    plot_gantt_compare(
        {f"{title}: sequential": seq.timeline, f"{title}: {winner.variant}": res.timeline}, path
    )
    return res


def explain_command(winner: Result) -> str:
    """The ``simgpu explain`` command that tells why this row's schedule takes its time."""
    c = winner.combo
    argv = ["simgpu", "explain", c.model, "--scheduler", c.scheduler]
    if c.batch != 1:
        argv += ["--batch", str(c.batch)]
    if c.image_size is not None:
        argv += ["--image-size", str(c.image_size)]
    if c.dtype != "fp32":
        argv += ["--dtype", c.dtype]
    argv += ["--gpu", c.gpu] if c.gpu else ["--machine", c.machine]
    for k, v in c.options:
        argv += ["--option", f"{c.scheduler}.{k}={v}"]
    if c.runtime:
        argv += ["--runtime", c.runtime]
    if c.memory_limit_mb is not None:
        argv += ["--memory-limit", f"{c.memory_limit_mb:g}"]
    return " ".join(shlex.quote(a) for a in argv)


def explain_row(label: str, winner: Result, res: Any) -> list[str]:
    """One row of the report's explanation table: where the winner's time goes."""
    from simgpu.explain import explain

    ex = explain(res.timeline)
    span = ex.makespan_us or 1.0
    host = ex.host_bound_us()
    return [
        label,
        winner.variant,
        _f(ex.makespan_us / 1e3),
        f"{100 * host / span:.0f}%",
        f"{100 * (span - host) / span:.0f}%",
        f"{100 * ex.gpu_busy_us / span:.0f}%",
        f"`{explain_command(winner)}`",
    ]


# --- tables ---------------------------------------------------------------------------


def _f(v: Any, fmt: str = ".3f") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return format(v, fmt)


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""


def _tables(results: Sequence[Result], stats: Sequence[VariantStats]) -> list[Table]:
    labels = _config_labels(results)
    ok = [r for r in results if r.ok]
    failed = [r for r in results if r.failed]
    tables = [
        Table(
            "Overview",
            ["rows", "ok", "failed", "n/a", "models", "GPUs/machines", "schedulers"],
            [
                [
                    str(len(results)),
                    str(len(ok)),
                    str(len(failed)),
                    str(len(results) - len(ok) - len(failed)),
                    ", ".join(sorted({r.combo.model for r in results})),
                    ", ".join(sorted({r.hardware for r in results})),
                    ", ".join(sorted({r.variant for r in results})),
                ]
            ],
        )
    ]
    tables.append(
        Table(
            "Schedulers",
            [
                "scheduler",
                "ok",
                "failed",
                "n/a",
                "wins",
                "speedup (geo-mean)",
                "min",
                "max",
                "sched s (geo-mean)",
                "GPU search s (total)",
                "bound gap (mean)",
            ],
            [
                [
                    s.variant,
                    str(s.ok),
                    str(s.failed),
                    str(s.na),
                    str(s.wins),
                    _f(s.speedup),
                    _f(min(s.speedups, default=None)),
                    _f(max(s.speedups, default=None)),
                    _f(s.sched_s, ".2g"),
                    _f(sum(s.gpu_search_s) if s.gpu_search_s else None, ".3g"),
                    _f(sum(s.bound_gaps) / len(s.bound_gaps) if s.bound_gaps else None, ".1%"),
                ]
                for s in stats
            ],
            "Speedups are over `sequential` on the same model, batch, size, dtype and GPU; "
            "a scheduler's averages cover the configurations it ran on (see failed; n/a: "
            "it does not apply there by design, e.g. an exact search past its size limit). "
            "The bound gap is latency over the best lower bound, minus one.",
        )
    )
    front = pareto_front([(s.variant, s.sched_s, s.rel_latency) for s in stats if s.ok])
    tables.append(
        Table(
            "Pareto front (scheduling time against latency)",
            ["scheduler", "sched s (geo-mean)", "latency / sequential (geo-mean)"],
            [[n, _f(x, ".2g"), _f(y)] for n, x, y in front],
            "No scheduler off this list is both faster to schedule and better.",
        )
    )
    wins = winners(results)
    by_cfg: dict[tuple[Any, ...], list[Result]] = defaultdict(list)
    for r in results:
        by_cfg[r.config].append(r)
    rows = []
    for cfg in sorted(by_cfg):
        w = wins.get(cfg)
        rs = by_cfg[cfg]
        rows.append(
            [
                labels[cfg],
                rs[0].hardware,
                w.variant if w else "(none ok)",
                _f(w.get("latency_ms") if w else None),
                _f(w.get("sequential_ms") if w else None),
                _f(w.get("speedup") if w else None),
                _f(w.get("lower_bound_ms") if w else None),
                _f(w.get("peak_memory_mb") if w else None, ".1f"),
                str(sum(r.failed for r in rs)),
            ]
        )
    tables.append(
        Table(
            "Best schedule per configuration",
            [
                "model",
                "GPU",
                "winner",
                "latency ms",
                "sequential ms",
                "speedup",
                "lower bound ms",
                "peak MB",
                "failed",
            ],
            rows,
        )
    )
    groups = memory_groups(results)
    if groups:
        glabels = _config_labels(results, with_limit=False)
        mem_rows = [
            [
                glabels[p.result.config],
                p.result.hardware,
                p.name,
                _f(p.latency_ms),
                _f(p.peak_mb, ".1f"),
                _f(p.reserved_mb, ".1f"),
            ]
            for pts in groups.values()
            for p in memory_front(pts)
        ]
        tables.append(
            Table(
                "Pareto front (latency against peak memory)",
                ["configuration", "GPU", "scheduler", "latency ms", "peak MB", "reserved MB"],
                mem_rows,
                "Per configuration, the schedules that no other beats on both latency and "
                "peak allocated memory; a schedule under a memory limit counts as one of its "
                "own. Reserved is the caching allocator's peak (segments held, free or not). "
                "MB is MiB.",
            )
        )
    if failed:
        groups: dict[tuple[str, str], list[Result]] = defaultdict(list)
        for r in failed:
            groups[(r.variant, r.error)].append(r)
        tables.append(
            Table(
                "Failures",
                ["scheduler", "count", "error", "first combination"],
                [
                    [v, str(len(rs)), err[:200], rs[0].combo.label()]
                    for (v, err), rs in sorted(groups.items())
                ],
            )
        )
    return tables


def _md_cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def _markdown(tables: Sequence[Table], images: Sequence[tuple[str, Path]], source: str) -> str:
    out = ["# simgpu sweep report", "", f"Results: `{source}`", ""]
    for t in tables:
        out += [f"## {t.title}", ""]
        if t.note:
            out += [t.note, ""]
        out.append("| " + " | ".join(map(_md_cell, t.header)) + " |")
        out.append("|" + "|".join("---" for _ in t.header) + "|")
        out += ["| " + " | ".join(map(_md_cell, r)) + " |" for r in t.rows]
        out.append("")
    out += ["## Figures", ""]
    for caption, p in images:
        out += [f"### {caption}", "", f"![{caption}]({p.name})", ""]
    return "\n".join(out)


def _html(tables: Sequence[Table], images: Sequence[tuple[str, Path]], source: str) -> str:
    e = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8"><title>simgpu sweep report</title>',
        "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}"
        "table{border-collapse:collapse;margin-bottom:1em}"
        "td,th{border:1px solid #ccc;padding:2px 6px;font-size:90%}"
        "img{max-width:100%}</style></head><body>",
        "<h1>simgpu sweep report</h1>",
        f"<p>Results: <code>{e(source)}</code></p>",
    ]
    for t in tables:
        out.append(f"<h2>{e(t.title)}</h2>")
        if t.note:
            out.append(f"<p>{e(t.note)}</p>")
        out.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in t.header) + "</tr>")
        out += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in t.rows]
        out.append("</table>")
    out.append("<h2>Figures</h2>")
    for caption, p in images:
        data = base64.b64encode(p.read_bytes()).decode("ascii")
        out.append(f"<h3>{e(caption)}</h3>")
        out.append(f'<img alt="{e(caption)}" src="data:image/png;base64,{data}">')
    out.append("</body></html>")
    return "\n".join(out) + "\n"


# --- the report -----------------------------------------------------------------------

MAX_MEMORY_PLOTS = 12  # panels of memory_pareto.png: one per configuration


def _memory_figure(
    rs: Sequence[Result], dest: Path, images: list[tuple[str, Path]], max_panels: int
) -> list[str]:
    """Draw memory_pareto.png (appended to ``images``) where rows carry memory; returns
    the notes on what it leaves out."""
    ok = [r for r in rs if r.ok]
    groups = memory_groups(rs)
    without = sum(1 for r in ok if r.get("peak_memory_mb") is None)
    notes: list[str] = []
    if not groups:
        return [
            "no latency-against-memory plot: the results carry no peak memory (a sweep "
            "from before simgpu recorded it); sweeping again into the same file adds it"
        ]
    if without:
        notes.append(
            f"{without} ok rows carry no peak memory (written before the memory columns): "
            "left out of the latency-against-memory plot"
        )
    if max_panels == 0:
        return notes
    labels = _config_labels(rs, with_limit=False)
    shown = list(groups.items())[:max_panels]
    panels = [
        (f"{labels[pts[0].result.config]}, {pts[0].result.hardware}", pts) for _, pts in shown
    ]
    images.append(("Latency against peak memory", dest / "memory_pareto.png"))
    plot_memory_pareto(panels, images[-1][1])
    if len(groups) > max_panels:
        notes.append(
            f"latency against peak memory for the first {max_panels} of {len(groups)} "
            "configurations (the table lists every front)"
        )
    return notes


@dataclass
class Report:
    out: Path
    markdown: Path
    html: Path
    images: list[Path]
    notes: list[str]


def default_out(results: str | Path) -> Path:
    p = Path(results)
    return p.with_name(p.stem + "_report")


def make_report(
    results: str | Path,
    out: str | Path | None = None,
    max_gantt: int = 6,
    max_memory_plots: int = MAX_MEMORY_PLOTS,
) -> Report:
    """Write ``speedup.png``, ``pareto.png``, ``memory_pareto.png`` (latency against peak
    memory, one panel for each of the first ``max_memory_plots`` configurations),
    ``gantt_*.png``, ``summary.md`` and the self-contained ``summary.html`` into ``out``
    (default: RESULTS_report/ beside it)."""
    if max_gantt < 0:
        raise ReportError(f"--max-gantt must be 0 or more, not {max_gantt}")
    if max_memory_plots < 0:
        raise ReportError(f"--max-memory-plots must be 0 or more, not {max_memory_plots}")
    rs = load_results(results)
    if not rs:
        raise ReportError(f"{results}: no results rows")
    dest = Path(out) if out is not None else default_out(results)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReportError(f"cannot create {dest}: {e.strerror or e}") from None
    stats = variant_stats(rs)
    images: list[tuple[str, Path]] = []
    notes: list[str] = []
    ok = [r for r in rs if r.ok]
    try:
        if ok:
            images.append(("Speedup over sequential", dest / "speedup.png"))
            plot_speedups(rs, images[-1][1])
            images.append(("Latency against scheduling time", dest / "pareto.png"))
            plot_pareto(rs, stats, images[-1][1])
            notes += _memory_figure(rs, dest, images, max_memory_plots)
        wins = winners(rs)
        labels = _config_labels(rs)
        why: list[list[str]] = []
        for i, cfg in enumerate(sorted(wins)[:max_gantt]):
            w = wins[cfg]
            p = dest / f"gantt_{i + 1:02d}.png"
            try:
                res = plot_winner_gantt(w, p)
            except SimGPUError as e:
                notes.append(f"no Gantt chart for {w.combo.label()}: {e}")
                continue
            images.append((f"Winner on {labels[cfg]}, {w.hardware}: {w.variant}", p))
            why.append(explain_row(f"{labels[cfg]}, {w.hardware}", w, res))
        if len(wins) > max_gantt:
            notes.append(f"Gantt charts for the first {max_gantt} of {len(wins)} configurations")
        tables = _tables(rs, stats)
        if why:  # the critical path of each charted winner (simgpu explain)
            head = ["configuration", "winner", "latency ms", "host-bound", "GPU-bound",
                    "GPU busy", "why, in detail"]  # fmt: skip
            tables.append(Table("Where the winners' time goes", head, why))
        if notes:
            tables.append(Table("Notes", ["note"], [[n] for n in notes]))
        md = dest / "summary.md"
        md.write_text(_markdown(tables, images, str(results)), encoding="utf-8")
        page = dest / "summary.html"
        page.write_text(_html(tables, images, str(results)), encoding="utf-8")
    except OSError as e:
        raise ReportError(f"cannot write the report in {dest}: {e.strerror or e}") from None
    return Report(dest, md, page, [p for _, p in images], notes)


__all__ = [
    "MemoryPoint",
    "Report",
    "ReportError",
    "Result",
    "geomean",
    "load_results",
    "make_report",
    "memory_front",
    "memory_groups",
    "pareto_front",
    "plot_memory_pareto",
    "resimulate",
    "variant_stats",
    "winners",
]
