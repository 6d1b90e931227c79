"""Which SDPA kernel CUDA runs for T5's attention call, and what it keeps for backward.

T5 hands ``scaled_dot_product_attention`` its relative position bias as a float
additive mask that requires grad, with dropout 0.1, under bf16 autocast. The
predictor assumes a fused kernel (output and logsumexp kept); the H200 run of
flan-t5-large kept about what eager attention keeps (the ``B x H x S x S``
probabilities of every layer). On a GPU this script prints, for that call at
flan-t5-large's shape, which backends torch accepts (``debug=True`` prints why
not) and how many bytes the forward leaves allocated for backward, against the
``B x H x S x S`` size, so the predictor's rule can follow what CUDA does::

    python scripts/sdpa_backend.py [--batch 8] [--seq 512] [--heads 16] [--head-dim 64]

Exit 2 without a CUDA GPU.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--dropout", type=float, default=0.1)
    a = p.parse_args(argv)
    import torch
    import torch.nn.functional as F

    if not torch.cuda.is_available():
        print("sdpa_backend: no CUDA GPU", file=sys.stderr)
        return 2
    b, h, s, d = a.batch, a.heads, a.seq, a.head_dim
    q, k, v = (torch.randn(b, h, s, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    bias = torch.randn(1, h, s, s, device="cuda", requires_grad=True)  # fp32, as T5 computes it
    for mask, what in ((bias.to(torch.bfloat16), "bf16 mask (autocast's cast)"), (bias, "fp32 mask")):
        params = torch.backends.cuda.SDPAParams(q, k, v, mask, a.dropout, False, False)
        for name in ("flash", "efficient", "cudnn"):
            ok = getattr(torch.backends.cuda, f"can_use_{name}_attention")(params, True)
            print(f"{what}: can_use_{name}_attention = {ok}")
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=a.dropout, scale=1.0)
    torch.cuda.synchronize()
    kept = torch.cuda.memory_allocated() - before - out.untyped_storage().nbytes()
    square = b * h * s * s
    print(f"kept for backward: {kept:,} bytes = {kept / square:.2f} bytes per B x H x S x S element")
    out.float().sum().backward()
    return 0


if __name__ == "__main__":
    sys.exit(main())
