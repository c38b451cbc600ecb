"""What the connect pages tell an admin to set up: Graph permissions and the exact PowerShell.

Commands are filled in with what the admin typed (client id, service account, domain) so they can
be pasted as they are; until then they show placeholders in angle brackets. Sources:
- application access policy: https://learn.microsoft.com/graph/auth-limit-mailbox-access
- EWS impersonation: https://learn.microsoft.com/exchange/client-developer/exchange-web-services/how-to-configure-impersonation
- folder permissions (restricted, free/busy only): https://learn.microsoft.com/powershell/module/exchange/add-mailboxfolderpermission
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from calbroker.domain.connections import AccessLevel, ConnectionMethod

__all__ = [
    "GRAPH_PERMISSIONS",
    "METHODS",
    "MethodInfo",
    "Permission",
    "access_policy_commands",
    "ews_level_guides",
    "graph_level_labels",
]


@dataclass(frozen=True, slots=True)
class MethodInfo:
    title: str
    summary: str
    choose_if: str


METHODS: Mapping[ConnectionMethod, MethodInfo] = {
    ConnectionMethod.GRAPH_CONSENT: MethodInfo(
        "Microsoft 365: approve calbroker’s app",
        "One click on Microsoft’s consent page. Nothing to create, no secret to manage or renew.",
        "your organisation uses Exchange Online and you can grant admin consent to application permissions "
        "(Global Administrator or Privileged Role Administrator).",
    ),
    ConnectionMethod.GRAPH_APP: MethodInfo(
        "Microsoft 365: your own app registration",
        "Create an app registration in your tenant and enter its ids and a client secret or certificate. "
        "You keep full control, and can limit it to chosen mailboxes.",
        "your policy requires applications you own, or you want to scope access with an application access "
        "policy before anything connects.",
    ),
    ConnectionMethod.EWS: MethodInfo(
        "Exchange Server on-premises: service account",
        "Enter the EWS address and a service account with impersonation or free/busy rights.",
        "your mailboxes are on Exchange Server 2016, 2019 or Subscription Edition. Not for Exchange Online: "
        "Microsoft retired EWS there.",
    ),
    ConnectionMethod.GRAPH_DELEGATED: MethodInfo(
        "Just my mailbox: sign in",
        "Sign in with your own Microsoft 365 account. Only your calendar is connected.",
        "you are not an administrator, or only your own calendar should be used.",
    ),
}


@dataclass(frozen=True, slots=True)
class Permission:
    name: str
    kind: str
    purpose: str
    required: str


GRAPH_PERMISSIONS = (
    Permission(
        "Calendars.ReadWrite",
        "Application",
        "Free/busy, availability and creating or updating events",
        "Yes, for “Read and write events”",
    ),
    Permission(
        "Calendars.Read",
        "Application",
        "Free/busy and availability only",
        "Instead of Calendars.ReadWrite, for “Free/busy only”",
    ),
    Permission(
        "OnlineMeetings.ReadWrite.All", "Application", "Teams meeting links on events", "If events get Teams links"
    ),
    Permission("Place.Read.All", "Application", "Listing room and resource mailboxes", "If rooms are booked"),
)


def graph_level_labels() -> dict[str, tuple[str, str]]:
    """Access level → (label, explanation) for the Microsoft 365 forms."""
    return {
        AccessLevel.FULL.value: (
            "Read and write events",
            "Free/busy, availability, and events created or updated for your users (Calendars.ReadWrite).",
        ),
        AccessLevel.FREE_BUSY.value: (
            "Free/busy only",
            "Only when people are busy; no event details are read and nothing is written (Calendars.Read).",
        ),
    }


def _or(value: str | None, placeholder: str) -> str:
    value = (value or "").strip()
    return value if value and '"' not in value and "`" not in value else placeholder


def _domain_of(values: Mapping[str, str]) -> str | None:
    mailbox = values.get("test_mailbox", "")
    if "@" in mailbox:
        return mailbox.rpartition("@")[2]
    domains = values.get("domains", "").replace(",", " ").split()
    return domains[0] if domains else None


def access_policy_commands(values: Mapping[str, str]) -> str:
    """Exchange Online PowerShell that limits the app registration to one mail-enabled security group."""
    client_id = _or(values.get("client_id"), "<application (client) id>")
    domain = _or(_domain_of(values), "<your domain>")
    group = f"calbroker-scope@{domain}"
    mailbox = _or(values.get("test_mailbox"), f"<a mailbox>@{domain}")
    return "\n".join(
        [
            "Connect-ExchangeOnline",
            f'New-ApplicationAccessPolicy -AppId {client_id} -PolicyScopeGroupId "{group}" '
            '-AccessRight RestrictAccess -Description "calbroker: only members of this group"',
            f'Test-ApplicationAccessPolicy -Identity "{mailbox}" -AppId {client_id}',
        ]
    )


@dataclass(frozen=True, slots=True)
class LevelGuide:
    level: AccessLevel
    label: str
    explanation: str
    commands: str


def ews_level_guides(values: Mapping[str, str]) -> list[LevelGuide]:
    """The three service-account levels, as in Cronofy's Enterprise Connect article, with commands."""
    username = _or(values.get("username"), "<service account>")
    account = username.rpartition("\\")[2] if "\\" in username else username
    domain = _or(_domain_of(values), "<your domain>")
    group = f"calbroker-scope@{domain}"
    scope = (
        'New-ManagementScope -Name "calbroker-scope" -RecipientRestrictionFilter '
        f"\"MemberOfGroup -eq '<distinguished name of {group}>'\""
    )
    impersonation = (
        f'New-ManagementRoleAssignment -Name "calbroker-impersonation" -Role ApplicationImpersonation '
        f'-User "{account}" -CustomRecipientWriteScope "calbroker-scope"'
    )

    def each_member(rights: str) -> str:
        return (
            f'Get-DistributionGroupMember "{group}" | ForEach-Object {{ Add-MailboxFolderPermission '
            f'-Identity "$($_.PrimarySmtpAddress):\\Calendar" -User "{account}" -AccessRights {rights} }}'
        )

    return [
        LevelGuide(
            AccessLevel.FULL,
            "Full",
            "The service account impersonates the users in scope: free/busy, availability, and events created, "
            "updated and cancelled as the organiser. Needs the ApplicationImpersonation role.",
            f"{scope}\n{impersonation}",
        ),
        LevelGuide(
            AccessLevel.RESTRICTED,
            "Restricted",
            "Like Full, but the account’s rights are limited to calendar folders, so mail is explicitly out of "
            "reach (calbroker never opens other folders either way).",
            f"{scope}\n{impersonation}\n{each_member('Editor')}",
        ),
        LevelGuide(
            AccessLevel.FREE_BUSY,
            "Free/busy only",
            "Only availability (AvailabilityOnly folder permission): no impersonation, no event details, and "
            "events cannot be created. Check that the application can work with this before choosing it.",
            each_member("AvailabilityOnly"),
        ),
    ]
