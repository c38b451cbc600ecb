"""EWS wire format: sandbox responses against Microsoft's documented examples, faults, XML safety,
and the time-zone arithmetic behind GetServerTimeZones and GetUserAvailability.

Structure comparison: element paths (namespace + local name), attribute names and sibling order of
a documented response (``fixtures/ews/*.xml``, each citing its page) must appear in the sandbox's
answer to an equivalent request; differences the sandbox makes on purpose are listed per case.
"""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from calbroker.sandbox.ews import LegacyTimeZone, legacy_timezone, routes, timezone_definition
from calbroker.sandbox.state import SandboxState
from calbroker.sandbox.tls import load_key_material

FIXTURES = Path(__file__).parent / "fixtures" / "ews"
SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
M = "http://schemas.microsoft.com/exchange/services/2006/messages"
T = "http://schemas.microsoft.com/exchange/services/2006/types"
E = "http://schemas.microsoft.com/exchange/services/2006/errors"
PREFIX = {SOAP: "s", M: "m", T: "t", E: "e"}
ANNA = "anna.schmidt@fabrikam.com"
BEN = "ben.taylor@fabrikam.com"


@dataclass
class Ews:
    client: TestClient[web.Request, web.Application]
    state: SandboxState

    def auth(self, service_account: str = "svc-full") -> str:
        account = self.state.directory.tenants["fabrikam"].service_accounts[service_account]
        token = base64.b64encode(f"FABRIKAM\\{account.username}:{account.password}".encode()).decode()
        return f"Basic {token}"

    async def post(
        self,
        body: str,
        *,
        impersonate: str | None = ANNA,
        service_account: str = "svc-full",
        sid_kind: str = "PrimarySmtpAddress",
    ) -> tuple[int, ET.Element]:
        header = '<t:RequestServerVersion Version="Exchange2016"/>'
        if impersonate:
            header += (
                f"<t:ExchangeImpersonation><t:ConnectingSID><t:{sid_kind}>"
                f"{impersonate}</t:{sid_kind}></t:ConnectingSID></t:ExchangeImpersonation>"
            )
        envelope = (
            '<?xml version="1.0" encoding="utf-8"?>'
            f'<s:Envelope xmlns:s="{SOAP}" xmlns:m="{M}" xmlns:t="{T}">'
            f"<s:Header>{header}</s:Header><s:Body>{body}</s:Body></s:Envelope>"
        )
        response = await self.client.post(
            "/EWS/Exchange.asmx",
            data=envelope.encode(),
            headers={"Content-Type": "text/xml; charset=utf-8", "Authorization": self.auth(service_account)},
        )
        assert response.headers["Content-Type"] == "text/xml; charset=utf-8"
        return response.status, ET.fromstring(await response.read())

    def week(self) -> tuple[str, str]:
        start = datetime.combine(self.state.anchor, datetime.min.time(), UTC)
        return start.strftime("%Y-%m-%dT%H:%M:%SZ"), (start + timedelta(days=5)).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture(scope="module")
async def ews(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Ews]:
    state = SandboxState(keys=load_key_material(tmp_path_factory.mktemp("ews-wire"), "127.0.0.1"))
    app = web.Application()
    app.add_routes(routes(state))
    async with TestClient(TestServer(app)) as client:
        yield Ews(client, state)


# --- structure comparison -------------------------------------------------------------------------


def _qname(tag: str) -> str:
    ns, _, local = tag[1:].partition("}")
    return f"{PREFIX.get(ns, ns)}:{local}"


def _shape(elem: ET.Element, prefix: str = "") -> tuple[set[str], dict[str, list[str]]]:
    """Element paths (with ``@attr`` entries) and, per path, the order of distinct child names."""
    path = f"{prefix}/{_qname(elem.tag)}"
    paths = {path} | {f"{path}@{name}" for name in elem.attrib if not name.startswith("{")}
    order: dict[str, list[str]] = {}
    names: list[str] = []
    for sub in elem:
        name = _qname(sub.tag)
        if not names or names[-1] != name:
            names.append(name)
        sub_paths, sub_order = _shape(sub, path)
        paths |= sub_paths
        for key, value in sub_order.items():
            order.setdefault(key, value)
    order[path] = names
    return paths, order


def _body(root: ET.Element) -> ET.Element:
    body = root.find(f"{{{SOAP}}}Body")
    assert body is not None
    return body[0]


def assert_like_documented(
    fixture: str, ours: ET.Element, *, missing_ok: tuple[str, ...] = (), extra_ok: tuple[str, ...] = ()
) -> None:
    documented = ET.parse(FIXTURES / fixture).getroot()
    doc_paths, doc_order = _shape(_body(documented))
    our_paths, our_order = _shape(_body(ours))
    missing = {p for p in doc_paths - our_paths if not any(p.startswith(ok) for ok in missing_ok)}
    extra = {p for p in our_paths - doc_paths if not any(p.startswith(ok) for ok in extra_ok)}
    assert not missing, f"documented in {fixture} but not sent: {sorted(missing)}"
    assert not extra, f"sent but not in {fixture}: {sorted(extra)}"
    for path, names in doc_order.items():
        if path in our_order:
            shared = [n for n in our_order[path] if n in names]
            assert shared == [n for n in names if n in shared], f"child order differs under {path}"
    header = ours.find(f"{{{SOAP}}}Header/{{{T}}}ServerVersionInfo")
    assert header is not None
    assert {"MajorVersion", "MinorVersion", "MajorBuildNumber", "MinorBuildNumber", "Version"} <= set(header.attrib)


# --- documented examples ---------------------------------------------------------------------------


async def test_get_user_availability_matches_documented_response(ews: Ews) -> None:
    start, end = ews.week()
    status, root = await ews.post(
        "<m:GetUserAvailabilityRequest>"
        "<t:TimeZone><t:Bias>480</t:Bias>"
        "<t:StandardTime><t:Bias>0</t:Bias><t:Time>02:00:00</t:Time><t:DayOrder>1</t:DayOrder>"
        "<t:Month>11</t:Month><t:DayOfWeek>Sunday</t:DayOfWeek></t:StandardTime>"
        "<t:DaylightTime><t:Bias>-60</t:Bias><t:Time>02:00:00</t:Time><t:DayOrder>2</t:DayOrder>"
        "<t:Month>3</t:Month><t:DayOfWeek>Sunday</t:DayOfWeek></t:DaylightTime></t:TimeZone>"
        "<m:MailboxDataArray>"
        f"<t:MailboxData><t:Email><t:Address>{ANNA}</t:Address></t:Email>"
        "<t:AttendeeType>Required</t:AttendeeType><t:ExcludeConflicts>false</t:ExcludeConflicts></t:MailboxData>"
        f"<t:MailboxData><t:Email><t:Address>{BEN}</t:Address></t:Email>"
        "<t:AttendeeType>Required</t:AttendeeType><t:ExcludeConflicts>false</t:ExcludeConflicts></t:MailboxData>"
        "</m:MailboxDataArray>"
        f"<t:FreeBusyViewOptions><t:TimeWindow><t:StartTime>{start}</t:StartTime><t:EndTime>{end}</t:EndTime>"
        "</t:TimeWindow><t:MergedFreeBusyIntervalInMinutes>60</t:MergedFreeBusyIntervalInMinutes>"
        "<t:RequestedView>DetailedMerged</t:RequestedView></t:FreeBusyViewOptions>"
        "</m:GetUserAvailabilityRequest>",
        impersonate=None,
    )
    assert status == 200
    assert_like_documented("getuseravailability_response.xml", root)
    merged = root.findall(f".//{{{T}}}MergedFreeBusy")
    assert [len(m.text or "") for m in merged] == [5 * 24, 5 * 24]
    # CalendarEvent times are wall-clock times of the request's zone: no offset, no "Z".
    times = [e.text or "" for e in root.iter(f"{{{T}}}StartTime")]
    assert times
    assert all(len(value) == 19 for value in times)


async def test_get_server_time_zones_matches_documented_response(ews: Ews) -> None:
    status, root = await ews.post(
        '<m:GetServerTimeZones ReturnFullTimeZoneData="true"><m:Ids><t:Id>Eastern Standard Time</t:Id>'
        "</m:Ids></m:GetServerTimeZones>",
        impersonate=None,
    )
    assert status == 200
    # The sandbox sends one transitions group (the current rule), so no dated switch between groups.
    assert_like_documented(
        "getservertimezones_full_response.xml",
        root,
        missing_ok=(
            "/m:GetServerTimeZonesResponse/m:ResponseMessages/m:GetServerTimeZonesResponseMessage"
            "/m:TimeZoneDefinitions/t:TimeZoneDefinition/t:Transitions/t:AbsoluteDateTransition",
        ),
    )
    periods = root.findall(f".//{{{T}}}Period")
    assert {(p.get("Name"), p.get("Bias")) for p in periods} == {("Standard", "PT5H"), ("Daylight", "PT4H")}


async def test_get_folder_matches_documented_response(ews: Ews) -> None:
    status, root = await ews.post(
        "<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape><m:FolderIds>"
        f'<t:DistinguishedFolderId Id="calendar"><t:Mailbox><t:EmailAddress>{ANNA}</t:EmailAddress>'
        "</t:Mailbox></t:DistinguishedFolderId></m:FolderIds></m:GetFolder>"
    )
    assert status == 200
    folder = "/m:GetFolderResponse/m:ResponseMessages/m:GetFolderResponseMessage/m:Folders/t:CalendarFolder"
    # The sandbox answers every folder property (exchangelib asks for them all anyway).
    assert_like_documented("getfolder_calendar_response.xml", root, extra_ok=(f"{folder}/t:",))


async def test_find_item_calendar_view_matches_documented_response(ews: Ews) -> None:
    start, end = ews.week()
    status, root = await ews.post(
        '<m:FindItem Traversal="Shallow"><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape>'
        '<t:AdditionalProperties><t:FieldURI FieldURI="item:Subject"/><t:FieldURI FieldURI="calendar:Start"/>'
        '<t:FieldURI FieldURI="calendar:End"/></t:AdditionalProperties></m:ItemShape>'
        f'<m:CalendarView MaxEntriesReturned="2" StartDate="{start}" EndDate="{end}"/>'
        '<m:ParentFolderIds><t:DistinguishedFolderId Id="calendar"/></m:ParentFolderIds></m:FindItem>'
    )
    assert status == 200
    assert_like_documented("finditem_calendarview_response.xml", root)
    view = root.find(f".//{{{M}}}RootFolder")
    assert view is not None
    assert view.get("IncludesLastItemInRange") == "false"  # the seed has more than two items a week
    assert int(view.get("TotalItemsInView") or "0") > 2
    assert len(view.findall(f"{{{T}}}Items/{{{T}}}CalendarItem")) == 2


async def _create(ews: Ews, subject: str) -> ET.Element:
    day = datetime.combine(ews.state.anchor, datetime.min.time(), UTC) + timedelta(days=1, hours=5)
    status, root = await ews.post(
        '<m:CreateItem MessageDisposition="SaveOnly" SendMeetingInvitations="SendToAllAndSaveCopy">'
        '<m:SavedItemFolderId><t:DistinguishedFolderId Id="calendar"/></m:SavedItemFolderId><m:Items>'
        f"<t:CalendarItem><t:Subject>{subject}</t:Subject>"
        '<t:Body BodyType="Text">Plan the agenda for next week\'s meeting.</t:Body>'
        "<t:ReminderIsSet>true</t:ReminderIsSet><t:ReminderMinutesBeforeStart>60</t:ReminderMinutesBeforeStart>"
        f"<t:Start>{day:%Y-%m-%dT%H:%M:%S}</t:Start><t:End>{day + timedelta(hours=1):%Y-%m-%dT%H:%M:%S}</t:End>"
        "<t:IsAllDayEvent>false</t:IsAllDayEvent><t:LegacyFreeBusyStatus>Busy</t:LegacyFreeBusyStatus>"
        "<t:Location>Conference Room 721</t:Location><t:RequiredAttendees>"
        f"<t:Attendee><t:Mailbox><t:EmailAddress>{BEN}</t:EmailAddress></t:Mailbox></t:Attendee>"
        "</t:RequiredAttendees></t:CalendarItem></m:Items></m:CreateItem>"
    )
    assert status == 200
    return root


async def test_create_update_delete_match_documented_responses(ews: Ews) -> None:
    created = await _create(ews, "Planning Meeting")
    assert_like_documented("createitem_calendar_response.xml", created)
    item_id = created.find(f".//{{{T}}}ItemId")
    assert item_id is not None

    ref = f'<t:ItemId Id="{item_id.get("Id")}" ChangeKey="{item_id.get("ChangeKey")}"/>'
    status, updated = await ews.post(
        '<m:UpdateItem MessageDisposition="SaveOnly" ConflictResolution="AutoResolve" '
        'SendMeetingInvitationsOrCancellations="SendToAllAndSaveCopy"><m:ItemChanges><t:ItemChange>'
        f'{ref}<t:Updates><t:SetItemField><t:FieldURI FieldURI="item:Sensitivity"/>'
        "<t:CalendarItem><t:Sensitivity>Private</t:Sensitivity></t:CalendarItem></t:SetItemField>"
        "</t:Updates></t:ItemChange></m:ItemChanges></m:UpdateItem>"
    )
    assert status == 200
    message = "/m:UpdateItemResponse/m:ResponseMessages/m:UpdateItemResponseMessage"
    # A calendar item answers t:CalendarItem (the page's example updates a t:Message) plus ConflictResults.
    assert_like_documented(
        "updateitem_response.xml",
        updated,
        missing_ok=(f"{message}/m:Items/t:Message",),
        extra_ok=(f"{message}/m:Items/t:CalendarItem", f"{message}/m:ConflictResults"),
    )

    delete = (
        '<m:DeleteItem DeleteType="HardDelete" SendMeetingCancellations="SendToAllAndSaveCopy">'
        f"<m:ItemIds>{ref}</m:ItemIds></m:DeleteItem>"
    )
    status, deleted = await ews.post(delete)
    assert status == 200
    assert_like_documented("deleteitem_response.xml", deleted)
    status, again = await ews.post(delete)
    assert status == 200
    assert_like_documented("deleteitem_error_response.xml", again)
    assert (again.findtext(f".//{{{M}}}MessageText") or "") == "The specified object was not found in the store."


async def test_cancel_calendar_item_answers_the_cancelled_item_as_documented(ews: Ews) -> None:
    created = await _create(ews, "Cancelled by CreateItem")
    item_id = created.find(f".//{{{T}}}ItemId")
    assert item_id is not None

    status, cancelled = await ews.post(
        '<m:CreateItem MessageDisposition="SendAndSaveCopy"><m:Items><t:CancelCalendarItem>'
        f'<t:ReferenceItemId Id="{item_id.get("Id")}" ChangeKey="{item_id.get("ChangeKey")}"/>'
        '<t:NewBodyContent BodyType="HTML">Cancelled.</t:NewBodyContent>'
        "</t:CancelCalendarItem></m:Items></m:CreateItem>"
    )

    assert status == 200
    assert_like_documented("createitem_cancelcalendaritem_response.xml", cancelled)
    answered = cancelled.find(f".//{{{M}}}Items/{{{T}}}CalendarItem/{{{T}}}ItemId")
    assert answered is not None
    assert answered.get("Id") == item_id.get("Id")  # the meeting, now in Deleted Items
    assert answered.get("ChangeKey") != item_id.get("ChangeKey")  # moving an item changes its key
    assert not [e for e in ews.state.calendars.events(ANNA) if e.subject == "Cancelled by CreateItem"]


FIND_CALENDARS = (
    # What the EWS Managed API (and ews-javascript-api, cal.com) sends to list calendar folders.
    '<m:FindFolder Traversal="Deep"><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape><t:AdditionalProperties>'
    '<t:FieldURI FieldURI="folder:DisplayName"/><t:ExtendedFieldURI PropertyTag="4340" PropertyType="Boolean"/>'
    '</t:AdditionalProperties></m:FolderShape><m:IndexedPageFolderView MaxEntriesReturned="100" Offset="0" '
    'BasePoint="Beginning"/><m:Restriction><t:IsEqualTo><t:FieldURI FieldURI="folder:FolderClass"/>'
    '<t:FieldURIOrConstant><t:Constant Value="IPF.Appointment"/></t:FieldURIOrConstant></t:IsEqualTo>'
    '</m:Restriction><m:ParentFolderIds><t:DistinguishedFolderId Id="{root}"/></m:ParentFolderIds></m:FindFolder>'
)


@pytest.mark.parametrize("root", ["root", "msgfolderroot"])
async def test_find_folder_lists_calendar_folders_as_documented(ews: Ews, root: str) -> None:
    status, found = await ews.post(FIND_CALENDARS.replace("{root}", root))

    assert status == 200
    assert_like_documented("findfolder_deep_response.xml", found)
    folders = found.findall(f".//{{{T}}}Folders/{{{T}}}CalendarFolder")
    assert [f.findtext(f"{{{T}}}DisplayName") for f in folders] == ["Calendar", "Projects"]
    assert not found.findall(f".//{{{T}}}Folders/{{{T}}}Folder")  # the restriction kept calendars only
    rooted = found.find(f".//{{{M}}}RootFolder")
    assert rooted is not None
    assert (rooted.get("TotalItemsInView"), rooted.get("IndexedPagingOffset")) == ("2", "2")

    # The secondary calendar's FolderId opens its own items.
    projects = folders[1].find(f"{{{T}}}FolderId")
    assert projects is not None
    start = datetime.combine(ews.state.anchor, datetime.min.time(), UTC)
    _, view = await ews.post(
        '<m:FindItem Traversal="Shallow"><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape><t:AdditionalProperties>'
        '<t:FieldURI FieldURI="item:Subject"/></t:AdditionalProperties></m:ItemShape>'
        f'<m:CalendarView StartDate="{start:%Y-%m-%dT%H:%M:%SZ}" '
        f'EndDate="{start + timedelta(days=28):%Y-%m-%dT%H:%M:%SZ}"/>'
        f'<m:ParentFolderIds><t:FolderId Id="{projects.get("Id")}"/></m:ParentFolderIds></m:FindItem>'
    )
    subjects = {e.text for e in view.findall(f".//{{{T}}}CalendarItem/{{{T}}}Subject")}
    assert subjects == {"Milestone review", "Release window", "Site visit"}


async def test_find_folder_shallow_default_shape_and_restricted_visibility(ews: Ews) -> None:
    shallow = (
        '<m:FindFolder Traversal="Shallow"><m:FolderShape><t:BaseShape>Default</t:BaseShape></m:FolderShape>'
        '<m:ParentFolderIds><t:DistinguishedFolderId Id="msgfolderroot"/></m:ParentFolderIds></m:FindFolder>'
    )
    _, full = await ews.post(shallow)
    _, restricted = await ews.post(shallow, service_account="svc-restricted")

    names = [f.findtext(f"{{{T}}}DisplayName") for f in full.findall(f".//{{{T}}}Folders/*")]
    assert "Inbox" in names
    assert "Calendar" in names
    assert "Projects" not in names  # a subfolder of Calendar: Shallow stops at the children
    calendar = next(f for f in full.findall(f".//{{{T}}}Folders/{{{T}}}CalendarFolder"))
    # Default shape: name, counts; UnreadCount belongs to t:Folder, not t:CalendarFolder (Types.xsd).
    assert [c.tag.rpartition("}")[2] for c in calendar] == ["FolderId", "DisplayName", "TotalCount", "ChildFolderCount"]
    assert calendar.findtext(f"{{{T}}}ChildFolderCount") == "1"
    inbox = next(
        f for f in full.findall(f".//{{{T}}}Folders/{{{T}}}Folder") if f.findtext(f"{{{T}}}DisplayName") == "Inbox"
    )
    assert inbox.findtext(f"{{{T}}}UnreadCount") == "0"
    # A calendar-only service account sees the calendar folders and nothing else.
    assert [f.findtext(f"{{{T}}}DisplayName") for f in restricted.findall(f".//{{{T}}}Folders/*")] == ["Calendar"]


async def test_calendar_items_go_into_calendar_folders_only(ews: Ews) -> None:
    day = datetime.combine(ews.state.anchor, datetime.min.time(), UTC) + timedelta(days=2, hours=5)
    _, answer = await ews.post(
        '<m:CreateItem SendMeetingInvitations="SendToNone"><m:SavedItemFolderId>'
        '<t:DistinguishedFolderId Id="inbox"/></m:SavedItemFolderId><m:Items><t:CalendarItem>'
        f"<t:Subject>Misfiled</t:Subject><t:Start>{day:%Y-%m-%dT%H:%M:%SZ}</t:Start>"
        f"<t:End>{day + timedelta(hours=1):%Y-%m-%dT%H:%M:%SZ}</t:End></t:CalendarItem></m:Items></m:CreateItem>"
    )
    assert answer.findtext(f".//{{{M}}}ResponseCode") == "ErrorCannotCreateCalendarItemInNonCalendarFolder"


async def test_expand_dl_matches_documented_response(ews: Ews) -> None:
    status, expanded = await ews.post(
        "<m:ExpandDL><m:Mailbox><t:EmailAddress>engineering@fabrikam.com</t:EmailAddress></m:Mailbox></m:ExpandDL>",
        impersonate=None,
    )
    _, by_name = await ews.post(
        "<m:ExpandDL><m:Mailbox><t:EmailAddress>Engineering</t:EmailAddress></m:Mailbox></m:ExpandDL>",
        impersonate=None,
    )
    _, unknown = await ews.post(
        "<m:ExpandDL><m:Mailbox><t:EmailAddress>nobody-list</t:EmailAddress></m:Mailbox></m:ExpandDL>",
        impersonate=None,
    )

    assert status == 200
    assert_like_documented("expanddl_response.xml", expanded)
    members = {e.text for e in expanded.findall(f".//{{{M}}}DLExpansion/{{{T}}}Mailbox/{{{T}}}EmailAddress")}
    assert ANNA in members
    assert "chloe.martin@fabrikam.com" in members
    assert {e.text for e in by_name.findall(f".//{{{T}}}EmailAddress")} == members
    # "If the distribution list has no members or the requested distribution list does not exist,
    # the ResponseClass attribute will contain a value equal to Success."
    message = unknown.find(f".//{{{M}}}ExpandDLResponseMessage")
    assert message is not None
    assert message.get("ResponseClass") == "Success"
    assert unknown.find(f".//{{{M}}}DLExpansion").get("TotalItemsInView") == "0"  # type: ignore[union-attr]


async def test_room_lists_rooms_and_names_match_documented_responses(ews: Ews) -> None:
    _, lists = await ews.post("<m:GetRoomLists/>", impersonate=None)
    assert_like_documented("getroomlists_response.xml", lists)
    first = lists.find(f".//{{{T}}}Address/{{{T}}}EmailAddress")
    assert first is not None

    _, rooms = await ews.post(
        f"<m:GetRooms><m:RoomList><t:EmailAddress>{first.text}</t:EmailAddress></m:RoomList></m:GetRooms>",
        impersonate=None,
    )
    assert_like_documented("getrooms_response.xml", rooms)

    _, names = await ews.post(
        '<m:ResolveNames ReturnFullContactData="true">'
        "<m:UnresolvedEntry>anna.schmidt</m:UnresolvedEntry></m:ResolveNames>",
        impersonate=None,
    )
    contact = (
        "/m:ResolveNamesResponse/m:ResponseMessages/m:ResolveNamesResponseMessage"
        "/m:ResolutionSet/t:Resolution/t:Contact"
    )
    assert_like_documented("resolvenames_response.xml", names, extra_ok=(f"{contact}/t:",))

    _, unknown = await ews.post(
        '<m:ResolveNames ReturnFullContactData="false">'
        "<m:UnresolvedEntry>zz-nobody</m:UnresolvedEntry></m:ResolveNames>",
        impersonate=None,
    )
    assert_like_documented("resolvenames_error_response.xml", unknown)


# --- faults, authentication, XML safety ---------------------------------------------------------------


def _fault(root: ET.Element) -> tuple[str, str, dict[str, str]]:
    fault = root.find(f"{{{SOAP}}}Body/{{{SOAP}}}Fault")
    assert fault is not None
    detail = fault.find("detail")
    assert detail is not None
    values = {v.get("Name") or "": v.text or "" for v in detail.iter(f"{{{T}}}Value")}
    return fault.findtext("faultcode") or "", detail.findtext(f"{{{E}}}ResponseCode") or "", values


async def test_faults_carry_the_documented_detail(ews: Ews) -> None:
    rule = ews.state.faults.add({"route": "ews:GetFolder", "retry_after": 1.5, "count": 1})
    try:
        status, root = await ews.post(
            "<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape>"
            '<m:FolderIds><t:DistinguishedFolderId Id="calendar"/></m:FolderIds></m:GetFolder>'
        )
    finally:
        ews.state.faults.remove(rule.id)
    assert status == 500
    assert _fault(root) == ("a:ErrorServerBusy", "ErrorServerBusy", {"BackOffMilliseconds": "1500"})

    status, root = await ews.post("<m:GetRoomLists/>", impersonate=ANNA, service_account="svc-freebusy")
    assert status == 500
    assert _fault(root)[1] == "ErrorImpersonateUserDenied"

    status, root = await ews.post("<m:GetRoomLists/>", impersonate="ghost@fabrikam.com")
    assert (status, _fault(root)[1:]) == (500, ("ErrorNonExistentMailbox", {"SmtpAddress": "ghost@fabrikam.com"}))


@pytest.mark.parametrize(
    ("kind", "value", "code"),
    [
        ("SmtpAddress", ANNA, None),
        ("PrincipalName", ANNA, None),
        ("PrimarySmtpAddress", "Anna.Schmidt@Fabrikam.com", None),
        ("SID", "S-1-5-21-1004336348-1177238915-682003330-1001", "ErrorNonExistentMailbox"),
    ],
)
async def test_connecting_sid_forms(ews: Ews, kind: str, value: str, code: str | None) -> None:
    status, root = await ews.post(
        "<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape>"
        '<m:FolderIds><t:DistinguishedFolderId Id="calendar"/></m:FolderIds></m:GetFolder>',
        impersonate=value,
        sid_kind=kind,
    )
    if code is None:
        assert status == 200
        assert root.find(f".//{{{T}}}CalendarFolder") is not None
    else:
        assert (status, _fault(root)[1]) == (500, code)


async def test_unauthenticated_requests_get_the_iis_challenges(ews: Ews) -> None:
    response = await ews.client.post("/EWS/Exchange.asmx", data=b"<x/>")
    assert response.status == 401
    challenges = response.headers.getall("WWW-Authenticate")
    assert challenges == ["Negotiate", "NTLM", 'Basic realm="mail.fabrikam.com"']
    wrong = base64.b64encode(b"FABRIKAM\\svc-full:wrong").decode()
    response = await ews.client.post("/EWS/Exchange.asmx", data=b"<x/>", headers={"Authorization": f"Basic {wrong}"})
    assert response.status == 401


async def test_dtds_are_refused_before_entities_expand(ews: Ews) -> None:
    bomb = (
        '<?xml version="1.0"?><!DOCTYPE s:Envelope [<!ENTITY a "aaaaaaaaaa">'
        '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
        f'<s:Envelope xmlns:s="{SOAP}" xmlns:m="{M}"><s:Body><m:GetRoomLists>&b;</m:GetRoomLists></s:Body></s:Envelope>'
    )
    response = await ews.client.post("/EWS/Exchange.asmx", data=bomb.encode(), headers={"Authorization": ews.auth()})
    assert response.status == 500
    assert _fault(ET.fromstring(await response.read()))[1] == "ErrorSchemaValidation"


# --- time zones ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "zone",
    ["Europe/Berlin", "America/New_York", "Australia/Sydney", "America/St_Johns", "Asia/Kolkata", "UTC"],
)
def test_legacy_time_zone_agrees_with_the_iana_database(zone: str) -> None:
    tz = ZoneInfo(zone)
    legacy = LegacyTimeZone.from_xml(legacy_timezone(ET.Element("x"), tz, 2026))
    instant = datetime(2026, 1, 1, 0, 30, tzinfo=UTC)
    while instant.year == 2026:
        local = instant.astimezone(tz).replace(tzinfo=None)
        assert legacy.to_local(instant) == local, instant
        assert legacy.to_utc(local) == instant or instant.astimezone(tz).fold == 1
        instant += timedelta(hours=3)


def test_time_zone_definition_round_trips_through_exchangelib() -> None:
    from exchangelib.properties import TimeZone as LegacyZone
    from exchangelib.properties import TimeZoneDefinition
    from exchangelib.util import to_xml

    parent = ET.Element("x")
    definition = timezone_definition(parent, "W. Europe Standard Time", 2026, full=True)
    assert definition is not None
    parsed = TimeZoneDefinition.from_xml(to_xml(ET.tostring(definition)).getroot(), account=None)
    legacy = LegacyZone.from_server_timezone(tz_definition=parsed, for_year=2026)
    assert legacy.bias == -60
    assert (legacy.daylight_time.iso_month, legacy.daylight_time.occurrence, legacy.daylight_time.bias) == (3, 5, -60)
    assert (legacy.standard_time.iso_month, legacy.standard_time.occurrence) == (10, 5)
