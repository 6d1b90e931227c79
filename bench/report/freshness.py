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
    if not todo:
        return out
    if not repredict:
        return [_mark_stale(r) if i in set(todo) else r for i, r in enumerate(out)]
    from bench import cell as cellmod
    from bench.errors import UserError
    from bench.run.record import prediction_error

    cells, where = [], []
    for i in todo:
        try:
            cells.append(cellmod.normalize(out[i]["cell"]))
            where.append(i)
        except (UserError, KeyError, TypeError, ValueError):
            out[i] = _mark_stale(out[i])  # a cell this bench no longer builds
    answers = _predict(cells)
    for i, answer in zip(where, answers):
        fresh = answer.get("predicted") if isinstance(answer, dict) else None
        if not isinstance(fresh, dict):
            out[i] = _mark_stale(out[i])
            continue
        r = out[i]
        out[i] = {
            **r,
            "predicted": fresh,
            "prediction_error": prediction_error(str(r.get("status")), fresh, r.get("measured"), hardware.device(r)),
            "prediction_refreshed": True,
        }
    return out


def _predict(cells: list[Any]) -> list[dict[str, Any]]:
    """One answer per cell from the predictor's child; all ``{}`` when it cannot start."""
    if not cells:
        return []
    try:
        from bench.predict.batch import predict_in_subprocess

        return predict_in_subprocess(cells)
    except (ImportError, OSError, ValueError):
        return [{} for _ in cells]
