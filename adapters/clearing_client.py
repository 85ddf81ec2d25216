"""HTTP client for a clearing endpoint (a real gateway, or locally the CLEARING SIMULATOR).

One `ClearingClient` holds one `httpx.Client`, whose connection pool keeps connections
alive between submissions and is safe to share between threads, so an execution stage
with many worker threads uses one client rather than one connection per payment.

`submit` posts a pacs.008 and returns the pacs.002 bytes the clearing system answered,
including a message-level rejection (4xx carrying a pacs.002 RJCT): that is an answer,
not a failure. Failures are classified for the caller's retry policy:

* ClearingUnavailable (transient): connection refused or reset, connect or pool
  timeout (the request was not delivered), 5xx (503 during an outage, with
  `retry_after_s` when the server said), 429.
* ClearingTimeout (transient): no answer in time after the request was sent, so the
  outcome is unknown. Retrying with the same UETR is safe: the clearing side answers a
  known UETR with its original status rather than settling twice.
* ClearingProtocolError (not transient): an answer that is not a pacs.002 document,
  or a 4xx without one (e.g. our document was refused as problem+json).

`timeout_s` bounds each phase of the exchange (connect, write, read, pool wait) rather
than the sum; httpx has no single overall deadline.
"""

from __future__ import annotations

import threading

import httpx

__all__ = [
    "ClearingClient",
    "ClearingError",
    "ClearingProtocolError",
    "ClearingTimeout",
    "ClearingUnavailable",
]

_XML_MEDIA_TYPE = "application/xml"
# How much of an unexpected answer to quote in an error: enough to recognise it.
_MAX_QUOTED_BODY_CHARS = 200


class ClearingError(Exception):
    transient = False
    # True when the request may have reached the clearing system and been acted on
    # (execution then asks what became of it with a status inquiry, pacs.028).
    outcome_unknown = True

    def __init__(self, detail: str, *, status_code: int | None = None, retry_after_s: float | None = None,
                 outcome_unknown: bool | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status_code = status_code
        self.retry_after_s = retry_after_s
        if outcome_unknown is not None:
            self.outcome_unknown = outcome_unknown


class ClearingUnavailable(ClearingError):
    """Not delivered (refused, 5xx, 429), unless made with outcome_unknown=True (a
    connection reset after the request was sent)."""

    transient = True
    outcome_unknown = False


class ClearingTimeout(ClearingError):
    transient = True


class ClearingProtocolError(ClearingError):
    transient = False


def _looks_like_xml(response: httpx.Response) -> bool:
    content_type = response.headers.get("content-type", "").lower()
    head = response.content.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    return "xml" in content_type and head == b"<"


def _retry_after_s(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP-date; the caller's own backoff applies


def _quote(response: httpx.Response) -> str:
    return response.text[:_MAX_QUOTED_BODY_CHARS].replace("\n", " ")


class ClearingClient:
    def __init__(
        self,
        base_url: str,
        *,
        max_connections: int = 64,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(
            base_url=self.base_url,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            headers={"Content-Type": _XML_MEDIA_TYPE, "Accept": f"{_XML_MEDIA_TYPE}, application/problem+json"},
            transport=transport,
            # Redirects would be a misconfiguration for a clearing endpoint; surface them.
            follow_redirects=False,
        )
        self._close_lock = threading.Lock()
        self._closed = False

    def submit(self, endpoint_path: str, document: bytes, timeout_s: float) -> bytes:
        """POST a pacs.008 and return the pacs.002 answer (see the module docstring)."""
        try:
            response = self._client.post(endpoint_path, content=document, timeout=httpx.Timeout(timeout_s))
        except (httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise ClearingUnavailable(
                f"clearing endpoint not reachable in {timeout_s} s: {type(exc).__name__}"
            ) from exc
        except httpx.TimeoutException as exc:
            raise ClearingTimeout(
                f"no answer from the clearing endpoint in {timeout_s} s ({type(exc).__name__})"
            ) from exc
        except httpx.TransportError as exc:
            # Connection refused or reset, remote closed the connection, DNS failure ...
            raise ClearingUnavailable(f"clearing endpoint unavailable: {type(exc).__name__}: {exc}",
                                      outcome_unknown=not isinstance(exc, httpx.ConnectError)) from exc

        status = response.status_code
        if status == 200:
            if not _looks_like_xml(response):
                raise ClearingProtocolError(f"200 answer that is not XML: {_quote(response)!r}", status_code=status)
            return response.content
        if status >= 500 or status == 429:
            raise ClearingUnavailable(
                f"clearing endpoint answered {status}: {_quote(response)!r}",
                status_code=status,
                retry_after_s=_retry_after_s(response),
            )
        if 400 <= status < 500 and _looks_like_xml(response):
            return response.content  # a pacs.002 rejecting the whole message
        raise ClearingProtocolError(f"unexpected answer {status}: {_quote(response)!r}", status_code=status)

    def close(self) -> None:
        with self._close_lock:
            if not self._closed:
                self._closed = True
                self._client.close()

    def __enter__(self) -> "ClearingClient":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
