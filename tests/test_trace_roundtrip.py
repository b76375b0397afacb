"""simgpu's own Chrome traces read back as Kineto traces: every registered scheduler's
trace replays to the span its simulation had, host calls carry CUDA's names and
correlation ids that match their kernels, no track has overlapping slices, and CUDA
Graph schedules have their flow arrows."""

from __future__ import annotations

import itertools
import json
from functools import cache
from pathlib import Path

import pytest

from calibrate.kineto import load_trace, replay
from schedulers.base import RunResult, discover, run_scheduler, scheduler_names
from schedulers.optimal import cut_out
from simgpu.chrome_trace import CUDA_API, to_chrome_trace, write_chrome_trace
from simgpu.cli import main
from simgpu.graph import OpGraph
from simgpu.hardware import Machine, load_machine, preset
from simgpu.models import build_model
from simgpu.timeline import Timeline

MULTI_GPU_MACHINE = "2xv100-nvlink"
RUNTIME_NAMES = set(CUDA_API.values())


@cache
def _model() -> OpGraph:
    return build_model("squeezenet1_1", image_size=64)


def _graph_for(name: str) -> OpGraph:
    g = _model()
    if name == "optimal":  # optimal searches at most 12 ops: a fire module and its inputs
        ops = [n for n in g.topo_order if g.ops[n].kind != "input"][:10]
        return cut_out(g, ops, name="squeezenet1_1_head")
    return g


@cache
def _run(name: str) -> RunResult:
    multi = discover()[name].multi_gpu
    machine = load_machine(MULTI_GPU_MACHINE) if multi else Machine.single(preset("v100"))
    return run_scheduler(name, _graph_for(name), machine)


def _gpu_span_us(tl: Timeline) -> float:
    spans = [(k.start_us, k.end_us) for k in tl.kernels] + [
        (c.start_us, c.end_us) for c in tl.copies
    ]
    return max(e for _, e in spans) - min(s for s, _ in spans)


def test_every_scheduler_is_covered() -> None:
    """The parametrisation below is the registry itself: a new scheduler is tested."""
    assert set(scheduler_names()) >= {"sequential", "ios", "nimble", "hios"}


@pytest.mark.parametrize("name", scheduler_names())
def test_replay_gets_the_simulated_span_back(name: str, tmp_path: Path) -> None:
    res = _run(name)
    path = tmp_path / f"{name}.json"
    write_chrome_trace(res.timeline, path, title=name)
    trace = load_trace(path)  # the GPU comes from the trace: no --gpu needed
    assert len(trace.activities) == len(res.timeline.kernels) + len(res.timeline.copies)
    assert not trace.orphans, "every kernel is matched to the call that launched it"
    rep = replay(trace)
    span_ms = _gpu_span_us(res.timeline) / 1e3
    assert rep.recorded_ms == pytest.approx(span_ms, abs=2e-6)  # the trace's whole nanoseconds
    assert abs(rep.simulated_ms - span_ms) <= 0.01 * span_ms, (name, rep.to_json())
    # every event wait of the schedule is replayed as one, none left to the host gaps
    waits = sum(1 for c in res.timeline.commands if c.kind == "wait")
    assert rep.counts["waits"] + rep.counts["graph_waits"] == waits
    assert rep.counts["waits_host_only"] == rep.counts["records_host_only"] == 0


@pytest.mark.parametrize("name", scheduler_names())
def test_trace_is_kineto_shaped(name: str) -> None:
    tl = _run(name).timeline
    events = to_chrome_trace(tl, name)["traceEvents"]
    calls = [e for e in events if e.get("cat") == "cuda_runtime" and e["ph"] == "X"]
    assert calls and {e["name"] for e in calls} <= RUNTIME_NAMES
    corr = [e["args"]["correlation"] for e in calls]
    assert all(isinstance(c, int) for c in corr) and len(set(corr)) == len(corr)
    launchers = {
        e["args"]["correlation"]: e["name"]
        for e in calls
        if e["name"] in ("cudaLaunchKernel", "cudaGraphLaunch", "cudaMemcpyPeerAsync")
    }
    gpu = [e for e in events if e.get("cat") in ("kernel", "gpu_memcpy")]
    for e in gpu:
        assert launchers.get(e["args"]["correlation"]) is not None, e
    kernels = [e for e in gpu if e["cat"] == "kernel"]
    for e in kernels:
        a = e["args"]
        assert (a["device"], a["stream"]) == (e["pid"], e["tid"])
        assert len(a["grid"]) == 3 and len(a["block"]) == 3
    # a launch issues one kernel; a graph launch every kernel of its device
    per_launch: dict[int, int] = {}
    for e in kernels:
        per_launch[e["args"]["correlation"]] = per_launch.get(e["args"]["correlation"], 0) + 1
    for c, n in per_launch.items():
        assert n == 1 or launchers[c] == "cudaGraphLaunch"


@pytest.mark.parametrize("name", scheduler_names())
def test_no_track_has_overlapping_slices(name: str) -> None:
    """In whole nanoseconds, as written: rounding must not make slices overlap (IOS's
    synchronize overlapped the next launch by 1 ns five times per trace)."""
    events = to_chrome_trace(_run(name).timeline, name)["traceEvents"]
    tracks: dict[tuple, list[tuple[int, int]]] = {}
    for e in events:
        if e["ph"] == "X" and e["cat"] != "cuda_sync":
            a = round(e["ts"] * 1000)
            tracks.setdefault((e["pid"], e["tid"]), []).append((a, a + round(e["dur"] * 1000)))
    assert tracks
    for key, spans in tracks.items():
        spans.sort()
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert end <= start, (name, key, end, start)


@pytest.mark.parametrize("name", ["nimble", "opara", "sequential-graph"])
def test_cuda_graph_schedules_have_flow_arrows(name: str) -> None:
    tl = _run(name).timeline
    events = to_chrome_trace(tl, name)["traceEvents"]
    graph = [e for e in events if e.get("name") == "cudaGraphLaunch"]
    assert len(graph) == 1
    starts = [e for e in events if e["ph"] == "s"]
    finishes = [e for e in events if e["ph"] == "f"]
    assert len(starts) == len(finishes) == len(tl.kernels) + len(tl.copies)
    assert all((s["pid"], s["tid"], s["ts"]) == (graph[0]["pid"], graph[0]["tid"], graph[0]["ts"])
               for s in starts)  # fmt: skip
    assert {f["id"] for f in finishes} == {s["id"] for s in starts}


def test_graph_dependencies_survive_the_round_trip() -> None:
    """Without the graph's event nodes a replay runs every stream at once (opara's span
    came back 75% short): they are in the trace and the replay turns them into waits."""
    tl = _run("opara").timeline
    waits = [c for c in tl.commands if c.kind == "wait"]
    assert waits
    rep = replay(_load(tl, "opara"))
    assert rep.counts["graph_waits"] == len(waits) and rep.counts["graph_records"] > 0


def _load(tl: Timeline, title: str):
    from calibrate.kineto import parse_trace

    return parse_trace(json.loads(json.dumps(to_chrome_trace(tl, title))), source=title)


def test_cli_replays_its_own_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "tr_lios.json"
    write_chrome_trace(_run("lios").timeline, path, title="lios")
    assert main(["replay", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["gpu"] == "v100-sxm2"
    assert abs(out["error_pct"]) < 1.0
    # its own trace replays kernel by kernel, not only in span
    assert 0.0 <= out["start_mae_us"] <= out["start_p95_us"] + 1e-9 and out["start_p95_us"] < 1.0
    assert abs(out["busy_error_pct"]) < 1.0
    assert out["counts"]["waits"] > 0 and out["counts"]["waits_host_only"] == 0


def test_rounding_never_overlaps_touching_slices() -> None:
    """A synchronize ending exactly where the next launch starts: rounding its start and
    its duration separately gave ts 933.631 + dur 20.528 > 954.158."""
    from simgpu.timeline import HostRecord, KernelRecord

    k = KernelRecord("conv", "conv_k", 0, 0, 0, 960.0, 963.0, 970.0, 80, 256, 1)
    tl = Timeline(
        gpu_names=["v100-sxm2"],
        sm_counts=[80],
        kernels=[k],
        host=[
            HostRecord("synchronize", 0, 933.6306, 954.1584),
            HostRecord("launch", 0, 954.1584, 960.0, "conv"),
        ],
        makespan_us=970.0,
    )
    sync, launch = (e for e in to_chrome_trace(tl)["traceEvents"] if e.get("cat") == "cuda_runtime")
    assert (sync["name"], launch["name"]) == ("cudaDeviceSynchronize", "cudaLaunchKernel")
    assert round((sync["ts"] + sync["dur"]) * 1000) == round(launch["ts"] * 1000) == 954158
