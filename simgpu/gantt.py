"""Gantt charts of a :class:`~simgpu.timeline.Timeline` as PNG, for reports and comparisons.

matplotlib is imported inside the functions (importing ``simgpu`` stays fast) and only through
its object-oriented API with the Agg canvas, so plotting works headless and never touches the
caller's pyplot backend or global state.
"""

from __future__ import annotations

import zlib
from os import PathLike
from typing import TYPE_CHECKING, Any

from simgpu.output import save_figure
from simgpu.timeline import Timeline

if TYPE_CHECKING:
    from matplotlib.axes import Axes

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

    for kind, marker, color, dy in (
        ("record", "^", "#2ca02c", 0.3),
        ("wait", "v", "#d62728", -0.3),
    ):
        pts = [
            (c.done_us / 1e3, row_of[("s", c.device, c.stream)] + dy)
            for c in tl.commands
            if c.kind == kind
        ]
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.scatter(xs, ys, marker=marker, s=12, color=color, zorder=3, label=f"event {kind}")

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
    fig = Figure(figsize=(_WIDTH_IN, gantt_h + 1.8), layout="constrained")
    ax, ax_sm = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [gantt_h, 1.3]})
    drawn = _draw_gantt(ax, tl, max_kernels)
    _draw_sm_busy(ax_sm, tl)
    ax_sm.set_xlabel("time (ms)")
    head = title or "simgpu"
    note = f", first {drawn} of {len(tl.kernels)} kernels" if drawn < len(tl.kernels) else ""
    ax.set_title(f"{head} — makespan {tl.makespan_us / 1e3:.3f} ms{note}", fontsize=10)
    save_figure(fig, path, dpi=120)


def plot_gantt_compare(
    timelines: dict[str, Timeline],
    path: str | PathLike[str],
    max_kernels: int | None = None,
) -> None:
    """Stack several schedules' Gantts on a shared time axis, to compare schedulers."""
    from matplotlib.figure import Figure

    items = list(timelines.items())
    if not items:
        raise ValueError("plot_gantt_compare needs at least one timeline")
    heights = [0.7 + _ROW_IN * max(len(_rows(tl)), 1) for _, tl in items]
    fig = Figure(figsize=(_WIDTH_IN, sum(heights) + 0.6), layout="constrained")
    axes = fig.subplots(
        len(items), 1, sharex=True, squeeze=False, gridspec_kw={"height_ratios": heights}
    )[:, 0]
    for ax, (name, tl) in zip(axes, items, strict=True):
        _draw_gantt(ax, tl, max_kernels)
        ax.set_title(f"{name} — makespan {tl.makespan_us / 1e3:.3f} ms", fontsize=9, loc="left")
    end = max(_x_end_ms(tl) for _, tl in items)
    axes[-1].set_xlim(0, end * 1.01)
    axes[-1].set_xlabel("time (ms)")
    save_figure(fig, path, dpi=120)


__all__ = ["op_color", "plot_gantt", "plot_gantt_compare"]
