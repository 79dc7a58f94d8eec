"""``Producer``: enqueues validated jobs with ``lua/enqueue.lua`` (docs/wire-format.md)."""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from redis import Redis, ResponseError
from redis.exceptions import NoScriptError

from .envelope import (
    Platform,
    Source,
    build_promote_envelope,
    build_stage_envelope,
)
from .errors import InvalidJob, JobIdConflict
from .queues import ShardCount, key_prefix, shard_key, shard_of, shard_prefix, validate_queue_name
from .resources import script_source
from .result import EnqueueResult
from .status import TERMINAL_STATES, JobStatus, parse_status
from .validation import encode_envelope

MAX_BATCH = 1000
"""Jobs per ``enqueue_many`` call, the worker's own ENQUEUE_CHUNK: one script call this size
keeps Redis responsive. Larger batches are refused rather than split, because the
script's checks (all jobs or none) only span a single call."""

_MAX_ATTEMPTS_LIMIT = (1 << 32) - 1  # the worker reads max_attempts as a u32
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_MS = timedelta(milliseconds=1)


def _check_max_attempts(value: Any) -> int | None:
    """``value`` if it is a valid attempt count, else ``None``."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    if not 1 <= value <= _MAX_ATTEMPTS_LIMIT:
        return None
    return value


def _run_at_ms(run_at: datetime | None) -> int:
    """``run_at`` as ms since the Unix epoch; 0 (which the script reads as now) for ``None``."""
    if run_at is None:
        return 0
    if not isinstance(run_at, datetime):
        raise InvalidJob(
            [f"run_at: expected a timezone-aware datetime, got {type(run_at).__name__}"]
        )
    if run_at.tzinfo is None or run_at.utcoffset() is None:
        raise InvalidJob(
            [
                f"run_at: {run_at.isoformat()} is a naive datetime, whose zone is ambiguous; "
                "pass an aware one, e.g. datetime.now(timezone.utc) + timedelta(minutes=5)"
            ]
        )
    # Integer arithmetic on timedeltas: float timestamps lose the last millisecond.
    return max((run_at - _EPOCH) // _ONE_MS, 0)


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class Producer:
    """Enqueues atr-dist ``stage`` and ``promote`` jobs on one queue.

    Every envelope is checked against the contract before Redis is touched; a bad job raises
    ``InvalidJob`` and nothing is written. Redis failures propagate as ``redis.RedisError``
    (for example ``redis.ConnectionError``); since every job carries an idempotency key,
    repeating the same call after such a failure is safe.

    Each call is one transaction, as docs/wire-format.md prescribes: the envelopes go to the
    queue's ``incoming`` hash with a plain ``HSET`` (never through Lua), and ``enqueue.lua``
    turns that hash into the call's envelope batch (a call that creates one job adds its
    envelope to the queue's shared batch 0 instead). On a sharded queue (docs/wire-format.md,
    "Shards") each job goes to the shard of its distribution, one transaction per shard. The script is sent by ``EVALSHA``, and
    loaded (``SCRIPT LOAD``) when Redis answers ``NOSCRIPT`` (after a restart, or on first
    use), after which the transaction runs again.
    """

    def __init__(self, redis: Redis, queue: str = "default", max_attempts: int = 10) -> None:
        """``redis``: a client (``decode_responses`` either way); ``queue``: the queue name,
        ``A-Z a-z 0-9 - _ .``; ``max_attempts``: the default attempts per job, at least 1."""
        self._queue = validate_queue_name(queue)
        if _check_max_attempts(max_attempts) is None:
            raise ValueError(
                f"max_attempts must be an int from 1 to {_MAX_ATTEMPTS_LIMIT}, not {max_attempts!r}"
            )
        self._max_attempts = max_attempts
        self._prefix = key_prefix(queue)
        self._shards = ShardCount(redis, queue)
        self._redis = redis
        self._enqueue_source = script_source("enqueue")
        self._enqueue_sha = hashlib.sha1(self._enqueue_source).hexdigest()

    @property
    def queue(self) -> str:
        """The queue's name."""
        return self._queue

    @property
    def key_prefix(self) -> str:
        """The prefix of the queue's Redis keys, e.g. ``atr-dist:{default}:``."""
        return self._prefix

    def enqueue_stage(
        self,
        *,
        project_key: str,
        version_key: str,
        platform: Platform,
        package: str,
        version: str,
        revision: str,
        artifacts: Iterable[str],
        asf_uid: str,
        owner_namespace: str = "",
        source: Source | None = None,
        staging_tag: str | None = None,
        dry_run: bool = False,
        idempotency_key: str | None = None,
        run_at: datetime | None = None,
        max_attempts: int | None = None,
    ) -> EnqueueResult:
        """Enqueues a job that stages ``artifacts`` of ``revision`` on the platform.

        ``platform`` is ATR's member name (``"NPM"``) or a member of an enum named like it.
        ``revision`` is ATR's ``Revision.number`` (``"00002"``); ``artifacts`` are paths
        relative to the revision root. ``source`` defaults to ``{"type": "dir"}``.
        ``idempotency_key`` defaults to one derived from the job
        (see ``default_idempotency_key``), so repeating a call does not duplicate the job.
        ``run_at`` (timezone-aware) delays the job; ``max_attempts`` overrides the default.
        """
        envelope = build_stage_envelope(
            project_key=project_key,
            version_key=version_key,
            platform=platform,
            package=package,
            version=version,
            revision=revision,
            artifacts=artifacts,
            asf_uid=asf_uid,
            owner_namespace=owner_namespace,
            source=source,
            staging_tag=staging_tag,
            dry_run=dry_run,
            idempotency_key=idempotency_key,
        )
        return self._enqueue([envelope], run_at=run_at, max_attempts=max_attempts, bulk=False)[0]

    def enqueue_promote(
        self,
        *,
        project_key: str,
        version_key: str,
        platform: Platform,
        package: str,
        version: str,
        revision: str,
        asf_uid: str,
        owner_namespace: str = "",
        source: Source | None = None,
        release_tag: str | None = None,
        dry_run: bool = False,
        idempotency_key: str | None = None,
        run_at: datetime | None = None,
        max_attempts: int | None = None,
    ) -> EnqueueResult:
        """Enqueues a job that promotes the staged distribution to production.

        ``revision`` is the voted revision; the worker promotes only if its files equal the
        staged ones. Other arguments as for ``enqueue_stage``; ``release_tag`` defaults to
        ``latest`` on npm and to the version on OCI registries.
        """
        envelope = build_promote_envelope(
            project_key=project_key,
            version_key=version_key,
            platform=platform,
            package=package,
            version=version,
            revision=revision,
            asf_uid=asf_uid,
            owner_namespace=owner_namespace,
            source=source,
            release_tag=release_tag,
            dry_run=dry_run,
            idempotency_key=idempotency_key,
        )
        return self._enqueue([envelope], run_at=run_at, max_attempts=max_attempts, bulk=False)[0]

    def status(self, job_id: str) -> JobStatus | None:
        """The job's state, attempts, ATR task status, errors, times and, once it ended, the
        worker's report; ``None`` for a job the queue does not hold (never enqueued, or
        purged). One round trip (one per shard on a sharded queue)."""
        return self._located_status(job_id)[0]

    def _located_status(self, job_id: str) -> tuple[JobStatus | None, int]:
        """The job's status and the shard that holds it (0 when none does)."""
        for shard in range(self._shards.get()):
            p = shard_prefix(self._queue, shard)
            pipe = self._redis.pipeline(transaction=False)
            pipe.hget(p + "jobs", job_id)
            pipe.hget(p + "error_class", job_id)
            pipe.hget(p + "last_error", job_id)
            pipe.hget(p + "result", job_id)
            pipe.zscore(p + "dead", job_id)
            pipe.zscore(p + "cancelled", job_id)
            record, cls, error, result, dead_at, cancelled_at = pipe.execute()
            if record is None:
                continue
            finished = dead_at if dead_at is not None else cancelled_at
            return parse_status(job_id, record, cls, error, result, finished), shard
        return None, 0

    def wait(
        self, job_ids: Iterable[str], timeout: float, poll: float = 1.0
    ) -> dict[str, JobStatus | None]:
        """Waits until every job has ended (done, dead or cancelled) or ``timeout`` seconds
        pass, and returns their statuses (``None`` for a job the queue does not hold).

        Waiting blocks on the queue's ``results`` stream, so it wakes as soon as a job ends,
        and looks again at least every ``poll`` seconds. Jobs still running at the timeout
        come back as they are: check ``JobStatus.ended``.
        """
        ids = list(job_ids)
        deadline = time.monotonic() + timeout
        # The shard whose stream to block on: that of the first job still running (a
        # blocking read cannot span the shards' cluster slots).
        shard = 0
        while True:
            results_key = shard_prefix(self._queue, shard) + "results"
            # The stream's last entry before looking: an end after the look wakes the read.
            last = self._redis.xrevrange(results_key, count=1)
            since = _text(last[0][0]) if last else "0-0"
            located = {job_id: self._located_status(job_id) for job_id in ids}
            statuses = {job_id: status for job_id, (status, _) in located.items()}
            waiting = [
                at for status, at in located.values()
                if status is not None and status.state not in TERMINAL_STATES
            ]
            if not waiting:
                return statuses
            left = deadline - time.monotonic()
            if left <= 0:
                return statuses
            if waiting[0] != shard:
                # Look again with that shard's stream marked first.
                shard = waiting[0]
                continue
            block_ms = max(1, int(min(left, poll) * 1000))
            self._redis.xread({results_key: since}, count=1, block=block_ms)

    def enqueue_many(
        self,
        envelopes: Sequence[Mapping[str, Any]],
        *,
        run_at: datetime | None = None,
        max_attempts: int | None = None,
    ) -> list[EnqueueResult]:
        """Enqueues complete envelopes (see ``build_stage_envelope``, ``build_promote_envelope``)
        in one transaction, one round trip, and returns their results in order.

        All envelopes are checked first; if any is invalid, ``InvalidJob`` lists the problems
        of all of them (prefixed ``envelopes[i]``) and nothing is sent. At most ``MAX_BATCH``
        envelopes per call. ``run_at`` and ``max_attempts`` apply to every job.
        """
        return self._enqueue(envelopes, run_at=run_at, max_attempts=max_attempts, bulk=True)

    def _enqueue(
        self,
        envelopes: Sequence[Mapping[str, Any]],
        *,
        run_at: datetime | None,
        max_attempts: int | None,
        bulk: bool,
    ) -> list[EnqueueResult]:
        if isinstance(envelopes, Mapping):
            raise InvalidJob(["envelopes: expected a list of envelopes, got a single envelope"])
        envelopes = list(envelopes)
        if not envelopes:
            return []
        if len(envelopes) > MAX_BATCH:
            raise InvalidJob(
                [
                    f"envelopes: {len(envelopes)} jobs in one call; "
                    f"split them into batches of at most {MAX_BATCH}"
                ]
            )
        attempts = self._max_attempts if max_attempts is None else _check_max_attempts(max_attempts)
        if attempts is None:
            raise InvalidJob(
                [
                    f"max_attempts: must be an int from 1 to {_MAX_ATTEMPTS_LIMIT}, "
                    f"not {max_attempts!r}"
                ]
            )
        run_at_ms = _run_at_ms(run_at)
        encoded = self._encoded(envelopes, bulk)
        count = self._shards.get()
        by_shard: dict[int, list[int]] = {}
        for i, envelope in enumerate(envelopes):
            key = shard_key(envelope) if count > 1 else None
            by_shard.setdefault(shard_of(key, count) if key is not None else 0, []).append(i)
        results: list[EnqueueResult | None] = [None] * len(envelopes)
        conflicts: list[str] = []
        for shard, positions in sorted(by_shard.items()):
            prefix = shard_prefix(self._queue, shard)
            args: list[Any] = [prefix, run_at_ms, attempts]
            incoming: dict[str, bytes] = {}
            for i in positions:
                # The key is the envelope's own: purge.lua finds it there (docs/wire-format.md).
                args += [envelopes[i]["id"], envelopes[i]["idempotency_key"]]
                incoming[envelopes[i]["id"]] = encoded[i]
            try:
                reply = self._transaction(prefix, args, incoming)
            except NoScriptError:
                # First use, or Redis lost its scripts (a restart). The script cannot be
                # loaded inside the transaction, whose DEL and HSET took effect: load it and
                # run the whole transaction again, whose DEL clears what the failed one left.
                self._redis.script_load(self._enqueue_source)
                reply = self._transaction(prefix, args, incoming)
            shard_results, shard_conflicts = self._results(reply, len(positions))
            for i, result in zip(positions, shard_results, strict=True):
                results[i] = result
            conflicts += shard_conflicts
        if conflicts:
            raise JobIdConflict(conflicts, results)
        return [r for r in results if r is not None]

    def _transaction(self, prefix: str, args: list[Any], incoming: dict[str, bytes]) -> Any:
        """MULTI; DEL incoming; HSET incoming id envelope ...; EVALSHA enqueue.lua; EXEC."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(prefix + "incoming")
        pipe.hset(prefix + "incoming", mapping=incoming)
        pipe.evalsha(self._enqueue_sha, 1, prefix + "queued", *args)
        return pipe.execute()[-1]

    def _encoded(self, envelopes: list[Mapping[str, Any]], bulk: bool) -> list[bytes]:
        """Every envelope as sent, after all of them passed validation and their ids differ."""
        problems: list[str] = []
        encoded: list[bytes] = []
        for i, envelope in enumerate(envelopes):
            try:
                encoded.append(encode_envelope(envelope))
            except InvalidJob as e:
                label = f"envelopes[{i}]: " if bulk else ""
                problems.extend(label + p for p in e.errors)
        if problems:
            raise InvalidJob(problems)
        duplicates = sorted(i for i, n in Counter(e["id"] for e in envelopes).items() if n > 1)
        if duplicates:
            raise InvalidJob(
                [f"envelopes: id {d} is used by more than one envelope" for d in duplicates]
            )
        return encoded

    @staticmethod
    def _results(reply: Any, count: int) -> tuple[list[EnqueueResult | None], list[str]]:
        """The results of one transaction's jobs (``None`` for a conflict), and the ids that
        conflicted."""
        if not isinstance(reply, list) or len(reply) != 2 * count:
            raise ResponseError(f"enqueue.lua: expected {count} (id, status) pairs, got {reply!r}")
        results: list[EnqueueResult | None] = []
        conflicts: list[str] = []
        for raw_id, raw_status in zip(reply[0::2], reply[1::2], strict=True):
            job_id, status = _text(raw_id), int(raw_status)
            if status == -1:
                conflicts.append(job_id)
                results.append(None)
            else:
                results.append(EnqueueResult(id=job_id, created=status == 1))
        return results, conflicts
