"""Stale predictions: a record's prediction made by another predictor than the one installed.

A record keeps the prediction made when its cell ran; the predictor improves
afterwards, and a report that shows the old prediction's error says nothing
about today's predictor (a +6.8 % that is +0.2 % when predicted afresh). Each
stored prediction carries ``predicted.predictor_version``
(``bench.predict.version``); one without it, or with another version, is stale.

``refresh(records)`` predicts the stale ones afresh in a child process
(``bench.predict.batch``: the report's process never imports torch) and
recomputes ``prediction_error``; the record gets ``prediction_refreshed:
true``. With ``repredict=False`` (``bench report --no-repredict``), or where
the predictor cannot run (not installed, a cell it refuses), the old
prediction stays, marked ``prediction_stale: true``, and the table says so.
Both marks live only in the report's copy of the record; files are never
rewritten.

An emulated run (``bench.report.hardware``) measured its speed on the host
card while its prediction is for the target card; to compare like with
like, ``refresh`` also predicts each such ok training cell on the host card
and keeps that speed as ``predicted_on_host`` (``gpu``,
``step_time_seconds``, ``tokens_per_second``), which the throughput figure
plots (``bench.report.speed_plot``). ``--no-repredict`` skips this too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from bench.predict import version

Record = Mapping[str, Any]


def stale(record: Record) -> bool:
    """The record has a prediction, made by a predictor other than the installed one."""
    p = record.get("predicted")
    return isinstance(p, dict) and bool(p) and p.get(version.KEY) != version.current()


def _mark_stale(record: Record) -> dict[str, Any]:
    return {**record, "prediction_stale": True}


def refresh(records: Iterable[Record], repredict: bool = True) -> list[dict[str, Any]]:
    """``records`` with every stale prediction predicted afresh (or marked stale); pure otherwise."""
    from bench.report import hardware

    out: list[dict[str, Any]] = [dict(r) for r in records]  # the report's own copies

    # a CPU run's prediction is not shown (host RSS is no GPU peak): nothing to refresh
    todo = [i for i, r in enumerate(out) if stale(r) and not hardware.is_cpu(r)]
    hosts = {i: h for i, r in enumerate(out) if (h := _host_gpu(r)) is not None}
    if not repredict:
        return [_mark_stale(r) if i in set(todo) else r for i, r in enumerate(out)]
    if not todo and not hosts:
        return out
    from bench import cell as cellmod
    from bench.errors import UserError
    from bench.run.record import prediction_error

    cells, where = [], []  # (index, "target" or "host") of each cell sent to the predictor
    for i in sorted(set(todo) | set(hosts)):
        try:
            cell = cellmod.normalize(out[i]["cell"])
            if i in todo:
                cells.append(cell)
                where.append((i, "target"))
            if i in hosts:
                cells.append(cellmod.replace(cell, gpu=hosts[i]))
                where.append((i, "host"))
        except (UserError, KeyError, TypeError, ValueError):
            if i in todo:
                out[i] = _mark_stale(out[i])  # a cell this bench no longer builds
    answers = _predict(cells)
    for (i, side), answer in zip(where, answers):
        fresh = answer.get("predicted") if isinstance(answer, dict) else None
        r = out[i]
        if side == "host":
            if isinstance(fresh, dict) and fresh.get("tokens_per_second"):
                keys = ("step_time_seconds", "tokens_per_second")
                out[i] = {**r, "predicted_on_host": {"gpu": hosts[i], **{k: fresh.get(k) for k in keys}}}
            continue
        if not isinstance(fresh, dict):
            out[i] = _mark_stale(r)
            continue
        out[i] = {
            **r,
            "predicted": fresh,
            "prediction_error": prediction_error(str(r.get("status")), fresh, r.get("measured"), hardware.device(r)),
            "prediction_refreshed": True,
        }
    return out


def _host_gpu(record: Record) -> str | None:
    """The catalog name of the card an emulated ok training run measured its speed on, else ``None``."""
    from bench.report import hardware

    if hardware.emulation(record) is None or record.get("status") != "ok":
        return None
    if record["cell"].get("task", "train") != "train" or not (record.get("measured") or {}).get("tokens_per_second"):
        return None
    from bench import gpus
    from bench.errors import UserError

    try:
        return gpus.resolve(str((record.get("environment") or {}).get("gpu_name"))).name
    except (UserError, KeyError, ValueError):  # a host card the catalog does not know: no like-for-like speed
        return None


def _predict(cells: list[Any]) -> list[dict[str, Any]]:
    """One answer per cell from the predictor's child; all ``{}`` when it cannot start."""
    if not cells:
        return []
    try:
        from bench.predict.batch import predict_in_subprocess

        return predict_in_subprocess(cells)
    except (ImportError, OSError, ValueError):
        return [{} for _ in cells]
