"""The connect flow: verify and save a typed-in connection, or take the admin through Microsoft and back.

Admin consent takes two round trips. Microsoft's consent answer (`admin_consent=True&tenant=…`)
comes back through the browser unsigned, so a tenant admin holding any link could name another
organisation that already consented to the operator app. calbroker therefore treats that tenant
as a claim and sends the admin on to sign in there (OpenID Connect: code + PKCE, `nonce`); only an
ID token that verifies, names that tenant in `tid` and carries an administrator role in `wids`
makes it the link's consented tenant, which verification then uses. Delegated sign-in (one
mailbox) is one round trip: code + PKCE, then the refresh token is verified and sealed.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from litestar import Response
from litestar.response import Redirect, Template

from calbroker.api.connect.forms import (
    FORM_FIELDS,
    FormState,
    access_levels_for,
    failure_state,
    form_page,
    parse_list,
    precheck_consent,
    precheck_delegated,
)
from calbroker.api.connect.messages import (
    ATTEMPT_WINDOW,
    ATTEMPTS_PER_WINDOW,
    CONNECT_HEADERS,
    no_operator_app,
    rate_limited,
    unavailable,
)
from calbroker.api.connect.session import Visit, nonce, pkce_verifier, redirect_uri
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
from calbroker.services import ConnectionDraft, verify_and_save
from calbroker.store.connect_links import (
    ConnectLink,
    LinkUnavailable,
    claim_link,
    count_attempt,
    hash_secret,
    prove_consent,
    record_consent,
    record_refused_sign_in,
    start_flow,
)
from calbroker.store.database import Connection as DbConnection

__all__ = ["attempt", "consent_granted", "finish_admin_sign_in", "finish_sign_in", "start_consent", "start_sign_in"]

log = get_logger(__name__)

_TENANT_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def success(link: ConnectLink, connection: Connection) -> Redirect:
    parts = urlsplit(link.redirect_url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    query.append(("connection_id", str(connection.id)))
    if link.state is not None:
        query.append(("state", link.state))
    target = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))
    return Redirect(path=target, status_code=303, headers=CONNECT_HEADERS)


async def spend_attempt(visit: Visit, method: ConnectionMethod) -> Template | None:
    """Count one verification attempt on the link; the "too many attempts" page once over the limit."""
    async with visit.services.pool.acquire() as conn:
        budget = await count_attempt(conn, visit.link.id, limit=ATTEMPTS_PER_WINDOW, window=ATTEMPT_WINDOW)
    if budget.allowed:
        return None
    log.warning("connect.rate_limited", link_id=str(visit.link.id), method=method.value)
    return rate_limited(budget.retry_after, visit.app_name)


async def attempt(
    visit: Visit,
    method: ConnectionMethod,
    values: dict[str, str],
    make_draft: Callable[[], ConnectionDraft],
    *,
    can_recheck: bool = False,
) -> Response[Any]:
    """Count the attempt, verify, save: a redirect to the application, or the form with what to fix."""
    services, link = visit.services, visit.link
    limited = await spend_attempt(visit, method)
    if limited is not None:
        return limited

    async def claim(conn: DbConnection, connection: Connection) -> None:
        await claim_link(conn, link.id, connection.id)

    try:
        connection = await verify_and_save(services, make_draft(), actor=f"connect_link:{link.id}", on_save=claim)
    except LinkUnavailable as exc:
        return unavailable(link, visit.app_name, exc.state)
    except CalbrokerError as exc:
        log.info("connect.refused", link_id=str(link.id), method=method.value, problem=exc.slug)
        state = failure_state(exc, method, values, FORM_FIELDS[method])
        state.can_recheck = can_recheck
        if can_recheck and isinstance(exc, CredentialsRejected) and exc.upstream_code == "AADSTS700016":
            state.general = (
                f"{state.general or ''} Microsoft can take a minute to apply a consent that was just granted: "
                "wait a moment, then choose “Check again”."
            ).strip()
        return form_page(visit, method, state, status=422)
    log.info("connect.connected", link_id=str(link.id), method=method.value, connection_id=str(connection.id))
    return success(link, connection)


def precheck_failure(visit: Visit, method: ConnectionMethod, values: dict[str, str], exc: InvalidRequest) -> Template:
    return form_page(visit, method, failure_state(exc, method, values, FORM_FIELDS[method]), status=422)


async def start_consent(visit: Visit, values: dict[str, str]) -> Response[Any]:
    services, link = visit.services, visit.link
    method = ConnectionMethod.GRAPH_CONSENT
    operator = services.settings.operator_app
    if operator is None:
        return no_operator_app(visit.app_name)
    try:
        checked = precheck_consent(values, link.access_level)
    except InvalidRequest as exc:
        return precheck_failure(visit, method, values, exc)
    tenant = link.consented_tenant
    if values.get("action") == "recheck" and tenant and link.flow_session_hash == hash_secret(visit.session):
        return await attempt(visit, method, checked, lambda: consent_draft(visit, tenant, checked), can_recheck=True)
    flow_state = secrets.token_urlsafe(32)
    async with services.pool.acquire() as conn:
        await start_flow(conn, link.id, flow_state=flow_state, session=visit.session, method=method, form=checked)
        await record_consent(conn, link.id, None)
    cloud = services.upstream.cloud(operator.cloud)
    url = admin_consent_url(
        cloud,
        operator,
        tenant=checked["test_mailbox"].rpartition("@")[2],
        redirect_uri=redirect_uri(services),
        state=flow_state,
    )
    return Redirect(path=url, status_code=303, headers=CONNECT_HEADERS)


async def start_sign_in(visit: Visit, values: dict[str, str]) -> Response[Any]:
    services, link = visit.services, visit.link
    method = ConnectionMethod.GRAPH_DELEGATED
    operator = services.settings.operator_app
    if operator is None:
        return no_operator_app(visit.app_name)
    try:
        checked = precheck_delegated(values)
    except InvalidRequest as exc:
        return precheck_failure(visit, method, values, exc)
    flow_state = secrets.token_urlsafe(32)
    async with services.pool.acquire() as conn:
        await start_flow(conn, link.id, flow_state=flow_state, session=visit.session, method=method, form=checked)
    cloud = services.upstream.cloud(operator.cloud)
    url = sign_in_url(
        cloud,
        operator,
        redirect_uri=redirect_uri(services),
        state=flow_state,
        code_challenge=pkce_challenge(pkce_verifier(link, flow_state)),
        login_hint=checked["mailbox"],
    )
    return Redirect(path=url, status_code=303, headers=CONNECT_HEADERS)


def consent_draft(visit: Visit, tenant: str, values: Mapping[str, str]) -> ConnectionDraft:
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


async def consent_granted(visit: Visit, values: dict[str, str], admin_consent: str, claimed: str) -> Response[Any]:
    """Consent was granted for the tenant Microsoft's answer names: now the admin proves it by signing in there."""
    services, link = visit.services, visit.link
    method = ConnectionMethod.GRAPH_CONSENT
    operator = services.settings.operator_app
    assert operator is not None
    tenant = claimed.strip().lower()
    if admin_consent.lower() != "true" or not _TENANT_ID.match(tenant):
        state = FormState(values=values, general="Microsoft’s answer does not say consent was granted.")
        return form_page(visit, method, state, status=422)
    flow_state = secrets.token_urlsafe(32)
    async with services.pool.acquire() as conn:
        await start_flow(
            conn, link.id, flow_state=flow_state, session=visit.session, method=method, form=values, tenant=tenant
        )
    log.info("connect.consent_answered", link_id=str(link.id), tenant=tenant)
    url = admin_sign_in_url(
        services.upstream.cloud(operator.cloud),
        operator,
        tenant=tenant,
        redirect_uri=redirect_uri(services),
        state=flow_state,
        nonce=nonce(link, flow_state),
        code_challenge=pkce_challenge(pkce_verifier(link, flow_state)),
    )
    return Redirect(path=url, status_code=303, headers=CONNECT_HEADERS)


_ADMIN_ROLE_NAMES = "a Global Administrator or Privileged Role Administrator"


def sign_in_refused(visit: Visit, values: dict[str, str], exc: IdTokenRejected) -> Template:
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
    return form_page(visit, ConnectionMethod.GRAPH_CONSENT, state, status=403)


def not_an_admin(visit: Visit, values: dict[str, str], signed_in: IdToken) -> Template:
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
    return form_page(visit, ConnectionMethod.GRAPH_CONSENT, state, status=403)


async def finish_admin_sign_in(
    visit: Visit, values: dict[str, str], tenant: str, code: str, flow_state: str
) -> Response[Any]:
    """Accept the consent only if the ID token proves an administrator of `tenant` signed in."""
    services, link = visit.services, visit.link
    method = ConnectionMethod.GRAPH_CONSENT
    operator = services.settings.operator_app
    assert operator is not None
    if not code:
        state = FormState(values=values, general="Microsoft’s answer holds no sign-in code. Please continue again.")
        return form_page(visit, method, state, status=422)
    limited = await spend_attempt(visit, method)
    if limited is not None:
        return limited
    try:
        signed_in = await redeem_admin_sign_in(
            services.upstream.cloud(operator.cloud),
            operator,
            tenant=tenant,
            code=code,
            redirect_uri=redirect_uri(services),
            code_verifier=pkce_verifier(link, flow_state),
            nonce=nonce(link, flow_state),
        )
    except IdTokenRejected as exc:
        log.warning("connect.sign_in_refused", link_id=str(link.id), tenant=tenant, check=exc.check)
        async with services.pool.acquire() as conn:
            await record_refused_sign_in(conn, link, tenant, reason=f"id_token:{exc.check}")
        return sign_in_refused(visit, values, exc)
    except CalbrokerError as exc:
        log.info("connect.refused", link_id=str(link.id), method=method.value, problem=exc.slug)
        return form_page(visit, method, failure_state(exc, method, values, FORM_FIELDS[method]), status=422)
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
        return not_an_admin(visit, values, signed_in)
    log.info("connect.admin_signed_in", link_id=str(link.id), tenant=tenant, user_oid=signed_in.object_id, roles=held)
    async with services.pool.acquire() as conn:
        await prove_consent(conn, link, tenant, admin_object_id=signed_in.object_id, roles=held)
    return await attempt(visit, method, values, lambda: consent_draft(visit, tenant, values), can_recheck=True)


async def finish_sign_in(visit: Visit, values: dict[str, str], code: str, flow_state: str) -> Response[Any]:
    services, link = visit.services, visit.link
    method = ConnectionMethod.GRAPH_DELEGATED
    operator = services.settings.operator_app
    if operator is None or not code:
        state = FormState(values=values, general="Microsoft’s answer holds no sign-in code. Please sign in again.")
        return form_page(visit, method, state, status=422)
    try:
        signed_in = await redeem_sign_in(
            services.upstream.cloud(operator.cloud),
            operator,
            code=code,
            redirect_uri=redirect_uri(services),
            code_verifier=pkce_verifier(link, flow_state),
        )
    except CalbrokerError as exc:
        return form_page(visit, method, failure_state(exc, method, values, FORM_FIELDS[method]), status=422)
    wanted = values.get("mailbox", "")
    if wanted and signed_in.mailbox != wanted:
        message = (
            f"You signed in as {signed_in.mailbox}, but this form is for {wanted}. Sign in again as {wanted}: "
            "on Microsoft’s page, choose “Use another account” if it signs you in automatically."
        )
        return form_page(visit, method, FormState(values=values, errors={"mailbox": message}), status=422)
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

    return await attempt(visit, method, {"mailbox": signed_in.mailbox}, make_draft)
