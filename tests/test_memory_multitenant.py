"""GPU memory of multi-tenant runs: the per-request reservation, memory admission, the
report (peak allocated and reserved MB per tenant and for the GPU) and the CLI.

What matters most: the reservation bounds what a request really holds whatever the
timing, so admission keeps the GPU's allocated bytes within the limit; a tight limit
makes requests wait instead of running side by side; weights that do not fit are a
one-line error; the same seed gives the same run.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import dags

from simgpu.cli import main
from simgpu.errors import SpecError
from simgpu.graph import OpGraph
from simgpu.hardware import preset
from simgpu.memory import MB, MemoryLimitError, tensors_of
from simgpu.models import GraphBuilder, build_model
from simgpu.multitenant.compare import compare
from simgpu.multitenant.genome import (
    LANE_CHOICES,
    Genome,
    TenantContext,
    assign_lanes,
    baseline_genome,
    op_costs,
)
from simgpu.multitenant.memory import lane_bound
from simgpu.multitenant.outputs import to_chrome_trace
from simgpu.multitenant.search import Evaluator
from simgpu.sim.tenants import MemoryBudget, simulate_tenants
from simgpu.tenants import Arrival, Workload, make_tenants

V100 = preset("v100")


def cnn(name: str, width: int = 32, branches: int = 3) -> OpGraph:
    """A stem, parallel conv branches joined by a concat, a classifier: weights and a
    few MB-sized activations (32x32 images, batch 8)."""
    b = GraphBuilder(name)
    x = b.input((8, 3, 32, 32))
    x = b.relu(b.conv(x, width, 3, padding=1))
    outs = [b.relu(b.conv(x, width, 1 + 2 * (i % 2), padding=i % 2)) for i in range(branches)]
    x = b.concat(outs)
    x = b.flatten(b.global_pool(x))
    b.softmax(b.linear(x, 10))
    return b.build()


@pytest.fixture(scope="module")
def pair() -> list[OpGraph]:
    return [cnn("a", 32, 3), cnn("b", 48, 2)]


def tight_limit(ctx: TenantContext) -> int:
    """Weights plus the largest one-lane request: one request in flight at a time."""
    weights = sum(t.weight_bytes for t in ctx.tensors)
    return weights + max(ctx.request_bytes(t, 1) for t in range(len(ctx.tensors)))


# --- the reservation ------------------------------------------------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dags(max_ops=25))
def test_one_lane_bound_is_the_sequential_peak(g: OpGraph) -> None:
    t = tensors_of(g, V100)
    assert lane_bound(t, [g.topo_order]) == t.sequential_peak() - t.weight_bytes


@st.composite
def mixes(draw: st.DrawFn) -> tuple[Workload, Genome, float]:
    n = draw(st.integers(1, 3))
    graphs = [draw(dags(min_ops=2, max_ops=18)) for _ in range(n)]
    graphs = [OpGraph(list(g.ops.values()), name=f"{g.name}_{i}") for i, g in enumerate(graphs)]
    arrival = draw(st.sampled_from([Arrival(), Arrival("poisson", rate_rps=50000.0)]))
    cap = draw(st.sampled_from([None, 1]))
    wl = Workload(make_tenants(graphs, arrival, None, cap), requests=draw(st.integers(1, 4)),
                  seed=draw(st.integers(0, 9)))  # fmt: skip
    genome = Genome(
        draw(st.sampled_from(["exclusive", "independent", "rounds"])),
        tuple(draw(st.sampled_from(LANE_CHOICES)) for _ in range(n)),
        tuple(draw(st.integers(0, n - 1)) for _ in range(n)),
        (0.0,) * n,
        (1.0,) * n,
    )
    return wl, genome, draw(st.floats(0.0, 1.0))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mixes())
def test_admission_keeps_every_request_within_its_reservation(
    mix: tuple[Workload, Genome, float],
) -> None:
    """Whatever the lanes, the mode and the limit: no request ever holds more than it
    reserved (each tenant has one request in flight at a time, so its peak live
    activations are one request's), the GPU never allocates more than the limit,
    and every arrival still ends once."""
    wl, genome, slack = mix
    free = TenantContext(wl, V100)
    lo = tight_limit(free)
    room = sum(free.request_bytes(t, k) for t, k in enumerate(genome.lanes))
    ctx = TenantContext(wl, V100, memory_limit=lo + int(slack * room))
    run, mem = Evaluator(ctx).simulate(genome, "x")
    assert mem.peak_allocated <= ctx.limit
    for tm in mem.tenants:
        assert tm.weights <= tm.peak_allocated <= tm.weights + tm.request
    assert all(r.dropped != (r.done_us is not None) for r in run.requests)
    if all(t.max_queue is None for t in wl.tenants):
        assert all(r.done_us is not None for r in run.requests)


def test_lanes_are_capped_to_what_fits(pair: list[OpGraph]) -> None:
    wl = Workload(make_tenants(pair), requests=2)
    free = TenantContext(wl, V100)
    t = max((0, 1), key=lambda t: free.request_bytes(t, 1))  # the one the limit binds
    one, four = free.request_bytes(t, 1), free.request_bytes(t, 4)
    assert len(free.lanes(t, 4)) > 1 and four > one  # more lanes keep more tensors alive
    ctx = TenantContext(wl, V100, memory_limit=tight_limit(free))
    assert ctx.lanes(t, 4) == ctx.lanes(t, 1) and ctx.request_bytes(t, 4) == one
    g = Genome("independent", (4, 4), (0, 1), (0, 0), (1, 1))
    assert ctx.effective(g).lanes[t] == 1 and free.effective(g).lanes[t] > 1


# --- admission and the report ---------------------------------------------------------


def test_report_counts_weights_and_requests(pair: list[OpGraph]) -> None:
    wl = Workload(make_tenants(pair), requests=3)
    ctx, _, results = compare(wl, V100, ["sequential", "multistream"])
    weights = [t.weight_bytes for t in ctx.tensors]
    for r in results:
        m = r.metrics
        assert m.weights_memory_mb == pytest.approx(sum(weights) / MB)
        assert m.memory_limit_mb == pytest.approx(V100.memory_gb * 1024)
        assert m.peak_memory_mb is not None and m.reserved_memory_mb is not None
        assert m.reserved_memory_mb >= m.peak_memory_mb > m.weights_memory_mb
        assert m.memory_waits == 0 and not m.memory_notes
        for i, t in enumerate(m.tenants):
            assert t.weights_memory_mb == pytest.approx(weights[i] / MB)
            # one lane: a request's live set is its order's sequential peak, reached
            assert t.peak_memory_mb == pytest.approx(t.weights_memory_mb + t.request_memory_mb)
            assert t.reserved_memory_mb >= t.peak_memory_mb
    seq, multi = (r.metrics for r in results)
    # one request at a time holds the larger request; side by side, both
    reqs = [t.request_memory_mb for t in seq.tenants]
    assert seq.peak_memory_mb == pytest.approx(seq.weights_memory_mb + max(reqs))
    assert multi.peak_memory_mb == pytest.approx(multi.weights_memory_mb + sum(reqs))


@pytest.mark.parametrize("policy", ["multistream", "breadth-first"])
def test_a_tight_limit_makes_requests_wait(pair: list[OpGraph], policy: str) -> None:
    wl = Workload(make_tenants(pair, Arrival("poisson", rate_rps=4000.0)), requests=6, seed=3)
    free = TenantContext(wl, V100)
    _, _, (loose,) = compare(wl, V100, [policy])
    _, _, (tight,) = compare(wl, V100, [policy], memory_limit=tight_limit(free))
    a, b = loose.metrics, tight.metrics
    assert a.memory_waits == 0 and b.memory_waits > 0
    assert b.completed == a.completed == 12
    if policy == "multistream":  # side by side no more: each waits for the other
        assert b.mean_ms is not None and a.mean_ms is not None and b.mean_ms > a.mean_ms
        assert b.throughput_rps < a.throughput_rps
    # (a round admitting fewer requests also ends sooner: its latency can go either way)
    assert b.peak_memory_mb is not None and a.peak_memory_mb is not None
    assert b.peak_memory_mb < a.peak_memory_mb  # never two requests at once
    assert b.peak_memory_mb <= tight_limit(free) / MB


def test_waiting_for_memory_counts_against_max_queue(pair: list[OpGraph]) -> None:
    """A request held back by memory is still waiting: max_queue drops the next."""
    tenants = make_tenants(pair, Arrival("poisson", rate_rps=20000.0), max_queue=1)
    wl = Workload(tenants, requests=8, seed=1)
    free = TenantContext(wl, V100)
    _, _, (loose,) = compare(wl, V100, ["multistream"])
    _, _, (tight,) = compare(wl, V100, ["multistream"], memory_limit=tight_limit(free))
    a, b = loose.metrics, tight.metrics
    assert a.arrivals == b.arrivals == 16
    assert b.dropped > a.dropped
    assert b.completed + b.dropped == 16


def test_memory_admission_is_deterministic(pair: list[OpGraph]) -> None:
    wl = Workload(make_tenants(pair, Arrival("poisson", rate_rps=5000.0)), requests=5, seed=7)
    limit = tight_limit(TenantContext(wl, V100)) + 1024
    runs = [compare(wl, V100, ["multistream", "search"], budget=3, memory_limit=limit)[2]
            for _ in range(2)]  # fmt: skip

    def rows(results: list) -> list[dict]:  # the search's wall-clock seconds vary, nothing else
        out = [r.metrics.to_json() for r in results]
        for row in out:
            row.get("search", {}).pop("search_s", None)
        return out

    assert rows(runs[0]) == rows(runs[1])
    assert runs[0][0].metrics.memory_waits > 0


def test_weights_that_do_not_fit_are_an_error(pair: list[OpGraph]) -> None:
    wl = Workload(make_tenants(pair), requests=1)
    free = TenantContext(wl, V100)
    weights = sum(t.weight_bytes for t in free.tensors)
    with pytest.raises(MemoryLimitError, match=r"weights .* do not fit"):
        TenantContext(wl, V100, memory_limit=weights)
    with pytest.raises(MemoryLimitError, match="one request of tenant 'b' needs"):
        TenantContext(wl, V100, memory_limit=weights + free.request_bytes(1, 1) - 512)


def test_engine_rejects_a_budget_a_request_cannot_fit(pair: list[OpGraph]) -> None:
    wl = Workload(make_tenants(pair), requests=1)
    ctx = TenantContext(wl, V100)
    g = baseline_genome("multistream", 2, ctx.max_depth)
    with pytest.raises(SpecError, match="tenant 'a': a request needs 100 bytes"):
        simulate_tenants(wl, ctx.plan(g), V100, programs=ctx.programs(g),
                         memory=MemoryBudget(99, (100, 1)))  # fmt: skip


def test_trace_has_a_memory_counter(pair: list[OpGraph]) -> None:
    wl = Workload(make_tenants(pair), requests=2)
    ctx = TenantContext(wl, V100)
    run, mem = Evaluator(ctx).simulate(baseline_genome("multistream", 2, ctx.max_depth), "m")
    counters = [e for e in to_chrome_trace(run)["traceEvents"] if e.get("name") == "memory MB"]
    assert counters
    assert max(e["args"]["allocated"] for e in counters) == pytest.approx(mem.peak_allocated / MB)
    assert max(e["args"]["reserved"] for e in counters) == pytest.approx(mem.peak_reserved / MB)


def test_bound_of_a_real_model_on_lanes() -> None:
    """Inception's branches on several lanes: the bound grows with the lanes and the
    request alone never reaches past it."""
    g = build_model("inception_v3", image_size=96)
    wl = Workload(make_tenants([g]), requests=1)
    ctx = TenantContext(wl, V100)
    cost = op_costs(g, V100, ctx.cache)
    assert assign_lanes(g, 1, cost) == ctx.lanes(0, 1)
    ev = Evaluator(ctx)
    for k in (1, 4):
        _, mem = ev.simulate(Genome("independent", (k,), (0,), (0.0,), (1.0,)), "x")
        live = mem.peak_allocated - mem.weights
        assert live <= ctx.request_bytes(0, k)
        if k == 1:
            assert live == ctx.request_bytes(0, 1)
    assert ctx.request_bytes(0, 4) > ctx.request_bytes(0, 1)


# --- CLI ------------------------------------------------------------------------------


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


MODELS = ("squeezenet1_1", "resnet50", "--image-size", "64", "--requests", "3")


def test_cli_json_and_text_carry_memory(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _cli(capsys, "multitenant", *MODELS, "--scheduler", "sequential",
                        "--scheduler", "multistream", "--json")  # fmt: skip
    assert rc == 0, err
    data = json.loads(out)
    assert data["memory_limit_mb"] == pytest.approx(V100.memory_gb * 1024)
    for r in data["results"]:
        assert r["peak_memory_mb"] > data["weights_memory_mb"] > 90  # ResNet-50: 97 MB
        assert r["reserved_memory_mb"] >= r["peak_memory_mb"]
        for t in r["tenants"]:
            for key in ("peak_memory_mb", "reserved_memory_mb", "weights_memory_mb",
                        "request_memory_mb"):  # fmt: skip
                assert t[key] > 0
    rc, out, err = _cli(capsys, "multitenant", *MODELS, "--scheduler", "multistream")
    assert rc == 0, err
    assert "peak MB" in out and "reserved MB" in out and "request MB" in out
    peak = data["results"][1]["peak_memory_mb"]
    assert f"{peak:.1f}" in out


def test_cli_memory_limit_waits_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    base = ("multitenant", *MODELS, "--scheduler", "multistream", "--json")
    free = json.loads(_cli(capsys, *base)[1])["results"][0]
    weights = free["weights_memory_mb"]
    rc, out, err = _cli(capsys, *base, "--memory-limit", f"{weights + 2:.3f}")
    assert rc == 0, err
    tight = json.loads(out)["results"][0]
    assert tight["memory_waits"] > 0 and free["memory_waits"] == 0
    assert tight["p50_ms"] > free["p50_ms"]
    assert tight["peak_memory_mb"] <= weights + 2
    for limit, msg in ((f"{weights / 2:.1f}", "do not fit in the memory limit"),
                       (f"{weights + 0.5:.3f}", "one request of tenant")):  # fmt: skip
        rc, _, err = _cli(capsys, *base, "--memory-limit", limit)
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and msg in lines[0], err
        assert "Traceback" not in err
    with pytest.raises(SystemExit) as bad:  # argparse: usage, then the one error line
        _cli(capsys, *base, "--memory-limit", "-3")
    assert bad.value.code == 2
    assert "--memory-limit: expected a positive number of MB" in capsys.readouterr().err
