"""Speed changes that must not change numbers: response-only logits, the batched hf engine, threads.

Each test compares against an independent reference computed here (a full forward over every position,
teacher forcing), with the tolerance stated where floats are compared.
"""

from __future__ import annotations

import pytest
import torch

from steprl.modeling import (
    _JoinGraph,
    _PickedLogprob,
    auto_threads,
    first_used_column,
    kept_positions,
    token_logprobs,
)

TOL = 1e-5  # fp32: the same matmuls on fewer rows; only summation order may differ


def _model(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def test_response_only_logprobs_equal_the_full_forward(random_llama):
    model = _model(random_llama)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 97, (3, 20), generator=gen)
    attn = torch.ones_like(ids)
    attn[2, 15:] = 0  # a right-padded row
    action = torch.zeros_like(ids, dtype=torch.bool)
    action[0, 9:14], action[1, 7:12], action[2, 11:15] = True, True, True
    start = first_used_column(action)
    assert start == 7
    with torch.no_grad():
        full = token_logprobs(model(input_ids=ids, attention_mask=attn).logits, ids)
        kept = model(input_ids=ids, attention_mask=attn, logits_to_keep=ids.shape[1] - start + 1).logits
        part = token_logprobs(kept, ids, start)
    assert kept.shape[1] == 20 - 7 + 1  # the prompt's logits were never computed
    assert part.shape == full.shape
    assert torch.allclose(part[:, start:], full[:, start:], atol=TOL, rtol=0)
    assert (part[:, :start] == 0).all()
    assert torch.allclose(part[action], full[action], atol=TOL, rtol=0)


def test_response_only_logprob_gradients_equal_the_full_forward(random_llama):
    """The PPO update trains on the same gradients (same loss, fewer discarded logits)."""
    ids = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(2))
    action = torch.zeros_like(ids, dtype=torch.bool)
    action[:, 10:] = True
    grads = []
    for keep in (0, ids.shape[1] - first_used_column(action) + 1):  # 0: all positions
        model = _model(random_llama)
        out = model(input_ids=ids, logits_to_keep=keep).logits
        lp = token_logprobs(out, ids, 1 if keep == 0 else first_used_column(action))
        (-(lp * action).sum() / action.sum()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=TOL, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_picked_logprob_equals_log_softmax_then_gather(dtype):
    """The fused log-prob's value and gradient against autograd's ``log_softmax`` + ``gather``, with an
    upstream gradient that is not all ones and a token picked twice in a row (scatter_add)."""
    gen = torch.Generator().manual_seed(3)
    logits = (torch.randn(3, 7, 11, generator=gen, dtype=dtype) * 4).requires_grad_()
    ids = torch.randint(0, 11, (3, 7), generator=gen)
    ids[0, 1] = ids[0, 2]
    upstream = torch.randn(3, 7, generator=gen, dtype=dtype)
    ref = torch.log_softmax(logits, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    (ref_grad,) = torch.autograd.grad((ref * upstream).sum(), logits)
    out = _PickedLogprob.apply(logits, ids)
    (grad,) = torch.autograd.grad((out * upstream).sum(), logits)
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    assert torch.allclose(out, ref, atol=tol, rtol=0)
    assert torch.allclose(grad, ref_grad, atol=tol, rtol=0)
    if dtype == torch.float64:
        assert torch.autograd.gradcheck(
            lambda x: _PickedLogprob.apply(x, ids), (logits.detach().requires_grad_(),)
        )


def test_kept_positions_are_the_predicting_columns():
    assert kept_positions(10, 6).tolist() == [6, 7, 8]  # column 9 predicts nothing
    assert kept_positions(10, 6, offset=4).tolist() == [2, 3, 4]  # the tail of a shared-prefix forward
    assert kept_positions(10, 9).tolist() == []  # nothing to predict: no logits at all
    ids = torch.arange(10).unsqueeze(0)
    logits = torch.randn(1, 3, 12)
    picked = token_logprobs(logits, ids, start=7)  # the kept width L - start: used as it is
    assert torch.allclose(picked[0, 7:], torch.log_softmax(logits, -1)[0, torch.arange(3), ids[0, 7:]])
    wide = torch.cat([logits, torch.randn(1, 1, 12)], dim=1)  # L - start + 1: the last column is dropped
    assert torch.equal(token_logprobs(wide, ids, start=7), picked)


def test_join_graph_is_the_identity_and_gives_the_other_a_zero_gradient():
    tail = torch.randn(2, 3, requires_grad=True)
    other = torch.randn(4, requires_grad=True)
    out = _JoinGraph.apply(tail, other * 2)
    assert torch.equal(out, tail)
    (out * torch.arange(6.0).view(2, 3)).sum().backward()
    assert torch.equal(tail.grad, torch.arange(6.0).view(2, 3))
    assert torch.equal(other.grad, torch.zeros(4))  # reached through the joined graph, as zeros


def test_first_used_column_edges():
    m = torch.zeros(2, 5, dtype=torch.bool)
    assert first_used_column(m) == 5  # nothing used: only the last column's logits (one, discarded)
    m[1, 0] = True
    assert first_used_column(m) == 1  # column 0 has no prediction
    m[1, 0], m[0, 3] = False, True
    assert first_used_column(m) == 3


def test_auto_threads():
    import os

    cores = len(os.sched_getaffinity(0))
    assert auto_threads(3, 2) == 3
    assert auto_threads(0, 1) == cores
    assert auto_threads(0, 2) == max(1, cores // 2)
    assert auto_threads(0, 10 * cores) == 1


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_hf_engine_generations_match_teacher_forcing(random_llama, temperature):
    """Batched generation (left-padded prompts, stop tokens, per-row budgets): every sampled token's
    log-prob equals the full model's log-prob of that token given the row's own prefix; greedy picks
    the argmax; a row ends at its stop token or budget."""
    from steprl.engines.hf_engine import HFEngine

    stop = [5, 6]
    engine = HFEngine(random_llama, stop_token_ids=stop, pad_token_id=0, seed=3)
    prompts = [[11, 12, 13], [20, 21, 22, 23, 24, 25, 26], [30], [40, 41]]
    budgets = [12, 9, 0, 15]
    gens = engine.generate(prompts, budgets, temperature, seed=4, entropy_tokens=3)
    model = _model(random_llama)
    assert gens[2].token_ids == [] and not gens[2].stopped
    for p, b, g in zip(prompts, budgets, gens, strict=True):
        assert len(g.token_ids) <= b and len(g.logprobs) == len(g.token_ids)
        assert g.entropies is not None and len(g.entropies) == min(3, len(g.token_ids))
        if not g.token_ids:
            continue
        ended_on_stop = g.token_ids[-1] in stop
        assert g.stopped == ended_on_stop
        assert ended_on_stop or len(g.token_ids) == b
        assert not any(t in stop for t in g.token_ids[:-1])
        ids = torch.tensor([p + g.token_ids])
        with torch.no_grad():
            ref = torch.log_softmax(model(input_ids=ids).logits[0, len(p) - 1 : -1].float(), -1)
        picked = ref.gather(-1, torch.tensor(g.token_ids).unsqueeze(-1)).squeeze(-1)
        assert torch.allclose(torch.tensor(g.logprobs), picked, atol=1e-4, rtol=0)  # KV cache vs one pass
        if temperature == 0.0:
            assert g.token_ids == ref.argmax(-1).tolist()


def _actor(path, dtype: str):
    """A real 1-rank ActorWorker in this process (gloo), as the Ray group would start it."""
    import socket

    from steprl.config import AlgorithmConfig, ModelConfig, OptimConfig, WorkerConfig
    from workers.fsdp import ActorWorker

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    w = ActorWorker(0, 1, path, ModelConfig(path=path, dtype=dtype), WorkerConfig(world_size=1, threads=1),
                    OptimConfig(actor_lr=1e-3), AlgorithmConfig(ppo_epochs=1, num_mini_batches=1), 0)  # fmt: skip
    w.setup("127.0.0.1", port)
    return w


def _batch():
    gen = torch.Generator().manual_seed(5)
    ids = torch.randint(0, 97, (4, 24), generator=gen)
    attn = torch.ones(4, 24, dtype=torch.bool)
    action = torch.zeros(4, 24, dtype=torch.bool)
    action[:, 12:] = True
    return {"input_ids": ids, "attention_mask": attn, "action_mask": action,
            "advantages": torch.randn(4, 24, generator=gen) * action}  # fmt: skip


# bf16 keeps 8 mantissa bits: log-probs of a 97-token vocabulary (about -4.6) move by ~1e-2
BF16_LOGPROB_TOL = 0.1
BF16_LOSS_TOL = 0.02


def test_bf16_compute_keeps_fp32_master_weights_and_close_numbers(random_llama):
    """model.dtype=bfloat16: forward/backward in bf16 (FSDP2 mixed precision), parameters and AdamW state in
    fp32; log-probs and the PPO loss stay within the stated tolerance of the fp32 path."""
    results = {}
    for dtype in ("float32", "bfloat16"):
        w = _actor(random_llama, dtype)
        try:
            data = _batch()
            lp = w.compute_logprobs(data)
            data["old_logprobs"] = lp
            metrics = w.update_policy(data)
            results[dtype] = (lp, metrics)
            assert all(p.dtype == torch.float32 for p in w.model.parameters())  # the master copy
            state = w.full_state_dict()
            assert all(v.dtype == torch.float32 for v in state.values())  # what the engines receive
        finally:
            w.shutdown()
    (lp32, m32), (lp16, m16) = results["float32"], results["bfloat16"]
    mask = _batch()["action_mask"]
    assert (lp32[mask] - lp16[mask]).abs().max() < BF16_LOGPROB_TOL
    assert (lp32[mask] - lp16[mask]).abs().max() > 0  # it did compute in bf16
    assert abs(m32["actor/pg_loss"] - m16["actor/pg_loss"]) < BF16_LOSS_TOL
