"""PPO-family iteration (StepTool, PPO with final reward, GRPO, RLOO, REINFORCE++ and the ablations):
rollout -> reward -> advantage (estimator from the registry) -> actor/critic update -> weight sync.

With ``data.format=steptool_csv`` the rollout and reward stages are replaced by the next batch of the
published, pre-scored trajectories (the StepTool repository's offline mode); the rest is the same.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from steprl.methods import Method, register_method

if TYPE_CHECKING:
    from steprl.config import StepRLConfig
    from steprl.controller import Controller


@register_method("ppo")
class PPO(Method):
    data_formats = ("suite", "steptool_sft_json", "steptool_csv")
    supports_async = True  # Controller.iteration takes its batch from rollout_batch

    def check(self, cfg: StepRLConfig) -> str | None:
        if cfg.trainer.async_rollout and cfg.data.format == "steptool_csv":
            return "trainer.async_rollout=true has nothing to overlap with data.format=steptool_csv (no rollouts)"
        return None

    def setup(self, ctl: Controller) -> None:
        self.offline = None
        c = ctl.cfg
        if c.data.format == "steptool_csv":
            from steprl.data.offline import OfflineStepDataset

            self.offline = OfflineStepDataset.from_steptool_csv(
                c.data.path,
                ctl.tokenizer,
                max_len=c.rollout.max_model_len,
                on_error=c.data.on_error,  # type: ignore[arg-type]
                seed=c.trainer.seed,
            )
            ctl.logger.log(0, {f"data/{k}": float(v) for k, v in self.offline.stats.items()})

    def iteration(self, ctl: Controller, it: int) -> dict[str, float]:
        if self.offline is None:
            return ctl.iteration(it)
        return ctl.iteration(it, trajectories=self.offline.batch(it, ctl.cfg.trainer.tasks_per_iteration))
