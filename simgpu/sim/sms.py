"""The SMs of one GPU, kept as groups of identical SMs.

SMs holding exactly the same resident blocks are interchangeable, so they form one group
(a list of SM indices plus their free threads, registers, shared memory and block
slots). A full wave touches every group once; a partial one splits a group in two; a
release merges groups whose residents became equal again. Real models keep a handful of
groups, so placing or releasing a batch costs a few Python operations instead of one per
SM — the difference between simulating tens and hundreds of thousands of kernels per
second.

Two shortcuts cover the common cases without changing a single placement: a batch on an
idle GPU (every kernel of a sequential program) is kept "solo", as two numbers instead
of groups; and a batch beside others that needs at most one block per SM is placed by
one walk over the groups in load order. Everything else goes through the general
breadth-first rule, :meth:`SMPool._spread`; ``tests/test_sms.py`` checks the shortcuts
against it on random GPUs and place/release sequences.
"""

from __future__ import annotations

from dataclasses import dataclass

from simgpu.hardware import GPUSpec
from simgpu.kernels import Occupancy


class Group:
    __slots__ = ("fb", "fr", "fs", "fw", "res", "sms")

    def __init__(self, sms: list[int], res: tuple, fw: int, fr: int, fs: int, fb: int) -> None:
        self.sms = sms  # SM indices, all in the same state
        # resident batches, flat: (~uid, blocks per SM, ~uid, ...) in placement order —
        # a batch is found with one C-level index() (~uid is negative, so never a count)
        self.res = res
        self.fw = fw  # free warps
        self.fr = fr  # free registers
        self.fs = fs  # free shared memory (bytes)
        self.fb = fb  # free block slots


@dataclass(frozen=True)
class Need:
    """What one block of a kernel holds on its SM."""

    warps: int
    regs: int
    smem: int


class SMPool:
    """Block placement and release over the SMs of one GPU."""

    def __init__(self, gpu: GPUSpec) -> None:
        self.cap = (gpu.max_warps_per_sm, gpu.regs_per_sm, gpu.smem_per_sm, gpu.max_blocks_per_sm)
        self.n = gpu.sm_count
        self.all_sms = list(range(self.n))  # never mutated: groups get new lists
        # groups of identical SMs, spelled out only while two batches or more are
        # resident (an idle GPU and a solo batch need none: see ``solo``)
        self.groups: list[Group] = []
        self.busy = 0  # SMs with at least one resident block
        self.batches = 0  # batches resident
        # (time, +1 busy / -1 idle, SM indices): per-SM busy time is derived from it lazily
        self.transitions: list[tuple[float, int, list[int]]] = []
        self.where: list[tuple[list[int], int]] = []  # the last placement, if ``log``
        self.log = False  # keep ``where`` for every placement (invariant tests)
        # The pool holds exactly one batch, placed on an idle GPU (a sequential program's
        # every kernel): (uid, level, extra, warps, regs, smem, busy SMs) — the first
        # ``extra`` SMs hold ``level`` blocks, the rest ``level - 1``. Its groups are
        # spelled out only if a second batch arrives, so the common case makes none.
        self.solo: tuple | None = None
        self._prefix: dict[int, list[int]] = {}  # SMs 0..k-1, the busy set of a solo batch

    def place(self, uid: int, need: Occupancy, n: int, now: float) -> int:
        """Place up to ``n`` blocks breadth-first on the least-loaded SMs (most free warps
        first, then lowest SM index): one block on every SM that fits before a second on
        any. Returns the blocks placed; ``self.where`` says where: [(SM indices, blocks
        each)]."""
        w, r, s = need.warps, need.regs_alloc, need.smem_alloc
        if not self.batches:  # an idle GPU: the common case, kept as one resident batch
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
            else:  # breadth-first: every SM gets level-1 blocks, the first ``extra`` level
                level = -(-n // m)
                extra = n - (level - 1) * m
            if level > 1 or extra == m:
                busy = self.all_sms
            else:
                busy = self._prefix.get(extra) or self._prefix.setdefault(extra, list(range(extra)))
            self.solo = (uid, level, extra, w, r, s, busy)
            self.batches = 1
            self.busy = len(busy)
            self.transitions.append((now, 1, busy))
            if self.log:
                sms = self.all_sms
                if extra == m:
                    self.where = [(sms, level)]
                else:
                    self.where = [(sms[:extra], level)]
                    if level > 1:
                        self.where.append((sms[extra:], level - 1))
            return n
        solo = self.solo
        if solo is not None:
            # the least-loaded SMs hold ``level - 1`` blocks of it (or ``level`` when all
            # hold as many): if those cannot take a block, no SM can, and the groups
            # need not be spelled out
            _, level, extra, sw, sr, ss, _ = solo
            k = level - 1 if extra < self.n else level
            fw, fr, fs, fb = self.cap
            if fb - k < 1 or fw - k * sw < w or fr - k * sr < r or fs - k * ss < s:
                return 0
            self._materialize()
        groups = self.groups
        self.batches += 1
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
                    head = Group(g.sms[:rem], g.res, g.fw, g.fr, g.fs, g.fb)
                    g.sms = g.sms[rem:]
                    groups.insert(i, head)
                    out.append(head)
                    rem = 0
                    break
                out.append(g)
                rem -= m
                if not rem:
                    break
        if not rem:
            ks = [1] * len(out)
        else:
            out, ks, n = self._spread(groups, n, w, r, s)
            if not n:
                self.batches -= 1
                return 0
        self._take(out, ks, uid, w, r, s, now)
        return n

    def _take(
        self, out: list[Group], ks: list[int], uid: int, w: int, r: int, s: int, now: float
    ) -> None:
        """Batch ``uid`` takes ``ks[i]`` blocks on every SM of group ``out[i]``."""
        busy = self.busy
        transitions = self.transitions
        for g, k in zip(out, ks, strict=True):
            if k:
                res = g.res
                if not res:
                    busy += len(g.sms)
                    transitions.append((now, 1, g.sms))
                g.res = (*res, ~uid, k)
                g.fw -= k * w
                g.fr -= k * r
                g.fs -= k * s
                g.fb -= k
        self.busy = busy
        if self.log:
            self.where = [(g.sms, k) for g, k in zip(out, ks, strict=True) if k]

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
            return groups, caps, total
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
        for g, c, m in zip(groups, caps, sizes, strict=True):
            if c < level:
                k = c
            elif rem == 0:
                k = level - 1
            elif rem >= m:  # the whole group takes the extra block
                rem -= m
                k = level
            else:  # split: the first SMs take one block more
                out.append(Group(g.sms[:rem], g.res, g.fw, g.fr, g.fs, g.fb))
                ks.append(level)
                g.sms = g.sms[rem:]
                rem = 0
                k = level - 1
            out.append(g)
            ks.append(k)
        self.groups = out
        return out, ks, n

    def _materialize(self) -> None:
        """A second batch arrives beside a solo one: spell the solo batch out as the
        groups the general path works on (its SMs were already counted busy)."""
        uid, level, extra, w, r, s, _ = self.solo
        self.solo = None
        fw, fr, fs, fb = self.cap
        sms = self.all_sms
        head = Group(sms, (~uid, level), fw - level * w, fr - level * r, fs - level * s, fb - level)
        if extra == self.n:
            self.groups = [head]
            return
        head.sms = sms[:extra]
        tail = Group(sms[extra:], (), fw, fr, fs, fb)
        if level > 1:
            k = level - 1
            tail.res = (~uid, k)
            tail.fw -= k * w
            tail.fr -= k * r
            tail.fs -= k * s
            tail.fb -= k
        self.groups = [head, tail]

    def release(self, uid: int, need: Occupancy, now: float) -> None:
        """Free every block of batch ``uid``; merge groups that became identical."""
        self.batches -= 1
        if not self.batches:  # the pool is empty again (the next batch will be solo)
            solo = self.solo
            if solo is not None:  # the groups were never spelled out
                self.solo = None
                self.transitions.append((now, -1, solo[6]))
            else:
                for g in self.groups:
                    if g.res:
                        self.transitions.append((now, -1, g.sms))
                self.groups = []
            self.busy = 0
            return
        w, r, s = need.warps, need.regs_alloc, need.smem_alloc
        groups = self.groups
        touched = 0
        key = ~uid
        for g in groups:
            res = g.res
            if key in res:
                i = res.index(key)
                k = res[i + 1]
                g.res = res = res[:i] + res[i + 2 :]
                g.fw += k * w
                g.fr += k * r
                g.fs += k * s
                g.fb += k
                touched += 1
                if not res:
                    self.busy -= len(g.sms)
                    self.transitions.append((now, -1, g.sms))
        if touched and len(groups) > 1:
            merged: dict[tuple, Group] = {}
            for g in groups:
                m = merged.setdefault(g.res, g)
                if m is not g:
                    m.sms = m.sms + g.sms
            if len(merged) != len(groups):
                self.groups = list(merged.values())


def _load_key(g: Group) -> tuple[int, int]:
    return (-g.fw, g.sms[0])
