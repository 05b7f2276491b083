"""Shared parts: limits, ids, Airtable error bodies, the response type and request
parameter helpers (used by every other module of the emulator)."""

from __future__ import annotations

import datetime as dt
import json
import re
import secrets
import string
from dataclasses import dataclass, field
from typing import Any

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

