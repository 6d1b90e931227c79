"""Two host-side ratios of the generation time model, measured on this machine's CPU.

The step-time model's host costs (``bench/data/gpus.json``, ``speed.host``) were
fitted on training rows, whose forward runs with autograd recording. Generation
runs under ``torch.no_grad`` and adds ``generate()``'s own per-token work
(logits processors, stopping criteria, cache and input bookkeeping). Both are
host work of the same Python/ATen stack, so they are measured here as ratios to
the cost of one dispatched op, which carry over to another host where the
absolute costs do not:

- ``no_grad_op_fraction``: host time of a forward under ``torch.no_grad`` over
  the same forward with autograd recording;
- ``generate_token_ops``: ``generate()``'s per-token time beyond its decode
  forward, in no-grad forward ops.

Tiny tensors on one CPU thread, so that kernel time is small beside dispatch;
runs are interleaved so that a loaded machine slows both sides alike. Prints
the medians over repeats as JSON.

    python scripts/measure_host_ratios.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import DynamicCache, GPT2Config, GPT2LMHeadModel


class _Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


def _seconds(fn, n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


def measure(repeats: int) -> dict:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    cfg = GPT2Config(n_embd=64, n_layer=8, n_head=4, vocab_size=128, n_positions=256, bos_token_id=0, eos_token_id=0)
    cfg._attn_implementation = "sdpa"
    model = GPT2LMHeadModel(cfg).eval()
    prompt = torch.randint(1, 128, (1, 16))
    new = 48

    def forward():
        model(input_ids=prompt, use_cache=False)

    with torch.no_grad():
        name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        cache = DynamicCache(config=cfg)
        model(input_ids=prompt, use_cache=True, **{name: cache})
        token = prompt[:, -1:]

        def decode():
            model(input_ids=token, use_cache=True, **{name: cache})
            cache.crop(-1)

        counter = _Count()
        with counter:
            decode()
        decode_ops = counter.ops

    def generate():
        model.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)

    fractions, token_ops = [], []
    for _ in range(repeats):
        grad = _seconds(forward, 50)
        with torch.no_grad():
            no_grad = _seconds(forward, 50)
            step = _seconds(decode, 100)
        gen = _seconds(generate, 3)
        # generate(): one prefill and ``new - 1`` decode forwards plus its own work per token
        with torch.no_grad():
            pre = _seconds(lambda: model(input_ids=prompt, use_cache=True), 20)
        per_token = (gen - pre) / new - step
        fractions.append(no_grad / grad)
        token_ops.append(per_token / (step / decode_ops))
    return {
        "no_grad_op_fraction": round(statistics.median(fractions), 3),
        "generate_token_ops": round(statistics.median(token_ops), 1),
        "decode_ops": decode_ops,
        "spread": {
            "no_grad_op_fraction": [round(min(fractions), 3), round(max(fractions), 3)],
            "generate_token_ops": [round(min(token_ops), 1), round(max(token_ops), 1)],
        },
        "torch": torch.__version__,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    print(json.dumps(measure(ap.parse_args().repeats), indent=1))


if __name__ == "__main__":
    main()
