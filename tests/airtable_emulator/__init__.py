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
GET /v0/meta/whoami, and the Webhooks API (create/list/delete/refresh webhooks, enable
notifications, list payloads; one payload per transaction that changes the base).  It is
strict where Airtable is strict (auth, token scopes, 10-record batches, pageSize, unknown
fields, computed fields, cell value types, select choices, record links, missing records,
atomic batches, the per-base rate limit with its penalty window, webhook specifications,
limits and expiry) and it adds fault injection (status codes, dropped connections, delays,
"apply then fail") and a request log for the tests.  It also accepts what Airtable.js 0.12
sends (a trailing slash on table routes, a "method" list parameter).

Test controls beyond the request log and faults (see each method):
    emu.advance_clock(seconds=0, days=0)        # "now" for createdTime, payloads, expiry
    emu.client.create(table, {name: value}) -> record id     # a person in Airtable's UI:
    emu.client.update(table, record_id, {name: value})       # one "client" payload each
    emu.client.delete(table, [record ids])
        # create/update/delete also take source="automation" | "formSubmission" (create only)
        # | "system" | ... and source_metadata={...}: another webhooks-action-metadata source
    emu.client.create_field(table, name, type, options=None) -> field id
    emu.client.rename_field(table, field, new_name)
    emu.client.delete_field(table, field)
    emu.client.change_field_type(table, field, type, options=None)
    emu.client.change_field_to_formula(table, field, formula)  # a person's "Edit field": computed from now on
    emu.client.rename_table(table, new_name)    # the old name is then unknown to the API
    emu.webhooks() -> [dict]                    # as GET .../webhooks lists them
    emu.payloads(webhook_id) -> [dict]          # every stored payload
    emu.push_webhook_error(webhook_id, code="INVALID_FILTERS", disable=None)
    emu.disable_webhook(webhook_id)
    emu.split_payloads_over = N                 # a transaction naming more than N records
                                                # comes as payloads of at most N records each
    emu.set_monthly_calls_left(N)               # the workspace's monthly API calls: after N more
                                                # data requests, 429 PUBLIC_API_BILLING_LIMIT_EXCEEDED
                                                # (None: no cap, the default; 0: spent now)
    Emulator(..., scopes=[...])                 # the token's scopes (whoami reports them)

Modules: common (limits, ids, error bodies, parameter helpers), http (server, handler,
routing and dispatch), records (tables, records, cell validation/coercion, writes),
formulas (formula parser/evaluator), faults (rate limiter, fault injection, request log),
webhooks (the Webhooks API and payload generation), client (the UI person),
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
  scopes ........... https://airtable.com/developers/web/api/scopes
  webhooks ......... https://airtable.com/developers/web/api/webhooks-overview (and the pages
                     listed in webhooks.py)
  Airtable.js ...... https://github.com/Airtable/airtable.js (src/table.ts, src/query.ts)
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
from .common import ApiError  # noqa: F401  (public API)
from .faults import Fault, FaultsMixin, LoggedRequest, _RateLimiter
from .formulas import FormulaMixin
from .http import HttpMixin, _Server
from .records import RecordsMixin, _Iterator
from .webhooks import WebhooksMixin, _Hook, _Txn

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
        self._txn: _Txn | None = None  # the webhook transaction under way, if any
        self._txn_number = 0  # baseTransactionNumber of the last transaction that changed the base
        #: A person editing the base in Airtable's UI (one webhook payload per action).
        self.client = ClientActions(self)
        self._load(base)

