"""Lightning callbacks: prediction files, evaluation figures and the operating point."""

from crackdet.callbacks.figures import EvaluationFigures
from crackdet.callbacks.operating_point import OperatingPoint
from crackdet.callbacks.predictions import PredictionsWriter

__all__ = ["EvaluationFigures", "OperatingPoint", "PredictionsWriter"]
