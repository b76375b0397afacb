"""A caching allocator with the rules of PyTorch's CUDA caching allocator that decide how
much memory a schedule *reserves*, beyond what its live tensors hold.

The rules modelled (constants from PyTorch's ``CUDACachingAllocator``, overridable from a
GPU's JSON ``memory`` object, see :class:`AllocatorConfig`):

* every request is rounded up to a multiple of 512 B (``block_bytes``);
* requests of at most 1 MiB come from a *small* pool of 2 MiB segments; larger ones from
  a *large* pool, whose segments are 20 MiB below 10 MiB and rounded up to 2 MiB above;
* a cached free block is reused best-fit, and split when the remainder is worth keeping
  (any remainder in the small pool, more than 1 MiB in the large one); freed neighbours
  in a segment coalesce;
* pools are per stream: a block freed by one stream serves later requests of that same
  stream only (PyTorch keys its free lists by stream). A block another stream used is
  returned once an event recorded after that use completes; under CUDA Graph capture
  that event cannot be polled, so such blocks stay out of the pool until the graph ends;
* segments are never returned to the driver (``cudaFree``): ``reserved`` only grows.
  (Before reporting out-of-memory PyTorch releases its free cached segments and
  retries; a memory limit is therefore checked against live bytes, not reserved ones.)

``reserved`` is what ``torch.cuda.memory_reserved`` reports. ``allocated`` is the sum of
the live requests, each rounded to 512 B: the live set. (``torch.cuda.memory_allocated``
counts whole blocks, so it also counts the remainder of a large block left unsplit, less
than 1 MiB per block.)
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from simgpu.errors import SpecError

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30


@dataclass(frozen=True)
class AllocatorConfig:
    """Block and segment sizes of the caching allocator (PyTorch's defaults)."""

    block_bytes: int = 512  # kMinBlockSize: every request is rounded up to this
    small_max_bytes: int = MIB  # kSmallSize: requests up to this use the small pool
    small_segment_bytes: int = 2 * MIB  # kSmallBuffer
    large_segment_bytes: int = 20 * MIB  # kLargeBuffer: segment of a mid-size request
    large_min_bytes: int = 10 * MIB  # kMinLargeAlloc: from here a request is its own segment
    large_round_bytes: int = 2 * MIB  # kRoundLarge: ... rounded up to this

    def round(self, nbytes: int) -> int:
        """Size of the block a request of ``nbytes`` gets (0 stays 0: nothing allocated)."""
        if nbytes <= 0:
            return 0
        b = self.block_bytes
        return -(-nbytes // b) * b

    def small(self, size: int) -> bool:
        return size <= self.small_max_bytes

    def segment_bytes(self, size: int) -> int:
        """Size of the segment cudaMalloc'd for a rounded request no cached block serves."""
        if self.small(size):
            return self.small_segment_bytes
        if size < self.large_min_bytes:
            return max(self.large_segment_bytes, size)
        r = self.large_round_bytes
        return -(-size // r) * r

    def should_split(self, block: int, size: int) -> bool:
        rest = block - size
        return rest >= self.block_bytes if self.small(size) else rest > self.small_max_bytes


#: keys of a GPU JSON's ``memory`` object: the allocator's sizes, plus per-op overrides
MEMORY_KEYS = {f.name for f in fields(AllocatorConfig)} | {"ops"}
OP_OVERRIDE_KEYS = {"output_bytes", "workspace_bytes"}
_MAX_BYTES = 1 << 50  # a petabyte: far above any GPU, low enough to stay exact in floats


def _whole_bytes(v: Any, where: str, zero: bool) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise SpecError(f"{where} must be an integer number of bytes, got {v!r}")
    if v < 0 or (v == 0 and not zero) or v > _MAX_BYTES:
        lo = "0" if zero else "1"
        raise SpecError(f"{where} must be between {lo} and 2^50 bytes, got {v!r}")
    return v


def check_memory_json(data: Any, where: str) -> None:
    """Check a GPU JSON's ``memory`` object: allocator sizes, and per-op overrides keyed by
    op name or op signature (:func:`simgpu.kernels.signature`), each giving the bytes of
    the op's output and/or of its library workspace. Raises SpecError naming the field."""
    if not isinstance(data, Mapping):
        raise SpecError(f"{where} must be an object")
    unknown = sorted(set(data) - MEMORY_KEYS)
    if unknown:
        raise SpecError(
            f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(MEMORY_KEYS))})"
        )
    for k, v in data.items():
        if k != "ops":
            _whole_bytes(v, f"{where}.{k}", zero=False)
    cfg = config_from(data)
    if cfg.block_bytes & (cfg.block_bytes - 1):
        raise SpecError(f"{where}.block_bytes must be a power of two, got {cfg.block_bytes}")
    if cfg.small_segment_bytes < cfg.small_max_bytes:
        raise SpecError(f"{where}: small_segment_bytes must hold a request of small_max_bytes")
    ops = data.get("ops", {})
    if not isinstance(ops, Mapping):
        raise SpecError(f"{where}.ops must be an object: op name or signature -> overrides")
    for name, o in ops.items():
        at = f"{where}.ops[{name!r}]"
        if not isinstance(o, Mapping) or not o:
            raise SpecError(
                f"{at} must be a non-empty object with {' and/or '.join(sorted(OP_OVERRIDE_KEYS))}"
            )
        bad = sorted(set(o) - OP_OVERRIDE_KEYS)
        if bad:
            raise SpecError(
                f"{at}: unknown key(s) {', '.join(bad)} (known: {', '.join(sorted(OP_OVERRIDE_KEYS))})"
            )
        for k, v in o.items():
            _whole_bytes(v, f"{at}.{k}", zero=True)


def config_from(data: Mapping[str, Any]) -> AllocatorConfig:
    return AllocatorConfig(**{k: v for k, v in data.items() if k != "ops"})


@dataclass(eq=False)
class Block:
    segment: int
    offset: int
    size: int
    pool: tuple[int, bool]  # (stream, small)
    free: bool = False
    requested: int = 0  # the rounded request it serves (``size`` may be larger, unsplit)


class CachingAllocator:
    """One device's caching allocator. ``alloc`` returns a block handle; ``free`` returns
    it to its pool, now (``deferred=False``) or when :meth:`release_deferred` is called."""

    def __init__(self, config: AllocatorConfig) -> None:
        self.cfg = config
        self.allocated = 0
        self.reserved = 0
        self.peak_allocated = 0
        self.peak_reserved = 0
        self.segments: dict[int, list[Block]] = {}  # segment -> its blocks by offset
        # pool -> free blocks sorted by (size, segment, offset): best fit is a bisect
        self._free: dict[tuple[int, bool], list[tuple[int, int, int, Block]]] = {}
        self._next_segment = 0
        self._deferred: list[Block] = []

    # -- requests -----------------------------------------------------------------------

    def alloc(self, nbytes: int, stream: int) -> Block:
        size = self.cfg.round(nbytes)
        small = self.cfg.small(size)
        pool = (stream, small)
        block = self._take(pool, size)
        if block is None:
            block = self._new_segment(pool, size)
        if self.cfg.should_split(block.size, size):
            blocks = self.segments[block.segment]
            rest = Block(block.segment, block.offset + size, block.size - size, pool, free=True)
            blocks.insert(blocks.index(block) + 1, rest)
            block.size = size
            self._put(rest)
        block.free = False
        block.requested = size
        self.allocated += size
        self.peak_allocated = max(self.peak_allocated, self.allocated)
        return block

    def free(self, block: Block, deferred: bool = False) -> None:
        """The block's tensor is dead: ``allocated`` drops now; the block serves new
        requests now, or only after :meth:`release_deferred` (a capture's cross-stream
        blocks)."""
        self.allocated -= block.requested
        if deferred:
            self._deferred.append(block)
        else:
            self._return(block)

    def release_deferred(self) -> None:
        for b in self._deferred:
            self._return(b)
        self._deferred.clear()

    # -- internals ----------------------------------------------------------------------

    def _take(self, pool: tuple[int, bool], size: int) -> Block | None:
        free = self._free.get(pool)
        if not free:
            return None
        i = bisect.bisect_left(free, (size, -1, -1))
        if i == len(free):
            return None
        return free.pop(i)[3]

    def _put(self, b: Block) -> None:
        bisect.insort(self._free.setdefault(b.pool, []), (b.size, b.segment, b.offset, b))

    def _unput(self, b: Block) -> None:
        free = self._free[b.pool]
        i = bisect.bisect_left(free, (b.size, b.segment, b.offset))
        del free[i]

    def _return(self, block: Block) -> None:
        """Mark free and coalesce with free neighbours in its segment."""
        blocks = self.segments[block.segment]
        i = blocks.index(block)
        if i + 1 < len(blocks) and blocks[i + 1].free:
            nxt = blocks.pop(i + 1)
            self._unput(nxt)
            block.size += nxt.size
        if i > 0 and blocks[i - 1].free:
            prev = blocks[i - 1]
            self._unput(prev)
            prev.size += block.size
            blocks.pop(i)
            block = prev
        block.free = True
        self._put(block)

    def _new_segment(self, pool: tuple[int, bool], size: int) -> Block:
        seg_bytes = self.cfg.segment_bytes(size)
        seg = self._next_segment
        self._next_segment += 1
        block = Block(seg, 0, seg_bytes, pool)
        self.segments[seg] = [block]
        self.reserved += seg_bytes
        self.peak_reserved = max(self.peak_reserved, self.reserved)
        return block
