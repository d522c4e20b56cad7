"""Tool arguments are validated against the whole JSON Schema, from type hints or given as JSON."""

from __future__ import annotations

from typing import Any, Literal

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tools_env import Suite, Task, Tool, ToolCall, ToolEnv, register_suite, tool
from tools_env.tools import ToolSchemaError


def total(xs: list[int], scale: float = 1.0, tags: dict[str, int] | None = None) -> str:
    """Sum a list of integers.

    Args:
        xs: the numbers
        scale: a factor
        tags: optional counts by name
    """
    return str(sum(xs) * scale)


def pick(
    mode: Literal["a", "b"], pair: tuple[int, str], matrix: list[list[float]], blob: dict, anything: Any
) -> str:
    """A tool with nested and loose types."""
    return "ok"


ORDER_SCHEMA = {
    "type": "function",
    "function": {
        "name": "place_order",
        "description": "Place an order of several items.",
        "parameters": {
            "type": "object",
            "properties": {
                "items": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "properties": {
                            "sku": {"type": "string", "enum": ["tea", "mug"]},
                            "qty": {"type": "integer", "minimum": 1},
                        },
                        "required": ["sku", "qty"],
                        "additionalProperties": False,
                    },
                },
                "express": {"type": "boolean"},
                "budget": {"type": "number"},
            },
            "required": ["items"],
            "additionalProperties": False,
        },
    },
}


def place_order(state: dict, items: list[dict], express: bool = False, budget: float | None = None) -> str:
    state.setdefault("orders", []).append(items)
    return f"ordered {sum(i['qty'] for i in items)}"


def test_type_hints_give_nested_schemas_that_validate_like_json_schema():
    t = Tool.from_callable(total)
    assert t.parameters["xs"] == {"type": "array", "items": {"type": "integer"}, "description": "the numbers"}
    assert t.parameters["scale"]["type"] == "number"
    assert t.parameters["tags"]["anyOf"][0] == {"type": "object", "additionalProperties": {"type": "integer"}}
    assert t.validate({"xs": [1, 2]}) is None
    assert "is not of type 'integer'" in t.validate({"xs": ["a", None]})
    assert t.validate({"xs": [1], "scale": 2}) is None  # an integer is a number
    assert "is not of type 'number'" in t.validate({"xs": [1], "scale": "2"})
    assert "'tags'['b']" in t.validate({"xs": [1], "tags": {"a": 1, "b": "x"}})
    assert t.validate({"xs": [1], "tags": None}) is None
    assert "has no argument 'y'" in t.validate({"xs": [1], "y": 2})
    assert "missing the required argument 'xs'" in t.validate({})
    assert "is not of type 'integer'" in t.validate({"xs": [True]})  # a boolean is not an integer
    p = Tool.from_callable(pick)
    ok = {"mode": "a", "pair": [1, "x"], "matrix": [[1.5, 2]], "blob": {"k": [1]}, "anything": None}
    assert p.validate(ok) is None
    assert "is not one of" in p.validate({**ok, "mode": "c"})
    assert (
        p.validate({**ok, "pair": [1, 2]}) is not None and p.validate({**ok, "pair": [1, "x", 3]}) is not None
    )
    assert p.validate({**ok, "matrix": [[1, "x"]]}) is not None
    assert p.validate({**ok, "blob": []}) is not None


def test_openai_schema_bound_to_a_callable():
    t = Tool.from_schema(ORDER_SCHEMA, place_order)
    assert t.schema() == ORDER_SCHEMA
    good = {"items": [{"sku": "tea", "qty": 2}]}
    assert t.validate(good) is None
    assert "is not one of" in t.validate({"items": [{"sku": "cake", "qty": 2}]})
    assert "'items'[0]" in t.validate({"items": [{"sku": "tea", "qty": 0}]})
    assert t.validate({"items": []}) is not None  # minItems
    assert (
        t.validate({"items": [{"sku": "tea", "qty": 1, "note": "x"}]}) is not None
    )  # nested additionalProperties
    assert t.validate({"items": [{"sku": "tea", "qty": 1.5}]}) is not None  # number is not integer
    state: dict = {}
    assert t.fn(state, **good) == "ordered 2" and state["orders"] == [good["items"]]
    bare = Tool.from_schema(ORDER_SCHEMA["function"], lambda items, express=False, budget=None: "x")
    assert bare.fn({}, items=[]) == "x"  # no state parameter: the state is not passed


def test_bad_schemas_fail_at_load_time_with_the_tool_name():
    with pytest.raises(ToolSchemaError, match="'place_order'.*takes no argument"):
        Tool.from_schema(ORDER_SCHEMA, lambda state, items: "x")
    with pytest.raises(ToolSchemaError, match="needs \\['other'\\]"):
        Tool.from_schema(ORDER_SCHEMA, lambda state, items, other, express=0, budget=0: "x")
    with pytest.raises(ToolSchemaError, match="not valid JSON Schema"):
        bad_type = {"type": "object", "properties": {"x": {"type": "banana"}}, "required": ["x"]}
        Tool.from_schema({"name": "t", "parameters": bad_type}, lambda x: x)
    with pytest.raises(ToolSchemaError, match="needs a 'name'"):
        Tool.from_schema({"parameters": {}}, lambda: 1)

    def int_keys(m: dict[int, str]) -> str:
        return ""

    with pytest.raises(TypeError, match="keys are strings"):
        Tool.from_callable(int_keys)


@register_suite("schema_shop")
class SchemaShop(Suite):
    @tool(schema=ORDER_SCHEMA)
    def place_order(
        self, state: dict, items: list, express: bool = False, budget: float | None = None
    ) -> str:
        return place_order(state, items, express, budget)

    def tasks(self, split: str, n: int, seed: int) -> list[Task]:
        return [Task(f"s-{i}", "schema_shop", "Order tea.", "ordered 1") for i in range(n)]

    def final_answer_correct(self, task, final_answer, state):
        return float(bool(state.get("orders")))


def test_a_schema_declared_suite_method_runs_in_a_session():
    env = ToolEnv()
    assert env.list_tools("schema_shop") == [ORDER_SCHEMA]
    session = env.open_session(SchemaShop().tasks("test", 1, 0)[0])
    bad, good = env.call(session, [ToolCall("place_order", {"items": [{"sku": "tea", "qty": "1"}]}),
                                   ToolCall("place_order", {"items": [{"sku": "tea", "qty": 1}]})])  # fmt: skip
    assert not bad.ok and bad.error == "invalid_arguments" and "'qty'" in bad.output
    assert good.ok and good.output == "ordered 1"
    assert env.close_session(session)["orders"] == [[{"sku": "tea", "qty": 1}]]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=12,
)


HINTED, SCHEMA = Tool.from_callable(total), Tool.from_schema(ORDER_SCHEMA, place_order)
REFERENCE = {t.name: jsonschema.Draft202012Validator(t.arguments_schema()) for t in (HINTED, SCHEMA)}


HINTED, SCHEMA = Tool.from_callable(total), Tool.from_schema(ORDER_SCHEMA, place_order)
REFERENCE = {t.name: jsonschema.Draft202012Validator(t.arguments_schema()) for t in (HINTED, SCHEMA)}


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        JSON, st.dictionaries(st.sampled_from(["xs", "scale", "tags", "items", "zz"]), JSON, max_size=4)
    )
)
def test_validation_agrees_with_jsonschema_and_never_raises(arguments):
    """Untrusted arguments: validate() never raises and accepts exactly what jsonschema accepts."""
    for t in (HINTED, SCHEMA):
        problem = t.validate(arguments)
        expected = isinstance(arguments, dict) and REFERENCE[t.name].is_valid(arguments)
        assert (problem is None) == expected
        assert problem is None or ("\n" not in problem and t.name in problem)
