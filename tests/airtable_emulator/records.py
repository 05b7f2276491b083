"""Tables and records: loading BASE.json, the base schema, reading/listing, cell
validation and coercion, and the write operations (create, update, replace, upsert,
delete) with their side effects (typecast choices and linked records, inverse links)."""

from __future__ import annotations

import copy
import datetime as dt
import math
import re
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from .common import (
    CHOICE_COLORS, COMPUTED_TYPES, DATE_RE, DATETIME_RE, EMAIL_RE, ITERATOR_TTL_S, MAX_MERGE_FIELDS,
    MAX_PAGE_SIZE, MAX_RECORDS_PER_REQUEST, MAX_TEXT_LENGTH, MERGE_TYPES, MSG_RECORDS_CREATE,
    MSG_RECORDS_DELETE, MSG_RECORDS_UPDATE, NUMBER_TYPES, NUMERIC_RE, RECORD_ID_RE, TEXT_TYPES, ApiError,
    _bool_param, _int_param, _only_keys, _only_params, _Response, _scalar, _write_flags, bad_value,
    clean_number, computed_value, format_datetime, invalid_request, model_not_found, new_id,
    record_not_found, unknown_field,
)
from .formulas import FormulaError, _EvalError, _FormulaParser, _display, _is_num, _to_str

# --------------------------------------------------------------------------------------
# Internal data model
# --------------------------------------------------------------------------------------


@dataclass
class _Record:
    id: str
    created: str
    fields: dict[str, Any] = field(default_factory=dict)  # field id -> normalised cell value
    modified: dict[str, str] = field(default_factory=dict)  # field id -> last change time
    auto: int = 0  # autoNumber value


@dataclass
class _Table:
    id: str
    name: str
    primary_field_id: str
    fields: list[dict]  # metadata dicts, exactly as GET .../tables returns them
    views: list[dict]
    description: str | None = None
    records: list[_Record] = field(default_factory=list)
    index: dict[str, _Record] = field(default_factory=dict)
    auto_seq: int = 0
    # Upsert look-ups: merge field ids -> frozen merge key -> records, built on first use and
    # kept in step by _apply (merge fields are never link fields, which change elsewhere).
    merge_indexes: dict[tuple[str, ...], dict[Any, list["_Record"]]] = field(default_factory=dict)
    # Reverse links, for webhook payloads (which records read a changed record through a link):
    # link field id -> linked record id -> ids of this table's records linking it.  Built on
    # first use, kept in step by _apply, _sync_inverse and _commit_ctx, dropped by _remove and
    # the UI field actions (which rebuild it on next use).
    link_indexes: dict[str, dict[str, set[str]]] = field(default_factory=dict)

    def merge_matches(self, merge_ids: list[str], key: tuple) -> list["_Record"]:
        ids = tuple(merge_ids)
        index = self.merge_indexes.get(ids)
        if index is None:
            index = self.merge_indexes[ids] = {}
            for rec in self.records:
                index.setdefault(_merge_key_of(rec, ids), []).append(rec)
        return list(index.get(key, ()))

    def linkers(self, link_id: str, rec_id: str) -> set[str]:
        """Ids of this table's records whose link field ``link_id`` contains ``rec_id``."""
        index = self.link_indexes.get(link_id)
        if index is None:
            index = self.link_indexes[link_id] = {}
            for rec in self.records:
                for rid in rec.fields.get(link_id) or ():
                    index.setdefault(rid, set()).add(rec.id)
        return set(index.get(rec_id, ()))

    def relink(self, rec_id: str, link_id: str, old: list, new: list) -> None:
        """Keep link_indexes in step with one link cell changing from ``old`` to ``new``."""
        index = self.link_indexes.get(link_id)
        if index is None:
            return
        for rid in set(old) - set(new):
            holders = index.get(rid)
            if holders is not None:
                holders.discard(rec_id)
                if not holders:
                    del index[rid]
        for rid in set(new) - set(old):
            index.setdefault(rid, set()).add(rec_id)

    def field(self, key: str) -> dict | None:
        for f in self.fields:
            if f["id"] == key:
                return f
        for f in self.fields:
            if f["name"] == key:
                return f
        return None

    def field_by_id(self, fid: str) -> dict:
        for f in self.fields:
            if f["id"] == fid:
                return f
        raise KeyError(fid)


@dataclass
class _WriteCtx:
    """Side effects planned while validating one write request; committed only if the
    whole request validates (batches are atomic)."""

    typecast: bool
    new_choices: dict[str, list[str]] = field(default_factory=dict)  # field id -> names
    new_links: dict[str, dict[str, tuple[str, Any]]] = field(default_factory=dict)  # tbl -> key -> (rec id, value)


@dataclass
class _Iterator:
    table_id: str
    ids: list[str]
    expires: float
    position: dict[str, int] = field(default_factory=dict)  # record id -> index in ids


@dataclass
class _ListOptions:
    fields: list[str] | None = None
    formula: str | None = None
    max_records: int | None = None
    page_size: int = MAX_PAGE_SIZE
    offset: str | None = None
    sort: list[tuple[str, str]] = field(default_factory=list)
    view: str | None = None
    cell_format: str = "json"
    time_zone: str | None = None
    user_locale: str | None = None
    by_id: bool = False
    comment_count: bool = False



class RecordsMixin:
    """Emulator methods: the base's tables and records and the record/schema endpoints."""

    # ---- the emulator's clock (test-controlled offset; see Emulator.advance_clock) ------

    def _now(self) -> dt.datetime:
        """"Now" for everything time-based in the base (createdTime, modified times, webhook
        expiry and payload retention): the real UTC time plus the test-controlled offset."""
        return dt.datetime.now(dt.timezone.utc) + self._clock_offset

    def _iso_now(self) -> str:
        return format_datetime(self._now())

    # ---- state inspection (deep copies) ----------------------------------------------

    @property
    def base_id(self) -> str:
        return self._base_id

    def records(self, table: str) -> list[dict]:
        """All records of a table (id or name), in listing order, rendered as the API does."""
        with self._lock:
            t = self._require_table(table)
            return [self._render(t, rec) for rec in t.records]

    def schema(self) -> dict:
        """``{"tables": [...]}`` exactly as GET /v0/meta/bases/{baseId}/tables returns it."""
        with self._lock:
            return {"tables": [self._table_meta(t) for t in self._tables]}

    def snapshot(self) -> dict:
        """The whole base in BASE.json format (loadable again)."""
        with self._lock:
            tables = []
            for t in self._tables:
                meta = self._table_meta(t)
                meta["views"] = copy.deepcopy(t.views)  # as loaded (visibleFieldIds kept)
                meta["records"] = [
                    {
                        "id": rec.id,
                        "createdTime": rec.created,
                        "fields": {t.field_by_id(fid)["name"]: copy.deepcopy(v) for fid, v in rec.fields.items()},
                    }
                    for rec in t.records
                ]
                tables.append(meta)
            return {"id": self._base_id, "name": self._base_name, "tables": tables}

    # ---- loading BASE.json -----------------------------------------------------------

    def _load(self, base: dict) -> None:
        self._base_id = base.get("id") or new_id("app")
        self._base_name = base.get("name", "Emulated base")
        self._tables: list[_Table] = []
        raw_tables = base.get("tables") or []
        for raw in raw_tables:
            fields = [dict(f) for f in raw.get("fields") or []]
            for f in fields:
                f.setdefault("id", new_id("fld"))
            if not fields:
                raise ValueError(f"table {raw.get('name')!r} has no fields")
            names = [f["name"] for f in fields]
            if len(set(names)) != len(names):
                raise ValueError(f"duplicate field names in table {raw.get('name')!r}")
            table = _Table(
                id=raw.get("id") or new_id("tbl"), name=raw["name"],
                primary_field_id=raw.get("primaryFieldId") or fields[0]["id"],
                fields=fields, views=[dict(v) for v in raw.get("views") or []],
                description=raw.get("description"),
            )
            if not table.views:
                table.views = [{"id": new_id("viw"), "name": "Grid view", "type": "grid"}]
            self._tables.append(table)
        if len({t.name for t in self._tables}) != len(self._tables):
            raise ValueError("duplicate table names")
        for t in self._tables:
            for f in t.fields:
                f["options"] = self._default_options(f)
                if f["options"] is None:
                    del f["options"]
        # Records: create the shells first so links between tables resolve, then validate
        # every cell through the same path as API writes (lenient: typecast, unknown select
        # choices are added, computed values are ignored because the emulator computes them).
        shells: list[tuple[_Table, _Record, dict]] = []
        for raw, t in zip(raw_tables, self._tables):
            for raw_rec in raw.get("records") or []:
                rec = _Record(
                    id=raw_rec.get("id") or new_id("rec"),
                    created=self._normalise_created(raw_rec.get("createdTime")),
                )
                if rec.id in t.index:
                    raise ValueError(f"duplicate record id {rec.id}")
                t.records.append(rec)
                t.index[rec.id] = rec
                t.auto_seq += 1
                rec.auto = t.auto_seq
                shells.append((t, rec, raw_rec.get("fields") or {}))
        for t, rec, raw_fields in shells:
            ctx = _WriteCtx(typecast=True)
            cells = {}
            for key, value in raw_fields.items():
                f = t.field(key)
                if f is None:
                    raise ValueError(f"record {rec.id}: unknown field {key!r} in table {t.name!r}")
                if f["type"] in COMPUTED_TYPES:
                    continue
                try:
                    if f["type"] == "email" and isinstance(value, str):
                        # Snapshot cells are data already in the base (typed or imported in the UI,
                        # e.g. with stray spaces): they are kept as they are, not re-validated.
                        cells[f["id"]] = value or None
                    else:
                        cells[f["id"]] = self._coerce(t, f, value, ctx)
                except ApiError as exc:
                    raise ValueError(f"record {rec.id}: {exc.message}") from exc
            self._commit_ctx(ctx, rec.created)
            rec.fields = {fid: v for fid, v in cells.items() if v is not None}
            rec.modified = {fid: rec.created for fid in rec.fields}

    def _normalise_created(self, value: str | None) -> str:
        if not value:
            return self._iso_now()
        m = DATETIME_RE.fullmatch(value)
        if not m:
            raise ValueError(f"bad createdTime {value!r}")
        return _parse_datetime(value)

    def _default_options(self, f: dict) -> dict | None:
        """Fill the option defaults pyairtable's schema models need (lenient on input)."""
        type_, opts = f.get("type"), dict(f.get("options") or {})
        date_fmt = {"name": "iso", "format": "YYYY-MM-DD"}
        time_fmt = {"name": "24hour", "format": "HH:mm"}
        if type_ in ("number", "percent"):
            opts.setdefault("precision", 0)
        elif type_ == "currency":
            opts.setdefault("precision", 2)
            opts.setdefault("symbol", "$")
        elif type_ == "checkbox":
            opts.setdefault("color", "greenBright")
            opts.setdefault("icon", "check")
        elif type_ == "rating":
            opts.setdefault("color", "yellowBright")
            opts.setdefault("icon", "star")
            opts.setdefault("max", 5)
        elif type_ == "duration":
            opts.setdefault("durationFormat", "h:mm")
        elif type_ == "date":
            opts.setdefault("dateFormat", date_fmt)
        elif type_ == "dateTime":
            opts.setdefault("dateFormat", date_fmt)
            opts.setdefault("timeFormat", time_fmt)
            opts.setdefault("timeZone", "utc")
        elif type_ in ("singleSelect", "multipleSelects", "externalSyncSource"):
            choices = []
            for i, c in enumerate(opts.get("choices") or []):
                c = {"name": c} if isinstance(c, str) else dict(c)
                c.setdefault("id", new_id("sel"))
                c.setdefault("color", CHOICE_COLORS[i % len(CHOICE_COLORS)])
                choices.append(c)
            opts["choices"] = choices
        elif type_ == "multipleRecordLinks":
            linked = self._table(opts.get("linkedTableId", ""))
            if linked is None:
                raise ValueError(f"field {f['name']!r}: unknown linkedTableId {opts.get('linkedTableId')!r}")
            opts["linkedTableId"] = linked.id
            opts.setdefault("isReversed", False)
            opts.setdefault("prefersSingleRecordLink", False)
        elif type_ in ("formula", "rollup"):
            if type_ == "formula":
                opts.setdefault("formula", "")
            opts.setdefault("isValid", True)
            opts.setdefault("referencedFieldIds", [])
        elif type_ in ("count", "multipleLookupValues", "lookup"):
            opts.setdefault("isValid", True)
        elif type_ == "lastModifiedTime":
            opts.setdefault("isValid", True)
            opts.setdefault("referencedFieldIds", [])
            opts.setdefault("result", {"type": "dateTime", "options": {
                "dateFormat": date_fmt, "timeFormat": time_fmt, "timeZone": "utc"}})
        elif type_ == "createdTime":
            opts.setdefault("result", {"type": "dateTime", "options": {
                "dateFormat": date_fmt, "timeFormat": time_fmt, "timeZone": "utc"}})
        elif type_ == "multipleAttachments":
            opts.setdefault("isReversed", False)
        elif not opts:
            return None
        return opts

    # ---- lookups ---------------------------------------------------------------------

    def _table(self, key: str) -> _Table | None:
        for t in self._tables:
            if t.id == key:
                return t
        for t in self._tables:
            if t.name == key:
                return t
        return None

    def _require_table(self, key: str) -> _Table:
        t = self._table(key)
        if t is None:
            raise KeyError(f"unknown table {key!r}")
        return t

    def _table_meta(self, t: _Table, visible_field_ids: bool = False) -> dict:
        meta: dict[str, Any] = {"id": t.id, "name": t.name, "primaryFieldId": t.primary_field_id}
        if t.description is not None:
            meta["description"] = t.description
        meta["fields"] = copy.deepcopy(t.fields)
        views = copy.deepcopy(t.views)
        # get-base-schema docs: include=visibleFieldIds adds "visibleFieldIds" to views "of
        # type grid only"; the view model says it is present "when requested with include".
        for v in views:
            if visible_field_ids and v.get("type") == "grid":
                v.setdefault("visibleFieldIds", [f["id"] for f in t.fields])
            else:
                v.pop("visibleFieldIds", None)
        meta["views"] = views
        return meta

    # ==================================================================================
    # Operations (each runs entirely under the state lock: requests are atomic)
    # ==================================================================================

    def _op_list_bases(self, route, query, body) -> _Response:
        _only_params(query, {"offset"})
        return _Response(200, {"bases": [{"id": self._base_id, "name": self._base_name, "permissionLevel": "create"}]})

    def _op_whoami(self, route, query, body) -> _Response:
        _only_params(query, set())
        # whoami docs: {id, scopes?} -- the token's scopes, the ones every endpoint checks.
        return _Response(200, {"id": "usrEmulatorUser01", "scopes": list(self.scopes)})

    def _op_base_schema(self, route, query, body) -> _Response:
        if route.base_key != self._base_id:
            raise model_not_found()
        _only_params(query, {"include", "include[]"})
        include = query.get("include", []) + query.get("include[]", [])
        if any(v != "visibleFieldIds" for v in include):
            raise invalid_request()
        with self._lock:
            return _Response(200, {"tables": [self._table_meta(t, bool(include)) for t in self._tables]})

    # ---- reads -----------------------------------------------------------------------

    def _op_get(self, route, query, body) -> _Response:
        table = self._table_for(route)
        _only_params(query, {"cellFormat", "timeZone", "userLocale", "returnFieldsByFieldId"})
        opts = _ListOptions(
            cell_format=_scalar(query, "cellFormat") or "json",
            time_zone=_scalar(query, "timeZone"), user_locale=_scalar(query, "userLocale"),
            by_id=_bool_param(_scalar(query, "returnFieldsByFieldId")),
        )
        _check_cell_format(opts)
        with self._lock:
            rec = table.index.get(route.record_id or "")
            if rec is None:
                raise record_not_found()
            return _Response(200, self._render(table, rec, by_id=opts.by_id, cell_format=opts.cell_format))

    def _op_list(self, route, query, body) -> _Response:
        table = self._table_for(route)
        return self._list(table, _list_options_from_query(query))

    def _op_list_post(self, route, query, body) -> _Response:
        table = self._table_for(route)
        return self._list(table, _list_options_from_body(body, query))

    def _list(self, table: _Table, opts: _ListOptions) -> _Response:
        _check_cell_format(opts)
        with self._lock:
            only = self._resolve_field_list(table, opts.fields) if opts.fields is not None else None
            now = time.monotonic()
            self._iterators = {k: v for k, v in self._iterators.items() if v.expires > now}
            if opts.offset:
                ids, start = self._resume(table, opts.offset)
                itr_id = opts.offset.split("/", 1)[0]
            else:
                ids = self._query_ids(table, opts)
                start, itr_id = 0, new_id("itr")
            page_ids = ids[start:start + opts.page_size]
            records = []
            for rid in page_ids:
                rec = table.index.get(rid)
                if rec is None:  # deleted while iterating
                    continue
                out = self._render(table, rec, by_id=opts.by_id, only=only, cell_format=opts.cell_format)
                if opts.comment_count:
                    out["commentCount"] = 0
                records.append(out)
            result: dict[str, Any] = {"records": records}
            end = start + len(page_ids)
            if end < len(ids):
                # Opaque offset; Airtable's look like "itrXXXXXXXXXXXXXX/recXXXXXXXXXXXXXX".
                itr = self._iterators.get(itr_id)
                if itr is None:
                    itr = self._iterators[itr_id] = _Iterator(table.id, ids, 0.0, {r: i for i, r in enumerate(ids)})
                itr.expires = now + ITERATOR_TTL_S
                result["offset"] = f"{itr_id}/{ids[end]}"
            return _Response(200, result)

    def _resume(self, table: _Table, offset: str) -> tuple[list[str], int]:
        itr_id, _, rec_id = offset.partition("/")
        itr = self._iterators.get(itr_id)
        if itr is None or itr.table_id != table.id or rec_id not in itr.position:
            # list-records docs ("Iteration timeout (422)"): the documented body is exactly
            # {"error": {"type": "LIST_RECORDS_ITERATOR_NOT_AVAILABLE"}} -- no message.
            raise ApiError(422, "LIST_RECORDS_ITERATOR_NOT_AVAILABLE")
        itr.expires = time.monotonic() + ITERATOR_TTL_S
        return itr.ids, itr.position[rec_id]

    def _query_ids(self, table: _Table, opts: _ListOptions) -> list[str]:
        if opts.view is not None and not any(opts.view in (v["id"], v["name"]) for v in table.views):
            # View filtering/ordering is NOT emulated (views only exist in metadata), but an
            # unknown view is rejected.  Type/message UNCONFIRMED.
            raise ApiError(422, "VIEW_NAME_NOT_FOUND", f'Could not find view "{opts.view}"')
        records = list(table.records)
        if opts.formula:
            ast = self._parse_formula(table, opts.formula)
            records = [r for r in records if self._formula_truthy(table, r, ast)]
        for field_key, direction in reversed(opts.sort):
            f = table.field(field_key)
            if f is None:
                raise unknown_field(field_key)
            if direction not in ("asc", "desc"):
                raise invalid_request()
            records.sort(key=lambda r, f=f: _sort_key(self._cell(table, r, f)), reverse=(direction == "desc"))
        if opts.max_records is not None:
            records = records[:opts.max_records]
        return [r.id for r in records]

    @staticmethod
    def _resolve_field_list(table: _Table, keys: list[str]) -> set[str]:
        out = set()
        for key in keys:
            f = table.field(key)
            if f is None:
                raise unknown_field(key)
            out.add(f["id"])
        return out

    # ---- rendering -------------------------------------------------------------------

    def _cell(self, table: _Table, rec: _Record, f: dict, depth: int = 0) -> Any:
        """The JSON cell value (None when empty), including computed fields."""
        type_ = f["type"]
        if type_ not in COMPUTED_TYPES:
            return rec.fields.get(f["id"])
        if depth > 8:
            return None
        opts = f.get("options") or {}
        if type_ == "createdTime":
            return rec.created
        if type_ == "lastModifiedTime":
            refs = opts.get("referencedFieldIds") or list(rec.modified)
            times = [rec.modified[fid] for fid in refs if fid in rec.modified]
            return max(times) if times else None
        if type_ == "autoNumber":
            return rec.auto
        if type_ == "formula":
            try:
                ast = _FormulaParser(opts.get("formula", ""), table).parse()
                value = self._eval(table, rec, ast, depth + 1)
            except (FormulaError, _EvalError, ZeroDivisionError, TypeError, ValueError, RecursionError):
                return None
            if isinstance(value, bool):
                value = int(value)
            return None if value in (None, "") else value
        link_field = table.field(opts.get("recordLinkFieldId", "")) if opts.get("recordLinkFieldId") else None
        if type_ == "count" and link_field:
            return len(rec.fields.get(link_field["id"]) or [])
        if type_ in ("multipleLookupValues", "lookup") and link_field:
            linked = self._require_table(link_field["options"]["linkedTableId"])
            target = linked.field(opts.get("fieldIdInLinkedTable", ""))
            if target is None:
                return None
            out: list = []
            for rid in rec.fields.get(link_field["id"]) or []:
                other = linked.index.get(rid)
                value = self._cell(linked, other, target, depth + 1) if other else None
                if isinstance(value, list):
                    out.extend(value)
                elif value not in (None, "", False):
                    out.append(value)
            return out or None
        # rollup, createdBy, lastModifiedBy, button, aiText, ...: not evaluated (absent).
        return None

    def _render(self, table: _Table, rec: _Record, *, by_id: bool = False,
                only: set[str] | None = None, cell_format: str = "json") -> dict:
        """A record as the API returns it: empty cells ("" / [] / null / false) are omitted."""
        fields: dict[str, Any] = {}
        for f in table.fields:
            if only is not None and f["id"] not in only:
                continue
            value = self._cell(table, rec, f)
            if value is None or value == "" or value == [] or value is False:
                continue
            if cell_format == "string":
                value = _string_cell(value)
            fields[f["id"] if by_id else f["name"]] = copy.deepcopy(value)
        return {"id": rec.id, "createdTime": rec.created, "fields": fields}

    # ---- writes ----------------------------------------------------------------------

    def _op_create(self, route, query, body) -> _Response:
        table = self._table_for(route)
        _only_params(query, set())
        single = "fields" in body
        allowed = {"fields", "typecast", "returnFieldsByFieldId"} if single else {"records", "typecast", "returnFieldsByFieldId"}
        _only_keys(body, allowed)
        typecast, by_id = _write_flags(body)
        if single:
            items = [{"fields": body["fields"]}]
        else:
            items = body.get("records")
            if not isinstance(items, list) or not items:
                raise ApiError(422, "INVALID_RECORDS", MSG_RECORDS_CREATE)
            if len(items) > MAX_RECORDS_PER_REQUEST:
                # Text relayed from a real response (Zapier community).  UNCONFIRMED.
                raise ApiError(422, "INVALID_RECORDS",
                               f"A maximum of 10 records can be created per request but you have provided {len(items)}.")
        with self._lock:
            ctx = _WriteCtx(typecast)
            planned = []
            for item in items:
                if not isinstance(item, dict) or set(item) != {"fields"} or not isinstance(item["fields"], dict):
                    raise ApiError(422, "INVALID_RECORDS", MSG_RECORDS_CREATE)
                planned.append(self._validate_cells(table, item["fields"], ctx))
            now = self._iso_now()
            self._commit_ctx(ctx, now)
            created = [self._insert(table, cells, now) for cells in planned]
            out = [self._render(table, rec, by_id=by_id) for rec in created]
        return _Response(200, out[0] if single else {"records": out})

    def _op_update_many(self, route, query, body) -> _Response:
        return self._update_many(route, query, body, replace=False)

    def _op_replace_many(self, route, query, body) -> _Response:
        return self._update_many(route, query, body, replace=True)

    def _update_many(self, route, query, body: dict, *, replace: bool) -> _Response:
        table = self._table_for(route)
        _only_params(query, set())
        _only_keys(body, {"records", "typecast", "returnFieldsByFieldId", "performUpsert"})
        typecast, by_id = _write_flags(body)
        items = body.get("records")
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_RECORDS_PER_REQUEST:
            raise ApiError(422, "INVALID_RECORDS", MSG_RECORDS_UPDATE)
        upsert = "performUpsert" in body
        with self._lock:
            merge_ids = self._merge_fields(table, body["performUpsert"]) if upsert else []
            ctx = _WriteCtx(typecast)
            plan: list[tuple[_Record | None, dict]] = []  # (existing record or None to create, cells)
            seen_keys: dict[tuple, int] = {}
            for i, item in enumerate(items):
                self._check_update_item(item, upsert)
                cells = self._validate_cells(table, item["fields"], ctx)
                if "id" in item:
                    rec = table.index.get(item["id"])
                    if rec is None:
                        # Real 422 body: {"type": "ROW_DOES_NOT_EXIST", "message": "Record ID
                        # rec... does not exist in this table"} (domdomegg/airtable-mcp-server#28).
                        raise ApiError(422, "ROW_DOES_NOT_EXIST", f"Record ID {item['id']} does not exist in this table")
                    plan.append((rec, cells))
                    continue
                key = self._merge_key(table, item["fields"], cells, merge_ids, i)
                if key in seen_keys:
                    # STRICT (undocumented): two records of one request with the same merge key.
                    raise ApiError(422, "INVALID_RECORDS",
                                   f"Records at index {seen_keys[key]} and {i} have the same values for fieldsToMergeOn")
                seen_keys[key] = i
                matches = table.merge_matches(merge_ids, key)
                if len(matches) > 1:
                    # Docs: "If multiple matches are found, the request will fail."  The error
                    # type/message are UNDOCUMENTED; this one is the emulator's choice.
                    raise ApiError(422, "INVALID_RECORDS",
                                   f"Cannot upsert the record at index {i}: {len(matches)} existing records match fieldsToMergeOn")
                plan.append((matches[0] if matches else None, cells))
            now = self._iso_now()
            self._commit_ctx(ctx, now)
            created, updated, out_recs = [], [], []
            for rec, cells in plan:
                if rec is None:
                    rec = self._insert(table, cells, now)
                    created.append(rec.id)
                else:
                    self._apply(table, rec, cells, replace, now)
                    if rec.id not in updated:
                        updated.append(rec.id)
                out_recs.append(rec)
            result: dict[str, Any] = {"records": [self._render(table, r, by_id=by_id) for r in out_recs]}
            if upsert:
                result["createdRecords"] = created
                result["updatedRecords"] = updated
        return _Response(200, result)

    @staticmethod
    def _check_update_item(item: Any, upsert: bool) -> None:
        ok = isinstance(item, dict) and isinstance(item.get("fields"), dict)
        if ok and upsert:
            ok = set(item) <= {"id", "fields"}
        elif ok:
            ok = set(item) == {"id", "fields"}
        if ok and "id" in item:
            ok = isinstance(item["id"], str)
        if not ok:
            raise ApiError(422, "INVALID_RECORDS", MSG_RECORDS_UPDATE)

    def _merge_fields(self, table: _Table, upsert: Any) -> list[str]:
        """performUpsert.fieldsToMergeOn -> merge field ids.  update-multiple-records docs:
        "An array with at least one and at most three field names or IDs" -- names and ids
        mixed; an unknown one is UNKNOWN_FIELD_NAME, as in ``fields``."""
        if not isinstance(upsert, dict) or set(upsert) != {"fieldsToMergeOn"}:
            raise invalid_request()
        names = upsert["fieldsToMergeOn"]
        if (not isinstance(names, list) or not 1 <= len(names) <= MAX_MERGE_FIELDS
                or not all(isinstance(n, str) for n in names)):
            raise invalid_request()
        out = []
        for name in names:
            f = table.field(name)
            if f is None:
                raise unknown_field(name)
            if f["type"] not in MERGE_TYPES:
                # Docs: merge fields "cannot be computed fields" and must be one of the listed
                # types.  Error text is the emulator's choice (UNDOCUMENTED).
                raise invalid_request(f'Invalid request: field "{f["name"]}" cannot be used in fieldsToMergeOn')
            out.append(f["id"])
        return out

    @staticmethod
    def _merge_key(table: _Table, raw_fields: dict, cells: dict, merge_ids: list[str], index: int) -> tuple:
        present = {table.field(k)["id"] for k in raw_fields}  # keys already validated
        for fid in merge_ids:
            if fid not in present:
                # pyairtable: "The API will reject a request where a record is missing any of
                # fieldsToMergeOn".  Type/message UNDOCUMENTED (emulator's choice).
                raise ApiError(422, "INVALID_RECORDS",
                               f'Record at index {index} is missing the fieldsToMergeOn field "{table.field_by_id(fid)["name"]}"')
        return tuple(_freeze(cells.get(fid)) for fid in merge_ids)

    def _op_update_one(self, route, query, body) -> _Response:
        return self._update_one(route, query, body, replace=False)

    def _op_replace_one(self, route, query, body) -> _Response:
        return self._update_one(route, query, body, replace=True)

    def _update_one(self, route, query, body: dict, *, replace: bool) -> _Response:
        table = self._table_for(route)
        _only_params(query, set())
        _only_keys(body, {"fields", "typecast", "returnFieldsByFieldId"})
        typecast, by_id = _write_flags(body)
        if not isinstance(body.get("fields"), dict):
            raise invalid_request()
        with self._lock:
            rec = table.index.get(route.record_id or "")
            if rec is None:
                raise record_not_found()
            ctx = _WriteCtx(typecast)
            cells = self._validate_cells(table, body["fields"], ctx)
            now = self._iso_now()
            self._commit_ctx(ctx, now)
            self._apply(table, rec, cells, replace, now)
            return _Response(200, self._render(table, rec, by_id=by_id))

    def _op_delete_one(self, route, query, body) -> _Response:
        table = self._table_for(route)
        _only_params(query, set())
        with self._lock:
            rec = table.index.get(route.record_id or "")
            if rec is None:
                raise record_not_found()
            self._remove(table, [rec.id])
            return _Response(200, {"id": rec.id, "deleted": True})

    def _op_delete_many(self, route, query, body) -> _Response:
        table = self._table_for(route)
        _only_params(query, {"records[]"})
        ids = query.get("records[]", [])
        if not 1 <= len(ids) <= MAX_RECORDS_PER_REQUEST:
            raise ApiError(422, "INVALID_RECORDS", MSG_RECORDS_DELETE)
        with self._lock:
            if any(rid not in table.index for rid in ids):
                # STRICT (undocumented for batches): a missing id fails the whole request
                # like the single-record DELETE does.
                raise record_not_found()
            unique = list(dict.fromkeys(ids))
            self._remove(table, unique)
            return _Response(200, {"records": [{"id": rid, "deleted": True} for rid in unique]})

    # ---- mutation helpers (called with the lock held, after validation) ---------------

    def _insert(self, table: _Table, cells: dict, now: str) -> _Record:
        rec = _Record(id=self._fresh_record_id(), created=now)
        table.auto_seq += 1
        rec.auto = table.auto_seq
        table.records.append(rec)
        table.index[rec.id] = rec
        self._txn_created(table, rec)  # webhooks: a new record, no "before" state
        self._apply(table, rec, cells, False, now)
        return rec

    def _fresh_record_id(self) -> str:
        while True:
            rid = new_id("rec")
            if all(rid not in t.index for t in self._tables):
                return rid

    def _apply(self, table: _Table, rec: _Record, cells: dict, replace: bool, now: str) -> None:
        """PATCH merges the given cells; PUT (replace) clears every cell not given."""
        self._txn_touch(table, rec)  # webhooks: its state before this transaction changes it
        new = {} if replace else dict(rec.fields)
        for fid, value in cells.items():
            if value is None:
                new.pop(fid, None)
            else:
                new[fid] = value
        for fid in set(rec.fields) | set(new):
            if rec.fields.get(fid) != new.get(fid):
                rec.modified[fid] = now
                f = table.field_by_id(fid)
                if f["type"] == "multipleRecordLinks":
                    self._sync_inverse(table, rec, f, rec.fields.get(fid) or [], new.get(fid) or [], now)
                    table.relink(rec.id, fid, rec.fields.get(fid) or [], new.get(fid) or [])
        for ids, index in table.merge_indexes.items():
            old_key, new_key = _merge_key_of(rec, ids), tuple(_freeze(new.get(fid)) for fid in ids)
            if old_key != new_key or not any(r is rec for r in index.get(new_key, ())):
                index[old_key] = [r for r in index.get(old_key, ()) if r is not rec]
                index.setdefault(new_key, []).append(rec)
        rec.fields = new

    def _sync_inverse(self, table: _Table, rec: _Record, f: dict, old: list, new: list, now: str) -> None:
        """Keep the reciprocal link field (options.inverseLinkFieldId) in step, as Airtable does."""
        inverse_id = f["options"].get("inverseLinkFieldId")
        linked = self._require_table(f["options"]["linkedTableId"])
        if not inverse_id or linked.field(inverse_id) is None:
            return
        for rid in set(old) ^ set(new):
            other = linked.index.get(rid)
            if other is None:
                continue
            self._txn_touch(linked, other)
            old_links = other.fields.get(inverse_id) or []
            links = list(old_links)
            if rid in new and rec.id not in links:
                links.append(rec.id)
            elif rid not in new and rec.id in links:
                links.remove(rec.id)
            if links:
                other.fields[inverse_id] = links
            else:
                other.fields.pop(inverse_id, None)
            other.modified[inverse_id] = now
            linked.relink(other.id, inverse_id, old_links, links)

    def _remove(self, table: _Table, ids: list[str]) -> None:
        gone = set(ids)
        for rid in ids:
            self._txn_touch(table, table.index[rid], removing=True)
        table.merge_indexes.clear()
        table.records = [r for r in table.records if r.id not in gone]
        for rid in gone:
            table.index.pop(rid, None)
        now = self._iso_now()
        # Links to deleted records disappear from every link field pointing at this table.
        for t in self._tables:
            for f in t.fields:
                if f["type"] != "multipleRecordLinks" or f["options"]["linkedTableId"] != table.id:
                    continue
                for r in t.records:
                    links = r.fields.get(f["id"])
                    if links and gone.intersection(links):
                        self._txn_touch(t, r)
                        kept = [x for x in links if x not in gone]
                        if kept:
                            r.fields[f["id"]] = kept
                        else:
                            del r.fields[f["id"]]
                        r.modified[f["id"]] = now
        for t in self._tables:
            t.link_indexes.clear()  # rebuilt on next use (this method scans the links anyway)

    def _commit_ctx(self, ctx: _WriteCtx, now: str) -> None:
        """Create the select choices and linked records that typecast asked for."""
        for t in self._tables:
            for f in t.fields:
                for name in ctx.new_choices.get(f["id"], []):
                    choices = f["options"]["choices"]
                    choices.append({"id": new_id("sel"), "name": name,
                                    "color": CHOICE_COLORS[len(choices) % len(CHOICE_COLORS)]})
        for table_id, created in ctx.new_links.items():
            t = self._require_table(table_id)
            for rid, value in created.values():
                rec = _Record(id=rid, created=now)
                t.auto_seq += 1
                rec.auto = t.auto_seq
                rec.fields = {t.primary_field_id: value}
                rec.modified = {t.primary_field_id: now}
                t.records.append(rec)
                t.index[rid] = rec
                t.merge_indexes.clear()
                t.relink(rid, t.primary_field_id, [], value if isinstance(value, list) else [])
                self._txn_created(t, rec)

    # ---- cell validation -------------------------------------------------------------

    def _validate_cells(self, table: _Table, fields: dict, ctx: _WriteCtx) -> dict[str, Any]:
        """Validate a ``fields`` object into normalised cells by id.  Keys are field names or
        field ids, mixed freely (create-records: cell values "keyed by either field name or
        field id"; update-multiple-records likewise).  A key that is neither (an id of a
        deleted field or of another table's field included) is UNKNOWN_FIELD_NAME naming the
        key as given (see common.unknown_field)."""
        out: dict[str, Any] = {}
        for key, value in fields.items():
            f = table.field(key)
            if f is None:
                raise unknown_field(key)
            if f["type"] in COMPUTED_TYPES:
                raise computed_value(f)
            if f["id"] in out:
                # STRICT (undocumented): one field given twice, by its name and by its id, is
                # refused rather than one value silently winning.
                raise invalid_request(f'Invalid request: field "{f["name"]}" is given more than once')
            out[f["id"]] = self._coerce(table, f, value, ctx)
        return out

    def _coerce(self, table: _Table, f: dict, value: Any, ctx: _WriteCtx) -> Any:
        """One cell value -> its normalised stored form (None = empty).  null clears any
        writable field.  Shapes per type: field-model docs."""
        if value is None:
            return None
        type_ = f["type"]
        if type_ in TEXT_TYPES:
            return _coerce_text(f, value, ctx.typecast)
        if type_ in NUMBER_TYPES:
            return _coerce_number(f, value, ctx.typecast)
        if type_ == "rating":
            return _coerce_rating(f, value, ctx.typecast)
        if type_ == "checkbox":
            return _coerce_checkbox(f, value, ctx.typecast)
        if type_ == "date":
            return _coerce_date(f, value, ctx.typecast)
        if type_ == "dateTime":
            return _coerce_datetime(f, value, ctx.typecast)
        if type_ == "singleSelect":
            return self._coerce_select(f, value, ctx, multiple=False)
        if type_ == "multipleSelects":
            return self._coerce_select(f, value, ctx, multiple=True)
        if type_ == "multipleRecordLinks":
            return self._coerce_links(f, value, ctx)
        if type_ == "multipleAttachments":
            return _coerce_attachments(f, value)
        if type_ == "singleCollaborator":
            return _coerce_collaborator(f, value)
        if type_ == "multipleCollaborators":
            if not isinstance(value, list):
                raise bad_value(f)
            return [_coerce_collaborator(f, v) for v in value] or None
        if type_ == "barcode":
            if not isinstance(value, dict) or not isinstance(value.get("text"), str):
                raise bad_value(f)
            return dict(value)
        return copy.deepcopy(value)  # unknown/new field types: accepted as given (lenient)

    def _coerce_select(self, f: dict, value: Any, ctx: _WriteCtx, *, multiple: bool) -> Any:
        if multiple:
            if ctx.typecast and isinstance(value, str):
                value = [value]
            if not isinstance(value, list):
                raise bad_value(f)
            names = value
        else:
            names = [value]
        out: list[str] = []
        for name in names:
            if ctx.typecast and _is_num(name):
                name = _to_str(name)
            if not isinstance(name, str):
                raise bad_value(f)
            if name == "" and ctx.typecast:
                continue
            existing = [c["name"] for c in f["options"]["choices"]] + ctx.new_choices.get(f["id"], [])
            if name not in existing:
                if not ctx.typecast:
                    # Verbatim real body: {'type': 'INVALID_MULTIPLE_CHOICE_OPTIONS', 'message':
                    # 'Insufficient permissions to create new select option ""X""'}
                    # (gtalarico/pyairtable#137, Airtable/airtable.js#138).  "" is not a
                    # choice either (STRICT (undocumented)).
                    raise ApiError(422, "INVALID_MULTIPLE_CHOICE_OPTIONS",
                                   f'Insufficient permissions to create new select option ""{name}""')
                ctx.new_choices.setdefault(f["id"], []).append(name)
            if name not in out:  # STRICT (undocumented): duplicates are dropped, order kept
                out.append(name)
        if multiple:
            return out or None
        return out[0] if out else None

    def _coerce_links(self, f: dict, value: Any, ctx: _WriteCtx) -> list[str] | None:
        linked = self._require_table(f["options"]["linkedTableId"])
        if ctx.typecast and isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise bad_value(f)
        out: list[str] = []
        for item in value:
            if not isinstance(item, str):
                raise bad_value(f)
            if RECORD_ID_RE.fullmatch(item):
                if item not in linked.index:
                    # UNCONFIRMED: the emulator answers a link to a missing record like an
                    # update of one (ROW_DOES_NOT_EXIST).
                    raise ApiError(422, "ROW_DOES_NOT_EXIST", f"Record ID {item} does not exist in this table")
                rid = item
            elif ctx.typecast:
                rid = self._link_by_primary(linked, item, ctx)
            else:
                # UNCONFIRMED text; the type matches other invalid cell values.
                raise ApiError(422, "INVALID_VALUE_FOR_COLUMN", f'Value "{item}" is not a valid record ID.')
            if rid not in out:
                out.append(rid)
        return out or None

    def _link_by_primary(self, linked: _Table, text: str, ctx: _WriteCtx) -> str:
        """typecast: a string links the record whose primary field shows that text, or a new
        record created with it (create-records docs on typecast; behaviour best-effort)."""
        prim = linked.field_by_id(linked.primary_field_id)
        for rec in linked.records:
            if _to_str(self._cell(linked, rec, prim)) == text:
                return rec.id
        pending = ctx.new_links.setdefault(linked.id, {})
        if text not in pending:
            value = self._coerce(linked, prim, text, ctx) if prim["type"] not in COMPUTED_TYPES else None
            pending[text] = (self._fresh_record_id(), value)
        return pending[text][0]


# --------------------------------------------------------------------------------------
# Cell coercion helpers (module level: no state needed)
# --------------------------------------------------------------------------------------


def _coerce_text(f: dict, value: Any, typecast: bool) -> str | None:
    if typecast and (_is_num(value) or isinstance(value, bool)):
        value = _to_str(value) if not isinstance(value, bool) else ("true" if value else "false")
    if not isinstance(value, str):
        raise bad_value(f)
    if len(value) > MAX_TEXT_LENGTH:
        raise bad_value(f)
    if f["type"] == "email" and value and not EMAIL_RE.fullmatch(value):
        # Airtable describes the cell as "A valid email address" (scripting cell values docs);
        # whether the Web API rejects malformed ones is not documented -> STRICT: rejected.
        raise bad_value(f)
    return value or None


def _coerce_number(f: dict, value: Any, typecast: bool) -> float | int:
    if _is_num(value):
        if isinstance(value, float) and not math.isfinite(value):
            raise bad_value(f)
        return clean_number(value)
    if typecast and isinstance(value, str) and NUMERIC_RE.fullmatch(value.strip().replace(",", "")):
        return clean_number(float(value.strip().replace(",", "")))
    # Non-numeric strings are rejected even with typecast ("best-effort" conversion, docs);
    # STRICT (undocumented) -- Airtable might store an empty cell instead.
    raise bad_value(f)


def _coerce_rating(f: dict, value: Any, typecast: bool) -> int:
    if typecast and isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if not _is_num(value) or value != int(value):
        raise bad_value(f)
    value = int(value)
    if not 1 <= value <= int(f["options"].get("max", 5)):
        raise bad_value(f)  # STRICT: outside 1..max
    return value


def _coerce_checkbox(f: dict, value: Any, typecast: bool) -> bool | None:
    if typecast and isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("true", "yes", "1", "checked", "x", "on"):
            value = True
        elif lowered in ("false", "no", "0", "", "off"):
            value = False
    if not isinstance(value, bool):
        raise bad_value(f)
    return True if value else None  # false is stored/returned as absent (field-model docs)


def _coerce_date(f: dict, value: Any, typecast: bool) -> str | None:
    if not isinstance(value, str):
        raise bad_value(f)
    if typecast:
        m = DATETIME_RE.fullmatch(value.strip())
        if m:
            value = m.group(1)
        elif value.strip() == "":
            return None
    # A full timestamp is rejected by a date field (Make community report:
    # '[422] Field "..." cannot accept the provided value').
    if not DATE_RE.fullmatch(value):
        raise bad_value(f)
    try:
        dt.date.fromisoformat(value)
    except ValueError:
        raise bad_value(f) from None
    return value


def _parse_datetime(value: str, tz: dt.tzinfo | None = None) -> str:
    """ISO 8601 date-time -> Airtable's UTC form.  Without an offset the time is read in ``tz``
    (the field's time zone; UTC when None)."""
    m = DATETIME_RE.fullmatch(value)
    if not m:
        raise ValueError(value)
    date_part, time_part, _frac, offset = m.groups()
    if len(time_part) == 5:
        time_part += ":00"
    parsed = dt.datetime.fromisoformat(f"{date_part}T{time_part}")
    if offset is None:
        parsed = parsed.replace(tzinfo=tz or dt.timezone.utc)
    else:
        offset = "+00:00" if offset in ("Z", "z") else (offset if ":" in offset else offset[:3] + ":" + offset[3:])
        parsed = parsed.replace(tzinfo=dt.datetime.fromisoformat(f"{date_part}T{time_part}{offset}").tzinfo)
    return format_datetime(parsed)  # fractional seconds are dropped: Airtable keeps whole seconds


def _field_zone(f: dict) -> dt.tzinfo | None:
    """The zone ambiguous dateTime inputs are read in: the field's ``timeZone`` unless it is
    "utc" or "client" (field-model docs, dateTime).  An unknown zone name reads as UTC."""
    name = (f.get("options") or {}).get("timeZone")
    if not name or name in ("utc", "client"):
        return None
    try:
        from zoneinfo import ZoneInfo

        return ZoneInfo(name)
    except Exception:  # no tz database, or a name it does not know
        return None


def _coerce_datetime(f: dict, value: Any, typecast: bool) -> str | None:
    """ISO 8601 date-time.  Field-model docs (dateTime): "ambiguous string inputs like
    "2020-09-05T07:00:00" and "2020-09-08" will be interpreted according to the timeZone of
    the field instead of utc" (for a field whose zone is not utc/client), "and nonambiguous
    string inputs with zone offset like "2020-09-05T07:00:00.000Z" and
    "2020-09-08T00:00:00-07:00" will be interpreted correctly".  So a bare date and a time
    without an offset are accepted without typecast."""
    if not isinstance(value, str):
        raise bad_value(f)
    text = value.strip() if typecast else value
    if typecast and text == "":
        return None
    if DATE_RE.fullmatch(text):
        text += "T00:00:00"
    try:
        return _parse_datetime(text, _field_zone(f))
    except ValueError:
        raise bad_value(f) from None


def _coerce_attachments(f: dict, value: Any) -> list[dict] | None:
    if not isinstance(value, list):
        raise bad_value(f)
    out = []
    for item in value:
        if not isinstance(item, dict):
            raise bad_value(f)
        if isinstance(item.get("url"), str):
            name = item.get("filename") or urllib.parse.urlsplit(item["url"]).path.rsplit("/", 1)[-1] or "file"
            out.append({"id": item.get("id") or new_id("att"), "url": item["url"], "filename": name})
        elif isinstance(item.get("id"), str):
            out.append(dict(item))
        else:
            raise bad_value(f)
    return out or None


def _coerce_collaborator(f: dict, value: Any) -> dict:
    if not isinstance(value, dict) or not (isinstance(value.get("id"), str) or isinstance(value.get("email"), str)):
        raise bad_value(f)
    return {k: v for k, v in value.items() if k in ("id", "email", "name")}



def _string_cell(value: Any) -> str:
    """cellFormat=string rendering (approximate: no locale/time-zone formatting)."""
    if value is True:
        return "checked"
    if isinstance(value, list):
        return ", ".join(_display(v) for v in value)
    return _display(value)


def _freeze(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _merge_key_of(rec: "_Record", merge_ids: tuple[str, ...]) -> tuple:
    return tuple(_freeze(rec.fields.get(fid)) for fid in merge_ids)


def _sort_key(value: Any) -> tuple:
    if value is None or value == "" or value == []:
        return (0, 0, "")
    if isinstance(value, bool):
        return (1, int(value), "")
    if _is_num(value):
        return (1, value, "")
    if isinstance(value, list):
        value = ", ".join(_display(v) for v in value)
    return (2, 0, _display(value).lower())



_SORT_PARAM_RE = re.compile(r"sort\[(\d+)\]\[(field|direction)\]")
#: "method" is not a documented list parameter, but Airtable.js 0.12 sends it (query.ts /
#: table.ts: select({method: "get"}) passes it in the query string, method "post" in the
#: listRecords body) and Airtable accepts and ignores it.
_LIST_PARAMS = {"fields[]", "filterByFormula", "maxRecords", "pageSize", "offset", "view", "cellFormat",
                "timeZone", "userLocale", "returnFieldsByFieldId", "recordMetadata[]", "method"}


def _list_options_from_query(query: dict) -> _ListOptions:
    sorts: dict[int, dict[str, str]] = {}
    for key in query:
        m = _SORT_PARAM_RE.fullmatch(key)
        if m:
            sorts.setdefault(int(m.group(1)), {})[m.group(2)] = _scalar(query, key) or ""
        elif key not in _LIST_PARAMS:
            raise invalid_request()
    _scalar(query, "method")  # one value at most; ignored
    opts = _ListOptions(
        fields=query.get("fields[]"),
        formula=_scalar(query, "filterByFormula"),
        offset=_scalar(query, "offset"),
        view=_scalar(query, "view"),
        cell_format=_scalar(query, "cellFormat") or "json",
        time_zone=_scalar(query, "timeZone"),
        user_locale=_scalar(query, "userLocale"),
        by_id=_bool_param(_scalar(query, "returnFieldsByFieldId")),
    )
    if (v := _scalar(query, "pageSize")) is not None:
        opts.page_size = _int_param(v, 1, MAX_PAGE_SIZE)
    if (v := _scalar(query, "maxRecords")) is not None:
        opts.max_records = _int_param(v, 1, None)
    opts.comment_count = _record_metadata(query.get("recordMetadata[]", []))
    for index in sorted(sorts):
        item = sorts[index]
        if "field" not in item:
            raise invalid_request()
        opts.sort.append((item["field"], item.get("direction", "asc")))
    return opts


def _list_options_from_body(body: dict, query: dict) -> _ListOptions:
    """POST .../listRecords: the same options in a JSON body; pyairtable leaves timeZone and
    userLocale in the query string (api/params.py OPTIONS_NOT_SUPPORTED_VIA_POST)."""
    _only_params(query, {"timeZone", "userLocale"})
    _only_keys(body, {"fields", "filterByFormula", "maxRecords", "pageSize", "offset", "view", "cellFormat",
                      "timeZone", "userLocale", "returnFieldsByFieldId", "recordMetadata", "sort",
                      "method"})  # "method": sent by Airtable.js, ignored (see _LIST_PARAMS)
    fields = body.get("fields")
    if fields is not None and (not isinstance(fields, list) or not all(isinstance(x, str) for x in fields)):
        raise invalid_request()
    for key in ("filterByFormula", "offset", "view", "cellFormat", "timeZone", "userLocale", "method"):
        if key in body and not isinstance(body[key], str):
            raise invalid_request()
    opts = _ListOptions(
        fields=fields,
        formula=body.get("filterByFormula"),
        offset=body.get("offset"),
        view=body.get("view"),
        cell_format=body.get("cellFormat", "json"),
        time_zone=body.get("timeZone", _scalar(query, "timeZone")),
        user_locale=body.get("userLocale", _scalar(query, "userLocale")),
        by_id=_bool_param(body.get("returnFieldsByFieldId")),
    )
    if "pageSize" in body:
        opts.page_size = _int_param(body["pageSize"], 1, MAX_PAGE_SIZE)
    if "maxRecords" in body:
        opts.max_records = _int_param(body["maxRecords"], 1, None)
    opts.comment_count = _record_metadata(body.get("recordMetadata", []))
    sort = body.get("sort", [])
    if not isinstance(sort, list):
        raise invalid_request()
    for item in sort:
        if not isinstance(item, dict) or not isinstance(item.get("field"), str) or set(item) - {"field", "direction"}:
            raise invalid_request()
        opts.sort.append((item["field"], item.get("direction", "asc")))
    return opts


def _record_metadata(values: Any) -> bool:
    if not isinstance(values, list) or any(v != "commentCount" for v in values):
        raise invalid_request()
    return bool(values)


def _check_cell_format(opts: _ListOptions) -> None:
    if opts.cell_format not in ("json", "string"):
        raise invalid_request()
    if opts.cell_format == "string" and not (opts.time_zone and opts.user_locale):
        # list-records docs: cellFormat "string" requires timeZone and userLocale.
        raise invalid_request("Invalid request: cellFormat string requires timeZone and userLocale")


