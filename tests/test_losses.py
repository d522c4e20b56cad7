"""Golden values for steprl.algorithms.losses and steprl.algorithms.kl (arithmetic in comments)."""

from __future__ import annotations

import math

import pytest
import torch

from steprl.algorithms import (
    AdaptiveKLController,
    FixedKLController,
    aggregate,
    apply_kl_in_reward,
    entropy_from_logits,
    kl_penalty,
    masked_entropy,
    masked_mean,
    masked_whiten,
    ppo_policy_loss,
    value_loss,
)

# tokens: ratio 1.5 A=+1 | ratio 0.5 A=+1 | ratio 0.5 A=-1 | ratio 5 A=-1 | masked junk
RATIOS = torch.tensor([[1.5, 0.5, 0.5, 5.0, 100.0]])
ADV = torch.tensor([[1.0, 1.0, -1.0, -1.0, 50.0]])
MASK = torch.tensor([[True, True, True, True, False]])
OLD = torch.full((1, 5), -2.0)
NEW = OLD + RATIOS.log()


def test_ppo_clip_golden():
    loss, m = ppo_policy_loss(NEW, OLD, ADV, MASK)
    # token 1: max(-1.5, -1.2) = -1.2 (clipped) ; token 2: max(-0.5, -0.8) = -0.5
    # token 3: max(0.5, 0.8) = 0.8 (clipped)    ; token 4: max(5.0, 1.2) = 5.0
    # token-mean: (-1.2 - 0.5 + 0.8 + 5.0) / 4 = 1.025 ; clipfrac = 2/4
    assert loss.item() == pytest.approx(1.025)
    assert m["clipfrac"] == pytest.approx(0.5)
    # approx_kl (k3 = r - 1 - log r): 0.094535 + 2 * 0.193147 + 2.390562 = 2.871391 ; / 4
    assert m["approx_kl"] == pytest.approx(2.871391 / 4, abs=1e-5)


def test_ppo_dual_clip_and_asymmetric_clip_golden():
    loss, m = ppo_policy_loss(NEW, OLD, ADV, MASK, dual_clip=3.0)
    # token 4 (A<0): min(5.0, -A * 3) = 3.0 -> (-1.2 - 0.5 + 0.8 + 3.0) / 4 = 0.525
    assert loss.item() == pytest.approx(0.525)
    assert m["dual_clipfrac"] == pytest.approx(0.25)
    loss, _ = ppo_policy_loss(NEW, OLD, ADV, MASK, clip_high=0.28)
    # token 1: max(-1.5, -1.28) = -1.28 -> (-1.28 - 0.5 + 0.8 + 5.0) / 4 = 1.005
    assert loss.item() == pytest.approx(1.005)
    with pytest.raises(ValueError):
        ppo_policy_loss(NEW, OLD, ADV, MASK, dual_clip=0.5)


def test_ppo_loss_gradient_is_policy_gradient_at_ratio_one():
    logp = torch.zeros(1, 3, requires_grad=True)
    adv = torch.tensor([[2.0, -1.0, 4.0]])
    loss, _ = ppo_policy_loss(logp, logp.detach(), adv, torch.tensor([[True, True, False]]))
    loss.backward()
    # d/dlogp of mean(-A * exp(logp - old)) = -A / 2 on the two valid tokens
    assert logp.grad[0].tolist() == pytest.approx([-1.0, 0.5, 0.0])


def test_value_clipping_golden():
    values, old = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.5]])
    returns, mask = torch.tensor([[2.0, 0.6]]), torch.tensor([[True, True]])
    loss, m = value_loss(values, old, returns, mask, clip=0.2)
    # token 1: v_clip = 0.5 + 0.2 = 0.7 ; max((1-2)^2, (0.7-2)^2) = max(1, 1.69) = 1.69 (clipped)
    # token 2: v_clip = 0.5 - 0.2 = 0.3 ; max((0-0.6)^2, (0.3-0.6)^2) = max(0.36, 0.09) = 0.36
    # 0.5 * (1.69 + 0.36) / 2 = 0.5125
    assert loss.item() == pytest.approx(0.5125)
    assert m["vf_clipfrac"] == pytest.approx(0.5)
    loss, _ = value_loss(values, old, returns, mask, clip=None)
    assert loss.item() == pytest.approx(0.5 * (1.0 + 0.36) / 2)  # 0.34


def test_aggregate_modes_golden():
    loss_mat = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0], [7.0, 7.0, 7.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)  # row 3 has no token
    assert aggregate(loss_mat, mask, "token-mean").item() == pytest.approx(2.5)  # (1+2+3+4) / 4
    assert aggregate(loss_mat, mask, "seq-mean-token-mean").item() == pytest.approx(3.0)  # (2 + 4) / 2
    assert aggregate(loss_mat, mask, "seq-mean-token-sum").item() == pytest.approx(5.0)  # (6 + 4) / 2
    with pytest.raises(ValueError):
        aggregate(loss_mat, mask, "mean")
    assert aggregate(loss_mat, torch.zeros_like(mask)).item() == 0.0  # empty mask: 0, not NaN


def test_masked_whiten_and_mean():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[True, True, True, False]])
    # mean 2, unbiased var ((1 + 0 + 1) / 2) = 1 -> [-1, 0, 1], 0 outside the mask
    assert masked_whiten(x, mask)[0].tolist() == pytest.approx([-1.0, 0.0, 1.0, 0.0], abs=1e-6)
    assert masked_whiten(x, mask, shift_mean=False)[0].tolist() == pytest.approx(
        [1.0, 2.0, 3.0, 0.0], abs=1e-6
    )
    assert masked_mean(x, mask).item() == pytest.approx(2.0)
    assert masked_mean(x, mask, dim=1).tolist() == pytest.approx([2.0])


def test_entropy():
    assert entropy_from_logits(torch.zeros(4)).item() == pytest.approx(math.log(4))
    logits = torch.randn(2, 3, 7, generator=torch.Generator().manual_seed(0))
    ref = torch.distributions.Categorical(logits=logits).entropy()
    assert entropy_from_logits(logits).flatten().tolist() == pytest.approx(ref.flatten().tolist(), abs=1e-5)
    mask = torch.tensor([[True, False, False], [True, True, False]])
    assert masked_entropy(logits, mask).item() == pytest.approx(ref[mask].mean().item(), abs=1e-5)


def test_kl_penalty_golden():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    # log(pi/ref) = log 2 = 0.693147
    assert kl_penalty(logp, ref, "k1").item() == pytest.approx(0.693147, abs=1e-6)
    assert kl_penalty(logp, ref, "abs").item() == pytest.approx(0.693147, abs=1e-6)
    assert kl_penalty(logp, ref, "k2").item() == pytest.approx(0.5 * 0.693147**2, abs=1e-6)  # 0.240227
    # k3 = ref/pi - 1 - log(ref/pi) = 0.5 - 1 + 0.693147 = 0.193147
    assert kl_penalty(logp, ref, "k3").item() == pytest.approx(0.193147, abs=1e-6)
    with pytest.raises(ValueError):
        kl_penalty(logp, ref, "k4")


def test_kl_controllers_golden():
    ctl = AdaptiveKLController(init=0.3, target=6.0, horizon=10000)
    ctl.update(9.0, 8)  # error 9/6 - 1 = 0.5 -> clipped 0.2 ; 0.3 * (1 + 0.2 * 8 / 10000) = 0.300048
    assert ctl.value == pytest.approx(0.300048)
    ctl.update(3.0, 8)  # error -0.5 -> -0.2 ; 0.300048 * (1 - 0.00016) = 0.29999999232
    assert ctl.value == pytest.approx(0.29999999232)
    ctl.update(6.6, 100)  # error 0.1 (inside the clip) ; * (1 + 0.1 * 100 / 10000) = * 1.001
    assert ctl.value == pytest.approx(0.29999999232 * 1.001)
    restored = AdaptiveKLController(init=1.0, target=1.0, horizon=1.0)
    restored.load_state_dict(ctl.state_dict())
    assert (restored.value, restored.target, restored.horizon) == (ctl.value, 6.0, 10000.0)
    fixed = FixedKLController(0.05)
    fixed.update(100.0, 8)
    assert fixed.value == 0.05
    other = FixedKLController(1.0)
    other.load_state_dict(fixed.state_dict())
    assert other.value == 0.05


def test_apply_kl_in_reward_only_on_action_tokens():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    kl = torch.tensor([[0.5, 0.5, 0.5]])
    mask = torch.tensor([[True, False, True]])
    # r - 0.1 * 0.5 on action tokens: [-0.05, 0 (observation), 0.95]
    assert apply_kl_in_reward(rewards, kl, 0.1, mask)[0].tolist() == pytest.approx([-0.05, 0.0, 0.95])


def test_token_logprobs_golden_and_one_token_rows():
    from steprl.modeling import token_logprobs

    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [1 / 3, 1 / 3, 1 / 3]]]))
    out = token_logprobs(logits, torch.tensor([[0, 1, 2]]))
    # position 0 has no prediction; token 1 given position 0: log 0.25; token 2 given position 1: log 0.1
    assert out.tolist()[0] == pytest.approx([0.0, math.log(0.25), math.log(0.1)], abs=1e-6)
    assert token_logprobs(torch.zeros(2, 1, 3), torch.tensor([[1], [2]])).shape == (2, 1)


def test_explained_variance_by_hand():
    """Targets 1, 2, 3, 6 (mean 3, population variance 3.5); values off by 1, -1, 0, 0: the residual has
    mean 0 and variance 0.5, so EV = 1 - 0.5 / 3.5. A masked position never counts."""
    from steprl.algorithms.losses import explained_variance

    returns = torch.tensor([[1.0, 2.0, 3.0, 6.0, 100.0]])
    values = torch.tensor([[0.0, 3.0, 3.0, 6.0, -100.0]])
    mask = torch.tensor([[True, True, True, True, False]])
    assert explained_variance(values, returns, mask) == pytest.approx(1 - 0.5 / 3.5)
    assert explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert explained_variance(torch.full_like(returns, 3.0), returns, mask) == pytest.approx(0.0)  # the mean
    assert math.isnan(explained_variance(values, torch.ones_like(returns), mask))  # constant targets
    assert math.isnan(explained_variance(values, returns, torch.zeros_like(mask)))  # nothing under the mask
