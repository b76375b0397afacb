"""The simulation: a host thread issuing a StreamProgram to one or more Devices.

The host runs ahead of the GPU: between synchronisations its issue times are pure
arithmetic (each API call costs CPU time), so issuing costs no SimPy event; the host
process only yields to wait for a device to go idle. Everything on the GPU side lives
in :mod:`simgpu.sim.device`.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from heapq import heappush
from operator import itemgetter
from typing import Any

import simpy
from simpy.core import NORMAL

from simgpu.errors import DeadlockError, ProgramError
from simgpu.hardware import GPUSpec, Machine
from simgpu.program import Copy, Launch, Record, StreamProgram, Synchronize, Wait
from simgpu.sim.device import (
    COPY,
    LAUNCH,
    NOOP,
    RECORD,
    WAIT,
    Device,
    Entry,
    EventSlot,
    new_record,
)
from simgpu.sim.links import Fabric
from simgpu.timeline import CommandRecord, CopyRecord, HostRecord, KernelRecord, Timeline


class _Timer:
    """The cheapest object SimPy's loop accepts as an event: callbacks and an ok flag."""

    __slots__ = ("_ok", "_value", "callbacks")

    def __init__(self, fn: Callable[[Any], None], arg: Any) -> None:
        self.callbacks = [fn]
        self._ok = True
        self._value = arg


class _Environment(simpy.Environment):
    """SimPy's environment plus scheduling at an absolute time.

    ``schedule`` takes a delay, and ``now + (t - now)`` can round one ulp short of
    ``t`` — a batch ending then would miss the instant its neighbours end at. Pushing
    the absolute time onto the queue (the same tuple ``schedule`` pushes) lands exactly.
    """

    def at(self, t: float, fn: Callable[[Any], None], arg: Any) -> None:
        """Run ``fn(event)`` at time ``t``, the event's ``_value`` being ``arg``."""
        heappush(self._queue, (t, NORMAL, next(self._eid), _Timer(fn, arg)))

    @property
    def scheduled(self) -> int:
        """Events scheduled so far, of every kind (each took one id from the counter)."""
        return int(repr(self._eid)[6:-1])  # 'count(N)': N ids taken


class Simulation:
    """One run of one program on one machine. Use :func:`simulate`."""

    def __init__(self, machine: Machine, record_batches: bool = False) -> None:
        self.env = _Environment()
        self.machine = machine
        self.devices = [Device(self, i, g, record_batches) for i, g in enumerate(machine.devices)]
        self.host_log: list[HostRecord] = []
        self.host_blocked: int | None = None  # command index of a synchronize in progress
        self.threads_blocked: dict[int, str] = {}  # per-device host threads: why one waits
        self.fabric: Fabric | None = None  # copy engines and links, made by the first copy

    def copy_fabric(self) -> Fabric:
        if self.fabric is None:
            self.fabric = Fabric(self)
        return self.fabric

    def _check_copy(self, c: Copy, i: int) -> None:
        self.copy_fabric().route(c.src, c.dst, f"command {i}")
        if c.bytes < 0:
            raise ProgramError(f"command {i}: copy of {c.bytes} bytes")

    @staticmethod
    def _bind_record(events: dict[str, EventSlot], c: Record, d: int) -> EventSlot:
        """A record starts a new recording of its event, unless waits already named the
        event before any record: those bind to this one."""
        slot = events.get(c.event)
        if slot is None or slot.stream is not None:
            slot = events[c.event] = EventSlot(c.event, c.stream, d)
        else:
            slot.stream = c.stream
            slot.device = d
        return slot

    @staticmethod
    def _bind_wait(events: dict[str, EventSlot], c: Wait, d: int) -> EventSlot:
        """A wait binds to the latest record issued before it, or else to the next one;
        a record that never comes leaves the stream stuck (reported as a deadlock)."""
        slot = events.get(c.event)
        if slot is None:
            slot = events[c.event] = EventSlot(c.event, None, d)
        return slot

    # -- host thread ---------------------------------------------------------------------

    def host(self, program: StreamProgram):
        """One host thread issuing every command: a single GPU, or a machine whose
        ``shared_host`` makes one thread drive all of its GPUs."""
        env = self.env
        log = self.host_log
        devices = self.devices
        t = env.now
        events: dict[str, EventSlot] = {}  # machine-wide, as CUDA event handles are
        graph = program.graph_mode
        avail_base = 0.0
        if graph:
            g0 = devices[0].gpu
            log.append(
                new_record(HostRecord, ("graph_launch", 0, t, t + g0.graph_launch_api_us, None))
            )
            t += g0.graph_launch_api_us
            avail_base = t + g0.launch_latency_us
            for d in devices:
                d.gap = d.gpu.graph_node_us
        n_dev = len(devices)
        # per device: (launch, no-op dispatch, record, wait) host costs and launch latency,
        # unpacked again only when a command names another device than the last one
        costs = [_host_costs(d.gpu) for d in devices]
        cur = -1
        for i, c in enumerate(program.commands):
            ctype = type(c)
            d = c.device
            if d != cur:
                if not 0 <= d < n_dev:
                    raise ProgramError(
                        f"command {i}: device {d} does not exist (machine has {n_dev})"
                    )
                cur = d
                dev = devices[d]
                streams = dev.streams
                c_launch, c_noop, c_record, c_wait, latency = costs[d]
            if ctype is Launch:
                k = c.kernel
                if k is None:
                    kind, cost, api = NOOP, c_noop, "dispatch"
                else:
                    kind, cost, api = LAUNCH, c_launch, "launch"
                if c.host_us is not None:  # priced by the runtime that lowered it
                    cost = c.host_us
                op = c.op
                slot = None
            elif ctype is Record:
                kind, cost, api = RECORD, c_record, "event_record"
                if c.host_us is not None:
                    cost = c.host_us
                k = op = None
                slot = self._bind_record(events, c, d)
            elif ctype is Wait:
                kind, cost, api = WAIT, c_wait, "stream_wait_event"
                if c.host_us is not None:
                    cost = c.host_us
                k = op = None
                slot = self._bind_wait(events, c, d)
            elif ctype is Synchronize:
                if t > env.now:
                    yield env.timeout(t - env.now)
                start = env.now
                self.host_blocked = i
                yield dev.wait_idle()
                self.host_blocked = None
                t = env.now + dev.gpu.sync_api_us
                log.append(new_record(HostRecord, ("synchronize", d, start, t, None)))
                continue
            elif ctype is Copy:
                # cudaMemcpyPeerAsync: host cost of a launch; runs on a copy engine
                self._check_copy(c, i)
                kind, cost, api = COPY, c_launch, "memcpy_peer"
                k, op, slot = c, c.tensor, None
            else:
                raise ProgramError(f"command {i}: unknown command {c!r}")
            stream = streams.get(c.stream) or dev.stream(c.stream)
            if graph:
                entry = Entry(kind, stream, avail_base, t, k, op, slot)
            else:
                end = t + cost
                log.append(new_record(HostRecord, (api, d, t, end, op)))
                t = end
                entry = Entry(kind, stream, t + latency, t, k, op, slot)
            dev.enqueue(entry)
        # the program ends with the host waiting for every device
        if t > env.now:
            yield env.timeout(t - env.now)
        for dev in devices:
            yield dev.wait_idle()

    # -- one host thread per device -------------------------------------------------------

    def start_threads(self, program: StreamProgram) -> list[simpy.Process]:
        """Several GPUs: each device's commands are issued by its own host thread, in
        program order, each thread with its own CPU clock; a synchronize blocks only its
        thread. Events bind as with one thread (to the latest record before the wait in
        program order, or else the next one). A wait bound to an earlier record of
        another thread is a host-side hand-off: its thread issues the wait only once the
        record's thread has issued the record, as a runtime must to keep CUDA's
        record-before-wait order between threads."""
        env = self.env
        n_dev = len(self.devices)
        per: list[list[tuple[int, Any, EventSlot | None, int]]] = [[] for _ in range(n_dev)]
        events: dict[str, EventSlot] = {}
        record_at: dict[int, int] = {}  # id(slot) -> command index of its record
        handoffs: dict[int, simpy.Event] = {}  # record command index -> issued (its end time)
        for i, c in enumerate(program.commands):
            d = c.device
            if not 0 <= d < n_dev:
                raise ProgramError(f"command {i}: device {d} does not exist (machine has {n_dev})")
            ctype = type(c)
            slot, hand = None, -1
            if ctype is Record:
                slot = self._bind_record(events, c, d)
                record_at[id(slot)] = i
            elif ctype is Wait:
                slot = self._bind_wait(events, c, d)
                if slot.stream is not None and slot.device != d:
                    hand = record_at[id(slot)]
                    if hand not in handoffs:
                        handoffs[hand] = env.event()
            elif ctype is Copy:
                self._check_copy(c, i)
            elif ctype is not Launch and ctype is not Synchronize:
                raise ProgramError(f"command {i}: unknown command {c!r}")
            per[d].append((i, c, slot, hand))
        return [
            env.process(self._thread(d, items, program.graph_mode, handoffs))
            for d, items in enumerate(per)
            if items
        ]

    def _thread(self, d: int, items: list, graph: bool, handoffs: dict[int, simpy.Event]):
        env = self.env
        log = self.host_log
        dev = self.devices[d]
        gpu = dev.gpu
        t = env.now
        avail_base = 0.0
        if graph:
            log.append(
                new_record(HostRecord, ("graph_launch", d, t, t + gpu.graph_launch_api_us, None))
            )
            t += gpu.graph_launch_api_us
            avail_base = t + gpu.launch_latency_us
            dev.gap = gpu.graph_node_us
        c_launch, c_noop, c_record, c_wait, latency = _host_costs(gpu)
        blocked = self.threads_blocked
        for i, c, slot, hand in items:
            ctype = type(c)
            if ctype is Synchronize:
                if t > env.now:
                    yield env.timeout(t - env.now)
                start = env.now
                blocked[d] = (
                    f"the host thread of device {d} is blocked in the synchronize at command {i}"
                )
                yield dev.wait_idle()
                del blocked[d]
                t = env.now + gpu.sync_api_us
                log.append(new_record(HostRecord, ("synchronize", d, start, t, None)))
                continue
            if hand >= 0:
                ev = handoffs[hand]
                if not ev.triggered:
                    blocked[d] = (
                        f"the host thread of device {d} waits at command {i} for command "
                        f"{hand} to be issued"
                    )
                    yield ev
                    del blocked[d]
                if ev.value > t:
                    t = ev.value
            stream = dev.streams.get(c.stream) or dev.stream(c.stream)
            if ctype is Launch:
                k = c.kernel
                if k is None:
                    kind, cost, api = NOOP, c_noop, "dispatch"
                else:
                    kind, cost, api = LAUNCH, c_launch, "launch"
                if c.host_us is not None:  # priced by the runtime that lowered it
                    cost = c.host_us
                op = c.op
            elif ctype is Record:
                kind, cost, api = RECORD, c_record, "event_record"
                if c.host_us is not None:
                    cost = c.host_us
                k = op = None
            elif ctype is Wait:
                kind, cost, api = WAIT, c_wait, "stream_wait_event"
                if c.host_us is not None:
                    cost = c.host_us
                k = op = None
            else:  # Copy
                kind, cost, api = COPY, c_launch, "memcpy_peer"
                k, op = c, c.tensor
            if graph:
                entry = Entry(kind, stream, avail_base, t, k, op, slot)
            else:
                end = t + cost
                log.append(new_record(HostRecord, (api, d, t, end, op)))
                t = end
                entry = Entry(kind, stream, t + latency, t, k, op, slot)
            if kind == RECORD:
                ev = handoffs.get(i)
                if ev is not None:
                    ev.succeed(t)
            dev.enqueue(entry)
        if t > env.now:
            yield env.timeout(t - env.now)
        yield dev.wait_idle()

    # -- run -----------------------------------------------------------------------------

    def run(self, program: StreamProgram) -> Timeline:
        if len(self.devices) > 1 and not self.machine.shared_host:
            procs = self.start_threads(program)
        else:
            procs = [self.env.process(self.host(program))]
        self.env.run()
        for proc in procs:
            if not proc.triggered:
                raise self.deadlock_error()
            if not proc.ok:  # pragma: no cover - errors inside the host re-raise in env.run
                raise proc.value
        return self.timeline()

    def dispose(self) -> None:
        """Drop the run's internals once its timeline is built, breaking the reference
        cycles between the simulation, its devices, queues and streams, so reference
        counting frees them at once instead of the cyclic collector later."""
        for d in self.devices:
            d.dispose()
        self.__dict__.clear()

    def deadlock_error(self) -> DeadlockError:
        """Nothing can move but work is pending: name who waits for what."""
        parts = []
        for d in self.devices:
            for q in d.queues:
                if not q.items:
                    continue
                e = q.items[0]
                dev = f"device {d.index} " if len(self.devices) > 1 else ""
                if e.kind == WAIT and not e.event.done:
                    rec = e.event.stream
                    if rec is None:
                        parts.append(
                            f"{dev}stream {e.stream.id} waits for event '{e.event.name}', "
                            f"which is never recorded"
                        )
                        continue
                    rd = self.devices[e.event.device]
                    blocker = self._blocker_of(rd, rec)
                    on = f"device {rd.index} " if len(self.devices) > 1 else ""
                    parts.append(
                        f"{dev}stream {e.stream.id} waits for event '{e.event.name}' recorded on "
                        f"{on}stream {rec}{blocker}"
                    )
                else:
                    parts.append(f"{dev}stream {e.stream.id} is stuck behind hardware queue {q.id}")
        if self.host_blocked is not None:
            parts.append(
                f"the host is blocked in the synchronize at command {self.host_blocked}, "
                f"so later commands were never issued"
            )
        parts += [self.threads_blocked[d] for d in sorted(self.threads_blocked)]
        detail = "; ".join(parts) or "work pending but no stream can run"
        return DeadlockError(f"deadlock at t={self.env.now:.3f} us: {detail}")

    @staticmethod
    def _blocker_of(d: Device, stream: int) -> str:
        for q in d.queues:
            for pos, e in enumerate(q.items):
                if e.stream.id == stream:
                    if pos == 0 and e.kind == WAIT:
                        return f" (itself waiting for event '{e.event.name}')"
                    if pos > 0:
                        head = q.items[0]
                        return f" (queued behind stream {head.stream.id} in hardware queue {q.id})"
                    return ""
        return ""

    def timeline(self) -> Timeline:
        """The run's records, once it has finished (a multi-tenant run reads it too)."""
        # records are built with tuple.__new__: the NamedTuple constructor adds a Python
        # frame per record, and a run makes one record per command
        new = new_record
        kinds = {RECORD: "record", WAIT: "wait", NOOP: "noop"}
        kernels: list[KernelRecord] = []
        commands: list[CommandRecord] = []
        copies: list[CopyRecord] = []
        end = 0.0
        for d in self.devices:
            di = d.index
            kernels += d.kernels
            if d.kernel_end > end:
                end = d.kernel_end
            for e, done in d.command_log:
                ev = e.event.name if e.event is not None else None
                commands.append(
                    new(CommandRecord, (kinds[e.kind], di, e.stream.id, e.issue, done, ev, e.op))
                )
                if done > end:
                    end = done
            for e, start, stop in d.copy_log:
                c = e.kernel
                s = e.stream
                copies.append(
                    new(
                        CopyRecord,
                        (e.op, di, s.id, c.src, c.dst, c.bytes, e.issue, start, stop),
                    )
                )
                if stop > end:
                    end = stop
            d._account(self.env._now)
        kernels.sort(key=_KERNEL_ORDER)
        return Timeline(
            gpu_names=[d.gpu.name for d in self.devices],
            sm_counts=[d.gpu.sm_count for d in self.devices],
            kernels=kernels,
            commands=commands,
            copies=sorted(copies, key=_COPY_ORDER),
            host=self.host_log,
            makespan_us=end,
            counters=[d.counters for d in self.devices],
            sm_transitions=[d.pool.transitions for d in self.devices],
            events=self.env.scheduled,
        )


def _host_costs(gpu: GPUSpec) -> tuple[float, float, float, float, float]:
    """Host time of a launch, a no-op dispatch, an event record and a wait, then the
    launch latency: looked up once per run, not once per command."""
    return (
        gpu.launch_api_us + gpu.framework_dispatch_us,
        gpu.framework_dispatch_us,
        gpu.event_record_api_us,
        gpu.event_wait_api_us,
        gpu.launch_latency_us,
    )


# kernels listed by start, then device, stream and end (KernelRecord field positions)
_KERNEL_ORDER = itemgetter(6, 2, 3, 7)
_COPY_ORDER = itemgetter(7, 1, 2, 8)  # copies by start, then device, stream and end


def simulate(
    program: StreamProgram,
    machine: Machine | GPUSpec | Sequence[GPUSpec],
    record_batches: bool = False,
) -> Timeline:
    """Run ``program`` and return its timeline. Raises DeadlockError if it cannot finish.

    The makespan runs from the host's first API call to the end of the last command on
    any device. ``record_batches`` keeps every block batch (for invariant tests).
    """
    if isinstance(machine, GPUSpec):
        machine = Machine.single(machine)
    elif not isinstance(machine, Machine):
        machine = Machine("machine", tuple(machine))
    # A run allocates many short-lived objects that reference counting frees; the cyclic
    # collector, triggered by the allocation count, would walk the whole heap (graphs,
    # kernel caches) again and again for nothing — a third of the run time on Inception
    # V3. Paused for the run as ``timeit`` does, and restored however the run ends. The
    # simulation's own objects (queue entries, batches, queues) are freed before the
    # collector comes back: they form cycles (a device and its queues point at each
    # other), and left to the collector they cost its next pass a tenth of a run.
    paused = gc.isenabled()
    gc.disable()
    try:
        sim = Simulation(machine, record_batches)
        tl = sim.run(program)
        if record_batches:
            tl.batches = [d.batch_log for d in sim.devices]  # type: ignore[attr-defined]
        sim.dispose()
    finally:
        if paused:
            gc.enable()
    return tl
