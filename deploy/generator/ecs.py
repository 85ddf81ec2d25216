"""The ECS (Fargate) stack: one per tenant and region (deploy/aws/cloudformation/ecs-services.yaml).

Per stage: a task definition, a service, a task role that may touch only that stage's
topics, groups and transactional ids (and, for the ledger, the tenant's ledger tables), a
log group, and for the SQLite stages an EFS access point. The intake's task also runs the
tracking stage (common.COLOCATED_WITH_INTAKE says why) and sits behind an internal NLB,
which the edge API Gateway reaches through a VPC link (edge-api.yaml).
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
    WEBHOOK_SECRET_NAME,
    Stage,
    common_environment,
    dynamodb_environment,
    dynamodb_statements,
    intake_health_command,
    kafka_statements,
    policy_document,
    stage_health_command,
    topic,
)

# Fargate task sizes (CPU units, MiB). A stage process is one Python loop (one core at
# most, docs/PERFORMANCE.md); half a vCPU carries the load of a region at today's
# per-payment cost with room, and execution holds up to 64 clearing calls in flight.
TASK_SIZE = {"execution": (1024, 2048)}
DEFAULT_TASK_SIZE = (512, 1024)
INTAKE_TASK_SIZE = (1024, 2048)  # the intake and the tracking stage together
# StopTimeout: the runtime's shutdown_timeout_s (20 s) to commit what answers, plus margin.
STOP_TIMEOUT_S = 30

SSM_BOOTSTRAP = "/payorch/${Tenant}/kafka-bootstrap-servers"
SSM_RAIL_URLS = "/payorch/${Tenant}/clearing-rail-urls"


def sub(text: str) -> dict:
    return {"Fn::Sub": text}


def ref(name: str) -> dict:
    return {"Ref": name}


def ssm_arn(name: str) -> dict:
    return sub(f"arn:${{AWS::Partition}}:ssm:${{AWS::Region}}:${{AWS::AccountId}}:parameter{name}")


def secret_arn(name: str) -> dict:
    # ECS takes a Secrets Manager secret of the task's region by its name's ARN (no random
    # suffix); IAM sees the full ARN, whose suffix is six characters.
    return sub(f"arn:${{AWS::Partition}}:secretsmanager:${{AWS::Region}}:${{AWS::AccountId}}:secret:{name}")


def logical(stage: str) -> str:
    return stage.capitalize()


def env(pairs: list[tuple[str, object]]) -> list[dict]:
    return [{"Name": name, "Value": value} for name, value in pairs]


def parameters() -> dict:
    return {
        "Tenant": {"Type": "String", "AllowedValues": "TENANTS",
                   "Description": "The tenant this stack serves (a file in tenants/)."},
        "ImageRepository": {"Type": "String", "AllowedPattern": r"^[a-z0-9][a-z0-9._/-]{1,255}$",
                            "Description": "ECR repository (in this account and region) holding the payorch image."},
        "ImageDigest": {"Type": "String", "AllowedPattern": r"^sha256:[0-9a-f]{64}$",
                        "Description": "The image's digest: tasks run an exact image, never a moving tag."},
        "VpcId": {"Type": "AWS::EC2::VPC::Id"},
        "VpcCidr": {"Type": "String", "AllowedPattern": r"^\d{1,3}(\.\d{1,3}){3}/\d{1,2}$",
                    "Description": "The VPC's CIDR: the only source the internal NLB accepts (the VPC link)."},
        "PrivateSubnetIds": {"Type": "List<AWS::EC2::Subnet::Id>",
                             "Description": "Exactly three private subnets in three AZs (tasks, EFS, NLB)."},
        "MskClusterArn": {"Type": "String", "AllowedPattern": r"^arn:aws[a-z-]*:kafka:[a-z0-9-]+:\d{12}:cluster/.+/.+$",
                          "Description": "The tenant's MSK cluster in this region (msk.yaml output ClusterArn)."},
        "MskClusterName": {"Type": "String",
                           "Description": "Its name (msk.yaml output ClusterName): the lag metrics' dimension."},
        "MskSecurityGroupId": {"Type": "AWS::EC2::SecurityGroup::Id",
                               "Description": "The cluster's security group (msk.yaml output); tasks get 9098 on it."},
        "Partitions": {"Type": "Number", "Default": 12, "MinValue": 1, "MaxValue": 1000,
                       "Description": "Partitions per topic (PAYORCH_KAFKA__PARTITIONS): a scaled stage's task "
                                      "ceiling, since consumers past the partitions idle."},
        "ScalableStageMaxTasks": {"Type": "Number", "Default": 12, "MinValue": 1, "MaxValue": 1000,
                                  "Description": "Most tasks of sanctions and of the ledger; at most Partitions."},
        "LagPerTaskTarget": {"Type": "Number", "Default": 1000, "MinValue": 10,
                             "Description": "Target tracking keeps each scaled stage's consumer lag per task here."},
        "LagAlarmThreshold": {"Type": "Number", "Default": 5000, "MinValue": 10,
                              "Description": "Lag (messages) past which a single-replica stage alarms."},
        "IntakeCertificateArn": {"Type": "String", "AllowedPattern": r"^arn:aws[a-z-]*:acm:.+$",
                                 "Description": "ACM certificate (this region) for IntakeInternalHostName on the "
                                                "internal NLB's TLS listener."},
        "IntakeInternalHostName": {"Type": "String", "AllowedPattern": r"^[a-z0-9.-]+$",
                                   "Description": "The name API Gateway sends as Host and TLS SNI to the NLB; the "
                                                  "intake answers only it (PAYORCH_INTAKE__ALLOWED_HOSTS)."},
        "LogRetentionDays": {"Type": "Number", "Default": 400,
                             "AllowedValues": [90, 180, 365, 400, 545, 731, 1827, 3653],
                             "Description": "CloudWatch Logs retention (PCI DSS 10.5.1 asks a year at least)."},
    }


def ecs_template(stages: list[Stage]) -> dict:
    from generator.common import LEDGER_TABLES  # noqa: F401  (tables named in dynamodb_statements)

    tenants = _tenants()
    params = parameters()
    params["Tenant"]["AllowedValues"] = tenants
    resources: dict = {}
    outputs: dict = {}
    _shared(resources, outputs)
    own_task = [s for s in stages if s.name not in COLOCATED_WITH_INTAKE]
    for stage in own_task:
        _stage(resources, outputs, stage)
    _intake(resources, outputs, [s for s in stages if s.name in COLOCATED_WITH_INTAKE])
    _operator(resources, outputs)
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": "payorch on ECS Fargate for one tenant in one region: a task definition and a service "
                       "per stage, the intake behind an internal NLB, least-privilege task roles, EFS for the "
                       "SQLite stages, CloudWatch Logs, lag-based scaling and alarms.",
        "Metadata": {"payorch": {"generated-by": "deploy/generate.py",
                                 "stages": [s.name for s in stages],
                                 "scalable": sorted(SCALABLE),
                                 "colocated-with-intake": sorted(COLOCATED_WITH_INTAKE)}},
        "Parameters": params,
        "Resources": resources,
        "Outputs": outputs,
    }


def _tenants() -> list[str]:
    from orchestrator.settings import Settings
    from orchestrator.tenants import load_tenants

    return sorted(load_tenants(Settings().tenants_dir))


def _shared(resources: dict, outputs: dict) -> None:
    resources["DataKey"] = {
        "Type": "AWS::KMS::Key",
        "DeletionPolicy": "Retain", "UpdateReplacePolicy": "Retain",
        "Properties": {
            "Description": sub("payorch ${Tenant}: EFS stage state, logs and alarms"),
            "EnableKeyRotation": True,
            "KeyPolicy": {"Version": "2012-10-17", "Statement": [
                {"Sid": "AccountAdministers", "Effect": "Allow",
                 "Principal": {"AWS": sub("arn:${AWS::Partition}:iam::${AWS::AccountId}:root")},
                 "Action": "kms:*", "Resource": "*"},
                {"Sid": "CloudWatchLogsEncrypts", "Effect": "Allow",
                 "Principal": {"Service": sub("logs.${AWS::Region}.amazonaws.com")},
                 "Action": ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*",
                            "kms:Describe*"],
                 "Resource": "*",
                 "Condition": {"ArnLike": {"kms:EncryptionContext:aws:logs:arn": sub(
                     "arn:${AWS::Partition}:logs:${AWS::Region}:${AWS::AccountId}:log-group:/payorch/${Tenant}/*")}}},
                {"Sid": "CloudWatchAlarmsPublish", "Effect": "Allow",
                 "Principal": {"Service": "cloudwatch.amazonaws.com"},
                 "Action": ["kms:Decrypt", "kms:GenerateDataKey*"], "Resource": "*"},
            ]},
        },
    }
    resources["Cluster"] = {
        "Type": "AWS::ECS::Cluster",
        "Properties": {
            "ClusterName": sub("payorch-${Tenant}"),
            # Container Insights gives RunningTaskCount, the divisor of lag per task.
            "ClusterSettings": [{"Name": "containerInsights", "Value": "enabled"}],
        },
    }
    resources["AlarmTopic"] = {"Type": "AWS::SNS::Topic",
                               "Properties": {"KmsMasterKeyId": ref("DataKey"),
                                              "TopicName": sub("payorch-${Tenant}-alarms")}}
    outputs["AlarmTopicArn"] = {"Value": ref("AlarmTopic"),
                                "Description": "Subscribe operators here: lag and unhealthy-task alarms."}
    outputs["ClusterName"] = {"Value": ref("Cluster")}
    outputs["TaskSecurityGroupId"] = {"Value": ref("TaskSecurityGroup"),
                                      "Description": "for `aws ecs run-task` of the operator task definition"}
    # Security groups: tasks reach MSK (9098), EFS (2049) and AWS APIs and the clearing
    # systems over HTTPS (443, through the VPC's NAT or endpoints); nothing reaches a task
    # but the NLB on the intake's port.
    resources["TaskSecurityGroup"] = {
        "Type": "AWS::EC2::SecurityGroup",
        "Properties": {
            "GroupDescription": sub("payorch ${Tenant} tasks"),
            "VpcId": ref("VpcId"),
            "SecurityGroupEgress": [
                {"IpProtocol": "tcp", "FromPort": 9098, "ToPort": 9098,
                 "DestinationSecurityGroupId": ref("MskSecurityGroupId"), "Description": "MSK, IAM auth over TLS"},
                {"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "CidrIp": "0.0.0.0/0",
                 "Description": "AWS APIs (DynamoDB, SSM, ECR, Logs) and the clearing systems, HTTPS only"},
            ],
        },
    }
    resources["TaskToEfs"] = {
        "Type": "AWS::EC2::SecurityGroupEgress",
        "Properties": {"GroupId": ref("TaskSecurityGroup"), "IpProtocol": "tcp", "FromPort": 2049, "ToPort": 2049,
                       "DestinationSecurityGroupId": ref("EfsSecurityGroup"), "Description": "EFS (NFS over TLS)"},
    }
    resources["MskFromTasks"] = {
        "Type": "AWS::EC2::SecurityGroupIngress",
        "Properties": {"GroupId": ref("MskSecurityGroupId"), "IpProtocol": "tcp", "FromPort": 9098,
                       "ToPort": 9098, "SourceSecurityGroupId": ref("TaskSecurityGroup"),
                       "Description": sub("payorch ${Tenant} ECS tasks")},
    }
    resources["EfsSecurityGroup"] = {
        "Type": "AWS::EC2::SecurityGroup",
        "Properties": {
            "GroupDescription": sub("payorch ${Tenant} stage state (EFS)"),
            "VpcId": ref("VpcId"),
            "SecurityGroupIngress": [{"IpProtocol": "tcp", "FromPort": 2049, "ToPort": 2049,
                                      "SourceSecurityGroupId": ref("TaskSecurityGroup"),
                                      "Description": "payorch tasks"}],
            # No egress: NFS answers on the client's connection.
            "SecurityGroupEgress": [{"IpProtocol": "-1", "CidrIp": "127.0.0.1/32",
                                     "Description": "none (replaces the allow-all default)"}],
        },
    }
    # EFS holds the SQLite stores of the single-replica stages: durable across task
    # replacement, encrypted, reached only over TLS with IAM, each stage confined to its
    # own access point (its own directory, as uid 10001).
    resources["StateFileSystem"] = {
        "Type": "AWS::EFS::FileSystem",
        "DeletionPolicy": "Retain", "UpdateReplacePolicy": "Retain",
        "Properties": {
            "Encrypted": True, "KmsKeyId": ref("DataKey"),
            "PerformanceMode": "generalPurpose", "ThroughputMode": "elastic",
            "BackupPolicy": {"Status": "ENABLED"},
            "FileSystemTags": [{"Key": "Name", "Value": sub("payorch-${Tenant}-state")}],
            "FileSystemPolicy": {"Version": "2012-10-17", "Statement": [
                {"Sid": "DenyWithoutTls", "Effect": "Deny", "Principal": {"AWS": "*"}, "Action": "*",
                 "Resource": "*", "Condition": {"Bool": {"aws:SecureTransport": "false"}}},
                {"Sid": "OnlyThroughAccessPoints", "Effect": "Deny", "Principal": {"AWS": "*"},
                 "Action": ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"], "Resource": "*",
                 "Condition": {"Null": {"elasticfilesystem:AccessPointArn": "true"}}},
            ]},
        },
    }
    for index in range(3):
        resources[f"StateMountTarget{index}"] = {
            "Type": "AWS::EFS::MountTarget",
            "Properties": {"FileSystemId": ref("StateFileSystem"),
                           "SubnetId": {"Fn::Select": [index, ref("PrivateSubnetIds")]},
                           "SecurityGroups": [ref("EfsSecurityGroup")]},
        }
    outputs["StateFileSystemId"] = {"Value": ref("StateFileSystem")}
    # One execution role: ECS pulls the image, writes the logs and reads the two SSM
    # parameters into the containers; nothing else. (No AWS managed policy: it allows any
    # repository and any log group.)
    resources["ExecutionRole"] = {
        "Type": "AWS::IAM::Role",
        "Properties": {
            "AssumeRolePolicyDocument": _assume("ecs-tasks.amazonaws.com"),
            "Policies": [{"PolicyName": "pull-log-parameters", "PolicyDocument": policy_document([
                {"Sid": "EcrAuth", "Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": "*"},
                {"Sid": "EcrPull", "Effect": "Allow",
                 "Action": ["ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"],
                 "Resource": sub("arn:${AWS::Partition}:ecr:${AWS::Region}:${AWS::AccountId}:repository/"
                                 "${ImageRepository}")},
                {"Sid": "Logs", "Effect": "Allow", "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
                 "Resource": sub("arn:${AWS::Partition}:logs:${AWS::Region}:${AWS::AccountId}:log-group:"
                                 "/payorch/${Tenant}/*:*")},
                {"Sid": "Parameters", "Effect": "Allow", "Action": "ssm:GetParameters",
                 "Resource": [ssm_arn(SSM_BOOTSTRAP), ssm_arn(SSM_RAIL_URLS)]},
                # The webhook signing secret, injected into the notifications task only
                # (created by the operator with the account's default Secrets Manager key).
                {"Sid": "WebhookSecret", "Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
                 "Resource": sub(f"arn:${{AWS::Partition}}:secretsmanager:${{AWS::Region}}:${{AWS::AccountId}}:"
                                 f"secret:{WEBHOOK_SECRET_NAME}-??????")},
            ])}],
        },
    }
    # The internal NLB in front of the intake. API Gateway's VPC link (REST APIs) targets
    # an NLB; TLS terminates here with the intake's certificate, restricted to TLS 1.3 and
    # TLS 1.2 with AEAD ciphers only (API Gateway speaks TLS 1.2 to its backends).
    resources["IntakeLoadBalancerSecurityGroup"] = {
        "Type": "AWS::EC2::SecurityGroup",
        "Properties": {
            "GroupDescription": sub("payorch ${Tenant} internal NLB for the intake"),
            "VpcId": ref("VpcId"),
            "SecurityGroupIngress": [{"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443,
                                      "CidrIp": ref("VpcCidr"), "Description": "the VPC link, inside the VPC"}],
            "SecurityGroupEgress": [{"IpProtocol": "tcp", "FromPort": INTAKE_PORT, "ToPort": INTAKE_PORT,
                                     "DestinationSecurityGroupId": ref("TaskSecurityGroup"),
                                     "Description": "the intake tasks"}],
        },
    }
    resources["TaskFromLoadBalancer"] = {
        "Type": "AWS::EC2::SecurityGroupIngress",
        "Properties": {"GroupId": ref("TaskSecurityGroup"), "IpProtocol": "tcp", "FromPort": INTAKE_PORT,
                       "ToPort": INTAKE_PORT, "SourceSecurityGroupId": ref("IntakeLoadBalancerSecurityGroup"),
                       "Description": "the internal NLB (health checks and traffic)"},
    }
    resources["IntakeLoadBalancer"] = {
        "Type": "AWS::ElasticLoadBalancingV2::LoadBalancer",
        "Properties": {
            "Type": "network", "Scheme": "internal",
            "Subnets": ref("PrivateSubnetIds"),
            "SecurityGroups": [ref("IntakeLoadBalancerSecurityGroup")],
            "LoadBalancerAttributes": [{"Key": "load_balancing.cross_zone.enabled", "Value": "true"},
                                       {"Key": "deletion_protection.enabled", "Value": "true"}],
        },
    }
    resources["IntakeTargetGroup"] = {
        "Type": "AWS::ElasticLoadBalancingV2::TargetGroup",
        "Properties": {
            "TargetType": "ip", "Protocol": "TCP", "Port": INTAKE_PORT, "VpcId": ref("VpcId"),
            # /readyz answers 503 while the broker is unreachable: no traffic to an intake
            # that cannot accept a payment, without restarting it (that is /healthz's job).
            "HealthCheckProtocol": "HTTP", "HealthCheckPath": "/readyz", "HealthCheckPort": str(INTAKE_PORT),
            "Matcher": {"HttpCode": "200"},
            "HealthCheckIntervalSeconds": 10, "HealthyThresholdCount": 2, "UnhealthyThresholdCount": 2,
            # The intake drains within uvicorn's 10 s graceful shutdown.
            "TargetGroupAttributes": [{"Key": "deregistration_delay.timeout_seconds", "Value": "15"}],
        },
    }
    resources["IntakeListener"] = {
        "Type": "AWS::ElasticLoadBalancingV2::Listener",
        "Properties": {
            "LoadBalancerArn": ref("IntakeLoadBalancer"), "Port": 443, "Protocol": "TLS",
            "SslPolicy": "ELBSecurityPolicy-TLS13-1-2-Res-2021-06",
            "Certificates": [{"CertificateArn": ref("IntakeCertificateArn")}],
            "DefaultActions": [{"Type": "forward", "TargetGroupArn": ref("IntakeTargetGroup")}],
        },
    }
    outputs["IntakeLoadBalancerArn"] = {"Value": ref("IntakeLoadBalancer"),
                                        "Description": "edge-api.yaml's IntakeLoadBalancerArn (the VPC link target)."}


def _assume(service: str) -> dict:
    return {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole",
        # Only ECS tasks of this account may assume it (confused-deputy guard).
        "Condition": {"StringEquals": {"aws:SourceAccount": ref("AWS::AccountId")},
                      "ArnLike": {"aws:SourceArn": sub(
                          "arn:${AWS::Partition}:ecs:${AWS::Region}:${AWS::AccountId}:*")}}}]}


def _efs_statement(access_point: str) -> dict:
    return {"Sid": "StateVolume", "Effect": "Allow",
            "Action": ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"],
            "Resource": {"Fn::GetAtt": ["StateFileSystem", "Arn"]},
            "Condition": {"StringEquals": {"elasticfilesystem:AccessPointArn": {"Fn::GetAtt": [access_point, "Arn"]}}}}


def _access_point(resources: dict, name: str, process: str) -> None:
    resources[name] = {
        "Type": "AWS::EFS::AccessPoint",
        "Properties": {
            "FileSystemId": ref("StateFileSystem"),
            "PosixUser": {"Uid": CONTAINER_USER, "Gid": CONTAINER_USER},
            "RootDirectory": {"Path": f"/payorch/{process}",
                              "CreationInfo": {"OwnerUid": CONTAINER_USER, "OwnerGid": CONTAINER_USER,
                                               "Permissions": "0700"}},
        },
    }


def _log_group(resources: dict, name: str, process: str) -> None:
    resources[name] = {
        "Type": "AWS::Logs::LogGroup",
        "DeletionPolicy": "Retain", "UpdateReplacePolicy": "Retain",
        "Properties": {"LogGroupName": sub(f"/payorch/${{Tenant}}/{process}"),
                       "RetentionInDays": ref("LogRetentionDays"),
                       "KmsKeyId": {"Fn::GetAtt": ["DataKey", "Arn"]}},
    }


def _container(name: str, log_group: str, command: list, health: str, *, extra_env=(), secrets=(),
               entry_point: list | None = None, ports: list | None = None, persistent: bool) -> dict:
    environment = common_environment(ref("Tenant"), ref("AWS::Region"), ref("Partitions")) + list(extra_env)
    container = {
        "Name": name,
        "Image": sub("${AWS::AccountId}.dkr.ecr.${AWS::Region}.amazonaws.com/${ImageRepository}@${ImageDigest}"),
        "Essential": True,
        "User": CONTAINER_USER,
        "ReadonlyRootFilesystem": True,
        "Environment": env(environment),
        "Secrets": [{"Name": "PAYORCH_KAFKA__BOOTSTRAP_SERVERS", "ValueFrom": ssm_arn(SSM_BOOTSTRAP)}]
                   + list(secrets),
        "LogConfiguration": {"LogDriver": "awslogs", "Options": {
            "awslogs-group": ref(log_group), "awslogs-region": ref("AWS::Region"), "awslogs-stream-prefix": name,
            # A full log buffer must never block the process that moves payments.
            "mode": "non-blocking", "max-buffer-size": "25m"}},
        "HealthCheck": {"Command": ["CMD", "python", "-c", health], "Interval": 30, "Timeout": 10,
                        "Retries": 3, "StartPeriod": 60},
        "StopTimeout": STOP_TIMEOUT_S,
        # The check reads /proc/1: the stage must be PID 1 (no init process).
        "LinuxParameters": {"Capabilities": {"Drop": ["ALL"]}, "InitProcessEnabled": False},
        "MountPoints": [{"SourceVolume": "data" if persistent else "scratch", "ContainerPath": DATA_DIR,
                         "ReadOnly": False},
                        {"SourceVolume": "tmp", "ContainerPath": "/tmp", "ReadOnly": False}],
        "Command": command,
    }
    if entry_point:
        container["EntryPoint"] = entry_point
    if ports:
        container["PortMappings"] = ports
    return container


def _volumes(access_point: str | None) -> list[dict]:
    volumes = [{"Name": "tmp"}]  # Fargate task storage: the root filesystem stays read-only
    if access_point:
        volumes.append({"Name": "data", "EFSVolumeConfiguration": {
            "FilesystemId": ref("StateFileSystem"), "TransitEncryption": "ENABLED",
            "AuthorizationConfig": {"AccessPointId": ref(access_point), "IAM": "ENABLED"}}})
    else:
        volumes.append({"Name": "scratch"})
    return volumes


# A scaled stage's replicas need distinct instance ids: the id names the consumer's static
# membership (group.instance.id) and the transactional id, and two replicas with one id
# fence each other. ECS gives a task no ordinal, so each task uses its own task id from the
# ECS task metadata endpoint (v4, in every Fargate container). A restarted task therefore
# rejoins as a new static member; its predecessor's partitions move after the session
# timeout, and its open transaction is aborted by the coordinator (KIP-447 fences its
# offsets). `payorch run --instance auto` in the product would remove this shell line.
INSTANCE_FROM_METADATA = (
    "exec payorch run {stage} --instance \"$(python -c "
    "'import json,os,urllib.request;"
    "print(json.load(urllib.request.urlopen(os.environ[\"ECS_CONTAINER_METADATA_URI_V4\"]+\"/task\",timeout=5))"
    "[\"TaskARN\"].rsplit(\"/\",1)[1])')\""
)


def _lag_metrics(stage: Stage) -> list[dict]:
    """One metric query per input topic: MSK's SumOffsetLag of the stage's consumer group
    (emitted at the DEFAULT monitoring level, for groups that are STABLE or EMPTY)."""
    queries = []
    for index, stage_topic in enumerate(stage.inputs):
        queries.append({
            "Id": f"lag{index}",
            "ReturnData": False,
            "MetricStat": {"Metric": {"Namespace": "AWS/Kafka", "MetricName": "SumOffsetLag", "Dimensions": [
                {"Name": "Cluster Name", "Value": ref("MskClusterName")},
                {"Name": "Consumer Group", "Value": sub(f"payorch-${{Tenant}}.{stage.name}")},
                {"Name": "Topic", "Value": sub(topic(stage_topic))}]},
                "Stat": "Maximum"},
        })
    return queries


def _stage(resources: dict, outputs: dict, stage: Stage) -> None:
    name = logical(stage.name)
    cpu, memory = TASK_SIZE.get(stage.name, DEFAULT_TASK_SIZE)
    access_point = None if stage.scalable else f"{name}AccessPoint"
    if access_point:
        _access_point(resources, access_point, stage.name)
    _log_group(resources, f"{name}LogGroup", stage.name)
    statements = kafka_statements(stage) + dynamodb_statements(stage.name)
    if access_point:
        statements.append(_efs_statement(access_point))
    resources[f"{name}TaskRole"] = {
        "Type": "AWS::IAM::Role",
        "Properties": {"AssumeRolePolicyDocument": _assume("ecs-tasks.amazonaws.com"),
                       "Policies": [{"PolicyName": f"payorch-{stage.name}",
                                     "PolicyDocument": policy_document(statements)}]},
    }
    extra_env = dynamodb_environment(ref("Tenant"), ref("AWS::Region")) if stage.name == "ledger" else []
    secrets = ([{"Name": "PAYORCH_CLEARING__RAIL_URLS", "ValueFrom": ssm_arn(SSM_RAIL_URLS)}]
               if stage.name in CALLS_CLEARING else [])
    if stage.name in SENDS_WEBHOOKS:
        secrets.append({"Name": WEBHOOK_SECRET_ENV, "ValueFrom": secret_arn(WEBHOOK_SECRET_NAME)})
    if stage.scalable:
        entry, command = ["sh", "-c"], [INSTANCE_FROM_METADATA.format(stage=stage.name)]
    else:
        entry, command = None, ["run", stage.name, "--instance", "0"]
    resources[f"{name}TaskDefinition"] = {
        "Type": "AWS::ECS::TaskDefinition",
        "Properties": {
            "Family": sub(f"payorch-${{Tenant}}-{stage.name}"),
            "RequiresCompatibilities": ["FARGATE"], "NetworkMode": "awsvpc",
            "Cpu": str(cpu), "Memory": str(memory),
            "RuntimePlatform": {"OperatingSystemFamily": "LINUX", "CpuArchitecture": "X86_64"},
            "ExecutionRoleArn": {"Fn::GetAtt": ["ExecutionRole", "Arn"]},
            "TaskRoleArn": {"Fn::GetAtt": [f"{name}TaskRole", "Arn"]},
            "ContainerDefinitions": [_container(stage.name, f"{name}LogGroup", command,
                                                stage_health_command(stage.name), extra_env=extra_env,
                                                secrets=secrets, entry_point=entry, persistent=bool(access_point))],
            "Volumes": _volumes(access_point),
        },
    }
    service = {
        "Type": "AWS::ECS::Service",
        "DependsOn": ["StateMountTarget0", "StateMountTarget1", "StateMountTarget2"] if access_point else [],
        "Properties": {
            "ServiceName": stage.name,
            "Cluster": ref("Cluster"),
            "TaskDefinition": ref(f"{name}TaskDefinition"),
            "LaunchType": "FARGATE", "PlatformVersion": "LATEST",
            "PropagateTags": "SERVICE", "EnableECSManagedTags": True,
            "NetworkConfiguration": {"AwsvpcConfiguration": {
                "AssignPublicIp": "DISABLED", "Subnets": ref("PrivateSubnetIds"),
                "SecurityGroups": [ref("TaskSecurityGroup")]}},
            "DeploymentConfiguration": (
                # Replicas are independent: roll with a spare, roll back if new tasks fail.
                {"MinimumHealthyPercent": 100, "MaximumPercent": 200,
                 "DeploymentCircuitBreaker": {"Enable": True, "Rollback": True}}
                if stage.scalable else
                # One writer of a SQLite store at a time: stop the old task before the
                # new one starts (the pause is a few seconds; Kafka holds the events).
                {"MinimumHealthyPercent": 0, "MaximumPercent": 100,
                 "DeploymentCircuitBreaker": {"Enable": True, "Rollback": True}}),
        },
    }
    if not service["DependsOn"]:
        del service["DependsOn"]
    if not stage.scalable:
        service["Properties"]["DesiredCount"] = 1
    # A scaled service leaves DesiredCount out, so a stack update does not undo scaling.
    resources[f"{name}Service"] = service
    outputs[f"{name}ServiceName"] = {"Value": {"Fn::GetAtt": [f"{name}Service", "Name"]}}
    if stage.scalable:
        _scaling(resources, stage)
    else:
        _lag_alarm(resources, stage)


def _scaling(resources: dict, stage: Stage) -> None:
    name = logical(stage.name)
    resources[f"{name}ScalableTarget"] = {
        "Type": "AWS::ApplicationAutoScaling::ScalableTarget",
        "Properties": {
            "ServiceNamespace": "ecs", "ScalableDimension": "ecs:service:DesiredCount",
            "ResourceId": {"Fn::Sub": [f"service/${{ClusterName}}/${{ServiceName}}",
                                       {"ClusterName": ref("Cluster"),
                                        "ServiceName": {"Fn::GetAtt": [f"{name}Service", "Name"]}}]},
            "MinCapacity": 1, "MaxCapacity": ref("ScalableStageMaxTasks"),
        },
    }
    lag = _lag_metrics(stage)
    total = " + ".join(q["Id"] for q in lag)
    resources[f"{name}LagScaling"] = {
        "Type": "AWS::ApplicationAutoScaling::ScalingPolicy",
        "Properties": {
            "PolicyName": sub(f"payorch-${{Tenant}}-{stage.name}-lag-per-task"),
            "PolicyType": "TargetTrackingScaling",
            "ScalingTargetId": ref(f"{name}ScalableTarget"),
            "TargetTrackingScalingPolicyConfiguration": {
                # Backlog per task, the AWS pattern for queue consumers: the group's lag
                # over its input topics divided by the running tasks.
                "TargetValue": ref("LagPerTaskTarget"),
                "CustomizedMetricSpecification": {"Metrics": lag + [
                    {"Id": "tasks", "ReturnData": False,
                     "MetricStat": {"Metric": {"Namespace": "ECS/ContainerInsights", "MetricName": "RunningTaskCount",
                                               "Dimensions": [{"Name": "ClusterName", "Value": ref("Cluster")},
                                                              {"Name": "ServiceName", "Value": stage.name}]},
                                    "Stat": "Average"}},
                    {"Id": "lagpertask", "Label": f"{stage.name} consumer lag per task",
                     "Expression": f"({total}) / MAX([tasks, 1])", "ReturnData": True},
                ]},
                # Out fast (a backlog eats the rails' time limits), in slowly (each
                # rebalance pauses the group).
                "ScaleOutCooldown": 60, "ScaleInCooldown": 300,
            },
        },
    }


def _lag_alarm(resources: dict, stage: Stage) -> None:
    if not stage.inputs:
        return
    name = logical(stage.name)
    lag = _lag_metrics(stage)
    resources[f"{name}LagAlarm"] = {
        "Type": "AWS::CloudWatch::Alarm",
        "Properties": {
            "AlarmDescription": sub(f"payorch ${{Tenant}} {stage.name}: consumer lag above LagAlarmThreshold for "
                                    f"5 minutes. This stage runs one replica (its state is a SQLite file); "
                                    f"look for a slow dependency or a hung task before anything else."),
            "ComparisonOperator": "GreaterThanThreshold", "Threshold": ref("LagAlarmThreshold"),
            "EvaluationPeriods": 5, "DatapointsToAlarm": 5, "TreatMissingData": "notBreaching",
            "Metrics": [dict(q, MetricStat=dict(q["MetricStat"], Period=60)) for q in lag] + [
                {"Id": "total", "Label": f"{stage.name} consumer lag", "ReturnData": True,
                 "Expression": " + ".join(q["Id"] for q in lag)}],
            "AlarmActions": [ref("AlarmTopic")], "OKActions": [ref("AlarmTopic")],
        },
    }


def _intake(resources: dict, outputs: dict, colocated: list[Stage]) -> None:
    _access_point(resources, "IntakeAccessPoint", "intake")
    _log_group(resources, "IntakeLogGroup", "intake")
    statements = kafka_statements(None, intake=True) + dynamodb_statements("intake")
    for stage in colocated:
        _log_group(resources, f"{logical(stage.name)}LogGroup", stage.name)
        # One task role per task: the intake task's is the union of its two processes'.
        statements += [dict(s, Sid=f"{logical(stage.name)}{s['Sid']}") for s in kafka_statements(stage)]
    statements.append(_efs_statement("IntakeAccessPoint"))
    # ECS Exec into the intake container runs `payorch apikey create|list|revoke` against
    # its credential store (credentials.sqlite on the shared volume).
    statements.append({"Sid": "EcsExec", "Effect": "Allow",
                       "Action": ["ssmmessages:CreateControlChannel", "ssmmessages:CreateDataChannel",
                                  "ssmmessages:OpenControlChannel", "ssmmessages:OpenDataChannel"],
                       "Resource": "*"})
    resources["IntakeTaskRole"] = {
        "Type": "AWS::IAM::Role",
        "Properties": {"AssumeRolePolicyDocument": _assume("ecs-tasks.amazonaws.com"),
                       "Policies": [{"PolicyName": "payorch-intake", "PolicyDocument": policy_document(statements)}]},
    }
    intake_env = dynamodb_environment(ref("Tenant"), ref("AWS::Region")) + [
        ("PAYORCH_INTAKE__HOST", "0.0.0.0"),  # nosec: inside the task's own ENI, behind the NLB
        ("PAYORCH_INTAKE__PORT", str(INTAKE_PORT)),
        ("PAYORCH_INTAKE__ALLOWED_HOSTS", {"Fn::Sub": '["${IntakeInternalHostName}"]'}),
    ]
    containers = [_container("intake", "IntakeLogGroup", ["intake"], intake_health_command(), extra_env=intake_env,
                             ports=[{"ContainerPort": INTAKE_PORT, "Protocol": "tcp"}], persistent=True)]
    for stage in colocated:
        containers.append(_container(stage.name, f"{logical(stage.name)}LogGroup",
                                     ["run", stage.name, "--instance", "0"], stage_health_command(stage.name),
                                     persistent=True))
    cpu, memory = INTAKE_TASK_SIZE
    resources["IntakeTaskDefinition"] = {
        "Type": "AWS::ECS::TaskDefinition",
        "Properties": {
            "Family": sub("payorch-${Tenant}-intake"),
            "RequiresCompatibilities": ["FARGATE"], "NetworkMode": "awsvpc",
            "Cpu": str(cpu), "Memory": str(memory),
            "RuntimePlatform": {"OperatingSystemFamily": "LINUX", "CpuArchitecture": "X86_64"},
            "ExecutionRoleArn": {"Fn::GetAtt": ["ExecutionRole", "Arn"]},
            "TaskRoleArn": {"Fn::GetAtt": ["IntakeTaskRole", "Arn"]},
            "ContainerDefinitions": containers,
            "Volumes": _volumes("IntakeAccessPoint"),
        },
    }
    resources["IntakeService"] = {
        "Type": "AWS::ECS::Service",
        "DependsOn": ["IntakeListener", "StateMountTarget0", "StateMountTarget1", "StateMountTarget2"],
        "Properties": {
            "ServiceName": "intake",
            "Cluster": ref("Cluster"),
            "TaskDefinition": ref("IntakeTaskDefinition"),
            "LaunchType": "FARGATE", "PlatformVersion": "LATEST",
            "PropagateTags": "SERVICE", "EnableECSManagedTags": True,
            "EnableExecuteCommand": True,
            # One task: tracking is a single SQLite writer, and the intake's credential and
            # idempotency stores are SQLite files (README "Deploy to AWS", limits).
            "DesiredCount": 1,
            "DeploymentConfiguration": {"MinimumHealthyPercent": 0, "MaximumPercent": 100,
                                        "DeploymentCircuitBreaker": {"Enable": True, "Rollback": True}},
            "HealthCheckGracePeriodSeconds": 60,
            "LoadBalancers": [{"ContainerName": "intake", "ContainerPort": INTAKE_PORT,
                               "TargetGroupArn": ref("IntakeTargetGroup")}],
            "NetworkConfiguration": {"AwsvpcConfiguration": {
                "AssignPublicIp": "DISABLED", "Subnets": ref("PrivateSubnetIds"),
                "SecurityGroups": [ref("TaskSecurityGroup")]}},
        },
    }
    outputs["IntakeServiceName"] = {"Value": {"Fn::GetAtt": ["IntakeService", "Name"]}}
    for stage in colocated:
        _lag_alarm(resources, stage)
    resources["IntakeUnhealthyAlarm"] = {
        "Type": "AWS::CloudWatch::Alarm",
        "Properties": {
            "AlarmDescription": sub("payorch ${Tenant}: no healthy intake behind the NLB for 2 minutes"),
            "Namespace": "AWS/NetworkELB", "MetricName": "HealthyHostCount", "Statistic": "Minimum",
            "Dimensions": [{"Name": "LoadBalancer", "Value": {"Fn::GetAtt": ["IntakeLoadBalancer",
                                                                               "LoadBalancerFullName"]}},
                           {"Name": "TargetGroup", "Value": {"Fn::GetAtt": ["IntakeTargetGroup",
                                                                              "TargetGroupFullName"]}}],
            "Period": 60, "EvaluationPeriods": 2, "Threshold": 1, "ComparisonOperator": "LessThanThreshold",
            "TreatMissingData": "breaching",
            "AlarmActions": [ref("AlarmTopic")], "OKActions": [ref("AlarmTopic")],
        },
    }


def _operator(resources: dict, outputs: dict) -> None:
    """A task definition without a service, for `aws ecs run-task`: `payorch topics create`
    once per cluster (MSK does not create topics by itself: auto.create.topics.enable is
    false) and `payorch dlq list|show|replay`."""
    _log_group(resources, "OperatorLogGroup", "operator")
    resources["OperatorTaskRole"] = {
        "Type": "AWS::IAM::Role",
        "Properties": {"AssumeRolePolicyDocument": _assume("ecs-tasks.amazonaws.com"),
                       "Policies": [{"PolicyName": "payorch-operator",
                                     "PolicyDocument": policy_document(kafka_statements(None, operator=True))}]},
    }
    resources["OperatorTaskDefinition"] = {
        "Type": "AWS::ECS::TaskDefinition",
        "Properties": {
            "Family": sub("payorch-${Tenant}-operator"),
            "RequiresCompatibilities": ["FARGATE"], "NetworkMode": "awsvpc", "Cpu": "256", "Memory": "512",
            "RuntimePlatform": {"OperatingSystemFamily": "LINUX", "CpuArchitecture": "X86_64"},
            "ExecutionRoleArn": {"Fn::GetAtt": ["ExecutionRole", "Arn"]},
            "TaskRoleArn": {"Fn::GetAtt": ["OperatorTaskRole", "Arn"]},
            "ContainerDefinitions": [_operator_container()],
            "Volumes": _volumes(None),
        },
    }
    outputs["OperatorTaskDefinitionArn"] = {"Value": ref("OperatorTaskDefinition"),
                                            "Description": "aws ecs run-task ... --overrides to run "
                                                           "`payorch topics create` or `payorch dlq ...`."}


def _operator_container() -> dict:
    container = _container("operator", "OperatorLogGroup", ["topics", "create"], "", persistent=False)
    del container["HealthCheck"]  # a one-off command, not a service
    return container
