"""Checkpoints that are either whole or ignored, and what resuming from one needs.

A checkpoint directory ``<run_dir>/checkpoints/<tag>/`` is filled under ``<tag>.tmp``, every file
is fsynced, a ``COMPLETE`` marker is written last, and only then is the directory renamed into
place. A loader trusts a directory only if it holds ``COMPLETE``: a run killed while writing leaves
a ``.tmp`` directory (or, on a file system without atomic rename, a directory without the marker)
that :func:`latest_checkpoint` skips.

Layout (written by ``Controller.save_checkpoint``)::

    actor/          Hugging Face weights + tokenizer (what vLLM / transformers load)
    critic/         Hugging Face weights of the value model (when there is a critic)
    actor_state/    torch.distributed.checkpoint (DCP) files: sharded model + optimizer, per-rank RNG
    critic_state/   the same for the critic
    trainer_state.json  iteration, data cursor + task order, Python RNG, KL controller, reward normalizer
    controller_rng.pt   the controller's torch RNG state
    MANIFEST.json   size and sha256 of every file above (written after them, before the marker)
    COMPLETE

Before a run resumes from a checkpoint, :func:`verify_checkpoint` re-hashes every file against the
manifest: truncated or altered weights fail in one line before anything starts, instead of inside a
worker minutes later. ``trainer.resume=auto`` refuses a corrupt newest checkpoint (naming the newest
intact one to resume from explicitly) rather than silently going back iterations.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

COMPLETE = "COMPLETE"
STATE_FILE = "trainer_state.json"
MANIFEST = "MANIFEST.json"
FORMAT_VERSION = 1
_CHUNK = 1 << 20
_VERIFIED: set[tuple[str, int]] = set()  # (checkpoint, marker mtime) verified in this process


class CheckpointError(RuntimeError):
    """A checkpoint asked for cannot be used (missing, incomplete, or from a different setup)."""


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every file and directory under ``root`` to stable storage (children before parents)."""
    for dirpath, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            _fsync_path(Path(dirpath) / name)
        _fsync_path(Path(dirpath))


def write_checkpoint(final: Path, fill: Callable[[Path], None], meta: dict[str, Any] | None = None) -> Path:
    """Create ``final`` atomically: ``fill(tmp)`` writes the content, then fsync, marker, rename.

    An existing ``final`` (a rerun of the same tag, or a leftover without a marker) is replaced only
    once the new directory is complete.
    """
    final = Path(final)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    fill(tmp)
    write_manifest(tmp)
    fsync_tree(tmp)
    marker = tmp / COMPLETE
    with open(marker, "w") as f:  # written last: its presence vouches for everything above
        json.dump({"written_at": time.time(), **(meta or {})}, f)
        f.flush()
        os.fsync(f.fileno())
    _fsync_path(tmp)
    old = final.with_name(final.name + ".old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_path(final.parent)
    shutil.rmtree(old, ignore_errors=True)
    return final


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _content_files(root: Path) -> list[Path]:
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and p.relative_to(root).as_posix() not in (MANIFEST, COMPLETE)
    )


def write_manifest(root: Path) -> dict[str, Any]:
    """``MANIFEST.json``: ``{relative path: {"size", "sha256"}}`` of every file under ``root``."""
    root = Path(root)
    files = {
        p.relative_to(root).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in _content_files(root)
    }
    manifest = {"format_version": FORMAT_VERSION, "files": files}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def verify_checkpoint(path: Path) -> None:
    """Every file of the manifest is there with its size and sha256, and no file is unlisted.

    Raises :class:`CheckpointError` with one line naming the checkpoint and the first bad file.
    """
    path = Path(path)
    if not is_complete(path):
        raise CheckpointError(f"checkpoint {path} has no {COMPLETE} marker (partial write)")
    stamp = (str(path.resolve()), (path / COMPLETE).stat().st_mtime_ns)
    if stamp in _VERIFIED:  # the same run checks it where the run dir is resolved and again to load it
        return
    try:
        files = json.loads((path / MANIFEST).read_text())["files"]
    except FileNotFoundError as e:
        raise CheckpointError(f"checkpoint {path} has no {MANIFEST}: its content cannot be verified") from e
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path}: {MANIFEST} does not parse ({type(e).__name__})") from e
    for rel, want in sorted(files.items()):
        f = path / rel
        if not f.is_file():
            raise CheckpointError(f"checkpoint {path} is corrupt: {rel} is missing")
        if f.stat().st_size != want["size"]:
            raise CheckpointError(
                f"checkpoint {path} is corrupt: {rel} has {f.stat().st_size} bytes, the manifest {want['size']}"
            )
        if sha256_file(f) != want["sha256"]:
            raise CheckpointError(f"checkpoint {path} is corrupt: {rel} does not match its sha256")
    extra = [p.relative_to(path).as_posix() for p in _content_files(path)]
    unlisted = sorted(set(extra) - set(files))
    if unlisted:
        raise CheckpointError(f"checkpoint {path} is corrupt: {unlisted[0]} is not in its {MANIFEST}")
    _VERIFIED.add(stamp)


def verify_resume_point(path: Path) -> None:
    """The checkpoint and, when its run did the SFT cold start, the ``sft`` checkpoint it starts from."""
    verify_checkpoint(path)
    sft = Path(path).parent / "sft"
    if Path(path).name != "sft" and read_state(path).get("sft_done") and sft.is_dir():
        verify_checkpoint(sft)


def is_complete(path: Path) -> bool:
    path = Path(path)
    return (path / COMPLETE).is_file() and (path / STATE_FILE).is_file()


def read_state(path: Path) -> dict[str, Any]:
    return json.loads((Path(path) / STATE_FILE).read_text())


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run as ``(iteration, path)``, oldest first.

    Directories being written (``.tmp``), being replaced (``.old``) or without ``COMPLETE`` are
    skipped. Ties on the iteration (``iter_00012`` and ``final`` of a 12-iteration run) put
    ``final`` last.
    """
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        if not path.is_dir() or path.name.endswith((".tmp", ".old")) or not is_complete(path):
            continue
        try:
            iteration = int(read_state(path)["iteration"])
        except (ValueError, KeyError, json.JSONDecodeError):
            continue  # a marker next to an unreadable state: not a checkpoint we can resume
        found.append((iteration, path.name == "final", path))
    found.sort(key=lambda x: (x[0], x[1], x[2].name))
    return [(it, p) for it, _final, p in found]


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1][1] if ckpts else None


def resolve_resume(mode: str, run_dir: Path) -> Path | None:
    """``never`` -> None; ``auto`` -> the newest complete checkpoint of ``run_dir`` (or None);
    anything else is a checkpoint directory, which must be complete."""
    if mode == "never":
        return None
    if mode == "auto":
        ckpts = list_checkpoints(run_dir)
        if not ckpts:
            return None
        newest = ckpts[-1][1]
        try:
            verify_resume_point(newest)
        except CheckpointError as e:
            intact = next((p for _, p in reversed(ckpts[:-1]) if _intact(p)), None)
            hint = f"; resume from trainer.resume={intact}" if intact else "; no older intact checkpoint"
            raise CheckpointError(f"trainer.resume=auto: {e}{hint}, or delete it") from e
        return newest
    path = Path(mode).expanduser()
    if not path.is_dir():
        raise CheckpointError(f"trainer.resume={mode}: no such checkpoint directory")
    if not is_complete(path):
        raise CheckpointError(f"trainer.resume={mode}: checkpoint has no {COMPLETE} marker (partial write)")
    try:
        verify_resume_point(path)
    except CheckpointError as e:
        raise CheckpointError(f"trainer.resume={mode}: {e}") from e
    return path.resolve()


def _intact(path: Path) -> bool:
    try:
        verify_resume_point(path)
    except CheckpointError:
        return False
    return True


def truncate_metrics(path: Path, iteration: int) -> list[dict[str, Any]]:
    """Keep the metric rows logged up to ``iteration`` (rewritten atomically); return them.

    Rows after the checkpoint's iteration were logged by the run that died; the resumed run logs
    those iterations again, so keeping them would duplicate iterations. A torn last line is dropped.
    """
    path = Path(path)
    if not path.exists():
        return []
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if int(row.get("step", 0)) <= iteration:
            kept.append(row)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in kept)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return kept


def python_rng_to_json(state: tuple) -> list:
    """``random.Random.getstate()`` as JSON (a tuple of a version, 625 ints and an optional gauss)."""
    version, internal, gauss = state
    return [version, list(internal), gauss]


def python_rng_from_json(data: list) -> tuple:
    version, internal, gauss = data
    return (version, tuple(internal), gauss)


class ResumePoint:
    """Where a resumed run continues: the checkpoint, its trainer state, and the metric rows kept."""

    def __init__(self, path: Path, history: list[dict[str, Any]]) -> None:
        self.path = Path(path)
        self.state = read_state(self.path)
        self.history = history

    @property
    def iteration(self) -> int:
        return int(self.state["iteration"])

    @property
    def finished(self) -> bool:
        """The run that wrote it had completed (its ``final`` checkpoint)."""
        return self.state.get("tag") == "final"

    def start_policy(self, model_path: str) -> str:
        """The policy the run's reference, critic and rollout engines started from: the SFT
        checkpoint beside this one if the cold start ran, else the base model."""
        sft = self.path.parent / "sft"
        return str(sft / "actor") if self.state.get("sft_done") and is_complete(sft) else model_path

    def start_eval(self) -> dict[str, float]:
        """The evaluation before RL, as logged by the first run (not repeated on resume)."""
        for row in self.history:
            if "eval/start/pass_rate" in row:
                return {k: v for k, v in row.items() if k.startswith("eval/start/")}
        return {}

    @classmethod
    def find(cls, mode: str, run_dir: Path) -> ResumePoint | None:
        """Resolve ``trainer.resume`` for ``run_dir`` and cut its metrics back to the checkpoint.

        With ``auto`` and no complete checkpoint the run starts over, so earlier metric rows go too.
        """
        path = resolve_resume(mode, run_dir)
        metrics = Path(run_dir) / "metrics.jsonl"
        if path is None:
            if mode != "never":
                truncate_metrics(metrics, -1)
            return None
        return cls(path, truncate_metrics(metrics, int(read_state(path)["iteration"])))


def run_completed(mode: str, run_dir: Path, total_iterations: int) -> bool:
    """Resuming would do nothing: the newest checkpoint is the ``final`` one of a run this long."""
    path = resolve_resume(mode, run_dir)
    if path is None:
        return False
    state = read_state(path)
    return state.get("tag") == "final" and int(state["iteration"]) >= total_iterations


RUN_RESULT_FILES = ("config.yaml", "summary.json")


@contextlib.contextmanager
def keep_completed_results(run_dir: Path) -> Iterator[None]:
    """A run that fails never overwrites the ``config.yaml``/``summary.json`` of a completed run.

    When ``run_dir`` holds a completed run (a resume that extends it), both files are copied to
    ``*.completed`` first (so even a SIGKILL loses nothing); on failure they are put back and the failed
    attempt's files are kept as ``config.failed.yaml``/``summary.failed.json``; on success the copies go.
    """
    try:
        completed = json.loads((run_dir / "summary.json").read_text()).get("status") == "completed"
    except (OSError, ValueError, AttributeError):
        completed = False
    backups = {}
    if completed:
        for name in RUN_RESULT_FILES:
            if (run_dir / name).is_file():
                backups[name] = _sibling(run_dir / name, "completed")
                backups[name].write_bytes((run_dir / name).read_bytes())
    try:
        yield
    except BaseException:
        for name, backup in backups.items():
            path = run_dir / name
            if path.exists():
                os.replace(path, _sibling(path, "failed"))
            os.replace(backup, path)
        raise
    for backup in backups.values():
        backup.unlink(missing_ok=True)


def _sibling(path: Path, tag: str) -> Path:
    return path.with_name(f"{path.stem}.{tag}{path.suffix}")
