"""CLEARING SIMULATOR: a local stand-in for FedNow, RTP, SEPA Inst, FPS, PIX, SPEI, NPP, FAST.

THIS IS NOT A CLEARING SYSTEM. It exists so that the orchestrator can be run and
tested end to end on one machine: it accepts pacs.008.001.08 credit transfers over
HTTP and answers pacs.002.001.12 status reports the way an instant-payment rail would,
with configurable latency, rejects and outages. It must never be pointed at by a
production deployment, and it has no authentication (its admin endpoints change its
behaviour for tests).

Per rail (rails come from the tenant files; a rail name is unique across tenants):

POST /rails/{rail}/pacs008          body application/xml, one pacs.008.001.08
    hardened parse, XSD validation and group header checks, then the rail's rules per
    transaction, then after a simulated latency a pacs.002:
      ACSC  accepted and settled
      RJCT  AM03 currency not carried by the rail, AM02 amount above the rail maximum,
            AC01 creditor account of the wrong kind (IBAN vs account number),
            RC01 creditor bank without a bank code on a bank-code rail,
            AC03 creditor account in simulator.unknown_creditor_accounts,
            AC04/AC06/AG01/RR04 drawn at random with probability reject_rate,
            DUPL the same UETR twice in one message.
    Faults (tenant file `simulator:` or the behaviour endpoint): loss_rate, the share of
    messages the rail never receives (the connection is held past the rail's clearing
    timeout, or loss_hold_ms, then 504; nothing recorded); response_delay_ms, the rail settles and records, then answers
    that much later (the sender times out on a payment that did settle); inquiry_outage,
    503 to every status inquiry.
    A transaction whose UETR was already answered is answered again from memory
    (never settled twice); a message all of whose transactions were answered by one
    earlier report gets that report's exact bytes back. A malformed message gets 400
    with a pacs.002 RJCT (FF01; AM18/AM16 for count/sum mismatches; FF01 for a message
    addressed to another clearing system) when its MsgId can be read, else 400
    application/problem+json. During an outage: 503 with Retry-After.
POST /rails/{rail}/pacs028          body application/xml, one pacs.028.001.05 status request:
    a pacs.002 from what the rail recorded, per transaction: its recorded status (ACSC,
    or RJCT with its reason), PDNG while it is being processed, RJCT NOOR when the rail
    never received it. One settled transaction is answered with CreDtTm = its settlement
    time (the reduced pacs.002 XSD has no AccptncDtTm). During an outage: 503.
POST /admin/rails/{rail}/outage     {"seconds": N}: answer 503 for N seconds (0 ends it)
POST /admin/rails/{rail}/behaviour  {"latency_ms_min", "latency_ms_p50", "latency_ms_max", "reject_rate",
                                     "unknown_creditor_accounts"}: override at runtime
GET  /rails/{rail}/report?since=ISO-8601&until=ISO-8601
                                    settled transactions with settled_at in [since, until),
                                    for settlement's cycle reconciliation
POST /admin/rails/{rail}/report-discrepancies  SIMULATOR-ONLY, for tests: make the report
                                    differ from what was settled, {"kind": "omit" | "amount" |
                                    "duplicate" | "extra", "uetr", "amount_minor", "currency",
                                    "settled_at"}; omit drops the UETR's line, amount reports
                                    another amount, duplicate lists it twice, extra adds a line
                                    for a payment never sent (uetr generated when absent)
GET/DELETE /admin/rails/{rail}/report-discrepancies  list / clear them
GET  /healthz

State lives in memory and is bounded: the last `max_transactions` answered
transactions (an OrderedDict, oldest evicted first) and the last `max_responses`
report documents.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
import random
import time
import uuid
from collections import OrderedDict
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import anyio.to_thread
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette._utils import get_route_path  # how Starlette's router sees the path
from starlette.types import Receive, Scope, Send
from lxml import etree
from pydantic import BaseModel, ConfigDict, Field

from orchestrator.domain import to_minor_units
from orchestrator.tenants import RailConfig, TenantConfig, load_tenants, missing_mandatory_fields

from adapters.iso20022 import schemas
from adapters.iso20022.errors import IsoDocumentError
from adapters.iso20022.pacs002 import TransactionStatus, build_pacs002
from adapters.iso20022.pacs008 import MESSAGE_VERSION as PACS008_VERSION
from adapters.iso20022.pacs008 import Pacs008Transaction, ParsedPacs008, parse_pacs008_root
from adapters.iso20022.pacs028 import MESSAGE_VERSION as PACS028_VERSION
from adapters.iso20022.pacs028 import parse_pacs028_root
from adapters.iso20022.secure_xml import DEFAULT_MAX_DOCUMENT_BYTES, parse_untrusted

__all__ = ["ClearingSimulator", "create_simulator_app", "run_simulator"]

log = logging.getLogger("payorch.clearing_simulator")

DEFAULT_MAX_TRANSACTIONS = 1_000_000
DEFAULT_MAX_RESPONSES = 100_000
# Parse bodies larger than this in a worker thread so one big batch cannot stall the
# event loop (and with it every other rail's latency timers).
_INLINE_PARSE_MAX_BYTES = 64 * 1024
# Reasons for the random, reject_rate-driven rejections: creditor-side refusals a
# receiving bank can give for an otherwise well-formed instant payment.
RANDOM_REJECT_REASONS = ("AC04", "AC06", "AG01", "RR04")
_XML_MEDIA_TYPE = "application/xml"
_PROBLEM_MEDIA_TYPE = "application/problem+json"
# OrgnlMsgId is Max35Text: a longer MsgId cannot be echoed in a pacs.002.
_MAX_MESSAGE_ID_CHARS = 35
_GROUP_REASONS = {"transaction-count-mismatch": "AM18", "control-sum-mismatch": "AM16"}


@dataclass(slots=True)
class RailBehaviour:
    latency_ms_p50: int
    latency_ms_max: int
    reject_rate: float
    unknown_creditor_accounts: frozenset[str]
    latency_ms_min: int = 0
    loss_rate: float = 0.0
    response_delay_ms: int = 0
    # How long a lost message's connection is held; None: the rail's clearing timeout + 1 s.
    loss_hold_ms: int | None = None
    inquiry_outage: bool = False


@dataclass(slots=True)
class TransactionRecord:
    """One answered transaction, kept for idempotent replies and the report."""

    key: str
    rail: str
    uetr: str | None
    end_to_end_id: str
    transaction_id: str | None
    amount_minor: int
    currency: str
    status: TransactionStatus
    original_message_id: str
    response_message_id: str
    settled_at: datetime | None


@dataclass(slots=True)
class _StoredResponse:
    keys: tuple[str | None, ...]
    document: bytes


@dataclass(slots=True)
class _RailState:
    tenant_id: str
    config: RailConfig
    behaviour: RailBehaviour
    outage_until_monotonic_s: float = 0.0
    max_amount_minor: dict[str, int] = field(default_factory=dict)


class BehaviourOverride(BaseModel):
    model_config = ConfigDict(extra="forbid")

    latency_ms_min: int | None = Field(default=None, ge=0, le=60_000)
    latency_ms_p50: int | None = Field(default=None, ge=0, le=60_000)
    latency_ms_max: int | None = Field(default=None, ge=0, le=120_000)
    reject_rate: float | None = Field(default=None, ge=0.0, le=1.0)
    unknown_creditor_accounts: list[str] | None = None
    loss_rate: float | None = Field(default=None, ge=0.0, le=1.0)
    response_delay_ms: int | None = Field(default=None, ge=0, le=120_000)
    loss_hold_ms: int | None = Field(default=None, ge=0, le=120_000)
    inquiry_outage: bool | None = None


class ReportDiscrepancy(BaseModel):
    """SIMULATOR-ONLY: a deliberate difference between what the simulator settled and
    what its settlement report says, so tests can prove that reconciliation finds it.
    A real clearing system has no such switch."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["omit", "amount", "duplicate", "extra"]
    uetr: str | None = Field(default=None, max_length=64)
    amount_minor: int | None = Field(default=None, gt=0)
    currency: str | None = Field(default=None, min_length=3, max_length=3)
    settled_at: datetime | None = None


class OutageRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seconds: float = Field(ge=0, le=86_400)


def _problem(status: int, problem_type: str, title: str, detail: str, **extra: Any) -> JSONResponse:
    body = {"type": problem_type, "title": title, "status": status, "detail": detail}
    headers = extra.pop("headers", None)
    body.update({k: v for k, v in extra.items() if v is not None})
    return JSONResponse(body, status_code=status, media_type=_PROBLEM_MEDIA_TYPE, headers=headers)


class ClearingSimulator:
    """The CLEARING SIMULATOR's state and rules, independent of HTTP."""

    def __init__(
        self,
        tenants: Mapping[str, TenantConfig],
        *,
        seed: int | None = None,
        max_transactions: int = DEFAULT_MAX_TRANSACTIONS,
        max_responses: int = DEFAULT_MAX_RESPONSES,
        max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES,
        rails: Collection[str] | None = None,
    ) -> None:
        # bandit B311: simulated latencies, seeded on purpose.
        self._rng = random.Random(seed)  # nosec B311
        self.max_transactions = max_transactions
        self.max_responses = max_responses
        self.max_document_bytes = max_document_bytes
        self.rails: dict[str, _RailState] = {}
        wanted = set(rails) if rails is not None else None
        for tenant in tenants.values():
            for rail in tenant.rails:
                if wanted is not None and rail.name not in wanted:
                    continue  # one simulator process per rail serves only its own rail
                if rail.name in self.rails:
                    raise ValueError(
                        f"rail name {rail.name!r} is used by tenants {self.rails[rail.name].tenant_id!r} and "
                        f"{tenant.tenant_id!r}; the clearing simulator needs rail names unique across tenants"
                    )
                sim = rail.simulator
                state = _RailState(
                    tenant_id=tenant.tenant_id,
                    config=rail,
                    behaviour=RailBehaviour(
                        latency_ms_p50=sim.latency_ms_p50,
                        latency_ms_max=sim.latency_ms_max,
                        reject_rate=sim.reject_rate,
                        unknown_creditor_accounts=frozenset(sim.unknown_creditor_accounts),
                        latency_ms_min=sim.latency_ms_min,
                        loss_rate=sim.loss_rate,
                        response_delay_ms=sim.response_delay_ms,
                        inquiry_outage=sim.inquiry_outage,
                    ),
                )
                for currency in rail.currencies:
                    state.max_amount_minor[currency] = to_minor_units(format(rail.max_amount, "f"), currency)
                self.rails[rail.name] = state
        if wanted is not None and wanted - set(self.rails):
            raise ValueError(f"no tenant file defines rails {sorted(wanted - set(self.rails))}")
        self._records: OrderedDict[str, TransactionRecord] = OrderedDict()
        # Per rail, (settled_at epoch seconds, key) of every settled record in time order,
        # so a report reads its window instead of scanning every transaction the simulator
        # remembers (up to a million, on the one event loop that also answers payments).
        # Entries of evicted records are skipped when read and dropped by `_compact_index`.
        self._settled_index: dict[str, list[tuple[float, str]]] = {name: [] for name in self.rails}
        self._stale_index_entries = 0
        # SIMULATOR-ONLY report discrepancies per rail (see ReportDiscrepancy).
        self._discrepancies: dict[str, list[ReportDiscrepancy]] = {name: [] for name in self.rails}
        self._responses: OrderedDict[str, _StoredResponse] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[TransactionRecord]] = {}

    # -- behaviour ----------------------------------------------------------------

    def latency_s(self, behaviour: RailBehaviour) -> float:
        """A latency in [min, max] whose median is p50: uniform below the median, and a
        long tail (cubic) above it, like a real rail's mostly-fast, sometimes-slow answers.
        A minimum makes a rail that is always slow (slower than its time limit, say)."""
        high_ms = max(behaviour.latency_ms_max, 0)
        median_ms = min(behaviour.latency_ms_p50, high_ms)
        low_ms = min(behaviour.latency_ms_min, median_ms)
        draw = self._rng.random()
        if draw < 0.5:
            latency_ms = low_ms + (median_ms - low_ms) * (draw / 0.5)
        else:
            latency_ms = median_ms + (high_ms - median_ms) * ((draw - 0.5) / 0.5) ** 3
        return latency_ms / 1000.0

    def start_outage(self, rail: str, seconds: float) -> None:
        self.rails[rail].outage_until_monotonic_s = time.monotonic() + seconds if seconds > 0 else 0.0

    def outage_remaining_s(self, rail: str) -> float:
        return max(0.0, self.rails[rail].outage_until_monotonic_s - time.monotonic())

    def override(self, rail: str, change: BehaviourOverride) -> RailBehaviour:
        state = self.rails[rail]
        updated = replace(
            state.behaviour,
            **{
                name: (frozenset(value) if name == "unknown_creditor_accounts" else value)
                for name, value in change.model_dump(exclude_none=True).items()
            },
        )
        if not updated.latency_ms_min <= updated.latency_ms_p50 <= updated.latency_ms_max:
            raise ValueError("latencies must satisfy latency_ms_min <= latency_ms_p50 <= latency_ms_max")
        state.behaviour = updated
        return updated

    # -- rules --------------------------------------------------------------------

    def _evaluate(self, state: _RailState, transaction: Pacs008Transaction) -> tuple[str, str | None, str | None]:
        payment = transaction.payment
        rail = state.config
        if payment.currency not in rail.currencies:
            return "RJCT", "AM03", f"{rail.name} carries {', '.join(rail.currencies)}, not {payment.currency}"
        if payment.amount_minor > state.max_amount_minor[payment.currency]:
            return "RJCT", "AM02", f"amount {payment.amount} exceeds the {rail.name} maximum of {rail.max_amount}"
        account = payment.creditor.account
        if rail.creditor_account == "iban" and not account.iban:
            return "RJCT", "AC01", f"{rail.name} identifies creditor accounts by IBAN"
        if rail.creditor_account == "bank_code":
            if not account.number:
                return "RJCT", "AC01", f"{rail.name} identifies creditor accounts by account number and bank code"
            if not (account.bank_code or payment.creditor.agent.member_id):
                return "RJCT", "RC01", f"{rail.name} needs the creditor bank's {rail.bank_code_scheme} code"
        missing = missing_mandatory_fields(rail, payment)
        if missing:
            # The rail's market practice makes these fields mandatory (tenant file).
            return "RJCT", "FF01", f"{rail.name} requires {', '.join(missing)}"
        identifier = account.iban or account.number
        if identifier in state.behaviour.unknown_creditor_accounts:
            return "RJCT", "AC03", "the creditor bank does not know this account"
        if state.behaviour.reject_rate > 0 and self._rng.random() < state.behaviour.reject_rate:
            return "RJCT", self._rng.choice(RANDOM_REJECT_REASONS), "rejected by the creditor bank (simulated)"
        return "ACSC", None, None

    def _new_message_id(self) -> str:
        # "SIM" + 32 hex digits = 35 characters, the Max35Text limit; drawn from the seeded
        # generator so that a seeded run is reproducible.
        return "SIM" + uuid.UUID(int=self._rng.getrandbits(128), version=4).hex

    @staticmethod
    def _key(transaction: Pacs008Transaction) -> str | None:
        if transaction.uetr:
            return transaction.uetr
        if transaction.transaction_id:
            return "txid:" + transaction.transaction_id
        return None

    def _remember(self, record: TransactionRecord) -> None:
        self._records[record.key] = record
        self._records.move_to_end(record.key)
        if record.settled_at is not None:
            bisect.insort(self._settled_index[record.rail], (record.settled_at.timestamp(), record.key))
        while len(self._records) > self.max_transactions:
            _, evicted = self._records.popitem(last=False)
            if evicted.settled_at is not None:
                self._stale_index_entries += 1
        if self._stale_index_entries > max(1024, len(self._records)):
            self._compact_index()

    def _compact_index(self) -> None:
        """Rebuild the settlement index from the records still remembered."""
        index: dict[str, list[tuple[float, str]]] = {name: [] for name in self.rails}
        for record in self._records.values():
            if record.settled_at is not None:
                index[record.rail].append((record.settled_at.timestamp(), record.key))
        for entries in index.values():
            entries.sort()
        self._settled_index = index
        self._stale_index_entries = 0

    def _remember_response(self, message_id: str, keys: tuple[str | None, ...], document: bytes) -> None:
        self._responses[message_id] = _StoredResponse(keys, document)
        while len(self._responses) > self.max_responses:
            self._responses.popitem(last=False)

    # -- submission ---------------------------------------------------------------

    async def submit(self, rail_name: str, body: bytes) -> Response:
        state = self.rails[rail_name]
        try:
            if len(body) > _INLINE_PARSE_MAX_BYTES:
                root = await anyio.to_thread.run_sync(self._parse, body)
            else:
                root = self._parse(body)
        except IsoDocumentError as exc:
            status = 413 if exc.problem_type == "document-too-large" else 400
            return _problem(status, exc.problem_type, exc.title, exc.detail, path=exc.path)

        try:
            if len(body) > _INLINE_PARSE_MAX_BYTES:
                parsed = await anyio.to_thread.run_sync(parse_pacs008_root, root, state.tenant_id)
            else:
                parsed = parse_pacs008_root(root, state.tenant_id)
        except IsoDocumentError as exc:
            return self._message_rejection(root, exc, _GROUP_REASONS.get(exc.problem_type, "FF01"))

        expected_code = state.config.clearing.clearing_system_code
        if parsed.clearing_system_code != expected_code:
            error = IsoDocumentError(
                "wrong-clearing-system",
                "Message addressed to another clearing system",
                f"SttlmInf/ClrSys is {parsed.clearing_system_code or 'missing'}; {rail_name} is {expected_code}",
            )
            return self._message_rejection(root, error, "FF01")

        behaviour = state.behaviour
        if behaviour.loss_rate > 0 and self._rng.random() < behaviour.loss_rate:
            # SIMULATED FAULT: the message never reaches the rail; nothing is recorded, and
            # the sender hears nothing before its timeout.
            hold_ms = (behaviour.loss_hold_ms if behaviour.loss_hold_ms is not None
                       else state.config.clearing.timeout_ms + 1_000)
            await asyncio.sleep(hold_ms / 1000)
            log.warning("CLEARING SIMULATOR lost message %s on %s (fault injected)", parsed.message_id, rail_name)
            return _problem(504, "message-lost", "Message lost", "simulated: the rail never received this message")
        document = await self._settle(rail_name, state, parsed)
        if behaviour.response_delay_ms > 0:
            # SIMULATED FAULT: settled and recorded, but the answer comes late.
            await asyncio.sleep(behaviour.response_delay_ms / 1000)
        return Response(document, media_type=_XML_MEDIA_TYPE)

    async def inquire(self, rail_name: str, body: bytes) -> Response:
        """Answer a pacs.028 status request from what the rail recorded (module docstring)."""
        try:
            parsed = parse_pacs028_root(self._parse(body))
        except IsoDocumentError as exc:
            status = 413 if exc.problem_type == "document-too-large" else 400
            return _problem(status, exc.problem_type, exc.title, exc.detail, path=exc.path)
        statuses = []
        settled_at: list[datetime] = []
        for request in parsed.requests:
            record = self._records.get(request.uetr)
            if record is not None and record.rail == rail_name:
                statuses.append(record.status)
                if record.settled_at is not None:
                    settled_at.append(record.settled_at)
            elif request.uetr in self._inflight:
                statuses.append(TransactionStatus(request.end_to_end_id, request.uetr, "PDNG"))
            else:
                statuses.append(TransactionStatus(request.end_to_end_id, request.uetr, "RJCT", "NOOR",
                                                  "the rail never received this transaction"))
        single_settled = len(statuses) == 1 and len(settled_at) == 1
        document = build_pacs002(parsed.message_id, PACS028_VERSION, statuses, message_id=self._new_message_id(),
                                 created_at=settled_at[0] if single_settled else datetime.now(UTC))
        return Response(document, media_type=_XML_MEDIA_TYPE)

    def _parse(self, body: bytes) -> etree._Element:
        return parse_untrusted(body, max_bytes=self.max_document_bytes)

    def _message_rejection(self, root: etree._Element, error: IsoDocumentError, reason_code: str) -> Response:
        """400 with a pacs.002 RJCT when the MsgId can be read, else problem+json."""
        message_id = _readable_message_id(root)
        if message_id is None:
            return _problem(400, error.problem_type, error.title, error.detail, path=error.path)
        reason = error.detail if error.path is None else f"{error.path}: {error.detail}"
        version = schemas.message_version_of(root)
        try:
            document = build_pacs002(
                message_id,
                version if version and len(version) <= _MAX_MESSAGE_ID_CHARS else "unknown",
                (),
                message_id=self._new_message_id(),
                created_at=datetime.now(UTC),
                group_status="RJCT",
                group_reason_code=reason_code,
                group_reason_text=reason,
            )
        except IsoDocumentError:
            # Nothing in the original can be echoed validly: answer in JSON instead.
            return _problem(400, error.problem_type, error.title, error.detail, path=error.path)
        return Response(document, status_code=400, media_type=_XML_MEDIA_TYPE)

    async def _settle(self, rail_name: str, state: _RailState, parsed: ParsedPacs008) -> bytes:
        transactions = parsed.transactions
        keys = tuple(self._key(transaction) for transaction in transactions)
        answers: list[TransactionStatus | None] = [None] * len(transactions)
        waiting: list[tuple[int, asyncio.Future[TransactionRecord]]] = []
        owned: dict[str, asyncio.Future[TransactionRecord]] = {}
        new: list[int] = []
        seen: set[str] = set()
        loop = asyncio.get_running_loop()

        for index, key in enumerate(keys):
            if key is None:
                new.append(index)
                continue
            if key in seen:
                answers[index] = TransactionStatus(
                    transactions[index].end_to_end_id, transactions[index].uetr, "RJCT", "DUPL",
                    "the same transaction appears twice in this message",
                    original_transaction_id=transactions[index].transaction_id,
                )
                continue
            seen.add(key)
            record = self._records.get(key)
            if record is not None:
                answers[index] = record.status
                continue
            pending = self._inflight.get(key)
            if pending is not None:
                waiting.append((index, pending))
                continue
            future: asyncio.Future[TransactionRecord] = loop.create_future()
            self._inflight[key] = owned[key] = future
            new.append(index)

        response_message_id = self._new_message_id()
        try:
            decisions = {index: self._evaluate(state, transactions[index]) for index in new}
            if new:
                await asyncio.sleep(self.latency_s(state.behaviour))
            settled_at = datetime.now(UTC)
            for index, decision in decisions.items():
                record = self._answer(rail_name, parsed, transactions[index], keys[index], decision,
                                      response_message_id, settled_at)
                answers[index] = record.status
                if keys[index] is not None:
                    owned[keys[index]].set_result(record)  # type: ignore[index]
            for index, pending in waiting:
                try:
                    answers[index] = (await pending).status
                except asyncio.CancelledError:
                    if not pending.cancelled():
                        raise  # we are being cancelled ourselves
                    # The request that owned it went away before answering: answer here.
                    record = self._answer(rail_name, parsed, transactions[index], keys[index],
                                          self._evaluate(state, transactions[index]), response_message_id,
                                          datetime.now(UTC))
                    answers[index] = record.status
                    new.append(index)
        finally:
            for key, future in owned.items():
                if not future.done():
                    future.cancel()
                if self._inflight.get(key) is future:
                    del self._inflight[key]

        if not new:
            # Every transaction was answered by an earlier (or concurrent) request: if one
            # report answered exactly this set, send that report again byte for byte.
            stored = self._replayable(keys)
            if stored is not None:
                return stored

        statuses = [answer for answer in answers if answer is not None]
        document = build_pacs002(
            parsed.message_id,
            PACS008_VERSION,
            statuses,
            message_id=response_message_id,
            created_at=settled_at,
        )
        if any(keys[index] is not None for index in new):
            self._remember_response(response_message_id, keys, document)
        return document

    def _answer(
        self,
        rail_name: str,
        parsed: ParsedPacs008,
        transaction: Pacs008Transaction,
        key: str | None,
        decision: tuple[str, str | None, str | None],
        response_message_id: str,
        settled_at: datetime,
    ) -> TransactionRecord:
        """The status of a newly decided transaction, remembered under its key."""
        status_code, reason_code, reason_text = decision
        accepted = status_code == "ACSC"
        status = TransactionStatus(
            original_end_to_end_id=transaction.end_to_end_id,
            original_uetr=transaction.uetr,
            status=status_code,
            reason_code=reason_code,
            reason_text=reason_text,
            accepted_at=settled_at if accepted else None,
            original_transaction_id=transaction.transaction_id,
        )
        record = TransactionRecord(
            # A transaction without UETR or TxId cannot be recognised when sent again, but
            # it still settled and belongs in the report: keep it under a unique key.
            key=key or f"noid:{uuid.uuid4().hex}",
            rail=rail_name,
            uetr=transaction.uetr,
            end_to_end_id=transaction.end_to_end_id,
            transaction_id=transaction.transaction_id,
            amount_minor=transaction.payment.amount_minor,
            currency=transaction.payment.currency,
            status=status,
            original_message_id=parsed.message_id,
            response_message_id=response_message_id,
            settled_at=settled_at if accepted else None,
        )
        self._remember(record)
        return record

    def _replayable(self, keys: tuple[str | None, ...]) -> bytes | None:
        records = [self._records.get(key) for key in keys if key is not None]
        if not records or len(records) != len(keys) or any(record is None for record in records):
            return None
        response_ids = {record.response_message_id for record in records if record is not None}
        if len(response_ids) != 1:
            return None
        stored = self._responses.get(response_ids.pop())
        return stored.document if stored is not None and stored.keys == keys else None

    # -- report -------------------------------------------------------------------

    def report(self, rail_name: str, since: datetime | None, until: datetime | None = None) -> list[dict[str, Any]]:
        """Settled transactions of the rail with settled_at in [since, until), as the
        (possibly SIMULATOR-ONLY falsified, see `add_discrepancy`) report states them."""
        since = _aware(since)
        until = _aware(until)

        def in_window(moment: datetime) -> bool:
            return (since is None or moment >= since) and (until is None or moment < until)

        discrepancies = self._discrepancies[rail_name]
        by_uetr = {d.uetr: d for d in discrepancies if d.kind != "extra"}
        rows = []
        index = self._settled_index[rail_name]
        low = 0 if since is None else bisect.bisect_left(index, (since.timestamp(), ""))
        high = len(index) if until is None else bisect.bisect_left(index, (until.timestamp(), ""))
        listed: set[str] = set()
        for _, key in index[low:high]:
            record = self._records.get(key)
            if (key in listed or record is None or record.rail != rail_name or record.settled_at is None
                    or not in_window(record.settled_at)):
                continue  # evicted, or remembered again since (then listed by its newer entry)
            listed.add(key)
            row = {
                "uetr": record.uetr,
                "end_to_end_id": record.end_to_end_id,
                "transaction_id": record.transaction_id,
                "amount_minor": record.amount_minor,
                "currency": record.currency,
                "settled_at": record.settled_at.isoformat(),
                "message_id": record.original_message_id,
                "status_message_id": record.response_message_id,
            }
            change = by_uetr.get(record.uetr)
            if change is not None and change.kind == "omit":
                continue
            if change is not None and change.kind == "amount":
                row["amount_minor"] = change.amount_minor
                row["currency"] = change.currency or record.currency
            rows.append(row)
            if change is not None and change.kind == "duplicate":
                rows.append(dict(row))
        for extra in discrepancies:
            if extra.kind == "extra" and extra.settled_at is not None and in_window(extra.settled_at):
                rows.append({
                    "uetr": extra.uetr, "end_to_end_id": "SIM-EXTRA", "transaction_id": None,
                    "amount_minor": extra.amount_minor, "currency": extra.currency,
                    "settled_at": extra.settled_at.isoformat(), "message_id": "SIM-EXTRA",
                    "status_message_id": "SIM-EXTRA",
                })
        rows.sort(key=lambda row: row["settled_at"])
        return rows

    # -- SIMULATOR-ONLY report discrepancies ----------------------------------------------

    def add_discrepancy(self, rail_name: str, change: ReportDiscrepancy) -> ReportDiscrepancy:
        """Make the rail's report differ from what it settled (tests only)."""
        state = self.rails[rail_name]
        if change.kind in ("omit", "amount", "duplicate") and not change.uetr:
            raise ValueError(f"a {change.kind} discrepancy names the uetr of a transaction")
        if change.kind in ("amount", "extra") and change.amount_minor is None:
            raise ValueError(f"a {change.kind} discrepancy needs amount_minor")
        if change.kind == "extra":
            change = change.model_copy(update={
                "uetr": change.uetr or str(uuid.UUID(int=self._rng.getrandbits(128), version=4)),
                "currency": change.currency or state.config.currencies[0],
                "settled_at": _aware(change.settled_at) or datetime.now(UTC),
            })
        self._discrepancies[rail_name].append(change)
        log.warning("CLEARING SIMULATOR report of %s falsified for a test: %s %s", rail_name, change.kind, change.uetr)
        return change

    def discrepancies(self, rail_name: str) -> list[ReportDiscrepancy]:
        return list(self._discrepancies[rail_name])

    def clear_discrepancies(self, rail_name: str) -> None:
        self._discrepancies[rail_name].clear()


def _aware(moment: datetime | None) -> datetime | None:
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment


def _readable_message_id(root: etree._Element) -> str | None:
    """GrpHdr/MsgId of any message family, if present and short enough to echo."""
    element = root.find("{*}*/{*}GrpHdr/{*}MsgId")
    text = element.text if element is not None else None
    if text and 0 < len(text) <= _MAX_MESSAGE_ID_CHARS:
        return text
    return None


class _SimulatorApp(FastAPI):
    """FastAPI, with the submission endpoint served ahead of FastAPI's per-request layers
    (middleware stack, router, dependency machinery): they cost about a sixth of the
    simulator's CPU per payment, on the cores the orchestrator shares with it locally.
    Every other request, and any other method on a submission path, goes through FastAPI,
    which also documents the route."""

    _SUBMISSION_PREFIX, _SUBMISSION_SUFFIX = "/rails/", "/pacs008"

    def __init__(self, submit, **kwargs) -> None:
        super().__init__(**kwargs)
        self._submit = submit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path = get_route_path(scope)
            rail = path[len(self._SUBMISSION_PREFIX):-len(self._SUBMISSION_SUFFIX)]
            if (path.startswith(self._SUBMISSION_PREFIX) and path.endswith(self._SUBMISSION_SUFFIX)
                    and rail and "/" not in rail):
                response = await self._submit(rail, Request(scope, receive, send))
                await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_simulator_app(
    tenants: dict[str, TenantConfig],
    *,
    seed: int | None = None,
    max_transactions: int = DEFAULT_MAX_TRANSACTIONS,
    max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES,
    rails: Collection[str] | None = None,
) -> FastAPI:
    """The CLEARING SIMULATOR as a FastAPI app (local runs and tests only)."""
    simulator = ClearingSimulator(
        tenants, seed=seed, max_transactions=max_transactions, max_document_bytes=max_document_bytes, rails=rails
    )

    def unknown_rail(rail: str) -> JSONResponse:
        return _problem(404, "unknown-rail", "Unknown rail", f"no rail named {rail!r} is simulated here")

    def unavailable(rail: str) -> JSONResponse | None:
        """The answer of a rail that is not there or is in a simulated outage, else None."""
        if rail not in simulator.rails:
            return unknown_rail(rail)
        remaining_s = simulator.outage_remaining_s(rail)
        if remaining_s > 0:
            return _problem(
                503, "rail-outage", "Clearing system unavailable",
                f"{rail} is in a simulated outage for another {remaining_s:.1f} s",
                headers={"Retry-After": str(max(1, math.ceil(remaining_s)))},
            )
        return None

    async def submit_pacs008(rail: str, request: Request) -> Response:
        refused = unavailable(rail)
        if refused is not None:
            return refused
        content_type = request.headers.get("content-type", "")
        if content_type and "xml" not in content_type.lower():
            return _problem(415, "unsupported-media-type", "Unsupported media type", "send application/xml")
        too_large = _problem(
            413, "document-too-large", "Document too large",
            f"at most {simulator.max_document_bytes} bytes are accepted",
        )
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > simulator.max_document_bytes:
            return too_large
        # Read at most the limit even when no (or a false) Content-Length was sent.
        chunks: list[bytes] = []
        size_bytes = 0
        async for chunk in request.stream():
            size_bytes += len(chunk)
            if size_bytes > simulator.max_document_bytes:
                return too_large
            chunks.append(chunk)
        return await simulator.submit(rail, b"".join(chunks))

    app = _SimulatorApp(
        submit_pacs008,
        title="payorch CLEARING SIMULATOR",
        description="Local/test stand-in for instant-payment clearing systems. Never use in production.",
        version="1",
    )
    app.state.simulator = simulator
    app.post("/rails/{rail}/pacs008")(submit_pacs008)

    @app.post("/rails/{rail}/pacs028")
    async def inquire_pacs028(rail: str, request: Request) -> Response:
        """A status inquiry (pacs.028), answered with a pacs.002 from what the rail recorded."""
        refused = unavailable(rail)
        if refused is not None:
            return refused
        if simulator.rails[rail].behaviour.inquiry_outage:
            return _problem(503, "inquiry-outage", "Status inquiries unavailable",
                            f"{rail} answers no status inquiry (simulated fault)")
        body = await request.body()
        if len(body) > simulator.max_document_bytes:
            return _problem(413, "document-too-large", "Document too large",
                            f"at most {simulator.max_document_bytes} bytes are accepted")
        return await simulator.inquire(rail, body)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "service": "clearing-simulator", "rails": sorted(simulator.rails)}

    @app.post("/admin/rails/{rail}/outage")
    async def outage(rail: str, request: OutageRequest) -> Response:
        if rail not in simulator.rails:
            return unknown_rail(rail)
        simulator.start_outage(rail, request.seconds)
        return JSONResponse({"rail": rail, "outage_remaining_s": simulator.outage_remaining_s(rail)})

    @app.post("/admin/rails/{rail}/behaviour")
    async def behaviour(rail: str, change: BehaviourOverride) -> Response:
        if rail not in simulator.rails:
            return unknown_rail(rail)
        try:
            updated = simulator.override(rail, change)
        except ValueError as exc:
            return _problem(422, "invalid-behaviour", "Invalid behaviour", str(exc))
        return JSONResponse(
            {
                "rail": rail,
                "latency_ms_min": updated.latency_ms_min,
                "latency_ms_p50": updated.latency_ms_p50,
                "latency_ms_max": updated.latency_ms_max,
                "reject_rate": updated.reject_rate,
                "unknown_creditor_accounts": sorted(updated.unknown_creditor_accounts),
                "loss_rate": updated.loss_rate,
                "response_delay_ms": updated.response_delay_ms,
                "inquiry_outage": updated.inquiry_outage,
            }
        )

    @app.get("/rails/{rail}/report")
    async def report(rail: str, since: datetime | None = Query(default=None),
                     until: datetime | None = Query(default=None)) -> Response:
        if rail not in simulator.rails:
            return unknown_rail(rail)
        return JSONResponse({"rail": rail, "transactions": simulator.report(rail, since, until)})

    @app.post("/admin/rails/{rail}/report-discrepancies", status_code=201)
    async def add_report_discrepancy(rail: str, change: ReportDiscrepancy) -> Response:
        """SIMULATOR-ONLY: falsify the rail's report so tests can check reconciliation."""
        if rail not in simulator.rails:
            return unknown_rail(rail)
        try:
            added = simulator.add_discrepancy(rail, change)
        except ValueError as exc:
            return _problem(422, "invalid-discrepancy", "Invalid report discrepancy", str(exc))
        return JSONResponse({"rail": rail, **added.model_dump(mode="json")}, status_code=201)

    @app.get("/admin/rails/{rail}/report-discrepancies")
    async def list_report_discrepancies(rail: str) -> Response:
        if rail not in simulator.rails:
            return unknown_rail(rail)
        return JSONResponse({"rail": rail, "discrepancies": [d.model_dump(mode="json")
                                                             for d in simulator.discrepancies(rail)]})

    @app.delete("/admin/rails/{rail}/report-discrepancies")
    async def clear_report_discrepancies(rail: str) -> Response:
        if rail not in simulator.rails:
            return unknown_rail(rail)
        simulator.clear_discrepancies(rail)
        return Response(status_code=204)

    return app


def run_simulator(host: str, port: int, tenants_dir: Path, *, seed: int | None = None,
                  rails: Collection[str] | None = None) -> None:
    """Serve the CLEARING SIMULATOR with uvicorn until interrupted (its own process);
    `rails` limits it to some rails (`payorch up` runs one process per rail)."""
    import uvicorn

    tenants = load_tenants(Path(tenants_dir))
    app = create_simulator_app(tenants, seed=seed, rails=rails)
    log.warning(
        "CLEARING SIMULATOR listening on %s:%d for rails %s: a local stand-in, not a clearing system",
        host, port, ", ".join(sorted(app.state.simulator.rails)),
    )
    uvicorn.run(app, host=host, port=port, log_level="warning")
