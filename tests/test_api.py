"""The scripting API: what `from simgpu import ...` gives, used as the README shows."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import simgpu

SCRIPT = textwrap.dedent(
    """
    from simgpu import Timeline, build_model, load_gpu, run_scheduler, simulate
    from simgpu.hardware import Machine
    from simgpu.program import lower
    from simgpu.runtimes import get_runtime

    graph = build_model("squeezenet1_1", batch=1, image_size=64)
    gpu = load_gpu("v100")
    machine = Machine.single(gpu)
    best = None
    for name in ("sequential", "lios"):
        res = run_scheduler(name, graph, machine)
        assert isinstance(res.timeline, Timeline)
        print(name, res.latency_ms, res.streams, res.syncs)
        best = res if best is None or res.latency_ms < best.latency_ms else best
    # the same schedule, lowered and simulated by hand, gives the same timeline
    program = lower(best.schedule, graph, machine, runtime=get_runtime(best.runtime))
    tl = simulate(program, machine)
    assert tl.makespan_us == best.timeline.makespan_us, (tl.makespan_us, best.timeline.makespan_us)
    print("best", best.scheduler, tl.latency_ms, f"{tl.mean_sm_utilisation():.3f}")
    """
)


def test_exports_are_the_library_objects() -> None:
    from schedulers.base import run_scheduler
    from simgpu.hardware import load_gpu
    from simgpu.models import build_model
    from simgpu.sim.engine import simulate
    from simgpu.timeline import Timeline

    assert simgpu.build_model is build_model
    assert simgpu.load_gpu is load_gpu
    assert simgpu.run_scheduler is run_scheduler
    assert simgpu.simulate is simulate
    assert simgpu.Timeline is Timeline
    assert {"build_model", "load_gpu", "run_scheduler", "simulate", "Timeline"} <= set(
        simgpu.__all__
    )
    assert "simulate" in dir(simgpu)


def test_unknown_attribute_is_an_attribute_error() -> None:
    try:
        simgpu.no_such_thing  # noqa: B018
    except AttributeError as e:
        assert "no_such_thing" in str(e)
    else:
        raise AssertionError("expected AttributeError")


def test_a_short_script_runs_in_a_fresh_interpreter() -> None:
    """In a new process: importing from simgpu first must not hit an import cycle."""
    p = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("sequential ") and lines[1].startswith("lios ")
    assert lines[2].startswith("best lios ")


def test_importing_simgpu_is_cheap_and_the_simulator_knows_no_scheduler() -> None:
    code = (
        "import sys, simgpu; assert 'schedulers' not in sys.modules, 'eager import';"
        "import simgpu.sim.engine; assert not any(m.startswith('schedulers') for m in sys.modules)"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr


def test_all_lists_exactly_the_exports() -> None:
    assert set(simgpu.__all__) - {"__version__"} == set(simgpu._EXPORTS)
