"""`POST /v1/embeddings` through the official `openai` SDK against a real API process:
the demo's deterministic vectors, OpenAI-compatible and Gemini upstreams (mocks here that
record exactly what they were sent), errors in OpenAI's shape, limits and usage."""

from __future__ import annotations

import asyncio
import base64
import math
import os
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from shared.redis.embedded import EmbeddedRedis, free_port
from tests.conftest import UPSTREAM_KEY
from tests.processes import SpoolProcess, create_key, start_api, write_config
from tests.threaded_server import ThreadedServer

pytestmark = pytest.mark.e2e

# What the mock OpenAI-compatible upstream answers for input i: float32-exact values.
OPENAI_VECTOR = [0.5, -1.0, 0.25]
UPSTREAM_PROMPT_TOKENS = 7
MAX_STRING_CHARS = 1000


def openai_vector(i: int) -> list[float]:
    return [i + OPENAI_VECTOR[0], *OPENAI_VECTOR[1:]]


def gemini_vector(text: str) -> list[float]:
    return [float(len(text)), 0.5, -0.5]


def float32_base64(values: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


@dataclass
class EmbeddingUpstream:
    """An OpenAI-compatible `/v1/embeddings` and Gemini's `batchEmbedContents`; the
    upstream model name picks the behaviour."""

    seen: list[tuple[str, dict[str, str], Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/embeddings", self.openai, methods=["POST"]),
                Route("/gemini/models/{call:path}", self.gemini, methods=["POST"]),
            ]
        )

    async def _record(self, request: Request) -> Any:
        body = orjson.loads(await request.body())
        with self.lock:
            self.seen.append((request.url.path, dict(request.headers), body))
        return body

    def last(self, path_part: str) -> tuple[str, dict[str, str], Any]:
        with self.lock:
            return next(s for s in reversed(self.seen) if path_part in s[0])

    async def openai(self, request: Request) -> Response:
        body = await self._record(request)
        model = body["model"]
        if model == "emb-fail":
            message = f"Incorrect API key provided: {UPSTREAM_KEY}. Find yours elsewhere."
            error = {"error": {"message": message, "type": "invalid_request_error"}}
            return JSONResponse(error, status_code=401)
        if model == "emb-slow":
            await asyncio.sleep(3)
        if model == "emb-garbage":
            return Response(b"<html>not json</html>", media_type="text/html")
        inputs = body["input"]
        count = 1 if isinstance(inputs, str) or isinstance(inputs[0], int) else len(inputs)
        base64_asked = body.get("encoding_format") == "base64" and model != "emb-floats"
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": float32_base64(openai_vector(i)) if base64_asked else openai_vector(i),
            }
            for i in range(count)
        ]
        data.reverse()  # the index, not the order, says which input a vector belongs to
        usage = {"prompt_tokens": UPSTREAM_PROMPT_TOKENS, "total_tokens": UPSTREAM_PROMPT_TOKENS}
        return JSONResponse({"object": "list", "data": data, "model": model, "usage": usage})

    async def gemini(self, request: Request) -> Response:
        body = await self._record(request)
        texts = [r["content"]["parts"][0]["text"] for r in body["requests"]]
        return JSONResponse({"embeddings": [{"values": gemini_vector(t)} for t in texts]})


@dataclass
class Deployment:
    api: SpoolProcess
    upstream: EmbeddingUpstream
    config: Path
    redis_url: str

    @property
    def url(self) -> str:
        return self.api.url

    def new_key(self, name: str, *limits: str) -> str:
        return create_key(self.config, self.redis_url, name, *limits)

    def client(self, secret: str, prefix: str = "/v1") -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + prefix, api_key=secret, max_retries=0)


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory, redis_server: EmbeddedRedis
) -> Iterator[Deployment]:
    """One API process (embeddings need no worker) with keys on, and the mock upstreams."""
    upstream = EmbeddingUpstream()
    port = free_port()
    server = ThreadedServer(upstream.app(), port, "embedding-upstream")
    server.start()
    base = f"http://127.0.0.1:{port}"

    def openai_entry(model: str, **extra: object) -> dict[str, object]:
        return {
            "provider": "openai", "base_url": f"{base}/v1", "model": model,
            "api_key_env": "SPOOL_TEST_UPSTREAM_KEY", **extra,
        }  # fmt: skip

    models = {
        "demo-embed": {"provider": "demo", "dimensions": 64},
        "emb-openai": openai_entry("emb-small"),
        "emb-openai-floats": openai_entry("emb-floats"),
        "emb-openai-fail": openai_entry("emb-fail"),
        "emb-openai-garbage": openai_entry("emb-garbage"),
        "emb-openai-slow": openai_entry("emb-slow", idle_timeout_s=0.5),
        "emb-gemini": {
            "provider": "gemini", "base_url": f"{base}/gemini", "model": "text-embedding-004",
            "api_key_env": "SPOOL_TEST_UPSTREAM_KEY",
        },
        "claude": {"provider": "anthropic", "model": "claude-x", "api_key_env": "UNSET_KEY"},
    }  # fmt: skip
    workdir = tmp_path_factory.mktemp("embeddings")
    config = write_config(
        workdir / "spool.yaml",
        models,
        upstream_allowlist="127.0.0.1",
        max_string_chars=MAX_STRING_CHARS,
    )
    os.environ["SPOOL_TEST_UPSTREAM_KEY"] = UPSTREAM_KEY
    redis_url = redis_server.url.replace("/0", "/12")  # a database no other suite uses
    api = start_api(redis_url, config, workdir)
    try:
        yield Deployment(api, upstream, config, redis_url)
    finally:
        api.stop()
        server.stop()


@pytest.fixture(scope="module")
def secret(deployment: Deployment) -> str:
    return deployment.new_key("embeddings")


def norm(vector: list[float]) -> float:
    return math.sqrt(sum(x * x for x in vector))


def post(
    deployment: Deployment, secret: str, body: dict[str, Any], path: str = "/v1/embeddings"
) -> httpx.Response:
    return httpx.post(
        deployment.url + path, json=body, headers={"Authorization": f"Bearer {secret}"}
    )


# -- the demo -----------------------------------------------------------------------------


def test_demo_vectors_are_deterministic_unit_vectors(deployment: Deployment, secret: str) -> None:
    sdk = deployment.client(secret)
    first = sdk.embeddings.create(
        model="demo", input=["hello", "world", "hello"], encoding_format="float"
    )
    assert first.object == "list" and first.model == "demo"
    vectors = [d.embedding for d in first.data]
    assert [d.index for d in first.data] == [0, 1, 2]
    assert all(len(v) == 256 for v in vectors)
    assert vectors[0] == vectors[2] != vectors[1]
    assert all(abs(norm(v) - 1) < 1e-5 for v in vectors)
    # Another request, another replica's worth of state: the same input, the same vector.
    again = sdk.embeddings.create(model="demo", input="world", encoding_format="float")
    assert again.data[0].embedding == vectors[1]
    assert first.usage.prompt_tokens == first.usage.total_tokens == 2 + 2 + 2  # chars / 4


def test_demo_dimensions(deployment: Deployment, secret: str) -> None:
    sdk = deployment.client(secret)
    asked = sdk.embeddings.create(model="demo", input="x", dimensions=32, encoding_format="float")
    assert len(asked.data[0].embedding) == 32
    assert abs(norm(asked.data[0].embedding) - 1) < 1e-5
    by_entry = sdk.embeddings.create(model="demo-embed", input="x", encoding_format="float")
    assert len(by_entry.data[0].embedding) == 64
    assert by_entry.model == "demo-embed"


def test_demo_takes_token_arrays(deployment: Deployment, secret: str) -> None:
    sdk = deployment.client(secret)
    one = sdk.embeddings.create(model="demo", input=[1, 2, 3], encoding_format="float")
    many = sdk.embeddings.create(model="demo", input=[[1, 2, 3], [4, 5]], encoding_format="float")
    assert len(one.data) == 1 and len(many.data) == 2
    assert one.data[0].embedding == many.data[0].embedding != many.data[1].embedding
    assert many.usage.prompt_tokens == 5  # token arrays count their tokens


def test_float_and_base64_carry_the_same_vector(deployment: Deployment, secret: str) -> None:
    sdk = deployment.client(secret)
    floats = sdk.embeddings.create(model="demo", input="same", encoding_format="float")
    # The SDK asks for base64 when no format is given, and decodes it.
    decoded = sdk.embeddings.create(model="demo", input="same")
    assert decoded.data[0].embedding == floats.data[0].embedding
    raw = post(deployment, secret, {"model": "demo", "input": "same", "encoding_format": "base64"})
    assert raw.status_code == 200
    text = raw.json()["data"][0]["embedding"]
    assert isinstance(text, str)
    packed = base64.b64decode(text)
    unpacked = list(struct.unpack(f"<{len(packed) // 4}f", packed))
    assert unpacked == floats.data[0].embedding


@pytest.mark.parametrize("path", ["/v1/embeddings", "/openai/v1/embeddings", "/v2/embeddings"])
def test_every_route_answers(deployment: Deployment, secret: str, path: str) -> None:
    answer = post(deployment, secret, {"model": "demo", "input": "route", "dimensions": 8}, path)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["object"] == "list" and body["model"] == "demo"
    assert [d["object"] for d in body["data"]] == ["embedding"]
    assert len(body["data"][0]["embedding"]) == 8
    assert body["usage"] == {"prompt_tokens": 2, "total_tokens": 2}


# -- refusals -----------------------------------------------------------------------------


def test_unknown_model_is_404(deployment: Deployment, secret: str) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        deployment.client(secret).embeddings.create(model="no-such-model", input="x")
    assert caught.value.code == "model_not_found"


def test_a_model_without_embeddings_is_400(deployment: Deployment, secret: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        deployment.client(secret).embeddings.create(model="claude", input="x")
    assert "model 'claude' has no embeddings" in caught.value.message


def test_no_key_is_401(deployment: Deployment) -> None:
    answer = httpx.post(f"{deployment.url}/v1/embeddings", json={"model": "demo", "input": "x"})
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"input": ""}, "input[0] is an empty string"),
        ({"input": []}, "input must not be empty"),
        ({"input": ["ok", ""]}, "input[1] is an empty string"),
        ({"input": [[1, 2], []]}, "input[1] is an empty token array"),
        ({"input": ["x"] * 2049}, "at most 2048"),
        ({"input": ["x", "y" * (MAX_STRING_CHARS + 1)]}, "input[1] is 1001 long"),
        ({"input": [[1, -2]]}, "token id outside"),
        (
            {"input": "x", "truncate": "END", "extra_thing": 1},
            "unknown fields: extra_thing, truncate",
        ),
    ],
)
def test_bad_input_is_400_in_openai_shape(
    deployment: Deployment, secret: str, body: dict[str, Any], says: str
) -> None:
    answer = post(deployment, secret, {"model": "demo", **body})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert says in error["message"]
    assert error["type"] == "invalid_request_error"


def test_input_of_the_wrong_type_is_refused(deployment: Deployment, secret: str) -> None:
    for value in (5, [1.5], ["a", 1], True, {"text": "x"}):
        answer = post(deployment, secret, {"model": "demo", "input": value})
        assert answer.status_code == 422, (value, answer.text)
        assert "input" in answer.json()["error"]["message"]
    answer = post(deployment, secret, {"model": "demo", "input": "x", "encoding_format": "hex"})
    assert answer.status_code == 422


def test_the_demo_caps_what_it_writes(deployment: Deployment, secret: str) -> None:
    answer = post(deployment, secret, {"model": "demo", "input": ["x"] * 2048, "dimensions": 4096})
    assert answer.status_code == 400
    assert "at most 1048576 values" in answer.json()["error"]["message"]


# -- upstreams ----------------------------------------------------------------------------


def test_openai_upstream_gets_the_request_as_sent(deployment: Deployment, secret: str) -> None:
    sdk = deployment.client(secret)
    result = sdk.embeddings.create(
        model="emb-openai",
        input=["a", "bb"],
        dimensions=3,
        user="user-1",
        extra_body={"custom_flag": True},
    )
    path, headers, body = deployment.upstream.last("/v1/embeddings")
    assert path == "/v1/embeddings"
    # The SDK asked for base64; Spool passed the request on with the upstream's model name.
    assert body == {
        "model": "emb-small",
        "input": ["a", "bb"],
        "user": "user-1",
        "dimensions": 3,
        "encoding_format": "base64",
        "custom_flag": True,
    }
    assert headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert result.model == "emb-openai"
    assert [d.embedding for d in result.data] == [openai_vector(0), openai_vector(1)]
    assert [d.index for d in result.data] == [0, 1]
    assert result.usage.prompt_tokens == result.usage.total_tokens == UPSTREAM_PROMPT_TOKENS


def test_openai_upstream_floats_reach_the_client_in_its_format(
    deployment: Deployment, secret: str
) -> None:
    """An upstream that answers floats however it was asked: base64 for a client that
    asked for base64, floats for one that asked for floats."""
    asked = post(
        deployment,
        secret,
        {"model": "emb-openai-floats", "input": ["p", "q"], "encoding_format": "base64"},
    )
    assert asked.status_code == 200, asked.text
    assert [d["embedding"] for d in asked.json()["data"]] == [
        float32_base64(openai_vector(0)),
        float32_base64(openai_vector(1)),
    ]
    floats = post(
        deployment, secret, {"model": "emb-openai", "input": [1, 2], "encoding_format": "float"}
    )
    assert floats.json()["data"][0]["embedding"] == openai_vector(0)
    assert deployment.upstream.last("/v1/embeddings")[2]["input"] == [1, 2]


def test_openai_upstream_failures(deployment: Deployment, secret: str) -> None:
    sdk = deployment.client(secret)
    with pytest.raises(openai.APIStatusError) as failed:
        sdk.embeddings.create(model="emb-openai-fail", input="x")
    assert failed.value.status_code == 502
    assert "the upstream answered 401: Incorrect API key provided" in failed.value.message
    assert UPSTREAM_KEY not in failed.value.response.text
    with pytest.raises(openai.APIStatusError) as garbage:
        sdk.embeddings.create(model="emb-openai-garbage", input="x")
    assert garbage.value.status_code == 502
    assert "not JSON" in garbage.value.message
    with pytest.raises(openai.APIStatusError) as slow:
        sdk.embeddings.create(model="emb-openai-slow", input="x")
    assert slow.value.status_code == 504
    assert slow.value.code == "upstream_timeout"


def test_gemini_upstream(deployment: Deployment, secret: str) -> None:
    sdk = deployment.client(secret)
    result = sdk.embeddings.create(model="emb-gemini", input=["hi", "there"], dimensions=3)
    path, headers, body = deployment.upstream.last("batchEmbedContents")
    assert path == "/gemini/models/text-embedding-004:batchEmbedContents"
    assert headers["x-goog-api-key"] == UPSTREAM_KEY
    assert "authorization" not in headers
    assert body == {
        "requests": [
            {
                "model": "models/text-embedding-004",
                "content": {"parts": [{"text": text}]},
                "outputDimensionality": 3,
            }
            for text in ("hi", "there")
        ]
    }
    assert result.model == "emb-gemini"
    assert [d.embedding for d in result.data] == [gemini_vector("hi"), gemini_vector("there")]
    assert result.usage.prompt_tokens == 1 + 2  # estimated: Gemini did not count


def test_gemini_refuses_token_ids_and_unknown_fields(deployment: Deployment, secret: str) -> None:
    seen = len(deployment.upstream.seen)
    tokens = post(deployment, secret, {"model": "emb-gemini", "input": [[1, 2]]})
    assert tokens.status_code == 400
    assert "takes text input, not token ids" in tokens.json()["error"]["message"]
    unknown = post(deployment, secret, {"model": "emb-gemini", "input": "x", "task_type": "Q"})
    assert unknown.status_code == 400
    assert "unknown fields: task_type" in unknown.json()["error"]["message"]
    assert len(deployment.upstream.seen) == seen


# -- usage and limits ---------------------------------------------------------------------


def usage_by_model(deployment: Deployment, secret: str) -> dict[str, dict[str, int]]:
    answer = httpx.get(f"{deployment.url}/v1/usage", headers={"Authorization": f"Bearer {secret}"})
    assert answer.status_code == 200
    return {m.pop("model"): m for m in answer.json()["models"]}


def test_usage_is_charged_to_the_key(deployment: Deployment) -> None:
    secret = deployment.new_key("embeddings-usage")
    sdk = deployment.client(secret)
    sdk.embeddings.create(model="emb-openai", input=["a", "b"])
    sdk.embeddings.create(model="demo", input=["abcdefgh", "abcd"])
    with pytest.raises(openai.APIStatusError):
        sdk.embeddings.create(model="emb-openai-fail", input="x")
    usage = usage_by_model(deployment, secret)
    assert usage == {
        "emb-openai": {"input_tokens": UPSTREAM_PROMPT_TOKENS, "output_tokens": 0, "requests": 1},
        "demo": {"input_tokens": 2 + 1, "output_tokens": 0, "requests": 1},
    }


def test_limits_apply_and_slots_come_back(deployment: Deployment) -> None:
    """A key allowed one open request at a time makes one after another, failures too
    (each gives its slot back); a key's requests per minute are counted."""
    one_at_a_time = deployment.client(deployment.new_key("serial", "--concurrency", "1"))
    for model in ("demo", "emb-openai-fail", "emb-openai", "demo"):
        try:
            one_at_a_time.embeddings.create(model=model, input="x")
        except openai.APIStatusError as exc:
            assert exc.status_code == 502
    limited = deployment.client(deployment.new_key("rpm", "--rpm", "2"))
    limited.embeddings.create(model="demo", input="x")
    limited.embeddings.create(model="demo", input="x")
    with pytest.raises(openai.RateLimitError) as caught:
        limited.embeddings.create(model="demo", input="x")
    assert caught.value.response.headers["retry-after"]
