"""Queue names and the Redis key prefix derived from them (docs/wire-format.md, "Keys")."""

from __future__ import annotations

import re

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
