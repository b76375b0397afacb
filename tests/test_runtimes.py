"""Runtimes: how ops become host calls, what they cost, and the fit of those costs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from _cli import run_error, run_json
from hypothesis import HealthCheck, assume, given, settings
from strategies import dags, gpus, stream_schedules

from calibrate.hostfit import (
    ATEN_FAMILY,
    eager_costs,
    fit_scale,
    interpolated,
    trace_host_costs,
)
from schedulers.base import Profiler, make_scheduler, run_scheduler, runtime_of
from schedulers.bounds import lower_bound_us
from simgpu.errors import SpecError
from simgpu.hardware import Machine, preset
from simgpu.models import build_model, model_names
from simgpu.program import Launch, Record, Wait, lower, validate_program
from simgpu.runtimes import FAMILIES, HostCosts, committed_costs, get_runtime, runtime_names
from simgpu.schedule import StreamSchedule
from simgpu.sim.engine import simulate

V100 = preset("v100")
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_the_four_runtimes_are_registered() -> None:
    assert runtime_names() == ["cuda-graph", "cudnn", "pytorch-eager", "tensorrt"]
    assert get_runtime("cuda-graph").graph_mode
    assert not any(get_runtime(n).graph_mode for n in ("cudnn", "pytorch-eager", "tensorrt"))


def test_runtimes_command_lists_them_with_their_costs(capsys) -> None:
    rows = {r["name"]: r for r in run_json(capsys, "runtimes", "--json")}
    assert set(rows) == set(runtime_names())
    assert rows["cuda-graph"]["graph_mode"] and "host_us" not in rows["cuda-graph"]
    eager = rows["pytorch-eager"]["host_us"]
    assert eager["conv"] == pytest.approx(
        get_runtime("pytorch-eager").costs.framework_us("conv"), abs=1e-3
    )
    assert rows["tensorrt"]["host_us"]["conv"] == 0.0


def test_unknown_runtime_is_a_clear_error(capsys) -> None:
    line = run_error(capsys, "run", "squeezenet1_1", "--runtime", "onnxruntime")
    assert "unknown runtime 'onnxruntime'" in line and "pytorch-eager" in line


@pytest.mark.parametrize("runtime", ["pytorch-eager", "cudnn", "cuda-graph", "tensorrt"])
def test_every_runtime_lowers_every_zoo_model(runtime: str) -> None:
    rt = get_runtime(runtime)
    for name in model_names():
        g = build_model(name)
        prog = lower(StreamSchedule([list(g.topo_order)]), g, V100, runtime=rt)
        validate_program(prog, g)
        assert prog.graph_mode == rt.graph_mode and prog.runtime == runtime
        assert all(isinstance(c, Launch) and c.host_us is not None for c in prog.commands)


def test_eager_pytorch_unfuses_conv_batchnorm_and_activation() -> None:
    g = build_model("resnet50")
    fused = lower(StreamSchedule([list(g.topo_order)]), g, V100, runtime=get_runtime("cudnn"))
    eager = lower(
        StreamSchedule([list(g.topo_order)]), g, V100, runtime=get_runtime("pytorch-eager")
    )
    convs = [n for n in g.ops if g[n].kind == "conv"]
    bn = sum(1 for n in convs if g[n].attrs.get("folded_bn"))
    act = sum(1 for n in convs if g[n].attrs.get("activation"))
    assert (bn, act) == (53, 33)
    assert eager.kernels == fused.kernels + bn + act
    names = [c.kernel.name for c in eager.commands if c.kernel is not None and c.op in convs]
    assert names.count("batch_norm_inference") == bn
    assert names.count("elementwise_relu") == act


def test_host_cost_of_a_call_is_framework_time_plus_its_launches() -> None:
    g = build_model("resnet50")
    rt = get_runtime("pytorch-eager")
    costs = rt.costs
    prog = lower(StreamSchedule([list(g.topo_order)]), g, V100, runtime=rt)
    conv = [c for c in prog.commands if c.op == "conv1"]
    # conv, then BatchNorm, then ReLU: three calls, each framework time + one launch
    fw = [costs.framework_us(f) + V100.launch_api_us for f in ("conv", "norm", "elementwise")]
    firsts = [c.host_us for c in conv if c.host_us > V100.launch_api_us]
    assert firsts == pytest.approx(fw)
    extra = [c.host_us for c in conv if c.host_us == V100.launch_api_us]  # further kernels
    assert len(conv) == 3 + len(extra)


def test_tensorrt_elides_concatenation_and_cudnn_copies_it() -> None:
    g = build_model("inception_v3")
    sched = StreamSchedule([list(g.topo_order)])
    trt = lower(sched, g, V100, runtime=get_runtime("tensorrt"))
    dnn = lower(sched, g, V100, runtime=get_runtime("cudnn"))
    concats = [n for n in g.ops if g[n].kind == "concat"]
    assert concats
    for prog, has in ((trt, False), (dnn, True)):
        ks = [c.kernel for c in prog.commands if c.op in concats]
        assert any(k is not None for k in ks) is has
    # TensorRT runs no interpreter and no library dispatch: a layer costs its launches
    assert all(c.host_us == V100.launch_api_us for c in trt.commands if c.kernel is not None)


def test_cudnn_calls_cost_the_fitted_library_call() -> None:
    from simgpu.costs import library_costs

    c = get_runtime("cudnn").costs
    calls = library_costs(V100).calls
    # a call costs at least its launch
    assert c.framework_us("conv") + V100.launch_api_us == pytest.approx(
        max(calls["cudnn"], V100.launch_api_us)
    )
    assert c.framework_us("gemm") + V100.launch_api_us == pytest.approx(
        max(calls["cublas"], V100.launch_api_us)
    )
    assert c.python_us == 0.0 and c.framework_us("concat") == 0.0


def test_events_cost_the_runtime_s_framework_time() -> None:
    g = build_model("inception_v3")
    prof = Profiler(Machine.single(V100))
    sched = make_scheduler("nimble-eager").schedule(g, prof)
    rt = get_runtime("pytorch-eager")
    prog = lower(sched, g, V100, runtime=rt)
    recs = [c for c in prog.commands if isinstance(c, Record)]
    waits = [c for c in prog.commands if isinstance(c, Wait)]
    assert recs and waits
    assert {c.host_us for c in recs} == {rt.record_us(V100)}
    assert {c.host_us for c in waits} == {rt.wait_us(V100)}
    assert rt.record_us(V100) > V100.event_record_api_us  # Python's share comes on top


@settings(max_examples=40, **SETTINGS)
@given(data=dags(max_ops=25).flatmap(lambda g: stream_schedules(g).map(lambda s: (g, s))),
       gpu=gpus(vary_costs=False))  # fmt: skip
def test_cuda_graph_is_never_slower_than_eager_pytorch(data, gpu) -> None:
    """The same schedule, captured or run eagerly: the graph launches the same kernels
    with no host call per op and a smaller start-up per kernel. (A graph with no kernel
    at all is never captured: its one launch would be pure cost.)"""
    g, sched = data
    assume(any(g[n].kind != "input" for n in g.ops))
    m = Machine.single(gpu)
    eager = simulate(lower(sched, g, gpu, runtime=get_runtime("pytorch-eager")), m)
    graph = simulate(lower(sched, g, gpu, runtime=get_runtime("cuda-graph")), m)
    assert graph.makespan_us <= eager.makespan_us * (1 + 1e-9)


@pytest.mark.parametrize("model", ["inception_v3", "nasnet_a_mobile"])
def test_cuda_graph_beats_eager_pytorch_on_a_nimble_schedule(model: str) -> None:
    g = build_model(model)
    sched = make_scheduler("nimble").schedule(g, Profiler(Machine.single(V100)))
    m = Machine.single(V100)
    eager = simulate(lower(sched, g, V100, runtime=get_runtime("pytorch-eager")), m)
    graph = simulate(lower(sched, g, V100, runtime=get_runtime("cuda-graph")), m)
    assert graph.makespan_us < eager.makespan_us


@pytest.mark.parametrize("runtime", ["pytorch-eager", "cudnn", "cuda-graph", "tensorrt"])
def test_latencies_respect_the_runtime_s_lower_bound(runtime: str) -> None:
    g = build_model("inception_v3")
    for name in ("sequential", "nimble", "lios"):
        r = run_scheduler(name, g, Machine.single(V100), runtime=runtime)
        assert r.runtime == runtime
        assert r.timeline.makespan_us >= lower_bound_us(g, V100, runtime=runtime) * (1 - 1e-9)


def test_eager_pytorch_one_stream_sits_on_the_host_bound() -> None:
    """Host-bound at batch 1: one stream under eager PyTorch ends within a launch and a
    kernel of the sum of its calls, the bound every eager schedule obeys."""
    from schedulers.bounds import binding_bound, host_bound_us

    g = build_model("inception_v3")
    m = Machine.single(V100)
    bound = host_bound_us(g, V100, runtime="pytorch-eager")
    seq = run_scheduler("sequential", g, m, runtime="pytorch-eager").timeline.makespan_us
    assert bound <= seq < 1.01 * bound
    assert binding_bound(g, m, "pytorch-eager") == "host"
    assert binding_bound(g, m, "cuda-graph") == "critical path"
    assert host_bound_us(g, V100, runtime="cuda-graph") == 0.0


def test_schedulers_declare_their_paper_s_runtime() -> None:
    own = {n: runtime_of(make_scheduler(n)).name for n in ("sequential", "sequential-graph",
           "nimble", "nimble-eager", "ios", "lios", "autograph", "hios")}  # fmt: skip
    assert own == {
        "sequential": "pytorch-eager",
        "sequential-graph": "cuda-graph",
        "nimble": "cuda-graph",
        "nimble-eager": "pytorch-eager",
        "ios": "cudnn",
        "lios": "cudnn",
        "autograph": "cuda-graph",
        "hios": "cudnn",
    }
    # asking for a CUDA Graph makes a schedule run as one, whatever the paper's runtime
    assert runtime_of(make_scheduler("lios", {"graph_mode": True})).name == "cuda-graph"
    assert runtime_of(make_scheduler("ios"), "tensorrt").name == "tensorrt"


def test_run_reports_runtimes_and_like_for_like_speedups(capsys) -> None:
    out = run_json(capsys, "run", "squeezenet1_1", "--scheduler", "sequential",
                   "--scheduler", "ios", "--scheduler", "nimble", "--json")  # fmt: skip
    rows = {r["scheduler"]: r for r in out["results"]}
    assert rows["ios"]["runtime"] == "cudnn" and rows["nimble"]["runtime"] == "cuda-graph"
    assert rows["sequential"]["runtime"] == "pytorch-eager"
    g = build_model("squeezenet1_1")
    m = Machine.single(V100)
    for n in ("ios", "nimble"):
        seq = run_scheduler("sequential", g, m, runtime=rows[n]["runtime"]).latency_ms
        assert rows[n]["sequential_ms"] == pytest.approx(seq)
        assert rows[n]["speedup"] == pytest.approx(seq / rows[n]["latency_ms"])
    forced = run_json(capsys, "run", "squeezenet1_1", "--scheduler", "ios", "--runtime",
                      "tensorrt", "--json")  # fmt: skip
    assert forced["results"][0]["runtime"] == "tensorrt"


def test_simulate_shows_the_runtime(capsys) -> None:
    out = run_json(capsys, "simulate", "squeezenet1_1", "--runtime", "cudnn", "--json")
    assert out["runtime"] == "cudnn"
    own = run_json(capsys, "simulate", "squeezenet1_1", "--scheduler", "nimble", "--json")
    assert own["runtime"] == "cuda-graph"


def test_resnet50_eager_pytorch_on_a_v100_takes_6_to_10_ms(capsys) -> None:
    """The published figure: Nimble's 1.888 ms times its 4.32x speedup is 8.2 ms."""
    out = run_json(capsys, "run", "resnet50", "--gpu", "v100", "--runtime", "pytorch-eager",
                   "--scheduler", "sequential", "--json")  # fmt: skip
    assert 6.0 <= out["results"][0]["latency_ms"] <= 10.0


# --- host costs as data -------------------------------------------------------------------


def test_host_costs_reject_bad_values() -> None:
    ok = {f: 1.0 for f in FAMILIES}
    with pytest.raises(SpecError, match="lacks family 'view'"):
        HostCosts({k: v for k, v in ok.items() if k != "view"})
    with pytest.raises(SpecError, match="must be >= 0"):
        HostCosts({**ok, "conv": -1.0})
    with pytest.raises(SpecError, match="must be a number"):
        HostCosts(ok, python_us=math.nan)
    with pytest.raises(SpecError, match="unknown key"):
        HostCosts.from_json({"op_us": ok, "speed": 2}, "x")


def test_committed_costs_carry_their_source_and_fit() -> None:
    from simgpu.runtimes.base import DATA

    doc = json.loads(DATA.read_text())
    assert set(committed_costs()) == {"pytorch-eager", "cudnn", "tensorrt"}
    assert "fit-host" in doc["how"] and doc["kineto"]["sha256"] and doc["published"]["sha256"]
    fit = doc["fit"]
    assert set(fit["error"]) == set(fit["logo_error"]) == set(doc["published"]["speedups"])
    assert committed_costs()["pytorch-eager"].scale == fit["scale"]


# --- the fit --------------------------------------------------------------------------------


def _span(name: str, ts: float, dur: float, cat: str = "cpu_op", tid: int = 1) -> dict:
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "pid": 1, "tid": tid}


def synthetic_trace(op_us: dict[str, float], gap: float, launch: float, n: int = 5) -> list:
    """A forward pass of ``n`` rounds of one aten op per family with known framework
    time, each launching one kernel inside it, ``gap`` apart; plus nested ops that must
    not count, event calls, and a backward thread whose gaps must not count."""
    names = {"conv": "aten::conv2d", "gemm": "aten::linear", "norm": "aten::batch_norm",
             "elementwise": "aten::relu_", "pool": "aten::max_pool2d",
             "reduce": "aten::adaptive_avg_pool2d", "concat": "aten::cat",
             "view": "aten::flatten"}  # fmt: skip
    ev, t = [], 0.0
    start = t
    for _ in range(n):
        for fam, name in names.items():
            k = 0 if fam == "view" else 1
            dur = op_us[fam] + k * launch
            ev.append(_span(name, t, dur))
            ev.append(_span("aten::_convolution", t + 0.1, dur / 2))  # nested: ignored
            if k:
                ev.append(_span("cudaLaunchKernel", t + dur - launch, launch, "cuda_runtime"))
            t += dur + gap
    ev.append(_span("## forward ##", start - 0.01, t - start, "user_annotation"))
    ev.append(_span("cudaEventRecord", t, 1.25, "cuda_runtime"))
    ev.append(_span("cudaStreamWaitEvent", t + 2, 0.75, "cuda_runtime"))
    for i in range(4):  # the autograd thread: its gaps are not Python's
        ev.append(_span("aten::relu_", 1e6 + 100 * i, op_us["elementwise"], tid=2))
    return ev


def test_kineto_fit_recovers_known_constants_from_a_synthetic_trace() -> None:
    truth = {"conv": 31.0, "gemm": 44.0, "norm": 27.5, "elementwise": 9.0, "pool": 15.0,
             "reduce": 21.0, "concat": 12.0, "view": 3.5}  # fmt: skip
    th = trace_host_costs(synthetic_trace(truth, gap=6.5, launch=4.75))
    assert th.op_us == pytest.approx(truth)
    assert th.python_us == pytest.approx(6.5)
    assert (th.launch_us, th.record_us, th.wait_us) == pytest.approx((4.75, 1.25, 0.75))
    assert th.assumed == []
    assert all(v >= 5 for v in th.samples.values())


def test_kineto_fit_falls_back_for_families_the_trace_lacks() -> None:
    truth = {f: 10.0 for f in FAMILIES}
    ev = [e for e in synthetic_trace(truth, 5.0, 4.0) if e["name"] != "aten::cat"]
    th = trace_host_costs(ev)
    assert th.assumed == ["concat"] and th.op_us["concat"] == th.op_us["elementwise"]


def test_aten_names_map_to_known_families() -> None:
    assert set(ATEN_FAMILY.values()) <= set(FAMILIES)


def test_scale_fit_recovers_a_known_scale_and_reports_leave_one_out() -> None:
    """Speedup curves ratio(s) = (a_m + b_m s) / c_m with published figures made at
    s = 1.7: the fit finds 1.7, and so does every leave-one-out refit."""
    params = {"m1": (1.0, 5.0, 1.0), "m2": (3.0, 20.0, 2.0), "m3": (0.5, 9.0, 0.6)}
    curves = {m: (lambda s, p=p: (p[0] + p[1] * s) / p[2]) for m, p in params.items()}
    published = {m: f(1.7) for m, f in curves.items()}
    fit = fit_scale(curves, published)
    assert fit.scale == pytest.approx(1.7, rel=1e-4)
    assert all(v == pytest.approx(1.7, rel=1e-4) for v in fit.logo_scale.values())
    assert max(abs(e) for e in fit.errors(fit.logo).values()) < 1e-4


def test_interpolation_is_exact_on_power_laws() -> None:
    xs = [0.1, 0.5, 1.0, 4.0]
    f = interpolated(xs, [3 * x**1.5 for x in xs])
    assert f(2.0) == pytest.approx(3 * 2.0**1.5)
    assert f(8.0) == pytest.approx(3 * 8.0**1.5)  # extrapolated along the end segment


def test_eager_costs_price_events_with_python() -> None:
    th = trace_host_costs(synthetic_trace({f: 10.0 for f in FAMILIES}, 7.0, 4.0))
    c = eager_costs(th, 2.0)
    assert c.framework_us("conv") == pytest.approx(2.0 * (7.0 + 10.0))
    assert c.record_us == c.wait_us == pytest.approx(7.0)


@pytest.mark.skipif(not (SHARED / "kineto").is_dir(), reason="../shared/data absent")
def test_the_v100_trace_gives_the_committed_per_op_costs() -> None:
    from calibrate.kineto import read_trace_json
    from simgpu.runtimes.base import DATA

    raw = read_trace_json(SHARED / "kineto" / "v100_training_1stream.json.gz")
    th = trace_host_costs(raw["traceEvents"])
    doc = json.loads(DATA.read_text())
    assert th.to_json()["op_us"] == doc["kineto"]["op_us"]
    assert 5.0 < th.python_us < 12.0 and 4.0 < th.launch_us < 7.0
    assert th.samples["conv"] == 265  # 53 convs x 5 iterations


def test_a_sweep_over_runtimes_reports_each_variant_and_resimulates(tmp_path: Path) -> None:
    from simgpu.report import load_results, resimulate
    from simgpu.sweep import Grid, run_sweep

    grid = Grid(models=["squeezenet1_1"], image_sizes=[64], gpus=["v100"],
                schedulers=["sequential", "ios"], runtimes=["cudnn", "tensorrt"])  # fmt: skip
    res = run_sweep(grid, tmp_path / "r.csv", workers=1, progress=False)
    assert res.total == res.ran == 4 and res.failed == 0
    rows = load_results(tmp_path / "r.csv")
    assert {r.variant for r in rows} == {"sequential@cudnn", "sequential@tensorrt", "ios",
                                         "ios@tensorrt"}  # fmt: skip
    for r in rows:
        assert resimulate(r).latency_ms == r.get("latency_ms")
        seq = next(s for s in rows if s.combo.scheduler == "sequential" and
                   s.combo.runtime == r.combo.runtime)  # fmt: skip
        assert r.get("sequential_ms") == seq.get("latency_ms")


def test_an_unknown_runtime_in_a_sweep_is_a_clear_error(capsys) -> None:
    line = run_error(capsys, "sweep", "--model", "squeezenet1_1", "--runtime", "xla", "-o",
                     "/dev/null")  # fmt: skip
    assert "unknown runtime 'xla'" in line
