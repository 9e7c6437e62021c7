"""The Kubernetes manifests of deploy/kubernetes/ as the tests read them: rendered by
``kubectl kustomize``, or file by file without kubectl; validated against the Kubernetes schemas
(kubernetes-validate, strict) and the custom kinds' schemas in ../shared/k8s-schemas/."""

from __future__ import annotations

import functools
import json
import math
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

from tests.deploy import tools

KUBERNETES = tools.DEPLOY / "kubernetes"
BASE = KUBERNETES / "base"
TARGETS = {
    "base": KUBERNETES,
    "gpu": KUBERNETES / "overlays" / "gpu",
    "kserve": KUBERNETES / "overlays" / "kserve",
}
# The version README.md names ("Deploy on Kubernetes"), and the newest kubernetes-validate knows.
VERSIONS = ("1.32.0", "1.37.0")
# The shared folder sits beside the repository (../shared from its root); read, never copied.
SCHEMAS = tools.ROOT.parent / "shared" / "k8s-schemas"
CUSTOM = {
    ("serving.kserve.io/v1beta1", "InferenceService"): "inferenceservice_v1beta1.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject_v1alpha1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor_v1.json",
}
Doc = dict[str, Any]


@functools.cache
def _render(target: str) -> tuple[Doc, ...]:
    result = subprocess.run(
        [tools.executable("kubectl"), "kustomize", str(TARGETS[target])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return tuple(d for d in yaml.safe_load_all(result.stdout) if d)


def render(target: str) -> list[Doc]:
    """``kubectl kustomize`` of a target (skipped without kubectl, failed under CI)."""
    return [json.loads(json.dumps(d)) for d in _render(target)]  # a copy the caller may change


def kustomization(folder: Path) -> Doc:
    loaded: Doc = yaml.safe_load((folder / "kustomization.yaml").read_text())
    return loaded


def source_documents() -> dict[str, Doc]:
    """Every resource file of the base and the overlays, as written (no kubectl): file -> doc."""
    out = {}
    for folder in (BASE, TARGETS["kserve"]):
        for name in kustomization(folder)["resources"]:
            path = folder / name
            if path.is_file():
                out[str(path.relative_to(KUBERNETES))] = yaml.safe_load(path.read_text())
    return out


def env_file(path: Path) -> dict[str, str]:
    """A kustomize ``envs`` file: KEY=VALUE lines; blank lines and ``#`` comments skipped."""
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
            assert key not in out, f"{path.name}: {key} twice"
            out[key] = value
    return out


def settings_env() -> dict[str, str]:
    """The base's ConfigMap of ADAPOOL_* settings, from its generator's env file."""
    (generator,) = kustomization(BASE)["configMapGenerator"]
    (envs,) = generator["envs"]
    return env_file(BASE / envs)


@functools.cache
def _custom_validator(file: str) -> Any:
    """A validator of one shared schema, made once. Not jsonschema.validate, which checks the
    schema against its metaschema on every call: 6.8 s for the InferenceService's 1.4 MB here.
    That the schemas reject what they should is test_validation_catches_what_it_should's."""
    path = SCHEMAS / file
    if not path.is_file():
        tools.missing("k8s-schemas")
    schema = json.loads(path.read_text())
    return jsonschema.validators.validator_for(schema)(schema)


def validate(doc: Doc, version: str) -> None:
    """Core kinds strictly against Kubernetes ``version``; custom kinds against the shared
    schemas. Raises (jsonschema's or kubernetes-validate's error) on anything invalid or unknown."""
    custom = CUSTOM.get((doc.get("apiVersion", ""), doc.get("kind", "")))
    if custom is not None:
        _custom_validator(custom).validate(doc)  # raises jsonschema.ValidationError
    else:
        kubernetes_validate.validate(doc, version, strict=True)


def one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''}"
    return found[0]


def kinds(docs: list[Doc]) -> set[str]:
    return {d["kind"] for d in docs}


def workload(target: str) -> Doc:
    """The rendered object that runs the pods: the Deployment, or the InferenceService."""
    docs = render(target)
    kind = "InferenceService" if target == "kserve" else "Deployment"
    return one(docs, kind, "adapool")


def container(target: str) -> Doc:
    """The pods' one container, as rendered."""
    (found,) = pod_spec(workload(target))["containers"]
    c: Doc = found
    return c


def config_maps(target: str) -> dict[str, dict[str, str]]:
    """Every rendered ConfigMap: name (with its hash) -> data."""
    return {d["metadata"]["name"]: d["data"] for d in render(target) if d["kind"] == "ConfigMap"}


def pod_spec(doc: Doc) -> Doc:
    """The pod spec of a Deployment, or of an InferenceService's predictor."""
    if doc["kind"] == "Deployment":
        spec: Doc = doc["spec"]["template"]["spec"]
        return spec
    assert doc["kind"] == "InferenceService", doc["kind"]
    predictor: Doc = doc["spec"]["predictor"]
    return predictor


def container_env(container: Doc, config_maps: dict[str, dict[str, str]]) -> dict[str, str]:
    """The environment the kubelet gives ``container``: its ``envFrom`` ConfigMaps, then its
    ``env`` (which wins). ``resourceFieldRef`` resolves as the kubelet does (the value over the
    divisor, rounded up); an optional ``secretKeyRef`` to a Secret that is not there is unset."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(config_maps[source["configMapRef"]["name"]])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
            continue
        ref = var["valueFrom"]
        if "resourceFieldRef" in ref:
            field = ref["resourceFieldRef"]
            source, _, name = field["resource"].partition(".")
            amount = cpu(container["resources"][source][name])
            env[var["name"]] = str(math.ceil(amount / cpu(field.get("divisor", "1"))))
        else:
            assert ref["secretKeyRef"]["optional"] is True, var  # no Secret in the manifests
    return env


def cpu(quantity: str | int) -> float:
    """A CPU quantity (``2``, ``500m``) in cores."""
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)
