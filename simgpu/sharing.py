"""How blocks share an SM's throughput and the GPU's DRAM bandwidth.

A block carries work, not a duration: ``work_us`` of compute (the microseconds it would
take with its SM's whole sustained rate for its dtype and unit), ``bytes`` of DRAM
traffic, a fixed ``setup_us`` (scheduling, prologue, epilogue) that nothing speeds up or
slows down, and a ``latency_us`` floor on its progress (a main loop's dependent chain).
Between setup and end it progresses at a rate ``p`` (blocks per microsecond) set by
roofline: compute, memory and latency overlap, the slowest of the three decides.

What a block can use is decided by three max-min fair shares, each weighted by the
block's warps (a warp scheduler issues per warp; DRAM requests are in flight per warp):

* **its SM's compute**: the resident blocks of every kernel share one SM's sustained
  rate, and no block uses more than its own warps can (``min(1, warps /
  warps_to_saturate)`` of the SM);
* **its SM's memory port**: one SM can draw at most ``1 / dram_saturation_fraction`` of
  its even share of DRAM bandwidth (so half the SMs saturate DRAM by default);
* **DRAM**: every resident block on the GPU shares ``dram_gbps x dram_efficiency``.

A block asks each pool for what it would use alone on an idle SM (its *demand*); the
shares are computed from those fixed demands. So adding a block anywhere can only lower
every other block's three shares (a kernel never finishes earlier because another one
joined), and the shares never add up to more than an SM or the DRAM can give. A block
held back by one resource does not hand its unused share of another to its neighbours:
the rule errs on the side of contention, never above the hardware.

This module is pure arithmetic, used by the cost model (a lone kernel's analytic time,
:func:`lone_kernel_us`) and by the engine (:mod:`simgpu.sim.device`), which re-plans the
rates whenever residency changes.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from simgpu.hardware import GPUSpec

INF = math.inf


class Demand(NamedTuple):
    """What one block of a kernel holds and asks for; the engine's per-kernel constants
    (a NamedTuple: made once per kernel and GPU, read on every re-plan)."""

    warps: int
    work_us: float  # SM-microseconds of compute
    bytes: float  # DRAM traffic
    setup_us: float  # fixed latency before it progresses
    compute: float  # fraction of an SM it uses alone (<= its warps' cap)
    memory: float  # bytes/us it draws alone (<= one SM's memory port)
    rate: float  # blocks/us alone on an idle SM (inf: no work, only setup)


def sm_port(gpu: GPUSpec) -> float:
    """DRAM bytes/us one SM can draw at most."""
    return dram_capacity(gpu) / (gpu.dram_saturation_fraction * gpu.sm_count)


def dram_capacity(gpu: GPUSpec) -> float:
    """DRAM bytes/us all blocks together can draw."""
    return gpu.dram_bytes_per_us * gpu.dram_efficiency


def warp_cap(warps: int, gpu: GPUSpec) -> float:
    """Fraction of an SM's rate one block's warps can use: few warps cannot hide latency."""
    return min(1.0, warps / gpu.warps_to_saturate)


def demand(
    warps: int,
    work_us: float,
    nbytes: float,
    setup_us: float,
    gpu: GPUSpec,
    latency_us: float = 0.0,
) -> Demand:
    """A block's demand: its rate alone on an idle SM, and what it draws at that rate.

    ``latency_us``: the block's dependent chain (a main loop's per-iteration latency)
    takes at least this long however much of the SM it gets. It caps the rate, so the
    block asks for less of its SM and the rest is left to co-runners: latency that one
    kernel cannot hide, another kernel's warps can use.
    """
    rate = INF
    if work_us > 0:
        rate = warp_cap(warps, gpu) / work_us
    if nbytes > 0:
        rate = min(rate, sm_port(gpu) / nbytes)
    if latency_us > 0:
        if work_us <= 0 and nbytes <= 0:  # nothing else to progress: a fixed latency
            setup_us += latency_us
        else:
            rate = min(rate, 1.0 / latency_us)
    compute = rate * work_us if work_us > 0 else 0.0
    memory = rate * nbytes if nbytes > 0 else 0.0
    return Demand(warps, work_us, nbytes, setup_us, compute, memory, rate)


def fill_level(items: list[tuple[float, int, int]], cap: float) -> float:
    """Max-min fair level of a pool shared by weight: ``items`` are (demand per unit,
    weight per unit, units); each unit gets ``min(demand, level x weight)`` and the
    units together get at most ``cap``. Returns ``inf`` when every demand fits."""
    total = 0.0
    weight = 0
    for d, w, n in items:
        total += d * n
        weight += w * n
    if total <= cap:
        return INF
    left = cap
    for d, w, n in sorted(items, key=_per_weight):
        level = left / weight
        if d > level * w:
            return level
        left -= d * n
        weight -= w * n
    return left / weight if weight else INF  # pragma: no cover - total > cap leaves one


def _per_weight(item: tuple[float, int, int]) -> float:
    return item[0] / item[1]


def block_rate(d: Demand, compute: float, memory: float) -> float:
    """Blocks/us of a block given its shares of compute (SM fraction) and memory."""
    rate = INF
    if d.work_us > 0:
        rate = compute / d.work_us
    if d.bytes > 0:
        q = memory / d.bytes
        if q < rate:
            rate = q
    return rate


def lone_rates(d: Demand, classes: list[tuple[int, int]], gpu: GPUSpec) -> list[float]:
    """Rates of one kernel's blocks alone on the GPU, placed as ``classes`` of (SMs,
    blocks per SM): the engine's rule with a single kernel resident."""
    return class_rates(d, classes, sm_port(gpu), dram_capacity(gpu))


def class_rates(d: Demand, classes: list[tuple[int, int]], port: float, dram: float) -> list[float]:
    """:func:`lone_rates` given the SM port and DRAM capacity (the engine's hot path)."""
    blocks = 0
    for m, k in classes:
        blocks += m * k
    g = d.memory
    if blocks and dram / blocks < g:
        g = dram / blocks
    out = []
    for _, k in classes:
        a = d.compute
        if a * k > 1.0:
            a = 1.0 / k
        m = g
        if port / k < m:
            m = port / k
        out.append(block_rate(d, a, m))
    return out


def lone_wave_us(d: Demand, classes: list[tuple[int, int]], gpu: GPUSpec) -> float:
    """Time from placement to the last block's end of one wave placed as ``classes`` on
    an otherwise idle GPU.

    No re-plan is needed when the lighter SMs finish first: both classes get the same
    DRAM share, so the heavier one is slower only where its SMs bind it (compute or the
    memory port), and the bandwidth the lighter one frees does not speed it up."""
    live = [c for c in classes if c[1] > 0]
    if not live:
        return 0.0
    slowest = min(lone_rates(d, live, gpu))
    return d.setup_us + (1.0 / slowest if slowest < INF else 0.0)


def wave_classes(blocks: int, per_sm: int, sm_count: int) -> list[tuple[int, int]]:
    """Breadth-first placement of ``blocks`` (at most ``per_sm`` on each SM) on an idle
    GPU, as (SMs, blocks each) from the most loaded: every SM gets one block before any
    gets a second."""
    if blocks >= per_sm * sm_count:
        return [(sm_count, per_sm)]
    level = -(-blocks // sm_count)
    extra = blocks - (level - 1) * sm_count
    if extra == sm_count:
        return [(sm_count, level)]
    return [(extra, level), (sm_count - extra, level - 1)]


def lone_kernel_us(d: Demand, grid: int, per_sm: int, gpu: GPUSpec) -> float:
    """A kernel alone on an idle GPU, from its first block's placement to its last
    block's end: full waves at full residency, then the tail at the residency it has."""
    full, tail = divmod(grid, per_sm * gpu.sm_count)
    t = 0.0
    if full:
        t = full * lone_wave_us(d, [(gpu.sm_count, per_sm)], gpu)
    if tail:
        t += lone_wave_us(d, wave_classes(tail, per_sm, gpu.sm_count), gpu)
    return t
