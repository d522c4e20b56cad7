"""The SFT cold start (``sft.enabled``): supervised epochs on demonstrations before RL, for every method.

It runs after the actor starts and before the rollout / reference / critic workers, which then start
from its checkpoint (``checkpoints/sft``). A resumed run does not train again, but rebuilds the SFT set
(a method such as ``sft`` trains on it in its iterations).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from steprl.run_state import save_checkpoint
from steprl.sft import run_sft, sft_data

if TYPE_CHECKING:
    from steprl.controller import Controller


def cold_start(ctl: Controller, resumed: bool) -> str | None:
    """Train the actor on the SFT set unless ``resumed``; returns the SFT policy's path (None: no SFT ran
    now). ``ctl.sft_data`` holds the set either way when SFT is on."""
    cfg = ctl.cfg
    if not (cfg.sft.enabled and cfg.sft.epochs > 0):
        return None
    demos, what = sft_data(cfg, ctl.suite, ctl.tokenizer)
    ctl.sft_data = demos
    if resumed:  # trained before the checkpoint
        return None
    p = ctl.progress
    p.stage(f"SFT cold start on {what}, loss on {cfg.sft.loss_on} assistant turns")

    def on_step(step: int, total: int, m: dict[str, float]) -> None:
        p.bar(step, total, f"nll {m['sft/nll']:.3f}")
        ctl.logger.log(0, {"sft/step": step, **m})

    def sft_step(tensors: Any, lr: float) -> dict[str, float]:
        return ctl.actor.mean_metrics("sft_step", tensors, lr=lr)

    s = cfg.sft
    run_sft(
        sft_step,
        demos,
        ctl.pad_id,
        s.epochs,
        s.batch_size,
        s.lr,
        cfg.trainer.seed,
        on_step,
        loss_on=s.loss_on,
    )
    return str(save_checkpoint(ctl, "sft") / "actor")
