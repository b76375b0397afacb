"""The ``simgpu`` command line.

Every error a user can cause ends here as one line on stderr and a non-zero exit: the
library raises SimGPUError subclasses with messages that name the op, stream or file at
fault, and this module only prints them.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from simgpu.errors import SimGPUError
from simgpu.limits import check as check_limit
from simgpu.output import dumps, printable
from simgpu.output import text_table as _table

EXIT_ERROR = 2


# --- loading --------------------------------------------------------------------------


def _machine(args: argparse.Namespace):
    """``--machine NAME|FILE``, or ``--gpu`` (default v100) as a one-device machine."""
    from simgpu.hardware import Machine, load_gpu, load_machine

    spec = getattr(args, "machine", None)
    if spec is not None:
        if getattr(args, "gpu", None) is not None:
            raise SimGPUError("give --gpu or --machine, not both")
        return load_machine(spec)
    return Machine.single(load_gpu(getattr(args, "gpu", None) or "v100"))


RUNTIME_HELP = (
    "runtime every schedule runs under: pytorch-eager, cudnn, cuda-graph or tensorrt "
    "(default: each scheduler's own, as its paper ran; see `simgpu runtimes`)"
)


def _runtime_arg(args: argparse.Namespace) -> str | None:
    """``--runtime NAME``, checked against the registry before anything runs."""
    from simgpu.runtimes import get_runtime

    name = getattr(args, "runtime", None)
    if name is not None:
        get_runtime(name)
    return name


def _model(args: argparse.Namespace):
    """The graph a command runs: a built-in model or a graph file (see simgpu.graphfile)."""
    return _load(args.model, args).graph


def _load(spec: str, args: argparse.Namespace):
    """``spec`` as a LoadedGraph, with the command's --batch/--image-size/--dtype (None
    when not given)."""
    from simgpu.graphfile import load_graph

    return load_graph(
        spec,
        batch=getattr(args, "batch", None),
        image_size=getattr(args, "image_size", None),
        dtype=getattr(args, "dtype", None),
    )


def _graph_arg(spec: str, args: argparse.Namespace):
    """A graph from a file (simgpu graph JSON, IOS graph JSON or ONNX, told apart by content)
    or, for convenience, a built-in model name."""
    return _load(spec, args).graph


# --- commands -------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    return _compare(args, _load(args.model, args), args.scheduler or ["all"])


class _Progress:
    """One line per scheduler as it finishes, on stderr and only on a terminal: a search
    can take many seconds, and a log or a pipe should get nothing but the results."""

    def __init__(self, total: int, stream: Any = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.total, self.done = total, 0
        isatty = getattr(self.stream, "isatty", None)
        self.on = total > 1 and callable(isatty) and bool(isatty())
        self.t0 = 0.0

    def start(self, name: str) -> None:
        import time

        self.t0 = time.perf_counter()
        if self.on:
            self.stream.write(f"[{self.done + 1}/{self.total}] {name} ...")
            self.stream.flush()

    def finish(self, name: str, outcome: str) -> None:
        import time

        self.done += 1
        if self.on:
            took = time.perf_counter() - self.t0
            self.stream.write(
                f"\r\033[K[{self.done}/{self.total}] {name}: {outcome} ({took:.1f} s)\n"
            )
            self.stream.flush()


def _compare(args: argparse.Namespace, loaded: Any, asked: list[str]) -> int:
    """Run several schedulers on one graph and print the comparison (`run`, and
    `simulate` given several schedulers)."""
    from schedulers.base import (
        SchedulerSkipped,
        make_scheduler,
        parse_options,
        run_scheduler,
        runtime_of,
        scheduler_names,
    )
    from schedulers.bounds import (
        binding_bound,
        machine_bounds_us,
        machine_host_bound_us,
        schedule_bound_us,
    )
    from simgpu.graphfile import image_size_of
    from simgpu.memory import check_limit_feasible, mb, tensors_of

    graph = loaded.graph
    machine = _machine(args)
    names: list[str] = []
    multi = len(machine.devices) > 1
    for n in asked:
        names += scheduler_names(single_gpu_only=not multi) if n == "all" else [n]
    names = list(dict.fromkeys(names))
    options = parse_options(args.option or [])
    for sched in options:
        if sched not in names:
            raise SimGPUError(f"option given for scheduler '{sched}', which is not being run")
    runtime = _runtime_arg(args)
    runtimes = {}  # unknown names and bad options stop the command before anything runs
    for n in names:
        runtimes[n] = runtime_of(make_scheduler(n, options.get(n)), runtime).name
    limit = _limit_bytes(args)
    tensors = tensors_of(graph, machine.gpu)
    if limit is not None:  # below what any schedule must hold: one error, nothing runs
        check_limit_feasible(tensors, limit, len(machine.devices))
    results: dict[str, Any] = {}
    failures: dict[str, str] = {}
    skipped: dict[str, str] = {}  # schedulers that do not apply to this model by design
    progress = _Progress(len(names))
    for n in names:  # a scheduler that fails on this model is reported, the rest go on
        progress.start(n)
        try:
            results[n] = run_scheduler(n, graph, machine, options.get(n), runtimes[n], limit)
            progress.finish(n, f"{results[n].latency_ms:.3f} ms")
        except SchedulerSkipped as e:
            skipped[n] = _one_line(e)
            progress.finish(n, "n/a")
        except SimGPUError as e:
            failures[n] = _one_line(e)
            progress.finish(n, "failed")
        except Exception as e:  # a bug in one scheduler must not hide the others' results
            failures[n] = f"internal error: {type(e).__name__}: {_one_line(e)}"
            progress.finish(n, "failed")
    if not results:
        first, why = next(iter({**failures, **skipped}.items()))
        # scheduler messages often name themselves already ("lios: streams must ...")
        raise SimGPUError(why if why.startswith(f"{first}:") else f"{first}: {why}")
    # each schedule is compared with one stream under its own runtime: like with like
    base_ms: dict[str, float] = {}
    for r in results.values():
        if r.runtime not in base_ms:
            seq = results.get("sequential")
            if seq is None or seq.runtime != r.runtime:
                seq = run_scheduler("sequential", graph, machine, runtime=r.runtime)
            base_ms[r.runtime] = seq.latency_ms
    gpu = machine.gpu
    # the bound of any schedule under any runtime compared: the lowest runtime's
    bounds = {
        rt: (*machine_bounds_us(graph, machine, rt), machine_host_bound_us(graph, machine, rt))
        for rt in base_ms
    }
    loosest = min(bounds, key=lambda rt: max(bounds[rt]))
    cp_us, work_us, host_us = bounds[loosest]
    bound_ms = max(cp_us, work_us, host_us) / 1e3
    binds = binding_bound(graph, machine, loosest)
    rows = []
    for n in names:
        r = results.get(n)
        if r is None:
            if n in skipped:
                rows.append(
                    {"scheduler": n, "runtime": runtimes[n], "status": "n/a", "reason": skipped[n]}
                )
            else:
                rows.append(
                    {"scheduler": n, "runtime": runtimes[n], "status": "failed",
                     "error": failures[n]}
                )  # fmt: skip
            continue
        bound = schedule_bound_us(graph, machine, r.schedule.graph, r.runtime) / 1e3
        base = base_ms[r.runtime]
        rows.append(
            {
                "scheduler": n,
                "runtime": r.runtime,
                "status": "ok",
                "latency_ms": r.latency_ms,
                "sequential_ms": base,
                "speedup": base / r.latency_ms if r.latency_ms > 0 else float("nan"),
                "streams": r.streams,
                "syncs": r.syncs,
                "kernels": r.program.kernels,
                "schedule_s": r.schedule_s,
                "profiler_calls": r.profiler_calls,
                "profiler_distinct": r.profiler_distinct,
                "gpu_search_s": r.gpu_search_s,
                "sm_utilisation": r.timeline.mean_sm_utilisation(),
                "lower_bound_ms": bound,
                "bound_gap": r.latency_ms / bound - 1.0 if bound > 0 else None,
                "peak_memory_mb": r.memory.peak_memory_mb,
                "reserved_memory_mb": r.memory.reserved_memory_mb,
                "memory_notes": r.memory.notes,
            }
        )
    best = min(results.values(), key=lambda r: (r.latency_ms, r.scheduler))
    written = _write_outputs(args, results, best)
    if args.json:
        out = {
            "model": graph.name,
            "source": loaded.spec if loaded.format != "model" else None,
            "format": loaded.format,
            "batch": loaded.batch,
            "image_size": image_size_of(loaded, getattr(args, "image_size", None)),
            "gpu": gpu.name,
            "machine": machine.name,
            "devices": len(machine.devices),
            "ops": len(graph),
            "macs": graph.macs,
            "lower_bound_ms": bound_ms,
            "critical_path_bound_ms": cp_us / 1e3,
            "work_bound_ms": work_us / 1e3,
            "host_bound_ms": host_us / 1e3,
            "binding_bound": binds,
            "memory_limit_mb": None if limit is None else mb(limit),
            "memory_lower_bound_mb": mb(tensors.lower_bound(len(machine.devices))),
            "sequential_peak_memory_mb": mb(tensors.sequential_peak()),
            "memory_overrides_unmatched": tensors.unmatched,
            "results": rows,
        }
        print(dumps(out))
        return 0
    print(
        f"{graph.name}  batch {loaded.batch}  {len(graph)} ops  {graph.macs / 1e9:.2f} GMACs  "
        f"on {machine.name if multi else gpu.name}"
    )
    host = f", host {host_us / 1e3:.3f}" if host_us else ""
    print(
        f"lower bound {bound_ms:.3f} ms over the runtimes compared ({loosest}), {binds} binds "
        f"(critical path {cp_us / 1e3:.3f}, work {work_us / 1e3:.3f}{host}); each row's "
        "'vs bound' is against its own runtime's"
    )
    table = []
    for r in rows:
        if r["status"] != "ok":
            why = r.get("error") or r["reason"]
            table.append([r["scheduler"], r["runtime"], r["status"], *["-"] * 11, why])
            continue
        table.append(
            [
                r["scheduler"],
                r["runtime"],
                f"{r['latency_ms']:.3f}",
                f"{r['speedup']:.2f}x",
                str(r["streams"]),
                str(r["syncs"]),
                str(r["kernels"]),
                f"{100 * r['sm_utilisation']:.0f}%",
                f"{r['schedule_s']:.3f}",
                str(r["profiler_calls"]),
                f"{r['gpu_search_s']:.2f}",
                "-" if r["bound_gap"] is None else f"{100 * r['bound_gap']:.1f}%",
                f"{r['peak_memory_mb']:.1f}",
                f"{r['reserved_memory_mb']:.0f}",
                "; ".join(r["memory_notes"]),
            ]
        )
    header = [
        "scheduler",
        "runtime",
        "latency ms",
        "speedup",
        "streams",
        "syncs",
        "kernels",
        "SM util",
        "sched s",
        "profiler",
        "GPU search s",
        "vs bound",
        "peak MB",
        "reserved MB",
        "note",
    ]
    print(_table(table, header, right=set(range(2, len(header) - 1))))
    print("speedup: over one stream (sequential) under the same runtime")
    if tensors.unmatched:
        print(
            f"note: the GPU's memory.ops entries {', '.join(map(repr, tensors.unmatched[:5]))} "
            f"name no op of {graph.name}"
        )
    cap = "" if limit is None else f"; limit {mb(limit):.1f} MB per GPU"
    print(
        f"memory: peak = live tensors at their most, weights included; reserved = what the "
        f"caching allocator holds. Any schedule needs {mb(tensors.lower_bound(len(machine.devices))):.1f} MB; "
        f"one stream in topological order peaks at {mb(tensors.sequential_peak()):.1f} MB{cap}"
    )
    for label, path in written:
        print(f"{label}: {path}")
    return 0


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _write_outputs(args: argparse.Namespace, results: dict, best: Any) -> list[tuple[str, str]]:
    """Write the trace(s), Gantt chart and schedule asked for: (label, path) of each file
    written, so the user sees the files, not a '{scheduler}' pattern."""
    from simgpu.chrome_trace import write_chrome_trace
    from simgpu.gantt import plot_gantt, plot_gantt_compare
    from simgpu.schedule import schedule_to_json

    written: list[tuple[str, str]] = []
    try:
        if args.gantt:
            if len(results) > 1:
                plot_gantt_compare({n: r.timeline for n, r in results.items()}, args.gantt)
            else:
                plot_gantt(best.timeline, args.gantt, title=best.scheduler)
            written.append(("gantt", args.gantt))
        if args.trace:
            if "{scheduler}" in args.trace:
                for n, r in results.items():
                    path = args.trace.replace("{scheduler}", n)
                    write_chrome_trace(r.timeline, path, title=n)
                    written.append(("trace", path))
            else:
                write_chrome_trace(best.timeline, args.trace, title=best.scheduler)
                written.append(("trace", args.trace))
        if getattr(args, "schedule_out", None):
            Path(args.schedule_out).write_text(dumps(schedule_to_json(best.schedule)) + "\n")
            written.append(("schedule", args.schedule_out))
    except (OSError, ValueError) as e:
        raise SimGPUError(f"cannot write output: {e}") from None
    return written


def cmd_simulate(args: argparse.Namespace) -> int:
    from schedulers.base import Profiler, make_scheduler, parse_options, runtime_of
    from simgpu.graph import read_json
    from simgpu.hardware import Machine
    from simgpu.memory import account, check_limit_feasible, tensors_of
    from simgpu.program import lower, validate_program
    from simgpu.runtimes import get_runtime
    from simgpu.schedule import check_rewrite, schedule_from_json
    from simgpu.sim.engine import simulate

    if args.schedule and args.scheduler:
        raise SimGPUError("give --schedule FILE or --scheduler NAME, not both")
    loaded = _load(args.graph, args)
    asked = list(dict.fromkeys(args.scheduler or []))
    if len(asked) > 1 or "all" in asked:  # several: the comparison `run` prints
        return _compare(args, loaded, asked)
    scheduler = asked[0] if asked else None
    options = parse_options(args.option or [])
    graph, file_stages, fmt = loaded.graph, loaded.stages, loaded.format
    # what makes the schedule: a schedule file, the IOS file's own stages (unless a
    # scheduler is named), or a scheduler (default sequential)
    if args.schedule:
        runs, source = None, args.schedule
    elif file_stages is not None and not scheduler:
        runs, source = None, "ios-stages"
    else:
        runs = source = scheduler or "sequential"
    for sched in options:
        if sched != runs:
            why = f"the schedule comes from {source}" if runs is None else f"{runs} is run"
            raise SimGPUError(
                f"option given for scheduler '{sched}', which is not being run ({why})"
            )
    machine = _machine(args)
    override = _runtime_arg(args)
    limit = _limit_bytes(args)
    if limit is not None:
        check_limit_feasible(tensors_of(graph, machine.gpu), limit, len(machine.devices))
    if args.schedule:
        schedule = schedule_from_json(read_json(args.schedule), source=args.schedule)
        check_rewrite(graph, schedule, args.schedule)
    elif runs is None:
        schedule = file_stages
    if runs is None:
        # a schedule file runs as it asks (CUDA Graph or eager PyTorch); IOS's own
        # stages run on IOS's runtime
        default = "cudnn" if source == "ios-stages" else "pytorch-eager"
        runtime = get_runtime(override or ("cuda-graph" if schedule.graph_mode else default))
    else:
        sched = make_scheduler(runs, options.get(runs))
        runtime = runtime_of(sched, override)
        # a single-GPU scheduler searches on device 0, as run_scheduler does
        search = machine if sched.multi_gpu else Machine(machine.name, machine.devices[:1])
        schedule = sched.schedule(graph, Profiler(search, runtime=runtime, memory_limit=limit))
    program = lower(schedule, graph, machine, name=source, runtime=runtime)
    validate_program(program, schedule.graph or graph)
    tl = simulate(program, machine)
    memory = account(tl, program, schedule.graph or graph, machine, limit)
    from simgpu.chrome_trace import write_chrome_trace
    from simgpu.gantt import plot_gantt

    try:
        if args.trace:
            write_chrome_trace(tl, args.trace, title=source)
        if args.gantt:
            plot_gantt(tl, args.gantt, title=f"{graph.name}: {source}")
    except (OSError, ValueError) as e:
        raise SimGPUError(f"cannot write output: {e}") from None
    out = {
        "graph": graph.name,
        "gpu": machine.gpu.name,
        "machine": machine.name,
        "devices": len(machine.devices),
        "copies": len(tl.copies),
        "schedule": source,
        "runtime": runtime.name,
        "latency_ms": tl.latency_ms,
        "kernels": len(tl.kernels),
        "streams": len(program.streams),
        "syncs": program.syncs,
        "ops": len(schedule.graph or graph),
        "format": fmt,
        "batch": graph.inputs[0].output_shape[0] if graph.inputs else None,
        "sm_utilisation": tl.mean_sm_utilisation(),
        "kernel_time_ms": tl.kernel_time_us() / 1e3,
        "peak_memory_mb": memory.peak_memory_mb,
        "reserved_memory_mb": memory.reserved_memory_mb,
        "memory_lower_bound_mb": memory.to_json()["memory_lower_bound_mb"],
        "sequential_peak_memory_mb": memory.to_json()["sequential_peak_mb"],
    }
    if fmt == "ios":
        from simgpu.models.ios import ios_nodes

        out["ios_nodes"] = len(ios_nodes(graph))
    if args.json:
        print(dumps(out))
    else:
        print(
            _table(
                [[k, f"{v:.4g}" if isinstance(v, float) else str(v)] for k, v in out.items()],
                ["field", "value"],
            )
        )
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    """Why a schedule takes its time: the critical path and the waits (simgpu.explain)."""
    from schedulers.base import make_scheduler, parse_options, run_scheduler, runtime_of
    from simgpu.explain import explain, format_text

    loaded = _load(args.model, args)
    graph = loaded.graph
    machine = _machine(args)
    names = [args.scheduler] + ([args.against] if args.against else [])
    if "all" in names:
        raise SimGPUError("explain takes one scheduler (and one --against), not 'all'")
    options = parse_options(args.option or [])
    for sched in options:
        if sched not in names:
            raise SimGPUError(f"option given for scheduler '{sched}', which is not being run")
    runtime = _runtime_arg(args)
    for n in names:  # unknown names and bad options stop before anything runs
        runtime_of(make_scheduler(n, options.get(n)), runtime)
    limit = _limit_bytes(args)
    runs = [run_scheduler(n, graph, machine, options.get(n), runtime, limit) for n in names]
    res = runs[0]
    ex = explain(res.timeline, runs[1].timeline if len(runs) > 1 else None)
    title = (
        f"{graph.name} with {res.scheduler} on {machine.name if len(machine.devices) > 1 else machine.gpu.name} "
        f"({res.runtime}, {res.streams} streams, {res.syncs} syncs)"
    )
    if args.json:
        out = {"model": graph.name, "format": loaded.format, "scheduler": res.scheduler,
               "runtime": res.runtime, "latency_ms": res.latency_ms,
               "peak_memory_mb": res.memory.peak_memory_mb,
               "reserved_memory_mb": res.memory.reserved_memory_mb, **ex.to_json()}  # fmt: skip
        if len(runs) > 1:
            out["against"] = {"scheduler": runs[1].scheduler, "runtime": runs[1].runtime,
                              "latency_ms": runs[1].latency_ms}  # fmt: skip
        print(dumps(out))
        return 0
    print(format_text(ex, title, args.against, top=args.top))
    if len(runs) > 1:
        other = runs[1]
        ratio = other.latency_ms / res.latency_ms if res.latency_ms > 0 else float("nan")
        print(
            f"{args.against}: {other.latency_ms:.3f} ms ({other.runtime}); "
            f"{res.scheduler} is {ratio:.2f}x its speed"
        )
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from simgpu.models import MODELS, build_model

    rows = []
    for name, info in MODELS.items():
        g = build_model(name)
        inp = [list(op.output_shape) for op in g.inputs]
        rows.append(
            {
                "name": name,
                "ops": len(g),
                "macs": g.macs,
                "flops": g.flops,
                "params": g.params,
                # one input: its shape; several (BERT's ids, segments, mask): each shape
                "input": inp[0] if len(inp) == 1 else inp,
                "inputs": [
                    {"name": op.name, "shape": list(op.output_shape), "dtype": op.dtype}
                    for op in g.inputs
                ],
                "batch": 1,
                "image_size": info.default_image_size,
                "dtype": g.inputs[0].dtype if g.inputs else None,
                "description": info.description,
            }
        )
    if args.json:
        print(dumps(rows))
        return 0

    def shapes(r: dict[str, Any]) -> str:
        text = ["x".join(map(str, i["shape"])) for i in r["inputs"]]
        if len(set(text)) == 1 and len(text) > 1:
            return f"{len(text)} x {text[0]}"
        return ", ".join(text)

    print(
        _table(
            [
                [
                    r["name"],
                    str(r["ops"]),
                    f"{r['macs'] / 1e9:.2f}",
                    f"{r['flops'] / 1e9:.2f}",
                    f"{r['params'] / 1e6:.2f}",
                    "-" if r["image_size"] is None else str(r["image_size"]),
                    shapes(r),
                ]
                for r in rows
            ],
            ["model", "ops", "GMACs", "GFLOPs", "M params", "image px", "input (batch 1)"],
            right={1, 2, 3, 4, 5},
        )
    )
    return 0


def cmd_gpus(args: argparse.Namespace) -> int:
    from simgpu.hardware import ALIASES, PRESETS

    aliases: dict[str, list[str]] = {}
    for a, n in ALIASES.items():
        aliases.setdefault(n, []).append(a)
    if args.json:
        print(dumps([g.to_json() for g in PRESETS.values()]))
        return 0
    rows = []
    for g in PRESETS.values():
        tensor = g.peak_tflops.get("fp16_tensor", 0.0)
        rows.append(
            [
                g.name,
                g.compute_capability,
                str(g.sm_count),
                f"{g.clock_mhz:.0f}",
                f"{g.peak_tflops['fp32']:.1f}",
                f"{tensor:.0f}" if tensor else "-",
                f"{g.dram_gbps:.0f}",
                f"{g.memory_gb:g}",
                f"{g.l2_mb:g}",
                ", ".join(aliases.get(g.name, [])),
            ]
        )
    print(
        _table(
            rows,
            [
                "gpu",
                "cc",
                "SMs",
                "MHz",
                "FP32 TF",
                "FP16 tensor TF",
                "DRAM GB/s",
                "mem GB",
                "L2 MB",
                "aliases",
            ],
            right={2, 3, 4, 5, 6, 7, 8},
        )
    )
    return 0


def cmd_machines(args: argparse.Namespace) -> int:
    from simgpu.hardware import MACHINE_PRESETS, machine_preset

    machines = [machine_preset(n) for n in MACHINE_PRESETS]
    if args.json:
        print(dumps([m.to_json() for m in machines]))
        return 0
    rows = []
    for m in machines:
        r = m.route(0, 1)
        kinds = sorted({f"{link.kind} x{link.count}" for link in m.links})
        rows.append(
            [
                m.name,
                str(len(m.devices)),
                m.gpu.name,
                ", ".join(kinds),
                f"{r.gbps:g}" if r else "-",
                f"{r.latency_us:g}" if r else "-",
            ]
        )
    print(
        _table(
            rows,
            ["machine", "GPUs", "GPU", "links", "GB/s 0->1", "latency us"],
            right={1, 4, 5},
        )
    )
    return 0


def cmd_schedulers(args: argparse.Namespace) -> int:
    from schedulers.base import discover

    reg = discover()
    rows = [
        {"name": i.name, "multi_gpu": i.multi_gpu, "runtime": i.runtime,
         "description": _summary(i.cls.__doc__) or i.description,
         "options": _scheduler_options(i.cls)}
        for i in sorted(reg.values(), key=lambda i: i.name)
    ]  # fmt: skip
    if args.json:
        print(dumps(rows))
    else:
        print(
            _table(
                [[r["name"], "yes" if r["multi_gpu"] else "no", r["runtime"], r["description"]]
                 for r in rows],
                ["scheduler", "multi-GPU", "runtime", "description"],
                right=set(),
            )
        )  # fmt: skip
        print("options, their types and defaults: `simgpu schedulers --json`")
    return 0


def _summary(doc: str | None) -> str:
    """A docstring's first sentence, whole: its first line alone can stop mid-sentence."""
    import re

    para = " ".join((doc or "").strip().split("\n\n")[0].split())
    m = re.search(r"(?<=[.!?])\s+(?=[A-Z(])", para)
    return para[: m.start()] if m else para


def _scheduler_options(cls: type) -> list[dict[str, Any]]:
    """A scheduler's options: its dataclass fields, each with its type and default (what
    ``--option SCHED.NAME=VALUE`` accepts and converts to)."""
    import dataclasses

    if not dataclasses.is_dataclass(cls):
        return []
    out = []
    for f in dataclasses.fields(cls):
        if not f.init or f.name.startswith("_"):
            continue
        if f.default is not dataclasses.MISSING:
            default: Any = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        typ = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        out.append({"name": f.name, "type": typ, "default": default})
    return out


def cmd_runtimes(args: argparse.Namespace) -> int:
    from simgpu.runtimes import get_runtime, runtime_names

    rows = []
    for name in runtime_names():
        rt = get_runtime(name)
        row = {"name": name, "graph_mode": rt.graph_mode, "description": rt.description}
        if not rt.graph_mode:
            row["host_us"] = {f: round(rt.costs.framework_us(f), 3) for f in rt.costs.op_us}
        rows.append(row)
    if args.json:
        print(dumps(rows))
        return 0
    table = []
    for r in rows:
        host = r.get("host_us")
        cost = "one graph launch" if host is None else (
            f"conv {host['conv']:.1f}, elementwise {host['elementwise']:.1f}, view {host['view']:.1f}"
        )  # fmt: skip
        table.append([r["name"], cost, r["description"]])
    print(_table(table, ["runtime", "framework us per call (+ launches)", "description"],
                 right=set()))  # fmt: skip
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    graph = _model(args)
    try:
        graph.save(args.output)
    except OSError as e:
        raise SimGPUError(f"cannot write {args.output}: {e}") from None
    print(f"{graph.name}: {len(graph)} ops -> {args.output}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from simgpu.sweep import (
        Grid,
        load_grid,
        parse_memory_limit_args,
        parse_option_args,
        run_sweep,
    )

    grid = load_grid(args.grid) if args.grid else Grid(models=[])
    # Axes given on the command line replace the grid file's.
    for attr, value in (
        ("models", args.model),
        ("batches", args.batch),
        ("image_sizes", args.image_size),
        ("dtypes", args.dtype),
        ("gpus", args.gpu),
        ("machines", args.machine),
        ("schedulers", args.scheduler),
        ("runtimes", args.runtime),
    ):
        if value:
            setattr(grid, attr, list(value))
    if args.option:
        grid.options = parse_option_args(args.option)
    if args.memory_limit:
        grid.memory_limits_mb = parse_memory_limit_args(args.memory_limit)
    if args.dask is not None and args.workers is not None:
        raise SimGPUError("give --workers (local processes) or --dask, not both")
    res = run_sweep(
        grid,
        args.out,
        workers=args.workers,
        dask=args.dask,
        retry_failed=args.retry_failed,
        timeout_s=args.timeout,
        progress=not args.quiet,
    )
    summary = {
        "out": str(res.path),
        "parquet": str(res.parquet) if res.parquet else None,
        "combinations": res.total,
        "ran": res.ran,
        "skipped": res.skipped,
        "failed": res.failed,
        "kept": res.kept,
        "wall_s": res.wall_s,
    }
    if args.json:
        print(dumps(summary))
        return 0
    done = f", {res.skipped} already done" if res.skipped else ""
    failed = f", {res.failed} failed (see the status/error columns)" if res.failed else ""
    kept = f"; kept {res.kept} rows of other grids" if res.kept else ""
    print(f"{res.total} combinations: ran {res.ran}{done}{failed} in {res.wall_s:.1f} s{kept}")
    print(f"results: {res.path}" + (f" and {res.parquet}" if res.parquet else ""))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from simgpu.report import make_report

    rep = make_report(
        args.results, args.out, max_gantt=args.max_gantt, max_memory_plots=args.max_memory_plots
    )
    print(f"report: {rep.markdown} and {rep.html} ({len(rep.images)} figures)")
    return 0


def cmd_multitenant(args: argparse.Namespace) -> int:
    """Several models sharing one GPU: baselines and the runtime-aware search."""
    from simgpu.hardware import load_gpu
    from simgpu.models import MODELS, build_model
    from simgpu.multitenant.compare import compare, rerun, scheduler_list
    from simgpu.runtimes import get_runtime
    from simgpu.tenants import Workload, make_tenants, parse_arrival

    names = scheduler_list(args.scheduler)  # unknown names fail before anything runs
    if args.requests is not None and args.duration is not None:
        raise SimGPUError("give --requests N or --duration MS, not both")
    arrivals = [parse_arrival(a) for a in args.arrival or ["closed"]]
    if len(arrivals) not in (1, len(args.models)):
        raise SimGPUError(
            f"{len(arrivals)} --arrival for {len(args.models)} models: give one, or one per model"
        )
    graphs = []
    for m in args.models:
        if m in MODELS:
            graphs.append(
                build_model(m, batch=args.batch, image_size=args.image_size, dtype=args.dtype)
            )
        else:
            graphs.append(_graph_arg(m, argparse.Namespace(batch=None, dtype=None)))
    duration = args.duration
    requests = None if duration is not None else (args.requests or 10)
    if requests is not None:
        check_limit("requests", requests, "--requests")
    check_limit("budget", args.budget, "--budget")
    workload = Workload(
        make_tenants(graphs, arrivals if len(arrivals) > 1 else arrivals[0], args.slo_ms,
                     args.max_queue),
        requests=requests,
        duration_ms=duration,
        seed=args.seed,
    )  # fmt: skip
    gpu = load_gpu(args.gpu)
    rt_name = _runtime_arg(args)
    runtime = None if rt_name is None else get_runtime(rt_name)
    ctx, ev, results = compare(
        workload, gpu, names, budget=args.budget, seed=args.seed, time_budget_s=args.time_budget,
        runtime=runtime, memory_limit=_limit_bytes(args),
    )  # fmt: skip
    slo = args.slo_ms is not None
    best = max(
        results,
        key=lambda r: (
            r.metrics.goodput_rps if slo else r.metrics.throughput_rps,
            -results.index(r),
        ),
    )
    written: list[tuple[str, str]] = []
    try:
        if args.trace or args.gantt:
            from simgpu.multitenant.outputs import plot_tenant_gantt, write_chrome_trace

            runs = {}
            for r in results:
                per_file = args.trace and "{scheduler}" in args.trace
                if r is best or per_file or (args.gantt and len(results) > 1):
                    runs[r.name] = rerun(ev, r)
            if args.gantt:
                plot_tenant_gantt(runs if len(results) > 1 else {best.name: runs[best.name]},
                                  args.gantt)  # fmt: skip
                written.append(("gantt", args.gantt))
            if args.trace:
                if "{scheduler}" in args.trace:
                    for n, run in runs.items():
                        write_chrome_trace(run, args.trace.replace("{scheduler}", n), title=n)
                        written.append(("trace", args.trace.replace("{scheduler}", n)))
                else:
                    write_chrome_trace(runs[best.name], args.trace, title=best.name)
                    written.append(("trace", args.trace))
    except (OSError, ValueError) as e:
        raise SimGPUError(f"cannot write output: {e}") from None
    rows = [r.metrics.to_json() for r in results]
    if args.json:
        from simgpu.memory import mb

        out = {"gpu": gpu.name, "runtime": rt_name or "flat", **workload.describe(),
               "memory_limit_mb": mb(ctx.limit),
               "weights_memory_mb": mb(sum(t.weight_bytes for t in ctx.tensors)),
               "results": rows}  # fmt: skip
        print(dumps(out))
        return 0
    base = next((r for r in results if r.name == "sequential"), None)
    print(
        f"{len(graphs)} tenants on {gpu.name}: "
        + ", ".join(f"{t.name} ({t.arrival})" for t in workload.tenants)
        + (f"; {requests} requests each" if requests else f"; {duration:g} ms")
        + (f"; SLO {args.slo_ms:g} ms" if slo else "")
    )

    def f(v: float | None, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    table = []
    for r in rows:
        sp = (
            f"{r['throughput_rps'] / base.metrics.throughput_rps:.2f}x"
            if base is not None and base.metrics.throughput_rps > 0
            else "-"
        )
        table.append(
            [r["scheduler"], r["mode"], f(r["throughput_rps"], ".1f"), sp, f(r["p50_ms"], ".3f"),
             f(r["p95_ms"], ".3f"), f(r["p99_ms"], ".3f"),
             f(None if r["slo_attainment"] is None else 100 * r["slo_attainment"], ".1f"),
             str(r["dropped"]), f(100 * r["sm_utilisation"], ".0f"),
             f(100 * r["dram_utilisation"], ".0f"), str(r["streams"]),
             f(r["peak_memory_mb"], ".1f"), f(r["reserved_memory_mb"], ".1f"),
             str(r["memory_waits"])]
        )  # fmt: skip
    header = ["scheduler", "mode", "req/s", "vs seq", "p50 ms", "p95 ms", "p99 ms", "SLO %",
              "dropped", "SM %", "DRAM %", "streams", "peak MB", "reserved MB",
              "mem waits"]  # fmt: skip
    print(_table(table, header, right=set(range(2, len(header)))))
    for r in results:
        if r.search is not None:
            s = r.metrics.extra["search"]
            print(
                f"search: {s['candidates_simulated']} candidates simulated, "
                f"{s['candidates_scored']} ranked by the cost model "
                f"(rank correlation {f(s['rank_correlation'], '.2f')}), best from {s['best_source']}, "
                f"{f(s['gain_over_best_baseline'], '.2f')}x the {s['objective']} of the best "
                f"baseline ({s['best_baseline']})"
            )
    tenant_header = ["tenant", "req/s", "p50 ms", "p99 ms", "completed", "dropped",
                     "weights MB", "request MB", "peak MB", "reserved MB"]  # fmt: skip
    print("per tenant (" + best.name + "):")
    print(
        _table(
            [
                [
                    t.name,
                    f(t.throughput_rps, ".1f"),
                    f(t.p50_ms, ".3f"),
                    f(t.p99_ms, ".3f"),
                    str(t.completed),
                    str(t.dropped),
                    f(t.weights_memory_mb, ".1f"),
                    f(t.request_memory_mb, ".2f"),
                    f(t.peak_memory_mb, ".1f"),
                    f(t.reserved_memory_mb, ".1f"),
                ]
                for t in best.metrics.tenants
            ],
            tenant_header,
        )
    )
    limit_mb = ctx.limit / (1 << 20)
    print(
        f"memory: {limit_mb:.0f} MB {'limit' if args.memory_limit else 'on the GPU'}; "
        "a request is admitted when its reservation (request MB) fits beside the weights "
        "and the requests in flight"
    )
    for r in rows:
        for note in r["memory_notes"]:
            print(f"note ({r['scheduler']}): {note}")
    for label, path in written:
        print(f"{label}: {path}")
    return 0


# --- parser ---------------------------------------------------------------------------


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{v} must be positive")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a positive number")
    return v


def _non_negative(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"{v} must not be negative")
    return v


def _memory_mb(text: str) -> float:
    """--memory-limit: a positive, finite number of MB (simgpu.memory.parse_limit_mb)."""
    from simgpu.memory import parse_limit_mb

    try:
        v = float(text)
        parse_limit_mb(v)
    except (ValueError, SimGPUError):
        raise argparse.ArgumentTypeError(
            f"expected a positive number of MB, got {text!r}"
        ) from None
    return v


def _limit_bytes(args: argparse.Namespace) -> int | None:
    from simgpu.memory import MB

    v = getattr(args, "memory_limit", None)
    return None if v is None else int(v * MB)


def _version() -> str:
    """The installed package's version (its metadata), else the source tree's."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("simgpu")
    except PackageNotFoundError:
        from simgpu import __version__

        return __version__


MODEL_HELP = (
    "built-in model (see `simgpu models`) or graph file: simgpu graph JSON, IOS graph JSON "
    "or ONNX, told apart by content"
)
BATCH_HELP = (
    "batch size (default 1; an ONNX file's own); rebuilds models, IOS and ONNX files — "
    "a simgpu graph file keeps its fixed shapes"
)
IMAGE_HELP = "input resolution in px, built-in image models only (default: the model's own)"
DTYPE_HELP = "element type of activations and weights (default fp32; an ONNX file's own)"
GPU_HELP = "GPU preset or GPU JSON file (default v100; see `simgpu gpus`)"
MACHINE_HELP = (
    "machine preset or JSON file: several GPUs and their links, instead of --gpu "
    "(see `simgpu machines`)"
)
MEMORY_HELP = (
    "memory per GPU in MB (MiB): memory-aware schedulers (ios, lios, heft, nimble, opara, "
    "hios) schedule within it; any schedule whose live tensors exceed it is reported failed"
)
OPTION_HELP = (
    "scheduler option, repeatable, e.g. ios.r=3 (each scheduler's options, types and "
    "defaults: `simgpu schedulers --json`)"
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="simgpu",
        description="Simulate multi-stream DNN inference schedules on modelled GPUs.",
    )
    p.add_argument("--version", action="version", version=f"simgpu {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def model_args(sp: argparse.ArgumentParser, files: bool = True) -> None:
        sp.add_argument(
            "model", help=MODEL_HELP if files else "built-in model (see `simgpu models`)"
        )
        sp.add_argument("--batch", type=_positive, default=None, help=BATCH_HELP)
        sp.add_argument("--image-size", type=_positive, default=None, help=IMAGE_HELP)
        sp.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"], help=DTYPE_HELP)

    def outputs(sp: argparse.ArgumentParser, what: str) -> None:
        sp.add_argument("--json", action="store_true", help="print one JSON object, no table")
        sp.add_argument(
            "--trace",
            metavar="FILE",
            help=f"Chrome/Perfetto trace of {what} ('{{scheduler}}' in the name writes one "
            "file per scheduler)",
        )
        sp.add_argument(
            "--gantt", metavar="PNG", help="Gantt chart (several schedulers: one panel each)"
        )

    r = sub.add_parser("run", help="compare schedulers on a built-in model or a graph file")
    model_args(r)
    r.add_argument("--gpu", default=None, help=GPU_HELP)
    r.add_argument("--machine", help=MACHINE_HELP)
    r.add_argument(
        "--scheduler",
        action="append",
        help="scheduler name, repeatable; 'all' (default) runs every one (`simgpu schedulers`)",
    )
    r.add_argument("--option", action="append", metavar="SCHED.KEY=VALUE", help=OPTION_HELP)
    r.add_argument("--runtime", help=RUNTIME_HELP)
    r.add_argument("--memory-limit", type=_memory_mb, metavar="MB", help=MEMORY_HELP)
    outputs(r, "the fastest schedule")
    r.add_argument("--schedule-out", metavar="FILE", help="write the fastest schedule as JSON")
    r.set_defaults(func=cmd_run)

    s = sub.add_parser(
        "simulate", help="simulate a graph file (simgpu, IOS or ONNX) with a schedule or scheduler"
    )
    s.add_argument("graph", help=MODEL_HELP)
    s.add_argument("--schedule", metavar="FILE", help="schedule JSON (from `run --schedule-out`)")
    s.add_argument(
        "--scheduler",
        action="append",
        help="compute the schedule with this scheduler (default: an IOS file's own stages, "
        "else sequential); repeat it or give 'all' to compare several, as `run` does",
    )
    s.add_argument("--option", action="append", metavar="SCHED.KEY=VALUE", help=OPTION_HELP)
    s.add_argument("--runtime", help=RUNTIME_HELP)
    s.add_argument("--gpu", default=None, help=GPU_HELP)
    s.add_argument("--machine", help=MACHINE_HELP)
    s.add_argument("--memory-limit", type=_memory_mb, metavar="MB", help=MEMORY_HELP)
    s.add_argument(
        "--batch",
        type=_positive,
        default=None,
        help="batch size for models, IOS files (default 1) and ONNX files (default: the model's)",
    )
    s.add_argument(
        "--dtype",
        default=None,
        choices=["fp32", "fp16", "bf16"],
        help="element type for models and IOS files (default fp32); overrides an ONNX model's",
    )
    outputs(s, "the schedule")
    s.set_defaults(func=cmd_simulate)

    x = sub.add_parser(
        "explain",
        help="why a schedule takes the time it does: critical path, host against GPU, "
        "waits per stream, and per-op gains against another scheduler",
    )
    model_args(x)
    x.add_argument("--scheduler", required=True, help="the scheduler to explain")
    x.add_argument(
        "--against", metavar="SCHED", help="compare per-op times with this scheduler's schedule"
    )
    x.add_argument("--option", action="append", metavar="SCHED.KEY=VALUE", help=OPTION_HELP)
    x.add_argument("--runtime", help=RUNTIME_HELP)
    x.add_argument("--memory-limit", type=_memory_mb, metavar="MB", help=MEMORY_HELP)
    x.add_argument("--gpu", default=None, help=GPU_HELP)
    x.add_argument("--machine", help=MACHINE_HELP)
    x.add_argument(
        "--top", type=_positive, default=10, help="rows of the per-op and path lists (default 10)"
    )
    x.add_argument("--json", action="store_true", help="print one JSON object, no text")
    x.set_defaults(func=cmd_explain)

    for name, fn, text in (
        ("models", cmd_models, "list built-in models"),
        ("gpus", cmd_gpus, "list GPU presets"),
        ("machines", cmd_machines, "list machine presets (several GPUs and their links)"),
        ("schedulers", cmd_schedulers, "list registered schedulers and their options"),
        ("runtimes", cmd_runtimes, "list runtimes and their host costs per call"),
    ):
        sp = sub.add_parser(name, help=text)
        sp.add_argument(
            "--json", action="store_true", help="print a JSON list with every field, no table"
        )
        sp.set_defaults(func=fn)

    e = sub.add_parser(
        "export", help="write a built-in model (or a graph file) as a simgpu graph JSON file"
    )
    model_args(e)
    e.add_argument("-o", "--output", required=True, metavar="FILE", help="graph JSON to write")
    e.set_defaults(func=cmd_export)

    w = sub.add_parser(
        "sweep", help="run every combination of models, sizes, GPUs and schedulers to a CSV"
    )
    w.add_argument("--grid", metavar="TOML", help="grid file (command-line axes replace its own)")
    w.add_argument(
        "--model",
        action="append",
        help="built-in model, 'all', or graph file (simgpu JSON, IOS JSON, ONNX), repeatable",
    )
    w.add_argument(
        "--batch",
        action="append",
        type=_positive,
        help="batch size, repeatable (default 1; a simgpu graph file keeps its own)",
    )
    w.add_argument(
        "--image-size",
        action="append",
        type=_positive,
        help="input px, repeatable (built-in image models only; default: each model's own)",
    )
    w.add_argument(
        "--dtype",
        action="append",
        choices=["fp32", "fp16", "bf16"],
        help="element type, repeatable (default fp32; a simgpu graph file keeps its own)",
    )
    w.add_argument("--gpu", action="append", help="GPU preset or JSON file, repeatable")
    w.add_argument("--machine", action="append", help="machine preset or file, repeatable")
    w.add_argument(
        "--runtime",
        action="append",
        help="runtime every scheduler runs under, repeatable (default: each scheduler's own)",
    )
    w.add_argument(
        "--scheduler", action="append", help="scheduler name, repeatable; 'all' (default)"
    )
    w.add_argument(
        "--option",
        action="append",
        metavar="SCHED.KEY=V[,V...]",
        help="scheduler option; commas sweep several values",
    )
    w.add_argument(
        "--memory-limit",
        action="append",
        metavar="MB",
        help="memory per GPU in MB (MiB), repeatable; 'none' adds rows without a limit. "
        "A schedule that exceeds its limit is a failed row with the reason",
    )
    w.add_argument("-o", "--out", required=True, help="results CSV (appended to, resumable)")
    w.add_argument("--workers", type=_positive, help="local processes (default: every core)")
    w.add_argument("--dask", metavar="ADDRESS|local:N", help="run on a Dask cluster")
    w.add_argument(
        "--retry-failed", action="store_true", help="rerun rows recorded as errors or timeouts"
    )
    w.add_argument("--timeout", type=float, metavar="S", help="limit each combination to S seconds")
    w.add_argument(
        "--quiet",
        action="store_true",
        help="no progress (a terminal redraws one line; a log gets a line per tenth)",
    )
    w.add_argument("--json", action="store_true", help="print a JSON summary")
    w.set_defaults(func=cmd_sweep)

    rp = sub.add_parser("report", help="plots and a Markdown/HTML summary of sweep results")
    rp.add_argument("results", help="results CSV from `simgpu sweep`")
    rp.add_argument("--out", help="output folder (default: RESULTS without .csv, + _report)")
    rp.add_argument(
        "--max-gantt", type=int, default=6, help="Gantt charts of at most N winners (default 6)"
    )
    rp.add_argument(
        "--max-memory-plots",
        type=int,
        default=12,
        metavar="N",
        help="latency-against-peak-memory panels for at most N configurations (default 12)",
    )
    rp.set_defaults(func=cmd_report)

    mt = sub.add_parser(
        "multitenant", help="several models sharing one GPU: baselines and scheduling search"
    )
    mt.add_argument("models", nargs="+", metavar="MODEL", help="built-in model or graph file")
    mt.add_argument("--gpu", default="v100", help="GPU preset or JSON file (default v100)")
    mt.add_argument(
        "--runtime",
        help="runtime pricing every request's host calls: pytorch-eager, cudnn or tensorrt "
        "(default: the GPU's flat launch costs)",
    )
    mt.add_argument(
        "--scheduler",
        action="append",
        help="sequential, multistream, breadth-first, depth-first, search; repeatable; "
        "'all' (default)",
    )
    mt.add_argument(
        "--arrival",
        action="append",
        metavar="closed|poisson:RATE|periodic:MS",
        help="request arrivals (default closed); once for all models or once per model",
    )
    mt.add_argument("--requests", type=_positive, help="requests per tenant (default 10)")
    mt.add_argument(
        "--duration",
        type=_positive_float,
        metavar="MS",
        help="arrival window, instead of --requests",
    )
    mt.add_argument("--slo-ms", type=_positive_float, help="latency SLO of every tenant")
    mt.add_argument(
        "--max-queue", type=_positive, help="admission: drop requests finding N waiting"
    )
    mt.add_argument(
        "--budget", type=_non_negative, default=40, help="search: candidates to simulate"
    )
    mt.add_argument(
        "--time-budget", type=_positive_float, metavar="S", help="search: wall-clock cap"
    )
    mt.add_argument("--seed", type=_non_negative, default=0, help="arrivals and search seed")
    mt.add_argument(
        "--batch", type=_positive, default=1, help="batch size of built-in models (default 1)"
    )
    mt.add_argument("--image-size", type=_positive, default=None, help=IMAGE_HELP)
    mt.add_argument(
        "--dtype",
        default="fp32",
        choices=["fp32", "fp16", "bf16"],
        help="element type of built-in models (default fp32)",
    )
    mt.add_argument(
        "--memory-limit",
        type=_memory_mb,
        metavar="MB",
        help="GPU memory in MB (MiB) for admission (default: the GPU's): the tenants' weights "
        "must fit, and a request starts only when its activations fit beside those in flight",
    )
    mt.add_argument("--json", action="store_true", help="print one JSON object")
    mt.add_argument(
        "--trace", help="Chrome/Perfetto trace of the best policy ('{scheduler}': one each)"
    )
    mt.add_argument("--gantt", help="Gantt chart PNG, one panel per policy")
    mt.set_defaults(func=cmd_multitenant)

    # `replay` and `calibrate ...` live beside what they run (calibrate/cli.py)
    from calibrate.cli import add_commands

    add_commands(sub)
    return p


def _no_blank_values(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """An empty or blank value (``--gpu ""``) is refused: it would otherwise read as
    "not given" and silently mean the default (a V100)."""
    for key, v in vars(args).items():
        for x in v if isinstance(v, list) else [v]:
            if isinstance(x, str) and not x.strip():
                parser.error(f"argument --{key.replace('_', '-')}: an empty value")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _no_blank_values(parser, args)
    try:
        rc = args.func(args)
        sys.stdout.flush()  # a full disk or a closed pipe shows here, not at exit
        return rc
    except SimGPUError as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"simgpu: error: {printable(msg)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("simgpu: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        _silence_stdout()
        return 0
    except OSError as e:  # writing an output: no space, no permission, a read-only file
        _silence_stdout()
        where = f"{e.filename}: " if e.filename else ""
        print(f"simgpu: error: cannot write output: {printable(where + (e.strerror or str(e)))}",
              file=sys.stderr)  # fmt: skip
        return EXIT_ERROR


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush of what could not be
    written does not print a traceback after the one-line error."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
