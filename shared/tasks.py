"""Asset tasks (images, video, audio): what a client submits, and the task object every
task route and every webhook answers with.

A task is a job like a generation: one record and one Redis Stream in `StreamStore`, run
through the same queue, leases and reaper. Its stream holds `Start`, `TaskProgress` events
and one terminal event (`TaskResult`, `Error`, or a cancelled `Finish`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared import events as ev
from shared.errors import InvalidRequest
from shared.settings import TaskKind, TaskStatusName
from shared.store import JobRecord, Status

TASK_SURFACE = "task"
WebhookEvent = Literal["started", "progress", "completed"]
DEFAULT_WEBHOOK_EVENTS: list[WebhookEvent] = ["completed"]
MAX_CALLBACK_URL_CHARS = 2048

PUBLIC_STATUS: dict[Status, TaskStatusName] = {
    Status.QUEUED: "queued",
    Status.RUNNING: "running",
    Status.COMPLETED: "succeeded",
    Status.FAILED: "failed",
    Status.CANCELLED: "cancelled",
}


class TaskInput(BaseModel):
    """The generation input. The fields below are checked here; any others pass through
    to the upstream unchanged (a `queue_http` model may take more)."""

    model_config = ConfigDict(extra="allow")

    prompt: str = Field(min_length=1, max_length=20_000)
    negative_prompt: str | None = Field(default=None, max_length=20_000)
    width: int | None = Field(default=None, ge=16, le=4096)
    height: int | None = Field(default=None, ge=16, le=4096)
    duration_s: float | None = Field(default=None, ge=0, le=600)
    fps: int | None = Field(default=None, ge=1, le=60)
    sample_rate: int | None = Field(default=None, ge=8000, le=48000)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)


class TaskSpec(BaseModel):
    """The body of `POST /v1/tasks`."""

    model_config = ConfigDict(extra="forbid")

    kind: TaskKind
    model: str = Field(min_length=1, max_length=256)
    input: TaskInput
    callback_url: str | None = Field(default=None, max_length=MAX_CALLBACK_URL_CHARS)
    webhook_events: list[WebhookEvent] = Field(
        default_factory=lambda: list(DEFAULT_WEBHOOK_EVENTS), max_length=3
    )

    @field_validator("webhook_events")
    @classmethod
    def _unique(cls, events: list[WebhookEvent]) -> list[WebhookEvent]:
        return list(dict.fromkeys(events))


class TaskOutput(BaseModel):
    """One output of a finished task, as `TaskResult` carries it and clients see it."""

    model_config = ConfigDict(extra="forbid")

    index: int = Field(ge=0)
    url: str
    media_type: str
    size: int | None = Field(default=None, ge=0)
    width: int | None = None
    height: int | None = None
    duration_s: float | None = None
    frames: int | None = None
    stored: bool = True  # in Spool's artifact store (else `url` is the upstream's)


def task_paths(task_id: str, base_url: str = "") -> dict[str, str]:
    root = f"{base_url}/v1/tasks/{task_id}"
    return {"get": root, "events": f"{root}/events", "cancel": f"{root}/cancel"}


def output_path(task_id: str, index: int, base_url: str = "") -> str:
    return f"{base_url}/v1/tasks/{task_id}/outputs/{index}"


class TaskState(BaseModel):
    """What the task's stream says so far: progress, and how it ended."""

    progress: float = 0.0
    message: str | None = None
    outputs: list[TaskOutput] | None = None
    error: ev.Error | None = None

    def apply(self, event: ev.Event) -> None:
        match event:
            case ev.TaskProgress():
                self.progress = max(self.progress, event.progress)
                self.message = event.message or self.message
            case ev.TaskResult():
                self.progress = 1.0
                self.outputs = [TaskOutput.model_validate(o) for o in event.outputs]
            case ev.Error():
                self.error = event
            case _:
                pass


def task_object(
    record: JobRecord,
    state: TaskState,
    *,
    base_url: str = "",
    queue_position: int | None = None,
    webhooks: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The task as every task route and webhook shows it (`webhooks`, the delivery record
    of its webhook messages, only where the owner asks for the task)."""
    spec = record.request.get("task") or {}
    status = PUBLIC_STATUS[record.status]
    body: dict[str, Any] = {
        "id": record.id,
        "object": "task",
        "kind": spec.get("kind"),
        "model": record.model,
        "status": status,
        "progress": round(state.progress, 4),
        "created_at": int(record.created_at),
        "started_at": int(record.started_at) if record.started_at else None,
        "finished_at": int(record.finished_at) if record.finished_at else None,
        "urls": task_paths(record.id, base_url),
        "result": None,
        "error": None,
    }
    if status == "queued":
        body["queue_position"] = queue_position
    if state.message and not record.status.terminal:
        body["message"] = state.message
    if status == "succeeded":
        outputs = state.outputs or []
        body["result"] = {"outputs": [o.model_dump(exclude_none=True) for o in outputs]}
    elif state.error is not None:
        body["error"] = {"code": state.error.code, "message": state.error.message}
    if spec.get("callback_url"):
        body["callback_url"] = spec["callback_url"]
        body["webhook_events"] = spec.get("webhook_events") or DEFAULT_WEBHOOK_EVENTS
        if webhooks is not None:
            body["webhooks"] = webhooks
    return body


# What the built-in demo model accepts: enough to be useful, small enough that a demo task
# never strains a worker.
DEMO_LIMITS = {
    "image": {"max_side": 1024, "max_duration_s": 60.0},
    "video": {"max_side": 512, "max_duration_s": 30.0, "max_frames": 300},
    "audio": {"max_duration_s": 120.0},
}


def check_demo_input(spec: TaskSpec) -> None:
    """Refuse inputs the demo model cannot make (raises `InvalidRequest`)."""
    limits = DEMO_LIMITS[spec.kind]
    data = spec.input
    side = limits.get("max_side")
    if side is not None:
        for name, value in (("width", data.width), ("height", data.height)):
            if value is not None and value > side:
                raise InvalidRequest(f"input.{name} may be at most {side:g} for a demo {spec.kind}")
    if data.duration_s is not None and data.duration_s > limits["max_duration_s"]:
        raise InvalidRequest(
            f"input.duration_s may be at most {limits['max_duration_s']:g} for a demo {spec.kind}"
        )
    if spec.kind == "video":
        frames = (data.duration_s if data.duration_s is not None else 2.0) * (data.fps or 10)
        if frames > limits["max_frames"]:
            raise InvalidRequest(
                f"a demo video has at most {limits['max_frames']:g} frames (duration_s * fps)"
            )
