"""Conformance with the published StepTool PPO CSV (read in place, never copied).

Layout of a row (tab-separated; each cell a Python list literal, one entry per assistant turn):
``prompt[0]`` is the system + user text up to the first assistant header, ``prompt[k]`` (k > 0) is
the tool result of turn k-1 plus the next assistant header, ``response[k]`` is assistant turn k and
``reward[k]`` its step reward (last = the Finish turn). The repository's ``formatting_func``
concatenates ``prompt[0] response[0] prompt[1] response[1] ... prompt[n-1] response[n-1]``, marking
the responses as policy tokens. Tokens here are UTF-8 bytes: the check is about placement, which
does not depend on the tokenizer.
"""

from __future__ import annotations

import ast
import csv
import os
import sys
from pathlib import Path

import pytest
import torch

from steprl.algorithms import (
    AdvantageConfig,
    compute_advantages,
    place_step_rewards,
    steptool_compat_multipliers,
)
from steprl.protocol import StepRecord, Trajectory, collate

DATA_DIR = Path(
    os.environ.get("STEPTOOL_DATA_DIR", Path(__file__).resolve().parents[2] / "shared/data/steptool")
)
CSV_PATH = DATA_DIR / "data_train/qwen2/step_grained_for_ppo_example.csv"


def read_rows() -> list[tuple[list[str], list[str], list[float]]]:
    if not CSV_PATH.exists():
        pytest.skip(f"published StepTool CSV not found at {CSV_PATH}")
    csv.field_size_limit(sys.maxsize)
    with CSV_PATH.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t")
        assert reader.fieldnames == ["prompt", "response", "reward"]
        return [tuple(ast.literal_eval(row[c]) for c in ("prompt", "response", "reward")) for row in reader]


def to_trajectory(prompt: list[str], response: list[str], reward: list[float]) -> Trajectory:
    t = Trajectory(task_id="csv", prompt_ids=list(prompt[0].encode()))
    for k, turn in enumerate(response):
        t.append(list(turn.encode()), is_action=True, step=k)
        if k + 1 < len(prompt):
            t.append(list(prompt[k + 1].encode()), is_action=False, step=k)
    t.steps = [StepRecord(text=turn, reward=float(r)) for turn, r in zip(response, reward, strict=True)]
    t.done, t.end_reason = True, "answer"
    t.validate()
    return t


def repository_rewards(action_mask: list[int], score: list[float]) -> list[float]:
    """The repository's ``StepPPOTrainer.compute_rewards`` loop, on the action mask alone.

    Walking back from the end: the last 1 of the mask gets ``score[k] * (n - k - 1)``, then the
    mask is cut before the preceding run of 0s and the next turn is handled.
    """
    reward = [0.0] * len(action_mask)
    mask = list(action_mask)
    n = len(score)
    for k in reversed(range(n)):
        ones = [i for i, m in enumerate(mask) if m]
        if not ones:
            break
        reward[ones[-1]] += score[k] * (n - k - 1)
        mask = mask[: ones[-1] + 1]
        zeros = [i for i, m in enumerate(mask) if not m]
        if not zeros:
            break
        mask = mask[: zeros[-1] + 1]
    return reward


def test_csv_layout():
    rows = read_rows()
    assert len(rows) > 0
    for prompt, response, reward in rows:
        assert len(prompt) == len(response) == len(reward) >= 2
        assert all(p.startswith("<|im_start|>function") for p in prompt[1:])
        assert "Action: Finish" in response[-1]


def test_compat_placement_matches_repository_rule_on_every_row():
    for prompt, response, reward in read_rows():
        t = to_trajectory(prompt, response, reward)
        b = collate([t], pad_id=0)
        n = len(reward)
        placed = place_step_rewards(b, b.step_rewards * steptool_compat_multipliers(b.step_mask))[0]
        p = len(t.prompt_ids)
        # nonzero only on the last action token of a turn, with reward_k * (n - 1 - k); last turn 0
        last_tokens, pos = {}, p
        for k in range(n):
            pos += len(response[k].encode())
            last_tokens[pos - 1] = reward[k] * (n - 1 - k)
            pos += len(prompt[k + 1].encode()) if k + 1 < n else 0
        nonzero = {i: float(placed[i]) for i in placed.nonzero().flatten().tolist()}
        assert nonzero == pytest.approx({i: r for i, r in last_tokens.items() if r != 0}, rel=1e-6)
        assert float(placed[pos - 1]) == 0.0  # the Finish turn's reward is multiplied by 0
        assert not bool((placed != 0)[~b.action_mask[0]].any())
        # and the repository's own loop over the action mask puts the same values in the same places
        ref = repository_rewards(t.action_mask, reward)
        assert placed[p:].tolist() == pytest.approx(ref, rel=1e-6)


def test_compat_estimator_on_the_csv_batch():
    rows = read_rows()
    b = collate([to_trajectory(*row) for row in rows], pad_id=0)
    cfg = AdvantageConfig("steptool_compat", whiten=False)
    out = compute_advantages(b, torch.zeros(b.input_ids.shape), cfg)
    assert not bool((out.advantages != 0)[~b.action_mask].any())
    # with zero values, A_t = sum_{t' >= t} (gamma lam)^(t' - t) r_t' over ALL tokens (observations
    # count in the discount, as in the repository)
    placed = place_step_rewards(b, b.step_rewards * steptool_compat_multipliers(b.step_mask))
    decay = cfg.gamma * cfg.lam
    for i in range(b.size):
        ref, running = [0.0] * b.input_ids.shape[1], 0.0
        for t in reversed(range(len(ref))):
            running = float(placed[i, t]) + decay * running
            ref[t] = running if b.action_mask[i, t] else 0.0
        assert out.advantages[i].tolist() == pytest.approx(ref, rel=1e-4, abs=1e-6)
