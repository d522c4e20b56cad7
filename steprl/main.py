"""``python -m steprl.main [recipe=<name>] [hydra overrides]``: train a recipe end to end.

A Hydra application: ``--help`` lists the recipes, config groups and the config; ``--cfg job`` prints
the resolved config without running; ``-m key=a,b`` runs a sweep, one job after the other, each in
its own run directory; ``hydra.run.dir`` is the run directory (``trainer.run_dir`` is the same thing).

Before Hydra creates any directory, every job is checked: config keys, types, ranges and registries
(:mod:`steprl.validation`), the model path, every input file and the checkpoint to resume
(:mod:`steprl.inputs`). A bad input is one line on stderr and exit code 2, with nothing written.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steprl.checkpoint import CheckpointError, keep_completed_results, resolve_resume, run_completed
from steprl.errors import UserError
from steprl.hydra_args import HelpPage, given_override, quote_override, register_help, split_flags

REPO = Path(__file__).resolve().parents[1]
RECIPES_DIR = Path(os.environ.get("STEPRL_RECIPES", REPO / "recipes"))
CONFIGS_DIR = Path(os.environ.get("STEPRL_CONFIGS", REPO / "configs"))
DEFAULT_RECIPE = "steptool"
# Hydra's own flags that show something and run nothing
INFO_FLAGS = ("--help", "-h", "--hydra-help", "--info", "-i", "--shell-completion", "-sc", "--version")
MULTIRUN_FLAGS = ("--multirun", "-m")
TRAIN_HELP = HelpPage(
    name="steprl",
    usage="python -m steprl.main [recipe=<name>] [key=value ...]: train a recipe (README: Configuration)",
    examples=(
        "python -m steprl.main recipe=grpo trainer.total_iterations=3 rollout=hf",
        "python -m steprl.main --cfg job algorithm.kl_coef=0.05      # the resolved config, no run",
        "python -m steprl.main -m trainer.seed=0,1,2                  # a sweep, one run dir per job",
    ),
)


# ---- the config --------------------------------------------------------------------------------
def split_recipe(argv: list[str]) -> tuple[str, list[str]]:
    """``recipe=<name>`` (or Hydra's ``--config-name``/``-cn``) -> the recipe; the rest unchanged."""
    recipe, rest = DEFAULT_RECIPE, []
    it = iter(argv)
    for arg in it:
        if arg.startswith("recipe=") or arg.startswith("--config-name="):
            recipe = arg.split("=", 1)[1]
        elif arg in ("--config-name", "-cn"):
            recipe = next(it, "")
        else:
            rest.append(arg)
    if not (RECIPES_DIR / f"{recipe}.yaml").exists():
        known = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
        raise UserError(f"unknown recipe {recipe!r}; known: {known}")
    return recipe, rest


def compose_config(recipe: str, overrides: list[str], schema: type | None = None):
    """The composed DictConfig of ``recipes/<recipe>.yaml`` (+ groups in ``configs/``) and overrides,
    over ``schema`` (default: the training schema; ``steprl.eval`` passes ``EvalRunConfig``)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from steprl.config import StepRLConfig, register_configs

    register_configs(schema or StepRLConfig)
    try:
        with initialize_config_dir(config_dir=str(RECIPES_DIR), version_base="1.3"):
            return compose(config_name=recipe, overrides=[*overrides, _searchpath()])
    except (HydraException, OmegaConfBaseException) as e:
        bad = _unparsable(overrides)
        if bad is not None:  # Hydra's parse errors quote the token, not the override: name it
            raise UserError(f"config error: cannot parse override {bad[0]!r} ({bad[1]})") from e
        cause = f" ({_first_line(e.__cause__)})" if e.__cause__ else ""
        raise UserError(f"config error: {_first_line(e)}{cause}") from e


def _unparsable(overrides: list[str]) -> tuple[str, str] | None:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    for o in overrides:
        try:
            parser.parse_override(o)
        except HydraException as e:
            return o, _first_line(e)
    return None


def load_config(argv: list[str], schema: type | None = None):
    """Compose and validate: ``(StepRLConfig, resolved YAML)``; a problem is one :class:`UserError` line."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from steprl.config import ConfigError
    from steprl.validation import validate

    recipe, overrides = split_recipe(argv)
    cfg = compose_config(recipe, overrides, schema)
    _load_suites_yaml(OmegaConf.select(cfg, "data.suites_yaml", default=None))
    try:
        typed = validate(cfg)
        text = OmegaConf.to_yaml(cfg, resolve=True)
    except OmegaConfBaseException as e:
        raise UserError(f"config error: {_first_line(e)}") from e
    except ConfigError as e:
        raise UserError(str(e)) from e
    return typed, text


def _load_suites_yaml(path: str | None) -> None:
    """``data.suites_yaml``: register its suites here (and, through the environment, in the workers)
    before the config is validated, so ``data.suite`` may name one of them."""
    if not path:
        return
    from tools_env.suite import use_suites_yaml

    try:
        use_suites_yaml(path)
    except Exception as e:  # a bad plugin file is bad input: one line naming the key
        raise UserError(f"data.suites_yaml={path}: {type(e).__name__}: {_first_line(e)}") from e


def _searchpath() -> str:
    return f"hydra.searchpath=[file://{CONFIGS_DIR}]"


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def resolve_model(path: str, tool_prompt: str = "auto") -> str:
    """``model.path`` -> a checked local model directory (names, GGUF, dirs, hub: steprl/models/resolve.py)."""
    from steprl.models.resolve import ModelError, resolve_model_path

    try:
        return resolve_model_path(path, tool_prompt=tool_prompt)
    except ModelError as e:
        raise UserError(str(e)) from e


def default_run_dir(recipe: str) -> Path:
    return Path("runs") / f"{recipe}-{time.strftime('%Y%m%d-%H%M%S')}"


def make_run_dir(cfg, default: Path | None = None) -> Path:
    """The run directory (``trainer.run_dir``, else ``default``), checked against ``trainer.resume``."""
    if cfg.trainer.run_dir:
        run_dir = Path(cfg.trainer.run_dir)
    else:
        run_dir = default if default is not None else default_run_dir(cfg.recipe)
    if run_dir.exists() and any(run_dir.iterdir()) and cfg.trainer.resume == "never":
        raise UserError(
            f"run directory {run_dir} already exists and is not empty (trainer.resume=auto continues it)"
        )
    try:
        resolve_resume(cfg.trainer.resume, run_dir)  # the checkpoint to resume: complete and intact
    except CheckpointError as e:
        raise UserError(str(e)) from e
    return run_dir


@dataclass
class Job:
    """One checked job: everything ``train`` needs, loaded before anything is written."""

    cfg: Any
    config_yaml: str
    model_path: str
    run_dir: Path | None  # None: a sweep job, whose directory Hydra names when it starts


def preflight(recipe: str, overrides: list[str], run_dir: Path | None) -> Job:
    """Check one job completely (config, model, input files, run dir + resume) without writing."""
    from steprl.inputs import InputError, check_inputs

    cfg, config_yaml = load_config([f"recipe={recipe}", *overrides])
    model_path = resolve_model(cfg.model.path, cfg.model.tool_prompt)
    try:
        check_inputs(cfg)
    except InputError as e:
        raise UserError(str(e)) from e
    return Job(cfg, config_yaml, model_path, make_run_dir(cfg, run_dir) if run_dir is not None else None)


def init_ray(cfg) -> None:
    import ray

    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    env = {"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", "VLLM_CONFIGURE_LOGGING": "0"}
    if os.environ.get("STEPRL_SUITES_YAML"):  # data.suites_yaml: the workers load the same suites
        env["STEPRL_SUITES_YAML"] = os.environ["STEPRL_SUITES_YAML"]
    verbose = os.environ.get("STEPRL_VERBOSE") == "1"
    os.environ.update(env)
    if address:  # join the cluster (a `ray job submit` driver keeps its job's runtime env)
        ray.init(address=address, log_to_driver=verbose)
    else:
        ray.init(
            num_cpus=cfg.ray.num_cpus or max(8, os.cpu_count() or 1),
            include_dashboard=False,
            runtime_env={"env_vars": env},
            log_to_driver=verbose,
        )


def train(cfg, config_yaml: str, model_path: str, run_dir: Path) -> dict[str, Any]:
    from steprl.checkpoint import ResumePoint
    from steprl.cold_start import cold_start
    from steprl.controller import Controller
    from steprl.evaluation.metrics import CURVE_KEYS
    from steprl.logger import plot_curves
    from steprl.methods import get_method
    from steprl.progress import memory_summary, timing_summary
    from steprl.run_state import restore, save_checkpoint

    resume = ResumePoint.find(cfg.trainer.resume, run_dir)  # metrics cut back to its iteration
    ctl = Controller(cfg, model_path, run_dir)
    if resume is not None:
        ctl.logger.history = list(resume.history)
    p = ctl.progress
    summary: dict[str, Any] = {"recipe": cfg.recipe, "model": model_path, "run_dir": str(run_dir)}
    try:
        method = get_method(cfg.trainer.method)
        p.stage(f"starting actor ({cfg.actor.world_size} FSDP2 ranks)")
        ctl.start_actor(method.actor_class())
        policy_path = model_path if resume is None else resume.start_policy(model_path)
        policy_path = cold_start(ctl, resumed=resume is not None) or policy_path
        p.stage(f"starting rollout ({cfg.rollout.engine}), reward, reference and critic workers")
        ctl.start_rest(policy_path, need_ref=method.needs_ref)
        method.setup(ctl)
        summary["placement"] = ctl.placement_report()
        start_it = 0
        if resume is not None:
            p.stage(f"resuming from {resume.path} (iteration {resume.iteration})")
            start_it = int(restore(ctl, resume.path)["iteration"])
        start_eval = resume.start_eval() if resume is not None else {}
        if not start_eval and cfg.trainer.eval_start:
            p.stage(f"evaluating the starting policy on {len(ctl.test_tasks)} held-out tasks")
            start_eval = ctl.evaluate("start", seed=cfg.trainer.seed)
            ctl.logger.log(0, {**start_eval, "eval/pass_rate": start_eval["eval/start/pass_rate"]})
        if start_eval:
            greedy = start_eval.get("eval/start/greedy_pass_rate")
            p.stage(
                f"held-out pass rate before RL: {start_eval['eval/start/pass_rate']:.3f}"
                + (f" (greedy {greedy:.3f})" if greedy is not None else "")
            )
        total = cfg.trainer.total_iterations
        p.stage(
            f"RL: {total} iterations x {cfg.trainer.tasks_per_iteration} tasks x {cfg.rollout.group_size} samples"
        )
        for it in range(start_it + 1, total + 1):
            metrics = method.iteration(ctl, it)
            if cfg.trainer.eval_every and it % cfg.trainer.eval_every == 0 and it < total:
                ev = ctl.evaluate("mid", seed=cfg.trainer.seed)
                metrics["eval/pass_rate"] = ev["eval/mid/pass_rate"]
            ctl.logger.log(it, metrics)
            p.iteration(it, total, metrics)
            if cfg.trainer.save_every and it % cfg.trainer.save_every == 0 and it < total:
                save_checkpoint(ctl, f"iter_{it:05d}", iteration=it)
        end_eval = (  # no iteration: the policy did not change since the first evaluation
            {k.replace("eval/start/", "eval/final/"): v for k, v in start_eval.items()}
            if total == 0 and start_eval
            else ctl.evaluate("final", seed=cfg.trainer.seed)
        )
        ctl.logger.log(total, {**end_eval, "eval/pass_rate": end_eval["eval/final/pass_rate"]})
        ckpt = save_checkpoint(ctl, "final", iteration=total)
        plot = plot_curves(
            ctl.logger.history, run_dir / "curves.png", list(CURVE_KEYS), f"steprl {cfg.recipe}"
        )
        summary.update(
            status="completed",
            pass_rate_before_rl=start_eval.get("eval/start/pass_rate"),
            pass_rate_after_rl=end_eval["eval/final/pass_rate"],
            tool_success_before_rl=start_eval.get("eval/start/tool_success"),
            tool_success_after_rl=end_eval["eval/final/tool_success"],
            final_checkpoint=str(ckpt),
            curves=str(plot) if plot else None,
            seconds=time.time() - p.t0,
            end_reasons_after_rl={k.split("/")[-1]: v for k, v in end_eval.items() if "/end/" in k},
            eval_temperature=cfg.rollout.eval_temperature,
            eval_samples_per_task=cfg.rollout.eval_samples,
            greedy_pass_rate_before_rl=start_eval.get("eval/start/greedy_pass_rate"),
            greedy_pass_rate_after_rl=end_eval.get("eval/final/greedy_pass_rate"),
        )
        summary.update(**timing_summary(ctl.logger.history), **memory_summary(ctl.logger.history))
        p.stage(
            f"held-out pass rate (T={cfg.rollout.eval_temperature:g}, {cfg.rollout.eval_samples} per task): "
            f"{_arrow(summary['pass_rate_before_rl'], summary['pass_rate_after_rl'])}"
            # a run resumed from one that logged no greedy start evaluation has only the second
            + f"; greedy {_arrow(summary['greedy_pass_rate_before_rl'], summary['greedy_pass_rate_after_rl'])}"
            + f" ({summary['seconds']:.0f}s); run directory {run_dir}"
        )
        return summary
    except BaseException as e:
        summary.update(status="failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        raise
    finally:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        ctl.shutdown()


def _arrow(before: float | None, after: float | None) -> str:
    """``0.547 before RL -> 0.762 after RL``; a missing number (start not evaluated) is left out."""
    parts = [f"{v:.3f} {when}" for v, when in ((before, "before RL"), (after, "after RL")) if v is not None]
    return " -> ".join(parts) if parts else "not evaluated"


# ---- the command line ---------------------------------------------------------------------------
# jobs checked by main() before Hydra starts, keyed by (recipe, the job's non-Hydra overrides)
_JOBS: dict[tuple[str, ...], Job] = {}


def _job_key(recipe: str, overrides: list[str]) -> tuple[str, ...]:
    return (recipe, *(o for o in overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/"))))


def single_run_dir(recipe: str, overrides: list[str]) -> Path:
    """``trainer.run_dir``, else ``hydra.run.dir`` (resolved), else ``runs/<recipe>-<timestamp>``."""
    trainer_dir, hydra_dir = (
        given_override(overrides, "trainer.run_dir"),
        given_override(overrides, "hydra.run.dir"),
    )
    if hydra_dir is not None:
        from omegaconf import OmegaConf

        cfg = _compose_with_hydra(recipe, overrides)
        hydra_dir = str(OmegaConf.select(cfg, "hydra.run.dir"))
    if trainer_dir and hydra_dir and Path(trainer_dir).resolve() != Path(hydra_dir).resolve():
        raise UserError(
            f"trainer.run_dir={trainer_dir} and hydra.run.dir={hydra_dir} differ: they are the same "
            "setting (the run directory); give one"
        )
    return Path(trainer_dir or hydra_dir or default_run_dir(recipe))


def _compose_with_hydra(recipe: str, overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from steprl.config import register_configs

    register_configs()
    try:
        with initialize_config_dir(config_dir=str(RECIPES_DIR), version_base="1.3"):
            return compose(recipe, [*overrides, _searchpath()], return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as e:
        raise UserError(f"config error: {_first_line(e)}") from e


def sweep_jobs(overrides: list[str]) -> list[list[str]] | None:
    """The override list of every job of a basic-sweeper multirun (None: another sweeper decides)."""
    if any(o.startswith(("hydra/sweeper=", "hydra.sweeper.")) for o in overrides):
        return None
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    except HydraException as e:
        raise UserError(f"config error: {_first_line(e)}") from e


def run_hydra(
    recipe: str, args: list[str], task: Any = None, schema: type | None = None, page: HelpPage = TRAIN_HELP
) -> int:
    """Run a Hydra application over the recipes on ``args`` (flags + overrides): ``python -m steprl.main``
    (``task`` = one training job), or only Hydra's --help / --cfg pages of ``steprl.eval`` (``schema``,
    ``page``)."""
    import hydra
    from hydra.core.global_hydra import GlobalHydra

    from steprl.config import StepRLConfig, register_configs

    register_configs(schema or StepRLConfig)
    register_help(page, RECIPES_DIR, CONFIGS_DIR, DEFAULT_RECIPE)
    given = [a.split("=", 1)[0] for a in args]
    defaults = {  # Hydra writes nothing of its own into a run directory; steprl writes config.yaml
        "hydra/help": page.name,
        "hydra/job_logging": "none",
        "hydra.output_subdir": "null",
        "hydra.job.chdir": "false",
        "hydra.run.dir": quote_override(str(default_run_dir(recipe))),
        "hydra.sweep.dir": quote_override(
            str(Path("runs") / f"multirun-{recipe}-{time.strftime('%Y%m%d-%H%M%S')}")
        ),
    }
    extra = [f"{k}={v}" for k, v in defaults.items() if k not in given]
    app = hydra.main(config_path=str(RECIPES_DIR), config_name=recipe, version_base="1.3")(task or _task)
    flags, overrides = split_flags(args)  # argparse takes the overrides as one run of positionals
    saved = sys.argv
    sys.argv = [saved[0] if saved and saved[0] else page.name, *flags, *overrides, *extra, _searchpath()]
    GlobalHydra.instance().clear()
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # a crash in training: its whole traceback, raised
    try:
        app()
    finally:
        sys.argv = saved
        GlobalHydra.instance().clear()
    return 0


def _task(_cfg: Any) -> None:
    """Hydra's task function: one job (a run, or one point of a sweep) in Hydra's output directory."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    overrides = list(hc.overrides.task)
    try:
        job = _JOBS.pop(_job_key(hc.job.config_name, overrides), None)
        if job is None:  # a sweep main() could not expand in advance (another sweeper): check it now
            job = preflight(hc.job.config_name, overrides, run_dir)
        elif job.run_dir is None:
            job = Job(job.cfg, job.config_yaml, job.model_path, make_run_dir(job.cfg, run_dir))
    except UserError as e:
        print(f"steprl: {e}", file=sys.stderr)
        raise SystemExit(2) from e
    run_job(job)


def run_job(job: Job) -> dict[str, Any] | None:
    """Train one checked job: config.yaml, Ray, ``train``; the results of a completed run survive."""
    cfg, run_dir = job.cfg, job.run_dir
    assert run_dir is not None
    if run_completed(cfg.trainer.resume, run_dir, cfg.trainer.total_iterations):
        print(f"steprl: {run_dir} already completed its {cfg.trainer.total_iterations} iterations")
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    with keep_completed_results(run_dir):
        (run_dir / "config.yaml").write_text(job.config_yaml)
        init_ray(cfg)
        import ray

        try:
            return train(cfg, job.config_yaml, job.model_path, run_dir)
        finally:
            ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        recipe, rest = split_recipe(argv)
        if any(a in INFO_FLAGS for a in rest):
            return run_hydra(recipe, rest)  # --help, --hydra-help, --info ...: Hydra shows, nothing runs
        from hydra._internal.utils import get_args_parser

        args = get_args_parser().parse_args(rest)
        if args.config_path or args.config_dir or args.experimental_rerun:
            raise UserError(
                "--config-path/--config-dir/--experimental-rerun are not used: recipes come from "
                f"{RECIPES_DIR} (STEPRL_RECIPES) and config groups from {CONFIGS_DIR} (STEPRL_CONFIGS)"
            )
        overrides = list(args.overrides)
        if args.cfg:  # the resolved config, checked as a run would check it, and nothing else
            if not args.multirun:
                load_config([f"recipe={recipe}", *overrides])
            return run_hydra(recipe, [*rest, *([] if args.resolve else ["--resolve"])])
        if args.multirun:
            jobs = sweep_jobs(overrides)
            if jobs is not None:
                if len(jobs) > 1 and given_override(overrides, "trainer.run_dir"):
                    raise UserError(
                        "trainer.run_dir names one directory but the sweep has "
                        f"{len(jobs)} jobs: drop it (each job runs in <hydra.sweep.dir>/<job number>)"
                    )
                for job_overrides in jobs:  # every job's config first (cheap), then their inputs
                    load_config([f"recipe={recipe}", *job_overrides])
                for job_overrides in jobs:
                    _JOBS[_job_key(recipe, job_overrides)] = preflight(recipe, job_overrides, None)
            return run_hydra(recipe, rest)
        run_dir = single_run_dir(recipe, overrides)
        job = preflight(recipe, overrides, run_dir)
        if run_completed(job.cfg.trainer.resume, run_dir, job.cfg.trainer.total_iterations):
            print(f"steprl: {run_dir} already completed its {job.cfg.trainer.total_iterations} iterations")
            return 0
        _JOBS[_job_key(recipe, overrides)] = job
        args_out = [a for a in rest if given_override([a], "hydra.run.dir") is None]
        return run_hydra(recipe, [*args_out, f"hydra.run.dir={quote_override(str(run_dir))}"])
    except UserError as e:
        print(f"steprl: {e}", file=sys.stderr)
        return 2
    except CheckpointError as e:
        print(f"steprl: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
