"""Clients of the tool server with exactly ``ToolEnv``'s methods, so a rollout worker can hold either.

``ToolClient`` is synchronous (thread-safe; one connection pool), ``AsyncToolClient`` the same for asyncio
rollout loops. Errors keep ``ToolEnv``'s types: an unknown session raises ``SessionError``, an unknown
suite ``KeyError``; a rejected token raises ``PermissionError``; anything else ``ToolServerError``.
Only connection failures are retried (the request never reached the server, so a retry cannot run a
tool twice).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from tools_env.env import SessionError
from tools_env.parsers import ToolCall
from tools_env.suite import CallOutcome, Task

_RETRYABLE = (httpx.ConnectError, httpx.ConnectTimeout)


class ToolServerError(RuntimeError):
    """The tool server answered with an unexpected error, or could not be reached."""


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail", response.text)
    except (ValueError, AttributeError):
        detail = response.text
    return str(detail)


def _check(response: httpx.Response, what: str, not_found: type[Exception]) -> Any:
    if response.status_code == 200:
        return response.json()
    detail = _detail(response)
    if response.status_code == 401:
        raise PermissionError(f"tool server at {response.request.url.host} rejected the token: {detail}")
    if response.status_code == 404:
        raise not_found(detail)
    raise ToolServerError(f"{what} failed with HTTP {response.status_code}: {detail}")


def _calls_body(calls: list[ToolCall]) -> list[dict[str, Any]]:
    return [{"name": c.name, "arguments": c.arguments} for c in calls]


def _outcomes(data: list[dict[str, Any]]) -> list[CallOutcome]:
    return [CallOutcome(**d) for d in data]


class ToolClient:
    """Synchronous client: ``list_tools``, ``open_session``, ``call``, ``close_session`` as in ``ToolEnv``."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 60.0, retries: int = 3,
                 backoff_s: float = 0.2) -> None:  # fmt: skip
        self.base_url = base_url.rstrip("/")
        self.retries, self.backoff_s = retries, backoff_s
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
        self._http = httpx.Client(
            base_url=self.base_url, headers=_headers(token), timeout=timeout, limits=limits
        )

    def _request(
        self, method: str, path: str, what: str, not_found: type[Exception] = KeyError, **kwargs: Any
    ) -> Any:
        for attempt in range(self.retries + 1):
            try:
                return _check(self._http.request(method, path, **kwargs), what, not_found)
            except _RETRYABLE as e:
                if attempt == self.retries:
                    raise ToolServerError(f"cannot reach the tool server at {self.base_url}: {e}") from e
                time.sleep(self.backoff_s * 2**attempt)
        raise AssertionError("unreachable")

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/health", "health")

    def list_suites(self) -> list[str]:
        return self._request("GET", "/suites", "list suites")

    def list_tools(self, suite: str) -> list[dict[str, Any]]:
        return self._request("GET", f"/suites/{suite}/tools", f"list tools of suite {suite!r}")

    def open_session(self, task: Task) -> str:
        return self._request("POST", "/sessions", "open session", json=task.to_dict())["session_id"]

    def call(self, session_id: str, calls: list[ToolCall]) -> list[CallOutcome]:
        data = self._request(
            "POST", f"/sessions/{session_id}/call", "call", SessionError, json=_calls_body(calls)
        )
        return _outcomes(data)

    def snapshot(self, session_id: str) -> Any:
        return self._request("GET", f"/sessions/{session_id}/snapshot", "snapshot", SessionError)["state"]

    def close_session(self, session_id: str) -> dict[str, Any]:
        return self._request("DELETE", f"/sessions/{session_id}", "close session", SessionError)["state"]

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ToolClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncToolClient:
    """The same interface with ``async`` methods, for asyncio rollout loops.

    Each request leases a single-connection ``httpx.AsyncClient``: one shared async pool slows down
    sharply under many concurrent requests (measured on loopback with 64 concurrent requests: 355 req/s
    through one client, 1.8k req/s with one client per connection).
    """

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 60.0, retries: int = 3,
                 backoff_s: float = 0.2) -> None:  # fmt: skip
        self.base_url = base_url.rstrip("/")
        self.retries, self.backoff_s = retries, backoff_s
        self._client_kwargs = {
            "base_url": self.base_url, "headers": _headers(token), "timeout": timeout,
            "limits": httpx.Limits(max_connections=1, max_keepalive_connections=1),
        }  # fmt: skip
        self._idle: list[httpx.AsyncClient] = []
        self._all: list[httpx.AsyncClient] = []

    @asynccontextmanager
    async def _lease(self) -> AsyncIterator[httpx.AsyncClient]:
        if self._idle:
            client = self._idle.pop()
        else:
            client = httpx.AsyncClient(**self._client_kwargs)
            self._all.append(client)
        try:
            yield client
        finally:
            self._idle.append(client)

    async def _request(
        self, method: str, path: str, what: str, not_found: type[Exception] = KeyError, **kwargs: Any
    ) -> Any:
        for attempt in range(self.retries + 1):
            try:
                async with self._lease() as http:
                    response = await http.request(method, path, **kwargs)
                return _check(response, what, not_found)
            except _RETRYABLE as e:
                if attempt == self.retries:
                    raise ToolServerError(f"cannot reach the tool server at {self.base_url}: {e}") from e
                await asyncio.sleep(self.backoff_s * 2**attempt)
        raise AssertionError("unreachable")

    async def health(self) -> dict[str, Any]:
        return await self._request("GET", "/health", "health")

    async def list_tools(self, suite: str) -> list[dict[str, Any]]:
        return await self._request("GET", f"/suites/{suite}/tools", f"list tools of suite {suite!r}")

    async def open_session(self, task: Task) -> str:
        return (await self._request("POST", "/sessions", "open session", json=task.to_dict()))["session_id"]

    async def call(self, session_id: str, calls: list[ToolCall]) -> list[CallOutcome]:
        path = f"/sessions/{session_id}/call"
        return _outcomes(await self._request("POST", path, "call", SessionError, json=_calls_body(calls)))

    async def snapshot(self, session_id: str) -> Any:
        return (await self._request("GET", f"/sessions/{session_id}/snapshot", "snapshot", SessionError))[
            "state"
        ]

    async def close_session(self, session_id: str) -> dict[str, Any]:
        return (await self._request("DELETE", f"/sessions/{session_id}", "close session", SessionError))[
            "state"
        ]

    async def aclose(self) -> None:
        clients, self._all, self._idle = self._all, [], []
        for client in clients:
            await client.aclose()

    async def __aenter__(self) -> AsyncToolClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
