"""After a PPO update and a weight sync, vLLM reports the actor's log-probs for what it samples.

Tolerance: both sides run the same float32 weights, but vLLM's CPU kernels (its own attention and
repacked linear layers) add up in a different order from torch's, which moves log-probs by ~1e-5..1e-4;
a stale or half-applied sync moves them by orders of magnitude more (checked before the sync).
"""

from __future__ import annotations

import pytest
import ray
import torch

pytestmark = pytest.mark.slow

TOLERANCE = 2e-3  # max |logp_vllm - logp_actor| over all sampled action tokens


def test_vllm_logprobs_match_actor_after_sync(ray_cluster, tiny_model_path, tmp_path):
    from steprl.config import StepRLConfig
    from steprl.episode import EpisodeBudget
    from steprl.protocol import collate
    from tools_env import get_suite
    from workers.fsdp import ActorWorker
    from workers.group import WorkerGroup
    from workers.rollout import RolloutWorker

    cfg = StepRLConfig()
    cfg.optim.actor_lr = 5e-3  # a visible change in one update
    actor = WorkerGroup(
        ActorWorker,
        2,
        0.5,
        0.0,
        "actor",
        model_path=tiny_model_path,
        model_cfg=cfg.model,
        worker_cfg=cfg.actor,
        optim_cfg=cfg.optim,
        algo_cfg=cfg.algorithm,
        seed=0,
    )
    rollout = ray.remote(num_cpus=1)(RolloutWorker).remote(
        tiny_model_path,
        "vllm",
        {"dtype": "float32", "max_model_len": 1024, "gpu_memory_utilization": 0.2},
        "hermes",
        "inprocess",
        ["atlas"],
        EpisodeBudget(max_turns=2, max_response_tokens=96, max_tokens_per_turn=24),
    )
    tasks = [t.to_dict() for t in get_suite("atlas").tasks("train", 6, 0)]

    def sample(seed: int):
        trajs, _ = ray.get(rollout.rollout.remote(tasks, 1.0, seed))
        batch = collate(trajs, 0)
        keys = ("input_ids", "attention_mask", "action_mask")
        return batch, {k: getattr(batch, k) for k in keys}

    def compare() -> float:
        batch, data = sample(123)
        actor_lp = actor.gather_rows("compute_logprobs", data)
        diff = (actor_lp - batch.rollout_logprobs).abs()[batch.action_mask]
        assert diff.numel() > 20
        return float(diff.max())

    assert compare() < TOLERANCE  # same initial weights
    # one real PPO update with random advantages changes the actor
    batch, data = sample(7)
    data["old_logprobs"] = actor.gather_rows("compute_logprobs", data)
    data["advantages"] = torch.randn(batch.input_ids.shape) * batch.action_mask
    actor.mean_metrics("update_policy", data)
    stale = compare()
    assert stale > 10 * TOLERANCE, f"the update did not move the policy enough to test the sync ({stale})"
    actor.call_all("save_hf", str(tmp_path / "weights"))
    ray.get(rollout.load_weights.remote(str(tmp_path / "weights")))
    assert compare() < TOLERANCE
    actor.shutdown()
    ray.kill(rollout)
