"""Sweeps: every metric of ``simgpu run`` for each combination of a grid, as one CSV.

A grid is the product of models, batch sizes, image sizes, dtypes, GPUs (or machines),
schedulers and scheduler option values. Each combination is one independent task — it
builds its graph, schedules, simulates and returns one row — so the sweep runs the
tasks on local processes or on a Dask cluster and only collects rows.

The output is built to survive interruption: every finished row is appended and
flushed at once, so a killed sweep leaves a valid CSV prefix, and rerunning the same
command skips the combinations already in the file. A combination that raises becomes
a row with ``status=error`` and its one-line error (``status=n/a`` when the scheduler
does not apply to that input by design); it never stops the sweep. When the
sweep ends the file is rewritten in grid order, so its content does not depend on the
worker count or on completion order — only the wall-time columns differ between runs.

Every row records the schedule's peak allocated and reserved memory (``peak_memory_mb``,
``reserved_memory_mb``; MB is MiB, :mod:`simgpu.memory`). A memory limit per GPU is a
dimension of the grid (``memory_limit_mb``, empty for none): a row whose schedule does not
fit its limit is a failed row with the one-line reason. A results file written before
these columns existed still reads (their cells empty); a sweep resumed on one rewrites it
in the current layout first and runs its ``ok`` rows again, so that every row of the grid
carries its memory.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import itertools
import math
import os
import signal
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from simgpu.errors import SimGPUError
from simgpu.limits import check as check_limit
from simgpu.output import printable
from simgpu.userfiles import read_bytes

if TYPE_CHECKING:
    from simgpu.graph import OpGraph
    from simgpu.hardware import Machine


#: Row statuses that are final: a success, or a scheduler that does not apply by design
#: (``n/a``: not a failure, and ``--retry-failed`` does not rerun it).
DONE = ("ok", "n/a")


class SweepError(SimGPUError):
    """A malformed grid, an unreadable results file, or a sweep that could not finish."""


#: Columns that identify a combination; a results row with the same values is "done".
KEY_COLUMNS: tuple[str, ...] = (
    "model",
    "batch",
    "image_size",
    "dtype",
    "gpu",
    "machine",
    "scheduler",
    "options",
    "runtime",
    "memory_limit_mb",  # per GPU; empty: no limit
)
#: Columns measured in wall-clock time: the only ones that differ between two runs.
WALL_COLUMNS: tuple[str, ...] = ("schedule_s", "wall_s")
METRIC_COLUMNS: tuple[str, ...] = (
    "ops",
    "kernels",
    "latency_ms",
    "sequential_ms",
    "speedup",
    "streams",
    "syncs",
    "sm_utilisation",
    "profiler_calls",
    "profiler_distinct",
    "gpu_search_s",
    "lower_bound_ms",
    "bound_gap",
    "peak_memory_mb",
    "reserved_memory_mb",
)
COLUMNS: tuple[str, ...] = (*KEY_COLUMNS, "status", "error", *METRIC_COLUMNS, *WALL_COLUMNS)
INT_COLUMNS = frozenset(
    {"batch", "image_size", "ops", "kernels", "streams", "syncs", "profiler_calls"}
    | {"profiler_distinct"}
)
FLOAT_COLUMNS = frozenset(
    {"latency_ms", "sequential_ms", "speedup", "sm_utilisation", "gpu_search_s"}
    | {"lower_bound_ms", "bound_gap", "schedule_s", "wall_s"}
    | {"memory_limit_mb", "peak_memory_mb", "reserved_memory_mb"}
)
#: Columns added with memory accounting, and the layout of the files written before them
#: (read with these cells empty; rewritten in the current layout when a sweep resumes).
MEMORY_COLUMNS: tuple[str, ...] = ("memory_limit_mb", "peak_memory_mb", "reserved_memory_mb")
LEGACY_COLUMNS: tuple[str, ...] = tuple(c for c in COLUMNS if c not in MEMORY_COLUMNS)
DTYPES = ("fp32", "fp16", "bf16")


# --- the grid -------------------------------------------------------------------------


@dataclass(frozen=True)
class Combo:
    """One point of the grid. ``gpu`` or ``machine`` names the hardware (the other is '')."""

    model: str
    batch: int
    image_size: int | None
    dtype: str
    gpu: str
    machine: str
    scheduler: str
    options: tuple[tuple[str, str], ...] = ()
    runtime: str = ""  # the runtime it runs under ('' while unresolved: the scheduler's own)
    memory_limit_mb: float | None = None  # per GPU, MiB; None: no limit

    @property
    def options_text(self) -> str:
        return ";".join(f"{k}={v}" for k, v in self.options)

    @property
    def memory_limit_bytes(self) -> int | None:
        """The limit as run_scheduler takes it."""
        from simgpu.memory import MB

        return None if self.memory_limit_mb is None else int(self.memory_limit_mb * MB)

    def key(self) -> tuple[str, ...]:
        """The combination as its CSV key columns read back (all strings)."""
        return (
            self.model,
            str(self.batch),
            "" if self.image_size is None else str(self.image_size),
            self.dtype,
            self.gpu,
            self.machine,
            self.scheduler,
            self.options_text,
            self.runtime,
            limit_text(self.memory_limit_mb),
        )

    def label(self) -> str:
        hw = self.gpu or self.machine
        size = f" {self.image_size}px" if self.image_size else ""
        opts = f" [{self.options_text}]" if self.options else ""
        rt = f" @{self.runtime}" if self.runtime else ""
        mem = f" limit {limit_text(self.memory_limit_mb)} MB" if self.memory_limit_mb else ""
        what = f"{self.scheduler}{opts}{rt}{mem}"
        return f"{self.model} b{self.batch}{size} {self.dtype} {hw} {what}"


def limit_text(mb: float | None) -> str:
    """A memory limit as its key cell: '' for none, '512' for 512.0, '0.5' for 0.5 (the
    shortest text that reads back as the same float)."""
    if mb is None:
        return ""
    return str(int(mb)) if float(mb).is_integer() else repr(float(mb))


@dataclass
class Grid:
    """What to sweep. ``'all'`` in ``models`` or ``schedulers`` expands to every registered one.

    ``options`` maps a scheduler to its option names and the values to sweep, e.g.
    ``{"ios": {"r": ["1", "3"], "s": ["8"]}}``: the scheduler runs once per product of
    its option values. Image sizes apply only to models with an image input; for the
    others that axis collapses to one row per batch size.
    """

    models: list[str]
    batches: list[int] = field(default_factory=lambda: [1])
    image_sizes: list[int | None] = field(default_factory=lambda: [None])
    dtypes: list[str] = field(default_factory=lambda: ["fp32"])
    gpus: list[str] = field(default_factory=list)
    machines: list[str] = field(default_factory=list)
    schedulers: list[str] = field(default_factory=lambda: ["all"])
    options: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    # runtimes every scheduler runs under; empty: each scheduler's own (simgpu.runtimes)
    runtimes: list[str] = field(default_factory=list)
    # memory limits per GPU in MB (MiB) every scheduler runs under; None: no limit
    memory_limits_mb: list[float | None] = field(default_factory=lambda: [None])

    def combos(self) -> list[Combo]:
        """Every combination, in grid order (model, batch, size, dtype, hardware, scheduler)."""
        from schedulers.base import scheduler_names
        from simgpu.models import MODELS, model_names

        if not self.models:
            raise SweepError("the grid has no model (give --model NAME or 'all')")
        self._check_names()
        models = _expand(self.models, model_names)
        scheds = _expand(
            self.schedulers or ["all"],
            lambda: scheduler_names(single_gpu_only=not self.machines),
        )
        for sched, opts in self.options.items():
            if sched not in scheds:
                raise SweepError(f"option given for scheduler '{sched}', which is not in the grid")
            for key, values in opts.items():
                if not values:
                    raise SweepError(f"option {sched}.{key} has no value")
        targets = [("gpu", _gpu_key(g)) for g in _dedupe(self.gpus)]
        targets += [("machine", m) for m in _dedupe(self.machines)]
        if not targets:
            targets = [("gpu", _gpu_key("v100"))]
        variants = {s: _option_variants(self.options.get(s, {})) for s in scheds}
        _check_runtimes(self.runtimes)
        files = _check_known(models, targets, variants)
        limits = _dedupe(self.memory_limits_mb) or [None]
        rows = (len(models) * len(_dedupe(self.batches)) * max(1, len(_dedupe(self.image_sizes)))
                * len(_dedupe(self.dtypes)) * len(targets) * sum(len(v) for v in variants.values())
                * max(1, len(self.runtimes)) * len(limits))  # fmt: skip
        check_limit("grid_rows", rows, "the sweep's number of combinations")
        runtimes = {(s, o): _runtimes_of(s, o, self.runtimes) for s in scheds for o in variants[s]}

        out: list[Combo] = []
        for model in models:
            info = MODELS.get(model)
            sizes: list[int | None]
            batches: list[int] = _dedupe(self.batches)
            dtypes: list[str] = _dedupe(self.dtypes)
            if model in files:  # a graph file: it has its own shapes
                sizes = [None]
                if files[model].format == "opgraph":  # and its own batch and dtype
                    batches = [files[model].batch or 1]
                    dtypes = [files[model].dtype or "fp32"]
            elif info is not None and info.default_image_size is None:
                sizes = [None]  # no image input: the size axis does not apply
            elif info is not None:
                sizes = [info.default_image_size if s is None else s for s in self.image_sizes]
            else:
                sizes = list(self.image_sizes)
            for batch, size, dtype, (kind, hw), sched in itertools.product(
                batches, _dedupe(sizes), dtypes, targets, scheds
            ):
                for opts in variants[sched]:
                    gpu, machine = (hw, "") if kind == "gpu" else ("", hw)
                    for rt, limit in itertools.product(runtimes[(sched, opts)], limits):
                        out.append(
                            Combo(model, batch, size, dtype, gpu, machine, sched, opts, rt, limit)
                        )
        return _dedupe(out)

    def _check_names(self) -> None:
        """Names become CSV cells of one line each: no control characters, no blanks."""
        named = [("model", self.models), ("dtype", self.dtypes), ("gpu", self.gpus)]
        named += [("machine", self.machines), ("scheduler", self.schedulers)]
        named += [("runtime", self.runtimes)]
        for sched, opts in self.options.items():
            named.append(("scheduler", [sched]))
            for key, values in opts.items():
                named += [(f"option {sched}", [key]), (f"option {sched}.{key}", values)]
        for what, names in named:
            for n in names:
                if not isinstance(n, str) or not n.strip() or not n.isprintable():
                    raise SweepError(f"bad {what} name {n!r} in the grid")
                if what.startswith("option") and (";" in n or "=" in n):
                    raise SweepError(f"bad {what} {n!r} in the grid: ';' and '=' are separators")
        sizes = (
            ("batch size", "batch", self.batches),
            ("image size", "image_size", self.image_sizes),
        )
        for what, limit, nums in sizes:
            for v in nums:
                if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
                    raise SweepError(f"bad {what} {v!r} in the grid: expected a positive integer")
                if v is not None:  # before the first row, not as a row per combination
                    check_limit(limit, v, f"the grid's {what}")
        for v in self.memory_limits_mb:
            check_memory_limit(v, "the grid's memory limit")


def check_memory_limit(v: Any, where: str) -> float | None:
    """A grid's memory limit: None, or a positive number of MB (simgpu.memory's rule)."""
    from simgpu.memory import parse_limit_mb

    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise SweepError(f"{where}: expected a positive number of MB, got {v!r}")
    try:
        parse_limit_mb(float(v), where)
    except OverflowError:  # an integer past any float
        raise SweepError(
            f"{where}: expected a positive number of MB, got {str(v)[:20]}..."
        ) from None
    except SimGPUError as e:
        raise SweepError(str(e)) from None
    return float(v)


def parse_memory_limit_args(items: Sequence[str]) -> list[float | None]:
    """``--memory-limit`` values: numbers of MB, or 'none' for a row without a limit."""
    out: list[float | None] = []
    for item in items:
        text = item.strip()
        if text.lower() == "none":
            out.append(None)
            continue
        try:
            value = float(text)
        except ValueError:
            raise SweepError(
                f"--memory-limit {item!r}: expected a number of MB (MiB) or 'none'"
            ) from None
        out.append(check_memory_limit(value, "--memory-limit"))
    return _dedupe(out)


def _dedupe(items: Iterable[Any]) -> list[Any]:
    return list(dict.fromkeys(items))


def _expand(names: Sequence[str], everything: Callable[[], list[str]]) -> list[str]:
    out: list[str] = []
    for n in names:
        out += everything() if n == "all" else [n]
    return _dedupe(out)


def _gpu_key(name: str) -> str:
    """A preset's canonical name (aliases such as 'v100' resolve); files and unknowns as given."""
    from simgpu.hardware import preset

    if name.endswith(".json") or Path(name).is_file():
        return name
    try:
        return preset(name).name
    except SimGPUError:
        return name  # reported by the combination itself, as its error


def _option_variants(opts: Mapping[str, Sequence[str]]) -> list[tuple[tuple[str, str], ...]]:
    keys = sorted(opts)
    return [
        tuple(zip(keys, vals, strict=True)) for vals in itertools.product(*(opts[k] for k in keys))
    ]


def parse_option_args(items: Sequence[str]) -> dict[str, dict[str, list[str]]]:
    """``["ios.r=1,3", "ios.s=8"]`` -> ``{"ios": {"r": ["1", "3"], "s": ["8"]}}``.

    A comma separates values to sweep; repeating a key adds values.
    """
    out: dict[str, dict[str, list[str]]] = {}
    for item in items:
        key, eq, value = item.partition("=")
        sched, dot, opt = key.partition(".")
        values = [v.strip() for v in value.split(",")]
        if not eq or not dot or not sched.strip() or not opt.strip() or "" in values:
            raise SweepError(f"option {item!r} must look like SCHEDULER.NAME=VALUE[,VALUE...]")
        dest = out.setdefault(sched.strip(), {}).setdefault(opt.strip(), [])
        dest += [v for v in values if v not in dest]
    return out


# --- TOML grids -----------------------------------------------------------------------

_TOML_KEYS = (
    "models",
    "batches",
    "image_sizes",
    "dtypes",
    "gpus",
    "machines",
    "schedulers",
    "runtimes",
    "memory_limit_mb",
)


def load_grid(path: str | Path) -> Grid:
    """Read a grid from TOML: top-level lists named as :class:`Grid`'s fields, plus
    ``[options.SCHEDULER]`` tables whose values are a value or a list of values to sweep.
    A scalar stands for a one-element list. ``memory_limit_mb`` lists limits per GPU in MB
    (MiB); ``"none"`` (or, from JSON or Python, null) is a row without a limit."""
    p = Path(path)
    raw = read_bytes(p, SweepError)  # a regular file under the size limit
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise SweepError(f"{p}: not a text file") from None
    except tomllib.TOMLDecodeError as e:
        raise SweepError(f"{p}: not valid TOML: {e}") from None
    except RecursionError:  # tomllib recurses into nested arrays and tables
        raise SweepError(f"{p}: not valid TOML: nested too deeply") from None
    return grid_from_dict(data, source=str(p))


def grid_from_dict(data: Mapping[str, Any], source: str = "<grid>") -> Grid:
    unknown = sorted(set(data) - {*_TOML_KEYS, "options"})
    if unknown:
        known = ", ".join((*_TOML_KEYS, "options"))
        raise SweepError(f"{source}: unknown key '{unknown[0]}' (known: {known})")
    kw: dict[str, Any] = {}
    for key in ("models", "dtypes", "gpus", "machines", "schedulers", "runtimes"):
        if key in data:
            kw[key] = [_check_str(v, f"{source}: {key}[{i}]") for i, v in _items(data[key])]
    for key in ("batches", "image_sizes"):
        if key in data:
            kw[key] = [_check_positive(v, f"{source}: {key}[{i}]") for i, v in _items(data[key])]
    if "memory_limit_mb" in data:
        kw["memory_limits_mb"] = _dedupe(
            _limit_value(v, f"{source}: memory_limit_mb[{i}]")
            for i, v in _items(data["memory_limit_mb"])
        )
        if not kw["memory_limits_mb"]:
            raise SweepError(f"{source}: memory_limit_mb is empty")
    for key in ("models", "batches", "image_sizes", "dtypes", "schedulers"):
        if key in kw and not kw[key]:
            raise SweepError(f"{source}: {key} is empty")
    for i, d in enumerate(kw.get("dtypes", [])):
        if d not in DTYPES:
            raise SweepError(
                f"{source}: dtypes[{i}]: unknown dtype {d!r} (known: {', '.join(DTYPES)})"
            )
    opts = data.get("options", {})
    if not isinstance(opts, dict):
        raise SweepError(f"{source}: options must be a table of [options.SCHEDULER] tables")
    kw["options"] = {}
    for sched, table in opts.items():
        if not isinstance(table, dict):
            raise SweepError(f"{source}: options.{sched} must be a table of NAME = value(s)")
        kw["options"][sched] = {
            k: _dedupe(
                _option_value(v, f"{source}: options.{sched}.{k}[{i}]") for i, v in _items(vs)
            )
            for k, vs in table.items()
        }
        for k, vs in kw["options"][sched].items():
            if not vs:
                raise SweepError(f"{source}: options.{sched}.{k} is empty")
    if "models" not in kw:
        raise SweepError(f"{source}: no 'models' list")
    return Grid(**kw)


def _items(v: Any) -> Iterator[tuple[int, Any]]:
    return enumerate(v if isinstance(v, list) else [v])


def _check_str(v: Any, where: str) -> str:
    if not isinstance(v, str) or not v.strip():
        raise SweepError(f"{where}: expected a name, got {v!r}")
    return v.strip()


def _check_positive(v: Any, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise SweepError(f"{where}: expected a positive integer, got {v!r}")
    return v


def _limit_value(v: Any, where: str) -> float | None:
    if v is None or (isinstance(v, str) and v.strip().lower() == "none"):
        return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise SweepError(f"{where}: expected a number of MB or 'none', got {v!r}")
    return check_memory_limit(v, where)


def _option_value(v: Any, where: str) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float | str):
        return str(v)
    raise SweepError(f"{where}: expected a number, string or boolean, got {v!r}")


# --- one combination ------------------------------------------------------------------


class CombinationTimeout(BaseException):
    """A combination ran past ``--timeout``. A BaseException, so that a scheduler's own
    ``except Exception`` cannot swallow it."""


def run_combo(combo: Combo, timeout_s: float | None = None) -> dict[str, str]:
    """Run one combination; never raises for a failure of the combination itself.

    This is what the workers execute: a module-level function of picklable arguments.
    With ``timeout_s`` the row becomes ``status=timeout`` when the combination runs
    longer (POSIX, main thread: an interval timer interrupts it).
    """
    from schedulers.base import SchedulerSkipped

    t0 = time.perf_counter()
    row = dict(zip(KEY_COLUMNS, combo.key(), strict=True))
    try:
        with _time_limit(timeout_s):
            metrics = _measure(combo)
    except CombinationTimeout:
        row.update(status="timeout", error=f"timed out after {timeout_s:g} s")
    except SchedulerSkipped as e:  # does not apply by design: not a failure, never retried
        row.update(status="n/a", error=_one_line(e))
    except Exception as e:  # any failure of one combination is data, not a crash
        row.update(status="error", error=_one_line(e))
    else:
        row.update(status="ok", **metrics)
    row["wall_s"] = _fmt(time.perf_counter() - t0)
    return {c: row.get(c, "") for c in COLUMNS}


def timeout_supported() -> bool:
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def _time_limit(seconds: float | None) -> Iterator[None]:
    if not seconds:
        yield
        return
    if not timeout_supported():
        raise SweepError("a per-combination timeout needs a POSIX system and the main thread")

    def expire(signum: int, frame: Any) -> None:
        raise CombinationTimeout

    old = signal.signal(signal.SIGALRM, expire)
    try:
        signal.setitimer(signal.ITIMER_REAL, seconds)
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    text = lines[0] if lines else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)  # the shortest text that reads back as the same float
    return str(v)


def _measure(combo: Combo) -> dict[str, str]:
    from schedulers.base import run_scheduler
    from schedulers.bounds import schedule_bound_us

    graph = combo_graph(combo.model, combo.batch, combo.image_size, combo.dtype)
    machine = machine_for(combo.gpu, combo.machine)
    runtime = combo.runtime or None
    res = run_scheduler(
        combo.scheduler, graph, machine, dict(combo.options), runtime, combo.memory_limit_bytes
    )
    if combo.scheduler == "sequential" and not combo.options:
        seq_ms = res.latency_ms
    else:  # one stream under the same runtime: like with like
        seq_ms = _sequential_ms(
            combo.model, combo.batch, combo.image_size, combo.dtype, combo.gpu, combo.machine,
            res.runtime,
        )  # fmt: skip
    lat = res.latency_ms
    out: dict[str, Any] = {
        "ops": len(graph),
        "kernels": res.program.kernels,
        "latency_ms": lat,
        "sequential_ms": seq_ms,
        "speedup": seq_ms / lat if lat > 0 else math.nan,
        "streams": res.streams,
        "syncs": res.syncs,
        "sm_utilisation": res.timeline.mean_sm_utilisation(),
        "profiler_calls": res.profiler_calls,
        "profiler_distinct": res.profiler_distinct,
        "gpu_search_s": res.gpu_search_s,
        "schedule_s": res.schedule_s,
    }
    if res.memory is not None:
        out["peak_memory_mb"] = res.memory.peak_memory_mb
        out["reserved_memory_mb"] = res.memory.reserved_memory_mb
    try:  # the bound `simgpu run` reports
        bound = schedule_bound_us(graph, machine, res.schedule.graph, res.runtime) / 1e3
    except SimGPUError as e:  # the schedule is fine; say why its bound is missing
        out["error"] = f"lower bound: {_one_line(e)}"
        bound = None
    if bound is not None and bound > 0:
        out["lower_bound_ms"] = bound
        out["bound_gap"] = lat / bound - 1.0
    return {k: _fmt(v) for k, v in out.items()}


@functools.lru_cache(maxsize=256)
def _sequential_ms(
    model: str,
    batch: int,
    image_size: int | None,
    dtype: str,
    gpu: str,
    machine: str,
    runtime: str = "pytorch-eager",
) -> float:
    """The baseline of every speedup, once per process per configuration and runtime
    (a float: safe to cache)."""
    from schedulers.base import run_scheduler

    graph = combo_graph(model, batch, image_size, dtype)
    return run_scheduler("sequential", graph, machine_for(gpu, machine), runtime=runtime).latency_ms


def _check_known(
    models: Sequence[str],
    targets: Sequence[tuple[str, str]],
    variants: Mapping[str, Sequence[tuple[tuple[str, str], ...]]],
) -> None:
    """Every model, GPU, machine, scheduler and option of the grid exists, before the
    first row runs: a typo is one error now, not a column of failed rows and exit 0.
    (A combination that fails for what it is, a model too large for a GPU, say, is
    still a row.) A model that is a graph file must exist and parse now: its rows load
    it again by path, in the worker processes. Returns the graph files, loaded."""
    from schedulers.base import SchedulerError, make_scheduler
    from simgpu import hardware
    from simgpu.graphfile import LoadedGraph, is_graph_file, load_graph
    from simgpu.models import MODELS

    files: dict[str, LoadedGraph] = {}
    for m in models:
        if is_graph_file(m):
            try:
                files[m] = load_graph(m)
            except SimGPUError as e:
                raise SweepError(str(e).strip().splitlines()[0]) from None
        elif m not in MODELS:
            raise SweepError(
                f"unknown model '{printable(m)}' (see `simgpu models`), and no such graph file"
            )
    for kind, name in targets:
        try:
            (hardware.load_gpu if kind == "gpu" else hardware.load_machine)(name)
        except SimGPUError as e:
            raise SweepError(str(e).strip().splitlines()[0]) from None
    for sched, opts in variants.items():
        for o in opts:
            try:
                make_scheduler(sched, dict(o))
            except SchedulerError as e:
                raise SweepError(str(e).strip().splitlines()[0]) from None
    return files


def combo_graph(model: str, batch: int, image_size: int | None, dtype: str) -> OpGraph:
    """A row's graph: a built-in model, or the graph file the row names (loaded by path,
    in whichever process runs the row). A simgpu graph file has its own batch and dtype,
    which its rows record; IOS and ONNX files are rebuilt at the row's."""
    from simgpu.graphfile import is_graph_file, load_graph
    from simgpu.models import build_model

    if not is_graph_file(model):
        return build_model(model, batch, image_size, dtype)
    own = load_graph(model)
    if own.format == "opgraph":
        return own.graph
    return load_graph(model, batch=batch, image_size=image_size, dtype=dtype).graph


def _runtimes_of(sched: str, opts: tuple[tuple[str, str], ...], asked: list[str]) -> list[str]:
    """The runtimes one scheduler variant runs under: each asked for, else its own."""
    from schedulers.base import make_scheduler, runtime_of

    s = make_scheduler(sched, dict(opts))  # checked by _check_known
    return _dedupe([runtime_of(s, a).name for a in asked or [None]])


def _check_runtimes(names: list[str]) -> None:
    from simgpu.runtimes import UnknownRuntime, get_runtime

    for n in names:
        try:
            get_runtime(n)
        except UnknownRuntime as e:
            raise SweepError(str(e)) from None


def machine_for(gpu: str, machine: str) -> Machine:
    from simgpu import hardware

    if gpu:
        return hardware.Machine.single(hardware.load_gpu(gpu))
    return hardware.load_machine(machine)


# --- results files --------------------------------------------------------------------


def read_results(
    path: str | Path, hint: str = "give a results CSV written by `simgpu sweep`"
) -> list[dict[str, str]]:
    """Rows of a results CSV. A partial last line (a sweep killed mid-write) is ignored.
    ``hint`` ends the error for a file that is not one: what the caller should do."""
    p = Path(path)
    data = read_bytes(p, SweepError)  # a regular file under the size limit
    try:
        # Cut before decoding: a kill can split a multi-byte character too.
        text = _complete_prefix(data).decode("utf-8")
    except UnicodeDecodeError:
        raise SweepError(f"{p}: not a results CSV (not UTF-8 text)") from None
    return _parse_results(text, str(p), hint)


def _complete_prefix(data: bytes) -> bytes:
    return data[: data.rfind(b"\n") + 1]


def _parse_results(text: str, source: str, hint: str) -> list[dict[str, str]]:
    if not text:
        return []
    reader = csv.reader(io.StringIO(text, newline=""))
    header = tuple(next(reader))
    if header not in (COLUMNS, LEGACY_COLUMNS):
        raise SweepError(f"{source}: not a simgpu sweep results file (its header differs); {hint}")
    blank = dict.fromkeys(COLUMNS, "")  # a file from before the memory columns: empty cells
    rows = []
    for n, rec in enumerate(reader, start=2):
        if len(rec) != len(header):
            raise SweepError(f"{source}: line {n} has {len(rec)} fields, expected {len(header)}")
        rows.append(blank | dict(zip(header, rec, strict=True)))
    return rows


def results_layout(path: str | Path) -> tuple[str, ...] | None:
    """The columns a results file's header names (None: empty or not one of ours)."""
    try:
        with Path(path).open(newline="", encoding="utf-8") as f:
            header = tuple(next(csv.reader(f), ()))
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    return header if header in (COLUMNS, LEGACY_COLUMNS) else None


def lacks_memory(row: Mapping[str, str]) -> bool:
    """An ``ok`` row without the memory columns' values: written before they existed."""
    return row["status"] == "ok" and not row["peak_memory_mb"]


def row_key(row: Mapping[str, str]) -> tuple[str, ...]:
    return tuple(row[c] for c in KEY_COLUMNS)


def typed_value(column: str, text: str) -> Any:
    """A CSV cell as a Python value (None for an empty number)."""
    if column in INT_COLUMNS:
        return int(text) if text else None
    if column in FLOAT_COLUMNS:
        return float(text) if text else None
    return text


def _write_csv(path: Path, rows: Iterable[Mapping[str, str]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(COLUMNS)
        for r in rows:
            w.writerow([r[c] for c in COLUMNS])
    os.replace(tmp, path)


def write_parquet(rows: Sequence[Mapping[str, str]], path: Path) -> bool:
    """Write typed columns to Parquet if pyarrow is importable; False when it is not."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return False
    cols: dict[str, Any] = {}
    for c in COLUMNS:
        typ = (
            pa.int64() if c in INT_COLUMNS else pa.float64() if c in FLOAT_COLUMNS else pa.string()
        )
        cols[c] = pa.array([typed_value(c, r[c]) for r in rows], type=typ)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(pa.table(cols), tmp)
    os.replace(tmp, path)
    return True


# --- progress -------------------------------------------------------------------------


class Progress:
    """A one-line progress bar with an ETA on stderr, redrawn in place on a terminal.

    Elsewhere (a log, CI, a pipe) it prints nothing: a redirected stream holds results,
    not progress frames.
    """

    def __init__(self, total: int, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.total, self.done, self.failed = total, 0, 0
        self.stream = stream if stream is not None else sys.stderr
        tty = getattr(self.stream, "isatty", lambda: False)()
        self.enabled = enabled and total > 0 and tty
        self.t0 = time.perf_counter()
        self._last_draw = 0.0

    def update(self, failed: bool) -> None:
        self.done += 1
        self.failed += failed
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self._last_draw >= 0.1 or self.done == self.total:
            self._last_draw = now
            self.stream.write("\r" + self.line())
            self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()

    def line(self, width: int = 24) -> str:
        frac = self.done / self.total if self.total else 1.0
        filled = int(frac * width)
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / self.done * (self.total - self.done) if self.done else math.nan
        failed = f"  {self.failed} failed" if self.failed else ""
        return (
            f"sweep {self.done}/{self.total} [{'#' * filled}{'.' * (width - filled)}] "
            f"{100 * frac:3.0f}%  elapsed {_clock(elapsed)}  ETA {_clock(eta)}{failed}"
        )


def _clock(s: float) -> str:
    if math.isnan(s):
        return "?"
    s = round(s)
    return (
        f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
    )


# --- running --------------------------------------------------------------------------


@dataclass
class SweepResult:
    """What a sweep did: ``rows`` is the final file's content, in grid order."""

    path: Path
    rows: list[dict[str, str]]
    total: int  # combinations in the grid
    skipped: int  # already in the file before this run
    ran: int
    failed: int  # grid rows whose status is error or timeout (this run or earlier)
    kept: int  # rows of the file from outside this grid, kept after the grid's rows
    wall_s: float
    parquet: Path | None = None


def default_workers() -> int:
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def run_sweep(
    grid: Grid | Sequence[Combo],
    out: str | Path,
    *,
    workers: int | None = None,
    dask: Any = None,
    retry_failed: bool = False,
    timeout_s: float | None = None,
    progress: bool = True,
    progress_stream: TextIO | None = None,
) -> SweepResult:
    """Run every combination of ``grid`` not already in ``out`` and return the final rows.

    ``dask`` is None (local processes, ``workers`` of them; 1 runs in this process), a
    scheduler address, ``"local:N"`` for a LocalCluster of N workers started for the
    run, or a ``distributed.Client``. ``retry_failed`` reruns rows recorded as errors
    or timeouts. ``timeout_s`` limits each combination (local runs only).
    """
    t0 = time.perf_counter()
    path = Path(out)
    if path.is_dir():
        raise SweepError(f"{path} is a directory; give a CSV file name")
    if path.suffix.lower() == ".parquet":
        raise SweepError(f"{path}: give a .csv name; the Parquet copy is written beside it")
    combos = grid.combos() if isinstance(grid, Grid) else _dedupe(grid)
    if timeout_s is not None:
        if not (timeout_s > 0 and math.isfinite(timeout_s)):
            raise SweepError(f"the timeout must be a positive number of seconds, not {timeout_s}")
        if dask is not None:
            raise SweepError("--timeout applies to local workers, not to --dask")
        if not timeout_supported():
            raise SweepError("--timeout needs a POSIX system (and the main thread)")
    with _exclusive(path), _term_as_interrupt():
        return _run_locked(
            combos, path, t0, workers, dask, retry_failed, timeout_s, progress, progress_stream
        )


@contextlib.contextmanager
def _term_as_interrupt() -> Iterator[None]:
    """SIGTERM ends a sweep as Ctrl-C does: workers stopped, finished rows kept, exit
    130. By default it would kill this process alone and leave its workers running."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` for the whole sweep (load, append, final
    rewrite): a second sweep on the same file would otherwise append to a file the first
    one replaces, and lose rows. The lock is on ``<path>.lock`` beside it, which stays
    the same file across the rewrite; it is refused at once, not waited for."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no locking
        yield
        return
    lock = path.with_name(path.name + ".lock")
    try:
        f = lock.open("a+")
    except OSError as e:
        raise SweepError(f"cannot lock {path}: {lock}: {e.strerror or e}") from None
    with f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            who = f.read().strip()
            raise SweepError(
                f"{path} is being written by another sweep"
                + (f" (process {who})" if who.isdigit() else "")
                + "; wait for it to finish, or give another output file"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _run_locked(
    combos: list[Combo],
    path: Path,
    t0: float,
    workers: int | None,
    dask: Any,
    retry_failed: bool,
    timeout_s: float | None,
    progress: bool,
    progress_stream: TextIO | None,
) -> SweepResult:
    existing = _load_existing(path)
    finished = {
        row_key(r)
        for r in existing
        if (r["status"] in DONE or not retry_failed) and not lacks_memory(r)
    }
    todo = [c for c in combos if c.key() not in finished]
    keys = {c.key() for c in combos}
    stale = sum(1 for r in existing if lacks_memory(r) and row_key(r) in keys)

    bar = Progress(len(todo), progress_stream, enabled=progress)
    if progress and stale:
        print(
            f"sweep: {stale} ok rows of {path} predate the memory columns: running them again",
            file=bar.stream,
            flush=True,
        )
    if progress and len(todo) < len(combos):
        done = len(combos) - len(todo)
        print(
            f"sweep: {done} of {len(combos)} combinations already in {path}",
            file=bar.stream,
            flush=True,
        )
    lost: list[str] = []
    try:
        with _Appender(path) as app:

            def record(row: dict[str, str]) -> None:
                app.write(row)
                bar.update(row["status"] not in DONE)

            if todo:
                if dask is not None:
                    lost = _run_dask(todo, dask, record)
                elif (workers or default_workers()) <= 1 or len(todo) == 1:
                    for c in todo:
                        record(run_combo(c, timeout_s))
                else:
                    n = workers or default_workers()
                    lost = _run_processes(todo, n, record, timeout_s)
    finally:
        bar.close()
    if lost:
        raise SweepError(
            f"{len(lost)} combination(s) were lost with their worker ({lost[0]}); "
            f"the finished rows are in {path}: rerun the same command to resume"
        )
    rows, kept = _finalise(path, combos)
    parquet = path.with_suffix(".parquet")
    try:
        wrote_parquet = write_parquet(rows, parquet)
    except OSError as e:
        raise SweepError(f"cannot write {parquet}: {_one_line(e)}") from None
    failed = sum(1 for r in rows if r["status"] not in DONE and row_key(r) in keys)
    return SweepResult(
        path,
        rows,
        total=len(combos),
        skipped=len(combos) - len(todo),
        ran=len(todo),
        failed=failed,
        kept=kept,
        wall_s=time.perf_counter() - t0,
        parquet=parquet if wrote_parquet else None,
    )


def _load_existing(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    # the sweep appends to -o: a file of something else is not overwritten
    rows = read_results(path, "give another output file (-o)")
    if results_layout(path) == LEGACY_COLUMNS:
        # rows are appended in the current layout: rewrite the old ones in it first (their
        # memory cells empty; a kill after this leaves a valid file of the new layout)
        try:
            _write_csv(path, rows)
        except OSError as e:
            raise SweepError(f"cannot rewrite {path}: {e.strerror or e}") from None
        return rows
    # Drop a partial last line now, so appended rows start on a line of their own.
    try:
        data = path.read_bytes()
        if not data.endswith(b"\n"):
            with path.open("r+b") as f:
                f.truncate(len(_complete_prefix(data)))
    except OSError as e:
        raise SweepError(f"cannot repair {path}: {e.strerror or e}") from None
    return rows


class _Appender:
    """Appends rows to the results CSV, flushing each, so a kill loses at most one line."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> _Appender:
        try:
            new = not self.path.exists() or self.path.stat().st_size == 0
            self.f = self.path.open("a", newline="", encoding="utf-8")
        except OSError as e:
            raise SweepError(f"cannot write {self.path}: {e.strerror or e}") from None
        self.w = csv.writer(self.f, lineterminator="\n")
        if new:
            self.w.writerow(COLUMNS)
            self.f.flush()
        return self

    def write(self, row: Mapping[str, str]) -> None:
        self.w.writerow([row[c] for c in COLUMNS])
        self.f.flush()

    def __exit__(self, *exc: object) -> None:
        self.f.close()


def _finalise(path: Path, combos: Sequence[Combo]) -> tuple[list[dict[str, str]], int]:
    """Rewrite the file: one row per key (the latest wins), grid order, then other rows."""
    latest: dict[tuple[str, ...], dict[str, str]] = {}
    for r in read_results(path):
        latest.pop(row_key(r), None)
        latest[row_key(r)] = r
    rows = [latest.pop(c.key()) for c in combos if c.key() in latest]
    kept = list(latest.values())
    _write_csv(path, rows + kept)
    return rows + kept, len(kept)


def _run_processes(
    todo: Sequence[Combo],
    workers: int,
    record: Callable[[dict[str, str]], None],
    timeout_s: float | None = None,
) -> list[str]:
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    ctx = _mp_context()
    lost: list[str] = []
    ex = ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx)
    try:
        futures = {ex.submit(run_combo, c, timeout_s): c for c in todo}
        for fut in as_completed(futures):
            try:
                row = fut.result()
            except BrokenProcessPool:
                lost.append(futures[fut].label())
                continue
            record(row)
    except BaseException:  # interrupted (SIGINT, SIGTERM): stop the workers, not wait
        for proc in list(getattr(ex, "_processes", {}).values()):
            proc.terminate()
        ex.shutdown(wait=True, cancel_futures=True)
        raise
    ex.shutdown(wait=True)
    return lost


def _mp_context() -> Any:
    """Workers must start clean (no inherited threads or state): fork is out. A fork
    server that has imported simgpu and every scheduler once starts each worker in
    milliseconds, where a spawned worker pays a second or more of imports."""
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    from schedulers.base import discover

    mods = sorted({info.cls.__module__ for info in discover().values()})
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["simgpu.sweep", "simgpu.models", "schedulers.base", *mods])
    return ctx


def _run_dask(
    todo: Sequence[Combo], dask: Any, record: Callable[[dict[str, str]], None]
) -> list[str]:
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise SweepError("--dask needs Dask: pip install 'simgpu[dask]'") from None
    cluster = None
    if isinstance(dask, Client):
        client, own = dask, False
    else:
        spec = str(dask)
        try:
            if spec.startswith("local:"):
                n = _local_workers(spec)
                cluster = LocalCluster(
                    n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None
                )
                client = Client(cluster)
            else:
                _check_reachable(spec)
                client = Client(spec, timeout="15s")
        except (OSError, TimeoutError, ValueError) as e:
            if cluster is not None:
                cluster.close()
            raise SweepError(f"cannot connect to Dask scheduler {spec!r}: {_one_line(e)}") from None
        own = True
    lost: list[str] = []
    try:
        futures = [client.submit(run_combo, c, pure=False) for c in todo]
        by_key = {f.key: c for f, c in zip(futures, todo, strict=True)}
        for fut in as_completed(futures):
            try:
                row = fut.result()
            except Exception as e:  # a worker died (KilledWorker) or the cluster went away
                lost.append(f"{by_key[fut.key].label()}: {_one_line(e)}")
                continue
            record(row)
    finally:
        if own:
            client.close()
            if cluster is not None:
                cluster.close()
    return lost


def _check_reachable(spec: str) -> None:
    """Fail at once on a TCP address nobody listens on (Dask would retry until its timeout)."""
    import socket

    rest = spec.removeprefix("tcp://")
    if "://" in rest:
        return  # another transport: leave it to Dask
    host, colon, port = rest.rpartition(":")
    if not colon or not port.isdigit():
        raise SweepError(f"--dask {spec!r}: expected HOST:PORT, tcp://HOST:PORT or local:N")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=10):
            pass
    except OSError as e:
        raise SweepError(f"cannot connect to Dask scheduler {spec!r}: {e.strerror or e}") from None


def _local_workers(spec: str) -> int:
    text = spec.partition(":")[2]
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n <= 0:
        raise SweepError(f"--dask {spec!r}: expected local:N with N a positive integer")
    return n


def without_wall_time(rows: Iterable[Mapping[str, str]]) -> list[dict[str, str]]:
    """Rows minus the wall-clock columns: what must be identical between two runs."""
    return [{c: r[c] for c in COLUMNS if c not in WALL_COLUMNS} for r in rows]


__all__ = [
    "COLUMNS",
    "KEY_COLUMNS",
    "LEGACY_COLUMNS",
    "MEMORY_COLUMNS",
    "WALL_COLUMNS",
    "CombinationTimeout",
    "Combo",
    "Grid",
    "Progress",
    "SweepError",
    "SweepResult",
    "grid_from_dict",
    "lacks_memory",
    "limit_text",
    "load_grid",
    "parse_memory_limit_args",
    "parse_option_args",
    "read_results",
    "run_combo",
    "run_sweep",
    "typed_value",
    "without_wall_time",
]
