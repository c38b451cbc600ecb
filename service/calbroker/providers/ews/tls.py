"""Trusting one CA for one EWS endpoint inside exchangelib's sessions, whatever the environment says,
and connecting only to addresses the address policy accepted.

exchangelib creates its ``requests`` sessions itself and only lets us choose the adapter *class*
(``BaseProtocol.HTTP_ADAPTER_CLS``, documented under "Proxies and custom TLS validation" at
https://ecederstrand.github.io/exchangelib/ — an adapter whose ``cert_verify`` picks a CA by host).
Setting it on ``BaseProtocol`` would be process-global, and a global host → CA table would make one
connection's trust depend on which other connections happen to be open. Instead each provider gets
its own adapter class holding its own ``{(host, port): ca}`` table, set on its own ``Protocol``
subclass (`exchangelib_protocol_class`), so trust is exactly "this connection's CA for this
connection's endpoint" and other exchangelib users in the process are unaffected.

Why ``send`` and not only ``cert_verify``: exchangelib's sessions are plain ``requests.Session``
objects with ``trust_env=True``, so ``Session.request`` → ``merge_environment_settings`` replaces
``verify=True`` with ``REQUESTS_CA_BUNDLE`` or ``CURL_CA_BUNDLE`` (requests 2.x ``sessions.py``;
exchangelib never passes ``verify``). ``HTTPAdapter.send`` runs after that merge and hands the same
``verify`` to both the urllib3 pool key (``ca_certs``) and ``cert_verify``; replacing it there means
the environment cannot override the endpoint's CA, and a changed CA path never reuses a TLS
connection verified against the old one. Without a CA we keep requests' default trust (certifi,
or the environment's bundle — the operator's choice for the whole process).

Each new TCP connection resolves the endpoint's host once, checks every address of that answer
against the `AddressPolicy` and connects to one of them (`PinnedConnection._new_conn`, the hook
urllib3's own SOCKS support overrides): the address that was checked is the address connected
to, so a DNS answer that changes between check and connect (rebinding) cannot reach a private
address. TLS still verifies the certificate against the endpoint's host name.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.util import connection

from calbroker.domain.errors import UpstreamUnavailable
from calbroker.providers.endpoints import AddressPolicy, checked_addresses

__all__ = ["EndpointTrustAdapter", "endpoint_key", "trusting_adapter"]


def endpoint_key(url: str) -> tuple[str, int]:
    """``(host, port)`` of a URL, lower-cased, with the scheme's default port filled in."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    return host, port


class _PinnedConnection(HTTPConnection):
    policy: ClassVar[AddressPolicy] = AddressPolicy()

    def _new_conn(self) -> socket.socket:
        try:
            addresses = checked_addresses(self.host, self.port, self.policy)
        except UpstreamUnavailable as exc:
            raise NewConnectionError(self, exc.detail) from exc
        failure: OSError | None = None
        for address in addresses:
            try:
                return connection.create_connection(
                    (str(address), self.port),
                    self.timeout,
                    source_address=self.source_address,
                    socket_options=self.socket_options,
                )
            except TimeoutError as exc:
                raise ConnectTimeoutError(self, f"Connection to {self.host} timed out") from exc
            except OSError as exc:
                failure = exc
        raise NewConnectionError(self, f"Failed to establish a new connection: {failure}")


class _PinnedHTTPSConnection(_PinnedConnection, HTTPSConnection):
    pass


def _pinned_pools(policy: AddressPolicy) -> dict[str, type[HTTPConnectionPool]]:
    plain = type("PinnedConnection", (_PinnedConnection,), {"policy": policy})
    tls = type("PinnedHTTPSConnection", (_PinnedHTTPSConnection,), {"policy": policy})
    return {
        "http": type("PinnedPool", (HTTPConnectionPool,), {"ConnectionCls": plain}),
        "https": type("PinnedHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": tls}),
    }


class EndpointTrustAdapter(HTTPAdapter):
    """An HTTPAdapter that verifies the endpoints in `trusted` against their own CA only, and
    connects only to addresses `policy` accepts."""

    trusted: ClassVar[Mapping[tuple[str, int], str]] = {}
    policy: ClassVar[AddressPolicy] = AddressPolicy()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _pinned_pools(self.policy)

    def send(  # noqa: PLR0917  # HTTPAdapter.send's signature
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float, float] | tuple[float, None] | None = None,
        verify: bool | str = True,
        cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        ca = self.trusted.get(endpoint_key(request.url or ""))
        if ca is not None:
            verify = ca
        return super().send(request, stream=stream, timeout=timeout, verify=verify, cert=cert, proxies=proxies)


def trusting_adapter(endpoint: str, ca_bundle: Path | None, policy: AddressPolicy) -> type[EndpointTrustAdapter]:
    """An adapter class trusting `ca_bundle` (and nothing else) for `endpoint`'s host and port,
    reaching only addresses `policy` accepts."""
    trusted = {endpoint_key(endpoint): str(ca_bundle)} if ca_bundle is not None else {}
    return type(
        "EndpointTrustAdapter",
        (EndpointTrustAdapter,),
        {"trusted": trusted, "policy": policy, "__module__": __name__},
    )
