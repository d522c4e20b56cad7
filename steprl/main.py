"""``python -m steprl.main [recipe=<name>] [hydra overrides]``: train a recipe end to end.

Everything that can be wrong with the input (config keys, types, ranges, the model path, the task
suite) is checked before any worker starts or anything is written to the run directory.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from steprl.checkpoint import CheckpointError, resolve_resume, run_completed

REPO = Path(__file__).resolve().parents[1]
RECIPES_DIR = Path(os.environ.get("STEPRL_RECIPES", REPO / "recipes"))
CONFIGS_DIR = Path(os.environ.get("STEPRL_CONFIGS", REPO / "configs"))


class UserError(Exception):
    """Bad input: reported as one line, before anything starts."""


def load_config(argv: list[str]):
    """Compose ``recipes/<recipe>.yaml`` (+ config groups in ``configs/``) with the overrides."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from steprl.config import ConfigError, register_configs, validate

    recipe = "steptool"
    overrides = []
    for arg in argv:
        if arg.startswith("recipe="):
            recipe = arg.split("=", 1)[1]
        else:
            overrides.append(arg)
    if not (RECIPES_DIR / f"{recipe}.yaml").exists():
        known = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
        raise UserError(f"unknown recipe {recipe!r}; known: {known}")
    register_configs()
    try:
        with initialize_config_dir(config_dir=str(RECIPES_DIR), version_base=None):
            cfg = compose(
                config_name=recipe, overrides=overrides + [f"hydra.searchpath=[file://{CONFIGS_DIR}]"]
            )
        typed = validate(cfg)
    except (HydraException, OmegaConfBaseException) as e:
        cause = f" ({_first_line(e.__cause__)})" if e.__cause__ else ""
        raise UserError(f"config error: {_first_line(e)}{cause}") from e
    except ConfigError as e:
        raise UserError(str(e)) from e
    return typed, OmegaConf.to_yaml(cfg)


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def resolve_model(path: str) -> str:
    """``embedded`` -> build the tiny model; a directory -> itself; else a Hugging Face name (cache only)."""
    if path == "embedded":
        from steprl.models.tiny import ensure_tiny_model

        return str(ensure_tiny_model())
    p = Path(path).expanduser()
    if p.exists():
        if not (p / "config.json").exists():
            raise UserError(
                f"model path {path} exists but has no config.json (not a Hugging Face model directory)"
            )
        return str(p.resolve())
    if path.startswith((".", "/", "~")):
        raise UserError(f"model path {path} does not exist")
    try:  # a hub name: the same loading code, but only what is already in the local cache
        from huggingface_hub import snapshot_download

        return snapshot_download(path, local_files_only=os.environ.get("HF_HUB_OFFLINE", "1") == "1")
    except Exception as e:
        raise UserError(
            f"model {path!r} is neither a local directory nor in the Hugging Face cache ({type(e).__name__})"
        ) from e


def make_run_dir(cfg) -> Path:
    run_dir = (
        Path(cfg.trainer.run_dir)
        if cfg.trainer.run_dir
        else REPO / "runs" / f"{cfg.recipe}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    if run_dir.exists() and any(run_dir.iterdir()) and cfg.trainer.resume == "never":
        raise UserError(
            f"run directory {run_dir} already exists and is not empty (trainer.resume=auto continues it)"
        )
    try:
        resolve_resume(cfg.trainer.resume, run_dir)
    except CheckpointError as e:
        raise UserError(str(e)) from e
    return run_dir


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
    from steprl.controller import Controller, curve_keys
    from steprl.logger import plot_curves
    from steprl.methods import get_method
    from steprl.progress import memory_summary, timing_summary
    from steprl.sft import run_sft, sft_data

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
        if cfg.sft.enabled and cfg.sft.epochs > 0 and resume is not None:  # trained before the checkpoint
            ctl.sft_data, _ = sft_data(cfg, ctl.suite, ctl.tokenizer)
        elif cfg.sft.enabled and cfg.sft.epochs > 0:
            demos, what = sft_data(cfg, ctl.suite, ctl.tokenizer)
            ctl.sft_data = demos
            p.stage(f"SFT cold start on {what}, loss on {cfg.sft.loss_on} assistant turns")

            def on_step(step: int, total: int, m: dict[str, float]) -> None:
                p.bar(step, total, f"nll {m['sft/nll']:.3f}")
                ctl.logger.log(0, {"sft/step": step, **m})

            def sft_step(tensors, lr):
                return ctl.actor.mean_metrics("sft_step", tensors, lr=lr)

            run_sft(
                sft_step,
                demos,
                ctl.pad_id,
                cfg.sft.epochs,
                cfg.sft.batch_size,
                cfg.sft.lr,
                cfg.trainer.seed,
                on_step,
                loss_on=cfg.sft.loss_on,
            )
            policy_path = str(ctl.save_checkpoint("sft") / "actor")
        p.stage(f"starting rollout ({cfg.rollout.engine}), reward, reference and critic workers")
        ctl.start_rest(policy_path, need_ref=method.needs_ref)
        method.setup(ctl)
        summary["placement"] = ctl.placement_report()
        start_it = 0
        if resume is not None:
            p.stage(f"resuming from {resume.path} (iteration {resume.iteration})")
            start_it = int(ctl.restore(resume.path)["iteration"])
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
                ctl.save_checkpoint(f"iter_{it:05d}", iteration=it)
        end_eval = (  # no iteration: the policy did not change since the first evaluation
            {k.replace("eval/start/", "eval/final/"): v for k, v in start_eval.items()}
            if total == 0 and start_eval
            else ctl.evaluate("final", seed=cfg.trainer.seed)
        )
        ctl.logger.log(total, {**end_eval, "eval/pass_rate": end_eval["eval/final/pass_rate"]})
        ckpt = ctl.save_checkpoint("final", iteration=total)
        plot = plot_curves(ctl.logger.history, run_dir / "curves.png", curve_keys(), f"steprl {cfg.recipe}")
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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        cfg, config_yaml = load_config(argv)
        model_path = resolve_model(cfg.model.path)
        from tools_env.suite import get_suite, use_suites_yaml

        if cfg.data.suites_yaml:
            try:
                use_suites_yaml(cfg.data.suites_yaml)
            except Exception as e:
                raise UserError(f"data.suites_yaml={cfg.data.suites_yaml}: {type(e).__name__}: {e}") from e
        try:
            get_suite(cfg.data.suite)
        except KeyError as e:
            raise UserError(str(e).strip("'\"")) from e
        run_dir = make_run_dir(cfg)
        if run_completed(cfg.trainer.resume, run_dir, cfg.trainer.total_iterations):
            print(f"steprl: {run_dir} already completed its {cfg.trainer.total_iterations} iterations")
            return 0
    except UserError as e:
        print(f"steprl: {e}", file=sys.stderr)
        return 2
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(config_yaml)
    init_ray(cfg)
    import ray

    try:
        train(cfg, config_yaml, model_path, run_dir)
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
