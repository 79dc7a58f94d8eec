from __future__ import annotations

import re
import threading
import time
import uuid

import pytest

from atr_dist_producer import uuid7, uuid7_timestamp_ms

_SHAPE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def test_layout_is_version_7_variant_10() -> None:
    for _ in range(1000):
        u = uuid7()
        assert u.version == 7
        assert u.variant == uuid.RFC_4122
        assert (u.int >> 76) & 0xF == 0x7
        assert (u.int >> 62) & 0b11 == 0b10
        assert _SHAPE.fullmatch(str(u)), str(u)


def test_timestamp_is_unix_milliseconds_now() -> None:
    before = time.time_ns() // 1_000_000
    u = uuid7()
    after = time.time_ns() // 1_000_000
    assert before <= uuid7_timestamp_ms(u) <= after
    assert uuid7_timestamp_ms(str(u)) == u.int >> 80


def test_ids_strictly_increase_within_a_process() -> None:
    ids = [uuid7() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    # Strings sort like the UUIDs, so ids in listings and Redis keys sort by time too.
    strings = [str(u) for u in ids]
    assert strings == sorted(strings)


def test_ids_sort_by_time_across_milliseconds() -> None:
    first = uuid7()
    time.sleep(0.005)
    second = uuid7()
    assert uuid7_timestamp_ms(second) > uuid7_timestamp_ms(first)
    assert str(second) > str(first)


def test_random_bits_differ() -> None:
    rand_b = {uuid7().int & ((1 << 62) - 1) for _ in range(1000)}
    assert len(rand_b) == 1000


def test_unique_across_threads() -> None:
    results: list[list[uuid.UUID]] = [[] for _ in range(8)]

    def make(out: list[uuid.UUID]) -> None:
        out.extend(uuid7() for _ in range(2000))

    threads = [threading.Thread(target=make, args=(out,)) for out in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [u for out in results for u in out]
    assert len(set(everything)) == len(everything)
    for out in results:
        assert out == sorted(out)


def test_timestamp_of_other_versions_is_refused() -> None:
    with pytest.raises(ValueError, match="version 4"):
        uuid7_timestamp_ms(uuid.uuid4())
