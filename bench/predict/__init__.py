"""The memory predictor: ``predict(cell) -> Prediction`` (see ``estimate``)."""

from bench.predict.estimate import Prediction, max_batch, predict

__all__ = ["Prediction", "max_batch", "predict"]
