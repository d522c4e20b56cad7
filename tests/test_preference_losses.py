"""Golden tests for the preference / ranking recipes' distinguishing pieces (eto, trice, sft, rft):
DPO and RRHF losses against hand computations and loop references (ties, masks, padding), the
step-level pair builder on hand-made trajectories, truncation that would leave an empty response,
the SFT last-turn mask, chat encoding of published-format files, and the DPO / ranking updates
through a real (single-rank, gloo) FSDP2 actor worker."""

from __future__ import annotations

import csv
import json
import math
import os
import socket
from pathlib import Path

import pytest
import torch

from steprl.algorithms.preference import (
    EmptyResponseError,
    best_candidate,
    build_step_pairs,
    candidate_scores,
    divergence,
    dpo_loss,
    length_normalized_logprobs,
    require_nonempty,
    rrhf_rank_loss,
    sequence_logprobs,
    trice_loss,
    truncate_pair,
)
from steprl.methods.rft import keep_solved
from steprl.protocol import StepRecord, Trajectory, collate
from steprl.sft import conversation_trajectories, encode_conversation, last_step_mask, sft_tensors


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# ---- DPO -------------------------------------------------------------------------------------------


def test_dpo_loss_golden_with_padding_pair():
    pc = torch.tensor([-3.0, -10.0, -1.0], requires_grad=True)
    pr = torch.tensor([-4.0, -9.0, -1.0], requires_grad=True)
    rc = torch.tensor([-3.5, -10.0, -7.0])
    rr = torch.tensor([-3.5, -10.5, 0.0])
    w = torch.tensor([1.0, 1.0, 0.0])  # the third pair is padding
    beta = 0.1
    loss, m = dpo_loss(pc, pr, rc, rr, beta, weight=w)
    # by hand: z = beta * ((pc - rc) - (pr - rr))
    z0 = 0.1 * ((-3.0 + 3.5) - (-4.0 + 3.5))  # 0.1 * (0.5 + 0.5) = 0.1
    z1 = 0.1 * ((-10.0 + 10.0) - (-9.0 + 10.5))  # 0.1 * (0 - 1.5) = -0.15
    expected = (-math.log(_sig(z0)) - math.log(_sig(z1))) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert m["reward_accuracy"] == pytest.approx(0.5)
    assert m["reward_margin"] == pytest.approx((z0 + z1) / 2, abs=1e-6)
    assert m["chosen_reward"] == pytest.approx((0.1 * 0.5 + 0.0) / 2, abs=1e-6)
    loss.backward()
    # d/d pc_i of -log sigmoid(z_i) / n = -beta * sigmoid(-z_i) / n; padding gets no gradient
    assert pc.grad.tolist() == pytest.approx([-0.1 * _sig(-z0) / 2, -0.1 * _sig(-z1) / 2, 0.0], abs=1e-7)
    assert pr.grad.tolist() == pytest.approx([0.1 * _sig(-z0) / 2, 0.1 * _sig(-z1) / 2, 0.0], abs=1e-7)


def test_dpo_loss_equal_policy_and_reference_is_log2_and_keeps_a_graph_when_all_padding():
    x = torch.tensor([-5.0, -2.0], requires_grad=True)
    loss, m = dpo_loss(x, x * 2, x.detach(), (x * 2).detach(), beta=0.5)
    assert loss.item() == pytest.approx(math.log(2.0)) and m["reward_accuracy"] == 0.0
    loss, _ = dpo_loss(x, x, x.detach(), x.detach(), 0.1, weight=torch.zeros(2))
    assert loss.item() == 0.0 and loss.requires_grad  # a rank with only padding pairs can still step
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(x, x, x, x, beta=0.0)


def test_sequence_logprobs_sum_only_masked_tokens():
    lp = torch.tensor([[0.0, -1.0, -2.0, -3.0, -9.0], [0.0, -0.5, -0.25, -7.0, -7.0]])
    mask = torch.tensor([[0, 1, 0, 1, 0], [0, 1, 1, 0, 0]], dtype=torch.bool)  # obs / padding off
    assert sequence_logprobs(lp, mask).tolist() == [-4.0, -0.75]
    assert length_normalized_logprobs(lp, mask).tolist() == [-2.0, -0.375]
    assert length_normalized_logprobs(lp, mask, 0.0).tolist() == [-4.0, -0.75]
    empty = torch.zeros(1, 5, dtype=torch.bool)
    assert length_normalized_logprobs(lp[:1], empty).tolist() == [0.0]  # not NaN


# ---- RRHF / TRICE -------------------------------------------------------------------------------------


def _rrhf_reference(p: list[float], s: list[float], valid: list[bool]) -> float:
    total = 0.0
    for i in range(len(p)):
        for j in range(len(p)):
            if valid[i] and valid[j] and s[i] < s[j]:
                total += max(0.0, p[i] - p[j])
    return total


def test_rrhf_rank_loss_golden_with_ties_and_invalid_candidates():
    p = torch.tensor([[-1.0, -0.5, -2.0, -0.1], [-1.0, -1.0, -0.2, -3.0]])
    s = torch.tensor([[0.0, 1.0, 1.0, 0.5], [1.0, 1.0, 1.0, 0.0]])
    valid = torch.tensor([[True, True, True, True], [True, True, True, False]])
    out = rrhf_rank_loss(p, s, valid)
    # group 0 by hand: worse->better pairs (0,1): max(0,-1+.5)=0, (0,2): max(0,-1+2)=1, (0,3): max(0,-1+.1)=0,
    # (3,1): max(0,-.1+.5)=.4, (3,2): max(0,-.1+2)=1.9; the tie (1,2) gives nothing -> 3.3
    assert out[0].item() == pytest.approx(3.3)
    # group 1: all valid scores tie; candidate 3 (lower score) is invalid -> 0
    assert out[1].item() == 0.0
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        p = torch.randn(1, 5, generator=g)
        s = torch.randint(0, 3, (1, 5), generator=g).float() / 2
        v = torch.rand(1, 5, generator=g) > 0.2
        ref = _rrhf_reference(p[0].tolist(), s[0].tolist(), v[0].tolist())
        assert rrhf_rank_loss(p, s, v).item() == pytest.approx(ref, abs=1e-6)


def test_best_candidate_first_on_ties_and_skips_invalid():
    s = torch.tensor([[0.5, 1.0, 1.0], [1.0, 0.0, 0.5], [0.0, 0.0, 0.0]])
    assert best_candidate(s).tolist() == [1, 0, 0]
    v = torch.tensor([[True, False, True], [False, True, True], [False, False, True]])
    assert best_candidate(s, v).tolist() == [2, 2, 2]


def test_trice_loss_golden_with_padding_tokens_and_padding_group():
    # 2 real groups + 1 padding group, k = 2 candidates, T = 4 tokens (position 0 = prompt)
    lp = torch.tensor(
        [
            [[0.0, -1.0, -3.0, -5.0], [0.0, -0.2, -0.4, -9.0]],
            [[0.0, -2.0, -2.0, -2.0], [0.0, -1.0, -1.0, -1.0]],
            [[0.0, -8.0, -8.0, -8.0], [0.0, -8.0, -8.0, -8.0]],
        ],
        requires_grad=True,
    )
    act = torch.tensor(
        [
            [[0, 1, 1, 0], [0, 1, 1, 0]],  # last token is an observation / padding
            [[0, 1, 1, 1], [0, 1, 0, 0]],
            [[0, 1, 1, 1], [0, 1, 1, 1]],
        ],
        dtype=torch.bool,
    )
    scores = torch.tensor([[1.0, 0.0], [0.5, 0.5], [1.0, 0.0]])
    real = torch.tensor([1.0, 1.0, 0.0])
    alpha = 2.0
    loss, m = trice_loss(lp, act, scores, real, alpha)
    # group 0: p = [-2, -0.3]; candidate 1 (score 0) is worse than 0 and p_1 > p_0: hinge 1.7;
    #          best = 0, NLL = 2  -> 2 * 1.7 + 2 = 5.4
    # group 1: tie -> no ranking; best = first (0), NLL = mean(2, 2, 2) = 2 -> 2
    assert loss.item() == pytest.approx((5.4 + 2.0) / 2)
    assert m["rank_loss"] == pytest.approx(1.7 / 2) and m["sft_nll"] == pytest.approx(2.0)
    assert m["ranked_pairs"] == pytest.approx(0.5) and m["misordered_pairs"] == pytest.approx(0.5)
    loss.backward()
    assert lp.grad[2].abs().sum() == 0  # padding group
    assert lp.grad[0, 0, 3] == 0 and lp.grad[0, 1, 3] == 0  # masked tokens
    # d/d lp[0,1,t] = alpha * (1/2) / 2 groups for t in {1, 2}: pushes the worse candidate down
    assert lp.grad[0, 1, 1].item() == pytest.approx(alpha * 0.5 / 2)
    # d/d lp[0,0,t] = (-alpha * 1/2 - 1/2) / 2: the better one up (ranking + SFT on the best)
    assert lp.grad[0, 0, 1].item() == pytest.approx((-alpha * 0.5 - 0.5) / 2)


def test_trice_loss_rejects_a_group_without_any_response():
    lp = torch.zeros(1, 2, 3)
    act = torch.zeros(1, 2, 3, dtype=torch.bool)
    with pytest.raises(EmptyResponseError):
        trice_loss(lp, act, torch.tensor([[1.0, 0.0]]), torch.ones(1), 1.0)


def test_candidate_scores_is_solved_decides_step_rewards_break_ties():
    s = candidate_scores([1.0, 1.0, 0.5, 0.0, 0.0], [[1.0], [0.5, 0.0], [], [1.0, 1.0], []], 0.1)
    assert s == pytest.approx([1.1, 1.025, 0.5, 0.1, 0.0])
    assert sorted(range(5), key=lambda i: -s[i]) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError):
        candidate_scores([1.0], [[1.0]], 0.5)


# ---- step-level pairs (ETO) ------------------------------------------------------------------------


def _traj(
    task: str, steps: list[tuple[list[int], list[int]]], rewards: list[float], prompt=(1, 2)
) -> Trajectory:
    """``steps``: (action ids, observation ids) per step; the last step's observation may be empty."""
    t = Trajectory(task_id=task, prompt_ids=list(prompt), group_id=task)
    for k, (action, obs) in enumerate(steps):
        t.append(action, is_action=True, step=k)
        if obs:
            t.append(obs, is_action=False, step=k)
        t.steps.append(StepRecord(text=str(action), is_final=not obs, reward=rewards[k]))
    t.done, t.end_reason = True, "answer"
    t.validate()
    return t


def test_pair_builder_on_hand_made_trajectories():
    a = _traj("q", [([10, 11], [50]), ([20, 21], [])], [1.0, 1.0])
    b = _traj("q", [([10, 11], [50]), ([20, 22, 23], [])], [1.0, 0.0])  # same step 0, diverges at step 1
    c = _traj("q", [([12], [51]), ([20], [])], [0.25, 1.0])  # diverges at step 0
    d = _traj("other", [([12], [51]), ([20], [])], [0.0, 0.0])  # another task: never paired with q's
    assert divergence(a, b) == (1, 3) and divergence(a, c) == (0, 0)
    pairs = build_step_pairs([a, b, c, d], by="step_reward")
    got = sorted(
        (p.step, p.prompt_ids, p.chosen_ids, p.rejected_ids, p.chosen_score, p.rejected_score) for p in pairs
    )
    assert got == [
        # (a, c) and (b, c) at step 0 are the same pair (identical prefix and actions): kept once
        (0, [1, 2], [10, 11], [12], 1.0, 0.25),
        # a and b share prompt + step 0 (action and observation); the better step 1 is a's
        (1, [1, 2, 10, 11, 50], [20, 21], [20, 22, 23], 1.0, 0.0),
    ]
    # ties give no pair: r_0 = 1 on both sides, and the returns from step 0 are 2 on both sides
    tie = _traj("q", [([12], [51]), ([20], [])], [1.0, 1.0])
    assert (
        build_step_pairs([a, tie], by="step_reward") == [] and build_step_pairs([a, tie], by="return") == []
    )
    # by discounted return from k: a: 1 + 0.5 * 1 = 1.5, c: 0.25 + 0.5 * 1 = 0.75
    by_return = build_step_pairs([a, c], by="return", gamma=0.5)
    assert [(p.chosen_ids, p.chosen_score, p.rejected_score) for p in by_return] == [([10, 11], 1.5, 0.75)]


def test_pair_builder_skips_prefixes_that_differ_in_an_observation_or_end_early():
    a = _traj("q", [([10], [50]), ([20], [])], [1.0, 1.0])
    b = _traj("q", [([10], [51]), ([21], [])], [1.0, 0.0])  # same action, different tool output
    assert divergence(a, b) is None and build_step_pairs([a, b]) == []
    prefix = _traj("q", [([10], [50])], [0.0])  # a's first step only (cut before step 1)
    assert divergence(a, prefix) is None
    other_prompt = _traj("q", [([11], [50]), ([20], [])], [0.0, 0.0], prompt=(1, 3))
    assert divergence(a, other_prompt) is None


def test_truncation_that_would_empty_a_response_drops_the_pair():
    prompt, chosen, rejected = list(range(100)), [7, 8, 9], [7, 8, 5]
    assert truncate_pair(prompt, chosen, rejected, 200, 150) == (prompt, chosen, rejected)  # fits
    # the prompt keeps its last 99 tokens, leaving 2 tokens of room: both responses become [7, 8],
    # no preference is left, and the pair is dropped rather than trained on
    assert truncate_pair(prompt, chosen, rejected, 101, 99) is None
    fitted = truncate_pair(prompt, chosen, [6, 8, 9], 101, 100)  # room for 1 token
    assert fitted == (prompt, [7], [6])
    assert truncate_pair(prompt, [], rejected, 200, 150) is None  # an empty side is never trained on
    with pytest.raises(ValueError, match="max_prompt_length"):
        truncate_pair(prompt, chosen, rejected, 100, 100)


def test_empty_response_is_detected_before_training():
    counts = torch.tensor([[3, 2], [4, 0], [0, 0]])  # pair 1 has an empty rejected side; row 2 is padding
    with pytest.raises(EmptyResponseError, match=r"rows \[1\]"):
        require_nonempty(counts, torch.tensor([True, True, False]))
    require_nonempty(counts, torch.tensor([True, False, False]))


# ---- SFT and RFT data ----------------------------------------------------------------------------------


def test_sft_last_turn_mask():
    a = _traj("a", [([10, 11], [50, 51]), ([20], [52]), ([30, 31, 32], [])], [0, 0, 1])
    b = _traj("b", [([40], [])], [1])
    batch = collate([a, b], pad_id=0)
    mask = last_step_mask(batch.action_mask, batch.step_index)
    # a: prompt (2) + step0 (2) + obs (2) + step1 (1) + obs (1) + step2 (3) -> step 2 at positions 8..10
    assert mask[0].nonzero().flatten().tolist() == [8, 9, 10]
    assert mask[1].nonzero().flatten().tolist() == [2]  # one step: the last is the only one
    assert not (mask & ~batch.action_mask).any()
    t_all, t_last = sft_tensors([a, b], 0, "all"), sft_tensors([a, b], 0, "last")
    assert t_all["action_mask"][0].sum() == 6 and t_last["action_mask"][0].sum() == 3
    with pytest.raises(ValueError, match="loss_on"):
        sft_tensors([a], 0, "first")


def test_encode_conversation_with_a_mid_conversation_user_turn(tokenizer):
    msgs = [
        {"role": "system", "content": "You can call tools."},
        {"role": "user", "content": "What is the capital of Norvia?"},
        {"role": "assistant", "content": "Thought: look it up"},
        {"role": "tool", "content": '{"capital": "Ost"}'},
        {"role": "user", "content": "Please continue."},
        {"role": "assistant", "content": "The capital is Ost."},
    ]
    t = encode_conversation(tokenizer, msgs, "c1")
    t.validate()
    assert t.num_steps == 2 and [s.is_final for s in t.steps] == [False, True]
    actions = [
        [i for i, a, s in zip(t.response_ids, t.action_mask, t.step_index, strict=True) if a and s == k]
        for k in range(2)
    ]
    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert [tokenizer.decode(x[:-1]) for x in actions] == ["Thought: look it up", "The capital is Ost."]
    assert all(x[-1] == eot for x in actions)
    obs = tokenizer.decode([i for i, o in zip(t.response_ids, t.obs_mask, strict=True) if o])
    assert '{"capital": "Ost"}' in obs and "Please continue." in obs and "user" in obs
    # the whole thing is exactly what the chat template renders
    rendered = tokenizer.apply_chat_template(msgs, tokenize=False)
    assert tokenizer.decode(t.prompt_ids + t.response_ids) == rendered.removesuffix("\n")
    kept, dropped = conversation_trajectories(
        [("c1", msgs), ("c2", msgs)], tokenizer, len(t.prompt_ids) + len(t.response_ids)
    )
    assert len(kept) == 2 and dropped == 0
    kept, dropped = conversation_trajectories([("c1", msgs)], tokenizer, 10)
    assert kept == [] and dropped == 1


def _write_sft_json(path: Path, tool_role: str = "function") -> Path:
    def conv(n_steps: int) -> list[dict[str, str]]:
        c = [
            {"from": "system", "value": "Tools: get_weather, Finish"},
            {"from": "user", "value": "Weather in Paris?"},
        ]
        for k in range(n_steps):
            c.append(
                {"from": "assistant", "value": f"Thought: step {k}\nAction: get_weather\nAction Input: {{}}"}
            )
            c.append({"from": tool_role, "value": '{"error": "", "response": "sunny"}'})
        c.append(
            {"from": "assistant", "value": 'Action: Finish\nAction Input: {"return_type": "give_answer"}'}
        )
        return c

    doc = {
        "q1": {
            "cnt": 2,
            "instances": [
                {"id": "Step 2: w", "conversations": conv(0)},
                {"id": "Step 4: w", "conversations": conv(1)},
            ],
        }
    }
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def test_published_sft_and_eto_formats_encode_to_trajectories(tmp_path, tokenizer):
    from steprl.methods.eto import file_pairs
    from steprl.sft import file_conversations

    convs = file_conversations("steptool_sft_json", str(_write_sft_json(tmp_path / "sft.json")), "raise")
    trajs, dropped = conversation_trajectories(convs, tokenizer, 4096)
    assert dropped == 0 and [t.num_steps for t in trajs] == [1, 2]
    last = sft_tensors(trajs, 0, "last")["action_mask"].sum(-1).tolist()
    full = sft_tensors(trajs, 0, "all")["action_mask"].sum(-1).tolist()
    assert last[0] == full[0] and last[1] < full[1]
    path = tmp_path / "dpo.csv"
    prompt = 'System: \nTools: get_weather, Finish\nUser: \nWeather in Paris?\nAssistant: \nAction: get_weather\nAction Input: {}\nFunction: {"response": "sunny"}\nAssistant: '
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(["prompt", "chosen", "rejected"])
        w.writerow([prompt, "\nAction: Finish\nAction Input: {}", "\nAction: get_weather\nAction Input: {}"])
    (pair,) = file_pairs(str(path), "raise", tokenizer)
    assert pair.step == 1  # one assistant turn in the prompt
    tail = tokenizer.decode(pair.prompt_ids[-8:])
    assert tail.endswith("<|im_start|>assistant\n")  # the open assistant turn
    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert (
        pair.chosen_ids[-1] == eot
        and tokenizer.decode(pair.chosen_ids[:-1]) == "\nAction: Finish\nAction Input: {}"
    )


def test_rft_keeps_solved_unique_responses():
    def ep(task, resp, solved):
        t = _traj(task, [(resp, [])], [solved])
        t.is_solved = solved
        return t

    trajs = [ep("a", [1], 1.0), ep("a", [1], 1.0), ep("a", [2], 0.5), ep("b", [1], 1.0), ep("b", [3], 0.0)]
    assert [(t.task_id, t.response_ids) for t in keep_solved(trajs, dedupe=True)] == [("a", [1]), ("b", [1])]
    assert len(keep_solved(trajs, dedupe=False)) == 3


# ---- the updates through a real FSDP2 actor (one gloo rank, no Ray) ----------------------------------


@pytest.fixture(scope="module")
def actor(tiny_model_path):
    from steprl.config import AlgorithmConfig, ModelConfig, OptimConfig, WorkerConfig
    from workers.preference import PreferenceActorWorker

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    w = PreferenceActorWorker(
        0, 1, tiny_model_path, ModelConfig(), WorkerConfig(world_size=1, threads=1), OptimConfig(),
        AlgorithmConfig(ppo_epochs=1, num_mini_batches=1), seed=0,
    )  # fmt: skip
    w.setup("127.0.0.1", port)
    yield w
    w.shutdown()


def _pair_data(prompt, chosen, rejected, pad_id=0):
    from workers.preference import pack_groups

    return pack_groups(
        [
            [(p + c, [0] * len(p) + [1] * len(c)), (p + r, [0] * len(p) + [1] * len(r))]
            for p, c, r in zip(prompt, chosen, rejected, strict=True)
        ],
        pad_id,
    )


def test_dpo_step_through_the_actor(actor, tokenizer):
    from workers.preference import flatten_candidates

    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompts = [enc("User: capital of Norvia?\nAssistant:"), enc("User: population of Ost?\nAssistant:")]
    chosen, rejected = [enc(" Ost"), enc(" 41 thousand")], [enc(" the moon"), enc(" blue")]
    data = _pair_data(prompts, chosen, rejected)
    flat = flatten_candidates(data)
    ref = (actor.compute_logprobs(flat) * flat["action_mask"]).sum(-1).view(2, 2)
    # the reference is the starting policy itself: the first loss is exactly log 2
    data["ref_logps"] = ref
    first = actor.dpo_step(data, beta=0.1, lr=1e-3)
    assert first["actor/dpo_loss"] == pytest.approx(math.log(2), abs=1e-5)
    for _ in range(4):
        last = actor.dpo_step(data, beta=0.1, lr=1e-3)
    assert last["actor/dpo_loss"] < first["actor/dpo_loss"] and last["actor/reward_accuracy"] == 1.0
    # the second of two data-parallel shards: one real pair and one padding row (all masks off), as
    # shard_rows hands it to rank 1; the padding row must not change the loss (nor make it NaN)
    from steprl.modeling import shard_rows

    three = _pair_data([prompts[0]] * 3, [chosen[0]] * 3, [rejected[0]] * 3)
    three["ref_logps"] = ref[:1].repeat(3, 1)
    shard = shard_rows(three, 2)[1]
    assert shard["group_mask"].tolist() == [True, False]
    one = {k: v[:1] for k, v in shard.items()}
    a = actor.dpo_step(shard, beta=0.1, lr=1e-12)["actor/dpo_loss"]
    b = actor.dpo_step(one, beta=0.1, lr=1e-12)["actor/dpo_loss"]
    assert math.isfinite(a) and a == pytest.approx(b, rel=1e-4)
    # one pair over two ranks: rank 1 gets only a padding row (trimmed to one column); it must still
    # run its forward/backward (FSDP collectives) and contribute nothing
    pad_only = shard_rows({k: v[:1] for k, v in three.items()}, 2)[1]
    assert pad_only["group_mask"].tolist() == [False]
    assert actor.dpo_step(pad_only, beta=0.1, lr=1e-12)["actor/dpo_loss"] == 0.0
    # a pair whose rejected side was truncated to nothing is refused, not trained on
    bad = _pair_data([prompts[0]], [chosen[0]], [[]])
    bad["ref_logps"] = torch.zeros(1, 2)
    with pytest.raises(EmptyResponseError):
        actor.dpo_step(bad, beta=0.1, lr=1e-3)


def test_rank_step_through_the_actor_orders_candidates(actor, tokenizer):
    from workers.preference import flatten_candidates, pack_groups

    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    p = enc("User: capital of Norvia?\nAssistant:")
    cands = [enc(" Ost"), enc(" the moon is blue"), enc(" Ost city")]
    data = pack_groups([[(p + c, [0] * len(p) + [1] * len(c)) for c in cands]], 0)
    flat = flatten_candidates(data)
    pn = length_normalized_logprobs(actor.compute_logprobs(flat), flat["action_mask"]).tolist()
    # score the candidates against the model's own order: every pair starts misordered
    order = sorted(range(3), key=lambda i: pn[i])
    scores = [0.0] * 3
    for rank, i in enumerate(order):
        scores[i] = 2.0 - rank
    data["scores"] = torch.tensor([scores])
    first = actor.rank_step(data, alpha=1.0, lr=1e-3)
    assert first["actor/ranked_pairs"] == 3.0 and first["actor/misordered_pairs"] == 3.0
    assert first["actor/rank_loss"] == pytest.approx(_rrhf_reference(pn, scores, [True] * 3), rel=1e-4)
    assert first["actor/sft_nll"] == pytest.approx(-pn[order[0]], rel=1e-4)  # the best = lowest p
    for _ in range(10):  # (the module's actor was trained by the DPO test before: allow a few steps)
        last = actor.rank_step(data, alpha=1.0, lr=1e-3)
        if last["actor/misordered_pairs"] == 0.0:
            break
    assert last["actor/misordered_pairs"] == 0.0 and last["actor/trice_loss"] < first["actor/trice_loss"]


PUBLISHED = Path(
    os.environ.get(
        "STEPTOOL_DATA_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "data" / "steptool"
    )
)


@pytest.mark.skipif(not (PUBLISHED / "data_train").is_dir(), reason="published StepTool example files absent")
def test_published_example_files_encode(tokenizer):
    """Conformance: the published SFT / RFT JSON and ETO pairs encode token in / token out (read in place)."""
    from steprl.methods.eto import file_pairs, fit_pairs
    from steprl.sft import file_conversations

    d = PUBLISHED / "data_train"
    for fmt, rel in [
        ("steptool_sft_json", "qwen2/gpt4_dfs_G123_for_sft_example.json"),
        ("steptool_rft_json", "rft/rft_data_example.json"),
    ]:
        convs = file_conversations(fmt, str(d / rel), "raise")
        trajs, dropped = conversation_trajectories(convs, tokenizer, 1 << 20)
        assert dropped == 0 and len(trajs) == len(convs) > 0
        for t in trajs:
            t.validate()
            assert t.steps[-1].is_final and "Action" in t.steps[-1].text  # each instance ends on a ReAct turn
    pairs = file_pairs(str(d / "eto" / "dpo_data_example.csv"), "raise", tokenizer)
    assert len(pairs) > 0 and all(p.chosen_ids != p.rejected_ids for p in pairs)
    kept, dropped = fit_pairs(pairs, 1024, 768)  # the embedded model's context: prompts keep their end
    assert len(kept) + dropped == len(pairs) and all(len(p) + len(c) <= 1024 for p, c, _ in kept)
