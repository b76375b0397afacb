"""The library cost model and its fit: numpy pricing equals the simulator's, the fit
recovers parameters that generated the data, and costs come from data files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("scipy")

from calibrate import costfit
from calibrate.public import Dataset, Measurement, find_datasets, predict_us
from simgpu.costs import LibraryCosts, UnitCosts, arch_of, library_costs
from simgpu.errors import SpecError
from simgpu.hardware import PRESETS, gpu_from_json
from simgpu.kernels import Kernel, occupancy, standalone_time_us

V100 = PRESETS["v100-sxm2"]
SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


@settings(max_examples=60, deadline=None)
@given(
    grid=st.integers(1, 2000),
    threads=st.sampled_from([64, 128, 256]),
    work=st.one_of(st.just(0.0), st.floats(1e-3, 50.0)),
    nbytes=st.one_of(st.just(0.0), st.floats(1.0, 1e6)),
    setup=st.floats(0.0, 20.0),
    latency=st.sampled_from([0.0, 0.5, 3.0, 40.0]),
)
def test_numpy_lone_times_equal_the_simulators(grid, threads, work, nbytes, setup, latency) -> None:
    occ = occupancy(threads, 64, 0, V100)
    k = Kernel("k", "op", grid, threads, 64, 0, 0.0, nbytes, work, setup, occ, latency_us=latency)
    got = costfit.lone_times(V100, np.array([grid], float), np.array([occ.blocks], float),
                             np.array([occ.warps], float), np.array([work]),
                             np.array([nbytes]), np.array([setup]), np.array([latency]))[0]  # fmt: skip
    assert got == pytest.approx(standalone_time_us(k, V100), rel=1e-12, abs=1e-12)


def _gemm(m: int, n: int, k: int, us: float, group: str) -> Measurement:
    shape = {"M": m, "N": n, "K": k, "a_t": "N", "b_t": "N"}
    return Measurement("gemm", "fp32", tuple(sorted(shape.items())), us, group, "cublas")


SHAPES = [(1024, 1024, 1024), (4096, 128, 2048), (512, 16, 4096), (2048, 2048, 256),
          (128, 128, 8192), (3072, 512, 1024), (256, 4096, 512), (256, 256, 2048)]  # fmt: skip


def test_the_fit_recovers_the_costs_that_made_the_data() -> None:
    """Times priced with known costs are fitted back to within a few percent."""
    truth = {"simt_fp32": UnitCosts(0.8, 60.0, 3000.0)}
    gpu = V100.replace(library_costs={"units": {u: vars(c) for u, c in truth.items()}})
    rows = []
    for i, (m, n, k) in enumerate(SHAPES):
        probe = _gemm(m, n, k, 1.0, f"g{i % 3}")
        rows.append(_gemm(m, n, k, predict_us(probe, gpu), f"g{i % 3}"))
    ds = [Dataset("synthetic v100 fp32 gemm", Path("x.csv"), "v100-sxm2", tuple(rows))]
    (fit,) = costfit.fit(ds)
    pred = costfit.predictions(ds, {"v100-sxm2": fit.costs})[ds[0].name]
    measured = np.array([r.measured_us for r in rows])
    assert costfit.mape(pred, measured) < 2.0
    assert fit.units["simt_fp32"].efficiency == pytest.approx(0.8, rel=0.1)
    # leave-one-group-out predicts every row from the other groups' fit
    held = costfit.logo_predictions(ds)[ds[0].name]
    assert np.all(np.isfinite(held)) and costfit.mape(held, measured) < 5.0


def test_the_fits_numpy_pricing_is_the_lowerings() -> None:
    """The fit prices candidates in numpy; on the same costs it must give exactly what
    the lowering (``predict_us``) gives, call floors included, for GEMMs and convs."""
    convs = [
        Measurement("conv", "fp32", tuple(sorted({"N": n, "C": c, "H": h, "W": h, "K": k,
                    "R": r, "S": r, "stride": (st_, st_), "pad": (r // 2, r // 2),
                    "dilation": (1, 1), "groups": 1}.items())), 1.0, "x", lib)
        for n, c, h, k, r, st_, lib in [(8, 64, 56, 64, 3, 1, "cudnn"), (1, 512, 7, 512, 3, 2, "cudnn"),
                                        (1, 3, 224, 64, 7, 2, "tvm-direct"),
                                        (2, 256, 14, 256, 5, 1, "cudnn")]
    ]  # fmt: skip
    rows = tuple(convs + [_gemm(m, n, k, 1.0, "x") for m, n, k in SHAPES])
    ds = [Dataset("mixed v100", Path("x.csv"), "v100-sxm2", rows)]
    got = costfit.predictions(ds, {})[ds[0].name]
    want = [predict_us(m, V100) for m in rows]
    assert got == pytest.approx(want, rel=1e-12)


def test_mape_by_hand() -> None:
    assert costfit.mape([110.0, 90.0, 200.0], [100.0, 100.0, 100.0]) == pytest.approx(40.0)
    assert costfit.mape([np.nan, 50.0], [10.0, 100.0]) == pytest.approx(50.0)


def test_costs_come_from_the_committed_fit_or_the_gpu() -> None:
    assert arch_of(V100) == "volta" and library_costs(V100).arch == "volta"
    # an architecture nobody measured takes the nearest measured one's fit
    assert library_costs(PRESETS["h100-sxm"]).units == library_costs(V100).units
    units = {"simt_fp32": {"efficiency": 0.5, "iter_cycles": 10, "block_cycles": 100}}
    g = gpu_from_json({"base": "v100-sxm2", "library_costs": {"units": units}}, source="t")
    assert library_costs(g).unit("simt_fp32") == UnitCosts(0.5, 10, 100)
    # another dtype or library falls back to the nearest fitted unit
    assert library_costs(g).unit("tvm.simt_fp16") == UnitCosts(0.5, 10, 100)
    for bad in (
        {"units": {"simt_fp32": {"efficiency": 2}}},  # lacks the latencies
        {"units": {"simt_fp32": {"efficiency": 2, "iter_cycles": 1, "block_cycles": 1}}},
        {"units": {"simt_fp32": {**units["simt_fp32"], "eficiency": 0.5}}},  # a typo
        {"units": units, "calls_us": {"cudnn": -1}},
        {"units": units, "call_us": {}},  # unknown key
        {"units": {}},
    ):
        with pytest.raises(SpecError):  # when the GPU is made, not when it first runs
            V100.replace(library_costs=bad)
    with pytest.raises(SpecError, match="efficiency must be in"):
        UnitCosts(1.5, 0, 0)


def test_the_committed_fit_names_its_source() -> None:
    doc = json.loads((Path(__file__).parents[1] / "simgpu/data/library_costs.json").read_text())
    volta = doc["archs"]["volta"]
    assert volta["fitted_on"] == "v100-sxm2" and volta["rows"] > 0
    assert {d["file"] for d in volta["datasets"]} >= {
        "v100_fp32_gemm.csv",
        "v100_fp32_conv_fwd.csv",
    }
    assert all(len(d["sha256"]) == 64 for d in volta["datasets"])


def test_the_committed_fit_reproduces_its_figures_on_the_shared_data() -> None:
    """Pricing the shared data with the committed costs gives the fit errors the file
    records (so the file is what the data and the code say, not edited by hand)."""
    if not SHARED.is_dir():
        pytest.skip("../shared/data is absent")
    datasets, _ = find_datasets([SHARED])
    doc = json.loads((Path(__file__).parents[1] / "simgpu/data/library_costs.json").read_text())
    recorded = {d["name"]: d["fit_mape"] for d in doc["archs"]["volta"]["datasets"]}
    pred = costfit.predictions(datasets, {"v100-sxm2": library_costs(V100)})
    for d in datasets:
        got = costfit.mape(pred[d.name], [m.measured_us for m in d.rows])
        assert got == pytest.approx(recorded[d.name], abs=0.01), d.name


def test_fit_public_cli_on_a_tiny_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from simgpu.cli import main

    lines = ["app,M,N,K,a_t,b_t,time_ms"]
    for i, (m, n, k) in enumerate(SHAPES):
        us = predict_us(_gemm(m, n, k, 1.0, "x"), V100)
        lines.append(f"app{i % 2},{m},{n},{k},N,N,{us / 1e3:.6f}")
    (tmp_path / "v100_fp32_gemm.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "costs.json"
    rc = main(["calibrate", "fit-public", "--data", str(tmp_path), "-o", str(out), "--no-logo"])
    text = capsys.readouterr().out
    assert rc == 0 and "simt_fp32" in text and "deepbench v100 fp32 gemm" in text
    doc = json.loads(out.read_text())
    (entry,) = doc["archs"]["volta"]["datasets"]
    assert entry["rows"] == len(SHAPES) and entry["fit_mape"] < 2.0 and entry["logo_mape"] is None
    rc = main(["calibrate", "fit-public", "--data", str(tmp_path / "nope"), "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "no such folder" in err


def test_library_costs_dataclass_is_plain_data() -> None:
    c = LibraryCosts("volta", {"simt_fp32": UnitCosts(0.9, 1.0, 2.0)})
    assert c.unit("tensor_fp16") == UnitCosts(0.9, 1.0, 2.0)
