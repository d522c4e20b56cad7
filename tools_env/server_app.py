"""The tool server's application: limits, tokens, request parsing, sessions and the FastAPI app.

``tools_env.server`` runs it (uvicorn with a guarded HTTP protocol, a background thread or process, the
command line); the endpoints and the wire format are described there.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from tools_env.env import SessionError, ToolEnv
from tools_env.parsers import MAX_CALLS_PER_TURN, JSONProblem, ToolCall, load_json
from tools_env.suite import SUITES, CallOutcome, Task

DEFAULT_THREADS = 64
TOKEN_ENV = "STEPRL_TOOL_TOKEN"
_OPEN_PATHS = frozenset({"/health"})
_REPLAYS = 1024  # remembered answers of session opens/closes by Idempotency-Key


@dataclass(frozen=True)
class ServerLimits:
    """What one client may ask of the server; every limit answers with a clear 4xx (docs/security.md)."""

    max_body_bytes: int = 4 * 2**20  # request body; 413 above
    max_json_depth: int = 64  # nesting of a request body; 422 above (parsers stop call arguments at 32)
    max_calls_per_request: int = MAX_CALLS_PER_TURN  # 413 above
    max_sessions: int = 4096  # open sessions; 429 above (after expiring idle ones)
    session_idle_s: float = 1800.0  # a session untouched this long is closed
    max_output_chars: int = 16_000  # one call's output; longer is cut with a marker
    request_timeout_s: float = 300.0  # body read + tools; calls not started by then answer an error
    header_timeout_s: float = 10.0  # from connection (or first byte of a request) to complete headers; 408
    max_header_bytes: int = 64 * 1024  # 431 above
    keep_alive_s: float = 30.0  # an idle keep-alive connection is closed after this

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not (isinstance(value, int | float) and not isinstance(value, bool)) or not value > 0:
                raise ValueError(f"ServerLimits.{f.name} must be a positive number, got {value!r}")
            if math.isinf(value) or math.isnan(value):
                raise ValueError(f"ServerLimits.{f.name} must be finite, got {value!r}")


def check_token(token: str) -> str:
    """``token`` if it can be a bearer token (non-empty printable ASCII, no spaces), else ValueError."""
    if not isinstance(token, str) or not token:
        raise ValueError("the tool server token is empty: give a non-empty token (or run without auth)")
    if not all(33 <= ord(ch) < 127 for ch in token):
        raise ValueError("the tool server token must be printable ASCII without spaces")
    return token


def random_token() -> str:
    return secrets.token_urlsafe(32)


# ---- wire format ----------------------------------------------------------------------------------
def _fallback(value: Any) -> Any:
    """JSON for what suites keep in a session state besides JSON (sets, dataclasses, ...)."""
    try:
        encoded = jsonable_encoder(value)
    except (TypeError, ValueError, RecursionError):
        return repr(value)
    return encoded if encoded is not value else repr(value)


def dumps(value: Any) -> bytes:
    """The wire encoding (both directions): ASCII JSON, NaN/Infinity allowed, lone surrogates escaped."""
    return json.dumps(
        value, ensure_ascii=True, allow_nan=True, separators=(",", ":"), default=_fallback
    ).encode("ascii")


class WireJSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        try:
            return dumps(content)
        except (ValueError, RecursionError) as e:  # e.g. an integer too long for text: still an answer
            return dumps({"detail": f"the answer cannot be encoded as JSON: {type(e).__name__}"})


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> WireJSON:
    return WireJSON({"detail": detail}, status_code=status, headers=headers)


def _body(raw: bytes, limits: ServerLimits) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise HTTPException(400, f"the body is not UTF-8 (byte {e.start})") from None
    try:
        return load_json(text, max_depth=limits.max_json_depth)[0]
    except JSONProblem as e:
        status = 422 if "nested deeper" in str(e) else 400
        raise HTTPException(status, f"the body is not valid JSON: {e}") from None


def _task(body: Any) -> Task:
    if not isinstance(body, dict):
        raise HTTPException(422, f"not a task: the body must be a JSON object, got {type(body).__name__}")
    fields = {f.name: f for f in dataclasses.fields(Task)}
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise HTTPException(422, f"not a task: unknown field {unknown[0][:40]!r}")
    for name in ("task_id", "suite", "question", "answer"):
        if not isinstance(body.get(name), str):
            raise HTTPException(422, f"not a task: {name!r} must be a string")
    if not isinstance(body.get("meta", {}), dict):
        raise HTTPException(422, "not a task: 'meta' must be an object")
    return Task.from_dict(body)


def _calls(body: Any, limits: ServerLimits) -> list[ToolCall]:
    if not isinstance(body, list):
        raise HTTPException(422, f"the body must be a list of calls, got {type(body).__name__}")
    if len(body) > limits.max_calls_per_request:
        raise HTTPException(413, f"{len(body)} calls in one request; at most {limits.max_calls_per_request}")
    calls = []
    for i, c in enumerate(body):
        if not isinstance(c, dict) or not isinstance(c.get("name"), str):
            raise HTTPException(422, f'call {i + 1} must be an object with a string "name"')
        calls.append(ToolCall(c["name"], c.get("arguments", {})))  # null stays null, as in ToolEnv
    return calls


def _cut(outcome: CallOutcome, max_chars: int) -> dict[str, Any]:
    d = outcome.to_dict()
    if isinstance(d["output"], str) and len(d["output"]) > max_chars:
        d["output"] = d["output"][:max_chars] + f" ...[truncated {len(d['output']) - max_chars} chars]"
    return d


# ---- sessions the server opened: idle expiry, the cap, one call at a time, replayed answers --------
@dataclass
class _Session:
    last_used: float
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    last_key: str | None = None
    last_reply: list[dict[str, Any]] | None = None


class _Sessions:
    def __init__(self, env: ToolEnv, limits: ServerLimits) -> None:
        self.env, self.limits = env, limits
        self.open: dict[str, _Session] = {}
        self.replays: OrderedDict[str, Any] = OrderedDict()
        self._swept = 0.0

    def touch(self, session_id: str) -> _Session | None:
        s = self.open.get(session_id)
        if s is not None:
            s.last_used = time.monotonic()
        return s

    def sweep(self) -> None:
        """Close sessions idle for longer than ``session_idle_s`` (at most once a second)."""
        now = time.monotonic()
        if now - self._swept < 1.0:
            return
        self._swept = now
        for sid, s in list(self.open.items()):
            if now - s.last_used > self.limits.session_idle_s and not s.lock.locked():
                self.open.pop(sid, None)
                with contextlib.suppress(SessionError):
                    self.env.close_session(sid)

    def remember(self, key: str | None, reply: Any) -> None:
        if key is None:
            return
        self.replays[key] = reply
        while len(self.replays) > _REPLAYS:
            self.replays.popitem(last=False)


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    return key[:200] if key else None


# ---- the app ------------------------------------------------------------------------------------
class _Guard:
    """ASGI middleware in front of every route: bearer token (fail closed), body size and read deadline.

    The body is read here, bounded, before any route sees it; a request deadline is put in the scope.
    """

    def __init__(self, app: Any, token: str | None, limits: ServerLimits) -> None:
        self.app, self.token, self.limits = app, token, limits

    def _authorized(self, scope: dict[str, Any]) -> bool:
        if self.token is None or scope.get("path") in _OPEN_PATHS:
            return True
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, given = value.partition(b" ")
                given = given.strip()
                return (
                    scheme.lower() == b"bearer"
                    and bool(given)
                    and hmac.compare_digest(given, self.token.encode())
                )
        return False

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not self._authorized(scope):
            reply = _error(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
            await reply(scope, receive, send)
            return
        limit = self.limits.max_body_bytes
        for name, value in scope.get("headers", []):
            if name == b"content-length" and (not value.isdigit() or int(value) > limit):
                await _error(413, f"the body is larger than {limit} bytes")(scope, receive, send)
                return
        deadline = time.monotonic() + self.limits.request_timeout_s
        chunks, size, more = [], 0, True
        with anyio.move_on_after(self.limits.request_timeout_s):
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    await _error(413, f"the body is larger than {limit} bytes")(scope, receive, send)
                    return
                chunks.append(chunk)
                more = message.get("more_body", False)
        if more:
            await _error(408, f"the body did not arrive within {self.limits.request_timeout_s:g}s")(
                scope, receive, send
            )
            return
        body, replayed = b"".join(chunks), False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        scope.setdefault("state", {})["deadline"] = deadline
        await self.app(scope, replay, send)


def create_app(env: ToolEnv | None = None, token: str | None = None, threads: int = DEFAULT_THREADS,
               limits: ServerLimits | None = None) -> FastAPI:  # fmt: skip
    """A FastAPI app serving ``env`` (a fresh ``ToolEnv`` by default); no auth only if ``token`` is None."""
    if token is not None:
        check_token(token)
    limits = limits or ServerLimits()
    env = env or ToolEnv()
    app = FastAPI(title="steprl tool server", default_response_class=WireJSON, redirect_slashes=False)
    app.add_middleware(_Guard, token=token, limits=limits)
    limiter = anyio.CapacityLimiter(threads)
    sessions = _Sessions(env, limits)

    async def run(fn, *args):
        return await anyio.to_thread.run_sync(fn, *args, limiter=limiter)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> WireJSON:
        return _error(exc.status_code, str(exc.detail), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> WireJSON:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()))
        return _error(422, f"invalid request at {where}: {first.get('msg', 'invalid')}")

    @app.get("/health")
    async def health() -> Response:
        return WireJSON({"status": "ok", "sessions": env.num_sessions})

    @app.get("/suites")
    async def suites() -> Response:
        import tools_env.suites  # noqa: F401  (registers the built-in suites)

        return WireJSON(sorted(SUITES))

    @app.get("/suites/{name}/tools")
    async def tools(name: str) -> Response:
        try:
            return WireJSON(await run(env.list_tools, name))
        except KeyError as e:
            raise HTTPException(404, str(e.args[0] if e.args else e)) from e

    @app.post("/sessions")
    async def open_session(request: Request) -> Response:
        key = _idempotency_key(request)
        if key is not None and key in sessions.replays:
            return WireJSON(sessions.replays[key])
        parsed = _task(_body(await request.body(), limits))
        try:
            await run(env.suite, parsed.suite)
        except KeyError as e:
            raise HTTPException(404, str(e.args[0] if e.args else e)) from e
        sessions.sweep()
        if len(sessions.open) >= limits.max_sessions:
            raise HTTPException(429, f"{len(sessions.open)} sessions are open, the limit is {limits.max_sessions}; "
                                f"close some (idle ones close after {limits.session_idle_s:g}s)")  # fmt: skip
        try:
            session_id = await run(env.open_session, parsed)
        except Exception as e:  # the suite could not build a state for this task
            raise HTTPException(422, f"cannot open a session for this task: {type(e).__name__}: {e}") from e
        sessions.open[session_id] = _Session(time.monotonic())
        reply = {"session_id": session_id}
        sessions.remember(key, reply)
        return WireJSON(reply)

    @app.post("/sessions/{session_id}/call")
    async def call(session_id: str, request: Request) -> Response:
        batch = _calls(_body(await request.body(), limits), limits)
        key = _idempotency_key(request)
        session = sessions.touch(session_id)
        if session is None:
            raise HTTPException(404, f"no open session {session_id[:64]!r}")
        async with session.lock:  # one request of a session at a time: a retry waits for the first
            if key is not None and key == session.last_key:
                return WireJSON(session.last_reply)
            deadline = request.state.deadline

            def run_batch() -> list[dict[str, Any]]:
                out = []
                for c in batch:
                    if time.monotonic() > deadline:
                        msg = f"Error: not run: the request took longer than {limits.request_timeout_s:g}s"
                        out.append(CallOutcome(c.name, c.arguments, False, msg, "deadline").to_dict())
                        continue
                    out.extend(_cut(o, limits.max_output_chars) for o in env.call(session_id, [c]))
                return out

            try:
                reply = await run(run_batch)
            except SessionError as e:
                raise HTTPException(404, str(e.args[0])) from e
            session.last_key, session.last_reply = key, reply
            sessions.touch(session_id)
        return WireJSON(reply)

    @app.get("/sessions/{session_id}/snapshot")
    async def snapshot(session_id: str) -> Response:
        try:
            state = await run(env.snapshot, session_id)
        except SessionError as e:
            raise HTTPException(404, str(e.args[0])) from e
        return WireJSON({"state": state})

    @app.delete("/sessions/{session_id}")
    async def close_session(session_id: str, request: Request) -> Response:
        key = _idempotency_key(request)
        if key is not None and key in sessions.replays:
            return WireJSON(sessions.replays[key])
        sessions.open.pop(session_id, None)
        try:
            state = await run(env.close_session, session_id)
        except SessionError as e:
            raise HTTPException(404, str(e.args[0])) from e
        reply = {"state": state}
        sessions.remember(key, reply)
        return WireJSON(reply)

    return app
