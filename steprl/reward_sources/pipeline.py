"""Per-component combination: each of SuccCalling, Contribution and IsSolved from its configured
source, shaped into step rewards, with provenance recorded on the trajectory.

Each source in use scores the whole batch once. A component its source could not score (a judge
that never answered in shape, a missing annotation) is taken from ``reward.unscored_fallback`` if
that names a source giving it, else set to 0; either way it is recorded in ``traj.meta`` and counted
in the metrics, so a training run never stops on one bad reply and never hides one either.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from steprl.algorithms.rewards import shape_conversation_rewards
from steprl.protocol import Trajectory
from steprl.reward_sources.base import (
    COMPONENTS,
    RewardSource,
    SourceScores,
    answered,
    component_plan,
    get_source_class,
    reply_steps,
    sources_in_use,
    step_kinds,
    tool_steps,
)
from tools_env.suite import Task

if TYPE_CHECKING:
    from steprl.config import RewardConfig


@dataclass
class Combined:
    """The three components of one trajectory, where each came from, and what stayed unscored."""

    succ_calling: list[float]
    contribution: list[float]
    is_solved: float | None
    provenance: dict[str, str]
    unscored: dict[str, str] = field(default_factory=dict)
    details: dict[str, dict[str, Any]] = field(default_factory=dict)
    turn_scores: list[float] | None = None  # per answered user turn; None: no per-turn check


def _turn_scores(traj: Trajectory, source: str, scores: SourceScores) -> list[float] | None:
    """The per-turn scores a source gave, checked against the number of answered user turns."""
    if scores.unscored or scores.turn_scores is None:
        return None
    n = len(reply_steps(traj)) + answered(traj)
    if len(scores.turn_scores) != n:
        raise ValueError(
            f"reward source {source!r} gave {len(scores.turn_scores)} turn scores for the {n} answered "
            f"user turns of {traj.task_id}"
        )
    return [float(v) for v in scores.turn_scores]


def _component(traj: Trajectory, comp: str, source: str, scores: SourceScores) -> tuple[Any, str | None]:
    """(value, why it is missing). Lists are checked against the trajectory's number of tool steps."""
    if comp == "is_solved" and not answered(traj):
        return None, None  # no final answer step: nothing to score, not a failure
    if scores.unscored:
        return None, scores.unscored
    value = getattr(scores, comp)
    if comp == "is_solved":
        return (None, f"source {source!r} gave no is_solved") if value is None else (float(value), None)
    if value is None:
        return None, f"source {source!r} gave no {comp}"
    n = len(tool_steps(traj))
    if len(value) != n:
        raise ValueError(
            f"reward source {source!r} gave {len(value)} {comp} values for the {n} tool steps of {traj.task_id}"
        )
    return [float(v) for v in value], None


def combine_components(
    traj: Trajectory,
    plan: Mapping[str, str],
    scores: Mapping[str, SourceScores],
    fallback: tuple[str, SourceScores] | None = None,
) -> Combined:
    """Pick each component from ``scores[plan[component]]``; if missing, from ``fallback``; else 0."""
    values: dict[str, Any] = {}
    provenance: dict[str, str] = {}
    unscored: dict[str, str] = {}
    for comp in COMPONENTS:
        src = plan[comp]
        value, why = _component(traj, comp, src, scores[src])
        provenance[comp] = src
        if why is not None and fallback is not None:
            fb_value, fb_why = _component(traj, comp, fallback[0], fallback[1])
            if fb_why is None:
                value, why = fb_value, None
                provenance[comp] = f"{fallback[0]} (fallback: {src} unscored)"
        if why is not None:
            unscored[comp] = why
            n = len(tool_steps(traj))
            value = (0.0 if answered(traj) else None) if comp == "is_solved" else [0.0] * n
        values[comp] = value
    used = {plan[c] for c in COMPONENTS} | ({fallback[0]} if fallback else set())
    details = {s: scores[s].meta for s in used if s in scores and scores[s].meta}
    if fallback is not None and fallback[1].meta:
        details[fallback[0]] = fallback[1].meta
    # the per-turn check comes with IsSolved: from its source, else from the fallback
    turns = _turn_scores(traj, plan["is_solved"], scores[plan["is_solved"]])
    if turns is None and fallback is not None:
        turns = _turn_scores(traj, fallback[0], fallback[1])
    return Combined(
        values["succ_calling"], values["contribution"], values["is_solved"], provenance, unscored, details,
        turns,
    )  # fmt: skip


def apply_rewards(traj: Trajectory, c: Combined, alpha: float, step_grained: bool) -> Trajectory:
    """Write the components, the shaped step rewards and the provenance onto the trajectory."""
    replies = len(reply_steps(traj))
    rewards = shape_conversation_rewards(
        step_kinds(traj), c.succ_calling, c.contribution, c.turn_scores[:replies] if c.turn_scores else None,
        c.is_solved, alpha, step_grained=step_grained,
    )  # fmt: skip
    for step, s, v in zip(tool_steps(traj), c.succ_calling, c.contribution, strict=True):
        if not c.provenance["succ_calling"].startswith("rule"):  # keep what the environment said
            step.info.setdefault("env_succ_calling", step.succ_calling)
        step.succ_calling, step.contribution = s, v
    for step, r in zip(traj.steps, rewards, strict=True):
        step.reward = float(r)
    traj.is_solved = float(c.is_solved or 0.0)
    traj.meta.pop("turn_scores", None)
    if c.turn_scores is not None:
        traj.meta["turn_scores"] = list(c.turn_scores)
    names = set(c.provenance.values())
    traj.meta["reward_source"] = (
        names.pop() if len(names) == 1 else ",".join(f"{k}={v}" for k, v in c.provenance.items())
    )
    traj.meta["reward_provenance"] = dict(c.provenance)
    traj.meta.pop("reward_unscored", None)
    if c.unscored:
        traj.meta["reward_unscored"] = dict(c.unscored)
    if c.details:
        traj.meta["reward_details"] = c.details
    return traj


class RewardPipeline:
    """Builds the sources a reward config uses (once) and scores batches with them."""

    def __init__(self, cfg: RewardConfig, env: Mapping[str, str] | None = None) -> None:
        self.cfg, self.plan = cfg, component_plan(cfg)
        env = dict(env or {})
        self.sources: dict[str, RewardSource] = {
            n: get_source_class(n)(cfg, env) for n in sources_in_use(cfg)
        }
        self.fallback = cfg.unscored_fallback if cfg.unscored_fallback != "zero" else None
        self.counts: Counter[str] = Counter()
        self.seconds = 0.0

    def score(self, trajs: list[Trajectory], tasks: list[Task]) -> list[Trajectory]:
        if len(trajs) != len(tasks):
            raise ValueError(f"{len(trajs)} trajectories for {len(tasks)} tasks")
        t0 = time.perf_counter()
        primary = list(dict.fromkeys(self.plan.values()))
        results = {name: self.sources[name].score(trajs, tasks) for name in primary}
        per_traj = [{name: results[name][i] for name in primary} for i in range(len(trajs))]
        combined = [combine_components(t, self.plan, per_traj[i]) for i, t in enumerate(trajs)]
        need = [i for i, c in enumerate(combined) if c.unscored]
        if self.fallback is not None and need:
            if self.fallback in results:  # already scored this batch (e.g. rule gives another component)
                fb = [results[self.fallback][i] for i in need]
            else:
                fb = self.sources[self.fallback].score([trajs[i] for i in need], [tasks[i] for i in need])
            for i, fb_scores in zip(need, fb, strict=True):
                combined[i] = combine_components(trajs[i], self.plan, per_traj[i], (self.fallback, fb_scores))
        for traj, c in zip(trajs, combined, strict=True):
            apply_rewards(traj, c, self.cfg.alpha, self.cfg.step_grained)
            self.counts["trajectories"] += 1
            self.counts["unscored_trajectories"] += bool(c.unscored)
            for comp in c.unscored:
                self.counts[f"unscored/{comp}"] += 1
            for comp, where in c.provenance.items():
                self.counts[f"fallback/{comp}"] += "(fallback" in where
            if c.turn_scores is not None:  # a conversation's per-turn check: answered turns, passed
                self.counts["turns"] += len(c.turn_scores)
                self.counts["turns_passed"] += sum(v >= 1.0 for v in c.turn_scores)
        self.seconds += time.perf_counter() - t0
        return trajs

    def pop_metrics(self) -> dict[str, float]:
        """Counters since the last call, keyed ``reward/...``."""
        out = {f"reward/{k}": float(v) for k, v in self.counts.items() if v or k == "unscored_trajectories"}
        out["reward/seconds"] = self.seconds
        for src in self.sources.values():
            out.update({f"reward/{k}": v for k, v in src.pop_metrics().items()})
        self.counts.clear()
        self.seconds = 0.0
        return out

    def close(self) -> None:
        for src in self.sources.values():
            src.close()


def merge_metrics(parts: list[dict[str, float]]) -> dict[str, float]:
    """Reward-worker metrics of one batch: counters add up, ``*seconds`` take the slowest worker."""
    out: dict[str, float] = {}
    for part in parts:
        for k, v in part.items():
            out[k] = max(out.get(k, 0.0), v) if k.endswith("seconds") else out.get(k, 0.0) + v
    return out
