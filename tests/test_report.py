"""Reports: figures, Markdown and self-contained HTML from a small results CSV; the Pareto
front and winners; winners re-simulate to the latency the sweep recorded."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simgpu.cli import main
from simgpu.report import (
    ReportError,
    default_out,
    geomean,
    load_results,
    make_report,
    pareto_front,
    resimulate,
    variant_stats,
    winners,
)
from simgpu.sweep import COLUMNS, Grid, read_results, run_sweep

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def results_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sweep") / "results.csv"
    grid = Grid(
        models=["squeezenet1_1"],
        image_sizes=[64],
        batches=[1, 2],
        gpus=["v100", "a100"],
        schedulers=["sequential", "sequential-graph", "greedy", "optimal"],
        options={"optimal": {"max_ops": ["0"]}},  # fails as it runs: a failure row
    )
    run_sweep(grid, out, workers=1, progress=False)
    return out


def _copy_with(src: Path, dst: Path, **changes: str) -> Path:
    rows = read_results(src)
    with dst.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(COLUMNS)
        for r in rows:
            w.writerow([changes.get(c, r[c]) for c in COLUMNS])
    return dst


def test_report_files(results_csv: Path, tmp_path: Path) -> None:
    rep = make_report(results_csv, tmp_path / "rep", max_gantt=2)
    names = sorted(p.name for p in rep.out.iterdir())
    assert names == [
        "gantt_01.png",
        "gantt_02.png",
        "memory_pareto.png",
        "pareto.png",
        "speedup.png",
        "summary.html",
        "summary.md",
    ]
    for p in rep.images:
        assert p.read_bytes()[:8] == PNG_MAGIC and p.stat().st_size > 5000
    md = rep.markdown.read_text()
    for section in (
        "## Schedulers",
        "## Pareto front (scheduling time against latency)",
        "## Pareto front (latency against peak memory)",
        "## Best schedule per configuration",
    ):
        assert section in md
    assert "## Failures" in md and "optimal.max_ops must be 1..20" in md
    for sched in ("sequential", "sequential-graph", "greedy"):
        assert f"| {sched} |" in md
    for img in rep.images:
        assert f"]({img.name})" in md
    assert "Gantt charts for the first 2 of 4 configurations" in md


def test_html_is_self_contained(results_csv: Path, tmp_path: Path) -> None:
    rep = make_report(results_csv, tmp_path / "rep", max_gantt=1)
    page = rep.html.read_text()
    srcs = re.findall(r'src="([^"]*)"', page)
    assert len(srcs) == len(rep.images) == 4  # speedup, pareto, memory_pareto, one Gantt
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<table>" in page and "optimal[max_ops=0]" in page
    assert "<script" not in page and "http" not in page


def test_best_per_configuration_table_matches_the_csv(results_csv: Path, tmp_path: Path) -> None:
    rs = load_results(results_csv)
    best = winners(rs)
    assert len(best) == 4  # 2 batches x 2 GPUs
    for cfg, w in best.items():
        same = [r for r in rs if r.config == cfg and r.ok]
        assert w.get("latency_ms") == min(r.get("latency_ms") for r in same)
    md = make_report(results_csv, tmp_path / "rep", max_gantt=0).markdown.read_text()
    for w in best.values():
        assert f"| {w.variant} | {w.get('latency_ms'):.3f} |" in md


def test_winner_resimulates_to_the_recorded_latency(results_csv: Path) -> None:
    for w in winners(load_results(results_csv)).values():
        assert resimulate(w).latency_ms == w.get("latency_ms")


def test_variant_stats(results_csv: Path) -> None:
    stats = {s.variant: s for s in variant_stats(load_results(results_csv))}
    assert stats["sequential"].speedup == pytest.approx(1.0)
    assert stats["optimal[max_ops=0]"].ok == 0 and stats["optimal[max_ops=0]"].failed == 4
    assert sum(s.wins for s in stats.values()) == 4
    assert math.isnan(stats["optimal[max_ops=0]"].speedup)


def test_cli_report_default_folder(results_csv: Path, tmp_path: Path, capsys) -> None:
    src = _copy_with(results_csv, tmp_path / "r.csv")
    assert main(["report", str(src), "--max-gantt", "1"]) == 0
    out = capsys.readouterr().out
    assert default_out(src) == tmp_path / "r_report"
    assert (tmp_path / "r_report" / "summary.md").exists()
    assert "summary.html" in out and "4 figures" in out


def test_only_failures_still_reports(results_csv: Path, tmp_path: Path) -> None:
    rows = read_results(results_csv)
    bad = tmp_path / "bad.csv"
    with bad.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(COLUMNS)
        for r in rows:
            if r["status"] == "error":
                w.writerow([r[c] for c in COLUMNS])
    rep = make_report(bad, tmp_path / "rep")
    assert rep.images == []
    md = rep.markdown.read_text()
    assert "(none ok)" in md and "## Failures" in md


def test_unknown_model_in_results_is_a_note_not_a_crash(results_csv: Path, tmp_path: Path) -> None:
    ghost = _copy_with(results_csv, tmp_path / "ghost.csv", model="ghost_model")
    rep = make_report(ghost, tmp_path / "rep", max_gantt=2)
    # the memory plot is drawn from the CSV: it needs no model
    assert [p.name for p in rep.images] == ["speedup.png", "pareto.png", "memory_pareto.png"]
    assert len(rep.notes) == 3  # two charts it could not draw, and the cut to 2
    assert "unknown model 'ghost_model'" in rep.markdown.read_text()


def _error_line(capsys, *argv: str) -> str:
    rc = main(list(argv))
    _, err = capsys.readouterr()
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("simgpu: error:"), err
    return lines[0]


def test_bad_inputs_are_one_line(tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text(",".join(COLUMNS) + "\n")
    assert "no results rows" in _error_line(capsys, "report", str(empty))
    other = tmp_path / "other.csv"
    other.write_text("x,y\n1,2\n")
    assert "header differs" in _error_line(capsys, "report", str(other))
    assert "no such file" in _error_line(capsys, "report", str(tmp_path / "missing.csv"))
    blocker = tmp_path / "file"
    blocker.write_text("")
    line = _error_line(capsys, "report", str(empty), "--out", str(blocker / "sub"))
    assert "no results rows" in line  # the input is checked before the folder
    with pytest.raises(ReportError, match="max-gantt"):
        make_report(empty, tmp_path, max_gantt=-1)


def test_unwritable_out_folder(results_csv: Path, tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    line = _error_line(capsys, "report", str(results_csv), "--out", str(blocker / "sub"))
    assert "cannot create" in line


def test_bad_number_in_results(results_csv: Path, tmp_path: Path, capsys) -> None:
    src = _copy_with(results_csv, tmp_path / "r.csv", batch="two")
    assert "line 2" in _error_line(capsys, "report", str(src))


# --- Pareto front and summaries -------------------------------------------------------


def test_pareto_front_example() -> None:
    pts = [("a", 1.0, 1.0), ("b", 2.0, 0.5), ("c", 3.0, 0.7), ("d", 0.5, 2.0), ("e", 4, 0.2)]
    assert [p[0] for p in pareto_front(pts)] == ["d", "a", "b", "e"]
    assert pareto_front([("n", math.nan, 1.0)]) == []


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from("abc"),
            st.floats(0, 100, allow_nan=False),
            st.floats(0, 100, allow_nan=False),
        ),
        max_size=20,
    )
)
def test_pareto_front_is_exactly_the_non_dominated_points(pts) -> None:
    front = pareto_front(pts)

    def dominates(p, q) -> bool:
        return p[1] <= q[1] and p[2] <= q[2] and (p[1] < q[1] or p[2] < q[2])

    for p in front:
        assert not any(dominates(q, p) for q in pts)
    for q in pts:  # every point is on the front, dominated, or a duplicate of a front point
        assert any(dominates(p, q) or (p[1], p[2]) == (q[1], q[2]) for p in front)
    costs = [p[1] for p in front]
    assert costs == sorted(costs)


def test_geomean() -> None:
    assert geomean([2.0, 8.0]) == pytest.approx(4.0)
    assert geomean([1.0, None, math.nan, 0.0, 4.0]) == pytest.approx(2.0)
    assert math.isnan(geomean([]))


def test_the_report_says_where_each_winner_s_time_goes(
    results_csv: Path, tmp_path: Path, capsys
) -> None:
    """Issue 18: the report links ``simgpu explain``: per charted winner its host- and
    GPU-bound shares and the command that explains it in detail, which runs and gives
    the winner's latency."""
    import shlex

    from simgpu.report import explain_command

    md = make_report(results_csv, tmp_path / "rep", max_gantt=1).markdown.read_text()
    assert "## Where the winners' time goes" in md
    w = winners(load_results(results_csv))[sorted(winners(load_results(results_csv)))[0]]
    cmd = explain_command(w)
    assert f"`{cmd}`" in md
    argv = shlex.split(cmd)[1:]
    capsys.readouterr()
    assert main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["makespan_us"] / 1e3 == pytest.approx(w.get("latency_ms"), rel=1e-9)
