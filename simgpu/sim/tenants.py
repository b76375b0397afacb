"""Multi-tenant simulation: several models' requests sharing one simulated GPU.

It reuses the single-program engine's environment and :class:`~simgpu.sim.device.Device`
unchanged (hardware queues, block dispatch, DRAM sharing are the same GPU); only the
host side differs. Each tenant has its own host thread with its own CPU clock: a
request is the tenant model's program under the plan (see
:mod:`simgpu.multitenant.plan`), issued command by command with the same API costs as
:class:`~simgpu.sim.engine.Simulation`, streams and events renamed per request so
requests never alias. In ``exclusive`` and ``rounds`` modes the threads coordinate
through one lock / issue token; one coordinator process plays that token, charging each
host call to the thread whose request it issues.

Completion is exact: the device's kernel and command logs are wrapped so each finished
command is charged to its request, and a request completes when its last command does.
Every arrival therefore ends exactly once — completed, or dropped by admission
(``max_queue``) — and anything left pending is a deadlock, raised as such.

Memory admission (optional, :class:`MemoryBudget`): the engine knows no tensors, only
plain numbers — the bytes the in-flight requests may hold together and what one
request of each tenant holds. A request takes its bytes when its first command is
issued and gives them back when it completes; one that does not fit stays at the head
of its tenant's queue (still counted by ``max_queue``) until enough requests finish.
Independent threads are granted memory first come, first served (by arrival, then
tenant): a large request is never overtaken by smaller ones, so nothing starves.
A round admits the waiting heads oldest first, skipping any that does not fit beside
those already admitted; the oldest always fits (the round starts with nothing in
flight), so it cannot starve either. Exclusive mode has one request in flight.
"""

from __future__ import annotations

import gc
import heapq
from collections import deque
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import simpy

from simgpu.errors import DeadlockError, SpecError
from simgpu.hardware import GPUSpec, Machine
from simgpu.kernels import KernelCache
from simgpu.multitenant.plan import RequestProgram, TenantPlan, compile_plan
from simgpu.sim.device import LAUNCH, NOOP, RECORD, WAIT, Device, Entry, EventSlot
from simgpu.sim.engine import Simulation
from simgpu.tenants import Workload
from simgpu.timeline import HostRecord, Timeline

new_record = tuple.__new__


def op_label(tenant: str, rid: int, op: str) -> str:
    """How a request's op appears in the timeline: ``tenant#request/op``."""
    return f"{tenant}#{rid}/{op}"


def parse_label(label: str) -> tuple[str, int, str]:
    """Inverse of :func:`op_label`: (tenant, request id, op)."""
    head, _, op = label.partition("/")
    tenant, _, rid = head.rpartition("#")
    return tenant, int(rid), op


@dataclass
class RequestRecord:
    """One arrival: when it came, when its first command was issued, when it finished
    (GPU side), or that admission dropped it."""

    tenant: int
    rid: int
    arrival_us: float
    issue_us: float | None = None
    done_us: float | None = None
    dropped: bool = False
    memory_wait: bool = False  # it waited at least once for memory to be admitted

    @property
    def latency_us(self) -> float | None:
        return None if self.done_us is None else self.done_us - self.arrival_us


@dataclass
class MultiTenantRun:
    """A finished multi-tenant run: every request, the GPU timeline, which tenant's
    host thread made each host call (``host_tenants`` parallels ``timeline.host``) and
    the memory admission it ran under (None: none)."""

    plan: TenantPlan
    workload: Workload
    gpu: GPUSpec
    requests: list[RequestRecord]
    timeline: Timeline
    host_tenants: list[int]
    kernels_per_request: list[int]
    memory: MemoryBudget | None = None

    @property
    def end_us(self) -> float:
        """When the last request finished (or the horizon, if later)."""
        last = max((r.done_us for r in self.requests if r.done_us is not None), default=0.0)
        h = self.workload.horizon_us
        return max(last, h) if h is not None else last


@dataclass(frozen=True)
class MemoryBudget:
    """Memory admission as plain numbers (see the module docstring): ``capacity`` bytes
    the requests in flight may hold together, ``request`` the bytes one request of each
    tenant holds from its first issued command to its completion."""

    capacity: int
    request: tuple[int, ...]


class _Req:
    __slots__ = ("done", "event", "held", "issued_all", "last", "rec", "remaining")

    def __init__(self, rec: RequestRecord, event: simpy.Event) -> None:
        self.rec = rec
        self.event = event
        self.remaining = 0  # commands issued and not complete
        self.last = 0.0  # latest completion time among them
        self.issued_all = False  # the host has issued every command of the request
        self.done = False
        self.held = 0  # bytes of the memory budget it holds


class _ReqEntry(Entry):
    """A device queue entry that knows its request (the device reads only Entry slots)."""

    __slots__ = ("req",)


class TenantSimulation:
    """One run of a workload under a plan. Use :func:`simulate_tenants`."""

    def __init__(
        self,
        workload: Workload,
        plan: TenantPlan,
        machine: Machine | GPUSpec,
        cache: KernelCache | None = None,
        programs: list[RequestProgram] | None = None,
        memory: MemoryBudget | None = None,
    ) -> None:
        if isinstance(machine, GPUSpec):
            machine = Machine.single(machine)
        if len(machine.devices) != 1:
            raise SpecError(
                f"multi-tenant runs share one GPU; machine '{machine.name}' has "
                f"{len(machine.devices)}"
            )
        self.workload = workload
        self.plan = plan
        self.gpu = gpu = machine.gpu
        graphs = [t.graph for t in workload.tenants]
        self.programs = programs if programs is not None else compile_plan(plan, graphs, gpu, cache)
        self.sim = Simulation(machine)
        self.env = self.sim.env
        self.dev: Device = self.sim.devices[0]
        self.dev.on_done = self._on_done
        n = len(workload.tenants)
        self.names = [t.name for t in workload.tenants]
        self.queues: list[deque[_Req]] = [deque() for _ in range(n)]
        self.records: list[RequestRecord] = []
        self.next_rid = [0] * n
        self.more = [True] * n  # may tenant t still get arrivals?
        self.host_t = [0.0] * n  # each tenant host thread's CPU clock
        self.host_tenants: list[int] = []
        self.waiters: dict[int, simpy.Event] = {}  # tenant (or -1: coordinator) -> wake-up
        self.events: dict[str, EventSlot] = {}
        self.outstanding = 0  # commands issued and not complete, all requests
        self.last_done = 0.0
        self.drain: simpy.Event | None = None
        g = gpu
        self.cost = {
            LAUNCH: (g.launch_api_us + g.framework_dispatch_us, "launch"),
            NOOP: (g.framework_dispatch_us, "dispatch"),
            RECORD: (g.event_record_api_us, "event_record"),
            WAIT: (g.event_wait_api_us, "stream_wait_event"),
        }
        self.sids = [list(ids) for ids in plan.stream_ids]
        self.memory = memory
        if memory is not None:
            if len(memory.request) != n:
                raise SpecError(
                    f"memory budget for {len(memory.request)} tenants, workload has {n}"
                )
            for t, need in enumerate(memory.request):
                if not 0 <= need <= memory.capacity:
                    raise SpecError(
                        f"tenant '{self.names[t]}': a request needs {need} bytes, the memory "
                        f"budget holds {memory.capacity}"
                    )
        self.mem_free = memory.capacity if memory is not None else 0
        # requests waiting for memory: (arrival, tenant, rid, request, wake-up), oldest first
        self.mem_waiting: list[tuple[float, int, int, _Req, simpy.Event]] = []

    # -- requests ----------------------------------------------------------------------

    def _arrive(self, t: int, now: float) -> None:
        """A request of tenant ``t`` arrives now: queue it, or drop it (admission)."""
        rid = self.next_rid[t]
        self.next_rid[t] = rid + 1
        rec = RequestRecord(t, rid, now)
        self.records.append(rec)
        cap = self.workload.tenants[t].max_queue
        if cap is not None and len(self.queues[t]) >= cap:
            # a closed-loop tenant never finds a request of its own waiting (max_queue >= 1)
            rec.dropped = True
            return
        self.queues[t].append(_Req(rec, self.env.event()))
        self._notify(t)
        self._notify(-1)

    def _closed_next(self, t: int, now: float) -> None:
        wl = self.workload
        if (wl.requests is not None and self.next_rid[t] >= wl.requests) or (
            wl.horizon_us is not None and now >= wl.horizon_us
        ):
            self.more[t] = False
            self._notify(t)
            self._notify(-1)
            return
        self._arrive(t, now)

    def _open_arrivals(self, t: int, times: list[float]) -> Generator[Any, Any, None]:
        env = self.env
        for at in times:
            if at > env.now:
                yield env.timeout(at - env.now)
            self._arrive(t, env.now)
        self.more[t] = False
        self._notify(t)
        self._notify(-1)

    def _notify(self, key: int) -> None:
        ev = self.waiters.pop(key, None)
        if ev is not None:
            ev.succeed()

    def _wait_for(self, key: int) -> simpy.Event:
        ev = self.waiters[key] = self.env.event()
        return ev

    def _on_done(self, entry: Any, t: float) -> None:
        req: _Req = entry.req
        req.remaining -= 1
        if t > req.last:
            req.last = t
        if t > self.last_done:
            self.last_done = t
        self.outstanding -= 1
        if req.remaining == 0 and req.issued_all:
            self._finish(req)
        if self.outstanding == 0 and self.drain is not None:
            ev, self.drain = self.drain, None
            self._at(self.last_done, ev)

    def _at(self, t: float, ev: simpy.Event) -> None:
        if t > self.env._now:
            self.env.at(t, lambda e: e._value.succeed(), ev)
        else:
            ev.succeed()

    def _finish(self, req: _Req) -> None:
        req.done = True
        req.rec.done_us = req.last

        def complete(_: Any = None) -> None:
            if req.held:
                self._release(req)
            req.event.succeed()
            t = req.rec.tenant
            if self.workload.tenants[t].arrival.kind == "closed":
                self._closed_next(t, self.env.now)

        if req.last > self.env._now:
            self.env.at(req.last, complete, None)
        else:
            complete()

    # -- memory admission --------------------------------------------------------------

    def _need(self, req: _Req) -> int:
        assert self.memory is not None
        return self.memory.request[req.rec.tenant]

    def _take(self, req: _Req) -> bool:
        """Give ``req`` its bytes now if they fit and nobody older waits for memory."""
        need = self._need(req)
        if self.mem_waiting or need > self.mem_free:
            return False
        self.mem_free -= need
        req.held = need
        return True

    def _wait_memory(self, req: _Req) -> simpy.Event:
        """Queue ``req`` for memory; the event fires once its bytes are taken for it."""
        req.rec.memory_wait = True
        ev = self.env.event()
        rec = req.rec
        heapq.heappush(self.mem_waiting, (rec.arrival_us, rec.tenant, rec.rid, req, ev))
        return ev

    def _release(self, req: _Req) -> None:
        """``req`` completed: its bytes return; grant waiters, oldest first, while they fit."""
        self.mem_free += req.held
        req.held = 0
        w = self.mem_waiting
        while w and self._need(w[0][3]) <= self.mem_free:
            _, _, _, waiter, ev = heapq.heappop(w)
            waiter.held = self._need(waiter)
            self.mem_free -= waiter.held
            ev.succeed()

    def _drained(self) -> simpy.Event:
        """An event for 'every command issued so far has finished'."""
        ev = self.env.event()
        if self.outstanding == 0:
            self._at(self.last_done, ev)
        else:
            self.drain = ev
        return ev

    # -- issuing -----------------------------------------------------------------------

    def _issue(self, req: _Req, start: int, end: int, t: float) -> float:
        """Issue commands [start, end) of ``req``'s program from host time ``t``; return
        the host time after the last API call. Pure arithmetic, no SimPy event."""
        ten = req.rec.tenant
        prog = self.programs[ten]
        sids = self.sids[ten]
        name = self.names[ten]
        rid = req.rec.rid
        dev = self.dev
        log = self.sim.host_log
        hts = self.host_tenants
        latency = self.gpu.launch_latency_us
        events = self.events
        if req.rec.issue_us is None:
            req.rec.issue_us = t
        for kind, lane, kernel, op, event, host in prog.cmds[start:end]:
            cost, api = self.cost[kind]
            if host is not None:  # priced by the runtime that lowered the request
                cost = host
            sid = sids[lane]
            stream = dev.streams.get(sid) or dev.stream(sid)
            label = op_label(name, rid, op)
            slot = None
            if event is not None:
                ename = f"{name}#{rid}:{event}"
                slot = events.get(ename)
                if kind == RECORD:
                    if slot is None or slot.stream is not None:
                        slot = events[ename] = EventSlot(ename, sid)
                    else:
                        slot.stream = sid
                elif slot is None:
                    slot = events[ename] = EventSlot(ename, None)
            end_t = t + cost
            log.append(new_record(HostRecord, (api, 0, t, end_t, label)))
            hts.append(ten)
            t = end_t
            entry = _ReqEntry(kind, stream, t + latency, t, kernel, label, slot)
            entry.req = req
            req.remaining += 1
            self.outstanding += 1
            dev.enqueue(entry)
        return t

    def _issue_paced(self, req: _Req, t: float) -> Generator[Any, Any, float]:
        """Issue a whole request, each command entering its queue at its issue time:
        threads issuing side by side must not append to a shared hardware queue out of
        time order, as a thread running ahead of the clock would."""
        env = self.env
        cmds = self.programs[req.rec.tenant].cmds
        cost = self.cost
        for i in range(len(cmds)):
            c = cmds[i]
            end = t + (c[5] if c[5] is not None else cost[c[0]][0])
            if end > env._now:
                yield env.timeout(end - env._now)
            t = self._issue(req, i, i + 1, t)
        return t

    def _sync_record(self, ten: int, start: float, end: float, what: str) -> None:
        self.sim.host_log.append(new_record(HostRecord, ("synchronize", 0, start, end, what)))
        self.host_tenants.append(ten)

    # -- host threads ------------------------------------------------------------------

    def _thread(self, t: int) -> Generator[Any, Any, None]:
        """Independent mode: tenant ``t``'s host thread serves its own queue in order."""
        env = self.env
        q = self.queues[t]
        sync = self.gpu.sync_api_us
        while True:
            if not q:
                if not self.more[t]:
                    return
                yield self._wait_for(t)
                continue
            if self.memory is not None and not self._take(q[0]):
                yield self._wait_memory(q[0])  # it stays queued: max_queue still counts it
            req = q.popleft()
            start = max(env.now, self.host_t[t])
            if start > env.now:
                yield env.timeout(start - env.now)
            yield from self._issue_paced(req, start)
            req.issued_all = True
            if req.remaining == 0:
                self._finish(req)
            yield req.event
            self.host_t[t] = env.now + sync
            self._sync_record(t, env.now, env.now + sync, f"{self.names[t]}#{req.rec.rid}")

    def _coordinator(self) -> Generator[Any, Any, None]:
        """Exclusive and rounds modes: the threads' shared lock / issue token."""
        env = self.env
        rounds = self.plan.mode == "rounds"
        sync = self.gpu.sync_api_us
        syncs = sorted(self.plan.syncs)
        while True:
            ready = [t for t, q in enumerate(self.queues) if q]
            if not ready:
                if not any(self.more):
                    return
                yield self._wait_for(-1)
                continue
            if rounds and self.memory is not None:
                # nothing is in flight between rounds: the oldest head always fits
                members = []
                for t in sorted(ready, key=lambda t: (self.queues[t][0].rec.arrival_us, t)):
                    head = self.queues[t][0]
                    if self._take(head):
                        members.append(self.queues[t].popleft())
                    else:
                        head.rec.memory_wait = True
                members.sort(key=lambda m: m.rec.tenant)
            elif rounds:
                members = [self.queues[t].popleft() for t in ready]
            else:  # exclusive: the oldest waiting request, ties to the lower tenant
                first = min(ready, key=lambda t: (self.queues[t][0].rec.arrival_us, t))
                members = [self.queues[first].popleft()]
                if self.memory is not None and not self._take(members[0]):
                    raise SpecError(  # alone in flight: it fits unless the budget is wrong
                        f"tenant '{self.names[first]}': a request does not fit the memory budget"
                    )
            now = env.now
            tok = now
            heap = []
            for m in members:
                chunks = self.programs[m.rec.tenant].chunks
                heap.append((chunks[0][0], m.rec.tenant, 0, m))
            heapq.heapify(heap)
            si = 0
            while heap:
                key, ten, ci, m = heapq.heappop(heap)
                while si < len(syncs) and key >= syncs[si]:
                    if self.outstanding:  # a sync point: wait until all issued work is done
                        if tok > env.now:
                            yield env.timeout(tok - env.now)
                        begin = env.now
                        yield self._drained()
                        tok = env.now + sync
                        self._sync_record(ten, begin, tok, "sync point")
                    si += 1
                _, a, b = self.programs[ten].chunks[ci]
                tok = max(tok, self.host_t[ten])
                tok = self._issue(m, a, b, tok)
                self.host_t[ten] = tok
                chunks = self.programs[ten].chunks
                if ci + 1 < len(chunks):
                    heapq.heappush(heap, (chunks[ci + 1][0], ten, ci + 1, m))
            for m in members:
                m.issued_all = True
                if m.remaining == 0 and not m.done:
                    self._finish(m)
            if tok > env.now:
                yield env.timeout(tok - env.now)
            for m in members:
                yield m.event
            for m in members:
                t = m.rec.tenant
                self.host_t[t] = env.now + sync
                self._sync_record(t, env.now, env.now + sync, f"{self.names[t]}#{m.rec.rid}")
            # the lock / token passes on once the holders return from their synchronize
            if sync > 0:
                yield env.timeout(sync)

    # -- run ---------------------------------------------------------------------------

    def run(self) -> MultiTenantRun:
        env = self.env
        for t, times in enumerate(self.workload.open_arrivals_us()):
            if times is None:
                self._arrive(t, 0.0)
            else:
                env.process(self._open_arrivals(t, times))
        if self.plan.mode == "independent":
            procs = [env.process(self._thread(t)) for t in range(len(self.queues))]
        else:
            procs = [env.process(self._coordinator())]
        env.run()
        pending = [r for r in self.records if not r.dropped and r.done_us is None]
        if pending or not all(p.triggered for p in procs):
            raise self._deadlock(pending)
        tl = self.sim.timeline()
        records = sorted(self.records, key=lambda r: (r.arrival_us, r.tenant, r.rid))
        return MultiTenantRun(
            self.plan,
            self.workload,
            self.gpu,
            records,
            tl,
            self.host_tenants,
            [p.kernels for p in self.programs],
            self.memory,
        )

    def _deadlock(self, pending: list[RequestRecord]) -> DeadlockError:
        base = self.sim.deadlock_error()
        who = ", ".join(f"{self.names[r.tenant]}#{r.rid}" for r in pending[:5])
        return DeadlockError(f"{base} (requests never finished: {who or 'none'})")


def simulate_tenants(
    workload: Workload,
    plan: TenantPlan,
    machine: Machine | GPUSpec,
    cache: KernelCache | None = None,
    programs: list[RequestProgram] | None = None,
    memory: MemoryBudget | None = None,
) -> MultiTenantRun:
    """Run ``workload`` under ``plan`` on one GPU, admitting requests within ``memory``
    (None: no memory admission). Raises DeadlockError if a request can never finish. The cyclic GC is paused for the run and the run's internals are freed
    before it resumes, as :func:`simulate` does."""
    paused = gc.isenabled()
    gc.disable()
    try:
        ts = TenantSimulation(workload, plan, machine, cache, programs, memory)
        result = ts.run()
        ts.sim.dispose()
        ts.__dict__.clear()
        return result
    finally:
        if paused:
            gc.enable()
