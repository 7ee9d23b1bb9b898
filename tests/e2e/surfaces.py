"""Each surface driven by its official SDK (or plain HTTP for the simple API), reduced to
what every surface can say: text, tool calls, finish reason and usage."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import anthropic
import httpx
import openai
from google import genai
from google.genai import types as gtypes

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
    "required": ["city"],
}


@dataclass
class Outcome:
    text: str = ""
    tool_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    finish: str | None = None  # canonical: stop, length, tool_calls, …
    input_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None
    reasoning: str = ""


def openai_chat(url: str, model: str, prompt: str, *, tools: bool = False) -> Outcome:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="spool", max_retries=0)
    extra: dict[str, Any] = {}
    if tools:
        extra["tools"] = [
            {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_SCHEMA}}
        ]
    with client.chat.completions.stream(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        stream_options={"include_usage": True},
        **extra,
    ) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert final.usage is not None
    return Outcome(
        text=choice.message.content or "",
        tool_calls=[
            (c.function.name, json.loads(c.function.arguments))
            for c in choice.message.tool_calls or []
        ],
        finish=choice.finish_reason,
        input_tokens=final.usage.prompt_tokens,
        output_tokens=final.usage.completion_tokens,
        total_tokens=final.usage.total_tokens,
    )


def openai_completions(url: str, model: str, prompt: str) -> Outcome:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="spool", max_retries=0)
    text, finish, usage = "", None, None
    for chunk in client.completions.create(
        model=model,
        prompt=prompt,
        max_tokens=1000,
        stream=True,
        stream_options={"include_usage": True},
    ):
        for choice in chunk.choices:
            text += choice.text
            finish = choice.finish_reason or finish
        usage = chunk.usage or usage
    assert usage is not None
    return Outcome(
        text=text,
        finish=finish,
        input_tokens=usage.prompt_tokens,
        output_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
    )


ANTHROPIC_FINISH = {"end_turn": "stop", "max_tokens": "length", "tool_use": "tool_calls"}


def anthropic_messages(
    url: str, model: str, prompt: str, *, tools: bool = False, thinking: bool = False
) -> Outcome:
    client = anthropic.Anthropic(base_url=url, api_key="spool", max_retries=0)
    extra: dict[str, Any] = {}
    if tools:
        extra["tools"] = [{"name": "get_weather", "input_schema": WEATHER_SCHEMA}]
    if thinking:
        extra["thinking"] = {"type": "enabled", "budget_tokens": 1024}
    with client.messages.stream(
        model=model, max_tokens=2048, messages=[{"role": "user", "content": prompt}], **extra
    ) as stream:
        for _ in stream:
            pass
        message = stream.get_final_message()
    return Outcome(
        text="".join(b.text for b in message.content if b.type == "text"),
        tool_calls=[(b.name, dict(b.input)) for b in message.content if b.type == "tool_use"],  # type: ignore[arg-type]
        reasoning="".join(b.thinking for b in message.content if b.type == "thinking"),
        finish=ANTHROPIC_FINISH.get(str(message.stop_reason), message.stop_reason),
        input_tokens=message.usage.input_tokens,
        output_tokens=message.usage.output_tokens,
        total_tokens=message.usage.input_tokens + message.usage.output_tokens,
    )


GEMINI_FINISH = {"STOP": "stop", "MAX_TOKENS": "length", "SAFETY": "content_filter"}


def gemini_client(url: str) -> genai.Client:
    return genai.Client(api_key="spool", http_options=gtypes.HttpOptions(base_url=url))


def gemini_generate(
    url: str, model: str, prompt: str, *, tools: bool = False, thinking: bool = False
) -> Outcome:
    config = gtypes.GenerateContentConfig()
    if tools:
        weather = gtypes.FunctionDeclaration(
            name="get_weather", parameters_json_schema=WEATHER_SCHEMA
        )
        config.tools = [gtypes.Tool(function_declarations=[weather])]
    if thinking:
        config.thinking_config = gtypes.ThinkingConfig(include_thoughts=True)
    out = Outcome()
    usage = None
    client = gemini_client(url)  # keep a reference: a collected client closes its connection
    for chunk in client.models.generate_content_stream(model=model, contents=prompt, config=config):
        candidate = chunk.candidates[0] if chunk.candidates else None
        if candidate is not None and candidate.content is not None:
            for part in candidate.content.parts or []:
                if part.thought:
                    out.reasoning += part.text or ""
                elif part.text:
                    out.text += part.text
                elif part.function_call is not None:
                    call = part.function_call
                    out.tool_calls.append((call.name or "", dict(call.args or {})))
        if candidate is not None and candidate.finish_reason is not None:
            out.finish = GEMINI_FINISH.get(candidate.finish_reason.value, "other")
        usage = chunk.usage_metadata or usage
    if out.finish == "stop" and out.tool_calls:
        out.finish = "tool_calls"  # Gemini says STOP after function calls
    if usage is not None:
        out.input_tokens = usage.prompt_token_count
        out.output_tokens = usage.candidates_token_count
        out.total_tokens = usage.total_token_count
    return out


def simple_chat(url: str, model: str, prompt: str) -> Outcome:
    out = Outcome()
    with httpx.stream(
        "POST", f"{url}/api/chat", json={"message": prompt, "model": model}, timeout=30
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            if "tool_name" in event:
                out.tool_calls.append((event["tool_name"], event["tool_input"]))
            elif event.get("done"):
                assert "error" not in event, event
                out.finish = event["finish_reason"]
                out.total_tokens = event["total_tokens"]
            else:
                out.text += event["token"]
    return out


def anthropic_messages_once(url: str, model: str, prompt: str, *, tools: bool = False) -> Outcome:
    client = anthropic.Anthropic(base_url=url, api_key="spool", max_retries=0)
    extra: dict[str, Any] = {}
    if tools:
        extra["tools"] = [{"name": "get_weather", "input_schema": WEATHER_SCHEMA}]
    message = client.messages.create(
        model=model, max_tokens=2048, messages=[{"role": "user", "content": prompt}], **extra
    )
    return Outcome(
        text="".join(b.text for b in message.content if b.type == "text"),
        tool_calls=[(b.name, dict(b.input)) for b in message.content if b.type == "tool_use"],  # type: ignore[arg-type]
        finish=ANTHROPIC_FINISH.get(str(message.stop_reason), message.stop_reason),
        input_tokens=message.usage.input_tokens,
        output_tokens=message.usage.output_tokens,
        total_tokens=message.usage.input_tokens + message.usage.output_tokens,
    )


def gemini_generate_once(url: str, model: str, prompt: str, *, tools: bool = False) -> Outcome:
    config = gtypes.GenerateContentConfig()
    if tools:
        weather = gtypes.FunctionDeclaration(
            name="get_weather", parameters_json_schema=WEATHER_SCHEMA
        )
        config.tools = [gtypes.Tool(function_declarations=[weather])]
    client = gemini_client(url)
    response = client.models.generate_content(model=model, contents=prompt, config=config)
    candidate = response.candidates[0]  # type: ignore[index]
    calls = [(c.name or "", dict(c.args or {})) for c in response.function_calls or []]
    finish = GEMINI_FINISH.get(candidate.finish_reason.value, "other")  # type: ignore[union-attr]
    usage = response.usage_metadata
    assert usage is not None
    return Outcome(
        text="".join(
            p.text or "" for p in candidate.content.parts or [] if p.text and not p.thought
        ),  # type: ignore[union-attr]
        tool_calls=calls,
        finish="tool_calls" if finish == "stop" and calls else finish,
        input_tokens=usage.prompt_token_count,
        output_tokens=usage.candidates_token_count,
        total_tokens=usage.total_token_count,
    )


def openai_chat_once(url: str, model: str, prompt: str, *, tools: bool = False) -> Outcome:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="spool", max_retries=0)
    extra: dict[str, Any] = {}
    if tools:
        extra["tools"] = [
            {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_SCHEMA}}
        ]
    completion = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], **extra
    )
    choice = completion.choices[0]
    assert completion.usage is not None
    return Outcome(
        text=choice.message.content or "",
        tool_calls=[
            (c.function.name, json.loads(c.function.arguments))  # type: ignore[union-attr]
            for c in choice.message.tool_calls or []
        ],
        finish=choice.finish_reason,
        input_tokens=completion.usage.prompt_tokens,
        output_tokens=completion.usage.completion_tokens,
        total_tokens=completion.usage.total_tokens,
    )
