"""``python -m steprl.eval [recipe=<name>] [key=value ...]``: evaluate a checkpoint on a task suite, or
compare two saved evaluations.

    python -m steprl.eval model.path=runs/<run> rollout=hf eval.num_tasks=64
    python -m steprl.eval rollout.engine=hf eval.decoder=dfsdt eval.width=2 eval.max_calls=12
    python -m steprl.eval eval.compare=[runs/a/eval/final-atlas-test-cot.json,runs/b/eval/final-atlas-test-cot.json]

The config is the training one (a recipe, the groups of ``configs/``, the same keys, defaults and
checks: ``model.path``, ``data.suite``, ``data.seed``, ``rollout.*``, ``reward.source`` ...) plus an
``eval`` section (:class:`steprl.config.EvalConfig`); ``--help``, ``--cfg job`` and ``-m`` work as for
``steprl.main``. Writes the results as JSON (per-task rows + aggregate) and the printed tables as text
beside it. Bad input (a misspelled key, a missing checkpoint, an unknown suite ...) is reported in one
line with exit code 2, before any model is loaded. See docs/evaluation.md.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steprl.errors import UserError
from steprl.hydra_args import HelpPage

EVAL_HELP = HelpPage(
    name="steprl.eval",
    usage=(
        "python -m steprl.eval [recipe=<name>] [key=value ...]: evaluate a checkpoint (the training keys "
        "plus eval.*; docs/evaluation.md)"
    ),
    examples=(
        "python -m steprl.eval model.path=runs/<run> rollout=hf eval.num_tasks=64",
        "python -m steprl.eval rollout=hf eval.decoder=dfsdt eval.width=2 eval.max_calls=12",
        "python -m steprl.eval eval.compare=[a.json,b.json] eval.judge=off   # win rate of a over b",
        "python -m steprl.eval --cfg job rollout=hf data.suite=bank           # the resolved config",
        "python -m steprl.eval -m rollout=hf eval.decoder=cot,dfsdt           # one evaluation per job",
    ),
)
# the flags of the argparse command line this one replaced, named in the error that refuses them
OLD_FLAGS = {
    "--model": "model.path", "--suite": "data.suite", "--split": "eval.split", "--num-tasks": "eval.num_tasks",
    "--seed": "data.seed", "--engine": "rollout.engine", "--tool-format": "rollout.tool_format",
    "--tool-server": "rollout.tool_server", "--decoder": "eval.decoder", "--temperature": "eval.temperature",
    "--max-turns": "rollout.max_turns", "--max-response-tokens": "rollout.max_response_tokens",
    "--max-tokens-per-turn": "rollout.max_tokens_per_turn", "--width": "eval.width",
    "--max-calls": "eval.max_calls", "--no-grounding": "eval.grounding=false",
    "--reward-source": "reward.source", "--alpha": "reward.alpha", "--threads": "eval.threads",
    "--dtype": "model.dtype", "--max-model-len": "rollout.max_model_len",
    "--gpu-memory-utilization": "rollout.gpu_memory_utilization", "--output": "eval.output",
    "--compare": "eval.compare=[A.json,B.json]", "--judge": "eval.judge", "--judge-url": "reward.judge_url",
    "--judge-model": "reward.judge_model",
}  # fmt: skip


@dataclass
class EvalJob:
    """One checked job: an evaluation (``spec``) or a comparison already computed (``cmp``)."""

    cfg: Any  # the validated EvalRunConfig
    spec: Any = None  # steprl.evaluation.runner.EvalSpec
    cmp: dict[str, Any] | None = None
    output: Path | None = None  # None: a comparison without eval.output prints only


def resolve_checkpoint(model: str, tool_prompt: str = "auto") -> str:
    """``embedded``, a model directory, a run directory (its final actor), or a Hugging Face name."""
    from steprl.main import resolve_model

    run_actor = Path(model).expanduser() / "checkpoints" / "final" / "actor"
    if model != "embedded" and (run_actor / "config.json").exists():
        model = str(run_actor)
    return resolve_model(model, tool_prompt)


def make_spec(cfg: Any):
    """The EvalSpec of a validated config, after the checks the schema cannot make (the model directory,
    the split's tasks, a reward source that needs an endpoint or a file), all before any model loads."""
    from steprl.episode import EpisodeBudget
    from steprl.evaluation.dfsdt import DFSDTConfig
    from steprl.evaluation.runner import EvalSpec
    from tools_env.suite import get_suite

    e, r = cfg.eval, cfg.rollout
    try:
        get_suite(cfg.data.suite).tasks(e.split, e.num_tasks, cfg.data.seed)
    except ValueError as err:
        raise UserError(f"data.suite={cfg.data.suite}: {err}") from err
    if cfg.reward.source != "rule":  # e.g. a judge that cannot be reached: here, not after decoding
        from steprl.reward_sources import RewardPipeline, reward_env

        try:
            RewardPipeline(cfg.reward, reward_env(cfg.reward)).close()
        except (ValueError, KeyError, OSError) as err:
            raise UserError(f"reward.source={cfg.reward.source}: {err}") from err
    greedy_unless_searching = 1.0 if e.decoder == "dfsdt" else 0.0
    return EvalSpec(
        model_path=resolve_checkpoint(cfg.model.path, cfg.model.tool_prompt),
        model=cfg.model.path,
        suite=cfg.data.suite,
        split=e.split,
        num_tasks=e.num_tasks,
        seed=cfg.data.seed,
        engine=r.engine,
        tool_format=r.tool_format,
        tool_server=r.tool_server,
        decoder=e.decoder,
        temperature=greedy_unless_searching if e.temperature is None else e.temperature,
        budget=EpisodeBudget(r.max_turns, r.max_response_tokens, r.max_tokens_per_turn),
        dfsdt=DFSDTConfig(e.width, e.max_calls, require_grounding=e.grounding),
        reward_source=cfg.reward.source,
        alpha=cfg.reward.alpha,
        dtype=cfg.model.dtype,
        tool_prompt=cfg.model.tool_prompt,
        attn_implementation=cfg.model.attn_implementation,
        max_model_len=r.max_model_len,
        gpu_memory_utilization=r.gpu_memory_utilization,
        threads=e.threads,
    )


def default_output(spec: Any, job: int | None = None) -> Path:
    """Under the run when the model is a run's checkpoint (``<run>/eval/<tag>-...``), else ``runs/eval/``;
    job ``n`` of a sweep gets ``-<n>`` so that its jobs do not overwrite each other."""
    from steprl.main import REPO

    name = f"{spec.suite}-{spec.split}-{spec.decoder}" + ("" if job is None else f"-{job}")
    path = Path(spec.model_path)
    if path.name == "actor" and path.parent.parent.name == "checkpoints":
        return path.parent.parent.parent / "eval" / f"{path.parent.name}-{name}.json"
    tag = "embedded" if spec.model == "embedded" else path.name
    return REPO / "runs" / "eval" / f"{tag}-{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"


def check_job(recipe: str, overrides: list[str], job: int | None = None) -> EvalJob:
    """Compose and validate one job's config (the training checks + ``eval.*``), then its inputs."""
    from steprl.config import EvalRunConfig
    from steprl.main import load_config

    cfg, _ = load_config([f"recipe={recipe}", *overrides], schema=EvalRunConfig)
    given = Path(cfg.eval.output) if cfg.eval.output else None
    if cfg.eval.compare:
        from steprl.evaluation.compare import compare

        try:
            a, b = cfg.eval.compare
            cmp = compare(a, b, cfg.eval.judge, cfg.reward.judge_url, cfg.reward.judge_model)
        except ValueError as e:
            raise UserError(str(e)) from e
        return EvalJob(cfg, cmp=cmp, output=given)
    spec = make_spec(cfg)
    return EvalJob(cfg, spec=spec, output=given or default_output(spec, job))


def check_jobs(recipe: str, jobs: list[list[str]]) -> list[EvalJob]:
    """Every job of a run or sweep checked before the first starts; two may not write one file."""
    checked = [check_job(recipe, o, i if len(jobs) > 1 else None) for i, o in enumerate(jobs)]
    seen: dict[Path, int] = {}
    for i, job in enumerate(checked):
        if job.output is None:
            continue
        out = job.output.resolve()
        if out in seen:
            raise UserError(
                f"jobs {seen[out]} and {i} of the sweep would both write {job.output}: sweep eval.output "
                "too, or leave it empty (each job then writes its own file)"
            )
        seen[out] = i
    return checked


def run(job: EvalJob) -> None:
    from steprl.evaluation.report import compare_table, render, result_tables

    if job.cmp is not None:
        text = render([compare_table(job.cmp)])
        if job.output is not None:
            _write(job.output, job.cmp, text)
        return
    from steprl.evaluation.runner import evaluate

    result = evaluate(job.spec)
    text = render(result_tables(result))
    assert job.output is not None
    _write(job.output, result, text)
    print(f"results: {job.output} (table: {job.output.with_suffix('.txt')})")


def _write(path: Path, data: dict[str, Any], text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    path.with_suffix(".txt").write_text(text)


def _hydra_task(_cfg: Any) -> None:
    """Hydra is handed only --help / --cfg (which run no task): steprl.eval runs its jobs itself."""
    raise RuntimeError("steprl.eval runs its jobs itself; Hydra only shows --help and --cfg")


def _show(recipe: str, args: list[str]) -> int:
    from steprl.config import EvalRunConfig
    from steprl.main import run_hydra

    return run_hydra(recipe, args, task=_hydra_task, schema=EvalRunConfig, page=EVAL_HELP)


def parse_jobs(recipe: str, rest: list[str]) -> list[list[str]] | int:
    """Hydra's flags and the overrides -> each job's overrides, or the exit code of --help / --cfg."""
    from hydra._internal.utils import get_args_parser

    from steprl.config import EvalRunConfig
    from steprl.main import INFO_FLAGS, load_config, sweep_jobs

    for a in rest:
        key = OLD_FLAGS.get(a.split("=", 1)[0])
        if key is not None:
            hint = key if "=" in key else f"{key}=<value>"
            raise UserError(
                f"{a.split('=', 1)[0]} is now {hint}: steprl.eval takes the training config keys "
                "(python -m steprl.eval --help)"
            )
    if any(a in INFO_FLAGS for a in rest):
        return _show(recipe, rest)  # --help, --hydra-help, --info ...: Hydra shows, nothing runs
    args, unknown = get_args_parser().parse_known_args(rest)
    if unknown:
        raise UserError(f"unknown flag {unknown[0]!r} (python -m steprl.eval --help)")
    if args.config_path or args.config_dir or args.experimental_rerun:
        raise UserError("--config-path/--config-dir/--experimental-rerun are not used by steprl.eval")
    overrides = list(args.overrides)
    if args.cfg:  # the resolved config, checked as a run would check it, and nothing else
        if not args.multirun:
            load_config([f"recipe={recipe}", *overrides], schema=EvalRunConfig)
        return _show(recipe, [*rest, *([] if args.resolve else ["--resolve"])])
    if not args.multirun:
        return [overrides]
    jobs = sweep_jobs(overrides)
    if jobs is None:
        raise UserError("steprl.eval sweeps with Hydra's basic sweeper only (drop hydra/sweeper)")
    return jobs


def main(argv: list[str] | None = None) -> int:
    from steprl.main import split_recipe

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        recipe, rest = split_recipe(argv)
        jobs = parse_jobs(recipe, rest)
        if isinstance(jobs, int):
            return jobs
        checked = check_jobs(recipe, jobs)
    except UserError as e:
        print(f"steprl.eval: {e}", file=sys.stderr)
        return 2
    for job in checked:
        run(job)
    return 0


if __name__ == "__main__":
    sys.exit(main())
