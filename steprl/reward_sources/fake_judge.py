"""A deterministic OpenAI-compatible judge endpoint on loopback, for tests, benchmarks and dry runs.

It answers ``POST /v1/chat/completions`` the way a schema-following judge would (in the content for
``response_format``, as a tool call for a forced function), with scores drawn from a hash of the
request, so the same request gets the same judgment. Its ``behaviour`` makes it fail on purpose
(malformed JSON, the wrong number of steps, HTTP 500) for all requests or only the first
``fail_first`` ones, and ``latency`` adds a delay per request: what the judge client must survive.
Every reply it sends is logged, so a test can average the samples itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

BEHAVIOURS = ("ok", "malformed", "wrong_length", "http_500", "not_json")
STATUSES = ("Solved", "Unsure", "Unsolved")


@dataclass
class FakeJudgeState:
    behaviour: str = "ok"
    latency: float = 0.0  # seconds per request
    fail_first: int = 0  # > 0: only the first fail_first requests misbehave, the rest are ok
    requests: int = 0
    log: list[dict[str, Any]] = field(default_factory=list)  # per request: seed, n, prompt, reply


def _schema(body: dict[str, Any]) -> dict[str, Any]:
    if body.get("response_format"):
        return body["response_format"]["json_schema"]["schema"]
    return body["tools"][0]["function"]["parameters"]


def judgment(body: dict[str, Any], n: int) -> dict[str, Any]:
    """Scores derived from the request's hash: deterministic per (messages, seed)."""
    key = json.dumps([body.get("messages"), body.get("seed")], sort_keys=True).encode()
    h = hashlib.sha256(key).digest()
    return {
        "succeed_tool_calling": [h[i % 32] % 2 for i in range(n)],
        "contribution_to_final_answer": [h[(i + 7) % 32] % 6 for i in range(n)],
        "final_answer_status": STATUSES[h[31] % 3],
    }


def _completion(body: dict[str, Any], text: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if body.get("tool_choice"):
        name = body["tool_choice"]["function"]["name"]
        message = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_0", "type": "function", "function": {"name": name, "arguments": text}}
            ],
        }
    return {
        "id": "fake",
        "object": "chat.completion",
        "model": body.get("model", "fake-judge"),
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
    }


def create_app(state: FakeJudgeState) -> FastAPI:
    app = FastAPI()

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": "fake-judge", "object": "model"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await request.json()
        state.requests += 1
        index = state.requests
        if state.latency:
            await asyncio.sleep(state.latency)
        n = int(_schema(body)["properties"]["succeed_tool_calling"]["minItems"])
        behaviour = state.behaviour if not state.fail_first or index <= state.fail_first else "ok"
        obj = judgment(body, n)
        prompt = body["messages"][-1]["content"]
        entry: dict[str, Any] = {
            "seed": body.get("seed"),
            "n": n,
            "prompt": prompt,
            "behaviour": behaviour,
            "reply": None,
        }
        state.log.append(entry)
        if behaviour == "http_500":
            return JSONResponse({"error": {"message": "overloaded"}}, status_code=500)
        if behaviour == "not_json":
            return PlainTextResponse("upstream proxy error", status_code=200)
        if behaviour == "malformed":
            return _completion(body, '{"succeed_tool_calling": [1, ')
        if behaviour == "wrong_length":
            obj = {**obj, "succeed_tool_calling": obj["succeed_tool_calling"] + [1]}
            obj["contribution_to_final_answer"] = obj["contribution_to_final_answer"] + [0]
            return _completion(body, json.dumps(obj))
        entry["reply"] = obj
        return _completion(body, json.dumps(obj))

    return app


@dataclass
class RunningFakeJudge:
    url: str  # base URL, ending in /v1
    state: FakeJudgeState
    _server: uvicorn.Server
    _thread: threading.Thread
    _sock: socket.socket

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()

    def __enter__(self) -> RunningFakeJudge:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def start_fake_judge(
    behaviour: str = "ok", latency: float = 0.0, fail_first: int = 0, host: str = "127.0.0.1", port: int = 0
) -> RunningFakeJudge:
    """Serve the fake judge from a thread of this process; returns once it answers."""
    if behaviour not in BEHAVIOURS:
        raise ValueError(f"behaviour must be one of {BEHAVIOURS}, got {behaviour!r}")
    state = FakeJudgeState(behaviour, latency, fail_first)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    url = f"http://{host}:{sock.getsockname()[1]}/v1"
    server = uvicorn.Server(uvicorn.Config(create_app(state), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="fake-judge")
    thread.start()
    running = RunningFakeJudge(url, state, server, thread, sock)
    deadline = time.time() + 20
    while True:
        try:
            if httpx.get(f"{url}/models", timeout=1).status_code == 200:
                return running
        except httpx.HTTPError:
            pass
        if time.time() > deadline:
            running.stop()
            raise RuntimeError(f"fake judge did not start on {url}")
        time.sleep(0.05)
