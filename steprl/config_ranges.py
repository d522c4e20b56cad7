"""Range checks of a typed :class:`steprl.config.StepRLConfig`: every value in its range and every
enumerated string one of its choices. Like ``steprl.config`` a leaf: no registry is needed (registry
membership and each method's own rules are checked in :mod:`steprl.validation`)."""

from __future__ import annotations

from steprl.config import (
    DATA_FORMATS,
    DECODERS,
    AlgorithmConfig,
    EvalConfig,
    EvalRunConfig,
    RewardConfig,
    RolloutConfig,
    StepRLConfig,
    WorkerConfig,
    _check,
)


def _check_reward(r: RewardConfig) -> None:
    _check(r.num_workers >= 1, "reward.num_workers", "must be >= 1")
    _check(r.judge_mode in ("json_schema", "tool"), "reward.judge_mode", "must be json_schema or tool")
    _check(r.judge_samples >= 1, "reward.judge_samples", "must be >= 1")
    _check(r.judge_concurrency >= 1, "reward.judge_concurrency", "must be >= 1")
    _check(r.judge_timeout > 0, "reward.judge_timeout", "must be > 0")
    _check(r.judge_max_retries >= 0, "reward.judge_max_retries", "must be >= 0")
    _check(r.judge_backoff >= 0, "reward.judge_backoff", "must be >= 0")
    _check(r.judge_temperature >= 0, "reward.judge_temperature", "must be >= 0")
    _check(r.judge_max_tokens >= 1, "reward.judge_max_tokens", "must be >= 1")
    _check(r.judge_max_observation_chars >= 1, "reward.judge_max_observation_chars", "must be >= 1")
    _check(r.prm_batch_size >= 1, "reward.prm_batch_size", "must be >= 1")
    _check(
        r.prm_device in ("cpu", "cuda") or r.prm_device.startswith("cuda:"),
        "reward.prm_device",
        "must be cpu or cuda[:i]",
    )
    _check(
        r.file_format in ("auto", "steptool_json", "jsonl"),
        "reward.file_format",
        "must be auto, steptool_json or jsonl",
    )
    _check(r.file_missing in ("error", "unscored"), "reward.file_missing", "must be error or unscored")
    _check(r.normalize in ("none", "scale", "center"), "reward.normalize", "must be none, scale or center")
    _check(r.alpha >= 0, "reward.alpha", f"must be >= 0, got {r.alpha}")


def _check_algorithm(a: AlgorithmConfig) -> None:
    _check(a.kl_in in ("loss", "reward"), "algorithm.kl_in", "must be 'loss' or 'reward'")
    _check(0.0 <= a.gamma <= 1.0, "algorithm.gamma", f"must be in [0, 1], got {a.gamma}")
    _check(0.0 <= a.lam <= 1.0, "algorithm.lam", f"must be in [0, 1], got {a.lam}")
    _check(a.kl_coef >= 0, "algorithm.kl_coef", "must be >= 0")
    _check(a.ppo_epochs >= 1, "algorithm.ppo_epochs", "must be >= 1")
    _check(a.num_mini_batches >= 1, "algorithm.num_mini_batches", "must be >= 1")
    _check(a.rollout_is in ("auto", "on", "off"), "algorithm.rollout_is", "must be auto, on or off")
    _check(a.rollout_is_cap > 0, "algorithm.rollout_is_cap", "must be > 0")
    _check(a.outcome in ("is_solved", "sum"), "algorithm.outcome", "must be 'is_solved' or 'sum'")


def _check_rollout(r: RolloutConfig) -> None:
    _check(
        r.weight_sync in ("auto", "file", "object_store"),
        "rollout.weight_sync",
        f"must be auto, file or object_store, got {r.weight_sync!r}",
    )
    _check(r.temperature >= 0, "rollout.temperature", "must be >= 0")
    _check(r.eval_temperature >= 0, "rollout.eval_temperature", "must be >= 0")
    _check(r.group_size >= 1, "rollout.group_size", "must be >= 1")
    _check(r.eval_samples >= 1, "rollout.eval_samples", "must be >= 1")
    _check(r.max_turns >= 1, "rollout.max_turns", "must be >= 1")
    _check(r.max_tokens_per_turn >= 1, "rollout.max_tokens_per_turn", "must be >= 1")
    _check(
        r.max_response_tokens >= r.max_tokens_per_turn,
        "rollout.max_response_tokens",
        "must be >= rollout.max_tokens_per_turn",
    )
    _check(r.max_model_len >= 2, "rollout.max_model_len", "must be >= 2")
    _check(0.0 < r.gpu_memory_utilization <= 1.0, "rollout.gpu_memory_utilization", "must be in (0, 1]")
    _check(r.num_workers >= 1, "rollout.num_workers", "must be >= 1")
    _check(r.num_cpus > 0, "rollout.num_cpus", "must be > 0")
    ts = r.tool_server
    _check(
        ts in ("inprocess", "local") or ts.startswith(("http://", "https://")),
        "rollout.tool_server",
        f"must be inprocess, local or an http(s) URL, got {ts!r}",
    )


def _check_eval(e: EvalConfig) -> None:
    _check(e.decoder in DECODERS, "eval.decoder", f"must be one of {list(DECODERS)}, got {e.decoder!r}")
    _check(e.split in ("train", "test"), "eval.split", f"must be train or test, got {e.split!r}")
    _check(e.num_tasks >= 1, "eval.num_tasks", f"must be >= 1, got {e.num_tasks}")
    _check(e.temperature is None or e.temperature >= 0, "eval.temperature", "must be >= 0 (or null)")
    _check(e.width >= 1, "eval.width", f"must be >= 1, got {e.width}")
    _check(e.max_calls >= 1, "eval.max_calls", f"must be >= 1, got {e.max_calls}")
    _check(e.threads >= 0, "eval.threads", "must be >= 0")
    _check(e.judge in ("auto", "on", "off"), "eval.judge", f"must be auto, on or off, got {e.judge!r}")
    _check(
        len(e.compare) in (0, 2),
        "eval.compare",
        f"must name two results files ([A.json,B.json]), got {len(e.compare)}",
    )


def _check_methods(c: StepRLConfig) -> None:
    """Ranges of the per-method sections (cross-field rules of a method live in its ``Method.check``)."""
    _check(c.rft.epochs >= 1, "rft.epochs", "must be >= 1")
    _check(c.rft.batch_size >= 1, "rft.batch_size", "must be >= 1")
    for section in ("rft", "eto", "trice"):
        _check(getattr(c, section).lr > 0, f"{section}.lr", "must be > 0")
    _check(c.eto.beta > 0, "eto.beta", f"must be > 0, got {c.eto.beta}")
    _check(c.eto.pair_by in ("step_reward", "return"), "eto.pair_by", "must be step_reward or return")
    _check(c.eto.batch_size >= 1, "eto.batch_size", "must be >= 1")
    _check(
        0 < c.eto.max_prompt_length < c.eto.max_length,
        "eto.max_prompt_length",
        f"must be in (0, eto.max_length={c.eto.max_length}), got {c.eto.max_prompt_length}",
    )
    _check(c.trice.alpha >= 0, "trice.alpha", "must be >= 0")
    _check(
        0 <= c.trice.tie_break_weight < 0.5,
        "trice.tie_break_weight",
        "must be in [0, 0.5) (IsSolved decides)",
    )
    _check(c.arpo.initial_rollouts >= 1, "arpo.initial_rollouts", "must be >= 1")
    _check(c.arpo.beam_size >= 1, "arpo.beam_size", "must be >= 1")
    _check(c.arpo.entropy_window >= 1, "arpo.entropy_window", "must be >= 1")
    _check(c.arpo.attribution in ("soft", "hard"), "arpo.attribution", "must be soft or hard")
    _check(0.0 <= c.archer.gamma <= 1.0, "archer.gamma", f"must be in [0, 1], got {c.archer.gamma}")
    _check(0.0 < c.archer.tau <= 1.0, "archer.tau", f"must be in (0, 1], got {c.archer.tau}")
    _check(c.archer.batch_size >= 1, "archer.batch_size", "must be >= 1")
    _check(c.archer.buffer_size >= c.archer.batch_size, "archer.buffer_size", "must be >= archer.batch_size")
    _check(c.archer.critic_updates >= 1, "archer.critic_updates", "must be >= 1")
    _check(c.archer.actor_warmup >= 0, "archer.actor_warmup", "must be >= 0")
    ct = c.codetool
    _check(ct.tree_depth >= 1, "codetool.tree_depth", "must be >= 1")
    _check(ct.tree_width >= 2, "codetool.tree_width", "must be >= 2 (siblings)")
    _check(ct.completions >= 1, "codetool.completions", "must be >= 1")
    _check(ct.tree_tasks >= 1, "codetool.tree_tasks", "must be >= 1")
    _check(ct.potential in ("soft", "hard"), "codetool.potential", "must be soft or hard")
    _check(ct.outcome in ("solved", "return"), "codetool.outcome", "must be solved or return")
    _check(ct.search_candidates >= 1, "codetool.search_candidates", "must be >= 1")
    _check(ct.search_depth >= 1, "codetool.search_depth", "must be >= 1")
    _check(ct.prm_epochs >= 1, "codetool.prm_epochs", "must be >= 1")
    _check(ct.prm_lr > 0, "codetool.prm_lr", "must be > 0")
    _check(ct.prm_batch_size >= 1, "codetool.prm_batch_size", "must be >= 1")


def check_ranges(c: StepRLConfig) -> None:
    """Every value in its range and every enumerated string one of its choices (no registry needed)."""
    _check_algorithm(c.algorithm)
    _check_reward(c.reward)
    _check_rollout(c.rollout)
    _check(
        c.ray.placement in ("none", "colocate", "spread"),
        "ray.placement",
        f"must be none, colocate or spread, got {c.ray.placement!r}",
    )
    _check(c.ray.num_cpus is None or c.ray.num_cpus >= 1, "ray.num_cpus", "must be >= 1 (or null)")
    for name in ("actor", "critic", "ref"):
        w: WorkerConfig = getattr(c, name)
        _check(w.world_size >= 1, f"{name}.world_size", "must be >= 1")
        _check(w.device in ("cpu", "cuda"), f"{name}.device", "must be 'cpu' or 'cuda'")
        _check(w.backend in ("auto", "gloo", "nccl"), f"{name}.backend", "must be auto, gloo or nccl")
        _check(w.threads >= 0, f"{name}.threads", "must be >= 0")
        _check(w.micro_batch_tokens >= 0, f"{name}.micro_batch_tokens", "must be >= 0 (0: auto)")
        _check(w.num_cpus >= 0 and w.num_gpus >= 0, f"{name}.num_cpus/num_gpus", "must be >= 0")
    _check(
        c.data.format in DATA_FORMATS, "data.format", f"must be one of {DATA_FORMATS}, got {c.data.format!r}"
    )
    _check(c.data.on_error in ("skip", "raise"), "data.on_error", "must be skip or raise")
    _check(
        c.data.format == "suite" or bool(c.data.path),
        "data.path",
        f"must name the file for data.format={c.data.format}",
    )
    _check(c.data.test_tasks >= 1, "data.test_tasks", "must be >= 1")
    _check(
        c.data.train_tasks >= c.trainer.tasks_per_iteration,
        "data.train_tasks",
        "must be >= trainer.tasks_per_iteration",
    )
    _check(c.sft.loss_on in ("all", "last"), "sft.loss_on", f"must be all or last, got {c.sft.loss_on!r}")
    _check(c.sft.max_length >= 2, "sft.max_length", "must be >= 2")
    _check(0.0 <= c.sft.suboptimal_share <= 1.0, "sft.suboptimal_share", "must be in [0, 1]")
    _check(c.sft.batch_size >= 1, "sft.batch_size", "must be >= 1")
    _check(c.sft.epochs >= 0, "sft.epochs", "must be >= 0")
    _check(c.sft.lr > 0, "sft.lr", "must be > 0")
    _check_methods(c)
    t = c.trainer
    _check(t.total_iterations >= 0, "trainer.total_iterations", "must be >= 0")
    _check(t.tasks_per_iteration >= 1, "trainer.tasks_per_iteration", "must be >= 1")
    _check(t.eval_every >= 0, "trainer.eval_every", "must be >= 0")
    _check(t.save_every >= 0, "trainer.save_every", "must be >= 0")
    _check(bool(t.resume), "trainer.resume", "must be never, auto or a checkpoint directory")
    _check(t.max_worker_restarts >= 0, "trainer.max_worker_restarts", "must be >= 0")
    loggers = {"console", "jsonl", "tensorboard", "wandb"}
    _check(
        set(t.logger) <= loggers,
        "trainer.logger",
        f"must be a list of {sorted(loggers)}, got {list(t.logger)}",
    )
    _check(c.optim.actor_lr > 0, "optim.actor_lr", "must be > 0")
    _check(c.optim.critic_lr > 0, "optim.critic_lr", "must be > 0")
    _check(c.optim.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
    _check(c.optim.grad_clip > 0, "optim.grad_clip", "must be > 0")
    _check(c.model.lora_rank >= 0, "model.lora_rank", "must be >= 0")
    _check(bool(c.model.path), "model.path", "must be embedded, a model directory or a Hugging Face name")
    _check(
        c.model.dtype in ("float32", "bfloat16", "float16"),
        "model.dtype",
        f"must be float32, bfloat16 or float16, got {c.model.dtype!r}",
    )
    _check(
        c.model.attn_implementation in ("sdpa", "eager", "flash_attention_2"),
        "model.attn_implementation",
        f"must be sdpa, eager or flash_attention_2, got {c.model.attn_implementation!r}",
    )
    tool_prompts = ("auto", "template", "system_prompt")
    _check(c.model.tool_prompt in tool_prompts, "model.tool_prompt", f"must be one of {list(tool_prompts)}")
    if isinstance(c, EvalRunConfig):
        _check_eval(c.eval)
