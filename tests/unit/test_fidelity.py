"""What each provider can carry of a request (shared.fidelity) and the checks on media
parts (shared.media)."""

from __future__ import annotations

from typing import Any

import pytest

from shared.errors import InvalidRequest
from shared.fidelity import judge
from shared.media import check_media, decoded_size, media_part, parse_data_url
from shared.model_table import ModelEntry
from shared.request import ContentPart, GenerationRequest, Message, ResponseFormat
from tests.media import PNG_B64, WAV_B64


def request(*parts: ContentPart, **fields: Any) -> GenerationRequest:
    content = list(parts) or [ContentPart(type="text", text="hi")]
    return GenerationRequest(
        model="m", messages=[Message(role="user", content="hi", parts=content)], **fields
    )


def entry(provider: str, **fields: Any) -> ModelEntry:
    return ModelEntry.model_validate({"provider": provider, **fields})


PNG = ContentPart(type="image", media_type="image/png", data=PNG_B64)
WAV = ContentPart(type="audio", media_type="audio/wav", data=WAV_B64)


def test_data_urls_split_into_type_and_data() -> None:
    assert parse_data_url(f"data:image/PNG;base64,{PNG_B64}", "x") == ("image/png", PNG_B64)
    assert parse_data_url("data:image/jpg;charset=x;base64,AAAA", "x") == ("image/jpeg", "AAAA")
    for bad in ("data:image/png,AAAA", "data:;base64,AAAA", "image/png;base64,AAAA"):
        with pytest.raises(InvalidRequest, match="not a valid data URL"):
            parse_data_url(bad, "x")


def test_media_part_takes_exactly_one_source() -> None:
    part = media_part("image", "x", url=f"data:image/png;base64,{PNG_B64}")
    assert (part.media_type, part.data, part.url) == ("image/png", PNG_B64, None)
    assert media_part("image", "x", url="https://e.example/a.png").url == "https://e.example/a.png"
    with pytest.raises(InvalidRequest, match="exactly one"):
        media_part("image", "x")
    with pytest.raises(InvalidRequest, match="http"):
        media_part("image", "x", url="file:///etc/passwd")


def test_media_checks_name_the_part() -> None:
    assert decoded_size("AAAA") == 3 and decoded_size("AA==") == 1
    check_media(request(PNG), 1024)
    with pytest.raises(InvalidRequest, match=r"messages\[0\] part 0 \(image\) is \d+ bytes"):
        check_media(request(PNG), 10)
    with pytest.raises(InvalidRequest, match="not valid base64"):
        check_media(request(ContentPart(type="image", media_type="image/png", data="A")), 1024)
    with pytest.raises(InvalidRequest, match="image/bmp"):
        check_media(request(ContentPart(type="image", media_type="image/bmp", data="AAAA")), 99)
    with pytest.raises(InvalidRequest, match="no media type"):
        check_media(request(ContentPart(type="image", data="AAAA")), 99)


@pytest.mark.parametrize(
    ("provider", "ok"), [("openai", True), ("gemini", True), ("anthropic", False), ("demo", True)]
)
def test_audio_reaches_only_providers_that_take_it(provider: str, ok: bool) -> None:
    if ok:
        assert judge(request(WAV), entry(provider))[1] == []
    else:
        with pytest.raises(InvalidRequest, match=r"messages\[0\] part 0: audio input"):
            judge(request(WAV), entry(provider))


def test_media_types_a_provider_does_not_take_are_refused() -> None:
    heic = ContentPart(type="image", media_type="image/heic", data="AAAA")
    assert judge(request(heic), entry("gemini"))[1] == []
    with pytest.raises(InvalidRequest, match="image/heic"):
        judge(request(heic), entry("openai"))


def test_fields_a_provider_cannot_honour_are_refused_by_name_or_dropped() -> None:
    asked = request(seed=3, top_k=4, logit_bias={"1": 2.0}, presence_penalty=0.5)
    with pytest.raises(InvalidRequest, match="top_k") as refused:
        judge(asked, entry("openai"))
    assert "drop_params" in refused.value.message
    with pytest.raises(InvalidRequest, match="presence_penalty, logit_bias, seed"):
        judge(asked, entry("anthropic"))
    kept, dropped = judge(asked, entry("anthropic", drop_params=True))
    assert dropped == ["presence_penalty", "logit_bias", "seed"]
    assert (kept.seed, kept.logit_bias, kept.presence_penalty, kept.top_k) == (None, None, None, 4)
    kept, dropped = judge(asked.model_copy(update={"drop_params": True}), entry("gemini"))
    assert dropped == ["logit_bias"] and kept.seed == 3


def test_defaults_that_ask_nothing_pass_everywhere() -> None:
    quiet = request(parallel_tool_calls=True, logprobs=False)
    for provider in ("openai", "anthropic", "gemini"):
        assert judge(quiet, entry(provider))[1] == []


def test_unknown_fields_go_only_to_their_own_protocol() -> None:
    asked = request(protocol="openai", extra={"store": True})
    assert judge(asked, entry("openai")) == (asked, [])
    with pytest.raises(InvalidRequest, match="store"):
        judge(asked, entry("gemini"))
    kept, dropped = judge(asked, entry("gemini", drop_params=True))
    assert dropped == ["store"] and kept.extra == {}
    # The demo model takes anything and reports what it ignored.
    assert judge(asked, entry("demo"))[1] == ["store"]


def test_cache_control_is_anthropic_only() -> None:
    marked = ContentPart(type="text", text="hi", cache_control={"type": "ephemeral"})
    assert judge(request(marked), entry("anthropic"))[1] == []
    with pytest.raises(InvalidRequest, match="cache_control"):
        judge(request(marked), entry("openai"))
    kept, dropped = judge(request(marked), entry("openai", drop_params=True))
    assert dropped == ["cache_control"]
    assert kept.messages[0].parts is not None and kept.messages[0].parts[0].cache_control is None


def test_anthropic_service_tiers() -> None:
    assert judge(request(service_tier="auto"), entry("anthropic"))[1] == []
    with pytest.raises(InvalidRequest, match="service_tier"):
        judge(request(service_tier="flex"), entry("anthropic"))


def test_schemas_must_be_json_schema() -> None:
    good = ResponseFormat(type="json_schema", name="w", schema={"type": "object"})
    assert judge(request(response_format=good), entry("openai"))[1] == []
    bad = ResponseFormat(type="json_schema", name="w", schema={"type": "objekt"})
    with pytest.raises(InvalidRequest, match="not valid JSON Schema"):
        judge(request(response_format=bad), entry("demo"))
    with pytest.raises(InvalidRequest, match="needs a schema"):
        judge(request(response_format=ResponseFormat(type="json_schema")), entry("openai"))


def test_user_and_metadata_go_where_a_provider_has_a_place_for_them() -> None:
    tagged = request(user="u-1", metadata={"team": "search"})
    assert judge(tagged, entry("openai"))[1] == []
    with pytest.raises(InvalidRequest, match="metadata"):
        judge(tagged, entry("anthropic"))  # only user_id, from `user`
    assert judge(request(user="u-1"), entry("anthropic"))[1] == []
    with pytest.raises(InvalidRequest, match="metadata, user"):
        judge(tagged, entry("gemini"))


def test_a_failed_tool_result_says_so_to_every_provider() -> None:
    from worker.providers import gemini, openai

    failed = GenerationRequest(
        model="m",
        messages=[
            Message(role="user", content="hi"),
            Message(role="tool", content="timed out", tool_call_id="c1", name="f", is_error=True),
        ],
    )
    assert openai.build_body(failed, "m")["messages"][-1]["content"] == "Error: timed out"
    response = gemini.build_body(failed)["contents"][-1]["parts"][-1]["functionResponse"]
    assert response["response"] == {"error": "timed out"}
