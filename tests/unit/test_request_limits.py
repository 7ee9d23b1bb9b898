"""Unit tests for api/request_limits.py's route check: a body sent to a path no route takes
is answered by the router without being read, and the answer for each (method, path) is
remembered, within bounds on the entries and on the path's length."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import orjson
from fastapi import FastAPI
from hypothesis import given
from hypothesis import strategies as st

from api.request_limits import KNOWN_PATH_MAX_CHARS, KNOWN_ROUTES_MAX, RequestLimits
from shared.request import json_depth, json_text_too_deep
from shared.settings import Settings


def scope_for(app: FastAPI, method: str, path: str) -> dict[str, Any]:
    return {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-length", b"2"), (b"content-type", b"application/json")],
        "app": app,
    }


async def test_unknown_paths_are_answered_unread_and_remembered_within_a_bound() -> None:
    app = FastAPI()

    @app.post("/v1/things/{name}")
    async def things(name: str) -> dict[str, str]:
        return {"name": name}

    limits = RequestLimits(app, Settings())

    async def receive() -> MutableMapping[str, Any]:
        raise AssertionError("the body of a request no route takes was read")

    for i in range(KNOWN_ROUTES_MAX + 10):
        sent: list[MutableMapping[str, Any]] = []

        async def send(message: MutableMapping[str, Any], sent: list[Any] = sent) -> None:
            sent.append(message)

        await limits(scope_for(app, "POST", f"/nowhere/{i}"), receive, send)
        assert sent[0]["status"] == 404
        assert len(limits._known) <= KNOWN_ROUTES_MAX

    # The route's own paths and methods: taken, and not taken by another method.
    assert limits._route_exists(scope_for(app, "POST", "/v1/things/a"))
    assert not limits._route_exists(scope_for(app, "PUT", "/v1/things/a"))
    assert limits._known[("POST", "/v1/things/a")] is True
    assert limits._known[("PUT", "/v1/things/a")] is False
    # A long path (a hostile client's) is matched, not kept.
    long = "/v1/things/" + "x" * KNOWN_PATH_MAX_CHARS
    assert limits._route_exists(scope_for(app, "POST", long))
    assert ("POST", long) not in limits._known


JSON_VALUES = st.recursive(
    st.none() | st.integers(-(2**63), 2**63 - 1) | st.text(alphabet='ab{}[]\\"', max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=12,
)


@given(JSON_VALUES, st.integers(min_value=0, max_value=6))
def test_the_depth_check_on_bytes_agrees_with_the_parsed_value(value: object, limit: int) -> None:
    # Strings full of brackets and escapes included: only real nesting counts.
    text = orjson.dumps(value)
    assert json_text_too_deep(text, limit) == (json_depth(value, limit) > limit)
