"""ARPO (Agentic Reinforced Policy Optimization): the pure pieces.

* **Entropy after a tool call.** The normalized token entropy ``H / log(support)`` of the
  next-token distribution, averaged over the first ~20 tokens the policy generates after a tool
  result (``H_now``), against the same average over the first ~20 tokens of that trajectory's
  first turn (``H_initial``): ``dH = H_now - H_initial``. Exact from logits (support = vocabulary);
  from top-k log-probs (vLLM) the top-k mass is renormalized and the support is k, an estimate that
  only sees the head of the distribution.
* **Branching.** ``p = clip(alpha + beta * dH, 0, 1)``; with probability p a source trajectory
  spawns ``min(beam_size - 1, remaining budget)`` branches that share its prefix.
* **Reward.** -1 on a format violation, else the token F1 of the final answer against the
  expected answer, plus a bonus when several distinct tools were used.
* **Advantage attribution.** "soft": plain GRPO, every trajectory's tokens carry its own advantage
  (a shared prefix is counted once per trajectory that contains it); "hard": a token of a shared
  prefix carries the mean advantage of the trajectories that share it.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence

import torch

ATTRIBUTIONS = ("soft", "hard")


# ----------------------------------------------------------------------------- entropy


def normalized_entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """[..., V] logits -> [...] entropy of softmax(logits) divided by log V (in [0, 1])."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    h = -(logp.exp() * logp).sum(dim=-1)
    return h / math.log(logits.shape[-1])


def normalized_entropy_from_topk(logprobs: Sequence[float]) -> float:
    """Top-k log-probs of one position -> entropy of the renormalized top-k divided by log k.

    The tail outside the top k is ignored: an estimate that is exact only when the top k hold all
    the mass. One entry (k = 1) has no spread to measure and gives 0.
    """
    k = len(logprobs)
    if k <= 1:
        return 0.0
    lp = torch.tensor([float(x) for x in logprobs], dtype=torch.float64)
    lp = lp - torch.logsumexp(lp, dim=0)
    h = float(-(lp.exp() * lp).sum())
    return h / math.log(k)


def window_entropy(entropies: Sequence[float] | None, window: int) -> float | None:
    """Mean of the first ``window`` per-token entropies (None when there are none)."""
    if not entropies:
        return None
    head = list(entropies)[:window]
    return math.fsum(head) / len(head)


def branch_probability(h_now: float, h_initial: float, alpha: float, beta: float) -> float:
    """``clip(alpha + beta * (H_now - H_initial), 0, 1)``."""
    return min(1.0, max(0.0, alpha + beta * (h_now - h_initial)))


def num_branches(p: float, u: float, beam_size: int, remaining: int) -> int:
    """Branches a source spawns this round: ``min(beam_size - 1, remaining)`` if ``u < p``, else 0."""
    if u >= p or remaining <= 0:
        return 0
    return max(0, min(beam_size - 1, remaining))


# ----------------------------------------------------------------------------- reward

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def answer_tokens(text: str | None) -> list[str]:
    """Lower-cased words without punctuation and articles (SQuAD-style normalization)."""
    text = (text or "").lower().translate(_PUNCT)
    return _ARTICLES.sub(" ", text).split()


def answer_f1(prediction: str | None, expected: str) -> float:
    """Token F1 between the final answer and the expected answer (1 if both are empty)."""
    pred, gold = answer_tokens(prediction), answer_tokens(expected)
    if not pred or not gold:
        return float(pred == gold)
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def arpo_reward(
    format_ok: bool,
    f1: float,
    distinct_tools: int,
    solved: bool = True,
    format_penalty: float = -1.0,
    tool_bonus: float = 0.1,
    bonus_min_tools: int = 2,
    bonus_requires_correct: bool = True,
) -> float:
    """``format_penalty`` on a format violation, else ``f1 (+ tool_bonus)``.

    The bonus is paid when at least ``bonus_min_tools`` distinct tools were called and, if
    ``bonus_requires_correct`` (the paper's rule), the answer was correct (``solved``); without that
    condition calling a distractor tool would earn a reward of its own.
    """
    if not format_ok:
        return format_penalty
    bonus = distinct_tools >= bonus_min_tools and (solved or not bonus_requires_correct)
    return f1 + (tool_bonus if bonus else 0.0)


# ----------------------------------------------------------------------------- attribution


def segment_ids_from_cuts(
    cuts: Sequence[Sequence[tuple[int, int]]], prompt_lengths: Sequence[int], width: int
) -> torch.Tensor:
    """[B, width] segment id of every response token (-1 on the prompt and padding).

    ``cuts[b]`` lists ``(start, segment)`` pairs in response coordinates, sorted by start: tokens
    from ``start`` to the next cut belong to ``segment``. Rows that share a prefix carry the same
    segment id over it, at the same positions (their prompts are the same).
    """
    out = torch.full((len(cuts), width), -1, dtype=torch.long)
    for b, (row, p) in enumerate(zip(cuts, prompt_lengths, strict=True)):
        starts = [s for s, _ in row]
        if starts != sorted(starts) or (starts and starts[0] != 0):
            raise ValueError(f"row {b}: segment cuts must start at 0 and be sorted, got {starts}")
        for i, (start, seg) in enumerate(row):
            end = row[i + 1][0] if i + 1 < len(row) else width - p
            out[b, p + start : p + end] = seg
    return out


def attribute_advantages(
    advantages: torch.Tensor, segment_ids: torch.Tensor, mask: torch.Tensor, mode: str
) -> torch.Tensor:
    """Soft (unchanged) or hard attribution of per-token advantages [B, T].

    hard: ``A'[b, t] = mean_{r : seg[r, t] = seg[b, t], mask[r, t]} A[r, t]`` on ``mask`` tokens,
    i.e. a shared token gets the mean advantage of the trajectories sharing it; tokens of one
    trajectory alone keep their advantage.
    """
    if mode not in ATTRIBUTIONS:
        raise ValueError(f"unknown attribution {mode!r}; known: {ATTRIBUTIONS}")
    if mode == "soft":
        return advantages * mask
    valid = mask & (segment_ids >= 0)
    T = segment_ids.shape[1]
    positions = torch.arange(T, device=segment_ids.device).expand_as(segment_ids)
    keys = (segment_ids * T + positions)[valid]  # one key per (segment, position)
    _, inverse = torch.unique(keys, return_inverse=True)
    values = advantages[valid].float()
    sums = torch.zeros(int(inverse.max()) + 1 if keys.numel() else 0).index_add_(0, inverse, values)
    counts = torch.zeros_like(sums).index_add_(0, inverse, torch.ones_like(values))
    hard = advantages.clone().float()
    hard[valid] = sums[inverse] / counts[inverse]
    return hard * mask
