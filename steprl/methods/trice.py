"""TRICE: behaviour cloning, then RRHF-style ranking with execution feedback.

Stage 1 is the shared SFT cold start (``sft.*``; LoRA via ``model.lora_rank``). Stage 2, each
iteration: k = ``rollout.group_size`` candidates per question from the current policy, each scored
by executing its tool calls (the rule reward worker):

    score = IsSolved + sum(reply rewards) + w * mean(tool-step rewards)

The answers decide: the final answer's IsSolved and, in a conversation, the reward of each reply to an
earlier user turn (its per-turn check); the tool calls' shaped rewards only break ties
(``w = trice.tie_break_weight`` < 0.5). A reply is an answer for its turn, not a tool step. Then

    p_i = sum log pi(y_i) / |y_i|**length_penalty      (action tokens only)
    L   = alpha * sum_{score_i < score_j} max(0, p_i - p_j) + NLL(best candidate)

then the shared finish (weight sync, metrics).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from steprl.algorithms.preference import candidate_scores
from steprl.methods import Method, register_method
from steprl.protocol import Trajectory
from steprl.reward_sources.base import reply_steps, tool_steps
from steprl.step import Prepared, Rollout

if TYPE_CHECKING:
    from steprl.config import StepRLConfig
    from steprl.context import MethodContext


def trice_scores(trajs: list[Trajectory], tie_break_weight: float) -> list[float]:
    """Each scored candidate's ranking score (``candidate_scores``): replies count with the answers,
    only tool-call steps break ties."""
    return candidate_scores(
        [t.is_solved for t in trajs],
        [[s.reward for s in tool_steps(t)] for t in trajs],
        tie_break_weight,
        [[s.reward for s in reply_steps(t)] for t in trajs],
    )


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
        scores = trice_scores(trajs, ctx.cfg.trice.tie_break_weight)
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
            "rank_step",
            prep.data,
            ctx.cfg.algorithm.num_mini_batches,
            alpha=t.alpha,
            lr=t.lr,
            length_penalty=t.length_penalty,
        )
