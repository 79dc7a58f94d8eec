"""What became of a job: its state on the queue and, once it ended, the worker's report.

Read from the keys docs/wire-format.md documents (the job record in ``jobs``, ``error_class``,
``last_error``, the ``result`` hash and the state's sorted set); no HTTP, no database.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

TERMINAL_STATES = frozenset({"done", "dead", "cancelled"})
"""States a job never leaves by itself (an operator's retry queues a dead or cancelled job
again)."""


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _time(ms: int | float | None) -> datetime | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(int(ms) / 1000, tz=timezone.utc)


def atr_task_status(state: str, error_class: str | None) -> str:
    """ATR's ``TaskStatus`` name (upper case, as ATR stores it) for a job in ``state``.

    The same mapping as the worker's (``shared/src/outcome.rs``): a job that died of a
    transient failure that outlasted every attempt is ``BROKEN`` (worth restarting later);
    any other death, and a cancel, is ``FAILED``.
    """
    if state in ("scheduled", "queued", "retrying"):
        return "QUEUED"
    if state == "running":
        return "ACTIVE"
    if state == "done":
        return "COMPLETED"
    if state == "dead" and error_class == "transient":
        return "BROKEN"
    return "FAILED"


@dataclass(frozen=True)
class Report:
    """The worker's report of a job (docs/wire-format.md, "Results"), when one was made."""

    kind: str
    distribution: dict[str, str]
    revision: str
    outcome: str
    dry_run: bool
    staged: bool
    promoted: bool
    upload_date: datetime | None = None
    api_url: str | None = None
    web_url: str | None = None
    platform_digest: str | None = None
    manifest_digest: str | None = None
    diff: dict[str, list[str]] | None = None

    @classmethod
    def from_json(cls, text: str | bytes | None) -> Report | None:
        """The report in ``text``, or ``None`` for an empty or unreadable one."""
        text = _text(text)
        if not text:
            return None
        try:
            doc = json.loads(text)
        except ValueError:
            return None
        if not isinstance(doc, dict):
            return None
        upload = doc.get("upload_date")
        return cls(
            kind=doc.get("kind", ""),
            distribution=doc.get("distribution") or {},
            revision=doc.get("revision", ""),
            outcome=doc.get("outcome", ""),
            dry_run=bool(doc.get("dry_run", False)),
            staged=bool(doc.get("staged", False)),
            promoted=bool(doc.get("promoted", False)),
            upload_date=datetime.fromisoformat(upload.replace("Z", "+00:00")) if upload else None,
            api_url=doc.get("api_url"),
            web_url=doc.get("web_url"),
            platform_digest=doc.get("platform_digest"),
            manifest_digest=doc.get("manifest_digest"),
            diff=doc.get("diff"),
        )


@dataclass(frozen=True)
class JobStatus:
    """A job as the queue knows it now.

    ``atr_status`` is ATR's task status for it (``QUEUED``, ``ACTIVE``, ``COMPLETED``,
    ``FAILED``, ``BROKEN``). ``report`` is the worker's report once the job ended (``None``
    while it runs, or when no worker reported on it: a cancel before it started, a lease
    that ran out with no attempts left, a malformed envelope).
    """

    id: str
    state: str
    attempt: int
    max_attempts: int
    atr_status: str
    error_class: str | None = None
    last_error: str | None = None
    enqueued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    report: Report | None = None
    worker: str | None = field(default=None, repr=False)

    @property
    def ended(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def outcome(self) -> str | None:
        """How the last attempt ended (``completed``, ``unchanged``, ``revision_changed``,
        ...), from the report."""
        return self.report.outcome if self.report else None


def parse_status(
    job_id: str,
    record: Any,
    error_class: Any,
    last_error: Any,
    result: Any,
    finished_score: Any,
) -> JobStatus | None:
    """A ``JobStatus`` from the values of the documented keys; ``None`` without a record."""
    text = _text(record)
    if not text:
        return None
    words = text.split(" ")
    state = words[0]

    def word(i: int) -> int | None:
        try:
            return int(words[i])
        except (IndexError, ValueError):
            return None

    cls = _text(error_class) or None
    finished_ms = word(7) if state == "done" else finished_score
    return JobStatus(
        id=job_id,
        state=state,
        max_attempts=word(1) or 0,
        enqueued_at=_time(word(2)),
        attempt=word(4) or 0,
        started_at=_time(word(5)),
        worker=words[6] if len(words) > 6 else None,
        finished_at=_time(finished_ms) if state in TERMINAL_STATES else None,
        atr_status=atr_task_status(state, cls),
        error_class=cls,
        last_error=_text(last_error) or None,
        report=Report.from_json(result),
    )
