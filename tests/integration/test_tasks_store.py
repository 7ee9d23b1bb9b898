"""Tasks in the stream store against a real redis-server (idempotent creation, the webhook
index, task retention, queue positions), and the artifact store on a real directory."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from shared import events as ev
from shared import keys
from shared.artifacts import SWEEP_MIN_AGE_S, ArtifactStore, OutputTooLarge
from shared.settings import Settings
from shared.store import Status, StreamStore
from shared.transcript import Transcript

RETENTION_S = 600
TASK_RETENTION_S = 5000
REQUEST = {"task": {"kind": "image", "model": "demo", "input": {"prompt": "a cat"}}}


def make_store(redis: Redis, **overrides: object) -> StreamStore:
    settings = Settings.model_validate(
        {"retention_s": RETENTION_S, "task_retention_s": TASK_RETENTION_S, **overrides}
    )
    return StreamStore(redis, settings)


def new_id() -> str:
    return uuid.uuid4().hex


async def create_task(
    store: StreamStore,
    task_id: str,
    *,
    idempotency: tuple[str, str] | None = None,
    with_callback: bool = False,
) -> str | None:
    return await store.create_task(
        task_id,
        model="demo",
        request=REQUEST,
        owner="key_test",
        idempotency=idempotency,
        with_callback=with_callback,
    )


# -- create_task ----------------------------------------------------------------------


async def test_create_task_record(redis: Redis) -> None:
    store = make_store(redis)
    task_id = new_id()
    assert await create_task(store, task_id) is None
    record = await store.get(task_id)
    assert record.status is Status.QUEUED
    assert record.surface == "task" and record.model == "demo" and record.owner == "key_test"
    assert record.request == REQUEST
    retention = await redis.hget(keys.job_key(task_id), "retention")  # type: ignore[misc]
    assert retention == str(TASK_RETENTION_S).encode()
    # Until it ends the record lives long enough to outlast a queued, then running, task.
    assert (
        TASK_RETENTION_S
        < await redis.ttl(keys.job_key(task_id))
        <= (TASK_RETENTION_S + store.task_timeout_s + store.queue_timeout_ms // 1000)
    )
    assert await redis.zscore(keys.HOOKS_PENDING_KEY, task_id) is None


async def test_create_task_with_idempotency_key_creates_once(redis: Redis) -> None:
    store = make_store(redis)
    idem_key = keys.idempotency_key("key_test", "d" * 64)
    first, second = new_id(), new_id()
    assert await create_task(store, first, idempotency=(idem_key, f"{first} digest-1")) is None
    held = await create_task(store, second, idempotency=(idem_key, f"{second} digest-2"))
    assert held == f"{first} digest-1"
    # Nothing of the second call was created.
    assert await redis.exists(keys.job_key(second)) == 0
    assert [m.decode() for m in await redis.zrange(keys.QUEUED_KEY, 0, -1)] == [first]
    assert await redis.get(idem_key) == f"{first} digest-1".encode()
    assert await redis.ttl(idem_key) > TASK_RETENTION_S


async def test_idempotent_replay_does_not_join_the_webhook_index(redis: Redis) -> None:
    store = make_store(redis)
    idem_key = keys.idempotency_key("key_test", "e" * 64)
    first, second = new_id(), new_id()
    await create_task(store, first, idempotency=(idem_key, f"{first} x"), with_callback=True)
    await create_task(store, second, idempotency=(idem_key, f"{second} x"), with_callback=True)
    assert [m.decode() for m in await redis.zrange(keys.HOOKS_PENDING_KEY, 0, -1)] == [first]


async def test_with_callback_joins_the_webhook_index(redis: Redis) -> None:
    store = make_store(redis)
    with_hook, without = new_id(), new_id()
    await create_task(store, with_hook, with_callback=True)
    await create_task(store, without)
    assert [m.decode() for m in await redis.zrange(keys.HOOKS_PENDING_KEY, 0, -1)] == [with_hook]


# -- retention --------------------------------------------------------------------------


async def test_finished_task_is_kept_for_the_task_retention(redis: Redis) -> None:
    store = make_store(redis)
    task_id = new_id()
    await create_task(store, task_id)
    claim = await store.claim(task_id, "attempt-1", "test-worker")
    assert claim.outcome == "claimed"
    await store.append(task_id, "attempt-1", [ev.Start(model="demo", provider="demo")], held=0)
    # While it runs the stream has the (shorter) pending lifetime of a generation.
    assert await redis.ttl(keys.stream_key(task_id)) <= store.pending_ttl_s
    result = ev.TaskResult(
        outputs=[{"index": 0, "url": "/v1/tasks/x/outputs/0", "media_type": "image/png"}]
    )
    await store.finish(
        task_id, "attempt-1", status=Status.COMPLETED, terminal=result, transcript=Transcript()
    )
    record = await store.get(task_id)
    assert record.status is Status.COMPLETED
    for key in (keys.job_key(task_id), keys.stream_key(task_id)):
        ttl = await redis.ttl(key)
        assert RETENTION_S < ttl <= TASK_RETENTION_S, (key, ttl)
    assert [e for _, e in await store.read_all(task_id)][-1] == result


async def test_generation_keeps_the_generation_retention(redis: Redis) -> None:
    """The per-record retention does not leak into ordinary generations."""
    store = make_store(redis)
    sid = new_id()
    await store.create(
        sid, surface="openai.chat", model="demo", request={}, render={}, owner="key_test"
    )
    await store.claim(sid, "attempt-1", "test-worker")
    await store.finish(
        sid,
        "attempt-1",
        status=Status.COMPLETED,
        terminal=ev.Finish(reason="stop"),
        transcript=Transcript(),
    )
    for key in (keys.job_key(sid), keys.stream_key(sid)):
        assert 0 < await redis.ttl(key) <= RETENTION_S


async def test_cancelled_queued_task_is_kept_for_the_task_retention(redis: Redis) -> None:
    store = make_store(redis)
    task_id = new_id()
    await create_task(store, task_id)
    assert await store.request_cancel(task_id) is Status.CANCELLED
    record = await store.get(task_id)
    assert record.status is Status.CANCELLED and record.cancel_requested
    assert [e for _, e in await store.read_all(task_id)] == [ev.Finish(reason="cancelled")]
    for key in (keys.job_key(task_id), keys.stream_key(task_id)):
        ttl = await redis.ttl(key)
        assert RETENTION_S < ttl <= TASK_RETENTION_S, (key, ttl)
    assert await store.queue_position(task_id) is None


# -- queue positions and the stream's tail --------------------------------------------


async def test_queue_position(redis: Redis) -> None:
    store = make_store(redis)
    # Ids in lexical order: two tasks queued in the same millisecond still rank as created.
    first, second, third = "1" * 32, "2" * 32, "3" * 32
    for task_id in (first, second, third):
        await create_task(store, task_id)
    assert await store.queue_position(first) == 0
    assert await store.queue_position(second) == 1
    assert await store.queue_position(third) == 2
    await store.claim(first, "attempt-1", "test-worker")
    assert await store.queue_position(first) is None
    assert await store.queue_position(second) == 0
    assert await store.queue_position(third) == 1
    assert await store.queue_position(new_id()) is None


async def test_last_entries_are_oldest_first(redis: Redis) -> None:
    store = make_store(redis)
    task_id = new_id()
    await create_task(store, task_id)
    await store.claim(task_id, "attempt-1", "test-worker")
    events: list[ev.Event] = [
        ev.Start(model="demo", provider="demo"),
        ev.TaskProgress(progress=0.25),
        ev.TaskProgress(progress=0.5, message="half"),
        ev.TaskProgress(progress=0.75),
    ]
    await store.append(task_id, "attempt-1", events, held=0)
    last_two = await store.last_entries(task_id, 2)
    assert [e.event for e in last_two] == events[2:]
    assert [e.seq for e in last_two] == [3, 4]
    everything = await store.last_entries(task_id, 100)
    assert [e.event for e in everything] == events
    assert [e.id for e in everything] == [i for i, _ in await store.read_all(task_id)]
    assert await store.last_entries(new_id(), 5) == []


# -- the artifact store -----------------------------------------------------------------


@pytest.fixture
def artifacts(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "artifacts", max_bytes=1024)


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


async def test_write_bytes_round_trip(artifacts: ArtifactStore) -> None:
    task_id = new_id()
    name = artifacts.name(0, "image/png")
    assert name == "0.png"
    assert await artifacts.write_bytes(task_id, name, b"\x89PNG data") == 9
    path = artifacts.path(task_id, name)
    assert path == artifacts.root / task_id / "0.png"
    assert path.read_bytes() == b"\x89PNG data"
    assert leftovers(path.parent) == ["0.png"]


async def test_write_stream_round_trip(artifacts: ArtifactStore) -> None:
    task_id = new_id()
    size = await artifacts.write_stream(task_id, "1.wav", chunks(b"RIFF", b"", b"x" * 1020))
    assert size == 1024  # exactly max_bytes is allowed
    assert artifacts.path(task_id, "1.wav").read_bytes() == b"RIFF" + b"x" * 1020
    # A second write replaces the file whole.
    assert await artifacts.write_stream(task_id, "1.wav", chunks(b"new")) == 3
    assert artifacts.path(task_id, "1.wav").read_bytes() == b"new"
    assert leftovers(artifacts.root / task_id) == ["1.wav"]


async def test_too_large_stream_leaves_nothing(artifacts: ArtifactStore) -> None:
    task_id = new_id()
    with pytest.raises(OutputTooLarge):
        await artifacts.write_stream(task_id, "0.mp4", chunks(b"a" * 1000, b"b" * 100))
    assert leftovers(artifacts.root / task_id) == []


async def test_too_large_stream_keeps_the_earlier_file(artifacts: ArtifactStore) -> None:
    task_id = new_id()
    await artifacts.write_bytes(task_id, "0.png", b"old")
    with pytest.raises(OutputTooLarge):
        await artifacts.write_stream(task_id, "0.png", chunks(b"a" * 2000))
    assert artifacts.path(task_id, "0.png").read_bytes() == b"old"
    assert leftovers(artifacts.root / task_id) == ["0.png"]


async def test_too_large_bytes_leave_nothing(artifacts: ArtifactStore) -> None:
    task_id = new_id()
    with pytest.raises(OutputTooLarge):
        await artifacts.write_bytes(task_id, "0.png", b"x" * 1025)
    assert leftovers(artifacts.root / task_id) == []


@pytest.mark.parametrize(
    ("task_id", "name"),
    [
        ("not-a-task", "0.png"),
        ("A" * 32, "0.png"),  # upper case is not a task id
        ("a" * 31, "0.png"),
        ("a" * 32 + "\n", "0.png"),  # a trailing newline is not part of a task id
        ("../" + "a" * 29, "0.png"),
        ("a" * 32, "x/0.png"),
        ("a" * 32, "../0.png"),
        ("a" * 32, ".0.png.part"),
        ("a" * 32, ".."),
    ],
)
def test_path_rejects_bad_names(artifacts: ArtifactStore, task_id: str, name: str) -> None:
    with pytest.raises(ValueError):
        artifacts.path(task_id, name)


async def test_sweep_removes_only_old_directories_of_expired_tasks(
    redis: Redis, artifacts: ArtifactStore
) -> None:
    store = make_store(redis)
    expired, alive, young = new_id(), new_id(), new_id()
    await create_task(store, alive)
    for task_id in (expired, alive, young):
        await artifacts.write_bytes(task_id, "0.png", b"png")
    old = time.time() - SWEEP_MIN_AGE_S - 60
    for task_id in (expired, alive):
        os.utime(artifacts.root / task_id, (old, old))
    # Not a task directory: never touched, whatever its age.
    stray = artifacts.root / "lost+found"
    stray.mkdir()
    os.utime(stray, (old, old))

    async def task_exists(task_id: str) -> bool:
        return await store.status(task_id) is not None

    assert await artifacts.sweep(task_exists) == 1
    assert not (artifacts.root / expired).exists()
    assert artifacts.path(alive, "0.png").read_bytes() == b"png"
    assert artifacts.path(young, "0.png").read_bytes() == b"png"
    assert stray.exists()
    # Nothing more to do on a second pass.
    assert await artifacts.sweep(task_exists) == 0


async def test_sweep_without_a_root_is_a_no_op(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "missing", max_bytes=1024)

    async def never(task_id: str) -> bool:
        raise AssertionError("no directory, no lookup")

    assert await store.sweep(never) == 0
