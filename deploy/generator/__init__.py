"""The deployment generator (see deploy/generate.py)."""

from __future__ import annotations

from pathlib import Path

import yaml

from generator.common import CFN_DIR, HEADER, K8S_BASE, stages
from generator.ecs import ecs_template
from generator.ecs import _tenants
from generator.k8s import eks_identity_template, k8s_base, tenant_overlay


class _Dumper(yaml.SafeDumper):
    """Block style, and no aliases: CloudFormation refuses YAML anchors and aliases."""

    def ignore_aliases(self, data) -> bool:
        return True


def dump_yaml(documents: list[dict]) -> str:
    return HEADER + "---\n".join(yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=110) for doc in documents)


def generated_files() -> dict[Path, str]:
    all_stages = stages()
    files = {
        CFN_DIR / "ecs-services.yaml": dump_yaml([ecs_template(all_stages)]),
        CFN_DIR / "eks-pod-identity.yaml": dump_yaml([eks_identity_template(all_stages)]),
    }
    for name, documents in k8s_base(all_stages).items():
        files[K8S_BASE / name] = dump_yaml(documents)
    for tenant in _tenants():
        for name, documents in tenant_overlay(tenant, all_stages).items():
            files[K8S_BASE.parent / "tenants" / tenant / name] = dump_yaml(documents)
    return files
