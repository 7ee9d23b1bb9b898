"""OpenAI's Responses API as an upstream (`POST /responses`, streamed over SSE with httpx),
for the models that are served only there."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from shared import events as ev
from shared.errors import UpstreamError
from shared.media import TEXT_DOCUMENTS
from shared.model_table import ModelEntry
from shared.redact import upstream_message
from shared.request import ContentPart, GenerationRequest, Message, ResponseFormat, ToolCall
from worker.providers.http import EventParser, incomplete, read_to_the_end, stream_events
from worker.providers.media import DEFAULT_MAX_MEDIA_BYTES, MediaFetcher

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_FILENAME = "document.pdf"  # the Responses API needs a file name with inline file data
LOGPROBS_INCLUDE = "message.output_text.logprobs"
# Sampling and control fields sent as they are when set.
PLAIN_FIELDS = ("temperature", "top_p", "top_logprobs", "user", "metadata", "service_tier")
# Why a response ended incomplete, as a finish reason; any other reason cut it short too.
INCOMPLETE_REASONS: dict[str, ev.FinishReason] = {
    "max_output_tokens": "length",
    "content_filter": "content_filter",
}
# Failures that may pass when the same request is sent again.
RETRYABLE_CODES = frozenset({"server_error", "rate_limit_exceeded"})

Item = dict[str, Any]


# --- the request ----------------------------------------------------------------------------


def _data_url(part: ContentPart) -> str:
    return f"data:{part.media_type};base64,{part.data}"


def _refused(message: str) -> UpstreamError:
    """What reaches here was judged carriable before enqueueing; should it not be, the
    stream ends with a clear error rather than a lossy request."""
    return UpstreamError(message, upstream_status=400)


def _input_text(text: str) -> Item:
    return {"type": "input_text", "text": text}


def _part(part: ContentPart) -> Item:
    """A canonical part as a Responses input content part. URL parts other than images
    were fetched inline before the body is built."""
    if part.type == "text":
        return _input_text(part.text or "")
    if part.type == "image":
        image_url = part.url or _data_url(part)
        return {"type": "input_image", "image_url": image_url, "detail": part.detail or "auto"}
    if part.type == "document" and part.media_type in TEXT_DOCUMENTS:
        return _input_text(base64.b64decode(part.data or "").decode("utf-8", errors="replace"))
    if part.type == "document":
        filename = part.name or DEFAULT_FILENAME
        return {"type": "input_file", "filename": filename, "file_data": _data_url(part)}
    raise _refused(f"the responses provider takes no {part.type} input")


def _user(message: Message) -> Item:
    content = [_part(p) for p in message.content_parts()] or [_input_text("")]
    return {"type": "message", "role": "user", "content": content}


def _function_call(call: ToolCall) -> Item:
    return {
        "type": "function_call",
        "call_id": call.id,
        "name": call.name,
        "arguments": call.arguments,
    }


def _assistant(message: Message) -> list[Item]:
    """An assistant turn: its text as an output message, then its calls. Earlier thinking
    is not sent: a reasoning item goes back only with the id and encrypted content the
    Responses API gave it, which no canonical thinking block carries."""
    items: list[Item] = []
    if message.content:
        content = [{"type": "output_text", "text": message.content}]
        items.append({"type": "message", "role": "assistant", "content": content})
    items += [_function_call(c) for c in message.tool_calls or []]
    return items


def _tool_output(message: Message) -> str | list[Item]:
    """A tool's result: its text, or (when it carries media) its parts in order. The
    Responses API has no flag for a failed call: the text says so."""
    if not message.media:
        return f"Error: {message.content}" if message.is_error else message.content
    items = [_part(p) for p in message.content_parts()]
    if message.is_error:
        first = next((i for i in items if i["type"] == "input_text"), None)
        if first is None:
            items.insert(0, _input_text("Error"))
        else:
            first["text"] = f"Error: {first['text']}"
    return items


def _input(turns: list[Message]) -> list[Item]:
    """The conversation (system messages apart) as Responses input items."""
    items: list[Item] = []
    for message in turns:
        if message.role == "user":
            items.append(_user(message))
        elif message.role == "assistant":
            items += _assistant(message)
        elif message.role == "tool":
            output = _tool_output(message)
            call_id = message.tool_call_id or ""
            items.append({"type": "function_call_output", "call_id": call_id, "output": output})
    return items


def _tool_choice(choice: str) -> str | Item:
    if choice in ("auto", "none", "required"):
        return choice
    return {"type": "function", "name": choice}


def _tools(request: GenerationRequest, body: dict[str, Any]) -> None:
    # `strict` is said outright: the Responses API makes a function strict unless told.
    body["tools"] = [
        {
            "type": "function",
            "name": t.name,
            **({"description": t.description} if t.description else {}),
            "parameters": t.parameters,
            "strict": False,
        }
        for t in request.tools
    ]
    if request.tool_choice is not None:
        body["tool_choice"] = _tool_choice(request.tool_choice)
    if request.parallel_tool_calls is not None:
        body["parallel_tool_calls"] = request.parallel_tool_calls


def _text_format(fmt: ResponseFormat) -> Item:
    if fmt.type != "json_schema":
        return {"type": fmt.type}
    out: Item = {"type": "json_schema", "name": fmt.name or "response"}
    if fmt.description is not None:
        out["description"] = fmt.description
    if fmt.json_schema is not None:
        out["schema"] = fmt.json_schema
    if fmt.strict is not None:
        out["strict"] = fmt.strict
    return out


def _reasoning(request: GenerationRequest) -> Item:
    reasoning: Item = {}
    if request.reasoning_effort is not None:
        reasoning["effort"] = request.reasoning_effort
    if request.reasoning:
        reasoning["summary"] = "auto"
    return reasoning


def build_body(request: GenerationRequest, upstream_model: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": upstream_model,
        "input": _input(request.turns),
        "stream": True,
        "store": False,  # Spool keeps its own record of the generation
    }
    if request.system_prompt:
        body["instructions"] = request.system_prompt
    if request.max_tokens is not None:
        body["max_output_tokens"] = request.max_tokens
    for name in PLAIN_FIELDS:
        value = getattr(request, name)
        if value is not None:
            body[name] = value
    if request.logprobs:
        body["include"] = [LOGPROBS_INCLUDE]
    reasoning = _reasoning(request)
    if reasoning:
        body["reasoning"] = reasoning
    if request.tools:
        _tools(request, body)
    if request.response_format is not None:
        body["text"] = {"format": _text_format(request.response_format)}
    if request.extra and request.protocol == "responses":
        for key, value in request.extra.items():
            body.setdefault(key, value)
    return body


def _needs_bytes(part: ContentPart) -> bool:
    """The Responses API takes images by URL; every other kind goes inline."""
    return part.type != "image"


# --- the stream -----------------------------------------------------------------------------


@dataclass
class _Call:
    """A function call of the response: its canonical index, and whether its arguments
    have been passed on."""

    index: int
    sent_arguments: bool = False


def _detail(usage: dict[str, Any], details: str, name: str) -> int | None:
    found = usage.get(details)
    value = found.get(name) if isinstance(found, dict) else None
    return value if isinstance(value, int) else None


def _usage(response: Any) -> ev.Usage | None:
    usage = response.get("usage") if isinstance(response, dict) else None
    if not isinstance(usage, dict):
        return None
    return ev.Usage(
        input_tokens=int(usage.get("input_tokens") or 0),
        output_tokens=int(usage.get("output_tokens") or 0),
        cached_input_tokens=_detail(usage, "input_tokens_details", "cached_tokens"),
        reasoning_tokens=_detail(usage, "output_tokens_details", "reasoning_tokens"),
    )


def _token(entry: dict[str, Any]) -> dict[str, Any]:
    token = entry["token"]
    found = entry.get("bytes")
    return {
        "token": token,
        "logprob": float(entry["logprob"]),
        "bytes": found if isinstance(found, list) else list(token.encode("utf-8")),
    }


def _logprobs(entries: Any) -> list[dict[str, Any]] | None:
    """A text delta's log probabilities in OpenAI's chat form; None when there are none
    or they are not what the Responses API sends."""
    if not isinstance(entries, list) or not entries:
        return None
    try:
        return [
            {**_token(e), "top_logprobs": [_token(t) for t in e.get("top_logprobs") or []]}
            for e in entries
        ]
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


class _EventMapper:
    """Turns parsed Responses stream events into canonical events. Events of types it
    does not know (keep-alives, annotations, built-in tools …) yield nothing."""

    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers
        self.finish_reason: ev.FinishReason | None = None
        self.usage: ev.Usage | None = None
        self.calls: list[_Call] = []
        self.calls_by_item: dict[str, _Call] = {}
        self.calls_by_output: dict[int, _Call] = {}
        self.reasoning_part: tuple[Any, ...] | None = None
        self.handlers: dict[str, Callable[[dict[str, Any]], list[ev.Event]]] = {
            "response.output_text.delta": self._text,
            "response.refusal.delta": self._refusal,
            "response.reasoning_summary_text.delta": self._reasoning,
            "response.reasoning_text.delta": self._reasoning,
            "response.output_item.added": self._item_added,
            "response.function_call_arguments.delta": self._arguments,
            "response.function_call_arguments.done": self._arguments_done,
            "response.output_item.done": self._item_done,
            "response.completed": self._completed,
            "response.incomplete": self._incomplete,
            "response.failed": self._failed,
            "error": self._error,
        }

    def map(self, event: dict[str, Any]) -> list[ev.Event]:
        handler = self.handlers.get(str(event.get("type")))
        return handler(event) if handler is not None else []

    # -- content --

    def _text(self, event: dict[str, Any]) -> list[ev.Event]:
        delta = event.get("delta")
        if not isinstance(delta, str) or not delta:
            return []
        return [ev.TextDelta(text=delta, logprobs=_logprobs(event.get("logprobs")))]

    def _refusal(self, event: dict[str, Any]) -> list[ev.Event]:
        """A refusal is the answer the client gets: it is passed on as text."""
        delta = event.get("delta")
        return [ev.text_delta(delta)] if isinstance(delta, str) and delta else []

    def _reasoning(self, event: dict[str, Any]) -> list[ev.Event]:
        delta = event.get("delta")
        if not isinstance(delta, str) or not delta:
            return []
        # Each summary part (or reasoning content part) is a paragraph of its own.
        part = (
            event.get("type"),
            event.get("item_id"),
            event.get("summary_index"),
            event.get("content_index"),
        )
        if self.reasoning_part is not None and part != self.reasoning_part:
            delta = "\n\n" + delta
        self.reasoning_part = part
        return [ev.ReasoningDelta(text=delta)]

    # -- function calls --

    def _call_of(self, item_id: Any, output_index: Any) -> _Call | None:
        found = self.calls_by_item.get(item_id) if isinstance(item_id, str) else None
        if found is None and isinstance(output_index, int):
            found = self.calls_by_output.get(output_index)
        return found

    def _new_call(self, event: dict[str, Any], item: dict[str, Any]) -> ev.ToolCallDelta:
        call = _Call(index=len(self.calls))
        self.calls.append(call)
        if isinstance(item.get("id"), str):
            self.calls_by_item[item["id"]] = call
        if isinstance(event.get("output_index"), int):
            self.calls_by_output[event["output_index"]] = call
        arguments = item.get("arguments")
        arguments = arguments if isinstance(arguments, str) else ""
        call.sent_arguments = bool(arguments)
        return ev.ToolCallDelta(
            index=call.index, id=item.get("call_id"), name=item.get("name"), arguments=arguments
        )

    def _item_added(self, event: dict[str, Any]) -> list[ev.Event]:
        item = event.get("item")
        if not isinstance(item, dict) or item.get("type") != "function_call":
            return []
        return [self._new_call(event, item)]

    def _arguments(self, event: dict[str, Any]) -> list[ev.Event]:
        call = self._call_of(event.get("item_id"), event.get("output_index"))
        if call is None:
            raise ValueError("function call arguments for a call never announced")
        delta = event.get("delta")
        if not isinstance(delta, str) or not delta:
            return []
        call.sent_arguments = True
        return [ev.ToolCallDelta(index=call.index, arguments=delta)]

    def _whole_arguments(self, call: _Call, arguments: Any) -> list[ev.Event]:
        """Arguments that came whole, never as deltas, passed on once."""
        if call.sent_arguments or not isinstance(arguments, str) or not arguments:
            return []
        call.sent_arguments = True
        return [ev.ToolCallDelta(index=call.index, arguments=arguments)]

    def _arguments_done(self, event: dict[str, Any]) -> list[ev.Event]:
        call = self._call_of(event.get("item_id"), event.get("output_index"))
        return [] if call is None else self._whole_arguments(call, event.get("arguments"))

    def _item_done(self, event: dict[str, Any]) -> list[ev.Event]:
        item = event.get("item")
        if not isinstance(item, dict) or item.get("type") != "function_call":
            return []
        call = self._call_of(item.get("id"), event.get("output_index"))
        if call is None:  # a call announced only when done
            return [self._new_call(event, item)]
        return self._whole_arguments(call, item.get("arguments"))

    # -- the end --

    def _completed(self, event: dict[str, Any]) -> list[ev.Event]:
        self.usage = _usage(event.get("response"))
        self.finish_reason = "tool_calls" if self.calls else "stop"
        return []

    def _incomplete(self, event: dict[str, Any]) -> list[ev.Event]:
        response = event.get("response")
        details = response.get("incomplete_details") if isinstance(response, dict) else None
        reason = details.get("reason") if isinstance(details, dict) else None
        self.usage = _usage(response)
        self.finish_reason = INCOMPLETE_REASONS.get(str(reason), "length")
        return []

    def _failed(self, event: dict[str, Any]) -> list[ev.Event]:
        response = event.get("response")
        raise self._failure(response.get("error") if isinstance(response, dict) else None)

    def _error(self, event: dict[str, Any]) -> list[ev.Event]:
        nested = event.get("error")
        raise self._failure(nested if isinstance(nested, dict) else event)

    def _failure(self, error: Any) -> UpstreamError:
        code = error.get("code") if isinstance(error, dict) else None
        code = code if isinstance(code, str) and code else None
        message = upstream_message(orjson.dumps({"error": error}), self.headers)
        said = f"{code}: {message}" if code else message
        return UpstreamError(
            f"upstream error mid-stream: {said}",
            retryable=code in RETRYABLE_CODES,
            code="upstream_error",
        )


class ResponsesProvider:
    name = "responses"

    def __init__(self, client: httpx.AsyncClient, media: MediaFetcher | None = None) -> None:
        self.client = client
        self.media = media or MediaFetcher(client, DEFAULT_MAX_MEDIA_BYTES)

    async def stream(
        self, request: GenerationRequest, entry: ModelEntry
    ) -> AsyncGenerator[ev.Event, None]:
        url = (entry.base_url or DEFAULT_BASE_URL).rstrip("/") + "/responses"
        headers = {}
        key = entry.api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        if request.has_media_urls:
            request = await self.media.inline(request, needs=_needs_bytes)
        body = build_body(request, entry.model or request.model)
        mapper = _EventMapper({**headers, **entry.extra_headers})
        parser = EventParser()
        events = stream_events(self.client, url, body=body, headers=headers, entry=entry)
        async with contextlib.aclosing(events) as reads:
            async for read in reads:
                for sse in read:
                    for event in parser.parse(sse, mapper.map):
                        yield event
                    if mapper.finish_reason is not None:
                        break
                if mapper.finish_reason is not None:
                    await read_to_the_end(reads)
                    break
        if mapper.finish_reason is None:
            raise incomplete()
        yield ev.Finish(reason=mapper.finish_reason, usage=mapper.usage)
