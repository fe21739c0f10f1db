"""The settings object: environment prefix, derived values, and the README's table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from services.cli import settings_markdown_table
from services.config import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_environment_prefix_sets_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDGRAPH_NEO4J_BOLT_PORT", "7999")
    monkeypatch.setenv("MEDGRAPH_REDIS_PORT", "6999")
    monkeypatch.setenv("MEDGRAPH_REDIS_PASSWORD", "p@ss/word")
    settings = Settings()
    assert settings.bolt_uri == "bolt://127.0.0.1:7999"
    # The password is URL-quoted into the broker URL.
    assert settings.broker_url == "redis://:p%40ss%2Fword@127.0.0.1:6999/0"


def test_the_redis_password_is_generated_once_into_the_secrets_folder(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    url = settings.broker_url
    password = (tmp_path / "secrets" / "redis-password").read_text().strip()
    assert len(password) >= 24
    assert url == f"redis://:{password}@127.0.0.1:{settings.redis_port}/0"
    assert (tmp_path / "secrets" / "redis-password").stat().st_mode & 0o077 == 0
    assert Settings(home=tmp_path).broker_url == url


def test_explicit_uris_win_over_host_and_port() -> None:
    settings = Settings(neo4j_uri="neo4j://db:7687", redis_url="redis://cache:6379/2")
    assert settings.bolt_uri == "neo4j://db:7687"
    assert settings.broker_url == "redis://cache:6379/2"


@pytest.mark.parametrize(
    "field, value",
    [("neo4j_bolt_port", 0), ("redis_port", 70000), ("knn_k", 0), ("min_cosine", 2.0)],
)
def test_out_of_range_values_are_refused_with_the_field_named(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field):
        Settings(**{field: value})


def test_readme_configuration_table_is_current() -> None:
    match = re.search(
        r"<!-- settings-table:start -->\n(.*?)\n<!-- settings-table:end -->",
        README.read_text(),
        re.S,
    )
    assert match, "README lost its settings table markers"
    assert match.group(1) == settings_markdown_table(), (
        "README's configuration table is stale: run `medgraph config --update-readme`"
    )
