"""The fidelity report card: how far the simulator is from public and recorded measurements.

One :class:`Score` per dataset, of three kinds:

- ``calls`` — DeepBench CSVs and AutoTVM logs (:mod:`calibrate.public`): every row is one
  library call (a GEMM or a convolution forward) measured on a real GPU, priced with
  :func:`calibrate.public.predict_us`. Rows whose pricing raises a SimGPUError (a shape
  the lowering rejects) are counted with their reasons, never dropped silently. The
  LOGO column is :func:`calibrate.costfit.logo_predictions`: each row priced by a fit
  that held out the row's group.
- ``replay`` — PyTorch profiler (Kineto) traces (``*.json``/``*.json.gz`` with
  ``traceEvents``): the public traces record no op shapes (their CPU ops carry no
  ``Input Dims``), so nothing can be priced from them; the row is the trace replayed
  with :func:`calibrate.kineto.replay` (recorded kernel durations, the simulator decides
  when each starts), as ``simgpu replay FILE``: one row, recorded vs simulated GPU span.
- ``schedules`` — recorded validation files (``"format": "simgpu.validation"``,
  :mod:`calibrate.validate`): every schedule's measured latency vs the latency that
  today's code simulates for it. Where the file records measured peak memory, the row's
  ``extra.memory`` scores it the same way (simulated / measured peak, MAPE, the worst
  schedule), and the text report gives it a line.

Ratios are simulated / measured. MAPE is ``mean(|p - m| / m) * 100``; the worst row is
the one furthest from 1 in log scale (twice too slow and twice too fast weigh the same).

A GPU override (``gpu=``) replaces, for *every* dataset, the GPU the data was recorded
on: library calls are priced on it instead of the file name's preset, traces replay on it
instead of the spec derived from their ``deviceProperties``, validation files re-simulate
on it instead of the spec they recorded. The report keeps what each dataset was measured
on (``recorded_gpu``), so a mismatch shows. The LOGO column comes from the public fit and
does not change with the override.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from calibrate.costfit import mape
from calibrate.errors import CalibrationError
from calibrate.public import Dataset, Measurement, find_datasets, predict_us
from simgpu.errors import SimGPUError
from simgpu.hardware import GPUSpec, preset

WITHIN = 0.25  # a row is "within 25%" when |simulated / measured - 1| <= WITHIN
Predictor = Callable[[Measurement, GPUSpec], float]


@dataclass(frozen=True)
class Score:
    """How well the simulator matches one dataset."""

    dataset: str
    gpu: str  # the spec that priced it
    n: int  # rows scored
    mape: float  # %
    median_ratio: float  # simulated / measured
    within_25: float  # share (0..1) of rows with |ratio - 1| <= 0.25
    worst: tuple[str, float]  # (source of the worst row, its ratio)
    logo_mape: float | None = None
    skipped: tuple[tuple[str, str], ...] = ()  # (source, reason) of rows not priced
    kind: str = "calls"  # "calls" | "replay" | "schedules"
    path: str = ""
    recorded_gpu: str = ""  # what the data was measured on (a preset or device name)
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def skipped_rows(self) -> int:
        return len(self.skipped)

    def to_json(self) -> dict[str, Any]:
        return _finite(
            {
                "dataset": self.dataset,
                "kind": self.kind,
                "path": self.path,
                "gpu": self.gpu,
                "recorded_gpu": self.recorded_gpu,
                "n": self.n,
                "mape": self.mape,
                "median_ratio": self.median_ratio,
                "within_25": self.within_25,
                "worst": {"source": self.worst[0], "ratio": self.worst[1]},
                "logo_mape": self.logo_mape,
                "skipped_rows": self.skipped_rows,
                "skipped": [{"source": s, "reason": r} for s, r in self.skipped],
                **({"extra": dict(self.extra)} if self.extra else {}),
            }
        )


@dataclass(frozen=True)
class SkippedDataset:
    path: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "reason": self.reason}


@dataclass
class Report:
    dirs: list[str]
    gpu: str | None  # the override's name, or None (each dataset's own GPU)
    rows: list[Score]
    skipped: list[SkippedDataset]
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "dirs": list(self.dirs),
            "gpu_override": self.gpu,
            "rows": [r.to_json() for r in self.rows],
            "skipped": [s.to_json() for s in self.skipped],
            "notes": list(self.notes),
        }


def _finite(x: Any) -> Any:
    """``x`` with every NaN or infinity replaced by None (JSON has neither)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


def _distance(ratio: float) -> float:
    return abs(math.log(ratio)) if ratio > 0 else math.inf


def score(
    name: str,
    gpu: str,
    predicted: Sequence[float],
    measured: Sequence[float],
    sources: Sequence[str],
    logo: Sequence[float] | None = None,
    **kw: Any,
) -> Score:
    """The score of one dataset from its rows' predictions and measurements.

    ``logo`` (aligned with the rows) gives the LOGO MAPE; its non-finite entries (rows
    the fit could not price) are left out of it. Keywords go to :class:`Score`.
    """
    n = len(measured)
    if not n or len(predicted) != n or len(sources) != n:
        raise CalibrationError(
            f"{name}: need as many predictions and sources as measurements (>= 1), got "
            f"{len(predicted)}, {len(sources)} and {n}"
        )
    for p, m, s in zip(predicted, measured, sources, strict=True):
        if not (math.isfinite(m) and m > 0):
            raise CalibrationError(f"{s}: measured time must be positive, got {m!r}")
        if not (math.isfinite(p) and p >= 0):
            raise CalibrationError(f"{s}: predicted time must be finite and >= 0, got {p!r}")
    ratios = [p / m for p, m in zip(predicted, measured, strict=True)]
    worst = max(range(n), key=lambda i: _distance(ratios[i]))  # the first of equals
    logo_mape = None
    if logo is not None:
        if len(logo) != n:
            raise CalibrationError(f"{name}: {len(logo)} LOGO predictions for {n} rows")
        pairs = [(q, m) for q, m in zip(logo, measured, strict=True) if math.isfinite(q)]
        if pairs:
            logo_mape = mape([q for q, _ in pairs], [m for _, m in pairs])
    return Score(
        dataset=name,
        gpu=gpu,
        n=n,
        mape=mape(predicted, measured),
        median_ratio=statistics.median(ratios),
        within_25=sum(abs(r - 1) <= WITHIN + 1e-12 for r in ratios) / n,
        worst=(sources[worst], ratios[worst]),
        logo_mape=logo_mape,
        **kw,
    )


# --- datasets ---------------------------------------------------------------------------


def _shown(path: Path) -> str:
    """A path as the report shows it: relative to the current folder where below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def score_calls(
    d: Dataset,
    gpu: GPUSpec | None = None,
    predictor: Predictor = predict_us,
    logo: Sequence[float] | None = None,
) -> Score:
    """A DeepBench or AutoTVM dataset priced on ``gpu`` (default: its file's preset)."""
    spec = gpu if gpu is not None else preset(d.gpu)
    pred, meas, src, keep, skipped = [], [], [], [], []
    for i, m in enumerate(d.rows):
        try:
            p = float(predictor(m, spec))
        except SimGPUError as e:
            skipped.append((m.source, str(e).splitlines()[0] if str(e) else type(e).__name__))
            continue
        if not (math.isfinite(p) and p >= 0):
            skipped.append((m.source, f"predicted {p!r} us"))
            continue
        pred.append(p)
        meas.append(m.measured_us)
        src.append(m.source)
        keep.append(i)
    if not pred:
        first = f" ({skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        raise CalibrationError(f"none of its {len(d.rows)} rows could be priced{first}")
    lg = None
    if logo is not None and len(logo) == len(d.rows):
        lg = [float(logo[i]) for i in keep]
    extra = {}
    if logo is not None and lg is None:
        extra["logo_note"] = f"{len(logo)} LOGO predictions for {len(d.rows)} rows: ignored"
    return score(d.name, spec.name, pred, meas, src, lg, skipped=tuple(skipped), kind="calls",
                 path=_shown(d.path), recorded_gpu=d.gpu, extra=extra)  # fmt: skip


def gpu_of_device(props: Mapping[str, Any]) -> str | None:
    """The simgpu preset of a ``deviceProperties`` entry, from its name (and memory, to
    tell an A100 80 GB apart): "Tesla V100-SXM2-32GB" -> "v100-sxm2". None when simgpu
    has no preset for it: such a GPU is never guessed."""
    from calibrate.probe import preset_for

    name = props.get("name")
    if not isinstance(name, str) or not name.strip():
        return None
    mem = props.get("totalGlobalMem")
    return preset_for(name, mem if isinstance(mem, int | float) else None)


def score_trace(data: Any, path: Path, gpu: GPUSpec | None = None) -> Score:
    """A Kineto trace replayed as ``simgpu replay FILE`` does (recorded host times, fitted
    launch latency and kernel gap): one row, the recorded vs simulated GPU span."""
    from calibrate.kineto import parse_trace, replay

    trace = parse_trace(data, source=str(path))
    presets = []
    for dev in trace.devices:
        props = trace.props(dev)
        if props is None:
            if gpu is None:
                raise CalibrationError(f"no deviceProperties for device {dev}: GPU unknown")
            continue
        p = gpu_of_device(props)
        if p is None and gpu is None:
            raise CalibrationError(f"no simgpu preset for GPU '{props.get('name')}' (device {dev})")  # fmt: skip
        presets.append(p or str(props.get("name")))
    res = replay(trace, gpu=gpu)
    recorded = ", ".join(dict.fromkeys(presets)) or "?"
    extra = {
        "device": res.gpu if gpu is None else None,
        "recorded_ms": res.recorded_ms,
        "simulated_ms": res.simulated_ms,
        "kernels": res.kernels,
        "streams": res.streams,
        "start_mae_us": res.start_mae_us,
        "kernel_durations": "as recorded",
    }
    name = path.name.removesuffix(".gz").removesuffix(".json")
    return score(f"kineto {name}", gpu.name if gpu is not None else recorded,
                 [res.simulated_ms], [res.recorded_ms], ["GPU span"],
                 kind="replay", path=_shown(path), recorded_gpu=recorded, extra=extra)  # fmt: skip


def score_validation(data: dict[str, Any], path: Path, gpu: GPUSpec | None = None) -> Score:
    """A recorded validation file re-simulated with today's code: one row per schedule.
    A schedule that no longer simulates is a skipped row, with its reason."""
    from calibrate.validate import kendall_tau, resimulate

    spec = data.get("gpu") if isinstance(data.get("gpu"), dict) else {}
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    recorded_gpu = str(spec.get("name") or spec.get("base") or data.get("device") or "?")
    if gpu is not None:
        data = {**data, "gpu": gpu.to_json()}
    src = str(path)
    skipped: list[tuple[str, str]] = []
    try:
        summaries = [resimulate(data, source=src)]
    except SimGPUError as whole:
        entries = data.get("schedules")
        if not isinstance(entries, list) or not entries:
            raise
        summaries = []  # find which schedules fail, one at a time
        for i, e in enumerate(entries):
            who = f"{path.name}:{e.get('scheduler', i) if isinstance(e, dict) else i}"
            try:
                summaries.append(resimulate({**data, "schedules": [e]}, source=src))
            except SimGPUError as err:
                skipped.append((who, str(err).splitlines()[0] if str(err) else type(err).__name__))  # fmt: skip
        if not summaries:
            raise CalibrationError(f"no schedule re-simulates ({whole})") from None
    rows = [r for s in summaries for r in s["per_schedule"]]
    meas = [r["measured_ms"] for r in rows]
    sim = [r["simulated_ms"] for r in rows]
    spec_name = str(summaries[0]["gpu"])
    if gpu is None:
        recorded_gpu = spec_name  # the spec the file recorded, as loaded
    extra = {
        "model": model.get("name", "?"),
        "device": data.get("device"),
        "kendall_tau": kendall_tau(meas, sim) if len(rows) >= 2 else None,
    }
    memory = memory_score(rows, path.name)
    if memory is not None:
        extra["memory"] = memory
    return score(f"validation {path.name.removesuffix('.json')}", spec_name, sim, meas,
                 [f"{path.name}:{r['scheduler']}" for r in rows], kind="schedules",
                 skipped=tuple(skipped), path=_shown(path), recorded_gpu=recorded_gpu,
                 extra=extra)  # fmt: skip


def memory_score(rows: Sequence[Mapping[str, Any]], name: str) -> dict[str, Any] | None:
    """Simulated vs measured peak memory over the rows (re-simulated schedules) that
    have both: ``{"n", "mape", "median_ratio", "worst": {"source", "ratio"}}``; None
    when no row has them. A zero measured peak has no ratio: such a row counts in
    ``n`` only (``zero_measured``)."""
    pairs = [(r["simulated_peak_memory_bytes"], r["measured_peak_memory_bytes"], r["scheduler"])
             for r in rows if r.get("measured_peak_memory_bytes") is not None
             and r.get("simulated_peak_memory_bytes") is not None]  # fmt: skip
    if not pairs:
        return None
    ratios = [(s / m, who) for s, m, who in pairs if m > 0]
    out: dict[str, Any] = {"n": len(pairs), "zero_measured": len(pairs) - len(ratios)}
    if ratios:
        worst = max(ratios, key=lambda x: _distance(x[0]))
        out.update(
            mape=statistics.fmean(abs(r - 1) * 100.0 for r, _ in ratios),
            median_ratio=statistics.median(r for r, _ in ratios),
            worst={"source": f"{name}:{worst[1]}", "ratio": worst[0]},
        )
    return out


def _json_files(dirs: Sequence[Path]) -> list[Path]:
    out = []
    for d in dirs:
        out += sorted(
            p for p in d.rglob("*") if p.is_file() and p.name.endswith((".json", ".json.gz"))
        )
    return out


def build_report(
    dirs: Sequence[str | Path],
    gpu: GPUSpec | None = None,
    predictor: Predictor = predict_us,
    logo: Callable[[Sequence[Dataset]], Mapping[str, Sequence[float]]] | None = None,
) -> Report:
    """The report card over every dataset under ``dirs`` (recursively).

    ``gpu`` overrides every dataset's own GPU (see the module's docstring). ``predictor``
    prices one library call; ``logo`` defaults to
    :func:`calibrate.costfit.logo_predictions`. A missing folder is an error; datasets
    that cannot be read or scored are skipped with their reason.
    """
    from calibrate.kineto import read_trace_json

    paths: list[Path] = []
    for d in dirs:
        p = Path(d)
        if not p.is_dir():
            raise CalibrationError(f"{p}: {'not a folder' if p.exists() else 'no such folder'}")
        if p.resolve() not in {q.resolve() for q in paths}:
            paths.append(p)
    found, skipped_files = find_datasets(paths)
    seen: set[Path] = set()
    datasets = []
    for d in found:
        if d.path.resolve() not in seen:
            seen.add(d.path.resolve())
            datasets.append(d)
    skipped = [SkippedDataset(_shown(s.path), s.reason) for s in skipped_files]
    notes: list[str] = []
    if logo is None:
        from calibrate.costfit import logo_predictions, recorded_logo

        recorded = recorded_logo(datasets)
        if recorded is not None:
            notes.append("LOGO MAPE as `simgpu calibrate fit-public` recorded it for these "
                         "exact files (sha256); --refit-logo recomputes it")  # fmt: skip
            logo = lambda _: recorded  # noqa: E731
        else:
            logo = logo_predictions
    try:
        logos = dict(logo(datasets)) if datasets else {}
    except SimGPUError as e:
        logos = {}
        notes.append(f"LOGO fit failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    rows: list[Score] = []
    for d in datasets:
        try:
            rows.append(score_calls(d, gpu, predictor, logos.get(d.name)))
        except SimGPUError as e:
            skipped.append(SkippedDataset(_shown(d.path), str(e).splitlines()[0]))
    for path in _json_files(paths):
        if path.resolve() in seen:
            continue
        seen.add(path.resolve())
        try:
            data = read_trace_json(path)
        except SimGPUError as e:
            skipped.append(SkippedDataset(_shown(path), str(e).splitlines()[0].removeprefix(f"{path}: ")))  # fmt: skip
            continue
        if not isinstance(data, dict):
            continue
        try:
            if data.get("format") == "simgpu.validation":
                rows.append(score_validation(data, path, gpu))
            elif "traceEvents" in data:
                rows.append(score_trace(data, path, gpu))
        except SimGPUError as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            skipped.append(SkippedDataset(_shown(path), msg.removeprefix(f"{path}: ")))
    if not rows and not skipped:
        raise CalibrationError(
            f"no datasets found in {', '.join(str(p) for p in paths)} (looked for DeepBench "
            "CSVs, AutoTVM logs, Kineto traces and validation files)"
        )
    return Report([str(p) for p in paths], gpu.name if gpu is not None else None, rows, skipped, notes)  # fmt: skip


# --- text -------------------------------------------------------------------------------


def format_report(report: Report) -> str:
    """One table row per dataset, then one line per skipped dataset."""
    head = ["dataset", "kind", "GPU", "n", "MAPE", "median sim/meas", "within 25%",
            "worst", "worst row", "LOGO MAPE"]  # fmt: skip
    body = []
    for r in report.rows:
        gpu = r.gpu if r.gpu == r.recorded_gpu or not r.recorded_gpu else f"{r.gpu} (data: {r.recorded_gpu})"  # fmt: skip
        body.append(
            [
                r.dataset,
                r.kind,
                gpu,
                str(r.n),
                _pct(r.mape),
                _num(r.median_ratio),
                _pct(r.within_25 * 100, 0),
                _num(r.worst[1]),
                r.worst[0],
                "—" if r.logo_mape is None else _pct(r.logo_mape),
            ]
        )
    lines = []
    if body:
        widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
        left = {0, 1, 2, 8}

        def fmt(cells: list[str]) -> str:
            return "  ".join(
                c.ljust(w) if i in left else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            ).rstrip()

        lines += [fmt(head), "  ".join("-" * w for w in widths), *(fmt(b) for b in body)]
    for r in report.rows:
        m = r.extra.get("memory") if r.kind == "schedules" else None
        if m and "mape" in m:
            lines.append(
                f"{r.dataset}: peak memory of {m['n']} schedule(s), simulated vs measured: "
                f"MAPE {_pct(m['mape'])}, median sim/meas {_num(m['median_ratio'])}, worst "
                f"{_num(m['worst']['ratio'])} ({m['worst']['source']})"
            )
    for r in report.rows:
        if r.skipped:
            src, why = r.skipped[0]
            more = f" (and {r.skipped_rows - 1} more)" if r.skipped_rows > 1 else ""
            lines.append(f"{r.dataset}: {r.skipped_rows} row(s) not priced: {src}: {why}{more}")
    if any(r.kind == "replay" for r in report.rows):
        lines.append(
            "replay rows: kernels run for their recorded durations (the traces record no op "
            "shapes to price), so they test host, stream and event timing, not kernel costs"
        )
    lines += [f"skipped {s.path}: {s.reason}" for s in report.skipped]
    lines += report.notes
    if report.gpu is not None:
        lines.append(f"every dataset simulated on {report.gpu} (--gpu), not its own GPU")
    return "\n".join(lines)


def _pct(x: float, digits: int = 1) -> str:
    if not math.isfinite(x):
        return "—"
    return f"{x:.2g}%" if 0 < x < 1 and digits else f"{x:.{digits}f}%"


def _num(x: float) -> str:
    if not math.isfinite(x):
        return "—"
    return f"{x:.3g}" if x < 0.01 or x >= 100 else f"{x:.2f}"
