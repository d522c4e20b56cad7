"""Chat-template token deltas: how a conversation becomes token ids without re-tokenizing history.

An assistant turn is encoded as its content tokens plus the end-of-turn token (exactly what the
engine generates when it stops). Everything the template puts between turns (tool results, role
headers) is an observation delta: the text the template adds after the last end-of-turn token,
tokenized on its own and appended. Demonstrations (SFT) and rollouts use this same code, so the
model is trained on the token layout it later generates into.

Templates differ, so what steprl needs from one is measured by rendering probe conversations
(``probe_template``), never assumed: the end-of-turn token is whatever the template writes right
after an assistant message (``<|im_end|>``, ``<|eot_id|>``, ``<end_of_turn>``, ``</s>``, ...);
whether it renders ``tools`` (rendered with and without them); whether it has a system and a tool
role. A template that ignores ``tools`` gets them in the system prompt instead (``TOOLS_BLOCK``,
hermes-style ``<tool_call>`` JSON; ``model.tool_prompt``), a template without a system role gets
the system text at the top of the first user message, and one without a tool role gets tool results
as a user turn wrapped in ``<tool_response>``.
"""

from __future__ import annotations

import copy
import json
import warnings
from dataclasses import dataclass
from typing import Any

from steprl.protocol import StepRecord, Trajectory

TOOL_PROMPTS = ("auto", "template", "system_prompt")

# The documented presentation of tools for templates that do not render ``tools`` (docs/models.md).
TOOLS_BLOCK = """# Tools

You can call the tools below. Each line is the JSON schema of one tool:
<tools>
{schemas}
</tools>

To call a tool, write one JSON object with the tool's name and its arguments between <tool_call> and \
</tool_call>, for example:
<tool_call>
{{"name": "tool_name", "arguments": {{"argument": "value"}}}}
</tool_call>
You may write several calls in one turn. Each result comes back in a <tool_response> block. When you \
know the answer, reply with the answer and no tool call."""

_PROBE_TOOL = {
    "type": "function",
    "function": {
        "name": "steprl_probe_tool",
        "description": "steprl probe",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
    },
}


class TemplateError(ValueError):
    pass


def tools_block(tools: list[dict[str, Any]]) -> str:
    """The tool schemas and the call format, as text for a system prompt."""
    return TOOLS_BLOCK.format(schemas="\n".join(json.dumps(t, ensure_ascii=False) for t in tools))


def _render(tokenizer: Any, messages: list[dict[str, Any]], **kw: Any) -> str | None:
    """The template's text for ``messages``, or None if the template refuses them."""
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, **kw)
    except Exception:
        return None


def _in_order(text: str | None, parts: list[str]) -> bool:
    pos = 0
    for p in parts:
        if text is None or (pos := text.find(p, pos)) < 0:
            return False
        pos += len(p)
    return True


@dataclass(frozen=True)
class TemplateLayout:
    """What a chat template does, measured by rendering probe conversations."""

    eot_id: int  # the token the template writes right after an assistant message
    eot_text: str
    renders_tools: bool  # the ``tools`` argument changes the prompt and its names appear in it
    system_role: bool  # a system message renders (else it goes into the first user message)
    tool_role: bool  # a tool message renders with its content (else: a user turn)
    tool_response_tags: bool  # the template wraps tool results in <tool_response> itself


def _special_ids(tokenizer: Any) -> set[int]:
    ids = set(tokenizer.all_special_ids)
    ids.update(i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if t.special)
    return ids


def probe_template(tokenizer: Any) -> TemplateLayout:
    """Measure ``tokenizer``'s chat template (TemplateError with the reason if steprl cannot use it)."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise TemplateError("the tokenizer has no chat_template; steprl needs one to build episodes")
    user = [{"role": "user", "content": "PROBE_USER"}]
    convo = _render(tokenizer, user + [{"role": "assistant", "content": "PROBE_ANSWER"}])
    if convo is None or "PROBE_USER" not in convo or "PROBE_ANSWER" not in convo:
        raise TemplateError("the chat template does not render a user and an assistant message")
    suffix = convo[convo.rindex("PROBE_ANSWER") + len("PROBE_ANSWER") :]
    special = _special_ids(tokenizer)
    suffix_ids = tokenizer(suffix, add_special_tokens=False)["input_ids"] if suffix.strip() else []
    eot_id = next((i for i in suffix_ids if i in special), None)
    if eot_id is None:
        raise TemplateError(
            f"the chat template writes no special end-of-turn token after an assistant message "
            f"(it writes {suffix!r}); steprl needs one to stop generation and cut turns"
        )
    plain = _render(tokenizer, user, add_generation_prompt=True)
    with_tools = _render(tokenizer, user, add_generation_prompt=True, tools=[_PROBE_TOOL])
    renders_tools = with_tools is not None and with_tools != plain and "steprl_probe_tool" in with_tools
    system = _render(tokenizer, [{"role": "system", "content": "PROBE_SYSTEM"}, *user])
    tool_text = _render(
        tokenizer,
        user
        + [
            {"role": "assistant", "content": "PROBE_CALL"},
            {"role": "tool", "content": "PROBE_RESULT"},
        ],
        add_generation_prompt=True,
    )
    tool_role = _in_order(tool_text, ["PROBE_USER", "PROBE_CALL", "PROBE_RESULT"])
    return TemplateLayout(
        eot_id=eot_id,
        eot_text=tokenizer.decode([eot_id]),
        renders_tools=renders_tools,
        system_role=_in_order(system, ["PROBE_SYSTEM", "PROBE_USER"]),
        tool_role=tool_role,
        tool_response_tags=tool_role and "<tool_response>" in (tool_text or ""),
    )


def choose_tool_prompt(layout: TemplateLayout, tool_prompt: str) -> str:
    """``auto`` -> ``template`` when the template renders tools, else ``system_prompt``."""
    if tool_prompt not in TOOL_PROMPTS:
        raise TemplateError(f"model.tool_prompt={tool_prompt!r}; choose one of {list(TOOL_PROMPTS)}")
    if tool_prompt == "auto":
        return "template" if layout.renders_tools else "system_prompt"
    return tool_prompt


class ChatEncoder:
    """Wraps a Hugging Face tokenizer with a chat template and the tool schemas of a suite.

    ``tool_prompt`` (``model.tool_prompt``): ``template`` passes ``tools`` to the chat template,
    ``system_prompt`` writes them into the system message (``TOOLS_BLOCK``), ``auto`` picks
    ``template`` when the template renders tools and ``system_prompt`` otherwise.
    """

    def __init__(
        self,
        tokenizer: Any,
        tools: list[dict[str, Any]] | None,
        system_prompt: str | None,
        tool_prompt: str = "auto",
    ) -> None:
        self.tokenizer = tokenizer
        self.tools = tools or None
        self.system_prompt = system_prompt
        self.layout = probe_template(tokenizer)
        self.tool_prompt = choose_tool_prompt(self.layout, tool_prompt)
        self.eot_id = self.layout.eot_id
        self.eot_text = self.layout.eot_text
        # what ends a turn: the template's end-of-turn token, and the tokenizer's EOS if it differs
        eos = tokenizer.eos_token_id
        self.stop_token_ids = [self.eot_id] + ([eos] if eos is not None and eos != self.eot_id else [])
        # padding only fills positions the masks exclude: any valid id does when there is no pad token
        self.pad_id = next(i for i in (tokenizer.pad_token_id, eos, self.eot_id) if i is not None)
        if self.blind:
            warnings.warn(f"steprl: {self.describe()}", stacklevel=2)

    @property
    def blind(self) -> bool:
        """Tools exist but the prompt carries none of them (template mode on a template ignoring tools)."""
        return bool(self.tools) and self.tool_prompt == "template" and not self.layout.renders_tools

    def describe(self) -> str:
        """One line saying how tools and turns are presented (the run prints it)."""
        eot = f"end of turn {self.eot_text!r}"
        results = (
            "" if self.layout.tool_role else "; tool results as user turns (the template has no tool role)"
        )
        if self.blind:
            return (
                "WARNING: model.tool_prompt=template but the chat template ignores `tools`: the model "
                f"sees no tool schema (model.tool_prompt=auto puts them in the system prompt); {eot}{results}"
            )
        if self.tool_prompt == "template":
            how = "tools rendered by the chat template"
        else:
            why = (
                "the chat template ignores `tools`" if not self.layout.renders_tools else "model.tool_prompt"
            )
            how = f"tools in the system prompt as hermes-style <tool_call> JSON ({why})"
        return f"{how}; {eot}{results}"

    def present(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``messages`` in the form this template can render (tools block, system and tool roles)."""
        out = [dict(m) for m in messages]
        if self.tools and self.tool_prompt == "system_prompt":
            block = tools_block(self.tools)
            if out and out[0]["role"] == "system":
                out[0]["content"] = f"{out[0]['content']}\n\n{block}" if out[0]["content"] else block
            else:
                out.insert(0, {"role": "system", "content": block})
        if out and out[0]["role"] == "system" and not self.layout.system_role:
            system = out.pop(0)["content"]
            if out and out[0]["role"] == "user":
                out[0]["content"] = f"{system}\n\n{out[0]['content']}"
            else:
                out.insert(0, {"role": "user", "content": system})
        wrap = not self.layout.tool_role or (
            self.tool_prompt == "system_prompt" and not self.layout.tool_response_tags
        )
        merged: list[dict[str, Any]] = []
        for m in out:
            if m["role"] == "tool" and wrap:
                m = {**m, "content": f"<tool_response>\n{m['content']}\n</tool_response>"}
            if m["role"] == "tool" and not self.layout.tool_role:
                m = {"role": "user", "content": m["content"]}
            if m["role"] == "user" and not self.layout.tool_role and merged and merged[-1]["role"] == "user":
                # a template without a tool role alternates user / assistant: one user turn of results
                merged[-1]["content"] = f"{merged[-1]['content']}\n\n{m['content']}"
                continue
            merged.append(m)
        return merged

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = False) -> str:
        return self.tokenizer.apply_chat_template(
            self.present(messages),
            tools=self.tools if self.tool_prompt == "template" else None,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )

    def encode_text(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def start(self, question: str) -> tuple[list[dict[str, Any]], list[int]]:
        """The opening messages and prompt ids (system + the first user message + generation prompt).

        Later user messages of a conversation are observations (see ``observation_ids``).
        """
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages.append({"role": "user", "content": question})
        return messages, self.encode_text(self.render(messages, add_generation_prompt=True))

    def with_tools(self, names: list[str] | None) -> ChatEncoder:
        """This encoder with only the tools ``names`` in the prompt (a task's own tools); cached."""
        if names is None:
            return self
        cache = self.__dict__.setdefault("_subsets", {})
        key = tuple(names)
        if key not in cache:
            sub = copy.copy(self)
            sub._subsets = {}
            keep = set(names)
            sub.tools = [t for t in self.tools or [] if _tool_name(t) in keep] or None
            cache[key] = sub
        return cache[key]

    def tool_names(self) -> list[str]:
        return [_tool_name(t) for t in self.tools or []]

    def action_ids(self, content: str) -> list[int]:
        """The tokens of an assistant turn as the engine would have generated them."""
        return self.encode_text(content) + [self.eot_id]

    def observation_ids(
        self, messages: list[dict[str, Any]], new_messages: list[dict[str, Any]]
    ) -> list[int]:
        """Tokens the template adds after the last assistant turn for ``new_messages`` + next prompt."""
        before = self.render(messages)
        after = self.render(messages + new_messages, add_generation_prompt=True)
        cut = before.rfind(self.eot_text)
        if cut < 0:
            raise TemplateError("the rendered conversation has no end-of-turn token")
        cut += len(self.eot_text)
        if after[:cut] != before[:cut]:
            raise TemplateError(
                "the chat template is not prefix-stable: adding a message changed earlier text"
            )
        return self.encode_text(after[cut:])

    def encode_demonstration(self, task_id: str, messages: list[dict[str, Any]]) -> Trajectory:
        """A demonstration (user, then assistant turns each followed by tool results or by the user's
        next message) as a Trajectory with action/obs masks.

        A later user message is an observation, like a tool result: masked out of the loss, and the
        assistant turn before it is a reply (``is_reply``) of user turn ``turn``.
        """
        if not messages or messages[0]["role"] != "user":
            raise ValueError(f"{task_id}: a demonstration starts with the user's message")
        history, prompt_ids = self.start(messages[0]["content"])
        traj = Trajectory(task_id=task_id, prompt_ids=prompt_ids)
        turn, i = 0, 1
        while i < len(messages):
            msg = messages[i]
            if msg["role"] != "assistant":
                raise ValueError(f"{task_id}: expected an assistant turn at message {i}, got {msg['role']!r}")
            k = traj.num_steps
            traj.append(self.action_ids(msg["content"]), is_action=True, step=k)
            history.append({"role": "assistant", "content": msg["content"]})
            after = []
            i += 1
            while i < len(messages) and messages[i]["role"] in ("tool", "user"):
                after.append(messages[i])
                i += 1
            roles = [m["role"] for m in after]
            if "user" in roles and roles[-1] != "user":
                raise ValueError(f"{task_id}: a user message must come last before the next assistant turn")
            is_reply = roles == ["user"]
            if "user" in roles and not is_reply:
                raise ValueError(f"{task_id}: the user speaks after a reply, not after tool results")
            traj.steps.append(
                StepRecord(text=msg["content"], is_final=not after, turn=turn, is_reply=is_reply)
            )
            if after:
                traj.steps[-1].observation = "\n".join(m["content"] for m in after)
                traj.append(self.observation_ids(history, after), is_action=False, step=k)
                history.extend(after)
            turn += is_reply
        traj.done, traj.end_reason = True, "answer"
        return traj


def encode_conversation(tokenizer: Any, messages: list[dict[str, str]], task_id: str) -> Trajectory:
    """A chat (system/user/assistant/tool messages) as a Trajectory, token in / token out.

    The messages before the first assistant turn are the prompt; every assistant turn is one step's
    action tokens (content + end of turn, what an engine generates); whatever comes between assistant
    turns (tool results, a further user message) is an observation delta of the chat template. A chat
    that ends with a non-assistant message ends with the generation prompt (an open assistant turn).
    """
    first = next((i for i, m in enumerate(messages) if m["role"] == "assistant"), len(messages))
    enc = ChatEncoder(tokenizer, None, None)
    history = list(messages[:first])
    traj = Trajectory(
        task_id=task_id, prompt_ids=enc.encode_text(enc.render(history, add_generation_prompt=True))
    )
    i = first
    while i < len(messages):
        k = traj.num_steps
        content = messages[i]["content"]
        traj.append(enc.action_ids(content), is_action=True, step=k)
        history.append({"role": "assistant", "content": content})
        i += 1
        between = []
        while i < len(messages) and messages[i]["role"] != "assistant":
            between.append(messages[i])
            i += 1
        is_reply = bool(between) and all(m["role"] == "user" for m in between)
        turn = sum(s.is_reply for s in traj.steps)
        traj.steps.append(StepRecord(text=content, is_final=not between, turn=turn, is_reply=is_reply))
        if between:
            traj.steps[-1].observation = "\n".join(m["content"] for m in between)
            traj.append(enc.observation_ids(history, between), is_action=False, step=k)
            history.extend(between)
    traj.done, traj.end_reason = True, "answer"
    return traj


def check_template(tokenizer: Any, tool_prompt: str = "auto") -> ChatEncoder:
    """Encode a probe episode (system, user, tool call, tool result, answer, follow-up user message)
    and raise TemplateError naming what the template cannot do; returns the encoder (``describe()``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the caller prints describe(), which carries the warning
        enc = ChatEncoder(tokenizer, [_PROBE_TOOL], "PROBE_SYSTEM", tool_prompt)
    messages, prompt_ids = enc.start("PROBE_QUESTION")
    prompt = tokenizer.decode(prompt_ids)
    if "PROBE_QUESTION" not in prompt:
        raise TemplateError("the chat template drops the user's message")
    if not enc.blind and "steprl_probe_tool" not in prompt:
        raise TemplateError("the tool schemas do not reach the prompt")
    call = '<tool_call>\n{"name": "steprl_probe_tool", "arguments": {"q": "x"}}\n</tool_call>'
    for reply, new, what in (
        (call, {"role": "tool", "content": "PROBE_RESULT"}, "tool results"),
        ("PROBE_ANSWER", {"role": "user", "content": "PROBE_FOLLOWUP"}, "a follow-up user message"),
    ):
        messages.append({"role": "assistant", "content": reply})
        try:
            delta = tokenizer.decode(enc.observation_ids(messages, [new]))
        except TemplateError:
            raise
        except Exception as e:  # the template itself refused (raise_exception, undefined names)
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise TemplateError(
                f"the chat template cannot express {what} after an assistant turn ({first})"
            ) from e
        if new["content"] not in delta:
            raise TemplateError(
                f"the chat template cannot express {what} after an assistant turn (it renders {delta!r})"
            )
        messages.append(new)
    return enc


def _tool_name(schema: dict[str, Any]) -> str:
    return schema.get("function", schema).get("name", "")
