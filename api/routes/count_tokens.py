"""Anthropic's token counting: `POST /v1/messages/count_tokens` (also under `/anthropic`).

Models served by Anthropic get Anthropic's own count: the request, already in Anthropic's
form, goes to the upstream's count_tokens with the upstream model name. Other models get
Spool's estimate. The `X-Spool-Token-Count` header says which (`exact` or `estimated`).
No job is queued, but the request counts against the key's requests per minute."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Body, Request
from starlette.responses import Response

from api.deps import CallerDep, Services, ServicesDep
from api.generation import check_limits, resolve_model
from api.responses import JSONBody
from api.routes.anthropic import MessagesBody, to_canonical
from api.upstream import malformed, post_json
from shared.model_table import ModelEntry

router = APIRouter(tags=["anthropic"])

COUNT_HEADER = "X-Spool-Token-Count"
DEFAULT_BASE_URL = "https://api.anthropic.com/v1"
API_VERSION = "2023-06-01"


def _upstream_body(raw: bytes, upstream_model: str) -> dict[str, Any]:
    """The client's request as the upstream takes it: its upstream model name, the beta
    `output_format` in its GA place, without Spool's own `drop_params`."""
    body: dict[str, Any] = orjson.loads(raw)
    body["model"] = upstream_model
    body.pop("drop_params", None)
    output_format = body.pop("output_format", None)
    if output_format is not None:
        config = body.get("output_config") or {}
        body["output_config"] = {"format": output_format, **config}
    return body


async def upstream_count(services: Services, entry: ModelEntry, body: dict[str, Any]) -> int:
    """Anthropic's count of the request's input tokens, or a 502 (504) saying why not."""
    url = (entry.base_url or DEFAULT_BASE_URL).rstrip("/") + "/messages/count_tokens"
    headers = {"anthropic-version": API_VERSION}
    key = entry.api_key()
    if key:
        headers["x-api-key"] = key
    answer = await post_json(services.http, url, body, headers, entry, "token count")
    tokens = answer.get("input_tokens")
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
        raise malformed("token count", "it has no input_tokens count")
    return tokens


@router.post("/v1/messages/count_tokens")
@router.post("/anthropic/v1/messages/count_tokens", include_in_schema=False)
async def count_tokens(
    body: Annotated[MessagesBody, Body()],
    request: Request,
    services: ServicesDep,
    caller: CallerDep,
) -> Response:
    entry = resolve_model(services.settings, body.model, caller)
    canonical = to_canonical(body)
    check_limits(services.settings, canonical)
    await services.admission.take_request(caller, f"count_tokens:{uuid.uuid4().hex}")
    if entry.provider == "anthropic":
        upstream_body = _upstream_body(await request.body(), entry.model or body.model)
        tokens, how = await upstream_count(services, entry, upstream_body), "exact"
    else:
        tokens, how = canonical.estimated_input_tokens(), "estimated"
    return JSONBody({"input_tokens": tokens}, headers={COUNT_HEADER: how})
