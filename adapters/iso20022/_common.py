"""Pieces shared by the pacs.008, pacs.002 and pain.001 adapters.

Mapping rules between the canonical `Party` and ISO 20022 party/account/agent blocks,
used in both directions so that build and parse stay inverse to each other:

* An account is identified by its IBAN (`Id/IBAN`) or else by its local number
  (`Id/Othr/Id`). An account holding both is sent by IBAN only.
* The agent (the party's bank) carries its BIC as `BICFI` (`BIC` in pain.001.001.03)
  and its clearing member id as `ClrSysMmbId/MmbId`, with `ClrSysId` naming the
  bank-code scheme of the rail (see CLEARING_SYSTEM_IDS).
* The account's `bank_code` travels as the agent's `MmbId` when the agent has no
  `member_id` of its own (the usual domestic form: an ABA routing number or a sort
  code identifies the creditor's bank). When the agent does have a member id and the
  account also has a bank code, the bank code travels in `Othr/Issr` (the issuer of
  the account number).
* Reading reverses this: for a number account, `bank_code` is `Othr/Issr` if present,
  else the agent's `MmbId`, and the agent's `member_id` is set only when `Issr` showed
  that the two differ in role. For an IBAN account the `MmbId` is the agent's member id.
  Consequences (documented normalisations, not losses of business meaning): an IBAN
  account's bank code comes back as the agent's member id, and a number account without
  a bank code whose agent has a member id comes back with that id as its bank code.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation

from lxml import etree

from orchestrator.domain import Account, Agent, MoneyError, Party, currency_exponent, to_minor_units

from adapters.iso20022.errors import IsoDocumentError
from adapters.iso20022 import schemas
from adapters.iso20022.schemas import element_path

# ExternalClearingSystemIdentification1Code values from the ISO external code list
# where one exists for the scheme; the others have no code in that list, so they go
# as proprietary identifiers (ClrSysId/Prtry) named after the scheme.
CLEARING_SYSTEM_IDS: dict[str, tuple[str, str]] = {
    "aba": ("Cd", "USABA"),  # United States routing number (Fedwire, ACH, FedNow, RTP)
    "sort_code": ("Cd", "GBDSC"),  # UK domestic sort code
    "bsb": ("Cd", "AUBSB"),  # Australian bank state branch code
    "transit": ("Cd", "CACPA"),  # Canadian Payments Association routing number
    "ispb": ("Prtry", "BRISPB"),  # Brazil: ISPB participant code (no ISO code)
    "clabe": ("Prtry", "MXCLABE"),  # Mexico: CLABE bank code (no ISO code)
    "fast_bank_code": ("Prtry", "SGFAST"),  # Singapore FAST bank code (SGIBG is the 7-digit IBG sort code)
}

# Max140Text: names and unstructured remittance lines.
MAX_NAME_CHARS = 140
MAX_REMITTANCE_CHARS = 140
# Code elements whose ISO type is a short external code; longer values go as Prtry.
MAX_SERVICE_LEVEL_CODE_CHARS = 4
MAX_PURPOSE_CODE_CHARS = 4
MAX_CASH_CLEARING_SYSTEM_CODE_CHARS = 3

# Characters XML 1.0 cannot carry at all (C0 controls other than tab/LF/CR, lone
# surrogates, U+FFFE/U+FFFF). Names and remittance text are cleaned of them.
_XML_INVALID_CHARS = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_HEX_UUID = re.compile(r"^[0-9a-fA-F]{32}$")


def clean_text(value: str | None, max_chars: int) -> str | None:
    """Drop characters XML cannot carry and truncate to the schema's MaxNText length."""
    if value is None:
        return None
    cleaned = _XML_INVALID_CHARS.sub("", value)[:max_chars]
    return cleaned or None


def format_datetime(moment: datetime) -> str:
    """ISODateTime in UTC with millisecond precision ("2026-03-01T09:30:00.123Z")."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("ISO 20022 timestamps need a timezone-aware datetime")
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utc_date(moment: datetime) -> str:
    return moment.astimezone(UTC).date().isoformat()


def parse_datetime(text: str | None, element: etree._Element) -> datetime:
    try:
        return datetime.fromisoformat((text or "").strip())
    except ValueError:
        raise IsoDocumentError(
            "invalid-value", "Invalid date and time", f"{text!r} is not a date and time this service accepts",
            path=element_path(element),
        ) from None


def parse_date(text: str | None, element: etree._Element) -> str:
    """An ISODate as "YYYY-MM-DD" (an xs:date may carry a timezone, which is dropped)."""
    value = (text or "").strip()
    try:
        return date.fromisoformat(value[:10]).isoformat()
    except ValueError:
        raise IsoDocumentError(
            "invalid-value", "Invalid date", f"{text!r} is not a date this service accepts", path=element_path(element)
        ) from None


def parse_decimal(text: str | None, element: etree._Element) -> Decimal:
    try:
        value = Decimal((text or "").strip())
    except InvalidOperation:
        raise IsoDocumentError(
            "invalid-amount", "Invalid amount", f"{text!r} is not a decimal number", path=element_path(element)
        ) from None
    if not value.is_finite():
        raise IsoDocumentError(
            "invalid-amount", "Invalid amount", f"{text!r} is not finite", path=element_path(element)
        )
    return value


def parse_amount(element: etree._Element) -> tuple[int, str, Decimal]:
    """An amount element with a Ccy attribute as (minor units, currency, decimal value).

    Refuses more decimals than the currency has (12.345 EUR), zero and negative amounts,
    and currencies that are not active ISO 4217 codes with minor units.
    """
    currency = element.get("Ccy") or ""
    value = parse_decimal(element.text, element)
    try:
        # format(..., "f") gives plain notation, which to_minor_units insists on; xs:decimal
        # also allows a leading "+", which Decimal has already absorbed.
        amount_minor = to_minor_units(format(value, "f"), currency)
    except MoneyError as exc:
        raise IsoDocumentError("invalid-amount", "Invalid amount", exc.detail, path=element_path(element)) from None
    return amount_minor, currency, value


def minor_to_decimal(amount_minor: int, currency: str) -> Decimal:
    return Decimal(amount_minor).scaleb(-currency_exponent(currency))


def uetr_of(payment_id: str) -> str | None:
    """The payment id as a UETR if it is a UUID version 4 (the XSD's UUIDv4Identifier)."""
    try:
        parsed = uuid.UUID(payment_id)
    except (ValueError, AttributeError, TypeError):
        return None
    return str(parsed) if parsed.version == 4 else None


def transaction_id_of(payment_id: str) -> str:
    """TxId/InstrId for a payment: the UUID's 32 hex digits (a UUID with hyphens is 36
    characters, one more than Max35Text allows), or the id itself if it is no UUID."""
    try:
        return uuid.UUID(payment_id).hex
    except (ValueError, AttributeError, TypeError):
        return payment_id


def uuid_from_transaction_id(transaction_id: str | None) -> str | None:
    """The inverse of transaction_id_of for ids that are 32 hex digits."""
    if transaction_id and _HEX_UUID.match(transaction_id):
        return str(uuid.UUID(transaction_id))
    return None


class Xml:
    """Element construction and lookup in one message namespace."""

    __slots__ = ("ns", "_prefix")

    def __init__(self, namespace: str) -> None:
        self.ns = namespace
        self._prefix = "{" + namespace + "}"

    def q(self, name: str) -> str:
        return self._prefix + name

    def path(self, *names: str) -> str:
        return "/".join(self._prefix + name for name in names)

    def root(self, name: str = "Document") -> etree._Element:
        return etree.Element(self.q(name), nsmap={None: self.ns})

    def sub(self, parent: etree._Element, name: str, text: str | None = None, **attrib: str) -> etree._Element:
        element = etree.SubElement(parent, self._prefix + name, attrib)
        if text is not None:
            element.text = text
        return element

    def find(self, element: etree._Element | None, *names: str) -> etree._Element | None:
        """The first element at the child path `names` (like find("a/b"), but stepping
        with iterchildren, which runs in C: ElementPath is the parsers' main cost)."""
        prefix = self._prefix
        for name in names:
            if element is None:
                return None
            element = next(element.iterchildren(prefix + name), None)
        return element

    def require(self, element: etree._Element, *names: str) -> etree._Element:
        """As `find`, for an element the schema requires: its absence (a document that
        skipped validation, or a schema that changed) is a refused document, not a crash."""
        found = self.find(element, *names)
        if found is None:
            raise IsoDocumentError("schema-violation", "Required element missing",
                                   f"{'/'.join(names)} is required here", path=element_path(element))
        return found

    def findall(self, element: etree._Element, *names: str) -> list[etree._Element]:
        *parents, last = names
        parent = self.find(element, *parents)
        return [] if parent is None else list(parent.iterchildren(self._prefix + last))

    def text(self, element: etree._Element | None, *names: str) -> str | None:
        found = self.find(element, *names)
        return None if found is None else found.text

    def code_or_proprietary(self, element: etree._Element | None, *names: str) -> str | None:
        """The value of a Cd/Prtry choice element, whichever is present."""
        found = self.find(element, *names)
        if found is None:
            return None
        return self.text(found, "Cd") or self.text(found, "Prtry")

    # -- building blocks -------------------------------------------------------------

    def add_code_or_proprietary(self, parent: etree._Element, name: str, value: str, max_code_chars: int) -> None:
        choice = self.sub(parent, name)
        self.sub(choice, "Cd" if len(value) <= max_code_chars else "Prtry", value)

    def add_agent(
        self,
        parent: etree._Element,
        name: str,
        agent: Agent,
        *,
        bank_code: str | None,
        bank_code_scheme: str | None,
        bic_element: str = "BICFI",
    ) -> etree._Element:
        """A BranchAndFinancialInstitutionIdentification block for a party's bank."""
        wrapper = self.sub(parent, name)
        fin = self.sub(wrapper, "FinInstnId")
        if agent.bic:
            self.sub(fin, bic_element, agent.bic)
        member_id = agent.member_id or bank_code
        if member_id:
            member = self.sub(fin, "ClrSysMmbId")
            if bank_code_scheme is not None:
                kind, code = CLEARING_SYSTEM_IDS[bank_code_scheme]
                self.sub(self.sub(member, "ClrSysId"), kind, code)
            self.sub(member, "MmbId", member_id)
        return wrapper

    def add_account(self, parent: etree._Element, name: str, party: Party) -> etree._Element:
        account = party.account
        wrapper = self.sub(parent, name)
        ident = self.sub(wrapper, "Id")
        if account.iban:
            self.sub(ident, "IBAN", account.iban)
        elif account.number:
            other = self.sub(ident, "Othr")
            self.sub(other, "Id", account.number)
            if party.agent.member_id and account.bank_code:
                # The agent's MmbId is taken by its own member id; see the module docstring.
                self.sub(other, "Issr", account.bank_code)
        else:
            raise IsoDocumentError(
                "unrepresentable-payment", "Payment cannot be expressed in ISO 20022",
                f"party {party.account.masked() or '?'} has neither an IBAN nor an account number",
            )
        return wrapper

    def add_party(self, parent: etree._Element, name: str, party: Party) -> etree._Element:
        wrapper = self.sub(parent, name)
        party_name = clean_text(party.name, MAX_NAME_CHARS)
        if party_name is None:
            raise IsoDocumentError(
                "unrepresentable-payment", "Payment cannot be expressed in ISO 20022", f"the {name} has no name"
            )
        self.sub(wrapper, "Nm", party_name)
        if party.country:
            self.sub(self.sub(wrapper, "PstlAdr"), "Ctry", party.country)
        return wrapper

    # -- reading ----------------------------------------------------------------------

    def read_agent(self, wrapper: etree._Element | None) -> tuple[Agent, str | None]:
        """(Agent with BIC only, clearing member id) of an agent block; the caller
        decides whether the member id belongs to the agent or the account."""
        if wrapper is None:
            return Agent(), None
        fin = self.find(wrapper, "FinInstnId")
        bic = self.text(fin, "BICFI") or self.text(fin, "BIC")
        return Agent(bic=bic), self.text(fin, "ClrSysMmbId", "MmbId")

    def read_party(
        self,
        party_element: etree._Element | None,
        account_element: etree._Element | None,
        agent_element: etree._Element | None,
        *,
        role: str,
        context: etree._Element,
    ) -> Party:
        """A canonical Party from the party, account and agent blocks (see module doc)."""
        name = self.text(party_element, "Nm")
        if party_element is None or not name:
            raise IsoDocumentError(
                "incomplete-transaction", "Incomplete transaction", f"the {role} has no name",
                path=element_path(context),
            )
        if account_element is None:
            raise IsoDocumentError(
                "incomplete-transaction", "Incomplete transaction", f"the {role} account is missing",
                path=element_path(context),
            )
        agent, member_id = self.read_agent(agent_element)
        iban = self.text(account_element, "Id", "IBAN")
        if iban:
            account = Account(iban=iban)
            agent = Agent(bic=agent.bic, member_id=member_id)
        else:
            number = self.text(account_element, "Id", "Othr", "Id")
            issuer = self.text(account_element, "Id", "Othr", "Issr")
            if issuer:
                account = Account(number=number, bank_code=issuer)
                agent = Agent(bic=agent.bic, member_id=member_id)
            else:
                account = Account(number=number, bank_code=member_id)
        country = self.text(party_element, "PstlAdr", "Ctry") or self.text(party_element, "CtryOfRes")
        return Party(name=name, account=account, agent=agent, country=country)

    def read_remittance(self, transaction: etree._Element) -> str | None:
        lines = [line.text for line in self.findall(transaction, "RmtInf", "Ustrd") if line.text]
        return " ".join(lines) if lines else None


def check_transaction_count(declared_text: str | None, actual: int, element: etree._Element) -> int:
    declared = int((declared_text or "0").strip())
    if declared != actual:
        raise IsoDocumentError(
            "transaction-count-mismatch",
            "Number of transactions does not match",
            f"NbOfTxs declares {declared} transactions but the document holds {actual}",
            path=element_path(element),
        )
    return declared


def check_control_sum(element: etree._Element | None, actual: Decimal) -> Decimal | None:
    if element is None:
        return None
    declared = parse_decimal(element.text, element)
    if declared != actual:
        raise IsoDocumentError(
            "control-sum-mismatch",
            "Control sum does not match",
            f"CtrlSum declares {declared} but the transaction amounts add up to {actual}",
            path=element_path(element),
        )
    return declared


def require_message_version(root: etree._Element, expected: str) -> None:
    """Refuse a document of another message version, then XSD-validate it."""
    version = schemas.message_version_of(root)
    if version != expected:
        raise IsoDocumentError(
            "unsupported-message", "Unsupported message",
            f"expected a {expected} document, got {version or etree.QName(root).namespace or 'no namespace'}",
            path=element_path(root),
        )
    schemas.validate(root, expected)
