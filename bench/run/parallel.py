"""Data-parallel strategies: process group, DDP, DeepSpeed ZeRO, FSDP2.

Every strategy runs in a real process group, also with one rank (see
``bench.run.ranks``): NCCL on CUDA, gloo on the CPU.

- ZeRO-1/2/3 (with offload): ``deepspeed.initialize`` with a torch client
  optimizer and ``bench.dsconfig.deepspeed_config`` (which honours the cell's
  ``ds_config``), the model handed over on the CPU in fp32, as the HF Trainer does.
- FSDP2: ``fully_shard`` on every transformer block (the model's
  ``_no_split_modules``) and then the root, ``MixedPrecisionPolicy(param_dtype=
  fp16/bf16, reduce_dtype=fp32)`` for mixed precision, ``CPUOffloadPolicy()``
  for ``offload: all``.
- DDP: ``DistributedDataParallel`` around the model.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from bench import dsconfig
from bench.cell import Cell
from bench.run.ranks import local_rank, world_size

HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}


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


def build_on(cell: Cell, device: str) -> str:
    """Where the model is built before the strategy takes it over.

    DeepSpeed gets it on the CPU in fp32 (as the HF Trainer hands it over);
    FSDP over several ranks or with CPU offload too (``fully_shard`` moves
    each rank's shard to its device); everything else directly on the device.
    """
    if cell.strategy.startswith("zero"):
        return "cpu"
    if cell.strategy == "fsdp" and (cell.offload == "all" or world_size() > 1):
        return "cpu"
    return f"cuda:{local_rank()}" if device == "cuda" else "cpu"


def _skip_shm_build() -> None:
    """DeepSpeed compiles a shared-memory all-reduce op when it runs on the CPU
    (about a minute, once per machine). gloo does the job; skip the compile."""
    import importlib

    ds_torch = importlib.import_module("deepspeed.comm.torch")  # not `import ... as`: deepspeed.comm re-exports torch
    if hasattr(ds_torch, "build_shm_op"):
        ds_torch.build_shm_op = lambda: None


def deepspeed_engine(model: torch.nn.Module, optimizer: torch.optim.Optimizer, cell: Cell,
                     hidden_size: int | None, device: str) -> Any:
    """``deepspeed.initialize`` for a ZeRO cell; returns the engine."""
    import deepspeed

    if device == "cpu":
        _skip_shm_build()
    deepspeed.init_distributed(dist_backend=backend(device))
    config = dsconfig.deepspeed_config(cell, hidden_size)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    return engine


def _blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks: modules whose class the model says not to split."""
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or [])
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if not blocks:
        raise RuntimeError(f"fsdp: {type(model).__name__} names no transformer block class (_no_split_modules)")
    return blocks


def fsdp(model: torch.nn.Module, cell: Cell, device: str) -> torch.nn.Module:
    """FSDP2: shard every block, then the root; returns the (same) module."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    kwargs: dict[str, Any] = {"mesh": init_device_mesh(device, (world_size(),))}
    if cell.precision in HALF:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=HALF[cell.precision], reduce_dtype=torch.float32)
    if cell.offload == "all":
        kwargs["offload_policy"] = CPUOffloadPolicy(pin_memory=device == "cuda")
    for block in _blocks(model):
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    return model


def ddp(model: torch.nn.Module, device: str) -> torch.nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    if device == "cuda":
        return DistributedDataParallel(model, device_ids=[local_rank()])
    return DistributedDataParallel(model)
