"""The example agent's local tools and the tool-calling benchmark's scoring, without models."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example() -> ModuleType:
    return _load(ROOT / "examples" / "agent_with_tools.py")


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return _load(ROOT / "tools" / "bench_tool_calls.py")


@pytest.mark.parametrize(
    ("expression", "result"),
    [
        ("234 * 17", "3978"),
        ("(125 + 375) / 4", "125"),
        ("2 ** 10", "1024"),
        ("2 ^ 10", "1024"),
        ("-3 + 5 % 3", "-1"),
        ("42.1648128 * 3", "126.4944384"),
    ],
)
def test_the_calculator_evaluates_arithmetic(
    example: ModuleType, expression: str, result: str
) -> None:
    assert example.calculator.invoke({"expression": expression}) == result


@pytest.mark.parametrize(
    "expression",
    [
        "__import__('os').system('echo hi')",
        "open('/etc/passwd').read()",
        "(1).__class__",
        "x + 1",
        "[1, 2]",
        "9 ** 999",
        "1 / 0",
        "2 +",
    ],
)
def test_the_calculator_refuses_anything_else(example: ModuleType, expression: str) -> None:
    assert example.calculator.invoke({"expression": expression}).startswith("error: ")


@pytest.mark.parametrize(
    ("args", "result"),
    [
        ({"value": 26.2, "from_unit": "miles", "to_unit": "kilometers"}, "42.1648128"),
        ({"value": 1, "from_unit": "km", "to_unit": "m"}, "1000"),
        ({"value": 5, "from_unit": "kg", "to_unit": "lbs"}, "11.02311311"),
        ({"value": 100, "from_unit": "Fahrenheit", "to_unit": "celsius"}, "37.77777778"),
        ({"value": 0, "from_unit": "°C", "to_unit": "K"}, "273.15"),
    ],
)
def test_the_converter_converts(example: ModuleType, args: dict[str, Any], result: str) -> None:
    assert example.convert_units.invoke(args).split()[0] == result


def test_the_converter_refuses_mixed_dimensions(example: ModuleType) -> None:
    reply = example.convert_units.invoke({"value": 1, "from_unit": "km", "to_unit": "kg"})
    assert reply == "error: cannot convert 'km' to 'kg'"


def test_the_expected_answer_is_three_marathons_in_km(example: ModuleType) -> None:
    assert abs(example.EXPECTED_KM - 126.4944) < 1e-4
    assert example._numbers("That is 126.49 km, or 1,264.9 hm.") == [126.49, 1264.9]


def _call(name: str, **args: Any) -> dict[str, Any]:
    return {"name": name, "args": args, "id": "call_x"}


def test_bench_cases_cover_the_three_kinds(bench: ModuleType) -> None:
    kinds = [case.kind for case in bench.CASES]
    assert len(bench.CASES) == 31
    assert (kinds.count("one call"), kinds.count("no call"), kinds.count("two calls")) == (14, 9, 8)
    assert len({case.id for case in bench.CASES}) == len(bench.CASES)
    assert {t.name for t in bench.TOOLS} == {
        "calculator",
        "convert_units",
        "get_weather",
        "get_exchange_rate",
    }


def test_bench_checks_arguments_by_meaning(bench: ModuleType) -> None:
    cases = {case.id: case for case in bench.CASES}
    right = bench.is_right
    assert right(cases["calc-mul"], [_call("calculator", expression="17*234")])
    assert right(cases["calc-percent"], [_call("calculator", expression="0.15 * 80")])
    assert right(cases["calc-percent"], [_call("calculator", expression="15% of 80")])
    assert not right(cases["calc-mul"], [_call("calculator", expression="234 * 71")])
    assert not right(cases["calc-mul"], [_call("calculator", expression="print(1)")])
    assert right(
        cases["conv-mi-km"], [_call("convert_units", value="10", from_unit="Miles", to_unit="km")]
    )
    assert not right(
        cases["conv-mi-km"], [_call("convert_units", value=10, from_unit="km", to_unit="mi")]
    )
    assert right(cases["weather-paris"], [_call("get_weather", city="Paris, France")])
    assert not right(cases["weather-paris"], [_call("get_weather", location="Paris")])
    assert right(
        cases["rate-gbp-jpy"],
        [_call("get_exchange_rate", from_currency="British pound", to_currency="JPY")],
    )
    assert not right(cases["weather-paris"], [_call("calculator", expression="1")])


def test_bench_wants_exactly_the_expected_calls(bench: ModuleType) -> None:
    cases = {case.id: case for case in bench.CASES}
    both = [_call("get_weather", city="Madrid"), _call("get_weather", city="berlin")]
    assert bench.is_right(cases["two-weather"], both)
    assert not bench.is_right(cases["two-weather"], both[:1])
    assert not bench.is_right(cases["two-weather"], [*both, _call("get_weather", city="Rome")])
    assert not bench.is_right(cases["two-weather"], [both[0], both[0]])
    assert bench.is_right(cases["none-greeting"], [])
    assert not bench.is_right(cases["none-greeting"], [_call("get_weather", city="here")])
