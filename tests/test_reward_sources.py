"""Reward sources: rule, judge (against a real FastAPI endpoint on loopback), file, custom functions,
their per-component combination with provenance, failure handling, and the controller's use of them
(reward actors, metrics, rollouts saved to Parquet and read back as an offline dataset)."""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import replace
from pathlib import Path

import pytest

from steprl.config import ConfigError, RewardConfig, StepRLConfig
from steprl.engines.replay import ReplayEngine
from steprl.episode import EpisodeBudget, run_episodes
from steprl.protocol import StepRecord, Trajectory
from steprl.reward_sources import REWARD_SOURCES, RewardPipeline, register_reward_source
from steprl.reward_sources.fake_judge import start_fake_judge
from steprl.reward_sources.file import AnnotationError
from steprl.reward_sources.judge import (
    JudgeReplyError,
    judge_schema,
    parse_judge_reply,
    render_judge_messages,
)
from steprl.validation import validate
from tools_env import ToolEnv, get_parser
from tools_env.suite import Task

STATUS = {"Solved": 1.0, "Unsure": 0.5, "Unsolved": 0.0}
PUBLISHED = Path("/work/shared/data/steptool/data/reward_annotation/qwen2/G123_example_5.json")


def play(encoder, atlas, tasks, turns):
    """Real episodes (real tool calls in a ToolEnv) whose assistant turns are scripted."""
    scripts = {
        tuple(encoder.start(t.question)[1]): [encoder.action_ids(x) for x in ts]
        for t, ts in zip(tasks, turns, strict=True)
    }
    return run_episodes(
        ReplayEngine(scripts, logprob=-0.5),
        ToolEnv(),
        {"atlas": encoder},
        get_parser("hermes"),
        tasks,
        EpisodeBudget(max_turns=6, max_response_tokens=700, max_tokens_per_turn=80),
    )


@pytest.fixture(scope="module")
def episodes(encoder, atlas):
    """Four atlas episodes: two demonstrations (one with a distractor call), a broken call, and one
    that loops until max_turns (no final answer)."""
    tasks = atlas.tasks("test", 4, 0)
    rng = random.Random(3)
    turns = []
    for t, share in zip(tasks[:2], (0.0, 1.0), strict=True):
        demo = atlas.demonstration(t, rng, share)
        turns.append([m["content"] for m in demo if m["role"] == "assistant"])
    turns.append(
        [
            '<tool_call>\n{"name": "lookup", "arguments": {"country": 1, "field": "area"}}\n</tool_call>',
            "The answer is 0.",
        ]
    )
    turns.append(['<tool_call>\n{"name": "weather", "arguments": {"city": "X"}}\n</tool_call>'] * 6)
    return tasks, play(encoder, atlas, tasks, turns)


def fresh(episodes):
    tasks, trajs = episodes
    return tasks, [Trajectory.from_dict(t.to_dict()) for t in trajs]


def cfg(**kw) -> RewardConfig:
    return RewardConfig(**{"judge_model": "fake-judge", "judge_backoff": 0.01, **kw})


def by_prompt(state, task):
    """The fake judge's logged replies to the prompts about ``task``."""
    return [e for e in state.log if f"Query: {task.question}\n" in e["prompt"]]


def n_tool(traj):
    return sum(not s.is_final for s in traj.steps)


# ---- rule --------------------------------------------------------------------------------------


def test_rule_source_golden_rewards(episodes):
    tasks, trajs = fresh(episodes)
    RewardPipeline(cfg(alpha=0.5)).score(trajs, tasks)
    clean, flawed, broken, looping = trajs
    k = len(tasks[0].meta["countries"])
    # clean demo: k needed lookups and the calculator, all ran and contributed; solved
    assert clean.step_rewards == pytest.approx([1.0] * (k + 1) + [1.0])
    # the flawed demo's extra step ran (SuccCalling 1) but did not contribute: (0.5*1 + 0)/1.5
    extra = [r for r in flawed.step_rewards[:-1] if r != pytest.approx(1.0)]
    assert extra == pytest.approx([0.5 / 1.5]) and flawed.step_rewards[-1] in (0.0, 1.0)
    # an invalid call: SuccCalling 0, Contribution 0; the answer "0" is wrong
    assert broken.step_rewards == [0.0, 0.0] and broken.is_solved == 0.0
    # no final answer: one reward per call and no IsSolved entry
    assert looping.end_reason == "max_turns" and looping.step_rewards == pytest.approx([0.5 / 1.5] * 6)
    for t in trajs:
        assert t.meta["reward_source"] == "rule" and "reward_unscored" not in t.meta
        assert t.meta["reward_provenance"] == dict.fromkeys(
            ("succ_calling", "contribution", "is_solved"), "rule"
        )


# ---- the judge prompt and reply parsing ---------------------------------------------------------


def test_judge_prompt_and_schema(episodes):
    tasks, trajs = fresh(episodes)
    msgs = render_judge_messages(trajs[2], tasks[2], max_observation_chars=30)
    user = msgs[-1]["content"]
    assert msgs[0]["role"] == "system" and "evaluate_process_reward" in msgs[0]["content"]
    assert f"Query: {tasks[2].question}" in user and "exactly 1 entries" in user
    assert 'Step 1: call lookup({"country": 1, "field": "area"})' in user
    assert "Final answer: The answer is 0." in user and "characters cut]" in user
    looping = render_judge_messages(trajs[3], tasks[3])[-1]["content"]
    assert (
        "Step 6: call weather" in looping and "Final answer: none (the episode ended: max_turns)" in looping
    )
    s = judge_schema(3)
    for key in ("succeed_tool_calling", "contribution_to_final_answer"):
        assert s["properties"][key]["minItems"] == s["properties"][key]["maxItems"] == 3
    assert s["properties"]["final_answer_status"]["enum"] == ["Solved", "Unsure", "Unsolved"]


def _reply(content=None, arguments=None):
    msg = {"role": "assistant", "content": content}
    if arguments is not None:
        msg["tool_calls"] = [{"function": {"name": "evaluate_process_reward", "arguments": arguments}}]
    return {"choices": [{"message": msg}]}


def test_parse_judge_reply_accepts_content_tool_calls_and_wrapped_calls():
    obj = {
        "succeed_tool_calling": [1, 0],
        "contribution_to_final_answer": [5, 2],
        "final_answer_status": "unsure",
    }
    for reply in (
        _reply(json.dumps(obj)),
        _reply(arguments=json.dumps(obj)),
        _reply(json.dumps({"name": "evaluate_process_reward", "arguments": obj})),
    ):
        s = parse_judge_reply(reply, 2)
        assert s.succ_calling == (1, 0) and s.contribution == (5.0, 2.0) and s.status == "Unsure"
    bad = [
        (_reply(json.dumps(obj)), 3, "wrong_length"),
        (_reply('{"succeed_tool_calling": [1'), 2, "malformed"),
        (_reply(json.dumps({**obj, "final_answer_status": "maybe"})), 2, "malformed"),
        (_reply(json.dumps({**obj, "succeed_tool_calling": [True, 0]})), 2, "malformed"),
        (_reply(json.dumps({**obj, "contribution_to_final_answer": [6, 0]})), 2, "malformed"),
        ({"error": "x"}, 2, "malformed"),
    ]
    for reply, n, kind in bad:
        with pytest.raises(JudgeReplyError) as e:
            parse_judge_reply(reply, n)
        assert e.value.kind == kind


# ---- the judge against a real endpoint on loopback -----------------------------------------------


def test_judge_averages_k_samples_and_caches(episodes, tmp_path):
    tasks, trajs = fresh(episodes)
    with start_fake_judge() as judge:
        c = cfg(source="judge", judge_url=judge.url, judge_samples=3, judge_cache_dir=str(tmp_path / "cache"))
        pipe = RewardPipeline(c)
        pipe.score(trajs, tasks)
        m = pipe.pop_metrics()
        assert judge.state.requests == 3 * len(trajs) == m["reward/judge/requests"]
        assert m["reward/unscored_trajectories"] == 0 and "reward/judge/cache_hits" not in m
        for traj, task in zip(trajs, tasks, strict=True):
            replies = [e["reply"] for e in by_prompt(judge.state, task)]
            assert sorted(e["seed"] for e in by_prompt(judge.state, task)) == [0, 1, 2]
            n = n_tool(traj)
            succ = [sum(r["succeed_tool_calling"][i] for r in replies) / 3 for i in range(n)]
            contrib = [sum(r["contribution_to_final_answer"][i] for r in replies) / 15 for i in range(n)]
            tool = [s for s in traj.steps if not s.is_final]
            assert [s.succ_calling for s in tool] == pytest.approx(succ)
            assert [s.contribution for s in tool] == pytest.approx(contrib)
            expected = [(1.0 * s + c) / 2.0 for s, c in zip(succ, contrib, strict=True)]
            if traj.steps[-1].is_final:
                solved = sum(STATUS[r["final_answer_status"]] for r in replies) / 3
                expected.append(solved)
                assert traj.is_solved == pytest.approx(solved)
            assert traj.step_rewards == pytest.approx(expected)
            assert traj.meta["reward_details"]["judge"] == {"judge_samples": 3, "judge_requested": 3}
            assert all("env_succ_calling" in s.info for s in tool)  # the environment's verdict is kept
        # the same trajectories again: every sample from the cache, identical rewards
        again = fresh(episodes)[1]
        pipe.score(again, tasks)
        m = pipe.pop_metrics()
        assert judge.state.requests == 3 * len(trajs) and m["reward/judge/cache_hits"] == 3 * len(trajs)
        assert [t.step_rewards for t in again] == [t.step_rewards for t in trajs]
        # a new worker (new process, later run) shares the disk cache
        third = fresh(episodes)[1]
        RewardPipeline(c).score(third, tasks)
        assert judge.state.requests == 3 * len(trajs)
        assert [t.step_rewards for t in third] == [t.step_rewards for t in trajs]
        # another sample count or model is another request
        RewardPipeline(replace(c, judge_samples=4)).score(fresh(episodes)[1][:1], tasks[:1])
        assert judge.state.requests == 3 * len(trajs) + 1


@pytest.mark.parametrize("behaviour", ["malformed", "wrong_length", "http_500", "not_json"])
def test_judge_retries_then_records_unscored(episodes, behaviour):
    tasks, trajs = fresh(episodes)
    with start_fake_judge(behaviour) as judge:
        c = cfg(
            source="rule",
            contribution_source="judge",
            judge_url=judge.url,
            judge_samples=2,
            judge_max_retries=2,
        )
        pipe = RewardPipeline(c)
        pipe.score(trajs, tasks)  # never raises
        m = pipe.pop_metrics()
        attempts = len(trajs) * 2 * 3  # trajectories x samples x (1 + retries)
        assert judge.state.requests == attempts == m["reward/judge/requests"]
        assert m["reward/judge/retries"] == len(trajs) * 2 * 2
        assert m["reward/judge/failed_samples"] == len(trajs) * 2
        key = {"http_500": "http_errors", "not_json": "malformed"}.get(behaviour, behaviour)
        assert m[f"reward/judge/{key}"] == attempts
        assert m["reward/unscored_trajectories"] == len(trajs) == m["reward/unscored/contribution"]
    rule = fresh(episodes)[1]
    RewardPipeline(cfg()).score(rule, tasks)
    for t, r in zip(trajs, rule, strict=True):
        assert "no usable judge reply in 2 samples" in t.meta["reward_unscored"]["contribution"]
        assert [s.contribution for s in t.steps if not s.is_final] == [0.0] * n_tool(t)
        # SuccCalling and IsSolved still come from the rule
        assert [s.succ_calling for s in t.steps] == [s.succ_calling for s in r.steps]
        assert t.is_solved == r.is_solved


def test_judge_recovers_after_transient_failures_and_tool_mode(episodes):
    tasks, trajs = fresh(episodes)
    with start_fake_judge("wrong_length", fail_first=2) as judge:
        c = cfg(source="judge", judge_url=judge.url, judge_samples=1, judge_max_retries=3, judge_mode="tool")
        pipe = RewardPipeline(c)
        pipe.score(trajs[:1], tasks[:1])
        m = pipe.pop_metrics()
        assert (
            judge.state.requests == 3
            and m["reward/judge/wrong_length"] == 2
            and m["reward/judge/retries"] == 2
        )
        assert m["reward/unscored_trajectories"] == 0
        (reply,) = [e["reply"] for e in judge.state.log if e["reply"]]
        assert trajs[0].is_solved == STATUS[reply["final_answer_status"]]


def test_judge_unreachable_is_unscored_and_falls_back_to_rule(episodes):
    tasks, trajs = fresh(episodes)
    with start_fake_judge() as judge:
        url = judge.url
    c = cfg(source="judge", judge_url=url, judge_samples=1, judge_max_retries=1, unscored_fallback="rule")
    pipe = RewardPipeline(c)
    pipe.score(trajs, tasks)
    m = pipe.pop_metrics()
    assert m["reward/judge/http_errors"] == 2 * len(trajs) and m["reward/unscored_trajectories"] == 0
    assert m["reward/fallback/contribution"] == len(trajs)
    rule = fresh(episodes)[1]
    RewardPipeline(cfg()).score(rule, tasks)
    assert [t.step_rewards for t in trajs] == [t.step_rewards for t in rule]
    assert trajs[0].meta["reward_provenance"]["is_solved"] == "rule (fallback: judge unscored)"


# ---- combination per component ------------------------------------------------------------------


def test_components_from_three_sources_with_provenance(episodes, tmp_path):
    tasks, trajs = fresh(episodes)
    ann = tmp_path / "ann.jsonl"
    rng = random.Random(0)
    contrib = {t.task_id: [round(rng.random(), 3) for _ in range(n_tool(t))] for t in trajs}
    ann.write_text(
        "\n".join(
            json.dumps(
                {"task_id": k, "succ_calling": [0.0] * len(v), "contribution": v, "is_solved": "Unsolved"}
            )
            for k, v in contrib.items()
        )
    )
    with start_fake_judge() as judge:
        c = cfg(
            alpha=2.0,
            source="rule",
            contribution_source="file",
            is_solved_source="judge",
            judge_url=judge.url,
            judge_samples=2,
            file_path=str(ann),
        )
        RewardPipeline(c).score(trajs, tasks)
        env = fresh(episodes)[1]
        for traj, raw, task in zip(trajs, env, tasks, strict=True):
            succ = [s.succ_calling for s in raw.steps if not s.is_final]  # the environment's verdict
            expected = [(2.0 * s + c) / 3.0 for s, c in zip(succ, contrib[traj.task_id], strict=True)]
            if traj.steps[-1].is_final:
                replies = [e["reply"] for e in by_prompt(judge.state, task)]
                expected.append(sum(STATUS[r["final_answer_status"]] for r in replies) / 2)
            assert traj.step_rewards == pytest.approx(expected)
            assert traj.meta["reward_provenance"] == {
                "succ_calling": "rule",
                "contribution": "file",
                "is_solved": "judge",
            }
            assert traj.meta["reward_source"] == "succ_calling=rule,contribution=file,is_solved=judge"
            assert traj.meta["reward_details"]["file"]["annotation"].startswith("ann.jsonl:")


def test_custom_function_source_per_component(episodes):
    tasks, trajs = fresh(episodes)

    @register_reward_source("half", components=("contribution",))
    def half(traj, task):
        n = sum(not s.is_final for s in traj.steps)
        if traj.end_reason == "max_turns":
            raise RuntimeError("cannot read this one")
        return [], [0.5] * n, None

    try:
        pipe = RewardPipeline(cfg(contribution_source="half", alpha=0.0))
        pipe.score(trajs, tasks)
        assert trajs[0].step_rewards[:-1] == [0.5] * n_tool(trajs[0])
        assert trajs[3].meta["reward_unscored"]["contribution"] == "RuntimeError: cannot read this one"
        assert pipe.pop_metrics()["reward/unscored/contribution"] == 1
        bad = StepRLConfig(reward=cfg(source="half"))
        with pytest.raises(ConfigError, match="reward.source 'half' gives only"):
            validate(bad)
    finally:
        REWARD_SOURCES.pop("half")


# ---- file ---------------------------------------------------------------------------------------


def _offline(task_id: str, n_steps: int, answered: bool = True) -> Trajectory:
    t = Trajectory(task_id=task_id, prompt_ids=[1])
    for k in range(n_steps + answered):
        t.append([2, 3], is_action=True, step=k)
        t.steps.append(StepRecord(text="x", is_final=answered and k == n_steps))
    t.end_reason = "answer" if answered else "max_turns"
    return t


@pytest.mark.skipif(not PUBLISHED.is_file(), reason="published StepTool annotations not on this machine")
def test_file_source_reads_the_published_annotations():
    raw = json.loads(PUBLISHED.read_text())
    qids = sorted(raw)
    trajs = [_offline(q, len(raw[q]["answer_steps"])) for q in qids]
    tasks = [Task(q, "atlas", raw[q]["query"], "") for q in qids]
    RewardPipeline(cfg(source="file", file_path=str(PUBLISHED), alpha=1.0)).score(trajs, tasks)
    for q, t in zip(qids, trajs, strict=True):  # independent: average the judge samples of the file
        samples = [raw[q]["process_reward"][j] for j in sorted(raw[q]["process_reward"], key=int)]
        k = len(samples)
        n = len(raw[q]["answer_steps"])
        succ = [sum(s["succeed_tool_calling"][i] for s in samples) / k for i in range(n)]
        contrib = [sum(s["contributions"][i] for s in samples) / (5 * k) for i in range(n)]
        status = [v.split(".")[-1] for v in raw[q]["is_solved"].values()]
        solved = sum(STATUS[s] for s in status) / len(status)
        expected = [(s + c) / 2 for s, c in zip(succ, contrib, strict=True)] + [solved]
        assert t.step_rewards == pytest.approx(expected)
        assert t.meta["reward_details"]["file"]["judge_samples"] == k


def test_file_source_missing_annotations_error_or_unscored(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(
        json.dumps({"task_id": "q1", "succ_calling": [1, 0], "contribution": [0.2, 0.4], "is_solved": 0.5})
        + "\n"
    )
    trajs = [_offline("q1", 2), _offline("q2", 1), _offline("q1", 3, answered=False)]
    tasks = [Task(t.task_id, "atlas", "?", "") for t in trajs]
    with pytest.raises(AnnotationError, match="no annotation for task_id 'q2'.*2 of 3 trajectories"):
        RewardPipeline(cfg(source="file", file_path=str(path))).score(trajs, tasks)
    pipe = RewardPipeline(cfg(source="file", file_path=str(path), file_missing="unscored", alpha=1.0))
    pipe.score(trajs, tasks)
    assert trajs[0].step_rewards == pytest.approx([0.6, 0.2, 0.5])
    assert "no annotation" in trajs[1].meta["reward_unscored"]["succ_calling"] and trajs[1].step_rewards == [
        0,
        0,
    ]
    assert "has 2 steps, the trajectory 3" in trajs[2].meta["reward_unscored"]["contribution"]
    assert "is_solved" not in trajs[2].meta["reward_unscored"]  # no answer: nothing to score
    m = pipe.pop_metrics()
    assert m["reward/file/missing"] == 2 and m["reward/unscored_trajectories"] == 2
    path.write_text('{"task_id": "q1", "succ_calling": [2], "contribution": [0.1]}\n')
    with pytest.raises(ValueError, match=r"a.jsonl:1: succ_calling values must be in \[0, 1\]"):
        RewardPipeline(cfg(source="file", file_path=str(path)))


# ---- config -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reward, message",
    [
        ({"source": "oracle"}, "reward.source must be one of"),
        ({"source": "prm"}, "reward.source 'prm' gives only ['contribution'], not succ_calling"),
        ({"contribution_source": "judge", "judge_model": "m"}, "reward.judge_url must be an http(s) URL"),
        ({"source": "judge", "judge_url": "http://x/v1"}, "reward.judge_model must be set"),
        ({"unscored_fallback": "nothing"}, "reward.unscored_fallback must be zero or one of"),
        (
            {"contribution_source": "prm", "prm_path": "/nonexistent"},
            "reward.prm_path must be a PRM directory",
        ),
        (
            {"source": "file", "file_path": "/nonexistent.jsonl"},
            "reward.file_path must be an annotation file",
        ),
        ({"judge_samples": 0}, "reward.judge_samples must be >= 1"),
        ({"judge_mode": "xml"}, "reward.judge_mode must be json_schema or tool"),
        ({"file_missing": "ignore"}, "reward.file_missing must be error or unscored"),
        ({"num_workers": 0}, "reward.num_workers must be >= 1"),
    ],
)
def test_reward_config_is_validated(reward, message, monkeypatch):
    monkeypatch.delenv("STEPRL_JUDGE_URL", raising=False)
    monkeypatch.delenv("STEPRL_JUDGE_MODEL", raising=False)
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(StepRLConfig(reward=RewardConfig(**reward)))


def test_judge_endpoint_from_the_environment(monkeypatch):
    monkeypatch.setenv("STEPRL_JUDGE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("STEPRL_JUDGE_MODEL", "m")
    validate(StepRLConfig(reward=RewardConfig(source="judge")))


def test_averaging_uses_the_shared_helpers():
    from steprl.reward_sources.judge import JudgeSample, aggregate_samples

    s = aggregate_samples(
        [JudgeSample((1, 0), (5, 1), "Solved"), None, JudgeSample((1, 1), (2, 4), "Unsure")]
    )
    assert s.succ_calling == [1.0, 0.5] and s.contribution == pytest.approx([0.7, 0.5])
    assert s.is_solved == 0.75 and s.meta == {"judge_samples": 2, "judge_requested": 3}
    assert math.isclose(aggregate_samples([None, None]).is_solved or 0.0, 0.0)
    assert aggregate_samples([None, None]).unscored == "no usable judge reply in 2 samples"


# ---- the controller: reward actors, metrics, rollouts saved as an offline dataset -----------------


@pytest.mark.slow
def test_controller_scores_on_reward_actors_and_saves_rollouts(tmp_path, tiny_model_path, ray_cluster):
    from steprl.algorithms.advantages import AdvantageConfig, compute_advantages
    from steprl.controller import Controller
    from steprl.data import read_trajectories_parquet
    from steprl.main import load_config
    from steprl.methods import get_method
    from steprl.protocol import collate

    with start_fake_judge(latency=0.01) as judge:
        config, _ = load_config(
            [
                "recipe=grpo",
                "rollout.engine=hf",
                "actor.world_size=1",
                "algorithm.kl_coef=0",
                "trainer.tasks_per_iteration=2",
                "rollout.group_size=2",
                "rollout.max_turns=2",
                "rollout.max_tokens_per_turn=24",
                "rollout.max_response_tokens=96",
                "algorithm.ppo_epochs=1",
                "algorithm.num_mini_batches=1",
                "data.train_tasks=8",
                "data.test_tasks=2",
                "trainer.logger=[jsonl]",
                "trainer.progress=false",
                "trainer.save_rollouts=true",
                "reward.num_workers=2",
                "reward.is_solved_source=judge",
                f"reward.judge_url={judge.url}",
                "reward.judge_model=fake-judge",
                "reward.judge_samples=2",
            ]
        )
        ctl = Controller(config, tiny_model_path, tmp_path)
        try:
            ctl.start_actor()
            ctl.start_rest(tiny_model_path)
            method = get_method("ppo")
            method.setup(ctl)
            metrics = method.iteration(ctl, 1)
        finally:
            ctl.shutdown()
        assert judge.state.requests == 4 * 2  # 4 episodes x 2 samples, spread over 2 reward actors
    assert metrics["reward/trajectories"] == 4 and metrics["reward/judge/requests"] == 8
    assert metrics["reward/unscored_trajectories"] == 0 and metrics["reward/seconds"] > 0
    assert "actor/pg_loss" in metrics
    trajs = read_trajectories_parquet(tmp_path / "rollouts" / "iter_00001.parquet")
    assert len(trajs) == 4 and sorted({t.group_id for t in trajs}) == sorted({t.task_id for t in trajs})
    for t in trajs:  # what was saved is the scored batch, provenance included
        t.validate()
        assert t.meta["reward_provenance"] == {
            "succ_calling": "rule",
            "contribution": "rule",
            "is_solved": "judge",
        }
        tool = [s for s in t.steps if not s.is_final]
        assert [s.reward for s in tool] == pytest.approx(
            [(s.succ_calling + s.contribution) / 2 for s in tool]
        )
        if t.steps and t.steps[-1].is_final:
            assert t.steps[-1].reward == t.is_solved
    # read back as an offline dataset: collate and compute GRPO advantages from the saved rewards
    batch = collate(trajs, pad_id=0)
    out = compute_advantages(batch, None, AdvantageConfig(estimator="grpo", gamma=1.0, lam=1.0))
    assert out.advantages.shape == batch.input_ids.shape and out.advantages.isfinite().all()
    assert (out.advantages[~batch.action_mask] == 0).all()
