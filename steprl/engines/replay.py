"""An engine that replays scripted assistant turns: real episodes (real tool calls, real reward
pipeline) with a known policy. For tests and benchmarks of what comes after generation."""

from __future__ import annotations

from steprl.engines.base import Generation, RolloutEngine


class ReplayEngine(RolloutEngine):
    """Each episode's scripted turns, in order; an episode is recognised by its prompt ids.

    ``scripts`` maps an episode's starting prompt ids to its assistant turns (token ids); every
    replayed token gets the log-prob ``logprob``.
    """

    def __init__(self, scripts: dict[tuple[int, ...], list[list[int]]], logprob: float = 0.0) -> None:
        self.scripts, self.logprob = scripts, logprob
        self.turn = dict.fromkeys(scripts, 0)

    def generate(
        self, prompts: list[list[int]], max_tokens: list[int], temperature: float, seed: int | None = None
    ) -> list[Generation]:
        out = []
        for prompt, budget in zip(prompts, max_tokens, strict=True):
            key = next((k for k in self.scripts if tuple(prompt[: len(k)]) == k), None)
            if key is None:
                raise KeyError("no script starts with this prompt")
            if self.turn[key] >= len(self.scripts[key]):
                raise IndexError(f"the script of this episode has only {len(self.scripts[key])} turns")
            ids = self.scripts[key][self.turn[key]][:budget]
            self.turn[key] += 1
            out.append(Generation(ids, [self.logprob] * len(ids), True))
        return out

    def load_weights(self, weights_dir: str) -> None:
        raise RuntimeError("a replay engine has no weights")
