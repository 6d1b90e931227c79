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

import bisect
import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass

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


@dataclass(eq=False)
class _Block:
    addr: int
    size: int
    small: bool
    free: bool = True
    prev: _Block | None = None
    next: _Block | None = None
    stream: int = 0


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


class CachingAllocator:
    """Replays ``malloc(key, nbytes)`` / ``free(key)``; tracks peaks, retries and OOM."""

    def __init__(self) -> None:
        self.limit = _LIMIT.get()
        self.retries = 0
        self.oom = False
        # free blocks per (small pool, stream): a block freed on one CUDA stream is reused only by it
        self._pools: dict[tuple[bool, int], list[tuple[int, int, _Block]]] = {}
        self.stream = 0
        """The stream following allocations are made on (0: the compute stream)."""
        self._blocks: dict[object, _Block] = {}
        self._next_addr = 0
        self.allocated = 0
        self.reserved = 0
        self.peak_allocated = 0
        self.peak_reserved = 0
        made = _RECORDING.get()
        self.log: list[LogEntry] | None = None if made is None else []
        if made is not None:
            made.append(self)

    def _insert(self, b: _Block) -> None:
        bisect.insort(self._pools.setdefault((b.small, b.stream), []), (b.size, b.addr, b))

    def _remove(self, b: _Block) -> None:
        pool = self._pools[(b.small, b.stream)]
        i = bisect.bisect_left(pool, (b.size, b.addr))
        assert pool[i][2] is b
        del pool[i]

    def malloc(self, key: object, nbytes: int, tag: str | None = None) -> None:
        size = round_size(nbytes)
        small = size <= SMALL_SIZE
        pool = self._pools.setdefault((small, self.stream), [])
        i = bisect.bisect_left(pool, (size, -1))
        if i < len(pool):
            block = pool.pop(i)[2]
        else:
            seg = segment_size(size)
            if self.limit is not None and self.reserved + seg > self.limit:
                self.empty_cache()
                self.retries += 1
                self.oom = self.oom or self.reserved + seg > self.limit
            block = _Block(self._next_addr, seg, small, stream=self.stream)
            self._next_addr += seg + (1 << 40)  # segments are never adjacent
            self.reserved += seg
            self.peak_reserved = max(self.peak_reserved, self.reserved)
            if self.log is not None:
                self.log.append(("segment_alloc", block.addr, seg, self.stream, seg, None))
        rest = block.size - size
        if rest >= MIN_BLOCK if small else rest > SMALL_SIZE:
            tail = _Block(block.addr + size, rest, small, True, block, block.next, block.stream)
            if block.next:
                block.next.prev = tail
            block.next = tail
            block.size = size
            self._insert(tail)
        block.free = False
        self._blocks[key] = block
        self.allocated += block.size
        if self.log is not None:
            self.log.append(("alloc", block.addr, block.size, block.stream, nbytes, tag))
        self.peak_allocated = max(self.peak_allocated, self.allocated)

    def free(self, key: object) -> None:
        block = self._blocks.pop(key)
        self.allocated -= block.size
        if self.log is not None:
            self.log.append(("free", block.addr, block.size, block.stream, block.size, None))
        block.free = True
        for nb in (block.prev, block.next):
            if nb is not None and nb.free:
                self._remove(nb)
                if nb is block.prev:
                    nb.size += block.size
                    nb.next = block.next
                    if block.next:
                        block.next.prev = nb
                    block = nb
                else:
                    block.size += nb.size
                    block.next = nb.next
                    if nb.next:
                        nb.next.prev = block
        self._insert(block)

    def empty_cache(self) -> None:
        """``torch.cuda.empty_cache()``: release every wholly free segment."""
        for pool in self._pools.values():
            for entry in [e for e in pool if e[2].prev is None and e[2].next is None]:
                pool.remove(entry)
                self.reserved -= entry[2].size
                if self.log is not None:
                    b = entry[2]
                    self.log.append(("segment_free", b.addr, b.size, b.stream, b.size, None))

    def reset_peaks(self) -> None:
        self.peak_allocated = self.allocated
        self.peak_reserved = self.reserved
