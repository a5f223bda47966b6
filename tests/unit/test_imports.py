"""The public API and the module paths are pinned; every module imports on its own."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
import warnings

import pytest

import avengers_graph

EXPECTED_ALL = [
    "AllExpertsFailedError",
    "AnswerCache",
    "AvengersContext",
    "AvengersError",
    "AvengersOptions",
    "CacheError",
    "Calibration",
    "CalibrationError",
    "CalibrationReport",
    "CalibrationStore",
    "ChatAvengers",
    "ClusterStore",
    "ConfidenceMap",
    "DamagedStoreError",
    "EmbeddingMismatchError",
    "EmptyStoreError",
    "Expert",
    "ExpertStats",
    "ExpertTimeoutError",
    "InvalidInputError",
    "LocalEmbeddings",
    "MemoryStore",
    "MissingExtraError",
    "RoutingRecord",
    "SchemaVersionError",
    "StoreBusyError",
    "StoreError",
    "StoreInfo",
    "StoreTimeoutError",
    "build_avengers_graph",
    "calibrate",
    "create_avengers_graph",
    "init_avengers",
    "pool_experts",
]

# the documented homes of each concept (README, module docstrings)
MODULES = {
    "avengers_graph.options": ["AvengersOptions", "AvengersContext", "resolve_options"],
    "avengers_graph.routing": ["plan_sampling", "reliability", "score_experts"],
    "avengers_graph.voting": ["weighted_vote", "majority_vote", "semantic_vote"],
    "avengers_graph.formats": ["FORMATS", "detect", "get_format"],
    "avengers_graph.experts.contract": ["Expert", "contract"],
    "avengers_graph.experts.calls": ["invoke", "ainvoke", "retry_free"],
    "avengers_graph.experts.cache": ["AnswerCache"],
    "avengers_graph.stores": ["ClusterStore", "MemoryStore", "Calibration"],
    "avengers_graph.graph": ["create_avengers_graph", "build_avengers_graph"],
    "avengers_graph.graph.state": ["AvengersState", "RoutingRecord"],
    "avengers_graph.chat_models": ["ChatAvengers"],
    "avengers_graph.calibration": ["calibrate"],
    "avengers_graph.confidence": ["replay_vote", "cross_fitted_votes", "fit_confidence_map"],
    "avengers_graph.eval.recording": ["ResponseMatrix", "record"],
    "avengers_graph.eval.replay": ["evaluate", "compare", "AdaptiveConfig"],
    "avengers_graph.app.embedded": ["init_avengers", "pool_experts", "local_avengers"],
    "avengers_graph.experts.tokens": ["TokenCounter", "estimate_message_tokens"],
}

# old module paths: importable for one release, with a DeprecationWarning
MOVED = {
    "avengers_graph.store": "avengers_graph.stores.chroma",
    "avengers_graph.state": "avengers_graph.graph.state",
    "avengers_graph.cache": "avengers_graph.experts.cache",
    "avengers_graph.contract": "avengers_graph.experts.contract",
    "avengers_graph.recording": "avengers_graph.eval.recording",
    "avengers_graph.replay": "avengers_graph.eval.replay",
    "avengers_graph.settings": "avengers_graph.app.settings",
    "avengers_graph.config": "avengers_graph.app.config",
    "avengers_graph.cli": "avengers_graph.app.cli",
    "avengers_graph.local_pool": "avengers_graph.local.pool",
    "avengers_graph.local_models": "avengers_graph.local.models",
    "avengers_graph.openai_compatible": "avengers_graph.experts.openai_compatible",
}


def test_all_is_pinned() -> None:
    assert sorted(avengers_graph.__all__) == sorted(EXPECTED_ALL)
    for name in EXPECTED_ALL:
        assert getattr(avengers_graph, name) is not None


@pytest.mark.parametrize(("module", "names"), list(MODULES.items()))
def test_documented_module_paths(module: str, names: list[str]) -> None:
    imported = importlib.import_module(module)
    for name in names:
        assert hasattr(imported, name), f"{module}.{name}"


@pytest.mark.parametrize(("old", "new"), list(MOVED.items()))
def test_old_paths_warn_and_give_the_new_module(old: str, new: str) -> None:
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)


def _modules() -> list[str]:
    return sorted(
        info.name for info in pkgutil.walk_packages(avengers_graph.__path__, "avengers_graph.")
    )


def test_every_module_imports_on_its_own() -> None:
    # one interpreter, our modules forgotten before each import: a module that only
    # imports because another one was imported first (a cycle, a missing import) fails
    code = (
        "import importlib, sys, warnings\n"
        "warnings.simplefilter('ignore', DeprecationWarning)\n"
        "failed = []\n"
        f"for name in {_modules()!r}:\n"
        "    for loaded in [m for m in sys.modules if m.startswith('avengers_graph')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        failed.append(f'{name}: {type(exc).__name__}: {exc}')\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = subprocess.run(  # noqa: S603 - our own interpreter and code
            [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=300
        )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_package_and_the_cli_start_without_the_heavy_libraries() -> None:
    # `avengers --help` and `import avengers_graph` load neither LangGraph, LangChain,
    # torch, Chroma nor scikit-learn: those come with the first name that needs them
    code = (
        "import sys, avengers_graph, avengers_graph.app.cli\n"
        "heavy = ('langgraph', 'langchain_core', 'langchain_openai', 'torch', 'chromadb',\n"
        "         'sklearn', 'sentence_transformers', 'numpy')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
        "avengers_graph.ChatAvengers\n"
        "print('langgraph' in sys.modules)\n"
    )
    result = subprocess.run(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["[]", "True"]
