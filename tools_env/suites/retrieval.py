"""Question answering over a bundled corpus with a BM25 ``search`` tool (ARPO / Search-R1 style).

Documents describe fictional rivers, cities and people (``retrieval_corpus``). Single-hop questions ask
a fact of one entry ("In which year was Kalobburg founded?"); two-hop questions chain two entries
("Which river flows through the birthplace of Ela Venmarsa?"), so the agent must search, read, and
search again. Search is BM25 (``bm25s``) over title + text.

Reward rules (what the reward worker reads):
* SuccCalling: the call parsed, named ``search`` with a non-empty string query, and returned results.
* Contribution: 1 for a step whose results include a gold document (one the answer depends on) that no
  earlier step retrieved; 0 otherwise (a repeated or irrelevant search adds nothing).
* IsSolved: after normalisation (lower case, no punctuation or articles, an "The answer is" lead-in
  removed) 1 if the answer equals the gold answer, or contains it and is at most 6 tokens longer;
  0.5 (unsure) if the token F1 with the gold answer is at least 0.5; else 0.
"""

from __future__ import annotations

import random
import re
import threading
import zlib
from collections import Counter
from typing import Any

from tools_env.suite import Suite, Task, register_suite
from tools_env.suites.atlas import call_text
from tools_env.suites.retrieval_corpus import BY_TITLE, CORPUS, Document
from tools_env.tools import ToolError, tool

SUBOPTIMAL_KINDS = ("vague_query", "redundant", "premature_answer")
_ARTICLES = {"a", "an", "the"}


class _Index:
    """BM25 over the corpus, built once per process on first use (bm25s imports numpy, ~1 s)."""

    _lock = threading.Lock()
    _retriever: Any = None

    @classmethod
    def search(cls, query: str, k: int) -> list[Document]:
        try:
            import bm25s
        except ImportError as e:  # becomes the observation; the suite cannot work without it
            raise RuntimeError("the retrieval suite needs the bm25s package: pip install bm25s") from e
        tokens = bm25s.tokenize([query], stopwords="en", return_ids=False, show_progress=False)
        if not tokens or not tokens[0]:
            return []
        with cls._lock:  # one index per process; retrieval is fast, so serialising it costs little
            if cls._retriever is None:
                texts = [f"{d.title}. {d.text}" for d in CORPUS]
                retriever = bm25s.BM25()
                retriever.index(
                    bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False
                )
                cls._retriever = retriever
            ids, scores = cls._retriever.retrieve(tokens, k=min(k, len(CORPUS)), show_progress=False)
        return [CORPUS[int(i)] for i, s in zip(ids[0], scores[0], strict=True) if s > 0]


def normalize(text: str) -> list[str]:
    text = re.sub(r"^\s*(?:final\s+)?(?:the\s+)?answer\s*(?:is|:)\s*", "", (text or "").lower())
    return [t for t in re.findall(r"[a-z0-9]+", text) if t not in _ARTICLES]


def f1(pred: list[str], gold: list[str]) -> float:
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    p, r = common / len(pred), common / len(gold)
    return 2 * p * r / (p + r)


def _contains(pred: list[str], gold: list[str]) -> bool:
    return any(pred[i : i + len(gold)] == gold for i in range(len(pred) - len(gold) + 1))


def _questions(rng: random.Random) -> tuple[str, str, list[str], list[str]]:
    """One question: (text, answer, gold titles in hop order, the demonstration's search queries)."""
    people = [d for d in CORPUS if d.doc_id.startswith("person-")]
    cities = [d for d in CORPUS if d.doc_id.startswith("city-")]
    kind = rng.choice(
        ["city_fact", "person_fact", "river_of_birthplace", "founded_birthplace", "river_length"]
    )
    if kind == "city_fact":
        c = rng.choice(cities)
        fact = rng.choice(["founded", "river", "province"])
        q = {"founded": f"In which year was {c.title} founded?", "river": f"Which river flows through {c.title}?",
             "province": f"In which province is {c.title}?"}[fact]  # fmt: skip
        return q, c.facts[fact], [c.title], [c.title]
    if kind == "person_fact":
        p = rng.choice(people)
        fact = rng.choice(["birthplace", "born", "profession"])
        q = {"birthplace": f"In which city was {p.title} born?", "born": f"In which year was {p.title} born?",
             "profession": f"What was the profession of {p.title}?"}[fact]  # fmt: skip
        return q, p.facts[fact], [p.title], [p.title]
    if kind in ("river_of_birthplace", "founded_birthplace"):
        p = rng.choice(people)
        c = BY_TITLE[p.facts["birthplace"]]
        if kind == "river_of_birthplace":
            return (
                f"Which river flows through the birthplace of {p.title}?",
                c.facts["river"],
                [p.title, c.title],
                [p.title, c.title],
            )
        return (
            f"In which year was the birthplace of {p.title} founded?",
            c.facts["founded"],
            [p.title, c.title],
            [p.title, c.title],
        )
    c = rng.choice(cities)
    r = BY_TITLE[f"{c.facts['river']} (river)"]
    return (
        f"How long, in km, is the river that flows through {c.title}?",
        r.facts["length"],
        [c.title, r.title],
        [c.title, r.title],
    )


def _render(docs: list[Document]) -> str:
    return "\n".join(f"[{i + 1}] {d.title}: {d.text}" for i, d in enumerate(docs))


@register_suite("retrieval")
class RetrievalSuite(Suite):
    system_prompt = (
        "You answer questions about a fictional world. Search the encyclopedia, then answer briefly."
    )

    def entity_tokens(self) -> list[str]:
        return sorted({word for d in CORPUS for word in d.title.replace(" (river)", "").split()})

    @tool
    def search(self, state: dict, query: str, k: int = 3) -> str:
        """Search the encyclopedia and return the best matching entries.

        Args:
            query: keywords, e.g. a name
            k: how many entries to return (1-5)
        """
        if not query.strip():
            raise ToolError("the query is empty")
        if not 1 <= k <= 5:
            raise ToolError("k must be between 1 and 5")
        docs = _Index.search(query, k)
        if not docs:
            raise ToolError(f"no entry matches {query!r}")
        return _render(docs)

    # ---- tasks ---------------------------------------------------------------------------
    def tasks(self, split: str, n: int, seed: int) -> list[Task]:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        rng = random.Random(f"retrieval-{split}-{seed}")
        out: list[Task] = []
        seen: set[str] = set()
        attempts = 0
        while len(out) < n:
            attempts += 1
            if attempts > 200 * (n + 10):
                raise ValueError(f"the corpus has fewer than {n} distinct {split} questions")
            question, answer, gold, queries = _questions(rng)
            if ("test" if zlib.crc32(question.encode()) % 4 == 0 else "train") != split or question in seen:
                continue
            seen.add(question)
            meta = {"gold_titles": gold, "queries": queries, "hops": len(gold)}
            out.append(Task(f"retrieval-{split}-{len(out)}", "retrieval", question, answer, meta))
        return out

    # ---- rules ---------------------------------------------------------------------------
    def final_answer_correct(self, task: Task, final_answer: str | None, state: dict[str, Any]) -> float:
        pred, gold = normalize(final_answer or ""), normalize(task.answer)
        if pred == gold or (_contains(pred, gold) and len(pred) <= len(gold) + 6):
            return 1.0
        return 0.5 if f1(pred, gold) >= 0.5 else 0.0

    def contributions(self, task: Task, steps: list[dict[str, Any]], final_answer: str | None) -> list[float]:
        pending = set(task.meta["gold_titles"])
        scores = []
        for step in steps:
            score = 0.0
            for call in step.get("calls", []):
                if not call.get("ok") or call.get("name") != "search":
                    continue
                hit = {t for t in pending if f"] {t}:" in call.get("output", "")}
                if hit:
                    pending -= hit
                    score = 1.0
            scores.append(score)
        return scores

    # ---- demonstrations ------------------------------------------------------------------
    def demonstration(self, task: Task, rng: random.Random, suboptimal_share: float) -> list[dict[str, Any]]:
        queries = list(task.meta["queries"])
        flaw = rng.choice(SUBOPTIMAL_KINDS) if rng.random() < suboptimal_share else None
        if flaw == "vague_query":
            queries.insert(0, rng.choice(["encyclopedia", "history of the world", "famous people"]))
        elif flaw == "redundant":
            queries.insert(1, queries[0])
        messages: list[dict[str, Any]] = [{"role": "user", "content": task.question}]
        for i, query in enumerate(queries):
            if flaw == "premature_answer" and i == len(queries) - 1 and len(queries) > 1:
                guess = BY_TITLE[task.meta["gold_titles"][0]].facts.get(
                    "birthplace", task.meta["gold_titles"][0]
                )
                messages.append({"role": "assistant", "content": f"The answer is {guess}."})
                return messages
            messages.append({"role": "assistant", "content": call_text("search", {"query": query})})
            try:
                observation = self.search({}, query)
            except ToolError as e:
                observation = f"Error: {e}"
            messages.append({"role": "tool", "content": observation})
        messages.append({"role": "assistant", "content": f"The answer is {task.answer}."})
        return messages
