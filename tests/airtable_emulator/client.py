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

The schema actions (create_field, rename_field, delete_field, change_field_type, rename_table)
compare the whole base before and after, so their payload holds what changed: the field or
table change (webhooks-table-changed: createdFieldsById {name, type}; changedFieldsById
{current, previous?} with the changed properties only; destroyedFieldIds; changedMetadata
{current, previous}) and, in the same payload, every cell the change alters.  webhooks-payload:
"If the new field affects multiple records, such as a Formula field, then the second payload
will contain both the field change and the records affected."  Sources:
https://airtable.com/developers/web/api/model/webhooks-payload and
https://airtable.com/developers/web/api/model/webhooks-table-changed
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .common import COMPUTED_TYPES, ApiError, new_id
from .formulas import _TOKEN_RE, _display, _unescape
from .records import _WriteCtx
from .webhooks import EMULATOR_AUTOMATION_ID, EMULATOR_PAGE_ID, SOURCES, action_metadata, retyped_cell_changed

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
        """Rename a field.  Its id, cells and everything reading it stay: lookups and counts
        name fields by id, and the table's formulas that name it by its old name are rewritten
        to its id, so they keep computing (Airtable formulas follow a rename; the Web API shows
        a formula's fields as {fldXXX}, per the field-model page's Formula entry as recalled:
        the stored copies searched did not show that passage, UNCONFIRMED).  Payload: changedFieldsById {fid:
        {current: {name}, previous: {name}}} (previous with includePreviousFieldDefinitions)."""
        emu = self._emu
        with emu._lock:
            t = emu._require_table(table)
            f = self._field(t, field)
            if new_name != f["name"]:
                self._check_new_name(t, new_name, renaming=f)
            before = emu._txn_begin(whole_base=True)
            _formulas_by_id(t, f)
            f["name"] = new_name
            emu._txn_end(before, "client")

    def rename_table(self, table: str, new_name: str) -> None:
        """Rename a table (its id, fields and records stay).  From then on the records API
        knows it by its id and its new name only: a request naming the old name is answered
        like any unknown table (403 INVALID_PERMISSIONS_OR_MODEL_NOT_FOUND, see
        HttpMixin._table_for).  create-records / update-multiple-records docs: "We recommend
        using table IDs so you don't need to modify your API request when your table name
        changes."  Payload (dataTypes tableMetadata only, webhooks-specification: "tableMetadata:
        table name and description changes"): changedTablesById {tbl: {changedMetadata:
        {current: {name}, previous: {name}}}}; webhooks-payload: "If a user renames a table,
        that will generate a single payload"."""
        emu = self._emu
        with emu._lock:
            t = emu._require_table(table)
            if new_name == t.name:
                return
            if not isinstance(new_name, str) or not new_name.strip():
                raise ValueError("a table needs a name")
            # STRICT (undocumented): a name another table has, in any case, is refused (the
            # loader refuses duplicate table names too).
            if any(o is not t and o.name.lower() == new_name.lower() for o in emu._tables):
                raise ValueError(f"the base already has a table named {new_name!r}")
            before = emu._txn_begin(whole_base=True)
            t.name = new_name
            emu._txn_end(before, "client")

    def delete_field(self, table: str, field: str) -> None:
        """Delete a field and its cells (the primary field cannot be deleted, as in Airtable).
        Payload: destroyedFieldIds [fid] and no cell changes of that field (UNCONFIRMED: the
        docs do not say whether the cells a deleted field takes away appear in
        changedRecordsById; the field is gone, so the emulator reports the field only).  Cells
        of other fields that read it (formulas, lookups) do change and are reported."""
        emu = self._emu
        with emu._lock:
            t = emu._require_table(table)
            f = self._field(t, field)
            if f["id"] == t.primary_field_id:
                raise ValueError("the primary field cannot be deleted")
            before = emu._txn_begin(whole_base=True)
            # The table's formulas that use the field can no longer compute: they show it by
            # id (as the API does) and turn invalid (field-model, Formula: options.isValid;
            # UNCONFIRMED that a deletion is what sets it); their cells empty, and that is
            # reported as a record change (UNCONFIRMED: Airtable shows #ERROR! cells, which
            # the emulator's formulas render as empty).  A field re-created with the same name gets a new id,
            # so they stay broken (UNCONFIRMED that Airtable does not re-attach them by name).
            for formula in _formulas_by_id(t, f):
                formula["options"]["isValid"] = False
            # Lookups, rollups and counts through it or of it, in any table, turn invalid too
            # (Extensions FieldType, COUNT: isValid "false if the linked record field has been
            # changed to a different field type"; for a deletion UNCONFIRMED); their cells
            # empty and are reported.
            for other in emu._tables:
                for g in other.fields:
                    opts = g.get("options") or {}
                    if "isValid" in opts and f["id"] in (opts.get("recordLinkFieldId"), opts.get("fieldIdInLinkedTable")):
                        opts["isValid"] = False
            # A view stops showing it (get-base-schema, include=visibleFieldIds).
            for view in t.views:
                if f["id"] in view.get("visibleFieldIds", ()):
                    view["visibleFieldIds"] = [x for x in view["visibleFieldIds"] if x != f["id"]]
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
        with typecast, and cleared when it cannot be (a best-effort model of the UI).
        Payload: changedFieldsById {fid: {current: {type}, previous: {type}}} and, in the same
        payload, changedRecordsById with every cell whose value the conversion changed (the
        "field change and the records affected" of webhooks-payload; UNCONFIRMED for a retype,
        which the docs do not name).  A cell the conversion leaves as it was, in the webhooks
        cell format, is not changed (no new modified time, no record change; UNCONFIRMED)."""
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
            old_def = dict(f)
            f.clear()
            f.update(new)
            now = emu._iso_now()
            emu._commit_ctx(ctx, now)
            for rec in t.records:
                if rec.id in converted and retyped_cell_changed(old_def, f, rec.fields.get(f["id"]), converted[rec.id]):
                    if converted[rec.id] is None:
                        rec.fields.pop(f["id"], None)
                    else:
                        rec.fields[f["id"]] = converted[rec.id]
                    rec.modified[f["id"]] = now
            t.merge_indexes.clear()
            t.link_indexes.clear()
            emu._txn_end(before, "client")

    def change_field_to_formula(self, table: str, field: str, formula: str) -> None:
        """Turn a field into a formula field, as a person does in its "Edit field" dialog (the Web
        API cannot create or convert to formula fields: field-model, Formula, "not writable"):
        its stored cells go and from then on its values are computed from ``formula``, which may
        name other fields as {name}.  The field keeps its id and name.  options: formula,
        isValid, referencedFieldIds and result (field-model, Formula; result {type: "number"},
        which is what the emulator's formulas give a field they count with; UNCONFIRMED for other
        results).  Payload: changedFieldsById {fid: {current: {type: "formula"}, previous: {type}}}
        and, in the same payload, every cell whose value the change altered (webhooks-payload,
        "a Formula field ... the field change and the records affected")."""
        emu = self._emu
        with emu._lock:
            t = emu._require_table(table)
            f = self._field(t, field)
            if f["id"] == t.primary_field_id or f["type"] in COMPUTED_TYPES or f["type"] == "multipleRecordLinks":
                raise ValueError(f"cannot convert a {f['type']} field to a formula here")
            ast = emu._parse_formula(t, formula)  # refuses a formula that does not parse or names no field
            before = emu._txn_begin(whole_base=True)
            new = {"id": f["id"], "name": f["name"], "type": "formula",
                   "options": {"formula": formula, "isValid": True, "referencedFieldIds": _field_refs(ast),
                               "result": {"type": "number", "options": {"precision": 0}}}}
            f.clear()
            f.update(new)
            for rec in t.records:
                rec.fields.pop(f["id"], None)
                rec.modified.pop(f["id"], None)
            t.merge_indexes.clear()
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
    def _check_new_name(t: "_Table", name: str, renaming: dict | None = None) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ValueError("a field needs a name")
        if any(f["name"].lower() == name.lower() for f in t.fields if f is not renaming):
            raise ValueError(f"table {t.name!r} already has a field named {name!r}")

    def _fresh_field_id(self) -> str:
        taken = {f["id"] for t in self._emu._tables for f in t.fields}
        while True:
            fid = new_id("fld")
            if fid not in taken:
                return fid


def _field_refs(node: tuple) -> list[str]:
    """The field ids a parsed formula reads, in order, once each."""
    if node[0] == "field":
        return [node[1]]
    children = node[2] if node[0] == "call" else [n for n in node[1:] if isinstance(n, tuple)]
    return list(dict.fromkeys(fid for child in children for fid in _field_refs(child)))


def _formulas_by_id(t: "_Table", f: dict) -> list[dict]:
    """Rewrite every ``{name}`` reference to field ``f`` in ``t``'s formula fields as ``{id}``
    (the form the API shows; field-model, Formula) so that they keep pointing at ``f`` after it
    is renamed; returns the formula fields that refer to ``f`` (by name or id)."""
    using = []
    for g in t.fields:
        text = (g.get("options") or {}).get("formula") if g["type"] == "formula" else None
        if not text:
            continue
        out, pos, refers = [], 0, False
        while pos < len(text):
            m = _TOKEN_RE.match(text, pos)
            if not m or m.end() == pos:
                break  # an invalid formula: the rest is kept as it is
            if m.lastgroup == "field" and _unescape(m.group("field")[1:-1]) in (f["name"], f["id"]):
                refers = True
                out.append(text[pos:m.start("field")] + "{" + f["id"] + "}")
            else:
                out.append(text[pos:m.end()])
            pos = m.end()
        if refers:
            g["options"]["formula"] = "".join(out) + text[pos:]
            using.append(g)
    return using
