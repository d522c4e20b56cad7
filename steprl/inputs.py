"""Every input file a run reads, parsed and checked before Ray starts and before anything is written.

A run that would die after 30 s of starting workers because a file does not parse, or because a
checkpoint's weights were cut short, dies here instead, in one line naming the key and the file:

- ``data.path``: read with the reader of ``data.format`` (with ``data.on_error``); it must give at
  least one record;
- ``reward.file_path``: the annotation file of the ``file`` reward source, when that source is used;
- ``reward.prm_path``, ``codetool.prm_path``, ``archer.critic_path``: model directories (config.json);
- the task suite: the tasks of both splits are generated (a suite that cannot make them fails here);
- ``trainer.resume``: the checkpoint's content checksums (:func:`steprl.checkpoint.verify_checkpoint`),
  checked where the run directory is resolved (``steprl.main.make_run_dir``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from steprl.config import StepRLConfig


class InputError(ValueError):
    """An input file is missing or does not parse; one line naming the key and the file."""


def check_inputs(cfg: StepRLConfig) -> dict[str, Any]:
    """Parse every input the config names; returns what was read (counts), raises :class:`InputError`."""
    from steprl.validation import reward_sources_in_use

    found: dict[str, Any] = {}
    if cfg.data.format != "suite":
        found["data.path"] = check_data_file(cfg.data.format, cfg.data.path, cfg.data.on_error)
    used = reward_sources_in_use(cfg)
    if "file" in used:
        found["reward.file_path"] = check_annotation_file(cfg.reward.file_path, cfg.reward.file_format)
    for key, path, needed in (
        ("reward.prm_path", cfg.reward.prm_path, "prm" in used),
        ("codetool.prm_path", cfg.codetool.prm_path, cfg.trainer.method == "codetool"),
        ("archer.critic_path", cfg.archer.critic_path, cfg.trainer.method == "archer"),
    ):
        if needed and path:
            check_model_dir(key, path)
    found["tasks"] = check_suite_tasks(cfg)
    return found


def _fail(key: str, path: str, problem: str) -> InputError:
    return InputError(f"input error: {key}={path}: {problem}")


def check_data_file(fmt: str, path: str, on_error: str) -> int:
    """The number of records of ``path`` read as ``fmt``; none (or a parse error) is an error."""
    from steprl.data.formats import load

    if not Path(path).expanduser().is_file():
        raise _fail("data.path", path, "no such file")
    try:
        with _quiet_readers():
            records = load(str(Path(path).expanduser()), fmt, on_error)  # type: ignore[arg-type]
    except (ValueError, OSError, UnicodeDecodeError, RecursionError) as e:
        raise _fail("data.path", path, f"not a {fmt} file ({_one_line(e)})") from e
    if not records:
        skipped = records.stats.skipped_records
        why = f"; first: line {skipped[0][0]}: {skipped[0][1]}" if skipped else ""
        raise _fail("data.path", path, f"no usable {fmt} record ({records.stats.skipped} skipped{why})")
    return len(records)


def check_annotation_file(path: str, fmt: str) -> int:
    from steprl.reward_sources.file import file_format, read_jsonl_annotations, read_steptool_annotations

    p = Path(path).expanduser()
    if not p.is_file():
        raise _fail("reward.file_path", path, "no such file")
    kind = file_format(p, fmt)
    try:
        with _quiet_readers():
            found = read_jsonl_annotations(p) if kind == "jsonl" else read_steptool_annotations(p)
    except (ValueError, OSError, UnicodeDecodeError, RecursionError, KeyError, TypeError) as e:
        raise _fail("reward.file_path", path, f"not a {kind} annotation file ({_one_line(e)})") from e
    if not found:
        raise _fail("reward.file_path", path, f"no annotation in it (format {kind})")
    return len(found)


def check_model_dir(key: str, path: str) -> None:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise _fail(key, path, "no such directory")
    if not (p / "config.json").is_file():
        raise _fail(key, path, "no config.json (not a model directory)")


def check_suite_tasks(cfg: StepRLConfig) -> dict[str, int]:
    """Both splits of the suite give tasks (a suite backed by a file parses it here)."""
    from tools_env.suite import get_suite

    suite = get_suite(cfg.data.suite)
    counts = {}
    for split, n in (("train", cfg.data.train_tasks), ("test", cfg.data.test_tasks)):
        try:
            tasks = suite.tasks(split, n, cfg.data.seed)
        except Exception as e:  # a plugin suite's own reader: any failure is a bad input
            raise _fail("data.suite", cfg.data.suite, f"cannot make {split} tasks ({_one_line(e)})") from e
        if not tasks:
            raise _fail("data.suite", cfg.data.suite, f"has no {split} tasks")
        counts[split] = len(tasks)
    return counts


@contextlib.contextmanager
def _quiet_readers() -> Iterator[None]:
    """No per-record warnings here: training reads the file again and reports its skipped records then."""
    quiet = logging.getLogger("steprl.data")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        yield
    finally:
        quiet.setLevel(level)


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__
