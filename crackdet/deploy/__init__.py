"""Deployment: loading a checkpoint for inference, the predict job, tiling and export."""
