"""Shared fixtures: the embedded tiny model (built once per machine, cached) and its encoder."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_path() -> str:
    from steprl.models.tiny import ensure_tiny_model

    return str(ensure_tiny_model())


@pytest.fixture(scope="session")
def tokenizer(tiny_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_path)


@pytest.fixture(scope="session")
def atlas():
    from tools_env import get_suite

    return get_suite("atlas")


@pytest.fixture(scope="session")
def encoder(tokenizer, atlas):
    from steprl.chat import ChatEncoder

    return ChatEncoder(tokenizer, [t.schema() for t in atlas.tools()], atlas.system_prompt)


@pytest.fixture(scope="module")
def ray_cluster():
    """A real local Ray cluster for the worker tests of one module."""
    import ray

    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def random_llama(tmp_path_factory):
    """A small random Llama (the SmolLM2 architecture) saved as a Hugging Face directory."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("llama")
    LlamaForCausalLM(cfg).eval().save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def models(random_llama):
    """The random Llama (the SmolLM2 architecture) as a causal LM and as a value model (prefix-sharing tests)."""
    import torch
    from transformers import AutoModelForTokenClassification, LlamaForCausalLM

    lm = LlamaForCausalLM.from_pretrained(random_llama, attn_implementation="sdpa").eval()
    critic = AutoModelForTokenClassification.from_pretrained(
        random_llama, num_labels=1, attn_implementation="sdpa"
    )
    torch.nn.init.normal_(critic.score.weight)  # a non-zero head, so values differ per position
    return lm, critic.eval(), random_llama
