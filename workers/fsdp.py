"""Actor, critic and reference workers: one Ray actor per rank, the model sharded with FSDP2.

Each worker group forms its own process group (gloo on CPU, nccl on CUDA). The controller hands
every rank an equal shard of the batch (``steprl.modeling.shard_rows``); losses are scaled so that
the gradient FSDP averages over ranks equals the gradient of the global token-mean loss.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

from steprl.algorithms.losses import entropy_from_logits, kl_penalty, masked_mean, ppo_policy_loss, value_loss
from steprl.config import AlgorithmConfig, ModelConfig, OptimConfig, WorkerConfig
from steprl.modeling import (
    TensorDict,
    auto_micro_batch_tokens,
    auto_threads,
    first_used_column,
    kept_positions,
    micro_batches,
    pass_rows,
    prefix_shared_forward,
    token_logprobs,
    trim_padding,
    usable_prefix,
)
from steprl.prefix_cache import SharedPrefix
from workers.fsdp_checkpoint import ShardedCheckpoint
from workers.fsdp_gather import gathered, sync_on
from workers.model_io import merge_lora, without_dropout, write_safetensors


class FSDPWorker(ShardedCheckpoint):
    """Base: process-group setup, model loading and sharding, full-state export."""

    role = "base"
    vocab_logits = True  # the model ends in a language-model head (sizes the auto micro-batch)

    def __init__(
        self,
        rank: int,
        world_size: int,
        model_path: str,
        model_cfg: ModelConfig,
        worker_cfg: WorkerConfig,
        optim_cfg: OptimConfig,
        algo_cfg: AlgorithmConfig,
        seed: int,
    ) -> None:
        self.rank, self.world_size = rank, world_size
        self.model_path, self.model_cfg, self.worker_cfg = model_path, model_cfg, worker_cfg
        self.optim_cfg, self.algo_cfg = optim_cfg, algo_cfg
        self.seed = seed
        self._prefix: SharedPrefix | None = None  # the running call's shared prefix (_prefix_once)
        torch.set_num_threads(auto_threads(worker_cfg.threads, world_size))
        self.device = torch.device(
            worker_cfg.device if worker_cfg.device == "cpu" else f"cuda:{torch.cuda.current_device()}"
        )

    def node_ip(self) -> str:
        import ray

        return ray.util.get_node_ip_address()

    def free_port(self) -> int:
        with socket.socket() as s:
            s.bind(("", 0))
            return s.getsockname()[1]

    def setup(self, master_addr: str, master_port: int) -> dict[str, Any]:
        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port))
        backend = self.worker_cfg.backend
        if backend == "auto":
            backend = "nccl" if self.worker_cfg.device == "cuda" else "gloo"
        dist.init_process_group(backend, rank=self.rank, world_size=self.world_size)
        torch.manual_seed(self.seed + self.rank)
        self.model = without_dropout(self._build_model())
        self._shard(self.model)
        self.optimizer = self._build_optimizer()
        self.micro_batch_tokens = self.worker_cfg.micro_batch_tokens or auto_micro_batch_tokens(
            self._hf_config(), self.vocab_logits, device=self.device.type
        )
        return {
            "rank": self.rank, "pid": os.getpid(), "node": self.node_ip(), "backend": backend,
            "micro_batch_tokens": self.micro_batch_tokens,
        }  # fmt: skip

    def _passes(self, data: TensorDict) -> list[tuple[torch.Tensor, TensorDict]]:
        """``data`` in passes of at most ``micro_batch_tokens`` tokens each, as (row indices, rows trimmed
        of padding): rows of like length together (``steprl.modeling.length_sorted_passes``; a shared
        prefix counted once per pass when prefix sharing is on).

        Every rank runs the same number of passes (each forward/backward is a sequence of FSDP
        collectives), so the count is the largest any rank needs.
        """
        prefix = 0
        if self.worker_cfg.share_prefix and "input_ids" in data:  # not the preference groups' candidates
            prefix = usable_prefix(data["input_ids"], data["attention_mask"])  # what the forward shares
        groups = pass_rows(data, self.micro_batch_tokens, prefix)
        n = torch.tensor([len(groups)], device=self.device)
        dist.all_reduce(n, op=dist.ReduceOp.MAX)
        if int(n) > len(groups):  # another rank needs more passes: split ours to match
            groups = pass_rows(data, self.micro_batch_tokens, prefix, int(n))
        passes = []
        min_width = self._prefix.length + 1 if self._prefix is not None else 1
        for group in groups or [[]]:
            index = torch.tensor(group, dtype=torch.long)
            passes.append((index, trim_padding({k: v[index] for k, v in data.items()}, min_width)))
        return passes

    @contextlib.contextmanager
    def _prefix_once(self, data: TensorDict) -> Iterator[SharedPrefix | None]:
        """The prefix all rows of this rank's ``data`` share, run once for the block's passes
        (``steprl.prefix_cache``); None (each pass on its own) unless every rank has one to share, as the
        ranks must call the model equally often. It ends before the first logit column ``_logprobs`` reads."""
        prefix = 0
        if self.worker_cfg.share_prefix and "input_ids" in data:  # not the preference groups' candidates
            keep_from = self._first_logprob_column(data) - 1 if self.vocab_logits else None
            prefix = usable_prefix(data["input_ids"], data["attention_mask"].long(), keep_from)
            agree = torch.tensor([1 if prefix > 0 else 0], device=self.device)
            dist.all_reduce(agree, op=dist.ReduceOp.MIN)
            prefix = prefix if int(agree) else 0
        if prefix:
            row = int(data["attention_mask"].bool().any(1).nonzero()[0])
            ids, mask = (
                data[k][row : row + 1, :prefix].to(self.device) for k in ("input_ids", "attention_mask")
            )
            self._prefix = SharedPrefix.run(self.model, ids, mask.long(), full_output=not self.vocab_logits)
        try:
            yield self._prefix
        finally:
            self._prefix = None

    @torch.no_grad()
    def _per_pass(self, data: TensorDict, fn) -> torch.Tensor:
        """``fn(chunk) -> [rows, width]`` over :meth:`_passes`, put back in ``data``'s row order and width."""
        width = data["input_ids"].shape[1]
        out: torch.Tensor | None = None
        with gathered(self.model, self.worker_cfg.gather_once), self._prefix_once(data):
            outputs = [(index, fn(chunk)) for index, chunk in self._passes(data)]
        for index, part in outputs:
            if out is None:
                out = part.new_zeros((data["input_ids"].shape[0], width))
            out[index, : part.shape[1]] = part
        assert out is not None
        return out

    def _build_model(self) -> torch.nn.Module:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(self.model_path, **self._load_kwargs())

    def _load_kwargs(self) -> dict[str, Any]:
        """Weights load in float32 (the master copy the optimizer updates); ``model.dtype`` is the compute
        dtype FSDP2 casts them to (:meth:`_shard`); the attention kernel is the rollout engine's."""
        return {"dtype": torch.float32, "attn_implementation": self.model_cfg.attn_implementation}

    def _apply_lora(self, model: torch.nn.Module, task_type: str) -> torch.nn.Module:
        if self.model_cfg.lora_rank <= 0:
            return model
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(
            r=self.model_cfg.lora_rank,
            lora_alpha=self.model_cfg.lora_alpha,
            target_modules=list(self.model_cfg.lora_targets),
            task_type=task_type,
        )
        return get_peft_model(model, cfg)

    def _shard(self, model: torch.nn.Module) -> None:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        model.to(self.device)
        mesh = init_device_mesh(self.device.type, (self.world_size,))
        kwargs: dict[str, Any] = {"mesh": mesh}
        if self.model_cfg.dtype != "float32":  # bf16/fp16 compute, fp32 master weights and gradient reduction
            from torch.distributed.fsdp import MixedPrecisionPolicy

            kwargs["mp_policy"] = MixedPrecisionPolicy(
                param_dtype=getattr(torch, self.model_cfg.dtype), reduce_dtype=torch.float32
            )
        for module in model.modules():  # one FSDP unit per decoder layer, then the root
            if type(module).__name__.endswith("DecoderLayer"):
                fully_shard(module, **kwargs)
        fully_shard(model, **kwargs)

    def _build_optimizer(self) -> torch.optim.Optimizer | None:
        return None

    def _forward(self, data: TensorDict, keep_from: int | None = None) -> torch.Tensor:
        """The model's logits at columns ``keep_from .. L - 2`` (all columns if None); the rows' shared
        prompt prefix runs once when ``share_prefix`` is on (``steprl.modeling.prefix_shared_forward``)."""
        ids = data["input_ids"].to(self.device)
        mask = data["attention_mask"].to(self.device).long()
        if self._prefix is not None:  # the call's prefix ran once (_prefix_once)
            return self._prefix.forward(self.model, ids, mask, keep_from)
        if self.worker_cfg.share_prefix:
            prefix = usable_prefix(ids, mask, keep_from)
            # every rank must call the model as often (FSDP2 gathers parameters per call): share on all
            # ranks or on none (a rank's shard may hold one live row, or a short shared prefix)
            agree = torch.tensor([1 if prefix > 0 else 0], device=self.device)
            dist.all_reduce(agree, op=dist.ReduceOp.MIN)
            return prefix_shared_forward(self.model, ids, mask, keep_from, prefix if int(agree) else 0)
        keep = {} if keep_from is None else {"logits_to_keep": kept_positions(ids.shape[1], keep_from)}
        return self.model(input_ids=ids, attention_mask=mask, **keep).logits

    def _logprobs(self, data: TensorDict) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Token log-probs (as wide as ``input_ids``), the logits they came from, and the first column they
        cover: with an ``action_mask``, logits and log-softmax only from the first response token on (the
        prompt's are never read), else everywhere."""
        ids = data["input_ids"].to(self.device)
        start = self._first_logprob_column(data)
        logits = self._forward(data, keep_from=start - 1)
        return token_logprobs(logits, ids, start), logits, start

    @staticmethod
    def _first_logprob_column(data: TensorDict) -> int:
        """The first column whose log-prob is read: the first response token, or 1 without an action mask."""
        return first_used_column(data["action_mask"]) if "action_mask" in data else 1

    def _global_count(self, mask: torch.Tensor) -> float:
        """Tokens under ``mask`` summed over ranks (so every rank divides by the same number)."""
        n = mask.float().sum().reshape(1)
        dist.all_reduce(n)
        return float(n.item())

    def _weight_count(self, mask: torch.Tensor, agg: str) -> torch.Tensor:
        """What a loss averages over: tokens, or the rows that have any (``seq-mean-*`` aggregations)."""
        return mask.any(-1).sum() if agg.startswith("seq") and mask.dim() >= 2 else mask.sum()

    def _step(self, loss_sum: torch.Tensor) -> float:
        loss_sum.backward()
        return self._apply_gradients()

    def _apply_gradients(self) -> float:
        """Clip the accumulated gradient, take one optimizer step, clear it; returns the gradient norm."""
        grad_norm = torch.nn.utils.clip_grad_norm_(
            [p for p in self.model.parameters() if p.requires_grad], self.optim_cfg.grad_clip
        )
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(grad_norm)

    def _accumulate(self, data: TensorDict, mask_key: str, loss_fn, agg: str) -> dict[str, float]:
        """Backward of ``loss_fn`` over ``data`` in :meth:`_passes`; the gradients sum to the gradient of
        the loss over all ranks' ``data`` at once (no optimizer step here).

        Each pass's loss is weighted by its share of the global count of what the loss averages over
        (``mask_key`` tokens, or rows for ``seq-mean-*``); FSDP's average over ranks is undone by
        ``world_size``. Metrics are the passes' means weighted by that count on this rank.
        """
        total = self._weight_count(data[mask_key].to(self.device), agg).float().reshape(1)
        dist.all_reduce(total)
        sums: dict[str, float] = {}
        local = 0.0
        with gathered(self.model, self.worker_cfg.gather_once), self._prefix_once(data) as prefix:
            passes = self._passes(data)
            for i, (_, chunk) in enumerate(passes):
                last = i == len(passes) - 1 and prefix is None  # else the prefix's backward is the last
                sync_on(self.model, last, self.worker_cfg.gather_once)
                mask = chunk[mask_key].to(self.device)
                count = float(self._weight_count(mask, agg))
                loss, metrics = loss_fn(chunk, mask)
                (loss * (count / max(float(total), 1.0) * self.world_size)).backward()
                weight = max(count, 1e-12)  # a pass of padding rows still runs (collectives) but counts ~0
                local += weight
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + weight * float(v)
            if prefix is not None:
                sync_on(self.model, True, self.worker_cfg.gather_once)
                prefix.backward()
        return {k: v / local for k, v in sums.items()}

    def _train_epochs(
        self, data: TensorDict, mask_key: str, loss_fn, agg: str | None = None
    ) -> dict[str, float]:
        """``ppo_epochs`` passes over ``num_mini_batches``, one optimizer step per mini-batch;
        ``loss_fn(mb, mask) -> (loss, metrics)`` with ``agg`` its aggregation (default ``loss_agg``)."""
        cfg = self.algo_cfg
        self.model.train()
        stats: dict[str, list[float]] = {}
        for _ in range(cfg.ppo_epochs):
            for mb in micro_batches(data, cfg.num_mini_batches):
                metrics = self._accumulate(trim_padding(mb), mask_key, loss_fn, agg or cfg.loss_agg)
                metrics["grad_norm"] = self._apply_gradients()
                for k, v in metrics.items():
                    stats.setdefault(k, []).append(v)
        return {f"{self.role}/{k}": sum(v) / len(v) for k, v in stats.items()}

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Gather the full (unsharded) state dict; rank 0 gets it, other ranks an empty dict."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(
            self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        return merge_lora(state, self.model_cfg) if self.model_cfg.lora_rank > 0 else state

    def save_hf(self, directory: str) -> str | None:
        """Save a Hugging Face model directory (config + safetensors) that vLLM or HF can load.

        Tied weights are written under both names: vLLM's in-place ``reload_weights`` on CPU keeps
        serving the old output projection when ``lm_head.weight`` is missing from the files.
        """
        state = self.full_state_dict()
        if self.rank != 0:
            return None
        write_safetensors(state, directory)
        self._hf_config().save_pretrained(directory)
        return directory

    def _hf_config(self):
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(self.model_path)

    def peak_memory_mb(self) -> dict[str, float]:
        """Peak resident memory of this rank's process (ru_maxrss) and, on CUDA, its peak allocated memory."""
        import resource
        import sys

        scale = 1 / 1024 if sys.platform == "darwin" else 1  # ru_maxrss: bytes on macOS, KiB on Linux
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
        out = {"peak_mb": kib / 1024}
        if self.device.type == "cuda":
            out["cuda_peak_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        return out

    def shutdown(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


class ActorWorker(FSDPWorker):
    role = "actor"

    def _build_model(self) -> torch.nn.Module:
        return self._apply_lora(super()._build_model(), "CAUSAL_LM")

    def _build_optimizer(self) -> torch.optim.Optimizer:
        params = [p for p in self.model.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.optim_cfg.actor_lr, weight_decay=self.optim_cfg.weight_decay)

    @torch.no_grad()
    def compute_logprobs(self, data: TensorDict) -> torch.Tensor:
        self.model.eval()
        return self._per_pass(data, lambda chunk: self._logprobs(chunk)[0].cpu())

    def update_policy(self, data: TensorDict, kl_coef: float = 0.0) -> dict[str, float]:
        """PPO epochs over mini-batches: clipped surrogate, optional entropy bonus and KL in the loss."""
        cfg = self.algo_cfg
        self.set_lr(self.optim_cfg.actor_lr)  # an SFT phase before (cold start, RFT) left its own rate

        def loss_fn(mb: TensorDict, mask: torch.Tensor):
            logprobs, logits, start = self._logprobs(mb)
            # truncated IS weights of rollouts from an older policy (asynchronous rollouts)
            weights = mb["is_weights"].to(self.device) if "is_weights" in mb else None
            loss, metrics = ppo_policy_loss(
                logprobs, mb["old_logprobs"].to(self.device), mb["advantages"].to(self.device), mask,
                clip_low=cfg.clip_low, clip_high=cfg.clip_high, dual_clip=cfg.dual_clip, agg=cfg.loss_agg,
                is_weights=weights,
            )  # fmt: skip
            metrics["pg_loss"] = float(loss)
            metrics["lr"] = self.optimizer.param_groups[0]["lr"]
            if cfg.entropy_coef > 0:
                entropy = masked_mean(entropy_from_logits(logits.float()), mask[:, start:])
                loss = loss - cfg.entropy_coef * entropy
                metrics["entropy"] = float(entropy)
            if cfg.kl_in == "loss" and "ref_logprobs" in mb and kl_coef > 0:
                kl = kl_penalty(logprobs, mb["ref_logprobs"].to(self.device), cfg.kl_kind)
                kl = masked_mean(kl if weights is None else kl * weights, mask)
                loss = loss + kl_coef * kl
                metrics["kl_loss"] = float(kl)
            return loss, metrics

        return self._train_epochs(data, "action_mask", loss_fn)

    def sft_step(self, data: TensorDict, lr: float) -> dict[str, float]:
        """One supervised step: mean negative log-likelihood of the action tokens (assistant turns)."""
        self.set_lr(lr)
        self.model.train()

        def loss_fn(chunk: TensorDict, mask: torch.Tensor):
            nll = -masked_mean(self._logprobs(chunk)[0], mask)
            return nll, {"nll": float(nll)}

        metrics = self._accumulate(trim_padding(data), "action_mask", loss_fn, "token-mean")
        return {"sft/nll": metrics["nll"], "sft/grad_norm": self._apply_gradients()}

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr


class RefWorker(FSDPWorker):
    """Frozen reference policy for the KL penalty."""

    role = "ref"

    def _build_model(self) -> torch.nn.Module:
        model = super()._build_model()
        model.requires_grad_(False)
        return model

    compute_logprobs = ActorWorker.compute_logprobs


class CriticWorker(FSDPWorker):
    """Value model: the policy's backbone with a scalar head, V(state after token t) at every t."""

    role = "critic"
    vocab_logits = False

    def _build_model(self) -> torch.nn.Module:
        from transformers import AutoModelForTokenClassification

        model = AutoModelForTokenClassification.from_pretrained(
            self.model_path, num_labels=1, **self._load_kwargs()
        )
        head = model.score if hasattr(model, "score") else model.classifier
        torch.nn.init.zeros_(head.weight)
        if getattr(head, "bias", None) is not None:
            torch.nn.init.zeros_(head.bias)
        return self._apply_lora(model, "TOKEN_CLS")

    def _build_optimizer(self) -> torch.optim.Optimizer:
        params = [p for p in self.model.parameters() if p.requires_grad]
        return torch.optim.AdamW(
            params, lr=self.optim_cfg.critic_lr, weight_decay=self.optim_cfg.weight_decay
        )

    @torch.no_grad()
    def compute_values(self, data: TensorDict) -> torch.Tensor:
        self.model.eval()
        return self._per_pass(data, lambda chunk: self._forward(chunk)[..., 0].float().cpu())

    def update_critic(self, data: TensorDict) -> dict[str, float]:
        """Clipped value regression to the estimator's returns where its ``value_mask`` is set."""
        cfg = self.algo_cfg

        def loss_fn(mb: TensorDict, mask: torch.Tensor):
            values = self._forward(mb)[..., 0].float()
            loss, metrics = value_loss(
                values, mb["old_values"].to(self.device), mb["returns"].to(self.device), mask,
                clip=cfg.value_clip, agg=cfg.loss_agg,
            )  # fmt: skip
            metrics["vf_loss"] = float(loss)
            return loss, metrics

        return self._train_epochs(data, "value_mask", loss_fn)
