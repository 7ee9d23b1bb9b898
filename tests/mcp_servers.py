"""A real MCP server for tests, served over streamable HTTP or stdio:
`python -m tests.mcp_servers --http PORT` (at http://127.0.0.1:PORT/mcp) or `--stdio`."""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

ROOT = Path(__file__).resolve().parent.parent


def build() -> MCPServer:
    server: MCPServer = MCPServer("spool-test-tools", log_level="WARNING")

    @server.tool()
    def add(a: int, b: int) -> str:
        """Add two integers."""
        return str(a + b)

    @server.tool()
    def echo(text: str) -> str:
        """Answer with the text given."""
        return text

    @server.tool()
    def fail(message: str) -> str:
        """Fail with the message given."""
        raise ToolError(message)

    @server.tool()
    async def slow(seconds: float) -> str:
        """Sleep, then answer "slept"."""
        await asyncio.sleep(seconds)
        return "slept"

    @server.tool()
    async def nap() -> str:
        """Sleep for a minute (a call to cancel, or to kill a worker during)."""
        await asyncio.sleep(60)
        return "rested"

    @server.tool()
    def huge(size: int) -> str:
        """Answer with `size` bytes of text."""
        return "x" * size

    @server.tool(name="dotted.name")
    def dotted() -> str:
        """A tool whose name a model cannot call (Spool skips it)."""
        return "dotted"

    return server


def stdio_command() -> list[str]:
    """The command that serves the test tools over stdio (from the project root)."""
    return [sys.executable, "-m", "tests.mcp_servers", "--stdio"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@contextmanager
def http_server(timeout_s: float = 20.0) -> Iterator[str]:
    """Serve the test tools over streamable HTTP in a subprocess on a free port; yields
    its URL once it accepts connections, and stops it after."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.mcp_servers", "--http", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + timeout_s
        while not _answers(port):
            if process.poll() is not None:
                raise RuntimeError(f"the MCP test server exited with {process.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError("the MCP test server did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--http", type=int, metavar="PORT")
    mode.add_argument("--stdio", action="store_true")
    options = parser.parse_args()
    server = build()
    if options.stdio:
        server.run("stdio")
    else:
        server.run("streamable-http", host="127.0.0.1", port=options.http)


if __name__ == "__main__":
    main()
