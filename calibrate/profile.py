"""Per-op profiling of a model on a real GPU -> a measured kernel table.

Every distinct op (by :func:`simgpu.kernels.signature`) is built as the PyTorch call
that computes it, warmed up, and timed alone: the median of many CUDA-event timings,
plus one profiled run whose Kineto trace gives each launched kernel's name, grid,
block, registers, shared memory and duration. The table maps signature -> kernels in
the format ``GPUSpec.kernel_table`` and ``simgpu.kernels`` read.

Each op's memory is measured too (:func:`op_peak_memory`): the growth of
``torch.cuda.max_memory_allocated`` over one call, its output's storage and, by
difference, the transient bytes it allocates (cuDNN/cuBLAS workspace, a fused
activation's intermediate). The table file keeps them per op and, under
``memory_ops``, in the form a GPU JSON's ``memory.ops`` reads
(:func:`memory_ops_from_profiles`), so `simgpu calibrate fit` writes them into the
calibration beside the kernel table.

The op -> call mapping is data (:class:`TorchCall`), so it is tested without torch;
:func:`build` turns it into a closure over real tensors.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from calibrate.errors import CalibrationError, require_cuda
from simgpu.allocator import AllocatorConfig, check_memory_json
from simgpu.errors import SpecError
from simgpu.graph import OpGraph
from simgpu.kernels import signature
from simgpu.ops import kind_of

TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "fp64": "float64"}
UNARY = {"relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh", "gelu": "gelu", "silu": "silu"}
ACTIVATIONS = {**UNARY, "relu6": "relu6"}  # fused activations (torch.nn.functional names)


@dataclass(frozen=True)
class TorchCall:
    """One op as a PyTorch call: ``fn`` names a torch.nn.functional (or torch) function
    applied to ``inputs`` (tensor shapes) and ``params`` (weight shapes), with
    ``kwargs``; ``then`` is a fused activation applied after it."""

    fn: str
    inputs: tuple[tuple[int, ...], ...]
    dtype: str
    params: dict[str, tuple[int, ...]] = field(default_factory=dict)
    kwargs: dict[str, Any] = field(default_factory=dict)
    then: str | None = None


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    a, b = v
    return (int(a), int(b))


def op_call(graph: OpGraph, name: str) -> TorchCall | None:
    """The PyTorch call that computes op ``name``; None for ops without device work.

    Raises CalibrationError for an op this mapping cannot express (named)."""
    op = graph[name]
    if kind_of(op).view or (op.kind == "slice" and op.attrs.get("view") is True):
        return None
    if op.dtype not in TORCH_DTYPES:
        raise CalibrationError(f"op '{name}': dtype {op.dtype} has no PyTorch kernel to profile")
    ins = tuple(tuple(s) for s in graph.input_shapes(name))
    a = op.attrs
    act = a.get("activation")
    if act is not None and act not in ACTIVATIONS:
        raise CalibrationError(f"op '{name}': fused activation {act!r} not mapped")
    act = ACTIVATIONS.get(act) if act is not None else None
    dt = op.dtype
    k = op.kind
    if k == "conv":
        cin, cout, g = ins[0][1], int(a["out_channels"]), int(a.get("groups", 1))
        kh, kw = _pair(a["kernel"])
        params = {"weight": (cout, cin // g, kh, kw)}
        if a.get("bias") or a.get("folded_bn"):
            params["bias"] = (cout,)
        kw_ = {
            "stride": _pair(a.get("stride", 1)),
            "padding": _pair(a.get("padding", 0)),
            "dilation": _pair(a.get("dilation", 1)),
            "groups": g,
        }
        return TorchCall("conv2d", ins, dt, params, kw_, act)
    if k == "conv_transpose":
        cin, cout, g = ins[0][1], int(a["out_channels"]), int(a.get("groups", 1))
        kh, kw = _pair(a["kernel"])
        params = {"weight": (cin, cout // g, kh, kw)}
        if a.get("bias"):
            params["bias"] = (cout,)
        kw_ = {
            "stride": _pair(a.get("stride", 1)),
            "padding": _pair(a.get("padding", 0)),
            "output_padding": _pair(a.get("output_padding", 0)),
            "dilation": _pair(a.get("dilation", 1)),
            "groups": g,
        }
        return TorchCall("conv_transpose2d", ins, dt, params, kw_, act)
    if k == "linear":
        out = int(a["out_features"])
        params = {"weight": (out, ins[0][-1])}
        if a.get("bias", True):
            params["bias"] = (out,)
        return TorchCall("linear", ins, dt, params, {}, act)
    if k == "matmul":
        return TorchCall("matmul", ins, dt)
    if k == "pool":
        fn = "max_pool2d" if a.get("pool_type", "max") == "max" else "avg_pool2d"
        kw_ = {
            "kernel_size": _pair(a["kernel"]),
            "stride": _pair(a.get("stride", a["kernel"])),
            "padding": _pair(a.get("padding", 0)),
            "ceil_mode": bool(a.get("ceil_mode", False)),
        }
        return TorchCall(fn, ins, dt, {}, kw_)
    if k == "global_pool":
        fn = "adaptive_max_pool2d" if a.get("pool_type") == "max" else "adaptive_avg_pool2d"
        return TorchCall(fn, ins, dt, {}, {"output_size": 1})
    if k == "concat":
        return TorchCall("cat", ins, dt, {}, {"dim": int(a.get("axis", 1))})
    if k == "slice":
        ax = int(a.get("axis", 1))
        b, e = int(a["begin"]), int(a["end"])
        return TorchCall("narrow_copy", ins, dt, {}, {"dim": ax, "start": b, "length": e - b})
    if k == "transpose":
        return TorchCall("permute_copy", ins, dt, {}, {"dims": tuple(a["perm"])})
    if k in ("add", "mul"):
        return TorchCall(k, ins, dt)
    if k in UNARY:
        return TorchCall(UNARY[k], ins, dt)
    if k == "clip":
        return TorchCall("clamp", ins, dt, {}, {"min": a.get("min"), "max": a.get("max")})
    if k == "eltwise":
        const = tuple(int(d) for d in a.get("const_shape", ()))
        return TorchCall("mul", ins, dt, {"const": const} if const else {}, {})
    if k == "batchnorm":
        c = op.output_shape[int(a.get("axis", 1))]
        params = {n: (c,) for n in ("running_mean", "running_var", "weight", "bias")}
        return TorchCall("batch_norm", ins, dt, params, {"training": False})
    if k == "layernorm":
        n = op.output_shape[-1]
        return TorchCall(
            "layer_norm", ins, dt, {"weight": (n,), "bias": (n,)}, {"normalized_shape": (n,)}
        )
    if k == "softmax":
        return TorchCall("softmax", ins, dt, {}, {"dim": int(a.get("axis", -1))})
    if k == "embedding":
        vocab, dim = int(a["num_embeddings"]), int(a["embedding_dim"])
        return TorchCall("embedding", ins, dt, {"weight": (vocab, dim)}, {"num_embeddings": vocab})
    raise CalibrationError(f"op '{name}': kind {k!r} has no PyTorch mapping for profiling")


def build(call: TorchCall, torch: Any, device: Any) -> Callable[[], Any]:
    """A closure that runs ``call`` on fresh tensors of the right shapes on ``device``."""
    F = torch.nn.functional
    dt = getattr(torch, TORCH_DTYPES[call.dtype])
    gen = torch.Generator(device="cpu").manual_seed(0)

    def rand(shape: Sequence[int]) -> Any:
        return torch.randn(*shape, generator=gen, dtype=torch.float32).to(device=device, dtype=dt)

    if call.fn == "embedding":
        vocab = call.kwargs["num_embeddings"]
        idx = torch.randint(0, vocab, call.inputs[0], generator=gen).to(device)
        w = rand(call.params["weight"])
        return lambda: F.embedding(idx, w)
    xs = [rand(s) for s in call.inputs]
    p = {k: rand(s) for k, s in call.params.items()}
    if call.fn == "batch_norm":
        p["running_var"] = p["running_var"].abs() + 1
    kw = dict(call.kwargs)
    then = getattr(F, call.then) if call.then else None
    fn = call.fn
    if fn in ("conv2d", "conv_transpose2d", "linear"):
        f = getattr(F, fn)

        def run() -> Any:
            y = f(xs[0], p["weight"], p.get("bias"), **kw)
            return then(y) if then else y

        return run
    if fn == "matmul":
        return lambda: torch.matmul(xs[0], xs[1])
    if fn in ("max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d"):
        f = getattr(F, fn)
        return lambda: f(xs[0], **kw)
    if fn == "cat":
        return lambda: torch.cat(xs, dim=kw["dim"])
    if fn == "narrow_copy":
        return lambda: xs[0].narrow(kw["dim"], kw["start"], kw["length"]).contiguous()
    if fn == "permute_copy":
        return lambda: xs[0].permute(*kw["dims"]).contiguous()
    if fn in ("add", "mul"):
        if "const" in p:
            c = p["const"]
            return lambda: xs[0] * c

        def reduce_() -> Any:
            y = xs[0]
            for x in xs[1:]:
                y = y + x if fn == "add" else y * x
            return y

        return reduce_
    if fn in UNARY.values():
        f = getattr(F, fn)
        return lambda: f(xs[0])
    if fn == "clamp":
        return lambda: torch.clamp(xs[0], min=kw.get("min"), max=kw.get("max"))
    if fn == "batch_norm":
        return lambda: F.batch_norm(
            xs[0], p["running_mean"], p["running_var"], p["weight"], p["bias"], training=False
        )
    if fn == "layer_norm":
        return lambda: F.layer_norm(xs[0], kw["normalized_shape"], p["weight"], p["bias"])
    if fn == "softmax":
        return lambda: F.softmax(xs[0], dim=kw["dim"])
    raise CalibrationError(f"no builder for PyTorch call {fn!r}")


# --- results ---------------------------------------------------------------------------


@dataclass(frozen=True)
class OpProfile:
    """One distinct op measured alone."""

    signature: str
    op: str  # the first op of the graph with this signature
    median_us: float  # CUDA-event time of the whole op (all its kernels)
    samples: int
    kernels: tuple[
        dict[str, Any], ...
    ]  # {"name", "grid", "threads", "regs", "smem", "duration_us"}
    # measured memory of one call (:func:`op_peak_memory`); None where not measured
    peak_memory_bytes: int | None = None
    output_bytes: int | None = None

    @property
    def workspace_bytes(self) -> int | None:
        """Bytes the call held beyond its output at its peak (see :func:`memory_entry`)."""
        if self.peak_memory_bytes is None or self.output_bytes is None:
            return None
        return memory_entry(self.peak_memory_bytes, self.output_bytes)["workspace_bytes"]


def memory_entry(peak_memory_bytes: int, output_bytes: int) -> dict[str, int]:
    """One op's measured memory: ``peak_memory_bytes`` (max allocated during one call
    minus allocated before it: the call's own peak over its inputs and weights),
    ``output_bytes`` (the returned tensor's storage) and ``workspace_bytes``: the peak
    less the output's 512 B block, what the call held only while it ran.

    Raises CalibrationError for a negative or non-integer figure."""
    for k, v in (("peak_memory_bytes", peak_memory_bytes), ("output_bytes", output_bytes)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise CalibrationError(f"{k} must be an integer >= 0, got {v!r}")
    block = AllocatorConfig().round(output_bytes)
    return {
        "peak_memory_bytes": peak_memory_bytes,
        "output_bytes": output_bytes,
        "workspace_bytes": max(0, peak_memory_bytes - block),
    }


def memory_ops_from_profiles(profiles: Sequence[OpProfile]) -> dict[str, dict[str, int]]:
    """signature -> ``{"output_bytes", "workspace_bytes"}`` of every profile whose memory
    was measured: the ``memory.ops`` object of a GPU JSON (:mod:`simgpu.allocator`)."""
    out = {}
    for p in profiles:
        if p.peak_memory_bytes is None or p.output_bytes is None:
            continue
        e = memory_entry(p.peak_memory_bytes, p.output_bytes)
        out[p.signature] = {"output_bytes": e["output_bytes"], "workspace_bytes": e["workspace_bytes"]}  # fmt: skip
    return out


def table_from_profiles(profiles: Sequence[OpProfile]) -> dict[str, list[dict[str, Any]]]:
    """signature -> kernel entries. An op whose profiler run showed no kernel (it ran on
    the host, or the profiler missed it) is refused, not written with no kernels."""
    table: dict[str, list[dict[str, Any]]] = {}
    for p in profiles:
        if not p.kernels:
            raise CalibrationError(f"op '{p.op}': the profiler recorded no kernel")
        entries = []
        for k in p.kernels:
            e = {
                "name": str(k["name"]),
                "grid": int(k["grid"]),
                "threads": int(k["threads"]),
                "regs": max(1, int(k.get("regs", 32))),
                "smem": int(k.get("smem", 0)),
                "duration_us": float(k["duration_us"]),
            }
            if e["grid"] < 1 or not e["duration_us"] > 0:
                raise CalibrationError(
                    f"op '{p.op}': kernel entry {e} needs grid >= 1, duration > 0"
                )
            entries.append(e)
        table[p.signature] = entries
    return table


def write_table(
    path: str | Path, profiles: Sequence[OpProfile], meta: Mapping[str, Any] | None = None
) -> Path:
    """A kernel-table file: ``{"format": "simgpu.kernel_table", "kernel_table": {...},
    "ops": [...per-op medians...], ...meta}``. Where the ops' memory was measured, each
    "ops" entry has its :func:`memory_entry` fields and ``memory_ops`` holds them as a
    GPU JSON's ``memory.ops`` (keyed by signature)."""
    ops = []
    for p in profiles:
        e: dict[str, Any] = {"op": p.op, "signature": p.signature, "median_us": p.median_us,
                             "samples": p.samples}  # fmt: skip
        if p.peak_memory_bytes is not None and p.output_bytes is not None:
            e.update(memory_entry(p.peak_memory_bytes, p.output_bytes))
        ops.append(e)
    data = {
        "format": "simgpu.kernel_table",
        "version": 1,
        **dict(meta or {}),
        "kernel_table": table_from_profiles(profiles),
        "ops": ops,
    }
    mem = memory_ops_from_profiles(profiles)
    if mem:
        data["memory_ops"] = mem
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(data, indent=1) + "\n")
    except OSError as e:
        raise CalibrationError(f"cannot write {p}: {e.strerror or e}") from None
    return p


def read_table(path: str | Path) -> dict[str, list[dict[str, Any]]]:
    from simgpu.graph import read_json

    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("kernel_table"), dict):
        raise CalibrationError(f'{path}: not a kernel table (no "kernel_table" object)')
    return data["kernel_table"]


def read_memory_ops(path: str | Path) -> dict[str, dict[str, int]]:
    """The measured ``memory_ops`` of a kernel-table file ({} for a file from before
    memory was measured), checked as a GPU JSON's ``memory.ops`` is."""
    from simgpu.graph import read_json

    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("kernel_table"), dict):
        raise CalibrationError(f'{path}: not a kernel table (no "kernel_table" object)')
    ops = data.get("memory_ops", {})
    try:
        check_memory_json({"ops": ops}, f"{path}: memory_ops")
    except SpecError as e:
        raise CalibrationError(str(e).replace("memory_ops.ops", "memory_ops")) from None
    return {str(k): dict(v) for k, v in ops.items()}


def add_memory_ops(gpu: dict[str, Any], ops: Mapping[str, Mapping[str, int]]) -> dict[str, Any]:
    """``gpu`` (a GPU JSON object) with ``ops`` merged into its ``memory.ops``: measured
    sizes win over what it had for the same key; its allocator sizes are kept."""
    if not ops:
        return gpu
    memory = dict(gpu.get("memory") or {})
    merged = dict(memory.get("ops") or {})
    merged.update({k: dict(v) for k, v in ops.items()})
    memory["ops"] = merged
    return {**gpu, "memory": memory}


# --- measurement (GPU) ----------------------------------------------------------------


def _kernels_of_one_run(torch: Any, fn: Callable[[], Any], device: Any) -> list[dict[str, Any]]:
    """Launch configurations and durations of the kernels one call launches (Kineto)."""
    from torch.profiler import ProfilerActivity, profile

    from calibrate.kineto import load_trace

    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize(device)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "op.json"
        prof.export_chrome_trace(str(path))
        try:
            trace = load_trace(path)
        except CalibrationError:
            return []
        except Exception as e:  # a trace Kineto wrote but we cannot read is a bug to report
            raise CalibrationError(f"cannot read the profiler trace: {e}") from None
    return [kernel_config(a) for a in trace.activities if a.kind == "kernel"]


def kernel_config(a: Any) -> dict[str, Any]:
    """A kernel table entry from a profiled kernel activity (:mod:`calibrate.kineto`)."""
    return {
        "name": a.name[:200],
        "grid": a.blocks,
        "threads": a.threads,
        "regs": a.regs,
        "smem": a.smem,
        "duration_us": a.dur,
    }


def _storage_bytes(y: Any) -> int:
    """Bytes of the storage a call returned (tensors in a tuple or list summed)."""
    if isinstance(y, list | tuple):
        return sum(_storage_bytes(x) for x in y)
    if y is None:
        return 0
    return int(y.untyped_storage().nbytes())


def op_peak_memory(torch: Any, fn: Callable[[], Any], device: Any) -> dict[str, int]:
    """The memory one call of ``fn`` allocates on ``device``, as :func:`memory_entry`.

    ``fn``'s inputs and weights exist before the call, so they are not counted: the
    peak is ``torch.cuda.max_memory_allocated`` during the call (peak stats reset just
    before it) less ``torch.cuda.memory_allocated`` just before it. One untimed call
    first, so that what a library allocates once and keeps (cuBLAS's per-stream
    workspace, cuDNN's plans) is in the "before", not in the op's figure. Sizes are the
    caching allocator's blocks (512 B multiples; a large block left unsplit counts
    whole, less than 1 MiB more)."""
    fn()
    torch.cuda.synchronize(device)
    before = int(torch.cuda.memory_allocated(device))
    torch.cuda.reset_peak_memory_stats(device)
    y = fn()
    torch.cuda.synchronize(device)
    peak = int(torch.cuda.max_memory_allocated(device))
    out = _storage_bytes(y)
    del y
    return memory_entry(max(0, peak - before), out)


def profile_graph(
    graph: OpGraph,
    device: int = 0,
    warmup: int = 10,
    repeats: int = 50,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[OpProfile]:
    """Measure every distinct op of ``graph`` alone on CUDA device ``device``: its time,
    its kernels and its memory (:func:`op_peak_memory`)."""
    torch = require_cuda("per-op profiling")
    dev = torch.device("cuda", device)
    seen: dict[str, str] = {}
    for name in graph.topo_order:
        call = op_call(graph, name)
        if call is not None:
            seen.setdefault(signature(graph, name), name)
    out = []
    for i, (sig, name) in enumerate(seen.items()):
        if progress:
            progress(name, i, len(seen))
        fn = build(op_call(graph, name), torch, dev)  # type: ignore[arg-type]
        samples = event_samples(torch, fn, lambda: torch.cuda.synchronize(dev), warmup, repeats)
        kernels = _kernels_of_one_run(torch, fn, dev)
        mem = op_peak_memory(torch, fn, dev)
        out.append(OpProfile(sig, name, float(statistics.median(samples)), repeats, tuple(kernels),
                             mem["peak_memory_bytes"], mem["output_bytes"]))  # fmt: skip
    return out


def event_samples(torch: Any, fn: Any, sync: Any, warmup: int, repeats: int) -> list[float]:
    """Microseconds of ``fn`` per call, CUDA-event timed, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    sync()
    samples = []
    for _ in range(repeats):
        e0, e1 = (torch.cuda.Event(enable_timing=True) for _ in range(2))
        e0.record()
        fn()
        e1.record()
        sync()
        samples.append(e0.elapsed_time(e1) * 1e3)
    return samples
