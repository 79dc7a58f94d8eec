"""What an enqueue reports back for each job."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EnqueueResult:
    """The outcome of enqueuing one job.

    ``id`` is the job's id on the queue. When ``created`` is false the idempotency key
    already named a job and ``id`` is that earlier job's id: nothing new was enqueued.
    """

    id: str
    created: bool
