"""Request fidelity, every surface by every provider, through the official SDKs: an image,
a document, a JSON-schema structured output and a tool result carrying an image each reach
the upstream in that provider's own form (the mocks record the exact body), and the
answer comes back parsed by the SDK's own typed helpers."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import anthropic
import openai
import pytest
from google.genai import types as gtypes

from tests import mock_anthropic, mock_gemini, mock_upstream
from tests.conftest import Cluster
from tests.e2e.surfaces import WEATHER_SCHEMA, gemini_client
from tests.media import PDF, PDF_B64, PNG, PNG_B64, Weather

pytestmark = pytest.mark.e2e

PROVIDERS = ("openai", "anthropic", "gemini")
SURFACES = ("openai", "anthropic", "gemini")
TEXT = {
    "openai": "".join(mock_upstream.INSTANT_TEXT),
    "anthropic": mock_anthropic.TEXT,
    "gemini": mock_gemini.TEXT,
}
PNG_URL = f"data:image/png;base64,{PNG_B64}"
PDF_URL = f"data:application/pdf;base64,{PDF_B64}"
WEATHER = Weather(city="Paris", temperature=21.5, conditions="sunny")

# Each provider's own form of the PNG and the PDF.
IMAGE_FORM = {
    "openai": {"type": "image_url", "image_url": {"url": PNG_URL}},
    "anthropic": {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64},
    },
    "gemini": {"inlineData": {"mimeType": "image/png", "data": PNG_B64}},
}
DOCUMENT_FORM = {
    "openai": {"type": "file", "file": {"file_data": PDF_URL}},
    "anthropic": {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": PDF_B64},
    },
    "gemini": {"inlineData": {"mimeType": "application/pdf", "data": PDF_B64}},
}


def matches(value: Any, pattern: Any) -> bool:
    """Whether `value` has everything `pattern` has (dicts may have more keys)."""
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all(
            k in value and matches(value[k], v) for k, v in pattern.items()
        )
    if isinstance(pattern, list):
        return (
            isinstance(value, list)
            and len(value) == len(pattern)
            and all(matches(v, p) for v, p in zip(value, pattern, strict=True))
        )
    return bool(value == pattern)


def find(value: Any, pattern: Any) -> list[Any]:
    """Every dict inside `value` that matches `pattern`."""
    found = [value] if matches(value, pattern) else []
    if isinstance(value, dict):
        for child in value.values():
            found += find(child, pattern)
    elif isinstance(value, list):
        for child in value:
            found += find(child, pattern)
    return found


def received(cluster: Cluster, marker: str) -> dict[str, Any]:
    """The one body an upstream received whose prompt carries `marker`."""
    import orjson

    bodies = [s.body for s in cluster.upstream.seen if marker in orjson.dumps(s.body).decode()]
    assert len(bodies) == 1, f"{len(bodies)} upstream requests carry {marker}"
    return bodies[0]


def model(provider: str, kind: str) -> str:
    return f"up-{provider}-{kind}"


# -- the surfaces, each through its SDK --------------------------------------------------


def openai_client(cluster: Cluster) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{cluster.url}/v1", api_key="spool", max_retries=0)


def anthropic_client(cluster: Cluster) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=cluster.url, api_key="spool", max_retries=0)


def ask_with_media(cluster: Cluster, surface: str, name: str, kind: str, prompt: str) -> str:
    """Stream a question about one attachment (`kind` image or document); the answer."""
    if surface == "openai":
        part: dict[str, Any] = (
            {"type": "image_url", "image_url": {"url": PNG_URL}}
            if kind == "image"
            else {"type": "file", "file": {"file_data": PDF_URL, "filename": "doc.pdf"}}
        )
        stream = openai_client(cluster).chat.completions.create(
            model=name,
            messages=[{"role": "user", "content": [{"type": "text", "text": prompt}, part]}],
            stream=True,
        )
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    if surface == "anthropic":
        source = {"type": "base64", "media_type": "image/png", "data": PNG_B64}
        block: dict[str, Any] = {"type": "image", "source": source}
        if kind == "document":
            block = {
                "type": "document",
                "source": {"type": "base64", "media_type": "application/pdf", "data": PDF_B64},
            }
        with anthropic_client(cluster).messages.stream(
            model=name,
            max_tokens=200,
            messages=[{"role": "user", "content": [block, {"type": "text", "text": prompt}]}],
        ) as stream:
            return stream.get_final_text()
    client = gemini_client(cluster.url)
    blob = gtypes.Part.from_bytes(
        data=PNG if kind == "image" else PDF,
        mime_type="image/png" if kind == "image" else "application/pdf",
    )
    chunks = client.models.generate_content_stream(model=name, contents=[blob, prompt])
    return "".join(c.text or "" for c in chunks)


def ask_structured(cluster: Cluster, surface: str, name: str, prompt: str) -> Weather | None:
    """Ask for a Weather through the SDK's typed helper; the parsed object."""
    if surface == "openai":
        completion = openai_client(cluster).chat.completions.parse(
            model=name, messages=[{"role": "user", "content": prompt}], response_format=Weather
        )
        return completion.choices[0].message.parsed
    if surface == "anthropic":
        message = anthropic_client(cluster).messages.parse(
            model=name,
            max_tokens=200,
            messages=[{"role": "user", "content": prompt}],
            output_format=Weather,
        )
        return message.parsed_output
    client = gemini_client(cluster.url)  # kept: a collected client closes its connection
    response = client.models.generate_content(
        model=name,
        contents=prompt,
        config=gtypes.GenerateContentConfig(
            response_mime_type="application/json", response_schema=Weather
        ),
    )
    parsed = response.parsed
    assert parsed is None or isinstance(parsed, Weather)
    return parsed


def send_tool_image(cluster: Cluster, surface: str, name: str, prompt: str) -> str:
    """A conversation whose last turn is a tool result carrying an image; the answer."""
    if surface == "openai":
        call = {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }
        completion = openai_client(cluster).chat.completions.create(
            model=name,
            messages=[
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {
                    "role": "tool",
                    "tool_call_id": "call_1",
                    "content": [
                        {"type": "text", "text": "the radar map"},
                        {"type": "image_url", "image_url": {"url": PNG_URL}},
                    ],
                },
            ],
            tools=[
                {
                    "type": "function",
                    "function": {"name": "get_weather", "parameters": WEATHER_SCHEMA},
                }
            ],
        )
        return completion.choices[0].message.content or ""
    if surface == "anthropic":
        image = {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64},
        }
        message = anthropic_client(cluster).messages.create(
            model=name,
            max_tokens=200,
            tools=[{"name": "get_weather", "input_schema": WEATHER_SCHEMA}],
            messages=[
                {"role": "user", "content": prompt},
                {
                    "role": "assistant",
                    "content": [
                        {
                            "type": "tool_use",
                            "id": "toolu_1",
                            "name": "get_weather",
                            "input": {"city": "Paris"},
                        }
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_1",
                            "content": [{"type": "text", "text": "the radar map"}, image],
                        }
                    ],
                },
            ],
        )
        return "".join(b.text for b in message.content if b.type == "text")
    weather = gtypes.FunctionDeclaration(name="get_weather", parameters_json_schema=WEATHER_SCHEMA)
    client = gemini_client(cluster.url)
    response = client.models.generate_content(
        model=name,
        contents=[
            gtypes.Content(role="user", parts=[gtypes.Part(text=prompt)]),
            gtypes.Content(
                role="model",
                parts=[
                    gtypes.Part(
                        function_call=gtypes.FunctionCall(
                            name="get_weather", args={"city": "Paris"}
                        )
                    )
                ],
            ),
            gtypes.Content(
                role="user",
                parts=[
                    gtypes.Part(
                        function_response=gtypes.FunctionResponse(
                            name="get_weather",
                            response={"result": "the radar map"},
                            parts=[
                                gtypes.FunctionResponsePart(
                                    inline_data=gtypes.FunctionResponseBlob(
                                        mime_type="image/png", data=PNG
                                    )
                                )
                            ],
                        )
                    )
                ],
            ),
        ],
        config=gtypes.GenerateContentConfig(tools=[gtypes.Tool(function_declarations=[weather])]),
    )
    return response.text or ""


# -- the matrix -------------------------------------------------------------------------

Case = Callable[[Cluster, str, str], None]
both = pytest.mark.parametrize("provider", PROVIDERS)
surfaces = pytest.mark.parametrize("surface", SURFACES)


@surfaces
@both
@pytest.mark.parametrize("kind", ["image", "document"])
def test_media_input_reaches_the_provider_in_its_form(
    cluster: Cluster, surface: str, provider: str, kind: str
) -> None:
    marker = f"describe {uuid.uuid4().hex}"
    answer = ask_with_media(cluster, surface, model(provider, "text"), kind, marker)
    assert answer == TEXT[provider]
    body = received(cluster, marker)
    form = (IMAGE_FORM if kind == "image" else DOCUMENT_FORM)[provider]
    assert len(find(body, form)) == 1, body


@surfaces
@both
def test_json_schema_output_is_asked_natively_and_parsed_by_the_sdk(
    cluster: Cluster, surface: str, provider: str
) -> None:
    marker = f"weather {uuid.uuid4().hex}"
    assert ask_structured(cluster, surface, model(provider, "json"), marker) == WEATHER
    body = received(cluster, marker)
    if provider == "openai":
        asked = body["response_format"]
        assert asked["type"] == "json_schema"
        schema = asked["json_schema"]["schema"]
    elif provider == "anthropic":
        assert body["output_config"]["format"]["type"] == "json_schema"
        schema = body["output_config"]["format"]["schema"]
    else:
        config = body["generationConfig"]
        assert config["responseMimeType"] == "application/json"
        schema = config["responseJsonSchema"]
    assert set(schema["properties"]) == {"city", "temperature", "conditions"}
    assert schema["properties"]["temperature"]["type"] == "number"


@surfaces
def test_demo_answers_json_schema_output_the_sdk_parses(cluster: Cluster, surface: str) -> None:
    parsed = ask_structured(cluster, surface, "demo-fast", f"weather {uuid.uuid4().hex}")
    assert isinstance(parsed, Weather)


@surfaces
@both
def test_tool_result_image_reaches_the_provider(
    cluster: Cluster, surface: str, provider: str
) -> None:
    marker = f"radar {uuid.uuid4().hex}"
    assert send_tool_image(cluster, surface, model(provider, "text"), marker) == TEXT[provider]
    body = received(cluster, marker)
    image = IMAGE_FORM[provider]
    if provider == "openai":
        roles = [m["role"] for m in body["messages"]]
        assert roles[-2:] == ["tool", "user"], roles
        sent_id = {"openai": "call_1", "anthropic": "toolu_1"}.get(surface)
        if sent_id is not None:  # Gemini's calls have no ids: Spool makes them up
            assert body["messages"][-2]["tool_call_id"] == sent_id
        assert find(body["messages"][-1], image)
    elif provider == "anthropic":
        results = find(body, {"type": "tool_result"})
        assert len(results) == 1 and find(results[0]["content"], image), body
    else:
        turn = body["contents"][-1]
        assert turn["role"] == "user"
        assert find(turn, {"functionResponse": {"name": "get_weather"}})
        assert find(turn, image), turn
