"""The connect pages' message pages: a link that does not work, was used, expired, or a refused form.

Each says what happened and what to do next in the admin's terms; none shows a stack trace or
anything secret, and every one carries the connect pages' security headers.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from litestar.response import Template

from calbroker.api.problems import DATABASE_RETRY_AFTER_S
from calbroker.redaction import redact_text
from calbroker.store.connect_links import ConnectLink, LinkState

__all__ = [
    "ATTEMPTS_PER_WINDOW",
    "ATTEMPT_WINDOW",
    "CONNECT_HEADERS",
    "forged",
    "message_page",
    "microsoft_refusal",
    "no_operator_app",
    "not_found",
    "rate_limited",
    "service_unavailable",
    "unavailable",
]

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


def message_page(
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


def not_found() -> Template:
    return message_page(
        "This link does not work",
        [
            "The address is incomplete or was never issued. Copy the whole link from the message you received, "
            "or ask the application that sent it for a new one.",
        ],
        404,
    )


def unavailable(link: ConnectLink, app_name: str, state: LinkState) -> Template:
    if state is LinkState.USED:
        return message_page(
            "This link has already been used",
            [
                f"Your organisation was connected to {app_name} with this link, so there is nothing left to do here.",
                f"To connect again, or another way, ask {app_name} for a new link: each link works once.",
            ],
            410,
            app_name=app_name,
        )
    return message_page(
        "This link has expired",
        [
            f"It was valid until {link.expires_at:%d %B %Y, %H:%M} UTC. Nothing was connected with it.",
            f"Ask {app_name} for a new link.",
        ],
        410,
        app_name=app_name,
    )


def forged() -> Template:
    return message_page(
        "This form could not be accepted",
        [
            "It was not sent from the page calbroker gave this browser (the security token is missing or wrong), "
            "so nothing was checked or saved.",
            "Open the link you received again in this browser and fill in the form there. If it keeps happening, "
            "allow cookies for this site: the page needs one to recognise your browser.",
        ],
        403,
    )


def rate_limited(retry_after: timedelta, app_name: str) -> Template:
    minutes = max(1, round(retry_after.total_seconds() / 60))
    return message_page(
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


def service_unavailable(_request: Any, _exc: Exception) -> Template:
    """The page for any connect step while calbroker cannot reach its database (an exception handler)."""
    return message_page(
        "Please try again in a moment",
        [
            "calbroker cannot reach its database right now, so this step could not be completed. Nothing you "
            "typed was saved. Go back and submit again in a few seconds; the link still works.",
        ],
        503,
        retry_after=timedelta(seconds=DATABASE_RETRY_AFTER_S),
    )


def microsoft_refusal(error: str, description: str, *, admin_sign_in: bool = False) -> str:
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


def no_operator_app(app_name: str) -> Template:
    """The link offered a way through calbroker's own Entra app, which this server no longer has."""
    return message_page(
        "This way of connecting is not available right now",
        [
            "It goes through calbroker’s own Microsoft Entra app, which this server is not configured with "
            "any more. Nothing was saved. Go back and choose another way, or ask "
            f"{app_name} for a new link.",
        ],
        503,
        app_name=app_name,
    )
