"""SFT: multi-turn supervised fine-tuning, the loss on assistant (action) tokens only.

The training itself is the shared SFT cold start (``steprl.cold_start``: ``sft.epochs`` epochs over the
suite's demonstrations or the published SFT JSON, ``sft.loss_on`` all turns or the last one); the
``sft`` recipe then only evaluates (``trainer.total_iterations=0``). Each iteration, if asked for, is
one more epoch over the same data at the learning rate where the cold start's cosine ended
(``0.1 * sft.lr``): no rollouts (collect is empty), the update is that epoch, then the shared finish
(weight sync, timings), so ``trainer.eval_every`` gives a curve per epoch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from steprl.methods import Method, register_method
from steprl.sft import run_sft, sft_data
from steprl.step import Prepared, Rollout

if TYPE_CHECKING:
    from steprl.context import MethodContext


@register_method("sft")
class SFT(Method):
    def setup(self, ctx: MethodContext) -> None:
        if not ctx.sft_data and ctx.cfg.trainer.total_iterations > 0:  # no cold start ran: build the set
            ctx.sft_data, what = sft_data(ctx.cfg, ctx.suite, ctx.tokenizer)
            ctx.progress.stage(f"SFT iterations on {what}")

    def collect(self, ctx: MethodContext, it: int) -> Rollout:
        return Rollout()  # no episodes

    def update(self, ctx: MethodContext, prep: Prepared) -> dict[str, float] | None:
        c = ctx.cfg.sft
        history = run_sft(
            lambda tensors, lr: ctx.actor.mean_metrics("sft_step", tensors, lr=lr),
            ctx.sft_data, ctx.pad_id, 1, c.batch_size, 0.1 * c.lr, ctx.cfg.trainer.seed + prep.iteration,
            loss_on=c.loss_on, schedule=lambda step, total, lr: lr,
        )  # fmt: skip
        return {
            "sft/nll": sum(h["sft/nll"] for h in history) / len(history),
            "sft/steps": float(len(history)),
        }
