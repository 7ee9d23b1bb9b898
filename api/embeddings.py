"""Embeddings, made by the API itself (no queue): the demo's deterministic vectors, and the
calls to OpenAI-compatible and Gemini embedding upstreams, answered in OpenAI's shape."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import sys
from array import array
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import httpx
import orjson

from api.upstream import malformed as upstream_malformed
from api.upstream import post_json
from shared.errors import InvalidRequest, UpstreamError
from shared.model_table import ModelEntry

MAX_INPUTS = 2048
MAX_TOKEN_ID = 2**32 - 1
DEMO_DIMENSIONS = 256
# The most values (inputs times dimensions) the demo writes for one request, and past how
# many it writes them off the event loop.
MAX_DEMO_VALUES = 2**20
DEMO_INLINE_VALUES = 2**16
OPENAI_BASE_URL = "https://api.openai.com/v1"
GEMINI_BASE_URL = "https://generativelanguage.googleapis.com/v1beta"

EncodingFormat = Literal["float", "base64"]
Inputs = list[str] | list[list[int]]
Vector = list[float] | str  # floats, or base64 of little-endian float32


@dataclass
class EmbeddingsCall:
    """What the client asked for, checked: the model's name as the client gave it, the
    input as sent (forwarded as is to an OpenAI-compatible upstream) and as a list, the
    OpenAI options the client set (`sent`, by name) and the fields OpenAI's request has
    that Spool does not model (`extra`, for an OpenAI-compatible upstream only)."""

    model: str
    raw_input: Any
    inputs: Inputs
    encoding_format: EncodingFormat
    dimensions: int | None
    sent: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens(self) -> bool:
        """Whether the input is token ids rather than text."""
        return bool(self.inputs) and isinstance(self.inputs[0], list)


@dataclass
class Embeddings:
    vectors: list[Vector]
    prompt_tokens: int


def input_list(value: str | list[str] | list[int] | list[list[int]]) -> Inputs:
    """The input as a list of texts or of token arrays (one token array is one input)."""
    if isinstance(value, str):
        return [value]
    if value and all(isinstance(v, int) for v in value):
        return [cast(list[int], value)]
    return cast(Inputs, value)


def check_inputs(inputs: Inputs, max_chars: int) -> None:
    """OpenAI's limits on embedding input, and the deployment's on strings: a 400 naming
    the input that breaks one."""
    if not inputs:
        raise InvalidRequest("input must not be empty")
    if len(inputs) > MAX_INPUTS:
        raise InvalidRequest(f"input has {len(inputs)} items; at most {MAX_INPUTS} are allowed")
    for i, item in enumerate(inputs):
        if not item:
            kind = "an empty string" if isinstance(item, str) else "an empty token array"
            raise InvalidRequest(f"input[{i}] is {kind}")
        if len(item) > max_chars:
            raise InvalidRequest(
                f"input[{i}] is {len(item)} long; at most {max_chars} are allowed "
                "(max_string_chars)"
            )
        if isinstance(item, list) and not all(0 <= t <= MAX_TOKEN_ID for t in item):
            raise InvalidRequest(f"input[{i}] holds a token id outside 0..{MAX_TOKEN_ID}")


def estimate_tokens(inputs: Inputs) -> int:
    """Input tokens when no upstream counted them: a token array's length, or about one
    token per 4 characters of text."""
    return sum(len(i) if isinstance(i, list) else max(1, -(-len(i) // 4)) for i in inputs)


# -- vectors ------------------------------------------------------------------------------


def _little_endian(values: array[Any]) -> array[Any]:
    if sys.byteorder == "big":
        values = array(values.typecode, values)
        values.byteswap()
    return values


def to_base64(values: list[float]) -> str:
    return base64.b64encode(_little_endian(array("f", values)).tobytes()).decode()


def from_base64(text: str) -> list[float]:
    raw = base64.b64decode(text, validate=True)
    if len(raw) % 4:
        raise ValueError("not a whole number of float32 values")
    values = _little_endian(array("f", raw))
    return values.tolist()


def encoded(values: list[float], fmt: EncodingFormat) -> Vector:
    return to_base64(values) if fmt == "base64" else values


def _upstream_encoded(values: list[Any], fmt: EncodingFormat) -> Vector:
    """An upstream's list of floats in the client's format (checked when re-encoded)."""
    try:
        return encoded(values, fmt)
    except (TypeError, OverflowError):
        raise malformed("an embedding holds something other than numbers") from None


def demo_vector(item: str | list[int], dimensions: int) -> list[float]:
    """A unit-length vector for the input, the same for the same input: float32 values
    from a SHA-256-seeded stream (a shorter vector is a prefix of a longer one's, before
    each is scaled to unit length)."""
    seed = hashlib.sha256(orjson.dumps(item)).digest()
    raw = _little_endian(array("i", hashlib.shake_256(seed).digest(4 * dimensions)))
    norm = math.sqrt(math.fsum(x * x for x in raw)) or 1.0
    return array("f", [x / norm for x in raw]).tolist()


def _demo(call: EmbeddingsCall, dimensions: int) -> list[Vector]:
    return [encoded(demo_vector(item, dimensions), call.encoding_format) for item in call.inputs]


async def demo_embeddings(call: EmbeddingsCall, entry: ModelEntry) -> Embeddings:
    dimensions = call.dimensions or entry.dimensions or DEMO_DIMENSIONS
    values = dimensions * len(call.inputs)
    if values > MAX_DEMO_VALUES:
        raise InvalidRequest(
            f"the demo model writes at most {MAX_DEMO_VALUES} values per request "
            f"(inputs times dimensions); this one asks for {values}"
        )
    if values <= DEMO_INLINE_VALUES:
        vectors = _demo(call, dimensions)
    else:
        vectors = await asyncio.to_thread(_demo, call, dimensions)
    return Embeddings(vectors, estimate_tokens(call.inputs))


# -- upstreams ----------------------------------------------------------------------------


def malformed(what: str) -> UpstreamError:
    return upstream_malformed("embeddings", what)


def _usage(value: Any, call: EmbeddingsCall) -> int:
    return value if isinstance(value, int) and value >= 0 else estimate_tokens(call.inputs)


def _convert(vector: Any, fmt: EncodingFormat) -> Vector:
    """An upstream's vector in the format the client asked for, whichever it came in."""
    if isinstance(vector, str):
        if fmt == "base64":
            return vector
        try:
            return from_base64(vector)
        except ValueError:
            raise malformed("an embedding is not base64 float32") from None
    if isinstance(vector, list):
        return _upstream_encoded(vector, fmt)
    raise malformed("an embedding is neither a list nor base64")


async def openai_embeddings(
    http: httpx.AsyncClient, call: EmbeddingsCall, entry: ModelEntry
) -> Embeddings:
    """An OpenAI-compatible upstream's `/embeddings`: the client's request as it came
    (fields Spool does not know included), with the upstream's model name."""
    url = (entry.base_url or OPENAI_BASE_URL).rstrip("/") + "/embeddings"
    body = {**call.extra, **call.sent, "model": entry.model or call.model, "input": call.raw_input}
    key = entry.api_key()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    data = await post_json(http, url, body, headers, entry, "embeddings")
    items = data.get("data")
    if not isinstance(items, list) or len(items) != len(call.inputs):
        raise malformed(f"expected {len(call.inputs)} embeddings in data")
    ordered: dict[int, Any] = {}
    for position, item in enumerate(items):
        index = item.get("index", position) if isinstance(item, dict) else None
        if not isinstance(index, int) or not 0 <= index < len(items) or index in ordered:
            raise malformed("the embeddings' indexes are not 0..n-1")
        ordered[index] = item.get("embedding")
    usage = data.get("usage")
    tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    vectors = [_convert(ordered[i], call.encoding_format) for i in range(len(items))]
    return Embeddings(vectors, _usage(tokens, call))


async def gemini_embeddings(
    http: httpx.AsyncClient, call: EmbeddingsCall, entry: ModelEntry
) -> Embeddings:
    """Gemini's `batchEmbedContents`: one request per text."""
    if call.tokens:
        raise InvalidRequest(
            f"the gemini provider behind model {call.model!r} takes text input, not token ids"
        )
    model = (entry.model or call.model).removeprefix("models/")
    url = f"{(entry.base_url or GEMINI_BASE_URL).rstrip('/')}/models/{model}:batchEmbedContents"
    size = {"outputDimensionality": call.dimensions} if call.dimensions else {}
    body = {
        "requests": [
            {"model": f"models/{model}", "content": {"parts": [{"text": text}]}, **size}
            for text in call.inputs
        ]
    }
    key = entry.api_key()
    data = await post_json(
        http, url, body, {"x-goog-api-key": key} if key else {}, entry, "embeddings"
    )
    items = data.get("embeddings")
    if not isinstance(items, list) or len(items) != len(call.inputs):
        raise malformed(f"expected {len(call.inputs)} embeddings")
    values: list[list[Any]] = []
    for item in items:
        vector = item.get("values") if isinstance(item, dict) else None
        if not isinstance(vector, list):
            raise malformed("an embedding has no values")
        values.append(vector)
    usage = data.get("usageMetadata")
    tokens = usage.get("promptTokenCount") if isinstance(usage, dict) else None
    vectors = [_upstream_encoded(v, call.encoding_format) for v in values]
    return Embeddings(vectors, _usage(tokens, call))


async def embed(http: httpx.AsyncClient, call: EmbeddingsCall, entry: ModelEntry) -> Embeddings:
    """The vectors for the call from the entry's provider."""
    if entry.provider == "demo":
        return await demo_embeddings(call, entry)
    if entry.provider == "openai":
        return await openai_embeddings(http, call, entry)
    if entry.provider == "gemini":
        return await gemini_embeddings(http, call, entry)
    raise InvalidRequest(f"model {call.model!r} has no embeddings")


def response_body(call: EmbeddingsCall, result: Embeddings) -> dict[str, Any]:
    """OpenAI's embeddings answer, under the model name the client gave."""
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": vector}
            for i, vector in enumerate(result.vectors)
        ],
        "model": call.model,
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
    }
