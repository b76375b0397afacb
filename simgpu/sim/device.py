"""One GPU: hardware queues, streams, the block dispatcher and DRAM sharing.

The device reacts to three things: a command becoming visible at the head of a hardware
queue, a batch of blocks finishing, and an event being recorded. It schedules SimPy
timeouts only when time must pass (a batch's end, a command not yet visible), so a
kernel costs about one event per wave, not one per block.

Simultaneous-event rule: SimPy runs events of equal time in the order they were
scheduled; batches that end at the same instant share one timeout and are released
together, in placement order, before the dispatcher runs once. Same inputs, same
timeline, bit for bit.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from heapq import heappush
from typing import TYPE_CHECKING

import simpy
from simpy.core import NORMAL

from simgpu.hardware import GPUSpec
from simgpu.sim.sms import Need, SMPool
from simgpu.timeline import KernelRecord

new_record = tuple.__new__  # NamedTuple records without a Python frame each

if TYPE_CHECKING:
    from simgpu.sim.engine import Simulation

LAUNCH, RECORD, WAIT, NOOP, COPY = 0, 1, 2, 3, 4


class Stream:
    __slots__ = ("busy", "id", "queue", "ready_at")

    def __init__(self, sid: int, queue: HwQueue) -> None:
        self.id = sid
        self.queue = queue
        self.busy = False  # a kernel of this stream is in flight
        self.ready_at = 0.0  # earliest start of its next command (event latency)


class EventSlot:
    """One recording of a CUDA event: done once its stream reached it. Waiting queues
    may belong to any device (events are machine-wide)."""

    __slots__ = ("device", "done", "name", "stream", "time", "waiters")

    def __init__(self, name: str, stream: int | None, device: int = 0) -> None:
        self.name = name
        self.stream = stream  # None while only waits have named it (no record issued yet)
        self.device = device  # the device of the recording stream
        self.done = False
        self.time = 0.0
        self.waiters: list[HwQueue] = []


class Entry:
    """A command in a hardware queue, as issued by the host. For a COPY, ``kernel``
    holds the Copy command (its bytes and devices). A LAUNCH, once it leaves its queue,
    also carries its kernel's dispatch state (one object per kernel, not two: this is
    the hot path)."""

    __slots__ = (
        "available",
        "event",
        "first_start",  # start of its first batch (-1 before)
        "issue",
        "kernel",
        "kind",
        "n_batches",
        "not_before",  # earliest block start (the kernel gap after its release)
        "occ",  # the kernel's Occupancy: what one block holds on its SM
        "op",
        "remaining",  # blocks not yet finished
        "stream",
        "unplaced",  # blocks not yet placed
    )

    def __init__(self, kind, stream, available, issue, kernel=None, op=None, event=None):
        self.kind = kind
        self.stream = stream
        self.available = available
        self.issue = issue
        self.kernel = kernel
        self.op = op
        self.event = event


class HwQueue:
    """A hardware work queue: commands leave in issue order, each only once its own
    stream and events allow — so streams aliased onto one queue block each other."""

    __slots__ = ("device", "id", "items", "release_t", "wake_at")

    def __init__(self, qid: int, device: Device | None = None) -> None:
        self.id = qid
        self.device = device  # the owner, which an event on another device wakes
        self.items: deque[Entry] = deque()
        self.wake_at = -1.0
        self.release_t = 0.0  # effective time of the last command it released: in order


class Batch:
    """Blocks of one kernel placed at one instant: they end together (one event).

    The first batch to end at an instant is itself the SimPy event of that instant
    (``callbacks`` and ``_ok`` are all SimPy's loop reads), so arming a batch costs one
    heap push and no extra object."""

    __slots__ = ("blocks", "callbacks", "demand", "finish", "last_t", "rate", "run", "uid", "work")
    _ok = True  # read by SimPy's loop: the event succeeded

    def __init__(self, uid: int, run: Entry, blocks: int, start: float) -> None:
        k = run.kernel
        self.uid = uid
        self.run = run
        self.blocks = blocks
        self.work = k.block_us  # full-speed microseconds still to run
        self.demand = blocks * k.block_bytes / k.block_us if k.block_us > 0 else 0.0
        self.rate = 1.0
        self.last_t = start
        self.finish = start + k.block_us


class Device:
    """SMs, queues and DRAM of one GPU inside a Simulation.

    Slotted: its attributes are read on every command, and a plain instance past 30
    attributes loses CPython's fast attribute path (key-sharing dicts stop there)."""

    __slots__ = (
        "_at",
        "_eid",
        "_last_busy",
        "_last_bw",
        "_open_logs",
        "_queue",
        "active",
        "batch_log",
        "command_log",
        "contended",
        "copy_log",
        "counters",
        "demand",
        "dram_capacity",
        "env",
        "fifo",
        "gap",
        "gpu",
        "idle_waiters",
        "in_timer",
        "index",
        "kernel_end",
        "kernels",
        "next_uid",
        "on_done",
        "on_timer",
        "pending",
        "pool",
        "queues",
        "sim",
        "streams",
        "timers",
    )

    def __init__(self, sim: Simulation, index: int, gpu: GPUSpec, record_batches: bool) -> None:
        self.sim = sim
        self.env: simpy.Environment = sim.env
        self.index = index
        self.gpu = gpu
        self.queues = [HwQueue(q, self) for q in range(gpu.hw_queues)]
        self.streams: dict[int, Stream] = {}
        self.pool = SMPool(gpu)
        self.pool.log = record_batches
        self.next_uid = 0
        self.fifo: deque[Entry] = deque()  # LAUNCH entries with blocks to place
        self.active: dict[int, Batch] = {}  # by uid, in placement order
        self.timers: dict[float, list[Batch]] = {}
        self._at = sim.env.at
        self._queue = sim.env._queue  # SimPy's event heap: batches are pushed directly
        self._eid = sim.env._eid
        self.dram_capacity = gpu.dram_bytes_per_us * gpu.dram_efficiency
        self.demand = 0.0
        self.contended = False
        self.pending = 0  # commands issued and not yet complete
        self.idle_waiters: list[simpy.Event] = []
        self.gap = gpu.kernel_gap_us
        self.on_timer = self._on_timer  # the bound method, made once
        self.in_timer = False  # inside _on_timer, which logs the counters once at its end
        # accounting
        self.counters: list[tuple[float, int, float]] = [(0.0, 0, 0.0)]
        self._last_busy = 0
        self._last_bw = 0.0
        # a kernel's record is built when it ends (times are final then): no second pass
        self.kernels: list[KernelRecord] = []
        self.kernel_end = 0.0
        # called with (entry, time) as each kernel or stream command completes (the
        # multi-tenant simulation counts a request's commands with it)
        self.on_done: Callable[[Entry, float], None] | None = None
        self.command_log: list[tuple] = []
        self.copy_log: list[tuple] = []  # (entry, start, end) per copy
        # (start, end, op, [(SM indices, blocks each)], Need) per batch, for invariant tests
        self.batch_log: list[list] | None = [] if record_batches else None
        self._open_logs: dict[int, list] = {}

    def dispose(self) -> None:
        """The run is over: cut the references back to the device (from its queues, the
        simulation and its own timer callback), so no cycle is left for the collector."""
        for q in self.queues:
            q.device = None
        self.sim = None
        self.on_timer = None

    # -- host side ----------------------------------------------------------------------

    def stream(self, sid: int) -> Stream:
        s = self.streams.get(sid)
        if s is None:
            s = self.streams[sid] = Stream(sid, self.queues[sid % len(self.queues)])
        return s

    def enqueue(self, entry: Entry) -> None:
        """Host issued a command; it becomes visible at ``entry.available``."""
        self.pending += 1
        q = entry.stream.queue
        q.items.append(entry)
        if len(q.items) == 1:
            self.advance(q, self.env._now)

    def wait_idle(self) -> simpy.Event:
        ev = self.env.event()
        if self.pending == 0:
            ev.succeed()
        else:
            self.idle_waiters.append(ev)
        return ev

    def _complete_one(self) -> None:
        self.pending -= 1
        if self.pending == 0 and self.idle_waiters:
            self._wake_idle_waiters()

    def _wake_idle_waiters(self) -> None:
        waiters, self.idle_waiters = self.idle_waiters, []
        for ev in waiters:
            ev.succeed()

    # -- queues -------------------------------------------------------------------------

    def _wake(self, ev: simpy.Event) -> None:
        self.advance(ev._value, self.env._now)

    def advance(self, q: HwQueue, now: float) -> None:
        """Move commands off the head of ``q`` while their stream and events allow.
        ``now`` is the simulation time (passed down: SimPy's ``now`` is a property)."""
        items = q.items
        while items:
            e = items[0]
            if e.available > now:
                if q.wake_at != e.available:
                    q.wake_at = e.available
                    self._at(e.available, self._wake, q)
                return
            s = e.stream
            if s.busy:
                return  # the stream's running kernel wakes this queue when it ends
            kind = e.kind
            base = now if now > s.ready_at else s.ready_at
            if q.release_t > base:
                base = q.release_t
            if kind == LAUNCH:
                items.popleft()
                s.busy = True
                q.release_t = base
                k = e.kernel
                e.occ = k.occupancy
                e.unplaced = e.remaining = k.grid
                e.first_start = -1.0
                e.n_batches = 0
                e.not_before = base + self.gap
                fifo = self.fifo
                fifo.append(e)
                if len(fifo) == 1:
                    self.dispatch(now)
                continue
            if kind == WAIT:
                slot = e.event
                if not slot.done:
                    if q not in slot.waiters:
                        slot.waiters.append(q)
                    return
                t = slot.time + self.gpu.event_latency_us
                if t > s.ready_at:
                    s.ready_at = t
                done = base if base > t else t
            elif kind == RECORD:
                slot = e.event
                slot.done = True
                slot.time = done = base
            else:
                if kind == COPY:  # to a copy engine; the stream waits for it like a kernel
                    items.popleft()
                    s.busy = True
                    q.release_t = base
                    self.sim.copy_fabric().start(self, e, base)
                    continue
                done = base  # NOOP: an op with no device work, in stream order
            q.release_t = done
            items.popleft()
            self.command_log.append((e, done))
            if self.on_done is not None:
                self.on_done(e, done)
            self.pending -= 1  # _complete_one, inline: once per command
            if self.pending == 0 and self.idle_waiters:
                self._wake_idle_waiters()
            if kind == RECORD and slot.waiters:
                waiters, slot.waiters = slot.waiters, []
                for wq in waiters:
                    if wq is not q:
                        wq.device.advance(wq, now)

    def copy_done(self, e: Entry, start: float, t: float) -> None:
        """A copy this device issued has moved its last byte: its stream moves on."""
        self.copy_log.append((e, start, t))
        s = e.stream
        s.busy = False
        self._complete_one()
        self.advance(s.queue, t)

    # -- block dispatch (left-over policy) ----------------------------------------------

    def dispatch(self, now: float) -> None:
        """Place blocks of the FIFO head; the next kernel only gets what is left over
        once every block of the head is placed."""
        fifo = self.fifo
        pool = self.pool
        placed = False
        while fifo:
            run = fifo[0]
            uid = self.next_uid
            blocks = pool.place(uid, run.occ, run.unplaced, now)
            if not blocks:
                break
            self.next_uid = uid + 1
            start = run.not_before
            if now > start:
                start = now
            if run.first_start < 0:
                run.first_start = start
            run.n_batches += 1
            b = Batch(uid, run, blocks, start)
            self.active[uid] = b
            t = b.finish  # arm it (inline _arm: the hot path); it is its instant's event
            bucket = self.timers.get(t)
            if bucket is None:
                self.timers[t] = [b]
                b.callbacks = [self.on_timer]
                heappush(self._queue, (t, NORMAL, next(self._eid), b))
            else:
                bucket.append(b)
            self.demand += b.demand
            if self.contended or self.demand > self.dram_capacity:
                self._reshare(now)
            placed = True
            if self.batch_log is not None:
                o = run.occ
                need = Need(o.warps, o.regs_alloc, o.smem_alloc)
                rec = [start, -1.0, run.kernel.op, pool.where, need]
                self.batch_log.append(rec)
                self._open_logs[uid] = rec
            run.unplaced -= blocks
            if run.unplaced:
                break
            fifo.popleft()
        if placed and not self.in_timer:
            self._account(now)

    # -- batch timing and DRAM sharing --------------------------------------------------

    def _arm(self, b: Batch) -> None:
        """Re-arm a batch whose end moved (DRAM sharing): a plain timer, since the batch
        may already be an event in SimPy's queue."""
        t = b.finish
        bucket = self.timers.get(t)
        if bucket is None:
            self.timers[t] = [b]
            self._at(t, self._on_timer, t)
        else:
            bucket.append(b)

    def _on_timer(self, ev: Batch | simpy.Event) -> None:
        """Batches end: free their blocks, finish their kernels (their streams move on),
        re-share DRAM, hand the freed SMs to the FIFO, and log the counters once."""
        t = self.env._now
        due = self.timers.pop(t)
        if len(due) == 1:  # the common case: one batch, armed once (_end_batch, inline)
            b = due[0]
            if b.finish != t or not b.blocks:
                return
            self.in_timer = True
            uid = b.uid
            run = b.run
            self.pool.release(uid, run.occ, t)
            del self.active[uid]
            self.demand -= b.demand
            if self.batch_log is not None:
                self._open_logs.pop(uid)[1] = t
            run.remaining -= b.blocks
            b.blocks = 0
            if not run.remaining:
                self._end_kernel(run, t)
        else:  # a batch re-armed by DRAM sharing may sit in a bucket twice, or be stale
            finished = list(dict.fromkeys(b for b in due if b.finish == t and b.blocks))
            if not finished:
                return
            self.in_timer = True
            for b in finished:  # every block freed before any stream moves on
                self._end_batch(b, t)
            for b in finished:
                run = b.run
                run.remaining -= b.blocks
                b.blocks = 0
                if not run.remaining:
                    self._end_kernel(run, t)
        if self.contended or self.demand > self.dram_capacity:
            self._reshare(t)
        if self.fifo:
            self.dispatch(t)
        self.in_timer = False
        self._account(t)

    def _end_batch(self, b: Batch, t: float) -> None:
        uid = b.uid
        self.pool.release(uid, b.run.occ, t)
        del self.active[uid]
        self.demand -= b.demand
        if self.batch_log is not None:
            self._open_logs.pop(uid)[1] = t

    def _end_kernel(self, run: Entry, t: float) -> None:
        """The kernel's last block ended: its record is final, its stream moves on."""
        k = run.kernel
        s = run.stream
        self.kernels.append(
            new_record(
                KernelRecord,
                (run.op, k.name, self.index, s.id, s.queue.id, run.issue, run.first_start, t,
                 k.grid, k.threads, run.n_batches),
            )
        )  # fmt: skip
        self.kernel_end = t  # kernels end in time order: the last one ends last
        if self.on_done is not None:
            self.on_done(run, t)
        s.busy = False
        self.pending -= 1  # _complete_one, inline: once per kernel
        if self.pending == 0 and self.idle_waiters:
            self._wake_idle_waiters()
        self.advance(s.queue, t)

    def _reshare(self, now: float) -> None:
        """Max-min fair split of DRAM bandwidth among running batches (processor
        sharing): a batch demanding less than its fair share runs at full speed; the
        rest slow down in proportion. Re-arms every batch whose end moved."""
        active = list(self.active.values())
        cap = self.dram_capacity
        for b in active:
            if now > b.last_t:
                b.work -= (now - b.last_t) * b.rate
                b.last_t = now
        self.contended = self.demand > cap
        rates: dict[int, float] = {}
        if self.contended:
            left, pool = cap, sorted(active, key=lambda x: x.demand)
            for i, b in enumerate(pool):
                fair = left / (len(pool) - i)
                give = b.demand if b.demand <= fair else fair
                rates[id(b)] = give / b.demand if b.demand > 0 else 1.0
                left -= give
        for b in active:
            r = rates.get(id(b), 1.0)
            if r == b.rate:
                continue
            b.rate = r
            base = b.last_t if b.last_t > now else now
            b.finish = base + max(0.0, b.work) / r
            self._arm(b)

    def _account(self, now: float) -> None:
        """Log the SMs-busy and DRAM counters at a change point."""
        busy = self.pool.busy
        dem = self.demand
        cap = self.dram_capacity
        bw = (dem if dem < cap else cap) / 1e3  # bytes/us -> GB/s
        if busy != self._last_busy or bw != self._last_bw:
            self._last_busy = busy
            self._last_bw = bw
            counters = self.counters
            if counters[-1][0] == now:
                counters[-1] = (now, busy, bw)
            else:
                counters.append((now, busy, bw))
