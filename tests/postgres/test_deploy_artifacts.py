"""The deployment artifacts run what the replica tests run.

No container engine runs here, so the Dockerfile, the compose file and the
Kubernetes manifest are checked against the command, settings file and
environment that ``test_replicas.py`` exercises on real processes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pg_replicas import DEPLOY_CONFIG, deployment_env
from typer.testing import CliRunner

from capirelay.cli import app
from capirelay.config import load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "examples" / "deploy"
SERVE = [
    "serve",
    "--config",
    "/etc/capirelay/capirelay.toml",
    "--host",
    "0.0.0.0",
    "--port",
    "8080",
]
MIGRATE = ["migrate", "--config", "/etc/capirelay/capirelay.toml"]
# The variables a replica needs besides the settings file (the test only adds overrides).
SECRETS = {"CAPIRELAY_STORAGE", "META_ACCESS_TOKEN", "INGEST_KEY"}


def dockerfile_instruction(name: str) -> list[str]:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    match = re.search(rf"^{name} (\[.*\])$", text, re.MULTILINE)
    assert match, name
    return list(json.loads(match[1]))


def k8s_documents() -> list[dict[str, Any]]:
    text = (DEPLOY / "kubernetes" / "capirelay.yaml").read_text(encoding="utf-8")
    return [doc for doc in yaml.safe_load_all(text) if doc]


def test_dockerfile_runs_capirelay_serve_as_a_non_root_user() -> None:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert text.startswith("#") and "FROM python:3.11-slim" in text
    assert dockerfile_instruction("ENTRYPOINT") == ["capirelay"]
    assert dockerfile_instruction("CMD") == SERVE
    assert re.search(r"^USER capirelay$", text, re.MULTILINE)
    assert "pip install ." in text
    assert "/readyz" in text.split("HEALTHCHECK", 1)[1]


def test_compose_runs_the_same_commands_with_the_same_environment() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
    services = compose["services"]
    assert services["gateway"]["command"] == SERVE
    assert services["migrate"]["command"] == MIGRATE
    assert services["gateway"]["deploy"]["replicas"] >= 2
    for name in ("gateway", "migrate"):
        assert set(services[name]["environment"]) == SECRETS
        assert "./capirelay.toml:/etc/capirelay/capirelay.toml:ro" in services[name]["volumes"]


def test_kubernetes_runs_the_same_commands_with_the_same_secrets() -> None:
    docs = {doc["kind"]: doc for doc in k8s_documents()}
    assert set(docs["Secret"]["stringData"]) == SECRETS
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    assert docs["Deployment"]["spec"]["replicas"] >= 2
    [gateway] = pod["containers"]
    [migrate] = pod["initContainers"]
    assert (gateway["args"], migrate["args"]) == (SERVE, MIGRATE)
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_the_replica_tests_use_the_deployment_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    env = deployment_env("postgresql://capirelay@db/capirelay", "http://127.0.0.1:9")
    assert set(env) >= SECRETS
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(DEPLOY_CONFIG)
    assert settings.storage == "postgresql://capirelay@db/capirelay"
    assert settings.delivery.lease_seconds == 10
    [pixel] = settings.pixels.values()
    assert (
        pixel.access_token is not None and pixel.access_token.resolve() == env["META_ACCESS_TOKEN"]
    )


def test_migrate_command_of_the_deployment(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAPIRELAY_STORAGE", postgres_url)
    result = CliRunner().invoke(app, ["migrate", "--config", str(DEPLOY_CONFIG)])
    assert result.exit_code == 0, result.output
    assert "applied migrations" in result.output
