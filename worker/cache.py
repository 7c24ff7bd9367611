"""The worker's Redis: the result cache (key = model version + heads + text hash, with a TTL) and
the delivery journal of event ids.

Redis being down never stops the stream: lookups miss, writes are skipped, and the cache
reports itself degraded until a call succeeds again (redis-py reconnects by itself).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

KEY_PREFIX = "bertstream:v1"

# The delivery journal: per event id, "source|state" with state claimed or delivered. One round
# trip per batch, atomic per id: a new id is claimed for its source record (topic:partition:offset);
# per key, the entry that holds the id is returned.
_JOURNAL_BEGIN = """
local out = {}
for i, key in ipairs(KEYS) do
  local entry = redis.call('GET', key)
  if not entry then
    entry = ARGV[i + 1] .. '|claimed'
    redis.call('SET', key, entry, 'EX', ARGV[1])
  end
  out[i] = entry
end
return out
"""

# Settle ids of this source only: delivered (kept for the TTL) or released (deleted).
_JOURNAL_SETTLE = """
local n = #KEYS
for i, key in ipairs(KEYS) do
  local source = ARGV[1 + i]
  local entry = redis.call('GET', key)
  if entry and (entry == source or string.sub(entry, 1, #source + 1) == source .. '|') then
    if ARGV[1 + n + i] == '1' then
      redis.call('SET', key, source .. '|delivered', 'EX', ARGV[1])
    else
      redis.call('DEL', key)
    end
  end
end
return n
"""
DELIVERED = "delivered"


def id_key(pipeline: str, topic: str, event_id: str) -> str:
    """Key of an event id's claim: per pipeline and input topic."""
    return f"{KEY_PREFIX}:id:{pipeline}:{topic}:{event_id}"


def cache_key(model_version: str, tasks: list[str], text: str) -> str:
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return f"{KEY_PREFIX}:{model_version}:{','.join(sorted(tasks))}:{digest}"


class ResultCache:
    def __init__(
        self,
        client: aioredis.Redis | None,
        ttl_s: int,
        on_degraded: Callable[[bool, str], None] = lambda degraded, reason: None,
    ) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self.degraded = False
        self._failing: set[str] = set()  # "read", "write": the kinds of call failing now
        self._on_degraded = on_degraded

    @property
    def enabled(self) -> bool:
        return self.client is not None and self.ttl_s > 0

    def _set_degraded(self, degraded: bool, reason: str = "", op: str = "read") -> None:
        """Degraded while reads or writes fail; a read that works does not clear a failing write
        (a read-only replica would flip the state on every batch)."""
        if degraded:
            self._failing.add(op)
        else:
            self._failing.discard(op)
        now = bool(self._failing)
        if now != self.degraded:
            self.degraded = now
            self._on_degraded(now, reason)

    async def get_many(self, keys: list[str]) -> list[dict[str, Any] | None]:
        if not self.enabled or not keys:
            return [None] * len(keys)
        try:
            values = await self.client.mget(keys)
        except (RedisError, OSError) as exc:
            self._set_degraded(True, f"{type(exc).__name__}: {exc}")
            return [None] * len(keys)
        self._set_degraded(False)
        return [_load(v) for v in values]

    async def set_many(self, items: dict[str, dict[str, Any]]) -> None:
        if not self.enabled or not items:
            return
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for key, value in items.items():
                    pipe.set(key, json.dumps(value, separators=(",", ":")), ex=self.ttl_s)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            self._set_degraded(True, f"{type(exc).__name__}: {exc}", op="write")
            return
        self._set_degraded(False, op="write")

    async def journal_begin(self, keys: list[str], sources: list[str]) -> list[tuple[str, str] | None]:
        """(source, state) that holds each id, claiming the new ones for `sources`; None for all
        while Redis is down (fail open: at-least-once, duplicates go through)."""
        if not self.enabled or not keys:
            return [None] * len(keys)
        try:
            found = await self.client.eval(_JOURNAL_BEGIN, len(keys), *keys, self.ttl_s, *sources)
        except (RedisError, OSError) as exc:
            self._set_degraded(True, f"{type(exc).__name__}: {exc}", op="write")
            return [None] * len(keys)
        self._set_degraded(False, op="write")
        entries = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in found]
        return [_journal_entry(e) for e in entries]

    async def journal_settle(self, entries: list[tuple[str, str, bool]]) -> None:
        """(key, source, delivered) per id: delivered ids are kept, the others released."""
        if not self.enabled or not entries:
            return
        keys = [key for key, _, _ in entries]
        args = [source for _, source, _ in entries] + ["1" if ok else "0" for _, _, ok in entries]
        try:
            await self.client.eval(_JOURNAL_SETTLE, len(keys), *keys, self.ttl_s, *args)
        except (RedisError, OSError) as exc:
            self._set_degraded(True, f"{type(exc).__name__}: {exc}", op="write")
            return
        self._set_degraded(False, op="write")

    async def ping(self) -> bool:
        if self.client is None:
            return False
        try:
            return bool(await self.client.ping())
        except (RedisError, OSError):
            return False


def results_match(results: Any, labels: dict[str, list[str]]) -> bool:
    """Whether cached results have exactly these tasks, each with one of its labels, a score in
    [0, 1] and a probability for every label: anything else is treated as a miss."""
    if not isinstance(results, dict) or set(results) != set(labels):
        return False
    for task, result in results.items():
        if not isinstance(result, dict) or result.get("label") not in labels[task]:
            return False
        scores = result.get("scores")
        if not isinstance(scores, dict) or set(scores) != set(labels[task]):
            return False
        values = [result.get("score"), *scores.values()]
        if not all(isinstance(v, int | float) and not isinstance(v, bool) and 0.0 <= v <= 1.0 for v in values):
            return False
    return True


def _journal_entry(entry: str) -> tuple[str, str]:
    """(source, state) of a journal value "source|state"; a value without a state is a claim."""
    source, sep, state = entry.rpartition("|")
    return (source, state) if sep else (entry, "claimed")


def _load(value: bytes | None) -> dict[str, Any] | None:
    """A cached result, or None (a miss) when absent or not what this version wrote."""
    if value is None:
        return None
    try:
        doc = json.loads(value)
    except ValueError:
        return None
    if (
        not isinstance(doc, dict)
        or not isinstance(doc.get("results"), dict)
        or not isinstance(doc.get("truncated"), bool)
    ):
        return None
    return doc
