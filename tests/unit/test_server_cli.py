"""``avengers serve`` refuses what it cannot serve before it starts anything."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from avengers_graph.app.cli import app

runner = CliRunner()
NO_KEYS = {"AVENGERS_API_KEYS": "", "AVENGERS_API_KEYS_FILE": ""}


def flat(output: str) -> str:
    return " ".join(output.split())


def test_no_key_means_loopback_only() -> None:
    refused = runner.invoke(
        app,
        ["serve", "--host", "0.0.0.0", "--factory", "x:y"],  # noqa: S104
        env=NO_KEYS,
    )
    assert refused.exit_code == 1
    assert "Refusing to serve on '0.0.0.0' without an API key" in flat(refused.output)


def test_a_short_key_is_refused_without_being_shown() -> None:
    refused = runner.invoke(app, ["serve", "--factory", "x:y"], env={"AVENGERS_API_KEYS": "abc123"})
    assert refused.exit_code == 1
    assert "shorter than 16" in flat(refused.output)
    assert "abc123" not in refused.output


def test_a_bad_factory_is_a_clear_error() -> None:
    for spec, message in [
        ("no-colon", "takes module:function"),
        ("no_such_module_here:make", "Cannot import"),
        ("json:not_there", "does not name a function"),
    ]:
        result = runner.invoke(app, ["serve", "--factory", spec], env=NO_KEYS)
        assert result.exit_code == 1
        assert message in flat(result.output)


def test_a_remote_pool_must_be_calibrated(tmp_path: Path) -> None:
    config = tmp_path / "pool.yaml"
    config.write_text(
        "experts:\n  - {name: remote, base_url: 'http://127.0.0.1:9/v1', model: m}\n"
        f"store: {{path: '{tmp_path / 'store'}', name: remote}}\n"
    )
    result = runner.invoke(app, ["serve", "--config", str(config)], env=NO_KEYS)
    assert result.exit_code == 1
    assert "holds no calibration" in flat(result.output)
