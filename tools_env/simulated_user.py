"""A simulated user behind an OpenAI-compatible chat endpoint, for ``Suite.user_turn``.

The simulator plays the user: it gets instructions (the user's goal, formatted with the task) as its
system message and the conversation with the roles swapped (the agent's answers are its "user"
messages, the user's earlier messages its own "assistant" messages; tool traffic is left out: a user
does not see it). Its reply is the next user message; a reply containing ``stop`` (default ``DONE``)
or an empty one ends the conversation. Transient failures are retried; a simulator that stays
unreachable raises ``SimulatedUserError`` naming the endpoint (a conversation is never silently cut).
"""

from __future__ import annotations

import os
import time
from typing import Any

import httpx

from tools_env.suite import Task

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class SimulatedUserError(RuntimeError):
    pass


class OpenAIUser:
    """``user(task, messages) -> str | None``: the next user message from a chat-completions model."""

    def __init__(
        self,
        base_url: str,
        model: str,
        instructions: str = "You are the user. Your request: {question}. Say DONE when it is done.",
        stop: str = "DONE",
        api_key_env: str = "OPENAI_API_KEY",
        temperature: float = 0.0,
        max_tokens: int = 128,
        timeout: float = 60.0,
        retries: int = 3,
    ) -> None:
        self.base_url, self.model = base_url.rstrip("/"), model
        self.instructions, self.stop = instructions, stop
        self.temperature, self.max_tokens = temperature, max_tokens
        self.retries = retries
        key = os.environ.get(api_key_env, "")
        self._http = httpx.Client(timeout=timeout, headers={"Authorization": f"Bearer {key}"} if key else {})

    def request(self, task: Task, messages: list[dict[str, Any]]) -> dict[str, Any]:
        """The chat-completions body for the simulator (roles swapped, tool messages left out)."""
        system = self.instructions.format(question=task.question, answer=task.answer, meta=task.meta)
        swapped = [
            {"role": "assistant" if m["role"] == "user" else "user", "content": m["content"]}
            for m in messages
            if m["role"] in ("user", "assistant")
        ]
        return {
            "model": self.model,
            "messages": [{"role": "system", "content": system}, *swapped],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }

    def __call__(self, task: Task, messages: list[dict[str, Any]]) -> str | None:
        body = self.request(task, messages)
        url = f"{self.base_url}/chat/completions"
        for attempt in range(self.retries + 1):
            try:
                reply = self._http.post(url, json=body)
            except httpx.TransportError as e:
                problem = f"{type(e).__name__}: {e}"
            else:
                if reply.status_code == 200:
                    try:
                        text = reply.json()["choices"][0]["message"]["content"] or ""
                    except (ValueError, KeyError, IndexError, TypeError) as e:
                        raise SimulatedUserError(f"simulated user at {url}: malformed reply ({e})") from e
                    text = text.strip()
                    return None if not text or self.stop in text else text
                problem = f"HTTP {reply.status_code}: {reply.text[:200]}"
                if reply.status_code not in RETRY_STATUS:
                    break
            if attempt < self.retries:
                time.sleep(0.2 * 2**attempt)
        raise SimulatedUserError(f"simulated user at {url} failed: {problem}")

    def close(self) -> None:
        self._http.close()
