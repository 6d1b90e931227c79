"""The predictor's view of the cells a run is about to measure.

``bench.predict.batch.predict_in_subprocess`` predicts in a child process (the
runner never imports torch). Where the predictor is not installed the run goes
on without predictions: records get ``predicted: null``, ``--skip-predicted-oom``
skips nothing and ``--find-max-batch`` starts from the middle.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from bench.cell import Cell


def predict(cells: Sequence[Cell]) -> tuple[dict[str, dict[str, Any] | None], str | None]:
    """``cell_id -> predicted`` (``None`` where the predictor gave an error), and why
    there are no predictions at all (``None`` when there are)."""
    if not cells:
        return {}, None
    try:
        from bench.predict.batch import predict_in_subprocess
    except ImportError as e:
        return {c.cell_id: None for c in cells}, f"no predictions ({e})"
    answers = predict_in_subprocess(list(cells))
    out: dict[str, dict[str, Any] | None] = {}
    for c, answer in zip(cells, answers):
        got = answer.get("predicted") if isinstance(answer, dict) else None
        out[c.cell_id] = got if isinstance(got, dict) else None
    return out, None


class Pending:
    """Predictions computed in the background while the first cells run.

    ``get(cell_id)`` blocks until the predictor's child has answered; ``why``
    says why there are none (after ``get`` or ``wait``). A predictor that
    crashes costs the run its predictions (``why`` names the exception), never
    its measurements.
    """

    def __init__(self, cells: Sequence[Cell]) -> None:
        self.answers: dict[str, dict[str, Any] | None] = {}
        self.why: str | None = None
        # a daemon thread: Ctrl-C must not wait for the predictor to finish
        self._thread = threading.Thread(target=self._work, args=(list(cells),), name="bench-predict", daemon=True)
        self._thread.start()

    def _work(self, cells: list[Cell]) -> None:
        try:
            self.answers, self.why = predict(cells)
        except Exception as e:  # noqa: BLE001 - reported through ``why``
            self.why = f"no predictions (the predictor failed: {type(e).__name__}: {e})"

    def close(self) -> None:
        """Kill the predictor's child if it still runs (the run ended early); idempotent.

        The thread waiting for it then ends with ``why`` saying the predictor failed."""
        if self._thread.is_alive():
            try:
                from bench.predict.batch import stop_children
            except ImportError:
                return
            stop_children()

    def wait(self) -> dict[str, dict[str, Any] | None]:
        self._thread.join()
        return self.answers

    def get(self, cell_id: str) -> dict[str, Any] | None:
        return self.wait().get(cell_id)


def fits(predicted: dict[str, Any] | None) -> bool | None:
    """The predictor's verdict, or ``None`` when there is none."""
    if not predicted or not isinstance(predicted.get("fits"), bool):
        return None
    return predicted["fits"]
