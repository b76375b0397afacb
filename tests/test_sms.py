"""The SM pool's shortcuts against its general rule, and its batches.

``SMPool`` keeps a placement on an idle GPU as a "solo" state without groups and places
most batches beside others by a one-block-per-SM walk; both must give exactly what the
general breadth-first rule (``_spread``) gives on spelled-out groups — the same blocks on
the same SMs, the same busy periods — or simulated timings would drift. ``GeneralPool``
is the same pool with every shortcut off; random place/release sequences must not tell
them apart. Every batch lives on the SMs of exactly one group, with one block count.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import fit_launch, gpus

from simgpu.hardware import GPUSpec
from simgpu.kernels import Occupancy
from simgpu.sim.sms import Batch, Group, SMPool, _load_key
from simgpu.timeline import _busy_from_transitions


class GeneralPool(SMPool):
    """Groups always spelled out; every placement by the general rule."""

    def place(self, run: object, need: Occupancy, n: int, now: float) -> int:
        w, r, s = need.warps, need.regs_alloc, need.smem_alloc
        if not self.batches:
            self.groups = [Group(self.all_sms, (), *self.cap)]
            self.idle = self.groups[0]
        self.groups.sort(key=_load_key)
        out, ks, placed = self._spread(self.groups, n, w, r, s)
        for g, k in zip(out, ks, strict=True):
            if k:
                self._add(g, k, run, w, r, s, now)
        return placed


def per_sm(pool: SMPool) -> list[dict[object, int]]:
    """Blocks of each resident kernel on every SM, whatever the pool's representation;
    also checks that every batch sits on its group's SMs (or is solo)."""
    sms: list[dict[object, int]] = [{} for _ in range(pool.n)]
    for b in pool.resident():
        if pool.solo is None:
            assert b.group is not None and b.sms is b.group.sms and b in b.group.bs
        assert b.nb == b.k * len(b.sms) and b.k >= 1
        for i in b.sms:
            sms[i][b.run] = sms[i].get(b.run, 0) + b.k
    return sms


def free_ok(pool: SMPool, needs: dict[object, Occupancy]) -> None:
    """No SM holds more than its warps, registers, shared memory and block slots, and
    every group's free counts are what its residents leave."""
    fw, fr, fs, fb = pool.cap
    for i, held in enumerate(per_sm(pool)):
        use = [0, 0, 0, 0]
        for run, k in held.items():
            o = needs[run]
            use = [use[0] + k * o.warps, use[1] + k * o.regs_alloc, use[2] + k * o.smem_alloc,
                   use[3] + k]  # fmt: skip
        assert use[0] <= fw and use[1] <= fr and use[2] <= fs and use[3] <= fb, (i, held)
    for g in pool.groups if pool.solo is None else []:
        use = [0, 0, 0, 0]
        for b in g.bs:
            o = needs[b.run]
            use = [use[0] + b.k * o.warps, use[1] + b.k * o.regs_alloc,
                   use[2] + b.k * o.smem_alloc, use[3] + b.k]  # fmt: skip
        assert (g.fw, g.fr, g.fs, g.fb) == (fw - use[0], fr - use[1], fs - use[2], fb - use[3])


@st.composite
def pool_runs(draw: st.DrawFn) -> tuple[GPUSpec, list[Occupancy], list[tuple]]:
    gpu = draw(gpus(max_sm=draw(st.sampled_from((4, 12, 80))), vary_costs=False))
    needs = []
    for _ in range(draw(st.integers(1, 4))):
        threads = draw(st.sampled_from((32, 64, 128, 256, 512, 1024)))
        regs = draw(st.sampled_from((16, 32, 64, 128, 255)))
        smem = draw(st.sampled_from((0, 0, 1024, 8192, 24576, 49152)))
        needs.append(fit_launch(threads, regs, smem, gpu)[3])
    # block counts around the SM count (one block per SM or a few), and whole waves
    sizes = st.one_of(st.integers(1, gpu.sm_count + 2), st.integers(1, 8 * gpu.sm_count))
    ops = draw(
        st.lists(
            st.tuples(st.booleans(), st.integers(0, len(needs) - 1), sizes),
            min_size=1,
            max_size=60,
        )
    )
    return gpu, needs, ops


@settings(max_examples=400, deadline=None)
@given(pool_runs())
def test_shortcuts_match_the_general_rule(run: tuple) -> None:
    """Place and release at random (a release ends every resident batch of one random
    kernel in both pools), and compare the pools after each step."""
    gpu, needs, ops = run
    fast, ref = SMPool(gpu), GeneralPool(gpu)
    held: dict[object, Occupancy] = {}
    for t, (release, which, n) in enumerate(ops):
        now = float(t)
        if release and fast.batches:
            # a kernel's resident blocks end: all its batches, in both pools
            run = fast.resident()[which % fast.batches].run
            for pool in (fast, ref):
                for b in [b for b in pool.resident() if b.run is run]:
                    pool.release(b, held[run], now)
        else:
            need = needs[which]
            kernel = object()  # a kernel's dispatch state, as the device passes it
            held[kernel] = need
            got = fast.place(kernel, need, n, now)
            assert got == ref.place(kernel, need, n, now)
            assert 0 <= got <= n
            for pool in (fast, ref):
                assert sum(b.nb for b in pool.new) == got
                pool.new = []
        fast.changed, ref.changed = [], []
        fast.stamp += 1
        ref.stamp += 1
        assert per_sm(fast) == per_sm(ref)
        assert fast.busy == ref.busy == sum(1 for h in per_sm(fast) if h)
        free_ok(fast, held)
        free_ok(ref, held)
    end = float(len(ops))
    assert np.array_equal(
        _busy_from_transitions(fast.transitions, fast.n, end),
        _busy_from_transitions(ref.transitions, ref.n, end),
    )


def test_a_lone_placement_makes_no_groups() -> None:
    """The sequential common case: one placement at a time, no group ever spelled out;
    a partial wave is two batches, the first SMs holding one block more."""
    from simgpu.hardware import load_gpu

    gpu = load_gpu("v100")
    o = fit_launch(256, 32, 0, gpu)[3]
    pool = SMPool(gpu)
    for i in range(5):
        assert pool.place(i, o, 100 + i, float(i)) == 100 + i
        assert pool.solo is not None and pool.groups == []
        h, light = pool.new
        pool.new = []
        assert (h.k, len(h.sms), light.k, len(light.sms)) == (2, 20 + i, 1, 60 - i)
        pool.release(light, o, i + 0.25)
        assert pool.busy == 20 + i and pool.solo == [h]
        pool.release(h, o, i + 0.5)
        assert pool.solo is None and pool.busy == 0 and pool.batches == 0
    # a second placement beside a lone one spells the groups out, and goes to the idle SMs
    pool.place(10, o, 40, 10.0)
    pool.place(11, o, 40, 10.0)
    assert pool.solo is None and len(pool.groups) == 2
    assert [sorted(h) for h in per_sm(pool)] == [[10]] * 40 + [[11]] * 40


def test_a_split_group_splits_its_batches() -> None:
    """A placement on some SMs of a group splits it, and its resident batch with it: the
    split-off SMs get a sibling at the same progress, the batch keeps the rest."""
    from simgpu.hardware import load_gpu

    gpu = load_gpu("v100")
    o = fit_launch(128, 32, 0, gpu)[3]
    pool = SMPool(gpu)
    pool.place("a", o, 80, 0.0)
    (a,) = pool.new
    a.left, a.p, a.t0 = 0.5, 0.25, 3.0
    pool.new = []
    pool.place("b", o, 30, 1.0)  # materializes the solo batch, then splits its group
    assert pool.batches == 3 and len(pool.groups) == 2
    head, rest = pool.groups
    (sib, b) = head.bs
    assert rest.bs == (a,) and a.sms is rest.sms and len(a.sms) == 50 and a.nb == 50
    assert isinstance(sib, Batch) and sib.run == "a" and sib.sms is head.sms and sib.nb == 30
    assert (sib.left, sib.p, sib.t0) == (0.5, 0.25, 3.0)
    assert b.run == "b" and b.k == 1 and head in pool.changed
