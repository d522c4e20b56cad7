"""Checkpoints are whole or ignored, and a run killed with SIGKILL resumes exactly where it was.

The slow test trains run A for 4 iterations uninterrupted, and run B with the same seed that is
SIGKILLed once its iteration-2 checkpoint exists, then resumed with ``trainer.resume=auto``.
Iterations 3 and 4 of B must equal A's: same rewards, losses, KL, gradient norms, advantages. On CPU
with the transformers engine (seeded per call from (seed, iteration, turn)) and one FSDP rank, the
computation is deterministic, so the tolerance is 1e-6 absolute (float32 round-off would show as
much larger differences; a lost optimizer state or a wrong data cursor changes them at 1e-2 and up).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from steprl.checkpoint import (
    COMPLETE,
    CheckpointError,
    ResumePoint,
    latest_checkpoint,
    list_checkpoints,
    resolve_resume,
    truncate_metrics,
    write_checkpoint,
)

# ---- fast: the write protocol and the loader ------------------------------------------------------


def _fake_checkpoint(run_dir: Path, tag: str, iteration: int, complete: bool = True) -> Path:
    def fill(tmp: Path) -> None:
        (tmp / "trainer_state.json").write_text(json.dumps({"tag": tag, "iteration": iteration}))
        (tmp / "weights.bin").write_bytes(b"x" * 100)

    path = write_checkpoint(run_dir / "checkpoints" / tag, fill)
    if not complete:  # what a file system without atomic rename could leave: content, no marker
        (path / COMPLETE).unlink()
    return path


def test_checkpoint_without_complete_marker_is_skipped(tmp_path):
    _fake_checkpoint(tmp_path, "sft", 0)
    _fake_checkpoint(tmp_path, "iter_00001", 1)
    partial = _fake_checkpoint(tmp_path, "iter_00002", 2, complete=False)
    (tmp_path / "checkpoints" / "iter_00003.tmp").mkdir()  # killed while being filled
    assert [it for it, _ in list_checkpoints(tmp_path)] == [0, 1]
    assert latest_checkpoint(tmp_path).name == "iter_00001"
    assert resolve_resume("auto", tmp_path).name == "iter_00001"
    assert resolve_resume("never", tmp_path) is None
    with pytest.raises(CheckpointError, match="COMPLETE"):
        resolve_resume(str(partial), tmp_path)
    with pytest.raises(CheckpointError, match="no such"):
        resolve_resume(str(tmp_path / "nowhere"), tmp_path)


def test_write_is_atomic_and_replaces_only_when_whole(tmp_path):
    target = tmp_path / "checkpoints" / "final"
    _fake_checkpoint(tmp_path, "final", 4)

    def broken(tmp: Path) -> None:
        (tmp / "trainer_state.json").write_text(json.dumps({"tag": "final", "iteration": 5}))
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_checkpoint(target, broken)
    assert (target.parent / "final.tmp").is_dir()  # the torn write is left aside, never loaded
    assert latest_checkpoint(tmp_path) == target  # the old one is intact and still the newest
    assert json.loads((target / "trainer_state.json").read_text())["iteration"] == 4
    assert (target / COMPLETE).is_file() and json.loads((target / COMPLETE).read_text())["written_at"] > 0
    _fake_checkpoint(tmp_path, "final", 6)  # a whole rewrite replaces it
    assert json.loads((target / "trainer_state.json").read_text())["iteration"] == 6
    assert sorted(p.name for p in target.parent.iterdir()) == ["final"]


def test_metrics_are_cut_back_to_the_checkpoint(tmp_path):
    rows = [{"step": 0, "sft/nll": 3.0}, {"step": 0, "eval/start/pass_rate": 0.25}]
    rows += [{"step": i, "train/reward": float(i)} for i in (1, 2, 3)]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "train/rew')  # torn line
    _fake_checkpoint(tmp_path, "iter_00002", 2)
    point = ResumePoint.find("auto", tmp_path)
    assert point.iteration == 2 and not point.finished
    assert [r["step"] for r in point.history] == [0, 0, 1, 2]
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [0, 0, 1, 2]
    assert point.start_eval() == {"eval/start/pass_rate": 0.25}
    assert point.start_policy("base-model") == "base-model"  # no SFT checkpoint beside it
    assert truncate_metrics(tmp_path / "absent.jsonl", 3) == []


# ---- slow: SIGKILL and resume, against an uninterrupted run --------------------------------------

TINY = [
    "rollout.engine=hf",
    "actor.world_size=1",
    "critic.world_size=1",
    "trainer.total_iterations=4",
    "trainer.tasks_per_iteration=2",
    "rollout.group_size=2",
    "data.train_tasks=4",  # 2 iterations per pass: iteration 3 reshuffles with the restored RNG
    "data.test_tasks=2",
    # enough SFT that episodes end by themselves: a policy whose every episode is cut by the token
    # budget gives the critic no target at all (cut states are excluded), and its update is then a no-op
    "sft.num_demos=400",
    "sft.batch_size=8",
    "trainer.save_every=1",
    "trainer.logger=[jsonl]",
    "trainer.seed=3",
    "algorithm.kl_in=reward",  # per-token KL rewards: non-zero advantages and critic targets from step 1
    "algorithm.kl_coef=0.05",
    "ray.num_cpus=6",
]


def _volatile(key: str) -> bool:
    """Wall-clock and memory measurements: they differ between any two runs."""
    return key.startswith(("time/", "setup/", "memory/")) or key.endswith(("seconds", "per_second"))


def _cmd(run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "steprl.main", *TINY, f"trainer.run_dir={run_dir}", *extra]


def _iterations(run_dir: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    iters = [r for r in rows if "train/reward" in r]
    steps = [r["step"] for r in iters]
    assert len(steps) == len(set(steps)), f"duplicate iterations in metrics.jsonl: {steps}"
    return {r["step"]: {k: v for k, v in r.items() if not _volatile(k)} for r in iters}


def _kill_when(proc: subprocess.Popen, marker: Path, log: Path, timeout: float) -> None:
    """SIGKILL ``proc`` (the driver only: its Ray workers die with it) once ``marker`` exists."""
    end = time.time() + timeout
    while not marker.exists():
        assert proc.poll() is None, f"run ended before {marker} existed:\n{log.read_text()[-3000:]}"
        assert time.time() < end, f"no {marker} after {timeout}s"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.mark.slow
def test_sigkill_and_resume_matches_an_uninterrupted_run(tmp_path, capsys):
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_log, b_log = tmp_path / "a.log", tmp_path / "b.log"
    # A (uninterrupted) and the first leg of B run side by side: they share nothing but the CPUs
    a, b = _start(_cmd(a_dir), a_log), _start(_cmd(b_dir), b_log)
    try:
        _kill_when(b, b_dir / "checkpoints" / "iter_00002" / COMPLETE, b_log, timeout=600)
        assert a.wait(timeout=600) == 0, a_log.read_text()[-3000:]
    finally:
        for proc in (a, b):  # only if an assertion left them running: the whole process group
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert "SFT cold start" in b_log.read_text()
    # a newer checkpoint whose write was cut short (no COMPLETE) must be ignored by the resume
    fake = b_dir / "checkpoints" / "iter_00003"
    fake.mkdir(exist_ok=True)
    (fake / "trainer_state.json").write_text(json.dumps({"tag": "iter_00003", "iteration": 3}))

    again = subprocess.run(_cmd(b_dir, "trainer.resume=auto"), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "iter_00002 (iteration 2)" in again.stdout
    assert "SFT cold start" not in again.stdout  # done before the checkpoint: not repeated
    assert "evaluating the starting policy" not in again.stdout

    run_a, run_b = _iterations(a_dir), _iterations(b_dir)
    assert sorted(run_a) == sorted(run_b) == [1, 2, 3, 4]
    for it in (3, 4):
        assert run_a[it].keys() == run_b[it].keys()
        for key, value in run_a[it].items():
            assert run_b[it][key] == pytest.approx(value, abs=1e-6), (it, key)
        # non-trivial numbers: the actor, the critic and both optimizers moved
        for key in ("kl", "actor/grad_norm", "critic/vf_loss", "critic/grad_norm", "advantage_abs_mean"):
            assert abs(run_a[it][key]) > 1e-6, (it, key)
    summary = json.loads((b_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    before_a = json.loads((a_dir / "summary.json").read_text())["pass_rate_before_rl"]
    assert summary["pass_rate_before_rl"] == before_a
    assert (b_dir / "checkpoints" / "iter_00003" / COMPLETE).is_file()  # the fake was replaced
    assert (b_dir / "checkpoints" / "final" / "actor_state").is_dir()

    # resuming a completed run is a no-op that starts nothing (in-process: the same main(), checked
    # before Ray or Hydra would start, without another interpreter start-up)
    import steprl.main as cli

    capsys.readouterr()
    assert cli.main([*TINY, f"trainer.run_dir={b_dir}", "trainer.resume=auto"]) == 0
    out = capsys.readouterr().out
    assert "already completed" in out, out[-2000:]
    assert sorted(_iterations(b_dir)) == [1, 2, 3, 4]


def test_nonempty_run_dir_needs_resume(tmp_path):
    from steprl.main import UserError, load_config, make_run_dir

    (tmp_path / "metrics.jsonl").write_text("")
    cfg, _ = load_config([f"trainer.run_dir={tmp_path}"])
    with pytest.raises(UserError, match="not empty .trainer.resume=auto continues it"):
        make_run_dir(cfg)
    cfg, _ = load_config([f"trainer.run_dir={tmp_path}", "trainer.resume=auto"])
    assert make_run_dir(cfg) == tmp_path  # nothing to resume yet: starts over in the same directory
    cfg, _ = load_config([f"trainer.run_dir={tmp_path}", f"trainer.resume={tmp_path}"])
    with pytest.raises(UserError, match="COMPLETE"):
        make_run_dir(cfg)


# ---- checksums, fail-fast resume, results of a completed run (issue 14, finding 6) ----------------


def test_manifest_lists_every_file_and_verify_catches_each_kind_of_damage(tmp_path):
    from steprl.checkpoint import MANIFEST, verify_checkpoint

    path = _fake_checkpoint(tmp_path, "iter_00001", 1)
    files = json.loads((path / MANIFEST).read_text())["files"]
    assert sorted(files) == ["trainer_state.json", "weights.bin"]
    assert files["weights.bin"]["size"] == 100 and len(files["weights.bin"]["sha256"]) == 64
    verify_checkpoint(path)
    damage = {
        "truncated": lambda: (path / "weights.bin").write_bytes(b"x" * 50),
        "altered": lambda: (path / "weights.bin").write_bytes(b"y" * 100),
        "missing": lambda: (path / "weights.bin").unlink(),
        "unlisted": lambda: (path / "extra.bin").write_bytes(b"z"),
        "no manifest": lambda: (path / MANIFEST).unlink(),
    }
    expected = {"truncated": "has 50 bytes", "altered": "sha256", "missing": "missing",
                "unlisted": "extra.bin", "no manifest": "cannot be verified"}  # fmt: skip
    for kind, hurt in damage.items():
        path = _fake_checkpoint(tmp_path, f"iter_{kind.replace(' ', '_')}", 1)
        hurt()
        with pytest.raises(CheckpointError, match=expected[kind]):
            verify_checkpoint(path)


def test_resume_auto_refuses_a_corrupt_newest_checkpoint_and_names_an_intact_one(tmp_path):
    """Before: ``auto`` trusted the COMPLETE marker alone and the run died in a worker minutes later."""
    _fake_checkpoint(tmp_path, "iter_00001", 1)
    newest = _fake_checkpoint(tmp_path, "iter_00002", 2)
    (newest / "weights.bin").write_bytes(b"x" * 10)
    with pytest.raises(CheckpointError) as err:
        resolve_resume("auto", tmp_path)
    message = str(err.value)
    assert "iter_00002 is corrupt" in message and "weights.bin" in message
    assert f"trainer.resume={tmp_path / 'checkpoints' / 'iter_00001'}" in message and "\n" not in message
    with pytest.raises(CheckpointError, match="corrupt"):
        resolve_resume(str(newest), tmp_path)
    assert resolve_resume(str(tmp_path / "checkpoints" / "iter_00001"), tmp_path).name == "iter_00001"


def _completed_run(run_dir: Path) -> dict[str, bytes]:
    """A run dir as a finished 2-iteration run leaves it; returns its result files' bytes."""
    final = _fake_checkpoint(run_dir, "final", 2)
    (run_dir / "config.yaml").write_text("recipe: steptool\n# the completed run's config\n")
    (run_dir / "summary.json").write_text(json.dumps({"status": "completed", "pass_rate_after_rl": 0.9}))
    (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 2, "train/reward": 1.0}) + "\n")
    assert final.is_dir()
    return {name: (run_dir / name).read_bytes() for name in ("config.yaml", "summary.json")}


def _model_dir(tmp_path: Path) -> Path:
    """A real model directory (model paths are checked for a tokenizer and a chat template); these tests
    never train it."""
    from steprl.models.tiny import ensure_tiny_model

    return ensure_tiny_model()


def test_cli_corrupt_checkpoint_fails_fast_and_keeps_the_completed_results(tmp_path):
    """Before: truncated weights failed after ~80 s with a RayTaskError and overwrote config.yaml and
    summary.json of the completed run. Now: one line, exit 2, before Ray starts, nothing touched."""
    run_dir = tmp_path / "run"
    results = _completed_run(run_dir)
    (run_dir / "checkpoints" / "final" / "weights.bin").write_bytes(b"x" * 7)
    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    t0 = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "steprl.main", f"model.path={_model_dir(tmp_path)}", f"trainer.run_dir={run_dir}",
         "trainer.resume=auto", "trainer.total_iterations=4"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "is corrupt: weights.bin" in lines[0], proc.stderr
    assert time.time() - t0 < 60 and "Ray" not in proc.stdout + proc.stderr
    assert {n: (run_dir / n).read_bytes() for n in results} == results
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == before


def test_a_failed_resume_keeps_the_completed_runs_config_and_summary(tmp_path, monkeypatch):
    """A run that extends a completed one and then fails (any error, in train) puts the completed run's
    config.yaml and summary.json back and keeps the failed attempt's beside them."""
    import steprl.main as cli

    run_dir = tmp_path / "run"
    results = _completed_run(run_dir)

    def failing_train(cfg, config_yaml, model_path, run_dir):
        (run_dir / "summary.json").write_text(json.dumps({"status": "failed"}))  # as train's finally does
        raise RuntimeError("worker died")

    monkeypatch.setattr(cli, "train", failing_train)
    monkeypatch.setattr(cli, "init_ray", lambda cfg: None)
    args = [f"model.path={_model_dir(tmp_path)}", f"trainer.run_dir={run_dir}", "trainer.resume=auto",
            "trainer.total_iterations=4"]  # fmt: skip
    with pytest.raises(RuntimeError, match="worker died"):
        cli.main(args)
    assert {n: (run_dir / n).read_bytes() for n in results} == results
    assert json.loads((run_dir / "summary.failed.json").read_text())["status"] == "failed"
    assert "total_iterations: 4" in (run_dir / "config.failed.yaml").read_text()
    assert not list(run_dir.glob("*.completed.*"))
