"""Typed configuration: dataclasses registered with Hydra's ConfigStore, validated once at start.

The controller resolves and validates the config, then hands frozen copies to workers; nothing
downstream mutates it. A typo in an override or a wrong type fails in Hydra with the key named;
values out of range fail in :func:`validate` with a one-line message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf


@dataclass
class ModelConfig:
    path: str = "embedded"  # "embedded" (built offline), a local directory, or a Hugging Face name
    dtype: str = "float32"
    lora_rank: int = 0  # 0: full fine-tuning
    lora_alpha: int = 16
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class DataConfig:
    suite: str = "atlas"
    # a suite YAML file (tools_env.plugins) loaded before data.suite is looked up, in the driver, the
    # Ray workers and a local tool server alike (docs/tools_env.md)
    suites_yaml: str = ""
    train_tasks: int = 2000
    test_tasks: int = 64
    seed: int = 0
    # where a recipe's training data comes from: "suite" (the suite's tasks and demonstrations) or a
    # published StepTool file at data.path: steptool_sft_json (SFT cold start), steptool_rft_json
    # (rft's offline first round), steptool_eto_csv (eto's offline first round)
    format: str = "suite"
    path: str = ""
    on_error: str = "skip"  # skip (count malformed records) | raise


@dataclass
class RolloutConfig:
    engine: str = "vllm"  # vllm | hf (or a registered engine)
    num_workers: int = 1
    num_cpus: float = 1.0  # Ray CPUs reserved per rollout worker
    group_size: int = 4  # samples per task (GRPO groups; also variance reduction)
    temperature: float = 1.0
    # held-out pass rate of the policy as trained (sampled), several samples per task; greedy is also reported
    eval_temperature: float = 1.0
    eval_samples: int = 4
    tool_format: str = "hermes"
    max_turns: int = 6
    max_response_tokens: int = 320
    max_tokens_per_turn: int = 48
    max_model_len: int = 1024
    gpu_memory_utilization: float = 0.3
    tool_server: str = "inprocess"  # inprocess | local (start a FastAPI server) | http://host:port


@dataclass
class RewardConfig:
    source: str = "rule"
    alpha: float = 1.0  # r_t = (alpha * SuccCalling + Contribution) / (1 + alpha)
    step_grained: bool = True  # False: ablation "without step-grained reward"
    normalize: str = "none"  # none | scale (divide by the running std) | center (subtract the mean too)
    num_workers: int = 1  # reward Ray actors; a batch is split across them (docs/rewards.md)
    # per-component overrides of `source` (rule | judge | prm | file); None: take `source`
    succ_calling_source: str | None = None
    contribution_source: str | None = None
    is_solved_source: str | None = None
    unscored_fallback: str = "zero"  # a component a source could not score: zero | a source name (e.g. rule)
    # judge: an OpenAI-compatible chat endpoint; url/model fall back to STEPRL_JUDGE_URL/STEPRL_JUDGE_MODEL
    judge_url: str = ""  # base URL (…/v1) or the full …/chat/completions URL
    judge_model: str = ""
    judge_api_key_env: str = "OPENAI_API_KEY"  # the key is read from this variable, never from the config
    judge_mode: str = "json_schema"  # json_schema (response_format) | tool (forced function call)
    judge_samples: int = 3  # k samples per trajectory, averaged (the published setup uses 3)
    judge_temperature: float = 0.7
    judge_max_tokens: int = 512
    judge_seed: int = 0  # sample j is requested with seed judge_seed + j (reproducible, cacheable)
    judge_concurrency: int = 8  # in-flight requests per reward worker
    judge_timeout: float = 60.0  # seconds per request
    judge_max_retries: int = 3  # retries of a failed or unparsable reply, with exponential backoff
    judge_backoff: float = 0.5  # seconds before the first retry; doubles each retry
    judge_max_observation_chars: int = 1000  # a tool result is cut to this many characters in the prompt
    judge_cache_dir: str = ""  # also keep replies on disk here (empty: in memory only)
    # prm: a process reward model directory (steprl.prm) scoring each step's prefix
    prm_path: str = ""
    prm_device: str = "cpu"
    prm_batch_size: int = 16
    # file: annotations that come with the data, keyed by task_id
    file_path: str = ""
    file_format: str = "auto"  # auto (by suffix) | steptool_json (published reward annotations) | jsonl
    file_missing: str = "error"  # a trajectory without a usable annotation: error | unscored


@dataclass
class AlgorithmConfig:
    estimator: str = "step_gae"  # registry name in steprl.algorithms.advantages
    gamma: float = 1.0
    lam: float = 0.95
    token_level_refine: bool = False
    whiten_advantages: bool = True
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float | None = None
    value_clip: float | None = 0.2
    entropy_coef: float = 0.0
    loss_agg: str = "token-mean"
    kl_coef: float = 0.01
    kl_kind: str = "k3"
    kl_in: str = "loss"  # loss | reward
    kl_target: float | None = None  # set for the adaptive controller
    kl_horizon: float = 10000.0
    ppo_epochs: int = 2
    num_mini_batches: int = 2
    use_critic: bool = True
    # truncated importance sampling of rollouts from an older policy (steprl.algorithms.off_policy):
    # auto (on with trainer.async_rollout) | on | off; each token's loss is weighted by min(ratio, cap)
    rollout_is: str = "auto"
    rollout_is_cap: float = 2.0


@dataclass
class WorkerConfig:
    world_size: int = 2
    device: str = "cpu"
    backend: str = "auto"  # auto: gloo on CPU, nccl on CUDA
    threads: int = 1  # torch threads per worker process
    num_cpus: float = 0.5
    num_gpus: float = 0.0


@dataclass
class OptimConfig:
    actor_lr: float = 2e-4
    critic_lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float = 1.0


@dataclass
class SFTConfig:
    enabled: bool = True
    num_demos: int = 3000
    suboptimal_share: float = 0.35
    epochs: int = 1
    batch_size: int = 8  # many small steps: the tiny model needs optimizer steps more than tokens
    lr: float = 1e-3
    loss_on: str = "all"  # all assistant turns | last (only the last turn, as the ToolBench/StepTool files)
    max_length: int = 1024  # file instances longer than this (tokens) are dropped and counted


@dataclass
class RFTConfig:
    """Rejection-sampling fine-tuning: SFT on the policy's own solved rollouts."""

    epochs: int = 1  # passes over each iteration's kept rollouts (and over the file in the offline round)
    batch_size: int = 8
    lr: float = 2e-4
    dedupe: bool = True  # keep one copy of identical solved responses to the same task


@dataclass
class ETOConfig:
    """DPO on step-level preference pairs (ETO)."""

    beta: float = 0.1  # DPO paper's default; also the StepTool ETO baseline script's value
    lr: float = 1e-4  # the StepTool ETO baseline script's learning rate
    pair_by: str = "step_reward"  # step_reward (r_k of the diverging step) | return (sum of r_t, t >= k)
    batch_size: int = 32  # pairs per DPO update call (each runs algorithm.ppo_epochs x num_mini_batches)
    max_length: int = 1024  # prompt + response tokens per side
    max_prompt_length: int = 768  # a longer prompt keeps its last tokens when the pair does not fit


@dataclass
class TRICEConfig:
    """TRICE stage 2: RRHF ranking of k candidates by execution feedback, plus SFT on the best."""

    # weight of the ranking term. TRICE's stage-2 script uses 100 (rrhf_weight); with candidates sampled
    # online from the embedded model, 100 collapsed the policy and 0.1 helped (docs/recipes.md)
    alpha: float = 0.1
    lr: float = 1e-4
    length_penalty: float = 1.0  # p_i = sum log pi / |y_i| ** length_penalty
    tie_break_weight: float = 0.1  # score = IsSolved + w * mean tool-step reward (w < 0.5)


@dataclass
class ARPOConfig:
    """ARPO: entropy-based branching after tool calls (group budget M = rollout.group_size)."""

    initial_rollouts: int = 4  # N: trajectories per prompt that start from the prompt
    alpha: float = 0.5  # branch probability p = clip(alpha + beta * dH, 0, 1) (paper's defaults)
    beta: float = 0.2
    beam_size: int = 2  # at most beam_size - 1 branches per source per tool call
    entropy_window: int = 20  # tokens after a tool result whose entropy is measured
    attribution: str = "soft"  # soft (plain GRPO over shared prefixes) | hard (shared tokens: mean advantage)
    format_penalty: float = -1.0
    tool_bonus: float = 0.1  # paid when >= bonus_min_tools distinct tools were used
    bonus_min_tools: int = 2
    bonus_requires_correct: bool = True  # the paper pays the bonus only with a correct answer


@dataclass
class ArcherConfig:
    """ArCHer: utterance-level off-policy critic (double Q + V, target nets) + token-level policy."""

    gamma: float = 0.95  # per-step discount of the TD targets (ArCHer's default)
    tau: float = 0.1  # Polyak rate of the target networks (ArCHer's default)
    buffer_size: int = 512  # replay buffer capacity in trajectories (each holds all its steps)
    batch_size: int = 16  # trajectories per critic update
    critic_updates: int = 4  # critic gradient steps per iteration
    actor_warmup: int = 1  # first iterations train only the critic
    critic_path: str = ""  # an ArCHer critic checkpoint to start from (empty: the policy's backbone)


@dataclass
class CodeToolConfig:
    """CodeTool: on-the-spot (code ran) + latent (PRM potential) step rewards; best-of-n step search."""

    tree_tasks: int = 16  # training tasks explored to build sibling pairs for the PRM
    tree_depth: int = 2  # D: steps expanded from the prompt
    tree_width: int = 2  # n: candidate steps sampled per node
    completions: int = 1  # rollouts to the end from every leaf (success labels)
    potential: str = "soft"  # soft: fraction of successful rollouts below a node | hard: any success
    outcome: str = "solved"  # a rollout's success: solved (IsSolved, the paper) | return (mean step reward)
    prm_path: str = ""  # a trained PRM to use (empty: build pairs and train one in setup)
    prm_epochs: int = 2
    prm_lr: float = 1e-4
    prm_batch_size: int = 8
    search_candidates: int = 4  # inference: candidate steps sampled per step
    search_depth: int = 6  # inference: steps followed at most
    eval_search: bool = True  # evaluate before/after training with the search as well


@dataclass
class TrainerConfig:
    method: str = "ppo"  # registry name in steprl.methods: what one iteration does
    total_iterations: int = 12
    tasks_per_iteration: int = 16
    eval_every: int = 0  # 0: only before and after RL
    eval_start: bool = True  # evaluate the starting policy (off: runs that share one start evaluate it once)
    save_every: int = 0  # 0: only at the end
    run_dir: str = ""  # empty: runs/<recipe>-<timestamp>
    seed: int = 0
    logger: list[str] = field(default_factory=lambda: ["console", "jsonl", "tensorboard"])
    progress: bool = True
    save_rollouts: bool = False  # write every scored rollout batch to <run_dir>/rollouts/iter_XXXXX.parquet
    resume: str = "never"  # never | auto (newest complete checkpoint of run_dir) | <checkpoint dir>
    max_worker_restarts: int = 3  # per rollout/reward worker and tool server; then the run stops
    # one-step-off-policy: batch k+1 generates while batch k trains (PPO-family methods; docs/cluster.md)
    async_rollout: bool = False


@dataclass
class RayConfig:
    address: str | None = None  # None: RAY_ADDRESS if set, else start a local cluster
    num_cpus: int | None = None  # logical CPUs of a local cluster
    placement: str = "none"  # none (Ray decides) | colocate (one placement group, PACK) | spread (SPREAD)


@dataclass
class StepRLConfig:
    recipe: str = "steptool"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    actor: WorkerConfig = field(default_factory=WorkerConfig)
    critic: WorkerConfig = field(default_factory=WorkerConfig)
    ref: WorkerConfig = field(default_factory=lambda: WorkerConfig(world_size=1))
    optim: OptimConfig = field(default_factory=OptimConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    rft: RFTConfig = field(default_factory=RFTConfig)
    eto: ETOConfig = field(default_factory=ETOConfig)
    trice: TRICEConfig = field(default_factory=TRICEConfig)
    arpo: ARPOConfig = field(default_factory=ARPOConfig)
    archer: ArcherConfig = field(default_factory=ArcherConfig)
    codetool: CodeToolConfig = field(default_factory=CodeToolConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    ray: RayConfig = field(default_factory=RayConfig)


DATA_FORMATS = ("suite", "steptool_sft_json", "steptool_rft_json", "steptool_eto_csv", "steptool_csv")


def register_configs() -> None:
    ConfigStore.instance().store(name="base_config", node=StepRLConfig)


class ConfigError(ValueError):
    """A config value is out of range; the message names the key."""


def _check(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"config error: {key} {msg}")


def _validate_reward(r: RewardConfig) -> None:
    """Reward sources exist and give the components asked of them; the settings of those in use."""
    from pathlib import Path

    from steprl.reward_sources import (
        JUDGE_MODEL_ENV,
        JUDGE_URL_ENV,
        REWARD_SOURCES,
        component_plan,
        get_source_class,
        reward_env,
    )

    known = sorted(REWARD_SOURCES)
    _check(r.num_workers >= 1, "reward.num_workers", "must be >= 1")
    for comp, src in component_plan(r).items():
        key = f"reward.{comp}_source" if getattr(r, f"{comp}_source") else "reward.source"
        _check(src in known, key, f"must be one of {known}, got {src!r}")
        gives = sorted(get_source_class(src).components)
        _check(comp in gives, key, f"{src!r} gives only {gives}, not {comp}; set reward.{comp}_source")
    fb = r.unscored_fallback
    _check(
        fb == "zero" or fb in known, "reward.unscored_fallback", f"must be zero or one of {known}, got {fb!r}"
    )
    used = set(component_plan(r).values()) | ({fb} - {"zero"})
    _check(r.judge_mode in ("json_schema", "tool"), "reward.judge_mode", "must be json_schema or tool")
    _check(r.judge_samples >= 1, "reward.judge_samples", "must be >= 1")
    _check(r.judge_concurrency >= 1, "reward.judge_concurrency", "must be >= 1")
    _check(r.judge_timeout > 0, "reward.judge_timeout", "must be > 0")
    _check(r.judge_max_retries >= 0, "reward.judge_max_retries", "must be >= 0")
    _check(r.judge_backoff >= 0, "reward.judge_backoff", "must be >= 0")
    _check(r.judge_temperature >= 0, "reward.judge_temperature", "must be >= 0")
    _check(r.judge_max_tokens >= 1, "reward.judge_max_tokens", "must be >= 1")
    _check(r.judge_max_observation_chars >= 1, "reward.judge_max_observation_chars", "must be >= 1")
    if "judge" in used:
        env = reward_env(r)
        url = r.judge_url or env.get(JUDGE_URL_ENV, "")
        _check(
            url.startswith(("http://", "https://")),
            "reward.judge_url",
            f"must be an http(s) URL (or set {JUDGE_URL_ENV}), got {url!r}",
        )
        _check(
            bool(r.judge_model or env.get(JUDGE_MODEL_ENV)),
            "reward.judge_model",
            f"must be set (or {JUDGE_MODEL_ENV})",
        )
    _check(r.prm_batch_size >= 1, "reward.prm_batch_size", "must be >= 1")
    _check(
        r.prm_device in ("cpu", "cuda") or r.prm_device.startswith("cuda:"),
        "reward.prm_device",
        "must be cpu or cuda[:i]",
    )
    if "prm" in used:
        _check(
            Path(r.prm_path).expanduser().is_dir(),
            "reward.prm_path",
            f"must be a PRM directory, got {r.prm_path!r}",
        )
    _check(
        r.file_format in ("auto", "steptool_json", "jsonl"),
        "reward.file_format",
        "must be auto, steptool_json or jsonl",
    )
    _check(r.file_missing in ("error", "unscored"), "reward.file_missing", "must be error or unscored")
    if "file" in used:
        _check(
            Path(r.file_path).expanduser().is_file(),
            "reward.file_path",
            f"must be an annotation file, got {r.file_path!r}",
        )


def validate(cfg: Any) -> StepRLConfig:
    """Convert to the typed object and check ranges (types were checked by OmegaConf)."""
    c: StepRLConfig = OmegaConf.to_object(cfg) if not isinstance(cfg, StepRLConfig) else cfg
    from steprl.algorithms.advantages import ADVANTAGE_ESTIMATORS
    from steprl.algorithms.losses import AGG_MODES, KL_KINDS
    from steprl.engines import ENGINES

    _check(
        c.rollout.engine in ENGINES,
        "rollout.engine",
        f"must be one of {sorted(ENGINES)}, got {c.rollout.engine!r}",
    )
    _check(
        c.algorithm.estimator in ADVANTAGE_ESTIMATORS,
        "algorithm.estimator",
        f"must be one of {sorted(ADVANTAGE_ESTIMATORS)}, got {c.algorithm.estimator!r}",
    )
    _check(c.algorithm.loss_agg in AGG_MODES, "algorithm.loss_agg", f"must be one of {AGG_MODES}")
    _check(c.algorithm.kl_kind in KL_KINDS, "algorithm.kl_kind", f"must be one of {KL_KINDS}")
    _check(c.algorithm.kl_in in ("loss", "reward"), "algorithm.kl_in", "must be 'loss' or 'reward'")
    _check(0.0 <= c.algorithm.gamma <= 1.0, "algorithm.gamma", f"must be in [0, 1], got {c.algorithm.gamma}")
    _check(0.0 <= c.algorithm.lam <= 1.0, "algorithm.lam", f"must be in [0, 1], got {c.algorithm.lam}")
    _check(c.algorithm.kl_coef >= 0, "algorithm.kl_coef", "must be >= 0")
    _check(c.algorithm.ppo_epochs >= 1, "algorithm.ppo_epochs", "must be >= 1")
    _check(c.algorithm.num_mini_batches >= 1, "algorithm.num_mini_batches", "must be >= 1")
    _check(
        c.reward.normalize in ("none", "scale", "center"), "reward.normalize", "must be none, scale or center"
    )
    _check(c.reward.alpha >= 0, "reward.alpha", f"must be >= 0, got {c.reward.alpha}")
    _validate_reward(c.reward)
    _check(c.rollout.temperature >= 0, "rollout.temperature", "must be >= 0")
    _check(c.rollout.group_size >= 1, "rollout.group_size", "must be >= 1")
    _check(c.rollout.eval_samples >= 1, "rollout.eval_samples", "must be >= 1")
    _check(c.rollout.max_turns >= 1, "rollout.max_turns", "must be >= 1")
    _check(c.rollout.max_tokens_per_turn >= 1, "rollout.max_tokens_per_turn", "must be >= 1")
    _check(
        c.rollout.max_response_tokens >= c.rollout.max_tokens_per_turn,
        "rollout.max_response_tokens",
        "must be >= rollout.max_tokens_per_turn",
    )
    _check(
        0.0 < c.rollout.gpu_memory_utilization <= 1.0, "rollout.gpu_memory_utilization", "must be in (0, 1]"
    )
    _check(c.rollout.num_workers >= 1, "rollout.num_workers", "must be >= 1")
    ts = c.rollout.tool_server
    _check(
        ts in ("inprocess", "local") or ts.startswith(("http://", "https://")),
        "rollout.tool_server",
        f"must be inprocess, local or an http(s) URL, got {ts!r}",
    )
    _check(
        c.ray.placement in ("none", "colocate", "spread"),
        "ray.placement",
        f"must be none, colocate or spread, got {c.ray.placement!r}",
    )
    for name in ("actor", "critic", "ref"):
        w: WorkerConfig = getattr(c, name)
        _check(w.world_size >= 1, f"{name}.world_size", "must be >= 1")
        _check(w.device in ("cpu", "cuda"), f"{name}.device", "must be 'cpu' or 'cuda'")
        _check(w.backend in ("auto", "gloo", "nccl"), f"{name}.backend", "must be auto, gloo or nccl")
    from steprl.methods import get_method

    try:
        method = get_method(c.trainer.method)
    except KeyError as e:
        raise ConfigError(f"config error: {str(e).strip(chr(34) + chr(39))}") from e
    _check(
        c.data.format in DATA_FORMATS, "data.format", f"must be one of {DATA_FORMATS}, got {c.data.format!r}"
    )
    _check(c.data.on_error in ("skip", "raise"), "data.on_error", "must be skip or raise")
    if c.data.format != "suite":
        from pathlib import Path

        _check(bool(c.data.path), "data.path", f"must name the file for data.format={c.data.format}")
        _check(Path(c.data.path).expanduser().is_file(), "data.path", f"{c.data.path} is not a file")
    _check(c.sft.loss_on in ("all", "last"), "sft.loss_on", f"must be all or last, got {c.sft.loss_on!r}")
    _check(c.sft.max_length >= 2, "sft.max_length", "must be >= 2")
    _check(c.rft.epochs >= 1 and c.rft.batch_size >= 1, "rft", "epochs and batch_size must be >= 1")
    _check(c.rft.lr > 0 and c.eto.lr > 0 and c.trice.lr > 0, "rft/eto/trice.lr", "must be > 0")
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
    problem = method.check_config(c)
    _check(problem is None, f"trainer.method={c.trainer.method}:", problem or "")
    _check(c.arpo.initial_rollouts >= 1, "arpo.initial_rollouts", "must be >= 1")
    _check(c.arpo.beam_size >= 1, "arpo.beam_size", "must be >= 1")
    _check(c.arpo.entropy_window >= 1, "arpo.entropy_window", "must be >= 1")
    _check(c.arpo.attribution in ("soft", "hard"), "arpo.attribution", "must be soft or hard")
    _check(0.0 <= c.archer.gamma <= 1.0, "archer.gamma", f"must be in [0, 1], got {c.archer.gamma}")
    _check(0.0 < c.archer.tau <= 1.0, "archer.tau", f"must be in (0, 1], got {c.archer.tau}")
    _check(c.archer.buffer_size >= c.archer.batch_size >= 1, "archer", "needs buffer_size >= batch_size >= 1")
    _check(
        c.archer.critic_updates >= 1 and c.archer.actor_warmup >= 0,
        "archer",
        "critic_updates >= 1, actor_warmup >= 0",
    )
    ct = c.codetool
    _check(
        ct.tree_depth >= 1 and ct.tree_width >= 2,
        "codetool",
        "needs tree_depth >= 1 and tree_width >= 2 (siblings)",
    )
    _check(ct.completions >= 1 and ct.tree_tasks >= 1, "codetool", "completions and tree_tasks must be >= 1")
    _check(ct.potential in ("soft", "hard"), "codetool.potential", "must be soft or hard")
    _check(ct.outcome in ("solved", "return"), "codetool.outcome", "must be solved or return")
    _check(
        ct.search_candidates >= 1 and ct.search_depth >= 1, "codetool", "search_candidates/depth must be >= 1"
    )
    _check(
        ct.prm_epochs >= 1 and ct.prm_lr > 0 and ct.prm_batch_size >= 1, "codetool.prm_*", "must be positive"
    )
    _check(c.trainer.total_iterations >= 0, "trainer.total_iterations", "must be >= 0")
    _check(c.trainer.tasks_per_iteration >= 1, "trainer.tasks_per_iteration", "must be >= 1")
    _check(bool(c.trainer.resume), "trainer.resume", "must be never, auto or a checkpoint directory")
    _check(c.trainer.max_worker_restarts >= 0, "trainer.max_worker_restarts", "must be >= 0")
    _check(c.algorithm.rollout_is in ("auto", "on", "off"), "algorithm.rollout_is", "must be auto, on or off")
    _check(c.algorithm.rollout_is_cap > 0, "algorithm.rollout_is_cap", "must be > 0")
    _check(
        c.data.train_tasks >= c.trainer.tasks_per_iteration,
        "data.train_tasks",
        "must be >= trainer.tasks_per_iteration",
    )
    _check(c.data.test_tasks >= 1, "data.test_tasks", "must be >= 1")
    _check(0.0 <= c.sft.suboptimal_share <= 1.0, "sft.suboptimal_share", "must be in [0, 1]")
    _check(c.sft.batch_size >= 1 and c.sft.epochs >= 0, "sft", "batch_size must be >= 1 and epochs >= 0")
    _check(c.optim.actor_lr > 0 and c.optim.critic_lr > 0, "optim", "learning rates must be > 0")
    _check(c.model.lora_rank >= 0, "model.lora_rank", "must be >= 0")
    return c
