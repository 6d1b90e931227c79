"""Layer freezing on a built model: the embeddings and the first N blocks stop training.

``bench.recipe.is_frozen`` decides which parameters (by name, and whether
they belong to an embedding outside the blocks); this applies it with
``requires_grad_(False)``. The runner calls it on the model it trains, the
predictor on the meta model it traces, so a frozen parameter has no
gradient, no optimizer state and, below the first trainable block, no saved
activations in both.
"""

from __future__ import annotations

import torch

from bench import models
from bench.recipe import is_frozen


def apply(model: torch.nn.Module, freeze: int) -> int:
    """Freeze what the recipe says; returns the number of parameters frozen."""
    if not freeze:
        return 0
    embeddings = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    frozen = 0
    for name, p in model.named_parameters():
        if is_frozen(name, id(p) in embeddings, freeze):
            p.requires_grad_(False)
            frozen += models.param_numel(p)
    return frozen
