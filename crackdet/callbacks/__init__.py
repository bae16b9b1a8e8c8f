"""Lightning callbacks: prediction files and evaluation figures."""

from crackdet.callbacks.figures import EvaluationFigures
from crackdet.callbacks.predictions import PredictionsWriter

__all__ = ["EvaluationFigures", "PredictionsWriter"]
