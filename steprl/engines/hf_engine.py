"""transformers engine: a plain KV-cached sampling loop, same interface as the vLLM engine."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from steprl.algorithms.arpo import normalized_entropy_from_logits
from steprl.engines.base import Generation, RolloutEngine


class HFEngine(RolloutEngine):
    def __init__(
        self,
        model_path: str,
        stop_token_ids: list[int],
        pad_token_id: int,
        dtype: str = "float32",
        device: str = "cpu",
        seed: int = 0,
        attn_implementation: str = "sdpa",
        **_: object,
    ) -> None:
        from transformers import AutoModelForCausalLM

        self.device = torch.device(device)
        self.model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=getattr(torch, dtype), attn_implementation=attn_implementation
        ).to(self.device)
        self.model.eval()
        self.stop = torch.tensor(stop_token_ids, device=self.device)
        self.pad_token_id = pad_token_id
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    @torch.no_grad()
    def generate(
        self,
        prompts: list[list[int]],
        max_tokens: list[int],
        temperature: float,
        seed: int | None = None,
        entropy_tokens: int = 0,
    ) -> list[Generation]:
        """``entropy_tokens > 0``: exact normalized entropies of the first that many tokens (from logits).

        One batched forward per generated position; the bookkeeping (which row is still going, its ids,
        log-probs and entropies) stays in tensors, so no Python work per row and token."""
        if seed is not None:
            self.generator.manual_seed(seed)
        B = len(prompts)
        if B == 0:
            return []
        L = max(len(p) for p in prompts)
        ids = torch.full((B, L), self.pad_token_id, dtype=torch.long, device=self.device)
        mask = torch.zeros(B, L, dtype=torch.long, device=self.device)
        for b, p in enumerate(prompts):  # left padding so every row's next token is at the end
            ids[b, L - len(p) :] = torch.tensor(p)
            mask[b, L - len(p) :] = 1
        budget = torch.tensor(max_tokens, device=self.device)
        steps = int(budget.max().item())
        tokens = torch.zeros(B, max(steps, 1), dtype=torch.long, device=self.device)
        logps = torch.zeros(B, max(steps, 1), device=self.device)
        ents = torch.zeros(B, max(entropy_tokens, 1), device=self.device)
        length = torch.zeros(B, dtype=torch.long, device=self.device)  # tokens kept per row
        stopped = torch.zeros(B, dtype=torch.bool, device=self.device)
        active = budget > 0
        past, step_input = None, ids
        step_pos = (mask.cumsum(-1) - 1).clamp(min=0)
        for t in range(steps):
            out = self.model(
                input_ids=step_input,
                attention_mask=mask,
                position_ids=step_pos,
                past_key_values=past,
                use_cache=True,
                logits_to_keep=1,
            )
            past = out.past_key_values
            logits = out.logits[:, -1].float()
            logp = torch.log_softmax(logits, dim=-1)
            if t < entropy_tokens:
                ents[:, t] = normalized_entropy_from_logits(logits)
            if temperature > 0:
                probs = torch.softmax(logits / temperature, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=self.generator).squeeze(-1)
            else:
                nxt = logp.argmax(-1)
            tokens[:, t] = nxt  # rows that already ended keep their length; what lies beyond it is ignored
            logps[:, t] = logp.gather(-1, nxt.unsqueeze(-1)).squeeze(-1)
            length += active.long()
            hit = active & torch.isin(nxt, self.stop)
            stopped |= hit
            active = active & ~hit & (length < budget)
            if not bool(active.any()):
                break
            step_input = nxt.unsqueeze(-1)
            mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype, device=self.device)], dim=-1)
            step_pos = step_pos[:, -1:] + 1
        tokens_l, logps_l, ents_l = tokens.tolist(), logps.tolist(), ents.tolist()
        lengths, stopped_l = length.tolist(), stopped.tolist()
        return [
            Generation(
                tokens_l[b][: lengths[b]],
                logps_l[b][: lengths[b]],
                stopped_l[b],
                ents_l[b][: min(lengths[b], entropy_tokens)] if entropy_tokens > 0 else None,
            )
            for b in range(B)
        ]

    def load_weights(self, weights_dir: str) -> None:
        import glob

        state = {}
        for f in sorted(glob.glob(f"{weights_dir}/*.safetensors")):
            state.update(load_file(f))
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        missing = [m for m in missing if not m.endswith("lm_head.weight")]  # tied to the embeddings
        if missing or unexpected:
            raise RuntimeError(
                f"weights in {weights_dir} do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}"
            )
