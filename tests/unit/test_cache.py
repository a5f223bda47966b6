"""The SQLite answer cache: keys, round trip, export and import of recorded answers."""

from __future__ import annotations

from pathlib import Path

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from avengers_graph.errors import CacheError, InvalidInputError
from avengers_graph.experts.cache import AnswerCache, CachedAnswer, cache_key

PROMPT = [SystemMessage("be brief"), HumanMessage("2+2?")]


def answer(text: str) -> CachedAnswer:
    usage = {"input_tokens": 3, "output_tokens": 1, "total_tokens": 4}
    return CachedAnswer(message=AIMessage(text, usage_metadata=usage), seconds=0.5)


def test_key_depends_on_expert_model_prompt_and_params() -> None:
    base = cache_key("a", "m", PROMPT, {"seed": 0, "temperature": 0.7})
    assert base == cache_key("a", "m", list(PROMPT), {"temperature": 0.7, "seed": 0})
    assert base != cache_key("b", "m", PROMPT, {"seed": 0, "temperature": 0.7})
    assert base != cache_key("a", "m2", PROMPT, {"seed": 0, "temperature": 0.7})
    assert base != cache_key("a", "m", PROMPT[1:], {"seed": 0, "temperature": 0.7})
    assert base != cache_key("a", "m", PROMPT, {"seed": 1, "temperature": 0.7})


def test_round_trip_survives_reopening(tmp_path: Path) -> None:
    cache = AnswerCache(tmp_path / "c.sqlite")
    stored = answer("4")
    cache.put("k", "a", {"seed": 0}, stored)
    cache.close()
    again = AnswerCache(tmp_path / "c.sqlite")
    hit = again.get("k")
    assert hit == stored  # message (text, usage) and the recorded call time
    assert again.get("other") is None
    assert len(again) == 1


def test_export_then_import_replays_answers(tmp_path: Path) -> None:
    source = AnswerCache(tmp_path / "a.sqlite")
    source.put("k1", "a", {"seed": 0}, answer("4"))
    source.put("k2", "b", {"seed": 0}, answer("5"))
    assert source.export_jsonl(tmp_path / "all.jsonl") == 2
    assert source.export_jsonl(tmp_path / "a.jsonl", experts=["a"]) == 1
    target = AnswerCache(tmp_path / "b.sqlite")
    target.put("k1", "a", {"seed": 0}, answer("kept"))
    assert target.import_jsonl(tmp_path / "all.jsonl") == 1  # k1 was there already
    assert target.get("k1").message.text == "kept"  # type: ignore[union-attr]
    assert target.get("k2").message.text == "5"  # type: ignore[union-attr]
    assert target.import_jsonl(tmp_path / "all.jsonl") == 0


def test_export_keeps_only_the_keys_asked_for(tmp_path: Path) -> None:
    source = AnswerCache(tmp_path / "a.sqlite")
    for key, expert in [("k1", "a"), ("k2", "a"), ("k3", "b")]:
        source.put(key, expert, {"seed": 0}, answer(key))
    assert source.export_jsonl(tmp_path / "k.jsonl", keys={"k2", "k3"}) == 2
    assert source.export_jsonl(tmp_path / "ak.jsonl", experts=["a"], keys={"k2", "k3"}) == 1
    target = AnswerCache(tmp_path / "b.sqlite")
    assert target.import_jsonl(tmp_path / "ak.jsonl") == 1
    assert target.get("k1") is None
    assert target.get("k2").message.text == "k2"  # type: ignore[union-attr]


def test_import_names_a_bad_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"key": "k"}\n')
    with pytest.raises(InvalidInputError, match=r"bad.jsonl:1"):
        AnswerCache(tmp_path / "c.sqlite").import_jsonl(bad)


@pytest.mark.parametrize("content", [b"this is not a database" * 50, b"\x00" * 4096])
def test_a_damaged_file_is_one_clear_error_naming_it(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "answers.sqlite"
    path.write_bytes(content)
    with pytest.raises(CacheError) as excinfo:
        AnswerCache(path)
    message = str(excinfo.value)
    assert str(path) in message
    assert "damaged" in message
    assert "Move it aside" in message
    assert path.read_bytes() == content  # left as it was for the user to inspect


def test_a_zero_byte_file_is_a_new_empty_cache(tmp_path: Path) -> None:
    path = tmp_path / "answers.sqlite"
    path.touch()
    assert len(AnswerCache(path)) == 0


def test_a_failed_write_is_a_cache_error_and_keeps_what_was_saved(tmp_path: Path) -> None:
    path = tmp_path / "answers.sqlite"
    cache = AnswerCache(path)
    cache.put("k0", "a", {"seed": 0}, answer("kept"))
    # SQLite's own page limit: the next write fails with "database or disk is full",
    # exactly as on a full disk.
    (pages,) = cache._conn.execute("PRAGMA page_count").fetchone()
    cache._conn.execute(f"PRAGMA max_page_count = {pages}")

    def fill() -> None:
        for i in range(200):
            cache.put(f"k{i + 1}", "a", {"seed": i}, answer("x" * 4000))

    with pytest.raises(CacheError) as excinfo:
        fill()
    message = str(excinfo.value)
    assert str(path) in message
    assert "full" in message
    assert "kept" in message
    cache.close()
    again = AnswerCache(path)
    assert again.get("k0").message.text == "kept"  # type: ignore[union-attr]
    assert again._conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
