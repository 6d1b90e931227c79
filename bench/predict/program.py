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

from bench.predict import trace as tr
from bench.predict.allocator import CachingAllocator
from bench.predict.trace import TrainTrace

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


class Program:
    """Allocation sequence with tags, replayed live through ``CachingAllocator``."""

    def __init__(self) -> None:
        self.alloc = CachingAllocator()
        self._next = 0
        self._tag: dict[int, tuple[str, int]] = {}
        self.live = {p: 0 for p in PARTS}
        self.at_peak: dict[str, int] = dict(self.live)
        self.requested = {p: 0 for p in PARTS}
        """Live bytes per tag as requested (``live`` counts the allocator's blocks)."""
        self._asked: dict[int, int] = {}
        self._held: list[int] = []

    def malloc(self, nbytes: int, tag: str) -> int:
        self._next += 1
        key = self._next
        before = self.alloc.peak_allocated
        self.alloc.malloc(key, nbytes, tag)
        size = self.alloc._blocks[key].size
        self._tag[key] = (tag, size)
        self.live[tag] += size
        self.requested[tag] += nbytes
        self._asked[key] = nbytes
        if self.alloc.peak_allocated > before:
            self.at_peak = dict(self.live)
        return key

    def free(self, key: int) -> None:
        tag, size = self._tag.pop(key)
        self.live[tag] -= size
        self.requested[tag] -= self._asked.pop(key)
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
        traced_tag: dict[int, str] = {}
        kept: list[int] = []
        held, self._held = self._held, []
        for i, (kind, k, n, tag) in enumerate(tt.trace.events):
            if i == tt.trace.forward_end:
                for key in held:
                    self.free(key)
                held = []
            if kind == tr.ALLOC:
                part = grad_tag if tag == "grad" else _TRACE_TAGS.get(tag, TRANSIENT)
                key = self.malloc(n, part)
                if tag == "grad" and grad_sink is not None:
                    grad_sink(n)
                    self.free(key)
                elif tag == "grad" and not keep_grads:
                    self.free(key)
                elif tag == "grad":
                    kept.append(key)
                else:
                    mapping[k] = key
                    traced_tag[k] = tag
            elif k in mapping:
                self.free(mapping.pop(k))
        for key in held:
            self.free(key)
        for k, key in mapping.items():
            if traced_tag[k] != "input":
                self._held.append(key)  # the output object (logits, KV cache), freed by the next forward
            else:
                self.free(key)  # the batch
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
        )
