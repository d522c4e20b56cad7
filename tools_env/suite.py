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

from tools_env.tools import Tool


@dataclass
class Task:
    """One problem: the user's question, the expected answer and whatever the checker needs."""

    task_id: str
    suite: str
    question: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Task:
        return cls(**d)


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
    """Base class. Tools are methods decorated with ``@tool`` taking ``(self, state, ...)``."""

    name: str = ""
    tool_format: str = "hermes"
    system_prompt: str = "You are a helpful assistant that can use tools."

    def tools(self) -> list[Tool]:
        found = []
        for attr, member in inspect.getmembers(type(self), predicate=inspect.isfunction):
            tool_name = getattr(member, "__steprl_tool__", None)
            if tool_name:
                found.append(Tool.from_callable(getattr(self, attr), tool_name))
        return sorted(found, key=lambda t: t.name)

    @abstractmethod
    def tasks(self, split: str, n: int, seed: int) -> list[Task]:
        """Generate ``n`` tasks of ``split`` ("train" or "test") deterministically from ``seed``."""

    def entity_tokens(self) -> list[str]:
        """Names a tiny embedded tokenizer should keep whole (so a 1M-parameter model can copy them)."""
        return []

    def initial_state(self, task: Task) -> dict[str, Any]:
        return {}

    @abstractmethod
    def final_answer_correct(self, task: Task, final_answer: str | None, state: dict[str, Any]) -> float:
        """IsSolved: 1 solved, 0.5 unsure, 0 unsolved."""

    def contributions(self, task: Task, steps: list[dict[str, Any]], final_answer: str | None) -> list[float]:
        """Contribution in [0, 1] of each tool step to the final answer (rule-based)."""
        return [0.0 for _ in steps]

    def demonstration(self, task: Task, rng: random.Random, suboptimal_share: float) -> list[dict[str, Any]]:
        """A demonstration as chat messages (assistant turns with tool calls, tool results)."""
        raise TypeError(f"suite {self.name!r} has no demonstrations for SFT")


SUITES: dict[str, Callable[[], Suite]] = {}


def register_suite(name: str):
    def wrap(cls):
        if name in SUITES:
            raise ValueError(f"suite {name!r} is already registered")
        cls.name = name
        SUITES[name] = cls
        return cls

    return wrap


def get_suite(name: str) -> Suite:
    import tools_env.suites  # noqa: F401  (registers the built-in suites)

    if name not in SUITES:
        from tools_env.plugins import load_entry_points

        load_entry_points()
    if name not in SUITES:
        raise KeyError(f"unknown task suite {name!r}; known: {sorted(SUITES)}")
    return SUITES[name]()
