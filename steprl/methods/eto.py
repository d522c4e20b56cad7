"""ETO: DPO on step-level preference pairs (same prefix, a better and a worse next step).

Each iteration samples ``rollout.group_size`` (>= 2) episodes per task, builds pairs from episodes
of one task that share a token prefix and first act differently at step k (the better one has the
higher step reward r_k, or the higher return from k: ``eto.pair_by``), and takes DPO steps

    L = -log sigmoid(beta * ((log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))))

with log-probs summed over the step-k action tokens and ``ref`` the frozen reference worker (the
starting policy). Pairs are fitted into ``eto.max_length`` tokens (the prompt keeps its end); a pair
whose response would be cut to nothing is dropped and counted (``eto/dropped_pairs``), never trained
on. With ``data.format=steptool_eto_csv`` iteration 1 trains on the published pairs file instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from steprl.algorithms.preference import StepPair, build_step_pairs, truncate_pair
from steprl.methods import Method, register_method
from steprl.sft import encode_conversation
from steprl.step import Prepared, Rollout

if TYPE_CHECKING:
    from steprl.config import StepRLConfig
    from steprl.context import MethodContext


def file_pairs(path: str, on_error: str, tokenizer) -> list[StepPair]:
    """The published ETO pairs CSV as token pairs: the prompt chat (ending in an open assistant turn)
    through the chat template, each response as the tokens an engine would generate (text + end of turn)."""
    from steprl.chat import ChatEncoder
    from steprl.data.formats import read_eto_pairs_csv

    enc = ChatEncoder(tokenizer, None, None)
    out = []
    for rec in read_eto_pairs_csv(path, on_error=on_error):  # type: ignore[arg-type]
        t = encode_conversation(
            tokenizer, [m.to_dict() for m in rec.prompt_messages], f"line{rec.source_line}"
        )
        if t.steps and t.steps[-1].is_final:  # no tool/user message after the last assistant turn
            raise ValueError(f"{path}:{rec.source_line}: the prompt's last message is an assistant turn")
        out.append(
            StepPair(
                task_id=t.task_id,
                step=t.num_steps,
                prompt_ids=t.prompt_ids + t.response_ids,
                chosen_ids=enc.action_ids(rec.chosen),
                rejected_ids=enc.action_ids(rec.rejected),
                chosen_score=1.0,
                rejected_score=0.0,
            )
        )
    return out


def fit_pairs(pairs: list[StepPair], max_length: int, max_prompt_length: int) -> tuple[list, int]:
    """(prompt, chosen, rejected) token lists that fit, and how many pairs were dropped."""
    kept, dropped = [], 0
    for p in pairs:
        fitted = truncate_pair(p.prompt_ids, p.chosen_ids, p.rejected_ids, max_length, max_prompt_length)
        if fitted is None:
            dropped += 1
        else:
            kept.append(fitted)
    return kept, dropped


@register_method("eto")
class ETO(Method):
    needs_ref = True
    data_formats = ("suite", "steptool_sft_json", "steptool_eto_csv")

    def actor_class(self) -> type:
        from workers.preference import PreferenceActorWorker

        return PreferenceActorWorker

    def check(self, cfg: StepRLConfig) -> str | None:
        if cfg.rollout.group_size < 2:
            return "rollout.group_size must be >= 2 (pairs come from two samples of one task)"
        return None

    def collect(self, ctx: MethodContext, it: int) -> Rollout:
        c = ctx.cfg
        if it == 1 and c.data.format == "steptool_eto_csv":  # the published pairs, no rollouts
            return Rollout(payload=file_pairs(c.data.path, c.data.on_error, ctx.tokenizer))
        return ctx.rollout_batch(it)

    def prepare(self, ctx: MethodContext, rollout: Rollout) -> Prepared:
        c = ctx.cfg
        pairs = rollout.payload
        if pairs is None:
            pairs = build_step_pairs(rollout.trajectories, c.eto.pair_by, c.algorithm.gamma)
        fitted, dropped = fit_pairs(pairs, c.eto.max_length, c.eto.max_prompt_length)
        metrics = {"eto/pairs": float(len(fitted)), "eto/dropped_pairs": float(dropped)}
        if pairs:
            metrics["eto/mean_pair_step"] = sum(p.step for p in pairs) / len(pairs)
        return Prepared(metrics=metrics, payload=fitted)

    def update(self, ctx: MethodContext, prep: Prepared) -> dict[str, float] | None:
        """DPO steps over ``eto.batch_size`` chunks of the pairs; None without pairs (nothing changed)."""
        fitted, n = prep.payload, ctx.cfg.eto.batch_size
        updates = [self._update(ctx, fitted[i : i + n]) for i in range(0, len(fitted), n)]
        if not updates:
            return None
        return {key: sum(u[key] for u in updates) / len(updates) for key in updates[0]}

    @staticmethod
    def _update(ctx: MethodContext, pairs: list[tuple[list[int], list[int], list[int]]]) -> dict[str, float]:
        """Reference log-probs of both sides, then the actor's DPO step on this chunk of pairs."""
        from workers.preference import flatten_candidates, pack_groups

        groups = [
            [(prompt + side, [0] * len(prompt) + [1] * len(side)) for side in (chosen, rejected)]
            for prompt, chosen, rejected in pairs
        ]
        data = pack_groups(groups, ctx.pad_id)
        flat = flatten_candidates(data)
        ref_tokens = ctx.ref.gather_rows(
            "compute_logprobs", {"input_ids": flat["input_ids"], "attention_mask": flat["attention_mask"]}
        )
        ref = (ref_tokens * flat["action_mask"]).sum(-1).view(len(pairs), 2)
        data["ref_logps"] = ref.to(torch.float32)
        e = ctx.cfg.eto
        return ctx.actor.mean_metrics(
            "dpo_step", data, ctx.cfg.algorithm.num_mini_batches, beta=e.beta, lr=e.lr
        )
