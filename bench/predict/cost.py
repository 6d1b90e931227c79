"""What a run costs: its length in tokens, its wall time and its price.

Prices are the catalog's ``usd_per_hour`` per GPU (indicative on-demand
figures with their ``price_source`` and ``price_date``), replaced by a prices
file (JSON object or YAML mapping ``gpu: usd_per_hour``) and then by
``--price gpu=usd`` flags. A cell on ``gpus`` cards pays for all of them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from bench import gpus
from bench.errors import UserError


@dataclass(frozen=True)
class RunCost:
    tokens: int
    seconds: float
    usd: float | None
    usd_per_hour: float | None
    """For all the cell's GPUs together."""

    def to_dict(self) -> dict:
        return {
            "tokens": self.tokens,
            "seconds": self.seconds,
            "hours": self.seconds / 3600,
            "usd": self.usd,
            "usd_per_hour": self.usd_per_hour,
        }


def run_tokens(tokens: int | None, epochs: float | None, dataset_tokens: int | None) -> int | None:
    """Tokens the run trains on: ``--tokens N``, or ``--epochs E --dataset-tokens N``."""
    if tokens is not None and (epochs is not None or dataset_tokens is not None):
        raise UserError("--tokens: give either --tokens or --epochs with --dataset-tokens, not both")
    if (epochs is None) != (dataset_tokens is None):
        raise UserError("--epochs: needs --dataset-tokens (and --dataset-tokens needs --epochs)")
    if tokens is not None:
        if tokens <= 0:
            raise UserError(f"--tokens: {tokens!r} is not allowed; allowed: a positive token count")
        return tokens
    if epochs is None or dataset_tokens is None:
        return None
    if epochs <= 0 or dataset_tokens <= 0:
        raise UserError(f"--epochs/--dataset-tokens: {epochs!r}/{dataset_tokens!r}; allowed: positive numbers")
    return round(epochs * dataset_tokens)


def prices(flags: list[str] | None = None, path: str | None = None) -> dict[str, float]:
    """USD per GPU-hour by catalog name: catalog, then the prices file, then ``gpu=usd`` flags."""
    out = {n: g.usd_per_hour for n in gpus.names() if (g := gpus.resolve(n)).usd_per_hour is not None}
    if path:
        out.update(_read_prices(path))
    for flag in flags or []:
        name, sep, value = flag.partition("=")
        if not sep:
            raise UserError(f"--price: {flag!r} is not allowed; allowed: GPU=USD_PER_HOUR, e.g. rtx4090=0.4")
        out[gpus.resolve(name).name] = _usd(f"--price {name}", value)
    return out


def _read_prices(path: str) -> dict[str, float]:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise UserError(f"--prices: cannot read {path!r} ({e.strerror})") from None
    try:
        doc = json.loads(text)
    except ValueError:
        import yaml

        doc = yaml.safe_load(text)
    if not isinstance(doc, dict):
        raise UserError(f"--prices: {path!r} is not a mapping; allowed: gpu: usd_per_hour lines (YAML or JSON)")
    return {gpus.resolve(k).name: _usd(f"--prices {k}", v) for k, v in doc.items()}


def _usd(key: str, value) -> float:
    try:
        usd = float(value)
    except (TypeError, ValueError):
        usd = -1.0
    if usd < 0:
        raise UserError(f"{key}: {value!r} is not allowed; allowed: a price in USD per GPU-hour (>= 0)")
    return usd


def run_cost(cell, tokens_per_second: float | None, tokens: int, table: dict[str, float]) -> RunCost | None:
    """Wall time and price of training on ``tokens`` tokens at the predicted speed (None without one)."""
    if not tokens_per_second:
        return None
    seconds = tokens / tokens_per_second
    per_gpu = table.get(gpus.resolve(cell.gpu).name)
    per_hour = per_gpu * max(1, cell.gpus) if per_gpu is not None else None
    usd = per_hour * seconds / 3600 if per_hour is not None else None
    return RunCost(tokens=tokens, seconds=seconds, usd=usd, usd_per_hour=per_hour)
