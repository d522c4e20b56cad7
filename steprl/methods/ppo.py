"""PPO-family iteration (StepTool, PPO with final reward, GRPO, RLOO, REINFORCE++ and the ablations):
the shared step of ``steprl.step`` as it is (estimator from the registry).

With ``data.format=steptool_csv`` the collect stage is the next batch of the published, pre-scored
trajectories (the StepTool repository's offline mode) instead of rollouts; the rest is the same.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from steprl.methods import Method, register_method
from steprl.step import Rollout

if TYPE_CHECKING:
    from steprl.config import StepRLConfig
    from steprl.context import MethodContext


@register_method("ppo")
class PPO(Method):
    data_formats = ("suite", "steptool_sft_json", "steptool_csv")
    supports_async = True  # its collect is the shared one

    def check(self, cfg: StepRLConfig) -> str | None:
        if cfg.trainer.async_rollout and cfg.data.format == "steptool_csv":
            return "trainer.async_rollout=true has nothing to overlap with data.format=steptool_csv (no rollouts)"
        return None

    def setup(self, ctx: MethodContext) -> None:
        self.offline = None
        c = ctx.cfg
        if c.data.format == "steptool_csv":
            from steprl.data.offline import OfflineStepDataset

            self.offline = OfflineStepDataset.from_steptool_csv(
                c.data.path,
                ctx.tokenizer,
                max_len=c.rollout.max_model_len,
                on_error=c.data.on_error,  # type: ignore[arg-type]
                seed=c.trainer.seed,
            )
            ctx.logger.log(0, {f"data/{k}": float(v) for k, v in self.offline.stats.items()})

    def collect(self, ctx: MethodContext, it: int) -> Rollout:
        if self.offline is None:
            return ctx.rollout_batch(it)
        return Rollout(self.offline.batch(it, ctx.cfg.trainer.tasks_per_iteration))
