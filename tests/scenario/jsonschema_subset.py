"""A small JSON Schema (draft 2020-12) validator for the keywords
kvmsim.scenario.schema emits; an unknown keyword is an error, so the schema
cannot use one this validator would silently ignore."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

_ANNOTATIONS = {"$schema", "$id", "$defs", "title", "description", "default"}
_TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "number": (int, float),
    "integer": int,
}


def _is(value: Any, t: str) -> bool:
    if t in ("integer", "number") and isinstance(value, bool):
        return False
    return isinstance(value, _TYPES[t])


def errors(
    value: Any, schema: dict[str, Any], root: dict[str, Any], path: str = ""
) -> Iterator[str]:
    """Every way *value* fails *schema* (empty: it validates)."""
    for key, arg in schema.items():
        if key in _ANNOTATIONS or key in ("then",):
            continue
        if key == "$ref":
            assert arg.startswith("#/$defs/"), arg
            yield from errors(value, root["$defs"][arg[8:]], root, path)
        elif key == "type":
            ts = arg if isinstance(arg, list) else [arg]
            if not any(_is(value, t) for t in ts):
                yield f"{path}: not {arg}"
        elif key == "enum":
            if not any(v == value and isinstance(v, bool) == isinstance(value, bool) for v in arg):
                yield f"{path}: {value!r} not in enum"
        elif key == "const":
            if value != arg:
                yield f"{path}: {value!r} != {arg!r}"
        elif key == "pattern":
            if isinstance(value, str) and not re.search(arg, value):
                yield f"{path}: {value!r} does not match {arg}"
        elif key == "minimum":
            if _is(value, "number") and value < arg:
                yield f"{path}: below {arg}"
        elif key == "multipleOf":
            if _is(value, "number") and value % arg:
                yield f"{path}: not a multiple of {arg}"
        elif key == "minLength":
            if isinstance(value, str) and len(value) < arg:
                yield f"{path}: shorter than {arg}"
        elif key == "required":
            if isinstance(value, dict):
                for k in arg:
                    if k not in value:
                        yield f"{path}: missing {k}"
        elif key in ("properties", "patternProperties", "additionalProperties"):
            if key == "properties" and isinstance(value, dict):
                yield from _object(value, schema, root, path)
            elif key != "properties" and "properties" not in schema and isinstance(value, dict):
                yield from _object(value, schema, root, path)
        elif key == "propertyNames":
            if isinstance(value, dict):
                for k in value:
                    yield from errors(k, arg, root, f"{path}.<{k}>")
        elif key == "items":
            if isinstance(value, list):
                for i, v in enumerate(value):
                    yield from errors(v, arg, root, f"{path}[{i}]")
        elif key == "uniqueItems":
            if arg and isinstance(value, list) and len({repr(v) for v in value}) != len(value):
                yield f"{path}: items not unique"
        elif key == "anyOf":
            if not any(not list(errors(value, s, root, path)) for s in arg):
                yield f"{path}: matches none of anyOf"
        elif key == "oneOf":
            n = sum(1 for s in arg if not list(errors(value, s, root, path)))
            if n != 1:
                yield f"{path}: matches {n} of oneOf"
        elif key == "allOf":
            for s in arg:
                yield from errors(value, s, root, path)
        elif key == "if":
            if not list(errors(value, arg, root, path)) and "then" in schema:
                yield from errors(value, schema["then"], root, path)
        else:
            raise AssertionError(f"keyword {key!r} is not supported by this validator")


def _object(
    value: dict[str, Any], schema: dict[str, Any], root: dict[str, Any], path: str
) -> Iterator[str]:
    props = schema.get("properties", {})
    patterns = schema.get("patternProperties", {})
    extra = schema.get("additionalProperties", True)
    for k, v in value.items():
        matched = False
        if k in props:
            matched = True
            yield from errors(v, props[k], root, f"{path}.{k}")
        for pat, s in patterns.items():
            if re.search(pat, k):
                matched = True
                yield from errors(v, s, root, f"{path}.{k}")
        if not matched:
            if extra is False:
                yield f"{path}: unknown key {k!r}"
            elif isinstance(extra, dict):
                yield from errors(v, extra, root, f"{path}.{k}")


def validate(value: Any, schema: dict[str, Any]) -> list[str]:
    return list(errors(value, schema, schema))
