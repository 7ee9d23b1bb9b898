"""The Responses API's input items as canonical messages, and canonical messages back as
the items `GET /v1/responses/{id}/input_items` lists."""

from __future__ import annotations

from typing import Any

from shared.errors import InvalidRequest
from shared.media import AUDIO_FORMATS, media_part
from shared.request import ContentPart, Message, Thinking, ToolCall, message
from shared.transcript import ToolCall as Call
from shared.transcript import Transcript

# Content part types by the role that may send them.
INPUT_PARTS = frozenset({"input_text", "input_image", "input_file", "input_audio"})
OUTPUT_PARTS = frozenset({"output_text", "refusal"})
ROLES = {"user": "user", "system": "system", "developer": "system", "assistant": "assistant"}


def _str(item: dict[str, Any], name: str, what: str, *, required: bool = True) -> str | None:
    value = item.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"{what}.{name} must be a string")
    return value


def _file_part(part: dict[str, Any], what: str) -> ContentPart:
    if part.get("file_id") is not None:
        raise InvalidRequest(f"{what}: file ids are not supported: send file_data or file_url")
    name = _str(part, "filename", what, required=False)
    if part.get("file_url") is not None:
        url = _str(part, "file_url", what)
        return media_part("document", what, url=url, name=name)
    data = _str(part, "file_data", what, required=False)
    if data is None:
        raise InvalidRequest(f"{what} needs file_data (a base64 data URL) or file_url")
    return media_part("document", what, url=data, name=name)


def _image_part(part: dict[str, Any], what: str) -> ContentPart:
    if part.get("file_id") is not None:
        raise InvalidRequest(f"{what}: file ids are not supported: send image_url")
    url = _str(part, "image_url", what)
    detail = part.get("detail")
    if detail not in (None, "auto", "low", "high"):
        raise InvalidRequest(f"{what}.detail must be one of auto, low, high")
    return media_part("image", what, url=url, detail=detail)


def _audio_part(part: dict[str, Any], what: str) -> ContentPart:
    audio = part.get("input_audio")
    if not isinstance(audio, dict):
        raise InvalidRequest(f"{what} needs an input_audio object")
    media_type = AUDIO_FORMATS.get(str(audio.get("format")))
    if media_type is None:
        raise InvalidRequest(
            f"{what}: input_audio format must be one of {', '.join(AUDIO_FORMATS)}"
        )
    return media_part("audio", what, data=_str(audio, "data", what), media_type=media_type)


def _part(part: Any, role: str, what: str) -> ContentPart:
    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
        raise InvalidRequest(f"{what} must be an object with a type")
    kind = part["type"]
    allowed = OUTPUT_PARTS if role == "assistant" else INPUT_PARTS
    if kind not in allowed:
        if kind in INPUT_PARTS | OUTPUT_PARTS:
            raise InvalidRequest(f"{what}: {role} messages cannot carry {kind!r} parts")
        raise InvalidRequest(f"{what}: content parts of type {kind!r} are not supported")
    match kind:
        case "input_text" | "output_text":
            return ContentPart(type="text", text=_str(part, "text", what))
        case "refusal":
            return ContentPart(type="text", text=_str(part, "refusal", what))
        case "input_image":
            if role != "user":
                raise InvalidRequest(f"{what}: only user messages carry images")
            return _image_part(part, what)
        case "input_audio":
            return _audio_part(part, what)
        case _:
            if role != "user":
                raise InvalidRequest(f"{what}: only user messages carry files")
            return _file_part(part, what)


def _parts(content: Any, role: str, what: str) -> list[ContentPart]:
    if isinstance(content, str):
        return [ContentPart(type="text", text=content)] if content else []
    if not isinstance(content, list):
        raise InvalidRequest(f"{what}.content must be a string or a list of content parts")
    return [_part(p, role, f"{what}.content[{j}]") for j, p in enumerate(content)]


def _output_parts(output: Any, what: str) -> list[ContentPart]:
    """A function call's output: a string, or a list of input parts."""
    if isinstance(output, str):
        return [ContentPart(type="text", text=output)]
    if isinstance(output, list):
        return [_part(p, "user", f"{what}.output[{j}]") for j, p in enumerate(output)]
    raise InvalidRequest(f"{what}.output must be a string or a list of content parts")


class _Conversation:
    """Folds items into turns: function calls join the assistant turn before them, and
    reasoning items lead the assistant turn after them."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.thinking: list[Thinking] = []
        self.call_names: dict[str, str] = {}

    def _assistant(self) -> Message:
        last = self.messages[-1] if self.messages else None
        if last is None or last.role != "assistant" or self.thinking:
            last = Message(role="assistant")
            self.messages.append(last)
        if self.thinking:
            last.thinking = self.thinking
            self.thinking = []
        return last

    def add(self, item: Any, what: str) -> None:
        if isinstance(item, str):
            item = {"type": "message", "role": "user", "content": item}
        if not isinstance(item, dict):
            raise InvalidRequest(f"{what} must be an object")
        kind = item.get("type", "message" if "role" in item else None)
        match kind:
            case "message":
                self._message(item, what)
            case "function_call":
                call_id = _str(item, "call_id", what) or ""
                name = _str(item, "name", what) or ""
                arguments = _str(item, "arguments", what, required=False) or "{}"
                self.call_names[call_id] = name
                turn = self._assistant()
                call = ToolCall(id=call_id, name=name, arguments=arguments)
                turn.tool_calls = [*(turn.tool_calls or []), call]
            case "function_call_output":
                call_id = _str(item, "call_id", what) or ""
                parts = _output_parts(item.get("output"), what)
                turn = message("tool", parts, tool_call_id=call_id)
                turn.name = self.call_names.get(call_id)
                self.messages.append(turn)
            case "reasoning":
                summary = item.get("summary") or []
                if not isinstance(summary, list):
                    raise InvalidRequest(f"{what}.summary must be a list")
                text = "".join(str(s.get("text", "")) for s in summary if isinstance(s, dict))
                signature = _str(item, "encrypted_content", what, required=False)
                self.thinking.append(Thinking(text=text, signature=signature))
            case str():
                raise InvalidRequest(f"{what}: input items of type {kind!r} are not supported")
            case _:
                raise InvalidRequest(f"{what} needs a type")

    def _message(self, item: dict[str, Any], what: str) -> None:
        role = ROLES.get(str(item.get("role")))
        if role is None:
            raise InvalidRequest(f"{what}.role must be one of {', '.join(ROLES)}")
        parts = _parts(item.get("content"), role, what)
        if role == "assistant":
            turn = self._assistant()
            turn.content += "".join(p.text or "" for p in parts)
        else:
            self.messages.append(message(role, parts))


def to_messages(input_: str | list[Any], instructions: str | None) -> list[Message]:
    """A request's `instructions` and `input` as canonical messages."""
    conversation = _Conversation()
    if isinstance(input_, str):
        conversation.add(input_, "input")
    else:
        for i, item in enumerate(input_):
            conversation.add(item, f"input[{i}]")
    if conversation.thinking:
        conversation._assistant()  # reasoning at the end stays with the conversation
    messages = conversation.messages
    if instructions:
        messages.insert(0, Message(role="system", content=instructions))
    return messages


def answer(transcript: Transcript) -> list[Message]:
    """A finished response's output as the turns a follow-up continues from: the calls
    the worker ran on MCP servers with their results, then the answer with the client's
    calls. Its reasoning goes along only when the provider signed it (and can check it)."""
    if not transcript.has_output:
        return []
    thinking = None
    if transcript.reasoning_signature:
        signature = transcript.reasoning_signature
        thinking = [Thinking(text=transcript.reasoning_content, signature=signature)]
    turns: list[Message] = []
    ran = transcript.server_calls
    if ran:
        turns.append(Message(role="assistant", tool_calls=_calls(ran), thinking=thinking))
        turns += [
            Message(
                role="tool",
                content=c.result or "",
                tool_call_id=c.id,
                name=c.name,
                is_error=c.is_error or None,
            )
            for c in ran
        ]
        thinking = None
    calls = _calls(transcript.client_calls)
    if transcript.content or calls or thinking:
        turns.append(
            Message(
                role="assistant",
                content=transcript.content,
                tool_calls=calls or None,
                thinking=thinking,
            )
        )
    return turns


def _calls(calls: list[Call]) -> list[ToolCall]:
    return [
        ToolCall(id=c.id, name=c.name, arguments=c.final_arguments(), signature=c.signature)
        for c in calls
    ]


# -- canonical messages as listed input items ----------------------------------------------


def _content(m: Message) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in m.content_parts():
        if p.type == "text":
            kind = "output_text" if m.role == "assistant" else "input_text"
            out.append({"type": kind, "text": p.text or ""})
        elif p.type == "image":
            url = p.url or f"data:{p.media_type};base64,{p.data}"
            out.append({"type": "input_image", "image_url": url, "detail": p.detail or "auto"})
        elif p.type == "audio":
            audio_format = {v: k for k, v in AUDIO_FORMATS.items()}.get(p.media_type or "", "wav")
            out.append(
                {"type": "input_audio", "input_audio": {"data": p.data, "format": audio_format}}
            )
        else:
            file: dict[str, Any] = {"type": "input_file", "filename": p.name}
            if p.url:
                file["file_url"] = p.url
            else:
                file["file_data"] = f"data:{p.media_type};base64,{p.data}"
            out.append(file)
    return out


def to_items(messages: list[Message], id_prefix: str) -> list[dict[str, Any]]:
    """Canonical messages as input items, numbered in order (`<kind>_<prefix>_in<n>`: apart
    from the output items, which are `<kind>_<prefix>_<n>`)."""
    items: list[dict[str, Any]] = []

    def add(item: dict[str, Any]) -> None:
        items.append({"id": f"{item.pop('_kind')}_{id_prefix}_in{len(items)}", **item})

    for m in messages:
        if m.role == "tool":
            output: Any = m.content if m.parts is None else _content(m)
            add({"_kind": "fco", "type": "function_call_output", "call_id": m.tool_call_id,
                 "output": output, "status": "completed"})  # fmt: skip
            continue
        for t in m.thinking or []:
            add({"_kind": "rs", "type": "reasoning",
                 "summary": [{"type": "summary_text", "text": t.text}]})  # fmt: skip
        content = _content(m)
        if content or m.role != "assistant":
            add({"_kind": "msg", "type": "message", "role": m.role, "content": content,
                 "status": "completed"})  # fmt: skip
        for c in m.tool_calls or []:
            add({"_kind": "fc", "type": "function_call", "call_id": c.id, "name": c.name,
                 "arguments": c.arguments, "status": "completed"})  # fmt: skip
    return items
