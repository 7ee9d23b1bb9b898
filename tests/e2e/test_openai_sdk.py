"""The official `openai` SDK as the client, against real API and worker processes."""

from __future__ import annotations

import openai
import pytest

from tests.conftest import Cluster

pytestmark = pytest.mark.e2e


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def test_streaming_completion_through_the_sdk(cluster: Cluster) -> None:
    stream = client(cluster.url).chat.completions.create(
        model="demo-fast",
        messages=[{"role": "user", "content": "stream me something"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)  # iteration ends only at data: [DONE]
    content = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content) > 1
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finish] == ["stop"]
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None
    assert usage_chunk.usage.completion_tokens == len(content)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1


def test_non_streaming_returns_the_same_text(cluster: Cluster) -> None:
    sdk = client(cluster.url)
    messages = [{"role": "user", "content": "same prompt, same text"}]
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in sdk.chat.completions.create(model="demo-fast", messages=messages, stream=True)
        if c.choices
    )
    completion = sdk.chat.completions.create(model="demo-fast", messages=messages)
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == streamed
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens > 0


def test_max_tokens_ends_with_length(cluster: Cluster) -> None:
    completion = client(cluster.other_url).chat.completions.create(
        model="demo-fast", messages=[{"role": "user", "content": "x"}], max_tokens=3
    )
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 3


def test_sdk_streams_from_an_openai_compatible_upstream(cluster: Cluster) -> None:
    stream = client(cluster.url).chat.completions.create(
        model="mock-split-utf8", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    from tests.mock_upstream import SPLIT_TEXT

    assert text == SPLIT_TEXT
    assert "\ufffd" not in text


def test_sdk_sees_errors_in_openai_shape(cluster: Cluster) -> None:
    sdk = client(cluster.url)
    with pytest.raises(openai.NotFoundError) as not_found:
        sdk.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "x"}]
        )
    assert not_found.value.code == "model_not_found"
    with pytest.raises(openai.APIError) as mid_stream:
        list(sdk.chat.completions.create(
            model="mock-midstream-error", messages=[{"role": "user", "content": "x"}], stream=True
        ))  # fmt: skip
    assert "overloaded" in str(mid_stream.value)


def test_models_list(cluster: Cluster) -> None:
    ids = {m.id for m in client(cluster.url).models.list()}
    assert {"demo", "demo-fast", "mock-instant"} <= ids
