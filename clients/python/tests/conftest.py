"""Fixtures: a real Redis (ATR_DIST_TEST_REDIS, default redis://127.0.0.1:6379) and a fresh
queue per test, whose keys are deleted afterwards."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from atr_dist_producer import Producer

REDIS_URL = os.environ.get("ATR_DIST_TEST_REDIS", "redis://127.0.0.1:6379")
REPO_ROOT = Path(__file__).resolve().parents[3]


def _queue_pattern(queue: str) -> str:
    # '{' and '}' are not glob characters in Redis, so the prefix can be used as it is.
    return f"atr-dist:{{{queue}}}:*"


@pytest.fixture(scope="session")
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError as e:
        pytest.fail(
            f"Redis is not reachable at {REDIS_URL} ({e}); start it with scripts/services.sh "
            "or set ATR_DIST_TEST_REDIS to the URL of one",
            pytrace=False,
        )
    yield client
    client.close()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[redis.Redis]:
    """A redis-server of the test's own, on a free loopback port, stopped afterwards: for a
    test that changes what is server-wide (SCRIPT FLUSH), which on the shared Redis would
    pull the scripts from under every other test running against it."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail(
            "redis-server is not installed; scripts/services.sh installs it", pytrace=False
        )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [server, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"redis-server did not start on 127.0.0.1:{port}", pytrace=False)
            time.sleep(0.02)
    try:
        yield client
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def queue(redis_client: redis.Redis) -> Iterator[str]:
    """A queue name no other test (or concurrent test run) uses."""
    name = f"test-{uuid.uuid4().hex}"
    yield name
    # The queue's keys, and those of its shards 1 and up (docs/wire-format.md, "Shards").
    for pattern in (_queue_pattern(name), f"atr-dist:{{{name}:*"):
        keys = list(redis_client.scan_iter(match=pattern, count=1000))
        if keys:
            redis_client.delete(*keys)


@pytest.fixture
def queue_keys(redis_client: redis.Redis) -> Callable[[str], list[str]]:
    """Lists the Redis keys of a queue, decoded and sorted."""

    def keys(queue: str) -> list[str]:
        return sorted(
            k.decode() for k in redis_client.scan_iter(match=_queue_pattern(queue), count=1000)
        )

    return keys


@pytest.fixture
def producer(redis_client: redis.Redis, queue: str) -> Producer:
    return Producer(redis_client, queue=queue)


@pytest.fixture
def stage_args() -> dict[str, Any]:
    """Arguments of a valid stage job; tests change one thing at a time."""
    return {
        "project_key": "tooling",
        "version_key": "0.1.0",
        "platform": "NPM",
        "package": "tooling-cli",
        "version": "0.1.0",
        "revision": "00002",
        "artifacts": ["dist/tooling-cli-0.1.0.tgz"],
        "asf_uid": "alice",
    }


@pytest.fixture
def promote_args() -> dict[str, Any]:
    """Arguments of a valid promote job."""
    return {
        "project_key": "tooling",
        "version_key": "0.1.0",
        "platform": "NPM_SCOPED",
        "owner_namespace": "apache",
        "package": "tooling-cli",
        "version": "0.1.0",
        "revision": "00003",
        "asf_uid": "bob",
    }
