"""Schedules: what a scheduler returns, in the two shapes the published ones use.

*Stages* (IOS, HIOS, greedy): a list of stages, a stage a list of groups, a group an
ordered list of ops on one stream; a barrier after each stage. *Stream assignment*
(Nimble, LIOS): each stream an ordered list of ops; dependencies across streams become
events when lowered; an optional ``order`` fixes the launch order across streams
(Opara). A scheduler that rewrites the graph (IOS's conv merge) returns the rewritten
graph with the schedule; its merged ops name the ops they replace.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from simgpu.errors import FormatError, ScheduleError
from simgpu.graph import OpGraph
from simgpu.limits import check


@dataclass
class StageSchedule:
    """Stages of concurrent groups. ``barrier``: "sync" (host synchronise, as IOS) or
    "events" (every stream of a stage waits for every group of the previous one)."""

    stages: list[list[list[str]]]
    graph: OpGraph | None = None
    barrier: str = "sync"
    graph_mode: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    def ops(self) -> list[str]:
        return [op for stage in self.stages for group in stage for op in group]

    @property
    def width(self) -> int:
        return max((len(s) for s in self.stages), default=0)


@dataclass
class StreamSchedule:
    """Per stream, its ops in order. ``devices[i]`` is stream i's GPU (default all 0).
    ``order``: every op once, the host's launch order across streams (a topological
    order that keeps each stream's order); None lets lowering interleave the streams
    by position. Under left-over block dispatch the launch order moves latency."""

    streams: list[list[str]]
    graph: OpGraph | None = None
    graph_mode: bool = False
    devices: list[int] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    order: list[str] | None = None

    def ops(self) -> list[str]:
        return [op for s in self.streams for op in s]

    def device_of(self, stream: int) -> int:
        return self.devices[stream] if self.devices else 0


Schedule = StageSchedule | StreamSchedule


def _check_cover(ops: list[str], graph: OpGraph) -> None:
    counts = Counter(ops)
    unknown = sorted(n for n in counts if n not in graph)
    if unknown:
        raise ScheduleError(
            f"schedule names op(s) not in graph '{graph.name}': {', '.join(unknown[:5])}"
        )
    dup = sorted(n for n, c in counts.items() if c > 1)
    if dup:
        raise ScheduleError(f"schedule runs op(s) more than once: {', '.join(dup[:5])}")
    missing = [n for n in graph.ops if n not in counts]
    if missing:
        more = f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""
        raise ScheduleError(f"schedule misses op(s): {', '.join(missing[:5])}{more}")


def validate_schedule(schedule: Schedule, graph: OpGraph) -> None:
    """Every op exactly once, and no order the schedule fixes contradicts a dependency."""
    _check_cover(schedule.ops(), graph)
    if isinstance(schedule, StageSchedule):
        if schedule.barrier not in ("sync", "events"):
            raise ScheduleError(f"unknown stage barrier {schedule.barrier!r} (sync or events)")
        where: dict[str, tuple[int, int, int]] = {}
        for si, stage in enumerate(schedule.stages):
            for gi, group in enumerate(stage):
                for pi, op in enumerate(group):
                    where[op] = (si, gi, pi)
        for u, v in graph.edges():
            su, gu, pu = where[u]
            sv, gv, pv = where[v]
            if su > sv or (su == sv and (gu != gv or pu > pv)):
                raise ScheduleError(
                    f"op '{v}' (stage {sv}, group {gv}) must run after its input '{u}' "
                    f"(stage {su}, group {gu})"
                )
        return
    if schedule.devices is not None and len(schedule.devices) != len(schedule.streams):
        raise ScheduleError("stream schedule: devices must list one device per stream")
    order = nx.DiGraph(graph.nx)
    stream_of = {}
    for si, ops in enumerate(schedule.streams):
        for a, b in itertools.pairwise(ops):
            order.add_edge(a, b)
        for op in ops:
            stream_of[op] = si
    try:
        cycle = nx.find_cycle(order)
    except nx.NetworkXNoCycle:
        if schedule.order is not None:
            _check_launch_order(schedule.order, schedule.ops(), order)
        return
    ops = [u for u, _ in cycle]
    desc = ", ".join(f"'{o}' (stream {stream_of[o]})" for o in ops[:6])
    raise ScheduleError(f"stream order contradicts dependencies around {desc}")


def _check_launch_order(launch: list[str], ops: list[str], deps: nx.DiGraph) -> None:
    """A launch order names every op of the schedule once and launches no op before an
    input or an earlier op of its stream."""
    if sorted(launch) != sorted(ops):
        raise ScheduleError("stream schedule: order must name every op of the schedule once")
    at = {op: i for i, op in enumerate(launch)}
    for u, v in deps.edges():
        if at[u] > at[v]:
            raise ScheduleError(f"stream schedule: order launches '{v}' before '{u}'")


# --- JSON -------------------------------------------------------------------------------

SCHEDULE_FORMAT = "simgpu.schedule"


def schedule_to_json(schedule: Schedule) -> dict[str, Any]:
    d: dict[str, Any] = {"format": SCHEDULE_FORMAT, "version": 1, "graph_mode": schedule.graph_mode}
    if isinstance(schedule, StageSchedule):
        d.update(kind="stages", stages=schedule.stages, barrier=schedule.barrier)
    else:
        d.update(kind="streams", streams=schedule.streams)
        if schedule.devices is not None:
            d["devices"] = schedule.devices
        if schedule.order is not None:
            d["order"] = schedule.order
    if schedule.graph is not None:
        d["graph"] = schedule.graph.to_json()
    return d


def check_rewrite(given: OpGraph, schedule: Schedule, source: str = "<schedule>") -> None:
    """A schedule that carries its own graph must carry a rewrite of ``given`` (merged
    convs, as IOS makes), not another graph: same name, every op of ``given`` present
    with its output shape (a merged op's originals stay, as slices of it; an op fused
    into its consumer's kernel is named by the fused op's ``replaces``), the same
    inputs and the same outputs. Otherwise the run would silently simulate another
    model than the one named."""
    g = schedule.graph
    if g is None or g is given:
        return
    if g.name != given.name:
        raise ScheduleError(
            f"{source}: the schedule's embedded graph is '{g.name}', not the '{given.name}' given"
        )
    # an op fused away (computed inside a fused op's kernel, which keeps the name of the
    # last op it replaces) is named by that op's ``replaces``, as are all its consumers
    by = {r: o.name for o in g for r in o.attrs.get("replaces", ()) if r not in g}
    for op in given.ops:
        if op not in g:
            if op in by and all(s in by or s == by[op] for s in given.successors(op)):
                continue
            raise ScheduleError(f"{source}: the schedule's embedded graph lacks op '{op}'")
        if g[op].output_shape != given[op].output_shape:
            raise ScheduleError(
                f"{source}: op '{op}' has shape {list(g[op].output_shape)} in the schedule's "
                f"embedded graph, {list(given[op].output_shape)} in the graph given"
            )

    def ends(x: OpGraph) -> tuple[set[str], set[str]]:
        ins = {n for n in x.ops if x[n].kind == "input"}
        outs = {n for n in x.ops if not list(x.successors(n))}
        return ins, outs

    if ends(g) != ends(given):
        raise ScheduleError(
            f"{source}: the schedule's embedded graph has other inputs or outputs than "
            f"'{given.name}': it is not a rewrite of it"
        )


def schedule_from_json(data: Any, source: str = "<json>") -> Schedule:
    if not isinstance(data, dict) or data.get("format") != SCHEDULE_FORMAT:
        raise FormatError(
            f'{source}: not a simgpu schedule (missing "format": "{SCHEDULE_FORMAT}")'
        )
    known = {"format", "version", "kind", "graph_mode", "stages", "barrier", "streams",
             "devices", "graph", "order"}  # fmt: skip
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise FormatError(f"{source}: unknown schedule field(s) {', '.join(unknown)}")
    if data.get("version", 1) != 1 or isinstance(data.get("version"), bool):
        raise FormatError(f"{source}: schedule version {data.get('version')!r} not supported")
    graph = OpGraph.from_json(data["graph"], source) if "graph" in data else None
    mode = data.get("graph_mode", False)
    if not isinstance(mode, bool):  # "false" or [0] must not switch a CUDA Graph on
        raise FormatError(f"{source}: graph_mode must be true or false, got {mode!r}")

    def names(x: Any, depth: int) -> Any:
        if depth == 0:
            if not isinstance(x, str):
                raise FormatError(f"{source}: op names must be strings, got {x!r}")
            return x
        if not isinstance(x, list):
            raise FormatError(f"{source}: expected a list, got {type(x).__name__}")
        return [names(v, depth - 1) for v in x]

    def nonempty(xs: list, what: str) -> list:
        if not xs:
            raise FormatError(f"{source}: a schedule needs at least one {what}")
        if what == "stream":
            check("streams", len(xs), f"{source}: the number of streams")
        for i, x in enumerate(xs):
            if not x:
                raise FormatError(f"{source}: {what} {i} is empty")
        return xs

    kind = data.get("kind")
    if kind == "stages":
        stages = nonempty(names(data.get("stages"), 3), "stage")
        for si, stage in enumerate(stages):
            check("streams", len(stage), f"{source}: the groups of stage {si}")
            for gi, group in enumerate(stage):
                if not group:
                    raise FormatError(f"{source}: stage {si} group {gi} is empty")
        barrier = data.get("barrier", "sync")
        if barrier not in ("sync", "events"):
            raise FormatError(f'{source}: barrier must be "sync" or "events", got {barrier!r}')
        return StageSchedule(stages, graph, barrier, mode)
    if kind == "streams":
        devs = data.get("devices")
        if devs is not None and (
            not isinstance(devs, list)
            or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in devs)
        ):
            raise FormatError(f"{source}: devices must be a list of device indices, got {devs!r}")
        streams = nonempty(names(data.get("streams"), 2), "stream")
        launch = names(data["order"], 1) if "order" in data else None
        return StreamSchedule(streams, graph, mode, devs, order=launch)
    raise FormatError(f'{source}: schedule kind must be "stages" or "streams", got {kind!r}')
