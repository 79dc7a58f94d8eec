"""ATR's side of a distribution, end to end, on the public API of ``atr_dist_producer``.

When a release candidate is ready ATR enqueues a ``stage`` job; when the vote passes it
enqueues a ``promote`` job for the voted revision. A results consumer applies each job's end
to ATR's own rows: the task row's status, and the ``distribution`` row (staging, then final
in place). Here ATR's tables are a SQLite stand-in with ATR's column names.

Run as a script it plays both hooks for one package against a running worker and prints the
rows as JSON (tests/tests/python_producer.rs does that against the real worker):

    python atr_loop.py REDIS_URL QUEUE PACKAGE CANDIDATE_REVISION VOTED_REVISION
"""

from __future__ import annotations

import json
import sqlite3
import sys
from typing import Any

import redis

from atr_dist_producer import Producer, Results, distribution_fields

SCHEMA = """
create table if not exists distribution (
    release_key text, platform text, owner_namespace text, package text, version text,
    staging integer, pending integer, retries integer default 0, upload_date text,
    api_url text, web_url text, created_by text,
    primary key (release_key, platform, owner_namespace, package, version));
create table if not exists task (
    id text primary key, task_type text, status text, error text, outcome text);
"""


def open_db(path: str = ":memory:") -> sqlite3.Connection:
    db = sqlite3.connect(path)
    db.executescript(SCHEMA)
    return db


def on_candidate_ready(producer: Producer, db: sqlite3.Connection, **job: Any) -> str:
    """Stages the candidate revision; records ATR's task row. Returns the job id."""
    enqueued = producer.enqueue_stage(**job)
    db.execute(
        "insert or ignore into task (id, task_type, status) values (?, 'DISTRIBUTION_STAGE', 'QUEUED')",
        (enqueued.id,),
    )
    db.commit()
    return enqueued.id


def on_vote_completed(producer: Producer, db: sqlite3.Connection, **job: Any) -> str:
    """Promotes the voted revision (the worker refuses if its files differ from the staged
    ones); records ATR's task row. Returns the job id."""
    enqueued = producer.enqueue_promote(**job)
    db.execute(
        "insert or ignore into task (id, task_type, status) values (?, 'DISTRIBUTION_PROMOTE', 'QUEUED')",
        (enqueued.id,),
    )
    db.commit()
    return enqueued.id


def apply_results(results: Results, db: sqlite3.Connection, block_ms: int | None = None) -> int:
    """Applies every pending result to ATR's rows, each exactly once (an upsert keyed by
    ATR's own keys, then the ack). Returns how many were applied."""
    applied = 0
    for result in results.read(block_ms=block_ms):
        outcome = result.report.outcome if result.report else None
        db.execute(
            "update task set status = ?, error = ?, outcome = ? where id = ?",
            (result.atr_status, result.message, outcome, result.id),
        )
        fields = distribution_fields(result)
        if fields is not None:
            upload = fields["upload_date"].isoformat() if fields["upload_date"] else None
            db.execute(
                """insert into distribution (release_key, platform, owner_namespace, package,
                       version, staging, pending, upload_date, api_url, web_url)
                   values (:release_key, :platform, :owner_namespace, :package, :version,
                       :staging, :pending, :upload_date, :api_url, :web_url)
                   on conflict (release_key, platform, owner_namespace, package, version)
                   do update set staging = excluded.staging, pending = excluded.pending,
                       upload_date = excluded.upload_date, api_url = excluded.api_url,
                       web_url = excluded.web_url""",
                {**fields, "upload_date": upload},
            )
        db.commit()
        results.ack(result)
        applied += 1
    return applied


def main(url: str, queue: str, package: str, candidate: str, voted: str) -> None:
    client = redis.Redis.from_url(url)
    producer = Producer(client, queue=queue, max_attempts=3)
    results = Results(client, queue=queue, group="atr", consumer="atr-test")
    db = open_db()
    release = {"project_key": "example", "version_key": "1.0.0", "platform": "NPM",
               "package": package, "version": "1.0.0", "asf_uid": "rm"}

    stage_id = on_candidate_ready(producer, db, **release, revision=candidate,
                                  artifacts=[f"{package}-1.0.0.tgz"])
    producer.wait([stage_id], timeout=60)
    apply_results(results, db, block_ms=1000)
    after_stage = db.execute("select staging from distribution where package = ?",
                             (package,)).fetchall()

    promote_id = on_vote_completed(producer, db, **release, revision=voted)
    final = producer.wait([promote_id], timeout=60)[promote_id]
    apply_results(results, db, block_ms=1000)

    rows = [dict(zip([c[0] for c in cur.description], row))
            for cur in [db.execute("select * from distribution")] for row in cur.fetchall()]
    tasks = [dict(zip([c[0] for c in cur.description], row))
             for cur in [db.execute("select * from task")] for row in cur.fetchall()]
    print(json.dumps({
        "after_stage": after_stage,
        "distribution": rows,
        "tasks": tasks,
        "promote": {
            "state": final.state if final else None,
            "atr_status": final.atr_status if final else None,
            "outcome": final.outcome if final else None,
            "diff": final.report.diff if final and final.report else None,
            "ended": final.ended if final else None,
        },
    }, default=str))


if __name__ == "__main__":
    main(*sys.argv[1:6])
