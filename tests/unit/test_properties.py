"""Property-based tests (hypothesis) for the places where untrusted input enters Spool.

1. The SSE decoder reads any bytes in any chunking the same way, and reads back what
   `format_event` writes.
2. The request translators (the surfaces' pydantic models and `to_canonical`) accept valid
   requests, reject anything else only with errors the API turns into a 4xx, and produce a
   `GenerationRequest` that survives the trip through JSON (and through the job store).
3. Every wire format renders any canonical event sequence deterministically, as valid JSON
   in valid SSE, and a renderer rebuilt the way a resume rebuilds it says the same thing.
4. The provider event mappers and `EventParser.parse` fail on a bad upstream event only in
   the ways the worker handles.

The sections end with pinned regression examples for the product bugs these properties
found; each asserts the correct behaviour.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticSerializationError

from api.formats import Frame, registry
from api.routes import anthropic as anthropic_route
from api.routes import gemini as gemini_route
from api.routes import openai_chat as chat_route
from api.routes import openai_completions as completions_route
from api.tail import encode_frames, frame_ids
from shared import events as ev
from shared.errors import SpoolError, UpstreamError
from shared.request import GenerationRequest
from shared.sse import ServerSentEvent, SSEDecoder, format_comment, format_event
from worker.providers.anthropic import _EventMapper
from worker.providers.gemini import _ResponseMapper
from worker.providers.http import EventParser
from worker.providers.openai import _ChunkMapper

# No example database: these tests must leave no files behind (.hypothesis/).
BASE = settings(
    deadline=None,
    database=None,
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# Shrinking a failing request body takes Hypothesis 15-40 s; the pinned regressions below
# give the minimal examples, so the request properties report the failure as found.
NO_SHRINK = settings(BASE, phases=[Phase.explicit, Phase.generate])


# === 1. SSE decoder ========================================================================

SSE_TOKENS = [
    b"data:",
    b"data: ",
    b"event:",
    b"event: ",
    b"id:",
    b"id: ",
    b"retry:",
    b"retry: 15",
    b":",
    b" ",
    b"\r",
    b"\n",
    b"\r\n",
    b"\n\n",
    b"\xef\xbb\xbf",  # BOM
    b"x",
    b'{"a": 1}',
    "é".encode(),
    "日本".encode(),
    "🎉".encode(),
    b"\xe2\x82",  # the first two bytes of "€" …
    b"\xac",  # … and its last
    b"\xf0\x9f",
    b"\xff",
    b"\x00",
]
sse_bytes = st.one_of(
    st.binary(max_size=200),
    st.lists(st.sampled_from(SSE_TOKENS), max_size=40).map(b"".join),
)
# Cut positions (modulo the length), or None for one byte per read.
sse_cuts = st.one_of(st.lists(st.integers(0, 10_000), max_size=12), st.none())


def _split(data: bytes, cuts: list[int] | None) -> list[bytes]:
    if cuts is None:
        return [data[i : i + 1] for i in range(len(data))]
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def _decode(chunks: list[bytes], **kwargs: Any) -> list[ServerSentEvent]:
    decoder = SSEDecoder(**kwargs)
    out: list[ServerSentEvent] = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
    out.extend(decoder.close())
    return out


@settings(BASE, max_examples=200)
@given(data=sse_bytes, cuts=sse_cuts)
def test_sse_decoding_does_not_depend_on_chunking(data: bytes, cuts: list[int] | None) -> None:
    whole = _decode([data])
    assert _decode(_split(data, cuts)) == whole
    for event in whole:
        assert isinstance(event.data, str)
        assert isinstance(event.event, str)
        assert event.event  # an event always has a type ("message" by default)


@settings(BASE, max_examples=200)
@given(data=sse_bytes, cuts=sse_cuts, limit=st.integers(1, 16))
def test_sse_line_limit_only_raises_value_error(
    data: bytes, cuts: list[int] | None, limit: int
) -> None:
    try:
        events = _decode(_split(data, cuts), max_line_chars=limit)
    except ValueError as exc:
        assert "size limit" in str(exc)
        return
    # The limit can only stop a stream, never change what it decodes to.
    assert events == _decode([data])


single_line = st.text(
    st.characters(blacklist_characters="\r\n\0", blacklist_categories=("Cs",)), max_size=15
)
sse_items = st.lists(
    st.one_of(
        st.tuples(
            st.just("event"), st.text(max_size=40), st.none() | single_line, st.none() | single_line
        ),
        st.tuples(st.just("comment"), st.text(max_size=10), st.none(), st.none()),
    ),
    max_size=8,
)


@settings(BASE, max_examples=200)
@given(items=sse_items, cuts=sse_cuts)
def test_sse_format_event_round_trips(
    items: list[tuple[str, str, str | None, str | None]], cuts: list[int] | None
) -> None:
    stream = b""
    expected: list[ServerSentEvent] = []
    last_id: str | None = None
    for kind, text, id_, name in items:
        if kind == "comment":
            stream += format_comment(text)
            continue
        stream += format_event(text, id=id_, event=name)
        if id_ is not None:
            last_id = id_  # the last event id persists, as the spec says
        data = text.replace("\r\n", "\n").replace("\r", "\n")
        expected.append(ServerSentEvent(data=data, event=name or "message", id=last_id))
    assert _decode(_split(stream, cuts)) == expected


# === 2. Request translators ================================================================

FIELD_NAMES = sorted(
    {
        # OpenAI
        *("model", "messages", "role", "content", "name", "tool_calls", "tool_call_id"),
        *("function", "arguments", "id", "type", "text", "stream", "stream_options"),
        *("include_usage", "max_tokens", "max_completion_tokens", "temperature", "top_p"),
        *("n", "stop", "seed", "user", "tools", "tool_choice", "reasoning_effort"),
        *("parameters", "description", "prompt", "echo", "logprobs", "suffix"),
        # Anthropic
        *("system", "input", "tool_use_id", "is_error", "input_schema", "thinking"),
        *("budget_tokens", "stop_sequences", "signature"),
        # Gemini
        *("contents", "parts", "thought", "functionCall", "functionResponse", "args"),
        *("response", "systemInstruction", "functionDeclarations", "parametersJsonSchema"),
        *("toolConfig", "functionCallingConfig", "mode", "allowedFunctionNames"),
        *("generationConfig", "topP", "maxOutputTokens", "stopSequences", "candidateCount"),
        *("thinkingConfig", "includeThoughts", "thinkingBudget", "function_call"),
    }
)
ODD_STRINGS = [
    *("", " ", "text", "image_url", "function", "tool_use", "tool_result", "thinking"),
    *("redacted_thinking", "user", "assistant", "model", "system", "tool", "developer"),
    *("auto", "any", "none", "required", "AUTO", "ANY", "NONE", "VALIDATED"),
    *("enabled", "disabled", "adaptive", "low", "minimal", "null", "{}", "[]", "0"),
    "\x00",
    "\u202e\u200b",
    "🎉" * 3,
    # JSON may escape lone surrogates, and json.loads (FastAPI's parser) keeps them.
    "\ud800",
    "a\udfffb",
]
BIG_INTS = [2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63) - 1, 10**30]

json_keys = st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=8))
long_strings = st.builds(
    lambda s, n: s * n, st.text(min_size=1, max_size=3), st.integers(100, 3000)
)
json_strings = st.one_of(st.text(max_size=20), st.sampled_from(ODD_STRINGS), long_strings)
# What FastAPI's json.loads can hand a route: ints of any size, finite floats, any string.
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([0, 1, -1, *BIG_INTS]),
    st.floats(allow_nan=False, allow_infinity=False),
    json_strings,
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(json_keys, inner, max_size=4),
    max_leaves=16,
)
json_objects = st.dictionaries(json_keys, json_values, max_size=5)

text = st.one_of(st.text(max_size=30), st.sampled_from(ODD_STRINGS[:-2]))
ident = st.text(min_size=1, max_size=20)
schema = st.one_of(
    st.just({"type": "object", "properties": {"city": {"type": "string"}}}), json_objects
)

# --- valid bodies, one strategy per surface -----------------------------------------------

chat_part = st.fixed_dictionaries({"type": st.just("text"), "text": text})
chat_content = st.one_of(st.none(), text, st.lists(chat_part, max_size=3))
chat_tool_call = st.fixed_dictionaries(
    {
        "id": ident,
        "type": st.just("function"),
        "function": st.fixed_dictionaries({"name": ident, "arguments": text}),
    }
)
chat_message = st.one_of(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "developer", "user"]), "content": chat_content},
        optional={"name": ident},
    ),
    st.fixed_dictionaries(
        {"role": st.just("assistant"), "content": chat_content},
        optional={"tool_calls": st.lists(chat_tool_call, max_size=2)},
    ),
    st.fixed_dictionaries({"role": st.just("tool"), "content": text, "tool_call_id": ident}),
)
chat_tool = st.fixed_dictionaries(
    {
        "type": st.just("function"),
        "function": st.fixed_dictionaries(
            {"name": ident}, optional={"description": text, "parameters": schema}
        ),
    }
)
sampling = {
    "temperature": st.floats(0, 2),
    "top_p": st.floats(0, 1),
    "stop": st.one_of(text, st.lists(text, max_size=4)),
}
valid_chat = st.fixed_dictionaries(
    {"model": ident, "messages": st.lists(chat_message, min_size=1, max_size=4)},
    optional={
        **sampling,
        "stream": st.booleans(),
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
        "max_tokens": st.integers(1, 10**6),
        "max_completion_tokens": st.integers(1, 10**6),
        "n": st.just(1),
        "seed": st.integers(-(2**63), 2**63 - 1),
        "user": text,
        "tools": st.lists(chat_tool, max_size=3),
        "tool_choice": st.one_of(
            st.sampled_from(["auto", "none", "required"]),
            st.fixed_dictionaries(
                {"type": st.just("function"), "function": st.fixed_dictionaries({"name": ident})}
            ),
        ),
        "reasoning_effort": st.sampled_from(["minimal", "low", "medium", "high"]),
    },
)
valid_completion = st.fixed_dictionaries(
    {"model": ident, "prompt": st.one_of(text, st.lists(text, min_size=1, max_size=1))},
    optional={
        **sampling,
        "stream": st.booleans(),
        "max_tokens": st.integers(1, 10**6),
        "n": st.just(1),
        "seed": st.integers(-(2**63), 2**63 - 1),
        "user": text,
        "echo": st.just(False),
    },
)

a_text = st.fixed_dictionaries({"type": st.just("text"), "text": text})
a_tool_use = st.fixed_dictionaries(
    {"type": st.just("tool_use"), "id": ident, "name": ident, "input": json_objects}
)
a_thinking = st.fixed_dictionaries(
    {"type": st.just("thinking"), "thinking": text, "signature": text}
)
a_tool_result = st.fixed_dictionaries(
    {"type": st.just("tool_result"), "tool_use_id": ident},
    optional={"content": st.one_of(text, st.lists(a_text, max_size=2)), "is_error": st.booleans()},
)
a_user = st.fixed_dictionaries(
    {
        "role": st.just("user"),
        "content": st.one_of(text, st.lists(a_text | a_tool_result, min_size=1, max_size=3)),
    }
)
a_assistant = st.fixed_dictionaries(
    {
        "role": st.just("assistant"),
        "content": st.one_of(
            text, st.lists(a_text | a_tool_use | a_thinking, min_size=1, max_size=3)
        ),
    }
)
valid_anthropic = st.fixed_dictionaries(
    {
        "model": ident,
        "max_tokens": st.integers(1, 10**6),
        "messages": st.builds(
            lambda first, rest: [first, *rest],
            a_user,
            st.lists(a_user | a_assistant, max_size=3),
        ),
    },
    optional={
        "system": st.one_of(text, st.lists(a_text, max_size=2)),
        "tools": st.lists(
            st.fixed_dictionaries(
                {"name": ident}, optional={"description": text, "input_schema": schema}
            ),
            max_size=3,
        ),
        "tool_choice": st.one_of(
            st.fixed_dictionaries({"type": st.sampled_from(["auto", "any", "none"])}),
            st.fixed_dictionaries({"type": st.just("tool"), "name": ident}),
        ),
        "stop_sequences": st.lists(text, max_size=4),
        "temperature": st.floats(0, 1),
        "top_p": st.floats(0, 1),
        "stream": st.booleans(),
        "thinking": st.one_of(
            st.fixed_dictionaries(
                {"type": st.just("enabled"), "budget_tokens": st.integers(1024, 10**5)}
            ),
            st.fixed_dictionaries({"type": st.sampled_from(["disabled", "adaptive"])}),
        ),
    },
)

g_text = st.fixed_dictionaries({"text": text}, optional={"thought": st.booleans()})
g_call = st.fixed_dictionaries(
    {
        "functionCall": st.fixed_dictionaries(
            {"name": ident}, optional={"args": json_objects, "id": ident}
        )
    }
)
g_response = st.fixed_dictionaries(
    {
        "functionResponse": st.fixed_dictionaries(
            {"name": ident}, optional={"response": json_objects, "id": ident}
        )
    }
)
g_content = st.one_of(
    st.fixed_dictionaries(
        {"parts": st.lists(g_text | g_response, min_size=1, max_size=3)},
        optional={"role": st.sampled_from(["user", "function"])},
    ),
    st.fixed_dictionaries(
        {"role": st.just("model"), "parts": st.lists(g_text | g_call, min_size=1, max_size=3)}
    ),
)
valid_gemini = st.fixed_dictionaries(
    {"contents": st.lists(g_content, min_size=1, max_size=4)},
    optional={
        "systemInstruction": st.fixed_dictionaries({"parts": st.lists(g_text, max_size=2)}),
        "tools": st.lists(
            st.fixed_dictionaries(
                {
                    "functionDeclarations": st.lists(
                        st.fixed_dictionaries(
                            {"name": ident},
                            optional={"description": text, "parameters": schema},
                        ),
                        max_size=3,
                    )
                }
            ),
            max_size=2,
        ),
        "toolConfig": st.fixed_dictionaries(
            {
                "functionCallingConfig": st.fixed_dictionaries(
                    {"mode": st.sampled_from(["AUTO", "ANY", "NONE", "VALIDATED"])},
                    optional={"allowedFunctionNames": st.lists(ident, max_size=2)},
                )
            }
        ),
        "generationConfig": st.fixed_dictionaries(
            {},
            optional={
                "temperature": st.floats(0, 2),
                "topP": st.floats(0, 1),
                "maxOutputTokens": st.integers(1, 10**6),
                "stopSequences": st.lists(text, max_size=4),
                "candidateCount": st.just(1),
                "seed": st.integers(-(2**31), 2**31 - 1),
                # The Gemini API documents -1 as "dynamic thinking" and 0 as "off".
                "thinkingConfig": st.fixed_dictionaries(
                    {},
                    optional={
                        "includeThoughts": st.booleans(),
                        "thinkingBudget": st.integers(-1, 32768),
                    },
                ),
            },
        ),
    },
)

SURFACES = ["openai.chat", "openai.completions", "anthropic.messages", "gemini"]
VALID_BODIES: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "openai.chat": valid_chat,
    "openai.completions": valid_completion,
    "anthropic.messages": valid_anthropic,
    "gemini": valid_gemini,
}
REQUEST_MODELS: dict[str, type[BaseModel]] = {
    "openai.chat": chat_route.ChatCompletionRequest,
    "openai.completions": completions_route.CompletionRequest,
    "anthropic.messages": anthropic_route.MessagesRequest,
    "gemini": gemini_route.GenerateContentRequest,
}
gemini_models = st.one_of(st.sampled_from(["gemini-2.5-flash", "models/x"]), ident)


def _to_canonical(surface: str, body: Any, model: str) -> GenerationRequest:
    if surface == "openai.chat":
        return chat_route.to_canonical(body)
    if surface == "openai.completions":
        return completions_route.to_canonical(body)
    if surface == "anthropic.messages":
        return anthropic_route.to_canonical(body)
    return gemini_route.to_canonical(model, body)


def _assert_round_trips(request: GenerationRequest) -> None:
    # The way the API stores it: model_dump(mode="json") then orjson; StreamStore.create
    # turns an orjson.JSONEncodeError into InvalidRequest, a 400.
    try:
        stored: bytes | None = orjson.dumps(request.model_dump(mode="json"))
    except orjson.JSONEncodeError:
        stored = None
    if stored is not None:
        assert GenerationRequest.model_validate(orjson.loads(stored)) == request
    try:
        dumped = request.model_dump_json()
    except PydanticSerializationError:
        # Only strings the store refuses too (lone surrogates) may fail to serialize.
        assert stored is None
        return
    assert GenerationRequest.model_validate_json(dumped) == request


def _translate(surface: str, body: Any, model: str = "m") -> GenerationRequest | None:
    """Validate like FastAPI does (python mode, from json.loads output), then translate.

    A ValidationError from the model is FastAPI's 422, a SpoolError the route's 4xx. Anything
    else raised by `to_canonical` reaches the catch-all handler and answers 500 — including a
    pydantic ValidationError, which is not a RequestValidationError once inside the route."""
    try:
        parsed = REQUEST_MODELS[surface].model_validate(body)
    except ValidationError:
        return None
    try:
        request = _to_canonical(surface, parsed, model)
    except SpoolError:
        return None
    except ValidationError as exc:
        pytest.fail(
            f"{surface}: to_canonical raised pydantic ValidationError for a body the request "
            f"model accepted (the API answers 500): {exc}"
        )
    assert isinstance(request, GenerationRequest)
    _assert_round_trips(request)
    return request


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(value, dict):
        for key, child in value.items():
            out += _paths(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            out += _paths(child, (*path, index))
    return out


def _at(root: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        root = root[step]
    return root


MUTATIONS = ["replace", "delete", "insert", "wrap", "nest", "stringify", "duplicate"]


def _mutate(
    draw: st.DrawFn, body: Any, values: st.SearchStrategy[Any], strings: st.SearchStrategy[str]
) -> Any:
    """1-4 random edits: replace a value (often with a wrong type), drop it, add a key or
    item, wrap it in a list or object, bury it ~32 levels deep, make it a (long, odd)
    string, or duplicate a list item."""
    body = copy.deepcopy(body)
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(_paths(body)))
        op = draw(st.sampled_from(MUTATIONS))
        target = _at(body, path)
        if op == "insert":
            if isinstance(target, dict):
                target[draw(json_keys)] = draw(values)
            elif isinstance(target, list):
                target.insert(draw(st.integers(0, len(target))), draw(values))
            continue
        if not path:
            continue
        parent, key = _at(body, path[:-1]), path[-1]
        if op == "delete":
            del parent[key]
        elif op == "replace":
            parent[key] = draw(values)
        elif op == "wrap":
            parent[key] = [target] if draw(st.booleans()) else {"value": target}
        elif op == "nest":
            nested = target
            for _ in range(draw(st.integers(28, 40))):
                nested = [nested] if draw(st.booleans()) else {"a": nested}
            parent[key] = nested
        elif op == "stringify":
            parent[key] = draw(strings)
        elif op == "duplicate" and isinstance(parent, list):
            parent.append(copy.deepcopy(target))
    return body


@pytest.mark.parametrize("surface", SURFACES)
@settings(NO_SHRINK, max_examples=60)
@given(data=st.data(), model=gemini_models)
def test_valid_requests_are_accepted(surface: str, data: st.DataObject, model: str) -> None:
    body = data.draw(VALID_BODIES[surface], label="body")
    parsed = REQUEST_MODELS[surface].model_validate(body)
    try:
        orjson.dumps(body)
    except orjson.JSONEncodeError:
        # Integers beyond 64 bits or lone surrogates: the job store cannot hold them (it
        # answers InvalidRequest), so a SpoolError is an acceptable answer here too.
        with contextlib.suppress(SpoolError):
            _assert_round_trips(_to_canonical(surface, parsed, model))
        return
    request = _to_canonical(surface, parsed, model)
    assert request.messages
    _assert_round_trips(request)


@pytest.mark.parametrize("surface", SURFACES)
@settings(NO_SHRINK, max_examples=60)
@given(body=json_objects, model=gemini_models)
def test_arbitrary_bodies_fail_only_with_client_errors(
    surface: str, body: dict[str, Any], model: str
) -> None:
    _translate(surface, body, model)


@pytest.mark.parametrize("surface", SURFACES)
@settings(NO_SHRINK, max_examples=120)
@given(data=st.data(), model=gemini_models)
def test_almost_valid_bodies_fail_only_with_client_errors(
    surface: str, data: st.DataObject, model: str
) -> None:
    body = data.draw(VALID_BODIES[surface], label="valid body")
    mutated = _mutate(data.draw, body, json_values, json_strings)
    _translate(surface, mutated, model)


# --- pinned: bugs these properties found ----------------------------------------------------


def _deep_object(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


def _anthropic_tool_use(tool_input: Any) -> dict[str, Any]:
    block = {"type": "tool_use", "id": "toolu_1", "name": "f", "input": tool_input}
    return {
        "model": "m",
        "max_tokens": 16,
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [block]},
        ],
    }


def _gemini_part(part: dict[str, Any], role: str) -> dict[str, Any]:
    return {"contents": [{"role": role, "parts": [part]}]}


@pytest.mark.parametrize(
    ("surface", "body"),
    [
        # orjson.dumps inside to_canonical fails (TypeError) on integers beyond 64 bits, which
        # are valid JSON and which json.loads (FastAPI's parser) keeps as Python ints
        pytest.param(
            "anthropic.messages",
            _anthropic_tool_use({"n": 2**64}),
            id="anthropic-tool_use-input-big-int",
        ),
        pytest.param(
            "gemini",
            _gemini_part({"functionCall": {"name": "f", "args": {"n": 2**64}}}, "model"),
            id="gemini-functionCall-args-big-int",
        ),
        pytest.param(
            "gemini",
            _gemini_part({"functionResponse": {"name": "f", "response": {"n": 2**64}}}, "user"),
            id="gemini-functionResponse-big-int",
        ),
        # … and on a lone surrogate, which JSON may escape ("\ud800") and json.loads keeps
        pytest.param(
            "anthropic.messages",
            _anthropic_tool_use({"s": "\ud800"}),
            id="anthropic-tool_use-input-lone-surrogate",
        ),
        # … and on more than 255 levels: functionResponse.response has no depth check
        pytest.param(
            "gemini",
            _gemini_part(
                {"functionResponse": {"name": "f", "response": _deep_object(300)}}, "user"
            ),
            id="gemini-functionResponse-300-deep",
        ),
        # GenerationRequest(messages=[]) inside to_canonical: a pydantic ValidationError
        pytest.param(
            "anthropic.messages",
            {"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": []}]},
            id="anthropic-empty-content",
        ),
        pytest.param(
            "anthropic.messages",
            {
                "model": "m",
                "max_tokens": 16,
                "messages": [
                    {"role": "assistant", "content": [{"type": "thinking", "thinking": "x"}]}
                ],
            },
            id="anthropic-only-thinking",
        ),
        # thinkingBudget -1 (Gemini's "dynamic thinking") becomes reasoning_budget=-1
        pytest.param(
            "gemini",
            {
                "contents": [{"parts": [{"text": "hi"}]}],
                "generationConfig": {"thinkingConfig": {"thinkingBudget": -1}},
            },
            id="gemini-thinkingBudget-minus-1",
        ),
    ],
)
def test_translator_regressions(surface: str, body: dict[str, Any]) -> None:
    _translate(surface, body)


# === 3. Renderers ==========================================================================

# JSON as it travels between Spool and its upstreams, shared with section 4.
PROVIDER_FIELDS = [
    *("choices", "delta", "finish_reason", "usage", "prompt_tokens", "completion_tokens"),
    *("index", "error", "message", "reasoning_content", "reasoning", "content_block"),
    *("partial_json", "stop_reason", "input_tokens", "output_tokens", "cache_read_input_tokens"),
    *("cache_creation_input_tokens", "candidates", "finishReason", "usageMetadata"),
    *("promptTokenCount", "candidatesTokenCount", "thoughtsTokenCount", "promptFeedback"),
    *("blockReason", "code", "status"),
]
wire_keys = st.one_of(
    st.sampled_from(sorted({*FIELD_NAMES, *PROVIDER_FIELDS})), st.text(max_size=8)
)
wire_strings = st.one_of(st.text(max_size=20), st.sampled_from(ODD_STRINGS[:-2]), long_strings)
# What orjson.loads can hand a worker (and orjson.dumps write back): 64-bit integers (larger
# ones parse as floats), finite floats, valid UTF-8.
wire_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    wire_strings,
)
wire_values = st.recursive(
    wire_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(wire_keys, inner, max_size=4),
    max_leaves=16,
)
wire_objects = st.dictionaries(wire_keys, wire_values, max_size=5)

tool_arguments = st.one_of(
    st.text(max_size=12),
    st.sampled_from(['{"city": ', '"Paris"', "}", "[", "]", "{}", "null", "1e400", "{", ""]),
    wire_values.map(lambda v: orjson.dumps(v).decode()),
)
token_counts = st.integers(0, 2**31)
usage_events = st.builds(ev.Usage, input_tokens=token_counts, output_tokens=token_counts)
middle_events = st.one_of(
    st.builds(ev.TextDelta, text=st.text(max_size=20)),
    st.builds(
        ev.ReasoningDelta, text=st.text(max_size=20), signature=st.none() | st.text(max_size=10)
    ),
    st.builds(
        ev.ToolCallDelta,
        index=st.integers(0, 2),
        id=st.none() | ident,
        name=st.none() | ident,
        arguments=tool_arguments,
    ),
    # Calls the worker runs on MCP servers, their results and the servers' tool lists.
    st.builds(
        ev.ToolCallDelta,
        index=st.integers(3, 5),
        id=st.none() | ident,
        name=st.none() | ident,
        arguments=tool_arguments,
        server=st.just("calc"),
    ),
    st.builds(
        ev.ToolResult,
        index=st.integers(3, 5),
        id=ident,
        name=ident,
        server=st.just("calc"),
        arguments=tool_arguments,
        output=st.text(max_size=20),
        is_error=st.booleans(),
    ),
    st.just(ev.ToolsRunning()),
    st.builds(
        ev.ServerTools,
        server=st.just("calc"),
        tools=st.just([{"name": "add", "description": None, "input_schema": {}}]),
    ),
    usage_events,
)
terminal_events = st.one_of(
    st.builds(
        ev.Finish,
        reason=st.sampled_from(["stop", "length", "tool_calls", "content_filter", "cancelled"]),
        usage=st.none() | usage_events,
    ),
    st.builds(
        ev.Error,
        code=st.one_of(
            st.sampled_from(
                ["upstream_error", "upstream_timeout", "internal_error", "generation_timeout"]
            ),
            st.text(max_size=10),
        ),
        message=st.text(max_size=30),
        retryable=st.booleans(),
        retry_after=st.none() | st.floats(0, 3600),
        status=st.none()
        | st.sampled_from([400, 429, 500, 502, 503, 504, 529])
        | st.integers(100, 599),
    ),
)
event_sequences = st.builds(
    lambda start, middle, end: [*start, *middle, end],
    st.lists(
        st.builds(ev.Start, model=ident, provider=st.sampled_from(["openai", "anthropic"])),
        max_size=1,
    ),
    st.lists(middle_events, max_size=12),
    terminal_events,
)

# The render options each surface's route stores with the job.
RENDER: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "openai.chat": st.fixed_dictionaries(
        {
            "id": st.just("chatcmpl-s1"),
            "created": st.just(1_700_000_000),
            "model": ident,
            "include_usage": st.booleans(),
        }
    ),
    "openai.completions": st.fixed_dictionaries(
        {
            "id": st.just("cmpl-s1"),
            "created": st.just(1_700_000_000),
            "model": ident,
            "include_usage": st.booleans(),
        }
    ),
    "anthropic.messages": st.fixed_dictionaries({"id": st.just("msg_s1"), "model": ident}),
    "gemini": st.fixed_dictionaries({"id": st.just("s1"), "model": ident}),
    "simple": st.fixed_dictionaries(
        {"id": st.just("s1"), "model": ident, "created_at": st.floats(1_699_999_990, 1_700_000_010)}
    ),
    "openai.responses": st.fixed_dictionaries(
        {
            "id": st.just("resp_s1"),
            "created_at": st.just(1_700_000_000),
            "model": ident,
            "background": st.booleans(),
            "logprobs": st.booleans(),
            "encrypted_reasoning": st.booleans(),
            "echo": st.just({"instructions": None, "tools": []}),
        }
    ),
    "task": st.just({}),
}
RENDER_EXAMPLE: dict[str, dict[str, Any]] = {
    "openai.chat": {"id": "chatcmpl-s1", "created": 1, "model": "m", "include_usage": True},
    "openai.completions": {"id": "cmpl-s1", "created": 1, "model": "m", "include_usage": True},
    "anthropic.messages": {"id": "msg_s1", "model": "m"},
    "gemini": {"id": "s1", "model": "m"},
    "simple": {"id": "s1", "model": "m", "created_at": 1_700_000_000.0},
    "openai.responses": {"id": "resp_s1", "created_at": 1, "model": "m", "background": True},
    "task": {},
}
FORMATS = sorted(registry())

Entries = list[tuple[str, ev.Event]]


def _entries(events: list[ev.Event]) -> Entries:
    return [(f"{1_700_000_000_000 + i}-0", event) for i, event in enumerate(events)]


def _render(
    surface: str, render: dict[str, Any], entries: Entries, start: int = 0
) -> list[list[Frame]]:
    """Frames for entries[start:] from a fresh renderer that was first fed entries[:start]
    with their frames discarded, as a resumed tail rebuilds a stateful renderer."""
    renderer = registry()[surface].renderer(render)
    for entry_id, event in entries[:start]:
        renderer.frames(entry_id, event)
    return [renderer.frames(entry_id, event) for entry_id, event in entries[start:]]


def _assert_valid_wire(surface: str, entries: Entries, rendered: list[list[Frame]]) -> None:
    fmt = registry()[surface]
    wire = b""
    expected: list[tuple[str, str, str | None]] = []
    for (entry_id, _), frames in zip(entries, rendered, strict=True):
        assert isinstance(frames, list)
        for frame in frames:
            assert isinstance(frame, Frame)
            assert isinstance(frame.data, bytes)
            assert frame.event is None or isinstance(frame.event, str)
            if not (surface.startswith("openai") and frame.data == b"[DONE]"):
                orjson.loads(frame.data)
        # What the tail writes, read back by an SSE client.
        wire += encode_frames(entry_id, frames, with_ids=fmt.sse_ids)
        ids: list[str | None] = (
            [f.id or i for f, i in zip(frames, frame_ids(entry_id, frames), strict=True)]
            if fmt.sse_ids
            else [None] * len(frames)
        )
        expected += [
            (f.data.decode(), f.event or "message", i) for f, i in zip(frames, ids, strict=True)
        ]
    assert [(e.data, e.event, e.id) for e in _decode([wire])] == expected


def test_every_format_has_render_options() -> None:
    assert set(RENDER) == set(FORMATS) == set(RENDER_EXAMPLE)


@pytest.mark.parametrize("surface", FORMATS)
@settings(BASE, max_examples=80)
@given(data=st.data(), events=event_sequences)
def test_rendering_is_deterministic_valid_and_resumable(
    surface: str, data: st.DataObject, events: list[ev.Event]
) -> None:
    render = data.draw(RENDER[surface], label="render")
    for event in events:
        assert ev.decode(ev.encode(event)) == event  # what the tail reads back from Redis
    entries = _entries(events)
    rendered = _render(surface, render, entries)
    assert _render(surface, render, entries) == rendered
    _assert_valid_wire(surface, entries, rendered)
    stateful = registry()[surface].stateful
    for k in range(len(entries)):
        assert _render(surface, render, entries, start=k) == rendered[k:]
        if not stateful:
            # A stateless format's resumed tail replays nothing into its fresh renderer.
            assert _render(surface, render, entries[k:]) == rendered[k:]


# --- pinned: tool-call arguments nested deeper than orjson writes (255 levels) -------------


@pytest.mark.parametrize("surface", FORMATS)
@pytest.mark.parametrize(
    "arguments",
    ["[" * 300 + "]" * 300, '{"a":' * 300 + "1" + "}" * 300],
    ids=["deep-array", "deep-object"],
)
def test_rendering_deeply_nested_tool_arguments(surface: str, arguments: str) -> None:
    events: list[ev.Event] = [
        ev.ToolCallDelta(index=0, id="call_1", name="f", arguments=arguments),
        ev.TextDelta(text="x"),
        ev.Finish(reason="tool_calls"),
    ]
    entries = _entries(events)
    _assert_valid_wire(surface, entries, _render(surface, RENDER_EXAMPLE[surface], entries))


# === 4. Provider event mappers =============================================================

# What EventParser.parse catches and skips (worker/providers/http.py); UpstreamError ends
# the stream; anything else escapes the provider.
PARSER_SKIPS: tuple[type[Exception], ...] = (
    orjson.JSONDecodeError,
    TypeError,
    ValueError,
    AttributeError,
    KeyError,
)
MAPPED_TYPES = (ev.TextDelta, ev.ReasoningDelta, ev.ToolCallDelta, ev.Usage)

Handler = Callable[[dict[str, Any]], list[Any]]
Session = tuple[Callable[[str], Handler], Callable[[], ev.Finish | None]]


def _openai_session() -> Session:
    mapper = _ChunkMapper()

    def finish() -> ev.Finish | None:
        if mapper.finish_reason is None:
            return None
        return ev.Finish(reason=mapper.finish_reason, usage=mapper.usage)

    return (lambda _name: mapper.map), finish


def _anthropic_session() -> Session:
    mapper = _EventMapper()
    return (
        lambda name: functools.partial(mapper.map, name=name),
        lambda: mapper.finish if mapper.stopped else None,
    )


def _gemini_session() -> Session:
    mapper = _ResponseMapper()
    return (lambda _name: mapper.map), (lambda: mapper.finish() if mapper.done else None)


counts = st.integers(0, 100_000)
openai_call = st.fixed_dictionaries(
    {"index": st.integers(0, 3)},
    optional={
        "id": ident,
        "type": st.just("function"),
        "function": st.fixed_dictionaries(
            {}, optional={"name": ident, "arguments": tool_arguments}
        ),
    },
)
openai_chunks = st.fixed_dictionaries(
    {
        "id": st.just("chatcmpl-1"),
        "object": st.just("chat.completion.chunk"),
        "created": st.just(1_700_000_000),
        "model": st.just("gpt"),
        "choices": st.lists(
            st.fixed_dictionaries(
                {
                    "index": st.sampled_from([0, 0, 1]),
                    "delta": st.fixed_dictionaries(
                        {},
                        optional={
                            "role": st.just("assistant"),
                            "content": st.none() | text,
                            "reasoning_content": text,
                            "reasoning": text,
                            "tool_calls": st.lists(openai_call, max_size=2),
                        },
                    ),
                    "finish_reason": st.none()
                    | st.sampled_from(["stop", "length", "tool_calls", "function_call", "x"]),
                }
            ),
            max_size=2,
        ),
    },
    optional={
        "usage": st.none()
        | st.fixed_dictionaries(
            {"prompt_tokens": counts, "completion_tokens": counts, "total_tokens": counts}
        ),
        "error": st.fixed_dictionaries({"message": text, "type": text}),
    },
)

anthropic_usage = st.fixed_dictionaries(
    {},
    optional={
        "input_tokens": counts,
        "output_tokens": counts,
        "cache_creation_input_tokens": st.none() | counts,
        "cache_read_input_tokens": st.none() | counts,
    },
)
block_index = st.integers(0, 4)
anthropic_events = st.one_of(
    st.fixed_dictionaries(
        {
            "type": st.just("message_start"),
            "message": st.fixed_dictionaries(
                {
                    "id": st.just("msg_1"),
                    "type": st.just("message"),
                    "role": st.just("assistant"),
                    "content": st.just([]),
                    "model": st.just("claude"),
                    "usage": anthropic_usage,
                }
            ),
        }
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("content_block_start"),
            "index": block_index,
            "content_block": st.one_of(
                st.fixed_dictionaries({"type": st.just("text"), "text": text}),
                st.fixed_dictionaries(
                    {"type": st.just("thinking"), "thinking": text, "signature": st.just("")}
                ),
                st.fixed_dictionaries(
                    {"type": st.just("tool_use"), "id": ident, "name": ident, "input": st.just({})}
                ),
                st.fixed_dictionaries({"type": st.just("redacted_thinking"), "data": text}),
            ),
        }
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("content_block_delta"),
            "index": block_index,
            "delta": st.one_of(
                st.fixed_dictionaries({"type": st.just("text_delta"), "text": text}),
                st.fixed_dictionaries({"type": st.just("thinking_delta"), "thinking": text}),
                st.fixed_dictionaries({"type": st.just("signature_delta"), "signature": text}),
                st.fixed_dictionaries(
                    {"type": st.just("input_json_delta"), "partial_json": tool_arguments}
                ),
            ),
        }
    ),
    st.fixed_dictionaries({"type": st.just("content_block_stop"), "index": block_index}),
    st.fixed_dictionaries(
        {
            "type": st.just("message_delta"),
            "delta": st.fixed_dictionaries(
                {
                    "stop_reason": st.none()
                    | st.sampled_from(["end_turn", "max_tokens", "tool_use", "refusal", "x"]),
                    "stop_sequence": st.none(),
                }
            ),
            "usage": anthropic_usage,
        }
    ),
    st.sampled_from([{"type": "message_stop"}, {"type": "ping"}]),
    st.fixed_dictionaries(
        {
            "type": st.just("error"),
            "error": st.fixed_dictionaries(
                {
                    "type": st.sampled_from(["overloaded_error", "invalid_request_error", "x"]),
                    "message": text,
                }
            ),
        }
    ),
)

gemini_parts = st.one_of(
    st.fixed_dictionaries({"text": text}, optional={"thought": st.booleans()}),
    st.fixed_dictionaries(
        {
            "functionCall": st.fixed_dictionaries(
                {"name": ident}, optional={"args": wire_objects, "id": ident}
            )
        }
    ),
    st.fixed_dictionaries({"thoughtSignature": text}),
)
gemini_responses = st.one_of(
    st.fixed_dictionaries(
        {
            "candidates": st.lists(
                st.fixed_dictionaries(
                    {
                        "content": st.fixed_dictionaries(
                            {"role": st.just("model"), "parts": st.lists(gemini_parts, max_size=3)}
                        )
                    },
                    optional={
                        "finishReason": st.sampled_from(["STOP", "MAX_TOKENS", "SAFETY", "X"]),
                        "index": st.sampled_from([0, 0, 1]),
                    },
                ),
                max_size=2,
            )
        },
        optional={
            "usageMetadata": st.fixed_dictionaries(
                {},
                optional={
                    "promptTokenCount": counts,
                    "candidatesTokenCount": counts,
                    "thoughtsTokenCount": counts,
                    "totalTokenCount": counts,
                },
            ),
            "modelVersion": st.just("gemini"),
            "responseId": st.just("r1"),
            "promptFeedback": st.fixed_dictionaries(
                {"blockReason": st.sampled_from(["SAFETY", "OTHER", ""])}
            ),
        },
    ),
    st.fixed_dictionaries(
        {
            "error": st.fixed_dictionaries(
                {
                    "code": st.sampled_from([400, 429, 500, 503]),
                    "message": text,
                    "status": st.sampled_from(["INVALID_ARGUMENT", "UNAVAILABLE"]),
                }
            )
        }
    ),
)

PROVIDERS: dict[str, tuple[Callable[[], Session], st.SearchStrategy[dict[str, Any]]]] = {
    "openai": (_openai_session, openai_chunks),
    "anthropic": (_anthropic_session, anthropic_events),
    "gemini": (_gemini_session, gemini_responses),
}
EVENT_NAMES = ["message", "error", "ping", "content_block_delta", "message_stop"]


@st.composite
def provider_event(
    draw: st.DrawFn, realistic: st.SearchStrategy[dict[str, Any]]
) -> tuple[str, dict[str, Any]]:
    """(SSE event name, parsed data): a realistic event, a mutated one, or any object."""
    kind = draw(st.sampled_from(["realistic", "mutated", "mutated", "arbitrary"]))
    if kind == "arbitrary":
        chunk = draw(wire_objects)
    else:
        chunk = draw(realistic)
        if kind == "mutated":
            chunk = _mutate(draw, chunk, wire_values, wire_strings)
    chunk = orjson.loads(orjson.dumps(chunk))  # exactly what EventParser hands the handler
    own_name = chunk.get("type") if isinstance(chunk.get("type"), str) else "message"
    name = draw(st.one_of(st.just(own_name), st.sampled_from(EVENT_NAMES)))
    return name, chunk


def _check_mapped(out: Any) -> None:
    assert isinstance(out, list)
    for event in out:
        assert isinstance(event, MAPPED_TYPES), event
        # The worker's next step is appending it to the stream.
        assert ev.decode(ev.encode(event)) == event


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
@settings(BASE, max_examples=80)
@given(data=st.data())
def test_provider_mappers_fail_only_in_handled_ways(provider: str, data: st.DataObject) -> None:
    session, realistic = PROVIDERS[provider]
    handler_for, finish = session()
    for name, chunk in data.draw(st.lists(provider_event(realistic), min_size=1, max_size=8)):
        try:
            out = handler_for(name)(chunk)
        except UpstreamError:
            return  # the provider ends the stream with it
        except PARSER_SKIPS:
            continue  # EventParser logs and skips the event
        _check_mapped(out)
    terminal = finish()
    if terminal is not None:
        assert ev.decode(ev.encode(terminal)) == terminal


raw_sse_data = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        ["[DONE]", "null", "1", "[]", '"x"', "{", "", "{}", '{"error": null}', "1e400", "[1,2]"]
    ),
    wire_values.map(lambda v: orjson.dumps(v).decode()),
)


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
@settings(BASE, max_examples=60)
@given(data=st.data())
def test_event_parser_raises_only_upstream_errors(provider: str, data: st.DataObject) -> None:
    session, realistic = PROVIDERS[provider]
    handler_for, _ = session()
    parser = EventParser()
    events = st.one_of(
        provider_event(realistic).map(
            lambda named: ServerSentEvent(data=orjson.dumps(named[1]).decode(), event=named[0])
        ),
        st.builds(ServerSentEvent, data=raw_sse_data, event=st.sampled_from(EVENT_NAMES)),
    )
    # Up to 30 events, so that more than MAX_MALFORMED_EVENTS (20) bad ones can arrive.
    for sse in data.draw(st.lists(events, max_size=30)):
        try:
            out = parser.parse(sse, handler_for(sse.event))
        except UpstreamError:
            return
        _check_mapped(out)


# --- pinned: bugs these properties found ----------------------------------------------------

DEEP = "[" * 1010 + "]" * 1010  # orjson parses up to 1024 levels; str() recurses per level


@pytest.mark.parametrize(
    ("provider", "name", "payload"),
    [
        ("openai", "message", '{"error": @}'.replace("@", DEEP)),
        ("openai", "message", '{"error": {"message": @}}'.replace("@", DEEP)),
        ("anthropic", "error", '{"type": "error", "error": @}'.replace("@", DEEP)),
        ("anthropic", "error", '{"type": "error", "error": {"message": @}}'.replace("@", DEEP)),
        (
            "anthropic",
            "content_block_start",
            '{"type": "content_block_start", "index": 0, '
            '"content_block": {"type": "text", "text": @}}'.replace("@", DEEP),
        ),
        ("gemini", "message", '{"error": @}'.replace("@", DEEP)),
        ("gemini", "message", '{"error": {"message": @}}'.replace("@", DEEP)),
    ],
    ids=[
        *("openai-error", "openai-error-message", "anthropic-error", "anthropic-error-message"),
        *("anthropic-text-block", "gemini-error", "gemini-error-message"),
    ],
)
def test_event_parser_deeply_nested_payloads(provider: str, name: str, payload: str) -> None:
    handler_for, _ = PROVIDERS[provider][0]()
    try:
        out = EventParser().parse(ServerSentEvent(data=payload, event=name), handler_for(name))
    except UpstreamError:
        return
    _check_mapped(out)


@pytest.mark.parametrize(
    ("provider", "payloads"),
    [
        (
            "openai",
            [
                '{"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],'
                ' "usage": {"prompt_tokens": 1e30, "completion_tokens": 1}}'
            ],
        ),
        (
            "openai",
            [
                '{"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 1e30}]},'
                ' "finish_reason": "tool_calls"}]}'
            ],
        ),
        (
            "anthropic",
            [
                '{"type": "message_start", "message": {"usage": {"input_tokens": 1e30}}}',
                '{"type": "message_stop"}',
            ],
        ),
        (
            "anthropic",
            [
                '{"type": "message_start", "message": {"usage": '
                '{"input_tokens": 18446744073709551615, "cache_read_input_tokens": 1}}}',
                '{"type": "message_stop"}',
            ],
        ),
        (
            "gemini",
            [
                '{"candidates": [{"content": {"parts": []}, "finishReason": "STOP"}],'
                ' "usageMetadata": {"promptTokenCount": 1e30}}'
            ],
        ),
    ],
    ids=[
        *("openai-usage-1e30", "openai-tool-index-1e30", "anthropic-usage-1e30"),
        *("anthropic-usage-sum-over-u64", "gemini-usage-1e30"),
    ],
)
def test_provider_events_stay_storable(provider: str, payloads: list[str]) -> None:
    """Mapped events and the stream's finish must be writable by ev.encode (orjson, 64-bit
    integers), or the upstream event must be refused as malformed."""
    handler_for, finish = PROVIDERS[provider][0]()
    parser = EventParser()
    for payload in payloads:
        name = orjson.loads(payload).get("type", "message")
        _check_mapped(parser.parse(ServerSentEvent(data=payload, event=name), handler_for(name)))
    terminal = finish()
    if terminal is not None:
        assert ev.decode(ev.encode(terminal)) == terminal
