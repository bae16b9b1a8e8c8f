"""Classify photos and map cracks in large ones: `python predict.py ckpt_path=... input=...`."""

import hydra
from omegaconf import DictConfig

import crackdet.cli.config  # noqa: F401  (registers the ${project_root:} resolver)
from crackdet.cli.run import run_main
from crackdet.deploy.predict import predict


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    """Compose the config and write predictions.csv (+ heatmaps/) into the run directory."""
    run_main(predict, cfg)


if __name__ == "__main__":
    main()
