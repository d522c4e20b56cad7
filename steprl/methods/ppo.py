"""PPO-family iteration (StepTool, PPO with final reward, GRPO, RLOO, REINFORCE++ and the ablations):
rollout -> reward -> advantage (estimator from the registry) -> actor/critic update -> weight sync."""

from __future__ import annotations

from typing import TYPE_CHECKING

from steprl.methods import Method, register_method

if TYPE_CHECKING:
    from steprl.controller import Controller


@register_method("ppo")
class PPO(Method):
    def iteration(self, ctl: Controller, it: int) -> dict[str, float]:
        return ctl.iteration(it)
