"""RFT (rejection-sampling fine-tuning): sample, keep what solved the task, fine-tune on it.

Each iteration samples ``rollout.group_size`` episodes per task with the current policy (the shared
collect), keeps the solved ones (IsSolved == 1 from the reward worker), drops duplicate responses to the
same task (``rft.dedupe``), and runs ``rft.epochs`` SFT passes over them (the actor's ``sft_step`` on
their action tokens; tool output is never trained on); the shared finish syncs the weights. With
``data.format=steptool_rft_json`` iteration 1 is an offline round over the published RFT JSON instead
(each instance trained on its last turn if ``sft.loss_on=last``, as the published script does).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from steprl.methods import Method, register_method
from steprl.protocol import Trajectory
from steprl.sft import conversation_trajectories, file_conversations, run_sft
from steprl.step import Prepared, Rollout

if TYPE_CHECKING:
    from steprl.context import MethodContext


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

    def collect(self, ctx: MethodContext, it: int) -> Rollout:
        c = ctx.cfg
        if not (it == 1 and c.data.format == "steptool_rft_json"):
            return ctx.rollout_batch(it)
        convs = file_conversations(c.data.format, c.data.path, c.data.on_error)
        kept, dropped = conversation_trajectories(convs, ctx.tokenizer, c.sft.max_length)
        metrics = {"rft/offline_instances": float(len(kept)), "rft/offline_dropped_too_long": float(dropped)}
        return Rollout(metrics=metrics, payload=(kept, c.sft.loss_on))

    def prepare(self, ctx: MethodContext, rollout: Rollout) -> Prepared:
        kept, loss_on = rollout.payload or (keep_solved(rollout.trajectories, ctx.cfg.rft.dedupe), "all")
        return Prepared(metrics={"rft/kept": float(len(kept))}, payload=(kept, loss_on))

    def update(self, ctx: MethodContext, prep: Prepared) -> dict[str, float] | None:
        (kept, loss_on), c = prep.payload, ctx.cfg
        if not kept:
            return None
        history = run_sft(
            lambda tensors, lr: ctx.actor.mean_metrics("sft_step", tensors, lr=lr),
            kept, ctx.pad_id, c.rft.epochs, c.rft.batch_size, c.rft.lr, c.trainer.seed + prep.iteration, loss_on=loss_on,
        )  # fmt: skip
        return {"actor/sft_nll": sum(h["sft/nll"] for h in history) / len(history)}
