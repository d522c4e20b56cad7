"""The ``prm`` source: Contribution_t = a process reward model's P(yes) for the prefix ending with step t.

The prefix is the prompt and every token of steps 0..t, step t's tool result included (the result is
what tells whether the step moved the episode forward). One batched PRM call scores all steps of all
trajectories. The PRM gives only Contribution: take SuccCalling and IsSolved from another source.
"""

from __future__ import annotations

from typing import Any

from steprl.protocol import Trajectory
from steprl.reward_sources.base import RewardSource, SourceScores, register_reward_source
from tools_env.suite import Task


@register_reward_source("prm")
class PRMSource(RewardSource):
    components = frozenset({"contribution"})

    def __init__(self, cfg: Any, env: Any) -> None:
        super().__init__(cfg, env)
        from steprl.prm import ProcessRewardModel

        if not cfg.prm_path:
            raise ValueError(
                "the prm source needs reward.prm_path (a PRM directory, see steprl.prm.train_prm)"
            )
        self.prm = ProcessRewardModel(cfg.prm_path, cfg.prm_device, batch_size=cfg.prm_batch_size)
        self.scored_steps = 0

    def score(self, trajs: list[Trajectory], tasks: list[Task]) -> list[SourceScores]:
        from steprl.prm import step_end

        contexts, owners = [], []
        for i, traj in enumerate(trajs):
            ids = traj.prompt_ids + traj.response_ids
            for k, step in enumerate(traj.steps):
                if not (step.is_final or step.is_reply):
                    contexts.append(ids[: step_end(traj, k)])
                    owners.append(i)
        probs = self.prm.score(contexts) if contexts else []
        per_traj: list[list[float]] = [[] for _ in trajs]
        for i, p in zip(owners, probs, strict=True):
            per_traj[i].append(float(p))
        self.scored_steps += len(contexts)
        return [SourceScores(contribution=c) for c in per_traj]

    def pop_metrics(self) -> dict[str, float]:
        out = {"prm/steps": float(self.scored_steps)}
        self.scored_steps = 0
        return out
