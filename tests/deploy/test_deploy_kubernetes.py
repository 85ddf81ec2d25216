"""The EKS manifests: rendered by the real kustomize for every tenant in each of its
regions, validated by kubeconform against the Kubernetes JSON schemas (strict: unknown
fields are errors), and checked for what the deployment design promises."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.deploy.conftest import GO_TOOLS, KUBERNETES_VERSION, TEST_DIGEST, run, tool

pytestmark = pytest.mark.deploy

# KEDA's custom resources: no schema for them ships in a package these machines can
# install (kubernetes-validate has the built-in kinds only), so kubeconform cannot validate
# them; test_keda_scaled_objects checks what they must say instead.
CUSTOM_KINDS = {"ScaledObject", "TriggerAuthentication"}


def documents(text: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def test_kubeconform_accepts_every_rendered_manifest(rendered, kubernetes_schemas, tmp_path):
    kubeconform = tool("kubeconform", GO_TOOLS)
    files = []
    for (tenant, region), text in rendered.items():
        path = tmp_path / f"{tenant}-{region}.yaml"
        path.write_text(text)
        files.append(str(path))
    result = run([kubeconform, "-strict", "-summary", "-output", "json",
                  "-kubernetes-version", KUBERNETES_VERSION,
                  "-schema-location", str(kubernetes_schemas / "{{ .ResourceKind }}{{ .KindSuffix }}.json"),
                  "-skip", ",".join(sorted(CUSTOM_KINDS)), *files])
    report = json.loads(result.stdout)
    problems = [r for r in report["resources"] if r["status"] not in ("statusValid", "statusSkipped")]
    assert result.returncode == 0 and not problems, json.dumps(problems or report, indent=1)[:6000]
    summary = report["summary"]
    # Nothing validated would also be "no error": make sure the schemas were really used.
    assert summary["valid"] >= 40 * len(rendered), summary
    skipped = {r["kind"] for r in report["resources"] if r["status"] == "statusSkipped"}
    assert skipped <= CUSTOM_KINDS, skipped


def test_kubeconform_rejects_a_broken_manifest(kubernetes_schemas, tmp_path):
    """The validation is live: an unknown field and a wrong type are refused."""
    kubeconform = tool("kubeconform", GO_TOOLS)
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n"
                   "spec: {replicas: two, selector: {}, template: {spec: {containers: [{name: x, imagee: y}]}}}\n")
    result = run([kubeconform, "-strict", "-kubernetes-version", KUBERNETES_VERSION,
                  "-schema-location", str(kubernetes_schemas / "{{ .ResourceKind }}{{ .KindSuffix }}.json"), str(bad)])
    assert result.returncode == 1, result.stdout + result.stderr


def test_nothing_is_left_for_the_environment_to_fill(rendered):
    for key, text in rendered.items():
        assert "set-by-components" not in text, key
        for doc in documents(text):
            for container in _containers(doc):
                assert container["image"].endswith("@" + TEST_DIGEST), (key, container["name"])


def test_every_tenant_has_its_own_restricted_namespace(rendered):
    for (tenant, region), text in rendered.items():
        docs = documents(text)
        namespaces = [d for d in docs if d["kind"] == "Namespace"]
        assert [n["metadata"]["name"] for n in namespaces] == [f"payorch-{tenant}"]
        assert namespaces[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
        for doc in docs:
            if doc["kind"] not in ("Namespace", "StorageClass"):
                assert doc["metadata"]["namespace"] == f"payorch-{tenant}", doc["metadata"]


def test_network_policies_deny_by_default_and_open_only_what_is_needed(rendered):
    for key, text in rendered.items():
        policies = {d["metadata"]["name"]: d["spec"] for d in documents(text) if d["kind"] == "NetworkPolicy"}
        deny = policies["default-deny"]
        assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
        assert "ingress" not in deny and "egress" not in deny
        ports = sorted({(p["protocol"], p["port"]) for spec in policies.values()
                        for rule in spec.get("egress", []) for p in rule["ports"]})
        assert ports == [("TCP", 53), ("TCP", 80), ("TCP", 443), ("TCP", 9098), ("UDP", 53)], (key, ports)
        ingress = [spec for spec in policies.values() if spec.get("ingress")]
        assert len(ingress) == 1 and ingress[0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "intake"
        assert [p["port"] for r in ingress[0]["ingress"] for p in r["ports"]] == [8080]
        https = policies["egress-https"]["podSelector"]["matchLabels"]
        labelled = {d["metadata"]["name"] for d in documents(text) if d["kind"] == "Deployment"
                    and d["spec"]["template"]["metadata"]["labels"].get("payorch.io/egress-https") == "true"}
        assert https == {"payorch.io/egress-https": "true"}
        # Only the processes that call DynamoDB or a clearing system, or send the tenant's
        # webhooks, leave the VPC on 443.
        assert labelled == {"intake", "ledger", "execution", "settlement", "notifications"}, labelled


def test_pods_are_hardened_and_sized(rendered):
    for key, text in rendered.items():
        for doc in documents(text):
            if doc["kind"] not in ("Deployment", "Job"):
                continue
            pod = doc["spec"]["template"]["spec"]
            assert pod["automountServiceAccountToken"] is False
            for container in pod["containers"]:
                context = container["securityContext"]
                assert context["readOnlyRootFilesystem"] and context["runAsNonRoot"], (key, container["name"])
                assert not context["allowPrivilegeEscalation"] and context["capabilities"]["drop"] == ["ALL"]
                assert {"cpu", "memory"} <= set(container["resources"]["requests"]), container["name"]
                if doc["kind"] == "Deployment":
                    assert "livenessProbe" in container and "startupProbe" in container, container["name"]


def test_every_deployment_has_a_disruption_budget_and_state_where_it_needs_it(rendered):
    from orchestrator.bootstrap import STAGE_NAMES

    for key, text in rendered.items():
        docs = documents(text)
        deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
        budgets = {d["metadata"]["name"] for d in docs if d["kind"] == "PodDisruptionBudget"}
        claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
        assert set(deployments) == budgets, key
        for name, deployment in deployments.items():
            volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
            if name in ("sanctions", "ledger"):
                assert "emptyDir" in volumes["data"] and "replicas" not in deployment["spec"], name
            else:
                # A SQLite store: one replica on its own volume, never two writers.
                assert volumes["data"]["persistentVolumeClaim"]["claimName"] in claims, name
                assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
        assert set(STAGE_NAMES) - {"tracking"} <= set(deployments)


def test_keda_scaled_objects(rendered):
    """What kubeconform cannot check for KEDA's kinds: each scaled stage has a
    ScaledObject on its own Deployment, one Kafka trigger per input topic, with the stage's
    consumer group, MSK IAM over TLS, and the region filled in."""
    from generator.common import stages

    scalable = {s.name: s for s in stages() if s.scalable}
    for (tenant, region), text in rendered.items():
        docs = documents(text)
        deployments = {d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"}
        scaled = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "ScaledObject"}
        auths = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "TriggerAuthentication"}
        assert set(scaled) == set(scalable), (tenant, region)
        for name, spec in scaled.items():
            assert spec["scaleTargetRef"]["name"] == name and name in deployments
            assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
            topics = []
            for trigger in spec["triggers"]:
                meta = trigger["metadata"]
                assert trigger["type"] == "kafka" and trigger["authenticationRef"]["name"] in auths
                assert meta["consumerGroup"] == f"payorch-{tenant}.{name}"
                assert meta["sasl"] == "aws_msk_iam" and meta["tls"] == "enable"
                assert meta["awsRegion"] == region and meta["bootstrapServers"].endswith(":9098")
                assert int(meta["lagThreshold"]) > 0
                topics.append(meta["topic"])
            assert topics == [f"{tenant}.payments.{t}.v1" for t in scalable[name].inputs]
        assert all(a["podIdentity"]["provider"] == "aws" for a in auths.values())


def _containers(doc: dict) -> list[dict]:
    if doc["kind"] in ("Deployment", "Job"):
        return doc["spec"]["template"]["spec"]["containers"]
    return []
