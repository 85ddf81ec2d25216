"""`payorch`: the one command operators and containers use."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from orchestrator.bootstrap import STAGE_NAMES
from orchestrator.logs import configure_logging
from orchestrator.settings import get_settings

app = typer.Typer(help="payorch: event-driven real-time payment orchestrator", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
topics_app = typer.Typer(help="Kafka topics of every tenant", no_args_is_help=True)
dlq_app = typer.Typer(help="Dead-letter topics: list, show and replay", no_args_is_help=True)
ledger_app = typer.Typer(help="The double-entry ledger", no_args_is_help=True)
apikey_app = typer.Typer(help="API keys of the intake: create, rotate, list, revoke", no_args_is_help=True)
app.add_typer(topics_app, name="topics")
app.add_typer(apikey_app, name="apikey")
app.add_typer(dlq_app, name="dlq")
app.add_typer(ledger_app, name="ledger")
webhooks_app = typer.Typer(help="Status webhooks: deliveries, attempts, redelivery, secrets", no_args_is_help=True)
app.add_typer(webhooks_app, name="webhooks")


def _check_cluster(settings) -> None:
    """Refuse to start, with the reason, when the tenant files and the environment name
    no usable Kafka cluster for this process's region (orchestrator/topology.py)."""
    from orchestrator.kafka_clients import region_kafka

    region_kafka(settings)


@app.command()
def up() -> None:
    """Run everything on this machine (a local Kafka broker when none is configured)."""
    from orchestrator.supervisor import Supervisor

    settings = get_settings()
    _check_cluster(settings)
    configure_logging("supervisor", settings.log_level, "text")
    raise typer.Exit(Supervisor(settings, echo=lambda line: print(line, flush=True)).run())


@app.command()
def run(stages: Annotated[list[str], typer.Argument(help=f"one or more of: {', '.join(STAGE_NAMES)}")],
        instance: Annotated[str, typer.Option(help="instance id, unique per replica")] = "0") -> None:
    """Run one stage, as its container does, or several stages in one process."""
    from orchestrator.bootstrap import in_flow_order, run_stages
    from orchestrator.topics import process_name

    try:
        names = in_flow_order(stages)
    except ValueError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    settings = get_settings()
    _check_cluster(settings)
    configure_logging(process_name(names), settings.log_level, settings.log_format)
    run_stages(names, settings, instance_id=instance)


@app.command()
def intake() -> None:
    """Run the REST intake."""
    import uvicorn

    from orchestrator.bootstrap import load_configured_tenants
    from orchestrator.intake.app import create_app
    from orchestrator.intake.server import bounded_protocol

    settings = get_settings()
    _check_cluster(settings)
    configure_logging("intake", settings.log_level, settings.log_format)
    application = create_app(settings, load_configured_tenants(settings))
    protocol = bounded_protocol(header_read_timeout_s=settings.intake.header_read_timeout_s,
                                max_head_bytes=settings.intake.max_request_head_bytes)
    uvicorn.run(application, host=settings.intake.host, port=settings.intake.port, log_level="warning",
                access_log=False, timeout_graceful_shutdown=10, http=protocol,
                limit_concurrency=settings.intake.max_concurrent_connections,
                timeout_keep_alive=settings.intake.keep_alive_timeout_s)


@app.command("clearing-sim")
def clearing_sim(
    rail: Annotated[list[str] | None, typer.Option(help="simulate only this rail (repeatable); default: all")] = None,
    port: Annotated[int | None, typer.Option(help="port (default: PAYORCH_CLEARING__SIMULATOR_PORT)")] = None,
) -> None:
    """Run the CLEARING SIMULATOR (stands in for the rails locally; never in production)."""
    from adapters.clearing_simulator import run_simulator

    settings = get_settings()
    name = "clearing-sim" + (f"-{'-'.join(rail)}" if rail else "")
    configure_logging(name, settings.log_level, settings.log_format)
    run_simulator(settings.clearing.simulator_host, port or settings.clearing.simulator_port, settings.tenants_dir,
                  rails=rail or None)


@topics_app.command("create")
def topics_create() -> None:
    """Create every stage and dead-letter topic (partitions and replication from settings)."""
    from orchestrator.bootstrap import load_configured_tenants
    from orchestrator.kafka_clients import create_topics

    settings = get_settings()
    _check_cluster(settings)
    created, existing = create_topics(settings, load_configured_tenants(settings))
    for name in created:
        typer.echo(f"created {name}")
    typer.echo(f"{len(created)} created, {len(existing)} already existed")


@topics_app.command("list")
def topics_list() -> None:
    """List the payment topics on the broker with their partition counts."""
    from orchestrator.kafka_clients import make_admin

    metadata = make_admin(get_settings()).list_topics(timeout=10)
    for name in sorted(metadata.topics):
        if ".payments." in name:
            typer.echo(f"{name}\t{len(metadata.topics[name].partitions)} partitions")


@dlq_app.command("list")
def dlq_list() -> None:
    """Count dead letters by tenant, stage and error class."""
    from orchestrator.dlq import DeadLetters

    dead = DeadLetters(get_settings())
    rows = dead.summary()
    if not rows:
        typer.echo("no dead letters")
        return
    typer.echo(f"{'tenant':8} {'stage':12} {'error class':28} count")
    for (tenant, stage, error_class), count in sorted(rows.items()):
        typer.echo(f"{tenant:8} {stage:12} {error_class:28} {count}")
    typer.echo(f"{sum(rows.values())} dead letters in all")


@dlq_app.command("show")
def dlq_show(ref: Annotated[str, typer.Argument(help="TOPIC:PARTITION:OFFSET or a payment id")]) -> None:
    """Show dead letters (headers, and the event decoded where it can be)."""
    from orchestrator.dlq import DeadLetters

    shown = DeadLetters(get_settings()).show(ref, echo=typer.echo)
    if not shown:
        typer.echo(f"no dead letter matches {ref}", err=True)
        raise typer.Exit(1)


@dlq_app.command("replay")
def dlq_replay(
    tenant: Annotated[str | None, typer.Option(help="only this tenant")] = None,
    stage: Annotated[str | None, typer.Option(help="only dead letters of this stage")] = None,
    error_class: Annotated[str | None, typer.Option(help="only this error class")] = None,
    payment_id: Annotated[list[str] | None, typer.Option(help="only these payment ids")] = None,
    since: Annotated[str | None, typer.Option(help="only dead letters failed at or after (ISO 8601)")] = None,
    until: Annotated[str | None, typer.Option(help="only dead letters failed before (ISO 8601)")] = None,
    rate: Annotated[float, typer.Option(help="messages per second at most")] = 200.0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="say what would be replayed, change nothing")] = False,
) -> None:
    """Send dead letters back to their origin topic, idempotently."""
    from orchestrator.dlq import DeadLetters, ReplayFilter

    result = DeadLetters(get_settings()).replay(
        ReplayFilter(tenant=tenant, stage=stage, error_class=error_class, payment_ids=set(payment_id or ()),
                     since=since, until=until),
        rate_per_s=rate, dry_run=dry_run, echo=typer.echo)
    typer.echo(result.summary_line(dry_run))
    if result.failed:
        raise typer.Exit(1)


@ledger_app.command("verify")
def ledger_verify() -> None:
    """Check every ledger invariant; exit 1 with a report if any fails.

    Reads the configured store (PAYORCH_STORAGE__BACKEND: SQLite or DynamoDB) and the
    tracking store in the data dir."""
    from orchestrator.ledger_verify import verify_configured_ledger

    result = verify_configured_ledger(get_settings())
    for line in result.report_lines():
        typer.echo(line)
    typer.echo(result.summary_line())
    raise typer.Exit(0 if result.ok else 1)


def _credential_store():
    from orchestrator.intake.credentials import open_credential_store

    return open_credential_store(get_settings(), background=False)


@apikey_app.command("create")
def apikey_create(
    tenant: Annotated[str, typer.Option(help="the tenant the key acts for")],
    scope: Annotated[list[str] | None, typer.Option(
        help="payments:submit, payments:read, payments:review or operate (repeatable); default: submit and read")] = None,
    label: Annotated[str, typer.Option(help="who or what uses the key")] = "",
    client: Annotated[str | None, typer.Option(
        help="the client the key is for, which owns its Idempotency-Keys; default: a new client named by the "
             "key id (to replace a key, use `apikey rotate`)")] = None,
) -> None:
    """Create a key; it is printed once, as the last token of the output, and never stored."""
    from orchestrator.bootstrap import load_configured_tenants
    from orchestrator.intake.credentials import DEFAULT_SCOPES, CredentialError

    tenant = tenant.strip().lower()
    if tenant not in load_configured_tenants(get_settings()):
        typer.echo(f"tenant {tenant!r} is not configured", err=True)
        raise typer.Exit(2)
    store = _credential_store()
    try:
        key, credential = store.create(tenant, tuple(scope or DEFAULT_SCOPES), label,
                                       client_id=client.strip() if client is not None else None)
    except CredentialError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    finally:
        store.close()
    typer.echo(f"created {credential.key_id} for tenant {tenant} (client {credential.client_id}) with "
               f"{', '.join(sorted(credential.scopes))}; store the key now, it is not shown again:")
    typer.echo(key)


@apikey_app.command("rotate")
def apikey_rotate(key_id: Annotated[str, typer.Argument(help="the live key to replace, as `apikey list` shows it")]
                  ) -> None:
    """A new key for the same client, tenant and scopes; printed once, as the last token.
    Both keys work until you revoke the old one, and the client's Idempotency-Keys stay its own."""
    from orchestrator.intake.credentials import CredentialError

    store = _credential_store()
    try:
        key, credential = store.rotate(key_id.strip())
    except CredentialError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    finally:
        store.close()
    typer.echo(f"created {credential.key_id} for client {credential.client_id} of tenant {credential.tenant_id} "
               f"with {', '.join(sorted(credential.scopes))}; revoke {key_id.strip()} once the client uses the new "
               "key. Store the key now, it is not shown again:")
    typer.echo(key)


@apikey_app.command("list")
def apikey_list() -> None:
    """Every key's id, tenant, scopes and state (never the key itself)."""
    store = _credential_store()
    try:
        credentials = store.list()
    finally:
        store.close()
    for credential in credentials:
        state = f"revoked {credential.revoked_at}" if credential.revoked_at else "live"
        typer.echo(f"{credential.key_id}  {credential.tenant_id:<6} client {credential.client_id:<14} "
                   f"{','.join(sorted(credential.scopes)):<40} created {credential.created_at}  {state}  "
                   f"{credential.label}")
    typer.echo(f"{len(credentials)} keys, {sum(c.revoked_at is None for c in credentials)} live")


@apikey_app.command("revoke")
def apikey_revoke(key_id: Annotated[str, typer.Argument(help="the key id, as `apikey list` shows it")]) -> None:
    """Revoke a key: the intake refuses it within two seconds."""
    from orchestrator.intake.credentials import CredentialError

    store = _credential_store()
    try:
        credential = store.revoke(key_id.strip())
    except CredentialError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    finally:
        store.close()
    typer.echo(f"revoked {credential.key_id} of tenant {credential.tenant_id}")


def _outbox(*, read_only: bool = True):
    """The notifications stage's outbox in the data dir (exit 1 when it has none yet)."""
    from orchestrator.webhook_outbox import OUTBOX_FILE, WebhookOutbox

    path = get_settings().data_dir / OUTBOX_FILE
    if not path.exists():
        typer.echo(f"no webhook outbox at {path}: the notifications stage has not run with this data dir",
                   err=True)
        raise typer.Exit(1)
    return WebhookOutbox(path, read_only=read_only)


def _when(epoch_s: float | None) -> str:
    from datetime import UTC, datetime

    return "-" if epoch_s is None else datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds")


@webhooks_app.command("deliveries")
def webhooks_deliveries(
    tenant: Annotated[str | None, typer.Option(help="only this tenant")] = None,
    state: Annotated[str | None, typer.Option(help="pending, delivered or dead")] = None,
    payment_id: Annotated[str | None, typer.Option(help="only this payment's")] = None,
    limit: Annotated[int, typer.Option(help="at most this many, newest first", min=1, max=10_000)] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
) -> None:
    """The webhook delivery log: each delivery's state, attempts and last outcome."""
    import orjson

    from orchestrator.webhook_outbox import STATES

    if state is not None and state not in STATES:
        typer.echo(f"--state is one of {', '.join(STATES)}", err=True)
        raise typer.Exit(2)
    outbox = _outbox()
    try:
        rows = outbox.deliveries(tenant_id=tenant, state=state, payment_id=payment_id, limit=limit)
    finally:
        outbox.close()
    for row in rows:
        if as_json:
            typer.echo(orjson.dumps({k: v for k, v in row.items() if k != "body"}).decode())
            continue
        last = row["last_status_code"] if row["last_status_code"] is not None else (row["last_error"] or "-")
        typer.echo(f"{row['delivery_id']}  {row['tenant_id']:<6} {row['status']:<9} {row['state']:<9} "
                   f"attempts {row['attempts']:<3} last {str(last)[:60]:<20} queued {_when(row['queued_at'])}  "
                   f"payment {row['payment_id']}")
    if not as_json:
        typer.echo(f"{len(rows)} deliveries")


@webhooks_app.command("attempts")
def webhooks_attempts(delivery_id: Annotated[str, typer.Argument(help="the delivery id, as `deliveries` shows it")],
                      ) -> None:
    """Every attempt of one delivery: when, where, the answer's status or the error, the latency."""
    outbox = _outbox()
    try:
        delivery = outbox.delivery(delivery_id.strip())
        attempts = outbox.attempts(delivery_id.strip()) if delivery else []
    finally:
        outbox.close()
    if delivery is None:
        typer.echo(f"no delivery {delivery_id}", err=True)
        raise typer.Exit(1)
    typer.echo(f"{delivery['delivery_id']}: {delivery['event_type']} of payment {delivery['payment_id']} to "
               f"{delivery['endpoint']} ({delivery['url']}), {delivery['state']}, webhook-id {delivery['webhook_id']}")
    for attempt in attempts:
        outcome = (f"HTTP {attempt['status_code']}" if attempt["status_code"] is not None else "no answer")
        error = f"  {attempt['error']}" if attempt["error"] else ""
        typer.echo(f"  #{attempt['attempt']:<3} {_when(attempt['started_at'])}  {outcome:<10} "
                   f"{attempt['latency_ms']:.1f} ms{error}")
    if delivery["state"] == "pending":
        typer.echo(f"next attempt at {_when(delivery['next_attempt_at'])}")
    typer.echo(f"{len(attempts)} attempts")


@webhooks_app.command("redeliver")
def webhooks_redeliver(delivery_id: Annotated[str, typer.Argument(help="the delivery id, as `deliveries` shows it")],
                       ) -> None:
    """Send a delivery again (a dead one, or a delivered one a receiver lost), with the same
    webhook id and body; the notifications stage picks it up within its poll interval."""
    import time

    outbox = _outbox(read_only=False)
    try:
        before = outbox.redeliver(delivery_id.strip(), time.time())
    finally:
        outbox.close()
    if before is None:
        typer.echo(f"no delivery {delivery_id}", err=True)
        raise typer.Exit(1)
    typer.echo(f"queued {delivery_id.strip()} again (it was {before})")


@webhooks_app.command("new-secret")
def webhooks_new_secret() -> None:
    """Print a new signing secret (whsec_ and 32 random bytes in base64) as the last line.

    Rotation: put the new secret first and the old one after it, space separated, in the
    endpoint's variable or file; both sign until the receiver has the new one; then drop
    the old one."""
    from orchestrator.webhooks import new_secret

    typer.echo("a new webhook signing secret; store it where the endpoint's secret_env or secret_file points:")
    typer.echo(new_secret())


@app.command()
def demo(
    url: Annotated[str, typer.Option(help="intake base URL")] = "http://127.0.0.1:8080",
    per_tenant: Annotated[int, typer.Option(help="payments per tenant", min=1, max=1_000)] = 3,
    timeout_s: Annotated[float, typer.Option(help="how long to wait for every payment to end")] = 60.0,
) -> None:
    """Send sample payments of every tenant and show each one's journey.

    Uses the local keys `payorch up` wrote (api-keys.json in the data dir)."""
    from orchestrator.demo import run_demo
    from orchestrator.intake.credentials import local_keys_path, read_local_keys

    data_dir = get_settings().data_dir
    keys = read_local_keys(data_dir)
    if not keys:
        typer.echo(f"no API keys in {local_keys_path(data_dir)}: run `payorch up` once, or create keys with "
                   "`payorch apikey create` and write them there as {\"tenant\": \"key\"}", err=True)
        raise typer.Exit(2)
    raise typer.Exit(run_demo(url, keys, per_tenant=per_tenant, timeout_s=timeout_s))


def main() -> None:
    from orchestrator.tenants import TenantConfigError
    from orchestrator.topology import TopologyError

    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except (TopologyError, TenantConfigError) as exc:
        # A configuration that names no usable cluster: the reason, not a traceback.
        print(f"payorch: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
