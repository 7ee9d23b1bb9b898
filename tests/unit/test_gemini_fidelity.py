"""Request fidelity on the Gemini side: the surface's parts and settings become the canonical
request (or a 400 naming what cannot be carried), the provider sends every canonical field
in Gemini's form, and signatures, usage details and log probabilities survive both ways."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pydantic
import pytest
from google import genai
from google.genai import types as gtypes

from api.formats.gemini import GeminiFormat
from api.routes.gemini import GenerateContentRequest, json_schema_of, to_canonical
from shared import events as ev
from shared.errors import InvalidRequest
from shared.request import ContentPart, GenerationRequest, Message, Thinking, ToolCall
from shared.store import JobRecord
from shared.transcript import Transcript
from tests.unit.records import completed_record
from tests.unit.upstream_fakes import ChunkStream, Upstream, sse_upstream
from worker.providers.gemini import GeminiProvider, build_body
from worker.providers.media import MediaFetcher

PNG = "iVBORw0KGgo="
BASE_URL = "http://upstream.test/v1beta"


def canonical(body: dict[str, Any], model: str = "gemini-x") -> GenerationRequest:
    return to_canonical(model, GenerateContentRequest.model_validate(body))


def user(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"role": "user", "parts": list(parts)}


def model_turn(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"role": "model", "parts": list(parts)}


def refused(body: dict[str, Any]) -> str:
    with pytest.raises(InvalidRequest) as info:
        canonical(body)
    return info.value.message


# --- surface: parts ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mime_type", "kind"),
    [
        ("image/png", "image"),
        ("image/jpeg", "image"),
        ("audio/wav", "audio"),
        ("audio/mpeg", "audio"),
        ("application/pdf", "document"),
        ("text/plain", "document"),
        ("text/csv", "document"),
    ],
)
def test_inline_data_becomes_a_part_of_its_kind(mime_type: str, kind: str) -> None:
    request = canonical(
        {
            "contents": [
                user(
                    {"text": "What is this?"}, {"inlineData": {"mimeType": mime_type, "data": PNG}}
                )
            ]
        }
    )
    [message] = request.messages
    assert message.content == "What is this?"
    assert message.parts == [
        ContentPart(type="text", text="What is this?"),
        ContentPart(type=kind, media_type=mime_type, data=PNG),
    ]
    assert request.protocol == "gemini"


def test_snake_case_parts_are_accepted() -> None:
    request = canonical(
        {
            "contents": [
                user(
                    {"inline_data": {"mime_type": "image/png", "data": PNG}},
                    {"file_data": {"mime_type": "application/pdf", "file_uri": "https://x.test/a"}},
                )
            ]
        }
    )
    assert request.messages[0].parts == [
        ContentPart(type="image", media_type="image/png", data=PNG),
        ContentPart(type="document", media_type="application/pdf", url="https://x.test/a"),
    ]


def test_url_safe_unpadded_base64_is_made_standard() -> None:
    # Protobuf's JSON mapping allows both; the google-genai SDK sends the URL-safe form.
    request = canonical(
        {"contents": [user({"inlineData": {"mimeType": "image/png", "data": "-_8"}})]}
    )
    assert request.messages[0].parts == [
        ContentPart(type="image", media_type="image/png", data="+/8=")
    ]


@pytest.mark.parametrize("mime_type", ["video/mp4", "application/zip"])
def test_an_unsupported_mime_type_is_named(mime_type: str) -> None:
    message = refused({"contents": [user({"inlineData": {"mimeType": mime_type, "data": PNG}})]})
    assert mime_type in message
    assert "contents[0].parts[0]" in message


def test_file_data_keeps_its_url() -> None:
    uri = "https://generativelanguage.googleapis.com/v1beta/files/abc123"
    request = canonical(
        {"contents": [user({"fileData": {"mimeType": "audio/mp3", "fileUri": uri}})]}
    )
    assert request.messages[0].parts == [ContentPart(type="audio", media_type="audio/mp3", url=uri)]
    assert request.has_media_urls


def test_gs_uris_are_refused() -> None:
    message = refused(
        {
            "contents": [
                user({"fileData": {"mimeType": "image/png", "fileUri": "gs://bucket/cat.png"}})
            ]
        }
    )
    assert "http(s)" in message
    assert "'gs'" in message


def test_file_data_needs_a_mime_type() -> None:
    message = refused({"contents": [user({"fileData": {"fileUri": "https://x.test/cat.png"}})]})
    assert "mimeType" in message


def test_unknown_part_kinds_are_refused_by_name() -> None:
    message = refused({"contents": [user({"executableCode": {"code": "print(1)"}})]})
    assert "executableCode" in message


def test_model_turn_thoughts_and_signatures() -> None:
    request = canonical(
        {
            "contents": [
                user({"text": "Weather in Paris?"}),
                model_turn(
                    {
                        "text": "I should call the tool.",
                        "thought": True,
                        "thoughtSignature": "U0lHMQ==",
                    },
                    {"text": "Checking."},
                    {
                        "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                        "thoughtSignature": "U0lHMg==",
                    },
                ),
            ]
        }
    )
    assistant = request.messages[1]
    assert assistant.role == "assistant"
    assert assistant.content == "Checking."
    assert assistant.thinking == [Thinking(text="I should call the tool.", signature="U0lHMQ==")]
    assert assistant.tool_calls == [
        ToolCall(
            id="call_get_weather_2",
            name="get_weather",
            arguments='{"city":"Paris"}',
            signature="U0lHMg==",
        )
    ]


def test_a_signature_on_a_text_part_is_kept_as_empty_thinking() -> None:
    request = canonical(
        {
            "contents": [
                user({"text": "hi"}),
                model_turn({"text": "Hello!", "thoughtSignature": "U0lH"}),
                user({"text": "again"}),
            ]
        }
    )
    assert request.messages[1] == Message(
        role="assistant", content="Hello!", thinking=[Thinking(text="", signature="U0lH")]
    )


def test_a_signature_only_part_in_a_model_turn_is_kept() -> None:
    request = canonical(
        {
            "contents": [
                user({"text": "hi"}),
                model_turn({"text": "Hi"}, {"thoughtSignature": "U0lH"}),
            ]
        }
    )
    assert request.messages[1].thinking == [Thinking(signature="U0lH")]
    assert request.messages[1].content == "Hi"


def test_media_in_a_model_turn_is_refused() -> None:
    message = refused(
        {
            "contents": [
                user({"text": "hi"}),
                model_turn({"inlineData": {"mimeType": "image/png", "data": PNG}}),
            ]
        }
    )
    assert "contents[1].parts[0]" in message


def test_function_response_with_media_parts_becomes_a_tool_message_with_parts() -> None:
    request = canonical(
        {
            "contents": [
                user({"text": "Show me the chart"}),
                model_turn({"functionCall": {"name": "chart", "args": {}}}),
                user(
                    {
                        "functionResponse": {
                            "name": "chart",
                            "response": {"ok": True},
                            "parts": [{"inlineData": {"mimeType": "image/png", "data": PNG}}],
                        }
                    }
                ),
            ]
        }
    )
    call = request.messages[1].tool_calls[0]  # type: ignore[index]
    tool = request.messages[2]
    assert tool.role == "tool"
    assert tool.name == "chart"
    assert tool.tool_call_id == call.id  # answers the call it follows
    assert tool.content == '{"ok":true}'
    assert tool.parts == [
        ContentPart(type="text", text='{"ok":true}'),
        ContentPart(type="image", media_type="image/png", data=PNG),
    ]
    assert len(request.messages) == 3  # no empty user message after the result


def test_function_responses_without_ids_answer_calls_in_order() -> None:
    request = canonical(
        {
            "contents": [
                user({"text": "q"}),
                model_turn(
                    {"functionCall": {"name": "f", "args": {"n": 1}}},
                    {"functionCall": {"name": "f", "args": {"n": 2}}},
                    {"functionCall": {"name": "g", "args": {}, "id": "g-1"}},
                ),
                user(
                    {"functionResponse": {"name": "f", "response": {}}},
                    {"functionResponse": {"name": "g", "response": {}, "id": "g-1"}},
                    {"functionResponse": {"name": "f", "response": {}}},
                    {"functionResponse": {"name": "h", "response": {}}},
                ),
            ]
        }
    )
    ids = [m.tool_call_id for m in request.messages if m.role == "tool"]
    assert ids == ["call_f_0", "g-1", "call_f_1", "h"]


def test_plain_text_stays_plain() -> None:
    request = canonical({"contents": [user({"text": "a"}, {"text": "b"})]})
    assert request.messages == [Message(role="user", content="ab")]


def test_system_instruction_with_several_parts() -> None:
    request = canonical(
        {
            "systemInstruction": {"parts": [{"text": "Be brief. "}, {"text": "Be kind."}]},
            "contents": [user({"text": "hi"})],
        }
    )
    assert request.messages[0] == Message(role="system", content="Be brief. Be kind.")
    message = refused(
        {
            "systemInstruction": {
                "parts": [{"inlineData": {"mimeType": "image/png", "data": PNG}}]
            },
            "contents": [user({"text": "hi"})],
        }
    )
    assert "systemInstruction" in message


# --- surface: generationConfig and the rest ------------------------------------------------


def test_sampling_and_control_fields() -> None:
    request = canonical(
        {
            "contents": [user({"text": "hi"})],
            "generationConfig": {
                "topK": 40.0,  # the google-genai SDK sends a float
                "presencePenalty": 0.5,
                "frequencyPenalty": -0.5,
                "responseLogprobs": True,
                "logprobs": 3,
                "seed": 7,
                "candidateCount": 1,
            },
            "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
        }
    )
    assert request.top_k == 40
    assert request.presence_penalty == 0.5
    assert request.frequency_penalty == -0.5
    assert request.logprobs is True
    assert request.top_logprobs == 3
    assert request.seed == 7
    assert request.safety_settings == [
        {"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}
    ]
    assert request.extra == {}


def test_candidate_count_above_one_is_refused() -> None:
    message = refused(
        {"contents": [user({"text": "hi"})], "generationConfig": {"candidateCount": 2}}
    )
    assert "candidateCount" in message


@pytest.mark.parametrize(
    ("thinking", "expected"),
    [
        ({"includeThoughts": True}, {"reasoning": True}),
        ({"thinkingBudget": 2048}, {"reasoning_budget": 2048}),
        ({"thinkingBudget": -1}, {}),
        ({"thinkingLevel": "low"}, {"reasoning_effort": "low"}),
        (
            {"thinking_level": "HIGH", "include_thoughts": True},
            {"reasoning_effort": "high", "reasoning": True},
        ),
        ({"thinkingLevel": "THINKING_LEVEL_UNSPECIFIED"}, {}),
    ],
)
def test_thinking_config(thinking: dict[str, Any], expected: dict[str, Any]) -> None:
    request = canonical(
        {"contents": [user({"text": "hi"})], "generationConfig": {"thinkingConfig": thinking}}
    )
    got = {
        "reasoning": request.reasoning,
        "reasoning_budget": request.reasoning_budget,
        "reasoning_effort": request.reasoning_effort,
    }
    assert got == {
        "reasoning": False,
        "reasoning_budget": None,
        "reasoning_effort": None,
        **expected,
    }


def test_thinking_level_errors() -> None:
    assert "'extreme'" in refused(
        {
            "contents": [user({"text": "hi"})],
            "generationConfig": {"thinkingConfig": {"thinkingLevel": "extreme"}},
        }
    )
    assert "thinkingBudget" in refused(
        {
            "contents": [user({"text": "hi"})],
            "generationConfig": {"thinkingConfig": {"thinkingLevel": "low", "thinkingBudget": 9}},
        }
    )


def test_json_mime_type_without_schema_is_json_object() -> None:
    request = canonical(
        {
            "contents": [user({"text": "hi"})],
            "generationConfig": {"responseMimeType": "application/json"},
        }
    )
    assert request.response_format is not None
    assert request.response_format.type == "json_object"
    plain = canonical(
        {"contents": [user({"text": "hi"})], "generationConfig": {"responseMimeType": "text/plain"}}
    )
    assert plain.response_format is None


def test_unsupported_response_mime_type_is_named() -> None:
    message = refused(
        {
            "contents": [user({"text": "hi"})],
            "generationConfig": {"responseMimeType": "text/x.enum"},
        }
    )
    assert "text/x.enum" in message


@pytest.mark.parametrize(
    "key", ["responseJsonSchema", "response_json_schema", "_responseJsonSchema"]
)
def test_response_json_schema_becomes_json_schema(key: str) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    request = canonical(
        {
            "contents": [user({"text": "hi"})],
            "generationConfig": {"responseMimeType": "application/json", key: schema},
        }
    )
    fmt = request.response_format
    assert fmt is not None
    assert (fmt.type, fmt.name, fmt.json_schema) == ("json_schema", "response", schema)
    assert request.extra == {}


def test_response_schema_is_converted() -> None:
    request = canonical(
        {
            "contents": [user({"text": "hi"})],
            "generationConfig": {
                "responseMimeType": "application/json",
                "responseSchema": {
                    "type": "OBJECT",
                    "properties": {
                        "name": {"type": "STRING", "description": "who"},
                        "mood": {"type": "STRING", "enum": ["happy", "sad"], "nullable": True},
                        "tags": {
                            "type": "ARRAY",
                            "items": {"type": "STRING", "format": "enum", "enum": ["a"]},
                            "minItems": "1",
                            "max_items": 3,
                        },
                        "age": {"type": "INTEGER", "minimum": 0, "maximum": 150},
                        "either": {"anyOf": [{"type": "NUMBER"}, {"type": "BOOLEAN"}]},
                    },
                    "required": ["name"],
                    "propertyOrdering": ["name", "mood", "tags", "age", "either"],
                },
            },
        }
    )
    assert request.response_format is not None
    assert request.response_format.json_schema == {
        "type": "object",
        "properties": {
            "name": {"type": "string", "description": "who"},
            "mood": {"type": ["string", "null"], "enum": ["happy", "sad", None]},
            "tags": {
                "type": "array",
                "items": {"type": "string", "format": "enum", "enum": ["a"]},
                "minItems": 1,
                "maxItems": 3,
            },
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "either": {"anyOf": [{"type": "number"}, {"type": "boolean"}]},
        },
        "required": ["name"],
    }


def test_response_schema_property_names_are_data() -> None:
    # Property names are the client's: only schema keywords are normalised.
    schema = json_schema_of(
        {
            "type": "OBJECT",
            "properties": {"min_items": {"type": "STRING"}, "type": {"type": "BOOLEAN"}},
        }
    )
    assert schema == {
        "type": "object",
        "properties": {"min_items": {"type": "string"}, "type": {"type": "boolean"}},
    }


def test_nullable_any_of_allows_null() -> None:
    assert json_schema_of({"anyOf": [{"type": "STRING"}], "nullable": True}) == {
        "anyOf": [{"type": "string"}, {"type": "null"}]
    }


@pytest.mark.parametrize(
    ("schema", "named"),
    [
        ({"type": "OBJECT", "propertiez": {}}, "propertiez"),
        ({"type": "TUPLE"}, "TUPLE"),
        ({"type": "ARRAY", "minItems": "many"}, "minItems"),
        ({"type": "OBJECT", "properties": []}, "properties"),
    ],
)
def test_bad_response_schemas_are_refused(schema: dict[str, Any], named: str) -> None:
    message = refused(
        {
            "contents": [user({"text": "hi"})],
            "generationConfig": {"responseMimeType": "application/json", "responseSchema": schema},
        }
    )
    assert named in message


def test_conflicting_response_settings_are_refused() -> None:
    schema = {"type": "object"}
    assert "only one" in refused(
        {
            "contents": [user({"text": "hi"})],
            "generationConfig": {
                "responseMimeType": "application/json",
                "responseSchema": {"type": "OBJECT"},
                "responseJsonSchema": schema,
            },
        }
    )
    assert "application/json" in refused(
        {
            "contents": [user({"text": "hi"})],
            "generationConfig": {"responseMimeType": "text/plain", "responseJsonSchema": schema},
        }
    )


def test_unknown_fields_are_kept_for_a_gemini_upstream() -> None:
    request = canonical(
        {
            "contents": [user({"text": "hi"})],
            "cachedContent": "cachedContents/abc",
            "labels": {"team": "search"},
            "generationConfig": {
                "temperature": 0.5,
                "mediaResolution": "MEDIA_RESOLUTION_LOW",
                "responseModalities": ["TEXT"],
            },
            "tools": [
                {"googleSearch": {}},
                {"functionDeclarations": [{"name": "f"}], "codeExecution": {}},
            ],
            "toolConfig": {"retrievalConfig": {"languageCode": "en"}},
            "drop_params": True,
        }
    )
    assert request.extra == {
        "cachedContent": "cachedContents/abc",
        "labels": {"team": "search"},
        "generationConfig": {
            "mediaResolution": "MEDIA_RESOLUTION_LOW",
            "responseModalities": ["TEXT"],
        },
        "tools": [{"googleSearch": {}}, {"codeExecution": {}}],
        "toolConfig": {"retrievalConfig": {"languageCode": "en"}},
    }
    assert request.temperature == 0.5
    assert [t.name for t in request.tools] == ["f"]
    assert request.drop_params is True
    assert request.protocol == "gemini"


def test_what_the_google_genai_sdk_sends_is_understood() -> None:
    """The SDK's own wire form (snake_case inside parts and schemas, enum names in upper
    case, float topK, base64 signatures) reaches the canonical request whole."""
    sent: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(orjson.loads(request.content))
        parts = [{"text": "{}"}]
        return httpx.Response(
            200, json={"candidates": [{"content": {"role": "model", "parts": parts}}]}
        )

    class City(pydantic.BaseModel):
        name: str
        population: int | None = None

    client = genai.Client(
        api_key="spool",
        http_options=gtypes.HttpOptions(
            base_url="http://spool.test",
            httpx_client=httpx.Client(transport=httpx.MockTransport(handler)),
        ),
    )
    contents = [
        gtypes.Content(
            role="user",
            parts=[
                gtypes.Part.from_text(text="Which city?"),
                gtypes.Part.from_bytes(data=b"\x89PNG\xfb\xff", mime_type="image/png"),
            ],
        ),
        gtypes.Content(
            role="model",
            parts=[
                gtypes.Part(
                    function_call=gtypes.FunctionCall(name="look", args={"q": 1}),
                    thought_signature=b"sig",
                )
            ],
        ),
        gtypes.Content(
            role="user",
            parts=[
                gtypes.Part.from_function_response(
                    name="look",
                    response={"ok": True},
                    parts=[
                        gtypes.FunctionResponsePart.from_bytes(data=b"GIF8", mime_type="image/gif")
                    ],
                )
            ],
        ),
    ]
    config = gtypes.GenerateContentConfig(
        response_mime_type="application/json",
        response_schema=City,
        thinking_config=gtypes.ThinkingConfig(thinking_level=gtypes.ThinkingLevel.LOW),
        top_k=40,
        media_resolution=gtypes.MediaResolution.MEDIA_RESOLUTION_LOW,
    )
    client.models.generate_content(model="gemini-x", contents=contents, config=config)
    request = canonical(sent[0])
    assert request.messages[0].parts == [
        ContentPart(type="text", text="Which city?"),
        ContentPart(type="image", media_type="image/png", data="iVBOR/v/"),
    ]
    assert request.messages[1].tool_calls[0].signature == "c2ln"  # type: ignore[index]
    assert request.messages[2].parts[1] == ContentPart(  # type: ignore[index]
        type="image", media_type="image/gif", data="R0lGOA=="
    )
    assert request.top_k == 40
    assert request.reasoning_effort == "low"
    assert request.response_format is not None
    assert request.response_format.json_schema == {
        "type": "object",
        "title": "City",
        "properties": {
            "name": {"type": "string", "title": "Name"},
            "population": {"type": ["integer", "null"], "title": "Population"},
        },
        "required": ["name"],
    }
    assert request.extra == {"generationConfig": {"mediaResolution": "MEDIA_RESOLUTION_LOW"}}


# --- provider: build_body ------------------------------------------------------------------


def body_for(**kw: Any) -> dict[str, Any]:
    return build_body(GenerationRequest.model_validate({"model": "m", **kw}))


def test_inline_media_and_files_api_uris() -> None:
    uri = "https://generativelanguage.googleapis.com/v1beta/files/abc"
    body = body_for(
        messages=[
            {
                "role": "user",
                "content": "Compare",
                "parts": [
                    {"type": "text", "text": "Compare"},
                    {"type": "image", "media_type": "image/png", "data": PNG},
                    {"type": "document", "media_type": "application/pdf", "url": uri},
                    {"type": "audio", "url": uri},
                ],
            }
        ]
    )
    assert body["contents"] == [
        {
            "role": "user",
            "parts": [
                {"text": "Compare"},
                {"inlineData": {"mimeType": "image/png", "data": PNG}},
                {"fileData": {"mimeType": "application/pdf", "fileUri": uri}},
                {"fileData": {"fileUri": uri}},
            ],
        }
    ]


def test_tools_go_as_parameters_json_schema() -> None:
    params = {
        "type": "object",
        "properties": {"city": {"type": ["string", "null"]}},
        "additionalProperties": False,
    }
    body = body_for(
        messages=[{"role": "user", "content": "hi"}],
        tools=[{"name": "get_weather", "description": "Weather", "parameters": params}],
    )
    assert body["tools"] == [
        {
            "functionDeclarations": [
                {"name": "get_weather", "description": "Weather", "parametersJsonSchema": params}
            ]
        }
    ]


def test_response_formats() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    body = body_for(
        messages=[{"role": "user", "content": "hi"}],
        response_format={"type": "json_schema", "name": "n", "schema": schema, "strict": True},
    )
    assert body["generationConfig"] == {
        "responseMimeType": "application/json",
        "responseJsonSchema": schema,
    }
    body = body_for(
        messages=[{"role": "user", "content": "hi"}], response_format={"type": "json_object"}
    )
    assert body["generationConfig"] == {"responseMimeType": "application/json"}
    body = body_for(messages=[{"role": "user", "content": "hi"}], response_format={"type": "text"})
    assert "generationConfig" not in body


def test_every_common_parameter() -> None:
    safety = [{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "BLOCK_ONLY_HIGH"}]
    body = body_for(
        messages=[{"role": "user", "content": "hi"}],
        top_k=20,
        presence_penalty=0.25,
        frequency_penalty=0.5,
        logprobs=True,
        top_logprobs=4,
        seed=3,
        safety_settings=safety,
    )
    assert body["safetySettings"] == safety
    assert body["generationConfig"] == {
        "topK": 20,
        "seed": 3,
        "presencePenalty": 0.25,
        "frequencyPenalty": 0.5,
        "responseLogprobs": True,
        "logprobs": 4,
    }


@pytest.mark.parametrize(
    ("fields", "thinking"),
    [
        ({"reasoning_effort": "high"}, {"thinkingLevel": "high"}),
        (
            {"reasoning": True, "reasoning_effort": "low"},
            {"includeThoughts": True, "thinkingLevel": "low"},
        ),
        # Gemini takes a level or a budget, never both: the level wins.
        (
            {"reasoning": True, "reasoning_effort": "low", "reasoning_budget": 512},
            {"includeThoughts": True, "thinkingLevel": "low"},
        ),
        (
            {"reasoning": True, "reasoning_budget": 512},
            {"includeThoughts": True, "thinkingBudget": 512},
        ),
    ],
)
def test_thinking_config_out(fields: dict[str, Any], thinking: dict[str, Any]) -> None:
    body = body_for(messages=[{"role": "user", "content": "hi"}], **fields)
    assert body["generationConfig"] == {"thinkingConfig": thinking}


def test_signatures_round_trip_through_the_surface_and_the_provider() -> None:
    contents = [
        user({"text": "Weather in Paris?"}),
        model_turn(
            {"text": "Need the tool.", "thought": True, "thoughtSignature": "VGgx"},
            {
                "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                "thoughtSignature": "RmMx",
            },
        ),
        user({"functionResponse": {"name": "get_weather", "response": {"temp": 21}}}),
        model_turn({"text": "It is 21°C.", "thoughtSignature": "VHgx"}),
        user({"text": "Thanks"}),
    ]
    assert build_body(canonical({"contents": contents}))["contents"] == contents


def test_an_empty_text_signature_goes_on_the_first_part_of_the_turn() -> None:
    body = body_for(
        messages=[
            {"role": "user", "content": "q"},
            {
                "role": "assistant",
                "content": "",
                "thinking": [{"signature": "U0lH"}],
                "tool_calls": [{"id": "a", "name": "f"}, {"id": "b", "name": "g"}],
            },
        ]
    )
    assert body["contents"][1] == {
        "role": "model",
        "parts": [
            {"functionCall": {"name": "f", "args": {}}, "thoughtSignature": "U0lH"},
            {"functionCall": {"name": "g", "args": {}}},
        ],
    }


def test_redacted_thinking_is_not_sent() -> None:
    body = body_for(
        messages=[
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a", "thinking": [{"redacted": "opaque"}]},
        ]
    )
    assert body["contents"][1] == {"role": "model", "parts": [{"text": "a"}]}


def test_tool_result_media_follows_the_function_response() -> None:
    body = body_for(
        messages=[
            {"role": "user", "content": "Chart?"},
            {"role": "assistant", "tool_calls": [{"id": "c1", "name": "chart"}]},
            {
                "role": "tool",
                "tool_call_id": "c1",
                "content": '{"ok": true}',
                "parts": [
                    {"type": "text", "text": '{"ok": true}'},
                    {"type": "image", "media_type": "image/png", "data": PNG},
                ],
            },
            {"role": "user", "content": "Describe it"},
        ]
    )
    assert body["contents"][2] == {
        "role": "user",
        "parts": [
            {"functionResponse": {"name": "chart", "response": {"ok": True}}},
            {"inlineData": {"mimeType": "image/png", "data": PNG}},
            {"text": "Describe it"},
        ],
    }


def gemini_request(**kw: Any) -> GenerationRequest:
    return GenerationRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], **kw}
    )


def test_extra_is_merged_for_a_gemini_surface_only() -> None:
    extra = {
        "cachedContent": "cachedContents/abc",
        "contents": "never overrides",
        "generationConfig": {
            "mediaResolution": "MEDIA_RESOLUTION_LOW",
            "temperature": 2,
            "thinkingConfig": {"thinkingBudget": 0},
        },
        "tools": [{"googleSearch": {}}],
        "toolConfig": {"retrievalConfig": {"languageCode": "en"}},
    }
    fields: dict[str, Any] = {
        "temperature": 0.5,
        "reasoning": True,
        "tools": [{"name": "f"}],
        "tool_choice": "auto",
        "extra": extra,
    }
    body = build_body(gemini_request(protocol="gemini", **fields))
    assert body == {
        "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
        "cachedContent": "cachedContents/abc",
        "tools": [
            {
                "functionDeclarations": [
                    {"name": "f", "parametersJsonSchema": {"type": "object", "properties": {}}}
                ]
            },
            {"googleSearch": {}},
        ],
        "toolConfig": {
            "functionCallingConfig": {"mode": "AUTO"},
            "retrievalConfig": {"languageCode": "en"},
        },
        "generationConfig": {
            "mediaResolution": "MEDIA_RESOLUTION_LOW",
            "temperature": 0.5,
            "thinkingConfig": {"thinkingBudget": 0, "includeThoughts": True},
        },
    }
    for protocol in ("openai", "anthropic", None):
        other = build_body(gemini_request(protocol=protocol, **fields))
        assert "cachedContent" not in other
        assert other["generationConfig"] == {
            "temperature": 0.5,
            "thinkingConfig": {"includeThoughts": True},
        }
        assert len(other["tools"]) == 1


# --- provider: the stream ------------------------------------------------------------------


def data(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\r\n\r\n"


def chunk(*parts: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": list(parts)}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    return data({"candidates": [candidate], **extra})


def entry() -> Any:
    from shared.model_table import ModelEntry

    return ModelEntry.model_validate({"provider": "gemini", "base_url": BASE_URL, "model": "g"})


async def stream(upstream: Upstream, request: GenerationRequest | None = None) -> list[ev.Event]:
    async with upstream.client() as client:
        provider = GeminiProvider(client)
        return [e async for e in provider.stream(request or gemini_request(), entry())]


async def test_usage_details() -> None:
    usage = {
        "promptTokenCount": 100,
        "cachedContentTokenCount": 60,
        "candidatesTokenCount": 7,
        "thoughtsTokenCount": 30,
        "totalTokenCount": 137,
    }
    events = await stream(sse_upstream([chunk({"text": "ok"}, finish="STOP", usageMetadata=usage)]))
    assert events[-1] == ev.Finish(
        reason="stop",
        usage=ev.Usage(
            input_tokens=100, output_tokens=37, cached_input_tokens=60, reasoning_tokens=30
        ),
    )


async def test_signatures_in_the_stream() -> None:
    upstream = sse_upstream(
        [
            chunk({"text": "Thinking…", "thought": True, "thoughtSignature": "VGg="}),
            chunk({"text": "Sure.", "thoughtSignature": "VHg="}),
            chunk({"functionCall": {"name": "f", "args": {"a": 1}}, "thoughtSignature": "RmM="}),
            chunk({"text": "", "thoughtSignature": "RW5k"}, finish="STOP"),
        ]
    )
    assert await stream(upstream) == [
        ev.ReasoningDelta(text="Thinking…", signature="VGg="),
        ev.ReasoningDelta(text="", signature="VHg="),
        ev.TextDelta(text="Sure."),
        ev.ToolCallDelta(index=0, id="call_0", name="f", arguments='{"a":1}', signature="RmM="),
        ev.ReasoningDelta(text="", signature="RW5k"),
        ev.Finish(reason="tool_calls"),
    ]


async def test_logprobs_reach_the_text_delta() -> None:
    logprobs = {
        "chosenCandidates": [
            {"token": "Hi", "logProbability": -0.1},
            {"token": "!", "logProbability": -0.5},
        ],
        "topCandidates": [
            {
                "candidates": [
                    {"token": "Hi", "logProbability": -0.1},
                    {"token": "Yo", "logProbability": -2.5},
                ]
            },
            {"candidates": [{"token": "!", "logProbability": -0.5}]},
        ],
    }
    body = data(
        {
            "candidates": [
                {
                    "content": {"role": "model", "parts": [{"text": "Hi!"}]},
                    "index": 0,
                    "finishReason": "STOP",
                    "logprobsResult": logprobs,
                }
            ]
        }
    )
    events = await stream(sse_upstream([body]))
    assert events[0] == ev.TextDelta(
        text="Hi!",
        logprobs=[
            {
                "token": "Hi",
                "logprob": -0.1,
                "bytes": [72, 105],
                "top_logprobs": [
                    {"token": "Hi", "logprob": -0.1, "bytes": [72, 105]},
                    {"token": "Yo", "logprob": -2.5, "bytes": [89, 111]},
                ],
            },
            {
                "token": "!",
                "logprob": -0.5,
                "bytes": [33],
                "top_logprobs": [{"token": "!", "logprob": -0.5, "bytes": [33]}],
            },
        ],
    )


async def test_urls_are_fetched_inline_except_files_api_uris() -> None:
    files_uri = f"{BASE_URL}/files/abc"
    google_uri = "https://generativelanguage.googleapis.com/v1beta/files/xyz"

    def respond(request: httpx.Request) -> httpx.Response:
        if request.url.host == "images.test":
            return httpx.Response(200, content=b"\x89PNG", headers={"content-type": "image/png"})
        stream = ChunkStream([chunk({"text": "ok"}, finish="STOP")])
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=stream)

    upstream = Upstream(respond)
    request = gemini_request(
        messages=[
            {
                "role": "user",
                "content": "",
                "parts": [
                    {"type": "image", "url": "https://images.test/cat.png"},
                    {"type": "document", "media_type": "application/pdf", "url": files_uri},
                    {"type": "image", "media_type": "image/png", "url": google_uri},
                ],
            }
        ]
    )
    async with upstream.client() as client:
        provider = GeminiProvider(client, MediaFetcher(client, 1024))
        events = [e async for e in provider.stream(request, entry())]
    assert events[0] == ev.TextDelta(text="ok")
    fetched, generate = upstream.requests
    assert str(fetched.url) == "https://images.test/cat.png"
    assert orjson.loads(generate.content)["contents"][0]["parts"] == [
        {"inlineData": {"mimeType": "image/png", "data": "iVBORw=="}},
        {"fileData": {"mimeType": "application/pdf", "fileUri": files_uri}},
        {"fileData": {"mimeType": "image/png", "fileUri": google_uri}},
    ]


# --- format: rendering ---------------------------------------------------------------------

RENDER = {"id": "s1", "model": "gemini-x"}


def frames(*events: ev.Event) -> list[dict[str, Any]]:
    renderer = GeminiFormat().renderer(RENDER)
    return [orjson.loads(f.data) for e in events for f in renderer.frames("1-0", e)]


def parts_of(frame: dict[str, Any]) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = frame["candidates"][0]["content"]["parts"]
    return parts


def test_plain_text_frame_is_unchanged() -> None:
    renderer = GeminiFormat().renderer(RENDER)
    [frame] = renderer.frames("1-0", ev.TextDelta(text="hi"))
    assert frame.data == (
        b'{"candidates":[{"content":{"role":"model","parts":[{"text":"hi"}]},"index":0}],'
        b'"modelVersion":"gemini-x","responseId":"1-0"}'
    )


def test_signed_reasoning_and_calls_render_with_signatures() -> None:
    out = frames(
        ev.ReasoningDelta(text="hmm", signature="VGg="),
        ev.ReasoningDelta(text="", signature="VHg="),
        ev.ReasoningDelta(text=""),
        ev.ToolCallDelta(index=0, id="c0", name="f", arguments='{"a":', signature="RmM="),
        ev.ToolCallDelta(index=0, arguments="1}"),
        ev.Finish(reason="tool_calls"),
    )
    assert [parts_of(f) for f in out] == [
        [{"text": "hmm", "thought": True, "thoughtSignature": "VGg="}],
        [{"text": "", "thought": True, "thoughtSignature": "VHg="}],
        [
            {
                "functionCall": {"id": "c0", "name": "f", "args": {"a": 1}},
                "thoughtSignature": "RmM=",
            }
        ],
    ]


def test_held_call_signatures_survive_a_snapshot() -> None:
    first = GeminiFormat().renderer(RENDER)
    first.frames(
        "1-0", ev.ToolCallDelta(index=0, id="c0", name="f", arguments="{}", signature="U2c=")
    )
    second = GeminiFormat().renderer(RENDER)
    second.restore(first.snapshot())
    [frame] = second.frames("2-0", ev.Finish(reason="tool_calls"))
    assert parts_of(orjson.loads(frame.data))[0]["thoughtSignature"] == "U2c="


def test_usage_metadata_details() -> None:
    usage = ev.Usage(
        input_tokens=100, output_tokens=37, cached_input_tokens=60, reasoning_tokens=30
    )
    [frame] = frames(ev.Finish(reason="stop", usage=usage))
    assert frame["usageMetadata"] == {
        "promptTokenCount": 100,
        "candidatesTokenCount": 7,
        "totalTokenCount": 137,
        "cachedContentTokenCount": 60,
        "thoughtsTokenCount": 30,
    }
    [plain] = frames(ev.Finish(reason="stop", usage=ev.Usage(input_tokens=3, output_tokens=4)))
    assert plain["usageMetadata"] == {
        "promptTokenCount": 3,
        "candidatesTokenCount": 4,
        "totalTokenCount": 7,
    }


def test_logprobs_render_as_logprobs_result() -> None:
    entry = {
        "token": "Hi",
        "logprob": -0.1,
        "bytes": [72, 105],
        "top_logprobs": [{"token": "Yo", "logprob": -2.5, "bytes": [89, 111]}],
    }
    [frame] = frames(ev.TextDelta(text="Hi", logprobs=[entry]))
    assert frame["candidates"][0]["logprobsResult"] == {
        "topCandidates": [{"candidates": [{"token": "Yo", "logProbability": -2.5}]}],
        "chosenCandidates": [{"token": "Hi", "logProbability": -0.1}],
    }


def transcript_of(events: list[ev.Event]) -> Transcript:
    transcript = Transcript()
    for event in events:
        transcript.apply(event)
    return transcript


def record() -> JobRecord:
    return completed_record("gemini", RENDER)


def test_non_streaming_response_carries_signatures_and_usage() -> None:
    transcript = transcript_of(
        [
            ev.ReasoningDelta(text="Let me see.", signature="VGg="),
            ev.TextDelta(text="Calling."),
            ev.ToolCallDelta(index=0, id="c0", name="f", arguments="{}", signature="RmM="),
            ev.Finish(
                reason="tool_calls",
                usage=ev.Usage(input_tokens=5, output_tokens=9, reasoning_tokens=4),
            ),
        ]
    )
    body = GeminiFormat().response(record(), transcript)
    assert body["candidates"][0]["content"]["parts"] == [
        {"text": "Let me see.", "thought": True, "thoughtSignature": "VGg="},
        {"text": "Calling."},
        {"functionCall": {"id": "c0", "name": "f", "args": {}}, "thoughtSignature": "RmM="},
    ]
    assert body["usageMetadata"] == {
        "promptTokenCount": 5,
        "candidatesTokenCount": 5,
        "totalTokenCount": 14,
        "thoughtsTokenCount": 4,
    }


def test_non_streaming_signature_without_thought_text() -> None:
    transcript = transcript_of(
        [
            ev.ReasoningDelta(text="", signature="VHg="),
            ev.TextDelta(text="Hello"),
            ev.Finish(reason="stop"),
        ]
    )
    body = GeminiFormat().response(record(), transcript)
    assert body["candidates"][0]["content"]["parts"] == [
        {"text": "", "thought": True, "thoughtSignature": "VHg="},
        {"text": "Hello"},
    ]


def test_plain_non_streaming_response_has_no_thought_part() -> None:
    transcript = transcript_of([ev.TextDelta(text="Hello"), ev.Finish(reason="stop")])
    body = GeminiFormat().response(record(), transcript)
    assert body["candidates"][0]["content"]["parts"] == [{"text": "Hello"}]
    assert "logprobsResult" not in body["candidates"][0]
