"""The engine interface the episode loop needs: generate one turn for many prompts, reload weights."""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Generation:
    """One generated turn: sampled ids, their log-probs, and whether it ended on a stop token.

    ``entropies`` (only when ``generate`` was asked for ``entropy_tokens > 0``): the normalized
    entropy in [0, 1] of the next-token distribution (temperature 1) at each of the first
    ``entropy_tokens`` generated tokens; exact on engines that see the logits, a top-k estimate on
    engines that only return top-k log-probs (see ``steprl.algorithms.arpo``).
    """

    token_ids: list[int]
    logprobs: list[float]
    stopped: bool
    entropies: list[float] | None = None


class RolloutEngine(ABC):
    @abstractmethod
    def generate(
        self, prompts: list[list[int]], max_tokens: list[int], temperature: float, seed: int | None = None
    ) -> list[Generation]:
        """Continue each prompt until a stop token or its token budget.

        Callers that need per-token entropies pass ``entropy_tokens=k`` (a keyword the built-in
        engines accept); it is never passed when 0, so engines without it keep working.
        """

    @abstractmethod
    def load_weights(self, weights_dir: str) -> None:
        """Replace the model's weights in place with the safetensors files in ``weights_dir``."""

    def shutdown(self) -> None:  # noqa: B027 - optional hook
        """Release processes and memory."""


def stop_token_ids(model_path: str, turn_stops: list[int]) -> list[int]:
    """Every id that ends a turn: the chat template's end-of-turn and the tokenizer's EOS
    (``ChatEncoder.stop_token_ids``) plus the EOS ids of the model's generation config. vLLM stops at
    the latter by itself, so both engines count all of them, and a turn that ends on one of them is
    never mistaken for a truncated one."""
    from transformers import GenerationConfig

    out = list(dict.fromkeys(turn_stops))
    try:
        eos = GenerationConfig.from_pretrained(model_path).eos_token_id
    except OSError:  # no generation_config.json
        eos = None
    for i in [eos] if isinstance(eos, int) else list(eos or []):
        if i not in out:
            out.append(int(i))
    return out


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
