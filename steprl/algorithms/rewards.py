"""StepTool step reward shaping, on plain Python floats (one episode at a time).

The reward worker scores one episode at a time, so these helpers take and return Python floats
and lists; batching happens later in :func:`steprl.protocol.collate`. Formulas (DESIGN.md s.1):

* intermediate step t: ``r_t = (alpha * SuccCalling_t + Contribution_t) / (1 + alpha)``;
* final step T (the answer): ``r_T = IsSolved`` with Solved = 1, Unsure = 0.5, Unsolved = 0;
* in a conversation, a reply step (the answer to a user turn u before the last one):
  ``r = TurnScore_u``, the suite's per-turn check (0 when the suite has none). User messages are
  observations and carry no reward.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

IS_SOLVED_SCORES = {"solved": 1.0, "unsure": 0.5, "unsolved": 0.0}


def is_solved_score(label: str | float) -> float:
    """'Solved'/'Unsure'/'Unsolved' (any case) or a number in [0, 1] -> float."""
    if isinstance(label, str):
        key = label.strip().lower()
        if key not in IS_SOLVED_SCORES:
            raise ValueError(f"unknown IsSolved label {label!r}; known: {sorted(IS_SOLVED_SCORES)}")
        return IS_SOLVED_SCORES[key]
    value = float(label)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"IsSolved must be in [0, 1], got {value}")
    return value


def contribution_from_annotation(score: float, scale: float = 5.0) -> float:
    """An annotator's 0..scale contribution score -> [0, 1].

    Out-of-range scores raise instead of being clipped: they mean a parsing bug upstream.
    """
    if not 0.0 <= float(score) <= scale:
        raise ValueError(f"contribution score {score} outside [0, {scale}]")
    return float(score) / scale


def average_judge_samples(
    samples: Sequence[float | None] | Sequence[Sequence[float] | None],
) -> float | list[float]:
    """Average k judge samples; ``None`` marks a sample the judge failed to produce (skipped).

    Samples are either floats (one score) -> float, or equal-length lists (one score per step)
    -> list of per-step means. Raises if no sample is usable.
    """
    valid = [s for s in samples if s is not None]
    if not valid:
        raise ValueError("no valid judge sample to average")
    if all(isinstance(s, (int, float)) for s in valid):
        return math.fsum(float(s) for s in valid) / len(valid)
    lengths = {len(s) for s in valid}  # type: ignore[arg-type]
    if len(lengths) != 1:
        raise ValueError(f"judge samples disagree on the number of steps: {sorted(lengths)}")
    return [math.fsum(float(x) for x in col) / len(valid) for col in zip(*valid, strict=True)]  # type: ignore[call-overload]


def shape_step_rewards(
    succ_calling: Sequence[float],
    contribution: Sequence[float],
    is_solved: str | float | None,
    alpha: float = 1.0,
    *,
    step_grained: bool = True,
) -> list[float]:
    """Per-step rewards of one episode.

    ``succ_calling``/``contribution`` have one entry per intermediate step (tool call);
    ``is_solved`` scores the final answer step and is appended as the last reward, or is ``None``
    when the episode ended without an answer (then there is no final step). ``step_grained=False``
    is the ablation "without step-grained reward": intermediate rewards are 0.
    """
    if len(succ_calling) != len(contribution):
        raise ValueError(
            f"{len(succ_calling)} SuccCalling values for {len(contribution)} Contribution values"
        )
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    rewards = []
    for s, c in zip(succ_calling, contribution, strict=True):
        if not (0.0 <= s <= 1.0 and 0.0 <= c <= 1.0):
            raise ValueError(f"SuccCalling {s} and Contribution {c} must be in [0, 1]")
        rewards.append((alpha * s + c) / (1.0 + alpha) if step_grained else 0.0)
    if is_solved is not None:
        rewards.append(is_solved_score(is_solved))
    return rewards


STEP_KINDS = ("tool", "reply", "final")


def shape_conversation_rewards(
    kinds: Sequence[str],
    succ_calling: Sequence[float],
    contribution: Sequence[float],
    reply_scores: Sequence[float] | None,
    is_solved: str | float | None,
    alpha: float = 1.0,
    *,
    step_grained: bool = True,
) -> list[float]:
    """Per-step rewards of one episode whose steps are tool calls, replies and a final answer.

    ``kinds[k]`` is ``"tool"``, ``"reply"`` or ``"final"``; tool steps take ``succ_calling`` /
    ``contribution`` in order, replies take ``reply_scores`` in order (None: no per-turn check, 0),
    the final step (last, if any) takes ``is_solved``. ``step_grained=False`` zeroes every reward but
    the final one (tool steps and replies alike). Without replies this equals ``shape_step_rewards``.
    """
    unknown = sorted(set(kinds) - set(STEP_KINDS))
    if unknown:
        raise ValueError(f"unknown step kinds {unknown}; known: {STEP_KINDS}")
    if "final" in kinds[:-1]:
        raise ValueError("only the last step can be the final answer")
    has_final = bool(kinds) and kinds[-1] == "final"
    if has_final != (is_solved is not None):
        raise ValueError("IsSolved is given exactly when the episode ends with a final answer")
    replies = [k for k in kinds if k == "reply"]
    if reply_scores is not None and len(reply_scores) != len(replies):
        raise ValueError(f"{len(reply_scores)} turn scores for {len(replies)} replies")
    tool_rewards = iter(
        shape_step_rewards(succ_calling, contribution, None, alpha, step_grained=step_grained)
    )
    if sum(k == "tool" for k in kinds) != len(succ_calling):
        raise ValueError(f"{len(succ_calling)} SuccCalling values for {kinds.count('tool')} tool steps")
    scores = iter(reply_scores if reply_scores is not None else [0.0] * len(replies))
    rewards = []
    for kind in kinds:
        if kind == "tool":
            rewards.append(next(tool_rewards))
        elif kind == "reply":
            score = float(next(scores))
            if not 0.0 <= score <= 1.0:
                raise ValueError(f"a turn score must be in [0, 1], got {score}")
            rewards.append(score if step_grained else 0.0)
        else:
            rewards.append(is_solved_score(is_solved))  # type: ignore[arg-type]
    return rewards


class RunningRewardNormalizer:
    """Running mean/std of rewards (Chan et al. parallel update), to normalize across batches.

    ``center=False`` only divides by the std: it keeps the sign of a reward (and so the meaning
    of "0 = nothing happened"), which matters for sparse rewards.
    """

    def __init__(self, eps: float = 1e-8, center: bool = True, clip: float | None = None) -> None:
        self.eps, self.center, self.clip = eps, center, clip
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    @property
    def var(self) -> float:
        return self.m2 / self.count if self.count else 1.0

    @property
    def std(self) -> float:
        return math.sqrt(self.var)

    def update(self, x: Sequence[float] | torch.Tensor) -> None:
        xs = [float(v) for v in (x.flatten().tolist() if isinstance(x, torch.Tensor) else x)]
        if not xs:
            return
        n_b = len(xs)
        mean_b = math.fsum(xs) / n_b
        m2_b = math.fsum((v - mean_b) ** 2 for v in xs)
        n = self.count + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n
        self.m2 += m2_b + delta**2 * self.count * n_b / n
        self.count = n

    def normalize(self, x: Sequence[float] | torch.Tensor) -> list[float] | torch.Tensor:
        """Normalize with the current statistics (same container type out as in)."""
        t = x if isinstance(x, torch.Tensor) else torch.tensor([float(v) for v in x], dtype=torch.float64)
        out = (t - self.mean) if self.center else t
        out = out / (self.std + self.eps)
        if self.clip is not None:
            out = out.clamp(-self.clip, self.clip)
        return out if isinstance(x, torch.Tensor) else out.tolist()

    def __call__(self, x: Sequence[float] | torch.Tensor, update: bool = True) -> list[float] | torch.Tensor:
        if update:
            self.update(x)
        return self.normalize(x)

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count, self.mean, self.m2 = int(state["count"]), float(state["mean"]), float(state["m2"])
