"""A strict, local emulator of the Airtable Web API (standard library only).

The sync's tests point pyairtable at this emulator instead of api.airtable.com::

    from tests.airtable_emulator import Emulator
    with Emulator("tests/fixtures/BASE.json", rps=None) as emu:
        api = pyairtable.Api(emu.token, endpoint_url=emu.url)
        table = api.table(emu.base_id, "Contacts")
        table.batch_upsert([{"fields": {"Key": "k1", "Name": "Ada"}}], key_fields=["Key"])
        assert emu.count(kind="write") == 1
        emu.add_fault(status=503, kind="write", times=1)   # next write fails once

Standalone (serves until Ctrl-C, one log line per request on stderr)::

    python tests/airtable_emulator.py --port 8765 --base BASE.json [--rps 5] [--penalty-s 30]
                                      [--token T] [--retry-after]

What it serves (every request pyairtable 3.x sends for records and schema):
list records (GET and POST .../listRecords), get/create/update/replace/upsert/delete
records (single and batch), GET /v0/meta/bases, GET /v0/meta/bases/{baseId}/tables and
GET /v0/meta/whoami.  It is strict where Airtable is strict (auth, 10-record batches,
pageSize, unknown fields, computed fields, cell value types, select choices, record
links, missing records, atomic batches, the per-base rate limit with its penalty
window) and it adds fault injection (status codes, dropped connections, delays,
"apply then fail") and a request log for the tests.

Sources (Airtable Web API docs unless noted; each behaviour cites its own below):
  errors ........... https://airtable.com/developers/web/api/errors
  rate limits ...... https://airtable.com/developers/web/api/rate-limits
                     https://support.airtable.com/docs/managing-api-call-limits-in-airtable
  list records ..... https://airtable.com/developers/web/api/list-records
  create records ... https://airtable.com/developers/web/api/create-records
  update/upsert .... https://airtable.com/developers/web/api/update-multiple-records
  delete ........... https://airtable.com/developers/web/api/delete-multiple-records
  field model ...... https://airtable.com/developers/web/api/field-model
  base schema ...... https://airtable.com/developers/web/api/get-base-schema
  IDs .............. https://support.airtable.com/docs/finding-airtable-ids
Where the docs are silent the emulator picks the strict option and says so with
"STRICT (undocumented)" in a comment; "UNCONFIRMED" marks error texts taken from
third-party reports rather than Airtable's own docs.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import math
import os
import re
import secrets
import socket
import string
import sys
import threading
import time
import urllib.parse
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

__all__ = ["Emulator", "Fault", "LoggedRequest", "ApiError"]

# --------------------------------------------------------------------------------------
# Constants: limits, ids, messages (with sources)
# --------------------------------------------------------------------------------------

#: Max records per create/update/upsert/delete request (create-records, update-multiple-records,
#: delete-multiple-records docs: "up to 10 records").
MAX_RECORDS_PER_REQUEST = 10
#: pageSize default and maximum (list-records docs: "default 100 ... maximum 100").
MAX_PAGE_SIZE = 100
#: Text cell limit.  Airtable's support docs give 100,000 characters for long text; the
#: same limit is applied to every text type (STRICT (undocumented) for single line text).
MAX_TEXT_LENGTH = 100_000
#: fieldsToMergeOn takes 1..3 fields (update-multiple-records docs).
MAX_MERGE_FIELDS = 3
#: list-records docs: "Airtable's API only accepts request with a URL shorter than 16,000
#: characters" (pyairtable's Api.MAX_URL_LENGTH, which switches to POST .../listRecords at
#: that length).  Measured as on the real host: "https://api.airtable.com" + path + query.
MAX_URL_LENGTH = 16_000
REAL_API_ORIGIN = "https://api.airtable.com"
#: List iterators expire; Airtable documents that "iteration may timeout due to client
#: inactivity or server restarts" (list-records docs) without a number.  5 minutes here.
ITERATOR_TTL_S = 300.0

ID_CHARS = string.ascii_letters + string.digits
#: Airtable ids are a 3-letter prefix + 14 alphanumerics (finding-airtable-ids).
RECORD_ID_RE = re.compile(r"rec[A-Za-z0-9]{14}")

MSG_AUTH = "Authentication required"
#: Verbatim from the errors page (403 example).
MSG_MODEL_NOT_FOUND = (
    "Invalid permissions, or the requested model was not found. Check that both your user and "
    "your token have the required permissions, and that the model names and/or ids are correct."
)
#: Verbatim from the errors page (429 section).
MSG_RATE_LIMIT = "Rate limit exceeded. Please try again later"
MSG_INVALID_REQUEST = "Invalid request: parameter validation failed. Check your request data."
#: INVALID_RECORDS texts as relayed from real responses (n8n / Zapier community threads;
#: pyairtable issue #94 for delete).  UNCONFIRMED against Airtable's own docs.
MSG_RECORDS_CREATE = (
    'You must provide an array of up to 10 record objects, each with a "fields" object for cell values.'
)
MSG_RECORDS_UPDATE = (
    'You must provide an array of up to 10 record objects, each with an "id" ID field and a '
    '"fields" object for cell values.'
)
MSG_RECORDS_DELETE = '"records" must be an array of up to 10 record IDs.'
#: filterByFormula error text as relayed in victorhahn/airtable-plus#2 (a real 422 body).
MSG_BAD_FORMULA = "The formula for filtering records is invalid: Invalid formula. Please check your formula text."

#: Field types whose cells are computed by Airtable and can never be written
#: (field-model docs mark their cell format "read only").
COMPUTED_TYPES = frozenset({
    "formula", "rollup", "count", "lookup", "multipleLookupValues", "createdTime",
    "lastModifiedTime", "autoNumber", "createdBy", "lastModifiedBy", "button", "aiText",
    "externalSyncSource", "manualSort",
})
TEXT_TYPES = frozenset({"singleLineText", "multilineText", "richText", "email", "url", "phoneNumber"})
NUMBER_TYPES = frozenset({"number", "currency", "percent", "duration"})
#: Types usable in fieldsToMergeOn.  update-multiple-records docs: "These cannot be computed
#: fields (formulas, lookups, rollups), and must be one of the following types: number, text,
#: long text, single select, multiple select, date."  Read literally (STRICT): email, url,
#: phone, currency, percent, rich text and date-time fields are distinct types and are refused.
MERGE_TYPES = frozenset({"singleLineText", "multilineText", "number", "singleSelect", "multipleSelects", "date"})
CHOICE_COLORS = [
    "blueLight2", "cyanLight2", "tealLight2", "greenLight2", "yellowLight2",
    "orangeLight2", "redLight2", "pinkLight2", "purpleLight2", "grayLight2",
]
EMAIL_RE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
DATETIME_RE = re.compile(
    r"(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}(?::\d{2})?)(\.\d+)?(Z|z|[+-]\d{2}:?\d{2})?"
)
NUMERIC_RE = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def new_id(prefix: str) -> str:
    """A fresh Airtable-style id: 3-letter prefix + 14 alphanumerics."""
    return prefix + "".join(secrets.choice(ID_CHARS) for _ in range(14))


def iso_now() -> str:
    """Now in UTC in Airtable's format; Airtable keeps whole seconds (``.000Z``)."""
    return format_datetime(dt.datetime.now(dt.timezone.utc))


def format_datetime(value: dt.datetime) -> str:
    value = value.astimezone(dt.timezone.utc)
    return value.strftime("%Y-%m-%dT%H:%M:%S") + ".000Z"


def clean_number(value: float | int) -> float | int:
    """JSON numbers come back like Airtable's JS serialisation: 3.0 -> 3."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


# --------------------------------------------------------------------------------------
# Errors and responses
# --------------------------------------------------------------------------------------


class ApiError(Exception):
    """An Airtable-style error response."""

    def __init__(self, status: int, type_: str, message: str | None = None, *, bare: bool = False):
        super().__init__(f"{status} {type_}: {message}")
        self.status, self.type, self.message, self.bare = status, type_, message, bare

    def body(self) -> dict:
        # Airtable uses two shapes: {"error": {"type", "message"}} and, for undefined
        # routes, the bare {"error": "NOT_FOUND"} (both shown on the errors page).
        if self.bare:
            return {"error": self.type}
        err: dict[str, Any] = {"type": self.type}
        if self.message is not None:
            err["message"] = self.message
        return {"error": err}


def invalid_request(message: str = MSG_INVALID_REQUEST) -> ApiError:
    return ApiError(422, "INVALID_REQUEST_UNKNOWN", message)


def unknown_field(name: str) -> ApiError:
    # Exact text seen in real 422 bodies (e.g. {"type": "UNKNOWN_FIELD_NAME",
    # "message": "Unknown field name: \" Name\""} quoted in public Airtable client code).
    return ApiError(422, "UNKNOWN_FIELD_NAME", f'Unknown field name: "{name}"')


def bad_value(field_def: dict) -> ApiError:
    # Text of real INVALID_VALUE_FOR_COLUMN bodies, e.g.
    # 'Field "Email" cannot accept the provided value' (many public client test suites).
    return ApiError(422, "INVALID_VALUE_FOR_COLUMN", f'Field "{field_def["name"]}" cannot accept the provided value')


def computed_value(field_def: dict) -> ApiError:
    # Verbatim from real responses: 'Field "date" cannot accept a value because the field
    # is computed' (github.com/justkd/AirpuckJS/issues/3, Sybit-Education/airtable.java#46).
    return ApiError(
        422, "INVALID_VALUE_FOR_COLUMN",
        f'Field "{field_def["name"]}" cannot accept a value because the field is computed',
    )


def record_not_found() -> ApiError:
    # GET/PATCH/PUT/DELETE of one missing record: 404 MODEL_ID_NOT_FOUND "Record not found",
    # as in recorded real responses (nock fixtures) and Make community reports.  UNCONFIRMED
    # in Airtable's docs, which only say 404 is returned "if the resource doesn't exist".
    return ApiError(404, "MODEL_ID_NOT_FOUND", "Record not found")


def route_not_found() -> ApiError:
    return ApiError(404, "NOT_FOUND", bare=True)


def model_not_found() -> ApiError:
    return ApiError(403, "INVALID_PERMISSIONS_OR_MODEL_NOT_FOUND", MSG_MODEL_NOT_FOUND)


#: Default bodies of injected faults.  404, 422, 429 and 503 are the examples on the errors
#: page (https://airtable.com/developers/web/api/errors#example-error-responses: 404
#: {"error": {"type": "NOT_FOUND"}} without a message, 429 RATE_LIMIT_REACHED, 503
#: RETRIABLE_ERROR); the others use the status descriptions of that page (UNCONFIRMED types).
DEFAULT_FAULT_ERRORS: dict[int, tuple[str, str | None]] = {
    400: ("INVALID_REQUEST_UNKNOWN", "The request could not be parsed"),
    401: ("AUTHENTICATION_REQUIRED", MSG_AUTH),
    403: ("INVALID_PERMISSIONS_OR_MODEL_NOT_FOUND", MSG_MODEL_NOT_FOUND),
    404: ("NOT_FOUND", None),
    413: ("REQUEST_ENTITY_TOO_LARGE", "The request exceeded the maximum allowed payload size"),
    422: ("INVALID_REQUEST_UNKNOWN", MSG_INVALID_REQUEST),
    429: ("RATE_LIMIT_REACHED", MSG_RATE_LIMIT),
    500: ("SERVER_ERROR", "The server encountered an unexpected condition"),
    502: ("BAD_GATEWAY", "Airtable's servers are restarting or an unexpected outage is in progress"),
    503: ("RETRIABLE_ERROR",
          "Server encountered an error while processing your request, and it is safe to retry the request"),
    504: ("GATEWAY_TIMEOUT", "The server did not respond in time"),
}


def default_error_body(status: int) -> dict:
    type_, message = DEFAULT_FAULT_ERRORS.get(status, ("UNKNOWN_ERROR", f"HTTP {status}"))
    return ApiError(status, type_, message).body()


@dataclass
class _Response:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False


# --------------------------------------------------------------------------------------
# Request log and faults (public)
# --------------------------------------------------------------------------------------


@dataclass
class LoggedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    status: int | None  # None until answered, and when the connection was dropped
    kind: str  # "read" | "write" | "meta" | "other"
    table: str | None  # table id (resolved from a name); None if unknown / not a table route
    records: int  # records in a write (body records, or ids of a batch DELETE); 0 otherwise
    t_start: float  # time.monotonic() at arrival, after the headers were read
    t_end: float | None
    fault: str | None
    body: dict | None  # parsed JSON body (None when absent or not a JSON object)


@dataclass
class Fault:
    """An injected fault; see :meth:`Emulator.add_fault`."""

    status: int | None = None
    drop: bool = False
    delay_s: float = 0.0
    apply: bool = False
    method: str | None = None
    kind: str | None = None
    table: str | None = None  # table id (resolved at add_fault time when a name was given)
    match: Callable[[dict], bool] | None = None
    skip: int = 0
    times: int | None = 1
    body: dict | None = None
    headers: dict | None = None
    seen: int = 0  # matching requests so far
    fired: int = 0  # requests faulted so far

    def describe(self) -> str:
        parts = []
        if self.delay_s:
            parts.append(f"delay {self.delay_s:g}s")
        if self.apply and (self.status or self.drop):
            parts.append("apply then")
        if self.drop:
            parts.append("drop")
        elif self.status:
            parts.append(f"status {self.status}")
        return " ".join(parts) or "no-op"

    def matches(self, entry: LoggedRequest, body: dict) -> bool:
        if self.method and self.method.upper() != entry.method:
            return False
        if self.kind and self.kind != entry.kind:
            return False
        if self.table and self.table != entry.table:
            return False
        if self.match is not None:
            try:
                return bool(self.match(body))
            except Exception:  # a predicate that cannot handle this body does not match
                return False
        return True

    def take(self) -> bool:
        """Count one matching request; True when this one is to be faulted."""
        self.seen += 1
        if self.seen <= self.skip:
            return False
        if self.times is not None and self.fired >= self.times:
            return False
        self.fired += 1
        return True


class _RateLimiter:
    """Per-base limit: more than ``rps`` arrivals in any rolling second -> 429, and every
    request during ``penalty_s`` after the first 429 is refused too ("you will receive a
    429 status code and will need to wait 30 seconds before subsequent requests will
    succeed", rate-limits docs).  Every arrival counts (401s, faulted ones...); the penalty
    starts a fresh window, so what was refused during it does not count after it
    (STRICT-enough choice; Airtable does not document how the window restarts)."""

    def __init__(self, rps: float | None, penalty_s: float):
        self.rps, self.penalty_s = rps, penalty_s
        self._arrivals: deque[float] = deque()
        self._penalty_until = 0.0
        self._lock = threading.Lock()

    def configure(self, rps: float | None, penalty_s: float) -> None:
        with self._lock:
            self.rps, self.penalty_s = rps, penalty_s
            self._arrivals.clear()
            self._penalty_until = 0.0

    def arrive(self, now: float) -> float | None:
        """Record an arrival; returns the remaining penalty (seconds) if refused, else None."""
        with self._lock:
            if self.rps is None:
                return None
            if now < self._penalty_until:
                return self._penalty_until - now
            self._arrivals.append(now)
            while self._arrivals and self._arrivals[0] <= now - 1.0:
                self._arrivals.popleft()
            if len(self._arrivals) > self.rps:
                self._penalty_until = now + self.penalty_s
                self._arrivals.clear()
                return self.penalty_s
            return None


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

    def merge_matches(self, merge_ids: list[str], key: tuple) -> list["_Record"]:
        ids = tuple(merge_ids)
        index = self.merge_indexes.get(ids)
        if index is None:
            index = self.merge_indexes[ids] = {}
            for rec in self.records:
                index.setdefault(_merge_key_of(rec, ids), []).append(rec)
        return list(index.get(key, ()))

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


# --------------------------------------------------------------------------------------
# filterByFormula: a small subset of Airtable's formula language
# --------------------------------------------------------------------------------------


class FormulaError(Exception):
    """The formula cannot be parsed (-> 422 INVALID_FILTER_BY_FORMULA)."""


class _EvalError(Exception):
    """Evaluation error (#ERROR!): the record is excluded / the formula cell is empty."""


#: function name -> (min args, max args or None)
_FUNCTIONS: dict[str, tuple[int, int | None]] = {
    "AND": (1, None), "OR": (1, None), "XOR": (1, None), "NOT": (1, 1), "IF": (2, 3),
    "TRUE": (0, 0), "FALSE": (0, 0), "BLANK": (0, 0), "RECORD_ID": (0, 0),
    "LOWER": (1, 1), "UPPER": (1, 1), "LEN": (1, 1), "TRIM": (1, 1), "VALUE": (1, 1),
    "FIND": (2, 3), "SEARCH": (2, 3), "CONCATENATE": (1, None),
}
_TOKEN_RE = re.compile(
    r"""\s*(?:
        (?P<num>\d+(?:\.\d*)?|\.\d+)
      | (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
      | (?P<field>\{(?:[^}\\]|\\.)*\})
      | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<op><=|>=|!=|=|<|>|&|\+|-|\*|/)
      | (?P<punct>[(),])
    )""",
    re.VERBOSE,
)


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), text)


class _FormulaParser:
    """Recursive descent parser producing a tuple AST.  Grammar::

        expr   := concat (("=" | "!=" | "<" | ">" | "<=" | ">=") concat)?
        concat := sum ("&" sum)*
        sum    := prod (("+" | "-") prod)*
        prod   := unary (("*" | "/") unary)*
        unary  := "-" unary | atom
        atom   := number | string | {field} | NAME "(" args ")" | "(" expr ")"
    """

    def __init__(self, text: str, table: _Table):
        self.table = table
        self.tokens: list[tuple[str, str]] = []
        self.unknown: list[str] = []
        pos, text = 0, text.strip()
        while pos < len(text):
            m = _TOKEN_RE.match(text, pos)
            if not m or m.end() == pos:
                raise FormulaError(MSG_BAD_FORMULA)
            kind = m.lastgroup or ""
            self.tokens.append((kind, m.group(kind)))
            pos = m.end()
        self.pos = 0

    def parse(self) -> tuple:
        if not self.tokens:
            raise FormulaError(MSG_BAD_FORMULA)
        node = self._expr()
        if self.pos != len(self.tokens):
            raise FormulaError(MSG_BAD_FORMULA)
        if self.unknown:
            # Text reported for unknown names in formulas (Make community thread on
            # INVALID_FILTER_BY_FORMULA).  UNCONFIRMED.
            raise FormulaError(
                "The formula for filtering records is invalid: Unknown field names: " + ", ".join(self.unknown)
            )
        return node

    def _peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _next(self) -> tuple[str, str]:
        tok = self._peek()
        if tok is None:
            raise FormulaError(MSG_BAD_FORMULA)
        self.pos += 1
        return tok

    def _accept(self, *values: str) -> str | None:
        tok = self._peek()
        if tok and tok[0] in ("op", "punct") and tok[1] in values:
            self.pos += 1
            return tok[1]
        return None

    def _expr(self) -> tuple:
        left = self._concat()
        op = self._accept("=", "!=", "<", ">", "<=", ">=")
        return ("cmp", op, left, self._concat()) if op else left

    def _concat(self) -> tuple:
        node = self._sum()
        while self._accept("&"):
            node = ("cat", node, self._sum())
        return node

    def _sum(self) -> tuple:
        node = self._prod()
        while op := self._accept("+", "-"):
            node = ("arith", op, node, self._prod())
        return node

    def _prod(self) -> tuple:
        node = self._unary()
        while op := self._accept("*", "/"):
            node = ("arith", op, node, self._unary())
        return node

    def _unary(self) -> tuple:
        if self._accept("-"):
            return ("neg", self._unary())
        return self._atom()

    def _atom(self) -> tuple:
        kind, text = self._next()
        if kind == "num":
            return ("lit", clean_number(float(text)))
        if kind == "str":
            return ("lit", _unescape(text[1:-1]))
        if kind == "field":
            name = _unescape(text[1:-1])
            f = self.table.field(name)
            if f is None:
                self.unknown.append(name)
                return ("lit", None)
            return ("field", f["id"])
        if kind == "ident":
            name = text.upper()
            if name not in _FUNCTIONS or not self._accept("("):
                raise FormulaError(MSG_BAD_FORMULA)
            args: list[tuple] = []
            if not self._accept(")"):
                args.append(self._expr())
                while self._accept(","):
                    args.append(self._expr())
                if not self._accept(")"):
                    raise FormulaError(MSG_BAD_FORMULA)
            low, high = _FUNCTIONS[name]
            if len(args) < low or (high is not None and len(args) > high):
                raise FormulaError(MSG_BAD_FORMULA)
            return ("call", name, args)
        if kind == "punct" and text == "(":
            node = self._expr()
            if not self._accept(")"):
                raise FormulaError(MSG_BAD_FORMULA)
            return node
        raise FormulaError(MSG_BAD_FORMULA)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _to_num(v: Any) -> float | int:
    if v is None or v == "":
        return 0
    if isinstance(v, bool):
        return int(v)
    if _is_num(v):
        return v
    if isinstance(v, str) and NUMERIC_RE.fullmatch(v.strip()):
        return clean_number(float(v))
    raise _EvalError("not a number")


def _to_str(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "1" if v else "0"
    if _is_num(v):
        return str(clean_number(v))
    return str(v)


def _truthy(v: Any) -> bool:
    if v is None or v is False:
        return False
    if _is_num(v):
        return v != 0 and not math.isnan(v)
    if isinstance(v, str):
        return v != ""
    return bool(v)


def _equal(a: Any, b: Any) -> bool:
    a = int(a) if isinstance(a, bool) else a
    b = int(b) if isinstance(b, bool) else b
    if a is None or b is None:
        other = b if a is None else a
        return other is None or other == "" or (_is_num(other) and other == 0)
    if _is_num(a) and _is_num(b):
        return a == b
    if _is_num(a) != _is_num(b):
        num, text = (a, b) if _is_num(a) else (b, a)
        return bool(NUMERIC_RE.fullmatch(text.strip())) and float(text) == num
    return _to_str(a) == _to_str(b)


def _compare(op: str, a: Any, b: Any) -> bool:
    if op in ("=", "!="):
        return _equal(a, b) == (op == "=")
    try:
        x, y = _to_num(a), _to_num(b)
    except _EvalError:
        x, y = _to_str(a), _to_str(b)  # type: ignore[assignment]
    return {"<": x < y, ">": x > y, "<=": x <= y, ">=": x >= y}[op]


# --------------------------------------------------------------------------------------
# The emulator
# --------------------------------------------------------------------------------------


class Emulator:
    """An in-process Airtable API for one base, served on 127.0.0.1 over HTTP/1.1."""

    def __init__(
        self,
        base: dict | str | os.PathLike,
        *,
        token: str = "test-token",
        rps: float | None = 5,
        penalty_s: float = 30.0,
        retry_after: bool = False,
        verbose: bool = False,
    ):
        if not isinstance(base, dict):
            with open(base, encoding="utf-8") as fh:
                base = json.load(fh)
        self.token = token
        self.verbose = verbose
        self.retry_after = retry_after
        self.requests: list[LoggedRequest] = []
        self._lock = threading.RLock()  # base state (records, choices, iterators)
        self._log_lock = threading.Lock()
        self._fault_lock = threading.Lock()
        self._faults: list[Fault] = []
        self._limiter = _RateLimiter(rps, penalty_s)
        self._iterators: dict[str, _Iterator] = {}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""
        self._load(base)

    # ---- lifecycle -------------------------------------------------------------------

    def start(self, port: int = 0) -> "Emulator":
        """Bind 127.0.0.1 (a free port unless ``port`` is given) and serve in a daemon thread."""
        if self._server is not None:
            return self
        self._server = _Server(("127.0.0.1", port), _Handler, self)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01},
            name="airtable-emulator", daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close_open_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "Emulator":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1]) if self.url else 0

    # ---- configuration ---------------------------------------------------------------

    def set_rate_limit(
        self, rps: float | None, penalty_s: float | None = None, retry_after: bool | None = None
    ) -> None:
        """Change the limit (None disables it); also forgets past arrivals and any penalty."""
        self._limiter.configure(rps, self._limiter.penalty_s if penalty_s is None else penalty_s)
        if retry_after is not None:
            self.retry_after = retry_after

    def add_fault(
        self,
        *,
        status: int | None = None,
        drop: bool = False,
        delay_s: float = 0.0,
        apply: bool = False,
        method: str | None = None,
        kind: str | None = None,
        table: str | None = None,
        match: Callable[[dict], bool] | None = None,
        skip: int = 0,
        times: int | None = 1,
        body: dict | None = None,
        headers: dict | None = None,
    ) -> Fault:
        """Inject a fault.  Matching requests (method/kind/table/match, None = any) are
        counted; the first ``skip`` pass, the next ``times`` (None = all) are faulted:
        ``delay_s`` sleeps before processing; ``status``/``drop`` answer without processing,
        or with ``apply=True`` after processing and committing the request.  A faulted
        request still counts for the rate limiter; an injected status/drop replaces what
        the limiter would have answered."""
        if kind is not None and kind not in ("read", "write", "meta", "other"):
            raise ValueError(f"unknown kind {kind!r}")
        table_id = None
        if table is not None:
            t = self._table(table)
            if t is None:
                raise KeyError(f"unknown table {table!r}")
            table_id = t.id
        fault = Fault(
            status=status, drop=drop, delay_s=delay_s, apply=apply,
            method=method.upper() if method else None, kind=kind, table=table_id, match=match,
            skip=skip, times=times, body=body, headers=dict(headers or {}),
        )
        with self._fault_lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._fault_lock:
            self._faults.clear()

    # ---- request log -----------------------------------------------------------------

    def clear_log(self) -> None:
        with self._log_lock:
            self.requests.clear()

    def count(
        self, *, kind: str | None = None, method: str | None = None,
        status: int | None = None, table: str | None = None,
    ) -> int:
        table_id = None
        if table is not None:
            t = self._table(table)
            table_id = t.id if t else table
        return sum(
            1 for r in list(self.requests)
            if (kind is None or r.kind == kind)
            and (method is None or r.method == method.upper())
            and (status is None or r.status == status)
            and (table is None or r.table == table_id)
        )

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

    @staticmethod
    def _normalise_created(value: str | None) -> str:
        if not value:
            return iso_now()
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
    # HTTP plumbing
    # ==================================================================================

    def _handle(self, handler: "_Handler") -> None:
        t_start = time.monotonic()
        method = handler.command.upper()
        split = urllib.parse.urlsplit(handler.path)
        query = urllib.parse.parse_qs(split.query, keep_blank_values=True)
        try:
            raw = handler.read_body()
        except (ValueError, OSError):
            handler.close_connection = True
            return
        body, body_error = _parse_json(raw)
        segments = [urllib.parse.unquote(s) for s in split.path.split("/")[1:]]
        route = self._route(method, segments)
        entry = LoggedRequest(
            method=method, path=split.path, query=query, status=None, kind=route.kind,
            table=route.table_id, records=self._count_records(route, body, query),
            t_start=t_start, t_end=None, fault=None, body=body if isinstance(body, dict) else None,
        )
        with self._log_lock:  # log order == the order the rate limiter counts arrivals
            self.requests.append(entry)
            penalty_left = self._limiter.arrive(t_start)
        fault = self._pick_fault(entry, body if isinstance(body, dict) else {})
        if fault is not None:
            entry.fault = fault.describe()
            if fault.delay_s:
                time.sleep(fault.delay_s)
        if fault is not None and not fault.apply and (fault.status or fault.drop):
            response = self._fault_response(fault)
        else:
            if penalty_left is not None:
                response = self._rate_limited(penalty_left)
            else:
                response = self._dispatch(handler, route, query, body, body_error)
            if fault is not None and fault.apply and (fault.status or fault.drop):
                response = self._fault_response(fault)
        # Logged just before the bytes go out, so a client that has its answer always
        # finds the request complete in the log.
        entry.status = None if response.drop else response.status
        entry.t_end = time.monotonic()
        handler.send(response, head=(method == "HEAD"))
        if self.verbose:
            self._log_line(entry)

    def _log_line(self, e: LoggedRequest) -> None:
        qs = urllib.parse.urlencode(e.query, doseq=True)
        path = e.path + (f"?{qs}" if qs else "")
        status = e.status if e.status is not None else "DROPPED"
        extra = f" records={e.records}" if e.records else ""
        extra += f" fault=[{e.fault}]" if e.fault else ""
        ms = ((e.t_end or e.t_start) - e.t_start) * 1000
        print(f"[airtable-emulator] {e.method} {path} -> {status} ({e.kind}{extra}) {ms:.0f}ms",
              file=sys.stderr, flush=True)

    def _pick_fault(self, entry: LoggedRequest, body: dict) -> Fault | None:
        """Every matching fault counts the request (for its skip/times); the first one that
        decides to fire is applied."""
        chosen = None
        with self._fault_lock:
            for fault in self._faults:
                if not fault.matches(entry, body):
                    continue
                if chosen is None:
                    if fault.take():
                        chosen = fault
                else:
                    fault.seen += 1
        return chosen

    @staticmethod
    def _fault_response(fault: Fault) -> _Response:
        if fault.drop:
            return _Response(0, drop=True)
        assert fault.status is not None
        body = fault.body if fault.body is not None else default_error_body(fault.status)
        return _Response(fault.status, body, dict(fault.headers or {}))

    def _rate_limited(self, penalty_left: float) -> _Response:
        headers = {}
        if self.retry_after:
            # Airtable does not document a Retry-After header on 429 (rate-limits docs);
            # only sent when retry_after=True.
            headers["Retry-After"] = str(max(1, math.ceil(penalty_left)))
        return _Response(429, {"error": {"type": "RATE_LIMIT_REACHED", "message": MSG_RATE_LIMIT}}, headers)

    # ---- routing ---------------------------------------------------------------------

    @dataclass
    class _Route:
        name: str  # handler key, "" when undefined
        kind: str
        table_id: str | None = None
        table_key: str | None = None
        base_key: str | None = None
        record_id: str | None = None

    def _route(self, method: str, seg: list[str]) -> "Emulator._Route":
        R = Emulator._Route
        if len(seg) < 2 or seg[0] != "v0" or any(s == "" for s in seg):
            return R("", "other")
        if seg[1] == "meta":
            if seg[2:] == ["bases"] and method == "GET":
                return R("list_bases", "meta")
            if seg[2:] == ["whoami"] and method == "GET":
                return R("whoami", "meta")
            if len(seg) == 5 and seg[2] == "bases" and seg[4] == "tables" and method == "GET":
                return R("base_schema", "meta", base_key=seg[3])
            return R("", "meta" if method == "GET" else "other")
        if len(seg) not in (3, 4):
            return R("", "other")
        base_key, table_key = seg[1], seg[2]
        table = self._table(table_key) if base_key == self._base_id else None
        table_id = table.id if table else None
        common = dict(table_id=table_id, table_key=table_key, base_key=base_key)
        if len(seg) == 3:
            name = {"GET": "list", "POST": "create", "PATCH": "update_many",
                    "PUT": "replace_many", "DELETE": "delete_many"}.get(method, "")
            return R(name, "read" if method == "GET" else ("write" if name else "other"), **common)
        if seg[3] == "listRecords":
            return R("list_post", "read", **common) if method == "POST" else R("", "other", **common)
        name = {"GET": "get", "PATCH": "update_one", "PUT": "replace_one",
                "DELETE": "delete_one"}.get(method, "")
        kind = "read" if method == "GET" else ("write" if name else "other")
        return R(name, kind, record_id=seg[3], **common)

    @staticmethod
    def _count_records(route: "Emulator._Route", body: Any, query: dict) -> int:
        if route.kind != "write":
            return 0
        if route.name == "delete_many":
            return len(query.get("records[]", []))
        if route.name == "delete_one":
            return 1
        if isinstance(body, dict):
            if isinstance(body.get("records"), list):
                return len(body["records"])
            if "fields" in body:
                return 1
        return 0

    def _dispatch(self, handler: "_Handler", route: "Emulator._Route", query: dict,
                  body: Any, body_error: str | None) -> _Response:
        try:
            if len(REAL_API_ORIGIN) + len(handler.path) >= MAX_URL_LENGTH:
                # STRICT (undocumented status and body): the docs give the limit, not the error.
                raise ApiError(414, "INVALID_REQUEST_UNKNOWN",
                               "Invalid request: the URL must be shorter than 16,000 characters")
            if not route.name:
                raise route_not_found()
            self._check_auth(handler.headers.get("Authorization"))
            if body_error is not None:
                # "400 Bad Request: The request encoding is invalid; the request can't be
                # parsed as a valid JSON." (errors docs)
                raise ApiError(400, "INVALID_REQUEST_UNKNOWN", f"Invalid request: {body_error}")
            if body is not None and not isinstance(body, dict):
                raise invalid_request("Invalid request: the request body must be a JSON object")
            return getattr(self, "_op_" + route.name)(route, query, body or {})
        except ApiError as exc:
            return _Response(exc.status, exc.body())
        except Exception as exc:  # an emulator bug: make it loud but keep serving
            import traceback

            traceback.print_exc()
            return _Response(500, {"error": {"type": "SERVER_ERROR", "message": f"emulator bug: {exc!r}"}})

    def _check_auth(self, header: str | None) -> None:
        # Missing or wrong token -> 401 AUTHENTICATION_REQUIRED (errors docs: "401
        # Unauthorized: Accessing a protected resource without authorization or with invalid
        # credentials").  Airtable's troubleshooting page names a separate "unauthorized /
        # invalid authentication token" case for a wrong token; the emulator answers both
        # with the same body, as the project requires.
        if header != f"Bearer {self.token}":
            raise ApiError(401, "AUTHENTICATION_REQUIRED", MSG_AUTH)

    def _table_for(self, route: "Emulator._Route") -> _Table:
        # Unknown base or table (for an authenticated token): 403
        # INVALID_PERMISSIONS_OR_MODEL_NOT_FOUND ("You don't have the right permission for
        # the resource, or the resource was not found", errors docs).
        if route.base_key != self._base_id or route.table_id is None:
            raise model_not_found()
        return self._require_table(route.table_id)

    # ==================================================================================
    # Operations (each runs entirely under the state lock: requests are atomic)
    # ==================================================================================

    def _op_list_bases(self, route, query, body) -> _Response:
        _only_params(query, {"offset"})
        return _Response(200, {"bases": [{"id": self._base_id, "name": self._base_name, "permissionLevel": "create"}]})

    def _op_whoami(self, route, query, body) -> _Response:
        _only_params(query, set())
        return _Response(200, {"id": "usrEmulatorUser01", "scopes": [
            "data.records:read", "data.records:write", "schema.bases:read"]})

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

    # ---- formula ---------------------------------------------------------------------

    @staticmethod
    def _parse_formula(table: _Table, text: str) -> tuple:
        try:
            return _FormulaParser(text, table).parse()
        except FormulaError as exc:
            raise ApiError(422, "INVALID_FILTER_BY_FORMULA", str(exc)) from None

    def _formula_truthy(self, table: _Table, rec: _Record, ast: tuple) -> bool:
        try:
            return _truthy(self._eval(table, rec, ast, 0))
        except (_EvalError, ZeroDivisionError, TypeError, ValueError):
            return False  # #ERROR! is falsy: the record is not returned

    def _eval(self, table: _Table, rec: _Record, node: tuple, depth: int) -> Any:
        op = node[0]
        if op == "lit":
            return node[1]
        if op == "field":
            return self._formula_field_value(table, rec, table.field_by_id(node[1]), depth)
        if op == "neg":
            return -_to_num(self._eval(table, rec, node[1], depth))
        if op == "cat":
            return _to_str(self._eval(table, rec, node[1], depth)) + _to_str(self._eval(table, rec, node[2], depth))
        if op == "arith":
            a = _to_num(self._eval(table, rec, node[2], depth))
            b = _to_num(self._eval(table, rec, node[3], depth))
            return clean_number({"+": a + b, "-": a - b, "*": a * b}[node[1]] if node[1] != "/" else a / b)
        if op == "cmp":
            return _compare(node[1], self._eval(table, rec, node[2], depth), self._eval(table, rec, node[3], depth))
        return self._call(table, rec, node[1], node[2], depth)

    def _call(self, table: _Table, rec: _Record, name: str, args: list[tuple], depth: int) -> Any:
        ev = lambda n: self._eval(table, rec, n, depth)  # noqa: E731
        if name == "IF":
            if _truthy(ev(args[0])):
                return ev(args[1])
            return ev(args[2]) if len(args) > 2 else None
        if name == "AND":
            return all(_truthy(ev(a)) for a in args)
        if name == "OR":
            return any(_truthy(ev(a)) for a in args)
        if name == "XOR":
            return sum(_truthy(ev(a)) for a in args) % 2 == 1
        if name == "NOT":
            return not _truthy(ev(args[0]))
        if name in ("TRUE", "FALSE"):
            return name == "TRUE"
        if name == "BLANK":
            return None
        if name == "RECORD_ID":
            return rec.id
        values = [ev(a) for a in args]
        if name == "LOWER":
            return _to_str(values[0]).lower()
        if name == "UPPER":
            return _to_str(values[0]).upper()
        if name == "LEN":
            return len(_to_str(values[0]))
        if name == "TRIM":
            return _to_str(values[0]).strip()
        if name == "VALUE":
            return _to_num(values[0])
        if name == "CONCATENATE":
            return "".join(_to_str(v) for v in values)
        needle, hay = _to_str(values[0]), _to_str(values[1])
        start = int(_to_num(values[2])) - 1 if len(values) > 2 else 0
        if name == "SEARCH":
            pos = hay.lower().find(needle.lower(), max(start, 0))
            return pos + 1 if pos >= 0 else None
        return hay.find(needle, max(start, 0)) + 1  # FIND: 0 when absent

    def _formula_field_value(self, table: _Table, rec: _Record, f: dict, depth: int) -> Any:
        """A cell as formulas see it: lists become comma-joined text, checkboxes 1/0."""
        value = self._cell(table, rec, f, depth + 1)
        if f["type"] == "checkbox":
            return 1 if value else 0
        if f["type"] == "multipleRecordLinks":
            linked = self._require_table(f["options"]["linkedTableId"])
            prim = linked.field_by_id(linked.primary_field_id)
            names = []
            for rid in value or []:
                other = linked.index.get(rid)
                names.append(_to_str(self._cell(linked, other, prim, depth + 1)) if other else rid)
            return ", ".join(names) if names else None
        if isinstance(value, list):
            parts = [_display(v) for v in value]
            return ", ".join(parts) if parts else None
        if isinstance(value, dict):
            return _display(value)
        return value

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
            now = iso_now()
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
            now = iso_now()
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
            now = iso_now()
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
        self._apply(table, rec, cells, False, now)
        return rec

    def _fresh_record_id(self) -> str:
        while True:
            rid = new_id("rec")
            if all(rid not in t.index for t in self._tables):
                return rid

    def _apply(self, table: _Table, rec: _Record, cells: dict, replace: bool, now: str) -> None:
        """PATCH merges the given cells; PUT (replace) clears every cell not given."""
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
            links = list(other.fields.get(inverse_id) or [])
            if rid in new and rec.id not in links:
                links.append(rec.id)
            elif rid not in new and rec.id in links:
                links.remove(rec.id)
            if links:
                other.fields[inverse_id] = links
            else:
                other.fields.pop(inverse_id, None)
            other.modified[inverse_id] = now

    def _remove(self, table: _Table, ids: list[str]) -> None:
        gone = set(ids)
        table.merge_indexes.clear()
        table.records = [r for r in table.records if r.id not in gone]
        for rid in gone:
            table.index.pop(rid, None)
        now = iso_now()
        # Links to deleted records disappear from every link field pointing at this table.
        for t in self._tables:
            for f in t.fields:
                if f["type"] != "multipleRecordLinks" or f["options"]["linkedTableId"] != table.id:
                    continue
                for r in t.records:
                    links = r.fields.get(f["id"])
                    if links and gone.intersection(links):
                        kept = [x for x in links if x not in gone]
                        if kept:
                            r.fields[f["id"]] = kept
                        else:
                            del r.fields[f["id"]]
                        r.modified[f["id"]] = now

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

    # ---- cell validation -------------------------------------------------------------

    def _validate_cells(self, table: _Table, fields: dict, ctx: _WriteCtx) -> dict[str, Any]:
        """Validate a ``fields`` object (keys: names or ids) into normalised cells by id."""
        out: dict[str, Any] = {}
        for key, value in fields.items():
            f = table.field(key)
            if f is None:
                raise unknown_field(key)
            if f["type"] in COMPUTED_TYPES:
                raise computed_value(f)
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


def _display(value: Any) -> str:
    if isinstance(value, dict):
        if "filename" in value:
            return f"{value['filename']} ({value.get('url', '')})"
        return str(value.get("name") or value.get("email") or value.get("text") or value.get("id") or "")
    return _to_str(value)


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


# --------------------------------------------------------------------------------------
# Request parameter helpers
# --------------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid JSON constant {name}")


def _parse_json(raw: bytes) -> tuple[Any, str | None]:
    if not raw.strip():
        return None, None
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant), None
    except (ValueError, UnicodeDecodeError) as exc:
        return None, f"the request body is not valid JSON ({exc})"


def _only_params(query: dict, allowed: set[str]) -> None:
    # STRICT (undocumented): unknown query parameters are rejected.
    if any(k not in allowed for k in query):
        raise invalid_request()


def _only_keys(body: dict, allowed: set[str]) -> None:
    # STRICT (undocumented): unknown body keys are rejected.
    if any(k not in allowed for k in body):
        raise invalid_request()


def _scalar(query: dict, name: str) -> str | None:
    values = query.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise invalid_request()
    return values[0]


def _bool_param(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true"):
        return True
    if isinstance(value, str) and value.lower() in ("0", "false"):
        return False
    raise invalid_request()


def _int_param(value: Any, low: int, high: int | None) -> int:
    if isinstance(value, str) and re.fullmatch(r"\d+", value):
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        # pageSize > 100 etc.: 422 (list-records docs give the limit; error text UNCONFIRMED).
        raise invalid_request()
    return value


def _write_flags(body: dict) -> tuple[bool, bool]:
    typecast = body.get("typecast", False)
    by_id = body.get("returnFieldsByFieldId", False)
    if not isinstance(typecast, bool) or not isinstance(by_id, bool):
        raise invalid_request()
    return typecast, by_id


_SORT_PARAM_RE = re.compile(r"sort\[(\d+)\]\[(field|direction)\]")
_LIST_PARAMS = {"fields[]", "filterByFormula", "maxRecords", "pageSize", "offset", "view", "cellFormat",
                "timeZone", "userLocale", "returnFieldsByFieldId", "recordMetadata[]"}


def _list_options_from_query(query: dict) -> _ListOptions:
    sorts: dict[int, dict[str, str]] = {}
    for key in query:
        m = _SORT_PARAM_RE.fullmatch(key)
        if m:
            sorts.setdefault(int(m.group(1)), {})[m.group(2)] = _scalar(query, key) or ""
        elif key not in _LIST_PARAMS:
            raise invalid_request()
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
                      "timeZone", "userLocale", "returnFieldsByFieldId", "recordMetadata", "sort"})
    fields = body.get("fields")
    if fields is not None and (not isinstance(fields, list) or not all(isinstance(x, str) for x in fields)):
        raise invalid_request()
    for key in ("filterByFormula", "offset", "view", "cellFormat", "timeZone", "userLocale"):
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


# --------------------------------------------------------------------------------------
# HTTP server classes
# --------------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type, emulator: Emulator):
        self.emulator = emulator
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_open_connections(self) -> None:
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    # Keep-alive like api.airtable.com: HTTP/1.1, always a Content-Length, body read fully.
    protocol_version = "HTTP/1.1"
    server_version = "AirtableEmulator/1.0"
    disable_nagle_algorithm = True  # headers and body are separate writes: avoid 40 ms stalls
    server: _Server

    def _dispatch_request(self) -> None:
        self.server.emulator._handle(self)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = do_HEAD = do_OPTIONS = _dispatch_request

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # the emulator logs one line per request itself when verbose

    def read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0] or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def send(self, response: _Response, head: bool = False) -> int | None:
        """Write the response (or drop the connection); returns the status sent or None."""
        if response.drop:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return None
        data = b"" if response.body is None else json.dumps(response.body, ensure_ascii=False).encode("utf-8")
        try:
            self.send_response(response.status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            for key, value in response.headers.items():
                self.send_header(key, str(value))
            self.end_headers()
            if not head:
                self.wfile.write(data)
            self.wfile.flush()
        except OSError:  # the client went away (e.g. it timed out); the request still ran
            self.close_connection = True
        return response.status


# --------------------------------------------------------------------------------------
# Standalone entry point
# --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Local Airtable Web API emulator (one base).")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0 = any free port)")
    parser.add_argument("--base", required=True, help="path to BASE.json")
    parser.add_argument("--rps", type=float, default=5.0, help="requests per second per base (0 = unlimited)")
    parser.add_argument("--penalty-s", type=float, default=30.0, help="429 penalty window in seconds")
    parser.add_argument("--token", default="test-token", help="the only accepted bearer token")
    parser.add_argument("--retry-after", action="store_true", help="send Retry-After on 429")
    args = parser.parse_args(argv)
    emu = Emulator(args.base, token=args.token, rps=args.rps or None, penalty_s=args.penalty_s,
                   retry_after=args.retry_after, verbose=True)
    emu.start(args.port)
    print(f"[airtable-emulator] serving base {emu.base_id} at {emu.url} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        emu.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
