"""GetUserConfiguration: the configuration objects a mailbox keeps in its folders; the sandbox has the
one calendar clients read, ``WorkHours``.

- GetUserConfiguration: https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/getuserconfiguration-operation
  (UserConfigurationName with a folder id and UserConfigurationProperties; the UserConfiguration
  answered carries UserConfigurationName, ItemId and the XmlData asked for, base64).
- The working hours stream: [MS-OXOCFG] 2.2.5.2.1 "Working Hours",
  https://learn.microsoft.com/en-us/openspecs/exchange_server_protocols/ms-oxocfg/b4aa6771-145d-4492-8b87-ac2003d9a64c :
  an ``IPM.Configuration.WorkHours`` object in the Calendar folder whose XML (namespace
  ``WorkingHours.xsd``) holds ``Root/WorkHoursVersion1`` with the TimeZone (Bias, Standard,
  DaylightSavings and the optional Name: the mailbox's Windows zone), the TimeSlot and the WorkDays.
  Transitions are written as Windows stores them: ``Date`` is ``0000/MM/0N`` (the N-th, 5 = last,
  ``DayOfWeek`` 0 = Sunday of month MM) and Bias counts minutes west of UTC.
"""

from __future__ import annotations

import base64
from datetime import timedelta
from xml.etree import ElementTree

from calbroker.sandbox import timezones
from calbroker.sandbox.directory import Mailbox
from calbroker.sandbox.ews.access import Call, ItemError
from calbroker.sandbox.ews.folders import resolve_folder
from calbroker.sandbox.ews.items import FOLDER_CHANGE_KEY, folder_id, item_id
from calbroker.sandbox.ews.soap import Element, MalformedRequest, child, find_text, m, response_message, t
from calbroker.sandbox.ews.timezones import YearlyChange, zone_rule

__all__ = ["get_user_configuration"]

_NS = "WorkingHours.xsd"
_NOT_FOUND = "The specified object was not found in the store."


def _minutes(delta: timedelta) -> str:
    return str(int(delta.total_seconds() // 60))


def _transition(parent: ElementTree.Element, tag: str, change: YearlyChange | None, bias: timedelta) -> None:
    node = ElementTree.SubElement(parent, tag)
    ElementTree.SubElement(node, "Bias").text = _minutes(bias)
    date = ElementTree.SubElement(node, "ChangeDate")
    ElementTree.SubElement(date, "Time").text = change.at.strftime("%H:%M:%S") if change else "00:00:00"
    ElementTree.SubElement(date, "Date").text = (
        f"0000/{change.month:02d}/{change.occurrence:02d}" if change else "0000/00/00"
    )
    ElementTree.SubElement(date, "DayOfWeek").text = str((change.weekday + 1) % 7) if change else "0"


def work_hours_xml(mailbox: Mailbox, year: int) -> bytes:
    """The mailbox's working hours stream, as Outlook and Exchange write it."""
    hours = mailbox.working_hours
    rule = zone_rule(timezones.zone(hours.time_zone), year)
    ElementTree.register_namespace("", _NS)
    root = ElementTree.Element(f"{{{_NS}}}Root")
    version = ElementTree.SubElement(root, "WorkHoursVersion1")
    zone = ElementTree.SubElement(version, "TimeZone")
    ElementTree.SubElement(zone, "Bias").text = _minutes(-rule.standard_offset)
    _transition(zone, "Standard", rule.to_standard, timedelta(0))
    _transition(zone, "DaylightSavings", rule.to_daylight, -rule.daylight_delta)
    ElementTree.SubElement(zone, "Name").text = hours.windows_time_zone
    slot = ElementTree.SubElement(version, "TimeSlot")
    ElementTree.SubElement(slot, "Start").text = hours.start.strftime("%H:%M:%S")
    ElementTree.SubElement(slot, "End").text = hours.end.strftime("%H:%M:%S")
    ElementTree.SubElement(version, "WorkDays").text = " ".join(day.capitalize() for day in hours.days)
    # Children of Root carry the default namespace too: one xmlns on Root, as the stream has it.
    for node in root.iter():
        if not node.tag.startswith("{"):
            node.tag = f"{{{_NS}}}{node.tag}"
    return b'<?xml version="1.0"?>' + ElementTree.tostring(root)


def get_user_configuration(call: Call, body: Element, parent: Element) -> None:
    messages = child(child(parent, m("GetUserConfigurationResponse")), m("ResponseMessages"))
    tag = m("GetUserConfigurationResponseMessage")
    name_elem = body.find(m("UserConfigurationName"))
    if name_elem is None or len(name_elem) == 0:
        raise MalformedRequest("GetUserConfiguration needs a UserConfigurationName with a folder id")
    name = name_elem.get("Name") or ""
    wanted = find_text(body, m("UserConfigurationProperties")) or "All"
    try:
        address, folder = resolve_folder(call, name_elem[0])
        if (folder, name) != ("calendar", "WorkHours"):
            raise ItemError("ErrorItemNotFound", _NOT_FOUND)
    except ItemError as exc:
        response_message(messages, tag, exc.code, exc.text)
        return
    mailbox = call.mailbox(address)
    config = child(response_message(messages, tag), m("UserConfiguration"))
    named = child(config, t("UserConfigurationName"), Name=name)
    child(named, t("FolderId"), Id=folder_id(mailbox.email, folder), ChangeKey=FOLDER_CHANGE_KEY)
    child(config, t("ItemId"), Id=item_id(mailbox.email, "configuration-workhours"), ChangeKey=FOLDER_CHANGE_KEY)
    if wanted in ("XmlData", "All"):
        child(config, t("XmlData"), base64.b64encode(work_hours_xml(mailbox, call.now.year)).decode())
