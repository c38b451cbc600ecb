"""EWS streaming notifications for a group of mailboxes of one connection.

The group follows Microsoft's affinity recipe
(https://learn.microsoft.com/exchange/client-developer/exchange-web-services/how-to-maintain-affinity-between-group-of-subscriptions-and-mailbox-server):
at most 200 mailboxes; the alphabetically first is the anchor, subscribed first, and the
`X-BackEndOverrideCookie` Exchange answers is copied to every other member before it subscribes and
to the one GetStreamingEvents that carries all their subscriptions. That request hangs until
Exchange closes it at ConnectionTimeout (at most 30 minutes:
https://learn.microsoft.com/exchange/client-developer/web-service-reference/connectiontimeout), and
events only flow while it is open, so the caller re-issues it at once and catches up with
SyncFolderItems after every (re)connect (exchangelib's maintainer: streaming subscriptions "are only
meant to receive events that happen right now", https://github.com/ecederstrand/exchangelib/issues/1153).

A group has its own exchangelib Configuration, so its own session pool: the affinity cookie lives in
the pooled session's cookie jar, and a hanging call holds a session that nothing else may wait for
(https://github.com/ecederstrand/exchangelib/issues/1088). Every method blocks: call them from a
thread of the group's own, never from the provider's pool.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any

from exchangelib import IMPERSONATION, Account, Configuration, Credentials
from exchangelib import UTC as EWS_UTC
from exchangelib.errors import EWSError
from exchangelib.protocol import Protocol as ExchangeProtocol
from exchangelib.services import GetStreamingEvents
from requests import RequestException

from calbroker.domain.errors import CalbrokerError
from calbroker.providers.ews.calls import translate_error

__all__ = ["MAX_GROUP", "StreamGroup"]

MAX_GROUP = 200
"""Mailboxes per affinity group, and subscription ids per GetStreamingEvents."""

_EVENT_TYPES = ("CreatedEvent", "DeletedEvent", "ModifiedEvent", "MovedEvent", "CopiedEvent", "FreeBusyChangedEvent")


class StreamGroup:
    """Subscriptions and the hanging GetStreamingEvents of up to 200 mailboxes (blocking calls)."""

    def __init__(
        self,
        *,
        endpoint: str,
        username: str,
        password: str,
        auth_type: str,
        adapter: type[Any],
        mailboxes: Sequence[str],
        http_timeout_s: float,
    ) -> None:
        if not 1 <= len(mailboxes) <= MAX_GROUP:
            raise ValueError(f"a streaming group holds 1-{MAX_GROUP} mailboxes")
        self.mailboxes = sorted(mailboxes)
        config = Configuration(
            service_endpoint=endpoint,
            credentials=Credentials(username, password),
            auth_type=auth_type,
            max_connections=2,
        )

        class _Protocol(ExchangeProtocol):  # type: ignore[misc]  # exchangelib ships no types
            HTTP_ADAPTER_CLS = adapter

        # Built past exchangelib's process-wide Protocol cache: this group's sessions are its own.
        self._protocol = type.__call__(_Protocol, config=config)
        self._protocol.TIMEOUT = http_timeout_s
        self._config = config
        self._accounts: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._streaming: GetStreamingEvents | None = None
        self._stopped = threading.Event()

    def _account(self, mailbox: str) -> Any:
        account = self._accounts.get(mailbox)
        if account is None:
            account = Account(
                primary_smtp_address=mailbox,
                access_type=IMPERSONATION,
                autodiscover=False,
                config=self._config,
                default_timezone=EWS_UTC,
                locale="en_US",
            )
            account.protocol = self._protocol
            self._accounts[mailbox] = account
        return account

    def subscribe(self) -> tuple[dict[str, str], dict[str, CalbrokerError]]:
        """Subscribe every member's calendar (anchor first); ids by mailbox, and who could not be subscribed."""
        ids: dict[str, str] = {}
        failed: dict[str, CalbrokerError] = {}
        cookie: str | None = None
        for mailbox in self.mailboxes:
            account = self._account(mailbox)
            if cookie is not None:
                account.affinity_cookie = cookie
            try:
                ids[mailbox] = str(account.calendar.subscribe_to_streaming(event_types=_EVENT_TYPES))
            except (EWSError, RequestException) as exc:
                failed[mailbox] = translate_error(exc, what="Subscribe", mailbox=mailbox)
                continue
            cookie = cookie or account.affinity_cookie
        return ids, failed

    def listen(self, ids: Sequence[str], minutes: int, on_notification: Callable[[str], None]) -> None:
        """Hold GetStreamingEvents for `ids` until Exchange closes it (or `stop()`); each notification's
        subscription id goes to `on_notification`. Raises the domain error that ended it otherwise."""
        anchor = self._account(self.mailboxes[0])
        service = GetStreamingEvents(account=anchor)
        with self._lock:
            if self._stopped.is_set():
                return
            self._streaming = service
        try:
            for notification in service.call(subscription_ids=list(ids), connection_timeout=minutes):
                on_notification(str(notification.subscription_id))
        except (EWSError, RequestException, AttributeError, OSError) as exc:
            if self._stopped.is_set():
                return  # stop() closed the stream under the reading thread
            if isinstance(exc, AttributeError | OSError):
                raise
            raise translate_error(exc, what="GetStreamingEvents") from exc
        finally:
            with self._lock:
                self._streaming = None

    def unsubscribe(self, ids: dict[str, str]) -> None:
        """Best effort: Exchange drops streaming subscriptions nobody listens to anyway."""
        for mailbox, subscription in ids.items():
            try:
                self._account(mailbox).calendar.unsubscribe(subscription)
            except (EWSError, RequestException):
                continue

    def stop(self) -> None:
        """Close the stream now (from any thread); the listening thread returns.

        The socket is shut down first: closing the response alone waits for the thread blocked
        reading it to let go of the buffered reader, which lasts until Exchange next writes.
        """
        self._stopped.set()
        with self._lock:
            streaming = self._streaming
        if streaming is not None:
            _shut_down(getattr(streaming, "_streaming_response", None))
            with contextlib.suppress(RuntimeError):  # the stream ended on its own meanwhile
                streaming.stop_streaming()

    def close(self) -> None:
        self.stop()
        self._protocol.close()


def _shut_down(response: Any) -> None:
    """Shut down the socket under a streaming `requests` response, so a blocked read returns now."""
    raw = getattr(response, "raw", None)  # urllib3's response; it keeps its connection while streaming
    sock = getattr(getattr(raw, "connection", None), "sock", None)
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
