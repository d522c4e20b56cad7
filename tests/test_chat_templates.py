"""Chat templates of several families, written here in each family's style, through ChatEncoder.

Each template gets a small byte-level BPE tokenizer with that family's special tokens (BOS, no pad
token for some), and a real conversation: system, user, assistant with a tool call, tool result,
assistant answer, follow-up user message, assistant answer. Checked: the end-of-turn token the
encoder derives, which way tools reach the prompt, that the token ids of the encoded conversation are
exactly the template's rendering (prefix stability), that masks cover exactly the assistant turns,
and the stop / pad ids the engines get.
"""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from steprl.chat import ChatEncoder, TemplateError, check_template, probe_template, tools_block

CHATML_TOOLS = """{%- if messages[0].role == 'system' %}{% set sys = messages[0].content %}{% set rest = messages[1:] %}
{%- else %}{% set sys = 'You are a helpful assistant.' %}{% set rest = messages %}{% endif -%}
<|im_start|>system
{{ sys }}{% if tools %}

# Tools
<tools>
{% for t in tools %}{{ t | tojson }}
{% endfor %}</tools>
Call one with <tool_call>{"name": ..., "arguments": ...}</tool_call>.{% endif %}<|im_end|>
{% for m in rest %}{% if m.role == 'tool' %}<|im_start|>user
<tool_response>
{{ m.content }}
</tool_response><|im_end|>
{% else %}<|im_start|>{{ m.role }}
{{ m.content }}<|im_end|>
{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

# ChatML without tool support (SmolLM2's style): any role renders, `tools` is ignored
CHATML_PLAIN = """{% for m in messages %}{% if loop.first and m.role != 'system' %}<|im_start|>system
You are a helpful assistant.<|im_end|>
{% endif %}<|im_start|>{{ m.role }}
{{ m.content }}<|im_end|>
{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

LLAMA3 = """{{ bos_token }}{%- if messages[0].role == 'system' %}{% set sys = messages[0].content %}{% set rest = messages[1:] %}
{%- else %}{% set sys = '' %}{% set rest = messages %}{% endif -%}
<|start_header_id|>system<|end_header_id|>

{{ sys }}{% if tools %}

You may call these functions, answering with JSON:
{% for t in tools %}{{ t | tojson }}
{% endfor %}{% endif %}<|eot_id|>
{%- for m in rest %}<|start_header_id|>{{ 'ipython' if m.role == 'tool' else m.role }}<|end_header_id|>

{{ m.content | trim }}<|eot_id|>{% endfor %}
{%- if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>

{% endif %}"""

# Gemma's style: BOS, no system role, strict user/model alternation, no tools, no tool role
GEMMA = """{{ bos_token }}{% if messages[0].role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}
{%- for m in messages %}{% if (m.role == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}
{%- set role = 'model' if m.role == 'assistant' else m.role %}<start_of_turn>{{ role }}
{{ m.content | trim }}<end_of_turn>
{% endfor %}{% if add_generation_prompt %}<start_of_turn>model
{% endif %}"""

# Mistral's style: [INST] ... [/INST]answer</s>, the system text goes into the first instruction,
# only user / assistant roles (alternating)
MISTRAL = """{%- if messages[0].role == 'system' %}{% set sys = messages[0].content + '\n\n' %}{% set rest = messages[1:] %}
{%- else %}{% set sys = '' %}{% set rest = messages %}{% endif -%}
{{ bos_token }}{% for m in rest %}{% if (m.role == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}
{%- if m.role == 'user' %}[INST] {{ (sys if loop.first else '') + m.content }} [/INST]{% else %}{{ m.content }}{{ eos_token }}{% endif %}{% endfor %}"""

FAMILIES = {
    # name: (template, special tokens, bos, eos, pad, expected end of turn)
    "chatml": (CHATML_TOOLS, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], None, "<|im_end|>", "<|endoftext|>", "<|im_end|>"),
    "chatml_no_tools": (CHATML_PLAIN, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], None, "<|endoftext|>", None, "<|im_end|>"),
    "llama3": (LLAMA3, ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], "<|begin_of_text|>", "<|end_of_text|>", None, "<|eot_id|>"),
    "gemma": (GEMMA, ["<bos>", "<eos>", "<pad>", "<start_of_turn>", "<end_of_turn>"], "<bos>", "<eos>", "<pad>", "<end_of_turn>"),
    "mistral": (MISTRAL, ["<s>", "</s>", "<unk>"], "<s>", "</s>", None, "</s>"),
}  # fmt: skip

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Look up a field of a country.",
            "parameters": {
                "type": "object",
                "properties": {"country": {"type": "string"}, "field": {"type": "string"}},
                "required": ["country", "field"],
            },
        },
    }
]
SYSTEM = "You answer questions about countries."
CALL = (
    '<tool_call>\n{"name": "lookup", "arguments": {"country": "Norland", "field": "capital"}}\n</tool_call>'
)
CONVERSATION = [
    {"role": "user", "content": "What is the capital of Norland?"},
    {"role": "assistant", "content": CALL},
    {"role": "tool", "content": '{"capital": "Vellin"}'},
    {"role": "assistant", "content": "The capital of Norland is Vellin."},
    {"role": "user", "content": "And how do you spell it?"},
    {"role": "assistant", "content": "V-e-l-l-i-n."},
]


def make_tokenizer(template: str, special: list[str], bos: str | None, eos: str, pad: str | None):
    corpus = [json.dumps(TOOLS), SYSTEM, tools_block(TOOLS)] + [m["content"] for m in CONVERSATION] * 3
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus, trainer)
    kw = {"bos_token": bos, "eos_token": eos, "unk_token": special[-1] if "<unk>" in special else None}
    if pad:
        kw["pad_token"] = pad
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **{k: v for k, v in kw.items() if v})
    fast.chat_template = template
    return fast


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    template, special, bos, eos, pad, eot = FAMILIES[request.param]
    return request.param, make_tokenizer(template, special, bos, eos, pad), eot


def _assistant_turns(messages):
    return [m["content"] for m in messages if m["role"] == "assistant"]


def encode_conversation(enc: ChatEncoder):
    """The conversation as rollouts build it: prompt, then action ids and observation deltas."""
    history, prompt = enc.start(CONVERSATION[0]["content"])
    ids, action = list(prompt), [0] * len(prompt)
    i = 1
    while i < len(CONVERSATION):
        reply = CONVERSATION[i]
        a = enc.action_ids(reply["content"])
        ids += a
        action += [1] * len(a)
        history.append(reply)
        new = []
        i += 1
        while i < len(CONVERSATION) and CONVERSATION[i]["role"] != "assistant":
            new.append(CONVERSATION[i])
            i += 1
        if new:
            o = enc.observation_ids(history, new)
            ids += o
            action += [0] * len(o)
            history.extend(new)
    return history, prompt, ids, action


def test_end_of_turn_is_derived_from_the_template(family):
    name, tok, eot = family
    enc = ChatEncoder(tok, TOOLS, SYSTEM)
    assert enc.eot_text == eot, name
    assert enc.eot_id == tok.convert_tokens_to_ids(eot)
    assert enc.stop_token_ids[0] == enc.eot_id
    assert tok.eos_token_id in enc.stop_token_ids  # Llama-3 style: <|eot_id|> and <|end_of_text|>
    assert len(set(enc.stop_token_ids)) == len(enc.stop_token_ids)
    # no pad token: padding falls back to EOS, a real id the masks exclude
    assert enc.pad_id == (tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)


def test_tools_reach_the_prompt_one_way_or_the_other(family):
    name, tok, _ = family
    enc = ChatEncoder(tok, TOOLS, SYSTEM)
    layout = probe_template(tok)
    expected = "template" if name in ("chatml", "llama3") else "system_prompt"
    assert enc.tool_prompt == expected and layout.renders_tools == (expected == "template")
    _, prompt = enc.start("What is the capital of Norland?")
    text = tok.decode(prompt)
    assert '"lookup"' in text and "Look up a field of a country." in text and SYSTEM in text
    if expected == "system_prompt":
        assert "<tool_call>" in text and "<tools>" in text  # the documented call format
        assert "system prompt" in enc.describe()


def test_conversation_tokens_equal_the_rendering_and_masks_cover_the_replies(family):
    name, tok, _ = family
    enc = ChatEncoder(tok, TOOLS, SYSTEM)
    history, prompt, ids, action = encode_conversation(enc)
    full = enc.render([{"role": "system", "content": SYSTEM}] + CONVERSATION)
    decoded = tok.decode(ids)
    # token in, token out: the appended deltas are exactly the template's text (prefix-stable)
    assert full.startswith(decoded), name
    assert full[len(decoded) :].strip() == "", name
    # one BOS, at the start, for tokenizers that have one
    if tok.bos_token_id is not None:
        assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    # the action mask holds exactly the assistant contents, each closed by the end-of-turn token
    spans, cur = [], []
    for t, a in zip(ids, action, strict=True):
        if a:
            cur.append(t)
        elif cur:
            spans.append(cur)
            cur = []
    spans += [cur] if cur else []
    assert [s[-1] for s in spans] == [enc.eot_id] * 3
    assert [tok.decode(s[:-1]) for s in spans] == _assistant_turns(CONVERSATION)
    # everything between the replies (tool result, follow-up user turn) is observation
    obs_text = tok.decode(
        [t for t, a in zip(ids[len(prompt) :], action[len(prompt) :], strict=True) if not a]
    )
    assert '{"capital": "Vellin"}' in obs_text and "And how do you spell it?" in obs_text


def test_templates_without_tool_role_get_results_as_user_turns():
    template, special, bos, eos, pad, _ = FAMILIES["gemma"]
    tok = make_tokenizer(template, special, bos, eos, pad)
    enc = ChatEncoder(tok, TOOLS, SYSTEM)
    assert not enc.layout.system_role and not enc.layout.tool_role
    history, _, ids, _ = encode_conversation(enc)
    text = tok.decode(ids)
    assert (
        '<start_of_turn>user\n<tool_response>\n{"capital": "Vellin"}\n</tool_response><end_of_turn>' in text
    )
    assert text.index(SYSTEM) < text.index("What is the capital")  # system text opens the first user turn
    assert "tool results as user turns" in enc.describe()


def test_demonstration_encoding_uses_the_same_layout(family):
    name, tok, _ = family
    enc = ChatEncoder(tok, TOOLS, SYSTEM)
    demo = CONVERSATION[:4]
    traj = enc.encode_demonstration("d", demo)
    _, prompt, ids, action = encode_conversation(enc)
    n = len(traj.prompt_ids) + len(traj.response_ids)
    assert traj.prompt_ids + traj.response_ids == ids[:n], name
    assert [0] * len(traj.prompt_ids) + traj.action_mask == action[:n]


def test_explicit_tool_prompt_choices_and_the_blind_warning():
    template, special, bos, eos, pad, _ = FAMILIES["chatml_no_tools"]
    tok = make_tokenizer(template, special, bos, eos, pad)
    with pytest.warns(UserWarning, match="sees no tool schema"):
        blind = ChatEncoder(tok, TOOLS, SYSTEM, tool_prompt="template")
    assert blind.blind and "lookup" not in tok.decode(blind.start("q")[1])
    assert "WARNING" in check_template(tok, "template").describe()
    template, special, bos, eos, pad, _ = FAMILIES["chatml"]
    tok = make_tokenizer(template, special, bos, eos, pad)
    forced = ChatEncoder(tok, TOOLS, SYSTEM, tool_prompt="system_prompt")
    text = tok.decode(forced.start("q")[1])
    assert "# Tools\n\nYou can call the tools below" in text and text.count('"lookup"') == 1
    with pytest.raises(TemplateError, match="model.tool_prompt"):
        ChatEncoder(tok, TOOLS, SYSTEM, tool_prompt="xml")


@pytest.mark.parametrize(
    "template, problem",
    [
        (None, "no chat_template"),
        ("{{ messages[-1].content }}", "does not render a user and an assistant message"),
        (
            "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}",
            "no special end-of-turn token",
        ),
        (
            "{% for m in messages %}{% if m.role != 'tool' %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
            "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
            "{% if messages|length > 2 %}{{ raise_exception('one exchange only') }}{% endif %}",
            "cannot express tool results",
        ),
        (
            # earlier turns change when a message is added (a prompt-rewriting template)
            "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}{% if loop.last %} (last){% endif %}"
            "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
            "not prefix-stable",
        ),
    ],
)
def test_unusable_templates_fail_with_one_line(template, problem):
    _, special, bos, eos, pad, _ = FAMILIES["chatml"]
    tok = make_tokenizer(template or "", special, bos, eos, pad)
    tok.chat_template = template
    with pytest.raises(TemplateError, match=problem) as e:
        check_template(tok)
    assert "\n" not in str(e.value)
