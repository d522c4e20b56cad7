"""Golden values for the truncated importance-sampling correction of asynchronous rollouts."""

from __future__ import annotations

import math

import pytest
import torch

from steprl.algorithms.losses import ppo_policy_loss
from steprl.algorithms.off_policy import truncated_is_weights

# pi_old / pi_rollout per token: 0.5 | 1.0 | 3.0 (truncated at C=2) | 1.5 | masked (ratio 100)
ROLLOUT = torch.full((1, 5), -1.0)
OLD = ROLLOUT + torch.tensor([[0.5, 1.0, 3.0, 1.5, 100.0]]).log()
MASK = torch.tensor([[True, True, True, True, False]])


def test_truncated_is_weights_golden():
    w, m = truncated_is_weights(OLD, ROLLOUT, MASK, cap=2.0)
    # min(r, 2) on the mask, 0 off it
    assert w.tolist()[0] == pytest.approx([0.5, 1.0, 2.0, 1.5, 0.0], abs=1e-6)
    # mean of the untruncated ratios (0.5 + 1 + 3 + 1.5) / 4 = 1.5; one of four truncated; max 3
    assert m["is_weight_mean"] == pytest.approx(1.5, abs=1e-6)
    assert m["is_truncated_frac"] == pytest.approx(0.25)
    assert m["is_weight_max"] == pytest.approx(3.0, abs=1e-5)
    assert not w.requires_grad


def test_truncated_is_weights_on_policy_is_one_and_rejects_bad_cap():
    w, m = truncated_is_weights(ROLLOUT, ROLLOUT, MASK, cap=2.0)
    assert w.tolist()[0] == [1.0, 1.0, 1.0, 1.0, 0.0]
    assert m["is_truncated_frac"] == 0.0
    with pytest.raises(ValueError):
        truncated_is_weights(OLD, ROLLOUT, MASK, cap=0.0)
    # an exploding log-ratio stays finite
    w, _ = truncated_is_weights(
        torch.tensor([[500.0]]), torch.tensor([[-500.0]]), torch.tensor([[True]]), 2.0
    )
    assert w.item() == 2.0


def test_ppo_loss_with_is_weights_golden():
    # PPO ratios pi/pi_old: 1.5 (A=+1) | 0.5 (A=+1) | 0.5 (A=-1) | 5 (A=-1); weights 0.5, 1, 2, 1.5
    old = torch.full((1, 5), -2.0)
    new = old + torch.tensor([[1.5, 0.5, 0.5, 5.0, 1.0]]).log()
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0, 9.0]])
    w, _ = truncated_is_weights(OLD, ROLLOUT, MASK, cap=2.0)
    loss, _ = ppo_policy_loss(new, old, adv, MASK, is_weights=w)
    # per-token clipped losses -1.2, -0.5, 0.8, 5.0 times 0.5, 1, 2, 1.5:
    # (-0.6 - 0.5 + 1.6 + 7.5) / 4 = 2.0
    assert loss.item() == pytest.approx(2.0, abs=1e-6)
    # the weights scale the policy gradient of an unclipped token: d/dlogp (-A r w) / 4 at r = 1
    logp = torch.zeros(1, 2, requires_grad=True)
    weights = torch.tensor([[0.5, 2.0]])
    loss, _ = ppo_policy_loss(
        logp,
        logp.detach(),
        torch.tensor([[2.0, 2.0]]),
        torch.ones(1, 2, dtype=torch.bool),
        is_weights=weights,
    )
    loss.backward()
    assert logp.grad.tolist()[0] == pytest.approx([-2.0 * 0.5 / 2, -2.0 * 2.0 / 2])
    assert math.isfinite(loss.item())
