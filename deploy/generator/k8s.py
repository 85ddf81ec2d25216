"""EKS: the IAM side (eks-pod-identity.yaml) and the Kustomize base and tenant overlays.

Layout (deploy/k8s/):
- base/             every stage's Deployment, the intake, volumes, PDBs, NetworkPolicies;
                    tenant- and account-free
- tenants/<tenant>/ the tenant's namespace (Pod Security "restricted"), its settings and its
                    KEDA ScaledObjects (consumer groups and topics carry the tenant)
- components/environment/ (hand-written) copies one cluster's values (region, brokers, the
                    NLB certificate) from a local ConfigMap into the ScaledObjects and the
                    intake Service, so no account value is ever committed

Pods get AWS credentials from EKS Pod Identity: the association (namespace, service
account) -> role lives in eks-pod-identity.yaml, so the manifests carry no role ARN.
"""

from __future__ import annotations

from generator.common import (
    CALLS_CLEARING,
    COLOCATED_WITH_INTAKE,
    CONTAINER_USER,
    DATA_DIR,
    INTAKE_PORT,
    SCALABLE,
    SENDS_WEBHOOKS,
    WEBHOOK_SECRET_ENV,
    Stage,
    dynamodb_statements,
    intake_health_command,
    kafka_statements,
    msk_arn,
    policy_document,
    stage_health_command,
    topic,
)

# Requests are what the scheduler reserves: a quarter core and 512 MiB carry a stage at
# today's per-payment cost (docs/PERFORMANCE.md). No CPU limit: CFS throttling adds
# latency to every hop, and the request already guarantees the share. Memory is limited,
# so a leak ends in an OOM kill and a restart rather than a starved node.
RESOURCES = {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}}
RESOURCES_BY_PROCESS = {
    "execution": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
    "intake": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
}
STATE_VOLUME_SIZE = "20Gi"
STORAGE_CLASS = "payorch-gp3-encrypted"
# The pod-identity agent's address on every EKS node (IPv4).
POD_IDENTITY_AGENT = "169.254.170.23/32"
# The VPC's private ranges: MSK brokers and the internal NLB live there. A cluster whose
# VPC uses one range can narrow these in its environment overlay.
PRIVATE_RANGES = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
KEDA_MAX_REPLICAS = 12  # the default partitions per topic in AWS (ecs-services.yaml's Partitions)
LAG_THRESHOLD = "1000"  # messages of lag per replica, as LagPerTaskTarget on ECS


def labels(process: str) -> dict:
    return {"app.kubernetes.io/name": "payorch", "app.kubernetes.io/component": process}


# --------------------------------------------------------------------------------------
# eks-pod-identity.yaml
# --------------------------------------------------------------------------------------

def eks_identity_template(stages: list[Stage]) -> dict:
    from generator.ecs import _tenants

    resources: dict = {}
    outputs: dict = {}

    def role(name: str, process: str, statements: list[dict]) -> None:
        resources[f"{name}Role"] = {
            "Type": "AWS::IAM::Role",
            "Properties": {
                "AssumeRolePolicyDocument": {"Version": "2012-10-17", "Statement": [{
                    "Effect": "Allow", "Principal": {"Service": "pods.eks.amazonaws.com"},
                    "Action": ["sts:AssumeRole", "sts:TagSession"],
                    "Condition": {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}},
                                  "ArnEquals": {"aws:SourceArn": {"Fn::Sub": (
                                      "arn:${AWS::Partition}:eks:${AWS::Region}:${AWS::AccountId}:cluster/"
                                      "${EksClusterName}")}}}}]},
                "Policies": [{"PolicyName": f"payorch-{process}", "PolicyDocument": policy_document(statements)}],
            },
        }
        resources[f"{name}PodIdentity"] = {
            "Type": "AWS::EKS::PodIdentityAssociation",
            "Properties": {"ClusterName": {"Ref": "EksClusterName"}, "Namespace": {"Fn::Sub": "payorch-${Tenant}"},
                           "ServiceAccount": process, "RoleArn": {"Fn::GetAtt": [f"{name}Role", "Arn"]}},
        }
        outputs[f"{name}RoleArn"] = {"Value": {"Fn::GetAtt": [f"{name}Role", "Arn"]}}

    for stage in stages:
        if stage.name in COLOCATED_WITH_INTAKE:
            continue
        role(stage.name.capitalize(), stage.name, kafka_statements(stage) + dynamodb_statements(stage.name))
    intake = kafka_statements(None, intake=True) + dynamodb_statements("intake")
    for stage in stages:
        if stage.name in COLOCATED_WITH_INTAKE:
            intake += [dict(s, Sid=f"{stage.name.capitalize()}{s['Sid']}") for s in kafka_statements(stage)]
    role("Intake", "intake", intake)
    role("Operator", "operator", kafka_statements(None, operator=True))
    # KEDA reads the scaled stages' lag with its operator's own identity (TriggerAuthentication
    # podIdentity provider aws, identityOwner keda): Describe only, never data.
    keda = [{"Sid": "Cluster", "Effect": "Allow", "Action": ["kafka-cluster:Connect", "kafka-cluster:DescribeCluster"],
             "Resource": [{"Ref": "MskClusterArn"}]},
            {"Sid": "ScaledStageGroups", "Effect": "Allow", "Action": ["kafka-cluster:DescribeGroup"],
             "Resource": [msk_arn("group", f"payorch-${{Tenant}}.{s.name}") for s in stages if s.scalable]},
            {"Sid": "ScaledStageTopics", "Effect": "Allow", "Action": ["kafka-cluster:DescribeTopic"],
             "Resource": sorted({topic(t) for s in stages if s.scalable for t in s.inputs})}]
    keda[2]["Resource"] = [msk_arn("topic", name) for name in keda[2]["Resource"]]
    resources["KedaLagReaderPolicy"] = {
        "Type": "AWS::IAM::ManagedPolicy",
        "Properties": {"Description": {"Fn::Sub": "KEDA reads payorch ${Tenant}'s consumer lag"},
                       "Roles": [{"Ref": "KedaOperatorRoleName"}], "PolicyDocument": policy_document(keda)},
    }
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": "payorch on EKS for one tenant in one region: an IAM role per stage process, bound to its "
                       "service account in the tenant's namespace by EKS Pod Identity, and KEDA's lag reader.",
        "Metadata": {"payorch": {"generated-by": "deploy/generate.py", "stages": [s.name for s in stages]}},
        "Parameters": {
            "Tenant": {"Type": "String", "AllowedValues": _tenants()},
            "EksClusterName": {"Type": "String", "Description": "The EKS cluster in this region (Pod Identity "
                                                                "agent add-on installed)."},
            "MskClusterArn": {"Type": "String",
                              "AllowedPattern": r"^arn:aws[a-z-]*:kafka:[a-z0-9-]+:\d{12}:cluster/.+/.+$"},
            "KedaOperatorRoleName": {"Type": "String",
                                     "Description": "The IAM role the keda-operator pod runs as (Pod Identity)."},
        },
        "Resources": resources,
        "Outputs": outputs,
    }


# --------------------------------------------------------------------------------------
# The Kustomize base
# --------------------------------------------------------------------------------------

def security_context() -> dict:
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
            "runAsUser": int(CONTAINER_USER), "runAsGroup": int(CONTAINER_USER),
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}


def env_from() -> list[dict]:
    # payorch-tenant: the tenant overlay; payorch-environment: the cluster's environment
    # overlay (brokers, region). Both are PAYORCH_* settings (orchestrator/settings.py).
    return [{"configMapRef": {"name": "payorch-tenant"}}, {"configMapRef": {"name": "payorch-environment"}}]


def base_env(process: str) -> list[dict]:
    pairs = [
        ("PAYORCH_KAFKA__SECURITY_PROTOCOL", "SASL_SSL"),  # MSK IAM: see the ECS stack's note on oauth_cb
        ("PAYORCH_KAFKA__SASL_MECHANISM", "OAUTHBEARER"),
        ("PAYORCH_KAFKA__REPLICATION_FACTOR", "3"),
        ("PAYORCH_DATA_DIR", DATA_DIR),
        ("PAYORCH_LOG_FORMAT", "json"),
    ]
    if process in ("ledger", "intake"):
        pairs.append(("PAYORCH_STORAGE__BACKEND", "dynamodb"))
    if process == "intake":
        pairs += [("PAYORCH_INTAKE__HOST", "0.0.0.0"), ("PAYORCH_INTAKE__PORT", str(INTAKE_PORT)),  # nosec
                  # The NLB forwards the name API Gateway's integration uses; the value is
                  # the environment overlay's (payorch-environment PAYORCH_INTAKE__ALLOWED_HOSTS).
                  ]
    env = [{"name": k, "value": v} for k, v in pairs]
    if process in CALLS_CLEARING:
        # The rails' endpoints: a Secret the operator creates (from Secrets Manager through
        # the External Secrets Operator, or kubectl create secret), never in git.
        env.append({"name": "PAYORCH_CLEARING__RAIL_URLS",
                    "valueFrom": {"secretKeyRef": {"name": "payorch-clearing", "key": "rail-urls"}}})
    if process in SENDS_WEBHOOKS:
        # The webhook signing secret (whsec_..., two during a rotation): a Secret the
        # operator creates, like the rails' endpoints. Optional, so a tenant without
        # webhooks needs none; a configured endpoint without it logs each failed attempt.
        env.append({"name": WEBHOOK_SECRET_ENV, "valueFrom": {"secretKeyRef": {
            "name": "payorch-webhooks", "key": "signing-secret", "optional": True}}})
    return env


def exec_probe(stage: str) -> dict:
    return {"exec": {"command": ["python", "-c", stage_health_command(stage)]},
            "periodSeconds": 30, "timeoutSeconds": 10, "failureThreshold": 3}


def stage_container(stage: Stage) -> dict:
    args = ["run", stage.name, "--instance", "$(POD_NAME)" if stage.scalable else "0"]
    env = base_env(stage.name)
    if stage.scalable:
        # Replicas need distinct instance ids (static membership, transactional ids):
        # the pod's name, expanded by the kubelet in args.
        env.insert(0, {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})
    return {
        "name": stage.name, "image": "payorch", "imagePullPolicy": "IfNotPresent",
        "args": args, "envFrom": env_from(), "env": env,
        "resources": RESOURCES_BY_PROCESS.get(stage.name, RESOURCES),
        "securityContext": security_context(),
        # No readiness probe: a stage serves no traffic. Liveness: common.stage_health_command.
        "startupProbe": dict(exec_probe(stage.name), periodSeconds=10, failureThreshold=12),
        "livenessProbe": exec_probe(stage.name),
        "volumeMounts": [{"name": "data", "mountPath": DATA_DIR}, {"name": "tmp", "mountPath": "/tmp"}],
    }


def pod_spec(process: str, containers: list[dict], *, persistent: bool, https_egress: bool) -> dict:
    volumes = [{"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}]
    volumes.append({"name": "data", "persistentVolumeClaim": {"claimName": f"{process}-state"}} if persistent
                   else {"name": "data", "emptyDir": {"sizeLimit": "1Gi"}})
    return {
        "metadata": {"labels": dict(labels(process), **({"payorch.io/egress-https": "true"} if https_egress
                                                         else {}))},
        "spec": {
            "serviceAccountName": process,
            # Pod Identity does not need the Kubernetes API token, and nothing else does.
            "automountServiceAccountToken": False,
            "securityContext": {"fsGroup": int(CONTAINER_USER), "seccompProfile": {"type": "RuntimeDefault"}},
            # The runtime's shutdown_timeout_s (20 s) plus margin.
            "terminationGracePeriodSeconds": 30,
            "containers": containers,
            "volumes": volumes,
        },
    }


def pvc(process: str) -> dict:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": f"{process}-state", "labels": labels(process)},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": STORAGE_CLASS,
                     "resources": {"requests": {"storage": STATE_VOLUME_SIZE}}}}


def pdb(process: str) -> dict:
    # maxUnavailable 1, never minAvailable: for a single-replica stage, minAvailable 1
    # would block every node drain forever; one replica at a time away is the bound.
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": process, "labels": labels(process)},
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels(process)}}}


def deployment(process: str, containers: list[dict], *, scalable: bool, persistent: bool,
               https_egress: bool) -> dict:
    spec: dict = {
        "selector": {"matchLabels": labels(process)},
        "template": pod_spec(process, containers, persistent=persistent, https_egress=https_egress),
        "revisionHistoryLimit": 5,
    }
    if scalable:
        # KEDA owns the replica count; a rollout adds one new pod before removing one.
        spec["strategy"] = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    else:
        # One writer of the SQLite store on its ReadWriteOnce volume: the old pod stops
        # before the new one starts.
        spec["replicas"] = 1
        spec["strategy"] = {"type": "Recreate"}
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": process, "labels": labels(process)}, "spec": spec}


def service_account(process: str) -> dict:
    return {"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": process, "labels": labels(process)}, "automountServiceAccountToken": False}


def intake_documents(colocated: list[Stage]) -> list[dict]:
    intake = {
        "name": "intake", "image": "payorch", "imagePullPolicy": "IfNotPresent", "args": ["intake"],
        "envFrom": env_from(), "env": base_env("intake"),
        "ports": [{"name": "http", "containerPort": INTAKE_PORT, "protocol": "TCP"}],
        "resources": RESOURCES_BY_PROCESS["intake"],
        "securityContext": security_context(),
        "startupProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 5, "failureThreshold": 24},
        # /healthz: the process serves HTTP (restart if not). /readyz: the broker answers
        # (take it out of the NLB if not, without restarting it).
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10,
                          "timeoutSeconds": 3, "failureThreshold": 3},
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5,
                           "timeoutSeconds": 3, "failureThreshold": 2},
        "volumeMounts": [{"name": "data", "mountPath": DATA_DIR}, {"name": "tmp", "mountPath": "/tmp"}],
    }
    containers = [intake] + [stage_container(s) for s in colocated]
    service = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "intake", "labels": labels("intake"), "annotations": {
            # An internal NLB made by the AWS Load Balancer Controller, targets the pod IPs;
            # TLS ends at the NLB with the environment's certificate (components/environment).
            "service.beta.kubernetes.io/aws-load-balancer-type": "external",
            "service.beta.kubernetes.io/aws-load-balancer-nlb-target-type": "ip",
            "service.beta.kubernetes.io/aws-load-balancer-scheme": "internal",
            "service.beta.kubernetes.io/aws-load-balancer-ssl-ports": "443",
            "service.beta.kubernetes.io/aws-load-balancer-ssl-negotiation-policy":
                "ELBSecurityPolicy-TLS13-1-2-Res-2021-06",
            "service.beta.kubernetes.io/aws-load-balancer-healthcheck-protocol": "HTTP",
            "service.beta.kubernetes.io/aws-load-balancer-healthcheck-path": "/readyz",
            "service.beta.kubernetes.io/aws-load-balancer-ssl-cert": "set-by-components/environment",
        }},
        "spec": {"type": "LoadBalancer", "selector": labels("intake"),
                 "ports": [{"name": "https", "port": 443, "targetPort": "http", "protocol": "TCP"}]},
    }
    return [service_account("intake"), pvc("intake"),
            deployment("intake", containers, scalable=False, persistent=True, https_egress=True),
            service, pdb("intake")]


def network_policies(stages: list[Stage]) -> list[dict]:
    selector_all: dict = {}
    policies = [
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
         "metadata": {"name": "default-deny"},
         "spec": {"podSelector": selector_all, "policyTypes": ["Ingress", "Egress"]}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
         "metadata": {"name": "egress-dns-and-pod-identity"},
         "spec": {"podSelector": selector_all, "policyTypes": ["Egress"], "egress": [
             {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                      "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
              "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]},
             # Credentials for MSK IAM and DynamoDB come from the node's pod-identity agent.
             {"to": [{"ipBlock": {"cidr": POD_IDENTITY_AGENT}}], "ports": [{"protocol": "TCP", "port": 80}]}]}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
         "metadata": {"name": "egress-msk"},
         "spec": {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "payorch"}}, "policyTypes": ["Egress"],
                  "egress": [{"to": [{"ipBlock": {"cidr": c}} for c in PRIVATE_RANGES],
                              "ports": [{"protocol": "TCP", "port": 9098}]}]}},
        # DynamoDB (ledger, intake) and the clearing systems (execution, settlement) are
        # HTTPS endpoints outside the VPC's ranges (or VPC endpoints inside them).
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
         "metadata": {"name": "egress-https"},
         "spec": {"podSelector": {"matchLabels": {"payorch.io/egress-https": "true"}}, "policyTypes": ["Egress"],
                  "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}],
                              "ports": [{"protocol": "TCP", "port": 443}]}]}},
        # Only the intake accepts connections: from the internal NLB (pod IP targets) and
        # the kubelet's probes, both inside the VPC.
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
         "metadata": {"name": "ingress-intake"},
         "spec": {"podSelector": {"matchLabels": labels("intake")}, "policyTypes": ["Ingress"],
                  "ingress": [{"from": [{"ipBlock": {"cidr": c}} for c in PRIVATE_RANGES],
                               "ports": [{"protocol": "TCP", "port": INTAKE_PORT}]}]}},
    ]
    return policies


def storage_class() -> dict:
    return {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": STORAGE_CLASS},
            "provisioner": "ebs.csi.aws.com",
            "parameters": {"type": "gp3", "encrypted": "true"},
            # The stores hold payment state: a deleted claim must not delete the data.
            "reclaimPolicy": "Retain", "allowVolumeExpansion": True,
            "volumeBindingMode": "WaitForFirstConsumer"}


def operator_job() -> dict:
    # MSK does not create topics itself (auto.create.topics.enable=false): this Job runs
    # `payorch topics create` on every apply; it is idempotent ("N already existed"), and
    # ttlSecondsAfterFinished removes the finished Job so the next apply creates it again.
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "topics-create", "labels": labels("operator")},
            "spec": {"ttlSecondsAfterFinished": 600, "backoffLimit": 6,
                     "template": {"metadata": {"labels": labels("operator")},
                                  "spec": {"serviceAccountName": "operator", "automountServiceAccountToken": False,
                                           "restartPolicy": "OnFailure",
                                           "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
                                           "containers": [{"name": "topics", "image": "payorch",
                                                           "args": ["topics", "create"], "envFrom": env_from(),
                                                           "env": base_env("operator"),
                                                           "resources": RESOURCES,
                                                           "securityContext": security_context(),
                                                           "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}]}],
                                           "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}]}}}}


def k8s_base(stages: list[Stage]) -> dict[str, list[dict]]:
    files: dict[str, list[dict]] = {}
    for stage in stages:
        if stage.name in COLOCATED_WITH_INTAKE:
            continue
        docs = [service_account(stage.name)]
        if not stage.scalable:
            docs.append(pvc(stage.name))
        docs.append(deployment(stage.name, [stage_container(stage)], scalable=stage.scalable,
                               persistent=not stage.scalable,
                               https_egress=stage.name in CALLS_CLEARING or stage.name == "ledger"
                               or stage.name in SENDS_WEBHOOKS))
        docs.append(pdb(stage.name))
        files[f"stage-{stage.name}.yaml"] = docs
    files["intake.yaml"] = intake_documents([s for s in stages if s.name in COLOCATED_WITH_INTAKE])
    files["operator.yaml"] = [service_account("operator"), operator_job()]
    files["network-policies.yaml"] = network_policies(stages)
    files["storage-class.yaml"] = [storage_class()]
    files["kustomization.yaml"] = [{
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": sorted(name for name in files if name != "kustomization.yaml"),
    }]
    return files


def tenant_overlay(tenant: str, stages: list[Stage]) -> dict[str, list[dict]]:
    namespace = f"payorch-{tenant}"
    scaled = []
    for stage in stages:
        if not stage.scalable:
            continue
        scaled.append({
            "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
            "metadata": {"name": stage.name, "labels": labels(stage.name)},
            "spec": {
                "scaleTargetRef": {"name": stage.name},
                "minReplicaCount": 1, "maxReplicaCount": KEDA_MAX_REPLICAS,
                "pollingInterval": 15, "cooldownPeriod": 300,
                "advanced": {"horizontalPodAutoscalerConfig": {"behavior": {
                    # Out fast (a backlog eats the rails' time limits), in slowly (each
                    # rebalance pauses the group).
                    "scaleDown": {"stabilizationWindowSeconds": 300},
                    "scaleUp": {"stabilizationWindowSeconds": 0}}}},
                "triggers": [{
                    "type": "kafka",
                    "authenticationRef": {"name": "msk-iam"},
                    "metadata": {
                        "bootstrapServers": "set-by-components/environment",
                        "awsRegion": "set-by-components/environment",
                        "consumerGroup": f"payorch-{tenant}.{stage.name}",
                        "topic": TOPIC_NAMER_FOR(tenant, t),
                        "lagThreshold": LAG_THRESHOLD,
                        # New groups start at the beginning of their topics (runtime _on_assign).
                        "offsetResetPolicy": "earliest",
                        # Never more replicas than partitions: the extra ones would idle.
                        "allowIdleConsumers": "false",
                        "sasl": "aws_msk_iam", "tls": "enable",
                    },
                } for t in stage.inputs],
            },
        })
    auth = {"apiVersion": "keda.sh/v1alpha1", "kind": "TriggerAuthentication",
            "metadata": {"name": "msk-iam"},
            # KEDA's operator signs with its own Pod Identity role (KedaLagReaderPolicy).
            "spec": {"podIdentity": {"provider": "aws", "identityOwner": "keda"}}}
    ns = {"apiVersion": "v1", "kind": "Namespace",
          "metadata": {"name": namespace, "labels": {
              "payorch.io/tenant": tenant,
              "pod-security.kubernetes.io/enforce": "restricted",
              "pod-security.kubernetes.io/enforce-version": "latest"}}}
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "namespace": namespace,
        "resources": ["namespace.yaml", "../../base", "scaling.yaml"],
        "labels": [{"pairs": {"payorch.io/tenant": tenant}, "includeSelectors": False, "includeTemplates": True}],
        "configMapGenerator": [{"name": "payorch-tenant", "literals": [
            f"PAYORCH_TENANTS={tenant}",
            f"PAYORCH_CONSUMER_GROUP_PREFIX=payorch-{tenant}",
            f"PAYORCH_STORAGE__DYNAMODB__TABLE_PREFIX=payorch-{tenant}-",
        ]}],
    }
    return {"kustomization.yaml": [kustomization], "namespace.yaml": [ns], "scaling.yaml": [auth] + scaled}


def TOPIC_NAMER_FOR(tenant: str, stage_topic: str) -> str:  # noqa: N802
    from orchestrator.topics import TopicNamer

    return TopicNamer().topic(tenant, stage_topic)
