from __future__ import annotations

import pytest
import redis

from atr_dist_producer import Producer, key_prefix, validate_queue_name


@pytest.mark.parametrize("name", ["default", "a", "A-Z_a.z-09", "tooling.release-2"])
def test_valid_queue_names(name: str) -> None:
    assert validate_queue_name(name) == name
    assert key_prefix(name) == f"atr-dist:{{{name}}}:"


@pytest.mark.parametrize(
    "name", ["", " ", "a b", "a}b", "a{b", "a:b", "a/b", "a*", "default\n", "é"]
)
def test_invalid_queue_names(name: str) -> None:
    with pytest.raises(ValueError, match="invalid queue name"):
        validate_queue_name(name)


def test_producer_refuses_invalid_queue_name() -> None:
    # No connection is made: the name is refused before the client is used.
    client = redis.Redis(host="127.0.0.1", port=1)
    with pytest.raises(ValueError, match="invalid queue name"):
        Producer(client, queue="bad}name")


def test_producer_refuses_non_string_queue_name() -> None:
    with pytest.raises(ValueError, match="must be a str"):
        Producer(redis.Redis(host="127.0.0.1", port=1), queue=7)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [0, -1, True, 1.5, "3", 1 << 32])
def test_producer_refuses_bad_default_max_attempts(value: object) -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        Producer(redis.Redis(host="127.0.0.1", port=1), max_attempts=value)  # type: ignore[arg-type]


def test_producer_exposes_queue_and_prefix() -> None:
    p = Producer(redis.Redis(host="127.0.0.1", port=1), queue="releases")
    assert p.queue == "releases"
    assert p.key_prefix == "atr-dist:{releases}:"
