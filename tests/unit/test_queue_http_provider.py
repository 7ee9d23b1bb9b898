"""Unit tests for worker/task_providers/queue_http.py: against `MockQueueHttp` over real
HTTP, and against an in-process httpx.MockTransport for hostile replies."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
from PIL import Image

from shared.errors import UpstreamError
from shared.settings import QueueHttpConfig, TaskModelEntry
from shared.tasks import TaskSpec
from tests.mock_queue_http import FAIL_MESSAGE, LOG_LINES, MockQueueHttp, model_entry
from worker.task_providers import MediaOutput
from worker.task_providers.queue_http import (
    MAX_REPLY_BYTES,
    QueueHttpProvider,
    estimate_progress,
    fill_path,
    lookup,
    map_status,
    new_log_lines,
    parse_outputs,
    read_progress,
)

KEY_ENV = "SPOOL_UNIT_TEST_QUEUE_HTTP_KEY"
KEY = "sk-queue-upstream-secret-1234"
BASE_URL = "http://upstream.test"


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[float, str | None]] = []

    async def progress(self, fraction: float, message: str | None = None) -> None:
        self.calls.append((fraction, message))

    @property
    def fractions(self) -> list[float]:
        return [f for f, _ in self.calls]

    @property
    def messages(self) -> list[str]:
        return [m for _, m in self.calls if m is not None]


def spec(prompt: str = "succeed: a red fox", **input: Any) -> TaskSpec:
    return TaskSpec.model_validate(
        {"kind": "image", "model": "fox-image", "input": {"prompt": prompt, **input}}
    )


@pytest.fixture(scope="module")
def mock() -> Iterator[MockQueueHttp]:
    upstream = MockQueueHttp(api_key=KEY).start()
    yield upstream
    upstream.stop()


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def mock_entry(mock: MockQueueHttp, **overrides: Any) -> TaskModelEntry:
    return TaskModelEntry.model_validate(model_entry(mock, api_key_env=KEY_ENV, **overrides))


def fast(http: httpx.AsyncClient, **kw: Any) -> QueueHttpProvider:
    return QueueHttpProvider(http, retry_backoff_s=0.01, **kw)


# -- against the mock upstream, over real HTTP ------------------------------------------------


async def test_succeeds_with_progress_logs_and_outputs(
    mock: MockQueueHttp, http: httpx.AsyncClient
) -> None:
    report = Recorder()
    task = spec("succeed a red fox", width=128, height=96, style="ink")
    outputs = await fast(http).run(task, mock_entry(mock), report)

    job_id = max(mock.jobs, key=lambda j: int(j.split("-")[1]))
    assert outputs == [
        MediaOutput(
            media_type="image/png",
            url=f"{mock.base_url}/files/{job_id}-0.png",
            width=128,
            height=96,
        )
    ]
    # Progress only rises, stays short of done, and follows the upstream's 30/60/90 %.
    assert report.fractions == sorted(report.fractions)
    assert all(0 < f < 1 for f in report.fractions)
    for expected in (0.3, 0.6, 0.9):
        assert any(abs(f - expected) < 1e-9 for f in report.fractions)
    assert report.messages == LOG_LINES  # each line once, in order

    seen = mock.submitted[-1]
    assert seen.body == {
        "input": {"prompt": "succeed a red fox", "width": 128, "height": 96, "style": "ink"}
    }
    assert seen.headers["authorization"] == f"Bearer {KEY}"
    assert seen.headers["content-type"] == "application/json"
    assert mock.jobs[job_id].polls == 6

    # The output is a real image, where the upstream said.
    assert outputs[0].url is not None
    reply = await http.get(outputs[0].url)
    assert Image.open(io.BytesIO(reply.content)).size == (128, 96)


async def test_failed_task_raises_with_the_upstream_message(
    mock: MockQueueHttp, http: httpx.AsyncClient
) -> None:
    report = Recorder()
    cancels = len(mock.cancels)
    with pytest.raises(UpstreamError) as raised:
        await fast(http).run(spec("fail please"), mock_entry(mock), report)
    assert raised.value.code == "upstream_task_failed"
    assert raised.value.message == FAIL_MESSAGE
    assert not raised.value.retryable
    assert report.messages == LOG_LINES[:2]
    assert len(mock.cancels) == cancels  # it ended upstream: nothing to cancel


async def started_job(mock: MockQueueHttp, before: set[str], polls: int) -> str:
    """The job submitted since `before`, once the mock has answered `polls` of its polls."""
    for _ in range(500):
        new = set(mock.jobs) - before
        if new and mock.jobs[next(iter(new))].polls >= polls:
            return next(iter(new))
        await asyncio.sleep(0.01)
    raise AssertionError("the job was not polled in time")


async def test_cancel_while_running_cancels_upstream_once(
    mock: MockQueueHttp, http: httpx.AsyncClient
) -> None:
    before = set(mock.jobs)
    cancels = len(mock.cancels)
    run = asyncio.create_task(fast(http).run(spec("slow and steady"), mock_entry(mock), Recorder()))
    job_id = await started_job(mock, before, polls=4)

    started = asyncio.get_running_loop().time()
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert asyncio.get_running_loop().time() - started < 2.0
    assert mock.cancels[cancels:] == [job_id]
    assert mock.jobs[job_id].cancelled
    polls = mock.jobs[job_id].polls
    await asyncio.sleep(0.2)
    assert mock.jobs[job_id].polls == polls  # and polling stopped


async def test_cancelled_again_while_cancelling_leaves_at_once(http: httpx.AsyncClient) -> None:
    release = asyncio.Event()
    cancel_sent = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/cancel"):
            cancel_sent.set()
            await release.wait()
            return httpx.Response(200, json={})
        if request.method == "POST":
            return httpx.Response(200, json={"id": "j1"})
        return httpx.Response(200, json={"status": "running"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        run = asyncio.create_task(
            QueueHttpProvider(client).run(spec(), transport_entry(), Recorder())
        )
        await asyncio.sleep(0.1)
        run.cancel()
        await asyncio.wait_for(cancel_sent.wait(), 1)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(run, 1)
        release.set()  # the cancel request, shielded, still finishes
        await asyncio.sleep(0.05)


async def test_flaky_status_poll_is_ridden_out(
    mock: MockQueueHttp, http: httpx.AsyncClient
) -> None:
    report = Recorder()
    outputs = await fast(http).run(spec("flaky but fine"), mock_entry(mock), report)
    assert len(outputs) == 1 and outputs[0].media_type == "image/png"
    assert report.messages == LOG_LINES
    job_id = max(mock.jobs, key=lambda j: int(j.split("-")[1]))
    assert mock.jobs[job_id].failed_once
    assert mock.jobs[job_id].polls == 7  # the 503 and the six of a success


async def test_submit_400_is_not_retryable_and_hides_the_key(
    mock: MockQueueHttp, http: httpx.AsyncClient
) -> None:
    jobs = len(mock.jobs)
    with pytest.raises(UpstreamError) as raised:
        await fast(http).run(spec("reject this"), mock_entry(mock), Recorder())
    error = raised.value
    assert error.upstream_status == 400
    assert not error.retryable
    assert error.code == "upstream_error"
    assert "input rejected" in error.message
    assert KEY not in error.message and "[redacted]" in error.message
    assert len(mock.jobs) == jobs


async def test_wrong_key_echoed_by_the_upstream_is_redacted(
    mock: MockQueueHttp, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "sk-wrong-key-0987654321"
    monkeypatch.setenv(KEY_ENV, wrong)
    with pytest.raises(UpstreamError) as raised:
        await fast(http).run(spec(), mock_entry(mock), Recorder())
    assert raised.value.upstream_status == 401
    assert wrong not in raised.value.message and "Invalid API key" in raised.value.message


async def test_model_placeholder_in_the_submit_path(
    mock: MockQueueHttp, http: httpx.AsyncClient
) -> None:
    entry = model_entry(mock, api_key_env=KEY_ENV, model="fal-ai/flux/dev")
    entry["queue_http"]["submit_path"] = "/v1/models/{model}/jobs"
    await fast(http).run(spec(), TaskModelEntry.model_validate(entry), Recorder())
    assert mock.submitted[-1].model == "fal-ai/flux/dev"


# -- against scripted replies -----------------------------------------------------------------

Reply = httpx.Response | Callable[[httpx.Request], httpx.Response] | Exception


class Scripted:
    """Answers each (method, path) with its replies in turn, the last one repeating."""

    def __init__(self, routes: dict[tuple[str, str], list[Reply]]) -> None:
        self.routes = routes
        self.requests: list[httpx.Request] = []
        self.counts: dict[tuple[str, str], int] = {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        key = (request.method, raw_path(request))
        replies = self.routes.get(key)
        if replies is None:
            return httpx.Response(404, json={"detail": "not scripted"})
        n = self.counts.get(key, 0)
        self.counts[key] = n + 1
        reply = replies[min(n, len(replies) - 1)]
        if isinstance(reply, Exception):
            raise reply
        return reply(request) if callable(reply) else reply

    def seen(self, method: str, path: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == method and raw_path(r) == path]


def raw_path(request: httpx.Request) -> str:
    # As sent: `url.path` would decode the %2F of an id that holds a slash.
    return request.url.raw_path.decode().partition("?")[0]


def transport_entry(**queue_http: Any) -> TaskModelEntry:
    cfg = {
        "submit_path": "/jobs",
        "status_path": "/jobs/{id}",
        "cancel_path": "/jobs/{id}/cancel",
        "poll_interval_s": 0.01,
        **queue_http,
    }
    return TaskModelEntry.model_validate(
        {
            "provider": "queue_http",
            "base_url": BASE_URL,
            "model": "up-model",
            "api_key_env": KEY_ENV,
            "queue_http": cfg,
        }
    )


def ok(body: Any, status: int = 200) -> httpx.Response:
    return httpx.Response(status, json=body)


SUBMITTED = ok({"id": "j1", "status": "queued"})
DONE = ok({"status": "succeeded", "output": "https://cdn.test/out.png"})


async def run_scripted(
    routes: dict[tuple[str, str], list[Reply]],
    entry: TaskModelEntry | None = None,
    report: Recorder | None = None,
) -> tuple[list[MediaOutput], Scripted]:
    scripted = Scripted(routes)
    async with httpx.AsyncClient(transport=httpx.MockTransport(scripted)) as client:
        provider = QueueHttpProvider(client, retry_backoff_s=0.001)
        outputs = await provider.run(spec(), entry or transport_entry(), report or Recorder())
    return outputs, scripted


async def scripted_error(
    routes: dict[tuple[str, str], list[Reply]], entry: TaskModelEntry | None = None
) -> tuple[UpstreamError, Scripted]:
    scripted = Scripted(routes)
    async with httpx.AsyncClient(transport=httpx.MockTransport(scripted)) as client:
        provider = QueueHttpProvider(client, retry_backoff_s=0.001)
        with pytest.raises(UpstreamError) as raised:
            await provider.run(spec(), entry or transport_entry(), Recorder())
    return raised.value, scripted


async def test_minimal_replicate_like_success() -> None:
    outputs, scripted = await run_scripted(
        {("POST", "/jobs"): [SUBMITTED], ("GET", "/jobs/j1"): [ok({"status": "starting"}), DONE]}
    )
    assert outputs == [MediaOutput(media_type="image/png", url="https://cdn.test/out.png")]
    assert scripted.seen("POST", "/jobs/j1/cancel") == []


async def test_fal_like_result_path_custom_auth_and_extra_body() -> None:
    entry = transport_entry(
        submit_path="/{model}",
        status_path="/{model}/requests/{id}/status?logs=1",
        result_path="/{model}/requests/{id}",
        cancel_path="/{model}/requests/{id}/cancel",
        cancel_method="PUT",
        id_field="request_id",
        outputs_field="images",
        logs_field="logs",
        extra_body={"sync_mode": False, "prompt": "pinned by the operator"},
        auth_scheme="Key",
    )
    images = [
        {"url": "https://fal.test/a.jpeg", "content_type": "image/jpeg", "width": 8, "height": 4},
        {"url": "https://fal.test/b.webp", "width": True},  # a bool is no width
    ]
    logs = [{"message": "one"}, {"message": "two"}]
    report = Recorder()
    outputs, scripted = await run_scripted(
        {
            ("POST", "/up-model"): [ok({"request_id": "r/1", "status": "IN_QUEUE"})],
            ("GET", "/up-model/requests/r%2F1/status"): [
                ok({"status": "IN_QUEUE"}, 202),
                ok({"status": "IN_PROGRESS", "logs": logs[:1]}, 202),
                ok({"status": "COMPLETED", "logs": logs}),
            ],
            ("GET", "/up-model/requests/r%2F1"): [ok({"images": images})],
        },
        entry,
        report,
    )
    assert outputs == [
        MediaOutput(media_type="image/jpeg", url="https://fal.test/a.jpeg", width=8, height=4),
        MediaOutput(media_type="image/webp", url="https://fal.test/b.webp"),
    ]
    assert report.messages == ["one", "two"]
    submit = scripted.requests[0]
    assert submit.headers["authorization"] == f"Key {KEY}"
    assert orjson.loads(submit.content) == {"prompt": "pinned by the operator", "sync_mode": False}
    status = scripted.seen("GET", "/up-model/requests/r%2F1/status")[0]
    assert status.url.params["logs"] == "1"


async def test_bare_key_in_a_custom_header() -> None:
    entry = transport_entry(auth_header="X-Api-Key", auth_scheme=None)
    _, scripted = await run_scripted(
        {("POST", "/jobs"): [SUBMITTED], ("GET", "/jobs/j1"): [DONE]}, entry
    )
    assert scripted.requests[0].headers["x-api-key"] == KEY
    assert "authorization" not in scripted.requests[0].headers


async def test_estimated_progress_without_a_progress_field() -> None:
    report = Recorder()
    running = ok({"status": "processing"})
    await run_scripted(
        {
            ("POST", "/jobs"): [SUBMITTED],
            ("GET", "/jobs/j1"): [ok({"status": "queued"}), running, running, running, DONE],
        },
        report=report,
    )
    assert report.fractions[0] == pytest.approx(0.05)
    assert report.fractions == sorted(report.fractions)
    assert all(f <= 0.9 for f in report.fractions)


async def test_upstream_cancelled_on_its_own() -> None:
    error, scripted = await scripted_error(
        {("POST", "/jobs"): [SUBMITTED], ("GET", "/jobs/j1"): [ok({"status": "canceled"})]}
    )
    assert error.code == "upstream_task_cancelled"
    assert scripted.seen("POST", "/jobs/j1/cancel") == []


async def test_unknown_status_is_running_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    weird = ok({"status": "warming_up"})
    with caplog.at_level(logging.WARNING, logger="worker.task_providers.queue_http"):
        await run_scripted(
            {("POST", "/jobs"): [SUBMITTED], ("GET", "/jobs/j1"): [weird, weird, weird, DONE]}
        )
    assert sum("warming_up" in r.getMessage() for r in caplog.records) == 1


def huge(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, content=b'{"status": "' + b"x" * (MAX_REPLY_BYTES + 10) + b'"}')


def streamed_huge(request: httpx.Request) -> httpx.Response:
    # No Content-Length: the cap must hold while reading, too.
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"status": "'
        for _ in range(20):
            yield b"x" * 65536
        yield b'"}'

    return httpx.Response(200, content=chunks())


@pytest.mark.parametrize(
    ("routes", "cancelled"),
    [
        ({("POST", "/jobs"): [httpx.Response(200, content=b"<html>ok</html>")]}, False),
        ({("POST", "/jobs"): [ok(["j1"])]}, False),
        ({("POST", "/jobs"): [ok({"id": {"nested": 1}})]}, False),
        ({("POST", "/jobs"): [ok({"id": "x" * 600})]}, False),
        ({("POST", "/jobs"): [SUBMITTED], ("GET", "/jobs/j1"): [ok({"status": 3})]}, True),
        ({("POST", "/jobs"): [SUBMITTED], ("GET", "/jobs/j1"): [ok({"state": "done"})]}, True),
        ({("POST", "/jobs"): [SUBMITTED], ("GET", "/jobs/j1"): [ok("succeeded")]}, True),
        (
            {("POST", "/jobs"): [SUBMITTED], ("GET", "/jobs/j1"): [httpx.Response(200, text="??")]},
            True,
        ),
        ({("POST", "/jobs"): [SUBMITTED], ("GET", "/jobs/j1"): [huge]}, True),
        ({("POST", "/jobs"): [SUBMITTED], ("GET", "/jobs/j1"): [streamed_huge]}, True),
        (
            {("POST", "/jobs"): [SUBMITTED], ("GET", "/jobs/j1"): [ok({"status": "succeeded"})]},
            False,
        ),
        (
            {
                ("POST", "/jobs"): [SUBMITTED],
                ("GET", "/jobs/j1"): [ok({"status": "succeeded", "output": []})],
            },
            False,
        ),
        (
            {
                ("POST", "/jobs"): [SUBMITTED],
                ("GET", "/jobs/j1"): [ok({"status": "succeeded", "output": 7})],
            },
            False,
        ),
        (
            {
                ("POST", "/jobs"): [SUBMITTED],
                ("GET", "/jobs/j1"): [ok({"status": "succeeded", "output": [{"href": "x"}]})],
            },
            False,
        ),
        (
            {
                ("POST", "/jobs"): [SUBMITTED],
                ("GET", "/jobs/j1"): [ok({"status": "succeeded", "output": "file:///etc/passwd"})],
            },
            False,
        ),
    ],
    ids=[
        "submit-not-json",
        "submit-not-object",
        "id-wrong-type",
        "id-too-long",
        "status-wrong-type",
        "status-missing",
        "status-reply-a-string",
        "status-not-json",
        "status-huge",
        "status-huge-streamed",
        "outputs-missing",
        "outputs-empty",
        "outputs-wrong-type",
        "output-without-url",
        "output-not-http",
    ],
)
async def test_hostile_replies_are_malformed(
    routes: dict[tuple[str, str], list[Reply]], cancelled: bool
) -> None:
    error, scripted = await scripted_error(routes)
    assert error.code == "upstream_malformed"
    # A job we gave up on while it may still run is cancelled; a finished one is not.
    assert len(scripted.seen("POST", "/jobs/j1/cancel")) == (1 if cancelled else 0)


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_submit_overload_is_retryable(status: int) -> None:
    reply = httpx.Response(
        status, json={"error": {"message": "busy"}}, headers={"Retry-After": "3"}
    )
    error, _ = await scripted_error({("POST", "/jobs"): [reply]})
    assert error.retryable
    assert error.upstream_status == status
    assert error.retry_after == 3.0
    assert "busy" in error.message


async def test_submit_connect_error_is_retryable() -> None:
    error, _ = await scripted_error({("POST", "/jobs"): [httpx.ConnectError("refused")]})
    assert error.retryable and error.code == "upstream_connect_error"


async def test_transient_poll_failures_are_ridden_out() -> None:
    outputs, scripted = await run_scripted(
        {
            ("POST", "/jobs"): [SUBMITTED],
            ("GET", "/jobs/j1"): [
                ok({"status": "running"}),
                httpx.Response(502, text="bad gateway"),
                httpx.ConnectError("reset"),
                httpx.Response(429, json={"error": "slow down"}),
                httpx.ReadTimeout("slow"),
                ok({"status": "running"}),
                httpx.Response(503),
                DONE,
            ],
        }
    )
    assert len(outputs) == 1
    assert scripted.counts[("GET", "/jobs/j1")] == 8


async def test_polling_gives_up_after_repeated_failures_and_cancels() -> None:
    error, scripted = await scripted_error(
        {("POST", "/jobs"): [SUBMITTED], ("GET", "/jobs/j1"): [httpx.Response(503)]}
    )
    assert error.upstream_status == 503 and error.retryable
    assert scripted.counts[("GET", "/jobs/j1")] == 5
    assert len(scripted.seen("POST", "/jobs/j1/cancel")) == 1


async def test_poll_404_is_not_retried() -> None:
    error, scripted = await scripted_error(
        {
            ("POST", "/jobs"): [SUBMITTED],
            ("GET", "/jobs/j1"): [httpx.Response(404, json={"detail": "gone"})],
        }
    )
    assert error.upstream_status == 404 and not error.retryable
    assert scripted.counts[("GET", "/jobs/j1")] == 1


async def test_failure_message_is_redacted_and_shaped() -> None:
    failed = ok({"status": "failed", "error": {"message": f"bad key {KEY} used"}})
    error, _ = await scripted_error({("POST", "/jobs"): [SUBMITTED], ("GET", "/jobs/j1"): [failed]})
    assert error.code == "upstream_task_failed"
    assert error.message == "bad key [redacted] used"

    failed = ok({"status": "failed"})
    error, _ = await scripted_error({("POST", "/jobs"): [SUBMITTED], ("GET", "/jobs/j1"): [failed]})
    assert error.message == "the upstream task failed"


async def test_failing_cancel_is_swallowed() -> None:
    scripted = Scripted(
        {
            ("POST", "/jobs"): [SUBMITTED],
            ("GET", "/jobs/j1"): [ok({"status": "running"})],
            ("POST", "/jobs/j1/cancel"): [httpx.ConnectError("down")],
        }
    )
    async with httpx.AsyncClient(transport=httpx.MockTransport(scripted)) as client:
        run = asyncio.create_task(
            QueueHttpProvider(client).run(spec(), transport_entry(), Recorder())
        )
        await asyncio.sleep(0.05)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
    assert len(scripted.seen("POST", "/jobs/j1/cancel")) == 1


# -- pure helpers -----------------------------------------------------------------------------


def test_lookup() -> None:
    data = {"data": {"status": "ok", "images": [{"url": "u"}]}, "n": 0}
    assert lookup(data, "data.status") == "ok"
    assert lookup(data, "data.images.0.url") == "u"
    assert lookup(data, "data.images.1.url") is None
    assert lookup(data, "data.status.deeper") is None
    assert lookup(data, "missing.path") is None
    assert lookup(data, "n") == 0
    assert lookup(["a"], "0") == "a"


def test_map_status() -> None:
    values = QueueHttpConfig(submit_path="/", status_path="/").status_values
    assert map_status("IN_QUEUE", values) == "queued"
    assert map_status("processing", values) == "running"
    assert map_status("Succeeded", values) == "succeeded"
    assert map_status("canceled", values) == "cancelled"
    assert map_status("whatever", values) is None
    with pytest.raises(UpstreamError):
        map_status(1, values)


def test_read_progress() -> None:
    assert read_progress(0.25, False) == (0.25, False)
    assert read_progress(45, False) == (0.45, True)
    assert read_progress(1, False) == (0.01, True)  # of 100: an int 1 is not "done"
    assert read_progress(0.5, True) == (0.005, True)  # the scale sticks
    assert read_progress(250.0, False) == (1.0, True)
    assert read_progress(-3, False) == (0.0, False)
    for junk in (True, "50%", None, float("nan"), [1]):
        assert read_progress(junk, False) == (None, False)


def test_estimate_progress() -> None:
    assert estimate_progress("queued", 0) == pytest.approx(0.05)
    assert estimate_progress("running", 0) == pytest.approx(0.1)
    assert estimate_progress("running", 30) < estimate_progress("running", 60) < 0.9
    assert estimate_progress("running", 10**6) <= 0.9


def test_new_log_lines() -> None:
    assert new_log_lines("a\nb\npartial", 0, False) == (["a", "b"], 2)
    assert new_log_lines("a\nb\npartial more", 2, True) == (["partial more"], 3)
    assert new_log_lines("a\nb\n", 2, True) == ([], 2)
    assert new_log_lines("10%\r50%\r90%\n", 0, False) == (["90%"], 1)
    assert new_log_lines(["x", "y"], 1, False) == (["y"], 2)
    assert new_log_lines([{"message": "m"}, {"level": "x"}, 3], 0, False) == (["m"], 3)
    assert new_log_lines({"not": "logs"}, 4, False) == ([], 4)
    assert new_log_lines(["only one"], 5, False) == ([], 1)


def test_parse_outputs() -> None:
    cfg = QueueHttpConfig(submit_path="/", status_path="/")
    assert parse_outputs("https://a.test/x.mp4", cfg) == [
        MediaOutput(media_type="video/mp4", url="https://a.test/x.mp4")
    ]
    assert [o.url for o in parse_outputs(["https://a.test/1", "https://a.test/2"], cfg)] == [
        "https://a.test/1",
        "https://a.test/2",
    ]
    one = parse_outputs(
        {"url": "https://a.test/s", "content_type": "audio/wav; rate=8000", "height": 2}, cfg
    )
    assert one == [MediaOutput(media_type="audio/wav", url="https://a.test/s", height=2)]
    inline = parse_outputs("data:image/png;base64,aGk=", cfg)
    assert inline == [MediaOutput(media_type="image/png", data=b"hi")]
    assert parse_outputs(None, cfg) == []
    for bad in ("ftp://a.test/x", "data:image/png;base64,!!", [None], [{"url": 3}], ["x"] * 101):
        with pytest.raises(UpstreamError):
            parse_outputs(bad, cfg)


def test_fill_path() -> None:
    assert fill_path("/{model}/requests/{id}", model="fal-ai/flux", job_id="../x") == (
        "/fal-ai/flux/requests/..%2Fx"
    )
    assert fill_path("jobs/{id}?logs={1}", model="m", job_id="a b") == "/jobs/a%20b?logs={1}"
