"""Errors in the shape of the API that was called, before and after a stream starts."""

from __future__ import annotations

import anthropic
import httpx
import pytest
from google.genai import errors as genai_errors

from tests.conftest import Cluster
from tests.e2e import surfaces

pytestmark = pytest.mark.e2e


def test_anthropic_errors(cluster: Cluster) -> None:
    client = anthropic.Anthropic(base_url=cluster.url, api_key="spool", max_retries=0)
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(
            model="nope", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    response = httpx.post(f"{cluster.url}/v1/messages", json={"model": "demo", "messages": []})
    assert response.status_code == 422
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == "invalid_request_error"
    # After the stream started: `event: error`, which the SDK raises.
    with pytest.raises(anthropic.APIStatusError, match=r"[Oo]verloaded"):  # noqa: SIM117
        with client.messages.stream(
            model="up-anthropic-overloaded",
            max_tokens=5,
            messages=[{"role": "user", "content": "x"}],
        ) as stream:
            for _ in stream:
                pass


def test_gemini_errors(cluster: Cluster) -> None:
    client = surfaces.gemini_client(cluster.url)
    with pytest.raises(genai_errors.ClientError) as missing:
        client.models.generate_content(model="nope", contents="x")
    assert missing.value.code == 404 and missing.value.status == "NOT_FOUND"
    response = httpx.post(
        f"{cluster.url}/v1beta/models/demo:streamGenerateContent",
        json={"contents": [{"parts": [{"text": "x"}]}]},
    )
    assert response.status_code == 400
    assert response.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert "alt=sse" in response.json()["error"]["message"]
    with pytest.raises(genai_errors.APIError) as mid_stream:
        list(client.models.generate_content_stream(model="up-gemini-error-midstream", contents="x"))
    assert "overloaded" in str(mid_stream.value)


def test_simple_api_errors(cluster: Cluster) -> None:
    response = httpx.post(f"{cluster.url}/api/chat", json={"message": "x", "model": "nope"})
    assert response.status_code == 404
    assert response.json() == {
        "error": "the model 'nope' does not exist",
        "error_code": "model_not_found",
        "done": True,
        "retry_after": None,
    }
    with httpx.stream(
        "POST", f"{cluster.url}/api/chat", json={"message": "x", "model": "mock-status-429"}
    ) as stream:
        last = [line for line in stream.iter_lines() if line.startswith("data: ")][-1]
    assert '"error_code":"upstream_error"' in last and '"retry_after":7' in last
