"""Entra ID's browser pages: the sign-in form of the authorization-code flow and the admin-consent
page (Accept / Cancel, no JavaScript), each redirecting back the way Entra does.

- Authorization code + PKCE: https://learn.microsoft.com/entra/identity-platform/v2-oauth2-auth-code-flow
- Admin consent (v1 `/adminconsent`, v2 `/v2.0/adminconsent`):
  https://learn.microsoft.com/entra/identity-platform/v2-admin-consent — success redirects with
  `admin_consent=True&tenant=<guid>&scope=…&state=…`, Cancel with `error=access_denied` (AADSTS65004).
"""

from __future__ import annotations

import html
import secrets
import uuid
from datetime import timedelta
from urllib.parse import urlencode

from aiohttp import web

from calbroker.sandbox.directory import AppRegistration
from calbroker.sandbox.entra.authority import (
    GRAPH_RESOURCE,
    RESERVED_SCOPES,
    AuthorizationCode,
    EntraAuthority,
    EntraError,
    resolve_tenant,
    short_scope,
)
from calbroker.sandbox.state import SandboxState

__all__ = ["routes"]


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:Segoe UI,Helvetica,Arial,sans-serif;max-width:34rem;margin:3rem auto;color:#1b1b1b}}
.box{{border:1px solid #ccc;padding:1.5rem 2rem}} .error{{color:#a80000}}
button{{padding:.4rem 1.4rem;margin-right:.6rem}} label{{display:block;margin:.6rem 0 .2rem}}
input[type=text],input[type=password],select{{width:100%;padding:.3rem}}</style>
</head><body><div class="box"><p>Microsoft (calbroker sandbox)</p>{body}</div></body></html>"""


def _page(title: str, body: str, status: int = 200) -> web.Response:
    return web.Response(
        text=_PAGE.format(title=html.escape(title), body=body), status=status, content_type="text/html", charset="utf-8"
    )


def _hidden(fields: dict[str, str]) -> str:
    return "".join(
        f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
        for k, v in fields.items()
        if v is not None
    )


def _error_page(exc: EntraError) -> web.Response:
    body = (
        "<h1>Sorry, but we’re having trouble signing you in.</h1>"
        f'<p class="error">AADSTS{exc.code}: {html.escape(exc.message)}</p>'
    )
    return _page("Sign in error", body, status=exc.status)


def _redirect(uri: str, params: dict[str, str]) -> web.HTTPFound:
    separator = "&" if "?" in uri else "?"
    return web.HTTPFound(uri + separator + urlencode({k: v for k, v in params.items() if v is not None}))


async def _params(request: web.Request) -> dict[str, str]:
    """The query string, overlaid by the form on a POST: both pages accept either."""
    params = dict(request.query)
    if request.method == "POST":
        params.update({k: str(v) for k, v in (await request.post()).items()})
    return params


def _client(state: SandboxState, params: dict[str, str], *, directory: str | None) -> tuple[AppRegistration, str]:
    """The app named by `client_id` and the redirect URI it registered, or the AADSTS error Entra shows."""
    client_id = params.get("client_id", "").lower()
    app = state.directory.app(client_id)
    if app is None:
        where = f" in the directory '{directory}'" if directory is not None else ""
        raise EntraError(
            400, "unauthorized_client", 700016, f"Application with identifier '{client_id}' was not found{where}."
        )
    redirect_uri = params.get("redirect_uri", "")
    if not app.redirect_uri_allowed(redirect_uri):
        raise EntraError(
            400,
            "invalid_request",
            50011,
            f"The redirect URI '{redirect_uri}' specified in the request does not match the redirect URIs "
            f"configured for the application '{client_id}'.",
        )
    return app, redirect_uri


async def _consent(state: SandboxState, request: web.Request) -> web.StreamResponse:
    # GET/POST /{tenant}/adminconsent and /{tenant}/v2.0/adminconsent
    # https://learn.microsoft.com/entra/identity-platform/v2-admin-consent
    v2 = "/v2.0/" in request.path
    params = await _params(request)
    await state.checkpoint("entra:adminconsent", client_id=params.get("client_id"))
    try:
        tenant = resolve_tenant(state, request.match_info["tenant"], allow_generic=True)
        app, redirect_uri = _client(state, params, directory=tenant.display_name if tenant else "Microsoft")
    except EntraError as exc:
        return _error_page(exc)
    scope = params.get("scope", GRAPH_RESOURCE + "/.default")
    state_param = params.get("state")
    if v2 and not any(s.endswith("/.default") for s in scope.split()):
        raise _redirect(
            redirect_uri,
            {
                "error": "invalid_request",
                "error_description": "AADSTS70011: The provided value for the input parameter 'scope' is not valid. "
                "Application permissions require the /.default scope.",
                "state": state_param or "",
            },
        )
    if request.method == "GET":
        tenants = [t for t in state.directory.tenants.values() if t.id != app.home_tenant_id or not app.multi_tenant]
        chooser = (
            "<label for=tenant>Sign in as the administrator of</label><select id=tenant name=tenant>"
            + "".join(
                f'<option value="{t.id}">{html.escape(t.display_name)} ({t.default_domain})</option>' for t in tenants
            )
            + "</select>"
            if tenant is None
            else f"<p>Organization: <strong>{html.escape(tenant.display_name)}</strong> ({tenant.default_domain})</p>"
        )
        permissions = "".join(f"<li>{html.escape(p)} (application)</li>" for p in sorted(app.application_permissions))
        # The tenant chooser is a control of the form, so the browser posts the admin's choice.
        body = (
            f"<h1>Permissions requested</h1><p><strong>{html.escape(app.display_name)}</strong> "
            f"(client id {app.client_id}) needs permission to:</p><ul>{permissions}</ul>"
            f'<form method="post">{chooser}'
            "<p>Accepting grants these permissions for your entire organization.</p>"
            f"{_hidden({k: v for k, v in params.items() if k != 'tenant'})}"
            '<button type="submit" name="action" value="accept">Accept</button>'
            '<button type="submit" name="action" value="cancel">Cancel</button></form>'
        )
        return _page("Permissions requested", body)
    if params.get("action") != "accept":
        raise _redirect(
            redirect_uri,
            {
                "error": "access_denied",
                "error_subcode": "cancel",
                "error_description": "AADSTS65004: User declined to consent to access the app.",
                "state": state_param or "",
            },
        )
    if tenant is None:
        tenant = state.directory.tenant(params.get("tenant", ""))
        if tenant is None:
            return _error_page(EntraError(400, "invalid_request", 90002, "Tenant not found."))
    state.directory.grant_consent(tenant, app.client_id, at=state.clock())
    result = {"admin_consent": "True", "tenant": tenant.id}
    if v2:
        result["scope"] = scope
    if state_param is not None:
        result["state"] = state_param
    raise _redirect(redirect_uri, result)


async def _authorize(state: SandboxState, authority: EntraAuthority, request: web.Request) -> web.StreamResponse:
    # GET/POST /{tenant}/oauth2/v2.0/authorize — sign-in form, then code + state
    # https://learn.microsoft.com/entra/identity-platform/v2-oauth2-auth-code-flow
    params = await _params(request)
    await state.checkpoint("entra:authorize", client_id=params.get("client_id"))
    try:
        tenant = resolve_tenant(state, request.match_info["tenant"], allow_generic=True)
        app, redirect_uri = _client(state, params, directory=None)
    except EntraError as exc:
        return _error_page(exc)
    client_id = app.client_id
    state_param = params.get("state", "")
    if params.get("response_type") != "code":
        raise _redirect(redirect_uri, {"error": "unsupported_response_type", "state": state_param})
    challenge_method = params.get("code_challenge_method", "plain")
    if params.get("code_challenge") and challenge_method not in ("S256", "plain"):
        raise _redirect(
            redirect_uri,
            {
                "error": "invalid_request",
                "error_description": "AADSTS501491: Invalid code_challenge_method.",
                "state": state_param,
            },
        )
    message = ""
    if request.method == "POST":
        user = state.directory.authenticate_user(params.get("username", ""), params.get("password", ""))
        if user is None or (tenant is not None and user.tenant_id != tenant.id):
            message = "AADSTS50126: Error validating credentials due to invalid username or password."
        else:
            user_tenant = state.directory.tenant_of(user)
            if not app.multi_tenant and app.home_tenant_id != user_tenant.id:
                return _error_page(
                    EntraError(
                        400,
                        "invalid_request",
                        50020,
                        f"User account '{user.email}' does not exist in the application's tenant.",
                    )
                )
            if client_id not in user_tenant.service_principals:
                # User consent to the delegated permissions creates the service principal (no app roles).
                state.directory.grant_consent(user_tenant, client_id, at=state.clock())
                user_tenant.service_principals[client_id].app_roles = frozenset()
            requested = tuple(dict.fromkeys(params.get("scope", "").split()))
            allowed = {p.lower() for p in app.delegated_permissions}
            scopes = tuple(s for s in requested if short_scope(s).lower() in allowed or s in RESERVED_SCOPES)
            code = secrets.token_urlsafe(48)
            authority.codes[code] = AuthorizationCode(
                client_id=client_id,
                redirect_uri=redirect_uri,
                user_id=user.id,
                tenant_id=user_tenant.id,
                scopes=scopes,
                challenge=params.get("code_challenge") or None,
                challenge_method=challenge_method,
                nonce=params.get("nonce"),
                expires=state.clock() + timedelta(minutes=10),
            )
            result = {"code": code, "state": state_param, "session_state": str(uuid.uuid4())}
            if params.get("response_mode") == "form_post":
                # Entra auto-submits this form with script; here a button does it (no JavaScript).
                form = (
                    f'<form method="post" action="{html.escape(redirect_uri)}">{_hidden(result)}'
                    '<p>Signed in.</p><button type="submit">Continue</button></form>'
                )
                return _page("Working...", form)
            raise _redirect(redirect_uri, result)
    keep = {k: v for k, v in params.items() if k not in ("username", "password")}
    body = (
        f"<h1>Sign in</h1><p>to continue to <strong>{html.escape(app.display_name)}</strong></p>"
        + (f'<p class="error">{html.escape(message)}</p>' if message else "")
        + f'<form method="post">{_hidden(keep)}'
        + '<label for=username>Email</label><input type="text" id=username name="username" '
        + f'value="{html.escape(params.get("username") or params.get("login_hint", ""))}">'
        + '<label for=password>Password</label><input type="password" id=password name="password">'
        + '<p><button type="submit">Sign in</button></p></form>'
    )
    return _page("Sign in to your account", body, status=200)


def routes(state: SandboxState, authority: EntraAuthority) -> list[web.RouteDef]:
    """The aiohttp routes of the sign-in and consent pages."""

    async def consent(request: web.Request) -> web.StreamResponse:
        return await _consent(state, request)

    async def authorize(request: web.Request) -> web.StreamResponse:
        return await _authorize(state, authority, request)

    return [
        web.route("*", "/{tenant}/oauth2/v2.0/authorize", authorize),
        web.route("*", "/{tenant}/adminconsent", consent),
        web.route("*", "/{tenant}/v2.0/adminconsent", consent),
    ]
