"""A benchmark cell: one model x method x precision x shape, normalized.

A cell is the unit everything else works on: the predictor predicts one, the
runner measures one in one child process, the store keeps one file per cell.
``normalize`` turns a raw mapping (from YAML or the command line) into a
``Cell`` and reports every problem at once. ``cell_id`` is a short hash of the
normalized fields, so the same experiment always lands in the same file.

New fields must get a default that reproduces today's behaviour and must be
left out of the hash while they hold that default (see ``cell_id``), so that
adding a feature never renames existing results.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from bench import optimizer_names
from bench.errors import UserError, allowed
from bench.limits import CELL_MAX, short

TASKS = ("train", "infer")
TUNINGS = ("full", "lora", "qlora")
STRATEGIES = ("none", "ddp", "zero1", "zero2", "zero3", "fsdp")
OFFLOADS = ("none", "optimizer", "all")
PRECISIONS = ("fp32", "fp16", "bf16", "pure-bf16")
INFER_PRECISIONS = ("fp32", "fp16", "bf16")
ATTNS = ("sdpa", "eager", "flash_attention_2")
OPTIMIZERS = optimizer_names.BENCH_NAMES
QUANTS = ("none", "int8", "nf4", "fp4")
SPLITS = ("none", "layers")
SPLIT_BALANCES = ("balanced", "sequential")
CUSTOM_GPU = "custom"
"""The ``gpu`` name of a card given by its memory alone (``gpu_memory``)."""
LOOPS = ("plain", "trainer")
HEADS = ("lm", "seq-cls", "token-cls")

CHOICES: dict[str, tuple[str, ...]] = {
    "task": TASKS,
    "tuning": TUNINGS,
    "strategy": STRATEGIES,
    "offload": OFFLOADS,
    "precision": PRECISIONS,
    "quant": QUANTS,
    "split": SPLITS,
    "split_balance": SPLIT_BALANCES,
    "loop": LOOPS,
    "head": HEADS,
    "optimizer": OPTIMIZERS,
    "attn": ATTNS,
}
"""The enumerated fields and their allowed values: ``normalize`` checks a cell against these
and the command line's help lists them (``bench.clihelp``), so the two cannot drift."""

INT_MINIMUM = {
    "batch": 1,
    "seq": 1,
    "new_tokens": 1,
    "grad_accum": 1,
    "gpus": 1,
    "lora_r": 1,
    "lora_alpha": 1,
    "steps": 1,
    "warmup": 0,
    "freeze": 0,
    "target_seq": 1,
    "num_labels": 1,
}
"""The integer fields and their smallest allowed value (the largest is ``limits.CELL_MAX``)."""

# method shorthand -> (tuning, strategy, offload)
_STRATEGY_METHODS = {
    "none": ("none", "none"),
    "ddp": ("ddp", "none"),
    "zero1": ("zero1", "none"),
    "zero2": ("zero2", "none"),
    "zero3": ("zero3", "none"),
    "zero1-offload": ("zero1", "optimizer"),
    "zero2-offload": ("zero2", "optimizer"),
    "zero3-offload": ("zero3", "all"),
    "fsdp": ("fsdp", "none"),
    "fsdp-offload": ("fsdp", "all"),
}
METHODS: dict[str, tuple[str, str, str]] = {"full": ("full", "none", "none")}
METHODS.update({"lora": ("lora", "none", "none"), "qlora": ("qlora", "none", "none")})
for _name, (_strategy, _offload) in _STRATEGY_METHODS.items():
    if _name != "none":
        METHODS[_name] = ("full", _strategy, _offload)
        METHODS[f"lora+{_name}"] = ("lora", _strategy, _offload)
        METHODS[f"qlora+{_name}"] = ("qlora", _strategy, _offload)


def method_name(tuning: str, strategy: str, offload: str) -> str:
    """The shortest shorthand for a (tuning, strategy, offload) triple."""
    for name, triple in METHODS.items():
        if triple == (tuning, strategy, offload):
            return name
    base = tuning if strategy == "none" else f"{tuning}+{strategy}"
    return base if offload == "none" else f"{base}-offload-{offload}"


@dataclass(frozen=True, kw_only=True)
class Cell:
    """One normalized benchmark cell.

    The docstring under each field is its documentation: ``bench.clihelp`` reads it
    from this source for the command line's help, with the field's default and, for an
    enumerated field, the allowed values of ``CHOICES``. A trailing ``[...]`` states the
    default in words where the field's default is ``None`` (it means "decided elsewhere").
    """

    model: str
    """Catalog name, Hugging Face id or path to a config.json; a hub id outside the catalog
    has its config.json fetched (``bench.hub``), weights never."""
    gpu: str
    """Target GPU (catalog name): the card the verdicts and OOM boundary refer to."""
    task: str = "train"
    """``train`` (optimizer steps) or ``infer`` (``generate()`` with a KV cache)."""
    tuning: str = "full"
    """Which parameters train: all of them (``full``), LoRA adapters, or LoRA adapters on a
    4-bit base (``qlora``)."""
    strategy: str = "none"
    """How the ranks share the model: one GPU (``none``), data parallel, DeepSpeed ZeRO stage 1-3
    or FSDP2."""
    offload: str = "none"
    """What lives in host RAM: nothing, the optimizer states, or ``all`` (optimizer and
    parameters)."""
    gpus: int = 1
    """Ranks the cell runs on; ZeRO and FSDP shard across them."""
    precision: str = "fp32"
    """``fp32``; ``fp16``/``bf16`` mixed precision (fp32 master weights); ``pure-bf16`` (bf16
    weights and optimizer states)."""
    batch: int = 1
    """Micro-batch per GPU."""
    seq: int = 512
    """Tokens per sample (the source length for encoder-decoder models)."""
    target_seq: int | None = None
    """Decoder length for encoder-decoder models [the value of seq]."""
    new_tokens: int = 128
    """Generated tokens for ``task: infer``."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    grad_ckpt: bool = False
    """Activation (gradient) checkpointing of every transformer block."""
    freeze: int = 0
    """Full tuning: the embeddings and the first ``freeze`` transformer blocks do not train
    (no gradients, optimizer states or saved activations for them) [0]."""
    use_cache: bool = False
    """Leave the model's KV cache on while training (transformers' default without
    checkpointing): the output then also holds every layer's keys and values,
    until the next forward returns. Fine-tuning recipes turn it off [off]."""
    attn: str | None = None
    """The attention kernel [the model's transformers default]."""
    optimizer: str = "adamw"
    """``adamw`` is torch's fused AdamW, ``adamw-foreach`` its foreach one, ``adamw-8bit``
    bitsandbytes'; the HF Trainer's ``optim`` names are stored as these (``bench.optimizer_names``)."""
    lora_r: int = 16
    """LoRA rank of every adapter."""
    lora_alpha: int = 32
    """LoRA scaling numerator (PEFT's ``lora_alpha``)."""
    lora_dropout: float = 0.05
    """Dropout on the adapters' input, a number in [0, 1)."""
    lora_targets: tuple[str, ...] | None = None
    """Module names LoRA wraps [PEFT's default for the architecture]."""
    ds_config: str | None = None
    """Path to a DeepSpeed JSON whose bucket, overlap and offload settings apply [bench's generated
    config for the strategy]."""
    zero_init: bool | None = None
    """ZeRO-3 only: build the model under ``deepspeed.zero.Init`` (partitioned as it is
    built, as the HF Trainer and accelerate do), or ``false``: build it whole on the CPU
    and let ``deepspeed.initialize`` partition it [true for zero3]."""
    loop: str = "plain"
    """Which training loop ``bench run`` runs: ``plain`` (bench's own: ``out = model(**batch)``,
    backward, ``optimizer.step()``) or ``trainer`` (the Hugging Face ``transformers.Trainer``
    with ``TrainingArguments`` from the cell: its ``optim``, ``bf16``/``fp16`` through
    accelerate, gradient accumulation and checkpointing, DeepSpeed via ``deepspeed=``). The
    Trainer keeps only the loss between forward and backward; ``fsdp`` is not offered with it
    yet [plain]."""
    head: str = "lm"
    """The model's output head and loss: ``lm`` (the language-model head: causal LM, or
    sequence-to-sequence for encoder-decoders) | ``seq-cls`` (``AutoModelForSequenceClassification``:
    one class id per sample) | ``token-cls`` (``AutoModelForTokenClassification``: one per
    token); encoder-only models (BERT, RoBERTa, DeBERTa) need a classification head [lm]."""
    num_labels: int = 2
    """Classes of a ``seq-cls``/``token-cls`` head (``seq-cls`` with 1: regression, an MSE
    loss on one float per sample) [2]."""
    quant: str = "none"
    """Weight quantization of a ``task: infer`` model by bitsandbytes: ``none`` | ``int8``
    (LLM.int8: int8 weights with fp32 row scales) | ``nf4`` | ``fp4`` (4-bit, an absmax per
    64 weights); the head, embeddings and norms stay in ``precision``, the compute dtype [none]."""
    quant_double: bool = False
    """``quant: nf4``/``fp4``: double quantization (``bnb_4bit_use_double_quant``): the
    per-block absmax stored in 8 bits with an fp32 scale per 256 blocks [off]."""
    split: str = "none"
    """``task: infer`` over ``gpus`` cards in one process: ``none`` | ``layers`` (the blocks
    placed over the cards by accelerate's ``infer_auto_device_map``, one card busy at a
    time) [none]."""
    split_balance: str = "balanced"
    """``split: layers``: ``balanced`` (accelerate's ``get_balanced_memory``, as
    ``device_map="balanced"``/``"auto"``) | ``sequential`` (fill card 0 first, as
    ``device_map="sequential"``) [balanced]."""
    gpu_memory: int | None = None
    """Memory of the target card in bytes (a size such as ``10GiB`` is accepted), replacing
    the catalog card's; with ``gpu: custom`` a card known by its memory alone (no speed
    figures) [the catalog card's]."""
    steps: int = 3
    """Measured optimizer steps (or generations)."""
    warmup: int = 1
    """Unmeasured steps before them."""
    label: str = ""
    """Free text kept in every output; not part of the cell id."""

    @property
    def method(self) -> str:
        return method_name(self.tuning, self.strategy, self.offload)

    @property
    def decoder_seq(self) -> int:
        return self.target_seq if self.target_seq is not None else self.seq

    @property
    def trains(self) -> bool:
        return self.task == "train"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["lora_targets"] is not None:
            d["lora_targets"] = list(d["lora_targets"])
        return d

    @property
    def cell_id(self) -> str:
        return cell_id(self)

    @property
    def slug(self) -> str:
        """Readable name: model, method, precision and shape."""
        model = model_label(self.model)
        parts = [model, self.task, self.method, self.precision, f"b{self.batch}", f"s{self.seq}"]
        if self.grad_accum > 1:
            parts.append(f"ga{self.grad_accum}")
        if self.grad_ckpt:
            parts.append("ckpt")
        if self.freeze:
            parts.append(f"freeze{self.freeze}")
        if self.use_cache:
            parts.append("cache")
        if self.gpus > 1:
            parts.append(f"x{self.gpus}")
        if self.zero_init is False:
            parts.append("nozeroinit")
        if self.loop != "plain":
            parts.append(self.loop)
        if self.head != "lm":
            parts.append(self.head + (f"{self.num_labels}" if self.num_labels != 2 else ""))
        if self.task == "infer":
            parts = [model, "infer", self.precision, f"b{self.batch}", f"s{self.seq}", f"n{self.new_tokens}"]
            if self.quant != "none":
                parts.append(self.quant + ("dq" if self.quant_double else ""))
            if self.split != "none":
                parts.append(f"{self.split}x{self.gpus}" + ("seq" if self.split_balance == "sequential" else ""))
        if self.gpu_memory is not None:
            parts.append(f"mem{self.gpu_memory / 2**30:g}g")
        return "-".join(parts)


def model_label(model: str) -> str:
    """The short name of a model in slugs: a hub id's repository name, a config file's folder
    (``.../Qwen3-8B/config.json`` -> ``Qwen3-8B``) or file stem, else the catalog name."""
    parts = model.replace("\\", "/").rstrip("/").split("/")
    last = parts[-1]
    if last == "config.json" and len(parts) > 1:
        return parts[-2]
    return last[:-5] if last.endswith(".json") else last


FIELD_NAMES = tuple(f.name for f in fields(Cell))
_DEFAULTS = {f.name: f.default for f in fields(Cell) if f.default is not dataclasses.MISSING}
# Fields added after the first release: hashed only when they differ from the default.
_LATE_FIELDS = {
    "quant",
    "use_cache",
    "zero_init",
    "freeze",
    "quant_double",
    "split",
    "split_balance",
    "gpu_memory",
    "loop",
    "head",
    "num_labels",
}
_NOT_HASHED = {"label"}


def cell_id(cell: Cell) -> str:
    """A 10-hex-digit hash of the normalized cell (label excluded).

    A file the cell points to (a user ``config.json`` as ``model``, a
    ``ds_config``) is hashed by its content, not its path: the same experiment
    gets the same id whichever folder the checkout lives in, and editing the
    file gives a new one.
    """
    d = cell.to_dict()
    for k in _NOT_HASHED:
        d.pop(k)
    for k in _LATE_FIELDS:
        if d[k] == _DEFAULTS[k]:
            d.pop(k)
    d["model"] = _file_token(d["model"])
    if d["ds_config"] is not None:
        d["ds_config"] = _file_token(d["ds_config"])
    blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def _file_token(value: str) -> str:
    """``file:<sha256 of the JSON content>`` for a readable JSON file path, else ``value``.

    Catalog names hold no path separator and are never looked up on disk.
    """
    if "/" not in value and "\\" not in value:
        return value
    try:
        content = json.loads(Path(value).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return value
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return "file:" + hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _int(raw: dict, key: str, problems: list[str], where: str, minimum: int) -> int | None:
    v = raw.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        problems.append(f"{where}{key}: {short(v)} is not allowed; allowed: an integer >= {minimum}")
        return None
    most = CELL_MAX.get(key)
    if most is not None and v > most:
        problems.append(f"{where}{key}: {short(v)} is not allowed; allowed: an integer from {minimum} to {most:,}")
        return None
    return v


def _bool(raw: dict, key: str, problems: list[str], where: str) -> bool | None:
    v = raw.get(key)
    if not isinstance(v, bool):
        problems.append(f"{where}{key}: {v!r} is not allowed; allowed: true, false")
        return None
    return v


def _size(raw: dict, key: str, problems: list[str], where: str) -> None:
    """A byte count, or a size string (``10GiB``, ``12GB``) stored as bytes."""
    from bench.dtypes import parse_size

    v = raw[key]
    if isinstance(v, bool) or not isinstance(v, (int, str)) or (isinstance(v, int) and v <= 0):
        problems.append(f"{where}{key}: {short(v)} is not allowed; allowed: a size such as 10GiB or a byte count")
        return
    try:
        raw[key] = parse_size(v, key) if isinstance(v, str) else v
    except UserError as e:
        problems += [f"{where}{m}" for m in e.problems]


def methods_allowed() -> str:
    """The method shorthands of ``METHODS`` in words: the error of a bad one and the help say this."""
    plain = [m for m in METHODS if "+" not in m]
    combined = [m for m in plain if m not in TUNINGS]
    return f"{', '.join(plain)}, and lora+M or qlora+M for M in {', '.join(combined)} (e.g. lora+zero3-offload)"


def _bad_method(method: Any) -> str:
    close = difflib.get_close_matches(str(method), list(METHODS), n=2, cutoff=0.7)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    return f"method: {method!r} is not allowed{hint}; allowed: {methods_allowed()}"


def unknown_key(key: Any) -> str:
    """The message for a key that is no cell field, with the closest field names."""
    keys = ("method", *FIELD_NAMES)
    close = difflib.get_close_matches(str(key), keys, n=2, cutoff=0.6)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    return f"unknown key {key!r}{hint}; allowed: {', '.join(keys)}"


def normalize(raw: dict[str, Any], where: str = "") -> Cell:
    """Build a ``Cell`` from a raw mapping; raise ``UserError`` with every problem.

    ``where`` prefixes each message (e.g. ``"cell 3 (gpt2-full-...): "``).
    Catalog lookups (model, GPU, DeepSpeed config) are checked by
    ``bench.matrix.validate_cell``; here only the cell's own grammar.
    """
    problems: list[str] = []
    raw = dict(raw)
    unknown = sorted(set(raw) - set(FIELD_NAMES) - {"method"}, key=str)
    for k in unknown:
        problems.append(f"{where}{unknown_key(k)}")
        raw.pop(k)

    method = raw.pop("method", None)
    if method is not None:
        if not isinstance(method, str) or method not in METHODS:
            problems.append(f"{where}{_bad_method(method)}")
        else:
            triple = METHODS[method]
            for k, v in zip(("tuning", "strategy", "offload"), triple):
                if k in raw and raw[k] != v:
                    problems.append(
                        f"{where}{k}: {raw[k]!r} contradicts method {method!r}; allowed: {v!r} (what the method sets), or leave {k} out"
                    )
                raw[k] = v
    for k in ("model", "gpu"):
        if not isinstance(raw.get(k), str) or not raw.get(k):
            problems.append(f"{where}{k}: {raw.get(k)!r} is not allowed; allowed: a non-empty name")
    for key, choices in CHOICES.items():
        if key not in raw or (raw[key] is None and _DEFAULTS.get(key, "") is None):
            continue  # absent, or None where None is the default
        if key == "optimizer":  # bench's names or the HF Trainer's ``optim`` spellings
            try:
                raw["optimizer"] = optimizer_names.canonical(raw["optimizer"])
            except UserError as e:
                problems += [f"{where}{m}" for m in e.problems]
        elif raw[key] not in choices:
            problems.append(f"{where}" + allowed(key, raw[key], choices))
    for key, minimum in INT_MINIMUM.items():
        if key in raw and not (raw[key] is None and _DEFAULTS.get(key, "") is None):
            _int(raw, key, problems, where, minimum)
    if "grad_ckpt" in raw:
        _bool(raw, "grad_ckpt", problems, where)
    if "use_cache" in raw:
        _bool(raw, "use_cache", problems, where)
    if raw.get("zero_init") is not None:
        _bool(raw, "zero_init", problems, where)
    if "quant_double" in raw:
        _bool(raw, "quant_double", problems, where)
    if raw.get("gpu_memory") is not None:
        _size(raw, "gpu_memory", problems, where)
    if "lora_dropout" in raw:
        v = raw["lora_dropout"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
            problems.append(f"{where}lora_dropout: {v!r} is not allowed; allowed: a number in [0, 1)")
        else:
            raw["lora_dropout"] = float(v)
    if raw.get("lora_targets") is not None:
        v = raw["lora_targets"]
        if isinstance(v, str):
            v = [v]  # type: ignore[assignment]
        if not isinstance(v, (list, tuple)) or not v or not all(isinstance(x, str) for x in v):
            problems.append(f"{where}lora_targets: {v!r} is not allowed; allowed: a list of module names")
        else:
            raw["lora_targets"] = tuple(v)
    if raw.get("ds_config") is not None and not isinstance(raw["ds_config"], str):
        problems.append(f"{where}ds_config: {raw['ds_config']!r} is not allowed; allowed: a path to a JSON file")
    if "label" in raw:
        raw["label"] = "" if raw["label"] is None else str(raw["label"])
    if problems:
        raise UserError(*problems)
    if raw.get("target_seq") is not None and raw["target_seq"] == raw.get("seq", _DEFAULTS["seq"]):
        raw["target_seq"] = None  # the default spelled out: same experiment, same id

    c = Cell(**raw)
    problems += _consistency(c, where)
    if problems:
        raise UserError(*problems)
    return c


def _consistency(c: Cell, where: str) -> list[str]:
    """Rules that involve more than one field."""
    p = []
    if c.task == "infer":
        if (c.tuning, c.strategy, c.offload) != ("full", "none", "none"):
            p.append(f"{where}method: {c.method!r} is not allowed for task 'infer'; allowed: full (no training method)")
        if c.precision not in INFER_PRECISIONS:
            p.append(f"{where}" + allowed("precision (task infer: the weights' dtype)", c.precision, INFER_PRECISIONS))
        if c.gpus != 1 and c.split == "none":
            p.append(
                f"{where}gpus: {c.gpus} is not allowed for task 'infer' with split 'none'; allowed: 1, or split: layers"
            )
        if c.quant != "none" and c.precision not in ("fp16", "bf16"):
            p.append(
                f"{where}precision: {c.precision!r} is not allowed with quant {c.quant!r}; allowed: fp16, bf16 (the compute dtype)"
            )
    else:
        if c.quant != "none":
            p.append(f"{where}quant: {c.quant!r} is not allowed for task 'train'; allowed: none (use tuning: qlora)")
        if c.split != "none":
            p.append(f"{where}split: {c.split!r} is not allowed for task 'train'; allowed: none (use a strategy)")
    if c.quant_double and c.quant not in ("nf4", "fp4"):
        p.append(f"{where}quant_double: true needs quant nf4 or fp4, not {c.quant!r}; allowed: false")
    if c.split_balance != "balanced" and c.split == "none":
        p.append(f"{where}split_balance: {c.split_balance!r} needs split: layers; allowed: leave split_balance out")
    if c.gpu == CUSTOM_GPU and c.gpu_memory is None:
        p.append(f"{where}gpu: {CUSTOM_GPU!r} needs gpu_memory (e.g. 10GiB); allowed: a catalog GPU, or gpu_memory")
    if c.offload != "none" and c.strategy not in ("zero1", "zero2", "zero3", "fsdp"):
        p.append(f"{where}offload: {c.offload!r} needs a ZeRO or FSDP strategy, not strategy {c.strategy!r}")
    if c.offload == "all" and c.strategy in ("zero1", "zero2"):
        p.append(
            f"{where}offload: 'all' (parameters too) needs zero3 or fsdp, not {c.strategy!r}; allowed: none, optimizer"
        )
    if c.strategy == "fsdp" and c.offload == "optimizer":
        p.append(
            f"{where}offload: 'optimizer' is not allowed with fsdp (FSDP2 offloads parameters, gradients and optimizer together); allowed: none, all"
        )
    if c.trains and c.strategy == "none" and c.gpus > 1:
        p.append(f"{where}gpus: {c.gpus} needs a strategy (ddp, zero1-3, fsdp); strategy is 'none'")
    if c.tuning == "qlora" and c.precision not in ("fp16", "bf16"):
        p.append(f"{where}precision: {c.precision!r} is not allowed for qlora; allowed: fp16, bf16 (the compute dtype)")
    if c.attn == "flash_attention_2" and c.precision == "fp32":
        p.append(f"{where}attn: 'flash_attention_2' needs fp16 or bf16, not precision 'fp32'")
    if c.freeze and (c.task != "train" or c.tuning != "full"):
        p.append(
            f"{where}freeze: {c.freeze} needs full tuning of a train cell; allowed: 0 (LoRA/QLoRA freeze the base already)"
        )
    if c.zero_init is not None and c.strategy != "zero3":
        p.append(
            f"{where}zero_init: {c.zero_init!r} applies to strategy zero3 only, not {c.strategy!r}; allowed: leave zero_init out"
        )
    if c.loop == "trainer" and c.task != "train":
        p.append(f"{where}loop: 'trainer' needs task 'train', not {c.task!r}; allowed: plain")
    if c.loop == "trainer" and c.strategy == "fsdp":
        p.append(
            f"{where}loop: 'trainer' with strategy 'fsdp' is not supported (accelerate's FSDP2 path is not modelled); "
            "allowed: plain, or a strategy none, ddp, zero1, zero2, zero3"
        )
    if c.head != "lm" and c.task != "train":
        p.append(f"{where}head: {c.head!r} needs task 'train' (generation needs the lm head); allowed: lm")
    if c.num_labels != 2 and c.head == "lm":
        p.append(f"{where}num_labels: {c.num_labels} needs head seq-cls or token-cls; allowed: leave num_labels out")
    if c.ds_config is not None and c.strategy not in ("zero1", "zero2", "zero3"):
        p.append(
            f"{where}ds_config: given but strategy is {c.strategy!r}; a DeepSpeed config needs zero1, zero2 or zero3"
        )
    return p


def replace(cell: Cell, **changes: Any) -> Cell:
    """A copy of ``cell`` with ``changes`` applied and re-validated."""
    d = cell.to_dict()
    d.update(changes)
    return normalize(d)
