"""FSDP2 workers on a real Ray cluster: data-parallel updates equal the single-rank update, and a
LoRA actor exports merged weights that a plain Hugging Face model reproduces exactly."""

from __future__ import annotations

import pytest
import torch

from steprl.config import StepRLConfig
from steprl.modeling import token_logprobs

pytestmark = pytest.mark.slow


def _group(cls, world_size, path, cfg):
    from workers.group import WorkerGroup

    return WorkerGroup(
        cls,
        world_size,
        0.5,
        0.0,
        cls.role,
        model_path=path,
        model_cfg=cfg.model,
        worker_cfg=cfg.actor,
        optim_cfg=cfg.optim,
        algo_cfg=cfg.algorithm,
        seed=0,
    )


def _batch(seed: int = 0, rows: int = 5, length: int = 24) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, 1000, (rows, length), generator=g)
    attention = torch.ones(rows, length, dtype=torch.bool)
    attention[1, 15:] = False  # rows of different lengths and token counts
    attention[3, 9:] = False
    action = attention.clone()
    action[:, :6] = False
    return {
        "input_ids": ids,
        "attention_mask": attention,
        "action_mask": action,
        "advantages": torch.randn(rows, length, generator=g) * action,
    }


def test_two_ranks_update_like_one(ray_cluster, tiny_model_path, tmp_path):
    """Loss scaling by global token counts: an uneven split over 2 ranks gives the 1-rank gradient."""
    from workers.fsdp import ActorWorker

    cfg = StepRLConfig()
    cfg.algorithm.ppo_epochs, cfg.algorithm.num_mini_batches = 1, 1
    cfg.optim.actor_lr = 1e-3
    data = _batch()
    weights = {}
    for ws in (1, 2):
        actor = _group(ActorWorker, ws, tiny_model_path, cfg)
        data["old_logprobs"] = actor.gather_rows("compute_logprobs", data)
        actor.mean_metrics("update_policy", data)
        actor.call_all("save_hf", str(tmp_path / f"ws{ws}"))
        weights[ws] = actor.gather_rows("compute_logprobs", data)
        actor.shutdown()
    assert (weights[1] - data["old_logprobs"]).abs().max() > 1e-3  # the update did something
    assert torch.allclose(weights[1], weights[2], atol=2e-5)


@pytest.mark.parametrize(
    ("agg", "budget", "gather_once"),
    [("token-mean", 24, True), ("seq-mean-token-mean", 48, True), ("token-mean", 24, False)],
)
def test_passes_of_a_few_tokens_accumulate_to_the_one_pass_update(
    ray_cluster, tiny_model_path, agg, budget, gather_once
):
    """``micro_batch_tokens=24`` (one row per pass) or 48 (rows of like length in pairs, so out of
    order) on 2 ranks takes the same PPO and SFT steps as one pass on one rank: gradient accumulation
    weighted by what the loss averages over, and log-probs put back in row order. With ``gather_once``
    the passes keep the parameters gathered and reduce the gradients once, at the last pass; without,
    FSDP2 gathers and reduces per pass: the same steps either way.

    The gradient norm (before clipping) is the sharp check: Adam's first step is nearly ``lr * sign(g)``,
    blind to a mis-weighted sum, but the norm is not; the log-probs after the steps agree to summation order.
    """
    from workers.fsdp import ActorWorker

    data = _batch()
    norms: dict[int, list[float]] = {}
    after: dict[int, list[torch.Tensor]] = {}
    for ws, tokens in ((1, 10_000), (2, budget)):
        cfg = StepRLConfig()
        cfg.algorithm.ppo_epochs, cfg.algorithm.num_mini_batches, cfg.algorithm.loss_agg = 1, 1, agg
        cfg.optim.actor_lr = 1e-3
        cfg.actor.micro_batch_tokens = tokens
        cfg.actor.gather_once = gather_once if ws == 2 else True
        actor = _group(ActorWorker, ws, tiny_model_path, cfg)
        rows = dict(data, old_logprobs=actor.gather_rows("compute_logprobs", data))
        norms[ws] = [actor.mean_metrics("update_policy", rows)["actor/grad_norm"]]
        after[ws] = [actor.gather_rows("compute_logprobs", data)]
        norms[ws].append(actor.mean_metrics("sft_step", data, lr=1e-3)["sft/grad_norm"])
        after[ws].append(actor.gather_rows("compute_logprobs", data))
        actor.shutdown()
    real = data["attention_mask"]  # padding columns: computed in one pass, zero when trimmed per pass
    assert (after[1][0] - rows["old_logprobs"])[real].abs().max() > 1e-3
    assert (after[1][1] - after[1][0])[real].abs().max() > 1e-3
    assert norms[2] == pytest.approx(norms[1], rel=1e-5)
    for one_pass, many in zip(after[1], after[2], strict=True):
        assert (one_pass - many)[real].abs().max() < 5e-4


def test_policy_update_uses_actor_lr_after_sft(ray_cluster, tiny_model_path):
    """An SFT phase sets its own learning rate; the PPO update after it runs at optim.actor_lr."""
    from workers.fsdp import ActorWorker

    cfg = StepRLConfig()
    cfg.algorithm.ppo_epochs, cfg.algorithm.num_mini_batches = 1, 1
    actor = _group(ActorWorker, 1, tiny_model_path, cfg)
    try:
        data = _batch()
        actor.mean_metrics("sft_step", data, lr=5e-3)
        data["old_logprobs"] = actor.gather_rows("compute_logprobs", data)
        metrics = actor.mean_metrics("update_policy", data)
    finally:
        actor.shutdown()
    assert metrics["actor/lr"] == cfg.optim.actor_lr


def test_lora_actor_exports_merged_weights(ray_cluster, tiny_model_path, tmp_path):
    from transformers import AutoModelForCausalLM

    from workers.fsdp import ActorWorker

    cfg = StepRLConfig()
    cfg.model.lora_rank, cfg.model.lora_alpha = 4, 8
    cfg.optim.actor_lr = 5e-2
    actor = _group(ActorWorker, 2, tiny_model_path, cfg)
    data = _batch(1)
    data["old_logprobs"] = actor.gather_rows("compute_logprobs", data)
    actor.mean_metrics("update_policy", data)
    after = actor.gather_rows("compute_logprobs", data)
    actor.call_all("save_hf", str(tmp_path / "lora"))
    actor.shutdown()
    assert (after - data["old_logprobs"]).abs().max() > 1e-3
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "lora")
    with torch.no_grad():
        exported = token_logprobs(
            model(input_ids=data["input_ids"], attention_mask=data["attention_mask"].long()).logits,
            data["input_ids"],
        )
    mask = data["action_mask"]  # log-probs are computed where they are used: the response (logits_to_keep)
    assert torch.allclose(exported[mask], after[mask], atol=1e-4)


def test_the_critic_trains_without_dropout(tiny_model_path):
    """Hugging Face's token-classification head (the critic) comes with a 0.1 dropout before the value
    head; the workers turn every dropout off, so a training-mode forward equals the eval-mode values
    that the clipped value loss compares it with."""
    from transformers import AutoModelForTokenClassification

    from workers.model_io import without_dropout

    model = AutoModelForTokenClassification.from_pretrained(tiny_model_path, num_labels=1)
    torch.nn.init.normal_(model.score.weight)
    assert any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())  # as shipped
    ids = torch.randint(10, 1000, (2, 16), generator=torch.Generator().manual_seed(0))
    model.train()
    assert not torch.equal(model(ids).logits, model(ids).logits)  # dropout active: two forwards differ
    without_dropout(model).train()
    train_values = model(ids).logits
    assert torch.equal(train_values, model(ids).logits)
    assert torch.allclose(train_values, model.eval()(ids).logits, atol=1e-6)
