"""``python -m steprl.eval``: evaluate a checkpoint on a task suite, or compare two saved evaluations.

    python -m steprl.eval --model runs/<run>/checkpoints/final/actor --engine hf --num-tasks 64
    python -m steprl.eval --model embedded --decoder dfsdt --width 2 --max-calls 12
    python -m steprl.eval --compare runs/a/eval/final-atlas-test-cot.json runs/b/eval/final-atlas-test-cot.json

Writes the results as JSON (per-task rows + aggregate) and the printed tables as text beside it. Bad input
(a missing checkpoint, an unknown suite ...) is reported in one line with exit code 2, before any model
is loaded. See docs/evaluation.md for the metric definitions and the DFSDT rule.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from steprl.config import RolloutConfig
from steprl.evaluation.runner import DECODERS


class UserError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2 (argparse prints usage too)
        raise UserError(message)


def build_parser() -> argparse.ArgumentParser:
    d = RolloutConfig()
    p = _Parser(prog="python -m steprl.eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="embedded", help="a model directory, a run directory, or 'embedded'")
    p.add_argument("--suite", default="atlas")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--num-tasks", type=int, default=64)
    p.add_argument("--seed", type=int, default=0, help="task generation and sampling seed")
    p.add_argument("--engine", default=d.engine, help=f"rollout engine (default {d.engine}, as in training)")
    p.add_argument("--tool-format", default=d.tool_format)
    p.add_argument("--tool-server", default="inprocess", help="inprocess | local | http(s)://host:port")
    p.add_argument("--decoder", default="cot", choices=list(DECODERS))
    p.add_argument("--temperature", type=float, default=None, help="default: 0 (greedy) for cot, 1 for dfsdt")
    p.add_argument("--max-turns", type=int, default=d.max_turns)
    p.add_argument("--max-response-tokens", type=int, default=d.max_response_tokens)
    p.add_argument("--max-tokens-per-turn", type=int, default=d.max_tokens_per_turn)
    p.add_argument("--width", type=int, default=2, help="dfsdt: candidates per node")
    p.add_argument("--max-calls", type=int, default=12, help="dfsdt: model calls per task")
    p.add_argument("--no-grounding", action="store_true", help="dfsdt: accept ungrounded answers")
    p.add_argument("--reward-source", default="rule")
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=0, help="torch threads of the hf engine (0: all cores)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--max-model-len", type=int, default=d.max_model_len)
    p.add_argument("--gpu-memory-utilization", type=float, default=d.gpu_memory_utilization)
    p.add_argument("--output", default=None, help="results JSON (default: under the run or runs/eval/)")
    p.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"), help="win rate of A over B")
    p.add_argument("--judge", default="auto", choices=["auto", "on", "off"],
                   help="compare: also through the 'judge' reward source (auto: if registered and configured)")  # fmt: skip
    p.add_argument("--judge-url", default="", help="compare: judge endpoint (default: $STEPRL_JUDGE_URL)")
    p.add_argument("--judge-model", default="", help="compare: judge model (default: $STEPRL_JUDGE_MODEL)")
    return p


def resolve_checkpoint(model: str) -> str:
    """``embedded``, a model directory, a run directory (its final actor), or a Hugging Face name."""
    from steprl.main import UserError as MainUserError
    from steprl.main import resolve_model

    run_actor = Path(model).expanduser() / "checkpoints" / "final" / "actor"
    if model != "embedded" and (run_actor / "config.json").exists():
        model = str(run_actor)
    try:
        return resolve_model(model)
    except MainUserError as e:
        raise UserError(str(e)) from e


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def make_spec(args: argparse.Namespace):
    """Validate every argument (cheaply, before any model loads) and build the EvalSpec."""
    from steprl.engines import ENGINES
    from steprl.episode import EpisodeBudget
    from steprl.evaluation.dfsdt import DFSDTConfig
    from steprl.evaluation.runner import EvalSpec
    from tools_env.parsers import PARSERS
    from tools_env.suite import get_suite
    from workers.reward import REWARD_SOURCES

    try:
        suite = get_suite(args.suite)
    except KeyError as e:
        raise UserError(str(e).strip("'\"")) from e
    _check(args.num_tasks >= 1, f"--num-tasks must be >= 1, got {args.num_tasks}")
    _check(args.engine in ENGINES, f"unknown engine {args.engine!r}; known: {sorted(ENGINES)}")
    _check(args.tool_format in PARSERS, f"unknown tool format {args.tool_format!r}; known: {sorted(PARSERS)}")
    _check(
        args.reward_source in REWARD_SOURCES,
        f"unknown reward source {args.reward_source!r}; known: {sorted(REWARD_SOURCES)}",
    )
    ts = args.tool_server
    _check(ts in ("inprocess", "local") or ts.startswith(("http://", "https://")),
           f"--tool-server must be inprocess, local or an http(s) URL, got {ts!r}")  # fmt: skip
    _check(
        args.max_turns >= 1 and args.max_tokens_per_turn >= 1,
        "--max-turns and --max-tokens-per-turn must be >= 1",
    )
    _check(
        args.max_response_tokens >= args.max_tokens_per_turn,
        "--max-response-tokens must be >= --max-tokens-per-turn",
    )
    _check(args.temperature is None or args.temperature >= 0, "--temperature must be >= 0")
    _check(args.width >= 1 and args.max_calls >= 1, "--width and --max-calls must be >= 1")
    _check(args.threads >= 0, "--threads must be >= 0")
    if args.reward_source != "rule":  # a judge without an endpoint fails here, not after decoding
        from steprl.config import RewardConfig
        from steprl.reward_sources import RewardPipeline, reward_env

        rcfg = RewardConfig(source=args.reward_source, alpha=args.alpha)
        try:
            RewardPipeline(rcfg, reward_env(rcfg)).close()
        except (ValueError, KeyError, OSError) as e:
            raise UserError(f"reward source {args.reward_source!r}: {e}") from e
    try:
        suite.tasks(args.split, args.num_tasks, args.seed)
    except ValueError as e:
        raise UserError(f"suite {args.suite!r}: {e}") from e
    temperature = (
        args.temperature if args.temperature is not None else (1.0 if args.decoder == "dfsdt" else 0.0)
    )
    return EvalSpec(
        model_path=resolve_checkpoint(args.model),
        model=args.model,
        suite=args.suite,
        split=args.split,
        num_tasks=args.num_tasks,
        seed=args.seed,
        engine=args.engine,
        tool_format=args.tool_format,
        tool_server=args.tool_server,
        decoder=args.decoder,
        temperature=temperature,
        budget=EpisodeBudget(args.max_turns, args.max_response_tokens, args.max_tokens_per_turn),
        dfsdt=DFSDTConfig(args.width, args.max_calls, require_grounding=not args.no_grounding),
        reward_source=args.reward_source,
        alpha=args.alpha,
        dtype=args.dtype,
        max_model_len=args.max_model_len,
        gpu_memory_utilization=args.gpu_memory_utilization,
        threads=args.threads,
    )


def default_output(spec: Any) -> Path:
    """Under the run when the model is a run's checkpoint (``<run>/eval/<tag>-...``), else ``runs/eval/``."""
    from steprl.main import REPO

    name = f"{spec.suite}-{spec.split}-{spec.decoder}"
    path = Path(spec.model_path)
    if path.name == "actor" and path.parent.parent.name == "checkpoints":
        return path.parent.parent.parent / "eval" / f"{path.parent.name}-{name}.json"
    tag = "embedded" if spec.model == "embedded" else path.name
    return REPO / "runs" / "eval" / f"{tag}-{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"


def _write(path: Path, data: dict[str, Any], text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    path.with_suffix(".txt").write_text(text)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from steprl.evaluation.report import compare_table, render, result_tables

    try:
        args = build_parser().parse_args(argv)
        if args.compare:
            from steprl.evaluation.compare import compare

            try:
                cmp = compare(*args.compare, args.judge, args.judge_url, args.judge_model)
            except ValueError as e:
                raise UserError(str(e)) from e
            text = render([compare_table(cmp)])
            if args.output:
                _write(Path(args.output), cmp, text)
            return 0
        spec = make_spec(args)
    except UserError as e:
        print(f"steprl.eval: {e}", file=sys.stderr)
        return 2
    from steprl.evaluation.runner import evaluate

    result = evaluate(spec)
    text = render(result_tables(result))
    out = Path(args.output) if args.output else default_output(spec)
    _write(out, result, text)
    print(f"results: {out} (table: {out.with_suffix('.txt')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
