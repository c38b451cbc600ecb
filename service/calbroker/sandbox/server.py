"""App assembly and runners: `build_app(state)`, the `Sandbox` async context manager, the
`SandboxThread` for tests with blocking clients, and the CLI loop.

One HTTPS port serves everything: Entra ID (`/{tenant}/…`), Graph (`/v1.0/…`), EWS
(`/EWS/Exchange.asmx`), Autodiscover (`/autodiscover/autodiscover.xml|.svc`) and the control plane
(`/_sandbox/…`). A middleware adds the base
round-trip latency to every non-control request and turns `DropConnection` into a closed socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import date, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO, TypeVar

from aiohttp import web

from calbroker.sandbox import control, entra, ews, graph
from calbroker.sandbox.directory import Directory
from calbroker.sandbox.faults import DropConnection
from calbroker.sandbox.graph import DeltaBook, GraphContext, SubscriptionBook
from calbroker.sandbox.seed import DEFAULT_ANCHOR, WELL_KNOWN
from calbroker.sandbox.state import SandboxSettings, SandboxState
from calbroker.sandbox.tls import load_key_material

__all__ = ["Sandbox", "SandboxThread", "build_app", "describe", "run_sandbox_cli", "start_sandbox_in_thread"]

T = TypeVar("T")
STATE_KEY = web.AppKey("sandbox_state", SandboxState)
SUBSCRIPTIONS_KEY = web.AppKey("sandbox_subscriptions", SubscriptionBook)


def _middleware(state: SandboxState) -> Any:
    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        # The round trip covers the sandbox's own work, as a remote service's does: a request is
        # answered `latency_ms` after it arrived (or when its work is done, if that takes longer).
        # Sleeping first would add the single-threaded sandbox's work for concurrent requests one
        # after another on top of the latency — a cost Microsoft, answering them in parallel, does
        # not have.
        control = request.path.startswith("/_sandbox")
        delay = 0.0 if control else state.settings.latency_ms / 1000
        loop = asyncio.get_running_loop()
        answer_at = loop.time() + delay
        if not control:
            state.stats.in_flight += 1
        try:
            try:
                response = await handler(request)
            except DropConnection:
                if request.transport is not None:
                    request.transport.abort()
                raise asyncio.CancelledError from None
            except web.HTTPException:
                await asyncio.sleep(max(0.0, answer_at - loop.time()))
                raise
            await asyncio.sleep(max(0.0, answer_at - loop.time()))
            return response
        finally:
            # Also when the client went away mid-request: the runner cancels the handler
            # (handler_cancellation=True), so a delayed write whose client gave up never lands.
            if not control:
                state.stats.in_flight -= 1

    return middleware


def build_app(state: SandboxState) -> web.Application:
    """The aiohttp application playing Entra ID, Graph, EWS and the control plane over `state`."""
    app = web.Application(middlewares=[_middleware(state)], client_max_size=16 * 1024 * 1024)
    subscriptions = SubscriptionBook(state)
    deltas = DeltaBook(state)
    streams = ews.EwsStreams(state)
    authority = entra.EntraAuthority(state)
    app[STATE_KEY] = state
    app[SUBSCRIPTIONS_KEY] = subscriptions
    app.add_routes(control.routes(state, subscriptions, deltas, streams, authority))
    app.add_routes(graph.routes(GraphContext(state, subscriptions, deltas)))
    app.add_routes(ews.routes(state, streams=streams))
    app.add_routes(ews.autodiscover_routes(state))
    app.add_routes(entra.routes(state, authority))

    async def subscription_client(_: web.Application) -> AsyncIterator[None]:
        await subscriptions.start()
        yield
        await subscriptions.close()

    app.cleanup_ctx.append(subscription_client)
    return app


class Sandbox:
    """The Microsoft 365 sandbox on one HTTPS port, as an async context manager.

        async with Sandbox(seed=0, state_dir=tmp_path) as sandbox:
            msal.ConfidentialClientApplication(..., authority=f"{sandbox.authority_host}/contoso.com",
                                               instance_discovery=False, verify=str(sandbox.ca_path))

    `limits` are `SandboxSettings` fields (e.g. `max_schedules=10`, `token_lifetime_s=5`).
    """

    def __init__(
        self,
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        state_dir: Path | None = None,
        latency_ms: float = 0,
        anchor: date = DEFAULT_ANCHOR,
        **limits: Any,
    ) -> None:
        self.seed = seed
        self.host = host
        self.port = port
        self.anchor = anchor
        self._own_state_dir = state_dir is None
        self.state_dir = (
            Path(state_dir) if state_dir is not None else Path(tempfile.mkdtemp(prefix="calbroker-sandbox-"))
        )
        self.settings = SandboxSettings(latency_ms=latency_ms)
        self.settings.update(limits)
        self._runner: web.AppRunner | None = None
        self._state: SandboxState | None = None
        self.url = ""

    @property
    def state(self) -> SandboxState:
        if self._state is None:
            raise RuntimeError("the sandbox is not running; use `async with Sandbox(...)`")
        return self._state

    @property
    def directory(self) -> Directory:
        return self.state.directory

    @property
    def ca_path(self) -> Path:
        return self.state.keys.ca_path

    @property
    def authority_host(self) -> str:
        return self.url

    @property
    def graph_url(self) -> str:
        return self.url + "/v1.0"

    @property
    def ews_url(self) -> str:
        return self.url + ews.EWS_PATH

    @property
    def autodiscover_host(self) -> str:
        """Where Autodiscover answers: the sandbox's host and port (clients add /autodiscover/…)."""
        return self.url.removeprefix("https://")

    async def __aenter__(self) -> Sandbox:
        if self._runner is not None:
            raise RuntimeError("this Sandbox is already running")
        public_host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host  # noqa: S104  # bind-all maps to loopback for the URL
        keys = await asyncio.to_thread(load_key_material, self.state_dir, public_host)
        settings = dataclasses.replace(self.settings)
        state = await asyncio.to_thread(
            lambda: SandboxState(keys=keys, seed=self.seed, anchor=self.anchor, settings=settings)
        )
        runner = web.AppRunner(build_app(state), handler_cancellation=True, shutdown_timeout=2.0, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, ssl_context=keys.server_ssl_context())
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        port = runner.addresses[0][1]
        self.url = f"https://{public_host}:{port}"
        state.base_url = self.url
        self._state, self._runner = state, runner
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        if self._own_state_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)


class SandboxThread:
    """The same sandbox in its own thread and event loop, so blocking clients (msal, exchangelib)
    and the code under test never share a loop with the server. Use as a session fixture.
    """

    def __init__(self, **kwargs: Any) -> None:
        self._kwargs = kwargs
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopping: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.sandbox: Sandbox | None = None

    def start(self, timeout_s: float = 60.0) -> SandboxThread:
        if self._thread is not None:
            raise RuntimeError("this SandboxThread was already started")
        self._thread = threading.Thread(target=self._run, name="calbroker-sandbox", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError("the sandbox did not start in time")
        if self._error is not None:
            raise RuntimeError("the sandbox failed to start") from self._error
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.close()

    async def _main(self) -> None:
        self._stopping = asyncio.Event()
        try:
            async with Sandbox(**self._kwargs) as sandbox:
                self.sandbox = sandbox
                self._ready.set()
                await self._stopping.wait()
        except BaseException as exc:  # noqa: BLE001  # any start-up failure is re-raised in the starting thread
            self._error = exc
            self._ready.set()

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._loop is not None and self._stopping is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(timeout_s)

    def __enter__(self) -> SandboxThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def call(self, fn: Callable[[SandboxState], T]) -> T:
        """Run `fn(state)` on the sandbox's loop (the only thread that may touch its state)."""
        if self._loop is None or self.sandbox is None:
            raise RuntimeError("the sandbox thread is not running")
        state = self.sandbox.state

        async def run() -> T:
            return fn(state)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result()

    def _sandbox(self) -> Sandbox:
        if self.sandbox is None:
            raise RuntimeError("the sandbox thread is not running")
        return self.sandbox

    @property
    def state(self) -> SandboxState:
        return self._sandbox().state

    @property
    def url(self) -> str:
        return self._sandbox().url

    @property
    def ca_path(self) -> Path:
        return self._sandbox().ca_path

    @property
    def directory(self) -> Directory:
        return self._sandbox().directory

    @property
    def authority_host(self) -> str:
        return self._sandbox().authority_host

    @property
    def graph_url(self) -> str:
        return self._sandbox().graph_url

    @property
    def ews_url(self) -> str:
        return self._sandbox().ews_url

    @property
    def autodiscover_host(self) -> str:
        return self._sandbox().autodiscover_host


def start_sandbox_in_thread(**kwargs: Any) -> SandboxThread:
    """Start a `SandboxThread` (same arguments as `Sandbox`); call `.stop()` when done."""
    return SandboxThread(**kwargs).start()


def describe(sandbox: Sandbox) -> str:
    """A human summary of what the sandbox serves: URLs, tenants, apps and secrets, EWS accounts."""
    state = sandbox.state
    lines = [
        f"calbroker sandbox (seed {state.seed}, calendars around {state.anchor.isoformat()})",
        f"  authority host : {sandbox.authority_host}   (msal: instance_discovery=False, verify=CA)",
        f"  graph          : {sandbox.graph_url}",
        f"  ews            : {sandbox.ews_url}",
        f"  autodiscover   : {sandbox.url}/autodiscover/autodiscover.svc (and .xml)",
        f"  CA certificate : {sandbox.ca_path}",
        f"  control plane  : {sandbox.url}/_sandbox/tenants",
        "",
    ]
    for tenant in state.directory.tenants.values():
        lines.append(
            f"tenant {tenant.key}: {tenant.id}  domains {', '.join(tenant.all_domains)}  ({tenant.exchange.value})"
        )
        for app in state.directory.apps.values():
            if app.home_tenant_id != tenant.id:
                continue
            secret = next((s for s in app.secrets), None)
            credential = (
                f"secret {secret.value}" + (" (EXPIRED)" if secret.expires <= state.clock() else "")
                if secret
                else f"certificate {app.certificates[0].thumbprint_sha1}"
                if app.certificates
                else "no credential"
            )
            lines.append(f"  app {app.key:<22} client_id {app.client_id}  {credential}")
        for account in tenant.service_accounts.values():
            lines.append(
                f"  EWS account {account.netbios_domain}\\{account.username:<15} "
                f"password {account.password}  access {account.access.value}"
            )
    lines.append("")
    lines.append("well-known mailboxes (password in /_sandbox/tenants):")
    for role, email in WELL_KNOWN.items():
        mailbox = state.directory.mailbox(email)
        password = f"  password {mailbox.password}" if mailbox is not None and mailbox.password else ""
        lines.append(f"  {role:<28} {email}{password}")
    return "\n".join(lines)


def this_week_monday(today: date) -> date:
    """The calendar anchor that centres the seeded calendars on `today`'s week (`--anchor this-week`)."""
    return today - timedelta(days=today.weekday())


def run_sandbox_cli(
    port: int = 8443,
    seed: int = 0,
    latency_ms: float = 0,
    state_dir: Path | None = None,
    *,
    host: str = "127.0.0.1",
    anchor: date = DEFAULT_ANCHOR,
    allow_http_notification_urls: bool = False,
    out: TextIO | None = None,
) -> int:
    """Serve until Ctrl-C, after printing what the sandbox serves (for `calbroker sandbox`)."""
    stream = out or sys.stdout
    directory = state_dir or Path(".calbroker-sandbox")

    async def main() -> None:
        async with Sandbox(
            seed=seed,
            host=host,
            port=port,
            state_dir=directory,
            latency_ms=latency_ms,
            anchor=anchor,
            allow_http_notification_urls=allow_http_notification_urls,
        ) as sandbox:
            print(describe(sandbox), file=stream, flush=True)
            await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
    print("sandbox stopped", file=stream)
    return 0
