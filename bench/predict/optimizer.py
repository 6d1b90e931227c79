"""Optimizer state and step-time working set, per trainable parameter.

Optimizers are named by their flavour, as ``bench.recipe`` picks it
(``adamw-fused``, ``adamw-foreach``, ``sgd``, ``adafactor``, ``adamw-8bit``).

From the optimizers' own code (torch 2.x ``torch/optim/adamw.py``,
``transformers.optimization.Adafactor``, ``bitsandbytes.optim.AdamW8bit``):

- AdamW keeps ``exp_avg`` and ``exp_avg_sq`` in the parameter's dtype plus a
  ``step`` scalar per parameter (a 4-byte device tensor for fused/foreach).
  Fused AdamW updates in place; foreach AdamW builds one temporary the size of
  all parameters of a dtype group (``_foreach_sqrt(exp_avg_sqs)``).
- SGD (no momentum, as ``bench run`` builds it) keeps no state.
- Adafactor keeps factored row/column second moments for matrices (full for
  vectors) and, per parameter in turn, a few full-size fp32 temporaries
  (``grad**2``, the approximated update, the update times grad).
- 8-bit AdamW keeps two uint8 states with an fp32 absmax per 2048-element
  block; tensors under 4096 elements keep 32-bit states.
"""

from __future__ import annotations

from bench.predict.events import Param

BNB_MIN_8BIT = 4096
BNB_BLOCK = 2048


def state_tensors(optimizer: str, p: Param) -> list[int]:
    """Bytes of each state tensor the optimizer creates for parameter ``p``."""
    if optimizer in ("adamw-fused", "adamw-foreach"):
        return [p.nbytes, p.nbytes, 4]
    if optimizer == "sgd":
        return []
    if optimizer == "adafactor":
        if len(p.shape) >= 2:  # factored: one row and one column vector
            return [p.numel // p.shape[-1] * 4, p.numel // p.shape[-2] * 4]
        return [p.numel * 4]
    if optimizer == "adamw-8bit":
        if p.numel < BNB_MIN_8BIT:
            return [p.numel * 4, p.numel * 4, 4]
        blocks = -(-p.numel // BNB_BLOCK)
        return [p.numel, p.numel, blocks * 4, blocks * 4]
    raise ValueError(f"unknown optimizer {optimizer!r}")


def step_transient(optimizer: str, trainable: list[Param]) -> list[int]:
    """Temporary tensors alive together during ``optimizer.step()`` (bytes each)."""
    if not trainable:
        return []
    if optimizer == "adamw-foreach":  # _foreach_sqrt(exp_avg_sqs): one per parameter
        return [p.nbytes for p in trainable]
    if optimizer == "adafactor":
        return [max(p.numel for p in trainable) * 4] * 3
    return []
