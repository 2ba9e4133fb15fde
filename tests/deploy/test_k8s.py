"""deploy/k8s renders (kustomize) into manifests that validate, strictly, against the Kubernetes API schema."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from funnel.paths import PROJECT_ROOT

K8S = PROJECT_ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30.0"
SUPPORTED_KEYS = {"apiVersion", "kind", "namespace", "labels", "resources", "images"}


def render(directory: Path) -> list[dict[str, Any]]:
    """kustomize build for the features deploy/k8s uses: resources, namespace, labels and image overrides."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unsupported = set(kustomization) - SUPPORTED_KEYS
    assert not unsupported, f"render() does not implement {sorted(unsupported)}: extend it or use kubectl"
    images = {i["name"]: f"{i.get('newName', i['name'])}:{i.get('newTag', 'latest')}" for i in kustomization["images"]}
    labels = {k: v for entry in kustomization.get("labels", []) for k, v in entry["pairs"].items()}
    rendered = []
    for name in kustomization["resources"]:
        for document in yaml.safe_load_all((directory / name).read_text()):
            document = copy.deepcopy(document)
            document["metadata"].setdefault("namespace", kustomization["namespace"])
            document["metadata"].setdefault("labels", {}).update(labels)
            for container in _containers(document):
                container["image"] = images.get(container["image"], container["image"])
            rendered.append(document)
    return rendered


def _containers(document: dict[str, Any]) -> list[dict[str, Any]]:
    spec = document.get("spec", {})
    pod = spec.get("template", spec.get("jobTemplate", {}).get("spec", {}).get("template", {})).get("spec", {})
    return list(pod.get("containers", []))


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    return render(K8S)


def test_every_manifest_validates_strictly(manifests: list[dict[str, Any]]) -> None:
    for manifest in manifests:
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def test_a_schema_error_fails_validation(manifests: list[dict[str, Any]]) -> None:
    broken = copy.deepcopy(next(m for m in manifests if m["kind"] == "Deployment"))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["prot"] = 50052
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_each_stage_scales_on_its_own_with_grpc_probes(manifests: list[dict[str, Any]]) -> None:
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for manifest in manifests:
        by_kind.setdefault(manifest["kind"], {})[manifest["metadata"]["name"]] = manifest
    stages = {"funnel-retrieval": 50052, "funnel-ranking": 50053, "funnel-gateway": 50051}
    for name, port in stages.items():
        container = by_kind["Deployment"][name]["spec"]["template"]["spec"]["containers"][0]
        assert container["readinessProbe"]["grpc"] == {"port": port}
        assert container["livenessProbe"]["grpc"] == {"port": port, "service": "liveness"}
        assert container["resources"]["requests"] and container["resources"]["limits"]
        assert container["image"] == "funnel:latest"
        assert by_kind["HorizontalPodAutoscaler"][name]["spec"]["scaleTargetRef"]["name"] == name
        assert by_kind["PodDisruptionBudget"][name]["spec"]["minAvailable"] == 1
    for stage in ("funnel-retrieval", "funnel-ranking"):  # headless: the gateway sees, balances and probes every pod
        assert by_kind["Service"][stage]["spec"]["clusterIP"] == "None"
    config = by_kind["ConfigMap"]["funnel-config"]["data"]
    assert config["FUNNEL_RETRIEVAL_TARGET"] == "dns:///funnel-retrieval:50052"
    assert by_kind["PersistentVolumeClaim"]["funnel-artifacts"]["spec"]["accessModes"] == ["ReadWriteMany"]
    assert "--unless-stable" in _containers(by_kind["Job"]["funnel-trainer-bootstrap"])[0]["command"]
    token = _containers(by_kind["CronJob"]["funnel-trainer"])[0]["env"][0]["valueFrom"]["secretKeyRef"]
    assert token == {"name": "funnel-admin", "key": "token"}
    assert all(m["metadata"]["namespace"] == "funnel" for m in manifests)


def test_every_service_serves_metrics_on_an_annotated_port(manifests: list[dict[str, Any]]) -> None:
    by_name = {(m["kind"], m["metadata"]["name"]): m for m in manifests}
    for name, port in {"funnel-gateway": 50061, "funnel-retrieval": 50062, "funnel-ranking": 50063}.items():
        template = by_name[("Deployment", name)]["spec"]["template"]
        container = template["spec"]["containers"][0]
        assert {"name": "metrics", "containerPort": port} in container["ports"]
        assert {"name": "FUNNEL_METRICS_ADDRESS", "value": f"0.0.0.0:{port}"} in container["env"]
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == str(port)
    policy = by_name[("NetworkPolicy", "funnel-gateway-admin")]["spec"]
    assert any({"port": "metrics"} in rule["ports"] and "from" not in rule for rule in policy["ingress"])


def test_the_admin_api_has_its_own_port_service_and_policy_and_needs_the_token(manifests: list[dict[str, Any]]) -> None:
    by_name = {(m["kind"], m["metadata"]["name"]): m for m in manifests}
    gateway = _containers(by_name[("Deployment", "funnel-gateway")])[0]
    assert {"name": "admin", "containerPort": 50054} in gateway["ports"]
    assert "FUNNEL_ADMIN_TOKEN" in {e["name"] for e in gateway["env"]}  # required: the admin address is not loopback
    config = by_name[("ConfigMap", "funnel-config")]["data"]
    assert config["FUNNEL_ADMIN_ADDRESS"] == "0.0.0.0:50054"
    assert config["FUNNEL_ADMIN_TARGET"] == "funnel-gateway-admin:50054"
    public = by_name[("Service", "funnel-gateway")]["spec"]["ports"]
    assert [port["port"] for port in public] == [50051]  # the public Service never exposes the admin port
    assert by_name[("Service", "funnel-gateway-admin")]["spec"]["ports"][0]["targetPort"] == "admin"
    policy = by_name[("NetworkPolicy", "funnel-gateway-admin")]["spec"]
    admin_rule = next(rule for rule in policy["ingress"] if rule["ports"] == [{"port": "admin"}])
    assert admin_rule["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "funnel-trainer"}}}]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with kustomize) is not installed")
def test_kubectl_kustomize_renders_the_same_objects(manifests: list[dict[str, Any]]) -> None:
    out = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, check=True).stdout
    theirs = sorted((m["kind"], m["metadata"]["name"], m["metadata"]["namespace"]) for m in yaml.safe_load_all(out))
    assert theirs == sorted((m["kind"], m["metadata"]["name"], m["metadata"]["namespace"]) for m in manifests)
