"""The HTTP side: a threading HTTP/1.1 server on 127.0.0.1, the request handler, and
routing/dispatch of each request (auth, rate limit, faults, logging) to the operations."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from .common import (
    MAX_URL_LENGTH, MSG_AUTH, REAL_API_ORIGIN, ApiError, _parse_json, _Response, invalid_request,
    model_not_found, route_not_found,
)
from .faults import LoggedRequest

if TYPE_CHECKING:
    from . import Emulator
    from .records import _Table


#: Scope each endpoint needs (https://airtable.com/developers/web/api/scopes; the
#: "Requirements" box of each endpoint's page).  Webhook endpoints check webhook:manage and
#: their dataTypes' scopes themselves (webhooks.py).  whoami needs none.
_ROUTE_SCOPES = {"read": "data.records:read", "write": "data.records:write",
                 "list_bases": "schema.bases:read", "base_schema": "schema.bases:read"}


@dataclass
class _Route:
    name: str  # handler key, "" when undefined
    kind: str
    table_id: str | None = None
    table_key: str | None = None
    base_key: str | None = None
    record_id: str | None = None


class HttpMixin:
    """Emulator methods: serving, routing and dispatching requests."""

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

    # ---- routing ---------------------------------------------------------------------

    def _route(self, method: str, seg: list[str]) -> _Route:
        R = _Route
        if len(seg) > 2 and seg[-1] == "":
            # One trailing slash is accepted: Airtable.js 0.12 sends every create and batch
            # update/replace/upsert to "/v0/{baseId}/{table}/" (table.ts) and its list()
            # GETs "/v0/{baseId}/{table}/", and Airtable answers them.  UNCONFIRMED for routes
            # Airtable.js never calls with a slash (the emulator treats them alike, as a
            # non-strict router does).  Empty segments elsewhere ("//") stay 404.
            seg = seg[:-1]
        if len(seg) < 2 or seg[0] != "v0" or any(s == "" for s in seg):
            return R("", "other")
        if seg[1] == "bases" and len(seg) >= 4 and seg[3] == "webhooks":
            return self._webhook_route(method, seg)
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
    def _webhook_route(method: str, seg: list[str]) -> _Route:
        """/v0/bases/{baseId}/webhooks[/{webhookId}[/refresh|/enableNotifications|/payloads]]
        (create-a-webhook, list-webhooks, delete-a-webhook, refresh-a-webhook,
        enable-disable-webhook-notifications, list-webhook-payloads)."""
        base_key, rest = seg[2], seg[4:]
        name = ""
        if not rest:
            name = {"GET": "list_webhooks", "POST": "create_webhook"}.get(method, "")
        elif len(rest) == 1:
            name = "delete_webhook" if method == "DELETE" else ""
        elif len(rest) == 2:
            name = {("POST", "refresh"): "refresh_webhook", ("POST", "enableNotifications"): "enable_notifications",
                    ("GET", "payloads"): "list_payloads"}.get((method, rest[1]), "")
        return _Route(name, "webhook" if name else "other", base_key=base_key,
                      record_id=rest[0] if rest else None)

    @staticmethod
    def _count_records(route: _Route, body: Any, query: dict) -> int:
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

    def _dispatch(self, handler: "_Handler", route: _Route, query: dict,
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
            scope = _ROUTE_SCOPES.get(route.kind) or _ROUTE_SCOPES.get(route.name)
            if scope is not None and scope not in self.scopes:
                # A token without the scope an endpoint needs (scopes docs) gets the 403 of the
                # errors page; same body as for a missing model (UNCONFIRMED).
                raise model_not_found()
            self._spend_monthly_call(route.kind)  # 429 when the workspace's monthly calls are spent
            op = getattr(self, "_op_" + route.name)
            if route.kind != "write":
                return op(route, query, body or {})
            # Every API write is one transaction (a batch included): one webhook payload
            # with actionMetadata.source "publicApi" for each hook it matches.  A refused
            # write changes nothing (batches are atomic) and so produces no payload.
            with self._lock:
                before = self._txn_begin()
                try:
                    response = op(route, query, body or {})
                except BaseException:
                    self._txn = None  # refused before any change: nothing to report
                    raise
                self._txn_end(before, "publicApi")
                return response
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

    def _table_for(self, route: _Route) -> _Table:
        # Unknown base or table (for an authenticated token): 403
        # INVALID_PERMISSIONS_OR_MODEL_NOT_FOUND ("You don't have the right permission for
        # the resource, or the resource was not found", errors docs).  A table's old name
        # after a rename (emu.client.rename_table) is such an unknown name: tables are found
        # by id or current name only (create-records: "table names and table ids can be used
        # interchangeably. We recommend using table IDs so you don't need to modify your API
        # request when your table name changes").  A real body for a table name the token does
        # not find is quoted in n8n-io/n8n#12046 (403, this type and MSG_MODEL_NOT_FOUND).
        if route.base_key != self._base_id or route.table_id is None:
            raise model_not_found()
        return self._require_table(route.table_id)


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


