"""What one rank keeps allocated between optimizer steps, counted from the live objects.

After the last step of a ``train`` cell the child counts, per part, the
storage of the tensors that hold the rank's weights, gradients and optimizer
states: the model's parameters and buffers (local shards under FSDP2, the
flat partitions and persistent parameters under ZeRO-3, the flat bit16 buffer
under ZeRO-1/2), ``.grad`` and DeepSpeed's gradient partitions, and the
optimizer's state (plus DeepSpeed's fp32 master partitions). Each storage is
counted once however many views share it. The predictor's
``Prediction.resident_bytes`` says the same for the replayed run, so the two
can be compared rank by rank without a GPU.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

PARTS = ("weights", "gradients", "optimizer_states")


def _storages(tensors: Iterable[Any]) -> dict[int, int]:
    """data_ptr -> nbytes of the storage behind each tensor (DTensors by their local shard)."""
    out: dict[int, int] = {}
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            continue
        local = t.to_local() if hasattr(t, "to_local") else t
        storage = local.untyped_storage()
        if storage.nbytes():
            out[storage.data_ptr()] = storage.nbytes()
    return out


def _sum(parts: dict[str, dict[int, int]]) -> dict[str, int]:
    seen: set[int] = set()
    out = {}
    for name in PARTS:  # a storage counts for the first part that holds it
        fresh = {k: v for k, v in parts[name].items() if k not in seen}
        seen.update(fresh)
        out[name] = sum(fresh.values())
    return out


def _state_tensors(optimizer: Any) -> list[Any]:
    return [t for state in optimizer.state.values() for t in state.values()]


def resident_bytes(module: Any, optimizer: Any, deepspeed: bool) -> dict[str, int]:
    """Per part, the bytes of storage this rank holds (see the module docstring)."""
    if deepspeed:
        return _deepspeed(module)
    model = getattr(module, "module", module)  # DDP wraps the model
    weights = _storages([*model.parameters(), *model.buffers()])
    grads = _storages(p.grad for p in model.parameters() if p.grad is not None)
    states = _storages(_state_tensors(optimizer)) if optimizer is not None else {}
    return _sum({"weights": weights, "gradients": grads, "optimizer_states": states})


def _deepspeed(engine: Any) -> dict[str, int]:
    opt = engine.optimizer
    params = list(engine.module.parameters())
    weights = _storages(
        [
            *(getattr(p, "ds_tensor", None) for p in params),
            *(p.data for p in params),
            *engine.module.buffers(),
            *getattr(opt, "fp16_partitioned_groups_flat", []),
            *getattr(opt, "bit16_groups_flat", []),
        ]
    )
    grads = _storages(
        [
            getattr(opt, "grad_partitions_flat_buffer", None),
            getattr(opt, "grads_in_partition", None),
            *(p.grad for p in params if p.grad is not None),
        ]
    )
    masters = [*getattr(opt, "fp32_partitioned_groups_flat", []), *getattr(opt, "single_partition_of_fp32_groups", [])]
    states = _storages([*masters, *_state_tensors(opt.optimizer)])
    return _sum({"weights": weights, "gradients": grads, "optimizer_states": states})
