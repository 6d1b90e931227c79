"""QLoRA base weights: what bitsandbytes 4-bit (nf4) storage costs per parameter.

``bench run`` loads the base through transformers' bitsandbytes integration
(``BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
bnb_4bit_use_double_quant=True)``, default ``bnb_4bit_quant_storage=uint8``)
and then calls PEFT's ``prepare_model_for_kbit_training``.

- Which weights: ``replace_with_bnb_linear``
  (``transformers/integrations/bitsandbytes.py:185-208``) swaps every
  ``nn.Linear`` and ``Conv1D`` for ``Linear4bit`` except the modules of
  ``get_keys_to_not_convert`` (``transformers/quantizers/base.py:39-63``):
  the output embedding (``lm_head``), tied weights and the last module.
  Embeddings, norms and biases are no linear weights. LoRA adapters are added
  after quantization and stay as they are.
- What a quantized weight holds (``bitsandbytes/functional.py``
  ``quantize_4bit`` with ``blocksize=64``, ``compress_statistics=True``): the
  packed 4-bit values, two per ``uint8`` (``(n + 1) // 2`` bytes); one absmax
  per 64-block, itself quantized to ``uint8`` by ``quantize_blockwise`` in
  blocks of 256 with an fp32 absmax per such block plus an fp32 offset; the
  16-entry fp32 nf4 code table. The 256-entry fp32 dynamic map of the nested
  quantization is one shared tensor (``name2qmap``), not counted per weight.
- Everything else: ``prepare_model_for_kbit_training``
  (``peft/utils/other.py:203-209``) casts every fp16/bf16 parameter that is
  not ``Params4bit`` to fp32.
"""

from __future__ import annotations

from bench.predict.events import Param

BLOCK = 64
NESTED_BLOCK = 256
NF4_CODE = 16 * 4
HEAD_NAMES = ("lm_head", "embed_out")
NOT_LINEAR = ("embed", "wte", "wpe", "shared", "relative_attention_bias", "position", "norm", "ln_")


def is_quantized(p: Param) -> bool:
    """Whether transformers' bnb integration stores ``p`` as ``Params4bit``."""
    parts = p.name.split(".")
    module = parts[-2] if len(parts) > 1 else ""
    if parts[-1] != "weight" or len(p.shape) != 2:
        return False
    if "lora_" in p.name or module in HEAD_NAMES:
        return False
    return not any(mark in module for mark in NOT_LINEAR)


def nf4_bytes(numel: int) -> int:
    """Device bytes of one nf4 weight with double quantization."""
    blocks = -(-numel // BLOCK)
    nested = -(-blocks // NESTED_BLOCK)
    return (numel + 1) // 2 + blocks + nested * 4 + 4 + NF4_CODE


def packed_bytes(numel: int) -> int:
    """The packed 4-bit values alone, two per byte: what ``Params4bit`` itself stores."""
    return (numel + 1) // 2


def sharded_params(params, storage_bytes: int) -> tuple[tuple[Param, ...], int]:
    """QLoRA under ZeRO-3 or FSDP2 (``bnb_4bit_quant_storage`` = the compute dtype, as these
    recipes set it): each quantized weight becomes a flat tensor of its packed bytes in the
    storage dtype, which the strategy shards like any parameter; its quantization state
    (absmax, nested absmax, code table) stays whole on every rank. Other parameters are
    upcast as ``nf4_weight_bytes`` says. Returns (the parameters as sharded, replicated bytes)."""
    out, replicated = [], 0
    for p in params:
        if is_quantized(p):
            elements = -(-packed_bytes(p.numel) // storage_bytes)
            out.append(Param(p.name, elements, elements * storage_bytes, False, (elements,)))
            replicated += nf4_bytes(p.numel) - packed_bytes(p.numel)
        else:
            n = nf4_weight_bytes(p)
            out.append(Param(p.name, p.numel, n, p.trainable, p.shape))
    return tuple(out), replicated


def nf4_weight_bytes(param: Param) -> int:
    """Bytes ``param`` occupies on the GPU in a QLoRA model."""
    if is_quantized(param):
        return nf4_bytes(param.numel)
    if param.nbytes == 2 * param.numel and "lora_" not in param.name:
        return param.numel * 4  # upcast to fp32 by prepare_model_for_kbit_training (before the adapters exist)
    return param.nbytes
