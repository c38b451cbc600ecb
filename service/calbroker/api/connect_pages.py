"""`/connect/...`: the pages a tenant admin opens from an authorize link (server-rendered, no JavaScript).

- `GET /connect/{token}` lists the methods the link offers; `?method=…` shows that method's form.
- `POST /connect/submit` verifies and saves (own app registration, Exchange service account) or
  sends the browser to Microsoft (admin consent, delegated sign-in).
- `GET /connect/callback` is where Microsoft sends the browser back (the operator app's redirect URI).

CSRF protection is a token bound to both the link and the browser: a random session id lives in
an HttpOnly, SameSite=Lax cookie scoped to /connect, and each form carries
HMAC-SHA256(link_key, session id), where `link_key` is a random per-link server secret. Another
site can neither read the cookie nor compute the HMAC, and a token from one link is useless on
another. Forms post the link's id (not its token, which stays out of every page body) and that
token is what proves the link was opened in this browser. The round trip through Microsoft is
bound the same way: only the hash of the random `state` is stored, with the hash of the session
that started it, and the answer is accepted once and only in that browser.

Admin consent takes two round trips. Microsoft's consent answer (`admin_consent=True&tenant=…`)
comes back through the browser unsigned, so a tenant admin holding any link could name another
organisation that already consented to the operator app. calbroker therefore treats that tenant
as a claim and sends the admin on to sign in there (OpenID Connect: code + PKCE, `nonce`); only an
ID token that verifies (`providers.id_tokens`), names that tenant in `tid` and carries an
administrator role in `wids` makes it the link's consented tenant, which verification then uses.
The PKCE verifier and the nonce are derived from `link_key` and the round trip's `state`, so
neither is stored.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from litestar import Request, Response, get, post
from litestar.datastructures import Cookie, UploadFile
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.response import Redirect, Template

from calbroker.api.connect_forms import (
    CLOUD_NAMES,
    FormState,
    access_levels_for,
    default_cloud,
    draft_from_form,
    failure_state,
    kept_values,
    parse_list,
    precheck_consent,
    precheck_delegated,
)
from calbroker.api.connect_guides import (
    GRAPH_PERMISSIONS,
    METHODS,
    access_policy_commands,
    ews_level_guides,
    graph_level_labels,
)
from calbroker.api.onboarding import ConnectionDraft, verify_and_save
from calbroker.api.services import Services
from calbroker.domain.connections import (
    AccessLevel,
    Connection,
    ConnectionMethod,
    GraphAdminConsent,
    GraphDelegated,
)
from calbroker.domain.errors import CalbrokerError, CredentialsRejected, InvalidRequest
from calbroker.logs import get_logger
from calbroker.providers.graph import (
    ADMIN_ROLES,
    IdToken,
    IdTokenRejected,
    admin_consent_url,
    admin_sign_in_url,
    pkce_challenge,
    redeem_admin_sign_in,
    redeem_sign_in,
    sign_in_url,
)
from calbroker.redaction import redact_text
from calbroker.store.applications import get_application
from calbroker.store.connect_links import (
    ConnectLink,
    LinkState,
    LinkUnavailable,
    claim_link,
    count_attempt,
    find_link,
    get_link,
    hash_secret,
    prove_consent,
    record_consent,
    record_refused_sign_in,
    start_flow,
    take_flow,
)
from calbroker.store.database import Connection as DbConnection

__all__ = ["CONNECT_HEADERS", "connect_callback", "connect_page", "connect_submit"]

log = get_logger(__name__)

COOKIE = "calbroker_connect"
ATTEMPTS_PER_WINDOW = 10
ATTEMPT_WINDOW = timedelta(minutes=15)
CONNECT_HEADERS = {
    "Cache-Control": "no-store",
    # The link token is in the address bar: never send it to a site the page links to.
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
}
_SESSION = re.compile(r"^[A-Za-z0-9_-]{43}$")
_TENANT_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_FIELDS: Mapping[ConnectionMethod, frozenset[str]] = {
    ConnectionMethod.GRAPH_CONSENT: frozenset({"test_mailbox", "domains", "access_level"}),
    ConnectionMethod.GRAPH_APP: frozenset(
        {
            "tenant_id",
            "client_id",
            "client_secret",
            "secret_expires_on",
            "certificate",
            "certificate_password",
            "cloud",
            "access_level",
            "test_mailbox",
            "domains",
            "allowed_mailboxes",
        }
    ),
    ConnectionMethod.EWS: frozenset(
        {
            "endpoint",
            "username",
            "password",
            "auth_type",
            "access_level",
            "test_mailbox",
            "domains",
            "allowed_mailboxes",
        }
    ),
    ConnectionMethod.GRAPH_DELEGATED: frozenset({"mailbox"}),
}


# --- the browser session and its form tokens --------------------------------------------------------


def _session_of(request: Request[Any, Any, Any]) -> str | None:
    value = request.cookies.get(COOKIE)
    return value if value and _SESSION.match(value) else None


def csrf_token(link: ConnectLink, session: str) -> str:
    mac = hmac.new(link.link_key, b"csrf|" + session.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def _derived(link: ConnectLink, purpose: bytes, flow_state: str) -> str:
    mac = hmac.new(link.link_key, purpose + b"|" + flow_state.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def _pkce_verifier(link: ConnectLink, flow_state: str) -> str:
    """Derived, not stored: only this server (holding link_key) can recompute it for the redemption."""
    return _derived(link, b"pkce", flow_state)


def _nonce(link: ConnectLink, flow_state: str) -> str:
    """The OpenID nonce of one sign-in: unique per round trip, unguessable, recomputed to check the ID token."""
    return _derived(link, b"nonce", flow_state)


def _cookie(services: Services, session: str) -> Cookie:
    return Cookie(
        key=COOKIE,
        value=session,
        path="/connect",
        httponly=True,
        samesite="lax",
        secure=services.settings.public_url.startswith("https://"),
        max_age=30 * 86400,
    )


def _redirect_uri(services: Services) -> str:
    """The operator app's redirect URI: register exactly this in Entra."""
    return f"{services.settings.public_url.rstrip('/')}/connect/callback"


# --- rendering ----------------------------------------------------------------------------------------


def _message(
    title: str,
    paragraphs: list[str],
    status: int,
    *,
    app_name: str | None = None,
    retry_after: timedelta | None = None,
) -> Template:
    headers = dict(CONNECT_HEADERS)
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, int(retry_after.total_seconds())))
    return Template(
        "connect/message.html",
        context={"title": title, "paragraphs": paragraphs, "app_name": app_name},
        status_code=status,
        headers=headers,
    )


def _not_found() -> Template:
    return _message(
        "This link does not work",
        [
            "The address is incomplete or was never issued. Copy the whole link from the message you received, "
            "or ask the application that sent it for a new one.",
        ],
        404,
    )


def _unavailable(link: ConnectLink, app_name: str, state: LinkState) -> Template:
    if state is LinkState.USED:
        return _message(
            "This link has already been used",
            [
                f"Your organisation was connected to {app_name} with this link, so there is nothing left to do here.",
                f"To connect again, or another way, ask {app_name} for a new link: each link works once.",
            ],
            410,
            app_name=app_name,
        )
    return _message(
        "This link has expired",
        [
            f"It was valid until {link.expires_at:%d %B %Y, %H:%M} UTC. Nothing was connected with it.",
            f"Ask {app_name} for a new link.",
        ],
        410,
        app_name=app_name,
    )


def _forged() -> Template:
    return _message(
        "This form could not be accepted",
        [
            "It was not sent from the page calbroker gave this browser (the security token is missing or wrong), "
            "so nothing was checked or saved.",
            "Open the link you received again in this browser and fill in the form there. If it keeps happening, "
            "allow cookies for this site: the page needs one to recognise your browser.",
        ],
        403,
    )


def _rate_limited(retry_after: timedelta, app_name: str) -> Template:
    minutes = max(1, round(retry_after.total_seconds() / 60))
    return _message(
        "Too many attempts",
        [
            f"This link has been used for {ATTEMPTS_PER_WINDOW} verification attempts in "
            f"{int(ATTEMPT_WINDOW.total_seconds() // 60)} minutes. "
            f"Try again in {minutes} minute{'s' if minutes != 1 else ''}: nothing you typed was saved.",
        ],
        429,
        app_name=app_name,
        retry_after=retry_after,
    )


@dataclass(frozen=True, slots=True)
class _Visit:
    """One request on an open link: who sent it (application), and which browser session."""

    services: Services
    link: ConnectLink
    app_name: str
    session: str

    def context(self) -> dict[str, Any]:
        return {
            "app_name": self.app_name,
            "link_id": str(self.link.id),
            "csrf_token": csrf_token(self.link, self.session),
            "expires_at": f"{self.link.expires_at:%d %B %Y, %H:%M} UTC",
        }

    def cookies(self, new_session: bool) -> list[Cookie] | None:
        return [_cookie(self.services, self.session)] if new_session else None


def _form_page(
    visit: _Visit,
    method: ConnectionMethod,
    state: FormState,
    *,
    status: int = 200,
    back: bool = False,
    new_session: bool = False,
) -> Template:
    settings = visit.services.settings
    link = visit.link
    values = state.values
    levels = access_levels_for(method, link.access_level)
    context = visit.context() | {
        "method": method.value,
        "info": METHODS[method],
        "values": values,
        "errors": state.errors,
        "general": state.general,
        "general_title": state.title,
        "can_recheck": state.can_recheck,
        "back": back and len(link.methods) > 1,
        "levels": [level.value for level in levels],
        "level": values.get("access_level") or levels[0].value,
        "level_fixed": link.access_level is not None,
    }
    match method:
        case ConnectionMethod.GRAPH_APP:
            chosen = values.get("cloud") or default_cloud(settings)
            context |= {
                "permissions": GRAPH_PERMISSIONS,
                "level_labels": graph_level_labels(),
                "policy_commands": access_policy_commands(values),
                "clouds": [(name, CLOUD_NAMES.get(name, name)) for name in settings.clouds],
                "cloud": chosen,
                "cloud_label": CLOUD_NAMES.get(chosen, chosen),
            }
        case ConnectionMethod.GRAPH_CONSENT:
            operator = settings.operator_app
            context |= {
                "level_labels": graph_level_labels(),
                "operator_client_id": operator.client_id if operator else "",
            }
        case ConnectionMethod.EWS:
            context |= {"guides": [g for g in ews_level_guides(values) if g.level.value in context["levels"]]}
        case ConnectionMethod.GRAPH_DELEGATED:
            pass
    return Template(
        f"connect/{method.value}.html",
        context=context,
        status_code=status,
        headers=CONNECT_HEADERS,
        cookies=visit.cookies(new_session),
    )


async def _application_name(services: Services, link: ConnectLink) -> str:
    async with services.pool.acquire() as conn:
        return (await get_application(conn, link.application_id)).name


def _success(link: ConnectLink, connection: Connection) -> Redirect:
    parts = urlsplit(link.redirect_url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    query.append(("connection_id", str(connection.id)))
    if link.state is not None:
        query.append(("state", link.state))
    target = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))
    return Redirect(path=target, status_code=303, headers=CONNECT_HEADERS)


# --- verify and save ----------------------------------------------------------------------------------


async def _spend_attempt(visit: _Visit, method: ConnectionMethod) -> Template | None:
    """Count one verification attempt on the link; the "too many attempts" page once over the limit."""
    async with visit.services.pool.acquire() as conn:
        budget = await count_attempt(conn, visit.link.id, limit=ATTEMPTS_PER_WINDOW, window=ATTEMPT_WINDOW)
    if budget.allowed:
        return None
    log.warning("connect.rate_limited", link_id=str(visit.link.id), method=method.value)
    return _rate_limited(budget.retry_after, visit.app_name)


async def _attempt(
    visit: _Visit,
    method: ConnectionMethod,
    values: dict[str, str],
    make_draft: Callable[[], ConnectionDraft],
    *,
    can_recheck: bool = False,
) -> Response[Any]:
    """Count the attempt, verify, save: a redirect to the application, or the form with what to fix."""
    services, link = visit.services, visit.link
    limited = await _spend_attempt(visit, method)
    if limited is not None:
        return limited

    async def claim(conn: DbConnection, connection: Connection) -> None:
        await claim_link(conn, link.id, connection.id)

    try:
        connection = await verify_and_save(
            make_draft(),
            settings=services.settings,
            pool=services.pool,
            keyring=services.keyring,
            registry=services.providers,
            actor=f"connect_link:{link.id}",
            on_save=claim,
        )
    except LinkUnavailable as exc:
        return _unavailable(link, visit.app_name, exc.state)
    except CalbrokerError as exc:
        log.info("connect.refused", link_id=str(link.id), method=method.value, problem=exc.slug)
        state = failure_state(exc, method, values, _FIELDS[method])
        state.can_recheck = can_recheck
        if can_recheck and isinstance(exc, CredentialsRejected) and exc.upstream_code == "AADSTS700016":
            state.general = (
                f"{state.general or ''} Microsoft can take a minute to apply a consent that was just granted: "
                "wait a moment, then choose “Check again”."
            ).strip()
        return _form_page(visit, method, state, status=422)
    log.info("connect.connected", link_id=str(link.id), method=method.value, connection_id=str(connection.id))
    return _success(link, connection)


# --- handlers -------------------------------------------------------------------------------------------


@get("/{token:str}", include_in_schema=False)
async def connect_page(
    token: FromPath[str], request: Request[Any, Any, Any], services: NamedDependency[Services]
) -> Response[Any]:
    """The methods this link offers, or (`?method=`) one method's form."""
    async with services.pool.acquire() as conn:
        link = await find_link(conn, token)
    if link is None:
        return _not_found()
    app_name = await _application_name(services, link)
    link_state = link.state_at(datetime.now(UTC))
    if link_state is not LinkState.OPEN:
        return _unavailable(link, app_name, link_state)
    session = _session_of(request)
    new_session = session is None
    visit = _Visit(services, link, app_name, session or secrets.token_urlsafe(32))
    requested = request.query_params.get("method")
    if requested is None and len(link.methods) == 1:
        requested = link.methods[0].value
    if requested is not None:
        method = next((m for m in link.methods if m.value == requested), None)
        if method is None:
            return _message(
                "This way of connecting is not offered",
                [f"{app_name} did not offer it with this link. Go back and pick one of the ways listed."],
                404,
                app_name=app_name,
            )
        return _form_page(visit, method, FormState(), back=True, new_session=new_session)
    context = visit.context() | {
        "methods": [(m.value, METHODS[m]) for m in link.methods],
        "level": link.access_level.value if link.access_level else None,
    }
    return Template("connect/choose.html", context=context, headers=CONNECT_HEADERS, cookies=visit.cookies(new_session))


_TYPED_SECRETS = ("client_secret", "password", "certificate_password")


@post("/submit", status_code=200, include_in_schema=False)
async def connect_submit(request: Request[Any, Any, Any], services: NamedDependency[Services]) -> Response[Any]:
    """One form post: CSRF check, then verify-and-save or the trip to Microsoft."""
    form = await request.form()
    values = kept_values(form)
    try:
        link_id = uuid.UUID(values.pop("link", ""))
    except ValueError:
        return _forged()
    async with services.pool.acquire() as conn:
        link = await get_link(conn, link_id)
    session = _session_of(request)
    token = form.get("csrf_token")
    if link is None or session is None or not isinstance(token, str):
        return _forged()
    if not hmac.compare_digest(token.encode(), csrf_token(link, session).encode()):
        log.warning("connect.csrf_refused", link_id=str(link.id))
        return _forged()
    app_name = await _application_name(services, link)
    link_state = link.state_at(datetime.now(UTC))
    if link_state is not LinkState.OPEN:
        return _unavailable(link, app_name, link_state)
    wanted = values.pop("method", "")
    method = next((m for m in link.methods if m.value == wanted), None)
    if method is None:
        return _forged()
    visit = _Visit(services, link, app_name, session)
    match method:
        case ConnectionMethod.GRAPH_APP | ConnectionMethod.EWS:
            typed = {k: v for k, v in form.items() if isinstance(v, str) and k in _TYPED_SECRETS}
            upload = form.get("certificate")
            certificate = await upload.read() if isinstance(upload, UploadFile) else None

            def make_draft() -> ConnectionDraft:
                return draft_from_form(
                    method,
                    values,
                    typed,
                    application_id=link.application_id,
                    requested_level=link.access_level,
                    settings=services.settings,
                    certificate=certificate or None,
                )

            return await _attempt(visit, method, values, make_draft)
        case ConnectionMethod.GRAPH_CONSENT:
            return await _start_consent(visit, values)
        case ConnectionMethod.GRAPH_DELEGATED:
            return await _start_sign_in(visit, values)


def _no_operator_app(visit: _Visit) -> Template:
    """The link offered a way through calbroker's own Entra app, which this server no longer has."""
    return _message(
        "This way of connecting is not available right now",
        [
            "It goes through calbroker’s own Microsoft Entra app, which this server is not configured with "
            "any more. Nothing was saved. Go back and choose another way, or ask "
            f"{visit.app_name} for a new link.",
        ],
        503,
        app_name=visit.app_name,
    )


def _precheck_failure(visit: _Visit, method: ConnectionMethod, values: dict[str, str], exc: InvalidRequest) -> Template:
    return _form_page(visit, method, failure_state(exc, method, values, _FIELDS[method]), status=422)


async def _start_consent(visit: _Visit, values: dict[str, str]) -> Response[Any]:
    services, link = visit.services, visit.link
    method = ConnectionMethod.GRAPH_CONSENT
    operator = services.settings.operator_app
    if operator is None:
        return _no_operator_app(visit)
    try:
        checked = precheck_consent(values, link.access_level)
    except InvalidRequest as exc:
        return _precheck_failure(visit, method, values, exc)
    tenant = link.consented_tenant
    if values.get("action") == "recheck" and tenant and link.flow_session_hash == hash_secret(visit.session):
        return await _attempt(visit, method, checked, lambda: _consent_draft(visit, tenant, checked), can_recheck=True)
    flow_state = secrets.token_urlsafe(32)
    async with services.pool.acquire() as conn:
        await start_flow(conn, link.id, flow_state=flow_state, session=visit.session, method=method, form=checked)
        await record_consent(conn, link.id, None)
    cloud = services.providers.cloud(operator.cloud)
    url = admin_consent_url(
        cloud,
        operator,
        tenant=checked["test_mailbox"].rpartition("@")[2],
        redirect_uri=_redirect_uri(services),
        state=flow_state,
    )
    return Redirect(path=url, status_code=303, headers=CONNECT_HEADERS)


async def _start_sign_in(visit: _Visit, values: dict[str, str]) -> Response[Any]:
    services, link = visit.services, visit.link
    method = ConnectionMethod.GRAPH_DELEGATED
    operator = services.settings.operator_app
    if operator is None:
        return _no_operator_app(visit)
    try:
        checked = precheck_delegated(values)
    except InvalidRequest as exc:
        return _precheck_failure(visit, method, values, exc)
    flow_state = secrets.token_urlsafe(32)
    async with services.pool.acquire() as conn:
        await start_flow(conn, link.id, flow_state=flow_state, session=visit.session, method=method, form=checked)
    cloud = services.providers.cloud(operator.cloud)
    url = sign_in_url(
        cloud,
        operator,
        redirect_uri=_redirect_uri(services),
        state=flow_state,
        code_challenge=pkce_challenge(_pkce_verifier(link, flow_state)),
        login_hint=checked["mailbox"],
    )
    return Redirect(path=url, status_code=303, headers=CONNECT_HEADERS)


def _consent_draft(visit: _Visit, tenant: str, values: Mapping[str, str]) -> ConnectionDraft:
    operator = visit.services.settings.operator_app
    assert operator is not None
    return ConnectionDraft(
        application_id=visit.link.application_id,
        method=ConnectionMethod.GRAPH_CONSENT,
        access_level=AccessLevel(values.get("access_level") or AccessLevel.FULL.value),
        credentials=GraphAdminConsent(tenant),
        domains=parse_list(values.get("domains", "")),
        test_mailbox=values.get("test_mailbox", ""),
        cloud=operator.cloud,
        tenant_id=tenant,
    )


def _microsoft_refusal(error: str, description: str, *, admin_sign_in: bool = False) -> str:
    if error == "access_denied" and admin_sign_in:
        return (
            "You cancelled the sign-in on Microsoft’s page, so nothing was saved. calbroker needs it to confirm "
            "that you are an administrator of the organisation you approved the app for: continue again, "
            "approve, and sign in."
        )
    if error == "access_denied":
        return (
            "You cancelled on Microsoft’s page, so nothing was granted or saved. To connect, continue again "
            "and choose Accept (for admin consent you need to be a Global Administrator or Privileged Role "
            "Administrator)."
        )
    first_line = redact_text(description.splitlines()[0] if description else error)[:300]
    return f"Microsoft did not complete the request: {first_line}"


@get("/callback", include_in_schema=False)
async def connect_callback(request: Request[Any, Any, Any], services: NamedDependency[Services]) -> Response[Any]:
    """Microsoft's answer to admin consent or sign-in: accepted once, in the browser that asked."""
    query = request.query_params
    flow_state = query.get("state") or ""
    async with services.pool.acquire() as conn:
        link = await take_flow(conn, flow_state) if flow_state else None
    if link is None or link.flow_method is None:
        return _message(
            "This answer from Microsoft does not match a connection in progress",
            [
                "It was already used, or it belongs to a link that was opened again since. Open the link you "
                "received and start again.",
            ],
            400,
        )
    app_name = await _application_name(services, link)
    link_state = link.state_at(datetime.now(UTC))
    if link_state is not LinkState.OPEN:
        return _unavailable(link, app_name, link_state)
    session = _session_of(request)
    if session is None or link.flow_session_hash != hash_secret(session):
        log.warning("connect.callback_other_browser", link_id=str(link.id))
        return _message(
            "Please finish in the browser where you started",
            [
                "Microsoft sent this answer to a different browser (or cookies are blocked), so calbroker cannot "
                "tell it belongs to you. Nothing was saved. Open the link again in one browser and complete all "
                "steps there.",
            ],
            403,
        )
    visit = _Visit(services, link, app_name, session)
    if services.settings.operator_app is None:
        return _no_operator_app(visit)
    method = link.flow_method
    values = dict(link.flow_form)
    signing_in_to = link.flow_tenant if method is ConnectionMethod.GRAPH_CONSENT else None
    error = query.get("error")
    if error:
        general = _microsoft_refusal(
            error, query.get("error_description") or "", admin_sign_in=signing_in_to is not None
        )
        return _form_page(visit, method, FormState(values=values, general=general), status=422)
    if method is ConnectionMethod.GRAPH_CONSENT and signing_in_to is None:
        return await _consent_granted(visit, values, query.get("admin_consent") or "", query.get("tenant") or "")
    if signing_in_to is not None:
        return await _finish_admin_sign_in(visit, values, signing_in_to, query.get("code") or "", flow_state)
    return await _finish_sign_in(visit, values, query.get("code") or "", flow_state)


async def _consent_granted(visit: _Visit, values: dict[str, str], admin_consent: str, claimed: str) -> Response[Any]:
    """Consent was granted for the tenant Microsoft's answer names: now the admin proves it by signing in there."""
    services, link = visit.services, visit.link
    method = ConnectionMethod.GRAPH_CONSENT
    operator = services.settings.operator_app
    assert operator is not None
    tenant = claimed.strip().lower()
    if admin_consent.lower() != "true" or not _TENANT_ID.match(tenant):
        state = FormState(values=values, general="Microsoft’s answer does not say consent was granted.")
        return _form_page(visit, method, state, status=422)
    flow_state = secrets.token_urlsafe(32)
    async with services.pool.acquire() as conn:
        await start_flow(
            conn, link.id, flow_state=flow_state, session=visit.session, method=method, form=values, tenant=tenant
        )
    log.info("connect.consent_answered", link_id=str(link.id), tenant=tenant)
    url = admin_sign_in_url(
        services.providers.cloud(operator.cloud),
        operator,
        tenant=tenant,
        redirect_uri=_redirect_uri(services),
        state=flow_state,
        nonce=_nonce(link, flow_state),
        code_challenge=pkce_challenge(_pkce_verifier(link, flow_state)),
    )
    return Redirect(path=url, status_code=303, headers=CONNECT_HEADERS)


_ADMIN_ROLE_NAMES = "a Global Administrator or Privileged Role Administrator"


def _sign_in_refused(visit: _Visit, values: dict[str, str], exc: IdTokenRejected) -> Template:
    """The ID token failed a check: the admin is told what to do; nothing was saved."""
    if exc.check == "tenant":
        title = "Sign in with an administrator account of the organisation that approved"
        general = (
            "You signed in to a different organisation from the one Microsoft said approved calbroker’s app, "
            "so nothing was saved. The sign-in that follows the approval must be by an administrator of the "
            "organisation that consented: choose “Continue to Microsoft”, approve for your organisation, then "
            "sign in with an administrator account of that same organisation."
        )
    else:
        title = "Microsoft’s sign-in could not be verified"
        general = (
            f"Microsoft’s sign-in answer could not be verified ({exc.detail}), so calbroker cannot tell who signed "
            "in, and nothing was saved. Choose “Continue to Microsoft” to try again; if it keeps happening, tell "
            f"{visit.app_name}."
        )
    state = FormState(values=values, general=general, title=title)
    return _form_page(visit, ConnectionMethod.GRAPH_CONSENT, state, status=403)


def _not_an_admin(visit: _Visit, values: dict[str, str], signed_in: IdToken) -> Template:
    who = signed_in.username or "an account"
    general = (
        f"You signed in as {who}, which is not an administrator of the organisation that approved calbroker’s "
        f"app, so nothing was saved. The sign-in that follows the approval must be by {_ADMIN_ROLE_NAMES} of that "
        "organisation: choose “Continue to Microsoft”, approve, and sign in with such an account."
    )
    if signed_in.directory_roles is None:
        general += (
            f" (Microsoft’s answer lists no roles at all. If you are an administrator, calbroker’s app is not set "
            f"up to receive them: tell {visit.app_name}.)"
        )
    state = FormState(values=values, general=general, title="Sign in as an administrator of the organisation")
    return _form_page(visit, ConnectionMethod.GRAPH_CONSENT, state, status=403)


async def _finish_admin_sign_in(
    visit: _Visit, values: dict[str, str], tenant: str, code: str, flow_state: str
) -> Response[Any]:
    """Accept the consent only if the ID token proves an administrator of `tenant` signed in."""
    services, link = visit.services, visit.link
    method = ConnectionMethod.GRAPH_CONSENT
    operator = services.settings.operator_app
    assert operator is not None
    if not code:
        state = FormState(values=values, general="Microsoft’s answer holds no sign-in code. Please continue again.")
        return _form_page(visit, method, state, status=422)
    limited = await _spend_attempt(visit, method)
    if limited is not None:
        return limited
    try:
        signed_in = await redeem_admin_sign_in(
            services.providers.cloud(operator.cloud),
            operator,
            tenant=tenant,
            code=code,
            redirect_uri=_redirect_uri(services),
            code_verifier=_pkce_verifier(link, flow_state),
            nonce=_nonce(link, flow_state),
        )
    except IdTokenRejected as exc:
        log.warning("connect.sign_in_refused", link_id=str(link.id), tenant=tenant, check=exc.check)
        async with services.pool.acquire() as conn:
            await record_refused_sign_in(conn, link, tenant, reason=f"id_token:{exc.check}")
        return _sign_in_refused(visit, values, exc)
    except CalbrokerError as exc:
        log.info("connect.refused", link_id=str(link.id), method=method.value, problem=exc.slug)
        return _form_page(visit, method, failure_state(exc, method, values, _FIELDS[method]), status=422)
    held = sorted(ADMIN_ROLES[r] for r in (signed_in.directory_roles or frozenset()) if r in ADMIN_ROLES)
    if not held:
        log.warning(
            "connect.sign_in_not_admin",
            link_id=str(link.id),
            tenant=tenant,
            user_oid=signed_in.object_id,
            roles_claim=signed_in.directory_roles is not None,
        )
        async with services.pool.acquire() as conn:
            await record_refused_sign_in(conn, link, tenant, reason="not_an_administrator")
        return _not_an_admin(visit, values, signed_in)
    log.info("connect.admin_signed_in", link_id=str(link.id), tenant=tenant, user_oid=signed_in.object_id, roles=held)
    async with services.pool.acquire() as conn:
        await prove_consent(conn, link, tenant, admin_object_id=signed_in.object_id, roles=held)
    return await _attempt(visit, method, values, lambda: _consent_draft(visit, tenant, values), can_recheck=True)


async def _finish_sign_in(visit: _Visit, values: dict[str, str], code: str, flow_state: str) -> Response[Any]:
    services, link = visit.services, visit.link
    method = ConnectionMethod.GRAPH_DELEGATED
    operator = services.settings.operator_app
    if operator is None or not code:
        state = FormState(values=values, general="Microsoft’s answer holds no sign-in code. Please sign in again.")
        return _form_page(visit, method, state, status=422)
    try:
        signed_in = await redeem_sign_in(
            services.providers.cloud(operator.cloud),
            operator,
            code=code,
            redirect_uri=_redirect_uri(services),
            code_verifier=_pkce_verifier(link, flow_state),
        )
    except CalbrokerError as exc:
        return _form_page(visit, method, failure_state(exc, method, values, _FIELDS[method]), status=422)
    wanted = values.get("mailbox", "")
    if wanted and signed_in.mailbox != wanted:
        message = (
            f"You signed in as {signed_in.mailbox}, but this form is for {wanted}. Sign in again as {wanted}: "
            "on Microsoft’s page, choose “Use another account” if it signs you in automatically."
        )
        return _form_page(visit, method, FormState(values=values, errors={"mailbox": message}), status=422)
    level = access_levels_for(method, link.access_level)[0]

    def make_draft() -> ConnectionDraft:
        return ConnectionDraft(
            application_id=link.application_id,
            method=method,
            access_level=level,
            credentials=GraphDelegated(signed_in.tenant_id, signed_in.mailbox, signed_in.refresh_token),
            domains=[signed_in.mailbox.rpartition("@")[2]],
            test_mailbox=signed_in.mailbox,
            cloud=operator.cloud,
            tenant_id=signed_in.tenant_id,
            allowed_mailboxes=[signed_in.mailbox],
        )

    return await _attempt(visit, method, {"mailbox": signed_in.mailbox}, make_draft)
