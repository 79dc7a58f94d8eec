"""Job status and the results stream against a real Redis, the transitions made by the
worker's own scripts (lua/cancel.lua, lua/ack.lua). The whole loop with the real worker is
tests/tests/python_producer.rs."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import redis

from atr_dist_producer import Producer, Results, distribution_fields
from atr_dist_producer.resources import script_source


def cancel(client: redis.Redis, queue: str, job_id: str) -> str:
    prefix = f"atr-dist:{{{queue}}}:"
    reply = client.eval(script_source("cancel"), 1, prefix + "queued", prefix, "by test", job_id)
    return reply[0].decode()


def lease(client: redis.Redis, queue: str) -> tuple[str, str]:
    """Leases the next job as a worker would: (id, lease token)."""
    prefix = f"atr-dist:{{{queue}}}:"
    reply = client.eval(script_source("fetch"), 1, prefix + "queued", prefix, "w1", 60000, 1)
    # now_ms and wait_ms come first.
    return reply[2].decode(), reply[3].decode()


def ack_done(client: redis.Redis, queue: str, job_id: str, token: str, report: dict[str, Any]):
    prefix = f"atr-dist:{{{queue}}}:"
    return client.eval(
        script_source("ack"), 1, prefix + "queued", prefix, 1, job_id, token, json.dumps(report)
    )


REPORT = {
    "kind": "stage",
    "distribution": {"release_key": "tooling-0.1.0", "platform": "NPM", "owner_namespace": "",
                     "package": "tooling-cli", "version": "0.1.0"},
    "revision": "00002",
    "outcome": "completed",
    "dry_run": False,
    "staged": True,
    "promoted": False,
    "upload_date": "2026-12-06T10:00:00Z",
    "api_url": "https://registry.npmjs.org/tooling-cli",
    "platform_digest": "sha512-" + "A" * 86 + "==",
    "manifest_digest": "sha3-256:" + "ab" * 32,
}


def test_status_follows_a_job_from_queued_to_done_with_its_report(
    producer: Producer, redis_client: redis.Redis, queue: str, stage_args: dict[str, Any]
) -> None:
    job = producer.enqueue_stage(**stage_args)
    queued = producer.status(job.id)
    assert queued is not None
    assert (queued.state, queued.atr_status, queued.attempt, queued.max_attempts) == (
        "queued", "QUEUED", 0, 10)
    assert queued.report is None and not queued.ended

    job_id, token = lease(redis_client, queue)
    assert job_id == job.id
    running = producer.status(job.id)
    assert (running.state, running.atr_status, running.attempt) == ("running", "ACTIVE", 1)
    assert running.started_at is not None

    assert ack_done(redis_client, queue, job_id, token, REPORT) == [b"done"]
    done = producer.status(job.id)
    assert (done.state, done.atr_status, done.outcome) == ("done", "COMPLETED", "completed")
    assert done.ended and done.finished_at is not None
    assert done.report.api_url == REPORT["api_url"]
    assert done.report.upload_date.year == 2026
    assert producer.status("0190b6c8-0000-7000-8000-000000000000") is None


def test_a_cancelled_job_is_reported_with_its_envelope(
    producer: Producer, redis_client: redis.Redis, queue: str, stage_args: dict[str, Any]
) -> None:
    job = producer.enqueue_stage(**stage_args)
    assert cancel(redis_client, queue, job.id) == "changed cancelled"
    results = Results(redis_client, queue=queue, group="atr", consumer="c1")
    got = list(results.read())
    assert len(got) == 1
    r = got[0]
    assert (r.id, r.state, r.atr_status, r.message) == (job.id, "cancelled", "FAILED", "by test")
    assert r.report is None
    # No worker reported on it: the envelope says what it was.
    assert r.kind == "stage"
    assert r.distribution == {"release_key": "tooling-0.1.0", "platform": "NPM",
                              "owner_namespace": "", "package": "tooling-cli",
                              "version": "0.1.0"}
    assert distribution_fields(r) is None
    status = producer.status(job.id)
    assert (status.state, status.atr_status, status.last_error) == (
        "cancelled", "FAILED", "by test")
    assert status.finished_at is not None


def test_a_result_a_crashed_consumer_did_not_ack_is_claimed_by_another(
    producer: Producer, redis_client: redis.Redis, queue: str, stage_args: dict[str, Any]
) -> None:
    job = producer.enqueue_stage(**stage_args)
    job_id, token = lease(redis_client, queue)
    ack_done(redis_client, queue, job_id, token, REPORT)

    crashed = Results(redis_client, queue=queue, group="atr", consumer="crashed")
    assert [r.id for r in crashed.read()] == [job.id]  # read, never acked
    survivor = Results(redis_client, queue=queue, group="atr", consumer="survivor",
                       claim_after_ms=0)
    claimed = list(survivor.read())
    assert [r.id for r in claimed] == [job.id]
    fields = distribution_fields(claimed[0])
    assert fields is not None
    assert (fields["staging"], fields["pending"], fields["api_url"]) == (
        True, False, REPORT["api_url"])
    survivor.ack(claimed[0])
    assert list(survivor.read()) == []
    assert list(crashed.read()) == []
    # Another group (another consumer application) sees every result from the start.
    assert [r.id for r in Results(redis_client, queue=queue, group="audit").read()] == [job.id]


def test_wait_returns_when_the_job_ends_not_at_the_timeout(
    producer: Producer, redis_client: redis.Redis, queue: str, stage_args: dict[str, Any]
) -> None:
    job = producer.enqueue_stage(**stage_args)
    timer = threading.Timer(0.3, lambda: cancel(redis_client, queue, job.id))
    timer.start()
    started = time.monotonic()
    statuses = producer.wait([job.id], timeout=60, poll=30)
    timer.join()
    assert statuses[job.id].state == "cancelled"
    # Woken by the results stream, not by the 30 s poll or the 60 s timeout.
    assert time.monotonic() - started < 20
    # A job still waiting comes back as it is at the timeout.
    other = producer.enqueue_stage(**{**stage_args, "version": "0.2.0"})
    assert producer.wait([other.id], timeout=0.2)[other.id].state == "queued"


def test_one_entry_names_the_jobs_one_ack_ended_and_is_acked_with_the_last(
    producer: Producer, redis_client: redis.Redis, queue: str, stage_args: dict[str, Any]
) -> None:
    first = producer.enqueue_stage(**stage_args)
    second = producer.enqueue_stage(**{**stage_args, "version": "0.2.0"})
    prefix = f"atr-dist:{{{queue}}}:"
    reply = redis_client.eval(script_source("fetch"), 1, prefix + "queued", prefix, "w1", 60000, 2)
    (a, lease_a), (b, lease_b) = (reply[2].decode(), reply[3].decode()), (
        reply[5].decode(), reply[6].decode())
    # Both succeed in one ack; only the first has a report.
    redis_client.eval(script_source("ack"), 1, prefix + "queued", prefix, 2,
                      a, lease_a, json.dumps(REPORT), b, lease_b, "")
    assert redis_client.xlen(prefix + "results") == 1
    results = Results(redis_client, queue=queue, group="atr", consumer="c1")
    got = list(results.read())
    assert [(r.id, r.state, r.atr_status, r.attempt) for r in got] == [
        (a, "done", "COMPLETED", 1), (b, "done", "COMPLETED", 1)]
    assert {a, b} == {first.id, second.id}
    assert got[0].report is not None and got[0].report.outcome == "completed"
    assert got[1].report is None and got[1].envelope is not None
    assert got[0].stream_id == got[1].stream_id
    # The entry stays pending until both are applied.
    results.ack(got[0])
    assert redis_client.xpending(prefix + "results", "atr")["pending"] == 1
    results.ack(got[1])
    assert redis_client.xpending(prefix + "results", "atr")["pending"] == 0


def test_an_entry_written_in_wire_format_6_is_read(
    redis_client: redis.Redis, queue: str
) -> None:
    prefix = f"atr-dist:{{{queue}}}:"
    redis_client.xadd(prefix + "results", {
        "id": "old-job", "state": "dead", "atr_status": "BROKEN", "attempt": "3",
        "error_class": "transient", "message": "503", "batch": "", "result": json.dumps(REPORT),
    })
    results = Results(redis_client, queue=queue, group="atr", consumer="c1")
    got = list(results.read())
    assert [(r.id, r.state, r.atr_status, r.attempt, r.error_class, r.message) for r in got] == [
        ("old-job", "dead", "BROKEN", 3, "transient", "503")]
    assert got[0].report is not None
    results.ack(got[0])
    assert redis_client.xpending(prefix + "results", "atr")["pending"] == 0
