"""Conversations in the StepTool formats: a follow-up user turn after an answer is read into the
representation the episode loop produces (an observation of the reply step, masked, no reward, the
turn index moves on), and a conversation episode of the shop suite survives a write and a read.

The 2-turn conversation is invented here (the toy weather tool of test_data_formats.py): a tool call,
an answer, the user's follow-up, a tool call, the final answer.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from steprl.algorithms.placement import place_step_rewards
from steprl.chat import ChatEncoder, encode_conversation
from steprl.data import (
    DataFormatError,
    read_eto_pairs_csv,
    read_sft_json,
    read_steptool_ppo_csv,
    to_messages,
    tokenize_offline_trajectory,
)
from steprl.data.formats.episode_chat import episode_chat
from steprl.data.formats.eto_csv import plain_transcript, preference_pair, write_eto_pairs_csv
from steprl.data.formats.ppo_csv import offline_trajectory_from_chat, write_steptool_ppo_csv
from steprl.data.formats.sft_json import conversation_from_chat, write_sft_json
from steprl.engines.replay import ReplayEngine
from steprl.episode import EpisodeBudget, run_episodes, task_encoder
from steprl.methods.eto import file_pairs
from steprl.protocol import Trajectory, collate
from tests.test_data_formats import (
    OBS0,
    SYSTEM,
    TURN0,
    TURN1,
    USER,
    make_tokenizer,
    ppo_raw_line,
    write_ppo_csv,
)
from tools_env import ToolEnv, get_parser, get_suite
from workers.reward import score_trajectory

USER2 = "And what about tomorrow?"
TURN2 = 'Thought: \nAction: get_forecast\nAction Input: {"city": "Paris", "days": 1}'
OBS1 = '{"error": "", "response": {"temp_c": 18}}'
TURN3 = 'Thought: \nAction: Finish\nAction Input: {"return_type": "give_answer", "final_answer": "Tomorrow 18 C."}'
TURNS = [TURN0, TURN1, TURN2, TURN3]
REWARDS = [1.0, 0.5, 0.75, 1.0]
CHAT = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": USER},
    {"role": "assistant", "content": TURN0},
    {"role": "tool", "content": OBS0},
    {"role": "assistant", "content": TURN1},
    {"role": "user", "content": USER2},
    {"role": "assistant", "content": TURN2},
    {"role": "tool", "content": OBS1},
    {"role": "assistant", "content": TURN3},
]
# (is_reply, is_final, turn) of each step, by hand: call, answer to turn 0, call, final answer
KINDS = [(False, False, 0), (True, False, 0), (False, False, 1), (False, True, 1)]
QWEN2_PROMPTS = [
    f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{USER}<|im_end|>\n<|im_start|>assistant\n",
    f"<|im_start|>function\n{OBS0}<|im_end|>\n<|im_start|>assistant\n",
    f"<|im_start|>user\n{USER2}<|im_end|>\n<|im_start|>assistant\n",
    f"<|im_start|>function\n{OBS1}<|im_end|>\n<|im_start|>assistant\n",
]
QWEN2_RESPONSES = [t + "<|im_end|>\n" for t in TURNS]


def _kinds(traj: Trajectory) -> list[tuple[bool, bool, int]]:
    return [(s.is_reply, s.is_final, s.turn) for s in traj.steps]


def _span(traj: Trajectory, step: int, action: bool) -> list[int]:
    return [
        t
        for t, a, s in zip(traj.response_ids, traj.action_mask, traj.step_index, strict=True)
        if s == step and a == int(action)
    ]


def _golden_csv(tmp_path: Path) -> Path:
    line = ppo_raw_line(repr(QWEN2_PROMPTS), repr(QWEN2_RESPONSES), repr(REWARDS))
    return write_ppo_csv(tmp_path / "convo.csv", [line])


# ------------------------------------------------------------------------------------------------
# PPO CSV
# ------------------------------------------------------------------------------------------------


def test_ppo_csv_reads_a_follow_up_user_turn_after_a_finish_answer(tmp_path: Path) -> None:
    (row,) = read_steptool_ppo_csv(_golden_csv(tmp_path), on_error="raise")
    assert row.turns == TURNS and row.observations == [OBS0, USER2, OBS1] and row.step_rewards == REWARDS
    assert row.observation_roles == ["tool", "user", "tool"]
    assert to_messages(row) == CHAT
    # the writer renders the same cells, and the same file, as the hand-written ones
    written = offline_trajectory_from_chat(CHAT, REWARDS, "qwen2")
    assert (written.raw_prompts, written.raw_responses) == (QWEN2_PROMPTS, QWEN2_RESPONSES)
    out = write_steptool_ppo_csv(tmp_path / "w.csv", [written])
    assert out.read_text(encoding="utf-8") == _golden_csv(tmp_path).read_text(encoding="utf-8")


def test_follow_up_golden_token_spans_masks_steps_and_rewards(tmp_path: Path) -> None:
    (row,) = read_steptool_ppo_csv(_golden_csv(tmp_path), on_error="raise")
    tok = make_tokenizer([SYSTEM, USER, *TURNS, OBS0, OBS1, USER2])
    out = tokenize_offline_trajectory(row, tok)
    assert tok.unk_token_id not in out.prompt_ids + out.response_ids
    names = tok.convert_ids_to_tokens
    for k, turn in enumerate(TURNS):  # every assistant turn: its tokens and the end of turn, step k
        assert names(_span(out, k, True)) == [*tok.tokenize(turn), "<|im_end|>"]
    head = ["<|im_start|>", "assistant"]
    assert names(_span(out, 0, False)) == ["<|im_start|>", "tool", *tok.tokenize(OBS0), "<|im_end|>", *head]
    # the user's follow-up is an observation of the reply step (1); the next step is 2
    assert names(_span(out, 1, False)) == ["<|im_start|>", "user", *tok.tokenize(USER2), "<|im_end|>", *head]
    assert names(_span(out, 2, False)) == ["<|im_start|>", "tool", *tok.tokenize(OBS1), "<|im_end|>", *head]
    assert _span(out, 3, False) == []
    assert _kinds(out) == KINDS
    assert out.steps[1].info == {"return_type": "give_answer", "answer": "It is 21 C and sunny in Paris."}
    assert out.steps[3].info == {"return_type": "give_answer"}
    assert [s.reward for s in out.steps] == REWARDS
    assert (out.done, out.end_reason, out.final_answer, out.is_solved) == (
        True,
        "answer",
        "Tomorrow 18 C.",
        1.0,
    )
    # in the batch: no loss, no step and no reward on the user's tokens
    batch = collate([out], pad_id=tok.pad_token_id)
    p = len(out.prompt_ids)
    user = [p + i for i, (o, s) in enumerate(zip(out.obs_mask, out.step_index, strict=True)) if o and s == 1]
    assert len(user) == len(tok.tokenize(USER2)) + 5  # the header, <|im_end|>, the next header
    assert not batch.action_mask[0, user].any() and (batch.step_index[0, user] == -1).all()
    token_rewards = place_step_rewards(batch)
    assert (token_rewards[0, user] == 0).all()
    last_actions = [p + max(i for i, (a, s) in enumerate(zip(out.action_mask, out.step_index, strict=True)) if a and s == k)
                    for k in range(4)]  # fmt: skip
    assert token_rewards[0, last_actions].tolist() == REWARDS and token_rewards.sum().item() == sum(REWARDS)
    with pytest.raises(ValueError, match="layout must be one of"):
        tokenize_offline_trajectory(row, tok, layout="joint")  # type: ignore[arg-type]


def test_ppo_csv_user_message_only_after_a_finish_turn_and_a_mid_finish_is_not_final(tmp_path: Path) -> None:
    prompts, responses = list(QWEN2_PROMPTS), list(QWEN2_RESPONSES)
    responses[1] = TURN0 + "<|im_end|>\n"  # the turn before the user message calls a tool
    bad = write_ppo_csv(tmp_path / "bad.csv", [ppo_raw_line(repr(prompts), repr(responses), repr(REWARDS))])
    with pytest.raises(
        DataFormatError, match=r":2: prompt\[2\] holds roles \['user'\], expected one function"
    ):
        read_steptool_ppo_csv(bad, on_error="raise")
    with pytest.raises(ValueError, match=r"prompt\[2\] holds roles \['user'\]"):
        offline_trajectory_from_chat(CHAT[:4] + [{"role": "assistant", "content": TURN0}] + CHAT[5:], REWARDS)
    # DFS: a give-up Finish answered by a function result goes on; only the last Finish is final
    give_up = 'Action: Finish\nAction Input: {"return_type": "give_up_and_restart"}'
    chat = CHAT[:4] + [{"role": "assistant", "content": give_up}, {"role": "tool", "content": "restart"}]
    row = offline_trajectory_from_chat([*chat, CHAT[-1]], [1.0, 0.0, 1.0])
    out = tokenize_offline_trajectory(
        row, make_tokenizer([SYSTEM, USER, TURN0, OBS0, give_up, "restart", TURN3])
    )
    assert _kinds(out) == [(False, False, 0), (False, False, 0), (False, True, 0)]
    with pytest.raises(ValueError, match="ends with an assistant turn"):
        offline_trajectory_from_chat(CHAT[:6], REWARDS[:2])
    with pytest.raises(ValueError, match="does not survive the toolllama format"):
        offline_trajectory_from_chat(
            [*CHAT[:3], {"role": "tool", "content": "a\nUser:\nb"}, CHAT[-1]], [1, 1], "toolllama"
        )


# ------------------------------------------------------------------------------------------------
# SFT / RFT JSON and ETO pairs
# ------------------------------------------------------------------------------------------------


def test_sft_json_follow_up_golden(tmp_path: Path, tokenizer) -> None:
    roles = {"tool": "function"}
    doc = {"q9": {"cnt": 1, "instances": [{"id": "Step 8: weather", "conversations": [
        {"from": roles.get(m["role"], m["role"]), "value": m["content"]} for m in CHAT]}]}}  # fmt: skip
    path = tmp_path / "sft.json"
    path.write_text(json.dumps(doc, indent=2), encoding="utf-8")
    (conv,) = read_sft_json(path, on_error="raise")
    assert conv.to_messages() == CHAT and (conv.query_id, conv.source_id) == ("q9", "Step 8: weather")
    assert json.loads(write_sft_json(tmp_path / "w.json", [conv]).read_text(encoding="utf-8")) == doc
    traj = encode_conversation(tokenizer, conv.to_messages(), conv.source_id)
    assert _kinds(traj) == KINDS
    eot = ChatEncoder(tokenizer, None, None).eot_id
    for k, turn in enumerate(TURNS):
        action = _span(traj, k, True)
        assert tokenizer.decode(action[:-1]) == turn and action[-1] == eot
    user_obs = tokenizer.decode(_span(traj, 1, False))
    assert (
        USER2 in user_obs and "<|im_start|>user" in user_obs and user_obs.endswith("<|im_start|>assistant\n")
    )
    assert OBS0 in tokenizer.decode(_span(traj, 0, False)) and OBS1 in tokenizer.decode(_span(traj, 2, False))
    assert "user" not in tokenizer.decode(_span(traj, 0, False) + _span(traj, 2, False))
    batch = collate([traj], pad_id=0)
    p = len(traj.prompt_ids)
    user = [
        p + i for i, (o, s) in enumerate(zip(traj.obs_mask, traj.step_index, strict=True)) if o and s == 1
    ]
    assert not batch.action_mask[0, user].any() and (batch.step_index[0, user] == -1).all()


def test_eto_pair_after_a_follow_up_user_turn(tmp_path: Path, tokenizer) -> None:
    prompt_chat = CHAT[:6]  # the next assistant turn answers the follow-up
    text = plain_transcript(prompt_chat)
    assert text == (
        f"System: {SYSTEM}\nUser: {USER}\nAssistant: {TURN0}\nFunction: {OBS0}\nAssistant: {TURN1}\n"
        f"User: {USER2}\nAssistant: "
    )
    path = write_eto_pairs_csv(tmp_path / "dpo.csv", [preference_pair(prompt_chat, TURN2, TURN3)])
    (pair,) = read_eto_pairs_csv(path, on_error="raise")
    assert [m.to_dict() for m in pair.prompt_messages] == prompt_chat and pair.chosen == TURN2
    (step_pair,) = file_pairs(str(path), "raise", tokenizer)
    context = encode_conversation(tokenizer, prompt_chat, "p")
    assert _kinds(context) == [(False, False, 0), (True, False, 0)]  # the answer before it is a reply
    assert step_pair.step == 2 and step_pair.prompt_ids == context.prompt_ids + context.response_ids
    assert tokenizer.decode(step_pair.prompt_ids).endswith(
        f"user\n{USER2}<|im_end|>\n<|im_start|>assistant\n"
    )
    with pytest.raises(ValueError, match="does not survive the ETO transcript"):
        preference_pair([*prompt_chat[:3], {"role": "tool", "content": "x\nUser: y"}], TURN2, TURN3)


# ------------------------------------------------------------------------------------------------
# Round trip: a conversation episode of the shop suite, written and read back
# ------------------------------------------------------------------------------------------------


def _react(text: str) -> str:
    """A shop demonstration turn (hermes call or plain reply) in the ReAct form of the StepTool data."""
    parsed = get_parser("hermes")(text)
    if parsed.calls:
        (call,) = parsed.calls
        return f"Thought: \nAction: {call.name}\nAction Input: {json.dumps(call.arguments)}"
    answer = {"return_type": "give_answer", "final_answer": parsed.final_answer}
    return f"Thought: \nAction: Finish\nAction Input: {json.dumps(answer)}"


@pytest.fixture(scope="module")
def shop_episode(tokenizer):
    """(episode, its task, the encoder, the chat it was): a 3-turn shop conversation in ReAct, the
    tools in the system prompt (where the StepTool files carry them), scored by the rule source."""
    shop = get_suite("shop")
    base = ChatEncoder(tokenizer, [t.schema() for t in shop.tools()], shop.system_prompt, "system_prompt")
    task = next(t for t in shop.tasks("train", 40, 1) if len(t.followups) == 2)
    enc = task_encoder({"shop": base}, task)
    turns = [
        _react(m["content"])
        for m in shop.demonstration(task, random.Random(0), 0.0)
        if m["role"] == "assistant"
    ]
    scripts = {tuple(enc.start(task.question)[1]): [enc.action_ids(t) for t in turns]}
    budget = EpisodeBudget(max_turns=12, max_response_tokens=2000, max_tokens_per_turn=200)
    (traj,) = run_episodes(
        ReplayEngine(scripts), ToolEnv(), {"shop": base}, get_parser("react"), [task], budget
    )
    scored = score_trajectory(traj, task, "rule")
    assert scored.is_solved == 1.0 and scored.meta["turn_scores"] == [1.0, 1.0, 1.0]
    assert sum(s.is_reply for s in scored.steps) == 2 and scored.steps[-1].is_final
    chat = episode_chat(scored, enc.present(enc.start(task.question)[0]))
    return scored, chat


def _same_layout(back: Trajectory, episode: Trajectory) -> None:
    assert back.prompt_ids == episode.prompt_ids and back.response_ids == episode.response_ids
    assert back.action_mask == episode.action_mask and back.obs_mask == episode.obs_mask
    assert back.step_index == episode.step_index
    assert _kinds(back) == _kinds(episode)


@pytest.mark.parametrize("chat_format", ["qwen2", "llama3", "toolllama"])
def test_shop_conversation_round_trips_through_the_ppo_csv(tmp_path, tokenizer, shop_episode, chat_format):
    episode, chat = shop_episode
    row = offline_trajectory_from_chat(chat, episode.step_rewards, chat_format)
    (back_row,) = read_steptool_ppo_csv(write_steptool_ppo_csv(tmp_path / "r.csv", [row]), on_error="raise")
    assert back_row.chat_format == chat_format and back_row.observation_roles.count("user") == 2
    back = tokenize_offline_trajectory(back_row, tokenizer, layout="rollout")
    _same_layout(back, episode)
    assert back.step_rewards == episode.step_rewards and back.final_answer == episode.final_answer
    assert [s.info.get("answer") for s in back.steps if s.is_reply] == [
        s.info["answer"] for s in episode.steps if s.is_reply
    ]


def test_shop_conversation_round_trips_through_the_sft_json(tmp_path, tokenizer, shop_episode):
    episode, chat = shop_episode
    path = write_sft_json(tmp_path / "s.json", [conversation_from_chat(chat, "Step 1: shop", "shop-0")])
    (conv,) = read_sft_json(path, on_error="raise")
    _same_layout(encode_conversation(tokenizer, conv.to_messages(), conv.source_id), episode)


def test_shop_conversation_round_trips_through_eto_pairs(tmp_path, tokenizer, shop_episode):
    """A pair for every step after the first follow-up: its prompt is the episode's prefix, the
    chosen side that step's action tokens."""
    episode, chat = shop_episode
    assistant_at = [i for i, m in enumerate(chat) if m["role"] == "assistant"]
    first_reply = next(k for k, s in enumerate(episode.steps) if s.is_reply)
    steps = range(first_reply + 1, episode.num_steps)
    pairs = [
        preference_pair(chat[: assistant_at[k]], chat[assistant_at[k]]["content"], "Thought: no")
        for k in steps
    ]
    read = file_pairs(str(write_eto_pairs_csv(tmp_path / "e.csv", pairs)), "raise", tokenizer)
    for k, pair in zip(steps, read, strict=True):
        action = _span(episode, k, True)
        start = next(
            i
            for i, (a, s) in enumerate(zip(episode.action_mask, episode.step_index, strict=True))
            if a and s == k
        )
        assert pair.step == k and pair.chosen_ids == action
        assert pair.prompt_ids == episode.prompt_ids + episode.response_ids[:start]
