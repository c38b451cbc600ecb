"""Graph directory endpoints: users (list, get, /me), organization and domains."""

from __future__ import annotations

import base64
import re
from typing import Any
from urllib.parse import urlencode

from calbroker.sandbox.directory import Mailbox, Tenant
from calbroker.sandbox.graph.odata import (
    Filters,
    GraphContext,
    GraphError,
    GraphRequest,
    GraphResponse,
    Route,
    apply_filter,
    make_route,
)

__all__ = ["ROUTES", "user_json"]

USERS = {"User.Read.All", "User.ReadBasic.All", "User.ReadWrite.All", "Directory.Read.All", "User.Read"}
ORGANIZATION = {"Organization.Read.All", "Directory.Read.All", "User.Read.All", "User.Read"}
DOMAINS = {"Domain.Read.All", "Directory.Read.All", "User.Read.All"}


def user_json(mailbox: Mailbox, select: set[str] | None = None) -> dict[str, Any]:
    """The default user properties (https://learn.microsoft.com/graph/api/user-get), plus `$select`ed extras."""
    item: dict[str, Any] = {
        "businessPhones": list(mailbox.business_phones),
        "displayName": mailbox.display_name,
        "givenName": mailbox.given_name or None,
        "jobTitle": mailbox.job_title,
        "mail": mailbox.email,
        "mobilePhone": mailbox.mobile_phone,
        "officeLocation": mailbox.office_location,
        "preferredLanguage": mailbox.preferred_language,
        "surname": mailbox.surname or None,
        "userPrincipalName": mailbox.user_principal_name,
        "id": mailbox.id,
    }
    if select:
        extras = {
            "proxyaddresses": ("proxyAddresses", [f"SMTP:{mailbox.email}", *(f"smtp:{a}" for a in mailbox.aliases)]),
            "accountenabled": ("accountEnabled", not mailbox.is_room),
            "usertype": ("userType", "Member"),
            "department": ("department", mailbox.department),
            "city": ("city", mailbox.city),
            "mailnickname": ("mailNickname", mailbox.alias),
        }
        wanted = {s.lower() for s in select}
        item = {k: v for k, v in item.items() if k.lower() in wanted}
        for key, (name, value) in extras.items():
            if key in wanted:
                item[name] = value
    return item


_USER_FILTERS: Filters[Mailbox] = (
    (re.compile(r"^\s*mail\s+eq\s+'([^']*)'\s*$", re.I), lambda m, x: m.email == x.group(1).lower()),
    (
        re.compile(r"^\s*userPrincipalName\s+eq\s+'([^']*)'\s*$", re.I),
        lambda m, x: m.user_principal_name == x.group(1).lower(),
    ),
    (re.compile(r"^\s*id\s+eq\s+'([^']*)'\s*$", re.I), lambda m, x: m.id == x.group(1).lower()),
    (
        re.compile(r"^\s*startswith\(\s*(displayName|mail|givenName|surname)\s*,\s*'([^']*)'\s*\)\s*$", re.I),
        lambda m, x: (
            {"displayname": m.display_name, "mail": m.email, "givenname": m.given_name, "surname": m.surname}[
                x.group(1).lower()
            ]
            .lower()
            .startswith(x.group(2).lower())
        ),
    ),
    (
        re.compile(r"^\s*proxyAddresses/any\(\s*(\w+)\s*:\s*\1\s+eq\s+'(?:smtp:)?([^']*)'\s*\)\s*$", re.I),
        lambda m, x: x.group(2).lower() in m.addresses,
    ),
)


async def list_users(ctx: GraphContext, req: GraphRequest) -> GraphResponse:
    # https://learn.microsoft.com/graph/api/user-list — $filter (eq/startswith/proxyAddresses), $top, $skiptoken
    users = sorted(req.caller.tenant.mailboxes.values(), key=lambda m: m.display_name.lower())
    invalid = GraphError(400, "Request_UnsupportedQuery", "Unsupported or invalid query filter clause specified.")
    users = apply_filter(users, req.option("$filter"), _USER_FILTERS, invalid)
    try:
        size = min(int(req.option("$top") or ctx.state.settings.users_page_size), 999)
        token = req.option("$skiptoken")
        offset = int(base64.urlsafe_b64decode(token.encode()).decode()) if token else 0
    except ValueError:
        raise GraphError(400, "Request_BadRequest", "Invalid paging parameter.") from None
    chunk = users[offset : offset + size]
    body: dict[str, Any] = {
        "@odata.context": f"{ctx.graph_url}/$metadata#users",
        "value": [user_json(u, req.select()) for u in chunk],
    }
    if offset + size < len(users):
        query = {k: v for k, v in req.raw_query.items() if k.lower() != "$skiptoken"}
        query["$top"] = str(size)
        query["$skiptoken"] = base64.urlsafe_b64encode(str(offset + size).encode()).decode()
        body["@odata.nextLink"] = f"{ctx.graph_url}/users?{urlencode(query, safe='$')}"
    return GraphResponse(200, body)


async def get_user(ctx: GraphContext, req: GraphRequest) -> GraphResponse:
    # https://learn.microsoft.com/graph/api/user-get
    body = {"@odata.context": f"{ctx.graph_url}/$metadata#users/$entity", **user_json(req.target, req.select())}
    return GraphResponse(200, body)


def _organization(tenant: Tenant) -> dict[str, Any]:
    domains = [
        {
            "capabilities": "Email, OfficeCommunicationsOnline",
            "isDefault": name == tenant.default_domain,
            "isInitial": name == tenant.initial_domain,
            "name": name,
            "type": "Managed",
        }
        for name in tenant.all_domains
    ]
    return {
        "id": tenant.id,
        "deletedDateTime": None,
        "businessPhones": [],
        "city": tenant.city or None,
        "country": tenant.country or None,
        "countryLetterCode": tenant.country_code or None,
        "createdDateTime": "2015-10-25T14:57:30Z",
        "displayName": tenant.display_name,
        "onPremisesSyncEnabled": tenant.exchange.value == "on_premises",
        "postalCode": tenant.postal_code or None,
        "preferredLanguage": "en",
        "state": tenant.state or None,
        "street": tenant.street or None,
        "tenantType": "AAD",
        "verifiedDomains": domains,
    }


async def list_organization(ctx: GraphContext, req: GraphRequest) -> GraphResponse:
    # https://learn.microsoft.com/graph/api/organization-list
    body = {"@odata.context": f"{ctx.graph_url}/$metadata#organization", "value": [_organization(req.caller.tenant)]}
    return GraphResponse(200, body)


async def list_domains(ctx: GraphContext, req: GraphRequest) -> GraphResponse:
    # https://learn.microsoft.com/graph/api/domain-list
    tenant = req.caller.tenant
    value = [
        {
            "authenticationType": "Managed",
            "availabilityStatus": None,
            "id": name,
            "isAdminManaged": True,
            "isDefault": name == tenant.default_domain,
            "isInitial": name == tenant.initial_domain,
            "isRoot": True,
            "isVerified": True,
            "passwordNotificationWindowInDays": 14,
            "passwordValidityPeriodInDays": 2147483647,
            "supportedServices": ["Email", "OfficeCommunicationsOnline"],
            "state": None,
        }
        for name in tenant.all_domains
    ]
    return GraphResponse(200, {"@odata.context": f"{ctx.graph_url}/$metadata#domains", "value": value})


ROUTES: tuple[Route, ...] = (
    make_route("GET", r"/users", "graph:users.list", list_users, USERS - {"User.Read"}, family="directory"),
    make_route("GET", r"/users/{user}", "graph:users.get", get_user, USERS, family="directory"),
    make_route("GET", r"/organization", "graph:organization.list", list_organization, ORGANIZATION, family="directory"),
    make_route("GET", r"/domains", "graph:domains.list", list_domains, DOMAINS, family="directory"),
)
