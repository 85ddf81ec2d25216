"""The composition root: settings in, wired stages and ports out.

Nothing else constructs stores, clients or codecs, so a test builds a stage with its
own settings (a temporary data dir, a test broker) through the same function.
"""

from __future__ import annotations

from orchestrator.events import EventCodec
from orchestrator.settings import Settings
from orchestrator.tenants import TenantConfig, load_selected_tenants
from orchestrator.topics import STAGE_NAMES, in_flow_order


def load_configured_tenants(settings: Settings) -> dict[str, TenantConfig]:
    return load_selected_tenants(settings.tenants_dir, settings.tenant_filter())


def make_codec(settings: Settings) -> EventCodec:
    return EventCodec(settings.schemas_dir)


def build_stage(name: str, settings: Settings, tenants: dict[str, TenantConfig], codec: EventCodec):
    data_dir = settings.data_dir
    region = settings.region
    if name == "initiation":
        from orchestrator.stages.initiation import InitiationStage
        return InitiationStage(tenants, region, data_dir)
    if name == "sanctions":
        from orchestrator.stages.sanctions import SanctionsStage
        return SanctionsStage(tenants, region)
    if name == "fraud":
        from orchestrator.stages.fraud import FraudStage
        return FraudStage(tenants, region, data_dir)
    if name == "routing":
        from orchestrator.stages.routing import RoutingStage
        return RoutingStage(tenants, region, data_dir, codec)
    if name == "execution":
        from adapters.clearing_batch import ClearingBatchClient
        from orchestrator.stages.execution import ExecutionStage
        client = ClearingBatchClient(max_connections=settings.clearing.max_concurrent_requests)
        return ExecutionStage(tenants, region, data_dir, codec, client, settings.clearing.url_for,
                              retry=settings.runtime.retry)
    if name == "ledger":
        from orchestrator.ledger_store import open_ledger_store
        from orchestrator.stages.ledger import LedgerStage
        # PAYORCH_STORAGE__BACKEND: ledger.sqlite in the data dir, or DynamoDB tables.
        return LedgerStage(tenants, region, open_ledger_store(settings), codec)
    if name == "settlement":
        from adapters.clearing_report import HttpReportSource
        from orchestrator.cycle_events import CycleEventCodec
        from orchestrator.stages.settlement import SettlementStage
        # Each cycle close reads the rail's settlement report where execution reaches
        # the rail (locally: the clearing simulator's report endpoint).
        return SettlementStage(tenants, region, data_dir, codec, cycle_codec=CycleEventCodec(settings.schemas_dir),
                               reports=HttpReportSource(settings.clearing.url_for))
    if name == "tracking":
        from orchestrator.cycle_events import CycleEventCodec
        from orchestrator.stages.tracking import TrackingStage
        # Tracking reads payment events and settlement's cycle events (two schema families).
        return TrackingStage(tenants, region, data_dir, codec=codec, cycle_codec=CycleEventCodec(settings.schemas_dir))
    if name == "notifications":
        from adapters.webhook_delivery import WebhookDeliveryWorker
        from orchestrator.stages.notifications import NotificationsStage
        from orchestrator.webhook_outbox import OUTBOX_FILE
        # The stage queues deliveries in its outbox; the worker, a thread of this process,
        # sends them (HTTP, signatures, retries).
        worker = WebhookDeliveryWorker(data_dir / OUTBOX_FILE, tenants, settings.notifications)
        return NotificationsStage(tenants, region, data_dir, worker=worker)
    raise ValueError(f"unknown stage {name!r}; stages are {', '.join(STAGE_NAMES)}")


def run_stages(names: list[str], settings: Settings, *, instance_id: str = "0") -> None:
    """Run stages until SIGTERM/SIGINT: one stage is what `payorch run STAGE` and a
    container do; several share one process, one consumer and one transaction per commit
    interval (`payorch up`'s plan, see `Settings.stage_processes`)."""
    from orchestrator.runtime.loop import StageRunner

    tenants = load_configured_tenants(settings)
    codec = make_codec(settings)
    handlers = [build_stage(name, settings, tenants, codec) for name in in_flow_order(names)]
    runner = StageRunner(handlers, settings, sorted(tenants), codec, instance_id=instance_id)
    runner.install_signal_handlers()
    runner.run()
