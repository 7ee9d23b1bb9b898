"""OpenAI Completions (legacy): `POST /v1/completions` (also `/openai/v1/…`, `/v2/…`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body
from pydantic import Field
from starlette.responses import Response

from api.deps import CallerDep, CancelOnDisconnectDep, ServicesDep
from api.generation import serve_generation
from api.routes.openai_chat import StreamOptions, _Strict, openai_render, stop_list
from shared.errors import InvalidRequest
from shared.request import GenerationRequest, Message

router = APIRouter(tags=["openai"])
SURFACE = "openai.completions"


class CompletionRequest(_Strict):
    model: str = Field(min_length=1, max_length=256)
    prompt: str | list[str]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int = Field(default=16, ge=1, le=10_000_000)  # OpenAI's default
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int = 1
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**63)
    user: str | None = None
    echo: bool = False
    logprobs: int | None = None
    suffix: str | None = None


def to_canonical(body: CompletionRequest) -> GenerationRequest:
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if len(prompts) != 1:
        raise InvalidRequest("exactly one prompt is supported")
    if body.n != 1:
        raise InvalidRequest("only n=1 is supported")
    if body.echo or body.logprobs is not None or body.suffix is not None:
        raise InvalidRequest("echo, logprobs and suffix are not supported")
    return GenerationRequest.build(
        model=body.model,
        messages=[Message(role="user", content=prompts[0])],
        max_tokens=body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        stop=stop_list(body.stop),
        seed=body.seed,
        user=body.user,
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
