"""docker-compose.yml cannot run here (no Docker engine); check that it agrees with the code."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from services.config import Settings

COMPOSE_FILE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


def load_compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def test_compose_parses_with_the_expected_services() -> None:
    services = load_compose()["services"]
    assert set(services) == {"neo4j", "redis", "api", "worker-gpu", "worker-cpu"}
    assert services["neo4j"]["image"] == "neo4j:5.26-community"
    plugins = yaml.safe_load(services["neo4j"]["environment"]["NEO4J_PLUGINS"])
    assert set(plugins) == {"apoc", "graph-data-science"}
    assert "NEO4J_AUTH" in services["neo4j"]["environment"]
    assert services["redis"]["image"].startswith("redis:7")
    for name, service in services.items():
        assert "healthcheck" in service, f"{name} has no healthcheck"


def test_gpu_worker_reserves_an_nvidia_device() -> None:
    services = load_compose()["services"]
    devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "deploy" not in services["worker-cpu"]


def test_every_medgraph_variable_is_a_setting_and_parses() -> None:
    services = load_compose()["services"]
    fields = {f"MEDGRAPH_{name.upper()}" for name in Settings.model_fields}
    seen: dict[str, str] = {}
    for name in ("api", "worker-gpu", "worker-cpu"):
        environment = services[name]["environment"]
        unknown = {key for key in environment if key.startswith("MEDGRAPH_")} - fields
        assert not unknown, f"{name} sets variables the settings do not know: {unknown}"
        seen.update(environment)
    # The values must be acceptable to the settings object itself (after ${VAR} substitution).
    values = {
        key[len("MEDGRAPH_") :].lower(): re.sub(r"\$\{[^}]*\}", "placeholder", str(value))
        for key, value in seen.items()
    }
    settings = Settings(
        **{k: v for k, v in values.items() if k != "data_roots"},
        data_roots=yaml.safe_load(values["data_roots"]),
    )
    assert settings.bolt_uri == "bolt://neo4j:7687"
    assert settings.broker_url == "redis://:placeholder@redis:6379/0"


def test_redis_requires_the_shared_password() -> None:
    services = load_compose()["services"]
    password = services["api"]["environment"]["MEDGRAPH_REDIS_PASSWORD"]
    command = services["redis"]["command"]
    assert command[command.index("--requirepass") + 1] == password
    assert services["redis"]["environment"]["REDISCLI_AUTH"] == password
    assert "ports" not in services["redis"], "Redis is reachable only inside the compose network"


def test_neo4j_password_is_shared_between_neo4j_and_the_apps() -> None:
    services = load_compose()["services"]
    neo4j_auth = services["neo4j"]["environment"]["NEO4J_AUTH"]
    api_password = services["api"]["environment"]["MEDGRAPH_NEO4J_PASSWORD"]
    assert neo4j_auth.split("/", 1)[1] == api_password
