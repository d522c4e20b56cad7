"""TRICE: behaviour cloning, then RRHF-style ranking with execution feedback.

Stage 1 is the shared SFT cold start (``sft.*``; LoRA via ``model.lora_rank``). Stage 2, each
iteration: k = ``rollout.group_size`` candidates per question from the current policy, each scored
by executing its tool calls (the rule reward worker): ``score = IsSolved + w * mean tool-step reward``
(``w = trice.tie_break_weight`` < 0.5, so IsSolved decides and the step rewards only break ties), then

    p_i = sum log pi(y_i) / |y_i|**length_penalty      (action tokens only)
    L   = alpha * sum_{score_i < score_j} max(0, p_i - p_j) + NLL(best candidate)

then the shared finish (weight sync, metrics).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from steprl.algorithms.preference import candidate_scores
from steprl.methods import Method, register_method
from steprl.step import Prepared, Rollout

if TYPE_CHECKING:
    from steprl.config import StepRLConfig
    from steprl.context import MethodContext


@register_method("trice")
class TRICE(Method):
    def actor_class(self) -> type:
        from workers.preference import PreferenceActorWorker

        return PreferenceActorWorker

    def check(self, cfg: StepRLConfig) -> str | None:
        if cfg.rollout.group_size < 2:
            return "rollout.group_size must be >= 2 (k candidates per question are ranked)"
        return None

    def prepare(self, ctx: MethodContext, rollout: Rollout) -> Prepared:
        """Each question's k candidates (consecutive: the collect is task-major) packed with their scores."""
        from workers.preference import pack_groups

        trajs, k = rollout.trajectories, ctx.cfg.rollout.group_size
        scores = candidate_scores(
            [t.is_solved for t in trajs],
            [[s.reward for s in t.steps if not s.is_final] for t in trajs],
            ctx.cfg.trice.tie_break_weight,
        )
        groups = [
            [
                (t.prompt_ids + t.response_ids, [0] * len(t.prompt_ids) + t.action_mask)
                for t in trajs[i : i + k]
            ]
            for i in range(0, len(trajs), k)
        ]
        data = pack_groups(groups, ctx.pad_id)
        data["scores"] = torch.tensor(scores, dtype=torch.float32).view(len(groups), k)
        spread = data["scores"].max(-1).values - data["scores"].min(-1).values
        return Prepared(data=data, metrics={"trice/groups_with_ranking": float((spread > 0).float().mean())})

    def update(self, ctx: MethodContext, prep: Prepared) -> dict[str, float] | None:
        t = ctx.cfg.trice
        return ctx.actor.mean_metrics(
            "rank_step", prep.data, alpha=t.alpha, lr=t.lr, length_penalty=t.length_penalty
        )
