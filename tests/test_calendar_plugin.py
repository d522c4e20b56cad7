"""The plugin of docs/tools_env.md (examples/calendar_plugin): a conversational suite from a YAML file
with JSON-schema tools, live objects as state and a per-turn check, run through the episode loop,
the tool server (in its own process) and the reward pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest

from steprl.chat import ChatEncoder
from steprl.engines.replay import ReplayEngine
from steprl.episode import EpisodeBudget, run_episodes, task_encoder
from tools_env import ToolEnv, get_parser, get_suite
from tools_env.suite import use_suites_yaml
from tools_env.suites.atlas import call_text
from workers.reward import score_trajectory

YAML = Path(__file__).parents[1] / "examples" / "calendar_plugin" / "suite.yaml"
BUDGET = EpisodeBudget(max_turns=12, max_response_tokens=900, max_tokens_per_turn=64)
SCRIPT = [
    call_text("free_slots", {"day": "mon"}),  # a look-up: runs, contributes nothing
    call_text("book", {"day": "mon", "hour": 10, "title": "dentist"}),
    "Booked dentist on mon at 10.",
    call_text("book", {"day": "mon", "hour": "11", "title": "dentist"}),  # a string hour: schema says integer
    call_text("list_bookings", {"day": "mon"}),  # in the catalog, not among this task's tools
    call_text("cancel", {"booking_id": 1}),
    call_text("book", {"day": "mon", "hour": 11, "title": "dentist"}),
    "Moved it to 11.",
    "You are welcome.",
]
# by hand: tool steps (alpha * SuccCalling + Contribution) / (1 + alpha) with alpha = 1, replies the
# per-turn check, the last answer IsSolved (every turn right)
REWARDS = [0.5, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]


@pytest.fixture(scope="module")
def calendar(tokenizer):
    assert use_suites_yaml(str(YAML)) == ["calendar"]  # loading again returns the same names
    suite = get_suite("calendar")
    return suite, ChatEncoder(tokenizer, [t.schema() for t in suite.tools()], suite.system_prompt)


def _episode(encoder, env, task, turns):
    enc = task_encoder({"calendar": encoder}, task)
    engine = ReplayEngine({tuple(enc.start(task.question)[1]): [enc.action_ids(x) for x in turns]})
    (traj,) = run_episodes(engine, env, {"calendar": encoder}, get_parser("hermes"), [task], BUDGET, seed=0)
    return score_trajectory(traj, task, "rule", alpha=1.0)


def test_the_yaml_plugin_builds_a_conversational_suite(calendar):
    suite, encoder = calendar
    assert [t.name for t in suite.tools()] == ["book", "cancel", "free_slots", "invite", "list_bookings"]
    task = suite.tasks("train", 2, 0)
    first = next(t for t in task if t.followups and len(t.followups) == 2)
    assert first.tools == ["book", "cancel", "free_slots"]
    enc = task_encoder({"calendar": encoder}, first)
    assert enc.tool_names() == ["book", "cancel", "free_slots"]  # only the task's tools reach its prompt
    (lunch,) = suite.tasks("test", 1, 0)
    assert task_encoder({"calendar": encoder}, lunch).tool_names() == ["book"]  # excluded_tools


@pytest.mark.parametrize("mode", ["inprocess", "server_process"])
def test_plugin_episode_rewards_through_env_and_tool_server(calendar, mode):
    from tools_env.client import ToolClient
    from tools_env.server import serve

    suite, encoder = calendar
    task = next(t for t in suite.tasks("train", 2, 0) if len(t.followups) == 2)
    server = serve(background="process") if mode == "server_process" else None  # loads $STEPRL_SUITES_YAML
    env = ToolClient(server.client_url) if server else ToolEnv()
    try:
        good = _episode(encoder, env, task, SCRIPT)
        chatty = _episode(encoder, env, task, [*SCRIPT[:-1], call_text("free_slots", {"day": "mon"}), "Bye."])
    finally:
        if server:
            env.close()
            server.stop()
    assert good.steps[3].info["calls"][0]["error"] == "invalid_arguments"
    assert "not available in this task" in good.steps[4].observation
    assert good.steps[2].info["turn_state"] == {"mon-10": "dentist"}  # the live Calendar's JSON view
    assert good.meta["final_state"] == {"mon-11": "dentist"}
    assert good.step_rewards == REWARDS
    assert good.meta["turn_scores"] == [1.0, 1.0, 1.0] and good.is_solved == 1.0
    # a tool call on the "thanks" turn, where nothing was to be done: that turn and the conversation fail
    assert chatty.meta["turn_scores"] == [1.0, 1.0, 0.0] and chatty.is_solved == 0.0
    assert chatty.step_rewards == [*REWARDS[:-1], 0.5, 0.0]


def test_cli_suites_yaml_fails_fast_naming_the_key(tmp_path, capsys):
    from steprl.main import main

    missing = tmp_path / "nope.yaml"
    assert main([f"data.suites_yaml={missing}", "data.suite=calendar"]) == 2
    err = capsys.readouterr().err
    assert "data.suites_yaml=" in err and "nope.yaml" in err


def test_suites_yaml_reaches_child_processes(monkeypatch):
    import os
    import subprocess
    import sys

    monkeypatch.delenv("STEPRL_SUITES_YAML", raising=False)
    assert use_suites_yaml(str(YAML)) == ["calendar"]
    assert str(YAML.resolve()) in os.environ["STEPRL_SUITES_YAML"]
    code = "from tools_env import get_suite; print(get_suite('calendar').name)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=dict(os.environ)
    )
    assert out.stdout.strip() == "calendar"
