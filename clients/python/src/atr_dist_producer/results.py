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

An entry names every job one script call ended in one state (wire format 7), so one entry
gives several results; the entry is acked once every one of them is. What each result says
beyond the entry (attempt, error, report) is read from the job's keys when the entry is
read. Entries written in wire format 6, one job each with its fields, are read too.

A sharded queue (docs/wire-format.md, "Shards") has one stream per shard; ``Results`` reads
them all, with one consumer group of the same name in each, and learns of added shards
within a second.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from redis import Redis, ResponseError

from .queues import ShardCount, shard_prefix
from .status import Report


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class Result:
    """One job's end: its state and ATR status from the stream entry, the rest from the
    job's keys.

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
    shard: int = 0
    """The shard whose stream named the job (0 on an unsharded queue)."""

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
        self._queue = queue
        self._shards = ShardCount(redis, queue)
        self._group = group
        self._consumer = consumer or f"{socket.gethostname()}-{id(self):x}"
        self._claim_after_ms = claim_after_ms
        # Per shard: where XAUTOCLAIM goes on; a shard is in it once its group exists.
        self._claim_cursors: dict[int, str] = {}
        # The shard the next blocking read waits on: shards take turns.
        self._turn = 0
        self._unacked = {}
        self._join_shards()

    def _stream(self, shard: int) -> str:
        return shard_prefix(self._queue, shard) + "results"

    def _join_shards(self) -> int:
        """Creates the group in the stream of every shard it is not in yet (reading from the
        stream's start); returns the shard count."""
        count = self._shards.get()
        for shard in range(count):
            if shard in self._claim_cursors:
                continue
            try:
                self._redis.xgroup_create(self._stream(shard), self._group, id="0", mkstream=True)
            except ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise
            self._claim_cursors[shard] = "0-0"
        return count

    @property
    def consumer(self) -> str:
        return self._consumer

    # Results handed out and not acked yet, by shard and entry: an entry is acked with its
    # last one.
    _unacked: dict[tuple[int, str], set[str]]

    def read(self, count: int = 100, block_ms: int | None = None) -> Iterator[Result]:
        """Results not yet acked by this group: first those a crashed consumer left pending
        for longer than ``claim_after_ms``, then new ones (waiting up to ``block_ms`` for
        some when there are none; ``None`` does not wait).

        On a sharded queue every shard's stream is read without waiting; only when none had
        anything does it wait, on one shard's stream at a time (a blocking read cannot span
        cluster slots), for ``block_ms`` divided by the shard count, the shards taking turns."""
        shards = self._join_shards()
        for shard in range(shards):
            claimed = self._redis.xautoclaim(
                self._stream(shard),
                self._group,
                self._consumer,
                min_idle_time=self._claim_after_ms,
                start_id=self._claim_cursors[shard],
                count=count,
            )
            # XAUTOCLAIM answers [next cursor, entries, deleted ids]; the cursor wraps to 0-0.
            self._claim_cursors[shard] = _text(claimed[0])
            for stream_id, fields in claimed[1]:
                if fields:
                    yield from self._results(shard, stream_id, fields)
        if shards == 1:
            yield from self._read_new(0, count, block_ms)
            return
        found = False
        for shard in range(shards):
            for result in self._read_new(shard, count, None):
                found = True
                yield result
        if found or block_ms is None:
            return
        self._turn = (self._turn + 1) % shards
        yield from self._read_new(self._turn, count, max(1, block_ms // shards))

    def _read_new(self, shard: int, count: int, block_ms: int | None) -> Iterator[Result]:
        reply = self._redis.xreadgroup(
            self._group, self._consumer, {self._stream(shard): ">"}, count=count, block=block_ms
        )
        for _stream, entries in reply or []:
            for stream_id, fields in entries:
                yield from self._results(shard, stream_id, fields)

    def ack(self, result: Result) -> None:
        """Marks ``result`` applied. Its entry is acked, and not handed out again, once every
        result of the entry is."""
        entry = (result.shard, result.stream_id)
        left = self._unacked.get(entry)
        if left is not None:
            left.discard(result.id)
            if left:
                return
            del self._unacked[entry]
        self._redis.xack(self._stream(result.shard), self._group, result.stream_id)

    def _results(self, shard: int, stream_id: Any, raw: dict[Any, Any]) -> list[Result]:
        fields = {_text(k): _text(v) for k, v in raw.items()}
        stream_id = _text(stream_id)
        if "ids" not in fields:
            return [self._v6_result(stream_id, fields)]
        ids = [i for i in fields["ids"].split(" ") if i]
        state = fields.get("state", "")
        p = shard_prefix(self._queue, shard)
        pipe = self._redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(p + "jobs", job_id)
            pipe.hget(p + "error_class", job_id)
            pipe.hget(p + "last_error", job_id)
            pipe.hget(p + "result", job_id)
        values = pipe.execute()
        results = []
        for k, job_id in enumerate(ids):
            record, cls, error, text = values[4 * k : 4 * k + 4]
            words = (_text(record) if record is not None else "").split(" ")
            report = Report.from_json(text)
            envelope = None
            if report is None and len(words) > 3:
                envelope = self._envelope(p, words[3], job_id)
            try:
                attempt = int(words[4]) if len(words) > 4 else 0
            except ValueError:
                attempt = 0
            # A done job's error entries keep an earlier attempt's failure: not its end.
            failed = state != "done"
            results.append(
                Result(
                    stream_id=stream_id,
                    id=job_id,
                    state=state,
                    atr_status=fields.get("atr_status", ""),
                    attempt=attempt,
                    error_class=(_text(cls) or None) if failed and cls is not None else None,
                    message=(_text(error) or None) if failed and error is not None else None,
                    report=report,
                    envelope=envelope,
                    shard=shard,
                )
            )
        self._unacked[(shard, stream_id)] = {r.id for r in results}
        return results

    def _envelope(self, prefix: str, batch: str, job_id: str) -> dict[str, Any] | None:
        text = self._redis.hget(prefix + "env:" + batch, job_id)
        if not text:
            return None
        try:
            doc = json.loads(_text(text))
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None

    def _v6_result(self, stream_id: str, fields: dict[str, str]) -> Result:
        """An entry written in wire format 6, one job with its fields: only in shard 0,
        as a version 6 queue was never sharded."""
        report = Report.from_json(fields.get("result"))
        envelope = None
        if report is None and fields.get("batch"):
            envelope = self._envelope(shard_prefix(self._queue, 0), fields["batch"], fields.get("id", ""))
        try:
            attempt = int(fields.get("attempt") or 0)
        except ValueError:
            attempt = 0
        return Result(
            stream_id=stream_id,
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
