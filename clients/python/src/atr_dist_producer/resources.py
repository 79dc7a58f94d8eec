"""The files this package shares with the Rust worker.

``lua/`` and ``job-envelope.schema.json`` inside the package are symlinks to the repository's
``lua/`` and ``docs/job-envelope.schema.json``: the worker embeds the same files, so a change
to the contract cannot leave this client behind. Built distributions carry copies.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

_PACKAGE = resources.files("atr_dist_producer")


def script_source(name: str) -> bytes:
    """The exact bytes of ``lua/<name>.lua`` (e.g. ``enqueue``), as Redis must run it."""
    return (_PACKAGE / "lua" / f"{name}.lua").read_bytes()


@functools.cache
def envelope_schema() -> dict[str, Any]:
    """The job envelope's JSON Schema (``docs/job-envelope.schema.json``), parsed once."""
    schema: dict[str, Any] = json.loads((_PACKAGE / "job-envelope.schema.json").read_bytes())
    return schema
