"""Which SDPA kernel CUDA runs for T5's attention call, and what it keeps for backward.

T5 hands ``scaled_dot_product_attention`` its relative position bias as a float
additive mask that requires grad, with dropout 0.1. ``compute_bias`` returns it
as a permuted view (last-dimension stride ``n_heads``); CUDA's fused kernels
need stride 1 there (``check_last_dim_stride_equals_1_dense``) and fall back to
the math path, which keeps the ``B x H x S x S`` scores, unless the caller makes
the mask contiguous (transformers >= 5.25 does). The predictor follows that rule.
On a GPU this script checks it: for the strided and the contiguous mask at
flan-t5-large's shape it prints which backends torch accepts (``debug=True``
prints why not) and how many bytes the forward leaves allocated for backward,
against the ``B x H x S x S`` size::

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
    # (S, S, H) permuted to (1, H, S, S), as T5's compute_bias returns it; and its contiguous copy
    strided = torch.randn(s, s, h, device="cuda", dtype=torch.bfloat16).permute(2, 0, 1).unsqueeze(0)
    strided.requires_grad_(True)
    for mask, what in ((strided, "strided mask (as computed)"), (strided.contiguous(), "contiguous mask")):
        params = torch.backends.cuda.SDPAParams(q, k, v, mask, a.dropout, False, False)
        for name in ("flash", "efficient", "cudnn"):
            ok = getattr(torch.backends.cuda, f"can_use_{name}_attention")(params, True)
            print(f"{what}: can_use_{name}_attention = {ok}")
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=a.dropout, scale=1.0)
        torch.cuda.synchronize()
        kept = torch.cuda.memory_allocated() - before - out.untyped_storage().nbytes()
        square = b * h * s * s
        print(f"{what}: kept for backward {kept:,} bytes = {kept / square:.2f} bytes per B x H x S x S element")
        out.float().sum().backward()
        del out
    return 0


if __name__ == "__main__":
    sys.exit(main())
