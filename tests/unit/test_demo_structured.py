"""Unit tests for the demo model's JSON answers (worker/providers/demo.py): JSON valid
against the request's schema (hand-written, pydantic's, and the openai SDK's strict
conversion), deterministic, streamed in fragments, cut by max_tokens like text."""

from __future__ import annotations

import ipaddress
import json
import random
import re
import uuid
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import IntEnum, StrEnum
from typing import Annotated, Any, Literal

import pytest
from jsonschema.validators import validator_for
from openai.lib._pydantic import to_strict_json_schema
from pydantic import BaseModel, Field, HttpUrl

from shared import events as ev
from shared.model_table import ModelEntry
from shared.request import GenerationRequest, ResponseFormat, Tool
from worker.providers.demo import (
    DemoProvider,
    PatternUnsupported,
    RegexReader,
    SchemaFiller,
    demo_tokens,
    write_match,
)

PROMPTS = ["give me JSON", "another prompt", "a third one", "日本 café", "x"]


def request(
    schema: Any = None, prompt: str = PROMPTS[0], fmt: str = "json_schema", **kw: Any
) -> GenerationRequest:
    response_format = None
    if fmt != "none":
        response_format = ResponseFormat(
            type=fmt,  # type: ignore[arg-type]
            name="answer",
            json_schema=schema if fmt == "json_schema" else None,
            strict=True,
        )
    return GenerationRequest(
        model="demo",
        messages=[{"role": "user", "content": prompt}],  # type: ignore[list-item]
        response_format=response_format,
        **kw,
    )


def entry(**kw: Any) -> ModelEntry:
    return ModelEntry.model_validate({"provider": "demo", "tokens_per_second": 0, **kw})


async def collect(req: GenerationRequest, model: ModelEntry | None = None) -> list[ev.Event]:
    return [e async for e in DemoProvider().stream(req, model or entry())]


def deltas(events: list[ev.Event]) -> list[str]:
    return [e.text for e in events if isinstance(e, ev.TextDelta)]


def finish(events: list[ev.Event]) -> ev.Finish:
    assert isinstance(events[-1], ev.Finish)
    return events[-1]


def check(schema: Any, value: Any) -> None:
    cls = validator_for(schema)
    validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
    problems = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(value)]
    assert not problems, (json.dumps(value, ensure_ascii=False), problems)


async def answer(schema: Any, prompt: str = PROMPTS[0]) -> Any:
    events = await collect(request(schema, prompt))
    assert finish(events).reason == "stop"
    return json.loads("".join(deltas(events)))


# -- schemas written by hand ---------------------------------------------------------------

SCHEMAS: dict[str, Any] = {
    "object": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer", "minimum": 18, "maximum": 20},
            "nickname": {"type": "string"},
        },
        "required": ["name"],
        "additionalProperties": False,
    },
    "fixed-size array": {
        "type": "array",
        "items": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 3},
        "minItems": 4,
        "maxItems": 4,
    },
    "unique items": {
        "type": "array",
        "items": {"enum": ["a", "b", "c", "d", "e"]},
        "minItems": 3,
        "uniqueItems": True,
    },
    "empty array allowed": {"type": "array", "items": {"type": "string"}, "maxItems": 0},
    "string lengths": {
        "type": "object",
        "properties": {
            "long": {"type": "string", "minLength": 30, "maxLength": 40},
            "short": {"type": "string", "maxLength": 3},
            "exact": {"type": "string", "minLength": 5, "maxLength": 5},
        },
        "required": ["long", "short", "exact"],
    },
    "patterns": {
        "type": "object",
        "properties": {
            "code": {"type": "string", "pattern": r"^[A-Z]{2}-\d{3}$"},
            "phone": {"type": "string", "pattern": r"^\+?[1-9]\d{1,14}$"},
            "color": {"type": "string", "pattern": "^#[0-9a-fA-F]{6}$"},
            "choice": {"type": "string", "pattern": "^(red|green|blue)(-dark)?$"},
            "slug": {"type": "string", "pattern": "^[a-z0-9]+(?:-[a-z0-9]+)*$", "maxLength": 12},
            "unanchored": {"type": "string", "pattern": "[0-9]{3}"},
            "lookahead": {"type": "string", "pattern": "^(?!forbidden)"},
        },
        "required": ["code", "phone", "color", "choice", "slug", "unanchored", "lookahead"],
    },
    "formats": {
        "type": "object",
        "properties": {
            name: {"type": "string", "format": name}
            for name in ("date", "date-time", "time", "email", "uri", "uuid", "ipv4", "ipv6")
        },
    },
    "numbers": {
        "type": "object",
        "properties": {
            "ratio": {"type": "number", "minimum": 0, "maximum": 1, "multipleOf": 0.01},
            "tenth": {"type": "number", "multipleOf": 0.1},
            "sevens": {"type": "integer", "minimum": 10, "maximum": 30, "multipleOf": 7},
            "halves": {"type": "integer", "multipleOf": 2.5, "minimum": 1},
            "tiny": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 0.001},
            "negative": {"type": "integer", "maximum": -1000},
            "float bounds": {"type": "integer", "minimum": 1.5, "maximum": 2.5},
            "big": {"type": "number", "minimum": 1e12},
        },
        "required": ["ratio", "tenth", "sevens", "halves", "tiny", "negative", "float bounds"],
    },
    "scalars": {
        "type": "object",
        "properties": {
            "flag": {"type": "boolean"},
            "nothing": {"type": "null"},
            "fixed": {"const": {"k": [1, 2]}},
            "mixed enum": {"enum": [1, "two", None, 3.5]},
            "anything": True,
            "empty": {},
        },
        "required": ["flag", "nothing", "fixed", "mixed enum", "anything", "empty"],
    },
    "type lists": {
        "type": "object",
        "properties": {
            "maybe": {"type": ["string", "null"]},
            "null first": {"type": ["null", "integer"]},
            "either": {"type": ["integer", "string"], "minimum": 5},
        },
        "required": ["maybe", "null first", "either"],
    },
    "anyOf": {"anyOf": [{"type": "integer", "minimum": 3}, {"type": "null"}]},
    "oneOf exclusive": {
        "oneOf": [
            {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]},
            {"type": "object"},
        ]
    },
    "oneOf by const": {
        "type": "object",
        "properties": {
            "shape": {
                "oneOf": [
                    {
                        "type": "object",
                        "properties": {"kind": {"const": "circle"}, "r": {"type": "number"}},
                        "required": ["kind", "r"],
                    },
                    {
                        "type": "object",
                        "properties": {"kind": {"const": "square"}, "side": {"type": "number"}},
                        "required": ["kind", "side"],
                    },
                ]
            }
        },
        "required": ["shape"],
    },
    "allOf": {
        "allOf": [
            {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
            {"properties": {"b": {"type": "string", "maxLength": 4}}, "required": ["b"]},
            {"properties": {"a": {"minimum": 50, "maximum": 60}}},
        ]
    },
    "ref with siblings": {
        "$defs": {"Pos": {"type": "integer", "minimum": 1}},
        "type": "object",
        "properties": {"n": {"$ref": "#/$defs/Pos", "maximum": 3, "description": "small"}},
        "required": ["n"],
    },
    "draft-07 definitions": {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "definitions": {"tag": {"type": "string", "enum": ["x", "y"]}},
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"$ref": "#/definitions/tag"}},
            "pair": {"type": "array", "items": [{"type": "integer"}, {"type": "boolean"}]},
        },
        "required": ["tags", "pair"],
    },
    "draft-04 exclusive booleans": {
        "$schema": "http://json-schema.org/draft-04/schema#",
        "type": "object",
        "properties": {
            "p": {
                "type": "number",
                "minimum": 0,
                "exclusiveMinimum": True,
                "maximum": 1,
                "exclusiveMaximum": True,
            },
            "i": {"type": "integer", "minimum": 4, "exclusiveMinimum": True, "maximum": 5},
        },
        "required": ["p", "i"],
    },
    "tuple": {
        "type": "array",
        "prefixItems": [{"type": "integer"}, {"type": "string", "format": "date"}],
        "items": False,
        "minItems": 2,
    },
    "contains": {"type": "array", "items": {"type": "integer"}, "contains": {"const": 5}},
    "map": {
        "type": "object",
        "additionalProperties": {"type": "integer", "minimum": 0},
        "minProperties": 3,
        "maxProperties": 4,
    },
    "property names": {
        "type": "object",
        "propertyNames": {"pattern": "^[a-z]{3}$"},
        "additionalProperties": {"type": "boolean"},
        "minProperties": 2,
    },
    "pattern properties": {
        "type": "object",
        "patternProperties": {"^n_": {"type": "integer"}},
        "additionalProperties": False,
        "required": ["n_one"],
    },
    "max properties": {
        "type": "object",
        "properties": {k: {"type": "integer"} for k in "abcdef"},
        "required": ["e"],
        "maxProperties": 2,
    },
    "tree": {
        "$defs": {
            "node": {
                "type": "object",
                "properties": {
                    "value": {"type": "integer"},
                    "children": {"type": "array", "items": {"$ref": "#/$defs/node"}},
                },
                "required": ["value", "children"],
                "additionalProperties": False,
            }
        },
        "$ref": "#/$defs/node",
    },
    "linked list, every field required": {
        "$defs": {
            "cell": {
                "type": "object",
                "properties": {
                    "value": {"type": "string"},
                    "next": {"anyOf": [{"$ref": "#/$defs/cell"}, {"type": "null"}]},
                },
                "required": ["value", "next"],
                "additionalProperties": False,
            }
        },
        "$ref": "#/$defs/cell",
    },
    "root recursion": {
        "type": "object",
        "properties": {"name": {"type": "string"}, "child": {"$ref": "#"}},
        "required": ["name"],
    },
    "no type": {"properties": {"a": {"minimum": 2, "maximum": 4}}, "required": ["a"]},
}


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("name", sorted(SCHEMAS))
async def test_the_answer_validates_against_the_schema(name: str, prompt: str) -> None:
    schema = SCHEMAS[name]
    check(schema, await answer(schema, prompt))


async def test_every_property_is_filled_not_only_the_required_ones() -> None:
    value = await answer(SCHEMAS["object"])
    assert set(value) == {"name", "age", "nickname"}
    assert set(await answer(SCHEMAS["max properties"])) <= set("abcdef")


async def test_recursion_stops() -> None:
    tree = await answer(SCHEMAS["tree"])
    assert tree["children"]  # one level of children, then the recursion is cut
    assert all(child["children"] == [] for child in tree["children"])
    cell = await answer(SCHEMAS["linked list, every field required"])
    assert cell["next"] is None or cell["next"]["next"] is None


async def test_recursion_with_no_way_out_ends_anyway() -> None:
    """A schema no finite value satisfies, and references that only name each other:
    the demo still answers (best effort), in bounded time."""
    endless = {
        "$defs": {
            "n": {
                "type": "object",
                "properties": {"next": {"$ref": "#/$defs/n"}},
                "required": ["next"],
            }
        },
        "$ref": "#/$defs/n",
    }
    value = await answer(endless)
    depth = 0
    while isinstance(value, dict):
        value, depth = value["next"], depth + 1
    assert 1 < depth <= 40
    cycle = {"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}
    assert isinstance(await answer(cycle), str)


async def test_formats_are_real_values() -> None:
    value = await answer(SCHEMAS["formats"])
    date.fromisoformat(value["date"])
    datetime.fromisoformat(value["date-time"])
    time.fromisoformat(value["time"])
    assert re.fullmatch(r"[a-z]+@example\.com", value["email"])
    assert value["uri"].startswith("https://")
    assert uuid.UUID(value["uuid"]).version == 4
    ipaddress.IPv4Address(value["ipv4"])
    ipaddress.IPv6Address(value["ipv6"])


# -- pydantic's schemas, and the openai SDK's strict conversion -----------------------------


class Status(StrEnum):
    open = "open"
    closed = "closed"


class Level(IntEnum):
    low = 1
    high = 3


class Address(BaseModel):
    street: str
    city: str
    zip: Annotated[str, Field(pattern=r"^\d{5}$")]
    country: Literal["FR", "DE"] = "FR"


class Item(BaseModel):
    sku: str = Field(min_length=3, max_length=8)
    quantity: int = Field(ge=1, le=10)
    price: float = Field(gt=0, multiple_of=0.01)
    tags: list[str] = Field(default_factory=list, max_length=3)


class Cat(BaseModel):
    kind: Literal["cat"]
    lives: int = Field(ge=0, le=9)


class Dog(BaseModel):
    kind: Literal["dog"]
    good: bool


class Order(BaseModel):
    id: uuid.UUID
    created: datetime
    due: date | None
    at: time
    status: Status
    level: Level
    items: list[Item] = Field(min_length=1)
    address: Address | None = None
    pet: Annotated[Cat | Dog, Field(discriminator="kind")]
    notes: dict[str, str]
    pair: tuple[int, str]
    website: HttpUrl
    total: Decimal
    wait: timedelta


class Tree(BaseModel):
    name: str
    children: list[Tree] = []


class Linked(BaseModel):
    value: int
    next: Linked | None = None


class Weather(BaseModel):
    city: str
    temperature: float
    conditions: Literal["sunny", "cloudy", "rain"]
    forecast: list[float]


MODELS: list[type[BaseModel]] = [Order, Tree, Linked, Weather, Address, Item]


def strict_schema(model: type[BaseModel]) -> dict[str, Any] | None:
    try:
        return to_strict_json_schema(model)
    except Exception:  # a type the strict conversion refuses
        return None


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
async def test_pydantic_schemas(model: type[BaseModel], prompt: str) -> None:
    schema = model.model_json_schema()
    events = await collect(request(schema, prompt))
    text = "".join(deltas(events))
    check(schema, json.loads(text))
    model.model_validate_json(text)


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("model", [Tree, Linked, Weather, Address, Item], ids=lambda m: m.__name__)
async def test_openai_strict_schemas(model: type[BaseModel], prompt: str) -> None:
    schema = strict_schema(model)
    assert schema is not None
    assert schema["additionalProperties"] is False
    events = await collect(request(schema, prompt))
    text = "".join(deltas(events))
    check(schema, json.loads(text))
    model.model_validate_json(text)


async def test_openai_strict_schema_of_a_rich_model() -> None:
    schema = strict_schema(Order)
    assert schema is not None
    for prompt in PROMPTS:
        text = "".join(deltas(await collect(request(schema, prompt))))
        check(schema, json.loads(text))
        Order.model_validate_json(text)


# -- streaming, determinism, other formats -------------------------------------------------


async def test_same_request_same_json_different_prompt_different_json() -> None:
    schema = Weather.model_json_schema()
    first = await collect(request(schema))
    assert first == await collect(request(schema))
    other = await collect(request(schema, "something else"))
    assert "".join(deltas(first)) != "".join(deltas(other))


async def test_json_streams_in_fragments_with_usage() -> None:
    req = request(Weather.model_json_schema())
    events = await collect(req)
    pieces = deltas(events)
    assert len(pieces) > 5
    assert all(isinstance(e, ev.TextDelta) for e in events[:-1])
    done = finish(events)
    assert done.reason == "stop"
    assert done.usage == ev.Usage(
        input_tokens=len(PROMPTS[0].split()) + 3, output_tokens=len(pieces)
    )


async def test_max_output_tokens_does_not_cut_json() -> None:
    events = await collect(request(Order.model_json_schema()), entry(max_output_tokens=5))
    assert finish(events).reason == "stop"
    Order.model_validate_json("".join(deltas(events)))


async def test_max_tokens_cuts_json_like_text() -> None:
    schema = Weather.model_json_schema()
    full = deltas(await collect(request(schema)))
    events = await collect(request(schema, max_tokens=4))
    assert deltas(events) == full[:4]
    done = finish(events)
    assert done.reason == "length"
    assert done.usage is not None and done.usage.output_tokens == 4
    with pytest.raises(json.JSONDecodeError):
        json.loads("".join(deltas(events)))


async def test_json_object_mode_wraps_the_demo_text() -> None:
    req = request(fmt="json_object")
    model = entry(max_output_tokens=12)
    events = await collect(req, model)
    assert finish(events).reason == "stop"
    assert json.loads("".join(deltas(events))) == {"answer": "".join(demo_tokens(req, 12))}


@pytest.mark.parametrize("fmt", ["text", "none"])
async def test_text_format_is_plain_text(fmt: str) -> None:
    plain = GenerationRequest(model="demo", messages=[{"role": "user", "content": PROMPTS[0]}])  # type: ignore[list-item]
    model = entry(max_output_tokens=10)
    assert await collect(request(fmt=fmt), model) == await collect(plain, model)


async def test_a_tool_call_comes_before_the_json_answer() -> None:
    tool = Tool(
        name="lookup", parameters={"type": "object", "properties": {"q": {"type": "string"}}}
    )
    events = await collect(request(Weather.model_json_schema(), tools=[tool]))
    assert finish(events).reason == "tool_calls"
    assert not deltas(events)


async def test_reasoning_then_json() -> None:
    events = await collect(request(Weather.model_json_schema(), reasoning=True))
    assert isinstance(events[0], ev.ReasoningDelta)
    Weather.model_validate_json("".join(deltas(events)))


# -- pieces --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pattern",
    [
        r"^[A-Z]{2}-\d{3}$",
        r"^(foo|bar)+baz?$",
        r"[^abc]x",
        r"(?i)^hello\.world$",
        r"^(?:\w+\s?){2}$",
        r"^(?P<year>\d{4})-(?P<month>\d{2})$",
        r"^\u00e9\x41[\]\-]\\$",
        r"^.{3,5}$",
        r"^a*?b+?c{2,}$",
        r"^[\w.-]+@[a-z]+\.(com|org)$",
        r"\bword\B",
    ],
)
def test_strings_written_for_patterns_match_them(pattern: str) -> None:
    node = RegexReader(pattern).read()
    for seed in range(20):
        out: list[str] = []
        write_match(node, random.Random(seed), out)
        text = "".join(out)
        if pattern != r"\bword\B":  # anchors are not written: only the characters are
            assert re.search(pattern, text), (pattern, text)


def test_ecma_named_groups_are_read() -> None:
    """`(?<name>…)` is ECMA-262's spelling (Python's `re` has only `(?P<name>…)`)."""
    out: list[str] = []
    write_match(RegexReader(r"^(?<month>\d{2})$").read(), random.Random(3), out)
    assert re.fullmatch(r"\d{2}", "".join(out))


@pytest.mark.parametrize("pattern", [r"^(?=a)b$", r"(a)\1", r"\p{L}+", r"^[a-", r"a{2", r"(ab"])
def test_patterns_the_demo_cannot_write_for(pattern: str) -> None:
    with pytest.raises(PatternUnsupported):
        RegexReader(pattern).read()


def test_a_pattern_nothing_matches_falls_back_to_a_plain_string() -> None:
    schema = {"type": "string", "pattern": r"^(?=\d)[a-z]$"}  # satisfiable by nothing
    value = SchemaFiller(schema, random.Random(1)).value()
    assert isinstance(value, str) and value
    matched = {"type": "string", "pattern": "^(?!forbidden)"}
    text = SchemaFiller(matched, random.Random(1)).value()
    assert re.search("^(?!forbidden)", text)


def test_one_of_takes_a_value_only_one_branch_accepts() -> None:
    schema = SCHEMAS["oneOf exclusive"]
    for seed in range(10):
        value = SchemaFiller(schema, random.Random(seed)).value()
        assert value == {}  # {"x": n} matches both branches


async def test_a_lone_surrogate_in_the_schema_stays_escaped() -> None:
    schema = {"type": "object", "properties": {"s": {"const": "a\ud800b"}}, "required": ["s"]}
    text = "".join(deltas(await collect(request(schema))))
    text.encode()  # every fragment can travel as UTF-8
    assert json.loads(text) == {"s": "a\ud800b"}
