"""Consuming the queue's ``results`` stream (docs/wire-format.md, "Results"), so that ATR
updates its ``distribution`` and task rows exactly once per job that ended.

    results = Results(redis_client, queue="default", group="atr", consumer="atr-web-1")
    for result in results.read(block_ms=5000):
        update_rows(result)            # idempotent by result.id
        results.ack(result)

Entries are read through a consumer group (``XREADGROUP``); one that is not acked stays
pending, and ``read`` first claims entries a crashed consumer left pending longer than
``claim_after_ms`` (``XAUTOCLAIM``), so no result is lost when a consumer dies between
reading and acking. Apply a result idempotently (keyed by the job id): a claimed entry may
have been applied already by the consumer that died.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from redis import Redis, ResponseError

from .queues import key_prefix
from .status import Report


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class Result:
    """One job's end, as the stream entry says it.

    ``report`` is the worker's report (kind, distribution, outcome, digests, URLs, upload
    date, staged and promoted flags, the voted manifest digest, and for
    ``revision_changed`` the paths that differ). It is ``None`` where no worker reported:
    a cancel before the job started, a lease that ran out with no attempts left, or a
    malformed envelope; ``envelope`` then holds the job's envelope if the queue still has
    it, so the job can still be told apart.
    """

    stream_id: str
    id: str
    state: str
    atr_status: str
    attempt: int
    error_class: str | None
    message: str | None
    report: Report | None
    envelope: dict[str, Any] | None = None

    @property
    def kind(self) -> str | None:
        if self.report:
            return self.report.kind
        return self.envelope.get("kind") if self.envelope else None

    @property
    def distribution(self) -> dict[str, str] | None:
        """ATR's key of the distribution: release_key, platform, owner_namespace, package,
        version."""
        if self.report:
            return self.report.distribution
        if not self.envelope:
            return None
        payload = self.envelope.get("payload") or {}
        release = payload.get("release") or {}
        dist = payload.get("distribution") or {}
        return {
            "release_key": f"{release.get('project_key')}-{release.get('version_key')}",
            "platform": dist.get("platform", ""),
            "owner_namespace": dist.get("owner_namespace", ""),
            "package": dist.get("package", ""),
            "version": dist.get("version", ""),
        }


def distribution_fields(result: Result) -> dict[str, Any] | None:
    """The values of ATR's ``distribution`` row (its column names) that a successful stage
    or promote sets, or ``None`` when the result does not change the row (a failure, a
    cancel, a dry run).

    A stage records the staging distribution (``staging=True``); a promote flips it to final
    in place (``staging=False``), as ATR's ``__upgrade_staging_to_final`` does. ``pending``
    is false: the worker read the platform back before it reported success.
    """
    report = result.report
    if result.state != "done" or report is None or report.dry_run:
        return None
    fields: dict[str, Any] = {
        "release_key": report.distribution.get("release_key"),
        "platform": report.distribution.get("platform"),
        "owner_namespace": report.distribution.get("owner_namespace"),
        "package": report.distribution.get("package"),
        "version": report.distribution.get("version"),
        "staging": not report.promoted,
        "pending": False,
        "upload_date": report.upload_date,
        "api_url": report.api_url,
        "web_url": report.web_url,
    }
    return fields


class Results:
    """A consumer of one queue's results stream in consumer group ``group``.

    The group is created on first use, reading from the start of the stream, so results
    that ended before the consumer first ran are not missed (the stream keeps the last
    100,000 or so).
    """

    def __init__(
        self,
        redis: Redis,
        queue: str = "default",
        group: str = "atr",
        consumer: str | None = None,
        claim_after_ms: int = 60_000,
    ) -> None:
        self._redis = redis
        self._prefix = key_prefix(queue)
        self._stream = self._prefix + "results"
        self._group = group
        self._consumer = consumer or f"{socket.gethostname()}-{id(self):x}"
        self._claim_after_ms = claim_after_ms
        self._claim_cursor = "0-0"
        try:
            redis.xgroup_create(self._stream, group, id="0", mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    @property
    def consumer(self) -> str:
        return self._consumer

    def read(self, count: int = 100, block_ms: int | None = None) -> Iterator[Result]:
        """Results not yet acked by this group: first those a crashed consumer left pending
        for longer than ``claim_after_ms``, then new ones (waiting up to ``block_ms`` for
        some when there are none; ``None`` does not wait)."""
        claimed = self._redis.xautoclaim(
            self._stream,
            self._group,
            self._consumer,
            min_idle_time=self._claim_after_ms,
            start_id=self._claim_cursor,
            count=count,
        )
        # XAUTOCLAIM answers [next cursor, entries, deleted ids]; the cursor wraps to 0-0.
        self._claim_cursor = _text(claimed[0])
        for stream_id, fields in claimed[1]:
            if fields:
                yield self._result(stream_id, fields)
        reply = self._redis.xreadgroup(
            self._group, self._consumer, {self._stream: ">"}, count=count, block=block_ms
        )
        for _stream, entries in reply or []:
            for stream_id, fields in entries:
                yield self._result(stream_id, fields)

    def ack(self, result: Result) -> None:
        """Marks ``result`` applied: it is not handed out again."""
        self._redis.xack(self._stream, self._group, result.stream_id)

    def _result(self, stream_id: Any, raw: dict[Any, Any]) -> Result:
        fields = {_text(k): _text(v) for k, v in raw.items()}
        report = Report.from_json(fields.get("result"))
        envelope = None
        if report is None and fields.get("batch"):
            text = self._redis.hget(self._prefix + "env:" + fields["batch"], fields.get("id", ""))
            if text:
                try:
                    envelope = json.loads(_text(text))
                except ValueError:
                    envelope = None
        try:
            attempt = int(fields.get("attempt") or 0)
        except ValueError:
            attempt = 0
        return Result(
            stream_id=_text(stream_id),
            id=fields.get("id", ""),
            state=fields.get("state", ""),
            atr_status=fields.get("atr_status", ""),
            attempt=attempt,
            error_class=fields.get("error_class") or None,
            message=fields.get("message") or None,
            report=report,
            envelope=envelope,
        )


__all__ = ["Result", "Results", "distribution_fields"]
