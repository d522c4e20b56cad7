"""The results table in miniature: every method from one SFT start, at one sample budget, over seeds.

    python benchmarks/results_table.py                      # SFT start, 8 methods x 3 seeds, docs/RESULTS.md
    python benchmarks/results_table.py --report-only        # rewrite the doc from the runs already there
    python benchmarks/results_table.py --recipes steptool ppo_final --seeds 0 1 2 3
    python benchmarks/results_table.py --suite relay        # the relay suite: its own SFT start and section
    python benchmarks/results_table.py --suite relay --calibrate   # only its SFT start, into docs/suites.md

Procedure (what makes the rows comparable):
1. One SFT cold start (``recipe=sft``, seed 0) writes ``<out>/sft/checkpoints/sft/actor``.
2. Every RL recipe then starts from that checkpoint (``model.path=...  sft.enabled=false``) for each
   seed, for the same number of iterations. Every recipe samples 64 episodes per iteration (16 tasks x 4,
   ARPO 8 tasks x M=8), so the sample budget is equal; the script reads it back from each run's config
   and prints it in the table.
3. The SFT row is the held-out evaluation of the shared start, made by the StepTool runs before their
   first iteration with the same evaluation seed as their final evaluation (``trainer.eval_start``);
   the other recipes skip that evaluation (``trainer.eval_start=false``).
4. Held-out metrics (``summary.json``): pass rate of the policy as sampled (4 episodes per task for 64
   held-out tasks, temperature 1; Solved 1, Unsure 0.5, Unsolved 0), greedy pass rate, tool-call
   success per tool step. Mean +- sample standard deviation over seeds. Learning curves: the training
   pass rate per iteration (``metrics.jsonl``), mean and band of one std over seeds.
5. Where the episodes fail: ``python -m steprl.eval`` (transformers engine, temperature 1, 64 held-out
   tasks) of the SFT start and of the final StepTool and PPO (final reward) policies of every seed,
   each episode sorted into solved, failed with a failed tool call, failed after a step that did not
   contribute (Contribution 0: a wrong field or entity looked up), failed with every step contributing
   (a slip in the answer itself), or no answer; plus non-contributing steps per episode.
6. Critic fit, for the recipes with a critic: ``critic_explained_variance`` (``metrics.jsonl``; the
   critic's values against its targets before each update), mean over a run's iterations, over seeds.

``--suite`` picks the task suite (``SUITES`` below: its Hydra overrides, evaluation size, output
directory, plot and section of ``docs/RESULTS.md``). ``relay`` (docs/suites.md) gets its own SFT start,
its own episode budget (12 turns, 720 response tokens), 640 held-out tasks x 1 sample per evaluation
(binomial standard error <= 0.5 / sqrt(640) = 0.020 for every pass rate) and the Figure 4 analogue:
tool-call success by call index (1st, 2nd, ... call) of the SFT start, PPO (final reward) and StepTool,
from the same ``steprl.eval`` episodes as the failure table.

Finished runs are kept and not run again (a run without ``"status": "completed"`` is deleted and
rerun), so an interrupted table continues where it stopped. The generated part of ``docs/RESULTS.md``
sits between two markers; text outside them (the reading of the table) is kept.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: its sibling modules

from results_report import plot, render, render_calibration, write_doc  # noqa: E402
from results_setup import (  # noqa: E402, F401  (re-exported: the tests and older callers use them here)
    BEGIN,
    CAL_BEGIN,
    CAL_END,
    CALIBRATION_TARGETS,
    END,
    FAILURE_KINDS,
    FAILURE_RECIPES,
    REPO,
    RL_RECIPES,
    ROWS,
    SFT_SOURCE,
    SUITES,
    SuiteSetup,
    markers,
    mean_std,
)


def run_main(overrides: list[str], run_dir: Path, log: Path) -> None:
    """``python -m steprl.main`` in a subprocess; a failed run raises with the end of its log."""
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an interrupted or failed attempt (finished runs are not run again)
    cmd = [sys.executable, "-m", "steprl.main", *overrides, f"trainer.run_dir={run_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=env, check=False)
    if proc.returncode != 0 or _completed(run_dir) is None:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise RuntimeError(f"run failed ({' '.join(overrides)}), log {log}:\n{tail}")


def _completed(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "summary.json"
    if not path.exists():
        return None
    summary = json.loads(path.read_text())
    return summary if summary.get("status") == "completed" else None


def train_all(args: argparse.Namespace) -> None:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    sft_dir = out / "sft"
    common = [f"actor.world_size={args.world_size}", f"critic.world_size={args.world_size}"]
    common += list(SUITES[args.suite].overrides)
    jobs: list[tuple[str, list[str], Path]] = [
        ("sft", ["recipe=sft", "trainer.seed=0", "trainer.logger=[jsonl]", *common], sft_dir)
    ]
    sft_actor = sft_dir / "checkpoints" / "sft" / "actor"
    for seed in args.seeds:
        for recipe in args.recipes:
            overrides = [
                f"recipe={recipe}",
                f"model.path={sft_actor}",
                "sft.enabled=false",
                f"trainer.seed={seed}",
                f"trainer.total_iterations={args.iterations}",
                f"trainer.eval_start={str(recipe == SFT_SOURCE).lower()}",
                "trainer.logger=[jsonl]",
                *common,
                *args.override,
            ]
            jobs.append((f"{recipe} seed {seed}", overrides, out / recipe / f"seed{seed}"))
    if args.calibrate:
        jobs = jobs[:1]  # the shared SFT start only
    t0 = time.time()
    for i, (name, overrides, run_dir) in enumerate(jobs, 1):
        if _completed(run_dir) is not None:
            print(f"[{i}/{len(jobs)}] {name}: done before, kept", flush=True)
            continue
        t1 = time.time()
        print(f"[{i}/{len(jobs)}] {name} ...", flush=True)
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        log = run_dir.parent / f"{run_dir.name}.log"
        try:
            run_main(overrides, run_dir, log)
        except RuntimeError as e:  # e.g. killed by Ray's memory monitor while something else ran: once more
            print(f"[{i}/{len(jobs)}] {name} failed, retrying once: {str(e).splitlines()[0]}", flush=True)
            run_main(overrides, run_dir, log)
        s = _completed(run_dir) or {}
        print(
            f"[{i}/{len(jobs)}] {name}: held-out pass {s.get('pass_rate_after_rl', float('nan')):.3f} "
            f"in {time.time() - t1:.0f}s (total {time.time() - t0:.0f}s)",
            flush=True,
        )


def collect(out: Path, seeds: list[int]) -> dict[str, dict[str, Any]]:
    """Per recipe: the held-out metrics of every completed seed, the budget, and training curves."""
    rows: dict[str, dict[str, Any]] = {}
    for recipe in RL_RECIPES:
        for seed in seeds:
            run_dir = out / recipe / f"seed{seed}"
            s = _completed(run_dir)
            if s is None:
                continue
            r = _add_seed(rows, recipe, seed, s, "after_rl")
            r["seconds"] = r.get("seconds", []) + [s["seconds"]]
            r["budget"] = episodes_per_run(run_dir)
            r["eval"] = eval_episodes(run_dir)
            history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
            r["curves"].append(
                {h["step"]: h["train/pass_rate"] for h in history if "train/pass_rate" in h and h["step"] > 0}
            )
            fits = [h["critic_explained_variance"] for h in history if "critic_explained_variance" in h]
            if fits:  # the critic's fit to its targets, mean over the iterations (runs that log it)
                r.setdefault("critic_fit", []).append(sum(fits) / len(fits))
            if recipe == SFT_SOURCE and s.get("pass_rate_before_rl") is not None:
                _add_seed(rows, "sft", seed, s, "before_rl")["budget"] = 0
    return rows


def _add_seed(rows: dict[str, dict[str, Any]], recipe: str, seed: int, summary: dict, when: str) -> dict:
    """Append one seed's held-out metrics (``summary.json`` keys ending in ``when``) to ``rows[recipe]``."""
    r = rows.setdefault(recipe, {"seeds": [], "pass": [], "greedy": [], "tool": [], "curves": []})
    r["seeds"].append(seed)
    r["pass"].append(summary[f"pass_rate_{when}"])
    r["greedy"].append(summary[f"greedy_pass_rate_{when}"])
    r["tool"].append(summary[f"tool_success_{when}"])
    return r


def failure_modes(
    out: Path, seeds: list[int], run_evals: bool, suite: str = "atlas"
) -> dict[str, dict[str, Any]]:
    """Per recipe in FAILURE_RECIPES: the share of episodes of each kind and non-contributing steps per
    episode, over the seeds' final policies (the SFT start once per seed's evaluation seed), and the
    tool-call success by call index of the same episodes."""
    setup = SUITES[suite]
    analysis = out / "analysis"
    analysis.mkdir(parents=True, exist_ok=True)
    result: dict[str, dict[str, Any]] = {}
    for recipe in FAILURE_RECIPES:
        rows: list[dict[str, Any]] = []
        for seed in seeds:
            model = (
                out / "sft" / "checkpoints" / "sft" / "actor"
                if recipe == "sft"
                else out / recipe / f"seed{seed}" / "checkpoints" / "final" / "actor"
            )
            path = analysis / f"{recipe}-seed{seed}.json"
            if not path.exists() and run_evals and model.is_dir():
                cmd = [sys.executable, "-m", "steprl.eval", f"model.path={model}", *setup.eval_engine]
                cmd += ["eval.temperature=1", f"eval.num_tasks={setup.eval_tasks}", f"data.seed={seed}"]
                cmd += [f"data.suite={suite}", f"rollout.max_turns={setup.budget[0]}"]
                cmd += [f"rollout.max_response_tokens={setup.budget[1]}"]
                cmd += [f"rollout.max_tokens_per_turn={setup.budget[2]}"]
                subprocess.run([*cmd, f"eval.output={path}"], cwd=REPO, capture_output=True, check=True)
            if path.exists():
                rows += json.loads(path.read_text())["rows"]
        if rows:
            result[recipe] = {**classify(rows), "by_index": success_by_call_index(rows)}
    return result


def success_by_call_index(rows: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Tool-call success of the 1st, 2nd, ... tool call (StepTool's Figure 4) over evaluation rows."""
    from steprl.evaluation.metrics import success_by_step_index

    return success_by_step_index([r["tool_success"] for r in rows])


def classify(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Shares of FAILURE_KINDS over evaluation rows, non-contributing tool steps per episode, and how
    the policy gives up: on a task the tools can solve (a failure) and on one they cannot (right)."""
    from tools_env.suites.relay import UNSOLVABLE_KINDS, gives_up

    counts = dict.fromkeys(FAILURE_KINDS, 0)
    wasted_steps = 0
    gave_up = {True: 0, False: 0}  # by "the task is unsolvable"
    tasks = {True: 0, False: 0}
    for r in rows:
        tool_steps = [s for s in r["steps"] if not s["is_final"]]
        wasted = [s for s in tool_steps if s["contribution"] <= 0]
        wasted_steps += len(wasted)
        unsolvable = r.get("task", {}).get("meta", {}).get("kind") in UNSOLVABLE_KINDS
        tasks[unsolvable] += 1
        gave_up[unsolvable] += r["end_reason"] == "answer" and gives_up(r.get("final_answer"))
        if r["pass_score"] >= 1.0:
            counts["solved"] += 1
        elif r["end_reason"] != "answer":
            counts["no_answer"] += 1
        elif any(s["succ_calling"] < 1.0 for s in tool_steps):
            counts["failed_call"] += 1
        elif wasted:
            counts["wasted_step"] += 1
        else:
            counts["answer_slip"] += 1
    n = len(rows)
    return {
        **{k: v / n for k, v in counts.items()},
        "wasted_steps": wasted_steps / n,
        "episodes": float(n),
        "give_up_solvable": gave_up[False] / tasks[False] if tasks[False] else float("nan"),
        "give_up_unsolvable": gave_up[True] / tasks[True] if tasks[True] else float("nan"),
        "steps": sum(len([s for s in r["steps"] if not s["is_final"]]) for r in rows) / n,
    }


def episodes_per_run(run_dir: Path) -> int:
    """Training episodes sampled over the run, from its resolved config (tasks x samples x iterations)."""
    from omegaconf import OmegaConf

    c = OmegaConf.load(run_dir / "config.yaml")
    return int(c.trainer.tasks_per_iteration * c.rollout.group_size * c.trainer.total_iterations)


def eval_episodes(run_dir: Path) -> tuple[int, int]:
    """(samples per task, held-out tasks) of a run's held-out evaluation, from its resolved config."""
    from omegaconf import OmegaConf

    c = OmegaConf.load(run_dir / "config.yaml")
    return int(c.rollout.eval_samples), int(c.data.test_tasks)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default="atlas", choices=sorted(SUITES), help="task suite (see SUITES)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--iterations", type=int, default=8)
    ap.add_argument("--recipes", nargs="+", default=RL_RECIPES, choices=RL_RECIPES)
    ap.add_argument("--world-size", type=int, default=1, help="actor and critic FSDP ranks per run")
    ap.add_argument("--out", type=Path, default=None, help="run directories (default: the suite's)")
    ap.add_argument("--doc", type=Path, default=REPO / "docs" / "RESULTS.md")
    ap.add_argument("--plot", type=Path, default=None, help="learning curves (default: the suite's)")
    ap.add_argument("--report-only", action="store_true", help="only rewrite the doc from finished runs")
    ap.add_argument(
        "--calibrate",
        action="store_true",
        help="only the SFT start: write its calibration numbers into docs/suites.md (suites with targets)",
    )
    ap.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides for every RL run")
    args = ap.parse_args(argv)
    if args.iterations < 1:
        ap.error("--iterations must be >= 1")
    setup = SUITES[args.suite]
    args.out = (args.out or REPO / setup.out).resolve()
    args.plot = args.plot or REPO / setup.plot
    if args.calibrate:
        if args.suite not in CALIBRATION_TARGETS:
            ap.error(f"--calibrate: suite {args.suite!r} has no calibration targets")
        return calibrate(args)
    if not args.report_only:
        train_all(args)
    rows = collect(args.out, args.seeds)
    if not rows:
        print(f"no finished runs under {args.out}", file=sys.stderr)
        return 1
    plot(rows, args.plot, args.suite)
    modes = failure_modes(args.out, args.seeds, run_evals=not args.report_only, suite=args.suite)
    write_doc(args.doc, render(rows, args, args.plot, args.doc, modes), setup.section)
    print(f"wrote {args.doc} and {args.plot}")
    return 0


def calibrate(args: argparse.Namespace, doc: Path = REPO / "docs" / "suites.md") -> int:
    """Run (or keep) the suite's SFT start and record its held-out numbers against the targets."""
    from omegaconf import OmegaConf

    if not args.report_only:
        train_all(args)
    sft_dir = args.out / "sft"
    summary = _completed(sft_dir)
    if summary is None:
        print(f"no finished SFT run under {sft_dir}", file=sys.stderr)
        return 1
    command = f"python benchmarks/results_table.py --suite {args.suite} --calibrate"
    block, on_target = render_calibration(
        summary, OmegaConf.load(sft_dir / "config.yaml"), args.suite, command
    )
    write_doc(doc, block, bounds=(CAL_BEGIN.format(suite=args.suite), CAL_END.format(suite=args.suite)))
    print(block)
    print(f"wrote {doc}; calibration {'on' if on_target else 'OFF'} target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
