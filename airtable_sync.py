#!/usr/bin/env python3
"""One-way sync of Cuculi's MongoDB exports into Airtable.

Reads users.json, events.json and messages.json (written by mongodb_pull.py) and the
base's Users, Events and Messages tables (in full, or what changed since the last run from
a webhook's payloads), matches every exported record to its Airtable record and writes
only what changed: Users, then Events, then Messages (which link to both); --delete-missing
also deletes, capped and archived, the records that left Mongo. Writes a log and a
Markdown + JSON report; --dry-run is the sync without the apply step. The rules are in
docs/RULES.md; README.md tells how to run it.

The sections, under banners, in pipeline order, each using what stands above it: Common;
Settings; Connect; Read (the fields bound by id, in full, by change feed); Load exports;
Match; Convert; Diff; Plan; Apply; Report (what the writes were for, the files); Commands
and Restore (what the runner runs); The run (logging, the lock, the one runner, main).
"""
from __future__ import annotations

import argparse
import base64
import codecs
import contextlib
import dataclasses
import enum
import errno
import fcntl
import functools
import hashlib
import itertools
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
import traceback
from array import array
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from pathlib import Path
from types import MappingProxyType
from typing import Any, BinaryIO, ClassVar

import requests
from dotenv import dotenv_values
from pyairtable import Api, formulas
from requests.adapters import HTTPAdapter
from tqdm import tqdm


# ---------------------------------------------------------------------------
# Common: exit codes, Airtable's limits, errors, outcomes, field types and dates, private files, progress, the budget
# ---------------------------------------------------------------------------


SCRIPT_DIR = Path(__file__).resolve().parent
log = logging.getLogger("airtable_sync")
EXIT_OK = 0
EXIT_RECORD_FAILED = 1
EXIT_USAGE = 2
EXIT_AIRTABLE = 3
EXIT_LOCKED = 75  # EX_TEMPFAIL: another run holds the lock, try again later
EXIT_CRASH = 70  # EX_SOFTWARE: a bug in this tool; the report says where
EXIT_IOERR = 74  # EX_IOERR: a local file could not be written (a full disk): the operator's to fix
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


class MonthlyCallsSpent(AirtableAccessError):
    """Airtable's 429 PUBLIC_API_BILLING_LIMIT_EXCEEDED: every request refused until the month turns; never retried."""


class LocalWriteError(OSError):
    """A local file could not be written: exit 74. An OSError, so places that may shrug off a failed write still can."""

    def __init__(self, path: Path, cause: OSError):
        super().__init__(cause.errno, cause.strerror or str(cause), str(path))
        self.path = path

    def __str__(self) -> str:
        return (f"cannot write {self.path}: {self.strerror}; free some space or make the folder "
                "writable, then rerun (nothing half-written was left, and the next run recovers)")


class RunInterrupted(Exception):
    """SIGINT/SIGTERM arrived; the request in flight was allowed to finish."""


class LockHeld(Exception):
    """Another run holds the lock."""


class Outcome(enum.StrEnum):
    """What became of one planned write or deletion."""

    PLANNED = "planned"
    DONE = "done"
    SKIPPED = "skipped"  # nothing left to send (a rejected field, an unresolvable link), or a deletion kept
    FAILED = "failed"
    UNKNOWN = "unknown"  # the answer was lost: the next run (or restore) settles it
    NOT_ATTEMPTED = "not attempted"  # the run stopped before its request

    @property
    def failed(self) -> bool:
        return self in (Outcome.FAILED, Outcome.UNKNOWN, Outcome.NOT_ATTEMPTED)


TEXT_TYPES = {"singleLineText", "multilineText", "richText", "email", "url", "phoneNumber"}
NUMBER_TYPES = {"number", "currency", "percent", "rating", "duration"}
COMPUTED_TYPES = {"formula", "rollup", "count", "lookup", "multipleLookupValues", "createdTime",
                  "lastModifiedTime", "autoNumber", "createdBy", "lastModifiedBy", "button"}
WRITABLE_TYPES = TEXT_TYPES | NUMBER_TYPES | {"checkbox", "date", "dateTime", "singleSelect",
                                              "multipleSelects", "multipleRecordLinks"}


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


# What a full disk, a quota or an unwritable folder answer: the operator's to fix (exit 74). Other
# errors naming a folder (not a folder, no such path) are a wrong --cache-dir or --reports-dir.
LOCAL_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                                errno.EFBIG, errno.EIO})

# A scratch file stays in memory up to this size, then spills to the cache dir: only a large base's touches the disk.
SCRATCH_IN_MEMORY_BYTES = 512 * 1024


def scratch_file(directory: Path | None) -> Any:
    """An unnamed temporary file (mode 0600, gone when closed) for what a run keeps on disk."""
    return tempfile.SpooledTemporaryFile(max_size=SCRATCH_IN_MEMORY_BYTES, dir=directory)


@contextlib.contextmanager
def scratch_files(directory: Path) -> Iterator[None]:
    """Scratch files (in the cache dir) that meet a full disk fail as any local file does: exit 74."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, (LocalWriteError, requests.RequestException)) or exc.errno not in LOCAL_WRITE_ERRNOS:
            raise
        raise LocalWriteError(directory / "(a temporary file of this run)", exc) from None


def open_private(path: Path, flags: int) -> int:
    """os.open at mode 0600, its folder made; LocalWriteError when that fails."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, flags, 0o600)
    except OSError as exc:
        raise LocalWriteError(path, exc) from None


def write_private(path: Path, text: str | Iterable[str | bytes]) -> None:
    """Write a file only its owner can read (it holds personal data), whole or not at all: on
    LocalWriteError the previous file stays as it was, and no tmp file is left behind."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        # surrogatepass: a cell may hold half an emoji (a lone surrogate, valid in JSON text),
        # which strict UTF-8 refuses; the snapshot reads it back the same way (_cache_line).
        with os.fdopen(open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "wb") as handle:
            for piece in [text] if isinstance(text, str) else text:
                handle.write(piece.encode("utf-8", "surrogatepass") if isinstance(piece, str) else piece)
            handle.flush()
            os.fsync(handle.fileno())  # on disk before it replaces the old file: a crash leaves one whole
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(exc, OSError):  # the tmp file's open too: the error names the file written
            raise LocalWriteError(path, exc) from None
        raise


def append_whole(fd: int, data: bytes, sync: bool = False) -> None:
    """Appends `data` (whole lines) to an open file, or on an OSError cuts it back (no half line) and re-raises."""
    start = os.lseek(fd, 0, os.SEEK_END)
    try:
        done = 0
        while done < len(data):
            done += os.write(fd, data[done:])
        if sync:
            os.fsync(fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, start)
        raise


def append_archive(path: Path, lines: Iterable[dict]) -> None:
    """JSON objects appended to an archive (mode 0600), one a line, and on disk before the request
    they precede is sent: LocalWriteError (exit 74) when they cannot be, and the request is not."""
    data = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode("utf-8", "surrogatepass")
    fd = open_private(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        new = os.fstat(fd).st_size == 0
        append_whole(fd, data, sync=True)
    except OSError as exc:
        if new:
            with contextlib.suppress(OSError):
                os.remove(path)
        raise LocalWriteError(path, exc) from None
    finally:
        os.close(fd)


class Progress:
    """How far a long phase (a pull, a table's writes, deletes) has got, in record counts, never values: on a
    terminal (`stream`, stderr by default, is a TTY) tqdm's live line; otherwise (cron) a log line every
    `log_every_s` seconds, and a last one if it logged any. A total of None is unknown."""

    def __init__(self, description: str, total: int | None = None, *, stream=None, log_every_s: float = 5.0):
        self.description, self.total, self.log_every_s = description, total, log_every_s
        self.stream = sys.stderr if stream is None else stream
        self.done = 0
        self.bar: tqdm | None = None
        self.started = self.logged_at = time.monotonic()
        self.logged = False
        self.closing = contextlib.ExitStack()  # on a terminal: the bar and the log redirect

    def __enter__(self) -> Progress:
        live = False
        with contextlib.suppress(AttributeError, ValueError):  # no isatty, or closed
            live = self.stream.isatty()
        if live:
            self.bar = self.closing.enter_context(tqdm(total=self.total, desc=self.description, unit=" records",
                                                       file=self.stream, mininterval=0.5, dynamic_ncols=True))
            # Console log lines go above the live line instead of through it (tqdm's own redirect
            # keeps the console handler's filters: the token stays masked, file-only lines stay out).
            # Imported here: tqdm.contrib brings in asyncio and ssl, 2.3 MB a run that cron's never use.
            from tqdm.contrib.logging import logging_redirect_tqdm
            self.closing.enter_context(logging_redirect_tqdm())
        return self

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif time.monotonic() - self.logged_at >= self.log_every_s:
            self._log()

    def _log(self, final: bool = False) -> None:
        self.logged = True
        self.logged_at = time.monotonic()
        rate = self.done / max(self.logged_at - self.started, 1e-9)
        if self.total is None:
            log.info("%s: %d records%s (%.1f/s)", self.description, self.done, "" if final else " so far", rate)
            return
        left = f", about {(self.total - self.done) / rate:.0f} s left" if rate and self.done < self.total else ""
        log.info("%s: %d/%d records (%.1f/s%s)", self.description, self.done, self.total, rate, left)

    def __exit__(self, exc_type, exc, tb) -> None:
        self.closing.close()
        if self.bar is None and self.logged and exc_type is None:
            self._log(final=True)


# The API budget: Airtable caps a workspace's API calls a month (Free 1,000, Team 100,000; shared
# by every integration: support.airtable.com/docs/managing-api-call-limits-in-airtable). The tool
# counts its own, per base and day, over a rolling 30 days, beside the state.
REQUEST_BUDGET_FILE = ".requests_30_days.json"
BUDGET_DAYS = 30
BUDGET_WARNING_SHARE = 0.8
BUDGET_ADVICE = ("once the workspace's monthly calls are spent, Airtable refuses every request until the month "
                 "turns: run less often, or move the workspace to a plan with more calls")


def budget_counts(counts: Mapping[str, int], today: date, add: int = 0) -> dict[str, int]:
    """A base's requests by UTC day ("YYYY-MM-DD"), `add` more today, the days out of the window dropped."""
    first = today - timedelta(days=BUDGET_DAYS - 1)
    kept = {}
    for day, n in counts.items():
        with contextlib.suppress(TypeError, ValueError):  # not a day: not ours
            if first <= date.fromisoformat(day) <= today and isinstance(n, int) and n > 0:
                kept[day] = n
    if add:
        kept[today.isoformat()] = kept.get(today.isoformat(), 0) + add
    return kept


def budget_text(last_30_days: int, monthly_calls: int | None) -> str:
    """'1,234 requests in the last 30 days, 1.2% of AIRTABLE_MONTHLY_CALLS=100000'."""
    text = f"{last_30_days:,} request{'' if last_30_days == 1 else 's'} in the last {BUDGET_DAYS} days"
    if monthly_calls:
        text += f", {last_30_days / monthly_calls:.1%} of AIRTABLE_MONTHLY_CALLS={monthly_calls}"
    return text


def budget_high(last_30_days: int, monthly_calls: int | None) -> bool:
    """At or over 80% of the workspace's monthly calls: the operator should look."""
    return bool(monthly_calls) and last_30_days >= BUDGET_WARNING_SHARE * monthly_calls  # type: ignore[operator]


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

    @property
    def airtable_fields(self) -> list[str]:
        return [at for _, at in self.mapping] + [link.airtable_field for link in self.links]

    @property
    def consumed_mongo_fields(self) -> set[str]:
        references = (name for link in self.links for name in link.mongo_fields)
        return {mongo for mongo, _ in self.mapping} | {"_id", "id", *references}


def _mapping(spec: str) -> tuple[tuple[str, str], ...]:
    """'mongo' or 'mongo->Airtable' pairs, space-separated."""
    pairs = (item.partition("->") for item in spec.split())
    return tuple((mongo, airtable or mongo) for mongo, _, airtable in pairs)


TABLE_SPECS: dict[str, TableSpec] = {spec.key: spec for spec in (
    TableSpec("users", "users.json", _mapping("""
        id email firstName lastName phone role gender birthDay occupation homeNeighborhood interests
        tableTypePreference event_count order_count total_spent last_active days_inactive
        engagement_status journey_stage value_segment user_segment churn_risk profile_completeness
        profile_ready summary createdAt updatedAt"""), key_fields=("email",), airtable_key="email"),
    TableSpec("events", "events.json", _mapping("""
        id name->Name description startDate endDate location eventType cuisine tableType maxCapacity price
        participantCount participationPercentage participant_top_interests participant_top_occupations
        qualifies_seat_newcomers qualifies_fill_the_table summary createdAt updatedAt"""),
              key_fields=("name",), airtable_key="Name"),
    TableSpec("messages", "messages.json", _mapping("""
        id user_name event_name user_id event_id user_email user_phone user_summary event_summary
        message_text->message personalization_notes character_count similarity_score confidence_percentage
        reasoning status generated_at->createdAt campaign updatedAt"""),
              key_fields=("message_text", "message"), airtable_key="message",
              links=(LinkSpec("Users", "users", ("user_id", "senderId")),
                     LinkSpec("Events", "events", ("event_id", "eventId")))),
)}

TABLE_ORDER = ("users", "events", "messages")
LINK_TARGETS = {link.target for spec in TABLE_SPECS.values() for link in spec.links}

DEFAULT_BASE_ID = "appaquqFN7vvvZGcq"
DEFAULT_TABLE_IDS = {"users": "tblQ0OHBit2AqaACy", "events": "tblrscr87h8fbtQTk", "messages": "tbljma5S4NhUn1OYl"}


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
    change_tracking: bool = True  # AIRTABLE_CHANGE_TRACKING=webhook (the default) or off
    full_sync_days: float = 7.0
    full: bool = False  # --full: read every record this run
    delete_missing: bool = False
    force_delete: bool = False
    max_delete_fraction: float = 0.05
    force_clear: bool = False  # --force-clear: lift the clear cap for this run
    max_clear_fraction: float = 0.05
    archive_days: float = 30.0
    monthly_calls: int | None = None  # AIRTABLE_MONTHLY_CALLS: the workspace's monthly API call cap
    restore: Path | None = None  # --restore: the deletion archive to replay


EXIT_CODES_HELP = """\
settings (environment, or .env beside the script; the environment wins):
  AIRTABLE_API_KEY         personal access token (required; scopes
                           data.records:read, data.records:write, schema.bases:read,
                           and webhook:manage for change tracking)
  AIRTABLE_BASE_ID         default appaquqFN7vvvZGcq
  AIRTABLE_USERS_TABLE     default tblQ0OHBit2AqaACy
  AIRTABLE_EVENTS_TABLE    default tblrscr87h8fbtQTk
  AIRTABLE_MESSAGES_TABLE  default tbljma5S4NhUn1OYl
  AIRTABLE_ENDPOINT_URL    default https://api.airtable.com
  AIRTABLE_MAX_RPS         requests per second per base, default 5
  AIRTABLE_TIMEOUT_S       seconds for every HTTP request, default 30
  AIRTABLE_MAX_RETRIES     retries of a 429, 5xx or network failure, default 5
  AIRTABLE_CHANGE_TRACKING webhook (default: read Airtable's change feed) or off
  AIRTABLE_FULL_SYNC_DAYS  a full read at least this often, default 7 (days)
  AIRTABLE_MAX_DELETE_FRACTION  --delete-missing deletes at most this share of a
                           table's records with an id, default 0.05
  AIRTABLE_MAX_CLEAR_FRACTION  a run empties at most this share of a table's cells
                           holding a value in one mapped field, default 0.05 (and
                           always 10)
  AIRTABLE_ARCHIVE_DAYS    days a deletion or changes archive is kept, default 30
  AIRTABLE_MONTHLY_CALLS   the workspace's monthly API call cap (Free 1000, Team 100000),
                           unset by default; when set, reports give the share of it this
                           tool used in the last 30 days, with a warning at 80%
  MONGODB_DATA_DIR         default ../mongodb_pull/data beside the script

exit codes:
  0    every record synced or skipped
  1    the run finished but at least one record failed, or deletions or
       clears were held back by a safety cap
  2    configuration, usage or input error (nothing written to Airtable)
  3    Airtable unreachable, authentication or permission failure, or the
       workspace's monthly API calls spent (1 if records were already written)
  70   an internal error (a bug): one line naming the log, which has the
       traceback (so does the console with -v); the report marked crashed.
       An answer from Airtable the tool cannot read is one too
  74   a local file could not be written (a full disk, an unwritable folder):
       one line naming the path; the next run recovers
  75   another run holds the lock (nothing done)
  130  interrupted by SIGINT, 143 by SIGTERM (report marked interrupted)
"""

EXAMPLES = """\
examples:
  airtable_sync.py --check              connect, compare the mappings with the base; write nothing
  airtable_sync.py --dry-run            the whole run and its report, without a write
  airtable_sync.py                      the nightly sync (cron): what changed, in as few requests
  airtable_sync.py --delete-missing     also delete what left Mongo (capped, archived first)
  airtable_sync.py --restore reports/deleted_20261201_021500.jsonl
                                        put back what a run deleted
  airtable_sync.py --restore reports/changed_20261201_021500.jsonl
                                        put back the values a run overwrote
  airtable_sync.py --demo               the whole sync against a local emulator, no account
"""


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="airtable_sync.py", epilog=EXAMPLES + "\n" + EXIT_CODES_HELP,
                                     description="Sync the MongoDB exports (users, events, messages) into Airtable.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = parser.add_argument_group("modes (the default is the sync)")
    modes.add_argument("--check", action="store_true", help="compare the mappings with Airtable's schema; write nothing")
    modes.add_argument("--dry-run", action="store_true", help="plan and report, send no write request")
    modes.add_argument("--restore", type=Path, metavar="ARCHIVE",
                       help="replay a deletion archive (reports/deleted_<stamp>.jsonl), or put back the values a "
                            "run overwrote (reports/changed_<stamp>.jsonl)")
    modes.add_argument("--demo", action="store_true", help="sync the sample data into a local Airtable emulator")
    reading = parser.add_argument_group("reading")
    reading.add_argument("--mongo-dir", type=Path, help="folder of users.json, events.json, messages.json")
    reading.add_argument("--tables", default=",".join(TABLE_ORDER), help="comma-separated subset of users,events,messages")
    reading.add_argument("--full", action="store_true", help="read every record this run, not the change feed")
    reading.add_argument("--use-cache", action="store_true",
                         help="reuse data/airtable_<table>.json instead of reading Airtable")
    reading.add_argument("--limit", type=int, metavar="N", help="sync only the first N exported records of each table")
    deletion = parser.add_argument_group("deletion and the safety caps")
    deletion.add_argument("--delete-missing", action="store_true",
                          help="also delete Airtable records whose Mongo document left the export")
    deletion.add_argument("--force-delete", action="store_true",
                          help="with --delete-missing: lift the safety cap for this run")
    deletion.add_argument("--force-clear", action="store_true",
                          help="lift the clear cap for this run: write the clears it would hold back")
    output = parser.add_argument_group("output")
    output.add_argument("--cache-dir", type=Path, help="Airtable caches and the lock (default: data/)")
    output.add_argument("--reports-dir", type=Path, help="log and reports (default: reports/)")
    output.add_argument("-v", "--verbose", action="store_true", help="debug logging, with field values")
    return parser


def read_environment(dotenv_path: Path | None) -> dict[str, str]:
    """The process environment over the .env file (a real variable wins)."""
    if dotenv_path is None or not dotenv_path.is_file():
        return dict(os.environ)
    mode = dotenv_path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s is readable by group or others (mode %o); run: chmod 600 %s",
                    dotenv_path, stat.S_IMODE(mode), dotenv_path)
    return {**{k: v for k, v in dotenv_values(dotenv_path).items() if v is not None}, **os.environ}


def _number_setting(env: Mapping[str, str], name: str, default: float | None, *, whole: bool = False,
                    zero_ok: bool = False, at_most: float = math.inf) -> Any:
    """A number greater than zero (with `zero_ok`, zero or more; with `whole`, an int); `default` when unset."""
    raw = env.get(name, "").strip()
    kind = int if whole else float
    if not raw:
        return None if default is None else kind(default)
    try:
        value = kind(raw)
    except ValueError:
        raise UsageError(f"{name}={raw!r} is not a {'whole ' if whole else ''}number") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
        raise UsageError(f"{name}={raw!r} must be {'zero or more' if zero_ok else 'greater than zero'}")
    if value > at_most:
        raise UsageError(f"{name}={value!r} must be between 0 and {at_most}")
    return value


def settings_from(args: argparse.Namespace, env: Mapping[str, str]) -> Settings:
    api_key = env.get("AIRTABLE_API_KEY", "").strip()
    if not api_key:
        raise UsageError("AIRTABLE_API_KEY is not set: put it in the environment or in .env (see .env.example)")
    base_id = env.get("AIRTABLE_BASE_ID", "").strip() or DEFAULT_BASE_ID
    if not re.match(r"^app[A-Za-z0-9]{14}$", base_id):
        raise UsageError(f"AIRTABLE_BASE_ID={base_id!r} is not a base id (app followed by 14 letters or digits)")
    table_ids = {}
    for key, default in DEFAULT_TABLE_IDS.items():
        var = f"AIRTABLE_{key.upper()}_TABLE"
        value = env.get(var, "").strip() or default
        if value.startswith("tbl") and not re.match(r"^tbl[A-Za-z0-9]{14}$", value):
            raise UsageError(f"{var}={value!r} is not a table id (tbl followed by 14 letters or digits)")
        table_ids[key] = value
    endpoint = env.get("AIRTABLE_ENDPOINT_URL", "").strip() or "https://api.airtable.com"
    if not re.match(r"^https?://[^\s/]+", endpoint):
        raise UsageError(f"AIRTABLE_ENDPOINT_URL={endpoint!r} is not an http(s) URL")
    tables = tuple(t.strip() for t in args.tables.split(",") if t.strip())
    if not tables or not TABLE_SPECS.keys() >= set(tables):
        raise UsageError(f"--tables {args.tables!r}: choose from {','.join(TABLE_ORDER)}")
    if args.limit is not None and args.limit < 0:
        raise UsageError("--limit must be zero or more")
    if args.force_delete and not args.delete_missing:
        raise UsageError("--force-delete goes with --delete-missing")
    if args.restore is not None:
        given = {"--check": args.check, "--delete-missing": args.delete_missing, "--full": args.full,
                 "--use-cache": args.use_cache, "--force-clear": args.force_clear, "--limit": args.limit is not None}
        clash = [flag for flag, on in given.items() if on]
        if clash:
            raise UsageError(f"--restore replays an archive and does not go with {', '.join(clash)}")
    tracking = (env.get("AIRTABLE_CHANGE_TRACKING", "").strip() or "webhook").lower()
    if tracking not in ("webhook", "off"):
        raise UsageError(f"AIRTABLE_CHANGE_TRACKING={tracking!r}: choose webhook or off")
    max_delete_fraction = _number_setting(env, "AIRTABLE_MAX_DELETE_FRACTION", 0.05, zero_ok=True, at_most=1)
    max_clear_fraction = _number_setting(env, "AIRTABLE_MAX_CLEAR_FRACTION", 0.05, zero_ok=True, at_most=1)
    mongo_dir = args.mongo_dir or Path(env.get("MONGODB_DATA_DIR", "").strip() or SCRIPT_DIR / "../mongodb_pull/data")
    if not mongo_dir.is_dir() and not args.check and args.restore is None:
        raise UsageError(f"Mongo data folder {mongo_dir} does not exist (set --mongo-dir or MONGODB_DATA_DIR)")
    flags = ("dry_run", "check", "use_cache", "limit", "verbose", "full", "delete_missing", "force_delete",
             "force_clear", "restore")
    return Settings(
        **{flag: getattr(args, flag) for flag in flags},  # as the command line gave them
        api_key=api_key,
        base_id=base_id,
        table_ids=table_ids,
        endpoint_url=endpoint.rstrip("/"),
        max_rps=_number_setting(env, "AIRTABLE_MAX_RPS", 5),
        timeout_s=_number_setting(env, "AIRTABLE_TIMEOUT_S", 30),
        max_retries=_number_setting(env, "AIRTABLE_MAX_RETRIES", 5, whole=True, zero_ok=True),
        mongo_dir=mongo_dir,
        cache_dir=args.cache_dir or SCRIPT_DIR / "data",
        reports_dir=args.reports_dir or SCRIPT_DIR / "reports",
        tables=tuple(t for t in TABLE_ORDER if t in tables),
        change_tracking=tracking == "webhook",
        full_sync_days=_number_setting(env, "AIRTABLE_FULL_SYNC_DAYS", 7),
        max_delete_fraction=max_delete_fraction,
        max_clear_fraction=max_clear_fraction,
        archive_days=_number_setting(env, "AIRTABLE_ARCHIVE_DAYS", 30),
        monthly_calls=_number_setting(env, "AIRTABLE_MONTHLY_CALLS", None, whole=True),
    )


# ---------------------------------------------------------------------------
# Connect: pyairtable over a throttled, retrying transport
# ---------------------------------------------------------------------------


@dataclass
class RequestStats:
    """A run's requests, as the report gives them (`reached` aside)."""

    total: int = 0
    # Of those, the ones that reached Airtable or may have (a failed connect did not): what the monthly
    # count sees. For the budget, not reported.
    reached: int = field(default=0, repr=False)
    read: int = 0
    write: int = 0
    retried: int = 0
    rate_limited: int = 0
    last_30_days: int = 0  # the tool's requests to this base in the last 30 days, this run's included

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "reached"}


def request_kind(method: str, path: str) -> str:
    """read or write, as Airtable's request counts see it."""
    return "read" if method.upper() == "GET" or path.split("?", 1)[0].endswith("/listRecords") else "write"


class Throttle:
    """At most `rate` requests in any rolling second, each holding its place from its start until a second
    after it completes: the server sees it arrive in between, so its own rolling count stays at or under `rate`."""

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

    def acquire(self) -> None:
        while True:
            with self.lock:
                window_start = self.clock() - self.window - self.MARGIN_S
                while self.completed and self.completed[0] <= window_start:
                    self.completed.popleft()
                if len(self.completed) + self.in_flight < self.slots:
                    self.in_flight += 1
                    return
                # 0.01 s when every slot is held by a request still in flight; 0.001 s at least: no float-rounding spin
                delay = max(self.completed[0] - window_start, 0.001) if self.completed else 0.01
            if self.stop.wait(delay):
                raise RunInterrupted()

    def release(self) -> None:
        with self.lock:
            self.in_flight -= 1
            self.completed.append(self.clock())


_THROTTLES: dict[str, Throttle] = {}  # by "endpoint base", as in RECENT_REQUESTS_FILE
RECENT_REQUESTS_FILE = ".recent_requests.json"


def shared_throttle(settings: Settings, stop: threading.Event) -> Throttle:
    """One throttle per base, as Airtable counts requests. Runs in one process share it; a run right after
    another process's (say `--check`, then the sync) starts from the completion times that one left in the cache dir."""
    key = f"{settings.endpoint_url} {settings.base_id}"
    throttle = _THROTTLES.get(key)
    if throttle is None or throttle.rate != settings.max_rps:
        throttle = _THROTTLES[key] = Throttle(settings.max_rps, stop)
        recent = []
        with contextlib.suppress(OSError, ValueError, AttributeError):
            recent = json.loads((settings.cache_dir / RECENT_REQUESTS_FILE).read_text()).get(key, [])
        wall, mono = time.time(), time.monotonic()
        throttle.completed.extend(sorted(mono - (wall - t) for t in recent if 0 <= wall - t < throttle.window + 1))
    throttle.stop = stop
    return throttle


def save_recent_requests(settings: Settings) -> None:
    key = f"{settings.endpoint_url} {settings.base_id}"
    throttle = _THROTTLES.get(key)
    if throttle is None:
        return
    wall, mono = time.time(), time.monotonic()
    recent = [wall - (mono - t) for t in throttle.completed if mono - t < throttle.window + 1]
    with contextlib.suppress(OSError):
        write_private(settings.cache_dir / RECENT_REQUESTS_FILE, json.dumps({key: recent}))


def count_requests(settings: Settings, stats: RequestStats) -> None:
    """Add this run's requests to the base's rolling 30 days and set stats.last_30_days, even if writing them fails."""
    path = settings.cache_dir / REQUEST_BUDGET_FILE
    key = f"{settings.endpoint_url} {settings.base_id}"
    today = datetime.now(timezone.utc).date()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        if not isinstance(exc, FileNotFoundError):
            log.warning("request counts %s unreadable (%s): counting from this run", path, type(exc).__name__)
        data = {}
    counts = {k: v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}
    mine = budget_counts(counts.pop(key, {}), today, stats.reached)
    stats.last_30_days = sum(mine.values())
    if stats.reached:
        counts = {k: budget_counts(v, today) for k, v in counts.items()}
        write_private(path, json.dumps({**{k: v for k, v in counts.items() if v}, key: mine}, sort_keys=True))


def _never_sent(error: BaseException | None) -> bool:
    """True when the request failed and provably did not reach the server (connect failed)."""
    if isinstance(error, requests.ConnectTimeout):
        return True
    while error is not None:
        if type(error).__name__ in ("NewConnectionError", "NameResolutionError"):
            return True
        error = getattr(error, "reason", None) or error.__context__
    return False


def retry_delay(attempt: int, max_retries: int, method: str, path: str, status: int | None,
                headers: Mapping[str, str], error: BaseException | None) -> float | None:
    """Seconds to wait before re-sending, or None to give up. A 429 was not processed, so any request
    may be re-sent after the penalty. A 5xx, timeout or dropped connection may have been applied:
    only requests safe to repeat (reads, updates by record id, upserts merged on `id`) are re-sent;
    a plain create (a POST, which a second copy would duplicate) only if it never left."""
    if attempt >= max_retries:
        return None
    retry_after: float | None = None  # absent, or an HTTP date: the defaults below
    with contextlib.suppress(ValueError):
        retry_after = max(0.0, float(headers.get("Retry-After") or ""))
    backoff = min(0.5 * 2**attempt, 8.0)
    if status == 429:  # Airtable's penalty is 30 s; a Retry-After may only shorten it
        return RATE_LIMIT_PENALTY_S if retry_after is None else min(retry_after, RATE_LIMIT_PENALTY_S)
    if method.upper() == "POST" and request_kind(method, path) == "write":
        return backoff if _never_sent(error) else None
    if error is not None:
        return backoff
    if status is not None and status >= 500:
        # Airtable's 503 "may provide" Retry-After (errors docs): honoured, within reason.
        return backoff if retry_after is None else min(max(backoff, retry_after), RATE_LIMIT_PENALTY_S)
    return None


# A 429 whose error type is this means the workspace's monthly API calls are spent: Airtable
# refuses every data request until the month turns, so waiting 30 s helps nothing. The body is
# Airtable's usual error object, {"error": {"type": ..., "message": ...}} (errors docs,
# airtable.com/developers/web/api/errors; support.airtable.com "Airtable API: Common
# troubleshooting": "a JSON-encoded body that contains error and message fields").
# UNCONFIRMED: the type's name is from integrations that met it (their code and reports), not
# from Airtable's own pages, which the search index does not hold; its message is unknown.
BILLING_LIMIT_ERROR = "PUBLIC_API_BILLING_LIMIT_EXCEEDED"

MONTHLY_CALLS_SPENT = ("Airtable refused the request: the workspace's monthly API calls are spent "
                       f"(HTTP 429 {BILLING_LIMIT_ERROR}), and Airtable refuses every request until "
                       "the month turns. Wait for the new month, or move the workspace to a plan "
                       "with more calls; the next run then finishes the job")


def is_billing_limit(status: int | None, body: Any) -> bool:
    """Airtable's answer when the workspace's monthly API calls are spent."""
    error = body.get("error") if status == 429 and isinstance(body, dict) else None
    return (error.get("type") if isinstance(error, dict) else error) == BILLING_LIMIT_ERROR


def _json_or_none(response: requests.Response) -> Any:
    with contextlib.suppress(ValueError):
        return response.json()
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
        self.calls_spent = False  # Airtable said the month's calls are spent: send nothing more

    def send(self, request, **kwargs):  # type: ignore[override]
        kwargs["timeout"] = self.timeout
        method, path = request.method or "GET", request.path_url
        kind = request_kind(method, path)
        for attempt in itertools.count():
            if self.stop.is_set():
                raise RunInterrupted()
            if self.calls_spent:  # whatever a caller makes of the first refusal, no further request
                raise MonthlyCallsSpent(MONTHLY_CALLS_SPENT)
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
            if response is not None or not _never_sent(error):
                self.stats.reached += 1
            status = response.status_code if response is not None else None
            if status == 429 and is_billing_limit(status, _json_or_none(response)):  # type: ignore[arg-type]
                # Not a rate limit: not retried. Raised past every caller's handling of HTTP
                # errors, so the run stops here, as for an outage (execute() sets the exit code).
                self.calls_spent = True
                response.close()  # type: ignore[union-attr]
                raise MonthlyCallsSpent(MONTHLY_CALLS_SPENT)
            if status == 429:
                self.stats.rate_limited += 1
            delay = retry_delay(attempt, self.retry_limit, method, path, status,
                                response.headers if response is not None else {}, error)
            if delay is None:
                if error is not None:
                    raise error
                return response
            log.warning("%s %s: %s; retrying in %.1f s (retry %d of %d)", method, path.split("?", 1)[0],
                        f"HTTP {status}" if status else type(error).__name__, delay, attempt + 1, self.retry_limit)
            if response is not None:
                response.close()
            self.stop.wait(delay)  # a stop ends the wait, and the run at the loop's top


@dataclass(frozen=True)
class FieldInfo:
    name: str
    type: str
    id: str = ""
    links_to: str = ""  # a link field's table id (a restore maps links with it)
    inverse: str = ""  # a link field's partner in that table, which Airtable keeps in step


@dataclass
class BaseSchema:
    """The synced tables' fields, from the metadata API (or, between full reads, the state)."""

    table_ids: dict[str, str]  # table key -> Airtable table id (settings may name a table)
    fields: dict[str, dict[str, FieldInfo]]  # table key -> field name -> field

    def as_json(self) -> dict:
        return {"table_ids": self.table_ids,
                "fields": {k: [[f.id, f.name, f.type] for f in fields.values()] for k, fields in self.fields.items()}}

    @classmethod
    def from_json(cls, data: dict) -> "BaseSchema":
        return cls(dict(data["table_ids"]),
                   {k: {name: FieldInfo(name, ftype, fid) for fid, name, ftype in fields}
                    for k, fields in data["fields"].items()})


@dataclass
class Airtable:
    """The connection: pyairtable's Api with our transport, and the transport's request counts."""

    api: Api
    settings: Settings
    stats: RequestStats
    # Table key -> the table's id once the schema (or the state's binding) gave it, else the
    # setting: a table the settings name keeps working after a person renames it.
    table_ids: dict[str, str]

    def table(self, key: str):
        return self.api.table(self.settings.base_id, self.table_ids[key])

    def use_tables(self, source: "BaseSchema | dict[str, str] | None") -> None:
        """Requests go to these table ids (from the schema, or the state's bindings) from now on."""
        if source is not None:
            self.table_ids.update(source.table_ids if isinstance(source, BaseSchema) else source)


def connect(settings: Settings, stop: threading.Event, stats: RequestStats | None = None) -> Airtable:
    api = Api(settings.api_key, retry_strategy=None, endpoint_url=settings.endpoint_url)

    def bearer_token(request: requests.PreparedRequest) -> requests.PreparedRequest:
        """The token as requests' auth, not only a session header: requests documents that a
        ~/.netrc entry for the host replaces an Authorization header when no auth is given."""
        request.headers["Authorization"] = f"Bearer {settings.api_key}"
        return request
    api.session.auth = bearer_token
    transport = AirtableTransport(settings, RequestStats() if stats is None else stats, stop)
    api.session.mount("https://", transport)
    api.session.mount("http://", transport)
    return Airtable(api, settings, transport.stats, dict(settings.table_ids))


# What a request to Airtable can end in, once the transport's retries are spent.
AIRTABLE_FAILURES = (requests.HTTPError, requests.ConnectionError, requests.Timeout)


def airtable_error(exc: requests.HTTPError) -> tuple[str, str]:
    """(type, message) of an Airtable error response."""
    response = exc.response
    body = _json_or_none(response)
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("type", f"HTTP_{response.status_code}")), str(error.get("message", ""))
    if isinstance(error, str):
        return error, str(body.get("message", error))
    if body is None:  # not JSON: a proxy's page, say
        return f"HTTP_{response.status_code}", (response.text or "")[:300]
    return f"HTTP_{response.status_code}", json.dumps(body)[:300]


def access_error(exc: Exception, settings: Settings, what: str) -> AirtableAccessError:
    if isinstance(exc, requests.HTTPError):
        kind, message = airtable_error(exc)
        status = exc.response.status_code
        hint = ""
        if status in (401, 403, 404):  # a token, scope or id problem; a 429 or 5xx is not one
            hint = ("; check AIRTABLE_API_KEY and that the token has the scopes data.records:read, "
                    f"data.records:write and schema.bases:read and access to base {settings.base_id}")
        elif status == 429 or status >= 500:
            hint = f"; gave up after {settings.max_retries} retries"
        return AirtableAccessError(f"{what}: HTTP {status} {kind}: {message}{hint}")
    return AirtableAccessError(f"{what}: Airtable unreachable at {settings.endpoint_url} "
                               f"({type(exc).__name__}) after {settings.max_retries} retries")


def link_options(f: Any) -> tuple[str, str]:
    """A link field's table id and inverse field id, from pyairtable's field schema; else blanks."""
    options = getattr(f, "options", None)
    return (getattr(options, "linked_table_id", None) or "", getattr(options, "inverse_link_field_id", None) or "")


def fetch_schema(airtable: Airtable) -> BaseSchema | None:
    """Field types per table key, and table ids for Airtable.use_tables; None when the token may not read it."""
    settings = airtable.settings
    try:
        schema = airtable.api.base(settings.base_id).schema()
    except AIRTABLE_FAILURES as exc:
        if isinstance(exc, requests.HTTPError) and exc.response.status_code in (403, 404):
            log.warning("Airtable refused the schema (HTTP %s): the token lacks schema.bases:read; "
                        "field types will be inferred from the data", exc.response.status_code)
            return None
        raise access_error(exc, settings, "reading the schema") from None
    result = BaseSchema({}, {})
    for key, setting in settings.table_ids.items():
        # By the id bound to the setting first: a table set up by name may have been renamed since.
        table = next((t for t in schema.tables if t.id == airtable.table_ids.get(key)), None) \
            or next((t for t in schema.tables if setting in (t.id, t.name)), None)
        if table is not None:
            result.table_ids[key] = table.id
            result.fields[key] = {f.name: FieldInfo(f.name, str(getattr(f.type, "value", f.type)), f.id,
                                                    *link_options(f)) for f in table.fields}
    return result


# ---------------------------------------------------------------------------
# Read: the mapped fields bound to Airtable's field ids
# ---------------------------------------------------------------------------

# People rename columns. Field names change; field ids don't, and the API takes a field id
# wherever it takes a name (field-model; create/update records, performUpsert.fieldsToMergeOn;
# list records' returnFieldsByFieldId; webhook payloads key cells by id). So the first time a
# run sees a mapped field by its mapped name it binds the name to the field's id, keeps the
# binding in the state, and from then on reads, compares, matches and writes it by id.


@dataclass(frozen=True)
class Column:
    """A mapped Airtable field as this run finds it."""

    mapped: str  # its name in the mappings
    key: str  # how records and writes name it: its field id (the name when the schema is unreadable)
    name: str  # its name in Airtable now
    type: str  # "" when the schema is unreadable (inferred later from the values)


@dataclass
class TableColumns:
    """A table's mapped fields, as bind_columns finds them."""

    by_mapped: dict[str, Column]  # mapped name -> column, for the fields Airtable has
    missing: list[str] = field(default_factory=list)  # mapped names with no field
    renamed: list[dict] = field(default_factory=list)  # [{"mapped", "airtable"}]
    gone: list[str] = field(default_factory=list)  # mapped names whose bound field was deleted
    shadowed: set[str] = field(default_factory=set)  # renamed mapped names another field now carries (not synced)
    by_field_id: bool = True  # records and writes name fields by id (False: the schema is unreadable)

    def key(self, mapped: str) -> str | None:
        column = self.by_mapped.get(mapped)
        return None if column is None else column.key

    @property
    def id_key(self) -> str | None:
        """The key of the `id` field (the merge key), None when Airtable has none."""
        return self.key("id")

    @property
    def bindings(self) -> dict[str, str]:
        return {c.mapped: c.key for c in self.by_mapped.values()} if self.by_field_id else {}

    def mapped_name(self, key: str) -> str:
        """The mapped name of a field key (for reports and logs); a key no mapping has stays as it is."""
        return next((c.mapped for c in self.by_mapped.values() if c.key == key), key)


def bind_columns(spec: TableSpec, fields: Mapping[str, FieldInfo] | None, bound: Mapping[str, str]) -> TableColumns:
    """Find each mapped field: by its bound id; else (no binding yet, or its field is gone) the
    field with the mapped name, unless another mapped name is bound to it (a field renamed to
    another mapped field's name keeps serving the one it is bound to). Pure."""
    if fields is None:  # the schema is unreadable: the names, as the mappings say
        return TableColumns({m: Column(m, m, m, "") for m in spec.airtable_fields}, by_field_id=False)
    by_field_id = {f.id: f for f in fields.values()}
    taken = {fid for fid in bound.values() if fid in by_field_id}  # fields that serve a mapped name already
    columns = TableColumns({})
    for mapped in spec.airtable_fields:
        bound_id = bound.get(mapped)
        info = by_field_id.get(bound_id) if bound_id else None
        if bound_id and info is None:
            columns.gone.append(mapped)
        named = fields.get(mapped)
        if info is None and named is not None and named.id not in taken:
            info = named
            taken.add(named.id)
        if info is None:
            columns.missing.append(mapped)
            continue
        columns.by_mapped[mapped] = Column(mapped, info.id, info.name, info.type)
        if info.name != mapped:
            columns.renamed.append({"mapped": mapped, "airtable": info.name})
            if named is not None and named.id not in bound.values():  # another field took the name: not synced
                columns.shadowed.add(mapped)
    return columns


def warn_schema_changes(key: str, columns: TableColumns) -> None:
    """One WARNING a run for each mapped field a person renamed away or deleted."""
    for renamed in columns.renamed:
        mapped, now = renamed["mapped"], renamed["airtable"]
        other = (f"; the other field now called '{mapped}' is not synced" if mapped in columns.shadowed else "")
        log.warning("%s: field '%s' is called '%s' in Airtable now; still synced by its field id%s",
                    key, mapped, now, other)
    for mapped in columns.gone:
        outcome = (f": not synced until a field named '{mapped}' exists" if mapped in columns.missing
                   else " and another field took its name: synced into that one now")
        log.warning("%s: field '%s' was deleted in Airtable%s", key, mapped, outcome)


def state_bindings(settings: Settings, state: "ChangeState | None") -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """The state's bindings and table ids (for Airtable.use_tables) of the tables the settings still name as before."""
    if state is None or (state.endpoint_url, state.base_id) != (settings.endpoint_url, settings.base_id):
        return {}, {}
    table_ids = {key: state.schema.table_ids[key] for key, setting in state.tables.items()
                 if setting == settings.table_ids.get(key) and key in state.schema.table_ids}
    return {key: dict(state.bindings.get(key, {})) for key in table_ids}, table_ids


def table_bindings(schema: BaseSchema | None, bound: Mapping[str, Mapping[str, str]],
                   keys: Iterable[str]) -> dict[str, TableColumns]:
    """Every table's columns this run, from the schema and the bindings of the state."""
    return {key: bind_columns(TABLE_SPECS[key], None if schema is None else schema.fields.get(key, {}),
                              bound.get(key, {})) for key in keys}


# ---------------------------------------------------------------------------
# Read, in full: every page of every table, and the caches
# ---------------------------------------------------------------------------


def cache_path(settings: Settings, key: str) -> Path:
    return settings.cache_dir / f"airtable_{key}.json"


def memo_path(settings: Settings, key: str) -> Path:
    return settings.cache_dir / f"airtable_{key}.memo"


def export_index_path(settings: Settings, key: str) -> Path:
    return settings.cache_dir / f"export_{key}.index"


@functools.cache
def source_digest() -> bytes:
    """This file's own digest: a plan remembered by another version of the rules is not trusted
    (PlanMemo). Unreadable (a frozen build): a random one, so that nothing is remembered."""
    try:
        return hashlib.blake2b(Path(__file__).read_bytes(), digest_size=16).digest()
    except OSError:
        return os.urandom(16)

RECORD_ID = re.compile(rb'\{"id": "([^"\\]+)"')  # a cache line as write_cache writes it begins with the record id
FIELD_ID = re.compile(r"fld[A-Za-z0-9]+")
JSON_STRING = re.compile(rb'"([^"\\]*(?:\\.[^"\\]*)*)"')  # its text, as group 1


def first_cells(values: list[Any]) -> list[Any]:
    """`values` up to the first that is not blank (None or ""), the rest None."""
    for i, value in enumerate(values):
        if value not in (None, ""):
            return values[:i + 1] + [None] * (len(values) - i - 1)
    return values


def _cache_line(line: bytes) -> Any:
    return json.loads(line.rstrip(b"\n").removesuffix(b",").decode("utf-8", "surrogatepass"))


class TableSnapshot:
    """A table's records as Airtable has them, on disk one record a line as the cache holds them, and in memory
    only as where each line is (a 500,000-record base fits a small machine): a line of the cache file the run
    started from (read only), or of a spill (scratch_file) to which every record the run reads or writes is appended.
    Iteration follows the order records were added; a record put again keeps its place, as in the cache."""

    def __init__(self, directory: Path | None = None, cache: BinaryIO | None = None):
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
        self.cache = cache
        self.spill: BinaryIO = scratch_file(directory)  # in memory until it grows: cheap when nothing is put
        # Record id -> where its line starts: an offset in the cache file, or ~offset (< 0) in the spill.
        self.where: dict[str, int] = {}

    @classmethod
    def of(cls, records: Iterable[dict], directory: Path | None = None) -> "TableSnapshot":
        snapshot = cls(directory)
        for rec in records:
            snapshot.put(rec)
        return snapshot

    @classmethod
    def from_cache(cls, path: Path, directory: Path | None = None) -> "TableSnapshot | None":
        """A cache as write_cache writes it, indexed by each line's id; any other JSON array (a hand-made
        file) read whole into the spill; None when the file is missing or unreadable."""
        try:
            handle = open(path, "rb")
        except OSError as exc:
            if not isinstance(exc, FileNotFoundError):
                log.warning("cache %s unreadable (%s): reading Airtable instead", path, exc)
            return None
        snapshot = cls(directory, handle)
        try:
            if handle.readline().strip() != b"[":
                raise ValueError("not one record a line")
            while True:
                offset, line = handle.tell(), handle.readline()
                if line.rstrip(b"\n") == b"]":
                    break
                if not line.endswith(b"\n"):
                    raise ValueError("the file ends before its closing bracket")
                found = RECORD_ID.match(line)
                rec_id = found.group(1).decode() if found else _cache_line(line).get("id")
                if not isinstance(rec_id, str):
                    raise ValueError("a line is not a record")
                snapshot.where[rec_id] = offset
        except ValueError as exc:
            snapshot.close()
            records = None
            with contextlib.suppress(OSError, ValueError):
                records = json.loads(path.read_text(encoding="utf-8", errors="surrogatepass"))
            if not isinstance(records, list) or not all(isinstance(r, dict) and "id" in r for r in records):
                log.warning("cache %s unreadable (%s): reading Airtable instead", path, exc)
                return None
            return cls.of(records, directory)
        return snapshot

    def __len__(self) -> int:
        return len(self.where)

    def __contains__(self, rec_id: str) -> bool:
        return rec_id in self.where

    def ids(self) -> list[str]:
        return list(self.where)

    def line(self, rec_id: str) -> bytes | None:
        """The record's line, as the cache holds it (without the comma and newline)."""
        at = self.where.get(rec_id)
        if at is None:
            return None
        handle = self.cache if at >= 0 else self.spill
        handle.seek(at if at >= 0 else ~at)  # type: ignore[union-attr]
        return handle.readline().rstrip(b"\n").removesuffix(b",")  # type: ignore[union-attr]

    def get(self, rec_id: str) -> dict | None:
        line = self.line(rec_id)
        return None if line is None else _cache_line(line)

    def put(self, rec: dict) -> None:
        offset = self.spill.seek(0, os.SEEK_END)
        self.spill.write(json.dumps(rec, ensure_ascii=False).encode("utf-8", "surrogatepass") + b"\n")
        self.where[rec["id"]] = ~offset

    def pop(self, rec_id: str) -> dict | None:
        rec = self.get(rec_id)
        self.where.pop(rec_id, None)
        return rec

    def cells(self, keys: Sequence[str]) -> Iterator[tuple[str, list[Any]]]:
        """Each record's id and its cells under `keys` (None where absent) up to the first not blank, the rest
        None (matching needs a natural key only where there is no id). Text cells under field ids are read from
        the line unparsed: an unescaped `"fld…": ` in a record's JSON can only be one of its cells (quotes in a
        string are escaped, and no cell holds field ids as keys)."""
        if not all(FIELD_ID.fullmatch(k) for k in keys):
            for rec in self:  # cells by name (the schema is unreadable): "id" is also the record's own key
                yield rec["id"], first_cells([rec["fields"].get(k) for k in keys])
            return
        markers = [b'"' + k.encode() + b'": ' for k in keys]
        for rec_id in list(self.where):
            line: bytes = self.line(rec_id)  # type: ignore[assignment]
            values: list[Any] = []
            for marker in markers:
                at = line.find(marker)
                if at < 0:
                    values.append(None)
                    continue
                if found := JSON_STRING.match(line, at + len(marker)):
                    raw = found.group(1).decode("utf-8", "surrogatepass")
                    values.append(json.loads(f'"{raw}"') if "\\" in raw else raw)
                else:  # not text: parsed
                    fields = _cache_line(line)["fields"]
                    values = first_cells([fields.get(k) for k in keys])
                    break
                if values[-1] != "":
                    break
            yield rec_id, values + [None] * (len(keys) - len(values))

    def __iter__(self) -> Iterator[dict]:
        for rec_id in list(self.where):
            rec = self.get(rec_id)
            if rec is not None:
                yield rec

    def close(self) -> None:
        for handle in (self.cache, self.spill):
            if handle is not None:
                handle.close()


def as_snapshot(records: TableSnapshot | Iterable[dict]) -> TableSnapshot:
    """Records in memory (tests, small tables) as a snapshot."""
    return records if isinstance(records, TableSnapshot) else TableSnapshot.of(records)


def pull_table(airtable: Airtable, key: str, stop: threading.Event, by_field_id: bool) -> TableSnapshot:
    """A table's every record, cells by field id (returnFieldsByFieldId) or by name; each page to disk as it comes."""
    records = TableSnapshot(airtable.settings.cache_dir)
    try:
        with Progress(f"{key}: pull") as progress:  # 100 records a page at 5 a second: say how far
            for page in airtable.table(key).iterate(page_size=RECORDS_PER_PAGE, use_field_ids=by_field_id):
                for rec in page:
                    records.put(rec)
                progress.update(len(page))
                if stop.is_set():  # the transport sees it before a request, but none may follow the last page
                    raise RunInterrupted()
    except AIRTABLE_FAILURES as exc:
        raise access_error(exc, airtable.settings, f"reading table {key}") from None
    return records


def write_cache(path: Path, snapshot: TableSnapshot) -> None:
    # One record a line, streamed: still a JSON array, written by json's C encoder (indent= falls back
    # to pure Python) without the whole file in memory. A snapshot's lines are copied, not parsed again.
    lines = ((b",\n" if i else b"[\n") + snapshot.line(rec_id) for i, rec_id in enumerate(snapshot.ids()))
    write_private(path, itertools.chain(lines, [b"\n]\n" if len(snapshot) else b"[]\n"]))


# ---------------------------------------------------------------------------
# Read, by change feed: the snapshot and the state, Airtable's webhook payloads
# ---------------------------------------------------------------------------

# The caches are a snapshot of the tables. Between full reads a run patches them with the
# payloads of one webhook that the tool keeps on the base (no notification URL: the payloads
# are read by cursor), and plans against the result exactly as against a full read.
# Sources: airtable.com/developers/web/api/ create-a-webhook, list-webhooks,
# list-webhook-payloads, refresh-a-webhook, model/webhooks-specification,
# model/webhooks-payload, field-model (webhook cell formats).

STATE_FILE = "airtable_state.json"
STATE_VERSION = 2  # 2: caches keyed by field id, and the field bindings

# Airtable keeps payloads 7 days (list-webhook-payloads): a run whose last run is older than
# this cannot trust that the feed since then is whole.
PAYLOAD_TRUST_DAYS = 6

WEBHOOKS_PER_BASE = 10  # create-a-webhook: "a base can have up to 10 webhooks"

# Record changes of every table (a specification takes one recordChangeScope and the tool
# syncs three) and field changes, so a renamed or retyped mapped field forces a full read.
WEBHOOK_SPEC = {"options": {"filters": {"dataTypes": ["tableData", "tableFields"]}}}


class FeedUnavailable(Exception):
    """The token may not manage webhooks (scope webhook:manage, Creator access), or they are refused."""


@dataclass
class ChangeState:
    """What the last run left: the snapshot it wrote and where Airtable's change feed resumes."""

    endpoint_url: str
    base_id: str
    tables: dict[str, str]  # table key -> the table setting (id or name) the snapshot holds
    schema: BaseSchema
    webhook_id: str | None
    cursor: int | None  # the next payload to read
    last_full_read: datetime
    last_run: datetime
    caches: dict[str, list[int]] = field(default_factory=dict)  # key -> [size, mtime_ns] as written
    # Table key -> mapped Airtable field name -> the field id it is bound to (kept with change
    # tracking off too). The table ids are bound in schema.table_ids, to the settings in `tables`.
    bindings: dict[str, dict[str, str]] = field(default_factory=dict)
    # Table key -> mapped name -> the share of the table's records that the updates of the last
    # run that wrote the field wrote it in: a field is volatile after two such runs.
    writes: dict[str, dict[str, float]] = field(default_factory=dict)
    version: int = STATE_VERSION

    def as_json(self) -> dict:
        return {**dataclasses.asdict(self), "schema": self.schema.as_json(),
                "last_full_read": self.last_full_read.isoformat(), "last_run": self.last_run.isoformat()}

    @classmethod
    def from_json(cls, data: dict) -> "ChangeState":
        schema = BaseSchema.from_json(data["schema"])
        if data.get("version") == 1:  # before bindings: the mapped names as its schema knew them
            data = {**data, "bindings": {key: {name: fields[name].id for name in TABLE_SPECS[key].airtable_fields
                                               if name in fields} for key, fields in schema.fields.items()}}
        return cls(**{**data, "schema": schema, "last_full_read": datetime.fromisoformat(data["last_full_read"]),
                      "last_run": datetime.fromisoformat(data["last_run"])})


def state_path(settings: Settings) -> Path:
    return settings.cache_dir / STATE_FILE


def load_state(path: Path) -> ChangeState | None:
    try:
        return ChangeState.from_json(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("change-tracking state %s unreadable (%s): reading in full", path, type(exc).__name__)
        return None


def cache_fingerprint(path: Path) -> list[int] | None:
    with contextlib.suppress(OSError):
        info = path.stat()
        return [info.st_size, info.st_mtime_ns]
    return None


def full_read_reason(state: ChangeState | None, settings: Settings, needed: Iterable[str],
                     now: datetime) -> tuple[str | None, bool]:
    """Why this run must read every record (None: it need not), and whether the snapshot and feed
    are still exact, so a full read can measure drift. No request: the webhook's own checks are in webhook_problem()."""
    if not settings.change_tracking:
        return "change tracking is off (AIRTABLE_CHANGE_TRACKING=off)", False
    if state is None:
        return "no change-tracking state yet", False
    if state.version != STATE_VERSION:
        return "the state was written by an earlier version of this tool", False
    if (state.endpoint_url, state.base_id) != (settings.endpoint_url, settings.base_id):
        return "the state belongs to another base or endpoint", False
    if any(state.tables.get(key) != settings.table_ids[key] for key in needed):
        return "the state belongs to another set of tables", False
    if state.webhook_id is None or state.cursor is None:
        return "no webhook yet", False
    days = (now - state.last_run).total_seconds() / 86400
    if days > PAYLOAD_TRUST_DAYS:
        return f"the last run is {days:.1f} days old, and Airtable keeps payloads 7 days", False
    if settings.full:
        return "--full", True
    days = (now - state.last_full_read).total_seconds() / 86400
    if days > settings.full_sync_days:
        return (f"the last full read is {days:.1f} days old "
                f"(AIRTABLE_FULL_SYNC_DAYS={settings.full_sync_days:g})"), True
    return None, True


def webhook_problem(hook: Any, now: datetime) -> str | None:
    """Why the state's webhook (pyairtable's Webhook, or None) cannot carry this run."""
    if hook is None:
        return "the webhook is gone"
    if not hook.is_hook_enabled:
        return "the webhook is disabled"
    if hook.expiration_time is not None and hook.expiration_time <= now:
        return "the webhook expired"
    return None


def is_tool_webhook(hook: Any) -> bool:
    """A webhook this tool made: no notification URL and its specification."""
    spec = hook.specification.model_dump(by_alias=True, exclude_none=True, exclude_defaults=True)
    return hook.notification_url is None and spec == WEBHOOK_SPEC


def record_cell(value: Any, field_type: str) -> Any:
    """A webhook payload's cell value in the records API's format: the field model gives selects
    as {id, name, color} and links as [{id, name}] in webhooks, names and record ids in records."""
    if field_type == "singleSelect" and isinstance(value, dict):
        return value.get("name")
    if field_type in ("multipleSelects", "multipleRecordLinks") and isinstance(value, list):
        part = "name" if field_type == "multipleSelects" else "id"
        return [v.get(part) if isinstance(v, dict) else v for v in value]
    return value


def set_cells(fields: dict, cells: Mapping[str, Any], fields_by_id: Mapping[str, FieldInfo]) -> None:
    """Patch a record's fields (by field id) with payload cells; empty cells are left out, as the records API does."""
    for field_id, value in cells.items():
        info = fields_by_id.get(field_id)
        if info is None:
            continue  # a field this run's schema does not know (created since): not synced
        value = record_cell(value, info.type)
        if is_blank(value, info.type):
            fields.pop(field_id, None)
        else:
            fields[field_id] = value


def feed_schema_change(payload: dict, schema: BaseSchema,
                       bound: Mapping[str, Mapping[str, str]]) -> tuple[str | None, bool]:
    """(why the payload forces a full read, whether the schema must be read again). A full read: a bound
    field deleted or retyped, or a field created under a mapped name. The schema: a rename (the binding and
    the snapshot follow the id) or another field change. Neither: select options added (by typecast)."""
    if payload.get("error"):
        return f"a payload carries an error ({payload.get('code') or 'unknown'})", False
    keys_by_table = {table_id: key for key, table_id in schema.table_ids.items()}
    for table_id in payload.get("destroyedTableIds") or []:
        if table_id in keys_by_table:
            return f"table {keys_by_table[table_id]} was deleted", False
    reread = False
    for table_id, change in (payload.get("changedTablesById") or {}).items():
        key = keys_by_table.get(table_id)
        if key is None:
            continue
        mapped_by_id = {fid: name for name, fid in bound.get(key, {}).items()}
        known = {f.id: f for f in schema.fields[key].values()}
        for field_id in change.get("destroyedFieldIds") or []:
            if field_id in mapped_by_id:
                return f"field {mapped_by_id[field_id]} of {key} was deleted", False
            reread = True
        for info in (change.get("createdFieldsById") or {}).values():
            if (info or {}).get("name") in TABLE_SPECS[key].airtable_fields:
                return f"field {info['name']} of {key} was created", False
            reread = True
        for field_id, changed in (change.get("changedFieldsById") or {}).items():
            current, old = changed.get("current") or {}, known.get(field_id)
            renamed = current.get("name") is not None and (old is None or current["name"] != old.name)
            retyped = current.get("type") is not None and (old is None or current["type"] != old.type)
            if retyped and field_id in mapped_by_id:
                return f"field {mapped_by_id[field_id]} of {key} was retyped", False
            reread = reread or renamed or retyped
    return None, reread


@dataclass
class SnapshotPatch:
    """Patches the snapshot with payloads one at a time, in order, as they arrive: a night after
    a first sync reads thousands, and holding them all would cost more memory than the snapshot.
    A payload sets values, it never adds to them, so replaying one is harmless."""

    index: dict[str, TableSnapshot]
    schema: BaseSchema  # replaced when a payload says fields changed and the schema is read again
    before: dict[str, dict[str, dict | None]] = field(default_factory=lambda: defaultdict(dict))  # key -> id -> cells

    def apply(self, payload: dict) -> None:
        keys_by_table = {table_id: key for key, table_id in self.schema.table_ids.items() if key in self.index}
        for table_id, change in (payload.get("changedTablesById") or {}).items():
            key = keys_by_table.get(table_id)
            if key is None:
                continue
            table, fields_by_id = self.index[key], {f.id: f for f in self.schema.fields[key].values()}
            before = self.before[key]
            # A record's cells before the payloads first changed them. Only a real change is
            # remembered: the tool's own writes, replayed, change nothing and cost nothing.
            for rec_id, created in (change.get("createdRecordsById") or {}).items():
                fields: dict = {}
                set_cells(fields, created.get("cellValuesByFieldId") or {}, fields_by_id)
                old = table.get(rec_id)
                if old is not None and old["fields"] == fields:
                    continue
                before.setdefault(rec_id, None if old is None else old["fields"])
                created_time = created.get("createdTime")
                if isinstance(created_time, datetime):
                    created_time = iso_millis(created_time)
                table.put({"id": rec_id, "createdTime": created_time, "fields": fields})
            for rec_id, changed in (change.get("changedRecordsById") or {}).items():
                rec = table.get(rec_id)
                if rec is None:
                    log.debug("%s %s: a payload changes a record the snapshot lacks", key, rec_id)
                    continue  # a full read finds it; drift counts it
                fields = dict(rec["fields"])
                set_cells(fields, ((changed.get("current") or {}).get("cellValuesByFieldId") or {}), fields_by_id)
                if fields != rec["fields"]:
                    before.setdefault(rec_id, rec["fields"])
                    table.put({**rec, "fields": fields})
            for rec_id in change.get("destroyedRecordIds") or []:
                rec = table.pop(rec_id)
                if rec is not None:
                    before.setdefault(rec_id, rec["fields"])

    def finish(self) -> tuple[dict[str, dict[str, set[str]]], set[str]]:
        """Per table, the records whose cells the payloads left changed (by someone else: the tool's
        own writes are in the snapshot already); and the tables whose records changed (caches to rewrite)."""
        edited: dict[str, dict[str, set[str]]] = {}
        changed: set[str] = set()
        for key, seen in self.before.items():
            table = self.index[key]
            types = {f.id: f.type for f in self.schema.fields[key].values()}
            for rec_id, old in seen.items():
                rec = table.get(rec_id)
                new = None if rec is None else rec["fields"]
                if new != old:
                    changed.add(key)
                if old is None or new is None:
                    continue  # created or deleted: not an edit of cells
                # Every cell that changed: the plan keeps those it sets back (set_back).
                cells = {k for k in new.keys() | old.keys()
                         if not values_equal(new.get(k), old.get(k), types.get(k, ""))}
                if cells:
                    edited.setdefault(key, {})[rec_id] = cells
        return edited, changed


def mapped_fields_changed(old: BaseSchema, new: BaseSchema, bound: Mapping[str, Mapping[str, str]]) -> str | None:
    """The first table one of whose bound fields is gone or retyped between two reads of the schema."""
    for key, fields in bound.items():
        before = {f.id: f.type for f in old.fields.get(key, {}).values()}
        after = {f.id: f.type for f in new.fields.get(key, {}).values()}
        if any(after.get(fid) != before.get(fid) for fid in fields.values()):
            return key
    return None


def count_drift(patched: Mapping[str, TableSnapshot], fresh: Mapping[str, TableSnapshot],
                columns: Mapping[str, TableColumns], changed_since: Mapping[str, set[str]]) -> int:
    """Records whose fresh read differs in a synced field from the snapshot patched up to the read,
    but for those a later payload changed. Logs record ids and field names, never values."""
    drift = 0
    for key, new in fresh.items():
        # Only the fields the sync writes: a computed cell (a formula, a last-modified time) cannot drift.
        synced = [c for c in columns[key].by_mapped.values() if c.type in WRITABLE_TYPES]
        old, skip = patched[key], changed_since.get(key, set())
        for rec_id in [*old.ids(), *(i for i in new.ids() if i not in old)]:
            if rec_id in skip:
                continue
            a, b = old.get(rec_id), new.get(rec_id)
            if a is None or b is None:
                names = [f"(the whole record: {'missing from the snapshot' if a is None else 'gone from Airtable'})"]
            else:
                names = [c.mapped for c in synced
                         if not values_equal(a["fields"].get(c.key), b["fields"].get(c.key), c.type)]
            if names:
                drift += 1
                log.warning("drift: %s %s differs from the change feed in %s", key, rec_id, ", ".join(names))
    return drift


def touched_records(payload: dict, schema: BaseSchema) -> dict[str, set[str]]:
    """Per table key, the records the payload creates, changes or destroys."""
    keys_by_table = {table_id: key for key, table_id in schema.table_ids.items()}
    touched: dict[str, set[str]] = defaultdict(set)
    for table_id, change in (payload.get("changedTablesById") or {}).items():
        if table_id in keys_by_table:
            touched[keys_by_table[table_id]].update(change.get("createdRecordsById") or {},
                                                    change.get("changedRecordsById") or {},
                                                    change.get("destroyedRecordIds") or [])
    return touched


@dataclass
class BaseRead:
    """What the read gives the plan: the tables as Airtable has them, and how they were read."""

    records: dict[str, TableSnapshot]
    schema: BaseSchema | None
    mode: str  # "webhook" (the change feed) or "full"
    reason: str
    payloads: int = 0
    drift: int | None = None
    edited: dict[str, dict[str, set[str]]] | None = None  # None on a full read: who changed what is unknown
    dirty: set[str] = field(default_factory=set)  # tables whose snapshot differs from its cache file
    state: ChangeState | None = None  # saved with the snapshot at the end of the run
    from_cache: set[str] = field(default_factory=set)  # tables planned against --use-cache caches
    columns: dict[str, TableColumns] = field(default_factory=dict)  # each table's mapped fields, bound
    previous: ChangeState | None = None  # the state the last run of this base left, as it left it

    def as_report(self) -> dict:
        return {"mode": self.mode, "reason": self.reason, "payloads": self.payloads, "drift": self.drift}

    def read_again(self, key: str, records: TableSnapshot) -> None:
        """A table planned against a cache, read from Airtable after all."""
        self.records[key].close()
        self.records[key] = records
        self.from_cache.discard(key)
        self.dirty.add(key)


class BaseReader:
    """The read phase: the change feed when the state allows it, else every record."""

    def __init__(self, airtable: Airtable, stop: threading.Event, now: datetime):
        self.airtable = airtable
        self.settings = airtable.settings
        self.base = airtable.api.base(self.settings.base_id)
        self.stop = stop
        self.now = now
        self.unavailable: FeedUnavailable | None = None  # the token may not manage webhooks
        self.payloads_read = 0  # this run's, also those of a feed that then fell back to a full read
        self.bound: dict[str, dict[str, str]] = {}  # the state's field bindings that hold for this run

    def read(self, needed: Sequence[str]) -> BaseRead:
        state = load_state(state_path(self.settings))
        self.bound, table_ids = state_bindings(self.settings, state)
        self.airtable.use_tables(table_ids)
        read = self.read_caches(needed, state) if self.settings.use_cache else self.read_base(needed, state)
        if state is not None and (state.endpoint_url, state.base_id) == (self.settings.endpoint_url,
                                                                          self.settings.base_id):
            read.previous = state  # what the last run of this base wrote, for the volatile fields
        read.columns = table_bindings(read.schema, self.bound, needed)
        for key, columns in read.columns.items():
            warn_schema_changes(key, columns)
        if read.state is not None:  # the bindings are saved with the state (a dry run saves none)
            read.state.bindings = {**self.bound, **{k: c.bindings for k, c in read.columns.items() if c.by_field_id}}
        return read

    def read_base(self, needed: Sequence[str], state: ChangeState | None) -> BaseRead:
        reason, exact = full_read_reason(state, self.settings, needed, self.now)
        snapshot = self.load_snapshot(state) if exact else None  # type: ignore[arg-type]
        if exact and snapshot is None:
            reason = "the cached snapshot does not match the state (an interrupted run, or an edited file)"
        hooks = None
        if reason is None:
            try:
                hooks = self.list_webhooks()
                hook = next((h for h in hooks if h.id == state.webhook_id), None)  # type: ignore[union-attr]
                reason = webhook_problem(hook, self.now)
            except FeedUnavailable as exc:
                reason, self.unavailable = str(exc), exc
            if reason is None:
                read, reason = self.read_feed(state, hook, snapshot)  # type: ignore[arg-type]
                if read is not None:
                    return read
            snapshot = None  # the webhook cannot carry the run, or the feed patched part of the snapshot
        return self.read_full(reason, state, snapshot, hooks, needed)

    def load_snapshot(self, state: ChangeState) -> dict[str, TableSnapshot] | None:
        """The caches the state wrote, or None if any is missing or was changed since."""
        snapshot = {}
        for key in state.tables:
            path = cache_path(self.settings, key)
            unchanged = cache_fingerprint(path) == state.caches.get(key)
            records = TableSnapshot.from_cache(path, self.settings.cache_dir) if unchanged else None
            if records is None:
                return None
            snapshot[key] = records
        return snapshot

    def read_feed(self, state: ChangeState, hook: Any, snapshot: dict[str, TableSnapshot]
                  ) -> tuple[BaseRead | None, str]:
        """The snapshot patched with the payloads since the state's cursor; or None and why not."""
        patch, cursor = SnapshotPatch(snapshot, state.schema), state.cursor
        try:
            for payload in self.payloads(hook, state.cursor):  # type: ignore[arg-type]
                why, reread = feed_schema_change(payload, patch.schema, self.bound)
                if why:
                    return None, why
                if reread and patch.schema is state.schema:  # fields added or changed elsewhere: once
                    patch.schema = fetch_schema(self.airtable)  # type: ignore[assignment]
                    self.airtable.use_tables(patch.schema)
                    if patch.schema is None:
                        return None, "the schema cannot be read any more"
                    if changed := mapped_fields_changed(state.schema, patch.schema, self.bound):
                        return None, f"the mapped fields of {changed} changed"
                patch.apply(payload)
                cursor = payload["cursor"] + 1
        except FeedUnavailable as exc:
            return None, str(exc)
        edited, changed = patch.finish()
        log.info("change feed: %d payloads from cursor %d; %s", self.payloads_read, state.cursor,
                 ", ".join(f"{k}: {len(snapshot[k])} records" for k in snapshot))
        new_state = dataclasses.replace(state, schema=patch.schema, cursor=cursor, last_run=self.now,
                                        caches=dict(state.caches))
        return BaseRead(snapshot, patch.schema, "webhook", f"the change feed since cursor {state.cursor}",
                        payloads=self.payloads_read, edited=edited, dirty=changed, state=new_state), ""

    @contextlib.contextmanager
    def webhook_request(self, what: str, refused: str) -> Iterator[None]:
        """A 403 or 404 means the feed is not this token's (FeedUnavailable); other failures stop the run."""
        try:
            yield
        except AIRTABLE_FAILURES as exc:
            if isinstance(exc, requests.HTTPError) and exc.response.status_code in (403, 404):
                raise FeedUnavailable(refused) from None
            raise access_error(exc, self.settings, what) from None

    def list_webhooks(self) -> list:
        with self.webhook_request("listing webhooks", "the token may not manage webhooks (it needs the scope "
                                  "webhook:manage and Creator access to the base)"):
            return self.base.webhooks()

    def payloads(self, hook: Any, cursor: int) -> Iterator[dict]:
        """Each payload from `cursor` on, as Airtable's JSON, as pyairtable pages them in (50 a page)."""
        with self.webhook_request("reading the change feed", "the webhook's payloads are gone"):
            for payload in hook.payloads(cursor=cursor):
                self.payloads_read += 1
                yield payload.model_dump(by_alias=True, exclude_none=True)
                if self.stop.is_set():  # as after a page: no request may follow the last payload
                    raise RunInterrupted()

    def read_full(self, reason: str, state: ChangeState | None, snapshot: dict[str, TableSnapshot] | None,
                  hooks: list | None, needed: Sequence[str]) -> BaseRead:
        """Every record. First the webhook and its next cursor, so that what changes during the
        read is replayed next run; with a previous snapshot that is still exact, the drift."""
        settings = self.settings
        log.info("reading every record: %s", reason)
        schema = fetch_schema(self.airtable)
        self.airtable.use_tables(schema)
        hook_id, cursor, unavailable = None, None, self.unavailable
        if settings.change_tracking and unavailable is None and schema is not None:
            try:
                hooks = self.list_webhooks() if hooks is None else hooks
                # Reading the payloads for drift extends the webhook's life; otherwise a refresh does.
                hook_id, cursor = self.ensure_webhook(state, hooks, refresh=snapshot is None)
            except FeedUnavailable as exc:
                unavailable, reason = exc, f"{reason}; {exc}"
        if settings.change_tracking and (unavailable is not None or schema is None):
            why = "it needs the schema (scope schema.bases:read)" if unavailable is None else unavailable
            log.warning("change tracking unavailable: %s; every run reads in full", why)
        records = {key: pull_table(self.airtable, key, self.stop, schema is not None) for key in needed}
        for key in needed:
            log.info("%s: read %d Airtable records", key, len(records[key]))
        read = BaseRead(records, schema, "full", reason, payloads=self.payloads_read, dirty=set(needed))
        tables = {key: settings.table_ids[key] for key in needed}
        hook = next((h for h in hooks or () if h.id == hook_id), None)  # None: made this run, or gone
        if snapshot is not None and hook is not None and hook_id == state.webhook_id:  # type: ignore[union-attr]
            patch, later = SnapshotPatch(snapshot, state.schema), defaultdict(set)
            try:
                for payload in self.payloads(hook, state.cursor):  # type: ignore[arg-type]
                    if payload["cursor"] < cursor:  # type: ignore[operator]
                        patch.apply(payload)  # up to the read: what the snapshot should now say
                    else:  # during or after the read: those records are left out
                        for key, ids in touched_records(payload, schema).items():
                            later[key] |= ids
            except FeedUnavailable as exc:
                log.warning("drift not measured: %s", exc)
                hook_id = None  # it went away since it was listed: the next run makes another
            else:
                read.payloads = self.payloads_read
                read.drift = count_drift(snapshot, records, table_bindings(schema, self.bound, needed), later)
                if read.drift:
                    log.warning("drift: %d records differ from what the change feed said; see the report", read.drift)
                # Tables not read (--tables) stay, patched up to the fresh ones' cursor: the feed keeps them current.
                for key in state.tables.keys() - set(needed):
                    records[key], tables[key] = snapshot[key], state.tables[key]
                    read.dirty.add(key)
        if schema is not None:  # with change tracking off or unavailable too: the state keeps the bindings
            # A table carried over was not read: its full read stays as due as it was.
            last_full_read = state.last_full_read if tables.keys() - set(needed) else self.now
            read.state = ChangeState(settings.endpoint_url, settings.base_id, tables, schema,
                                     hook_id, cursor, last_full_read=last_full_read, last_run=self.now)
        return read

    def ensure_webhook(self, state: ChangeState | None, hooks: list, refresh: bool) -> tuple[str | None, int | None]:
        """With its next cursor: the state's webhook if usable; else (the old one deleted) a usable one of this tool's
        that a run made and lost track of (adopted, not doubled); else a new one, a lost create answer settled by
        listing, never by creating another (a base holds at most 10). A dry run creates, refreshes, deletes nothing."""
        ours = next((h for h in hooks if state is not None and h.id == state.webhook_id), None)
        if ours is not None and webhook_problem(ours, self.now) is None:
            if refresh and not self.settings.dry_run:
                self.refresh(ours)
            return ours.id, ours.cursor_for_next_payload
        adopted = next((h for h in hooks if is_tool_webhook(h) and webhook_problem(h, self.now) is None), None)
        if self.settings.dry_run:
            return (adopted.id, adopted.cursor_for_next_payload) if adopted is not None else (None, None)
        if ours is not None:
            try:
                ours.delete()
                log.info("change tracking: deleted the unusable webhook %s", ours.id)
                hooks = [h for h in hooks if h is not ours]  # still there, it is no webhook a lost create made
            except AIRTABLE_FAILURES as exc:
                log.warning("deleting webhook %s failed (%s)", ours.id, type(exc).__name__)
        if adopted is not None:
            log.info("change tracking: using the existing webhook %s", adopted.id)
            self.refresh(adopted)
            return adopted.id, adopted.cursor_for_next_payload
        if len(hooks) >= WEBHOOKS_PER_BASE:
            raise FeedUnavailable(f"the base already has {WEBHOOKS_PER_BASE} webhooks, Airtable's limit")
        try:
            created = self.base.add_webhook(None, WEBHOOK_SPEC)  # type: ignore[arg-type]
        except requests.HTTPError as exc:
            if exc.response.status_code in (401, 403, 404):
                raise FeedUnavailable("the token may not create webhooks (it needs the scope webhook:manage "
                                      "and Creator access to the base)") from None
            log.warning("creating the webhook: HTTP %s; looking for it", exc.response.status_code)
        except (requests.ConnectionError, requests.Timeout) as exc:
            log.warning("creating the webhook: %s; looking for it", type(exc).__name__)
        else:
            log.info("change tracking: created webhook %s", created.id)
            return created.id, 1  # a new webhook's first payload (list-webhooks: cursorForNextPayload)
        before = {h.id for h in hooks}
        made = next((h for h in self.list_webhooks() if h.id not in before and is_tool_webhook(h)), None)
        if made is None:
            raise FeedUnavailable("the webhook could not be created this run")
        return made.id, made.cursor_for_next_payload

    def refresh(self, hook: Any) -> None:
        try:
            hook.extend_expiration()
        except AIRTABLE_FAILURES as exc:
            log.warning("refreshing webhook %s failed (%s): it expires on its own date", hook.id, type(exc).__name__)

    def read_caches(self, needed: Sequence[str], state: ChangeState | None) -> BaseRead:
        """--use-cache: the caches where there are any, read in full where not; the state keeps
        its cursor (the run's own writes come back in the feed and change nothing)."""
        schema = fetch_schema(self.airtable)
        self.airtable.use_tables(schema)
        records, from_cache = {}, set()
        for key in needed:
            cached = TableSnapshot.from_cache(cache_path(self.settings, key), self.settings.cache_dir)
            by_id = schema is not None  # as this run reads cells; a cache keyed otherwise would match nothing
            if cached is not None and any(bool(FIELD_ID.fullmatch(name)) != by_id
                                          for rec in itertools.islice(cached, 100) for name in rec["fields"]):
                log.warning("%s: the cache names fields by %s, not as this run reads them: reading the table", key,
                            "name" if by_id else "id")
                cached.close()
                cached = None
            if cached is None:
                records[key] = pull_table(self.airtable, key, self.stop, schema is not None)
            else:
                log.info("%s: %d Airtable records from the cache", key, len(cached))
                records[key] = cached
                from_cache.add(key)
        # The state takes the rewritten caches only if the ones read were its own: a foreign or
        # hand-edited cache must not become the snapshot the change feed patches.
        own = state is not None and all(
            k in state.tables and cache_fingerprint(cache_path(self.settings, k)) == state.caches.get(k)
            for k in needed)
        return BaseRead(records, schema, "full", "--use-cache: planned against the caches",
                        state=state if own else None, from_cache=from_cache, dirty=set(needed) - from_cache)


def save_snapshot(settings: Settings, read: BaseRead, changed: set[str]) -> None:
    """The caches that changed, then the state that names them: the state is written last, so a
    run that dies in between leaves caches the state does not match, and the next run reads in full."""
    for key in sorted(changed & read.records.keys()):
        path = cache_path(settings, key)
        write_cache(path, read.records[key])
        if read.state is not None:
            read.state.caches[key] = cache_fingerprint(path)  # type: ignore[assignment]
    if read.state is not None:
        write_private(state_path(settings), json.dumps(read.state.as_json()))


# ---------------------------------------------------------------------------
# Load exports
# ---------------------------------------------------------------------------


NO_DOCUMENT: Mapping[str, Any] = MappingProxyType({})  # one for every bare record: a dict each was 2 MB at 10k


@dataclass(slots=True)  # a planned write keeps one: a first sync holds tens of thousands
class ExportRecord:
    index: int  # position in the export, 0-based
    mongo_id: str | None
    doc: Mapping[str, Any]

    def bare(self) -> "ExportRecord":
        """The record without its document (NO_DOCUMENT): what a planned write keeps of it."""
        return ExportRecord(self.index, self.mongo_id, NO_DOCUMENT)


EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

UUID_TEXT = re.compile(r"(?:urn:uuid:)?([0-9a-fA-F]{8})(-?)([0-9a-fA-F]{4})\2([0-9a-fA-F]{4})\2([0-9a-fA-F]{4})\2([0-9a-fA-F]{12})")


def _uuid_text(text: Any) -> str | None:
    """`$uuid`'s text (hyphens optional, any case: pymongo's legacy writer leaves them out) -> lowercase hyphenated."""
    match = UUID_TEXT.fullmatch(text) if isinstance(text, str) else None
    return "-".join(match.group(1, 3, 4, 5, 6)).lower() if match else None


def _binary_uuid(data: Any, subtype: Any) -> str | None:
    """A Binary of subtype 4 (one or two hex digits, as the Extended JSON spec allows) holding 16 bytes -> its UUID
    text; None for anything else, which is kept as written (subtype 3, the old drivers' UUIDs, has a byte order
    that depends on the driver that wrote it). Raises ValueError for base64 that is not."""
    if subtype not in ("04", "4") or not isinstance(data, str):
        return None
    raw = base64.b64decode(data, validate=True)
    return _uuid_text(raw.hex()) if len(raw) == 16 else None


def unwrap_wrapper(obj: dict) -> Any:
    """One MongoDB Extended JSON wrapper -> its plain value (as json's object_hook: inner ones come first).
    A UUID becomes its lowercase hyphenated text; wrappers this tool has no plain value for are kept."""
    if len(obj) == 1:
        (tag, inner), = obj.items()
        if tag[:1] != "$":
            return obj
    elif len(obj) == 2 and "$binary" in obj and "$type" in obj:  # the legacy Binary {"$binary": base64, "$type": hex}
        tag, inner = "$binary", {"base64": obj["$binary"], "subType": obj["$type"]}
    else:
        return obj
    try:
        if tag == "$oid" and isinstance(inner, str):
            return inner
        if tag == "$date":
            if inner.__class__ is str:  # relaxed: ISO 8601
                return parse_datetime(inner) or obj
            if isinstance(inner, int) and not isinstance(inner, bool):  # ms, or $numberLong ms unwrapped: exact
                return EPOCH + timedelta(milliseconds=inner)
            if isinstance(inner, float):
                return datetime.fromtimestamp(inner / 1000, tz=timezone.utc)
        if tag in ("$numberLong", "$numberInt") and isinstance(inner, (str, int)):
            return int(inner)
        if tag == "$numberDouble" and isinstance(inner, (str, int, float)):
            return float(inner)
        if tag == "$numberDecimal" and isinstance(inner, str):
            return Decimal(inner)
        if tag == "$uuid":
            return _uuid_text(inner) or obj
        if tag == "$binary" and isinstance(inner, dict) and len(inner) == 2:
            return _binary_uuid(inner.get("base64"), inner.get("subType")) or obj
    except (ValueError, InvalidOperation, OverflowError, OSError):
        pass  # not a value this wrapper can hold (e.g. a date out of range): kept as it is
    return obj


def unwrap_extended_json(value: Any) -> Any:
    """MongoDB Extended JSON wrappers -> plain Python values, recursively."""
    if isinstance(value, dict):
        return unwrap_wrapper({k: unwrap_extended_json(v) if isinstance(v, (dict, list)) else v
                               for k, v in value.items()})
    if isinstance(value, list):
        return [unwrap_extended_json(v) if isinstance(v, (dict, list)) else v for v in value]
    return value


JSON_SPACE = re.compile(r"[ \t\n\r]*")
PLAIN_DECODE = json.JSONDecoder().raw_decode
READ_CHUNK = 1 << 20  # bytes read at a time: an export is parsed as a stream, never held whole


class ExportText:
    """An export's text, read and decoded a chunk at a time. `buf` holds what is not parsed yet;
    positions in it map back to the file's lines and columns for error messages."""

    def __init__(self, path: Path, handle: BinaryIO, file_digest: Any):
        self.path, self.handle, self.file_digest = path, handle, file_digest  # the digest is given every byte read
        self.decoder = codecs.getincrementaldecoder("utf-8-sig")()
        self.buf = ""
        # Of the text already dropped from buf: its characters, its newlines, and the characters of buf's first line.
        self.chars_dropped = self.lines_dropped = self.column_dropped = 0

    def more(self) -> bool:
        """Read the next chunk into buf; False at the end of the file."""
        chunk = self.handle.read(READ_CHUNK)
        self.file_digest.update(chunk)
        try:
            text = self.decoder.decode(chunk, final=not chunk)
        except UnicodeDecodeError as exc:
            # exc.object is the bytes of a character the last chunk cut, then this chunk (less a BOM), after buf's.
            offset = self.handle.tell() - len(exc.object) + exc.start
            line = self.line(len(self.buf)) + exc.object.count(b"\n", 0, exc.start)
            raise UsageError(f"{self.path}: line {line}: not valid UTF-8 "
                             f"(byte {exc.object[exc.start]:#04x} at offset {offset})") from None
        self.buf += text
        return bool(chunk or text)

    def drop(self, pos: int) -> int:
        """Forget the text before `pos` (parsed); returns where `pos` is now."""
        self.lines_dropped, self.column_dropped = self.line(pos) - 1, self.column(pos) - 1
        self.chars_dropped += pos
        self.buf = self.buf[pos:]
        return 0

    def line(self, pos: int) -> int:
        return self.lines_dropped + self.buf.count("\n", 0, pos) + 1

    def column(self, pos: int) -> int:
        newline = self.buf.rfind("\n", 0, pos)
        return pos - newline if newline >= 0 else self.column_dropped + pos + 1

    def skip_space(self, pos: int) -> int:
        """The position of the next character that is not whitespace (len(buf) at the end)."""
        while True:
            pos = JSON_SPACE.match(self.buf, pos).end()
            if pos < len(self.buf) or not self.more():
                return pos

    def value(self, pos: int, began: int | None) -> tuple[Any, int]:
        """The JSON value at `pos` and where it ends, reading on while the chunk's end cuts it; an error names the
        line its document began on (`began`), when that is another. Extended JSON is kept (a third faster: this pass
        only checks the file and reads ids), but a whole value that is a wrapper is unwrapped: it is no document."""
        while True:
            try:
                doc, end = PLAIN_DECODE(self.buf, pos)
            except json.JSONDecodeError as exc:
                if not self.more():
                    raise self.json_error(exc.msg, exc.pos, began) from None
                continue
            if doc.__class__ is dict and len(doc) <= 2 and any(key[:1] == "$" for key in doc):
                doc = unwrap_extended_json(doc)
            return doc, end

    def json_error(self, message: str, pos: int, began: int | None = None) -> UsageError:
        line = self.line(pos)
        start = line if began is None else self.line(began)
        where = "" if start == line else f", in the document from line {start}"
        return UsageError(f"{self.path}: line {line}: not valid JSON: {message} (column {self.column(pos)}{where})")


def _array(text: ExportText, pos: int) -> Iterator[tuple[dict, str, int]]:
    """The elements of a JSON array, each parsed in place; json's own messages for its errors."""
    pos = text.skip_space(pos)
    n = 0
    while text.buf[pos:pos + 1] != "]":
        if pos > READ_CHUNK:
            pos = text.drop(pos)
        if n:  # every element but the first follows a comma
            if text.buf[pos:pos + 1] != ",":
                raise text.json_error("Expecting ',' delimiter", pos)
            pos = text.skip_space(pos + 1)
        doc, end = text.value(pos, None)
        n += 1
        if doc.__class__ is not dict:
            raise UsageError(f"{text.path}: record {n} is not a JSON object ({type(doc).__name__})")
        yield doc, text.buf[pos:end], text.chars_dropped + pos
        pos = text.skip_space(end)
    pos = text.skip_space(pos + 1)
    if pos < len(text.buf):
        raise text.json_error("Extra data", pos)


def _documents(text: ExportText, pos: int) -> Iterator[tuple[dict, str, int]]:
    """Documents one after another, each parsed in place from the buffered text."""
    while pos < len(text.buf):
        if pos > READ_CHUNK:
            pos = text.drop(pos)
        doc, after = text.value(pos, pos)
        if doc.__class__ is not dict:
            raise UsageError(f"{text.path}: line {text.line(pos)} is not a JSON object ({type(doc).__name__})")
        yield doc, text.buf[pos:after], text.chars_dropped + pos
        pos = text.skip_space(after)
        if pos == after < len(text.buf):
            raise text.json_error("a document follows the previous one without whitespace between them", pos)


def iter_documents_text(path: Path, handle: BinaryIO, file_digest: Any) -> Iterator[tuple[dict, str, int]]:
    """An export's documents, still Extended JSON, each with its text as the file has it and where that text starts
    among the file's characters (after a BOM): a JSON array, or documents one after another separated by whitespace
    (JSON Lines, or mongoexport --pretty). Only the document being parsed and one chunk of text are in memory."""
    text = ExportText(path, handle, file_digest)
    pos = text.skip_space(0)
    if pos == len(text.buf):
        raise UsageError(f"{path}: file is empty (expected a JSON array, JSON Lines or documents one after another)")
    if text.buf[pos] == "[":
        yield from _array(text, pos + 1)
    elif text.buf[pos] == "{":
        yield from _documents(text, pos)
    else:
        raise UsageError(f"{path}: expected a JSON array or JSON Lines (or documents one after another), "
                         f"found {text.buf[pos:pos + 20]!r}")


def mongo_id_of(doc: dict) -> str | None:
    """`id`, else `_id`, as a text field would hold it (an ObjectId or UUID is its string), even if still wrapped."""
    for key in ("id", "_id"):
        value = doc.get(key)
        if value.__class__ is dict or value.__class__ is list:
            value = unwrap_extended_json(value)  # a no-op on a value unwrapped already
        if value not in (None, ""):
            return value if value.__class__ is str else to_text(value)
    return None


def index_rules() -> str:
    """What decides how an export is checked and indexed: this tool's source and the Python that parses."""
    return f"{source_digest().hex()} Python {sys.version} int digits {sys.get_int_max_str_digits()}"


def text_digest(data: bytes) -> int:
    """A record's text -> a 64-bit digest (signed, as array("q") holds it)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big", signed=True)


class ExportIndex:
    """An export checked in one pass, its records parsed again from the open file when the plan needs them (never
    when PlanMemo knows them in sync). Per record it holds only the Mongo id, where the text is and the text's digest:
    a text that no longer matches means the file was rewritten while the run read it, and the run stops (exit 2)
    before it writes. Saved in the cache dir, the index spares a run that finds the very same bytes (a quiet night's
    identical export) parsing the file again; each digest is still checked."""

    def __init__(self, path: Path, handle: BinaryIO):
        self.path, self.handle = path, handle
        self.file_digest = hashlib.blake2b(digest_size=16)  # of every byte, as the first pass reads them
        self.reused = False  # True when taken from a run that checked the same bytes
        self.size = 0  # the bytes the first pass read (and file_digest covers)
        self.mongo_ids: list[str | None] = []
        # Record i's text is offsets[i]:offsets[i] + sizes[i] in the file, and digests[i] its digest.
        self.offsets, self.sizes, self.digests = array("q"), array("q"), array("q")
        self.carried: set[str] = set()  # every Mongo field some record carries
        self.decode = json.JSONDecoder(object_hook=unwrap_wrapper).decode
        # Bytes and characters up to the last record's end. What lies between records ("[", ",", whitespace) is
        # ASCII, one byte a character: a record's first byte is the last one's end plus the characters since.
        self.end_byte = len(codecs.BOM_UTF8) if handle.read(len(codecs.BOM_UTF8)) == codecs.BOM_UTF8 else 0
        self.end_char = 0
        handle.seek(0)

    def add(self, doc: dict, text: str, start: int) -> None:
        """A document as the first pass parsed it (still Extended JSON), its text, and where that starts in the file."""
        self.carried.update(doc)
        data = text.encode("utf-8", "surrogatepass")
        offset = self.end_byte + start - self.end_char
        self.offsets.append(offset)
        self.sizes.append(len(data))
        self.digests.append(text_digest(data))
        self.mongo_ids.append(mongo_id_of(doc))
        self.end_byte, self.end_char = offset + len(data), start + len(text)

    def __len__(self) -> int:
        return len(self.mongo_ids)

    def saved(self, limit: int | None) -> str:
        """The index as the next run takes it (reuse): a digest of the rest, then the rest."""
        body = json.dumps({
            "rules": index_rules(), "bytes": self.size, "file": self.file_digest.hexdigest(), "limit": limit,
            "carried": sorted(self.carried), "mongo_ids": self.mongo_ids,
            **{name: base64.b64encode(getattr(self, name).tobytes()).decode() for name in ("offsets", "sizes", "digests")},
        }, ensure_ascii=False)
        return hashlib.blake2b(body.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest() + "\n" + body

    def reuse(self, saved: Path, limit: int | None) -> bool:
        """Take the index an earlier run saved (whole, by its own digest) of the same bytes, read by the
        same rules and limit; False, and nothing taken, otherwise."""
        try:
            check, body = saved.read_bytes().split(b"\n", 1)
            if hashlib.blake2b(body, digest_size=16).hexdigest().encode() != check:
                return False
            data = json.loads(body)
            if (data["rules"], data["bytes"], data["limit"]) != (index_rules(), os.fstat(self.handle.fileno()).st_size, limit):
                return False
            whole = hashlib.file_digest(self.handle, lambda: hashlib.blake2b(digest_size=16))  # type: ignore[arg-type]
            self.handle.seek(0)
            if whole.hexdigest() != data["file"]:
                return False
            offsets, sizes, digests = (array("q", base64.b64decode(data[name])) for name in ("offsets", "sizes", "digests"))
            mongo_ids, carried = list(data["mongo_ids"]), set(data["carried"])
        except (OSError, ValueError, KeyError, TypeError):
            return False
        self.offsets, self.sizes, self.digests, self.mongo_ids, self.carried = offsets, sizes, digests, mongo_ids, carried
        self.reused = True
        return True

    def load(self, index: int) -> ExportRecord:
        """Record `index`, its document parsed again from the file."""
        self.handle.seek(self.offsets[index])
        data = self.handle.read(self.sizes[index])
        if text_digest(data) != self.digests[index]:
            raise UsageError(f"{self.path}: the file changed while this run read it (record {index + 1} is not "
                             "what it was); nothing was written: run again once the export is written")
        return ExportRecord(index, self.mongo_ids[index], self.decode(data.decode("utf-8", "surrogatepass")))

    def __iter__(self) -> Iterator[ExportRecord]:
        return map(self.load, range(len(self)))

    def close(self) -> None:
        self.handle.close()


def index_export(path: Path, limit: int | None, saved: Path | None = None) -> ExportIndex | None:
    """The export checked and indexed, the file left open (or the index `saved` of the same bytes); None
    when it is missing. The whole file is parsed even past `limit`: a bad file fails the same with --limit."""
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        index = ExportIndex(path, handle)
        if saved is not None and index.reuse(saved, limit):
            return index
        for doc, text, start in iter_documents_text(path, handle, index.file_digest):
            if limit is None or len(index) < limit:
                index.add(doc, text, start)
        index.size = handle.tell()
    except BaseException:
        handle.close()
        raise
    return index


# ---------------------------------------------------------------------------
# Match
# ---------------------------------------------------------------------------


def normalize_key(value: Any) -> str:
    return "" if value is None else str(value).strip().lower()


def natural_key(doc: dict, key_fields: Sequence[str]) -> str:
    """The first of the document's `key_fields` that is not blank, normalised ("" when none)."""
    return next(filter(None, (normalize_key(doc.get(name)) for name in key_fields)), "")


class Matcher:
    """Matching's two passes, as claims one export record at a time: by the `id` field (`id_field`, its key in the
    records; None when the table has none), then by normalised natural key (`key_field`), first come first served.
    The caller claims each Mongo id once, all before any key claim, in export order: a record holding an id is
    claimed by it alone, and one without is a candidate of one key, so none is claimed twice."""

    def __init__(self, airtable_records: TableSnapshot, key_field: str | None, id_field: str | None):
        # Record ids only: a claimed record is read from the snapshot when it is planned.
        self.records = airtable_records
        self.claimed: set[str] = set()
        self.holding: dict[str, str] = {}  # Mongo id -> the first record that holds it
        self.candidates: dict[str, deque[str]] = defaultdict(deque)  # natural key -> records without an id
        keys = [k for k in (id_field, key_field) if k is not None]
        for rec_id, values in airtable_records.cells(keys) if keys else ():
            cells = dict(zip(keys, values))  # a None field is no key: .get(None) is None
            value = cells.get(id_field)
            if value not in (None, ""):
                self.holding.setdefault(str(value), rec_id)
            elif key := normalize_key(cells.get(key_field)):
                self.candidates[key].append(rec_id)

    def claim_by_id(self, mongo_id: str | None) -> str | None:
        rec_id = self.holding.get(mongo_id)  # type: ignore[arg-type]
        if rec_id is not None:
            self.claimed.add(rec_id)
        return rec_id

    def claim_by_key(self, key: str) -> str | None:
        queue = self.candidates.get(key)
        if not queue:
            return None
        self.claimed.add(queue[0])
        return queue.popleft()

    def orphans(self) -> list[dict]:
        return [self.records.get(rec_id) for rec_id in self.records.ids() if rec_id not in self.claimed]  # type: ignore[misc]


# ---------------------------------------------------------------------------
# Convert
# ---------------------------------------------------------------------------


class Invalid(Exception):
    """A value that cannot become the field's type: left out and counted."""


def to_instant(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
    if isinstance(value, str) and (parsed := parse_datetime(value)) is not None:
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
    return None if _is_null(value) else value


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
    if isinstance(value, (list, tuple)) and not any(isinstance(v, (dict, list, tuple)) for v in value):
        return ", ".join(_scalar_text(v) for v in value if not _is_null(v))
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(jsonable(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return _scalar_text(value)


def to_number(value: Any) -> int | float | None:
    if isinstance(value, int) and not isinstance(value, bool):
        # Airtable keeps numbers as doubles, so an integer past 15 digits comes back rounded: send what it will
        # give back, or every run rewrites it (github.com/Airtable/airtable.js/issues/423).
        return value if abs(value) <= 2**53 else float(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Decimal):
        number = float(value) if value.is_finite() else math.nan  # float() refuses a signalling NaN
        if not math.isfinite(number):
            return None
        return int(value) if value == value.to_integral_value() and abs(number) <= 2**53 else number
    if isinstance(value, str) and "_" not in value:
        text = value.strip()
        if not text:
            return None
        with contextlib.suppress(ValueError):
            return to_number(int(text))  # past 2**53 as Airtable will give it back
        with contextlib.suppress(ValueError):
            return to_number(float(text))
    raise Invalid(f"not a number: {value!r}")


def to_datetime(value: Any) -> str:
    try:
        return iso_millis(to_instant(value))
    except OverflowError:
        raise Invalid(f"date out of range: {value!r}") from None


def to_date(value: Any) -> str:
    return to_datetime(value)[:10]  # the day in UTC


def to_single_select(value: Any) -> str:
    if isinstance(value, (dict, list, tuple)):
        raise Invalid(f"not a single choice: {value!r}")
    return _scalar_text(value)


def to_multiple_selects(value: Any) -> list[str]:
    items = value if isinstance(value, (list, tuple)) else [value]
    # Airtable keeps a choice once.
    return list(dict.fromkeys(to_single_select(item) for item in items if not _is_null(item) and item != ""))


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
        if isinstance(value, (int, float)):
            return "checkbox" if isinstance(value, bool) else "number"
        if isinstance(value, list):
            return "multipleSelects" if all(isinstance(v, str) for v in value) else "multilineText"
        if isinstance(value, str):
            patterns = ((r"\d{4}-\d{2}-\d{2}", "date"), (r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z", "dateTime"))
            return next((name for pattern, name in patterns if re.fullmatch(pattern, value)), "multilineText")
    kinds = ((bool, "checkbox"), ((int, float, Decimal), "number"), (datetime, "dateTime"))
    return next((name for kind, name in kinds if isinstance(mongo_value, kind)), "multilineText")


def field_types(spec: TableSpec, columns: TableColumns, airtable_records: Sequence[dict],
                exported: Sequence[ExportRecord]) -> tuple[dict[str, str], list[str]]:
    """(writable field key -> type, read-only mapped names) of a table's mapped fields in Airtable."""
    types, read_only = {}, []
    links = {link.airtable_field for link in spec.links}
    for column in columns.by_mapped.values():
        if not columns.by_field_id and column.mapped in links:  # the schema is unreadable: the type from the values
            types[column.key] = "multipleRecordLinks"
        elif not columns.by_field_id:
            mongo_name = next(m for m, a in spec.mapping if a == column.mapped)
            sample = next((r.doc[mongo_name] for r in exported if r.doc.get(mongo_name) is not None), None)
            values = (r["fields"][column.key] for r in airtable_records if column.key in r["fields"])
            types[column.key] = infer_type(values, sample)
        elif column.type in WRITABLE_TYPES:
            types[column.key] = column.type
        else:
            read_only.append(column.mapped)  # computed, or a type this tool does not write
    return types, read_only


def mapped_columns(spec: TableSpec, columns: TableColumns, types: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """(Mongo field, Airtable field key, field type) for each writable mapped field but `id` and links."""
    return [(mongo, key, types[key]) for mongo, airtable in spec.mapping
            if mongo != "id" and (key := columns.key(airtable)) in types and types[key] != "multipleRecordLinks"]


def convert_record(record: ExportRecord, columns: Sequence[tuple[str, str, str]],
                   id_field: str | None) -> tuple[dict, list[str], str | None]:
    """The record's mapped values converted for Airtable (keyed as `columns` name the fields, the Mongo id
    under `id_field`), the fields whose values were invalid, and why the record cannot be sent, if it cannot."""
    converted: dict[str, Any] = {id_field: record.mongo_id} if id_field and record.mongo_id is not None else {}
    invalid: list[str] = []
    problem = None
    for mongo_name, field_key, field_type in columns:
        if mongo_name not in record.doc:
            continue  # absent: Airtable keeps its value
        try:
            converted[field_key] = value = convert_value(record.doc[mongo_name], field_type)
        except Invalid:
            invalid.append(field_key)
            continue
        if field_type in TEXT_TYPES and value is not None and len(value) > TEXT_LIMIT:
            problem = f"Mongo field {mongo_name}: text of {len(value)} characters is over Airtable's {TEXT_LIMIT} limit"
    return converted, invalid, problem


# ---------------------------------------------------------------------------
# Diff
# ---------------------------------------------------------------------------


def is_blank(value: Any, field_type: str) -> bool:
    return value is None or value == "" or value == [] or (value is False and field_type == "checkbox")


def is_clear(value: Any) -> bool:
    """Whether a changed value empties its cell (Mongo's null, "" or []): a clear, which the cap counts."""
    return value is None or value == "" or value == []


def values_equal(new: Any, old: Any, field_type: str) -> bool:
    """The contract's equality: blanks alike, numbers as numbers, dates as instants to the second, lists in order."""
    if new == old:
        return True
    if is_blank(new, field_type) or is_blank(old, field_type):
        return is_blank(new, field_type) and is_blank(old, field_type)
    if field_type in ("date", "dateTime"):
        with contextlib.suppress(Invalid, OverflowError):
            a, b = to_instant(new), to_instant(old)
            if field_type == "date":
                return a.date() == b.date()
            return a.replace(microsecond=0) == b.replace(microsecond=0)  # whole seconds, before 1970 too
        return False
    if isinstance(new, list) and isinstance(old, list):
        return len(new) == len(old) and all(str(a) == str(b) for a, b in zip(new, old))
    return False


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


@dataclass(eq=False, slots=True)  # one write is one key of the apply step's results; a first sync has many
class PlannedWrite:
    record: ExportRecord
    action: str  # create | update | skip | error
    record_id: str | None = None  # the Airtable record updated
    matched_by: str | None = None  # "id" or "key" (pass 1 or 2) for an update or skip
    fields: dict = field(default_factory=dict)  # values to send (links as LinkRef lists)
    error: str | None = None
    before: dict | None = None  # an update's changed cells before, for the changes archive (many creates: none)


DAY_COUNTER_SHARE = 0.9  # of the records it changed (or that carry the date) that must tell a day counter
DAYS_COUNTED_TO_KEPT = 16  # distinct dates a field may count to, kept per date field: a counter needs 1 to 3


def day_of(value: Any) -> date | None:
    """The UTC date of a date or dateTime cell (`YYYY-MM-DD...`), None if it has none."""
    try:
        return date.fromisoformat(value[:10]) if isinstance(value, str) else None
    except ValueError:
        return None


class DayTally:
    """Per numeric field over one table's planned updates: how many changed it, how many of those rose
    by the days since the previous run, and per date field the dates it counts days to (date plus value);
    no figure per record. A counter counts to the run's date or to the day its export was computed (so
    do a test's nights a day apart in minutes): any date nine in ten records count to will do, since the
    formula is the remedy all the same."""

    def __init__(self, elapsed: int | None, types: Mapping[str, str]):
        self.elapsed = elapsed  # whole days since the previous run (None: there was none)
        self.numbers = frozenset(k for k, t in types.items() if t in NUMBER_TYPES)
        self.dates = tuple(k for k, t in types.items() if t in ("date", "dateTime"))
        self.changed: dict[str, int] = defaultdict(int)
        self.rose: dict[str, int] = defaultdict(int)
        self.carried: dict[tuple[str, str], int] = defaultdict(int)  # (number, date) -> updates carrying both
        # (number, date) -> the date it counts to (an ordinal) -> updates that do
        self.counted_to: dict[tuple[str, str], dict[int, int]] = defaultdict(dict)

    def add(self, changes: Mapping[str, Any], old: Mapping[str, Any], converted: Mapping[str, Any]) -> None:
        """One planned update: its changed cells, Airtable's cells before, and all its converted values."""
        elapsed = self.elapsed
        for key in self.numbers.intersection(changes):
            new, before = changes[key], old.get(key)
            if not isinstance(new, (int, float)):
                continue  # a clear
            self.changed[key] += 1
            if elapsed is not None and isinstance(before, (int, float)) and 0 < new - before and \
                    abs(new - before - elapsed) <= 1:
                self.rose[key] += 1
            for date_key in self.dates:
                start = day_of(converted.get(date_key, old.get(date_key)))
                if start is not None:
                    self.carried[key, date_key] += 1
                    ends, end = self.counted_to[key, date_key], start.toordinal() + round(new)
                    if end in ends or len(ends) < DAYS_COUNTED_TO_KEPT:
                        ends[end] = ends.get(end, 0) + 1

    def counts_days(self, key: str) -> bool:
        return self.changed[key] > 0 and self.rose[key] >= DAY_COUNTER_SHARE * self.changed[key]

    def counts_from(self, key: str) -> str | None:
        """The date field the field counts days from: the one whose records carrying both most count
        to one date (within a day), if enough do."""
        def share(date_key: str) -> float:
            ends = self.counted_to[key, date_key]
            return max(sum(ends.get(end + d, 0) for d in (-1, 0, 1)) for end in ends) / self.carried[key, date_key]
        best = max(((share(d), d) for d in self.dates if self.carried[key, d]), default=None)
        return best[1] if best is not None and best[0] >= DAY_COUNTER_SHARE else None


@dataclass
class TablePlan:
    spec: TableSpec
    columns: TableColumns  # the mapped fields as bound this run
    types: dict[str, str]  # writable Airtable field key -> type
    id_key: str | None  # the key of the `id` field (the merge key); None when the table has none
    writes: list[PlannedWrite]
    orphans: list[dict]  # Airtable records no exported record matched
    unmapped_fields: list[str]
    missing_in_airtable: list[str]  # mapped names
    read_only: list[str]  # mapped names
    absent_in_export: list[str] = field(default_factory=list)  # mapped Mongo fields no record carries
    invalid_values: int = 0
    unresolved_links: int = 0
    planned: dict[str, int] = field(default_factory=dict)  # counts per action, as planned
    skipped: int = 0  # unchanged records are counted, not kept: a quiet night's plan holds no write objects
    skipped_with_id: int = 0  # of those, the ones with a Mongo id (the deletion cap counts them)
    skipped_ids: dict[str, str] = field(default_factory=dict)  # Mongo id -> record id, when the table has no id field
    airtable_ids: dict[str, str] | None = None  # Mongo id -> Airtable record id, as matching found them
    days: DayTally | None = None  # what the updates tell of day counters
    clears: Counter = field(default_factory=Counter)  # field key -> the planned updates emptying it
    clears_held: list["HeldClears"] = field(default_factory=list)  # the fields the clear cap holds back

    def count_skip(self, mongo_id: str | None, record_id: str) -> None:
        self.skipped += 1
        if mongo_id is not None:
            self.skipped_with_id += 1
            if self.id_key is None:  # the links to it find it only through the plan
                self.skipped_ids[mongo_id] = record_id

    def of(self, action: str) -> list[PlannedWrite]:
        return [w for w in self.writes if w.action == action]


def link_reference(doc: dict, link: LinkSpec) -> str | None:
    for name in link.mongo_fields:
        value = doc.get(name)
        if value not in (None, ""):
            return str(value)
    return None


class PlanMemo:
    """The records a run found in sync, as a 64-bit digest of all each one's plan depends on: its export
    text, its snapshot line and the table's signature (this tool's code, the mapping, the bound fields
    and types, the link targets' ids). The plan being a function of those alone, a record whose digest
    the last run kept is in sync again: a quiet night neither parses nor converts it. In
    `airtable_<table>.memo` (8 bytes a record, no personal data); missing or stale, it costs a full plan."""

    def __init__(self, known: Iterable[int] = ()):
        self.known = set(known)
        self.kept = array("q")
        self.signature = b""

    @classmethod
    def load(cls, path: Path) -> "PlanMemo":
        with contextlib.suppress(OSError, ValueError), open(path, "rb") as handle:
            return cls(array("q", handle.read()))  # a length not a multiple of 8 raises: none known
        return cls()

    def sign(self, spec: TableSpec, columns: TableColumns, types: Mapping[str, str], id_key: str | None,
             link_index: Mapping[str, Mapping[str, str]]) -> None:
        digest = hashlib.blake2b(source_digest(), digest_size=16)
        digest.update(repr((spec.key, spec.mapping, spec.key_fields, spec.links, id_key, sorted(types.items()),
                            sorted((c.mapped, c.key, c.type) for c in columns.by_mapped.values()))).encode())
        for link in spec.links:
            digest.update("\x1f".join(f"{k}\x1e{v}" for k, v in link_index.get(link.target, {}).items()).encode())
        self.signature = digest.digest()

    def key(self, mongo_id: str, text_digest: int, line: bytes) -> int:
        digest = hashlib.blake2b(self.signature, digest_size=8)
        digest.update(mongo_id.encode("utf-8", "surrogatepass") + text_digest.to_bytes(8, "big", signed=True) + line)
        return int.from_bytes(digest.digest(), "big", signed=True)

    def save(self, path: Path) -> None:
        write_private(path, [self.kept.tobytes()])


def absent_in_export(spec: TableSpec, carried: set[str]) -> list[str]:
    """The mapped Mongo fields that no exported record carries (the exporter renamed or dropped
    them): Airtable keeps its values, since an absent field is never written."""
    mapped = [mongo for mongo, _ in spec.mapping if mongo != "id"]
    mapped += [link.mongo_fields[0] for link in spec.links if not carried.intersection(link.mongo_fields)]
    return [name for name in mapped if name not in carried]


def plan_record(plan: TablePlan, record: ExportRecord, current: dict | None, how: str,
                converting: Sequence[tuple[str, str, str]], link_index: Mapping[str, Mapping[str, str]]) -> bool:
    """One matched (or new) record's write, added to the plan; an unchanged one is only counted.
    True when the record is in sync with nothing invalid or unresolved in it (PlanMemo keeps those)."""
    spec, columns, types = plan.spec, plan.columns, plan.types
    converted, invalid, problem = convert_record(record, converting, plan.id_key)
    plan.invalid_values += len(invalid)
    if invalid:
        log.debug("%s %s: invalid values left out: %s", spec.key, record.mongo_id,
                  ", ".join(columns.mapped_name(k) for k in invalid))
    unresolved = plan.unresolved_links
    for link in spec.links:
        link_key = columns.key(link.airtable_field)
        if link_key not in types or (ref := link_reference(record.doc, link)) is None:
            continue
        target = link_index.get(link.target, {}).get(ref)
        if target is None:
            plan.unresolved_links += 1
        else:
            converted[link_key] = [target if target != PENDING else LinkRef(link.target, ref)]
    if problem:
        plan.writes.append(PlannedWrite(record.bare(), "error", error=problem))
    elif current is None:
        # Blank values are not sent on a create (is_blank, inlined: it runs per value).
        fields = {k: v for k, v in converted.items() if v is not None and v is not False and v != "" and v != []}
        plan.writes.append(PlannedWrite(record.bare(), "create", fields=fields))
    elif changes := changed_fields(converted, current["fields"], types):
        plan.days.add(changes, current["fields"], converted)  # type: ignore[union-attr]
        plan.writes.append(PlannedWrite(record.bare(), "update", record_id=current["id"], fields=changes,
                                        matched_by=how, before={k: current["fields"].get(k) for k in changes}))
        plan.clears.update(k for k, v in changes.items() if is_clear(v))
    else:
        plan.count_skip(record.mongo_id, current["id"])
        return not invalid and plan.unresolved_links == unresolved
    return False


def plan_table(spec: TableSpec, exported: ExportIndex, airtable_records: TableSnapshot, columns: TableColumns,
               link_index: Mapping[str, Mapping[str, str]], memo: PlanMemo | None = None,
               days_since_last_run: int | None = None) -> TablePlan:
    """What to create, update and skip for one table: pure but for reading the export and the
    snapshot. Fields are named by their keys in `columns` (field ids, once bound). An export record
    is parsed only when planned, and not at all when `memo` knows it in sync."""
    types, read_only = field_types(spec, columns, airtable_records, exported)
    id_key = columns.id_key if columns.id_key in types else None
    carried = exported.carried
    plan = TablePlan(spec, columns, types, id_key, [], [], sorted(carried - spec.consumed_mongo_fields),
                     list(columns.missing), read_only, absent_in_export(spec, carried) if carried else [])
    plan.days = DayTally(days_since_last_run, types)
    matcher = Matcher(airtable_records, columns.key(spec.airtable_key), id_key)
    converting = mapped_columns(spec, columns, types)
    if memo is not None:
        memo.sign(spec, columns, types, id_key, link_index)
    # Pass one: records unsafe to match fail, claiming no Airtable record; the rest are matched by id, planned at once.
    unmatched, seen_ids = [], set()
    for index, mongo_id in enumerate(exported.mongo_ids):
        record = exported.load(index) if mongo_id is None or id_key is None else None  # the key is needed
        error = None
        if record is not None and not natural_key(record.doc, spec.key_fields):
            # With no `id` field only the key finds a record again: created, it would be created again each run.
            error = (f"record #{index + 1} has no id and no {'/'.join(spec.key_fields)}" if mongo_id is None else
                     f"no {'/'.join(spec.key_fields)}, and the Airtable table has no id field to find it by")
        elif mongo_id is not None and mongo_id in seen_ids:
            error = "duplicate id in the export; its first record is synced"
        if error is not None:
            plan.writes.append(PlannedWrite(ExportRecord(index, mongo_id, NO_DOCUMENT), "error", error=error))
        else:
            seen_ids.add(mongo_id)
            if (rec_id := matcher.claim_by_id(mongo_id)) is not None:
                line: bytes = airtable_records.line(rec_id)  # type: ignore[assignment]
                if memo is not None:
                    known = memo.key(mongo_id, exported.digests[index], line)  # type: ignore[index,arg-type]
                    if known in memo.known:
                        memo.kept.append(known)
                        plan.count_skip(mongo_id, rec_id)
                        continue
                record = record or exported.load(index)
                if plan_record(plan, record, _cache_line(line), "id", converting, link_index) and memo is not None:
                    memo.kept.append(known)
            elif not matcher.candidates:  # nothing to match by key (a first sync): a create, at once
                plan_record(plan, record or exported.load(index), None, "new", converting, link_index)
            else:
                unmatched.append(index)
    # Pass two, in export order: by natural key, else a create.
    for index in unmatched:
        record = exported.load(index)
        rec_id = matcher.claim_by_key(natural_key(record.doc, spec.key_fields))
        current = airtable_records.get(rec_id) if rec_id is not None else None
        plan_record(plan, record, current, "key" if current is not None else "new", converting, link_index)
    plan.orphans = matcher.orphans()
    plan.airtable_ids = matcher.holding
    plan.writes.sort(key=lambda w: w.record.index)
    plan.planned = {a: sum(1 for w in plan.writes if w.action == a) for a in ("create", "update", "skip", "error")}
    plan.planned["skip"] += plan.skipped
    return plan


def build_link_index(airtable_records: Iterable[dict], plan: TablePlan | None, id_key: str | None) -> dict[str, str]:
    """Mongo id -> Airtable record id (or PENDING) of a link target table after its planned sync."""
    if plan is not None and plan.airtable_ids is not None:
        index = dict(plan.airtable_ids)  # the plan's matching read them already
    else:  # as its matching would
        index = Matcher(as_snapshot(airtable_records), None, id_key).holding
    if plan is not None:
        index.update(plan.skipped_ids)
        for write in plan.writes:
            if write.record.mongo_id is not None and write.action != "error":
                target = PENDING if write.action == "create" else write.record_id
                index[write.record.mongo_id] = target  # type: ignore[assignment]
    return index


CLEARS_ALWAYS_ALLOWED = 10  # a field's clears in a table are never held up to this many


@dataclass(frozen=True)
class HeldClears:
    """A mapped field whose clears the cap holds back this run."""

    key: str  # the field's key in the plan
    name: str  # its mapped name
    count: int  # the clears held
    holding: int  # the table's records holding a value in it
    limit: int  # the clears the cap allows


def clear_limits(clears: Mapping[str, int], holding: Mapping[str, int], fraction: float) -> dict[str, int]:
    """The fields whose clears are over the cap (more than CLEARS_ALWAYS_ALLOWED and than `fraction`
    of the records holding a value there, exactly as the deletion cap's), and its limit for each."""
    limits = {key: max(CLEARS_ALWAYS_ALLOWED, math.floor(Fraction(str(fraction)) * holding[key])) for key in holding}
    return {key: limit for key, limit in limits.items() if clears[key] > limit}


def hold_back(plan: TablePlan, keys: set[str]) -> None:
    """Takes the clears of `keys` out of the planned updates, their other changes staying. An update left
    empty is a skip the memo never kept (it keeps records in sync only): the next run plans the clear again."""
    kept = []
    for write in plan.writes:
        held = [k for k in keys & write.fields.keys() if is_clear(write.fields[k])] if write.action == "update" else []
        for key in held:
            del write.fields[key], write.before[key]  # type: ignore[union-attr]
        if held and not write.fields:
            plan.count_skip(write.record.mongo_id, write.record_id)  # type: ignore[arg-type]
            plan.planned["update"] -= 1
            plan.planned["skip"] += 1
        else:
            kept.append(write)
    plan.writes = kept


def cap_clears(plan: TablePlan, snapshot: TableSnapshot, fraction: float) -> None:
    """Holds back the clears of each field over the cap: an exporter bug or a bad migration can
    null a whole column, and Airtable may have its last copy. Only a field with more than
    CLEARS_ALWAYS_ALLOWED clears costs a pass over the snapshot's cells (a normal night: none)."""
    holding = {key: sum(1 for _, (value,) in snapshot.cells([key]) if not is_blank(value, plan.types[key]))
               for key, n in plan.clears.items() if n > CLEARS_ALWAYS_ALLOWED}
    plan.clears_held = [HeldClears(key, plan.columns.mapped_name(key), plan.clears[key], holding[key], limit)
                        for key, limit in clear_limits(plan.clears, holding, fraction).items()]
    if plan.clears_held:
        hold_back(plan, {held.key for held in plan.clears_held})


DELETE_ORDER = ("messages", "events", "users")  # links first, so nothing points at a deleted record


@dataclass
class DeletionPlan:
    """The records of one table that left Mongo, and whether the safety cap holds them back."""

    key: str
    records: list[dict]  # Airtable's records, in listing order
    with_id: int  # the table's records with a non-empty id once this run's creates are made
    limit: int  # how many the cap allows
    held: bool
    exported_ids: set[str] = field(default_factory=set, repr=False)  # the Mongo ids the export has
    id_key: str = "id"  # the key of the `id` field in the records

    def still_gone(self, rec: dict) -> bool:
        """Whether a record, as Airtable has it now, still holds a Mongo id the export lacks."""
        mongo_id = rec["fields"].get(self.id_key)
        return mongo_id not in (None, "") and str(mongo_id) not in self.exported_ids


def plan_deletions(plans: Mapping[str, TablePlan], exported_ids: Mapping[str, set[str]],
                   settings: Settings) -> dict[str, DeletionPlan]:
    """--delete-missing: per synced table, the Airtable records whose `id` holds a Mongo id its export
    no longer has; never one with an empty id, in a table whose export is missing or empty or that
    this run does not sync, or with --limit. A table whose deletions are over AIRTABLE_MAX_DELETE_FRACTION
    of its records with an id deletes nothing: a half-written export looks just like mass deletion."""
    if not settings.delete_missing or settings.limit is not None:
        return {}
    deletions = {}
    for key in DELETE_ORDER:
        plan = plans.get(key)
        if plan is None or plan.id_key is None or not exported_ids.get(key):
            continue
        probe = DeletionPlan(key, [], 0, 0, False, exported_ids[key], id_key=plan.id_key)  # type: ignore[arg-type]
        gone = [r for r in plan.orphans if probe.still_gone(r)]
        if not gone:
            continue
        # After this run's creates, and the legacy rows it gives an id: the cap's denominator.
        with_id = sum(1 for w in plan.writes if w.action != "error" and w.record.mongo_id is not None) + sum(
            1 for r in plan.orphans if r["fields"].get(plan.id_key) not in (None, "")) + plan.skipped_with_id
        # Exact: 29 of 100 at 0.29 is at the cap, not over it (in floats 0.29 * 100 < 29).
        limit = math.floor(Fraction(str(settings.max_delete_fraction)) * with_id)
        deletions[key] = dataclasses.replace(probe, records=gone, with_id=with_id, limit=limit,
                                             held=len(gone) > limit and not settings.force_delete)
    return deletions


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
    if found and kind == "UNKNOWN_FIELD_NAME":
        return found.group(1), "missing"
    if found and kind == "INVALID_VALUE_FOR_COLUMN" and "because the field is computed" in message:
        return found.group(1), "read_only"
    return None


def write_failure(exc: BaseException) -> tuple[str, int | None]:
    """How a write request that raised ended, and its HTTP status: "refused" for its content (404, 422:
    its records can be tried apart), "failed" (another 4xx: no retry mends it), "unsent" (a refused token,
    a 429 after the retries, a connect that failed: the run stops, the write not applied), or "lost" (a
    5xx or a dropped connection: the run stops, not knowing whether the write landed)."""
    status = exc.response.status_code if isinstance(exc, requests.HTTPError) else None
    if status in (404, 422):
        return "refused", status
    if status in (401, 403, 429) or (status is None and _never_sent(exc)):
        return "unsent", status
    return ("failed" if status is not None and status < 500 else "lost"), status


@dataclass(frozen=True, slots=True)
class Written:
    """What became of one planned write: the apply step's result, kept beside the plan it leaves as is."""

    outcome: Outcome = Outcome.PLANNED
    record_id: str | None = None  # the record written (a create's once made)
    note: str = ""  # why it failed, or was not attempted
    existed: bool = False  # a create the upsert found in Airtable already: it updated it
    links_left_out: tuple[dict, ...] = ()  # ({"field", "target"}, ...): the target's create failed


# Shared by every write whose result is its outcome alone: a first sync holds tens of thousands.
PLANNED, LANDED, LANDED_EXISTING = Written(), Written(Outcome.DONE), Written(Outcome.DONE, existed=True)


class BatchWriter:
    """Sends writes ten records a request and keeps what became of each in `results`, for the sync
    and the restore alike. A failed request ends as write_failure says, but that a plain create in
    doubt is never re-sent (it could duplicate) and does not stop the run.

    Each command supplies send(action, batch): Airtable's copy of the records written, and which
    were new (None: not known); key_of and name_of, the table and the record for the log (its
    Mongo id, never a value); and unknown_create, the note of a plain create in doubt."""

    VERB = "writing"
    SETTLES = "the next run settles it"

    def __init__(self, airtable: Airtable, stop: threading.Event, results: dict[Any, Written]):
        self.airtable, self.stop, self.results = airtable, stop, results

    def result(self, write: Any) -> Written:
        return self.results.get(write, PLANNED)

    def record(self, write: Any, **changes: Any) -> None:
        self.results[write] = dataclasses.replace(self.result(write), **changes)

    def label(self, write: Any) -> str:
        return f"{self.key_of(write)} {self.name_of(write)}"

    def landed(self, batch: list[tuple[Any, dict]], records: list[dict], created: set[str] | None) -> None:
        """Airtable answers in request order."""
        for (write, _), rec in zip(batch, records):
            self.record(write, outcome=Outcome.DONE, record_id=rec["id"])

    def plain_create(self, action: str) -> bool:
        return action == "create"

    def send_all(self, description: str, action: str, writes: Sequence[Any],
                 cells: Callable[[Any], dict | None]) -> None:
        """`cells` gives each write's cells to send when its batch is made (links to records
        written earlier filled in), or None when nothing is left to send."""
        if not writes:
            return
        batch: list[tuple[Any, dict]] = []
        with Progress(description, len(writes)) as progress:
            for done, write in enumerate(writes, 1):
                fields = cells(write)
                if fields is None:
                    self.record(write, outcome=Outcome.SKIPPED)
                else:
                    batch.append((write, fields))
                if batch and (len(batch) == RECORDS_PER_WRITE or done == len(writes)):
                    if self.stop.is_set():
                        raise RunInterrupted()
                    self.write_batch(action, batch)
                    batch = []
                if not batch:
                    progress.update(done - progress.done)

    def write_batch(self, action: str, batch: list[tuple[Any, dict]]) -> None:
        retried = self.airtable.stats.retried
        try:
            records, created = self.send(action, batch)
        except AIRTABLE_FAILURES as exc:
            how, status = write_failure(exc)
            kind, message = airtable_error(exc) if isinstance(exc, requests.HTTPError) else ("", "")
            if how == "refused":
                self.refused(action, batch, kind, message)
            elif how == "failed":
                self.fail(batch, f"HTTP {status} {kind}: {message}")
            else:
                self.lost(action, batch, exc, status, kind, how)
            return
        if len(records) != len(batch):
            raise AirtableAccessError(f"Airtable answered {len(records)} records for {len(batch)} written")
        if self.airtable.stats.retried != retried:
            created = None  # a retried upsert finds what its own lost first attempt made
        self.landed(batch, records, created)

    def refused(self, action: str, batch: list[tuple[Any, dict]], kind: str, message: str) -> None:
        """Tried record by record, so that only the bad records fail."""
        if len(batch) > 1:
            for item in batch:
                self.write_batch(action, [item])
        else:
            self.fail(batch, f"{kind}: {message}")

    def lost(self, action: str, batch: list[tuple[Any, dict]], exc: Exception, status: int | None, kind: str,
             how: str) -> None:
        """Retries spent (or the token refused): the run stops, unless only a plain create is in doubt.
        A 5xx or a lost connection may have been applied: its records say so."""
        error = access_error(exc, self.airtable.settings, f"{self.VERB} {self.key_of(batch[0][0])}")
        if how == "unsent":
            raise error from None  # not applied: reported as not attempted
        if self.plain_create(action):
            cause = f"HTTP {status} {kind}" if status else type(exc).__name__
            self.fail(batch, self.unknown_create(batch, cause), Outcome.UNKNOWN)
            return  # only this batch is in doubt; the run goes on
        self.fail(batch, f"outcome unknown ({error}); {self.SETTLES}", Outcome.UNKNOWN)
        raise error from None

    def fail(self, batch: Sequence[tuple[Any, dict]], message: str, outcome: Outcome = Outcome.FAILED) -> None:
        for write, _ in batch:
            note = message
            if (done := self.result(write)).outcome is Outcome.DONE:  # a restore's links, sent after the record
                note = f"written as {done.record_id}, but not its links to records written after it: {message}"
            self.record(write, outcome=outcome, note=note)
            log.warning("%s: %s", self.label(write), without_values(note) if outcome is Outcome.FAILED
                        else f"outcome {outcome}")


def not_attempted(writes: Iterable[Any], results: dict[Any, Written], reason: str) -> None:
    """The writes a run that stopped midway never sent: not failed, and the next run makes them."""
    for write in writes:
        if (result := results.get(write, PLANNED)).outcome is Outcome.PLANNED:  # its links left out stay counted
            results[write] = dataclasses.replace(result, outcome=Outcome.NOT_ATTEMPTED, note=reason)


@dataclass
class Applied:
    """What the apply step made of the sync's plans."""

    results: dict[PlannedWrite, Written] = field(default_factory=dict)
    created_ids: dict[str, dict[str, str]] = field(default_factory=dict)  # table -> Mongo id -> record made
    dropped: dict[str, dict[str, str]] = field(default_factory=dict)  # table -> field key -> missing | read_only
    written: set[str] = field(default_factory=set)  # tables whose snapshot took records written
    deleted: dict[str, dict[str, Outcome]] = field(default_factory=dict)  # table -> record id -> outcome

    def of(self, write: PlannedWrite) -> Written:
        return self.results.get(write, PLANNED)

    def failed(self, write: PlannedWrite) -> bool:
        return write.action == "error" or self.of(write).outcome.failed

    @property
    def anything_written(self) -> bool:
        landed = (Outcome.DONE, Outcome.UNKNOWN)
        return any(r.outcome in landed for r in self.results.values()) or any(
            o in landed for outcomes in self.deleted.values() for o in outcomes.values())


def free_path(stem: Path, *suffixes: str) -> Path:
    """The first of stem, stem_2, stem_3... taken under none of `suffixes`, with the first of them."""
    paths = (stem.with_name(f"{stem.name}_{n}" if n > 1 else stem.name) for n in itertools.count(1))
    return next(p for p in paths if not any(p.with_suffix(s).exists() for s in suffixes)).with_suffix(suffixes[0])


@dataclass
class ChangesArchive:
    """<reports-dir>/changed_<stamp>.jsonl: every value a run overwrites, so that --restore can
    put it back. Named at its first line, `_2`, `_3` added when a run of the same second has it."""

    reports_dir: Path
    started: datetime
    path: Path | None = None
    archived: set[PlannedWrite] = field(default_factory=set)

    def add(self, plan: TablePlan, batch: Sequence[tuple[PlannedWrite, dict]]) -> None:
        """An update request's lines, on disk before it is sent (append_archive): per record, the cells
        it changes by mapped name, as Airtable had them (the snapshot the plan diffed against) and as
        sent. A record sent again (its request refused, retried alone) is archived once."""
        batch = [(write, fields) for write, fields in batch if write not in self.archived]
        if not batch:
            return
        if self.path is None:
            self.path = free_path(self.reports_dir / f"changed_{self.started:%Y%m%d_%H%M%S}", ".jsonl")
        name = plan.columns.mapped_name
        append_archive(self.path, [
            {"table": plan.spec.key, "id": write.record_id, "mongo_id": write.record.mongo_id,
             "fieldIds": {name(k): k for k in fields}, "before": {name(k): (write.before or {}).get(k) for k in fields},
             "after": {name(k): v for k, v in fields.items()}} for write, fields in batch])
        self.archived.update(write for write, _ in batch)


class SyncWriter(BatchWriter):
    """A table's planned creates and updates: creates that carry an id are upserted on it (a
    create re-sent after a lost answer updates the record it made), the rest created plainly
    (never mixed in one request), then the updates."""

    def __init__(self, airtable: Airtable, stop: threading.Event, plan: TablePlan, applied: Applied,
                 records: TableSnapshot, changes: ChangesArchive):
        super().__init__(airtable, stop, applied.results)
        self.plan, self.applied, self.changes = plan, applied, changes
        self.key = plan.spec.key
        self.table = airtable.table(self.key)
        self.records = records  # the snapshot: Airtable's copy of each record written goes in
        self.dropped = applied.dropped.setdefault(self.key, {})

    @property
    def id_key(self) -> str | None:
        return None if self.plan.id_key in self.dropped else self.plan.id_key

    def apply(self) -> None:
        creates, id_key = self.plan.of("create"), self.plan.id_key
        for action, writes in (("upsert", [w for w in creates if id_key in w.fields]),
                               ("create", [w for w in creates if id_key not in w.fields]),
                               ("update", self.plan.of("update"))):
            self.send_all(f"{self.key}: {'create' if action == 'upsert' else action}", action, writes, self.cells)
        log.info("%s: applied", self.key)

    def cells(self, write: PlannedWrite) -> dict | None:
        """The cells to send, less fields Airtable rejected this run, with links to records created
        earlier in this run filled in; None for an update left with nothing to send."""
        fields = {}
        for key, value in write.fields.items():
            if key in self.dropped:
                continue
            if isinstance(value, list) and value and isinstance(value[0], LinkRef):
                target = self.applied.created_ids.get(value[0].target, {}).get(value[0].mongo_id)
                if target is None:  # its create failed
                    self.record(write, links_left_out=(*self.result(write).links_left_out,
                                                       {"field": key, "target": value[0].mongo_id}))
                    continue
                value = [target]
            fields[key] = value
        return fields if fields or write.action != "update" else None

    def key_of(self, write: PlannedWrite) -> str:
        return self.key

    def name_of(self, write: PlannedWrite) -> str:
        return write.record.mongo_id or f"#{write.record.index + 1}"

    def plain_create(self, action: str) -> bool:
        return action == "create" or (action == "upsert" and self.id_key is None)

    def unknown_create(self, batch: list[tuple[Any, dict]], cause: str) -> str:
        return (f"outcome unknown ({cause}); not re-sent, since a plain create could duplicate it: the next run "
                "finds the record by its natural key if it was created")

    def send(self, action: str, batch: list[tuple[PlannedWrite, dict]]) -> tuple[list[dict], set[str] | None]:
        by_field_id = self.plan.columns.by_field_id
        if action == "update":
            self.changes.add(self.plan, batch)
            return self.table.batch_update([{"id": w.record_id, "fields": f} for w, f in batch], typecast=True,
                                           use_field_ids=by_field_id), None
        if not self.plain_create(action):
            result = self.table.batch_upsert([{"fields": f} for _, f in batch], key_fields=[self.id_key],
                                             typecast=True, use_field_ids=by_field_id)
            return result["records"], set(result["createdRecords"])
        return self.table.batch_create([f for _, f in batch], typecast=True, use_field_ids=by_field_id), None

    def refused(self, action: str, batch: list[tuple[PlannedWrite, dict]], kind: str, message: str) -> None:
        """A field Airtable rejects as a whole (deleted or made computed since the schema was read)
        is left out for the rest of the run; otherwise the bad records are found."""
        rejected = rejected_field(kind, message)
        if rejected is None:
            super().refused(action, batch, kind, message)
            return
        name, reason = rejected
        if not any(name in f for _, f in batch):
            self.fail(batch, f"Airtable rejected field {name} ({reason}), which this request did not send")
            return
        log.warning("%s: Airtable rejects field %r (%s); it is left out for the rest of the run",
                    self.key, self.plan.columns.mapped_name(name), "unknown" if reason == "missing" else "computed")
        self.dropped[name] = reason
        remaining = []
        for write, fields in batch:
            fields = {k: v for k, v in fields.items() if k != name}
            if fields or action != "update":
                remaining.append((write, fields))
            else:
                self.record(write, outcome=Outcome.SKIPPED)
        if remaining:
            self.write_batch(action, remaining)

    def landed(self, batch: list[tuple[PlannedWrite, dict]], records: list[dict], created: set[str] | None) -> None:
        for rec in records:
            self.records.put(rec)
        self.applied.written.add(self.key)
        id_key = self.id_key or "id"
        by_key = {r["id"]: r for r in records} | {r["fields"][id_key]: r for r in records if r["fields"].get(id_key)}
        if all((w.record_id or f.get(id_key)) in by_key for w, f in batch):
            # Airtable answers in request order; matching by id does not depend on it.
            records = [by_key[w.record_id or f.get(id_key)] for w, f in batch]
        for (write, fields), rec in zip(batch, records):
            # An upsert that found the record there (a stale cache, or its own earlier attempt) updated it.
            existed = write.action == "create" and created is not None and rec["id"] not in created
            if self.result(write).links_left_out:
                self.record(write, outcome=Outcome.DONE, existed=existed)
            else:
                self.results[write] = LANDED_EXISTING if existed else LANDED
            if existed:
                log.warning("%s: already in Airtable (a stale snapshot), updated; its earlier values are not in the "
                            "changes archive", self.label(write))
            if write.action == "create" and write.record.mongo_id is not None and self.key in LINK_TARGETS:
                self.applied.created_ids.setdefault(self.key, {})[write.record.mongo_id] = rec["id"]
            if log.isEnabledFor(logging.DEBUG):  # the dump costs more than the write itself
                log.debug("%s: %s %s %s", self.label(write), "update" if existed else write.action,
                          rec["id"], json.dumps(jsonable(fields), ensure_ascii=False, default=str))


@dataclass
class Deleter:
    """--delete-missing: archives each batch, then deletes it, ten records a request."""

    airtable: Airtable
    archive: Path
    stop: threading.Event
    schema: BaseSchema | None  # None: the records name their fields by name, not id
    applied: Applied

    def apply(self, deletion: DeletionPlan) -> None:
        table = self.airtable.table(deletion.key)
        outcomes = self.applied.deleted.setdefault(deletion.key, {})
        with Progress(f"{deletion.key}: delete", len(deletion.records)) as progress:
            for start in range(0, len(deletion.records), RECORDS_PER_PAGE):
                batch = self.as_airtable_has_them(table, deletion, deletion.records[start:start + RECORDS_PER_PAGE])
                for first in range(0, len(batch), RECORDS_PER_WRITE):
                    if self.stop.is_set():
                        raise RunInterrupted()
                    chunk = batch[first:first + RECORDS_PER_WRITE]
                    self.archive_records(deletion.key, chunk)
                    self.delete_batch(table, deletion, chunk)
                progress.update(min(RECORDS_PER_PAGE, len(deletion.records) - start))
        done = sum(1 for o in outcomes.values() if o is Outcome.DONE)
        log.info("%s: deleted %d of %d records that left Mongo", deletion.key, done, len(deletion.records))

    def as_airtable_has_them(self, table: Any, deletion: DeletionPlan, records: Sequence[dict]) -> list[dict]:
        """The candidates read again (one request a hundred) just before they are deleted: since the run's
        read a person may have cleared a row's id to keep it, deleted it or typed into it. A row whose id
        still names a record that left Mongo is archived as Airtable has it now, then deleted; no other is."""
        formula = formulas.OR(*(formulas.EQ(formulas.RECORD_ID(), rec["id"]) for rec in records))
        try:
            fresh = {rec["id"]: rec for rec in table.all(formula=str(formula), use_field_ids=self.schema is not None)}
        except AIRTABLE_FAILURES as exc:
            raise access_error(exc, self.airtable.settings, f"reading {deletion.key} before deleting") from None
        batch, outcomes = [], self.applied.deleted[deletion.key]
        for rec in records:
            now = fresh.get(rec["id"])
            if now is None:
                outcomes[rec["id"]] = Outcome.DONE  # already gone: counts as deleted
            elif not deletion.still_gone(now):
                outcomes[rec["id"]] = Outcome.SKIPPED
                log.info("%s %s: its id was cleared or changed in Airtable since the read; not deleted",
                         deletion.key, rec["id"])
            else:
                batch.append(now)
        return batch

    def archive_records(self, key: str, batch: Sequence[dict]) -> None:
        """On disk before the delete request: nothing is lost for good. The cells by field name, as a
        person reads them, and each name's field id (fieldIds), by which --restore finds a field renamed since."""
        names = {f.id: f.name for f in self.schema.fields.get(key, {}).values()} if self.schema is not None else {}
        lines = [{"table": key, "id": rec["id"], "createdTime": rec.get("createdTime"),
                  "fields": {names.get(k, k): v for k, v in rec["fields"].items()}} for rec in batch]
        if names:  # the schema is read: the names' field ids too
            for line, rec in zip(lines, batch):
                line["fieldIds"] = {names.get(k, k): k for k in rec["fields"]}
        append_archive(self.archive, lines)

    def delete_batch(self, table: Any, deletion: DeletionPlan, batch: Sequence[dict]) -> None:
        ids, outcomes = [rec["id"] for rec in batch], self.applied.deleted[deletion.key]
        try:
            answered = table.batch_delete(ids)
        except AIRTABLE_FAILURES as exc:
            how, status = write_failure(exc)
            if how == "refused" and len(ids) > 1:
                for rec in batch:  # one of them is gone already: the others one by one
                    self.delete_batch(table, deletion, [rec])
                return
            if status == 404:  # already gone (a person, or this delete's own lost answer): deleted
                outcomes[ids[0]] = Outcome.DONE
                return
            error = access_error(exc, self.airtable.settings, f"deleting from {deletion.key}")
            if how == "unsent":  # not applied: the run stops, its deletions not attempted
                raise error from None
            outcomes.update(dict.fromkeys(ids, Outcome.UNKNOWN if how == "lost" else Outcome.FAILED))
            if how == "lost":  # a lost answer or an outage: the next read settles it
                raise error from None
            log.warning("%s: delete of %s failed: %s", deletion.key, ", ".join(ids), without_values(str(error)))
            return
        outcomes.update((rec["id"], Outcome.DONE) for rec in answered if rec.get("deleted"))


ARCHIVE_NAME = re.compile(r"(?:deleted|changed)_(\d{8}_\d{6})(?:_\d+)?\.jsonl")


def prune_archives(reports_dir: Path, days: float, now: datetime) -> None:
    """Deletion and changes archives hold personal data (of people who left, or overwritten):
    kept AIRTABLE_ARCHIVE_DAYS, by the timestamp in their name, and no other file is touched."""
    for path in reports_dir.glob("*.jsonl"):  # none when the folder is missing or unreadable
        found = ARCHIVE_NAME.fullmatch(path.name)
        with contextlib.suppress(ValueError, OSError):  # no date: not ours; a file that will not go: left
            if found and (now - datetime.strptime(found.group(1), "%Y%m%d_%H%M%S")).total_seconds() > days * 86400:
                path.unlink()
                log.info("removed the archive %s (older than %g days)", path.name, days)


# ---------------------------------------------------------------------------
# Report: what a night's writes were for
# ---------------------------------------------------------------------------

# An exporter that computes a value from today (days_inactive, from last_active) rewrites it in
# every record every night: ceil(records/10) write requests a night, and no night is ever quiet.
# A field is volatile when this run's updates wrote it in nearly every record and so did those of
# the last earlier run that wrote it at all (an hourly cron's other runs don't count against it);
# a day counter among them gets the formula that lets Airtable compute it for free. All of it is
# counted from what planning has in hand: a few counters a field, nothing kept per record.

VOLATILE_SHARE = 0.9  # of a table's synced records written, this run and the last that wrote the field

VOLATILE_MIN_RECORDS = 100  # below this a rewritten column costs too little to ask a person


@dataclass
class VolatileField:
    """A mapped field written in nearly every record of its table, this run and the last that wrote it."""

    field: str  # mapped name
    share: float  # of the table's synced records that this run's updates wrote it in
    requests: int  # what writing it alone cost this run: ceil(alone / 10)
    counts_days: bool  # it rose by the days since the previous run
    counts_days_since: str | None  # the Airtable name of the date field it counts days from


def writes_by_field(plan: TablePlan, applied: Applied) -> dict[str, dict[str, int]]:
    """Per mapped field, largest first, in how many of this run's updates done (a dry run: planned) it was
    written (`cells`) and the only field written (`alone`): not creates, nor a field Airtable rejected midway."""
    cells: Counter[str] = Counter()
    alone: Counter[str] = Counter()
    dropped = applied.dropped.get(plan.spec.key, {})
    for write in plan.of("update"):
        if applied.of(write).outcome in (Outcome.PLANNED, Outcome.DONE):
            keys = [k for k in write.fields if k not in dropped]
            cells.update(keys)
            if len(keys) == 1:
                alone.update(keys)
    return {plan.columns.mapped_name(k): {"cells": n, "alone": alone[k]}
            for k, n in sorted(cells.items(), key=lambda item: -item[1])}


def volatile_fields(written: Mapping[str, Mapping[str, int]], total: int, earlier: Mapping[str, float],
                    tally: DayTally, columns: TableColumns) -> list[VolatileField]:
    """The fields of `written` (writes_by_field) that are volatile, given `earlier`: each field's
    share in the last earlier run that wrote it. Pure."""
    found = []
    for name, counts in written.items():
        share = counts["cells"] / total if total else 0.0
        if counts["cells"] < VOLATILE_MIN_RECORDS or share < VOLATILE_SHARE or earlier.get(name, 0.0) < VOLATILE_SHARE:
            continue
        key = columns.key(name) or name
        since = tally.counts_from(key)
        found.append(VolatileField(name, round(share, 4), math.ceil(counts["alone"] / RECORDS_PER_WRITE),
                                   tally.counts_days(key),
                                   None if since is None else columns.by_mapped[columns.mapped_name(since)].name))
    return found


def volatile_text(key: str, volatile: VolatileField) -> str:
    """The WARNING and attention item: the field, its cost and, for a day counter, the remedy."""
    cost = f"{volatile.requests:,} request{'' if volatile.requests == 1 else 's'} a night"
    name = f"{key}.{volatile.field}"
    if volatile.counts_days and volatile.counts_days_since:
        return (f"{name} counts days since {volatile.counts_days_since}: {cost}; make it a formula in Airtable: "
                f"DATETIME_DIFF(TODAY(), {{{volatile.counts_days_since}}}, 'days')")
    if volatile.counts_days:
        return (f"{name} counts days: {cost}; a formula field in Airtable counting from the date it starts "
                "at would cost none")
    return f"{name} is rewritten in {volatile.share:.0%} of the records each night: {cost}"


def note_volatile_fields(results: Mapping[str, TableResult], plans: Mapping[str, TablePlan], read: BaseRead) -> None:
    """Names this run's volatile fields in the report, one WARNING each, and leaves in the state
    (saved with the snapshot, so never by a dry run) each written field's share for the next run.
    A table whose writes stopped midway keeps the shares it had: a part of a run tells nothing."""
    earlier = read.previous.writes if read.previous is not None else {}
    shares = {key: dict(fields) for key, fields in earlier.items()}
    for key, plan in plans.items():
        result = results[key]
        result.volatile_fields = volatile_fields(result.writes_by_field, result.total, earlier.get(key, {}),
                                                 plan.days, plan.columns)  # type: ignore[arg-type]
        for volatile in result.volatile_fields:
            log.warning("%s", volatile_text(key, volatile))
        if not result.not_attempted:  # a field written at all was written in one of `total` records
            shares.setdefault(key, {}).update({name: round(c["cells"] / result.total, 4)
                                               for name, c in result.writes_by_field.items()})
    if read.state is not None:
        read.state.writes = shares


# ---------------------------------------------------------------------------
# Report: the figures, the summary line, the Markdown and JSON files, the attention line
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
    deleted: int = 0
    deletions_held: int = 0
    clears_held: dict[str, int] = field(default_factory=dict)  # mapped name -> clears held by the cap
    reverted_edits: int | None = None  # null on a full read: who changed what is unknown there
    unresolved_links: int = 0
    unmapped_fields: list[str] = field(default_factory=list)
    missing_in_airtable: list[str] = field(default_factory=list)
    read_only: list[str] = field(default_factory=list)
    renamed_fields: list[dict] = field(default_factory=list)  # [{"mapped", "airtable"}]
    absent_in_export: list[str] = field(default_factory=list)  # mapped Mongo fields no record carries
    writes_by_field: dict[str, dict[str, int]] = field(default_factory=dict)  # mapped name -> {"cells", "alone"}
    volatile_fields: list[VolatileField] = field(default_factory=list)
    invalid_values: int = 0
    not_attempted: int = 0
    planned: dict[str, int] = field(default_factory=dict)
    note: str = ""
    orphan_records: list[dict] = field(default_factory=list)  # [{record_id, mongo_id}]
    deleted_records: list[dict] = field(default_factory=list)  # [{record_id, mongo_id}]


def record_ref(rec: dict, id_key: str | None) -> dict:
    """An Airtable record as the report names it: never its values."""
    mongo_id = rec["fields"].get(id_key) if id_key is not None else None
    return {"record_id": rec["id"], "mongo_id": None if mongo_id in (None, "") else str(mongo_id)}


def set_back(plan: TablePlan, edited: Mapping[str, set[str]] | None, applied: Applied) -> int | None:
    """Records whose mapped cells someone else changed since the last run and this run set back
    to Mongo's value (logged by record id and field names). A dry run counts what it would."""
    if edited is None:
        return None
    count = 0
    for write in plan.of("update"):
        keys = edited.get(write.record_id or "", set()) & write.fields.keys()
        if keys and applied.of(write).outcome in (Outcome.PLANNED, Outcome.DONE):
            count += 1
            log.info("%s %s (record %s): set back %s, edited in Airtable", plan.spec.key, write.record.mongo_id,
                     write.record_id, ", ".join(sorted(plan.columns.mapped_name(k) for k in keys)))
    return count


def summarize(plan: TablePlan, applied: Applied, dry_run: bool, deletion: DeletionPlan | None = None,
              edited: Mapping[str, set[str]] | None = None) -> TableResult:
    """A table's figures: the plan, and what the apply step made of it (a dry run: as planned)."""
    key, writes, count = plan.spec.key, plan.writes, plan.planned
    outcomes = applied.deleted.get(key, {})
    deleted = [] if deletion is None else [r for r in deletion.records if (
        not deletion.held if dry_run else outcomes.get(r["id"]) is Outcome.DONE)]
    gone = {rec["id"] for rec in deleted}
    dropped = applied.dropped.get(key, {})

    def and_dropped(names: Sequence[str], why: str) -> list[str]:
        """The plan's fields of a kind, and those Airtable rejected midway as such."""
        return sorted({*names, *(plan.columns.mapped_name(k) for k, reason in dropped.items() if reason == why)})

    results = [applied.of(w) for w in writes]
    done = [(w, r) for w, r in zip(writes, results) if r.outcome is Outcome.DONE]
    return TableResult(
        total=len(writes) + plan.skipped,
        created=count["create"] if dry_run else sum(1 for w, r in done if w.action == "create" and not r.existed),
        updated=count["update"] if dry_run else sum(1 for w, r in done if w.action == "update" or r.existed),
        skipped=plan.skipped + sum(1 for r in results if r.outcome is Outcome.SKIPPED),
        errors=sum(map(applied.failed, writes)) + sum(o in (Outcome.FAILED, Outcome.UNKNOWN)
                                                      for o in outcomes.values()),
        orphans=len(plan.orphans) - len(gone),
        deleted=len(deleted),
        deletions_held=len(deletion.records) if deletion is not None and deletion.held else 0,
        clears_held={held.name: held.count for held in plan.clears_held},
        reverted_edits=set_back(plan, edited, applied),
        orphan_records=[record_ref(r, plan.columns.id_key) for r in plan.orphans if r["id"] not in gone],
        deleted_records=[record_ref(r, plan.columns.id_key) for r in deleted],
        unresolved_links=plan.unresolved_links + sum(len(r.links_left_out) for r in results),
        unmapped_fields=plan.unmapped_fields,
        missing_in_airtable=and_dropped(plan.missing_in_airtable, "missing"),
        read_only=and_dropped(plan.read_only, "read_only"),
        renamed_fields=plan.columns.renamed,
        absent_in_export=plan.absent_in_export,
        writes_by_field=writes_by_field(plan, applied),
        invalid_values=plan.invalid_values,
        not_attempted=sum(1 for r in results if r.outcome is Outcome.NOT_ATTEMPTED),  # none in a dry run
        planned=count,
    )


def counted(n: int, what: str, plural: str | None = None) -> list[str]:
    return [f"{n:,} {what if n == 1 else plural or what + 's'}"] if n else []


ATTENTION_FIELDS_NAMED = 3  # a table's fields of one kind named in the attention line; more are counted
MARKDOWN_ERROR_ROWS = 200  # the JSON twin lists every failed record
MARKDOWN_RECORD_REFS = 5  # orphans and deletions named in the Markdown; the JSON names them all
MARKDOWN_HEADINGS = {"table": "table", "mongo_id": "mongo id", "archived_id": "archived record", "message": "message"}


def markdown_table(headings: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    return (["| " + " | ".join(headings) + " |", "|---" * len(headings) + "|"]
            + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])


def markdown_cell(value: Any) -> str:
    return "-" if value is None or value == [] else ", ".join(value) if isinstance(value, list) else str(value)


def record_refs(refs: Sequence[dict], extra: Callable[[dict], str] = lambda r: "") -> str:
    """The first MARKDOWN_RECORD_REFS records: 'recX (mongo id)', never a value."""
    return ", ".join(f"{r['record_id']} ({r['mongo_id'] or 'no id'}{extra(r)})" for r in refs[:MARKDOWN_RECORD_REFS])


def requests_line(report: RunReport) -> str:
    """How the run read Airtable and what it cost, for the console."""
    stats = report.requests
    plural = "" if stats.total == 1 else "s"
    return f"{stats.total} request{plural} ({stats.read} read, {stats.write} write; {report.how_read()})"


@dataclass
class RunReport:
    dry_run: bool
    started: datetime
    tables: dict[str, TableResult] = field(default_factory=dict)
    requests: RequestStats = field(default_factory=RequestStats)
    errors: list[dict] = field(default_factory=list)
    change_tracking: dict = field(default_factory=lambda: {"mode": "full", "reason": "not read", "payloads": 0,
                                                           "drift": None})
    ended: str = "ok"
    exit_code: int = 0
    message: str = ""
    duration_s: float = 0.0
    monthly_calls: int | None = None  # AIRTABLE_MONTHLY_CALLS, for the budget's share

    def as_dict(self) -> dict:
        return {"dry_run": self.dry_run, "started": self.started.isoformat(timespec="seconds"), "ended": self.ended,
                "exit_code": self.exit_code, "message": self.message,
                "tables": {k: dataclasses.asdict(v) for k, v in self.tables.items()},
                "change_tracking": self.change_tracking, "requests": self.requests.as_dict(), "errors": self.errors,
                "duration_s": round(self.duration_s, 3)}

    NAME: ClassVar[str | None] = "sync_report"  # its files' name; None: it writes none
    NOTHING: ClassVar[str] = "no table synced"
    TITLE: ClassVar[str] = "sync"
    COLUMNS: ClassVar[tuple[str, ...]] = ("total", "created", "updated", "skipped", "errors", "orphans", "deleted",
                                          "deletions_held", "reverted_edits", "unresolved_links", "invalid_values")
    ERROR_COLUMNS: ClassVar[tuple[str, ...]] = ("table", "mongo_id", "message")

    def markdown(self) -> str:
        """The Markdown report, of any command: the hooks below are what its kind adds."""
        stats, mode = self.requests, "dry run (nothing written)" if self.dry_run else self.TITLE
        lines = [f"# Airtable {self.TITLE} report: {self.started:%Y-%m-%d %H:%M:%S}", "",
                 f"**{self.ended.upper()}** ({mode}{self.of_what()}, exit code {self.exit_code}) in "
                 f"{self.duration_s:.1f} s: {self.headline()}; {stats.total} requests ({stats.read} read, "
                 f"{stats.write} write, {stats.retried} retried).", ""]
        lines += [f"> {self.message}", ""] if self.message else []
        lines += self.preface()
        lines += ["## Tables", ""] + markdown_table(
            ["table", *(c.replace("_", " ") for c in self.COLUMNS)],
            ([key, *(markdown_cell(getattr(t, c)) for c in self.COLUMNS)] for key, t in self.tables.items())) + [""]
        for key, t in self.tables.items():
            if notes := self.table_notes(t):
                lines += [f"### {key}", ""] + [f"- {n}" for n in notes] + [""]
        lines += self.after_tables()
        if errors := self.errors:  # the first MARKDOWN_ERROR_ROWS: the JSON twin has all
            lines += ["## Failed records", ""] + markdown_table(
                [MARKDOWN_HEADINGS[c] for c in self.ERROR_COLUMNS],
                ([str(error[c] or "(none)").replace("|", "\\|").replace("\n", " ") for c in self.ERROR_COLUMNS]
                 for error in errors[:MARKDOWN_ERROR_ROWS]))
            if len(errors) > MARKDOWN_ERROR_ROWS:
                lines.append(f"\n... and {len(errors) - MARKDOWN_ERROR_ROWS} more in the JSON report.")
            lines.append("")
        requests = stats.as_dict()
        return "\n".join(lines + ["## Requests", ""] + markdown_table(list(requests), [requests.values()]) + [""])

    def of_what(self) -> str:
        return ""

    def totals(self, *names: str) -> list[int]:
        return [sum(getattr(t, name) for t in self.tables.values()) for name in names]

    def headline(self) -> str:
        created, updated, skipped, errors = self.totals("created", "updated", "skipped", "errors")
        would = "would " if self.dry_run else ""
        return (f"{would}create{'' if would else 'd'} {created}, {would}update{'' if would else 'd'} {updated}, "
                f"skipped {skipped} unchanged, {errors} failed")

    def preface(self) -> list[str]:
        budget = budget_text(self.requests.last_30_days, self.monthly_calls)
        lines = [f"API budget: {budget} to this base by this tool, this run's included (other integrations "
                 "share the workspace's monthly calls).", ""]
        if budget_high(self.requests.last_30_days, self.monthly_calls):
            lines += [f"> **Warning**: this tool alone has used {BUDGET_WARNING_SHARE:.0%} or more of the "
                      f"workspace's monthly API calls in 30 days; {BUDGET_ADVICE}.", ""]
        tracking = self.change_tracking
        how = "the change feed" if tracking["mode"] == "webhook" else "every record"
        drift = "" if tracking.get("drift") is None else f"; drift {tracking['drift']}"
        return lines + [f"Read {how} ({tracking['reason']}); {tracking['payloads']} payloads{drift}.", ""]

    def table_notes(self, result: Any) -> list[str]:
        """A synced table's notes in the Markdown report: what needs a look, records named by id."""
        notes = [result.note] if result.note else []
        for label, names in (("Mongo fields not synced (unmapped)", result.unmapped_fields),
                             ("Mapped fields missing in Airtable", result.missing_in_airtable),
                             ("Mapped fields read-only in Airtable (computed)", result.read_only),
                             ("Mapped fields renamed in Airtable (still synced)",
                              [f"{r['mapped']} is now '{r['airtable']}'" for r in result.renamed_fields]),
                             ("Mapped Mongo fields absent from the export (Airtable keeps its values)",
                              result.absent_in_export)):
            if names:
                notes.append(f"{label}: {', '.join(names)}")
        if result.not_attempted:
            notes.append(f"{result.not_attempted} planned writes not attempted")
        for label, refs in (("Orphans (in Airtable, in no export)", result.orphan_records),
                            ("Deleted" + (" (would be)" if self.dry_run else ""), result.deleted_records)):
            if refs:
                more = f", and {len(refs) - MARKDOWN_RECORD_REFS} more" if len(refs) > MARKDOWN_RECORD_REFS else ""
                notes.append(f"{label}: {len(refs)}: {record_refs(refs)}{more} (all in the JSON report)")
        if result.clears_held:
            notes.append("Clears held back by the safety cap, not written (see the log line; --force-clear writes "
                         "them): " + ", ".join(f"{name} {n:,}" for name, n in result.clears_held.items()))
        if result.deletions_held:
            notes.append(f"{result.deletions_held} deletions held back by the safety cap: see the log line; "
                         "look with --dry-run, then --force-delete if they should go")
        return notes

    def after_tables(self) -> list[str]:
        """'What the writes were for': every table's updated fields, largest first, then the volatile ones."""
        rows = sorted(((key, name, c["cells"], c["alone"]) for key, t in self.tables.items()
                       for name, c in t.writes_by_field.items()), key=lambda row: -row[2])
        if not rows:
            return []
        lines = ["## What the writes were for", "", "Updates only (creates are not counted): in how many records each "
                 "field was written, and in how many it was the only field written.", ""]
        lines += markdown_table(("table", "field", "records", "only field"), rows)
        return lines + [""] + [f"- **Volatile**: {volatile_text(key, v)}" for key, t in self.tables.items()
                               for v in t.volatile_fields] + [""]

    # A table's figures in the summary line: (figure, its word, shown when 0).
    SUMMARY: ClassVar[tuple[tuple[str, str, bool], ...]] = (
        ("created", "created", True), ("updated", "updated", True), ("skipped", "skipped", True),
        ("errors", "failed", True), ("deleted", "deleted", False), ("deletions_held", "deletions held", False),
        ("clears_held", "clears held", False))

    def summary(self) -> str:
        """'users: 1 created, 0 updated, …; events: …'."""
        def figure(t: Any, name: str) -> int:
            value = getattr(t, name)
            return len(value) if isinstance(value, list) else sum(value.values()) if isinstance(value, dict) else value

        return "; ".join(f"{key}: " + ", ".join(f"{figure(t, name)} {word}" for name, word, always in self.SUMMARY
                                                if always or figure(t, name))
                         for key, t in self.tables.items()) or self.NOTHING

    def how_read(self) -> str:
        tracking = self.change_tracking
        return (f"change feed, {tracking['payloads']} payloads" if tracking["mode"] == "webhook"
                else f"full read: {tracking['reason']}")

    def attention_items(self) -> list[str]:
        """What needs a person, beyond failed records and the budget (attention_line)."""
        tables = self.tables.values()
        items = counted(sum(t.deletions_held for t in tables), "deletion held by the safety cap",
                        "deletions held by the safety cap")
        items += [f"{key}.{name}: {n:,} clears held by the safety cap" for key, t in self.tables.items()
                  for name, n in t.clears_held.items()]
        items += counted(sum(t.reverted_edits or 0 for t in tables), "reverted edit")
        items += counted(self.change_tracking.get("drift") or 0, "drifted record")
        items += counted(sum(t.unresolved_links for t in tables), "unresolved link")
        for key, t in self.tables.items():
            for names, what in ((t.missing_in_airtable, "missing in Airtable"),
                                ([f"{r['mapped']} renamed to '{r['airtable']}'" for r in t.renamed_fields], ""),
                                (t.absent_in_export, "absent from the export")):
                if len(names) > ATTENTION_FIELDS_NAMED:
                    items.append(f"{len(names)} {key} fields {what or 'renamed in Airtable'}")
                else:
                    items += [f"{key}.{name}" + (f" {what}" if what else "") for name in names]
            items += [volatile_text(key, volatile) for volatile in t.volatile_fields]
        return items

    def closing_lines(self, path: Path | None) -> list[str]:
        """What main() prints last, for the console and cron's mail."""
        return [f"{self.ended}: {self.summary()}; {requests_line(self)}; report: {path or 'not written'}"]


class CheckReport(RunReport):
    """--check prints as it goes: no report files, and its last lines say what it cost."""

    NAME = None
    NOTHING = "checked"

    def how_read(self) -> str:
        return "check"

    def closing_lines(self, path: Path | None) -> list[str]:
        return [f"\n{self.requests.total} requests, nothing written",
                f"API budget: {budget_text(self.requests.last_30_days, self.monthly_calls)} to this base by this "
                "tool, this check included"]


def write_report(report: RunReport, reports_dir: Path, secret: str) -> Path | None:
    """The Markdown report and its JSON twin, the token masked even where an error text quoted it."""
    def masked(text: str) -> str:
        return text.replace(secret, "[token]") if secret else text

    if report.NAME is None:
        return None
    path = free_path(reports_dir / f"{report.NAME}_{report.started:%Y%m%d_%H%M%S}", ".md", ".json")
    write_private(path.with_suffix(".json"), masked(json.dumps(report.as_dict(), indent=2, ensure_ascii=False)))
    try:
        write_private(path, masked(report.markdown()))
    except LocalWriteError:
        with contextlib.suppress(OSError):  # a report is the two files or none
            os.remove(path.with_suffix(".json"))
        raise
    return path


def attention_line(report: RunReport) -> str:
    """What needs a person after this run, without values, for the last line a run prints, or '' when
    nothing does: 'attention: 1 failed record, 31 reverted edits, users.occupation missing in Airtable'."""
    tables = report.tables.values()
    # Writes a run that stopped midway (an outage, a spent month) never made did not fail: the next run makes them.
    items = counted(sum(t.errors - t.not_attempted for t in tables), "failed record")
    items += counted(sum(t.not_attempted for t in tables), "write not attempted", "writes not attempted")
    items += report.attention_items()
    last_30_days, cap = report.requests.last_30_days, report.monthly_calls
    if budget_high(last_30_days, cap):
        items.append(f"API budget at {last_30_days / cap:.0%} of AIRTABLE_MONTHLY_CALLS={cap}")  # type: ignore[operator]
    return "attention: " + ", ".join(items) if items else ""


# ---------------------------------------------------------------------------
# Commands: what the runner runs
# ---------------------------------------------------------------------------


@dataclass
class Command:
    """A command the runner (execute) runs; the runner owns the lock, signals, exit codes and request counts."""

    settings: Settings
    stop: threading.Event
    report: RunReport

    def run(self) -> int:
        raise NotImplementedError

    @property
    def anything_written(self) -> bool:
        return False


def stop_reason(exc: BaseException) -> str:
    return "interrupted" if isinstance(exc, RunInterrupted) else str(exc)


# ---------------------------------------------------------------------------
# Restore: replay a deletion archive, or put back a changes archive (--restore ARCHIVE)
# ---------------------------------------------------------------------------

# A deletion archive (Deleter.archive_records) holds what --delete-missing deleted, one JSON
# object a line, as Airtable had it: {"table", "id", "createdTime", "fields"}, and since fields
# are bound by id, "fieldIds" ({field name: field id}). A restore checks it whole before its
# first request, reads the schema and only the records it needs, plans (pure functions), then
# writes Users, Events, Messages (the reverse of deleting, so that links find their targets):
# - a record whose Mongo id (its `id` cell) is in Airtable again, because its export came back
#   and a sync re-created it, gets back only its Airtable-only cells (fields outside the
#   mappings, such as a person's notes) where they are empty now: "refilled";
# - any other is re-created with its writable cells, upserted on `id`, so that a second restore
#   finds it and creates nothing: "restored". A record without an `id` (the tool never deletes
#   one, but an archive is a text file) is found again by its natural key (email, Name,
#   message) instead, and created plainly when no record has that key; with neither it fails;
# - a link to a record that exists is kept; one to an archived record follows it to the record
#   that holds its Mongo id now, or that this run re-creates; one to a record gone for good is
#   left out and counted.
# Nothing else is touched: no cache and no change-tracking state (the webhook hands the
# restore's writes to the next sync like anyone's), and no archive is pruned (the one being
# replayed could be among them).

# What Airtable has of the archive is read by formula, up to LOOKUP_TERMS_PER_QUERY ids a
# request (OR({id}='...', RECORD_ID()='...', ...); pyairtable sends a formula too long for a URL
# as a POST to listRecords), not by reading the tables in full: the cost follows the archive, not
# the base. An archive holds at most AIRTABLE_MAX_DELETE_FRACTION (5%) of a table unless forced:
# of 10,000 users, 500, found in 5 requests where a full read takes 100 (the records their links
# name add a few); a forced mass deletion costs about what a full read does.
LOOKUP_TERMS_PER_QUERY = 100


@dataclass
class ArchivedRecord:
    """One line of a deletion archive."""

    table: str  # table key
    record_id: str  # the deleted record's Airtable id
    fields: dict  # field name -> value, as Airtable had them (records API format)
    field_ids: dict  # field name -> field id (archives written since fields are bound by id)
    line: int


@dataclass
class ChangedRecord:
    """One line of a changes archive (ChangesArchive): the cells an update request changed."""

    table: str
    record_id: str
    mongo_id: str | None
    field_ids: dict  # mapped name -> field id when written
    before: dict  # mapped name -> the value Airtable had
    after: dict  # mapped name -> the value the run wrote
    line: int


def is_changes_line(obj: Any) -> bool:
    """A changes archive's line has before and after, a deletion archive's fields."""
    return isinstance(obj, dict) and ("before" in obj or "after" in obj)


def archive_line(path: Path, number: int, obj: Any) -> "ArchivedRecord | ChangedRecord":
    """A line of either archive, told apart by content."""
    where = f"{path}: line {number}"
    if changes := is_changes_line(obj):
        before, after = obj.get("before"), obj.get("after")
        shaped = (isinstance(before, dict) and isinstance(after, dict) and before.keys() == after.keys()
                  and "mongo_id" in obj and isinstance(obj["mongo_id"], (str, type(None))))
        what = "a changed record (a JSON object with table, id, mongo_id, and before and after of the same cells)"
    else:
        shaped = isinstance(obj, dict) and isinstance(obj.get("fields"), dict)
        what = "an archived record (a JSON object with table, id and fields)"
    if not (shaped and isinstance(obj.get("table"), str) and isinstance(obj.get("id"), str) and obj["id"]):
        raise UsageError(f"{where}: not {what}")
    if obj["table"] not in TABLE_SPECS:
        raise UsageError(f"{where}: unknown table {obj['table']!r} (one of {', '.join(TABLE_ORDER)})")
    field_ids = obj.get("fieldIds", {})
    if not isinstance(field_ids, dict) or not all(isinstance(v, str) for v in field_ids.values()):
        raise UsageError(f"{where}: fieldIds is not an object of field ids")
    if changes:
        return ChangedRecord(obj["table"], obj["id"], obj["mongo_id"], field_ids, obj["before"], obj["after"], number)
    return ArchivedRecord(obj["table"], obj["id"], obj["fields"], field_ids, number)


def parse_archive(path: Path, raw: bytes) -> list[ArchivedRecord] | list[ChangedRecord]:
    """A bad or truncated line is an input error naming the file and the line; blank lines are skipped."""
    records = []
    lines = raw.split(b"\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8", errors="surrogatepass")  # as Deleter.archive_records wrote it
        except UnicodeDecodeError as exc:
            raise UsageError(f"{path}: line {number}: not valid UTF-8 (byte {line[exc.start]:#04x} "
                             f"at column {exc.start + 1})") from None
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            truncated = not text.rstrip().endswith("}") and not any(rest.strip() for rest in lines[number:])
            cut = " (the last line stops short: a truncated archive?)" if truncated else ""
            raise UsageError(f"{path}: line {number}: not valid JSON: {exc.msg} (column {exc.colno}){cut}") from None
        records.append(archive_line(path, number, obj))
    mixed = next((r for r in records if type(r) is not type(records[0])), None)
    if mixed is not None:
        raise UsageError(f"{path}: line {mixed.line}: not the kind of line {records[0].line} is (a deletion "
                         "archive's lines and a changes archive's mixed)")
    return records


@dataclass
class LiveTable:
    """A synced table's fields as the base has them today, by name and by id."""

    id: str
    by_name: dict[str, FieldInfo]
    bound: Mapping[str, str] = field(default_factory=dict)  # mapped name -> field id, as the sync binds it
    fields: dict[str, FieldInfo] = field(init=False, repr=False)  # by field id

    def __post_init__(self) -> None:
        self.fields = {f.id: f for f in self.by_name.values()}

    def archived_field(self, rec: ArchivedRecord, name: str) -> FieldInfo | None:
        """Today's field for an archived name: by the id the archive gives (it may be renamed since), else by name."""
        return self.fields.get(rec.field_ids.get(name, "")) or self.by_name.get(name)

    def mapped_field(self, rec: ArchivedRecord, name: str) -> FieldInfo | None:
        """Today's field of a mapped name: the one the sync binds it to, else as for any archived field."""
        return self.fields.get(self.bound.get(name, "")) or self.archived_field(rec, name)


def live_tables(airtable: Airtable, bound: Mapping[str, Mapping[str, str]]) -> dict[str, LiveTable]:
    """The synced tables by key, from one schema request, which a restore cannot do without (exit 3)."""
    settings = airtable.settings
    schema = fetch_schema(airtable)
    airtable.use_tables(schema)
    if schema is None:
        raise AirtableAccessError("a restore needs the base's schema (which fields are computed, where links "
                                  "lead): give the token the scope schema.bases:read")
    missing = [key for key in settings.tables if key not in schema.fields]
    if missing:
        raise AirtableAccessError(f"base {settings.base_id} has no table " +
                                  ", ".join(f"{settings.table_ids[k]} ({k})" for k in missing))
    return {key: LiveTable(schema.table_ids[key], schema.fields[key], columns.bindings)
            for key, columns in table_bindings(schema, bound, schema.fields).items()}


@dataclass
class ArchivedCells:
    """An archived record against today's schema: what of it can be written back, and how to find it again."""

    record: ArchivedRecord
    table_id: str
    cells: dict[str, Any]  # today's field id -> archived value, writable fields only
    mapped: set[str]  # the fields the sync's mappings own (never refilled)
    left_out: list[str]  # archived field names with no writable field today
    key_field: FieldInfo | None = None  # `id`, else the natural key field
    key: str | None = None  # its value: what finds the record again
    mongo_id: str | None = None  # the key, when it is the Mongo id (upserts merge on it)


def archived_cells(rec: ArchivedRecord, table: LiveTable) -> ArchivedCells:
    """Computed fields are left to Airtable; a field gone, or of a type the tool does not write
    (attachments, whose archived URLs expire, collaborators, barcodes...), is left out."""
    spec = TABLE_SPECS[rec.table]
    cells, left_out = {}, []
    for name, value in rec.fields.items():
        live = table.archived_field(rec, name)
        if live is not None and live.type in WRITABLE_TYPES:
            cells[live.id] = value
        elif live is None or live.type not in COMPUTED_TYPES:
            left_out.append(name)
    mapped = {f.id for name in spec.airtable_fields if (f := table.mapped_field(rec, name)) is not None}
    for name in ("id", spec.airtable_key):
        live = table.mapped_field(rec, name)
        value = cells.get(live.id) if live is not None else None
        if isinstance(value, (str, int, float)) and str(value).strip():
            key = str(value)
            return ArchivedCells(rec, table.id, cells, mapped, left_out, live, key, key if name == "id" else None)
    return ArchivedCells(rec, table.id, cells, mapped, left_out)


def what_to_look_up(archive: Mapping[str, ArchivedCells], restored: Sequence[str],
                    tables: Mapping[str, LiveTable]) -> tuple[list[ArchivedCells], dict[str, set[str]]]:
    """The archived records to find again by their key (those of the tables restored, and those
    their links name), and per table id the other linked records, to learn whether they exist."""
    wanted = {rec_id: cells for rec_id, cells in archive.items() if cells.record.table in restored}
    elsewhere: dict[str, set[str]] = defaultdict(set)
    for cells in list(wanted.values()):
        for field_id, value in cells.cells.items():
            live = tables[cells.record.table].fields[field_id]
            if live.type != "multipleRecordLinks" or not isinstance(value, list):
                continue
            for target in value:
                if isinstance(target, str) and target in archive:
                    wanted.setdefault(target, archive[target])
                elif isinstance(target, str) and live.links_to:
                    elsewhere[live.links_to].add(target)
    return sorted(wanted.values(), key=lambda c: TABLE_ORDER.index(c.record.table)), elsewhere


def lookup_formulas(wanted: Iterable[ArchivedCells], elsewhere: Mapping[str, Iterable[str]]) -> dict[str, list[str]]:
    """Per table id, the formulas (one request each) that find those records. pyairtable's
    quoting escapes quotes and backslashes only: a natural key with a line break (a message found
    by its text, in an archive without ids) goes in as it is, which Airtable's formula strings
    may not take (UNCONFIRMED)."""
    terms: dict[str, dict[str, Any]] = defaultdict(dict)  # table id -> formula text -> term (ordered, unique)
    by_key = [(c.table_id, formulas.EQ(formulas.Field(c.key_field.name), c.key))  # type: ignore[union-attr]
              for c in wanted if c.key is not None]
    by_id = [(table_id, formulas.EQ(formulas.RECORD_ID(), record_id))
             for table_id, record_ids in elsewhere.items() for record_id in sorted(record_ids)]
    for table_id, term in by_key + by_id:
        terms[table_id].setdefault(str(term), term)
    per_table = {table_id: list(found.values()) for table_id, found in terms.items()}
    return {table_id: [str(formulas.OR(*found[start:start + LOOKUP_TERMS_PER_QUERY]))
                       for start in range(0, len(found), LOOKUP_TERMS_PER_QUERY)]
            for table_id, found in per_table.items()}


@dataclass(frozen=True)
class Pending:
    """A link to an archived record this run re-creates: its new id, once written."""

    archived_id: str


@dataclass(eq=False)  # one write is one key of the apply step's results
class RestoreWrite:
    """What becomes of one archived record."""

    cells: ArchivedCells
    action: str  # restore | refill | skip | error
    record_id: str | None = None  # the record refilled; for a restore, the record made, once written
    fields: dict[str, Any] = field(default_factory=dict)  # field id -> value to send (links hold ids and Pending)
    links_later: dict[str, list] = field(default_factory=dict)  # field id -> link cell, sent once its records exist
    slot: tuple[int, int, int] = (0, 0, 0)  # (table, group, batch): the order the writes are sent in
    note: str = ""  # why skipped, or why it failed
    left_out_links: list[dict] = field(default_factory=list)  # [{"field": field id, "target": archived record id}]

    @property
    def key(self) -> str:
        return self.cells.record.table

    @property
    def name(self) -> str:
        """For the log: the Mongo id, else the archived record id (never a natural key: an email)."""
        return self.cells.mongo_id or f"(archived record {self.cells.record.record_id})"


@dataclass
class RestorePlan:
    writes: dict[str, list[RestoreWrite]]  # table key -> one write per archived record, in archive order
    created_by: dict[str, RestoreWrite] = field(default_factory=dict)  # archived id -> the restore re-creating it


def restore_groups(writes: Sequence[RestoreWrite]) -> tuple[list[RestoreWrite], ...]:
    """A table's writes as sent: re-creations upserted on `id`, plain ones (never in an upsert's request), refills."""
    return ([w for w in writes if w.action == "restore" and w.cells.mongo_id is not None],
            [w for w in writes if w.action == "restore" and w.cells.mongo_id is None],
            [w for w in writes if w.action == "refill"])


def holders_by_key(archive: Mapping[str, ArchivedCells], found: Mapping[str, Sequence[dict]]) -> dict[str, dict]:
    """Archived record id -> the record holding its key in Airtable now (the first listed, as the sync matches)."""
    index: dict[tuple[str, str, str], dict] = {}  # (table id, field id, value) -> the first record with it
    for table_id, records in found.items():
        for rec in records:
            for field_id, value in rec["fields"].items():
                if value not in (None, ""):
                    index.setdefault((table_id, field_id, str(value)), rec)
    return {archived_id: index[where] for archived_id, cells in archive.items()
            if cells.key_field is not None and (where := (cells.table_id, cells.key_field.id, cells.key)) in index}


def decide(cells: ArchivedCells, tables: Mapping[str, LiveTable], holders: Mapping[str, dict],
           first: RestoreWrite | None) -> RestoreWrite:
    """Restore, refill, skip or fail: one archived record, its links not yet mapped."""
    if cells.key is None:
        return RestoreWrite(cells, "error", note=f"no id and no {TABLE_SPECS[cells.record.table].airtable_key}: "
                            "a restore could not tell whether it made the record already; restore it by hand")
    if first is not None:
        return RestoreWrite(cells, "skip", record_id=first.record_id,
                            note=f"the same {cells.key_field.name} as archived record "  # type: ignore[union-attr]
                            f"{first.cells.record.record_id}, restored in its place")
    fields = tables[cells.record.table].fields
    filled = {field_id: value for field_id, value in cells.cells.items() if not is_blank(value, fields[field_id].type)}
    holder = holders.get(cells.record.record_id)
    if holder is None:
        return RestoreWrite(cells, "restore", fields=filled)
    refill = {field_id: value for field_id, value in filled.items()
              if field_id not in cells.mapped and is_blank(holder["fields"].get(field_id), fields[field_id].type)}
    return RestoreWrite(cells, "refill" if refill else "skip", record_id=holder["id"], fields=refill,
                        note="" if refill else "already complete")


def map_links(write: RestoreWrite, tables: Mapping[str, LiveTable], exists: Mapping[str, set[str]],
              holders: Mapping[str, dict], created_by: Mapping[str, RestoreWrite]) -> None:
    """The link cells to send, mapped as described above (to a record this run re-creates: Pending)."""
    for field_id, value in list(write.fields.items()):
        live = tables[write.key].fields[field_id]
        if live.type != "multipleRecordLinks":
            continue
        targets: list[str | Pending] = []
        for old in value if isinstance(value, list) else [value]:
            if isinstance(old, str) and old in exists.get(live.links_to, ()):
                targets.append(old)
            elif isinstance(old, str) and old in holders:
                targets.append(holders[old]["id"])
            elif isinstance(old, str) and old in created_by:
                targets.append(Pending(created_by[old].cells.record.record_id))
            else:
                write.left_out_links.append({"field": field_id, "target": old})
        if targets:
            write.fields[field_id] = list(dict.fromkeys(targets))  # two old links may lead to one record
        else:
            del write.fields[field_id]


def defer_links(write: RestoreWrite, tables: Mapping[str, LiveTable], created_by: Mapping[str, RestoreWrite]) -> None:
    """A link to a record re-created in the same request or a later one cannot go with this write: if that record's
    write links back by the inverse field, Airtable fills this side; else the whole cell goes once all are written."""
    ref = Pending(write.cells.record.record_id) if write.action == "restore" else write.record_id  # as links name it
    for field_id, value in list(write.fields.items()):
        later = [t for t in value if isinstance(t, Pending) and created_by[t.archived_id].slot >= write.slot] \
            if isinstance(value, list) else []
        if not later:
            continue
        inverse = tables[write.key].fields[field_id].inverse
        if any(not (inverse and created_by[t.archived_id].slot > write.slot
                    and ref in created_by[t.archived_id].fields.get(inverse, ())) for t in later):
            write.links_later[field_id] = value
        now = [t for t in value if t not in later]
        if now:
            write.fields[field_id] = now
        else:
            del write.fields[field_id]


def plan_restore(archive: Mapping[str, ArchivedCells], restored: Sequence[str], tables: Mapping[str, LiveTable],
                 found: Mapping[str, Sequence[dict]]) -> RestorePlan:
    """What to re-create, what to refill, and every link cell mapped: pure, no I/O."""
    holders = holders_by_key(archive, found)
    plan = RestorePlan({key: [] for key in TABLE_ORDER if key in restored})
    first_with: dict[tuple, RestoreWrite] = {}  # (table, key field, key) -> the first record archived with it
    for key, writes in plan.writes.items():
        for cells in (c for c in archive.values() if c.record.table == key):
            same_key = (cells.table_id, cells.key_field.id if cells.key_field else "", cells.key)
            writes.append(write := decide(cells, tables, holders, first_with.get(same_key)))
            first = first_with.setdefault(same_key, write)  # this record, or the one restored in its place
            if first.action == "restore":
                plan.created_by[cells.record.record_id] = first  # a duplicate's links follow the one restored
    exists = {table_id: {rec["id"] for rec in records} for table_id, records in found.items()}
    for key, writes in plan.writes.items():
        for write in writes:
            map_links(write, tables, exists, holders, plan.created_by)
            if write.action == "refill" and not write.fields:
                write.action, write.note = "skip", "already complete (its links name no record that exists)"
        for group_index, group in enumerate(restore_groups(writes)):
            for position, write in enumerate(group):
                write.slot = (TABLE_ORDER.index(key), group_index, position // RECORDS_PER_WRITE)
    for write in itertools.chain.from_iterable(plan.writes.values()):
        defer_links(write, tables, plan.created_by)
    return plan


class RestoreWriter(BatchWriter):
    """Sends a restore plan (restore_groups' order, then the links defer_links held back), or put-backs as refills."""

    VERB = "restoring"
    SETTLES = "a second restore settles it"
    VERBS = {"upsert": "restore", "create": "restore", "update": "refill"}

    def __init__(self, airtable: Airtable, stop: threading.Event, results: dict[Any, Written],
                 plan: RestorePlan | None = None):
        super().__init__(airtable, stop, results)
        self.plan = plan

    def key_of(self, write: Any) -> str:
        return write.key

    def name_of(self, write: Any) -> str:
        return write.name

    def apply(self) -> None:
        for key, writes in self.plan.writes.items():
            for action, group in zip(("upsert", "create", "update"), restore_groups(writes)):
                for write in group:
                    if action == "update" and not write.fields:  # links only: sent last, or Airtable fills them
                        self.record(write, outcome=Outcome.DONE)
                group = [w for w in group if self.result(w).outcome is Outcome.PLANNED]
                self.send_all(f"{key}: {self.VERBS[action]}", action, group, lambda w: self.cells(w, w.fields))
        for key, writes in self.plan.writes.items():
            waiting = [w for w in writes if w.links_later and self.result(w).outcome is Outcome.DONE]
            self.send_all(f"{key}: links", "update", waiting, lambda w: self.cells(w, w.links_later))

    def cells(self, write: RestoreWrite, cells: dict) -> dict:
        """The cells to send, with links to records re-created earlier in this run filled in."""
        fields = {}
        for field_id, value in cells.items():
            if isinstance(value, list) and any(isinstance(t, Pending) for t in value):
                made = [t if isinstance(t, str) else self.result(self.plan.created_by[t.archived_id]).record_id
                        for t in value]
                lost = [{"field": field_id, "target": t.archived_id} for t, new in zip(value, made) if new is None]
                if lost:  # their re-creation failed
                    self.record(write, links_left_out=(*self.result(write).links_left_out, *lost))
                value = [t for t in made if t is not None]
            fields[field_id] = value
        return fields

    def unknown_create(self, batch: list[tuple[Any, dict]], cause: str) -> str:
        key_name = batch[0][0].cells.key_field.name
        return f"outcome unknown; a second restore finds the record by its {key_name} if it was made"

    def send(self, action: str, batch: list[tuple[Any, dict]]) -> tuple[list[dict], set[str] | None]:
        table = self.airtable.table(batch[0][0].key)
        # Field ids as keys, and in fieldsToMergeOn: the API takes an id wherever it takes a name
        # (airtable.com/developers/web/api/update-multiple-records), and a field renamed since the
        # read still gets its cells.
        if action == "upsert":
            merge_on = batch[0][0].cells.key_field.id  # type: ignore[union-attr]
            return table.batch_upsert([{"fields": f} for _, f in batch], key_fields=[merge_on], typecast=True,
                                      use_field_ids=True)["records"], None
        if action == "create":
            return table.batch_create([f for _, f in batch], typecast=True, use_field_ids=True), None
        return table.batch_update([{"id": self.result(w).record_id or w.record_id, "fields": f} for w, f in batch],
                                  typecast=True, use_field_ids=True), None


@dataclass
class RestoreResult:
    """One table's figures in a restore report."""

    archived: int = 0
    restored: int = 0
    refilled: int = 0
    skipped: int = 0  # already complete, or the same key as a record before it
    errors: int = 0
    not_attempted: int = 0
    links_left_out: int = 0
    left_out_links: list[dict] = field(default_factory=list)  # [{archived_id, mongo_id, field, target}]
    fields_left_out: list[str] = field(default_factory=list)  # archived names: no writable field today
    restored_records: list[dict] = field(default_factory=list)  # [{archived_id, record_id, mongo_id}]
    refilled_records: list[dict] = field(default_factory=list)  # [{record_id, mongo_id, fields}]


def summarize_restore(writes: Sequence[RestoreWrite], results: Mapping[RestoreWrite, Written], table: LiveTable,
                      dry_run: bool) -> RestoreResult:
    written = {w: results.get(w, PLANNED) for w in writes}
    happened = Outcome.PLANNED if dry_run else Outcome.DONE
    restored = [w for w in writes if w.action == "restore" and written[w].outcome is happened]
    refilled = [w for w in writes if w.action == "refill" and written[w].outcome is happened]
    left_out = [(w, link) for w in writes for link in [*w.left_out_links, *written[w].links_left_out]]
    return RestoreResult(
        archived=len(writes),
        restored=len(restored),
        refilled=len(refilled),
        skipped=sum(1 for w in writes if w.action == "skip"),
        errors=sum(1 for w in writes if w.action == "error" or written[w].outcome.failed),
        not_attempted=sum(1 for w in writes if written[w].outcome is Outcome.NOT_ATTEMPTED),
        links_left_out=len(left_out),
        left_out_links=[{"archived_id": w.cells.record.record_id, "mongo_id": w.cells.mongo_id,
                         "field": table.fields[link["field"]].name, "target": link["target"]} for w, link in left_out],
        fields_left_out=sorted({name for w in writes for name in w.cells.left_out}),
        restored_records=[{"archived_id": w.cells.record.record_id, "record_id": written[w].record_id,
                           "mongo_id": w.cells.mongo_id} for w in restored],
        refilled_records=[{"record_id": w.record_id, "mongo_id": w.cells.mongo_id,
                           "fields": sorted(table.fields[f].name for f in {**w.fields, **w.links_later})}
                          for w in refilled],
    )


@dataclass
class RestoreReport(RunReport):
    archive: str = ""
    tables: dict[str, RestoreResult] = field(default_factory=dict)  # type: ignore[assignment]

    def as_dict(self) -> dict:
        """The run report's fields, the archive first and its kind's note last; a restore reads no change feed."""
        data = {"restore": self.archive, "archive_kind": self.KIND, **super().as_dict()}
        del data["change_tracking"]
        return {**data, "note": self.NOTE} if self.NOTE else data

    NAME = "restore_report"
    KIND: ClassVar[str] = "deletion"
    RESULT: ClassVar[type] = RestoreResult  # a table's figures
    NOTE: ClassVar[str] = ""  # what a reader must know first, atop the Markdown and in the JSON
    NOTHING = "no table restored"
    TITLE = "restore"
    COLUMNS = ("archived", "restored", "refilled", "skipped", "errors", "links_left_out", "fields_left_out")
    ERROR_COLUMNS = ("table", "mongo_id", "archived_id", "message")
    SUMMARY = (("restored", "restored", True), ("refilled", "refilled", True), ("skipped", "skipped", True),
               ("errors", "failed", True), ("links_left_out", "links left out", False),
               ("fields_left_out", "fields left out", False))
    # What was left alone, in the attention line: (figure, its word, its plural).
    LEFT_ALONE: ClassVar[tuple[tuple[str, str, str], ...]] = (("links_left_out", "link left out", "links left out"),)

    def how_read(self) -> str:
        return "restore"

    def attention_items(self) -> list[str]:
        items = [item for name, one, many in self.LEFT_ALONE for item in counted(*self.totals(name), one, many)]
        return items + [f"{key}.{name} not restored" for key, t in self.tables.items() for name in t.fields_left_out]

    def of_what(self) -> str:
        return f" of `{self.archive}`"

    def headline(self) -> str:
        restored, refilled, skipped, errors, links = self.totals("restored", "refilled", "skipped", "errors",
                                                                  "links_left_out")
        would = "would be " if self.dry_run else ""
        return (f"{restored} {would}restored, {refilled} {would}refilled, {skipped} skipped (already complete), "
                f"{errors} failed, {links} links left out")

    def preface(self) -> list[str]:
        return [f"> {self.NOTE}", ""] if self.NOTE else []

    def table_notes(self, result: Any) -> list[str]:
        would, first = " (would be)" if self.dry_run else "", MARKDOWN_RECORD_REFS
        restored = ", ".join(f"{r['archived_id']} -> {r['record_id'] or '(new)'} ({r['mongo_id'] or 'no id'})"
                             for r in result.restored_records[:first])
        links = ", ".join(f"{r['archived_id']} {r['field']} -> {r['target']}" for r in result.left_out_links[:first])
        notes = [note for shown, note in (
            (result.restored_records, f"Restored{would}: {len(result.restored_records)}: {restored}"),
            (result.refilled_records, f"Refilled{would}: {len(result.refilled_records)}: "
             + record_refs(result.refilled_records, lambda r: f": {', '.join(r['fields'])}")),
            (result.fields_left_out, "Fields left out (gone from Airtable, or of a type the tool does not write): "
             + ", ".join(result.fields_left_out)),
            (result.links_left_out, f"{result.links_left_out} links left out, to records that are gone: {links}"),
            (result.not_attempted, f"{result.not_attempted} records not attempted")) if shown]
        return notes + ["All records in the JSON report."] if notes else []

    def after_tables(self) -> list[str]:
        return []


# A changes archive (ChangesArchive) is put back cell by cell: a cell still holding what the run
# wrote gets its earlier value back; one holding that already (a second restore) is left, as is
# one changed since (a person's edit, a later sync), counted. Nothing else is touched.


@dataclass(eq=False)  # one put-back is one key of the writer's results
class PutBack:
    """What becomes of one changes-archive line."""

    changed: ChangedRecord
    fields: dict[str, Any] = field(default_factory=dict)  # field id -> the earlier value, to send
    already_back: list[str] = field(default_factory=list)  # mapped names holding their earlier value already
    changed_since: list[str] = field(default_factory=list)  # mapped names: changed since the run, left alone
    left_out: list[str] = field(default_factory=list)  # mapped names with no writable field today
    gone: bool = False  # deleted since the run: left alone
    action: ClassVar[str] = "put back"  # never "restore" (Restore.anything_written)

    @property
    def key(self) -> str:
        return self.changed.table

    @property
    def record_id(self) -> str:
        return self.changed.record_id

    @property
    def name(self) -> str:
        return self.changed.mongo_id or f"(record {self.record_id})"


def plan_put_back(changed: Sequence[ChangedRecord], tables: Mapping[str, LiveTable],
                  found: Mapping[str, Sequence[dict]]) -> list[PutBack]:
    """Each archived cell against Airtable now (`found`, by field id), compared as change detection compares: pure."""
    now = {rec["id"]: rec for records in found.values() for rec in records}
    plan = []
    for line in changed:
        table, current = tables[line.table], now.get(line.record_id)
        write = PutBack(line, gone=current is None)
        for name, after in line.after.items() if current is not None else ():
            live = table.mapped_field(line, name)  # type: ignore[arg-type]
            if live is None or live.type not in WRITABLE_TYPES:
                write.left_out.append(name)
            elif values_equal(after, cell := current["fields"].get(live.id), live.type):  # type: ignore[index]
                write.fields[live.id] = line.before[name]
            elif values_equal(line.before[name], cell, live.type):
                write.already_back.append(name)
            else:
                write.changed_since.append(name)
        plan.append(write)
    return plan


@dataclass
class PutBackResult:
    """One table's figures in the restore of a changes archive."""

    archived: int = 0  # the table's records in the archive
    put_back: int = 0  # records with cells put back (would be, in a dry run)
    cells_put_back: int = 0
    already_back: int = 0  # cells holding their earlier value already
    changed_since: int = 0  # cells changed since the run: left alone
    gone: int = 0  # records deleted since the run: left alone
    errors: int = 0
    not_attempted: int = 0
    fields_left_out: list[str] = field(default_factory=list)  # mapped names with no writable field today
    put_back_records: list[dict] = field(default_factory=list)  # [{record_id, mongo_id, fields}]
    changed_since_cells: list[dict] = field(default_factory=list)  # [{record_id, mongo_id, field}]
    gone_records: list[dict] = field(default_factory=list)  # [{record_id, mongo_id}]


def summarize_put_back(writes: Sequence[PutBack], results: Mapping[PutBack, Written], dry_run: bool) -> PutBackResult:
    outcome = {w: results.get(w, PLANNED).outcome for w in writes}
    done = [w for w in writes if w.fields and outcome[w] is (Outcome.PLANNED if dry_run else Outcome.DONE)]
    return PutBackResult(
        archived=len(writes),
        put_back=len(done),
        cells_put_back=sum(len(w.fields) for w in done),
        already_back=sum(len(w.already_back) for w in writes),
        changed_since=sum(len(w.changed_since) for w in writes),
        gone=sum(1 for w in writes if w.gone),
        errors=sum(1 for w in writes if outcome[w].failed),
        not_attempted=sum(1 for w in writes if outcome[w] is Outcome.NOT_ATTEMPTED),
        fields_left_out=sorted({name for w in writes for name in w.left_out}),
        put_back_records=[{"record_id": w.record_id, "mongo_id": w.changed.mongo_id,
                           "fields": sorted(set(w.changed.after) - {*w.changed_since, *w.left_out, *w.already_back})}
                          for w in done],
        changed_since_cells=[{"record_id": w.record_id, "mongo_id": w.changed.mongo_id, "field": name}
                             for w in writes for name in w.changed_since],
        gone_records=[{"record_id": w.record_id, "mongo_id": w.changed.mongo_id} for w in writes if w.gone],
    )


@dataclass
class PutBackReport(RestoreReport):
    """The restore of a changes archive."""

    tables: dict[str, PutBackResult] = field(default_factory=dict)  # type: ignore[assignment]

    KIND = "changes"
    RESULT = PutBackResult
    NOTE = ("The next sync writes Mongo's values again unless the export has changed: fix the source first, or keep "
            "the export as it is only for values Mongo lost.")
    COLUMNS = ("archived", "put_back", "cells_put_back", "already_back", "changed_since", "gone", "errors",
               "fields_left_out")
    SUMMARY = (("put_back", "records put back", True), ("cells_put_back", "cells", True),
               ("already_back", "cells already back", True), ("changed_since", "changed since", True),
               ("gone", "records gone", True), ("errors", "failed", True))
    LEFT_ALONE = (("changed_since", "cell changed since, left alone", "cells changed since, left alone"),
                  ("gone", "record gone since", "records gone since"))

    def summary(self) -> str:
        return super().summary() + "; the next sync writes Mongo's values again unless the export has changed"

    def of_what(self) -> str:
        return f" of the changes archive `{self.archive}`"

    def headline(self) -> str:
        records, cells, changed, gone, errors = self.totals("put_back", "cells_put_back", "changed_since", "gone",
                                                            "errors")
        return (f"{records} records {'would be ' if self.dry_run else ''}put back ({cells} cells), {changed} cells "
                f"changed since and {gone} records gone (left alone), {errors} failed")

    def table_notes(self, result: Any) -> list[str]:
        notes = [f"{label}: " + record_refs(refs, lambda r: f": {r['field']}" if "field" in r else "")
                 for label, refs in (("Cells changed since the run, left alone", result.changed_since_cells),
                                     ("Records gone since the run", result.gone_records)) if refs]
        return notes + ["All of them in the JSON report."] if notes else []


@dataclass
class Restore(Command):
    """One --restore run; it finds records by the sync's bindings (its mapped fields and `id`, renamed or not)."""

    results: dict[Any, Written] = field(default_factory=dict)

    def run(self) -> int:
        path: Path = self.settings.restore  # type: ignore[assignment]
        try:
            records = parse_archive(path, path.read_bytes())
        except OSError as exc:
            raise UsageError(f"{path}: cannot read the archive ({exc.strerror})") from None
        chosen = [r for r in records if r.table in self.settings.tables]
        log.info("restore: %d archived records in %s, %d of them in %s", len(records), path.name, len(chosen),
                 ",".join(self.settings.tables))
        self.report.tables = {key: self.report.RESULT() for key in self.settings.tables}
        if chosen:
            airtable = connect(self.settings, self.stop, self.report.requests)
            bound, table_ids = state_bindings(self.settings, load_state(state_path(self.settings)))
            airtable.use_tables(table_ids)
            self.restore(airtable, live_tables(airtable, bound), records, chosen)
        return EXIT_RECORD_FAILED if self.report.errors else EXIT_OK

    def restore(self, airtable: Airtable, tables: dict[str, LiveTable], records: list, chosen: list) -> None:
        """The lines of the tables restored planned, written (not in a dry run), and summed up however that ends."""
        settings = self.settings
        archive = {rec.record_id: archived_cells(rec, tables[rec.table])
                   for rec in records if rec.table in tables}  # a record archived twice: its last line
        found = self.look_up(airtable, lookup_formulas(*what_to_look_up(archive, settings.tables, tables)))
        plan = plan_restore(archive, settings.tables, tables, found)
        for key, writes in plan.writes.items():
            count = Counter(w.action for w in writes)
            log.info("%s: restore plan: %d to re-create, %d to refill, %d complete already, %d failing", key,
                     count["restore"], count["refill"], count["skip"], count["error"])
        try:
            if not settings.dry_run:
                RestoreWriter(airtable, self.stop, self.results, plan).apply()
        except (AirtableAccessError, RunInterrupted) as exc:
            not_attempted((w for writes in plan.writes.values() for w in writes if w.action in ("restore", "refill")),
                          self.results, f"not restored: {stop_reason(exc)}")
            raise
        finally:
            for key, writes in plan.writes.items():
                self.report.tables[key] = summarize_restore(writes, self.results, tables[key], settings.dry_run)
                self.report.errors += [
                    {"table": key, "mongo_id": w.cells.mongo_id, "archived_id": w.cells.record.record_id,
                     "message": w.note or self.results[w].note}
                    for w in writes if w.action == "error" or w in self.results and self.results[w].outcome.failed]

    def look_up(self, airtable: Airtable, formulas: Mapping[str, Sequence[str]]) -> dict[str, list[dict]]:
        """The records the formulas match, per table id, cells keyed by field id, in listing order, each once."""
        found: dict[str, dict[str, dict]] = defaultdict(dict)  # table id -> record id -> record
        for table_id, queries in formulas.items():
            table = airtable.api.table(self.settings.base_id, table_id)
            for formula in queries:  # the transport checks for a stop before each request
                try:
                    for rec in table.all(formula=formula, use_field_ids=True):
                        found[table_id].setdefault(rec["id"], rec)
                except AIRTABLE_FAILURES as exc:
                    raise access_error(exc, self.settings, f"looking up the archive's records in {table_id}") from None
        return {table_id: list(records.values()) for table_id, records in found.items()}

    @property
    def anything_written(self) -> bool:
        # A re-creation whose links, sent last, failed has its new id: it was written.
        return any(r.outcome in (Outcome.DONE, Outcome.UNKNOWN) or r.record_id and w.action == "restore"
                   for w, r in self.results.items())


@dataclass
class PutBackCommand(Restore):
    """--restore of a changes archive: only the archive's records are read, by id, a hundred a request."""

    def restore(self, airtable: Airtable, tables: dict[str, LiveTable], records: list, chosen: list) -> None:
        settings = self.settings
        wanted = {tables[key].id: {line.record_id for line in chosen if line.table == key}
                  for key in dict.fromkeys(line.table for line in chosen)}
        writes = plan_put_back(chosen, tables, self.look_up(airtable, lookup_formulas((), wanted)))
        try:
            if not settings.dry_run:
                writer = RestoreWriter(airtable, self.stop, self.results)  # type: ignore[arg-type]
                for key in TABLE_ORDER:
                    writer.send_all(f"{key}: put back", "update", [w for w in writes if w.key == key and w.fields],
                                    lambda w: w.fields)
        except (AirtableAccessError, RunInterrupted) as exc:
            not_attempted((w for w in writes if w.fields), self.results, f"not put back: {stop_reason(exc)}")
            raise
        finally:
            for key in settings.tables:
                result = self.report.tables[key] = summarize_put_back(  # type: ignore[assignment]
                    [w for w in writes if w.key == key], self.results, settings.dry_run)  # type: ignore[arg-type]
                log.info("%s: %d records %sput back (%d cells), %d cells already back, %d changed since and %d "
                         "records gone (left alone)", key, result.put_back, "would be " if settings.dry_run else "",
                         result.cells_put_back, result.already_back, result.changed_since, result.gone)
            self.report.errors += [{"table": w.key, "mongo_id": w.changed.mongo_id, "archived_id": w.record_id,
                                    "message": self.results[w].note} for w in writes
                                   if w in self.results and self.results[w].outcome.failed]


def archive_kind(path: Path) -> str:
    """"changes" if the first line is a changes archive's, else "deletion" (its restore reports an unreadable file)."""
    with contextlib.suppress(OSError, ValueError), open(path, "rb") as handle:
        if is_changes_line(json.loads(next((line for line in handle if line.strip()), b""))):
            return "changes"
    return "deletion"


# ---------------------------------------------------------------------------
# The run: logging, the lock, the sync and the check, one runner, main
# ---------------------------------------------------------------------------


@dataclass(eq=False)  # two filters with one secret are still two (addFilter skips an equal one)
class RedactToken:  # a logging filter: the logging docs let any object with a filter method be one
    """Defence in depth: the token never reaches a log line, whatever a library puts in a message."""

    secret: str

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secret:
            message = record.getMessage()
            if self.secret in message:
                record.msg, record.args = message.replace(self.secret, "[token]"), None
            if record.exc_info:  # a traceback: formatted here (or as another handler cached it), masked
                text = record.exc_text or logging.Formatter().formatException(record.exc_info)
                record.exc_text = text.replace(self.secret, "[token]")
        return True


# Lines for the log file only: the console gets them from main()'s last print instead.
LOG_FILE_ONLY = {"log_file_only": True}

LOG_NAME = "airtable_sync.log"  # in the reports dir


class LogFile(logging.Handler):
    """The log file, a whole line a write (append_whole). Instead of a traceback on stderr for every line
    after one it cannot take (a full disk), it keeps the first failure (execute() exits 74) and writes no more."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = path
        self.fd: int | None = open_private(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        self.failure: LocalWriteError | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.failure is not None or self.fd is None:
            return
        try:
            append_whole(self.fd, (self.format(record) + "\n").encode("utf-8", errors="backslashreplace"))
        except OSError as exc:
            self.failure = LocalWriteError(self.path, exc)
        except Exception:  # a record that does not format, as logging.Handler.emit has it
            self.handleError(record)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        super().close()


@contextlib.contextmanager
def logging_to(verbose: bool, log_file: Path, secret: str = "") -> Iterator[list[logging.Handler]]:
    """Console and log-file handlers for the block; `secret` (and any added later with RedactToken) is
    masked. Raises LocalWriteError when the log file cannot be opened."""
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    console = logging.StreamHandler(sys.stderr)
    console.addFilter(lambda record: not getattr(record, "log_file_only", False))
    handlers: list[logging.Handler] = [console, LogFile(log_file)]
    root = logging.getLogger()
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(RedactToken(secret))
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    if not verbose:
        logging.getLogger("urllib3").setLevel(logging.WARNING)
    try:
        yield handlers
    finally:
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()


@contextlib.contextmanager
def run_lock(cache_dir: Path) -> Iterator[None]:
    """An exclusive OS lock: released by the kernel when the process dies, so a killed run never blocks."""
    try:
        fd = open_private(cache_dir / ".airtable_sync.lock", os.O_RDWR | os.O_CREAT)
    except LocalWriteError as exc:
        if exc.errno in LOCAL_WRITE_ERRNOS:  # a full disk or an unwritable folder
            raise
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

    def handler(signum, _frame):
        caught.setdefault("signal", signum)
        stop.set()

    main_thread = threading.current_thread() is threading.main_thread()  # the only one that may set them
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)} if main_thread else {}
    try:
        yield caught
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def local_write_failed(code: int, report: RunReport, exc: LocalWriteError) -> int:
    """A local file could not be written: exit 74, unless a bug (70) came first. The first such
    failure is the one line the operator sees; later ones (the same full disk) go to the debug log."""
    if code in (EXIT_IOERR, EXIT_CRASH):
        log.debug("also: %s", exc)
        return code
    log.error("%s", exc)
    report.ended, report.message = "local write failed", str(exc)
    return EXIT_IOERR


@dataclass
class Sync(Command):
    """One run of the pipeline, from loaded settings to the report."""

    plans: dict[str, TablePlan] = field(default_factory=dict)
    deletions: dict[str, DeletionPlan] = field(default_factory=dict)
    exports: dict[str, ExportIndex] = field(default_factory=dict)  # closed once planned
    memos: dict[str, PlanMemo] = field(default_factory=dict)
    applied: Applied = field(default_factory=Applied)

    def load_exports(self) -> dict[str, ExportIndex]:
        """Every export checked and indexed before any request; the plan reads its records again."""
        for key in self.settings.tables:
            path = self.settings.mongo_dir / TABLE_SPECS[key].export_file
            records = index_export(path, self.settings.limit, export_index_path(self.settings, key))
            if records is None:
                log.warning("%s not found: table %s is not synced", path, key)
                self.report.tables[key] = TableResult(note=f"{path.name} not found: not synced")
            else:
                self.exports[key] = records
                log.info("%s: %d records in %s", key, len(records), path.name)
        return self.exports

    def plan(self, exports: dict[str, ExportIndex], read: BaseRead, airtable: Airtable) -> dict[str, TablePlan]:
        plans: dict[str, TablePlan] = {}
        # Whole days (UTC dates) since the last run: what a day counter rose by.
        elapsed = None if read.previous is None else (
            datetime.now(timezone.utc).date() - read.previous.last_run.astimezone(timezone.utc).date()).days
        for key in (k for k in TABLE_ORDER if k in exports):
            spec, columns = TABLE_SPECS[key], read.columns[key]
            link_index = {link.target: build_link_index(read.records.get(link.target, ()), plans.get(link.target),
                                                        read.columns[link.target].id_key)
                          for link in spec.links}
            while True:  # at most twice: read_again takes the table off read.from_cache
                self.memos[key] = memo = PlanMemo.load(memo_path(self.settings, key))
                plan = plan_table(spec, exports[key], read.records[key], columns, link_index, memo, elapsed)
                if key not in read.from_cache or not any(w.matched_by == "key" for w in plan.writes):
                    break
                # A natural-key match claims a record for good: a stale cache could hand it to the
                # wrong Mongo record, so those are only ever made against a fresh read.
                log.info("%s: natural-key matches are not made against a cache: reading the table", key)
                read.read_again(key, pull_table(airtable, key, self.stop, columns.by_field_id))
            plans[key] = plan
            if not self.settings.force_clear:
                cap_clears(plan, read.records[key], self.settings.max_clear_fraction)
            if plan.absent_in_export:
                log.warning("%s: mapped Mongo fields that no exported record carries (renamed or dropped by the "
                            "exporter?): %s; Airtable keeps their values", key, ", ".join(plan.absent_in_export))
            log.info("%s: plan: %d to create, %d to update, %d unchanged, %d failing, %d orphans", key,
                     *(plan.planned[k] for k in ("create", "update", "skip", "error")), len(plan.orphans))
        exported_ids = {key: {i for i in records.mongo_ids if i is not None} for key, records in exports.items()
                        } if self.settings.delete_missing else {}
        self.deletions = plan_deletions(plans, exported_ids, self.settings)
        for export in exports.values():
            export.close()  # planned: the writes keep what they need of their records
        for deletion in self.deletions.values():
            log.info("%s: plan: %d to delete%s", deletion.key, len(deletion.records),
                     " (held back by the safety cap)" if deletion.held else "")
        return plans

    def apply(self, airtable: Airtable, read: BaseRead) -> None:
        changes = ChangesArchive(self.settings.reports_dir, self.report.started)
        for key, plan in self.plans.items():
            SyncWriter(airtable, self.stop, plan, self.applied, read.records[key], changes).apply()
        archive = self.settings.reports_dir / f"deleted_{self.report.started:%Y%m%d_%H%M%S}.jsonl"
        deleter = Deleter(airtable, archive, self.stop, read.schema, self.applied)
        for deletion in self.deletions.values():
            if not deletion.held:
                deleter.apply(deletion)

    def run(self) -> int:
        settings = self.settings
        exports = self.load_exports()
        if not exports:
            log.warning("no export found in %s: nothing to sync", settings.mongo_dir)
        airtable = connect(settings, self.stop, self.report.requests)
        # Messages link to Users and Events: those are read even when not synced.
        needed = [k for k in TABLE_ORDER if k in exports or any(
            link.target == k for e in exports for link in TABLE_SPECS[e].links)]
        read = BaseReader(airtable, self.stop, datetime.now(timezone.utc)).read(needed)
        self.report.change_tracking = read.as_report()
        plans = self.plans = self.plan(exports, read, airtable)
        crashed = False
        try:
            if not settings.dry_run:
                prune_archives(settings.reports_dir, settings.archive_days, self.report.started)
                self.apply(airtable, read)
        except (AirtableAccessError, RunInterrupted, LocalWriteError) as exc:
            not_attempted((w for plan in plans.values() for w in plan.writes if w.action in ("create", "update")),
                          self.applied.results, f"not synced: {stop_reason(exc)}")
            raise
        except BaseException:
            crashed = True
            raise
        finally:
            self.summarize(read)
            # A dry run leaves the snapshot and the state as they were, and so does a bug. An
            # interrupted or refused run saves them: its cursor precedes all its writes, and what
            # it wrote (or may have) comes back in the feed, so the next run settles it.
            if not settings.dry_run and not crashed:
                self.save(read)
            for snapshot in read.records.values():
                snapshot.close()  # its temporary file goes with it
        held = [d for d in self.deletions.values() if d.held]
        for deletion in held:
            log.error("%s: %d records left Mongo, over the safety cap of %d (AIRTABLE_MAX_DELETE_FRACTION=%g of "
                      "%d records with an id): none deleted. Look first with --dry-run; if they should go, "
                      "rerun with --delete-missing --force-delete", deletion.key, len(deletion.records),
                      deletion.limit, settings.max_delete_fraction, deletion.with_id)
        clears_held = [(key, cap) for key, plan in plans.items() for cap in plan.clears_held]
        for key, cap in clears_held:
            log.warning("%s: %d clears of %s %s, over the safety cap of %d (AIRTABLE_MAX_CLEAR_FRACTION=%g of %d "
                        "records holding a value there): none written, the records' other changes are. If the "
                        "export is right, rerun with --force-clear", key, cap.count, cap.name,
                        "would be held" if settings.dry_run else "held", cap.limit, settings.max_clear_fraction,
                        cap.holding)
        return EXIT_RECORD_FAILED if self.report.errors or held or clears_held else EXIT_OK

    def summarize(self, read: BaseRead) -> None:
        applied, report = self.applied, self.report
        for key, plan in self.plans.items():
            edited = None if read.edited is None else read.edited.get(key, {})
            report.tables[key] = summarize(plan, applied, self.settings.dry_run, self.deletions.get(key), edited)
            report.errors += [{"table": key, "mongo_id": w.record.mongo_id, "message": w.error or applied.of(w).note}
                              for w in plan.writes if applied.failed(w)]
        note_volatile_fields(report.tables, self.plans, read)
        for deletion in self.deletions.values():
            outcomes = applied.deleted.get(deletion.key, {})
            for rec in deletion.records:
                if (outcome := outcomes.get(rec["id"])) in (Outcome.FAILED, Outcome.UNKNOWN):
                    settles = "; the next run settles it" if outcome is Outcome.UNKNOWN else ""
                    mongo_id = record_ref(rec, deletion.id_key)["mongo_id"]
                    report.errors.append({"table": deletion.key, "mongo_id": mongo_id,
                                          "message": f"delete {outcome}{settles}"})

    def save(self, read: BaseRead) -> None:
        """The snapshot as this run left Airtable, the state, the memos and the export indexes."""
        settings, changed = self.settings, set(self.applied.written)
        for key, outcomes in self.applied.deleted.items():
            for rec_id, outcome in outcomes.items():
                if outcome is Outcome.DONE:
                    read.records[key].pop(rec_id)
                    changed.add(key)
        save_snapshot(settings, read, read.dirty | changed)
        for key, memo in self.memos.items():
            memo.save(memo_path(settings, key))
        for key, export in self.exports.items():
            if not export.reused:
                write_private(export_index_path(settings, key), export.saved(settings.limit))

    @property
    def anything_written(self) -> bool:
        return self.applied.anything_written


def column_status(name: str, columns: TableColumns) -> str:
    """--check: a mapped field as the schema has it."""
    column = columns.by_mapped.get(name)
    if column is None:
        return "missing in Airtable" + (" (its field was deleted)" if name in columns.gone else "")
    status = (f"computed ({column.type}): never written" if column.type in COMPUTED_TYPES
              else f"ok ({column.type})" if column.type in WRITABLE_TYPES
              else f"not written: unsupported type ({column.type})")
    if column.name != name:
        status += f", renamed to '{column.name}' (still synced by its field id)"
    return status


def check_export(settings: Settings, spec: TableSpec) -> list[str]:
    """--check: the mapped Mongo fields no record of the export carries (a missing or unreadable one: none)."""
    with contextlib.suppress(UsageError):
        index = index_export(settings.mongo_dir / spec.export_file, None)
        if index is not None:
            index.close()
            return absent_in_export(spec, index.carried) if index.carried else []
    return []


def change_tracking_status(airtable: Airtable, schema: BaseSchema | None) -> str:
    """--check: can this token read the change feed? Listing the webhooks tells, and writes nothing."""
    if not airtable.settings.change_tracking:
        return "off (AIRTABLE_CHANGE_TRACKING=off): every run reads every record"
    if schema is None:
        return "unavailable: it needs the scope schema.bases:read; every run reads every record"
    reader = BaseReader(airtable, threading.Event(), datetime.now(timezone.utc))
    try:
        hooks = reader.list_webhooks()
    except FeedUnavailable as exc:
        return f"unavailable: {exc}; every run reads every record"
    state = load_state(state_path(airtable.settings))
    ours = next((h for h in hooks if state is not None and h.id == state.webhook_id), None)
    if ours is None:
        webhook = "no webhook yet (the next run creates it)"
    else:
        problem = webhook_problem(ours, reader.now)
        webhook = f"webhook {ours.id}" + (f" ({problem}: the next run reads in full and replaces it)"
                                          if problem else "")
    return (f"available: the token may manage webhooks (also needs Creator access to create one); "
            f"{webhook}; {len(hooks)} of {WEBHOOKS_PER_BASE} webhooks on the base")


class Check(Command):
    """--check: each table reachable, its mapped fields against the schema; prints as it goes, writes nothing."""

    def run(self) -> int:
        settings = self.settings
        airtable = connect(settings, self.stop, self.report.requests)
        bound, table_ids = state_bindings(settings, load_state(state_path(settings)))
        airtable.use_tables(table_ids)
        schema = fetch_schema(airtable)
        airtable.use_tables(schema)
        print(f"Airtable base {settings.base_id} at {settings.endpoint_url}")
        if schema is None:
            print("schema: not readable (the token lacks schema.bases:read); types would be inferred")
        for key in settings.tables:
            spec = TABLE_SPECS[key]
            try:
                airtable.table(key).first()
            except AIRTABLE_FAILURES as exc:
                raise access_error(exc, settings, f"reading table {key}") from None
            print(f"\n{key} ({settings.table_ids[key]}): reachable")
            if absent := check_export(settings, spec):
                print(f"  mapped Mongo fields no exported record carries: {', '.join(absent)}")
            if schema is None or key not in schema.fields:
                continue
            columns = bind_columns(spec, schema.fields[key], bound.get(key, {}))
            width = max(len(n) for n in spec.airtable_fields) + 2
            for name in spec.airtable_fields:
                print(f"  {name:<{width}}{column_status(name, columns)}")
        print(f"\nchange tracking: {change_tracking_status(airtable, schema)}")
        return EXIT_OK


def command_for(settings: Settings, stop: threading.Event, started: datetime) -> Command:
    if settings.check:
        return Check(settings, stop, CheckReport(dry_run=True, started=started))
    if settings.restore is not None:
        changes = archive_kind(settings.restore) == "changes"
        report = (PutBackReport if changes else RestoreReport)(dry_run=settings.dry_run, started=started,
                                                                 archive=str(settings.restore))
        return (PutBackCommand if changes else Restore)(settings, stop, report)
    return Sync(settings, stop, RunReport(dry_run=settings.dry_run, started=started))


def execute(settings: Settings, started: datetime) -> tuple[int, RunReport, Path | None]:
    """Any command, under the lock, its exceptions made exit codes, its requests counted, and its
    report written however it ends."""
    command = command_for(settings, threading.Event(), started)
    report = command.report
    clock = time.monotonic()
    code = EXIT_OK
    try:
        with run_lock(settings.cache_dir), interruptible(command.stop) as caught:
            try:
                with scratch_files(settings.cache_dir):
                    code = command.run()
                report.ended = ("ok" if code == EXIT_OK else "finished with failed records" if report.errors
                                else "finished with changes held by a safety cap")
            except UsageError as exc:
                code, report.ended, report.message = EXIT_USAGE, "input error", str(exc)
                log.error("%s", exc)
            except LocalWriteError as exc:
                # Saving the snapshot as a run stopped for Airtable (a spent month, an outage): log that too.
                context = exc.__context__
                while context is not None and not isinstance(context, AirtableAccessError):
                    context = context.__context__
                if context is not None:
                    log.error("%s", context)
                code = local_write_failed(code, report, exc)
            except AirtableAccessError as exc:
                code = EXIT_RECORD_FAILED if command.anything_written else EXIT_AIRTABLE
                report.ended, report.message = "Airtable error", str(exc)
                log.error("%s", exc)
            except RunInterrupted:
                pass
            except Exception as exc:  # a bug: still one line, a report, and a code cron can tell apart
                code, report.ended = EXIT_CRASH, "crashed"
                first_line = next(iter(str(exc).splitlines()), "")  # pydantic's run to many lines
                report.message = f"internal error: {type(exc).__name__}: {first_line}"
                log.error("%s; the traceback is in %s", report.message, settings.reports_dir / LOG_NAME)
                if settings.verbose:  # the exception's own text may quote values: only with -v
                    log.error("traceback", exc_info=True)
                else:
                    log.error("Traceback (most recent call last; -v adds the values it quoted):\n%s%s",
                              "".join(traceback.format_tb(exc.__traceback__)), type(exc).__name__, extra=LOG_FILE_ONLY)
            finally:
                save_recent_requests(settings)
            try:  # beside the state, under the lock; --check and --dry-run count too
                count_requests(settings, report.requests)
            except LocalWriteError as exc:
                code = local_write_failed(code, report, exc)
            if signum := caught.get("signal"):
                code = EXIT_SIGTERM if signum == signal.SIGTERM else EXIT_SIGINT
                report.ended, report.message = "interrupted", f"interrupted by {signal.Signals(signum).name}"
                log.warning("%s: the request in flight finished; report marked interrupted", report.message)
    except LockHeld as exc:
        print(f"airtable_sync: {exc}; nothing done", file=sys.stderr)
        return EXIT_LOCKED, report, None
    except UsageError as exc:  # the cache folder cannot hold the lock
        code, report.ended, report.message = EXIT_USAGE, "settings error", str(exc)
        log.error("%s", exc)
    except LocalWriteError as exc:  # nor create the lock file: a full disk or an unwritable folder
        code = local_write_failed(code, report, exc)
    report.monthly_calls = settings.monthly_calls
    budget = budget_text(report.requests.last_30_days, settings.monthly_calls)
    if budget_high(report.requests.last_30_days, settings.monthly_calls):
        log.warning("API budget: %s by this tool alone; %s", budget, BUDGET_ADVICE)
    else:
        log.info("API budget: %s", budget)
    log.info("%s: %s; %s", report.ended, report.summary(), requests_line(report), extra=LOG_FILE_ONLY)
    if attention := attention_line(report):
        log.warning("%s", attention, extra=LOG_FILE_ONLY)
    for handler in logging.getLogger().handlers:  # a log line the log file could not take
        if isinstance(handler, LogFile) and handler.failure:
            code = local_write_failed(code, report, handler.failure)
    report.exit_code, report.duration_s = code, time.monotonic() - clock
    try:
        path: Path | None = write_report(report, settings.reports_dir, settings.api_key)
    except LocalWriteError as exc:
        code, path = local_write_failed(code, report, exc), None
    return code, report, path


def run_demo(verbose: bool) -> int:
    """Sync the sample exports into the local emulator: no account, no token, only a temp folder."""
    emulator_path = SCRIPT_DIR / "tests" / "airtable_emulator" / "__init__.py"  # a package
    fixtures = SCRIPT_DIR / "tests" / "fixtures"
    if not emulator_path.is_file() or not (fixtures / "base.json").is_file():
        print(f"airtable_sync: --demo needs {emulator_path} and {fixtures}/ from the repository", file=sys.stderr)
        return EXIT_USAGE
    sys.path.insert(0, str(emulator_path.parent.parent))  # the repository's tests/, as the tests import it
    import airtable_emulator
    workdir = Path(tempfile.mkdtemp(prefix="airtable-sync-demo-"))
    token = "demo-token-not-a-secret"
    with airtable_emulator.Emulator(fixtures / "base.json", token=token, rps=5) as emulator:
        env = {"AIRTABLE_API_KEY": token, "AIRTABLE_ENDPOINT_URL": emulator.url, "AIRTABLE_BASE_ID": emulator.base_id}
        args = build_arg_parser().parse_args(
            ["--mongo-dir", str(fixtures), "--cache-dir", str(workdir / "data"),
             "--reports-dir", str(workdir / "reports")] + (["-v"] if verbose else []))
        settings = settings_from(args, env)
        runs = []  # (exit code, report path) of each
        with logging_to(verbose, settings.reports_dir / LOG_NAME, token):
            print(f"Demo: syncing {fixtures} into a local Airtable emulator at {emulator.url}", flush=True)
            for title in ("\nFirst run", "Second run, the exports unchanged"):
                code, report, path = execute(settings, datetime.now())
                runs.append((code, path))
                print(f"{title}: exit {code}; {report.summary()}; {requests_line(report)}", flush=True)
                if attention := attention_line(report):
                    print(f"  {attention}", flush=True)
    (code, path), (code2, path2) = runs
    print(f"\nReport: {path}\nSecond report: {path2}\nCaches and log: {workdir}")
    if code == EXIT_RECORD_FAILED:
        print("(The sample data holds one user with an invalid email on purpose: it fails alone, each "
              "run exits 1, and the report names its Mongo id. The second run reads only Airtable's "
              "change feed, and its one write is that user's retry.)")
    # The demo worked if both runs got to their end; a failed sample record is part of the show.
    return next((ran for ran in (code, code2) if ran not in (EXIT_OK, EXIT_RECORD_FAILED)), EXIT_OK)


def main(argv: Sequence[str] | None = None, *, environ: Mapping[str, str] | None = None) -> int:
    """Run the tool. `environ` replaces the process environment and .env (tests use it)."""
    started = datetime.now()
    try:
        args = build_arg_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse has printed
        return int(exc.code or 0)
    if args.demo:
        return run_demo(args.verbose)
    # Logging first, so that a settings error or the .env warning reaches cron's log file too.
    log_file = (args.reports_dir or SCRIPT_DIR / "reports") / LOG_NAME
    with contextlib.ExitStack() as stack:
        try:
            handlers = stack.enter_context(logging_to(args.verbose, log_file))
        except LocalWriteError as exc:
            if exc.errno in LOCAL_WRITE_ERRNOS:  # a full disk or an unwritable folder
                print(f"airtable_sync: {exc}", file=sys.stderr)
                return EXIT_IOERR
            print(f"airtable_sync: reports folder {log_file.parent}: {exc.strerror}", file=sys.stderr)
            return EXIT_USAGE
        try:
            settings = settings_from(args, read_environment(SCRIPT_DIR / ".env") if environ is None else dict(environ))
        except UsageError as exc:
            log.error("%s", exc)
            return EXIT_USAGE
        for handler in handlers:
            handler.addFilter(RedactToken(settings.api_key))
        if not settings.check:
            log.info("airtable_sync: base %s, tables %s%s", settings.base_id, ",".join(settings.tables),
                     " (dry run)" if settings.dry_run else "")
        code, report, path = execute(settings, started)
        if code != EXIT_LOCKED:
            print(*report.closing_lines(path), sep="\n")
            if attention := attention_line(report):
                print(attention)  # what needs a person, last: `tail` of a cron log shows it
        return code


if __name__ == "__main__":
    sys.exit(main())
