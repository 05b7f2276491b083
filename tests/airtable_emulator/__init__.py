"""A strict, local emulator of the Airtable Web API (standard library only).

The sync's tests point pyairtable at this emulator instead of api.airtable.com::

    from airtable_emulator import Emulator   # tests/ on sys.path
    with Emulator("tests/fixtures/BASE.json", rps=None) as emu:
        api = pyairtable.Api(emu.token, endpoint_url=emu.url)
        table = api.table(emu.base_id, "Contacts")
        table.batch_upsert([{"fields": {"Key": "k1", "Name": "Ada"}}], key_fields=["Key"])
        assert emu.count(kind="write") == 1
        emu.add_fault(status=503, kind="write", times=1)   # next write fails once

Standalone (serves until Ctrl-C, one log line per request on stderr)::

    python -m tests.airtable_emulator --port 8765 --base BASE.json [--rps 5] [--penalty-s 30]
                                      [--token T] [--retry-after]
    python tests/airtable_emulator ...             (the same, run as a directory)

What it serves (every request pyairtable 3.x sends for records and schema):
list records (GET and POST .../listRecords), get/create/update/replace/upsert/delete
records (single and batch), GET /v0/meta/bases, GET /v0/meta/bases/{baseId}/tables and
GET /v0/meta/whoami.  It is strict where Airtable is strict (auth, 10-record batches,
pageSize, unknown fields, computed fields, cell value types, select choices, record
links, missing records, atomic batches, the per-base rate limit with its penalty
window) and it adds fault injection (status codes, dropped connections, delays,
"apply then fail") and a request log for the tests.

Modules: common (limits, ids, error bodies, parameter helpers), http (server, handler,
routing and dispatch), records (tables, records, cell validation/coercion, writes),
formulas (formula parser/evaluator), faults (rate limiter, fault injection, request log),
__main__ (the standalone server).

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

import datetime as dt
import json
import os
import threading
from typing import Iterable

from .client import ClientActions
from .common import ApiError
from .faults import Fault, FaultsMixin, LoggedRequest, _RateLimiter
from .formulas import FormulaMixin
from .http import HttpMixin, _Server
from .records import RecordsMixin, _Iterator
from .webhooks import WebhooksMixin, _Hook

#: The scopes of the emulated token (GET /v0/meta/whoami reports them; every endpoint checks
#: the one it needs, see http.py).  Scopes: https://airtable.com/developers/web/api/scopes
DEFAULT_SCOPES = ("data.records:read", "data.records:write", "schema.bases:read", "webhook:manage")

__all__ = ["Emulator", "Fault", "LoggedRequest", "ApiError"]


class Emulator(HttpMixin, FaultsMixin, RecordsMixin, FormulaMixin, WebhooksMixin):
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
        scopes: Iterable[str] = DEFAULT_SCOPES,
    ):
        """``scopes``: the token's scopes; e.g. leave out "webhook:manage" to get Airtable's
        refusal on every webhook endpoint."""
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
        self.scopes: list[str] = list(scopes)
        self._clock_offset = dt.timedelta(0)  # see advance_clock()
        self._hooks: dict[str, _Hook] = {}  # webhooks by id, in creation order
        self._txn_number = 0  # baseTransactionNumber of the last transaction that changed the base
        #: A person editing the base in Airtable's UI (one webhook payload per action).
        self.client = ClientActions(self)
        self._load(base)

