"""The cheap copies the request path makes: a job record without its request, and a model
entry's JSON form made once."""

from __future__ import annotations

import dataclasses

from shared.model_table import ModelEntry, entry_json
from shared.store import JobRecord, Status


def test_a_record_without_its_request_keeps_every_other_field() -> None:
    values = {
        "id": "a" * 32,
        "status": Status.RUNNING,
        "surface": "openai.chat",
        "model": "m",
        "created_at": 1.5,
        "started_at": 2.5,
        "finished_at": 3.5,
        "request": {"large": "x" * 100},
        "render": {"id": "chatcmpl-1"},
        "output": {"text": "t"},
        "cancel_requested": True,
        "owner": "key_1",
    }
    assert set(values) == {f.name for f in dataclasses.fields(JobRecord)}  # every field set
    record = JobRecord(**values)  # type: ignore[arg-type]
    assert record.without_request() == dataclasses.replace(record, request={})


def test_an_entrys_json_form_is_its_dump_made_once() -> None:
    entry = ModelEntry(provider="openai", base_url="http://up/v1", model="m", name="up#1")
    other = ModelEntry(provider="demo", name="d")
    assert entry_json(entry) == entry.model_dump(mode="json")
    assert entry_json(entry) is entry_json(entry)
    assert entry_json(other) == other.model_dump(mode="json") != entry_json(entry)
