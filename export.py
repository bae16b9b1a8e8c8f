"""Export a trained classifier: `python export.py ckpt_path=... format=onnx|pt2`."""

import hydra
from omegaconf import DictConfig

import crackdet.cli.config  # noqa: F401  (registers the ${project_root:} resolver)
from crackdet.cli.run import run_entry_point, run_main


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    """Compose the config and write the model plus its JSON sidecar."""
    # Imported here: torch and Lightning load only when a job runs, not for --help or --cfg.
    from crackdet.deploy.export import export

    run_main(export, cfg)


if __name__ == "__main__":
    run_entry_point(main)
