"""The one validation entry point: a composed config becomes a checked :class:`StepRLConfig`.

Three layers, each raising :class:`~steprl.config.ConfigError` with one line naming the key:

1. the schema (:func:`steprl.config.to_typed`): unknown keys, types (OmegaConf);
2. ranges (:func:`steprl.config_ranges.check_ranges`): no registry needed;
3. here: membership in the registries (methods, estimators, loss modes, engines, reward sources,
   task suites) and each method's own ``Method.check``.

Input *files* (data, annotations, checkpoints) are parsed by :mod:`steprl.inputs`, after this.
"""

from __future__ import annotations

from typing import Any

from steprl.config import ConfigError, StepRLConfig, _check, to_typed
from steprl.config_ranges import check_ranges


def validate(cfg: Any) -> StepRLConfig:
    """Schema, ranges, registries and the method's own checks; returns the typed config."""
    c = to_typed(cfg)
    check_ranges(c)
    check_registries(c)
    check_paths(c)
    return c


def check_registries(c: StepRLConfig) -> None:
    from steprl.algorithms.advantages import ADVANTAGE_ESTIMATORS
    from steprl.algorithms.losses import AGG_MODES, KL_KINDS
    from steprl.engines import ENGINES

    _check(
        c.rollout.engine in ENGINES,
        "rollout.engine",
        f"must be one of {sorted(ENGINES)}, got {c.rollout.engine!r}",
    )
    _check(
        c.algorithm.estimator in ADVANTAGE_ESTIMATORS,
        "algorithm.estimator",
        f"must be one of {sorted(ADVANTAGE_ESTIMATORS)}, got {c.algorithm.estimator!r}",
    )
    _check(c.algorithm.loss_agg in AGG_MODES, "algorithm.loss_agg", f"must be one of {AGG_MODES}")
    _check(c.algorithm.kl_kind in KL_KINDS, "algorithm.kl_kind", f"must be one of {KL_KINDS}")
    _check_tool_format(c.rollout.tool_format)
    _check_reward_sources(c)
    _check_suite(c.data.suite)
    _check_method(c)


def _check_tool_format(name: str) -> None:
    from tools_env.parsers import PARSERS

    _check(name in PARSERS, "rollout.tool_format", f"must be one of {sorted(PARSERS)}, got {name!r}")


def _check_suite(name: str) -> None:
    from tools_env.suite import get_suite

    try:
        get_suite(name)
    except KeyError as e:
        raise ConfigError(f"config error: data.suite: {str(e).strip(chr(34) + chr(39))}") from e


def _check_method(c: StepRLConfig) -> None:
    from steprl.methods import get_method

    try:
        method = get_method(c.trainer.method)
    except KeyError as e:
        raise ConfigError(f"config error: {str(e).strip(chr(34) + chr(39))}") from e
    problem = method.check_config(c)
    _check(problem is None, f"trainer.method={c.trainer.method}:", problem or "")


def _check_reward_sources(c: StepRLConfig) -> None:
    """Reward sources exist and give the components asked of them; a judge in use has an endpoint."""
    from steprl.reward_sources import (
        JUDGE_MODEL_ENV,
        JUDGE_URL_ENV,
        REWARD_SOURCES,
        component_plan,
        get_source_class,
        reward_env,
    )

    r = c.reward
    known = sorted(REWARD_SOURCES)
    for comp, src in component_plan(r).items():
        key = f"reward.{comp}_source" if getattr(r, f"{comp}_source") else "reward.source"
        _check(src in known, key, f"must be one of {known}, got {src!r}")
        gives = sorted(get_source_class(src).components)
        _check(comp in gives, key, f"{src!r} gives only {gives}, not {comp}; set reward.{comp}_source")
    fb = r.unscored_fallback
    _check(
        fb == "zero" or fb in known, "reward.unscored_fallback", f"must be zero or one of {known}, got {fb!r}"
    )
    if "judge" in reward_sources_in_use(c):
        env = reward_env(r)
        url = r.judge_url or env.get(JUDGE_URL_ENV, "")
        _check(
            url.startswith(("http://", "https://")),
            "reward.judge_url",
            f"must be an http(s) URL (or set {JUDGE_URL_ENV}), got {url!r}",
        )
        _check(
            bool(r.judge_model or env.get(JUDGE_MODEL_ENV)),
            "reward.judge_model",
            f"must be set (or {JUDGE_MODEL_ENV})",
        )


def reward_sources_in_use(c: StepRLConfig) -> set[str]:
    from steprl.reward_sources import component_plan

    return set(component_plan(c.reward).values()) | ({c.reward.unscored_fallback} - {"zero"})


def check_paths(c: StepRLConfig) -> None:
    """The files and directories the config names exist (what they hold: :mod:`steprl.inputs`)."""
    from pathlib import Path

    used = reward_sources_in_use(c)
    if c.data.format != "suite":
        _check(Path(c.data.path).expanduser().is_file(), "data.path", f"{c.data.path} is not a file")
    if "prm" in used:
        _check(
            Path(c.reward.prm_path).expanduser().is_dir(),
            "reward.prm_path",
            f"must be a PRM directory, got {c.reward.prm_path!r}",
        )
    if "file" in used:
        _check(
            Path(c.reward.file_path).expanduser().is_file(),
            "reward.file_path",
            f"must be an annotation file, got {c.reward.file_path!r}",
        )
