"""A person editing the base in Airtable's UI (``emu.client``): each call is one action, one
transaction, and so one webhook payload with actionMetadata.source "client"
(webhooks-action-metadata).  Calls bypass HTTP, the rate limit, faults and the request log.

The record actions can also stand for another of Airtable's sources (``source=``, the
webhooks-action-metadata variants, see webhooks.action_metadata): "automation" (sourceMetadata
{automationId}), "formSubmission" ({viewId}: the table's first form view, else its first view)
and "formPageSubmission" ({pageId}), which only create records, as forms do, and "system",
"sync", "anonymousUser", "unknown" (no sourceMetadata); ``source_metadata=`` overrides the
default ids.

Values are given in records-API format and validated like an API write without typecast
(a UI user picks existing select options; STRICT choice).  ``table`` is a table id or name,
``field`` a field id or name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .common import COMPUTED_TYPES, ApiError, new_id
from .formulas import _display
from .records import _WriteCtx
from .webhooks import EMULATOR_AUTOMATION_ID, EMULATOR_PAGE_ID, SOURCES, action_metadata

if TYPE_CHECKING:
    from . import Emulator
    from .records import _Table

#: Field types create_field accepts (field-model types the emulator stores or computes).
FIELD_TYPES = frozenset({
    "singleLineText", "multilineText", "richText", "email", "url", "phoneNumber", "number", "currency",
    "percent", "duration", "rating", "checkbox", "date", "dateTime", "singleSelect", "multipleSelects",
    "multipleRecordLinks", "multipleAttachments", "singleCollaborator", "multipleCollaborators", "barcode",
    "formula", "createdTime", "lastModifiedTime", "autoNumber", "count", "multipleLookupValues",
})


class ClientActions:
    """UI actions on the emulated base; see the module docstring."""

    def __init__(self, emulator: "Emulator"):
        self._emu = emulator

    # ---- records ---------------------------------------------------------------------

    def create(self, table: str, fields: dict[str, Any], *, source: str = "client",
               source_metadata: dict | None = None) -> str:
        """Create a record; returns its id."""
        emu = self._emu
        with emu._lock:
            t = emu._require_table(table)
            source_metadata = self._action(t, source, source_metadata, creating=True)
            ctx = _WriteCtx(typecast=False)
            cells = emu._validate_cells(t, fields, ctx)
            before = emu._txn_begin()
            now = emu._iso_now()
            emu._commit_ctx(ctx, now)
            rec = emu._insert(t, cells, now)
            emu._txn_end(before, source, source_metadata)
            return rec.id

    def update(self, table: str, record_id: str, fields: dict[str, Any], *, source: str = "client",
               source_metadata: dict | None = None) -> None:
        """Change cells of one record (the others are kept)."""
        emu = self._emu
        with emu._lock:
            t = emu._require_table(table)
            source_metadata = self._action(t, source, source_metadata)
            rec = t.index.get(record_id)
            if rec is None:
                raise KeyError(f"no record {record_id!r} in table {t.name!r}")
            ctx = _WriteCtx(typecast=False)
            cells = emu._validate_cells(t, fields, ctx)
            before = emu._txn_begin()
            now = emu._iso_now()
            emu._commit_ctx(ctx, now)
            emu._apply(t, rec, cells, False, now)
            emu._txn_end(before, source, source_metadata)

    def delete(self, table: str, record_ids: list[str], *, source: str = "client",
               source_metadata: dict | None = None) -> None:
        """Delete records; links to them are cleared in other records, in the same action."""
        emu = self._emu
        with emu._lock:
            t = emu._require_table(table)
            source_metadata = self._action(t, source, source_metadata)
            missing = [rid for rid in record_ids if rid not in t.index]
            if missing:
                raise KeyError(f"no record(s) {missing} in table {t.name!r}")
            before = emu._txn_begin()
            emu._remove(t, list(dict.fromkeys(record_ids)))
            emu._txn_end(before, source, source_metadata)

    # ---- fields ----------------------------------------------------------------------

    def create_field(self, table: str, name: str, type: str, options: dict | None = None) -> str:  # noqa: A002
        """Add a field; returns its id.  A link field also gets its inverse field in the
        linked table, as Airtable creates one."""
        emu = self._emu
        if type not in FIELD_TYPES:
            raise ValueError(f"unsupported field type {type!r}")
        with emu._lock:
            t = emu._require_table(table)
            self._check_new_name(t, name)
            f: dict[str, Any] = {"id": self._fresh_field_id(), "name": name, "type": type}
            if options:
                f["options"] = dict(options)
            f_opts = emu._default_options(f)
            if f_opts is not None:
                f["options"] = f_opts
            before = emu._txn_begin(whole_base=True)
            t.fields.append(f)
            if type == "multipleRecordLinks":
                linked = emu._require_table(f["options"]["linkedTableId"])
                inverse_name = t.name
                n = 1
                while linked.field(inverse_name) is not None:
                    n += 1
                    inverse_name = f"{t.name} {n}"
                inverse = {"id": self._fresh_field_id(), "name": inverse_name, "type": "multipleRecordLinks",
                           "options": {"linkedTableId": t.id, "isReversed": False,
                                       "prefersSingleRecordLink": False, "inverseLinkFieldId": f["id"]}}
                f["options"]["inverseLinkFieldId"] = inverse["id"]
                linked.fields.append(inverse)
            emu._txn_end(before, "client")
            return f["id"]

    def rename_field(self, table: str, field: str, new_name: str) -> None:
        emu = self._emu
        with emu._lock:
            t = emu._require_table(table)
            f = self._field(t, field)
            if new_name != f["name"]:
                self._check_new_name(t, new_name)
            before = emu._txn_begin(whole_base=True)
            f["name"] = new_name
            emu._txn_end(before, "client")

    def delete_field(self, table: str, field: str) -> None:
        """Delete a field and its cells (the primary field cannot be deleted, as in Airtable)."""
        emu = self._emu
        with emu._lock:
            t = emu._require_table(table)
            f = self._field(t, field)
            if f["id"] == t.primary_field_id:
                raise ValueError("the primary field cannot be deleted")
            before = emu._txn_begin(whole_base=True)
            t.fields = [x for x in t.fields if x["id"] != f["id"]]
            for rec in t.records:
                rec.fields.pop(f["id"], None)
                rec.modified.pop(f["id"], None)
            t.merge_indexes.clear()
            t.link_indexes.clear()
            if f["type"] == "multipleRecordLinks":
                # The inverse field stays, no longer paired (UNCONFIRMED: Airtable's UI offers
                # to delete or convert it).
                linked = emu._require_table(f["options"]["linkedTableId"])
                inverse = linked.field(f["options"].get("inverseLinkFieldId") or "")
                if inverse is not None:
                    inverse["options"].pop("inverseLinkFieldId", None)
            emu._txn_end(before, "client")

    def change_field_type(self, table: str, field: str, type: str, options: dict | None = None) -> None:  # noqa: A002
        """Convert a field to another (writable) type; each cell is converted from its text
        with typecast, and cleared when it cannot be (a best-effort model of the UI)."""
        emu = self._emu
        if type not in FIELD_TYPES or type in COMPUTED_TYPES or type == "multipleRecordLinks":
            raise ValueError(f"unsupported target type {type!r}")
        with emu._lock:
            t = emu._require_table(table)
            f = self._field(t, field)
            if f["type"] in COMPUTED_TYPES or f["type"] == "multipleRecordLinks":
                raise ValueError(f"cannot convert a {f['type']} field")
            new = {"id": f["id"], "name": f["name"], "type": type}
            if options:
                new["options"] = dict(options)
            new_opts = emu._default_options(new)
            if new_opts is not None:
                new["options"] = new_opts
            before = emu._txn_begin(whole_base=True)
            ctx = _WriteCtx(typecast=True)
            converted = {}
            for rec in t.records:
                old = rec.fields.get(f["id"])
                if old is None:
                    continue
                text = ", ".join(_display(v) for v in old) if isinstance(old, list) else _display(old)
                try:
                    converted[rec.id] = emu._coerce(t, new, text, ctx)
                except ApiError:
                    converted[rec.id] = None
            f.clear()
            f.update(new)
            now = emu._iso_now()
            emu._commit_ctx(ctx, now)
            for rec in t.records:
                if rec.id in converted:
                    if converted[rec.id] is None:
                        rec.fields.pop(f["id"], None)
                    else:
                        rec.fields[f["id"]] = converted[rec.id]
                    rec.modified[f["id"]] = now
            t.merge_indexes.clear()
            t.link_indexes.clear()
            emu._txn_end(before, "client")

    # ---- helpers ---------------------------------------------------------------------

    @staticmethod
    def _action(t: "_Table", source: str, source_metadata: dict | None, creating: bool = False) -> dict | None:
        """The sourceMetadata of a record action by ``source`` (checked before any change)."""
        if source not in SOURCES:
            raise ValueError(f"unknown source {source!r} (one of {SOURCES})")
        if source in ("formSubmission", "formPageSubmission") and not creating:
            raise ValueError(f"a {source} only creates records")
        if source_metadata is None:
            if source == "formSubmission":
                views = [v for v in t.views if v.get("type") == "form"] or t.views
                source_metadata = {"viewId": views[0]["id"]}
            elif source == "formPageSubmission":
                source_metadata = {"pageId": EMULATOR_PAGE_ID}
            elif source == "automation":
                source_metadata = {"automationId": EMULATOR_AUTOMATION_ID}
        action_metadata(source, source_metadata)  # raises on metadata of the wrong shape
        return source_metadata

    @staticmethod
    def _field(t: "_Table", key: str) -> dict:
        f = t.field(key)
        if f is None:
            raise KeyError(f"no field {key!r} in table {t.name!r}")
        return f

    @staticmethod
    def _check_new_name(t: "_Table", name: str) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ValueError("a field needs a name")
        if any(f["name"].lower() == name.lower() for f in t.fields):
            raise ValueError(f"table {t.name!r} already has a field named {name!r}")

    def _fresh_field_id(self) -> str:
        taken = {f["id"] for t in self._emu._tables for f in t.fields}
        while True:
            fid = new_id("fld")
            if fid not in taken:
                return fid
