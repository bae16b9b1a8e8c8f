"""Classify photos and map cracks in large ones: `python predict.py ckpt_path=... input=...`."""

import hydra
from omegaconf import DictConfig

import crackdet.cli.config  # noqa: F401  (registers the ${project_root:} resolver)
from crackdet.cli.run import run_entry_point, run_main


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    """Compose the config and write predictions.csv (+ heatmaps/) into the run directory."""
    # Imported here: torch and Lightning load only when a job runs, not for --help or --cfg.
    from crackdet.deploy.predict import predict

    run_main(predict, cfg)


if __name__ == "__main__":
    run_entry_point(main)
