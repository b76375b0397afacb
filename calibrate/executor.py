"""Run a StreamProgram on a real GPU exactly as lowered: its streams, events and order.

:func:`plan` is the executor's lowering — the sequence of torch calls it will make for a
program — and is pure data, so it is checked against the program without a GPU.
:class:`Executor` binds each op to its PyTorch call (:mod:`calibrate.profile`) and runs
the plan on torch streams and events, eagerly or captured once into a CUDA Graph.

Every op reads tensors of its own, made once (so no run depends on another's data), but
the tensor each op returns is kept as the schedule's data flow would keep it: until the
last op reading it (through any views) has been issued, and the graph's outputs until
the run ends (:func:`releases`). So the allocator sees the schedule's live set, and
:meth:`Executor.peak_memory` measures it: ``torch.cuda.max_memory_allocated`` over one
run less what was allocated before it (the ops' own inputs and weights).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from calibrate.errors import CalibrationError, require_cuda
from calibrate.profile import build, op_call
from simgpu.graph import OpGraph
from simgpu.program import Launch, Record, StreamProgram, Synchronize, Wait


@dataclass(frozen=True)
class Step:
    """One executor action: ``run`` (an op's call on a stream), ``record``, ``wait``
    (an event on a stream) or ``sync`` (the whole device)."""

    action: str
    stream: int
    op: str | None = None
    event: str | None = None


def plan(program: StreamProgram, graph: OpGraph | None = None) -> list[Step]:
    """The executor's actions for ``program``, in issue order.

    An op's PyTorch call launches all of its kernels, so the op runs once, at its first
    Launch; its other Launches are the same call's kernels and add no action. An op with
    no device work (a view) has no action. Only device 0 is supported.
    """
    steps: list[Step] = []
    done: set[str] = set()
    for i, c in enumerate(program.commands):
        dev = getattr(c, "device", 0)
        if dev != 0:
            raise CalibrationError(f"command {i}: device {dev}: the executor runs one GPU")
        if isinstance(c, Launch):
            if c.kernel is None or c.op in done:
                continue
            if graph is not None and op_call(graph, c.op) is None:
                continue
            done.add(c.op)
            steps.append(Step("run", c.stream, op=c.op))
        elif isinstance(c, Record):
            steps.append(Step("record", c.stream, event=c.event))
        elif isinstance(c, Wait):
            steps.append(Step("wait", c.stream, event=c.event))
        elif isinstance(c, Synchronize):
            steps.append(Step("sync", -1))
        else:
            raise CalibrationError(f"command {i}: {type(c).__name__} is not supported on a GPU run")
    return steps


def releases(steps: list[Step], graph: OpGraph) -> dict[int, list[str]]:
    """step index -> the ops whose returned tensor the executor drops after that step:
    the last ``run`` step reading it, directly or through views (ops without a step,
    whose output aliases their first input). A tensor nobody reads after it (a graph
    output) is never dropped during the run."""
    runs = {s.op: i for i, s in enumerate(steps) if s.action == "run"}
    root: dict[str, str | None] = {}
    for name in graph.topo_order:
        op = graph[name]
        root[name] = name if name in runs else (root[op.inputs[0]] if op.inputs else None)
    last: dict[str, int] = {}
    for name, i in runs.items():
        for x in graph[name].inputs:
            r = root[x]
            if r is not None and r != name:
                last[r] = max(last.get(r, i), i)
    out: dict[int, list[str]] = {}
    for r, i in last.items():
        out.setdefault(i, []).append(r)
    return out


class Executor:
    """A program bound to tensors and streams on one CUDA device."""

    def __init__(self, program: StreamProgram, graph: OpGraph, device: int = 0) -> None:
        torch = self.torch = require_cuda("running a schedule on a GPU")
        self.dev = torch.device("cuda", device)
        self.program = program
        self.steps = plan(program, graph)
        self.fns: dict[str, Callable[[], Any]] = {}
        for s in self.steps:
            if s.op is not None:
                call = op_call(graph, s.op)
                assert call is not None  # plan() skipped ops without a call
                self.fns[s.op] = build(call, torch, self.dev)
        ids = sorted({s.stream for s in self.steps if s.stream >= 0})
        self.streams = {i: torch.cuda.Stream(self.dev) for i in ids}
        self.drops = releases(self.steps, graph)
        self._graph: Any = None
        self.capture_peak_bytes: int | None = None

    def issue(self) -> None:
        """Issue every step once (no synchronisation at the end). Each op's returned
        tensor lives until its last reader is issued (:func:`releases`); the graph's
        outputs until this returns."""
        torch = self.torch
        events: dict[str, Any] = {}
        held: dict[str, Any] = {}
        for i, s in enumerate(self.steps):
            if s.action == "sync":
                torch.cuda.synchronize(self.dev)
                continue
            st = self.streams[s.stream]
            if s.action == "run":
                with torch.cuda.stream(st):
                    held[s.op] = self.fns[s.op]()  # type: ignore[index]
                for op in self.drops.get(i, ()):
                    held.pop(op, None)
            elif s.action == "record":
                ev = events[s.event] = torch.cuda.Event()  # type: ignore[index]
                ev.record(st)
            else:
                st.wait_event(events[s.event])  # type: ignore[index]

    def _time(self, run: Callable[[], object], warmup: int, repeats: int) -> list[float]:
        """Wall-clock microseconds of ``run`` from an idle device to an idle device, for
        each of ``repeats`` calls after ``warmup`` untimed ones."""
        out = []
        for i in range(warmup + repeats):
            self.torch.cuda.synchronize(self.dev)
            t0 = time.perf_counter()
            run()
            self.torch.cuda.synchronize(self.dev)
            t1 = time.perf_counter()
            if i >= warmup:
                out.append((t1 - t0) * 1e6)
        return out

    def time_eager(self, warmup: int = 5, repeats: int = 30) -> list[float]:
        """Wall-clock microseconds from the first call to the device idle, per repeat
        (the simulator's makespan runs from the first API call to the last end)."""
        torch = self.torch
        for st in self.streams.values():
            st.wait_stream(torch.cuda.current_stream(self.dev))
        return self._time(self.issue, warmup, repeats)

    def capture(self) -> Any:
        """The program captured once into a CUDA Graph (kept: later calls return it).

        The capture is where a graph allocates: its tensors come from the graph's
        private pool and a replay allocates nothing. So ``capture_peak_bytes`` is
        ``torch.cuda.max_memory_allocated`` during the capture less what was allocated
        before it: the graph's live set, as one eager run measures it."""
        if self._graph is not None:
            return self._graph
        torch = self.torch
        if any(s.action == "sync" for s in self.steps):
            raise CalibrationError("a program with synchronizes cannot be captured in a CUDA Graph")
        side = torch.cuda.Stream(self.dev)
        side.wait_stream(torch.cuda.current_stream(self.dev))
        with torch.cuda.stream(side):
            self.issue()  # warm caches (cuDNN plans) before capture
        torch.cuda.synchronize(self.dev)
        before = int(torch.cuda.memory_allocated(self.dev))
        torch.cuda.reset_peak_memory_stats(self.dev)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=side):
            for st in self.streams.values():
                st.wait_stream(side)
            self.issue()
            for st in self.streams.values():
                side.wait_stream(st)
        torch.cuda.synchronize(self.dev)
        self.capture_peak_bytes = max(0, int(torch.cuda.max_memory_allocated(self.dev)) - before)
        self._graph = graph
        return graph

    def time_graph(self, warmup: int = 5, repeats: int = 30) -> list[float]:
        """The same, captured once into a CUDA Graph and replayed (Nimble's mode)."""
        return self._time(self.capture().replay, warmup, repeats)

    def peak_memory(self) -> int:
        """Peak bytes one run allocates beyond what the device held before it (the ops'
        own inputs and weights, made once): the schedule's live outputs and the ops'
        workspaces at their most. Eager: ``max_memory_allocated`` over one run (after
        a warm-up run) less ``memory_allocated`` before it; CUDA Graph: the same over
        the capture (:meth:`capture`)."""
        torch = self.torch
        if self.program.graph_mode:
            self.capture()
            assert self.capture_peak_bytes is not None
            return self.capture_peak_bytes
        for st in self.streams.values():
            st.wait_stream(torch.cuda.current_stream(self.dev))
        self.issue()  # warm: library workspaces allocated once stay out of the figure
        torch.cuda.synchronize(self.dev)
        before = int(torch.cuda.memory_allocated(self.dev))
        torch.cuda.reset_peak_memory_stats(self.dev)
        self.issue()
        torch.cuda.synchronize(self.dev)
        return max(0, int(torch.cuda.max_memory_allocated(self.dev)) - before)


def measure(
    program: StreamProgram, graph: OpGraph, device: int = 0, warmup: int = 5, repeats: int = 30
) -> dict[str, float]:
    """Median latency (us) of ``program`` on the GPU, in the mode it was lowered for,
    and its peak memory beyond its inputs and weights (:meth:`Executor.peak_memory`)."""
    ex = Executor(program, graph, device)
    samples = (
        ex.time_graph(warmup, repeats) if program.graph_mode else ex.time_eager(warmup, repeats)
    )
    return {"median_us": float(statistics.median(samples)), "samples": len(samples),
            "peak_memory_bytes": ex.peak_memory()}  # fmt: skip
