"""``bench predict ... --gpu all``: every catalog card, the smallest that fits (or the cheapest
or fastest, ``--rank``; cost by default with ``--tokens N``) first.

Each catalog card gets the cell's memory prediction and, where it fits, its
predicted step time, tokens/s and, for the stated tokens, the run's wall time
and price (``cost``); host RAM and (with ``--max-batch``) the largest
micro-batch are shown beside them. Cards that do not fit, or lack the
precision, follow, smallest first.
"""

from __future__ import annotations

from collections.abc import Callable

from tabulate import tabulate

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


def rows(
    base,
    tokens: int | None,
    table: dict,
    calibration: dict | None,
    want_max_batch: bool,
    on_card: Callable[[str], object] | None = None,
) -> list[dict]:
    """One row per catalog card: ``gpu``, ``fits``, ``predicted`` (memory and speed) or ``error``;
    ``on_card`` is called with each card's name once its row is done (the progress bar)."""
    from bench.predict import max_batch, predict
    from bench.predict.cli import speed_fields

    out = []
    for name in gpus.names():
        g = gpus.resolve(name)
        row: dict = {"gpu": name, "capacity_bytes": g.memory_bytes, "fits": False}
        if base.precision in ("bf16", "pure-bf16") and not g.bf16:
            row["error"] = f"{base.precision} is not supported on {name}"
            row["unsupported"] = base.precision
        else:
            c = cellmod.replace(base, gpu=name)
            p = predict(c)
            row["fits"] = p.fits
            row["predicted"] = {**p.to_dict(), **(speed_fields(c, calibration, tokens, table) if p.fits else {})}
            if want_max_batch:
                row["max_batch"] = max_batch(c)
        out.append(row)
        if on_card is not None:
            on_card(name)
    return out


def _host_cell(p: dict, host_memory: int | None) -> str:
    need = p["host_node_bytes"]
    text = f"{need / GiB:.1f}"
    if host_memory is not None:
        text += " fits" if need <= host_memory else " does NOT fit"
    return text


def table(ranked: list[dict], want_max_batch: bool, tokens: int | None, host_memory: int | None = None) -> str:
    """The cards as a text table (``tabulate``): capacity, predicted peak, verdict, headroom,
    host RAM of a node, the largest micro-batch (``want_max_batch``), step time and tokens/s
    where the cell fits, and the run's time and price for ``tokens``."""
    headers = ["gpu", "memory GiB", "peak GiB", "verdict", "headroom GiB", "host RAM GiB"]
    if want_max_batch:
        headers.append("max batch")
    headers += ["step s", "tokens/s"]
    if tokens is not None:
        headers += ["time", "USD"]
    out = []
    for r in ranked:
        p = r.get("predicted") or {}
        if "error" in r:
            verdict = f"no {r['unsupported']}" if "unsupported" in r else r["error"]
            row = [r["gpu"], f"{r['capacity_bytes'] / GiB:.1f}", "-", verdict, "-", "-"]
        else:
            row = [
                r["gpu"],
                f"{r['capacity_bytes'] / GiB:.1f}",
                f"{p['peak_bytes'] / GiB:.2f}",
                "fits" if r["fits"] else "OOM",
                f"{p['headroom_bytes'] / GiB:+.2f}",
                _host_cell(p, host_memory),
            ]
        if want_max_batch:
            row.append(r.get("max_batch", "-"))
        timed = r.get("fits") and p.get("step_time_seconds")
        row += [f"{p['step_time_seconds']:.3f}", f"{p['tokens_per_second']:.0f}"] if timed else ["-", "-"]
        if tokens is not None:
            run = p.get("run") or {}
            row.append(duration(run["seconds"]) if run.get("seconds") is not None else "-")
            row.append(f"{run['usd']:.2f}" if run.get("usd") is not None else "-")
        out.append(row)
    return tabulate(out, headers=headers, disable_numparse=True, colalign=("left",) + ("right",) * (len(headers) - 1))


def rank_cards(
    base, a, tokens: int | None, table_: dict, calibration: dict | None, host_memory: int | None = None
) -> list[dict]:
    """The catalog's cards for ``base``, in the order ``--rank`` asks (default: cost with
    ``tokens``, else memory: the smallest card that fits first)."""
    from bench import progressbar

    rank = a.rank or ("cost" if tokens is not None else "memory")
    with progressbar.bar(len(gpus.names()), "cards") as bar:
        found = rows(base, tokens, table_, calibration, a.max_batch, lambda _: bar.update(1))
    return sorted(found, key=_order(rank))


def title(base, rank: str, tokens: int | None) -> str:
    per = " per GPU" if base.gpus > 1 else ""
    what = f"a run of {tokens:,} tokens" if tokens is not None else "one optimizer step"
    order = {"memory": "smallest card that fits first", "cost": "cheapest first", "time": "fastest first"}[rank]
    return f"{base.slug}: peak GPU memory{per} and {what} on each card ({order}; host RAM per node)"
