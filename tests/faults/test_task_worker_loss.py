"""Workers that die while they run asset tasks: re-queued when the task wrote nothing yet,
`worker_lost` when it already reported progress, and the workers left keep serving."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from dataclasses import dataclass, field

import httpx
import orjson
import pytest

from shared import keys
from shared.sse import SSEDecoder
from tests.faults.conftest import LEASE_S, FaultCluster, FaultQueueHttp, measure

pytestmark = pytest.mark.faults

TERMINAL_EVENTS = ("task.succeeded", "task.failed", "task.cancelled")
# How long a task may take to settle after its worker died: the lease runs out, a reaper
# sweeps (every lease/3) and, for a re-queue, another worker runs the task again.
SETTLE_BOUND_S = 5 * LEASE_S


def submit(client: httpx.Client, url: str, kind: str, model: str, **inputs: object) -> str:
    response = client.post(f"{url}/v1/tasks", json={"kind": kind, "model": model, "input": inputs})
    assert response.status_code == 202, response.text
    return response.json()["id"]  # type: ignore[no-any-return]


def show(client: httpx.Client, url: str, task_id: str, *, wait_s: int | None = None) -> dict:
    """`GET /v1/tasks/{id}`, held with `Prefer: wait` until the task ends when `wait_s`."""
    headers = {"Prefer": f"wait={wait_s}"} if wait_s is not None else {}
    response = client.get(f"{url}/v1/tasks/{task_id}", headers=headers, timeout=(wait_s or 0) + 10)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def wait_until_ended(client: httpx.Client, url: str, task_id: str, timeout_s: float) -> dict:
    """The task once it has ended, waiting for it in `Prefer: wait` requests (the server
    holds each one until the end, or at most the wait it was given)."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        task = show(client, url, task_id, wait_s=max(1, round(left)))
        if task["status"] not in ("queued", "running") or time.monotonic() >= deadline:
            return task


@dataclass
class TaskReading:
    task_id: str
    events: list[tuple[str, dict]] = field(default_factory=list)  # (event name, data)
    ended: bool = False
    failure: str | None = None  # what broke the reading, if something did

    def names(self) -> list[str]:
        return [name for name, _ in self.events]

    def last(self) -> tuple[str, dict]:
        return self.events[-1]


def follow(url: str, reading: TaskReading, timeout_s: float) -> None:
    """Read `/events` from the start up to the terminal event, for at most `timeout_s`: the
    server pings every keep-alive interval, so the deadline is looked at even when no event
    comes, and a stream that never ends shows up as `ended` False instead of a hang."""
    deadline = time.monotonic() + timeout_s
    decoder = SSEDecoder()
    try:
        with (
            httpx.Client(timeout=timeout_s) as client,
            client.stream("GET", f"{url}/v1/tasks/{reading.task_id}/events") as response,
        ):
            if response.status_code != 200:
                raise AssertionError(f"{response.status_code}: {response.read()!r}")
            for raw in response.iter_raw():
                for event in decoder.feed(raw):
                    assert event.id, "every task event carries an id"
                    reading.events.append((event.event, orjson.loads(event.data)))
                    if event.event in TERMINAL_EVENTS:
                        reading.ended = True
                        return
                if time.monotonic() > deadline:
                    return
    except Exception as exc:  # reported by the test, not lost in the thread
        reading.failure = repr(exc)


def start_following(url: str, reading: TaskReading, timeout_s: float) -> threading.Thread:
    thread = threading.Thread(target=follow, args=(url, reading, timeout_s))
    thread.start()
    return thread


def worker_name(cluster: FaultCluster, task_id: str) -> str:
    name = cluster.redis_client().hget(keys.job_key(task_id), "worker")
    assert name, f"no worker named on {task_id}"
    return name.decode()


def test_worker_killed_mid_task_ends_with_worker_lost(healthy: FaultCluster) -> None:
    with httpx.Client(timeout=30) as client:
        task_id = submit(client, healthy.urls[0], "video", "demo",
                         prompt="killed mid-render", duration_s=8)  # fmt: skip
        reading = TaskReading(task_id)
        thread = start_following(healthy.urls[1], reading, timeout_s=30)
        deadline = time.monotonic() + 10
        while reading.names().count("task.progress") < 2 and reading.failure is None:
            assert time.monotonic() < deadline, f"no progress: {reading.events}"
            time.sleep(0.01)
        assert reading.failure is None, reading.failure
        victim = healthy.worker_running(task_id)
        running = show(client, healthy.urls[0], task_id)
        assert running["status"] == "running" and 0 < running["progress"] < 0.5, running
        killed_at = time.monotonic()
        healthy.kill(victim)

        done = wait_until_ended(client, healthy.urls[0], task_id, SETTLE_BOUND_S + 10)
        took = time.monotonic() - killed_at
        assert done["status"] == "failed", done
        assert done["error"]["code"] == "worker_lost", done
        assert took < SETTLE_BOUND_S, f"ended {took:.2f}s after the kill"
        assert done["progress"] >= running["progress"], "the progress made is kept"
        assert done["result"] is None

        thread.join(30)
        assert not thread.is_alive() and reading.failure is None, reading.failure
        assert reading.ended, f"the event stream must end, not hang: {reading.names()}"
        name, data = reading.last()
        assert name == "task.failed" and data["error"]["code"] == "worker_lost", data
        assert reading.names().count("task.started") == 1
        assert reading.names()[0] == "task.started"
        # A replay after the end gives the same events, ending at once.
        replay = TaskReading(task_id)
        follow(healthy.urls[0], replay, timeout_s=10)
        assert replay.ended and replay.events == reading.events
        measure(f"task: worker_lost after {took:.2f}s (lease {LEASE_S}s)")


def test_worker_killed_before_the_first_event_is_rerun(
    healthy: FaultCluster, fault_queue_http: FaultQueueHttp
) -> None:
    """The queue_http upstream holds the first submit, so the worker that claimed the task
    dies having written nothing: the task goes back to the queue and the other worker
    runs it to the end."""
    prompt = f"hang-once {uuid.uuid4().hex}"
    redis = healthy.redis_client()
    with httpx.Client(timeout=30) as client:
        task_id = submit(client, healthy.urls[0], "image", "fault-queue", prompt=prompt)
        victim = healthy.worker_running(task_id)
        assert fault_queue_http.wait_for_hang(prompt), "the worker never submitted upstream"
        assert redis.xlen(keys.stream_key(task_id)) == 0, "nothing written before the kill"
        assert show(client, healthy.urls[1], task_id)["status"] == "running"
        survivor = next(w for w in healthy.workers if w is not victim)
        killed_at = time.monotonic()
        healthy.kill(victim)

        done = wait_until_ended(client, healthy.urls[1], task_id, SETTLE_BOUND_S + 10)
        took = time.monotonic() - killed_at
        assert done["status"] == "succeeded", done
        assert took < SETTLE_BOUND_S, f"succeeded {took:.2f}s after the kill"
        assert redis.hget(keys.job_key(task_id), "requeues") == b"1"
        assert worker_name(healthy, task_id).split(":")[1] == str(survivor.process.pid)
        # The held submit is not among `submitted`: the second attempt's is.
        submits = [s for s in fault_queue_http.submitted if s.body["input"]["prompt"] == prompt]
        assert len(submits) == 1, "one more submit after the held one"

        reading = TaskReading(task_id)
        follow(healthy.urls[0], reading, timeout_s=10)
        assert reading.ended and reading.failure is None, reading
        assert reading.names().count("task.started") == 1, "one attempt's events only"
        assert reading.last()[0] == "task.succeeded"
        output = client.get(f"{healthy.urls[0]}{done['result']['outputs'][0]['url']}")
        assert output.status_code == 200
        assert output.content.startswith(b"\x89PNG")
        measure(f"task: re-queued and succeeded {took:.2f}s after the kill (lease {LEASE_S}s)")


def test_both_workers_serve_tasks_after_a_loss(healthy: FaultCluster) -> None:
    """After the kills above, `healthy` put a fresh worker beside the survivor. Each task
    runs while every other worker is stopped, so each worker is shown to serve."""
    workers = list(healthy.workers)
    with httpx.Client(timeout=30) as client:
        for turn, kind in enumerate(("image", "video", "audio")):
            serving = workers[turn % len(workers)]
            paused = [w for w in workers if w is not serving]
            for worker in paused:
                worker.process.send_signal(signal.SIGSTOP)
            try:
                task_id = submit(client, healthy.any_url(), kind, "demo",
                                 prompt=f"after the loss {kind}", duration_s=0)  # fmt: skip
                done = wait_until_ended(client, healthy.any_url(), task_id, 20)
            finally:
                for worker in paused:
                    worker.process.send_signal(signal.SIGCONT)
            assert done["status"] == "succeeded", done
            assert done["progress"] == 1
            assert worker_name(healthy, task_id).split(":")[1] == str(serving.process.pid)
