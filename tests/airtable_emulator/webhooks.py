"""The Webhooks API: create/list/delete/refresh webhooks, enable notifications, list
payloads, and the payloads themselves (one per transaction that changes the base).

Sources (Airtable Web API docs):
  overview ......... https://airtable.com/developers/web/api/webhooks-overview
  create ........... https://airtable.com/developers/web/api/create-a-webhook
  list ............. https://airtable.com/developers/web/api/list-webhooks
  refresh .......... https://airtable.com/developers/web/api/refresh-a-webhook
  payloads ......... https://airtable.com/developers/web/api/list-webhook-payloads
  specification .... https://airtable.com/developers/web/api/model/webhooks-specification
  payload model .... https://airtable.com/developers/web/api/model/webhooks-payload
  action metadata .. https://airtable.com/developers/web/api/model/webhooks-action-metadata
                     (its variants as transcribed by generated and hand-written clients:
                     github.com/ezghub1/airtable_php lib/Model/WebhooksActionAnyOf*.php, an
                     OpenAPI-generated client; trigger.dev's @trigger.dev/airtable zod schemas)
  table changed .... https://airtable.com/developers/web/api/model/webhooks-table-changed
  cell formats ..... https://airtable.com/developers/web/api/field-model ("Cell format V2 (webhooks)")
  pyairtable ....... pyairtable/models/webhook.py (Webhook, WebhookPayload), api/base.py

The emulator never sends notification pings (no outgoing HTTP): areNotificationsEnabled
is kept as state, lastSuccessfulNotificationTime and lastNotificationResult stay null.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import secrets
import urllib.parse
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .common import ApiError, _only_keys, _only_params, _Response, _scalar, format_datetime, invalid_request, model_not_found, new_id

if TYPE_CHECKING:
    from .records import _Record, _Table

#: create-a-webhook: "The number of webhooks per base is limited to 10."
MAX_WEBHOOKS_PER_BASE = 10
#: create-a-webhook: webhooks created with a token "will expire and be disabled after 7 days";
#: refresh-a-webhook and list-webhook-payloads: the new expiration time is "7 days after" the call.
WEBHOOK_TTL = dt.timedelta(days=7)
#: create-a-webhook: "After a webhook has expired and been disabled, the webhook's metadata and
#: past payloads can be accessed for an additional 7 days."
EXPIRED_GRACE = dt.timedelta(days=7)
#: list-webhook-payloads: "Payloads are deleted from Airtable's servers after 1 week whether or
#: not the client has seen them. The cursor value for the next payload is never reset."
PAYLOAD_TTL = dt.timedelta(days=7)
#: list-webhook-payloads: "A maximum of 50 payloads can be returned in a single request."
MAX_PAYLOADS_PER_PAGE = 50

#: webhooks-specification: dataTypes "array of ("tableData" | "tableFields" | "tableMetadata")".
DATA_TYPES = ("tableData", "tableFields", "tableMetadata")
#: webhooks-specification: changeTypes "optional<array of ("add" | "remove" | "update")>".
CHANGE_TYPES = ("add", "remove", "update")
#: webhooks-specification: fromSources enum (as transcribed in public typings of the spec).
SOURCES = ("client", "publicApi", "formSubmission", "formPageSubmission", "automation", "system",
           "sync", "anonymousUser", "unknown")
#: webhooks-payload (error variant): code "INVALID_FILTERS" | "INVALID_HOOK", and
#: "INTERNAL_ERROR can be returned if an internal error is encountered".
ERROR_CODES = ("INVALID_FILTERS", "INVALID_HOOK", "INTERNAL_ERROR")
#: webhooks-overview: "The scope webhook:manage is always required for all webhooks API
#: endpoints. Additionally, for create webhook and list webhook payloads, extra scopes are
#: required based on the dataTypes ... data.records:read is required for tableData, and
#: schema.bases:read is required for tableFields and tableMetadata."
SCOPE_WEBHOOKS = "webhook:manage"
DATA_TYPE_SCOPES = {"tableData": "data.records:read", "tableFields": "schema.bases:read",
                    "tableMetadata": "schema.bases:read"}

#: The user behind the token and behind emu.client (actionMetadata.sourceMetadata.user; the
#: payload model's example shows id, email and permissionLevel).
EMULATOR_USER = {"id": "usrEmulatorUser01", "email": "emulator.user@example.com",
                 "permissionLevel": "create", "name": "Emulator User"}
#: The automation and interface page behind emu.client's "automation" and "formPageSubmission"
#: actions unless the test names its own (sourceMetadata.automationId / pageId).  UNCONFIRMED
#: id prefixes: automations show as "wfl..." in Airtable's URLs, interface pages as "pag...".
EMULATOR_AUTOMATION_ID = "wflEmulatorAuto01"
EMULATOR_PAGE_ID = "pagEmulatorPage01"

#: webhooks-action-metadata, per source, the keys of sourceMetadata (None: the variant has no
#: sourceMetadata at all).  "client" and "publicApi" carry {user: {id, email, permissionLevel,
#: name?, profilePicUrl?}}; "formSubmission" {viewId}; "formPageSubmission" {pageId};
#: "automation" {automationId}; "system", "sync", "anonymousUser" and "unknown" only the source.
#: ("unknown" is in trigger.dev's action union and in the fromSources enum, not in the generated
#: PHP client's; the docs add: "We may add additional sources or source metadata in the future".)
SOURCE_METADATA_KEYS: dict[str, tuple[str, ...] | None] = {
    "client": ("user",), "publicApi": ("user",), "formSubmission": ("viewId",),
    "formPageSubmission": ("pageId",), "automation": ("automationId",), "system": None, "sync": None,
    "anonymousUser": None, "unknown": None,
}
assert set(SOURCE_METADATA_KEYS) == set(SOURCES)

#: The keys of a table's changes that hold records (webhooks-table-changed), in payload order.
RECORD_KEYS = ("createdRecordsById", "changedRecordsById", "destroyedRecordIds")


def action_metadata(source: str, source_metadata: dict | None = None) -> dict:
    """actionMetadata for a change made by ``source`` (webhooks-action-metadata); for a user
    source the user defaults to EMULATOR_USER.  The caller supplies the other sources' ids."""
    if source not in SOURCE_METADATA_KEYS:
        raise ValueError(f"unknown source {source!r} (one of {SOURCES})")
    keys = SOURCE_METADATA_KEYS[source]
    if keys is None:
        if source_metadata:
            raise ValueError(f"a {source!r} action has no sourceMetadata")
        return {"source": source}
    meta = dict(source_metadata or {})
    if keys == ("user",):
        meta.setdefault("user", dict(EMULATOR_USER))
    if set(meta) != set(keys) or not all(meta.values()):
        raise ValueError(f"a {source!r} action's sourceMetadata is {{{', '.join(keys)}}}")
    return {"source": source, "sourceMetadata": copy.deepcopy(meta)}

_FILTER_KEYS = {"dataTypes", "recordChangeScope", "changeTypes", "fromSources", "sourceOptions",
                "watchDataInFieldIds", "watchSchemasOfFieldIds"}
_INCLUDE_KEYS = {"includeCellValuesInFieldIds", "includePreviousCellValues", "includePreviousFieldDefinitions"}


def format_ms(value: dt.datetime) -> str:
    """Payload timestamps carry milliseconds ("2022-02-01T21:25:05.663Z", webhooks-payload)."""
    value = value.astimezone(dt.timezone.utc)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def webhook_not_found() -> ApiError:
    # UNCONFIRMED: Airtable does not document the answer for an unknown (or deleted, or gone
    # after expiry) webhook id; the emulator answers like an unknown base or table: 403
    # INVALID_PERMISSIONS_OR_MODEL_NOT_FOUND ("... or the requested model was not found").
    return model_not_found()


def bad_spec(message: str) -> ApiError:
    # UNCONFIRMED: the error type/text for an invalid specification is not documented.
    return invalid_request(f"Invalid request: {message}")


@dataclass
class _Hook:
    id: str
    secret_b64: str
    notification_url: str | None
    spec: dict
    created: dt.datetime
    expires: dt.datetime
    enabled: bool = True  # False after an INVALID_FILTERS/INVALID_HOOK error or disable_webhook()
    notifications: bool = False
    next_payload: int = 1
    payloads: list[tuple[int, dt.datetime, dict]] = field(default_factory=list)


class WebhooksMixin:
    """Emulator methods: the webhook endpoints, payload generation and test controls."""

    # ==================================================================================
    # Test-facing controls
    # ==================================================================================

    def webhooks(self) -> list[dict]:
        """The base's webhooks exactly as GET /v0/bases/{baseId}/webhooks lists them."""
        with self._lock:
            self._purge_hooks()
            return [self._hook_json(h) for h in self._hooks.values()]

    def payloads(self, webhook_id: str) -> list[dict]:
        """Every payload still stored for a webhook (oldest first), as the API returns them."""
        with self._lock:
            self._purge_hooks()
            hook = self._hooks.get(webhook_id)
            if hook is None:
                raise KeyError(f"unknown webhook {webhook_id!r}")
            return [copy.deepcopy(p) for _, _, p in hook.payloads]

    def push_webhook_error(self, webhook_id: str, code: str = "INVALID_FILTERS", *, disable: bool | None = None) -> dict:
        """Append an error payload ({"error": true, "code": ...}, webhooks-payload, error
        variant).  INVALID_FILTERS and INVALID_HOOK also disable the hook (isHookEnabled false:
        "Webhooks may be turned off automatically such as when the specification becomes
        invalid. See error codes.", list-webhooks) unless ``disable`` says otherwise."""
        if code not in ERROR_CODES:
            raise ValueError(f"unknown webhook error code {code!r} (one of {ERROR_CODES})")
        with self._lock:
            hook = self._hooks.get(webhook_id)
            if hook is None:
                raise KeyError(f"unknown webhook {webhook_id!r}")
            now = self._now()
            # pyairtable's WebhookPayload requires timestamp, baseTransactionNumber and
            # payloadFormat; the error variant carries them with error/code (UNCONFIRMED shape).
            payload = {"timestamp": format_ms(now), "baseTransactionNumber": self._txn_number,
                       "payloadFormat": "v0", "error": True, "code": code}
            self._append_payload(hook, payload, now)
            if disable if disable is not None else code in ("INVALID_FILTERS", "INVALID_HOOK"):
                hook.enabled = False
            return copy.deepcopy(payload)

    def disable_webhook(self, webhook_id: str) -> None:
        """Turn a hook off as Airtable does on its own (isHookEnabled false): it gets no more
        payloads and cannot be refreshed; it stays listed until 7 days after its expiry."""
        with self._lock:
            hook = self._hooks.get(webhook_id)
            if hook is None:
                raise KeyError(f"unknown webhook {webhook_id!r}")
            hook.enabled = False

    def advance_clock(self, seconds: float = 0, days: float = 0) -> None:
        """Move the emulator's "now" forward (record createdTime, payload timestamps, webhook
        expiry and payload retention).  The rate limiter and list iterators keep the real
        monotonic clock."""
        if seconds < 0 or days < 0:
            raise ValueError("the clock only moves forward")
        with self._lock:
            self._clock_offset += dt.timedelta(seconds=seconds, days=days)

    # ==================================================================================
    # Hook state
    # ==================================================================================

    def _hook_active(self, hook: _Hook) -> bool:
        return hook.enabled and self._now() < hook.expires

    def _purge_hooks(self) -> None:
        """Forget hooks 7 days past their expiry and payloads older than 7 days."""
        now = self._now()
        for hid in [h.id for h in self._hooks.values() if now >= h.expires + EXPIRED_GRACE]:
            del self._hooks[hid]
        for hook in self._hooks.values():
            if hook.payloads and hook.payloads[0][1] <= now - PAYLOAD_TTL:
                hook.payloads = [p for p in hook.payloads if p[1] > now - PAYLOAD_TTL]

    def _hook_json(self, hook: _Hook) -> dict:
        # list-webhooks response format (every key of the documented object, in its order).
        return {
            "id": hook.id,
            "areNotificationsEnabled": hook.notifications,
            "cursorForNextPayload": hook.next_payload,
            "isHookEnabled": self._hook_active(hook),
            "lastSuccessfulNotificationTime": None,
            "notificationUrl": hook.notification_url,
            "expirationTime": format_datetime(hook.expires),
            "lastNotificationResult": None,
            "specification": copy.deepcopy(hook.spec),
        }

    def _append_payload(self, hook: _Hook, payload: dict, now: dt.datetime) -> None:
        hook.payloads.append((hook.next_payload, now, payload))
        hook.next_payload += 1

    # ==================================================================================
    # Endpoints
    # ==================================================================================

    def _webhook_base(self, route) -> None:
        self._require_scope(SCOPE_WEBHOOKS)
        if route.base_key != self._base_id:
            raise model_not_found()

    def _require_scope(self, scope: str) -> None:
        if scope not in self.scopes:
            # Errors docs, 403: "Accessing a protected resource with API credentials that don't
            # have access to that resource."  Same body as for an unknown model (UNCONFIRMED).
            raise model_not_found()

    def _webhook_for(self, route) -> _Hook:
        self._webhook_base(route)
        self._purge_hooks()
        hook = self._hooks.get(route.record_id or "")
        if hook is None:
            raise webhook_not_found()
        return hook

    def _op_list_webhooks(self, route, query, body) -> _Response:
        with self._lock:
            self._webhook_base(route)
            _only_params(query, set())
            self._purge_hooks()
            return _Response(200, {"webhooks": [self._hook_json(h) for h in self._hooks.values()]})

    def _op_create_webhook(self, route, query, body) -> _Response:
        with self._lock:
            self._webhook_base(route)
            _only_params(query, set())
            _only_keys(body, {"notificationUrl", "specification"})
            url = body.get("notificationUrl")
            if url is not None:
                parts = urllib.parse.urlsplit(url) if isinstance(url, str) else None
                if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
                    # STRICT (undocumented): the URL must be an absolute http(s) URL.
                    raise bad_spec("notificationUrl must be an http(s) URL")
            if "specification" not in body:
                raise bad_spec("specification is required")
            spec = self._validate_spec(body["specification"])
            for data_type in spec["options"]["filters"]["dataTypes"]:
                self._require_scope(DATA_TYPE_SCOPES[data_type])
            self._purge_hooks()
            if len(self._hooks) >= MAX_WEBHOOKS_PER_BASE:
                # create-a-webhook: "The number of webhooks per base is limited to 10."  The type
                # TOO_MANY_WEBHOOKS_IN_BASE is the one public clients check for; status and
                # message are UNCONFIRMED.  Expired hooks still count until they are gone.
                raise ApiError(422, "TOO_MANY_WEBHOOKS_IN_BASE",
                               f"The number of webhooks per base is limited to {MAX_WEBHOOKS_PER_BASE}")
            now = self._now()
            hook = _Hook(
                id=self._fresh_hook_id(), secret_b64=base64.b64encode(secrets.token_bytes(32)).decode("ascii"),
                notification_url=url, spec=spec, created=now, expires=now + WEBHOOK_TTL,
                # list-webhooks example: no notificationUrl -> areNotificationsEnabled false.
                # With a URL the emulator starts with notifications on (UNCONFIRMED).
                notifications=url is not None,
            )
            self._hooks[hook.id] = hook
            # create-a-webhook response: id, macSecretBase64, expirationTime.
            return _Response(200, {"id": hook.id, "macSecretBase64": hook.secret_b64,
                                   "expirationTime": format_datetime(hook.expires)})

    def _fresh_hook_id(self) -> str:
        while True:
            hid = new_id("ach")
            if hid not in self._hooks:
                return hid

    def _op_delete_webhook(self, route, query, body) -> _Response:
        with self._lock:
            hook = self._webhook_for(route)
            _only_params(query, set())
            del self._hooks[hook.id]
            # delete-a-webhook: an empty object (UNCONFIRMED; pyairtable ignores the body).
            return _Response(200, {})

    def _op_refresh_webhook(self, route, query, body) -> _Response:
        with self._lock:
            hook = self._webhook_for(route)
            _only_params(query, set())
            _only_keys(body, set())
            if not self._hook_active(hook):
                # refresh-a-webhook: "this endpoint only applies to active webhooks with an
                # expiration time".  Status/type of the refusal UNCONFIRMED.
                raise ApiError(422, "CANNOT_REFRESH_DISABLED_WEBHOOK", "The webhook is not active and cannot be refreshed")
            hook.expires = self._now() + WEBHOOK_TTL
            return _Response(200, {"expirationTime": format_datetime(hook.expires)})

    def _op_enable_notifications(self, route, query, body) -> _Response:
        with self._lock:
            hook = self._webhook_for(route)
            _only_params(query, set())
            # enable-disable-webhook-notifications: body {"enable": boolean} (pyairtable sends
            # exactly that).
            if set(body) != {"enable"} or not isinstance(body["enable"], bool):
                raise invalid_request()
            hook.notifications = body["enable"]
            return _Response(200, {})  # UNCONFIRMED: empty object

    def _op_list_payloads(self, route, query, body) -> _Response:
        with self._lock:
            hook = self._webhook_for(route)
            for data_type in hook.spec["options"]["filters"]["dataTypes"]:
                self._require_scope(DATA_TYPE_SCOPES[data_type])
            _only_params(query, {"cursor", "limit"})
            cursor = _positive_int(_scalar(query, "cursor"), 1)
            # list-webhook-payloads: "A maximum of 50 payloads can be returned in a single
            # request."  The docs state a cap, not an error, so a larger limit is capped (a page
            # holds at most 50 and mightHaveMore says what is left); UNCONFIRMED that Airtable
            # does not refuse it.  0, negative or non-numeric: STRICT (undocumented), refused.
            limit = min(_positive_int(_scalar(query, "limit"), MAX_PAYLOADS_PER_PAGE), MAX_PAYLOADS_PER_PAGE)
            if self._hook_active(hook):
                # "Calling this endpoint will also extend the life of the webhook if it is
                # active with an expiration time. The new expiration time will be 7 days after
                # the list payloads call."
                hook.expires = self._now() + WEBHOOK_TTL
            kept = [(n, p) for n, _, p in hook.payloads if n >= cursor]
            page = kept[:limit]
            return _Response(200, {
                "payloads": [copy.deepcopy(p) for _, p in page],
                # "If there are no returned payloads, then the cursor in the response will be
                # the same as the cursor specified in the request."
                "cursor": page[-1][0] + 1 if page else cursor,
                "mightHaveMore": len(kept) > len(page),
            })

    # ==================================================================================
    # Specification validation (webhooks-specification)
    # ==================================================================================

    def _validate_spec(self, spec: Any) -> dict:
        if not isinstance(spec, dict) or set(spec) != {"options"} or not isinstance(spec["options"], dict):
            raise bad_spec("specification must be {\"options\": {...}}")
        options = spec["options"]
        if set(options) - {"filters", "includes"}:
            raise bad_spec(f"unknown specification option(s) {sorted(set(options) - {'filters', 'includes'})}")
        filters = options.get("filters")
        if not isinstance(filters, dict):
            raise bad_spec("options.filters is required")  # "filters: object — required"
        if set(filters) - _FILTER_KEYS:
            raise bad_spec(f"unknown filter(s) {sorted(set(filters) - _FILTER_KEYS)}")
        # "Aside from dataTypes, the keys in a filters object are optional."
        data_types = filters.get("dataTypes")
        self._check_enum_list("dataTypes", data_types, DATA_TYPES)
        scope_table: _Table | None = None
        if "recordChangeScope" in filters:
            scope = filters["recordChangeScope"]
            # "Only generate payloads for changes in the specified TableId or ViewId."  Ids
            # only: "tables, fields, and views in the specification must be specified by ID".
            scope_table = self._table_of_scope(scope) if isinstance(scope, str) else None
            if scope_table is None:
                raise bad_spec(f"recordChangeScope {scope!r} is not a table or view id of this base")
        if "changeTypes" in filters:
            self._check_enum_list("changeTypes", filters["changeTypes"], CHANGE_TYPES)
        if "fromSources" in filters:
            self._check_enum_list("fromSources", filters["fromSources"], SOURCES)
        for key in ("watchDataInFieldIds", "watchSchemasOfFieldIds"):
            if key in filters:
                self._check_field_ids(key, filters[key], scope_table)
        if "sourceOptions" in filters:
            self._check_source_options(filters["sourceOptions"])
        if "includes" in options:
            includes = options["includes"]
            if not isinstance(includes, dict) or set(includes) - _INCLUDE_KEYS:
                raise bad_spec("includes accepts includeCellValuesInFieldIds, includePreviousCellValues, "
                               "includePreviousFieldDefinitions")
            cells = includes.get("includeCellValuesInFieldIds")
            if "includeCellValuesInFieldIds" in includes and cells != "all":
                self._check_field_ids("includeCellValuesInFieldIds", cells, scope_table)
            for key in ("includePreviousCellValues", "includePreviousFieldDefinitions"):
                if key in includes and not isinstance(includes[key], bool):
                    raise bad_spec(f"includes.{key} must be a boolean")
        return copy.deepcopy(spec)

    @staticmethod
    def _check_enum_list(name: str, value: Any, allowed: tuple[str, ...]) -> None:
        # STRICT (undocumented): an empty list, a duplicate or an unknown value is refused.
        if (not isinstance(value, list) or not value or len(set(map(str, value))) != len(value)
                or any(v not in allowed for v in value)):
            raise bad_spec(f"filters.{name} must be a non-empty array of {', '.join(allowed)}")

    def _table_of_scope(self, scope: str) -> _Table | None:
        for t in self._tables:
            if t.id == scope or any(v.get("id") == scope for v in t.views):
                return t
        return None

    def _check_field_ids(self, name: str, value: Any, scope_table: _Table | None) -> None:
        tables = [scope_table] if scope_table is not None else self._tables
        known = {f["id"] for t in tables for f in t.fields}
        if not isinstance(value, list) or not value or any(v not in known for v in value):
            # STRICT (undocumented): field ids only (no names), of the scoped table if any.
            raise bad_spec(f"{name} must be a non-empty array of field ids"
                           + (" of the recordChangeScope table" if scope_table is not None else " of this base"))

    def _check_source_options(self, value: Any) -> None:
        # pyairtable's model: sourceOptions {formSubmission: {viewId}, formPageSubmission: {pageId}}.
        if not isinstance(value, dict) or not value or set(value) - {"formSubmission", "formPageSubmission"}:
            raise bad_spec("sourceOptions accepts formSubmission and formPageSubmission")
        form = value.get("formSubmission")
        if form is not None and (not isinstance(form, dict) or set(form) != {"viewId"}
                                 or self._table_of_scope(form["viewId"]) is None
                                 or str(form["viewId"]).startswith("tbl")):
            raise bad_spec("sourceOptions.formSubmission.viewId must be a view id of this base")
        page = value.get("formPageSubmission")
        if page is not None and (not isinstance(page, dict) or set(page) != {"pageId"} or not isinstance(page["pageId"], str)):
            raise bad_spec("sourceOptions.formPageSubmission.pageId must be a page id")

    # ==================================================================================
    # Transactions -> payloads
    # ==================================================================================

    # A transaction's payload is the difference between the base before and after it.  Field
    # and table actions (UI only, rare) compare the whole base.  Record writes compare only
    # the records they can change, captured before their first change ("touch"):
    #   * the records written, created or deleted, and those whose cells the write changes as
    #     a side effect (inverse links kept in step, links to deleted records cleared) --
    #     records.py calls _txn_touch/_txn_created from _apply, _sync_inverse, _remove,
    #     _insert and _commit_ctx, the only places that change records;
    #   * the records whose computed cells read a captured record through a link field (a
    #     lookup of one of its fields, a formula showing the link, i.e. its primary field),
    #     and so on through lookups of lookups: computed cells are otherwise local to their
    #     record.
    # Every other record is unchanged by the transaction, so the payloads are exactly those
    # of a whole-base comparison (test_emulator_webhooks.py checks both ways agree).

    #: Compare the whole base for every transaction (the reference the tests check against).
    _txn_whole_base = False

    #: Test control: a transaction whose payload for a hook names more than this many records
    #: is delivered as several payloads of at most this many records each, with the same
    #: timestamp, baseTransactionNumber and actionMetadata (webhooks-payload: "this action may
    #: be split across multiple payloads").  None (the default): never split.
    split_payloads_over: int | None = None

    def _txn_begin(self, whole_base: bool = False) -> _Txn | None:
        """Called with the lock held before a change to the base: starts tracking what the
        change touches, or returns None when no hook could receive a payload (then nothing
        is computed)."""
        self._purge_hooks()
        self._txn = None
        if not any(self._hook_active(h) for h in self._hooks.values()):
            return None
        if whole_base or self._txn_whole_base:
            txn = _Txn(whole_state=self._base_state())
        else:
            txn = _Txn(tables={t.id: (t.name, t.description, _field_heads(t)) for t in self._tables})
        self._txn = txn
        return txn

    def _txn_end(self, txn: _Txn | None, source: str, source_metadata: dict | None = None) -> None:
        """One transaction: the changes since ``_txn_begin`` become one payload for every
        active hook whose specification they match (several when ``split_payloads_over``
        splits it).  A transaction that changed nothing (for example an update writing the
        values already there) makes no payload: payloads describe changes (webhooks-payload);
        UNCONFIRMED for no-op writes.  ``source``/``source_metadata``: see action_metadata()."""
        self._txn = None
        if txn is None:
            return
        action = action_metadata(source, source_metadata)
        if txn.whole_state is not None:
            before, after = txn.whole_state, self._base_state()
            names = {t: {**before.get(t, {}).get("names", {}), **after.get(t, {}).get("names", {})}
                     for t in set(before) | set(after)}
            name_of = lambda tid, rid: names.get(tid, {}).get(rid, "")  # noqa: E731
        else:
            before, after = self._touched_states(txn)
            name_of = self._names_now(txn)
        changes = _diff_states(before, after)
        if not changes:
            return
        # A schema action (whole-base comparison) can change a field's type: its previous
        # cell values are then shown in the format of the field as it was.  A record write
        # never changes a field's type, so its previous values use the fields as they are.
        fields_before = {tid: st["fields"] for tid, st in before.items()} if txn.whole_state is not None else None
        self._txn_number += 1
        now = self._now()
        for hook in self._hooks.values():
            if not self._hook_active(hook):
                continue
            for payload in self._payloads_for(hook, changes, after, name_of, action, now, fields_before):
                self._append_payload(hook, payload, now)

    # ---- record tracking (called by records.py) --------------------------------------

    def _txn_created(self, t: _Table, rec: _Record) -> None:
        """``rec`` is new in this transaction: it has no "before" state."""
        txn = self._txn
        if txn is None or txn.whole_state is not None:
            return
        key = (t.id, rec.id)
        txn.seen.add(key)
        txn.direct.add(key)  # nothing links a record that did not exist yet
        txn.created.setdefault(t.id, []).append(rec.id)

    def _txn_touch(self, t: _Table, rec: _Record, *, removing: bool = False) -> None:
        """``rec`` is about to change (or, ``removing``, to be deleted): capture it, and every
        record whose computed cells read it through links, unless already captured."""
        txn = self._txn
        if txn is None or txn.whole_state is not None:
            return
        key = (t.id, rec.id)
        if key not in txn.seen:
            self._txn_capture(txn, t, rec)
        if removing and rec.id not in txn.names.setdefault(t.id, {}):
            # A deleted record's name (for link cells naming it in "previous" values).
            txn.names[t.id][rec.id] = _primary_text(self._cell(t, rec, t.field_by_id(t.primary_field_id)))
        if key in txn.direct:
            return
        txn.direct.add(key)
        if txn.readers is None:
            txn.readers, txn.nonlocal_ = self._link_readers()
        work = [(t, rec, True)]
        while work:
            t, rec, direct = work.pop()
            for s, link_id, reads in txn.readers.get(t.id, ()):
                # A written record may change in any field; a record captured only because it
                # reads another one changes in its non-local computed fields only.
                if not direct and not reads & txn.nonlocal_[t.id]:
                    continue
                for xid in s.linkers(link_id, rec.id):
                    x = s.index.get(xid)
                    if x is None or (s.id, xid) in txn.seen:
                        continue
                    self._txn_capture(txn, s, x)
                    work.append((s, x, False))

    def _txn_capture(self, txn: _Txn, t: _Table, rec: _Record) -> None:
        txn.seen.add((t.id, rec.id))
        txn.records.setdefault(t.id, {})[rec.id] = (rec.auto, *self._record_state(t, rec))

    def _link_readers(self) -> tuple[dict[str, list[tuple[_Table, str, set[str]]]], dict[str, set[str]]]:
        """The schema's cross-record reads: for each table T, the (table S, link field of S to
        T, fields of T read through it) of S's lookups and formulas; and for each table its
        non-local fields (lookups, and formulas using a link or a non-local field)."""
        from .formulas import FormulaError, _FormulaParser

        readers: dict[str, list[tuple[_Table, str, set[str]]]] = {}
        nonlocal_: dict[str, set[str]] = {}
        for s in self._tables:
            reads: dict[str, set[str]] = {}  # link field id -> field ids read in the linked table
            links: dict[str, _Table] = {}
            for f in s.fields:
                linked_id = (f.get("options") or {}).get("linkedTableId") if f["type"] == "multipleRecordLinks" else None
                linked = self._table(linked_id) if linked_id else None
                if linked is not None:
                    links[f["id"]] = linked
            nonlocal_s: set[str] = set()
            formula_refs: dict[str, set[str]] = {}
            for f in s.fields:
                opts = f.get("options") or {}
                if f["type"] in ("multipleLookupValues", "lookup") and opts.get("recordLinkFieldId"):
                    link = s.field(opts["recordLinkFieldId"])
                    linked = links.get(link["id"]) if link is not None else None
                    target = linked.field(opts.get("fieldIdInLinkedTable", "")) if linked is not None else None
                    if target is not None:
                        reads.setdefault(link["id"], set()).add(target["id"])
                        nonlocal_s.add(f["id"])
                elif f["type"] == "formula":
                    try:
                        refs = _field_refs(_FormulaParser(opts.get("formula", ""), s).parse())
                    except FormulaError:
                        continue  # an invalid formula is always empty
                    formula_refs[f["id"]] = refs
                    for ref in refs & links.keys():
                        # A link cell in a formula shows the linked records' primary values.
                        reads.setdefault(ref, set()).add(links[ref].primary_field_id)
            grown = True
            while grown:
                grown = False
                for fid, refs in formula_refs.items():
                    if fid not in nonlocal_s and refs & (nonlocal_s | links.keys()):
                        nonlocal_s.add(fid)
                        grown = True
            nonlocal_[s.id] = nonlocal_s
            for link_id, read in reads.items():
                readers.setdefault(links[link_id].id, []).append((s, link_id, read))
        return readers, nonlocal_

    # ---- states ----------------------------------------------------------------------

    def _touched_states(self, txn: _Txn) -> tuple[dict, dict]:
        """The before and after states of the captured and created records, in the shape of
        _base_state and in table order (records are only ever appended, so ``auto`` orders
        them as the table does)."""
        before: dict[str, Any] = {}
        after: dict[str, Any] = {}
        by_auto = lambda item: item[1][0]  # noqa: E731
        for t in self._tables:
            name, description, heads = txn.tables[t.id]
            captured = txn.records.get(t.id, {})
            before[t.id] = {"name": name, "description": description, "fields": heads, "records": {
                rid: (created, cells) for rid, (_, created, cells) in sorted(captured.items(), key=by_auto)}}
            ids = list(captured) + txn.created.get(t.id, [])
            live = sorted((t.index[rid] for rid in ids if rid in t.index), key=lambda r: r.auto)
            after[t.id] = {"name": t.name, "description": t.description, "fields": {f["id"]: f for f in t.fields},
                           "records": {rec.id: self._record_state(t, rec) for rec in live}}
        return before, after

    def _names_now(self, txn: _Txn):
        """The primary-field text of a linked record, computed when a payload needs it: the
        record's current one, or for a record deleted by the transaction its last one."""
        cache: dict[tuple[str, str], str] = {}

        def name_of(tid: str, rid: str) -> str:
            key = (tid, rid)
            if key not in cache:
                t = self._table(tid)
                rec = t.index.get(rid) if t is not None else None
                if rec is not None:
                    cache[key] = _primary_text(self._cell(t, rec, t.field_by_id(t.primary_field_id)))
                else:
                    cache[key] = txn.names.get(tid, {}).get(rid, "")
            return cache[key]

        return name_of

    def _base_state(self) -> dict:
        state: dict[str, Any] = {}
        for t in self._tables:
            prim = t.field_by_id(t.primary_field_id)
            state[t.id] = {
                "name": t.name, "description": t.description,
                "fields": {f["id"]: copy.deepcopy(f) for f in t.fields},
                "records": {rec.id: self._record_state(t, rec) for rec in t.records},
                "names": {rec.id: _primary_text(self._cell(t, rec, prim)) for rec in t.records},
            }
        return state

    def _record_state(self, t: _Table, rec: _Record) -> tuple[str, dict]:
        """(createdTime, non-empty cells by field id) as the diff compares them."""
        cells = {}
        for f in t.fields:
            value = self._state_cell(t, rec, f)
            if value is not None and value != "" and value != [] and value is not False:
                cells[f["id"]] = value
        return rec.created, cells

    def _state_cell(self, t: _Table, rec: _Record, f: dict) -> Any:
        """The cell as the diff compares it: the records-API value, except lookups, whose
        webhook format keeps the values per linked record (field-model, Lookup, "Cell format
        V2 (webhooks)": {valuesByLinkedRecordId, linkedRecordIds})."""
        if f["type"] in ("multipleLookupValues", "lookup"):
            opts = f.get("options") or {}
            link = t.field(opts.get("recordLinkFieldId", "")) if opts.get("recordLinkFieldId") else None
            if link is None:
                return None
            linked = self._require_table(link["options"]["linkedTableId"])
            target = linked.field(opts.get("fieldIdInLinkedTable", ""))
            ids = list(rec.fields.get(link["id"]) or [])
            if target is None or not ids:
                return None
            values = {}
            for rid in ids:
                other = linked.index.get(rid)
                value = self._cell(linked, other, target) if other else None
                values[rid] = copy.deepcopy(value if isinstance(value, list) else ([] if value in (None, "", False) else [value]))
            return {"valuesByLinkedRecordId": values, "linkedRecordIds": ids}
        return copy.deepcopy(self._cell(t, rec, f))

    def _payloads_for(self, hook: _Hook, changes: dict, after: dict, name_of, action: dict,
                      now: dt.datetime, fields_before: dict | None = None) -> list[dict]:
        """The payloads of one transaction for one hook: none, one, or (split_payloads_over)
        several.  ``fields_before``: the tables' fields before the transaction, by id, when it
        may have changed them (else the fields after it serve for previous values too)."""
        options = hook.spec["options"]
        filters, includes = options["filters"], options.get("includes") or {}
        # webhooks-specification, fromSources: "Only generate payloads for changes from these
        # sources."  (sourceOptions, which narrows form submissions to a view or page, is
        # validated but does not filter: UNCONFIRMED semantics.)
        if "fromSources" in filters and action["source"] not in filters["fromSources"]:
            return []
        data_types = set(filters["dataTypes"])
        change_types = set(filters.get("changeTypes") or CHANGE_TYPES)
        scope = filters.get("recordChangeScope")
        scope_table = self._table_of_scope(scope) if scope else None
        watch_data = set(filters["watchDataInFieldIds"]) if "watchDataInFieldIds" in filters else None
        watch_schema = set(filters["watchSchemasOfFieldIds"]) if "watchSchemasOfFieldIds" in filters else None
        tables_out: dict[str, Any] = {}
        for tid, ch in changes.items():
            if scope_table is not None and tid != scope_table.id:
                continue
            out: dict[str, Any] = {}
            if "tableMetadata" in data_types and "update" in change_types and ch["metadata"]:
                # webhooks-table-changed: changedMetadata {current: {name, description},
                # previous: {...}} (previous as in the documented example).
                out["changedMetadata"] = copy.deepcopy(ch["metadata"])
            if "tableFields" in data_types:
                self._field_changes(out, ch, change_types, watch_schema, includes)
            records_out: dict[str, Any] = {}
            if "tableData" in data_types:
                fields_now = after[tid]["fields"]
                fields_then = fields_before[tid] if fields_before is not None else fields_now
                records_out = self._record_changes(ch, change_types, watch_data, includes, fields_now, name_of,
                                                   fields_then)
                out.update(records_out)
            if records_out and scope is not None and scope_table is not None and scope != scope_table.id:
                # webhooks-table-changed: changedViewsById "is only included when
                # recordChangeScope is a view id".  Views do not filter records in the emulator,
                # so the view sees the table's record changes (UNCONFIRMED: whether the
                # table-level keys are also present then; the documented example has both).
                out["changedViewsById"] = {scope: copy.deepcopy(records_out)}
            if out:
                tables_out[tid] = out
        if not tables_out:
            return []
        # webhooks-payload: timestamp, baseTransactionNumber, actionMetadata, payloadFormat "v0",
        # changedTablesById.  webhooks-action-metadata: see action_metadata().  A split
        # transaction's payloads share the first four ("The split payloads will have the same
        # timestamp, baseTransactionNumber, and actionMetadata").
        return [{
            "timestamp": format_ms(now),
            "baseTransactionNumber": self._txn_number,
            "actionMetadata": copy.deepcopy(action),
            "payloadFormat": "v0",
            "changedTablesById": part,
        } for part in _split_tables(tables_out, self.split_payloads_over)]

    @staticmethod
    def _field_changes(out: dict, ch: dict, change_types: set, watch: set | None, includes: dict) -> None:
        def watched(fid: str) -> bool:
            return watch is None or fid in watch

        if "add" in change_types:
            created = {fid: info for fid, info in ch["fields_created"].items() if watched(fid)}
            if created:
                out["createdFieldsById"] = created  # {fid: {name, type}}
        if "update" in change_types:
            changed = {}
            for fid, (cur, prev) in ch["fields_changed"].items():
                if not watched(fid):
                    continue
                item: dict[str, Any] = {"current": cur}
                if includes.get("includePreviousFieldDefinitions"):
                    item["previous"] = prev
                changed[fid] = item
            if changed:
                out["changedFieldsById"] = changed
        if "remove" in change_types:
            destroyed = [fid for fid in ch["fields_destroyed"] if watched(fid)]
            if destroyed:
                out["destroyedFieldIds"] = destroyed

    def _record_changes(self, ch: dict, change_types: set, watch: set | None, includes: dict,
                        fields_now: dict, name_of, fields_then: dict | None = None) -> dict:
        """``fields_now``/``fields_then``: the table's fields after/before the transaction, by
        id; ``name_of(table id, record id)``: a linked record's primary-field text (see
        _txn_end)."""
        out: dict[str, Any] = {}
        v2 = lambda fid, value: _v2_cell(fields_now.get(fid), value, name_of)  # noqa: E731
        # A previous value in the cell format of its field as it was then (a select turned into
        # text showed {id, name, color} before; field-model, "Cell format V2 (webhooks)").
        fields_then = fields_then if fields_then is not None else fields_now
        v2_then = lambda fid, value: _v2_cell(fields_then.get(fid) or fields_now.get(fid), value, name_of)  # noqa: E731
        if "add" in change_types and ch["created"]:
            created = {}
            for rid, (created_time, cells) in ch["created"].items():
                if watch is not None and not watch.intersection(cells):
                    continue  # UNCONFIRMED: a new record counts when it fills a watched field
                created[rid] = {"cellValuesByFieldId": {fid: v2(fid, v) for fid, v in cells.items()},
                                "createdTime": created_time}
            if created:
                out["createdRecordsById"] = created
        if "update" in change_types and ch["changed"]:
            changed = {}
            wanted = includes.get("includeCellValuesInFieldIds")
            for rid, (diffs, cells) in ch["changed"].items():
                fids = [fid for fid in diffs if watch is None or fid in watch]
                if not fids:
                    continue
                # A cleared cell is reported as null in "current" (UNCONFIRMED).
                item: dict[str, Any] = {"current": {"cellValuesByFieldId": {fid: v2(fid, diffs[fid][1]) for fid in fids}}}
                if includes.get("includePreviousCellValues"):
                    item["previous"] = {"cellValuesByFieldId": {fid: v2_then(fid, diffs[fid][0]) for fid in fids}}
                if wanted:
                    keep = cells.keys() if wanted == "all" else wanted
                    unchanged = {fid: v2(fid, cells[fid]) for fid in keep if fid in cells and fid not in diffs}
                    if unchanged:
                        # UNCONFIRMED: with nothing unchanged to show (every listed field changed,
                        # or is empty) the key is left out rather than sent as an empty object.
                        item["unchanged"] = {"cellValuesByFieldId": unchanged}
                changed[rid] = item
            if changed:
                out["changedRecordsById"] = changed
        if "remove" in change_types and ch["destroyed"]:
            out["destroyedRecordIds"] = list(ch["destroyed"])
        return out


@dataclass
class _Txn:
    """One transaction under way (see WebhooksMixin._txn_begin)."""

    whole_state: dict | None = None  # whole-base comparison: the base before (_base_state)
    # Otherwise: the tables before, (name, description, {field id: {name, type}}) by id ...
    tables: dict[str, tuple] = field(default_factory=dict)
    # ... and the captured records: table id -> record id -> (auto, createdTime, cells).
    records: dict[str, dict[str, tuple]] = field(default_factory=dict)
    created: dict[str, list[str]] = field(default_factory=dict)  # table id -> new record ids
    names: dict[str, dict[str, str]] = field(default_factory=dict)  # deleted records' names
    seen: set[tuple[str, str]] = field(default_factory=set)  # (table id, record id) captured or new
    direct: set[tuple[str, str]] = field(default_factory=set)  # ... whose readers are captured
    readers: dict | None = None  # WebhooksMixin._link_readers(), on first use
    nonlocal_: dict | None = None


def _split_tables(tables_out: dict, most: int | None) -> list[dict]:
    """A payload's changedTablesById as one part, or, when it names more than ``most`` records
    (created, changed and destroyed, over every table), as parts of at most ``most`` records
    each, in order.  webhooks-payload: "Since many records may be affected, this action may be
    split across multiple payloads."  How Airtable cuts them is not documented (UNCONFIRMED):
    here the first part also carries the tables' field and metadata changes, and a part's
    changedViewsById holds that part's records of the view's table."""
    items: list[tuple[str, str, str, Any]] = []
    for tid, out in tables_out.items():
        for key in RECORD_KEYS:
            value = out.get(key)
            if key == "destroyedRecordIds":
                items.extend((tid, key, rid, None) for rid in value or [])
            else:
                items.extend((tid, key, rid, item) for rid, item in (value or {}).items())
    if not most or len(items) <= most:
        return [tables_out]
    parts = []
    for start in range(0, len(items), most):
        records: dict[str, dict[str, Any]] = {}
        for tid, key, rid, item in items[start:start + most]:
            if key == "destroyedRecordIds":
                records.setdefault(tid, {}).setdefault(key, []).append(rid)
            else:
                records.setdefault(tid, {}).setdefault(key, {})[rid] = item
        part: dict[str, Any] = {}
        for tid, out in tables_out.items():
            table: dict[str, Any] = {}
            for key, value in out.items():
                if key in RECORD_KEYS:
                    if key in records.get(tid, {}):
                        table[key] = records[tid][key]
                elif key == "changedViewsById":
                    if tid in records:
                        table[key] = {view: copy.deepcopy(records[tid]) for view in value}
                elif start == 0:
                    table[key] = value
            if table:
                part[tid] = table
        parts.append(part)
    return parts


def _field_heads(t: _Table) -> dict[str, dict]:
    """What the field diff compares: {field id: {name, type}}."""
    return {f["id"]: {"name": f["name"], "type": f["type"]} for f in t.fields}


def _field_refs(node: Any) -> set[str]:
    """The field ids a parsed formula (formulas._FormulaParser) refers to."""
    if isinstance(node, list):
        return set().union(*map(_field_refs, node)) if node else set()
    if not isinstance(node, tuple) or not node:
        return set()
    if node[0] == "field":
        return {node[1]}
    if node[0] == "lit":
        return set()
    return set().union(*(_field_refs(part) for part in node[1:]))


def _primary_text(value: Any) -> str:
    from .formulas import _display, _to_str

    if isinstance(value, list):
        return ", ".join(_display(v) for v in value)
    return _display(value) if isinstance(value, dict) else _to_str(value)


def _v2_cell(f: dict | None, value: Any, name_of) -> Any:
    """A stored cell in the webhooks cell format (field-model, "Cell format V2 (webhooks)"):
    single select {id, name, color?}; multiple select [{id, name, color?}]; link to another
    record [{id, name}] (name = the linked record's primary value); lookup as kept by
    _state_cell; every other type as in the records API."""
    if value is None or f is None:
        return copy.deepcopy(value)
    type_ = f["type"]
    if type_ in ("singleSelect", "multipleSelects"):
        choices = {c["name"]: c for c in (f.get("options") or {}).get("choices", [])}

        def choice(name: str) -> dict:
            c = choices.get(name, {"id": None, "name": name})
            out = {"id": c.get("id"), "name": name}
            if c.get("color"):
                out["color"] = c["color"]
            return out

        return [choice(n) for n in value] if type_ == "multipleSelects" else choice(value)
    if type_ == "multipleRecordLinks":
        linked = f["options"]["linkedTableId"]
        return [{"id": rid, "name": name_of(linked, rid)} for rid in value]
    return copy.deepcopy(value)


def retyped_cell_changed(f_before: dict, f_after: dict, old: Any, new: Any) -> bool:
    """Whether a cell of a field whose type changed (emu.client.change_field_type) changed:
    its value differs in the webhooks cell format, which is how payloads show it (a select
    cell {id, name, color} that became the text "name" changed although both are stored as
    "name"; a text cell that became long text did not).  Link fields are never retyped, so no
    linked record names are needed."""
    no_names = lambda tid, rid: ""  # noqa: E731
    return old != new or _v2_cell(f_before, old, no_names) != _v2_cell(f_after, new, no_names)


def _diff_states(before: dict, after: dict) -> dict:
    """Per table: created/changed/destroyed records and fields, and metadata changes."""
    changes: dict[str, Any] = {}
    for tid in list(before) + [t for t in after if t not in before]:
        b, a = before.get(tid), after.get(tid)
        if b is None or a is None:
            continue  # tables are never created or destroyed by the emulator
        ch: dict[str, Any] = {"created": {}, "changed": {}, "destroyed": [], "fields_created": {},
                              "fields_changed": {}, "fields_destroyed": [], "metadata": None}
        # Fields: created / destroyed, and name or type changes (webhooks-table-changed:
        # createdFieldsById {name, type}; changedFieldsById current/previous with the changed
        # attributes only, as in the documented example).  Choice lists added by typecast do
        # not change name or type and so make no field change (UNCONFIRMED).
        for fid, f in a["fields"].items():
            if fid not in b["fields"]:
                ch["fields_created"][fid] = {"name": f["name"], "type": f["type"]}
            else:
                old = b["fields"][fid]
                cur = {k: f[k] for k in ("name", "type") if f[k] != old[k]}
                if cur:
                    ch["fields_changed"][fid] = (cur, {k: old[k] for k in cur})
        ch["fields_destroyed"] = [fid for fid in b["fields"] if fid not in a["fields"]]
        gone_fields = set(ch["fields_destroyed"])
        retyped = {fid for fid, (cur, _) in ch["fields_changed"].items() if "type" in cur}
        for rid, (created, cells) in a["records"].items():
            if rid not in b["records"]:
                ch["created"][rid] = (created, cells)
                continue
            old_cells = b["records"][rid][1]
            diffs = {}
            for fid in list(cells) + [x for x in old_cells if x not in cells]:
                if fid in gone_fields:
                    continue  # a destroyed field is reported as destroyedFieldIds only
                if fid in retyped:
                    if retyped_cell_changed(b["fields"][fid], a["fields"][fid], old_cells.get(fid), cells.get(fid)):
                        diffs[fid] = (old_cells.get(fid), cells.get(fid))
                elif cells.get(fid) != old_cells.get(fid):
                    diffs[fid] = (old_cells.get(fid), cells.get(fid))
            if diffs:
                ch["changed"][rid] = (diffs, cells)
        ch["destroyed"] = [rid for rid in b["records"] if rid not in a["records"]]
        # Table name/description: changedMetadata {current, previous} with the changed
        # properties only, as changedFieldsById does (webhooks-table-changed; its example
        # changes both name and description).  pyairtable's model reads either (its TableInfo
        # defaults a missing name to "").  previous is always there: the includes object has
        # no switch for it (UNCONFIRMED).
        changed_meta = [k for k in ("name", "description") if a[k] != b[k]]
        if changed_meta:
            ch["metadata"] = {"current": {k: a[k] for k in changed_meta},
                              "previous": {k: b[k] for k in changed_meta}}
        if any(ch[k] for k in ch):
            changes[tid] = ch
    return changes


def _positive_int(value: str | None, default: int) -> int:
    if value is None:
        return default
    if not value.isdigit() or int(value) < 1:
        # STRICT (undocumented): cursor and limit are positive integers.
        raise invalid_request()
    return int(value)
