"""RewardWorker: SuccCalling / Contribution / IsSolved per step, shaped into step rewards.

The ``rule`` source reads what the environment recorded (did each call run) and asks the task's
suite for Contribution and IsSolved. Further sources (judge, PRM, annotation files) register in
``REWARD_SOURCES`` with the same signature.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from steprl.algorithms.rewards import shape_step_rewards
from steprl.protocol import Trajectory
from tools_env.suite import Task, get_suite

RewardSource = Callable[[Trajectory, Task], tuple[list[float], list[float], float | None]]
REWARD_SOURCES: dict[str, RewardSource] = {}


def register_reward_source(name: str) -> Callable[[RewardSource], RewardSource]:
    def wrap(fn: RewardSource) -> RewardSource:
        REWARD_SOURCES[name] = fn
        return fn

    return wrap


@register_reward_source("rule")
def rule_source(traj: Trajectory, task: Task) -> tuple[list[float], list[float], float | None]:
    """(SuccCalling, Contribution) of each tool step and IsSolved (None if no answer was given)."""
    suite = get_suite(task.suite)
    tool_steps = [s for s in traj.steps if not s.is_final]
    succ = [s.succ_calling for s in tool_steps]
    contrib = suite.contributions(task, [s.info for s in tool_steps], traj.final_answer)
    answered = bool(traj.steps) and traj.steps[-1].is_final
    solved = (
        suite.final_answer_correct(task, traj.final_answer, traj.meta.get("final_state") or {})
        if answered
        else None
    )
    return succ, contrib, solved


def score_trajectory(
    traj: Trajectory, task: Task, source: str, alpha: float, step_grained: bool
) -> Trajectory:
    succ, contrib, solved = REWARD_SOURCES[source](traj, task)
    rewards = shape_step_rewards(succ, contrib, solved, alpha, step_grained=step_grained)
    tool_steps = [s for s in traj.steps if not s.is_final]
    for step, c in zip(tool_steps, contrib, strict=True):
        step.contribution = float(c)
    for step, r in zip(traj.steps, rewards, strict=True):
        step.reward = float(r)
    traj.is_solved = float(solved or 0.0)
    traj.meta["reward_source"] = source
    return traj


class RewardWorker:
    def __init__(self, source: str, alpha: float, step_grained: bool) -> None:
        if source not in REWARD_SOURCES:
            raise KeyError(f"unknown reward source {source!r}; known: {sorted(REWARD_SOURCES)}")
        self.source, self.alpha, self.step_grained = source, alpha, step_grained

    def score(self, trajs: list[Trajectory], tasks: list[dict[str, Any]]) -> list[Trajectory]:
        return [
            score_trajectory(t, Task.from_dict(d), self.source, self.alpha, self.step_grained)
            for t, d in zip(trajs, tasks, strict=True)
        ]

    def peak_memory_mb(self) -> dict[str, float]:
        """Peak resident memory of this worker's process (ru_maxrss; KiB on Linux)."""
        import resource
        import sys

        scale = 1 / 1024 if sys.platform == "darwin" else 1  # ru_maxrss: bytes on macOS, KiB on Linux
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
        return {"peak_mb": kib / 1024}
