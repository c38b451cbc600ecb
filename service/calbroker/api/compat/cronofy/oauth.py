"""Cronofy's OAuth endpoints: tokens, revocation, and authorize links that land on calbroker's connect pages.

- `POST /oauth/token`: `authorization_code` and `refresh_token` grants, client credentials in the
  body (JSON or form; the SDKs' stale `Authorization` header is ignored), RFC 6749 errors on 400.
- `POST /oauth/token/revoke`: RFC 7009 (an unknown token is not an error).
- `GET /oauth/authorize` (an account) and `GET /enterprise_connect/oauth/authorize` (a service
  account): the browser goes through a single-use authorize link (design §7) and comes back to
  `/oauth/connected`, which sends it to the application's `redirect_uri` with a code.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import msgspec
from litestar import MediaType, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.response import Redirect

from calbroker.api.compat.cronofy.auth import SERVICE_ACCOUNT_SCOPE, expand_scope
from calbroker.api.compat.cronofy.errors import OAuthError
from calbroker.api.compat.cronofy.wire import decode_body
from calbroker.api.connections import offered_methods, redirect_target
from calbroker.domain.connections import Connection
from calbroker.domain.errors import InvalidRequest, NotFound
from calbroker.services import Services
from calbroker.store.connect_links import create_link, get_link
from calbroker.store.connection_checks import test_mailbox_of
from calbroker.store.connections import get_connection
from calbroker.store.cronofy import (
    CronofyClient,
    Grant,
    IssuedTokens,
    authenticate_client,
    bind_code,
    client_by_id,
    client_of,
    issue_code,
    issue_grant,
    redeem_code,
    refresh_grant,
    revoke_token,
    save_account,
    start_authorization,
    take_authorization,
)
from calbroker.store.database import Connection as DbConnection

__all__ = ["authorize", "authorize_service_account", "connected", "revoke", "token"]

ACCESS_TTL = timedelta(hours=1)
CODE_TTL = timedelta(minutes=10)
_LINK_TTL = timedelta(hours=1)
_PROVIDER_NAMES = {"graph": "office365", "ews": "exchange"}


class _TokenRequest(msgspec.Struct, kw_only=True):
    """RFC 6749 §3.2: unrecognised parameters are ignored, so this Struct is deliberately tolerant."""

    grant_type: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    code: str | None = None
    redirect_uri: str | None = None
    refresh_token: str | None = None


class _RevokeRequest(msgspec.Struct, kw_only=True):
    client_id: str | None = None
    client_secret: str | None = None
    token: str | None = None


def provider_name(connection: Connection) -> str:
    """Cronofy's `provider_name` for a connection's protocol (cronofy.md §2.3)."""
    return _PROVIDER_NAMES[connection.kind.value]


async def _client(conn: DbConnection, client_id: str | None, client_secret: str | None) -> CronofyClient:
    if not client_id or not client_secret:
        raise OAuthError("invalid_client", "client_id and client_secret are required in the body.")
    client = await authenticate_client(conn, client_id, client_secret)
    if client is None:
        raise OAuthError("invalid_client", "The client_id and client_secret do not match an application.")
    return client


async def _token_body(conn: DbConnection, grant: Grant, issued: IssuedTokens) -> dict[str, Any]:
    body: dict[str, Any] = {
        "token_type": "bearer",
        "access_token": issued.access_token,
        "expires_in": issued.expires_in,
        "refresh_token": issued.refresh_token,
        "scope": grant.scope,
    }
    ids = grant.client.ids
    if grant.account is None:
        body["service_account_id"] = ids.service_account(grant.connection_id)
        return body
    connection = await get_connection(conn, grant.client.application_id, grant.connection_id)
    body.update(
        account_id=grant.account.account_id,
        sub=grant.account.account_id,
        linking_profile={
            "provider_name": provider_name(connection),
            "profile_id": ids.profile(connection.id),
            "profile_name": connection.display_name,
        },
    )
    return body


_BAD_CODE = OAuthError(
    "invalid_grant",
    "The code is unknown, expired or already used, or redirect_uri differs from the one the code was sent to.",
)


async def _redeem(conn: DbConnection, client: CronofyClient, data: _TokenRequest) -> tuple[Grant, IssuedTokens] | None:
    """The grant a code buys, or None when it buys nothing (a replay has revoked what it bought first)."""
    if not data.code or not data.redirect_uri:
        raise OAuthError("invalid_request", "code and redirect_uri are required.")
    redeemed = await redeem_code(conn, client, data.code, data.redirect_uri)
    if redeemed is None or redeemed.reused:
        return None
    issued = await issue_grant(
        conn,
        client,
        scope=redeemed.scope,
        account=redeemed.account,
        connection_id=redeemed.connection_id,
        access_ttl=ACCESS_TTL,
    )
    await bind_code(conn, client, data.code, issued.grant_id)
    connection_id = redeemed.account.connection_id if redeemed.account else redeemed.connection_id
    assert connection_id is not None
    return Grant(issued.grant_id, client, redeemed.scope, redeemed.account, connection_id), issued


@post("/oauth/token", status_code=200, include_in_schema=False)
async def token(request: Request[Any, Any, Any], services: NamedDependency[Services]) -> Response[Any]:
    """Exchange a code (from a browser authorization or a service-account callback) or a refresh token."""
    data = await decode_body(request, _TokenRequest, form=True)
    # The transaction commits even when the code was a replay: the revocation it caused must stick.
    async with services.pool.acquire() as conn, conn.transaction():
        client = await _client(conn, data.client_id, data.client_secret)
        match data.grant_type:
            case "authorization_code":
                found = await _redeem(conn, client, data)
            case "refresh_token":
                if not data.refresh_token:
                    raise OAuthError("invalid_request", "refresh_token is required.")
                found = await refresh_grant(conn, client, data.refresh_token, ACCESS_TTL)
                if found is None:
                    raise OAuthError("invalid_grant", "The refresh token is unknown or revoked.")
            case None:
                raise OAuthError("invalid_request", "grant_type is required.")
            case _:
                raise OAuthError("unsupported_grant_type", "grant_type must be authorization_code or refresh_token.")
        if found is not None:
            body = await _token_body(conn, *found)
    if found is None:
        raise _BAD_CODE
    return Response(body, media_type=MediaType.JSON, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


@post("/oauth/token/revoke", status_code=200, include_in_schema=False)
async def revoke(request: Request[Any, Any, Any], services: NamedDependency[Services]) -> Response[Any]:
    """RFC 7009: 200 whether or not the token was live (a client cannot probe for tokens)."""
    data = await decode_body(request, _RevokeRequest, form=True)
    async with services.pool.acquire() as conn, conn.transaction():
        client = await _client(conn, data.client_id, data.client_secret)
        if not data.token:
            raise OAuthError("invalid_request", "token is required.")
        await revoke_token(conn, client, data.token, actor=f"cronofy:{client.client_id}")
    return Response(b"", status_code=200)


def _with_query(url: str, **params: str | None) -> str:
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    query.extend((k, v) for k, v in params.items() if v is not None)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))


async def _authorize(request: Request[Any, Any, Any], services: Services, *, service_account: bool) -> Response[Any]:
    params = request.query_params
    settings = services.settings
    async with services.pool.acquire() as conn:
        client = await client_by_id(conn, params.get("client_id", ""))
        if client is None:
            raise OAuthError("invalid_client", "client_id is not the client id of an application on this server.")
        try:
            redirect_uri = redirect_target(params.get("redirect_uri", ""), settings)
        except InvalidRequest as exc:
            raise OAuthError("invalid_request", f"redirect_uri {exc.errors[0].message}") from None
        state = params.get("state")
        if params.get("response_type") != "code":
            return Redirect(_with_query(redirect_uri, error="unsupported_response_type", state=state), status_code=303)
        scope = params.get("scope", "").strip()
        if service_account:
            if not scope or SERVICE_ACCOUNT_SCOPE not in expand_scope(scope):
                return Redirect(_with_query(redirect_uri, error="invalid_scope", state=state), status_code=303)
        elif not scope:
            return Redirect(_with_query(redirect_uri, error="invalid_scope", state=state), status_code=303)
        # The link carries our own state back; the application's state waits in the pending row.
        ours = secrets.token_urlsafe(32)
        async with conn.transaction():
            issued = await create_link(
                conn,
                application_id=client.application_id,
                redirect_url=f"{settings.public_url}/compat/cronofy/oauth/connected",
                state=ours,
                methods=offered_methods(settings, None),
                access_level=None,
                expires_in=_LINK_TTL,
                actor=f"cronofy:{client.client_id}",
            )
            await start_authorization(
                conn,
                client,
                state=ours,
                link_id=issued.link.id,
                service_account=service_account,
                redirect_uri=redirect_uri,
                scope=scope,
                app_state=state,
            )
    return Redirect(f"{settings.public_url}/connect/{issued.token}", status_code=303)


@get("/oauth/authorize", include_in_schema=False)
async def authorize(request: Request[Any, Any, Any], services: NamedDependency[Services]) -> Response[Any]:
    """Individual Connect: the code redeems to an account token for the mailbox verified while connecting."""
    return await _authorize(request, services, service_account=False)


@get("/enterprise_connect/oauth/authorize", include_in_schema=False)
async def authorize_service_account(
    request: Request[Any, Any, Any], services: NamedDependency[Services]
) -> Response[Any]:
    """Enterprise Connect: the code redeems to a service-account token for the connection just made."""
    return await _authorize(request, services, service_account=True)


@get("/oauth/connected", include_in_schema=False)
async def connected(request: Request[Any, Any, Any], services: NamedDependency[Services]) -> Response[Any]:
    """Where the connect pages send the admin back: a code for the connection the link really made.

    The `connection_id` in the query is not trusted: the link row says which connection it yielded.
    """
    state = request.query_params.get("state", "")
    async with services.pool.acquire() as conn, conn.transaction():
        pending = await take_authorization(conn, state) if state else None
        if pending is None:
            raise NotFound("This authorization is unknown or was already completed; start again from the application.")
        link = await get_link(conn, pending.link_id)
        client = await client_of(conn, pending.application_id)
        if link is None or link.connection_id is None or client is None:
            raise NotFound("The authorize link did not produce a connection; start again from the application.")
        if pending.service_account:
            code = await issue_code(
                conn,
                client,
                redirect_uri=pending.redirect_uri,
                scope=pending.scope,
                connection_id=link.connection_id,
                ttl=CODE_TTL,
            )
        else:
            mailbox = await test_mailbox_of(conn, link.connection_id)
            if mailbox is None:
                raise NotFound("The connection has no verified mailbox to authorize; start again.")
            account = await save_account(conn, client, link.connection_id, mailbox)
            code = await issue_code(
                conn, client, redirect_uri=pending.redirect_uri, scope=pending.scope, account=account, ttl=CODE_TTL
            )
    return Redirect(_with_query(pending.redirect_uri, code=code, state=pending.app_state), status_code=303)
