"""The control plane under `/_sandbox/` (JSON, no auth): what tests, the demo and bench/ use to see
and steer the sandbox.

- `GET /_sandbox/health`; `GET /_sandbox/tenants` — tenants, users (passwords), rooms, room lists,
  groups, app registrations (client ids, secrets, certificate PEMs and thumbprints), consent,
  EWS service accounts, the CA PEM and the well-known test mailboxes.
- `GET|PATCH /_sandbox/settings` — limits and the base round-trip latency (`latency_ms`);
  `PUT /_sandbox/latency {"ms": 20}` is a shortcut.
- `GET /_sandbox/stats`, `DELETE /_sandbox/stats` — request counters per route key (and per
  mailbox, client and status) / reset them, together with the throttling windows.
- `GET|POST|DELETE /_sandbox/faults`, `DELETE /_sandbox/faults/{id}` — fault rules (see `faults`).
- `POST /_sandbox/reset {"seed"?, "anchor"?}` — back to the seed (directory, consent, calendars,
  subscriptions, faults, stats, settings).
- `GET|POST /_sandbox/mailboxes/{email}/events` (window `?start=&end=`; body = Graph event JSON),
  `PATCH|DELETE /_sandbox/mailboxes/{email}/events/{id}` (PATCH also takes `{"shift_minutes": n}`),
  `POST …/events/{id}/respond {"response": "accepted"}` — edits as if made in Outlook; change
  notifications fire.
- `GET /_sandbox/subscriptions`, `POST /_sandbox/subscriptions/{id}/lifecycle {"event": …,
  "variant"?: "organizationId"}`, `POST /_sandbox/subscriptions/{id}/expire`, `GET /_sandbox/deliveries`.
- `POST /_sandbox/delta/expire {"mailbox"?}` — forget calendarView delta tokens (their next use
  answers 410 Gone).
- `GET /_sandbox/ews/subscriptions`; `POST /_sandbox/ews/restart` — the EWS process restarts (every
  streaming subscription is lost, open streams close); `POST /_sandbox/ews/sync/expire` —
  SyncFolderItems states stop being accepted (ErrorInvalidSyncStateData).
- `POST|DELETE /_sandbox/tenants/{tenant}/consent/{client_id}` — grant or revoke admin consent
  (revoking sends `reauthorizationRequired` for the app's subscriptions in the tenant);
  `PUT /_sandbox/apps/{client_id}/redirect_uris {"uris": [...]}`.
- `POST /_sandbox/tokens {"tenant", "client_id", "expires_in"?}` — mint an app token directly.
- `GET /_sandbox/snapshot` — SHA-256 of the canonical calendar dump (determinism checks).
"""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import date, datetime, time, timedelta
from typing import Any

from aiohttp import web

from calbroker.sandbox import timezones
from calbroker.sandbox.directory import AppRegistration, Mailbox, Tenant
from calbroker.sandbox.entra import EntraAuthority
from calbroker.sandbox.events import CalendarError, Event, Response
from calbroker.sandbox.ews import EwsStreams
from calbroker.sandbox.graph import DeltaBook, GraphError, SubscriptionBook, parse_draft, parse_event
from calbroker.sandbox.seed import WELL_KNOWN
from calbroker.sandbox.state import SandboxState
from calbroker.sandbox.timezones import parse_iso_instant

__all__ = ["describe_tenants", "routes"]


class ControlError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _mailbox_json(state: SandboxState, tenant: Tenant, mailbox: Mailbox) -> dict[str, Any]:
    hours = mailbox.working_hours
    scope = tenant.groups.get(tenant.scope_group)
    item: dict[str, Any] = {
        "id": mailbox.id,
        "email": mailbox.email,
        "display_name": mailbox.display_name,
        "aliases": list(mailbox.aliases),
        "time_zone": mailbox.time_zone,
        "working_hours": {
            "days": list(hours.days),
            "start": hours.start.isoformat(),
            "end": hours.end.isoformat(),
            "time_zone": hours.time_zone,
            "windows_time_zone": hours.windows_time_zone,
        },
        "in_scope": bool(scope and mailbox.email in scope.members),
    }
    if mailbox.is_room:
        room_list = next((r.email for r in tenant.room_lists.values() if mailbox.email in r.rooms), None)
        item.update(
            {"capacity": mailbox.capacity, "building": mailbox.building, "floor": mailbox.floor, "room_list": room_list}
        )
    else:
        item.update(
            {
                "user_principal_name": mailbox.user_principal_name,
                "password": mailbox.password,
                "online_meeting_providers": list(mailbox.online_meeting_providers),
                "is_admin": mailbox.is_admin,
                "job_title": mailbox.job_title,
            }
        )
    return item


def _app_json(state: SandboxState, app: AppRegistration) -> dict[str, Any]:
    now = state.clock()
    consented = [t.key for t in state.directory.tenants.values() if app.client_id in t.service_principals]
    return {
        "key": app.key,
        "client_id": app.client_id,
        "display_name": app.display_name,
        "home_tenant": next((t.key for t in state.directory.tenants.values() if t.id == app.home_tenant_id), None),
        "home_tenant_id": app.home_tenant_id,
        "multi_tenant": app.multi_tenant,
        "application_permissions": sorted(app.application_permissions),
        "delegated_permissions": sorted(app.delegated_permissions),
        "secrets": [
            {"value": s.value, "hint": s.hint, "expires": s.expires.isoformat(), "expired": s.expires <= now}
            for s in app.secrets
        ],
        "certificates": [
            {
                "thumbprint_sha1": c.thumbprint_sha1,
                "thumbprint_sha256": c.thumbprint_sha256,
                "certificate_pem": c.certificate_pem,
                "private_key_pem": c.private_key_pem,
                "expires": c.expires.isoformat(),
            }
            for c in app.certificates
        ],
        "consented_tenants": consented,
        "redirect_uris": list(app.redirect_uris),
        "note": app.note,
    }


def describe_tenants(state: SandboxState) -> dict[str, Any]:
    """Everything a test or the demo needs to connect to the sandbox's tenants."""
    directory = state.directory
    tenants = []
    for tenant in directory.tenants.values():
        principals = [
            {
                "client_id": p.client_id,
                "app": directory.apps[p.client_id].key if p.client_id in directory.apps else None,
                "roles": sorted(p.app_roles),
                "delegated_scopes": sorted(p.delegated_scopes),
                "access_policy_group": p.access_policy_group,
                "teams_policy": p.teams_policy,
            }
            for p in tenant.service_principals.values()
        ]
        tenants.append(
            {
                "key": tenant.key,
                "id": tenant.id,
                "display_name": tenant.display_name,
                "domains": list(tenant.domains),
                "initial_domain": tenant.initial_domain,
                "exchange": tenant.exchange.value,
                "ews_url": state.base_url + tenant.ews_path if tenant.exchange.value == "on_premises" else None,
                "scope_group": tenant.scope_group,
                "admin": tenant.admin_email,
                "users": [_mailbox_json(state, tenant, m) for m in sorted(tenant.users(), key=lambda m: m.email)],
                "rooms": [_mailbox_json(state, tenant, m) for m in directory.rooms(tenant)],
                "room_lists": [
                    {"id": r.id, "email": r.email, "display_name": r.display_name, "rooms": list(r.rooms)}
                    for r in directory.room_lists(tenant)
                ],
                "groups": [
                    {"id": g.id, "email": g.email, "display_name": g.display_name, "members": sorted(g.members)}
                    for g in tenant.groups.values()
                ],
                "service_principals": principals,
                "service_accounts": [
                    {
                        "username": a.username,
                        "domain": a.netbios_domain,
                        "user_principal_name": a.user_principal_name,
                        "password": a.password,
                        "access": a.access.value,
                        "impersonation_scope": a.impersonation_scope,
                    }
                    for a in tenant.service_accounts.values()
                ],
            }
        )
    return {
        "seed": state.seed,
        "anchor": state.anchor.isoformat(),
        "authority_host": state.base_url,
        "graph_url": state.graph_url,
        "ews_url": state.base_url + "/EWS/Exchange.asmx",
        "ca_pem": state.keys.ca_path.read_text(),
        "well_known": dict(WELL_KNOWN),
        "tenants": tenants,
        "apps": [_app_json(state, a) for a in directory.apps.values()],
    }


def _event_summary(event: Event) -> dict[str, Any]:
    return {
        "id": event.id,
        "subject": event.subject,
        "start": event.start_utc.isoformat(),
        "end": event.end_utc.isoformat(),
        "time_zone": event.time_zone,
        "show_as": event.show_as.value,
        "type": event.type.value,
        "series_master_id": event.series_master_id,
        "is_all_day": event.is_all_day,
        "is_cancelled": event.is_cancelled,
        "is_private": event.is_private,
        "organizer": event.organizer_email,
        "response": event.response.value,
        "ical_uid": event.ical_uid,
        "transaction_id": event.transaction_id,
        "attendees": [{"email": a.email, "type": a.type.value, "response": a.response.value} for a in event.attendees],
        "join_url": event.online_meeting.join_url if event.online_meeting else None,
    }


async def _json(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        loaded = await request.json()
    except ValueError:
        raise ControlError(400, "the body must be JSON") from None
    if not isinstance(loaded, dict):
        raise ControlError(400, "the body must be a JSON object")
    return loaded


def _mailbox(state: SandboxState, request: web.Request) -> Mailbox:
    mailbox = state.directory.mailbox(request.match_info["email"])
    if mailbox is None:
        raise ControlError(404, f"no mailbox {request.match_info['email']!r}")
    return mailbox


def _tenant(state: SandboxState, ref: str) -> Tenant:
    tenant = state.directory.tenant(ref)
    if tenant is None:
        raise ControlError(404, f"no tenant {ref!r}")
    return tenant


def routes(
    state: SandboxState,
    subscriptions: SubscriptionBook,
    deltas: DeltaBook,
    streams: EwsStreams,
    authority: EntraAuthority,
) -> list[web.RouteDef]:
    """The aiohttp routes of the control plane."""

    def handler(fn: Any) -> Any:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            try:
                result = await fn(request)
            except ControlError as exc:
                return web.json_response({"error": exc.message}, status=exc.status)
            except GraphError as exc:
                return web.json_response({"error": exc.message, "code": exc.code}, status=exc.status)
            except CalendarError as exc:
                return web.json_response({"error": exc.message, "code": exc.code}, status=400)
            except (ValueError, KeyError) as exc:
                return web.json_response({"error": str(exc)}, status=400)
            if isinstance(result, web.StreamResponse):
                return result
            return web.json_response(result)

        return wrapped

    async def health(request: web.Request) -> Any:
        return {"status": "ok", "url": state.base_url}

    async def tenants(request: web.Request) -> Any:
        return describe_tenants(state)

    async def get_settings(request: web.Request) -> Any:
        return state.settings.to_json()

    async def patch_settings(request: web.Request) -> Any:
        state.settings.update(await _json(request))
        return state.settings.to_json()

    async def put_latency(request: web.Request) -> Any:
        body = await _json(request)
        state.settings.update({"latency_ms": float(body.get("ms", body.get("latency_ms", 0)))})
        return {"latency_ms": state.settings.latency_ms}

    async def get_stats(request: web.Request) -> Any:
        return state.stats.to_json()

    async def reset_stats(request: web.Request) -> Any:
        state.stats.reset()
        state.throttle.reset()  # the rate-limit windows are counters too
        return state.stats.to_json()

    async def list_faults(request: web.Request) -> Any:
        return {"faults": [r.to_json() for r in state.faults.rules()]}

    async def add_fault(request: web.Request) -> Any:
        rule = state.faults.add(await _json(request))
        return web.json_response(rule.to_json(), status=201)

    async def clear_faults(request: web.Request) -> Any:
        state.faults.clear()
        return {"faults": []}

    async def delete_fault(request: web.Request) -> Any:
        if not state.faults.remove(request.match_info["id"]):
            raise ControlError(404, "no such fault")
        return web.Response(status=204)

    async def reset(request: web.Request) -> Any:
        body = await _json(request)
        anchor = date.fromisoformat(body["anchor"]) if body.get("anchor") else None
        state.reset(seed=int(body["seed"]) if "seed" in body else None, anchor=anchor)
        return {"seed": state.seed, "anchor": state.anchor.isoformat()}

    async def list_events(request: web.Request) -> Any:
        mailbox = _mailbox(state, request)
        start_raw, end_raw = request.query.get("start"), request.query.get("end")
        if start_raw and end_raw:
            events = state.calendars.occurrences(
                mailbox.email, parse_iso_instant(start_raw), parse_iso_instant(end_raw)
            )
        else:
            events = state.calendars.events(mailbox.email)
        return {"mailbox": mailbox.email, "events": [_event_summary(e) for e in events]}

    async def add_event(request: web.Request) -> Any:
        mailbox = _mailbox(state, request)
        event = state.calendars.create(mailbox.email, parse_draft(await _json(request), mailbox.time_zone))
        return web.json_response(_event_summary(event), status=201)

    async def patch_event(request: web.Request) -> Any:
        mailbox = _mailbox(state, request)
        event = state.calendars.get(mailbox.email, request.match_info["id"])
        if event is None:
            raise ControlError(404, "no such event")
        body = await _json(request)
        if "shift_minutes" in body:
            delta = timedelta(minutes=float(body.pop("shift_minutes")))
            changes: dict[str, Any] = {"start": event.start + delta, "end": event.end + delta}
        else:
            changes = {}
        changes.update(parse_event(body, event.time_zone) if body else {})
        changes.pop("transaction_id", None)
        updated = state.calendars.update(mailbox.email, event.id, changes)
        return _event_summary(updated)

    async def delete_event(request: web.Request) -> Any:
        mailbox = _mailbox(state, request)
        state.calendars.delete(mailbox.email, request.match_info["id"])
        return web.Response(status=204)

    async def respond_event(request: web.Request) -> Any:
        mailbox = _mailbox(state, request)
        body = await _json(request)
        updated = state.calendars.respond(
            mailbox.email, request.match_info["id"], Response(body.get("response", "accepted"))
        )
        return _event_summary(updated)

    async def patch_working_hours(request: web.Request) -> Any:
        mailbox = _mailbox(state, request)
        body = await _json(request)
        unknown = set(body) - {"time_zone", "days", "start", "end"}
        if unknown:
            raise ControlError(400, f"unknown working hours fields: {sorted(unknown)}")
        hours = mailbox.working_hours
        changes: dict[str, Any] = {}
        if "time_zone" in body:
            timezones.zone(str(body["time_zone"]))  # refuses an unknown zone
            changes["time_zone"] = str(body["time_zone"])
        if "days" in body:
            changes["days"] = tuple(str(day).lower() for day in body["days"])
        for name in ("start", "end"):
            if name in body:
                changes[name] = time.fromisoformat(str(body[name]))
        updated = dataclasses.replace(mailbox, working_hours=dataclasses.replace(hours, **changes))
        state.directory.update_mailbox(updated)
        return _mailbox_json(state, state.directory.tenant_of(updated), updated)

    async def list_subscriptions(request: web.Request) -> Any:
        return {"subscriptions": [{**s.to_json(state.graph_url), "mailbox": s.mailbox} for s in subscriptions.all()]}

    async def lifecycle(request: web.Request) -> Any:
        body = await _json(request)
        try:
            return await subscriptions.lifecycle(
                request.match_info["id"], str(body.get("event", "")), variant=str(body.get("variant", "documented"))
            )
        except KeyError:
            raise ControlError(404, "no such subscription") from None

    async def expire_deltas(request: web.Request) -> Any:
        body = await _json(request)
        mailbox = body.get("mailbox")
        return {"expired": deltas.expire(str(mailbox) if mailbox else None)}

    async def expire(request: web.Request) -> Any:
        if not subscriptions.expire(request.match_info["id"]):
            raise ControlError(404, "no such subscription")
        return {"expired": request.match_info["id"]}

    async def deliveries(request: web.Request) -> Any:
        return {"deliveries": list(subscriptions.deliveries)}

    async def ews_subscriptions(request: web.Request) -> Any:
        return {
            "subscriptions": [
                {"id": s.id, "mailbox": s.mailbox, "account": s.account, "event_types": sorted(s.event_types)}
                for s in streams.subscriptions.values()
            ],
            "hanging": dict(streams.hanging),
        }

    async def ews_restart(request: web.Request) -> Any:
        return {"dropped": streams.restart()}

    async def ews_expire_sync(request: web.Request) -> Any:
        streams.expire_sync_states()
        return {"expired": True}

    async def grant(request: web.Request) -> Any:
        tenant = _tenant(state, request.match_info["tenant"])
        client_id = request.match_info["client_id"].lower()
        if client_id not in state.directory.apps:
            raise ControlError(404, "no such app")
        principal = state.directory.grant_consent(tenant, client_id, at=state.clock())
        return {"tenant": tenant.id, "client_id": client_id, "roles": sorted(principal.app_roles)}

    async def revoke(request: web.Request) -> Any:
        tenant = _tenant(state, request.match_info["tenant"])
        client_id = request.match_info["client_id"].lower()
        state.directory.revoke_consent(tenant, client_id)
        subscriptions.consent_revoked(tenant.id, client_id)
        return web.Response(status=204)

    async def redirect_uris(request: web.Request) -> Any:
        app = state.directory.app(request.match_info["client_id"])
        if app is None:
            raise ControlError(404, "no such app")
        app.redirect_uris = [str(u) for u in (await _json(request)).get("uris", [])]
        return {"client_id": app.client_id, "redirect_uris": app.redirect_uris}

    async def mint(request: web.Request) -> Any:
        body = await _json(request)
        tenant = _tenant(state, str(body.get("tenant", "")))
        client_id = str(body.get("client_id", "")).lower()
        app = state.directory.app(client_id)
        principal = tenant.service_principals.get(client_id)
        if app is None or principal is None:
            raise ControlError(404, "the app has no service principal in that tenant")
        if "roles" in body:
            principal = dataclasses.replace(principal, app_roles=frozenset(body["roles"]))
        saved = state.settings.token_lifetime_s
        state.settings.token_lifetime_s = int(body.get("expires_in", saved))
        try:
            token = authority.app_token(tenant, app, principal, certificate=False)
        finally:
            state.settings.token_lifetime_s = saved
        return {"access_token": token, "token_type": "Bearer"}

    async def snapshot(request: web.Request) -> Any:
        raw = state.calendars.snapshot()
        return {
            "sha256": hashlib.sha256(raw).hexdigest(),
            "bytes": len(raw),
            "at": datetime.now().astimezone().isoformat(),
        }

    prefix = "/_sandbox"
    return [
        web.get(prefix + "/health", handler(health)),
        web.get(prefix + "/tenants", handler(tenants)),
        web.get(prefix + "/settings", handler(get_settings)),
        web.patch(prefix + "/settings", handler(patch_settings)),
        web.put(prefix + "/latency", handler(put_latency)),
        web.get(prefix + "/stats", handler(get_stats)),
        web.delete(prefix + "/stats", handler(reset_stats)),
        web.get(prefix + "/faults", handler(list_faults)),
        web.post(prefix + "/faults", handler(add_fault)),
        web.delete(prefix + "/faults", handler(clear_faults)),
        web.delete(prefix + "/faults/{id}", handler(delete_fault)),
        web.post(prefix + "/reset", handler(reset)),
        web.get(prefix + "/mailboxes/{email}/events", handler(list_events)),
        web.post(prefix + "/mailboxes/{email}/events", handler(add_event)),
        web.patch(prefix + "/mailboxes/{email}/events/{id}", handler(patch_event)),
        web.delete(prefix + "/mailboxes/{email}/events/{id}", handler(delete_event)),
        web.post(prefix + "/mailboxes/{email}/events/{id}/respond", handler(respond_event)),
        web.patch(prefix + "/mailboxes/{email}/working_hours", handler(patch_working_hours)),
        web.get(prefix + "/subscriptions", handler(list_subscriptions)),
        web.post(prefix + "/subscriptions/{id}/lifecycle", handler(lifecycle)),
        web.post(prefix + "/subscriptions/{id}/expire", handler(expire)),
        web.get(prefix + "/deliveries", handler(deliveries)),
        web.post(prefix + "/delta/expire", handler(expire_deltas)),
        web.get(prefix + "/ews/subscriptions", handler(ews_subscriptions)),
        web.post(prefix + "/ews/restart", handler(ews_restart)),
        web.post(prefix + "/ews/sync/expire", handler(ews_expire_sync)),
        web.post(prefix + "/tenants/{tenant}/consent/{client_id}", handler(grant)),
        web.delete(prefix + "/tenants/{tenant}/consent/{client_id}", handler(revoke)),
        web.put(prefix + "/apps/{client_id}/redirect_uris", handler(redirect_uris)),
        web.post(prefix + "/tokens", handler(mint)),
        web.get(prefix + "/snapshot", handler(snapshot)),
    ]
