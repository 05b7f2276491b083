#!/usr/bin/env python3
"""One-way sync of Cuculi's MongoDB exports into Airtable.

Reads users.json, events.json and messages.json (written by mongodb_pull.py),
pulls the Users, Events and Messages tables of the Airtable base, matches every
exported record to its Airtable record and writes only what changed: Users,
then Events, then Messages (which link to both). Writes a log and a Markdown +
JSON report. The interface and its rules are in CONTRACT.md; README.md tells how
to run it.

The pipeline, one section each, in this order:
settings -> connect -> pull -> load exports -> match -> convert -> diff -> plan
-> apply -> report.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import fcntl
import importlib.util
import json
import logging
import math
import os
import re
import signal
import stat
import sys
import tempfile
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import requests
from dotenv import dotenv_values
from pyairtable import Api
from requests.adapters import HTTPAdapter
from tqdm import tqdm

SCRIPT_DIR = Path(__file__).resolve().parent
log = logging.getLogger("airtable_sync")

EXIT_OK = 0
EXIT_RECORD_FAILED = 1
EXIT_USAGE = 2
EXIT_AIRTABLE = 3
EXIT_LOCKED = 75  # EX_TEMPFAIL: another run holds the lock, try again later
EXIT_CRASH = 70  # EX_SOFTWARE: a bug in this tool; the report says where
EXIT_SIGINT = 130
EXIT_SIGTERM = 143

# Airtable's documented limits (https://airtable.com/developers/web/api/rate-limits,
# .../create-records, .../list-records, .../field-model#multilinetext).
RECORDS_PER_WRITE = 10
RECORDS_PER_PAGE = 100
TEXT_LIMIT = 100_000
RATE_LIMIT_PENALTY_S = 30.0


class UsageError(Exception):
    """Bad settings, arguments or input: exit 2, nothing written."""


class AirtableAccessError(Exception):
    """Airtable unreachable, or the token refused: exit 3."""


class RunInterrupted(Exception):
    """SIGINT/SIGTERM arrived; the request in flight was allowed to finish."""


class LockHeld(Exception):
    """Another run holds the lock."""


# ---------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LinkSpec:
    """A Messages link field filled from a Mongo reference."""

    airtable_field: str
    target: str  # key of the linked TableSpec
    mongo_fields: tuple[str, ...]  # the reference, in order of preference


@dataclass(frozen=True)
class TableSpec:
    key: str
    export_file: str
    mapping: tuple[tuple[str, str], ...]  # (Mongo field, Airtable field)
    key_fields: tuple[str, ...]  # Mongo natural key, in order of preference
    airtable_key: str  # Airtable field holding the natural key
    links: tuple[LinkSpec, ...] = ()
    extra_sources: tuple[str, ...] = ()  # Mongo fields read but not mapped

    @property
    def airtable_fields(self) -> list[str]:
        return [at for _, at in self.mapping] + [link.airtable_field for link in self.links]

    @property
    def consumed_mongo_fields(self) -> set[str]:
        used = {mongo for mongo, _ in self.mapping} | {"_id", "id"}
        for link in self.links:
            used.update(link.mongo_fields)
        return used | set(self.extra_sources)


def _mapping(spec: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in spec.split():
        mongo, _, airtable = item.partition("->")
        pairs.append((mongo, airtable or mongo))
    return tuple(pairs)


TABLE_SPECS: dict[str, TableSpec] = {
    "users": TableSpec(
        key="users",
        export_file="users.json",
        mapping=_mapping(
            "id email firstName lastName phone role gender birthDay occupation "
            "homeNeighborhood interests tableTypePreference event_count order_count "
            "total_spent last_active days_inactive engagement_status journey_stage "
            "value_segment user_segment churn_risk profile_completeness profile_ready "
            "summary createdAt updatedAt"
        ),
        key_fields=("email",),
        airtable_key="email",
    ),
    "events": TableSpec(
        key="events",
        export_file="events.json",
        mapping=_mapping(
            "id name->Name description startDate endDate location eventType cuisine "
            "tableType maxCapacity price participantCount participationPercentage "
            "participant_top_interests participant_top_occupations "
            "qualifies_seat_newcomers qualifies_fill_the_table summary createdAt updatedAt"
        ),
        key_fields=("name",),
        airtable_key="Name",
    ),
    "messages": TableSpec(
        key="messages",
        export_file="messages.json",
        mapping=_mapping(
            "id user_name event_name user_id event_id user_email user_phone "
            "user_summary event_summary message_text->message personalization_notes "
            "character_count similarity_score confidence_percentage reasoning status "
            "generated_at->createdAt campaign updatedAt"
        ),
        key_fields=("message_text", "message"),
        airtable_key="message",
        links=(
            LinkSpec("Users", "users", ("user_id", "senderId")),
            LinkSpec("Events", "events", ("event_id", "eventId")),
        ),
    ),
}
TABLE_ORDER = ("users", "events", "messages")
TABLE_ENV = {
    "users": ("AIRTABLE_USERS_TABLE", "tblQ0OHBit2AqaACy"),
    "events": ("AIRTABLE_EVENTS_TABLE", "tblrscr87h8fbtQTk"),
    "messages": ("AIRTABLE_MESSAGES_TABLE", "tbljma5S4NhUn1OYl"),
}
DEFAULT_BASE_ID = "appaquqFN7vvvZGcq"
BASE_ID_RE = re.compile(r"^app[A-Za-z0-9]{14}$")
TABLE_ID_RE = re.compile(r"^tbl[A-Za-z0-9]{14}$")


@dataclass(frozen=True)
class Settings:
    api_key: str = field(repr=False)
    base_id: str
    table_ids: dict[str, str]
    endpoint_url: str
    max_rps: float
    timeout_s: float
    max_retries: int
    mongo_dir: Path
    cache_dir: Path
    reports_dir: Path
    tables: tuple[str, ...]
    dry_run: bool = False
    check: bool = False
    use_cache: bool = False
    limit: int | None = None
    verbose: bool = False


EXIT_CODES_HELP = """\
settings (environment, or .env beside the script; the environment wins):
  AIRTABLE_API_KEY         personal access token (required; scopes
                           data.records:read, data.records:write, schema.bases:read)
  AIRTABLE_BASE_ID         default appaquqFN7vvvZGcq
  AIRTABLE_USERS_TABLE     default tblQ0OHBit2AqaACy
  AIRTABLE_EVENTS_TABLE    default tblrscr87h8fbtQTk
  AIRTABLE_MESSAGES_TABLE  default tbljma5S4NhUn1OYl
  AIRTABLE_ENDPOINT_URL    default https://api.airtable.com
  AIRTABLE_MAX_RPS         requests per second per base, default 5
  AIRTABLE_TIMEOUT_S       seconds for every HTTP request, default 30
  AIRTABLE_MAX_RETRIES     retries of a 429, 5xx or network failure, default 5
  MONGODB_DATA_DIR         default ../mongodb_pull/data beside the script

exit codes:
  0    every record synced or skipped
  1    the run finished but at least one record failed
  2    configuration, usage or input error (nothing written to Airtable)
  3    Airtable unreachable, authentication or permission failure
  70   an internal error (a bug): one line, the report marked crashed
  75   another run holds the lock (nothing done)
  130  interrupted by SIGINT, 143 by SIGTERM (report marked interrupted)
"""


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="airtable_sync.py",
        description="Sync the MongoDB exports (users, events, messages) into Airtable.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--mongo-dir", type=Path, help="folder of users.json, events.json, messages.json")
    parser.add_argument("--cache-dir", type=Path, help="Airtable caches and the lock (default: data/)")
    parser.add_argument("--reports-dir", type=Path, help="log and reports (default: reports/)")
    parser.add_argument("--tables", default=",".join(TABLE_ORDER), help="comma-separated subset of users,events,messages")
    parser.add_argument("--dry-run", action="store_true", help="plan and report, send no write request")
    parser.add_argument("--check", action="store_true", help="compare the mappings with Airtable's schema; write nothing")
    parser.add_argument("--use-cache", action="store_true", help="reuse data/airtable_<table>.json instead of pulling")
    parser.add_argument("--limit", type=int, metavar="N", help="sync only the first N exported records of each table")
    parser.add_argument("--demo", action="store_true", help="sync the sample data into a local Airtable emulator")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, with field values")
    return parser


def read_environment(dotenv_path: Path | None) -> dict[str, str]:
    """The process environment over the .env file (a real variable wins)."""
    values: dict[str, str] = {}
    if dotenv_path is not None and dotenv_path.is_file():
        mode = dotenv_path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("%s is readable by group or others (mode %o); run: chmod 600 %s",
                        dotenv_path, stat.S_IMODE(mode), dotenv_path)
        values.update({k: v for k, v in dotenv_values(dotenv_path).items() if v is not None})
    values.update(os.environ)
    return values


def _number_setting(env: Mapping[str, str], name: str, default: float, *, whole: bool = False) -> Any:
    """A rate or a duration (> 0), or with `whole` a count (>= 0)."""
    raw = env.get(name, "").strip()
    kind = int if whole else float
    if not raw:
        return kind(default)
    try:
        value = kind(raw)
    except ValueError:
        raise UsageError(f"{name}={raw!r} is not a {'whole ' if whole else ''}number") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not whole):
        raise UsageError(f"{name}={raw!r} must be {'zero or more' if whole else 'greater than zero'}")
    return value


def settings_from(args: argparse.Namespace, env: Mapping[str, str]) -> Settings:
    api_key = env.get("AIRTABLE_API_KEY", "").strip()
    if not api_key:
        raise UsageError("AIRTABLE_API_KEY is not set: put it in the environment or in .env (see .env.example)")
    base_id = env.get("AIRTABLE_BASE_ID", "").strip() or DEFAULT_BASE_ID
    if not BASE_ID_RE.match(base_id):
        raise UsageError(f"AIRTABLE_BASE_ID={base_id!r} is not a base id (app followed by 14 letters or digits)")
    table_ids = {}
    for key, (var, default) in TABLE_ENV.items():
        value = env.get(var, "").strip() or default
        if value.startswith("tbl") and not TABLE_ID_RE.match(value):
            raise UsageError(f"{var}={value!r} is not a table id (tbl followed by 14 letters or digits)")
        table_ids[key] = value
    endpoint = env.get("AIRTABLE_ENDPOINT_URL", "").strip() or "https://api.airtable.com"
    if not re.match(r"^https?://[^\s/]+", endpoint):
        raise UsageError(f"AIRTABLE_ENDPOINT_URL={endpoint!r} is not an http(s) URL")
    tables = tuple(t.strip() for t in args.tables.split(",") if t.strip())
    unknown = [t for t in tables if t not in TABLE_SPECS]
    if unknown or not tables:
        raise UsageError(f"--tables {args.tables!r}: choose from {','.join(TABLE_ORDER)}")
    if args.limit is not None and args.limit < 0:
        raise UsageError("--limit must be zero or more")
    mongo_dir = args.mongo_dir or Path(env.get("MONGODB_DATA_DIR", "").strip() or SCRIPT_DIR / "../mongodb_pull/data")
    if not Path(mongo_dir).is_dir() and not args.check:
        raise UsageError(f"Mongo data folder {mongo_dir} does not exist (set --mongo-dir or MONGODB_DATA_DIR)")
    return Settings(
        api_key=api_key,
        base_id=base_id,
        table_ids=table_ids,
        endpoint_url=endpoint.rstrip("/"),
        max_rps=_number_setting(env, "AIRTABLE_MAX_RPS", 5),
        timeout_s=_number_setting(env, "AIRTABLE_TIMEOUT_S", 30),
        max_retries=_number_setting(env, "AIRTABLE_MAX_RETRIES", 5, whole=True),
        mongo_dir=Path(mongo_dir),
        cache_dir=args.cache_dir or SCRIPT_DIR / "data",
        reports_dir=args.reports_dir or SCRIPT_DIR / "reports",
        tables=tuple(t for t in TABLE_ORDER if t in tables),
        dry_run=args.dry_run,
        check=args.check,
        use_cache=args.use_cache,
        limit=args.limit,
        verbose=args.verbose,
    )


# ---------------------------------------------------------------------------
# Connect: pyairtable over a throttled, retrying transport
# ---------------------------------------------------------------------------


@dataclass
class RequestStats:
    total: int = 0
    read: int = 0
    write: int = 0
    retried: int = 0
    rate_limited: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def request_kind(method: str, path: str) -> str:
    """read or write, as Airtable's request counts see it."""
    if method.upper() == "GET" or path.split("?", 1)[0].endswith("/listRecords"):
        return "read"
    return "write"


def is_plain_create(method: str, path: str) -> bool:
    """A POST that creates records: re-sending it after an unknown outcome could duplicate them."""
    return method.upper() == "POST" and request_kind(method, path) == "write"


class Throttle:
    """At most `rate` requests in any rolling second.

    A request occupies the window from its start until one second after it
    completes: the server sees it arrive somewhere in between, so counting from
    completion is what keeps the server's own rolling count at or under `rate`.
    """

    MARGIN_S = 0.005  # clock granularity between this process and the server

    def __init__(self, rate: float, stop: threading.Event, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        # Whole requests in a window of at least a second: 2.5/s gives 2 a second, 0.5/s 1 per 2 s.
        self.slots = max(1, math.floor(rate))
        self.window = max(1.0, self.slots / rate)
        self.stop = stop
        self.clock = clock
        self.completed: deque[float] = deque()
        self.in_flight = 0
        self.lock = threading.Lock()

    def _wait_needed(self, now: float) -> float:
        window_start = now - self.window - self.MARGIN_S
        while self.completed and self.completed[0] <= window_start:
            self.completed.popleft()
        if len(self.completed) + self.in_flight < self.slots:
            return 0.0
        if not self.completed:
            return 0.01  # all slots held by requests still in flight
        return max(self.completed[0] - window_start, 0.001)  # never a float-rounding spin

    def acquire(self) -> None:
        while True:
            with self.lock:
                delay = self._wait_needed(self.clock())
                if delay <= 0:
                    self.in_flight += 1
                    return
            if self.stop.wait(delay):
                raise RunInterrupted()

    def release(self) -> None:
        with self.lock:
            self.in_flight -= 1
            self.completed.append(self.clock())


_THROTTLES: dict[tuple[str, str], Throttle] = {}


RECENT_REQUESTS_FILE = ".recent_requests.json"


def shared_throttle(settings: Settings, stop: threading.Event) -> Throttle:
    """One throttle per base: Airtable counts the base's requests, not our runs'.

    Runs in one process share it; a run right after another process's (say
    `--check` and then the sync) starts from the completion times that run left
    in the cache dir, so the two together still stay under the rate.
    """
    key = (settings.endpoint_url, settings.base_id)
    throttle = _THROTTLES.get(key)
    if throttle is None or throttle.rate != settings.max_rps:
        throttle = _THROTTLES[key] = Throttle(settings.max_rps, stop)
        try:
            recent = json.loads((settings.cache_dir / RECENT_REQUESTS_FILE).read_text()).get(" ".join(key), [])
        except (OSError, ValueError, AttributeError):
            recent = []
        wall, mono = time.time(), time.monotonic()
        throttle.completed.extend(sorted(mono - (wall - t) for t in recent if 0 <= wall - t < throttle.window + 1))
    throttle.stop = stop
    return throttle


def save_recent_requests(settings: Settings) -> None:
    throttle = _THROTTLES.get((settings.endpoint_url, settings.base_id))
    if throttle is None:
        return
    wall, mono = time.time(), time.monotonic()
    recent = [wall - (mono - t) for t in throttle.completed if mono - t < throttle.window + 1]
    with contextlib.suppress(OSError):
        write_private(settings.cache_dir / RECENT_REQUESTS_FILE,
                      json.dumps({f"{settings.endpoint_url} {settings.base_id}": recent}))


def _never_sent(error: BaseException) -> bool:
    """True when the request provably did not reach the server (connect failed)."""
    if isinstance(error, requests.ConnectTimeout):
        return True
    seen: BaseException | None = error
    while seen is not None:
        if type(seen).__name__ in ("NewConnectionError", "NameResolutionError"):
            return True
        seen = getattr(seen, "reason", None) or seen.__context__
    return False


def retry_delay(
    attempt: int,
    max_retries: int,
    method: str,
    path: str,
    status: int | None,
    headers: Mapping[str, str],
    error: BaseException | None,
) -> float | None:
    """Seconds to wait before re-sending, or None to give up.

    A 429 was not processed, so any request may be re-sent after the penalty.
    A 5xx, timeout or dropped connection may have been applied: only requests
    that are safe to repeat (reads, updates by record id, upserts merged on
    `id`) are re-sent; a plain create is re-sent only if it never left.
    """
    if attempt >= max_retries:
        return None
    try:
        retry_after: float | None = max(0.0, float((headers.get("Retry-After") or "").strip()))
    except ValueError:
        retry_after = None  # absent, or an HTTP date: the defaults below
    backoff = min(0.5 * 2**attempt, 8.0)
    if status == 429:  # Airtable's penalty is 30 s; a Retry-After may only shorten it
        return RATE_LIMIT_PENALTY_S if retry_after is None else min(retry_after, RATE_LIMIT_PENALTY_S)
    if error is not None:
        if _never_sent(error) or not is_plain_create(method, path):
            return backoff
        return None
    if status is not None and status >= 500 and not is_plain_create(method, path):
        # Airtable's 503 "may provide" Retry-After (errors docs): honoured, within reason.
        return backoff if retry_after is None else min(max(backoff, retry_after), RATE_LIMIT_PENALTY_S)
    return None


class AirtableTransport(HTTPAdapter):
    """requests' transport adapter: throttle, timeout, retry policy and counts for every request."""

    def __init__(self, settings: Settings, stats: RequestStats, stop: threading.Event):
        super().__init__(max_retries=0)
        self.timeout = (settings.timeout_s, settings.timeout_s)
        self.retry_limit = settings.max_retries
        self.throttle = shared_throttle(settings, stop)
        self.stats = stats
        self.stop = stop
        self.last_retried = False  # whether the last request needed more than one attempt

    def send(self, request, **kwargs):  # type: ignore[override]
        kwargs["timeout"] = self.timeout
        method, path = request.method or "GET", request.path_url
        kind = request_kind(method, path)
        attempt = 0
        self.last_retried = False
        while True:
            if self.stop.is_set():
                raise RunInterrupted()
            self.throttle.acquire()
            response, error = None, None
            try:
                response = super().send(request, **kwargs)
            except (requests.ConnectionError, requests.Timeout) as exc:
                error = exc
            finally:
                self.throttle.release()
            self.stats.total += 1
            setattr(self.stats, kind, getattr(self.stats, kind) + 1)
            if attempt:
                self.stats.retried += 1
            status = response.status_code if response is not None else None
            if status == 429:
                self.stats.rate_limited += 1
            delay = retry_delay(attempt, self.retry_limit, method, path, status,
                                response.headers if response is not None else {}, error)
            if delay is None:
                if error is not None:
                    raise error
                return response
            what = f"HTTP {status}" if status else type(error).__name__
            log.warning("%s %s: %s; retrying in %.1f s (retry %d of %d)",
                        method, path.split("?", 1)[0], what, delay, attempt + 1, self.retry_limit)
            if response is not None:
                response.close()
            attempt += 1
            self.last_retried = True
            if self.stop.wait(delay):
                raise RunInterrupted()


@dataclass(frozen=True)
class FieldInfo:
    name: str
    type: str


@dataclass
class Airtable:
    """The connection: pyairtable's Api with our transport, and the request counts."""

    api: Api
    settings: Settings
    transport: "AirtableTransport"

    @property
    def stats(self) -> RequestStats:
        return self.transport.stats

    def table(self, key: str):
        return self.api.table(self.settings.base_id, self.settings.table_ids[key])


def connect(settings: Settings, stop: threading.Event) -> Airtable:
    api = Api(settings.api_key, timeout=(settings.timeout_s, settings.timeout_s),
              retry_strategy=None, endpoint_url=settings.endpoint_url)
    transport = AirtableTransport(settings, RequestStats(), stop)
    api.session.mount("https://", transport)
    api.session.mount("http://", transport)
    return Airtable(api, settings, transport)


# What a request to Airtable can end in, once the transport's retries are spent.
AIRTABLE_FAILURES = (requests.HTTPError, requests.ConnectionError, requests.Timeout)


def airtable_error(exc: requests.HTTPError) -> tuple[str, str]:
    """(type, message) of an Airtable error response."""
    response = exc.response
    try:
        body = response.json()
    except ValueError:
        return f"HTTP_{response.status_code}", (response.text or "")[:300]
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("type", f"HTTP_{response.status_code}")), str(error.get("message", ""))
    if isinstance(error, str):
        return error, str(body.get("message", error))
    return f"HTTP_{response.status_code}", json.dumps(body)[:300]


SCOPE_HINT = ("check AIRTABLE_API_KEY and that the token has the scopes data.records:read, "
              "data.records:write and schema.bases:read and access to base {base}")


def access_error(exc: Exception, settings: Settings, what: str) -> AirtableAccessError:
    if isinstance(exc, requests.HTTPError):
        kind, message = airtable_error(exc)
        status = exc.response.status_code
        hint = ""
        if status in (401, 403, 404):  # a token, scope or id problem; a 429 or 5xx is not one
            hint = f"; {SCOPE_HINT.format(base=settings.base_id)}"
        elif status == 429 or status >= 500:
            hint = f"; gave up after {settings.max_retries} retries"
        return AirtableAccessError(f"{what}: HTTP {status} {kind}: {message}{hint}")
    return AirtableAccessError(f"{what}: Airtable unreachable at {settings.endpoint_url} "
                               f"({type(exc).__name__}) after {settings.max_retries} retries")


def fetch_schema(airtable: Airtable) -> dict[str, dict[str, FieldInfo]] | None:
    """Field types per table key, or None when the token may not read the schema."""
    settings = airtable.settings
    try:
        schema = airtable.api.base(settings.base_id).schema()
    except requests.HTTPError as exc:
        if exc.response.status_code in (403, 404):
            log.warning("Airtable refused the schema (HTTP %s): the token lacks schema.bases:read; "
                        "field types will be inferred from the data", exc.response.status_code)
            return None
        raise access_error(exc, settings, "reading the schema") from None
    except (requests.ConnectionError, requests.Timeout) as exc:  # an HTTPError is handled above
        raise access_error(exc, settings, "reading the schema") from None
    by_key = {}
    for key, table_id in settings.table_ids.items():
        table = next((t for t in schema.tables if table_id in (t.id, t.name)), None)
        if table is not None:
            by_key[key] = {f.name: FieldInfo(f.name, str(getattr(f.type, "value", f.type))) for f in table.fields}
    return by_key


class Progress:
    """How far a long phase (a pull, a table's writes, deletes) has got: counts only, never values.

        with Progress("users: create", total=len(pending)) as progress:
            progress.update(10)

    On a terminal (the stream, stderr by default, is a TTY) it is tqdm's live line with
    done/total, rate and ETA, and log lines are printed above it. Otherwise (cron) it logs
    a line every `log_every_s` seconds, and a last one if it logged any. A total of None
    means unknown: the line counts up with its rate.
    """

    def __init__(self, description: str, total: int | None = None, *, unit: str = "records",
                 stream=None, log_every_s: float = 5.0):
        self.description, self.total, self.unit = description, total, unit
        self.stream = sys.stderr if stream is None else stream
        self.log_every_s = log_every_s
        self.done = 0
        self.bar: tqdm | None = None
        self.started = self.logged_at = time.monotonic()
        self.logged = False
        self.redirected: list[tuple[logging.StreamHandler, Any]] = []

    def __enter__(self) -> Progress:
        try:
            live = self.stream.isatty()
        except (AttributeError, ValueError):  # no isatty, or closed
            live = False
        if live:
            self.bar = tqdm(total=self.total, desc=self.description, unit=f" {self.unit}", file=self.stream,
                            mininterval=0.5, dynamic_ncols=True)
            # Log lines to the same terminal go above the live line instead of through it.
            for handler in logging.getLogger().handlers:
                if type(handler) is logging.StreamHandler and handler.stream is self.stream:
                    self.redirected.append((handler, handler.setStream(_AboveTheBar(self.stream))))
        return self

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if now - self.logged_at >= self.log_every_s:
            self.logged_at = now
            self._log()

    def _log(self, final: bool = False) -> None:
        self.logged = True
        rate = self.done / max(time.monotonic() - self.started, 1e-9)
        if self.total is None:
            log.info("%s: %d %s%s (%.1f/s)", self.description, self.done, self.unit, "" if final else " so far", rate)
            return
        left = f", about {(self.total - self.done) / rate:.0f} s left" if rate and self.done < self.total else ""
        log.info("%s: %d/%d %s (%.1f/s%s)", self.description, self.done, self.total, self.unit, rate, left)

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.bar is not None:
            self.bar.close()
            for handler, stream in self.redirected:
                handler.setStream(stream)
        elif self.logged and exc_type is None:
            self._log(final=True)


class _AboveTheBar:
    """A log handler's stream while a live line is shown: tqdm.write keeps the line below."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        tqdm.write(text, file=self.stream, end="")

    def flush(self) -> None:
        self.stream.flush()


# ---------------------------------------------------------------------------
# Pull
# ---------------------------------------------------------------------------


def cache_path(settings: Settings, key: str) -> Path:
    return settings.cache_dir / f"airtable_{key}.json"


def pull_table(airtable: Airtable, key: str, stop: threading.Event) -> list[dict]:
    records: list[dict] = []
    try:
        with Progress(f"{key}: pull") as progress:  # 100 records a page at 5 a second: say how far
            for page in airtable.table(key).iterate(page_size=RECORDS_PER_PAGE):
                records.extend(page)
                progress.update(len(page))
                if stop.is_set():
                    raise RunInterrupted()
    except AIRTABLE_FAILURES as exc:
        raise access_error(exc, airtable.settings, f"reading table {key}") from None
    return records


def read_cache(path: Path) -> list[dict] | None:
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("cache %s unreadable (%s): pulling instead", path, exc)
        return None
    return records if isinstance(records, list) else None


def write_private(path: Path, text: str | Iterable[str]) -> None:
    """Atomically write a file only its owner can read (it holds personal data)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.writelines([text] if isinstance(text, str) else text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def write_cache(path: Path, records: list[dict]) -> None:
    # One record a line, streamed: still a JSON array, written by json's C encoder
    # (indent= falls back to pure Python) without the whole file in memory at once.
    def chunks() -> Iterator[str]:
        for i, rec in enumerate(records):
            yield ("[\n" if i == 0 else ",\n") + json.dumps(rec, ensure_ascii=False)
        yield "\n]\n" if records else "[]\n"
    write_private(path, chunks())


# ---------------------------------------------------------------------------
# Load exports
# ---------------------------------------------------------------------------


@dataclass
class ExportRecord:
    index: int  # position in the export, 0-based
    mongo_id: str | None
    doc: dict


def unwrap_wrapper(obj: dict) -> Any:
    """One MongoDB Extended JSON wrapper -> its plain value (as json's object_hook: inner ones come first)."""
    if len(obj) != 1:
        return obj
    (tag, inner), = obj.items()
    if tag[:1] != "$":
        return obj
    try:
        if tag == "$oid" and isinstance(inner, str):
            return inner
        if tag == "$date":
            return _extended_date(inner)
        if tag in ("$numberLong", "$numberInt") and isinstance(inner, (str, int)):
            return int(inner)
        if tag == "$numberDouble" and isinstance(inner, (str, int, float)):
            return float(inner)
        if tag == "$numberDecimal" and isinstance(inner, str):
            return Decimal(inner)
    except (ValueError, InvalidOperation, OverflowError, OSError):
        pass  # not a value this wrapper can hold (e.g. a date out of range): kept as it is
    return obj


def unwrap_extended_json(value: Any) -> Any:
    """MongoDB Extended JSON wrappers -> plain Python values, recursively."""
    if isinstance(value, dict):
        return unwrap_wrapper({k: unwrap_extended_json(v) for k, v in value.items()})
    if isinstance(value, list):
        return [unwrap_extended_json(v) for v in value]
    return value


def _extended_date(inner: Any) -> Any:
    if isinstance(inner, (int, float)) and not isinstance(inner, bool):  # ms, or $numberLong ms unwrapped
        return datetime.fromtimestamp(inner / 1000, tz=timezone.utc)
    if isinstance(inner, str):
        parsed = parse_datetime(inner)
        if parsed is not None:
            return parsed
    return {"$date": inner}


def _decode(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not valid UTF-8 (byte {raw[exc.start]:#04x} at offset {exc.start})") from None


def _json_error(path: Path, where: str, exc: json.JSONDecodeError) -> UsageError:
    return UsageError(f"{path}: {where}not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})")


BLANK_LINE = object()


def parse_export(path: Path, raw: bytes) -> list[dict]:
    """A JSON array of documents, or JSON Lines (one document a line, as mongoexport writes),
    with Extended JSON unwrapped as it is parsed."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    start = raw.lstrip()[:1]
    if not start:
        raise UsageError(f"{path}: file is empty (expected a JSON array or JSON Lines)")
    if start == b"[":
        try:
            docs = json.loads(_decode(path, raw), object_hook=unwrap_wrapper)
        except json.JSONDecodeError as exc:
            raise _json_error(path, "", exc) from None
        where = "record {n}"
    elif start == b"{":
        # Line by line from the bytes: the whole file never sits in memory as text.
        docs, where, offset = [], "line {n}", 0
        decode = json.JSONDecoder(object_hook=unwrap_wrapper).decode
        for lineno, line in enumerate(raw.split(b"\n"), 1):
            line_offset, offset = offset, offset + len(line) + 1
            if not line.strip():
                docs.append(BLANK_LINE)  # keeps line numbers for messages; dropped below
                continue
            try:
                docs.append(decode(line.decode("utf-8")))
            except UnicodeDecodeError as exc:
                raise UsageError(f"{path}: not valid UTF-8 (byte {line[exc.start]:#04x} at offset "
                                 f"{line_offset + exc.start}, line {lineno})") from None
            except json.JSONDecodeError as exc:
                raise UsageError(f"{path}: line {lineno}: not valid JSON: {exc.msg} "
                                 "(expected a JSON array or one document a line)") from None
    else:
        _decode(path, raw)
        raise UsageError(f"{path}: expected a JSON array or JSON Lines, found {raw.lstrip()[:20]!r}")
    if not isinstance(docs, list):
        raise UsageError(f"{path}: expected a JSON array of documents, got {type(docs).__name__}")
    records = []
    for n, doc in enumerate(docs, 1):
        if doc is BLANK_LINE:
            continue
        if not isinstance(doc, dict):
            raise UsageError(f"{path}: {where.format(n=n)} is not a JSON object ({type(doc).__name__})")
        records.append(doc)
    return records


def mongo_id_of(doc: dict) -> str | None:
    for key in ("id", "_id"):
        value = doc.get(key)
        if value not in (None, ""):
            return str(value)
    return None


def load_export(path: Path, limit: int | None) -> list[ExportRecord] | None:
    """The export's records, None when the file is missing."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read ({exc.strerror})") from None
    docs = parse_export(path, raw)
    if limit is not None:
        docs = docs[:limit]
    return [ExportRecord(index, mongo_id_of(doc), doc) for index, doc in enumerate(docs)]


# ---------------------------------------------------------------------------
# Match
# ---------------------------------------------------------------------------


def normalize_key(value: Any) -> str:
    if value is None:
        return ""
    return str(value).strip().lower()


def natural_key(doc: dict, key_fields: Sequence[str]) -> str:
    for name in key_fields:
        key = normalize_key(doc.get(name))
        if key:
            return key
    return ""


@dataclass
class Match:
    record: ExportRecord
    airtable: dict | None  # the claimed Airtable record, None -> create
    how: str  # "id", "key" or "new"


def match_records(
    exported: Sequence[ExportRecord],
    airtable_records: Sequence[dict],
    key_fields: Sequence[str],
    airtable_key: str,
    has_id_field: bool,
) -> tuple[list[Match], list[dict]]:
    """Two passes, per the contract: by `id`, then by normalised natural key,
    first come first served. Returns the matches (export order) and the orphans."""
    claimed: set[str] = set()
    by_id: dict[str, dict] = {}
    if has_id_field:
        for rec in airtable_records:
            value = rec["fields"].get("id")
            if value not in (None, "") and str(value) not in by_id:
                by_id[str(value)] = rec
    matches: list[Match | None] = []
    for record in exported:
        rec = by_id.get(record.mongo_id) if record.mongo_id is not None else None
        if rec is not None and rec["id"] not in claimed:
            claimed.add(rec["id"])
            matches.append(Match(record, rec, "id"))
        else:
            matches.append(None)
    candidates: dict[str, deque[dict]] = defaultdict(deque)
    for rec in airtable_records:
        if has_id_field and rec["fields"].get("id") not in (None, ""):
            continue
        key = normalize_key(rec["fields"].get(airtable_key))
        if key:
            candidates[key].append(rec)
    for i, record in enumerate(exported):
        if matches[i] is not None:
            continue
        key = natural_key(record.doc, key_fields)
        queue = candidates.get(key) if key else None
        while queue and queue[0]["id"] in claimed:
            queue.popleft()
        if queue:
            rec = queue.popleft()
            claimed.add(rec["id"])
            matches[i] = Match(record, rec, "key")
        else:
            matches[i] = Match(record, None, "new")
    orphans = [rec for rec in airtable_records if rec["id"] not in claimed]
    return [m for m in matches if m is not None], orphans


# ---------------------------------------------------------------------------
# Convert
# ---------------------------------------------------------------------------

TEXT_TYPES = {"singleLineText", "multilineText", "richText", "email", "url", "phoneNumber"}
NUMBER_TYPES = {"number", "currency", "percent", "rating", "duration"}
COMPUTED_TYPES = {"formula", "rollup", "count", "lookup", "multipleLookupValues", "createdTime",
                  "lastModifiedTime", "autoNumber", "createdBy", "lastModifiedBy", "button"}
WRITABLE_TYPES = TEXT_TYPES | NUMBER_TYPES | {"checkbox", "date", "dateTime", "singleSelect",
                                              "multipleSelects", "multipleRecordLinks"}


class Invalid(Exception):
    """A value that cannot become the field's type: left out and counted."""


def parse_datetime(text: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def iso_millis(moment: datetime) -> str:
    """`YYYY-MM-DDTHH:MM:SS.sssZ` in UTC (naive = UTC)."""
    moment = moment.astimezone(timezone.utc).replace(tzinfo=None) if moment.tzinfo else moment
    return moment.isoformat(timespec="milliseconds") + "Z"


def to_instant(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
    if isinstance(value, str):
        parsed = parse_datetime(value)
        if parsed is not None:
            return parsed
    raise Invalid(f"not a date: {value!r}")


def jsonable(value: Any) -> Any:
    """Make unwrapped Extended JSON serialisable, with NaN/Infinity as null."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime):
        return iso_millis(value)
    if isinstance(value, Decimal):
        if not value.is_finite():
            return None
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _is_null(value: Any) -> bool:
    """None, and NaN/Infinity, which the contract makes null."""
    return value is None or (value.__class__ is float and not math.isfinite(value))


def _scalar_text(value: Any) -> str:
    if value.__class__ is str:
        return value
    if isinstance(value, datetime):
        return iso_millis(value)
    return str(value)


def to_text(value: Any) -> str:
    if value.__class__ is str:
        return value
    if isinstance(value, (list, tuple)):
        if any(isinstance(v, (dict, list, tuple)) for v in value):
            return json.dumps(jsonable(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return ", ".join(_scalar_text(v) for v in value if not _is_null(v))
    if isinstance(value, dict):
        return json.dumps(jsonable(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return _scalar_text(value)


def to_number(value: Any) -> int | float | None:
    if isinstance(value, bool):
        raise Invalid(f"not a number: {value!r}")
    if isinstance(value, int):
        # Airtable keeps numbers as doubles (integers past 15 digits come back rounded:
        # github.com/Airtable/airtable.js/issues/423): send what it will give back, or every
        # run rewrites it.
        return value if abs(value) <= 2**53 else float(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Decimal):
        if not value.is_finite():
            return None
        number = float(value)
        if not math.isfinite(number):
            return None
        return int(value) if value == value.to_integral_value() and abs(number) <= 2**53 else number
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        if "_" not in text:
            try:
                return int(text)
            except ValueError:
                pass
            try:
                number = float(text)
            except ValueError:
                pass
            else:
                return number if math.isfinite(number) else None
    raise Invalid(f"not a number: {value!r}")


def to_date(value: Any) -> str:
    try:
        return to_instant(value).astimezone(timezone.utc).date().isoformat()
    except OverflowError:
        raise Invalid(f"date out of range: {value!r}") from None


def to_datetime(value: Any) -> str:
    try:
        return iso_millis(to_instant(value))
    except OverflowError:
        raise Invalid(f"date out of range: {value!r}") from None


def to_single_select(value: Any) -> str:
    if isinstance(value, (dict, list, tuple)):
        raise Invalid(f"not a single choice: {value!r}")
    return _scalar_text(value)


def to_multiple_selects(value: Any) -> list[str]:
    items = value if isinstance(value, (list, tuple)) else [value]
    choices: list[str] = []
    for item in items:
        if _is_null(item) or item == "":
            continue
        if isinstance(item, (dict, list, tuple)):
            raise Invalid(f"not a choice: {item!r}")
        text = _scalar_text(item)
        if text not in choices:  # Airtable keeps a choice once
            choices.append(text)
    return choices


CONVERTERS: dict[str, Callable[[Any], Any]] = {
    **{t: to_text for t in TEXT_TYPES},
    **{t: to_number for t in NUMBER_TYPES},
    "checkbox": bool,
    "date": to_date,
    "dateTime": to_datetime,
    "singleSelect": to_single_select,
    "multipleSelects": to_multiple_selects,
}


def convert_value(value: Any, field_type: str) -> Any:
    """A Mongo value -> the value Airtable's field type takes. Raises Invalid."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None  # null clears the field; NaN/Infinity are null
    return CONVERTERS[field_type](value)


def infer_type(airtable_values: Iterable[Any], mongo_value: Any) -> str:
    """A field's type when the schema cannot be read: from Airtable's values, else the Mongo value."""
    for value in airtable_values:
        if isinstance(value, bool):
            return "checkbox"
        if isinstance(value, (int, float)):
            return "number"
        if isinstance(value, list):
            return "multipleSelects" if all(isinstance(v, str) for v in value) else "multilineText"
        if isinstance(value, str):
            if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
                return "date"
            if re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z", value):
                return "dateTime"
            return "multilineText"
    if isinstance(mongo_value, bool):
        return "checkbox"
    if isinstance(mongo_value, (int, float, Decimal)):
        return "number"
    if isinstance(mongo_value, datetime):
        return "dateTime"
    return "multilineText"


def field_types(spec: TableSpec, schema: dict[str, FieldInfo] | None, airtable_records: Sequence[dict],
                exported: Sequence[ExportRecord]) -> tuple[dict[str, str], list[str], list[str]]:
    """(writable field -> type, missing in Airtable, read-only) for a table's mapping."""
    types, missing, read_only = {}, [], []
    for name in spec.airtable_fields:
        if schema is None:
            if name in {link.airtable_field for link in spec.links}:
                types[name] = "multipleRecordLinks"
                continue
            mongo_name = next(m for m, a in spec.mapping if a == name)
            sample = next((r.doc[mongo_name] for r in exported if r.doc.get(mongo_name) is not None), None)
            values = (r["fields"][name] for r in airtable_records if name in r["fields"])
            types[name] = infer_type(values, sample)
        elif name not in schema:
            missing.append(name)
        elif schema[name].type in WRITABLE_TYPES:
            types[name] = schema[name].type
        else:
            read_only.append(name)  # computed, or a type this tool does not write
    return types, missing, read_only


def column_converters(spec: TableSpec, types: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """(Mongo field, Airtable field, field type) for each writable mapped field but `id` and links."""
    return [(mongo, airtable, types[airtable]) for mongo, airtable in spec.mapping
            if mongo != "id" and types.get(airtable, "multipleRecordLinks") != "multipleRecordLinks"]


def convert_record(record: ExportRecord, columns: Sequence[tuple[str, str, str]],
                   with_id: bool) -> tuple[dict, list[str], str | None]:
    """The record's mapped values converted for Airtable, the fields whose values were invalid,
    and why the record cannot be sent at all, if it cannot."""
    converted: dict[str, Any] = {"id": record.mongo_id} if with_id and record.mongo_id is not None else {}
    invalid: list[str] = []
    problem = None
    for mongo_name, airtable_name, field_type in columns:
        if mongo_name not in record.doc:
            continue  # absent: Airtable keeps its value
        try:
            converted[airtable_name] = value = convert_value(record.doc[mongo_name], field_type)
        except Invalid:
            invalid.append(airtable_name)
            continue
        if field_type in TEXT_TYPES and value is not None and len(value) > TEXT_LIMIT:
            problem = f"field {airtable_name}: text of {len(value)} characters is over Airtable's {TEXT_LIMIT} limit"
    return converted, invalid, problem


# ---------------------------------------------------------------------------
# Diff
# ---------------------------------------------------------------------------


def is_blank(value: Any, field_type: str) -> bool:
    return value is None or value == "" or value == [] or (value is False and field_type == "checkbox")


def values_equal(new: Any, old: Any, field_type: str) -> bool:
    """The contract's equality: blank forms are equal, numbers as numbers,
    dates as instants at whole seconds, lists in order."""
    if new == old:
        return True
    if is_blank(new, field_type) or is_blank(old, field_type):
        return is_blank(new, field_type) and is_blank(old, field_type)
    if field_type in ("date", "dateTime"):
        try:
            a, b = to_instant(new), to_instant(old)
            if field_type == "date":
                return a.date() == b.date()
            return a.replace(microsecond=0) == b.replace(microsecond=0)  # whole seconds, before 1970 too
        except (Invalid, OverflowError):
            return new == old
    if isinstance(new, (int, float)) and isinstance(old, (int, float)) and not isinstance(new, bool):
        return new == old
    if isinstance(new, list) and isinstance(old, list):
        return len(new) == len(old) and all(str(a) == str(b) for a, b in zip(new, old))
    return new == old


def changed_fields(converted: Mapping[str, Any], current: Mapping[str, Any], types: Mapping[str, str]) -> dict:
    return {name: value for name, value in converted.items()
            if value != current.get(name) and not values_equal(value, current.get(name), types[name])}


# ---------------------------------------------------------------------------
# Plan
# ---------------------------------------------------------------------------

PENDING = "pending-create"  # a link to a record this run creates; resolved at apply time


@dataclass(frozen=True)
class LinkRef:
    target: str
    mongo_id: str


@dataclass
class PlannedWrite:
    record: ExportRecord
    action: str  # create | update | skip | error
    record_id: str | None = None  # the Airtable record updated
    matched_by: str | None = None  # "id" or "key" (pass 1 or 2) for an update or skip
    fields: dict = field(default_factory=dict)  # values to send (links as LinkRef lists)
    error: str | None = None
    outcome: str = "planned"  # planned | done | failed | unknown (answer lost) | not attempted

    @property
    def failed(self) -> bool:
        return self.action == "error" or self.outcome in ("failed", "unknown", "not attempted")


@dataclass
class TablePlan:
    spec: TableSpec
    types: dict[str, str]  # writable Airtable field -> type
    has_id_field: bool
    writes: list[PlannedWrite]
    orphans: int
    unmapped_fields: list[str]
    missing_in_airtable: list[str]
    read_only: list[str]
    invalid_values: int = 0
    unresolved_links: int = 0
    planned: dict[str, int] = field(default_factory=dict)  # counts per action, as planned

    def of(self, action: str) -> list[PlannedWrite]:
        return [w for w in self.writes if w.action == action]


def link_reference(doc: dict, link: LinkSpec) -> str | None:
    for name in link.mongo_fields:
        value = doc.get(name)
        if value not in (None, ""):
            return str(value)
    return None


def plan_table(
    spec: TableSpec,
    exported: Sequence[ExportRecord],
    airtable_records: Sequence[dict],
    schema: dict[str, FieldInfo] | None,
    link_index: Mapping[str, Mapping[str, str]],
) -> TablePlan:
    """What to create, update and skip for one table: pure, no I/O."""
    types, missing, read_only = field_types(spec, schema, airtable_records, exported)
    has_id_field = "id" in types or (schema is None and any("id" in r["fields"] for r in airtable_records))
    unmapped = sorted({k for r in exported for k in r.doc} - spec.consumed_mongo_fields)
    plan = TablePlan(spec, types, has_id_field, [], 0, unmapped, missing, read_only)
    # Records that cannot be matched safely fail before matching, so they claim no Airtable record.
    usable, seen_ids = [], set()
    for record in exported:
        if record.mongo_id is None and not natural_key(record.doc, spec.key_fields):
            plan.writes.append(PlannedWrite(record, "error", error=f"record #{record.index + 1} has no id "
                                            f"and no {'/'.join(spec.key_fields)}"))
        elif not has_id_field and not natural_key(record.doc, spec.key_fields):
            # With no `id` field in Airtable only the key finds a record again: created, it
            # would be created again on every run.
            plan.writes.append(PlannedWrite(record, "error", error=f"no {'/'.join(spec.key_fields)}, and the "
                                            "Airtable table has no id field to find it by"))
        elif record.mongo_id is not None and record.mongo_id in seen_ids:
            plan.writes.append(PlannedWrite(record, "error", error="duplicate id in the export; "
                                            "its first record is synced"))
        else:
            seen_ids.add(record.mongo_id)
            usable.append(record)
    matches, orphans = match_records(usable, airtable_records, spec.key_fields, spec.airtable_key, has_id_field)
    plan.orphans = len(orphans)
    columns = column_converters(spec, types)
    for match in matches:
        record = match.record
        converted, invalid, problem = convert_record(record, columns, "id" in types)
        plan.invalid_values += len(invalid)
        if invalid:
            log.debug("%s %s: invalid values left out: %s", spec.key, record.mongo_id, ", ".join(invalid))
        for link in spec.links:
            if link.airtable_field not in types:
                continue
            ref = link_reference(record.doc, link)
            if ref is None:
                continue
            target = link_index.get(link.target, {}).get(ref)
            if target is None:
                plan.unresolved_links += 1
            else:
                converted[link.airtable_field] = [target if target != PENDING else LinkRef(link.target, ref)]
        if problem:
            plan.writes.append(PlannedWrite(record, "error", error=problem))
            continue
        if match.airtable is None:
            # Blank values are not sent on a create (is_blank, inlined: it runs per value).
            fields = {k: v for k, v in converted.items() if v is not None and v is not False and v != "" and v != []}
            plan.writes.append(PlannedWrite(record, "create", fields=fields))
            continue
        changes = changed_fields(converted, match.airtable["fields"], types)
        action = "update" if changes else "skip"
        plan.writes.append(PlannedWrite(record, action, record_id=match.airtable["id"], fields=changes,
                                        matched_by=match.how))
    plan.writes.sort(key=lambda w: w.record.index)
    plan.planned = {a: sum(1 for w in plan.writes if w.action == a) for a in ("create", "update", "skip", "error")}
    return plan


def build_link_index(airtable_records: Sequence[dict], plan: TablePlan | None) -> dict[str, str]:
    """Mongo id -> Airtable record id (or PENDING) of a link target table after its planned sync."""
    index: dict[str, str] = {}
    for rec in airtable_records:
        value = rec["fields"].get("id")
        if value not in (None, ""):
            index.setdefault(str(value), rec["id"])
    if plan is not None:
        for write in plan.writes:
            if write.record.mongo_id is None:
                continue
            if write.action in ("update", "skip"):
                index[write.record.mongo_id] = write.record_id  # type: ignore[assignment]
            elif write.action == "create":
                index[write.record.mongo_id] = PENDING
    return index


# ---------------------------------------------------------------------------
# Apply
# ---------------------------------------------------------------------------


FIELD_IN_MESSAGE = re.compile(r'[Ff]ield (?:name: )?"([^"]+)"')


def without_values(message: str) -> str:
    """An Airtable error for the INFO log: its type and field name, never the value it quotes."""
    kind = message.split(":", 1)[0]
    found = FIELD_IN_MESSAGE.search(message)
    return f"{kind} on field {found.group(1)}" if found else kind


def rejected_field(kind: str, message: str) -> tuple[str, str] | None:
    """(field, 'missing' | 'read_only') when Airtable rejected a whole field, not a value."""
    found = FIELD_IN_MESSAGE.search(message)
    if not found:
        return None
    if kind == "UNKNOWN_FIELD_NAME":
        return found.group(1), "missing"
    if kind == "INVALID_VALUE_FOR_COLUMN" and "because the field is computed" in message:
        return found.group(1), "read_only"
    return None


class Applier:
    """Sends a table's planned writes in batches of ten and records what became of each."""

    def __init__(self, airtable: Airtable, plan: TablePlan, created_ids: dict[str, dict[str, str]],
                 stop: threading.Event):
        self.airtable = airtable
        self.table = airtable.table(plan.spec.key)
        self.plan = plan
        self.created_ids = created_ids
        self.stop = stop
        self.written: list[dict] = []  # Airtable's copy of every record written

    # -- fields -----------------------------------------------------------------

    def materialize(self, write: PlannedWrite) -> dict:
        """The fields to send, with links to records created earlier in this run filled in."""
        fields = {}
        for name, value in write.fields.items():
            if isinstance(value, list) and value and isinstance(value[0], LinkRef):
                target = self.created_ids.get(value[0].target, {}).get(value[0].mongo_id)
                if target is None:
                    self.plan.unresolved_links += 1  # its create failed
                    continue
                value = [target]
            fields[name] = value
        return fields

    def drop_field(self, name: str, reason: str) -> None:
        """Airtable rejected the field itself: stop writing it for the rest of the run."""
        log.warning("%s: Airtable rejects field %r (%s); it is left out for the rest of the run",
                    self.plan.spec.key, name, "unknown" if reason == "missing" else "computed")
        (self.plan.missing_in_airtable if reason == "missing" else self.plan.read_only).append(name)
        self.plan.types.pop(name, None)
        if name == "id":
            self.plan.has_id_field = False
        for write in self.plan.writes:
            write.fields.pop(name, None)

    # -- requests ---------------------------------------------------------------

    def upserts(self, action: str, batch: Sequence[tuple[PlannedWrite, dict]]) -> bool:
        return action == "create" and self.plan.has_id_field and all("id" in f for _, f in batch)

    def send(self, action: str, batch: list[tuple[PlannedWrite, dict]]) -> tuple[list[dict], set[str] | None]:
        """Airtable's copy of the records written, and which were new (None: all of them were)."""
        if action == "update":
            return self.table.batch_update([{"id": w.record_id, "fields": f} for w, f in batch], typecast=True), None
        if self.upserts(action, batch):
            # Merged on `id`, a create re-sent after a lost answer updates the record it made.
            result = self.table.batch_upsert([{"fields": f} for _, f in batch], key_fields=["id"], typecast=True)
            return result["records"], set(result["createdRecords"])
        return self.table.batch_create([f for _, f in batch], typecast=True), None

    def fail(self, batch: Sequence[tuple[PlannedWrite, dict]], message: str, outcome: str = "failed") -> None:
        for write, _ in batch:
            write.outcome = outcome
            write.error = message
            log.warning("%s %s: %s", self.plan.spec.key, write.record.mongo_id or f"#{write.record.index + 1}",
                        without_values(message) if outcome == "failed" else f"outcome {outcome}")

    def succeed(self, batch: Sequence[tuple[PlannedWrite, dict]], records: list[dict],
                created: set[str] | None = None) -> None:
        self.written.extend(records)
        if len(records) != len(batch):
            raise AirtableAccessError(f"Airtable answered {len(records)} records for {len(batch)} written")
        by_key = {r["id"]: r for r in records} | {r["fields"]["id"]: r for r in records if r["fields"].get("id")}
        if all((w.record_id or f.get("id")) in by_key for w, f in batch):
            # Airtable answers in request order; matching by id does not depend on it.
            records = [by_key[w.record_id] if w.record_id in by_key else by_key[f["id"]] for w, f in batch]
        for (write, _), rec in zip(batch, records):
            write.outcome = "done"
            write.record_id = rec["id"]
            if write.action == "create" and created is not None and rec["id"] not in created:
                # The upsert found the record already there (a stale cache, or this create's
                # earlier attempt): it was updated, and the report says so.
                log.info("%s %s: already in Airtable, updated", self.plan.spec.key, write.record.mongo_id)
                write.action = "update"
            if write.action == "create" and write.record.mongo_id is not None:
                self.created_ids.setdefault(self.plan.spec.key, {})[write.record.mongo_id] = rec["id"]
            if log.isEnabledFor(logging.DEBUG):  # the dump costs more than the write itself
                log.debug("%s %s: %s %s %s", self.plan.spec.key, write.record.mongo_id, write.action,
                          rec["id"], json.dumps(jsonable(write.fields), ensure_ascii=False, default=str))
            write.fields = {}  # written: Airtable's copy, in self.written, is what the cache keeps

    def write_batch(self, action: str, batch: list[tuple[PlannedWrite, dict]]) -> None:
        """One request; a 422 is retried record by record so only the bad records fail.
        An outage or a refused token stops the run (AirtableAccessError)."""
        try:
            records, created = self.send(action, batch)
        except AIRTABLE_FAILURES as exc:
            status = exc.response.status_code if isinstance(exc, requests.HTTPError) else None
            if status in (404, 422):
                self.write_refused(action, batch, *airtable_error(exc))  # type: ignore[arg-type]
            elif status is not None and status < 500 and status not in (401, 403, 429):
                kind, message = airtable_error(exc)  # type: ignore[arg-type]
                self.fail(batch, f"HTTP {status} {kind}: {message}")
            else:
                self.write_lost(action, batch, exc)
            return
        if self.airtable.transport.last_retried:
            created = None  # a retried upsert finds what its own lost first attempt made
        self.succeed(batch, records, created)

    def write_refused(self, action: str, batch: list[tuple[PlannedWrite, dict]], kind: str, message: str) -> None:
        """Airtable refused the request for its content: drop a rejected field, or find the bad records."""
        if rejected := rejected_field(kind, message):
            self.write_without_field(action, batch, *rejected)
        elif len(batch) > 1:
            for item in batch:
                self.write_batch(action, [item])
        else:
            self.fail(batch, f"{kind}: {message}")

    def write_lost(self, action: str, batch: list[tuple[PlannedWrite, dict]], exc: Exception) -> None:
        """Retries are spent (or the token refused): the run stops, unless only a plain create
        is in doubt. A 5xx or a lost connection may have been applied: its records say so."""
        error = access_error(exc, self.airtable.settings, f"writing {self.plan.spec.key}")
        status = exc.response.status_code if isinstance(exc, requests.HTTPError) else None
        if status in (401, 403, 429) or (status is None and _never_sent(exc)):
            raise error from None  # not applied: mark_not_attempted reports these records
        cause = f"HTTP {status} {airtable_error(exc)[0]}" if status else type(exc).__name__  # type: ignore[arg-type]
        if action == "create" and not self.upserts(action, batch):
            self.fail(batch, f"outcome unknown ({cause}); not re-sent, since a plain create could duplicate it: "
                      "the next run finds the record by its natural key if it was created", outcome="unknown")
            return  # only this batch is in doubt; the run goes on
        self.fail(batch, f"outcome unknown ({error}); the next run settles it", outcome="unknown")
        raise error from None

    def write_without_field(self, action: str, batch: list[tuple[PlannedWrite, dict]], name: str, reason: str) -> None:
        if not any(name in f for _, f in batch):
            self.fail(batch, f"Airtable rejected field {name} ({reason}), which this request did not send")
            return
        self.drop_field(name, reason)
        remaining = [(w, {k: v for k, v in f.items() if k != name}) for w, f in batch]
        if action == "update":
            for write, fields in remaining:
                if not fields:
                    write.action, write.outcome = "skip", "done"
            remaining = [(w, f) for w, f in remaining if f]
        if remaining:
            self.write_batch(action, remaining)

    def apply(self) -> None:
        spec = self.plan.spec
        creates = self.plan.of("create")
        # Creates that carry an id are upserted; the rest cannot be: never mix them in one request.
        groups = (("create", [w for w in creates if "id" in w.fields]),
                  ("create", [w for w in creates if "id" not in w.fields]),
                  ("update", self.plan.of("update")))
        for action, pending in groups:
            if not pending:
                continue
            batch: list[tuple[PlannedWrite, dict]] = []
            with Progress(f"{spec.key}: {action}", len(pending)) as progress:
                for done, write in enumerate(pending, 1):
                    fields = self.materialize(write) if write.action == action else None
                    if action == "update" and fields == {}:
                        write.action, write.outcome = "skip", "done"  # only an unresolvable link had changed
                    elif fields is not None:
                        batch.append((write, fields))
                    if batch and (len(batch) == RECORDS_PER_WRITE or done == len(pending)):
                        if self.stop.is_set():
                            raise RunInterrupted()
                        self.write_batch(action, batch)
                        batch = []
                    if not batch:
                        progress.update(done - progress.done)
        log.info("%s: applied", spec.key)


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


@dataclass
class TableResult:
    """One table's figures for the report: the plan and what became of it."""

    total: int = 0
    created: int = 0
    updated: int = 0
    skipped: int = 0
    errors: int = 0
    orphans: int = 0
    unresolved_links: int = 0
    unmapped_fields: list[str] = field(default_factory=list)
    missing_in_airtable: list[str] = field(default_factory=list)
    read_only: list[str] = field(default_factory=list)
    invalid_values: int = 0
    not_attempted: int = 0
    planned: dict[str, int] = field(default_factory=dict)
    note: str = ""


def summarize(plan: TablePlan, dry_run: bool) -> TableResult:
    writes = plan.writes
    count = plan.planned
    result = TableResult(
        total=len(writes),
        orphans=plan.orphans,
        unresolved_links=plan.unresolved_links,
        unmapped_fields=plan.unmapped_fields,
        missing_in_airtable=sorted(set(plan.missing_in_airtable)),
        read_only=sorted(set(plan.read_only)),
        invalid_values=plan.invalid_values,
        planned=count,
    )
    if dry_run:
        result.created, result.updated = count["create"], count["update"]
    else:
        result.created = sum(1 for w in writes if w.action == "create" and w.outcome == "done")
        result.updated = sum(1 for w in writes if w.action == "update" and w.outcome == "done")
        result.not_attempted = sum(1 for w in writes if w.outcome == "not attempted")
    result.skipped = sum(1 for w in writes if w.action == "skip")
    result.errors = sum(1 for w in writes if w.failed)
    return result


@dataclass
class RunReport:
    dry_run: bool
    started: datetime
    tables: dict[str, TableResult] = field(default_factory=dict)
    requests: RequestStats = field(default_factory=RequestStats)
    errors: list[dict] = field(default_factory=list)
    ended: str = "ok"
    exit_code: int = 0
    message: str = ""
    duration_s: float = 0.0

    def as_dict(self) -> dict:
        return {
            "dry_run": self.dry_run,
            "started": self.started.isoformat(timespec="seconds"),
            "ended": self.ended,
            "exit_code": self.exit_code,
            "message": self.message,
            "tables": {k: dataclasses.asdict(v) for k, v in self.tables.items()},
            "requests": self.requests.as_dict(),
            "errors": self.errors,
            "duration_s": round(self.duration_s, 3),
        }


MARKDOWN_ERROR_ROWS = 200  # the JSON twin lists every failed record


def render_markdown(report: RunReport) -> str:
    data = report.as_dict()
    mode = "dry run (nothing written)" if report.dry_run else "sync"
    lines = [f"# Airtable sync report: {report.started:%Y-%m-%d %H:%M:%S}", ""]
    totals = {k: sum(getattr(t, k) for t in report.tables.values()) for k in ("created", "updated", "skipped", "errors")}
    verb = "would create" if report.dry_run else "created"
    lines += [
        f"**{report.ended.upper()}** ({mode}, exit code {report.exit_code}) in {report.duration_s:.1f} s: "
        f"{verb} {totals['created']}, {'would update' if report.dry_run else 'updated'} {totals['updated']}, "
        f"skipped {totals['skipped']} unchanged, {totals['errors']} failed; "
        f"{report.requests.total} requests ({report.requests.read} read, {report.requests.write} write, "
        f"{report.requests.retried} retried).",
        "",
    ]
    if report.message:
        lines += [f"> {report.message}", ""]
    columns = ["total", "created", "updated", "skipped", "errors", "orphans", "unresolved_links", "invalid_values"]
    lines += ["## Tables", "", "| table | " + " | ".join(c.replace("_", " ") for c in columns) + " |",
              "|---" * (len(columns) + 1) + "|"]
    for key, result in report.tables.items():
        lines.append(f"| {key} | " + " | ".join(str(getattr(result, c)) for c in columns) + " |")
    lines.append("")
    for key, result in report.tables.items():
        notes = []
        if result.note:
            notes.append(result.note)
        for label, names in (("Mongo fields not synced (unmapped)", result.unmapped_fields),
                             ("Mapped fields missing in Airtable", result.missing_in_airtable),
                             ("Mapped fields read-only in Airtable (computed)", result.read_only)):
            if names:
                notes.append(f"{label}: {', '.join(names)}")
        if result.not_attempted:
            notes.append(f"{result.not_attempted} planned writes not attempted")
        if notes:
            lines += [f"### {key}", ""] + [f"- {n}" for n in notes] + [""]
    if report.errors:
        lines += ["## Failed records", "", "| table | mongo id | message |", "|---|---|---|"]
        for error in report.errors[:MARKDOWN_ERROR_ROWS]:
            message = str(error["message"]).replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {error['table']} | {error['mongo_id'] or '(none)'} | {message} |")
        if len(report.errors) > MARKDOWN_ERROR_ROWS:
            lines.append(f"\n... and {len(report.errors) - MARKDOWN_ERROR_ROWS} more in the JSON report.")
        lines.append("")
    lines += ["## Requests", "", "| " + " | ".join(data["requests"]) + " |",
              "|---" * len(data["requests"]) + "|",
              "| " + " | ".join(str(v) for v in data["requests"].values()) + " |", ""]
    return "\n".join(lines)


def write_report(report: RunReport, reports_dir: Path, secret: str) -> Path:
    """The Markdown report and its JSON twin; the token is masked even where Airtable's
    (or a proxy's) error text quoted it."""
    def masked(text: str) -> str:
        return text.replace(secret, "[token]") if secret else text

    stamp = report.started.strftime("%Y%m%d_%H%M%S")
    path = reports_dir / f"sync_report_{stamp}.md"
    n = 1
    while path.exists() or path.with_suffix(".json").exists():
        n += 1
        path = reports_dir / f"sync_report_{stamp}_{n}.md"
    write_private(path.with_suffix(".json"), masked(json.dumps(report.as_dict(), indent=2, ensure_ascii=False)))
    write_private(path, masked(render_markdown(report)))
    return path


def summary_line(report: RunReport) -> str:
    parts = []
    for key, t in report.tables.items():
        parts.append(f"{key}: {t.created} created, {t.updated} updated, {t.skipped} skipped, {t.errors} failed")
    return "; ".join(parts) or "no table synced"


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------


class RedactToken(logging.Filter):
    """Defence in depth: the token never reaches a log line, whatever a library puts in a message."""

    def __init__(self, secret: str):
        super().__init__()
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secret:
            message = record.getMessage()
            if self.secret in message:
                record.msg, record.args = message.replace(self.secret, "[token]"), None
        return True


def setup_logging(verbose: bool, log_file: Path | None, secret: str = "") -> list[logging.Handler]:
    """Console and log-file handlers; `secret` (and any added later with RedactToken) is masked."""
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(RedactToken(secret))
    root = logging.getLogger()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    if not verbose:
        logging.getLogger("urllib3").setLevel(logging.WARNING)
    return handlers


def teardown_logging(handlers: Sequence[logging.Handler]) -> None:
    root = logging.getLogger()
    for handler in handlers:
        root.removeHandler(handler)
        handler.close()


@contextlib.contextmanager
def run_lock(cache_dir: Path) -> Iterator[None]:
    """An exclusive OS lock: released by the kernel when the process dies, so a killed run never blocks."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(cache_dir / ".airtable_sync.lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise UsageError(f"cache folder {cache_dir}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise LockHeld(f"another airtable_sync run holds {cache_dir / '.airtable_sync.lock'}") from None
            raise
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def interruptible(stop: threading.Event) -> Iterator[dict]:
    """SIGINT/SIGTERM set `stop`: the request in flight finishes, then the run winds down."""
    caught: dict[str, int] = {}
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return

    def handler(signum, _frame):
        caught.setdefault("signal", signum)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield caught
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@dataclass
class Sync:
    """One run of the pipeline, from loaded settings to the report."""

    settings: Settings
    stop: threading.Event
    report: RunReport
    plans: dict[str, TablePlan] = field(default_factory=dict)
    from_cache: set[str] = field(default_factory=set)  # tables read from --use-cache caches

    def load_exports(self) -> dict[str, list[ExportRecord]]:
        exports = {}
        for key in self.settings.tables:
            path = self.settings.mongo_dir / TABLE_SPECS[key].export_file
            records = load_export(path, self.settings.limit)
            if records is None:
                log.warning("%s not found: table %s is not synced", path, key)
                self.report.tables[key] = TableResult(note=f"{path.name} not found: not synced")
                continue
            exports[key] = records
            log.info("%s: %d records in %s", key, len(records), path.name)
        return exports

    def airtable_records(self, airtable: Airtable, keys: Iterable[str]) -> dict[str, list[dict]]:
        pulled = {}
        for key in keys:
            cached = read_cache(cache_path(self.settings, key)) if self.settings.use_cache else None
            if cached is not None:
                log.info("%s: %d Airtable records from the cache", key, len(cached))
                pulled[key] = cached
                self.from_cache.add(key)
                continue
            pulled[key] = pull_table(airtable, key, self.stop)
            log.info("%s: pulled %d Airtable records", key, len(pulled[key]))
        return pulled

    def plan(self, exports, pulled, schema, airtable: Airtable) -> dict[str, TablePlan]:
        plans: dict[str, TablePlan] = {}
        for key in TABLE_ORDER:
            if key not in exports:
                continue
            spec = TABLE_SPECS[key]
            link_index = {link.target: build_link_index(pulled.get(link.target, []), plans.get(link.target))
                          for link in spec.links}
            table_schema = None if schema is None else schema.get(key, {})
            plans[key] = plan_table(spec, exports[key], pulled[key], table_schema, link_index)
            if key in self.from_cache and any(w.matched_by == "key" for w in plans[key].writes):
                # A natural-key match claims a record for good: a stale cache could hand it to the
                # wrong Mongo record, so those are only ever made against a fresh pull.
                log.info("%s: natural-key matches are not made against a cache: pulling the table", key)
                pulled[key] = pull_table(airtable, key, self.stop)
                self.from_cache.discard(key)
                plans[key] = plan_table(spec, exports[key], pulled[key], table_schema, link_index)
            for record in exports[key]:
                record.doc = {}  # planned: the document is no longer needed, and it is the bulk of memory
            counts = plans[key].planned
            log.info("%s: plan: %d to create, %d to update, %d unchanged, %d failing, %d orphans", key,
                     counts["create"], counts["update"], counts["skip"], counts["error"], plans[key].orphans)
        return plans

    def apply(self, airtable: Airtable, plans: dict[str, TablePlan], pulled: dict[str, list[dict]]) -> None:
        created_ids: dict[str, dict[str, str]] = {}
        for key, plan in plans.items():
            applier = Applier(airtable, plan, created_ids, self.stop)
            try:
                applier.apply()
            finally:
                merge_written(pulled[key], applier.written)

    def run(self) -> int:
        exports = self.load_exports()
        if not exports:
            log.warning("no export found in %s: nothing to sync", self.settings.mongo_dir)
        airtable = connect(self.settings, self.stop)
        self.report.requests = airtable.stats
        schema = fetch_schema(airtable)
        # Messages link to Users and Events: those are read even when not synced.
        needed = [k for k in TABLE_ORDER if k in exports or any(
            link.target == k for e in exports for link in TABLE_SPECS[e].links)]
        pulled = self.airtable_records(airtable, needed)
        plans = self.plans = self.plan(exports, pulled, schema, airtable)
        try:
            if not self.settings.dry_run:
                self.apply(airtable, plans, pulled)
        except (AirtableAccessError, RunInterrupted) as exc:
            self.mark_not_attempted(plans, exc)
            raise
        finally:
            for key, plan in plans.items():
                self.report.tables[key] = summarize(plan, self.settings.dry_run)
                self.report.errors += [{"table": key, "mongo_id": w.record.mongo_id, "message": w.error}
                                       for w in plan.writes if w.failed]
            for key, records in pulled.items():
                write_cache(cache_path(self.settings, key), records)
        failed = any(t.errors for t in self.report.tables.values())
        return EXIT_RECORD_FAILED if failed else EXIT_OK

    def mark_not_attempted(self, plans: dict[str, TablePlan], exc: Exception) -> None:
        reason = "interrupted" if isinstance(exc, RunInterrupted) else str(exc)
        for plan in plans.values():
            for write in plan.writes:
                if write.action in ("create", "update") and write.outcome == "planned":
                    write.outcome, write.error = "not attempted", f"not synced: {reason}"

    @property
    def anything_written(self) -> bool:
        return any(w.outcome in ("done", "unknown") and w.action in ("create", "update")
                   for plan in self.plans.values() for w in plan.writes)


def merge_written(records: list[dict], written: Iterable[dict]) -> None:
    """Fold Airtable's answers into the pulled records, so the cache is the base after the run."""
    position = {rec["id"]: i for i, rec in enumerate(records)}
    for rec in written:
        if rec["id"] in position:
            records[position[rec["id"]]] = rec
        else:
            position[rec["id"]] = len(records)
            records.append(rec)


def run_check(settings: Settings, out=None) -> int:
    """--check: is each table readable, and how do the mappings compare with the schema."""
    out = out or sys.stdout
    airtable = connect(settings, threading.Event())
    schema = fetch_schema(airtable)
    print(f"Airtable base {settings.base_id} at {settings.endpoint_url}", file=out)
    if schema is None:
        print("schema: not readable (the token lacks schema.bases:read); types would be inferred", file=out)
    for key in settings.tables:
        spec = TABLE_SPECS[key]
        try:
            airtable.table(key).first()
        except AIRTABLE_FAILURES as exc:
            raise access_error(exc, settings, f"reading table {key}") from None
        table_schema = None if schema is None else schema.get(key)
        print(f"\n{key} ({settings.table_ids[key]}): reachable", file=out)
        if table_schema is None:
            continue
        width = max(len(n) for n in spec.airtable_fields) + 2
        for name in spec.airtable_fields:
            info = table_schema.get(name)
            if info is None:
                status = "missing in Airtable"
            elif info.type in COMPUTED_TYPES:
                status = f"read-only ({info.type})"
            elif info.type in WRITABLE_TYPES:
                status = f"ok ({info.type})"
            else:
                status = f"not written: unsupported type ({info.type})"
            print(f"  {name:<{width}}{status}", file=out)
    print(f"\n{airtable.stats.total} requests, nothing written", file=out)
    return EXIT_OK


def execute(settings: Settings, started: datetime) -> tuple[int, RunReport, Path | None]:
    """The whole run under the lock, with the report written however it ends."""
    stop = threading.Event()
    report = RunReport(dry_run=settings.dry_run, started=started)
    sync = Sync(settings, stop, report)
    clock = time.monotonic()
    code = EXIT_OK
    try:
        with run_lock(settings.cache_dir), interruptible(stop) as caught:
            try:
                code = sync.run()
                report.ended = "ok" if code == EXIT_OK else "finished with failed records"
            except UsageError as exc:
                code, report.ended, report.message = EXIT_USAGE, "input error", str(exc)
                log.error("%s", exc)
            except AirtableAccessError as exc:
                code = EXIT_RECORD_FAILED if sync.anything_written else EXIT_AIRTABLE
                report.ended, report.message = "Airtable error", str(exc)
                log.error("%s", exc)
            except RunInterrupted:
                pass
            except Exception as exc:  # a bug: still one line, a report, and a code cron can tell apart
                code, report.ended = EXIT_CRASH, "crashed"
                report.message = f"internal error: {type(exc).__name__}: {exc}"
                log.error("%s (traceback with -v)", report.message)
                log.debug("traceback", exc_info=True)
            finally:
                save_recent_requests(settings)
            if caught.get("signal"):
                code = EXIT_SIGTERM if caught["signal"] == signal.SIGTERM else EXIT_SIGINT
                report.ended = "interrupted"
                report.message = f"interrupted by {signal.Signals(caught['signal']).name}"
                log.warning("%s: the request in flight finished; report marked interrupted", report.message)
    except LockHeld as exc:
        print(f"airtable_sync: {exc}; nothing done", file=sys.stderr)
        return EXIT_LOCKED, report, None
    except UsageError as exc:  # the cache folder cannot hold the lock
        code, report.ended, report.message = EXIT_USAGE, "settings error", str(exc)
        log.error("%s", exc)
    report.exit_code = code
    report.duration_s = time.monotonic() - clock
    path = write_report(report, settings.reports_dir, settings.api_key)
    return code, report, path


def run_demo(verbose: bool) -> int:
    """Sync the sample exports into the local emulator: no account, no token, only a temp folder."""
    emulator_path = SCRIPT_DIR / "tests" / "airtable_emulator.py"
    fixtures = SCRIPT_DIR / "tests" / "fixtures"
    if not emulator_path.is_file() or not (fixtures / "base.json").is_file():
        print(f"airtable_sync: --demo needs {emulator_path} and {fixtures}/ from the repository", file=sys.stderr)
        return EXIT_USAGE
    spec = importlib.util.spec_from_file_location("airtable_emulator", emulator_path)
    emulator_module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = emulator_module  # its dataclasses look their module up by name
    spec.loader.exec_module(emulator_module)  # type: ignore[union-attr]
    workdir = Path(tempfile.mkdtemp(prefix="airtable-sync-demo-"))
    token = "demo-token-not-a-secret"
    with emulator_module.Emulator(fixtures / "base.json", token=token, rps=5) as emulator:
        env = {"AIRTABLE_API_KEY": token, "AIRTABLE_ENDPOINT_URL": emulator.url,
               "AIRTABLE_BASE_ID": emulator.base_id}
        args = build_arg_parser().parse_args(
            ["--mongo-dir", str(fixtures), "--cache-dir", str(workdir / "data"),
             "--reports-dir", str(workdir / "reports")] + (["-v"] if verbose else []))
        settings = settings_from(args, env)
        handlers = setup_logging(verbose, settings.reports_dir / "airtable_sync.log", token)
        try:
            print(f"Demo: syncing {fixtures} into a local Airtable emulator at {emulator.url}", flush=True)
            code, report, path = execute(settings, datetime.now())
            print(f"\nFirst run: exit {code}; {summary_line(report)}; "
                  f"{report.requests.write} write requests, {report.requests.read} read", flush=True)
            code2, report2, path2 = execute(settings, datetime.now())
            print(f"Second run, nothing changed: exit {code2}; {summary_line(report2)}; "
                  f"{report2.requests.write} write requests", flush=True)
        finally:
            teardown_logging(handlers)
    print(f"\nReport: {path}\nSecond report: {path2}\nCaches and log: {workdir}")
    if code == EXIT_RECORD_FAILED:
        print("(The sample data holds one user with an invalid email on purpose: it fails alone, "
              "the first run exits 1, and the report names its Mongo id.)")
    # The demo worked if the sync ran to its end; a failed sample record is part of the show.
    return EXIT_OK if code in (EXIT_OK, EXIT_RECORD_FAILED) and code2 == code else code


def main(argv: Sequence[str] | None = None, *, environ: Mapping[str, str] | None = None,
         dotenv_path: Path | None = SCRIPT_DIR / ".env") -> int:
    """Run the tool. `environ` replaces the process environment and .env (tests use it)."""
    started = datetime.now()
    try:
        args = build_arg_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse has printed
        return int(exc.code or 0)
    if args.demo:
        return run_demo(args.verbose)
    # Logging first, so that a settings error or the .env warning reaches cron's log file too.
    log_file = None if args.check else (args.reports_dir or SCRIPT_DIR / "reports") / "airtable_sync.log"
    try:
        handlers = setup_logging(args.verbose, log_file)
    except OSError as exc:
        print(f"airtable_sync: reports folder {log_file.parent if log_file else ''}: {exc.strerror}",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        try:
            env = dict(environ) if environ is not None else read_environment(dotenv_path)
            settings = settings_from(args, env)
        except UsageError as exc:
            log.error("%s", exc)
            return EXIT_USAGE
        for handler in handlers:
            handler.addFilter(RedactToken(settings.api_key))
        if settings.check:
            try:
                return run_check(settings)
            except AirtableAccessError as exc:
                log.error("%s", exc)
                return EXIT_AIRTABLE
            finally:
                save_recent_requests(settings)
        log.info("airtable_sync: base %s, tables %s%s", settings.base_id, ",".join(settings.tables),
                 " (dry run)" if settings.dry_run else "")
        code, report, path = execute(settings, started)
        if path is not None:
            print(f"{report.ended}: {summary_line(report)}; {report.requests.total} requests "
                  f"({report.requests.write} write); report: {path}")
        return code
    finally:
        teardown_logging(handlers)


if __name__ == "__main__":
    sys.exit(main())
