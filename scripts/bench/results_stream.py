"""Redis CPU and memory per job of the worker's fetch + ack, for the current `lua/ack.lua`
and a peer version of it (another commit's), on one private Redis, rounds interleaved.

Run through scripts/bench-results-stream, which starts the Redis and finds the scripts.
What it measures: N stage jobs (the 430-byte envelope of docs/job-envelope.schema.json's
example) are enqueued, then leased and acked done in batches, as a worker does, each with a
590-byte report; Redis's own CPU time (INFO cpu) and memory (INFO memory) are read before
and after the fetch + ack phase. The enqueue and fetch scripts are the current ones for
both: only ack.lua differs, so the difference is what the results stream costs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import uuid

import redis

ENVELOPE = json.dumps({
    "v": 1, "id": "x", "kind": "stage", "idempotency_key": "k",
    "enqueued_at": "2026-01-01T00:00:00Z",
    "payload": {
        "release": {"project_key": "example", "version_key": "1.0.0"}, "revision": "00001",
        "distribution": {"platform": "NPM", "owner_namespace": "", "package": "example-lib",
                         "version": "1.0.0"},
        "artifacts": ["example-lib-1.0.0.tgz"], "asf_uid": "rm", "source": {"type": "dir"},
        "dry_run": False, "staging_tag": None,
    },
})
REPORT = json.dumps({
    "kind": "stage",
    "distribution": {"release_key": "example-1.0.0", "platform": "NPM", "owner_namespace": "",
                     "package": "example-lib", "version": "1.0.0"},
    "revision": "00001", "outcome": "completed", "dry_run": False, "staged": True,
    "promoted": False, "upload_date": "2026-12-06T11:00:00Z",
    "api_url": "http://127.0.0.1:4873/example-lib", "web_url": None,
    "platform_digest": "sha512-" + "A" * 86 + "==", "manifest_digest": "sha3-256:" + "b" * 64,
})


def run(r: redis.Redis, lua: str, ack_dir: str, label: str, jobs: int, batch: int,
        report: str) -> tuple[float, float]:
    """(µs of Redis CPU per job, bytes kept per done job) of one round."""
    def load(d: str, name: str) -> str:
        with open(os.path.join(d, name)) as f:
            return r.script_load(f.read())
    enqueue, fetch, ack = load(lua, "enqueue.lua"), load(lua, "fetch.lua"), load(ack_dir, "ack.lua")
    prefix = f"bench:{{{label}-{uuid.uuid4().hex[:8]}}}:"
    queued = prefix + "queued"
    for start in range(0, jobs, 1000):
        ids = [str(uuid.uuid4()) for _ in range(min(1000, jobs - start))]
        pipe = r.pipeline(transaction=True)
        pipe.delete(prefix + "incoming")
        pipe.hset(prefix + "incoming", mapping={i: ENVELOPE for i in ids})
        args: list[object] = [prefix, 0, 3]
        for i in ids:
            args += [i, "k" + i]
        pipe.evalsha(enqueue, 1, queued, *args)
        pipe.execute()
    cpu = lambda: (lambda i: i["used_cpu_user"] + i["used_cpu_sys"])(r.info("cpu"))  # noqa: E731
    mem0, cpu0 = r.info("memory")["used_memory"], cpu()
    done = 0
    while done < jobs:
        reply = r.evalsha(fetch, 1, queued, prefix, "bench-worker", 60000, batch)
        leased = reply[2:]  # after now_ms and wait_ms
        if not leased:
            break
        args = [prefix, len(leased) // 3]
        for k in range(0, len(leased), 3):
            args += [leased[k], leased[k + 1], report]
        r.evalsha(ack, 1, queued, *args)
        done += len(leased) // 3
    cpu1, mem1 = cpu(), r.info("memory")["used_memory"]
    if done != jobs:
        raise SystemExit(f"{label}: {done} of {jobs} jobs done; the run is not comparable")
    keys = list(r.scan_iter(prefix + "*", count=1000))
    for k in range(0, len(keys), 500):
        r.delete(*keys[k:k + 500])
    return (cpu1 - cpu0) * 1e6 / jobs, (mem1 - mem0) / jobs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--lua", required=True, help="the current scripts")
    ap.add_argument("--peer", required=True, help="the peer's scripts (its ack.lua is used)")
    ap.add_argument("--peer-name", default="peer")
    ap.add_argument("--jobs", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    r = redis.Redis(host="127.0.0.1", port=a.port)
    rows = {}
    for with_report in (True, False):
        report = REPORT if with_report else ""
        for _ in range(a.rounds):
            for name, d in (("current", a.lua), (a.peer_name, a.peer)):
                rows.setdefault((with_report, name), []).append(
                    run(r, a.lua, d, name, a.jobs, a.batch, report))
    print(f"{a.jobs} jobs per round, acked done {a.batch} per call, {a.rounds} rounds "
          f"interleaved; medians")
    print(f"{'report':<8}{'ack.lua':<28}{'Redis CPU µs/job':>18}{'B kept/done job':>18}")
    for with_report in (True, False):
        for name in ("current", a.peer_name):
            samples = rows[(with_report, name)]
            us = statistics.median(s[0] for s in samples)
            kept = statistics.median(s[1] for s in samples)
            print(f"{'590 B' if with_report else 'none':<8}{name:<28}{us:>18.2f}{kept:>18.0f}")
        cur = rows[(with_report, "current")]
        peer = rows[(with_report, a.peer_name)]
        ratio_cpu = statistics.median(s[0] for s in cur) / statistics.median(s[0] for s in peer)
        ratio_mem = statistics.median(s[1] for s in cur) / statistics.median(s[1] for s in peer)
        print(f"{'':<8}{'current / ' + a.peer_name:<28}{ratio_cpu:>18.2f}{ratio_mem:>18.2f}")


if __name__ == "__main__":
    main()
