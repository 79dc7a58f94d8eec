"""The package runs the repository's own script and schema, through symlinks."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import redis

import atr_dist_producer
from atr_dist_producer import Producer
from atr_dist_producer.resources import envelope_schema, script_source

from conftest import REPO_ROOT

PACKAGE_DIR = Path(atr_dist_producer.__file__).parent


def test_enqueue_script_is_the_repository_file() -> None:
    assert script_source("enqueue") == (REPO_ROOT / "lua" / "enqueue.lua").read_bytes()


def test_producer_runs_the_repository_script() -> None:
    p = Producer(redis.Redis(host="127.0.0.1", port=1))
    expected = hashlib.sha1((REPO_ROOT / "lua" / "enqueue.lua").read_bytes()).hexdigest()
    assert p._enqueue_sha == expected


def test_lua_and_schema_are_symlinks_into_the_repository() -> None:
    lua = PACKAGE_DIR / "lua"
    schema = PACKAGE_DIR / "job-envelope.schema.json"
    assert lua.is_symlink()
    assert schema.is_symlink()
    assert lua.resolve() == (REPO_ROOT / "lua").resolve()
    assert schema.resolve() == (REPO_ROOT / "docs" / "job-envelope.schema.json").resolve()


def test_schema_is_the_repository_schema() -> None:
    assert envelope_schema() == json.loads(
        (REPO_ROOT / "docs" / "job-envelope.schema.json").read_text()
    )
