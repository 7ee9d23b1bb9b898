"""Assembles canonical events into the final output of a generation.

The worker keeps one while it streams and stores it when the job ends; the API builds one
from the stream to answer non-streaming requests and partial `/result` reads. Each wire
format renders a transcript into its own non-streaming shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shared import events as ev
from shared.request import estimate_input_tokens


@dataclass(slots=True)
class ToolCall:
    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""
    signature: str | None = None  # Gemini's thoughtSignature of the call
    server: str | None = None  # the MCP server of a call the worker ran
    result: str | None = None  # what that server's tool returned
    is_error: bool = False

    def final_arguments(self) -> str:
        # A call that streamed no arguments still ends with valid JSON arguments.
        return self.arguments or "{}"


def merge_tool_call(calls: dict[int, ToolCall], event: ev.ToolCallDelta) -> None:
    """Fold one fragment into the call it continues (by index): id and name from the
    fragment that has them, arguments concatenated."""
    call = calls.setdefault(event.index, ToolCall(index=event.index))
    call.id = event.id or call.id
    call.name = event.name or call.name
    call.arguments += event.arguments
    call.signature = event.signature or call.signature
    call.server = event.server or call.server


@dataclass(slots=True)
class Transcript:
    model: str | None = None
    provider: str | None = None
    text: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    reasoning_signature: str | None = None
    tool_calls: dict[int, ToolCall] = field(default_factory=dict)
    # The tools each MCP server offered (`ServerTools`), by server.
    server_tools: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    logprobs: list[dict[str, Any]] | None = None  # of the text's tokens, when asked for
    usage: ev.Usage | None = None
    finish_reason: ev.FinishReason | None = None
    error: ev.Error | None = None
    # Routing: the deployment that served, the model it belongs to (when not the public
    # one), the auto-router's rule, and the attempts made (see `ev.Start`).
    deployment: str | None = None
    routed_model: str | None = None
    rule: str | None = None
    attempts: list[dict[str, Any]] | None = None
    filtered: dict[str, Any] | None = None  # a content policy's block of the output
    events: int = 0
    content_events: int = 0  # text, reasoning and tool-call deltas: a floor for output tokens
    # The prompt reached an upstream that was working on it when the run ended (cancelled,
    # timed out): its input is charged even with no output.
    prompt_sent: bool = False

    def apply(self, event: ev.Event) -> None:
        self.events += 1
        if type(event) is ev.TextDelta and event.logprobs is None:  # nearly every event
            self.content_events += 1
            self.text.append(event.text)
            return
        if isinstance(event, ev.TextDelta | ev.ReasoningDelta | ev.ToolCallDelta):
            self.content_events += 1
        match event:
            case ev.Start():
                self.model, self.provider = event.model, event.provider
                self.deployment, self.routed_model = event.deployment, event.routed_model
                self.rule, self.attempts = event.rule, event.attempts
            case ev.TextDelta():
                self.text.append(event.text)
                if event.logprobs:
                    self.logprobs = (self.logprobs or []) + event.logprobs
            case ev.ReasoningDelta():
                self.reasoning.append(event.text)
                if event.signature:
                    self.reasoning_signature = (self.reasoning_signature or "") + event.signature
            case ev.ToolCallDelta():
                merge_tool_call(self.tool_calls, event)
            case ev.ToolResult():
                call = self.tool_calls.setdefault(event.index, ToolCall(index=event.index))
                call.id, call.name, call.server = event.id, event.name, event.server
                call.arguments = event.arguments
                call.result, call.is_error = event.output, event.is_error
            case ev.ServerTools():
                self.server_tools[event.server] = event.tools
            case ev.Usage():
                self.usage = event
            case ev.Finish():
                self.finish_reason = event.reason
                self.usage = event.usage or self.usage
                self.filtered = event.filtered
            case ev.Error():
                self.error = event
                self.attempts = event.attempts or self.attempts
            case _:
                pass

    def billable_usage(self, request: dict[str, Any]) -> ev.Usage:
        """The usage to charge. A stream that ended early (cancelled, failed, lost its
        worker) often never got the provider's usage report; it is still charged, with
        an estimate: one token per streamed delta and its input by size. A stream cut
        before its first token is charged its input when its prompt reached the upstream."""
        reported = self.usage or ev.Usage()
        if reported.output_tokens or not (self.content_events or self.prompt_sent):
            return reported
        messages = (request.get("request") or {}).get("messages") or []
        characters = sum(len(str(m.get("content", ""))) for m in messages)
        estimated_input = reported.input_tokens or estimate_input_tokens(characters, len(messages))
        return ev.Usage(input_tokens=estimated_input, output_tokens=self.content_events)

    @property
    def client_calls(self) -> list[ToolCall]:
        """The calls the client is to run (not the ones the worker ran), in order."""
        calls = sorted(self.tool_calls.values(), key=lambda c: c.index)
        return [c for c in calls if c.server is None]

    @property
    def server_calls(self) -> list[ToolCall]:
        """The calls the worker ran on MCP servers, in order, with their results."""
        calls = sorted(self.tool_calls.values(), key=lambda c: c.index)
        return [c for c in calls if c.server is not None]

    @property
    def content(self) -> str:
        return "".join(self.text)

    @property
    def reasoning_content(self) -> str:
        return "".join(self.reasoning)

    @property
    def has_output(self) -> bool:
        return bool(self.text or self.reasoning or self.tool_calls)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "provider": self.provider,
            "text": self.content,
            "reasoning": self.reasoning_content,
            "reasoning_signature": self.reasoning_signature,
            "tool_calls": [
                {
                    "index": c.index,
                    "id": c.id,
                    "name": c.name,
                    "arguments": c.arguments,
                    **({"signature": c.signature} if c.signature else {}),
                    **(
                        {"server": c.server, "result": c.result, "is_error": c.is_error}
                        if c.server
                        else {}
                    ),
                }
                for c in sorted(self.tool_calls.values(), key=lambda c: c.index)
            ],
            **({"logprobs": self.logprobs} if self.logprobs else {}),
            **({"server_tools": self.server_tools} if self.server_tools else {}),
            "usage": self.usage.model_dump(exclude={"type"}, exclude_none=True)
            if self.usage
            else None,
            "finish_reason": self.finish_reason,
            "error": self.error.model_dump(exclude={"type", "attempts"}, exclude_none=True)
            if self.error
            else None,
            **({"routing": self.routing} if self.routing else {}),
            **({"filtered": self.filtered} if self.filtered else {}),
        }

    @property
    def routing(self) -> dict[str, Any] | None:
        """How the request was routed, for `/result`: None for a lone upstream."""
        if self.attempts is None and self.rule is None and self.routed_model is None:
            return None
        routing = {
            "deployment": self.deployment,
            "model": self.routed_model or self.model,
            "rule": self.rule,
            "attempts": self.attempts or [],
        }
        return {k: v for k, v in routing.items() if v is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Transcript:
        t = cls(model=data.get("model"), provider=data.get("provider"))
        if data.get("text"):
            t.text.append(data["text"])
        if data.get("reasoning"):
            t.reasoning.append(data["reasoning"])
        t.reasoning_signature = data.get("reasoning_signature")
        for call in data.get("tool_calls") or []:
            t.tool_calls[call["index"]] = ToolCall(**call)
        t.logprobs = data.get("logprobs")
        t.server_tools = data.get("server_tools") or {}
        if data.get("usage"):
            t.usage = ev.Usage(**data["usage"])
        t.finish_reason = data.get("finish_reason")
        if data.get("error"):
            t.error = ev.Error(**data["error"])
        routing = data.get("routing") or {}
        t.deployment, t.rule = routing.get("deployment"), routing.get("rule")
        t.attempts = routing.get("attempts")
        if routing.get("model") != t.model:
            t.routed_model = routing.get("model")
        t.filtered = data.get("filtered")
        return t
