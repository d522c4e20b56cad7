"""Hydra command-line plumbing for ``steprl.main`` and ``steprl.eval``: override strings, flags and the
``--help`` page.

Pure helpers on argument lists (no config is composed here), so the entry points keep only the flow:
check every job, then run it (or hand the arguments to Hydra).
"""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True)
class HelpPage:
    """One program's ``--help`` page: its Hydra help config name, first line and examples."""

    name: str  # the hydra/help option (and the program name Hydra shows)
    usage: str
    examples: tuple[str, ...]


def register_help(page: HelpPage, recipes_dir: Path, configs_dir: Path, default_recipe: str) -> None:
    """``--help``: recipes, flags, config groups and the composed config (Hydra's help template)."""
    from hydra.core.config_store import ConfigStore

    recipes = " ".join(sorted(p.stem for p in recipes_dir.glob("*.yaml")))
    groups = "\n".join(  # listed here: Hydra's $APP_CONFIG_GROUPS misses a search path given as override
        f"{d.name}: {', '.join(sorted(f.stem for f in d.glob('*.yaml')))}"
        for d in sorted(configs_dir.iterdir())
        if d.is_dir()
    )
    examples = "".join(f"  {line}\n" for line in page.examples)
    template = (
        f"{page.usage}\n\n"
        f"== Recipes (recipe=<name>, default {default_recipe}) ==\n{recipes}\n\n"
        "== Flags ==\n$FLAGS_HELP\n"
        f"== Configuration groups (group=option) ==\n{groups}\n\n"
        "== Config (override any key: section.key=value) ==\n$CONFIG\n"
        f"Examples:\n{examples}"
        "A misspelled key, a wrong type or a value out of range fails before anything starts.\n"
        "Use --hydra-help for Hydra's own options (launchers, sweepers, logging).\n"
    )
    node = {"app_name": page.name, "header": "", "footer": "", "template": template}
    ConfigStore.instance().store(group="hydra/help", name=page.name, node=node)
