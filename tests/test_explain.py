"""`simgpu explain`: the critical path, host- against GPU-bound time, per-stream waits and
per-op deltas, on programs and graphs whose critical path is known by construction."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _cli import run_error, run_json, run_ok
from strategies import make_kernel

from schedulers.base import run_scheduler
from simgpu.explain import explain, format_text, op_deltas
from simgpu.graph import OpGraph
from simgpu.hardware import Machine, load_gpu
from simgpu.models.builder import GraphBuilder
from simgpu.program import Command, Launch, Record, StreamProgram, Wait
from simgpu.sim.engine import simulate
from simgpu.timeline import Timeline

V100 = load_gpu("v100")


def _run(cmds: list[Command], graph_mode: bool = False) -> Timeline:
    return simulate(StreamProgram(cmds, graph_mode=graph_mode), V100)


def _tiles(tl: Timeline) -> None:
    """The path's steps and the waits before them cover the run exactly, in order."""
    ex = explain(tl)
    t = 0.0
    for s in ex.path:
        assert s.start_us - s.wait_us == pytest.approx(t, abs=1e-6)
        assert s.end_us >= s.start_us
        t = s.end_us
    assert t == pytest.approx(tl.makespan_us)


def _gpu_steps(tl: Timeline) -> list[tuple[str, str, str]]:
    """(kind, op or event, cause) of the path's device steps, in time order."""
    return [
        (s.kind, s.what.split(":")[0], s.cause)
        for s in explain(tl).path
        if s.kind not in ("host", "synchronize")
    ]


def test_event_joins_the_long_stream() -> None:
    """Stream 0 runs a 1000 us kernel and records E; stream 1 runs 10 us, waits for E,
    then runs C. The path is A, the record, the wait (an event) and C; B is off it."""
    a = make_kernel(V100, "A", grid=10, block_us=1000.0)
    b = make_kernel(V100, "B", grid=10, block_us=10.0)
    c = make_kernel(V100, "C", grid=10, block_us=100.0)
    tl = _run([Launch("A", a, 0), Record("E", 0), Launch("B", b, 1), Wait("E", 1),
               Launch("C", c, 1)])  # fmt: skip
    steps = _gpu_steps(tl)
    assert [(k, w) for k, w, _ in steps] == [
        ("kernel", "A"), ("record", "record E"), ("wait", "wait E"), ("kernel", "C")
    ]  # fmt: skip
    assert [c for *_, c in steps] == ["host", "stream", "event", "stream"]
    _tiles(tl)
    ex = explain(tl)
    s1 = next(s for s in ex.streams if s.stream == 1)
    s0 = next(s for s in ex.streams if s.stream == 0)
    # stream 1 waited for the event from B's end to A's end (plus the event latency)
    kb = next(k for k in tl.kernels if k.op == "B")
    ka = next(k for k in tl.kernels if k.op == "A")
    assert s1.event_us == pytest.approx(ka.end_us - kb.end_us, abs=5.0)
    assert s1.event_us > 900 and s0.event_us == 0.0
    assert s0.busy_us == pytest.approx(1000.0) and s1.busy_us == pytest.approx(110.0)
    # C's stream-1 time: host, event, queue and SM waits plus running, to the end
    for s in ex.streams:
        total = s.busy_us + s.host_us + s.event_us + s.queue_us + s.sm_us + s.after_us
        assert total == pytest.approx(tl.makespan_us)
    assert s1.after_us == pytest.approx(0.0) and s0.after_us > 90.0


def test_sm_space_points_at_the_kernel_that_held_it() -> None:
    """Two GPU-filling kernels on two streams: b is released at once but starts only
    when a's blocks leave, so the path runs through a and names SM space."""
    full = V100.sm_count * 2
    a = make_kernel(V100, "a", grid=full, threads=1024, regs=32, block_us=50.0)
    b = make_kernel(V100, "b", grid=full, threads=1024, regs=32, block_us=50.0)
    tl = _run([Launch("a", a, 0), Launch("b", b, 1)])
    steps = _gpu_steps(tl)
    assert steps[-1] == ("kernel", "b", "SM space")
    assert steps[-2][:2] == ("kernel", "a")
    kb = next(k for k in tl.kernels if k.op == "b")
    assert 0 <= kb.release_us < kb.start_us - 40.0  # recorded: released long before it ran
    s1 = next(s for s in explain(tl).streams if s.stream == 1)
    assert s1.sm_us == pytest.approx(kb.start_us - kb.release_us, rel=1e-9)
    _tiles(tl)


def test_host_bound_chain_against_a_cuda_graph() -> None:
    """Tiny kernels on one stream: launched one by one the host decides the time; in a
    CUDA Graph the GPU does."""
    cmds: list[Command] = [
        Launch(f"k{i}", make_kernel(V100, f"k{i}", grid=1, block_us=1.0), 0) for i in range(30)
    ]
    eager, graph = _run(cmds), _run(cmds, graph_mode=True)
    ex, gx = explain(eager), explain(graph)
    assert ex.host_bound_us() > 0.8 * eager.makespan_us
    assert gx.gpu_bound_us() > 0.75 * graph.makespan_us  # all but the one graph launch
    assert ex.gpu_idle_host_busy_us > 0.5 * eager.makespan_us
    (launch,) = graph.host  # one graph launch: the host's only call
    assert gx.host_busy_us == pytest.approx(launch.end_us - launch.start_us)
    _tiles(eager)
    _tiles(graph)


def test_host_calls_of_no_cost_do_not_loop() -> None:
    """Views priced at 0 us (several host calls at one instant): the walk goes back
    through them in issue order, once each (it once ping-ponged between two)."""
    k = make_kernel(V100, "k", grid=1, block_us=5.0)
    cmds: list[Command] = [Launch(f"v{i}", None, 0, host_us=0.0) for i in range(3)]
    cmds += [Launch("k", k, 0), Launch("v3", None, 1, host_us=0.0)]
    tl = _run(cmds)
    path = explain(tl).path
    hosts = [s.what for s in path if s.kind == "host"]
    assert hosts == ["dispatch v0", "dispatch v1", "dispatch v2", "launch k"]
    assert len(path) <= len(tl.host) + len(tl.kernels) + len(tl.commands)
    _tiles(tl)


def two_branches() -> OpGraph:
    """x -> long0 -> long1 -> long2 -> join, and x -> short -> join: the long chain of
    3x3 convs is the critical path, the 1x1 branch is not."""
    b = GraphBuilder("two_branches")
    x = b.input((1, 256, 56, 56), name="x")
    h = x
    for i in range(3):
        h = b.conv(h, 256, 3, padding=1, name=f"long{i}")
    s = b.conv(x, 256, 1, name="short")
    b.add(h, s, name="join")
    return b.build()


@pytest.mark.parametrize("sched", ["lios", "opara"])
def test_graph_critical_path_is_the_long_branch(sched: str) -> None:
    g = two_branches()
    res = run_scheduler(sched, g, Machine.single(V100))
    assert res.streams == 2
    ops = [w for k, w, _ in _gpu_steps(res.timeline) if k == "kernel"]
    assert list(dict.fromkeys(ops)) == ["long0", "long1", "long2", "join"]
    _tiles(res.timeline)
    seq = run_scheduler("sequential", g, Machine.single(V100))
    # one stream: everything is on the path, the short branch too
    seq_ops = [w for k, w, _ in _gpu_steps(seq.timeline) if k == "kernel"]
    assert "short" in seq_ops
    deltas = op_deltas(res.timeline, seq.timeline, {"long0", "long1", "long2", "join"})
    assert {d.op for d in deltas} == {"long0", "long1", "long2", "short", "join"}
    for d in deltas:
        want = sum(k.end_us - k.start_us for k in res.timeline.kernels if k.op == d.op)
        assert d.time_us == pytest.approx(want)
        assert d.delta_us == pytest.approx(d.time_us - d.against_us)
    assert [d.delta_us for d in deltas] == sorted((d.delta_us for d in deltas), reverse=True)
    text = format_text(explain(res.timeline, seq.timeline), "t", "sequential")
    assert "critical path" in text and "against sequential" in text


def test_explain_is_deterministic_and_json_clean() -> None:
    res = run_scheduler("lios", two_branches(), Machine.single(V100))
    one = json.dumps(explain(res.timeline).to_json(), sort_keys=True)
    two = json.dumps(explain(res.timeline).to_json(), sort_keys=True)
    assert one == two


def test_cli_explain_file_text_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "g.json"
    two_branches().save(path)
    text = run_ok(capsys, "explain", str(path), "--scheduler", "lios", "--against", "sequential")
    assert "critical path" in text and "per stream" in text
    assert "ops that gained most against sequential" in text
    out = run_json(capsys, "explain", str(path), "--scheduler", "lios", "--json")
    assert isinstance(out, dict)
    cp = out["critical_path"]
    assert out["format"] == "opgraph" and out["scheduler"] == "lios"
    assert cp["host_bound_us"] + cp["gpu_bound_us"] == pytest.approx(out["makespan_us"])
    kernels = [s["what"].split(":")[0] for s in cp["steps"] if s["kind"] == "kernel"]
    assert "short" not in kernels and kernels[-1] == "join"
    assert out["latency_ms"] * 1e3 == pytest.approx(out["makespan_us"])
    assert "ops" not in out
    both = run_json(capsys, "explain", str(path), "--scheduler", "lios", "--against",
                    "sequential", "--json")  # fmt: skip
    assert isinstance(both, dict) and both["against"]["scheduler"] == "sequential"
    assert {o["op"] for o in both["ops"]} >= {"long0", "short", "join"}
    err = run_error(capsys, "explain", str(path), "--scheduler", "nope")
    assert "unknown scheduler 'nope'" in err
    err = run_error(capsys, "explain", "no_such.onnx", "--scheduler", "lios")
    assert "no_such.onnx" in err


@pytest.mark.parametrize("sched", ["hios", "hios-mr"])
def test_path_tiles_a_run_on_two_gpus(sched: str) -> None:
    """Two GPUs with a host thread each (hand-offs between them) and peer copies: the
    path still covers the run exactly, and every stream's time adds up."""
    from simgpu.hardware import load_machine
    from simgpu.models import build_model

    res = run_scheduler(sched, build_model("inception_v3"), load_machine("2xv100-nvlink"))
    assert {k.device for k in res.timeline.kernels} == {0, 1}
    _tiles(res.timeline)
    ex = explain(res.timeline)
    for s in ex.streams:
        total = s.busy_us + s.host_us + s.event_us + s.queue_us + s.sm_us + s.after_us
        assert total == pytest.approx(res.timeline.makespan_us)
