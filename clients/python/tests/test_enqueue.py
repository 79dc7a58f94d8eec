"""Enqueuing against a real Redis: the hash fields, lists and sets of docs/wire-format.md."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import redis

from atr_dist_producer import (
    JobIdConflict,
    Producer,
    build_promote_envelope,
    build_stage_envelope,
    default_idempotency_key,
    uuid7_timestamp_ms,
)

from conftest import REDIS_URL

SHA = "0" * 63 + "1"


JOB_FIELD_HASHES = (
    "jobs",
    "queued_at",
    "error_class",
    "last_error",
    "cancel_requested",
)


def job_fields(client: redis.Redis, queue: str, job_id: str) -> dict[str, str]:
    """The job's entries in the queue's per-job field hashes, by hash name."""
    out = {}
    for name in JOB_FIELD_HASHES:
        raw = client.hget(f"atr-dist:{{{queue}}}:{name}", job_id)
        if raw is not None:
            out[name] = raw.decode()
    return out


def batch_of(client: redis.Redis, queue: str, job_id: str) -> str:
    """The job's envelope batch: the fourth word of its record."""
    record = client.hget(f"atr-dist:{{{queue}}}:jobs", job_id)
    assert record is not None, f"no record for {job_id}"
    return record.decode().split(" ")[3]


def stored_envelope(client: redis.Redis, queue: str, job_id: str) -> dict[str, Any]:
    batch = batch_of(client, queue, job_id)
    raw = client.hget(f"atr-dist:{{{queue}}}:env:{batch}", job_id)
    assert raw is not None, f"no envelope stored for {job_id} in batch {batch}"
    return json.loads(raw)


def key_holder(client: redis.Redis, queue: str, key: str) -> str | None:
    raw = client.hget(f"atr-dist:{{{queue}}}:idempotency", key)
    return None if raw is None else raw.decode()


def queued_ids(client: redis.Redis, queue: str) -> list[str]:
    return [i.decode() for i in client.lrange(f"atr-dist:{{{queue}}}:queued", 0, -1)]


def now_ms() -> int:
    return int(datetime.now(timezone.utc).timestamp() * 1000)


def test_stage_job_has_the_documented_fields(
    producer: Producer, redis_client: redis.Redis, queue: str, stage_args: dict[str, Any]
) -> None:
    before = now_ms()
    result = producer.enqueue_stage(**stage_args)
    assert result.created
    assert uuid.UUID(result.id).version == 7

    job = job_fields(redis_client, queue, result.id)
    idem = "stage:tooling-0.1.0:NPM::tooling-cli:0.1.0:00002"
    # A new job has its record, `<state> <max_attempts> <enqueued_ms> <batch>`; the other
    # fields are absent until they apply (queued_at = the enqueue time).
    assert set(job) == {"jobs"}
    state, max_attempts, enqueued_at_ms, batch = job["jobs"].split(" ")
    assert state == "queued"
    assert max_attempts == "10"
    # A call that creates one job keeps its envelope in the queue's shared batch 0 and takes
    # no batch number of its own (docs/wire-format.md, "Enqueue").
    assert batch == "0"
    assert redis_client.hkeys(f"atr-dist:{{{queue}}}:env:0") == [result.id.encode()]
    assert not redis_client.exists(f"atr-dist:{{{queue}}}:batches")
    assert not redis_client.exists(f"atr-dist:{{{queue}}}:incoming")
    # Times come from the Redis server's clock; allow for skew with this machine's.
    assert abs(int(enqueued_at_ms) - before) < 60_000

    envelope = stored_envelope(redis_client, queue, result.id)
    enqueued_at = envelope.pop("enqueued_at")
    assert enqueued_at.endswith("Z")
    assert (
        abs(datetime.fromisoformat(enqueued_at.replace("Z", "+00:00")).timestamp() * 1000 - before)
        < 5_000
    )
    assert envelope == {
        "v": 1,
        "id": result.id,
        "idempotency_key": idem,
        "kind": "stage",
        "payload": {
            "release": {"project_key": "tooling", "version_key": "0.1.0"},
            "distribution": {
                "platform": "NPM",
                "owner_namespace": "",
                "package": "tooling-cli",
                "version": "0.1.0",
            },
            "revision": "00002",
            "source": {"type": "dir"},
            "artifacts": ["dist/tooling-cli-0.1.0.tgz"],
            "dry_run": False,
            "asf_uid": "alice",
        },
    }
    assert queued_ids(redis_client, queue) == [result.id]
    assert key_holder(redis_client, queue, idem) == result.id
    assert redis_client.get(f"atr-dist:{{{queue}}}:format") == b"7"
    assert redis_client.hget(f"atr-dist:{{{queue}}}:stats", "enqueued") == b"1"


def test_promote_job_has_the_documented_fields(
    producer: Producer, redis_client: redis.Redis, queue: str, promote_args: dict[str, Any]
) -> None:
    result = producer.enqueue_promote(
        **promote_args, source={"type": "atr"}, release_tag="latest", max_attempts=3
    )
    assert result.created

    job = job_fields(redis_client, queue, result.id)
    idem = "promote:tooling-0.1.0:NPM_SCOPED:apache:tooling-cli:0.1.0:00003"
    assert job["jobs"].split(" ")[:2] == ["queued", "3"]
    assert key_holder(redis_client, queue, idem) == result.id

    envelope = stored_envelope(redis_client, queue, result.id)
    del envelope["enqueued_at"]
    assert envelope == {
        "v": 1,
        "id": result.id,
        "idempotency_key": idem,
        "kind": "promote",
        "payload": {
            "release": {"project_key": "tooling", "version_key": "0.1.0"},
            "distribution": {
                "platform": "NPM_SCOPED",
                "owner_namespace": "apache",
                "package": "tooling-cli",
                "version": "0.1.0",
            },
            "revision": "00003",
            "source": {"type": "atr"},
            "release_tag": "latest",
            "dry_run": False,
            "asf_uid": "bob",
        },
    }
    assert queued_ids(redis_client, queue) == [result.id]


def test_optional_tags_are_left_out_not_null(
    producer: Producer,
    redis_client: redis.Redis,
    queue: str,
    stage_args: dict[str, Any],
    promote_args: dict[str, Any],
) -> None:
    staged = producer.enqueue_stage(**stage_args)
    promoted = producer.enqueue_promote(**promote_args)
    stage_payload = stored_envelope(redis_client, queue, staged.id)["payload"]
    promote_payload = stored_envelope(redis_client, queue, promoted.id)["payload"]
    assert "staging_tag" not in stage_payload
    assert "release_tag" not in promote_payload


def test_inline_source_round_trips(
    producer: Producer, redis_client: redis.Redis, queue: str, stage_args: dict[str, Any]
) -> None:
    manifest = {"entries": [{"path": "dist/tooling-cli-0.1.0.tgz", "size": 1234, "sha3_256": SHA}]}
    result = producer.enqueue_stage(
        **stage_args, source={"type": "inline", "manifest": manifest}, staging_tag="rc"
    )
    payload = stored_envelope(redis_client, queue, result.id)["payload"]
    assert payload["source"] == {"type": "inline", "manifest": manifest}
    assert payload["staging_tag"] == "rc"


def test_repeated_enqueue_returns_the_existing_job(
    producer: Producer, redis_client: redis.Redis, queue: str, stage_args: dict[str, Any]
) -> None:
    first = producer.enqueue_stage(**stage_args)
    second = producer.enqueue_stage(**stage_args)
    assert first.created
    assert not second.created
    assert second.id == first.id
    assert queued_ids(redis_client, queue) == [first.id]
    assert redis_client.hget(f"atr-dist:{{{queue}}}:stats", "enqueued") == b"1"
    # Only the first job exists: the second envelope was never stored, and its call made no
    # batch.
    assert redis_client.hlen(f"atr-dist:{{{queue}}}:jobs") == 1
    envelope_keys = list(redis_client.scan_iter(match=f"atr-dist:{{{queue}}}:env:*"))
    assert len(envelope_keys) == 1
    assert redis_client.hlen(envelope_keys[0]) == 1
    assert not redis_client.exists(f"atr-dist:{{{queue}}}:incoming")


def test_explicit_idempotency_key_is_used_as_given(
    producer: Producer, redis_client: redis.Redis, queue: str, stage_args: dict[str, Any]
) -> None:
    first = producer.enqueue_stage(**stage_args)
    again = producer.enqueue_stage(**stage_args, idempotency_key="atr:stage:42:attempt-2")
    assert again.created
    assert again.id != first.id
    assert key_holder(redis_client, queue, "atr:stage:42:attempt-2") == again.id
    assert stored_envelope(redis_client, queue, again.id)["idempotency_key"] == (
        "atr:stage:42:attempt-2"
    )
    assert queued_ids(redis_client, queue) == [first.id, again.id]


def test_dry_run_has_its_own_default_key(
    producer: Producer, redis_client: redis.Redis, queue: str, stage_args: dict[str, Any]
) -> None:
    # The default key is the worker's (shared/src/job.rs): a dry run gets ":dry-run"
    # appended, so dry-running first never takes the real job's key.
    default = "stage:tooling-0.1.0:NPM::tooling-cli:0.1.0:00002"
    for dry_run, expected in ((False, default), (True, default + ":dry-run")):
        key = default_idempotency_key(
            kind="stage",
            project_key="tooling",
            version_key="0.1.0",
            platform="NPM",
            owner_namespace="",
            package="tooling-cli",
            version="0.1.0",
            revision="00002",
            dry_run=dry_run,
        )
        assert key == expected
    dry = producer.enqueue_stage(**stage_args, dry_run=True)
    real = producer.enqueue_stage(**stage_args)
    assert dry.created and real.created
    assert dry.id != real.id
    assert key_holder(redis_client, queue, default + ":dry-run") == dry.id
    assert key_holder(redis_client, queue, default) == real.id
    again = producer.enqueue_stage(**stage_args, dry_run=True)
    assert (again.id, again.created) == (dry.id, False)


def test_bulk_enqueue_is_one_transaction(
    producer: Producer,
    redis_client: redis.Redis,
    queue: str,
    stage_args: dict[str, Any],
    promote_args: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    envelopes = [build_stage_envelope(**{**stage_args, "version": f"0.1.{i}"}) for i in range(4)]
    envelopes.append(build_promote_envelope(**promote_args))

    commands: list[str] = []
    real_execute = redis_client.execute_command

    def counting(*args: Any, **kwargs: Any) -> Any:
        commands.append(str(args[0]).upper())
        return real_execute(*args, **kwargs)

    transactions: list[list[str]] = []
    real_pipeline_execute = redis.client.Pipeline.execute

    def recording(self: redis.client.Pipeline, *args: Any, **kwargs: Any) -> Any:
        transactions.append([str(c[0][0]).upper() for c in self.command_stack])
        return real_pipeline_execute(self, *args, **kwargs)

    monkeypatch.setattr(redis_client, "execute_command", counting)
    monkeypatch.setattr(redis.client.Pipeline, "execute", recording)
    results = producer.enqueue_many(envelopes)
    monkeypatch.undo()

    # One transaction: the envelopes by plain HSET, then the script (docs/wire-format.md); a
    # SCRIPT LOAD and the transaction again only where Redis did not know the script.
    assert transactions in (
        [["DEL", "HSET", "EVALSHA"]],
        [["DEL", "HSET", "EVALSHA"], ["DEL", "HSET", "EVALSHA"]],
    )
    # Besides, at most one GET: the queue's shard count, read at most once a second
    # (docs/wire-format.md, "Shards").
    loads = ["SCRIPT LOAD"] * (len(transactions) - 1)
    assert commands in (loads, ["GET", *loads])
    assert [r.id for r in results] == [e["id"] for e in envelopes]
    assert all(r.created for r in results)
    assert redis_client.llen(f"atr-dist:{{{queue}}}:queued") == 5
    assert queued_ids(redis_client, queue) == [e["id"] for e in envelopes]
    for envelope in envelopes:
        assert stored_envelope(redis_client, queue, envelope["id"]) == envelope
        assert job_fields(redis_client, queue, envelope["id"])["jobs"].startswith("queued ")
    assert redis_client.hget(f"atr-dist:{{{queue}}}:stats", "enqueued") == b"5"


def test_bulk_enqueue_with_a_repeated_key_creates_one_job(
    producer: Producer, redis_client: redis.Redis, queue: str, stage_args: dict[str, Any]
) -> None:
    first = build_stage_envelope(**stage_args)
    same_job = build_stage_envelope(**stage_args)  # same derived key, fresh id
    results = producer.enqueue_many([first, same_job])
    assert [(r.id, r.created) for r in results] == [(first["id"], True), (first["id"], False)]
    assert queued_ids(redis_client, queue) == [first["id"]]


def test_empty_bulk_enqueue_sends_nothing(
    producer: Producer, queue: str, queue_keys: Callable[[str], list[str]]
) -> None:
    assert producer.enqueue_many([]) == []
    assert queue_keys(queue) == []


def test_delayed_job_is_scheduled(
    producer: Producer, redis_client: redis.Redis, queue: str, stage_args: dict[str, Any]
) -> None:
    run_at = datetime.now(timezone.utc).replace(microsecond=123456) + timedelta(hours=1)
    expected_ms = int(run_at.timestamp()) * 1000 + 123
    result = producer.enqueue_stage(**stage_args, run_at=run_at)
    assert result.created

    assert job_fields(redis_client, queue, result.id)["jobs"].startswith("scheduled ")
    assert redis_client.zscore(f"atr-dist:{{{queue}}}:scheduled", result.id) == expected_ms
    assert queued_ids(redis_client, queue) == []


def test_run_at_in_another_zone_is_converted(
    producer: Producer, redis_client: redis.Redis, queue: str, stage_args: dict[str, Any]
) -> None:
    utc = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(minutes=30)
    local = utc.astimezone(timezone(timedelta(hours=-7)))
    result = producer.enqueue_stage(**stage_args, run_at=local)
    score = redis_client.zscore(f"atr-dist:{{{queue}}}:scheduled", result.id)
    assert score == int(utc.timestamp()) * 1000


def test_past_run_at_queues_now(
    producer: Producer, redis_client: redis.Redis, queue: str, stage_args: dict[str, Any]
) -> None:
    result = producer.enqueue_stage(
        **stage_args, run_at=datetime.now(timezone.utc) - timedelta(hours=1)
    )
    assert job_fields(redis_client, queue, result.id)["jobs"].startswith("queued ")
    assert queued_ids(redis_client, queue) == [result.id]
    assert redis_client.zcard(f"atr-dist:{{{queue}}}:scheduled") == 0


def test_id_owned_by_another_key_is_refused(
    producer: Producer, redis_client: redis.Redis, queue: str, stage_args: dict[str, Any]
) -> None:
    original = build_stage_envelope(**stage_args)
    producer.enqueue_many([original])
    clash = build_stage_envelope(**stage_args, idempotency_key="another-key")
    clash["id"] = original["id"]
    fresh = build_stage_envelope(**stage_args, idempotency_key="third-key")

    with pytest.raises(JobIdConflict) as raised:
        producer.enqueue_many([clash, fresh])
    assert raised.value.conflicts == [original["id"]]
    assert raised.value.results[0] is None
    assert raised.value.results[1] is not None and raised.value.results[1].id == fresh["id"]

    # The original job is untouched, and the refused key was never taken.
    assert stored_envelope(redis_client, queue, original["id"]) == original
    assert key_holder(redis_client, queue, original["idempotency_key"]) == original["id"]
    assert key_holder(redis_client, queue, "another-key") is None
    assert queued_ids(redis_client, queue) == [original["id"], fresh["id"]]


def test_decoding_client_works(queue: str, stage_args: dict[str, Any]) -> None:
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        result = Producer(client, queue=queue).enqueue_stage(**stage_args)
        assert result.created
        assert uuid7_timestamp_ms(result.id) > 0
        assert Producer(client, queue=queue).enqueue_stage(**stage_args) == type(result)(
            result.id, False
        )
    finally:
        client.close()


def test_key_whose_job_is_gone_is_free_again(
    producer: Producer, redis_client: redis.Redis, queue: str, stage_args: dict[str, Any]
) -> None:
    # purge.lua finds a job's key in its envelope; a malformed envelope leaves the key behind.
    # Such a key must not hold on to a job that no longer exists.
    first = producer.enqueue_stage(**stage_args)
    prefix = f"atr-dist:{{{queue}}}:"
    redis_client.hdel(prefix + "env:" + batch_of(redis_client, queue, first.id), first.id)
    for name in JOB_FIELD_HASHES:
        redis_client.hdel(prefix + name, first.id)
    redis_client.lrem(prefix + "queued", 0, first.id)

    again = producer.enqueue_stage(**stage_args)
    assert again.created
    assert again.id != first.id
    key = "stage:tooling-0.1.0:NPM::tooling-cli:0.1.0:00002"
    assert stored_envelope(redis_client, queue, again.id)["idempotency_key"] == key
    assert key_holder(redis_client, queue, key) == again.id


def test_queue_in_another_wire_format_is_refused(
    producer: Producer, redis_client: redis.Redis, queue: str, stage_args: dict[str, Any]
) -> None:
    redis_client.set(f"atr-dist:{{{queue}}}:format", "9")
    with pytest.raises(redis.ResponseError, match="wire format 9"):
        producer.enqueue_stage(**stage_args)
    assert queued_ids(redis_client, queue) == []
    # The refused call's envelopes are gone with it.
    assert not redis_client.exists(f"atr-dist:{{{queue}}}:incoming")


def test_lost_scripts_are_loaded_again(
    private_redis: redis.Redis, queue: str, stage_args: dict[str, Any]
) -> None:
    # As after a Redis restart: the script is gone, and a transaction whose EVALSHA failed
    # left envelopes in `incoming`. (On a Redis of its own: SCRIPT FLUSH is server-wide.)
    producer = Producer(private_redis, queue=queue)
    first = producer.enqueue_stage(**{**stage_args, "version": "0.0.9"})
    private_redis.script_flush()
    private_redis.hset(f"atr-dist:{{{queue}}}:incoming", "left-over", b"{}")
    result = producer.enqueue_stage(**stage_args)
    assert result.created
    # Both calls created one job each: their envelopes are in the shared batch 0, and the
    # left-over is not.
    batch = batch_of(private_redis, queue, result.id)
    assert batch == "0"
    kept = private_redis.hkeys(f"atr-dist:{{{queue}}}:env:0")
    assert sorted(kept) == sorted([first.id.encode(), result.id.encode()])
    assert not private_redis.exists(f"atr-dist:{{{queue}}}:incoming")
