"""OpenAI Completions (legacy): `text_completion` chunks with `choices[].text`, then
`data: [DONE]`."""

from __future__ import annotations

from typing import Any

import orjson

from api.formats import PING, Frame
from api.formats.openai_chat import DONE, OpenAIChatFormat, usage_object
from shared import events as ev
from shared.errors import SpoolError
from shared.store import JobRecord
from shared.transcript import Transcript

_CHAT = OpenAIChatFormat()  # errors look the same in both OpenAI formats


def _json(value: dict[str, Any]) -> bytes:
    return orjson.dumps(value)


def _top(entry: dict[str, Any]) -> dict[str, Any]:
    alternatives = entry.get("top_logprobs")
    if not isinstance(alternatives, list):
        return {}
    return {
        str(t["token"]): t.get("logprob")
        for t in alternatives
        if isinstance(t, dict) and "token" in t
    }


def legacy_logprobs(entries: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """Chat-style token log probabilities in the Completions API's older shape."""
    if not entries:
        return None
    return {
        "tokens": [e.get("token") for e in entries],
        "token_logprobs": [e.get("logprob") for e in entries],
        "top_logprobs": [_top(e) for e in entries],
    }


class OpenAICompletionsFormat:
    surface = "openai.completions"
    stateful = False
    sse_ids = True
    sequence_ids = False
    keepalive = PING

    def renderer(self, render: dict[str, Any]) -> _CompletionsRenderer:
        return _CompletionsRenderer(render)

    def response(self, record: JobRecord, transcript: Transcript) -> dict[str, Any]:
        render = record.render
        return {
            "id": render["id"],
            "object": "text_completion",
            "created": render["created"],
            "model": render["model"],
            "system_fingerprint": None,
            "choices": [
                {
                    "text": transcript.content,
                    "index": 0,
                    "logprobs": legacy_logprobs(transcript.logprobs),
                    "finish_reason": transcript.finish_reason,
                }
            ],
            "usage": usage_object(transcript.usage),
        }

    def error_body(self, error: SpoolError) -> dict[str, Any]:
        return _CHAT.error_body(error)


class _CompletionsRenderer:
    def __init__(self, render: dict[str, Any]) -> None:
        self.render = render

    def _chunk(self, text: str, finish: str | None, logprobs: Any = None) -> Frame:
        choice = {"text": text, "index": 0, "logprobs": logprobs, "finish_reason": finish}
        return Frame(_json({**self._base(), "choices": [choice]}))

    def _base(self) -> dict[str, Any]:
        base = {
            "id": self.render["id"],
            "object": "text_completion",
            "created": self.render["created"],
            "model": self.render["model"],
            "system_fingerprint": None,
        }
        if self.render.get("include_usage"):
            base["usage"] = None
        return base

    def frames(self, entry_id: str, event: ev.Event) -> list[Frame]:
        match event:
            case ev.TextDelta():
                if event.logprobs:
                    return [self._chunk(event.text, None, legacy_logprobs(event.logprobs))]
                return [self._chunk(event.text, None)]
            case ev.Finish():
                out = [self._chunk("", event.reason)]
                if self.render.get("include_usage"):
                    usage = {**self._base(), "choices": [], "usage": usage_object(event.usage)}
                    out.append(Frame(_json(usage)))
                return [*out, DONE]
            case ev.Error():
                return _CHAT.frames(event, self.render)
            case _:
                return []
