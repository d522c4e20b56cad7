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
        **_: object,
    ) -> None:
        from transformers import AutoModelForCausalLM

        self.device = torch.device(device)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype)).to(
            self.device
        )
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
        """``entropy_tokens > 0``: exact normalized entropies of the first that many tokens (from logits)."""
        if seed is not None:
            self.generator.manual_seed(seed)
        B, L = len(prompts), max(len(p) for p in prompts)
        ids = torch.full((B, L), self.pad_token_id, dtype=torch.long, device=self.device)
        mask = torch.zeros(B, L, dtype=torch.long, device=self.device)
        for b, p in enumerate(prompts):  # left padding so every row's next token is at the end
            ids[b, L - len(p) :] = torch.tensor(p)
            mask[b, L - len(p) :] = 1
        budget = torch.tensor(max_tokens, device=self.device)
        active = budget > 0
        out_ids: list[list[int]] = [[] for _ in range(B)]
        out_lps: list[list[float]] = [[] for _ in range(B)]
        stopped = [False] * B
        out_ent: list[list[float]] = [[] for _ in range(B)]
        past, step_input = None, ids
        position = (mask.cumsum(-1) - 1).clamp(min=0)
        step_pos = position
        for _t in range(int(budget.max().item()) if B else 0):
            out = self.model(
                input_ids=step_input,
                attention_mask=mask,
                position_ids=step_pos,
                past_key_values=past,
                use_cache=True,
            )
            past = out.past_key_values
            logp = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
            ent = normalized_entropy_from_logits(out.logits[:, -1]) if _t < entropy_tokens else None
            if temperature > 0:
                probs = torch.softmax(out.logits[:, -1].float() / temperature, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=self.generator).squeeze(-1)
            else:
                nxt = logp.argmax(-1)
            for b in range(B):
                if active[b]:
                    tok = int(nxt[b])
                    out_ids[b].append(tok)
                    out_lps[b].append(float(logp[b, tok]))
                    if ent is not None:
                        out_ent[b].append(float(ent[b]))
                    if bool((self.stop == tok).any()):
                        stopped[b], active[b] = True, False
                    elif len(out_ids[b]) >= int(budget[b]):
                        active[b] = False
            if not bool(active.any()):
                break
            step_input = nxt.unsqueeze(-1)
            mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype, device=self.device)], dim=-1)
            step_pos = step_pos[:, -1:] + 1
        return [
            Generation(i, lp, s, e if entropy_tokens > 0 else None)
            for i, lp, s, e in zip(out_ids, out_lps, stopped, out_ent, strict=True)
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
