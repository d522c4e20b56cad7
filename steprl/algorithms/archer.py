"""ArCHer (Zhou et al. 2024, hierarchical actor-critic): the pure pieces.

The critic works on utterances (steps): ``Q(s_k, a_k)`` is read at the last action token of step k
(the state and the whole action have been seen), ``V(s_k)`` at the last token before step k's first
action token. Two Q heads and a V head share one backbone; target copies of all three are updated
by Polyak averaging. TD targets, on the same step rewards as StepTool:

* ``y_Q = r_k + gamma * (1 - terminal_k) * V_target(s_{k+1})`` for both Q heads;
* ``y_V = min(Q1_target, Q2_target)(s_k, a'_k)`` with ``a'_k ~ pi(. | s_k)``, the current policy;
* target update ``theta_target <- (1 - tau) * theta_target + tau * theta``.

The token-level policy is trained with the utterance advantage ``A_k = min(Q1, Q2)(s_k, a_k) - V(s_k)``
broadcast to step k's action tokens.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from steprl.algorithms.placement import action_step_index, step_first_positions, step_last_positions
from steprl.protocol import Batch


def step_positions(batch: Batch) -> dict[str, torch.Tensor]:
    """[B, S] positions of each step's state / action / next state, and which steps are terminal.

    ``state``: the last token before the step's first action token (V(s_k) is read there);
    ``action``: the step's last action token (Q(s_k, a_k)); ``next_state``: the next step's state,
    or for the last step the last token of the episode (the bootstrap state of a truncated episode;
    the position is kept but ``terminal`` is True when the episode was not truncated).
    """
    idx = action_step_index(batch)
    S = batch.step_mask.shape[1]
    first = step_first_positions(idx, S)
    if bool((batch.step_mask & (first <= 0)).any()):
        raise ValueError("a step starts at position 0: no state before it (empty prompt)")
    state = torch.where(batch.step_mask, first - 1, torch.zeros_like(first))
    action = torch.where(batch.step_mask, step_last_positions(idx, S), torch.zeros_like(first))
    n = batch.step_mask.sum(dim=1)
    k = torch.arange(S).view(1, -1)
    is_last = k == (n - 1).view(-1, 1)
    following = torch.zeros_like(state)
    following[:, :-1] = state[:, 1:]
    next_state = torch.where(is_last, batch.last_index.view(-1, 1).expand_as(state), following)
    terminal = is_last & ~batch.truncated.view(-1, 1)
    mask = batch.step_mask
    return {
        "state": state * mask,
        "action": action * mask,
        "next_state": next_state * mask,
        "terminal": terminal & mask,
    }


def td_q_targets(
    rewards: torch.Tensor, next_v: torch.Tensor, terminal: torch.Tensor, step_mask: torch.Tensor, gamma: float
) -> torch.Tensor:
    """``y_Q = r + gamma * (1 - terminal) * V_target(s')`` on real steps, 0 elsewhere."""
    return (rewards + gamma * (~terminal).float() * next_v) * step_mask


def double_q_min(q1: torch.Tensor, q2: torch.Tensor) -> torch.Tensor:
    """The clipped double-Q estimate ``min(Q1, Q2)`` (used for V targets and for the advantage)."""
    return torch.minimum(q1, q2)


def utterance_advantages(
    q1: torch.Tensor, q2: torch.Tensor, v: torch.Tensor, step_mask: torch.Tensor
) -> torch.Tensor:
    """``A_k = min(Q1, Q2)(s_k, a_k) - V(s_k)`` per step, 0 past the last step."""
    return (double_q_min(q1, q2) - v) * step_mask


@torch.no_grad()
def soft_update_(target: Iterable[torch.Tensor], online: Iterable[torch.Tensor], tau: float) -> None:
    """Polyak averaging in place: ``t <- (1 - tau) * t + tau * o`` for matching tensors."""
    if not 0.0 < tau <= 1.0:
        raise ValueError(f"tau must be in (0, 1], got {tau}")
    for t, o in zip(target, online, strict=True):
        if t.shape != o.shape:
            raise ValueError(f"target {tuple(t.shape)} and online {tuple(o.shape)} tensors differ in shape")
        t.mul_(1.0 - tau).add_(o, alpha=tau)


def gather_steps(token_values: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """[B, T] per-token values -> [B, S] values at the given per-step positions."""
    return token_values.gather(1, positions)
