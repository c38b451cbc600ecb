"""Admin-typed URLs (EWS endpoints, later webhook callbacks) are hostile input until checked.

`AddressPolicy` decides which IP addresses calbroker may connect to, as a pure function of the
address: only globally routable unicast addresses (`ipaddress`'s `is_global`), never a cloud
metadata service, and the IPv4 address inside IPv4-mapped, NAT64, 6to4, Teredo and
IPv4-compatible IPv6 addresses is judged too (`64:ff9b::a9fe:a9fe` is 169.254.169.254). The
operator may allow private addresses (labs, the sandbox); a demo may allow plain http to
loopback only.

`check_upstream_url` validates a URL when it is typed (scheme, credentials, and every address
its host resolves to), for an early, precise message. Connections then resolve again and connect
only to an address the policy accepted in that same answer (`checked_addresses`, used by the EWS
adapter), so a second DNS answer cannot slip a private address in between check and connect.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from calbroker.domain.errors import InvalidRequest, UpstreamUnavailable

__all__ = [
    "METADATA_ADDRESSES",
    "Address",
    "AddressPolicy",
    "check_upstream_url",
    "checked_addresses",
    "embedded_ipv4",
]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

METADATA_ADDRESSES: frozenset[Address] = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, Azure, GCP, OpenStack…
        "169.254.170.2",  # AWS ECS task metadata
        "169.254.169.123",  # AWS time sync
        "100.100.100.200",  # Alibaba Cloud
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "fd00:ec2::23",
    )
)
"""Cloud instance-metadata services: never reachable, whatever the operator allows."""

_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_LINK_LOCAL = (ipaddress.IPv4Network("169.254.0.0/16"), ipaddress.IPv6Network("fe80::/10"))
_NOT_GLOBAL = (
    # IANA lists these as not globally reachable where Python's `is_global` (3.11) still says True.
    ipaddress.IPv4Network("192.0.0.0/24"),  # IETF protocol assignments (192.0.0.8 dummy, 192.0.0.170 NAT64 discovery)
    ipaddress.IPv6Network("2001::/23"),  # IETF protocol assignments (Teredo's own prefix included)
)


def embedded_ipv4(address: Address) -> tuple[ipaddress.IPv4Address, ...]:
    """The IPv4 addresses an IPv6 address leads to (mapped, NAT64, 6to4, Teredo, IPv4-compatible)."""
    if isinstance(address, ipaddress.IPv4Address):
        return ()
    found: list[ipaddress.IPv4Address] = []
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)  # (server, client): the client is the host reached
    low32 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if any(address in net for net in _NAT64) or (address in _IPV4_COMPATIBLE and int(address) > 1):
        found.append(low32)
    return tuple(found)


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """Which addresses an outbound connection to an admin-typed URL may reach.

    - allow_private: loopback, RFC 1918, unique-local, CGNAT (100.64.0.0/10) and other
      non-global ranges are allowed (`CALBROKER_ALLOW_PRIVATE_UPSTREAMS`, labs and the sandbox).
    - allow_http: plain http is allowed to any permitted address (`CALBROKER_ALLOW_HTTP_UPSTREAMS`).
    - allow_loopback: loopback addresses are allowed, other private ones are not (the demo's webhook
      receivers on the same laptop).
    - allow_loopback_http: plain http is allowed to loopback addresses only (the demo).
    Link-local, multicast, unspecified and metadata addresses are refused in every case.
    """

    allow_private: bool = False
    allow_http: bool = False
    allow_loopback_http: bool = False
    allow_loopback: bool = False

    def refusal(self, address: Address) -> str | None:
        """Why `address` may not be reached, or None when it may."""
        for candidate in (address, *embedded_ipv4(address)):
            if candidate in METADATA_ADDRESSES:
                return f"points at a cloud metadata service ({address})"
            if candidate.is_multicast or candidate.is_unspecified or any(candidate in net for net in _LINK_LOCAL):
                return f"resolves to a link-local, multicast or unspecified address ({address})"
            if self.allow_loopback and candidate.is_loopback:
                continue
            if not self.allow_private and (not candidate.is_global or any(candidate in net for net in _NOT_GLOBAL)):
                return f"resolves to a private, local or reserved address ({address}); use a public address"
        return None

    def scheme_refusal(self, scheme: str, addresses: Iterable[Address]) -> str | None:
        """Why plain http may not be used to reach these addresses, or None."""
        if scheme == "https" or self.allow_http:
            return None
        if self.allow_loopback_http and all(a.is_loopback for a in addresses):
            return None
        return "must use https (plain http would expose credentials)"


def _refusal(field: str, url: str, why: str) -> InvalidRequest:
    return InvalidRequest.field(field, f"{url} {why}")


async def check_upstream_url(url: str, *, field: str, policy: AddressPolicy, resolve: bool = True) -> str:
    """The URL, normalised, or InvalidRequest naming the field and what would be accepted."""
    url = url.strip()
    try:
        parts = urlsplit(url)
    except ValueError:  # unbalanced [ ] in the host
        raise _refusal(field, url, "is not an absolute https:// URL") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http") or not parts.hostname:
        raise _refusal(field, url or "(empty)", "is not an absolute https:// URL")
    if parts.username or parts.password:
        raise _refusal(field, url, "must not embed credentials; enter them in their own fields")
    if parts.fragment:
        raise _refusal(field, url, "must not have a #fragment")
    host = parts.hostname
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise _refusal(field, url, "has an invalid port") from None
    addresses: list[Address] = []
    try:
        addresses.append(ipaddress.ip_address(host))
    except ValueError:
        if resolve:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError:
                raise _refusal(field, url, f"cannot be resolved: no DNS record for {host}") from None
            addresses.extend(_addresses(infos))
        elif host.lower().rstrip(".") in ("localhost", "localhost.localdomain"):
            addresses.append(ipaddress.ip_address("127.0.0.1"))
    for address in addresses:
        why = policy.refusal(address)
        if why is not None:
            raise _refusal(field, url, why)
    scheme_why = policy.scheme_refusal(scheme, addresses)
    if scheme_why is not None:
        raise _refusal(field, url, scheme_why)
    return url


def _addresses(infos: Iterable[tuple[object, ...]]) -> list[Address]:
    found: list[Address] = []
    for info in infos:
        sockaddr = info[4]
        assert isinstance(sockaddr, tuple)
        # Scoped IPv6 (`fe80::1%eth0`) loses its scope here: link-local is refused anyway.
        found.append(ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0]))
    return found


def checked_addresses(host: str, port: int, policy: AddressPolicy) -> tuple[Address, ...]:
    """Resolve `host` once and return that answer's addresses, every one accepted by the policy (blocking).

    Every address of the answer must pass, as at validation: a name that resolves to a public and
    a private address is refused rather than connected through its public half. The caller
    connects to the returned address and to no other, so nothing can change between the check
    and the connection.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise UpstreamUnavailable(f"cannot resolve {host}: {exc}") from exc
    addresses = _addresses(infos)
    for address in addresses:
        why = policy.refusal(address)
        if why is not None:
            raise UpstreamUnavailable(f"{host} {why}; calbroker does not connect there")
    if not addresses:
        raise UpstreamUnavailable(f"cannot resolve {host}: no address")
    return tuple(addresses)
