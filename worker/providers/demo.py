"""The built-in demo model: no key, no network, deterministic text at a configured pace.

The same request always yields the same text. Words come from a fixed vocabulary picked by
a PRNG seeded with a hash of the request; a few carry multi-byte UTF-8 so every path that
handles text sees it. Asked for JSON, it answers JSON: against a JSON Schema, a value
generated from the schema (valid against it), so structured output works offline.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
import re
import uuid
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator
from fractions import Fraction
from typing import Any
from urllib.parse import unquote

import orjson
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for

from shared import events as ev
from shared.model_table import ModelEntry
from shared.request import GenerationRequest, ResponseFormat, Tool

VOCABULARY = (
    "stream", "token", "queue", "replica", "worker", "resume", "event", "broker", "chunk",
    "redis", "spool", "thread", "signal", "latency", "cursor", "buffer", "reader", "writer",
    "café", "naïve", "façade", "über", "→", "…", "日本", "✓", "the", "a", "of", "and", "to",
    "every", "each", "never", "always", "quietly", "exactly", "once", "again", "later",
)  # fmt: skip


def _rng(request: GenerationRequest) -> random.Random:
    key = orjson.dumps([request.model, [m.model_dump(exclude_none=True) for m in request.messages]])
    return random.Random(int.from_bytes(hashlib.sha256(key).digest()[:8], "big"))


def demo_words(request: GenerationRequest, count: int) -> Iterator[str]:
    """The demo's `count` tokens, made as they are taken: a long answer streamed slowly
    costs its tokens one at a time, not all of them when it starts. A word is given out
    once the next is drawn (that one may end its sentence with a full stop)."""
    rng = _rng(request)
    held: str | None = None
    for i in range(count):
        word = rng.choice(VOCABULARY)
        if i == 0:
            word = word.capitalize()
        elif rng.random() < 0.12:
            held = f"{held}."
            word = word.capitalize()
        if held is not None:
            yield held
        held = word if i == 0 else " " + word
    if held is not None:
        yield held


def demo_tokens(request: GenerationRequest, count: int) -> list[str]:
    return list(demo_words(request, count))


# The most of a tool's result the demo quotes in its answer.
QUOTED_RESULT_CHARS = 200


def answer_words(request: GenerationRequest, count: int) -> Iterator[str]:
    """The demo's answer, `count` tokens made as they are taken: after a tool's result,
    it opens by quoting the result (so a tool loop's answer shows what the tool said),
    then goes on as usual."""
    last = request.messages[-1]
    if last.role != "tool" or not last.content or count < 2:
        yield from demo_words(request, count)
        return
    quoted = f"{last.name or 'The tool'} said: {last.content[:QUOTED_RESULT_CHARS]}".split()
    quoted = quoted[: count - 1]
    yield quoted[0]
    for word in quoted[1:]:
        yield " " + word
    rest = demo_words(request, count - len(quoted))
    yield " " + next(rest)
    yield from rest


def _count_input_tokens(request: GenerationRequest) -> int:
    return sum(len(m.content.split()) + 3 for m in request.messages)


def _tool_to_call(request: GenerationRequest) -> Tool | None:
    """The tool the demo calls: the named one, or the first, unless tools are off or the
    conversation just got a tool's result back (then it answers in text)."""
    if not request.tools or request.tool_choice == "none":
        return None
    if request.messages[-1].role == "tool":
        return None
    named = [t for t in request.tools if t.name == request.tool_choice]
    return named[0] if named else request.tools[0]


def _demo_value(schema: dict[str, Any], rng: random.Random, prompt: str) -> Any:
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "integer":
        return rng.randint(1, 100)
    if kind == "number":
        return round(rng.uniform(1, 100), 2)
    if kind == "boolean":
        return True
    if kind == "array":
        return [_demo_value(schema.get("items") or {"type": "string"}, rng, prompt)]
    if kind == "object":
        return _demo_arguments(schema, rng, prompt)
    return prompt[:40] or rng.choice(VOCABULARY)


def _demo_arguments(schema: dict[str, Any], rng: random.Random, prompt: str) -> dict[str, Any]:
    properties = schema.get("properties") or {}
    return {
        name: _demo_value(sub if isinstance(sub, dict) else {}, rng, prompt)
        for name, sub in properties.items()
    }


def _fragments(text: str, parts: int = 3) -> list[str]:
    size = max(1, -(-len(text) // parts))
    return [text[i : i + size] for i in range(0, len(text), size)]


# -- JSON answers ------------------------------------------------------------------------

# JSON text in token-sized pieces: a word, or a run of punctuation, with the space before it.
_JSON_TOKEN = re.compile(r"\s*(?:\w+|[^\w\s]+)|\s+")
_ASCII_WORDS = tuple(w for w in VOCABULARY if w.isascii() and w.isalpha())


def json_tokens(text: str) -> list[str]:
    """JSON text in the token-sized pieces a model streams it in."""
    return _JSON_TOKEN.findall(text)


def json_answer(request: GenerationRequest, fmt: ResponseFormat, entry: ModelEntry) -> str:
    """The demo's JSON answer: a value generated from the schema, or, for JSON mode, the
    demo text in an object."""
    rng = _rng(request)
    if fmt.type == "json_schema" and fmt.json_schema is not None:
        value = SchemaFiller(fmt.json_schema, rng).value()
    else:
        value = {"answer": "".join(demo_tokens(request, entry.max_output_tokens))}
    text = json.dumps(value, ensure_ascii=False)
    try:
        text.encode()
    except UnicodeEncodeError:  # a lone surrogate from the schema: keep it escaped
        return json.dumps(value)
    return text


# -- strings for a `pattern` ------------------------------------------------------------


class PatternUnsupported(ValueError):
    """A regular-expression construct the demo writes no strings for (lookarounds,
    back-references, Unicode property classes)."""


# ("lit", char) | ("set", negated, ranges) | ("seq", nodes) | ("alt", nodes)
# | ("rep", node, least, most)
RegexNode = tuple[Any, ...]
Ranges = list[tuple[int, int]]
_SHORTHANDS: dict[str, Ranges] = {
    "d": [(0x30, 0x39)],
    "w": [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)],
    "s": [(0x20, 0x20)],
}
# What a dot or a negated class picks from, and what a class picks first.
_POOL = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_ .,"
_CONTROL_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v"}
_BRACES = re.compile(r"\{(\d+)(,(\d*))?\}")
_HEX = frozenset("0123456789abcdefABCDEF")
_MAX_REPEAT = 3  # repetitions past a quantifier's least the demo writes at most
_MAX_LEAST = 10_000


class RegexReader:
    """Reads a JSON Schema `pattern` (the common subset of ECMA-262 regular expressions)
    into the nodes `write_match` turns into a matching string."""

    def __init__(self, pattern: str) -> None:
        self.text = pattern
        self.at = 0

    def read(self) -> RegexNode:
        node = self._alternation()
        if self.at != len(self.text):
            raise PatternUnsupported(self.text)
        return node

    def _next(self) -> str:
        if self.at >= len(self.text):
            raise PatternUnsupported(self.text)
        self.at += 1
        return self.text[self.at - 1]

    def _peek(self, ahead: int = 0) -> str:
        at = self.at + ahead
        return self.text[at] if at < len(self.text) else ""

    def _alternation(self) -> RegexNode:
        branches = [self._sequence()]
        while self._peek() == "|":
            self.at += 1
            branches.append(self._sequence())
        return ("alt", branches) if len(branches) > 1 else branches[0]

    def _sequence(self) -> RegexNode:
        items = []
        while self._peek() not in ("", "|", ")"):
            atom = self._atom()
            if atom is not None:
                items.append(self._quantified(atom))
        return ("seq", items)

    def _atom(self) -> RegexNode | None:
        char = self._next()
        if char in ("^", "$"):
            return None
        if char == ".":
            return ("set", True, [(0x0A, 0x0A), (0x0D, 0x0D)])
        if char == "[":
            return self._class()
        if char == "(":
            return self._group()
        if char == "\\":
            return self._escape()
        if char in ("*", "+", "?", "{"):
            raise PatternUnsupported(self.text)
        return ("lit", char)

    def _quantified(self, atom: RegexNode) -> RegexNode:
        char = self._peek()
        most: int | None
        if char in ("*", "+", "?"):
            self.at += 1
            least, most = {"*": (0, None), "+": (1, None), "?": (0, 1)}[char]
        elif char == "{" and (match := _BRACES.match(self.text, self.at)):
            self.at = match.end()
            least = int(match[1])
            most = least if match[2] is None else (int(match[3]) if match[3] else None)
        else:
            return atom
        if least > _MAX_LEAST:
            raise PatternUnsupported(self.text)
        if self._peek() in ("?", "+"):
            self.at += 1  # lazy or possessive: the same strings match
        return ("rep", atom, least, most)

    def _group(self) -> RegexNode | None:
        if self._peek() == "?":
            self.at += 1
            kind = self._next()
            named = kind == "P" and self._peek() == "<"
            if named or (kind == "<" and self._peek() not in ("=", "!", "")):
                while self._next() != ">":  # a named group
                    pass
            elif kind.isalpha() or kind == "-":  # inline flags: (?i) or (?i:…)
                while self._peek().isalpha() or self._peek() == "-":
                    self.at += 1
                if self._next() == ")":
                    return None
            elif kind != ":":
                raise PatternUnsupported(self.text)  # lookarounds
        node = self._alternation()
        if self._next() != ")":
            raise PatternUnsupported(self.text)
        return node

    def _escape(self) -> RegexNode | None:
        char = self._next()
        if char in _SHORTHANDS:
            return ("set", False, _SHORTHANDS[char])
        if char.lower() in _SHORTHANDS:
            return ("set", True, _SHORTHANDS[char.lower()])
        if char in ("b", "B"):
            return None
        return ("lit", self._escaped(char))

    def _escaped(self, char: str) -> str:
        if char in _CONTROL_ESCAPES:
            return _CONTROL_ESCAPES[char]
        if char in ("u", "x"):
            size = 4 if char == "u" else 2
            digits = self.text[self.at : self.at + size]
            if len(digits) != size or not set(digits) <= _HEX:
                raise PatternUnsupported(self.text)
            self.at += size
            return chr(int(digits, 16))
        if char.isalnum():
            raise PatternUnsupported(self.text)  # back-references, \p{…}, \k<…>, \c…
        return char

    def _class(self) -> RegexNode:
        negated = self._peek() == "^"
        self.at += negated
        ranges: Ranges = []
        first = True
        while (char := self._next()) != "]" or first:
            first = False
            if char == "\\":
                escaped = self._next()
                if escaped in _SHORTHANDS:
                    ranges += _SHORTHANDS[escaped]
                    continue
                char = "\b" if escaped == "b" else self._escaped(escaped)
            low = high = ord(char)
            if self._peek() == "-" and self._peek(1) not in ("]", ""):
                self.at += 1
                end = self._next()
                high = ord(self._escaped(self._next()) if end == "\\" else end)
                if high < low:
                    raise PatternUnsupported(self.text)
            ranges.append((low, high))
        return ("set", negated, ranges)


def _pick_char(negated: bool, ranges: Ranges, rng: random.Random) -> str:
    inside = [c for c in _POOL if any(lo <= ord(c) <= hi for lo, hi in ranges)]
    if negated:
        outside = [c for c in _POOL if c not in inside]
        if not outside:
            raise PatternUnsupported("a class that excludes every character the demo writes")
        return rng.choice(outside)
    if inside:
        return rng.choice(inside)
    total = sum(hi - lo + 1 for lo, hi in ranges)
    pick = rng.randrange(total)
    for lo, hi in ranges:
        if pick <= hi - lo:
            char = chr(lo + pick)
            if not 0xD800 <= lo + pick <= 0xDFFF:
                return char
            break
        pick -= hi - lo + 1
    raise PatternUnsupported("a class of surrogates")


def write_match(node: RegexNode, rng: random.Random, out: list[str]) -> None:
    """Appends to `out` a string the pattern `node` was read from matches in full."""
    kind = node[0]
    if kind == "lit":
        out.append(node[1])
    elif kind == "set":
        out.append(_pick_char(node[1], node[2], rng))
    elif kind == "seq":
        for item in node[1]:
            write_match(item, rng, out)
    elif kind == "alt":
        write_match(rng.choice(node[1]), rng, out)
    else:
        _, item, least, most = node
        top = least + _MAX_REPEAT if most is None else min(most, least + _MAX_REPEAT)
        for _ in range(rng.randint(least, max(least, top))):
            write_match(item, rng, out)


# -- values for a JSON Schema -----------------------------------------------------------

_MAX_DEPTH = 32  # nesting past which the demo writes null, whatever the schema asks
_MAX_REFS = 64  # references followed on one path (cycles among definitions end there)
_MAX_ONE_OF = 8  # branches of a oneOf tried for a value only one of them takes
_LOWER = frozenset({"minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties"})
_UPPER = frozenset({"maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties"})
_IMPLIED_TYPES = (
    (("properties", "required", "additionalProperties", "patternProperties"), "object"),
    (("items", "prefixItems", "minItems", "maxItems", "contains"), "array"),
    (("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"), "number"),
)
Bound = tuple[float, bool] | None  # a limit, and whether it is exclusive


def _date(rng: random.Random) -> str:
    return f"{rng.randint(2020, 2026):04d}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def _clock(rng: random.Random) -> str:
    return f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}"


def _url(rng: random.Random) -> str:
    return f"https://example.com/{rng.choice(_ASCII_WORDS)}"


def _email(rng: random.Random) -> str:
    return f"{rng.choice(_ASCII_WORDS)}@example.com"


_FORMATS: dict[str, Callable[[random.Random], str]] = {
    "date": _date,
    "date-time": lambda rng: f"{_date(rng)}T{_clock(rng)}Z",
    "time": lambda rng: f"{_clock(rng)}Z",
    "duration": lambda rng: f"P{rng.randint(1, 30)}D",
    "email": _email,
    "idn-email": _email,
    "hostname": lambda rng: f"{rng.choice(_ASCII_WORDS)}.example.com",
    "idn-hostname": lambda rng: f"{rng.choice(_ASCII_WORDS)}.example.com",
    "uri": _url,
    "url": _url,
    "iri": _url,
    "uri-reference": _url,
    "iri-reference": _url,
    "uuid": lambda rng: str(uuid.UUID(int=rng.getrandbits(128), version=4)),
    "ipv4": lambda rng: f"192.0.2.{rng.randint(1, 254)}",
    "ipv6": lambda rng: f"2001:db8::{rng.randint(1, 0xFFFF):x}",
    "json-pointer": lambda rng: f"/{rng.choice(_ASCII_WORDS)}",
}


def _number_value(value: Any) -> int | float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _pointer(root: Any, ref: str) -> Any:
    """The subschema a local `$ref` names (`#`, `#/$defs/X`, `#/definitions/X` …); an empty
    schema for a reference the demo cannot follow."""
    fragment = ref.partition("#")[2] if ref.startswith("#") else None
    if fragment is None or (fragment and not fragment.startswith("/")):
        return {}
    node = root
    for raw in fragment.split("/")[1:]:
        key = unquote(raw).replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            return {}
    return node


def _types(kind: Any) -> list[str]:
    if isinstance(kind, str):
        return [kind]
    return [k for k in kind if isinstance(k, str)] if isinstance(kind, list) else []


def _common_type(a: Any, b: Any) -> Any:
    theirs = _types(b)
    common = [t for t in _types(a) if t in theirs]
    common += ["integer" for t in _types(a) if t == "number" and "integer" in theirs]
    common += ["integer" for t in _types(a) if t == "integer" and "number" in theirs]
    common = list(dict.fromkeys(common))
    if not common:
        return a
    return common[0] if len(common) == 1 else common


def _merge_keyword(key: str, mine: Any, theirs: Any) -> Any:
    if key == "properties" and isinstance(mine, dict) and isinstance(theirs, dict):
        both = {n: {"allOf": [mine[n], s]} if n in mine else s for n, s in theirs.items()}
        return {**mine, **both}
    if key in ("required", "allOf") and isinstance(mine, list) and isinstance(theirs, list):
        return list(dict.fromkeys([*mine, *theirs])) if key == "required" else [*mine, *theirs]
    if key == "type":
        return _common_type(mine, theirs)
    a, b = _number_value(mine), _number_value(theirs)
    if a is not None and b is not None and key in _LOWER | _UPPER:
        return max(a, b) if key in _LOWER else min(a, b)
    return mine


def merge_schemas(a: Any, b: Any) -> Any:
    """One schema asking what both ask (`allOf`, a `$ref` beside other keywords), as far as
    the common keywords go."""
    if a is False or b is False:
        return False
    if not isinstance(a, dict):
        return b if isinstance(b, dict) else {}
    if not isinstance(b, dict):
        return a
    merged = dict(a)
    for key, value in b.items():
        merged[key] = _merge_keyword(key, merged[key], value) if key in merged else value
    return merged


def _bound(schema: dict[str, Any], inclusive_key: str, exclusive_key: str) -> Bound:
    """One side's limit, from both spellings (draft 4's boolean `exclusiveMinimum` too)."""
    inclusive = _number_value(schema.get(inclusive_key))
    raw = schema.get(exclusive_key)
    if raw is True and inclusive is not None:
        return inclusive, True
    exclusive = _number_value(raw)
    if exclusive is None:
        return None if inclusive is None else (inclusive, False)
    if inclusive is None:
        return exclusive, True
    lower = inclusive_key == "minimum"
    tighter = exclusive >= inclusive if lower else exclusive <= inclusive
    return (exclusive, True) if tighter else (inclusive, False)


def _within(value: float, low: Bound, high: Bound) -> bool:
    if low is not None and (value <= low[0] if low[1] else value < low[0]):
        return False
    return high is None or (value < high[0] if high[1] else value <= high[0])


def _span(lo: float | None, hi: float | None) -> tuple[float, float]:
    """The range values come from: the schema's, or around it a hundred wide."""
    if lo is None and hi is None:
        return 1, 100
    if lo is None:
        assert hi is not None
        return (hi - 99 if hi < 1 else max(1, hi - 99)), hi
    return lo, lo + 99 if hi is None else hi


def _is_multiple(value: float, step: float) -> bool:
    """Whether `value` is a multiple of `step` as validators judge it in floating point."""
    if isinstance(step, float) or isinstance(value, float):
        quotient = value / step
        return math.isfinite(quotient) and int(quotient) == quotient
    return value % step == 0


def _nearby(start: int, first: int, last: int, count: int = 16) -> list[int]:
    steps = [start + (i + 1) // 2 * (1 if i % 2 else -1) for i in range(count * 2)]
    return [k for k in steps if first <= k <= last][:count] or [start]


def _cost(schema: Any) -> int:
    """How far a branch leads: null first, then one without references, then the rest."""
    if not isinstance(schema, dict):
        return 1
    if "null" in _types(schema.get("type")):
        return 0
    return 2 if "$ref" in json.dumps(schema) else 1


def _fits(text: str, least: int, most: int | None) -> bool:
    return len(text) >= least and (most is None or len(text) <= most)


class SchemaFiller:
    """Writes a value valid against a JSON Schema, every choice made by a seeded PRNG: all
    the properties (only the required ones once a definition recurs), one or two items per
    array, the first branch of `anyOf`/`oneOf` (the cheapest inside a recursion), numbers
    and strings within the schema's bounds, formats and patterns."""

    def __init__(self, root: Any, rng: random.Random) -> None:
        self.root = root
        self.rng = rng
        self._validator: Validator | None = None
        # The root without its definitions: what a definition repeating the root equals.
        self._root_body = (
            {k: v for k, v in root.items() if k not in ("$defs", "definitions")}
            if isinstance(root, dict)
            else root
        )

    def value(self) -> Any:
        """A value for the root schema."""
        return self.fill(self.root, ("#",), 0, False)

    def fill(self, schema: Any, refs: tuple[str, ...], depth: int, minimal: bool) -> Any:
        if depth > _MAX_DEPTH:
            return None
        schema, refs = self._resolve(schema, refs)
        if schema is False:
            return None
        if not isinstance(schema, dict):
            schema = {}
        minimal = minimal or len(set(refs)) < len(refs)
        if "const" in schema:
            return schema["const"]
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return self.rng.choice(enum)
        for keyword in ("anyOf", "oneOf"):
            if isinstance(schema.get(keyword), list) and schema[keyword]:
                return self._branch(keyword, schema, refs, depth, minimal)
        return self._typed(schema, refs, depth, minimal)

    def _typed(
        self, schema: dict[str, Any], refs: tuple[str, ...], depth: int, minimal: bool
    ) -> Any:
        kind = self._kind(schema, minimal)
        if kind == "object":
            return self._object(schema, refs, depth + 1, minimal)
        if kind == "array":
            return self._array(schema, refs, depth + 1, minimal)
        if kind == "integer":
            return self._integer(schema)
        if kind == "number":
            return self._number(schema)
        if kind == "boolean":
            return self.rng.random() < 0.5
        if kind == "null":
            return None
        return self._string(schema)

    def _resolve(self, schema: Any, refs: tuple[str, ...]) -> tuple[Any, tuple[str, ...]]:
        """`schema` with its `$ref` followed and its `allOf` merged in, and the references
        on the path so far."""
        while isinstance(schema, dict) and len(refs) <= _MAX_REFS:
            if isinstance(schema.get("$ref"), str):
                rest = {k: v for k, v in schema.items() if k != "$ref"}
                target = _pointer(self.root, schema["$ref"])
                # A definition that repeats the root (OpenAI's strict schemas inline the
                # root model and keep it in $defs too) recurses into the root.
                refs = (*refs, "#" if target == self._root_body else schema["$ref"])
                schema = merge_schemas(target, rest) if rest else target
            elif isinstance(schema.get("allOf"), list):
                merged: Any = {k: v for k, v in schema.items() if k != "allOf"}
                for part in schema["allOf"]:
                    part, refs = self._resolve(part, refs)
                    merged = merge_schemas(merged, part)
                schema = merged
            else:
                return schema, refs
        return (schema if not isinstance(schema, dict) else {}), refs

    @staticmethod
    def _kind(schema: dict[str, Any], minimal: bool) -> str:
        names = _types(schema.get("type"))
        if names:
            if minimal and "null" in names:
                return "null"
            return next((n for n in names if n != "null"), names[0])
        for keys, implied in _IMPLIED_TYPES:
            if any(k in schema for k in keys):
                return implied
        return "string"

    def _branch(
        self, keyword: str, schema: dict[str, Any], refs: tuple[str, ...], depth: int, minimal: bool
    ) -> Any:
        branches = schema[keyword]
        rest = {k: v for k, v in schema.items() if k != keyword}
        order = list(range(len(branches)))
        if minimal:
            order.sort(key=lambda i: _cost(branches[i]))
        if keyword == "anyOf" or len(branches) == 1:
            return self.fill(merge_schemas(rest, branches[order[0]]), refs, depth, minimal)
        # oneOf: the first value that only its own branch takes.
        first: list[Any] = []
        for i in order[:_MAX_ONE_OF]:
            value = self.fill(merge_schemas(rest, branches[i]), refs, depth, minimal)
            first = first or [value]
            taken = [self._valid(b, value) for b in branches]
            if taken[i] and sum(taken) == 1:
                return value
        return first[0]

    def _valid(self, schema: Any, value: Any) -> bool:
        if self._validator is None:
            self._validator = validator_for(self.root)(self.root)
        try:
            return bool(self._validator.evolve(schema=schema).is_valid(value))
        except Exception:  # a reference the validator cannot follow: no verdict
            return False

    def _object(
        self, schema: dict[str, Any], refs: tuple[str, ...], depth: int, minimal: bool
    ) -> dict[str, Any]:
        properties = schema.get("properties")
        properties = properties if isinstance(properties, dict) else {}
        required = schema.get("required")
        required = [n for n in required if isinstance(n, str)] if isinstance(required, list) else []
        names = [n for n in properties if not minimal or n in required]
        names += [n for n in required if n not in names]
        most = _count(schema.get("maxProperties"))
        if most is not None and len(names) > most:
            kept = set(required) | set(
                [n for n in names if n not in required][: most - len(required)]
            )
            names = [n for n in names if n in kept]
        value = {
            name: self.fill(properties.get(name, self._extra(schema, name)), refs, depth, minimal)
            for name in names
        }
        self._add_free_properties(value, schema, refs, depth, minimal)
        return value

    @staticmethod
    def _extra(schema: dict[str, Any], name: str) -> Any:
        """The schema of a property the `properties` keyword does not name."""
        patterns = schema.get("patternProperties")
        for pattern, sub in (patterns if isinstance(patterns, dict) else {}).items():
            try:
                if re.search(pattern, name):
                    return sub
            except re.error:
                continue
        extra = schema.get("additionalProperties", True)
        return extra if isinstance(extra, dict) else {}

    def _add_free_properties(
        self,
        value: dict[str, Any],
        schema: dict[str, Any],
        refs: tuple[str, ...],
        depth: int,
        minimal: bool,
    ) -> None:
        """Properties beyond the named ones: as many as `minProperties` asks, and one or two
        for a map (an object whose only schema is `additionalProperties`)."""
        extra = schema.get("additionalProperties", True)
        if extra is False:
            return
        wanted = (_count(schema.get("minProperties")) or 0) - len(value)
        if isinstance(extra, dict) and not schema.get("properties") and not minimal:
            wanted = max(wanted, self.rng.randint(1, 2))
        most = _count(schema.get("maxProperties"))
        if most is not None:
            wanted = min(wanted, most - len(value))
        names = schema.get("propertyNames")
        for attempt in range(max(0, wanted) * 4):
            if wanted <= 0:
                break
            if isinstance(names, dict):
                name = self._string(names)
            else:
                name = f"{self.rng.choice(_ASCII_WORDS)}_{attempt + 1}"
            if name not in value:
                value[name] = self.fill(self._extra(schema, name), refs, depth, minimal)
                wanted -= 1

    def _array(
        self, schema: dict[str, Any], refs: tuple[str, ...], depth: int, minimal: bool
    ) -> list[Any]:
        prefix, items = schema.get("prefixItems"), schema.get("items", True)
        if isinstance(items, list):  # drafts before 2020-12 spell tuples this way
            prefix, items = items, schema.get("additionalItems", True)
        prefix = prefix if isinstance(prefix, list) else []
        least = _count(schema.get("minItems")) or 0
        most = _count(schema.get("maxItems"))
        if items is False:
            most = len(prefix) if most is None else min(most, len(prefix))
        count = least if minimal else max(least, len(prefix), self.rng.randint(1, 2))
        if most is not None:
            count = min(count, most)
        contains = schema.get("contains")
        values: list[Any] = []
        seen: set[str] = set()
        for i in range(count):
            sub = prefix[i] if i < len(prefix) else items
            if i == len(prefix) and contains is not None:
                sub = merge_schemas(sub, contains)
            for _ in range(16 if schema.get("uniqueItems") is True else 1):
                item = self.fill(sub, refs, depth, minimal)
                key = json.dumps(item, sort_keys=True)
                if key not in seen:
                    break
            seen.add(key)
            values.append(item)
        return values

    def _string(self, schema: dict[str, Any]) -> str:
        least = _count(schema.get("minLength")) or 0
        most = _count(schema.get("maxLength"))
        pattern = schema.get("pattern")
        if isinstance(pattern, str):
            found = self._matching(pattern, least, most)
            if found is not None:
                return found
        fmt = schema.get("format")
        maker = _FORMATS.get(fmt) if isinstance(fmt, str) else None
        text = maker(self.rng) if maker is not None else self._words()
        if len(text) < least:
            words = [text]
            while sum(map(len, words)) + len(words) - 1 < least:
                words.append(self.rng.choice(VOCABULARY))
            text = " ".join(words)
        return text if most is None else text[:most]

    def _words(self) -> str:
        return " ".join(self.rng.choice(VOCABULARY) for _ in range(self.rng.randint(1, 3)))

    def _matching(self, pattern: str, least: int, most: int | None) -> str | None:
        """A string the pattern matches within the length bounds: written from the pattern,
        or one of a few fixed strings if it matches them; None when neither works."""
        try:
            compiled: re.Pattern[str] | None = re.compile(pattern)
        except re.error:
            compiled = None  # beyond Python's dialect: the written string goes unchecked
        try:
            node = RegexReader(pattern).read()
            for _ in range(8):
                out: list[str] = []
                write_match(node, self.rng, out)
                text = "".join(out)
                if _fits(text, least, most) and (compiled is None or compiled.search(text)):
                    return text
        except PatternUnsupported:
            pass
        for text in (self._words(), "demo", "0", "a", ""):
            if compiled is not None and compiled.search(text) and _fits(text, least, most):
                return text
        return None

    def _integer(self, schema: dict[str, Any]) -> int:
        low = _bound(schema, "minimum", "exclusiveMinimum")
        high = _bound(schema, "maximum", "exclusiveMaximum")
        lo = None if low is None else math.floor(low[0]) + 1 if low[1] else math.ceil(low[0])
        hi = None if high is None else math.ceil(high[0]) - 1 if high[1] else math.floor(high[0])
        first, last = (int(x) for x in _span(lo, hi))
        step = _number_value(schema.get("multipleOf"))
        if step is not None and step > 0:
            return int(self._stepped(step, first, last, low, high, integral=True))
        return self.rng.randint(first, max(first, last))

    def _number(self, schema: dict[str, Any]) -> float:
        low = _bound(schema, "minimum", "exclusiveMinimum")
        high = _bound(schema, "maximum", "exclusiveMaximum")
        lo, hi = _span(None if low is None else low[0], None if high is None else high[0])
        step = _number_value(schema.get("multipleOf"))
        if step is not None and step > 0:
            return self._stepped(step, lo, hi, low, high, integral=False)
        value = round(self.rng.uniform(lo, hi), 2)
        return value if _within(value, low, high) else (lo + hi) / 2

    def _stepped(
        self, step: float, lo: float, hi: float, low: Bound, high: Bound, *, integral: bool
    ) -> float:
        """A multiple of `step` within the bounds (an integer one when `integral`)."""
        exact = Fraction(str(step))
        if integral:
            exact = Fraction(exact.numerator)  # the least multiple that is an integer
        first = math.ceil(Fraction(lo) / exact)
        last = max(first, math.floor(Fraction(hi) / exact))
        whole = integral or isinstance(step, int)
        fallback: float | None = None
        for k in _nearby(self.rng.randint(first, last), first, last):
            multiple = k * exact
            value = int(multiple) if whole and multiple.denominator == 1 else float(multiple)
            if _within(value, low, high) and _is_multiple(value, step):
                return value
            fallback = value if fallback is None else fallback
        assert fallback is not None
        return fallback


class DemoProvider:
    """Deterministic text; reasoning first when the request asks for it; a tool call (its
    JSON arguments streamed in fragments, filled in from the tool's schema) when the
    request offers tools; JSON in token-sized fragments when the request asks for JSON
    (valid against its schema, if it gives one)."""

    name = "demo"

    async def stream(
        self, request: GenerationRequest, entry: ModelEntry
    ) -> AsyncGenerator[ev.Event, None]:
        rng = _rng(request)
        events: list[ev.Event] = []
        texts: Iterable[str] = ()  # the answer's text, after `events`
        if request.reasoning and entry.reasoning_tokens:
            thought = demo_tokens(request, entry.reasoning_tokens)
            events += [ev.ReasoningDelta(text=t) for t in thought]
            events.append(ev.ReasoningDelta(text="", signature=f"demo-{rng.getrandbits(64):x}"))
        tool = _tool_to_call(request)
        reason: ev.FinishReason
        if tool is not None:
            prompt = next((m.content for m in reversed(request.messages) if m.role == "user"), "")
            arguments = orjson.dumps(_demo_arguments(tool.parameters, rng, prompt)).decode()
            call_id = f"call_{rng.getrandbits(48):012x}"
            pieces = _fragments(arguments)
            events.append(
                ev.ToolCallDelta(index=0, id=call_id, name=tool.name, arguments=pieces[0])
            )
            events += [ev.ToolCallDelta(index=0, arguments=p) for p in pieces[1:]]
            reason = "tool_calls"
            output_tokens = len(pieces)
        elif (fmt := request.response_format) is not None and fmt.type != "text":
            pieces = json_tokens(json_answer(request, fmt, entry))
            reason = "stop"
            if request.max_tokens is not None and request.max_tokens < len(pieces):
                pieces, reason = pieces[: request.max_tokens], "length"
            texts = pieces
            output_tokens = len(pieces)
        else:
            count = entry.max_output_tokens
            reason = "stop"
            if request.max_tokens is not None and request.max_tokens < count:
                count, reason = request.max_tokens, "length"
            texts = answer_words(request, count)
            output_tokens = count

        def in_order() -> Iterator[ev.Event]:
            # The answer's deltas are made as they go out: a slow, long answer holds
            # no event it has not sent yet.
            yield from events
            for text in texts:
                yield ev.text_delta(text)

        loop = asyncio.get_running_loop()
        start = loop.time() + entry.first_token_delay_ms / 1000
        interval = 1 / entry.tokens_per_second if entry.tokens_per_second else 0.0
        for i, event in enumerate(in_order()):
            # Pace against absolute deadlines so the rate does not drift with scheduling.
            delay = start + i * interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            yield event
        usage = ev.Usage(input_tokens=_count_input_tokens(request), output_tokens=output_tokens)
        yield ev.Finish(reason=reason, usage=usage)
