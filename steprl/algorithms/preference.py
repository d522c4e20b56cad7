"""Preference and ranking objectives (ETO's DPO, TRICE's RRHF ranking) and the step-level pair builder.

Pure functions: tensors in, tensors out (the pair builder works on ``Trajectory`` objects, no Ray,
no model). Log-prob tensors are aligned with tokens, ``logprobs[..., t] = log p(token t | < t)``,
and every "response" is the set of action tokens under a mask, so tool output (observation tokens)
never enters a loss.

* DPO (Rafailov et al. 2023), as used by ETO on step-level pairs::

      L = -log sigmoid(beta * ((log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))))

  with ``log pi(y)`` summed over the response's action tokens.
* RRHF ranking (Yuan et al. 2023), as used by TRICE stage 2, per question with k candidates::

      p_i = sum_t log pi(y_i,t) / |y_i|**length_penalty
      L   = alpha * sum_{score_i < score_j} max(0, p_i - p_j) + NLL(best candidate)

  with ``score_i`` from :func:`candidate_scores` (the answers decide, tool calls break ties).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from steprl.protocol import Trajectory

PAIR_BY = ("step_reward", "return")


class EmptyResponseError(ValueError):
    """A preference pair or candidate has no response tokens (e.g. truncated to nothing)."""


# ---- sequence log-probs ----------------------------------------------------------------------------


def sequence_logprobs(token_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``sum_t logprobs[..., t]`` over ``mask`` (the response's action tokens): [..., T] -> [...]."""
    return (token_logprobs * mask.to(token_logprobs.dtype)).sum(-1)


def length_normalized_logprobs(
    token_logprobs: torch.Tensor, mask: torch.Tensor, length_penalty: float = 1.0
) -> torch.Tensor:
    """``sum_t log p / |y|**length_penalty`` over ``mask``; 0 for an empty response (never NaN)."""
    n = mask.to(token_logprobs.dtype).sum(-1)
    return sequence_logprobs(token_logprobs, mask) / n.clamp(min=1.0) ** length_penalty


def require_nonempty(token_counts: torch.Tensor, real: torch.Tensor, what: str = "response") -> None:
    """Raise if a real row has a response with no tokens (a truncation that cut it to nothing).

    ``token_counts`` [N, ...]: action tokens per response; ``real`` [N]: rows that are data (not padding).
    An empty response has log-prob 0 whatever the model does: a DPO pair with an empty rejected side
    trains ``log pi(y_w)`` up without bound and looks like a perfect reward accuracy.
    """
    empty = (token_counts <= 0) & real.view(-1, *([1] * (token_counts.dim() - 1))).bool()
    if empty.any():
        rows = sorted({int(i) for i in empty.nonzero()[:, 0].tolist()})
        raise EmptyResponseError(
            f"{len(rows)} {what}(s) with no action tokens (rows {rows[:8]}): truncated to nothing? "
            "drop such pairs before training (see truncate_pair)"
        )


# ---- DPO ---------------------------------------------------------------------------------------------


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean DPO loss over pairs (summed response log-probs in, [P] each); ``weight`` masks padding pairs.

    Returns the loss (a scalar with a graph even when every weight is 0) and metrics: the implicit
    rewards ``beta * (log pi - log ref)`` of each side, their margin, and the share of pairs whose
    chosen side has the larger implicit reward.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    logits = chosen_reward - rejected_reward
    losses = -F.logsigmoid(logits)
    w = torch.ones_like(losses) if weight is None else weight.to(losses.dtype)
    n = w.sum().clamp(min=1.0)
    loss = (losses * w).sum() / n
    with torch.no_grad():
        metrics = {
            "dpo_loss": float(loss.detach()),
            "reward_accuracy": float(((logits > 0).to(w.dtype) * w).sum() / n),
            "reward_margin": float((logits * w).sum() / n),
            "chosen_reward": float((chosen_reward * w).sum() / n),
            "rejected_reward": float((rejected_reward * w).sum() / n),
        }
    return loss, metrics


# ---- RRHF ranking (TRICE stage 2) --------------------------------------------------------------------


def rrhf_rank_loss(p: torch.Tensor, scores: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Per-group ``sum_{score_i < score_j} max(0, p_i - p_j)``: [G, k] -> [G].

    Ties (equal scores) give no term; ``valid`` [G, k] leaves out missing candidates (padding).
    """
    if valid is None:
        valid = torch.ones_like(scores, dtype=torch.bool)
    worse_than = scores.unsqueeze(-1) < scores.unsqueeze(-2)  # [G, i, j]: score_i < score_j
    pairs = worse_than & valid.unsqueeze(-1) & valid.unsqueeze(-2)
    hinge = torch.relu(p.unsqueeze(-1) - p.unsqueeze(-2))  # max(0, p_i - p_j)
    return (hinge * pairs.to(p.dtype)).sum((-1, -2))


def best_candidate(scores: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Index of the highest-scoring valid candidate per group (the first one on a tie): [G, k] -> [G]."""
    if valid is not None:
        scores = scores.masked_fill(~valid, float("-inf"))
    return scores.argmax(-1)  # torch returns the first maximal index


def trice_loss(
    token_logprobs: torch.Tensor,
    action_mask: torch.Tensor,
    scores: torch.Tensor,
    group_weight: torch.Tensor,
    alpha: float,
    length_penalty: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """TRICE stage-2 loss, mean over real groups.

    ``token_logprobs``/``action_mask`` [G, k, T]; ``scores`` [G, k]; ``group_weight`` [G] (0 for padding
    groups). Per group: ``alpha * rrhf_rank_loss + NLL(best)``, with NLL the token-mean negative
    log-likelihood of the best candidate's action tokens. Candidates without action tokens are left
    out of the ranking and can't be chosen as best.
    """
    valid = action_mask.any(-1)
    w = group_weight.to(token_logprobs.dtype)
    require_nonempty(valid.sum(-1, keepdim=True).to(torch.long), group_weight.bool(), "candidate group")
    p = length_normalized_logprobs(token_logprobs, action_mask, length_penalty)
    rank = rrhf_rank_loss(p, scores, valid)
    best = best_candidate(scores, valid)
    idx = best.view(-1, 1, 1).expand(-1, 1, token_logprobs.shape[-1])
    best_lp = token_logprobs.gather(1, idx).squeeze(1)
    best_mask = action_mask.gather(1, idx).squeeze(1)
    nll = -length_normalized_logprobs(best_lp, best_mask, 1.0)
    per_group = alpha * rank + nll
    n = w.sum().clamp(min=1.0)
    loss = (per_group * w).sum() / n
    with torch.no_grad():
        worse = (scores.unsqueeze(-1) < scores.unsqueeze(-2)) & valid.unsqueeze(-1) & valid.unsqueeze(-2)
        misordered = worse & (p.unsqueeze(-1) > p.unsqueeze(-2))
        metrics = {
            "trice_loss": float(loss.detach()),
            "rank_loss": float((rank * w).sum() / n),
            "sft_nll": float((nll * w).sum() / n),
            "ranked_pairs": float((worse.sum((-1, -2)).to(w.dtype) * w).sum() / n),
            "misordered_pairs": float((misordered.sum((-1, -2)).to(w.dtype) * w).sum() / n),
        }
    return loss, metrics


def candidate_scores(
    is_solved: Sequence[float],
    tool_step_rewards: Sequence[Sequence[float]],
    tie_break_weight: float,
    reply_rewards: Sequence[Sequence[float]] | None = None,
) -> list[float]:
    """Execution-feedback score of each candidate: ``IsSolved + sum(reply rewards) + w * mean(tool-step
    rewards)``.

    The answers decide: IsSolved (1 / 0.5 / 0) for the final answer and, in a conversation, each reply's
    reward (the per-turn check ``TurnScore_u`` of an earlier user turn, what ``shape_conversation_rewards``
    gives a reply step); a candidate that answered more user turns correctly ranks higher. The mean
    shaped reward of the candidate's tool calls (each in [0, 1]) breaks ties. With ``w < 0.5`` the
    order is lexicographic (answers first) whenever the answer scores are multiples of 0.5 (IsSolved
    always is; so are 0/1 turn checks). Without replies (``reply_rewards`` None or empty) this is
    ``IsSolved + w * mean(tool-step rewards)``.
    """
    if not 0.0 <= tie_break_weight < 0.5:
        raise ValueError(f"tie_break_weight must be in [0, 0.5), got {tie_break_weight}")
    replies = reply_rewards if reply_rewards is not None else [[] for _ in is_solved]
    out = []
    for solved, rewards, answered in zip(is_solved, tool_step_rewards, replies, strict=True):
        mean = sum(rewards) / len(rewards) if rewards else 0.0
        out.append(float(solved) + float(sum(answered)) + tie_break_weight * mean)
    return out


# ---- step-level preference pairs (ETO) --------------------------------------------------------------


@dataclass
class StepPair:
    """Same prefix (prompt + the shared first ``step`` steps), a better and a worse next step."""

    task_id: str
    step: int
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    chosen_score: float
    rejected_score: float


def _action_span(traj: Trajectory, step: int) -> tuple[int, int] | None:
    """[start, end) of step ``step``'s action tokens in ``response_ids`` (contiguous by construction)."""
    pos = [
        i for i, (a, s) in enumerate(zip(traj.action_mask, traj.step_index, strict=True)) if a and s == step
    ]
    return (pos[0], pos[-1] + 1) if pos else None


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def divergence(a: Trajectory, b: Trajectory) -> tuple[int, int] | None:
    """``(k, start)``: the step where two episodes of one prompt first act differently, and where that
    step's action starts in both; None if they never diverge on an action (one is a prefix of the other,
    or they first differ inside an observation, which then is not a shared prefix)."""
    if a.prompt_ids != b.prompt_ids:
        return None
    lcp = _common_prefix(a.response_ids, b.response_ids)
    if lcp >= len(a.response_ids) or lcp >= len(b.response_ids):
        return None
    if not (a.action_mask[lcp] and b.action_mask[lcp]) or a.step_index[lcp] != b.step_index[lcp]:
        return None
    k = a.step_index[lcp]
    span_a, span_b = _action_span(a, k), _action_span(b, k)
    if span_a is None or span_b is None or span_a[0] != span_b[0]:
        return None
    return k, span_a[0]


def step_score(traj: Trajectory, k: int, by: str, gamma: float = 1.0) -> float:
    """How good step k was: its shaped reward, or the discounted return from k to the end."""
    rewards = traj.step_rewards
    if by == "step_reward":
        return rewards[k]
    if by == "return":
        return sum(gamma**i * r for i, r in enumerate(rewards[k:]))
    raise ValueError(f"pair_by must be one of {PAIR_BY}, got {by!r}")


def build_step_pairs(
    trajs: Sequence[Trajectory], by: str = "step_reward", gamma: float = 1.0
) -> list[StepPair]:
    """Step-level preference pairs from scored rollouts.

    For every two episodes of the same group (task) that share a token prefix and first act
    differently at step k, the one whose step k scores higher (``step_score``) is chosen and the
    other rejected; the pair's prompt is the prompt plus the shared prefix, its responses the two
    step-k actions. Ties give no pair. Identical pairs (same prompt and responses) are kept once.
    """
    if by not in PAIR_BY:
        raise ValueError(f"pair_by must be one of {PAIR_BY}, got {by!r}")
    groups: dict[str, list[Trajectory]] = {}
    for t in trajs:
        groups.setdefault(t.group_id or t.task_id, []).append(t)
    pairs, seen = [], set()
    for members in groups.values():
        for i in range(len(members)):
            for j in range(i + 1, len(members)):
                a, b = members[i], members[j]
                div = divergence(a, b)
                if div is None:
                    continue
                k, start = div
                if k >= a.num_steps or k >= b.num_steps:
                    continue  # a step without a record (cut before it was scored) has no score
                sa, sb = step_score(a, k, by, gamma), step_score(b, k, by, gamma)
                if sa == sb:
                    continue
                win, lose, ws, ls = (a, b, sa, sb) if sa > sb else (b, a, sb, sa)
                (ws_, we), (ls_, le) = _action_span(win, k), _action_span(lose, k)  # type: ignore[misc]
                pair = StepPair(
                    task_id=a.task_id,
                    step=k,
                    prompt_ids=list(a.prompt_ids) + list(a.response_ids[:start]),
                    chosen_ids=list(win.response_ids[ws_:we]),
                    rejected_ids=list(lose.response_ids[ls_:le]),
                    chosen_score=ws,
                    rejected_score=ls,
                )
                key = (tuple(pair.prompt_ids), tuple(pair.chosen_ids), tuple(pair.rejected_ids))
                if key not in seen:
                    seen.add(key)
                    pairs.append(pair)
    return pairs


def truncate_pair(
    prompt: list[int], chosen: list[int], rejected: list[int], max_length: int, max_prompt_length: int
) -> tuple[list[int], list[int], list[int]] | None:
    """Fit a pair into ``max_length`` tokens per side, or None when it can't be trained on.

    If prompt + the longer response is too long, the prompt keeps its last ``max_prompt_length``
    tokens, then both responses are cut to the room left. A response cut to nothing (or two responses
    made identical by the cut) returns None: the caller drops the pair and counts it, never trains on it.
    """
    if max_prompt_length >= max_length:
        raise ValueError(f"max_prompt_length ({max_prompt_length}) must be < max_length ({max_length})")
    if len(prompt) + max(len(chosen), len(rejected)) > max_length and len(prompt) > max_prompt_length:
        prompt = prompt[-max_prompt_length:]
    room = max_length - len(prompt)
    chosen, rejected = chosen[:room], rejected[:room]
    if not chosen or not rejected or chosen == rejected:
        return None
    return prompt, chosen, rejected
