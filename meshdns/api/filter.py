"""Consul's filter expression language (`?filter=`): parsed once per request, then run on each entry.

The grammar is Consul's (go-bexpr): `or` binds loosest, then `and`, then `not`, then
parentheses and match expressions:

    <Selector> == <Value>        <Selector> != <Value>
    <Selector> is empty          <Selector> is not empty
    <Value> in <Selector>        <Value> not in <Selector>
    <Selector> contains <Value>  <Selector> not contains <Value>
    <Selector> matches <Value>   <Selector> not matches <Value>

A selector is `Name(.Name | ["map key"])*`; a value is a "string", a `raw string`, a
number, or a bare word. Selectors are checked against the endpoint's schema (the
fields of the JSON it returns) when the expression is parsed, so a typo is a 400
naming it rather than an empty answer. A selector that goes through a list of
objects (`Checks.Status`) matches when any element does; a map key that is absent
matches only the negative operators, as in Consul.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from ..catalog.validate import FieldError

FIELD = "filter"


@dataclass(frozen=True, slots=True)
class ListOf:
    item: Any


@dataclass(frozen=True, slots=True)
class MapOf:
    value: Any


# A schema is str, int, bool, ListOf(schema), MapOf(schema), or a dict of field name -> schema.
Schema = Any
Predicate = Callable[[Any], bool]

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<paren>[()])
  | (?P<op>==|!=)
  | (?P<string>"(?:[^"\\]|\\.)*"|`[^`]*`)
  | (?P<number>-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?![A-Za-z0-9_.]))
  | (?P<selector>[A-Za-z][A-Za-z0-9_]*(?:\.[A-Za-z][A-Za-z0-9_]*|\.[0-9]+|\[\s*(?:"(?:[^"\\]|\\.)*"|`[^`]*`)\s*\])*)
""", re.VERBOSE)
_PART = re.compile(r"""\.?([A-Za-z0-9_]+)|\[\s*("(?:[^"\\]|\\.)*"|`[^`]*`)\s*\]""")

_TYPE_NAMES = {str: "a string", int: "an integer", bool: "a boolean"}
_BOOLS = {"1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True,
          "0": False, "f": False, "F": False, "FALSE": False, "false": False, "False": False}
_MISSING = object()
_EACH = object()


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str   # paren | op | string | number | selector | end
    text: str
    column: int

    def word(self, *words: str) -> bool:
        return self.kind == "selector" and self.text in words


def _error(column: int, message: str) -> FieldError:
    return FieldError(FIELD, f"column {column}: {message}")


def _tokens(text: str) -> list[_Token]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            if text[pos] in "\"`":
                raise _error(pos + 1, "unterminated string")
            raise _error(pos + 1, f"unexpected {text[pos]!r}")
        if m.lastgroup != "ws":
            out.append(_Token(m.lastgroup, m.group(), pos + 1))
        pos = m.end()
    out.append(_Token("end", "", len(text) + 1))
    return out


def _unquote(token: _Token) -> str:
    if token.text.startswith("`"):
        return token.text[1:-1]
    try:
        return json.loads(token.text)
    except ValueError:
        raise _error(token.column, f"invalid escape in {token.text} (use a `raw string` for regular expressions)") \
            from None


def _path(token: _Token) -> tuple[str, ...]:
    parts = []
    for m in _PART.finditer(token.text):
        parts.append(m.group(1) if m.group(1) is not None else _unquote(_Token("string", m.group(2), token.column)))
    return tuple(parts)


class _Parser:
    def __init__(self, text: str, schema: Schema):
        self.tokens = _tokens(text)
        self.i = 0
        self.schema = schema

    def peek(self, ahead: int = 0) -> _Token:
        return self.tokens[min(self.i + ahead, len(self.tokens) - 1)]

    def take(self) -> _Token:
        token = self.peek()
        self.i += 1
        return token

    def expect_word(self, word: str, after: str) -> None:
        token = self.take()
        if not token.word(word):
            raise _error(token.column, f"expected {word!r} after {after!r}")

    def parse(self) -> Predicate:
        if self.peek().kind == "end":
            raise _error(1, "empty expression")
        predicate = self.parse_or()
        token = self.peek()
        if token.kind != "end":
            raise _error(token.column, f"unexpected {token.text!r} (expected 'and', 'or' or the end)")
        return predicate

    def parse_or(self) -> Predicate:
        left = self.parse_and()
        while self.peek().word("or"):
            self.take()
            right = self.parse_and()
            left = (lambda a, b: lambda d: a(d) or b(d))(left, right)
        return left

    def parse_and(self) -> Predicate:
        left = self.parse_not()
        while self.peek().word("and"):
            self.take()
            right = self.parse_not()
            left = (lambda a, b: lambda d: a(d) and b(d))(left, right)
        return left

    def parse_not(self) -> Predicate:
        if self.peek().word("not"):
            self.take()
            inner = self.parse_not()
            return lambda d: not inner(d)
        if self.peek().kind == "paren" and self.peek().text == "(":
            opening = self.take()
            inner = self.parse_or()
            closing = self.take()
            if closing.text != ")":
                raise _error(opening.column, "unmatched '('")
            return inner
        return self.parse_match()

    def parse_match(self) -> Predicate:
        first = self.take()
        if first.kind not in ("selector", "string", "number"):
            raise _error(first.column, "expected a selector, a value or '('" if first.kind != "end"
                         else "expression ends early: expected a selector")
        op = self.peek()
        if op.kind == "op":
            self.take()
            return self.match(first, op.text, self.value(op.text))
        if op.word("is"):
            self.take()
            negated = self.peek().word("not")
            if negated:
                self.take()
            self.expect_word("empty", "is not" if negated else "is")
            return self.match(first, "is not empty" if negated else "is empty", None)
        negated = op.word("not")
        if negated:
            self.take()
            op = self.peek()
        if op.word("in"):
            self.take()
            selector = self.take()
            if selector.kind != "selector":
                raise _error(selector.column, f"expected a selector after {'not in' if negated else 'in'!r}")
            return self.match(selector, "not in" if negated else "in", self.raw_value(first))
        if op.word("contains", "matches"):
            self.take()
            name = ("not " if negated else "") + op.text
            return self.match(first, "not in" if name == "not contains" else "in" if name == "contains" else name,
                              self.value(name))
        raise _error(op.column, f"expected an operator after {first.text!r} (==, !=, is empty, in, contains, matches)"
                     if op.kind != "end" else f"expression ends after {first.text!r}: expected an operator")

    def value(self, after: str) -> str:
        token = self.take()
        if token.kind not in ("string", "number", "selector"):
            raise _error(token.column, f"expected a value after {after!r}")
        return self.raw_value(token)

    @staticmethod
    def raw_value(token: _Token) -> str:
        return _unquote(token) if token.kind == "string" else token.text

    def match(self, selector: _Token, op: str, raw: str | None) -> Predicate:
        if selector.kind != "selector":
            raise _error(selector.column, f"expected a selector, not the value {selector.text}")
        path = _path(selector)
        steps, kind = _resolve(self.schema, path, selector)
        test = _test(kind, op, raw, selector)
        absent = op in ("!=", "not in", "is empty", "not matches")   # an absent map key, as in Consul
        return lambda datum: any(absent if v is _MISSING else test(v) for v in _values(datum, steps))


def _resolve(schema: Schema, path: tuple[str, ...], token: _Token) -> tuple[tuple, Schema]:
    """The steps to walk from an entry to the selected value, and the selected value's schema."""
    steps: list = []
    kind = schema
    for n, part in enumerate(path):
        while isinstance(kind, ListOf) and isinstance(kind.item, dict):
            steps.append(_EACH)
            kind = kind.item
        where = ".".join(path[:n]) or "the entry"
        if isinstance(kind, MapOf):
            steps.append(part)
            kind = kind.value
        elif isinstance(kind, dict):
            if part not in kind:
                near = [f for f in kind if f.lower() == part.lower()]
                hint = f" (did you mean {near[0]}?)" if near else f"; {where} has {', '.join(sorted(kind))}"
                raise FieldError(FIELD, f"Selector {'.'.join(path)!r} is not valid{hint}")
            steps.append(part)
            kind = kind[part]
        else:
            raise FieldError(FIELD, f"Selector {'.'.join(path)!r} is not valid: {where} has no fields")
    return tuple(steps), kind


def _values(datum: Any, steps: tuple) -> Iterable[Any]:
    """Every value the steps reach (several through lists of objects); _MISSING for an absent key."""
    value = datum
    for n, step in enumerate(steps):
        if step is _EACH:
            for item in value or ():
                yield from _values(item, steps[n + 1:])
            return
        if not isinstance(value, Mapping) or step not in value:
            yield _MISSING
            return
        value = value[step]
    yield value


def _coerce(kind: Schema, raw: str, token: _Token) -> Any:
    if kind is bool:
        if raw not in _BOOLS:
            raise FieldError(FIELD, f"{token.text}: {raw!r} is not a boolean (true or false)")
        return _BOOLS[raw]
    if kind is int:
        try:
            return int(raw, 0)
        except ValueError:
            raise FieldError(FIELD, f"{token.text}: {raw!r} is not an integer") from None
    return raw


def _test(kind: Schema, op: str, raw: str | None, token: _Token) -> Callable[[Any], bool]:
    """The check one selected value must pass; operators that do not apply to its type are refused."""
    sel = token.text
    if op in ("is empty", "is not empty") and (kind is str or isinstance(kind, (ListOf, MapOf))):
        empty = op == "is empty"
        return lambda v: (not v) == empty
    if op in ("==", "!=") and kind in (str, int, bool):
        want = _coerce(kind, raw, token)
        equal = op == "=="
        return lambda v: (v == want and type(v) is type(want)) == equal
    if op in ("in", "not in"):
        inside = op == "in"
        if kind is str:
            return lambda v: (isinstance(v, str) and raw in v) == inside
        if isinstance(kind, ListOf) and kind.item in (str, int, bool):
            want = _coerce(kind.item, raw, token)
            return lambda v: (want in (v or ())) == inside
        if isinstance(kind, MapOf):
            return lambda v: (raw in (v or {})) == inside
    if op in ("matches", "not matches") and kind is str:
        try:
            pattern = re.compile(raw)
        except re.error as exc:
            raise FieldError(FIELD, f"{sel} {op} {raw!r}: not a regular expression ({exc})") from None
        found = op == "matches"
        return lambda v: (isinstance(v, str) and pattern.search(v) is not None) == found
    if isinstance(kind, dict):
        what = f"an object (select one of {', '.join(sorted(kind))})"
    else:
        what = "a list" if isinstance(kind, ListOf) else "a map" if isinstance(kind, MapOf) else _TYPE_NAMES[kind]
    raise FieldError(FIELD, f"operator {op!r} does not apply to {sel}, which is {what}")


@dataclass(frozen=True, slots=True)
class Filter:
    """A parsed expression; `Filter.parse(None or "")` keeps every entry (and is false)."""

    text: str
    matches: Predicate

    @classmethod
    def parse(cls, text: str | None, schema: Schema) -> "Filter":
        if not text:
            return cls("", lambda datum: True)
        return cls(text, _Parser(text, schema).parse())

    def __bool__(self) -> bool:
        return bool(self.text)

    def select(self, entries: Iterable[Any]) -> list[Any]:
        return [e for e in entries if self.matches(e)]

    def select_values(self, entries: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in entries.items() if self.matches(v)}
