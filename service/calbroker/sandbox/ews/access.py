"""Who a request acts as and what it may open: impersonation, mailbox and folder rights.

Impersonation: https://learn.microsoft.com/en-us/exchange/client-developer/exchange-web-services/impersonation-and-ews-in-exchange
(``ExchangeImpersonation/ConnectingSID`` with PrimarySmtpAddress, SmtpAddress, PrincipalName or SID,
https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/connectingsid).
The service account's level (``EwsAccess``, Cronofy's full / restricted / free-busy) decides:

- FULL: impersonation of in-scope mailboxes, every folder;
- RESTRICTED: impersonation, calendar folders only (plus the hierarchy roots ``root`` and
  ``msgfolderroot``, which hold no items and which exchangelib opens to find the calendar);
- FREE_BUSY (AvailabilityOnly) and NONE: no impersonation (``ErrorImpersonateUserDenied``) and no
  delegate access to other mailboxes (``ErrorAccessDenied``); only GetUserAvailability works.

Without an impersonation header a service account acts as itself, which has no mailbox of its own
in the sandbox and no delegate rights, so any mailbox access answers ``ErrorAccessDenied``; a mailbox
user (``MailboxLogon``) acts on their own mailbox, and impersonates no one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from calbroker.sandbox.calendars import CalendarStore
from calbroker.sandbox.directory import Directory, EwsPrincipal, Mailbox, MailboxLogon
from calbroker.sandbox.ews.items import TimeContext
from calbroker.sandbox.ews.soap import Impersonation, SoapFault

ACCESS_DENIED = "Access is denied. Check credentials and try again."
NO_MAILBOX = "The SMTP address has no mailbox associated with it."
IMPERSONATION_DENIED = "The account does not have permission to impersonate the requested user."
HIERARCHY_ROOTS = frozenset({"root", "msgfolderroot"})


class ItemError(Exception):
    """An error Exchange reports inside one ResponseMessage (ResponseClass="Error")."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(f"{code}: {text}")
        self.code = code
        self.text = text


@dataclass(frozen=True, slots=True)
class Call:
    """One EWS request being answered."""

    account: EwsPrincipal
    acting: Mailbox | None  # the impersonated mailbox, or a mailbox user's own
    directory: Directory
    calendars: CalendarStore
    times: TimeContext
    owa_url: str
    now: datetime

    def mailbox(self, address: str | None) -> Mailbox:
        """The mailbox a folder or item reference points at, if this caller may open it."""
        if address is None:
            if self.acting is None:
                raise ItemError(
                    "ErrorMissingEmailAddress",
                    "When making a request as an account that does not have a mailbox, you must specify "
                    "the mailbox primary SMTP address for any distinguished folder Ids.",
                )
            return self.acting
        found = self.directory.mailbox(address)
        if found is None or found.tenant_id != self.account.tenant_id:
            raise ItemError("ErrorNonExistentMailbox", NO_MAILBOX)
        if self.acting is None or found.email != self.acting.email:
            raise ItemError("ErrorAccessDenied", ACCESS_DENIED)
        return found

    def open_folder(self, folder: str) -> None:
        if folder in HIERARCHY_ROOTS or self.account.can_open_folder(folder):
            return
        raise ItemError("ErrorAccessDenied", ACCESS_DENIED)

    def may_write(self, mailbox: Mailbox) -> None:
        if not self.account.can_write_items(mailbox):
            raise ItemError("ErrorAccessDenied", ACCESS_DENIED)


def impersonate(account: EwsPrincipal, header: Impersonation | None, directory: Directory) -> Mailbox | None:
    """The mailbox a request acts on: the ExchangeImpersonation header's (failures are SOAP faults),
    else a mailbox user's own, else none."""
    if header is None:
        return account.mailbox if isinstance(account, MailboxLogon) else None
    value = header.value
    mailbox: Mailbox | None = None
    if header.kind in ("PrimarySmtpAddress", "SmtpAddress"):
        mailbox = directory.mailbox(value)
    elif header.kind == "PrincipalName":
        tenant = directory.tenant_by_id(account.tenant_id)
        wanted = value.strip().lower()
        if tenant is not None:
            mailbox = next((m for m in tenant.mailboxes.values() if m.user_principal_name.lower() == wanted), None)
        mailbox = mailbox or directory.mailbox(value)
    # SIDs are not modelled: no mailbox answers to one.
    if mailbox is None or mailbox.tenant_id != account.tenant_id:
        # MessageXml naming the address, as Exchange adds it [unverified].
        raise SoapFault(
            "ErrorNonExistentMailbox",
            "The SMTP address has no mailbox associated with it.",
            {"SmtpAddress": value},
        )
    if not account.can_impersonate(mailbox):
        raise SoapFault(
            "ErrorImpersonateUserDenied",
            "The account does not have permission to impersonate the requested user.",
        )
    return mailbox
