"""The comparison Gantt chart of ``simgpu run``: bounded size on a model with hundreds of
streams, panels fastest first with the fastest marked, rows capped with a note, a time
axis, an SM-busy strip under every panel, and a colour key by kernel kind. The figure's
structure is tested, not its pixels."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from schedulers.base import run_scheduler
from simgpu.gantt import (
    MAX_HEIGHT_PX,
    MAX_ROWS,
    MAX_WIDTH_PX,
    gantt_compare_figure,
    kernel_kind,
    panel_rows,
    plot_gantt_compare,
)
from simgpu.hardware import Machine, preset
from simgpu.models import build_model
from simgpu.timeline import CommandRecord, HostRecord, KernelRecord, Timeline

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == PNG_MAGIC
    return struct.unpack(">II", data[16:24])


def _timeline(streams: int, makespan: float, name: str = "simt_conv_128x32") -> Timeline:
    """One kernel per stream, back to back, a launch for each, and one stream that only
    waits on an event (no kernel: dropped from the chart)."""
    kernels, host = [], []
    t = 0.0
    for s in range(streams):
        host.append(HostRecord("launch", 0, t, t + 1.0, f"op{s}"))
        dur = (s + 1) * makespan / (streams * (streams + 1) / 2)
        kernels.append(KernelRecord(f"op{s}", name, 0, s, s, t + 1.0, t + 2.0, t + 2.0 + dur, 80, 256, 1))  # fmt: skip
        t += 1.0
    commands = [CommandRecord("wait", 0, streams + 5, 1.0, 1.0, "e0")]
    end = max(k.end_us for k in kernels)
    return Timeline(
        gpu_names=["v100-sxm2"],
        sm_counts=[80],
        kernels=kernels,
        commands=commands,
        host=host,
        makespan_us=end,
        counters=[[(0.0, 0, 0.0, 0.0), (2.0, 40, 0.0, 0.5), (end, 0, 0.0, 0.0)]],
    )


def _panels(fig) -> list[tuple[object, object]]:
    """(Gantt axes, SM-busy strip) per panel, top to bottom."""
    axes = fig.axes
    assert len(axes) % 2 == 0
    return [(axes[i], axes[i + 1]) for i in range(0, len(axes), 2)]


# --- on a real model ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def bert_runs() -> dict[str, Timeline]:
    """bert_base under nimble (423 streams) and sequential (one)."""
    g = build_model("bert_base")
    m = Machine.single(preset("v100"))
    return {n: run_scheduler(n, g, m).timeline for n in ("sequential", "nimble")}


def test_bert_base_two_schedulers_image_is_bounded(bert_runs, tmp_path: Path) -> None:
    assert len(bert_runs["nimble"].streams) > 400  # the case the issue measured at 16598 px
    path = tmp_path / "bert.png"
    fig = plot_gantt_compare(bert_runs, path)
    w, h = png_size(path)
    assert w <= MAX_WIDTH_PX and h <= MAX_HEIGHT_PX, (w, h)
    (nimble, _), (seq, _) = _panels(fig)
    assert nimble.get_title(loc="left").startswith("1. nimble") and "(fastest)" in nimble.get_title(
        loc="left"
    )
    # one host row, MAX_ROWS streams, and the row holding every other stream's kernels
    labels = [t.get_text() for t in nimble.get_yticklabels()]
    assert len(labels) == 1 + MAX_ROWS + 1
    hidden = len(bert_runs["nimble"].streams) - MAX_ROWS
    assert labels[-1] == f"{hidden} more streams"
    assert f"{hidden} more streams not shown" in nimble.get_title(loc="left")
    assert [t.get_text() for t in seq.get_yticklabels()] == ["host", "stream 0"]


# --- structure on hand-built timelines ---------------------------------------------------------


def test_panels_sorted_by_latency_fastest_marked() -> None:
    tls = {"slow": _timeline(3, 300.0), "fast": _timeline(3, 100.0), "mid": _timeline(3, 200.0)}
    fig, _ = gantt_compare_figure(tls)
    titles = [g.get_title(loc="left") for g, _ in _panels(fig)]
    assert [t.split(" — ")[0] for t in titles] == ["1. fast", "2. mid", "3. slow"]
    assert "(fastest)" in titles[0] and all("(fastest)" not in t for t in titles[1:])
    ratio = tls["slow"].makespan_us / tls["fast"].makespan_us
    assert f"({ratio:.2f}x the fastest)" in titles[2]


def test_rows_capped_with_a_note_and_empty_streams_dropped() -> None:
    tl = _timeline(40, 400.0)
    assert len(tl.streams) == 41  # 40 with a kernel, one that only waited
    pr = panel_rows(tl, max_rows=24)
    streams = [label for label, key in pr.rows if key[0] == "s"]
    assert len(streams) == 24 and pr.hidden_streams == 16 and pr.empty_streams == 1
    assert pr.rows[-1][0] == "16 more streams" and pr.hidden_kernels == 16
    # the busiest are kept: kernel s lasts (s + 1) units, so streams 16..39
    assert streams == [f"stream {s}" for s in range(16, 40)]
    assert 0 < pr.hidden_share < 0.5
    fig, _ = gantt_compare_figure({"x": tl}, max_rows=24)
    ((g, _),) = _panels(fig)
    assert "16 more streams not shown" in g.get_title(loc="left")
    # one stream over the cap is shown: its "more streams" row would take the same room
    assert panel_rows(_timeline(25, 100.0), max_rows=24).hidden_streams == 0


def test_every_panel_has_a_time_axis_and_an_sm_busy_strip() -> None:
    fig, _ = gantt_compare_figure({"a": _timeline(3, 100.0), "b": _timeline(5, 150.0)})
    FigureCanvasAgg(fig).draw()
    for _, strip in _panels(fig):
        assert strip.get_xlabel() == "time (ms)"
        ticks = [t for t in strip.get_xticklabels() if t.get_visible() and t.get_text()]
        assert len(ticks) >= 2
        assert strip.get_ylabel() == "SMs busy"
        (line,) = strip.get_lines()
        assert max(line.get_ydata()) == pytest.approx(50.0)  # 40 of 80 SMs, in percent


def test_colour_key_by_kernel_kind() -> None:
    assert kernel_kind("simt_conv_128x32_splitk8") == "convolution"
    assert kernel_kind("splitk_reduce") == "split-K reduce"
    assert kernel_kind("simt_bmm_64x64_splitk2") == "matmul / GEMM"
    assert kernel_kind("layernorm_rows") == "normalisation"
    assert kernel_kind("concat_copy") == "copy / concat / slice"
    assert kernel_kind("my_custom_kernel") == "other"
    tls = {"a": _timeline(3, 100.0), "b": _timeline(3, 120.0, name="softmax_rows")}
    fig, _ = gantt_compare_figure(tls)
    (legend,) = fig.legends
    keys = [t.get_text() for t in legend.get_texts()]
    assert keys[:2] == ["convolution", "softmax"]  # the kinds drawn, in the key's order
    assert {"host API call", "event record", "event wait"} <= set(keys)
    assert "matmul / GEMM" not in keys  # no kind that is not drawn


def test_many_schedules_stay_within_bounds(tmp_path: Path) -> None:
    tls = {f"s{i:02d}": _timeline(30, 100.0 + i) for i in range(14)}
    path = tmp_path / "many.png"
    fig = plot_gantt_compare(tls, path)
    w, h = png_size(path)
    assert w <= MAX_WIDTH_PX and h <= MAX_HEIGHT_PX, (w, h)
    assert len(_panels(fig)) == 14
    for g, _ in _panels(fig):  # rows shrank to fit, each panel says so
        assert "more streams not shown" in g.get_title(loc="left")


def test_empty_and_single_timelines(tmp_path: Path) -> None:
    empty = Timeline(gpu_names=["v100-sxm2"], sm_counts=[80])
    fig = plot_gantt_compare({"empty": empty}, tmp_path / "e.png")
    assert png_size(tmp_path / "e.png")[0] <= MAX_WIDTH_PX
    ((g, _),) = _panels(fig)
    assert "(fastest)" in g.get_title(loc="left")
    with pytest.raises(ValueError, match="at least one"):
        gantt_compare_figure({})
