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
