"""Hardened parsing of XML that arrives from outside (clients, banks, clearing systems).

Payment documents never need a DTD, entities, processing instructions or comments, so
every such feature is either switched off in libxml2 or refused outright:

* no DTD is loaded or validated and no entity is resolved, so XXE (file:// or http://
  system entities) and external DTDs cannot read a file or reach the network;
* any DOCTYPE at all is refused, which also refuses every entity declaration and with
  it billion-laughs style amplification, before anything is expanded;
* the document size is checked before libxml2 sees a byte, and the element depth is
  checked in one walk after parsing (libxml2 itself stops at 256 levels without
  huge_tree, so a 10k-deep document fails inside the parser, cheaply);
* huge_tree stays off, keeping libxml2's own limits on text node and name sizes.

`parse_untrusted` returns the root element or raises `XmlSecurityError` /
`XmlSyntaxError`, both `IsoDocumentError`s with problem-details fields.
"""

from __future__ import annotations

import threading

from lxml import etree

from adapters.iso20022.errors import IsoDocumentError, XmlSecurityError, XmlSyntaxError

__all__ = [
    "DEFAULT_MAX_DEPTH_LEVELS",
    "DEFAULT_MAX_DOCUMENT_BYTES",
    "IsoDocumentError",
    "XmlSecurityError",
    "XmlSyntaxError",
    "parse_untrusted",
]

# A batch pain.001 of a few thousand transactions stays well under this; anything
# larger should arrive as several documents rather than grow our memory per request.
DEFAULT_MAX_DOCUMENT_BYTES = 8 * 1024 * 1024
# The deepest element the pacs/pain schemas we read can produce is about 12 levels
# (…/RmtInf/Strd/RfrdDocInf/LineDtls/Id/Tp/CdOrPrtry/Cd); 32 leaves room for
# supplementary data without letting a document recurse.
DEFAULT_MAX_DEPTH_LEVELS = 32

# Markup that only a DTD can contain. Looking for it in the raw bytes refuses the common
# attacks before libxml2 parses anything; the docinfo check after parsing catches the
# same constructs in encodings where these ASCII bytes do not appear (UTF-16, UTF-32).
_DTD_MARKERS = (b"<!DOCTYPE", b"<!ENTITY")

# libxml2 reports its own resource limits (nesting depth, huge text nodes, entity
# amplification) with this error type; those are attacks, not typos.
_RESOURCE_LIMIT_ERROR = "ERR_RESOURCE_LIMIT"

_local = threading.local()


def _parser() -> etree.XMLParser:
    """One parser per thread: an lxml parser object must not be used concurrently."""
    parser = getattr(_local, "parser", None)
    if parser is None:
        parser = etree.XMLParser(
            resolve_entities=False,  # never expand an entity, internal or external (XXE)
            no_network=True,  # never fetch anything over the network
            load_dtd=False,  # never read an external DTD subset
            dtd_validation=False,
            attribute_defaults=False,  # defaults would come from a DTD
            huge_tree=False,  # keep libxml2's limits on depth and node sizes
            remove_comments=True,  # nothing in a payment document lives in comments
            remove_pis=True,  # nor in processing instructions (e.g. xml-stylesheet)
            remove_blank_text=False,  # whitespace inside text values is data
            collect_ids=False,  # no ID table: nothing here uses xml:id lookups
        )
        _local.parser = parser
    return parser


def _refuse_dtd(detail: str) -> XmlSecurityError:
    return XmlSecurityError(
        "forbidden-dtd",
        "Document type declarations are not accepted",
        detail,
    )


def parse_untrusted(
    data: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES,
    max_depth: int = DEFAULT_MAX_DEPTH_LEVELS,
) -> etree._Element:
    """Parse untrusted XML bytes into a root element, refusing anything hostile.

    `max_bytes` bounds the raw document and `max_depth` the element nesting (the root
    is level 1). Raises XmlSecurityError for a DOCTYPE/entity declaration, an oversize
    or over-deep document, and XmlSyntaxError for bytes that are not well-formed XML.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        # A str would make lxml honour or reject the encoding declaration depending on
        # content; documents arrive from the wire as bytes, so insist on that.
        raise TypeError("parse_untrusted expects the raw document bytes")
    data = bytes(data)
    size_bytes = len(data)
    if size_bytes > max_bytes:
        raise XmlSecurityError(
            "document-too-large",
            "Document too large",
            f"the document is {size_bytes} bytes; at most {max_bytes} bytes are accepted",
        )
    if not data.strip():
        raise XmlSyntaxError("malformed-xml", "Malformed XML", "the document is empty")
    for marker in _DTD_MARKERS:
        if marker in data:
            raise _refuse_dtd("the document contains a DOCTYPE or ENTITY declaration")

    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        last = exc.error_log.last_error if exc.error_log else None
        if last is not None and last.type_name == _RESOURCE_LIMIT_ERROR:
            message = (last.message or "").lower()
            if "entity" in message:
                # Entity amplification (billion laughs) in an encoding the byte check
                # above cannot read: entities exist only through a DTD.
                problem_type = "forbidden-dtd"
            elif "depth" in message:
                problem_type = "document-too-deep"
            else:
                problem_type = "document-too-large"
            raise XmlSecurityError(
                problem_type, "Document exceeds a parser limit", f"line {last.line}: {last.message}"
            ) from None
        line = last.line if last is not None else getattr(exc, "lineno", None)
        message = last.message if last is not None else "not well-formed XML"
        raise XmlSyntaxError("malformed-xml", "Malformed XML", f"line {line}: {message}") from None
    except ValueError:
        # lxml raises ValueError for e.g. a str with an encoding declaration or an
        # unknown encoding name; either way the bytes are not a usable document.
        raise XmlSyntaxError("malformed-xml", "Malformed XML", "the document cannot be decoded") from None

    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise _refuse_dtd("the document contains a document type declaration")

    _check_depth(root, max_depth)
    return root


def _check_depth(root: etree._Element, max_depth: int) -> None:
    """Walk the tree once, refusing nesting deeper than `max_depth` levels."""
    depth = 0
    for event, _element in etree.iterwalk(root, events=("start", "end")):
        if event == "start":
            depth += 1
            if depth > max_depth:
                raise XmlSecurityError(
                    "document-too-deep",
                    "Document nested too deeply",
                    f"elements are nested more than {max_depth} levels deep",
                )
        else:
            depth -= 1
