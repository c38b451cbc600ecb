"""Running exchangelib off the event loop: bounded threads, our deadline, our back-off, our errors.

exchangelib is synchronous and, with its default ``FailFast`` policy, raises on the first
``ErrorServerBusy``; its ``FaultTolerance`` policy would instead sleep and retry *forever* as
long as each back-off is short enough (upstream.md, Part 2B). So every call goes through
`EwsCalls.run`, which honours the server's ``BackOffMilliseconds`` only while the request's
`Deadline` allows it, and translates exchangelib and requests exceptions into domain errors here
and nowhere else (style rule 12).

Every exchangelib HTTP request a call makes is bounded by the call's `Deadline` (`request_timeout`,
read by our Protocol for each request): exchangelib's own timeout would otherwise let an abandoned
thread go on writing to Exchange for half a minute after the caller gave up. A write is never
abandoned: its caller waits for the thread to end (`settle`), so when `run` raises, the request
has really ended, and a reservation held for it can be let go.

exchangelib often re-raises a low-level failure as another exception inside its ``except``
block (a refused connection becomes ``ErrorTimeoutExpired``, which its retry loop may turn into
``ErrorServerBusy``; a busy fault during the version probe becomes ``TransportError``). The
first cause is what happened, so errors are classified by the deepest exchangelib or requests
exception in the ``__context__`` chain.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from contextlib import suppress
from typing import Any, TypeVar

import requests
from exchangelib.errors import (
    CASError,
    ErrorAccessDenied,
    ErrorConnectionFailed,
    ErrorExceededConnectionCount,
    ErrorFolderNotFound,
    ErrorFreeBusyGenerationFailed,
    ErrorImpersonateUserDenied,
    ErrorImpersonationDenied,
    ErrorImpersonationFailed,
    ErrorInternalServerError,
    ErrorInternalServerTransientError,
    ErrorInvalidSmtpAddress,
    ErrorInvalidSyncStateData,
    ErrorMailboxMoveInProgress,
    ErrorMailboxStoreUnavailable,
    ErrorMailRecipientNotFound,
    ErrorNoFreeBusyAccess,
    ErrorNonExistentMailbox,
    ErrorProxyRequestNotAllowed,
    ErrorProxyRequestProcessingFailed,
    ErrorServerBusy,
    ErrorSubscriptionNotFound,
    ErrorSyncFolderNotFound,
    ErrorTimeoutExpired,
    ErrorTooManyObjectsOpened,
    EWSError,
    MalformedResponseError,
    RateLimitError,
    RedirectError,
    ResponseMessageError,
    SessionPoolMinSizeReached,
    TransportError,
    UnauthorizedError,
)

from calbroker.domain.errors import (
    CalbrokerError,
    CredentialsRejected,
    ImpersonationDenied,
    MailboxError,
    MailboxNotFound,
    MailboxOutOfScope,
    SyncStateExpired,
    UpstreamRejected,
    UpstreamThrottled,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from calbroker.logs import get_logger
from calbroker.metrics import Metrics
from calbroker.providers.protocol import WRITE_SETTLE_S, Deadline, connection_closed

__all__ = ["EwsCalls", "request_timeout", "translate_error"]

T = TypeVar("T")

_log = get_logger(__name__)

_THROTTLING = (
    ErrorServerBusy,
    ErrorTooManyObjectsOpened,
    ErrorExceededConnectionCount,
    RateLimitError,
)
_NOT_FOUND = (ErrorNonExistentMailbox, ErrorMailRecipientNotFound, ErrorInvalidSmtpAddress)
_OUT_OF_SCOPE = (ErrorNoFreeBusyAccess, ErrorAccessDenied, ErrorFolderNotFound, ErrorProxyRequestNotAllowed)
_IMPERSONATION = (ErrorImpersonateUserDenied, ErrorImpersonationDenied, ErrorImpersonationFailed)
_SERVER_TROUBLE = (
    ErrorInternalServerError,
    ErrorInternalServerTransientError,
    ErrorMailboxStoreUnavailable,
    ErrorMailboxMoveInProgress,
    ErrorProxyRequestProcessingFailed,
    ErrorConnectionFailed,
    ErrorFreeBusyGenerationFailed,
)
# A sync state or subscription Exchange has forgotten: start over from nothing.
_FORGOTTEN = (ErrorInvalidSyncStateData, ErrorSyncFolderNotFound, ErrorSubscriptionNotFound)
_MAX_DROPPED_RETRIES = 2
_FIRST_BACK_OFF_S = 0.5
"""Back-off when the server is busy but names no BackOffMilliseconds (doubles per attempt)."""
_LAST_REQUEST_S = 0.05
"""HTTP timeout of a request exchangelib starts when the call's deadline has passed: it fails at once."""

_budget = threading.local()
"""The running call's deadline (monotonic seconds), per worker thread."""


def request_timeout(ceiling_s: float) -> float:
    """The HTTP timeout for the next exchangelib request of this thread: what is left of the running
    call's deadline, never more than `ceiling_s` (outside a call: `ceiling_s`)."""
    at: float | None = getattr(_budget, "at", None)
    if at is None:
        return ceiling_s
    return max(_LAST_REQUEST_S, min(ceiling_s, at - time.monotonic()))


def _within(deadline: Deadline, call: Callable[[float], T]) -> Callable[[float], T]:
    """`call`, run with this thread's request budget set to `deadline`."""

    def bounded(timeout_s: float) -> T:
        _budget.at = deadline.at
        try:
            return call(timeout_s)
        finally:
            _budget.at = None

    return bounded


def _first_cause(exc: BaseException) -> BaseException:
    """The deepest exchangelib/requests exception in the chain: what actually went wrong.

    exchangelib's own session-pool bookkeeping (`SessionPoolMinSizeReached`, raised while it reacts
    to ErrorExceededConnectionCount by shrinking its pool) is not a cause and is passed over.
    """
    found: BaseException = exc
    current: BaseException | None = exc
    seen: list[BaseException] = []
    while current is not None and current not in seen and len(seen) < 12:
        seen.append(current)
        if isinstance(current, EWSError | requests.RequestException) and not isinstance(
            current, SessionPoolMinSizeReached
        ):
            found = current
        current = current.__cause__ or current.__context__
    return found


def _dropped(exc: BaseException) -> bool:
    """The server (or a proxy) dropped a kept-alive connection or failed transiently: worth a fresh try."""
    cause = _first_cause(exc)
    if isinstance(cause, ErrorInternalServerTransientError | requests.exceptions.ChunkedEncodingError):
        return True
    return (
        isinstance(cause, requests.ConnectionError)
        and not isinstance(cause, requests.exceptions.SSLError)
        and ("RemoteDisconnected" in str(cause) or "reset by peer" in str(cause))
    )


def _code(exc: BaseException) -> str:
    """The EWS ResponseCode: exchangelib names each response-message exception after it."""
    return type(exc).__name__


_POLICY_REFUSAL = re.compile(r"resolves to [^;()]*\([^)]*\)|points at a cloud metadata service \([^)]*\)")


def _header_safe(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _unreachable_reason(exc: requests.RequestException) -> str:
    text = str(exc)
    refused = _POLICY_REFUSAL.search(text)
    if refused:  # the address policy refused the address before any connection (endpoints.py)
        return refused.group(0)
    if "NameResolution" in text or "Name or service not known" in text or "nodename nor servname" in text:
        return "its host name does not resolve"
    if "Connection refused" in text or "ConnectionRefused" in text:
        return "the connection was refused"
    if "RemoteDisconnected" in text or "reset by peer" in text or "Connection aborted" in text:
        return "the server closed the connection"
    return _short(text, 160)


def translate_error(exc: BaseException, *, what: str, mailbox: str | None = None) -> CalbrokerError:
    """The domain error for an exchangelib/requests failure of `what` (for `mailbox`, if per-mailbox).

    | Upstream                                                       | Domain error                     |
    |----------------------------------------------------------------|----------------------------------|
    | HTTP 401 (``UnauthorizedError``)                                | CredentialsRejected              |
    | ErrorImpersonateUserDenied / ImpersonationDenied / …Failed      | ImpersonationDenied              |
    | ErrorNonExistentMailbox / ErrorMailRecipientNotFound / …Smtp…   | MailboxNotFound                  |
    | ErrorNoFreeBusyAccess / ErrorAccessDenied / ErrorFolderNotFound | MailboxOutOfScope                |
    | ErrorServerBusy / TooManyObjectsOpened / ExceededConnectionCount| UpstreamThrottled (retry_after)  |
    | ErrorTimeoutExpired, requests Timeout                           | UpstreamTimeout                  |
    | TLS failure (requests SSLError)                                 | UpstreamUnavailable ("TLS …")    |
    | refused / DNS / reset (requests ConnectionError)                | UpstreamUnavailable (unreachable)|
    | ErrorInternalServer*, MailboxStoreUnavailable, 503 …            | UpstreamUnavailable              |
    | ErrorInvalidSyncStateData, …SyncFolderNotFound, …SubscriptionNotFound | SyncStateExpired          |
    | redirect, non-EWS answer, any other response code               | UpstreamRejected                 |
    """
    cause = _first_cause(exc)
    target = mailbox or "the mailbox"
    if isinstance(cause, UnauthorizedError):
        return CredentialsRejected(
            "Exchange rejected the service account: username or password rejected (HTTP 401).",
            upstream_code="401",
            mailbox=mailbox,
        )
    if isinstance(cause, _IMPERSONATION):
        return ImpersonationDenied(
            f"The service account may not impersonate {target} ({_code(cause)}): grant it the "
            "ApplicationImpersonation role with a management scope that includes this mailbox.",
            mailbox=mailbox or "",
        )
    if isinstance(cause, _NOT_FOUND):
        return MailboxNotFound(f"Exchange has no mailbox {target} ({_code(cause)}).", mailbox=mailbox or "")
    if isinstance(cause, _OUT_OF_SCOPE):
        return MailboxOutOfScope(
            f"The service account has no access to {target} ({_code(cause)}).", mailbox=mailbox or ""
        )
    if isinstance(cause, _THROTTLING):
        back_off = getattr(cause, "back_off", None)
        return UpstreamThrottled(
            f"Exchange is throttling {what} ({_code(cause)}).",
            retry_after=float(back_off) if back_off else None,
            upstream_code=_code(cause),
            mailbox=mailbox,
        )
    if isinstance(cause, requests.exceptions.SSLError):
        reason = re.search(r"\[SSL: [A-Z_]+\][^'\")]*", str(cause))
        return UpstreamUnavailable(
            "TLS handshake with the EWS endpoint failed: its certificate is not trusted or does not match "
            f"the host ({reason.group(0) if reason else _short(str(cause), 200)}). "
            "Configure the CA that issued the Exchange server's certificate.",
            upstream_code="tls",
            mailbox=mailbox,
        )
    if isinstance(cause, requests.exceptions.Timeout) or (
        isinstance(cause, ErrorTimeoutExpired) and not isinstance(cause.__context__, requests.RequestException)
    ):
        return UpstreamTimeout(f"Exchange did not answer {what} in time.", upstream_code=_code(cause), mailbox=mailbox)
    if isinstance(cause, requests.RequestException):
        return UpstreamUnavailable(
            f"EWS endpoint unreachable: {_unreachable_reason(cause)}.", upstream_code="connect", mailbox=mailbox
        )
    if isinstance(cause, _FORGOTTEN):
        # https://learn.microsoft.com/exchange/client-developer/exchange-web-services/handling-synchronization-related-errors-in-ews-in-exchange
        return SyncStateExpired(
            f"Exchange no longer knows the state of {what} ({_code(cause)}); resynchronising.",
            upstream_code=_code(cause),
            mailbox=mailbox,
        )
    if isinstance(cause, _SERVER_TROUBLE):
        return UpstreamUnavailable(
            f"Exchange failed {what} ({_code(cause)}): {_short(str(cause), 200)}",
            upstream_code=_code(cause),
            mailbox=mailbox,
        )
    if isinstance(cause, RedirectError):
        return UpstreamRejected(
            f"The EWS endpoint redirected to {cause.url}; enter the final EWS URL.",
            upstream_code="redirect",
            mailbox=mailbox,
        )
    if isinstance(cause, CASError):
        return UpstreamRejected(
            f"Exchange refused {what} (CAS error {cause.cas_error}).", upstream_code="cas", mailbox=mailbox
        )
    if isinstance(cause, MalformedResponseError):
        status = re.search(r"Code: (\d{3})", str(cause))
        answered = f"HTTP {status.group(1)}" if status else "something that is not EWS"
        return UpstreamRejected(
            f"The endpoint answered {answered}; check that the URL is the server's /EWS/Exchange.asmx.",
            upstream_code=status.group(1) if status else "malformed",
            mailbox=mailbox,
        )
    if isinstance(cause, ResponseMessageError):
        return UpstreamRejected(
            f"Exchange refused {what}: {_code(cause)} ({_short(str(cause), 200)}).",
            upstream_code=_code(cause),
            mailbox=mailbox,
        )
    if isinstance(cause, TransportError):
        return UpstreamRejected(
            f"The EWS endpoint did not answer like Exchange: {_short(str(cause), 200)}",
            upstream_code="transport",
            mailbox=mailbox,
        )
    return UpstreamRejected(
        f"Exchange failed {what}: {type(cause).__name__}", upstream_code=type(cause).__name__, mailbox=mailbox
    )


class EwsCalls:
    """Runs exchangelib callables in an executor, at most `concurrency` at a time for one connection.

    A slot is released when the *thread* finishes, not when the caller stops waiting (a deadline
    abandons the wait, but the blocking request keeps its thread until its HTTP timeout), so the
    bound holds for threads and for connections to Exchange. After `aclose()` every call is refused
    with `ConnectionClosed` (the connection was revoked or re-keyed while a call of it was running).
    """

    def __init__(
        self,
        executor: Executor,
        concurrency: int,
        http_timeout_s: float,
        *,
        connection_id: object,
        metrics: Metrics | None = None,
    ) -> None:
        self._connection_id = connection_id
        self._metrics = metrics if metrics is not None else Metrics()
        self._closed = False
        self._executor = executor
        self._slots = asyncio.Semaphore(concurrency)
        self._http_timeout_s = http_timeout_s
        self._in_flight: set[Future[Any]] = set()
        self._lock = threading.Lock()

    async def run(
        self,
        what: str,
        call: Callable[[float], T],
        deadline: Deadline,
        *,
        mailbox: str | None = None,
        idempotent: bool = True,
        settle: bool = False,
    ) -> T:
        """`call(http_timeout_s)` in a worker thread, retried within `deadline`; domain errors only.

        Busy/throttling answers are retried after the server's back-off when the deadline leaves
        room for it (the server did not process the request, so this is safe even for writes);
        dropped connections and transient server errors are retried only when `idempotent`.
        With `settle` (writes), a call still running at the deadline is waited for (its requests
        stop at the deadline, so within `WRITE_SETTLE_S`): what it did is what `run` reports.
        """
        self.check_open()
        busy_retries = 0
        dropped_retries = 0
        while True:
            deadline.check(what)
            try:
                with self._metrics.upstream_call("ews", what) as measured:
                    try:
                        return await self._in_thread(call, deadline, settle=settle)
                    except (EWSError, requests.RequestException) as exc:
                        measured.outcome = translate_error(exc, what=what, mailbox=mailbox).slug
                        raise
            except TimeoutError:
                raise UpstreamTimeout(f"{what} did not complete within the request deadline", mailbox=mailbox) from None
            except UnicodeEncodeError:
                # exchangelib names the impersonated mailbox in the X-AnchorMailbox header, and HTTP
                # headers carry Latin-1 only: such an address cannot be used over EWS at all.
                if mailbox is None or _header_safe(mailbox):
                    raise
                raise MailboxError(
                    f"{mailbox} cannot be used over EWS: its address has characters an HTTP header cannot carry.",
                    mailbox=mailbox,
                ) from None
            except (EWSError, requests.RequestException) as exc:
                error = translate_error(exc, what=what, mailbox=mailbox)
                if isinstance(error, UpstreamThrottled):
                    wait = error.retry_after or _FIRST_BACK_OFF_S * 2**busy_retries
                    if not deadline.allows(wait):
                        raise UpstreamThrottled(
                            f"Exchange asked to wait {wait:g} s before retrying {what}, "
                            "which is past the request deadline.",
                            retry_after=wait,
                            upstream_code=error.upstream_code,
                            mailbox=mailbox,
                        ) from exc
                    busy_retries += 1
                elif idempotent and dropped_retries < _MAX_DROPPED_RETRIES and _dropped(exc):
                    dropped_retries += 1
                    wait = 0.1 * dropped_retries
                    if not deadline.allows(wait):
                        raise error from exc
                else:
                    raise error from exc
                _log.info("ews.retry", operation=what, wait_s=wait, cause=type(_first_cause(exc)).__name__)
                if isinstance(error, UpstreamThrottled):
                    self._metrics.throttled("ews", wait)
                await asyncio.sleep(wait)

    async def _in_thread(self, call: Callable[[float], T], deadline: Deadline, *, settle: bool) -> T:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(deadline.remaining()):
            await self._slots.acquire()
        timeout_s = max(0.1, min(self._http_timeout_s, deadline.remaining()))
        try:
            future = self._executor.submit(_within(deadline, call), timeout_s)
        except BaseException:
            self._slots.release()
            raise
        with self._lock:
            self._in_flight.add(future)

        def finished(done: Future[T]) -> None:
            with self._lock:
                self._in_flight.discard(done)
            with suppress(RuntimeError):  # the loop is gone: nobody is waiting for the slot any more
                loop.call_soon_threadsafe(self._slots.release)

        future.add_done_callback(finished)
        waiting = asyncio.wrap_future(future)
        try:
            async with asyncio.timeout(deadline.remaining()):
                return await asyncio.shield(waiting)
        except TimeoutError:
            if not settle or future.cancel():  # a read may be abandoned; a write that never started is void
                waiting.cancel()
                raise
        # A write is mid-request. Its HTTP requests end at the deadline (`request_timeout`), so it
        # ends within moments: wait, and report what it really did, a late success included.
        try:
            async with asyncio.timeout(WRITE_SETTLE_S):
                return await asyncio.shield(waiting)
        except TimeoutError:
            _log.error("ews.write_unsettled", wait_s=WRITE_SETTLE_S)
            waiting.cancel()
            raise

    @property
    def closed(self) -> bool:
        return self._closed

    def check_open(self) -> None:
        if self._closed:
            raise connection_closed(self._connection_id)

    async def aclose(self, timeout_s: float) -> None:
        """Refuse new calls, then wait (bounded) for threads still running, e.g. requests whose caller gave up."""
        self._closed = True
        with self._lock:
            pending = [asyncio.wrap_future(f) for f in self._in_flight]
        if pending:
            await asyncio.wait(pending, timeout=timeout_s)
