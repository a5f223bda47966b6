"""The routing and sampling options: one list, validated the same way on every path."""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import HumanMessage

from avengers_graph import (
    AvengersContext,
    AvengersOptions,
    ChatAvengers,
    InvalidInputError,
    build_avengers_graph,
    calibrate,
    create_avengers_graph,
)
from avengers_graph.app.config import CalibrationOptions, PoolConfig, load_pool_config
from avengers_graph.options import DEFAULT_TIMEOUT, resolve_options
from tests.fakes import ScriptedExpert, constant

MATH = {"messages": [HumanMessage("a math problem: what is 6 * 7?")]}
QUESTION = "a math problem: what is 6 * 7?"
FLOAT_OPTIONS = [
    name
    for name, field in AvengersOptions.model_fields.items()
    if field.annotation in (float, float | None)
]
"""Every float option (beta, context_weight, temperature, timeout...)."""


def _typo_message(key: str, suggestion: str) -> str:
    return rf"unknown option '{key}' \(did you mean '{suggestion}'\?\)"


# the one list ---------------------------------------------------------------------------
def test_every_option_has_a_default_and_a_docstring() -> None:
    for name, field in AvengersOptions.model_fields.items():
        assert not field.is_required(), name
        assert field.description, f"{name} has no docstring"
    assert AvengersOptions().timeout == DEFAULT_TIMEOUT
    assert math.isfinite(AvengersOptions().timeout)  # every wait is bounded by default


def test_chat_avengers_and_the_context_inherit_the_options_instead_of_repeating_them() -> None:
    for model in (ChatAvengers, AvengersContext):
        for name, field in AvengersOptions.model_fields.items():
            assert model.model_fields[name].default == field.default, (model, name)
            assert model.model_fields[name].annotation == field.annotation, (model, name)


def test_float_options_are_the_numeric_knobs() -> None:
    assert set(FLOAT_OPTIONS) >= {"beta", "context_weight", "temperature", "timeout"}


def test_a_string_stop_is_one_stop_sequence() -> None:
    assert AvengersOptions(stop="\n\n").stop == ["\n\n"]
    assert AvengersOptions(stop=["a", "b"]).stop == ["a", "b"]
    assert AvengersContext(stop_sequences="###").stop == ["###"]


def test_the_context_schema_has_a_json_schema_for_studio() -> None:
    schema = AvengersContext.model_json_schema()
    assert schema["properties"]["top_n"]["description"] == "Experts to sample."
    assert schema["properties"]["answer_format"]["type"] == "string"
    # a field left out keeps the graph's value, not the class default: none is shown
    assert not [name for name, field in schema["properties"].items() if "default" in field]
    assert AvengersOptions.model_json_schema()["properties"]["top_n"]["default"] == 2


def test_only_the_fields_a_run_sets_override_the_graph_defaults() -> None:
    defaults = AvengersOptions(top_n=1, samples=5, temperature=0.2)
    run = resolve_options(defaults, AvengersContext(samples=2))
    assert (run.top_n, run.samples, run.temperature) == (1, 2, 0.2)
    # None is a value like any other: each expert's own temperature
    assert resolve_options(defaults, {"temperature": None}).temperature is None
    assert resolve_options(defaults, None) is defaults

    class ParentContext:  # a parent graph's own context: same-named, non-None fields count
        samples = 4
        top_n = None
        user_id = "u1"

    run = resolve_options(defaults, ParentContext())
    assert (run.top_n, run.samples) == (1, 4)


def test_calibration_options_keep_the_defaults_of_calibrate() -> None:
    parameters = inspect.signature(calibrate).parameters
    for name, field in CalibrationOptions.model_fields.items():
        assert parameters[name].kind is inspect.Parameter.KEYWORD_ONLY, name
        default = field.get_default(call_default_factory=True)
        if name == "cache":
            assert parameters[name].default is None
        else:
            assert default == parameters[name].default, name


def test_as_kwargs_is_what_was_set() -> None:
    assert AvengersOptions(top_n=3, stop="x").as_kwargs() == {"top_n": 3, "stop": ["x"]}
    assert CalibrationOptions().as_kwargs() == {}


# unknown options: the same error on every path ------------------------------------------
def test_unknown_options_at_construction(experts, embeddings, store) -> None:
    with pytest.raises(InvalidInputError) as info:
        ChatAvengers(experts=experts, embeddings=embeddings, store=store, top_nn=3, timout=5)
    assert "unknown option 'timout' (did you mean 'timeout'?)" in str(info.value)
    assert "unknown option 'top_nn' (did you mean 'top_n'?)" in str(info.value)


def test_unknown_options_in_the_factories(experts, embeddings, store) -> None:
    with pytest.raises(InvalidInputError, match=_typo_message("top_nn", "top_n")):
        create_avengers_graph(experts, embeddings, store, top_nn=3)
    with pytest.raises(InvalidInputError, match=_typo_message("sample", "samples")):
        build_avengers_graph(experts, embeddings, store, sample=3)
    with pytest.raises(InvalidInputError, match="unknown option 'colour'"):
        AvengersOptions(colour="red")


def test_unknown_options_in_a_runs_context(experts, embeddings, store) -> None:
    graph = create_avengers_graph(experts, embeddings, store)
    with pytest.raises(InvalidInputError, match=_typo_message("top_nn", "top_n")):
        graph.invoke(MATH, context={"top_nn": 3})
    with pytest.raises(InvalidInputError, match=_typo_message("sampels", "samples")):
        AvengersContext(sampels=1)
    assert sum(e.calls for e in experts.values()) == 0


def test_unknown_call_options(experts, embeddings, store) -> None:
    llm = ChatAvengers(experts=experts, embeddings=embeddings, store=store)
    with pytest.raises(InvalidInputError, match=_typo_message("top_nn", "top_n")):
        llm.invoke(QUESTION, top_nn=3)
    with pytest.raises(InvalidInputError, match=_typo_message("temprature", "temperature")):
        llm.bind(temprature=0.1).invoke(QUESTION)
    assert sum(e.calls for e in experts.values()) == 0


@pytest.mark.parametrize(
    ("section", "key", "suggestion"),
    [("routing", "top_nn", "top_n"), ("calibration", "n_cluster", "n_clusters")],
)
def test_unknown_options_in_a_pool_file(tmp_path: Path, section, key, suggestion) -> None:
    config = tmp_path / "pool.yaml"
    config.write_text(
        f"experts:\n  - {{name: a, base_url: 'http://h/v1', model: m}}\n{section}:\n  {key}: 3\n"
    )
    with pytest.raises(InvalidInputError) as info:
        load_pool_config(config)
    message = str(info.value)
    assert str(config) in message
    assert section in message
    assert f"unknown option '{key}' (did you mean '{suggestion}'?)" in message


def test_a_pool_files_sections_are_typed(tmp_path: Path) -> None:
    config = tmp_path / "pool.yaml"
    config.write_text(
        "experts:\n  - {name: a, base_url: 'http://h/v1', model: m}\n"
        "routing: {top_n: 1, stop: '###', max_retries: 0}\n"
        "calibration: {n_clusters: 4, samples: 2}\n"
    )
    pool = load_pool_config(config)
    assert pool.routing.as_kwargs() == {"top_n": 1, "stop": ["###"], "max_retries": 0}
    assert pool.calibration.as_kwargs() == {"n_clusters": 4, "samples": 2}
    config.write_text(
        "experts:\n  - {name: a, base_url: 'http://h/v1', model: m}\nrouting: {top_n: 0}\n"
    )
    with pytest.raises(InvalidInputError, match=r"routing\n.*top_n: Input should be greater"):
        load_pool_config(config)


# non-finite numbers ---------------------------------------------------------------------
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
@pytest.mark.parametrize("name", FLOAT_OPTIONS)
def test_non_finite_numbers_are_refused_with_the_knob_named(name: str, value: float) -> None:
    with pytest.raises(InvalidInputError, match=rf"{name}: Input should be a finite number"):
        AvengersOptions(**{name: value})


def test_non_finite_numbers_are_refused_on_every_path(
    experts, embeddings, store, tmp_path: Path
) -> None:
    with pytest.raises(InvalidInputError, match="beta: Input should be a finite number"):
        ChatAvengers(experts=experts, embeddings=embeddings, store=store, beta=math.inf)
    with pytest.raises(InvalidInputError, match="timeout: Input should be a finite number"):
        create_avengers_graph(experts, embeddings, store, timeout=math.inf)
    graph = create_avengers_graph(experts, embeddings, store)
    with pytest.raises(InvalidInputError, match="context_weight: Input should be a finite"):
        graph.invoke(MATH, context={"context_weight": math.nan})
    llm = ChatAvengers(experts=experts, embeddings=embeddings, store=store)
    with pytest.raises(InvalidInputError, match="temperature: Input should be a finite"):
        llm.invoke(QUESTION, temperature=math.inf)
    with pytest.raises(InvalidInputError, match=r"expert_costs\.mathy: Input should be a finite"):
        ChatAvengers(
            experts=experts, store=store, embeddings=embeddings, expert_costs={"mathy": math.nan}
        )
    config = tmp_path / "pool.yaml"
    config.write_text(
        "experts:\n  - {name: a, base_url: 'http://h/v1', model: m}\nrouting: {beta: .inf}\n"
    )
    with pytest.raises(InvalidInputError, match=r"routing\n.*beta: Input should be a finite"):
        load_pool_config(config)
    assert sum(e.calls for e in experts.values()) == 0


def test_out_of_range_values_name_the_knob(experts, embeddings, store) -> None:
    cases: dict[str, Any] = {
        "top_k": 0,
        "samples": 0,
        "timeout": 0,
        "max_retries": -1,
        "similarity_threshold": 1.5,
        "quality_weight": -0.1,
        "seed": -1,
    }
    for name, value in cases.items():
        with pytest.raises(InvalidInputError, match=rf"{name}: "):
            create_avengers_graph(experts, embeddings, store, **{name: value})


def test_pool_config_model_is_importable_without_io() -> None:
    pool = PoolConfig.model_validate({"experts": [{"name": "a", "local": "smollm2-135m"}]})
    assert pool.routing == AvengersOptions()
    assert isinstance(pool.calibration, CalibrationOptions)


def test_a_single_expert_options_run_end_to_end(embeddings, store) -> None:
    expert = ScriptedExpert(respond=constant("\\boxed{7}"))
    llm = ChatAvengers(
        experts={"bard": expert}, embeddings=embeddings, store=store, samples=1, stop="###"
    )
    llm.invoke(QUESTION)
    assert expert.seen[-1]["stop"] == ["###"]
    llm.invoke(QUESTION, stop="END")
    assert expert.seen[-1]["stop"] == ["END"]
