"""The harness sends load to loopback only: never by mistake to a shared or production host."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


class NotLoopback(ValueError):
    pass


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def require_loopback_url(url: str) -> str:
    """The URL without a trailing slash, if it is http:// to a loopback address."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or not _is_loopback(parts.hostname):
        raise NotLoopback(f"refusing {url!r}: the benchmark sends load to http://127.0.0.1 (loopback) only")
    return url.rstrip("/")


def require_loopback_bootstrap(bootstrap: str) -> str:
    for server in bootstrap.split(","):
        host = server.strip().rsplit(":", 1)[0]
        if not _is_loopback(host):
            raise NotLoopback(f"refusing Kafka bootstrap {bootstrap!r}: the relay baseline runs on loopback only")
    return bootstrap
