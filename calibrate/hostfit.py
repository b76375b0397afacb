"""Fit the runtimes' host costs: per-op CPU time from a Kineto trace, the framework's
speed from published end-to-end speedups.

Two sources, two steps:

1. **Per-op CPU time by op family** (:func:`trace_host_costs`). In a PyTorch profiler
   trace every ``aten::`` op the Python code calls is a top-level ``cpu_op`` span on
   its thread, and the ``cudaLaunchKernel`` calls it makes are ``cuda_runtime`` spans
   inside it. An op's framework time is its span minus its launches (the launches are
   the GPU's ``launch_api_us``, charged per kernel); the interpreter's time is the gap
   between two top-level ops inside a forward pass. Medians per family.
2. **The CPU and framework speed** (:func:`fit_scale`). The trace was recorded on
   another CPU, by another PyTorch, than a published figure. One factor scales every
   per-op time; it is fitted by least squares on log speedups of ``nimble`` (CUDA
   Graph) over ``sequential`` under ``pytorch-eager``, against Nimble's eight V100
   figures, and each model is also predicted by a fit without it (leave one out).

``simgpu calibrate fit-host --kineto TRACE --published FILE -o FILE`` writes
``simgpu/data/host_costs.json``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from calibrate.errors import CalibrationError
from simgpu.costs import library_costs
from simgpu.hardware import GPUSpec
from simgpu.runtimes import FAMILIES, HostCosts

# aten op (top level, as Python calls it) -> host-cost family
ATEN_FAMILY = {
    "aten::conv2d": "conv",
    "aten::convolution": "conv",
    "aten::conv_transpose2d": "conv",
    "aten::linear": "gemm",
    "aten::addmm": "gemm",
    "aten::mm": "gemm",
    "aten::matmul": "gemm",
    "aten::bmm": "gemm",
    "aten::batch_norm": "norm",
    "aten::layer_norm": "norm",
    "aten::relu": "elementwise",
    "aten::relu_": "elementwise",
    "aten::add": "elementwise",
    "aten::add_": "elementwise",
    "aten::mul": "elementwise",
    "aten::mul_": "elementwise",
    "aten::sigmoid": "elementwise",
    "aten::silu": "elementwise",
    "aten::silu_": "elementwise",
    "aten::hardtanh": "elementwise",
    "aten::hardtanh_": "elementwise",
    "aten::max_pool2d": "pool",
    "aten::avg_pool2d": "pool",
    "aten::adaptive_avg_pool2d": "reduce",
    "aten::softmax": "reduce",
    "aten::mean": "reduce",
    "aten::cat": "concat",
    "aten::flatten": "view",
    "aten::view": "view",
    "aten::reshape": "view",
}


@dataclass
class TraceHost:
    """What one Kineto trace says about the host, in microseconds (medians)."""

    op_us: dict[str, float]  # framework time per op call, launches excluded, by family
    samples: dict[str, int]  # op calls behind each median
    python_us: float  # interpreter time between two top-level ops of a forward pass
    launch_us: float  # one cudaLaunchKernel
    record_us: float  # one cudaEventRecord
    wait_us: float  # one cudaStreamWaitEvent
    assumed: list[str] = field(default_factory=list)  # families the trace lacks

    def to_json(self) -> dict[str, Any]:
        return {
            "op_us": {k: round(v, 3) for k, v in self.op_us.items()},
            "samples": self.samples,
            "python_us": round(self.python_us, 3),
            "launch_us": round(self.launch_us, 3),
            "record_us": round(self.record_us, 3),
            "wait_us": round(self.wait_us, 3),
            "assumed": self.assumed,
        }


def _median(xs: Sequence[float], what: str) -> float:
    if not xs:
        raise CalibrationError(f"trace has no {what}")
    return float(statistics.median(xs))


def trace_host_costs(events: Sequence[Mapping[str, Any]]) -> TraceHost:
    """Per-family framework time, interpreter gap and CUDA API costs of a trace's
    ``traceEvents`` (see the module docstring). Families the trace never calls take
    the elementwise median and are listed in ``assumed``."""
    spans: dict[tuple[Any, Any], list[tuple[float, float, str]]] = defaultdict(list)
    launches: dict[tuple[Any, Any], list[tuple[float, float]]] = defaultdict(list)
    api: dict[str, list[float]] = defaultdict(list)
    windows: list[tuple[Any, Any, float, float]] = []
    for e in events:
        if not isinstance(e, Mapping) or e.get("ph") != "X":
            continue
        try:
            ts, dur = float(e["ts"]), float(e["dur"])
        except (KeyError, TypeError, ValueError):
            continue
        if not (math.isfinite(ts) and math.isfinite(dur)) or dur < 0:
            continue
        thread = (e.get("pid"), e.get("tid"))
        cat, name = e.get("cat"), str(e.get("name", ""))
        if cat == "cpu_op":
            spans[thread].append((ts, dur, name))
        elif cat == "cuda_runtime":
            api[name].append(dur)
            if name in ("cudaLaunchKernel", "cuLaunchKernel"):
                launches[thread].append((ts, dur))
        elif cat == "user_annotation" and "forward" in name.lower():
            windows.append((*thread, ts, ts + dur))
    per_family: dict[str, list[float]] = defaultdict(list)
    gaps: list[float] = []
    for thread, ops in spans.items():
        ops.sort(key=lambda s: (s[0], -s[1]))
        top: list[tuple[float, float, str]] = []
        end = -math.inf
        for s in ops:  # a span starting inside the last top-level span is nested in it
            if s[0] >= end:
                top.append(s)
                end = s[0] + s[1]
        ls = sorted(launches.get(thread, []))
        j = 0
        for ts, dur, name in top:
            while j < len(ls) and ls[j][0] < ts:
                j += 1
            inside = 0.0
            k = j
            while k < len(ls) and ls[k][0] < ts + dur:
                inside += ls[k][1]
                k += 1
            fam = ATEN_FAMILY.get(name)
            if fam is not None:
                per_family[fam].append(max(0.0, dur - inside))
        mine = [(a, b) for p, t, a, b in windows if (p, t) == thread]
        for (t0, d0, _), (t1, _, _) in itertools.pairwise(top):
            if any(a <= t0 and t1 < b for a, b in mine):
                gaps.append(t1 - (t0 + d0))
    if "elementwise" not in per_family:
        raise CalibrationError("trace has no elementwise aten op (relu, add, mul) to measure")
    assumed = [f for f in FAMILIES if f not in per_family]
    fallback = statistics.median(per_family["elementwise"])
    op_us = {f: float(statistics.median(per_family[f])) if f in per_family else fallback
             for f in FAMILIES}  # fmt: skip
    return TraceHost(
        op_us,
        {f: len(per_family.get(f, ())) for f in FAMILIES},
        _median(gaps, "gaps between top-level ops inside a forward annotation"),
        _median(api.get("cudaLaunchKernel", []), "cudaLaunchKernel calls"),
        _median(api.get("cudaEventRecord", []), "cudaEventRecord calls"),
        _median(api.get("cudaStreamWaitEvent", []), "cudaStreamWaitEvent calls"),
        assumed,
    )


def eager_costs(trace: TraceHost, scale: float, source: str = "") -> HostCosts:
    """``pytorch-eager``'s costs from a trace and a CPU/framework speed factor. An event
    record or wait from Python costs the interpreter's gap on top of the API call."""
    return HostCosts(trace.op_us, trace.python_us, scale, trace.python_us, trace.python_us,
                     source)  # fmt: skip


def cudnn_costs(gpu: GPUSpec) -> HostCosts:
    """The C++ runtime's costs: a cuDNN call (convolution, pooling, activation, norm)
    costs cuDNN's fitted per-call host time and a GEMM cuBLAS's (both from the public
    benchmark fit, :mod:`simgpu.costs`), less the launch they include; copies and adds
    are the runtime's own kernels, a bare launch. No interpreter."""
    calls = library_costs(gpu).calls
    cudnn = max(0.0, calls.get("cudnn", 0.0) - gpu.launch_api_us)
    cublas = max(0.0, calls.get("cublas", 0.0) - gpu.launch_api_us)
    op_us = {f: 0.0 for f in FAMILIES}
    op_us.update(conv=cudnn, pool=cudnn, norm=cudnn, reduce=cudnn, gemm=cublas)
    return HostCosts(op_us, source=f"library calls_us of {library_costs(gpu).arch} "
                     "(simgpu/data/library_costs.json) less one launch")  # fmt: skip


def launch_only_costs(source: str) -> HostCosts:
    """No framework time: the runtime's calls are its launches (TensorRT's enqueue)."""
    return HostCosts({f: 0.0 for f in FAMILIES}, source=source)


# --- the speed factor, fitted to published end-to-end speedups ------------------------


@dataclass
class ScaleFit:
    scale: float
    predicted: dict[str, float]  # model -> speedup at the fitted scale
    logo: dict[str, float]  # model -> speedup predicted by a fit without it
    logo_scale: dict[str, float]
    published: dict[str, float]

    def errors(self, which: Mapping[str, float]) -> dict[str, float]:
        return {m: which[m] / self.published[m] - 1.0 for m in which}


def _golden(f: Callable[[float], float], lo: float, hi: float, tol: float = 1e-6) -> float:
    """Minimise a unimodal f on [lo, hi] (golden section); the objective here is a sum
    of squared log errors in one log-scale variable, so it is."""
    g = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    while b - a > tol:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    return (a + b) / 2


def fit_scale(
    curves: Mapping[str, Callable[[float], float]],
    published: Mapping[str, float],
    lo: float = 0.05,
    hi: float = 20.0,
) -> ScaleFit:
    """The scale that best reproduces ``published`` speedups, each model's predicted
    speedup being ``curves[model](scale)``: least squares on log ratios, then once per
    model without it (leave one model out)."""
    models = [m for m in published if m in curves]
    if not models:
        raise CalibrationError("no published model can be simulated")

    def fit(ms: Sequence[str]) -> float:
        def obj(ls: float) -> float:
            s = math.exp(ls)
            return math.fsum(math.log(curves[m](s) / published[m]) ** 2 for m in ms)

        return math.exp(_golden(obj, math.log(lo), math.log(hi)))

    scale = fit(models)
    logo_scale = {m: fit([o for o in models if o != m]) if len(models) > 1 else scale
                  for m in models}  # fmt: skip
    return ScaleFit(
        scale,
        {m: curves[m](scale) for m in models},
        {m: curves[m](logo_scale[m]) for m in models},
        logo_scale,
        {m: float(published[m]) for m in models},
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- simulated speedups ----------------------------------------------------------------


def nimble_us(model: str, gpu: GPUSpec) -> float:
    """Simulated latency (µs) of ``nimble`` under ``cuda-graph``: the denominator of every
    speedup of the fit (it does not depend on eager PyTorch's costs)."""
    from schedulers.base import run_scheduler
    from simgpu.hardware import Machine
    from simgpu.models import build_model

    graph = build_model(model)
    return run_scheduler(
        "nimble", graph, Machine.single(gpu), runtime="cuda-graph"
    ).timeline.makespan_us


def eager_us(model: str, gpu: GPUSpec, trace: TraceHost, scales: Sequence[float]) -> list[float]:
    """Simulated latency (µs) of ``sequential`` under ``pytorch-eager`` at each scale."""
    from simgpu.hardware import Machine
    from simgpu.kernels import KernelCache
    from simgpu.models import build_model
    from simgpu.program import lower
    from simgpu.runtimes import get_runtime
    from simgpu.schedule import StreamSchedule
    from simgpu.sim.engine import simulate

    graph = build_model(model)
    machine = Machine.single(gpu)
    seq = StreamSchedule([list(graph.topo_order)])
    cache = KernelCache(gpu)
    eager = type(get_runtime("pytorch-eager"))
    out = []
    for s in scales:
        prog = lower(seq, graph, gpu, cache=cache, runtime=eager(eager_costs(trace, s)))
        out.append(simulate(prog, machine).makespan_us)
    return out


def interpolated(scales: Sequence[float], values: Sequence[float]) -> Callable[[float], float]:
    """Piecewise log-log linear interpolation of a positive curve sampled at ``scales``
    (sorted), extrapolated by the end segments."""
    xs = [math.log(s) for s in scales]
    ys = [math.log(v) for v in values]

    def f(s: float) -> float:
        x = math.log(s)
        i = 0
        while i < len(xs) - 2 and x > xs[i + 1]:
            i += 1
        t = (x - xs[i]) / (xs[i + 1] - xs[i])
        return math.exp(ys[i] + t * (ys[i + 1] - ys[i]))

    return f


SCALES = tuple(round(0.1 * 1.25**i, 6) for i in range(22))  # 0.1 .. 10.8, 25% apart


def fit_host(
    kineto: Path,
    published: Path,
    gpu: GPUSpec,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """The whole fit: the trace's per-op costs, the speed factor against the published
    speedups (fit and leave-one-model-out), and every runtime's costs, as the document
    ``simgpu/data/host_costs.json`` holds."""
    from calibrate.kineto import read_trace_json
    from simgpu.models import MODELS

    raw = read_trace_json(kineto)
    events = raw.get("traceEvents") if isinstance(raw, Mapping) else None
    if not isinstance(events, list):
        raise CalibrationError(f"{kineto}: no traceEvents list")
    trace = trace_host_costs(events)
    try:
        pub = json.loads(Path(published).read_text())
        speedups = {str(k): float(v) for k, v in pub["nimble_speedup_over_pytorch_eager"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CalibrationError(f"{published}: not a published speedup file ({e})") from None
    models = [m for m in speedups if m in MODELS]
    missing = [m for m in speedups if m not in MODELS]
    curves: dict[str, Callable[[float], float]] = {}
    nimble: dict[str, float] = {}
    sims: dict[str, Any] = {}
    for i, m in enumerate(models):
        if progress is not None:
            progress(m, i, len(models))
        nimble[m] = nimble_us(m, gpu)
        curves[m] = interpolated(SCALES, [e / nimble[m] for e in eager_us(m, gpu, trace, SCALES)])
        sims[m] = {"nimble_ms": round(nimble[m] / 1e3, 4)}
    fit = fit_scale(curves, speedups, SCALES[0], SCALES[-1])
    # the figures reported are simulated at the fitted scale, not interpolated
    for m in models:
        (eager,) = eager_us(m, gpu, trace, [fit.scale])
        fit.predicted[m] = eager / nimble[m]
        sims[m]["eager_ms"] = round(eager / 1e3, 4)
    source = (f"{kineto.name} (sha256 {sha256(kineto)[:12]}): per-op medians; speed factor "
              f"fitted to {published.name}")  # fmt: skip
    runtimes = {
        "pytorch-eager": eager_costs(trace, round(fit.scale, 6), source),
        "cudnn": cudnn_costs(gpu),
        "tensorrt": launch_only_costs("assumed: TensorRT's enqueue is its launches"),
    }
    err = fit.errors(fit.predicted)
    logo = fit.errors(fit.logo)
    return {
        "how": "simgpu calibrate fit-host --kineto TRACE --published FILE -o FILE "
        "(calibrate/hostfit.py)",
        "gpu": gpu.name,
        "kineto": {"file": kineto.name, "sha256": sha256(kineto), **trace.to_json()},
        "published": {
            "file": published.name,
            "sha256": sha256(published),
            "speedups": {m: speedups[m] for m in models},
            "not_in_zoo": missing,
        },
        "fit": {
            "scale": round(fit.scale, 6),
            "simulated": sims,
            "predicted": {m: round(v, 3) for m, v in fit.predicted.items()},
            "error": {m: round(v, 4) for m, v in err.items()},
            "max_abs_error": round(max(abs(v) for v in err.values()), 4),
            "logo_scale": {m: round(v, 6) for m, v in fit.logo_scale.items()},
            "logo_predicted": {m: round(v, 3) for m, v in fit.logo.items()},
            "logo_error": {m: round(v, 4) for m, v in logo.items()},
            "logo_max_abs_error": round(max(abs(v) for v in logo.values()), 4),
        },
        "runtimes": {name: c.to_json() for name, c in runtimes.items()},
    }
