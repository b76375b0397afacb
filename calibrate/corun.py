"""Co-run interference: pairs of kernels alone and together on two streams, against the
simulator's SM and DRAM sharing (:mod:`simgpu.sharing`).

Three kinds of kernel, each at three grid sizes:

| kind      | what it is                                          | bound by          |
|-----------|-----------------------------------------------------|-------------------|
| `gemm_tc` | ``torch.mm`` in fp16, M = N = size, K = 4096 (cuBLAS on tensor cores) | tensor cores |
| `fma32`   | a raw kernel of dependent fp32 FMAs (8 chains a thread), ``size`` blocks of 256 threads | CUDA cores |
| `copy`    | a raw grid-stride float4 copy of 256 MiB, ``size`` blocks of 256 threads | DRAM |

The pairs are compute+compute (tensor+tensor, tensor+CUDA-core, CUDA-core+CUDA-core),
compute+memory and memory+memory, each kind pair at four size pairs. Raw data: each
kernel's end (us after a common start event) per repeat, alone and in its pair.

The analysis builds the simulator's kernels two ways and simulates each pair with both:

* **fitted** — the launch configuration the profiler recorded (grid, threads, registers,
  shared memory) with the kernel's flops and bytes, its work fitted so that alone it
  takes its measured time (exactly what a measured kernel table does,
  :func:`simgpu.kernels.lower_op`). This isolates the sharing model: both kernels are
  right alone, so any error in the pair is the model's rule for sharing.
* **analytic** — the simulator's own kernels for the same work: cuBLAS's model for the
  GEMM (:func:`simgpu.kernels.lower_op` of a matmul op), and for the raw kernels a
  reasoned approximation: a streaming kernel (:class:`simgpu.libraries.KernelSpec` with
  the STREAM unit) of the same grid and block whose work is its flops at the fp32
  (CUDA-core) peak, or whose traffic is its bytes. This is the whole model's error.

Everything here is GPU-free; :mod:`calibrate.device` measures.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from calibrate.errors import CalibrationError
from simgpu.hardware import GPUSpec
from simgpu.kernels import Kernel, _fit_duration, occupancy, price
from simgpu.libraries import STREAM, KernelSpec

KINDS = ("gemm_tc", "fma32", "copy")
THREADS = 256  # block size of the raw kernels
FMA_CHAINS = 8  # independent FMA chains per thread of the fma32 kernel
CLASSES = {
    "compute-compute": (("gemm_tc", "gemm_tc"), ("gemm_tc", "fma32"), ("fma32", "fma32")),
    "compute-memory": (("gemm_tc", "copy"), ("fma32", "copy")),
    "memory-memory": (("copy", "copy"),),
}
SIZE_PAIRS = ((0, 0), (1, 1), (2, 2), (0, 2))  # indices into a kind's three sizes


@dataclass(frozen=True)
class CoKernel:
    """One co-run kernel: ``size`` is M = N for ``gemm_tc`` and the grid (blocks) for the
    raw kernels."""

    name: str
    kind: str
    size: int
    k: int = 4096  # gemm_tc: depth
    iters: int = 1024  # fma32: loop trips
    mib: int = 256  # copy: MiB read (and as many written)

    @property
    def cls(self) -> str:
        return "memory" if self.kind == "copy" else "compute"

    @property
    def flops(self) -> float:
        if self.kind == "gemm_tc":
            return 2.0 * self.size * self.size * self.k
        if self.kind == "fma32":
            return 2.0 * self.size * THREADS * self.iters * FMA_CHAINS
        return 0.0

    @property
    def nbytes(self) -> float:
        """DRAM traffic: the GEMM's operands and result once, the copy's read + write."""
        if self.kind == "gemm_tc":
            return 2.0 * (2 * self.size * self.k + self.size * self.size)
        if self.kind == "copy":
            return 2.0 * self.mib * 2**20
        return 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> CoKernel:
        try:
            return cls(**{k: d[k] for k in ("name", "kind", "size", "k", "iters", "mib") if k in d})
        except TypeError as e:
            raise CalibrationError(f"co-run kernel {d!r}: {e}") from None


def default_kernels(sm_count: int, max_threads_per_sm: int = 2048) -> list[CoKernel]:
    """Three sizes of each kind: GEMMs of 1024, 2048 and 4096 (under one wave of tiles
    to several), raw kernels of half, one and one and a half waves of 256-thread blocks
    (one wave: every SM full)."""
    wave = sm_count * max(1, max_threads_per_sm // THREADS)
    out = [CoKernel(f"gemm_tc-{n}", "gemm_tc", n) for n in (1024, 2048, 4096)]
    for f in (0.5, 1.0, 1.5):
        g = max(1, int(wave * f))
        out.append(CoKernel(f"fma32-{g}", "fma32", g))
    for f in (0.125, 0.5, 1.0):
        g = max(1, int(wave * f))
        out.append(CoKernel(f"copy-{g}", "copy", g))
    return out


def pairs(kernels: Sequence[CoKernel]) -> dict[str, list[tuple[str, str]]]:
    """Class -> (kernel a, kernel b) names: every kind pair of the class at SIZE_PAIRS."""
    by_kind: dict[str, list[CoKernel]] = {k: [] for k in KINDS}
    for k in kernels:
        by_kind.setdefault(k.kind, []).append(k)
    out: dict[str, list[tuple[str, str]]] = {}
    for cls, kinds in CLASSES.items():
        rows = []
        for ka, kb in kinds:
            a, b = by_kind.get(ka, []), by_kind.get(kb, [])
            for i, j in SIZE_PAIRS:
                if i < len(a) and j < len(b):
                    rows.append((a[i].name, b[j].name))
        out[cls] = list(dict.fromkeys(rows))
    return out


# --- the simulator's view -------------------------------------------------------------


def analytic_kernels(ck: CoKernel, gpu: GPUSpec) -> list[Kernel]:
    """The simulator's own kernels for ``ck`` (see the module's docstring)."""
    if ck.kind == "gemm_tc":
        from simgpu.graph import Op, OpGraph
        from simgpu.kernels import lower_op

        g = OpGraph(
            [
                Op("a", "input", (), (ck.size, ck.k), dtype="fp16"),
                Op("b", "input", (), (ck.k, ck.size), dtype="fp16"),
                Op(ck.name, "matmul", ("a", "b"), (ck.size, ck.size), dtype="fp16"),
            ],
            name=ck.name,
        )
        return lower_op(g, ck.name, gpu)
    if ck.kind not in KINDS:
        raise CalibrationError(f"co-run kernel {ck.name}: unknown kind {ck.kind!r}")
    grid = ck.size
    spec = KernelSpec(ck.name, grid, THREADS, 32, 0, ck.flops / grid, ck.nbytes / grid, STREAM,
                      gpu.peak_flops("fp32", False), 0)  # fmt: skip
    return [price(spec, ck.name, gpu)]


def fitted_kernels(
    ck: CoKernel, configs: Sequence[Mapping[str, Any]], gpu: GPUSpec
) -> list[Kernel]:
    """Kernels with the recorded launch configurations, each fitted to its recorded
    duration; the flops and bytes split evenly over the kernels and their blocks (as a
    measured kernel table's entries are)."""
    if not configs:
        raise CalibrationError(f"co-run kernel {ck.name}: no launch configuration recorded")
    out = []
    n = len(configs)
    for c in configs:
        try:
            grid, threads = int(c["grid"]), int(c["threads"])
            regs, smem = max(1, int(c.get("regs", 32))), int(c.get("smem", 0))
            dur = float(c["duration_us"])
        except (KeyError, TypeError, ValueError) as e:
            raise CalibrationError(f"co-run kernel {ck.name}: bad configuration {c!r} ({e!r})") from None  # fmt: skip
        if grid < 1 or not (math.isfinite(dur) and dur > 0):
            raise CalibrationError(f"co-run kernel {ck.name}: configuration {c!r} needs grid >= 1, duration > 0")  # fmt: skip
        occ = occupancy(threads, regs, smem, gpu, what=f"co-run kernel {ck.name}")
        k = Kernel(str(c.get("name", ck.name))[:80], ck.name, grid, threads, regs, smem,
                   ck.flops / n / grid, ck.nbytes / n / grid, 0.0, 0.0, occ, measured=True)  # fmt: skip
        out.append(_fit_duration(k, dur, gpu))
    return out


def simulate_streams(kernels: Sequence[Sequence[Kernel]], gpu: GPUSpec) -> list[float]:
    """Each list of kernels on its own stream, all issued at once (no host costs):
    the end of each stream's last kernel, in us after the first kernel starts."""
    from simgpu.program import Launch, StreamProgram
    from simgpu.sim.engine import simulate

    g = gpu.replace(launch_api_us=0.0, framework_dispatch_us=0.0)
    cmds = [Launch(f"s{s}k{i}", k, s) for s, ks in enumerate(kernels) for i, k in enumerate(ks)]
    tl = simulate(StreamProgram(cmds, name="corun"), g)
    t0 = min(r.start_us for r in tl.kernels)
    ends = [0.0] * len(kernels)
    for r in tl.kernels:
        s = r.stream
        ends[s] = max(ends[s], r.end_us - t0)
    return ends


# --- analysis -------------------------------------------------------------------------


def _median_col(samples: Sequence[Sequence[float]], i: int, what: str) -> float:
    xs = [float(s[i]) for s in samples if len(s) > i]
    if not xs:
        raise CalibrationError(f"co-run: no samples for {what}")
    return float(statistics.median(xs))


def _ratio(m: float, s: float) -> float:
    return m / s if s > 0 else float("nan")


def analyse(
    kernels_raw: Mapping[str, Any], pair_raws: Mapping[str, Mapping[str, Any]], gpu: GPUSpec
) -> dict[str, Any]:
    """Measured vs simulated co-running, per pair and per class.

    ``kernels_raw``: ``{"kernels": {name: {"spec", "alone_us": [[end], ...],
    "configs": [...]}}}``; ``pair_raws``: class -> ``{"pairs": [{"a", "b", "ends_us":
    [[end_a, end_b], ...]}]}``. Per pair: alone and together times measured and
    simulated (fitted and analytic), ``overlap`` = span / (alone a + alone b) (1: they
    ran one after the other; max/sum: perfect overlap), and ``ratio`` = measured span /
    simulated span. Per class: the geometric mean and range of the ratios.
    """
    ks = kernels_raw.get("kernels")
    if not isinstance(ks, Mapping):
        raise CalibrationError('co-run: kernels file has no "kernels" object')
    alone: dict[str, float] = {}
    fitted: dict[str, list[Kernel]] = {}
    analytic: dict[str, list[Kernel]] = {}
    notes: dict[str, str] = {}
    kernel_rows = []
    for name, r in ks.items():
        try:
            ck = CoKernel.from_json(r["spec"])
            alone[name] = _median_col(r["alone_us"], 0, f"{name} alone")
            analytic[name] = analytic_kernels(ck, gpu)
            fitted[name] = fitted_kernels(ck, r.get("configs") or [], gpu)
        except (KeyError, TypeError) as e:
            notes[name] = f"malformed ({e!r})"
            continue
        except CalibrationError as e:
            notes[name] = str(e).splitlines()[0]
            if name not in analytic:
                continue
        sim_fit = simulate_streams([fitted[name]], gpu)[0] if name in fitted else None
        sim_ana = simulate_streams([analytic[name]], gpu)[0]
        kernel_rows.append(
            {
                "kernel": name,
                "measured_us": alone[name],
                "fitted_us": sim_fit,
                "analytic_us": sim_ana,
                "ratio_analytic": _ratio(alone[name], sim_ana),
                "grids": [c.get("grid") for c in r.get("configs") or []],
            }
        )
    rows = []
    for cls, raw in pair_raws.items():
        for p in raw.get("pairs", []):
            a, b = p.get("a"), p.get("b")
            if a not in alone or b not in alone:
                notes[f"{a}+{b}"] = "a kernel of the pair was not measured alone"
                continue
            try:
                ma = _median_col(p["ends_us"], 0, f"{a} in {a}+{b}")
                mb = _median_col(p["ends_us"], 1, f"{b} in {a}+{b}")
            except (KeyError, CalibrationError) as e:
                notes[f"{a}+{b}"] = str(e).splitlines()[0]
                continue
            span = max(ma, mb)
            row: dict[str, Any] = {
                "class": cls,
                "a": a,
                "b": b,
                "measured": {
                    "alone_a_us": alone[a],
                    "alone_b_us": alone[b],
                    "end_a_us": ma,
                    "end_b_us": mb,
                    "span_us": span,
                    "overlap": span / (alone[a] + alone[b]),
                },
            }
            for label, sk in (("fitted", fitted), ("analytic", analytic)):
                if a not in sk or b not in sk:
                    continue
                sa = simulate_streams([sk[a]], gpu)[0]
                sb = simulate_streams([sk[b]], gpu)[0]
                ea, eb = simulate_streams([sk[a], sk[b]], gpu)
                sspan = max(ea, eb)
                row[label] = {
                    "alone_a_us": sa,
                    "alone_b_us": sb,
                    "end_a_us": ea,
                    "end_b_us": eb,
                    "span_us": sspan,
                    "overlap": sspan / (sa + sb) if sa + sb > 0 else float("nan"),
                    "ratio": _ratio(span, sspan),
                }
            rows.append(row)
    classes = {}
    for cls in pair_raws:
        for label in ("fitted", "analytic"):
            rs = [r[label]["ratio"] for r in rows if r["class"] == cls and label in r]
            rs = [x for x in rs if math.isfinite(x) and x > 0]
            if rs:
                classes.setdefault(cls, {})[label] = {
                    "pairs": len(rs),
                    "geomean_ratio": math.exp(statistics.fmean(math.log(x) for x in rs)),
                    "min_ratio": min(rs),
                    "max_ratio": max(rs),
                }
        ov = [r["measured"]["overlap"] for r in rows if r["class"] == cls]
        if ov:
            classes.setdefault(cls, {})["measured_overlap"] = statistics.fmean(ov)
    return {
        "gpu": gpu.name,
        "ratio": "measured / simulated span (>1: the GPU was slower than the model)",
        "kernels": kernel_rows,
        "pairs": rows,
        "classes": classes,
        "notes": notes,
    }


def format_analysis(res: Mapping[str, Any]) -> str:
    """A few lines per class: measured overlap and measured/simulated span ratios."""
    lines = []
    for cls, c in res.get("classes", {}).items():
        parts = [f"{cls:16s}"]
        if "measured_overlap" in c:
            parts.append(f"overlap {c['measured_overlap']:.2f}")
        for label in ("fitted", "analytic"):
            if label in c:
                x = c[label]
                parts.append(f"{label} x{x['geomean_ratio']:.2f} "
                             f"[{x['min_ratio']:.2f}..{x['max_ratio']:.2f}]")  # fmt: skip
        lines.append("  ".join(parts))
    return "\n".join(lines)
