"""Public kernel measurements as data: DeepBench CSVs and AutoTVM logs, one op each.

Each measurement is one library call on one real GPU: a convolution forward or a GEMM,
its shape, its dtype and the time it took. :func:`measurement_graph` turns it into a
one-op :class:`~simgpu.graph.OpGraph` that the simulator's lowering prices, so the
fidelity report and the fit compare the same thing: what simgpu says that call costs.

File names carry the GPU (``v100_fp32_gemm.csv``, ``inception_v3_v100_bs1.log``);
:func:`gpu_of_file` maps it to a preset and never guesses one that is not there.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from calibrate.errors import CalibrationError
from simgpu.costs import library_costs
from simgpu.graph import Op, OpGraph
from simgpu.hardware import ALIASES, PRESETS, GPUSpec
from simgpu.kernels import cheapest, library_candidates, plan_time_us
from simgpu.libraries import LIBRARIES
from simgpu.ops import kind_of
from simgpu.userfiles import read_bytes

DEEPBENCH_RE = re.compile(
    r"^(?P<gpu>[a-z0-9]+)_(?P<dtype>fp32|fp16|bf16|int8)_(?P<what>gemm|conv_fwd)\.csv$"
)
AUTOTVM_RE = re.compile(r"^(?P<net>.+?)_(?P<gpu>[a-z0-9]+)_bs(?P<batch>\d+)\.log$")


@dataclass(frozen=True)
class Measurement:
    """One measured library call: a conv forward or a GEMM on one GPU."""

    kind: str  # "conv" | "gemm"
    dtype: str
    shape: tuple[tuple[str, Any], ...]  # sorted (key, value) pairs, see measurement_graph
    measured_us: float
    group: str  # DeepBench app or network: the unit held out in leave-one-group-out
    library: str = "cudnn"  # whose kernels were timed (simgpu.libraries.LIBRARIES)
    source: str = field(default="", compare=False)  # file:line

    @property
    def op(self) -> str:
        """The name of the measured op in :func:`measurement_graph`."""
        return "gemm" if self.kind == "gemm" else "conv"

    def get(self, key: str) -> Any:
        return dict(self.shape)[key]


@dataclass(frozen=True)
class Dataset:
    """The measurements of one file, on one GPU preset."""

    name: str  # e.g. "deepbench v100 fp32 conv_fwd"
    path: Path
    gpu: str  # preset name
    rows: tuple[Measurement, ...]


def gpu_of_file(token: str) -> str | None:
    """The preset for a GPU named in a file name (a preset name or one of its aliases),
    or None when simgpu has none: a GPU is never guessed."""
    key = token.lower()
    key = ALIASES.get(key, key)
    return key if key in PRESETS else None


def _num(value: str, what: str, where: str, integer: bool = True) -> Any:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise CalibrationError(f"{where}: {what} is not a number ({value!r})") from None
    if not math.isfinite(x) or x < 0 or (integer and not x.is_integer()):
        raise CalibrationError(f"{where}: {what} must be a finite non-negative "
                               f"{'integer' if integer else 'number'}, got {value!r}")  # fmt: skip
    return int(x) if integer else x


GEMM_COLUMNS = ("app", "M", "N", "K", "a_t", "b_t", "time_ms")
CONV_COLUMNS = ("app", "W", "H", "C", "N", "K", "S", "R", "pad_w", "pad_h", "stride_w",
                "stride_h", "fwd_ms")  # fmt: skip


def read_deepbench(path: Path, dtype: str, what: str) -> list[Measurement]:
    """Rows of a DeepBench-format CSV (``gemm`` or ``conv_fwd``)."""
    need = GEMM_COLUMNS if what == "gemm" else CONV_COLUMNS
    try:
        text = read_bytes(path, CalibrationError).decode("utf-8")
        reader = csv.DictReader(io.StringIO(text, newline=""))
        missing = [c for c in need if c not in (reader.fieldnames or [])]
        if missing:
            raise CalibrationError(f"{path}: missing column(s) {', '.join(missing)}")
        rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as e:
        raise CalibrationError(f"{path}: cannot read ({e})") from None
    out = []
    for i, row in enumerate(rows, start=2):
        where = f"{path.name}:{i}"
        if None in row or any(row[c] is None for c in need):
            raise CalibrationError(f"{where}: wrong number of fields")
        group = row["app"].strip() or "?"
        if what == "gemm":
            m, n, k = (_num(row[c], c, where) for c in ("M", "N", "K"))
            ta, tb = row["a_t"].strip().upper(), row["b_t"].strip().upper()
            if ta not in ("N", "T") or tb not in ("N", "T"):
                raise CalibrationError(f"{where}: a_t and b_t must be N or T")
            shape = {"M": m, "N": n, "K": k, "a_t": ta, "b_t": tb}
            ms = _num(row["time_ms"], "time_ms", where, integer=False)
            kind = "gemm"
        else:
            w, h, c, n, k, s, r = (_num(row[x], x, where) for x in "WHCNKSR")
            pw, ph, sw, sh = (
                _num(row[x], x, where) for x in ("pad_w", "pad_h", "stride_w", "stride_h")
            )
            shape = {"N": n, "C": c, "H": h, "W": w, "K": k, "R": r, "S": s,
                     "stride": (sh, sw), "pad": (ph, pw), "dilation": (1, 1), "groups": 1}  # fmt: skip
            ms = _num(row["fwd_ms"], "fwd_ms", where, integer=False)
            kind = "conv"
        sizes = [v for key, v in shape.items() if isinstance(v, int) and key != "groups"]
        if kind == "conv":
            sizes += [*shape["stride"]]
        if ms <= 0 or min(sizes) < 1:
            raise CalibrationError(f"{where}: sizes, strides and the time must be positive")
        out.append(Measurement(kind, dtype, tuple(sorted(shape.items())), ms * 1e3, group,
                               "cublas" if kind == "gemm" else "cudnn", where))  # fmt: skip
    return out


def read_autotvm(path: Path, network: str) -> list[Measurement]:
    """Valid lines (error code 0) of an AutoTVM tuning log of ``conv2d`` workloads."""
    out = []
    try:
        lines = read_bytes(path, CalibrationError).decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise CalibrationError(f"{path}: not UTF-8 text at byte {e.start}") from None
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path.name}:{i}"
        try:
            rec = json.loads(line)
            args = rec["i"][2]
            (_, (n, c, h, w), dtype), (_, (k, cg, r, s), _) = args[0], args[1]
            stride, pad, dil = args[2], args[3], args[4]
            times, err = rec["r"][0], rec["r"][1]
        except (ValueError, KeyError, IndexError, TypeError):
            raise CalibrationError(f"{where}: not an AutoTVM conv2d record") from None
        if err != 0:
            continue  # a failed tuning trial, not a measurement
        dims = [n, c, h, w, k, cg, r, s, *stride, *pad, *dil]
        if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in dims):
            raise CalibrationError(f"{where}: shapes must be non-negative integers")
        if not times or not all(
            isinstance(t, int | float) and math.isfinite(t) and t > 0 for t in times
        ):
            raise CalibrationError(f"{where}: times must be positive numbers")
        if cg < 1 or c % cg or k % (c // cg):
            raise CalibrationError(
                f"{where}: weight channels {cg} do not divide input channels {c}"
            )
        dt = {"float32": "fp32", "float16": "fp16"}.get(dtype)
        if dt is None:
            raise CalibrationError(f"{where}: unsupported dtype {dtype!r}")
        shape = {"N": n, "C": c, "H": h, "W": w, "K": k, "R": r, "S": s,
                 "stride": tuple(stride), "pad": tuple(pad), "dilation": tuple(dil),
                 "groups": c // cg}  # fmt: skip
        us = sum(times) / len(times) * 1e6
        out.append(Measurement("conv", dt, tuple(sorted(shape.items())), us, network,
                               "tvm-direct", where))  # fmt: skip
    return out


@dataclass(frozen=True)
class Skipped:
    path: Path
    reason: str


def find_datasets(dirs: list[Path]) -> tuple[list[Dataset], list[Skipped]]:
    """Every public dataset under ``dirs`` (recursively), in a stable order."""
    found: list[Dataset] = []
    skipped: list[Skipped] = []
    for d in dirs:
        for path in sorted(p for p in d.rglob("*") if p.is_file()):
            m = DEEPBENCH_RE.match(path.name)
            a = AUTOTVM_RE.match(path.name)
            if not (m or a):
                continue
            token = (m or a).group("gpu")  # type: ignore[union-attr]
            gpu = gpu_of_file(token)
            if gpu is None:
                skipped.append(Skipped(path, f"no simgpu preset for GPU '{token}'"))
                continue
            try:
                if m:
                    rows = read_deepbench(path, m.group("dtype"), m.group("what"))
                    name = f"deepbench {token} {m.group('dtype')} {m.group('what')}"
                else:
                    net = a.group("net")  # type: ignore[union-attr]
                    rows = read_autotvm(path, net)
                    name = f"autotvm {token} {net} bs{a.group('batch')}"  # type: ignore[union-attr]
            except CalibrationError as e:
                skipped.append(Skipped(path, str(e)))
                continue
            if not rows:
                skipped.append(Skipped(path, "no valid measurements"))
                continue
            found.append(Dataset(name, path, gpu, tuple(rows)))
    return found, skipped


def measurement_graph(m: Measurement) -> OpGraph:
    """The call as a one-op graph: a plain conv (no bias, no activation, as cuDNN's
    forward is benchmarked) or a matmul of two inputs."""
    s = dict(m.shape)
    if m.kind == "gemm":
        a = (s["M"], s["K"])
        b = (s["K"], s["N"])
        ops = [
            Op("a", "input", (), a, m.dtype),
            Op("b", "input", (), b, m.dtype),
            Op(
                "gemm",
                "matmul",
                ("a", "b"),
                (s["M"], s["N"]),
                m.dtype,
                {"transpose_a": s["a_t"] == "T", "transpose_b": s["b_t"] == "T"},
            ),
        ]
        return OpGraph(ops, name="gemm")
    x = (s["N"], s["C"], s["H"], s["W"])
    attrs = {
        "kernel": (s["R"], s["S"]),
        "stride": tuple(s["stride"]),
        "padding": tuple(s["pad"]),
        "dilation": tuple(s["dilation"]),
        "groups": s["groups"],
        "out_channels": s["K"],
        "bias": False,
        "folded_bn": False,
        "activation": None,
    }
    inp = Op("x", "input", (), x, m.dtype)
    probe = Op("conv", "conv", ("x",), (1,), m.dtype, attrs)
    out = kind_of(probe).infer(probe, [x])
    return OpGraph([inp, Op("conv", "conv", ("x",), out, m.dtype, attrs)], name="conv")


def predict_us(m: Measurement, gpu: GPUSpec) -> float:
    """What simgpu says the call costs on ``gpu`` in a benchmark loop: the op's kernels
    back to back, each alone on the idle GPU plus the device's per-kernel start-up, or
    the host's cost of one call of the library where that is longer (a loop of tiny
    calls is host-bound)."""
    g = measurement_graph(m)
    cands = library_candidates(g, m.op, gpu, LIBRARIES[m.library]) or []
    gpu_us = plan_time_us(cheapest(m.op, cands, gpu), gpu)
    return max(gpu_us, library_costs(gpu).calls.get(m.library, 0.0))
