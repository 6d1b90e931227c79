"""Memory a CUDA process holds outside PyTorch's caching allocator, and on the host.

Measured on an H200 (driver 580, CUDA 13, torch 2.11): NVML process usage
minus torch's reserved bytes was 758-770 MiB in every plain training row of
``tests/data/h200-2026-11.jsonl`` (context + loaded kernels + the
cuBLAS/cuBLASLt handles), 1.29 GiB for DeepSpeed rows and 0.81 GiB for the
FSDP row. The predictor adds these to the allocator's reserved peak; the
runner subtracts them from the target's capacity when a larger card emulates
a smaller one. A leaf module: it imports only ``bench.dtypes``.
"""

from __future__ import annotations

from bench.dtypes import GiB, MiB

CONTEXT_BYTES = 760 * MiB
"""CUDA context, loaded kernels and the cuBLAS/cuBLASLt handles."""
NCCL_BYTES = 50 * MiB
"""An NCCL communicator (DDP, FSDP)."""
DEEPSPEED_BYTES = 530 * MiB
"""DeepSpeed's runtime and its communicator on top of the context."""
HOST_BASE_BYTES = 3 * GiB
"""Host memory of a CUDA training process before any offload (libraries, CUDA
host allocations); a rough figure, only the offloaded bytes are derived."""


def outside_allocator_bytes(engine: str) -> int:
    """Device bytes outside the allocator for a recipe's engine."""
    if engine == "deepspeed":
        return CONTEXT_BYTES + DEEPSPEED_BYTES
    if engine in ("fsdp", "ddp"):
        return CONTEXT_BYTES + NCCL_BYTES
    return CONTEXT_BYTES
