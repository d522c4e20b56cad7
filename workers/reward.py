"""RewardWorker: a Ray actor scoring batches with the configured reward sources.

Each worker builds the sources of ``reward`` once (a judge client, a PRM, an annotation file) and
scores the slice of a batch the controller gives it; ``reward.num_workers`` actors share a batch.
What the sources are and how components combine: ``steprl.reward_sources`` and docs/rewards.md.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from steprl.config import RewardConfig
from steprl.protocol import Trajectory
from steprl.reward_sources import (
    REWARD_SOURCES,
    RewardPipeline,
    merge_metrics,
    register_reward_source,
    reward_env,
)
from tools_env.suite import Task

__all__ = [
    "REWARD_SOURCES",
    "RewardWorker",
    "merge_metrics",
    "register_reward_source",
    "reward_env",
    "score_trajectory",
]


class RewardWorker:
    def __init__(self, cfg: RewardConfig, env: dict[str, str] | None = None) -> None:
        """``env``: the variables the sources read (judge URL, model, key), captured on the driver."""
        self.pipeline = RewardPipeline(cfg, env)

    def score(self, trajs: list[Trajectory], tasks: list[dict[str, Any]]) -> list[Trajectory]:
        return self.pipeline.score(trajs, [Task.from_dict(d) for d in tasks])

    def pop_metrics(self) -> dict[str, float]:
        return self.pipeline.pop_metrics()

    def ready(self) -> bool:
        return True

    def peak_memory_mb(self) -> dict[str, float]:
        """Peak resident memory of this worker's process (ru_maxrss; KiB on Linux)."""
        import resource
        import sys

        scale = 1 / 1024 if sys.platform == "darwin" else 1  # ru_maxrss: bytes on macOS, KiB on Linux
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
        return {"peak_mb": kib / 1024}


@lru_cache(maxsize=8)
def _pipeline(source: str, alpha: float, step_grained: bool) -> RewardPipeline:
    cfg = RewardConfig(source=source, alpha=alpha, step_grained=step_grained)
    return RewardPipeline(cfg, reward_env(cfg))


def score_trajectory(
    traj: Trajectory, task: Task, source: str = "rule", alpha: float = 1.0, step_grained: bool = True
) -> Trajectory:
    """Score one trajectory in this process with one source for every component (default settings
    of that source, endpoint and key from the environment); in place, and returned."""
    return _pipeline(source, alpha, step_grained).score([traj], [task])[0]
