"""`calbroker demo`: the whole product on a laptop, against the bundled Microsoft 365 sandbox.

It starts the sandbox (HTTPS, its own CA) in a thread, points a `sandbox` cloud at it, creates a
demo application and its connections through the production verify-then-save path (Graph for
Contoso, EWS for Fabrikam's on-premises Exchange, and Fabrikam's Teams-only Graph app that gives
its EWS organizers Teams links: the hybrid set-up), asks for both organisations' mailboxes to be
synced, then serves the API with one sync worker beside it and prints what to type.
"""

from __future__ import annotations

import json
import os
import shlex
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from calbroker.config import Settings, sandbox_cloud
from calbroker.domain.connections import (
    AccessLevel,
    ConnectionMethod,
    ConnectionPurpose,
    EwsServiceAccount,
    GraphClientSecret,
)
from calbroker.sandbox import SandboxThread, start_sandbox_in_thread, this_week_monday
from calbroker.services import ConnectionDraft, Services, verify_and_save
from calbroker.store.applications import IssuedKey, create_application, list_applications, rotate_key
from calbroker.store.connections import delete_connection, list_connections
from calbroker.store.cronofy import issue_client, issue_service_account_token
from calbroker.store.sync_state import ScopeMode

__all__ = ["DemoWorld", "demo_settings", "prepare_demo", "start_demo_sandbox"]

DEMO_APPLICATION = "calbroker demo"


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
    """The same settings with the sandbox as a cloud; its endpoints are on loopback, so allow that. Channels
    may deliver to plain-http receivers on this machine, so a first webhook needs no certificate."""
    clouds = {**settings.clouds, "sandbox": sandbox_cloud(sandbox.url, sandbox.ca_path)}
    channels = replace(settings.channels, allow_loopback_http=True)
    return replace(settings, clouds=clouds, allow_private_upstreams=True, channels=channels)


async def _demo_key(services: Services) -> IssuedKey:
    async with services.pool.acquire() as conn:
        for application, _keys in await list_applications(conn):
            if application.name == DEMO_APPLICATION and application.revoked_at is None:
                # Keys are only ever shown once, so every demo start issues a fresh one.
                return await rotate_key(conn, application.id, actor="demo")
        return await create_application(conn, DEMO_APPLICATION, actor="demo")


async def prepare_demo(services: Services, sandbox: SandboxThread, base_url: str) -> DemoWorld:
    """Create (or refresh) the demo application and its verified connections."""
    issued = await _demo_key(services)
    application_id: uuid.UUID = issued.application.id
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

    # Cronofy's SDKs: fresh client credentials (shown once, like the key) and a token per connection.
    async with services.pool.acquire() as conn:
        client = await issue_client(conn, services.keyring, application_id, actor="demo")
        tokens = {
            name: await issue_service_account_token(conn, application_id, connection.id, actor="demo")
            for name, connection in (("contoso", graph), ("fabrikam", ews))
        }
    cronofy = {
        "base_url": f"{base_url}/compat/cronofy",
        "client_id": client.client.client_id,
        "client_secret": client.client_secret,
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
        api_key=issued.token,
        application_id=str(application_id),
        sandbox_url=sandbox.url,
        sandbox_ca=str(sandbox.ca_path),
        mailboxes={"contoso": users("contoso"), "fabrikam": users("fabrikam")},
        connections={"contoso": str(graph.id), "fabrikam": str(ews.id), "fabrikam_teams": str(teams.id)},
        cronofy=cronofy,
    )


def write_demo_file(path: Path, world: DemoWorld) -> None:
    """demo.json holds a live API key, so it is private to the user (0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(world.to_json(), handle, indent=2)
        handle.write("\n")


def demo_instructions(world: DemoWorld, demo_file: Path) -> str:
    """What to paste next: free/busy, availability across both tenants, and an error."""
    today = datetime.now(UTC).date()
    start = datetime.combine(today + timedelta(days=1), datetime.min.time(), UTC)
    end = start + timedelta(days=5)
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
            f"  api key      : {world.api_key}",
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
