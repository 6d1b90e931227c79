"""The model catalog: published ``config.json`` files shipped with the package.

Every catalog entry is ``bench/data/models/<name>.json``::

    {"name", "hub_id", "aliases", "published_params", "params_source", ["note"], "config"}

``resolve`` accepts a short name, a Hugging Face id or alias (any case), a path
to a ``config.json`` or a folder holding one, or the id of any other hub
repository, whose ``config.json`` alone is fetched (``bench.hub``). ``build``
makes a randomly initialized model from the config; weights are never downloaded.
"""

from __future__ import annotations

import difflib
import functools
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from bench import architectures, configcheck, hub, userfile
from bench.errors import UserError
from bench.limits import short

# model_type -> (config key, default) of a fixed-size position table: learned
# absolute embeddings, or the precomputed sin/cos table of GPT-J/CodeGen, which
# is indexed by position and so cannot be exceeded either.
_POSITION_TABLES = {
    "gpt2": ("n_positions", 1024),
    "gpt_neo": ("max_position_embeddings", 2048),
    "opt": ("max_position_embeddings", 2048),
    "gptj": ("n_positions", 2048),
    "codegen": ("n_positions", 2048),
    "bert": ("max_position_embeddings", 512),
    "roberta": ("max_position_embeddings", 512),
    "xlm-roberta": ("max_position_embeddings", 512),
    "camembert": ("max_position_embeddings", 512),
    "electra": ("max_position_embeddings", 512),
    "distilbert": ("max_position_embeddings", 512),
    "albert": ("max_position_embeddings", 512),
    "megatron-bert": ("max_position_embeddings", 512),
    "ernie": ("max_position_embeddings", 512),
    "deberta": ("max_position_embeddings", 512),
    "deberta-v2": ("max_position_embeddings", 512),
}
# RoBERTa's positions start after its padding index (``create_position_ids_from_input_ids``).
_PADDED_POSITIONS = ("roberta", "xlm-roberta", "camembert")
ALL_LINEAR = "all-linear"
"""PEFT's shortcut for every linear layer but the output head."""


@dataclass(frozen=True)
class ModelSpec:
    """One model: its config.json content plus what the catalog knows about it."""

    name: str
    """Catalog short name, or the resolved path of a user config.json."""
    hub_id: str | None
    config: dict = field(hash=False)
    """The config.json content. Shared by every caller: do not mutate it."""
    published_params: int | None = None
    params_source: str | None = None

    @property
    def model_type(self) -> str:
        return self.config["model_type"]

    @property
    def is_encoder_decoder(self) -> bool:
        return configcheck.is_encoder_decoder(self.config)

    @property
    def layers(self) -> int | None:
        """Transformer blocks (the decoder's, or each stack's of an encoder-decoder); None if unknown."""
        for key in ("num_hidden_layers", "n_layer", "num_layers"):
            value = self.config.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        return None

    @property
    def max_positions(self) -> int | None:
        """Hard limit of a fixed position table; None for rotary, ALiBi or relative positions."""
        limits = [_table_limit(c) for c in _sub_configs(self.config)]
        limits = [n for n in limits if n is not None]
        return min(limits) if limits else None  # type: ignore[type-var]


def _sub_configs(config: dict) -> list[dict]:
    if config.get("model_type") == "encoder-decoder":
        return [config["encoder"], config["decoder"]]
    return [config]


def _table_limit(config: dict) -> int | None:
    model_type = config.get("model_type")
    key_default = _POSITION_TABLES.get(model_type)  # type: ignore[arg-type]
    if key_default is None:
        return None
    if model_type in ("deberta", "deberta-v2") and config.get("position_biased_input", True) is False:
        return None  # relative positions only (DeBERTa-v3): no absolute table
    key, default = key_default
    limit = int(config.get(key) or default)
    if model_type in _PADDED_POSITIONS:
        pad = config.get("pad_token_id", 1)
        limit -= (pad if isinstance(pad, int) and not isinstance(pad, bool) else 1) + 1
    return limit


def _spec(doc: dict, name: str | None = None) -> ModelSpec:
    return ModelSpec(
        name=name or doc["name"],
        hub_id=doc.get("hub_id"),
        config=doc["config"],
        published_params=doc.get("published_params"),
        params_source=doc.get("params_source"),
    )


@functools.cache
def _catalog() -> tuple[dict[str, ModelSpec], dict[str, str]]:
    """(short name -> spec, lower-cased name/hub id/alias -> short name)."""
    specs: dict[str, ModelSpec] = {}
    keys: dict[str, str] = {}
    folder = resources.files("bench") / "data" / "models"
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if not entry.name.endswith(".json"):
            continue
        doc = json.loads(entry.read_text(encoding="utf-8"))
        spec = _spec(doc)
        specs[spec.name] = spec
        for key in [spec.name, spec.hub_id, *doc.get("aliases", [])]:
            if key:
                keys[key.lower()] = spec.name
    return specs, keys


def is_catalogued(model: str) -> bool:
    """Whether ``model`` is a catalog name, hub id or alias (any case)."""
    return str(model).strip().lower() in _catalog()[1]


def names() -> list[str]:
    """Catalog short names, sorted."""
    return sorted(_catalog()[0])


@functools.lru_cache(maxsize=256)
def resolve(model) -> ModelSpec:
    """A catalog name, hub id or alias (any case), or a path to a config.json or its folder."""
    specs, keys = _catalog()
    model = str(model)
    found = keys.get(model.strip().lower())
    if found is not None:
        return specs[found]
    path = userfile.expand(model)
    if userfile.exists(path, "dir"):
        if not (path / "config.json").is_file():
            raise UserError(f"model: {model!r} is a folder without a config.json")
        path = path / "config.json"
    if userfile.exists(path, "file"):
        return _load_user_config(model, path.resolve())
    if model.endswith(".json") or model.startswith(("/", "./", "../", "~")):
        raise UserError(f"model: {model!r} does not exist; give a catalog name or a path to a config.json")
    if hub.looks_like_repo_id(model.strip()):  # not catalogued: its config.json from the hub (never weights)
        repo_id = model.strip()
        return ModelSpec(name=repo_id, hub_id=repo_id, config=hub.config(repo_id))
    close = difflib.get_close_matches(model.strip().lower(), sorted(keys), n=12, cutoff=0.5)
    close = list(dict.fromkeys(keys[c] for c in close))[:3]
    hint = f"closest: {', '.join(close)}; " if close else ""
    raise UserError(f"model: {model!r} is not in the catalog; {hint}or give a path to a config.json")


def _load_user_config(model: str, path: Path) -> ModelSpec:
    what = f"model {str(path)!r}"
    try:
        config = userfile.load_json(path, "model")
    except UserError as e:
        raise UserError(
            f"model: {model!r} is not a readable JSON config ({e.problems[0].removeprefix(what + ': ').removeprefix(what + ' ')})"
        ) from None
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise UserError(f"model: {model!r} has no 'model_type'; give a Hugging Face config.json")
    found = configcheck.problems(config, f"model: {model!r}: ")
    if found:
        raise UserError(*found)
    return ModelSpec(name=str(path), hub_id=None, config=config)


def hf_config(spec: ModelSpec, **overrides):
    """The ``transformers`` config for ``spec``, with ``overrides`` applied."""
    from transformers import CONFIG_MAPPING, AutoConfig

    if spec.model_type not in CONFIG_MAPPING:
        raise UserError(f"model: {spec.name}: model_type {spec.model_type!r} is not supported by this transformers")
    kwargs = json.loads(json.dumps(spec.config))  # a deep copy; the spec stays untouched
    kwargs.pop("model_type")
    kwargs.pop("auto_map", None)
    kwargs.update(overrides)
    return AutoConfig.for_model(spec.model_type, **kwargs)


_MODEL_KINDS = {
    "causal": ("AutoModelForCausalLM", "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "causal language"),
    "seq2seq": ("AutoModelForSeq2SeqLM", "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES", "sequence-to-sequence"),
    "seq-cls": (
        "AutoModelForSequenceClassification",
        "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
        "sequence classification",
    ),
    "token-cls": (
        "AutoModelForTokenClassification",
        "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES",
        "token classification",
    ),
}
"""Per kind of model (``_kind``): the Auto class ``build`` asks, the mapping ``model_class`` reads
and the kind's name in an error."""


def _kind(spec: ModelSpec, head: str) -> str:
    """The kind of model ``spec`` is built as with ``head``: the head, or for ``lm`` a causal or a
    sequence-to-sequence LM; an encoder-only model with ``lm`` is refused in one line."""
    if head != "lm":
        return head
    if architectures.is_encoder_only(spec):
        raise UserError(*architectures.problems(spec, head=head))
    return "seq2seq" if spec.is_encoder_decoder else "causal"


def model_class(spec: ModelSpec, head: str = "lm"):
    """The ``transformers`` class ``build`` instantiates for ``spec`` with ``head`` (``cell.HEADS``)."""
    import transformers
    from transformers.models.auto import modeling_auto as auto

    _, table_name, kind = _MODEL_KINDS[_kind(spec, head)]
    name = getattr(auto, table_name).get(spec.model_type)
    if name is None:
        raise UserError(f"model: {spec.name}: model_type {spec.model_type!r} has no {kind} model in transformers")
    return getattr(transformers, name)


def head_overrides(spec: ModelSpec, head: str, num_labels: int) -> dict:
    """Config values a classification head needs: ``num_labels``, and a ``pad_token_id`` for a
    decoder-only model that has none (it scores the last token that is not padding; fine-tuning
    scripts set the tokenizer's pad token, commonly the ``eos`` token)."""
    if head == "lm":
        return {}
    out: dict = {"num_labels": num_labels}
    if not architectures.is_encoder_only(spec) and spec.config.get("pad_token_id") is None:
        eos = spec.config.get("eos_token_id")
        eos = eos[0] if isinstance(eos, list) and eos else eos
        out["pad_token_id"] = eos if isinstance(eos, int) and not isinstance(eos, bool) else 0
    return out


def build(
    spec: ModelSpec,
    *,
    device="meta",
    dtype=None,
    attn: str | None = None,
    head: str = "lm",
    num_labels: int = 2,
    **config_overrides,
):
    """A randomly initialized model for ``spec`` with ``head`` on ``device`` (never downloads weights)."""
    import torch
    import transformers

    if attn is not None:
        config_overrides.setdefault("attn_implementation", attn)
    config_overrides = {**head_overrides(spec, head, num_labels), **config_overrides}
    auto = getattr(transformers, _MODEL_KINDS[_kind(spec, head)][0])
    kwargs = {}
    if dtype is not None:
        kwargs["dtype"] = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if attn is not None:
        kwargs["attn_implementation"] = attn
    experts = architectures.experts_implementation(spec, kwargs.get("dtype"))
    if experts is not None:
        kwargs["experts_implementation"] = experts
    try:
        cfg = hf_config(spec, **config_overrides)
        with torch.device(device):
            model = auto.from_config(cfg, **kwargs)
    except UserError:
        raise
    except Exception as e:  # what transformers (and huggingface_hub's validators) raise for a bad config
        if spec.name in _catalog()[0] or isinstance(e, MemoryError) or "OutOfMemory" in type(e).__name__:
            raise  # a shipped config that does not build is a bug; an OOM is a measurement
        raise UserError(
            f"model: {spec.name}: transformers cannot build this config ({type(e).__name__}: {short(str(e))})"
        ) from None
    if spec.config.get("tie_word_embeddings") is False:
        _untie_output_embeddings(model)
    return model


def _untie_output_embeddings(model) -> None:
    """Give the LM head its own weight where the published config unties it.

    transformers >= 5 always ties T5's ``lm_head`` to the shared embedding
    (``T5Config`` forces ``tie_word_embeddings=True``), while T5 v1.1 checkpoints
    (Flan-T5, T0) ship a separate head; loading one unties it. Untie the same
    way, and keep a later ``tie_weights()`` from tying it again.
    """
    import torch

    head, embeddings = model.get_output_embeddings(), model.get_input_embeddings()
    if head is None or embeddings is None or head.weight is not embeddings.weight:
        return
    name = next(n for n, m in model.named_modules() if m is head) + ".weight"
    weight = torch.empty_like(embeddings.weight, requires_grad=False)
    if weight.device.type != "meta":  # T5's own init for an untied head; distinct values keep a reload untied
        std = getattr(model.config, "initializer_factor", None) or getattr(model.config, "initializer_range", 0.02)
        torch.nn.init.normal_(weight, std=std)  # type: ignore[arg-type]
    head.weight = torch.nn.Parameter(weight)
    model._tied_weights_keys = {k: v for k, v in (model._tied_weights_keys or {}).items() if k != name}
    getattr(model, "all_tied_weights_keys", {}).pop(name, None)


def count_params(module) -> int:
    """Parameters of ``module``, each shared (tied) tensor counted once; a ZeRO-3
    partitioned parameter by its full size (``ds_numel``)."""
    return sum(param_numel(p) for p in module.parameters())  # parameters() yields a tied tensor once


def param_numel(p) -> int:
    """A parameter's elements; a ZeRO-3 partitioned one by its full size (``ds_numel``)."""
    return getattr(p, "ds_numel", None) or p.numel()


def default_attn(spec: ModelSpec) -> str:
    """``sdpa`` where transformers implements it for this architecture, else ``eager``."""
    try:
        cls = model_class(spec, "seq-cls" if architectures.is_encoder_only(spec) else "lm")
    except UserError:
        return "eager"
    return "sdpa" if getattr(cls, "_supports_sdpa", False) else "eager"


def lora_target_modules(spec: ModelSpec, targets=None):
    """What LoRA wraps: the cell's ``lora_targets``, else PEFT's default for the
    architecture, else every linear layer (``"all-linear"``) where PEFT has no
    default (e.g. phi3). The predictor and the runner both ask here."""
    if targets:
        targets = list(targets)
        return ALL_LINEAR if targets == [ALL_LINEAR] else targets  # PEFT takes its shortcut as a string only
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as defaults

    default = defaults.get(spec.model_type)
    if default is None:
        return ALL_LINEAR
    # PEFT's own table, spelled out: PEFT skips its table for some architectures
    # (Mixtral in peft 0.21 raises NoMatchingPeftModuleError without explicit targets).
    return default if isinstance(default, str) else sorted(default)
