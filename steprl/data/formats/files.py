"""The two file layouts the StepTool formats use, read record by record with each record's line:
tab-separated rows with a header (PPO CSV, ETO pairs CSV) and a top-level JSON object or array
(SFT/RFT JSON, reward annotations, converted predictions).

Why not ``csv.DictReader`` / ``json.load``: a malformed record must be reported with the 1-based
line where it starts (a quoted cell may span many lines), and the rest of the file still read.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from json.decoder import scanstring
from pathlib import Path
from typing import Any

from steprl.data.formats.common import DataFormatError


def _raise_csv_field_limit() -> None:
    """Cells hold whole trajectories; the csv default (128 KiB) is too small."""
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:
            limit //= 2


def iter_tsv(path: str | Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str] | str]]:
    """Yield (start line, {column: cell}) for each row, or (line, error text) for a row of wrong width.

    A bad header, a CSV syntax error or text that is not UTF-8 stops the read (always raised).
    """
    _raise_csv_field_limit()
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, delimiter="\t")
        try:
            header = next(reader, None)
            if header is None:
                raise DataFormatError(path, 1, "empty file: expected a header row")
            missing = [c for c in required if c not in header]
            if missing:
                raise DataFormatError(path, 1, f"header lacks column(s) {missing}; found {header}")
            start = reader.line_num + 1
            for row in reader:
                line, start = start, reader.line_num + 1
                if not row or row == [""]:
                    continue
                if len(row) != len(header):
                    yield line, f"expected {len(header)} tab-separated fields, found {len(row)}"
                else:
                    yield line, dict(zip(header, row, strict=True))
        except csv.Error as e:
            raise DataFormatError(path, reader.line_num, f"CSV error: {e}") from None
        except UnicodeDecodeError as e:
            raise DataFormatError(path, reader.line_num + 1, f"not UTF-8 text: {e.reason}") from None


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


class _LineCounter:
    """Line number of a character offset, counted incrementally (offsets only grow)."""

    def __init__(self, text: str) -> None:
        self.text, self.pos, self.line = text, 0, 1

    def at(self, pos: int) -> int:
        self.line += self.text.count("\n", self.pos, pos)
        self.pos = pos
        return self.line


def read_text(path: str | Path) -> str:
    """The file as text (a leading BOM dropped); bytes that are not UTF-8 are a DataFormatError."""
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataFormatError(path, raw.count(b"\n", 0, e.start) + 1, f"not UTF-8 text: {e.reason}") from None


def iter_json_entries(path: str | Path) -> Iterator[tuple[str, Any, int]]:
    """Yield (key, value, line) for each entry of a top-level JSON object (key = index for an array).

    Decoding entry by entry gives every record its line; a syntax error stops the read (the rest
    of the file cannot be resynchronised) and is always raised.
    """
    text = read_text(path)
    lines = _LineCounter(text)
    dec = json.JSONDecoder()
    i = _skip_ws(text, 0)
    if i >= len(text) or text[i] not in "{[":
        raise DataFormatError(path, lines.at(i), "expected a JSON object or array at the top level")
    close = "}" if text[i] == "{" else "]"
    i = _skip_ws(text, i + 1)
    index = 0
    try:
        while i < len(text) and text[i] != close:
            line = lines.at(i)
            if close == "}":
                if text[i] != '"':
                    raise DataFormatError(path, line, "expected a string key")
                key, i = scanstring(text, i + 1)
                i = _skip_ws(text, i)
                if i >= len(text) or text[i] != ":":
                    raise DataFormatError(path, lines.at(i), "expected ':' after a key")
                i = _skip_ws(text, i + 1)
            else:
                key = str(index)
            value, i = dec.raw_decode(text, i)
            yield key, value, line
            index += 1
            i = _skip_ws(text, i)
            if i < len(text) and text[i] == ",":
                i = _skip_ws(text, i + 1)
            elif i >= len(text) or text[i] != close:
                raise DataFormatError(path, lines.at(i), f"expected ',' or {close!r}")
    except json.JSONDecodeError as e:
        raise DataFormatError(path, e.lineno, f"invalid JSON: {e.msg}") from None
    except RecursionError:
        raise DataFormatError(path, lines.at(i), "JSON nested too deeply to read") from None
    except DataFormatError:
        raise
    except ValueError as e:  # e.g. an integer longer than sys.get_int_max_str_digits()
        raise DataFormatError(path, lines.at(i), f"invalid JSON: {e}") from None
    if i >= len(text):
        raise DataFormatError(path, lines.at(i), f"unterminated top-level value: missing {close!r}")
    if _skip_ws(text, i + 1) != len(text):
        raise DataFormatError(path, lines.at(i + 1), "extra data after the top-level value")
