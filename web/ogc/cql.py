"""CQL2 filters (OGC API - Features Part 3) as the API's own filter tree (web.params), so web.where stays the
one place where a filter becomes an Elasticsearch query.

The ``cql2`` library parses both encodings (text and JSON) and gives the standard's JSON form; this module
checks every property against the preset's queryables and every literal against the property's type, and
refuses what it does not translate, with a 400 that says why. Size and nesting are bounded before the
parser runs (the parser recurses).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from typing import Any

import cql2
import orjson
from shapely.geometry import shape
from shapely.geometry.polygon import orient

from geoiot.documents import DAY_MS, GEOMETRY
from web.params import (AllOf, AnyOf, BadRequest, Filter, InBox, InShape, IsNull, Like, Negation, OneOf, Range,
                        parse_bbox, parse_time_param)
from web.where import MAX_FILTER_VALUES

TEXT, JSON = "cql2-text", "cql2-json"
LANGUAGES = (TEXT, JSON)
MAX_FILTER_CHARS = 16_384
MAX_DEPTH = 32  # parentheses (text) or operators (JSON) inside each other
MAX_NOTS = 64
MAX_NODES = 1_024
MAX_VERTICES = 10_000
_ORDER = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "=": "=", "<>": "<>"}
_NUMBER = {"int", "float"}


def _text_depth(text: str) -> int:
    """The deepest parenthesis nesting outside quoted strings."""
    depth = deepest = 0
    quoted = False
    for c in text:
        if c == "'":
            quoted = not quoted
        elif not quoted and c == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif not quoted and c == ")":
            depth -= 1
    return deepest


def _json_size(node: Any) -> tuple[int, int]:
    """(depth in operators, nodes) of a CQL2-JSON value, without recursion."""
    deepest, nodes, stack = 0, 0, [(node, 0)]
    while stack:
        value, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            break
        if isinstance(value, dict):
            depth += "op" in value
            deepest = max(deepest, depth)
            stack.extend((v, depth) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth) for v in value)
    return deepest, nodes


def parse(text: str, language: str, fields: Mapping[str, str]) -> Filter:
    """``filter`` in ``language`` against ``fields`` (queryable name -> preset type) as a web.params filter."""
    if language not in LANGUAGES:
        raise BadRequest(f"filter-lang {language[:40]!r} must be one of {', '.join(LANGUAGES)}")
    if not text.strip():
        raise BadRequest("filter is empty")
    if len(text) > MAX_FILTER_CHARS:
        raise BadRequest(f"filter is {len(text)} characters long; at most {MAX_FILTER_CHARS}")
    if language == TEXT:
        if _text_depth(text) > MAX_DEPTH:
            raise BadRequest(f"filter nests parentheses deeper than {MAX_DEPTH}")
        if text.upper().split().count("NOT") > MAX_NOTS:
            raise BadRequest(f"filter has more than {MAX_NOTS} NOT")
        source: Any = text
    else:
        try:
            source = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"filter is not JSON: {str(exc)[:120]}") from None
        depth, nodes = _json_size(source)
        if depth > MAX_DEPTH or nodes > MAX_NODES:
            raise BadRequest(f"filter nests deeper than {MAX_DEPTH} operators or has more than {MAX_NODES} nodes")
        if not isinstance(source, (dict, bool)):
            raise BadRequest("a cql2-json filter is a JSON object (an operation) or a boolean")
    try:
        tree = cql2.Expr(source).to_json()
    except (KeyboardInterrupt, SystemExit, asyncio.CancelledError):
        raise
    except BaseException as exc:  # ParseError, ValidationError, ValueError; a Rust panic is a BaseException
        raise BadRequest(f"filter is not valid {language}: {' '.join(str(exc).split())[:300]}") from None
    depth, nodes = _json_size(tree)
    if depth > MAX_DEPTH or nodes > MAX_NODES:
        raise BadRequest(f"filter nests deeper than {MAX_DEPTH} operators or has more than {MAX_NODES} nodes")
    return Translator(fields).node(tree)


class Translator:
    """CQL2-JSON (as the cql2 library normalises it) to web.params filters, checked against ``fields``."""

    def __init__(self, fields: Mapping[str, str]) -> None:
        self.fields = fields

    def node(self, node: Any) -> Filter:
        if isinstance(node, bool):
            return AllOf(()) if node else Negation(AllOf(()))
        if not isinstance(node, dict) or "op" not in node:
            raise BadRequest(f"filter: expected a predicate, found {orjson.dumps(node).decode()[:80]}")
        op, args = str(node["op"]).lower(), node.get("args") or []
        if op in ("and", "or"):
            parts = tuple(self.node(a) for a in args)
            return AllOf(parts) if op == "and" else AnyOf(parts)
        if op == "not":
            return Negation(self.node(self._one(args, op)))
        if op in _ORDER:
            return self.comparison(op, args)
        if op == "like":
            name, kind = self.prop(args, op)
            pattern = args[1] if len(args) == 2 else None
            if kind != "string" or not isinstance(pattern, str):
                raise BadRequest(f"filter: LIKE compares a string property with a string pattern ({name} is {kind})")
            return Like(name, pattern)
        if op == "between":
            name, kind = self.prop(args, op)
            if len(args) != 3 or kind not in _NUMBER | {"time"}:
                raise BadRequest(f"filter: BETWEEN needs a number or time property and two bounds ({name} is {kind})")
            low, high = self.value(name, kind, args[1]), self.value(name, kind, args[2])
            if low > high:  # type: ignore[operator]
                raise BadRequest(f"filter: BETWEEN on {name} has its low bound above its high bound")
            return Range(name, kind, low, high)  # type: ignore[arg-type]
        if op == "in":
            name, kind = self.prop(args, op)
            values = args[1] if len(args) == 2 else None
            if not isinstance(values, list) or not values or len(values) > MAX_FILTER_VALUES:
                raise BadRequest(f"filter: IN needs a list of 1..{MAX_FILTER_VALUES} values")
            return OneOf(name, kind, tuple(dict.fromkeys(self.value(name, kind, v) for v in values)))
        if op == "isnull":
            name, _ = self.prop(args, op)
            return IsNull(name)
        if op.startswith("s_"):
            return self.spatial(op, args)
        if op.startswith("t_"):
            return self.temporal(op, args)
        raise BadRequest(f"filter: operator {op[:40]!r} is not supported (basic CQL2, S_INTERSECTS, S_WITHIN, "
                         "S_DISJOINT and T_BEFORE, T_AFTER, T_DURING, T_EQUALS, T_INTERSECTS on the time)")

    @staticmethod
    def _one(args: list[Any], op: str) -> Any:
        if len(args) != 1:
            raise BadRequest(f"filter: {op} takes one argument")
        return args[0]

    def prop(self, args: list[Any], op: str) -> tuple[str, str]:
        """The property an operation's first argument names, and its type."""
        first = args[0] if args else None
        if not isinstance(first, dict) or set(first) != {"property"} or not isinstance(first["property"], str):
            raise BadRequest(f"filter: {op} must have a property as its first argument")
        name = first["property"]
        kind = self.fields.get(name)
        if kind is None:
            raise BadRequest(f"filter: unknown property {name[:60]!r}; queryables: "
                             f"{', '.join(sorted(self.fields))}, {GEOMETRY}")
        return name, kind

    def value(self, name: str, kind: str, literal: Any) -> Any:
        """``literal`` as a value of ``name``'s type (times as epoch ms), or a 400 naming both."""
        wrong = BadRequest(f"filter: {orjson.dumps(literal).decode()[:60]} is not a {kind} value "
                           f"(property {name} is {kind})")
        if kind == "string":
            if not isinstance(literal, str):
                raise wrong
            return literal
        if kind == "bool":
            if not isinstance(literal, bool):
                raise wrong
            return literal
        if kind in _NUMBER:
            if isinstance(literal, bool) or not isinstance(literal, (int, float)) or not math.isfinite(literal):
                raise wrong
            if kind == "int":
                if literal != int(literal) or not -(2**63) <= int(literal) < 2**63:
                    raise wrong
                return int(literal)
            return float(literal)
        if kind == "time":
            return self.instant(name, literal)[0]
        raise wrong

    def instant(self, name: str, literal: Any) -> tuple[int, int]:
        """A TIMESTAMP (one millisecond) or DATE (the whole UTC day) as inclusive epoch ms bounds."""
        if isinstance(literal, dict) and set(literal) == {"timestamp"} and isinstance(literal["timestamp"], str):
            t = parse_time_param(literal["timestamp"], f"filter: timestamp of {name}")
            assert t is not None
            return t, t
        if isinstance(literal, dict) and set(literal) == {"date"} and isinstance(literal["date"], str):
            t = parse_time_param(literal["date"], f"filter: date of {name}")
            assert t is not None
            return t, t + DAY_MS - 1
        raise BadRequest(f"filter: {name} is a time; compare it with TIMESTAMP('...') or DATE('...')")

    def comparison(self, op: str, args: list[Any]) -> Filter:
        if len(args) != 2:
            raise BadRequest(f"filter: {op} takes two arguments")
        if not (isinstance(args[0], dict) and "property" in args[0]):
            args, op = [args[1], args[0]], _ORDER[op]  # literal op property: the mirrored comparison
        name, kind = self.prop(args, op)
        literal = args[1]
        if kind == "time":
            low, high = self.instant(name, literal)
            bounds = {"=": Range(name, kind, low, high), "<": Range(name, kind, high=low, include_high=False),
                      "<=": Range(name, kind, high=high), ">": Range(name, kind, low=high, include_low=False),
                      ">=": Range(name, kind, low=low)}
            if op == "<>":
                return AllOf((Negation(IsNull(name)), Negation(bounds["="])))
            return bounds[op]
        value = self.value(name, kind, literal)
        if op == "=":
            return OneOf(name, kind, (value,))
        if op == "<>":
            return AllOf((Negation(IsNull(name)), Negation(OneOf(name, kind, (value,)))))
        if kind == "bool":
            raise BadRequest(f"filter: {name} is a bool; compare it with = or <>")
        if op[0] == "<":
            return Range(name, kind, high=value, include_high=op == "<=")
        return Range(name, kind, low=value, include_low=op == ">=")

    def spatial(self, op: str, args: list[Any]) -> Filter:
        if op not in ("s_intersects", "s_within", "s_disjoint"):
            raise BadRequest(f"filter: {op.upper()} is not supported (S_INTERSECTS, S_WITHIN, S_DISJOINT are)")
        if len(args) != 2 or args[0] != {"property": GEOMETRY}:
            raise BadRequest(f"filter: {op.upper()} compares the property {GEOMETRY} with a geometry literal")
        area = self.geometry(args[1])
        # the features are points: in a geometry, within it and intersecting it are one
        return Negation(area) if op == "s_disjoint" else area

    @staticmethod
    def geometry(literal: Any) -> Filter:
        if isinstance(literal, dict) and set(literal) == {"bbox"} and isinstance(literal["bbox"], list):
            box = literal["bbox"]
            if len(box) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box):
                raise BadRequest("filter: BBOX needs 4 numbers (minLon, minLat, maxLon, maxLat)")
            return InBox(parse_bbox(",".join(repr(float(v)) for v in box)))
        kinds = ("Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon")
        if not isinstance(literal, dict) or literal.get("type") not in kinds:
            raise BadRequest(f"filter: a geometry is a BBOX or a GeoJSON {', '.join(kinds)}")
        vertices = 0
        stack = [literal.get("coordinates")]
        while stack:
            value = stack.pop()
            if isinstance(value, list) and value and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                         for v in value):
                vertices += 1
                if len(value) not in (2, 3) or not all(math.isfinite(v) for v in value) \
                        or not (-180 <= value[0] <= 180 and -90 <= value[1] <= 90):
                    raise BadRequest("filter: a coordinate must be lon,lat within -180..180, -90..90")
            elif isinstance(value, list) and value:
                stack.extend(value)
            else:
                raise BadRequest("filter: the geometry's coordinates are malformed")
            if vertices > MAX_VERTICES:
                raise BadRequest(f"filter: a geometry of more than {MAX_VERTICES} vertices")
        try:
            geom = shape(literal)
        except Exception as exc:
            raise BadRequest(f"filter: the geometry is malformed: {str(exc)[:100]}") from None
        if geom.is_empty or not geom.is_valid:
            raise BadRequest("filter: the geometry is empty or not valid (e.g. a self-intersecting polygon)")
        if geom.geom_type == "Polygon":
            geom = orient(geom, 1.0)  # counter-clockwise: Elasticsearch reads clockwise as crossing the antimeridian
        elif geom.geom_type == "MultiPolygon":
            geom = type(geom)([orient(p, 1.0) for p in geom.geoms])
        mapping = geom.__geo_interface__
        return InShape((mapping["type"], orjson.dumps(mapping["coordinates"]).decode()))

    def temporal(self, op: str, args: list[Any]) -> Filter:
        if len(args) != 2:
            raise BadRequest(f"filter: {op.upper()} takes two arguments")
        name, kind = self.prop(args, op)
        if kind != "time":
            raise BadRequest(f"filter: {op.upper()} needs a time property ({name} is {kind})")
        literal = args[1]
        if isinstance(literal, dict) and set(literal) == {"interval"} and isinstance(literal["interval"], list) \
                and len(literal["interval"]) == 2:
            ends = [None if e == ".." else self.instant(name, e if isinstance(e, dict) else
                                                         {"date" if isinstance(e, str) and len(e) == 10
                                                          else "timestamp": e})
                    for e in literal["interval"]]
            low, high = (ends[0][0] if ends[0] else None), (ends[1][1] if ends[1] else None)
        else:
            low, high = self.instant(name, literal)
        if op == "t_intersects":
            return Range(name, kind, low, high)
        if op == "t_during":
            return Range(name, kind, low, high, include_low=False, include_high=False)
        if op == "t_equals" and low == high:
            return OneOf(name, kind, (low,))
        if op == "t_before" and low is not None:
            return Range(name, kind, high=low, include_high=False)
        if op == "t_after" and high is not None:
            return Range(name, kind, low=high, include_low=False)
        raise BadRequest(f"filter: {op.upper()} with that operand is not supported (T_BEFORE, T_AFTER, "
                         "T_DURING, T_EQUALS of an instant, T_INTERSECTS are)")
