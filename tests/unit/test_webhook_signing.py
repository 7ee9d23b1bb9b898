"""Webhook signing checked by the official Standard Webhooks library, and the small parsers
of the task routes: `Prefer: wait`, the body digest, Idempotency-Key and the secret."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
from collections.abc import Mapping
from pathlib import Path

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from api.tasks import MAX_WAIT_S, body_digest, idempotency_redis_key, parse_prefer_wait
from shared.auth import ApiKey
from shared.errors import ConfigError, InvalidRequest
from shared.settings import load_settings
from shared.tasks import TaskSpec
from worker.webhooks import delivery_job_id, sign, signing_key

KEY = bytes(range(32))
SECRET = "whsec_" + base64.b64encode(KEY).decode()
OTHER_SECRET = "whsec_" + base64.b64encode(bytes(range(1, 33))).decode()
BODY = b'{"id":"task_1","object":"task","status":"succeeded"}'


def headers(message_id: str, timestamp: int, signature: str) -> dict[str, str]:
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


# -- signing --------------------------------------------------------------------------


def test_signature_verifies_with_the_standard_webhooks_library() -> None:
    now = int(time.time())
    signature = sign(SECRET, "msg_1", now, BODY)
    assert signature.startswith("v1,")
    payload = Webhook(SECRET).verify(BODY, headers("msg_1", now, signature))
    assert payload == {"id": "task_1", "object": "task", "status": "succeeded"}


def test_tampered_body_is_rejected() -> None:
    now = int(time.time())
    signature = sign(SECRET, "msg_1", now, BODY)
    tampered = BODY.replace(b"succeeded", b"failed")
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(tampered, headers("msg_1", now, signature))


def test_wrong_secret_is_rejected() -> None:
    now = int(time.time())
    signature = sign(SECRET, "msg_1", now, BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(OTHER_SECRET).verify(BODY, headers("msg_1", now, signature))


def test_changed_message_id_is_rejected() -> None:
    now = int(time.time())
    signature = sign(SECRET, "msg_1", now, BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(BODY, headers("msg_2", now, signature))


def test_changed_timestamp_is_rejected() -> None:
    now = int(time.time())
    signature = sign(SECRET, "msg_1", now, BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(BODY, headers("msg_1", now - 1, signature))


def test_known_vector_matches_the_specification() -> None:
    """The spec's definition, computed here independently of `sign`."""
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    message_id = "msg_p5jXN8AQM9LWM0D4loKWxJek"
    timestamp = 1614265330
    body = b'{"test": 2432232314}'
    key = base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    to_sign = f"{message_id}.{timestamp}.{body.decode()}".encode()
    expected = "v1," + base64.b64encode(hmac.new(key, to_sign, hashlib.sha256).digest()).decode()
    assert sign(secret, message_id, timestamp, body) == expected
    # The published example of the Standard Webhooks specification (and Svix).
    assert expected == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert signing_key(secret) == key


def test_signature_differs_per_timestamp_but_verifies_each_time() -> None:
    now = int(time.time())
    first, second = sign(SECRET, "msg_1", now, BODY), sign(SECRET, "msg_1", now + 1, BODY)
    assert first != second
    Webhook(SECRET).verify(BODY, headers("msg_1", now, first))
    Webhook(SECRET).verify(BODY, headers("msg_1", now + 1, second))


def test_delivery_job_id() -> None:
    assert delivery_job_id("abc", 3, 2) == "hook:abc:3:2"


# -- Prefer: wait ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefer", "wanted"),
    [
        ("wait=5", 5),
        ("respond-async, wait=10", 10),
        ("wait=999", MAX_WAIT_S),
        ("WAIT=3; foo", 3),
        ('wait="7"', 7),
        ("wait=0", 0),
        ("wait=0000010", 10),  # leading zeros are still delta-seconds
        ("wait=000000000000000000005", 5),
        ("wait=" + "9" * 5000, MAX_WAIT_S),  # huge, but not a crash
        ("wait=abc", None),
        ("wait=-1", None),
        ("wait=", None),
        ("wait=1.5", None),
        ("respond-async", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_prefer_wait(prefer: str | None, wanted: int | None) -> None:
    assert parse_prefer_wait(prefer) == wanted


def test_prefer_wait_cap_is_sixty() -> None:
    assert MAX_WAIT_S == 60
    assert parse_prefer_wait("wait=60") == 60
    assert parse_prefer_wait("wait=61") == 60


# -- body digest ----------------------------------------------------------------------


def spec(data: Mapping[str, object]) -> TaskSpec:
    return TaskSpec.model_validate(data)


def test_body_digest_ignores_key_order() -> None:
    first = spec(
        {
            "kind": "image",
            "model": "demo",
            "input": {"prompt": "a cat", "width": 64, "style": "ink", "extra": {"b": 1, "a": 2}},
            "callback_url": "https://example.com/hook",
            "webhook_events": ["started", "completed"],
        }
    )
    second = spec(
        {
            "webhook_events": ["started", "completed"],
            "callback_url": "https://example.com/hook",
            "input": {"extra": {"a": 2, "b": 1}, "style": "ink", "width": 64, "prompt": "a cat"},
            "model": "demo",
            "kind": "image",
        }
    )
    assert body_digest(first) == body_digest(second)
    assert len(body_digest(first)) == 64


def test_body_digest_differs_for_a_different_body() -> None:
    base = {"kind": "image", "model": "demo", "input": {"prompt": "a cat"}}
    assert body_digest(spec(base)) != body_digest(spec({**base, "input": {"prompt": "a dog"}}))
    assert body_digest(spec(base)) != body_digest(spec({**base, "kind": "video"}))


# -- Idempotency-Key ------------------------------------------------------------------

OWNER = ApiKey(id="key_test", name="test")


def test_idempotency_key_is_per_owner_and_hashed() -> None:
    key = idempotency_redis_key(OWNER, "order-42")
    assert key == "spool:idem:key_test:" + hashlib.sha256(b"order-42").hexdigest()
    assert idempotency_redis_key(ApiKey(id="key_other", name="o"), "order-42") != key
    assert idempotency_redis_key(OWNER, "x" * 255).startswith("spool:idem:key_test:")


@pytest.mark.parametrize("bad", ["", "x" * 256, "bad\nkey", "tab\there", "nul\x00"])
def test_idempotency_key_rejects_bad_keys(bad: str) -> None:
    with pytest.raises(InvalidRequest):
        idempotency_redis_key(OWNER, bad)


# -- webhook_secret -------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.upper().startswith("SPOOL_") or name.upper() == "REDIS_URL":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.mark.usefixtures("clean_env")
def test_webhook_secret_accepts_whsec_base64() -> None:
    settings = load_settings(webhook_secret=SECRET)
    assert settings.webhook_secret is not None
    assert settings.webhook_secret.get_secret_value() == SECRET
    sixteen = "whsec_" + base64.b64encode(b"0123456789abcdef").decode()
    assert load_settings(webhook_secret=sixteen).webhook_secret is not None
    assert load_settings().webhook_secret is None


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    "bad",
    [
        base64.b64encode(KEY).decode(),  # no prefix
        "whsec_not*base64!",  # not base64
        "whsec_" + base64.b64encode(KEY).decode()[:-3],  # broken padding
        "whsec_" + base64.b64encode(b"fifteen bytes!!").decode(),  # too short
        "whsec_",  # empty key
    ],
)
def test_webhook_secret_rejects_bad_forms(bad: str) -> None:
    with pytest.raises(ConfigError):
        load_settings(webhook_secret=bad)
