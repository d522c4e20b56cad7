"""SFT cold start: demonstrations become trajectories (same token layout as rollouts) and the actor
is trained on their action tokens only."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

import torch

from steprl.chat import ChatEncoder, encode_conversation
from steprl.modeling import TensorDict
from steprl.protocol import Trajectory, collate
from tools_env.suite import Suite, Task

SFT_LOSS_ON = ("all", "last")


def demonstration_trajectories(
    suite: Suite, tasks: list[Task], encoder: ChatEncoder, suboptimal_share: float, seed: int
) -> list[Trajectory]:
    """Each task's demonstration, encoded with the task's own tools in its prompt (``Task.tools``);
    a conversation's later user messages are observations (``ChatEncoder.encode_demonstration``)."""
    from steprl.episode import task_encoder

    rng = random.Random(seed)
    return [
        task_encoder({t.suite: encoder}, t).encode_demonstration(
            t.task_id, suite.demonstration(t, rng, suboptimal_share)
        )
        for t in tasks
    ]


def last_step_mask(action_mask: torch.Tensor, step_index: torch.Tensor) -> torch.Tensor:
    """The action tokens of each row's last step only (``step_index`` is -1 off action tokens)."""
    last = step_index.masked_fill(~action_mask, -1).max(dim=-1, keepdim=True).values
    return action_mask & (step_index == last)


def sft_tensors(trajs: list[Trajectory], pad_id: int, loss_on: str = "all") -> TensorDict:
    """Tensors for ``sft_step``; ``loss_on="last"`` keeps the loss on the last assistant turn only
    (the ToolBench/StepTool SFT files: each instance is a prefix of a solution path, trained on its
    last turn, the earlier turns being context)."""
    if loss_on not in SFT_LOSS_ON:
        raise ValueError(f"loss_on must be one of {SFT_LOSS_ON}, got {loss_on!r}")
    b = collate(trajs, pad_id)
    mask = b.action_mask if loss_on == "all" else last_step_mask(b.action_mask, b.step_index)
    return {"input_ids": b.input_ids, "attention_mask": b.attention_mask, "action_mask": mask}


def conversation_trajectories(
    messages_list: list[tuple[str, list[dict[str, str]]]], tokenizer: Any, max_length: int
) -> tuple[list[Trajectory], int]:
    """Encode (id, messages) chats; those longer than ``max_length`` tokens are dropped (and counted),
    never cut: a cut would drop the last turn, which is the one the loss may be on."""
    out, dropped = [], 0
    for task_id, messages in messages_list:
        t = encode_conversation(tokenizer, messages, task_id)
        if len(t.prompt_ids) + len(t.response_ids) > max_length or not any(t.action_mask):
            dropped += 1
            continue
        out.append(t)
    return out, dropped


def file_conversations(fmt: str, path: str, on_error: str) -> list[tuple[str, list[dict[str, str]]]]:
    """(id, messages) of every instance of a StepTool SFT or RFT JSON file."""
    from steprl.data.formats import load

    if fmt not in ("steptool_sft_json", "steptool_rft_json"):
        raise ValueError(f"{fmt!r} is not a conversation format (steptool_sft_json, steptool_rft_json)")
    return [(c.source_id, c.to_messages()) for c in load(path, fmt, on_error)]  # type: ignore[arg-type]


def sft_data(cfg: Any, suite: Suite, tokenizer: Any) -> tuple[list[Trajectory], str]:
    """The SFT cold-start data set and a one-line description of it.

    ``data.format=steptool_sft_json`` reads the published SFT JSON at ``data.path``; otherwise the
    suite's demonstrations (``sft.num_demos``, a share ``sft.suboptimal_share`` with a suboptimal step).
    """
    if cfg.data.format == "steptool_sft_json":
        convs = file_conversations(cfg.data.format, cfg.data.path, cfg.data.on_error)
        trajs, dropped = conversation_trajectories(convs, tokenizer, cfg.sft.max_length)
        if not trajs:
            raise ValueError(f"{cfg.data.path}: no SFT instance fits sft.max_length={cfg.sft.max_length}")
        return (
            trajs,
            f"{len(trajs)} instances of {cfg.data.path} ({dropped} longer than sft.max_length dropped)",
        )
    encoder = ChatEncoder(
        tokenizer, [t.schema() for t in suite.tools()], suite.system_prompt, tool_prompt=cfg.model.tool_prompt
    )
    tasks = suite.tasks("train", cfg.sft.num_demos, cfg.data.seed + 1)
    demos = demonstration_trajectories(suite, tasks, encoder, cfg.sft.suboptimal_share, cfg.trainer.seed)
    return demos, f"{len(demos)} demonstrations ({cfg.sft.suboptimal_share:.0%} with a suboptimal step)"


def lr_at(step: int, total: int, peak: float, warmup_frac: float = 0.1) -> float:
    """Linear warm-up then cosine decay to 10% of the peak."""
    warm = max(1, int(total * warmup_frac))
    if step < warm:
        return peak * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def run_sft(
    train_step: Callable[[TensorDict, float], dict[str, float]],
    trajs: list[Trajectory],
    pad_id: int,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    on_step: Callable[[int, int, dict[str, float]], None] | None = None,
    loss_on: str = "all",
    schedule: Callable[[int, int, float], float] = lr_at,
) -> list[dict[str, float]]:
    """Shuffled mini-batches for ``epochs``; ``train_step(tensors, lr)`` runs one optimizer step at
    ``schedule(step, total, lr)`` (default: warm-up then cosine)."""
    rng = random.Random(seed)
    per_epoch = math.ceil(len(trajs) / batch_size)
    total = per_epoch * epochs
    history = []
    for epoch in range(epochs):
        order = list(range(len(trajs)))
        rng.shuffle(order)
        for i in range(per_epoch):
            step = epoch * per_epoch + i
            chunk = [trajs[j] for j in order[i * batch_size : (i + 1) * batch_size]]
            metrics = train_step(sft_tensors(chunk, pad_id, loss_on), schedule(step, total, lr))
            history.append(metrics)
            if on_step:
                on_step(step + 1, total, metrics)
    return history
