"""Checks of a model's ``config.json`` before anything builds or traces it.

A user's config is input like any other: ``n_positions: "abc"``, a negative
vocabulary, heads that do not divide the width or a million layers would
otherwise surface as a traceback deep in transformers, or as a trace that
runs for minutes. ``problems(config, where)`` returns one line per problem,
without importing torch or transformers:

- every dimension bench reads (``DIMENSIONS``) is an integer >= its minimum
  (``null`` where transformers derives it) and at most its cap in
  ``bench.limits.MODEL_MAX`` ("too large to trace; the limit is ...");
- the width splits evenly into the heads (unless ``head_dim``/``d_kv`` says
  otherwise), and key/value heads into the attention heads;
- an ``encoder-decoder`` config has an ``encoder`` and a ``decoder``, each a
  config checked the same way;
- ``model_type`` is one transformers builds as a causal LM (or, for
  encoder-decoder models, a sequence-to-sequence LM). The table is read from
  the installed ``transformers/models/auto/modeling_auto.py`` source (parsed,
  not imported: importing it imports torch); ``bench.models.model_class``
  imports the same table, and a test holds the two equal. Encoder-only types
  (``architectures.ENCODER_ONLY``) are built with a classification head instead.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from pathlib import Path
from typing import Any

from bench.architectures import ENCODER_ONLY
from bench.limits import MODEL_MAX, short, too_large

# config key -> (kind in MODEL_MAX, minimum)
DIMENSIONS = {
    **dict.fromkeys(
        ("num_hidden_layers", "n_layer", "num_layers", "num_decoder_layers", "encoder_layers", "decoder_layers"),
        ("layers", 1),
    ),
    **dict.fromkeys(("hidden_size", "n_embd", "d_model"), ("width", 1)),
    **dict.fromkeys(
        (
            "num_attention_heads",
            "n_head",
            "num_heads",
            "num_key_value_heads",
            "num_kv_heads",
            "n_head_kv",
            "encoder_attention_heads",
            "decoder_attention_heads",
        ),
        ("heads", 1),
    ),
    **dict.fromkeys(
        ("intermediate_size", "n_inner", "d_ff", "ffn_dim", "encoder_ffn_dim", "decoder_ffn_dim", "head_dim", "d_kv"),
        ("intermediate", 1),
    ),
    "vocab_size": ("vocab", 1),
    **dict.fromkeys(("n_positions", "max_position_embeddings", "n_ctx"), ("positions", 1)),
    **dict.fromkeys(("num_local_experts", "num_experts", "n_routed_experts"), ("experts", 0)),
}
_WIDTH = ("hidden_size", "n_embd", "d_model")
_HEADS = ("num_attention_heads", "n_head", "num_heads")
_KV_HEADS = ("num_key_value_heads", "num_kv_heads", "n_head_kv")
_HEAD_DIM = ("head_dim", "d_kv", "kv_channels")
ENCODER_DECODER_TYPES = frozenset({"t5", "mt5", "umt5", "bart", "mbart", "encoder-decoder"})
_TABLES = ("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES")


@functools.lru_cache(maxsize=1)
def model_types() -> tuple[frozenset[str], frozenset[str]] | None:
    """(causal LM types, sequence-to-sequence LM types) of the installed transformers,
    or ``None`` where its source cannot be read (the build then decides)."""
    try:
        found = importlib.util.find_spec("transformers")
        if found is None or found.origin is None:
            return None
        source = Path(found.origin).parent / "models" / "auto" / "modeling_auto.py"
        tree = ast.parse(source.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError, ImportError):
        return None
    tables: dict[str, frozenset[str]] = {}
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id in _TABLES
            and isinstance(node.value, ast.Call)
            and node.value.args
        ):
            try:
                tables[node.targets[0].id] = frozenset(k for k, _ in ast.literal_eval(node.value.args[0]))
            except (ValueError, TypeError):
                return None
    if set(tables) != set(_TABLES):
        return None
    return tables[_TABLES[0]], tables[_TABLES[1]]


def is_encoder_decoder(config: dict[str, Any]) -> bool:
    """Whether bench builds the config as a sequence-to-sequence model."""
    return bool(config.get("is_encoder_decoder")) or config.get("model_type") in ENCODER_DECODER_TYPES


def _first(config: dict[str, Any], keys: tuple[str, ...]) -> tuple[str, int] | None:
    for k in keys:
        v = config.get(k)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return k, v
    return None


def _dimensions(config: dict[str, Any], where: str) -> list[str]:
    out = []
    for key, (kind, minimum) in DIMENSIONS.items():
        if key not in config or config[key] is None:
            continue
        v = config[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            out.append(f"{where}{key}: {short(v)} is not allowed; allowed: an integer >= {minimum}")
        elif v > MODEL_MAX[kind]:
            out.append(too_large(f"{where}{key}", v, MODEL_MAX[kind]))
    if out:
        return out
    width, heads, kv = _first(config, _WIDTH), _first(config, _HEADS), _first(config, _KV_HEADS)
    if width and heads and not _first(config, _HEAD_DIM) and width[1] % heads[1]:
        out.append(
            f"{where}{heads[0]}: {heads[1]} does not divide {width[0]} {width[1]}; "
            f"allowed: a number of heads that divides the width (or give head_dim)"
        )
    if heads and kv and heads[1] % kv[1]:
        out.append(
            f"{where}{kv[0]}: {kv[1]} does not divide {heads[0]} {heads[1]}; allowed: a divisor of the attention heads"
        )
    return out


def problems(config: Any, where: str = "", depth: int = 0) -> list[str]:
    """Every problem of a parsed ``config.json``; ``where`` prefixes each line (``model: 'x.json': ``)."""
    if not isinstance(config, dict):
        return [f"{where}{short(config)} is not allowed; allowed: a JSON object (a Hugging Face config.json)"]
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        return [
            f"{where}model_type: {short(model_type)} is not allowed; allowed: a transformers model type "
            f"such as gpt2, llama or t5 (give a Hugging Face config.json)"
        ]
    out = _dimensions(config, where)
    if model_type == "encoder-decoder":
        for part in ("encoder", "decoder"):
            sub = config.get(part)
            if not isinstance(sub, dict) or depth >= 2:
                out.append(
                    f"{where}{part}: {short(sub)} is not allowed; allowed: the {part}'s config "
                    f"(an object with its own model_type)"
                )
            else:
                out += problems(sub, f"{where}{part}.", depth + 1)
        return out
    types = model_types()
    if types is not None and depth == 0 and model_type not in ENCODER_ONLY:  # encoder-only: built with a head
        causal, seq2seq = types
        table, kind = (seq2seq, "sequence-to-sequence") if is_encoder_decoder(config) else (causal, "causal language")
        if model_type not in table:
            examples = ", ".join(t for t in ("gpt2", "llama", "qwen2", "t5", "bart") if t in table)
            out.append(
                f"{where}model_type: {short(model_type)} is not supported: transformers has no {kind} "
                f"model for it; allowed: one of {len(table)} types such as {examples}"
            )
    return out
