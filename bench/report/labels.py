"""Labels: how a cell's fields and a record's numbers read in a published table.

Records keep raw units (bytes, seconds, fractions); this module is the one place
that turns them into text, so that every exporter says the same thing:
GiB = 2**30 bytes, percentages with one decimal, parameter counts like
``1.5B`` / ``355M``. A missing value is ``–`` (never ``0``), because "not
measured" and "zero" are different facts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bench.cell import model_label
from bench.dtypes import GiB as GIB
from bench.recipe import ADAPTER_TUNINGS

MISSING = "–"

_TUNING = {"full": "Full", "lora": "LoRA", "qlora": "QLoRA"}
_STRATEGY = {"ddp": "DDP", "zero1": "ZeRO-1", "zero2": "ZeRO-2", "zero3": "ZeRO-3", "fsdp": "FSDP"}
_OFFLOAD = {"optimizer": "optimizer offload", "all": "param + optimizer offload"}
_PRECISION = {"fp32": "fp32", "fp16": "fp16 mixed", "bf16": "bf16 mixed", "pure-bf16": "bf16 (pure)"}


def gib(n_bytes: float | None, digits: int = 2) -> str:
    """Bytes as GiB with ``digits`` decimals, or ``–``."""
    return MISSING if n_bytes is None else f"{n_bytes / GIB:.{digits}f}"


def percent(fraction: float | None, signed: bool = False) -> str:
    """A fraction as a percentage with one decimal (``+`` sign when ``signed``)."""
    if fraction is None:
        return MISSING
    return f"{fraction * 100:+.1f}%" if signed else f"{fraction * 100:.1f}%"


def count(n: float | None) -> str:
    """A rate with thousands separators and no decimals (``12,345``)."""
    return MISSING if n is None else f"{n:,.0f}"


def model(name: str) -> str:
    """A model as a table names it: a config.json path by its folder (or file stem), else as given."""
    return model_label(name) if name.endswith(".json") else name


def params(n: int | None) -> str:
    """A parameter count the way model cards say it: ``1.5B``, ``355M``, ``66K``."""
    if not n:
        return MISSING
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            value = n / scale
            text = f"{value:.1f}" if value < 10 else f"{value:.0f}"
            return text.removesuffix(".0") + suffix
    return str(n)


_HEADS = {"seq-cls": "sequence-classification", "token-cls": "token-classification"}


def method(cell: Mapping[str, Any]) -> str:
    """Tuning, ZeRO stage or FSDP, offload and rank count: ``Full, ZeRO-2, optimizer offload``.

    Non-default choices that change memory (optimizer, attention) follow in
    brackets so that two rows never read the same while measuring different things.
    """
    if cell.get("task", "train") == "infer":
        text = f"Inference ({cell.get('new_tokens', 128)} new tokens)"
        if cell.get("quant", "none") != "none":
            text += f", {cell['quant']}" + (" double-quant" if cell.get("quant_double") else "")
        if cell.get("split", "none") != "none":
            balance = "" if cell.get("split_balance", "balanced") == "balanced" else f", {cell['split_balance']}"
            n = cell.get("gpus", 1)
            text += f", layers over {n} GPU{'s' if n != 1 else ''}{balance}"
        return text
    tuning = cell.get("tuning", "full")
    parts = [_TUNING.get(tuning, tuning)]
    if tuning in ADAPTER_TUNINGS:
        parts[0] += f" r={cell.get('lora_r', 16)}"
    strategy = cell.get("strategy", "none")
    if strategy != "none":
        parts.append(_STRATEGY.get(strategy, strategy))
    offload = cell.get("offload", "none")
    if offload != "none":
        parts.append(_OFFLOAD.get(offload, f"offload {offload}"))
    if cell.get("gpus", 1) > 1:
        parts.append(f"{cell['gpus']} GPUs")
    if cell.get("freeze"):
        parts.append(f"first {cell['freeze']} blocks frozen")
    head = cell.get("head", "lm")
    if head != "lm":
        parts.append(f"{_HEADS.get(head, head)} head, {cell.get('num_labels', 2)} labels")
    extras = []
    if cell.get("optimizer", "adamw") != "adamw":
        extras.append(f"optimizer {cell['optimizer']}")
    if cell.get("attn"):
        extras.append(f"attn {cell['attn']}")
    if cell.get("loop", "plain") == "trainer":
        extras.append("HF Trainer")
    text = ", ".join(parts)
    return f"{text} [{'; '.join(extras)}]" if extras else text


def precision(cell: Mapping[str, Any]) -> str:
    """``bf16 mixed`` (fp32 master weights), ``bf16 (pure)``; for inference the weights' dtype;
    for LoRA/QLoRA the frozen base's dtype (adapters stay fp32)."""
    p = cell.get("precision", "fp32")
    if cell.get("task", "train") == "infer":
        return p
    if cell.get("tuning") in ADAPTER_TUNINGS and p in ("fp16", "bf16"):
        return f"{p} base" if cell.get("tuning") == "lora" else f"nf4 base, {p} compute"
    return _PRECISION.get(p, p)


def context(cell: Mapping[str, Any]) -> str:
    """Tokens per sample; ``src→tgt`` for encoder-decoder cells."""
    seq, target = cell.get("seq"), cell.get("target_seq")
    return f"{seq}→{target}" if target not in (None, seq) else str(seq)


def yes_no(flag: bool | None) -> str:
    return MISSING if flag is None else ("yes" if flag else "no")


def status(value: str | None) -> str:
    """``ok`` stays quiet; failures are spelled so they stand out (``OOM``)."""
    if value is None:
        return MISSING
    return "OOM" if value == "oom" else value


def duration(seconds: float | None) -> str:
    """``3 d 4 h``, ``2 h 05 m``, ``4 m 10 s``, ``12.3 s``."""
    if seconds is None:
        return MISSING
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    d, h = divmod(h, 24)
    if d:
        return f"{d} d {h} h"
    return f"{h} h {m:02d} m" if h else f"{m} m {s:02d} s"
