"""McpTools against a real MCP server (tests/mcp_servers.py), over streamable HTTP and
over stdio: listing, calls, tool errors, timeouts, cut output, cancellation, the outbound
guard, unreachable servers, reconnection and closing."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import psutil  # type: ignore[import-untyped]
import pytest

from shared.errors import UpstreamError
from shared.netguard import Allowlist
from shared.settings import McpServer
from tests.mcp_servers import ROOT, free_port, http_server, stdio_command
from worker.mcp import McpTools

LOCAL = Allowlist.parse("127.0.0.0/8")
TOOLS = {"add", "echo", "fail", "slow", "nap", "huge"}

Make = Callable[..., McpTools]


@pytest.fixture(scope="module")
def http_url() -> Iterator[str]:
    with http_server() as url:
        yield url


def server_config(transport: str, http_url: str, **options: Any) -> McpServer:
    if transport == "http":
        return McpServer(url=http_url, **options)
    return McpServer(command=stdio_command(), env={"PYTHONPATH": str(ROOT)}, **options)


@pytest.fixture(params=["http", "stdio"])
async def make(request: pytest.FixtureRequest, http_url: str) -> AsyncIterator[Make]:
    """McpTools with one server, `s`, over the transport of the test's parameter."""
    made: list[McpTools] = []

    def build(**options: Any) -> McpTools:
        tools = McpTools({"s": server_config(request.param, http_url, **options)}, LOCAL)
        made.append(tools)
        return tools

    yield build
    for tools in made:
        await tools.aclose()


def server_processes() -> list[psutil.Process]:
    """The stdio test servers this test process started itself (not those of the worker
    processes other suites run)."""
    return [
        child
        for child in psutil.Process().children(recursive=False)
        if "--stdio" in child.cmdline() and child.status() != psutil.STATUS_ZOMBIE
    ]


async def test_lists_the_tools_a_model_can_call(make: Make) -> None:
    mcp = make()
    tools = await mcp.list_tools("s")
    assert {t.name for t in tools} == TOOLS  # `dotted.name` is not a name a model can call
    add = next(t for t in tools if t.name == "add")
    assert add.server == "s"
    assert add.description == "Add two integers."
    assert add.schema["type"] == "object"
    assert set(add.schema["properties"]) == {"a", "b"}
    assert await mcp.list_tools("s") is tools  # cached for a while


async def test_allowed_tools_narrow_listing_and_calls(make: Make) -> None:
    mcp = make(allowed_tools=["add", "echo", "absent"])
    assert {t.name for t in await mcp.list_tools("s")} == {"add", "echo"}
    refused = await mcp.call("s", "fail", {"message": "no"})
    assert refused.is_error
    assert refused.output == "the tool fail is not allowed on the MCP server s"
    assert (await mcp.call("s", "add", {"a": 1, "b": 1})).output == "2"


async def test_calls_answer_with_text(make: Make) -> None:
    mcp = make()
    added = await mcp.call("s", "add", {"a": 2, "b": 40})
    assert (added.output, added.is_error) == ("42", False)
    echoed = await mcp.call("s", "echo", {"text": "héllo, wörld"})
    assert (echoed.output, echoed.is_error) == ("héllo, wörld", False)


async def test_a_tool_error_is_an_error_outcome(make: Make) -> None:
    mcp = make()
    failed = await mcp.call("s", "fail", {"message": "the disk is on fire"})
    assert failed.is_error
    assert "the disk is on fire" in failed.output
    bad_arguments = await mcp.call("s", "add", {"a": "not a number"})
    assert bad_arguments.is_error
    unknown = await mcp.call("s", "no_such_tool", {})
    assert unknown.is_error


async def test_a_slow_tool_times_out_within_timeout_s(make: Make) -> None:
    mcp = make(timeout_s=0.5)
    await mcp.list_tools("s")  # connected (a stdio server takes a moment to start)
    started = time.monotonic()
    outcome = await mcp.call("s", "slow", {"seconds": 10})
    assert time.monotonic() - started < 1.5
    assert outcome.is_error
    assert outcome.output == "the tool slow on s did not answer within 0.5s"
    # The connection outlives the abandoned call.
    assert (await mcp.call("s", "add", {"a": 1, "b": 2})).output == "3"


async def test_huge_output_is_cut_with_a_note(make: Make) -> None:
    mcp = make(max_output_bytes=1000)
    outcome = await mcp.call("s", "huge", {"size": 50_000})
    assert not outcome.is_error
    assert len(outcome.output.encode()) <= 1000
    assert outcome.output.startswith("x" * 900)
    assert outcome.output.endswith("[output cut to 1000 bytes; it was 50000 bytes]")
    small = await mcp.call("s", "huge", {"size": 900})
    assert small.output == "x" * 900


async def test_cancelling_a_call_returns_promptly(make: Make) -> None:
    mcp = make()
    await mcp.list_tools("s")
    call = asyncio.create_task(mcp.call("s", "slow", {"seconds": 30}))
    await asyncio.sleep(0.3)
    started = time.monotonic()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert time.monotonic() - started < 1.0
    assert (await mcp.call("s", "add", {"a": 5, "b": 5})).output == "10"


async def test_concurrent_calls_share_the_connection(make: Make) -> None:
    mcp = make()
    await mcp.list_tools("s")
    started = time.monotonic()
    slow = [mcp.call("s", "slow", {"seconds": 0.5}) for _ in range(5)]
    adds = [mcp.call("s", "add", {"a": i, "b": i}) for i in range(20)]
    outcomes = await asyncio.gather(*slow, *adds)
    assert time.monotonic() - started < 2.5  # the slow calls ran side by side
    assert [o.output for o in outcomes[:5]] == ["slept"] * 5
    assert [o.output for o in outcomes[5:]] == [str(2 * i) for i in range(20)]
    assert not any(o.is_error for o in outcomes)


async def test_aclose_stops_the_connection(make: Make) -> None:
    mcp = make()
    assert (await mcp.call("s", "add", {"a": 1, "b": 1})).output == "2"
    await mcp.aclose()
    assert not server_processes()
    after = await mcp.call("s", "add", {"a": 1, "b": 1})
    assert after.is_error
    with pytest.raises(UpstreamError):
        await mcp.list_tools("s")


async def test_a_stdio_server_that_dies_is_started_again(http_url: str) -> None:
    mcp = McpTools({"s": server_config("stdio", http_url)}, LOCAL)
    try:
        assert (await mcp.call("s", "add", {"a": 1, "b": 1})).output == "2"
        [process] = server_processes()
        process.kill()
        process.wait(5)
        lost = await mcp.call("s", "add", {"a": 1, "b": 1})
        assert lost.is_error
        assert (await mcp.call("s", "add", {"a": 2, "b": 2})).output == "4"
        assert len(server_processes()) == 1
    finally:
        await mcp.aclose()


async def test_the_outbound_guard_refuses_internal_urls(http_url: str) -> None:
    servers = {
        "private": McpServer(url="http://10.255.255.1:8080/mcp"),
        "loopback": McpServer(url=http_url),  # live, but not allow-listed here
    }
    mcp = McpTools(servers, Allowlist.parse(""))
    try:
        for name in servers:
            started = time.monotonic()
            with pytest.raises(UpstreamError) as raised:
                await mcp.list_tools(name)
            assert time.monotonic() - started < 1.0  # refused before connecting
            assert raised.value.code == "mcp_unavailable"
            assert not raised.value.retryable
            assert "SPOOL_UPSTREAM_ALLOWLIST" in raised.value.message
            outcome = await mcp.call(name, "add", {"a": 1, "b": 1})
            assert outcome.is_error
            assert "SPOOL_UPSTREAM_ALLOWLIST" in outcome.output
    finally:
        await mcp.aclose()


async def test_an_unreachable_server(http_url: str) -> None:
    servers = {
        "closed-port": McpServer(url=f"http://127.0.0.1:{free_port()}/mcp"),
        "no-program": McpServer(command=[os.path.join(str(ROOT), "no-such-mcp-server")]),
    }
    mcp = McpTools(servers, LOCAL)
    try:
        for name in servers:
            with pytest.raises(UpstreamError) as raised:
                await mcp.list_tools(name)
            assert raised.value.code == "mcp_unavailable"
            assert raised.value.retryable
            assert name in raised.value.message
            outcome = await mcp.call(name, "add", {"a": 1, "b": 1})
            assert outcome.is_error
            assert name in outcome.output
    finally:
        await mcp.aclose()


async def test_an_unknown_server(http_url: str) -> None:
    mcp = McpTools({}, LOCAL)
    with pytest.raises(UpstreamError) as raised:
        await mcp.list_tools("nowhere")
    assert raised.value.code == "mcp_unavailable"
    assert (await mcp.call("nowhere", "add", {})).is_error
    await mcp.aclose()
