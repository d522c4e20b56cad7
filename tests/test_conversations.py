"""Conversations: follow-up user turns as observations, per-turn checks, per-task tools, live state."""

from __future__ import annotations

import threading

import pytest
import torch

from steprl.algorithms.rewards import shape_conversation_rewards, shape_step_rewards
from steprl.engines.replay import ReplayEngine
from steprl.episode import EpisodeBudget, PromptTooLong, run_episodes, task_encoder
from steprl.evaluation.metrics import turn_metrics
from steprl.protocol import collate
from tools_env import Suite, Task, ToolEnv, get_parser, register_suite, tool
from tools_env.suites.atlas import call_text
from workers.reward import score_trajectory

CLOSED: list[int] = []
FINAL_CHECK_STEPS: list[list[dict]] = []


class Counter:
    """A live object in the session state (a lock inside: it is neither JSON nor deep-copyable)."""

    def __init__(self) -> None:
        self.value = 0
        self.lock = threading.Lock()


@register_suite("convo_counter")
class CounterSuite(Suite):
    system_prompt = "You keep a counter with the tools."

    def initial_state(self, task: Task) -> dict:
        return {"counter": Counter()}

    @tool
    def add(self, state: dict, n: int) -> str:
        """Add a number to the counter.

        Args:
            n: how much to add
        """
        with state["counter"].lock:
            state["counter"].value += n
        return str(state["counter"].value)

    @tool
    def read(self, state: dict) -> str:
        """Read the counter."""
        return str(state["counter"].value)

    @tool
    def reset(self, state: dict) -> str:
        """Set the counter back to zero."""
        state["counter"].value = 0
        return "0"

    def snapshot(self, task: Task, state: dict) -> dict:
        return {"value": state["counter"].value}

    def close_state(self, task: Task, state: dict) -> None:
        CLOSED.append(state["counter"].value)

    def tasks(self, split: str, n: int, seed: int) -> list[Task]:
        return [
            Task(f"counter-{i}", "convo_counter", "Add 2.", "5", {"targets": [2, 6, 5]},
                 followups=["Now add 3.", "Thanks, that is all."], tools=["add", "read"])
            for i in range(n)
        ]  # fmt: skip

    def user_turn(self, task: Task, turn: int, messages: list[dict]) -> str | None:
        if not task.meta.get("simulated"):
            return super().user_turn(task, turn, messages)
        # a rule-based simulated user: asks for one more until the agent reports 3
        return None if "3" in messages[-1]["content"] else "Add 1 more."

    def turn_correct(self, task, turn, answer, state, steps):
        if "targets" not in task.meta:
            return None
        calls = [c for s in steps for c in s["calls"]]
        if turn == 2:  # "that is all": the right move is to call nothing
            return float(not calls and state["value"] == task.meta["targets"][turn])
        return float(state["value"] == task.meta["targets"][turn])

    def final_answer_correct(self, task, final_answer, state, steps=None):
        FINAL_CHECK_STEPS.append(steps)
        return float(state["value"] == 5)

    def contributions(self, task, steps, final_answer):
        out = []
        for s in steps:
            adds = [c for c in s["calls"] if c["ok"] and c["name"] == "add"]
            out.append(1.0 if any(c["arguments"]["n"] == 3 for c in adds) else 0.5 if adds else 0.0)
        return out


TURNS = [
    call_text("add", {"n": 2}),
    "Added 2.",
    call_text("reset", {}),  # not one of the task's tools: a failed call
    call_text("add", {"n": 3}),
    "The counter is 5.",
    "You are welcome.",
]


def _run(encoder_of, env, tasks, turns, budget=None):
    scripts = {
        tuple(encoder_of(t).start(t.question)[1]): [encoder_of(t).action_ids(x) for x in turns] for t in tasks
    }
    enc = encoder_of(tasks[0])
    engine = ReplayEngine(scripts)
    encoders = {"convo_counter": enc}
    budget = budget or EpisodeBudget(max_turns=10, max_response_tokens=900, max_tokens_per_turn=64)
    return run_episodes(engine, env, encoders, get_parser("hermes"), tasks, budget, seed=0), encoders


@pytest.fixture(scope="module")
def counter_encoder(tokenizer):
    from steprl.chat import ChatEncoder

    suite = CounterSuite()
    return ChatEncoder(tokenizer, [t.schema() for t in suite.tools()], suite.system_prompt)


def test_shape_conversation_rewards_golden():
    kinds = ["tool", "reply", "tool", "tool", "reply", "final"]
    # by hand, alpha = 1: (1*1 + 0.5)/2, turn 0 score, (0 + 0)/2, (1 + 1)/2, turn 1 score, IsSolved
    got = shape_conversation_rewards(kinds, [1, 0, 1], [0.5, 0, 1], [1.0, 0.0], 1.0, alpha=1.0)
    assert got == [0.75, 1.0, 0.0, 1.0, 0.0, 1.0]
    got = shape_conversation_rewards(kinds, [1, 0, 1], [0.5, 0, 1], [0.5, 0.25], "unsure", alpha=2.0)
    assert got == pytest.approx([2.5 / 3, 0.5, 0.0, 1.0, 0.25, 0.5])
    # without step-grained reward only the final answer is rewarded (replies too are zeroed)
    assert shape_conversation_rewards(kinds, [1, 0, 1], [1, 1, 1], [1, 1], 1, step_grained=False) == [
        0
    ] * 5 + [1]
    # no per-turn check: replies earn 0; a truncated conversation has no final step
    assert shape_conversation_rewards(["tool", "reply", "tool"], [1, 1], [0, 0], None, None) == [
        0.5,
        0.0,
        0.5,
    ]
    # a single-question episode is exactly the StepTool shaping
    assert shape_conversation_rewards(["tool", "final"], [1], [0.2], None, 0.5) == shape_step_rewards(
        [1], [0.2], 0.5
    )
    with pytest.raises(ValueError, match="last step"):
        shape_conversation_rewards(["final", "tool"], [1], [1], None, 1.0)
    with pytest.raises(ValueError, match="turn scores for 1 replies"):
        shape_conversation_rewards(["reply", "final"], [], [], [1, 1], 1.0)
    with pytest.raises(ValueError, match="IsSolved"):
        shape_conversation_rewards(["tool", "reply"], [1], [1], [1], 1.0)


@pytest.mark.parametrize("mode", ["inprocess", "server"])
def test_conversation_episode_masks_rewards_and_live_state(counter_encoder, mode):
    from tools_env.client import ToolClient
    from tools_env.server import serve

    env = ToolEnv()
    server = serve(env, port=0) if mode == "server" else None
    client = ToolClient(server.client_url) if server else env
    try:
        task = CounterSuite().tasks("test", 1, 0)[0]
        CLOSED.clear()
        (traj,), encoders = _run(
            lambda t: task_encoder({"convo_counter": counter_encoder}, t), client, [task], TURNS
        )
    finally:
        if server:
            client.close()
            server.stop()
    assert CLOSED == [5]  # the close hook saw the live object
    assert traj.end_reason == "answer" and traj.done and not traj.truncated
    kinds = ["final" if s.is_final else "reply" if s.is_reply else "tool" for s in traj.steps]
    assert kinds == ["tool", "reply", "tool", "tool", "reply", "final"]
    assert [s.turn for s in traj.steps] == [0, 0, 1, 1, 1, 2]
    assert traj.steps[1].info["turn_state"] == {"value": 2} and traj.steps[4].info["turn_state"] == {
        "value": 5
    }
    assert traj.meta["final_state"] == {"value": 5}
    assert "not available in this task" in traj.steps[2].observation and traj.steps[2].succ_calling == 0.0
    # the user's follow-ups are observation tokens of the reply steps; the step index moves on
    tok = counter_encoder.tokenizer
    for k, follow in ((1, "Now add 3."), (4, "Thanks, that is all.")):
        obs = [
            t
            for t, o, s in zip(traj.response_ids, traj.obs_mask, traj.step_index, strict=True)
            if o and s == k
        ]
        text = tok.decode(obs)
        assert follow in text and "user" in text
    actions = sorted({s for a, s in zip(traj.action_mask, traj.step_index, strict=True) if a})
    assert actions == list(range(6))
    scored = score_trajectory(traj, task, "rule", alpha=1.0)
    assert scored.step_rewards == [0.75, 1.0, 0.0, 1.0, 0.0, 1.0]
    assert scored.meta["turn_scores"] == [1.0, 0.0, 1.0] and scored.is_solved == 1.0
    steps = FINAL_CHECK_STEPS[-1]  # the final checker received the steps and their execution results
    assert len(steps) == 6 and steps[0]["info"]["calls"][0]["output"] == "2"
    batch = collate([scored], pad_id=0)
    p = len(traj.prompt_ids)
    user_tokens = torch.tensor(traj.obs_mask, dtype=torch.bool)
    assert not batch.action_mask[0, p:][user_tokens].any()  # masked out of every loss
    assert (batch.step_index[0, p:][user_tokens] == -1).all()  # and no step (no reward) lands there


def test_simulated_user_produces_the_next_message(counter_encoder):
    task = Task("sim-0", "convo_counter", "Add 1.", "3", {"simulated": True}, tools=["add"])
    turns = [
        call_text("add", {"n": 1}),
        "It is 1.",
        call_text("add", {"n": 1}),
        "It is 2.",
        call_text("add", {"n": 1}),
        "It is 3.",
    ]
    (traj,), _ = _run(lambda t: task_encoder({"convo_counter": counter_encoder}, t), ToolEnv(), [task], turns)
    assert [s.is_reply for s in traj.steps] == [False, True, False, True, False, False]
    assert traj.steps[-1].is_final and traj.final_answer == "It is 3."
    assert "Add 1 more." in traj.steps[1].observation
    scored = score_trajectory(traj, task, "rule")
    assert "turn_scores" not in scored.meta  # this task has no per-turn check: replies earn 0
    assert [scored.step_rewards[k] for k in (1, 3)] == [0.0, 0.0]


def test_budget_ends_a_conversation_mid_way(counter_encoder):
    task = CounterSuite().tasks("test", 1, 0)[0]
    budget = EpisodeBudget(max_turns=3, max_response_tokens=900, max_tokens_per_turn=64)
    (traj,), _ = _run(
        lambda t: task_encoder({"convo_counter": counter_encoder}, t), ToolEnv(), [task], TURNS, budget
    )
    assert traj.end_reason == "max_turns" and traj.truncated and traj.final_answer is None
    scored = score_trajectory(traj, task, "rule")
    assert scored.meta["turn_scores"] == [1.0]  # turn 0 was answered; no IsSolved without the last answer
    assert scored.step_rewards == [0.5 * (1 + 0.5), 1.0, 0.0]


def test_per_task_tools_reach_the_prompt_and_the_session(counter_encoder):
    task = CounterSuite().tasks("test", 1, 0)[0]
    enc = task_encoder({"convo_counter": counter_encoder}, task)
    prompt = enc.render(enc.start(task.question)[0])
    full = counter_encoder.render(counter_encoder.start(task.question)[0])
    assert "reset" in full and "reset" not in prompt and "add(" in prompt and "read(" in prompt
    excluded = Task("x", "convo_counter", "q", "a", excluded_tools=["read"])
    assert task_encoder({"convo_counter": counter_encoder}, excluded).tool_names() == ["add", "reset"]
    env = ToolEnv()
    with pytest.raises(ValueError, match="task bad: tools names unknown tool"):
        env.open_session(Task("bad", "convo_counter", "q", "a", tools=["add", "nope"]))
    session = env.open_session(excluded)
    from tools_env import ToolCall

    out = env.call(session, [ToolCall("read", {}), ToolCall("add", {"n": 4}), ToolCall("nope", {})])
    assert [o.ok for o in out] == [False, True, False]
    assert out[0].error == "unavailable_tool" and "Available tools: add, reset" in out[0].output
    assert out[2].error == "unknown_tool"


def test_prompt_over_the_context_budget_fails_naming_task_and_budget(counter_encoder):
    task = CounterSuite().tasks("test", 1, 0)[0]
    budget = EpisodeBudget(max_turns=4, max_response_tokens=100, max_tokens_per_turn=32, max_prompt_tokens=20)
    with pytest.raises(PromptTooLong, match=r"task counter-0 .* over the context budget of 20 prompt tokens"):
        _run(lambda t: task_encoder({"convo_counter": counter_encoder}, t), ToolEnv(), [task], TURNS, budget)


def test_demonstration_with_follow_up_user_turns(counter_encoder):
    msgs = [
        {"role": "user", "content": "Add 2."},
        {"role": "assistant", "content": call_text("add", {"n": 2})},
        {"role": "tool", "content": "2"},
        {"role": "assistant", "content": "Added 2."},
        {"role": "user", "content": "Now add 3."},
        {"role": "assistant", "content": call_text("add", {"n": 3})},
        {"role": "tool", "content": "5"},
        {"role": "assistant", "content": "The counter is 5."},
    ]
    traj = counter_encoder.encode_demonstration("demo", msgs)
    traj.validate()
    assert [s.is_reply for s in traj.steps] == [False, True, False, False]
    assert [s.turn for s in traj.steps] == [0, 0, 1, 1] and traj.steps[-1].is_final
    sys = [{"role": "system", "content": counter_encoder.system_prompt}]
    full = counter_encoder.encode_text(counter_encoder.render(sys + msgs))
    ids = traj.prompt_ids + traj.response_ids
    assert full[: len(ids)] == ids and len(full) - len(ids) <= 1  # the same tokens as the template
    user = counter_encoder.encode_text("Now add 3.")
    obs = [t for t, o in zip(traj.response_ids, traj.obs_mask, strict=True) if o]
    assert any(obs[i : i + len(user)] == user for i in range(len(obs)))  # the follow-up is observation
    with pytest.raises(ValueError, match="after a reply, not after tool results"):
        counter_encoder.encode_demonstration("bad", msgs[:3] + [msgs[4], msgs[5]])


def test_turn_metrics_golden():
    rows = [
        {"turn_scores": [1, 0, 1], "num_turns": 3},
        {"turn_scores": [1], "num_turns": 3},  # the budget ended it after turn 1
        {"turn_scores": [1, 1], "num_turns": 2},
        {"turn_scores": None, "num_turns": 1},  # no per-turn check: not counted
    ]
    got = turn_metrics(rows)
    assert got["conversations"] == 3 and got["user_turns"] == 8
    assert got["turn_pass_rate"] == pytest.approx(5 / 8)
    assert got["conversation_pass_rate"] == pytest.approx(1 / 3)
    assert got["turn_pass_by_index"] == [
        {"turn": 1, "count": 3, "pass_rate": 1.0},
        {"turn": 2, "count": 3, "pass_rate": pytest.approx(1 / 3)},
        {"turn": 3, "count": 2, "pass_rate": 0.5},
    ]
    assert turn_metrics([{"turn_scores": None}]) is None


def _serve_app(app):
    import socket
    import time

    import httpx
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    for _ in range(200):
        try:
            httpx.get(f"{url}/health", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.05)
    return url, server, thread, sock


def test_openai_compatible_simulated_user_over_http(counter_encoder):
    """A real HTTP endpoint plays the user: it sees the roles swapped and no tool traffic."""
    from fastapi import FastAPI

    from tools_env.simulated_user import OpenAIUser, SimulatedUserError

    seen: list[dict] = []
    app = FastAPI()

    @app.get("/v1/health")
    def health():
        return {}

    @app.post("/v1/chat/completions")
    def chat(body: dict):
        seen.append(body)
        own = sum(m["role"] == "assistant" for m in body["messages"])  # its earlier user messages
        text = "Add 1 more." if own < 3 else "DONE, thanks."
        return {"choices": [{"message": {"role": "assistant", "content": text}}]}

    @app.post("/broken/v1/chat/completions")
    def broken():
        from fastapi import HTTPException

        raise HTTPException(400, "no such model")

    url, server, thread, sock = _serve_app(app)
    user = OpenAIUser(url, "sim", instructions="You want the counter at {meta[goal]}.", retries=0)

    class SimCounter(CounterSuite):
        def user_turn(self, task, turn, messages):
            return user(task, messages)

    try:
        task = Task("llm-0", "convo_counter", "Add 1.", "3", {"goal": 3}, tools=["add"])
        msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "Add 1."},
                {"role": "assistant", "content": "<tool_call>..."}, {"role": "tool", "content": "1"},
                {"role": "assistant", "content": "It is 1."}]  # fmt: skip
        assert SimCounter().user_turn(task, 1, msgs) == "Add 1 more."
        body = seen[-1]
        assert body["messages"][0] == {"role": "system", "content": "You want the counter at 3."}
        # roles swapped, system prompt and tool traffic left out
        assert [m["role"] for m in body["messages"][1:]] == ["assistant", "user", "user"]
        assert body["messages"][-1]["content"] == "It is 1."
        more = [
            *msgs,
            {"role": "user", "content": "Add 1 more."},
            {"role": "assistant", "content": "It is 2."},
        ]
        assert user(task, more) == "Add 1 more."
        more += [{"role": "user", "content": "Add 1 more."}, {"role": "assistant", "content": "It is 3."}]
        assert user(task, more) is None  # "DONE" ends the conversation
        with pytest.raises(SimulatedUserError, match="HTTP 400"):
            OpenAIUser(url.replace("/v1", "/broken/v1"), "sim", retries=0)(task, msgs)
    finally:
        user.close()
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def test_conversation_steps_survive_parquet_and_sft_file_encoding(tmp_path, counter_encoder):
    from steprl.data.parquet_io import read_trajectories_parquet, write_trajectories_parquet
    from steprl.sft import encode_conversation

    msgs = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "Add 2."},
        {"role": "assistant", "content": call_text("add", {"n": 2})},
        {"role": "tool", "content": "2"},
        {"role": "assistant", "content": "Added 2."},
        {"role": "user", "content": "Thanks."},
        {"role": "assistant", "content": "You are welcome."},
    ]
    traj = encode_conversation(counter_encoder.tokenizer, msgs, "file-0")
    assert [(s.is_reply, s.is_final, s.turn) for s in traj.steps] == [
        (False, False, 0),
        (True, False, 0),
        (False, True, 1),
    ]
    write_trajectories_parquet([traj], tmp_path / "t.parquet")
    (back,) = read_trajectories_parquet(tmp_path / "t.parquet")
    assert [(s.is_reply, s.turn) for s in back.steps] == [(s.is_reply, s.turn) for s in traj.steps]


def test_dfsdt_searches_a_conversation_turn_by_turn(counter_encoder):
    """DFSDT backtracks inside a later user turn and keeps the conversation's turn structure."""
    import re

    from steprl.engines.base import Generation, RolloutEngine
    from steprl.evaluation.dfsdt import DFSDTConfig, run_dfsdt

    assistant = re.compile(r"<\|im_start\|>assistant\n(.*?)<\|im_end\|>", re.DOTALL)
    add2, add3, bad = call_text("add", {"n": 2}), call_text("add", {"n": 3}), call_text("reset", {})
    script = {
        (): [add2],
        (add2,): ["Added 2."],
        (add2, "Added 2."): [bad, add3],  # a failed call in turn 1: the search backtracks
        (add2, "Added 2.", add3): ["The counter is 5."],
        (add2, "Added 2.", add3, "The counter is 5."): ["You are welcome."],
    }

    class Scripted(RolloutEngine):
        def __init__(self):
            self.asked = {}

        def generate(self, prompts, max_tokens, temperature, seed=None):
            out = []
            for p in prompts:
                path = tuple(
                    assistant.findall(counter_encoder.tokenizer.decode(p, skip_special_tokens=False))
                )
                k = self.asked.get(path, 0)
                self.asked[path] = k + 1
                ids = counter_encoder.action_ids(script[path][k])
                out.append(Generation(ids, [-1.0] * len(ids), True))
            return out

        def load_weights(self, weights_dir):
            raise NotImplementedError

    task = CounterSuite().tasks("test", 1, 0)[0]
    budget = EpisodeBudget(max_turns=8, max_response_tokens=900, max_tokens_per_turn=64)
    (traj,) = run_dfsdt(Scripted(), ToolEnv(), {"convo_counter": counter_encoder}, get_parser("hermes"), [task],
                        budget, DFSDTConfig(2, 10, require_grounding=False))  # fmt: skip
    outcomes = [e["outcome"] for e in traj.meta["search"]["events"]]
    assert outcomes == ["descend", "descend", "failed step", "descend", "descend", "accepted"]
    assert [s.is_reply for s in traj.steps] == [False, True, False, True, False] and traj.steps[-1].is_final
    assert [s.turn for s in traj.steps] == [0, 0, 1, 1, 2]
    assert traj.meta["final_state"] == {"value": 5}
    scored = score_trajectory(traj, task, "rule")
    assert scored.meta["turn_scores"] == [1.0, 0.0, 1.0] and scored.is_solved == 1.0
