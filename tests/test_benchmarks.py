"""Stage timing and memory accounting (golden values), and tiny smoke runs of the two benchmarks."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest

from steprl.progress import StageTimer, memory_summary, timing_line, timing_summary, with_overhead

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_overhead_is_the_iteration_minus_its_stages():
    times = {"time/rollout": 3.0, "time/reward": 0.5, "time/advantage": 2.0, "time/update": 4.0,
             "time/sync": 0.25, "time/iteration": 10.0, "time/actor_forward": 1.0}  # fmt: skip
    out = with_overhead(times)
    assert out["time/overhead"] == pytest.approx(10.0 - 9.75)  # sub-stages are not counted twice
    assert out["time/overhead_share"] == pytest.approx(0.025)
    assert with_overhead({"time/iteration": 2.0, "time/rollout": 1.5})["time/overhead"] == pytest.approx(0.5)
    line = timing_line(out)
    assert line.startswith("10.0s = rollout 3.0 + reward 0.5 + forward 2.0 (actor 1.0) + update 4.0")
    assert line.endswith("controller 0.25 (2.5%)")


def test_timing_and_memory_summaries_by_hand():
    history = [
        {"step": 0, "eval/pass_rate": 0.1},  # not an iteration row
        {"step": 1, "time/iteration": 10.0, "time/rollout": 4.0, "time/overhead": 0.5, "memory/actor_peak_mb": 100.0},
        {"step": 2, "time/iteration": 20.0, "time/rollout": 6.0, "time/overhead": 1.0, "memory/actor_peak_mb": 90.0,
         "memory/rollout_peak_mb": 50.0},
    ]  # fmt: skip
    s = timing_summary(history)
    assert s["time_per_iteration_mean_seconds"] == {"rollout": 5.0, "overhead": 0.75, "iteration": 15.0}
    assert s["controller_overhead_share"] == pytest.approx(
        1.5 / 30.0
    )  # of all iteration time, not a mean of shares
    assert memory_summary(history) == {"peak_memory_mb": {"actor_peak_mb": 100.0, "rollout_peak_mb": 50.0}}
    assert timing_summary([{"step": 0}]) == {} and memory_summary([{"step": 0}]) == {}


def test_stage_timer_sums_repeated_stages_and_resets():
    timer = StageTimer()
    for _ in range(2):
        with timer("reward"):
            time.sleep(0.02)
    with pytest.raises(RuntimeError), timer("sync"):  # a failing stage still counts its time
        raise RuntimeError("boom")
    got = timer.reset()
    assert set(got) == {"time/reward", "time/sync"} and 0.04 <= got["time/reward"] < 1.0
    assert timer.reset() == {}


@pytest.mark.slow
def test_rollout_throughput_smoke(tmp_path):
    bench = _load("rollout_throughput")
    out = tmp_path / "rollout.json"
    assert bench.main(["--engines", "hf", "--models", "embedded", "--episodes", "3", "--max-tokens-per-turn", "8",
                       "--max-response-tokens", "32", "--threads", "1", "--json", str(out)]) == 0  # fmt: skip
    data = json.loads(out.read_text())
    (r,) = data["results"]
    assert r["engine"] == "hf" and r["episodes"] == 3 and r["generated_tokens"] > 0
    assert r["tokens_per_s"] == pytest.approx(r["generated_tokens"] / r["seconds"], rel=1e-3)
    assert r["ratio_tokens_per_s"] == 1.0 and r["peak_mb"] > 50  # the baseline is itself; a real process RSS
    assert "default engine" in data["default_engine"]


@pytest.mark.slow
def test_train_throughput_smoke(tmp_path):
    bench = _load("train_throughput")
    out = tmp_path / "train.json"
    assert bench.main(["--models", "embedded", "--shapes", "1x1", "--batch", "2", "--updates", "1", "--dtypes",
                       "float32", "--roles", "actor,critic", "--matmul-n", "256", "--share-prefix", "on",
                       "--json", str(out)]) == 0  # fmt: skip
    data = json.loads(out.read_text())
    actor, critic = data["results"]
    for r in (actor, critic):
        assert r["world_size"] == 1 and r["tokens_per_s"] > 0 and r["peak_mb_per_rank"] > 50
        assert r["flops_per_s"] == pytest.approx(r["flops_per_update"] / r["seconds_per_update"])
        assert r["share_of_peak"] == pytest.approx(r["flops_per_s"] / data["peak_flops"]["float32"])
    assert actor["role"] == "actor" and critic["role"] == "critic"
    assert actor["share_prefix"] and actor["passes"] >= 1


def test_update_flops_by_hand():
    """One row of 4 tokens (1 padding), response from column 2: the count written out."""
    import torch

    bench = _load("train_throughput")
    shape = {"body": 10, "head": 7, "hidden": 3, "d_attn": 2, "layers": 5}
    data = {
        "attention_mask": torch.tensor([[1, 1, 1, 0]]),
        "action_mask": torch.tensor([[False, False, True, False]]),
    }
    # tokens 3, sum of (t + 1) = 1 + 2 + 3 = 6; actor head at columns 1.. -> 2 real positions
    body = 2 * 10 * 3 + 4 * 2 * 5 * 6
    assert bench.update_flops(shape, data, "actor") == 3 * (body + 2 * 7 * 2)
    assert bench.update_flops(shape, data, "critic") == 3 * (body + 2 * 3 * 3)


def test_update_flops_with_a_shared_prefix_by_hand():
    """3 rows of 20 tokens sharing 17: computed once (prefix_runs=1), 2 rows' prefix tokens are not
    counted. A shared prefix under the workers' 16-token minimum is not shared, so it is counted."""
    import torch

    bench = _load("train_throughput")
    shape = {"body": 10, "head": 7, "hidden": 3, "d_attn": 2, "layers": 5}
    ids = torch.arange(60).reshape(3, 20)
    ids[:, :17] = ids[0, :17]
    data = {
        "input_ids": ids,
        "attention_mask": torch.ones(3, 20, dtype=torch.long),
        "action_mask": torch.ones(3, 20, dtype=torch.bool),
    }
    # tokens 60 - 2 x 17 = 26; sum of (t + 1): 3 x (1 + ... + 20) - 2 x (1 + ... + 17) = 630 - 306 = 324
    assert bench.update_flops(shape, data, "critic", prefix_runs=1) == 3 * (
        2 * 10 * 26 + 4 * 2 * 5 * 324 + 2 * 3 * 26
    )
    assert bench.update_flops(shape, data, "critic", prefix_runs=3) == bench.update_flops(
        shape, data, "critic"
    )
    short = {**data, "input_ids": torch.arange(60).reshape(3, 20)}
    short["input_ids"][:, :2] = 5  # 2 shared tokens: not shared
    assert bench.update_flops(shape, short, "critic", prefix_runs=1) == bench.update_flops(
        shape, short, "critic"
    )


def test_matmul_peak_is_a_plausible_rate():
    bench = _load("train_throughput")
    flops = bench.matmul_peak_flops(128, repeats=2, threads=1)
    assert 1e7 < flops < 1e13  # 2 n^3 over a measured time: between 10 MFLOP/s and 10 TFLOP/s


def test_cost_growth_reads_a_run_by_hand(tmp_path):
    """Mean seconds after the warm-up iteration, per episode, and stage shares of all timed seconds."""
    cost = _load("cost_growth")
    (tmp_path / "config.yaml").write_text("recipe: steptool\nmodel:\n  path: /models/tiny\n")
    rows = [
        {"step": 0, "eval/pass_rate": 0.5},
        {"step": 1, "time/iteration": 99.0, "time/rollout": 90.0, "train/episodes": 16},  # warm-up
        {"step": 2, "time/iteration": 10.0, "time/rollout": 4.0, "time/update": 5.0, "time/overhead": 1.0,
         "train/episodes": 16},
        {"step": 3, "time/iteration": 30.0, "time/rollout": 6.0, "time/update": 20.0, "time/sync": 4.0,
         "train/episodes": 16},
    ]  # fmt: skip
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = cost.read_run(tmp_path)
    assert got["model"] == "tiny" and got["episodes"] == 16 and got["iterations"] == 2
    assert got["seconds"] == pytest.approx(20.0) and got["seconds_per_episode"] == pytest.approx(1.25)
    assert got["shares"]["rollout"] == pytest.approx(10 / 40) and got["shares"]["update"] == pytest.approx(
        25 / 40
    )
    assert got["shares"]["sync"] == pytest.approx(0.1) and got["shares"]["reward"] == 0.0
    table = cost.render([got]).splitlines()
    assert table[2] == "| tiny | steptool | 16 | 20.0 | 1.250 | 25 | 0 | 0 | 62 | 10 | 2 |"
    (tmp_path / "metrics.jsonl").write_text(json.dumps(rows[1]) + "\n")
    with pytest.raises(ValueError, match="need at least 2"):
        cost.read_run(tmp_path)
