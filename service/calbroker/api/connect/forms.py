"""The connect pages' forms: what each method asks, how a submission becomes a `ConnectionDraft`,
how a failure becomes messages next to the fields that caused it, and the page that shows them.

Pure functions over the submitted values (no I/O), so the page handlers stay thin and the
mapping from Microsoft's refusals to "what to fix" is in one place. Secrets (client secret,
certificate, passwords) are read from the submission but never copied into the values that are
shown again.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from litestar.response import Template

from calbroker.api.connect.guides import (
    GRAPH_PERMISSIONS,
    METHODS,
    access_policy_commands,
    ews_level_guides,
    graph_level_labels,
)
from calbroker.api.connect.messages import CONNECT_HEADERS
from calbroker.api.connect.session import Visit
from calbroker.api.wire import TEXT_PATTERN
from calbroker.config import Settings
from calbroker.domain.connections import (
    AccessLevel,
    ConnectionMethod,
    ConnectionPurpose,
    Credentials,
    EwsServiceAccount,
    GraphClientSecret,
    normalize_domain,
    normalize_email,
)
from calbroker.domain.errors import (
    AccessLevelInsufficient,
    CalbrokerError,
    CredentialsRejected,
    FieldError,
    ImpersonationDenied,
    InvalidRequest,
    MailboxNotFound,
    MailboxOutOfScope,
    UpstreamError,
    UpstreamThrottled,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from calbroker.domain.secret_expiry import parse_secret_expiry
from calbroker.providers.graph import certificate_credentials
from calbroker.redaction import redact_text
from calbroker.services.onboarding import ConnectionDraft

__all__ = [
    "CLOUD_NAMES",
    "FORM_FIELDS",
    "SECRET_FIELDS",
    "FormState",
    "access_levels_for",
    "default_cloud",
    "draft_from_form",
    "failure_state",
    "form_page",
    "kept_values",
    "parse_list",
    "precheck_consent",
    "precheck_delegated",
    "unreadable_field",
]

SECRET_FIELDS = frozenset({"client_secret", "certificate", "certificate_password", "password", "csrf_token"})
"""Never written back into a re-shown form, a flow record or a log line."""

CLOUD_NAMES = {
    "global": "Microsoft 365 (worldwide)",
    "usgov": "US Government (GCC High)",
    "usgov-dod": "US Government (DoD)",
    "china": "China (operated by 21Vianet)",
    "sandbox": "calbroker sandbox (test tenants)",
}

_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_SPLIT = re.compile(r"[\s,;]+")
_TEXT = re.compile(TEXT_PATTERN)
_MAX_CERTIFICATE_BYTES = 64 * 1024

# Where a draft's field errors are shown on the form (the draft and the form mostly agree).
_FIELD_FOR = {"secret_expires": "secret_expires_on", "client_secret": "client_secret", "cloud": "cloud"}


@dataclass(slots=True)
class FormState:
    """What a form shows: the values typed (secrets excepted), errors per field, and one general error."""

    values: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    general: str | None = None
    """A failure no single field caused (consent missing, Microsoft unreachable…)."""
    title: str | None = None
    """The error summary's heading when it should say more than "That did not work"."""
    can_recheck: bool = False
    """Admin consent was granted but verification failed: offer to check again without a new consent."""

    @property
    def failed(self) -> bool:
        return bool(self.errors or self.general)


def kept_values(form: Mapping[str, object]) -> dict[str, str]:
    """The submitted text values that may be shown again: everything but secrets and uploads."""
    return {k: v.strip() for k, v in form.items() if isinstance(v, str) and k not in SECRET_FIELDS}


def unreadable_field(form: Mapping[str, object]) -> str | None:
    """The first submitted text field holding a control character (U+0000 and kin), if any.

    Such a value can be neither stored (PostgreSQL refuses U+0000) nor sent to Exchange (XML 1.0
    refuses the rest), so the form is shown again naming the field instead.
    """
    return next((k for k, v in form.items() if isinstance(v, str) and not _TEXT.match(v)), None)


def parse_list(raw: str) -> list[str]:
    """Domains or mailboxes typed one per line, or separated by commas, semicolons or spaces."""
    return [item for item in _SPLIT.split(raw.strip()) if item]


def default_cloud(settings: Settings) -> str:
    """The cloud the connect pages use unless the admin picks another: the operator app's, else worldwide."""
    return settings.operator_app.cloud if settings.operator_app is not None else "global"


def access_levels_for(method: ConnectionMethod, requested: AccessLevel | None) -> list[AccessLevel]:
    """The levels the form offers: the one the application asked for, or all that make sense for the method."""
    if method is ConnectionMethod.EWS:
        offered = [AccessLevel.FULL, AccessLevel.RESTRICTED, AccessLevel.FREE_BUSY]
    else:
        # Graph permissions are calendar-only already, so "restricted" adds nothing there.
        offered = [AccessLevel.FULL, AccessLevel.FREE_BUSY]
    if requested is None:
        return offered
    if requested is AccessLevel.RESTRICTED and method is not ConnectionMethod.EWS:
        return [AccessLevel.FULL]
    return [requested]


def _access_level(values: Mapping[str, str], offered: list[AccessLevel]) -> AccessLevel:
    raw = values.get("access_level") or offered[0].value
    try:
        level = AccessLevel(raw)
    except ValueError:
        raise InvalidRequest.field("access_level", "choose one of the access levels listed") from None
    if level not in offered:
        raise InvalidRequest.field("access_level", "choose one of the access levels listed")
    return level


def _purpose(values: Mapping[str, str]) -> ConnectionPurpose:
    try:
        return ConnectionPurpose(values.get("purpose") or ConnectionPurpose.CALENDARS.value)
    except ValueError:
        raise InvalidRequest.field("purpose", "choose what the app is for") from None


def _required(values: Mapping[str, str], name: str, message: str) -> str:
    value = values.get(name, "").strip()
    if not value:
        raise InvalidRequest.field(name, message)
    return value


def _domains(values: Mapping[str, str], test_mailbox: str) -> list[str]:
    typed = parse_list(values.get("domains", ""))
    if typed:
        return typed
    return [test_mailbox.rpartition("@")[2]] if "@" in test_mailbox else []


def _graph_app_credentials(
    values: Mapping[str, str], certificate: bytes | None, secrets: Mapping[str, str]
) -> tuple[Credentials, datetime, str]:
    tenant_id = _required(values, "tenant_id", "enter the Directory (tenant) ID from the app registration’s Overview")
    client_id = _required(values, "client_id", "enter the Application (client) ID from the app registration’s Overview")
    if not _GUID.match(client_id):
        raise InvalidRequest.field(
            "client_id", "is a GUID like 1b2c3d4e-0000-4000-8000-123456789abc: copy Application (client) ID"
        )
    if certificate:
        if len(certificate) > _MAX_CERTIFICATE_BYTES:
            raise InvalidRequest.field("certificate", "is larger than a PEM certificate with its key can be (64 KB)")
        password = secrets.get("certificate_password") or None
        credentials, expires = certificate_credentials(
            tenant_id, client_id, certificate, password=password.encode() if password else None
        )
        return credentials, expires, tenant_id
    secret = secrets.get("client_secret", "")
    if not secret.strip():
        raise InvalidRequest(
            "enter a client secret or upload a certificate",
            [
                FieldError("client_secret", "enter the client secret’s Value, or upload a certificate below"),
            ],
        )
    if _GUID.match(secret.strip()):
        raise InvalidRequest.field(
            "client_secret",
            "this is the secret’s ID (a GUID), not its Value: copy the Value column, shown only right after "
            "the secret is created (create a new one if it is hidden now)",
        )
    expires = parse_secret_expiry(
        _required(values, "secret_expires_on", "enter the date shown under Expires for this secret"),
        now=datetime.now(UTC),
    )
    return GraphClientSecret(tenant_id, client_id, secret.strip()), expires, tenant_id


def draft_from_form(
    method: ConnectionMethod,
    values: Mapping[str, str],
    secrets: Mapping[str, str],
    *,
    application_id: uuid.UUID,
    requested_level: AccessLevel | None,
    settings: Settings,
    certificate: bytes | None = None,
) -> ConnectionDraft:
    """The draft for the own-app-registration and Exchange service-account forms (typed in full)."""
    test_mailbox = _required(values, "test_mailbox", "enter a mailbox to test the connection with")
    level = _access_level(values, access_levels_for(method, requested_level))
    domains = _domains(values, test_mailbox)
    allowed = parse_list(values.get("allowed_mailboxes", ""))
    if method is ConnectionMethod.GRAPH_APP:
        cloud = values.get("cloud") or default_cloud(settings)
        if cloud not in settings.clouds:
            raise InvalidRequest.field("cloud", "choose one of the Microsoft clouds listed")
        credentials, expires, tenant_id = _graph_app_credentials(values, certificate, secrets)
        return ConnectionDraft(
            application_id=application_id,
            method=method,
            access_level=level,
            credentials=credentials,
            domains=domains,
            test_mailbox=test_mailbox,
            cloud=cloud,
            tenant_id=tenant_id,
            allowed_mailboxes=allowed,
            secret_expires_at=expires,
            purpose=_purpose(values),
        )
    if method is ConnectionMethod.EWS:
        endpoint = _required(
            values, "endpoint", "enter the EWS URL, the Exchange server’s name or a mailbox’s email address"
        )
        username = _required(values, "username", "enter the service account, e.g. FABRIKAM\\svc-calbroker")
        password = secrets.get("password", "")
        if not password:
            raise InvalidRequest.field("password", "enter the service account’s password")
        auth_type = values.get("auth_type") or "ntlm"
        if auth_type not in ("ntlm", "basic"):
            raise InvalidRequest.field("auth_type", "choose NTLM or Basic")
        return ConnectionDraft(
            application_id=application_id,
            method=method,
            access_level=level,
            credentials=EwsServiceAccount(endpoint, username, password, auth_type),
            domains=domains,
            test_mailbox=test_mailbox,
            cloud=default_cloud(settings),
            allowed_mailboxes=allowed,
        )
    raise ValueError(f"{method} is not typed in a form; it goes through Microsoft's pages")


def precheck_consent(values: Mapping[str, str], requested_level: AccessLevel | None) -> dict[str, str]:
    """Check the consent form before sending the admin to Microsoft; returns the normalised values."""
    test_mailbox = normalize_email(
        _required(values, "test_mailbox", "enter a mailbox to test the connection with"), field_name="test_mailbox"
    )
    domains = [normalize_domain(d) for d in _domains(values, test_mailbox)]
    if test_mailbox.rpartition("@")[2] not in domains:
        raise InvalidRequest.field("test_mailbox", f"must be in one of the domains you listed ({', '.join(domains)})")
    level = _access_level(values, access_levels_for(ConnectionMethod.GRAPH_CONSENT, requested_level))
    return {"test_mailbox": test_mailbox, "domains": ", ".join(domains), "access_level": level.value}


def precheck_delegated(values: Mapping[str, str]) -> dict[str, str]:
    mailbox = normalize_email(
        _required(values, "mailbox", "enter the email address of the mailbox you want to connect"), field_name="mailbox"
    )
    return {"mailbox": mailbox}


def _sentence(message: str) -> str:
    """Capitalise a field message for display, unless it starts with a name (a host, an address)."""
    first = message.split(" ", 1)[0]
    return message[:1].upper() + message[1:] if first.isalpha() else message


def _field(name: str) -> str:
    return _FIELD_FOR.get(name, name)


def failure_state(
    exc: CalbrokerError, method: ConnectionMethod, values: Mapping[str, str], form_fields: frozenset[str]
) -> FormState:
    """The form again, with the failure next to the field to fix (or as a general message)."""
    state = FormState(values=dict(values))
    detail = redact_text(exc.detail)

    def put(name: str, message: str) -> None:
        if name in form_fields:
            state.errors.setdefault(name, message)
        else:
            state.general = message if state.general is None else f"{state.general} {message}"

    match exc:
        case InvalidRequest():
            for error in exc.errors or (FieldError("", detail),):
                name = _field(error.field.split("[", 1)[0])
                put(name, redact_text(_sentence(error.message)))
        case MailboxOutOfScope():
            hint = {
                ConnectionMethod.GRAPH_APP: " If you scoped the app with an application access policy, add the "
                "mailbox to the policy’s group (policy changes can take a while to reach Microsoft Graph), or "
                "test with a mailbox that is in it.",
                ConnectionMethod.EWS: " Grant the service account rights on this mailbox, or test with one "
                "that is in its management scope.",
            }.get(method, "")
            put("test_mailbox", detail + hint)
        case ImpersonationDenied():
            put(
                "test_mailbox",
                detail
                + " If the account only has AvailabilityOnly rights, choose “Free/busy only” as the access level.",
            )
        case MailboxNotFound():
            put("test_mailbox" if "test_mailbox" in form_fields else "mailbox", detail)
        case AccessLevelInsufficient():
            put("access_level", detail)
        case CredentialsRejected():
            put(_credentials_field(exc, method), detail)
        case UpstreamThrottled():
            put("", "Microsoft is busy right now (it asked calbroker to slow down). Wait a minute and try again.")
        case UpstreamUnavailable() | UpstreamTimeout() if method is ConnectionMethod.EWS:
            put("endpoint", detail)
        case UpstreamError():
            put("", detail)
        case _:
            put("", detail)
    return state


def _credentials_field(exc: CredentialsRejected, method: ConnectionMethod) -> str:
    code = exc.upstream_code or ""
    if method is ConnectionMethod.EWS:
        return "password" if code == "401" else ""
    if method is not ConnectionMethod.GRAPH_APP:
        return ""
    return {
        "AADSTS7000215": "client_secret",
        "AADSTS7000222": "client_secret",
        "AADSTS700016": "client_id",
        "AADSTS90002": "tenant_id",
        "AADSTS900023": "tenant_id",
        "AADSTS700027": "certificate",
        "AADSTS700024": "certificate",
    }.get(code, "")


FORM_FIELDS: Mapping[ConnectionMethod, frozenset[str]] = {
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
            "purpose",
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


def form_page(
    visit: Visit,
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
                "purpose": values.get("purpose") or ConnectionPurpose.CALENDARS.value,
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
