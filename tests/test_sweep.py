"""Sweeps: grid expansion, TOML grids, failing combinations, resume after a kill, and the
same results from 1 worker, N local processes and a real Dask LocalCluster."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
from _cli import run_error
from hypothesis import given, settings
from hypothesis import strategies as st

from schedulers.base import REGISTRY, SchedulerInfo, scheduler_names
from simgpu.cli import main
from simgpu.errors import SimGPUError
from simgpu.models import MODELS, model_names
from simgpu.sweep import (
    COLUMNS,
    KEY_COLUMNS,
    WALL_COLUMNS,
    Combo,
    Grid,
    Progress,
    SweepError,
    grid_from_dict,
    load_grid,
    parse_option_args,
    read_results,
    row_key,
    run_combo,
    run_sweep,
    without_wall_time,
)

ROOT = Path(__file__).resolve().parents[1]
# Small and fast: SqueezeNet 1.1 at 64 px simulates in a few milliseconds per schedule.
SMALL = dict(models=["squeezenet1_1"], image_sizes=[64])
SCHEDS = ["sequential", "sequential-graph"]


# a combination that fails when it runs (an option out of range): its row says so
FAILING = {"schedulers": ["sequential", "optimal"], "options": {"optimal": {"max_ops": ["0"]}}}
FAILS = ["--option", "optimal.max_ops=0"]


def small_grid(**kw) -> Grid:
    args = dict(SMALL, batches=[1, 2], gpus=["v100", "a100"], schedulers=list(SCHEDS))
    args.update(kw)
    return Grid(**args)


def sweep(grid: Grid, out: Path, **kw):
    return run_sweep(grid, out, progress=False, **kw)


# --- the grid -------------------------------------------------------------------------


def test_grid_order_and_aliases() -> None:
    combos = small_grid().combos()
    assert [(c.batch, c.gpu, c.scheduler) for c in combos] == [
        (b, g, s) for b in (1, 2) for g in ("v100-sxm2", "a100-sxm4-40gb") for s in SCHEDS
    ]
    assert {c.image_size for c in combos} == {64}
    assert len({c.key() for c in combos}) == len(combos)


def test_grid_defaults_resolve_image_size_and_gpu() -> None:
    (c,) = Grid(models=["inception_v3"], schedulers=["sequential"]).combos()
    assert (c.image_size, c.gpu, c.batch, c.dtype) == (299, "v100-sxm2", 1, "fp32")
    # the same computation asked explicitly is the same key (resume must see it as done)
    (c2,) = Grid(
        models=["inception_v3"], image_sizes=[299], gpus=["V100"], schedulers=["sequential"]
    ).combos()
    assert c2.key() == c.key()


def test_a_gpu_given_as_a_machine_gives_the_same_metrics(tmp_path: Path) -> None:
    by_gpu = sweep(small_grid(batches=[1], gpus=["v100"]), tmp_path / "g.csv", workers=1)
    by_machine = sweep(
        small_grid(batches=[1], gpus=[], machines=["v100"]), tmp_path / "m.csv", workers=1
    )
    assert [r["machine"] for r in by_machine.rows] == ["v100", "v100"]
    metrics = [c for c in COLUMNS if c not in KEY_COLUMNS and c not in WALL_COLUMNS]
    assert [[r[c] for c in metrics] for r in by_machine.rows] == [
        [r[c] for c in metrics] for r in by_gpu.rows
    ]


def test_all_expands_both_registries() -> None:
    combos = Grid(models=["all"], schedulers=["all"]).combos()
    assert list(dict.fromkeys(c.model for c in combos)) == model_names()
    assert list(dict.fromkeys(c.scheduler for c in combos)) == scheduler_names(single_gpu_only=True)


def test_image_size_axis_collapses_for_models_without_images(monkeypatch) -> None:
    text = [n for n, i in MODELS.items() if i.default_image_size is None]
    if not text:
        pytest.skip("no model without an image input in the zoo")
    combos = Grid(models=[text[0]], image_sizes=[64, 128], schedulers=["sequential"]).combos()
    assert len(combos) == 1 and combos[0].image_size is None


def test_option_values_sweep_as_a_product() -> None:
    opts = parse_option_args(["sequential.graph_mode=true,false", "sequential.graph_mode=true"])
    assert opts == {"sequential": {"graph_mode": ["true", "false"]}}
    combos = small_grid(batches=[1], gpus=["v100"], options=opts).combos()
    assert [(c.scheduler, c.options_text) for c in combos] == [
        ("sequential", "graph_mode=true"),
        ("sequential", "graph_mode=false"),
        ("sequential-graph", ""),
    ]


@pytest.mark.parametrize("bad", ["ios", "ios.r", "ios.r=", ".r=1", "ios.=1", "ios.r=1,,2"])
def test_bad_option_syntax(bad: str) -> None:
    with pytest.raises(SweepError, match=r"SCHEDULER\.NAME=VALUE"):
        parse_option_args([bad])


def test_option_for_a_scheduler_not_in_the_grid() -> None:
    with pytest.raises(SweepError, match="not in the grid"):
        small_grid(options={"nimble": {"x": ["1"]}}).combos()


@pytest.mark.parametrize(
    "grid,match",
    [
        (Grid(models=[]), "no model"),
        (Grid(models=["a\nb"]), "bad model name"),
        (Grid(models=["m"], batches=[0]), "bad batch size 0"),
        (
            Grid(models=["m"], schedulers=["sequential"], options={"sequential": {"a;b": ["1"]}}),
            "separators",
        ),
    ],
)
def test_malformed_grids(grid: Grid, match: str) -> None:
    with pytest.raises(SweepError, match=match):
        grid.combos()


@settings(max_examples=40, deadline=None)
@given(
    batches=st.lists(st.integers(1, 64), min_size=1, max_size=4),
    sizes=st.lists(st.integers(32, 512), min_size=1, max_size=3),
    gpus=st.lists(st.sampled_from(["v100", "a100", "h100", "t4"]), min_size=1, max_size=3),
    values=st.lists(st.sampled_from(["true", "false", "1", "0"]), min_size=1, max_size=3),
)
def test_grid_is_the_product_of_its_axes(batches, sizes, gpus, values) -> None:
    g = Grid(
        models=["inception_v3"],
        batches=batches,
        image_sizes=sizes,
        gpus=gpus,
        schedulers=["sequential", "sequential-graph"],
        options={"sequential": {"graph_mode": values}},
    )
    combos = g.combos()
    n = len(set(batches)) * len(set(sizes)) * len(set(gpus)) * (len(set(values)) + 1)
    assert len(combos) == n == len({c.key() for c in combos})


# --- TOML grids -----------------------------------------------------------------------

GOOD_TOML = """
models = ["squeezenet1_1"]
batches = [1, 2]
image_sizes = 64
gpus = ["v100"]
schedulers = ["sequential", "sequential-graph"]
[options.sequential]
graph_mode = [true, false]
"""


def test_toml_grid(tmp_path: Path) -> None:
    p = tmp_path / "g.toml"
    p.write_text(GOOD_TOML)
    g = load_grid(p)
    assert g.batches == [1, 2] and g.image_sizes == [64]
    assert g.options == {"sequential": {"graph_mode": ["true", "false"]}}
    assert len(g.combos()) == 2 * (2 + 1)


@pytest.mark.parametrize(
    "text,match",
    [
        ("models = [", "not valid TOML"),
        ("model = ['x']", "unknown key 'model'"),
        ("models = ['x']\nbatches = [1, 'two']", r"batches\[1\]: expected a positive integer"),
        ("models = ['x']\nbatches = [true]", "expected a positive integer"),
        ("models = []", "models is empty"),
        ("batches = [1]", "no 'models'"),
        ("models = ['x']\ndtypes = ['fp8']", "unknown dtype"),
        ("models = ['x']\noptions = 3", "options must be a table"),
        ("models = ['x']\n[options.ios]\nr = [[1]]", r"options.ios.r\[0\]"),
    ],
)
def test_malformed_toml(tmp_path: Path, text: str, match: str) -> None:
    p = tmp_path / "g.toml"
    p.write_text(text)
    with pytest.raises(SweepError, match=match):
        load_grid(p)


def test_toml_errors_are_one_cli_line(tmp_path: Path, capsys) -> None:
    p = tmp_path / "g.toml"
    p.write_text("models = ['squeezenet1_1'\nbatches = 1")
    line = run_error(capsys, "sweep", "--grid", str(p), "-o", str(tmp_path / "r.csv"))
    assert "not valid TOML" in line and str(p) in line
    line = run_error(capsys, "sweep", "--grid", str(tmp_path / "missing.toml"), "-o", "x.csv")
    assert "no such file" in line
    line = run_error(capsys, "sweep", "-o", str(tmp_path / "r.csv"))
    assert "no model" in line
    line = run_error(capsys, "sweep", "--model", "m", "--option", "bad", "-o", "r.csv")
    assert "SCHEDULER.NAME=VALUE" in line
    assert not (tmp_path / "r.csv").exists()


def test_grid_from_dict_cli_axes_replace_toml(tmp_path: Path, capsys) -> None:
    p = tmp_path / "g.toml"
    p.write_text(GOOD_TOML)
    out = tmp_path / "r.csv"
    rc = main(
        [
            "sweep",
            "--grid",
            str(p),
            "--batch",
            "4",
            "--quiet",
            "--json",
            "-o",
            str(out),
            "--workers",
            "1",
        ]
    )
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["combinations"] == 3 and summary["failed"] == 0
    assert {r["batch"] for r in read_results(out)} == {"4"}
    assert grid_from_dict({"models": "x"}).models == ["x"]


# --- running --------------------------------------------------------------------------


def test_rows_carry_every_run_metric(tmp_path: Path) -> None:
    grid = small_grid(runtimes=["cudnn"])  # GPU-bound at batch 1 and 2 alike
    res = sweep(grid, tmp_path / "r.csv", workers=1)
    assert res.total == res.ran == 8 and res.failed == 0 and res.skipped == 0
    rows = read_results(tmp_path / "r.csv")
    assert [row_key(r) for r in rows] == [c.key() for c in grid.combos()]
    assert {r["runtime"] for r in rows} == {"cudnn"}
    for r in rows:
        assert r["status"] == "ok" and r["error"] == ""
        lat, seq = float(r["latency_ms"]), float(r["sequential_ms"])
        assert lat > 0 and float(r["speedup"]) == pytest.approx(seq / lat)
        assert int(r["ops"]) > 0 and int(r["kernels"]) > 0 and int(r["streams"]) >= 1
        for c in ("syncs", "profiler_calls", "profiler_distinct", "gpu_search_s"):
            assert r[c] != ""
        if r["lower_bound_ms"]:  # schedulers.bounds is present
            assert lat >= float(r["lower_bound_ms"]) * (1 - 1e-9)
            assert float(r["bound_gap"]) == pytest.approx(lat / float(r["lower_bound_ms"]) - 1)
    seq_rows = [r for r in rows if r["scheduler"] == "sequential"]
    assert all(r["speedup"] == "1.0" for r in seq_rows)
    # the baseline is per model/batch/size/GPU: batch 2 is slower than batch 1
    by = {(r["batch"], r["gpu"]): float(r["latency_ms"]) for r in seq_rows}
    assert by[("2", "v100-sxm2")] > by[("1", "v100-sxm2")]


@pytest.mark.parametrize("hw", [("--gpu", "v100"), ("--machine", "2xv100-nvlink")])
def test_rows_agree_with_simgpu_run(tmp_path: Path, capsys, hw: tuple[str, str]) -> None:
    """A sweep row holds the numbers `simgpu run --json` prints for the same combination."""
    from simgpu import hardware

    if hw[0] == "--machine" and not hasattr(hardware, "load_machine"):
        pytest.skip("no multi-GPU machines yet")
    argv = ["squeezenet1_1", "--image-size", "64", *hw]
    argv += ["--scheduler", "sequential", "--scheduler", "nimble"]
    assert main(["run", *argv, "--json"]) == 0
    ran = {r["scheduler"]: r for r in json.loads(capsys.readouterr().out)["results"]}
    out = tmp_path / "r.csv"
    assert main(["sweep", "--model", *argv, "--workers", "1", "--quiet", "-o", str(out)]) == 0
    swept = {r["scheduler"]: r for r in read_results(out)}
    assert set(swept) == set(ran)
    for name, r in ran.items():
        for col in ("latency_ms", "speedup", "streams", "syncs", "kernels", "sm_utilisation"):
            assert float(swept[name][col]) == r[col], (name, col)
        for col in ("profiler_calls", "profiler_distinct", "gpu_search_s"):
            assert float(swept[name][col]) == r[col], (name, col)
        for col in ("lower_bound_ms", "bound_gap"):
            if r.get(col) is not None:
                assert float(swept[name][col]) == pytest.approx(r[col], rel=1e-12), (name, col)


@dataclass
class Boom:
    """A scheduler with a bug: it raises something that is not a SimGPUError."""

    name: ClassVar[str] = "boom"
    multi_gpu: ClassVar[bool] = False

    def schedule(self, graph, profiler):
        raise KeyError("internal bug")


def test_failing_combinations_are_rows_not_crashes(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(REGISTRY, "boom", SchedulerInfo("boom", Boom, "raises", False))
    grid = small_grid(
        models=["squeezenet1_1"],
        batches=[1],
        image_sizes=[224, 8],  # 8 px is too small for squeezenet: a failure of the model
        gpus=["v100"],
        schedulers=["sequential", "boom"],
    )
    res = sweep(grid, tmp_path / "r.csv", workers=1)
    rows = {(r["image_size"], r["scheduler"]): r for r in res.rows}
    assert len(rows) == res.total == 2 * 2
    ok = rows[("224", "sequential")]
    assert ok["status"] == "ok"
    assert rows[("224", "boom")]["error"] == "KeyError: 'internal bug'"
    assert "larger than padded input" in rows[("8", "sequential")]["error"]
    assert res.failed == len(rows) - 1
    for r in rows.values():
        assert (r["status"] == "ok") == (r["error"] == "")
        assert r["wall_s"] != ""
        if r["status"] == "error":
            assert r["latency_ms"] == "" and "\n" not in r["error"]


@dataclass
class Stuck:
    """A scheduler that never finishes, and swallows ordinary exceptions on the way."""

    name: ClassVar[str] = "stuck"
    multi_gpu: ClassVar[bool] = False

    def schedule(self, graph, profiler):
        while True:
            with contextlib.suppress(Exception):
                time.sleep(0.01)


def test_timeout_stops_one_combination_not_the_sweep(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(REGISTRY, "stuck", SchedulerInfo("stuck", Stuck, "never ends", False))
    grid = small_grid(batches=[1], gpus=["v100"], schedulers=["stuck", "sequential"])
    t0 = time.perf_counter()
    res = sweep(grid, tmp_path / "r.csv", workers=1, timeout_s=0.3)
    assert time.perf_counter() - t0 < 10
    stuck, seq = res.rows
    assert (stuck["status"], stuck["error"]) == ("timeout", "timed out after 0.3 s")
    assert 0.3 <= float(stuck["wall_s"]) < 5
    assert seq["status"] == "ok" and res.failed == 1
    # a timeout is done (skipped on resume) unless retried
    assert sweep(grid, tmp_path / "r.csv", workers=1, timeout_s=0.3).ran == 0
    again = sweep(grid, tmp_path / "r.csv", workers=1, timeout_s=0.2, retry_failed=True)
    assert again.ran == 1 and again.rows[0]["error"] == "timed out after 0.2 s"


def test_timeout_with_worker_processes(tmp_path: Path) -> None:
    """Real workers: a generous limit changes nothing, a tiny one times every row out."""
    grid = small_grid(batches=[1], gpus=["v100"])
    ok = sweep(grid, tmp_path / "ok.csv", workers=2, timeout_s=60)
    ref = sweep(grid, tmp_path / "ref.csv", workers=1)
    assert without_wall_time(ok.rows) == without_wall_time(ref.rows)
    tiny = sweep(grid, tmp_path / "tiny.csv", workers=2, timeout_s=1e-6)
    assert {r["status"] for r in tiny.rows} == {"timeout"} and tiny.failed == 2


def test_bad_timeouts(tmp_path: Path, capsys) -> None:
    argv = ["sweep", "--model", "squeezenet1_1", "--quiet", "-o", str(tmp_path / "r.csv")]
    assert "must be a positive number" in run_error(capsys, *argv, "--timeout", "0")
    assert "not to --dask" in run_error(capsys, *argv, "--timeout", "5", "--dask", "local:1")


@pytest.mark.parametrize(
    "change, why",
    [
        ({"models": ["no_such_model"]}, "unknown model 'no_such_model'"),
        ({"gpus": ["no_such_gpu"]}, "unknown GPU 'no_such_gpu'"),
        ({"schedulers": ["no_such_scheduler"]}, "unknown scheduler 'no_such_scheduler'"),
        ({"options": {"sequential": {"nosuch": ["1"]}}}, "has no option 'nosuch'"),
        ({"options": {"lios": {"strems": ["2"]}}}, "has no option 'strems'"),
    ],
)
def test_typos_in_the_grid_stop_it_before_the_first_row(tmp_path: Path, change, why) -> None:
    """A misspelt model, GPU, scheduler or option used to fill the CSV with error rows
    and exit 0 (issue 20): it is one error, and nothing is written."""
    grid = small_grid(
        **{"batches": [1], "gpus": ["v100"], "schedulers": ["sequential", "lios"], **change}
    )
    with pytest.raises(SimGPUError, match=why):
        sweep(grid, tmp_path / "r.csv", workers=1)
    assert not (tmp_path / "r.csv").exists()


def test_a_typo_is_exit_2_through_the_cli(tmp_path: Path, capsys) -> None:
    out = tmp_path / "r.csv"
    for argv in (["--model", "squeezenet1_x"], ["--model", "squeezenet1_1", "--gpu", "v1000"],
                 ["--model", "squeezenet1_1", "--scheduler", "lios", "--option", "lios.strems=2"]):  # fmt: skip
        line = run_error(capsys, "sweep", *argv, "-o", str(out), "--quiet")
        assert line.startswith("simgpu: error: ") and "\n" not in line
    assert not out.exists()


def test_option_variants_give_their_own_results(tmp_path: Path) -> None:
    grid = small_grid(batches=[1], gpus=["v100"], schedulers=["sequential"])
    grid.options = {"sequential": {"graph_mode": ["false", "true"]}}
    rows = sweep(grid, tmp_path / "r.csv", workers=1).rows
    eager, graph = (float(r["latency_ms"]) for r in rows)
    assert graph < eager  # one CUDA Graph launch saves the per-kernel launch cost
    assert rows[0]["speedup"] == "1.0"


def test_one_and_two_workers_give_the_same_csv(tmp_path: Path) -> None:
    grid = small_grid(schedulers=["all"], gpus=["v100", "h100"], batches=[1])
    one = sweep(grid, tmp_path / "one.csv", workers=1)
    two = sweep(grid, tmp_path / "two.csv", workers=2)
    assert without_wall_time(one.rows) == without_wall_time(two.rows)
    assert [row_key(r) for r in two.rows] == [c.key() for c in grid.combos()]
    assert one.ran == two.ran == len(grid.combos())


def test_dask_local_cluster_gives_the_same_csv(tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    grid = small_grid()
    ref = sweep(grid, tmp_path / "ref.csv", workers=1)
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        res = sweep(grid, tmp_path / "dask.csv", dask=client)
        assert client.status == "running"  # a client we were given is left open
    assert res.ran == len(grid.combos())
    assert without_wall_time(res.rows) == without_wall_time(ref.rows)


def test_dask_existing_scheduler_address(tmp_path: Path, capsys) -> None:
    distributed = pytest.importorskip("distributed")
    out = tmp_path / "r.csv"
    argv = ["sweep", "--model", "squeezenet1_1", "--image-size", "64", "--batch", "1"]
    argv += ["--gpu", "v100", "--gpu", "a100", "--batch", "2", "--quiet", "-o", str(out)]
    argv += ["--scheduler", "sequential", "--scheduler", "sequential-graph"]
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, protocol="tcp", dashboard_address=None
    ) as cluster:
        assert cluster.scheduler_address.startswith("tcp://")
        rc = main([*argv, "--dask", cluster.scheduler_address])
    assert rc == 0, capsys.readouterr().err
    ref = sweep(small_grid(), tmp_path / "ref.csv", workers=1)
    assert without_wall_time(read_results(out)) == without_wall_time(ref.rows)


def test_dask_local_n_from_the_cli(tmp_path: Path, capsys) -> None:
    pytest.importorskip("distributed")
    out = tmp_path / "r.csv"
    argv = ["sweep", "--model", "squeezenet1_1", "--image-size", "64", "--gpu", "v100"]
    argv += ["--scheduler", "sequential", "--scheduler", "optimal", *FAILS, "--quiet", "--json"]
    rc = main([*argv, "--dask", "local:1", "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    assert (summary["combinations"], summary["ran"], summary["failed"]) == (2, 2, 1)
    ref = sweep(
        small_grid(batches=[1], gpus=["v100"], **FAILING),
        tmp_path / "ref.csv",
        workers=1,
    )
    assert without_wall_time(read_results(out)) == without_wall_time(ref.rows)


@pytest.mark.parametrize("spec", ["local:0", "local:x", "tcp://127.0.0.1:1", "127.0.0.1", "x:y"])
def test_bad_dask_spec_is_one_line(tmp_path: Path, capsys, spec: str) -> None:
    pytest.importorskip("distributed")
    argv = ["sweep", "--model", "squeezenet1_1", "--scheduler", "sequential", "--quiet"]
    line = run_error(capsys, *argv, "--dask", spec, "-o", str(tmp_path / "r.csv"))
    assert spec in line


def test_workers_and_dask_are_exclusive(tmp_path: Path, capsys) -> None:
    line = run_error(
        capsys, "sweep", "--model", "m", "--workers", "2", "--dask", "local:1", "-o", "r.csv"
    )
    assert "not both" in line


# --- resume ---------------------------------------------------------------------------


def test_resume_skips_finished_rows(tmp_path: Path) -> None:
    out = tmp_path / "r.csv"
    first = sweep(small_grid(batches=[1]), out, workers=1)
    again = sweep(small_grid(), out, workers=1)  # a larger grid over the same file
    assert (again.skipped, again.ran) == (first.total, again.total - first.total)
    full = sweep(small_grid(), tmp_path / "full.csv", workers=1)
    assert without_wall_time(again.rows) == without_wall_time(full.rows)
    # the rows already there were not recomputed: their wall times are unchanged
    old = {row_key(r): r["wall_s"] for r in first.rows}
    assert all(r["wall_s"] == old[row_key(r)] for r in again.rows if row_key(r) in old)


def test_resume_after_truncation_mid_line(tmp_path: Path) -> None:
    grid = small_grid()
    full = sweep(grid, tmp_path / "full.csv", workers=1)
    data = (tmp_path / "full.csv").read_bytes()
    out = tmp_path / "r.csv"
    cut = len(data) * 2 // 3
    while data[cut - 1 : cut] == b"\n":  # a kill in the middle of a row, not at its end
        cut -= 1
    out.write_bytes(data[:cut])
    assert not out.read_bytes().endswith(b"\n")
    kept = read_results(out)
    assert 0 < len(kept) < len(full.rows)
    res = sweep(grid, out, workers=1)
    assert (res.skipped, res.ran) == (len(kept), len(full.rows) - len(kept))
    assert without_wall_time(res.rows) == without_wall_time(full.rows)
    assert out.read_text().count("\n") == len(full.rows) + 1


def test_resume_after_a_killed_sweep(tmp_path: Path) -> None:
    """Kill a real sweep process after a few rows, then finish it and compare."""
    out = tmp_path / "r.csv"
    argv = [sys.executable, "-m", "simgpu.cli", "sweep", "--model", "squeezenet1_1"]
    argv += ["--image-size", "64", "--batch", "1", "--batch", "2", "--batch", "3", "--batch", "4"]
    argv += ["--gpu", "v100", "--gpu", "a100", "--gpu", "h100", "--gpu", "t4"]
    argv += ["--scheduler", "sequential", "--scheduler", "sequential-graph"]
    argv += ["--scheduler", "greedy", "--workers", "1", "-o", str(out)]
    total = 4 * 4 * 3
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and out.read_bytes().count(b"\n") >= 4:  # header + 3 rows
                break
            time.sleep(0.005)
        assert proc.poll() is None, "the sweep ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    prefix = read_results(out)
    assert 3 <= len(prefix) < total
    grid = Grid(
        models=["squeezenet1_1"],
        image_sizes=[64],
        batches=[1, 2, 3, 4],
        gpus=["v100", "a100", "h100", "t4"],
        schedulers=["sequential", "sequential-graph", "greedy"],
    )
    res = sweep(grid, out, workers=1)
    assert (res.skipped, res.ran) == (len(prefix), total - len(prefix))
    full = sweep(grid, tmp_path / "full.csv", workers=1)
    assert without_wall_time(res.rows) == without_wall_time(full.rows)


def test_failed_rows_are_done_unless_retried(tmp_path: Path) -> None:
    out = tmp_path / "r.csv"
    grid = small_grid(batches=[1], gpus=["v100"], **FAILING)
    assert sweep(grid, out, workers=1).failed == 1
    assert sweep(grid, out, workers=1).ran == 0
    retry = sweep(grid, out, workers=1, retry_failed=True)
    assert (retry.ran, retry.failed, len(retry.rows)) == (1, 1, 2)


def test_rows_of_another_grid_are_kept_after_the_grid(tmp_path: Path) -> None:
    out = tmp_path / "r.csv"
    sweep(small_grid(gpus=["h100"]), out, workers=1)
    res = sweep(small_grid(gpus=["v100"]), out, workers=1)
    assert res.kept == 4 and len(res.rows) == 8
    assert [r["gpu"] for r in res.rows] == ["v100-sxm2"] * 4 + ["h100-sxm"] * 4


def test_not_a_results_file(tmp_path: Path, capsys) -> None:
    out = tmp_path / "r.csv"
    out.write_text("a,b\n1,2\n")
    line = run_error(capsys, "sweep", "--model", "squeezenet1_1", "-o", str(out), "--quiet")
    assert "header differs" in line
    assert out.read_text() == "a,b\n1,2\n"  # never overwritten
    line = run_error(capsys, "sweep", "--model", "squeezenet1_1", "-o", str(tmp_path), "--quiet")
    assert "is a directory" in line
    line = run_error(capsys, "sweep", "--model", "m", "-o", str(tmp_path / "r.parquet"))
    assert "give a .csv name" in line


@settings(max_examples=60, deadline=None)
@given(
    errors=st.lists(
        st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs")), max_size=30),
        min_size=1,
        max_size=6,
    ),
    cut=st.floats(0, 1),
)
def test_any_truncation_reads_back_as_a_prefix(errors: list[str], cut: float) -> None:
    """Whatever byte a kill stops at, the file reads back as the rows fully written."""
    rows = [
        {c: "" for c in COLUMNS}
        | dict(zip(KEY_COLUMNS, Combo("m", i + 1, None, "fp32", "g", "", "s").key(), strict=True))
        | {"status": "error", "error": e}
        for i, e in enumerate(errors)
    ]
    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow([r[c] for c in COLUMNS])
    data = buf.getvalue().encode("utf-8")
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "r.csv"
        p.write_bytes(data)
        assert read_results(p) == rows
        p.write_bytes(data[: int(cut * len(data))])
        got = read_results(p)
        assert got == rows[: len(got)]


# --- outputs --------------------------------------------------------------------------


def test_parquet_has_the_same_typed_rows(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    res = sweep(small_grid(**FAILING), tmp_path / "r.csv", workers=1)
    assert res.parquet == tmp_path / "r.parquet"
    table = pq.read_table(res.parquet).to_pylist()
    assert len(table) == len(res.rows)
    for t, r in zip(table, res.rows, strict=True):
        assert t["model"] == r["model"] and t["batch"] == int(r["batch"])
        assert t["status"] == r["status"]
        if r["status"] == "ok":
            assert t["latency_ms"] == float(r["latency_ms"])
        else:
            assert t["latency_ms"] is None


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_redraws_in_place_with_an_eta() -> None:
    buf = _Terminal()
    bar = Progress(20, buf)
    for i in range(20):
        bar.update(failed=i % 7 == 0)
    bar.close()
    frames = buf.getvalue().split("\r")[1:]
    assert frames  # the first row, then at most one frame per 0.1 s, and the last
    assert frames[-1].startswith("sweep 20/20 [########################] 100%")
    assert "ETA 0:00" in frames[-1] and "3 failed" in frames[-1] and frames[-1].endswith("\n")
    assert "ETA" in frames[0] and frames[0].startswith("sweep 1/20")
    for stream, enabled in ((io.StringIO(), True), (_Terminal(), False)):
        bar = Progress(5, stream, enabled=enabled)  # not a terminal, or --quiet: nothing
        bar.update(False)
        bar.close()
        assert stream.getvalue() == ""


def test_cli_sweep_end_to_end(tmp_path: Path) -> None:
    """The console script: a summary on stdout (no progress off a terminal), CSV and Parquet."""
    exe = Path(sys.executable).with_name("simgpu")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "simgpu.cli"]
    out = tmp_path / "r.csv"
    argv = ["sweep", "--model", "squeezenet1_1", "--image-size", "64", "--gpu", "v100"]
    argv += ["--scheduler", "sequential", "--scheduler", "optimal", *FAILS]
    argv += ["--workers", "2", "-o", str(out)]
    p = subprocess.run(cmd + argv, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    assert "sweep 2/2" not in p.stderr and "\r" not in p.stderr  # no progress off a terminal
    assert "2 combinations: ran 2, 1 failed" in p.stdout
    assert [r["status"] for r in read_results(out)] == ["ok", "error"]
    argv[argv.index("--workers") + 1] = "1"
    p = subprocess.run(cmd + argv, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert "ran 0, 2 already done" in p.stdout
    assert f"sweep: 2 of 2 combinations already in {out}" in p.stderr


def test_run_combo_is_deterministic() -> None:
    c = small_grid().combos()[0]
    a, b = run_combo(c), run_combo(c)
    assert {k: v for k, v in a.items() if k not in WALL_COLUMNS} == {
        k: v for k, v in b.items() if k not in WALL_COLUMNS
    }


def test_errors_are_simgpu_errors() -> None:
    assert issubclass(SweepError, SimGPUError)


def test_a_scheduler_that_does_not_apply_is_not_a_failure(tmp_path: Path) -> None:
    """``optimal`` past its size limit: a row with status n/a and the reason, not counted
    as failed and not rerun by --retry-failed; ``simgpu run`` shows it the same way."""
    grid = small_grid(batches=[1], gpus=["v100"], schedulers=["optimal", "sequential"])
    res = sweep(grid, tmp_path / "r.csv", workers=1)
    opt, seq = res.rows
    assert (opt["status"], seq["status"]) == ("n/a", "ok")
    assert "at most 12 ops" in opt["error"] and opt["latency_ms"] == ""
    assert res.failed == 0
    again = sweep(grid, tmp_path / "r.csv", workers=1, retry_failed=True)
    assert again.ran == 0 and again.rows == res.rows
    from simgpu.report import _tables, load_results, variant_stats

    results = load_results(tmp_path / "r.csv")
    stats = {s.variant: s for s in variant_stats(results)}
    assert (stats["optimal"].failed, stats["optimal"].na, stats["sequential"].ok) == (0, 1, 1)
    tables = {t.title: t for t in _tables(results, list(stats.values()))}
    assert tables["Overview"].rows[0][1:4] == ["1", "0", "1"]  # ok, failed, n/a
    assert "Failures" not in tables


def test_a_second_sweep_on_the_same_file_is_refused_and_no_row_is_lost(
    tmp_path: Path, capsys
) -> None:
    """Two sweeps appending to one CSV used to lose rows (one's final rewrite replaced
    the file under the other). The second is refused with one line while the first
    holds the file, and the first keeps every row."""
    out = tmp_path / "r.csv"
    argv = [sys.executable, "-m", "simgpu.cli", "sweep", "--model", "squeezenet1_1"]
    argv += ["--image-size", "64", "--batch", "1", "--batch", "2", "--batch", "3"]
    argv += ["--gpu", "v100", "--gpu", "a100", "--scheduler", "sequential", "--scheduler",
             "greedy", "--scheduler", "lios", "--workers", "1", "--quiet", "-o", str(out)]  # fmt: skip
    first = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    lock = tmp_path / "r.csv.lock"
    deadline = time.monotonic() + 60
    while not (lock.exists() and lock.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        line = run_error(capsys, "sweep", "--model", "squeezenet1_1", "--image-size", "64",
                         "--batch", "4", "--gpu", "v100", "--quiet", "-o", str(out))  # fmt: skip
        assert "is being written by another sweep" in line and str(first.pid) in line
    finally:
        _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    rows = read_results(out)
    assert len(rows) == 3 * 2 * 3 and {r["batch"] for r in rows} == {"1", "2", "3"}
    # once the first is done, the file is free again
    assert main(["sweep", "--model", "squeezenet1_1", "--image-size", "64", "--batch", "4",
                 "--gpu", "v100", "--scheduler", "sequential", "--quiet", "-o", str(out)]) == 0  # fmt: skip
    assert len(read_results(out)) == 3 * 2 * 3 + 1


def test_sigterm_stops_the_workers_and_keeps_the_finished_rows(tmp_path: Path) -> None:
    """SIGTERM used to kill the sweep alone and leave its pool's workers running for over
    a minute (issue 20); it now ends the sweep as Ctrl-C does."""
    import signal

    psutil = pytest.importorskip("psutil")
    out = tmp_path / "r.csv"
    argv = [sys.executable, "-m", "simgpu.cli", "sweep", "--model", "squeezenet1_1"]
    argv += ["--image-size", "64"] + [x for b in range(1, 9) for x in ("--batch", str(b))]
    argv += ["--gpu", "v100", "--scheduler", "ios", "--scheduler", "lios", "--workers", "2",
             "--quiet", "-o", str(out)]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if out.exists() and len(out.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    family = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    _, alive = psutil.wait_procs(family, timeout=15)
    assert not alive, [p.cmdline() for p in alive]
    assert len(read_results(out)) >= 1  # the finished rows are kept


# --- graph files as models (issue 18) ---------------------------------------------------


def test_a_model_may_be_a_graph_file(tmp_path: Path) -> None:
    """A simgpu graph JSON in the grid: its rows hold the path, load it by path in the
    worker processes, keep its own batch, and give the same latency as the built-in model."""
    from simgpu.models import build_model
    from simgpu.report import make_report

    path = tmp_path / "sq.json"
    build_model("squeezenet1_1", batch=2, image_size=64).save(path)
    grid = Grid(models=[str(path), "squeezenet1_1"], batches=[2], image_sizes=[64],
                gpus=["v100"], schedulers=["sequential", "lios"])  # fmt: skip
    res = run_sweep(grid, tmp_path / "r.csv", workers=2, progress=False)
    assert res.failed == 0 and res.ran == 4
    rows = read_results(tmp_path / "r.csv")
    files = [r for r in rows if r["model"] == str(path)]
    built = [r for r in rows if r["model"] == "squeezenet1_1"]
    assert len(files) == len(built) == 2
    for f, b in zip(files, built, strict=True):
        assert f["batch"] == "2" and f["image_size"] == "" and f["scheduler"] == b["scheduler"]
        assert f["latency_ms"] == b["latency_ms"]  # the same graph, bit for bit
    # a simgpu graph file keeps its batch: a batch axis collapses to it
    combos = Grid(models=[str(path)], batches=[1, 4], schedulers=["sequential"]).combos()
    assert [c.batch for c in combos] == [2]
    rep = make_report(tmp_path / "r.csv", tmp_path / "rep", max_gantt=1)  # resimulates a row
    assert rep.markdown.exists()


@pytest.mark.parametrize(
    ("model", "why"),
    [("missing.json", "missing.json: no such file"), ("bad.json", "bad.json"),
     ("squeezenet_typo", "unknown model 'squeezenet_typo'")],
)  # fmt: skip
def test_a_bad_graph_file_stops_the_sweep_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], model: str, why: str
) -> None:
    (tmp_path / "bad.json").write_text('{"format": "simgpu.graph", "ops": [')
    spec = model if model.startswith("squeezenet") else str(tmp_path / model)
    out = tmp_path / "r.csv"
    err = run_error(capsys, "sweep", "--model", spec, "-o", str(out))
    assert why in err
    assert not out.exists()  # nothing ran


def test_progress_into_a_redirected_stderr_has_no_frames(tmp_path: Path) -> None:
    """stderr to a file (not a terminal): no progress at all, so no carriage-return
    redraws (issue 18: progress on a terminal only)."""
    exe = Path(sys.executable).with_name("simgpu")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "simgpu.cli"]
    log = tmp_path / "err.log"
    argv = ["sweep", "--model", "squeezenet1_1", "--image-size", "64", "--scheduler",
            "sequential", "--scheduler", "lios", "--workers", "1", "-o", str(tmp_path / "r.csv")]  # fmt: skip
    with log.open("w") as f:
        p = subprocess.run(cmd + argv, stdout=subprocess.PIPE, stderr=f, timeout=120, cwd=tmp_path)
    assert p.returncode == 0
    text = log.read_text()
    assert "\r" not in text and "\x1b" not in text
    assert "sweep 2/2" not in text
