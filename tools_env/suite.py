"""Task suites: tools + procedurally generated tasks + the rules that score them.

A suite states what its rewards mean: ``succ_calling`` comes from executing a call (the session
knows), ``contribution`` and ``is_solved`` from the suite's own rules over the episode. Suites are
registered by name so users add theirs from their own package (see docs/tools_env.md).
"""

from __future__ import annotations

import inspect
import random
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from tools_env.tools import Tool, tool_from_member


@dataclass
class Task:
    """One problem: the user's question, the expected answer and whatever the checker needs.

    ``followups`` are the scripted user messages after the first answer (a conversation; a suite can
    also produce them with ``Suite.user_turn``). ``tools`` names the tools of the suite this task may
    use (None: all of them) and ``excluded_tools`` removes some; only these reach the prompt and the
    session. Everything must be JSON (a task travels to the tool server and into result files).
    """

    task_id: str
    suite: str
    question: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)
    followups: list[str] = field(default_factory=list)
    tools: list[str] | None = None
    excluded_tools: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Task:
        return cls(**d)


def select_tools(task: Task, available: list[str]) -> list[str]:
    """The names of ``available`` that ``task`` may use, in order; an unknown name is an error."""
    known = set(available)
    for key, names in (("tools", task.tools or []), ("excluded_tools", task.excluded_tools)):
        unknown = sorted(set(names) - known)
        if unknown:
            raise ValueError(
                f"task {task.task_id}: {key} names unknown tool(s) {unknown}; suite {task.suite!r} has {sorted(known)}"
            )
    allowed = set(task.tools) if task.tools is not None else known
    return [n for n in available if n in allowed and n not in set(task.excluded_tools)]


def accepts_keyword(fn: Callable[..., Any], name: str) -> bool:
    """Whether ``fn`` takes a keyword argument ``name`` (by that name or through ``**kwargs``)."""
    params = inspect.signature(fn).parameters.values()
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in params)


@dataclass
class CallOutcome:
    """What executing one tool call gave; ``ok`` is SuccCalling for this call."""

    name: str
    arguments: Any
    ok: bool
    output: str
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Suite(ABC):
    """Base class. Tools are methods decorated with ``@tool`` taking ``(self, state, ...)`` (schema
    from the type hints, or ``@tool(schema={...})`` with an OpenAI function schema); a suite may
    also override ``tools()`` to return ``Tool`` objects (e.g. ``Tool.from_schema(schema, fn)``)."""

    name: str = ""
    tool_format: str = "hermes"
    system_prompt: str = "You are a helpful assistant that can use tools."
    max_user_turns: int = 16  # a guard for simulated users that never stop: turns after the first

    def tools(self) -> list[Tool]:
        found = []
        for attr, member in inspect.getmembers(type(self), predicate=inspect.isfunction):
            tool_name = getattr(member, "__steprl_tool__", None)
            if tool_name:
                found.append(tool_from_member(member, getattr(self, attr)))
        return sorted(found, key=lambda t: t.name)

    @abstractmethod
    def tasks(self, split: str, n: int, seed: int) -> list[Task]:
        """Generate ``n`` tasks of ``split`` ("train" or "test") deterministically from ``seed``."""

    def entity_tokens(self) -> list[str]:
        """Names a tiny embedded tokenizer should keep whole (so a 1M-parameter model can copy them)."""
        return []

    def task_tools(self, task: Task) -> list[Tool]:
        """The tools ``task`` may use (``Task.tools`` minus ``Task.excluded_tools``)."""
        tools = self.tools()
        allowed = set(select_tools(task, [t.name for t in tools]))
        return [t for t in tools if t.name in allowed]

    def initial_state(self, task: Task) -> Any:
        """A fresh state for one session: any Python objects (only ``snapshot`` must be JSON)."""
        return {}

    def snapshot(self, task: Task, state: Any) -> Any:
        """What the checkers see of ``state`` (after each user turn and at the end of the episode).

        Default: the state itself (deep-copied). With the tool server it travels as JSON, so a suite
        whose state holds live objects returns a JSON view of them here.
        """
        return state

    def close_state(self, task: Task, state: Any) -> None:  # noqa: B027 - optional hook
        """Release what a session's state holds (files, connections); called once when it closes."""

    def user_turn(self, task: Task, turn: int, messages: list[dict[str, Any]]) -> str | None:
        """The user's message opening turn ``turn`` (1, 2, ...) after the agent answered ``turn - 1``,
        or None: the conversation is over. ``messages`` is the conversation so far (chat messages).

        Default: the scripted ``task.followups``. Override it for a simulated user (rules, or a model
        behind an OpenAI-compatible endpoint: ``tools_env.simulated_user.OpenAIUser``).
        """
        return task.followups[turn - 1] if 0 < turn <= len(task.followups) else None

    def turn_correct(
        self, task: Task, turn: int, answer: str | None, state: Any, steps: list[dict[str, Any]]
    ) -> float | None:
        """The per-turn check: a score in [0, 1] of user turn ``turn`` (0 = the question), given the
        agent's reply, the state snapshot after it and the turn's tool steps; None = no per-turn check.
        """
        return None

    @abstractmethod
    def final_answer_correct(self, task: Task, final_answer: str | None, state: Any) -> float:
        """IsSolved: 1 solved, 0.5 unsure, 0 unsolved. May also take ``steps`` (keyword): the step
        records of the whole episode (``info["calls"]`` holds each call's execution result)."""

    def contributions(self, task: Task, steps: list[dict[str, Any]], final_answer: str | None) -> list[float]:
        """Contribution in [0, 1] of each tool step to the final answer (rule-based)."""
        return [0.0 for _ in steps]

    def demonstration(self, task: Task, rng: random.Random, suboptimal_share: float) -> list[dict[str, Any]]:
        """A demonstration as chat messages (assistant turns with tool calls, tool results)."""
        raise TypeError(f"suite {self.name!r} has no demonstrations for SFT")


def check_final_answer(
    suite: Suite, task: Task, final_answer: str | None, state: Any, steps: list[dict[str, Any]]
) -> float:
    """Call ``final_answer_correct``, with ``steps=`` only if the checker takes it (old signature)."""
    check = suite.final_answer_correct
    if accepts_keyword(check, "steps"):
        return float(check(task, final_answer, state, steps=steps))
    return float(check(task, final_answer, state))


SUITES: dict[str, Callable[[], Suite]] = {}


def register_suite(name: str):
    def wrap(cls):
        if name in SUITES:
            raise ValueError(f"suite {name!r} is already registered")
        cls.name = name
        SUITES[name] = cls
        return cls

    return wrap


SUITES_YAML_ENV = "STEPRL_SUITES_YAML"  # suite YAML files every process loads (os.pathsep-separated)


def use_suites_yaml(path: str) -> list[str]:
    """Load a suite YAML here and in every process started from here (Ray workers, a local tool
    server): its absolute path joins ``$STEPRL_SUITES_YAML``. Returns the suite names it registered."""
    import os
    from pathlib import Path

    from tools_env.plugins import load_suite_from_yaml

    resolved = Path(path).expanduser().resolve()
    if not resolved.is_file():
        raise FileNotFoundError(f"no suite YAML file {resolved}")
    names = load_suite_from_yaml(resolved)
    known = [p for p in os.environ.get(SUITES_YAML_ENV, "").split(os.pathsep) if p]
    if str(resolved) not in known:
        os.environ[SUITES_YAML_ENV] = os.pathsep.join([*known, str(resolved)])
    return names


def get_suite(name: str) -> Suite:
    import os

    import tools_env.suites  # noqa: F401  (registers the built-in suites)

    if name not in SUITES:
        from tools_env.plugins import load_entry_points, load_suite_from_yaml

        for path in filter(None, os.environ.get(SUITES_YAML_ENV, "").split(os.pathsep)):
            load_suite_from_yaml(path)
        load_entry_points()
    if name not in SUITES:
        raise KeyError(f"unknown task suite {name!r}; known: {sorted(SUITES)}")
    return SUITES[name]()
