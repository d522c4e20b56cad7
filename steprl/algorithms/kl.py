"""KL coefficient controllers and the KL-in-reward penalty.

The adaptive controller is the proportional controller of Ziegler et al. (2019), as in trl/verl:
``e = clip(KL / target - 1, -0.2, 0.2)``, ``beta <- beta * (1 + e * n_steps / horizon)``. The
error is clipped so one noisy batch cannot move the coefficient by more than 20% of
``n_steps / horizon``.
"""

from __future__ import annotations

from typing import Any

import torch


class FixedKLController:
    """A constant KL coefficient (``update`` does nothing)."""

    def __init__(self, coef: float) -> None:
        self.value = float(coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        del current_kl, n_steps

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Proportional controller steering the measured KL towards ``target``."""

    def __init__(self, init: float, target: float, horizon: float) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target and horizon must be > 0, got {target}, {horizon}")
        self.value = float(init)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])
        self.target = float(state.get("target", self.target))
        self.horizon = float(state.get("horizon", self.horizon))


def apply_kl_in_reward(
    token_rewards: torch.Tensor, kl: torch.Tensor, coef: float, action_mask: torch.Tensor
) -> torch.Tensor:
    """``token_rewards - coef * kl`` on action tokens only (observations are not the policy's).

    To use it with any estimator, pass ``apply_kl_in_reward(zeros, kl, coef, action_mask)`` as
    ``extra_token_rewards``: token-level estimators add it per token, step-level ones per step.
    """
    return token_rewards - coef * kl * action_mask.to(kl.dtype)
