"""The memory predictor: ``predict(cell) -> Prediction`` (see ``estimate``).

Imported lazily so that verbs which only read files (``report``, ``compare``)
and the runner's parent never import torch. A prediction itself imports torch
and transformers only to trace a step the trace cache does not hold
(``shapes``); many cells at once: ``planner.entries``, one cell as a plan
entry: ``planner.entry``.
"""

__all__ = ["Prediction", "max_batch", "predict"]


def __getattr__(name: str):
    if name in __all__:
        from bench.predict import estimate

        return getattr(estimate, name)
    raise AttributeError(name)
