"""``simgpu replay`` and ``simgpu calibrate ...``: the calibration commands.

Kept here, beside what they run, and added to the ``simgpu`` parser by
:func:`add_commands`; errors are SimGPUErrors, printed by ``simgpu.cli.main`` as one line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from calibrate.errors import CalibrationError
from simgpu.output import dumps


def _progress(step: str):
    """A one-line progress bar on a terminal; nothing when stderr is a file or a pipe
    (carriage-return frames would fill a log)."""
    if not sys.stderr.isatty():
        return lambda name, i, n: None

    def show(name: str, i: int, n: int) -> None:
        width = 20
        done = width * i // max(n, 1)
        print(f"\r{step} [{'#' * done}{'.' * (width - done)}] {i + 1}/{n} {name[:40]:<40}", end="", file=sys.stderr, flush=True)  # fmt: skip
        if i + 1 == n:
            print(file=sys.stderr)

    return show


def _gpu(spec: str | None):
    from simgpu.hardware import load_gpu

    return None if spec is None else load_gpu(spec)


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(dumps(data) if getattr(args, "json", False) else text)


# --- replay ---------------------------------------------------------------------------


def cmd_replay(args: argparse.Namespace) -> int:
    from calibrate.kineto import load_trace, replay

    trace = load_trace(args.trace)
    res = replay(trace, gpu=_gpu(args.gpu), host=args.host, syncs=args.syncs, fit=not args.no_fit)
    out = res.to_json()
    lines = [
        f"{Path(args.trace).name} on {res.gpu} (host {res.host}, syncs {res.syncs})",
        f"kernels {res.kernels}  memcpys {res.memcpys}  memsets {res.memsets}  streams {res.streams}",
        f"GPU span      recorded {res.recorded_ms:.4f} ms  simulated {res.simulated_ms:.4f} ms  "
        f"error {res.error_pct:+.3f}%",
        f"GPU busy      recorded {res.busy_recorded_ms:.4f} ms  simulated "
        f"{res.busy_simulated_ms:.4f} ms  error {res.busy_error_pct:+.2f}%  "
        f"(busy {100 * res.busy_share:.1f}% of the recorded span)",
        f"kernel starts |simulated - recorded| mean {res.start_mae_us:.1f} us  "
        f"p95 {res.start_p95_us:.1f} us (from the first host call); "
        f"mean {res.aligned_mae_us:.1f} us p95 {res.aligned_p95_us:.1f} us with both first "
        "activities at 0",
        "per stream (span, busy time, start error):",
    ]
    for s in res.per_stream:
        lines.append(
            f"  stream {s.stream} (device {s.device}): {s.kernels} activities, "
            f"span {s.recorded_ms:.4f} vs {s.simulated_ms:.4f} ms ({s.error_pct:+.2f}%), "
            f"busy {s.busy_recorded_ms:.4f} vs {s.busy_simulated_ms:.4f} ms "
            f"({s.busy_error_pct:+.2f}%), start mean {s.start_mae_us:.1f} p95 {s.start_p95_us:.1f} us"
        )
    _emit(args, out, "\n".join(lines))
    return 0


# --- fidelity -------------------------------------------------------------------------

FIDELITY_DEFAULT_DIRS = ("../shared/data", "traces")


def cmd_fidelity(args: argparse.Namespace) -> int:
    from calibrate.fidelity import build_report, format_report

    dirs = args.data
    if not dirs:
        dirs = [d for d in FIDELITY_DEFAULT_DIRS if Path(d).is_dir()]
        if not dirs:
            raise CalibrationError(
                f"no datasets found: none of {', '.join(FIDELITY_DEFAULT_DIRS)} exists "
                f"here ({Path.cwd()}); give --data DIR"
            )
    from calibrate.costfit import logo_predictions

    logo = (lambda ds: {}) if args.no_logo else logo_predictions if args.refit_logo else None
    report = build_report(dirs, gpu=_gpu(args.gpu), logo=logo)
    if args.no_logo:
        report.notes.append("LOGO MAPE not computed (--no-logo)")
    _emit(args, report.to_json(), format_report(report))
    return 0


# --- calibrate ------------------------------------------------------------------------


def cmd_probe(args: argparse.Namespace) -> int:
    from calibrate.fit import write_json
    from calibrate.probe import probe

    data = probe(args.device)
    if args.out:
        write_json(data, args.out)
    _emit(args, data, dumps(data["gpu"]) if not args.out else f"probe -> {args.out}")
    return 0


def cmd_microbench(args: argparse.Namespace) -> int:
    from calibrate.fit import write_json
    from calibrate.microbench import BENCHES, analyse, run

    gpu = _gpu(args.gpu) or _probed_or_none(Path(args.out))
    run(
        args.out,
        device=args.device,
        benches=args.bench or BENCHES,
        repeats=args.repeats,
        progress=_progress("microbench"),
    )
    if gpu is None:
        raise CalibrationError("microbenchmarks ran; give --gpu (or run probe first) to analyse")
    res = analyse(args.out, gpu)
    write_json(res, Path(args.out) / "analysis.json")
    _emit(args, res, dumps(res["fields"]))
    return 0


def _probed_or_none(folder: Path):
    p = folder / "probe.json"
    if p.exists():
        from simgpu.hardware import load_gpu

        return load_gpu(str(p))
    return None


def cmd_profile(args: argparse.Namespace) -> int:
    from calibrate.profile import profile_graph, write_table
    from simgpu.models import build_model

    graph = build_model(args.model, batch=args.batch, image_size=args.image_size, dtype=args.dtype)
    profiles = profile_graph(
        graph, args.device, args.warmup, args.repeats, progress=_progress(args.model)
    )
    meta = {"model": args.model, "batch": args.batch, "dtype": args.dtype}
    write_table(args.out, profiles, meta)
    mem = sum(p.peak_memory_bytes is not None for p in profiles)
    print(f"{args.model}: {len(profiles)} distinct ops ({mem} with peak memory) -> {args.out}")
    return 0


def _base_of(spec: str | None, traces: list) -> Any:
    from simgpu.graph import read_json
    from simgpu.hardware import PRESETS, preset

    if spec is None:
        if not traces:
            raise CalibrationError("give --base (a preset or a probe file) or a --trace")
        from calibrate.probe import spec_from_facts

        props = traces[0].props(traces[0].devices[0])
        if props is None:
            raise CalibrationError(f"{traces[0].source}: no deviceProperties: give --base")
        return spec_from_facts(props)
    p = Path(spec)
    if p.exists() or spec.endswith(".json"):
        data = read_json(p)
        if isinstance(data, dict) and isinstance(data.get("gpu"), dict):
            data = data["gpu"]
        if not isinstance(data, dict):
            raise CalibrationError(f"{spec}: a base GPU file must hold a JSON object")
        return data
    name = preset(spec).name  # a clear error for an unknown preset
    assert name in PRESETS
    return name


def cmd_fit_public(args: argparse.Namespace) -> int:
    from calibrate.costfit import fit_public

    dirs = [Path(d) for d in (args.data or ["../shared/data"])]
    for d in dirs:
        if not d.is_dir():
            raise CalibrationError(f"{d}: no such folder")
    try:
        import scipy  # noqa: F401
    except ImportError:
        raise CalibrationError("fit-public needs scipy: pip install 'simgpu[fit]'") from None
    doc = fit_public(dirs, logo=not args.no_logo)
    out = Path(args.out)
    try:
        out.write_text(dumps(doc) + "\n")
    except OSError as e:
        raise CalibrationError(f"{out}: cannot write ({e.strerror})") from None
    lines = []
    for arch, entry in doc["archs"].items():
        lines.append(f"{arch} (fitted on {entry['fitted_on']}, {entry['rows']} rows):")
        for u, c in entry["units"].items():
            lines.append(f"  {u:16s} efficiency {c['efficiency']:.3f}  iteration "
                         f"{c['iter_cycles']:.0f} cycles  block {c['block_cycles']:.0f} cycles")  # fmt: skip
        for d in entry["datasets"]:
            logo = "-" if d["logo_mape"] is None else f"{d['logo_mape']:.1f}%"
            lines.append(f"  {d['name']:34s} fit {d['fit_mape']:5.1f}%  leave-one-group-out {logo}")
    lines.append(f"-> {out}")
    _emit(args, doc, "\n".join(lines))
    return 0


def cmd_fit_host(args: argparse.Namespace) -> int:
    from calibrate.hostfit import fit_host

    kineto, published = Path(args.kineto), Path(args.published)
    for p in (kineto, published):
        if not p.is_file():
            raise CalibrationError(f"{p}: no such file")
    doc = fit_host(kineto, published, _gpu(args.gpu or "v100"), _progress("simulating"))
    out = Path(args.out)
    try:
        out.write_text(dumps(doc) + "\n")
    except OSError as e:
        raise CalibrationError(f"{out}: cannot write ({e.strerror})") from None
    f = doc["fit"]
    lines = [f"pytorch-eager speed factor {f['scale']:.3f} (per-op times of {doc['kineto']['file']})",
             f"{'model':18s} {'published':>9s} {'fit':>7s} {'error':>7s} {'LOMO':>7s} {'error':>7s}"]  # fmt: skip
    for m, pub in doc["published"]["speedups"].items():
        lines.append(f"{m:18s} {pub:8.2f}x {f['predicted'][m]:6.2f}x {100 * f['error'][m]:+6.1f}% "
                     f"{f['logo_predicted'][m]:6.2f}x {100 * f['logo_error'][m]:+6.1f}%")  # fmt: skip
    if doc["published"]["not_in_zoo"]:
        lines.append(f"not in the zoo: {', '.join(doc['published']['not_in_zoo'])}")
    lines.append(f"-> {out}")
    _emit(args, doc, "\n".join(lines))
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    from calibrate.fit import calibration, fit_device_latencies, fit_host_costs, write_json
    from calibrate.kineto import load_trace
    from calibrate.microbench import analyse
    from calibrate.profile import add_memory_ops, read_memory_ops, read_table
    from simgpu.hardware import gpu_from_json

    traces = [load_trace(t) for t in args.trace or []]
    base = _base_of(args.base, traces)
    fields: dict[str, Any] = {}
    fits: dict[str, Any] = {}
    if traces:  # several traces: the median of each field over them
        per = [{**fit_host_costs(t), **fit_device_latencies(t)} for t in traces]
        for k in sorted({k for p in per for k in p}):
            fields[k] = float(statistics.median(p[k] for p in per if k in p))
        fits["traces"] = [t.source for t in traces]
    if args.microbench:  # measured without the profiler: it wins over trace fits
        spec = gpu_from_json(base if isinstance(base, dict) else {"base": base}, source="base")
        mb = analyse(args.microbench, spec)
        fields.update(mb["fields"])
        fits["microbench"] = mb
    table: dict[str, Any] = {}
    memory: dict[str, Any] = {}
    for path in args.kernel_table or []:
        table.update(read_table(path))
        memory.update(read_memory_ops(path))
    if not fields and not table:
        raise CalibrationError("nothing to fit: give --trace, --microbench or --kernel-table")
    data = calibration(base, fields, table, fits, name=args.name)
    data["gpu"] = add_memory_ops(data["gpu"], memory)
    g = gpu_from_json(dict(data["gpu"]), source=args.out)  # refuse to write what cannot load
    write_json(data, args.out)
    _emit(args, data, f"{g.name}: {len(fields)} fitted fields, {len(table)} kernel-table ops, "
                      f"{len(memory)} measured op memories -> {args.out}")  # fmt: skip
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from calibrate.fit import write_json
    from calibrate.validate import (
        format_table,
        resimulate_file,
        scatter,
        summarise,
        validate_model,
    )

    if args.recorded:
        if args.model:
            raise CalibrationError("give MODEL (run on a GPU) or --recorded FILE, not both")
        summary = resimulate_file(args.recorded)
        if args.plot:
            scatter(summary, args.plot, title=f"{summary['model']} on {summary['gpu']}")
        _emit(args, summary, format_table(summary))
        return 0
    if not args.model:
        raise CalibrationError("give MODEL (run on a GPU) or --recorded FILE")
    from schedulers.base import scheduler_names

    names: list[str] = []
    for n in args.scheduler or ["all"]:
        names += scheduler_names(single_gpu_only=True) if n == "all" else [n]
    gpu = _gpu(args.gpu)
    if gpu is None:
        raise CalibrationError("give --gpu: the calibration file to simulate with")
    record = validate_model(
        args.model,
        list(dict.fromkeys(names)),
        gpu,
        device=args.device,
        batch=args.batch,
        progress=_progress(f"validate {args.model}"),
    )
    out = args.out or f"validation-{args.model}.json"
    write_json(record, out)
    summary = summarise(record["schedules"])
    if args.plot:
        scatter(summary, args.plot, title=f"{args.model} on {record['device']}")
    _emit(args, summary, format_table(summary) + f"\n-> {out}")
    return 0


def cmd_all(args: argparse.Namespace) -> int:
    """probe, microbenchmarks, per-op profiles and fit into one folder; steps whose
    files exist are skipped, so an interrupted run resumes."""
    from calibrate.errors import require_cuda
    from calibrate.fit import calibration, write_json
    from calibrate.microbench import BENCHES, analyse, run
    from calibrate.probe import probe
    from calibrate.profile import (
        add_memory_ops,
        profile_graph,
        read_memory_ops,
        read_table,
        write_table,
    )
    from simgpu.hardware import gpu_from_json
    from simgpu.models import build_model

    require_cuda("calibration")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    p = out / "probe.json"
    if not p.exists():
        write_json(probe(args.device), p)
    base = json.loads(p.read_text())["gpu"]
    spec = gpu_from_json(dict(base), source=str(p))
    run(out / "microbench", device=args.device, benches=BENCHES, progress=_progress("microbench"))
    mb = analyse(out / "microbench", spec)
    table: dict[str, Any] = {}
    memory: dict[str, Any] = {}
    for model in args.model or []:
        kt = out / f"kernels-{model}.json"
        if not kt.exists():
            g = build_model(model)
            write_table(
                kt, profile_graph(g, args.device, progress=_progress(model)), {"model": model}
            )
        table.update(read_table(kt))
        memory.update(read_memory_ops(kt))
    data = calibration(base, mb["fields"], table, {"microbench": mb})
    data["gpu"] = add_memory_ops(data["gpu"], memory)
    gpu_from_json(dict(data["gpu"]), source="calibration")
    write_json(data, out / "calibration.json")
    print(f"calibration -> {out / 'calibration.json'}")
    return 0


def add_commands(sub: Any) -> None:
    """Add ``replay``, ``fidelity`` and ``calibrate`` to the ``simgpu`` subcommand parser."""
    r = sub.add_parser(
        "replay",
        help="replay a PyTorch profiler (Kineto) trace on the simulator",
        description="Simulate a Kineto trace (or simgpu's own --trace output): each kernel "
        "keeps its recorded duration and the simulator decides when it starts. Reports "
        "the GPU span error, the GPU busy-time error, per-kernel start errors (mean and "
        "p95 of |simulated - recorded| start) and the same per stream.",
    )
    r.add_argument("trace", help="Chrome trace JSON from torch.profiler (plain or .gz)")
    r.add_argument("--gpu", help="GPU preset or JSON file (default: the trace's deviceProperties)")
    r.add_argument(
        "--host",
        choices=["recorded", "median"],
        default="recorded",
        help="issue each call at its recorded host time, or at the trace's median costs",
    )
    r.add_argument(
        "--syncs",
        choices=["device", "none"],
        default="device",
        help="replay host synchronisations as device syncs, or leave them to the host gaps",
    )
    r.add_argument(
        "--no-fit",
        action="store_true",
        help="keep the GPU's launch latency and kernel gap (default: fit them to the trace)",
    )
    r.add_argument("--json", action="store_true", help="print one JSON object")
    r.set_defaults(func=cmd_replay)

    fd = sub.add_parser(
        "fidelity",
        help="report card: the simulator against public and recorded GPU measurements",
        description=(
            "Score the simulator against every dataset found under the --data folders "
            "(recursively): DeepBench CSVs (<gpu>_<dtype>_{gemm,conv_fwd}.csv) and AutoTVM "
            "logs (<net>_<gpu>_bs<N>.log), one priced library call per row; Kineto traces "
            "(*.json, *.json.gz with traceEvents), replayed as `simgpu replay` does; "
            "recorded validation files (simgpu calibrate validate), re-simulated per "
            "schedule. Without --data: ../shared/data and traces/ (relative to the current "
            "folder), those of them that exist. Ratios are simulated / measured."
        ),
    )
    fd.add_argument(
        "--data",
        action="append",
        metavar="DIR",
        help="folder to search, repeatable (default: ../shared/data and traces/ where present)",
    )
    fd.add_argument(
        "--gpu",
        metavar="NAME|FILE",
        help="simulate every dataset on this preset or GPU JSON (e.g. a calibration) "
        "instead of the GPU each was measured on",
    )
    fd.add_argument(
        "--no-logo",
        action="store_true",
        help="leave the LOGO MAPE column empty (no refit)",
    )
    fd.add_argument(
        "--refit-logo",
        action="store_true",
        help="refit leave-one-group-out even where the committed fit recorded it for "
        "the same files (minutes)",
    )
    fd.add_argument("--json", action="store_true", help="print one JSON object")
    fd.set_defaults(func=cmd_fidelity)

    c = sub.add_parser("calibrate", help="measure a real GPU and fit the simulator to it")
    cs = c.add_subparsers(dest="step", required=True, metavar="STEP")

    p = cs.add_parser("probe", help="device facts (NVML, CUDA properties) -> GPU spec JSON")
    p.add_argument("--device", type=int, default=0, help="CUDA device index (default 0)")
    p.add_argument("-o", "--out", help="write the probe JSON here (default: print the spec)")
    p.add_argument("--json", action="store_true", help="print the whole probe result as JSON")
    p.set_defaults(func=cmd_probe)

    m = cs.add_parser("microbench", help="launch, event, wave, overlap, bandwidth benchmarks")
    m.add_argument("--device", type=int, default=0, help="CUDA device index (default 0)")
    m.add_argument("--out", required=True, help="folder for raw results (resumable)")
    m.add_argument(
        "--bench",
        action="append",
        help="benchmark name, repeatable (default all: launch, events, waves, overlap, "
        "bandwidth, connections)",
    )
    m.add_argument(
        "--repeats", type=int, default=20, help="timed repetitions of each case (default 20)"
    )
    m.add_argument("--gpu", help="GPU spec for the analysis (default OUT/probe.json)")
    m.add_argument("--json", action="store_true", help="print the whole analysis as JSON")
    m.set_defaults(func=cmd_microbench)

    pr = cs.add_parser(
        "profile",
        help="time every distinct op of a model alone -> kernel table",
        description="Time every distinct op of a model alone on the GPU, read its kernels "
        "from the profiler, and measure its memory: torch.cuda.max_memory_allocated over "
        "one call less what was allocated before it (peak_memory_bytes), the returned "
        "tensor's storage (output_bytes) and the difference (workspace_bytes). The "
        "file's memory_ops go into a calibration's memory.ops (calibrate fit).",
    )
    pr.add_argument("model", help="built-in model name (simgpu models lists them)")
    pr.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    pr.add_argument(
        "--image-size", type=int, default=None, help="input image side (default: the model's)"
    )
    pr.add_argument(
        "--dtype", default="fp32", choices=["fp32", "fp16", "bf16"], help="data type (default fp32)"
    )
    pr.add_argument("--device", type=int, default=0, help="CUDA device index (default 0)")
    pr.add_argument("--warmup", type=int, default=10, help="untimed runs of each op (default 10)")
    pr.add_argument("--repeats", type=int, default=50, help="timed runs of each op (default 50)")
    pr.add_argument("-o", "--out", required=True, help="kernel table JSON to write")
    pr.set_defaults(func=cmd_profile)

    f = cs.add_parser("fit", help="fit GPU spec fields to traces/benchmarks -> calibration JSON")
    f.add_argument(
        "--trace",
        action="append",
        help="Kineto trace, repeatable (host costs and launch latencies: medians over them)",
    )
    f.add_argument(
        "--microbench", help="folder of microbenchmark results (its fits win over traces')"
    )
    f.add_argument(
        "--kernel-table", action="append", help="kernel table from `profile`, repeatable"
    )
    f.add_argument("--base", help="preset name or probe/spec JSON (default: the trace's GPU)")
    f.add_argument("--name", help="name of the calibrated GPU (default: derived from the base)")
    f.add_argument("-o", "--out", required=True, help="calibration JSON to write")
    f.add_argument("--json", action="store_true", help="print the written calibration")
    f.set_defaults(func=cmd_fit)

    fp = cs.add_parser(
        "fit-public",
        help="fit the library kernels' costs to public measurements -> library_costs.json",
        description="Fit the per-unit efficiency, main-loop latency and block latency of "
        "library kernels (simgpu.costs) by least squares to DeepBench CSVs and AutoTVM logs. "
        "The project's own file is simgpu/data/library_costs.json.",
    )
    fp.add_argument("--data", action="append", metavar="DIR",
                    help="folder searched for datasets, repeatable (default ../shared/data)")  # fmt: skip
    fp.add_argument("-o", "--out", required=True, help="library costs JSON to write")
    fp.add_argument("--no-logo", action="store_true",
                    help="skip the leave-one-group-out refits (about 50 s)")  # fmt: skip
    fp.add_argument("--json", action="store_true", help="print the written document")
    fp.set_defaults(func=cmd_fit_public)

    fh = cs.add_parser(
        "fit-host",
        help="fit the runtimes' host costs to a Kineto trace and published speedups",
        description="Per-op framework time by op family from a PyTorch profiler trace, and "
        "the framework's speed factor fitted to Nimble's published speedups over eager "
        "PyTorch (with leave-one-model-out errors). The project's own file is "
        "simgpu/data/host_costs.json.",
    )
    fh.add_argument("--kineto", default="../shared/data/kineto/v100_training_1stream.json.gz",
                    help="Kineto trace with aten ops and their launches")  # fmt: skip
    fh.add_argument("--published", default="../shared/data/published/nimble_v100.json",
                    help="published speedups of nimble over eager PyTorch")  # fmt: skip
    fh.add_argument("--gpu", help="GPU the speedups were measured on (default v100)")
    fh.add_argument("-o", "--out", required=True, help="host costs JSON to write")
    fh.add_argument("--json", action="store_true", help="print the written document")
    fh.set_defaults(func=cmd_fit_host)

    v = cs.add_parser("validate", help="schedules on the GPU vs simulated, or re-simulate a file")
    v.add_argument("model", nargs="?", help="built-in model to run on the GPU")
    v.add_argument("--recorded", help="re-simulate a recorded validation file (no GPU)")
    v.add_argument("--scheduler", action="append", help="scheduler, repeatable; 'all' (default)")
    v.add_argument("--gpu", help="calibration or GPU spec file to simulate with")
    v.add_argument("--device", type=int, default=0, help="CUDA device index (default 0)")
    v.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    v.add_argument("-o", "--out", help="validation file (default validation-MODEL.json)")
    v.add_argument("--plot", help="scatter plot PNG of measured vs simulated")
    v.add_argument("--json", action="store_true", help="print the summary as JSON")
    v.set_defaults(func=cmd_validate)

    a = cs.add_parser("all", help="probe + microbench + profile + fit into one folder")
    a.add_argument("--device", type=int, default=0, help="CUDA device index (default 0)")
    a.add_argument(
        "--out", required=True, help="folder for every step's files, e.g. traces/h100 (resumable)"
    )
    a.add_argument("--model", action="append", help="model to profile per op, repeatable")
    a.set_defaults(func=cmd_all)
