"""Tools: typed Python callables whose JSON schema comes from their signature and docstring.

A tool's arguments are validated before the call, so a wrong name, a missing argument or a wrongly
typed one becomes an error observation (SuccCalling = 0) instead of an exception in the worker.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_JSON_TYPES: dict[Any, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    list: "array",
    dict: "object",
}


class ToolError(Exception):
    """Raised by a tool for a failure the agent should read as an observation."""


def _json_type(annotation: Any) -> dict[str, Any]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _json_type(args[0])
        return {"anyOf": [_json_type(a) for a in args]}
    if origin is typing.Literal:
        values = list(typing.get_args(annotation))
        return {"type": _JSON_TYPES.get(type(values[0]), "string"), "enum": values}
    if origin in (list, tuple):
        inner = typing.get_args(annotation)
        schema: dict[str, Any] = {"type": "array"}
        if inner:
            schema["items"] = _json_type(inner[0])
        return schema
    if origin is dict:
        return {"type": "object"}
    if annotation in _JSON_TYPES:
        return {"type": _JSON_TYPES[annotation]}
    raise TypeError(f"unsupported tool argument type {annotation!r}")


def _param_docs(doc: str) -> dict[str, str]:
    """Parse ``name: description`` lines of an Args: section (Google style)."""
    docs: dict[str, str] = {}
    in_args = False
    for line in doc.splitlines():
        stripped = line.strip()
        if stripped.lower() in ("args:", "arguments:", "parameters:"):
            in_args = True
            continue
        if in_args:
            m = re.match(r"^(\w+)\s*(?:\([^)]*\))?:\s*(.+)$", stripped)
            if m:
                docs[m.group(1)] = m.group(2)
            elif stripped and not line.startswith((" ", "\t")):
                in_args = False
    return docs


@dataclass
class Tool:
    """A callable the agent may use, with its OpenAI function-calling schema."""

    name: str
    fn: Callable[..., Any]
    description: str
    parameters: dict[str, Any]
    required: list[str] = field(default_factory=list)

    @classmethod
    def from_callable(cls, fn: Callable[..., Any], name: str | None = None) -> Tool:
        sig = inspect.signature(fn)
        hints = typing.get_type_hints(fn)
        doc = inspect.getdoc(fn) or ""
        pdocs = _param_docs(doc)
        props: dict[str, Any] = {}
        required: list[str] = []
        for pname, param in sig.parameters.items():
            if pname in ("self", "state") or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            if pname not in hints:
                raise TypeError(f"tool {fn.__name__}: argument {pname!r} has no type hint")
            schema = _json_type(hints[pname])
            if pname in pdocs:
                schema["description"] = pdocs[pname]
            props[pname] = schema
            if param.default is inspect.Parameter.empty:
                required.append(pname)
        summary = doc.split("\n\n")[0].strip() if doc else fn.__name__
        return cls(name=name or fn.__name__, fn=fn, description=summary, parameters=props, required=required)

    def schema(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": {"type": "object", "properties": self.parameters, "required": self.required},
            },
        }

    def validate(self, arguments: Any) -> str | None:
        """Return why ``arguments`` do not fit the schema, or None if they do."""
        if not isinstance(arguments, dict):
            return f"arguments of {self.name} must be a JSON object, got {type(arguments).__name__}"
        unknown = sorted(set(arguments) - set(self.parameters))
        if unknown:
            return f"{self.name} has no argument {unknown[0]!r}; it takes {sorted(self.parameters)}"
        for name in self.required:
            if name not in arguments:
                return f"{self.name} is missing the required argument {name!r}"
        for name, value in arguments.items():
            problem = _check_value(value, self.parameters[name])
            if problem:
                return f"argument {name!r} of {self.name}: {problem}"
        return None


def _check_value(value: Any, schema: dict[str, Any]) -> str | None:
    if "anyOf" in schema:
        if all(_check_value(value, s) for s in schema["anyOf"]):
            return f"{value!r} matches none of the allowed types"
        return None
    if "enum" in schema and value not in schema["enum"]:
        return f"{value!r} is not one of {schema['enum']}"
    kind = schema.get("type")
    ok = {
        "string": isinstance(value, str),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, int | float) and not isinstance(value, bool),
        "boolean": isinstance(value, bool),
        "array": isinstance(value, list),
        "object": isinstance(value, dict),
    }.get(kind, True)
    return None if ok else f"expected {kind}, got {type(value).__name__}"


def tool(fn: Callable[..., Any] | None = None, *, name: str | None = None):
    """Decorator marking a function (or a suite method) as a tool; the schema is built at once."""

    def wrap(f: Callable[..., Any]) -> Callable[..., Any]:
        Tool.from_callable(f, name)  # fail at import time on a bad signature
        f.__steprl_tool__ = name or f.__name__  # type: ignore[attr-defined]
        return f

    return wrap(fn) if fn is not None else wrap
