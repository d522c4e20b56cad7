"""The Hydra-native command line: --help, --cfg job, -m sweeps, hydra.run.dir, unknown keys, wandb, curves.

Nothing here trains: the subprocess tests stop at --help/--cfg or at a validation failure, and the
sweep/run-dir tests run ``steprl.main.main`` in-process with ``train`` and ``init_ray`` replaced by a
recorder (what they check is the CLI's plumbing: which job runs where, what is written, in what order).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import steprl.main as cli
from steprl.main import UserError, load_config

REPO = Path(__file__).resolve().parents[1]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run(
        [sys.executable, "-m", "steprl.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=env,
    )


@pytest.fixture
def model_dir(tiny_model_path: str) -> Path:
    """A real model directory: it passes the model-path check (tokenizer, template); the recorder never
    trains it."""
    return Path(tiny_model_path)


@pytest.fixture
def recorder(monkeypatch):
    """Replace ``train``/``init_ray``: record each job (run dir, config) and write a summary as train does."""
    calls: list[dict] = []

    def fake_train(cfg, config_yaml, model_path, run_dir):
        assert (run_dir / "config.yaml").read_text() == config_yaml  # written before train, after checks
        calls.append({"run_dir": Path(run_dir), "seed": cfg.trainer.seed, "cfg": cfg})
        (run_dir / "summary.json").write_text(json.dumps({"status": "completed"}))
        return {"status": "completed"}

    monkeypatch.setattr(cli, "train", fake_train)
    monkeypatch.setattr(cli, "init_ray", lambda cfg: None)
    return calls


# ---- --help and --cfg (subprocess: what a user types) ----------------------------------------------


def test_help_lists_recipes_groups_flags_and_config(tmp_path):
    proc = _cli("--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for needle in ("== Recipes", "steptool_compat", "algorithm: final_reward", "rollout: hf, vllm",
                   "--multirun", "total_iterations: 12", "--cfg job"):  # fmt: skip
        assert needle in out, needle
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_cfg_job_prints_the_resolved_config_without_running(tmp_path):
    run_dir = tmp_path / "run"
    proc = _cli("--cfg", "job", "recipe=grpo", "trainer.total_iterations=3", f"trainer.run_dir={run_dir}",
                cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["recipe"] == "grpo" and cfg["trainer"]["total_iterations"] == 3
    assert cfg["algorithm"]["estimator"] == "grpo" and "hydra" not in cfg
    assert not run_dir.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (
            ["+trainer.total_iteratons=1"],
            "trainer.total_iteratons is not a config key; did you mean trainer.total_iterations?",
        ),  # fmt: skip
        (["--cfg", "job", "+trainer.total_iteratons=1"], "trainer.total_iteratons"),
        (["--cfg", "job", "algorithm.gamma=2"], "algorithm.gamma"),
        (["-m", "trainer.seed=0,1", "+algorithm.gama=0.5"], "algorithm.gama"),
        (
            ["-m", "algorithm.gamma=0.5,1.5", "model.path=/nonexistent"],
            "algorithm.gamma must be in [0, 1], got 1.5",
        ),
        (["-m", "trainer.seed=0,1", "trainer.run_dir=x"], "trainer.run_dir names one directory"),
        (["trainer.run_dir=a", "hydra.run.dir=b"], "differ"),
        (["recipe=nope"], "unknown recipe 'nope'"),
    ],
)
def test_bad_config_is_one_line_exit_2_and_writes_nothing(tmp_path, args, needle):
    proc = _cli(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert list(tmp_path.iterdir()) == []  # no run dir, no sweep dir, no outputs/


@pytest.mark.parametrize(
    "override",
    ["+trainer.total_iteratons=1", "+nosuchsection.x=1", "+rollout.enigne=hf", "+reward.judge.url=x"],
)
def test_added_keys_outside_the_schema_are_refused(override):
    """Hydra's ``+key=value`` adds a key even to a structured config; OmegaConf.to_object then drops
    it silently. Before: accepted, written into config.yaml and ignored."""
    with pytest.raises(UserError, match="is not a config key") as err:
        load_config([override])
    assert override.lstrip("+").split("=")[0].rsplit(".", 1)[0] in str(err.value)


# ---- -m sweeps and hydra.run.dir (in-process, train replaced) -------------------------------------


def test_multirun_runs_each_job_in_turn_in_its_own_run_dir(tmp_path, model_dir, recorder, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "sweep"
    rc = cli.main(["-m", "trainer.seed=0,1,2", f"model.path={model_dir}", f"hydra.sweep.dir={sweep}"])
    assert rc == 0
    assert [c["seed"] for c in recorder] == [0, 1, 2]  # sequential, in order
    assert [c["run_dir"] for c in recorder] == [sweep / "0", sweep / "1", sweep / "2"]
    for i, c in enumerate(recorder):
        assert yaml.safe_load((c["run_dir"] / "config.yaml").read_text())["trainer"]["seed"] == i
        assert sorted(p.name for p in c["run_dir"].iterdir()) == ["config.yaml", "summary.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep"]  # no outputs/, no runs/


def test_hydra_run_dir_is_the_run_dir(tmp_path, model_dir, recorder, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main([f"model.path={model_dir}", "hydra.run.dir=h/${recipe}"]) == 0
    assert recorder[0]["run_dir"] == Path("h/steptool") and (tmp_path / "h/steptool/config.yaml").is_file()
    assert cli.main([f"model.path={model_dir}", f"trainer.run_dir={tmp_path / 't'}"]) == 0
    assert recorder[1]["run_dir"] == tmp_path / "t"
    assert cli.main([f"model.path={model_dir}", "trainer.seed=5"]) == 0  # default: runs/<recipe>-<time>
    assert recorder[2]["run_dir"].parent == Path("runs") and recorder[2]["run_dir"].name.startswith(
        "steptool-"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h", "runs", "t"]  # Hydra made no other


# ---- wandb gets the resolved config; curves on separate axes ---------------------------------------


def test_wandb_receives_the_resolved_config(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from steprl.logger import MetricsLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    _, config_yaml = load_config(["recipe=grpo", "trainer.total_iterations=7"])
    (tmp_path / "config.yaml").write_text(config_yaml)  # what steprl.main writes before training
    log = MetricsLogger(tmp_path, ["wandb"])
    try:
        assert log.wandb.config["trainer"]["total_iterations"] == 7
        assert log.wandb.config["algorithm"]["estimator"] == "grpo"
        log.log(1, {"train/reward": 0.5})
    finally:
        log.close()
    # the offline run's transaction log (what `wandb sync` uploads) holds the config record
    logs = list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(logs) == 1
    deadline = time.monotonic() + 30  # wandb's service process may still be flushing the file
    while True:
        data = logs[0].read_bytes()
        if (b'"total_iterations":7' in data and b'"estimator":"grpo"' in data) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert b'"total_iterations":7' in data and b'"estimator":"grpo"' in data


def test_curves_put_quantities_of_different_scales_on_separate_axes(tmp_path):
    from steprl.logger import curve_figure, plot_curves

    history = [{"step": i, "train/reward": 10.0 * i, "train/pass_rate": 0.1 * i} for i in range(1, 5)]
    history.append({"step": 4, "eval/pass_rate": 0.6})
    keys = ["train/reward", "train/pass_rate", "eval/pass_rate"]
    fig = curve_figure(history, keys, "t")
    axes = {ax.get_ylabel(): sorted(line.get_label() for line in ax.get_lines()) for ax in fig.axes}
    assert axes == {"reward": ["train/reward"], "pass_rate": ["eval/pass_rate", "train/pass_rate"]}
    rate_axis = next(ax for ax in fig.axes if ax.get_ylabel() == "pass_rate")
    assert rate_axis.get_ylim()[1] < 1.0  # not flattened by the reward's scale (40)
    assert plot_curves(history, tmp_path / "c.png", keys, "t").stat().st_size > 0
    assert plot_curves(history, tmp_path / "none.png", ["nothing/logged"], "t") is None
