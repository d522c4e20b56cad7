"""HTTP front of a ``ToolEnv``: rollout workers on other machines use tools through ``ToolClient``.

Endpoints (every path but /health, including /docs, /openapi.json and /redoc, needs
``Authorization: Bearer <token>`` when the server has a token):

    GET    /health                  {"status": "ok", "sessions": n}
    GET    /suites                  ["atlas", ...]
    GET    /suites/{name}/tools     OpenAI function schemas of the suite's tools
    POST   /sessions                body: a Task dict -> {"session_id": ...}
    POST   /sessions/{id}/call      body: [{"name": ..., "arguments": {...}}] -> [CallOutcome dict, ...]
    GET    /sessions/{id}/snapshot  -> {"state": Suite.snapshot of the state now} (after a user turn)
    DELETE /sessions/{id}           -> {"state": final session state}

Tools are synchronous (the sandbox waits on a subprocess), so every call runs in a worker thread and the
event loop stays free. A failing tool is an error observation (``ok: false``), never a 500; bad input is
a 4xx with a one-line ``detail``; the limits (``ServerLimits``) answer 413 (too large), 429 (too many
sessions) and 408 (headers or body too slow). Wire format: JSON as Python writes it, ASCII only (lone
surrogates travel as ``\\udXXX`` escapes) with ``NaN``/``Infinity`` allowed, so whatever the in-process
``ToolEnv`` accepts makes the round trip unchanged (see docs/security.md).

A POST/DELETE carrying an ``Idempotency-Key`` header is answered once: a retry with the same key (after a
connection reset) gets the first answer again and runs no tool twice.

    python -m tools_env.server --port 8000 --token-file ~/.steprl_token     # or STEPRL_TOOL_TOKEN=...
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hmac
import json
import math
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import anyio
import uvicorn
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


# ---- the HTTP protocol: header deadline and size --------------------------------------------------
def _base_protocol() -> type[asyncio.Protocol]:
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        return HttpToolsProtocol
    except ImportError:  # pragma: no cover  (httptools is optional in uvicorn)
        from uvicorn.protocols.http.h11_impl import H11Protocol

        return H11Protocol


def guarded_protocol(limits: ServerLimits) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol with a deadline and a size limit on request headers (408 / 431).

    uvicorn bounds idle keep-alive connections but not a client that sends its headers slowly; this
    arms a timer on a new connection (and at the first byte of each later request) that fires unless
    the headers are complete by then.
    """
    base: Any = _base_protocol()

    class Guarded(base):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._header_bytes, self._header_timer = 0, None
            self._arm()

        def _in_request(self) -> bool:
            return self.cycle is not None and not self.cycle.response_complete

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(limits.header_timeout_s, self._header_deadline)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _reject(self, status: bytes) -> None:
            self._disarm()
            if not self.transport.is_closing():
                self.transport.write(
                    b"HTTP/1.1 " + status + b"\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
                )
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            waiting = not self._in_request()
            if waiting:
                self._arm()
                end = data.find(b"\r\n\r\n")
                self._header_bytes += len(data) if end < 0 else end
                if self._header_bytes > limits.max_header_bytes:
                    self._reject(b"431 Request Header Fields Too Large")
                    return
            super().data_received(data)
            if waiting and self._in_request():
                self._disarm()
                self._header_bytes = 0

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._header_bytes = 0
            if not self._in_request():
                self._disarm()  # idle now: the keep-alive timeout takes over until the next byte

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _header_deadline(self) -> None:
            self._header_timer = None
            if self._in_request() or self.transport.is_closing():
                return
            if self._header_bytes:
                self._reject(b"408 Request Timeout")
            else:
                self.transport.close()  # nothing was asked: close quietly

    return Guarded


def uvicorn_config(app: FastAPI, limits: ServerLimits) -> uvicorn.Config:
    return uvicorn.Config(app, log_level="warning", lifespan="off", http=guarded_protocol(limits),
                          timeout_keep_alive=max(1, round(limits.keep_alive_s)),
                          h11_max_incomplete_event_size=limits.max_header_bytes)  # fmt: skip


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def with_token(url: str, token: str | None) -> str:
    """``url`` carrying ``token`` as its userinfo (``http://:TOKEN@host:port``), which ``ToolClient`` reads.

    How a server steprl starts for itself hands its token to rollout workers that only take a URL.
    """
    if token is None:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://:{quote(token, safe='')}@{rest}"


class RunningServer:
    """A server started by ``serve``; ``url`` is where it listens, ``token`` its bearer token (or None),
    ``client_url`` the URL with the token in it for ``ToolClient``; ``stop()`` ends it."""

    def __init__(self, url: str, stop: Callable[[], None], token: str | None = None) -> None:
        self.url, self.token = url, token
        self.client_url = with_token(url, token)
        self._stop = stop

    def client(self, **kwargs: Any) -> Any:
        from tools_env.client import ToolClient

        return ToolClient(self.url, token=self.token, **kwargs)

    def stop(self) -> None:
        self._stop()

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"RunningServer({self.url!r})"

    def __str__(self) -> str:
        return self.url


def _wait_healthy(url: str, timeout: float) -> None:
    import httpx

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"tool server at {url} did not become healthy within {timeout:g}s")


def serve(env: ToolEnv | None = None, host: str = "127.0.0.1", port: int = 0, token: str | None = None,
          background: str = "thread", threads: int = DEFAULT_THREADS, timeout: float = 30.0,
          limits: ServerLimits | None = None, auth: bool = True) -> RunningServer:  # fmt: skip
    """Start a server on ``host`` (loopback by default) and ``port`` (0: a free one) and return it.

    Auth is on by default: without a ``token`` a random one is made (``RunningServer.token``, and
    ``client_url`` carries it); an empty token is an error; ``auth=False`` serves without one.
    ``background="thread"`` serves ``env`` from this process; ``"process"`` starts
    ``python -m tools_env.server`` (its own ``ToolEnv``, its own GIL) and requires ``env`` to be None.
    """
    if not auth and token is not None:
        raise ValueError("serve(auth=False) takes no token")
    token = (check_token(token) if token is not None else random_token()) if auth else None
    limits = limits or ServerLimits()
    if background == "process":
        if env is not None:
            raise ValueError("background='process' builds its own ToolEnv; pass env=None")
        return _serve_process(host, port, token, threads, timeout, limits)
    if background != "thread":
        raise ValueError(f"background must be 'thread' or 'process', got {background!r}")
    sock = _bind(host, port)
    url = _url(host, sock.getsockname()[1])
    server = uvicorn.Server(uvicorn_config(create_app(env, token, threads, limits), limits))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="tool-server")
    thread.start()

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()

    return _running(url, stop, timeout, token)


def _running(url: str, stop: Callable[[], None], timeout: float, token: str | None) -> RunningServer:
    """The handle of a server once it answers /health; stopped again if it never does."""
    try:
        _wait_healthy(url, timeout)
    except BaseException:
        stop()
        raise
    return RunningServer(url, stop, token)


def _limit_flags(limits: ServerLimits) -> list[str]:
    out = []
    for f in dataclasses.fields(limits):
        out += [f"--{f.name.replace('_', '-')}", str(getattr(limits, f.name))]
    return out


def _serve_process(host: str, port: int, token: str | None, threads: int, timeout: float,
                   limits: ServerLimits) -> RunningServer:  # fmt: skip
    cmd = [sys.executable, "-m", "tools_env.server", "--host", host, "--port", str(port),
           "--threads", str(threads), *_limit_flags(limits)]  # fmt: skip
    env = dict(os.environ)
    env.pop(TOKEN_ENV, None)
    if token is not None:
        env[TOKEN_ENV] = token  # not on the command line, where `ps` would show it
    else:
        cmd.append("--no-auth")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("listening on "):
        proc.kill()
        raise RuntimeError(f"tool server did not start (exit code {proc.wait()})")
    url = line.split("listening on ", 1)[1].strip()

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()

    return _running(url, stop, timeout, token)


def _read_token(args: argparse.Namespace) -> str | None:
    """The token the command line asks for; SystemExit with one line when it is missing or empty."""
    sources = [s for s in (args.token is not None, args.token_file is not None) if s]
    if len(sources) > 1:
        raise SystemExit("tool server: give --token or --token-file, not both")
    if args.token_file is not None:
        path = os.path.expanduser(args.token_file)
        try:
            with open(path) as f:
                token = f.read().strip()
        except OSError as e:
            raise SystemExit(f"tool server: cannot read --token-file {path}: {e.strerror}") from None
        where = f"--token-file {path}"
    elif args.token is not None:
        token, where = args.token.strip(), "--token"
    elif os.environ.get(TOKEN_ENV) is not None:
        token, where = os.environ[TOKEN_ENV].strip(), TOKEN_ENV
    elif args.no_auth:
        return None
    else:
        raise SystemExit(f"tool server: no token; give --token-file, --token or {TOKEN_ENV}, or --no-auth")
    if args.no_auth:
        raise SystemExit(f"tool server: --no-auth contradicts {where}")
    try:
        return check_token(token)
    except ValueError as e:
        raise SystemExit(f"tool server: {where}: {e}") from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools_env.server", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on stdout)")
    parser.add_argument("--token", default=None, help="bearer token (visible in `ps`; prefer --token-file)")
    parser.add_argument("--token-file", default=None, help="file holding the bearer token")
    parser.add_argument(
        "--no-auth", action="store_true", help="serve without a token (anyone who can connect)"
    )
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="concurrent tool calls")
    parser.add_argument("--suites-yaml", action="append", default=[], help="register suites from a YAML file")
    for f in dataclasses.fields(ServerLimits):
        kind = int if isinstance(f.default, int) else float
        parser.add_argument(
            f"--{f.name.replace('_', '-')}", type=kind, default=f.default, help=f"(default {f.default})"
        )
    args = parser.parse_args(argv)
    token = _read_token(args)
    try:
        limits = ServerLimits(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ServerLimits)})
    except ValueError as e:
        raise SystemExit(f"tool server: {e}") from None
    if args.suites_yaml:
        from tools_env.plugins import load_suite_from_yaml

        for path in args.suites_yaml:
            load_suite_from_yaml(path)
    sock = _bind(args.host, args.port)
    print(f"listening on {_url(args.host, sock.getsockname()[1])}", flush=True)
    uvicorn.Server(uvicorn_config(create_app(ToolEnv(), token, args.threads, limits), limits)).run(
        sockets=[sock]
    )


if __name__ == "__main__":
    main()
