"""A queue sharded over several hash tags (docs/wire-format.md, "Shards"): the producer puts
each job on its distribution's shard, finds it there, and ``Results`` reads every shard's
stream. The worker's side is tests/tests/shards.rs."""

from __future__ import annotations

import threading
import time
from typing import Any

import redis

from atr_dist_producer import Producer, Results, shard_key, shard_of, shard_prefix
from atr_dist_producer.envelope import build_stage_envelope
from atr_dist_producer.resources import script_source


def shard(client: redis.Redis, queue: str, count: int) -> None:
    """What `atr-dist queue shards <count>` writes."""
    for i in range(count):
        client.set(shard_prefix(queue, i) + "format", "8")
    client.set(shard_prefix(queue, 0) + "shards", str(count))


def envelopes(stage_args: dict[str, Any], n: int) -> list[dict[str, Any]]:
    return [build_stage_envelope(**{**stage_args, "version": f"0.1.{i}"}) for i in range(n)]


def lease_and_ack(client: redis.Redis, prefix: str) -> str:
    """Leases one job of the shard and acks it done, as a worker would; returns its id."""
    reply = client.eval(script_source("fetch"), 1, prefix + "queued", prefix, "w1", 60000, 1)
    job_id, token = reply[2].decode(), reply[3].decode()
    client.eval(script_source("ack"), 1, prefix + "queued", prefix, 1, job_id, token, "")
    return job_id


def test_shard_prefixes() -> None:
    assert shard_prefix("default", 0) == "atr-dist:{default}:"
    assert shard_prefix("default", 5) == "atr-dist:{default:5}:"


def test_jobs_go_to_their_distributions_shard_and_are_found_there(
    redis_client: redis.Redis, queue: str, stage_args: dict[str, Any]
) -> None:
    shard(redis_client, queue, 3)
    producer = Producer(redis_client, queue=queue)
    jobs = envelopes(stage_args, 20)
    results = producer.enqueue_many(jobs)
    assert [r.id for r in results] == [e["id"] for e in jobs]
    used = set()
    for envelope in jobs:
        home = shard_of(shard_key(envelope), 3)
        used.add(home)
        assert redis_client.hexists(shard_prefix(queue, home) + "jobs", envelope["id"])
        status = producer.status(envelope["id"])
        assert status is not None and status.state == "queued"
    assert used == {0, 1, 2}, "20 distributions use every shard"
    # Idempotency holds on the distribution's shard: enqueuing again creates nothing.
    again = producer.enqueue_many(jobs)
    assert [r.created for r in again] == [False] * len(jobs)
    assert [r.id for r in again] == [e["id"] for e in jobs]


def test_an_unsharded_queue_is_written_as_before(
    redis_client: redis.Redis, queue: str, queue_keys: Any, stage_args: dict[str, Any]
) -> None:
    Producer(redis_client, queue=queue).enqueue_many(envelopes(stage_args, 3))
    assert all(k.startswith(f"atr-dist:{{{queue}}}:") for k in queue_keys(queue))
    assert not list(redis_client.scan_iter(match=f"atr-dist:{{{queue}:*"))
    assert redis_client.get(shard_prefix(queue, 0) + "format") == b"7"


def test_results_read_every_shards_stream(
    redis_client: redis.Redis, queue: str, stage_args: dict[str, Any]
) -> None:
    shard(redis_client, queue, 3)
    producer = Producer(redis_client, queue=queue)
    jobs = envelopes(stage_args, 9)
    producer.enqueue_many(jobs)
    results = Results(redis_client, queue=queue, group="atr", consumer="c1")
    ended = set()
    for i in range(3):
        prefix = shard_prefix(queue, i)
        while redis_client.llen(prefix + "queued"):
            ended.add(lease_and_ack(redis_client, prefix))
    assert ended == {e["id"] for e in jobs}
    seen = {}
    for result in results.read(count=100):
        seen[result.id] = result
        assert result.state == "done" and result.atr_status == "COMPLETED"
        assert redis_client.hexists(shard_prefix(queue, result.shard) + "jobs", result.id)
        results.ack(result)
    assert set(seen) == ended
    # Every entry of every shard is acked: nothing is pending, nothing new.
    for i in range(3):
        pending = redis_client.xpending(shard_prefix(queue, i) + "results", "atr")
        assert pending["pending"] == 0
    assert list(results.read(count=100)) == []


def test_a_blocking_read_wakes_for_a_result_on_another_shard(
    redis_client: redis.Redis, queue: str, stage_args: dict[str, Any]
) -> None:
    shard(redis_client, queue, 2)
    producer = Producer(redis_client, queue=queue)
    results = Results(redis_client, queue=queue, group="atr", consumer="c1")
    jobs = envelopes(stage_args, 8)
    producer.enqueue_many(jobs)
    home = {e["id"]: shard_of(shard_key(e), 2) for e in jobs}
    target = next(e["id"] for e in jobs if home[e["id"]] == 1)

    def finish_later() -> None:
        time.sleep(0.3)
        prefix = shard_prefix(queue, 1)
        while lease_and_ack(redis_client, prefix) != target:
            pass

    worker = threading.Thread(target=finish_later)
    worker.start()
    start = time.monotonic()
    got: list[str] = []
    while target not in got and time.monotonic() - start < 10:
        got += [r.id for r in results.read(count=100, block_ms=1000)]
    worker.join()
    assert target in got


def test_wait_follows_jobs_on_several_shards(
    redis_client: redis.Redis, queue: str, stage_args: dict[str, Any]
) -> None:
    shard(redis_client, queue, 3)
    producer = Producer(redis_client, queue=queue)
    jobs = envelopes(stage_args, 6)
    producer.enqueue_many(jobs)

    def finish_all() -> None:
        time.sleep(0.2)
        for i in range(3):
            prefix = shard_prefix(queue, i)
            while redis_client.llen(prefix + "queued"):
                lease_and_ack(redis_client, prefix)

    worker = threading.Thread(target=finish_all)
    worker.start()
    statuses = producer.wait([e["id"] for e in jobs], timeout=10, poll=0.5)
    worker.join()
    assert all(s is not None and s.state == "done" for s in statuses.values())
