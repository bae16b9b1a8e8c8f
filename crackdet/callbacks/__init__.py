"""Lightning callbacks: prediction files, evaluation figures, the operating point, resuming."""

from crackdet.callbacks.figures import EvaluationFigures
from crackdet.callbacks.operating_point import OperatingPoint
from crackdet.callbacks.predictions import PredictionsWriter
from crackdet.callbacks.resume import InterruptCheckpoint, ResumeState

__all__ = [
    "EvaluationFigures",
    "InterruptCheckpoint",
    "OperatingPoint",
    "PredictionsWriter",
    "ResumeState",
]
