"""Gantt charts of a :class:`~simgpu.timeline.Timeline` as PNG, for reports and comparisons.

matplotlib is imported inside the functions (importing ``simgpu`` stays fast) and only through
its object-oriented API with the Agg canvas, so plotting works headless and never touches the
caller's pyplot backend or global state.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from os import PathLike
from typing import TYPE_CHECKING, Any

from simgpu.output import save_figure
from simgpu.timeline import Timeline

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_ROW_IN = 0.32  # inches of figure height per Gantt row
_WIDTH_IN = 14.0
_LABEL_FRAC = 0.035  # label a bar when it spans at least this fraction of the x range
_MAX_LABELS = 400
_HOST_COLOR = "#9e9e9e"
_COPY_COLOR = "#1f77b4"
_SYNC_COLOR = "#5a5a5a"


def op_color(op: str) -> tuple[float, float, float, float]:
    """Colour for an op: crc32 of its name into tab20, stable across runs and processes."""
    from matplotlib import colormaps

    return colormaps["tab20"](zlib.crc32(op.encode("utf-8")) % 20)


def _rows(tl: Timeline) -> list[tuple[str, tuple[str, int, int]]]:
    """Row labels and keys, top to bottom: host threads, then each (device, stream)."""
    multi = len({d for d, _ in tl.streams} | {h.device for h in tl.host}) > 1
    rows: list[tuple[str, tuple[str, int, int]]] = []
    for dev in sorted({h.device for h in tl.host}):
        rows.append((f"host (GPU {dev})" if multi else "host", ("host", dev, 0)))
    for dev, stream in tl.streams:
        rows.append(
            (f"GPU {dev} stream {stream}" if multi else f"stream {stream}", ("s", dev, stream))
        )
    return rows


def _x_end_ms(tl: Timeline) -> float:
    ends = [tl.makespan_us] + [k.end_us for k in tl.kernels] + [h.end_us for h in tl.host]
    ends += [c.end_us for c in tl.copies]
    return max(max(ends) / 1e3, 1e-3)


def _draw_gantt(ax: Axes, tl: Timeline, max_kernels: int | None) -> int:
    """Draw kernel/host bars and command markers on ``ax``; returns the number of kernels drawn."""
    rows = _rows(tl)
    row_of = {key: i for i, (_, key) in enumerate(rows)}
    kernels = sorted(tl.kernels, key=lambda k: (k.start_us, k.device, k.stream, k.end_us))
    if max_kernels is not None:
        kernels = kernels[: max(0, max_kernels)]
    span_ms = _x_end_ms(tl)

    bars: dict[int, tuple[list[tuple[float, float]], list[Any]]] = {}
    for k in kernels:
        xr, cols = bars.setdefault(row_of[("s", k.device, k.stream)], ([], []))
        xr.append((k.start_us / 1e3, max(k.end_us - k.start_us, 0.0) / 1e3))
        cols.append(op_color(k.op))
    for h in tl.host:
        xr, cols = bars.setdefault(row_of[("host", h.device, 0)], ([], []))
        xr.append((h.start_us / 1e3, max(h.end_us - h.start_us, 0.0) / 1e3))
        cols.append(_SYNC_COLOR if "sync" in h.api else _HOST_COLOR)
    for y, (xr, cols) in sorted(bars.items()):
        ax.broken_barh(xr, (y - 0.4, 0.8), facecolors=cols, edgecolor="white", linewidth=0.3)
    # peer copies: hatched bars on their stream's row, labelled with their direction
    copy_rows: dict[int, list[tuple[float, float]]] = {}
    for c in tl.copies:
        copy_rows.setdefault(row_of[("s", c.device, c.stream)], []).append(
            (c.start_us / 1e3, max(c.end_us - c.start_us, 0.0) / 1e3)
        )
    for i, (y, xr) in enumerate(sorted(copy_rows.items())):
        ax.broken_barh(
            xr,
            (y - 0.3, 0.6),
            facecolors="none",
            edgecolor=_COPY_COLOR,
            hatch="////",
            linewidth=0.6,
            label="peer copy" if i == 0 else None,
        )
    for c in tl.copies if len(tl.copies) <= _MAX_LABELS else ():
        if (c.end_us - c.start_us) / 1e3 >= _LABEL_FRAC * span_ms:
            ax.text(
                (c.start_us + c.end_us) / 2e3,
                row_of[("s", c.device, c.stream)],
                f"GPU{c.src}->GPU{c.dst}",
                ha="center",
                va="center",
                fontsize=6,
                clip_on=True,
            )

    if len(kernels) <= _MAX_LABELS:
        for k in kernels:
            dur_ms = (k.end_us - k.start_us) / 1e3
            if dur_ms >= _LABEL_FRAC * span_ms:
                ax.text(
                    (k.start_us + k.end_us) / 2e3,
                    row_of[("s", k.device, k.stream)],
                    k.op,
                    ha="center",
                    va="center",
                    fontsize=6,
                    clip_on=True,
                )

    _draw_events(ax, tl, row_of, s=12, legend=True)

    ax.set_yticks(range(len(rows)), [label for label, _ in rows], fontsize=8)
    ax.set_ylim(len(rows) - 0.5 if rows else 0.5, -0.5)  # first row on top
    ax.set_xlim(0, span_ms * 1.01)
    ax.grid(axis="x", linewidth=0.4, alpha=0.5)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
    return len(kernels)


def _draw_sm_busy(ax: Axes, tl: Timeline) -> None:
    """Step plot of busy SMs per device, held to the end of the run."""
    end_ms = _x_end_ms(tl)
    for dev, points in enumerate(tl.counters):
        if not points:
            continue
        xs = [t / 1e3 for t, *_ in points] + [end_ms]
        ys = [busy for _, busy, *_ in points]
        ys.append(ys[-1])
        name = tl.gpu_names[dev] if dev < len(tl.gpu_names) else "?"
        ax.step(xs, ys, where="post", linewidth=0.8, label=f"GPU {dev} ({name})")
        ax.fill_between(xs, ys, step="post", alpha=0.2)
    top = max(tl.sm_counts, default=1) or 1
    ax.set_ylim(0, top * 1.05)
    ax.set_ylabel("SMs busy", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.grid(linewidth=0.4, alpha=0.5)
    if len(tl.counters) > 1:
        ax.legend(loc="upper right", fontsize=7)


# --- the memory panel -------------------------------------------------------------------
#
# Where a run's memory was accounted (``timeline.memory``, set by simgpu.memory), its live
# bytes per device over time: allocated as a filled step line, the caching allocator's
# reserved bytes as a dashed line, and the peak allocated marked and labelled. MB is MiB.

_MEM_IN = 0.9  # inches of the memory panel in plot_gantt
_CMP_MEM_IN = 0.6  # inches of the memory band under each panel's rows in the comparison
_RESERVED_STYLE = {"linestyle": "--", "linewidth": 0.8}
_MIB = float(1 << 20)


def memory_top_mb(timelines: Iterable[Timeline]) -> float:
    """The largest reserved (or allocated) MB of any device of any run: one scale for all
    the memory panels of a comparison, so their heights compare."""
    top = 0.0
    for tl in timelines:
        for m in tl.memory or ():
            top = max(top, m.peak_reserved / _MIB, m.peak_allocated / _MIB)
            top = max([top, *(max(a, r) / _MIB for _, a, r in m.samples)])
    return top


def _draw_memory(ax: Axes, tl: Timeline, axis_ms: float, top_mb: float, fs: float) -> None:
    """Allocated (filled step) and reserved (dashed step) MB per device to the end of the
    run, the peak marked; ``axis_ms`` is where the time axis ends (its label's side)."""
    tracks = [m for m in tl.memory or () if m.samples]
    end_ms = _x_end_ms(tl)
    for m in tracks:
        color = _DEVICE_COLORS[m.device % len(_DEVICE_COLORS)]
        xs = [t / 1e3 for t, _, _ in m.samples] + [end_ms]
        alloc = [a / _MIB for _, a, _ in m.samples]
        res = [r / _MIB for _, _, r in m.samples]
        alloc.append(alloc[-1])
        res.append(res[-1])
        who = f"GPU {m.device} " if len(tracks) > 1 else ""
        ax.fill_between(xs, alloc, step="post", alpha=0.3, color=color, linewidth=0)
        ax.step(xs, alloc, where="post", linewidth=0.8, color=color, label=f"{who}allocated")
        ax.step(xs, res, where="post", color=color, label=f"{who}reserved", **_RESERVED_STYLE)
        peak = m.peak_allocated / _MIB
        ax.plot([m.peak_at_us / 1e3], [peak], marker="v", color="#d62728", markersize=4,
                linestyle="", zorder=4)  # fmt: skip
        what = f"peak {peak:.1f} MB" + (f" ({m.peak_op})" if m.peak_op else "")
        right = m.peak_at_us / 1e3 > 0.6 * axis_ms  # keep the label inside the axes
        ax.annotate(what, (m.peak_at_us / 1e3, peak), xytext=(-4 if right else 4, 2),
                    textcoords="offset points", ha="right" if right else "left", va="bottom",
                    fontsize=fs, color="#d62728", clip_on=True)  # fmt: skip
    ax.set_ylim(0, max(top_mb, 1e-3) * 1.3)  # room for the peak's label
    ax.set_ylabel("MB", fontsize=fs + 1)
    ax.tick_params(axis="y", labelsize=fs)
    ax.grid(linewidth=0.4, alpha=0.5)
    if tracks:
        ax.legend(loc="upper right", fontsize=fs, ncol=2 * len(tracks), frameon=False)


def plot_gantt(
    timeline: Timeline,
    path: str | PathLike[str],
    title: str | None = None,
    max_kernels: int | None = None,
) -> None:
    """Write a PNG Gantt (host + one row per stream) with busy SMs underneath.

    ``max_kernels`` keeps only the earliest-starting kernels, for very large runs.
    """
    from matplotlib.figure import Figure

    tl = timeline
    n_rows = max(len(_rows(tl)), 1)
    gantt_h = 0.8 + _ROW_IN * n_rows
    ratios = [gantt_h, _MEM_IN, 1.3] if tl.memory else [gantt_h, 1.3]
    fig = Figure(figsize=(_WIDTH_IN, sum(ratios) + 0.5), layout="constrained")
    axes = fig.subplots(len(ratios), 1, sharex=True, gridspec_kw={"height_ratios": ratios})
    ax, ax_sm = axes[0], axes[-1]
    drawn = _draw_gantt(ax, tl, max_kernels)
    if tl.memory:
        _draw_memory(axes[1], tl, _x_end_ms(tl), memory_top_mb([tl]), fs=7)
    _draw_sm_busy(ax_sm, tl)
    ax_sm.set_xlabel("time (ms)")
    head = title or "simgpu"
    note = f", first {drawn} of {len(tl.kernels)} kernels" if drawn < len(tl.kernels) else ""
    ax.set_title(f"{head} — makespan {tl.makespan_us / 1e3:.3f} ms{_memory_note(tl)}{note}",
                 fontsize=10)  # fmt: skip
    save_figure(fig, path, dpi=120)


def _memory_note(tl: Timeline) -> str:
    """ ", peak X MB, reserved Y MB" (the largest device's) where memory was accounted."""
    if not tl.memory:
        return ""
    peak = max(m.peak_allocated for m in tl.memory) / _MIB
    reserved = max(m.peak_reserved for m in tl.memory) / _MIB
    return f", peak {peak:.1f} MB, reserved {reserved:.1f} MB"


# --- the comparison chart of ``simgpu run`` -----------------------------------------------
#
# Several schedules stacked, one panel each, fastest first. Each panel draws the host
# thread(s) and the streams that ran anything (at most ``max_rows`` of them, the busiest;
# a note in its title says how many more there were), coloured by kernel kind with one
# key for the figure, and under it a strip of the share of SMs busy with its own time
# axis. Where a run's memory was accounted, a band under the panel's rows shows its memory
# (see _draw_memory), on one MB scale for all panels. The band is a child axes of the
# panel (it moves and sizes with it, and the figure keeps two axes per panel). The figure is at most MAX_WIDTH_PX x MAX_HEIGHT_PX whatever the model and the
# number of schedules: rows per panel shrink first, then the resolution.

MAX_WIDTH_PX = 2000
MAX_HEIGHT_PX = 3000
MAX_ROWS = 24  # stream rows per panel, at most
_DPI = 120
_CMP_ROW_IN = 0.24
_PANEL_HEAD_IN = 0.45  # title and the space between panels
_STRIP_IN = 0.65  # SM-busy strip with its tick labels and axis label
_KEY_IN = 0.55  # the colour key on top

# Kernel kinds by the name of the library kernel that implements an op (simgpu.kernels
# names them; an imported or calibrated kernel falls in "other"). First match wins.
KERNEL_KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("split-K reduce", ("splitk_reduce",)),
    ("convolution", ("conv", "winograd")),
    ("matmul / GEMM", ("gemm", "bmm", "matmul", "linear")),
    ("normalisation", ("norm",)),
    ("softmax", ("softmax",)),
    ("elementwise", ("elementwise", "relu", "add", "mul", "sigmoid", "gelu", "silu", "tanh")),
    ("pooling", ("pool",)),
    ("copy / concat / slice", ("copy", "concat", "slice", "transpose", "gather")),
)
OTHER_KIND = "other"


def kernel_kind(name: str) -> str:
    """The kind of a kernel, from its name (see KERNEL_KINDS)."""
    low = name.lower()
    for kind, keys in KERNEL_KINDS:
        if any(k in low for k in keys):
            return kind
    return OTHER_KIND


# tab10 without its red and green (the event markers) and its grey (host calls)
_KIND_COLORS = ("#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf",
                "#aec7e8", "#ffbb78", "#c5b0d5")  # fmt: skip


def kind_color(kind: str) -> str:
    """A fixed colour per kind, the same in every chart."""
    names = [k for k, _ in KERNEL_KINDS] + [OTHER_KIND]
    i = names.index(kind) if kind in names else zlib.crc32(kind.encode("utf-8"))
    return _KIND_COLORS[i % len(_KIND_COLORS)]


@dataclass(frozen=True)
class PanelRows:
    """What one panel shows: its rows top to bottom, and the streams left out."""

    rows: list[tuple[str, tuple[str, int, int]]]
    hidden_streams: int  # streams that ran something but have no row
    hidden_kernels: int
    hidden_share: float  # their share of the schedule's kernel time
    empty_streams: int  # streams with commands only (no kernel, no copy): dropped


def _ran_something(tl: Timeline) -> set[tuple[int, int]]:
    """(device, stream) pairs that ran a kernel or a copy."""
    return {(k.device, k.stream) for k in tl.kernels} | {(c.device, c.stream) for c in tl.copies}


def panel_rows(tl: Timeline, max_rows: int = MAX_ROWS) -> PanelRows:
    """Host rows, then the ``max_rows`` busiest streams that ran a kernel or a copy, in
    (device, stream) order, then one row holding the kernels of the streams left out.
    Streams that only recorded or waited on events are dropped."""
    busy: dict[tuple[int, int], float] = {}
    count: dict[tuple[int, int], int] = {}
    for k in tl.kernels:
        key = (k.device, k.stream)
        busy[key] = busy.get(key, 0.0) + max(k.end_us - k.start_us, 0.0)
        count[key] = count.get(key, 0) + 1
    for c in tl.copies:
        key = (c.device, c.stream)
        busy[key] = busy.get(key, 0.0) + max(c.end_us - c.start_us, 0.0)
        count.setdefault(key, 0)
    used = sorted(busy)
    # one stream left out would take the row its "more streams" row takes: show it
    cap = len(used) if len(used) <= max_rows + 1 else max(max_rows, 0)
    keep = set(sorted(used, key=lambda s: (-busy[s], s))[:cap])
    multi = len({d for d, _ in tl.streams} | {h.device for h in tl.host}) > 1
    rows: list[tuple[str, tuple[str, int, int]]] = []
    for dev in sorted({h.device for h in tl.host}):
        rows.append((f"host (GPU {dev})" if multi else "host", ("host", dev, 0)))
    for dev, stream in used:
        if (dev, stream) in keep:
            label = f"GPU {dev} stream {stream}" if multi else f"stream {stream}"
            rows.append((label, ("s", dev, stream)))
    hidden = [s for s in used if s not in keep]
    if hidden:  # their kernels still show, together on one last row
        rows.append((f"{len(hidden)} more streams", ("rest", 0, 0)))
    total = sum(busy.values())
    return PanelRows(
        rows,
        len(hidden),
        sum(count[s] for s in hidden),
        (sum(busy[s] for s in hidden) / total) if total > 0 else 0.0,
        len(set(tl.streams) - set(used)),
    )


def _draw_panel(ax: Axes, tl: Timeline, pr: PanelRows, max_kernels: int | None) -> set[str]:
    """Bars by kernel kind on the panel's rows; returns the kinds drawn."""
    row_of = {key: i for i, (_, key) in enumerate(pr.rows)}
    rest = row_of.get(("rest", 0, 0))
    kernels = sorted(tl.kernels, key=lambda k: (k.start_us, k.device, k.stream, k.end_us))
    if max_kernels is not None:
        kernels = kernels[: max(0, max_kernels)]
    bars: dict[int, tuple[list[tuple[float, float]], list[Any]]] = {}
    kinds: set[str] = set()
    for k in kernels:
        y = row_of.get(("s", k.device, k.stream), rest)
        if y is None:
            continue
        kind = kernel_kind(k.name)
        kinds.add(kind)
        xr, cols = bars.setdefault(y, ([], []))
        xr.append((k.start_us / 1e3, max(k.end_us - k.start_us, 0.0) / 1e3))
        cols.append(kind_color(kind))
    for h in tl.host:
        y = row_of.get(("host", h.device, 0))
        if y is None:
            continue
        xr, cols = bars.setdefault(y, ([], []))
        xr.append((h.start_us / 1e3, max(h.end_us - h.start_us, 0.0) / 1e3))
        cols.append(_SYNC_COLOR if "sync" in h.api else _HOST_COLOR)
    for y, (xr, cols) in sorted(bars.items()):
        ax.broken_barh(xr, (y - 0.4, 0.8), facecolors=cols, edgecolor="white", linewidth=0.2)
    copy_rows: dict[int, list[tuple[float, float]]] = {}
    for c in tl.copies:
        y = row_of.get(("s", c.device, c.stream), rest)
        if y is not None:
            copy_rows.setdefault(y, []).append(
                (c.start_us / 1e3, max(c.end_us - c.start_us, 0.0) / 1e3)
            )
    for y, xr in sorted(copy_rows.items()):
        ax.broken_barh(xr, (y - 0.3, 0.6), facecolors="none", edgecolor=_COPY_COLOR,
                       hatch="////", linewidth=0.6)  # fmt: skip
    _draw_events(ax, tl, row_of, s=6, legend=False)
    fs = 7 if len(pr.rows) <= 16 else 6
    ax.set_yticks(range(len(pr.rows)), [label for label, _ in pr.rows], fontsize=fs)
    ax.set_ylim(len(pr.rows) - 0.5 if pr.rows else 0.5, -0.5)  # first row on top
    ax.grid(axis="x", linewidth=0.4, alpha=0.5)
    ax.tick_params(axis="x", labelbottom=False)  # the strip under the panel carries them
    return kinds


def _draw_events(ax: Any, tl: Timeline, row_of: dict, s: float, legend: bool) -> None:
    """Event records (green, up) and waits (red, down) on their streams' rows; a stream
    without a row (capped away) shows none."""
    for kind, marker, color, dy in (
        ("record", "^", "#2ca02c", 0.3),
        ("wait", "v", "#d62728", -0.3),
    ):
        pts = [
            (c.done_us / 1e3, row_of[("s", c.device, c.stream)] + dy)
            for c in tl.commands
            if c.kind == kind and ("s", c.device, c.stream) in row_of
        ]
        if pts:
            xs, ys = zip(*pts, strict=True)
            style = {"label": f"event {kind}"} if legend else {"linewidths": 0, "alpha": 0.8}
            ax.scatter(xs, ys, marker=marker, s=s, color=color, zorder=3, **style)


_DEVICE_COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860")


def _draw_sm_share(ax: Axes, tl: Timeline, end_ms: float) -> None:
    """Share of each device's SMs busy over time, as a step plot in percent."""
    drawn = 0
    for dev, points in enumerate(tl.counters):
        if not points:
            continue
        n = tl.sm_counts[dev] if dev < len(tl.sm_counts) and tl.sm_counts[dev] else 1
        xs = [t / 1e3 for t, *_ in points] + [end_ms]
        ys = [100.0 * busy / n for _, busy, *_ in points]
        ys.append(ys[-1])
        color = _DEVICE_COLORS[dev % len(_DEVICE_COLORS)]
        ax.step(xs, ys, where="post", linewidth=0.7, color=color, label=f"GPU {dev}")
        ax.fill_between(xs, ys, step="post", alpha=0.2, color=color)
        drawn += 1
    ax.set_ylim(0, 105)
    ax.set_yticks([0, 50, 100], ["0", "50", "100%"], fontsize=6)
    ax.set_ylabel("SMs busy", fontsize=7, rotation=0, ha="right", va="center")
    ax.tick_params(axis="x", labelsize=7, labelbottom=True)
    ax.set_xlabel("time (ms)", fontsize=7, labelpad=1)
    ax.grid(linewidth=0.4, alpha=0.5)
    if drawn > 1:
        ax.legend(loc="upper right", fontsize=6, ncol=drawn, frameon=False)


def _layout(rows: list[tuple[int, int, float]], max_rows: int) -> tuple[int, float, int]:
    """(stream rows per panel, figure height in inches, dpi) for panels of (host rows,
    stream rows, memory band inches) that keep the figure within MAX_HEIGHT_PX: fewer
    stream rows per panel first (down to 2), then a lower resolution."""

    def height(cap: int) -> float:
        return _KEY_IN + sum(
            _PANEL_HEAD_IN + _CMP_ROW_IN * max(h + min(n, cap) + (n > cap), 1) + mem + _STRIP_IN
            for h, n, mem in rows
        )

    cap = max(max_rows, 1)
    while cap > 2 and height(cap) * _DPI > MAX_HEIGHT_PX:
        cap -= 1
    h = height(cap)
    dpi = min(_DPI, int(MAX_HEIGHT_PX // h), int(MAX_WIDTH_PX // _WIDTH_IN))
    return cap, h, max(dpi, 10)


def gantt_compare_figure(
    timelines: Mapping[str, Timeline],
    max_kernels: int | None = None,
    max_rows: int = MAX_ROWS,
) -> tuple[Figure, int]:
    """The comparison figure and the dpi to save it at (see the section comment)."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    items = sorted(timelines.items(), key=lambda kv: (kv[1].makespan_us, kv[0]))
    if not items:
        raise ValueError("plot_gantt_compare needs at least one timeline")
    mem_in = [_CMP_MEM_IN if tl.memory else 0.0 for _, tl in items]
    rows = [
        (len({h.device for h in tl.host}), len(_ran_something(tl)), mem)
        for (_, tl), mem in zip(items, mem_in, strict=True)
    ]
    cap, height, dpi = _layout(rows, max_rows)
    prs = [panel_rows(tl, cap) for _, tl in items]
    fig = Figure(figsize=(_WIDTH_IN, height), layout="constrained")
    ratios: list[float] = []
    for pr, mem in zip(prs, mem_in, strict=True):
        rows_in = _CMP_ROW_IN * max(len(pr.rows), 1)
        ratios += [_PANEL_HEAD_IN * 0.4 + rows_in + mem, _STRIP_IN * 0.55]
    axes = fig.subplots(len(ratios), 1, sharex=True, squeeze=False,
                        gridspec_kw={"height_ratios": ratios})[:, 0]  # fmt: skip
    end = max(_x_end_ms(tl) for _, tl in items)
    best = items[0][1].makespan_us
    top_mb = memory_top_mb(tl for _, tl in items)
    kinds: set[str] = set()
    for i, ((name, tl), pr) in enumerate(zip(items, prs, strict=True)):
        ax, strip = axes[2 * i], axes[2 * i + 1]
        kinds |= _draw_panel(ax, tl, pr, max_kernels)
        if tl.memory:
            _memory_band(ax, tl, len(pr.rows), end, top_mb)
        _draw_sm_share(strip, tl, end)
        ms = tl.makespan_us / 1e3
        if i == 0:
            head = f"{i + 1}. {name} — {ms:.3f} ms  (fastest)"
        else:
            ratio = tl.makespan_us / best if best > 0 else float("inf")
            head = f"{i + 1}. {name} — {ms:.3f} ms  ({ratio:.2f}x the fastest)"
        if tl.memory:
            head += "  ·  " + _memory_note(tl).lstrip(", ")
        if pr.hidden_streams:
            head += (f"  ·  {pr.hidden_streams} more streams not shown, their "
                     f"{pr.hidden_kernels} kernels ({100 * pr.hidden_share:.0f}% of kernel time) "
                     "on the last row")  # fmt: skip
        ax.set_title(head, fontsize=9, loc="left", fontweight="bold" if i == 0 else "normal",
                     color="#1a7f37" if i == 0 else "black")  # fmt: skip
        if i == 0:
            for side in ax.spines.values():
                side.set_edgecolor("#1a7f37")
                side.set_linewidth(1.5)
    axes[-1].set_xlim(0, end * 1.01)
    handles: list[Any] = [
        Patch(facecolor=kind_color(k), label=k)
        for k in [k for k, _ in KERNEL_KINDS] + [OTHER_KIND]
        if k in kinds
    ]
    handles += [
        Patch(facecolor=_HOST_COLOR, label="host API call"),
        Patch(facecolor=_SYNC_COLOR, label="host synchronize"),
    ]
    if any(tl.copies for _, tl in items):
        handles.append(
            Patch(facecolor="none", edgecolor=_COPY_COLOR, hatch="////", label="peer copy")
        )
    handles += [
        Line2D([], [], marker="^", linestyle="", color="#2ca02c", label="event record"),
        Line2D([], [], marker="v", linestyle="", color="#d62728", label="event wait"),
    ]
    fig.legend(handles=handles, loc="outside upper center", ncol=min(len(handles), 7),
               fontsize=7, frameon=False)  # fmt: skip
    return fig, dpi


def _memory_band(ax: Axes, tl: Timeline, n_rows: int, end_ms: float, top_mb: float) -> None:
    """The memory panel of a comparison panel: the rows' axes grow by the band's height
    below the last row and a child axes sharing their time axis fills it."""
    from matplotlib.ticker import MaxNLocator

    band = _CMP_MEM_IN / _CMP_ROW_IN  # in rows
    rows = max(n_rows, 1)
    ax.set_ylim(rows - 0.5 + band, -0.5)
    frac = band / (rows + band)
    mem = ax.inset_axes((0.0, 0.0, 1.0, frac * 0.92), sharex=ax)
    _draw_memory(mem, tl, end_ms, top_mb, fs=6)
    mem.set_ylabel("MB", fontsize=7, rotation=0, ha="right", va="center")
    mem.tick_params(axis="x", labelbottom=False)
    mem.yaxis.set_major_locator(MaxNLocator(nbins=3))


def plot_gantt_compare(
    timelines: Mapping[str, Timeline],
    path: str | PathLike[str],
    max_kernels: int | None = None,
    max_rows: int = MAX_ROWS,
) -> Figure:
    """Stack several schedules' Gantts, fastest first, to compare schedulers (see the
    section comment for what each panel shows); returns the figure written."""
    fig, dpi = gantt_compare_figure(timelines, max_kernels, max_rows)
    save_figure(fig, path, dpi=dpi)
    return fig


__all__ = [
    "gantt_compare_figure",
    "kernel_kind",
    "memory_top_mb",
    "op_color",
    "panel_rows",
    "plot_gantt",
    "plot_gantt_compare",
]
