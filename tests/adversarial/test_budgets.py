"""Budgets and rates that hold under races across two replicas, and charges for prompts
that reached the upstream, however the stream ended."""

from __future__ import annotations

import asyncio
import time

import httpx

from tests.conftest import Tenancy


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def chat(model: str = "demo-fast", content: str = "hi", **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def usage(hostile: Tenancy, secret: str) -> dict[str, object]:
    answer: dict[str, object] = httpx.get(
        f"{hostile.url}/v1/usage", headers=bearer(secret), timeout=10
    ).json()
    return answer


async def test_100_racing_requests_on_two_replicas_stay_within_one_request(
    hostile: Tenancy,
) -> None:
    _, secret = hostile.new_key("racer", "--budget-tokens", "1000")

    async def one(client: httpx.AsyncClient, n: int) -> int:
        url = hostile.apis[n % 2].url + "/v1/chat/completions"
        answer = await client.post(url, json=chat(max_tokens=40), headers=bearer(secret))
        assert answer.status_code in (200, 402), answer.text
        if answer.status_code == 402:
            return 0
        return int(answer.json()["usage"]["total_tokens"])

    async with httpx.AsyncClient(timeout=60) as client:
        charged = await asyncio.gather(*(one(client, n) for n in range(100)))
    used = usage(hostile, secret)
    assert used["used_tokens"] == sum(charged)
    assert used["reserved_tokens"] == 0
    # One request is 40 tokens of output and a few of input; the old admission let 5,300 in.
    assert 1000 - 44 <= sum(charged) <= 1000 + 44


def test_a_request_without_max_tokens_holds_all_that_is_left(hostile: Tenancy) -> None:
    _, secret = hostile.new_key("open-ended", "--budget-tokens", "1000")
    url = f"{hostile.url}/v1/chat/completions"
    with httpx.Client(timeout=30) as client:
        with client.stream(
            "POST", url, json=chat("demo-late", stream=True), headers=bearer(secret)
        ) as running:
            assert running.status_code == 200
            # Its worst case is the whole budget: nothing else fits until it ends.
            assert client.post(url, json=chat(), headers=bearer(secret)).status_code == 402
            assert usage(hostile, secret)["reserved_tokens"] == 1000
            running.read()
        assert client.post(url, json=chat(), headers=bearer(secret)).status_code == 200


def test_max_tokens_past_the_budget_is_cut_to_what_is_left(hostile: Tenancy) -> None:
    _, secret = hostile.new_key("greedy", "--budget-tokens", "100")
    answer = httpx.post(
        f"{hostile.url}/v1/chat/completions",
        json=chat("demo-long", max_tokens=5000),
        headers=bearer(secret),
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["total_tokens"] <= 100 + body["usage"]["prompt_tokens"]
    refused = httpx.post(
        f"{hostile.url}/v1/chat/completions", json=chat(), headers=bearer(secret), timeout=30
    )
    assert refused.status_code == 402


def test_a_cancel_before_the_first_token_is_charged_its_input(hostile: Tenancy) -> None:
    _, secret = hostile.new_key("canceller")
    prompt = "word " * 8000  # about 10,000 tokens by size
    with httpx.Client(timeout=30) as client:
        created = client.send(
            client.build_request(
                "POST",
                f"{hostile.url}/v1/chat/completions",
                json=chat("demo-late", prompt, stream=True),
                headers=bearer(secret),
            ),
            stream=True,
        )
        stream_id = created.headers["x-spool-stream-id"]
        result_url = f"{hostile.url}/v1/streams/{stream_id}/result"
        deadline = time.monotonic() + 10
        while client.get(result_url, headers=bearer(secret)).json()["status"] != "running":
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.05)
        cancel = client.post(f"{hostile.url}/v1/streams/{stream_id}/cancel", headers=bearer(secret))
        assert cancel.status_code == 200
        while client.get(result_url, headers=bearer(secret)).json()["status"] != "cancelled":
            assert time.monotonic() < deadline, "the job never ended"
            time.sleep(0.05)
        created.close()
    used = usage(hostile, secret)
    assert used["used_tokens"] >= 10_000
    [model] = used["models"]  # type: ignore[misc]
    assert model["output_tokens"] == 0 and model["input_tokens"] >= 10_000


async def test_requests_per_minute_hold_in_any_minute_across_replicas(hostile: Tenancy) -> None:
    _, secret = hostile.new_key("hasty", "--rpm", "20")

    async def one(client: httpx.AsyncClient, n: int) -> int:
        url = hostile.apis[n % 2].url + "/v1/chat/completions"
        return (await client.post(url, json=chat(), headers=bearer(secret))).status_code

    async with httpx.AsyncClient(timeout=60) as client:
        statuses = await asyncio.gather(*(one(client, n) for n in range(40)))
        assert sorted(statuses) == [200] * 20 + [429] * 20
        refused = await client.post(
            hostile.url + "/v1/chat/completions", json=chat(), headers=bearer(secret)
        )
    # A sliding minute: the first request ages out a minute after it was admitted.
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 60


def test_a_refusal_for_concurrency_uses_no_request_of_the_minute(hostile: Tenancy) -> None:
    _, secret = hostile.new_key("busy", "--rpm", "3", "--concurrency", "1")
    h = bearer(secret)
    url = f"{hostile.url}/v1/chat/completions"
    with httpx.Client(timeout=30) as client:
        slow = client.send(
            client.build_request("POST", url, json=chat("demo-late", stream=True), headers=h),
            stream=True,
        )
        assert slow.status_code == 200
        for _ in range(5):
            refused = client.post(url, json=chat(), headers=h)
            assert refused.status_code == 429
            assert "jobs open" in refused.json()["error"]["message"]
        stream_id = slow.headers["x-spool-stream-id"]
        client.post(f"{hostile.url}/v1/streams/{stream_id}/cancel", headers=h)
        slow.close()
        # The two requests left of the minute are still there.
        deadline = time.monotonic() + 10
        answers = []
        while len(answers) < 2:
            answer = client.post(url, json=chat(), headers=h)
            if answer.status_code == 429 and "jobs open" in answer.text:
                assert time.monotonic() < deadline
                time.sleep(0.05)  # the cancelled stream's slot is on its way back
                continue
            answers.append(answer.status_code)
        assert answers == [200, 200]
        assert client.post(url, json=chat(), headers=h).status_code == 429


def test_a_keys_open_jobs_count_tasks_and_generations_alike(hostile: Tenancy) -> None:
    _, secret = hostile.new_key("painter", "--concurrency", "2")
    h = bearer(secret)
    slow = {"kind": "video", "model": "demo", "input": {"prompt": "slow", "duration_s": 30}}
    with httpx.Client(timeout=30) as client:
        held = [client.post(f"{hostile.url}/v1/tasks", json=slow, headers=h) for _ in range(2)]
        assert [t.status_code for t in held] == [202, 202]
        third = client.post(f"{hostile.url}/v1/tasks", json=slow, headers=h)
        assert third.status_code == 429 and "jobs open" in third.json()["error"]["message"]
        chat_refused = client.post(f"{hostile.url}/v1/chat/completions", json=chat(), headers=h)
        assert chat_refused.status_code == 429
        for task in held:
            client.post(f"{hostile.url}/v1/tasks/{task.json()['id']}/cancel", headers=h)
        deadline = time.monotonic() + 15
        while (
            answer := client.post(f"{hostile.url}/v1/tasks", json=slow, headers=h)
        ).status_code == 429:
            assert time.monotonic() < deadline, "the cancelled tasks' slots never came back"
            time.sleep(0.1)
        assert answer.status_code == 202
        client.post(f"{hostile.url}/v1/tasks/{answer.json()['id']}/cancel", headers=h)
