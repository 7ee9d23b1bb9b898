"""One run of one generation job: stream the provider into the job's Redis Stream and end
it with exactly one terminal event. With MCP servers in play, the run is a tool loop: a
call the model makes to a server's tool is run here, its result goes into the stream and
back to the model, and the model goes on, until it answers or `max_tool_steps` is spent."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from shared import events as ev
from shared.errors import UpstreamError
from shared.request import GenerationRequest, Message, Thinking, Tool, ToolCall, parse_json_object
from shared.settings import ModelEntry, Settings
from shared.store import JobRecord, StreamStore
from shared.transcript import ToolCall as Call
from shared.transcript import merge_tool_call
from worker.appender import Appender
from worker.job_run import JobRun
from worker.providers import Provider

if TYPE_CHECKING:
    from worker.mcp import McpTools


@dataclass
class Step:
    """What one model turn of a tool loop said: its finish, text, signed reasoning and
    calls (by their index in the stream)."""

    finish: ev.Finish
    text: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    signature: str = ""
    calls: dict[int, Call] = field(default_factory=dict)

    def turn(self) -> Message:
        """The turn as the model's history has it next time."""
        thinking = None
        if self.signature:
            thinking = [Thinking(text="".join(self.reasoning), signature=self.signature)]
        calls = [
            ToolCall(id=c.id, name=c.name, arguments=c.final_arguments(), signature=c.signature)
            for c in sorted(self.calls.values(), key=lambda c: c.index)
        ]
        return Message(
            role="assistant",
            content="".join(self.text),
            tool_calls=calls or None,
            thinking=thinking,
        )


def add_usage(total: ev.Usage | None, more: ev.Usage | None) -> ev.Usage | None:
    if total is None or more is None:
        return more or total
    return ev.Usage(
        input_tokens=total.input_tokens + more.input_tokens,
        output_tokens=total.output_tokens + more.output_tokens,
        cached_input_tokens=_add(total.cached_input_tokens, more.cached_input_tokens),
        reasoning_tokens=_add(total.reasoning_tokens, more.reasoning_tokens),
    )


def _add(a: int | None, b: int | None) -> int | None:
    return None if a is None and b is None else (a or 0) + (b or 0)


class GenerationRun(JobRun):
    noun = "generation"

    def __init__(
        self,
        store: StreamStore,
        settings: Settings,
        record: JobRecord,
        attempt: str,
        provider: Provider,
        appender: Appender,
        held: int = 0,
        mcp: McpTools | None = None,
    ) -> None:
        entry = ModelEntry.model_validate(record.request["entry"])
        super().__init__(
            store,
            settings,
            record,
            attempt,
            provider.name,
            appender,
            held,
            timeout_s=settings.job_timeout_s,
            secret=entry.api_key(),
        )
        self.provider = provider
        self.entry = entry
        self.request = GenerationRequest.model_validate(record.request["request"])
        self.mcp = mcp
        self.lead: list[ev.Event] = []  # written with the first event of the stream

    async def _write(self, events: list[ev.Event]) -> None:
        if self.lead and not self.started:
            events = [*self.lead, *events]
            for event in self.lead:
                self.transcript.apply(event)
        await super()._write(events)

    def _selections(self) -> dict[str, frozenset[str] | None]:
        """The MCP servers offered to the model, with the tools a request narrowed them to
        (None: all the server allows). The model entry's servers are offered whole."""
        chosen: dict[str, frozenset[str] | None] = {s: None for s in self.entry.server_tools}
        for selection in self.request.mcp:
            if selection.server not in chosen:
                allowed = selection.allowed_tools
                chosen[selection.server] = None if allowed is None else frozenset(allowed)
        return chosen

    async def _offer(self) -> dict[str, str]:
        """List the servers' tools: add them to the request as function tools, keep their
        listings to lead the stream with, and map each tool's name to its server."""
        if self.mcp is None:
            raise UpstreamError("this worker has no MCP servers", code="mcp_unavailable")
        server_of: dict[str, str] = {}
        tools: list[Tool] = []
        taken = {t.name for t in self.request.tools}  # a client's tool of the same name wins
        self.lead = []
        for server, allowed in self._selections().items():
            listed = [
                t
                for t in await self.mcp.list_tools(server)
                if (allowed is None or t.name in allowed) and t.name not in taken
            ]
            self.lead.append(
                ev.ServerTools(
                    server=server,
                    tools=[
                        {"name": t.name, "description": t.description, "input_schema": t.schema}
                        for t in listed
                    ],
                )
            )
            for t in listed:
                taken.add(t.name)
                server_of[t.name] = server
                tools.append(Tool(name=t.name, description=t.description, parameters=t.schema))
        self.request = self.request.model_copy(update={"tools": [*self.request.tools, *tools]})
        return server_of

    async def _attempt(self) -> ev.Finish:
        if not self._selections():
            return (await self._step(self.request, 0, {}, first=True)).finish
        server_of = await self._offer()
        request, offset, usage = self.request, 0, None
        for turn in range(self.entry.max_tool_steps):
            step = await self._step(request, offset, server_of, first=turn == 0)
            usage = add_usage(usage, step.finish.usage)
            ran = [c for c in step.calls.values() if c.server is not None]
            if step.finish.reason != "tool_calls" or not ran:
                return step.finish.model_copy(update={"usage": usage})
            # The calls are in the stream before they run: a worker that dies now ends
            # the stream as lost, and no re-run can call them again unseen.
            running = ev.ToolsRunning()
            self.transcript.apply(running)
            await self._write([running])
            await self.writer.flush()
            results = await asyncio.gather(*(self._run_tool(c) for c in ran))
            if len(ran) < len(step.calls):  # the client has calls of its own to answer
                return step.finish.model_copy(update={"usage": usage})
            request = request.model_copy(
                update={"messages": [*request.messages, step.turn(), *results]}
            )
            offset = max(step.calls) + 1
        # Every turn allowed called tools: stop here, cut short (finish `length`).
        return ev.Finish(reason="length", usage=usage)

    async def _run_tool(self, call: Call) -> Message:
        assert self.mcp is not None and call.server is not None
        arguments = parse_json_object(call.final_arguments())
        if arguments is None:
            output, is_error = "the arguments are not a JSON object", True
        else:
            outcome = await self.mcp.call(call.server, call.name, arguments)
            output, is_error = outcome.output, outcome.is_error
        result = ev.ToolResult(
            index=call.index,
            id=call.id,
            name=call.name,
            server=call.server,
            arguments=call.final_arguments(),
            output=output,
            is_error=is_error,
        )
        self.transcript.apply(result)
        await self._write([result])
        return Message(
            role="tool",
            content=output,
            tool_call_id=call.id,
            name=call.name,
            is_error=is_error or None,
        )

    async def _step(
        self, request: GenerationRequest, offset: int, server_of: dict[str, str], *, first: bool
    ) -> Step:
        """One model turn, its events written as they come (tool calls numbered after the
        earlier turns' and marked with their server); the finish is returned, not written.
        A turn in a tool loop (`server_of`, the offered tools' servers) also keeps what
        it said, for the model's history; a plain generation keeps nothing twice."""
        stream = self.provider.stream(request, self.entry)
        looping = bool(server_of)
        step: Step | None = None
        text: list[str] = []
        reasoning: list[str] = []
        signature = ""
        calls: dict[int, Call] = {}
        async with contextlib.aclosing(stream) as events:
            async for event in events:
                if self.cancelled.is_set():
                    raise asyncio.CancelledError  # see `cancel_and_wait`
                match event:
                    case ev.Finish():
                        step = Step(event, text, reasoning, signature, calls)
                        break
                    case ev.Usage() if not first:
                        continue  # a later turn's counts go into the finish's sum
                    case ev.TextDelta() if looping:
                        text.append(event.text)
                    case ev.ReasoningDelta() if looping:
                        reasoning.append(event.text)
                        signature += event.signature or ""
                    case ev.ToolCallDelta() if looping:
                        index = event.index + offset
                        known = calls.get(index)
                        name = event.name or (known.name if known else "")
                        server = server_of.get(name) if known is None or known.server else None
                        event = event.model_copy(update={"index": index, "server": server})
                        merge_tool_call(calls, event)
                self.transcript.apply(event)
                await self._write([event])
        if step is None:
            raise UpstreamError("the provider ended without a finish", code="upstream_incomplete")
        return step
