"""Critic-free estimators: one advantage per episode from its outcome and its group (GRPO, RLOO), or
discounted returns-to-go (REINFORCE++). Registered with the others of :mod:`steprl.algorithms.advantages`
(this module is imported by ``steprl.algorithms``)."""

from __future__ import annotations

from collections import defaultdict

import torch

from steprl.algorithms.advantages import (
    AdvantageConfig,
    AdvantageOutput,
    _extra,
    action_token_gae,
    register_advantage,
)
from steprl.algorithms.placement import place_step_rewards
from steprl.protocol import Batch


def _outcome(batch: Batch, cfg: AdvantageConfig, extra: torch.Tensor | None) -> torch.Tensor:
    """[B] episode outcome for critic-free estimators (plus the summed extra token rewards)."""
    if cfg.outcome == "is_solved":
        score = batch.is_solved.float()
    elif cfg.outcome == "sum":
        score = (batch.step_rewards * batch.step_mask).sum(dim=1)
    else:
        raise ValueError(f"unknown outcome {cfg.outcome!r}; known: 'is_solved', 'sum'")
    return score + _extra(batch, extra).sum(dim=1)


def _groups(batch: Batch) -> dict[str, list[int]]:
    if len(batch.group_ids) != batch.size:
        raise ValueError(f"{len(batch.group_ids)} group ids for {batch.size} trajectories")
    groups: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(batch.group_ids):
        groups[g].append(i)
    return groups


def _critic_free(batch: Batch, per_episode: torch.Tensor) -> AdvantageOutput:
    """Broadcast a per-episode advantage to action tokens; no critic targets."""
    adv = per_episode.view(-1, 1) * batch.action_mask
    return AdvantageOutput(adv, adv.clone(), torch.zeros_like(batch.action_mask))


@register_advantage("grpo")
def grpo(
    batch: Batch,
    values: torch.Tensor | None,
    cfg: AdvantageConfig,
    *,
    extra_token_rewards: torch.Tensor | None = None,
) -> AdvantageOutput:
    """Group-normalized outcome ``(R - mean_g) / (std_g + eps)`` (``norm_by_std``) or ``R - mean_g``.

    A group of one has no baseline: mean 0, std 1 (verl's convention), so A = R. std is unbiased.
    """
    del values
    score = _outcome(batch, cfg, extra_token_rewards)
    adv = torch.zeros_like(score)
    for members in _groups(batch).values():
        g = score[members]
        mean, std = (g.mean(), g.std()) if len(members) > 1 else (torch.tensor(0.0), torch.tensor(1.0))
        adv[members] = (g - mean) / (std + cfg.eps) if cfg.norm_by_std else g - mean
    return _critic_free(batch, adv)


@register_advantage("rloo")
def rloo(
    batch: Batch,
    values: torch.Tensor | None,
    cfg: AdvantageConfig,
    *,
    extra_token_rewards: torch.Tensor | None = None,
) -> AdvantageOutput:
    """Leave-one-out baseline ``A_i = R_i - mean_{j != i} R_j`` within the group (A = R if alone)."""
    del values
    score = _outcome(batch, cfg, extra_token_rewards)
    adv = score.clone()
    for members in _groups(batch).values():
        n = len(members)
        if n > 1:
            g = score[members]
            adv[members] = g - (g.sum() - g) / (n - 1)
    return _critic_free(batch, adv)


@register_advantage("reinforce_pp", whitens=True)
def reinforce_pp(
    batch: Batch,
    values: torch.Tensor | None,
    cfg: AdvantageConfig,
    *,
    extra_token_rewards: torch.Tensor | None = None,
) -> AdvantageOutput:
    """REINFORCE++: discounted returns-to-go over action tokens, whitened over the batch.

    Token rewards are the placed step rewards (+ extra); ``G_t = r_t + gamma G_next`` where
    "next" is the next action token (observation spans skipped, not reset); no bootstrap.
    """
    del values
    act = batch.action_mask
    rewards = place_step_rewards(batch) + _extra(batch, extra_token_rewards)
    zeros = torch.zeros_like(rewards)
    _, returns = action_token_gae(zeros, rewards, act, rewards.new_zeros(batch.size), cfg.gamma, 1.0)
    return AdvantageOutput(returns * act, returns, torch.zeros_like(act))
