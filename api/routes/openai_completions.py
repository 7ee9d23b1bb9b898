"""OpenAI Completions (legacy): `POST /v1/completions` (also `/openai/v1/…`, `/v2/…`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body
from pydantic import ConfigDict, Field
from starlette.responses import Response

from api.deps import CallerDep, CancelOnDisconnectDep, ServicesDep
from api.generation import serve_generation
from api.routes.openai_chat import (
    PROTOCOL,
    LogitBias,
    Penalty,
    StreamOptions,
    _Strict,
    openai_render,
    stop_list,
)
from shared.errors import InvalidRequest
from shared.request import GenerationRequest, Message

router = APIRouter(tags=["openai"])
SURFACE = "openai.completions"


class CompletionRequest(_Strict):
    # Fields Spool does not model are kept (`model_extra`) and passed on verbatim to
    # OpenAI-compatible upstreams.
    model_config = ConfigDict(strict=True, extra="allow")

    model: str = Field(min_length=1, max_length=256)
    prompt: str | list[str]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int = Field(default=16, ge=1, le=10_000_000)  # OpenAI's default
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: LogitBias | None = None
    n: int | None = 1
    best_of: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**63)
    user: str | None = None
    echo: bool = False
    # How many of the likeliest tokens to report at each position, with the chosen one's.
    logprobs: int | None = Field(default=None, ge=0, le=20)
    suffix: str | None = None
    drop_params: bool = False


def to_canonical(body: CompletionRequest) -> GenerationRequest:
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if len(prompts) != 1:
        raise InvalidRequest("exactly one prompt is supported")
    if body.n not in (None, 1) or body.best_of not in (None, 1):
        raise InvalidRequest("only n=1 and best_of=1 are supported")
    if body.echo or body.suffix is not None:
        raise InvalidRequest("echo and suffix are not supported")
    return GenerationRequest.build(
        model=body.model,
        messages=[Message(role="user", content=prompts[0])],
        max_tokens=body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        logit_bias=body.logit_bias,
        logprobs=True if body.logprobs is not None else None,
        top_logprobs=body.logprobs,
        stop=stop_list(body.stop),
        seed=body.seed,
        user=body.user,
        protocol=PROTOCOL,
        extra=dict(body.model_extra or {}),
        drop_params=body.drop_params,
    )


@router.post("/v1/completions")
@router.post("/openai/v1/completions", include_in_schema=False)
@router.post("/v2/completions", include_in_schema=False)
async def completions(
    body: Annotated[CompletionRequest, Body()],
    services: ServicesDep,
    caller: CallerDep,
    cancel_on_disconnect: CancelOnDisconnectDep,
) -> Response:
    return await serve_generation(
        services,
        caller,
        SURFACE,
        to_canonical(body),
        render=openai_render("cmpl-", body.model, body.stream, body.stream_options),
        stream=body.stream,
        cancel_on_disconnect=cancel_on_disconnect,
    )
