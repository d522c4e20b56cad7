"""Typed configuration: the schema (dataclasses registered with Hydra's ConfigStore) and its range checks.

A leaf module: it imports nothing of steprl, so every other module may import it. What needs the
registries (methods, estimators, engines, reward sources, suites) or the input files is checked in
:mod:`steprl.validation`, the one entry point that turns a composed config into a
:class:`StepRLConfig`. Nothing downstream mutates the config.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf


@dataclass
class ModelConfig:
    path: str = "embedded"  # "embedded" (built offline), a local directory, or a Hugging Face name
    # compute dtype of the actor / critic / reference and the rollout engine: float32 | bfloat16 | float16.
    # bfloat16 pays on CPUs with AVX512-BF16/AMX and on GPUs; float32 stays the reference (docs/models.md)
    dtype: str = "float32"
    # how tool schemas reach the prompt: template (the chat template's `tools`), system_prompt (steprl's
    # hermes-style block in the system message), auto (template if it renders tools, else system_prompt)
    tool_prompt: str = "auto"
    # attention kernel, the same for training and rollout: sdpa | eager | flash_attention_2 (CUDA, if installed);
    # vLLM picks its own CPU kernel for sdpa/eager and FLASH_ATTN for flash_attention_2
    attn_implementation: str = "sdpa"
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
    # how new weights reach the engines: auto (file on one node, else object_store) | file (safetensors in a
    # directory actor rank 0 and the engines share) | object_store (Ray; no shared file system needed)
    weight_sync: str = "auto"


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
    # None: the estimator's definition (steprl.algorithms.advantages.whitens); the value-based algorithm
    # groups set true (PPO's convention); grpo / rloo are not whitened again after their group baseline
    whiten_advantages: bool | None = None
    # grpo / rloo outcome: is_solved | sum (of the step rewards; ARPO writes its reward there)
    outcome: str = "is_solved"
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
    # torch threads per worker process; 0: the node's cores divided by the group's ranks (steprl.modeling.auto_threads)
    threads: int = 0
    # tokens (rows x padded length) per forward/backward pass; a mini-batch larger than this is run in
    # several passes with gradient accumulation (same gradient). 0: auto, sized from the model config so
    # one pass's activations and logits stay under about 2 GiB (steprl.modeling.auto_micro_batch_tokens)
    micro_batch_tokens: int = 0
    # run the prompt prefix every row of a pass shares (system prompt, tool schemas) once, its keys and
    # values repeated along the batch (steprl.modeling.prefix_shared_forward); false: every row in full
    share_prefix: bool = True
    # keep the parameters gathered and the gradients unreduced across one call's passes: one all-gather
    # and one reduce-scatter per mini-batch instead of two all-gathers and a reduce-scatter per pass. It
    # holds a full copy of the parameters (and, in an update, of the gradients) on every rank while it runs:
    # set false for a model that only fits sharded (workers.fsdp_gather)
    gather_once: bool = True
    # deal each call's rows to the ranks so that each gets about as many tokens (longest first, within
    # each mini-batch, whose rows stay the same: workers.group.WorkerGroup.shards); false: by position.
    # Off by default: no gain measured on 2 CPU ranks (docs/models.md)
    balance_rows: bool = False
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
DECODERS = ("cot", "dfsdt")  # steprl.evaluation: one path | depth-first search over candidate steps


@dataclass
class EvalConfig:
    """``python -m steprl.eval`` only; the model, tasks (data.suite, data.seed), engine, budgets and
    reward are the training keys (docs/evaluation.md)."""

    decoder: str = "cot"  # cot | dfsdt
    split: str = "test"  # train | test tasks of data.suite, generated from data.seed
    num_tasks: int = 64
    temperature: float | None = None  # None: 0 (greedy) for cot, 1 for dfsdt
    width: int = 2  # dfsdt: candidates per node
    max_calls: int = 12  # dfsdt: model calls per task
    grounding: bool = True  # dfsdt: reject an answer that shares nothing with a successful tool result
    threads: int = 0  # torch threads of the engine; 0: all cores
    output: str = ""  # results JSON; empty: <run>/eval/... for a run's checkpoint, else runs/eval/...
    compare: list[str] = field(default_factory=list)  # [A.json, B.json]: win rate of A over B, no decoding
    judge: str = "auto"  # compare: also through the judge reward source: auto (if configured) | on | off


@dataclass
class EvalRunConfig(StepRLConfig):
    """What ``python -m steprl.eval`` composes: the training schema plus its ``eval`` section (training
    has no ``eval`` key, so ``steprl.main eval.decoder=dfsdt`` is refused as unknown)."""

    eval: EvalConfig = field(default_factory=EvalConfig)


def register_configs(schema: type[StepRLConfig] = StepRLConfig) -> None:
    """The recipes' ``base_config``: the training schema, or :class:`EvalRunConfig` for ``steprl.eval``."""
    ConfigStore.instance().store(name="base_config", node=schema)


class ConfigError(ValueError):
    """A config value is out of range or a key is unknown; the message is one line naming the key."""


def _check(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"config error: {key} {msg}")


def unknown_keys(cfg: Any, schema: type = StepRLConfig, prefix: str = "") -> list[str]:
    """Keys of a composed config that the schema does not have (``+trainer.total_iteratons=1``), each
    named down to a leaf (``+odel.path=x`` -> ``odel.path``).

    Hydra's ``+key=value`` adds keys even to a structured config, and ``OmegaConf.to_object`` then
    drops them silently, so a misspelled key would be written into config.yaml and ignored.
    """
    found = []
    names = {f.name: f for f in fields(schema)} if schema is not None else {}
    for key in cfg.keys() if OmegaConf.is_dict(cfg) else []:
        if key == "hydra" and not prefix:
            continue
        path = f"{prefix}{key}"
        value = cfg._get_node(key)
        if key not in names:
            leaves = unknown_keys(value, None, f"{path}.") if OmegaConf.is_dict(value) else []
            found += leaves or [path]
            continue
        sub = names[key].type
        sub_type = _DATACLASSES.get(sub if isinstance(sub, str) else getattr(sub, "__name__", ""))
        if sub_type is not None and OmegaConf.is_dict(value):
            found += unknown_keys(value, sub_type, f"{path}.")
    return found


def schema_of(cfg: Any) -> type:
    """The dataclass a composed config was built from (:class:`StepRLConfig` or :class:`EvalRunConfig`)."""
    kind = OmegaConf.get_type(cfg) if OmegaConf.is_config(cfg) else None
    return kind if kind in _DATACLASSES.values() else StepRLConfig


def check_known_keys(cfg: Any) -> None:
    """One line naming the first unknown key, with the closest known key when there is one."""
    schema: type = schema_of(cfg)
    bad = unknown_keys(cfg, schema)
    if not bad:
        return
    key = bad[0]
    parts = key.split(".")
    known_prefix: list[str] = []
    options: dict[str, Any] = {}
    for part in parts:  # the first segment the schema does not know, and the names it offers there
        options = {f.name: f for f in fields(schema)}
        if part not in options or str(options[part].type) not in _DATACLASSES:
            break
        known_prefix.append(part)
        schema = _DATACLASSES[str(options[part].type)]
    wrong = parts[min(len(known_prefix), len(parts) - 1)]
    close = difflib.get_close_matches(wrong, list(options), n=1)
    hint = f"; did you mean {'.'.join([*known_prefix, close[0]])}?" if close else ""
    raise ConfigError(f"config error: {key} is not a config key{hint}")


def to_typed(cfg: Any) -> StepRLConfig:
    """The composed DictConfig as the typed object, refusing keys the schema does not have."""
    if isinstance(cfg, StepRLConfig):
        return cfg
    check_known_keys(cfg)
    return OmegaConf.to_object(cfg)


_DATACLASSES: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        StepRLConfig, ModelConfig, DataConfig, RolloutConfig, RewardConfig, AlgorithmConfig, WorkerConfig,
        OptimConfig, SFTConfig, RFTConfig, ETOConfig, TRICEConfig, ARPOConfig, ArcherConfig, CodeToolConfig,
        TrainerConfig, RayConfig, EvalConfig, EvalRunConfig,
    )
}  # fmt: skip
