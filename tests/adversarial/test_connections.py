"""Attacks that need no key: huge heads, bodies sent before authentication, slowloris,
and more idle connections than the replica has descriptors."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

import httpx

from tests.adversarial.conftest import DESCRIPTORS, HEADER_TIMEOUT_S, cpu_seconds
from tests.conftest import Tenancy

CPU_BOUND_S = 0.1  # what the issue allows one such request to cost the replica


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def _send_head(address: tuple[str, int], filler: int) -> tuple[int, bytes]:
    """Send a request head with a header of `filler` bytes; (bytes the replica took before
    it stopped reading, what it answered)."""
    sent = 0
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: spool\r\nX-Filler: ")
        block = b"a" * (1 << 20)
        try:
            while sent < filler:
                sock.sendall(block)
                sent += len(block)
            sock.sendall(b"\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            answer = sock.recv(4096)
        except ConnectionResetError:
            answer = b""
    return sent, answer


def test_a_100_mb_head_is_refused_while_it_is_read(hostile: Tenancy) -> None:
    api = hostile.apis[0]
    before = cpu_seconds(api.process.pid)
    sent, answer = _send_head(_address(api.url), 100 << 20)
    spent = cpu_seconds(api.process.pid) - before
    # The replica stopped reading after its limit: the rest never left the client's buffers.
    assert sent < 20 << 20
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431 ")
    assert spent < CPU_BOUND_S, f"a 100 MB head cost {spent:.3f} s of CPU"
    assert httpx.get(f"{api.url}/healthz", timeout=5).status_code == 200


def test_a_head_just_over_the_limit_gets_431_in_json(hostile: Tenancy) -> None:
    _, answer = _send_head(_address(hostile.url), 0)
    assert answer.startswith(b"HTTP/1.1 200 ")
    with socket.create_connection(_address(hostile.url), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: spool\r\nX-Filler: " + b"a" * (64 << 10))
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert b'"code":"headers_too_large"' in answer


def test_a_4_mb_body_is_not_read_before_the_route_and_the_key(hostile: Tenancy) -> None:
    api = hostile.apis[0]
    bomb = b"[" + b",".join([b"[0]"] * ((4 << 20) // 4 - 1)) + b"]"
    assert len(bomb) <= 4 << 20
    with httpx.Client(timeout=30) as client:
        for path, status in (("/nonexistent", 404), ("/v1/chat/completions", 401)):
            before = cpu_seconds(api.process.pid)
            response = client.post(
                api.url + path, content=bomb, headers={"content-type": "application/json"}
            )
            spent = cpu_seconds(api.process.pid) - before
            assert response.status_code == status, response.text
            assert spent < CPU_BOUND_S, f"a 4 MB body to {path} cost {spent:.3f} s of CPU"
            # The answer came before the body was read, and the connection is still usable.
            assert client.get(api.url + "/healthz").status_code == 200


def test_a_wrong_key_is_refused_before_the_body(hostile: Tenancy) -> None:
    response = httpx.post(
        hostile.url + "/v1/messages",
        content=b"{" * 100_000,
        headers={"x-api-key": "sk-spool-wrong", "content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 401
    assert response.json()["type"] == "error"  # Anthropic's shape on Anthropic's route


def test_a_deep_body_from_a_key_is_refused_by_its_bytes(hostile: Tenancy) -> None:
    _, secret = hostile.new_key("deep")
    body = b'{"model": "mock-instant", "messages": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    response = httpx.post(
        hostile.url + "/v1/chat/completions",
        content=body,
        headers={"authorization": f"Bearer {secret}", "content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 400
    assert "nested deeper than" in response.json()["error"]["message"]


async def _trickle(address: tuple[str, int], closed: list[float], start: float) -> None:
    """Send a request head one byte a second; note when the replica hangs up."""
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: spool\r\nX-Slow: ")
        while True:
            writer.write(b"a")
            await writer.drain()
            try:
                if await asyncio.wait_for(reader.read(1024), timeout=1.0) == b"":
                    break
            except TimeoutError:
                continue
    except (ConnectionError, OSError):
        pass
    finally:
        closed.append(time.monotonic() - start)
        writer.close()


async def test_slowloris_connections_are_closed_and_others_are_served(hostile: Tenancy) -> None:
    address = _address(hostile.url)
    closed: list[float] = []
    start = time.monotonic()
    attackers = [asyncio.create_task(_trickle(address, closed, start)) for _ in range(1000)]
    latencies: list[float] = []
    async with httpx.AsyncClient(timeout=10) as client:
        while not all(a.done() for a in attackers) and time.monotonic() - start < 30:
            asked = time.monotonic()
            assert (await client.get(hostile.url + "/healthz")).status_code == 200
            latencies.append(time.monotonic() - asked)
            await asyncio.sleep(0.25)
    await asyncio.gather(*attackers)
    assert len(closed) == 1000
    assert max(closed) < HEADER_TIMEOUT_S + 5, f"the last slow head was closed at {max(closed)}"
    # Served meanwhile. The first request races the attackers' thousand connects: when the
    # kernel's accept queue overflows, its SYN is sent again after the 1 s retransmission
    # timeout, which is the network's doing, not the replica's.
    assert max(latencies) < 2.0, f"/healthz took up to {max(latencies):.2f} s meanwhile"
    assert sorted(latencies)[len(latencies) // 2] < 0.5, "most /healthz calls were slow"


def test_more_idle_connections_than_descriptors_leave_the_replica_answering(
    hostile: Tenancy,
) -> None:
    address = _address(hostile.url)
    idle = [socket.create_connection(address, timeout=5) for _ in range(DESCRIPTORS + 76)]
    try:
        for _ in range(5):
            started = time.monotonic()
            assert httpx.get(hostile.url + "/healthz", timeout=5).status_code == 200
            assert time.monotonic() - started < 1.0
        # The oldest idle connections were let go to make room.
        idle[0].settimeout(5)
        assert idle[0].recv(1) == b""
    finally:
        for sock in idle:
            sock.close()


def test_an_oversized_pipelined_head_never_lands_inside_a_streaming_answer(
    hostile: Tenancy,
) -> None:
    _, secret = hostile.new_key("pipeliner")
    body = b'{"model": "demo-slow", "max_tokens": 20, "stream": true, "messages": [{"role": "user", "content": "hi"}]}'
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: spool\r\n"
        b"Authorization: Bearer " + secret.encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    with socket.create_connection(_address(hostile.url), timeout=10) as sock:
        sock.sendall(request)
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 ")
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nX-Filler: " + b"a" * (256 << 10))
        received = first
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                received += chunk
    # The stream was cut, but nothing foreign was written into it.
    assert b"431" not in received and b"headers_too_large" not in received
