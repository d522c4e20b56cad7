"""Smoke runs of the sft, rft, eto and trice recipes on the embedded model and tasks (transformers
engine, one actor rank, tiny sizes), on one shared local Ray cluster. The sft run goes through the
CLI (``python -m steprl.main recipe=sft``, joining the cluster); rft and eto start from its checkpoint;
the others call ``steprl.main.train`` in-process, as ``main`` does after its checks. The published-format
inputs are small fixtures written here in those formats."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from steprl.main import load_config, resolve_model, train

pytestmark = pytest.mark.slow

TINY = [
    "rollout.engine=hf",
    "actor.world_size=1",
    "data.train_tasks=32",
    "data.test_tasks=4",
    "trainer.tasks_per_iteration=2",
    "rollout.group_size=2",
    "rollout.max_turns=4",
    "sft.num_demos=16",
    "sft.batch_size=8",
    "trainer.logger=[jsonl]",
]


def _conversation(n_tool_steps: int, tool_role: str = "function") -> list[dict[str, str]]:
    conv = [
        {"from": "system", "value": "You can call get_weather and Finish."},
        {"from": "user", "value": "What is the weather in Paris?\nBegin!"},
    ]
    for k in range(n_tool_steps):
        conv.append(
            {"from": "assistant", "value": f"Thought: call {k}\nAction: get_weather\nAction Input: {{}}"}
        )
        conv.append({"from": tool_role, "value": '{"error": "", "response": "sunny"}'})
    conv.append(
        {
            "from": "assistant",
            "value": 'Action: Finish\nAction Input: {"return_type": "give_answer", "final_answer": "sunny"}',
        }
    )
    return conv


def _write_json(path: Path, tool_role: str) -> str:
    instances = [
        {"id": f"Step {2 * (n + 1)}: weather", "conversations": _conversation(n, tool_role)} for n in range(3)
    ]
    path.write_text(json.dumps({"q1": {"cnt": len(instances), "instances": instances}}), encoding="utf-8")
    return str(path)


def _write_eto_csv(path: Path) -> str:
    prompt = (
        "System: \nYou can call get_weather and Finish.\nUser: \nWhat is the weather in Paris?\nBegin!\n"
        'Assistant: \nAction: get_weather\nAction Input: {}\nFunction: {"response": "sunny"}\nAssistant: '
    )
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(["prompt", "chosen", "rejected"])
        for _ in range(3):
            w.writerow(
                [
                    prompt,
                    '\nAction: Finish\nAction Input: {"final_answer": "sunny"}',
                    "\nAction: get_weather\nAction Input: {}",
                ]
            )
    return str(path)


def _run(args: list[str], run_dir: Path) -> dict:
    """``steprl.main.main`` without its own ``ray.init``/``ray.shutdown`` (the module shares one cluster)."""
    cfg, config_yaml = load_config([*args, f"trainer.run_dir={run_dir}"])
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(config_yaml)
    return train(cfg, config_yaml, resolve_model(cfg.model.path), run_dir)


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _iterations(run_dir: Path) -> dict[int, dict]:
    """The per-iteration rows (the shared loop logs one per iteration, with time/iteration)."""
    return {r["step"]: r for r in _rows(run_dir) if "time/iteration" in r}


def _final_actor(run_dir: Path) -> Path:
    actor = run_dir / "checkpoints" / "final" / "actor"
    assert (actor / "model.safetensors").exists() and (actor / "tokenizer_config.json").exists()
    return actor


@pytest.fixture(scope="module")
def cluster(ray_cluster, tiny_model_path):
    import ray

    return ray.get_runtime_context().gcs_address


@pytest.fixture(scope="module")
def sft_run(cluster, tmp_path_factory) -> Path:
    """``python -m steprl.main recipe=sft`` (LoRA) on a published-format SFT file (last-turn loss),
    joining the module's cluster; the other recipes start from its checkpoint."""
    tmp = tmp_path_factory.mktemp("sft")
    run_dir = tmp / "run"
    proc = subprocess.run(
        [
            sys.executable, "-m", "steprl.main", "recipe=sft", *TINY, f"ray.address={cluster}",
            "data.format=steptool_sft_json", f"data.path={_write_json(tmp / 'sft.json', 'function')}",
            "sft.loss_on=last", "sft.epochs=2", "trainer.total_iterations=1", f"trainer.run_dir={run_dir}",
            "model.lora_rank=4",  # LoRA SFT; the checkpoint holds merged weights the others start from
        ],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "SFT cold start on 3 instances" in proc.stdout and "loss on last" in proc.stdout
    return run_dir


def test_sft_on_the_published_format(sft_run):
    summary = json.loads((sft_run / "summary.json").read_text())
    assert summary["status"] == "completed" and 0.0 <= summary["pass_rate_after_rl"] <= 1.0
    sft_rows = [r for r in _rows(sft_run) if "sft/step" in r]
    assert len(sft_rows) == 2 and all(r["sft/nll"] > 0 for r in sft_rows)  # 2 epochs x 1 batch
    assert _iterations(sft_run)[1]["sft/steps"] == 1.0  # the one SFT-epoch iteration
    from safetensors import safe_open

    with safe_open(str(_final_actor(sft_run) / "model.safetensors"), "pt") as f:
        names = list(f.keys())
    assert "model.embed_tokens.weight" in names and not any("lora" in n for n in names)  # merged


def test_rft_from_the_sft_checkpoint(sft_run, tmp_path):
    start = _final_actor(sft_run)
    rft_dir = tmp_path / "rft"
    summary = _run(
        [
            "recipe=rft", *TINY, f"model.path={start}", "sft.enabled=false", "trainer.total_iterations=2",
            "data.format=steptool_rft_json", f"data.path={_write_json(tmp_path / 'rft.json', 'tool')}",
            "sft.loss_on=last",
        ],
        rft_dir,
    )  # fmt: skip
    assert summary["status"] == "completed" and summary["model"] == str(start)
    its = _iterations(rft_dir)
    assert its[1]["rft/kept"] == 3.0 and its[1]["actor/sft_nll"] > 0  # the offline round: the file
    assert "train/pass_rate" in its[2] and its[2]["rft/kept"] <= 4  # sampled: 2 tasks x 2, solved kept
    assert not (rft_dir / "checkpoints" / "sft").exists()
    _final_actor(rft_dir)


def test_eto_from_the_sft_checkpoint_offline_pairs_then_rollout_pairs(sft_run, tmp_path):
    start = _final_actor(sft_run)
    run_dir = tmp_path / "eto"
    summary = _run(
        [
            "recipe=eto", *TINY, f"model.path={start}", "sft.enabled=false", "trainer.total_iterations=2",
            "data.format=steptool_eto_csv", f"data.path={_write_eto_csv(tmp_path / 'dpo.csv')}",
        ],
        run_dir,
    )  # fmt: skip
    assert summary["status"] == "completed" and summary["model"] == str(start)
    its = _iterations(run_dir)
    assert its[1]["eto/pairs"] == 3.0 and its[1]["eto/dropped_pairs"] == 0.0
    # the reference is the starting policy: before the first update the loss is log 2 (one step here)
    assert its[1]["actor/dpo_loss"] == pytest.approx(0.6931, abs=1e-3)
    assert "train/pass_rate" in its[2] and "eto/pairs" in its[2]
    _final_actor(run_dir)


def test_trice_ranks_candidates(cluster, tmp_path):
    run_dir = tmp_path / "trice"
    summary = _run(["recipe=trice", *TINY, "trainer.total_iterations=2"], run_dir)
    assert summary["status"] == "completed"
    its = _iterations(run_dir)
    for it in (1, 2):
        assert its[it]["actor/sft_nll"] > 0 and its[it]["actor/ranked_pairs"] >= 0
        assert 0.0 <= its[it]["trice/groups_with_ranking"] <= 1.0
    assert (run_dir / "checkpoints" / "sft" / "actor" / "model.safetensors").exists()  # stage 1 ran
    _final_actor(run_dir)
