"""A process reward model (PRM): the probability that a step has more potential, read off a causal LM.

CodeTool's latent reward: a language model is asked, after a context that ends with a step, a fixed
question, and the answer is the softmax over just two tokens, ``yes`` and ``no``, at the position
after the question: ``P(yes) = exp(l_yes) / (exp(l_yes) + exp(l_no))``. Comparing two tokens (not
reading a raw logit) gives a calibrated number in (0, 1) and keeps the LM head, so a PRM is trained
from any causal LM with plain cross-entropy on that pair (:func:`train_prm`), from labels built
automatically out of sibling continuations of the same prefix (:func:`examples_from_sibling_pairs`).

Contexts are token ids of the policy's tokenizer, passed as they are (never re-tokenized), so the PRM
must share the policy's vocabulary: initialise it from the policy (or the same model family).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from steprl.protocol import Trajectory

PRM_QUESTION = "\nDoes the last step have more potential? Answer + for yes, - for no: "
DEFAULT_YES, DEFAULT_NO = "+", "-"
PRM_CONFIG = "prm_config.json"


def _token_id(tokenizer: Any, token: str, what: str) -> int:
    """The id of ``token``: a vocabulary entry, or text the tokenizer encodes as exactly one token."""
    ids = tokenizer(token, add_special_tokens=False)["input_ids"]
    if len(ids) == 1:
        return int(ids[0])
    tid = tokenizer.convert_tokens_to_ids(token)
    if isinstance(tid, int) and tid != tokenizer.unk_token_id:
        return tid
    raise ValueError(f"PRM {what} {token!r} is not one token for this tokenizer (it encodes as {ids})")


class ProcessRewardModel:
    """Scores contexts (token ids ending with a step) with P(yes) after the PRM question."""

    def __init__(
        self,
        model_path: str,
        device: str = "cpu",
        yes_token: str = DEFAULT_YES,
        no_token: str = DEFAULT_NO,
        *,
        question: str | None = None,
        batch_size: int = 16,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        saved = _read_prm_config(model_path)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).to(device).eval()
        self.device, self.batch_size = device, batch_size
        self.question = question if question is not None else saved.get("question", PRM_QUESTION)
        self.yes_id = _token_id(self.tokenizer, yes_token, "yes_token")
        self.no_id = _token_id(self.tokenizer, no_token, "no_token")
        if self.yes_id == self.no_id:
            raise ValueError(f"PRM yes_token {yes_token!r} and no_token {no_token!r} are the same token")
        self.suffix = self.tokenizer(self.question, add_special_tokens=False)["input_ids"]
        self.vocab_size = int(self.model.get_input_embeddings().weight.shape[0])
        self.max_len = int(getattr(self.model.config, "max_position_embeddings", 0) or 1 << 30)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def inputs(self, contexts: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-padded ``context + question`` ids, their attention mask and each last position.

        A context too long for the model keeps its last tokens: the step being judged is at the end.
        """
        keep = self.max_len - len(self.suffix)
        if keep < 1:
            raise ValueError(
                f"the PRM question ({len(self.suffix)} tokens) does not fit {self.max_len} positions"
            )
        rows = []
        for ctx in contexts:
            ids = [int(t) for t in ctx][-keep:] + self.suffix
            bad = [t for t in ids if not 0 <= t < self.vocab_size]
            if bad:
                raise ValueError(
                    f"PRM context holds token ids outside the PRM vocabulary ({self.vocab_size}): {bad[:5]}"
                )
            rows.append(ids)
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return ids, mask, torch.tensor([len(r) - 1 for r in rows])

    def pair_logits(self, contexts: Sequence[Sequence[int]]) -> torch.Tensor:
        """[N, 2] logits of (yes, no) at the end of each context + question (with gradients if enabled)."""
        ids, mask, last = self.inputs(contexts)
        ids, mask = ids.to(self.device), mask.to(self.device)
        logits = self.model(input_ids=ids, attention_mask=mask).logits
        end = logits[torch.arange(len(last), device=logits.device), last.to(logits.device)]
        return end[:, [self.yes_id, self.no_id]].float()

    @torch.no_grad()
    def score(self, contexts: list[list[int]]) -> list[float]:
        """P(yes) for each context: softmax over the (yes, no) logits, not a raw logit."""
        out: list[float] = []
        for i in range(0, len(contexts), self.batch_size):
            pair = self.pair_logits(contexts[i : i + self.batch_size])
            out += torch.softmax(pair, dim=-1)[:, 0].tolist()
        return out


def _read_prm_config(model_path: str) -> dict[str, Any]:
    path = Path(model_path) / PRM_CONFIG
    return json.loads(path.read_text()) if path.is_file() else {}


def train_prm(
    model_path: str,
    examples: list[tuple[list[int], bool]],
    out_dir: str,
    epochs: int = 3,
    lr: float = 1e-4,
    batch_size: int = 8,
    *,
    yes_token: str = DEFAULT_YES,
    no_token: str = DEFAULT_NO,
    device: str = "cpu",
    seed: int = 0,
    on_step: Callable[[int, float], None] | None = None,
) -> str:
    """Fine-tune a causal LM into a PRM: cross-entropy over the (yes, no) pair at the end of each
    ``context + question``, label yes for ``True``. Saves a Hugging Face directory and returns it."""
    if not examples:
        raise ValueError("train_prm needs at least one example")
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(
            f"train_prm: epochs and batch_size must be >= 1 and lr > 0 (got {epochs}, {batch_size}, {lr})"
        )
    prm = ProcessRewardModel(model_path, device, yes_token, no_token)
    prm.model.train()
    opt = torch.optim.AdamW(prm.model.parameters(), lr=lr)
    rng = random.Random(seed)
    order = list(range(len(examples)))
    step = 0
    for _ in range(epochs):
        rng.shuffle(order)
        for i in range(0, len(order), batch_size):
            batch = [examples[j] for j in order[i : i + batch_size]]
            pair = prm.pair_logits([ctx for ctx, _ in batch])
            labels = torch.tensor([0 if good else 1 for _, good in batch], device=pair.device)
            loss = torch.nn.functional.cross_entropy(pair, labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if on_step is not None:
                on_step(step, float(loss.detach()))
    prm.model.eval()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prm.model.save_pretrained(out)
    prm.tokenizer.save_pretrained(out)
    (out / PRM_CONFIG).write_text(
        json.dumps({"question": prm.question, "yes_token": yes_token, "no_token": no_token}, indent=2)
    )
    return str(out)


@dataclass
class SiblingPair:
    """Two continuations of the same prefix (e.g. two candidate steps sampled at one point) and how
    good each turned out (e.g. whether its episode was solved, or its on-the-spot reward)."""

    prefix: list[int]
    first: list[int]
    second: list[int]
    first_value: float
    second_value: float


def examples_from_sibling_pairs(pairs: Iterable[SiblingPair]) -> list[tuple[list[int], bool]]:
    """PRM examples: the better sibling (prefix + continuation) labelled yes, the worse no. A tie says
    nothing about which step has more potential, so it gives no example."""
    out: list[tuple[list[int], bool]] = []
    for p in pairs:
        if math.isclose(p.first_value, p.second_value):
            continue
        good, bad = (p.first, p.second) if p.first_value > p.second_value else (p.second, p.first)
        out += [(p.prefix + good, True), (p.prefix + bad, False)]
    return out


def step_end(traj: Trajectory, k: int) -> int:
    """Index in ``prompt_ids + response_ids`` just after step ``k`` (its action and its observation)."""
    last = max((i for i, s in enumerate(traj.step_index) if s == k), default=None)
    if last is None:
        raise ValueError(f"{traj.task_id}: step {k} has no tokens")
    return len(traj.prompt_ids) + last + 1


def sibling_pairs_from_trajectories(
    trajs: list[Trajectory], value: Callable[[Trajectory], float] = lambda t: t.is_solved
) -> list[SiblingPair]:
    """Pairs of trajectories of one group that share whole steps and then differ: the shared steps are
    the prefix, each one's next step (action and result) the continuation, valued by ``value``."""
    groups: dict[str, list[Trajectory]] = {}
    for t in trajs:
        groups.setdefault(t.group_id or t.task_id, []).append(t)
    pairs = []
    for members in groups.values():
        for i in range(len(members)):
            for j in range(i + 1, len(members)):
                pair = _diverging_steps(members[i], members[j], value)
                if pair is not None:
                    pairs.append(pair)
    return pairs


def _diverging_steps(
    a: Trajectory, b: Trajectory, value: Callable[[Trajectory], float]
) -> SiblingPair | None:
    if a.prompt_ids != b.prompt_ids:
        return None
    k = 0
    while k < min(a.num_steps, b.num_steps):
        ea, eb = step_end(a, k), step_end(b, k)
        ids_a, ids_b = a.prompt_ids + a.response_ids, b.prompt_ids + b.response_ids
        if ids_a[:ea] != ids_b[:eb]:
            start = len(a.prompt_ids) + a.step_index.index(k)
            return SiblingPair(ids_a[:start], ids_a[start:ea], ids_b[start:eb], value(a), value(b))
        k += 1
    return None
