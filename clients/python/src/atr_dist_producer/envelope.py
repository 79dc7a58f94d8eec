"""Building job envelopes: the JSON documents of ``docs/job-envelope.schema.json``.

The builders only assemble; ``validation.check_envelope`` decides what is acceptable, so a
hand-written envelope given to ``Producer.enqueue_many`` is held to the same rules.
"""

from __future__ import annotations

import copy
import enum
import hashlib
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any, Literal

from .uuid7 import uuid7

ENVELOPE_VERSION = 1
"""The envelope version this package writes (its ``v``). The queue's wire format, in
docs/wire-format.md, has versions of its own."""

MAX_ENVELOPE_BYTES = 1024 * 1024
"""Workers refuse larger envelopes unread, so producers must not send them."""

PLATFORMS: tuple[str, ...] = (
    "ARTIFACT_HUB",
    "DOCKER_HUB",
    "MAVEN",
    "NPM",
    "NPM_SCOPED",
    "PYPI",
    "GITHUB",
    "HEX",
)
"""Platform names as ATR stores them: the member names of its ``DistributionPlatform``."""

Kind = Literal["stage", "promote"]

Platform = str | enum.Enum
"""A platform member name (``"NPM"``), or a member of an enum named like ATR's, whose
``.name`` is used."""

Source = Mapping[str, Any]
"""Where the worker reads the revision: ``{"type": "dir"}`` (the default),
``{"type": "atr"}``, or ``{"type": "inline", "manifest": {"entries": [{"path", "size",
"sha3_256"}, ...]}}``."""

Envelope = dict[str, Any]

_IDEMPOTENCY_KEY_MAX = 200


def platform_name(platform: Platform) -> Any:
    """The platform's member name; enums (such as ATR's ``DistributionPlatform``) give theirs.

    Anything else is returned unchanged so that validation, not this helper, reports it.
    """
    if isinstance(platform, enum.Enum):
        return platform.name
    return platform


def release_key(project_key: str, version_key: str) -> str:
    """ATR's ``Release.key``: ``"{project_key}-{version_key}"``, e.g. ``tooling-0.0.1``."""
    return f"{project_key}-{version_key}"


def default_idempotency_key(
    *,
    kind: Kind,
    project_key: str,
    version_key: str,
    platform: Platform,
    owner_namespace: str,
    package: str,
    version: str,
    revision: str,
    dry_run: bool = False,
) -> str:
    """The idempotency key used when the caller gives none, derived from the job itself.

    ``{kind}:{release_key}:{platform}:{owner_namespace}:{package}:{version}:{revision}``,
    with ``:dry-run`` appended for a dry run.

    Deterministic on purpose: if ATR enqueues a job and then crashes (or times out) before
    recording that it did, its repeated call yields the same key, and the queue returns the
    existing job instead of publishing twice. The string is the one the worker's own
    producers build (``Envelope::default_idempotency_key`` in ``shared/src/job.rs``, used by
    ``atr-dist enqueue``), so the same job enqueued from ATR and from the CLI is one job.

    The key is held until the job is purged, even after it finished or failed. A dry run has
    a key of its own (the ``:dry-run`` suffix), so dry-running first never takes the real
    job's key. To run a job again on purpose, pass an explicit ``idempotency_key`` (for
    example the default key with an attempt counter appended).

    Keys are at most 200 bytes. A longer combination (possible with very long names) is cut
    to its first 135 characters followed by ``#`` and the SHA3-256 of the whole, as the
    worker does, which keeps it deterministic.
    """
    text = ":".join(
        str(part)
        for part in (
            kind,
            release_key(project_key, version_key),
            platform_name(platform),
            owner_namespace,
            package,
            version,
            revision,
        )
    )
    if dry_run:
        text += ":dry-run"
    if _is_idempotency_key(text):
        return text
    digest = hashlib.sha3_256(text.encode("utf-8", "surrogatepass")).hexdigest()
    key = f"{text[: _IDEMPOTENCY_KEY_MAX - 65]}#{digest}"
    if _is_idempotency_key(key):
        return key
    # Only reachable with names that validation refuses anyway (spaces, non-ASCII); a
    # valid key here keeps the error list to the real problems.
    return f"{kind}#{digest}"


def _is_idempotency_key(key: str) -> bool:
    """Printable ASCII without spaces, 1 to 200 bytes: the schema's IdempotencyKey."""
    return 0 < len(key) <= _IDEMPOTENCY_KEY_MAX and all("!" <= c <= "~" for c in key)


def now_rfc3339() -> str:
    """The current UTC time in RFC 3339 with a ``Z`` suffix, as ``enqueued_at`` wants it."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _build(
    kind: Kind,
    specific: dict[str, Any],
    *,
    project_key: str,
    version_key: str,
    platform: Platform,
    owner_namespace: str,
    package: str,
    version: str,
    revision: str,
    source: Source | None,
    asf_uid: str,
    dry_run: bool,
    idempotency_key: str | None,
) -> Envelope:
    """The envelope of either kind: the common payload fields, the kind's own fields
    (``specific``, where ``None`` values are left out), and the default key when none is given."""
    payload: dict[str, Any] = {
        "release": {"project_key": project_key, "version_key": version_key},
        "distribution": {
            "platform": platform_name(platform),
            "owner_namespace": owner_namespace,
            "package": package,
            "version": version,
        },
        "revision": revision,
        "source": _source(source),
    }
    payload.update({k: v for k, v in specific.items() if v is not None})
    payload["dry_run"] = dry_run
    payload["asf_uid"] = asf_uid
    if idempotency_key is None:
        idempotency_key = default_idempotency_key(
            kind=kind,
            project_key=project_key,
            version_key=version_key,
            platform=platform,
            owner_namespace=owner_namespace,
            package=package,
            version=version,
            revision=revision,
            dry_run=dry_run,
        )
    return _envelope(kind, payload, idempotency_key)


def _source(source: Source | None) -> Any:
    if source is None:
        return {"type": "dir"}
    if not isinstance(source, Mapping):
        return source  # validation names the problem
    # A deep copy, so a caller's later change to its manifest cannot alter a built job.
    return copy.deepcopy(dict(source))


def _envelope(kind: Kind, payload: dict[str, Any], idempotency_key: str) -> Envelope:
    return {
        "v": ENVELOPE_VERSION,
        "id": str(uuid7()),
        "idempotency_key": idempotency_key,
        "enqueued_at": now_rfc3339(),
        "kind": kind,
        "payload": payload,
    }


def _artifact_list(artifacts: Iterable[str]) -> Any:
    # A lone string is iterable too; list("a.tgz") would silently become five artifacts.
    if isinstance(artifacts, (str, bytes, Mapping)):
        return artifacts
    try:
        return list(artifacts)
    except TypeError:
        return artifacts


def build_stage_envelope(
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
) -> Envelope:
    """A ``stage`` envelope, with a fresh UUIDv7 id and ``enqueued_at`` of now.

    Not validated here: ``Producer.enqueue_many`` validates before sending. ``staging_tag``
    is left out when ``None`` (the platform's configured default applies).
    """
    return _build(
        "stage",
        {"artifacts": _artifact_list(artifacts), "staging_tag": staging_tag},
        project_key=project_key,
        version_key=version_key,
        platform=platform,
        owner_namespace=owner_namespace,
        package=package,
        version=version,
        revision=revision,
        source=source,
        asf_uid=asf_uid,
        dry_run=dry_run,
        idempotency_key=idempotency_key,
    )


def build_promote_envelope(
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
) -> Envelope:
    """A ``promote`` envelope, with a fresh UUIDv7 id and ``enqueued_at`` of now.

    Not validated here: ``Producer.enqueue_many`` validates before sending. ``release_tag``
    is left out when ``None`` (``latest`` on npm, the version on OCI registries).
    """
    return _build(
        "promote",
        {"release_tag": release_tag},
        project_key=project_key,
        version_key=version_key,
        platform=platform,
        owner_namespace=owner_namespace,
        package=package,
        version=version,
        revision=revision,
        source=source,
        asf_uid=asf_uid,
        dry_run=dry_run,
        idempotency_key=idempotency_key,
    )
