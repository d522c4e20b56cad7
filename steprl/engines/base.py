"""The engine interface the episode loop needs: generate one turn for many prompts, reload weights."""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Generation:
    """One generated turn: sampled ids, their log-probs, and whether it ended on a stop token."""

    token_ids: list[int]
    logprobs: list[float]
    stopped: bool


class RolloutEngine(ABC):
    @abstractmethod
    def generate(
        self, prompts: list[list[int]], max_tokens: list[int], temperature: float, seed: int | None = None
    ) -> list[Generation]:
        """Continue each prompt until a stop token or its token budget."""

    @abstractmethod
    def load_weights(self, weights_dir: str) -> None:
        """Replace the model's weights in place with the safetensors files in ``weights_dir``."""

    def shutdown(self) -> None:  # noqa: B027 - optional hook
        """Release processes and memory."""


ENGINES: dict[str, str | Callable[..., RolloutEngine]] = {
    "vllm": "steprl.engines.vllm_engine:VLLMEngine",
    "hf": "steprl.engines.hf_engine:HFEngine",
}


def register_engine(name: str, factory: Callable[..., RolloutEngine]) -> None:
    ENGINES[name] = factory


def get_engine(name: str) -> Callable[..., RolloutEngine]:
    """Engines are imported lazily: vLLM is heavy and optional."""
    if name not in ENGINES:
        raise KeyError(f"unknown rollout engine {name!r}; known: {sorted(ENGINES)}")
    factory = ENGINES[name]
    if isinstance(factory, str):
        module, attr = factory.split(":")
        factory = getattr(importlib.import_module(module), attr)
    return factory
