"""Enqueue atr-dist jobs from Python.

atr-dist is the worker that puts voted Apache releases onto package registries. This package
is its producer side for ATR: it builds ``stage`` and ``promote`` job envelopes, validates
them against the same JSON Schema the worker uses, and enqueues them on Redis with the same
Lua script the worker's own CLI runs (docs/wire-format.md in the atr-dist repository).

    import redis
    from atr_dist_producer import Producer

    producer = Producer(redis.Redis.from_url("redis://localhost:6379/0"))
    result = producer.enqueue_stage(
        project_key="tooling", version_key="0.1.0", platform="NPM",
        package="tooling-cli", version="0.1.0", revision="00002",
        artifacts=["tooling-cli-0.1.0.tgz"], asf_uid="alice",
    )
    print(result.id, result.created)
"""

from .envelope import (
    ENVELOPE_VERSION,
    MAX_ENVELOPE_BYTES,
    PLATFORMS,
    build_promote_envelope,
    build_stage_envelope,
    default_idempotency_key,
    release_key,
)
from .errors import InvalidJob, JobIdConflict
from .producer import MAX_BATCH, Producer
from .queues import MAX_SHARDS, key_prefix, shard_key, shard_of, shard_prefix, validate_queue_name
from .result import EnqueueResult
from .results import Result, Results, distribution_fields
from .status import JobStatus, Report, atr_task_status
from .uuid7 import uuid7, uuid7_timestamp_ms
from .validation import envelope_problems, validate_envelope

__version__ = "0.1.0"

__all__ = [
    "ENVELOPE_VERSION",
    "MAX_BATCH",
    "MAX_SHARDS",
    "MAX_ENVELOPE_BYTES",
    "PLATFORMS",
    "EnqueueResult",
    "InvalidJob",
    "JobIdConflict",
    "JobStatus",
    "Producer",
    "Report",
    "Result",
    "Results",
    "atr_task_status",
    "build_promote_envelope",
    "build_stage_envelope",
    "default_idempotency_key",
    "distribution_fields",
    "envelope_problems",
    "key_prefix",
    "release_key",
    "shard_key",
    "shard_of",
    "shard_prefix",
    "uuid7",
    "uuid7_timestamp_ms",
    "validate_envelope",
    "validate_queue_name",
]
