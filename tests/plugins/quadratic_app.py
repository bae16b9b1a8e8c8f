"""A Hydra app without torch for the sweeper's tests: returns a known function of its settings."""

import hydra
from omegaconf import DictConfig


def objective(x: float, n: int, shape: str) -> float:
    """Lowest at x=1, n=0, shape=flat."""
    return (x - 1.0) ** 2 * (3.0 if shape == "steep" else 1.0) + n


@hydra.main(version_base="1.3", config_path="conf", config_name="quadratic")
def main(cfg: DictConfig) -> float:
    """Return the objective, as train.py returns its optimized metric."""
    return objective(cfg.x, cfg.n, cfg.shape)


if __name__ == "__main__":
    main()
