"""One entry point for every StepTool format: ``load(path, fmt)`` and ``detect(path)``.

Why: the trainer, the input checks and users pick a reader by the ``data.format`` name; a file whose
format is not known up front (a user's download) can be recognised from its header or first record.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from steprl.data.formats.annotations import read_reward_annotations
from steprl.data.formats.common import DataFormatError, OnError, Records
from steprl.data.formats.eto_csv import ETO_COLUMNS, read_eto_pairs_csv
from steprl.data.formats.files import iter_json_entries
from steprl.data.formats.ppo_csv import PPO_COLUMNS, read_steptool_ppo_csv
from steprl.data.formats.predictions import read_predictions
from steprl.data.formats.sft_json import read_rft_json, read_sft_json

READERS: dict[str, Callable[..., Records[Any]]] = {
    "steptool_csv": read_steptool_ppo_csv,
    "steptool_sft_json": read_sft_json,
    "steptool_rft_json": read_rft_json,
    "steptool_eto_csv": read_eto_pairs_csv,
    "steptool_annotations": read_reward_annotations,
    "steptool_predictions": read_predictions,
}
FORMAT_NAMES = tuple(READERS)


def _tsv_header(path: str | Path) -> list[str] | None:
    with open(path, "rb") as f:
        raw = f.readline()
    try:
        first = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataFormatError(path, 1, f"not UTF-8 text: {e.reason}") from None
    if "\t" not in first:
        return None
    return [c.strip().strip('"') for c in first.rstrip("\r\n").split("\t")]


def detect(path: str | Path) -> str:
    """The format name of a StepTool file, from its TSV header or its first JSON record.

    The SFT and RFT JSON share one layout: both are reported as ``steptool_sft_json`` (they read the
    same). Raises ``DataFormatError`` when the file matches none of the formats.
    """
    header = _tsv_header(path)
    if header is not None:
        for name, columns in (("steptool_csv", PPO_COLUMNS), ("steptool_eto_csv", ETO_COLUMNS)):
            if all(c in header for c in columns):
                return name
        raise DataFormatError(path, 1, f"a tab-separated header {header} of no StepTool format")
    for _, first, line in iter_json_entries(path):
        if isinstance(first, dict):
            if "instances" in first:
                return "steptool_sft_json"
            if "answer_steps" in first or "process_reward" in first:
                return "steptool_annotations"
            if "answer" in first:
                return "steptool_predictions"
        raise DataFormatError(path, line, "the first record matches no StepTool JSON format")
    raise DataFormatError(path, 1, "an empty JSON file: no record to tell the format from")


def load(path: str | Path, fmt: str = "auto", on_error: OnError = "skip", **options: Any) -> Records[Any]:
    """Read ``path`` with the reader of ``fmt`` (a name of ``FORMAT_NAMES``, or "auto": ``detect``).

    ``options`` go to the reader (``chat_format=`` for the PPO CSV).
    """
    if fmt == "auto":
        fmt = detect(path)
    if fmt not in READERS:
        raise ValueError(f"unknown StepTool format {fmt!r}; known: {', '.join(FORMAT_NAMES)} or 'auto'")
    return READERS[fmt](path, on_error=on_error, **options)
