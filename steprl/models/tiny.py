"""The embedded default model: a tiny Qwen2-architecture model and its own tokenizer, built offline.

Nothing can be downloaded at run time, so ``model.path=embedded`` builds (once, cached) a byte-level
BPE tokenizer trained on text of the built-in suites, with the ChatML tool-call template, and a
randomly initialised Qwen2 model, deterministically from a seed. The result is an ordinary Hugging
Face model directory: every later step (vLLM, FSDP2 workers, checkpoints) loads it the same way it
would load a user's model name or path.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Tool-call markers are ordinary (non-special) added tokens: they survive decoding, so the parser sees them.
TOOL_TOKENS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]
TEMPLATE_PATH = Path(__file__).with_name("chat_template.jinja")
BUILD_VERSION = 4


@dataclass(frozen=True)
class TinyModelSpec:
    """Shape of the embedded model, and its short synthetic pretraining (copy and recall)."""

    vocab_size: int = 1024
    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 1024
    seed: int = 0
    pretrain_steps: int = 600
    pretrain_lr: float = 1e-3
    pretrain_batch: int = 32  # synthetic copy rows per step
    pretrain_chat_batch: int = 16  # tool-use chats over shuffled worlds per step (0: none)
    pretrain_chats: int = 4000


def default_cache_dir() -> Path:
    return Path(os.environ.get("STEPRL_CACHE", Path.home() / ".cache" / "steprl"))


# the suites whose chats train the tokenizer: a fixed list, so that registering a new built-in suite does
# not silently change what a fresh build produces under the same cache key
CORPUS_SUITES = ("atlas", "bank", "math", "retrieval")


def _corpus(seed: int, num_tasks: int = 3000) -> list[str]:
    """Rendered chats of the ``CORPUS_SUITES``: the text the tokenizer should encode compactly."""
    from jinja2 import Template

    from tools_env.suite import get_suite

    template = Template(TEMPLATE_PATH.read_text(), trim_blocks=True, lstrip_blocks=True)
    rng = random.Random(seed)
    texts = []
    for name in CORPUS_SUITES:
        suite = get_suite(name)
        tools = [t.schema() for t in suite.tools()]
        try:
            tasks = suite.tasks("train", num_tasks if name == "atlas" else 300, seed)
            for task in tasks:
                msgs = [{"role": "system", "content": suite.system_prompt}]
                msgs += suite.demonstration(task, rng, suboptimal_share=0.5)
                texts.append(template.render(messages=msgs, tools=tools))
        except TypeError:  # a suite without demonstrations adds no text
            continue
    return texts


def build_tokenizer(spec: TinyModelSpec):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # digits one by one (as Qwen2 does) so numbers are copied digit by digit
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=SPECIAL_TOKENS + TOOL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(spec.seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    # whole numbers below 1000 are single tokens (as the 1-3 digit chunks of GPT-4/Llama-3 tokenizers),
    # and so are the suites' entity names: copying a value is then one attention lookup
    fast.add_tokens([str(i) for i in range(1000)] + _entity_tokens())
    fast.chat_template = TEMPLATE_PATH.read_text()
    return fast


def _entity_tokens() -> list[str]:
    from tools_env.suite import get_suite

    get_suite("atlas")
    names: set[str] = set()
    for name in CORPUS_SUITES:
        names.update(get_suite(name).entity_tokens())
    return sorted(names)


def build_model(spec: TinyModelSpec, vocab_size: int, eos_id: int, pad_id: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=True,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        bos_token_id=None,
        torch_dtype="float32",
    )
    torch.manual_seed(spec.seed)
    return Qwen2ForCausalLM(config)


def _pretrain_batch(
    gen: torch.Generator, batch: int, filler: torch.Tensor, sep: int, entities: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic rows that need attention to look tokens up by content.

    A 1M-parameter model does not grow such heads from a few thousand tool demonstrations, where
    copied tokens are rare; on dense synthetic copying it does within a few hundred steps. Half the
    rows repeat a random span (induction); half hide 1-4 entity tokens (names, numbers) in filler
    that contains none, and then list them in order after a separator and end with it (find-and-copy,
    as a tool call copies an entity from the question or a number from a result). Returns ids and
    the loss mask.
    """
    span = 24
    ids = filler[torch.randint(0, len(filler), (batch, 2 * span + 1), generator=gen)]
    mask = torch.zeros_like(ids, dtype=torch.bool)
    half = batch // 2
    ids[:, span] = sep
    ids[:half, span + 1 :] = ids[:half, :span]
    mask[:half, span + 1 :] = True
    for row in range(half, batch):
        k = int(torch.randint(1, 5, (1,), generator=gen))
        where = torch.randperm(span, generator=gen)[:k].sort().values
        picked = entities[torch.randint(0, len(entities), (k,), generator=gen)]
        ids[row, where] = picked
        ids[row, span + 1 : span + 1 + k] = picked
        ids[row, span + 1 + k :] = sep
        mask[row, span + 1 : span + 2 + k] = True
    return ids, mask


def _pretrain_chats(tokenizer, n: int, seed: int) -> list[tuple[list[int], list[bool]]]:
    """Tool-use chats in the atlas format, each over its own shuffled world (``shuffled_world``).

    They stand in for the general tool-calling skill an instruct model brings (copy an entity from
    the question into a call, a number from a result into the next call): the facts differ in every
    chat, so nothing about the bundled table or its held-out answers is learnt here. Only optimal
    demonstrations; the SFT cold start later adds the suite's suboptimal ones.
    """
    from steprl.chat import ChatEncoder
    from tools_env.suite import get_suite
    from tools_env.suites.atlas import shuffled_world

    atlas = get_suite("atlas")
    encoder = ChatEncoder(tokenizer, [t.schema() for t in atlas.tools()], atlas.system_prompt)
    rng = random.Random(f"pretrain-chats-{seed}")
    rows = []
    for i in range(n):
        suite = atlas.with_world(shuffled_world(rng))
        task = suite.tasks("train", 1, rng.randrange(1 << 30))[0]
        traj = encoder.encode_demonstration(f"pretrain-{i}", suite.demonstration(task, rng, 0.0))
        rows.append((traj.prompt_ids + traj.response_ids, [False] * len(traj.prompt_ids) + traj.action_mask))
    return rows


def _chat_batch(
    gen: torch.Generator, rows: list[tuple[list[int], list[bool]]], batch: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    picked = [rows[int(i)] for i in torch.randint(0, len(rows), (batch,), generator=gen)]
    width = max(len(ids) for ids, _ in picked)
    ids = torch.full((batch, width), pad_id, dtype=torch.long)
    mask = torch.zeros((batch, width), dtype=torch.bool)
    for r, (row_ids, row_mask) in enumerate(picked):
        ids[r, : len(row_ids)] = torch.tensor(row_ids)
        mask[r, : len(row_mask)] = torch.tensor(row_mask)
    return ids, mask


def pretrain(
    model,
    spec: TinyModelSpec,
    filler: list[int],
    sep: int,
    entities: list[int],
    chats: list[tuple[list[int], list[bool]]],
    pad_id: int,
    log=print,
) -> float:
    from steprl.modeling import token_logprobs

    gen = torch.Generator().manual_seed(spec.seed)
    filler_ids, entity_ids = torch.tensor(filler), torch.tensor(entities)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.pretrain_lr)
    model.train()
    copy_loss = chat_loss = torch.tensor(0.0)
    for step in range(1, spec.pretrain_steps + 1):
        for group in opt.param_groups:  # short warm-up: the copy heads form faster without early spikes
            group["lr"] = spec.pretrain_lr * min(1.0, step / 50)
        ids, mask = _pretrain_batch(gen, spec.pretrain_batch, filler_ids, sep, entity_ids)
        copy_loss = -(token_logprobs(model(input_ids=ids).logits, ids) * mask).sum() / mask.sum()
        loss = copy_loss
        if chats and spec.pretrain_chat_batch:
            ids, mask = _chat_batch(gen, chats, spec.pretrain_chat_batch, pad_id)
            attn = (ids != pad_id).long()
            logp = token_logprobs(model(input_ids=ids, attention_mask=attn).logits, ids)
            chat_loss = -(logp * mask).sum() / mask.sum()
            loss = loss + chat_loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 100 == 0 or step == spec.pretrain_steps:
            log(
                f"  pretraining the embedded model: step {step}/{spec.pretrain_steps}, "
                f"copy loss {copy_loss.item():.3f}, chat loss {chat_loss.item():.3f}"
            )
    model.eval()
    return float(loss.detach())


def spec_hash(spec: TinyModelSpec) -> str:
    # the build code itself is part of the key: a changed recipe never reuses a stale cache
    payload = json.dumps(
        {
            **asdict(spec),
            "version": BUILD_VERSION,
            "template": TEMPLATE_PATH.read_text(),
            "code": Path(__file__).read_text(),
        }
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def ensure_tiny_model(spec: TinyModelSpec | None = None, cache_dir: Path | None = None) -> Path:
    """Return the directory of the embedded model, building it once (atomically) if needed."""
    spec = spec or TinyModelSpec()
    root = cache_dir or default_cache_dir()
    target = root / "models" / f"tiny-qwen2-{spec_hash(spec)}"
    if (target / "config.json").exists():
        return target
    root.joinpath("models").mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=root / "models"))
    try:
        tokenizer = build_tokenizer(spec)
        model = build_model(spec, len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)
        first_regular = len(SPECIAL_TOKENS) + len(TOOL_TOKENS)
        entities = tokenizer.convert_tokens_to_ids([str(i) for i in range(1000)] + _entity_tokens())
        filler = sorted(set(range(first_regular + 1, len(tokenizer))) - set(entities))
        chats = _pretrain_chats(tokenizer, spec.pretrain_chats, spec.seed) if spec.pretrain_chat_batch else []
        pretrain(model, spec, filler, first_regular, entities, chats, tokenizer.pad_token_id)
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "steprl_spec.json").write_text(json.dumps(asdict(spec), indent=2))
        try:
            os.rename(tmp, target)
        except OSError:  # another process built it first
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
