"""Sessions: one per episode, each with its own state, many at once.

``ToolEnv`` is the in-process environment. The FastAPI server exposes the same methods over HTTP and
``tools_env.client.ToolClient`` speaks to it with the same interface, so the rollout worker does not
care which one it holds.
"""

from __future__ import annotations

import copy
import threading
import uuid
from typing import Any

from tools_env.parsers import ToolCall
from tools_env.suite import CallOutcome, Suite, Task, get_suite

MAX_OBSERVATION_CHARS = 2000


class SessionError(KeyError):
    pass


class ToolEnv:
    """In-process tool environment with isolated sessions."""

    def __init__(self, max_observation_chars: int = MAX_OBSERVATION_CHARS) -> None:
        self._suites: dict[str, Suite] = {}
        self._tools: dict[str, dict[str, Any]] = {}
        self._sessions: dict[str, tuple[Suite, Task, dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self.max_observation_chars = max_observation_chars

    def suite(self, name: str) -> Suite:
        with self._lock:
            if name not in self._suites:
                self._suites[name] = get_suite(name)
            return self._suites[name]

    def list_tools(self, suite: str) -> list[dict[str, Any]]:
        return [t.schema() for t in self.suite(suite).tools()]

    def open_session(self, task: Task) -> str:
        suite = self.suite(task.suite)
        session_id = uuid.uuid4().hex
        state = copy.deepcopy(suite.initial_state(task))
        with self._lock:
            self._sessions[session_id] = (suite, task, state)
        return session_id

    def call(self, session_id: str, calls: list[ToolCall]) -> list[CallOutcome]:
        with self._lock:
            if session_id not in self._sessions:
                raise SessionError(f"no open session {session_id!r}")
            suite, _task, state = self._sessions[session_id]
            if suite.name not in self._tools:  # building Tool objects inspects signatures: do it once
                self._tools[suite.name] = {t.name: t for t in suite.tools()}
            tools = self._tools[suite.name]
        return [self._run(tools, state, c) for c in calls]

    def close_session(self, session_id: str) -> dict[str, Any]:
        """Close the session and return its final state (the checker of stateful suites needs it)."""
        with self._lock:
            if session_id not in self._sessions:
                raise SessionError(f"no open session {session_id!r}")
            _, _, state = self._sessions.pop(session_id)
        return state

    @property
    def num_sessions(self) -> int:
        return len(self._sessions)

    def _run(self, tools: dict[str, Any], state: dict[str, Any], call: ToolCall) -> CallOutcome:
        tool = tools.get(call.name)
        if tool is None:
            msg = f"Error: there is no tool named {call.name!r}. Available tools: {', '.join(sorted(tools))}."
            return CallOutcome(call.name, call.arguments, False, msg, "unknown_tool")
        problem = tool.validate(call.arguments)
        if problem:
            return CallOutcome(call.name, call.arguments, False, f"Error: {problem}", "invalid_arguments")
        try:
            output = str(tool.fn(state, **call.arguments))
        except Exception as e:  # a tool's failure is an observation, never a crash
            return CallOutcome(call.name, call.arguments, False, f"Error: {e}", type(e).__name__)
        if len(output) > self.max_observation_chars:
            output = output[: self.max_observation_chars] + " ...[truncated]"
        return CallOutcome(call.name, call.arguments, True, output)
