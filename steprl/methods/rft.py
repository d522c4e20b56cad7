"""RFT (rejection-sampling fine-tuning): sample, keep what solved the task, fine-tune on it.

Each iteration samples ``rollout.group_size`` episodes per task with the current policy, keeps the
solved ones (IsSolved == 1 from the reward worker), drops duplicate responses to the same task
(``rft.dedupe``), runs ``rft.epochs`` SFT passes over them (the actor's ``sft_step`` on their action
tokens; tool output is never trained on) and syncs the rollout engine's weights. With
``data.format=steptool_rft_json`` iteration 1 is an offline round over the published RFT JSON instead
(each instance trained on its last turn if ``sft.loss_on=last``, as the published script does).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from steprl.methods import Method, register_method
from steprl.protocol import Trajectory
from steprl.sft import conversation_trajectories, file_conversations, run_sft

if TYPE_CHECKING:
    from steprl.controller import Controller


def keep_solved(trajs: list[Trajectory], dedupe: bool) -> list[Trajectory]:
    """The episodes with IsSolved == 1, one per distinct (task, response tokens) if ``dedupe``."""
    kept, seen = [], set()
    for t in trajs:
        if t.is_solved < 1.0:
            continue
        key = (t.task_id, tuple(t.response_ids))
        if dedupe and key in seen:
            continue
        seen.add(key)
        kept.append(t)
    return kept


@register_method("rft")
class RFT(Method):
    data_formats = ("suite", "steptool_sft_json", "steptool_rft_json")

    def iteration(self, ctl: Controller, it: int) -> dict[str, float]:
        from steprl.controller import episode_metrics

        c = ctl.cfg
        t0 = time.time()
        metrics: dict[str, float] = {}
        if it == 1 and c.data.format == "steptool_rft_json":
            convs = file_conversations(c.data.format, c.data.path, c.data.on_error)
            kept, dropped = conversation_trajectories(convs, ctl.tokenizer, c.sft.max_length)
            metrics.update(
                {"rft/offline_instances": float(len(kept)), "rft/offline_dropped_too_long": float(dropped)}
            )
            loss_on = c.sft.loss_on
        else:
            trajs, rstats = ctl.generate(
                ctl.next_tasks(),
                c.rollout.group_size,
                c.rollout.temperature,
                seed=ctl.rollout_seed(it),
            )
            kept = keep_solved(trajs, c.rft.dedupe)
            metrics.update(episode_metrics(trajs, prefix="train/"))
            metrics["rollout/tokens_per_second"] = rstats["rollout/generated_tokens"] / max(
                rstats["rollout/seconds"], 1e-9
            )
            metrics["time/rollout"] = time.time() - t0
            loss_on = "all"
        metrics["rft/kept"] = float(len(kept))
        if kept:
            history = run_sft(
                lambda tensors, lr: ctl.actor.mean_metrics("sft_step", tensors, lr=lr),
                kept, ctl.pad_id, c.rft.epochs, c.rft.batch_size, c.rft.lr, c.trainer.seed + it, loss_on=loss_on,
            )  # fmt: skip
            metrics["actor/sft_nll"] = sum(h["sft/nll"] for h in history) / len(history)
            metrics["time/sync"] = ctl.sync_weights()
        metrics["time/iteration"] = time.time() - t0
        return metrics
