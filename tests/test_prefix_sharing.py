"""Prefix sharing (``steprl.modeling.prefix_shared_forward``): the rows' common prompt prefix runs once and
its keys/values are repeated along the batch. It must give the plain forward's logits, values and
gradients (float summation order aside), on its own and inside the FSDP2 workers."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from steprl.modeling import (
    passes_needed,
    prefix_shared_forward,
    shared_prefix_length,
    token_logprobs,
    usable_prefix,
)


def batch(seed: int, rows: int, prefix: int, width: int, padding_rows: int = 0):
    """Rows that share ``prefix`` tokens, then differ; right padding of different lengths."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 97, (rows, width), generator=g)
    ids[:, :prefix] = ids[0, :prefix]
    attention = torch.ones(rows, width, dtype=torch.long)
    for r in range(rows):
        attention[r, int(torch.randint(prefix + 1, width + 1, (1,), generator=g)) :] = 0
    attention[rows - padding_rows :] = 0  # rows that even out a rank's shard: nothing attended
    return ids, attention


def test_shared_prefix_length_golden():
    ids = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, 1, 9], [5, 6, 7, 8, 2]])
    ones = torch.ones_like(ids)
    assert shared_prefix_length(ids, ones) == 3  # column 3 differs in row 1
    assert shared_prefix_length(ids[[0, 2]], ones[[0, 2]]) == 4
    assert shared_prefix_length(ids[[0, 0]], ones[[0, 0]]) == 5  # identical rows: all of it
    assert shared_prefix_length(ids[:1], ones[:1]) == 0  # one row: nothing to share
    short = ones.clone()
    short[2, 2:] = 0  # a row that ends at column 2 shares at most its attended tokens
    assert shared_prefix_length(ids, short) == 2
    pad = ones.clone()
    pad[1] = 0  # a padding row (attends to nothing) does not count
    assert shared_prefix_length(ids, pad) == 4
    pad[2] = 0
    assert shared_prefix_length(ids, pad) == 0  # one live row left
    assert shared_prefix_length(torch.tensor([[1, 2], [3, 2]]), torch.ones(2, 2)) == 0


def test_passes_count_a_shared_prefix_once_per_pass():
    data = {"input_ids": torch.zeros(10, 100, dtype=torch.long)}
    assert passes_needed(data, 250) == 5  # 2 rows of 100 per pass
    assert passes_needed(data, 250, shared_prefix=60) == 3  # 60 + 4 x 40 = 220 <= 250: 4 rows per pass
    assert passes_needed(data, 50, shared_prefix=60) == 10  # the budget is below one row: a row per pass
    assert passes_needed(data, 10_000, shared_prefix=60) == 1
    assert passes_needed(data, 250, shared_prefix=100) == 1  # rows that are all prefix
    assert passes_needed({"input_ids": torch.zeros(3, 7, dtype=torch.long)}, 1) == 3


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    rows=st.integers(2, 6),
    prefix=st.integers(0, 40),
    extra=st.integers(2, 30),
    padding_rows=st.integers(0, 1),
    start_gap=st.integers(-20, 5),
)
def test_logprobs_and_values_equal_the_plain_forward(
    models, seed, rows, prefix, extra, padding_rows, start_gap
):
    lm, critic, _ = models
    width = prefix + extra
    ids, attention = batch(seed, rows, prefix, width, min(padding_rows, rows - 2))
    start = max(1, min(width - 1, prefix + start_gap))  # first response column: after or inside the prefix
    with torch.no_grad():
        plain = lm(input_ids=ids, attention_mask=attention, logits_to_keep=width - start + 1).logits
        shared = prefix_shared_forward(
            lm, ids, attention, start - 1, usable_prefix(ids, attention, start - 1, 1)
        )
        live = attention.bool()
        assert shared.shape == plain[:, :-1].shape  # the last column predicts nothing: not computed
        diff = (token_logprobs(shared, ids, start) - token_logprobs(plain, ids, start))[:, start:]
        assert torch.cat([diff[live[:, start:]].abs(), torch.zeros(1)]).max() < 1e-5
        values = prefix_shared_forward(critic, ids, attention, None, usable_prefix(ids, attention, None, 1))[
            ..., 0
        ]
        plain_values = critic(input_ids=ids, attention_mask=attention).logits[..., 0]
        assert values.shape == plain_values.shape
        assert (values - plain_values)[live].abs().max() < 1e-5


def test_gradients_equal_the_plain_forward(models):
    lm, critic, _ = models
    ids, attention = batch(1, rows=5, prefix=30, width=60, padding_rows=1)
    start = 34
    mask = attention.bool().clone()
    mask[:, :start] = False

    def grads(model, loss_of):
        model.zero_grad()
        loss_of().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    def lm_loss(shared):
        logits = (
            prefix_shared_forward(lm, ids, attention, keep_from=start - 1)
            if shared
            else lm(input_ids=ids, attention_mask=attention, logits_to_keep=ids.shape[1] - start + 1).logits
        )
        return -(token_logprobs(logits, ids, start) * mask).sum() / mask.sum()

    def critic_loss(shared):
        out = (
            prefix_shared_forward(critic, ids, attention)
            if shared
            else critic(ids, attention_mask=attention).logits
        )
        return ((out[..., 0] - 1.0) ** 2 * attention).sum() / attention.sum()

    for model, loss in ((lm, lm_loss), (critic, critic_loss)):
        plain, shared = grads(model, lambda f=loss: f(False)), grads(model, lambda f=loss: f(True))
        assert plain.keys() == shared.keys() and len(plain) > 5
        for name, g in plain.items():
            assert (shared[name] - g).abs().max() <= 1e-5 * g.abs().max() + 1e-9, name  # summation order
        assert any(g.abs().max() > 0 for g in plain.values())


def test_lora_models_share_the_prefix_like_the_full_forward(models):
    """peft's wrappers (the SmolLM2 recipe trains LoRA adapters) pass the cache through."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForTokenClassification, LlamaForCausalLM

    _, _, path = models
    lora = {"r": 4, "target_modules": ["q_proj", "v_proj"], "init_lora_weights": False}
    lm = get_peft_model(LlamaForCausalLM.from_pretrained(path), LoraConfig(task_type="CAUSAL_LM", **lora))
    critic = AutoModelForTokenClassification.from_pretrained(path, num_labels=1)
    critic = get_peft_model(critic, LoraConfig(task_type="TOKEN_CLS", **lora))
    ids, attention = batch(5, rows=3, prefix=24, width=40)
    with torch.no_grad():
        plain = lm(input_ids=ids, attention_mask=attention, logits_to_keep=14).logits
        assert (prefix_shared_forward(lm, ids, attention, keep_from=26) - plain[:, :-1]).abs().max() < 1e-5
        plain = critic(input_ids=ids, attention_mask=attention).logits
        assert (prefix_shared_forward(critic, ids, attention) - plain)[attention.bool()].abs().max() < 1e-5


def test_no_shared_prefix_is_the_plain_forward(models):
    lm, _, _ = models
    ids, attention = batch(2, rows=4, prefix=0, width=20)
    ids[:, 0] = torch.arange(4) + 3  # rows differ from column 0
    with torch.no_grad():
        plain = lm(input_ids=ids, attention_mask=attention).logits
        assert torch.equal(prefix_shared_forward(lm, ids, attention), plain)


def _group(cls, world_size, path, cfg, worker_cfg):
    from workers.group import WorkerGroup

    return WorkerGroup(
        cls, world_size, 0.5, 0.0, cls.role, balance_rows=worker_cfg.balance_rows, model_path=path,
        model_cfg=cfg.model, worker_cfg=worker_cfg, optim_cfg=cfg.optim, algo_cfg=cfg.algorithm, seed=0,
    )  # fmt: skip


# per role: worker class, its config section, what it computes, its update, the mask its loss reads and
# the old outputs that loss compares with
ROLES = {
    "actor": ("ActorWorker", "compute_logprobs", "update_policy", "action_mask", "old_logprobs", 44),
    "critic": ("CriticWorker", "compute_values", "update_critic", "value_mask", "old_values", 43),
}


def compare_workers(
    models, role: str, rows: int, seed: int, shared: dict, plain: dict, sizes=(1, 2), mini_batches: int = 1
) -> None:
    """``sizes[0]`` ranks (1) with the ``plain`` worker settings against ``sizes[1]`` FSDP2 ranks (2) with the
    ``shared`` ones, on a batch whose rows share a 40-token prompt: the same log-probs / values before, and
    after one PPO / value epoch of ``mini_batches`` steps, and the same gradient norm."""
    import workers.fsdp
    from steprl.config import StepRLConfig

    cls_name, compute, update, mask_key, old_key, first = ROLES[role]
    cls = getattr(workers.fsdp, cls_name)
    _, _, path = models
    ids, attention = batch(seed, rows=rows, prefix=40, width=72)
    mask = attention.bool().clone()
    mask[:, :first] = False
    noise = torch.randn(rows, 72, generator=torch.Generator().manual_seed(0)) * mask
    data = {"input_ids": ids, "attention_mask": attention.bool(), mask_key: mask}
    data.update({"action_mask": mask, "advantages": noise} if role == "actor" else {"returns": noise})
    after = {}
    for world_size, name, settings_ in ((sizes[0], "plain", plain), (sizes[1], "shared", shared)):
        cfg = StepRLConfig()
        cfg.algorithm.ppo_epochs, cfg.algorithm.num_mini_batches = 1, mini_batches
        cfg.optim.actor_lr = 1e-3
        for key, value in settings_.items():
            setattr(getattr(cfg, role), key, value)
        group = _group(cls, world_size, path, cfg, getattr(cfg, role))
        old = group.gather_rows(compute, data)
        if name == "shared":  # where the loss reads them (columns past a row's end are not computed alike)
            assert torch.allclose(old[mask], data[old_key][mask], atol=1e-5)
        data[old_key] = old * mask
        metrics = group.mean_metrics(update, data, mini_batches)
        after[name] = (group.gather_rows(compute, data), metrics[f"{role}/grad_norm"])
        group.shutdown()
    (plain_out, norm_plain), (shared_out, norm_shared) = after["plain"], after["shared"]
    assert (plain_out - data[old_key])[mask].abs().max() > 1e-4  # the step did something
    assert torch.allclose(shared_out[mask], plain_out[mask], atol=2e-5)
    assert norm_shared == pytest.approx(norm_plain, rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize(("role", "rows"), [("actor", 5), ("critic", 5), ("actor", 3)])
def test_workers_with_prefix_sharing_update_like_without(ray_cluster, models, role, rows):
    """2 FSDP2 ranks sharing the prefix compute the same log-probs / values and take the same PPO / value
    step as 1 rank without (one rank's shard gets a padding row). The critic's path also broadcasts the
    prefix's values into every row. With 3 rows the second rank holds one live row, which has nothing to
    share: both ranks must then run the plain forward (a rank calling the model twice while the other calls
    it once would leave FSDP2's collectives hanging)."""
    compare_workers(models, role, rows, 3, shared={"share_prefix": True}, plain={"share_prefix": False})
