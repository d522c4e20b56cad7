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
import dataclasses
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import uvicorn
from fastapi import FastAPI

from tools_env.env import ToolEnv
from tools_env.server_app import (
    DEFAULT_THREADS,
    TOKEN_ENV,
    ServerLimits,
    check_token,
    create_app,
    random_token,
)

__all__ = [
    "DEFAULT_THREADS",
    "TOKEN_ENV",
    "RunningServer",
    "ServerLimits",
    "check_token",
    "create_app",
    "main",
    "random_token",
    "serve",
]


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
