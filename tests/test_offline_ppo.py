"""Offline step-grained PPO (``data.format=steptool_csv``): the StepTool repository's training mode."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from steprl.data.offline import OfflineStepDataset
from tests.test_data_formats import TURN0, TURN1, ppo_line, ppo_raw_line, write_ppo_csv


def _fixture(tmp_path: Path, n: int = 6, malformed: bool = True) -> Path:
    lines = [
        ppo_line(fmt, rewards=[0.2 * (i % 3), 1.0])
        for i, fmt in zip(range(n), ["qwen2", "llama3"] * n, strict=False)
    ]
    if malformed:  # reported and skipped
        lines.append(ppo_raw_line("['unclosed", "[]", "[]"))
    return write_ppo_csv(tmp_path / "ppo.csv", lines)


def test_dataset_tokenizes_skips_and_orders_deterministically(tmp_path, tokenizer):
    path = _fixture(tmp_path)
    ds = OfflineStepDataset.from_steptool_csv(str(path), tokenizer, max_len=1024, seed=3)
    assert ds.stats["rows_read"] == 6 and ds.stats["rows_malformed"] == 1 and len(ds.trajectories) == 6
    t = ds.trajectories[1]
    assert [s.reward for s in t.steps] == [0.2, 1.0] and t.done and t.end_reason == "answer"
    # the two assistant turns are the action tokens, everything after the prompt else is observation
    assert (
        tokenizer.decode([i for i, a in zip(t.response_ids, t.action_mask, strict=True) if a]).count(
            "Action:"
        )
        == 2
    )
    assert TURN0 in tokenizer.decode(t.response_ids) and TURN1.split("\n")[-1] in tokenizer.decode(
        t.response_ids
    )
    # iterations 1..3 of size 4 = two epochs of a seeded permutation; a fresh dataset gives the same batches
    first = [[x.meta["source_line"] for x in ds.batch(i, 4)] for i in (1, 2, 3)]
    again = OfflineStepDataset.from_steptool_csv(str(path), tokenizer, max_len=1024, seed=3)
    assert first == [[x.meta["source_line"] for x in again.batch(i, 4)] for i in (1, 2, 3)]
    epoch0 = first[0] + first[1][:2]
    assert sorted(epoch0) == sorted(x.meta["source_line"] for x in ds.trajectories)
    # a batch is a copy: training may rewrite rewards without touching the dataset
    ds.batch(1, 1)[0].steps[0].reward = 99.0
    assert all(s.reward != 99.0 for x in ds.trajectories for s in x.steps)


def test_dataset_length_limit(tmp_path, tokenizer):
    path = _fixture(tmp_path, n=2, malformed=False)
    with pytest.raises(ValueError, match="no usable trajectory"):
        OfflineStepDataset.from_steptool_csv(str(path), tokenizer, max_len=10)
    with pytest.raises(ValueError, match=r"ppo.csv:2: longer than 10 tokens"):
        OfflineStepDataset.from_steptool_csv(str(path), tokenizer, max_len=10, on_error="raise")


@pytest.mark.slow
def test_offline_steptool_csv_training_end_to_end(tmp_path):
    from steprl.main import main

    path = _fixture(tmp_path)
    run_dir = tmp_path / "run"
    rc = main(
        [
            f"data.path={path}",
            "data.format=steptool_csv",
            "algorithm=steptool_compat",
            "rollout.engine=hf",
            "sft.enabled=false",
            "trainer.total_iterations=2",
            "trainer.tasks_per_iteration=4",
            "data.test_tasks=2",
            "rollout.eval_samples=1",
            "actor.world_size=1",
            "critic.world_size=1",
            "trainer.progress=false",
            f"trainer.run_dir={run_dir}",
        ]
    )
    assert rc == 0
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("data/trajectories") == 6.0 for r in rows)
    iters = [r for r in rows if "train/reward" in r and r.get("iteration", r.get("step", 0)) >= 1]
    assert len(iters) == 2
    # the file's rewards, not the environment's: each trajectory sums to its row's two step rewards
    sums = sorted({round(0.2 * (i % 3) + 1.0, 6) for i in range(6)})
    assert all(min(sums) <= r["train/reward"] <= max(sums) for r in iters)
    assert all(r["rollout/tokens_per_second"] == 0.0 for r in iters)  # nothing was generated
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
