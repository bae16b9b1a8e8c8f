"""Calibration of p(crack): expected calibration error and temperature scaling."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import binary_calibration_error

# float32 probabilities carry about 7 digits: beyond these log-odds they are 0 or 1 exactly.
_PROB_EPS = 1e-7
# Perfectly separated validation data would drive the temperature to 0; keep it in e^-4..e^4.
_LOG_T_BOUND = 4.0


def expected_calibration_error(
    probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15
) -> float:
    """ECE of p(crack) against the observed crack frequency, over `n_bins` equal-width bins."""
    return float(binary_calibration_error(probs, labels.long(), n_bins=n_bins, norm="l1"))


def log_odds(probs: torch.Tensor) -> torch.Tensor:
    """log(p / (1 - p)) in float64, with p kept off 0 and 1 by float32's resolution."""
    return torch.logit(probs.double(), eps=_PROB_EPS)


def fit_temperature(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature T minimising the log loss of sigmoid(log_odds / T) on (probs, labels)."""
    z, y = log_odds(probs), labels.double()
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        t = log_t.clamp(-_LOG_T_BOUND, _LOG_T_BOUND).exp()
        loss = F.binary_cross_entropy_with_logits(z / t, y)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return float(log_t.detach().clamp(-_LOG_T_BOUND, _LOG_T_BOUND).exp())


def apply_temperature(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """p(crack) after dividing the log-odds by `temperature` (the ranking is unchanged)."""
    return torch.sigmoid(log_odds(probs) / temperature).to(probs.dtype)
