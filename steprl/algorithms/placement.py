"""Where step-level quantities land on tokens.

A step's reward goes on the LAST action token of that step: that token closes the step's action,
so every earlier token of the step sees the reward through the return, and a reward never sits on
an observation or padding token, where masked GAE would drop it silently. Step boundaries come
from ``step_index`` (data), never from where rewards are non-zero.

All helpers take ``[B, T]`` tensors laid out as in :class:`steprl.protocol.Batch`.
"""

from __future__ import annotations

import torch

from steprl.protocol import Batch


def _step_hits(step_index: torch.Tensor, num_steps: int) -> torch.Tensor:
    """[B, S, T] bool: token t is an action token of step k."""
    ks = torch.arange(num_steps, device=step_index.device)
    return step_index.unsqueeze(1) == ks.view(1, -1, 1)


def step_first_positions(step_index: torch.Tensor, num_steps: int) -> torch.Tensor:
    """[B, S] position of the first action token of each step; -1 where the step has none."""
    hits = _step_hits(step_index, num_steps)
    T = step_index.shape[1]
    pos = torch.arange(T, device=step_index.device).view(1, 1, -1)
    first = torch.where(hits, pos, T).amin(dim=-1)
    return torch.where(first == T, -1, first)


def step_last_positions(step_index: torch.Tensor, num_steps: int) -> torch.Tensor:
    """[B, S] position of the last action token of each step; -1 where the step has none."""
    hits = _step_hits(step_index, num_steps)
    pos = torch.arange(step_index.shape[1], device=step_index.device).view(1, 1, -1)
    return torch.where(hits, pos, -1).amax(dim=-1)


def action_step_index(batch: Batch) -> torch.Tensor:
    """``step_index`` restricted to action tokens (-1 elsewhere), after checking the step layout.

    Raises ValueError when an action token has no step, when a token belongs to a step the
    trajectory does not have (``step_mask`` False), or when a real step has no action token.
    """
    idx = torch.where(batch.action_mask, batch.step_index, -1)
    S = batch.step_mask.shape[1]
    if bool((batch.action_mask & (batch.step_index < 0)).any()):
        b = int((batch.action_mask & (batch.step_index < 0)).any(dim=1).nonzero()[0])
        raise ValueError(f"row {b}: an action token has step_index -1")
    if bool((idx >= S).any()):
        b = int((idx >= S).any(dim=1).nonzero()[0])
        raise ValueError(f"row {b}: an action token has step_index >= {S} (more steps than step_mask)")
    has_tokens = step_last_positions(idx, S) >= 0
    orphan = has_tokens & ~batch.step_mask
    if bool(orphan.any()):
        b, k = (int(x) for x in orphan.nonzero()[0])
        raise ValueError(f"row {b}: step {k} has action tokens but step_mask is False")
    empty = batch.step_mask & ~has_tokens
    if bool(empty.any()):
        b, k = (int(x) for x in empty.nonzero()[0])
        raise ValueError(f"row {b}: step {k} has step_mask=True but no action token")
    return idx


def place_step_values(step_values: torch.Tensor, step_index: torch.Tensor) -> torch.Tensor:
    """Put ``step_values[b, k]`` on the last action token of step k; 0 everywhere else.

    ``step_index`` must already be -1 outside action tokens (see :func:`action_step_index`).
    """
    B, S = step_values.shape
    last = step_last_positions(step_index, S)
    out = torch.zeros(step_index.shape, dtype=step_values.dtype, device=step_values.device)
    b, k = (last >= 0).nonzero(as_tuple=True)
    out[b, last[b, k]] = step_values[b, k]
    return out


def place_step_rewards(batch: Batch, step_rewards: torch.Tensor | None = None) -> torch.Tensor:
    """Token rewards [B, T]: each step's reward on the last action token of that step.

    ``step_rewards`` [B, S] overrides ``batch.step_rewards`` (e.g. the compat multipliers or a
    final-reward-only variant). Raises ValueError if a step with ``step_mask`` True has no action
    token, since its reward would otherwise vanish.
    """
    idx = action_step_index(batch)
    rewards = batch.step_rewards if step_rewards is None else step_rewards
    return place_step_values(rewards * batch.step_mask, idx)


def broadcast_step_values(step_values: torch.Tensor, step_index: torch.Tensor) -> torch.Tensor:
    """[B, T]: ``step_values[b, k]`` on every action token of step k, 0 elsewhere."""
    gathered = step_values.gather(1, step_index.clamp(min=0))
    return torch.where(step_index >= 0, gathered, torch.zeros_like(gathered))


def sum_per_step(token_values: torch.Tensor, step_index: torch.Tensor, num_steps: int) -> torch.Tensor:
    """[B, S]: the sum of ``token_values`` over the action tokens of each step (e.g. per-token KL)."""
    out = torch.zeros(
        token_values.shape[0], num_steps + 1, dtype=token_values.dtype, device=token_values.device
    )
    out.scatter_add_(1, step_index + 1, token_values)  # slot 0 collects the non-action tokens
    return out[:, 1:]


def steptool_compat_multipliers(step_mask: torch.Tensor) -> torch.Tensor:
    """[B, S] the published StepTool repository's reward multipliers ``n - 1 - k`` (0 past n).

    The repository (``StepPPOTrainer.compute_rewards``) adds ``score[k] * (n - k - 1)`` at the last
    token of assistant turn k, so the final (IsSolved) reward is multiplied by 0.
    """
    n = step_mask.sum(dim=1, keepdim=True)
    k = torch.arange(step_mask.shape[1], device=step_mask.device).view(1, -1)
    return ((n - 1 - k).clamp(min=0) * step_mask).to(torch.float32)
