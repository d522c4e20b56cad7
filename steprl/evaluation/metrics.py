"""Evaluation metrics as pure functions over per-task result rows (plain dicts, JSON round-trippable).

A row is what ``steprl.evaluation.runner.result_row`` writes for one task: at least ``task_id``,
``pass_score`` (IsSolved: 1 solved, 0.5 unsure, 0 unsolved), ``tool_success`` (SuccCalling of each tool
step in order: 1st, 2nd, ... tool call), ``num_steps``, ``response_tokens``, ``generated_tokens`` and
``end_reason``; a conversation's row also has ``turn_scores`` (the per-turn check of each answered
user turn) and ``num_turns`` (the user turns of the task). Keeping the metrics on rows (not on live
trajectories) lets ``--compare`` recompute them from saved JSON files. :func:`episode_metrics` is the flat
view the training log uses (``train/``, ``eval/<tag>/``) on live trajectories, built from the same pieces
(pass rate, end reasons): the one module where episode metrics are defined.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from steprl.protocol import Trajectory

PASS_LABELS = {1.0: "solved", 0.5: "unsure", 0.0: "unsolved"}


def pass_label(score: float) -> str:
    """The StepTool label of an IsSolved score; other values (a judge's average) are ``partial``."""
    return PASS_LABELS.get(float(score), "partial")


def pass_rate(scores: Sequence[float]) -> float:
    """Mean IsSolved score: Solved counts 1, Unsure 0.5, Unsolved 0."""
    if not scores:
        raise ValueError("pass rate of no tasks")
    return sum(float(s) for s in scores) / len(scores)


def success_by_step_index(tool_success: Sequence[Sequence[float]]) -> list[dict[str, float]]:
    """Success rate of the 1st, 2nd, ... tool call over episodes (StepTool, Figure 4).

    ``tool_success[e]`` lists SuccCalling of episode e's tool steps in order. Index k (1-based) averages
    over the episodes that made at least k tool calls, so later indices cover fewer episodes (``count``).
    """
    depth = max((len(s) for s in tool_success), default=0)
    out = []
    for k in range(depth):
        values = [float(s[k]) for s in tool_success if len(s) > k]
        out.append({"index": k + 1, "count": len(values), "success_rate": sum(values) / len(values)})
    return out


def turn_metrics(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Per-turn and per-conversation pass rates over the rows that have a per-turn check.

    ``turn_pass_rate``: the share of user turns whose check passed (score 1), over every user turn
    of the tasks (a turn never reached because the episode ran out of budget counts as failed);
    ``conversation_pass_rate``: the share of conversations with every turn passed;
    ``turn_pass_by_index``: the rate at user turn 1, 2, ... (how far conversations stay on track).
    None when no row has a per-turn check.
    """
    checked = [r for r in rows if r.get("turn_scores") is not None]
    if not checked:
        return None
    passed = [[float(v) >= 1.0 for v in r["turn_scores"]] for r in checked]
    totals = [max(int(r.get("num_turns") or 1), len(p)) for r, p in zip(checked, passed, strict=True)]
    depth = max(totals)
    by_index = []
    for k in range(depth):
        at = [p[k] if k < len(p) else False for p, n in zip(passed, totals, strict=True) if n > k]
        by_index.append({"turn": k + 1, "count": len(at), "pass_rate": sum(at) / len(at)})
    return {
        "conversations": len(checked),
        "user_turns": sum(totals),
        "turn_pass_rate": sum(sum(p) for p in passed) / sum(totals),
        "conversation_pass_rate": sum(len(p) == n and all(p) for p, n in zip(passed, totals, strict=True))
        / len(checked),
        "turn_pass_by_index": by_index,
    }


def end_reason_counts(reasons: Sequence[str]) -> dict[str, int]:
    return dict(sorted(Counter(reasons).items()))


def aggregate(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The summary of one evaluation: pass rate, label counts, per-index tool success, means, end reasons."""
    if not rows:
        raise ValueError("no result rows to aggregate")
    n = len(rows)
    scores = [float(r["pass_score"]) for r in rows]
    all_calls = [float(x) for r in rows for x in r["tool_success"]]
    out: dict[str, Any] = {
        "num_tasks": n,
        "pass_rate": pass_rate(scores),
        "labels": dict(sorted(Counter(pass_label(s) for s in scores).items())),
        "tool_success_rate": sum(all_calls) / len(all_calls) if all_calls else None,
        "tool_success_by_index": success_by_step_index([r["tool_success"] for r in rows]),
        "mean_steps": sum(r["num_steps"] for r in rows) / n,
        "mean_tool_calls": sum(len(r["tool_success"]) for r in rows) / n,
        "mean_response_tokens": sum(r["response_tokens"] for r in rows) / n,
        "mean_generated_tokens": sum(r["generated_tokens"] for r in rows) / n,
        "end_reasons": end_reason_counts([r["end_reason"] for r in rows]),
    }
    turns = turn_metrics(rows)
    if turns is not None:
        out["turns"] = turns
    searched = [r["search"] for r in rows if r.get("search")]
    if searched:  # DFSDT: the cost of the search, not only of the returned path
        out["search"] = {
            key: sum(s[key] for s in searched) / len(searched)
            for key in ("model_calls", "backtracks", "tool_calls", "replayed_calls", "generated_tokens")
        }
        out["search"]["accepted_share"] = sum(bool(s["accepted"]) for s in searched) / len(searched)
    return out


def episode_metrics(trajs: Sequence[Trajectory], prefix: str) -> dict[str, float]:
    """Flat per-batch means for the metrics log: ``<prefix>pass_rate``, ``reward`` (step-reward sum),
    ``steps``, ``tool_success`` (SuccCalling over all tool steps, replies in a conversation excluded), ``response_tokens``, ``truncated``
    (share and count: cut by a budget, kept and bootstrapped), ``episodes`` and ``end/<reason>`` shares."""
    n = max(1, len(trajs))
    tool_steps = [s for t in trajs for s in t.steps if not (s.is_final or s.is_reply)]
    out = {
        f"{prefix}pass_rate": pass_rate([t.is_solved for t in trajs]) if trajs else 0.0,
        f"{prefix}reward": sum(sum(t.step_rewards) for t in trajs) / n,
        f"{prefix}steps": sum(t.num_steps for t in trajs) / n,
        f"{prefix}tool_success": sum(s.succ_calling for s in tool_steps) / max(1, len(tool_steps)),
        f"{prefix}response_tokens": sum(len(t.response_ids) for t in trajs) / n,
        f"{prefix}truncated": sum(t.truncated for t in trajs) / n,
        f"{prefix}truncated_count": float(sum(t.truncated for t in trajs)),
        f"{prefix}episodes": float(len(trajs)),
    }
    turns = [v for t in trajs for v in t.meta.get("turn_scores") or []]
    if turns:  # conversations with a per-turn check: the share of answered user turns that passed
        out[f"{prefix}turn_pass_rate"] = sum(v >= 1.0 for v in turns) / len(turns)
    for reason, count in end_reason_counts([t.end_reason for t in trajs]).items():
        out[f"{prefix}end/{reason}"] = count / n
    return out


# the curves drawn into curves.png
CURVE_KEYS = ("train/reward", "train/pass_rate", "eval/pass_rate")


@dataclass(frozen=True)
class WinRate:
    """Per-task comparison of run A against run B on the tasks both evaluated."""

    win_rate: float  # (wins + ties / 2) / num_tasks
    wins: int
    ties: int
    losses: int
    num_tasks: int

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def win_rate(scores_a: Mapping[str, float], scores_b: Mapping[str, float]) -> WinRate:
    """A wins a task when its score is higher, ties count half; only tasks present in both count."""
    common = sorted(set(scores_a) & set(scores_b))
    if not common:
        raise ValueError("the two runs have no task in common")
    wins = sum(float(scores_a[t]) > float(scores_b[t]) for t in common)
    ties = sum(float(scores_a[t]) == float(scores_b[t]) for t in common)
    losses = len(common) - wins - ties
    return WinRate((wins + 0.5 * ties) / len(common), wins, ties, losses, len(common))
