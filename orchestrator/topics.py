"""Topic names, from one template, the map of which stage writes which topic, and the
stages in flow order with the names of the processes that host them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# Every stage, in the order a payment meets them. One set of stages always gives one
# process name (hence one consumer group) because it is put in this order.
STAGE_NAMES = ("initiation", "sanctions", "fraud", "routing", "execution", "ledger", "settlement", "tracking",
               "notifications")
# Stages a payment does not need to end: they only tell someone about it. A plan of stage
# processes (Settings.stage_processes) may leave them out; `payorch up` runs one when a
# tenant file configures it (notifications: `notifications.endpoints`). Deployments have
# them like any other stage.
OPTIONAL_STAGES = ("notifications",)
# The stages every plan of processes runs.
REQUIRED_STAGES = tuple(name for name in STAGE_NAMES if name not in OPTIONAL_STAGES)

# The stage topics of the flow, in order. Each stage writes one of them for its payment
# events; settlement also writes `cycles`, its cycle-level events (another schema family,
# settlement_cycle_event.v*.avsc, keyed by cycle id), and the intake also writes
# `reviews`, the reviewers' decisions on held payments, which routing acts on.
STAGE_TOPICS = (
    "received",
    "initiated",
    "screened.sanctions",
    "screened.fraud",
    "reviews",
    "routed",
    "executed",
    "posted",
    "settled",
    "cycles",
)

# The topic each producing stage writes.
OUTPUT_TOPIC_OF_STAGE = {
    "intake": "received",
    "initiation": "initiated",
    "sanctions": "screened.sanctions",
    "fraud": "screened.fraud",
    "routing": "routed",
    "execution": "executed",
    "ledger": "posted",
    "settlement": "settled",
}

# Every topic the intake writes: payments as they arrive, and review decisions
# (POST /v1/payments/{id}/review).
INTAKE_TOPICS = ("received", "reviews")

DLQ_SUFFIX = ".dlq"
# `<topic>.retry.<level>`: delayed retries of the events a stage read from `<topic>`.
RETRY_INFIX = ".retry."


@dataclass(frozen=True)
class TopicNamer:
    template: str = "{tenant}.payments.{stage}.v1"

    def topic(self, tenant: str, stage_topic: str) -> str:
        if stage_topic not in STAGE_TOPICS:
            raise ValueError(f"unknown stage topic {stage_topic}")
        return self.template.format(tenant=tenant, stage=stage_topic)

    def dlq(self, tenant: str, stage_topic: str) -> str:
        return self.topic(tenant, stage_topic) + DLQ_SUFFIX

    def retry(self, tenant: str, stage_topic: str, level: int) -> str:
        if level < 1:
            raise ValueError("retry levels start at 1")
        return f"{self.topic(tenant, stage_topic)}{RETRY_INFIX}{level}"

    def all_topics(self, tenants: list[str], retry_levels: int = 0) -> list[str]:
        names = []
        for tenant in tenants:
            for stage_topic in STAGE_TOPICS:
                names.append(self.topic(tenant, stage_topic))
                names.append(self.dlq(tenant, stage_topic))
                names.extend(self.retry(tenant, stage_topic, level) for level in range(1, retry_levels + 1))
        return names

    def parse(self, topic: str) -> tuple[str, str] | None:
        """(tenant, stage_topic) of a topic made by this template, or None."""
        prefix, _, rest = self.template.partition("{tenant}")
        middle, _, suffix = rest.partition("{stage}")
        if not topic.startswith(prefix) or not topic.endswith(suffix):
            return None
        body = topic[len(prefix) : len(topic) - len(suffix) if suffix else None]
        tenant, sep, stage_topic = body.partition(middle)
        if not sep or stage_topic not in STAGE_TOPICS:
            return None
        return tenant, stage_topic


def in_flow_order(names: list[str]) -> list[str]:
    """`names` checked and put in the flow's order (so one set of stages always gives one
    process name, hence one consumer group)."""
    unknown = [name for name in names if name not in STAGE_NAMES]
    if unknown:
        raise ValueError(f"unknown stage {unknown[0]!r}; stages are {', '.join(STAGE_NAMES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"a stage is named twice in {names}")
    return [name for name in STAGE_NAMES if name in names]


def process_name(stage_names: Sequence[str]) -> str:
    """The name of a process hosting `stage_names`: the stage's own name for one stage
    (as a container runs it), the names joined by "+" for several. It names the
    process's consumer group, transactional id, log lines, log file and pid file."""
    if not stage_names:
        raise ValueError("a stage process hosts at least one stage")
    return "+".join(stage_names)
