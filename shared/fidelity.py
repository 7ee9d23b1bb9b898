"""What each provider can carry of a request, judged before the job is queued: a field or
part the target cannot honour is a 400 naming it, or, with `drop_params` (on the model
entry or in the request), dropped and reported; fields Spool does not model go verbatim to
a provider that speaks the surface's protocol."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jsonschema import Draft202012Validator, SchemaError

from shared.errors import InvalidRequest
from shared.media import AUDIO_FORMATS, MEDIA_TYPES, TEXT_DOCUMENTS
from shared.model_table import ModelEntry
from shared.request import ContentPart, GenerationRequest, Protocol

_IMAGES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})


@dataclass(frozen=True)
class Capabilities:
    """One provider's reach: the protocol it speaks (None: none, it takes every field),
    the media types it takes per kind, and the request fields it has a place for."""

    protocol: Protocol | None
    media: dict[str, frozenset[str]]
    fields: frozenset[str] = field(default_factory=frozenset)
    tool_result_media: bool = True  # whether a tool's result may carry media


# Canonical fields that ask something of the provider, with the value that asks nothing.
OPTIONAL_FIELDS: dict[str, Any] = {
    "stop": [],
    "top_k": None,
    "presence_penalty": None,
    "frequency_penalty": None,
    "logit_bias": None,
    "logprobs": None,
    "top_logprobs": None,
    "seed": None,
    "service_tier": None,
    "metadata": None,
    "user": None,
    "parallel_tool_calls": None,
    "safety_settings": None,
    "reasoning_effort": None,
}

PROVIDERS: dict[str, Capabilities] = {
    "openai": Capabilities(
        "openai",
        {
            "image": _IMAGES,
            "audio": frozenset(AUDIO_FORMATS.values()) | {"audio/mp3"},
            "document": frozenset({"application/pdf"}) | TEXT_DOCUMENTS,
        },
        frozenset(
            {
                "stop",
                "presence_penalty",
                "frequency_penalty",
                "logit_bias",
                "logprobs",
                "top_logprobs",
                "seed",
                "service_tier",
                "metadata",
                "user",
                "parallel_tool_calls",
                "reasoning_effort",
            }
        ),
        # Chat Completions takes images in user turns only: a tool's images follow its
        # result as a user turn.
    ),
    # OpenAI's Responses API: no stop sequences, penalties, logit bias or seed.
    "responses": Capabilities(
        "responses",
        {"image": _IMAGES, "document": frozenset({"application/pdf"})},
        frozenset(
            {
                "logprobs",
                "top_logprobs",
                "service_tier",
                "metadata",
                "user",
                "parallel_tool_calls",
                "reasoning_effort",
            }
        ),
    ),
    "anthropic": Capabilities(
        "anthropic",
        {"image": _IMAGES, "document": frozenset({"application/pdf"}) | TEXT_DOCUMENTS},
        # `user` goes as metadata.user_id.
        frozenset(
            {"stop", "top_k", "service_tier", "user", "parallel_tool_calls", "reasoning_effort"}
        ),
    ),
    "gemini": Capabilities(
        "gemini",
        {
            "image": MEDIA_TYPES["image"],
            "audio": MEDIA_TYPES["audio"],
            "document": MEDIA_TYPES["document"],
        },
        frozenset(
            {
                "stop",
                "top_k",
                "presence_penalty",
                "frequency_penalty",
                "logprobs",
                "top_logprobs",
                "seed",
                "safety_settings",
                "reasoning_effort",
            }
        ),
    ),
    "demo": Capabilities(None, {k: v for k, v in MEDIA_TYPES.items()}, frozenset(OPTIONAL_FIELDS)),
}
# Values of a field that some provider has, beyond which a provider may not go.
ANTHROPIC_SERVICE_TIERS = frozenset({"auto", "standard_only"})


def check_schema(request: GenerationRequest) -> None:
    """A `json_schema` response format must carry a valid JSON Schema."""
    fmt = request.response_format
    if fmt is None or fmt.type != "json_schema":
        return
    if fmt.json_schema is None:
        raise InvalidRequest("response_format json_schema needs a schema")
    try:
        Draft202012Validator.check_schema(fmt.json_schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "the root"
        raise InvalidRequest(
            f"response_format schema is not valid JSON Schema at {where}: {exc.message}"
        ) from exc


def _media_problem(part: ContentPart, caps: Capabilities, provider: str) -> str | None:
    kinds = caps.media.get(part.type)
    if kinds is None:
        return f"{part.type} input is not supported by the {provider} provider"
    if part.media_type is not None and part.media_type not in kinds:
        return f"{part.media_type} is not a {part.type} type the {provider} provider takes"
    return None


def _unsupported(request: GenerationRequest, caps: Capabilities, provider: str) -> list[str]:
    names = []
    for name, nothing in OPTIONAL_FIELDS.items():
        if getattr(request, name) == nothing or name in caps.fields:
            continue
        if name == "parallel_tool_calls" and request.parallel_tool_calls:
            continue  # parallel calls allowed is every provider's default
        if name == "logprobs" and request.logprobs is False:
            continue
        names.append(name)
    if (
        provider == "anthropic"
        and request.service_tier is not None
        and request.service_tier not in ANTHROPIC_SERVICE_TIERS
    ):
        names.append("service_tier")
    cached = any(p.cache_control for m in request.messages for p in m.parts or []) or any(
        t.cache_control for t in request.tools
    )
    if cached and caps.protocol not in ("anthropic", None):
        names.append("cache_control")
    return names


def _names(extra: dict[str, Any]) -> list[str]:
    """The fields in `extra`, a nested config's by their path (`generationConfig.seed`)."""
    names = []
    for key, value in extra.items():
        if key.endswith("Config") and isinstance(value, dict) and value:
            names += [f"{key}.{inner}" for inner in value]
        else:
            names.append(key)
    return names


def judge(request: GenerationRequest, entry: ModelEntry) -> tuple[GenerationRequest, list[str]]:
    """The request as the entry's provider will get it, and the names of the fields that
    were dropped; a 400 naming what cannot be carried when dropping is not allowed."""
    provider = entry.provider
    caps = PROVIDERS[provider]
    check_schema(request)
    for m, message in enumerate(request.messages):
        for p, part in enumerate(message.parts or []):
            if part.type == "text":
                continue
            problem = _media_problem(part, caps, provider)
            if problem is not None:
                raise InvalidRequest(f"messages[{m}] part {p}: {problem} (model {request.model!r})")
    unsupported = _unsupported(request, caps, provider)
    foreign: list[str] = []
    if request.extra and caps.protocol != request.protocol:
        foreign = sorted(_names(request.extra))
    refused = unsupported + foreign
    if not refused:
        return request, []
    # The demo model speaks no protocol: it takes what it is sent and reports the rest.
    if not (request.drop_params or entry.drop_params or caps.protocol is None):
        names = ", ".join(refused)
        raise InvalidRequest(
            f"the {provider} provider behind model {request.model!r} cannot honour: {names}; "
            "remove them, or set drop_params to drop them"
        )
    changes: dict[str, Any] = {
        name: OPTIONAL_FIELDS[name] for name in unsupported if name in OPTIONAL_FIELDS
    }
    if "cache_control" in unsupported:
        changes["messages"] = [
            m.model_copy(
                update={"parts": [p.model_copy(update={"cache_control": None}) for p in m.parts]}
            )
            if m.parts
            else m
            for m in request.messages
        ]
        changes["tools"] = [t.model_copy(update={"cache_control": None}) for t in request.tools]
    if foreign:
        changes["extra"] = {}
    return request.model_copy(update=changes), refused
