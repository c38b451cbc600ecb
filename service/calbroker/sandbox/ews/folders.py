"""A mailbox's folder tree as EWS shows it, and the two operations that read it: GetFolder and FindFolder.

- Distinguished folders: https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/distinguishedfolderid
- GetFolder: https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/getfolder-operation
- FindFolder: https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/findfolder-operation
  (Shallow: the direct subfolders; Deep: every folder below, the way clients list calendars with a
  restriction on ``folder:FolderClass`` = ``IPF.Appointment``; ``IndexedPageFolderView`` pages)
- Folder shapes: https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/baseshape
  (IdOnly: the FolderId; Default: "the folder name, the folder ID, the number of subfolders, the
  number of child folders found in the folder, and the count of unread items"; AllProperties) plus
  ``AdditionalProperties``. Child elements follow BaseFolderType's order in Types.xsd; UnreadCount
  belongs to FolderType (``t:Folder``) only.
- Secondary calendars are subfolders of the Calendar folder, as Outlook creates them
  (https://learn.microsoft.com/en-us/exchange/client-developer/exchange-web-services/folders-and-items-in-ews-in-exchange).

A RESTRICTED service account sees the calendar folders and the hierarchy roots above them only.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from calbroker.sandbox.ews.access import HIERARCHY_ROOTS, Call, ItemError
from calbroker.sandbox.ews.items import FOLDER_CHANGE_KEY, InvalidId, folder_id, parse_folder_id
from calbroker.sandbox.ews.restrictions import SearchFields, compile_search
from calbroker.sandbox.ews.soap import (
    Element,
    MalformedRequest,
    child,
    find_text,
    local_name,
    m,
    response_message,
    t,
    xml_bool,
)

__all__ = [
    "FolderNode",
    "find_folder",
    "folder_refs",
    "get_folder",
    "is_calendar_folder",
    "resolve_folder",
    "store_calendar",
]

CALENDAR_CLASS = "IPF.Appointment"
_MALFORMED_ID = "Id is malformed."
_NOT_FOUND = "The specified folder could not be found in the store."
# PR_ATTR_HIDDEN (0x10F4, Boolean): clients ask for it to hide system folders; none of ours is hidden.
_HIDDEN_TAG = 0x10F4


@dataclass(frozen=True, slots=True)
class FolderNode:
    """One folder: `key` is its distinguished id, or a secondary calendar's id in the calendar store."""

    key: str
    display_name: str
    parent: str | None
    element: str
    folder_class: str | None
    distinguished: bool = True

    @property
    def is_calendar(self) -> bool:
        return self.folder_class == CALENDAR_CLASS

    @property
    def access_name(self) -> str:
        """The folder name access rules are written for (`ServiceAccount.can_open_folder`)."""
        return "calendar" if self.is_calendar else self.key


_DISTINGUISHED = tuple(
    FolderNode(key, display, parent, element, folder_class)
    for key, display, parent, element, folder_class in (
        ("root", "", None, "Folder", None),
        ("msgfolderroot", "Top of Information Store", "root", "Folder", None),
        ("calendar", "Calendar", "msgfolderroot", "CalendarFolder", CALENDAR_CLASS),
        ("inbox", "Inbox", "msgfolderroot", "Folder", "IPF.Note"),
        ("sentitems", "Sent Items", "msgfolderroot", "Folder", "IPF.Note"),
        ("deleteditems", "Deleted Items", "msgfolderroot", "Folder", "IPF.Note"),
        ("drafts", "Drafts", "msgfolderroot", "Folder", "IPF.Note"),
        ("outbox", "Outbox", "msgfolderroot", "Folder", "IPF.Note"),
        ("junkemail", "Junk Email", "msgfolderroot", "Folder", "IPF.Note"),
        ("contacts", "Contacts", "msgfolderroot", "ContactsFolder", "IPF.Contact"),
        ("tasks", "Tasks", "msgfolderroot", "TasksFolder", "IPF.Task"),
        ("notes", "Notes", "msgfolderroot", "Folder", "IPF.StickyNote"),
        ("journal", "Journal", "msgfolderroot", "Folder", "IPF.Journal"),
    )
)


def _tree(call: Call, mailbox: str) -> list[FolderNode]:
    secondary = [
        FolderNode(c.id, c.name, "calendar", "CalendarFolder", CALENDAR_CLASS, distinguished=False)
        for c in call.calendars.calendars(mailbox)
        if not c.is_default
    ]
    return [*_DISTINGUISHED, *secondary]


def _node(call: Call, mailbox: str, key: str) -> FolderNode | None:
    return next((n for n in _tree(call, mailbox) if n.key == key), None)


def is_calendar_folder(call: Call, mailbox: str, key: str) -> bool:
    node = _node(call, mailbox, key)
    return node is not None and node.is_calendar


def store_calendar(key: str) -> str | None:
    """The calendar store's id of a calendar folder (None: the default calendar)."""
    return None if key == "calendar" else key


def resolve_folder(call: Call, ref: Element) -> tuple[str, str]:
    """(mailbox email, folder key) of a DistinguishedFolderId or FolderId, access checked."""
    address: str | None
    if local_name(ref.tag) == "FolderId":
        try:
            address, key = parse_folder_id(ref.get("Id") or "")
        except InvalidId:
            raise ItemError("ErrorInvalidIdMalformed", _MALFORMED_ID) from None
    else:
        key = ref.get("Id") or ""
        if key not in {n.key for n in _DISTINGUISHED}:
            raise ItemError("ErrorFolderNotFound", _NOT_FOUND)
        address = find_text(ref, f"{t('Mailbox')}/{t('EmailAddress')}")
    mailbox = call.mailbox(address)
    node = _node(call, mailbox.email, key)
    if node is None:
        raise ItemError("ErrorFolderNotFound", _NOT_FOUND)
    call.open_folder(node.access_name)
    return mailbox.email, key


def _visible(call: Call, node: FolderNode) -> bool:
    return node.key in HIERARCHY_ROOTS or call.account.can_open_folder(node.access_name)


# --- shapes and rendering -----------------------------------------------------------------------


_DEFAULT_FIELDS = frozenset(
    {"folder:DisplayName", "folder:TotalCount", "folder:ChildFolderCount", "folder:UnreadCount"}
)


@dataclass(frozen=True, slots=True)
class FolderShape:
    """What a FolderShape asks for: a base shape, extra field URIs and extended properties."""

    base: str = "IdOnly"
    fields: frozenset[str] = frozenset()
    extended: tuple[Element, ...] = ()

    @classmethod
    def from_xml(cls, elem: Element | None) -> FolderShape:
        if elem is None:
            raise MalformedRequest("FolderShape is required")
        extra = elem.find(t("AdditionalProperties"))
        uris = [] if extra is None else [c for c in extra if local_name(c.tag) == "FieldURI"]
        return cls(
            base=find_text(elem, t("BaseShape")) or "IdOnly",
            fields=frozenset(u.get("FieldURI") or "" for u in uris),
            extended=() if extra is None else tuple(c for c in extra if local_name(c.tag) == "ExtendedFieldURI"),
        )

    def wants(self, uri: str) -> bool:
        if uri in self.fields or self.base == "AllProperties":
            return True
        return self.base == "Default" and uri in _DEFAULT_FIELDS


def _children(tree: list[FolderNode], key: str) -> list[FolderNode]:
    return [n for n in tree if n.parent == key]


def _property_tag(uri: Element) -> int | None:
    try:
        return int(uri.get("PropertyTag") or "", 0)
    except ValueError:
        return None


def _render(parent: Element, call: Call, mailbox: str, node: FolderNode, shape: FolderShape) -> None:
    tree = _tree(call, mailbox)
    item = child(parent, t(node.element))
    child(item, t("FolderId"), Id=folder_id(mailbox, node.key), ChangeKey=FOLDER_CHANGE_KEY)
    if node.parent is not None and shape.wants("folder:ParentFolderId"):
        child(item, t("ParentFolderId"), Id=folder_id(mailbox, node.parent), ChangeKey=FOLDER_CHANGE_KEY)
    if node.folder_class is not None and shape.wants("folder:FolderClass"):
        child(item, t("FolderClass"), node.folder_class)
    if shape.wants("folder:DisplayName"):
        child(item, t("DisplayName"), node.display_name)
    if shape.wants("folder:TotalCount"):
        total = len(call.calendars.events(mailbox, calendar_id=store_calendar(node.key))) if node.is_calendar else 0
        child(item, t("TotalCount"), str(total))
    if shape.wants("folder:ChildFolderCount"):
        child(item, t("ChildFolderCount"), str(len(_children(tree, node.key))))
    for uri in shape.extended:
        if _property_tag(uri) == _HIDDEN_TAG:
            prop = child(item, t("ExtendedProperty"))
            prop.append(uri)
            child(prop, t("Value"), "false")
    if shape.wants("folder:EffectiveRights"):
        rights = child(item, t("EffectiveRights"))
        readable = call.account.can_open_folder(node.access_name)
        for right, value in (
            ("CreateAssociated", readable),
            ("CreateContents", readable),
            ("CreateHierarchy", False),
            ("Delete", False),
            ("Modify", readable),
            ("Read", readable),
            ("ViewPrivateItems", readable),
        ):
            child(rights, t(right), xml_bool(value))
    if node.distinguished and shape.wants("folder:DistinguishedFolderId"):
        child(item, t("DistinguishedFolderId"), node.key)
    if node.element == "Folder" and shape.wants("folder:UnreadCount"):
        child(item, t("UnreadCount"), "0")


def folder_refs(container: Element | None) -> list[Element]:
    if container is None or len(container) == 0:
        raise MalformedRequest("At least one folder id is required")
    return list(container)


# --- GetFolder ----------------------------------------------------------------------------------


def get_folder(call: Call, body: Element, parent: Element) -> None:
    shape = FolderShape.from_xml(body.find(m("FolderShape")))
    messages = child(child(parent, m("GetFolderResponse")), m("ResponseMessages"))
    for ref in folder_refs(body.find(m("FolderIds"))):
        tag = m("GetFolderResponseMessage")
        try:
            mailbox, key = resolve_folder(call, ref)
        except ItemError as exc:
            response_message(messages, tag, exc.code, exc.text)
            continue
        node = _node(call, mailbox, key)
        assert node is not None
        _render(child(response_message(messages, tag), m("Folders")), call, mailbox, node, shape)


# --- FindFolder ---------------------------------------------------------------------------------


def _descendants(tree: list[FolderNode], key: str, *, deep: bool) -> Iterator[FolderNode]:
    for node in _children(tree, key):
        yield node
        if deep:
            yield from _descendants(tree, node.key, deep=True)


_FOLDER_FIELDS: SearchFields[FolderNode] = SearchFields(
    {
        "folder:FolderClass": lambda n: n.folder_class,
        "folder:DisplayName": lambda n: n.display_name,
        "folder:DistinguishedFolderId": lambda n: n.key if n.distinguished else None,
    }
)


def find_folder(call: Call, body: Element, parent: Element) -> None:
    traversal = body.get("Traversal") or "Shallow"
    if traversal not in ("Shallow", "Deep", "SoftDeleted"):
        raise MalformedRequest(f"Traversal {traversal!r} is not Shallow, Deep or SoftDeleted")
    shape = FolderShape.from_xml(body.find(m("FolderShape")))
    matches = compile_search(body.find(m("Restriction")), _FOLDER_FIELDS)
    indexed = body.find(m("IndexedPageFolderView"))
    fractional = body.find(m("FractionalPageFolderView"))
    messages = child(child(parent, m("FindFolderResponse")), m("ResponseMessages"))
    for ref in folder_refs(body.find(m("ParentFolderIds"))):
        tag = m("FindFolderResponseMessage")
        try:
            mailbox, key = resolve_folder(call, ref)
        except ItemError as exc:
            response_message(messages, tag, exc.code, exc.text)
            continue
        tree = _tree(call, mailbox)
        found = (
            []
            if traversal == "SoftDeleted"  # the sandbox keeps no soft-deleted folders
            else [
                n
                for n in _descendants(tree, key, deep=traversal == "Deep")
                if _visible(call, n) and (matches is None or matches(n))
            ]
        )
        offset, limit = 0, len(found)
        view = indexed if indexed is not None else fractional
        if view is not None:
            limit = int(view.get("MaxEntriesReturned") or len(found))
        if indexed is not None:
            offset = int(indexed.get("Offset") or "0")
            if (indexed.get("BasePoint") or "Beginning") == "End":
                offset = max(len(found) - offset - limit, 0)
        elif fractional is not None:
            numerator = int(fractional.get("Numerator") or "0")
            denominator = max(int(fractional.get("Denominator") or "1"), 1)
            offset = len(found) * numerator // denominator
        page = found[offset : offset + limit]
        root = child(response_message(messages, tag), m("RootFolder"))
        if indexed is not None:
            root.set("IndexedPagingOffset", str(offset + len(page)))
        elif fractional is not None:
            root.set("NumeratorOffset", str(offset + len(page)))
            root.set("AbsoluteDenominator", str(len(found)))
        root.set("TotalItemsInView", str(len(found)))
        root.set("IncludesLastItemInRange", xml_bool(offset + len(page) >= len(found)))
        folders = child(root, t("Folders"))
        for node in page:
            _render(folders, call, mailbox, node, shape)
