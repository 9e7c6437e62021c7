"""docker-compose.yml and its GPU override, validated by Docker Compose v2 (no engine needed)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.settings import Settings
from tests.deploy import tools

ROOT = tools.ROOT
config = tools.compose_config
SERVICES = {"adapool", "lb", "prometheus", "grafana"}
GPU = ("docker-compose.yml", "docker-compose.gpu.yml")
# The container's own: set by the image (host, port, repository path) or secret (api_key).
NOT_IN_COMPOSE = {"host", "port", "model_repository", "api_key"}


@pytest.fixture(scope="module")
def default() -> dict[str, Any]:
    return config()


@pytest.fixture(scope="module")
def gpu() -> dict[str, Any]:
    return config(*GPU)


def mounts(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["target"]: v for v in service.get("volumes", [])}


def test_both_variants_validate(default: dict[str, Any], gpu: dict[str, Any]) -> None:
    assert set(default["services"]) == SERVICES
    assert set(gpu["services"]) == SERVICES


def test_service_runs_read_only_with_the_models_mounted_read_only(default: dict[str, Any]) -> None:
    adapool = default["services"]["adapool"]
    assert adapool["read_only"] is True
    assert "/tmp" in adapool["tmpfs"]
    models = mounts(adapool)["/models"]
    assert models["type"] == "bind" and models["read_only"] is True
    assert Path(models["source"]) == ROOT / "model_repository"
    assert list(Path(models["source"]).glob("*/*/model.onnx"))
    # The health check is the script the Dockerfiles copy in.
    assert adapool["healthcheck"]["test"] == ["CMD", "python", "/opt/adapool/healthcheck.py"]
    for dockerfile in ("docker/Dockerfile", "docker/Dockerfile.gpu"):
        text = (ROOT / dockerfile).read_text()
        assert "COPY docker/healthcheck.py /opt/adapool/healthcheck.py" in text


def test_every_service_has_a_health_check_and_a_restart_policy(default: dict[str, Any]) -> None:
    for name, service in default["services"].items():
        assert service.get("healthcheck", {}).get("test"), name
        assert service.get("restart") == "unless-stopped", name


def test_service_can_be_scaled(default: dict[str, Any]) -> None:
    """--scale adapool=N needs no fixed container name and no published host port."""
    adapool = default["services"]["adapool"]
    assert "container_name" not in adapool
    assert not adapool.get("ports")
    assert adapool["expose"] == ["8000"]
    assert default["services"]["lb"]["depends_on"]["adapool"]["condition"] == "service_healthy"


def test_cpu_and_gpu_variants(default: dict[str, Any], gpu: dict[str, Any]) -> None:
    cpu_service, gpu_service = default["services"]["adapool"], gpu["services"]["adapool"]
    assert cpu_service["build"]["dockerfile"] == "docker/Dockerfile"
    assert cpu_service["environment"]["ADAPOOL_DEVICE"] == "cpu"
    assert "deploy" not in cpu_service or not cpu_service["deploy"].get("resources")
    assert gpu_service["build"]["dockerfile"] == "docker/Dockerfile.gpu"
    assert gpu_service["image"] == "adapool-serve:gpu"
    assert gpu_service["environment"]["ADAPOOL_DEVICE"] == "cuda"
    (device,) = gpu_service["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert device["count"] == 1
    # The override changes only what it must: the rest of the service is the same.
    for key in ("read_only", "tmpfs", "volumes", "restart", "expose"):
        assert gpu_service[key] == cpu_service[key], key


def test_compose_defaults_are_the_service_defaults(
    default: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The container's settings, built from compose's environment, equal Settings' defaults
    (except the device, which each image sets), and every setting can be set through compose."""
    env = default["services"]["adapool"]["environment"]
    for key in list(os.environ):
        if key.startswith("ADAPOOL_"):
            monkeypatch.delenv(key)
    expected = Settings().model_dump()
    for key, value in env.items():
        if value is not None:
            monkeypatch.setenv(key, value)
    got = Settings().model_dump()
    assert got.pop("device") == "cpu"
    expected.pop("device")
    assert got == expected
    fields = {f"ADAPOOL_{name.upper()}" for name in Settings.model_fields}
    assert set(env) == fields - {f"ADAPOOL_{n.upper()}" for n in NOT_IN_COMPOSE - {"api_key"}}
    assert env["ADAPOOL_API_KEY"] is None  # passed through only when set: never an empty key


def test_settings_come_from_the_environment() -> None:
    env = {"ADAPOOL_MAX_BATCH_SIZE": "32", "ADAPOOL_API_KEY": "s3cret", "GRAFANA_PORT": "3001"}
    services = config(env=env)["services"]
    assert services["adapool"]["environment"]["ADAPOOL_MAX_BATCH_SIZE"] == "32"
    assert services["adapool"]["environment"]["ADAPOOL_API_KEY"] == "s3cret"
    assert services["grafana"]["ports"][0]["published"] == "3001"
    lb_body = services["lb"]["environment"]["ADAPOOL_MAX_BODY_BYTES"]
    assert lb_body == services["adapool"]["environment"]["ADAPOOL_MAX_BODY_BYTES"]


def test_prometheus_gets_our_config_and_scrapes_every_replica(default: dict[str, Any]) -> None:
    prometheus = default["services"]["prometheus"]
    volumes = mounts(prometheus)
    config_file = next(a for a in prometheus["command"] if a.startswith("--config.file="))
    target = config_file.split("=", 1)[1]
    assert Path(volumes[target]["source"]) == tools.DEPLOY / "prometheus" / "prometheus.yml"
    scrape = yaml.safe_load((tools.DEPLOY / "prometheus" / "prometheus.yml").read_text())
    for rule_file in scrape["rule_files"]:  # relative to the config file
        mounted = volumes[str(Path(target).parent / rule_file)]
        assert Path(mounted["source"]) == tools.DEPLOY / "prometheus" / rule_file
    (job,) = [j for j in scrape["scrape_configs"] if j["job_name"] == "adapool"]
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["adapool"] and sd["type"] == "A"  # one A record per replica
    assert sd["port"] == 8000 and job["metrics_path"] == "/metrics"
    for dockerfile in ("docker/Dockerfile", "docker/Dockerfile.gpu"):
        assert "ADAPOOL_PORT=8000" in (ROOT / dockerfile).read_text()


def test_grafana_provisioning_matches_the_mounts(default: dict[str, Any]) -> None:
    grafana = default["services"]["grafana"]
    volumes = mounts(grafana)
    provisioning = Path(volumes["/etc/grafana/provisioning"]["source"])
    assert provisioning == tools.DEPLOY / "grafana" / "provisioning"
    providers = yaml.safe_load((provisioning / "dashboards" / "adapool.yml").read_text())
    (provider,) = providers["providers"]
    dashboards = volumes[provider["options"]["path"]]
    assert Path(dashboards["source"]) == tools.DEPLOY / "grafana" / "dashboards"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(provider["options"]["path"] + "/")
    assert (Path(dashboards["source"]) / Path(home).name).is_file()
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    (source,) = sources["datasources"]
    assert source["url"] == "http://prometheus:9090"
    assert "prometheus" in default["services"]


def test_load_balancer_gets_its_template(default: dict[str, Any]) -> None:
    lb = default["services"]["lb"]
    templates = Path(mounts(lb)["/etc/nginx/templates"]["source"])
    assert (templates / "default.conf.template").is_file()
    assert lb["ports"][0]["target"] == 8080 and lb["ports"][0]["host_ip"] == "127.0.0.1"
