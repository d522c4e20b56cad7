"""The ``rule`` source: what the environment recorded and what the task's suite checks.

SuccCalling is the environment's own verdict on each call (it parsed, named a real tool, validated
and ran); Contribution and IsSolved come from the suite's rules (``Suite.contributions``,
``Suite.final_answer_correct``), which know the task's expected answer. In a conversation the
per-turn check (``Suite.turn_correct``) scores each answered user turn from the state snapshot taken
after it (the final state for the last turn).
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from functools import cache

from steprl.protocol import Trajectory
from steprl.reward_sources.base import (
    RewardSource,
    SourceScores,
    answered,
    register_reward_source,
    reply_steps,
    tool_steps,
)
from tools_env.suite import Suite, Task, check_final_answer, get_suite

logger = logging.getLogger(__name__)


@cache
def _suite(name: str) -> Suite:
    return get_suite(name)


def rule_scores(traj: Trajectory, task: Task) -> tuple[list[float], list[float], float | None]:
    """(SuccCalling, Contribution) of each tool step and IsSolved (None if no answer was given)."""
    suite = _suite(task.suite)
    steps = tool_steps(traj)
    succ = [float(s.info.get("env_succ_calling", s.succ_calling)) for s in steps]
    contrib = suite.contributions(task, [s.info for s in steps], traj.final_answer)
    solved = (
        check_final_answer(
            suite, task, traj.final_answer, _final_state(traj), [asdict(s) for s in traj.steps]
        )
        if answered(traj)
        else None
    )
    return succ, [float(c) for c in contrib], solved


def _final_state(traj: Trajectory) -> object:
    state = traj.meta.get("final_state")
    return {} if state is None else state


def rule_turn_scores(traj: Trajectory, task: Task) -> list[float] | None:
    """The per-turn check of every answered user turn (replies, then the final answer), or None
    when the suite has no per-turn check (``Suite.turn_correct`` returned None)."""
    suite = _suite(task.suite)
    turns = [(s.turn, s.info.get("answer"), s.info.get("turn_state")) for s in reply_steps(traj)]
    if answered(traj):
        turns.append((traj.steps[-1].turn, traj.final_answer, _final_state(traj)))
    scores = []
    for turn, answer, state in turns:
        steps = [s.info for s in tool_steps(traj) if s.turn == turn]
        value = suite.turn_correct(task, turn, answer, state, steps)
        if value is None:
            return None
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(
                f"turn_correct of suite {task.suite!r} gave {value} for turn {turn}, not in [0, 1]"
            )
        scores.append(float(value))
    return scores or None


@register_reward_source("rule")
class RuleSource(RewardSource):
    def score(self, trajs: list[Trajectory], tasks: list[Task]) -> list[SourceScores]:
        out = []
        for traj, task in zip(trajs, tasks, strict=True):
            try:
                succ, contrib, solved = rule_scores(traj, task)
                turns = rule_turn_scores(traj, task)
            except Exception as e:  # one episode a rule cannot read is counted, not fatal
                logger.warning("rule source could not score %s: %s: %s", traj.task_id, type(e).__name__, e)
                out.append(SourceScores(unscored=f"{type(e).__name__}: {e}"))
                continue
            out.append(
                SourceScores(succ_calling=succ, contribution=contrib, is_solved=solved, turn_scores=turns)
            )
        return out
