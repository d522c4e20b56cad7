"""An async client for an OpenAI-compatible judge: bounded concurrency, timeouts, retries with
exponential backoff, and a reply cache keyed by the request.

Why each part: a training batch asks for hundreds of judgments, so they run concurrently but under
a semaphore (endpoints rate-limit); endpoints fail transiently (429, 5xx, timeouts) and models
sometimes answer off-schema, so both are retried; the same trajectory is judged again when a run
resumes or a batch is re-scored, so replies are cached by the hash of (request, sample). A reply
that never becomes usable is returned as ``None`` and counted; it never raises into training.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from steprl.reward_sources.judge import JudgeReplyError, JudgeSample, parse_judge_reply

logger = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


def cache_key(body: dict[str, Any]) -> str:
    """sha256 of the rendered request: messages + schema + model + sampling settings + seed (the
    seed is ``judge_seed + sample index``, so each of the k samples has its own entry)."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class JudgeCache:
    """Parsed judgments by request key, in memory and optionally in a directory (one JSON file per
    key, written atomically, so several reward workers and later runs can share it)."""

    def __init__(self, directory: str | None = None) -> None:
        self.memory: dict[str, JudgeSample] = {}
        self.dir = Path(directory).expanduser() if directory else None
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        assert self.dir is not None
        return self.dir / key[:2] / f"{key}.json"

    def get(self, key: str) -> JudgeSample | None:
        if key in self.memory:
            return self.memory[key]
        if self.dir is None:
            return None
        path = self._path(key)
        try:
            d = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        sample = JudgeSample(
            tuple(d["succeed_tool_calling"]),
            tuple(d["contribution_to_final_answer"]),
            d["final_answer_status"],
        )
        self.memory[key] = sample
        return sample

    def put(self, key: str, sample: JudgeSample) -> None:
        self.memory[key] = sample
        if self.dir is None:
            return
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(sample.to_json()))
        os.replace(tmp, path)


class JudgeClient:
    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        concurrency: int = 8,
        timeout: float = 60.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        cache: JudgeCache | None = None,
    ) -> None:
        base = url.rstrip("/")
        self.url = base if base.endswith("/chat/completions") else base + "/chat/completions"
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.concurrency, self.timeout = concurrency, timeout
        self.max_retries, self.backoff = max_retries, backoff
        self.cache = cache if cache is not None else JudgeCache()
        self.counts: Counter[str] = Counter()
        self.seconds = 0.0

    async def judge_all(self, requests: list[tuple[dict[str, Any], int]]) -> list[JudgeSample | None]:
        """One parsed sample (or None) per ``(request body, number of steps)``, in order."""
        t0 = time.perf_counter()
        sem = asyncio.Semaphore(self.concurrency)
        async with httpx.AsyncClient(timeout=self.timeout, headers=self.headers) as http:
            out = await asyncio.gather(*(self._one(http, sem, body, n) for body, n in requests))
        self.seconds += time.perf_counter() - t0
        return list(out)

    async def _one(
        self, http: httpx.AsyncClient, sem: asyncio.Semaphore, body: dict[str, Any], n: int
    ) -> JudgeSample | None:
        key = cache_key(body)
        hit = self.cache.get(key)
        if hit is not None:
            self.counts["cache_hits"] += 1
            return hit
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.counts["retries"] += 1
                await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
            retriable, sample = await self._attempt(http, sem, body, n)
            if sample is not None:
                self.cache.put(key, sample)
                return sample
            if not retriable:
                break
        self.counts["failed_samples"] += 1
        return None

    async def _attempt(
        self, http: httpx.AsyncClient, sem: asyncio.Semaphore, body: dict[str, Any], n: int
    ) -> tuple[bool, JudgeSample | None]:
        """(worth retrying, the sample if this attempt gave one)."""
        async with sem:
            self.counts["requests"] += 1
            try:
                resp = await http.post(self.url, json=body)
            except httpx.TimeoutException:
                self.counts["timeouts"] += 1
                return True, None
            except httpx.HTTPError as e:
                self.counts["http_errors"] += 1
                logger.warning("judge request failed: %s: %s", type(e).__name__, e)
                return True, None
        if resp.status_code != 200:
            self.counts["http_errors"] += 1
            logger.warning("judge replied HTTP %d: %s", resp.status_code, resp.text[:200])
            return resp.status_code in RETRY_STATUS, None
        try:
            return False, parse_judge_reply(resp.json(), n)
        except ValueError as e:  # JudgeReplyError, or a body that is not JSON at all
            kind = e.kind if isinstance(e, JudgeReplyError) else "malformed"
            self.counts[kind] += 1
            return True, None

    def pop_metrics(self) -> dict[str, float]:
        out = {f"judge/{k}": float(v) for k, v in self.counts.items()}
        out["judge/seconds"] = self.seconds
        self.counts.clear()
        self.seconds = 0.0
        return out
