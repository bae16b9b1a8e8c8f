"""Evaluation: the eval job, metrics at a threshold, calibration, figures and analysis helpers."""
