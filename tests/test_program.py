"""Schedules, their lowering to stream programs, and the two validators.

Lowering must add exactly the events a dependency across streams needs (and none for
same-stream or transitively ordered edges); the validators must reject every way a
schedule or program can run an op twice, skip one, or break a dependency.
"""

from __future__ import annotations

import json

import pytest

from simgpu.errors import FormatError, ProgramError, ScheduleError
from simgpu.graph import Op, OpGraph
from simgpu.hardware import preset
from simgpu.program import (
    Launch,
    Record,
    StreamProgram,
    Synchronize,
    Wait,
    lower,
    validate_program,
)
from simgpu.schedule import (
    StageSchedule,
    StreamSchedule,
    schedule_from_json,
    schedule_to_json,
    validate_schedule,
)

V100 = preset("v100")
S = (1, 64, 28, 28)


def _x(name: str = "x") -> Op:
    return Op(name, "input", (), S)


def _relu(name: str, src: str) -> Op:
    return Op(name, "relu", (src,), S)


def _add(name: str, *srcs: str) -> Op:
    return Op(name, "add", srcs, S)


@pytest.fixture
def diamond() -> OpGraph:
    """a -> {b, c} -> d, all with device work."""
    return OpGraph(
        [_x(), _relu("a", "x"), _relu("b", "a"), _relu("c", "a"), _add("d", "b", "c")],
        name="diamond",
    )


@pytest.fixture
def chain() -> OpGraph:
    return OpGraph([_x(), _relu("a", "x"), _relu("b", "a")], name="chain")


def _records(p: StreamProgram) -> list[tuple[str, int]]:
    return [(c.event, c.stream) for c in p.commands if isinstance(c, Record)]


def _waits(p: StreamProgram) -> list[tuple[str, int]]:
    return [(c.event, c.stream) for c in p.commands if isinstance(c, Wait)]


def _index(p: StreamProgram, op: str) -> int:
    return next(i for i, c in enumerate(p.commands) if isinstance(c, Launch) and c.op == op)


def _last_index(p: StreamProgram, op: str) -> int:
    return max(i for i, c in enumerate(p.commands) if isinstance(c, Launch) and c.op == op)


# --- lowering a stream schedule -------------------------------------------------------


def test_diamond_on_two_streams_gets_exactly_the_needed_events(diamond: OpGraph) -> None:
    sched = StreamSchedule([["x", "a", "b", "d"], ["c"]])
    p = lower(sched, diamond, V100)
    validate_program(p, diamond)
    # a -> c crosses to stream 1, c -> d crosses back; x->a, a->b, b->d are same-stream
    assert sorted(_records(p)) == [("done:a", 0), ("done:c", 1)]
    assert sorted(_waits(p)) == [("done:a", 1), ("done:c", 0)]
    cmds = p.commands
    # one record right after c, one wait right before d
    assert cmds[_last_index(p, "c") + 1] == Record("done:c", 1, 0)
    assert cmds[_index(p, "d") - 1] == Wait("done:c", 0, 0)
    assert cmds[_last_index(p, "a") + 1] == Record("done:a", 0, 0)
    assert cmds[_index(p, "c") - 1] == Wait("done:a", 1, 0)
    assert p.syncs == 2
    assert p.streams == [(0, 0), (0, 1)]
    assert p.kernels == 4  # x is an input: no device work
    assert p.ops() == ["x", "a", "c", "b", "d"]  # round-robin by position


def test_same_stream_edges_need_no_event(diamond: OpGraph) -> None:
    p = lower(StreamSchedule([list(diamond.topo_order)]), diamond, V100)
    validate_program(p, diamond)
    assert _records(p) == [] and _waits(p) == []
    assert p.syncs == 0
    assert all(isinstance(c, Launch) for c in p.commands)
    assert [c.op for c in p.commands] == diamond.topo_order


def test_transitive_edges_need_no_extra_event() -> None:
    # a (s0) -> b (s1) -> c (s1), and a -> c directly: c already knows a through b's wait
    g = OpGraph([_x(), _relu("a", "x"), _relu("b", "a"), _add("c", "a", "b")])
    p = lower(StreamSchedule([["x", "a"], ["b", "c"]]), g, V100)
    validate_program(p, g)
    assert _records(p) == [("done:a", 0)]
    assert _waits(p) == [("done:a", 1)]


def test_transitive_through_a_third_stream_when_the_direct_input_comes_last() -> None:
    # a (s0) -> b (s1) -> c (s2), and a -> c listed after b: one event per crossing
    g = OpGraph([_x(), _relu("a", "x"), _relu("b", "a"), _add("c", "b", "a")])
    p = lower(StreamSchedule([["x", "a"], ["b"], ["c"]]), g, V100)
    validate_program(p, g)
    assert sorted(_waits(p)) == [("done:a", 1), ("done:b", 2)]
    assert sorted(_records(p)) == [("done:a", 0), ("done:b", 1)]


def test_transitive_through_a_third_stream_when_the_direct_input_comes_first() -> None:
    # same graph as above, but c = add(a, b): the a -> c edge is still transitive
    g = OpGraph([_x(), _relu("a", "x"), _relu("b", "a"), _add("c", "a", "b")])
    p = lower(StreamSchedule([["x", "a"], ["b"], ["c"]]), g, V100)
    validate_program(p, g)
    assert sorted(_waits(p)) == [("done:a", 1), ("done:b", 2)]


def test_an_event_is_recorded_once_for_several_consumers() -> None:
    g = OpGraph([_x(), _relu("a", "x"), _relu("b", "a"), _relu("c", "a"), _add("d", "b", "c")])
    p = lower(StreamSchedule([["x", "a", "d"], ["b"], ["c"]]), g, V100)
    validate_program(p, g)
    assert _records(p).count(("done:a", 0)) == 1
    assert sorted(_waits(p)) == [("done:a", 1), ("done:a", 2), ("done:b", 0), ("done:c", 0)]


def test_stream_schedule_devices_out_of_range_is_program_error(chain: OpGraph) -> None:
    with pytest.raises(ProgramError, match="device 1"):
        lower(StreamSchedule([["x", "a", "b"]], devices=[1]), chain, V100)


def test_lowering_validates_the_schedule(chain: OpGraph) -> None:
    with pytest.raises(ScheduleError, match="misses"):
        lower(StreamSchedule([["x", "a"]]), chain, V100)


# --- lowering a stage schedule --------------------------------------------------------


@pytest.fixture
def fork() -> OpGraph:
    return OpGraph([_x(), _relu("a", "x"), _relu("b", "x"), _add("c", "a", "b")], name="fork")


STAGES = [[["x"]], [["a"], ["b"]], [["c"]]]


def test_stage_schedule_sync_barrier(fork: OpGraph) -> None:
    p = lower(StageSchedule(STAGES, barrier="sync"), fork, V100)
    validate_program(p, fork)
    kinds = [
        type(c).__name__ if not isinstance(c, Launch) else f"{c.op}@{c.stream}" for c in p.commands
    ]
    assert kinds == ["x@0", "Synchronize", "a@0", "b@1", "Synchronize", "c@0"]
    assert _records(p) == [] and _waits(p) == []
    assert p.syncs == 2


def test_stage_schedule_event_barrier(fork: OpGraph) -> None:
    p = lower(StageSchedule(STAGES, barrier="events"), fork, V100)
    validate_program(p, fork)
    assert not any(isinstance(c, Synchronize) for c in p.commands)
    assert _records(p) and _waits(p)
    # c on stream 0 must wait for group 1 (b, stream 1) of the stage before
    assert ("stage1.g1", 0) in _waits(p)
    # b on stream 1 waits for stage 0, which ran on stream 0
    assert ("stage0.g0", 1) in _waits(p)
    assert _index(p, "b") > p.commands.index(Wait("stage0.g0", 1, 0))


def test_stage_schedule_in_graph_mode_uses_events(fork: OpGraph) -> None:
    p = lower(StageSchedule(STAGES, barrier="sync", graph_mode=True), fork, V100)
    validate_program(p, fork)
    assert p.graph_mode
    assert not any(isinstance(c, Synchronize) for c in p.commands)
    assert _waits(p)


def test_stage_event_barrier_orders_dependencies_across_several_stages() -> None:
    # b (stage 0, stream 1) is read by e (stage 2, stream 2) only through the barrier
    # events of the one-group stage 1 in between: vector clocks must carry it
    g = OpGraph(
        [
            _x(),
            _x("y"),
            _relu("a", "x"),
            _relu("b", "y"),
            _relu("c", "a"),
            _relu("d", "c"),
            _relu("z", "c"),
            _add("e", "b", "c"),
        ]
    )
    sched = StageSchedule(
        [[["x", "a"], ["y", "b"]], [["c"]], [["d"], ["z"], ["e"]]], barrier="events"
    )
    p = lower(sched, g, V100)
    validate_program(p, g)
    assert (
        _index(p, "e") > 0
        and next(c for c in p.commands if isinstance(c, Launch) and c.op == "e").stream == 2
    )
    assert ("stage1.g0", 2) in _waits(p)
    assert not any(ev.startswith("stage0") and s == 2 for ev, s in _waits(p))


# --- validate_program -----------------------------------------------------------------


def L(op: str, stream: int = 0) -> Launch:
    return Launch(op, None, stream)


def test_valid_programs_pass(chain: OpGraph) -> None:
    validate_program(StreamProgram([L("x"), L("a"), L("b")]), chain)
    validate_program(
        StreamProgram([L("x"), L("a"), Record("e", 0), Wait("e", 1), L("b", 1)]), chain
    )
    validate_program(StreamProgram([L("x"), L("a"), Synchronize(), L("b", 1)]), chain)
    # an event recorded after the producer on its stream, waited on by a third stream
    validate_program(
        StreamProgram(
            [L("x", 1), L("a", 1), Record("e", 1), Wait("e", 2), L("b", 2)],
        ),
        chain,
    )


def test_op_launched_twice(chain: OpGraph) -> None:
    with pytest.raises(
        ProgramError, match=r"op 'a' is launched more than once \(streams 0 and 1\)"
    ):
        validate_program(StreamProgram([L("x"), L("a"), L("b"), L("a", 1)]), chain)


def test_op_launched_twice_on_one_stream_non_adjacent(chain: OpGraph) -> None:
    with pytest.raises(ProgramError, match="op 'a' is launched more than once"):
        validate_program(StreamProgram([L("x"), L("a"), L("b"), L("a")]), chain)


def test_op_kernels_split_by_another_command(chain: OpGraph) -> None:
    with pytest.raises(ProgramError, match="op 'a'"):
        validate_program(StreamProgram([L("x"), L("a"), Record("e", 0), L("a"), L("b")]), chain)


def test_op_missing(chain: OpGraph) -> None:
    with pytest.raises(ProgramError, match=r"never launches op\(s\): b"):
        validate_program(StreamProgram([L("x"), L("a")]), chain)


def test_op_not_in_graph(chain: OpGraph) -> None:
    with pytest.raises(ProgramError, match="not in the graph: ghost"):
        validate_program(StreamProgram([L("x"), L("a"), L("b"), L("ghost")]), chain)


def test_dependency_across_streams_without_event(chain: OpGraph) -> None:
    with pytest.raises(
        ProgramError, match=r"op 'b' on stream 1 is not ordered after its input 'a' on stream 0"
    ):
        validate_program(StreamProgram([L("x"), L("a"), L("b", 1)]), chain)


def test_event_recorded_before_the_producer_does_not_order_it(chain: OpGraph) -> None:
    prog = StreamProgram([L("x"), Record("e", 0), L("a"), Wait("e", 1), L("b", 1)])
    with pytest.raises(ProgramError, match=r"op 'b'.*input 'a'"):
        validate_program(prog, chain)


def test_op_launched_before_its_input(chain: OpGraph) -> None:
    with pytest.raises(
        ProgramError, match="op 'b' \\(stream 0\\) is launched before its input 'a'"
    ):
        validate_program(StreamProgram([L("x"), L("b"), L("a")]), chain)


def test_wait_before_its_record(chain: OpGraph) -> None:
    prog = StreamProgram([L("x"), L("a"), Wait("e", 1), Record("e", 0), L("b", 1)])
    with pytest.raises(ProgramError, match="stream 1 waits on event 'e'"):
        validate_program(prog, chain)
    # without a graph, the event discipline is still checked
    with pytest.raises(ProgramError, match="event 'e'"):
        validate_program(prog)


def test_synchronize_inside_graph_mode(chain: OpGraph) -> None:
    prog = StreamProgram([L("x"), L("a"), Synchronize(), L("b", 1)], graph_mode=True)
    with pytest.raises(ProgramError, match="synchronize inside a CUDA Graph"):
        validate_program(prog, chain)


def test_negative_stream(chain: OpGraph) -> None:
    with pytest.raises(ProgramError, match="negative stream"):
        validate_program(StreamProgram([L("x", -1)]), chain)


# --- validate_schedule ------------------------------------------------------------------


def test_valid_schedules_pass(diamond: OpGraph) -> None:
    validate_schedule(StreamSchedule([["x", "a", "b", "d"], ["c"]]), diamond)
    validate_schedule(StageSchedule([[["x", "a"]], [["b"], ["c"]], [["d"]]]), diamond)
    validate_schedule(StageSchedule([[["x", "a", "b", "c", "d"]]]), diamond)


@pytest.mark.parametrize(
    ("sched", "match"),
    [
        (StreamSchedule([["x", "a", "b"], ["c"]]), r"misses op\(s\): d"),
        (StreamSchedule([["x", "a", "b", "d"], ["c", "b"]]), r"more than once: b"),
        (StreamSchedule([["x", "a", "b", "c", "d", "zz"]]), r"not in graph 'diamond': zz"),
        (StageSchedule([[["x", "a"]], [["b"], ["c"]]]), r"misses op\(s\): d"),
        (StageSchedule([[["x", "a", "a"]], [["b"], ["c"]], [["d"]]]), r"more than once: a"),
    ],
)
def test_cover_errors(diamond: OpGraph, sched, match: str) -> None:
    with pytest.raises(ScheduleError, match=match):
        validate_schedule(sched, diamond)


def test_missing_ops_are_counted_beyond_five() -> None:
    ops = [_x(), *[_relu(f"r{i}", "x") for i in range(8)]]
    g = OpGraph(ops)
    with pytest.raises(ScheduleError, match=r"misses op\(s\): r0, r1, r2, r3, r4 \(\+3 more\)"):
        validate_schedule(StreamSchedule([["x"]]), g)


def test_stage_consumer_in_earlier_stage(diamond: OpGraph) -> None:
    sched = StageSchedule([[["x", "a"]], [["d"]], [["b"], ["c"]]])
    with pytest.raises(
        ScheduleError, match=r"op 'd' \(stage 1, group 0\) must run after its input"
    ):
        validate_schedule(sched, diamond)


def test_dependent_ops_in_different_groups_of_one_stage(diamond: OpGraph) -> None:
    sched = StageSchedule([[["x"], ["a"]], [["b"], ["c"]], [["d"]]])
    with pytest.raises(ScheduleError, match=r"op 'a'.*input 'x'"):
        validate_schedule(sched, diamond)


def test_stage_group_order_reversed(diamond: OpGraph) -> None:
    sched = StageSchedule([[["a", "x"]], [["b"], ["c"]], [["d"]]])
    with pytest.raises(ScheduleError, match=r"op 'a'"):
        validate_schedule(sched, diamond)


def test_unknown_barrier(diamond: OpGraph) -> None:
    sched = StageSchedule([[["x", "a", "b", "c", "d"]]], barrier="fence")
    with pytest.raises(ScheduleError, match="barrier 'fence'"):
        validate_schedule(sched, diamond)


def test_stream_order_contradicting_a_dependency_on_one_stream(diamond: OpGraph) -> None:
    with pytest.raises(ScheduleError, match="contradicts dependencies"):
        validate_schedule(StreamSchedule([["x", "a", "d", "b"], ["c"]]), diamond)


def test_stream_order_contradicting_dependencies_across_streams() -> None:
    # b needs a (stream 1 after d), d needs c (stream 0 after b): a cycle through both
    g = OpGraph([_x(), _relu("a", "x"), _relu("b", "a"), _relu("c", "x"), _relu("d", "c")])
    with pytest.raises(ScheduleError, match=r"contradicts dependencies.*\(stream [01]\)") as ei:
        validate_schedule(StreamSchedule([["x", "b", "c"], ["d", "a"]]), g)
    msg = str(ei.value)
    assert any(f"'{op}'" in msg for op in "abcd")


def test_stream_devices_length_must_match(chain: OpGraph) -> None:
    with pytest.raises(ScheduleError, match="one device per stream"):
        validate_schedule(StreamSchedule([["x", "a", "b"]], devices=[0, 0]), chain)


# --- schedule JSON ----------------------------------------------------------------------


def test_stream_schedule_json_round_trip(diamond: OpGraph) -> None:
    sched = StreamSchedule(
        [["x", "a", "b", "d"], ["c"]], graph=diamond, graph_mode=True, devices=[0, 0]
    )
    back = schedule_from_json(json.loads(json.dumps(schedule_to_json(sched))))
    assert isinstance(back, StreamSchedule)
    assert back.streams == sched.streams
    assert back.graph_mode is True
    assert back.devices == [0, 0]
    assert back.graph == diamond


def test_stage_schedule_json_round_trip() -> None:
    sched = StageSchedule(STAGES, barrier="events")
    data = json.loads(json.dumps(schedule_to_json(sched)))
    assert data["format"] == "simgpu.schedule" and data["kind"] == "stages"
    back = schedule_from_json(data)
    assert isinstance(back, StageSchedule)
    assert (back.stages, back.barrier, back.graph_mode, back.graph) == (
        STAGES,
        "events",
        False,
        None,
    )


def test_round_tripped_schedule_lowers_to_the_same_program(diamond: OpGraph) -> None:
    sched = StreamSchedule([["x", "a", "b", "d"], ["c"]])
    back = schedule_from_json(json.loads(json.dumps(schedule_to_json(sched))))
    assert lower(back, diamond, V100).commands == lower(sched, diamond, V100).commands


@pytest.mark.parametrize(
    "data",
    [
        [],
        {"kind": "streams", "streams": [["x"]]},
        {"format": "simgpu.opgraph", "kind": "streams", "streams": [["x"]]},
        {"format": "simgpu.schedule", "kind": "waves", "streams": [["x"]]},
        {"format": "simgpu.schedule", "streams": [["x"]]},
        {"format": "simgpu.schedule", "kind": "streams", "streams": ["x"]},
        {"format": "simgpu.schedule", "kind": "streams", "streams": [[1]]},
        {"format": "simgpu.schedule", "kind": "streams"},
        {"format": "simgpu.schedule", "kind": "stages", "stages": [["x"]]},
        {"format": "simgpu.schedule", "kind": "stages", "stages": "x"},
        {"format": "simgpu.schedule", "kind": "streams", "streams": [["x"]], "graph": {}},
    ],
    ids=[
        "list",
        "no-format",
        "wrong-format",
        "unknown-kind",
        "no-kind",
        "streams-flat",
        "op-not-string",
        "no-streams",
        "stages-too-shallow",
        "stages-string",
        "bad-graph",
    ],
)
def test_malformed_schedule_json_is_format_error(data: object) -> None:
    with pytest.raises(FormatError, match=r"s\.json"):
        schedule_from_json(data, source="s.json")


@pytest.mark.parametrize("devices", [["gpu0"], 5], ids=["string", "number"])
def test_malformed_devices_is_format_error(devices: object) -> None:
    data = {"format": "simgpu.schedule", "kind": "streams", "streams": [["x"]], "devices": devices}
    with pytest.raises(FormatError, match=r"s\.json"):
        schedule_from_json(data, source="s.json")
