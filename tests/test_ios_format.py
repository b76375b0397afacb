"""IOS JSON format: reading graphs and stages, writing them back, and the CLI on IOS files.

The sample files (real IOS output, ``../shared/data/ios``) are used where present and
the tests skip without them; everything else builds IOS dicts in the test."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schedulers.bounds import lower_bound_us
from simgpu.cli import main
from simgpu.errors import FormatError, GraphError, ScheduleError, SimGPUError
from simgpu.hardware import Machine, load_gpu
from simgpu.models import GraphBuilder, build_model
from simgpu.models.ios import ios_nodes, is_ios, read_ios, write_ios
from simgpu.program import lower
from simgpu.schedule import StageSchedule, StreamSchedule, validate_schedule
from simgpu.sim.engine import simulate

DATA = Path(__file__).parents[1].parent / "shared" / "data"
IOS_DIR = DATA / "ios"
SAMPLES = ["inception_v3_k80_schedule.json", "inception_v3_bs128_schedule.json"]
K80 = IOS_DIR / SAMPLES[0]
needs_data = pytest.mark.skipif(not K80.exists(), reason="../shared/data/ios is absent")


def _nodes(d: dict[str, Any]) -> list[dict[str, Any]]:
    return [n for b in d["blocks"] for n in [*b["inner_nodes"], b["exit_node"]]]


def _partial_slices(d: dict[str, Any]) -> int:
    """Slices that are not a whole tensor: each one becomes a slice op."""
    channels = {d["input"]["name"]: d["input"]["output_shape"][0]}
    count = 0
    for n in _nodes(d):
        for term in n["inputs"]:
            count += sum(1 for src, b, e in term if (b, e) != (0, channels[src]))
        channels[n["name"]] = n["output_shape"][0]
    return count


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def cli_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 2, (rc, out, err)
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("simgpu: error:"), err
    return lines[0]


# --- the sample files -----------------------------------------------------------------


@needs_data
@pytest.mark.parametrize("sample", SAMPLES)
def test_sample_round_trips_exactly(sample: str) -> None:
    original = json.loads((IOS_DIR / sample).read_text())
    graph, sched = read_ios(IOS_DIR / sample)
    assert sched is not None
    written = write_ios(graph, sched)
    assert written == original  # blocks, stages, hint names, merged convs: all of it
    again, sched2 = read_ios(json.loads(json.dumps(written)))
    assert again == graph
    assert sched2 is not None and sched2.stages == sched.stages
    # without the schedule the graph still round-trips, cut into the same blocks
    bare = write_ios(graph)
    assert [b["exit_node"]["name"] for b in bare["blocks"]] == [
        b["exit_node"]["name"] for b in original["blocks"]
    ]
    assert read_ios(bare) == (graph, None)


@needs_data
def test_k80_sample_is_inception_v3_without_its_classifier() -> None:
    graph, _ = read_ios(K80)
    data = json.loads(K80.read_text())
    nodes = _nodes(data)
    assert len(graph) == 1 + len(nodes) + _partial_slices(data) == 126
    assert len(ios_nodes(graph)) == 1 + len(nodes) == 114
    # IOS merged only 1x1 convs here, so the work is torchvision's Inception V3 minus fc
    ref = build_model("inception_v3")
    fc = ref["fc"]
    assert graph.macs == ref.macs - 2048 * fc.attrs["out_features"]
    assert graph.params == ref.params - ref.stats("fc").params
    assert sum(op.kind == "conv" for op in graph) == 88  # 94 convs, 6 merged away
    merged = graph["97"]
    assert merged.attrs["replaces"] == ("97", "98", "101")
    assert merged.output_shape == (1, 1152, 8, 8)
    # consumers read channel ranges of merged convs in place: zero-cost slice views
    sl = graph["100.t0.s0"]
    assert (sl.kind, sl.inputs, sl.attrs["begin"], sl.attrs["end"]) == ("slice", ("97",), 320, 704)
    assert sl.attrs["view"] is True and graph.stats(sl.name).bytes_read == 0


@needs_data
def test_k80_sample_stages_become_a_stage_schedule() -> None:
    graph, sched = read_ios(K80)
    data = json.loads(K80.read_text())
    assert sched is not None and sched.barrier == "sync"
    assert len(sched.stages) == sum(len(b["stages"]) for b in data["blocks"])
    validate_schedule(sched, graph)
    assert sched.stages[0] == [["0", "1"]]  # the input runs first, in the first group
    # block 5, stage 1: each IOS node expands to its ops, term slices first
    at = sum(len(b["stages"]) for b in data["blocks"][:5]) + 1
    assert sched.stages[at] == [["42", "43"], ["46.t0.s0", "46", "47"], ["50"]]
    assert sched.width == max(len(s) for b in data["blocks"] for s in b["stages"])


@needs_data
def test_batch_and_dtype_scale_the_graph() -> None:
    one, _ = read_ios(K80)
    four, _ = read_ios(K80, batch=4, dtype="fp16")
    assert four.inputs[0].output_shape == (4, 3, 299, 299)
    assert four.macs == 4 * one.macs and four.params == one.params
    assert {op.dtype for op in four} == {"fp16"}


@needs_data
def test_cli_simulates_the_k80_sample_with_its_stages(capsys: pytest.CaptureFixture[str]) -> None:
    data = json.loads(K80.read_text())
    rc, out, err = run_cli(capsys, "simulate", str(K80), "--gpu", "k80", "--json")
    assert rc == 0, err
    res = json.loads(out)
    assert res["format"] == "ios" and res["schedule"] == "ios-stages"
    assert res["ios_nodes"] == 1 + len(_nodes(data))
    assert res["ops"] == 1 + len(_nodes(data)) + _partial_slices(data)
    assert res["gpu"] == "k80" and res["batch"] == 1
    assert res["streams"] == max(len(s) for b in data["blocks"] for s in b["stages"])
    # one device synchronisation after every stage but the last
    assert res["syncs"] >= sum(len(b["stages"]) for b in data["blocks"]) - 1
    # --scheduler ignores the file's stages
    rc, out, err = run_cli(
        capsys, "simulate", str(K80), "--gpu", "k80", "--scheduler", "sequential", "--json"
    )
    assert rc == 0, err
    seq = json.loads(out)
    assert seq["schedule"] == "sequential" and seq["streams"] == 1 and seq["syncs"] == 0
    # Whether IOS's stages beat one stream on a K80 is the model's answer, not assumed
    # here: with the SMs shared, Inception V3 fills most of a K80's 13 SMs on one stream.
    # Both obey the bounds of their graph.
    g, _ = read_ios(K80)
    bound = lower_bound_us(g, load_gpu("k80")) / 1e3
    assert min(seq["latency_ms"], res["latency_ms"]) >= bound * (1 - 1e-9)
    rc, out, err = run_cli(capsys, "simulate", str(K80), "--gpu", "k80", "--batch", "2", "--json")
    assert rc == 0, err
    two = json.loads(out)
    assert two["batch"] == 2 and two["latency_ms"] > res["latency_ms"]
    # the table form works too
    rc, out, _ = run_cli(capsys, "simulate", str(K80), "--gpu", "k80")
    assert rc == 0 and "ios-stages" in out


@needs_data
def test_cli_rejects_options_when_the_file_stages_run(capsys: pytest.CaptureFixture[str]) -> None:
    line = cli_error(capsys, "simulate", str(K80), "--option", "sequential.graph_mode=1")
    assert "ios-stages" in line


# --- stage errors -------------------------------------------------------------------------


def _stage_error(data: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(ScheduleError) as ei:
        read_ios(data)
    p = tmp_path / "bad_stages.json"
    p.write_text(json.dumps(data))
    line = cli_error(capsys, "simulate", str(p))
    assert str(p) in line
    return str(ei.value)


@needs_data
def test_stages_missing_a_node(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = json.loads(K80.read_text())
    data["blocks"][5]["stages"][1][1] = ["46"]  # drops 47
    msg = _stage_error(data, tmp_path, capsys)
    assert "miss" in msg and "'47'" not in msg and "47" in msg.split("miss", 1)[1]


@needs_data
def test_stages_naming_an_unknown_node(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = json.loads(K80.read_text())
    data["blocks"][1]["stages"][0].append(["nosuch"])
    msg = _stage_error(data, tmp_path, capsys)
    assert "'nosuch'" in msg and "block 1, stage 0" in msg


@needs_data
def test_stages_running_a_node_twice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = json.loads(K80.read_text())
    data["blocks"][1]["stages"][1].append(["10"])
    assert "'10' twice" in _stage_error(data, tmp_path, capsys)


@needs_data
def test_stages_breaking_a_dependency(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = json.loads(K80.read_text())
    stages = data["blocks"][5]["stages"]
    # 48 reads 47: run it in the stage before, and 47 reads 46: swap them in their group
    stages[0].append(["48"])
    del stages[2]
    msg = _stage_error(data, tmp_path, capsys)
    assert "'48'" in msg and "'47'" in msg
    data = json.loads(K80.read_text())
    data["blocks"][5]["stages"][1][1] = ["47", "46"]
    msg = _stage_error(data, tmp_path, capsys)
    assert "'47'" in msg and "reads '46'" in msg


@needs_data
def test_stages_in_some_blocks_only(tmp_path: Path) -> None:
    data = json.loads(K80.read_text())
    del data["blocks"][3]["stages"]
    with pytest.raises(FormatError, match="block 3 has no stages"):
        read_ios(data)
    for b in data["blocks"]:
        b.pop("stages", None)
    graph, sched = read_ios(data)
    assert sched is None and len(graph) == 126


# --- hand-built IOS graphs ------------------------------------------------------------


def _conv(name: str, inputs: list, cout: int, hw: int = 8, k: int = 3, act: str = "relu") -> dict:
    return {
        "type": "conv",
        "name": name,
        "hint_name": name,
        "inputs": inputs,
        "out_channels": cout,
        "kernel": [k, k],
        "stride": [1, 1],
        "padding": [k // 2, k // 2],
        "groups": 1,
        "act": act,
        "output_shape": [cout, hw, hw],
    }


def _graph(nodes: list[dict], stages: list | None = None, c: int = 16) -> dict[str, Any]:
    inp = {"type": "placeholder", "name": "x", "hint_name": "x", "output_shape": [c, 8, 8]}
    block = {
        "enter_name": "x",
        "enter_node": inp,
        "inner_nodes": nodes[:-1],
        "exit_node": nodes[-1],
    }
    if stages is not None:
        block["stages"] = stages
    return {"name": "toy", "input": inp, "blocks": [block]}


def _every_node_type() -> dict[str, Any]:
    """One block using every IOS node type and every kind of term."""
    nodes = [
        _conv("a", [[["x", 0, 16]]], 32),
        _conv("b", [[["x", 0, 8]]], 16, k=1, act="identity"),  # a partial read
        {  # slices in one term are summed; terms are concatenated
            "type": "conv",
            "name": "c",
            "hint_name": "c",
            "inputs": [[["a", 0, 16], ["a", 16, 32]], [["b", 0, 16]]],
            "out_channels": 24,
            "kernel": [1, 1],
            "stride": [1, 1],
            "padding": [0, 0],
            "groups": 1,
            "act": "tanh",
            "output_shape": [24, 8, 8],
        },
        {
            "type": "pool",
            "name": "p",
            "hint_name": "p",
            "inputs": [[["x", 0, 16]]],
            "pool_type": "max",
            "kernel": [3, 3],
            "stride": [1, 1],
            "padding": [1, 1],
            "output_shape": [16, 8, 8],
        },
        {
            "type": "element",
            "name": "e",
            "hint_name": "e",
            "inputs": [[["p", 0, 16]], [["b", 0, 16]]],
            "op_type": "add",
            "output_shape": [16, 8, 8],
        },
        {  # one term: its slices are the operands
            "type": "element",
            "name": "m",
            "hint_name": "m",
            "inputs": [[["e", 0, 8], ["e", 8, 16]]],
            "op_type": "mul",
            "output_shape": [8, 8, 8],
        },
        {
            "type": "sequential",
            "name": "s",
            "hint_name": "s",
            "inputs": [[["m", 0, 8]]],
            "nodes": [
                _conv("s1", [[["m", 0, 8]]], 8, k=1),
                {
                    "type": "activation",
                    "name": "s2",
                    "hint_name": "s2",
                    "inputs": [[["s1", 0, 8]]],
                    "act_type": "sigmoid",
                    "output_shape": [8, 8, 8],
                },
                {
                    "type": "relu",
                    "name": "s3",
                    "hint_name": "s3",
                    "inputs": [[["s2", 0, 4], ["s2", 4, 8]]],
                    "output_shape": [4, 8, 8],
                },
            ],
            "output_shape": [4, 8, 8],
        },
        {
            "type": "identity",
            "name": "i",
            "hint_name": "i",
            "inputs": [[["s", 0, 4]]],
            "output_shape": [4, 8, 8],
        },
        {
            "type": "identity",
            "name": "cat",
            "hint_name": "cat",
            "inputs": [[["c", 0, 24]], [["i", 0, 4]], [["a", 4, 8]]],
            "output_shape": [32, 8, 8],
        },
        {
            "type": "pool",
            "name": "gap",
            "hint_name": "gap",
            "inputs": [[["cat", 0, 32]]],
            "pool_type": "global_avg",
            "kernel": [8, 8],
            "stride": [1, 1],
            "padding": [0, 0],
            "output_shape": [32, 1, 1],
        },
    ]
    stages = [
        [["a"], ["b"], ["p"]],
        [["c"], ["e", "m", "s", "i"]],
        [["cat", "gap"]],
    ]
    return _graph(nodes, stages)


def test_every_node_type_maps_and_round_trips() -> None:
    data = _every_node_type()
    graph, sched = read_ios(data)
    kinds = {op.name: op.kind for op in graph}
    assert kinds["c.t0.sum"] == "add" and kinds["c.cat"] == "concat"
    assert graph["c.cat"].inputs == ("c.t0.sum", "b")  # a whole tensor creates no op
    assert kinds["b.t0.s0"] == "slice" and graph["b"].inputs == ("b.t0.s0",)
    assert (kinds["e"], graph["e"].inputs) == ("add", ("p", "b"))
    assert (kinds["m"], graph["m"].inputs) == ("mul", ("m.t0.s0", "m.t0.s1"))
    assert [kinds[n] for n in ("s.s1", "s.s2", "s.t0.sum", "s")] == [
        "conv",
        "sigmoid",
        "add",
        "relu",
    ]
    assert graph["s"].attrs["ios_name"] == "s3"
    assert (kinds["i"], kinds["cat"], kinds["gap"]) == ("identity", "concat", "global_pool")
    assert graph["c"].attrs["activation"] == "tanh" and graph["b"].attrs["activation"] is None
    assert sorted(ios_nodes(graph)) == sorted(
        ["x", "a", "b", "c", "p", "e", "m", "s", "i", "cat", "gap"]
    )
    assert sched is not None
    assert sched.stages[0] == [["x"]]  # every group of the first stage reads the input
    assert sched.stages[2][1] == [
        *("e", "m.t0.s0", "m.t0.s1", "m"),
        *("s.s1", "s.s2", "s.t0.s0", "s.t0.s1", "s.t0.sum", "s", "i"),
    ]
    assert write_ios(graph, sched) == data
    assert read_ios(write_ios(graph, sched)) == (graph, sched)
    machine = Machine.single(load_gpu("v100"))
    assert simulate(lower(sched, graph, machine.gpu), machine).latency_ms > 0


def test_graph_without_stages_gives_no_schedule() -> None:
    data = _every_node_type()
    del data["blocks"][0]["stages"]
    graph, sched = read_ios(data)
    assert sched is None
    written = write_ios(graph)
    # without stages the writer cuts where IOS cuts: after the join that ends the
    # branches, so the global pool is a block of its own
    assert [b["exit_node"]["name"] for b in written["blocks"]] == ["cat", "gap"]
    assert "stages" not in written["blocks"][0]
    assert read_ios(written) == (graph, None)


def test_write_a_built_graph_and_a_stage_schedule() -> None:
    b = GraphBuilder("built")
    x = b.input((2, 8, 16, 16), name="x")
    left = b.conv(x, 16, 3, padding=1, name="l")
    r = b.conv(x, 16, 1, name="r")
    r2 = b.pool(r, "avg", 3, 1, padding=1, name="r2")
    s = b.op("slice", [left], "l_half", axis=1, begin=0, end=8)
    j = b.concat([s, r2], name="j")
    b.add(j, b.conv(x, 24, 1, name="side"), name="sum")
    graph = b.build()
    sched = StageSchedule([[["x"]], [["l", "l_half"], ["r", "r2"], ["side"]], [["j", "sum"]]])
    d = write_ios(graph, sched)
    assert d["blocks"][0]["stages"] == [[["l"], ["r", "r2"], ["side"]], [["j", "sum"]]]
    j_node = next(n for n in _nodes(d) if n["name"] == "j")
    assert j_node["inputs"] == [[["l", 0, 8]], [["r2", 0, 16]]]  # the slice is folded
    back, sched2 = read_ios(d, batch=2)
    assert [(o.name, o.kind, o.output_shape) for o in back if o.kind != "slice"] == [
        (o.name, o.kind, o.output_shape) for o in graph if o.kind != "slice"
    ]
    assert (back.macs, back.params) == (graph.macs, graph.params)
    assert sched2 is not None
    assert sched2.stages == [[["x"]], [["l"], ["r", "r2"], ["side"]], [["j.t0.s0", "j", "sum"]]]


def test_write_rejects_what_ios_cannot_hold() -> None:
    with pytest.raises(FormatError, match="op 'flatten'"):
        write_ios(build_model("inception_v3"))
    b = GraphBuilder("two_inputs")
    b.add(b.input((1, 4, 2, 2), name="u"), b.input((1, 4, 2, 2), name="v"))
    with pytest.raises(FormatError, match="one NCHW input"):
        write_ios(b.build())
    b = GraphBuilder("dilated")
    b.conv(b.input((1, 4, 8, 8)), 4, 3, dilation=2, padding=2, name="d")
    with pytest.raises(FormatError, match=r"op 'd'.*dilation"):
        write_ios(b.build())
    graph, _ = read_ios(_every_node_type())
    with pytest.raises(FormatError, match="stage schedules only"):
        write_ios(graph, StreamSchedule([graph.topo_order]))
    with pytest.raises(ScheduleError):  # a schedule that misses ops is refused
        write_ios(graph, StageSchedule([[["x", "a"]]]))


# --- malformed IOS files ---------------------------------------------------------------


def _bad(mutate) -> dict[str, Any]:
    data = copy.deepcopy(_every_node_type())
    mutate(data)
    return data


def _node(data: dict[str, Any], name: str) -> dict[str, Any]:
    return next(n for n in _nodes(data) if n["name"] == name)


MALFORMED = {
    "unknown type": (lambda d: _node(d, "p").update(type="lrn"), "'lrn'"),
    "undefined input": (lambda d: _node(d, "c")["inputs"][1][0].__setitem__(0, "zz"), "'zz'"),
    "input defined later": (lambda d: _node(d, "a")["inputs"][0][0].__setitem__(0, "gap"), "'gap'"),
    "slice past channels": (lambda d: _node(d, "b")["inputs"][0][0].__setitem__(2, 99), "outside"),
    "empty slice": (lambda d: _node(d, "b")["inputs"][0][0].__setitem__(2, 0), "outside"),
    "bad slice": (lambda d: _node(d, "b")["inputs"][0].__setitem__(0, ["x", 0]), "[node, c_begin"),
    "no inputs": (lambda d: _node(d, "b").update(inputs=[]), "non-empty list of terms"),
    "term sizes": (lambda d: _node(d, "c")["inputs"][0].__setitem__(1, ["a", 16, 20]), "differ"),
    "wrong shape": (lambda d: _node(d, "a").update(output_shape=[32, 4, 4]), "output_shape"),
    "bad shape": (lambda d: _node(d, "a").update(output_shape=[32, 8]), "[C, H, W]"),
    "duplicate": (lambda d: _node(d, "b").update(name="a"), "defined twice"),
    "conv attrs": (lambda d: _node(d, "a").update(kernel="3x3"), "integer pairs"),
    "conv act": (lambda d: _node(d, "a").update(act="swish"), "'swish'"),
    "pool type": (lambda d: _node(d, "p").update(pool_type="lp"), "'lp'"),
    "element op": (lambda d: _node(d, "e").update(op_type="sub"), "'sub'"),
    "element arity": (lambda d: _node(d, "e").update(inputs=[[["p", 0, 16]]]), "two or more"),
    "act type": (lambda d: _node(d, "s")["nodes"][1].update(act_type="elu"), "'elu'"),
    "empty sequential": (lambda d: _node(d, "s").update(nodes=[]), '"nodes"'),
    "input type": (lambda d: d["input"].update(type="conv"), "placeholder"),
    "block": (lambda d: d["blocks"][0].pop("exit_node"), "exit_node"),
    "enter": (lambda d: d["blocks"][0].update(enter_name="nope"), "'nope'"),
    "stage shape": (lambda d: d["blocks"][0]["stages"].append([]), "non-empty"),
    "stage names input": (lambda d: d["blocks"][0]["stages"][0].append(["x"]), "the input 'x'"),
    "enter node": (lambda d: d["blocks"][0].update(enter_name=None, enter_node=7), "enter_node"),
    "seq shape": (lambda d: _node(d, "s").update(output_shape=[5, 8, 8]), "last node gives"),
    "seq shape type": (lambda d: _node(d, "s").update(output_shape=4), "[C, H, W]"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_ios(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mutate, needle = MALFORMED[case]
    data = _bad(mutate)
    with pytest.raises(SimGPUError) as ei:
        read_ios(data)
    assert needle in str(ei.value)
    assert isinstance(ei.value, FormatError | GraphError | ScheduleError)
    p = tmp_path / "bad_ios.json"
    p.write_text(json.dumps(data))
    line = cli_error(capsys, "simulate", str(p))
    assert str(p) in line and needle in line


def test_bad_batch_and_dtype() -> None:
    data = _every_node_type()
    for batch in (0, -1, 1.5, True):
        with pytest.raises(GraphError, match="batch"):
            read_ios(data, batch=batch)  # type: ignore[arg-type]
    with pytest.raises(GraphError, match="dtype"):
        read_ios(data, dtype="fp8")


@needs_data
def test_truncated_ios_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "cut.json"
    p.write_bytes(K80.read_bytes()[:5000])
    line = cli_error(capsys, "simulate", str(p))
    assert "cut.json" in line and "invalid JSON" in line


def test_is_ios() -> None:
    assert is_ios(_every_node_type())
    assert not is_ios({"format": "simgpu.opgraph"})
    assert not is_ios({"input": {}, "blocks": "x"})
    assert not is_ios([1, 2])


# --- property: random IOS graphs round-trip -------------------------------------------


@st.composite
def ios_graphs(draw: st.DrawFn) -> dict[str, Any]:
    """Random IOS graphs (one spatial size), with partial slices, sums, concats,
    elements and sequentials, and random valid stages."""
    hw = 4
    channels = {"x": draw(st.integers(2, 12))}
    deps: dict[str, set[str]] = {}
    nodes = []

    def slice_of(width: int | None = None) -> list:
        src = draw(st.sampled_from(sorted(channels)))
        c = channels[src]
        if width is not None:
            if width > c:
                return [src, 0, c]
            b = draw(st.integers(0, c - width))
            return [src, b, b + width]
        b = draw(st.integers(0, c - 1))
        return [src, b, draw(st.integers(b + 1, c))]

    def term() -> list:
        first = slice_of()
        extra = [slice_of(first[2] - first[1]) for _ in range(draw(st.integers(0, 2)))]
        return [first] + [s for s in extra if s[2] - s[1] == first[2] - first[1]]

    for i in range(draw(st.integers(1, 10))):
        name = f"n{i}"
        kind = draw(st.sampled_from(["conv", "pool", "identity", "element", "relu", "seq"]))
        if kind == "element":
            t = term()
            w = t[0][2] - t[0][1]
            terms = [t, [slice_of(w)]]
            if terms[1][0][2] - terms[1][0][1] != w:
                terms = [[*t, list(t[0])]]  # one term, two operands
            node = {
                "type": "element",
                "name": name,
                "hint_name": name,
                "inputs": terms,
                "op_type": draw(st.sampled_from(["add", "mul"])),
            }
            cout = w
        else:
            terms = [term() for _ in range(draw(st.integers(1, 3)))]
            cin = sum(t[0][2] - t[0][1] for t in terms)
            if kind == "conv":
                cout = draw(st.integers(1, 12))
                node = _conv(name, terms, cout, hw=hw, k=draw(st.sampled_from([1, 3])))
            elif kind == "pool":
                node = {
                    "type": "pool",
                    "name": name,
                    "hint_name": name,
                    "inputs": terms,
                    "pool_type": draw(st.sampled_from(["max", "avg"])),
                    "kernel": [3, 3],
                    "stride": [1, 1],
                    "padding": [1, 1],
                }
                cout = cin
            elif kind == "seq":
                cout = draw(st.integers(1, 12))
                first = _conv(f"{name}_a", terms, cout, hw=hw, k=1)
                second = {
                    "type": "relu",
                    "name": f"{name}_b",
                    "hint_name": f"{name}_b",
                    "inputs": [[[f"{name}_a", 0, cout]]],
                    "output_shape": [cout, hw, hw],
                }
                node = {
                    "type": "sequential",
                    "name": name,
                    "hint_name": name,
                    "inputs": terms,
                    "nodes": [first, second],
                }
            else:
                node = {"type": kind, "name": name, "hint_name": name, "inputs": terms}
                cout = cin
        node["output_shape"] = [cout, hw, hw]
        deps[name] = {s[0] for t in node["inputs"] for s in t} - {"x"}
        nodes.append(node)
        channels[name] = cout
    # stages: repeatedly take some ready nodes, each a group of its own (or chained)
    stages, done = [], set()
    while len(done) < len(nodes):
        ready = [n["name"] for n in nodes if n["name"] not in done and deps[n["name"]] <= done]
        take = draw(st.lists(st.sampled_from(ready), min_size=1, unique=True))
        stages.append([[n] for n in sorted(take, key=lambda n: int(n[1:]))])
        done |= set(take)
    inp = {
        "type": "placeholder",
        "name": "x",
        "hint_name": "x",
        "output_shape": [channels["x"], hw, hw],
    }
    data = {
        "name": "random",
        "input": inp,
        "blocks": [
            {
                "enter_name": "x",
                "enter_node": inp,
                "inner_nodes": nodes[:-1],
                "exit_node": nodes[-1],
                "stages": stages,
            }
        ],
    }
    return data


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ios_graphs(), st.integers(1, 3))
def test_random_ios_graphs_round_trip(data: dict[str, Any], batch: int) -> None:
    graph, sched = read_ios(data, batch=batch)
    assert sched is not None
    validate_schedule(sched, graph)
    assert len(ios_nodes(graph)) == 1 + len(data["blocks"][0]["inner_nodes"]) + 1
    written = write_ios(graph, sched)
    again, sched2 = read_ios(json.loads(json.dumps(written)), batch=batch)
    assert again == graph
    assert sched2 is not None and sched2.stages == sched.stages
    assert write_ios(again, sched2) == written  # a fixed point after one round
    # a block's nodes are read by later blocks only through its exit node
    seen: set[str] = set()
    for block in reversed(written["blocks"]):
        inner = {n["name"] for n in block["inner_nodes"]}
        assert not inner & seen
        for n in [*block["inner_nodes"], block["exit_node"]]:
            for sub in n.get("nodes", [n]):
                seen |= {s[0] for t in sub["inputs"] for s in t}
