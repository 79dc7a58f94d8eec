"""Queue names and the Redis key prefix derived from them (docs/wire-format.md, "Keys")."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Mapping
from typing import Any

_QUEUE_NAME = re.compile(r"[A-Za-z0-9._-]+")


def validate_queue_name(name: str) -> str:
    """Returns ``name`` if it is a valid queue name, else raises ``ValueError``.

    Queue names are limited to ``A-Z a-z 0-9 - _ .`` because they sit inside the ``{...}``
    Redis Cluster hash tag: a ``}`` or ``:`` would change which slot, or which keys, a
    queue's scripts touch.
    """
    if not isinstance(name, str):
        raise ValueError(f"queue name must be a str, not {type(name).__name__}")
    if not _QUEUE_NAME.fullmatch(name):
        raise ValueError(
            f"invalid queue name {name!r}: use one or more of A-Z a-z 0-9 - _ . (e.g. 'default')"
        )
    return name


def key_prefix(queue: str) -> str:
    """The prefix of every key of ``queue``, e.g. ``atr-dist:{default}:``."""
    return f"atr-dist:{{{validate_queue_name(queue)}}}:"


MAX_SHARDS = 64
"""The most shards a queue may have (docs/wire-format.md, "Shards")."""

SHARD_COUNT_CACHE_S = 1.0
"""How long a producer trusts the shard count it read; atr-dist applies a lowered count only
after twice this, so no producer still uses the old one."""


def shard_prefix(queue: str, shard: int) -> str:
    """The prefix of the keys of shard ``shard`` of ``queue``: ``atr-dist:{default}:`` for
    shard 0 (an unsharded queue's keys), ``atr-dist:{default:2}:`` for shard 2."""
    name = validate_queue_name(queue)
    if shard == 0:
        return f"atr-dist:{{{name}}}:"
    return f"atr-dist:{{{name}:{shard}}}:"


def shard_of(key: str, count: int) -> int:
    """The shard, of ``count``, of the distribution ``key`` (``shard_key``): the first 8 bytes
    of the SHA-256 of its UTF-8 bytes, as a big-endian unsigned integer, modulo ``count``.
    The worker computes the same."""
    if count <= 1:
        return 0
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


def shard_key(envelope: Mapping[str, Any]) -> str | None:
    """The distribution key that chooses an envelope's shard,
    ``<project_key>-<version_key>|<platform>|<owner_namespace>|<package>|<version>``, the
    fields as the envelope spells them (no ``owner_namespace`` = empty); ``None`` when the
    envelope does not hold them as strings."""
    payload = envelope.get("payload")
    if not isinstance(payload, Mapping):
        return None
    release = payload.get("release")
    dist = payload.get("distribution")
    if not isinstance(release, Mapping) or not isinstance(dist, Mapping):
        return None
    namespace = dist.get("owner_namespace")
    if namespace is None:
        namespace = ""
    parts = [
        release.get("project_key"),
        release.get("version_key"),
        dist.get("platform"),
        namespace,
        dist.get("package"),
        dist.get("version"),
    ]
    if not all(isinstance(p, str) for p in parts):
        return None
    project, version_key, platform, namespace, package, version = parts
    return f"{project}-{version_key}|{platform}|{namespace}|{package}|{version}"


def read_shard_count(redis: Any, queue: str) -> int:
    """The shard count stored in shard 0's ``shards`` key (absent = 1)."""
    raw = redis.get(key_prefix(queue) + "shards")
    if raw is None:
        return 1
    text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
    try:
        count = int(text)
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_SHARDS:
        raise ValueError(
            f"{key_prefix(queue)}shards holds {text!r}, not a shard count from 1 to {MAX_SHARDS}"
        )
    return count


class ShardCount:
    """A queue's shard count, read again once it is ``SHARD_COUNT_CACHE_S`` old."""

    def __init__(self, redis: Any, queue: str) -> None:
        self._redis = redis
        self._queue = queue
        self._count = 1
        self._read_at: float | None = None

    def get(self) -> int:
        now = time.monotonic()
        if self._read_at is None or now - self._read_at >= SHARD_COUNT_CACHE_S:
            self._count = read_shard_count(self._redis, self._queue)
            self._read_at = now
        return self._count
