"""Issue 14, findings 2, 4 and 5: the tool server under hostile requests, against real uvicorn on 127.0.0.1.

Each test is a reproduction from the issue (or of one of the limits it asks for) and failed on the
code before the hardening: auth failed open, hostile values gave 500s, a reset connection surfaced
as a raw httpx error, and nothing was limited.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

import httpx
import pytest

from tools_env import Suite, Task, ToolCall, ToolEnv, register_suite, tool, wire
from tools_env.client import AsyncToolClient, ToolClient, ToolServerError, split_token
from tools_env.env import SessionError
from tools_env.server import ServerLimits, main, serve

TOKEN = "hardening-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@register_suite("_hardening")
class _HardeningSuite(Suite):
    """Tools that show what the server did: a per-session counter, a long output, a sleep, an echo."""

    @tool
    def count(self, state: dict) -> str:
        """Counts calls in this session."""
        state["n"] = state.get("n", 0) + 1
        return str(state["n"])

    @tool
    def big(self, state: dict, n: int) -> str:
        """Returns n characters."""
        return "x" * n

    @tool
    def slow(self, state: dict, seconds: float) -> str:
        """Sleeps."""
        time.sleep(seconds)
        return "slept"

    @tool
    def echo(self, state: dict, value: float | str | list | dict | None = None) -> str:
        """Returns the repr of what it got."""
        return repr(value)

    def tasks(self, split: str, n: int, seed: int) -> list[Task]:
        return [Task(f"h{i}", "_hardening", "q", "a") for i in range(n)]

    def final_answer_correct(self, task: Task, final_answer: str | None, state: dict[str, Any]) -> float:
        return 0.0


TASK = Task("h0", "_hardening", "q", "a")


@pytest.fixture(scope="module")
def server():
    with serve(ToolEnv(), token=TOKEN) as running:
        yield running


@pytest.fixture
def client(server):
    with ToolClient(server.url, token=TOKEN, timeout=30) as c:
        yield c


def _post(url: str, path: str, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{url}{path}", content=body, headers={**AUTH, **(headers or {})}, timeout=30)


# ---- finding 2: auth fails closed ------------------------------------------------------------------
def test_an_empty_token_is_an_error_at_start(tmp_path):
    with pytest.raises(ValueError, match="token is empty"):
        serve(ToolEnv(), token="")
    empty = tmp_path / "token"
    empty.write_text("\n")
    with pytest.raises(SystemExit, match="token is empty"):
        main(["--token-file", str(empty)])
    with pytest.raises(SystemExit, match="cannot read --token-file"):
        main(["--token-file", str(tmp_path / "missing")])


def test_the_cli_needs_a_token_or_an_explicit_no_auth(monkeypatch):
    monkeypatch.delenv("STEPRL_TOOL_TOKEN", raising=False)
    with pytest.raises(SystemExit, match="no token"):
        main([])
    with pytest.raises(SystemExit, match="--no-auth contradicts --token"):
        main(["--token", "abc", "--no-auth"])


def _status_with_raw_header(url: str, authorization: bytes) -> int:
    """The status of GET /suites with this exact Authorization header (httpx refuses trailing spaces)."""
    with _raw(url) as sock:
        sock.sendall(b"GET /suites HTTP/1.1\r\nHost: x\r\nAuthorization: " + authorization + b"\r\n\r\n")
        return int(sock.recv(4096).split(b" ", 2)[1])


def test_a_bearer_header_without_a_token_is_401(server):
    for header in (b"Bearer ", b"Bearer", b"bearer  ", b"Basic " + TOKEN.encode(), TOKEN.encode()):
        assert _status_with_raw_header(server.url, header) == 401, header
    assert _status_with_raw_header(server.url, b"Bearer " + TOKEN.encode()) == 200


@pytest.mark.parametrize("path", ["/docs", "/openapi.json", "/redoc", "/no-such-page"])
def test_schema_pages_are_behind_the_token(server, path):
    assert httpx.get(f"{server.url}{path}").status_code == 401
    assert httpx.get(f"{server.url}{path}", headers=AUTH).status_code in (200, 404)


def test_servers_steprl_starts_get_a_random_token():
    with serve(ToolEnv()) as a, serve(ToolEnv()) as b:
        assert a.token and b.token and a.token != b.token and len(a.token) >= 32
        assert httpx.get(f"{a.url}/suites").status_code == 401
        assert a.token not in a.url and a.token not in repr(a)
        with ToolClient(a.client_url) as c:  # the URL carries the token to workers that only take a URL
            assert "atlas" in c.list_suites()
            assert a.token not in c.base_url
        with a.client() as c:
            assert "atlas" in c.list_suites()
        with ToolClient(a.url, token=b.token) as c, pytest.raises(PermissionError):
            c.list_tools("atlas")  # b's token is not a's
    with serve(ToolEnv(), auth=False) as open_server:
        assert open_server.token is None and httpx.get(f"{open_server.url}/suites").status_code == 200


def test_token_sources_of_the_client(monkeypatch):
    monkeypatch.setenv("STEPRL_TOOL_TOKEN", "from-env")
    assert split_token("http://:t%2Fk@127.0.0.1:1/") == ("http://127.0.0.1:1", "t/k")
    assert split_token("http://127.0.0.1:1", "given") == ("http://127.0.0.1:1", "given")
    assert split_token("http://127.0.0.1:1") == ("http://127.0.0.1:1", "from-env")


def test_the_local_tool_server_keeps_its_token_across_a_restart():
    import os
    import signal

    from steprl.fault import LocalToolServer

    local = LocalToolServer(max_restarts=1)
    try:
        assert local.token and httpx.get(f"{local.url}/suites").status_code == 401
        with ToolClient(local.client_url, retries=0) as c:
            assert "atlas" in c.list_suites()
        os.kill(local.pid(), signal.SIGKILL)
        time.sleep(0.3)
        assert local.recover()
        with ToolClient(local.client_url, retries=0) as c:  # workers keep the URL they were given
            assert "atlas" in c.list_suites()
    finally:
        local.stop()


# ---- finding 4: no 500, the client recovers, the client accepts what ToolEnv accepts ---------------
def test_arguments_nested_400_deep_are_a_4xx(server, client):
    session = client.open_session(TASK)
    deep: Any = 1
    for _ in range(400):
        deep = {"a": deep}
    body = json.dumps([{"name": "echo", "arguments": {"value": deep}}]).encode()
    reply = _post(server.url, f"/sessions/{session}/call", body)
    assert reply.status_code == 422 and "nested deeper than 64" in reply.json()["detail"]
    assert _post(server.url, "/sessions", b"[" * 100_000 + b"]" * 100_000).status_code in (400, 422)
    assert client.call(session, [ToolCall("count", {})])[0].output == "1"  # and it keeps serving


def test_lone_surrogates_and_nan_make_the_round_trip(server, client):
    session = client.open_session(TASK)
    raw = _post(server.url, f"/sessions/{session}/call", b'[{"name": "\\ud800", "arguments": {}}]')
    assert raw.status_code == 200 and wire.loads(raw.content)[0]["name"] == "\ud800"
    calls = [
        ToolCall("\udfff", {"q": "\ud800"}),
        ToolCall("echo", {"value": float("nan")}),
        ToolCall("echo", {"value": [float("inf"), "\ud83d", "\x00"]}),
    ]
    env = ToolEnv()
    local = env.call(env.open_session(TASK), calls)
    remote = client.call(session, calls)
    assert [wire.dumps(o.to_dict()) for o in remote] == [wire.dumps(o.to_dict()) for o in local]
    assert remote[1].ok and remote[1].output == "nan" and remote[0].name == "\udfff"
    surrogate_task = Task("\ud800", "_hardening", "\udfff", "a", {"x": float("nan")})
    assert client.call(client.open_session(surrogate_task), [ToolCall("count", {})])[0].ok


def test_an_unknown_suite_with_a_hostile_name_is_404(client):
    for name in ("\ud800", "\x00", "a" * 5000):
        with pytest.raises(KeyError):
            client.list_tools(name)
        with pytest.raises(KeyError):
            client.open_session(Task("t", name, "q", "a"))


class _ResettingProxy:
    """A TCP proxy that forwards HTTP/1.1 requests to ``upstream`` and, when ``reset_next`` is set, drops
    the client's connection (RST) after the server answered: the answer is lost on the way back."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.reset_next, self.resets = 0, 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _read_message(sock: socket.socket, buf: bytes) -> tuple[bytes, bytes]:
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError
            rest += chunk
        return head + b"\r\n\r\n" + rest[:length], rest[length:]

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        with conn, socket.create_connection(self.upstream) as up:
            try:
                while True:
                    request, buf = self._read_message(conn, buf)
                    up.sendall(request)
                    response, _ = self._read_message(up, b"")
                    if self.reset_next and b"/call" in request.split(b"\r\n", 1)[0]:
                        self.reset_next -= 1
                        self.resets += 1
                        conn.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                        )
                        return
                    conn.sendall(response)
            except (ConnectionError, OSError):
                return

    def close(self) -> None:
        self.listener.close()


def test_a_reset_connection_is_retried_without_running_the_tool_twice(server):
    proxy = _ResettingProxy(server.url)
    try:
        with ToolClient(proxy.url, token=TOKEN, backoff_s=0.01) as c:
            session = c.open_session(TASK)
            assert c.call(session, [ToolCall("count", {})])[0].output == "1"
            proxy.reset_next = 1  # the server runs the call, its answer is lost, the pooled connection reset
            assert c.call(session, [ToolCall("count", {})])[0].output == "2"  # retried, replayed: not 3
            assert proxy.resets == 1
            assert c.call(session, [ToolCall("count", {})])[0].output == "3"
            proxy.reset_next = 10  # more resets than retries: a clear ToolServerError, not httpx.ReadError
            with pytest.raises(ToolServerError, match="cannot reach the tool server"):
                c.call(session, [ToolCall("count", {})])
    finally:
        proxy.close()


def test_the_async_client_recovers_from_a_reset_connection(server):
    import asyncio

    proxy = _ResettingProxy(server.url)

    async def run() -> list[str]:
        async with AsyncToolClient(proxy.url, token=TOKEN, backoff_s=0.01) as c:
            session = await c.open_session(TASK)
            first = (await c.call(session, [ToolCall("count", {})]))[0].output
            proxy.reset_next = 1
            second = (await c.call(session, [ToolCall("count", {})]))[0].output
            return [first, second]

    try:
        assert asyncio.run(run()) == ["1", "2"]
    finally:
        proxy.close()


# ---- finding 5: limits -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def limited():
    limits = ServerLimits(max_body_bytes=64 * 1024, max_sessions=3, session_idle_s=1.0, max_calls_per_request=4,
                          max_output_chars=100, request_timeout_s=1.0, header_timeout_s=0.6,
                          max_header_bytes=8 * 1024, keep_alive_s=5)  # fmt: skip
    with serve(ToolEnv(), token=TOKEN, limits=limits) as running:
        yield running


def test_large_bodies_are_413(server, limited):
    big = json.dumps([{"name": "echo", "arguments": {"value": "x" * 100_000}}]).encode()
    reply = _post(limited.url, "/sessions/x/call", big)
    assert reply.status_code == 413 and "larger than 65536 bytes" in reply.json()["detail"]

    def chunked():  # no Content-Length: counted while it arrives
        for _ in range(10):
            yield b"x" * 10_000

    assert httpx.post(f"{limited.url}/sessions", content=chunked(), headers=AUTH).status_code == 413
    huge = b"[" + b" " * (5 * 2**20) + b"]"  # 5 MiB against the default limit of 4 MiB
    assert _post(server.url, "/sessions", huge).status_code == 413


def test_open_sessions_are_capped_and_idle_ones_expire(limited):
    with ToolClient(limited.url, token=TOKEN) as c:
        opened = [c.open_session(TASK) for _ in range(3)]
        with pytest.raises(ToolServerError, match="HTTP 429.*the limit is 3"):
            c.open_session(TASK)
        c.call(opened[0], [ToolCall("count", {})])
        time.sleep(1.3)
        c.call(opened[0], [ToolCall("count", {})])  # used just now: it stays
        fresh = c.open_session(TASK)  # the idle ones expired when this one was opened
        with pytest.raises(SessionError):
            c.call(opened[1], [ToolCall("count", {})])
        assert c.call(opened[0], [ToolCall("count", {})])[0].output == "3"
        for s in (opened[0], fresh):
            c.close_session(s)


def test_calls_per_request_output_size_and_the_request_deadline(limited):
    with ToolClient(limited.url, token=TOKEN) as c:
        session = c.open_session(TASK)
        with pytest.raises(ToolServerError, match="HTTP 413: 5 calls in one request; at most 4"):
            c.call(session, [ToolCall("count", {})] * 5)
        (out,) = c.call(session, [ToolCall("big", {"n": 1000})])
        assert out.output == "x" * 100 + " ...[truncated 900 chars]"
        slow, after = c.call(session, [ToolCall("slow", {"seconds": 1.2}), ToolCall("count", {})])
        assert slow.ok and not after.ok and after.error == "deadline" and "not run" in after.output
        c.close_session(session)


def _raw(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.settimeout(5)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except TimeoutError:
        pass
    return data


def test_slow_and_large_headers_are_cut(limited):
    start = time.monotonic()
    with _raw(limited.url) as silent:  # connects and says nothing
        assert _read_all(silent) == b"" and time.monotonic() - start < 3
    with _raw(limited.url) as slow:  # starts a request and never finishes its headers
        slow.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        time.sleep(0.3)
        slow.sendall(b"X-Slow: 1\r\n")
        assert _read_all(slow).startswith(b"HTTP/1.1 408")
    with _raw(limited.url) as large:
        large.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
        assert _read_all(large).split(b"\r\n", 1)[0].split(b" ")[1] in (b"431", b"400")
    with _raw(limited.url) as keep_alive:  # a normal request on the same kind of connection still works
        keep_alive.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert keep_alive.recv(4096).startswith(b"HTTP/1.1 200")


def test_limits_are_validated():
    with pytest.raises(ValueError, match="max_sessions must be a positive number"):
        ServerLimits(max_sessions=0)
    with pytest.raises(SystemExit, match="session_idle_s must be finite"):
        main(["--no-auth", "--session-idle-s", "inf"])
