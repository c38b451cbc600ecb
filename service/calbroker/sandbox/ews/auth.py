"""Who is calling the EWS endpoint: HTTP Basic or NTLM credentials of a service account or of a
mailbox user signing in as themselves (`Directory.ews_principal`).

Like IIS in front of on-premises Exchange, an unauthenticated request gets ``401`` with one
``WWW-Authenticate`` header per enabled scheme (Negotiate, NTLM, Basic), whatever its method: IIS
authenticates before the handler sees the request, so a NEGOTIATE message on a GET (ews-javascript-api's
@ewsjs/xhr sends its first one that way) gets its CHALLENGE too. exchangelib's auth-type
guess picks NTLM when offered (``transport.get_auth_method_from_response``), so NTLM is served for
real (``ntlm``): an NTLM-authenticated TCP connection stays authenticated for later requests,
which then carry no Authorization header (requests_ntlm relies on that).
"""

from __future__ import annotations

import base64
import binascii
from asyncio import BaseTransport
from dataclasses import dataclass, field

from aiohttp import web

from calbroker.sandbox.directory import Directory, EwsPrincipal, password_of
from calbroker.sandbox.ews.ntlm import Authenticate, NtlmError, challenge_message, message_type, new_server_challenge

_UNAUTHORIZED = "401 - Unauthorized: Access is denied due to invalid credentials."


@dataclass(slots=True)
class _Connection:
    challenge: bytes | None = None
    account_name: str | None = None  # set once the NTLM handshake succeeded


@dataclass(slots=True)
class EwsAuthenticator:
    """Basic and NTLM against ``Directory.ews_principal``; NTLM state is kept per TCP connection."""

    realm: str
    netbios_domain: str = "FABRIKAM"
    computer: str = "EXCH01"
    _connections: dict[BaseTransport, _Connection] = field(default_factory=dict)

    def authenticate(self, request: web.Request, directory: Directory) -> EwsPrincipal | web.Response:
        """The caller, or the 401 response to send (a challenge or a refusal)."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        scheme = scheme.lower()
        if scheme == "basic":
            return self._basic(token, directory) or self.unauthorized()
        if scheme in ("ntlm", "negotiate") and token:
            return self._ntlm(request, scheme, token, directory)
        known = self._connection(request, create=False)
        if known is not None and known.account_name is not None:
            account = directory.ews_principal(known.account_name)
            if account is not None:
                return account
        return self.unauthorized()

    def unauthorized(self) -> web.Response:
        response = web.Response(status=401, text=_UNAUTHORIZED)
        response.headers.add("WWW-Authenticate", "Negotiate")
        response.headers.add("WWW-Authenticate", "NTLM")
        response.headers.add("WWW-Authenticate", f'Basic realm="{self.realm}"')
        return response

    @staticmethod
    def _basic(token: str, directory: Directory) -> EwsPrincipal | None:
        try:
            username, _, password = base64.b64decode(token.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return directory.authenticate_ews(username, password)

    def _connection(self, request: web.Request, *, create: bool) -> _Connection | None:
        transport = request.transport
        if transport is None:
            return None
        for closed in [t for t in self._connections if t.is_closing()]:
            del self._connections[closed]
        if create:
            return self._connections.setdefault(transport, _Connection())
        return self._connections.get(transport)

    def _ntlm(self, request: web.Request, scheme: str, token: str, directory: Directory) -> EwsPrincipal | web.Response:
        connection = self._connection(request, create=True)
        try:
            raw = base64.b64decode(token.strip(), validate=True)
            kind = message_type(raw)
            if connection is None:
                raise NtlmError("no connection")
            if kind == 1:
                connection.challenge, connection.account_name = new_server_challenge(), None
                dns_domain = self.realm.partition(".")[2] or self.realm
                challenge = challenge_message(
                    raw,
                    server_challenge=connection.challenge,
                    domain=self.netbios_domain,
                    computer=self.computer,
                    dns_domain=dns_domain,
                )
                response = web.Response(status=401, text=_UNAUTHORIZED)
                name = "NTLM" if scheme == "ntlm" else "Negotiate"
                response.headers["WWW-Authenticate"] = f"{name} {base64.b64encode(challenge).decode()}"
                return response
            if kind == 3 and connection.challenge is not None:
                message = Authenticate.parse(raw)
                account = directory.ews_principal(message.account_name)
                challenge, connection.challenge = connection.challenge, None
                if account is not None and message.proves(password_of(account), challenge):
                    connection.account_name = message.account_name
                    return account
        except (NtlmError, binascii.Error):
            pass
        return self.unauthorized()
