"""Register suites from outside the package: a YAML file, or a distribution's entry points.

A YAML file can name modules to import (their ``@register_suite`` classes register themselves) and/or
define one suite inline from plain functions, task lists and a checker::

    modules: [mypkg.suites, ./my_suite.py]       # optional; paths are relative to the YAML file
    name: capitals                                # an inline suite (optional)
    system_prompt: You answer questions about capitals.
    tool_format: hermes
    tools:                                        # module:function; a first parameter named `state`
      - ./capital_tools.py:capital_of             # receives the session state; schema from type hints
      - {schema: ./book.json, function: ./calendar.py:book}   # or an OpenAI function schema (inline
                                                  # mapping or a .json file) bound to a function
    mcp: {command: python, args: [server.py]}     # optional: add the tools of an MCP server (stdio)
    tasks:                                        # per split a list, or module:function(split, n, seed)
      train: [{question: "Capital of Oskaria?", answer: Velport}]
      test: [...]
    checker: exact          # exact | contains | last_number | module:function(task, final_answer, state)
    contributions: mod:fn   # optional: fn(task, steps, final_answer) -> list[float]
    initial_state: mod:fn   # optional: fn(task) -> the session state (any Python objects)
    snapshot: mod:fn        # optional: fn(task, state) -> what checkers see (JSON for the tool server)
    close_state: mod:fn     # optional: fn(task, state), when the session closes
    user_turn: mod:fn       # optional: fn(task, turn, messages) -> the next user message or None
    turn_check: mod:fn      # optional: fn(task, turn, answer, state, steps) -> per-turn score in [0, 1]

A task of a list may carry ``followups`` (later user messages), ``tools`` and ``excluded_tools``;
its other keys go to ``Task.meta``. A checker ``module:function`` may take ``steps=`` (the episode's
step records with each call's execution result).

Suites live in a per-process registry: a Ray worker or a tool server in another process must load the
same YAML (``python -m tools_env.server --suites-yaml file.yaml``).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import random
import re
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tools_env.suite import SUITES, Suite, Task, accepts_keyword, register_suite
from tools_env.tools import Tool

ENTRY_POINT_GROUP = "steprl.suites"
_LOADED: dict[str, list[str]] = {}
_LOCK = threading.Lock()


def import_module(ref: str, base: Path | None = None) -> Any:
    """Import a dotted module name, or a ``.py`` file (relative to ``base``)."""
    if ref.endswith(".py") or "/" in ref:
        path = (base / ref if base and not Path(ref).is_absolute() else Path(ref)).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"no Python file {path}")
        name = f"steprl_plugin_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        return module
    return importlib.import_module(ref)


def resolve(ref: str, base: Path | None = None) -> Any:
    """``module:attribute`` (module dotted or a ``.py`` path) -> the attribute."""
    module_ref, sep, attr = ref.rpartition(":")
    if not sep or not module_ref or not attr:
        raise ValueError(f"expected 'module:function', got {ref!r}")
    module = import_module(module_ref, base)
    try:
        return getattr(module, attr)
    except AttributeError as e:
        raise AttributeError(f"{module_ref} has no attribute {attr!r}") from e


def function_tool(fn: Callable[..., Any], name: str | None = None) -> Tool:
    """A plain function as a tool; it gets the session state only if its first parameter is ``state``."""
    built = Tool.from_callable(fn, name)
    params = list(inspect.signature(fn).parameters)
    if params and params[0] == "state":
        built.fn = fn
    else:
        built.fn = lambda state, **kwargs: fn(**kwargs)
    return built


def schema_tool(entry: dict[str, Any], base: Path | None = None) -> Tool:
    """``{schema: <OpenAI function schema or a .json file>, function: module:function}`` as a tool."""
    import json

    if set(entry) - {"schema", "function"} or "schema" not in entry or "function" not in entry:
        raise ValueError(
            f"a schema tool is {{schema: ..., function: module:function}}, got keys {sorted(entry)}"
        )
    schema = entry["schema"]
    if isinstance(schema, str):
        path = base / schema if base and not Path(schema).is_absolute() else Path(schema)
        schema = json.loads(path.read_text())
    return Tool.from_schema(schema, resolve(entry["function"], base))


# ---- checkers ------------------------------------------------------------------------------------
def _norm(text: str | None) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", (text or "").lower()))


def _exact(task: Task, final_answer: str | None, state: dict[str, Any]) -> float:
    answer = re.sub(r"^\s*(?:final\s+)?(?:the\s+)?answer\s*(?:is|:)\s*", "", final_answer or "", flags=re.I)
    return 1.0 if _norm(answer) == _norm(task.answer) else 0.0


def _contains(task: Task, final_answer: str | None, state: dict[str, Any]) -> float:
    gold = _norm(task.answer)
    return 1.0 if gold and f" {gold} " in f" {_norm(final_answer)} " else 0.0


def _last_number(task: Task, final_answer: str | None, state: dict[str, Any]) -> float:
    found = [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?", (final_answer or "").replace(",", ""))]
    expected = float(task.answer)
    if found and found[-1] == expected:
        return 1.0
    return 0.5 if expected in found else 0.0


CHECKERS: dict[str, Callable[[Task, str | None, dict[str, Any]], float]] = {
    "exact": _exact, "contains": _contains, "last_number": _last_number,
}  # fmt: skip


# ---- inline suites -------------------------------------------------------------------------------
class InlineSuite(Suite):
    """Base of suites built from a YAML spec; ``make_suite`` fills the class attributes."""

    function_tools: tuple[Tool, ...] = ()
    mcp_server: dict[str, Any] | None = None
    task_lists: dict[str, list[dict[str, Any]]] = {}
    task_generator: Callable[[str, int, int], list[dict[str, Any]]] | None = None
    checker: Callable[[Task, str | None, dict[str, Any]], float] = staticmethod(_exact)
    contribution_fn: Callable[..., list[float]] | None = None
    initial_state_fn: Callable[[Task], Any] | None = None
    snapshot_fn: Callable[[Task, Any], Any] | None = None
    close_state_fn: Callable[[Task, Any], None] | None = None
    user_turn_fn: Callable[[Task, int, list[dict[str, Any]]], str | None] | None = None
    turn_check_fn: Callable[..., float | None] | None = None

    def tools(self) -> list[Tool]:
        tools = list(self.function_tools)
        if self.mcp_server:
            from tools_env.mcp_suite import get_connection, mcp_tools

            tools += mcp_tools(get_connection(**self.mcp_server))
        return sorted(tools, key=lambda t: t.name)

    def tasks(self, split: str, n: int, seed: int) -> list[Task]:
        """The first ``n`` tasks of ``split`` in a seeded order (fewer if the list is shorter)."""
        if self.task_generator is not None:
            items = list(enumerate(self.task_generator(split, n, seed)))
        else:
            if split not in self.task_lists:
                raise ValueError(
                    f"suite {self.name!r} has no {split!r} tasks; it has {sorted(self.task_lists)}"
                )
            items = list(enumerate(self.task_lists[split]))
            random.Random(f"{self.name}-{split}-{seed}").shuffle(items)
        out = []
        for i, item in items[:n]:
            fields = {"meta": {}, **item}
            task_id = fields.pop("task_id", f"{self.name}-{split}-{i}")
            question, answer = str(fields.pop("question")), str(fields.pop("answer"))
            followups = [str(x) for x in fields.pop("followups", [])]
            tools, excluded = fields.pop("tools", None), list(fields.pop("excluded_tools", []))
            meta = dict(fields.pop("meta"), **fields)
            out.append(Task(task_id, self.name, question, answer, meta, followups, tools, excluded))
        return out

    def initial_state(self, task: Task) -> Any:
        return self.initial_state_fn(task) if self.initial_state_fn else {}

    def snapshot(self, task: Task, state: Any) -> Any:
        return self.snapshot_fn(task, state) if self.snapshot_fn else state

    def close_state(self, task: Task, state: Any) -> None:
        if self.close_state_fn:
            self.close_state_fn(task, state)

    def user_turn(self, task: Task, turn: int, messages: list[dict[str, Any]]) -> str | None:
        if self.user_turn_fn:
            return self.user_turn_fn(task, turn, messages)
        return super().user_turn(task, turn, messages)

    def turn_correct(self, task, turn, answer, state, steps) -> float | None:
        return self.turn_check_fn(task, turn, answer, state, steps) if self.turn_check_fn else None

    def final_answer_correct(
        self, task: Task, final_answer: str | None, state: Any, steps: list[dict[str, Any]] | None = None
    ) -> float:
        if accepts_keyword(self.checker, "steps"):
            return float(self.checker(task, final_answer, state, steps=steps or []))
        return float(self.checker(task, final_answer, state))

    def contributions(self, task: Task, steps: list[dict[str, Any]], final_answer: str | None) -> list[float]:
        if self.contribution_fn is None:
            return super().contributions(task, steps, final_answer)
        return [float(x) for x in self.contribution_fn(task, steps, final_answer)]


def make_suite(spec: dict[str, Any], base: Path | None = None) -> type[InlineSuite]:
    """Build and register a suite class from an inline spec (the YAML keys above)."""
    name = spec["name"]
    tasks = spec.get("tasks", {})
    checker = spec.get("checker", "exact")
    attrs: dict[str, Any] = {
        "__doc__": spec.get("description", f"Suite {name!r} loaded from YAML."),
        "system_prompt": spec.get("system_prompt", Suite.system_prompt),
        "tool_format": spec.get("tool_format", "hermes"),
        "function_tools": tuple(
            schema_tool(ref, base) if isinstance(ref, dict) else function_tool(resolve(ref, base))
            for ref in spec.get("tools", [])
        ),
        "checker": staticmethod(CHECKERS[checker] if checker in CHECKERS else resolve(checker, base)),
    }
    if isinstance(tasks, str):
        attrs["task_generator"] = staticmethod(resolve(tasks, base))
    else:
        attrs["task_lists"] = {split: list(items) for split, items in tasks.items()}
    if "mcp" in spec:
        mcp = dict(spec["mcp"])
        if mcp.get("cwd") is None and base is not None:
            mcp["cwd"] = str(base)
        attrs["mcp_server"] = {k: mcp[k] for k in ("command", "args", "env", "cwd", "timeout_s") if k in mcp}
    if "contributions" in spec:
        attrs["contribution_fn"] = staticmethod(resolve(spec["contributions"], base))
    for key in ("initial_state", "snapshot", "close_state", "user_turn", "turn_check"):
        if key in spec:
            attrs[f"{key}_fn"] = staticmethod(resolve(spec[key], base))
    cls = type(f"{name.title().replace('_', '')}Suite", (InlineSuite,), attrs)
    return register_suite(name)(cls)


def load_suite_from_yaml(path: str | Path) -> list[str]:
    """Import the modules a YAML file names and register its inline suite; returns the new suite names.

    Loading the same file again is a no-op that returns the same names.
    """
    path = Path(path).expanduser().resolve()
    with _LOCK:
        if str(path) in _LOADED:
            return list(_LOADED[str(path)])
        spec = yaml.safe_load(path.read_text()) or {}
        if not isinstance(spec, dict):
            raise ValueError(f"{path}: expected a mapping at the top level")
        before = set(SUITES)
        modules = spec.get("modules", spec.get("module", []))
        for ref in [modules] if isinstance(modules, str) else modules:
            import_module(ref, path.parent)
        if "name" in spec:
            make_suite(spec, path.parent)
        names = sorted(set(SUITES) - before)
        if not names:
            raise ValueError(f"{path} registered no suite (give `modules:` that register some, or `name:`)")
        _LOADED[str(path)] = names
        return list(names)


def load_entry_points(group: str = ENTRY_POINT_GROUP) -> list[str]:
    """Load suites that installed distributions declare under ``[project.entry-points."steprl.suites"]``."""
    from importlib.metadata import entry_points

    before = set(SUITES)
    for ep in entry_points(group=group):
        ep.load()
    return sorted(set(SUITES) - before)
