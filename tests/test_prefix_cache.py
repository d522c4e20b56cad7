"""The call-level shared prefix (``steprl.prefix_cache``): the prefix runs once and every pass of the call
continues from its keys and values; in an update the passes' gradients on them go through the prefix once,
at the end. It must give what one plain forward/backward over all rows gives (summation order aside)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from steprl.modeling import token_logprobs, usable_prefix
from steprl.prefix_cache import SharedPrefix
from tests.test_prefix_sharing import batch, compare_workers


def worst(diff: torch.Tensor) -> float:
    """The largest absolute entry, 0 for none (a pass of padding rows compares nothing)."""
    return float(torch.cat([diff.abs().flatten(), torch.zeros(1)]).max())


def _prefix(model, ids, attention, full_output: bool, length: int) -> SharedPrefix:
    return SharedPrefix.run(model, ids[:1, :length], attention[:1, :length], full_output)


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 10_000), rows=st.integers(2, 7), prefix=st.integers(16, 40), extra=st.integers(2, 25)
)
def test_passes_from_one_prefix_equal_the_plain_forward(models, seed, rows, prefix, extra):
    """Each row in a pass of its own (and all rows in one) against the plain forward; padding rows too."""
    lm, critic, _ = models
    width = prefix + extra
    ids, attention = batch(seed, rows, prefix, width, padding_rows=1)
    start = prefix + 1
    with torch.no_grad():
        plain_lp = token_logprobs(lm(input_ids=ids, attention_mask=attention).logits, ids, 1)
        plain_v = critic(input_ids=ids, attention_mask=attention).logits[..., 0]
        lm_prefix = _prefix(lm, ids, attention, False, prefix)
        v_prefix = _prefix(critic, ids, attention, True, prefix)
        for groups in ([[r] for r in range(rows)], [list(range(rows))]):
            for g in groups:
                logits = lm_prefix.forward(lm, ids[g], attention[g], keep_from=start - 1)
                lp = token_logprobs(logits, ids[g], start)
                live = attention[g].bool()
                live[:, :start] = False
                assert worst((lp - plain_lp[g])[live]) < 1e-5
                values = v_prefix.forward(critic, ids[g], attention[g])[..., 0]
                assert values.shape == plain_v[g].shape
                assert worst((values - plain_v[g])[attention[g].bool()]) < 1e-5


def test_gradients_through_one_prefix_equal_the_plain_backward(models):
    """Three passes' backwards, then the prefix's: the plain full-batch gradient, for both heads."""
    lm, critic, _ = models
    ids, attention = batch(7, rows=5, prefix=30, width=55, padding_rows=1)
    start = 32
    mask = attention.bool().clone()
    mask[:, :start] = False
    weight = torch.randn(ids.shape, generator=torch.Generator().manual_seed(1))

    def lm_loss(out, rows, shared):
        lp = token_logprobs(out, ids[rows], start if shared else 1)
        return -(lp * weight[rows] * mask[rows]).sum()

    def critic_loss(out, rows, shared):
        return ((out[..., 0] - weight[rows]) ** 2 * attention[rows]).sum()

    for model, loss_of, full in ((lm, lm_loss, False), (critic, critic_loss, True)):
        model.zero_grad()
        everything = list(range(ids.shape[0]))
        loss_of(model(input_ids=ids, attention_mask=attention).logits, everything, False).backward()
        plain = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad()
        shared = _prefix(model, ids, attention, full, usable_prefix(ids, attention, start - 1))
        assert shared.length == 30
        for rows in ([0, 1], [2], [3, 4]):  # row 4 is padding
            out = shared.forward(model, ids[rows], attention[rows], None if full else start - 1)
            loss_of(out, rows, True).backward()
        shared.backward()
        got = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        assert got.keys() == plain.keys() and len(plain) > 5
        for name, g in plain.items():
            assert (got[name] - g).abs().max() <= 1e-5 * g.abs().max() + 1e-8, name
        assert any(g.abs().max() > 0 for g in plain.values())
        with pytest.raises(ValueError, match="cannot continue"):  # a pass that ends inside the prefix
            shared.forward(model, ids[:, :30], attention[:, :30])


@pytest.mark.slow
@pytest.mark.parametrize(("role", "gather_once"), [("actor", True), ("critic", True), ("actor", False)])
def test_workers_with_many_passes_share_one_prefix(ray_cluster, models, role, gather_once):
    """2 FSDP2 ranks with a pass per row (4 + 3 rows: one shard gets a padding row) and the call's prefix
    run once, against 1 rank in one pass without sharing."""
    shared = {"share_prefix": True, "gather_once": gather_once, "micro_batch_tokens": 72}
    compare_workers(models, role, 7, 11, shared, plain={"share_prefix": False, "micro_batch_tokens": 10_000})
