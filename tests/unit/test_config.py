"""Pool config files and environment settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from langchain_openai import ChatOpenAI

from avengers_graph import ClusterStore, EmptyStoreError, InvalidInputError
from avengers_graph.app.config import KEYLESS_API_KEY, graph_from_settings, load_pool_config
from avengers_graph.app.settings import Settings, default_cache_path
from avengers_graph.experts.cache import user_cache_root
from tests.fakes import KeywordEmbeddings
from tests.unit.conftest import write_two_domain_store

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "pool.yaml"


def test_example_pool_builds_openai_compatible_experts_without_io() -> None:
    pool = load_pool_config(EXAMPLE)
    experts = pool.build_experts()
    assert list(experts) == ["qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b", "smollm2-135m"]
    first = experts["qwen2.5-coder-1.5b"].model
    assert experts["qwen2.5-coder-1.5b"].strategy == "reason"
    assert isinstance(first, ChatOpenAI)
    assert first.openai_api_base == "http://127.0.0.1:8081/v1"
    assert first.max_tokens == 384
    assert first.extra_body is None
    assert pool.routing.as_kwargs() == {"top_k": 1, "top_n": 2, "samples": 3, "timeout": 120}


def test_api_key_comes_from_the_named_variable_and_never_shows(tmp_path, monkeypatch) -> None:
    config = tmp_path / "pool.json"
    config.write_text(
        '{"experts": [{"name": "a", "base_url": "http://h/v1", "model": "m",'
        ' "api_key_env": "POOL_KEY"}]}'
    )
    monkeypatch.delenv("POOL_KEY", raising=False)
    with pytest.raises(InvalidInputError, match=r"\$POOL_KEY"):
        load_pool_config(config).build_experts()
    monkeypatch.setenv("POOL_KEY", "sk-very-secret")
    expert = load_pool_config(config).build_experts()["a"].model
    assert "sk-very-secret" not in repr(expert)
    assert expert.openai_api_key is not None
    assert expert.openai_api_key.get_secret_value() == "sk-very-secret"


def test_keyless_servers_get_the_documented_placeholder(tmp_path) -> None:
    config = tmp_path / "pool.yaml"
    config.write_text("experts:\n  - {name: a, base_url: 'http://h/v1', model: m}\n")
    expert = load_pool_config(config).build_experts()["a"].model
    assert expert.openai_api_key.get_secret_value() == KEYLESS_API_KEY  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("experts: [", "not valid yaml"),
        ("experts: []", "invalid"),
        ("experts:\n  - {name: a, base_url: u, model: m, colour: red}\n", "colour"),
        ("routing: {}\n", "experts"),
    ],
)
def test_malformed_pool_files_are_explicit_errors(tmp_path, text: str, match: str) -> None:
    config = tmp_path / "pool.yaml"
    config.write_text(text)
    with pytest.raises(InvalidInputError, match=match):
        load_pool_config(config)


def test_duplicate_expert_names_are_refused(tmp_path) -> None:
    config = tmp_path / "pool.yaml"
    config.write_text(
        "experts:\n  - {name: a, base_url: u, model: m}\n  - {name: a, base_url: v, model: n}\n"
    )
    with pytest.raises(InvalidInputError, match="unique"):
        load_pool_config(config).build_experts()


def test_missing_pool_file(tmp_path) -> None:
    with pytest.raises(InvalidInputError, match="does not exist"):
        load_pool_config(tmp_path / "nope.yaml")


def test_settings_from_env(tmp_path) -> None:
    settings = Settings.from_env(
        {
            "AVENGERS_STORE_PATH": str(tmp_path / "s"),
            "AVENGERS_POOL": "team",
            "AVENGERS_CACHE_DIR": str(tmp_path / "c"),
        }
    )
    store = settings.cluster_store()
    assert isinstance(store, ClusterStore)
    assert store.name == "team"
    assert settings.cache_dir == tmp_path / "c"
    assert (
        default_cache_path({"AVENGERS_CACHE_DIR": str(tmp_path / "c")})
        == tmp_path / "c" / "answers.sqlite"
    )
    assert (
        default_cache_path({"XDG_CACHE_HOME": str(tmp_path)})
        == tmp_path / "avengers-graph" / "answers.sqlite"
    )
    both = {"AVENGERS_CACHE_DIR": str(tmp_path / "c"), "XDG_CACHE_HOME": str(tmp_path)}
    assert user_cache_root(both) == tmp_path / "avengers-graph"
    assert user_cache_root({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "avengers-graph"
    remote = Settings.from_env(
        {"AVENGERS_CHROMA_HOST": "chroma.internal", "AVENGERS_CHROMA_PORT": "9000"}
    )
    assert "chroma.internal" in repr(remote.cluster_store())
    with pytest.raises(InvalidInputError, match="AVENGERS_CHROMA_PORT"):
        Settings.from_env({"AVENGERS_CHROMA_PORT": "eighty"})


def calibrated(path: Path) -> dict[str, str]:
    """A calibrated store at ``path`` (pool ``unit``), as settings variables."""
    write_two_domain_store(path, KeywordEmbeddings({"math": 0, "code": 1}))
    return {"AVENGERS_STORE_PATH": str(path), "AVENGERS_POOL": "unit"}


def test_settings_keep_the_store_in_the_cache_folder(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env({"XDG_CACHE_HOME": str(tmp_path / "xdg")})
    assert settings.cache_dir == tmp_path / "xdg" / "avengers-graph"
    assert settings.store_path == tmp_path / "xdg" / "avengers-graph" / "store"
    assert Settings.from_env({"AVENGERS_CACHE_DIR": "c"}).store_path == tmp_path / "c" / "store"
    relative = Settings.from_env({"AVENGERS_STORE_PATH": "s", "AVENGERS_CACHE_DIR": "/x"})
    assert relative.store_path == tmp_path / "s"  # read against the folder it was set in
    assert relative.store_path.is_absolute()


def test_pool_file_paths_are_relative_to_the_file(tmp_path, monkeypatch) -> None:
    folder = tmp_path / "pools"
    folder.mkdir()
    (folder / "pool.yaml").write_text(
        "experts:\n  - {name: a, local: models/a.gguf, draft: /abs/d.gguf}\n"
        "  - {name: b, local: smollm2-135m}\n"
        "store: {path: my-store, name: p}\n"
        "calibration: {cache: answers.sqlite}\n"
    )
    monkeypatch.chdir(tmp_path)
    pool = load_pool_config(Path("pools/pool.yaml"))
    settings = Settings.from_env({"AVENGERS_CACHE_DIR": str(tmp_path / "c")})
    assert pool.store_folder(settings) == folder / "my-store"
    assert pool.store_name(settings) == "p"
    assert pool.calibration.cache == str(folder / "answers.sqlite")
    assert pool.experts[0].local == str(folder / "models" / "a.gguf")
    assert pool.experts[0].draft == "/abs/d.gguf"
    assert pool.experts[1].local == "smollm2-135m"  # a registry name, not a path
    no_store = load_pool_config(EXAMPLE)
    assert no_store.store_folder(settings) == tmp_path / "c" / "store"
    assert "cache" not in no_store.calibration.as_kwargs()  # unset stays unset
    assert no_store.experts[0].model_fields_set == {"name", "base_url", "model", "max_tokens"}
    remote = Settings.from_env({"AVENGERS_CHROMA_HOST": "h"})
    assert no_store.store_folder(remote) is None


def test_graph_from_settings_defaults_to_the_bundled_local_pool(tmp_path) -> None:
    # no AVENGERS_CONFIG: the bundled pool, whose local models are not running here
    with pytest.raises(InvalidInputError, match="avengers local up"):
        graph_from_settings(Settings.from_env({"AVENGERS_CACHE_DIR": str(tmp_path / "c")}))


def test_graph_from_settings_says_the_store_needs_calibrating(tmp_path) -> None:
    env = {"AVENGERS_STORE_PATH": str(tmp_path / "s"), "AVENGERS_CONFIG": str(EXAMPLE)}
    with pytest.raises(EmptyStoreError, match=f"run `avengers calibrate --config {EXAMPLE}`"):
        graph_from_settings(Settings.from_env(env))
    assert not (tmp_path / "s").exists()  # nothing left behind


def test_graph_from_settings_builds_the_studio_graph(tmp_path) -> None:
    env = {**calibrated(tmp_path / "s"), "AVENGERS_CONFIG": str(EXAMPLE)}
    graph = graph_from_settings(Settings.from_env(env))
    assert set(graph.get_graph().nodes) >= {
        "embed",
        "locate_cluster",
        "select_experts",
        "sample",
        "vote",
    }


def test_pool_costs_reach_the_graph_for_compute_routing(tmp_path) -> None:
    config = tmp_path / "pool.yaml"
    experts = (
        "experts:\n"
        "  - {name: big, base_url: 'http://127.0.0.1:9/v1', model: b, cost: 7}\n"
        "  - {name: small, base_url: 'http://127.0.0.1:9/v1', model: s%s}\n"
        "routing: {cost: compute, quality_weight: 0.8}\n"
    )
    config.write_text(experts % ", cost: 0.5")
    assert load_pool_config(config).expert_costs() == {"big": 7.0, "small": 0.5}
    env = {**calibrated(tmp_path / "s"), "AVENGERS_CONFIG": str(config)}
    assert "select_experts" in graph_from_settings(Settings.from_env(env)).get_graph().nodes
    config.write_text(experts % "")
    with pytest.raises(InvalidInputError, match=r"missing for \['small'\]"):
        graph_from_settings(Settings.from_env(env))


def test_production_example_points_at_servers_and_a_chroma_server(monkeypatch) -> None:
    pool = load_pool_config(EXAMPLE.with_name("pool-production.yaml"))
    monkeypatch.setenv("VLLM_API_KEY", "k1")
    monkeypatch.setenv("SGLANG_API_KEY", "k2")
    experts = pool.build_experts()
    assert [e.model.openai_api_base for e in experts.values()] == [  # type: ignore[attr-defined]
        "http://vllm-qwen.internal:8000/v1",
        "http://ollama.internal:11434/v1",
        "http://sglang-mistral.internal:30000/v1",
    ]
    store = pool.build_store(Settings.from_env({}))
    assert "chroma.internal" in repr(store)
    assert store.name == "production"
    assert pool.local_models() == []


def test_local_experts_need_their_server_and_exactly_one_endpoint(tmp_path) -> None:
    config = tmp_path / "pool.yaml"
    config.write_text("experts:\n  - {name: a, local: smollm2-135m, base_url: 'http://h/v1'}\n")
    with pytest.raises(InvalidInputError, match="exactly one of base_url or local"):
        load_pool_config(config)
    config.write_text("experts:\n  - {name: a, local: smollm2-135m, max_tokens: 8}\n")
    pool = load_pool_config(config)
    assert pool.local_models() == ["smollm2-135m"]
    with pytest.raises(InvalidInputError, match="avengers local up smollm2-135m"):
        pool.build_experts({})
    expert = pool.build_experts({"smollm2-135m": "http://127.0.0.1:8123/v1"})["a"].model
    assert expert.openai_api_base == "http://127.0.0.1:8123/v1"  # type: ignore[attr-defined]
    assert expert.model_name == "smollm2-135m"  # type: ignore[attr-defined]


def test_tool_call_parser_defaults_to_the_local_models_and_can_be_set(tmp_path) -> None:
    config = tmp_path / "pool.yaml"
    config.write_text(
        "experts:\n"
        "  - {name: qwen, local: qwen2.5-coder-0.5b}\n"
        "  - {name: qwen-off, local: qwen2.5-coder-0.5b, tool_call_parser: null}\n"
        "  - {name: smol, local: smollm2-135m}\n"
        "  - {name: remote, base_url: 'http://127.0.0.1:8000/v1', model: m}\n"
        "  - {name: remote-qwen, base_url: 'http://127.0.0.1:8000/v1', model: m,"
        " tool_call_parser: hermes}\n"
    )
    pool = load_pool_config(config)
    urls = {
        "qwen2.5-coder-0.5b": "http://127.0.0.1:8123/v1",
        "smollm2-135m": "http://127.0.0.1:8124/v1",
    }
    experts = pool.build_experts(urls)
    assert {name: expert.model.tool_call_parser for name, expert in experts.items()} == {  # type: ignore[attr-defined]
        "qwen": "hermes",
        "qwen-off": None,
        "smol": None,
        "remote": None,
        "remote-qwen": "hermes",
    }


def test_an_unknown_tool_call_parser_is_refused(tmp_path) -> None:
    config = tmp_path / "pool.yaml"
    config.write_text(
        "experts:\n  - {name: a, base_url: 'http://h/v1', model: m, tool_call_parser: mistral}\n"
    )
    with pytest.raises(InvalidInputError, match="tool_call_parser"):
        load_pool_config(config)


def test_studio_graph_starts_without_setup_and_says_what_to_run(tmp_path, caplog) -> None:
    from avengers_graph.app.config import SETUP_NODE, studio_graph

    settings = Settings.from_env({"AVENGERS_CACHE_DIR": str(tmp_path / "c")})  # bundled pool
    with caplog.at_level("ERROR", logger="avengers_graph.studio"):
        graph = studio_graph(settings)
    [line] = [r.getMessage() for r in caplog.records]
    assert "\n" not in line
    assert "start them with `avengers local up`" in line
    assert "restart `langgraph dev`" in line
    assert SETUP_NODE in graph.get_graph().nodes
    with pytest.raises(InvalidInputError, match="avengers local up"):
        graph.invoke({"messages": [("user", "hi")]})


def test_studio_graph_is_the_pool_graph_once_ready(tmp_path) -> None:
    from avengers_graph.app.config import studio_graph

    env = {**calibrated(tmp_path / "s"), "AVENGERS_CONFIG": str(EXAMPLE)}
    assert "select_experts" in studio_graph(Settings.from_env(env)).get_graph().nodes
