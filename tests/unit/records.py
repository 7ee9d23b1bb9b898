"""A finished job's record, for tests of the wire formats' non-streaming answers."""

from __future__ import annotations

from typing import Any

from shared.store import JobRecord, Status


def completed_record(surface: str, render: dict[str, Any], model: str = "m") -> JobRecord:
    return JobRecord(
        id="s1",
        status=Status.COMPLETED,
        surface=surface,
        model=model,
        created_at=1.0,
        started_at=1.0,
        finished_at=2.0,
        request={},
        render=render,
        output=None,
        cancel_requested=False,
        owner="key_test",
    )
