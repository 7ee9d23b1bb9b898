"""The MCP servers a worker runs tools on for the model, one kept connection each."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
import re
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, TextIO

import httpx2
import mcp_types as types
from mcp import Client, MCPError
from mcp.client import Transport
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from pydantic import ValidationError

from shared.errors import UpstreamError
from shared.netguard import (
    AddressRefused,
    Allowlist,
    HostUnresolvable,
    UrlRefused,
    check_host,
    check_url,
)
from shared.settings import McpServer

log = logging.getLogger(__name__)

ALLOWLIST_SETTING = "SPOOL_UPSTREAM_ALLOWLIST"
LISTING_TTL_S = 30.0  # how long a server's tool listing is reused
CONNECT_TIMEOUT_S = 15.0  # at least this long to start or reach a server
SSE_READ_TIMEOUT_S = 300.0  # at least this long between events of a server's response stream
CLOSE_TIMEOUT_S = 5.0  # for the connections to wind down in aclose()
MAX_LISTING_PAGES = 50
TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,128}")
EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}


@dataclass(frozen=True, slots=True)
class ServerTool:
    server: str
    name: str
    description: str | None
    schema: dict[str, Any]  # the tool's inputSchema


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    output: str  # the result as text, cut to the server's max_output_bytes
    is_error: bool


class LinkFailed(Exception):
    """A server could not be connected to; `refused` when the outbound guard refused it."""

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.refused = refused


class GuardedTransport(httpx2.AsyncBaseTransport):
    """Checks every request's host against the outbound guard, as resolved at the time,
    so a server's name cannot be re-pointed at an internal address after the first check."""

    def __init__(self, allowlist: Allowlist) -> None:
        self.allowlist = allowlist
        self.inner = httpx2.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        port = request.url.port or (443 if request.url.scheme == "https" else 80)
        try:
            await check_host(request.url.host, port, self.allowlist, ALLOWLIST_SETTING)
        except (AddressRefused, HostUnresolvable) as exc:
            raise httpx2.ConnectError(exc.message, request=request) from exc
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


class Link:
    """One connection to a server, owned by its own task: the SDK's contexts must be
    entered and left in one task, and callers in any task share the session."""

    def __init__(self, name: str, server: McpServer, allowlist: Allowlist) -> None:
        self.name = name
        self.server = server
        self.allowlist = allowlist
        self.client: Client | None = None
        self.failure: LinkFailed | None = None
        self.settled = asyncio.Event()  # connected, or failed to
        self.closing = asyncio.Event()
        self._gave_up = False
        self.task = asyncio.create_task(self._own(), name=f"mcp-{name}")

    @property
    def retired(self) -> bool:
        return self.closing.is_set() or self.task.done()

    def retire(self) -> None:
        """Close the connection (calls still on it fail); the next user opens a new one."""
        self.closing.set()

    async def session(self) -> Client:
        await self.settled.wait()
        if self.client is None:
            failure = self.failure or LinkFailed(f"the MCP server {self.name} is closed")
            raise LinkFailed(failure.message, refused=failure.refused)
        return self.client

    async def _own(self) -> None:
        limit = max(self.server.timeout_s, CONNECT_TIMEOUT_S)
        watchdog = asyncio.get_running_loop().call_later(limit, self._give_up)
        try:
            async with AsyncExitStack() as stack:
                client = await self._open(stack)
                watchdog.cancel()
                self.client = client
                self.settled.set()
                await self.closing.wait()
        except asyncio.CancelledError:
            if not self._gave_up:
                raise
            self._fail(LinkFailed(f"the MCP server {self.name} did not connect within {limit:g}s"))
        except LinkFailed as exc:
            self._fail(exc)
        except Exception as exc:
            self._fail(
                LinkFailed(f"the MCP server {self.name} could not be reached: {reason(exc)}")
            )
        except BaseException:  # a group carrying the cancellation
            if not self._gave_up:
                raise
            self._fail(LinkFailed(f"the MCP server {self.name} did not connect within {limit:g}s"))
        finally:
            watchdog.cancel()
            self.client = None
            self.closing.set()
            self.settled.set()

    def _give_up(self) -> None:
        if not self.settled.is_set():
            self._gave_up = True
            self.task.cancel()

    def _fail(self, failure: LinkFailed) -> None:
        if self.client is None and not self.settled.is_set():
            self.failure = failure
            log.warning("%s", failure.message)
        else:
            log.warning("the connection to the MCP server %s ended: %s", self.name, failure.message)

    async def _open(self, stack: AsyncExitStack) -> Client:
        transport: Transport
        if self.server.url is not None:
            await self._check_url(self.server.url)
            timeout = httpx2.Timeout(
                CONNECT_TIMEOUT_S, read=max(SSE_READ_TIMEOUT_S, self.server.timeout_s + 5)
            )
            http = await stack.enter_async_context(
                httpx2.AsyncClient(
                    headers=self.server.headers(),
                    timeout=timeout,
                    transport=GuardedTransport(self.allowlist),
                )
            )
            transport = streamable_http_client(self.server.url, http_client=http)
        else:
            assert self.server.command is not None
            program, *args = self.server.command
            params = StdioServerParameters(command=program, args=args, env=self.server.env)
            transport = stdio_client(params, errlog=stack.enter_context(_devnull()))
        return await stack.enter_async_context(Client(transport, cache=None))

    async def _check_url(self, url: str) -> None:
        try:
            await check_url(url, self.allowlist, ALLOWLIST_SETTING)
        except UrlRefused as exc:
            raise LinkFailed(
                f"the URL of the MCP server {self.name} {exc.reason}", refused=True
            ) from None


class McpTools:
    """The configured MCP servers (Settings.mcp_servers), as one worker process reaches
    them: one connection per server, opened on first use and again after a failure."""

    def __init__(self, servers: dict[str, McpServer], allowlist: Allowlist) -> None:
        self.servers = servers
        self.allowlist = allowlist
        self._links: dict[str, Link] = {}
        self._listings: dict[str, tuple[float, list[ServerTool]]] = {}
        self._closed = False

    async def list_tools(self, server: str) -> list[ServerTool]:
        """The server's tools that its `allowed_tools` allow and whose names a model can
        call; UpstreamError (`mcp_unavailable`) when the server cannot be reached."""
        config = self.servers.get(server)
        if config is None:
            raise UpstreamError(
                f"no MCP server named {server!r} is configured", code="mcp_unavailable"
            )
        cached = self._listings.get(server)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        listed = server_tools(server, await self._list(server, config))
        tools = [t for t in listed if _offered(t, config)]
        self._listings[server] = (time.monotonic() + LISTING_TTL_S, tools)
        return tools

    async def call(self, server: str, name: str, arguments: dict[str, Any]) -> ToolOutcome:
        """Run a tool within the server's `timeout_s`; every failure is an error outcome."""
        config = self.servers.get(server)
        if config is None:
            return ToolOutcome(f"no MCP server named {server!r} is configured", True)
        if config.allowed_tools is not None and name not in config.allowed_tools:
            return ToolOutcome(f"the tool {name} is not allowed on the MCP server {server}", True)
        link: Link | None = None
        try:
            async with asyncio.timeout(config.timeout_s):
                link = self._link(server, config)
                client = await link.session()
                result = await client.call_tool(name, arguments)
        except TimeoutError:
            message = f"the tool {name} on {server} did not answer within {config.timeout_s:g}s"
            return ToolOutcome(message, True)
        except LinkFailed as exc:
            return ToolOutcome(exc.message, True)
        except Exception as exc:
            if link is not None and _breaks_link(exc):
                link.retire()
            message = f"the call to {name} on the MCP server {server} failed: {reason(exc)}"
            return ToolOutcome(cut(message, config.max_output_bytes), True)
        return ToolOutcome(cut(render(result), config.max_output_bytes), result.is_error)

    async def aclose(self) -> None:
        """Close every connection (stdio servers are stopped)."""
        self._closed = True
        links = list(self._links.values())
        self._links.clear()
        for link in links:
            link.retire()
        tasks = [link.task for link in links]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT_S)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=CLOSE_TIMEOUT_S)

    def _link(self, server: str, config: McpServer) -> Link:
        """The server's connection, opening one when there is none or it failed."""
        if self._closed:
            raise LinkFailed(f"the MCP server {server} is closed: the worker is stopping")
        link = self._links.get(server)
        if link is None or link.retired:
            link = self._links[server] = Link(server, config, self.allowlist)
        return link

    async def _list(self, server: str, config: McpServer) -> list[types.Tool]:
        """Every tool the server lists. A kept connection that fails is replaced and
        asked once more (listing has no effects to repeat)."""
        for attempt in range(2):
            try:
                link = self._link(server, config)
            except LinkFailed as exc:
                raise UpstreamError(exc.message, code="mcp_unavailable") from None
            reused = link.settled.is_set()
            try:
                client = await link.session()
            except LinkFailed as exc:
                raise UpstreamError(
                    exc.message, code="mcp_unavailable", retryable=not exc.refused
                ) from None
            try:
                async with asyncio.timeout(config.timeout_s):
                    return await _all_tools(client)
            except TimeoutError:
                link.retire()
                message = f"the MCP server {server} did not list its tools in {config.timeout_s:g}s"
                raise UpstreamError(message, code="mcp_unavailable", retryable=True) from None
            except Exception as exc:
                link.retire()
                if attempt == 0 and reused:
                    continue
                message = f"the MCP server {server} could not list its tools: {reason(exc)}"
                raise UpstreamError(message, code="mcp_unavailable", retryable=True) from exc
        raise AssertionError("unreachable")


async def _all_tools(client: Client) -> list[types.Tool]:
    tools: list[types.Tool] = []
    cursor: str | None = None
    for _ in range(MAX_LISTING_PAGES):
        page = await client.list_tools(cursor=cursor)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if cursor is None:
            break
    return tools


def _offered(tool: ServerTool, config: McpServer) -> bool:
    return config.allowed_tools is None or tool.name in config.allowed_tools


def server_tools(server: str, tools: list[types.Tool]) -> list[ServerTool]:
    """The tools a model can be offered: names it can call, each with an object schema."""
    return [
        ServerTool(server, t.name, t.description, t.input_schema or dict(EMPTY_SCHEMA))
        for t in tools
        if TOOL_NAME.fullmatch(t.name)
    ]


def _devnull() -> TextIO:
    """Where a stdio server's stderr goes: it is not the worker's to print."""
    return open(os.devnull, "w")


def _breaks_link(exc: BaseException) -> bool:
    """Whether a failed call means the connection is unusable (rather than that the
    server rejected this one call)."""
    if isinstance(exc, MCPError):
        return exc.code == types.CONNECTION_CLOSED or "Session terminated" in exc.message
    return not isinstance(exc, ValidationError)


def reason(exc: BaseException) -> str:
    """An exception as a short phrase; a group by its first leaf."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, MCPError):
        return exc.message
    text = str(exc).strip()
    return text or type(exc).__name__


def render(result: types.CallToolResult) -> str:
    """A tool result as text: its text joined, other content described briefly, and its
    structured content as JSON when there is no text."""
    parts = [_block(block) for block in result.content]
    has_text = any(isinstance(block, types.TextContent) for block in result.content)
    if not has_text and result.structured_content is not None:
        parts.insert(0, json.dumps(result.structured_content, ensure_ascii=False))
    return "\n".join(parts)


def _block(block: types.ContentBlock) -> str:
    if isinstance(block, types.TextContent):
        return block.text
    if isinstance(block, types.ImageContent | types.AudioContent):
        return f"[{block.type}: {block.mime_type}, {_decoded_size(block.data)} bytes]"
    if isinstance(block, types.ResourceLink):
        return f"[resource link: {block.uri}]"
    resource = block.resource
    if isinstance(resource, types.TextResourceContents):
        return f"[resource: {resource.uri}]\n{resource.text}"
    mime = resource.mime_type or "binary"
    return f"[resource: {resource.uri}, {mime}, {_decoded_size(resource.blob)} bytes]"


def _decoded_size(data: str) -> int:
    try:
        return len(base64.b64decode(data, validate=False))
    except (binascii.Error, ValueError):
        return len(data) * 3 // 4


def cut(text: str, limit: int) -> str:
    """`text` in at most `limit` bytes of UTF-8, ending with a note when it was cut."""
    encoded = text.encode()
    if len(encoded) <= limit:
        return text
    note = f"\n[output cut to {limit} bytes; it was {len(encoded)} bytes]"
    keep = max(0, limit - len(note.encode()))
    return encoded[:keep].decode(errors="ignore") + note
