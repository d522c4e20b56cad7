"""The format dispatcher (``steprl.data.load`` / ``detect``) and the old import path of the readers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from steprl.data import DataFormatError, detect, load, read_sft_json, read_steptool_ppo_csv
from tests.test_data_formats import (
    ETO_CHOSEN,
    ETO_PROMPT,
    ETO_REJECTED,
    _annotation_doc,
    _sft_doc,
    ppo_line,
    published,  # noqa: F401, F811  (the shared fixture: the published files, skipped where absent)
    write_eto,
    write_ppo_csv,
)


def test_detect_and_load_every_format(tmp_path: Path) -> None:
    files = {
        "steptool_csv": write_ppo_csv(tmp_path / "p.csv", [ppo_line("llama3")]),
        "steptool_eto_csv": write_eto(tmp_path / "e.csv", [[ETO_PROMPT, ETO_CHOSEN, ETO_REJECTED]]),
        "steptool_sft_json": tmp_path / "s.json",
        "steptool_annotations": tmp_path / "a.json",
    }
    files["steptool_sft_json"].write_text(json.dumps(_sft_doc()), encoding="utf-8")
    files["steptool_annotations"].write_text(json.dumps(_annotation_doc()), encoding="utf-8")
    for fmt, path in files.items():
        assert detect(path) == fmt
        assert len(load(path)) == len(load(path, fmt, on_error="raise")) >= 1
    assert (
        load(files["steptool_csv"], chat_format="llama3")[0].turns
        == read_steptool_ppo_csv(files["steptool_csv"])[0].turns
    )
    assert [c.source_id for c in load(files["steptool_sft_json"], "steptool_rft_json")] == [
        c.source_id for c in read_sft_json(files["steptool_sft_json"])
    ]
    with pytest.raises(ValueError, match="unknown StepTool format 'parquet'"):
        load(files["steptool_csv"], "parquet")


def test_detect_rejects_what_is_no_steptool_file(tmp_path: Path) -> None:
    tsv = tmp_path / "x.tsv"
    tsv.write_text("a\tb\n1\t2\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"x.tsv:1: a tab-separated header \['a', 'b'\]"):
        detect(tsv)
    js = tmp_path / "x.json"
    js.write_text('{\n "k": {"weights": []}\n}', encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"x.json:2: the first record matches no"):
        detect(js)
    js.write_text("[]", encoding="utf-8")
    with pytest.raises(DataFormatError, match="empty JSON file"):
        load(js)


@pytest.mark.parametrize(
    ("rel", "fmt"),
    [
        ("data_train/qwen2/step_grained_for_ppo_example.csv", "steptool_csv"),
        ("data_train/toolllama/step_grained_for_ppo_example.csv", "steptool_csv"),
        ("data_train/qwen2/gpt4_dfs_G123_for_sft_example.json", "steptool_sft_json"),
        ("data_train/rft/rft_data_example.json", "steptool_sft_json"),
        ("data_train/eto/dpo_data_example.csv", "steptool_eto_csv"),
        ("data/reward_annotation/qwen2/G123_example_5.json", "steptool_annotations"),
        ("data/model_predictions_converted/qwen2/G123_example.json", "steptool_predictions"),
    ],
)
def test_detect_the_published_files(published: Path, rel: str, fmt: str) -> None:  # noqa: F811
    assert detect(published / rel) == fmt
    assert load(published / rel, on_error="raise").stats.skipped == 0


def test_old_module_path_names_the_same_objects() -> None:
    import steprl.data as data
    import steprl.data.steptool_formats as old

    for name in old.__all__:
        assert getattr(old, name) is getattr(data, name, getattr(old, name)), name
    assert (
        old.read_steptool_ppo_csv is data.read_steptool_ppo_csv
        and old.ChatTemplateError is data.ChatTemplateError
    )
