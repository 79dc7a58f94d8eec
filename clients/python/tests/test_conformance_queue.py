"""The queue fixtures in ``tests/conformance/queue.json`` (shared with the Rust tests, and
usable by any client): enqueue calls through this producer must leave the documented Redis
state, and lifecycle walks (the worker's scripts called with the arguments
docs/wire-format.md gives) must read back, through ``Producer.status``, as the fixture says."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import redis

from atr_dist_producer import Producer, shard_key, shard_of, shard_prefix
from atr_dist_producer.errors import InvalidJob, JobIdConflict
from atr_dist_producer.resources import script_source

_DOC = json.loads(
    (Path(__file__).resolve().parents[3] / "tests" / "conformance" / "queue.json").read_text()
)
_ENVELOPES: dict[str, dict[str, Any]] = _DOC["envelopes"]


def _id(name: str) -> str:
    return str(_ENVELOPES[name]["id"])


def _name(job_id: str) -> str:
    # The shortest name with this id: "a" before "a-other-key", which shares it.
    names = sorted((n for n, e in _ENVELOPES.items() if e["id"] == job_id), key=len)
    return names[0] if names else job_id


def _text(v: Any) -> str | None:
    return v.decode() if isinstance(v, bytes) else v


def _redis_ms(client: redis.Redis) -> int:
    s, us = client.time()
    return int(s) * 1000 + int(us) // 1000


def _record_matches(record: str, pattern: str) -> bool:
    words, pats = record.split(" "), pattern.split(" ")
    if len(words) != len(pats):
        return False
    for w, p in zip(words, pats, strict=True):
        if p == "<ms>":
            ok = len(w) == 13 and w.isdigit()
        elif p == "<n>":
            ok = w.isdigit()
        else:
            ok = w == p
        if not ok:
            return False
    return True


def _check_state(client: redis.Redis, prefix: str, state: dict[str, Any],
                 window: tuple[int, int]) -> list[str]:
    failures = []
    for key, want in state.items():
        if key in ("format", "batches"):
            got = _text(client.get(prefix + key))
            if got != want:
                failures.append(f"{key} is {got!r}, not {want!r}")
        elif key == "queued":
            got = [_name(_text(i)) for i in client.lrange(prefix + key, 0, -1)]
            if got != want:
                failures.append(f"queued is {got}, not {want}")
        elif key == "scheduled":
            got = client.zrange(prefix + key, 0, -1, withscores=True)
            if len(got) != len(want):
                failures.append(f"scheduled is {got}, not {want}")
            for member, score in got:
                offset = int(want[_name(_text(member))].lstrip("+"))
                if not window[0] + offset <= score <= window[1] + offset:
                    failures.append(f"{member} is scheduled at {score}, not {offset} ms on")
        elif key == "jobs":
            for name, pattern in want.items():
                got = _text(client.hget(prefix + "jobs", _id(name)))
                if got is None or not _record_matches(got, pattern):
                    failures.append(f"{name}'s record is {got!r}, not {pattern!r}")
        elif key == "idempotency":
            for idem, name in want.items():
                got = _text(client.hget(prefix + key, idem))
                if got != _id(name):
                    failures.append(f"key {idem} names {got!r}, not {name}")
        elif key == "stats":
            for field, value in want.items():
                got = _text(client.hget(prefix + key, field))
                if got != value:
                    failures.append(f"stats {field} is {got!r}, not {value!r}")
        elif key == "absent":
            for absent in want:
                if client.exists(prefix + absent):
                    failures.append(f"{absent} exists")
        elif key == "absent_jobs":
            for name in want:
                if client.hget(prefix + "jobs", _id(name)) is not None:
                    failures.append(f"{name} has a record")
        elif key.startswith("env:"):
            for name, envelope_name in want.items():
                got = client.hget(prefix + key, _id(name))
                if got is None or json.loads(got) != _ENVELOPES[envelope_name]:
                    failures.append(f"{key} holds {got!r} for {name}")
        else:
            failures.append(f"the fixture names an unknown key {key}")
    return failures


@pytest.mark.parametrize("case", _DOC["enqueue"], ids=[c["name"] for c in _DOC["enqueue"]])
def test_enqueue_calls_leave_the_documented_state(
    producer: Producer, redis_client: redis.Redis, queue: str, case: dict[str, Any]
) -> None:
    prefix = f"atr-dist:{{{queue}}}:"
    window = (0, 0)
    for call in case["calls"]:
        before = _redis_ms(redis_client)
        run_at = None
        if call["run_at"] != "now":
            ms = before + int(call["run_at"].lstrip("+"))
            run_at = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
        envelopes = [_ENVELOPES[n] for n in call["jobs"]]
        try:
            results = producer.enqueue_many(
                envelopes, run_at=run_at, max_attempts=call["max_attempts"]
            )
        except (InvalidJob, redis.ResponseError) as e:
            assert "error" in call, e
            assert call["error"] in str(e)
        except JobIdConflict:
            assert any(status == "refused" for _, status in call["reply"])
        else:
            got = [[_name(r.id), "created" if r.created else "existing"] for r in results]
            assert got == call["reply"]
        window = (before, _redis_ms(redis_client))
    assert _check_state(redis_client, prefix, case["state"], window) == []


def _call(client: redis.Redis, prefix: str, script: str, *args: Any) -> Any:
    return client.eval(script_source(script), 1, prefix + "queued", prefix, *args)


def _ack_args(step: dict[str, Any], lease: str) -> tuple[bool, list[Any]]:
    result = json.dumps(step["result"]) if step.get("result") is not None else ""
    if step["outcome"] == "done":
        return True, [_id(step["job"]), lease, result]
    return False, [_id(step["job"]), lease, step["outcome"], step.get("delay_ms", 0),
                   step.get("error_class", ""), step.get("message", ""), result]


def _ack(client: redis.Redis, prefix: str, steps: list[dict[str, Any]],
         leases: dict[str, str]) -> None:
    # Successes first, as ack.lua takes them: n_done, the triples, then 7 per other job.
    done, other = [], []
    for step in steps:
        is_done, args = _ack_args(step, leases[step["job"]])
        (done if is_done else other).append(args)
    flat = [v for args in done + other for v in args]
    _call(client, prefix, "ack", len(done), *flat)


@pytest.mark.parametrize("walk", _DOC["lifecycle"], ids=[w["name"] for w in _DOC["lifecycle"]])
def test_lifecycle_walks_read_as_documented(
    producer: Producer, redis_client: redis.Redis, queue: str, walk: dict[str, Any]
) -> None:
    prefix = f"atr-dist:{{{queue}}}:"
    leases: dict[str, str] = {}
    for i, step in enumerate(walk["steps"], 1):
        at = f"step {i}"
        if "enqueue" in step:
            producer.enqueue_many([_ENVELOPES[n] for n in step["enqueue"]],
                                  max_attempts=walk["max_attempts"])
        elif "fetch" in step:
            reply = _call(redis_client, prefix, "fetch", "conformance", 60000, step["fetch"])
            # now_ms and wait_ms, then 3 values per leased job.
            leased = [(_text(reply[k]), _text(reply[k + 1])) for k in range(2, len(reply), 3)]
            assert [_name(i) for i, _ in leased] == step["leased"], at
            leases.update({_name(i): token for i, token in leased})
        elif "ack" in step:
            _ack(redis_client, prefix, [{**step, "job": step["ack"]}], leases)
        elif "ack_all" in step:
            _ack(redis_client, prefix, step["ack_all"], leases)
        elif "retry" in step or "cancel" in step:
            script = "retry" if "retry" in step else "cancel"
            message = step.get("message", "by the conformance walk")
            reply = _call(redis_client, prefix, script, message,
                          *[_id(n) for n in step[script]])
            assert [_text(r) for r in reply] == step["replies"], at
        elif "purge" in step:
            deleted = _call(redis_client, prefix, "purge", step["purge"], step["older_than_ms"],
                            1000)
            assert deleted == step["deleted"], at
        for job, want in (step.get("expect") or {}).items():
            status = producer.status(_id(job))
            if want is None:
                assert status is None, (at, job)
                continue
            assert status is not None, (at, job)
            got = {
                "state": status.state,
                "attempt": status.attempt,
                "atr_status": status.atr_status,
                "error_class": status.error_class,
                "last_error": status.last_error,
                "report_outcome": status.outcome,
            }
            assert {k: got[k] for k in want} == want, (at, job)
        if "results" in step:
            entries = redis_client.xrange(prefix + "results")
            got = [{"state": _text(f[b"state"]), "atr_status": _text(f[b"atr_status"]),
                    "ids": [_name(_text(i)) for i in _text(f[b"ids"]).split(" ")]}
                   for _, f in entries]
            assert got == step["results"], at


@pytest.mark.parametrize("case", _DOC["shards"]["cases"], ids=lambda c: str(c.get("key")))
def test_shard_choice_is_as_documented(case: dict[str, Any]) -> None:
    if "envelope" in case:
        envelope: Any = _ENVELOPES[case["envelope"]]
    else:
        try:
            envelope = json.loads(case["envelope_json"])
        except ValueError:
            envelope = None
    key = shard_key(envelope) if isinstance(envelope, dict) else None
    assert key == case["key"]
    if "sha256_first_8_bytes" in case:
        assert hashlib.sha256(key.encode()).hexdigest()[:16] == case["sha256_first_8_bytes"]
    for count, want in case["shard"].items():
        assert (shard_of(key, int(count)) if key is not None else 0) == want


def test_sharded_enqueue_puts_each_job_on_the_documented_shard(
    redis_client: redis.Redis, queue: str
) -> None:
    # What `atr-dist queue shards 3` writes (docs/wire-format.md, "Shards").
    for shard in range(3):
        redis_client.set(shard_prefix(queue, shard) + "format", "8")
    redis_client.set(shard_prefix(queue, 0) + "shards", "3")
    producer = Producer(redis_client, queue=queue)
    cases = [c for c in _DOC["shards"]["cases"] if "envelope" in c]
    producer.enqueue_many([_ENVELOPES[c["envelope"]] for c in cases])
    for case in cases:
        shard = case["shard"]["3"]
        assert redis_client.hexists(shard_prefix(queue, shard) + "jobs", _id(case["envelope"]))
        status = producer.status(_id(case["envelope"]))
        assert status is not None and status.state == "queued"
