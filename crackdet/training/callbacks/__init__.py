"""Lightning callbacks: predictions, figures, the operating point, checkpoints, resuming, cost."""

from crackdet.training.callbacks.cost import TrainingCost
from crackdet.training.callbacks.figures import EvaluationFigures
from crackdet.training.callbacks.last_checkpoint import LastCheckpoint
from crackdet.training.callbacks.operating_point import OperatingPoint
from crackdet.training.callbacks.predictions import PredictionsWriter
from crackdet.training.callbacks.resume import InterruptCheckpoint, ResumeState

__all__ = [
    "EvaluationFigures",
    "InterruptCheckpoint",
    "LastCheckpoint",
    "OperatingPoint",
    "PredictionsWriter",
    "ResumeState",
    "TrainingCost",
]
