"""SFT cold start: demonstrations become trajectories (same token layout as rollouts) and the actor
is trained on their action tokens only."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from steprl.chat import ChatEncoder
from steprl.modeling import TensorDict
from steprl.protocol import Trajectory, collate
from tools_env.suite import Suite, Task


def demonstration_trajectories(
    suite: Suite, tasks: list[Task], encoder: ChatEncoder, suboptimal_share: float, seed: int
) -> list[Trajectory]:
    rng = random.Random(seed)
    return [
        encoder.encode_demonstration(t.task_id, suite.demonstration(t, rng, suboptimal_share)) for t in tasks
    ]


def sft_tensors(trajs: list[Trajectory], pad_id: int) -> TensorDict:
    b = collate(trajs, pad_id)
    return {"input_ids": b.input_ids, "attention_mask": b.attention_mask, "action_mask": b.action_mask}


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
) -> list[dict[str, float]]:
    """Shuffled mini-batches for ``epochs``; ``train_step(tensors, lr)`` runs one optimizer step."""
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
            metrics = train_step(sft_tensors(chunk, pad_id), lr_at(step, total, lr))
            history.append(metrics)
            if on_step:
                on_step(step + 1, total, metrics)
    return history
