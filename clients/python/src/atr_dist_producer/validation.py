"""Checking envelopes before they reach Redis.

A worker dead-letters an envelope it cannot read, but by then ATR has long been told the job
was accepted. Checking here turns those failures into an immediate ``InvalidJob``.

Two layers:

* the JSON Schema shared with the worker (``docs/job-envelope.schema.json``), with format
  checking on for the formats it uses, implemented here so the result does not depend on
  which optional jsonschema extras happen to be installed;
* the few rules of the worker's parser (``shared/src/names.rs``, ``shared/src/job.rs``) that
  the schema cannot express: no ``.``/``..`` path components, no ``..`` in names, revision
  ``00000``, dist-tags that look like versions, duplicate manifest paths, unknown top-level
  fields, and floats where integers are expected.

Not checked here: each platform's own name rules (an owner namespace that MAVEN requires and
NPM refuses, lower-case npm names, ...). Those are the worker's ``DistributionKey`` rules; a
job breaking them is dead-lettered with a message naming the rule.
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError

from .envelope import MAX_ENVELOPE_BYTES
from .errors import InvalidJob
from .resources import envelope_schema

# The worker refuses any other top-level field (shared/src/job.rs, ENVELOPE_FIELDS), which
# the schema cannot say because the kind and payload are flattened into the envelope.
_TOP_LEVEL_FIELDS = ("v", "id", "idempotency_key", "enqueued_at", "kind", "payload")
_KINDS = ("stage", "promote")

_MAX_ARTIFACT_PATH_BYTES = 4096
_MAX_MESSAGE = 300

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.\d+)?(?:[Zz]|[+-](\d{2}):(\d{2}))"
)


def _is_uuid(instance: object) -> bool:
    return not isinstance(instance, str) or _UUID.fullmatch(instance) is not None


def _is_date_time(instance: object) -> bool:
    if not isinstance(instance, str):
        return True
    m = _RFC3339.fullmatch(instance)
    if m is None:
        return False
    groups = m.groups()
    year, month, day, hour, minute, second = (int(g) for g in groups[:6])
    off_h = int(groups[6]) if groups[6] else 0
    off_m = int(groups[7]) if groups[7] else 0
    if second > 60 or off_h > 23 or off_m > 59:
        return False
    try:
        # A leap second (60) is valid RFC 3339; datetime cannot hold it, so check it as 59.
        datetime(year, month, day, hour, minute, min(second, 59))
    except ValueError:
        return False
    return True


def _is_uint(bits: int) -> Callable[[object], bool]:
    def check(instance: object) -> bool:
        if not isinstance(instance, int) or isinstance(instance, bool):
            return True  # the "type" keyword reports non-integers
        return 0 <= instance < (1 << bits)

    return check


def _format_checker() -> FormatChecker:
    # Only the formats the schema uses, each implemented here: jsonschema's own date-time
    # check silently passes everything unless an optional package is installed.
    checker = FormatChecker(formats=())
    checker.checks("uuid")(_is_uuid)
    checker.checks("date-time")(_is_date_time)
    checker.checks("uint32")(_is_uint(32))
    checker.checks("uint64")(_is_uint(64))
    return checker


@functools.cache
def _validator() -> Draft202012Validator:
    schema = envelope_schema()
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=_format_checker())


def _shorten(text: str) -> str:
    # Messages quote the offending value, which may be a 1 MiB manifest.
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def _hint(error: ValidationError) -> str:
    # "'1' does not match '^(?:[0-9]{5}|...)$'" says little; the schema's description of the
    # value ("ATR's Revision.number: str(seq).zfill(5), e.g. 00002") says what to send.
    if error.validator not in ("pattern", "minLength", "maxLength", "enum", "format"):
        return ""
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    description = schema.get("description")
    if not isinstance(description, str):
        return ""
    return f" ({' '.join(description.split())})"


def _leaf_errors(error: ValidationError) -> Iterator[tuple[str, str]]:
    """(JSON path, message) pairs that say what is wrong, rather than "matches no oneOf".

    In this schema every ``oneOf`` is tagged: ``kind`` or ``type`` is a ``const`` in each
    branch, and the ``anyOf`` of optional values pairs a type with ``null``. A branch whose
    tag differs, or whose type the value does not even have, is not what the caller meant,
    so only the errors of the remaining branches are reported.
    """
    if not error.context:
        yield error.json_path, _shorten(error.message) + _hint(error)
        return
    branches: dict[Any, list[ValidationError]] = {}
    for sub in error.context:
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)
    untagged = [errs for errs in branches.values() if not any(e.validator == "const" for e in errs)]
    meant = [
        errs
        for errs in untagged
        if not all(e.validator == "type" and not e.relative_path for e in errs)
    ]
    if meant:
        for errs in meant:
            for sub in errs:
                yield from _leaf_errors(sub)
        return
    if untagged:
        types = " or ".join(
            dict.fromkeys(repr(e.validator_value) for errs in untagged for e in errs)
        )
        yield error.json_path, _shorten(f"{error.instance!r} is not of type {types}")
        return
    # No tag matched: report the tag and the values it may take.
    tags: dict[str, list[Any]] = {}
    for sub in error.context:
        if sub.validator == "const":
            tags.setdefault(sub.json_path, []).append(sub.validator_value)
    for path, allowed in tags.items():
        given = next(e.instance for e in error.context if e.json_path == path)
        yield path, _shorten(f"{given!r} is not one of {allowed!r}")


def _schema_problems(envelope: Any) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for error in _validator().iter_errors(envelope):
        out.extend(_leaf_errors(error))
    return sorted(out)


def _name_problem(value: Any) -> str | None:
    # names.rs check_no_traversal: a name that contains ".." could act as a path component.
    if isinstance(value, str) and ".." in value:
        return f"{value!r} contains '..', which names may not contain (path traversal)"
    return None


def _artifact_path_problem(value: Any) -> str | None:
    # The schema pattern already refuses empty components, a leading '/' and backslashes.
    if not isinstance(value, str):
        return None
    if any(part in (".", "..") for part in value.split("/")):
        return _shorten(
            f"{value!r} has a '.' or '..' component and could leave the revision root "
            "(path traversal)"
        )
    if any(unicodedata.category(c) == "Cc" for c in value):
        return _shorten(f"{value!r} contains a control character")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > _MAX_ARTIFACT_PATH_BYTES:
        return f"is {size} bytes long in UTF-8; the limit is {_MAX_ARTIFACT_PATH_BYTES}"
    return None


def _tag_problem(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    name = _name_problem(value)
    if name:
        return name
    # names.rs validate_dist_tag: npm refuses tags that parse as a version or range.
    # (A leading digit already fails the schema's pattern; "v1.4" is the case left.)
    if value[:1] in ("v", "V") and value[1:2].isdigit():
        return f"{value!r} looks like a version or range; npm refuses such tags"
    return None


def _floats(value: Any, path: str) -> Iterator[tuple[str, str]]:
    # JSON Schema counts 1.0 as an integer; the worker's parser does not.
    if isinstance(value, float):
        yield path, f"{value!r} must be an integer, not a float"
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _floats(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _floats(item, f"{path}[{i}]")


def _rule_problems(envelope: Mapping[str, Any]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = list(_floats(envelope, "$"))
    payload = envelope.get("payload")
    if not isinstance(payload, Mapping):
        return out

    def check(path: str, problem: str | None) -> None:
        if problem:
            out.append((path, problem))

    release = payload.get("release")
    if isinstance(release, Mapping):
        for field in ("project_key", "version_key"):
            check(f"$.payload.release.{field}", _name_problem(release.get(field)))
    distribution = payload.get("distribution")
    if isinstance(distribution, Mapping):
        for field in ("owner_namespace", "package", "version"):
            check(f"$.payload.distribution.{field}", _name_problem(distribution.get(field)))
    revision = payload.get("revision")
    if isinstance(revision, str) and revision.isdigit() and set(revision) == {"0"}:
        out.append(("$.payload.revision", f"{revision!r}: revision sequences start at 1 ('00001')"))
    for field in ("staging_tag", "release_tag"):
        check(f"$.payload.{field}", _tag_problem(payload.get(field)))
    artifacts = payload.get("artifacts")
    if isinstance(artifacts, list):
        for i, path in enumerate(artifacts):
            check(f"$.payload.artifacts[{i}]", _artifact_path_problem(path))
    out.extend(_manifest_problems(payload.get("source")))
    return out


def _manifest_problems(source: Any) -> list[tuple[str, str]]:
    if not isinstance(source, Mapping) or not isinstance(source.get("manifest"), Mapping):
        return []
    entries = source["manifest"].get("entries")
    if not isinstance(entries, list):
        return []
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            continue
        path = entry.get("path")
        at = f"$.payload.source.manifest.entries[{i}].path"
        problem = _artifact_path_problem(path)
        if problem:
            out.append((at, problem))
        if isinstance(path, str):
            if path in seen:
                out.append((at, f"{path!r} is listed more than once in the manifest"))
            seen.add(path)
    return out


def envelope_problems(envelope: Any) -> list[str]:
    """Every reason the worker would refuse ``envelope``, as ``"<json path>: <message>"``.

    Empty when the envelope is acceptable (size aside: see ``encode_envelope``).
    """
    if not isinstance(envelope, Mapping):
        return [f"$: the envelope must be a JSON object (a dict), not {type(envelope).__name__}"]
    problems: list[tuple[str, str]] = []
    for field in envelope:
        if field not in _TOP_LEVEL_FIELDS:
            problems.append(
                (f"$.{field}", f"unknown envelope field; allowed: {', '.join(_TOP_LEVEL_FIELDS)}")
            )
    kind = envelope.get("kind")
    if kind not in _KINDS:
        # Without a kind neither branch of the schema applies and its errors would be noise.
        given = "missing" if "kind" not in envelope else f"{kind!r} is not a job kind"
        problems.append(("$.kind", f"{given}; use 'stage' or 'promote'"))
    else:
        rules = _rule_problems(envelope)
        # A rule's message ("has a '..' component") says more than the schema's pattern
        # that refuses the same value: one message per value.
        ruled = {path for path, _ in rules}
        problems.extend(p for p in _schema_problems(envelope) if p[0] not in ruled)
        problems.extend(rules)
    unique = dict.fromkeys(f"{path}: {message}" for path, message in sorted(problems))
    return list(unique)


def validate_envelope(envelope: Any) -> None:
    """Raises ``InvalidJob`` unless ``envelope`` is acceptable; see ``encode_envelope``."""
    encode_envelope(envelope)


def encode_envelope(envelope: Any) -> bytes:
    """The envelope as compact UTF-8 JSON, once it passed every check.

    Raises ``InvalidJob`` listing all problems, including an encoded size over 1 MiB (which
    the worker refuses unread).
    """
    problems = envelope_problems(envelope)
    if problems:
        raise InvalidJob(problems)
    try:
        data = json.dumps(
            envelope, ensure_ascii=False, separators=(",", ":"), allow_nan=False
        ).encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError) as e:
        raise InvalidJob([f"$: cannot be encoded as JSON: {e}"]) from e
    if len(data) > MAX_ENVELOPE_BYTES:
        raise InvalidJob(
            [
                f"$: the envelope is {len(data)} bytes as JSON; the limit is {MAX_ENVELOPE_BYTES} "
                "(a large inline manifest is the usual cause: use source {'type': 'dir'} or "
                "{'type': 'atr'} instead)"
            ]
        )
    return data
