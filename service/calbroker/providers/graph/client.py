"""One Graph HTTP call done right: token, concurrency limit, deadline, retries, error mapping.

Every Graph request of a connection goes through `GraphClient.request`: free/busy, rooms, events
and Teams meetings share one retry policy and one translation of Graph's error envelope
(https://learn.microsoft.com/graph/errors) into domain errors.
"""

from __future__ import annotations

import asyncio
import email.utils
import re
import ssl
import uuid
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar
from urllib.parse import urlsplit

import aiohttp
import msgspec

from calbroker.config import Cloud
from calbroker.domain.errors import (
    CalbrokerError,
    CredentialsRejected,
    MailboxNotFound,
    MailboxOutOfScope,
    UpstreamRejected,
    UpstreamThrottled,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from calbroker.logs import get_logger
from calbroker.metrics import Metrics
from calbroker.providers.graph import wire
from calbroker.providers.graph.auth import GraphTokens
from calbroker.providers.protocol import Deadline, connection_closed

__all__ = ["GraphClient", "GraphResponse"]

_log = get_logger(__name__)
T = TypeVar("T")

# Graph's codes for "this user/mailbox does not exist (in Exchange Online)".
_MAILBOX_MISSING = frozenset(
    {"errorinvaliduser", "mailboxnotenabledforrestapi", "request_resourcenotfound", "resourcenotfound"}
)
# The application access policy's answer (https://learn.microsoft.com/graph/auth-limit-mailbox-access).
_POLICY_MESSAGE = "access to odata is disabled"
# Throttled or briefly unavailable: Graph says when to come back
# (https://learn.microsoft.com/graph/throttling).
_RETRY_STATUSES = frozenset({429, 503, 504})


@dataclass(frozen=True, slots=True)
class GraphResponse:
    """A successful Graph answer; decode it with one of the typed decoders in `wire`."""

    status: int
    body: bytes
    headers: Mapping[str, str]

    def decode(self, decoder: msgspec.json.Decoder[T]) -> T:
        return wire.decode(self.body, decoder)


class GraphClient:
    """Graph requests for one connection; the aiohttp session is shared, the semaphore is not.

    After `close()` every request is refused with `ConnectionClosed` (the connection was revoked
    or re-keyed while a request of it was running).
    """

    def __init__(
        self,
        cloud: Cloud,
        session: aiohttp.ClientSession,
        executor: Executor,
        tokens: GraphTokens,
        *,
        connection_id: object,
        max_concurrency: int,
        max_attempts: int,
        retry_backoff_s: float,
        metrics: Metrics,
    ) -> None:
        self._connection_id = connection_id
        self._metrics = metrics
        self._closed = False
        self._cloud = cloud
        self._session = session
        self._executor = executor
        self._tokens = tokens
        self._max_attempts = max_attempts
        self._retry_backoff_s = retry_backoff_s
        self._graph = urlsplit(cloud.graph_url.rstrip("/"))
        self._slots = asyncio.Semaphore(max_concurrency)
        self._ssl: ssl.SSLContext | None = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        deadline: Deadline,
        json: object | None = None,
        headers: Mapping[str, str] | None = None,
        mailbox: str | None = None,
        idempotent: bool = True,
    ) -> GraphResponse:
        """One Graph call with a token, under the connection's concurrency limit and the deadline.

        Retries 429/503/504 after `Retry-After` (or a doubling back-off) while the deadline allows,
        and other 5xx and dropped connections when `idempotent`; one 401 refreshes the token. Any
        other answer ≥ 400 becomes the domain error (see `_error`). `path` is relative to the Graph
        base URL, or an absolute `@odata.nextLink` on the same host. `mailbox` is the mailbox the
        call is about (in the URL): errors that concern it name it.
        """
        self.check_open()
        url = self._url(path)
        payload = wire.encoder.encode(json) if json is not None else None
        fresh_token = False
        attempt = 0
        while True:
            attempt += 1
            token = await self._tokens.token(deadline)
            request_id = str(uuid.uuid4())
            sent = {
                "Authorization": f"Bearer {token}",
                "Accept": "application/json",
                "client-request-id": request_id,
                **(headers or {}),
            }
            if payload is not None:
                sent["Content-Type"] = "application/json"
            operation = f"{method} {_template(path)}"
            try:
                with self._metrics.upstream_call("graph", operation) as call:
                    status, body, answer_headers = await self._send(method, url, payload, sent, deadline)
                    call.outcome = "ok" if status < 400 else f"http-{status}"
            except TimeoutError:
                raise UpstreamTimeout(
                    f"Microsoft Graph did not answer {method} {_route(path)} within the deadline",
                    mailbox=mailbox,
                ) from None
            except aiohttp.ClientSSLError as exc:
                raise UpstreamUnavailable(
                    f"TLS verification failed talking to Microsoft Graph at {self._graph.netloc}: {exc}",
                    mailbox=mailbox,
                ) from None
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
                wait = self._backoff(attempt)
                if idempotent and attempt < self._max_attempts and deadline.allows(wait):
                    _log.info("graph.retry", reason=type(exc).__name__, wait_s=wait, attempt=attempt)
                    await asyncio.sleep(wait)
                    continue
                raise UpstreamUnavailable(
                    f"Microsoft Graph at {self._graph.netloc} could not be reached: {type(exc).__name__}: {exc}",
                    mailbox=mailbox,
                ) from None
            if status < 400:
                return GraphResponse(status, body, answer_headers)
            if status == 401 and not fresh_token:
                fresh_token = True
                await self._tokens.forget()
                continue
            retry_after = _retry_after(answer_headers.get("Retry-After"))
            retryable = status in _RETRY_STATUSES or (status >= 500 and idempotent)
            if retryable and attempt < self._max_attempts:
                wait = retry_after if retry_after is not None else self._backoff(attempt)
                if deadline.allows(wait):
                    _log.info(
                        "graph.retry", status=status, wait_s=wait, attempt=attempt, mailbox=mailbox, route=_route(path)
                    )
                    if retry_after is not None or status == 429:
                        self._metrics.throttled("graph", wait)
                    await asyncio.sleep(wait)
                    continue
            raise self._error(status, body, retry_after, mailbox, f"{method} {_route(path)}")

    def check_open(self) -> None:
        if self._closed:
            raise connection_closed(self._connection_id)

    def close(self) -> None:
        self._closed = True

    async def _send(
        self, method: str, url: str, payload: bytes | None, headers: Mapping[str, str], deadline: Deadline
    ) -> tuple[int, bytes, Mapping[str, str]]:
        ssl_context = await self._ssl_context()
        async with (
            asyncio.timeout(deadline.remaining()),
            self._slots,
            self._session.request(method, url, data=payload, headers=headers, ssl=ssl_context) as resp,
        ):
            return resp.status, await resp.read(), resp.headers

    async def _ssl_context(self) -> ssl.SSLContext | bool:
        """True (aiohttp's default verification) unless the cloud names its own CA bundle."""
        ca_bundle = self._cloud.ca_bundle
        if ca_bundle is None:
            return True
        if self._ssl is None:
            # Loading a CA file is disk I/O: do it once, off the loop.
            self._ssl = await asyncio.get_running_loop().run_in_executor(
                self._executor, lambda: ssl.create_default_context(cafile=str(ca_bundle))
            )
        return self._ssl

    def _error(
        self, status: int, body: bytes, retry_after: float | None, mailbox: str | None, what: str
    ) -> CalbrokerError:
        """Graph's error envelope as the domain error (https://learn.microsoft.com/graph/errors)."""
        error = wire.decode_error(body)
        code = error.code or f"HTTP {status}"
        message = error.message or "no message"
        lowered = code.lower()
        if status == 403 and mailbox and _POLICY_MESSAGE in message.lower():
            return MailboxOutOfScope(
                f"{mailbox} is outside the mailboxes this connection's app may read (the tenant's "
                f"application access policy answered: {message})",
                mailbox=mailbox,
            )
        if status == 404 and mailbox and lowered in _MAILBOX_MISSING:
            return MailboxNotFound(f"Exchange Online has no mailbox {mailbox} ({code}: {message})", mailbox=mailbox)
        if status in (401, 403):
            return CredentialsRejected(
                f"Microsoft Graph refused {what}: {code}: {message}. The app registration may lack the "
                "application permission (Calendars.Read or Calendars.ReadWrite, Place.Read.All for rooms) "
                "or admin consent.",
                upstream_code=code,
                mailbox=mailbox,
            )
        if status == 429 or (status in _RETRY_STATUSES and retry_after is not None):
            return UpstreamThrottled(
                f"Microsoft Graph is throttling {what}"
                + (f" and asked to retry after {retry_after:g} s, past this request's deadline" if retry_after else ""),
                retry_after=retry_after,
                upstream_code=code,
                mailbox=mailbox,
            )
        if status >= 500:
            return UpstreamUnavailable(
                f"Microsoft Graph failed {what}: HTTP {status} {code}: {message}", upstream_code=code, mailbox=mailbox
            )
        return UpstreamRejected(
            f"Microsoft Graph rejected {what}: HTTP {status} {code}: {message}", upstream_code=code, mailbox=mailbox
        )

    def _url(self, path: str) -> str:
        if "://" not in path:
            return f"{self._cloud.graph_url.rstrip('/')}/{path.lstrip('/')}"
        target = urlsplit(path)
        # A nextLink is followed verbatim, but the token only ever goes to the Graph host.
        if (target.scheme, target.netloc) != (self._graph.scheme, self._graph.netloc):
            raise UpstreamRejected(f"Microsoft Graph sent a link to another host ({target.netloc}); not followed")
        return path

    def _backoff(self, attempt: int) -> float:
        return float(self._retry_backoff_s * 2 ** (attempt - 1))


_WORD = re.compile(r"^[A-Za-z$][A-Za-z.]{0,47}$")


def _template(path: str) -> str:
    """A path as a metric label: words kept, anything else (addresses, ids) as `{id}`.

    `users/adele@contoso.com/calendar/events/AAMkAD…` → `users/{id}/calendar/events/{id}`, so
    the label has as many values as Graph has routes, whatever the mailboxes and items.
    """
    segments = _route(path).strip("/").split("/")
    return "/".join(segment if _WORD.match(segment) else "{id}" for segment in segments)


def _route(path: str) -> str:
    """A path for messages and logs: no query string, no host."""
    return urlsplit(path).path


def _retry_after(raw: str | None) -> float | None:
    """Retry-After as seconds: delta-seconds (Graph's form) or an HTTP date."""
    if raw is None or not raw.strip():
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
