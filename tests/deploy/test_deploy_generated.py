"""The per-stage files are generated from the product's list of stages, and none is
missing: every stage in orchestrator.bootstrap.STAGE_NAMES has an ECS task definition with
a service and an EKS Deployment (or, for tracking, a container in the intake's task and
pod, which read its SQLite store) and an IAM role for its pod."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from orchestrator.bootstrap import STAGE_NAMES
from orchestrator.settings import REPO_ROOT
from tests.deploy.conftest import CFN_DIR

pytestmark = pytest.mark.deploy


def test_the_committed_files_are_what_the_generator_writes():
    result = subprocess.run([sys.executable, str(REPO_ROOT / "deploy" / "generate.py"), "--check"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def _runs(container: dict) -> str | None:
    """The stage a container runs: `run STAGE ...` as its command or args (the ECS scaled
    stages wrap it in `sh -c 'exec payorch run STAGE --instance ...'`)."""
    words = (container.get("Command") or container.get("args") or [])
    text = " ".join(words)
    for stage in STAGE_NAMES:
        if text.startswith(f"run {stage} ") or f"payorch run {stage} " in text:
            return stage
    return None


def test_every_stage_has_an_ecs_task_definition_and_service():
    resources = yaml.safe_load((CFN_DIR / "ecs-services.yaml").read_text())["Resources"]
    services = {r["Properties"]["TaskDefinition"]["Ref"] for r in resources.values() if r["Type"] == "AWS::ECS::Service"}
    ran = {}
    for name, resource in resources.items():
        if resource["Type"] != "AWS::ECS::TaskDefinition":
            continue
        for container in resource["Properties"]["ContainerDefinitions"]:
            stage = _runs(container)
            if stage:
                assert stage not in ran, f"{stage} runs in two task definitions"
                ran[stage] = name
                assert name in services, f"{name} ({stage}) has no service"
                assert container["HealthCheck"]["Command"][:2] == ["CMD", "python"], stage
    assert sorted(ran) == sorted(STAGE_NAMES)
    assert ran["tracking"] == "IntakeTaskDefinition"


def test_every_stage_has_a_kubernetes_deployment(rendered):
    for key, text in rendered.items():
        ran = {}
        for doc in yaml.safe_load_all(text):
            if doc and doc["kind"] == "Deployment":
                for container in doc["spec"]["template"]["spec"]["containers"]:
                    stage = _runs(container)
                    if stage:
                        assert stage not in ran, (key, stage)
                        ran[stage] = doc["metadata"]["name"]
        assert sorted(ran) == sorted(STAGE_NAMES), key
        assert ran["tracking"] == "intake", key


def test_every_pod_service_account_has_an_iam_role():
    template = yaml.safe_load((CFN_DIR / "eks-pod-identity.yaml").read_text())
    bound = {r["Properties"]["ServiceAccount"] for r in template["Resources"].values()
             if r["Type"] == "AWS::EKS::PodIdentityAssociation"}
    accounts = set()
    for path in (REPO_ROOT / "deploy" / "k8s" / "base").glob("*.yaml"):
        accounts |= {d["metadata"]["name"] for d in yaml.safe_load_all(path.read_text())
                     if d and d["kind"] == "ServiceAccount"}
    assert bound == accounts == (set(STAGE_NAMES) - {"tracking"}) | {"intake", "operator"}


def test_a_new_stage_cannot_be_generated_silently(monkeypatch):
    """A stage added to STAGE_NAMES without a deployment decision stops the generator."""
    from generator import common

    monkeypatch.setattr(common, "STAGE_NAMES", (*STAGE_NAMES, "reconciliation"))
    with pytest.raises(SystemExit, match="reconciliation"):
        common.stages()
