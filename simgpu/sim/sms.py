"""The SMs of one GPU as groups of identical SMs, and the batches of blocks on them.

SMs holding the same resident blocks at the same progress are interchangeable, so they
form one group: a list of SM indices, their free threads, registers, shared memory and
block slots, and the batches resident on them. A **batch** is the blocks of one kernel
on one group, ``k`` on every SM of it: they progress at one rate and end at one instant,
so a batch costs one event however many blocks it holds.

A placement takes whole groups in load order, or splits one in two. Splitting a group
splits its batches as well (a *sibling* for the split-off SMs, at the same progress),
because from then on the two halves share their SMs with different neighbours and may
progress differently. A group whose batches have all ended is idle again and merges
into the one group of idle SMs; the pool spells out no group at all while nothing is
resident. Real models keep a handful of groups, so placing or releasing costs a few
Python operations instead of one per SM.

The placement rule is breadth-first: the head kernel puts one block on every SM that has
room (least loaded first, by free warps, then SM index) before a second on any.
:meth:`SMPool._spread` is the general rule; an idle GPU and "at most one block per SM"
are shortcuts to the same result, and ``tests/test_sms.py`` checks them against it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from simgpu.hardware import GPUSpec
from simgpu.kernels import Occupancy


@dataclass(frozen=True)
class Need:
    """What one block of a kernel holds on its SM."""

    warps: int
    regs: int
    smem: int


class Batch:
    """``k`` blocks of one kernel on every SM of ``group``: one progress, one end.

    ``left`` is the fraction of a block's work still to do at time ``t0`` and ``p`` the
    rate (blocks per microsecond) since; ``finish`` follows. The engine sets them; the
    pool only copies them when it splits a batch. A solo batch is its own end's SimPy
    event (``callbacks`` and ``_ok`` are all SimPy's loop reads)."""

    _ok = True

    __slots__ = (
        "callbacks",  # SimPy's, when the device pushes it as its own end's event
        "finish",
        "group",
        "k",
        "left",
        "m",  # its share of its SM's memory port, bytes/us per block
        "nb",  # blocks: k x its SMs
        "p",
        "pa",  # its compute-bound rate on its SM, blocks/us
        "run",
        "segs",  # (time, rate) changes, if the device logs batches
        "sms",  # the SMs it is on: its group's (kept equal when the group splits)
        "start",
        "t0",
    )

    def __init__(self, run: Any, group: Group | None, k: int, sms: list[int]) -> None:
        self.run = run  # the kernel's queue entry (its dispatch state)
        self.group = group  # None while the pool is solo
        self.k = k
        self.sms = sms
        self.nb = k * len(sms)
        self.left = 1.0
        self.p = self.pa = self.m = 0.0  # none yet: the device sets them
        self.start = self.t0 = self.finish = 0.0
        self.segs: list[tuple[float, float]] | None = None

    def sibling(self, group: Group) -> Batch:
        """The same blocks' state on the SMs of ``group``, split off this batch's."""
        b = _new(Batch)
        b.run = self.run
        b.group = group
        b.k = k = self.k
        b.sms = sms = group.sms
        b.nb = k * len(sms)
        b.left = self.left
        b.p = self.p
        b.pa = self.pa
        b.m = self.m
        b.start = self.start
        b.t0 = self.t0
        b.finish = self.finish
        segs = self.segs
        b.segs = None if segs is None else list(segs)
        return b


class Group:
    __slots__ = ("bs", "fb", "fr", "fs", "fw", "mark", "sms")

    def __init__(self, sms: list[int], bs: tuple, fw: int, fr: int, fs: int, fb: int) -> None:
        self.sms = sms  # SM indices, all in the same state (never mutated in place)
        self.bs = bs  # resident batches, in placement order
        self.fw = fw  # free warps
        self.fr = fr  # free registers
        self.fs = fs  # free shared memory (bytes)
        self.fb = fb  # free block slots
        self.mark = -1  # the pool's ``stamp`` when it was last put on ``changed``


class SMPool:
    """Block placement and release over the SMs of one GPU."""

    def __init__(self, gpu: GPUSpec, merge_twins: bool = True) -> None:
        self.cap = (gpu.max_warps_per_sm, gpu.regs_per_sm, gpu.smem_per_sm, gpu.max_blocks_per_sm)
        # Twin groups (same residents at the same progress) merge back into one, so a wave
        # stays one event. It changes no time; but a merged batch has one SM list for its
        # whole life, so when batches are recorded (for the invariant tests) twins stay
        # apart and every recorded batch's SMs are the ones its whole history ran on.
        self.merge_twins = merge_twins
        self.n = gpu.sm_count
        self.all_sms = list(range(self.n))  # never mutated: groups get new lists
        self.groups: list[Group] = []  # spelled out while two placements are resident
        self.idle: Group | None = None  # the group of idle SMs among them, if any
        self.busy = 0  # SMs with at least one resident block
        self.batches = 0  # batches resident
        # (time, +1 busy / -1 idle, SM indices): per-SM busy time is derived from it lazily
        self.transitions: list[tuple[float, int, list[int]]] = []
        self.new: list[Batch] = []  # batches placed, for the device to start
        self.changed: list[Group] = []  # groups whose residents changed: rates to re-plan
        self.stamp = 0  # bumped each time the device takes ``changed``
        # The pool holds only what one placement put on an idle GPU (a sequential
        # program's every kernel): its batches, the first on the first SMs, the second
        # (one block fewer each) on the rest. No group is spelled out until a second
        # placement comes; the device times these batches from a per-kernel plan.
        self.solo: list[Batch] | None = None
        self.solo_need = (0, 0, 0)  # warps, registers, shared memory of one of its blocks
        self._prefix: dict[int, list[int]] = {}  # SMs 0..k-1 and k..n-1 of an idle GPU
        self._suffix: dict[int, list[int]] = {}

    # -- placement ----------------------------------------------------------------------

    def place(self, run: Any, need: Occupancy, n: int, now: float) -> int:
        """Place up to ``n`` blocks of ``run`` breadth-first on the least-loaded SMs: one
        block on every SM that fits before a second on any. Returns the blocks placed;
        the new batches are appended to ``self.new``."""
        w, r, s = need.warps, need.regs_alloc, need.smem_alloc
        if not self.batches:  # an idle GPU: the common case, kept solo
            fw, fr, fs, c = self.cap
            x = fw // w  # blocks an idle SM takes (min() costs more than the chain)
            if x < c:
                c = x
            x = fr // r
            if x < c:
                c = x
            if s:
                x = fs // s
                if x < c:
                    c = x
            if c == 0:
                return 0
            m = self.n
            if n >= c * m:
                level, extra, n = c, m, c * m
            else:  # every SM gets level-1 blocks, the first ``extra`` one more
                level = -(-n // m)
                extra = n - (level - 1) * m
            if extra == m:
                head = Batch(run, None, level, self.all_sms)
                self.solo = [head]
                busy = self.all_sms
            else:
                head = Batch(run, None, level, self._head(extra))
                if level > 1:
                    self.solo = [head, Batch(run, None, level - 1, self._tail(extra))]
                    busy = self.all_sms
                else:
                    self.solo = [head]
                    busy = head.sms
            self.solo_need = (w, r, s)
            self.batches = len(self.solo)
            self.new += self.solo
            self.busy = len(busy)
            self.transitions.append((now, 1, busy))
            return n
        solo = self.solo
        if solo is not None:
            # the least-loaded SMs hold the last solo batch's blocks, or none: if those
            # cannot take a block, no SM can, and the groups need not be spelled out
            if sum(len(b.sms) for b in solo) == self.n:
                k = solo[-1].k
                sw, sr, ss = self.solo_need
                fw, fr, fs, fb = self.cap
                if fb - k < 1 or fw - k * sw < w or fr - k * sr < r or fs - k * ss < s:
                    return 0
            self._materialize()
        groups = self.groups
        groups.sort(key=_load_key)
        # Beside other kernels a batch mostly needs one block per SM at most: walk the
        # groups in load order, every SM that fits a block taking one, until all n are
        # placed — no per-group capacity, no level search. Exactly the general rule's
        # level-1 case; anything more falls through to it, nothing changed yet.
        out: list[Group] = []
        rem = n
        for i, g in enumerate(groups):
            if g.fb and g.fw >= w and g.fr >= r and g.fs >= s:
                m = len(g.sms)
                if rem < m:  # the n-th block lands inside this group: its first SMs
                    out.append(self._split(g, rem, i))
                    rem = 0
                    break
                out.append(g)
                rem -= m
                if not rem:
                    break
        if rem:
            out, ks, n = self._spread(groups, n, w, r, s)
            if not n:
                return 0
            for g, k in zip(out, ks, strict=True):
                if k:
                    self._add(g, k, run, w, r, s, now)
            return n
        for g in out:
            self._add(g, 1, run, w, r, s, now)
        return n

    def _head(self, k: int) -> list[int]:
        sms = self._prefix.get(k)
        if sms is None:
            sms = self._prefix[k] = self.all_sms[:k]
        return sms

    def _tail(self, k: int) -> list[int]:
        sms = self._suffix.get(k)
        if sms is None:
            sms = self._suffix[k] = self.all_sms[k:]
        return sms

    def _materialize(self) -> None:
        """A second placement arrives beside the solo one: spell the solo batches out as
        groups (their SMs were already counted busy), plus one of the idle SMs. They are
        marked changed: their rates are re-planned by the general rule from now on."""
        solo = self.solo
        assert solo is not None
        self.solo = None
        sw, sr, ss = self.solo_need
        fw, fr, fs, fb = self.cap
        groups = []
        covered = 0
        for b in solo:
            k = b.k
            g = Group(b.sms, (b,), fw - k * sw, fr - k * sr, fs - k * ss, fb - k)
            b.group = g
            g.mark = self.stamp
            self.changed.append(g)
            groups.append(g)
            covered += len(b.sms)
        if covered < self.n:  # one batch left, on the first SMs or on the last ones
            rest = self._tail(covered) if solo[0].sms[0] == 0 else self._head(self.n - covered)
            self.idle = Group(rest, (), fw, fr, fs, fb)
            groups.append(self.idle)
        else:
            self.idle = None
        self.groups = groups

    def _add(self, g: Group, k: int, run: Any, w: int, r: int, s: int, now: float) -> None:
        """A new batch of ``k`` blocks per SM of ``g``."""
        if not g.bs:
            self.busy += len(g.sms)
            self.transitions.append((now, 1, g.sms))
            if g is self.idle:
                self.idle = None
        b = Batch(run, g, k, g.sms)
        g.bs += (b,)
        g.fw -= k * w
        g.fr -= k * r
        g.fs -= k * s
        g.fb -= k
        self.batches += 1
        self.new.append(b)
        if g.mark != self.stamp:
            g.mark = self.stamp
            self.changed.append(g)

    def _cut(self, g: Group, m: int) -> Group:
        """A new group of the first ``m`` SMs of ``g``; ``g`` keeps the rest. Its batches
        get siblings there, at the same progress."""
        head = Group(g.sms[:m], (), g.fw, g.fr, g.fs, g.fb)
        rest = g.sms = g.sms[m:]
        bs = g.bs
        if bs:
            head.bs = tuple([b.sibling(head) for b in bs])
            nrest = len(rest)
            for b in bs:
                b.sms = rest
                b.nb = b.k * nrest
            self.batches += len(bs)
        return head

    def _split(self, g: Group, m: int, at: int) -> Group:
        """Split the first ``m`` SMs off group ``g`` (at position ``at`` of the groups)
        into a new group before it."""
        head = self._cut(g, m)
        self.groups.insert(at, head)
        return head

    def _spread(
        self, groups: list[Group], n: int, w: int, r: int, s: int
    ) -> tuple[list[Group], list[int], int]:
        """The general breadth-first rule over groups in load order: up to ``n`` blocks,
        level by level. Returns the groups, the blocks each takes and the blocks placed
        (a group may be split: ``self.groups`` is updated)."""
        caps: list[int] = []
        sizes: list[int] = []
        total = 0
        for g in groups:
            c = g.fb
            x = g.fw // w
            if x < c:
                c = x
            x = g.fr // r
            if x < c:
                c = x
            if s:
                x = g.fs // s
                if x < c:
                    c = x
            m = len(g.sms)
            caps.append(c)
            sizes.append(m)
            total += c * m
        if n >= total:  # every group takes all it can (nothing, if total is 0)
            return list(groups), caps, total
        # Find the level at which the n-th block lands; groups before it in load order
        # take one block more at that level. F(L), the blocks levels 1..L hold, is the
        # sum of min(cap, L) * SMs: piecewise linear in L with a kink at each group's
        # cap, so walk the kinks, not the levels.
        slope = self.n  # SMs whose cap is above the current segment
        prev = below = 0
        for c, m in sorted(zip(caps, sizes, strict=True)):  # by cap
            if c > prev:
                seg = (c - prev) * slope
                if below + seg >= n:
                    break
                below += seg
                prev = c
            slope -= m
        level = prev - (below - n) // slope  # prev + ceil((n - below) / slope)
        rem = n - below - (level - 1 - prev) * slope  # blocks at the last level
        out, ks = [], []
        split = False
        for g, c, m in zip(groups, caps, sizes, strict=True):
            if c < level:
                k = c
            elif rem == 0:
                k = level - 1
            elif rem >= m:  # the whole group takes the extra block
                rem -= m
                k = level
            else:  # split: the first SMs take one block more
                out.append(self._cut(g, rem))
                ks.append(level)
                split = True
                rem = 0
                k = level - 1
            out.append(g)
            ks.append(k)
        if split:
            self.groups = list(out)
        return out, ks, n

    # -- release ------------------------------------------------------------------------

    def release(self, b: Batch, need: Occupancy, now: float) -> None:
        """Free the blocks of batch ``b``; its group, if idle now, joins the idle SMs."""
        self.batches -= 1
        solo = self.solo
        if solo is not None:
            solo.remove(b)
            self.busy -= len(b.sms)
            self.transitions.append((now, -1, b.sms))
            if not solo:
                self.solo = None
            return
        g = b.group
        bs = g.bs
        if len(bs) == 1:
            g.bs = ()
        else:
            i = bs.index(b)
            g.bs = bs[:i] + bs[i + 1 :]
        k = b.k
        g.fw += k * need.warps
        g.fr += k * need.regs_alloc
        g.fs += k * need.smem_alloc
        g.fb += k
        if g.bs:
            twin = self._twin(g) if self.merge_twins else None
            if twin is not None:  # g is now another group's twin: one group again
                self._absorb(twin, g)
            elif g.mark != self.stamp:
                g.mark = self.stamp
                self.changed.append(g)
            return
        self.busy -= len(g.sms)
        self.transitions.append((now, -1, g.sms))
        if not self.batches:  # the GPU is idle: no group spelled out
            self.groups = []
            self.idle = None
            return
        idle = self.idle
        if idle is None:
            self.idle = g
        else:
            idle.sms = idle.sms + g.sms
            self.groups.remove(g)

    def _twin(self, g: Group) -> Group | None:
        """Another group whose SMs are now in exactly g's state: the same kernels' blocks,
        as many of each, placed at the same instant and as far along. (Groups part when
        a placement takes some of their SMs; once the neighbour that set them apart is
        gone, halves that kept pace are one group again, so a wave stays one event.)"""
        bs = g.bs
        n = len(bs)
        for h in self.groups:
            if h is g or len(h.bs) != n or h.fw != g.fw:
                continue
            for x, y in zip(bs, h.bs, strict=True):
                if (
                    x.run is not y.run
                    or x.k != y.k
                    or x.left != y.left
                    or x.t0 != y.t0
                    or x.p != y.p
                    or x.start != y.start
                ):
                    break
            else:
                return h
        return None

    def _absorb(self, h: Group, g: Group) -> None:
        """Group ``h`` takes the SMs of its twin ``g``, whose batches it already mirrors:
        h's batches now hold g's blocks too, and g's batches are gone."""
        h.sms = sms = h.sms + g.sms
        for b in h.bs:
            b.sms = sms
            b.nb = b.k * len(sms)
        for b in g.bs:
            b.nb = 0  # gone: its blocks are h's now (a timer that ends it skips it)
        self.batches -= len(g.bs)
        g.bs = ()
        self.groups.remove(g)

    def resident(self) -> list[Batch]:
        """Every resident batch (the solo ones, or group by group in the groups' order)."""
        if self.solo is not None:
            return list(self.solo)
        return [b for g in self.groups for b in g.bs]


_new = object.__new__


def _load_key(g: Group) -> tuple[int, int]:
    return (-g.fw, g.sms[0])
