"""Memory everywhere a latency is (issue 17): the Chrome trace's memory counter, the
Gantt charts' memory panels, the sweep's memory columns and memory-limit dimension, and
the report's latency-against-peak-memory Pareto plot; old results files without the
memory columns still load, resume and report."""

from __future__ import annotations

import csv
import json
import math
import struct
from functools import cache
from pathlib import Path

import pytest
from _cli import run_error
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.backends.backend_agg import FigureCanvasAgg

from calibrate.kineto import parse_trace
from schedulers.base import REGISTRY, RunResult, run_scheduler
from simgpu.chrome_trace import MEMORY_COUNTER, dumps_chrome_trace, to_chrome_trace
from simgpu.cli import main
from simgpu.gantt import MAX_HEIGHT_PX, MAX_WIDTH_PX, gantt_compare_figure, plot_gantt
from simgpu.hardware import Machine, preset
from simgpu.memory import MB
from simgpu.models import build_model
from simgpu.report import (
    MemoryPoint,
    load_results,
    make_report,
    memory_front,
    memory_groups,
)
from simgpu.sweep import (
    COLUMNS,
    LEGACY_COLUMNS,
    Combo,
    Grid,
    SweepError,
    grid_from_dict,
    limit_text,
    read_results,
    run_sweep,
)
from simgpu.timeline import KernelRecord, MemoryTrack, Timeline

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SMALL = dict(models=["squeezenet1_1"], image_sizes=[64], gpus=["v100"])


@cache
def _run(name: str) -> RunResult:
    """SqueezeNet 1.1 at 64 px: milliseconds per schedule."""
    g = build_model("squeezenet1_1", image_size=64)
    return run_scheduler(name, g, Machine.single(preset("v100")))


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == PNG_MAGIC
    return struct.unpack(">II", data[16:24])


# --- Chrome trace ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sequential", "wavefront"])
def test_trace_has_a_memory_counter_per_device(name: str) -> None:
    res = _run(name)
    (track,) = res.timeline.memory
    trace = json.loads(dumps_chrome_trace(res.timeline))  # strict JSON (no NaN)
    mem = [e for e in trace["traceEvents"] if e.get("name") == MEMORY_COUNTER]
    assert mem and all(e["ph"] == "C" and e["cat"] == "memory" for e in mem)
    assert {(e["pid"], e["tid"]) for e in mem} == {(0, 0)}
    assert all(set(e["args"]) == {"allocated", "reserved"} for e in mem)
    # one event per sample instant, holding the state after it, in MiB
    by_ts: dict[float, tuple[int, int]] = {}
    for t, a, r in track.samples:
        by_ts[round(t * 1000) / 1000] = (a, r)
    assert [e["ts"] for e in mem] == sorted(by_ts)
    for e in mem:
        a, r = by_ts[e["ts"]]
        assert e["args"]["allocated"] == pytest.approx(a / MB, abs=1e-6)
        assert e["args"]["reserved"] == pytest.approx(r / MB, abs=1e-6)
        assert e["args"]["reserved"] >= e["args"]["allocated"]
    peak = max(e["args"]["allocated"] for e in mem)
    assert peak == pytest.approx(res.memory.peak_memory_mb, abs=1e-6)
    (other,) = trace["otherData"]["memory"]
    assert other["peak_memory_mb"] == pytest.approx(res.memory.peak_memory_mb, abs=1e-6)
    assert other["reserved_memory_mb"] == pytest.approx(res.memory.reserved_memory_mb, abs=1e-6)
    assert other["peak_op"] == track.peak_op


def test_a_trace_without_memory_has_no_memory_counter() -> None:
    tl = Timeline(gpu_names=["v100-sxm2"], sm_counts=[80])
    trace = to_chrome_trace(tl)
    assert not [e for e in trace["traceEvents"] if e.get("cat") == "memory"]
    assert "memory" not in trace["otherData"]


def test_replay_reader_skips_the_memory_counter() -> None:
    """calibrate.kineto reads the same records with or without the counter events."""
    trace = to_chrome_trace(_run("wavefront").timeline)
    bare = dict(trace)
    bare["traceEvents"] = [e for e in trace["traceEvents"] if e.get("cat") != "memory"]
    assert len(bare["traceEvents"]) < len(trace["traceEvents"])
    a, b = parse_trace(trace), parse_trace(bare)
    assert (a.activities, a.calls, a.records, a.waits, a.syncs, a.graph_nodes) == (
        b.activities,
        b.calls,
        b.records,
        b.waits,
        b.syncs,
        b.graph_nodes,
    )


# --- Gantt ----------------------------------------------------------------------------


def _memory_axes(fig) -> list:
    """The comparison's memory bands: child axes of the panels, labelled MB."""
    return [c for ax in fig.axes for c in ax.child_axes if c.get_ylabel() == "MB"]


def test_plot_gantt_has_a_memory_panel(tmp_path: Path, monkeypatch) -> None:
    import simgpu.gantt as gantt_mod

    res = _run("nimble-eager")
    (track,) = res.timeline.memory
    path = tmp_path / "g.png"
    plot_gantt(res.timeline, path, title="nimble-eager")
    assert path.read_bytes()[:8] == PNG_MAGIC
    figs: list = []  # the same figure again, kept to inspect: Gantt, memory, SMs busy
    monkeypatch.setattr(gantt_mod, "save_figure", lambda fig, p, dpi: figs.append(fig))
    plot_gantt(res.timeline, tmp_path / "x.png", title="nimble-eager")
    (fig,) = figs
    gantt, mem, sm = fig.axes
    assert mem.get_ylabel() == "MB" and sm.get_ylabel() == "SMs busy"
    labels = [line.get_label() for line in mem.get_lines()]
    assert "allocated" in labels and "reserved" in labels
    alloc = next(line for line in mem.get_lines() if line.get_label() == "allocated")
    assert max(alloc.get_ydata()) == pytest.approx(track.peak_allocated / MB)
    marks = [t.get_text() for t in mem.texts]
    assert any(t.startswith(f"peak {track.peak_allocated / MB:.1f} MB") for t in marks)
    assert f"peak {res.memory.peak_memory_mb:.1f} MB" in gantt.get_title()


def test_comparison_has_a_memory_band_per_panel_on_one_scale(tmp_path: Path) -> None:
    tls = {n: _run(n).timeline for n in ("sequential", "nimble-eager", "wavefront")}
    fig, _ = gantt_compare_figure(tls)
    FigureCanvasAgg(fig).draw()
    assert len(fig.axes) == 2 * len(tls)  # still a Gantt and an SM strip per panel
    bands = _memory_axes(fig)
    assert len(bands) == len(tls)
    assert len({b.get_ylim() for b in bands}) == 1  # one MB scale to compare heights
    top = max(t.peak_reserved for tl in tls.values() for t in tl.memory) / MB
    assert bands[0].get_ylim()[1] >= top
    for tl, band in zip(sorted(tls.values(), key=lambda t: t.makespan_us), bands, strict=True):
        (track,) = tl.memory
        assert any(
            t.get_text().startswith(f"peak {track.peak_allocated / MB:.1f}") for t in band.texts
        )
    titles = [ax.get_title(loc="left") for ax in fig.axes[::2]]
    assert all(" MB, reserved " in t for t in titles)
    # panels without memory have no band
    bare = Timeline(gpu_names=["v100-sxm2"], sm_counts=[80])
    fig2, _ = gantt_compare_figure({"bare": bare})
    assert _memory_axes(fig2) == []


def _fake_memory(tl: Timeline, steps: int = 200) -> Timeline:
    """A copy of ``tl`` with a busy memory track."""
    from dataclasses import replace

    end = tl.makespan_us
    samples = [(end * i / steps, (i % 7 + 1) * MB, 8 * MB) for i in range(steps)]
    track = MemoryTrack(0, samples, 7 * MB, 8 * MB, samples[6][0], "op6", MB)
    return replace(tl, memory=[track])


def _streams(n: int, makespan: float) -> Timeline:
    """One kernel per stream, back to back (as tests/test_gantt.py builds them)."""
    kernels = [
        KernelRecord(f"op{s}", "conv", 0, s, s, s, s + 1.0, s + 1.0 + makespan / n, 80, 256, 1)
        for s in range(n)
    ]
    end = max(k.end_us for k in kernels)
    return Timeline(gpu_names=["v100-sxm2"], sm_counts=[80], kernels=kernels, makespan_us=end,
                    counters=[[(0.0, 0, 0.0, 0.0), (1.0, 40, 0.0, 0.5), (end, 0, 0.0, 0.0)]])  # fmt: skip


def test_many_panels_with_memory_stay_within_bounds(tmp_path: Path) -> None:
    # rows must shrink to fit: 6 panels of 40 streams would be ~63 inches at full height
    tls = {f"s{i:02d}": _fake_memory(_streams(40, 100.0 + i)) for i in range(6)}
    from simgpu.gantt import plot_gantt_compare

    path = tmp_path / "many.png"
    fig = plot_gantt_compare(tls, path)
    w, h = _png_size(path)
    assert w <= MAX_WIDTH_PX and h <= MAX_HEIGHT_PX, (w, h)
    assert len(_memory_axes(fig)) == 6
    assert all("more streams not shown" in ax.get_title(loc="left") for ax in fig.axes[::2])


# --- sweep ----------------------------------------------------------------------------


def test_sweep_rows_carry_memory_like_simgpu_run(tmp_path: Path, capsys) -> None:
    out = tmp_path / "r.csv"
    argv = ["squeezenet1_1", "--image-size", "64", "--gpu", "v100", "--scheduler", "sequential"]
    assert main(["sweep", "--model", *argv, "--workers", "1", "--quiet", "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["run", *argv, "--json"]) == 0
    (ran,) = json.loads(capsys.readouterr().out)["results"]
    (row,) = read_results(out)
    assert row["memory_limit_mb"] == ""
    assert float(row["peak_memory_mb"]) == ran["peak_memory_mb"]
    assert float(row["reserved_memory_mb"]) == ran["reserved_memory_mb"]
    assert float(row["reserved_memory_mb"]) >= float(row["peak_memory_mb"]) > 0
    header = out.read_text().splitlines()[0].split(",")
    assert {"memory_limit_mb", "peak_memory_mb", "reserved_memory_mb"} <= set(header)
    pq = pytest.importorskip("pyarrow.parquet")
    (t,) = pq.read_table(out.with_suffix(".parquet")).to_pylist()
    assert t["peak_memory_mb"] == ran["peak_memory_mb"] and t["memory_limit_mb"] is None


def test_memory_limit_is_a_dimension(tmp_path: Path) -> None:
    seq = _run("sequential").memory
    lower = seq.lower_bound / MB
    # one limit below what any schedule must hold, one just above sequential's peak
    limits = [None, round(lower * 0.5, 3), round(seq.peak_memory_mb + 0.25, 3)]
    grid = Grid(**SMALL, schedulers=["sequential", "autograph"], memory_limits_mb=limits)
    combos = grid.combos()
    assert len(combos) == 6 and len({c.key() for c in combos}) == 6
    res = run_sweep(grid, tmp_path / "r.csv", workers=1, progress=False)
    rows = {(r["scheduler"], r["memory_limit_mb"]): r for r in res.rows}
    assert {k[1] for k in rows} == {"", limit_text(limits[1]), limit_text(limits[2])}
    for (_, lim), r in rows.items():
        if lim == "":
            assert r["status"] == "ok" and float(r["peak_memory_mb"]) > 0
        elif lim == limit_text(limits[1]):  # below the lower bound: a one-line reason
            assert r["status"] == "error" and "\n" not in r["error"]
            assert r["error"].startswith("MemoryLimitError: memory limit")
            assert "any schedule of 'squeezenet1_1' must hold" in r["error"]
        elif r["status"] == "ok":  # a schedule under a limit fits it
            assert float(r["peak_memory_mb"]) <= float(lim)
        else:  # or it is a failed row saying why
            assert r["status"] == "error" and "\n" not in r["error"]
            assert r["error"].startswith("MemoryLimitError: ") and "memory limit" in r["error"]
            assert r["latency_ms"] == "" and r["peak_memory_mb"] == ""
    # sequential fits a limit above its own peak; autograph (its rewritten graph holds
    # more) does not schedule within a limit: a failed row naming it and the op
    assert rows[("sequential", limit_text(limits[2]))]["status"] == "ok"
    free_peak = float(rows[("autograph", "")]["peak_memory_mb"])
    if not REGISTRY["autograph"].memory_aware and free_peak > limits[2]:
        err = rows[("autograph", limit_text(limits[2]))]["error"]
        assert "autograph does not schedule within a memory limit" in err and " op '" in err
    # the limit is a key: a rerun skips every row, a new limit runs only its own
    assert run_sweep(grid, tmp_path / "r.csv", workers=1, progress=False).ran == 0
    grid.memory_limits_mb = [*limits, 64]
    again = run_sweep(grid, tmp_path / "r.csv", workers=1, progress=False)
    assert again.ran == 2 and again.skipped == 6


@pytest.mark.parametrize(
    "limits,match",
    [([-1], "positive number of MB"), ([0], "positive"), ([math.nan], "positive"),
     ([True], "positive number"), (["512"], "positive number"), ([2**40], "positive")],
)  # fmt: skip
def test_bad_limits_stop_the_grid_before_any_row(limits, match, tmp_path: Path) -> None:
    with pytest.raises(SweepError, match=match):
        run_sweep(
            Grid(**SMALL, schedulers=["sequential"], memory_limits_mb=limits), tmp_path / "r.csv"
        )
    assert not (tmp_path / "r.csv").exists()


def test_limits_from_toml_and_the_cli(tmp_path: Path, capsys) -> None:
    p = tmp_path / "g.toml"
    p.write_text('models = ["squeezenet1_1"]\nmemory_limit_mb = [512, "none", 0.5, 512.0]\n')
    from simgpu.sweep import load_grid

    assert load_grid(p).memory_limits_mb == [512.0, None, 0.5]
    assert grid_from_dict({"models": ["m"], "memory_limit_mb": None}).memory_limits_mb == [None]
    assert grid_from_dict({"models": ["m"], "memory_limit_mb": 100}).memory_limits_mb == [100.0]
    for bad, match in (("[]", "memory_limit_mb is empty"), ("['big']", r"memory_limit_mb\[0\]"),
                       ("[-5]", r"memory_limit_mb\[0\]"), ("[true]", r"memory_limit_mb\[0\]")):  # fmt: skip
        p.write_text(f'models = ["squeezenet1_1"]\nmemory_limit_mb = {bad}\n')
        with pytest.raises(SweepError, match=match):
            load_grid(p)
    out = str(tmp_path / "r.csv")
    line = run_error(
        capsys, "sweep", "--model", "squeezenet1_1", "--memory-limit", "lots", "-o", out
    )
    assert "--memory-limit 'lots'" in line
    line = run_error(capsys, "sweep", "--model", "squeezenet1_1", "--memory-limit", "-3", "-o", out)
    assert "--memory-limit" in line and "positive" in line
    assert not Path(out).exists()
    assert [limit_text(v) for v in (None, 512.0, 0.5, 1e-3)] == ["", "512", "0.5", "0.001"]
    assert (
        Combo("m", 1, None, "fp32", "g", "", "s", memory_limit_mb=0.5).memory_limit_bytes == MB // 2
    )


def _write_legacy(rows: list[dict[str, str]], path: Path) -> Path:
    """A results file as written before the memory columns existed."""
    with path.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(LEGACY_COLUMNS)
        for r in rows:
            w.writerow([r[c] for c in LEGACY_COLUMNS])
    return path


def test_old_results_load_resume_in_the_new_layout_and_report(tmp_path: Path) -> None:
    grid = Grid(**SMALL, schedulers=["sequential", "sequential-graph"])
    fresh = run_sweep(grid, tmp_path / "new.csv", workers=1, progress=False).rows
    other = run_sweep(
        Grid(**SMALL, batches=[2], schedulers=["sequential"]),
        tmp_path / "other.csv",
        workers=1,
        progress=False,
    ).rows
    old = _write_legacy(fresh + other, tmp_path / "old.csv")
    rows = read_results(old)
    assert all(r["peak_memory_mb"] == r["memory_limit_mb"] == "" for r in rows)
    assert [r["latency_ms"] for r in rows] == [r["latency_ms"] for r in fresh + other]
    # an old file still reports: no memory plot, a note, no error
    rep = make_report(old, tmp_path / "old_report", max_gantt=0)
    assert "memory_pareto.png" not in {p.name for p in rep.images}
    assert any("carry no peak memory" in n for n in rep.notes)
    assert "## Pareto front (latency against peak memory)" not in rep.markdown.read_text()
    # resuming on it: the file is rewritten in the current layout, the grid's ok rows
    # rerun to carry memory, and another grid's rows are kept as they were
    res = run_sweep(grid, old, workers=1, progress=False)
    assert res.ran == 2 and res.kept == 1
    assert old.read_text().splitlines()[0].split(",") == list(COLUMNS)
    mine, kept = res.rows[:2], res.rows[2]
    assert all(float(r["peak_memory_mb"]) > 0 for r in mine)
    assert [r["latency_ms"] for r in mine] == [r["latency_ms"] for r in fresh]
    assert kept["batch"] == "2" and kept["peak_memory_mb"] == ""
    assert run_sweep(grid, old, workers=1, progress=False).ran == 0
    # a mixed file reports the rows that have memory and says what it left out
    rep = make_report(old, tmp_path / "mixed_report", max_gantt=0)
    assert "memory_pareto.png" in {p.name for p in rep.images}
    assert any("1 ok rows carry no peak memory" in n for n in rep.notes)


# --- report ---------------------------------------------------------------------------

# A hand-made table: (scheduler, memory limit, latency ms, peak MB, reserved MB). The
# front of batch 1 is a (fastest), c (less memory, slower), e (least memory) and d,
# which equals c exactly; b is beaten by a on both; f (under a limit) by c.
HAND = {
    1: [
        ("sequential", "", 3.0, 40.0, 48.0),  # e
        ("nimble", "", 1.0, 100.0, 400.0),  # a
        ("ios", "", 1.2, 120.0, 130.0),  # b: dominated by nimble
        ("greedy", "", 2.0, 60.0, 64.0),  # c
        ("wavefront", "", 2.0, 60.0, 70.0),  # d: ties c
        ("ios", "80", 2.5, 70.0, 72.0),  # f: dominated by greedy
    ],
    2: [("sequential", "", 5.0, 80.0, 96.0), ("nimble", "", 1.5, 80.0, 500.0)],
}


def _hand_results(path: Path, with_memory: bool = True) -> Path:
    rows = []
    for batch, pts in HAND.items():
        for sched, lim, lat, peak, res in pts:
            row = dict.fromkeys(COLUMNS, "")
            row |= {"model": "squeezenet1_1", "batch": str(batch), "image_size": "64",
                    "dtype": "fp32", "gpu": "v100-sxm2", "scheduler": sched,
                    "memory_limit_mb": lim, "status": "ok", "latency_ms": repr(lat),
                    "sequential_ms": "3.0", "speedup": repr(3.0 / lat), "schedule_s": "0.01",
                    "peak_memory_mb": repr(peak), "reserved_memory_mb": repr(res)}  # fmt: skip
            rows.append(row)
    if not with_memory:
        return _write_legacy(rows, path)
    with path.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(COLUMNS)
        for r in rows:
            w.writerow([r[c] for c in COLUMNS])
    return path


def test_memory_front_on_a_hand_made_table(tmp_path: Path) -> None:
    rs = load_results(_hand_results(tmp_path / "r.csv"))
    groups = memory_groups(rs)
    assert len(groups) == 2  # batch 1 and batch 2; the limit does not split a group
    b1, b2 = groups.values()
    assert [p.name for p in memory_front(b1)] == ["sequential", "greedy", "wavefront", "nimble"]
    assert {p.name for p in b1} - {p.name for p in memory_front(b1)} == {
        "ios",
        "ios (limit 80 MB)",
    }
    # equal peaks: only the faster is on the front
    assert [p.name for p in memory_front(b2)] == ["nimble"]


def test_report_writes_the_memory_pareto_plot_and_table(tmp_path: Path) -> None:
    rep = make_report(_hand_results(tmp_path / "r.csv"), tmp_path / "rep", max_gantt=0)
    plot = rep.out / "memory_pareto.png"
    assert plot in rep.images and plot.read_bytes()[:8] == PNG_MAGIC
    md = rep.markdown.read_text()
    assert "](memory_pareto.png)" in md
    section = md.split("## Pareto front (latency against peak memory)")[1].split("\n## ")[0]
    table = [ln.split(" | ") for ln in section.splitlines() if ln.startswith("| squeezenet")]
    got = [(cells[0].lstrip("| "), cells[2], cells[3], cells[4]) for cells in table]
    assert got == [
        ("squeezenet1_1 b1", "sequential", "3.000", "40.0"),
        ("squeezenet1_1 b1", "greedy", "2.000", "60.0"),
        ("squeezenet1_1 b1", "wavefront", "2.000", "60.0"),
        ("squeezenet1_1 b1", "nimble", "1.000", "100.0"),
        ("squeezenet1_1 b2", "nimble", "1.500", "80.0"),
    ]
    page = rep.html.read_text()
    assert page.count("data:image/png;base64,") == len(rep.images)
    assert "Latency against peak memory" in page


def test_memory_panels_are_capped_with_a_note(tmp_path: Path, capsys) -> None:
    src = _hand_results(tmp_path / "r.csv")
    rep = make_report(src, tmp_path / "rep", max_gantt=0, max_memory_plots=1)
    assert any("first 1 of 2 configurations" in n for n in rep.notes)
    md = rep.markdown.read_text()
    assert "| squeezenet1_1 b2 | v100-sxm2 | nimble |" in md  # every front in the table
    line = run_error(capsys, "report", str(src), "--max-memory-plots", "-1")
    assert "--max-memory-plots must be 0 or more" in line


def test_report_without_memory_columns(tmp_path: Path) -> None:
    old = _hand_results(tmp_path / "old.csv", with_memory=False)
    rep = make_report(old, tmp_path / "rep", max_gantt=0)
    assert [p.name for p in rep.images] == ["speedup.png", "pareto.png"]
    assert any("no latency-against-memory plot" in n for n in rep.notes)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 6), st.integers(1, 6)),  # coarse: many ties
        min_size=1,
        max_size=12,
    )
)
def test_memory_front_is_exactly_the_unbeaten_points(pts) -> None:
    points = [MemoryPoint(f"p{i}", float(m), None, float(t), None) for i, (m, t) in enumerate(pts)]  # type: ignore[arg-type]
    front = memory_front(points)
    names = {p.name for p in front}
    for q in points:
        beaten = any(
            p.peak_mb <= q.peak_mb
            and p.latency_ms <= q.latency_ms
            and (p.peak_mb, p.latency_ms) != (q.peak_mb, q.latency_ms)
            for p in points
        )
        assert (q.name in names) == (not beaten)
    assert [p.peak_mb for p in front] == sorted(p.peak_mb for p in front)
    lat = [p.latency_ms for p in front]
    assert lat == sorted(lat, reverse=True)  # more memory buys lower latency along it
