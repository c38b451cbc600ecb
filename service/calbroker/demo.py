"""`calbroker demo`: the whole product on a laptop, against the bundled Microsoft 365 sandbox.

It starts the sandbox (HTTPS, its own CA) in a thread, points a `sandbox` cloud at it, creates a
demo application and its connections through the production verify-then-save path (Graph for
Contoso, EWS for Fabrikam's on-premises Exchange, and Fabrikam's Teams-only Graph app that gives
its EWS organizers Teams links: the hybrid set-up), asks for both organisations' mailboxes to be
synced, then serves the API with one sync worker beside it and prints what to type.

The operator's multi-tenant app is the sandbox's, so an authorize link offers all four connect
methods, and connections made through links trust the sandbox's CA (they are in its cloud). The
API key lives in `<data dir>/demo.json` only (keys are stored hashed): a restart on the same data
dir keeps the key found there while it still works, so scripts and shells keep theirs.
"""

from __future__ import annotations

import html
import json
import os
import shlex
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from litestar import MediaType, get
from litestar.params import Parameter

from calbroker.api.connections import offered_methods
from calbroker.config import OperatorApp, Settings, sandbox_cloud
from calbroker.domain.connections import (
    AccessLevel,
    ConnectionMethod,
    ConnectionPurpose,
    EwsServiceAccount,
    GraphClientSecret,
)
from calbroker.sandbox import SandboxThread, start_sandbox_in_thread, this_week_monday
from calbroker.services import ConnectionDraft, Services, verify_and_save
from calbroker.store.applications import authenticate, create_application, list_applications, rotate_key
from calbroker.store.connect_links import create_link
from calbroker.store.connections import delete_connection, list_connections
from calbroker.store.cronofy import authenticate_client, issue_client, issue_service_account_token
from calbroker.store.sync_state import ScopeMode

__all__ = [
    "DemoWorld",
    "demo_connected",
    "demo_settings",
    "prepare_demo",
    "read_demo_file",
    "start_demo_sandbox",
    "write_demo_file",
]

DEMO_APPLICATION = "calbroker demo"
CONNECTED_PATH = "/demo/connected"
"""Where the demo's authorize links send the admin back: a page of the demo, standing in for an application."""
LINK_LIFETIME = timedelta(days=7)


@dataclass(frozen=True, slots=True)
class DemoWorld:
    """What the demo set up, as written to `<data dir>/demo.json`."""

    base_url: str
    api_key: str
    application_id: str
    sandbox_url: str
    sandbox_ca: str
    mailboxes: dict[str, list[str]]
    connections: dict[str, str]
    cronofy: dict[str, Any]
    """The Cronofy-compatible API: base_url, client_id, client_secret, service_account_tokens."""
    connect_link: str
    """A single-use authorize link offering all four connect methods (a new one every start)."""
    windows: dict[str, dict[str, str]]
    """Ready-made `start`/`end` pairs (tomorrow, the next five days), so examples need no date arithmetic."""
    api_key_kept: bool = False
    """The API key is the one demo.json held before this start."""

    def to_json(self) -> dict[str, Any]:
        return {
            "base_url": self.base_url,
            "api_key": self.api_key,
            "application_id": self.application_id,
            "sandbox_url": self.sandbox_url,
            "sandbox_ca": self.sandbox_ca,
            "mailboxes": self.mailboxes,
            "connections": self.connections,
            "cronofy": self.cronofy,
            "connect_link": self.connect_link,
            "windows": self.windows,
        }


def start_demo_sandbox(settings: Settings, *, seed: int, port: int, latency_ms: float) -> SandboxThread:
    """The sandbox, with calendars around the current week so the demo always has data."""
    return start_sandbox_in_thread(
        seed=seed,
        port=port,
        state_dir=settings.data_dir / "sandbox",
        latency_ms=latency_ms,
        anchor=this_week_monday(datetime.now(UTC).date()),
        allow_http_notification_urls=True,  # the demo API listens on plain http locally
    )


def demo_settings(settings: Settings, sandbox: SandboxThread) -> Settings:
    """The same settings with the sandbox as a cloud and its multi-tenant app as the operator's.

    The operator app's cloud is also the cloud of connections typed on the connect pages (an EWS
    server there trusts the sandbox's CA). The sandbox's endpoints are on loopback, so allow that.
    Channels may deliver to plain-http receivers on this machine, so a first webhook needs no
    certificate.
    """
    clouds = {**settings.clouds, "sandbox": sandbox_cloud(sandbox.url, sandbox.ca_path)}
    operator = next(app for app in sandbox.directory.apps.values() if app.key == "tailspin-operator")
    operator_app = OperatorApp(operator.client_id, operator.secrets[0].value, "sandbox")
    channels = replace(settings.channels, allow_loopback_http=True)
    return replace(settings, clouds=clouds, operator_app=operator_app, allow_private_upstreams=True, channels=channels)


def read_demo_file(path: Path) -> dict[str, Any]:
    """What the previous start wrote (its API key and Cronofy secret), or nothing."""
    try:
        found = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


async def _demo_key(services: Services, remembered: str | None) -> tuple[uuid.UUID, str, bool]:
    """The demo application's id and key: the remembered key while it still works, else a new one.

    Keys are stored hashed, so only demo.json can hand one back; a key that no longer
    authenticates (revoked, rotated, another data dir's) is replaced, and the caller says so.
    """
    async with services.pool.acquire() as conn:
        if remembered:
            found = await authenticate(conn, remembered)
            if found is not None and found[0].name == DEMO_APPLICATION and found[1].expires_at is None:
                return found[0].id, remembered, True
        for application, _keys in await list_applications(conn):
            if application.name == DEMO_APPLICATION and application.revoked_at is None:
                issued = await rotate_key(conn, application.id, actor="demo")
                return application.id, issued.token, False
        issued = await create_application(conn, DEMO_APPLICATION, actor="demo")
        return issued.application.id, issued.token, False


def _windows(today: date) -> dict[str, dict[str, str]]:
    start = datetime.combine(today + timedelta(days=1), datetime.min.time(), UTC)

    def span(days: int) -> dict[str, str]:
        return {"start": start.isoformat(), "end": (start + timedelta(days=days)).isoformat()}

    return {"tomorrow": span(1), "next_5_days": span(5)}


async def prepare_demo(
    services: Services, sandbox: SandboxThread, base_url: str, previous: dict[str, Any] | None = None
) -> DemoWorld:
    """Create (or refresh) the demo application, its verified connections and an authorize link.

    `previous` is what the last start wrote to demo.json: its API key and Cronofy client secret
    are kept while they still work.
    """
    previous = previous or {}
    application_id, api_key, kept = await _demo_key(services, previous.get("api_key"))
    async with services.pool.acquire() as conn:
        for old in await list_connections(conn, application_id):
            await delete_connection(conn, old, actor="demo")  # endpoints point at an old sandbox port
    directory = sandbox.directory
    contoso = directory.tenants["contoso"]
    fabrikam = directory.tenants["fabrikam"]
    graph_app = next(app for app in directory.apps.values() if app.key == "contoso-secret")
    service_account = fabrikam.service_accounts["svc-full"]
    graph = await verify_and_save(
        services,
        ConnectionDraft(
            application_id=application_id,
            method=ConnectionMethod.GRAPH_APP,
            access_level=AccessLevel.FULL,
            credentials=GraphClientSecret(contoso.id, graph_app.client_id, graph_app.secrets[0].value),
            domains=list(contoso.domains),
            test_mailbox="adele.vance@contoso.com",
            display_name="Contoso (Microsoft 365, Graph)",
            cloud="sandbox",
            tenant_id=contoso.id,
        ),
        actor="demo",
    )
    ews = await verify_and_save(
        services,
        ConnectionDraft(
            application_id=application_id,
            method=ConnectionMethod.EWS,
            access_level=AccessLevel.FULL,
            credentials=EwsServiceAccount(
                sandbox.ews_url, f"FABRIKAM\\{service_account.username}", service_account.password, "basic"
            ),
            domains=list(fabrikam.domains),
            test_mailbox="anna.schmidt@fabrikam.com",
            display_name="Fabrikam (Exchange on-premises, EWS)",
            cloud="sandbox",
        ),
        actor="demo",
    )
    teams_app = next(app for app in directory.apps.values() if app.key == "fabrikam-teams")
    teams = await verify_and_save(
        services,
        ConnectionDraft(
            application_id=application_id,
            method=ConnectionMethod.GRAPH_APP,
            access_level=AccessLevel.FULL,
            credentials=GraphClientSecret(fabrikam.id, teams_app.client_id, teams_app.secrets[0].value),
            domains=list(fabrikam.domains),
            test_mailbox="anna.schmidt@fabrikam.com",
            display_name="Fabrikam Teams meetings (Graph, hybrid)",
            cloud="sandbox",
            tenant_id=fabrikam.id,
            purpose=ConnectionPurpose.ONLINE_MEETINGS,
        ),
        actor="demo",
    )

    # Cronofy's SDKs: client credentials (kept like the key) and a token per (new) connection.
    remembered_client = previous.get("cronofy")
    if not isinstance(remembered_client, dict):
        remembered_client = {}
    async with services.pool.acquire() as conn:
        client_id, client_secret = remembered_client.get("client_id"), remembered_client.get("client_secret")
        found = (
            await authenticate_client(conn, client_id, client_secret)
            if isinstance(client_id, str) and isinstance(client_secret, str)
            else None
        )
        if found is None or found.application_id != application_id:
            issued_client = await issue_client(conn, services.keyring, application_id, actor="demo")
            client_id, client_secret = issued_client.client.client_id, issued_client.client_secret
        tokens = {
            name: await issue_service_account_token(conn, application_id, connection.id, actor="demo")
            for name, connection in (("contoso", graph), ("fabrikam", ews))
        }
        link = await create_link(
            conn,
            application_id=application_id,
            redirect_url=f"{base_url}{CONNECTED_PATH}",
            state="demo",
            methods=offered_methods(services.settings, None),
            access_level=None,
            expires_in=LINK_LIFETIME,
            actor="demo",
        )
    cronofy = {
        "base_url": f"{base_url}/compat/cronofy",
        "client_id": client_id,
        "client_secret": client_secret,
        "service_account_tokens": tokens,
    }

    def users(tenant_key: str) -> list[str]:
        tenant = directory.tenants[tenant_key]
        return sorted(m.email for m in tenant.mailboxes.values() if not m.is_room)

    # The worker keeps these copies fresh; free/busy says `source: cache` once they are. Fabrikam's
    # service account may impersonate only its scope group: the others stay live (and say why).
    impersonable = set(fabrikam.groups[fabrikam.scope_group].members)
    people = [email for email in users("fabrikam") if email in impersonable]
    await services.sync.scopes.set(application_id, graph.id, ScopeMode.ALL, [])
    await services.sync.scopes.set(application_id, ews.id, ScopeMode.LIST, people)

    return DemoWorld(
        base_url=base_url,
        api_key=api_key,
        application_id=str(application_id),
        sandbox_url=sandbox.url,
        sandbox_ca=str(sandbox.ca_path),
        mailboxes={"contoso": users("contoso"), "fabrikam": users("fabrikam")},
        connections={"contoso": str(graph.id), "fabrikam": str(ews.id), "fabrikam_teams": str(teams.id)},
        cronofy=cronofy,
        connect_link=f"{base_url}/connect/{link.token}",
        windows=_windows(datetime.now(UTC).date()),
        api_key_kept=kept,
    )


@get(CONNECTED_PATH, media_type=MediaType.HTML, include_in_schema=False, sync_to_thread=False)
def demo_connected(
    connection_id: str | None = None,
    link_state: Annotated[str | None, Parameter(query="state")] = None,
    error: str | None = None,
) -> str:
    """Where the demo's authorize links return: the page an application would show, with what came back."""
    if connection_id is None:
        heading, detail = "Not connected", f"The link came back without a connection ({error or 'no error given'})."
    else:
        heading = "Calendar connected"
        detail = (
            f"Connection <code id=connection-id>{html.escape(connection_id)}</code> (state "
            f"<code>{html.escape(link_state or '')}</code>). Its mailboxes answer <code>POST /v1/free_busy</code> "
            f"with the demo's API key now; <code>GET /v1/connections/{html.escape(connection_id)}</code> describes it."
        )
    return (
        f"<!doctype html><html lang=en><meta charset=utf-8><title>calbroker demo: {heading}</title>"
        f"<h1>{heading}</h1><p>{detail}</p></html>"
    )


def write_demo_file(path: Path, world: DemoWorld) -> None:
    """demo.json holds a live API key, so it is private to the user (0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(world.to_json(), handle, indent=2)
        handle.write("\n")


def demo_instructions(world: DemoWorld, demo_file: Path) -> str:
    """What to paste next: free/busy, availability across both tenants, an error, and an authorize link."""
    start = datetime.fromisoformat(world.windows["next_5_days"]["start"])
    end = datetime.fromisoformat(world.windows["next_5_days"]["end"])
    contoso = world.mailboxes["contoso"]
    fabrikam = world.mailboxes["fabrikam"]
    auth = f"Authorization: Bearer {world.api_key}"

    def curl(path: str, body: dict[str, Any], method: str = "POST") -> str:
        verb = "" if method == "POST" else f"-X {method} "
        return (
            f"curl -s {verb}{world.base_url}{path} -H {shlex.quote(auth)} -H 'Content-Type: application/json' \\\n"
            f"  -d {shlex.quote(json.dumps(body))}"
        )

    free_busy = {
        "mailboxes": ["adele.vance@contoso.com", "anna.schmidt@fabrikam.com"],
        "start": start.isoformat(),
        "end": (start + timedelta(days=1)).isoformat(),
        "tzid": "Europe/London",
    }
    availability = {
        "participants": [
            {
                # London and Berlin working hours overlap (Adele works in Los Angeles).
                "members": [{"email": "miriam.graham@contoso.com"}, {"email": "anna.schmidt@fabrikam.com"}],
                "required": "all",
            }
        ],
        "duration": {"minutes": 30},
        "query_periods": [{"start": start.isoformat(), "end": end.isoformat()}],
        "working_hours": "mailbox",
        "tzid": "Europe/London",
        "max_results": 5,
    }
    error = {"mailboxes": ["adele.vance@contoso.com"], "start": end.isoformat(), "end": start.isoformat()}
    meeting_start = start + timedelta(hours=15)
    hybrid_teams = {
        "organizer": "anna.schmidt@fabrikam.com",
        "start": meeting_start.isoformat(),
        "end": (meeting_start + timedelta(minutes=30)).isoformat(),
        "summary": "Hybrid Teams meeting",
        "attendees": [{"email": "ben.taylor@fabrikam.com"}],
        "teams_meeting": True,
    }
    return "\n".join(
        [
            f"calbroker demo: API on {world.base_url}, Microsoft 365 sandbox on {world.sandbox_url}",
            f"  api key      : {world.api_key}"
            + (" (kept from the last start)" if world.api_key_kept else " (new: any earlier demo key no longer works)"),
            f"  connections  : contoso over Graph ({len(contoso)} users), fabrikam over EWS ({len(fabrikam)} users)"
            " with Teams links through Graph (hybrid)",
            f"  cronofy      : {world.cronofy['base_url']} (point a Cronofy SDK's base URL here)",
            f"    client_id              : {world.cronofy['client_id']}",
            f"    client_secret          : {world.cronofy['client_secret']}",
            *(
                f"    service account token  : {name} {token}"
                for name, token in world.cronofy["service_account_tokens"].items()
            ),
            f"  written to   : {demo_file}",
            "",
            "# connect an organisation as a tenant admin would, in a browser: admin consent, your own app",
            "# registration, an Exchange service account or one mailbox (single use; a new one every start;",
            "# the sandbox plays Microsoft over HTTPS with its own CA, so the browser warns about its pages)",
            f"  {world.connect_link}",
            "",
            "# free/busy for a Graph mailbox and an EWS mailbox",
            curl("/v1/free_busy", free_busy),
            "",
            "# when can a Contoso (London) and a Fabrikam (Berlin) person meet for 30 minutes, in working hours?",
            curl("/v1/availability", availability),
            "",
            "# an error: the window ends before it starts",
            curl("/v1/free_busy", error),
            "",
            "# a Teams meeting for an Exchange on-premises organizer: booked over EWS, its link made through Graph",
            curl("/v1/events/demo-hybrid-teams", hybrid_teams, method="PUT"),
            "",
        ]
    )
