"""How rows are split into forward/backward passes: rows of like length together, within the token
budget, every row exactly once, as many passes as the ranks agreed on."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from steprl.modeling import auto_micro_batch_tokens, length_sorted_passes, pass_rows


def _cost(lengths: list[int], group: list[int], prefix: int) -> int:
    return prefix + len(group) * max(max(lengths[i] for i in group) - prefix, 1)


def test_rows_of_like_length_share_a_pass():
    # sorted: 100 (row 0), 90 (row 2), 40 (row 3), 30 (row 1); 2 x 100 = 200 fits, 3 x 100 does not
    assert length_sorted_passes([100, 30, 90, 40], 200) == [[0, 2], [3, 1]]
    # a 60-token prefix counted once: 60 + 3 x 40 = 180 <= 200, so rows 0, 2 and 3 fit together
    assert length_sorted_passes([100, 30, 90, 40], 200, shared_prefix=60) == [[0, 2, 3], [1]]
    assert length_sorted_passes([100, 30, 90, 40], 50) == [[0], [2], [3], [1]]  # over budget: a row each
    assert length_sorted_passes([100, 30, 90, 40], 10_000) == [[0, 2, 3, 1]]


def test_more_passes_when_another_rank_needs_them():
    assert length_sorted_passes([100, 30, 90, 40], 10_000, num_passes=2) == [[0, 2], [3, 1]]
    assert len(length_sorted_passes([5, 5], 10_000, num_passes=7)) == 2  # never more passes than rows
    assert length_sorted_passes([], 100, num_passes=3) == []


def test_padding_rows_of_length_zero_go_last():
    assert length_sorted_passes([0, 50, 0, 20], 100) == [[1, 3], [0, 2]]


def test_preference_rows_are_split_in_contiguous_chunks():
    data = {"cand_input_ids": torch.zeros(5, 2, 10, dtype=torch.long), "attention_mask": torch.ones(5, 10)}
    assert pass_rows(data, 45) == [[0, 1], [2], [3, 4]]  # 20 tokens a row: 3 chunks of at most 40
    assert pass_rows(data, 10_000, num_passes=2) == [[0, 1], [2, 3, 4]]


def test_input_ids_rows_are_split_by_attended_length():
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    data = {"input_ids": torch.zeros(3, 4, dtype=torch.long), "attention_mask": mask}
    assert pass_rows(data, 5) == [[1], [0, 2]]


def test_the_cpu_pass_is_capped_for_speed_not_for_memory():
    class Small:
        hidden_size, intermediate_size, num_hidden_layers, vocab_size = 128, 384, 4, 1024

    assert auto_micro_batch_tokens(Small(), True, device="cuda") > 40_000  # the 2 GiB memory budget
    assert auto_micro_batch_tokens(Small(), True, device="cpu") == 2500


@settings(max_examples=300, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 400), max_size=40),
    budget=st.integers(1, 3000),
    prefix=st.integers(0, 120),
    num_passes=st.integers(0, 50),
)
def test_every_row_once_within_budget(lengths, budget, prefix, num_passes):
    groups = length_sorted_passes(lengths, budget, prefix, num_passes)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert all(groups)
    alone = length_sorted_passes(lengths, budget, prefix)
    assert len(groups) == max(len(alone), min(num_passes, len(lengths)))
    for g in alone:  # the budget holds unless one row alone exceeds it
        assert len(g) == 1 or _cost(lengths, g, prefix) <= budget
    for g in groups:  # each pass is as wide as its first row
        assert lengths[g[0]] == max(lengths[i] for i in g)
