"""Finding an on-premises Exchange's EWS URL from an email address, as Microsoft documents Autodiscover.

Phase 1 and 2 ("Autodiscover for Exchange",
https://learn.microsoft.com/en-us/exchange/client-developer/exchange-web-services/autodiscover-for-exchange):
the candidates derived from the address's domain, in order — ``https://{domain}/autodiscover/autodiscover.svc``
then ``https://autodiscover.{domain}/autodiscover/autodiscover.svc`` (SCP lookup needs a domain-joined
client and is skipped) — each sent a SOAP GetUserSettings with the connection's own credentials
(exchangelib's ``GetUserSettings``). Phase 3, when all fail: an unauthenticated GET of
``http://autodiscover.{domain}/autodiscover/autodiscover.xml`` whose 302 ``Location`` is tried, then the
DNS SRV record ``_autodiscover._tcp.{domain}`` ("only use records that point to an SSL endpoint and
that have the highest priority and weight").

Answers are handled as "Handling Autodiscover error messages" says
(https://learn.microsoft.com/en-us/exchange/client-developer/exchange-web-services/handling-autodiscover-error-messages):
a 401 on one candidate is not the end, ``RedirectAddress`` restarts with the new address (never one
already tried), ``RedirectUrl`` and 302s are followed only to https URLs not tried before, at most
ten hops. Every URL is checked against the admin-typed URL policy (`endpoints.check_upstream_url`)
before anything is sent to it, and the EWS URL found goes through the same policy as a typed one, by
the caller. A cloud that names its Autodiscover host (the sandbox) replaces the derived candidates.

When nothing works the error lists every URL tried and what it answered, so the admin can fix DNS
or type the EWS URL instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from contextlib import suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import dns.asyncresolver
import dns.exception
import dns.resolver
import requests
from exchangelib import Configuration, Credentials, FailFast
from exchangelib.autodiscover.protocol import AutodiscoverProtocol
from exchangelib.errors import EWSError, TransportError, UnauthorizedError
from exchangelib.transport import BASIC, NTLM

from calbroker.domain.connections import EwsServiceAccount
from calbroker.domain.errors import InvalidRequest
from calbroker.providers.endpoints import AddressPolicy
from calbroker.providers.ews.tls import trusting_adapter

__all__ = ["SrvRecord", "autodiscover_candidates", "discover_ews_endpoint", "is_email_address", "pick_srv_target"]

SOAP_PATH = "/autodiscover/autodiscover.svc"
POX_PATH = "/autodiscover/autodiscover.xml"
MAX_HOPS = 10
_AUTH_TYPES = {"basic": BASIC, "ntlm": NTLM}
_SETTINGS = ("external_ews_url", "internal_ews_url", "auto_discover_smtp_address")

UrlPolicy = Callable[[str], Awaitable[str]]
"""Checks (and normalises) a URL before anything is sent to it; raises InvalidRequest to refuse it."""


def is_email_address(text: str) -> bool:
    """Whether an admin typed an address to autodiscover from rather than an EWS URL or host name."""
    value = text.strip()
    local, at, domain = value.partition("@")
    return bool(at and local and "." in domain and "/" not in value and ":" not in value and " " not in value)


def autodiscover_candidates(domain: str, start_host: str | None = None) -> list[str]:
    """The SOAP Autodiscover URLs to try first, in the documented order (or the cloud's own host)."""
    if start_host:
        return [f"https://{start_host}{SOAP_PATH}"]
    return [f"https://{domain}{SOAP_PATH}", f"https://autodiscover.{domain}{SOAP_PATH}"]


@dataclass(frozen=True, slots=True)
class SrvRecord:
    priority: int
    weight: int
    port: int
    target: str


def pick_srv_target(records: Sequence[SrvRecord]) -> str | None:
    """The Autodiscover URL an SRV answer points to: an SSL endpoint (port 443) with the best
    priority (RFC 2782: the lowest number) and, among those, the highest weight."""
    usable = [r for r in records if r.port == 443 and r.target.rstrip(".")]
    if not usable:
        return None
    best = min(usable, key=lambda r: (r.priority, -r.weight))
    return f"https://{best.target.rstrip('.')}{SOAP_PATH}"


def _soap_url(url: str) -> str:
    """A POX URL from a redirect or SCP turned into the SOAP one ("change the file name extension")."""
    parts = urlsplit(url)
    path = parts.path
    if path.lower().endswith(".xml"):
        path = path[: -len(".xml")] + ".svc"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


@dataclass
class _Search:
    """One discovery: what was tried and why it did not give an EWS URL."""

    tried: list[tuple[str, str]] = field(default_factory=list)
    visited: set[str] = field(default_factory=set)
    hops: int = 0

    def note(self, url: str, why: str) -> None:
        self.tried.append((url, why))

    def failure(self, email: str) -> InvalidRequest:
        attempts = "; ".join(f"{url} ({why})" for url, why in self.tried) or "no candidate URL"
        return InvalidRequest.field(
            "endpoint",
            f"Autodiscover found no EWS URL for {email}. Tried: {attempts}. Check the Autodiscover DNS "
            "records, or enter the EWS URL itself, e.g. https://mail.contoso.com/EWS/Exchange.asmx",
        )


@dataclass(frozen=True, slots=True)
class _Answer:
    ews_url: str | None = None
    redirect_address: str | None = None
    redirect_url: str | None = None
    problem: str | None = None


def _get_user_settings(
    email: str,
    *,
    url: str,
    credentials: EwsServiceAccount,
    ca_bundle: Path | None,
    timeout_s: float,
    policy: AddressPolicy,
) -> _Answer:
    """One SOAP GetUserSettings, in a worker thread (exchangelib is synchronous), connected only to
    addresses the URL policy accepts (the same pinning as EWS calls)."""

    class _Protocol(AutodiscoverProtocol):  # type: ignore[misc]  # exchangelib ships no types
        HTTP_ADAPTER_CLS = trusting_adapter(url, ca_bundle, policy)

    protocol = _Protocol(
        config=Configuration(
            service_endpoint=url,
            credentials=Credentials(credentials.username, credentials.password),
            auth_type=_AUTH_TYPES.get(credentials.auth_type.strip().lower(), NTLM),
            retry_policy=FailFast(),
        )
    )
    protocol.TIMEOUT = timeout_s
    try:
        response: Any = protocol.get_user_settings(user=email, settings=list(_SETTINGS))
    except UnauthorizedError:
        return _Answer(problem="the credentials were refused (401)")
    except TransportError as exc:
        return _Answer(problem=f"no Autodiscover answer: {exc}")
    except EWSError as exc:
        return _Answer(problem=f"{type(exc).__name__}: {exc}")
    except requests.RequestException as exc:
        return _Answer(problem=f"unreachable: {type(exc).__name__}")
    finally:
        with suppress(Exception):
            protocol.close()
    if response.redirect_address:
        return _Answer(redirect_address=str(response.redirect_address))
    if response.redirect_url:
        return _Answer(redirect_url=str(response.redirect_url))
    if response.error_code not in (None, "NoError"):
        return _Answer(problem=f"{response.error_code}: {response.error_message}")
    settings = response.user_settings or {}
    found = settings.get("external_ews_url") or settings.get("internal_ews_url")
    return _Answer(ews_url=str(found)) if found else _Answer(problem="the answer names no EWS URL")


def _redirect_location(url: str, timeout_s: float) -> str | None:
    """Phase 3: the Location of a 302 to an unauthenticated GET (no credentials are sent)."""
    try:
        response = requests.get(url, allow_redirects=False, timeout=timeout_s)
    except requests.RequestException:
        return None
    if response.status_code in (301, 302) and response.headers.get("Location"):
        return urljoin(url, response.headers["Location"])
    return None


async def _srv_records(domain: str, timeout_s: float) -> list[SrvRecord]:
    try:
        answer = await dns.asyncresolver.resolve(f"_autodiscover._tcp.{domain}", "SRV", lifetime=timeout_s)
    except (dns.exception.DNSException, dns.resolver.NoAnswer):
        return []
    return [SrvRecord(r.priority, r.weight, r.port, str(r.target)) for r in answer]


async def discover_ews_endpoint(
    email: str,
    credentials: EwsServiceAccount,
    *,
    executor: Executor,
    check_url: UrlPolicy,
    check_http_url: UrlPolicy,
    policy: AddressPolicy,
    start_host: str | None = None,
    ca_bundle: Path | None = None,
    timeout_s: float = 10.0,
) -> str:
    """The EWS URL Autodiscover gives for `email`, asked with the connection's own credentials.

    Raises InvalidRequest on field ``endpoint`` naming every URL tried and its answer.
    """
    loop = asyncio.get_running_loop()
    search = _Search()
    address = email.strip().lower()
    seen_addresses = {address}

    async def attempt(url: str) -> _Answer | None:
        if url.lower() in search.visited:
            return None
        search.visited.add(url.lower())
        try:
            checked = await check_url(url)
        except InvalidRequest as exc:
            search.note(url, exc.errors[0].message if exc.errors else exc.detail)
            return None
        answer = await loop.run_in_executor(
            executor,
            partial(
                _get_user_settings,
                address,
                url=checked,
                credentials=credentials,
                ca_bundle=ca_bundle,
                timeout_s=timeout_s,
                policy=policy,
            ),
        )
        if answer.problem:
            search.note(url, answer.problem)
        return answer

    async def follow(answer: _Answer | None) -> str | _Answer | None:
        """An EWS URL, a new address to start over with (as an _Answer), or None to go on."""
        while answer is not None:
            if answer.ews_url:
                return answer.ews_url
            if answer.redirect_address:
                return answer
            if answer.redirect_url is None or search.hops >= MAX_HOPS:
                return None
            search.hops += 1
            if not answer.redirect_url.lower().startswith("https://"):
                search.note(answer.redirect_url, "a redirect to a URL that is not https was not followed")
                return None
            answer = await attempt(_soap_url(answer.redirect_url))
        return None

    while True:
        domain = address.rpartition("@")[2]
        restart: str | None = None
        for url in autodiscover_candidates(domain, start_host):
            outcome = await follow(await attempt(url))
            if isinstance(outcome, str):
                return outcome
            if outcome is not None:
                restart = outcome.redirect_address
                break
        if restart is None and start_host is None:
            http_url = f"http://autodiscover.{domain}{POX_PATH}"
            try:
                await check_http_url(http_url)
            except InvalidRequest as exc:
                search.note(http_url, exc.errors[0].message if exc.errors else exc.detail)
                location = None
            else:
                location = await loop.run_in_executor(executor, partial(_redirect_location, http_url, timeout_s))
                if location is None:
                    search.note(http_url, "no redirect")
            targets = [_soap_url(location)] if location else []
            srv = pick_srv_target(await _srv_records(domain, timeout_s))
            if srv is None:
                search.note(f"_autodiscover._tcp.{domain}", "no SRV record for an https endpoint")
            else:
                targets.append(srv)
            for target in targets:
                if not target.lower().startswith("https://"):
                    search.note(target, "a redirect to a URL that is not https was not followed")
                    continue
                outcome = await follow(await attempt(target))
                if isinstance(outcome, str):
                    return outcome
                if outcome is not None:
                    restart = outcome.redirect_address
                    break
        if restart is None:
            raise search.failure(email)
        new_address = restart.strip().lower()
        if new_address in seen_addresses or search.hops >= MAX_HOPS:
            search.note(f"redirect to {new_address}", "a redirect loop")
            raise search.failure(email)
        seen_addresses.add(new_address)
        search.hops += 1
        address = new_address
