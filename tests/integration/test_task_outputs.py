"""Task outputs are inert on Spool's origin: `GET /v1/tasks/{id}/outputs/{n}` in process
(the API app on a real redis-server) serves only allow-listed media types inline, anything
else as an `application/octet-stream` download, always with `nosniff` and a sandboxing CSP;
and it redirects to an output left with the upstream only when its URL passes the guard of
output fetches."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from api.app import create_app
from shared import events as ev
from shared.artifacts import ArtifactStore, served_type
from shared.redis.embedded import EmbeddedRedis
from shared.settings import Settings
from shared.store import Status, StreamStore
from shared.transcript import Transcript

CSP = "default-src 'none'; sandbox"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 24
HTML = b"<html><script>alert(document.cookie)</script></html>"
SVG = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'


@dataclass
class Api:
    http: httpx.AsyncClient
    store: StreamStore
    artifacts: ArtifactStore

    async def task_with(self, *outputs: dict[str, Any], files: dict[str, bytes]) -> str:
        """A completed task with `outputs` (as the worker records them) and `files` in its
        artifact directory; returns its id."""
        task_id = uuid.uuid4().hex
        request = {"task": {"kind": "image", "model": "demo", "input": {"prompt": "x"}}}
        await self.store.create_task(task_id, model="demo", request=request, owner="anonymous")
        await self.store.claim(task_id, "attempt-1", "test-worker")
        await self.store.append(
            task_id, "attempt-1", [ev.Start(model="demo", provider="demo")], held=0
        )
        result = ev.TaskResult(outputs=[{"index": i, **o} for i, o in enumerate(outputs)])
        await self.store.finish(
            task_id, "attempt-1", status=Status.COMPLETED, terminal=result, transcript=Transcript()
        )
        for name, data in files.items():
            await self.artifacts.write_bytes(task_id, name, data)
        return task_id


@pytest.fixture
async def api(redis: Redis, redis_server: EmbeddedRedis, tmp_path: Path) -> AsyncIterator[Api]:
    settings = Settings.model_validate(
        {
            "redis_url": redis_server.url.replace("/0", "/1"),  # the `redis` fixture's database
            "auth_enabled": False,
            "artifacts_dir": str(tmp_path / "artifacts"),
            # As the test clusters have it for their mock upstreams.
            "upstream_allowlist": "127.0.0.1",
        }
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://spool") as http:
            yield Api(
                http,
                StreamStore(redis, settings),
                ArtifactStore(settings.artifacts_root, settings.max_output_bytes),
            )


def stored(media_type: str) -> dict[str, Any]:
    return {"url": "/v1/tasks/x/outputs/0", "media_type": media_type, "stored": True}


def linked(url: str) -> dict[str, Any]:
    return {"url": url, "media_type": "image/png", "stored": False}


def assert_inert(response: httpx.Response) -> None:
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["content-security-policy"] == CSP


async def test_a_png_is_served_inline_as_image_png(api: Api) -> None:
    task_id = await api.task_with(stored("image/png"), files={"0.png": PNG})
    response = await api.http.get(f"/v1/tasks/{task_id}/outputs/0")
    assert response.status_code == 200 and response.content == PNG
    assert response.headers["content-type"] == "image/png"
    assert response.headers["content-disposition"] == f'inline; filename="{task_id}-0.png"'
    assert_inert(response)
    part = await api.http.get(f"/v1/tasks/{task_id}/outputs/0", headers={"Range": "bytes=0-3"})
    assert part.status_code == 206 and part.content == PNG[:4]
    assert_inert(part)


@pytest.mark.parametrize(
    ("media_type", "body"),
    [("text/html", HTML), ("image/svg+xml", SVG), ("application/xhtml+xml", HTML)],
)
async def test_a_scriptable_type_is_a_download(api: Api, media_type: str, body: bytes) -> None:
    name = api.artifacts.name(0, media_type)
    assert name == "0.bin"  # never .html or .svg, whoever serves the artifact directory
    task_id = await api.task_with(stored(media_type), files={name: body})
    response = await api.http.get(f"/v1/tasks/{task_id}/outputs/0")
    assert response.status_code == 200 and response.content == body
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-disposition"] == f'attachment; filename="{task_id}-0.bin"'
    assert_inert(response)


async def test_parameters_of_the_upstreams_type_are_not_passed_on(api: Api) -> None:
    media_type = "IMAGE/PNG; charset=x; foo=bar"
    assert api.artifacts.name(0, media_type) == "0.png"
    task_id = await api.task_with(stored(media_type), files={"0.png": PNG})
    response = await api.http.get(f"/v1/tasks/{task_id}/outputs/0")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.headers["content-disposition"].startswith("inline;")
    assert_inert(response)


async def test_an_output_stored_under_its_earlier_name_is_still_found(api: Api) -> None:
    # Kept before the served types were restricted: named from the upstream's type.
    task_id = await api.task_with(stored("text/html"), files={"0.html": HTML})
    response = await api.http.get(f"/v1/tasks/{task_id}/outputs/0")
    assert response.status_code == 200 and response.content == HTML
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-disposition"] == f'attachment; filename="{task_id}-0.bin"'
    assert_inert(response)


def test_served_types() -> None:
    assert served_type("image/jpg") == "image/jpeg"
    assert served_type("Audio/X-WAV; rate=16000") == "audio/wav"
    assert served_type("video/quicktime") == "video/quicktime"
    for unsafe in ("text/html", "image/svg+xml", "text/xml", "application/pdf", "", None):
        assert served_type(unsafe) is None


@pytest.mark.parametrize(
    "url", ["https://8.8.8.8/outputs/0.png?sig=abc", "http://127.0.0.1:9/files/0.png"]
)
async def test_an_output_left_upstream_redirects_when_its_url_passes(api: Api, url: str) -> None:
    task_id = await api.task_with(linked(url), files={})
    response = await api.http.get(f"/v1/tasks/{task_id}/outputs/0")
    assert response.status_code == 307
    assert response.headers["location"] == url
    assert_inert(response)


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/files/0.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.64.0.1/0.png",
        "http://[::ffff:10.0.0.1]/0.png",
        "http://[64:ff9b::a9fe:a9fe]/0.png",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "ftp://8.8.8.8/0.png",
        "https://user:secret@8.8.8.8/0.png",
        "http://8.8.8.8:99999/0.png",
    ],
)
async def test_an_output_left_upstream_at_a_refused_url_is_an_error(api: Api, url: str) -> None:
    task_id = await api.task_with(linked(url), files={})
    response = await api.http.get(f"/v1/tasks/{task_id}/outputs/0")
    assert response.status_code == 502
    assert "location" not in response.headers
    error = response.json()["error"]
    assert error["code"] == "output_url_refused" and error["type"] == "upstream_error"
