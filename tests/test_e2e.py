"""End to end on a real local Ray cluster: the default pipeline (vLLM, its own cluster, as a user runs
it), the transformers engine and a critic-free recipe (each a ``python -m steprl.main`` joining the
module's cluster with ``ray.address``, which spares a cluster start-up per run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SMALL = [
    "trainer.total_iterations=2",
    "trainer.tasks_per_iteration=4",
    "rollout.group_size=2",
    "data.test_tasks=8",
    "rollout.eval_samples=2",
    "sft.num_demos=64",
    "sft.epochs=1",
    "sft.batch_size=16",
    "trainer.progress=true",
]


@pytest.fixture(scope="module")
def cluster(ray_cluster) -> str:
    import ray

    return ray.get_runtime_context().gcs_address


def _main(args: list[str], run_dir: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "steprl.main", *args, f"trainer.run_dir={run_dir}"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _check_run_dir(run_dir: Path, critic: bool = True) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    # sampled evaluation (2 per task at T=1) with greedy beside it
    assert summary["eval_samples_per_task"] == 2 and summary["eval_temperature"] == 1.0
    assert 0.0 <= summary["greedy_pass_rate_after_rl"] <= 1.0
    assert (run_dir / "config.yaml").read_text().startswith("recipe:")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    iters = [r for r in rows if "train/reward" in r]
    assert [r["step"] for r in iters] == [1, 2]
    for key in (
        "train/pass_rate",
        "actor/pg_loss",
        "kl",
        "time/rollout",
        "rollout/tokens_per_second",
    ):
        assert key in iters[-1], key
    assert ("critic/vf_loss" in iters[-1]) == critic
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    for ckpt in ("sft", "final"):
        actor = run_dir / "checkpoints" / ckpt / "actor"
        assert (actor / "model.safetensors").exists() and (actor / "config.json").exists()
        assert (actor / "tokenizer_config.json").exists()
    assert (run_dir / "checkpoints" / "final" / "critic" / "model.safetensors").exists() == critic
    assert (run_dir / "curves.png").stat().st_size > 1000
    assert 0.0 <= summary["pass_rate_before_rl"] <= 1.0 and 0.0 <= summary["pass_rate_after_rl"] <= 1.0
    return summary


def test_default_pipeline_with_vllm(tmp_path):
    proc = _main(SMALL, tmp_path / "run")
    assert "iter   2/2" in proc.stdout and "held-out pass rate" in proc.stdout
    _check_run_dir(tmp_path / "run")


def test_transformers_engine_and_kl_in_reward(tmp_path, cluster):
    _main(
        [
            *SMALL,
            f"ray.address={cluster}",
            "rollout.engine=hf",
            "algorithm.kl_in=reward",
            "actor.world_size=1",
            "reward.normalize=scale",
        ],
        tmp_path / "run",
    )
    _check_run_dir(tmp_path / "run")


def test_grpo_without_critic_through_a_local_tool_server(tmp_path, cluster):
    """Critic-free recipe; episodes talk to a FastAPI tool server the controller starts on loopback.
    One actor rank: the two-rank FSDP2 pipeline is the first test's."""
    args = ["recipe=grpo", *SMALL, f"ray.address={cluster}", "rollout.engine=hf", "actor.world_size=1"]
    _main([*args, "rollout.tool_server=local"], tmp_path / "run")
    _check_run_dir(tmp_path / "run", critic=False)
