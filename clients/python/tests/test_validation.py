"""Bad jobs are refused with InvalidJob before Redis is touched."""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import redis

from atr_dist_producer import (
    MAX_BATCH,
    MAX_ENVELOPE_BYTES,
    PLATFORMS,
    InvalidJob,
    Producer,
    build_promote_envelope,
    build_stage_envelope,
    default_idempotency_key,
    envelope_problems,
    validate_envelope,
)

SHA = "ab" * 32


def unreachable_producer() -> Producer:
    # Port 1 has no Redis: any attempt to send would raise redis.ConnectionError instead.
    return Producer(redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5))


def _oversized(args: dict[str, Any]) -> None:
    # Each path is valid; together they exceed the 1 MiB envelope limit.
    args["artifacts"] = [f"dist/{i:04d}-" + "x" * 4000 for i in range(300)]


def _drop_asf_uid(args: dict[str, Any]) -> None:
    args["asf_uid"] = ""


STAGE_CASES: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "bad platform": (
        lambda a: a.update(platform="CRATES_IO"),
        "$.payload.distribution.platform: 'CRATES_IO' is not one of",
    ),
    "path traversal": (lambda a: a.update(artifacts=["../x"]), "$.payload.artifacts[0]: '../x'"),
    "nested traversal": (
        lambda a: a.update(artifacts=["ok.tgz", "dist/../../etc/passwd"]),
        "$.payload.artifacts[1]:",
    ),
    "absolute path": (
        lambda a: a.update(artifacts=["/etc/passwd"]),
        "$.payload.artifacts[0]: '/etc/passwd' does not match",
    ),
    "empty asf_uid": (_drop_asf_uid, "$.payload.asf_uid: ''"),
    "revision 1": (lambda a: a.update(revision="1"), "$.payload.revision: '1' does not match"),
    "revision 00000": (lambda a: a.update(revision="00000"), "revision sequences start at 1"),
    "oversized envelope": (_oversized, f"the limit is {MAX_ENVELOPE_BYTES}"),
    "no artifacts": (lambda a: a.update(artifacts=[]), "$.payload.artifacts: []"),
    "artifacts as one string": (
        lambda a: a.update(artifacts="a.tgz"),
        "$.payload.artifacts: 'a.tgz' is not of type 'array'",
    ),
    "dot-dot in package": (
        lambda a: a.update(package="a..b"),
        "$.payload.distribution.package: 'a..b' contains '..'",
    ),
    "version-like tag": (lambda a: a.update(staging_tag="v1.4"), "looks like a version"),
    "upper-case uid": (
        lambda a: a.update(asf_uid="Alice"),
        "$.payload.asf_uid: 'Alice' does not match",
    ),
    "unknown source": (
        lambda a: a.update(source={"type": "s3"}),
        "$.payload.source.type: 's3' is not one of",
    ),
    "inline without manifest": (
        lambda a: a.update(source={"type": "inline"}),
        "$.payload.source: 'manifest' is a required property",
    ),
    "dry_run not bool": (
        lambda a: a.update(dry_run="yes"),
        "$.payload.dry_run: 'yes' is not of type 'boolean'",
    ),
    "bad idempotency key": (
        lambda a: a.update(idempotency_key="has space"),
        "$.idempotency_key: 'has space' does not match",
    ),
}


@pytest.mark.parametrize("case", sorted(STAGE_CASES))
def test_invalid_stage_job_writes_nothing(
    case: str,
    producer: Producer,
    queue: str,
    queue_keys: Callable[[str], list[str]],
    stage_args: dict[str, Any],
) -> None:
    change, message = STAGE_CASES[case]
    change(stage_args)
    with pytest.raises(InvalidJob) as raised:
        producer.enqueue_stage(**stage_args)
    assert isinstance(raised.value, ValueError)
    assert any(message in e for e in raised.value.errors), raised.value.errors
    assert message in str(raised.value)
    assert queue_keys(queue) == []


@pytest.mark.parametrize("case", sorted(STAGE_CASES))
def test_invalid_job_is_refused_without_contacting_redis(
    case: str, stage_args: dict[str, Any]
) -> None:
    change, _ = STAGE_CASES[case]
    change(stage_args)
    with pytest.raises(InvalidJob):
        unreachable_producer().enqueue_stage(**stage_args)


def test_missing_asf_uid_in_an_envelope_is_refused(
    producer: Producer,
    queue: str,
    queue_keys: Callable[[str], list[str]],
    promote_args: dict[str, Any],
) -> None:
    envelope = build_promote_envelope(**promote_args)
    del envelope["payload"]["asf_uid"]
    with pytest.raises(InvalidJob, match=r"\$\.payload: 'asf_uid' is a required property"):
        producer.enqueue_many([envelope])
    assert queue_keys(queue) == []


def test_one_bad_envelope_stops_the_whole_batch(
    producer: Producer,
    queue: str,
    queue_keys: Callable[[str], list[str]],
    stage_args: dict[str, Any],
) -> None:
    good = build_stage_envelope(**stage_args)
    bad = build_stage_envelope(**{**stage_args, "artifacts": ["../x"], "version": "0.2.0"})
    also_bad = build_stage_envelope(**{**stage_args, "platform": "NOPE", "version": "0.3.0"})
    with pytest.raises(InvalidJob) as raised:
        producer.enqueue_many([good, bad, also_bad])
    errors = raised.value.errors
    assert len(errors) == 2
    assert errors[0].startswith("envelopes[1]: $.payload.artifacts[0]:")
    assert errors[1].startswith("envelopes[2]: $.payload.distribution.platform:")
    assert queue_keys(queue) == []


def test_envelope_level_problems(stage_args: dict[str, Any]) -> None:
    envelope = build_stage_envelope(**stage_args)
    envelope["v"] = 2
    envelope["priority"] = 1
    envelope["id"] = "not-a-uuid"
    envelope["enqueued_at"] = "yesterday"
    problems = envelope_problems(envelope)
    assert (
        "$.priority: unknown envelope field; "
        "allowed: v, id, idempotency_key, enqueued_at, kind, payload" in problems
    )
    assert any(p.startswith("$.v: 2 is greater than the maximum of 1") for p in problems)
    assert any(p.startswith("$.id: 'not-a-uuid' is not a 'uuid'") for p in problems)
    assert any(p.startswith("$.enqueued_at: 'yesterday' is not a 'date-time'") for p in problems)


@pytest.mark.parametrize("kind", [None, "publish"])
def test_unknown_or_missing_kind(stage_args: dict[str, Any], kind: str | None) -> None:
    envelope = build_stage_envelope(**stage_args)
    if kind is None:
        del envelope["kind"]
    else:
        envelope["kind"] = kind
    expected = "missing" if kind is None else "'publish' is not a job kind"
    assert envelope_problems(envelope) == [f"$.kind: {expected}; use 'stage' or 'promote'"]


def test_kind_and_payload_must_match(stage_args: dict[str, Any]) -> None:
    envelope = build_stage_envelope(**stage_args)
    envelope["kind"] = "promote"
    assert (
        "$.payload: Additional properties are not allowed ('artifacts' was unexpected)"
        in envelope_problems(envelope)
    )


def test_floats_are_refused_where_integers_are_expected(stage_args: dict[str, Any]) -> None:
    source = {
        "type": "inline",
        "manifest": {"entries": [{"path": "a.tgz", "size": 10.0, "sha3_256": SHA}]},
    }
    envelope = build_stage_envelope(**stage_args, source=source)
    envelope["v"] = 1.0
    problems = envelope_problems(envelope)
    assert "$.v: 1.0 must be an integer, not a float" in problems
    assert (
        "$.payload.source.manifest.entries[0].size: 10.0 must be an integer, not a float"
        in problems
    )


def test_manifest_rules(stage_args: dict[str, Any]) -> None:
    entries = [
        {"path": "a.tgz", "size": 1, "sha3_256": SHA},
        {"path": "a.tgz", "size": 2, "sha3_256": SHA},
        {"path": "./b.tgz", "size": 1, "sha3_256": SHA},
        {"path": "c.tgz", "size": -1, "sha3_256": SHA.upper()},
    ]
    envelope = build_stage_envelope(
        **stage_args, source={"type": "inline", "manifest": {"entries": entries}}
    )
    problems = envelope_problems(envelope)
    assert (
        "$.payload.source.manifest.entries[1].path: "
        "'a.tgz' is listed more than once in the manifest" in problems
    )
    assert any(
        p.startswith("$.payload.source.manifest.entries[2].path: './b.tgz' has a '.'")
        for p in problems
    )
    assert any(
        p.startswith("$.payload.source.manifest.entries[3].size: -1 is less than the minimum")
        for p in problems
    )
    assert any(p.startswith("$.payload.source.manifest.entries[3].sha3_256:") for p in problems)


@pytest.mark.parametrize("platform", PLATFORMS)
def test_every_platform_builds_valid_envelopes(platform: str, stage_args: dict[str, Any]) -> None:
    stage_args.update(platform=platform, owner_namespace="apache")
    validate_envelope(build_stage_envelope(**stage_args))
    del stage_args["artifacts"]
    validate_envelope(build_promote_envelope(**stage_args))


@pytest.mark.parametrize(
    "source",
    [
        {"type": "dir"},
        {"type": "atr"},
        {"type": "inline", "manifest": {"entries": []}},
        {
            "type": "inline",
            "manifest": {"entries": [{"path": "a/b.tgz", "size": 0, "sha3_256": SHA}]},
        },
    ],
)
def test_every_source_type_is_accepted(source: dict[str, Any], stage_args: dict[str, Any]) -> None:
    assert envelope_problems(build_stage_envelope(**stage_args, source=source)) == []


def test_platform_enum_members_are_accepted(stage_args: dict[str, Any]) -> None:
    class DistributionPlatform(enum.Enum):  # shaped like ATR's
        NPM = "npm-value-not-used"

    stage_args["platform"] = DistributionPlatform.NPM
    envelope = build_stage_envelope(**stage_args)
    assert envelope["payload"]["distribution"]["platform"] == "NPM"
    assert envelope["idempotency_key"] == "stage:tooling-0.1.0:NPM::tooling-cli:0.1.0:00002"


def test_default_idempotency_key() -> None:
    parts = dict(
        project_key="tooling",
        version_key="0.1.0",
        platform="MAVEN",
        owner_namespace="org.apache.tooling",
        package="tooling-core",
        version="0.1.0",
        revision="00007",
    )
    assert default_idempotency_key(kind="promote", **parts) == (
        "promote:tooling-0.1.0:MAVEN:org.apache.tooling:tooling-core:0.1.0:00007"
    )
    # Too long for the 200-byte limit: cut, with the SHA3-256 of the whole, as the worker does.
    long_parts = {**parts, "package": "p" * 214}
    text = "stage:tooling-0.1.0:MAVEN:org.apache.tooling:" + "p" * 214 + ":0.1.0:00007"
    key = default_idempotency_key(kind="stage", **long_parts)
    assert key == text[:135] + "#" + hashlib.sha3_256(text.encode()).hexdigest()
    assert len(key) == 200


def test_long_names_still_give_a_valid_default_key(stage_args: dict[str, Any]) -> None:
    stage_args.update(package="p" * 214, version="1." + "0" * 120)
    assert envelope_problems(build_stage_envelope(**stage_args)) == []


def test_naive_run_at_is_refused(stage_args: dict[str, Any]) -> None:
    with pytest.raises(InvalidJob, match="naive datetime"):
        unreachable_producer().enqueue_stage(
            **stage_args, run_at=datetime.now() + timedelta(minutes=5)
        )


def test_run_at_must_be_a_datetime(stage_args: dict[str, Any]) -> None:
    with pytest.raises(InvalidJob, match="timezone-aware datetime"):
        unreachable_producer().enqueue_stage(**stage_args, run_at=1_700_000_000_000)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [0, -3, True, 2.0, 1 << 32])
def test_bad_max_attempts_is_refused(value: Any, stage_args: dict[str, Any]) -> None:
    with pytest.raises(InvalidJob, match="max_attempts"):
        unreachable_producer().enqueue_stage(**stage_args, max_attempts=value)


def test_batches_are_limited(stage_args: dict[str, Any]) -> None:
    envelope = build_stage_envelope(**stage_args)
    with pytest.raises(InvalidJob, match=f"batches of at most {MAX_BATCH}"):
        unreachable_producer().enqueue_many([envelope] * (MAX_BATCH + 1))


def test_duplicate_ids_in_a_batch_are_refused(stage_args: dict[str, Any]) -> None:
    first = build_stage_envelope(**stage_args)
    second = build_stage_envelope(**stage_args, idempotency_key="other")
    second["id"] = first["id"]
    with pytest.raises(InvalidJob, match="is used by more than one envelope"):
        unreachable_producer().enqueue_many([first, second])


def test_a_single_envelope_is_not_a_batch(stage_args: dict[str, Any]) -> None:
    with pytest.raises(InvalidJob, match="got a single envelope"):
        unreachable_producer().enqueue_many(build_stage_envelope(**stage_args))  # type: ignore[arg-type]


def test_enqueued_at_is_rfc3339_utc(stage_args: dict[str, Any]) -> None:
    enqueued_at = build_stage_envelope(**stage_args)["enqueued_at"]
    assert enqueued_at.endswith("Z")
    parsed = datetime.fromisoformat(enqueued_at.replace("Z", "+00:00"))
    assert parsed.utcoffset() == timedelta(0)
    assert abs(parsed - datetime.now(timezone.utc)) < timedelta(seconds=5)
