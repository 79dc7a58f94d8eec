"""Exceptions raised by the producer, each saying what to fix."""

from __future__ import annotations

from collections.abc import Sequence

from .result import EnqueueResult


class InvalidJob(ValueError):
    """A job, or an argument it was enqueued with, breaks the atr-dist contract.

    Raised before anything is sent to Redis, so nothing was enqueued. ``errors`` lists every
    problem found, each starting with the JSON path of the offending value
    (``$.payload.distribution.platform: ...``), prefixed by ``envelopes[i]`` in bulk calls.
    """

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors: list[str] = list(errors)
        count = len(self.errors)
        noun = "problem" if count == 1 else "problems"
        lines = "\n".join(f"  - {e}" for e in self.errors)
        super().__init__(f"invalid atr-dist job ({count} {noun}); nothing was enqueued:\n{lines}")


class JobIdConflict(RuntimeError):
    """Redis refused jobs whose ids already belong to jobs with other idempotency keys.

    Only possible when a caller supplies its own envelope ids (``enqueue_many``) and reuses
    one: generated UUIDv7 ids do not collide. The other jobs of the same call *were*
    processed; ``results`` holds their outcomes in order, with ``None`` for each refused job.
    Give the refused envelopes fresh ids (``uuid7()``) and enqueue them again.
    """

    def __init__(self, conflicts: Sequence[str], results: Sequence[EnqueueResult | None]) -> None:
        self.conflicts: list[str] = list(conflicts)
        self.results: list[EnqueueResult | None] = list(results)
        super().__init__(
            "atr-dist refused job id(s) already used by a job with another idempotency key: "
            + ", ".join(self.conflicts)
            + "; give these envelopes fresh ids (uuid7()) and enqueue them again"
        )
