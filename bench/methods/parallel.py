"""Data-parallel strategies: process group, DDP, DeepSpeed ZeRO, FSDP2.

Every strategy runs in a real process group, also with one rank (see
``bench.methods.ranks``): NCCL on CUDA, gloo on the CPU.

- ZeRO-1/2/3 (with offload): ``deepspeed.initialize`` with a torch client
  optimizer and ``bench.dsconfig.deepspeed_config`` (which honours the cell's
  ``ds_config``). ZeRO-3 models are built under ``zero_init`` (partitioned as
  they are built), the others handed over on the CPU in fp32, as the HF
  Trainer does.
- FSDP2: ``fully_shard`` on every transformer block (``bench.recipe.block_of``)
  and then the root, ``MixedPrecisionPolicy(param_dtype=
  fp16/bf16, reduce_dtype=fp32)`` for mixed precision, ``CPUOffloadPolicy()``
  for ``offload: all``.
- DDP: ``DistributedDataParallel`` around the model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

from bench import dsconfig
from bench.cell import Cell
from bench.dtypes import torch_dtype
from bench.methods.ranks import local_rank, world_size
from bench.recipe import Recipe, is_block


def backend(device: str) -> str:
    return "nccl" if device == "cuda" else "gloo"


def init(device: str) -> None:
    """Start the default process group for ``device`` (once)."""
    if dist.is_initialized():
        return
    if device == "cuda":
        dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank()))
    else:
        dist.init_process_group("gloo")


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _skip_shm_build() -> None:
    """DeepSpeed compiles a shared-memory all-reduce op when it runs on the CPU
    (about a minute, once per machine). gloo does the job; skip the compile."""
    import importlib

    ds_torch = importlib.import_module("deepspeed.comm.torch")  # not `import ... as`: deepspeed.comm re-exports torch
    if hasattr(ds_torch, "build_shm_op"):
        ds_torch.build_shm_op = lambda: None  # type: ignore[attr-defined]


def zero_init(cell: Cell, hidden_size: int | None, device: str) -> Any:
    """``deepspeed.zero.Init`` with the cell's DeepSpeed config: modules built inside
    it are partitioned across the ranks as each is built (the HF Trainer's ZeRO-3 path).

    transformers' own weight init (``init_weights``, run by each model's ``post_init``) is
    skipped inside it: the layers are partitioned into empty shards by then, so it would
    initialise nothing, and zeroing an embedding's ``padding_idx`` row (BERT, or a decoder
    given a ``pad_token_id``) indexes an empty shard. The weights keep the default init
    each torch layer ran before it was partitioned."""
    import deepspeed

    deepspeed_ready(device)
    return _partitioned(deepspeed.zero.Init(config_dict_or_path=dsconfig.deepspeed_config(cell, hidden_size)))


@contextlib.contextmanager
def _partitioned(init: Any) -> Iterator[None]:
    """``init`` (``zero.Init``) entered with transformers' ``init_weights`` a no-op (see ``zero_init``)."""
    from transformers import PreTrainedModel

    original = PreTrainedModel.init_weights
    PreTrainedModel.init_weights = lambda self: None  # type: ignore[method-assign]
    try:
        with init:
            yield
    finally:
        PreTrainedModel.init_weights = original  # type: ignore[method-assign]


def deepspeed_ready(device: str) -> None:
    """DeepSpeed's process group on ``device``'s backend, before anything builds under ``zero.Init``
    (bench's own, or the one transformers enters for the HF Trainer)."""
    import deepspeed
    import torch._dynamo.polyfills.tensor  # noqa: F401  registered before zero.Init patches Tensor.__new__

    if device == "cpu":
        _skip_shm_build()
    deepspeed.init_distributed(dist_backend=backend(device))


def deepspeed_engine(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, cell: Cell, hidden_size: int | None, device: str
) -> Any:
    """``deepspeed.initialize`` for a ZeRO cell; returns the engine."""
    import deepspeed

    if device == "cpu":
        _skip_shm_build()
    deepspeed.init_distributed(dist_backend=backend(device))
    config = dsconfig.deepspeed_config(cell, hidden_size)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    return engine


def blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks, as ``bench.recipe.block_of`` defines them."""
    found = [m for name, m in model.named_modules() if is_block(name)]
    if not found:
        raise RuntimeError(f"fsdp: {type(model).__name__} has no transformer blocks (no ModuleList of layers)")
    return found


def fsdp(model: torch.nn.Module, recipe: Recipe, device: str) -> torch.nn.Module:
    """FSDP2: shard every block, then the root; returns the (same) module."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    kwargs: dict[str, Any] = {"mesh": init_device_mesh(device, (world_size(),))}
    if recipe.fsdp_param_dtype is not None:
        kwargs["mp_policy"] = MixedPrecisionPolicy(
            param_dtype=torch_dtype(recipe.fsdp_param_dtype), reduce_dtype=torch.float32
        )
    if recipe.offload == "all":
        kwargs["offload_policy"] = CPUOffloadPolicy(pin_memory=device == "cuda")
    for block in blocks(model):
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    return model


def materialize(model: torch.nn.Module, device: str) -> None:
    """Give a model built on the meta device (and sharded) real storage on ``device``,
    with transformers' own initialization of its weights and buffers."""
    model.to_empty(device=device)
    base: Any = model.get_base_model() if hasattr(model, "get_base_model") else model  # type: ignore[operator]
    with torch.no_grad():
        base.init_weights()


def ddp(model: torch.nn.Module, device: str) -> torch.nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    if device == "cuda":
        return DistributedDataParallel(model, device_ids=[local_rank()])
    return DistributedDataParallel(model)
