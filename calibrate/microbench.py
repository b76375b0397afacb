"""Microbenchmarks on a real GPU (PyTorch + CUDA events) and their analysis.

Each benchmark measures one behaviour the simulator models and writes its raw numbers
as ``<name>.json`` (and a CSV of samples) under an output folder; a finished file is
not measured again, so an interrupted run resumes. The ``analyse_*`` functions turn raw
numbers into GPUSpec fields (or into a comparison with the simulator's prediction) and
are plain arithmetic, tested on synthetic data.

| benchmark     | measures                                               | fields / checks |
|---------------|--------------------------------------------------------|-----------------|
| launch        | host time per eager op, per raw kernel, per graph; GPU time per queued kernel and per graph node | launch_api_us, framework_dispatch_us, kernel_gap_us, graph_launch_api_us, graph_node_us |
| events        | host time of a record; cross-stream wait latency        | event_record_api_us, event_wait_api_us, event_latency_us |
| waves         | a fixed-work kernel's time against its grid size       | time per wave, block setup (staircase) |
| overlap       | two kernels of known grids on two streams              | left-over dispatch vs the simulator |
| bandwidth     | memory-bound copies alone and co-running               | dram_efficiency, sharing |
| connections   | CUDA_DEVICE_MAX_CONNECTIONS 1..32 (subprocesses)       | hw_queues false dependencies vs the simulator |
"""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from calibrate.errors import CalibrationError, require_cuda
from calibrate.fit import fit_line
from simgpu.hardware import GPUSpec
from simgpu.kernels import Kernel, timed_kernel
from simgpu.timeline import Timeline

BENCHES = ("launch", "events", "waves", "overlap", "bandwidth", "connections")
SPIN_THREADS = 128


# --- analysis (no GPU) ----------------------------------------------------------------


def _med(xs: Sequence[float], what: str) -> float:
    if not xs:
        raise CalibrationError(f"no samples for {what}")
    return float(statistics.median(xs))


def analyse_launch(raw: Mapping[str, Any]) -> dict[str, float]:
    """Host and device launch costs from the launch benchmark.

    raw: ``{"eager": {"n", "host_us"}, "raw": {"n", "host_us", "queued_gpu_us",
    "kernel_us"}, "graph": {"n", "launch_host_us", "queued_gpu_us"}}`` — totals over n
    kernels; ``kernel_us`` is the tiny kernel's own duration (profiler), subtracted to
    leave the per-kernel start-up gap.
    """
    try:
        eager = raw["eager"]["host_us"] / raw["eager"]["n"]
        rk = raw["raw"]
        launch = rk["host_us"] / rk["n"]
        queued = rk["queued_gpu_us"] / rk["n"]
        own = float(rk.get("kernel_us", 0.0))
        g = raw["graph"]
        node = g["queued_gpu_us"] / g["n"]
        graph_launch = float(g["launch_host_us"])
    except (KeyError, TypeError, ZeroDivisionError) as e:
        raise CalibrationError(f"launch benchmark: malformed raw data ({e!r})") from None
    return {
        "launch_api_us": launch,
        "framework_dispatch_us": max(0.0, eager - launch),
        "kernel_gap_us": max(0.0, queued - own),
        "graph_node_us": max(0.0, node - own),
        "graph_launch_api_us": graph_launch,
    }


def analyse_events(raw: Mapping[str, Any]) -> dict[str, float]:
    """raw: ``{"record_host_us": [...], "wait_host_us": [...], "wait_latency_us": [...]}``;
    the latency samples are the time from the end of the producer's kernel to the start
    of the consumer's, on two streams joined by an event."""
    try:
        return {
            "event_record_api_us": _med(raw["record_host_us"], "event record"),
            "event_wait_api_us": _med(raw["wait_host_us"], "event wait"),
            "event_latency_us": max(0.0, _med(raw["wait_latency_us"], "event latency")),
        }
    except KeyError as e:
        raise CalibrationError(f"events benchmark: missing {e}") from None


def analyse_waves(
    grids: Sequence[int], times_us: Sequence[float], per_wave: int
) -> dict[str, float]:
    """Fit ``time = fixed + wave_us x waves(grid)`` to a grid sweep of one kernel whose
    blocks all do the same work; ``per_wave`` is blocks per wave (SMs x occupancy).

    ``staircase_r2`` near 1 means time steps with whole waves (what the simulator
    assumes); ``linear_r2`` fits time against the grid itself, for contrast.
    """
    if len(grids) != len(times_us) or len(grids) < 3:
        raise CalibrationError("waves: need at least 3 (grid, time) pairs")
    w = [-(-g // per_wave) for g in grids]
    fixed, wave_us, r2 = fit_line(w, times_us)
    _, _, lin_r2 = fit_line(list(grids), times_us)
    return {"wave_us": wave_us, "fixed_us": fixed, "staircase_r2": r2, "linear_r2": lin_r2}


def spin_kernel(gpu: GPUSpec, grid: int, block_us: float, name: str = "spin") -> Kernel:
    """The simulator's view of the benchmark's spin kernel: a fixed time per block (it
    spins on the clock, so what shares its SM does not stretch it)."""
    return timed_kernel(gpu, name, name, grid, SPIN_THREADS, 32, 0, block_us, fixed=True,
                        measured=True)  # fmt: skip


def _kernel_span_us(tl: Timeline) -> float:
    """First kernel start to last kernel end (the measured spans start at an event)."""
    return max(k.end_us for k in tl.kernels) - min(k.start_us for k in tl.kernels)


def simulate_pair(gpu: GPUSpec, grid_a: int, grid_b: int, block_us: float) -> float:
    """Span (us, first start to last end) the simulator predicts for two spin kernels
    issued back to back on two streams."""
    from simgpu.program import Launch, StreamProgram
    from simgpu.sim.engine import simulate

    g = gpu.replace(launch_api_us=0.0, framework_dispatch_us=0.0)
    prog = StreamProgram(
        [
            Launch("a", spin_kernel(g, grid_a, block_us, "a"), 0),
            Launch("b", spin_kernel(g, grid_b, block_us, "b"), 1),
        ]
    )
    return _kernel_span_us(simulate(prog, g))


def analyse_overlap(raw: Mapping[str, Any], gpu: GPUSpec) -> dict[str, Any]:
    """Measured vs simulated span of two co-running spin kernels, per grid pair.

    raw: ``{"block_us": t, "cases": [{"grid_a", "grid_b", "span_us"}, ...]}`` with
    ``block_us`` the measured time of one wave of the spin kernel alone.
    """
    try:
        t = float(raw["block_us"])
        cases = list(raw["cases"])
    except (KeyError, TypeError, ValueError) as e:
        raise CalibrationError(f"overlap benchmark: malformed raw data ({e!r})") from None
    rows = []
    for c in cases:
        sim = simulate_pair(gpu, int(c["grid_a"]), int(c["grid_b"]), t)
        meas = float(c["span_us"])
        rows.append(
            {
                "grid_a": int(c["grid_a"]),
                "grid_b": int(c["grid_b"]),
                "measured_us": meas,
                "simulated_us": sim,
                "error_pct": (sim - meas) / meas * 100.0 if meas > 0 else float("nan"),
            }
        )
    errs = [abs(r["error_pct"]) for r in rows]
    return {"cases": rows, "mape": statistics.fmean(errs) if errs else float("nan")}


def analyse_bandwidth(raw: Mapping[str, Any], gpu: GPUSpec) -> dict[str, float]:
    """raw: ``{"bytes": B, "alone_us": [...], "pair_us": [...]}`` — one copy kernel moving
    B bytes (read + write) alone, and two such copies on two streams at once.

    ``dram_efficiency`` is the achieved fraction of the datasheet peak; ``sharing`` is the
    pair's combined rate over one copy's rate (1.0: the bandwidth is shared exactly,
    as the simulator's water-filling assumes; above 1: one copy alone did not
    saturate DRAM).
    """
    try:
        nbytes = float(raw["bytes"])
        alone = _med(raw["alone_us"], "copy alone")
        pair = _med(raw["pair_us"], "copies co-running")
    except KeyError as e:
        raise CalibrationError(f"bandwidth benchmark: missing {e}") from None
    rate = nbytes / alone  # bytes per us
    return {
        "achieved_gbps": rate / 1e3,
        "dram_efficiency": min(1.0, rate / gpu.dram_bytes_per_us),
        "sharing": (2 * nbytes / pair) / rate,
    }


def simulate_connections(
    gpu: GPUSpec, queues: int, streams: int, per_stream: int, block_us: float
) -> float:
    """Span the simulator predicts when ``streams`` streams each get ``per_stream``
    one-block spin kernels, issued stream by stream (depth first), with ``queues``
    hardware queues: aliased streams serialise behind each other."""
    from simgpu.program import Launch, StreamProgram
    from simgpu.sim.engine import simulate

    g = gpu.replace(hw_queues=queues, launch_api_us=0.0, framework_dispatch_us=0.0)
    cmds = [
        Launch(f"s{s}k{i}", spin_kernel(g, 1, block_us, f"s{s}k{i}"), s)
        for s in range(streams)
        for i in range(per_stream)
    ]
    return _kernel_span_us(simulate(StreamProgram(cmds), g))


def analyse_connections(raw: Mapping[str, Any], gpu: GPUSpec) -> dict[str, Any]:
    """raw: ``{"streams", "per_stream", "block_us", "spans": {connections: span_us}}``.
    Compares each measured span with the simulator's hw_queues model."""
    try:
        n, k, t = int(raw["streams"]), int(raw["per_stream"]), float(raw["block_us"])
        spans = {int(q): float(v) for q, v in raw["spans"].items()}
    except (KeyError, TypeError, ValueError) as e:
        raise CalibrationError(f"connections benchmark: malformed raw data ({e!r})") from None
    rows = []
    for q in sorted(spans):
        sim = simulate_connections(gpu, q, n, k, t)
        rows.append(
            {
                "connections": q,
                "measured_us": spans[q],
                "simulated_us": sim,
                "error_pct": (sim - spans[q]) / spans[q] * 100.0,
            }
        )
    return {"cases": rows}


def analyse(out_dir: str | Path, gpu: GPUSpec) -> dict[str, Any]:
    """Every analysis whose raw file exists: ``{"fields": GPUSpec overrides, "checks":
    comparisons with the simulator}``."""
    d = Path(out_dir)
    fields: dict[str, Any] = {}
    checks: dict[str, Any] = {}

    def raw(name: str) -> dict[str, Any] | None:
        p = d / f"{name}.json"
        if not p.exists():
            return None
        try:
            return json.loads(p.read_text())["raw"]
        except (OSError, ValueError, KeyError) as e:
            raise CalibrationError(f"{p}: unreadable benchmark result ({e})") from None

    if (r := raw("launch")) is not None:
        fields.update(analyse_launch(r))
    if (r := raw("events")) is not None:
        fields.update(analyse_events(r))
    if (r := raw("waves")) is not None:
        checks["waves"] = analyse_waves(r["grids"], r["times_us"], r["per_wave"])
    if (r := raw("bandwidth")) is not None:
        bw = analyse_bandwidth(r, gpu)
        fields["dram_efficiency"] = bw["dram_efficiency"]
        checks["bandwidth"] = bw
    g = gpu.replace(**{k: v for k, v in fields.items() if hasattr(gpu, k)})
    if (r := raw("overlap")) is not None:
        checks["overlap"] = analyse_overlap(r, g)
    if (r := raw("connections")) is not None:
        checks["connections"] = analyse_connections(r, g)
    return {"fields": fields, "checks": checks}


# --- measurement (GPU) ----------------------------------------------------------------


class _Gpu:
    """Torch (and CuPy, when present) handles and timing helpers on one device."""

    def __init__(self, device: int, repeats: int) -> None:
        self.torch = require_cuda("microbenchmarks")
        self.dev = self.torch.device("cuda", device)
        self.torch.cuda.set_device(self.dev)
        self.repeats = repeats
        self.props = self.torch.cuda.get_device_properties(self.dev)

    def event(self):
        return self.torch.cuda.Event(enable_timing=True)

    def sync(self) -> None:
        self.torch.cuda.synchronize(self.dev)

    def spin(self, cycles: int, stream=None) -> None:
        """A one-block, one-thread kernel that spins ``cycles`` clock cycles."""
        if stream is None:
            self.torch.cuda._sleep(int(cycles))
        else:
            with self.torch.cuda.stream(stream):
                self.torch.cuda._sleep(int(cycles))

    def cycles_per_us(self) -> float:
        """Spin cycles per microsecond, measured (clocks boost and throttle)."""
        e0, e1 = self.event(), self.event()
        n = 2_000_000
        self.spin(1000)
        e0.record()
        self.spin(n)
        e1.record()
        self.sync()
        return n / (e0.elapsed_time(e1) * 1e3)


def _grid_spin(g: _Gpu):
    """A spin kernel with a chosen grid (CuPy raw kernel): every block spins the same
    number of cycles, so its time counts waves. None without CuPy."""
    try:
        import cupy as cp
    except ImportError:
        return None
    src = r"""
    extern "C" __global__ void spin(long long cycles) {
        long long t0 = clock64();
        while (clock64() - t0 < cycles) {}
    }"""
    kern = cp.RawKernel(src, "spin")

    def launch(grid: int, cycles: int, stream=None) -> None:
        s = cp.cuda.ExternalStream(stream.cuda_stream) if stream is not None else None
        if s is not None:
            with s:
                kern((grid,), (SPIN_THREADS,), (cp.int64(cycles),))
        else:
            kern((grid,), (SPIN_THREADS,), (cp.int64(cycles),))

    return launch


def _host_us(g: _Gpu, n: int, fn: Callable[..., object], *args: Any) -> float:
    """Host microseconds to call ``fn(*args)`` n times, from and back to an idle device."""
    g.sync()
    t0 = time.perf_counter()
    for _ in range(n):
        fn(*args)
    t1 = time.perf_counter()
    g.sync()
    return (t1 - t0) * 1e6


def _pair_span_us(g: _Gpu, a, b, issue: Callable[[], None]) -> float:
    """Device microseconds from a common start on streams ``a`` and ``b`` to the later
    of their ends, around ``issue`` (which queues work on both)."""
    e0, e1, e2 = g.event(), g.event(), g.event()
    e0.record(a)
    b.wait_event(e0)
    issue()
    e1.record(a)
    e2.record(b)
    g.sync()
    return max(e0.elapsed_time(e1), e0.elapsed_time(e2)) * 1e3


def bench_launch(g: _Gpu, n: int = 2000) -> dict[str, Any]:
    torch = g.torch
    x = torch.zeros(1, device=g.dev)
    out: dict[str, Any] = {}
    for _ in range(50):
        x.add_(1)
    out["eager"] = {"n": n, "host_us": _host_us(g, n, x.add_, 1)}
    # raw kernels: torch.cuda._sleep launches spin_kernel with no dispatcher work
    g.spin(0)
    raw_host_us = _host_us(g, n, g.spin, 0)
    cyc = g.cycles_per_us()
    # queued: behind a long spin so the GPU, not the host, sets the pace
    e0, e1 = g.event(), g.event()
    g.spin(int(cyc * (n * 20)))
    e0.record()
    for _ in range(n):
        g.spin(0)
    e1.record()
    g.sync()
    out["raw"] = {
        "n": n,
        "host_us": raw_host_us,
        "queued_gpu_us": e0.elapsed_time(e1) * 1e3,
        "kernel_us": _own_duration_us(g, lambda: g.spin(0)),
    }
    # CUDA Graph of n tiny kernels
    s = torch.cuda.Stream(g.dev)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(s):
        for _ in range(3):
            x.add_(1)
        torch.cuda.current_stream().synchronize()
        with torch.cuda.graph(graph, stream=s):
            for _ in range(n):
                g.torch.cuda._sleep(0)
    g.sync()
    graph.replay()
    g.sync()
    g.spin(int(cyc * (n * 20)))
    e0, e1 = g.event(), g.event()
    e0.record()
    t0 = time.perf_counter()
    graph.replay()
    t1 = time.perf_counter()
    e1.record()
    g.sync()
    out["graph"] = {
        "n": n,
        "launch_host_us": (t1 - t0) * 1e6,
        "queued_gpu_us": e0.elapsed_time(e1) * 1e3,
    }
    return out


def _own_duration_us(g: _Gpu, fn: Callable[[], None]) -> float:
    """A kernel's own duration from the profiler (CUDA events include launch gaps)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(20):
            fn()
        g.sync()
    durs = [
        e.device_time if hasattr(e, "device_time") else e.cuda_time
        for e in prof.events()
        if getattr(e, "device_type", None) is not None and str(e.device_type).endswith("CUDA")
    ]
    return float(statistics.median(durs)) if durs else 0.0


def bench_events(g: _Gpu, n: int = 200) -> dict[str, Any]:
    torch = g.torch
    cyc = g.cycles_per_us()
    a, b = torch.cuda.Stream(g.dev), torch.cuda.Stream(g.dev)
    rec, wait, lat = [], [], []
    for _ in range(n):
        ev = torch.cuda.Event()
        end_a, start_b = g.event(), g.event()
        g.spin(int(cyc * 50), a)
        end_a.record(a)
        t0 = time.perf_counter()
        ev.record(a)
        t1 = time.perf_counter()
        b.wait_event(ev)
        t2 = time.perf_counter()
        start_b.record(b)
        g.spin(0, b)
        g.sync()
        rec.append((t1 - t0) * 1e6)
        wait.append((t2 - t1) * 1e6)
        lat.append(end_a.elapsed_time(start_b) * 1e3)
    return {"record_host_us": rec, "wait_host_us": wait, "wait_latency_us": lat}


def bench_waves(g: _Gpu) -> dict[str, Any]:
    launch = _grid_spin(g)
    if launch is None:
        raise CalibrationError("the waves benchmark needs CuPy (a raw kernel with a chosen grid)")
    torch = g.torch
    sms = g.props.multi_processor_count
    per_sm = g.props.max_threads_per_multi_processor // SPIN_THREADS
    per_wave = sms * per_sm
    cycles = int(g.cycles_per_us() * 20)
    grids = sorted(
        {max(1, int(per_wave * f)) for f in (0.25, 0.5, 0.75, 1, 1.25, 1.5, 2, 2.5, 3, 4)}
    )
    times = []
    s = torch.cuda.current_stream(g.dev)
    for grid in grids:
        samples = []
        for _ in range(g.repeats):
            e0, e1 = g.event(), g.event()
            e0.record()
            launch(grid, cycles, s)
            e1.record()
            g.sync()
            samples.append(e0.elapsed_time(e1) * 1e3)
        times.append(statistics.median(samples))
    return {"grids": grids, "times_us": times, "per_wave": per_wave, "cycles": cycles}


def bench_overlap(g: _Gpu) -> dict[str, Any]:
    launch = _grid_spin(g)
    if launch is None:
        raise CalibrationError("the overlap benchmark needs CuPy (a raw kernel with a chosen grid)")
    torch = g.torch
    sms = g.props.multi_processor_count
    per_wave = sms * (g.props.max_threads_per_multi_processor // SPIN_THREADS)
    cycles = int(g.cycles_per_us() * 50)
    a, b = torch.cuda.Stream(g.dev), torch.cuda.Stream(g.dev)

    def span(ga: int, gb: int) -> float:
        def issue() -> None:
            launch(ga, cycles, a)
            if gb:
                launch(gb, cycles, b)

        samples = []
        for _ in range(g.repeats):
            g.sync()
            samples.append(_pair_span_us(g, a, b, issue))
        return statistics.median(samples)

    block_us = span(sms, 0)
    cases = []
    for fa, fb in ((0.25, 0.25), (0.5, 0.5), (0.75, 0.5), (1, 0.25), (1, 1), (1.5, 0.5)):
        ga, gb = max(1, int(per_wave * fa)), max(1, int(per_wave * fb))
        cases.append({"grid_a": ga, "grid_b": gb, "span_us": span(ga, gb)})
    return {"block_us": block_us, "cases": cases, "per_wave": per_wave}


def bench_bandwidth(g: _Gpu, mib: int = 512) -> dict[str, Any]:
    torch = g.torch
    n = mib * 2**20 // 4
    xs = [torch.empty(n, device=g.dev) for _ in range(4)]
    a, b = torch.cuda.Stream(g.dev), torch.cuda.Stream(g.dev)

    def copy_pair() -> None:
        with torch.cuda.stream(a):
            xs[1].copy_(xs[0])
        with torch.cuda.stream(b):
            xs[3].copy_(xs[2])

    alone, pair = [], []
    for _ in range(g.repeats):
        g.sync()
        e0, e1 = g.event(), g.event()
        e0.record()
        xs[1].copy_(xs[0])
        e1.record()
        g.sync()
        alone.append(e0.elapsed_time(e1) * 1e3)
        pair.append(_pair_span_us(g, a, b, copy_pair))
    return {"bytes": 2 * n * 4, "alone_us": alone, "pair_us": pair}


_CONN_CHILD = r"""
import json, os, statistics, sys, torch
dev = torch.device("cuda", int(sys.argv[1])); torch.cuda.set_device(dev)
streams, per, cyc_us, reps = (int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]))
ss = [torch.cuda.Stream(dev) for _ in range(streams)]
e = lambda: torch.cuda.Event(enable_timing=True)
out = []
for _ in range(reps):
    torch.cuda.synchronize(); e0 = e(); e0.record(); ends = []
    for s in ss: s.wait_event(e0)
    for s in ss:
        with torch.cuda.stream(s):
            for _ in range(per): torch.cuda._sleep(int(cyc_us))
        x = e(); x.record(s); ends.append(x)
    torch.cuda.synchronize()
    out.append(max(e0.elapsed_time(x) for x in ends) * 1e3)
print(json.dumps(statistics.median(out)))
"""


def bench_connections(
    g: _Gpu, streams: int = 8, per_stream: int = 2, values: Sequence[int] = (1, 2, 4, 8, 32)
) -> dict[str, Any]:
    """One child process per CUDA_DEVICE_MAX_CONNECTIONS value in ``values``: it is read
    once, when the CUDA context is created."""
    cyc = g.cycles_per_us() * 50
    block_us = 50.0
    spans = {}
    for q in values:
        env = dict(os.environ, CUDA_DEVICE_MAX_CONNECTIONS=str(q))
        args = [str(g.dev.index), str(streams), str(per_stream), str(cyc), str(g.repeats)]
        try:
            res = subprocess.run(
                [sys.executable, "-c", _CONN_CHILD, *args],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
                check=True,
            )
        except (subprocess.SubprocessError, OSError) as e:
            raise CalibrationError(
                f"connections benchmark child (connections={q}) failed: {e}"
            ) from None
        spans[q] = json.loads(res.stdout.strip().splitlines()[-1])
    return {"streams": streams, "per_stream": per_stream, "block_us": block_us, "spans": spans}


_RUNNERS: dict[str, Callable[[_Gpu], dict[str, Any]]] = {
    "launch": bench_launch,
    "events": bench_events,
    "waves": bench_waves,
    "overlap": bench_overlap,
    "bandwidth": bench_bandwidth,
    "connections": bench_connections,
}


def _write_samples(path: Path, raw: Mapping[str, Any]) -> None:
    """A CSV of every list-valued raw field (one column each), for spreadsheets."""
    cols = {
        k: v
        for k, v in raw.items()
        if isinstance(v, list) and all(isinstance(x, int | float) for x in v)
    }
    if not cols:
        return
    n = max(len(v) for v in cols.values())
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(list(cols))
        for i in range(n):
            w.writerow([v[i] if i < len(v) else "" for v in cols.values()])


def run(
    out_dir: str | Path,
    device: int = 0,
    benches: Sequence[str] = BENCHES,
    repeats: int = 20,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Path]:
    """Run the benchmarks not yet in ``out_dir``; return the files, new and old."""
    unknown = [b for b in benches if b not in _RUNNERS]
    if unknown:
        raise CalibrationError(
            f"unknown benchmark(s) {', '.join(unknown)} (known: {', '.join(BENCHES)})"
        )
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    g = _Gpu(device, repeats)
    files = {}
    for i, name in enumerate(benches):
        p = d / f"{name}.json"
        files[name] = p
        if progress:
            progress(name, i, len(benches))
        if p.exists():
            continue  # resumable: a finished benchmark is kept
        raw = _RUNNERS[name](g)
        data = {
            "bench": name,
            "device": g.props.name,
            "torch": g.torch.__version__,
            "cuda": g.torch.version.cuda,
            "raw": raw,
        }
        tmp = p.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        tmp.replace(p)  # a killed run leaves no half-written result behind
        _write_samples(d / f"{name}.csv", raw)
    return files
