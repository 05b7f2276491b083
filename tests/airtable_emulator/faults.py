"""Request log, fault injection and the per-base rate limiter (the test-facing
controls of the transport; Airtable's own rate-limit behaviour is cited on _RateLimiter)."""

from __future__ import annotations

import math
import sys
import threading
import urllib.parse
from collections import deque
from dataclasses import dataclass
from typing import Callable

from .common import MSG_RATE_LIMIT, ApiError, _Response, default_error_body

#: The workspace's monthly API calls are spent (Free 1,000, Team 100,000 a month, shared by every
#: integration: support.airtable.com/docs/managing-api-call-limits-in-airtable): every data request
#: gets 429 with this error type until the month turns.  The body is Airtable's usual error object
#: (errors docs: {"error": {"type", "message"}}).  UNCONFIRMED: the type's name is as integrations
#: that met it report it (Airtable's own pages in reach do not name it), and the message is ours.
BILLING_LIMIT_TYPE = "PUBLIC_API_BILLING_LIMIT_EXCEEDED"
MSG_BILLING_LIMIT = "The monthly API call limit of this workspace's billing plan has been exceeded."
#: Which requests the monthly cap refuses: record reads and writes and the webhook endpoints
#: (they carry record data).  UNCONFIRMED: one public report of a spent quota says the metadata
#: endpoints (/v0/meta/...) kept answering 200, so they are left alone.
BILLED_KINDS = frozenset({"read", "write", "webhook"})

# --------------------------------------------------------------------------------------
# Request log and faults (public)
# --------------------------------------------------------------------------------------


@dataclass
class LoggedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    status: int | None  # None until answered, and when the connection was dropped
    kind: str  # "read" | "write" | "meta" | "webhook" | "other"
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



class FaultsMixin:
    """Emulator methods: rate-limit configuration, fault injection and the request log."""

    _monthly_calls_left: int | None = None  # None: no monthly cap (see set_monthly_calls_left)

    # ---- configuration ---------------------------------------------------------------

    def set_rate_limit(
        self, rps: float | None, penalty_s: float | None = None, retry_after: bool | None = None
    ) -> None:
        """Change the limit (None disables it); also forgets past arrivals and any penalty."""
        self._limiter.configure(rps, self._limiter.penalty_s if penalty_s is None else penalty_s)
        if retry_after is not None:
            self.retry_after = retry_after

    def set_monthly_calls_left(self, calls: int | None) -> None:
        """The workspace's monthly API calls: ``None`` (the default) for no cap; ``N`` to answer
        the next N data requests (record reads and writes, webhooks) and refuse every one after
        with 429 PUBLIC_API_BILLING_LIMIT_EXCEEDED; ``0`` to refuse from now on.  Setting it
        again (``None``: the month turned, or the plan changed) ends the refusals."""
        with self._fault_lock:
            self._monthly_calls_left = calls

    def _spend_monthly_call(self, kind: str) -> None:
        """Called for each authenticated request about to be served: counts it against the
        monthly calls, or refuses it when they are spent."""
        if kind not in BILLED_KINDS:
            return
        with self._fault_lock:
            left = self._monthly_calls_left
            if left is None:
                return
            if left <= 0:
                raise ApiError(429, BILLING_LIMIT_TYPE, MSG_BILLING_LIMIT)
            self._monthly_calls_left = left - 1

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
        if kind is not None and kind not in ("read", "write", "meta", "webhook", "other"):
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

