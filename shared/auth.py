"""API keys: random secrets shown once, stored only as SHA-256 digests, each with its own
limits (requests per minute, concurrent generations, token budget, models) and content
policy."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import secrets
import time
from dataclasses import dataclass

from redis.asyncio import Redis

from shared import keys

SECRET_PREFIX = "sk-spool-"


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    name: str
    rpm: int | None = None
    concurrency: int | None = None
    budget_tokens: int | None = None
    created_at: float = 0.0
    revoked: bool = False
    # The model names (exact, or fnmatch patterns such as `gpt-4o*`) the key may use, on
    # chat and task models alike; None: any model the deployment offers.
    models: tuple[str, ...] | None = None
    # The content policy (a name in the settings' `policies`) applied to this key's
    # requests on top of the model's own; None: only the model's.
    policy: str | None = None

    def may_use(self, model: str) -> bool:
        """Whether this key may use the model of that name (a table entry or a
        `provider/model` pass-through name)."""
        if self.models is None:
            return True
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)

    @classmethod
    def from_hash(cls, h: dict[bytes, bytes]) -> ApiKey:
        def opt_int(name: bytes) -> int | None:
            return int(h[name]) if h.get(name) else None

        return cls(
            id=h[b"id"].decode(),
            name=h[b"name"].decode(),
            rpm=opt_int(b"rpm"),
            concurrency=opt_int(b"concurrency"),
            budget_tokens=opt_int(b"budget_tokens"),
            created_at=float(h.get(b"created_at", b"0")),
            revoked=h.get(b"revoked") == b"1",
            models=tuple(json.loads(h[b"models"])) if h.get(b"models") else None,
            policy=h[b"policy"].decode() if h.get(b"policy") else None,
        )


ANONYMOUS = ApiKey(id="anonymous", name="anonymous")
"""The caller when authentication is turned off."""


class KeyStore:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def create(
        self,
        name: str,
        *,
        rpm: int | None = None,
        concurrency: int | None = None,
        budget_tokens: int | None = None,
        models: tuple[str, ...] | None = None,
        policy: str | None = None,
    ) -> tuple[str, ApiKey]:
        """A new key. The secret is returned once and never stored."""
        if models is not None and not all(name.strip() for name in models):
            raise ValueError("a key's model names must not be empty")
        if policy is not None and not policy.strip():
            raise ValueError("a key's policy name must not be empty")
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(
            id="key_" + secrets.token_hex(6),
            name=name,
            rpm=rpm,
            concurrency=concurrency,
            budget_tokens=budget_tokens,
            created_at=time.time(),
            models=models,
            policy=policy,
        )
        fields = {"id": key.id, "name": key.name, "created_at": repr(key.created_at)}
        for field in ("rpm", "concurrency", "budget_tokens", "policy"):
            value = getattr(key, field)
            if value is not None:
                fields[field] = str(value)
        if key.models is not None:
            fields["models"] = json.dumps(list(key.models))
        secret_digest = digest(secret)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.api_key_key(secret_digest), mapping=fields)
            pipe.hset(keys.API_KEYS_INDEX, key.id, secret_digest)
            await pipe.execute()
        return secret, key

    async def lookup(self, secret: str) -> ApiKey | None:
        raw = await self.redis.hgetall(keys.api_key_key(digest(secret)))  # type: ignore[misc]
        if not raw:
            return None
        key = ApiKey.from_hash(raw)
        return None if key.revoked else key

    async def list(self) -> list[ApiKey]:
        index: dict[bytes, bytes] = await self.redis.hgetall(keys.API_KEYS_INDEX)  # type: ignore[misc]
        found = []
        for secret_digest in index.values():
            raw = await self.redis.hgetall(keys.api_key_key(secret_digest.decode()))  # type: ignore[misc]
            if raw:
                found.append(ApiKey.from_hash(raw))
        return sorted(found, key=lambda k: k.created_at)

    async def active(self, key_id: str) -> bool:
        """Whether the key with this id exists and is not revoked."""
        secret_digest = await self.redis.hget(keys.API_KEYS_INDEX, key_id)  # type: ignore[misc]
        if secret_digest is None:
            return False
        revoked = await self.redis.hget(keys.api_key_key(secret_digest.decode()), "revoked")  # type: ignore[misc]
        return bool(revoked != b"1")

    async def revoke(self, key_id: str) -> bool:
        secret_digest = await self.redis.hget(keys.API_KEYS_INDEX, key_id)  # type: ignore[misc]
        if secret_digest is None:
            return False
        await self.redis.hset(keys.api_key_key(secret_digest.decode()), "revoked", "1")  # type: ignore[misc]
        return True
