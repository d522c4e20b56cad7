"""The StepTool readers on untrusted files: whatever the bytes, a read returns records or raises the
documented ``DataFormatError`` (naming file and line), never anything else.

Inputs: arbitrary bytes; valid files of every format (multi-turn conversations among them) mangled by
cuts, insertions of the formats' own markers and duplications; and well-formed JSON whose records hold
arbitrary values. Budget: see fuzz_profiles.py.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from fuzz_profiles import FUZZ
from hypothesis import given
from hypothesis import strategies as st

from steprl.data import DataFormatError, Records, detect, load
from steprl.data.formats import READERS
from steprl.data.formats.eto_csv import preference_pair, write_eto_pairs_csv
from steprl.data.formats.ppo_csv import offline_trajectory_from_chat, write_steptool_ppo_csv
from steprl.data.formats.sft_json import conversation_from_chat, write_sft_json
from tests.test_data_formats import CALL0, FINISH, _annotation_doc, _node
from tests.test_formats_conversations import CHAT, REWARDS


def _valid_files(folder: Path) -> dict[str, bytes]:
    """One valid file per format, the chat formats and the conversations included."""
    rows = [offline_trajectory_from_chat(CHAT, REWARDS, f) for f in ("qwen2", "llama3", "toolllama")]
    chain = _node("system", "", [_node("user", "", [_node("tool", CALL0, [_node("tool", FINISH, [])])])])
    prediction = {"7": {"query": "q", "available_tools": [], "answer": {"method": "DFS", "total_steps": 2,
                  "final_answer": FINISH["arguments"], "answer_details": [chain]}}}  # fmt: skip
    paths = {
        "steptool_csv": write_steptool_ppo_csv(folder / "p.csv", rows),
        "steptool_sft_json": write_sft_json(
            folder / "s.json", [conversation_from_chat(CHAT, "Step 8: w", "q")]
        ),
        "steptool_eto_csv": write_eto_pairs_csv(folder / "e.csv", [preference_pair(CHAT[:6], "a", "b")]),
    }
    (folder / "a.json").write_text(json.dumps(_annotation_doc(), indent=2), encoding="utf-8")
    (folder / "r.json").write_text(json.dumps(prediction, indent=2), encoding="utf-8")
    paths["steptool_annotations"], paths["steptool_predictions"] = folder / "a.json", folder / "r.json"
    return {fmt: p.read_bytes() for fmt, p in paths.items()}


with tempfile.TemporaryDirectory() as _d:
    VALID = _valid_files(Path(_d))

MARKERS = [
    "<|im_start|>", "<|im_end|>\n", "<|im_start|>user\n", "<|im_start|>function\n", "<|start_header_id|>",
    "<|end_header_id|>\n\n", "<|eot_id|>", "\nUser:\n", "\nUser: ", "\nAssistant: ", "\nFunction: ", "\t", "\n",
    '"', "'", "\\", "[", "]", "{", "}", ",", ":", "Action: Finish\nAction Input: ", '{"return_type": "give_answer"',
    "1e999", "NaN", "9" * 5000, "[" * 3000, "\x00", "\r", "\ufeff",
]  # fmt: skip


def _read_all(data: bytes) -> None:
    """Every reader on ``data``, with both error policies: DataFormatError is the only way out."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "f"
        path.write_bytes(data)
        for fmt in READERS:
            for on_error in ("raise", "skip"):
                try:
                    out = load(path, fmt, on_error=on_error)  # type: ignore[arg-type]
                except DataFormatError as e:
                    assert e.path == str(path) and e.line >= 1 and str(e).startswith(f"{path}:{e.line}: ")
                    continue
                assert isinstance(out, Records) and out.stats.records == len(out)
                assert out.stats.skipped == len(out.stats.skipped_records)
        try:
            fmt = detect(path)
        except DataFormatError:
            fmt = None
        assert fmt is None or fmt in READERS


@st.composite
def _mangled(draw: st.DrawFn) -> bytes:
    data = VALID[draw(st.sampled_from(sorted(VALID)))].decode("utf-8")
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(data)))
        j = draw(st.integers(i, min(len(data), i + 200)))
        edit = draw(st.sampled_from(["cut", "insert", "replace", "duplicate", "truncate"]))
        piece = draw(st.sampled_from(MARKERS) | st.text(max_size=8))
        if edit == "cut":
            data = data[:i] + data[j:]
        elif edit == "insert":
            data = data[:i] + piece + data[i:]
        elif edit == "replace":
            data = data[:i] + piece + data[j:]
        elif edit == "duplicate":
            data = data[:j] + data[i:j] + data[j:]
        else:
            data = data[:i]
    return data.encode("utf-8", "surrogatepass")


@FUZZ
@given(data=st.binary(max_size=2000))
def test_arbitrary_bytes_raise_only_data_format_errors(data: bytes) -> None:
    _read_all(data)


@FUZZ
@given(data=_mangled())
def test_mangled_files_of_every_format_raise_only_data_format_errors(data: bytes) -> None:
    _read_all(data)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.sampled_from(
        ["instances", "conversations", "from", "value", "id", "query", "answer", "answer_details", "role",
         "message", "next", "name", "arguments", "response", "answer_steps", "process_reward", "is_solved",
         "final_step", "tool_names", "available_tools", "total_steps", "succeed_tool_calling", "contributions",
         "0", "1"]) | st.text(max_size=4), kids, max_size=4),
    max_leaves=25,
)  # fmt: skip


@FUZZ
@given(records=st.dictionaries(st.text(max_size=4), _json, max_size=3), replace=st.booleans())
def test_json_records_of_any_shape_raise_only_data_format_errors(records: dict, replace: bool) -> None:
    """Well-formed JSON, records of any shape: mixed into a valid file's records, or alone."""
    doc = (
        {} if replace else json.loads(VALID["steptool_annotations"]) | json.loads(VALID["steptool_sft_json"])
    )
    doc.update(records)
    _read_all(json.dumps(doc).encode("utf-8", "surrogatepass"))


@FUZZ
@given(step=_json, call=_json)
def test_literal_cells_of_any_shape_raise_only_data_format_errors(step, call) -> None:
    """Python-literal cells (annotation steps, prediction tool messages) holding any value."""
    ann = _annotation_doc()
    ann["7"]["answer_steps"][0] = f"Step 1: {step!r}"
    ann["7"]["final_step"] = f"Final step: {call!r}"
    chain = [_node("tool", repr(call), [_node("tool", step, [])])]
    doc = {**ann, "8": {"query": "q", "answer": {"answer_details": chain, "total_steps": step}}}
    _read_all(json.dumps(doc).encode("utf-8", "surrogatepass"))
