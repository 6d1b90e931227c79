"""``bench predict ... --gpu all --tokens N``: the cards that fit, cheapest (or fastest) first.

Each catalog card gets the cell's memory prediction and, where it fits, its
predicted step time, tokens/s and, for the stated tokens, the run's wall time
and price (``cost``); host RAM and (with ``--max-batch``) the largest
micro-batch are shown beside them. Cards that do not fit, or lack the
precision, follow, smallest first.
"""

from __future__ import annotations

import json

from bench import cell as cellmod, gpus
from bench.report.labels import duration

GiB = 2**30


def _order(rank: str):
    def key(row: dict):
        sp, fits = row.get("predicted") or {}, row.get("fits")
        run = sp.get("run") or {}
        if not fits:
            return (1, row["capacity_bytes"], 0.0)
        if rank == "memory":
            return (0, row["capacity_bytes"], 0.0)
        if rank == "cost" and run.get("usd") is not None:
            return (0, 0, run["usd"])
        seconds = run.get("seconds") or sp.get("step_time_seconds") or float("inf")
        return (0, 1 if rank == "cost" else 0, seconds)

    return key


def rows(base, tokens: int | None, table: dict, calibration: dict | None, want_max_batch: bool) -> list[dict]:
    """One row per catalog card: ``gpu``, ``fits``, ``predicted`` (memory and speed) or ``error``."""
    from bench.predict import max_batch, predict
    from bench.predict.cli import speed_fields

    out = []
    for name in gpus.names():
        g = gpus.resolve(name)
        row: dict = {"gpu": name, "capacity_bytes": g.memory_bytes, "fits": False}
        if base.precision in ("bf16", "pure-bf16") and not g.bf16:
            row["error"] = f"{base.precision} is not supported on {name}"
            out.append(row)
            continue
        c = cellmod.replace(base, gpu=name)
        p = predict(c)
        row["fits"] = p.fits
        row["predicted"] = {**p.to_dict(), **(speed_fields(c, calibration, tokens, table) if p.fits else {})}
        if want_max_batch:
            row["max_batch"] = max_batch(c)
        out.append(row)
    return out


def rank_cards(base, a, tokens: int | None, table: dict, calibration: dict | None) -> int:
    rank = a.rank or ("cost" if tokens is not None else "memory")
    ranked = sorted(rows(base, tokens, table, calibration, a.max_batch), key=_order(rank))
    if a.json:
        print(json.dumps(ranked, indent=1))
        return 0
    what = f"{tokens:,} tokens" if tokens is not None else "one optimizer step"
    print(f"{base.slug}: cards that fit, by {rank} for {what}")
    print(
        f"  {'gpu':<12} {'memory':>9} {'peak':>9} {'host RAM':>9} {'step (s)':>9} {'tokens/s':>9}"
        f" {'time':>10} {'USD':>9}{'  max batch' if a.max_batch else ''}"
    )
    for r in ranked:
        p = r.get("predicted") or {}
        if "error" in r:
            print(f"  {r['gpu']:<12} {r['capacity_bytes'] / GiB:7.1f} G  -- {r['error']}")
            continue
        run = p.get("run") or {}
        speed = (
            f"{p['step_time_seconds']:9.3f} {p['tokens_per_second']:9.0f}"
            if r["fits"] and p.get("step_time_seconds")
            else f"{'OOM':>9} {'':>9}"
        )
        usd = f"{run['usd']:9.2f}" if run.get("usd") is not None else f"{'-':>9}"
        mb = f"  {r['max_batch']:>9}" if a.max_batch else ""
        print(
            f"  {r['gpu']:<12} {r['capacity_bytes'] / GiB:7.1f} G {p['peak_bytes'] / GiB:7.2f} G"
            f" {p['host_bytes'] / GiB:7.1f} G {speed} {duration(run.get('seconds')) if run else '-':>10} {usd}{mb}"
        )
    return 0
