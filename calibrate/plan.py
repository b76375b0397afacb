"""The whole GPU measurement plan in one resumable, budgeted run.

    python -m calibrate.plan --out DIR --budget-s 300 [--device 0] [--dry-run] [--pack FILE]

Steps, most valuable first (each a set of sub-steps, the unit of resume):

1. ``probe`` — NVML and CUDA device properties -> ``probe.json`` (the GPU spec that the
   validation simulates with: the "before the fit" spec).
2. ``microbench/<bench>`` — launch overheads (eager op, raw kernel, CUDA Graph node),
   event record and cross-stream wait latency, kernel time against grid size (waves),
   two spin kernels co-running (overlap), copies alone and paired (bandwidth),
   ``CUDA_DEVICE_MAX_CONNECTIONS`` 1 against 8 -> ``microbench/<bench>.json`` and ``.csv``
   (:mod:`calibrate.microbench`'s benchmarks and file format).
3. ``corun/kernels``, ``corun/<class>`` — co-run interference: tensor-core GEMMs, CUDA-core
   FMA kernels and memory-bound copies at three grid sizes each, alone and in pairs on
   two streams (:mod:`calibrate.corun`) -> ``corun/*.json``.
4. ``profile/<model>-b<batch>`` — every distinct op of the model timed alone, with the
   kernels the profiler saw and its memory (peak over its inputs, output, workspace:
   :func:`calibrate.profile.op_peak_memory`) -> ``kernels-<model>-b<batch>.json`` (a
   kernel table, :mod:`calibrate.profile`'s format); resumable per op.
5. ``validate/<model>`` — every single-GPU scheduler's program replayed by the executor,
   against its simulated latency, and its peak memory against the simulated one
   (:data:`calibrate.validate.MEMORY_NOTE`) -> ``validation-<model>.json``
   (:mod:`calibrate.validate`'s format: ``simgpu calibrate validate --recorded FILE``
   re-simulates it anywhere) and one Kineto trace, ``kineto-<model>.json.gz``;
   resumable per scheduler.
6. ``fit`` — ``calibration.json`` (probe spec + microbenchmark fields + kernel tables,
   :func:`calibrate.fit.calibration`, + the ops' measured memory as ``memory.ops``), and
   ``summary`` — ``summary.json`` / ``summary.md``:
   validation MAPE and Kendall tau before and after the fit, co-run ratios measured /
   simulated, microbenchmark checks. Both are redone when their inputs changed.

**Budget.** The clock starts with the process. Before each sub-step the plan estimates
its cost — from what the state file recorded for it or for its kind (seconds per op, per
schedule), else a conservative default — and runs it only if it fits in what is left
after a reserve for ``fit`` and ``summary``; otherwise it is skipped (for this run) and
the plan goes on, since a later, cheaper step may fit (the probe alone ignores the
reserve: without it little else is of use). Sub-steps made of units (ops, schedules)
stop between units when the time is up — the seconds per unit being what was recorded,
or what this attempt has taken so far if more — and are kept as ``partial``; a
validation starts as soon as one schedule fits, since each is of use alone.

**State.** ``DIR/plan.json`` records every sub-step's status (``done``, ``partial``,
``failed``), wall time, units, outputs and, for a failure, its one-line reason (the
traceback goes to ``DIR/plan.log``), plus a log of runs. A second run keeps what is
``done`` and re-attempts the rest, partial ones from the unit where they stopped. A
sub-step the process died in (a hang ended by ``timeout``) is marked ``killed`` and
skipped by later runs unless ``--retry-killed``. ``--only STEP`` limits a run to some
steps. Exit status: 0 when anything has been measured, else 2 with one
``simgpu: error:`` line.

**Validation runtimes.** The executor runs each op as a PyTorch functional call, eagerly
or captured in a CUDA Graph, so each schedule is simulated under ``pytorch-eager`` or
``cuda-graph`` — the runtime it really ran under; ``native_runtime`` and
``native_simulated_ms`` keep the scheduler's own (a C++ cuDNN runtime for IOS, say).

**Devices.** The steps measure through :class:`calibrate.device.Device`: a CUDA GPU
(:class:`calibrate.device.TorchDevice`), or with ``--dry-run`` the simulator on the CPU
(:class:`calibrate.fakedevice.FakeDevice`, a virtual clock that advances as the GPU's
would, no torch import). Same steps, same files, ``"fake": true`` in them. The memory
primitives (``op_memory``, ``program_memory``) are optional: a device without them
measures no memory, and the files have no memory fields.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import math
import statistics
import sys
import tarfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from calibrate.errors import CalibrationError
from simgpu.errors import SimGPUError

FORMAT = "simgpu.plan"
VERSION = 1
GROUPS = ("probe", "microbench", "corun", "profile", "validate")
MICROBENCHES = ("launch", "events", "waves", "overlap", "bandwidth", "connections")
PROFILE_DEFAULT = (("inception_v3", 1), ("googlenet", 1), ("resnet50", 1), ("resnet50", 32))
VALIDATE_DEFAULT = ("inception_v3", "squeezenet1_1")
# the program a model's Kineto trace records: an eager multi-stream one first
TRACE_PREFERENCE = ("ios", "greedy", "heft", "lios", "sequential")

# First-time cost estimates (seconds on a GPU, set-up included), used until the state
# file has recorded the real figure: on the safe side, not far from it.
DEFAULT_COST = {
    "probe": 15.0,
    "microbench/launch": 20.0,
    "microbench/events": 10.0,
    "microbench/waves": 15.0,
    "microbench/overlap": 15.0,
    "microbench/bandwidth": 10.0,
    "microbench/connections": 30.0,
    "corun/kernels": 25.0,
    "corun/pairs": 15.0,
    "fit": 5.0,
    "summary": 15.0,
}
PROFILE_FIXED_S = 8.0  # model build, profiler session
PROFILE_PER_OP_S = 0.4
VALIDATE_FIXED_S = 8.0  # model build, Kineto trace
TRACE_S = 6.0  # a Kineto trace: executor set-up, warm-up, profiler export
VALIDATE_PER_SCHEDULE_S = 5.0
MARGIN = 1.25  # on estimates learned from recorded times


def _now_iso() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")


def _one_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    msg = s[0] if s else ""
    if isinstance(e, SimGPUError):
        return msg or type(e).__name__
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def write_json(path: Path, data: Any) -> Path:
    """Write JSON atomically (a killed run leaves the old file or the new, never half)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(data, indent=1, allow_nan=True) + "\n")
        tmp.replace(path)
    except OSError as e:
        raise CalibrationError(f"cannot write {path}: {e.strerror or e}") from None
    return path


def _normal(x: Any) -> Any:
    """``x`` as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(x))


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise CalibrationError(f"{path}: unreadable ({e})") from None


# --- configuration and state ----------------------------------------------------------


@dataclass
class Config:
    out: Path
    budget_s: float = 300.0
    profile: tuple[tuple[str, int], ...] = PROFILE_DEFAULT
    validate: tuple[str, ...] = VALIDATE_DEFAULT
    schedulers: tuple[str, ...] | None = None  # None: every single-GPU scheduler
    microbench: tuple[str, ...] = MICROBENCHES
    groups: tuple[str, ...] = GROUPS  # measurement steps to consider (fit, summary always)
    retry_killed: bool = False  # re-attempt sub-steps an earlier run died in
    repeats: int = 20  # microbenchmarks, co-run, per-op timing
    op_warmup: int = 10
    validate_warmup: int = 5
    validate_repeats: int = 20


@dataclass
class Outcome:
    status: str  # "done" | "partial"
    outputs: list[str] = field(default_factory=list)
    units: int = 0  # units measured by this attempt (ops, schedules, pairs)
    note: str = ""


@dataclass
class Step:
    key: str
    group: str
    run: Callable[[], Outcome]
    estimate: Callable[[], float]
    needs: tuple[str, ...] = ()
    derived: bool = False  # fit, summary: redone when what they read has changed
    # the least it needs to start, when less than ``estimate``: a sub-step whose units
    # are each of use alone (a validated schedule) starts if one unit fits
    minimum: Callable[[], float] | None = None


class State:
    """``plan.json``: each sub-step's record and the log of runs."""

    def __init__(self, out: Path) -> None:
        self.path = out / "plan.json"
        self.data: dict[str, Any] = {"format": FORMAT, "version": VERSION, "steps": {}, "runs": []}
        self.recovered: str | None = None
        if self.path.exists():
            try:
                d = json.loads(self.path.read_text())
                if not (isinstance(d, dict) and d.get("format") == FORMAT and isinstance(d.get("steps"), dict)):  # fmt: skip
                    raise ValueError("not a plan state file")
                d.setdefault("runs", [])
                self.data = d
            except (OSError, ValueError) as e:
                bad = self.path.with_name("plan.json.bad")
                self.path.replace(bad)
                self.recovered = f"{self.path} was unreadable ({e}); moved to {bad.name}, starting afresh"  # fmt: skip

    @property
    def steps(self) -> dict[str, dict[str, Any]]:
        return self.data["steps"]

    def get(self, key: str) -> dict[str, Any]:
        return self.steps.get(key, {})

    def status(self, key: str) -> str | None:
        return self.get(key).get("status")

    def update(self, key: str, **fields: Any) -> None:
        self.steps.setdefault(key, {}).update(fields)
        self.save()

    def next_seq(self) -> int:
        """A number that grows with every finished sub-step (what derived steps compare)."""
        self.data["seq"] = int(self.data.get("seq", 0)) + 1
        return self.data["seq"]

    def save(self) -> None:
        write_json(self.path, self.data)


# --- the plan ---------------------------------------------------------------------------


class Plan:
    """The steps over one device and one output folder (see the module's docstring)."""

    def __init__(
        self,
        config: Config,
        device: Any,
        log: Callable[[str], None] | None = None,
        spent_s: float = 0.0,
    ) -> None:
        self.cfg = config
        self.dev = device
        self.out = Path(config.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.state = State(self.out)
        self.t0 = device.now() - spent_s
        self.fake = getattr(device, "kind", "") == "fake"
        self._log_ext = log
        self._info: dict[str, Any] | None = None
        self._spec: Any = None
        self._programs: dict[tuple[str, str], tuple[Any, Any]] = {}
        self.run_log: dict[str, Any] = {}

    # --- clock and log -------------------------------------------------------------------

    def elapsed(self) -> float:
        return self.dev.now() - self.t0

    def left(self) -> float:
        return self.cfg.budget_s - self.elapsed()

    def room(self) -> float:
        """Time left for measuring: what is left less the reserve for fit and summary."""
        return self.left() - self.reserve()

    def reserve(self) -> float:
        return self.estimate_simple("fit") + self.estimate_simple("summary")

    def log(self, msg: str) -> None:
        line = f"[{self.elapsed():7.1f}s] {msg}"
        if self._log_ext is not None:
            self._log_ext(line)
        try:
            with open(self.out / "plan.log", "a") as f:
                f.write(line + "\n")
        except OSError:
            pass

    def _log_traceback(self, key: str, e: BaseException) -> None:
        try:
            with open(self.out / "plan.log", "a") as f:
                f.write(f"--- {key} failed:\n")
                f.write("".join(traceback.format_exception(type(e), e, e.__traceback__)))
        except OSError:
            pass

    # --- shared inputs --------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        if self._info is None:
            try:
                self._info = dict(self.dev.info())
            except Exception as e:  # info is decoration: never a reason to stop
                self._info = {"kind": getattr(self.dev, "kind", "?"), "error": _one_line(e)}
        return self._info

    def meta(self) -> dict[str, Any]:
        i = self.info()
        m = {"device": i.get("device"), "torch": i.get("torch"), "cuda": i.get("cuda")}
        if self.fake:
            m["fake"] = True
        return m

    def probe_spec(self) -> Any:
        """The GPU the probe found: what validation simulates with, before the fit."""
        if self._spec is None:
            from simgpu.hardware import gpu_from_json

            data = read_json(self.out / "probe.json")
            self._spec = gpu_from_json(data, source=str(self.out / "probe.json"))
        return self._spec

    def schedulers(self) -> list[str]:
        if self.cfg.schedulers is not None:
            return list(self.cfg.schedulers)
        from schedulers.base import scheduler_names

        return scheduler_names(single_gpu_only=True)

    # --- estimates ---------------------------------------------------------------------------

    def estimate_simple(self, key: str) -> float:
        rec = self.state.get(key)
        default = DEFAULT_COST.get(key)
        if default is None:
            default = DEFAULT_COST[key.split("/")[0] + "/pairs"]
        if rec.get("wall_s") is not None:
            return max(0.5, float(rec["wall_s"]) * MARGIN)
        return default

    def rate(self, group: str, default: float) -> float:
        """Seconds per unit of a group's sub-steps, from what the state recorded."""
        walls = units = 0.0
        for key, rec in self.state.steps.items():
            if key.startswith(group + "/") and rec.get("units") and rec.get("unit_s") is not None:
                walls += float(rec["unit_s"])
                units += float(rec["units"])
        return walls / units * MARGIN if units else default

    # --- steps ------------------------------------------------------------------------------

    def steps(self) -> list[Step]:
        from calibrate.corun import CLASSES

        s: list[Step] = [
            Step("probe", "probe", self.do_probe, lambda: self.estimate_simple("probe"))
        ]
        for b in self.cfg.microbench:
            key = f"microbench/{b}"
            s.append(Step(key, "microbench", lambda b=b: self.do_microbench(b),
                          lambda k=key: self.estimate_simple(k)))  # fmt: skip
        s.append(Step("corun/kernels", "corun", self.do_corun_kernels,
                      lambda: self.estimate_simple("corun/kernels"), needs=("probe",)))  # fmt: skip
        for cls in CLASSES:
            key = f"corun/{cls}"
            s.append(Step(key, "corun", lambda c=cls: self.do_corun_pairs(c),
                          lambda k=key: self.estimate_simple(k), needs=("corun/kernels",)))  # fmt: skip
        for model, batch in self.cfg.profile:
            key = f"profile/{model}-b{batch}"
            s.append(Step(key, "profile", lambda m=model, b=batch: self.do_profile(m, b),
                          lambda m=model, b=batch: self.estimate_profile(m, b)))  # fmt: skip
        for model in self.cfg.validate:
            key = f"validate/{model}"
            s.append(Step(key, "validate", lambda m=model: self.do_validate(m),
                          lambda m=model: self.estimate_validate(m), needs=("probe",),
                          minimum=lambda: self.rate("validate", VALIDATE_PER_SCHEDULE_S)))  # fmt: skip
        s.append(Step("fit", "fit", self.do_fit, lambda: self.estimate_simple("fit"),
                      needs=("probe",), derived=True))  # fmt: skip
        s.append(Step("summary", "summary", self.do_summary,
                      lambda: self.estimate_simple("summary"), derived=True))  # fmt: skip
        return s

    def _inputs(self, step: Step) -> dict[str, int]:
        """What a derived step reads: every other sub-step's finish time."""
        return {
            k: int(r.get("seq", 0))
            for k, r in sorted(self.state.steps.items())
            if k != step.key
            and r.get("status") in ("done", "partial")
            and (step.key == "summary" or k != "summary")
        }

    def run(self) -> int:
        """Run what is not done yet, within the budget; the exit status."""
        st = self.state
        if st.recovered:
            self.log(st.recovered)
        info = self.info()
        run: dict[str, Any] = {
            "started": _now_iso(),
            "budget_s": self.cfg.budget_s,
            "device": info,
            "clock": "virtual (fake device)" if self.fake else "monotonic",
            "ran": [],
            "kept": [],
            "skipped": {},
            "failed": {},
        }
        self.run_log = run
        st.data["runs"].append(run)
        st.save()
        self.log(f"plan: {self.out} on {info.get('device')} ({'dry run, fake device' if self.fake else 'CUDA'}), budget {self.cfg.budget_s:.0f} s")  # fmt: skip
        for key, rec in st.steps.items():
            if rec.pop("running", False):  # the process died inside it: a hang, or a kill
                rec.update(status="failed", killed=int(rec.get("killed", 0)) + 1,
                           reason="killed while running, in an earlier run")  # fmt: skip
                self.log(f"{key}: was killed while running in an earlier run")
        for step in self.steps():
            if not step.derived and step.group not in self.cfg.groups and step.key != "probe":
                continue
            rec = st.get(step.key)
            if step.derived:
                if rec.get("status") == "done" and rec.get("inputs") == self._inputs(step):
                    run["kept"].append(step.key)
                    continue
            elif rec.get("status") == "done":
                run["kept"].append(step.key)
                continue
            if rec.get("killed") and not step.derived and not self.cfg.retry_killed:
                run["skipped"][step.key] = "killed in an earlier run (--retry-killed tries it)"
                self.log(f"{step.key}: skipped (killed in an earlier run; --retry-killed tries it)")
                continue
            missing = [n for n in step.needs if st.status(n) not in ("done", "partial")]
            if missing:
                run["skipped"][step.key] = f"needs {', '.join(missing)}"
                self.log(f"{step.key}: skipped (needs {', '.join(missing)})")
                continue
            if step.derived and not self._inputs(step):
                run["skipped"][step.key] = "nothing measured yet"
                continue
            est = step.estimate()
            need = min(est, step.minimum()) if step.minimum is not None else est
            # the probe comes first whatever the reserve: without it little else is of use
            avail = self.left() if step.derived or step.key == "probe" else self.room()
            if need > avail:
                why = f"budget: ~{est:.0f} s needed, {max(0.0, avail):.0f} s left"
                run["skipped"][step.key] = why
                self.log(f"{step.key}: skipped ({why})")
                continue
            self._attempt(step, est)
        run["wall_s"] = round(self.elapsed(), 3)
        run["finished"] = _now_iso()
        st.save()
        measured = [k for k, r in st.steps.items()
                    if k not in ("fit", "summary") and r.get("status") in ("done", "partial")]  # fmt: skip
        self.log(f"plan: {len(run['ran'])} ran, {len(run['kept'])} kept, {len(run['skipped'])} skipped, "
                 f"{len(run['failed'])} failed; {len(measured)} sub-steps measured in all")  # fmt: skip
        return 0 if measured else 2

    def _attempt(self, step: Step, est: float) -> None:
        st = self.state
        rec = st.get(step.key)
        self.log(f"{step.key}: start (~{est:.0f} s)")
        st.update(step.key, started=_now_iso(), attempts=int(rec.get("attempts", 0)) + 1,
                  running=True)  # fmt: skip
        t0 = self.elapsed()
        try:
            res = step.run()
        except KeyboardInterrupt:
            st.update(step.key, status="failed", reason="interrupted", running=False,
                      wall_s=round(self.elapsed() - t0, 3))  # fmt: skip
            raise
        except Exception as e:
            wall = self.elapsed() - t0
            reason = _one_line(e)
            self._log_traceback(step.key, e)
            st.update(step.key, status="failed", reason=reason, wall_s=round(wall, 3),
                      finished=_now_iso(), running=False)  # fmt: skip
            self.run_log["failed"][step.key] = reason
            self.log(f"{step.key}: FAILED ({wall:.1f} s): {reason}")
            return
        wall = self.elapsed() - t0
        fields: dict[str, Any] = {
            "status": res.status,
            "wall_s": round(wall, 3),
            "outputs": res.outputs,
            "finished": _now_iso(),
            "seq": st.next_seq(),
            "reason": res.note or None,
            "running": False,
            "killed": 0,
        }
        if res.units:
            fields["units"] = int(rec.get("units", 0)) + res.units
            fields["unit_s"] = float(rec.get("unit_s", 0.0)) + wall
        if step.derived:
            fields["inputs"] = self._inputs(step)
        st.update(step.key, **fields)
        self.run_log["ran"].append(step.key)
        note = f": {res.note}" if res.note else ""
        self.log(f"{step.key}: {res.status} ({wall:.1f} s){note}")

    # --- 1. probe ---------------------------------------------------------------------------

    def do_probe(self) -> Outcome:
        data = self.dev.probe()
        write_json(self.out / "probe.json", data)
        self._spec = None
        return Outcome("done", ["probe.json"])

    # --- 2. microbenchmarks ------------------------------------------------------------------

    def do_microbench(self, name: str) -> Outcome:
        from calibrate.microbench import _write_samples

        raw = self.dev.microbench(name, self.cfg.repeats)
        d = self.out / "microbench"
        write_json(d / f"{name}.json", {"bench": name, **self.meta(), "raw": raw})
        _write_samples(d / f"{name}.csv", raw)
        outs = [f"microbench/{name}.json"]
        if (d / f"{name}.csv").exists():
            outs.append(f"microbench/{name}.csv")
        return Outcome("done", outs)

    # --- 3. co-run interference ----------------------------------------------------------------

    def do_corun_kernels(self) -> Outcome:
        from calibrate.corun import default_kernels

        spec = self.probe_spec()
        kernels = default_kernels(spec.sm_count, spec.max_threads_per_sm)
        rows: dict[str, Any] = {}
        failures: dict[str, str] = {}
        for ck in kernels:
            try:
                samples = self.dev.time_kernels([ck], self.cfg.repeats)
            except Exception as e:
                failures[ck.name] = _one_line(e)
                self._log_traceback(f"corun kernel {ck.name}", e)
                continue
            rows[ck.name] = {"spec": ck.to_json(), "alone_us": samples}
        if not rows:
            raise CalibrationError(f"no co-run kernel ran: {next(iter(failures.values()))}")
        data: dict[str, Any] = {**self.meta(), "repeats": self.cfg.repeats, "kernels": rows,
                                "failures": failures}  # fmt: skip
        try:
            ok = [ck for ck in kernels if ck.name in rows]
            configs = self.dev.kernel_configs(ok)
            for n, c in configs.items():
                if n in rows:
                    rows[n]["configs"] = c
        except Exception as e:
            data["configs_error"] = _one_line(e)
            self._log_traceback("corun kernel configurations", e)
        write_json(self.out / "corun" / "kernels.json", data)
        note = f"{len(failures)} kernel(s) failed" if failures else ""
        return Outcome("done", ["corun/kernels.json"], units=len(rows), note=note)

    def do_corun_pairs(self, cls: str) -> Outcome:
        from calibrate.corun import CoKernel, pairs

        kr = read_json(self.out / "corun" / "kernels.json")
        ks = {n: CoKernel.from_json(r["spec"]) for n, r in kr.get("kernels", {}).items()}
        out, failures = [], {}
        for a, b in pairs(list(ks.values())).get(cls, []):
            try:
                ends = self.dev.time_kernels([ks[a], ks[b]], self.cfg.repeats)
            except Exception as e:
                failures[f"{a}+{b}"] = _one_line(e)
                self._log_traceback(f"corun pair {a}+{b}", e)
                continue
            out.append({"a": a, "b": b, "ends_us": ends})
        if not out:
            why = next(iter(failures.values()), "no pair of this class among the measured kernels")  # fmt: skip
            raise CalibrationError(f"no {cls} pair ran: {why}")
        name = f"corun/{cls}.json"
        write_json(self.out / name, {**self.meta(), "class": cls, "repeats": self.cfg.repeats,
                                     "pairs": out, "failures": failures})  # fmt: skip
        return Outcome("done", [name], units=len(out),
                       note=f"{len(failures)} pair(s) failed" if failures else "")  # fmt: skip

    # --- 4. per-op profiles ----------------------------------------------------------------------

    def _distinct_ops(self, model: str, batch: int) -> tuple[Any, dict[str, str]]:
        from calibrate.profile import op_call
        from simgpu.kernels import signature
        from simgpu.models import build_model

        graph = build_model(model, batch=batch)
        seen: dict[str, str] = {}
        for name in graph.topo_order:
            if op_call(graph, name) is not None:
                seen.setdefault(signature(graph, name), name)
        return graph, seen

    def _profile_partial(self, model: str, batch: int) -> Path:
        return self.out / f"kernels-{model}-b{batch}.partial.json"

    def estimate_profile(self, model: str, batch: int) -> float:
        _, ops = self._distinct_ops(model, batch)
        p = self._profile_partial(model, batch)
        done = 0
        if p.exists():
            with contextlib.suppress(CalibrationError):
                done = len(read_json(p).get("ops", {}))
        per = self.rate("profile", PROFILE_PER_OP_S)
        return PROFILE_FIXED_S + max(0, len(ops) - done) * per

    def do_profile(self, model: str, batch: int) -> Outcome:
        from calibrate.profile import OpProfile, write_table

        graph, ops = self._distinct_ops(model, batch)
        ppath = self._profile_partial(model, batch)
        timed: dict[str, Any] = {}
        if ppath.exists():
            try:
                timed = dict(read_json(ppath).get("ops", {}))
            except CalibrationError:
                timed = {}
        per = self.rate("profile", PROFILE_PER_OP_S)
        new = 0
        t0 = self.elapsed()
        failed: dict[str, str] = {}
        op_memory = getattr(self.dev, "op_memory", None)
        if op_memory is None:
            self.log(f"profile {model}: this device has no op_memory: op memory not measured")
        for sig, name in ops.items():
            if sig in timed:
                continue
            # seconds per op: as recorded, or as this attempt has gone so far if slower
            per = max(per, (self.elapsed() - t0) / new) if new else per
            if self.room() < per + 2.0:
                write_json(ppath, {"model": model, "batch": batch, "ops": timed})
                return Outcome("partial", [ppath.name], units=new,
                               note=f"time up: {len(timed)}/{len(ops)} ops timed")  # fmt: skip
            try:
                samples = self.dev.time_op(graph, name, self.cfg.op_warmup, self.cfg.repeats)
            except Exception as e:  # one op that will not run costs only itself
                failed[name] = _one_line(e)
                self._log_traceback(f"profile {model} op {name}", e)
                continue
            timed[sig] = {"op": name, "median_us": float(statistics.median(samples)),
                          "samples": len(samples)}  # fmt: skip
            if op_memory is not None:  # a failed memory reading costs only the memory
                try:
                    timed[sig].update(op_memory(graph, name))
                except Exception as e:
                    self._log_traceback(f"profile {model} op {name} memory", e)
            new += 1
            if new % 10 == 0:
                write_json(ppath, {"model": model, "batch": batch, "ops": timed})
        write_json(ppath, {"model": model, "batch": batch, "ops": timed})
        if not timed:
            raise CalibrationError(f"{model}: no op could be timed: {next(iter(failed.items()))}")
        kernels = self.dev.op_kernels(graph, [ops[s] for s in ops if s in timed])
        profiles, empty = [], []
        for sig, name in ops.items():
            if sig not in timed:
                continue
            ks = kernels.get(name) or []
            ks = [k for k in ks if int(k.get("grid", 0)) >= 1 and float(k.get("duration_us", 0)) > 0]  # fmt: skip
            if not ks:
                empty.append(name)
                continue
            t = timed[sig]
            profiles.append(OpProfile(sig, name, t["median_us"], t["samples"], tuple(ks),
                                      t.get("peak_memory_bytes"), t.get("output_bytes")))  # fmt: skip
        if not profiles:
            raise CalibrationError(f"{model}: the profiler saw no kernel of any op")
        name = f"kernels-{model}-b{batch}.json"
        write_table(self.out / name, profiles, {"model": model, "batch": batch, "dtype": "fp32",
                                                **self.meta(), "no_kernels": empty,
                                                "failed_ops": failed})  # fmt: skip
        self.dev.release()
        note = []
        if empty:
            note.append(f"{len(empty)} op(s) without a recorded kernel")
        if failed:  # kept partial: a later run retries these ops, and only them
            note.append(f"{len(failed)} op(s) failed: {next(iter(failed.values()))}")
            return Outcome("partial", [name, ppath.name], units=new, note="; ".join(note))
        ppath.unlink(missing_ok=True)
        return Outcome("done", [name], units=new, note="; ".join(note))

    # --- 5. validation ---------------------------------------------------------------------------

    def estimate_validate(self, model: str) -> float:
        left = len(self.schedulers())
        p = self.out / f"validation-{model}.json"
        trace = VALIDATE_FIXED_S
        if p.exists():
            try:
                rec = read_json(p)
                left -= len(self._validated(rec))
                if rec.get("trace"):
                    trace = 0.0
            except CalibrationError:
                pass
        return trace + max(0, left) * self.rate("validate", VALIDATE_PER_SCHEDULE_S)

    @staticmethod
    def _validated(rec: dict[str, Any]) -> set[str]:
        """Schedulers a validation record has finished: measured, or skipped by design."""
        done = {e["scheduler"] for e in rec.get("schedules", [])}
        done |= {n for n, why in rec.get("failures", {}).items() if str(why).startswith("skipped")}
        return done

    def do_validate(self, model: str) -> Outcome:
        from calibrate.validate import FORMAT as VFORMAT
        from calibrate.validate import MEMORY_NOTE, simulated_peak_memory
        from calibrate.validate import VERSION as VVERSION
        from schedulers.base import SchedulerSkipped, run_scheduler
        from simgpu.hardware import Machine
        from simgpu.models import build_model
        from simgpu.program import lower
        from simgpu.runtimes import get_runtime
        from simgpu.schedule import schedule_to_json
        from simgpu.sim.engine import simulate

        gpu = self.probe_spec()
        machine = Machine.single(gpu)
        graph = build_model(model, batch=1)
        path = self.out / f"validation-{model}.json"
        rec: dict[str, Any] | None = None
        if path.exists():
            try:
                rec = read_json(path)
                if rec.get("format") != VFORMAT or rec.get("gpu") != _normal(gpu.to_json()):
                    rec = None  # another format or another spec: measured afresh
            except CalibrationError:
                rec = None
        if rec is None:
            rec = {
                "format": VFORMAT,
                "version": VVERSION,
                "date": _dt.date.today().isoformat(),
                **self.meta(),
                "model": {"name": model, "batch": 1, "image_size": None, "dtype": "fp32"},
                "gpu": _normal(gpu.to_json()),
                "warmup": self.cfg.validate_warmup,
                "repeats": self.cfg.validate_repeats,
                "runtimes": "each schedule is simulated under the runtime the executor "
                "really is: pytorch-eager (functional calls, one per op) or cuda-graph "
                "(captured and replayed); native_runtime / native_simulated_ms: the "
                "scheduler's own runtime and its simulated latency under it",
                "schedules": [],
                "failures": {},
            }
        program_memory = getattr(self.dev, "program_memory", None)
        if program_memory is not None:
            rec["peak_memory"] = MEMORY_NOTE
        else:
            self.log(f"validate {model}: this device has no program_memory: peaks not measured")
        names = self.schedulers()
        per = self.rate("validate", VALIDATE_PER_SCHEDULE_S)
        new = 0
        t0 = self.elapsed()
        finished = True
        for name in names:
            if name in self._validated(rec):
                continue
            per = max(per, (self.elapsed() - t0) / new) if new else per
            if self.room() < per:
                finished = False
                break
            rec["failures"].pop(name, None)
            try:
                res = run_scheduler(name, graph, machine)
                rt = "cuda-graph" if res.program.graph_mode else "pytorch-eager"
                program = lower(res.schedule, graph, gpu, name=name, runtime=get_runtime(rt))
                timeline = simulate(program, machine)
                sim_ms = timeline.latency_ms
                g = res.schedule.graph or graph
                samples = self.dev.time_program(program, g, self.cfg.validate_warmup,
                                                self.cfg.validate_repeats)  # fmt: skip
            except SchedulerSkipped as e:
                rec["failures"][name] = f"skipped: {_one_line(e)}"
                continue
            except Exception as e:
                rec["failures"][name] = _one_line(e)
                self._log_traceback(f"validate {model} {name}", e)
                write_json(path, rec)
                continue
            self._programs[(model, name)] = (program, g)
            memory: dict[str, int] = {}
            if program_memory is not None:  # a failed memory reading keeps the latency
                try:
                    measured = int(program_memory(program, g)["peak_memory_bytes"])
                    memory = {"measured_peak_memory_bytes": measured,
                              "simulated_peak_memory_bytes": simulated_peak_memory(program, g, gpu, timeline)}  # fmt: skip
                    rec.get("memory_failures", {}).pop(name, None)
                except Exception as e:
                    rec.setdefault("memory_failures", {})[name] = _one_line(e)
                    self._log_traceback(f"validate {model} {name} memory", e)
            rec["schedules"].append(
                {
                    "scheduler": name,
                    "measured_ms": float(statistics.median(samples)) / 1e3,
                    "simulated_ms": sim_ms,
                    "runtime": rt,
                    "native_runtime": res.runtime,
                    "native_simulated_ms": res.latency_ms,
                    "streams": len(program.streams),
                    "kernels": program.kernels,
                    "mode": "graph" if program.graph_mode else "eager",
                    "samples_ms": [x / 1e3 for x in samples],
                    **memory,
                    "schedule": schedule_to_json(res.schedule),
                }
            )
            new += 1
            write_json(path, rec)
        outs = [path.name]
        note = []
        if finished and rec["schedules"] and not rec.get("trace"):
            if self.room() >= TRACE_S:
                self._trace(model, graph, rec)
                write_json(path, rec)
            else:
                note.append("no time left for the trace")
        if rec.get("trace"):
            outs.append(rec["trace"])
        elif rec.get("trace_error"):
            note.append(f"trace failed: {rec['trace_error']}")
        if not rec["schedules"]:
            if not finished:
                return Outcome("partial", outs, note="time up before any schedule ran")
            raise CalibrationError(f"no scheduler could be validated on {model}: "
                                   f"{'; '.join(f'{k}: {v}' for k, v in rec['failures'].items())}")  # fmt: skip
        errors = [n for n, why in rec["failures"].items() if not str(why).startswith("skipped")]
        rec["complete"] = finished and not errors
        write_json(path, rec)
        if not finished:
            note.insert(0, f"time up: {len(self._validated(rec))}/{len(names)} schedulers")
        if errors:
            note.append(f"failed: {', '.join(errors)}")
        # done: every scheduler measured (or skipped by design) and the trace taken; a
        # later run retries what is missing, and only that
        status = "done" if rec["complete"] and rec.get("trace") else "partial"
        return Outcome(status, outs, units=new, note="; ".join(note))

    def _trace(self, model: str, graph: Any, rec: dict[str, Any]) -> None:
        """One Kineto trace of the model: the preferred scheduler's program."""
        from simgpu.program import lower
        from simgpu.runtimes import get_runtime
        from simgpu.schedule import schedule_from_json

        by = {e["scheduler"]: e for e in rec["schedules"]}
        pick = next((n for n in TRACE_PREFERENCE if n in by), next(iter(by)))
        try:
            if (model, pick) in self._programs:
                program, g = self._programs[(model, pick)]
            else:
                e = by[pick]
                sched = schedule_from_json(e["schedule"], source=f"validation-{model}")
                program = lower(sched, graph, self.probe_spec(), name=pick,
                                runtime=get_runtime(e["runtime"]))  # fmt: skip
                g = sched.graph or graph
            name = f"kineto-{model}.json.gz"
            self.dev.trace_program(program, g, self.out / name)
            rec["trace"] = name
            rec["trace_scheduler"] = pick
            rec.pop("trace_error", None)
        except Exception as e:
            rec["trace_error"] = _one_line(e)
            rec["trace"] = None
            self._log_traceback(f"trace {model}", e)
        self._programs.clear()
        self.dev.release()

    # --- 6. fit and summary ------------------------------------------------------------------------

    def kernel_tables(self) -> list[Path]:
        return sorted(p for p in self.out.glob("kernels-*.json") if not p.name.endswith(".partial.json"))  # fmt: skip

    def do_fit(self) -> Outcome:
        from calibrate.fit import calibration
        from calibrate.microbench import analyse
        from calibrate.profile import add_memory_ops, read_memory_ops, read_table
        from simgpu.hardware import gpu_from_json

        base = read_json(self.out / "probe.json")["gpu"]
        spec = self.probe_spec()
        fits: dict[str, Any] = {"by": "python -m calibrate.plan"}
        mb: dict[str, Any] = {"fields": {}, "checks": {}}
        if any((self.out / "microbench").glob("*.json")):
            try:
                mb = analyse(self.out / "microbench", spec)
            except (SimGPUError, KeyError, TypeError, ValueError) as e:
                fits["microbench_error"] = _one_line(e)
        fits["microbench"] = mb
        table: dict[str, Any] = {}
        memory: dict[str, Any] = {}
        used = []
        for p in self.kernel_tables():
            try:
                t, m = read_table(p), read_memory_ops(p)
                table.update(t)
                memory.update(m)
                used.append(p.name)
            except SimGPUError as e:
                fits.setdefault("kernel_table_errors", {})[p.name] = _one_line(e)
        fits["kernel_tables"] = used
        fields = {k: v for k, v in mb["fields"].items() if hasattr(spec, k)}
        data = calibration(base, fields, table, fits)
        data["gpu"] = add_memory_ops(data["gpu"], memory)
        gpu_from_json(dict(data["gpu"]), source="calibration")  # refuse to write what cannot load
        if self.fake:
            data["fake"] = True
        write_json(self.out / "calibration.json", data)
        write_json(self.out / "microbench" / "analysis.json", mb)
        return Outcome("done", ["calibration.json", "microbench/analysis.json"],
                       note=f"{len(fields)} fields, {len(table)} kernel-table ops, "
                            f"{len(memory)} op memories")  # fmt: skip

    def do_summary(self) -> Outcome:
        from calibrate.validate import resimulate

        out: dict[str, Any] = {"format": "simgpu.plan_summary", "date": _dt.date.today().isoformat(),
                               **self.meta(), "info": self.info()}  # fmt: skip
        fitted = None
        cal = self.out / "calibration.json"
        if cal.exists() and self.state.status("fit") == "done":
            from simgpu.hardware import load_gpu

            fitted = load_gpu(cal)
        val = {}
        for p in sorted(self.out.glob("validation-*.json")):
            try:
                rec = read_json(p)
            except CalibrationError as e:
                val[p.stem] = {"error": _one_line(e)}
                continue
            row: dict[str, Any] = {"schedules": len(rec.get("schedules", [])),
                                   "failures": rec.get("failures", {})}  # fmt: skip
            for label, data in (("before", rec), ("after", {**rec, "gpu": fitted.to_json()} if fitted else None)):  # fmt: skip
                if data is None or not rec.get("schedules"):
                    continue
                try:
                    s = resimulate(data, source=str(p))
                    row[label] = {"gpu": s["gpu"], "mape": s["mape"], "kendall_tau": s["kendall_tau"],
                                  "per_schedule": [{k: r[k] for k in ("scheduler", "measured_ms", "simulated_ms", "error_pct",
                                                                      "measured_peak_memory_mb", "simulated_peak_memory_mb",
                                                                      "memory_error_pct") if k in r}
                                                   for r in s["per_schedule"]]}  # fmt: skip
                    if "memory_mape" in s:
                        row[label]["memory_mape"] = s["memory_mape"]
                except SimGPUError as e:
                    row[label] = {"error": _one_line(e)}
            val[rec.get("model", {}).get("name", p.stem)] = row
        out["validation"] = val
        kpath = self.out / "corun" / "kernels.json"
        if kpath.exists():
            from calibrate.corun import CLASSES, analyse

            raws = {c: read_json(self.out / "corun" / f"{c}.json") for c in CLASSES
                    if (self.out / "corun" / f"{c}.json").exists()}  # fmt: skip
            gpu = fitted or self.probe_spec()
            try:
                co = analyse(read_json(kpath), raws, gpu)
                write_json(self.out / "corun" / "analysis.json", co)
                far = sorted((r for r in co["pairs"] if "fitted" in r),
                             key=lambda r: -abs(math.log(r["fitted"]["ratio"])))[:6]  # fmt: skip
                out["corun"] = {"classes": co["classes"], "notes": co["notes"],
                                "analysis": "corun/analysis.json",
                                "farthest": [{"pair": f"{r['a']} + {r['b']}", "class": r["class"],
                                              "measured_us": r["measured"]["span_us"],
                                              "alone_us": [r["measured"]["alone_a_us"], r["measured"]["alone_b_us"]],
                                              "fitted_us": r["fitted"]["span_us"],
                                              "analytic_us": r.get("analytic", {}).get("span_us"),
                                              "ratio": r["fitted"]["ratio"]} for r in far]}  # fmt: skip
            except SimGPUError as e:
                out["corun"] = {"error": _one_line(e)}
        mbp = self.out / "microbench" / "analysis.json"
        if mbp.exists():
            out["microbench"] = read_json(mbp)
        out["steps"] = {k: {f: r.get(f) for f in ("status", "wall_s", "reason")}
                        for k, r in self.state.steps.items() if k != "summary"}  # fmt: skip
        write_json(self.out / "summary.json", out)
        (self.out / "summary.md").write_text(format_summary(out, fake=self.fake))
        outs = ["summary.json", "summary.md"]
        if "corun" in out and "analysis" in out["corun"]:
            outs.append("corun/analysis.json")
        return Outcome("done", outs)


# --- text -----------------------------------------------------------------------------------


def _f(x: Any, fmt: str = ".1f") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return format(x, fmt)


def format_summary(s: dict[str, Any], fake: bool = False) -> str:
    """The summary as Markdown: the figures a traces/<gpu>/README.md quotes."""
    lines = [f"# Measurement plan: {s.get('device')} ({s.get('date')})", ""]
    if fake:
        lines += ["**Dry run on a fake device: every figure below is simulated, not measured.**", ""]  # fmt: skip
    i = s.get("info", {})
    lines.append("torch {} · CUDA {} · cuDNN {} · CuPy {} · Python {}".format(
        *(i.get(k, "n/a") for k in ("torch", "cuda", "cudnn", "cupy", "python"))))  # fmt: skip
    lines += ["", "## Validation (simulated vs measured latency per schedule)", ""]
    lines.append("| model | schedules | MAPE before | tau before | MAPE after fit | tau after fit | failures |")  # fmt: skip
    lines.append("|---|---|---|---|---|---|---|")
    for m, r in s.get("validation", {}).items():
        b, a = r.get("before", {}), r.get("after", {})
        fails = ", ".join(f"{k} ({v})" for k, v in r.get("failures", {}).items()) or "-"
        lines.append(f"| {m} | {r.get('schedules')} | {_f(b.get('mape'))}% | {_f(b.get('kendall_tau'), '.2f')} | "
                     f"{_f(a.get('mape'))}% | {_f(a.get('kendall_tau'), '.2f')} | {fails} |")  # fmt: skip
    for m, r in s.get("validation", {}).items():
        b, a = r.get("before", {}), r.get("after", {})
        if not b.get("per_schedule"):
            continue
        after = {x["scheduler"]: x for x in a.get("per_schedule", [])}
        lines += ["", f"{m}, per schedule:", "",
                  "| scheduler | measured ms | simulated ms, before | after the fit |",
                  "|---|---|---|---|"]  # fmt: skip
        for x in sorted(b["per_schedule"], key=lambda x: x["measured_ms"]):
            y = after.get(x["scheduler"], {})
            lines.append(f"| {x['scheduler']} | {x['measured_ms']:.3f} | {x['simulated_ms']:.3f} | {_f(y.get('simulated_ms'), '.3f')} |")  # fmt: skip
    mem = {m: r for m, r in s.get("validation", {}).items() if "memory_mape" in r.get("before", {})}
    if mem:
        lines += ["", "## Peak memory (simulated vs measured per schedule, beyond weights and inputs)", "",
                  "| model | MAPE before | MAPE after fit |", "|---|---|---|"]  # fmt: skip
        for m, r in mem.items():
            lines.append(f"| {m} | {_f(r['before'].get('memory_mape'))}% | {_f(r.get('after', {}).get('memory_mape'))}% |")  # fmt: skip
        for m, r in mem.items():
            after = {x["scheduler"]: x for x in r.get("after", {}).get("per_schedule", [])}
            lines += ["", f"{m}, peak memory per schedule (MB):", "",
                      "| scheduler | measured | simulated, before | after the fit |", "|---|---|---|---|"]  # fmt: skip
            for x in r["before"]["per_schedule"]:
                if "measured_peak_memory_mb" not in x:
                    continue
                y = after.get(x["scheduler"], {})
                lines.append(f"| {x['scheduler']} | {x['measured_peak_memory_mb']:.1f} | {x['simulated_peak_memory_mb']:.1f} | {_f(y.get('simulated_peak_memory_mb'))} |")  # fmt: skip
    co = s.get("corun", {})
    lines += ["", "## Co-run interference (measured / simulated span of a pair)", ""]
    if "classes" in co:
        lines.append("| class | measured overlap | fitted kernels: geomean [min..max] | analytic kernels: geomean [min..max] |")  # fmt: skip
        lines.append("|---|---|---|---|")
        for cls, c in co["classes"].items():
            cells = []
            for label in ("fitted", "analytic"):
                x = c.get(label)
                cells.append(f"x{x['geomean_ratio']:.2f} [{x['min_ratio']:.2f}..{x['max_ratio']:.2f}] ({x['pairs']} pairs)" if x else "n/a")  # fmt: skip
            lines.append(f"| {cls} | {_f(c.get('measured_overlap'), '.2f')} | {cells[0]} | {cells[1]} |")  # fmt: skip
        lines.append("")
        lines.append("overlap = span / (alone a + alone b): 1 is serial, 0.5 a perfect overlap of equals.")  # fmt: skip
        if co.get("farthest"):
            lines += ["", "Pairs farthest from the model (fitted kernels):", "",
                      "| pair | alone us | together us, measured | simulated (fitted / analytic) | ratio |",
                      "|---|---|---|---|---|"]  # fmt: skip
            for r in co["farthest"]:
                alone = " / ".join(f"{x:.0f}" for x in r["alone_us"])
                lines.append(f"| {r['pair']} | {alone} | {r['measured_us']:.0f} | {r['fitted_us']:.0f} / {_f(r['analytic_us'], '.0f')} | x{r['ratio']:.2f} |")  # fmt: skip
    else:
        lines.append(co.get("error", "not measured"))
    mb = s.get("microbench", {})
    lines += ["", "## Microbenchmarks", ""]
    if not mb.get("fields") and not mb.get("checks"):
        lines.append("not measured")
    for k, v in sorted(mb.get("fields", {}).items()):
        lines.append(f"- {k} = {_f(v, '.3f')}")
    ch = mb.get("checks", {})
    if "waves" in ch:
        w = ch["waves"]
        lines.append(f"- waves: {_f(w['wave_us'])} us per wave, staircase r2 {_f(w['staircase_r2'], '.3f')} (linear {_f(w['linear_r2'], '.3f')})")  # fmt: skip
    if "overlap" in ch:
        lines.append(f"- spin-kernel overlap vs simulator: MAPE {_f(ch['overlap']['mape'])}%")
    if "bandwidth" in ch:
        bw = ch["bandwidth"]
        lines.append(f"- copy: {_f(bw['achieved_gbps'], '.0f')} GB/s, sharing {_f(bw['sharing'], '.2f')}")  # fmt: skip
    for c in ch.get("connections", {}).get("cases", []):
        lines.append(f"- CUDA_DEVICE_MAX_CONNECTIONS={c['connections']}: {_f(c['measured_us'])} us measured, {_f(c['simulated_us'])} us simulated")  # fmt: skip
    lines += ["", "## Steps", "", "| step | status | wall s | note |", "|---|---|---|---|"]
    for k, r in s.get("steps", {}).items():
        lines.append(f"| {k} | {r.get('status')} | {_f(r.get('wall_s'))} | {r.get('reason') or ''} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def pack(out: Path, dest: Path) -> Path:
    """``out`` as one gzipped tar (the folder's name at its root)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        tar.add(out, arcname=Path(out).resolve().name)
    tmp.replace(dest)
    return dest


# --- command line ---------------------------------------------------------------------------


def _profile_arg(s: str) -> tuple[str, int]:
    model, _, batch = s.partition(":")
    try:
        return model, int(batch or 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r}: expected MODEL or MODEL:BATCH") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m calibrate.plan",
        description="Run the GPU measurement plan (probe, microbenchmarks, co-run "
        "interference, per-op profiles, schedule validation, fit) within a time budget; "
        "resumable: a second run keeps what is done.",
    )
    p.add_argument("--out", required=True, help="output folder (holds plan.json, the state)")
    p.add_argument("--budget-s", type=float, default=300.0,
                   help="seconds for the whole run, start-up included (default 300)")  # fmt: skip
    p.add_argument("--device", type=int, default=0, help="CUDA device index")
    p.add_argument("--dry-run", action="store_true",
                   help="a fake device on the CPU (the simulator, seeded noise, virtual clock)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="dry run: noise seed")
    p.add_argument("--profile", action="append", type=_profile_arg, metavar="MODEL[:BATCH]",
                   help="model to profile per op, repeatable (default: inception_v3:1 "
                   "googlenet:1 resnet50:1 resnet50:32)")  # fmt: skip
    p.add_argument("--validate", action="append", metavar="MODEL",
                   help="model to validate, repeatable (default: inception_v3 squeezenet1_1)")  # fmt: skip
    p.add_argument("--scheduler", action="append", metavar="NAME",
                   help="scheduler to validate, repeatable (default: every single-GPU one)")  # fmt: skip
    p.add_argument("--microbench", action="append", choices=MICROBENCHES,
                   help="microbenchmark, repeatable (default: all)")  # fmt: skip
    p.add_argument("--only", action="append", choices=GROUPS, metavar="STEP",
                   help=f"run only these measurement steps, repeatable ({', '.join(GROUPS)}); "
                   "the probe (if not done yet), fit and summary go with them")  # fmt: skip
    p.add_argument("--repeats", type=int, default=20, help="timed repeats per measurement")
    p.add_argument("--retry-killed", action="store_true",
                   help="re-attempt sub-steps an earlier run was killed in (default: skip them)")  # fmt: skip
    p.add_argument("--pack", metavar="FILE", help="also write the folder as one .tar.gz")
    p.add_argument("--fake-fail", action="append", default=[], help=argparse.SUPPRESS)
    return p


def config_from_args(args: argparse.Namespace) -> Config:
    from schedulers.base import scheduler_names
    from simgpu.models import MODELS

    for m in [m for m, _ in args.profile or []] + list(args.validate or []):
        if m not in MODELS:
            raise CalibrationError(f"unknown model '{m}' (known: {', '.join(sorted(MODELS))})")
    if args.scheduler:
        known = scheduler_names(single_gpu_only=True)
        bad = [s for s in args.scheduler if s not in known]
        if bad:
            raise CalibrationError(f"unknown single-GPU scheduler(s) {', '.join(bad)} (known: {', '.join(known)})")  # fmt: skip
    if not args.budget_s > 0:
        raise CalibrationError("--budget-s must be > 0")
    if args.repeats < 1:
        raise CalibrationError("--repeats must be >= 1")
    return Config(
        out=Path(args.out),
        budget_s=args.budget_s,
        profile=tuple(args.profile) if args.profile else PROFILE_DEFAULT,
        validate=tuple(dict.fromkeys(args.validate)) if args.validate else VALIDATE_DEFAULT,
        schedulers=tuple(dict.fromkeys(args.scheduler)) if args.scheduler else None,
        microbench=tuple(dict.fromkeys(args.microbench)) if args.microbench else MICROBENCHES,
        repeats=args.repeats,
        groups=tuple(dict.fromkeys(args.only)) if args.only else GROUPS,
        retry_killed=args.retry_killed,
    )


def open_device(args: argparse.Namespace) -> Any:
    if args.dry_run:
        from calibrate.fakedevice import FakeDevice

        return FakeDevice(seed=args.seed, fail=args.fake_fail)
    if args.fake_fail:
        raise CalibrationError("--fake-fail needs --dry-run")
    from calibrate.device import TorchDevice

    return TorchDevice(args.device)


def main(argv: Sequence[str] | None = None, device: Any = None) -> int:
    """The command line; ``device`` replaces the one the arguments name (tests)."""
    t_start = time.monotonic()
    args = build_parser().parse_args(argv)

    def err(msg: str) -> int:
        print(f"simgpu: error: {msg}", file=sys.stderr)
        return 2

    try:
        cfg = config_from_args(args)
        dev = device if device is not None else open_device(args)
    except SimGPUError as e:
        hint = "" if args.dry_run else " (--dry-run rehearses the plan on the CPU)"
        return err(_one_line(e) + hint)
    spent = 0.0 if getattr(dev, "kind", "") == "fake" else time.monotonic() - t_start
    try:
        plan = Plan(cfg, dev, log=lambda s: print(s, file=sys.stderr, flush=True), spent_s=spent)
        code = plan.run()
    except KeyboardInterrupt:
        print("simgpu: interrupted", file=sys.stderr)
        return 130
    except SimGPUError as e:  # the state file or output folder itself is unusable
        return err(_one_line(e))
    except Exception as e:  # a bug outside the steps: one line here, the traceback in the log
        try:
            with open(Path(cfg.out) / "plan.log", "a") as f:
                f.write("--- the plan itself failed:\n" + traceback.format_exc())
        except OSError:
            pass
        return err(
            f"the plan itself failed: {_one_line(e)} (traceback in {Path(cfg.out) / 'plan.log'})"
        )
    summary = plan.out / "summary.md"
    if summary.exists():
        print(summary.read_text(), end="")
    if args.pack:
        try:
            p = pack(plan.out, Path(args.pack))
            print(f"packed -> {p} ({p.stat().st_size / 2**20:.1f} MiB)", file=sys.stderr)
        except OSError as e:
            return err(f"cannot pack {plan.out} into {args.pack}: {e.strerror or e}")
    if code != 0:
        failed = {k: r.get("reason") for k, r in plan.state.steps.items() if r.get("status") == "failed"}  # fmt: skip
        skipped = plan.run_log.get("skipped", {})
        why = next(iter(failed.items()), None) or next(iter(skipped.items()), None)
        detail = f": {why[0]}: {why[1]}" if why else ""
        return err(f"nothing was measured{detail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["Config", "Plan", "State", "format_summary", "main", "pack"]
