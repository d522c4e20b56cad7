"""Pure-tensor algorithms of steprl: reward shaping, reward placement, advantages, losses, KL.

No Ray and no models here: every function takes tensors (or, for reward shaping, plain floats)
and is tested against hand-computed values and slow references in ``tests/``.
"""

from steprl.algorithms import critic_free  # noqa: F401  (registers grpo, rloo, reinforce_pp)
from steprl.algorithms.advantages import (
    ADVANTAGE_ESTIMATORS,
    AdvantageConfig,
    AdvantageOutput,
    action_token_gae,
    compute_advantages,
    get_advantage_estimator,
    register_advantage,
)
from steprl.algorithms.kl import AdaptiveKLController, FixedKLController, apply_kl_in_reward
from steprl.algorithms.losses import (
    aggregate,
    entropy_from_logits,
    kl_penalty,
    masked_entropy,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    ppo_policy_loss,
    value_loss,
)
from steprl.algorithms.placement import (
    action_step_index,
    broadcast_step_values,
    place_step_rewards,
    place_step_values,
    step_first_positions,
    step_last_positions,
    steptool_compat_multipliers,
    sum_per_step,
)
from steprl.algorithms.rewards import (
    IS_SOLVED_SCORES,
    RunningRewardNormalizer,
    average_judge_samples,
    contribution_from_annotation,
    is_solved_score,
    shape_step_rewards,
)

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "IS_SOLVED_SCORES",
    "AdaptiveKLController",
    "AdvantageConfig",
    "AdvantageOutput",
    "FixedKLController",
    "RunningRewardNormalizer",
    "action_step_index",
    "action_token_gae",
    "aggregate",
    "apply_kl_in_reward",
    "average_judge_samples",
    "broadcast_step_values",
    "compute_advantages",
    "contribution_from_annotation",
    "entropy_from_logits",
    "get_advantage_estimator",
    "is_solved_score",
    "kl_penalty",
    "masked_entropy",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "place_step_rewards",
    "place_step_values",
    "ppo_policy_loss",
    "register_advantage",
    "shape_step_rewards",
    "step_first_positions",
    "step_last_positions",
    "steptool_compat_multipliers",
    "sum_per_step",
    "value_loss",
]
