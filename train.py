"""Train a crack classifier: `python train.py experiment=baseline` (see README.md)."""

import hydra
from omegaconf import DictConfig

import crackdet.cli.config  # noqa: F401  (registers the ${project_root:} resolver)
from crackdet.cli.run import run_entry_point, run_main


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Compose the config, train, and return `optimized_metric` for sweepers."""
    # Imported here: torch and Lightning load only when a job runs, not for --help or --cfg.
    from crackdet.training.train import metric_value, train

    return run_main(lambda c: metric_value(train(c), c.get("optimized_metric")), cfg)


if __name__ == "__main__":
    run_entry_point(main)
