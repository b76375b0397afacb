"""The unified multi-tenant schedule: one representation for every policy compared.

Yu et al. (ICCAD 2021) schedule several DNNs on one GPU with one representation that
covers three decisions; a :class:`TenantPlan` holds exactly those:

* **stream assignment / model concurrency** — each tenant's ops are split over one or
  more *lanes* (ordered op lists), and every lane is mapped onto a global stream id.
  Tenants on disjoint streams run concurrently; tenants sharing a stream serialise on
  it; a tenant with several lanes runs its own branches concurrently.
* **operator interleaving** — in ``rounds`` mode, the requests that are waiting when a
  round starts are issued together by one issue token, op by op in increasing *key*
  order (each tenant's ops keep their own dependency order): keys equal to the layer
  depth give breadth-first (layer-wise) interleaving, keys offset per tenant give
  depth-first (model after model).
* **synchronisation points** — in ``rounds`` mode, ``syncs`` are key thresholds: the
  host synchronises before issuing the first op whose key reaches one, so everything
  issued before it has finished; a round always ends with a barrier.

``mode`` says how requests reach the GPU: ``exclusive`` (one request at a time, oldest
first — a plain runtime serving one request after another), ``independent`` (each
tenant's host thread issues its requests as they come, concurrently with the others)
or ``rounds`` (above).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from simgpu.errors import ScheduleError
from simgpu.graph import OpGraph
from simgpu.hardware import GPUSpec
from simgpu.kernels import Kernel, KernelCache
from simgpu.program import Launch, Record, Wait, lower
from simgpu.runtimes import Runtime
from simgpu.schedule import StreamSchedule
from simgpu.sim.device import LAUNCH, NOOP, RECORD, WAIT

MODES = ("exclusive", "independent", "rounds")


@dataclass
class TenantPlan:
    """A multi-tenant schedule (see the module docstring). Per tenant, in workload order:
    ``lanes`` its ops on each lane, ``stream_ids`` the global stream of each lane and,
    for rounds, ``keys`` (op -> interleave key; None means each op's layer depth)."""

    name: str
    mode: str
    lanes: list[list[list[str]]]
    stream_ids: list[list[int]]
    keys: list[dict[str, float]] | None = None
    syncs: tuple[float, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def streams(self) -> list[int]:
        """Distinct global streams the plan uses, sorted."""
        return sorted({s for ids in self.stream_ids for s in ids})


def validate_plan(plan: TenantPlan, graphs: list[OpGraph]) -> None:
    """Raise ScheduleError naming the tenant and what is wrong with its part of the plan."""
    if plan.mode not in MODES:
        raise ScheduleError(f"plan '{plan.name}': mode {plan.mode!r} unknown ({', '.join(MODES)})")
    n = len(graphs)
    for what, v in (("lanes", plan.lanes), ("stream_ids", plan.stream_ids)):
        if len(v) != n:
            raise ScheduleError(
                f"plan '{plan.name}': {what} for {len(v)} tenants, workload has {n}"
            )
    if plan.keys is not None and len(plan.keys) != n:
        raise ScheduleError(
            f"plan '{plan.name}': keys for {len(plan.keys)} tenants, workload has {n}"
        )
    for t, (lanes, ids, g) in enumerate(zip(plan.lanes, plan.stream_ids, graphs, strict=True)):
        if len(ids) != len(lanes):
            raise ScheduleError(
                f"plan '{plan.name}', tenant {t}: {len(lanes)} lanes but {len(ids)} stream ids"
            )
        if any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in ids):
            raise ScheduleError(f"plan '{plan.name}', tenant {t}: stream ids must be integers >= 0")
        if len(set(ids)) != len(ids):
            raise ScheduleError(
                f"plan '{plan.name}', tenant {t}: two lanes on one stream {sorted(ids)}"
            )
        if plan.keys is not None:
            keys = plan.keys[t]
            missing = [op for op in g.ops if op not in keys]
            if missing:
                raise ScheduleError(
                    f"plan '{plan.name}', tenant {t}: no interleave key for op '{missing[0]}'"
                )
            bad = [op for op in g.ops if not math.isfinite(keys[op])]
            if bad:
                raise ScheduleError(f"plan '{plan.name}', tenant {t}: key of '{bad[0]}' not finite")
    if any(not math.isfinite(s) for s in plan.syncs):
        raise ScheduleError(f"plan '{plan.name}': sync points must be finite")


def depth_levels(graph: OpGraph) -> dict[str, int]:
    """Layer depth of each op: the longest path (in ops) from any source."""
    level: dict[str, int] = {}
    for op in graph.topo_order:
        level[op] = max((level[u] + 1 for u in graph.predecessors(op)), default=0)
    return level


# --- one tenant's request, lowered once --------------------------------------------------

# a command: (kind, lane, kernel or None, op, event name or None, host us or None: the
# GPU's flat cost of that kind of call)
Cmd = tuple[int, int, Kernel | None, str, str | None, float | None]


@dataclass
class RequestProgram:
    """A tenant's request as host commands on its lanes (lane-local stream and event
    names), cut into per-op chunks — [waits] launches [record] — for interleaving.
    ``chunks`` are (key, first command, end) in issue order, keys made non-decreasing."""

    tenant: int
    cmds: list[Cmd]
    chunks: list[tuple[float, int, int]]
    lanes: int

    @property
    def kernels(self) -> int:
        return sum(1 for c in self.cmds if c[0] == LAUNCH)


def lower_tenant(
    t: int,
    graph: OpGraph,
    lanes: list[list[str]],
    gpu: GPUSpec,
    cache: KernelCache | None = None,
    runtime: Runtime | None = None,
) -> tuple[list[Cmd], list[str]]:
    """One tenant's lanes as commands (validated against its graph), and the op each
    command belongs to: lowering puts every op's waits, launches and record together.
    ``runtime`` prices the host calls (:mod:`simgpu.runtimes`); requests are issued
    call by call, so a runtime that captures a CUDA Graph does not apply."""
    if runtime is not None and runtime.graph_mode:
        raise ScheduleError(
            f"multi-tenant requests are issued call by call: runtime '{runtime.name}' "
            "(one CUDA Graph) does not apply; use pytorch-eager, cudnn or tensorrt"
        )
    sched = StreamSchedule([list(lane) for lane in lanes])
    prog = lower(sched, graph, gpu, name=f"tenant{t}", cache=cache, runtime=runtime)
    cmds: list[Cmd] = []
    owner: list[str] = []
    nxt: str | None = None
    for c in reversed(prog.commands):
        if isinstance(c, Launch):
            kind = LAUNCH if c.kernel is not None else NOOP
            cmds.append((kind, c.stream, c.kernel, c.op, None, c.host_us))
            nxt = c.op
            owner.append(c.op)
        elif isinstance(c, Record):
            op = c.event.removeprefix("done:")
            cmds.append((RECORD, c.stream, None, op, c.event, c.host_us))
            owner.append(op)
        elif isinstance(c, Wait):
            assert nxt is not None  # lowering puts every wait before the launch it guards
            cmds.append((WAIT, c.stream, None, nxt, c.event, c.host_us))
            owner.append(nxt)
        else:  # pragma: no cover - stream schedules lower without synchronize
            raise ScheduleError(f"tenant {t}: unexpected command {c!r}")
    cmds.reverse()
    owner.reverse()
    return cmds, owner


def chunk(owner: list[str], key: dict[str, float]) -> list[tuple[float, int, int]]:
    """Per-op chunks of a command list with their interleave keys, made non-decreasing
    (a running maximum) so merging tenants by key never reorders a tenant's own ops."""
    chunks: list[tuple[float, int, int]] = []
    start, running = 0, -math.inf
    for i in range(1, len(owner) + 1):
        if i == len(owner) or owner[i] != owner[i - 1]:
            running = max(running, float(key[owner[start]]))
            chunks.append((running, start, i))
            start = i
    return chunks


def compile_tenant(
    t: int,
    graph: OpGraph,
    lanes: list[list[str]],
    keys: dict[str, float] | None,
    gpu: GPUSpec,
    cache: KernelCache | None = None,
    runtime: Runtime | None = None,
) -> RequestProgram:
    """Lower one tenant's lanes to a request program; keys default to layer depth."""
    cmds, owner = lower_tenant(t, graph, lanes, gpu, cache, runtime)
    key = keys if keys is not None else {k: float(v) for k, v in depth_levels(graph).items()}
    return RequestProgram(t, cmds, chunk(owner, key), len(lanes))


def compile_plan(
    plan: TenantPlan,
    graphs: list[OpGraph],
    gpu: GPUSpec,
    cache: KernelCache | None = None,
    runtime: Runtime | None = None,
) -> list[RequestProgram]:
    validate_plan(plan, graphs)
    cache = cache if cache is not None and cache.gpu is gpu else KernelCache(gpu)
    keys = plan.keys if plan.keys is not None else [None] * len(graphs)
    return [
        compile_tenant(t, g, plan.lanes[t], keys[t], gpu, cache, runtime)
        for t, g in enumerate(graphs)
    ]
