"""deploy/podium.yaml: valid against the Kubernetes schemas (kubernetes-validate), its references
hold (probe and Service ports by name, Secret keys, ConfigMap, volumes), and the watcher accepts
the ConfigMap's config with the Secret's values in its environment, as the pod starts it."""

from __future__ import annotations

import copy
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import kubernetes_validate.utils
import pytest
import yaml

from watcher.cli import main as watcher_main

MANIFEST = Path(__file__).resolve().parents[1] / "deploy" / "podium.yaml"
# The oldest Kubernetes still maintained when this was written and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.32.0", kubernetes_validate.utils.latest_version())
PROBES = ("livenessProbe", "readinessProbe", "startupProbe")


def documents() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text(encoding="utf-8")) if d]


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in docs:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] == "Pod":
            yield name, doc["spec"]
        elif doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield name, doc["spec"]["template"]["spec"]


def reference_problems(docs: list[dict[str, Any]]) -> list[str]:
    """What the schemas cannot see: names that point at nothing. A probe's named port must be
    one of its own container's ports (the kubelet resolves it there); a Service's named
    targetPort one of the selected pods' ports; secretKeyRef, configMap and claim names must be
    objects of this file, Secret keys among its keys; every volumeMount a volume of the pod."""
    secrets = {
        d["metadata"]["name"]: {**d.get("data", {}), **d.get("stringData", {})}
        for d in docs
        if d["kind"] == "Secret"
    }
    config_maps = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
    claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    problems: list[str] = []
    pod_ports: dict[str, set[str]] = {}
    for where, spec in pod_specs(docs):
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for v in volumes.values():
            if "configMap" in v and v["configMap"]["name"] not in config_maps:
                problems.append(
                    f"{where}: volume {v['name']} names ConfigMap {v['configMap']['name']!r}, not in the file"
                )
            claim = v.get("persistentVolumeClaim", {}).get("claimName")
            if claim is not None and claim not in claims:
                problems.append(f"{where}: volume {v['name']} names claim {claim!r}, not in the file")
        for c in spec.get("initContainers", []) + spec["containers"]:
            here = f"{where} container {c['name']}"
            ports = {p["name"] for p in c.get("ports", []) if "name" in p}
            pod_ports.setdefault(where, set()).update(ports)
            for probe_kind in PROBES:
                probe = c.get(probe_kind) or {}
                for handler in ("httpGet", "tcpSocket", "grpc"):
                    port = (probe.get(handler) or {}).get("port")
                    if isinstance(port, str) and port not in ports:
                        problems.append(
                            f"{here}: {probe_kind} port {port!r} is not one of its ports {sorted(ports)}"
                        )
            for env in c.get("env", []):
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref is None:
                    continue
                if ref["name"] not in secrets:
                    problems.append(
                        f"{here}: env {env['name']} names Secret {ref['name']!r}, not in the file"
                    )
                elif ref["key"] not in secrets[ref["name"]]:
                    problems.append(
                        f"{here}: env {env['name']} names key {ref['key']!r}, not in Secret {ref['name']}"
                    )
            for mount in c.get("volumeMounts", []):
                if mount["name"] not in volumes:
                    problems.append(f"{here}: volumeMount {mount['name']!r} is not a volume of the pod")
    for doc in docs:
        if doc["kind"] != "Service":
            continue
        selected = [
            where
            for where, labels in _template_labels(docs)
            if all(labels.get(k) == v for k, v in doc["spec"].get("selector", {}).items())
        ]
        if not selected:
            problems.append(f"Service/{doc['metadata']['name']}: its selector matches no pod of the file")
        for port in doc["spec"]["ports"]:
            target = port.get("targetPort")
            if isinstance(target, str) and not any(target in pod_ports.get(w, set()) for w in selected):
                problems.append(
                    f"Service/{doc['metadata']['name']}: targetPort {target!r} is no port of its pods"
                )
    return problems


def _template_labels(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, str]]]:
    for doc in docs:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] == "Pod":
            yield name, doc["metadata"].get("labels", {})
        elif "template" in doc.get("spec", {}):
            yield name, doc["spec"]["template"]["metadata"].get("labels", {})


def schema_problems(docs: list[dict[str, Any]]) -> list[str]:
    problems = set()
    for version in KUBERNETES_VERSIONS:
        for doc in docs:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                problems.add(f"{doc['kind']}/{doc['metadata']['name']}: {path}: {e.message}")
    return sorted(problems)


def sidecar(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (spec,) = (s for _, s in pod_specs(docs))
    (container,) = (c for c in spec["containers"] if c["name"] == "podium-watcher")
    return container


def test_the_manifest_validates_against_the_kubernetes_schemas() -> None:
    docs = documents()
    assert {d["kind"] for d in docs} >= {"Deployment", "ConfigMap", "Secret", "Service"}
    assert schema_problems(docs) == []
    assert reference_problems(docs) == []


def test_the_sidecar_is_probed_on_healthz_by_port_name_and_runs_as_non_root() -> None:
    docs = documents()
    c = sidecar(docs)
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "podium-api"}
    assert {"name": "podium-api", "containerPort": 8265} in c["ports"]
    assert c["resources"]["requests"]
    assert c["resources"]["limits"]
    (spec,) = (s for _, s in pod_specs(docs))
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 10001  # the image's user
    assert c["securityContext"]["allowPrivilegeEscalation"] is False


@pytest.mark.parametrize(
    ("break_it", "expected"),
    [
        (
            lambda c: c["livenessProbe"]["httpGet"].update(port="podium-http"),
            "livenessProbe port 'podium-http'",
        ),
        (lambda c: c["readinessProbe"]["httpGet"].update(port="mlflow"), "readinessProbe port 'mlflow'"),
        (lambda c: c["env"][1]["valueFrom"]["secretKeyRef"].update(key="token"), "key 'token'"),
        (lambda c: c["volumeMounts"][0].update(name="config"), "volumeMount 'config'"),
    ],
    ids=["probe-on-unknown-port", "probe-on-another-containers-port", "unknown-secret-key", "unknown-volume"],
)
def test_a_broken_reference_fails_the_check(break_it: Any, expected: str) -> None:
    docs = copy.deepcopy(documents())
    break_it(sidecar(docs))
    problems = reference_problems(docs)
    assert len(problems) == 1, problems
    assert expected in problems[0]
    assert "podium-watcher" in problems[0]


@pytest.mark.parametrize(
    ("break_it", "expected"),
    [
        (lambda c: c["livenessProbe"]["httpGet"].update(port=8265.5), "livenessProbe.httpGet.port: 8265.5"),
        (lambda c: c["resources"].update(request={"cpu": "1"}), "'request' was unexpected"),  # strict
        (lambda c: c["securityContext"].update(runAsNonRoot="yes"), "runAsNonRoot: 'yes' is not of type"),
    ],
    ids=["port-not-an-integer", "misspelt-key", "string-for-boolean"],
)
def test_a_schema_error_fails_the_check(break_it: Any, expected: str) -> None:
    docs = copy.deepcopy(documents())
    break_it(sidecar(docs))
    problems = schema_problems(docs)
    assert len(problems) == 1, problems
    assert expected in problems[0]


def test_the_configmap_is_a_config_the_watcher_accepts_in_the_pods_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    docs = documents()
    (config_map,) = (d for d in docs if d["kind"] == "ConfigMap")
    (secret,) = (d for d in docs if d["kind"] == "Secret")
    config = tmp_path / "watcher.yaml"
    config.write_text(config_map["data"]["watcher.yaml"], encoding="utf-8")
    for env in sidecar(docs)["env"]:
        ref = (env.get("valueFrom") or {}).get("secretKeyRef")
        monkeypatch.setenv(env["name"], secret["stringData"][ref["key"]] if ref else env["value"])
    assert watcher_main(["check-config", "--config", str(config)]) == 0
    printed = yaml.safe_load(io.StringIO(capsys.readouterr().out))
    assert printed["http"]["host"] == "0.0.0.0"
    assert [r["name"] for r in printed["rules"]] == ["wf-xgboost-direction", "wf-xgboost"]
    # Without the token a non-loopback bind is refused: the Secret is what makes the pod start.
    monkeypatch.delenv("PODIUM_API_TOKEN")
    assert watcher_main(["check-config", "--config", str(config)]) == 2
    assert "PODIUM_API_TOKEN" in capsys.readouterr().err
