"""``bench autotune``: the fastest and the cheapest configurations that fit, predicted.

Given a model, a method family, a precision, a sequence length and a target
global batch, the search enumerates

- methods of the family: ``full`` is plain full fine-tuning and its sharded
  forms (ZeRO-2, ZeRO-3, with CPU offload, FSDP) on 1, 2, 4 or 8 GPUs;
  ``lora`` is LoRA and QLoRA on one GPU;
- gradient checkpointing off and on;
- micro-batches (powers of two) with the gradient accumulation that makes up
  the global batch (``global = micro x accumulation x GPUs``);
- the catalog's cards (or ``--gpu a,b,c``),

predicts each setting's peak memory once (on the largest card, without its
limit: the peak does not depend on the card) and keeps those whose peak is
within a card's memory, then times each on each card (``speed``) and prices it
for ``--tokens`` (``cost``). The winners are checked with the card's own
memory prediction before they are printed. Nothing runs on a GPU.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from bench import cell as cellmod, clihelp, gpus, matrix, models
from bench.errors import UserError, allowed

FAMILIES = {
    "full": [("full", 1), ("zero2", 1), ("zero3", 1), ("zero2-offload", 1), ("zero3-offload", 1), ("fsdp", 1)]
    + [(m, n) for n in (2, 4, 8) for m in ("zero2", "zero3", "fsdp")],
    "lora": [("lora", 1), ("qlora", 1)],
}
GiB = 2**30


@dataclass(frozen=True)
class Candidate:
    cell: cellmod.Cell
    peak_bytes: int
    step_time_seconds: float
    tokens_per_second: float
    usd_per_million_tokens: float | None

    def to_dict(self) -> dict:
        c = self.cell
        return {
            "gpu": c.gpu,
            "gpus": c.gpus,
            "method": _method(c),
            "batch": c.batch,
            "grad_accum": c.grad_accum,
            "grad_ckpt": c.grad_ckpt,
            "peak_bytes": self.peak_bytes,
            "step_time_seconds": self.step_time_seconds,
            "tokens_per_second": self.tokens_per_second,
            "usd_per_million_tokens": self.usd_per_million_tokens,
            "cell": c.to_dict(),
        }


def _method(c) -> str:
    return c.method


def settings(model: str, family: str, precision: str, seq: int, global_batch: int, max_batch: int = 64):
    """Every (method, GPUs, checkpointing, micro-batch) cell of the search, on the h200, in batch order."""
    if family not in FAMILIES:
        raise UserError(allowed("--family", family, sorted(FAMILIES)))
    if global_batch < 1:
        raise UserError(f"--global-batch: {global_batch!r} is not allowed; allowed: a positive number of samples")
    for method, n in FAMILIES[family]:
        for ckpt in (False, True):
            row = []
            mb = 1
            while mb <= min(max_batch, global_batch):
                if global_batch % (mb * n) == 0:
                    raw = {
                        "model": model,
                        "gpu": "h200",
                        "method": method,
                        "precision": precision,
                        "seq": seq,
                        "batch": mb,
                        "grad_accum": global_batch // (mb * n),
                        "grad_ckpt": ckpt,
                        "gpus": n,
                    }
                    c = cellmod.normalize(raw, "")
                    if not matrix.validate_cell(c):
                        row.append(c)
                mb *= 2
            yield row


def search(
    model: str,
    family: str,
    precision: str,
    seq: int,
    global_batch: int,
    cards: list[str],
    tokens: int | None,
    price_table: dict,
    calibration: dict | None,
) -> list[Candidate]:
    from bench.predict import predict
    from bench.predict.speed import speed

    biggest = max(gpus.resolve(g).memory_bytes for g in cards)
    found = []
    for row in settings(models.resolve(model).name, family, precision, seq, global_batch):
        for c in row:  # micro-batches ascending: the first that does not fit the biggest card ends the row
            peak = predict(c).peak_bytes
            if peak > biggest:
                break
            for name in cards:
                g = gpus.resolve(name)
                if peak > g.memory_bytes or (precision in ("bf16", "pure-bf16") and not g.bf16):
                    continue
                on = cellmod.replace(c, gpu=name)
                s = speed(on, calibration=calibration)
                if not s.step_time_seconds or not s.tokens_per_second:
                    continue
                per_hour = price_table.get(name)
                usd = per_hour * on.gpus / 3600 / s.tokens_per_second * 1e6 if per_hour is not None else None
                found.append(Candidate(on, peak, s.step_time_seconds, s.tokens_per_second, usd))
    return found


def best(found: list[Candidate], key, top: int) -> list[Candidate]:
    """The ``top`` best by ``key`` whose cell also fits by the card's own prediction."""
    from bench.predict import predict

    out = []
    for cand in sorted(found, key=key):
        if predict(cand.cell).fits:
            out.append(cand)
        if len(out) == top:
            break
    return out


def _row(c: Candidate, tokens: int | None) -> list[str]:
    from bench.report.labels import duration

    cell = c.cell
    if c.usd_per_million_tokens is None:
        usd = "-"
    elif tokens:
        usd = f"{c.usd_per_million_tokens * tokens / 1e6:.2f}"
    else:
        usd = f"{c.usd_per_million_tokens:.3f}"
    return [
        cell.gpu,
        str(cell.gpus),
        _method(cell),
        str(cell.batch),
        str(cell.grad_accum),
        "on" if cell.grad_ckpt else "off",
        f"{c.peak_bytes / GiB:.2f}",
        f"{c.step_time_seconds:.3f}",
        f"{c.tokens_per_second:.0f}",
        duration(tokens / c.tokens_per_second) if tokens else "-",
        usd,
    ]


def _table(group: list[Candidate], tokens: int | None) -> str:
    from tabulate import tabulate

    usd = "USD" if tokens else "USD/M tokens"
    headers = ["gpu", "gpus", "method", "micro-batch", "accum", "ckpt", "peak GiB", "step s", "tokens/s", "time", usd]
    align = ("left", "right", "left", "right", "right", "left") + ("right",) * 5
    return tabulate([_row(c, tokens) for c in group], headers=headers, disable_numparse=True, colalign=align)


def cmd_autotune(a) -> int:
    from bench.predict import cost
    from bench.predict.speed_figures import load_calibration

    tokens = cost.run_tokens(a.tokens, a.epochs, a.dataset_tokens)
    table = cost.prices(a.price, a.prices)
    cards = gpus.names() if a.gpu in (None, "all") else [gpus.resolve(g).name for g in a.gpu.split(",")]
    found = search(
        a.model, a.family, a.precision, a.seq, a.global_batch, cards, tokens, table, load_calibration(a.calibration)
    )
    if not found:
        raise UserError(
            f"--model {a.model}: no {a.family} setting of global batch {a.global_batch} fits any of "
            f"{', '.join(cards)}; try a smaller --seq or --global-batch"
        )
    fastest = best(found, lambda c: c.step_time_seconds, a.top)
    cheapest = best(found, lambda c: (c.usd_per_million_tokens is None, c.usd_per_million_tokens or 0.0), a.top)
    if a.json:
        print(
            json.dumps(
                {
                    "fastest": [c.to_dict() for c in fastest],
                    "cheapest": [c.to_dict() for c in cheapest],
                    "settings_that_fit": len(found),
                    "tokens": tokens,
                },
                indent=1,
            )
        )
        return 0
    what = f"{tokens:,} tokens" if tokens else "per million tokens"
    print(
        f"{a.model} {a.family} {a.precision}, seq {a.seq}, global batch {a.global_batch}: "
        f"{len(found)} settings fit; time and USD for {what}"
    )
    for title, group in (("fastest", fastest), ("cheapest", cheapest)):
        print(f"\n{title}:")
        print(_table(group, tokens))
    return 0


def register(sub) -> None:
    from bench.predict.cli import add_run_flags

    p = sub.add_parser(
        "autotune",
        help="search batch x accumulation x checkpointing x method x GPU for the "
        "fastest and cheapest settings that fit (predicted, no GPU needed)",
        description=__doc__,
    )
    p.add_argument("--model", required=True, help=clihelp.field_help("model", "required"))
    p.add_argument(
        "--family",
        default="lora",
        help="method family to search. Allowed: "
        + "; ".join(f"{name} ({', '.join(sorted({m for m, _ in ms}))})" for name, ms in FAMILIES.items()),
    )
    p.add_argument("--precision", default="bf16", help=clihelp.field_help("precision", "bf16"))
    p.add_argument("--seq", type=int, default=1024, help=clihelp.field_help("seq", "1024"))
    p.add_argument(
        "--global-batch",
        type=int,
        default=16,
        help="samples per optimizer step, all GPUs together (micro-batch x accumulation x GPUs)",
    )
    p.add_argument(
        "--gpu",
        help=f"comma-separated cards to search. Allowed: {clihelp.allowed_text('gpu')} [default: every card]",
    )
    p.add_argument("--top", type=int, default=5, help="settings printed per list (fastest, cheapest)")
    p.add_argument("--json", action="store_true", help="print the lists as JSON")
    add_run_flags(p)
    p.set_defaults(func=cmd_autotune)
