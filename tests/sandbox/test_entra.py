"""Entra ID through the real msal ConfidentialClientApplication: secrets, certificates, the token
cache, every AADSTS error we model, admin consent and the delegated authorization-code flow."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msal
import pytest
import requests

from calbroker.sandbox import SandboxThread
from tests.fixtures.sandbox import SandboxControl

GRAPH_DEFAULT = ["https://graph.microsoft.com/.default"]


@pytest.fixture
def http(sandbox: SandboxThread, sandbox_ca_env: str) -> Iterator[requests.Session]:
    """A requests session that trusts only the sandbox CA, whatever the environment says."""
    session = requests.Session()
    session.trust_env = False
    session.verify = str(sandbox.ca_path)
    yield session
    session.close()


@pytest.fixture
def operator_consent(sandbox_control: SandboxControl) -> Iterator[str]:
    """The operator app's client id; its consent in contoso/fabrikam is revoked after the test."""
    client_id = sandbox_control.app("tailspin-operator")["client_id"]
    yield client_id
    for tenant in ("contoso.com", "fabrikam.com"):
        sandbox_control.delete(f"/_sandbox/tenants/{tenant}/consent/{client_id}")


def confidential(
    sandbox: SandboxThread,
    http: requests.Session,
    client_id: str,
    credential: Any,
    tenant: str = "contoso.onmicrosoft.com",
) -> msal.ConfidentialClientApplication:
    return msal.ConfidentialClientApplication(
        client_id,
        client_credential=credential,
        authority=f"{sandbox.authority_host}/{tenant}",
        instance_discovery=False,
        http_client=http,
    )


def claims(token: str) -> dict[str, Any]:
    import base64

    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def test_client_secret_token_then_cache(
    sandbox: SandboxThread, sandbox_control: SandboxControl, http: requests.Session
) -> None:
    app = sandbox_control.app("contoso-secret")
    client = confidential(sandbox, http, app["client_id"], app["secrets"][0]["value"])

    first = client.acquire_token_for_client(scopes=GRAPH_DEFAULT)
    second = client.acquire_token_for_client(scopes=GRAPH_DEFAULT)

    assert first["token_source"] == "identity_provider"
    assert second["token_source"] == "cache"
    assert sandbox_control.count("entra:token") == 1
    token = claims(first["access_token"])
    assert token["aud"] == "https://graph.microsoft.com"
    assert token["tid"] == sandbox_control.tenant("contoso")["id"]
    assert token["appid"] == app["client_id"]
    assert "Calendars.ReadWrite" in token["roles"]
    assert token["exp"] - token["iat"] == first["expires_in"]


@pytest.mark.parametrize("style", ["thumbprint", "public_certificate"])
def test_certificate_token(
    sandbox: SandboxThread, sandbox_control: SandboxControl, http: requests.Session, style: str
) -> None:
    app = sandbox_control.app("contoso-certificate")
    cert = app["certificates"][0]
    # msal signs RS256 + x5t for a thumbprint and PS256 + x5t#S256 for a public certificate.
    credential = {"private_key": cert["private_key_pem"]}
    if style == "thumbprint":
        credential["thumbprint"] = cert["thumbprint_sha1"]
    else:
        credential["public_certificate"] = cert["certificate_pem"]
    client = confidential(sandbox, http, app["client_id"], credential, tenant=sandbox_control.tenant("contoso")["id"])

    result = client.acquire_token_for_client(scopes=GRAPH_DEFAULT)

    assert "access_token" in result, result
    assert claims(result["access_token"])["appidacr"] == "2"


def test_assertion_signed_by_another_key_is_refused(
    sandbox: SandboxThread, sandbox_control: SandboxControl, http: requests.Session, tmp_path: Any
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    app = sandbox_control.app("contoso-certificate")
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = stranger.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    credential = {"private_key": pem, "thumbprint": app["certificates"][0]["thumbprint_sha1"]}
    client = confidential(sandbox, http, app["client_id"], credential)

    result = client.acquire_token_for_client(scopes=GRAPH_DEFAULT)

    assert result["error"] == "invalid_client"
    assert result["error_codes"] == [700027]


@pytest.mark.parametrize(
    ("app_key", "secret", "code", "error"),
    [
        ("contoso-secret", "not-the-secret", 7000215, "invalid_client"),
        ("contoso-expired", None, 7000222, "invalid_client"),
        ("tailspin-unconsented", None, 700016, "unauthorized_client"),
    ],
)
def test_token_errors_as_entra_returns_them(
    sandbox: SandboxThread,
    sandbox_control: SandboxControl,
    http: requests.Session,
    app_key: str,
    secret: str | None,
    code: int,
    error: str,
) -> None:
    app = sandbox_control.app(app_key)
    client = confidential(sandbox, http, app["client_id"], secret or app["secrets"][0]["value"])

    result = client.acquire_token_for_client(scopes=GRAPH_DEFAULT)
    again = client.acquire_token_for_client(scopes=GRAPH_DEFAULT)

    assert result["error"] == error
    assert result["error_codes"] == [code]
    assert result["error_description"].startswith(f"AADSTS{code}: ")
    assert "\r\nTrace ID: " in result["error_description"]
    assert "\r\nCorrelation ID: " in result["error_description"]
    assert {"timestamp", "trace_id", "correlation_id", "error_uri"} <= set(result)
    assert again["error_codes"] == [code]
    # msal keeps exact HTTP 400 answers in its HTTP cache for 60 s (throttled_http_client.py), so
    # only the 401s reach the sandbox twice.
    assert sandbox_control.count("entra:token") == (1 if code == 700016 else 2)


def test_unknown_tenant_fails_in_the_constructor(sandbox: SandboxThread, http: requests.Session) -> None:
    with pytest.raises(ValueError, match="Unable to get authority configuration"):
        confidential(sandbox, http, "00000000-0000-0000-0000-000000000001", "x", tenant="nowhere.example.com")
    response = http.get(f"{sandbox.authority_host}/nowhere.example.com/v2.0/.well-known/openid-configuration")
    assert response.status_code == 400
    assert response.json()["error_codes"] == [90002]


def test_openid_configuration_and_keys(
    sandbox: SandboxThread, sandbox_control: SandboxControl, http: requests.Session
) -> None:
    tenant_id = sandbox_control.tenant("contoso")["id"]
    document = http.get(f"{sandbox.authority_host}/contoso.com/v2.0/.well-known/openid-configuration").json()
    assert document["token_endpoint"] == f"{sandbox.authority_host}/{tenant_id}/oauth2/v2.0/token"
    assert document["issuer"] == f"{sandbox.authority_host}/{tenant_id}/v2.0"
    keys = http.get(document["jwks_uri"]).json()["keys"]
    assert keys[0]["kty"] == "RSA"
    assert keys[0]["kid"]


def test_admin_consent_accept_then_token(
    sandbox: SandboxThread, sandbox_control: SandboxControl, http: requests.Session, operator_consent: str
) -> None:
    secret = sandbox_control.app("tailspin-operator")["secrets"][0]["value"]
    client = confidential(sandbox, http, operator_consent, secret)
    assert client.acquire_token_for_client(scopes=GRAPH_DEFAULT)["error_codes"] == [700016]

    params = {
        "client_id": operator_consent,
        "scope": "https://graph.microsoft.com/.default",
        "redirect_uri": "https://broker.example/connect/callback",
        "state": "csrf-123",
    }
    page = http.get(f"{sandbox.authority_host}/contoso.onmicrosoft.com/v2.0/adminconsent", params=params)
    assert page.status_code == 200
    assert 'value="accept"' in page.text
    assert "<script" not in page.text
    answer = http.post(
        f"{sandbox.authority_host}/contoso.onmicrosoft.com/v2.0/adminconsent",
        data={**params, "action": "accept"},
        allow_redirects=False,
    )

    assert answer.status_code == 302
    location = urlsplit(answer.headers["Location"])
    query = parse_qs(location.query)
    assert location.netloc == "broker.example"
    assert query["admin_consent"] == ["True"]
    assert query["tenant"] == [sandbox_control.tenant("contoso")["id"]]
    assert query["state"] == ["csrf-123"]
    assert query["scope"] == ["https://graph.microsoft.com/.default"]
    # A fresh client: the first one holds the 400 in msal's HTTP cache for 60 s.
    result = confidential(sandbox, http, operator_consent, secret).acquire_token_for_client(scopes=GRAPH_DEFAULT)
    assert "Calendars.ReadWrite" in claims(result["access_token"])["roles"]


def test_admin_consent_cancel_redirects_with_access_denied(
    sandbox: SandboxThread, http: requests.Session, operator_consent: str
) -> None:
    params = {"client_id": operator_consent, "redirect_uri": "https://broker.example/cb", "state": "s1"}
    answer = http.post(
        f"{sandbox.authority_host}/organizations/adminconsent",
        data={**params, "action": "cancel"},
        allow_redirects=False,
    )

    query = parse_qs(urlsplit(answer.headers["Location"]).query)
    assert answer.status_code == 302
    assert query["error"] == ["access_denied"]
    assert query["state"] == ["s1"]
    assert query["error_description"][0].startswith("AADSTS65004")


@pytest.mark.filterwarnings("ignore:response_mode='form_post' is recommended")
def test_delegated_code_flow_with_pkce_and_refresh(
    sandbox: SandboxThread, sandbox_control: SandboxControl, http: requests.Session, operator_consent: str
) -> None:
    secret = sandbox_control.app("tailspin-operator")["secrets"][0]["value"]
    user = next(u for u in sandbox_control.tenant("contoso")["users"] if u["email"] == "adele.vance@contoso.com")
    client = confidential(sandbox, http, operator_consent, secret, tenant="organizations")
    sandbox_control.patch("/_sandbox/settings", {"token_lifetime_s": 60})
    try:
        scopes = ["https://graph.microsoft.com/Calendars.ReadWrite", "https://graph.microsoft.com/User.Read"]
        flow = client.initiate_auth_code_flow(scopes, redirect_uri="http://localhost:8765/callback")
        assert "code_challenge_method=S256" in flow["auth_uri"]
        form = http.get(flow["auth_uri"])
        assert form.status_code == 200
        assert 'name="password"' in form.text
        fields = dict(parse_qs(urlsplit(flow["auth_uri"]).query, keep_blank_values=True))
        data = {k: v[0] for k, v in fields.items()} | {"username": user["email"], "password": "wrong"}
        retry = http.post(flow["auth_uri"].split("?")[0], data=data, allow_redirects=False)
        assert retry.status_code == 200
        assert "AADSTS50126" in retry.text
        signed_in = http.post(
            flow["auth_uri"].split("?")[0], data=data | {"password": user["password"]}, allow_redirects=False
        )
        assert signed_in.status_code == 302
        auth_response = {k: v[0] for k, v in parse_qs(urlsplit(signed_in.headers["Location"]).query).items()}

        result = client.acquire_token_by_auth_code_flow(flow, auth_response)

        assert "access_token" in result, result
        assert result["id_token_claims"]["preferred_username"] == user["email"]
        token = claims(result["access_token"])
        assert token["scp"] == "Calendars.ReadWrite User.Read"
        assert token["upn"] == user["email"]
        me = http.get(f"{sandbox.graph_url}/me", headers={"Authorization": "Bearer " + result["access_token"]})
        assert me.json()["mail"] == user["email"]
        account = client.get_accounts()[0]
        before = sandbox_control.count("entra:token")
        # A 60 s token is inside msal's refresh margin, so the silent call redeems the refresh token.
        silent = client.acquire_token_silent(scopes, account=account)
        assert silent is not None
        assert silent["access_token"] != result["access_token"]
        assert sandbox_control.count("entra:token") == before + 1
    finally:
        sandbox_control.patch("/_sandbox/settings", {"token_lifetime_s": 3599})
