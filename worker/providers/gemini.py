"""Google Gemini (the Gemini API, generativelanguage.googleapis.com): `streamGenerateContent`
with `alt=sse`, over httpx.

Each SSE `data:` is one whole `GenerateContentResponse`; there is no `[DONE]`. Function calls
arrive whole (name and an `args` object), so each becomes a single `ToolCallDelta`. A part's
`thoughtSignature` is kept (on the call, on the thought, or as a signature-only reasoning
delta) and sent back on the same kind of part in later turns. Media goes inline, except
Files API URIs, which Gemini reads by reference.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import Any

import httpx
import orjson

from shared import events as ev
from shared.errors import UpstreamError
from shared.model_table import ModelEntry
from shared.request import ContentPart, GenerationRequest, Message, Tool, parse_json_object
from worker.providers.http import EventParser, incomplete, stream_events
from worker.providers.media import DEFAULT_MAX_MEDIA_BYTES, MediaFetcher

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com/v1beta"
FILES_API_HOST = "https://generativelanguage.googleapis.com/"
FINISH_REASONS: dict[str, ev.FinishReason] = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
}
TOOL_MODES = {"auto": "AUTO", "required": "ANY", "none": "NONE"}
RETRYABLE_ERROR_CODES = frozenset({429, 500, 503, 504})


def _tool_name(message: Message, call_names: dict[str, str]) -> str:
    if message.name:
        return message.name
    if message.tool_call_id:
        return call_names.get(message.tool_call_id, "")
    return ""


def is_file_uri(url: str, base_url: str) -> bool:
    """Whether a URL names a file in the Gemini Files API, which Gemini reads by reference."""
    return url.startswith((base_url.rstrip("/") + "/", FILES_API_HOST))


def _media(part: ContentPart) -> dict[str, Any]:
    """A media part: inline bytes, or a Files API URI (every other URL was fetched inline)."""
    if part.data is not None:
        return {"inlineData": {"mimeType": part.media_type, "data": part.data}}
    file: dict[str, Any] = {"fileUri": part.url}
    if part.media_type is not None:
        file = {"mimeType": part.media_type, **file}
    return {"fileData": file}


def _parts(message: Message) -> list[dict[str, Any]]:
    if message.parts is None:
        return [{"text": message.content}] if message.content else []
    return [
        ({"text": p.text} if p.type == "text" else _media(p))
        for p in message.parts
        if p.type != "text" or p.text
    ]


def _tool_result(message: Message, call_names: dict[str, str]) -> list[dict[str, Any]]:
    """A tool's result: its functionResponse, then any media it carries as parts of their own."""
    response = parse_json_object(message.content) if message.content.strip() else None
    if message.is_error:
        # Gemini's convention for a failed call: the output under "error".
        response = {"error": response if response is not None else message.content}
    elif response is None:
        response = {"result": message.content}
    name = _tool_name(message, call_names)
    parts = [{"functionResponse": {"name": name, "response": response}}]
    if message.parts is not None:
        parts += [_media(p) for p in message.media]
    return parts


def _model_turn(message: Message, call_names: dict[str, str]) -> list[dict[str, Any]]:
    """An assistant turn: its signed thoughts, text and function calls. A signature without
    thought text (Gemini signs the first part of a turn) goes back on the turn's first part."""
    parts: list[dict[str, Any]] = []
    loose: list[str] = []
    for thought in message.thinking or []:
        if thought.redacted is not None:
            continue  # another provider's opaque reasoning
        if thought.text:
            part: dict[str, Any] = {"text": thought.text, "thought": True}
            if thought.signature:
                part["thoughtSignature"] = thought.signature
            parts.append(part)
        elif thought.signature:
            loose.append(thought.signature)
    parts += _parts(message)
    for call in message.tool_calls or []:
        call_names[call.id] = call.name
        args = parse_json_object(call.arguments)
        part = {"functionCall": {"name": call.name, "args": args or {}}}
        if call.signature:
            part["thoughtSignature"] = call.signature
        parts.append(part)
    if loose:
        unsigned = [p for p in parts if "thoughtSignature" not in p]
        for part, signature in zip(unsigned, loose, strict=False):
            part["thoughtSignature"] = signature
    return parts


def _contents(request: GenerationRequest) -> list[dict[str, Any]]:
    contents: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}  # tool call id -> function name, for tool results
    for message in request.turns:
        if message.role == "tool":
            role = "user"
            parts = _tool_result(message, call_names)
        elif message.role == "assistant":
            role = "model"
            parts = _model_turn(message, call_names)
        else:
            role = "user"
            parts = _parts(message)
        if not parts:
            continue
        # Gemini wants alternating turns: parallel tool results, or a tool result followed
        # by a user message, become one "user" turn.
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    return contents


def _tool_config(choice: str) -> dict[str, Any]:
    mode = TOOL_MODES.get(choice)
    if mode is not None:
        return {"functionCallingConfig": {"mode": mode}}
    return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [choice]}}


def _declaration(tool: Tool) -> dict[str, Any]:
    out: dict[str, Any] = {"name": tool.name}
    if tool.description:
        out["description"] = tool.description
    out["parametersJsonSchema"] = tool.parameters
    return out


def _thinking_config(request: GenerationRequest) -> dict[str, Any] | None:
    """Thoughts shown, and how much to think: a level (Gemini 3) when an effort was asked
    for, else a token budget. Gemini takes only one of the two."""
    thinking: dict[str, Any] = {}
    if request.reasoning:
        thinking["includeThoughts"] = True
    if request.reasoning_effort is not None:
        thinking["thinkingLevel"] = request.reasoning_effort
    elif request.reasoning and request.reasoning_budget is not None:
        thinking["thinkingBudget"] = request.reasoning_budget
    return thinking or None


def _response_format(request: GenerationRequest, config: dict[str, Any]) -> None:
    fmt = request.response_format
    if fmt is None or fmt.type == "text":
        return
    config["responseMimeType"] = "application/json"
    if fmt.type == "json_schema" and fmt.json_schema is not None:
        config["responseJsonSchema"] = fmt.json_schema


# Canonical fields and their names in generationConfig, sent when set.
CONFIG_FIELDS = (
    ("max_tokens", "maxOutputTokens"),
    ("temperature", "temperature"),
    ("top_p", "topP"),
    ("top_k", "topK"),
    ("seed", "seed"),
    ("presence_penalty", "presencePenalty"),
    ("frequency_penalty", "frequencyPenalty"),
    ("logprobs", "responseLogprobs"),
    ("top_logprobs", "logprobs"),
)


def _generation_config(request: GenerationRequest) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for field, name in CONFIG_FIELDS:
        value = getattr(request, field)
        if value is not None:
            config[name] = value
    if request.stop:
        config["stopSequences"] = request.stop
    if request.response_format is not None:
        _response_format(request, config)
    thinking = _thinking_config(request)
    if thinking is not None:
        config["thinkingConfig"] = thinking
    return config


def _merged(theirs: dict[str, Any], mine: dict[str, Any]) -> dict[str, Any]:
    """Two objects deep-merged; where both set a key, `mine` wins."""
    out = dict(theirs)
    for key, value in mine.items():
        other = out.get(key)
        out[key] = (
            _merged(other, value) if isinstance(other, dict) and isinstance(value, dict) else value
        )
    return out


def merge_extra(body: dict[str, Any], extra: dict[str, Any]) -> None:
    """The client's fields Spool does not model, into the body: objects Spool also writes
    (generationConfig, toolConfig) deep-merged, tools appended, Spool's own keys kept."""
    for key, value in extra.items():
        mine = body.get(key)
        if mine is None:
            body[key] = value
        elif isinstance(mine, dict) and isinstance(value, dict):
            body[key] = _merged(value, mine)
        elif key == "tools" and isinstance(mine, list) and isinstance(value, list):
            body[key] = [*mine, *value]


def build_body(request: GenerationRequest) -> dict[str, Any]:
    """The upstream request. Media URLs left in `request` go by reference: they are Files
    API URIs (the provider fetches every other URL inline first)."""
    body: dict[str, Any] = {"contents": _contents(request)}
    system = request.system_prompt
    if system:
        body["systemInstruction"] = {"parts": [{"text": system}]}
    if request.tools:
        body["tools"] = [{"functionDeclarations": [_declaration(t) for t in request.tools]}]
        if request.tool_choice is not None:
            body["toolConfig"] = _tool_config(request.tool_choice)
    if request.safety_settings is not None:
        body["safetySettings"] = request.safety_settings
    config = _generation_config(request)
    if config:
        body["generationConfig"] = config
    if request.extra and request.protocol == "gemini":
        merge_extra(body, request.extra)
    return body


def _error(error: Any) -> UpstreamError:
    if not isinstance(error, dict):
        return UpstreamError(f"upstream error mid-stream: {error}", code="upstream_error")
    status: int | None
    try:
        status = int(error["code"])
    except (KeyError, TypeError, ValueError):
        status = None
    message = error.get("message") or error.get("status") or "unknown error"
    return UpstreamError(
        f"upstream error mid-stream: {message}",
        upstream_status=status,
        retryable=status in RETRYABLE_ERROR_CODES,
        code="upstream_error",
    )


class _ResponseMapper:
    """Turns parsed `GenerateContentResponse` objects into canonical events."""

    def __init__(self) -> None:
        self.finish_reason: str | None = None
        self.blocked = False
        self.usage: ev.Usage | None = None
        self.calls = 0

    @property
    def done(self) -> bool:
        return self.finish_reason is not None or self.blocked

    def finish(self) -> ev.Finish:
        if self.finish_reason is None:  # the prompt itself was blocked
            reason: ev.FinishReason = "content_filter"
        else:
            reason = FINISH_REASONS.get(self.finish_reason, "stop")
            if reason == "stop" and self.calls:
                reason = "tool_calls"
        return ev.Finish(reason=reason, usage=self.usage)

    def map(self, response: dict[str, Any]) -> list[ev.Event]:
        if response.get("error"):
            raise _error(response["error"])
        usage = response.get("usageMetadata")
        if isinstance(usage, dict):
            self.usage = _usage(usage)
        feedback = response.get("promptFeedback")
        if isinstance(feedback, dict) and feedback.get("blockReason"):
            self.blocked = True
        out: list[ev.Event] = []
        for candidate in response.get("candidates") or []:
            if not isinstance(candidate, dict) or candidate.get("index", 0) != 0:
                continue
            content = candidate.get("content")
            parts = content.get("parts") if isinstance(content, dict) else None
            start = len(out)
            for part in parts or []:
                if isinstance(part, dict):
                    out.extend(self._part(part))
            if "logprobsResult" in candidate:
                _attach_logprobs(out, start, candidate["logprobsResult"])
            reason = candidate.get("finishReason")
            if isinstance(reason, str) and reason:
                self.finish_reason = reason
        return out

    def _part(self, part: dict[str, Any]) -> list[ev.Event]:
        text = part.get("text")
        if len(part) == 1 and type(text) is str:  # plain text: the common case
            return [ev.TextDelta(text=text)] if text else []
        signature = part.get("thoughtSignature")
        if not isinstance(signature, str) or not signature:
            signature = None
        call = part.get("functionCall")
        if isinstance(call, dict):
            index = self.calls
            self.calls += 1
            args = call.get("args")
            return [
                ev.ToolCallDelta(
                    index=index,
                    id=str(call.get("id") or f"call_{index}"),
                    name=str(call.get("name") or ""),
                    arguments=orjson.dumps(args if isinstance(args, dict) else {}).decode(),
                    signature=signature,
                )
            ]
        if not isinstance(text, str):
            text = ""
        if part.get("thought") is True:
            return [ev.ReasoningDelta(text=text, signature=signature)] if text or signature else []
        out: list[ev.Event] = []
        if signature is not None:
            # Gemini signs a turn's first part; the signature is kept as reasoning.
            out.append(ev.ReasoningDelta(text="", signature=signature))
        if text:
            out.append(ev.text_delta(text))
        return out


def _usage(usage: dict[str, Any]) -> ev.Usage:
    """Gemini's usage: thoughts are output alongside the candidates; cached content is part
    of the prompt."""
    thoughts = usage.get("thoughtsTokenCount")
    cached = usage.get("cachedContentTokenCount")
    return ev.Usage(
        input_tokens=int(usage.get("promptTokenCount") or 0),
        output_tokens=int(usage.get("candidatesTokenCount") or 0) + int(thoughts or 0),
        cached_input_tokens=None if cached is None else int(cached),
        reasoning_tokens=None if thoughts is None else int(thoughts),
    )


def _logprob(candidate: Any) -> dict[str, Any]:
    token = str(candidate.get("token") or "")
    return {
        "token": token,
        "logprob": float(candidate.get("logProbability") or 0.0),
        "bytes": list(token.encode()),
    }


def logprobs_entries(result: Any) -> list[dict[str, Any]]:
    """Gemini's `logprobsResult` in OpenAI's form: one entry per chosen token, with the
    top candidates at its step."""
    if not isinstance(result, dict):
        return []
    chosen = result.get("chosenCandidates") or []
    tops = result.get("topCandidates") or []
    entries = []
    for step, candidate in enumerate(chosen):
        if not isinstance(candidate, dict):
            continue
        entry = _logprob(candidate)
        top = (
            tops[step].get("candidates")
            if step < len(tops) and isinstance(tops[step], dict)
            else []
        )
        entry["top_logprobs"] = [_logprob(c) for c in top or [] if isinstance(c, dict)]
        entries.append(entry)
    return entries


def _attach_logprobs(out: list[ev.Event], start: int, result: Any) -> None:
    """The chunk's log probabilities, on its first text delta."""
    for i in range(start, len(out)):
        event = out[i]
        if isinstance(event, ev.TextDelta):
            entries = logprobs_entries(result)
            if entries:
                out[i] = ev.TextDelta(text=event.text, logprobs=entries)
            return


class GeminiProvider:
    name = "gemini"

    def __init__(self, client: httpx.AsyncClient, media: MediaFetcher | None = None) -> None:
        self.client = client
        self.media = media or MediaFetcher(client, DEFAULT_MAX_MEDIA_BYTES)

    async def stream(
        self, request: GenerationRequest, entry: ModelEntry
    ) -> AsyncGenerator[ev.Event, None]:
        model = (entry.model or request.model).removeprefix("models/")
        base = (entry.base_url or DEFAULT_BASE_URL).rstrip("/")
        url = f"{base}/models/{model}:streamGenerateContent"
        headers = {}
        key = entry.api_key()
        if key:
            headers["x-goog-api-key"] = key
        request = await self.media.inline(
            request, needs=lambda p: not is_file_uri(p.url or "", base)
        )
        mapper = _ResponseMapper()
        parser = EventParser()
        events = stream_events(
            self.client,
            url,
            body=build_body(request),
            headers=headers,
            entry=entry,
            params={"alt": "sse"},
        )
        async with contextlib.aclosing(events) as reads:
            async for read in reads:
                for sse in read:
                    for event in parser.parse(sse, mapper.map):
                        yield event
        if not mapper.done:
            raise incomplete()
        yield mapper.finish()
