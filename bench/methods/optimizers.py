"""The optimizer a recipe names, built the way the reference protocol built it.

The recipe picks the flavour (``bench.recipe``): ``adamw-fused`` is
``torch.optim.AdamW(fused=True)`` on CUDA (fused kernels are what trainers
use there; ``foreach=True`` on the CPU); ``adamw-foreach`` is torch's default
AdamW (foreach), the flavour of FSDP2 shards and DeepSpeed's client
optimizer; ``sgd`` keeps no state; ``adafactor`` is transformers' factored
optimizer; ``adamw-8bit`` is bitsandbytes' and needs CUDA.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

LR = 1e-5
"""Small on purpose: random data, and the loss must stay finite for fp16."""


def build(name: str, params: Iterable[torch.nn.Parameter], device: str) -> torch.optim.Optimizer:
    """An optimizer over ``params`` (trainable ones only) for ``device`` (``cuda``/``cpu``)."""
    params = [p for p in params if p.requires_grad]
    if name == "adamw-fused":
        if device == "cuda" and all(p.is_cuda for p in params):
            return torch.optim.AdamW(params, lr=LR, fused=True)
        return torch.optim.AdamW(params, lr=LR, foreach=True)
    if name == "adamw-foreach":
        return torch.optim.AdamW(params, lr=LR, foreach=True)
    if name == "sgd":
        return torch.optim.SGD(params, lr=LR)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=None, scale_parameter=True, relative_step=True, warmup_init=False)
    if name == "adamw-8bit":
        if device != "cuda":
            raise RuntimeError("optimizer adamw-8bit needs bitsandbytes on a CUDA GPU; it cannot run on --device cpu")
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=LR)
    raise ValueError(f"unknown optimizer {name!r}")
