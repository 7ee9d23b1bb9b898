"""Redis full at `maxclients` for a while: every process's connections are dropped and
their reconnects refused ("max number of clients reached"). Once Redis has room again,
everything works without a restart: new streams complete, the reaper reaps, the stream
hubs serve readers. And however many readers are open, each process holds a bounded
number of connections, named for it in CLIENT LIST."""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
import redis as sync_redis

from tests.faults.conftest import (
    LEASE_S,
    FaultCluster,
    Reading,
    chat,
    full_replay,
    measure,
    read_some,
    read_to_the_end,
    result,
    result_text,
)
from tests.faults.test_worker_loss import start_stream

pytestmark = pytest.mark.faults

FULL_FOR_S = 4.0
QUEUE_CONNECTIONS = 4  # api.app.QUEUE_CONNECTIONS
MAX_CONNECTIONS = 32  # the default redis_max_connections


def spool_clients(admin: sync_redis.Redis) -> list[dict[str, str]]:
    return [c for c in admin.client_list() if c.get("name", "").startswith("spool-")]


def per_process(admin: sync_redis.Redis) -> Counter[str]:
    """Spool's connections by process: names are spool-<role>-<pid>-<use>."""
    return Counter(c["name"].rsplit("-", 1)[0] for c in spool_clients(admin))


class Full:
    """Redis at `maxclients`: raw sockets take the room left, then every connection of
    Spool's processes is dropped, so that their reconnects are refused."""

    def __init__(self, admin: sync_redis.Redis, port: int) -> None:
        self.admin = admin
        self.port = port
        self.sockets: list[socket.socket] = []

    def fill(self) -> None:
        connected = int(self.admin.info("clients")["connected_clients"])
        self.admin.config_set("maxclients", connected + 8)
        while True:
            sock = socket.create_connection(("127.0.0.1", self.port))
            sock.settimeout(2)
            sock.sendall(b"PING\r\n")
            reply = sock.recv(100)
            if b"max number of clients reached" in reply:
                sock.close()
                break
            assert reply == b"+PONG\r\n", reply
            self.sockets.append(sock)
            assert len(self.sockets) < 100, "redis never refused a client"
        # Room for this client and the sockets only: every dropped connection stays out.
        self.admin.config_set("maxclients", 1 + len(self.sockets))
        for client in spool_clients(self.admin):
            self.admin.client_kill_filter(_id=client["id"])

    def free(self) -> None:
        self.admin.config_set("maxclients", 10000)
        for sock in self.sockets:
            sock.close()
        self.sockets = []


@pytest.fixture
def admin(healthy: FaultCluster) -> Iterator[sync_redis.Redis]:
    client = healthy.redis_client()
    yield client
    client.config_set("maxclients", 10000)
    client.close()


def test_processes_recover_from_a_full_redis_without_a_restart(
    healthy: FaultCluster, admin: sync_redis.Redis
) -> None:
    processes = [*healthy.apis, *healthy.workers]
    full = Full(admin, healthy.redis.port)  # type: ignore[arg-type]
    with httpx.Client(timeout=60) as client:
        # A stream whose worker dies while Redis is full: the reaper must still end it.
        doomed = Reading()
        thread = start_stream(healthy, client, chat("fault-slow", "lost while full"), doomed)
        while len(doomed.events) < 5:
            time.sleep(0.01)
        victim = healthy.worker_running(doomed.stream_id)
        full.fill()
        try:
            assert admin.info("stats")["rejected_connections"] > 0
            healthy.kill(victim)
            # While full: new requests are refused quickly, in the surface's shape.
            started = time.monotonic()
            response = client.post(f"{healthy.urls[0]}/v1/chat/completions",
                                   json=chat("fault-demo", "while full"))  # fmt: skip
            assert time.monotonic() - started < 5
            assert response.status_code == 503, response.text
            assert response.json()["error"]["code"] == "redis_unavailable"
            time.sleep(FULL_FOR_S)
            assert not spool_clients(admin), "a connection got in while Redis was full"
        finally:
            full.free()
        freed_at = time.monotonic()
        thread.join(30)

        # The reaper (in the APIs and the remaining worker) ends the orphaned stream.
        assert read_to_the_end(client, doomed, healthy.urls)
        error = doomed.error()
        assert error is not None and error["code"] == "worker_lost", error
        reaped_after = time.monotonic() - freed_at
        assert result(healthy.urls[1], doomed.stream_id)["status"] == "failed"

        # New streams complete through each replica's hub, on the worker that lived through.
        for url in healthy.urls:
            fresh = Reading()
            read_some(client, fresh, url, body=chat("fault-demo", f"after the outage {url}"))
            assert fresh.finished and fresh.error() is None
            assert fresh.text() == result_text(url, fresh.stream_id) != ""
            assert full_replay(client, healthy.urls[0], fresh.stream_id).events == fresh.events

    assert all(p.process.poll() is None for p in processes if p is not victim)
    for proc in processes:
        if proc is not victim:
            assert "Traceback" not in proc.log(), proc.log()[-3000:]
    measure(f"redis full {FULL_FOR_S:.0f}s: worker_lost {reaped_after:.2f}s after it had room "
            f"(lease {LEASE_S}s), no restarts")  # fmt: skip


def test_connections_per_process_stay_bounded_under_many_readers(
    healthy: FaultCluster, admin: sync_redis.Redis
) -> None:
    readers = 200
    streams: list[str] = []
    writers = []
    client = httpx.Client(timeout=60)
    for n in range(10):
        reading = Reading()
        writers.append(start_stream(healthy, client, chat("fault-slow", f"readers {n}"), reading))
        streams.append(reading.stream_id)

    async def read_all() -> tuple[Counter[str], int]:
        seen = 0
        first = asyncio.Event()
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=None)) as ac:

            async def one(n: int) -> None:
                nonlocal seen
                url = f"{healthy.urls[n % 2]}/v1/streams/{streams[n % len(streams)]}"
                async with ac.stream("GET", url) as response:
                    assert response.status_code == 200
                    async for _ in response.aiter_raw():
                        seen += 1
                        if seen >= readers:
                            first.set()
                        await first.wait()  # every reader holds its stream open meanwhile
                        break

            tasks = [asyncio.create_task(one(n)) for n in range(readers)]
            await asyncio.wait_for(first.wait(), 30)
            counts = per_process(admin)
            await asyncio.wait_for(asyncio.gather(*tasks), 30)
            return counts, len(tasks)

    try:
        counts, opened = asyncio.run(read_all())
    finally:
        for thread in writers:
            thread.join(30)
        client.close()
    assert opened == readers
    apis = {f"spool-api-{p.process.pid}" for p in healthy.apis}
    assert apis <= set(counts), counts  # every connection is named for its process
    for name, count in counts.items():
        if name.startswith("spool-api-"):
            # One multiplexed, the hub's pub/sub, and at most QUEUE_CONNECTIONS for arq.
            assert count <= 2 + QUEUE_CONNECTIONS, counts
        else:
            assert name.startswith("spool-worker-"), counts
            assert count <= 1 + MAX_CONNECTIONS, counts
    measure(f"{readers} readers on 2 APIs: connections per process {dict(counts)}")
