"""Entra's browser pages in the sandbox as a browser sees them: the admin-consent page's tenant
chooser is a control of its form, and the sign-in returns the ID token OpenID Connect describes
(`tid`, the request's `nonce`, `wids` with the user's directory roles)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from calbroker.sandbox import SandboxThread
from calbroker.sandbox.entra import load_public_key, verify
from tests.fixtures.sandbox import SandboxControl

GLOBAL_ADMINISTRATOR = "62e90394-69f5-4237-9190-012177145e10"
USER = "b79fbf4d-3ef9-4689-8143-76b194e85509"
REDIRECT = "https://broker.example/connect/callback"


class Forms(HTMLParser):
    """The controls of each <form> on a page, as a browser would submit them (selects: chosen option)."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, Any]] = []
        self.outside: list[str] = []  # names of controls that belong to no form
        self._select: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append({"controls": {}, "options": {}})
            return
        form = self.forms[-1] if self.forms and not self.forms[-1].get("closed") else None
        if tag in ("input", "select", "button") and "name" in attributes:
            if form is None:
                self.outside.append(attributes["name"])
            elif tag == "input":
                form["controls"][attributes["name"]] = attributes.get("value", "")
        if tag == "select":
            self._select = attributes.get("name")
            if form is not None and self._select:
                form["options"][self._select] = []
        if tag == "option" and self._select and form is not None:
            form["options"][self._select].append(attributes.get("value", ""))

    def handle_endtag(self, tag: str) -> None:
        if tag == "form" and self.forms:
            self.forms[-1]["closed"] = True
        if tag == "select":
            self._select = None


@pytest.fixture
def http(sandbox: SandboxThread) -> Iterator[requests.Session]:
    session = requests.Session()
    session.trust_env = False
    session.verify = str(sandbox.ca_path)
    yield session
    session.close()


@pytest.fixture
def operator(sandbox_control: SandboxControl) -> Iterator[dict[str, Any]]:
    """The operator app; its consent in contoso and fabrikam is withdrawn afterwards."""
    app = sandbox_control.app("tailspin-operator")
    yield app
    for tenant in ("contoso", "fabrikam"):
        sandbox_control.delete(f"/_sandbox/tenants/{tenant}/consent/{app['client_id']}")


def test_the_tenant_chooser_is_a_control_of_the_consent_form(
    sandbox: SandboxThread, sandbox_control: SandboxControl, http: requests.Session, operator: dict[str, Any]
) -> None:
    params = {
        "client_id": operator["client_id"],
        "scope": "https://graph.microsoft.com/.default",
        "redirect_uri": REDIRECT,
        "state": "pick",
    }
    url = f"{sandbox.authority_host}/organizations/v2.0/adminconsent"
    page = http.get(url, params=params)
    parsed = Forms()
    parsed.feed(page.text)

    assert parsed.outside == []
    (form,) = parsed.forms
    fabrikam = sandbox_control.tenant("fabrikam")["id"]
    assert fabrikam in form["options"]["tenant"]
    # What a browser posts: every control of the form, the chosen option, the button pressed.
    answer = http.post(url, data=form["controls"] | {"tenant": fabrikam, "action": "accept"}, allow_redirects=False)
    assert answer.status_code == 302, answer.text
    query = parse_qs(urlsplit(answer.headers["Location"]).query)
    assert (query["admin_consent"], query["tenant"], query["state"]) == (["True"], [fabrikam], ["pick"])
    apps = sandbox_control.get("/_sandbox/tenants")["apps"]
    assert "fabrikam" in next(a for a in apps if a["key"] == "tailspin-operator")["consented_tenants"]


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def signing_key(keys: list[dict[str, Any]], token: str) -> Any:
    """The public key of the JWKS entry the token's `kid` names (from its `x5c` certificate)."""
    header = token.split(".", maxsplit=1)[0]
    kid = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"]
    entry = next(k for k in keys if k["kid"] == kid)
    certificate = x509.load_der_x509_certificate(base64.b64decode(entry["x5c"][0]))
    pem = certificate.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    return load_public_key(pem.decode())


def id_token(
    sandbox: SandboxThread,
    sandbox_control: SandboxControl,
    http: requests.Session,
    operator: dict[str, Any],
    email: str,
) -> str:
    """The ID token of `email`'s sign-in to its own tenant through the operator app (code flow, no PKCE)."""
    tenant = next(t for t in sandbox_control.tenants()["tenants"] if any(u["email"] == email for u in t["users"]))
    password = next(u["password"] for u in tenant["users"] if u["email"] == email)
    fields = {
        "client_id": operator["client_id"],
        "response_type": "code",
        "redirect_uri": REDIRECT,
        "scope": "openid profile",
        "state": "s",
        "nonce": "nonce-of-this-sign-in",
    }
    signed_in = http.post(
        f"{sandbox.authority_host}/{tenant['id']}/oauth2/v2.0/authorize",
        data=fields | {"username": email, "password": password},
        allow_redirects=False,
    )
    assert signed_in.status_code == 302, signed_in.text
    code = parse_qs(urlsplit(signed_in.headers["Location"]).query)["code"][0]
    answer = http.post(
        f"{sandbox.authority_host}/{tenant['id']}/oauth2/v2.0/token",
        data={
            "grant_type": "authorization_code",
            "client_id": operator["client_id"],
            "client_secret": operator["secrets"][0]["value"],
            "code": code,
            "redirect_uri": REDIRECT,
        },
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert "refresh_token" not in body  # no offline_access was asked for
    return str(body["id_token"])


def test_id_tokens_name_the_tenant_echo_the_nonce_and_list_directory_roles(
    sandbox: SandboxThread, sandbox_control: SandboxControl, http: requests.Session, operator: dict[str, Any]
) -> None:
    contoso = sandbox_control.tenant("contoso")
    document = http.get(f"{sandbox.authority_host}/{contoso['id']}/v2.0/.well-known/openid-configuration").json()
    keys = http.get(document["jwks_uri"]).json()["keys"]
    admin = id_token(sandbox, sandbox_control, http, operator, contoso["admin"])

    header, claims = verify(admin, signing_key(keys, admin))
    assert header["alg"] == "RS256"
    assert claims["iss"] == document["issuer"] == f"{sandbox.authority_host}/{contoso['id']}/v2.0"
    assert (claims["aud"], claims["tid"], claims["nonce"], claims["ver"]) == (
        operator["client_id"],
        contoso["id"],
        "nonce-of-this-sign-in",
        "2.0",
    )
    assert claims["wids"] == [GLOBAL_ADMINISTRATOR, USER]
    member = claims_of(id_token(sandbox, sandbox_control, http, operator, "adele.vance@contoso.com"))
    assert member["wids"] == [USER]
