"""The webhook delivery worker: sends what the notifications stage queued in its outbox.

A thread in the notifications stage's process. Every `poll_interval_ms` it claims the
due deliveries (orchestrator/webhook_outbox.py) that are not already in flight, and sends
each on a pool of `max_concurrent_requests` threads through one `httpx.Client` (its
connection pool is shared by the threads):

1. the endpoint as the tenant file says now (a delivery whose endpoint is gone is dead);
2. the host resolved, and every address checked against the SSRF rule
   (orchestrator/webhooks.py, `refused_address`) unless the tenant allows private
   addresses; the request then goes to the checked address (the Host header and the TLS
   server name stay the host's), so a second resolution cannot swap in another one;
3. the signing secrets read from the endpoint's environment variable or file (at every
   attempt, so a rotated file is used without a restart) and the Standard Webhooks
   headers made for this attempt's timestamp;
4. a POST, redirects not followed (a 3xx is a failed attempt: a redirect could lead to an
   address the check never saw); a 2xx answer delivers, anything else is retried after
   the backoff (`backoff_delay_s`) until the attempt or age limit makes it dead.

Every attempt is logged in the outbox (status code or error, latency, a bounded excerpt
of the answer) before the next one is claimed. A process killed mid-request leaves its
delivery pending; after the restart it is sent again with the same `webhook-id`.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx

from orchestrator.settings import NotificationSettings
from orchestrator.tenants import TenantConfig, WebhookEndpointConfig
from orchestrator.webhook_outbox import AttemptResult, WebhookOutbox
from orchestrator.webhooks import WebhookSecretError, backoff_delay_s, parse_secrets, refused_address, sign

log = logging.getLogger("payorch.notifications")

USER_AGENT = "payorch-webhooks/1"
# How long stop() waits for requests in flight before it leaves them to the restart.
_STOP_WAIT_S = 5.0
# How often the worker forgets what is past its retention (a few deletes, hourly).
_RETENTION_INTERVAL_S = 3_600.0
_TERMINAL_STATUSES = ("SETTLED", "REJECTED", "FAILED")

Resolver = Callable[[str, int], list[str]]


class DeliveryRefused(Exception):
    """An attempt that cannot be made (no secret, a refused address): logged as the
    attempt's error and retried like a failed request, since an operator may fix it."""


def resolve_host(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (getaddrinfo, TCP)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


def read_secrets(endpoint: WebhookEndpointConfig, environ: dict[str, str] | os._Environ = os.environ) -> tuple[bytes, ...]:
    if endpoint.secret_env is not None:
        text = environ.get(endpoint.secret_env)
        if not text:
            raise DeliveryRefused(f"secret: environment variable {endpoint.secret_env} is not set")
        where = f"environment variable {endpoint.secret_env}"
    else:
        try:
            text = Path(endpoint.secret_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise DeliveryRefused(f"secret: cannot read {endpoint.secret_file}: {exc.strerror}") from None
        where = f"file {endpoint.secret_file}"
    try:
        return parse_secrets(text)
    except WebhookSecretError as exc:
        raise DeliveryRefused(f"secret in {where}: {exc}") from None


def pinned_request_target(url: str, *, allow_private: bool, resolver: Resolver) -> tuple[str, str, str]:
    """(the url with the host replaced by its checked address, the Host header value, the
    TLS server name); DeliveryRefused when an address is refused."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = resolver(host, port)
    except OSError as exc:
        raise DeliveryRefused(f"cannot resolve {host}: {exc}") from None
    if not addresses:
        raise DeliveryRefused(f"{host} resolves to no address")
    if not allow_private:
        for address in addresses:
            why = refused_address(address)
            if why is not None:
                raise DeliveryRefused(f"{host} resolves to {address}, {why} (notifications.allow_private_addresses "
                                      "is off)")
    address = addresses[0]
    literal = f"[{address}]" if ":" in address else address
    netloc = literal + (f":{parts.port}" if parts.port else "")
    host_header = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, "")), host_header, host


class WebhookDeliveryWorker:
    def __init__(self, outbox_path: Path, tenants: dict[str, TenantConfig], settings: NotificationSettings, *,
                 resolver: Resolver = resolve_host, environ=os.environ, clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None, tls_verify: ssl.SSLContext | bool = True) -> None:
        self.outbox = WebhookOutbox(outbox_path)
        self.tenants = tenants
        self.settings = settings
        self.resolver = resolver
        self.environ = environ
        self.clock = clock
        # bandit B311: spreads retries in time; nothing secret depends on it.
        self.rng = rng or random.Random()  # nosec B311
        timeout = httpx.Timeout(settings.request_timeout_s)
        # tls_verify: httpx's default CA bundle; a test passes a context trusting its own CA.
        self.client = httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False, verify=tls_verify,
                                   limits=httpx.Limits(max_connections=settings.max_concurrent_requests),
                                   headers={"user-agent": USER_AGENT})
        self.pool = ThreadPoolExecutor(max_workers=settings.max_concurrent_requests,
                                       thread_name_prefix="webhook-send")
        self._in_flight: dict[str, Future] = {}
        self._in_flight_lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the loop --------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="webhook-delivery", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=_STOP_WAIT_S)
        self.pool.shutdown(wait=False, cancel_futures=True)
        with self._in_flight_lock:
            running = list(self._in_flight.values())
        # A request still running after this is cut off: its delivery stays pending and is
        # sent again after the restart.
        wait(running, timeout=_STOP_WAIT_S)
        self.client.close()
        self.outbox.close()

    def forget_expired(self) -> tuple[int, int]:
        cutoff = self.clock() - self.settings.retention_days * 86_400
        forgotten = self.outbox.forget_before(cutoff, terminal_statuses=_TERMINAL_STATUSES)
        if any(forgotten):
            log.info("webhook outbox: forgot %d delivered webhooks and %d ended payments past %d days",
                     *forgotten, self.settings.retention_days)
        return forgotten

    def _run(self) -> None:
        interval_s = self.settings.poll_interval_ms / 1000
        next_retention_at = 0.0
        while not self._stopping.is_set():
            try:
                if time.monotonic() >= next_retention_at:
                    next_retention_at = time.monotonic() + _RETENTION_INTERVAL_S
                    self.forget_expired()
                self.dispatch_due()
            except Exception:  # the worker must outlive a bad row or a busy store; the row stays pending
                log.exception("webhook delivery round failed; trying again")
            self._stopping.wait(interval_s)

    def dispatch_due(self) -> list[Future]:
        """Start every due delivery not already in flight; returns their futures."""
        with self._in_flight_lock:
            busy = set(self._in_flight)
        room = self.settings.batch_max_deliveries - len(busy)
        if room <= 0:
            return []
        started = []
        for row in self.outbox.due(self.clock(), room, excluding=busy):
            delivery_id = row["delivery_id"]
            future = self.pool.submit(self._deliver, row)
            with self._in_flight_lock:
                self._in_flight[delivery_id] = future
            future.add_done_callback(lambda f, d=delivery_id: self._done(d, f))
            started.append(future)
        return started

    def _done(self, delivery_id: str, future: Future) -> None:
        with self._in_flight_lock:
            self._in_flight.pop(delivery_id, None)
        error = None if future.cancelled() else future.exception()
        if error is not None:
            # The attempt could not be recorded (the store was busy or closed): the delivery
            # stays pending and is attempted again, with the same webhook-id.
            log.error("webhook attempt not recorded: %s: %s", type(error).__name__, error,
                      extra={"delivery_id": delivery_id})

    # -- one attempt -----------------------------------------------------------------------

    def _deliver(self, row) -> None:
        context = {"payment_id": row["payment_id"], "correlation_id": row["payment_id"],
                   "tenant_id": row["tenant_id"], "event_id": row["webhook_id"], "delivery_id": row["delivery_id"]}
        endpoint = self._endpoint(row["tenant_id"], row["endpoint"])
        if endpoint is None:
            self.outbox.mark_dead(row["delivery_id"], f"endpoint {row['endpoint']} is no longer configured",
                                  self.clock())
            log.warning("webhook dead: its endpoint is no longer configured", extra=context)
            return
        result = self.attempt(row, endpoint)
        attempts_this_round = row["attempts"] - row["round_attempts_before"] + 1
        next_at, dead = None, False
        if not result.succeeded:
            now = self.clock()
            next_at = now + backoff_delay_s(attempts_this_round, base_s=self.settings.backoff_base_s,
                                            max_s=self.settings.backoff_max_s, jitter=self.settings.backoff_jitter,
                                            rng=self.rng)
            dead = (attempts_this_round >= self.settings.max_attempts
                    or next_at - row["round_started_at"] > self.settings.max_age_s)
        attempt = self.outbox.record_attempt(row["delivery_id"], result, next_attempt_at=next_at, dead=dead)
        what = f"HTTP {result.status_code}" if result.status_code is not None else result.error
        if result.succeeded:
            log.info("webhook delivered (attempt %d, %s)", attempt, what, extra=context)
        elif dead:
            log.warning("webhook dead after attempt %d (%s); `payorch webhooks redeliver %s` sends it again",
                        attempt, what, row["delivery_id"], extra=context)
        else:
            log.warning("webhook attempt %d failed (%s); next in %.1f s", attempt, what, next_at - self.clock(),
                        extra=context)

    def _endpoint(self, tenant_id: str, name: str) -> WebhookEndpointConfig | None:
        tenant = self.tenants.get(tenant_id)
        if tenant is None:
            return None
        return next((e for e in tenant.notifications.endpoints if e.name == name), None)

    def attempt(self, row, endpoint: WebhookEndpointConfig) -> AttemptResult:
        """One signed POST of the delivery's body; never raises for the receiver's faults."""
        started = self.clock()
        began = time.perf_counter()
        url = endpoint.url

        def elapsed_ms() -> float:
            return round((time.perf_counter() - began) * 1000, 3)

        body = bytes(row["body"])
        try:
            keys = read_secrets(endpoint, self.environ)
            allow = self.tenants[row["tenant_id"]].notifications.allow_private_addresses
            target, host_header, server_name = pinned_request_target(url, allow_private=allow,
                                                                     resolver=self.resolver)
            headers = {"content-type": "application/json", "host": host_header,
                       **sign(keys, row["webhook_id"], int(started), body)}
            answer = self.client.post(target, content=body, headers=headers,
                                      extensions={"sni_hostname": server_name})
        except DeliveryRefused as exc:
            return AttemptResult(started_at=started, latency_ms=elapsed_ms(), url=url, error=str(exc))
        except httpx.TimeoutException as exc:
            return AttemptResult(started_at=started, latency_ms=elapsed_ms(), url=url,
                                 error=f"timeout: {type(exc).__name__}")
        except httpx.HTTPError as exc:
            return AttemptResult(started_at=started, latency_ms=elapsed_ms(), url=url,
                                 error=f"{type(exc).__name__}: {exc}"[:300])
        excerpt = answer.content[:self.settings.response_excerpt_max_bytes].decode("utf-8", "replace")
        error = None
        if 300 <= answer.status_code < 400:
            error = f"redirect to {answer.headers.get('location', '?')[:200]} not followed"
        elif not 200 <= answer.status_code < 300:
            error = f"HTTP {answer.status_code}"
        return AttemptResult(started_at=started, latency_ms=elapsed_ms(), url=url, status_code=answer.status_code,
                             error=error, response_excerpt=excerpt)
