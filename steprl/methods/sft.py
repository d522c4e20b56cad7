"""SFT: multi-turn supervised fine-tuning, the loss on assistant (action) tokens only.

The training itself is the shared SFT cold start of ``steprl.main.train`` (``sft.epochs`` epochs over
the suite's demonstrations or the published SFT JSON, ``sft.loss_on`` all turns or the last one); the
``sft`` recipe then only evaluates (``trainer.total_iterations=0``). Each iteration, if asked for, is
one more epoch over the same data at the learning rate where the cold start's cosine ended
(``0.1 * sft.lr``), followed by a weight sync, so ``trainer.eval_every`` gives a curve per epoch.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from steprl.methods import Method, register_method
from steprl.sft import run_sft, sft_data

if TYPE_CHECKING:
    from steprl.controller import Controller


@register_method("sft")
class SFT(Method):
    def setup(self, ctl: Controller) -> None:
        if not ctl.sft_data and ctl.cfg.trainer.total_iterations > 0:  # no cold start ran: build the set
            ctl.sft_data, what = sft_data(ctl.cfg, ctl.suite, ctl.tokenizer)
            ctl.progress.stage(f"SFT iterations on {what}")

    def iteration(self, ctl: Controller, it: int) -> dict[str, float]:
        c = ctl.cfg.sft
        t0 = time.time()
        history = run_sft(
            lambda tensors, lr: ctl.actor.mean_metrics("sft_step", tensors, lr=lr),
            ctl.sft_data,
            ctl.pad_id,
            1,
            c.batch_size,
            0.1 * c.lr,
            ctl.cfg.trainer.seed + it,
            loss_on=c.loss_on,
            schedule=lambda step, total, lr: lr,
        )
        sync = ctl.sync_weights()
        return {
            "sft/nll": sum(h["sft/nll"] for h in history) / len(history),
            "sft/steps": float(len(history)),
            "time/sync": sync,
            "time/iteration": time.time() - t0,
        }
