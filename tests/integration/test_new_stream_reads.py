"""A new stream's SSE response is served from the live channel alone, on a real
redis-server, when the API's hub listened before the job was stored (Redis counted the
subscription as the record was made): its tail then reads nothing back from the stream.
(The hub's subscription goes out before the job's creation, on another connection; Redis
nearly always takes it first, and a stream whose creation it followed is read.)"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from redis.asyncio import Redis

from shared.queue import GENERATE
from shared.redis.embedded import EmbeddedRedis
from tests.in_process import app_and_worker, note_created
from tests.integration.test_hub import count_reads


def chunks(body: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line[6:]) for line in body.split(b"\n") if line.startswith(b"data: {")]


async def test_a_new_streams_tail_reads_nothing_back(
    redis: Redis, redis_server: EmbeddedRedis
) -> None:
    url = redis_server.url.replace("/0", "/1")
    models = {"fast": {"provider": "demo", "max_output_tokens": 12}}
    async with app_and_worker(url, models) as (http, services, runtime):
        read: list[str] = []
        count_reads(services.store, read)
        listeners: dict[str, int] = {}
        created = note_created(services, listeners)
        body = {
            "model": "fast",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
        }
        for i in range(9):
            if i == 1:
                # The first reader came as the hub made its connection, and read its
                # stream once that was up, as after any reconnect.
                read.clear()
                listeners.clear()
            posting = asyncio.create_task(http.post("/v1/chat/completions", json=body))
            stream_id = await asyncio.wait_for(created.get(), 10)
            runtime.taken(stream_id, GENERATE, (stream_id,))
            await asyncio.wait_for(runtime.generate(stream_id), 10)
            response = await asyncio.wait_for(posting, 10)
            assert response.status_code == 200
            got = chunks(response.content)
            text = "".join(c["choices"][0]["delta"].get("content") or "" for c in got)
            result = (await http.get(f"/v1/streams/{stream_id}/result")).json()
            assert text and text == result["output"]["choices"][0]["message"]["content"]
            assert got[-1]["choices"][0]["finish_reason"] == "stop"
        heard = {sid for sid, counted in listeners.items() if counted}
        assert len(heard) >= len(listeners) // 2, listeners
        assert set(read) == set(listeners) - heard  # exactly the streams not heard whole
