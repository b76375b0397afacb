"""The handful of device primitives the measurement plan needs, and the real GPU's.

:class:`Device` is what :mod:`calibrate.plan` measures through: read the device
(``probe``), run one microbenchmark (``microbench``), time kernels alone or together on
streams (``time_kernels``, ``kernel_configs``), time one op and read its kernels
(``time_op``, ``op_kernels``), replay a StreamProgram (``time_program``, ``trace_program``).
Every primitive returns plain data; the plan writes, resumes and analyses.

:class:`TorchDevice` implements them on a CUDA GPU with PyTorch (and CuPy for the raw
kernels), reusing :mod:`calibrate.probe`, :mod:`calibrate.microbench`,
:mod:`calibrate.profile` and :mod:`calibrate.executor`. :class:`calibrate.fakedevice.FakeDevice`
implements them on the CPU from the simulator, for the dry run. torch is imported only
when a TorchDevice is made.
"""

from __future__ import annotations

import gzip
import json
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from calibrate.corun import FMA_CHAINS, THREADS, CoKernel
from calibrate.errors import CalibrationError, NoGPUError, require_cuda
from calibrate.profile import kernel_config
from simgpu.graph import OpGraph
from simgpu.program import StreamProgram

KernelConfig = dict[str, Any]  # {"name", "grid", "threads", "regs", "smem", "duration_us"}
RANGE = "simgpu#"  # the profiler ranges that delimit one call each


class Device(Protocol):
    """What the plan measures through. ``now`` is the plan's clock (seconds)."""

    kind: str  # "cuda" | "fake"

    def now(self) -> float: ...

    def info(self) -> dict[str, Any]: ...

    def probe(self) -> dict[str, Any]: ...

    def microbench(self, name: str, repeats: int) -> dict[str, Any]: ...

    def time_kernels(
        self, kernels: Sequence[CoKernel], repeats: int, warmup: int = 3
    ) -> list[list[float]]: ...

    def kernel_configs(self, kernels: Sequence[CoKernel]) -> dict[str, list[KernelConfig]]: ...

    def time_op(self, graph: OpGraph, op: str, warmup: int, repeats: int) -> list[float]: ...

    def op_kernels(self, graph: OpGraph, ops: Sequence[str]) -> dict[str, list[KernelConfig]]: ...

    def time_program(
        self, program: StreamProgram, graph: OpGraph, warmup: int, repeats: int
    ) -> list[float]: ...

    def trace_program(self, program: StreamProgram, graph: OpGraph, path: Path) -> Path: ...

    def release(self) -> None: ...

    # optional (the plan measures no memory on a device without them):
    # op_memory(graph, op) -> calibrate.profile.memory_entry's dict;
    # program_memory(program, graph) -> {"peak_memory_bytes": int}


# --- raw kernels (CuPy) -----------------------------------------------------------------

FMA_SRC = r"""
extern "C" __global__ void fma_loop(float* out, int iters) {
    float b = 1.0000001f, c = 1e-7f;
    float x0 = threadIdx.x * 1e-6f, x1 = x0 + 1.f, x2 = x0 + 2.f, x3 = x0 + 3.f;
    float x4 = x0 + 4.f, x5 = x0 + 5.f, x6 = x0 + 6.f, x7 = x0 + 7.f;
    for (int i = 0; i < iters; ++i) {
        x0 = fmaf(x0, b, c); x1 = fmaf(x1, b, c); x2 = fmaf(x2, b, c); x3 = fmaf(x3, b, c);
        x4 = fmaf(x4, b, c); x5 = fmaf(x5, b, c); x6 = fmaf(x6, b, c); x7 = fmaf(x7, b, c);
    }
    float s = x0 + x1 + x2 + x3 + x4 + x5 + x6 + x7;
    if (s == -1.f) out[blockIdx.x * blockDim.x + threadIdx.x] = s;  // never: keeps the loop
}
"""
COPY_SRC = r"""
extern "C" __global__ void copy4(const float4* __restrict__ src, float4* __restrict__ dst,
                                 long long n) {
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        dst[i] = src[i];
}
"""
assert FMA_SRC.count("fmaf(") == FMA_CHAINS


def _one_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return f"{type(e).__name__}: {s[0]}" if s else type(e).__name__


class TorchDevice:
    """A CUDA GPU through PyTorch (and CuPy for the raw co-run kernels)."""

    kind = "cuda"

    def __init__(self, index: int = 0) -> None:
        torch = self.torch = require_cuda("the measurement plan")
        if not 0 <= index < torch.cuda.device_count():
            raise NoGPUError(
                f"no CUDA device {index} (this machine has {torch.cuda.device_count()})"
            )
        self.index = index
        self.dev = torch.device("cuda", index)
        torch.cuda.set_device(self.dev)
        torch.cuda.init()
        self._mb: Any = None
        self._cp: Any = None
        self._raw: dict[str, Any] = {}
        self._launchers: dict[tuple[str, int], Callable[[Any], None]] = {}
        self._streams: list[Any] = []
        self._cyc: float | None = None
        self._ops: dict[tuple[int, str], Callable[[], Any]] = {}
        self._last: tuple[StreamProgram, OpGraph, Any] | None = None

    # --- basics ----------------------------------------------------------------------

    def now(self) -> float:
        return time.monotonic()

    def info(self) -> dict[str, Any]:
        torch = self.torch
        out: dict[str, Any] = {
            "kind": self.kind,
            "device": torch.cuda.get_device_name(self.index),
            "index": self.index,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "python": platform.python_version(),
        }
        try:
            import cupy

            out["cupy"] = cupy.__version__
        except Exception as e:  # CuPy is optional: the raw kernels need it
            out["cupy"] = f"unavailable ({_one_line(e)})"
        return out

    def probe(self) -> dict[str, Any]:
        from calibrate.probe import probe

        return probe(self.index)

    def sync(self) -> None:
        self.torch.cuda.synchronize(self.dev)

    def release(self) -> None:
        """Drop cached op closures and tensors (between models)."""
        self._ops.clear()
        self._launchers.clear()
        self._last = None
        self.torch.cuda.empty_cache()

    # --- microbenchmarks ---------------------------------------------------------------

    def _gpu(self, repeats: int) -> Any:
        from calibrate.microbench import _Gpu

        if self._mb is None:
            self._mb = _Gpu(self.index, repeats)
        self._mb.repeats = repeats
        return self._mb

    def microbench(self, name: str, repeats: int) -> dict[str, Any]:
        from calibrate import microbench as mb

        g = self._gpu(repeats)
        if name == "connections":
            return mb.bench_connections(g, values=(1, 8))
        if name not in mb._RUNNERS:
            raise CalibrationError(f"unknown microbenchmark '{name}'")
        return mb._RUNNERS[name](g)

    # --- co-run kernels ------------------------------------------------------------------

    def _cycles_per_us(self) -> float:
        if self._cyc is None:
            self._cyc = self._gpu(3).cycles_per_us()
        return self._cyc

    def _cupy(self) -> Any:
        if self._cp is None:
            try:
                import cupy as cp
            except ImportError:
                raise CalibrationError("the raw co-run kernels need CuPy") from None
            cp.cuda.Device(self.index).use()
            self._raw = {
                "fma32": cp.RawKernel(FMA_SRC, "fma_loop"),
                "copy": cp.RawKernel(COPY_SRC, "copy4"),
            }
            self._cp = cp
        return self._cp

    def _stream(self, i: int) -> Any:
        while len(self._streams) <= i:
            self._streams.append(self.torch.cuda.Stream(self.dev))
        return self._streams[i]

    def _launcher(self, ck: CoKernel, slot: int) -> Callable[[Any], None]:
        """A function that launches ``ck`` on a torch stream, with buffers of its own
        for each ``slot`` (two copies of one kernel in a pair touch different memory)."""
        key = (ck.name, slot)
        if key in self._launchers:
            return self._launchers[key]
        torch = self.torch
        if ck.kind == "gemm_tc":
            a = torch.randn(ck.size, ck.k, device=self.dev, dtype=torch.float16)
            b = torch.randn(ck.k, ck.size, device=self.dev, dtype=torch.float16)
            c = torch.empty(ck.size, ck.size, device=self.dev, dtype=torch.float16)

            def fn(s: Any) -> None:
                with torch.cuda.stream(s):
                    torch.mm(a, b, out=c)

        elif ck.kind in ("fma32", "copy"):
            cp = self._cupy()
            kern = self._raw[ck.kind]
            if ck.kind == "fma32":
                out = cp.empty(ck.size * THREADS, dtype=cp.float32)
                args: tuple[Any, ...] = (out, cp.int32(ck.iters))
            else:
                n4 = ck.mib * 2**20 // 16
                src = cp.ones(n4 * 4, dtype=cp.float32)
                dst = cp.empty(n4 * 4, dtype=cp.float32)
                args = (src, dst, cp.int64(n4))
            grid = (ck.size,)

            def fn(s: Any) -> None:
                with cp.cuda.ExternalStream(s.cuda_stream):
                    kern(grid, (THREADS,), args)

        else:
            raise CalibrationError(f"co-run kernel {ck.name}: unknown kind {ck.kind!r}")
        self.sync()
        self._launchers[key] = fn
        return fn

    def time_kernels(
        self, kernels: Sequence[CoKernel], repeats: int, warmup: int = 3
    ) -> list[list[float]]:
        """Each kernel on its own stream from one start event (the first stream is held
        by a ~30 us spin first, so every launch is queued before the start): per repeat,
        each kernel's end in us after the start."""
        torch = self.torch
        fns = [self._launcher(k, i) for i, k in enumerate(kernels)]
        streams = [self._stream(i) for i in range(len(kernels))]
        hold = int(self._cycles_per_us() * 30)
        out = []
        for r in range(warmup + repeats):
            self.sync()
            e0 = torch.cuda.Event(enable_timing=True)
            with torch.cuda.stream(streams[0]):
                torch.cuda._sleep(hold)
            e0.record(streams[0])
            for s in streams[1:]:
                s.wait_event(e0)
            ends = []
            for fn, s in zip(fns, streams, strict=True):
                fn(s)
                e = torch.cuda.Event(enable_timing=True)
                e.record(s)
                ends.append(e)
            self.sync()
            if r >= warmup:
                out.append([e0.elapsed_time(e) * 1e3 for e in ends])
        return out

    def kernel_configs(self, kernels: Sequence[CoKernel]) -> dict[str, list[KernelConfig]]:
        s = self._stream(0)

        def call(fn: Callable[[Any], None]) -> Callable[[], None]:
            return lambda: fn(s)

        return self._profile_calls({k.name: call(self._launcher(k, 0)) for k in kernels})

    # --- per-op profiling -----------------------------------------------------------------

    def _op_fn(self, graph: OpGraph, op: str) -> Callable[[], Any]:
        from calibrate.profile import build, op_call

        key = (id(graph), op)
        if key not in self._ops:
            call = op_call(graph, op)
            if call is None:
                raise CalibrationError(f"op '{op}' has no device work")
            self._ops[key] = build(call, self.torch, self.dev)
        return self._ops[key]

    def time_op(self, graph: OpGraph, op: str, warmup: int, repeats: int) -> list[float]:
        from calibrate.profile import event_samples

        return event_samples(self.torch, self._op_fn(graph, op), self.sync, warmup, repeats)

    def op_kernels(self, graph: OpGraph, ops: Sequence[str]) -> dict[str, list[KernelConfig]]:
        return self._profile_calls({op: self._op_fn(graph, op) for op in ops})

    def op_memory(self, graph: OpGraph, op: str) -> dict[str, int]:
        """One call's peak allocation over its inputs, its output and its workspace
        (:func:`calibrate.profile.op_peak_memory`)."""
        from calibrate.profile import op_peak_memory

        return op_peak_memory(self.torch, self._op_fn(graph, op), self.dev)

    def _profile_calls(self, fns: Mapping[str, Callable[[], Any]]) -> dict[str, list[KernelConfig]]:
        """The kernels each call launches, from one profiler session: each call runs
        once inside ``record_function("simgpu#i")`` followed by a device sync, and a
        kernel belongs to the range its launch call falls in. If the trace has no such
        ranges, each call gets a session of its own."""
        from torch.profiler import ProfilerActivity, profile, record_function

        torch = self.torch
        names = list(fns)
        for fn in fns.values():  # warm: lazy library initialisation launches no kernel here
            fn()
        self.sync()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for i, n in enumerate(names):
                with record_function(f"{RANGE}{i}"):
                    fns[n]()
                    torch.cuda.synchronize(self.dev)
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "calls.json"
            prof.export_chrome_trace(str(p))
            data = json.loads(p.read_text())
        out = kernels_by_range(data, names)
        return out if out is not None else self._profile_each(fns)

    def _profile_each(self, fns: Mapping[str, Callable[[], Any]]) -> dict[str, list[KernelConfig]]:
        from calibrate.profile import _kernels_of_one_run

        return {n: _kernels_of_one_run(self.torch, fn, self.dev) for n, fn in fns.items()}

    # --- schedules ------------------------------------------------------------------------

    def time_program(
        self, program: StreamProgram, graph: OpGraph, warmup: int, repeats: int
    ) -> list[float]:
        from calibrate.executor import Executor

        ex = Executor(program, graph, self.index)
        self._last = (program, graph, ex)  # program_memory measures the same run next
        if program.graph_mode:
            return ex.time_graph(warmup, repeats)
        return ex.time_eager(warmup, repeats)

    def program_memory(self, program: StreamProgram, graph: OpGraph) -> dict[str, int]:
        """Peak bytes one run allocates beyond the ops' inputs and weights
        (:meth:`calibrate.executor.Executor.peak_memory`)."""
        from calibrate.executor import Executor

        last = self._last
        if last is not None and last[0] is program and last[1] is graph:
            ex = last[2]  # the executor time_program made: its tensors, its graph capture
        else:
            ex = Executor(program, graph, self.index)
        return {"peak_memory_bytes": ex.peak_memory()}

    def trace_program(self, program: StreamProgram, graph: OpGraph, path: Path) -> Path:
        """A Kineto trace of two eager runs of ``program`` (after warm-up), gzipped."""
        from torch.profiler import ProfilerActivity, profile

        from calibrate.executor import Executor

        ex = Executor(program, graph, self.index)
        ex.time_eager(warmup=3, repeats=1)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(2):
                ex.issue()
                self.sync()
        with tempfile.TemporaryDirectory() as d:
            raw = Path(d) / "trace.json"
            prof.export_chrome_trace(str(raw))
            return gzip_file(raw, path)


def kernels_by_range(data: Mapping[str, Any], names: Sequence[str]) -> dict[str, list[KernelConfig]] | None:  # fmt: skip
    """Kernels of a profiler trace by the ``record_function("simgpu#i")`` range they were
    launched in (``names[i]``); None when the trace has no such range.

    A kernel is placed by its launch call's start, or, when the trace has no launch call
    for it (a driver-API launch it did not record), by its own start: each range ends
    with a device sync, so its kernels ran inside it.
    """
    from calibrate.kineto import parse_trace

    ranges = sorted(
        (float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0)), int(e["name"][len(RANGE) :]))
        for e in data.get("traceEvents", [])
        if isinstance(e, dict)
        and e.get("cat") == "user_annotation"
        and str(e.get("name", "")).startswith(RANGE)
        and str(e["name"][len(RANGE) :]).isdigit()
        and int(e["name"][len(RANGE) :]) < len(names)
    )
    if not ranges:
        return None
    trace = parse_trace(data, source="profile")
    out: dict[str, list[KernelConfig]] = {n: [] for n in names}
    for a in trace.activities:
        if a.kind != "kernel":
            continue
        call = trace.launches.get(a.correlation)
        t = call.ts if call is not None else a.ts
        for t0, t1, i in ranges:
            if t0 <= t <= t1:
                out[names[i]].append(kernel_config(a))
                break
    return out


def gzip_file(src: Path, dst: Path) -> Path:
    """``src`` gzipped to ``dst`` (written to a temporary name, then renamed)."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    with open(src, "rb") as f, gzip.open(tmp, "wb", compresslevel=6) as g:
        shutil.copyfileobj(f, g)
    tmp.replace(dst)
    return dst
