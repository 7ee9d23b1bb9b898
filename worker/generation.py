"""One run of one generation job: stream the provider into the job's Redis Stream and end
it with exactly one terminal event. With MCP servers in play, the run is a tool loop: a
call the model makes to a server's tool is run here, its result goes into the stream and
back to the model, and the model goes on, until it answers or `max_tool_steps` is spent."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

from shared import events as ev
from shared import logs, tracing
from shared.errors import InvalidRequest, UpstreamError
from shared.fidelity import judge
from shared.model_table import GroupPlan, ModelEntry, Route
from shared.policy import OutputGuard, policies_for
from shared.redact import redact
from shared.request import GenerationRequest, Message, Thinking, Tool, ToolCall, parse_json_object
from shared.settings import Settings
from shared.store import JobRecord, Status, StreamStore
from shared.transcript import ToolCall as Call
from shared.transcript import merge_tool_call
from worker.appender import Appender
from worker.job_run import JobRun, Terminal
from worker.providers import Provider
from worker.routing import RouteState, classify

if TYPE_CHECKING:
    from worker.mcp import McpTools

log = logging.getLogger(__name__)


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
    """One attempt at a generation job. A job whose model is a group, has fallbacks or was
    chosen by an auto-router carries its route: before the first token, a failure moves
    to the next deployment (`worker.routing` orders them), then to the fallbacks; every
    try is listed on the stream's Start (or its Error)."""

    noun = "generation"

    def __init__(
        self,
        store: StreamStore,
        settings: Settings,
        record: JobRecord,
        attempt: str,
        providers: Mapping[str, Provider],
        appender: Appender,
        held: int = 0,
        mcp: McpTools | None = None,
        routes: RouteState | None = None,
        policy_http: httpx.AsyncClient | None = None,
    ) -> None:
        entry = ModelEntry.model_validate(record.request["entry"])
        super().__init__(
            store,
            settings,
            record,
            attempt,
            entry.provider,
            appender,
            held,
            timeout_s=settings.job_timeout_s,
            secret=entry.api_key(),
        )
        self.providers = providers
        self.provider = providers[entry.provider]
        self.entry = entry
        routed = record.request.get("route")
        self.route = Route.from_json(routed) if routed else Route.single(record.model, entry)
        self.routes = routes
        self.base_request = GenerationRequest.model_validate(record.request["request"])
        self.request = self.base_request
        self.mcp = mcp
        self.lead: list[ev.Event] = []  # written with the first event of the stream
        self.group = self.route.primary
        self.tries: list[dict[str, Any]] = []  # the attempts of a routed job, in order
        self.began = 0.0  # when the current try began (monotonic)
        self.first_token_ms: float | None = None
        # Content policies the output is checked against as it streams (see `_generate`).
        self.policy_names: list[str] = record.request.get("policies") or []
        self.policy_http = policy_http
        self.guard: OutputGuard | None = None

    async def _write(self, events: list[ev.Event]) -> None:
        if self.lead and not self.started:
            events = [*self.lead, *events]
            for event in self.lead:
                self.transcript.apply(event)
        await super()._write(events)

    def _start_event(self, input_tokens: int | None) -> ev.Start:
        start = super()._start_event(input_tokens)
        if self.route.fixed:
            return start
        # The first event is the first token: its latency steers `latency` routing.
        self.first_token_ms = ms = (time.monotonic() - self.began) * 1000
        served = self._try(outcome="ok", ms=ms)
        return start.model_copy(
            update={
                "deployment": self.entry.deployment,
                "routed_model": self.group.name if self.group.name != self.record.model else None,
                "rule": self.route.rule,
                "attempts": [*self.tries, served],
            }
        )

    def _first_event(self) -> None:
        first_token_s = time.monotonic() - self.began
        model = self.metrics.model(self.group.name)
        self.metrics.first_token.labels(model, self.provider_name).observe(first_token_s)

    async def finish(self, status: Status, terminal: Terminal) -> Status:
        ended = await super().finish(status, terminal)
        usage = self.transcript.usage  # the finish's, counted once per job
        if usage is not None:
            model = self.metrics.model(self.group.name)
            self.metrics.tokens.labels(model, "input").inc(usage.input_tokens)
            self.metrics.tokens.labels(model, "output").inc(usage.output_tokens)
        return ended

    @contextlib.contextmanager
    def _trying(self) -> Iterator[None]:
        """One upstream attempt on the current deployment: timed to its first token,
        counted by outcome, and (with tracing on) a span of its own."""
        self.began = time.monotonic()
        model, deployment = self.group.name, self.entry.deployment
        outcome = "error"
        attributes = {
            "spool.stream_id": self.stream_id,
            "spool.model": model,
            "spool.provider": self.provider_name,
            "spool.deployment": deployment,
        }
        with tracing.span("upstream.attempt", kind="client", attributes=attributes) as span:
            try:
                yield
                outcome = "ok"
            except UpstreamError as exc:
                outcome = exc.code
                self._note_error(exc)
                raise
            except asyncio.CancelledError:
                outcome = "cancelled"
                raise
            finally:
                labels = (self.metrics.model(model), self.metrics.deployment(deployment), outcome)
                self.metrics.attempts.labels(*labels).inc()
                if span is not None:
                    span.set_attribute("spool.outcome", outcome)

    def _upstream_error(self, exc: UpstreamError) -> ev.Error:
        error = super()._upstream_error(exc)
        if self.route.fixed or not self.tries or self.started:
            return error
        return error.model_copy(update={"attempts": self.tries})

    def _try(self, *, outcome: str, ms: float, exc: UpstreamError | None = None) -> dict[str, Any]:
        attempt: dict[str, Any] = {
            "deployment": self.entry.deployment,
            "model": self.group.name,
            "provider": self.entry.provider,
            "at": round(time.time() - ms / 1000, 3),
            "ms": round(ms, 1),
            "outcome": outcome,
        }
        if exc is not None:
            if exc.upstream_status is not None:
                attempt["status"] = exc.upstream_status
            attempt["message"] = redact(exc.message, [self.secret or ""])[:300]
        return attempt

    def _use(self, group: GroupPlan, deployment: ModelEntry) -> GenerationRequest | None:
        """Point this run at `deployment` of `group`: its provider, key and the request as
        it takes it (None when it cannot take it at all)."""
        self.group, self.entry = group, deployment
        self.provider = self.providers[deployment.provider]
        self.provider_name, self.secret = deployment.provider, deployment.api_key()
        logs.update(deployment=deployment.deployment, provider=deployment.provider)
        try:
            return judge(self.base_request, deployment)[0]
        except InvalidRequest as refused:
            log.info("stream %s: %s skipped: %s", self.stream_id, deployment.deployment, refused)
            return None

    async def _attempt(self) -> ev.Finish:
        if self.route.fixed:
            self.request = self.base_request
            with self._trying():
                return await self._generate()
        return await self._routed()

    async def _routed(self) -> ev.Finish:
        """One round over the route: the chosen model's deployments in their strategy's
        order, then its fallbacks', until one answers. A failure after the first token is
        final (the text would repeat); a context-window or content-policy refusal skips
        to the fallbacks for that. The round's last failure ends it (`_pump` may start
        another after a backoff)."""
        assert self.routes is not None
        route, routes = self.route, self.routes
        queue, tried = list(route.order), set[str]()
        last: UpstreamError | None = None
        soonest: float | None = None  # when a cooled-down deployment is back (s)
        while queue:
            group = route.groups[queue.pop(0)]
            if group.name in tried:
                continue
            tried.add(group.name)
            order, back = await routes.ranked(group)
            if back is not None:
                soonest = back if soonest is None else min(soonest, back)
            for deployment in order:
                request = self._use(group, deployment)
                if request is None:
                    continue
                self.request = request
                await routes.started(group, deployment, self.stream_id)
                try:
                    with self._trying():
                        finish = await self._generate()
                except UpstreamError as exc:
                    if self.started:
                        raise
                    last = exc
                    self.tries.append(
                        self._try(
                            outcome=exc.code, ms=(time.monotonic() - self.began) * 1000, exc=exc
                        )
                    )
                    kind = classify(exc)
                    reason = self._redacted(exc.message)
                    log.info(
                        "stream %s: deployment %s failed before the first token (%s: %s); "
                        "a %s failure", self.stream_id, deployment.deployment, exc.code, reason,
                        kind, extra={"code": exc.code, "reason": reason},
                    )  # fmt: skip
                    if kind == "request":
                        raise
                    if kind == "deployment":
                        await routes.failed(group, deployment, exc.retry_after)
                        continue
                    # The prompt itself is the trouble: this model's other deployments
                    # would refuse it too; its own fallbacks come first, if it has any.
                    special = (
                        route.context_window if kind == "context_window" else route.content_policy
                    )
                    queue = [n for n in special if n not in tried] or queue
                    break
                finally:
                    await routes.ended(group, deployment, self.stream_id)
                usage = finish.usage.total_tokens if finish.usage else 0
                await routes.used(group, deployment, usage)
                if self.first_token_ms is not None:
                    await routes.first_token(group, deployment, self.first_token_ms)
                return finish
        if last is None:
            raise UpstreamError(
                "no deployment of the model is available: every one is cooling down after failures",
                retryable=True,
                code="no_deployment_available",
                retry_after=soonest,
            )
        raise last

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

    async def _generate(self) -> ev.Finish:
        """The current deployment's answer, its text checked by the request's content
        policies as it streams: a block ends it with a `content_filter` finish that says
        which policy and why (the text before the block stays, and `/result` marks it)."""
        if not self.policy_names:
            return await self._answer()
        policies = policies_for(self.policy_names, self.settings.policies)
        assert self.policy_http is not None
        count = self.metrics.count_policy
        async with OutputGuard(policies, self.policy_http, count=count) as guard:
            self.guard = guard
            try:
                finish = await self._answer()
                if finish.reason == "content_filter":
                    return finish
                blocked = await guard.close()  # the last window, and checks still out
                if blocked is None:
                    return finish
                return ev.Finish(
                    reason="content_filter", usage=finish.usage, filtered=blocked.to_json()
                )
            finally:
                self.guard = None

    async def _answer(self) -> ev.Finish:
        """The current deployment's answer: one model turn, or a tool loop."""
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
        guard = self.guard
        writer = self.writer
        step: Step | None = None
        text: list[str] = []
        reasoning: list[str] = []
        signature = ""
        calls: dict[int, Call] = {}
        transcript = self.transcript
        cancelled = self.cancelled
        plain = not looping and guard is None  # a text delta needs nothing but writing
        async with contextlib.aclosing(stream) as events:
            async for event in events:
                if cancelled.raised:  # an attribute: this runs for every event
                    raise asyncio.CancelledError  # see `cancel_and_wait`
                if plain and type(event) is ev.TextDelta and writer.queued:
                    # Nearly every event: what the general path below does with it.
                    transcript.apply(event)
                    if writer.hand_one(event):
                        await writer.flush()
                    continue
                if guard is not None and type(event) is ev.TextDelta:
                    blocked = guard.feed(event.text)
                    if blocked is not None:  # not written; the upstream is closed
                        filtered = ev.Finish(reason="content_filter", filtered=blocked.to_json())
                        step = Step(filtered, text, reasoning, signature, calls)
                        break
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
                if self.started:  # nearly every event: straight to the writer
                    if writer.hand([event]):
                        await writer.flush()
                else:
                    await self._write([event])
        if step is None:
            raise UpstreamError("the provider ended without a finish", code="upstream_incomplete")
        return step
