"""Task events (`GET /v1/tasks/{id}/events`): one named SSE event per canonical event.

- `task.started`: `{"status": "running"}`
- `task.progress`: `{"progress": 0.42, "message": "rendering frame 9/20"}` (message optional)
- `task.succeeded`: `{"status": "succeeded", "outputs": [...]}`
- `task.failed`: `{"status": "failed", "error": {"code", "message"}}`
- `task.cancelled`: `{"status": "cancelled"}`

Every event carries an `id:`; a client resumes after it with `Last-Event-ID`.
"""

from __future__ import annotations

from typing import Any

import orjson

from api.formats import PING, Frame
from api.formats.openai_chat import OpenAIChatFormat
from shared import events as ev
from shared.errors import SpoolError
from shared.store import JobRecord
from shared.transcript import Transcript

_OPENAI = OpenAIChatFormat()


def _frame(name: str, value: dict[str, Any]) -> Frame:
    return Frame(orjson.dumps(value), event=name)


class TaskFormat:
    surface = "task"
    stateful = False
    sse_ids = True
    sequence_ids = False
    keepalive = PING

    def renderer(self, render: dict[str, Any]) -> TaskFormat:
        return self

    def frames(self, entry_id: str, event: ev.Event) -> list[Frame]:
        match event:
            case ev.Start():
                return [_frame("task.started", {"status": "running"})]
            case ev.TaskProgress():
                body: dict[str, Any] = {"progress": event.progress}
                if event.message:
                    body["message"] = event.message
                return [_frame("task.progress", body)]
            case ev.TaskResult():
                return [_frame("task.succeeded", {"status": "succeeded", "outputs": event.outputs})]
            case ev.Error():
                error = {"code": event.code, "message": event.message}
                return [_frame("task.failed", {"status": "failed", "error": error})]
            case ev.Finish():
                return [_frame("task.cancelled", {"status": "cancelled"})]
            case _:
                return []

    def response(self, record: JobRecord, transcript: Transcript) -> dict[str, Any]:
        return {"id": record.id, "object": "task"}

    def error_body(self, error: SpoolError) -> dict[str, Any]:
        return _OPENAI.error_body(error)  # the task routes speak OpenAI's error shape
