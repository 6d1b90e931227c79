"""Predict the H200 T5 record with the T5 attention mask as the record's transformers built it.

Run as a child process by ``tests/test_predict_gpu_runs.py`` (fresh caches, no trace cache):
``python tests/t5_as_measured.py CELL_JSON`` prints the prediction as JSON.

The record was measured with transformers 5.17, whose ``create_position_bias_mask`` handed
SDPA the relative position bias as computed: ``compute_bias`` returns a permuted view, so the
mask's last dimension has stride ``n_heads``, and CUDA's fused kernels refuse it (math path,
``B x H x S x S`` scores kept). transformers 5.25 returns ``.contiguous()`` of the same mask,
so today's T5 goes to a fused kernel. This replaces the function by the 5.17 form only.
"""

from __future__ import annotations

import json
import os
import sys

os.environ["BENCH_CACHE_DIR"] = "off"

import torch  # noqa: E402
import transformers.integrations.sdpa_attention as sdpa  # noqa: E402


def mask_as_in_5_17(position_bias, attention_mask, is_causal, query, key):
    """The combined float mask, without making it contiguous (transformers 5.17)."""
    fill = torch.finfo(key.dtype).min
    if attention_mask is None:
        if not is_causal:
            return position_bias
        q_len, k_len = query.shape[2], key.shape[2]
        causal = torch.arange(q_len, device=key.device)[:, None] >= torch.arange(k_len, device=key.device)[None, :]
        return torch.where(causal.view(1, 1, q_len, k_len), position_bias, fill)
    if attention_mask.dtype == torch.bool:
        return torch.where(attention_mask, position_bias, fill)
    return position_bias + attention_mask


def main() -> None:
    from bench.cell import normalize
    from bench.predict import predict

    sdpa.create_position_bias_mask = mask_as_in_5_17
    p = predict(normalize(json.loads(sys.argv[1])))
    print(json.dumps({"peak_bytes": p.peak_bytes, "activations": p.breakdown["activations"]}))


if __name__ == "__main__":
    main()
