"""Replay a whole run (load, micro-steps, optimizer steps) through the allocator model.

A ``Program`` is the allocation sequence of the training process as the
caching allocator sees it: library workspaces, the weights as the model is
built, then two optimizer steps (the first creates the optimizer states, the
second is the steady state), each of ``grad_accum`` traced micro-steps. Every
allocation carries a breakdown tag; at the moment allocated bytes peak, the
live bytes per tag are kept, so the prediction's parts add up to its total.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.predict import events as tr
from bench.predict.allocator import CachingAllocator
from bench.predict.events import TrainTrace

# breakdown names (the prediction's parts)
WEIGHTS = "weights"
GRADS = "gradients"
OPTIM = "optimizer_states"
ACTS = "activations"
LOGITS = "logits_and_loss"
TRANSIENT = "transient"
RESERVE = "allocator_reserve"
CONTEXT = "cuda_context_and_workspaces"
COMM = "communication_buffers"
KV = "kv_cache"
PARTS = (WEIGHTS, GRADS, OPTIM, ACTS, LOGITS, TRANSIENT, KV, COMM, CONTEXT, RESERVE)

_TRACE_TAGS = {"forward": ACTS, "input": ACTS, "logits": LOGITS, "backward": TRANSIENT, "grad": GRADS}


@dataclass
class Outcome:
    peak_allocated: int
    peak_reserved: int
    at_peak: dict[str, int] = field(default_factory=dict)
    oom: bool = False
    """A segment did not fit the allocator's limit even after releasing the cache."""
    retries: int = 0
    resident: dict[str, int] = field(default_factory=dict)
    """Bytes still allocated per part when the run ends (after the last optimizer step), as
    requested: what a rank keeps between steps (its weights, gradient and optimizer-state storage)."""
    need: int = 0
    """Under any allocator limit of at least this many bytes the run goes exactly as it
    did (``CachingAllocator.need``)."""
    decided: int = 0
    """Under any limit of at least this many bytes the program makes the same choices
    (``CachingAllocator.room_for``), so it asks for the same allocations."""
    floor: int = 0
    """The most bytes requested at once: a run with the same requests reserves at least
    this much under any limit, so a limit below it (and at least ``decided``) runs out."""

    def under(self, limit: int) -> bool | None:
        """What this run (made without a limit) says about ``limit``: True, the same run
        fits it (and is what the limited run would be); False, it runs out; None: only
        a replay under ``limit`` can tell (the cache released near the limit may save it)."""
        if self.need <= limit:
            return True
        if self.decided <= limit < self.floor:
            return False
        return None


class Program:
    """Allocation sequence with tags, replayed live through ``CachingAllocator``.

    ``at_peak`` (live bytes per part when allocated bytes peak) is taken lazily: a
    malloc that raises the peak only marks it, and the parts are copied before the
    next free (consecutive mallocs after a peak each raise it again).
    """

    def __init__(self) -> None:
        self.alloc = CachingAllocator()
        self._next = 0
        self._held_by: dict[int, tuple[str, int, int]] = {}
        """key -> (part, block size, bytes asked)."""
        self.live = {p: 0 for p in PARTS}
        self._at_peak: dict[str, int] = dict(self.live)
        self._peak_pending = False
        self.requested = {p: 0 for p in PARTS}
        """Live bytes per tag as requested (``live`` counts the allocator's blocks)."""
        self._asked_now = 0
        self.floor = 0
        self._held: list[int] = []

    @property
    def at_peak(self) -> dict[str, int]:
        if self._peak_pending:
            self._at_peak = dict(self.live)
            self._peak_pending = False
        return self._at_peak

    def malloc(self, nbytes: int, tag: str) -> int:
        self._next += 1
        key = self._next
        a = self.alloc
        before = a.peak_allocated
        size = a.malloc(key, nbytes, tag)
        self._held_by[key] = (tag, size, nbytes)
        self.live[tag] += size
        self.requested[tag] += nbytes
        self._asked_now += nbytes
        if self._asked_now > self.floor:
            self.floor = self._asked_now
        if a.peak_allocated > before:
            self._peak_pending = True
        return key

    def free(self, key: int) -> None:
        if self._peak_pending:
            self._at_peak = dict(self.live)
            self._peak_pending = False
        tag, size, asked = self._held_by.pop(key)
        self.live[tag] -= size
        self.requested[tag] -= asked
        self._asked_now -= asked
        self.alloc.free(key)

    def transient(self, nbytes: int, tag: str = TRANSIENT) -> None:
        if nbytes > 0:
            self.free(self.malloc(nbytes, tag))

    def micro_step(self, tt: TrainTrace, keep_grads: bool, grad_tag: str = GRADS, grad_sink=None) -> list[int]:
        """Replay one traced forward+backward; returns the keys of kept gradients.

        The previous micro-step's output (its logits, and its KV cache with
        ``use_cache``: whatever the trace left alive but the batch) stays alive until this
        forward returns, as ``out = model(**batch)`` in a training loop keeps it.

        ``keep_grads`` False: each new gradient is added into the existing
        ``.grad`` and freed at once (accumulation micro-steps). ``grad_sink``
        (a callable taking the gradient's bytes) lets ZeRO copy each gradient
        into its buckets and free it.
        """
        mapping: dict[int, int] = {}
        inputs: set[int] = set()
        kept: list[int] = []
        held, self._held = self._held, []
        malloc, free = self.malloc, self.free
        parts = {**_TRACE_TAGS, "grad": grad_tag}
        events = tt.trace.events
        end = tt.trace.forward_end
        for i, (kind, k, n, tag) in enumerate(events):
            if i == end:
                for key in held:
                    free(key)
                held = []
            if kind == tr.ALLOC:
                key = malloc(n, parts.get(tag, TRANSIENT))
                if tag == "grad":
                    if grad_sink is not None:
                        grad_sink(n)
                        free(key)
                    elif not keep_grads:
                        free(key)
                    else:
                        kept.append(key)
                else:
                    mapping[k] = key
                    if tag == "input":
                        inputs.add(k)
            elif k in mapping:
                free(mapping.pop(k))
        for key in held:
            free(key)
        for k, key in mapping.items():
            if k not in inputs:
                self._held.append(key)  # the output object (logits, KV cache), freed by the next forward
            else:
                free(key)  # the batch
        return kept

    def outcome(self) -> Outcome:
        a = self.alloc
        return Outcome(
            a.peak_allocated,
            a.peak_reserved,
            dict(self.at_peak),
            a.oom,
            a.retries,
            {k: v for k, v in self.requested.items() if v},
            need=a.need,
            decided=a.decided,
            floor=self.floor,
        )
