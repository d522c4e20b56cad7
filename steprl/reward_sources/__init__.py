"""Reward sources (registry) and their per-component combination; see docs/rewards.md.

Built-in sources: ``rule`` (environment + suite rules), ``judge`` (an OpenAI-compatible LLM judge),
``prm`` (a process reward model, Contribution only) and ``file`` (annotations shipped with the data).
Register your own with ``@register_reward_source("name")`` on a ``RewardSource`` subclass (batch
scoring) or on a function ``(traj, task) -> (succ_calling, contribution, is_solved)``.
"""

from steprl.reward_sources import file, judge, prm_source, rule  # noqa: F401  (register the built-ins)
from steprl.reward_sources.base import (
    COMPONENTS,
    JUDGE_MODEL_ENV,
    JUDGE_URL_ENV,
    REWARD_SOURCES,
    RewardSource,
    SourceScores,
    component_plan,
    get_source_class,
    register_reward_source,
    reward_env,
    sources_in_use,
)
from steprl.reward_sources.pipeline import (
    Combined,
    RewardPipeline,
    apply_rewards,
    combine_components,
    merge_metrics,
)

__all__ = [
    "COMPONENTS",
    "JUDGE_MODEL_ENV",
    "JUDGE_URL_ENV",
    "REWARD_SOURCES",
    "Combined",
    "RewardPipeline",
    "RewardSource",
    "SourceScores",
    "apply_rewards",
    "combine_components",
    "component_plan",
    "get_source_class",
    "merge_metrics",
    "register_reward_source",
    "reward_env",
    "sources_in_use",
]
