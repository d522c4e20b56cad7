"""Hydra command-line plumbing for ``steprl.main``: override strings, flags and the ``--help`` page.

Pure helpers on argument lists (no config is composed here), so ``steprl.main`` keeps only the flow:
check every job, then hand the arguments to Hydra.
"""

from __future__ import annotations

from pathlib import Path


def quote_override(value: str) -> str:
    """A path as a Hydra override value (quoted unless it is plain)."""
    if all(ch.isalnum() or ch in "_./-" for ch in value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def given_override(overrides: list[str], key: str) -> str | None:
    found = [o.split("=", 1)[1] for o in overrides if o.lstrip("+").split("=", 1)[0] == key]
    return found[-1] if found else None


def split_flags(args: list[str]) -> tuple[list[str], list[str]]:
    from hydra._internal.utils import get_args_parser

    overrides = list(get_args_parser().parse_args(args).overrides)
    flags, left = [], list(overrides)
    for a in args:
        if a in left:
            left.remove(a)
        else:
            flags.append(a)
    return flags, overrides


def register_help(recipes_dir: Path, configs_dir: Path, default_recipe: str) -> None:
    """``--help``: recipes, flags, config groups and the composed config (Hydra's help template)."""
    from hydra.core.config_store import ConfigStore

    recipes = " ".join(sorted(p.stem for p in recipes_dir.glob("*.yaml")))
    groups = "\n".join(  # listed here: Hydra's $APP_CONFIG_GROUPS misses a search path given as override
        f"{d.name}: {', '.join(sorted(f.stem for f in d.glob('*.yaml')))}"
        for d in sorted(configs_dir.iterdir())
        if d.is_dir()
    )
    template = (
        "python -m steprl.main [recipe=<name>] [key=value ...]: train a recipe (README: Configuration)\n\n"
        f"== Recipes (recipe=<name>, default {default_recipe}) ==\n{recipes}\n\n"
        "== Flags ==\n$FLAGS_HELP\n"
        f"== Configuration groups (group=option) ==\n{groups}\n\n"
        "== Config (override any key: section.key=value) ==\n$CONFIG\n"
        "Examples:\n"
        "  python -m steprl.main recipe=grpo trainer.total_iterations=3 rollout=hf\n"
        "  python -m steprl.main --cfg job algorithm.kl_coef=0.05      # the resolved config, no run\n"
        "  python -m steprl.main -m trainer.seed=0,1,2                  # a sweep, one run dir per job\n"
        "A misspelled key, a wrong type or a value out of range fails before anything starts.\n"
        "Use --hydra-help for Hydra's own options (launchers, sweepers, logging).\n"
    )
    node = {"app_name": "steprl", "header": "", "footer": "", "template": template}
    ConfigStore.instance().store(group="hydra/help", name="steprl", node=node)
