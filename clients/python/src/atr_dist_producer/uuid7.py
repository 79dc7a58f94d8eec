"""UUID version 7 (RFC 9562): time-ordered ids, as the Rust side makes with ``Uuid::now_v7``.

Python's ``uuid`` module gains ``uuid7`` only in 3.14, so this is a small implementation.
Layout, most significant bit first:

    48 bits  unix_ts_ms   milliseconds since the Unix epoch
     4 bits  ver          0b0111
    12 bits  rand_a       sub-millisecond fraction of the clock (RFC 9562 section 6.2, method 3)
     2 bits  var          0b10
    62 bits  rand_b       random, from os.urandom

Using ``rand_a`` for the sub-millisecond time makes ids from different processes sort by
time to about a quarter of a microsecond. Within one process ids are also strictly
increasing, even when the clock stands still or steps back: a new id is never lower than the
previous one, so jobs enqueued in a loop keep their order in ``atr-dist jobs`` listings.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

_NS_PER_MS = 1_000_000
_RAND_A_MAX = (1 << 12) - 1
_TIMESTAMP_MAX = (1 << 48) - 1

_lock = threading.Lock()
# (unix_ts_ms, rand_a) of the last id made by this process.
_last: tuple[int, int] = (0, -1)


def _reset_lock_after_fork() -> None:
    # A thread of the parent may have held the lock at fork(); the child has no such thread.
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_lock_after_fork)


def _next_time() -> tuple[int, int]:
    """The (ms, sub-ms) pair for a new id: the clock, or one step past the last id if later."""
    global _last
    ns = time.time_ns()
    ms, frac = divmod(ns, _NS_PER_MS)
    sub_ms = frac * (_RAND_A_MAX + 1) // _NS_PER_MS
    with _lock:
        last_ms, last_sub = _last
        if (ms, sub_ms) <= (last_ms, last_sub):
            # Same fraction of a millisecond as the last id, or the clock went back: count
            # on from the last id, carrying into the millisecond when the 12 bits run out.
            ms, sub_ms = last_ms, last_sub + 1
            if sub_ms > _RAND_A_MAX:
                ms, sub_ms = ms + 1, 0
        _last = (ms, sub_ms)
    return ms, sub_ms


def uuid7() -> uuid.UUID:
    """A new UUIDv7, later than every other one this process has made."""
    ms, sub_ms = _next_time()
    if ms > _TIMESTAMP_MAX:
        raise OverflowError("the clock is past the year 10889, beyond UUIDv7's 48-bit timestamp")
    rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms << 80) | (0x7 << 76) | (sub_ms << 64) | (0b10 << 62) | rand_b
    return uuid.UUID(int=value)


def uuid7_timestamp_ms(value: uuid.UUID | str) -> int:
    """The Unix time in milliseconds embedded in a UUIDv7."""
    u = value if isinstance(value, uuid.UUID) else uuid.UUID(value)
    if u.version != 7:
        raise ValueError(f"{u} is a version {u.version} UUID, not version 7")
    return u.int >> 80
