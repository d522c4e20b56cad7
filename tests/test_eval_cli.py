"""``python -m steprl.eval``: the training config groups plus ``eval.*`` (--help, --cfg job, misspelled keys,
-m), the numbers of the argparse command line it replaced, bad input, and win rates of saved results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from steprl.eval import main as eval_main
from steprl.evaluation.compare import compare
from steprl.evaluation.metrics import win_rate

REPO = Path(__file__).resolve().parents[1]


def _eval_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-m", "steprl.eval", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env=env)  # fmt: skip


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail the test if anything reaches the decoding (a model load) after the checks."""

    def refuse(spec):
        raise AssertionError(f"decoding started for {spec}")

    monkeypatch.setattr("steprl.evaluation.runner.evaluate", refuse)


# ---- the same config as training: --help, --cfg job, misspelled keys ---------------------------------


def test_help_lists_recipes_groups_and_the_eval_section(tmp_path):
    proc = _eval_cli("--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for needle in ("python -m steprl.eval [recipe=<name>]", "== Recipes", "rollout: hf, vllm", "--multirun",
                   "eval:\n  decoder: cot", "max_calls: 12", "max_tokens_per_turn: 48", "--cfg job"):  # fmt: skip
        assert needle in proc.stdout, needle
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_cfg_job_is_the_training_config_plus_the_eval_section(tmp_path):
    from steprl.main import load_config

    proc = _eval_cli("--cfg", "job", "rollout=hf", "data.suite=bank", "eval.decoder=dfsdt", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    cfg = yaml.safe_load(proc.stdout)
    assert cfg.pop("eval")["decoder"] == "dfsdt" and "hydra" not in cfg
    _, training = load_config(["rollout=hf", "data.suite=bank"])  # what steprl.main would train with
    assert cfg == yaml.safe_load(training)  # same keys, same defaults, same recipe composition
    assert cfg["rollout"]["engine"] == "hf" and cfg["data"]["suite"] == "bank"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["+eval.num_task=3"], "eval.num_task is not a config key; did you mean eval.num_tasks?"),
        (["--cfg", "job", "+eval.widht=3"], "eval.widht is not a config key; did you mean eval.width?"),
        (["+rollout.enigne=hf"], "rollout.enigne is not a config key; did you mean rollout.engine?"),
        (["eval.num_task=3"], "Could not override 'eval.num_task'"),
        (["-m", "eval.decoder=cot,dfsdt", "+data.sute=bank"], "data.sute is not a config key"),
        (["rollout.max_turns=0"], "rollout.max_turns must be >= 1"),
        (["--num-tasks", "3"], "--num-tasks is now eval.num_tasks=<value>"),
    ],
)
def test_a_misspelled_key_is_refused_in_one_line_and_nothing_runs(tmp_path, args, needle):
    proc = _eval_cli(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_training_refuses_the_eval_section():
    from steprl.main import UserError, load_config

    with pytest.raises(UserError, match="eval"):
        load_config(["eval.decoder=dfsdt"])
    with pytest.raises(UserError, match="eval.decoder is not a config key"):
        load_config(["+eval.decoder=dfsdt"])


# ---- the numbers of the argparse command line it replaced --------------------------------------------

# Recorded with the argparse steprl.eval (commit 6134b08) on the embedded model, e.g.
# `python -m steprl.eval --model embedded --engine hf --num-tasks 4 --threads 1 --decoder dfsdt --width 2
# --max-calls 6 --seed 1`: the old flags, the new overrides, the EvalSpec and the aggregate it produced.
_COMMON = ["model.path=embedded", "rollout.engine=hf", "eval.num_tasks=4", "eval.threads=1"]
_OLD_META = {"model": "embedded", "split": "test", "num_tasks": 4, "engine": "hf", "tool_format": "hermes",
             "tool_server": "inprocess", "reward_source": "rule", "alpha": 1.0, "dtype": "float32",
             "max_model_len": 1024, "gpu_memory_utilization": 0.3, "threads": 1}  # fmt: skip
_DEFAULT_BUDGET = {
    "max_turns": 6,
    "max_response_tokens": 320,
    "max_tokens_per_turn": 48,
    "max_prompt_tokens": None,
}
_DFSDT_DEFAULT = {"width": 2, "max_calls": 12, "require_grounding": True}
_RECORDED = {
    "cot": (  # (no further flags)
        [],
        {"suite": "atlas", "seed": 0, "decoder": "cot", "temperature": 0.0, "budget": _DEFAULT_BUDGET,
         "dfsdt": _DFSDT_DEFAULT},
        {"end_reasons": {"answer": 4}, "labels": {"solved": 4}, "mean_generated_tokens": 88.0,
         "mean_response_tokens": 133.5, "mean_steps": 4.25, "mean_tool_calls": 3.25, "num_tasks": 4,
         "pass_rate": 1.0, "tool_success_rate": 1.0,
         "tool_success_by_index": [{"count": 4, "index": 1, "success_rate": 1.0},
                                   {"count": 4, "index": 2, "success_rate": 1.0},
                                   {"count": 4, "index": 3, "success_rate": 1.0},
                                   {"count": 1, "index": 4, "success_rate": 1.0}]},
    ),
    "dfsdt": (  # --decoder dfsdt --width 2 --max-calls 6 --seed 1
        ["eval.decoder=dfsdt", "eval.width=2", "eval.max_calls=6", "data.seed=1"],
        {"suite": "atlas", "seed": 1, "decoder": "dfsdt", "temperature": 1.0, "budget": _DEFAULT_BUDGET,
         "dfsdt": {"width": 2, "max_calls": 6, "require_grounding": True}},
        {"end_reasons": {"answer": 4}, "labels": {"solved": 3, "unsolved": 1}, "mean_generated_tokens": 68.0,
         "mean_response_tokens": 103.0, "mean_steps": 3.5, "mean_tool_calls": 2.5, "num_tasks": 4,
         "pass_rate": 0.75, "tool_success_rate": 1.0,
         "search": {"accepted_share": 1.0, "backtracks": 0.0, "generated_tokens": 68.0, "model_calls": 3.5,
                    "replayed_calls": 0.0, "tool_calls": 2.5},
         "tool_success_by_index": [{"count": 4, "index": 1, "success_rate": 1.0},
                                   {"count": 4, "index": 2, "success_rate": 1.0},
                                   {"count": 2, "index": 3, "success_rate": 1.0}]},
    ),
    "bank_sampled": (  # --suite bank --temperature 1 --seed 3 --max-turns 3 --max-tokens-per-turn 40
        # --max-response-tokens 200
        ["data.suite=bank", "eval.temperature=1", "data.seed=3", "rollout.max_turns=3",
         "rollout.max_tokens_per_turn=40", "rollout.max_response_tokens=200"],
        {"suite": "bank", "seed": 3, "decoder": "cot", "temperature": 1.0, "dfsdt": _DFSDT_DEFAULT,
         "budget": {"max_turns": 3, "max_response_tokens": 200, "max_tokens_per_turn": 40, "max_prompt_tokens": None}},
        {"end_reasons": {"answer": 2, "max_tokens": 1, "max_turns": 1}, "labels": {"unsolved": 4},
         "mean_generated_tokens": 23.5, "mean_response_tokens": 55.0, "mean_steps": 1.75,
         "mean_tool_calls": 1.25, "num_tasks": 4, "pass_rate": 0.0, "tool_success_rate": 0.0,
         "tool_success_by_index": [{"count": 3, "index": 1, "success_rate": 0.0},
                                   {"count": 1, "index": 2, "success_rate": 0.0},
                                   {"count": 1, "index": 3, "success_rate": 0.0}]},
    ),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("case", list(_RECORDED))
def test_the_same_numbers_as_the_argparse_command_line(tmp_path, tiny_model_path, case):
    overrides, meta, aggregate = _RECORDED[case]
    out = tmp_path / "r.json"
    assert eval_main([*_COMMON, *overrides, f"eval.output={out}"]) == 0
    got = json.loads(out.read_text())
    assert {k: got["meta"][k] for k in {**_OLD_META, **meta}} == {**_OLD_META, **meta}
    if _weights_sha(tiny_model_path) == _RECORDED_WEIGHTS:  # the weights the old command line ran
        assert got["aggregate"] == aggregate  # means over 4 tasks: exact in binary floating point
    else:  # a rebuilt embedded model (another CPU or torch): the same spec straight through the runner
        assert got["aggregate"] == _direct_evaluation(got["meta"], tiny_model_path)["aggregate"]


# sha256 prefix of the embedded model's weights when the aggregates above were recorded
_RECORDED_WEIGHTS = "c39af5f5672407f2"


def _weights_sha(model_dir: str) -> str:
    import hashlib

    return hashlib.sha256((Path(model_dir) / "model.safetensors").read_bytes()).hexdigest()[:16]


def _direct_evaluation(meta: dict, model_dir: str) -> dict:
    """``steprl.evaluation.runner.evaluate`` on an ``EvalSpec`` rebuilt from the recorded meta, no CLI."""
    from dataclasses import fields

    from steprl.episode import EpisodeBudget
    from steprl.evaluation.dfsdt import DFSDTConfig
    from steprl.evaluation.runner import EvalSpec, evaluate

    kwargs = {f.name: meta[f.name] for f in fields(EvalSpec) if f.name in meta}
    kwargs.update(
        model_path=model_dir, budget=EpisodeBudget(**meta["budget"]), dfsdt=DFSDTConfig(**meta["dfsdt"])
    )
    return evaluate(EvalSpec(**kwargs))


# ---- every mode end to end: a subprocess with a tool server, DFSDT, compare, a run directory, a sweep --


@pytest.mark.slow
def test_cli_end_to_end_then_compare(tmp_path, tiny_model_path, capsys):
    out_a = tmp_path / "a.json"
    small = ["rollout.engine=hf", "eval.num_tasks=3", "rollout.max_turns=2", "rollout.max_tokens_per_turn=12",
             "rollout.max_response_tokens=48", "eval.threads=1"]  # fmt: skip
    proc = _eval_cli("model.path=embedded", *small, "rollout.tool_server=local", f"eval.output={out_a}",
                     cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "pass rate" in proc.stdout and "tool-call success by index" in proc.stdout
    res = json.loads(out_a.read_text())
    assert res["meta"]["engine"] == "hf" and res["meta"]["decoder"] == "cot" and len(res["rows"]) == 3
    assert res["meta"]["tool_server"] == "local"  # a FastAPI server in its own process, stopped at the end
    rows = res["rows"]
    assert res["aggregate"]["pass_rate"] == pytest.approx(sum(r["pass_score"] for r in rows) / 3)
    assert res["aggregate"]["end_reasons"] == {
        k: sum(r["end_reason"] == k for r in rows) for k in {r["end_reason"] for r in rows}
    }
    assert "pass rate" in out_a.with_suffix(".txt").read_text()

    # DFSDT in-process through the same entry point, then the win rate of one over the other
    out_b = tmp_path / "b.json"
    assert eval_main([f"model.path={tiny_model_path}", *small, "eval.decoder=dfsdt", "eval.width=2",
                      "eval.max_calls=3", f"eval.output={out_b}"]) == 0  # fmt: skip
    b = json.loads(out_b.read_text())
    assert all(r["search"]["model_calls"] <= 3 for r in b["rows"]) and "search" in b["aggregate"]
    capsys.readouterr()
    assert (
        eval_main([f"eval.compare=[{out_a},{out_b}]", "eval.judge=off", f"eval.output={tmp_path / 'c.json'}"])
        == 0
    )
    assert "win rate of A over B" in capsys.readouterr().out
    cmp = json.loads((tmp_path / "c.json").read_text())
    w = win_rate(
        {r["task_id"]: r["pass_score"] for r in rows}, {r["task_id"]: r["pass_score"] for r in b["rows"]}
    )
    assert cmp["pass"] == w.to_dict() and cmp["judge"] is None


@pytest.mark.slow
def test_a_run_directory_means_its_final_actor_and_a_sweep_writes_one_file_per_job(tmp_path, tiny_model_path):
    import shutil

    from steprl.eval import default_output, resolve_checkpoint
    from steprl.evaluation.runner import EvalSpec

    run = tmp_path / "run"
    actor = run / "checkpoints" / "final" / "actor"
    shutil.copytree(tiny_model_path, actor)  # a real model directory (tokenizer and template are checked)
    path = resolve_checkpoint(str(run))
    assert path == str(actor.resolve())
    spec = EvalSpec(model_path=path, model=str(run), suite="atlas", split="test", decoder="dfsdt")
    assert default_output(spec) == run / "eval" / "final-atlas-test-dfsdt.json"
    assert default_output(spec, job=1) == run / "eval" / "final-atlas-test-dfsdt-1.json"

    # -m: every job checked first, then run in turn, each into its own file under the run
    tiny = ["rollout.engine=hf", "eval.num_tasks=1", "rollout.max_turns=1", "rollout.max_tokens_per_turn=8",
            "rollout.max_response_tokens=8", "eval.threads=1", "eval.max_calls=1"]  # fmt: skip
    assert eval_main(["-m", f"model.path={run}", *tiny, "eval.decoder=cot,dfsdt"]) == 0
    written = {p.name: json.loads(p.read_text())["meta"]["decoder"] for p in (run / "eval").glob("*.json")}
    assert written == {"final-atlas-test-cot-0.json": "cot", "final-atlas-test-dfsdt-1.json": "dfsdt"}


# ---- bad input: one line, exit code 2, before any model is loaded ------------------------------------


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, no_decoding):
    a = _results(tmp_path / "a.json", [1.0])
    other = _results(tmp_path / "o.json", [1.0], questions={0: "another question"})
    (tmp_path / "bad.json").write_text("{not json")
    cases = [
        ([f"model.path={tmp_path / 'missing'}"], "does not exist"),
        ([f"model.path={tmp_path}"], "no config.json"),
        (["data.suite=nope"], "unknown task suite 'nope'"),
        (["eval.split=dev"], "eval.split must be train or test"),
        (["eval.decoder=beam"], "eval.decoder must be one of ['cot', 'dfsdt']"),
        (["rollout.engine=nope"], "rollout.engine must be one of"),
        (["rollout.tool_format=nope"], "rollout.tool_format must be one of"),
        (["reward.source=nope"], "reward.source must be one of"),
        (["eval.num_tasks=0"], "eval.num_tasks must be >= 1"),
        (["eval.width=0"], "eval.width must be >= 1"),
        (["eval.max_calls=0"], "eval.max_calls must be >= 1"),
        (["eval.temperature=-1"], "eval.temperature must be >= 0"),
        (["eval.judge=maybe"], "eval.judge must be auto, on or off"),
        (["--model", "embedded"], "--model is now model.path=<value>"),
        (["--no-grounding"], "--no-grounding is now eval.grounding=false"),
        (["--verbose"], "unknown flag '--verbose'"),
        (["-m", "eval.decoder=cot,dfsdt", f"eval.output={tmp_path / 'x.json'}"], "would both write"),
        ([f"eval.compare=[{a}]"], "eval.compare must name two results files"),
        ([f"eval.compare=[{a},{tmp_path / 'none.json'}]"], "does not exist"),
        ([f"eval.compare=[{a},{tmp_path / 'bad.json'}]"], "is not JSON"),
        ([f"eval.compare=[{a},{other}]"], "different question"),
    ]
    for argv, message in cases:
        assert eval_main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "bad.json", "o.json"]  # no output


# ---- win rates of saved results --------------------------------------------------------------------


def _results(path, scores, questions=None, answers=None):
    """A results file as steprl.eval writes it (the fields compare reads): one answer step per task."""
    rows = []
    for i, s in enumerate(scores):
        q = (questions or {}).get(i, f"question {i}")
        ans = (answers or {}).get(i, str(i))
        rows.append({"task_id": f"t{i}", "pass_score": s, "final_answer": ans, "end_reason": "answer",
                     "task": {"task_id": f"t{i}", "suite": "atlas", "question": q, "answer": "1", "meta": {}},
                     "steps": [{"text": ans, "is_final": True}], "final_state": {}})  # fmt: skip
    path.write_text(json.dumps({"meta": {}, "aggregate": {}, "rows": rows}))
    return path


def test_compare_uses_the_judge_only_when_registered_and_configured(tmp_path, monkeypatch, capsys):
    from steprl.reward_sources import REWARD_SOURCES

    a = _results(tmp_path / "a.json", [1.0, 0.0, 0.5, 1.0])
    b = _results(tmp_path / "b.json", [0.0, 0.0, 1.0, 1.0], answers={0: "2", 2: "3"})
    monkeypatch.delenv("STEPRL_JUDGE_URL", raising=False)
    monkeypatch.delenv("STEPRL_JUDGE_MODEL", raising=False)
    # the built-in judge without an endpoint: auto skips it (and says why), on refuses
    plain = compare(a, b)
    assert plain["judge"] is None and "not configured" in plain["judge_note"]
    assert plain["pass"]["win_rate"] == pytest.approx((1 + 2 * 0.5) / 4)  # t0 win, t1 tie, t2 loss, t3 tie
    assert eval_main([f"eval.compare=[{a},{b}]", "eval.judge=on"]) == 2
    assert "not configured" in capsys.readouterr().err
    monkeypatch.delitem(REWARD_SOURCES, "judge", raising=False)
    assert "not registered" in compare(a, b)["judge_note"]

    def judge(traj, task):  # a stand-in judge: an even number in the answer is solved
        return [], [], float(int(traj.final_answer) % 2 == 0)

    monkeypatch.setitem(REWARD_SOURCES, "judge", judge)
    judged = compare(a, b)
    # A answers 0 1 2 3 -> judged 1 0 1 0; B answers 2 1 3 3 -> 1 0 0 0: tie, tie, win, tie
    assert judged["judge"]["wins"] == 1 and judged["judge"]["ties"] == 3
    assert judged["judge"]["win_rate"] == pytest.approx((1 + 3 * 0.5) / 4)
    assert judged["judge"]["pass_rate_a"] == pytest.approx(0.5) and judged["judge"]["pass_rate_b"] == 0.25
    assert compare(a, b, judge="off")["judge"] is None


def test_compare_through_the_real_judge_source_on_a_loopback_endpoint(tmp_path):
    """The built-in judge source against the fake OpenAI-compatible judge: the win rate is the one of the
    judge's IsSolved computed independently through the reward pipeline."""
    from steprl.config import RewardConfig
    from steprl.evaluation.runner import row_trajectory
    from steprl.reward_sources import RewardPipeline
    from steprl.reward_sources.fake_judge import start_fake_judge

    a = _results(tmp_path / "a.json", [1.0, 0.0, 0.5, 1.0, 0.0, 1.0])
    b = _results(tmp_path / "b.json", [0.0] * 6, answers={i: str(10 + i) for i in range(6)})
    with start_fake_judge() as server:
        got = compare(a, b, "on", server.url, "fake-judge")
        pipe = RewardPipeline(RewardConfig(source="judge", judge_url=server.url, judge_model="fake-judge"))
        solved = {}
        for name, path in (("a", a), ("b", b)):
            pairs = [row_trajectory(r) for r in json.loads(path.read_text())["rows"]]
            trajs = pipe.score([t for t, _ in pairs], [task for _, task in pairs])
            solved[name] = {t.task_id: t.is_solved for t in trajs}
    assert got["judge"] == {**win_rate(solved["a"], solved["b"]).to_dict(),
                            "pass_rate_a": pytest.approx(sum(solved["a"].values()) / 6),
                            "pass_rate_b": pytest.approx(sum(solved["b"].values()) / 6)}  # fmt: skip
    assert server.state.requests > 0
