"""HTTP front of a ``ToolEnv``: rollout workers on other machines use tools through ``ToolClient``.

Endpoints (all but /health need ``Authorization: Bearer <token>`` when a token is set):

    GET    /health                  {"status": "ok", "sessions": n}
    GET    /suites                  ["atlas", ...]
    GET    /suites/{name}/tools     OpenAI function schemas of the suite's tools
    POST   /sessions                body: a Task dict -> {"session_id": ...}
    POST   /sessions/{id}/call      body: [{"name": ..., "arguments": {...}}] -> [CallOutcome dict, ...]
    GET    /sessions/{id}/snapshot  -> {"state": Suite.snapshot of the state now} (after a user turn)
    DELETE /sessions/{id}           -> {"state": final session state}

Tools are synchronous (the sandbox waits on a subprocess), so every call runs in a worker thread and the
event loop stays free. A failing tool is an error observation (``ok: false``), never a 500.

    python -m tools_env.server --port 8000 --token-file ~/.steprl_token     # or STEPRL_TOOL_TOKEN=...
"""

from __future__ import annotations

import argparse
import hmac
import os
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import anyio
import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from pydantic import BaseModel

from tools_env.env import SessionError, ToolEnv
from tools_env.parsers import ToolCall
from tools_env.suite import SUITES, Task

DEFAULT_THREADS = 64


class CallBody(BaseModel):
    name: str
    arguments: Any = None


def _json_safe(value: Any) -> Any:
    try:
        return jsonable_encoder(value)
    except (TypeError, ValueError):
        return repr(value)


def create_app(
    env: ToolEnv | None = None, token: str | None = None, threads: int = DEFAULT_THREADS
) -> FastAPI:
    """A FastAPI app serving ``env`` (a fresh ``ToolEnv`` by default)."""
    env = env or ToolEnv()
    app = FastAPI(title="steprl tool server")
    limiter = anyio.CapacityLimiter(threads)

    async def run(fn, *args):
        return await anyio.to_thread.run_sync(fn, *args, limiter=limiter)

    def authorized(request: Request) -> None:
        if token is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    auth = [Depends(authorized)]

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "sessions": env.num_sessions}

    @app.get("/suites", dependencies=auth)
    async def suites() -> list[str]:
        import tools_env.suites  # noqa: F401  (registers the built-in suites)

        return sorted(SUITES)

    @app.get("/suites/{name}/tools", dependencies=auth)
    async def tools(name: str) -> list[dict[str, Any]]:
        try:
            return await run(env.list_tools, name)
        except KeyError as e:
            raise HTTPException(404, str(e.args[0] if e.args else e)) from e

    @app.post("/sessions", dependencies=auth)
    async def open_session(task: dict[str, Any]) -> dict[str, str]:
        try:
            parsed = Task.from_dict(task)
        except TypeError as e:
            raise HTTPException(422, f"not a task: {e}") from e
        try:
            await run(env.suite, parsed.suite)
        except KeyError as e:
            raise HTTPException(404, str(e.args[0] if e.args else e)) from e
        try:
            return {"session_id": await run(env.open_session, parsed)}
        except Exception as e:  # the suite could not build a state for this task
            raise HTTPException(422, f"cannot open a session for this task: {type(e).__name__}: {e}") from e

    @app.post("/sessions/{session_id}/call", dependencies=auth)
    async def call(session_id: str, calls: list[CallBody]) -> list[dict[str, Any]]:
        batch = [ToolCall(c.name, c.arguments if c.arguments is not None else {}) for c in calls]
        try:
            outcomes = await run(env.call, session_id, batch)
        except SessionError as e:
            raise HTTPException(404, str(e.args[0])) from e
        return [_json_safe(o.to_dict()) for o in outcomes]

    @app.get("/sessions/{session_id}/snapshot", dependencies=auth)
    async def snapshot(session_id: str) -> dict[str, Any]:
        try:
            state = await run(env.snapshot, session_id)
        except SessionError as e:
            raise HTTPException(404, str(e.args[0])) from e
        return {"state": _json_safe(state)}

    @app.delete("/sessions/{session_id}", dependencies=auth)
    async def close_session(session_id: str) -> dict[str, Any]:
        try:
            state = await run(env.close_session, session_id)
        except SessionError as e:
            raise HTTPException(404, str(e.args[0])) from e
        return {"state": _json_safe(state)}

    return app


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class RunningServer:
    """A server started by ``serve``; ``url`` is where it listens, ``stop()`` ends it."""

    def __init__(self, url: str, stop) -> None:
        self.url = url
        self._stop = stop

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
          background: str = "thread", threads: int = DEFAULT_THREADS, timeout: float = 30.0) -> RunningServer:  # fmt: skip
    """Start a server on ``host`` (loopback by default) and ``port`` (0: a free one) and return it.

    ``background="thread"`` serves ``env`` from this process; ``"process"`` starts
    ``python -m tools_env.server`` (its own ``ToolEnv``, its own GIL) and requires ``env`` to be None.
    """
    if background == "process":
        if env is not None:
            raise ValueError("background='process' builds its own ToolEnv; pass env=None")
        return _serve_process(host, port, token, threads, timeout)
    if background != "thread":
        raise ValueError(f"background must be 'thread' or 'process', got {background!r}")
    sock = _bind(host, port)
    url = _url(host, sock.getsockname()[1])
    config = uvicorn.Config(create_app(env, token, threads), log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="tool-server")
    thread.start()

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()

    return _running(url, stop, timeout)


def _running(url: str, stop, timeout: float) -> RunningServer:
    """The handle of a server once it answers /health; stopped again if it never does."""
    try:
        _wait_healthy(url, timeout)
    except BaseException:
        stop()
        raise
    return RunningServer(url, stop)


def _serve_process(host: str, port: int, token: str | None, threads: int, timeout: float) -> RunningServer:
    cmd = [
        sys.executable,
        "-m",
        "tools_env.server",
        "--host",
        host,
        "--port",
        str(port),
        "--threads",
        str(threads),
    ]
    env = dict(os.environ)
    if token is not None:
        env["STEPRL_TOOL_TOKEN"] = token  # not on the command line, where `ps` would show it
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

    return _running(url, stop, timeout)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools_env.server", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on stdout)")
    parser.add_argument("--token", default=None, help="bearer token (visible in `ps`; prefer --token-file)")
    parser.add_argument("--token-file", default=None, help="file holding the bearer token")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="concurrent tool calls")
    parser.add_argument("--suites-yaml", action="append", default=[], help="register suites from a YAML file")
    args = parser.parse_args(argv)
    token = args.token or os.environ.get("STEPRL_TOOL_TOKEN")
    if args.token_file:
        with open(os.path.expanduser(args.token_file)) as f:
            token = f.read().strip()
    if args.suites_yaml:
        from tools_env.plugins import load_suite_from_yaml

        for path in args.suites_yaml:
            load_suite_from_yaml(path)
    sock = _bind(args.host, args.port)
    print(f"listening on {_url(args.host, sock.getsockname()[1])}", flush=True)
    config = uvicorn.Config(create_app(ToolEnv(), token, args.threads), log_level="warning", lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
