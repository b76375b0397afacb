"""The validation harness: schedules run on a real GPU vs the simulator's prediction.

:func:`validate_model` (GPU) runs every scheduler on a model, executes each resulting
StreamProgram on the GPU exactly as lowered (:mod:`calibrate.executor`), simulates the
same program with the calibrated GPU, and records both — together with each schedule
and the GPU spec, so :func:`resimulate` can re-simulate a recorded file with today's
code, on any machine, and report how far the simulator is from the hardware:
``{"schedules", "mape", "kendall_tau", "per_schedule": [...]}``.

Peak memory, where a schedule's entry records it (``measured_peak_memory_bytes``, see
:data:`MEMORY_NOTE`), is compared the same way: the summary's rows gain
``measured_peak_memory_mb``, ``simulated_peak_memory_mb`` and ``memory_error_pct``, and
the summary ``memory_schedules`` and ``memory_mape``. Files without it read and
summarise as before.
"""

from __future__ import annotations

import datetime as _dt
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from calibrate.errors import CalibrationError, require_cuda
from simgpu.errors import SimGPUError
from simgpu.graph import OpGraph, read_json
from simgpu.hardware import GPUSpec, Machine, gpu_from_json
from simgpu.memory import MB
from simgpu.output import save_figure
from simgpu.program import Launch, StreamProgram
from simgpu.schema import Checker, shown
from simgpu.timeline import Timeline

FORMAT = "simgpu.validation"
VERSION = 1
#: top-level fields a validation run writes about itself (who, when, how long, what
#: failed); a reader keeps them but needs none of them
_RECORD_NOTES = frozenset(
    {"date", "device", "torch", "cuda", "fake", "warmup", "repeats", "runtimes", "failures",
     "trace", "trace_error", "trace_scheduler", "complete", "peak_memory",
     "memory_failures"}
)  # fmt: skip
#: what a schedule's ``measured_peak_memory_bytes`` is (a validation file keeps this
#: text under "peak_memory"): both sides leave out the weights and the graph's inputs,
#: which the executor holds once per op and the simulator once
MEMORY_NOTE = (
    "measured_peak_memory_bytes: torch.cuda.max_memory_allocated during one run of the "
    "schedule (peak stats reset just before it; for a CUDA Graph, during its capture) less "
    "torch.cuda.memory_allocated just before it, i.e. the peak of the outputs the schedule "
    "keeps live and of the ops' workspaces, without the weights and inputs the executor "
    "made beforehand; simulated_peak_memory_bytes: the simulated run's peak allocated "
    "bytes less the weights and the graph's inputs (simgpu.memory)"
)


def kendall_tau(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Kendall's tau-b (ties in either ranking handled): 1 when the simulator orders the
    schedules exactly as the GPU does. NaN for fewer than two schedules or no order."""
    n = len(xs)
    if n != len(ys):
        raise CalibrationError("kendall_tau: sequences differ in length")
    conc = disc = tx = ty = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx = (xs[i] > xs[j]) - (xs[i] < xs[j])
            dy = (ys[i] > ys[j]) - (ys[i] < ys[j])
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                tx += 1
            elif dy == 0:
                ty += 1
            elif dx == dy:
                conc += 1
            else:
                disc += 1
    denom = math.sqrt((conc + disc + tx) * (conc + disc + ty))
    return (conc - disc) / denom if denom else float("nan")


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def simulated_peak_memory(
    program: StreamProgram, graph: OpGraph, gpu: GPUSpec, timeline: Timeline | None = None
) -> int:
    """The simulated peak allocated bytes of ``program`` (run on ``graph``, the graph it
    runs: a rewritten one where a scheduler rewrote it) less the weights and the graph's
    inputs: the figure a schedule's ``measured_peak_memory_bytes`` is compared with
    (:data:`MEMORY_NOTE`). ``timeline``: the program's simulated run, if at hand."""
    from simgpu.memory import account, tensors_of
    from simgpu.sim.engine import simulate

    if timeline is None:
        timeline = simulate(program, Machine.single(gpu))
    kernels: dict[str, list[Any]] = {}
    for c in program.commands:
        if isinstance(c, Launch) and c.kernel is not None:
            kernels.setdefault(c.op, []).append(c.kernel)
    t = tensors_of(graph, gpu, kernels)
    report = account(timeline, program, graph, gpu, tensors=t)
    return report.peak_allocated - t.resident()


def _memory_row(r: Mapping[str, Any]) -> dict[str, Any]:
    """The memory columns of a row that has both peaks ({} otherwise); the error is
    None where the measured peak is 0 (no ratio to a zero)."""
    m, s = r.get("measured_peak_memory_bytes"), r.get("simulated_peak_memory_bytes")
    if m is None or s is None:
        return {}
    return {
        "measured_peak_memory_mb": m / MB,
        "simulated_peak_memory_mb": s / MB,
        "memory_error_pct": (s - m) / m * 100.0 if m > 0 else None,
    }


def summarise(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Rows with ``measured_ms`` and ``simulated_ms`` -> error per schedule, MAPE, tau.
    Rows that also have ``measured_peak_memory_bytes`` and ``simulated_peak_memory_bytes``
    get the memory error, and the summary ``memory_schedules`` and ``memory_mape`` (both
    present only when some row has them)."""
    per = []
    for r in rows:
        m, s = float(r["measured_ms"]), float(r["simulated_ms"])
        if not (m > 0 and math.isfinite(m)):
            raise CalibrationError(f"schedule '{r.get('scheduler')}': measured_ms must be > 0")
        per.append({**dict(r), "error_pct": (s - m) / m * 100.0, **_memory_row(r)})
    meas = [p["measured_ms"] for p in per]
    sim = [p["simulated_ms"] for p in per]
    out = {
        "schedules": len(per),
        # None where undefined (no rows, one row, all tied): JSON has no NaN
        "mape": statistics.fmean(abs(p["error_pct"]) for p in per) if per else None,
        "kendall_tau": _finite_or_none(kendall_tau(meas, sim)) if len(per) >= 2 else None,
        "per_schedule": per,
    }
    mem = [p for p in per if "measured_peak_memory_mb" in p]
    if mem:
        errs = [abs(p["memory_error_pct"]) for p in mem if p["memory_error_pct"] is not None]
        out["memory_schedules"] = len(mem)
        out["memory_mape"] = statistics.fmean(errs) if errs else None
    return out


def _gpu_of(data: Mapping[str, Any], source: str) -> GPUSpec:
    g = data.get("gpu")
    if not isinstance(g, dict):
        raise CalibrationError(f'{source}: no "gpu" object (the spec the run was simulated with)')
    return gpu_from_json(g, source=source)


def resimulate(data: Any, source: str = "<validation>") -> dict[str, Any]:
    """Re-simulate every schedule of a recorded validation file with today's code.

    The file keeps the model (name, batch, image size, dtype), the GPU spec, and per
    schedule its JSON and the measured latency; the simulated figure is recomputed.
    """
    from simgpu.models import build_model
    from simgpu.program import lower
    from simgpu.runtimes import UnknownRuntime, get_runtime
    from simgpu.schedule import check_rewrite, schedule_from_json
    from simgpu.sim.engine import simulate

    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CalibrationError(f'{source}: not a validation file (missing "format": "{FORMAT}")')
    if data.get("version") != VERSION or isinstance(data.get("version"), bool):
        raise CalibrationError(
            f"{source}: validation version {shown(data.get('version'))} not supported"
        )
    check = Checker(source, CalibrationError)
    top = check.fields(data)
    top.raw("format"), top.raw("version")
    gpu = _gpu_of(data, source)
    m = top.fields("model")
    model = m.string("name")
    batch = m.integer("batch", 1, lo=1)
    size = m.integer("image_size", None, lo=1)
    dtype = m.string("dtype", "fp32")
    m.done()
    graph = build_model(model, batch=batch, image_size=size, dtype=dtype)
    rows = []
    entries = list(top.items("schedules"))
    if not entries:
        raise CalibrationError(f'{source}: "schedules" must be a non-empty list')
    for at, e in entries:
        f = check.fields(e, at)
        name = f.string("scheduler")
        measured = f.number("measured_ms", lo=0, lo_open=True)
        f.number("simulated_ms", None, lo=0)  # as simulated then: recomputed here
        f.number("native_simulated_ms", None, lo=0)
        f.string("native_runtime", None)
        f.string("mode", None, {"graph", "eager"})
        f.integer("streams", None, lo=0)
        f.integer("kernels", None, lo=0)
        f.array("samples_ms", None)
        # peak memory (MEMORY_NOTE): files without it predate its measurement
        measured_mem = f.integer("measured_peak_memory_bytes", None, lo=0)
        f.integer("simulated_peak_memory_bytes", None, lo=0)  # as simulated then: recomputed
        rt = f.string("runtime", None)  # files without one predate runtimes
        sched = schedule_from_json(f.raw("schedule"), source=f"{source} {at}")
        f.done()
        check_rewrite(graph, sched, f"{source} {at}")
        try:
            runtime = None if rt is None else get_runtime(rt)
        except UnknownRuntime as err:
            raise CalibrationError(f"{source}: {at}.runtime: {err}") from None
        program = lower(sched, graph, gpu, name=name, runtime=runtime)
        timeline = simulate(program, Machine.single(gpu))
        row = {"scheduler": name, "measured_ms": measured, "simulated_ms": timeline.latency_ms,
               "mode": "graph" if program.graph_mode else "eager"}  # fmt: skip
        if measured_mem is not None:
            row["measured_peak_memory_bytes"] = measured_mem
            row["simulated_peak_memory_bytes"] = simulated_peak_memory(
                program, sched.graph or graph, gpu, timeline
            )
        rows.append(row)
    # what the run recorded about itself: kept with the file, not needed to re-simulate
    top.raw("gpu")
    top.string("peak_memory", None)
    if not isinstance(top.raw("memory_failures", {}), dict):
        raise CalibrationError(f'{source}: "memory_failures" must be an object')
    top.done(ignore=_RECORD_NOTES)
    out = summarise(rows)
    out["model"] = model
    out["gpu"] = gpu.name
    return out


def resimulate_file(path: str | Path) -> dict[str, Any]:
    return resimulate(read_json(path), source=str(path))


def format_table(summary: Mapping[str, Any]) -> str:
    """A plain-text table of a summary, schedules by measured latency; with the peak
    memory columns where some schedule has a measured peak."""
    rows = sorted(summary["per_schedule"], key=lambda r: (r["measured_ms"], r["scheduler"]))
    memory = "memory_schedules" in summary
    head = ["scheduler", "measured ms", "simulated ms", "error %"]
    if memory:
        head += ["measured MB", "simulated MB", "mem error %"]
    body = []
    for r in rows:
        cells = [
            r["scheduler"],
            f"{r['measured_ms']:.3f}",
            f"{r['simulated_ms']:.3f}",
            f"{r['error_pct']:+.1f}",
        ]
        if memory:
            has = "measured_peak_memory_mb" in r
            err = r.get("memory_error_pct")
            cells += [
                f"{r['measured_peak_memory_mb']:.1f}" if has else "—",
                f"{r['simulated_peak_memory_mb']:.1f}" if has else "—",
                "—" if err is None else f"{err:+.1f}",
            ]
        body.append(cells)
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]

    def fmt(r: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )

    lines = [fmt(head), "  ".join("-" * w for w in widths), *(fmt(r) for r in body)]
    tau, mape = summary["kendall_tau"], summary["mape"]
    last = (
        f"{summary['schedules']} schedules  MAPE {'n/a' if mape is None else f'{mape:.1f}%'}  "
        f"Kendall tau {'n/a' if tau is None or math.isnan(tau) else f'{tau:.2f}'}"
    )
    if memory:
        mm = summary["memory_mape"]
        last += (
            f"  peak memory MAPE {'n/a' if mm is None else f'{mm:.1f}%'} over "
            f"{summary['memory_schedules']} schedules (MB: peak beyond weights and inputs)"
        )
    lines.append(last)
    return "\n".join(lines)


def scatter(summary: Mapping[str, Any], path: str | Path, title: str = "") -> Path:
    """Measured vs simulated latency, one point per schedule, with the y = x line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["per_schedule"]
    xs = [r["measured_ms"] for r in rows]
    ys = [r["simulated_ms"] for r in rows]
    fig, ax = plt.subplots(figsize=(5, 5), dpi=110)
    ax.scatter(xs, ys)
    for r in rows:
        ax.annotate(r["scheduler"], (r["measured_ms"], r["simulated_ms"]), fontsize=7)
    lo, hi = min(xs + ys) * 0.9, max(xs + ys) * 1.1
    ax.plot([lo, hi], [lo, hi], linestyle="--", linewidth=1)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel("simulated latency (ms)")
    ax.set_title(title or f"MAPE {summary['mape']:.1f}%")
    p = Path(path)
    try:
        save_figure(fig, p, bbox_inches="tight")
    except OSError as e:
        raise CalibrationError(f"cannot write {p}: {e.strerror or e}") from None
    finally:
        plt.close(fig)
    return p


def validate_model(
    model: str,
    schedulers: Sequence[str],
    gpu: GPUSpec,
    device: int = 0,
    batch: int = 1,
    image_size: int | None = None,
    dtype: str = "fp32",
    warmup: int = 5,
    repeats: int = 30,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Run every scheduler's program on the GPU and simulate it: a validation record."""
    torch = require_cuda("validation")
    from calibrate.executor import measure
    from schedulers.base import run_scheduler
    from simgpu.models import build_model
    from simgpu.schedule import schedule_to_json

    graph = build_model(model, batch=batch, image_size=image_size, dtype=dtype)
    machine = Machine.single(gpu)
    entries, failures = [], {}
    for i, name in enumerate(schedulers):
        if progress:
            progress(name, i, len(schedulers))
        try:
            res = run_scheduler(name, graph, machine)
            g = res.schedule.graph or graph
            m = measure(res.program, g, device, warmup, repeats)
        except SimGPUError as e:
            failures[name] = str(e).splitlines()[0]
            continue
        entries.append(
            {
                "scheduler": name,
                "measured_ms": m["median_us"] / 1e3,
                "simulated_ms": res.latency_ms,
                "measured_peak_memory_bytes": int(m["peak_memory_bytes"]),
                "simulated_peak_memory_bytes": simulated_peak_memory(
                    res.program, g, gpu, res.timeline
                ),
                "runtime": res.runtime,
                "streams": res.streams,
                "kernels": res.program.kernels,
                "mode": "graph" if res.program.graph_mode else "eager",
                "schedule": schedule_to_json(res.schedule),
            }
        )
    if not entries:
        raise CalibrationError(f"no scheduler could be validated on {model}: {failures}")
    return {
        "format": FORMAT,
        "version": VERSION,
        "date": _dt.date.today().isoformat(),
        "device": torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "model": {"name": model, "batch": batch, "image_size": image_size, "dtype": dtype},
        "gpu": gpu.to_json(),
        "warmup": warmup,
        "repeats": repeats,
        "peak_memory": MEMORY_NOTE,
        "schedules": entries,
        "failures": failures,
    }
