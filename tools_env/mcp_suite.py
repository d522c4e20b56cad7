"""Mount the tools of an MCP server (stdio transport) as the tools of a suite.

The ``mcp`` package is asynchronous, our tools are synchronous callables, so each server gets one
``MCPConnection``: a private event-loop thread that owns the ``stdio_client`` and ``ClientSession``
contexts for the connection's lifetime, and a blocking ``call()`` that submits coroutines to it. One
connection per (command, args, cwd) is shared by every suite instance and session of the process: the
server's own state is therefore shared between sessions (fine for stateless tools; a stateful server has
to key its state by an argument the agent passes).

    class MyTools(MCPSuite):
        server_command = "python"
        server_args = ("my_mcp_server.py",)
        def tasks(self, split, n, seed): ...
        def final_answer_correct(self, task, final_answer, state): ...

or, from YAML, an ``mcp:`` block in ``tools_env.plugins.load_suite_from_yaml``. Works with mcp 1.x and 2.x.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from functools import partial
from typing import Any

from tools_env.suite import Suite
from tools_env.tools import Tool, ToolError


def _field(obj: Any, *names: str, default: Any = None) -> Any:
    """mcp 1.x uses camelCase attributes (inputSchema, isError), 2.x snake_case."""
    for name in names:
        if hasattr(obj, name):
            return getattr(obj, name)
    return default


def _content_text(result: Any) -> str:
    parts = []
    for item in _field(result, "content", default=[]) or []:
        kind = getattr(item, "type", "")
        if kind == "text":
            parts.append(item.text)
        elif kind == "resource" and hasattr(getattr(item, "resource", None), "text"):
            parts.append(item.resource.text)
        else:
            parts.append(f"[{kind or type(item).__name__} content]")
    if not parts:
        structured = _field(result, "structured_content", "structuredContent")
        if structured is not None:
            parts.append(str(structured))
    return "\n".join(parts)


class MCPConnection:
    """A running MCP server over stdio with a blocking interface."""

    def __init__(self, command: str, args: Sequence[str] = (), env: dict[str, str] | None = None,
                 cwd: str | None = None, timeout_s: float = 30.0) -> None:  # fmt: skip
        self.command, self.args, self.timeout_s = command, list(args), timeout_s
        self._env, self._cwd = env, cwd
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name=f"mcp:{command}")
        self._thread.start()
        self._ready: Future[list[Any]] = Future()
        self._closing: asyncio.Event | None = None
        self._session: Any = None
        self._main = asyncio.run_coroutine_threadsafe(self._run(), self._loop)
        try:
            self.tools = self._ready.result(timeout=timeout_s)
        except BaseException:
            self.close()
            raise

    async def _run(self) -> None:
        from mcp import ClientSession, StdioServerParameters
        from mcp.client.stdio import stdio_client

        self._closing = asyncio.Event()
        params = StdioServerParameters(command=self.command, args=self.args, env=self._env, cwd=self._cwd)
        try:
            async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
                await session.initialize()
                listed = await session.list_tools()
                self._session = session
                self._ready.set_result(list(listed.tools))
                await self._closing.wait()
        except BaseException as e:
            if not self._ready.done():
                self._ready.set_exception(
                    RuntimeError(f"MCP server {self.command} {self.args} failed: {e!r}")
                )
            raise

    def call(self, name: str, arguments: dict[str, Any]) -> tuple[bool, str]:
        """Call a tool; returns (is_error, text). Protocol failures raise ``ToolError``."""
        if self._session is None:
            raise ToolError("the MCP connection is closed")
        coro = self._session.call_tool(name, arguments)
        try:
            result = asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=self.timeout_s)
        except TimeoutError as e:
            raise ToolError(f"MCP tool {name} did not answer within {self.timeout_s:g}s") from e
        except Exception as e:  # an MCP protocol error (unknown tool, invalid params ...)
            raise ToolError(f"MCP tool {name} failed: {e}") from e
        return bool(_field(result, "is_error", "isError", default=False)), _content_text(result)

    def close(self) -> None:
        if self._closing is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._closing.set)
        with contextlib.suppress(BaseException):  # a failed start already reported itself
            self._main.result(timeout=10)
        self._session = None
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            self._loop.close()


def mcp_tools(conn: MCPConnection) -> list[Tool]:
    """The server's tools as ``Tool`` objects, validated against their MCP input schemas."""
    tools = []
    for spec in conn.tools:
        schema = _field(spec, "input_schema", "inputSchema", default={}) or {}
        fn = partial(_call_tool, conn, spec.name)
        tools.append(Tool(name=spec.name, fn=fn, description=spec.description or spec.name,
                          parameters=dict(schema.get("properties", {})), required=list(schema.get("required", [])),
                          input_schema={"type": "object", **schema}))  # fmt: skip
    return sorted(tools, key=lambda t: t.name)


def _call_tool(conn: MCPConnection, name: str, state: dict[str, Any], **arguments: Any) -> str:
    is_error, text = conn.call(name, arguments)
    if is_error:
        raise ToolError(text or f"MCP tool {name} reported an error")
    return text


_CONNECTIONS: dict[tuple[Any, ...], MCPConnection] = {}
_CONNECTIONS_LOCK = threading.Lock()


def get_connection(command: str, args: Sequence[str] = (), env: dict[str, str] | None = None,
                   cwd: str | None = None, timeout_s: float = 30.0) -> MCPConnection:  # fmt: skip
    """The process-wide connection to this server, started on first use."""
    key = (command, tuple(args), cwd, tuple(sorted((env or {}).items())))
    with _CONNECTIONS_LOCK:
        if key not in _CONNECTIONS:
            _CONNECTIONS[key] = MCPConnection(command, args, env, cwd, timeout_s)
        return _CONNECTIONS[key]


@atexit.register
def close_all() -> None:
    """Stop every MCP server this process started."""
    with _CONNECTIONS_LOCK:
        conns = list(_CONNECTIONS.values())
        _CONNECTIONS.clear()
    for conn in conns:
        conn.close()


class MCPSuite(Suite):
    """A suite whose tools are an MCP server's; subclasses add tasks and the checker."""

    server_command: str = ""
    server_args: tuple[str, ...] = ()
    server_env: dict[str, str] | None = None
    server_cwd: str | None = None
    timeout_s: float = 30.0

    def connection(self) -> MCPConnection:
        if not self.server_command:
            raise TypeError(f"suite {self.name!r} sets no server_command")
        return get_connection(
            self.server_command, self.server_args, self.server_env, self.server_cwd, self.timeout_s
        )

    def tools(self) -> list[Tool]:
        return sorted(super().tools() + mcp_tools(self.connection()), key=lambda t: t.name)
