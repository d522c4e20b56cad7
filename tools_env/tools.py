"""Tools: Python callables with a JSON Schema (OpenAI function format) for their arguments.

The schema comes from the signature and docstring (``Tool.from_callable``: type hints become nested
JSON Schema) or is given as it is (``Tool.from_schema``: an OpenAI function schema bound to a
callable). Either way a call's arguments are validated against the whole schema with ``jsonschema``
before the call (nested arrays and objects, number vs integer, enums, required, additional
properties), so a call a strict API would reject becomes an error observation (SuccCalling = 0)
instead of running, and a tool's own failure is an observation instead of an exception in the worker.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jsonschema

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
    """The JSON Schema of a type hint, nested all the way down (``list[int]`` checks its items)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return {}
    if annotation is type(None):
        return {"type": "null"}
    if origin is typing.Annotated:
        return _json_type(args[0])
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        schema = _json_type(inner[0]) if len(inner) == 1 else {"anyOf": [_json_type(a) for a in inner]}
        return {"anyOf": [schema, {"type": "null"}]} if len(inner) < len(args) else schema
    if origin is typing.Literal:
        values = list(args)
        kinds = sorted({_JSON_TYPES.get(type(v), "string") for v in values})
        return {"type": kinds[0] if len(kinds) == 1 else kinds, "enum": values}
    if origin in (list, set, frozenset, Sequence) or annotation in (list, set, frozenset):
        return {"type": "array", **({"items": _json_type(args[0])} if args else {})}
    if origin is tuple or annotation is tuple:
        if not args:
            return {"type": "array"}
        if len(args) == 2 and args[1] is Ellipsis:
            return {"type": "array", "items": _json_type(args[0])}
        return {"type": "array", "prefixItems": [_json_type(a) for a in args], "items": False,
                "minItems": len(args)}  # fmt: skip
    if origin in (dict, Mapping) or annotation is dict:
        if args and args[0] is not str:
            raise TypeError(f"JSON object keys are strings; unsupported tool argument type {annotation!r}")
        return {"type": "object", **({"additionalProperties": _json_type(args[1])} if args else {})}
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


class ToolSchemaError(ValueError):
    """A tool's schema is not valid JSON Schema, or does not fit the callable it is bound to."""


@dataclass
class Tool:
    """A callable the agent may use, with its OpenAI function-calling schema.

    ``fn(state, **arguments)`` runs the call. ``parameters``/``required`` are the properties of the
    arguments object; ``input_schema`` is that whole object schema when it was given as JSON Schema
    (it wins over the two), else it is built from them with ``additionalProperties: false``.
    """

    name: str
    fn: Callable[..., Any]
    description: str
    parameters: dict[str, Any]
    required: list[str] = field(default_factory=list)
    input_schema: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        schema = self.arguments_schema()
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as e:
            raise ToolSchemaError(
                f"tool {self.name!r}: its parameters are not valid JSON Schema: {e.message}"
            ) from e
        self._validator = jsonschema.Draft202012Validator(schema)

    def arguments_schema(self) -> dict[str, Any]:
        """The JSON Schema every call's arguments object is validated against."""
        if self.input_schema is not None:
            return self.input_schema
        return {"type": "object", "properties": self.parameters, "required": self.required,
                "additionalProperties": False}  # fmt: skip

    @classmethod
    def from_schema(cls, schema: Mapping[str, Any], fn: Callable[..., Any]) -> Tool:
        """An OpenAI function schema (``{"type": "function", "function": {...}}`` or the inner
        ``{"name", "description", "parameters"}``) bound to ``fn``. ``fn`` receives the session
        state first if its first parameter is named ``state``, then the arguments as keywords."""
        spec = schema.get("function", schema) if schema.get("type") == "function" else schema
        name = spec.get("name")
        if not isinstance(name, str) or not name:
            raise ToolSchemaError(f"a tool schema needs a 'name': {dict(schema)!r:.200}")
        params = dict(spec.get("parameters") or {"type": "object", "properties": {}})
        if params.get("type") != "object":
            raise ToolSchemaError(
                f"tool {name!r}: 'parameters' must be an object schema, got {params.get('type')!r}"
            )
        props, required = dict(params.get("properties", {})), list(params.get("required", []))
        takes_state, accepted, var_kw, needed = _signature(fn)
        unknown = sorted(set(props) - accepted) if not var_kw else []
        missing = sorted(needed - set(required))
        if unknown or missing:
            what = (
                f"takes no argument(s) {unknown}"
                if unknown
                else f"needs {missing}, not required by the schema"
            )
            raise ToolSchemaError(f"tool {name!r}: {getattr(fn, '__name__', fn)!r} {what}")
        call = fn if takes_state else (lambda state, **kwargs: fn(**kwargs))
        return cls(name, call, str(spec.get("description", name)), props, required, params)

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
        """The OpenAI function-calling schema (what the prompt shows)."""
        params = self.arguments_schema()
        if self.input_schema is None:  # keep hint-built prompts short: no additionalProperties key
            params = {"type": "object", "properties": self.parameters, "required": self.required}
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": params}}  # fmt: skip

    def validate(self, arguments: Any) -> str | None:
        """Return why ``arguments`` do not fit the schema (one line, the first problem), or None."""
        if not isinstance(arguments, dict):
            return f"arguments of {self.name} must be a JSON object, got {type(arguments).__name__}"
        schema = self.arguments_schema()
        props = schema.get("properties", {})
        if schema.get("additionalProperties") is False:
            unknown = sorted(set(arguments) - set(props))
            if unknown:
                return f"{self.name} has no argument {unknown[0]!r}; it takes {sorted(props)}"
        for name in schema.get("required", []):
            if name not in arguments:
                return f"{self.name} is missing the required argument {name!r}"
        error = jsonschema.exceptions.best_match(self._validator.iter_errors(arguments))
        if error is None:
            return None
        where = "".join(f"[{p!r}]" for p in list(error.absolute_path)[1:])
        arg = (
            f"argument {error.absolute_path[0]!r}{where} of {self.name}" if error.absolute_path else self.name
        )
        return f"{arg}: {error.message}"


def _signature(fn: Callable[..., Any]) -> tuple[bool, set[str], bool, set[str]]:
    """(first parameter is ``state``, keyword names it accepts, has ``**kwargs``, names it requires)."""
    params = list(inspect.signature(fn).parameters.values())
    takes_state = bool(params) and params[0].name == "state"
    rest = params[1:] if takes_state else params
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    accepted = {p.name for p in rest if p.kind in kinds}
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in rest)
    needed = {p.name for p in rest if p.kind in kinds and p.default is inspect.Parameter.empty}
    return takes_state, accepted, var_kw, needed


def tool(
    fn: Callable[..., Any] | None = None, *, name: str | None = None, schema: Mapping[str, Any] | None = None
):
    """Decorator marking a function (or a suite method) as a tool; the schema is built at once.

    ``schema``: an OpenAI function schema to use instead of the type hints (its name wins).
    """

    def wrap(f: Callable[..., Any]) -> Callable[..., Any]:
        if schema is not None:
            spec = schema.get("function", schema)
            f.__steprl_schema__ = dict(schema)  # type: ignore[attr-defined]
            f.__steprl_tool__ = spec.get("name") or name or f.__name__  # type: ignore[attr-defined]
            bound = Tool.from_schema({**spec, "name": f.__steprl_tool__}, lambda state, **kw: None)
            _check_method_fits(f, bound)
            return f
        Tool.from_callable(f, name)  # fail at import time on a bad signature
        f.__steprl_tool__ = name or f.__name__  # type: ignore[attr-defined]
        return f

    return wrap(fn) if fn is not None else wrap


def _check_method_fits(f: Callable[..., Any], bound: Tool) -> None:
    """A schema-declared suite method ``(self, state, ...)`` must accept the schema's arguments."""
    params = [p for p in inspect.signature(f).parameters.values() if p.name not in ("self", "state")]
    names = {p.name for p in params}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    unknown = sorted(set(bound.parameters) - names)
    if unknown:
        raise ToolSchemaError(f"tool {bound.name!r}: {f.__name__} takes no argument(s) {unknown}")


def tool_from_member(member: Callable[..., Any], bound: Callable[..., Any]) -> Tool:
    """The ``Tool`` of a ``@tool``-decorated suite method (``bound`` is it bound to the suite)."""
    schema = getattr(member, "__steprl_schema__", None)
    if schema is None:
        return Tool.from_callable(bound, member.__steprl_tool__)  # type: ignore[attr-defined]
    spec = schema.get("function", schema)
    made = Tool.from_schema({**spec, "name": member.__steprl_tool__}, lambda state, **kw: None)  # type: ignore[attr-defined]
    made.fn = bound
    return made
