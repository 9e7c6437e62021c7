"""deploy/kubernetes/: every rendered document valid (core kinds strictly for the Kubernetes
versions in kube.VERSIONS, custom kinds against ../shared/k8s-schemas/), the settings equal to
the service's defaults, and the pieces that must agree with each other and with the service
(probes, ports, drain, grace period, selectors, autoscaling targets, security) agreeing.
No cluster runs here: tests/deploy/test_kubernetes_contract.py runs the service as the pods
would, test_kubernetes_metrics.py the autoscalers' queries."""

from __future__ import annotations

import copy
import os
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from prometheus_client import CollectorRegistry

from service.metrics import Metrics
from service.server import ANSWER_SECONDS
from service.settings import Settings
from tests.deploy import kube, tools
from tests.deploy.test_dockerfiles import stages

Doc = dict[str, Any]
KINDS = {
    "base": {
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "PersistentVolumeClaim",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "ServiceMonitor",
        "NetworkPolicy",
    },
}
KINDS["gpu"] = KINDS["base"]
# KServe makes the Deployment, the Service and (with KEDA) the ScaledObject itself.
KINDS["kserve"] = KINDS["base"] - {"Deployment", "Service", "HorizontalPodAutoscaler"} | {
    "InferenceService"
}
# Settings the ConfigMap sets to something other than the service's default, and why.
NOT_DEFAULT = {
    "device": "cpu",  # the image's (docker/Dockerfile); overlays/gpu sets cuda
    "shutdown_drain_seconds": 10.0,  # readiness 503 while serving, after the preStop sleep
    # Connection lifetime caps, so that keep-alive clients reach new replicas (issue 19).
    "max_requests_per_connection": 1000,
    "max_connection_seconds": 300.0,
}
# Set in the container, not in the ConfigMap: the container's own, or from elsewhere.
IN_CONTAINER = {"host", "port", "model_repository", "intra_op_threads", "api_key"}
QUEUE_METRIC = "adapool_queue_depth"


@pytest.mark.parametrize("version", kube.VERSIONS)
@pytest.mark.parametrize("target", kube.TARGETS)
def test_every_rendered_document_validates(target: str, version: str) -> None:
    docs = kube.render(target)
    assert kube.kinds(docs) == KINDS[target]
    for doc in docs:
        kube.validate(doc, version)
    namespaced = [d for d in docs if d["kind"] != "Namespace"]
    assert {d["metadata"].get("namespace") for d in namespaced} == {"adapool"}


def test_every_source_file_validates_without_kubectl() -> None:
    """Where kubectl is missing, the resource files themselves (each a whole object)."""
    docs = kube.source_documents()
    assert {"base/deployment.yaml", "overlays/kserve/inferenceservice.yaml"} <= set(docs)
    for version in kube.VERSIONS:
        for doc in docs.values():
            kube.validate(doc, version)


def test_validation_catches_what_it_should() -> None:
    """A misspelt field, a wrong type or an unknown kind fails: the checks above can fail."""
    deployment = kube.one(list(kube.source_documents().values()), "Deployment")
    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kube.validate(typo, kube.VERSIONS[0])
    isvc = kube.source_documents()["overlays/kserve/inferenceservice.yaml"]
    for change in (
        lambda d: d["spec"]["predictor"].update(minReplica=2),
        lambda d: d["spec"]["predictor"]["containers"][0].update(ports="8080"),
    ):
        wrong = copy.deepcopy(isvc)
        change(wrong)
        with pytest.raises(jsonschema.ValidationError):
            kube.validate(wrong, kube.VERSIONS[0])
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kube.validate({"apiVersion": "example.com/v1", "kind": "Unknown"}, kube.VERSIONS[0])


def test_settings_are_the_service_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings built from the ConfigMap's values equal Settings' defaults, but for the ones
    NOT_DEFAULT names; with the container's variables, every setting is set exactly once."""
    for key in list(os.environ):
        if key.startswith("ADAPOOL_"):
            monkeypatch.delenv(key)
    expected = Settings().model_dump()
    config = kube.settings_env()
    for key, value in config.items():
        monkeypatch.setenv(key, value)
    got = Settings().model_dump()
    for name, value in NOT_DEFAULT.items():
        assert got.pop(name) == value, name
        expected.pop(name)
    assert got == expected
    fields = {f"ADAPOOL_{name.upper()}" for name in Settings.model_fields}
    assert set(config) == fields - {f"ADAPOOL_{n.upper()}" for n in IN_CONTAINER}
    for target in kube.TARGETS:
        names = {v["name"] for v in kube.container(target)["env"]}
        assert {f"ADAPOOL_{n.upper()}" for n in IN_CONTAINER} <= names, target
        assert not names & set(config), target  # one place for each setting


@pytest.mark.parametrize("target", kube.TARGETS)
def test_rendered_settings_are_the_env_file_and_reach_the_container(target: str) -> None:
    maps = kube.config_maps(target)
    (name,) = maps
    assert name.startswith("adapool-settings-")  # the content hash: a change rolls the pods
    expected = kube.settings_env() | ({"ADAPOOL_DEVICE": "cuda"} if target == "gpu" else {})
    assert maps[name] == expected
    (source,) = kube.container(target)["envFrom"]
    assert source == {"configMapRef": {"name": name}}


@pytest.mark.parametrize("target", kube.TARGETS)
def test_port_and_command_are_the_images(target: str) -> None:
    c = kube.container(target)
    (port,) = c["ports"]  # one port: API, health and metrics
    assert port["name"] == "http" and port["protocol"] == "TCP"
    env = kube.container_env(c, kube.config_maps(target))
    assert env["ADAPOOL_PORT"] == str(port["containerPort"])
    assert env["ADAPOOL_HOST"] == "0.0.0.0"
    _, (_, runtime) = stages(tools.ROOT / "docker" / "Dockerfile")
    assert runtime.args("ENTRYPOINT") == ['["python", "-m", "service"]']
    assert c["command"] == ["python", "-m", "service"]
    assert "args" not in c
    assert env["ADAPOOL_INTRA_OP_THREADS"] == "2"  # = the CPU request
    assert "ADAPOOL_API_KEY" not in env  # optional Secret, not shipped


@pytest.mark.parametrize("target", kube.TARGETS)
def test_probes_fit_model_loading_and_never_kill_an_unready_pod(target: str) -> None:
    c = kube.container(target)
    prefix = "/v2" if target == "kserve" else ""
    startup, live, ready = c["startupProbe"], c["livenessProbe"], c["readinessProbe"]
    assert startup["httpGet"]["path"] == live["httpGet"]["path"] == f"{prefix}/health/live"
    assert ready["httpGet"]["path"] == f"{prefix}/health/ready"
    for probe in (startup, live, ready):
        assert probe["httpGet"]["port"] == "http"
        assert probe["timeoutSeconds"] < probe["periodSeconds"]
    # At least the image's health-check start period (60 s CPU, 120 s GPU) to load the models.
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    assert budget >= (240 if target == "gpu" else 120)
    # The readiness forward pass takes well under a second here (the contract test measures
    # it); its timeout leaves room for a busy node.
    assert ready["timeoutSeconds"] >= 4


@pytest.mark.parametrize("target", kube.TARGETS)
def test_shutdown_drains_within_the_grace_period(target: str) -> None:
    """preStop sleep (the balancers forget the pod), then SIGTERM: the service's drain (readiness
    503, still serving), then in-flight requests finish; the kubelet's SIGKILL comes later."""
    spec, c = kube.pod_spec(kube.workload(target)), kube.container(target)
    settings = kube.container_env(c, kube.config_maps(target))
    drain = float(settings["ADAPOOL_SHUTDOWN_DRAIN_SECONDS"])
    timeout = float(settings["ADAPOOL_SHUTDOWN_TIMEOUT_SECONDS"])
    pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop == drain == 10
    # Out of the Service after at most failureThreshold x periodSeconds of readiness 503s.
    ready = c["readinessProbe"]
    assert drain >= ready["periodSeconds"] * ready["failureThreshold"]
    assert spec["terminationGracePeriodSeconds"] > pre_stop + drain + timeout + ANSWER_SECONDS


@pytest.mark.parametrize("target", kube.TARGETS)
def test_pods_run_unprivileged_with_nothing_writable_but_tmp(target: str) -> None:
    """The "restricted" Pod Security Standard that the Namespace enforces, and more."""
    spec, c = kube.pod_spec(kube.workload(target)), kube.container(target)
    namespace = kube.one(kube.render(target), "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    pod = spec["securityContext"]
    _, (_, runtime) = stages(tools.ROOT / "docker" / "Dockerfile")
    assert runtime.args("USER") == [f"{pod['runAsUser']}:{pod['runAsGroup']}"] == ["10001:10001"]
    assert pod["runAsNonRoot"] is True
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["privileged"] is False
    assert sc["readOnlyRootFilesystem"] is True and sc["runAsNonRoot"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    for forbidden in ("hostNetwork", "hostPID", "hostIPC"):
        assert not spec.get(forbidden), forbidden
    assert spec["automountServiceAccountToken"] is False
    account = kube.one(kube.render(target), "ServiceAccount", spec["serviceAccountName"])
    assert account["automountServiceAccountToken"] is False
    # A Service named adapool would inject ADAPOOL_PORT=tcp://...: the service refuses it.
    assert spec["enableServiceLinks"] is False
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    for volume in volumes.values():  # the restricted profile's volume types
        assert set(volume) - {"name"} <= {"emptyDir", "persistentVolumeClaim", "configMap"}
    env = kube.container_env(c, kube.config_maps(target))
    if target == "kserve":  # KServe mounts the claim read-only at /mnt/models itself
        assert env["STORAGE_URI"] == "pvc://adapool-models/"
        assert env["ADAPOOL_MODEL_REPOSITORY"] == "/mnt/models"
        assert set(mounts) == {"/tmp"}
    else:
        models = mounts[env["ADAPOOL_MODEL_REPOSITORY"]]
        assert models["readOnly"] is True
        claim = volumes[models["name"]]["persistentVolumeClaim"]
        assert claim == {"claimName": "adapool-models", "readOnly": True}
        assert set(mounts) == {"/tmp", "/models"}
    kube.one(kube.render(target), "PersistentVolumeClaim", "adapool-models")


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("target", ["base", "gpu"])
def test_every_selector_selects_the_pods_and_only_them(target: str) -> None:
    docs = kube.render(target)
    deployment = kube.one(docs, "Deployment", "adapool")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert matches(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    service = kube.one(docs, "Service", "adapool")
    assert matches(service["spec"]["selector"], pod_labels)
    assert matches(
        kube.one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"], pod_labels
    )
    policy = kube.one(docs, "NetworkPolicy")
    assert matches(policy["spec"]["podSelector"]["matchLabels"], pod_labels)
    for constraint in deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]:
        assert matches(constraint["labelSelector"]["matchLabels"], pod_labels)
    monitor = kube.one(docs, "ServiceMonitor")
    assert matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    (endpoint,) = monitor["spec"]["endpoints"]
    (port,) = service["spec"]["ports"]
    assert endpoint["port"] == port["name"] == port["targetPort"] == "http"
    hpa = kube.one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "adapool",
    }
    assert "replicas" not in deployment["spec"]  # the HPA owns the count


@pytest.mark.parametrize("target", kube.TARGETS)
def test_network_policy_admits_the_scraper_and_the_clients_only(target: str) -> None:
    policy = kube.one(kube.render(target), "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert "egress" not in policy  # nothing goes out
    (rule,) = policy["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    scraper, clients = rule["from"]
    assert scraper == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    }
    assert clients == {"namespaceSelector": {"matchLabels": {"adapool-serve/client": "true"}}}


def test_the_hpa_scales_on_the_queue_gauge_and_cpu() -> None:
    hpa = kube.one(kube.render("base"), "HorizontalPodAutoscaler")["spec"]
    queue, cpu = hpa["metrics"]
    assert queue["type"] == "Pods" and queue["pods"]["metric"]["name"] == QUEUE_METRIC
    assert queue["pods"]["target"] == {"type": "AverageValue", "averageValue": "8"}
    assert cpu["resource"] == {
        "name": "cpu",
        "target": {"type": "Utilization", "averageUtilization": 70},
    }
    assert 2 <= hpa["minReplicas"] < hpa["maxReplicas"]
    # A gauge: the HPA averages a level over pods; a counter only grows.
    gauge = Metrics(CollectorRegistry()).queue_depth
    assert gauge._type == "gauge" and gauge._name == QUEUE_METRIC
    rules = yaml.safe_load((kube.KUBERNETES / "prometheus-adapter-rules.yaml").read_text())
    (rule,) = rules["rules"]
    assert rule["name"]["as"] == QUEUE_METRIC
    assert rule["seriesQuery"].startswith(QUEUE_METRIC + "{")


def test_gpu_overlay_changes_only_the_image_device_gpu_and_startup() -> None:
    base, gpu = kube.render("base"), kube.render("gpu")
    cpu_c, gpu_c = kube.container("base"), kube.container("gpu")
    assert cpu_c["image"] == "adapool-serve:cpu" and gpu_c["image"] == "adapool-serve:gpu"
    assert gpu_c["resources"]["limits"] == {"memory": "6Gi", "nvidia.com/gpu": 1}
    assert kube.container_env(gpu_c, kube.config_maps("gpu"))["ADAPOOL_DEVICE"] == "cuda"
    gpu_spec = kube.pod_spec(kube.workload("gpu"))
    assert gpu_spec.pop("tolerations") == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    for c in (cpu_c, gpu_c):
        for key in ("image", "startupProbe", "resources", "envFrom"):
            c.pop(key)
    assert gpu_c == cpu_c
    gpu_spec.pop("containers")
    cpu_spec = kube.pod_spec(kube.workload("base"))
    cpu_spec.pop("containers")
    assert gpu_spec == cpu_spec
    others = {
        (d["kind"], d["metadata"]["name"]): d
        for d in base
        if d["kind"] not in ("Deployment", "ConfigMap")
    }
    assert others == {
        (d["kind"], d["metadata"]["name"]): d
        for d in gpu
        if d["kind"] not in ("Deployment", "ConfigMap")
    }


def test_kserve_predictor_is_a_v2_custom_container_with_the_base_settings() -> None:
    isvc = kube.workload("kserve")
    annotations = isvc["metadata"]["annotations"]
    assert annotations["serving.kserve.io/autoscalerClass"] == "keda"
    assert annotations["serving.kserve.io/deploymentMode"] == "Standard"  # was RawDeployment
    c = kube.container("kserve")
    assert c["name"] == "kserve-container"
    env = kube.container_env(c, kube.config_maps("kserve"))
    assert env["PROTOCOL"] == "v2"  # KServe's webhook accepts exactly v1 or v2
    assert "httpGet" in c["readinessProbe"]  # else KServe adds a TCP probe: ready too early
    base_c, base_spec = kube.container("base"), kube.pod_spec(kube.workload("base"))
    spec = kube.pod_spec(isvc)
    for key in ("securityContext", "lifecycle", "imagePullPolicy", "command", "image"):
        assert c[key] == base_c[key], key
    assert c["resources"]["requests"] == base_c["resources"]["requests"]
    assert c["resources"]["limits"] == {**base_c["resources"]["limits"], "cpu": "2"}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        got = {k: v for k, v in c[probe].items() if k != "httpGet"}
        want = {k: v for k, v in base_c[probe].items() if k != "httpGet"}
        assert got == want, probe
    for key in (
        "securityContext",
        "terminationGracePeriodSeconds",
        "serviceAccountName",
        "automountServiceAccountToken",
        "enableServiceLinks",
    ):
        assert spec[key] == base_spec[key], key
    assert [v for v in spec["volumes"] if v["name"] == "tmp"] == [
        v for v in base_spec["volumes"] if v["name"] == "tmp"
    ]
    kserve_labels = {"serving.kserve.io/inferenceservice": "adapool", "component": "predictor"}
    for constraint in spec["topologySpreadConstraints"]:
        assert constraint["labelSelector"]["matchLabels"] == kserve_labels
    docs = kube.render("kserve")
    assert kube.one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == kserve_labels
    assert kube.one(docs, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"] == kserve_labels
    assert kube.one(docs, "ServiceMonitor")["spec"]["selector"]["matchLabels"] == kserve_labels


def kserve_scaled_object(isvc: Doc) -> Doc:
    """The ScaledObject KServe's controller makes of the InferenceService: a transcription of
    createKedaScaledObject and getKedaMetrics (KServe's pkg/controller/v1beta1/
    inferenceservice/reconcilers/keda/keda_reconciler.go) for External Prometheus metrics."""
    predictor = isvc["spec"]["predictor"]
    name = f"{isvc['metadata']['name']}-predictor"
    triggers = []
    for metric in predictor["autoScaling"]["metrics"]:
        assert metric["type"] == "External"
        source = metric["external"]
        trigger = {
            "type": source["metric"]["backend"],
            "metadata": {
                "serverAddress": source["metric"]["serverAddress"],
                "query": source["metric"]["query"],
                "threshold": f"{float(source['target']['value']):f}",  # Go's "%f"
            },
        }
        triggers.append(trigger)
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": name, "namespace": isvc["metadata"]["namespace"]},
        "spec": {
            "scaleTargetRef": {"name": name},
            "triggers": triggers,
            "minReplicaCount": predictor["minReplicas"],
            "maxReplicaCount": predictor["maxReplicas"],
        },
    }


def test_kserve_keda_trigger_sums_the_queue_with_the_hpa_target() -> None:
    """KServe copies only target.value into the trigger's threshold, and KEDA's default metric
    type (AverageValue) divides the query by the replicas: the query must be a sum over pods."""
    isvc = kube.workload("kserve")
    scaled = kserve_scaled_object(isvc)
    kube.validate(scaled, kube.VERSIONS[0])
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert "metricType" not in trigger  # AverageValue, KEDA's default
    query = trigger["metadata"]["query"]
    assert query.startswith(f"sum({QUEUE_METRIC}{{") and query.endswith("})")
    assert 'namespace="adapool"' in query and 'job="adapool-predictor"' in query
    hpa = kube.one(kube.render("base"), "HorizontalPodAutoscaler")["spec"]
    target = hpa["metrics"][0]["pods"]["target"]["averageValue"]
    assert trigger["metadata"]["threshold"] == f"{float(target):f}" == "8.000000"
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (
        hpa["minReplicas"],
        hpa["maxReplicas"],
    )


def test_readme_names_the_validated_version_and_every_target() -> None:
    readme = (tools.ROOT / "README.md").read_text()
    section = readme.split("\n## Deploy on Kubernetes\n", 1)[1].split("\n## ", 1)[0]
    oldest, newest = (v.rsplit(".", 1)[0] for v in (kube.VERSIONS[0], kube.VERSIONS[-1]))
    assert f"**Kubernetes {oldest} or newer**" in section
    assert f"validated for {oldest} and {newest}" in section
    for folder in kube.TARGETS.values():
        assert f"kubectl apply -k {folder.relative_to(tools.ROOT)} " in section, folder
