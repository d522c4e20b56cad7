"""The conversational shop suite: live objects as state, per-task tools, per-turn checks, demonstrations."""

from __future__ import annotations

import random

import pytest

from steprl.chat import ChatEncoder
from steprl.engines.replay import ReplayEngine
from steprl.episode import EpisodeBudget, run_episodes, task_encoder
from steprl.sft import demonstration_trajectories
from tools_env import ToolEnv, get_parser, get_suite
from tools_env.suites.atlas import call_text
from tools_env.suites.shop import CATALOG, KINDS, Store
from workers.reward import score_trajectory

BUDGET = EpisodeBudget(max_turns=10, max_response_tokens=700, max_tokens_per_turn=64)


@pytest.fixture(scope="module")
def shop():
    return get_suite("shop")


@pytest.fixture(scope="module")
def shop_encoder(tokenizer, shop):
    return ChatEncoder(tokenizer, [t.schema() for t in shop.tools()], shop.system_prompt)


def _distinct_prompts(tasks, encoder):
    seen, out = set(), []
    for t in tasks:
        key = tuple(task_encoder({"shop": encoder}, t).start(t.question)[1])
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out


def _replay(encoder, tasks, turns_per_task, env):
    scripts = {}
    for t, turns in zip(tasks, turns_per_task, strict=True):
        enc = task_encoder({"shop": encoder}, t)
        scripts[tuple(enc.start(t.question)[1])] = [enc.action_ids(x) for x in turns]
    return run_episodes(
        ReplayEngine(scripts), env, {"shop": encoder}, get_parser("hermes"), tasks, BUDGET, seed=0
    )


def test_tasks_are_multi_turn_conversations_over_a_subset_of_the_catalog(shop):
    train, test = shop.tasks("train", 200, 0), shop.tasks("test", 60, 0)
    assert [t.to_dict() for t in shop.tasks("train", 200, 0)] == [t.to_dict() for t in train]  # deterministic
    assert not {t.question + repr(t.meta) for t in train} & {t.question + repr(t.meta) for t in test}
    assert {t.meta["kind"] for t in train} == set(KINDS)
    assert len(shop.tools()) == len(CATALOG) == 11
    assert all(t.followups and len(t.followups) + 1 == len(t.meta["turns"]) for t in train)
    assert max(len(t.tools) for t in train) < len(CATALOG) and all(
        set(t.tools) <= set(CATALOG) for t in train
    )
    assert sum(not turn["calls"] for t in train for turn in t.meta["turns"]) > 50  # turns needing no tool
    session_state = shop.initial_state(train[0])
    assert isinstance(session_state["store"], Store)  # live objects, JSON only in the snapshot


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_demonstrations_replayed_through_the_episode_loop_earn_full_marks(shop, shop_encoder, share):
    tasks = _distinct_prompts(shop.tasks("train", 40, 1), shop_encoder)[:12]
    demos = demonstration_trajectories(shop, tasks, shop_encoder, share, seed=3)
    rng = random.Random(3)
    turns = [
        [m["content"] for m in shop.demonstration(t, rng, share) if m["role"] == "assistant"] for t in tasks
    ]
    trajs = _replay(shop_encoder, tasks, turns, ToolEnv())
    looked_up = 0
    for demo, traj, task in zip(demos, trajs, tasks, strict=True):
        # the episode loop produces exactly the demonstration's tokens (SFT trains the rollout layout)
        assert traj.prompt_ids == demo.prompt_ids and traj.response_ids == demo.response_ids
        assert traj.obs_mask == demo.obs_mask and [s.is_reply for s in traj.steps] == [
            s.is_reply for s in demo.steps
        ]
        scored = score_trajectory(traj, task, "rule")
        assert scored.is_solved == 1.0, task.task_id
        assert scored.meta["turn_scores"] == [1.0] * len(task.meta["turns"])
        for step in scored.steps:
            assert step.reward == (
                0.5 if step.contribution == 0.0 and not (step.is_reply or step.is_final) else 1.0
            )
        looked_up += sum(s.contribution == 0.0 for s in scored.steps if not (s.is_reply or s.is_final))
    assert (looked_up > 0) == (share > 0)  # the suboptimal share adds needless look-ups (contribution 0)


def test_a_call_where_none_is_needed_fails_that_turn_and_the_conversation(shop, shop_encoder):
    task = next(t for t in shop.tasks("train", 60, 2) if t.meta["kind"] == "buy_total")
    good = [m["content"] for m in shop.demonstration(task, random.Random(0), 0.0) if m["role"] == "assistant"]
    bad = good[:-1] + [call_text("view_cart", {}), "You are welcome."]  # looks up the cart after "thanks"
    for turns, solved, scores in ((good, 1.0, [1.0, 1.0, 1.0]), (bad, 0.0, [1.0, 1.0, 0.0])):
        (traj,) = _replay(shop_encoder, [task], [turns], ToolEnv())
        scored = score_trajectory(traj, task, "rule")
        assert scored.is_solved == solved and scored.meta["turn_scores"] == scores


def test_a_tool_outside_the_task_fails_and_the_state_stays(shop, shop_encoder):
    task = next(
        t for t in shop.tasks("train", 60, 2) if t.meta["kind"] == "buy_total" and "checkout" not in t.tools
    )
    good = [m["content"] for m in shop.demonstration(task, random.Random(0), 0.0) if m["role"] == "assistant"]
    turns = [good[0], call_text("checkout", {}), *good[1:]]
    (traj,) = _replay(shop_encoder, [task], [turns], ToolEnv())
    assert "not available in this task" in traj.steps[1].observation
    scored = score_trajectory(traj, task, "rule")
    assert scored.steps[1].succ_calling == 0.0 and scored.steps[1].reward == 0.0
    assert scored.is_solved == 1.0  # the failed call changed nothing; the rest of the conversation is right
