"""Chat-template token deltas: how a conversation becomes token ids without re-tokenizing history.

An assistant turn is encoded as its content tokens plus the end-of-turn token (exactly what the
engine generates when it stops). Everything the template puts between turns (tool results, role
headers) is an observation delta: the text the template adds after the last end-of-turn token,
tokenized on its own and appended. Demonstrations (SFT) and rollouts use this same code, so the
model is trained on the token layout it later generates into.
"""

from __future__ import annotations

import copy
from typing import Any

from steprl.protocol import StepRecord, Trajectory


class TemplateError(ValueError):
    pass


class ChatEncoder:
    """Wraps a Hugging Face tokenizer with a chat template and the tool schemas of a suite."""

    def __init__(self, tokenizer: Any, tools: list[dict[str, Any]] | None, system_prompt: str | None) -> None:
        if tokenizer.chat_template is None:
            raise TemplateError("the tokenizer has no chat_template; steprl needs one to build episodes")
        self.tokenizer = tokenizer
        self.tools = tools or None
        self.system_prompt = system_prompt
        self.eot_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        if self.eot_id is None or self.eot_id == tokenizer.unk_token_id:
            self.eot_id = tokenizer.eos_token_id
        self.eot_text = tokenizer.decode([self.eot_id])

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = False) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tools=self.tools, tokenize=False, add_generation_prompt=add_generation_prompt
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


def _tool_name(schema: dict[str, Any]) -> str:
    return schema.get("function", schema).get("name", "")
