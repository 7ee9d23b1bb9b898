"""Asset tasks end to end: real redis-server, API and worker processes, a real webhook
receiver and a real queue_http upstream.

Submit each kind to the demo model and decode what comes back; follow and resume the
events; `Prefer: wait`; idempotent submits; cancel while queued and while running; signed
webhooks with retries; refused callbacks; and a queue_http upstream that succeeds, fails
and is cancelled.
"""

from __future__ import annotations

import base64
import io
import os
import re
import subprocess
import sys
import time
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis as sync_redis
from PIL import Image
from standardwebhooks import Webhook

from shared.redis.embedded import EmbeddedRedis
from tests.e2e.sse_client import read_sse
from tests.mock_queue_http import FAIL_MESSAGE, MockQueueHttp, model_entry
from tests.processes import SpoolProcess, start_api, start_worker, wait_ready, write_config
from tests.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.e2e

WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"spool-test-webhook-secret-32byte").decode()
UPSTREAM_KEY = "tk-test-task-upstream-key"
MAX_JOBS = 3
TASK_SETTINGS = {
    "keepalive_interval_s": 0.5,
    "worker_max_jobs": MAX_JOBS,
    "worker_poll_interval_s": 0.1,
    "webhook_secret": WEBHOOK_SECRET,
    "webhook_allowlist": "127.0.0.1",
    "webhook_backoff_s": 0.2,
    "webhook_backoff_max_s": 0.5,
    "webhook_max_attempts": 4,
    "upstream_allowlist": "127.0.0.1",
    "task_retention_s": 3600,
}


@dataclass
class TaskCluster:
    api: SpoolProcess
    worker: SpoolProcess
    upstream: MockQueueHttp
    receiver: WebhookReceiver
    redis_url: str
    key: str
    other_key: str

    def client(self, key: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=self.api.url,
            headers={"Authorization": f"Bearer {key or self.key}"},
            timeout=30,
        )


def _new_key(config: Path, redis_url: str, name: str) -> str:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "shared.cli",
            "--config",
            str(config),
            "keys",
            "create",
            "--name",
            name,
        ],
        env={"REDIS_URL": redis_url, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert re.search(r"created key_\w+", done.stdout)
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def tasks(
    tmp_path_factory: pytest.TempPathFactory, redis_server: EmbeddedRedis
) -> Iterator[TaskCluster]:
    workdir = tmp_path_factory.mktemp("tasks")
    upstream = MockQueueHttp(api_key=UPSTREAM_KEY).start()
    receiver = WebhookReceiver().start()
    os.environ["SPOOL_TEST_TASK_KEY"] = UPSTREAM_KEY
    config = write_config(
        workdir / "spool.yaml",
        {},
        task_models={
            "mock-image": model_entry(upstream, api_key_env="SPOOL_TEST_TASK_KEY"),
            "mock-image-linked": model_entry(
                upstream, api_key_env="SPOOL_TEST_TASK_KEY", store_outputs=False
            ),
        },
        artifacts_dir=str(workdir / "artifacts"),
        **TASK_SETTINGS,
    )
    url = redis_server.url.replace("/0", "/4")
    sync_redis.Redis.from_url(url).flushdb()
    worker = start_worker(url, config, workdir)
    api = start_api(url, config, workdir)
    try:
        wait_ready(api.url)
        yield TaskCluster(
            api, worker, upstream, receiver, url,
            _new_key(config, url, "tasks"), _new_key(config, url, "other"),
        )  # fmt: skip
    finally:
        for proc in (api, worker):
            proc.stop()
        receiver.stop()
        upstream.stop()
        for proc in (api, worker):
            assert "Traceback" not in proc.log(), proc.log()


def submit(
    client: httpx.Client, kind: str = "image", model: str = "demo", **extra: Any
) -> dict[str, Any]:
    body = {"kind": kind, "model": model, **extra}
    body.setdefault("input", {"prompt": "a lighthouse at dusk", "duration_s": 0})
    response = client.post("/v1/tasks", json=body)
    assert response.status_code == 202, response.text
    task: dict[str, Any] = response.json()
    assert response.headers["Location"] == task["urls"]["get"] == f"/v1/tasks/{task['id']}"
    return task


def wait_done(client: httpx.Client, task_id: str, seconds: int = 30) -> dict[str, Any]:
    response = client.get(f"/v1/tasks/{task_id}", headers={"Prefer": f"wait={seconds}"})
    assert response.status_code == 200, response.text
    task: dict[str, Any] = response.json()
    assert task["status"] in ("succeeded", "failed", "cancelled"), task
    assert "Retry-After" not in response.headers
    return task


def wait_status(
    client: httpx.Client, task_id: str, status: str, timeout_s: float = 20
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        task: dict[str, Any] = client.get(f"/v1/tasks/{task_id}").json()
        if task["status"] == status:
            return task
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} never became {status}")


def job_count(cluster: TaskCluster) -> int:
    return sum(1 for _ in sync_redis.Redis.from_url(cluster.redis_url).scan_iter("spool:{*}:job"))


# -- the demo model: every kind, decoded ---------------------------------------------


@pytest.mark.parametrize(
    ("kind", "input_", "expected"),
    [
        ("image", {"width": 320, "height": 200}, {"width": 320, "height": 200}),
        ("video", {"width": 96, "height": 64, "duration_s": 0.5, "fps": 10}, {"frames": 5}),
        ("audio", {"duration_s": 0.5, "sample_rate": 16000}, {"duration_s": 0.5}),
    ],
)
def test_each_kind_succeeds_with_a_valid_file(
    tasks: TaskCluster, kind: str, input_: dict[str, Any], expected: dict[str, Any]
) -> None:
    with tasks.client() as client:
        created = submit(client, kind, input={"prompt": f"a {kind} of the sea", **input_})
        # A worker may have taken it by the time the answer is written.
        assert created["status"] in ("queued", "running") and created["kind"] == kind
        task = wait_done(client, created["id"])
        assert task["status"] == "succeeded", task
        assert task["progress"] == 1.0 and task["error"] is None
        (output,) = task["result"]["outputs"]
        assert output["stored"] is True
        assert output["url"] == f"/v1/tasks/{created['id']}/outputs/0"
        for name, value in expected.items():
            assert output[name] == value
        download = client.get(output["url"])
        assert download.status_code == 200
        assert download.headers["content-type"].startswith(output["media_type"])
        assert download.headers["content-disposition"].startswith("inline;")
        assert download.headers["x-content-type-options"] == "nosniff"
        assert len(download.content) == output["size"] == int(download.headers["content-length"])
    data = download.content
    if kind == "image":
        picture = Image.open(io.BytesIO(data))
        picture.load()
        assert (picture.format, picture.size) == ("PNG", (320, 200))
    elif kind == "video":
        clip = Image.open(io.BytesIO(data))
        assert (clip.format, clip.size, clip.n_frames) == ("GIF", (96, 64), 5)
        assert clip.is_animated
        for frame in range(clip.n_frames):
            clip.seek(frame)
            clip.load()
    else:
        with wave.open(io.BytesIO(data)) as sound:
            assert (sound.getnchannels(), sound.getsampwidth(), sound.getframerate()) == (
                1,
                2,
                16000,
            )
            assert sound.getnframes() == 8000
            assert len(sound.readframes(sound.getnframes())) == 16000


def test_outputs_answer_range_requests(tasks: TaskCluster) -> None:
    with tasks.client() as client:
        task = wait_done(client, submit(client)["id"])
        url = task["result"]["outputs"][0]["url"]
        whole = client.get(url).content
        head = client.get(url, headers={"Range": "bytes=0-9"})
        assert head.status_code == 206
        assert head.content == whole[:10]
        assert head.headers["content-range"] == f"bytes 0-9/{len(whole)}"
        tail = client.get(url, headers={"Range": "bytes=-7"})
        assert tail.status_code == 206 and tail.content == whole[-7:]
        beyond = client.get(url, headers={"Range": f"bytes={len(whole) + 10}-"})
        assert beyond.status_code == 416
        assert client.get(url.replace("/outputs/0", "/outputs/1")).status_code == 404


def test_the_same_input_gives_the_same_file(tasks: TaskCluster) -> None:
    body = {"input": {"prompt": "determinism", "duration_s": 0, "width": 64, "height": 64}}
    with tasks.client() as client:
        files = []
        for _ in range(2):
            task = wait_done(client, submit(client, **body)["id"])
            files.append(client.get(task["result"]["outputs"][0]["url"]).content)
    assert files[0] == files[1]


# -- following, waiting, resuming ------------------------------------------------------


async def test_events_follow_and_resume_exactly(tasks: TaskCluster) -> None:
    with tasks.client() as client:
        task = submit(client, input={"prompt": "a slow painting", "duration_s": 1})
    headers = {"Authorization": f"Bearer {tasks.key}"}
    events_url = task["urls"]["events"]
    async with httpx.AsyncClient(base_url=tasks.api.url, headers=headers, timeout=30) as client:
        first = await read_sse(client, "GET", events_url, stop_after=4)
        assert first.status == 200 and len(first.events) == 4
        rest = await read_sse(
            client, "GET", events_url, headers={"Last-Event-ID": first.last_id or ""}
        )
        replay = await read_sse(client, "GET", events_url)
        by_query = await read_sse(client, "GET", f"{events_url}?last_event_id={first.events[1][0]}")
    assert first.events + rest.events == replay.events
    assert by_query.events == replay.events[2:]
    data = [orjson.loads(d) for _, d in replay.events]
    assert data[0] == {"status": "running"}
    progress = [d["progress"] for d in data if "progress" in d]
    assert progress == sorted(progress) and len(progress) >= 5
    assert data[-1]["status"] == "succeeded" and data[-1]["outputs"][0]["media_type"] == "image/png"
    assert all(event_id for event_id, _ in replay.events)
    async with httpx.AsyncClient(base_url=tasks.api.url, headers=headers, timeout=30) as client:
        foreign = await read_sse(client, "GET", events_url, headers={"Last-Event-ID": "1-0"})
    assert foreign.status == 400


def test_prefer_wait_holds_until_the_end_or_the_limit(tasks: TaskCluster) -> None:
    with tasks.client() as client:
        quick = submit(client, input={"prompt": "quick", "duration_s": 1})
        started = time.monotonic()
        done = client.get(quick["urls"]["get"], headers={"Prefer": "respond-async, wait=20"})
        assert done.json()["status"] == "succeeded"
        assert done.headers["Preference-Applied"] == "wait=20"
        assert time.monotonic() - started < 15

        slow = submit(client, input={"prompt": "slow", "duration_s": 30})
        started = time.monotonic()
        held = client.get(slow["urls"]["get"], headers={"Prefer": "wait=1"})
        waited = time.monotonic() - started
        assert held.json()["status"] in ("queued", "running")
        assert held.headers["Retry-After"] in ("1", "2")
        assert 0.9 <= waited < 10
        cancelled = client.post(slow["urls"]["cancel"])
        assert cancelled.json()["status"] == "cancelled"


# -- idempotency -----------------------------------------------------------------------


def test_idempotency_key_returns_the_same_task_and_refuses_a_different_body(
    tasks: TaskCluster,
) -> None:
    body = {"kind": "image", "model": "demo", "input": {"prompt": "once only", "duration_s": 0}}
    key = {"Idempotency-Key": f"order-{time.time_ns()}"}
    with tasks.client() as client:
        before = job_count(tasks)
        first = client.post("/v1/tasks", json=body, headers=key)
        again = client.post("/v1/tasks", json=dict(reversed(list(body.items()))), headers=key)
        assert first.status_code == again.status_code == 202
        assert again.json()["id"] == first.json()["id"]
        assert again.headers["Idempotent-Replayed"] == "true"
        assert job_count(tasks) == before + 1

        changed = client.post("/v1/tasks", json={**body, "kind": "audio"}, headers=key)
        assert changed.status_code == 409
        assert changed.json()["error"]["code"] == "idempotency_key_reused"
        assert job_count(tasks) == before + 1
    with tasks.client(tasks.other_key) as other:
        theirs = other.post("/v1/tasks", json=body, headers=key)
        assert theirs.status_code == 202 and theirs.json()["id"] != first.json()["id"]


# -- cancel ------------------------------------------------------------------------------


async def test_cancel_while_queued_and_while_running(tasks: TaskCluster) -> None:
    long_input = {"prompt": "a very long render", "duration_s": 30}
    with tasks.client() as client:
        running = [submit(client, input=long_input) for _ in range(MAX_JOBS)]
        for task in running:
            wait_status(client, task["id"], "running")
        queued = submit(client, input=long_input)
        polled = client.get(queued["urls"]["get"])
        assert polled.json()["status"] == "queued" and polled.json()["queue_position"] == 0
        assert polled.headers["Retry-After"] == "2"

        cancelled = client.post(queued["urls"]["cancel"])
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        assert cancelled.json()["started_at"] is None
        assert client.post(queued["urls"]["cancel"]).json()["status"] == "cancelled"

        started = time.monotonic()
        for task in running:
            stopped = client.post(task["urls"]["cancel"])
            assert stopped.json()["status"] == "cancelled", stopped.json()
        assert time.monotonic() - started < 10
        done = wait_done(client, submit(client)["id"])
        assert done["status"] == "succeeded"
        finished = client.post(done["urls"]["cancel"])
        assert finished.json()["status"] == "succeeded"
    headers = {"Authorization": f"Bearer {tasks.key}"}
    async with httpx.AsyncClient(base_url=tasks.api.url, headers=headers, timeout=30) as http:
        events = await read_sse(http, "GET", running[0]["urls"]["events"])
        queued_events = await read_sse(http, "GET", queued["urls"]["events"])
    assert orjson.loads(events.events[-1][1]) == {"status": "cancelled"}
    assert [orjson.loads(d) for _, d in queued_events.events] == [{"status": "cancelled"}]


# -- webhooks ----------------------------------------------------------------------------


def verify(delivery_headers: dict[str, str], body: bytes) -> dict[str, Any]:
    verified: dict[str, Any] = Webhook(WEBHOOK_SECRET).verify(body, delivery_headers)
    return verified


def test_webhook_is_signed_retried_and_delivered_once(tasks: TaskCluster) -> None:
    path = f"retry-{time.time_ns()}"
    tasks.receiver.plan(path, 500, 500)
    with tasks.client() as client:
        task = submit(client, callback_url=tasks.receiver.url(path))
        assert task["webhook_events"] == ["completed"]
        wait_done(client, task["id"])
        deliveries = tasks.receiver.wait_for(path, 3)
        time.sleep(1.5)  # longer than the longest backoff: no further attempt may come
        assert [d.answered for d in tasks.receiver.received(path)] == [500, 500, 204]
        assert len({d.headers["webhook-id"] for d in deliveries}) == 1
        assert len({d.body for d in deliveries}) == 1
        for delivery in deliveries:
            payload = verify(delivery.headers, delivery.body)
            assert payload["id"] == task["id"] and payload["status"] == "succeeded"
            assert payload["result"]["outputs"][0]["media_type"] == "image/png"
            assert delivery.headers["spool-event"] == "task.succeeded"
        tampered = deliveries[0].body.replace(b"succeeded", b"failed")
        with pytest.raises(Exception, match="signature"):
            verify(deliveries[0].headers, tampered)

        (record,) = client.get(task["urls"]["get"]).json()["webhooks"]
        assert record["status"] == "delivered" and record["type"] == "task.succeeded"
        assert [a["status_code"] for a in record["attempts"]] == [500, 500, 204]
        assert [a["attempt"] for a in record["attempts"]] == [1, 2, 3]


def test_every_asked_for_event_is_delivered_exactly_once(tasks: TaskCluster) -> None:
    path = f"all-{time.time_ns()}"
    with tasks.client() as client:
        task = submit(
            client,
            input={"prompt": "every event", "duration_s": 0.5},
            callback_url=tasks.receiver.url(path),
            webhook_events=["started", "progress", "completed"],
        )
        wait_done(client, task["id"])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            records = client.get(task["urls"]["get"]).json()["webhooks"]
            if records and all(r["status"] == "delivered" for r in records):
                break
            time.sleep(0.05)
        time.sleep(0.5)
    deliveries = tasks.receiver.received(path)
    ids = [d.headers["webhook-id"] for d in deliveries]
    assert len(ids) == len(set(ids)) == len(records)
    types = [d.headers["spool-event"] for d in deliveries]
    assert types.count("task.started") == 1 and types.count("task.succeeded") == 1
    assert types.count("task.progress") >= 5
    for delivery in deliveries:
        verify(delivery.headers, delivery.body)


@pytest.mark.parametrize(
    "callback",
    ["http://10.0.0.1/hook", "http://169.254.169.254/latest/meta-data", "http://[::1]:9/x",
     "http://127.0.0.2:9/x", "ftp://example.com/x", "http://user:pw@example.com/x", "not a url"],
)  # fmt: skip
def test_callbacks_to_private_addresses_are_refused(tasks: TaskCluster, callback: str) -> None:
    with tasks.client() as client:
        before = job_count(tasks)
        refused = client.post(
            "/v1/tasks",
            json={
                "kind": "image",
                "model": "demo",
                "input": {"prompt": "x"},
                "callback_url": callback,
            },
        )
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["code"] == "invalid_callback_url"
        assert job_count(tasks) == before


# -- a queue_http upstream -----------------------------------------------------------------


async def test_queue_http_goes_from_queued_to_succeeded(tasks: TaskCluster) -> None:
    with tasks.client() as client:
        task = submit(
            client,
            model="mock-image",
            input={"prompt": "succeed at 80x60", "width": 80, "height": 60},
        )
    headers = {"Authorization": f"Bearer {tasks.key}"}
    async with httpx.AsyncClient(base_url=tasks.api.url, headers=headers, timeout=30) as http:
        events = await read_sse(http, "GET", task["urls"]["events"])
        data = [orjson.loads(d) for _, d in events.events]
        download = await http.get(data[-1]["outputs"][0]["url"])
    progress = [d["progress"] for d in data if "progress" in d]
    assert progress == sorted(progress) and {0.3, 0.6, 0.9} <= set(progress)
    assert any(d.get("message") for d in data)
    output = data[-1]["outputs"][0]
    assert data[-1]["status"] == "succeeded" and output["stored"] is True
    assert output["size"] == len(download.content)
    picture = Image.open(io.BytesIO(download.content))
    assert picture.format == "PNG" and picture.size == (80, 60)
    submitted = tasks.upstream.submitted[-1]
    assert submitted.body["input"]["prompt"] == "succeed at 80x60"
    assert submitted.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"


def test_queue_http_outputs_can_pass_through_as_upstream_urls(tasks: TaskCluster) -> None:
    with tasks.client() as client:
        task = submit(client, model="mock-image-linked", input={"prompt": "succeed, linked"})
        done = wait_done(client, task["id"])
        (output,) = done["result"]["outputs"]
        assert output["stored"] is False and "size" not in output
        assert output["url"].startswith(tasks.upstream.base_url)
        redirect = client.get(f"{task['urls']['get']}/outputs/0")
        assert redirect.status_code == 307
        assert redirect.headers["location"] == output["url"]
        assert redirect.headers["x-content-type-options"] == "nosniff"
        assert redirect.headers["content-security-policy"] == "default-src 'none'; sandbox"
    picture = Image.open(io.BytesIO(httpx.get(output["url"]).content))
    assert picture.format == "PNG"


def test_queue_http_failure_is_a_failed_task(tasks: TaskCluster) -> None:
    with tasks.client() as client:
        task = wait_done(
            client, submit(client, model="mock-image", input={"prompt": "fail please"})["id"]
        )
    assert task["status"] == "failed"
    assert task["error"]["code"] == "upstream_task_failed"
    assert FAIL_MESSAGE in task["error"]["message"]
    assert task["result"] is None


def test_queue_http_cancel_reaches_the_upstream(tasks: TaskCluster) -> None:
    cancels = len(tasks.upstream.cancels)
    with tasks.client() as client:
        task = submit(client, model="mock-image", input={"prompt": "slow and steady"})
        wait_status(client, task["id"], "running")
        deadline = time.monotonic() + 10
        while not tasks.upstream.submitted or "slow" not in str(tasks.upstream.submitted[-1].body):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        stopped = client.post(task["urls"]["cancel"])
        assert stopped.json()["status"] == "cancelled"
    assert tasks.upstream.wait_for_cancels(cancels + 1)


# -- ownership and bad input ---------------------------------------------------------------


def test_tasks_belong_to_their_key(tasks: TaskCluster) -> None:
    with tasks.client() as client:
        task = wait_done(client, submit(client)["id"])
    with tasks.client(tasks.other_key) as other:
        for method, url in [
            ("GET", task["urls"]["get"]),
            ("GET", task["urls"]["events"]),
            ("POST", task["urls"]["cancel"]),
            ("GET", f"{task['urls']['get']}/outputs/0"),
        ]:
            response = other.request(method, url)
            assert response.status_code == 404, (method, url, response.text)
            assert response.json()["error"]["code"] == "task_not_found"
        # A task is not a chat stream, and the other way round.
        assert other.get(f"/v1/streams/{task['id']}").status_code == 404
    with tasks.client() as client:
        assert client.get(f"/v1/streams/{task['id']}").status_code == 404
        assert client.get("/v1/tasks/" + "0" * 32).status_code == 404
        assert client.get("/v1/tasks/not-an-id").status_code == 404
    assert httpx.get(f"{tasks.api.url}{task['urls']['get']}").status_code == 401


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"kind": "hologram", "model": "demo", "input": {"prompt": "x"}}, 422, None),
        ({"kind": "image", "model": "demo", "input": {}}, 422, None),
        ({"kind": "image", "model": "demo", "input": {"prompt": ""}}, 422, None),
        ({"kind": "image", "model": "demo", "input": {"prompt": "x", "width": "wide"}}, 422, None),
        ({"kind": "image", "model": "demo", "input": {"prompt": "x", "width": 9000}}, 422, None),
        ({"kind": "image", "model": "demo", "input": {"prompt": "x", "width": 2000}}, 400, "invalid_request"),
        ({"kind": "video", "model": "demo", "input": {"prompt": "x", "duration_s": 30, "fps": 30}}, 400, "invalid_request"),
        ({"kind": "image", "model": "nope", "input": {"prompt": "x"}}, 404, "model_not_found"),
        ({"kind": "audio", "model": "mock-image", "input": {"prompt": "x"}}, 400, "invalid_request"),
        ({"kind": "image", "model": "demo", "input": {"prompt": "x"}, "webhook_events": ["sometimes"]}, 422, None),
        ({"kind": "image", "model": "demo", "input": {"prompt": "x"}, "surprise": 1}, 422, None),
        ([1, 2, 3], 422, None),
    ],
)  # fmt: skip
def test_bad_submissions_are_refused_and_create_nothing(
    tasks: TaskCluster, body: Any, status: int, code: str | None
) -> None:
    with tasks.client() as client:
        before = job_count(tasks)
        response = client.post("/v1/tasks", json=body)
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert error["message"]
        if code is not None:
            assert error["code"] == code
        assert job_count(tasks) == before
        malformed = client.post(
            "/v1/tasks", content=b'{"kind": "image",', headers={"content-type": "application/json"}
        )
        assert malformed.status_code in (400, 422) and "error" in malformed.json()
        long_key = client.post(
            "/v1/tasks",
            json={"kind": "image", "model": "demo", "input": {"prompt": "x"}},
            headers={"Idempotency-Key": "k" * 300},
        )
        assert long_key.status_code == 400
        assert job_count(tasks) == before


def test_a_task_follow_token_reads_but_cannot_cancel(tasks: TaskCluster) -> None:
    with tasks.client() as client:
        task = submit(client)
        wait_done(client, task["id"])
        minted = client.post(f"/v1/tasks/{task['id']}/follow-token")
        assert minted.status_code == 200, minted.text
        token = minted.json()["token"]
        assert minted.json()["url"] == f"/v1/tasks/{task['id']}/events?follow_token={token}"
    with httpx.Client(base_url=tasks.api.url, timeout=30) as anonymous:
        follow = {"follow_token": token}
        polled = anonymous.get(f"/v1/tasks/{task['id']}", params=follow)
        assert polled.status_code == 200 and polled.json()["status"] == "succeeded"
        events = anonymous.get(f"/v1/tasks/{task['id']}/events", params=follow)
        assert events.status_code == 200 and "data:" in events.text
        output = anonymous.get(f"/v1/tasks/{task['id']}/outputs/0", params=follow)
        assert output.status_code == 200 and output.content
        assert anonymous.post(f"/v1/tasks/{task['id']}/cancel", params=follow).status_code == 401
        other = submit(tasks.client())
        assert anonymous.get(f"/v1/tasks/{other['id']}", params=follow).status_code == 404
