"""Arbitrary JSON (and bytes) to every endpoint of a real server on 127.0.0.1: always 2xx/4xx, and it keeps
serving. Budget: see fuzz_profiles.py (``STEPRL_FUZZ_PROFILE=long`` to run longer)."""

from __future__ import annotations

import json

import httpx
import pytest
from fuzz_profiles import FUZZ
from hypothesis import given
from hypothesis import strategies as st

from tools_env import ToolCall, ToolEnv, get_suite, wire
from tools_env.client import ToolClient
from tools_env.server import ServerLimits, serve

TOKEN = "fuzz-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and infinities included: the wire format carries them
    | st.text(max_size=12)
    | st.sampled_from(["atlas", "_fuzz", "lookup", "calculator", "\ud800", "\x00", ""])
)
_json = st.recursive(
    _scalars,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=25,
)
_call = st.fixed_dictionaries(
    {"name": st.sampled_from(["lookup", "calculator", "nope", "\udfff"]) | st.text(max_size=8)},
    optional={"arguments": _json, "extra": _json},
)
_task = st.fixed_dictionaries(
    {k: st.text(max_size=8) | _scalars for k in ("task_id", "suite", "question", "answer")},
    optional={"meta": _json, "x": _json},
)
_bodies = (
    _json.map(wire.dumps)
    | st.lists(_call, max_size=6).map(wire.dumps)
    | _task.map(wire.dumps)
    | st.binary(max_size=200)
    | st.integers(min_value=30, max_value=120).map(lambda d: ("[" * d + "]" * d).encode())
)
_segments = st.text(max_size=12) | st.sampled_from(["atlas", "", "..", "%2F", "a/b", "\ud800"])


@pytest.fixture(scope="module")
def server():
    limits = ServerLimits(max_sessions=64, max_calls_per_request=4)
    with serve(ToolEnv(), token=TOKEN, limits=limits) as running:
        yield running


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def client(server):
    with ToolClient(server.url, token=TOKEN) as c:
        yield c


@pytest.fixture(scope="module")
def session(http):
    task = get_suite("atlas").tasks("test", 1, seed=0)[0]
    return http.post("/sessions", content=wire.dumps(task.to_dict())).json()["session_id"]


def _quote(segment: str) -> str:
    from urllib.parse import quote

    return quote(segment, safe="", errors="surrogatepass")


def _answers_cleanly(response: httpx.Response) -> None:
    assert 200 <= response.status_code < 300 or 400 <= response.status_code < 500, (
        response.status_code,
        response.text[:300],
    )
    wire.loads(response.content)  # every answer, errors included, is JSON in the wire format


@FUZZ
@given(body=_bodies, target=st.sampled_from(["open", "call", "call_other", "close", "tools"]), seg=_segments)
def test_any_body_to_any_endpoint_is_2xx_or_4xx(http, session, body: bytes, target: str, seg: str) -> None:
    if target == "open":
        response = http.post("/sessions", content=body)
        if response.status_code == 200:  # do not leak sessions into the cap
            http.delete(f"/sessions/{response.json()['session_id']}")
    elif target == "call":
        response = http.post(f"/sessions/{session}/call", content=body)
    elif target == "call_other":
        response = http.post(f"/sessions/{_quote(seg)}/call", content=body)
    elif target == "close":
        response = http.request("DELETE", f"/sessions/{_quote(seg)}", content=body)
    else:
        response = http.get(f"/suites/{_quote(seg)}/tools")
    _answers_cleanly(response)


@FUZZ
@given(calls=st.lists(st.builds(ToolCall, st.text(max_size=8) | st.just("lookup"), _json), max_size=4))
def test_the_client_accepts_what_the_env_accepts(client, session, calls: list[ToolCall]) -> None:
    """Any calls ToolEnv takes in process come back from the server with the same outcomes."""
    env = ToolEnv()
    task = get_suite("atlas").tasks("test", 1, seed=0)[0]
    local = env.call(env.open_session(task), calls)
    remote = client.call(session, calls)
    assert [json.dumps(o.to_dict(), default=repr) for o in remote] == [
        json.dumps(o.to_dict(), default=repr) for o in local
    ]


def test_it_keeps_serving_after_the_fuzzing(server, http):
    assert http.get("/health").json()["status"] == "ok"
    task = get_suite("atlas").tasks("test", 1, seed=1)[0]
    with ToolClient(server.url, token=TOKEN) as client:
        sid = client.open_session(task)
        (outcome,) = client.call(
            sid, [ToolCall("lookup", {"country": task.meta["countries"][0], "field": "area"})]
        )
        assert outcome.ok and outcome.output.isdigit()
        client.close_session(sid)
