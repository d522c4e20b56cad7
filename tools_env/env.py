"""Sessions: one per episode, each with its own state, many at once.

``ToolEnv`` is the in-process environment. The FastAPI server exposes the same methods over HTTP and
``tools_env.client.ToolClient`` speaks to it with the same interface, so the rollout worker does not
care which one it holds.
"""

from __future__ import annotations

import contextlib
import copy
import threading
import uuid
from typing import Any

from tools_env.parsers import ToolCall
from tools_env.suite import CallOutcome, Suite, Task, get_suite, select_tools

MAX_OBSERVATION_CHARS = 2000


class SessionError(KeyError):
    pass


class ToolEnv:
    """In-process tool environment with isolated sessions."""

    def __init__(self, max_observation_chars: int = MAX_OBSERVATION_CHARS) -> None:
        self._suites: dict[str, Suite] = {}
        self._tools: dict[str, dict[str, Any]] = {}
        self._sessions: dict[str, tuple[Suite, Task, Any, set[str]]] = {}
        self._lock = threading.Lock()
        self.max_observation_chars = max_observation_chars

    def suite(self, name: str) -> Suite:
        with self._lock:
            if name not in self._suites:
                self._suites[name] = get_suite(name)
            return self._suites[name]

    def list_tools(self, suite: str) -> list[dict[str, Any]]:
        return [t.schema() for t in self.suite(suite).tools()]

    def _suite_tools(self, suite: Suite) -> dict[str, Any]:
        with self._lock:
            if suite.name not in self._tools:  # building Tool objects inspects signatures: do it once
                self._tools[suite.name] = {t.name: t for t in suite.tools()}
            return self._tools[suite.name]

    def open_session(self, task: Task) -> str:
        """A session for ``task``: a fresh state and the tools the task may use."""
        suite = self.suite(task.suite)
        allowed = set(select_tools(task, list(self._suite_tools(suite))))
        session_id = uuid.uuid4().hex
        state = suite.initial_state(task)
        # a suite returning a shared dict must not leak state across sessions; live objects that
        # cannot be copied (locks, handles) are fresh by contract
        with contextlib.suppress(Exception):
            state = copy.deepcopy(state)
        with self._lock:
            self._sessions[session_id] = (suite, task, state, allowed)
        return session_id

    def call(self, session_id: str, calls: list[ToolCall]) -> list[CallOutcome]:
        suite, _task, state, allowed = self._session(session_id)
        tools = self._suite_tools(suite)
        return [self._run(tools, allowed, state, c) for c in calls]

    def snapshot(self, session_id: str) -> Any:
        """What checkers see of the session's state now (``Suite.snapshot``), a copy the session
        cannot change afterwards; the episode loop takes one after each user turn."""
        suite, task, state, _ = self._session(session_id)
        view = suite.snapshot(task, state)
        try:
            return copy.deepcopy(view)
        except Exception as e:
            raise TypeError(
                f"suite {suite.name!r}: the state snapshot cannot be copied ({type(e).__name__}: {e}); "
                "return a plain view of the live objects from Suite.snapshot"
            ) from e

    def close_session(self, session_id: str) -> Any:
        """Close the session: return the snapshot of its final state (the checker of stateful suites
        needs it), then let the suite release the state (``Suite.close_state``)."""
        with self._lock:
            if session_id not in self._sessions:
                raise SessionError(f"no open session {session_id!r}")
            suite, task, state, _ = self._sessions.pop(session_id)
        try:
            return copy.deepcopy(suite.snapshot(task, state))
        finally:
            suite.close_state(task, state)

    def _session(self, session_id: str) -> tuple[Suite, Task, Any, set[str]]:
        with self._lock:
            if session_id not in self._sessions:
                raise SessionError(f"no open session {session_id!r}")
            return self._sessions[session_id]

    @property
    def num_sessions(self) -> int:
        return len(self._sessions)

    def _run(self, tools: dict[str, Any], allowed: set[str], state: Any, call: ToolCall) -> CallOutcome:
        tool = tools.get(call.name)
        if tool is None or call.name not in allowed:
            known = "is not available in this task" if tool is not None else "does not exist"
            msg = f"Error: the tool {call.name!r} {known}. Available tools: {', '.join(sorted(allowed))}."
            return CallOutcome(
                call.name, call.arguments, False, msg, "unavailable_tool" if tool else "unknown_tool"
            )
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
