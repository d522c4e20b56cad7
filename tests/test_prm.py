"""Process reward model: P(yes) is the softmax over the yes/no logits after the question (checked
against an independent computation), training separates a toy set, sibling pairs become labelled
examples, and the ``prm`` reward source scores each step's prefix."""

from __future__ import annotations

import math
import random

import pytest
import torch

from steprl.config import RewardConfig
from steprl.prm import (
    PRM_QUESTION,
    ProcessRewardModel,
    SiblingPair,
    examples_from_sibling_pairs,
    sibling_pairs_from_trajectories,
    train_prm,
)
from steprl.reward_sources import RewardPipeline
from tools_env.suites.atlas import call_text


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The model is tiny: more threads only contend (2 cores shared with other processes)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def prm(tiny_model_path):
    return ProcessRewardModel(tiny_model_path, batch_size=3)


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _reference_p_yes(model, tokenizer, ctx):
    """softmax([l_yes, l_no])[0] at the last position of ctx + question, computed in float64."""
    q = _ids(tokenizer, PRM_QUESTION)
    (yes,), (no,) = _ids(tokenizer, "+"), _ids(tokenizer, "-")
    with torch.no_grad():
        logits = model(torch.tensor([ctx + q])).logits[0, -1].double()
    ly, ln = float(logits[yes]), float(logits[no])
    return math.exp(ly) / (math.exp(ly) + math.exp(ln))


def test_p_yes_is_the_softmax_over_the_yes_no_logits(prm, tiny_model_path, tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32).eval()
    texts = [
        "Population of Zorvelia?",
        "lookup Zorvelia area -> 42, then calculator 42 + 7 = 49",
        "x",
        "The answer is 12.",
        "calculator(3 * 4)",
    ]
    contexts = [_ids(tokenizer, t) for t in texts]
    got = prm.score(contexts)  # batches of 3, right-padded to different lengths
    expected = [_reference_p_yes(model, tokenizer, c) for c in contexts]
    assert got == pytest.approx(expected, abs=1e-5)
    assert all(0.0 < p < 1.0 for p in got) and len(set(round(p, 6) for p in got)) > 1
    # a context longer than the model keeps its last tokens (the step being judged is at the end)
    long = (contexts[1] * 200)[:1500]
    keep = prm.max_len - len(prm.suffix)
    assert prm.score([long]) == pytest.approx([_reference_p_yes(model, tokenizer, long[-keep:])], abs=1e-5)


def test_tokens_must_be_single_tokens(tiny_model_path):
    with pytest.raises(ValueError, match="PRM yes_token 'definitely' is not one token"):
        ProcessRewardModel(tiny_model_path, yes_token="definitely")
    with pytest.raises(ValueError, match="are the same token"):
        ProcessRewardModel(tiny_model_path, yes_token="+", no_token="+")


def test_training_separates_a_toy_set(prm, tiny_model_path, tokenizer, tmp_path):
    rng = random.Random(0)
    (good,), (bad,) = _ids(tokenizer, "!"), _ids(tokenizer, "?")

    def example(label):
        body = [rng.randrange(100, 2000) for _ in range(rng.randint(6, 16))]
        return body + [good if label else bad], label

    train = [example(i % 2 == 0) for i in range(64)]
    held = [example(i % 2 == 0) for i in range(20)]

    def gap(model):
        p = model.score([c for c, _ in held])
        pos = [x for x, (_, y) in zip(p, held, strict=True) if y]
        neg = [x for x, (_, y) in zip(p, held, strict=True) if not y]
        return sum(pos) / len(pos) - sum(neg) / len(neg), min(pos), max(neg)

    before, _, _ = gap(prm)
    losses = []
    out = train_prm(
        tiny_model_path, train, str(tmp_path / "prm"), epochs=10, lr=2e-3, batch_size=8,
        on_step=lambda step, loss: losses.append(loss),
    )  # fmt: skip
    trained = ProcessRewardModel(out)
    after, lowest_pos, highest_neg = gap(trained)
    assert abs(before) < 0.2 and after > 0.4 and lowest_pos > highest_neg
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4
    assert (tmp_path / "prm" / "prm_config.json").is_file()


def _demo(task, turns):
    """user + alternating (assistant call, tool result) + the answer."""
    msgs = [{"role": "user", "content": task.question}]
    for name, args, result in turns:
        msgs += [{"role": "assistant", "content": call_text(name, args)}, {"role": "tool", "content": result}]
    return msgs + [{"role": "assistant", "content": f"The answer is {task.answer}."}]


def test_sibling_pairs_become_labelled_examples(encoder, atlas):
    task = atlas.tasks("test", 1, 0)[0]
    c, f = task.meta["countries"][0], task.meta["field"]
    first = ("lookup", {"country": c, "field": f}, str(atlas.world[c][f]))
    a = encoder.encode_demonstration(
        task.task_id, _demo(task, [first, ("calculator", {"expression": "1+1"}, "2")])
    )
    b = encoder.encode_demonstration(
        task.task_id, _demo(task, [first, ("weather", {"city": c}, "sunny, 3 C")])
    )
    a.is_solved, b.is_solved = 0.0, 1.0
    (pair,) = sibling_pairs_from_trajectories([a, b])
    ids_a, ids_b = a.prompt_ids + a.response_ids, b.prompt_ids + b.response_ids
    cut = len(a.prompt_ids) + a.step_index.index(1)  # where step 1 starts: after step 0's result
    end_a = len(a.prompt_ids) + max(i for i, s in enumerate(a.step_index) if s == 1) + 1
    assert pair.prefix == ids_a[:cut] == ids_b[:cut] and pair.first == ids_a[cut:end_a]
    assert "calculator" in encoder.tokenizer.decode(pair.first) and "weather" in encoder.tokenizer.decode(
        pair.second
    )
    assert "weather" not in encoder.tokenizer.decode(pair.first) and pair.second_value > pair.first_value
    examples = examples_from_sibling_pairs([pair])
    assert examples == [(pair.prefix + pair.second, True), (pair.prefix + pair.first, False)]
    assert examples_from_sibling_pairs([SiblingPair([1], [2], [3], 0.5, 0.5)]) == []  # a tie says nothing
    other = encoder.encode_demonstration("other", _demo(atlas.tasks("test", 2, 0)[1], [first]))
    other.group_id = a.group_id = b.group_id = "g"
    assert len(sibling_pairs_from_trajectories([a, b, other])) == 1  # another prompt is no sibling


def test_prm_source_scores_each_step_prefix(prm, encoder, atlas, tiny_model_path):
    tasks = atlas.tasks("test", 3, 0)
    rng = random.Random(0)
    trajs = [encoder.encode_demonstration(t.task_id, atlas.demonstration(t, rng, 0.5)) for t in tasks]
    cfg = RewardConfig(source="rule", contribution_source="prm", prm_path=tiny_model_path, alpha=1.0)
    pipe = RewardPipeline(cfg)
    pipe.score(trajs, tasks)
    for traj in trajs:
        ids = traj.prompt_ids + traj.response_ids
        prefixes = []
        for k, step in enumerate(traj.steps):
            if not step.is_final:  # up to and including step k's tool result
                last = max(i for i, s in enumerate(traj.step_index) if s == k)
                assert traj.obs_mask[last] == 1
                prefixes.append(ids[: len(traj.prompt_ids) + last + 1])
        expected = prm.score(prefixes)
        # batched vs one-by-one float32 forward passes differ in the last bits
        assert [s.contribution for s in traj.steps if not s.is_final] == pytest.approx(expected, abs=1e-5)
        assert traj.meta["reward_provenance"]["contribution"] == "prm"
        assert traj.step_rewards[:-1] == pytest.approx(
            [(s.succ_calling + s.contribution) / 2 for s in traj.steps[:-1]]
        )
    assert pipe.pop_metrics()["reward/prm/steps"] == sum(t.num_steps - 1 for t in trajs)
