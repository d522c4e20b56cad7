"""Rows dealt to data-parallel ranks by tokens (``steprl.modeling.balanced_order``,
``workers.group.WorkerGroup.shards``): the order by hand, its invariants under hypothesis, and 2 FSDP2
ranks with and without it taking the same steps."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from steprl.modeling import balanced_order, row_bounds, shard_rows
from tests.test_prefix_sharing import batch, compare_workers


def test_balanced_order_golden():
    lengths = [5, 1, 4, 2, 3, 0]  # by position: rank 0 holds 5+1+4 = 10 tokens, rank 1 holds 2+3+0 = 5
    # longest first, each to the lighter rank with a free slot: 5->A, 4->B, 3->B (4<5), 2->A (5<7),
    # 1->A (7=7, the first rank wins the tie), then row 5 (0 tokens) to the rank with a free slot, B
    assert balanced_order(lengths, 2) == [0, 3, 1, 2, 4, 5]  # loads 8 and 7
    # two mini-batches: row_bounds(3, 2) = chunks [0, 2) and [2, 3) of each shard; the first mini-batch
    # is rows {0, 1, 3, 4} (5, 1, 2, 3): 5->A, 3->B, 2->B, 1->A; the second rows {2, 5}: 4->A, 0->B
    assert row_bounds(3, 2) == [(0, 2), (2, 3)]
    assert balanced_order(lengths, 2, num_groups=2) == [0, 1, 2, 4, 3, 5]
    # 3 rows over 2 ranks: slot 3 is a padding row, dealt last
    assert balanced_order([1, 9, 4], 2) == [1, 3, 2, 0]
    assert balanced_order([7, 7, 7], 1) == [0, 1, 2]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(0, 400), min_size=1, max_size=40),
    st.integers(1, 5),
    st.integers(1, 4),
)
def test_balanced_order_keeps_mini_batches_and_evens_tokens(lengths, num_shards, num_groups):
    rows = len(lengths)
    per = math.ceil(rows / num_shards)
    order = balanced_order(lengths, num_shards, num_groups)
    assert sorted(order) == list(range(num_shards * per))  # every row (and padding slot) once
    tokens = [*lengths, *[0] * (num_shards * per - rows)]
    for a, b in row_bounds(per, num_groups):
        slots = [r * per + j for r in range(num_shards) for j in range(a, b)]
        assert sorted(order[s] for s in slots) == slots  # the mini-batch holds the rows it held
        loads = [sum(tokens[order[r * per + j]] for j in range(a, b)) for r in range(num_shards)]
        assert max(loads) - min(loads) <= max(tokens[s] for s in slots)  # within its longest row


def test_shard_rows_in_an_order_and_back():
    data = {"input_ids": torch.arange(15).view(5, 3), "action_mask": torch.ones(5, 3, dtype=torch.bool)}
    order = [4, 0, 5, 2, 1, 3]
    shards = shard_rows(data, 2, order)
    assert shards[0]["input_ids"][:, 0].tolist() == [12, 0, 0]  # rows 4, 0, then padding (row 0's data)
    assert shards[0]["row_is_real"].tolist() == [True, True, False]
    assert not shards[0]["action_mask"][2].any()  # a padding row's masks are off
    out = torch.cat([s["input_ids"] for s in shards])[torch.argsort(torch.tensor(order))][:5]
    assert torch.equal(out, data["input_ids"])  # what WorkerGroup.gather_rows does
    with pytest.raises(ValueError, match="slots"):
        shard_rows(data, 2, [0, 1, 2])


@pytest.mark.slow
@pytest.mark.parametrize("role", ["actor", "critic"])
def test_balanced_ranks_take_the_same_steps(ray_cluster, models, role):
    """2 ranks dealing rows by tokens against 2 ranks by position, 2 mini-batches per epoch: the same
    log-probs / values (back in row order), and after the epoch, the same outputs and gradient norm (the
    mini-batches kept their rows). The batch's lengths are such that balancing moves rows."""
    seed, rows = 5, 7
    _, attention = batch(seed, rows=rows, prefix=40, width=72)
    lengths = attention.sum(-1).tolist()
    assert balanced_order(lengths, 2, 2) != list(range(8))
    compare_workers(
        models, role, rows, seed, shared={"balance_rows": True}, plain={"balance_rows": False},
        sizes=(2, 2), mini_batches=2,
    )  # fmt: skip
