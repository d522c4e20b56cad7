"""Token in / token out: demonstrations and rollouts share one token layout, masks are exact."""

from __future__ import annotations

import random

import torch

from steprl.engines.base import Generation, RolloutEngine
from steprl.episode import EpisodeBudget, run_episodes
from steprl.protocol import collate
from tools_env import ToolEnv, get_parser


def _full_ids(encoder, atlas, messages):
    text = encoder.render([{"role": "system", "content": atlas.system_prompt}, *messages])
    return encoder.encode_text(text)


def test_demonstration_tokens_equal_the_templated_conversation(encoder, atlas):
    rng = random.Random(0)
    for task in atlas.tasks("train", 20, 3):
        msgs = atlas.demonstration(task, rng, suboptimal_share=0.5)
        traj = encoder.encode_demonstration(task.task_id, msgs)
        traj.validate()
        ids = traj.prompt_ids + traj.response_ids
        full = _full_ids(encoder, atlas, msgs)
        # the template ends the last turn with "<|im_end|>\n"; the episode stops at <|im_end|>
        assert full[: len(ids)] == ids and len(full) - len(ids) <= 1
        assistant_turns = [m for m in msgs if m["role"] == "assistant"]
        assert traj.num_steps == len(assistant_turns)
        for k, turn in enumerate(assistant_turns):  # every action span decodes to its turn
            span = [
                t
                for t, a, s in zip(traj.response_ids, traj.action_mask, traj.step_index, strict=True)
                if a and s == k
            ]
            assert encoder.tokenizer.decode(span[:-1]) == turn["content"]
            assert span[-1] == encoder.eot_id
        for t, o in zip(traj.response_ids, traj.obs_mask, strict=True):  # tool results are observations
            if t == encoder.tokenizer.convert_tokens_to_ids("<tool_response>"):
                assert o == 1


class ReplayEngine(RolloutEngine):
    """Replays scripted turns through the engine interface; an episode is known by its prompt ids."""

    def __init__(self, scripts: dict[tuple[int, ...], list[list[int]]], stop: int) -> None:
        self.scripts, self.stop = scripts, stop
        self.turn = dict.fromkeys(scripts, 0)

    def generate(self, prompts, max_tokens, temperature, seed=None):
        gens = []
        for p, m in zip(prompts, max_tokens, strict=True):
            key = next(k for k in self.scripts if tuple(p[: len(k)]) == k)
            ids = self.scripts[key][self.turn[key]][:m]
            self.turn[key] += 1
            gens.append(Generation(ids, [-0.5] * len(ids), bool(ids) and ids[-1] == self.stop))
        return gens

    def load_weights(self, weights_dir: str) -> None:
        raise RuntimeError("a replay engine has no weights")


def _scripts(encoder, tasks, turns):
    return {
        tuple(encoder.start(t.question)[1]): [encoder.action_ids(x) for x in ts]
        for t, ts in zip(tasks, turns, strict=True)
    }


def test_episode_masks_end_reasons_and_truncation(encoder, atlas):
    tasks = atlas.tasks("test", 3, 0)
    demo = atlas.demonstration(tasks[0], random.Random(1), 0.0)
    good = [m["content"] for m in demo if m["role"] == "assistant"]
    broken = [
        '<tool_call>\n{"name": "lookup", "arguments": {"country": 1, "field": "area"}}\n</tool_call>',
        "The answer is 0.",
    ]
    looping = ['<tool_call>\n{"name": "weather", "arguments": {"city": "X"}}\n</tool_call>'] * 10
    engine = ReplayEngine(_scripts(encoder, tasks, [good, broken, looping]), encoder.eot_id)
    trajs = run_episodes(
        engine,
        ToolEnv(),
        {"atlas": encoder},
        get_parser("hermes"),
        tasks,
        EpisodeBudget(max_turns=6, max_response_tokens=600, max_tokens_per_turn=60),
    )
    a, b, c = trajs
    assert (
        a.end_reason == "answer"
        and a.done
        and not a.truncated
        and a.final_answer == f"The answer is {tasks[0].answer}."
    )
    assert [s.succ_calling for s in a.steps[:-1]] == [1.0] * (len(good) - 1)
    assert b.steps[0].succ_calling == 0.0 and "is not of type 'string'" in b.steps[0].observation
    assert c.end_reason == "max_turns" and c.truncated and c.num_steps == 6
    for t in trajs:
        t.validate()
        assert all(lp == -0.5 for lp, m in zip(t.rollout_logprobs, t.action_mask, strict=True) if m)
        assert all(lp == 0.0 for lp, m in zip(t.rollout_logprobs, t.obs_mask, strict=True) if m)
    batch = collate(trajs, encoder.tokenizer.pad_token_id)
    assert not (batch.action_mask & batch.obs_mask).any()
    assert ((batch.step_index >= 0) == batch.action_mask).all()
    assert not (batch.action_mask & ~batch.attention_mask).any()
    # the tool result text is inside observation tokens only
    obs_text = encoder.tokenizer.decode(batch.input_ids[0][batch.obs_mask[0]].tolist())
    assert "<tool_response>" in obs_text and tasks[0].answer in obs_text


def test_token_budget_truncates_and_keeps_the_partial_turn(encoder, atlas):
    tasks = atlas.tasks("test", 1, 0)
    long_turn = ["x" * 400]
    engine = ReplayEngine(_scripts(encoder, tasks, [long_turn]), encoder.eot_id)
    (traj,) = run_episodes(
        engine,
        ToolEnv(),
        {"atlas": encoder},
        get_parser("hermes"),
        tasks,
        EpisodeBudget(max_turns=4, max_response_tokens=100, max_tokens_per_turn=20),
    )
    assert traj.end_reason == "max_tokens" and traj.truncated
    assert len(traj.response_ids) == 20 and traj.num_steps == 1
    traj.validate()


def test_collate_right_pads_and_marks_last_index(encoder, atlas):
    rng = random.Random(2)
    trajs = [
        encoder.encode_demonstration(t.task_id, atlas.demonstration(t, rng, 0.3))
        for t in atlas.tasks("train", 4, 0)
    ]
    batch = collate(trajs, pad_id=encoder.tokenizer.pad_token_id)
    for b, t in enumerate(trajs):
        n = len(t.prompt_ids) + len(t.response_ids)
        assert int(batch.last_index[b]) == n - 1
        assert batch.attention_mask[b, :n].all() and not batch.attention_mask[b, n:].any()
        assert torch.equal(batch.step_mask[b], torch.arange(batch.step_mask.shape[1]) < t.num_steps)
