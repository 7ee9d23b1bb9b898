"""A submit → poll → fetch upstream for asset tasks, shaped like Replicate's predictions and
fal's queue, for the `queue_http` task provider's tests.

    POST /v1/jobs                  (also /v1/models/{model}/jobs) → {"id", "status": "queued"}
    GET  /v1/jobs/{id}             → {"id", "status", "progress" (0-100), "logs": [{"message"}],
                                      "output": [{"url", "content_type", "width", "height"}]
                                      once succeeded, "error" once failed}
    POST /v1/jobs/{id}/cancel      → the job ends "cancelled"
    GET  /files/{name}.png         → a real PNG of the size the output claims

The first word of the input's prompt picks the behaviour (anything else is "succeed"):

    succeed   queued for 2 polls, running at 30/60/90 % with a log line each, then succeeded
    fail      queued, running at 50 %, then failed with `FAIL_MESSAGE`
    slow      running at 10 % for as long as anyone polls (for cancel tests)
    flaky     the first status poll answers 503, then as succeed
    reject    the submit answers 400, quoting the key it was sent (as real upstreams do)

The state advances one step per status request, not per second, so a test's pace does not
depend on its poll interval. It runs in a thread of the test process so tests can read what
it saw: submitted bodies and headers, cancels, status polls.
"""

from __future__ import annotations

import io
import itertools
import threading
from dataclasses import dataclass, field
from typing import Any

import orjson
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from shared.redis.embedded import free_port
from tests.threaded_server import ThreadedServer

BEHAVIOURS = ("succeed", "fail", "slow", "flaky", "reject")
LOG_LINES = ["loading weights", "denoising 1/3", "denoising 2/3", "denoising 3/3", "done"]
FAIL_MESSAGE = "CUDA out of memory (mock)"
DEFAULT_SIZE = (64, 48)

# (status, progress %, log lines so far) for each status poll; the last one repeats.
SCRIPTS: dict[str, list[tuple[str, int, int]]] = {
    "succeed": [
        ("queued", 0, 0),
        ("queued", 0, 0),
        ("running", 30, 2),
        ("running", 60, 3),
        ("running", 90, 4),
        ("succeeded", 100, 5),
    ],
    "fail": [("queued", 0, 0), ("running", 50, 2), ("failed", 50, 2)],
    "slow": [("queued", 0, 0), ("running", 10, 1)],
}


@dataclass
class Submitted:
    body: dict[str, Any]
    headers: dict[str, str]
    model: str | None = None


@dataclass
class Job:
    id: str
    behaviour: str
    size: tuple[int, int]
    polls: int = 0  # status requests answered, the 503s included
    cancelled: bool = False
    failed_once: bool = False


@dataclass
class MockQueueHttp:
    """`api_key`: when set, requests without `Authorization: Bearer <api_key>` get a 401."""

    api_key: str | None = None
    port: int = field(default_factory=free_port)
    submitted: list[Submitted] = field(default_factory=list)
    jobs: dict[str, Job] = field(default_factory=dict)
    cancels: list[str] = field(default_factory=list)
    status_polls: int = 0
    files_served: int = 0

    def __post_init__(self) -> None:
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._cancelled = threading.Condition(self._lock)
        self._server: ThreadedServer | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_for_cancels(self, count: int = 1, timeout_s: float = 10.0) -> bool:
        """Wait (in the test's thread) until `count` cancels have arrived."""
        with self._cancelled:
            return self._cancelled.wait_for(lambda: len(self.cancels) >= count, timeout_s)

    # -- handlers --------------------------------------------------------------------------

    def _unauthorized(self, request: Request) -> Response | None:
        if self.api_key is None:
            return None
        given = request.headers.get("authorization", "")
        if given == f"Bearer {self.api_key}":
            return None
        quoted = given.removeprefix("Bearer ")
        return JSONResponse(
            {"error": {"message": f"Invalid API key provided: {quoted}"}}, status_code=401
        )

    async def submit(self, request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return JSONResponse({"detail": "the body is not JSON"}, status_code=400)
        if not isinstance(body, dict):
            return JSONResponse({"detail": "the body is not an object"}, status_code=400)
        self.submitted.append(
            Submitted(body, dict(request.headers), request.path_params.get("model"))
        )
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        inputs = body.get("input") if isinstance(body.get("input"), dict) else body
        prompt = str(inputs.get("prompt") or "")
        words = prompt.split()
        behaviour = words[0].lower() if words and words[0].lower() in BEHAVIOURS else "succeed"
        if behaviour == "reject":
            key = request.headers.get("authorization", "").removeprefix("Bearer ")
            return JSONResponse(
                {"detail": f"input rejected for key {key}: prompt not allowed"}, status_code=400
            )
        job = Job(f"job-{next(self._ids)}", behaviour, _size(inputs))
        self.jobs[job.id] = job
        return JSONResponse({"id": job.id, "status": "queued"}, status_code=201)

    async def status(self, request: Request) -> Response:
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        job = self.jobs.get(request.path_params["id"])
        if job is None:
            return JSONResponse({"detail": "no such job"}, status_code=404)
        self.status_polls += 1
        job.polls += 1
        if job.behaviour == "flaky" and not job.failed_once:
            job.failed_once = True
            return JSONResponse({"error": "temporarily overloaded"}, status_code=503)
        return JSONResponse(self.job_state(job))

    def job_state(self, job: Job) -> dict[str, Any]:
        if job.cancelled:
            return {"id": job.id, "status": "cancelled", "progress": 0, "logs": []}
        script = SCRIPTS["succeed" if job.behaviour == "flaky" else job.behaviour]
        step = job.polls - (1 if job.failed_once else 0)
        status, progress, lines = script[min(step, len(script)) - 1]
        body: dict[str, Any] = {
            "id": job.id,
            "status": status,
            "progress": progress,
            "logs": [{"message": line, "level": "INFO"} for line in LOG_LINES[:lines]],
        }
        if status == "succeeded":
            width, height = job.size
            body["output"] = [
                {
                    "url": f"{self.base_url}/files/{job.id}-0.png",
                    "content_type": "image/png",
                    "width": width,
                    "height": height,
                }
            ]
        elif status == "failed":
            body["error"] = FAIL_MESSAGE
        return body

    async def cancel(self, request: Request) -> Response:
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        job_id = request.path_params["id"]
        job = self.jobs.get(job_id)
        with self._cancelled:
            self.cancels.append(job_id)
            self._cancelled.notify_all()
        if job is None:
            return JSONResponse({"detail": "no such job"}, status_code=404)
        job.cancelled = True
        return JSONResponse({"id": job.id, "status": "cancelled"})

    async def file(self, request: Request) -> Response:
        job_id = request.path_params["name"].rsplit("-", 1)[0]
        job = self.jobs.get(job_id)
        if job is None:
            return JSONResponse({"detail": "no such file"}, status_code=404)
        self.files_served += 1
        return Response(png(*job.size), media_type="image/png")

    # -- lifecycle -------------------------------------------------------------------------

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/jobs", self.submit, methods=["POST"]),
                Route("/v1/models/{model:path}/jobs", self.submit, methods=["POST"]),
                Route("/v1/jobs/{id}", self.status, methods=["GET"]),
                Route("/v1/jobs/{id}/cancel", self.cancel, methods=["POST"]),
                Route("/files/{name}.png", self.file, methods=["GET"]),
            ]
        )

    def start(self) -> MockQueueHttp:
        self._server = ThreadedServer(self.app(), self.port, "mock-queue-http")
        self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()


def _size(inputs: dict[str, Any]) -> tuple[int, int]:
    def side(name: str, default: int) -> int:
        value = inputs.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return max(16, min(value, 512))  # a small real image, whatever was asked
        return default

    return side("width", DEFAULT_SIZE[0]), side("height", DEFAULT_SIZE[1])


_PNGS: dict[tuple[int, int], bytes] = {}


def png(width: int, height: int) -> bytes:
    """A real PNG: a gradient, so it is not all one colour."""
    if (width, height) not in _PNGS:
        image = Image.new("RGB", (width, height))
        image.putdata(
            [
                (x * 255 // width, y * 255 // height, 128)
                for y in range(height)
                for x in range(width)
            ]
        )
        out = io.BytesIO()
        image.save(out, format="PNG")
        _PNGS[(width, height)] = out.getvalue()
    return _PNGS[(width, height)]


def model_entry(
    mock: MockQueueHttp, *, api_key_env: str | None = None, **overrides: Any
) -> dict[str, Any]:
    """A task model table entry (as the settings YAML holds it) for a `queue_http` model
    served by `mock`. `overrides` replace top-level keys of the entry."""
    entry: dict[str, Any] = {
        "provider": "queue_http",
        "kinds": ["image"],
        "model": "mock-image",
        "base_url": mock.base_url,
        "connect_timeout_s": 5.0,
        "request_timeout_s": 10.0,
        "queue_http": {
            "submit_path": "/v1/jobs",
            "status_path": "/v1/jobs/{id}",
            "cancel_path": "/v1/jobs/{id}/cancel",
            "cancel_method": "POST",
            "input_wrapper": "input",
            "id_field": "id",
            "status_field": "status",
            "progress_field": "progress",
            "logs_field": "logs",
            "outputs_field": "output",
            "output_url_field": "url",
            "output_type_field": "content_type",
            "error_field": "error",
            "poll_interval_s": 0.05,
        },
    }
    if api_key_env is not None:
        entry["api_key_env"] = api_key_env
    entry.update(overrides)
    return entry
