"""Fit the library kernels' efficiency parameters to public measurements (least squares).

Every measured call (a DeepBench GEMM or convolution, an AutoTVM convolution) is lowered
once into its candidate algorithms (:mod:`simgpu.libraries`); their structure (grids,
tiles, main-loop iterations, bytes) does not depend on the parameters, only their cost
does. So the fit prices all candidates of all rows at once in numpy, with the same
lone-kernel arithmetic as :func:`simgpu.sharing.lone_kernel_us`, takes each row's
cheapest candidate (the library's own choice) and minimises the squared log error,
each dataset weighted equally. The cheapest-candidate minimum makes the objective
piecewise smooth, so the search is Powell then Nelder-Mead, from fixed starting points
(never from the file it replaces).

``logo_predictions`` refits with each group (a DeepBench application or a network)
held out and predicts that group's rows: the error a new workload should expect.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from calibrate.errors import CalibrationError
from calibrate.public import Dataset, measurement_graph
from simgpu.costs import LibraryCosts, UnitCosts, arch_of, library_costs
from simgpu.errors import SimGPUError
from simgpu.hardware import PRESETS, GPUSpec
from simgpu.kernels import library_candidates, spec_occupancy, work_us
from simgpu.libraries import LIBRARIES, STREAM
from simgpu.sharing import dram_capacity, sm_port


@dataclass
class _Rows:
    """All candidates' kernels of a set of measured rows on one GPU, as flat arrays."""

    gpu: GPUSpec
    units: list[str]
    measured: np.ndarray  # per row, microseconds
    weight: np.ndarray  # per row
    row_of_cand: np.ndarray  # per candidate
    cand_of_kernel: np.ndarray  # per kernel
    unit: np.ndarray  # per kernel: index into units, -1 for streaming kernels
    grid: np.ndarray
    per_sm: np.ndarray
    warps: np.ndarray
    flops: np.ndarray  # per block
    nbytes: np.ndarray  # per block
    peak: np.ndarray  # FLOP/s of the kernel's unit
    iters: np.ndarray
    stream_work: np.ndarray  # work_us of streaming kernels (fixed)
    ok: np.ndarray  # per row: it has at least one launchable candidate
    libs: list[str]  # libraries of the rows
    lib_of_row: np.ndarray  # per row: index into libs


def _rows(gpu: GPUSpec, rows: Sequence[tuple[Any, float]]) -> _Rows:
    """Lower each (measurement, weight) row into its candidates on ``gpu``."""
    units: list[str] = []
    cols: dict[str, list[float]] = {k: [] for k in (
        "cand", "unit", "grid", "per_sm", "warps", "flops", "bytes", "peak", "iters", "sw")}  # fmt: skip
    row_of_cand: list[int] = []
    measured, weight, ok = [], [], []
    libs: list[str] = []
    lib_of_row: list[int] = []
    for r, (m, w) in enumerate(rows):
        if m.library not in libs:
            libs.append(m.library)
        lib_of_row.append(libs.index(m.library))
        measured.append(m.measured_us)
        weight.append(w)
        g = measurement_graph(m)
        cands = library_candidates(g, m.op, gpu, LIBRARIES[m.library]) or []
        good = False
        for cand in cands:
            try:
                occs = [spec_occupancy(s, gpu) for s in cand.kernels]
            except SimGPUError:
                continue
            good = True
            c = len(row_of_cand)
            row_of_cand.append(r)
            for s, occ in zip(cand.kernels, occs, strict=True):
                if s.unit != STREAM and s.unit not in units:
                    units.append(s.unit)
                cols["cand"].append(c)
                cols["unit"].append(units.index(s.unit) if s.unit != STREAM else -1)
                cols["grid"].append(s.grid)
                cols["per_sm"].append(occ.blocks)
                cols["warps"].append(occ.warps)
                cols["flops"].append(s.block_flops)
                cols["bytes"].append(s.block_bytes)
                cols["peak"].append(s.peak)
                cols["iters"].append(s.iters)
                cols["sw"].append(work_us(s.block_flops, s.peak, gpu) if s.unit == STREAM else 0)
        ok.append(good)
    f = {k: np.asarray(v, dtype=float) for k, v in cols.items()}
    return _Rows(gpu, units, np.asarray(measured), np.asarray(weight, dtype=float),
                 np.asarray(row_of_cand, dtype=int), f["cand"].astype(int), f["unit"].astype(int),
                 f["grid"], f["per_sm"], f["warps"], f["flops"], f["bytes"], f["peak"],
                 f["iters"], f["sw"], np.asarray(ok, dtype=bool), libs,
                 np.asarray(lib_of_row, dtype=int))  # fmt: skip


def lone_times(
    gpu: GPUSpec,
    grid: Any,
    per_sm: Any,
    warps: Any,
    work: Any,
    nbytes: Any,
    setup: Any,
    latency: Any = 0.0,
) -> np.ndarray:
    """:func:`simgpu.sharing.lone_kernel_us` of many kernels at once (numpy)."""
    n_sm = gpu.sm_count
    port, dram = sm_port(gpu), dram_capacity(gpu)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        wc = np.minimum(1.0, warps / gpu.warps_to_saturate)
        rate0 = np.minimum(np.where(work > 0, wc / work, np.inf),
                           np.where(nbytes > 0, port / nbytes, np.inf))  # fmt: skip
        latency = np.asarray(latency, dtype=float)
        idle = (work <= 0) & (nbytes <= 0)  # nothing to progress: latency is fixed time
        setup = setup + np.where(idle, latency, 0.0)
        rate0 = np.minimum(rate0, np.where((latency > 0) & ~idle, 1.0 / latency, np.inf))
        compute = np.where(work > 0, rate0 * work, 0.0)
        memory = np.where(nbytes > 0, rate0 * nbytes, 0.0)

        def wave(k: np.ndarray, blocks: np.ndarray) -> np.ndarray:
            g = np.minimum(memory, dram / blocks)
            a = np.minimum(compute, 1.0 / k)
            m = np.minimum(g, port / k)
            r = np.minimum(np.where(work > 0, a / work, np.inf),
                           np.where(nbytes > 0, m / nbytes, np.inf))  # fmt: skip
            return setup + np.where(np.isfinite(r), 1.0 / r, 0.0)

        per_wave = per_sm * n_sm
        full = np.floor(grid / per_wave)
        tail = grid - full * per_wave
        t = np.where(full > 0, full * wave(per_sm, per_wave), 0.0)
        level = np.ceil(tail / n_sm)
        tail_t = wave(np.maximum(level, 1.0), np.maximum(tail, 1.0))
        return t + np.where(tail > 0, tail_t, 0.0)


def _base(unit: str) -> str:
    """The hardware unit of a library's unit ("tvm.simt_fp32" -> "simt_fp32")."""
    return unit.rpartition(".")[2]


def _bases(rows: _Rows) -> list[str]:
    """The hardware units of the rows' units: each unit has its own efficiency, but
    latencies belong to the hardware unit, shared by every library that runs on it (a
    main loop waits on the same memory pipeline whoever wrote it)."""
    return list(dict.fromkeys(_base(u) for u in rows.units))


def _vector(rows: _Rows, costs: LibraryCosts) -> np.ndarray:
    """Parameters in log space: each unit's efficiency, each base unit's two latencies,
    then each library's call floor."""
    units, bases = rows.units, _bases(rows)
    x = [math.log(costs.unit(u).efficiency) for u in units]
    for b in bases:
        c = costs.unit(b)
        x += [math.log(max(c.iter_cycles, 1e-3)), math.log(max(c.block_cycles, 1e-3))]
    x += [math.log(max(costs.calls.get(lib, 0.0), 1e-3)) for lib in rows.libs]
    return np.asarray(x)


# starting points: Nelder-Mead finds local minima, so the fit keeps the best of a few (a
# throughput-bound, a middle and a latency-bound guess). Fixed, so that the fit is a
# function of the data alone (never of the file it replaces)
STARTS = (
    (UnitCosts(0.9, 5.0, 500.0), 2.0),
    (UnitCosts(0.6, 50.0, 2000.0), 5.0),
    (UnitCosts(0.4, 200.0, 5000.0), 8.0),
)


def _starts(rows: _Rows) -> list[np.ndarray]:
    return [_vector(rows, LibraryCosts("", {u: s for u in rows.units},
                                       {lib: c for lib in rows.libs}))
            for s, c in STARTS]  # fmt: skip


def _unpack(x: np.ndarray, rows: _Rows) -> tuple[dict[str, UnitCosts], dict[str, float]]:
    units, bases = rows.units, _bases(rows)
    lat = {b: np.exp(x[len(units) + 2 * i : len(units) + 2 * i + 2]) for i, b in enumerate(bases)}
    out = {}
    for i, u in enumerate(units):
        it, blk = lat[_base(u)]
        out[u] = UnitCosts(float(min(np.exp(x[i]), 1.0)), float(it), float(blk))
    n = len(units) + 2 * len(bases)
    calls = {lib: float(np.exp(x[n + i])) for i, lib in enumerate(rows.libs)}
    return out, calls


def predict(
    rows: _Rows, units: Mapping[str, UnitCosts], calls: Mapping[str, float] | None = None
) -> np.ndarray:
    """Each row's predicted microseconds: its cheapest candidate under ``units``, or the
    host's cost of one call of its library where that is longer."""
    gpu = rows.gpu
    costs = LibraryCosts("", units)
    per = [costs.unit(u) for u in rows.units]
    eff = np.array([u.efficiency for u in per] + [1.0])
    itc = np.array([u.iter_cycles for u in per] + [0.0])
    blk = np.array([u.block_cycles for u in per] + [0.0])
    lib = rows.unit >= 0
    idx = np.where(lib, rows.unit, len(rows.units))
    work = np.where(lib, rows.flops / (rows.peak * eff[idx] / gpu.sm_count / 1e6), rows.stream_work)
    setup = np.where(lib, blk[idx] / gpu.clock_mhz, gpu.block_setup_us)
    latency = np.where(lib, itc[idx] * rows.iters / gpu.clock_mhz, 0.0)
    t = lone_times(gpu, rows.grid, rows.per_sm, rows.warps, work, rows.nbytes, setup, latency)
    t = t + gpu.kernel_gap_us
    per_cand = np.bincount(rows.cand_of_kernel, weights=t, minlength=len(rows.row_of_cand))
    best = np.full(len(rows.measured), np.inf)
    np.minimum.at(best, rows.row_of_cand, per_cand)
    floor = np.array([(calls or {}).get(lib, 0.0) for lib in rows.libs] + [0.0])
    return np.maximum(best, floor[rows.lib_of_row] if len(rows.lib_of_row) else 0.0)


def _objective(rows: _Rows) -> Any:
    def f(x: np.ndarray) -> float:
        eff = x[: len(rows.units)]
        if np.any(eff > 0.0):  # efficiency above the datasheet peak
            return 1e9 + float(np.sum(np.maximum(eff, 0.0)))
        if np.any(np.abs(x) > 16.0):  # beyond 1e7 cycles or 1e-7 of peak: not a GPU
            return 1e9 + float(np.sum(np.abs(x)))
        p = predict(rows, *_unpack(x, rows))[rows.ok]
        e = np.log(p / rows.measured[rows.ok])
        return float(np.sum(rows.weight[rows.ok] * e * e))

    return f


def _minimise(rows: _Rows, x0: np.ndarray) -> np.ndarray:
    from scipy.optimize import minimize

    f = _objective(rows)
    # Powell's line searches cope with the kinks of the cheapest-candidate minimum in a
    # dozen dimensions, where a Nelder-Mead simplex collapses; a polish by Nelder-Mead
    res = minimize(f, x0, method="Powell", options={"xtol": 1e-4, "ftol": 1e-9, "maxfev": 20000})
    res = minimize(f, res.x, method="Nelder-Mead",
                   options={"maxfev": 4000, "xatol": 1e-4, "fatol": 1e-9})  # fmt: skip
    return res.x


@dataclass(frozen=True)
class Fit:
    """Fitted units of one architecture, and what they were fitted on."""

    arch: str
    gpu: str
    units: dict[str, UnitCosts]
    calls: dict[str, float]  # host microseconds of one call, per library
    rows: int
    objective: float

    @property
    def costs(self) -> LibraryCosts:
        return LibraryCosts(self.arch, self.units, self.calls)


def _weighted(datasets: Sequence[Dataset], keep: Any) -> list[tuple[Any, float]]:
    out = []
    for d in datasets:
        rows = [m for m in d.rows if keep(m)]
        out += [(m, 1.0 / len(rows)) for m in rows]
    return out


def _by_gpu(datasets: Sequence[Dataset]) -> dict[str, list[Dataset]]:
    out: dict[str, list[Dataset]] = {}
    for d in datasets:
        out.setdefault(d.gpu, []).append(d)
    return out


def _components(rows: _Rows) -> list[list[int]]:
    """Rows grouped so that no parameter (a unit's, or a library's call floor) is priced
    in two groups: the objective is a sum over rows, so each group is fitted on its own
    (a few parameters at a time)."""
    n_units = len(rows.units)
    parent = list(range(n_units + len(rows.libs)))

    def root(u: int) -> int:
        while parent[u] != u:
            parent[u] = parent[parent[u]]
            u = parent[u]
        return u

    nodes: list[set[int]] = [{n_units + int(lib)} for lib in rows.lib_of_row]
    lib = rows.unit >= 0
    for cand, u in zip(rows.cand_of_kernel[lib], rows.unit[lib], strict=True):
        nodes[rows.row_of_cand[cand]].add(int(u))
    for a, ua in enumerate(rows.units):  # units on one hardware unit share latencies
        for b, ub in enumerate(rows.units[:a]):
            if _base(ua) == _base(ub):
                parent[root(a)] = root(b)
    for ns in nodes:
        first = min(ns)
        for u in ns:
            parent[root(u)] = root(first)
    groups: dict[int, list[int]] = {}
    for r, ns in enumerate(nodes):
        if rows.ok[r]:
            groups.setdefault(root(min(ns)), []).append(r)
    return [groups[k] for k in sorted(groups)]


def fit(datasets: Sequence[Dataset], keep: Any = None) -> list[Fit]:
    """One fit per GPU in ``datasets`` (the rows ``keep`` accepts, default all)."""
    keep = keep or (lambda m: True)
    fits = []
    for name, ds in sorted(_by_gpu(datasets).items()):
        gpu = PRESETS[name]
        weighted = _weighted(ds, keep)
        everything = _rows(gpu, weighted)
        if not everything.ok.any():
            raise CalibrationError(f"no measurement on {name} has a launchable kernel")
        units: dict[str, UnitCosts] = {}
        calls: dict[str, float] = {}
        total = 0.0
        for group in _components(everything):
            rows = _rows(gpu, [weighted[r] for r in group])
            f = _objective(rows)
            x = min((_minimise(rows, x0) for x0 in _starts(rows)), key=f)
            u, c = _unpack(x, rows)
            units.update(u)
            calls.update(c)
            total += f(x)
        fits.append(Fit(arch_of(gpu), name, units, calls, int(everything.ok.sum()), total))
    return fits


def predictions(
    datasets: Sequence[Dataset], costs_by_gpu: Mapping[str, LibraryCosts]
) -> dict[str, np.ndarray]:
    """Per dataset name, each row's predicted microseconds under the given costs (the
    committed ones for a GPU not in ``costs_by_gpu``, or for units they lack)."""
    out = {}
    for d in datasets:
        gpu = PRESETS[d.gpu]
        rows = _rows(gpu, [(m, 1.0) for m in d.rows])
        base = library_costs(gpu)
        given = costs_by_gpu.get(d.gpu)
        units, calls = dict(base.units), dict(base.calls)
        if given is not None:
            units.update(given.units)
            calls.update(given.calls)
        out[d.name] = np.where(rows.ok, predict(rows, units, calls), np.nan)
    return out


def logo_predictions(datasets: Sequence[Dataset]) -> dict[str, list[float]]:
    """Per dataset name, each row's predicted microseconds from a fit that held out the
    row's group (DeepBench app, or network); NaN where the row has no kernel."""
    groups = sorted({m.group for d in datasets for m in d.rows})
    out = {d.name: [math.nan] * len(d.rows) for d in datasets}
    if len(groups) < 2:
        return {}
    for g in groups:
        fits = fit(datasets, keep=lambda m, g=g: m.group != g)
        held = [Dataset(d.name, d.path, d.gpu, tuple(m for m in d.rows if m.group == g))
                for d in datasets]  # fmt: skip
        pred = predictions([h for h in held if h.rows], {f.gpu: f.costs for f in fits})
        for d in datasets:
            if d.name not in pred:
                continue
            it = iter(pred[d.name])
            vals = out[d.name]
            for i, m in enumerate(d.rows):
                if m.group == g:
                    vals[i] = float(next(it))
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mape(pred: Sequence[float], measured: Sequence[float]) -> float:
    """Mean absolute percentage error over the rows that have a prediction."""
    p, m = np.asarray(pred, dtype=float), np.asarray(measured, dtype=float)
    ok = np.isfinite(p)
    return float(np.mean(np.abs(p[ok] / m[ok] - 1.0)) * 100.0) if ok.any() else math.nan


def fit_public(dirs: Sequence[Path], logo: bool = True) -> dict[str, Any]:
    """Fit every public dataset found under ``dirs``: the ``library_costs`` document
    (units per architecture, with their source and their fit and leave-one-group-out
    errors) that ``simgpu/data/library_costs.json`` holds."""
    from calibrate.public import find_datasets

    datasets, _ = find_datasets(list(dirs))
    if not datasets:
        raise CalibrationError(f"no public datasets under {', '.join(map(str, dirs))}")
    fits = fit(datasets)
    pred = predictions(datasets, {f.gpu: f.costs for f in fits})
    held = logo_predictions(datasets) if logo else {}
    archs: dict[str, Any] = {}
    for f in fits:
        mine = [d for d in datasets if d.gpu == f.gpu]
        archs[f.arch] = {
            "fitted_on": f.gpu,
            "units": {
                u: {
                    "efficiency": round(c.efficiency, 6),
                    "iter_cycles": round(c.iter_cycles, 3),
                    "block_cycles": round(c.block_cycles, 3),
                }
                for u, c in sorted(f.units.items())
            },
            "calls_us": {lib: round(us, 3) for lib, us in sorted(f.calls.items())},
            "rows": f.rows,
            "objective": round(f.objective, 6),
            "datasets": [
                {
                    "name": d.name,
                    "file": d.path.name,
                    "sha256": sha256(d.path),
                    "rows": len(d.rows),
                    "fit_mape": round(mape(pred[d.name], [m.measured_us for m in d.rows]), 2),
                    "logo_mape": round(mape(held[d.name], [m.measured_us for m in d.rows]), 2)
                    if d.name in held
                    else None,
                    # each row's leave-one-group-out prediction: `simgpu fidelity` shows
                    # them for these exact files instead of refitting (minutes)
                    "logo_us": [None if not math.isfinite(v) else round(v, 4) for v in held[d.name]]
                    if d.name in held
                    else None,
                }
                for d in mine
            ],
        }
    return {
        "format": "simgpu.library_costs",
        "version": 1,
        "how": "simgpu calibrate fit-public --data DIR --out FILE: least squares on log "
        "time ratios, each dataset weighted equally (calibrate/costfit.py)",
        "archs": archs,
    }


def recorded_logo(datasets: Sequence[Dataset]) -> dict[str, list[float]] | None:
    """The leave-one-group-out predictions the committed fit recorded, if it was made on
    exactly these files (same names and sha256, every one of them); else None. The LOGO
    fits of a dataset depend on all the others, so a partial match does not count."""
    from simgpu.costs import DATA

    try:
        doc = json.loads(DATA.read_text())
        entries = {(e["name"], e["sha256"]): e for a in doc["archs"].values()
                   for e in a.get("datasets", [])}  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if len(entries) != len(datasets):
        return None
    out = {}
    for d in datasets:
        e = entries.get((d.name, sha256(d.path)))
        held = e.get("logo_us") if e else None
        if not isinstance(held, list) or len(held) != len(d.rows):
            return None
        out[d.name] = [math.nan if v is None else float(v) for v in held]
    return out
