"""The FastAPI tool server and its clients, against a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import random
import socket
import threading
import time
from typing import Any

import httpx
import pytest

from tools_env import Suite, Task, ToolCall, ToolEnv, get_parser, get_suite, register_suite, tool
from tools_env.client import AsyncToolClient, ToolClient, ToolServerError
from tools_env.env import SessionError
from tools_env.server import serve

TOKEN = "test-token-123"


@register_suite("_server_test")
class _ServerTestSuite(Suite):
    """Tools that misbehave on purpose."""

    @tool
    def crash(self, state: dict, x: int) -> str:
        """Raises a plain exception, as a buggy tool would."""
        raise RuntimeError(f"tool crashed on {x}")

    @tool
    def slow(self, state: dict, seconds: float) -> str:
        """Sleeps (a blocking tool)."""
        time.sleep(seconds)
        return "slept"

    @tool
    def count(self, state: dict) -> str:
        """Counts calls in this session."""
        state["n"] = state.get("n", 0) + 1
        return str(state["n"])

    def tasks(self, split: str, n: int, seed: int) -> list[Task]:
        return [Task(f"t{i}", "_server_test", "q", "a") for i in range(n)]

    def final_answer_correct(self, task: Task, final_answer: str | None, state: dict[str, Any]) -> float:
        return 0.0


@pytest.fixture(scope="module")
def server():
    with serve(ToolEnv(), token=TOKEN) as running:
        yield running


@pytest.fixture
def client(server):
    with ToolClient(server.url, token=TOKEN, timeout=30) as c:
        yield c


def _task(suite: str) -> Task:
    return get_suite(suite).tasks("test", 1, seed=3)[0]


def test_binds_loopback_and_reports_health(server, client):
    assert server.url.startswith("http://127.0.0.1:")
    assert client.health()["status"] == "ok"
    assert {"atlas", "math", "retrieval", "bank"} <= set(client.list_suites())


def test_tool_schemas_match_the_env(client):
    assert client.list_tools("atlas") == ToolEnv().list_tools("atlas")


def test_atlas_episode_through_the_client(client):
    """The demonstration of a test task replayed over HTTP gives the same observations and solves it."""
    suite, task, parse = get_suite("atlas"), _task("atlas"), get_parser("hermes")
    messages = suite.demonstration(task, random.Random(0), suboptimal_share=0.0)
    session = client.open_session(task)
    steps, final = [], None
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        turn = parse(msg["content"])
        if turn.is_final:
            final = turn.final_answer
            break
        outcomes = client.call(session, turn.calls)
        assert [o.output for o in outcomes] == [messages[i + 1]["content"]]
        steps.append({"calls": [o.to_dict() for o in outcomes]})
    state = client.close_session(session)
    assert suite.final_answer_correct(task, final, state) == 1.0
    assert all(c == 1.0 for c in suite.contributions(task, steps, final))


def test_stateful_session_returns_final_state(client):
    task = _task("bank")
    session = client.open_session(task)
    source, target = sorted(task.meta["initial"])[:2]
    (outcome,) = client.call(
        session, [ToolCall("transfer", {"source": source, "target": target, "amount": 1})]
    )
    assert outcome.ok
    state = client.close_session(session)
    assert state["balances"][source] == task.meta["initial"][source] - 1
    assert state["log"] == [["transfer", source, target, 1]]


def test_sandboxed_python_tool_over_http(client):
    session = client.open_session(_task("math"))
    good, bad = client.call(
        session, [ToolCall("python", {"code": "print(17 * 23)"}), ToolCall("python", {"code": "1/0"})]
    )
    assert good.ok and good.output == "391"
    assert not bad.ok and "ZeroDivisionError" in bad.output
    client.close_session(session)


def test_tool_failure_is_an_observation_not_a_500(client):
    session = client.open_session(Task("t", "_server_test", "q", "a"))
    crash, unknown, invalid = client.call(
        session, [ToolCall("crash", {"x": 7}), ToolCall("nope", {}), ToolCall("crash", {"x": "seven"})]
    )
    assert not crash.ok and crash.error == "RuntimeError" and "tool crashed on 7" in crash.output
    assert not unknown.ok and unknown.error == "unknown_tool"
    assert not invalid.ok and invalid.error == "invalid_arguments"
    client.close_session(session)


def test_sessions_are_isolated(client):
    a, b = (client.open_session(Task("t", "_server_test", "q", "a")) for _ in range(2))
    assert [client.call(a, [ToolCall("count", {})])[0].output for _ in range(3)] == ["1", "2", "3"]
    assert client.call(b, [ToolCall("count", {})])[0].output == "1"
    assert client.close_session(a) == {"n": 3}
    client.close_session(b)


def test_unknown_session_and_suite_are_404(server, client):
    with pytest.raises(SessionError):
        client.call("no-such-session", [ToolCall("lookup", {})])
    with pytest.raises(SessionError):
        client.close_session("no-such-session")
    with pytest.raises(KeyError, match="unknown task suite"):
        client.list_tools("no_such_suite")
    with pytest.raises(KeyError):
        client.open_session(Task("t", "no_such_suite", "q", "a"))
    raw = httpx.post(
        f"{server.url}/sessions/nope/call", json=[], headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert raw.status_code == 404


def test_token_is_required(server):
    assert httpx.get(f"{server.url}/health").status_code == 200  # health is open
    assert httpx.get(f"{server.url}/suites").status_code == 401
    assert httpx.get(f"{server.url}/suites", headers={"Authorization": "Bearer wrong"}).status_code == 401
    with ToolClient(server.url) as anonymous, pytest.raises(PermissionError, match="rejected the token"):
        anonymous.list_tools("atlas")
    with ToolClient(server.url, token="wrong") as wrong, pytest.raises(PermissionError):
        wrong.open_session(_task("atlas"))


def test_malformed_bodies_are_422(server):
    headers = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.post(f"{server.url}/sessions", json={"suite": "atlas"}, headers=headers).status_code == 422
    session = httpx.post(f"{server.url}/sessions", json=_task("atlas").to_dict(), headers=headers).json()[
        "session_id"
    ]
    assert (
        httpx.post(f"{server.url}/sessions/{session}/call", json={"name": "x"}, headers=headers).status_code
        == 422
    )


def test_slow_tool_does_not_block_the_event_loop(server, client):
    session = client.open_session(Task("t", "_server_test", "q", "a"))
    worker = threading.Thread(target=client.call, args=(session, [ToolCall("slow", {"seconds": 1.5})]))
    worker.start()
    time.sleep(0.2)
    start = time.monotonic()
    assert client.health()["status"] == "ok"
    assert time.monotonic() - start < 0.5
    worker.join()
    client.close_session(session)


def test_async_client(server):
    async def episode() -> tuple[str, dict]:
        async with AsyncToolClient(server.url, token=TOKEN) as c:
            task = _task("atlas")
            session = await c.open_session(task)
            (outcome,) = await c.call(
                session, [ToolCall("lookup", {"country": task.meta["countries"][0], "field": "area"})]
            )
            return outcome.output, await c.close_session(session)

    output, state = asyncio.run(episode())
    assert output.isdigit() and state == {}


def test_client_retries_until_the_server_is_up():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started: list = []
    starter = threading.Timer(0.6, lambda: started.append(serve(ToolEnv(), port=port)))
    starter.start()
    try:
        with ToolClient(f"http://127.0.0.1:{port}", retries=6, backoff_s=0.1) as c:
            assert c.health()["status"] == "ok"
    finally:
        starter.join()
        for running in started:
            running.stop()


def test_client_gives_a_clear_error_when_nobody_listens():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with (
        ToolClient(f"http://127.0.0.1:{port}", retries=1, backoff_s=0.01) as c,
        pytest.raises(ToolServerError, match="cannot reach the tool server"),
    ):
        c.health()


def test_cli_server_in_a_subprocess():
    """`python -m tools_env.server` with a token passed through the environment (not the command line)."""
    with serve(token=TOKEN, background="process") as running:
        assert running.url.startswith("http://127.0.0.1:")
        assert httpx.get(f"{running.url}/suites").status_code == 401
        with ToolClient(running.url, token=TOKEN) as c:
            session = c.open_session(_task("atlas"))
            assert c.call(session, [ToolCall("weather", {"city": "Velport"})])[0].ok
            assert c.close_session(session) == {}
