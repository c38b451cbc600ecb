"""Admin-typed URLs (EWS endpoints, webhook callbacks) are hostile input until checked.

A URL may only point at a public address over https, unless the operator allowed http or private
addresses (labs, the sandbox). The host is resolved and *every* address it resolves to is checked,
so `internal.example.com → 10.0.0.5` or a name for the cloud metadata service is refused too.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from calbroker.domain.errors import InvalidRequest

__all__ = ["check_upstream_url", "refused_address"]

# Cloud instance-metadata services answer on these; never talk to them, whatever the settings say.
_METADATA = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200")
)


def refused_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address, *, allow_private: bool) -> str | None:
    """Why calbroker must not connect to `address` (None: it may): the one rule for every outbound URL."""
    if address in _METADATA:
        return "points at a cloud metadata service"
    private = (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_reserved
        or address.is_multicast
        or address.is_unspecified
    )
    if private and not allow_private:
        return f"resolves to a private or local address ({address}); use a public address"
    return None


def _refusal(field: str, url: str, why: str) -> InvalidRequest:
    return InvalidRequest.field(field, f"{url} {why}")


async def check_upstream_url(
    url: str, *, field: str, allow_http: bool = False, allow_private: bool = False, resolve: bool = True
) -> str:
    """The URL, normalised, or InvalidRequest naming the field and what would be accepted."""
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise _refusal(field, url or "(empty)", "is not an absolute https:// URL")
    if parts.scheme == "http" and not allow_http:
        raise _refusal(field, url, "must use https (plain http would expose credentials)")
    if parts.username or parts.password:
        raise _refusal(field, url, "must not embed credentials; enter them in their own fields")
    if parts.fragment:
        raise _refusal(field, url, "must not have a #fragment")
    host = parts.hostname
    try:
        port = parts.port
    except ValueError:
        raise _refusal(field, url, "has an invalid port") from None
    addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    try:
        addresses.append(ipaddress.ip_address(host))
    except ValueError:
        if host.lower().rstrip(".") in ("localhost", "localhost.localdomain") and not allow_private:
            raise _refusal(field, url, "points at this machine") from None
        if resolve:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, port or (443 if parts.scheme == "https" else 80), type=socket.SOCK_STREAM
                )
            except OSError:
                raise _refusal(field, url, f"cannot be resolved: no DNS record for {host}") from None
            addresses.extend(ipaddress.ip_address(info[4][0]) for info in infos)
    for address in addresses:
        why = refused_address(address, allow_private=allow_private)
        if why is not None:
            raise _refusal(field, url, why)
    return url
