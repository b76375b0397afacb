"""Peer copies between GPUs: copy engines and the links they travel over.

A copy leaves its stream like a kernel does, but it never touches SMs: it takes one
of the issuing device's copy engines (FIFO when all are busy), spends the route's
latency setting up, then moves its bytes over every hop of the route. Copies that
share a hop direction share its bandwidth max-min fairly (progressive filling), so a
lone copy of B bytes takes ``latency + B / bandwidth`` and two at once on one link
each get half. Kernels run on beside them; DRAM traffic of copies is not modelled
(a link is far slower than the memory it reads and writes).

The fabric exists only once a program issues a copy, so single-GPU runs pay nothing.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from simgpu.errors import ProgramError
from simgpu.hardware import Node, Route

if TYPE_CHECKING:
    from simgpu.sim.device import Device, Entry
    from simgpu.sim.engine import Simulation


class Transfer:
    """One copy between its start on an engine and its last byte."""

    __slots__ = ("device", "entry", "finish", "last_t", "left", "rate", "route", "start", "version")

    def __init__(self, device: Device, entry: Entry, route: Route, start: float) -> None:
        self.device = device
        self.entry = entry
        self.route = route
        self.start = start
        self.left = float(entry.kernel.bytes)  # bytes still to move
        self.rate = 0.0  # bytes/us while flowing
        self.last_t = start
        self.finish = start
        self.version = 0  # bumped when its end moves: older timers are stale


class Fabric:
    """The copy engines of every device and the links of the machine."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self._at = sim.env.at
        machine = sim.machine
        self.machine = machine
        self.capacity: dict[tuple[Node, Node], float] = {}
        for link in machine.links:
            self.capacity[(link.a, link.b)] = link.bytes_per_us
            self.capacity[(link.b, link.a)] = link.bytes_per_us
        self.free = [d.copy_engines for d in machine.devices]
        self.queued: list[deque[Entry]] = [deque() for _ in machine.devices]
        self.flowing: list[Transfer] = []  # in the order they started to flow

    def route(self, src: int, dst: int, where: str) -> Route:
        n = len(self.machine.devices)
        if not (0 <= src < n and 0 <= dst < n) or src == dst:
            raise ProgramError(
                f"{where}: copy from device {src} to device {dst} (machine has {n} GPUs; "
                f"a copy joins two different ones)"
            )
        r = self.machine.route(src, dst)
        if r is None:
            raise ProgramError(
                f"{where}: no link from GPU {src} to GPU {dst} on machine '{self.machine.name}'"
            )
        return r

    # -- engines ----------------------------------------------------------------------

    def start(self, dev: Device, entry: Entry, t: float) -> None:
        """``entry`` (a COPY) left its stream, to begin at ``t`` (later than now when
        an event's latency still holds its stream): then it asks for an engine."""
        if t > self.sim.env._now:
            self._at(t, self._ask, (dev, entry))
        else:
            self._engine(dev, entry, t)

    def _ask(self, ev) -> None:
        dev, entry = ev._value
        self._engine(dev, entry, self.sim.env._now)

    def _engine(self, dev: Device, entry: Entry, now: float) -> None:
        """A free copy engine of the issuing device, or the FIFO of copies waiting."""
        if self.free[dev.index]:
            self._begin(dev, entry, now)
        else:
            self.queued[dev.index].append(entry)

    def _begin(self, dev: Device, entry: Entry, t: float) -> None:
        self.free[dev.index] -= 1
        c = entry.kernel
        tr = Transfer(dev, entry, self.machine.route(c.src, c.dst), t)
        self._at(t + tr.route.latency_us, self._flow, tr)

    # -- bandwidth --------------------------------------------------------------------

    def _flow(self, ev) -> None:
        tr: Transfer = ev._value
        now = self.sim.env._now
        tr.last_t = now
        if tr.left <= 0.0:
            self._finish(tr, now)
            return
        self.flowing.append(tr)
        self._reshare(now)

    def _reshare(self, now: float) -> None:
        """Max-min fair rates by progressive filling; re-arm every transfer whose end
        moved."""
        flows = self.flowing
        for tr in flows:
            if now > tr.last_t:
                tr.left -= (now - tr.last_t) * tr.rate
                tr.last_t = now
        left = dict(self.capacity)
        users: dict[tuple[Node, Node], list[Transfer]] = {}
        for tr in flows:
            for ch in tr.route.channels:
                users.setdefault(ch, []).append(tr)
        rate: dict[int, float] = {}
        unfixed = list(flows)
        while unfixed:
            # the channel whose fair share among its unfixed users is smallest binds
            best_ch, best_share = None, 0.0
            for ch, us in users.items():
                k = sum(1 for tr in us if id(tr) not in rate)
                if k:
                    share = left[ch] / k
                    if best_ch is None or share < best_share:
                        best_ch, best_share = ch, share
            if best_ch is None:  # pragma: no cover - every flow uses at least one channel
                break
            for tr in users[best_ch]:
                if id(tr) in rate:
                    continue
                rate[id(tr)] = best_share
                for ch in tr.route.channels:
                    left[ch] -= best_share
            unfixed = [tr for tr in unfixed if id(tr) not in rate]
        for tr in flows:
            r = rate[id(tr)]
            if r == tr.rate:
                continue
            tr.rate = r
            tr.finish = now + max(0.0, tr.left) / r
            tr.version += 1
            self._at(tr.finish, self._end, (tr, tr.version))

    def _end(self, ev) -> None:
        tr, version = ev._value
        if version != tr.version:
            return  # its rate changed since this timer was armed
        now = self.sim.env._now
        self.flowing.remove(tr)
        tr.left = 0.0
        self._finish(tr, now)
        if self.flowing:
            self._reshare(now)

    def _finish(self, tr: Transfer, now: float) -> None:
        dev = tr.device
        d = dev.index
        self.free[d] += 1
        q = self.queued[d]
        if q:  # the engine goes to the longest-waiting copy before anything new
            self._begin(dev, q.popleft(), now)
        dev.copy_done(tr.entry, tr.start, now)
