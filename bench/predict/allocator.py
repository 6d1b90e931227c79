"""A model of PyTorch's CUDA caching allocator, to turn allocations into reserved bytes.

NVML sees what the allocator reserved (``cudaMalloc``'d segments), not what
tensors hold; the gap (fragmentation and cache) is 0.7-9 GiB in real runs.
This replays an allocation sequence through the allocator's rules
(``c10/cuda/CUDACachingAllocator.cpp``, default settings):

- requests round up to 512 bytes; <= 1 MiB come from the small pool
  (2 MiB segments), larger from the large pool (20 MiB segments below
  10 MiB, otherwise the request rounded up to 2 MiB);
- a request takes the best-fitting cached free block of its pool (smallest
  size, then lowest address), split when the rest is >= 512 bytes (small)
  or > 1 MiB (large); otherwise a new segment is ``cudaMalloc``'d;
- a freed block merges with free neighbours of its segment and stays cached.

- when a new segment would not fit the card (``limit``), every wholly free
  cached segment is released and the ``cudaMalloc`` retried (an "allocator
  retry"); if it still does not fit, the run is out of memory. This is why a
  run whose cache grows past the card on a large GPU can still fit a small one.

``expandable_segments`` and ``max_split_size_mb`` are not modelled.

Inside ``recording()`` every allocator created logs what it does
(``log``: ``segment_alloc``, ``alloc``, ``free``, ``segment_free`` with
address, block size, stream, requested bytes and the caller's tag);
``bench.predict.timeline`` turns that log into a memory snapshot.
"""

from __future__ import annotations

import contextlib
import contextvars
from bisect import bisect_left, insort
from collections.abc import Iterator

MIN_BLOCK = 512
SMALL_SIZE = 1 << 20
SMALL_BUFFER = 2 << 20
LARGE_BUFFER = 20 << 20
MIN_LARGE_ALLOC = 10 << 20
ROUND_LARGE = 2 << 20


def round_size(n: int) -> int:
    return MIN_BLOCK if n < MIN_BLOCK else (n + MIN_BLOCK - 1) // MIN_BLOCK * MIN_BLOCK


def segment_size(n: int) -> int:
    if n <= SMALL_SIZE:
        return SMALL_BUFFER
    if n < MIN_LARGE_ALLOC:
        return LARGE_BUFFER
    return (n + ROUND_LARGE - 1) // ROUND_LARGE * ROUND_LARGE


class _Block:
    """A block of a segment; ``prev``/``next`` are its neighbours in the segment."""

    __slots__ = ("addr", "size", "small", "free", "prev", "next", "stream")

    def __init__(self, addr: int, size: int, small: bool, free: bool, prev, nxt, stream: int) -> None:
        self.addr, self.size, self.small, self.free = addr, size, small, free
        self.prev: _Block | None = prev
        self.next: _Block | None = nxt
        self.stream = stream


_LIMIT: contextvars.ContextVar[int | None] = contextvars.ContextVar("bench_allocator_limit", default=None)


@contextlib.contextmanager
def limited(nbytes: int | None):
    """Allocators created inside get ``limit = nbytes`` (the card's memory
    minus what the process holds outside the allocator)."""
    token = _LIMIT.set(nbytes)
    try:
        yield
    finally:
        _LIMIT.reset(token)


_RECORDING: contextvars.ContextVar[list | None] = contextvars.ContextVar("bench_allocator_recording", default=None)


@contextlib.contextmanager
def recording() -> Iterator[list[CachingAllocator]]:
    """Allocators created inside keep a ``log``; yields the list they are appended to, in order."""
    made: list[CachingAllocator] = []
    token = _RECORDING.set(made)
    try:
        yield made
    finally:
        _RECORDING.reset(token)


LogEntry = tuple[str, int, int, int, int, str | None]
"""``(action, addr, size, stream, requested bytes, tag)``."""

_STOP: contextvars.ContextVar[bool] = contextvars.ContextVar("bench_allocator_stop", default=False)


class OutOfMemory(Exception):
    """Raised inside ``stop_at_oom()`` by the first allocation that runs out."""


@contextlib.contextmanager
def stop_at_oom():
    """Allocators created inside raise ``OutOfMemory`` as soon as the run is out of memory:
    for a caller that asks only whether it fits, the rest of the replay is wasted."""
    token = _STOP.set(True)
    try:
        yield
    finally:
        _STOP.reset(token)


_ADDR = 1 << 64
"""A free block sorts by ``size * _ADDR + addr``: smallest size, then lowest address
(addresses stay below 2**64: segments are 2**40 apart)."""


class CachingAllocator:
    """Replays ``malloc(key, nbytes)`` / ``free(key)``; tracks peaks, retries and OOM.

    It also records how the run depended on its ``limit`` (``need``, ``decided``), so
    the same run is replayed once for every card it can tell apart (``estimate``).
    """

    def __init__(self) -> None:
        self.limit = _LIMIT.get()
        self.retries = 0
        self.oom = False
        # free blocks per pool (small or large, and the stream: a block freed on one CUDA
        # stream is reused only by it), as sorted ``size * _ADDR + addr`` order keys
        self._pools: dict[int, list[int]] = {}
        self._free: dict[int, _Block] = {}
        """Free blocks by their order key."""
        self.stream = 0
        """The stream following allocations are made on (0: the compute stream)."""
        self._blocks: dict[object, _Block] = {}
        self._next_addr = 0
        self.allocated = 0
        self.reserved = 0
        self.peak_allocated = 0
        self.peak_reserved = 0
        self.need = 0
        """The smallest limit under which this run would have gone exactly as it did: the
        most reserved bytes any new segment asked for (and what ``room_for`` decided on).
        Without a limit it is the reserved peak."""
        self.decided = 0
        """The smallest limit under which every ``room_for`` answer would have been the same."""
        self.stop = _STOP.get()
        made = _RECORDING.get()
        self.log: list[LogEntry] | None = None if made is None else []
        if made is not None:
            made.append(self)

    def _insert(self, b: _Block) -> None:
        order = b.size * _ADDR + b.addr
        self._free[order] = b
        insort(self._pools.setdefault(b.stream * 2 + b.small, []), order)

    def _remove(self, b: _Block) -> None:
        order = b.size * _ADDR + b.addr
        pool = self._pools[b.stream * 2 + b.small]
        i = bisect_left(pool, order)
        assert pool[i] == order
        del pool[i]
        del self._free[order]

    def malloc(self, key: object, nbytes: int, tag: str | None = None) -> int:
        """Allocate ``nbytes`` as ``key``; returns the size of the block it got.

        (The replay's hot path: pool insertions are written out here and in ``free``.)"""
        size = MIN_BLOCK if nbytes < MIN_BLOCK else (nbytes + MIN_BLOCK - 1) // MIN_BLOCK * MIN_BLOCK
        small = size <= SMALL_SIZE
        stream = self.stream
        pools = self._pools
        pool = pools.get(stream * 2 + small)
        if pool is None:
            pool = pools[stream * 2 + small] = []
        i = bisect_left(pool, size * _ADDR)
        if i < len(pool):
            block = self._free.pop(pool.pop(i))
        else:
            seg = segment_size(size)
            reserved = self.reserved
            if reserved + seg > self.need:
                self.need = reserved + seg
            if self.limit is not None and reserved + seg > self.limit:
                self.empty_cache()
                self.retries += 1
                self.oom = self.oom or self.reserved + seg > self.limit
                if self.oom and self.stop:
                    raise OutOfMemory
            block = _Block(self._next_addr, seg, small, True, None, None, stream)
            self._next_addr += seg + (1 << 40)  # segments are never adjacent
            self.reserved += seg
            if self.reserved > self.peak_reserved:
                self.peak_reserved = self.reserved
            if self.log is not None:
                self.log.append(("segment_alloc", block.addr, seg, stream, seg, None))
        rest = block.size - size
        if rest >= MIN_BLOCK if small else rest > SMALL_SIZE:
            nxt = block.next
            tail = _Block(block.addr + size, rest, small, True, block, nxt, stream)
            if nxt:
                nxt.prev = tail
            block.next = tail
            block.size = size
            order = rest * _ADDR + tail.addr
            self._free[order] = tail
            insort(pool, order)  # the tail stays in the block's pool (same size class and stream)
        block.free = False
        self._blocks[key] = block
        self.allocated += block.size
        if self.log is not None:
            self.log.append(("alloc", block.addr, block.size, block.stream, nbytes, tag))
        if self.allocated > self.peak_allocated:
            self.peak_allocated = self.allocated
        return block.size

    def free(self, key: object) -> None:
        block = self._blocks.pop(key)
        self.allocated -= block.size
        if self.log is not None:
            self.log.append(("free", block.addr, block.size, block.stream, block.size, None))
        block.free = True
        prev, nxt = block.prev, block.next
        pool = self._pools[block.stream * 2 + block.small]
        free = self._free
        if prev is not None and prev.free:
            order = prev.size * _ADDR + prev.addr
            del pool[bisect_left(pool, order)]
            del free[order]
            prev.size += block.size
            prev.next = nxt
            if nxt:
                nxt.prev = prev
            block = prev
        if nxt is not None and nxt.free:
            order = nxt.size * _ADDR + nxt.addr
            del pool[bisect_left(pool, order)]
            del free[order]
            block.size += nxt.size
            block.next = nxt.next
            if nxt.next:
                nxt.next.prev = block
        order = block.size * _ADDR + block.addr
        free[order] = block
        insort(pool, order)

    def room_for(self, nbytes: int) -> bool:
        """Whether the card's free memory (its limit less what is reserved) holds
        ``nbytes`` more: a decision a library makes from ``cudaMemGetInfo``. True
        without a limit."""
        if self.reserved + nbytes > self.need:
            self.need = self.reserved + nbytes
        self.decided = max(self.decided, self.need)
        return self.limit is None or self.limit - self.reserved >= nbytes

    def empty_cache(self) -> None:
        """``torch.cuda.empty_cache()``: release every wholly free segment."""
        for pool in self._pools.values():
            whole = [o for o in pool if self._free[o].prev is None and self._free[o].next is None]
            for order in whole:
                pool.remove(order)
                b = self._free.pop(order)
                self.reserved -= b.size
                if self.log is not None:
                    self.log.append(("segment_free", b.addr, b.size, b.stream, b.size, None))

    def reset_peaks(self) -> None:
        self.peak_allocated = self.allocated
        self.peak_reserved = self.reserved
