"""Chat-template token deltas: how a conversation becomes token ids without re-tokenizing history.

An assistant turn is encoded as its content tokens plus the end-of-turn token (exactly what the
engine generates when it stops). Everything the template puts between turns (tool results, role
headers) is an observation delta: the text the template adds after the last end-of-turn token,
tokenized on its own and appended. Demonstrations (SFT) and rollouts use this same code, so the
model is trained on the token layout it later generates into.
"""

from __future__ import annotations

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
        """The opening messages and prompt ids (system + user + generation prompt)."""
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages.append({"role": "user", "content": question})
        return messages, self.encode_text(self.render(messages, add_generation_prompt=True))

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
        """A demonstration (user, assistant/tool turns) as a Trajectory with action/obs masks."""
        if not messages or messages[0]["role"] != "user":
            raise ValueError(f"{task_id}: a demonstration starts with the user's message")
        history, prompt_ids = self.start(messages[0]["content"])
        traj = Trajectory(task_id=task_id, prompt_ids=prompt_ids)
        i = 1
        while i < len(messages):
            msg = messages[i]
            if msg["role"] != "assistant":
                raise ValueError(f"{task_id}: expected an assistant turn at message {i}, got {msg['role']!r}")
            k = traj.num_steps
            traj.append(self.action_ids(msg["content"]), is_action=True, step=k)
            history.append({"role": "assistant", "content": msg["content"]})
            tool_msgs = []
            i += 1
            while i < len(messages) and messages[i]["role"] == "tool":
                tool_msgs.append(messages[i])
                i += 1
            traj.steps.append(StepRecord(text=msg["content"], is_final=not tool_msgs))
            if tool_msgs:
                traj.steps[-1].observation = "\n".join(m["content"] for m in tool_msgs)
                traj.append(self.observation_ids(history, tool_msgs), is_action=False, step=k)
                history.extend(tool_msgs)
        traj.done, traj.end_reason = True, "answer"
        return traj
