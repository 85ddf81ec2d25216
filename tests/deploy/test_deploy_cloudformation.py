"""The CloudFormation templates: cfn-lint clean (its bundled resource specification and
rules), and what the design promises of them: least privilege, IAM-only MSK with TLS, the
edge API's TLS policy, endpoint access mode, private integration and blue/green."""

from __future__ import annotations

import json
import re

import pytest

from tests.deploy.conftest import CFN_DIR, VENV_BIN, run, tool

pytestmark = pytest.mark.deploy

TEMPLATES = sorted(CFN_DIR.glob("*.yaml"))


def load(path):
    from cfnlint.decode import decode

    template, matches = decode(str(path))
    assert not matches, matches
    return template


def test_the_templates_are_the_expected_set():
    assert {p.name for p in TEMPLATES} == {"msk.yaml", "replicator.yaml", "dynamodb.yaml", "ecs-services.yaml",
                                           "eks-pod-identity.yaml", "edge-api.yaml"}


def test_cfn_lint_is_clean_on_every_template():
    cfn_lint = tool("cfn-lint", VENV_BIN)
    # Every region the tenants run in, so a resource type missing in one of them shows.
    result = run([cfn_lint, "--regions", *_tenant_regions(), "--", *map(str, TEMPLATES)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_cfn_lint_is_live(tmp_path):
    cfn_lint = tool("cfn-lint", VENV_BIN)
    bad = tmp_path / "bad.yaml"
    bad.write_text("Resources:\n  Q:\n    Type: AWS::SQS::Queue\n    Properties:\n      VisibilityTimeoutt: 5\n")
    result = run([cfn_lint, str(bad)])
    assert result.returncode != 0 and "VisibilityTimeoutt" in result.stdout, result.stdout


def test_tenant_parameters_name_exactly_the_tenant_files(tenants):
    for path in TEMPLATES:
        assert sorted(load(path)["Parameters"]["Tenant"]["AllowedValues"]) == tenants, path.name


def _statements(template):
    for name, resource in template["Resources"].items():
        properties = resource.get("Properties", {})
        documents = [p["PolicyDocument"] for p in properties.get("Policies", [])]
        if resource["Type"] == "AWS::IAM::ManagedPolicy":
            documents.append(properties["PolicyDocument"])
        for document in documents:
            for statement in document["Statement"]:
                yield name, statement


def _as_list(value):
    return value if isinstance(value, list) else [value]


def test_iam_is_least_privilege():
    """No wildcard action; Kafka access only on the tenant's own topics, groups and
    transactional ids (or its own cluster); DynamoDB only on the tenant's ledger tables, and
    the intake's idempotency tables for the intake alone."""
    for path in TEMPLATES:
        for role, statement in _statements(load(path)):
            assert statement["Effect"] == "Allow", (path.name, role)
            for action in _as_list(statement["Action"]):
                assert not action.endswith(":*") and action != "*", (path.name, role, action)
            resources = json.dumps(statement["Resource"])
            actions = _as_list(statement["Action"])
            if any(a.startswith("kafka-cluster:") for a in actions) and path.name != "replicator.yaml":
                scoped = re.findall(r"(topic|group|transactional-id)/\$\{ClusterName\}/\$\{ClusterUuid\}/([^\"]+)",
                                    resources)
                if not scoped:  # cluster-level actions: the one cluster
                    assert resources == '[{"Ref": "MskClusterArn"}]', (path.name, role, resources)
                for kind, name in scoped:
                    assert "${Tenant}" in name, (path.name, role, kind, name)
            if any(a.startswith("dynamodb:") for a in actions):
                assert "dynamodb:CreateTable" not in actions and "dynamodb:DeleteTable" not in actions
                for arn in re.findall(r"table/([^\"]+)", resources):
                    assert arn.startswith("payorch-${Tenant}-ledger-") or (
                        arn.startswith("payorch-${Tenant}-intake-") and "Intake" in role), (path.name, role, arn)
            if resources == '"*"':
                assert set(actions) <= {"ecr:GetAuthorizationToken", "ssmmessages:CreateControlChannel",
                                        "ssmmessages:CreateDataChannel", "ssmmessages:OpenControlChannel",
                                        "ssmmessages:OpenDataChannel"}, (path.name, role, actions)


def test_stage_roles_reach_only_their_own_topics():
    """The ledger's ECS task role reads what the ledger reads and nothing the sanctions
    stage writes to: per-stage scoping, not a tenant-wide grant."""
    from generator.common import stages

    template = load(CFN_DIR / "ecs-services.yaml")
    for stage in stages():
        if stage.name == "tracking":
            continue
        policy = template["Resources"][f"{stage.name.capitalize()}TaskRole"]["Properties"]["Policies"][0]
        read = next(s for s in policy["PolicyDocument"]["Statement"] if s["Sid"] == "ReadInputs")
        names = {r["Fn::Sub"][0].rsplit("/", 1)[1] for r in read["Resource"]}
        assert names == ({f"${{Tenant}}.payments.{t}.v1" for t in stage.inputs}
                         | {f"${{Tenant}}.payments.{t}.v1.retry.*" for t in stage.inputs}), stage.name


def test_msk_is_iam_only_with_tls():
    cluster = load(CFN_DIR / "msk.yaml")["Resources"]["Cluster"]["Properties"]
    assert cluster["ClientAuthentication"]["Sasl"]["Iam"]["Enabled"] is True
    assert cluster["ClientAuthentication"]["Unauthenticated"]["Enabled"] is False
    assert "Scram" not in cluster["ClientAuthentication"]["Sasl"] and "Tls" not in cluster["ClientAuthentication"]
    assert cluster["EncryptionInfo"]["EncryptionInTransit"] == {"ClientBroker": "TLS", "InCluster": True}
    assert cluster["BrokerNodeGroupInfo"]["ConnectivityInfo"]["PublicAccess"]["Type"] == "DISABLED"


def test_the_edge_api():
    resources = load(CFN_DIR / "edge-api.yaml")["Resources"]
    domain = resources["CustomDomain"]["Properties"]
    assert domain["EndpointConfiguration"]["Types"] == ["EDGE"]
    assert domain["EndpointAccessMode"] == "STRICT" and domain["SecurityPolicy"] == {"Ref": "SecurityPolicy"}
    api = resources["Api"]["Properties"]
    assert api["EndpointConfiguration"]["Types"] == ["EDGE"] and api["DisableExecuteApiEndpoint"] is True
    integration = resources["ProxyMethod"]["Properties"]["Integration"]
    assert integration["ConnectionType"] == "VPC_LINK" and integration["Uri"].startswith("https://")
    assert resources["ProxyMethod"]["Properties"]["ApiKeyRequired"] is True
    for stage in ("BlueStage", "GreenStage"):
        settings = resources[stage]["Properties"]["MethodSettings"][0]
        assert settings["DataTraceEnabled"] is False and settings["ThrottlingRateLimit"]
    rules = [r["Properties"] for r in resources.values() if r["Type"] == "AWS::ApiGatewayV2::RoutingRule"]
    headers = {h["Header"] for r in rules for c in r["Conditions"] for h in c["MatchHeaders"]["AnyOf"]}
    assert headers == {"Payorch-Api-Version", "Payorch-Deployment"}
    assert resources["LiveMapping"]["Properties"]["Stage"] == {"Fn::If": ["BlueIsLive", "blue", "green"]}
    policies = load(CFN_DIR / "edge-api.yaml")["Parameters"]["SecurityPolicy"]["AllowedValues"]
    assert all(p.startswith("SecurityPolicy_") and p.endswith("_EDGE") for p in policies)


def _tenant_regions() -> list[str]:
    from orchestrator.settings import REPO_ROOT
    from orchestrator.tenants import load_tenants

    regions = set()
    for tenant in load_tenants(REPO_ROOT / "tenants").values():
        regions.update(tenant.region_names)
    return sorted(regions)
