"""Evaluate a checkpoint: `python eval.py ckpt_path=outputs/train/<run>/checkpoints/best.ckpt`."""

import hydra
from omegaconf import DictConfig

import crackdet.cli.config  # noqa: F401  (registers the ${project_root:} resolver)
from crackdet.cli.run import run_entry_point, run_main


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    """Compose the config and write metrics, predictions and figures into the run directory."""
    # Imported here: torch and Lightning load only when a job runs, not for --help or --cfg.
    from crackdet.evaluation.evaluate import evaluate

    run_main(evaluate, cfg)


if __name__ == "__main__":
    run_entry_point(main)
