"""The ``rule`` source: what the environment recorded and what the task's suite checks.

SuccCalling is the environment's own verdict on each call (it parsed, named a real tool, validated
and ran); Contribution and IsSolved come from the suite's rules (``Suite.contributions``,
``Suite.final_answer_correct``), which know the task's expected answer.
"""

from __future__ import annotations

import logging
from functools import cache

from steprl.protocol import Trajectory
from steprl.reward_sources.base import (
    RewardSource,
    SourceScores,
    answered,
    register_reward_source,
    tool_steps,
)
from tools_env.suite import Suite, Task, get_suite

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
        suite.final_answer_correct(task, traj.final_answer, traj.meta.get("final_state") or {})
        if answered(traj)
        else None
    )
    return succ, [float(c) for c in contrib], solved


@register_reward_source("rule")
class RuleSource(RewardSource):
    def score(self, trajs: list[Trajectory], tasks: list[Task]) -> list[SourceScores]:
        out = []
        for traj, task in zip(trajs, tasks, strict=True):
            try:
                succ, contrib, solved = rule_scores(traj, task)
            except Exception as e:  # one episode a rule cannot read is counted, not fatal
                logger.warning("rule source could not score %s: %s: %s", traj.task_id, type(e).__name__, e)
                out.append(SourceScores(unscored=f"{type(e).__name__}: {e}"))
                continue
            out.append(SourceScores(succ_calling=succ, contribution=contrib, is_solved=solved))
        return out
