"""benchmarks/results_table.py --suite: the suite's overrides are a valid config, and the report of a
suite lands in its own section of the doc (by hand on two small run directories)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import results_table as rt  # noqa: E402

from steprl.main import load_config  # noqa: E402


@pytest.mark.parametrize("suite", sorted(rt.SUITES))
def test_suite_overrides_make_a_valid_config(suite: str):
    setup = rt.SUITES[suite]
    for recipe in ("sft", "steptool"):
        cfg, _ = load_config([f"recipe={recipe}", *setup.overrides])
        assert cfg.data.suite == suite
        assert (cfg.rollout.max_turns, cfg.rollout.max_response_tokens, cfg.rollout.max_tokens_per_turn) == (
            setup.budget
        )
        # every held-out pass rate has a binomial standard error of at most ~0.02 (relay) at p = 0.5
        episodes = cfg.data.test_tasks * cfg.rollout.eval_samples
        if suite == "relay":
            assert 0.5 / episodes**0.5 <= 0.0201 and setup.eval_tasks >= 625


def _run(path: Path, recipe: str, seed: int, before: float | None, after: float, curve: list[float], fits=()):
    path.mkdir(parents=True)
    summary = {
        "status": "completed",
        "seconds": 60.0,
        "pass_rate_after_rl": after,
        "greedy_pass_rate_after_rl": after,
        "tool_success_after_rl": 0.7,
        "pass_rate_before_rl": before,
        "greedy_pass_rate_before_rl": before,
        "tool_success_before_rl": 0.6,
    }
    (path / "summary.json").write_text(json.dumps(summary))
    cfg, yaml_text = load_config([f"recipe={recipe}", *rt.SUITES["relay"].overrides, f"trainer.seed={seed}"])
    (path / "config.yaml").write_text(yaml_text)
    lines = [json.dumps({"step": i + 1, "train/pass_rate": v}) for i, v in enumerate(curve)]
    lines += [json.dumps({"step": i + 1, "critic_explained_variance": v}) for i, v in enumerate(fits)]
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def _eval_rows(successes: list[list[float]]) -> dict:
    rows = []
    for s in successes:
        steps = [{"is_final": False, "succ_calling": x, "contribution": 1.0} for x in s]
        rows.append({"pass_score": 1.0, "end_reason": "answer", "steps": steps, "tool_success": s})
    return {"rows": rows}


def test_relay_report_has_its_own_section_and_call_index_table(tmp_path: Path):
    out = tmp_path / "runs"
    _run(out / "steptool" / "seed0", "steptool", 0, 0.30, 0.50, [0.3, 0.4], fits=[0.2, 0.6])
    _run(out / "ppo_final" / "seed0", "ppo_final", 0, None, 0.40, [0.3, 0.3])
    analysis = out / "analysis"
    analysis.mkdir()
    # SFT: 1st call 2/3, 2nd call 1/2, 3rd 0/1; StepTool: 1st 1/2, 2nd 1/1
    (analysis / "sft-seed0.json").write_text(json.dumps(_eval_rows([[1, 0, 0], [1, 1], [0]])))
    (analysis / "steptool-seed0.json").write_text(json.dumps(_eval_rows([[1, 1], [0]])))
    doc = tmp_path / "RESULTS.md"
    doc.write_text("# Results\n\n" + rt.BEGIN + "\natlas table\n" + rt.END + "\n\nReading.\n")
    argv = ["--suite", "relay", "--report-only", "--seeds", "0", "--out", str(out), "--doc", str(doc)]
    assert rt.main([*argv, "--plot", str(tmp_path / "curves.png")]) == 0
    text = doc.read_text()
    begin, end = rt.markers("relay")
    assert "atlas table" in text and "Reading." in text  # the atlas block and the prose are kept
    block = text.split(begin, 1)[1].split(end, 1)[0]
    assert "--suite relay" in block and "held-out pass (T=1, 1 x 640)" in block
    assert "| SFT (the shared start) | 0.667 (3) | 0.500 (2) | 0.000 (1) |" in block
    assert "| StepTool | 0.500 (2) | 1.000 (1) | - |" in block
    assert "| StepTool | `steptool` | 0.500 ± 0.000 |" in block
    assert "| StepTool | 0.400 ± 0.000 | 1 |" in block  # critic fit: mean of 0.2 and 0.6; PPO logged none
    assert "| PPO (final reward) | 0." not in block.split("Critic fit", 1)[1]
    # a second report replaces the block instead of appending another
    assert rt.main([*argv, "--plot", str(tmp_path / "curves.png")]) == 0
    assert doc.read_text().count(begin) == 1


def test_failure_kinds_and_give_ups_are_counted_by_hand():
    def row(score, end, answer, kind, calls):
        steps = [{"is_final": False, "succ_calling": ok, "contribution": c} for ok, c in calls]
        task = {"meta": {"kind": kind}}
        return {"pass_score": score, "end_reason": end, "final_answer": answer, "task": task, "steps": steps}

    give_up = "I give up: the tools cannot answer this."
    rows = [
        row(1.0, "answer", "42", "chain", [(1, 1), (1, 1)]),  # solved
        row(0.0, "answer", give_up, "chain", [(0, 0)]),  # a failed call, then gave up on a solvable task
        row(0.0, "answer", "7", "chain", [(1, 0), (1, 1)]),  # a wasted step
        row(0.0, "answer", "7", "chain", [(1, 1)]),  # every step contributed: the answer slipped
        row(0.0, "max_turns", None, "chain", [(1, 1), (1, 1), (1, 0)]),  # no answer
        row(1.0, "answer", give_up, "missing_user", []),  # the right give-up
        row(0.0, "answer", "3", "archive", [(1, 0)]),  # an unsolvable task answered anyway
    ]
    m = rt.classify(rows)
    assert m["episodes"] == 7
    assert (m["solved"], m["failed_call"], m["wasted_step"]) == (2 / 7, 1 / 7, 2 / 7)
    assert (m["answer_slip"], m["no_answer"]) == (1 / 7, 1 / 7)
    assert m["wasted_steps"] == 4 / 7  # steps with contribution <= 0
    assert m["steps"] == 10 / 7
    assert m["give_up_solvable"] == 1 / 5 and m["give_up_unsolvable"] == 1 / 2


def test_calibration_block_states_numbers_and_targets(tmp_path: Path):
    cfg, _ = load_config(["recipe=sft", *rt.SUITES["relay"].overrides])
    summary = {"tool_success_after_rl": 0.712, "greedy_pass_rate_after_rl": 0.65, "pass_rate_after_rl": 0.41}
    block, on_target = rt.render_calibration(summary, cfg, "relay", "cmd")
    assert not on_target  # greedy 0.65 > 0.6
    assert "| tool-call success (held-out, T=1, 640 episodes) | 0.712 | 0.6-0.8: met |" in block
    assert "| greedy pass rate (640 tasks) | 0.650 | <= 0.6: NOT met |" in block
    assert (
        "transient_rate=0.1, rate_limit_rate=0.2" in block
    )  # the suite parameters are recorded with the numbers
    _, on_target = rt.render_calibration({**summary, "greedy_pass_rate_after_rl": 0.5}, cfg, "relay", "cmd")
    assert on_target
    doc = tmp_path / "suites.md"
    doc.write_text(
        "intro\n"
        + rt.CAL_BEGIN.format(suite="relay")
        + "\nold\n"
        + rt.CAL_END.format(suite="relay")
        + "\nend\n"
    )
    rt.write_doc(doc, block, bounds=(rt.CAL_BEGIN.format(suite="relay"), rt.CAL_END.format(suite="relay")))
    text = doc.read_text()
    assert "old" not in text and "0.712" in text and text.startswith("intro") and text.endswith("end\n")
