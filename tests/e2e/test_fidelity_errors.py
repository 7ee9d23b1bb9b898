"""Request fidelity at the edges: media by URL fetched through the outbound guard, bad
media and schemas refused before anything is queued, fields a provider cannot honour
refused by name or dropped and reported, and unknown fields passed through verbatim to a
provider of the same protocol."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest

from shared.redis.embedded import free_port
from tests.conftest import Cluster
from tests.e2e.test_fidelity import IMAGE_FORM, find, received
from tests.media import WAV_B64

pytestmark = pytest.mark.e2e


def openai_chat(cluster: Cluster, model: str, content: Any, **fields: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": content}], **fields}
    return httpx.post(f"{cluster.url}/v1/chat/completions", json=body, timeout=30)


def image_part(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


def error_message(response: httpx.Response) -> str:
    return str(response.json()["error"]["message"])


def read_events(response: httpx.Response) -> list[dict[str, Any]]:
    return [
        json.loads(line[6:])
        for line in response.iter_lines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]


def upstream_calls(cluster: Cluster) -> int:
    return len(cluster.upstream.seen)


@pytest.mark.parametrize(
    ("part", "says"),
    [
        (image_part("http://169.254.169.254/latest/meta-data.png"), "was refused"),
        (image_part("http://10.1.2.3/cat.png"), "was refused"),
        (image_part("ftp://example.com/cat.png"), "http(s) URL"),
        (image_part("data:image/png;base64"), "not a valid data URL"),
        (image_part("data:image/png;base64,@@@@"), "not valid base64"),
        (image_part("data:image/bmp;base64,Qk0="), "image/bmp"),
        ({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "flac"}}, "format"),
        ({"type": "video_url", "video_url": {"url": "http://x"}}, "video_url"),
    ],
)
def test_bad_media_is_a_400_and_nothing_is_queued(
    cluster: Cluster, part: dict[str, Any], says: str
) -> None:
    before = upstream_calls(cluster)
    response = openai_chat(cluster, "up-openai-text", [{"type": "text", "text": "hi"}, part])
    assert response.status_code == 400, response.text
    assert says in error_message(response)
    assert upstream_calls(cluster) == before


def test_an_oversized_inline_image_is_a_400(cluster: Cluster) -> None:
    big = "A" * (1024 * 1024 * 4 // 3 + 8)  # more than max_media_bytes (1 MiB) decoded
    response = openai_chat(cluster, "up-openai-text", [image_part(f"data:image/png;base64,{big}")])
    assert response.status_code == 400
    assert "max_media_bytes" in error_message(response)


def test_audio_to_a_provider_without_audio_input_names_the_part(cluster: Cluster) -> None:
    audio = {"type": "input_audio", "input_audio": {"data": WAV_B64, "format": "wav"}}
    response = openai_chat(cluster, "up-anthropic-text", [{"type": "text", "text": "hi"}, audio])
    assert response.status_code == 400
    message = error_message(response)
    assert "messages[0] part 1" in message and "audio input is not supported" in message


def test_a_schema_that_is_not_json_schema_is_a_400_in_each_shape(cluster: Cluster) -> None:
    bad = {"type": "objekt"}
    openai = openai_chat(
        cluster,
        "up-openai-json",
        "hi",
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": bad}},
    )
    assert openai.status_code == 400 and "not valid JSON Schema" in error_message(openai)
    anthropic = httpx.post(
        f"{cluster.url}/v1/messages",
        json={
            "model": "up-anthropic-json",
            "max_tokens": 10,
            "messages": [{"role": "user", "content": "hi"}],
            "output_config": {"format": {"type": "json_schema", "schema": bad}},
        },
        timeout=30,
    )
    assert anthropic.status_code == 400
    assert anthropic.json()["type"] == "error"
    assert "not valid JSON Schema" in anthropic.json()["error"]["message"]
    gemini = httpx.post(
        f"{cluster.url}/v1beta/models/up-gemini-json:generateContent",
        json={
            "contents": [{"parts": [{"text": "hi"}]}],
            "generationConfig": {"responseMimeType": "application/json", "responseJsonSchema": bad},
        },
        timeout=30,
    )
    assert gemini.status_code == 400
    assert gemini.json()["error"]["status"] == "INVALID_ARGUMENT"


def test_an_image_url_is_fetched_for_a_provider_that_needs_bytes(cluster: Cluster) -> None:
    marker = f"fetched {uuid.uuid4().hex}"
    url = cluster.upstream.base_url.removesuffix("/v1") + "/media/red.png"
    response = openai_chat(
        cluster, "up-gemini-text", [{"type": "text", "text": marker}, image_part(url)]
    )
    assert response.status_code == 200, response.text
    body = received(cluster, marker)
    assert find(body, IMAGE_FORM["gemini"])
    assert url not in str(body)


def test_an_image_url_goes_as_a_url_to_a_provider_that_takes_urls(cluster: Cluster) -> None:
    marker = f"linked {uuid.uuid4().hex}"
    url = cluster.upstream.base_url.removesuffix("/v1") + "/media/red.png"
    response = openai_chat(
        cluster, "up-anthropic-text", [{"type": "text", "text": marker}, image_part(url)]
    )
    assert response.status_code == 200, response.text
    body = received(cluster, marker)
    assert find(body, {"type": "image", "source": {"type": "url", "url": url}})


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("/media/missing.png", "answered 404"),
        ("/media/page.html", "text/html"),
        ("/media/huge.png", "max_media_bytes"),
    ],
)
def test_a_media_url_that_cannot_be_used_ends_the_stream_with_a_clear_error(
    cluster: Cluster, path: str, says: str
) -> None:
    url = cluster.upstream.base_url.removesuffix("/v1") + path
    with httpx.stream(
        "POST",
        f"{cluster.url}/v1/chat/completions",
        json={
            "model": "up-gemini-text",
            "stream": True,
            "messages": [{"role": "user", "content": [image_part(url)]}],
        },
        timeout=30,
    ) as response:
        assert response.status_code == 200
        events = read_events(response)
    errors = [e for e in events if e.get("error")]
    assert len(errors) == 1, events
    assert errors[0]["error"]["code"] == "media_fetch_failed"
    assert says in errors[0]["error"]["message"]


def test_an_unreachable_media_url_ends_the_stream_with_a_clear_error(cluster: Cluster) -> None:
    url = f"http://127.0.0.1:{free_port()}/cat.png"
    response = openai_chat(cluster, "up-gemini-text", [image_part(url)])
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "media_fetch_failed"


# -- fields: pass-through, refusal, drop_params ------------------------------------------


def test_unknown_fields_pass_through_to_a_same_protocol_upstream(cluster: Cluster) -> None:
    marker = f"verbatim {uuid.uuid4().hex}"
    extra = {"store": True, "prediction": {"type": "content", "content": "x"}, "verbosity": "low"}
    response = openai_chat(cluster, "up-openai-text", marker, **extra)
    assert response.status_code == 200, response.text
    assert "x-spool-dropped-params" not in response.headers
    body = received(cluster, marker)
    assert {k: body[k] for k in extra} == extra
    # Spool's own keys are not overridden by the client's.
    assert body["stream"] is True


def test_unknown_fields_pass_through_on_anthropic_and_gemini(cluster: Cluster) -> None:
    marker = f"verbatim {uuid.uuid4().hex}"
    anthropic = httpx.post(
        f"{cluster.url}/v1/messages",
        json={
            "model": "up-anthropic-text",
            "max_tokens": 10,
            "messages": [{"role": "user", "content": marker}],
            "container": "container_123",
        },
        timeout=30,
    )
    assert anthropic.status_code == 200, anthropic.text
    assert received(cluster, marker)["container"] == "container_123"
    marker = f"verbatim {uuid.uuid4().hex}"
    gemini = httpx.post(
        f"{cluster.url}/v1beta/models/up-gemini-text:generateContent",
        json={
            "contents": [{"parts": [{"text": marker}]}],
            "cachedContent": "cachedContents/abc",
            "generationConfig": {"mediaResolution": "MEDIA_RESOLUTION_LOW", "temperature": 0.5},
        },
        timeout=30,
    )
    assert gemini.status_code == 200, gemini.text
    body = received(cluster, marker)
    assert body["cachedContent"] == "cachedContents/abc"
    assert body["generationConfig"]["mediaResolution"] == "MEDIA_RESOLUTION_LOW"
    assert body["generationConfig"]["temperature"] == 0.5


def test_fields_another_protocol_cannot_honour_are_refused_by_name(cluster: Cluster) -> None:
    before = upstream_calls(cluster)
    response = openai_chat(cluster, "up-anthropic-text", "hi", store=True, logit_bias={"1": 5})
    assert response.status_code == 400
    message = error_message(response)
    assert "logit_bias" in message and "store" in message and "drop_params" in message
    assert upstream_calls(cluster) == before


def test_drop_params_drops_them_and_says_which(cluster: Cluster) -> None:
    marker = f"dropped {uuid.uuid4().hex}"
    response = openai_chat(
        cluster,
        "up-anthropic-text",
        marker,
        store=True,
        logit_bias={"1": 5},
        top_k=3,
        drop_params=True,
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-spool-dropped-params"] == "logit_bias, store"
    body = received(cluster, marker)
    assert "store" not in body and "logit_bias" not in body
    assert "drop_params" not in body


def test_common_parameters_reach_each_provider_in_its_form(cluster: Cluster) -> None:
    marker = f"params {uuid.uuid4().hex}"
    response = openai_chat(
        cluster,
        "up-openai-text",
        marker,
        presence_penalty=0.5,
        frequency_penalty=0.25,
        logit_bias={"50256": -100},
        seed=7,
        stop=["END"],
        user="u-1",
        metadata={"team": "search"},
        parallel_tool_calls=False,
        service_tier="flex",
        tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    )
    assert response.status_code == 200, response.text
    body = received(cluster, marker)
    for name, value in {
        "presence_penalty": 0.5,
        "frequency_penalty": 0.25,
        "logit_bias": {"50256": -100},
        "seed": 7,
        "stop": ["END"],
        "user": "u-1",
        "metadata": {"team": "search"},
        "parallel_tool_calls": False,
        "service_tier": "flex",
    }.items():
        assert body[name] == value, name
    marker = f"params {uuid.uuid4().hex}"
    gemini = httpx.post(
        f"{cluster.url}/v1beta/models/up-anthropic-text:generateContent",
        json={
            "contents": [{"parts": [{"text": marker}]}],
            "systemInstruction": {"parts": [{"text": "be brief"}]},
            "generationConfig": {"topK": 5, "stopSequences": ["END"]},
        },
        timeout=30,
    )
    assert gemini.status_code == 200, gemini.text
    body = received(cluster, marker)
    assert body["top_k"] == 5 and body["stop_sequences"] == ["END"]
    assert "be brief" in str(body["system"])
    # Gemini's safety settings have no place at Anthropic: refused by name.
    refused = httpx.post(
        f"{cluster.url}/v1beta/models/up-anthropic-text:generateContent",
        json={
            "contents": [{"parts": [{"text": "hi"}]}],
            "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
        },
        timeout=30,
    )
    assert refused.status_code == 400
    assert "safety_settings" in refused.json()["error"]["message"]


def test_anthropic_system_blocks_keep_cache_control(cluster: Cluster) -> None:
    marker = f"cached {uuid.uuid4().hex}"
    system = [{"type": "text", "text": marker, "cache_control": {"type": "ephemeral"}}]
    response = httpx.post(
        f"{cluster.url}/v1/messages",
        json={
            "model": "up-anthropic-text",
            "max_tokens": 10,
            "system": system,
            "messages": [{"role": "user", "content": "hi"}],
        },
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert received(cluster, marker)["system"] == system
