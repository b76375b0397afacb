"""One GPU: hardware queues, streams, the block dispatcher, and SMs and DRAM shared by
the resident blocks (the rule is :mod:`simgpu.sharing`).

The device reacts to three things: a command becoming visible at the head of a hardware
queue, a batch of blocks finishing, and an event being recorded. It schedules SimPy
timeouts only when time must pass (a batch's end, a command not yet visible), so a
kernel costs about one event per wave, not one per block. Whenever residency changes
(a placement, an end) it re-plans the rates of the batches that change touched, banks
their progress so far and moves their ends.

Simultaneous-event rule: SimPy runs events of equal time in the order they were
scheduled; batches that end at the same instant are released together, in the pool's
order (solo, or group by group), before the dispatcher runs once, and the rates are
re-planned once after it. Same inputs, same timeline, bit for bit.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from heapq import heappush
from typing import TYPE_CHECKING

import simpy
from simpy.core import NORMAL

from simgpu.hardware import GPUSpec
from simgpu.kernels import Kernel, demand_of
from simgpu.sharing import INF, Demand, class_rates, dram_capacity, fill_level, sm_port
from simgpu.sim.sms import Batch, Need, SMPool
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
        "cst",  # the kernel's _Constants on this GPU
        "dem",  # the kernel's Demand: what one block asks of its SM and of DRAM
        "event",
        "first_start",  # start of its first batch (-1 before)
        "g",  # each block's share of DRAM bandwidth, bytes/us
        "issue",
        "kernel",
        "kind",
        "n_batches",
        "not_before",  # earliest block start (the kernel gap after its release)
        "occ",  # the kernel's Occupancy: what one block holds on its SM
        "op",
        "released",  # when it left its hardware queue
        "remaining",  # blocks not yet finished
        "resident",  # blocks placed and not yet finished
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


class Device:
    """SMs, queues and DRAM of one GPU inside a Simulation.

    Slotted: its attributes are read on every command, and a plain instance past 30
    attributes loses CPython's fast attribute path (key-sharing dicts stop there)."""

    __slots__ = (
        "_at",
        "_eid",
        "_last_busy",
        "_last_bw",
        "_last_sm",
        "_queue",
        "batch_log",
        "command_log",
        "compute_used",
        "contended",
        "copy_log",
        "counters",
        "demand",
        "dram_capacity",
        "dram_used",
        "env",
        "fifo",
        "gap",
        "gpu",
        "idle_waiters",
        "in_timer",
        "index",
        "kernel_end",
        "kernels",
        "live",
        "on_done",
        "on_timer",
        "pending",
        "pool",
        "port",
        "queues",
        "sim",
        "streams",
        "wake_t",
    )

    def __init__(self, sim: Simulation, index: int, gpu: GPUSpec, record_batches: bool) -> None:
        self.sim = sim
        self.env: simpy.Environment = sim.env
        self.index = index
        self.gpu = gpu
        self.queues = [HwQueue(q, self) for q in range(gpu.hw_queues)]
        self.streams: dict[int, Stream] = {}
        self.pool = SMPool(gpu, merge_twins=not record_batches)
        self.fifo: deque[Entry] = deque()  # LAUNCH entries with blocks to place
        self.wake_t = INF  # the earliest wake-up pending for a batch end
        self._at = sim.env.at
        self._queue = sim.env._queue  # SimPy's event heap: batches are pushed directly
        self._eid = sim.env._eid
        # the sharing rule's capacities (simgpu.sharing) and what is drawn on them
        self.dram_capacity = dram_capacity(gpu)
        self.port = sm_port(gpu)
        self.live: dict[Entry, None] = {}  # kernels with resident blocks, in placement order
        self.demand = 0.0  # DRAM bytes/us the resident blocks ask for
        self.contended = False  # DRAM shares were cut at the last re-plan
        self.dram_used = 0.0  # bytes/us the resident blocks draw at their rates
        self.compute_used = 0.0  # SM-us/us the resident blocks compute at their rates
        self.pending = 0  # commands issued and not yet complete
        self.idle_waiters: list[simpy.Event] = []
        self.gap = gpu.kernel_gap_us
        self.on_timer = self._on_timer  # the bound method, made once
        self.in_timer = False  # inside _on_timer, which re-plans once at its end
        # accounting
        self.counters: list[tuple[float, int, float, float]] = [(0.0, 0, 0.0, 0.0)]
        self._last_busy = 0
        self._last_bw = 0.0
        self._last_sm = 0.0
        # a kernel's record is built when it ends (times are final then): no second pass
        self.kernels: list[KernelRecord] = []
        self.kernel_end = 0.0
        # called with (entry, time) as each kernel or stream command completes (the
        # multi-tenant simulation counts a request's commands with it)
        self.on_done: Callable[[Entry, float], None] | None = None
        self.command_log: list[tuple] = []
        self.copy_log: list[tuple] = []  # (entry, start, end) per copy
        # per batch, logged as it ends, for invariant tests: [start, end, op, [(SM
        # indices, blocks each)], Need, [(time, rate), ...] (from the setup's end), Kernel]
        self.batch_log: list[list] | None = [] if record_batches else None

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
                c = k.sim
                if c is None or c.gpu is not self.gpu:
                    c = _constants(k, self.gpu)
                e.cst = c
                e.dem = c.dem
                e.g = c.dem.memory
                e.resident = 0
                e.unplaced = e.remaining = k.grid
                e.first_start = -1.0
                e.n_batches = 0
                e.not_before = base + self.gap
                e.released = base
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
            was_solo = pool.solo is not None
            blocks = pool.place(run, run.occ, run.unplaced, now)
            if not blocks:
                break
            start = run.not_before
            if now > start:
                start = now
            if run.first_start < 0:
                run.first_start = start
            run.n_batches += 1
            d = run.dem
            t0 = start + d.setup_us
            new = pool.new
            pool.new = []
            if not run.resident:
                self.live[run] = None
            run.resident += blocks
            self.demand += blocks * d.memory
            if pool.solo is not None:  # on an idle GPU: rates from the kernel's plan
                plans = run.cst.plans
                plan = plans.get(blocks)
                if plan is None:
                    plan = plans[blocks] = _solo_plan(d, new, self.port, self.dram_capacity)
                rates, run.g, dram, compute = plan
                self.dram_used += dram
                self.compute_used += compute
                last = -1.0
                for i in range(len(new)):
                    b = new[i]
                    b.start = start
                    b.t0 = t0
                    b.p = p = rates[i]
                    t = b.finish = t0 + 1.0 / p
                    if self.batch_log is not None:
                        b.segs = [(t0, p)]
                    # its rate holds while it is solo: it is its own end's event (if
                    # company comes, the wake-ups take over and this one goes stale);
                    # both batches ending at one instant make one event
                    if t != last:
                        b.callbacks = [self.on_timer]
                        heappush(self._queue, (t, NORMAL, next(self._eid), b))
                        last = t
            else:
                for b in new:
                    b.start = start
                    b.t0 = t0
                if self.batch_log is not None:
                    for b in new:
                        b.segs = []
                if was_solo:  # beside a solo placement: every rate by the general rule
                    self.contended = True
            placed = True
            run.unplaced -= blocks
            if run.unplaced:
                break
            fifo.popleft()
        if placed and not self.in_timer:
            if pool.solo is None:
                self._replan(now)
                self._wake_for_next()
            self._account(now)

    # -- rates --------------------------------------------------------------------------

    def _replan(self, now: float) -> None:
        """Residency changed: re-plan the rates of the batches it touched (processor
        sharing, :mod:`simgpu.sharing`) and re-arm each batch whose end moved.

        A group whose residents changed re-shares its SMs' compute and memory ports
        among them; DRAM is re-shared among all kernels when they ask for more than it
        gives (or did at the last re-plan), and then every batch's rate is re-checked.
        A solo placement keeps the rates of its plan."""
        pool = self.pool
        changed = pool.changed
        todo: list[Batch] = []
        if changed:
            pool.changed = []
            pool.stamp += 1
            port = self.port
            for g in changed:
                bs = g.bs
                if not bs:
                    continue
                if len(bs) == 1:  # one kernel's blocks: the even split, capped
                    b = bs[0]
                    d = b.run.dem
                    k = b.k
                    a = d.compute
                    if a * k > 1.0:
                        a = 1.0 / k
                    m = d.memory
                    if m * k > port:
                        m = port / k
                    b.pa = a / d.work_us if d.work_us else INF
                    b.m = m
                    todo.append(b)
                else:
                    _share(bs, port)
                    todo += bs
        if pool.solo is None and (self.contended or self.demand > self.dram_capacity):
            cap = self.dram_capacity
            if self.demand > cap:
                self.contended = True
                level = fill_level(
                    [(r.dem.memory, r.dem.warps, r.resident) for r in self.live], cap
                )
            else:
                self.contended = False
                level = INF
            moved = False
            for r in self.live:
                d = r.dem
                g = level * d.warps
                if g > d.memory:
                    g = d.memory
                if g != r.g:
                    r.g = g
                    moved = True
            if moved:
                todo = pool.resident()
        if not todo:
            return
        # every rate from its shares; a batch whose rate moved banks its progress so far
        # and gets its new end
        segs = self.batch_log is not None
        dram = self.dram_used
        compute = self.compute_used
        for b in todo:
            run = b.run
            d = run.dem
            p = b.pa
            nbytes = d.bytes
            if nbytes:
                m = b.m
                g = run.g
                if g < m:
                    m = g
                q = m / nbytes
                if q < p:
                    p = q
            old = b.p
            if p != old:
                t0 = b.t0
                if now > t0:
                    left = b.left - (now - t0) * old
                    b.left = left if left > 0.0 else 0.0
                    b.t0 = t0 = now
                if nbytes:
                    dram += b.nb * nbytes * (p - old)
                if d.work_us:
                    compute += b.nb * d.work_us * (p - old)
                b.p = p
                b.finish = t0 + b.left / p
                if segs:
                    b.segs.append((t0, p))
        self.dram_used = dram
        self.compute_used = compute

    # -- batch ends ---------------------------------------------------------------------

    def _wake_for_next(self) -> None:
        """Make sure a wake-up is pending for the earliest batch end. One per device,
        not one per batch: rates move at every residency change, and re-arming each
        batch would leave SimPy's queue full of stale entries. A wake-up that finds
        nothing due (its batch was slowed since) just asks for the next one."""
        m = INF
        pool = self.pool
        solo = pool.solo
        if solo is not None:
            for b in solo:
                if b.finish < m:
                    m = b.finish
        else:
            for g in pool.groups:
                for b in g.bs:
                    if b.finish < m:
                        m = b.finish
        if m < self.wake_t:
            self.wake_t = m
            self._at(m, self.on_timer, m)

    def _on_timer(self, ev: Batch | simpy.Event) -> None:
        """Batches end: free their blocks, finish their kernels (their streams move on),
        hand the freed SMs to the FIFO, re-plan the rates, and log the counters once."""
        t = self.env._now
        pool = self.pool
        solo = pool.solo
        if solo is not None and len(solo) == 1:  # a lone batch: the sequential case
            b = solo[0]
            if b.finish > t:  # stale: the batch it was for went another way
                return
            self.in_timer = True
            run = b.run
            blocks = b.nb
            if self.batch_log is not None:
                self._log(b, t)
            pool.release(b, run.occ, t)
            run.resident = 0
            del self.live[run]
            self.demand = self.dram_used = self.compute_used = 0.0  # idle: no rounding
            run.remaining -= blocks
            if not run.remaining:
                self._end_kernel(run, t)
            if self.fifo:
                self.dispatch(t)
            self.in_timer = False
            if pool.solo is None and pool.batches:  # the FIFO placed two kernels or more
                self._replan(t)
                self._wake_for_next()
            self._account(t)
            return
        if t == self.wake_t:
            self.wake_t = INF
        # the batches that end now, in the pool's order (solo, or group by group)
        if solo is not None:
            ended = [b for b in solo if b.finish <= t]
        else:
            ended = [b for g in pool.groups for b in g.bs if b.finish <= t]
        if not ended:  # a stale wake-up: the batch it was for was slowed since
            if self.wake_t == INF and solo is None and pool.batches:
                self._wake_for_next()
            return
        self.in_timer = True
        live = self.live
        log = self.batch_log
        demand = self.demand
        dram = self.dram_used
        compute = self.compute_used
        for b in ended:  # every block freed before any stream moves on
            run = b.run
            d = run.dem
            blocks = b.nb
            if not blocks:  # merged into its twin's batch as another batch ended
                continue
            if log is not None:
                self._log(b, t)
            pool.release(b, run.occ, t)
            run.resident -= blocks
            if not run.resident:
                del live[run]
            demand -= blocks * d.memory
            if d.bytes:
                dram -= blocks * d.bytes * b.p
            if d.work_us:
                compute -= blocks * d.work_us * b.p
        if pool.batches:
            self.demand = demand
            self.dram_used = dram
            self.compute_used = compute
        else:  # idle: the running sums restart clear of rounding
            self.demand = self.dram_used = self.compute_used = 0.0
        for b in ended:  # then the streams move on
            if not b.nb:
                continue
            run = b.run
            run.remaining -= b.nb
            if not run.remaining:
                self._end_kernel(run, t)
        if self.fifo:
            self.dispatch(t)
        self.in_timer = False
        if pool.solo is None and pool.batches:
            self._replan(t)
            self._wake_for_next()
        self._account(t)

    def _log(self, b: Batch, t: float) -> None:
        o = b.run.occ
        self.batch_log.append(  # type: ignore[union-attr]
            [b.start, t, b.run.op, [(b.sms, b.k)], Need(o.warps, o.regs_alloc, o.smem_alloc),
             b.segs, b.run.kernel]
        )  # fmt: skip

    def _end_kernel(self, run: Entry, t: float) -> None:
        """The kernel's last block ended: its record is final, its stream moves on."""
        k = run.kernel
        s = run.stream
        self.kernels.append(
            new_record(
                KernelRecord,
                (run.op, k.name, self.index, s.id, s.queue.id, run.issue, run.first_start, t,
                 k.grid, k.threads, run.n_batches, run.released),
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

    def _account(self, now: float) -> None:
        """Log the counters at a change point: SMs busy, DRAM GB/s drawn, and the
        fraction of the GPU's compute in use."""
        busy = self.pool.busy
        bw = self.dram_used / 1e3  # bytes/us -> GB/s
        if bw < 0.0:  # rounding of the running sum
            bw = 0.0
        sm = self.compute_used / self.gpu.sm_count
        if sm < 0.0:
            sm = 0.0
        if busy != self._last_busy or bw != self._last_bw or sm != self._last_sm:
            self._last_busy = busy
            self._last_bw = bw
            self._last_sm = sm
            counters = self.counters
            if counters[-1][0] == now:
                counters[-1] = (now, busy, bw, sm)
            else:
                counters.append((now, busy, bw, sm))


class _Constants:
    """What the engine derives once from a kernel on a GPU (memoised on the kernel): its
    block's demand, the rates of its placements on an idle GPU, and its blocks' shares
    of an SM beside other kernels' blocks."""

    __slots__ = ("dem", "gpu", "plans", "shares")

    def __init__(self, k: Kernel, gpu: GPUSpec) -> None:
        self.gpu = gpu
        self.dem = demand_of(k, gpu)
        self.plans: dict[int, tuple] = {}  # by blocks placed on the idle GPU
        self.shares: dict[tuple, tuple] = {}  # by the group's other residents


def _constants(k: Kernel, gpu: GPUSpec) -> _Constants:
    c = _Constants(k, gpu)
    object.__setattr__(k, "sim", c)  # a memo on a frozen dataclass, outside its value
    return c


def _solo_plan(d: Demand, new: list[Batch], port: float, cap: float) -> tuple:
    """Rates of a placement on an idle GPU (the heavier batch first), each block's DRAM
    share, and the DRAM and compute the placement draws. When the lighter batch ends
    first the heavier one keeps its rate (see :func:`simgpu.sharing.lone_wave_us`), so
    one plan serves the whole placement."""
    classes = [(len(b.sms), b.k) for b in new]
    rates = class_rates(d, classes, port, cap)
    blocks = dram = work = 0.0
    for b, p in zip(new, rates, strict=True):
        blocks += b.nb
        if d.bytes:
            dram += b.nb * d.bytes * p
        if d.work_us:
            work += b.nb * d.work_us * p
    g = cap / blocks
    return rates, g if g < d.memory else d.memory, dram, work


def _share(bs: tuple[Batch, ...], port: float) -> None:
    """Several kernels' blocks on one group of SMs: max-min fair shares of the SM's
    compute and of its memory port, by warps, each capped by what a block asks for
    (:func:`simgpu.sharing.fill_level`). The same residents recur on many groups and in every run of a program, so each
    composition's shares are memoised on the first kernel's constants."""
    first = bs[0]
    if len(bs) == 2:
        second = bs[1]
        key: tuple = (first.k, second.run.cst, second.k)
    else:
        key = (first.k, *[x for b in bs[1:] for x in (b.run.cst, b.k)])
    memo = first.run.cst.shares
    got = memo.get(key)
    if got is None:
        _fair(bs, port)
        memo[key] = tuple(x for b in bs for x in (b.pa, b.m))
        return
    i = 0
    for b in bs:
        b.pa = got[i]
        b.m = got[i + 1]
        i += 2


def _fair(bs: tuple[Batch, ...], port: float) -> None:
    lc = fill_level([(b.run.dem.compute, b.run.dem.warps, b.k) for b in bs], 1.0)
    lm = fill_level([(b.run.dem.memory, b.run.dem.warps, b.k) for b in bs], port)
    for b in bs:
        d = b.run.dem
        a = lc * d.warps
        if a > d.compute:
            a = d.compute
        m = lm * d.warps
        if m > d.memory:
            m = d.memory
        b.pa = a / d.work_us if d.work_us else INF
        b.m = m
