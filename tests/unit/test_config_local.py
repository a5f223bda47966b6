"""Pool files: the slots, threads and draft model of local experts, and their clients' limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from avengers_graph.app.config import load_pool_config
from avengers_graph.errors import InvalidInputError
from avengers_graph.local.pool import ServerSpec

pytestmark = pytest.mark.filterwarnings("ignore:A test tried to use socket.socket:UserWarning")


def _pool(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pool.yaml"
    path.write_text(text)
    return path


def test_local_servers_get_the_pool_s_samples_as_slots_summed_per_model(tmp_path: Path) -> None:
    pool = load_pool_config(
        _pool(
            tmp_path,
            "experts:\n"
            "  - {name: a, local: qwen2.5-coder-0.5b}\n"
            "  - {name: b, local: qwen2.5-coder-0.5b, slots: 2, temperature: 0.2}\n"
            "  - {name: c, local: qwen2.5-coder-1.5b, threads: 2, draft: qwen2.5-coder-0.5b}\n"
            "  - {name: r, base_url: 'http://127.0.0.1:9/v1', model: m, slots: 4}\n"
            "routing: {samples: 5}\n",
        )
    )
    assert pool.local_models() == ["qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"]
    assert pool.local_servers() == [
        ServerSpec("qwen2.5-coder-0.5b", slots=5 + 2, threads=None, draft=None),
        ServerSpec("qwen2.5-coder-1.5b", slots=5, threads=2, draft="qwen2.5-coder-0.5b"),
    ]
    urls = dict.fromkeys(pool.local_models(), "http://127.0.0.1:9/v1")
    experts = pool.build_experts(urls)
    limits = {name: e.model.max_concurrent_requests for name, e in experts.items()}  # type: ignore[attr-defined]
    assert limits == {"a": 5, "b": 2, "c": 5, "r": 4}
    # a running server with fewer slots caps its experts
    capped = pool.build_experts(urls, local_slots={"qwen2.5-coder-0.5b": 3})
    assert capped["a"].model.max_concurrent_requests == 3  # type: ignore[attr-defined]
    assert capped["b"].model.max_concurrent_requests == 2  # type: ignore[attr-defined]


def test_the_default_is_the_graph_s_three_samples(tmp_path: Path) -> None:
    pool = load_pool_config(_pool(tmp_path, "experts:\n  - {name: s, local: smollm2-135m}\n"))
    assert pool.local_servers() == [ServerSpec("smollm2-135m", slots=3)]
    remote = load_pool_config(
        _pool(tmp_path, "experts:\n  - {name: r, base_url: 'http://h/v1', model: m}\n")
    )
    assert remote.build_experts()["r"].model.max_concurrent_requests is None  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("{name: r, base_url: 'http://h/v1', model: m, threads: 2}", "for local experts"),
        ("{name: r, base_url: 'http://h/v1', model: m, draft: smollm2-135m}", "for local experts"),
        ("{name: s, local: smollm2-135m, slots: 0}", "greater than or equal to 1"),
    ],
)
def test_bad_local_options_are_refused(tmp_path: Path, line: str, error: str) -> None:
    with pytest.raises(InvalidInputError, match=error):
        load_pool_config(_pool(tmp_path, f"experts:\n  - {line}\n"))


def test_bad_samples_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="samples"):
        load_pool_config(
            _pool(tmp_path, "experts:\n  - {name: s, local: smollm2-135m}\nrouting: {samples: 0}\n")
        )
