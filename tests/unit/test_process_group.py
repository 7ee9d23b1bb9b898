"""Unit tests for shared/process_group.py's per-process set-up: the garbage collector's
policy a server process starts with (run in a fresh interpreter each, as it freezes the
heap for good)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from shared.settings import Settings

PROBE = """
import gc, json, sys
from shared.process_group import tune_gc
from shared.settings import Settings
before = gc.get_freeze_count()
tune_gc(Settings(**json.loads(sys.argv[1])).gc_thresholds)
print(json.dumps({"before": before, "frozen": gc.get_freeze_count(), "thresholds": gc.get_threshold()}))
"""


def probe(env: dict[str, str], **settings: object) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(settings)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    result: dict[str, object] = json.loads(done.stdout)
    return result


@pytest.fixture
def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SPOOL_")}


def test_a_server_freezes_what_it_imported_and_collects_rarely(env: dict[str, str]) -> None:
    result = probe(env)
    assert result["before"] == 0
    # Everything the imports made (tens of thousands of objects) is out of the collector's way.
    assert isinstance(result["frozen"], int) and result["frozen"] > 10_000
    assert result["thresholds"] == list(Settings().gc_thresholds or ())
    assert result["thresholds"] != [700, 10, 10]


def test_thresholds_come_from_the_settings(env: dict[str, str]) -> None:
    assert probe({**env, "SPOOL_GC_THRESHOLDS": "[1000, 5, 5]"})["thresholds"] == [1000, 5, 5]
    # null keeps CPython's own thresholds (the heap is still frozen).
    kept = probe(env, gc_thresholds=None)
    assert kept["thresholds"] == [700, 10, 10]
    assert isinstance(kept["frozen"], int) and kept["frozen"] > 10_000


def test_bad_thresholds_are_refused() -> None:
    with pytest.raises(ValueError, match="gc_thresholds"):
        Settings(gc_thresholds=(0, 10, 10))
