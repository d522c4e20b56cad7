"""Bad config and bad input fail at once, with one line naming the key, before anything is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from steprl.main import UserError, load_config


def _run_main(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    run_dir = tmp_path / "run"
    return subprocess.run(
        [sys.executable, "-m", "steprl.main", *args, f"trainer.run_dir={run_dir}"],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["trainer.total_iteratons=3"], "total_iteratons"),
        (["trainer.total_iterations=abc"], "total_iterations"),
        (["algorithm.gamma=1.5"], "algorithm.gamma"),
        (["rollout.engine=tgi"], "rollout.engine"),
        (["algorithm.estimator=nope"], "algorithm.estimator"),
        (["recipe=does_not_exist"], "does_not_exist"),
        (["recipe=rft", "trainer.async_rollout=true"], "trainer.async_rollout"),
        (["algorithm.rollout_is=sometimes"], "algorithm.rollout_is"),
        (["algorithm.rollout_is_cap=0"], "algorithm.rollout_is_cap"),
    ],
)
def test_config_errors_name_the_key(args, needle):
    with pytest.raises(UserError) as err:
        load_config(args)
    message = str(err.value)
    assert needle in message and "\n" not in message


def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path):
    for args, needle in [
        (["model.path=/nonexistent/model"], "does not exist"),
        (["data.suite=nosuchsuite"], "nosuchsuite"),
        (["reward.alpha=-1"], "reward.alpha"),
    ]:
        proc = _run_main(args, tmp_path)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], proc.stderr
        assert not (tmp_path / "run").exists()


def test_overrides_and_groups_compose():
    cfg, yaml_text = load_config(["rollout=hf", "trainer.total_iterations=3", "algorithm.kl_coef=0.05"])
    assert cfg.rollout.engine == "hf" and cfg.trainer.total_iterations == 3 and cfg.algorithm.kl_coef == 0.05
    assert "total_iterations: 3" in yaml_text
    cfg, _ = load_config(["rollout.engine=hf"])
    assert cfg.rollout.engine == "hf"


@pytest.mark.parametrize(
    "recipe", sorted(p.stem for p in (Path(__file__).parents[1] / "recipes").glob("*.yaml"))
)
def test_every_recipe_composes_and_validates(recipe):
    from steprl.algorithms.advantages import ADVANTAGE_ESTIMATORS

    cfg, _ = load_config([f"recipe={recipe}"])
    assert cfg.recipe == recipe and cfg.algorithm.estimator in ADVANTAGE_ESTIMATORS
    if recipe == "steptool_no_step_reward":
        assert cfg.reward.step_grained is False
    if cfg.algorithm.estimator in ("grpo", "rloo", "reinforce_pp"):
        assert cfg.algorithm.use_critic is False


# ---- input files are parsed before Ray starts and before anything is written (issue 14, finding 6) --


BAD_INPUTS = [
    (["recipe=sft", "data.format=steptool_sft_json"], "data.path", "{not json", "not a steptool_sft_json"),
    (["recipe=sft", "data.format=steptool_sft_json"], "data.path", '{"q1": {"instances": "x"}}', "no usable"),
    (["recipe=eto", "data.format=steptool_eto_csv"], "data.path", "just one line\n", "steptool_eto_csv"),
    (["recipe=steptool_compat", "data.format=steptool_csv"], "data.path", "prompt\tresponse\n[\t]\n", "csv"),
    (["reward.source=file"], "reward.file_path", "{truncated", "not a steptool_json annotation file"),
    (["reward.source=file"], "reward.file_path", '{"q": {"bad": 1}}\n', "no annotation"),
]


@pytest.mark.parametrize(("args", "key", "content", "needle"), BAD_INPUTS)
def test_input_file_that_does_not_parse_is_one_line_naming_key_and_file(tmp_path, args, key, content, needle):
    from steprl.inputs import InputError, check_inputs

    bad = tmp_path / "bad.json"
    bad.write_text(content)
    cfg, _ = load_config([*args, f"{key}={bad}"])
    with pytest.raises(InputError) as err:
        check_inputs(cfg)
    message = str(err.value)
    assert f"{key}={bad}" in message and needle in message and "\n" not in message


def test_cli_input_file_that_does_not_parse_fails_before_anything_starts(tmp_path, tiny_model_path):
    """Before: only the file's existence was checked; the run wrote config.yaml, started Ray and died
    with a traceback ~25 s later. Now: one line naming the key and the file, exit 2, nothing written."""
    bad = tmp_path / "bad.json"
    bad.write_text('{"q1": {"instances": "x"}}')
    args = [
        "recipe=sft",
        "data.format=steptool_sft_json",
        f"data.path={bad}",
        f"model.path={tiny_model_path}",
    ]
    proc = _run_main(args, tmp_path)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "input error: data.path=" in lines[0] and "no usable" in lines[0], proc.stderr
    assert not (tmp_path / "run").exists()


def test_input_files_that_parse_pass_the_checks(tmp_path):
    from steprl.inputs import check_inputs

    sft = tmp_path / "sft.json"
    conv = [
        {"from": "system", "value": "s"},
        {"from": "user", "value": "q"},
        {"from": "assistant", "value": "a"},
    ]
    sft.write_text(json.dumps({"q1": {"instances": [{"conversations": conv}]}}))
    cfg, _ = load_config(["recipe=sft", "data.format=steptool_sft_json", f"data.path={sft}"])
    found = check_inputs(cfg)
    assert found["data.path"] == 1 and found["tasks"] == {"train": 2000, "test": 64}


# ---- fuzzed: random override sets validate or fail in one line naming the key (issue 14) ----------


def _leaf_keys() -> list[str]:
    from dataclasses import fields, is_dataclass

    from steprl.config import StepRLConfig

    out = []

    def walk(obj, prefix):
        for f in fields(obj):
            value = getattr(obj, f.name)
            if is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            else:
                out.append(f"{prefix}{f.name}")

    walk(StepRLConfig(), "")
    return out


LEAF_KEYS = _leaf_keys()
FUZZ_EXAMPLES = int(os.environ.get("STEPRL_FUZZ_EXAMPLES", "15"))  # raise it to fuzz longer (docs/cli.md)


def _overrides():
    from hypothesis import strategies as st

    def typo(key: str):
        return st.integers(0, len(key) - 1).map(
            lambda i: key[:i] + key[i + 1 :] if key[i] != "." else key + "x"
        )

    key = st.sampled_from(LEAF_KEYS).flatmap(lambda k: st.one_of(st.just(k), typo(k)))
    value = st.one_of(
        st.integers(-(10**6), 10**6).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.sampled_from(["true", "false", "null", "[]", "[a,b]", "{}", "''", "auto", "never", "hf", "none"]),
        st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=8),
    )
    item = st.tuples(st.sampled_from(["", "+", "++"]), key, value).map(
        lambda t: (t[1], f"{t[0]}{t[1]}={t[2]}")
    )
    return st.lists(item, min_size=1, max_size=3, unique_by=lambda t: t[0])


def test_fuzzed_overrides_validate_or_fail_in_one_line_naming_a_key():
    from hypothesis import HealthCheck, given, settings

    from steprl.config import StepRLConfig

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    @given(_overrides())
    def check(items):
        try:
            cfg, _ = load_config([o for _, o in items])
        except UserError as e:
            message = str(e)
            assert "\n" not in message, message
            assert any(k in message for k, _ in items), (items, message)
            return
        assert isinstance(cfg, StepRLConfig)

    check()
