"""Architectures: which models bench can build, trace and run, and the choices they force.

bench builds a model from a config (``bench.models.build``) with the cell's
``head``: ``lm``, a causal LM, or a sequence-to-sequence LM for
encoder-decoders; ``seq-cls`` / ``token-cls``, transformers'
``AutoModelForSequenceClassification`` / ``AutoModelForTokenClassification``
(the model's own loss on class ids). Everything else is refused up front, at
validation, with one line naming the ``model_type`` and what is allowed,
instead of failing inside transformers:

- Encoder-only models (BERT, RoBERTa, DeBERTa, ...) are fine-tuned with a
  classification head; their causal-LM form (``BertLMHeadModel`` needs
  ``is_decoder``) is not how they are trained, so ``head: lm`` is refused.
- Decoder-only models take a classification head too (``LlamaForSequenceClassification``
  scores the last token that is not padding; with no ``pad_token_id`` in the
  config, ``models.build`` sets the ``eos_token_id``, as fine-tuning scripts do).
  Encoder-decoders do not: their classification models find ``eos`` tokens in
  every input, which random ids do not hold.
- Mixture-of-Experts models (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, ...) build
  and train, with two decisions taken here for both the predictor and the
  runner (one place, so the two cannot drift):

  * ``experts_implementation``: transformers >= 5 stores the experts as fused
    3-D tensors and multiplies them with ``grouped_mm`` by default, a kernel
    that takes bf16 only (``torch.nn.functional.grouped_mm``: "bfloat16 on
    CUDA devices with SM >= 80"; transformers casts the input to the weight's
    dtype and the kernel refuses fp32/fp16). Models whose weights are not bf16
    (fp32 master weights under mixed precision, fp16, fp32) therefore use
    transformers' ``eager`` loop over the experts.
  * QLoRA is refused: bitsandbytes' 4-bit conversion replaces ``nn.Linear``
    modules only, so the fused experts (most of an MoE's weights) stay in
    16 bits and PEFT's ``prepare_model_for_kbit_training`` then upcasts them to
    fp32 (bitsandbytes issue #1849); what QLoRA users expect of an MoE, the
    experts in 4 bits, is not what this stack runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.models import ModelSpec

ENCODER_ONLY = frozenset(
    {
        "bert",
        "roberta",
        "xlm-roberta",
        "xlm-roberta-xl",
        "deberta",
        "deberta-v2",
        "distilbert",
        "albert",
        "electra",
        "camembert",
        "modernbert",
        "mpnet",
        "ernie",
        "roformer",
        "megatron-bert",
        "nomic_bert",
        "esm",
        "luke",
        "xlm",
        "flaubert",
        "squeezebert",
        "mobilebert",
        "funnel",
        "convbert",
        "ibert",
    }
)
"""``model_type`` values of encoder-only models (transformers' masked-LM families)."""

_EXPERT_COUNT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts")
CLASSIFICATION_HEADS = ("seq-cls", "token-cls")
"""The ``head`` values of a classification model (the rest is ``lm``)."""


def is_encoder_only(spec: ModelSpec) -> bool:
    """Whether the model is an encoder-only (masked-LM family) model."""
    return spec.model_type in ENCODER_ONLY


def _configs(config: dict) -> list[dict]:
    """The config and the text sub-config of a multimodal wrapper (Gemma-3 keeps it in ``text_config``)."""
    sub = config.get("text_config")
    return [config, sub] if isinstance(sub, dict) else [config]


def is_moe(spec: ModelSpec) -> bool:
    """Whether the model routes tokens to more than one expert MLP."""
    for c in _configs(spec.config):
        for key in _EXPERT_COUNT_KEYS:
            n = c.get(key)
            if isinstance(n, int) and not isinstance(n, bool) and n > 1:
                return True
    return False


def experts_implementation(spec: ModelSpec, weight_dtype: str | None) -> str | None:
    """transformers' ``experts_implementation`` for ``spec`` at ``weight_dtype``; None: its default.

    ``weight_dtype`` is the dtype the weights are built in (a string such as
    ``"bfloat16"``/``"bf16"`` or a ``torch.dtype``); None means fp32.
    """
    if not is_moe(spec):
        return None
    name = str(weight_dtype or "float32").replace("torch.", "")
    return None if name in ("bfloat16", "bf16") else "eager"


def problems(spec: ModelSpec, tuning: str = "full", where: str = "", head: str = "lm") -> list[str]:
    """Why ``spec`` (with ``tuning`` and ``head``) cannot be built and stepped; empty when it can."""
    found = []
    model_type = spec.model_type
    if model_type in ENCODER_ONLY and head == "lm":
        found.append(
            f"{where}head: 'lm' is not supported for the encoder-only model_type {model_type!r} of {spec.name} "
            f"(encoders are fine-tuned with a task head); allowed: {', '.join(CLASSIFICATION_HEADS)}"
        )
    elif head != "lm" and spec.is_encoder_decoder:
        found.append(
            f"{where}head: {head!r} is not supported for the encoder-decoder model_type {model_type!r} "
            f"(its classification models need eos tokens in every input); allowed: lm"
        )
    elif tuning == "qlora" and is_moe(spec):
        found.append(
            f"{where}tuning: 'qlora' is not supported for the Mixture-of-Experts model_type {model_type!r}: "
            f"bitsandbytes 4-bit leaves transformers' fused expert tensors unquantized (then upcast to "
            f"fp32), so the experts would not be in 4 bits; allowed: lora, full"
        )
    return found


def moe_dtype_problem(spec: ModelSpec, weight_dtype: str) -> str:
    """Why an MoE whose weights are traced in ``weight_dtype`` (not bf16) cannot be predicted."""
    return (
        f"model: {spec.name}: the Mixture-of-Experts model_type {spec.model_type!r} is predicted with bf16 "
        f"weights only (with {weight_dtype} weights transformers loops over the experts, and how many tokens "
        f"each gets depends on the data); allowed: precision pure-bf16, lora with precision bf16, or "
        f"zero1-3 with precision bf16"
    )


def expert_lora_problem(spec: ModelSpec) -> str:
    """Why LoRA on the fused experts' tensors (PEFT ``target_parameters``) is refused."""
    return (
        f"lora_targets: LoRA on the fused expert tensors of the Mixture-of-Experts model_type "
        f"{spec.model_type!r} is not supported; allowed: attention or other nn.Linear modules, "
        f"e.g. lora_targets: [q_proj, k_proj, v_proj, o_proj]"
    )


def wraps_experts(model) -> bool:
    """Whether PEFT put a LoRA adapter on a parameter rather than a module (its ``ParamWrapper``)."""
    return any(type(m).__name__ == "ParamWrapper" for m in model.modules())
