"""The conformance fixtures in ``tests/conformance/`` (shared with the Rust tests, and usable
by any client): the published JSON Schema and this package's own checks must accept exactly
the envelopes the worker accepts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from atr_dist_producer import validation
from atr_dist_producer.validation import envelope_problems

_FIXTURES = Path(__file__).resolve().parents[3] / "tests" / "conformance" / "envelopes.json"


def _cases() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = json.loads(_FIXTURES.read_text())["cases"]
    return cases


def test_the_fixtures_are_there() -> None:
    cases = _cases()
    assert len(cases) >= 20
    assert any(c["worker_error"] is None for c in cases)
    assert any(c["worker_error"] is not None for c in cases)


# Worker rules this producer does not check yet, by fixture name. Strict: a case that
# starts passing fails here, so the list only shrinks.
_PRODUCER_GAPS = {
    "scoped package without a namespace": (
        "the distribution key's per-platform rules (shared/src/key.rs) are not ported"
    ),
}


def _param(case: dict[str, Any]) -> Any:
    gap = _PRODUCER_GAPS.get(case["name"])
    marks = [pytest.mark.xfail(reason=gap, strict=True)] if gap else []
    return pytest.param(case, id=case["name"], marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in _cases()])
def test_the_schema_and_the_producer_agree_with_the_worker(case: dict[str, Any]) -> None:
    envelope = case["envelope"]
    worker_accepts = case["worker_error"] is None
    schema_errors = [e.message for e in validation._validator().iter_errors(envelope)]
    if case.get("schema_can_tell", True):
        assert (not schema_errors) == worker_accepts, (case["worker_error"], schema_errors)
    else:
        assert not worker_accepts and not schema_errors
    problems = envelope_problems(envelope)
    assert (not problems) == worker_accepts, (case["worker_error"], problems)
