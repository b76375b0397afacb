"""The SM pool's shortcuts against its general rule.

``SMPool`` keeps a lone batch as a "solo" state without groups and places most batches
beside others by a one-block-per-SM walk; both must give exactly what the general
breadth-first rule (``_spread``) gives on spelled-out groups — the same blocks on the same
SMs, the same busy periods — or simulated timings would drift. ``GeneralPool`` is the same
pool with every shortcut off; random place/release sequences must not tell them apart.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import fit_launch, gpus

from simgpu.hardware import GPUSpec
from simgpu.kernels import Occupancy
from simgpu.sim.sms import Group, SMPool, _load_key
from simgpu.timeline import _busy_from_transitions


class GeneralPool(SMPool):
    """Groups always spelled out; every placement by the general rule."""

    def place(self, uid: int, need: Occupancy, n: int, now: float) -> int:
        w, r, s = need.warps, need.regs_alloc, need.smem_alloc
        if not self.batches:
            self.groups = [Group(self.all_sms, (), *self.cap)]
        self.groups.sort(key=_load_key)
        out, ks, placed = self._spread(self.groups, n, w, r, s)
        if placed:
            self.batches += 1
            self._take(out, ks, uid, w, r, s, now)
        return placed


def per_sm(pool: SMPool) -> list[dict[int, int]]:
    """Blocks of each resident batch on every SM, whatever the pool's representation."""
    sms: list[dict[int, int]] = [{} for _ in range(pool.n)]
    if pool.solo is not None:
        uid, level, extra, *_ = pool.solo
        for i in range(pool.n):
            k = level if i < extra else level - 1
            if k:
                sms[i][uid] = k
    elif pool.batches:
        for g in pool.groups:
            res = dict(zip(g.res[::2], g.res[1::2], strict=True))
            for i in g.sms:
                sms[i] = {~u: k for u, k in res.items()}
    return sms


def free_ok(pool: SMPool, needs: dict[int, Occupancy]) -> None:
    """No SM holds more than its warps, registers, shared memory and block slots."""
    fw, fr, fs, fb = pool.cap
    for i, held in enumerate(per_sm(pool)):
        use = [0, 0, 0, 0]
        for uid, k in held.items():
            o = needs[uid]
            use = [use[0] + k * o.warps, use[1] + k * o.regs_alloc, use[2] + k * o.smem_alloc,
                   use[3] + k]  # fmt: skip
        assert use[0] <= fw and use[1] <= fr and use[2] <= fs and use[3] <= fb, (i, held)


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
    gpu, needs, ops = run
    fast, ref = SMPool(gpu), GeneralPool(gpu)
    fast.log = ref.log = True
    resident: list[int] = []
    held: dict[int, Occupancy] = {}
    uid = 0
    for t, (release, which, n) in enumerate(ops):
        now = float(t)
        if release and resident:
            u = resident.pop(which % len(resident))
            fast.release(u, held[u], now)
            ref.release(u, held[u], now)
        else:
            need = needs[which]
            got = fast.place(uid, need, n, now)
            assert got == ref.place(uid, need, n, now)
            assert 0 <= got <= n
            if got:
                resident.append(uid)
                held[uid] = need
                assert sorted(i for sms, _ in fast.where for i in sms) == sorted(
                    i for sms, _ in ref.where for i in sms
                )
                for pool in (fast, ref):
                    assert sum(k * len(sms) for sms, k in pool.where) == got
            uid += 1
        assert per_sm(fast) == per_sm(ref)
        assert fast.busy == ref.busy == sum(1 for h in per_sm(fast) if h)
        assert fast.batches == ref.batches == len(resident)
        free_ok(fast, held)
    end = float(len(ops))
    assert np.array_equal(
        _busy_from_transitions(fast.transitions, fast.n, end),
        _busy_from_transitions(ref.transitions, ref.n, end),
    )


def test_a_lone_batch_makes_no_groups() -> None:
    """The sequential common case: one batch at a time, no group ever spelled out."""
    from simgpu.hardware import load_gpu

    gpu = load_gpu("v100")
    o = fit_launch(256, 32, 0, gpu)[3]
    pool = SMPool(gpu)
    for uid in range(5):
        assert pool.place(uid, o, 100 + uid, float(uid)) == 100 + uid
        assert pool.solo is not None and pool.groups == []
        pool.release(uid, o, uid + 0.5)
        assert pool.solo is None and pool.busy == 0
    # a second batch beside a lone one spells the groups out, and goes to the idle SMs
    pool.place(10, o, 40, 10.0)
    pool.place(11, o, 40, 10.0)
    assert pool.solo is None and len(pool.groups) == 2
    assert [sorted(h) for h in per_sm(pool)] == [[10]] * 40 + [[11]] * 40
