"""The ``cast`` step on the row path: conversions, untouched nulls, errors that name the field."""

from __future__ import annotations

from typing import Any

import pytest

from app.config.pipeline import Transform
from app.transforms.chain import StepError, cast_step, compile_chain


def _cast(fields: dict[str, str], payload: dict[str, Any]) -> dict[str, Any]:
    tok = {
        "token_id": "t:1",
        "key": None,
        "payload": payload,
        "source_id": "t",
        "source_position": "1",
        "event_time_ms": None,
        "lineage": [],
    }
    [(_dest, out)] = compile_chain("tr", [cast_step(fields)], "out")(tok)  # type: ignore[arg-type]
    return out["payload"]


def test_conversions_keep_key_order_and_leave_null_and_absent_fields() -> None:
    got = _cast(
        {"a": "string", "b": "int", "c": "float", "d": "bool", "e": "string", "n": "int", "absent": "int"},
        {"e": True, "a": 7, "b": "-007", "c": 2, "d": "false", "n": None},
    )
    assert list(got.items()) == [("e", "true"), ("a", "7"), ("b", -7), ("c", 2.0), ("d", False), ("n", None)]
    assert _cast({"x": "int"}, {"x": 3.0}) == {"x": 3}


@pytest.mark.parametrize(
    "kind, value, message",
    [
        ("int", 2.5, "cast: field 'x' to int: 2.5 has a fraction"),
        ("int", True, "cast: field 'x' to int: True is a bool"),
        ("int", "0x10", "cast: field 'x' to int: invalid literal for int() with base 10: '0x10'"),
        ("float", [1], "cast: field 'x' to float: list value [1]"),
        ("bool", "yes", "cast: field 'x' to bool: 'yes' is neither a bool nor 'true'/'false'"),
        ("string", {"a": 1}, "cast: field 'x' to string: dict value"),
    ],
)
def test_a_value_that_does_not_convert_raises_naming_the_field(kind: str, value: Any, message: str) -> None:
    with pytest.raises(ValueError) as exc:
        _cast({"x": kind}, {"x": value})
    assert str(exc.value) == message


def test_unknown_types_are_refused_by_the_step_and_the_spec() -> None:
    with pytest.raises(StepError, match="cast: field 'x': unknown type 'decimal'"):
        cast_step({"x": "decimal"})
    with pytest.raises(ValueError, match=r"fields\.x"):
        Transform.model_validate({"name": "t", "input": "i", "steps": [{"cast": {"x": "decimal"}}]})
    tr = Transform.model_validate({"name": "t", "input": "i", "steps": [{"cast": {"x": "int"}}]})
    assert tr.steps[0].kind == "cast" and tr.columnar is True
