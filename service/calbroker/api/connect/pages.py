"""`/connect/...`: the pages a tenant admin opens from an authorize link (server-rendered, no JavaScript).

- `GET /connect/{token}` lists the methods the link offers; `?method=…` shows that method's form.
- `POST /connect/submit` verifies and saves (own app registration, Exchange service account) or
  sends the browser to Microsoft (admin consent, delegated sign-in).
- `GET /connect/callback` is where Microsoft sends the browser back (the operator app's redirect URI).

Forms post the link's id (not its token, which stays out of every page body) with a CSRF token
bound to the link and the browser session (`session.py`); the round trip through Microsoft is
bound the same way: only the hash of the random `state` is stored, with the hash of the session
that started it, and the answer is accepted once and only in that browser (`flow.py`).
"""

from __future__ import annotations

import hmac
import secrets
import uuid
from datetime import UTC, datetime
from typing import Any

from litestar import Request, Response, get, post
from litestar.datastructures import UploadFile
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.response import Template

from calbroker.api.connect.flow import (
    attempt,
    consent_granted,
    finish_admin_sign_in,
    finish_sign_in,
    start_consent,
    start_sign_in,
)
from calbroker.api.connect.forms import FormState, draft_from_form, form_page, kept_values, unreadable_field
from calbroker.api.connect.guides import METHODS
from calbroker.api.connect.messages import (
    CONNECT_HEADERS,
    forged,
    message_page,
    microsoft_refusal,
    no_operator_app,
    not_found,
    unavailable,
)
from calbroker.api.connect.session import Visit, csrf_token, session_of
from calbroker.domain.connections import ConnectionMethod
from calbroker.logs import get_logger
from calbroker.services import ConnectionDraft, Services
from calbroker.store.applications import get_application
from calbroker.store.connect_links import ConnectLink, LinkState, find_link, get_link, hash_secret, take_flow

__all__ = ["connect_callback", "connect_page", "connect_submit"]

log = get_logger(__name__)

_TYPED_SECRETS = ("client_secret", "password", "certificate_password")


async def _opened(services: Services, link: ConnectLink) -> str | Template:
    """The name of the application that sent an open link, or the page saying the link is spent."""
    async with services.pool.acquire() as conn:
        app_name = (await get_application(conn, link.application_id)).name
    state = link.state_at(datetime.now(UTC))
    if state is not LinkState.OPEN:
        return unavailable(link, app_name, state)
    return app_name


@get("/{token:str}", include_in_schema=False)
async def connect_page(
    token: FromPath[str], request: Request[Any, Any, Any], services: NamedDependency[Services]
) -> Response[Any]:
    """The methods this link offers, or (`?method=`) one method's form."""
    async with services.pool.acquire() as conn:
        link = await find_link(conn, token)
    if link is None:
        return not_found()
    app_name = await _opened(services, link)
    if isinstance(app_name, Template):
        return app_name
    session = session_of(request)
    new_session = session is None
    visit = Visit(services, link, app_name, session or secrets.token_urlsafe(32))
    requested = request.query_params.get("method")
    if requested is None and len(link.methods) == 1:
        requested = link.methods[0].value
    if requested is not None:
        method = next((m for m in link.methods if m.value == requested), None)
        if method is None:
            return message_page(
                "This way of connecting is not offered",
                [f"{app_name} did not offer it with this link. Go back and pick one of the ways listed."],
                404,
                app_name=app_name,
            )
        return form_page(visit, method, FormState(), back=True, new_session=new_session)
    context = visit.context() | {
        "methods": [(m.value, METHODS[m]) for m in link.methods],
        "level": link.access_level.value if link.access_level else None,
    }
    return Template("connect/choose.html", context=context, headers=CONNECT_HEADERS, cookies=visit.cookies(new_session))


@post("/submit", status_code=200, include_in_schema=False)
async def connect_submit(request: Request[Any, Any, Any], services: NamedDependency[Services]) -> Response[Any]:
    """One form post: CSRF check, then verify-and-save or the trip to Microsoft."""
    form = await request.form()
    values = kept_values(form)
    try:
        link_id = uuid.UUID(values.pop("link", ""))
    except ValueError:
        return forged()
    async with services.pool.acquire() as conn:
        link = await get_link(conn, link_id)
    session = session_of(request)
    token = form.get("csrf_token")
    if link is None or session is None or not isinstance(token, str):
        return forged()
    if not hmac.compare_digest(token.encode(), csrf_token(link, session).encode()):
        log.warning("connect.csrf_refused", link_id=str(link.id))
        return forged()
    app_name = await _opened(services, link)
    if isinstance(app_name, Template):
        return app_name
    wanted = values.pop("method", "")
    method = next((m for m in link.methods if m.value == wanted), None)
    if method is None:
        return forged()
    visit = Visit(services, link, app_name, session)
    unreadable = unreadable_field(form)
    if unreadable is not None:
        values.pop(unreadable, None)
        state = FormState(values=values, errors={unreadable: "must not contain control characters"})
        return form_page(visit, method, state, status=422)
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

            return await attempt(visit, method, values, make_draft)
        case ConnectionMethod.GRAPH_CONSENT:
            return await start_consent(visit, values)
        case ConnectionMethod.GRAPH_DELEGATED:
            return await start_sign_in(visit, values)


@get("/callback", include_in_schema=False)
async def connect_callback(request: Request[Any, Any, Any], services: NamedDependency[Services]) -> Response[Any]:
    """Microsoft's answer to admin consent or sign-in: accepted once, in the browser that asked."""
    query = request.query_params
    flow_state = query.get("state") or ""
    async with services.pool.acquire() as conn:
        link = await take_flow(conn, flow_state) if flow_state else None
    if link is None or link.flow_method is None:
        return message_page(
            "This answer from Microsoft does not match a connection in progress",
            [
                "It was already used, or it belongs to a link that was opened again since. Open the link you "
                "received and start again.",
            ],
            400,
        )
    app_name = await _opened(services, link)
    if isinstance(app_name, Template):
        return app_name
    session = session_of(request)
    if session is None or link.flow_session_hash != hash_secret(session):
        log.warning("connect.callback_other_browser", link_id=str(link.id))
        return message_page(
            "Please finish in the browser where you started",
            [
                "Microsoft sent this answer to a different browser (or cookies are blocked), so calbroker cannot "
                "tell it belongs to you. Nothing was saved. Open the link again in one browser and complete all "
                "steps there.",
            ],
            403,
        )
    visit = Visit(services, link, app_name, session)
    if services.settings.operator_app is None:
        return no_operator_app(app_name)
    method = link.flow_method
    values = dict(link.flow_form)
    signing_in_to = link.flow_tenant if method is ConnectionMethod.GRAPH_CONSENT else None
    error = query.get("error")
    if error:
        general = microsoft_refusal(
            error, query.get("error_description") or "", admin_sign_in=signing_in_to is not None
        )
        return form_page(visit, method, FormState(values=values, general=general), status=422)
    if method is ConnectionMethod.GRAPH_CONSENT and signing_in_to is None:
        return await consent_granted(visit, values, query.get("admin_consent") or "", query.get("tenant") or "")
    if signing_in_to is not None:
        return await finish_admin_sign_in(visit, values, signing_in_to, query.get("code") or "", flow_state)
    return await finish_sign_in(visit, values, query.get("code") or "", flow_state)
