"""Fault tolerance (issue 5): the sync against the emulator's fault injection.

Throttle, retry policy, idempotent creates, crash and resume, signals, the lock,
bad input, settings and auth, secrets, and the report however a run ends.

Runs are in-process (`harness.run`) unless the test needs a real process to kill,
signal or lock against (`spawn`). Timing windows are made with the emulator's
delay faults and observed by polling its request log, never by sleeping and hoping.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

import airtable_sync as sync
from airtable_emulator import Emulator
from conftest import FIXTURES, ROOT, TOKEN, SyncHarness, field_ids, make_env

USERS, EVENTS, MESSAGES = "tblQ0OHBit2AqaACy", "tblrscr87h8fbtQTk", "tbljma5S4NhUn1OYl"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
# tests/fixtures/README.md: one clean sync of the fixtures (17 writes, 4 reads), plus change
# tracking's first run: listing the base's webhooks (a read) and creating the tool's (a write).
CLEAN_WRITES, CLEAN_READS = 18, 5
U12 = "67bee6204876d36d86afa056"  # invalid email: fails alone with a 422
# base.json already holds two Users records with U08's id; nothing else may be duplicated.
PREEXISTING_DUPLICATES = {"Users": {"668a834093b270c043a655ee": 2}}
NEW_EVENTS = {"67c037a06ed4ed5e6a53bd3f", "67bed8106952750a390f165a", "67c1eb909b00a95b9f26879d",
              "67c215c0adb821e626e51666"}  # E03, E05, E10, E12: created by the first sync


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def wait_for(predicate, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


def settle(emulator, timeout: float = 10.0) -> None:
    """Wait until every request the emulator received has been answered (or dropped)."""
    wait_for(lambda: all(r.t_end is not None for r in list(emulator.requests)), timeout, "requests in flight")


def writes(emulator, table: str | None = None) -> list:
    return [r for r in list(emulator.requests) if r.kind == "write" and (table is None or r.table == table)]


def base_state(emulator) -> dict[str, Counter]:
    """Per table, the multiset of records' writable fields: no record ids, createdTime or
    computed fields; links as the linked record's `id` field (its record id if it has none)."""
    tables = emulator.schema()["tables"]
    records = {t["id"]: emulator.records(t["id"]) for t in tables}
    id_field = {rec["id"]: rec["fields"].get("id", rec["id"]) for recs in records.values() for rec in recs}
    state = {}
    for t in tables:
        computed = {f["name"] for f in t["fields"] if f["type"] in sync.COMPUTED_TYPES}
        links = {f["name"] for f in t["fields"] if f["type"] == "multipleRecordLinks"}
        rows = Counter()
        for rec in records[t["id"]]:
            fields = {k: ([id_field[x] for x in v] if k in links else v)
                      for k, v in rec["fields"].items() if k not in computed}
            rows[json.dumps(fields, sort_keys=True, ensure_ascii=False)] += 1
        state[t["name"]] = rows
    return state


def duplicate_ids(emulator) -> dict[str, dict[str, int]]:
    out = {}
    for t in emulator.schema()["tables"]:
        counts = Counter(r["fields"]["id"] for r in emulator.records(t["id"]) if r["fields"].get("id"))
        dups = {k: n for k, n in counts.items() if n > 1}
        if dups:
            out[t["name"]] = dups
    return out


def table_figures(report: dict, keys=None) -> dict:
    keys = keys or list(EXPECTED["users"])
    return {name: {k: t[k] for k in keys} for name, t in report["tables"].items()}


def assert_like_a_clean_run(emulator, clean) -> None:
    assert duplicate_ids(emulator) == PREEXISTING_DUPLICATES
    state = base_state(emulator)
    for table, rows in clean["state"].items():
        assert state[table] == rows, f"{table} differs from a clean run"


def new_harness(emulator, tmp_path: Path) -> SyncHarness:
    h = SyncHarness(emulator, tmp_path, make_env(emulator))
    h.mongo_dir.mkdir(exist_ok=True)
    for name in ("users.json", "events.json", "messages.json"):
        shutil.copy(FIXTURES / name, h.mongo_dir / name)
    return h


def child_env(harness: SyncHarness, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRTABLE_", "MONGODB_"))}
    env.update(harness.env)
    env.update(extra)
    return env


def spawn(harness: SyncHarness, *flags: str, script: Path = ROOT / "airtable_sync.py", **extra: str):
    """The sync as a real process against the in-process emulator."""
    return subprocess.Popen([sys.executable, str(script), *harness.argv(*flags)], cwd=script.parent,
                            env=child_env(harness, **extra), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def lines_with(text: str, needle: str) -> list[str]:
    return [line for line in text.splitlines() if needle in line]


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """The base as one clean sync of the fixtures leaves it, and that run's report."""
    with Emulator(FIXTURES / "base.json", token=TOKEN, rps=None) as emu:
        h = new_harness(emu, tmp_path_factory.mktemp("clean"))
        assert h.run() == 1
        report = h.report()
        assert table_figures(report) == EXPECTED
        assert report["requests"]["write"] == CLEAN_WRITES and report["requests"]["read"] == CLEAN_READS
        assert duplicate_ids(emu) == PREEXISTING_DUPLICATES
        return {"state": base_state(emu), "report": report}


# ---------------------------------------------------------------------------
# 1. proactive throttle
# ---------------------------------------------------------------------------


def test_throttle_keeps_a_full_run_under_the_rate_limit(harness, emulator, clean):
    emulator.set_rate_limit(5, penalty_s=30)
    started = time.monotonic()
    assert harness.run(env={"AIRTABLE_MAX_RPS": "5"}) == 1
    elapsed = time.monotonic() - started
    assert emulator.count(status=429) == 0
    arrivals = sorted(r.t_start for r in emulator.requests)
    assert len(arrivals) == CLEAN_WRITES + CLEAN_READS  # schema call, reads and writes all counted
    for t in arrivals:
        in_window = [a for a in arrivals if t - 1.0 < a <= t]
        assert len(in_window) <= 5, f"{len(in_window)} arrivals in the second ending at {t}"
    assert elapsed < 10  # 23 requests at 5 per second: throttled, not stalled
    report = harness.report()
    assert report["requests"] == {"total": 23, "read": 5, "write": 18, "retried": 0, "rate_limited": 0,
                                  "last_30_days": 23}
    assert_like_a_clean_run(emulator, clean)


# ---------------------------------------------------------------------------
# 2. retry policy
# ---------------------------------------------------------------------------


def test_429_waits_out_the_penalty_named_by_retry_after(harness, emulator, clean):
    # The tool is allowed far more than the base takes: the 6th request of every burst is refused.
    emulator.set_rate_limit(5, penalty_s=1, retry_after=True)
    assert harness.run(env={"AIRTABLE_MAX_RPS": "1000"}) == 1
    log = list(emulator.requests)
    refused = [i for i, r in enumerate(log) if r.status == 429]
    assert refused, "the emulator never rate-limited the run"
    for i in refused:
        nxt = log[i + 1]
        assert nxt.status != 429, "re-sent inside the penalty window"
        assert nxt.method == log[i].method and nxt.path == log[i].path and nxt.body == log[i].body
        assert nxt.t_start - log[i].t_end >= 1.0  # Retry-After: 1
    report = harness.report()
    n = len(refused)
    assert report["requests"]["rate_limited"] == n and report["requests"]["retried"] == n
    assert report["requests"]["total"] == CLEAN_WRITES + CLEAN_READS + n == len(log)
    assert table_figures(report) == EXPECTED
    assert_like_a_clean_run(emulator, clean)


def test_5xx_are_retried_with_exponential_backoff(harness, emulator, clean):
    emulator.add_fault(kind="meta", status=504, times=1)
    emulator.add_fault(kind="read", table=EVENTS, status=502, times=1)
    emulator.add_fault(kind="write", table=MESSAGES, status=503, times=2)  # an upsert: safe to re-send
    assert harness.run() == 1
    log = list(emulator.requests)
    faulted = [i for i, r in enumerate(log) if r.fault]
    assert [log[i].status for i in faulted] == [504, 502, 503, 503]
    gaps = [log[i + 1].t_start - log[i].t_end for i in faulted]
    for i in faulted:
        assert (log[i + 1].method, log[i + 1].path, log[i + 1].body) == (log[i].method, log[i].path, log[i].body)
    assert 0.5 <= gaps[0] < 1.0 and 0.5 <= gaps[1] < 1.0  # first retry after 0.5 s
    assert 0.5 <= gaps[2] < 1.0 and 1.0 <= gaps[3] < 1.5  # then 1 s
    report = harness.report()
    assert report["requests"] == {"total": 27, "read": 7, "write": 20, "retried": 4, "rate_limited": 0,
                                  "last_30_days": 27}
    assert table_figures(report) == EXPECTED
    assert_like_a_clean_run(emulator, clean)


def test_timeouts_and_dropped_connections_are_retried(harness, emulator, clean):
    hung = emulator.add_fault(kind="meta", delay_s=3.0, times=1)  # answers long after the timeout
    emulator.add_fault(kind="read", table=USERS, drop=True, times=1)
    assert harness.run(env={"AIRTABLE_TIMEOUT_S": "1"}) == 1
    log = list(emulator.requests)
    schema_calls = [r for r in log if r.kind == "meta"]
    assert len(schema_calls) == 2 and hung.fired == 1
    first, retry = schema_calls
    # The timeout, then the backoff. t_start is taken after the server has parsed the headers, which
    # takes longer the first time (cold code, the GIL shared with the client): 10 ms of slack.
    assert 1.0 + 0.5 - 0.01 <= retry.t_start - first.t_start < 2.5
    assert first.t_end is None or retry.t_end < first.t_end  # gave up on the hung one: the retry was answered first
    user_reads = [r for r in log if r.kind == "read" and r.table == USERS]
    assert [r.status for r in user_reads] == [None, 200]  # dropped, then re-sent
    assert user_reads[1].t_start - user_reads[0].t_end >= 0.5
    report = harness.report()
    assert report["requests"] == {"total": 25, "read": 7, "write": 18, "retried": 2, "rate_limited": 0,
                                  "last_30_days": 25}
    assert table_figures(report) == EXPECTED
    settle(emulator)
    assert_like_a_clean_run(emulator, clean)


# ---------------------------------------------------------------------------
# 3. idempotent creates
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("table, fault", [
    (EVENTS, dict(apply=True, drop=True)),  # the connection dropped after Airtable applied the write
    (MESSAGES, dict(apply=True, status=503)),  # a 5xx after it applied
], ids=["drop-after-apply", "503-after-apply"])
def test_a_create_whose_answer_was_lost_is_not_duplicated(harness, emulator, clean, table, fault):
    applied = emulator.add_fault(kind="write", table=table, times=1, **fault)
    assert harness.run() == 1
    assert applied.fired == 1
    first, again = writes(emulator, table)[:2]
    assert first.fault and again.body == first.body  # the create, re-sent as the same upsert
    assert first.body["performUpsert"] == {"fieldsToMergeOn": [field_ids(emulator, table)["id"]]}
    report = harness.report()
    assert report["requests"]["retried"] == 1 and report["requests"]["write"] == CLEAN_WRITES + 1
    assert table_figures(report) == EXPECTED  # created counted once, nothing failed but U12
    assert [e["mongo_id"] for e in report["errors"]] == [U12]
    assert {t: len(emulator.records(t)) for t in (USERS, EVENTS, MESSAGES)} == {USERS: 33, EVENTS: 14, MESSAGES: 43}
    assert_like_a_clean_run(emulator, clean)


def test_a_late_original_after_its_retry_lands_on_the_same_record(harness, emulator, clean):
    late = emulator.add_fault(kind="write", table=EVENTS, delay_s=2.5, times=1)
    assert harness.run(env={"AIRTABLE_TIMEOUT_S": "1"}) == 1
    assert late.fired == 1
    original, retry = writes(emulator, EVENTS)[:2]
    assert retry.body == original.body and "performUpsert" in original.body
    wait_for(lambda: original.t_end is not None, 5, "the late original")
    assert retry.t_start < original.t_end and retry.t_end < original.t_end  # the retry applied first
    assert original.status == 200  # then the original: merged on `id` into the records the retry made
    report = harness.report()
    assert report["requests"]["retried"] == 1 and report["requests"]["write"] == CLEAN_WRITES + 1
    assert table_figures(report) == EXPECTED
    assert len(emulator.records(EVENTS)) == 14
    assert_like_a_clean_run(emulator, clean)


def base_without_events_id() -> dict:
    base = json.loads((FIXTURES / "base.json").read_text())
    events = next(t for t in base["tables"] if t["id"] == EVENTS)
    events["fields"] = [f for f in events["fields"] if f["name"] != "id"]
    for rec in events["records"]:
        rec["fields"].pop("id", None)
    return base


@pytest.mark.parametrize("fault, what", [(dict(drop=True), "ConnectionError"), (dict(status=503), "HTTP 503")],
                         ids=["drop-after-apply", "503-after-apply"])
def test_without_an_id_field_a_lost_create_is_not_resent_and_a_rerun_matches_it(tmp_path, fault, what):
    with Emulator(base_without_events_id(), token=TOKEN, rps=None) as emulator:
        harness = new_harness(emulator, tmp_path)
        dropped = emulator.add_fault(kind="write", table=EVENTS, apply=True, times=1, **fault)
        assert harness.run() == 1
        assert dropped.fired == 1
        creates = [r for r in writes(emulator, EVENTS) if r.method == "POST"]
        assert len(creates) == 1 and creates[0].records == 4  # a plain create, never re-sent
        assert "performUpsert" not in creates[0].body
        assert len(emulator.records(EVENTS)) == 14  # applied once
        report = harness.report()
        assert report["requests"]["retried"] == 0
        lost = [e for e in report["errors"] if e["table"] == "events"]
        assert {e["mongo_id"] for e in lost} == NEW_EVENTS  # reported failed, not "created"
        assert report["tables"]["events"]["created"] == 0 and report["tables"]["events"]["errors"] == 4
        assert report["tables"]["events"]["missing_in_airtable"] == ["id", "participant_top_occupations"]
        # the rest of the run went on: events updated, messages synced
        assert all(e["message"].startswith(f"outcome unknown ({what}") and "not re-sent" in e["message"]
                   for e in lost)
        # The run went on: events updated, messages synced (their links to the 10 lost events left out).
        figures = table_figures(report, ["created", "updated", "skipped", "errors", "unresolved_links"])
        assert figures["events"] == {"created": 0, "updated": 5, "skipped": 3, "errors": 4, "unresolved_links": 0}
        assert figures["messages"] == {"created": 13, "updated": 13, "skipped": 14, "errors": 0,
                                       "unresolved_links": 4 + 10}

        assert harness.run() == 1  # U12 fails again, nothing else
        rerun = harness.report()
        figures = table_figures(rerun, ["created", "updated", "skipped", "errors", "unresolved_links"])
        assert figures["events"] == {"created": 0, "updated": 0, "skipped": 12, "errors": 0, "unresolved_links": 0}
        assert figures["messages"] == {"created": 0, "updated": 10, "skipped": 30, "errors": 0,
                                       "unresolved_links": 4}  # the 10 links now resolve
        assert [r for r in writes(emulator, EVENTS) if r.method == "POST"] == creates  # nothing created again
        assert rerun["tables"]["events"]["created"] == 0 and rerun["tables"]["events"]["errors"] == 0
        assert len(emulator.records(EVENTS)) == 14
        names = Counter(sync.normalize_key(r["fields"].get("Name")) for r in emulator.records(EVENTS))
        assert max(n for k, n in names.items() if k != "sunday supper club") == 1
        assert names["sunday supper club"] == 3  # the legacy record, E01's and E03's (E03 created once)
        assert [e["mongo_id"] for e in rerun["errors"]] == [U12]


# ---------------------------------------------------------------------------
# 4. crash and resume; signals
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kill_at", [1, 5, 10, 13, 16])
def test_sigkill_then_rerun_leaves_the_base_as_a_clean_run(harness, emulator, clean, kill_at):
    # The kill_at-th write request is held 0.3 s by the emulator: the process dies with it in flight.
    emulator.add_fault(kind="write", delay_s=0.3, skip=kill_at - 1, times=1)
    proc = spawn(harness, AIRTABLE_MAX_RPS="1000")
    try:
        wait_for(lambda: len(writes(emulator)) >= kill_at or proc.poll() is not None, 20, "the write")
        proc.kill()
    finally:
        proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    settle(emulator)  # the write in flight lands (Airtable applies it; nobody reads the answer)
    assert len(writes(emulator)) == kill_at
    assert harness.reports() == []
    assert (harness.cache_dir / ".airtable_sync.lock").exists()  # left behind by the dead run...
    assert harness.run() == 1  # ...and not held: the rerun is not blocked
    report = harness.report()
    assert report["ended"] == "finished with failed records"
    assert [e["mongo_id"] for e in report["errors"]] == [U12]
    assert_like_a_clean_run(emulator, clean)


@pytest.mark.parametrize("sig, code, name", [(signal.SIGINT, 130, "SIGINT"), (signal.SIGTERM, 143, "SIGTERM")])
def test_a_signal_lets_the_request_in_flight_finish_and_marks_the_report(harness, emulator, sig, code, name):
    held = emulator.add_fault(kind="write", table=EVENTS, delay_s=0.5, times=1)  # the events create
    proc = spawn(harness)
    try:
        wait_for(lambda: held.fired == 1 or proc.poll() is not None, 20, "the events create")
        proc.send_signal(sig)
    finally:
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == code, err
    assert "Traceback" not in out + err
    in_flight = writes(emulator, EVENTS)
    assert len(in_flight) == 1 and in_flight[0].status == 200  # finished, not cut off
    assert len(writes(emulator)) == 12 + 1 and writes(emulator)[-1] is in_flight[0]  # and nothing after it
    report = harness.report()
    assert report["ended"] == "interrupted" and report["exit_code"] == code
    assert name in report["message"]
    assert report["requests"]["write"] == 13 + 1  # and the webhook's create
    figures = table_figures(report, ["created", "updated", "skipped", "errors", "not_attempted"])
    assert figures == {
        "users": {"created": 9, "updated": 8, "skipped": 12, "errors": 1, "not_attempted": 0},
        "events": {"created": 4, "updated": 0, "skipped": 4, "errors": 4, "not_attempted": 4},
        "messages": {"created": 0, "updated": 0, "skipped": 17, "errors": 23, "not_attempted": 23},
    }
    assert len(emulator.records(EVENTS)) == 14
    assert lines_with(err, f"interrupted by {name}")


# ---------------------------------------------------------------------------
# 5. the lock
# ---------------------------------------------------------------------------


def test_a_second_run_while_one_holds_the_lock_exits_at_once_writing_nothing(harness, emulator, capsys):
    held = emulator.add_fault(kind="write", delay_s=2.0, times=1)
    proc = spawn(harness)
    try:
        wait_for(lambda: held.fired == 1 or proc.poll() is not None, 20, "the first run's first write")
        seen = len(emulator.requests)
        started = time.monotonic()
        code = harness.run()
        elapsed = time.monotonic() - started
        assert writes(emulator)[0].t_end is None  # the first run was mid-request all along
        assert code == sync.EXIT_LOCKED == 75
        assert elapsed < 1.0
        assert len(emulator.requests) == seen  # not one request from the second run
        assert harness.reports() == []
        err = capsys.readouterr().err
        assert lines_with(err, "another airtable_sync run holds") and "nothing done" in err
        assert "Traceback" not in err
    finally:
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 1, err
    assert len(harness.reports()) == 1  # the first run's only


# ---------------------------------------------------------------------------
# 6. bad input
# ---------------------------------------------------------------------------


BAD_FILES = {
    "malformed-json": ("messages.json", b'[{"id": "m1", "message_text": "hi"},'),
    "malformed-json-lines": ("messages.json", b'{"id": "m1"}\n{"id": \n'),
    "top-level-string": ("messages.json", b'"messages"'),
    "top-level-number": ("events.json", b"42\n"),
    "record-not-object": ("messages.json", b'[{"id": "m1"}, 7]'),
    "line-not-object": ("messages.json", b'{"id": "m1"}\n["m2"]\n'),
    "invalid-utf8": ("users.json", b'[{"id": "u1", "firstName": "Jos\xe9"}]'),
    "empty": ("messages.json", b""),
    "blank": ("events.json", b"  \n\n"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_export_is_a_one_line_error_and_nothing_is_sent(harness, emulator, capsys, case):
    name, raw = BAD_FILES[case]
    (harness.mongo_dir / name).write_bytes(raw)
    assert harness.run() == 2
    assert len(emulator.requests) == 0  # not even the schema call
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    path = str(harness.mongo_dir / name)
    errors = lines_with(err, " ERROR ")
    assert len(errors) == 1 and path in errors[0]
    report = harness.report()
    assert report["ended"] == "input error" and report["exit_code"] == 2
    assert report["message"].startswith(path + ": ") and "\n" not in report["message"]
    assert report["requests"]["total"] == 0
    assert not list(harness.cache_dir.glob("airtable_*.json"))


def test_bad_records_fail_alone_and_the_rest_is_synced(harness, emulator):
    long_id, nan_id = "6800000000000000000000a2", "6800000000000000000000a1"
    users = harness.read_export("users.json")
    users.append({"firstName": "Nobody", "lastName": "Keyless"})  # record #31: no id, no email
    users.append({"_id": {"$oid": nan_id}, "email": "nan.inf@example.com", "firstName": "Nan",
                  "total_spent": math.nan, "event_count": math.inf,
                  "order_count": {"$numberDouble": "-Infinity"}, "days_inactive": {"$numberDouble": "NaN"}})
    users.append({"_id": {"$oid": long_id}, "email": "long@example.com", "summary": "x" * 100_001})
    harness.write_export("users.json", users)
    assert "NaN" in (harness.mongo_dir / "users.json").read_text()  # bare NaN/Infinity literals

    assert harness.run() == 1
    report = harness.report()
    assert table_figures(report, ["total", "created", "updated", "skipped", "errors"])["users"] == {
        "total": 33, "created": 10, "updated": 8, "skipped": 12, "errors": 3}
    assert report["tables"]["users"]["invalid_values"] == 2  # NaN/Infinity are null, not invalid
    errors = {e["mongo_id"]: e["message"] for e in report["errors"]}
    assert set(errors) == {U12, None, long_id}
    assert "record #31" in errors[None] and "email" in errors[None]
    assert "100000" in errors[long_id] and "summary" in errors[long_id]
    assert table_figures(report)["events"] == EXPECTED["events"]
    assert table_figures(report)["messages"] == EXPECTED["messages"]
    assert report["requests"]["write"] == CLEAN_WRITES + 1  # one more users create batch
    sent = json.dumps([r.body for r in emulator.requests])
    assert long_id not in sent and "Keyless" not in sent
    nan_user = [r for r in emulator.records(USERS) if r["fields"].get("id") == nan_id]
    assert len(nan_user) == 1
    assert not {"total_spent", "event_count", "order_count", "days_inactive"} & set(nan_user[0]["fields"])


# ---------------------------------------------------------------------------
# 7. settings and auth
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("env, message", [
    ({"AIRTABLE_API_KEY": ""}, "AIRTABLE_API_KEY is not set"),
    ({"AIRTABLE_API_KEY": "   "}, "AIRTABLE_API_KEY is not set"),
    ({"AIRTABLE_BASE_ID": "appShort"}, "AIRTABLE_BASE_ID='appShort' is not a base id"),
    ({"AIRTABLE_BASE_ID": "tblQ0OHBit2AqaACy"}, "is not a base id"),
    ({"AIRTABLE_EVENTS_TABLE": "tbl123"}, "AIRTABLE_EVENTS_TABLE='tbl123' is not a table id"),
], ids=["no-token", "blank-token", "short-base", "table-as-base", "short-table"])
def test_bad_settings_exit_2_before_any_request(harness, emulator, capsys, env, message):
    assert harness.run(env=env) == 2
    assert len(emulator.requests) == 0
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and message in err and "Traceback" not in out + err


def assert_auth_failure(harness, emulator, err, status):
    report = harness.report()
    assert report["ended"] == "Airtable error" and report["exit_code"] == 3
    assert f"HTTP {status}" in report["message"]
    for scope in ("data.records:read", "data.records:write", "schema.bases:read"):
        assert scope in report["message"]
        assert scope in err
    assert emulator.count(status=200, kind="write") == 0
    assert "Traceback" not in err


def test_a_wrong_token_exits_3_with_the_scopes_hint(harness, emulator, capsys):
    assert harness.run(env={"AIRTABLE_API_KEY": "patWRONGtoken.0123456789"}) == 3
    assert [(r.kind, r.status) for r in emulator.requests] == [("meta", 401)]  # not retried
    assert_auth_failure(harness, emulator, capsys.readouterr().err, 401)


def test_403_on_reading_a_table_exits_3_with_the_scopes_hint(harness, emulator, capsys):
    emulator.add_fault(kind="read", status=403, times=None)
    assert harness.run() == 3
    # The schema, then change tracking's webhook (listed, created) before the full read.
    assert [(r.kind, r.status) for r in emulator.requests] == [("meta", 200), ("webhook", 200), ("webhook", 200),
                                                               ("read", 403)]
    assert_auth_failure(harness, emulator, capsys.readouterr().err, 403)


def test_403_on_the_first_write_exits_3_and_nothing_changed(harness, emulator, capsys):
    before = base_state(emulator)
    emulator.add_fault(kind="write", status=403, times=None)
    assert harness.run() == 3  # the token may read but not write: nothing was written
    assert [(r.kind, r.status) for r in emulator.requests][-1] == ("write", 403)
    assert len(writes(emulator)) == 1
    assert base_state(emulator) == before
    assert_auth_failure(harness, emulator, capsys.readouterr().err, 403)
    report = harness.report()
    assert sum(t["created"] + t["updated"] for t in report["tables"].values()) == 0
    assert sum(t["not_attempted"] for t in report["tables"].values()) == 18 + 8 + 23


def test_an_unreachable_endpoint_exits_3_in_bounded_time(harness, emulator, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again on leaving: nothing listens there
    started = time.monotonic()
    code = harness.run(env={"AIRTABLE_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AIRTABLE_MAX_RETRIES": "2"})
    elapsed = time.monotonic() - started
    assert code == 3
    assert 1.5 <= elapsed < 20  # two backoffs (0.5 s, 1 s), then give up
    report = harness.report()
    assert report["ended"] == "Airtable error" and report["exit_code"] == 3
    assert "unreachable" in report["message"] and "2 retries" in report["message"]
    assert report["requests"] == {"total": 3, "read": 3, "write": 0, "retried": 2, "rate_limited": 0,
                                  "last_30_days": 0}  # no request reached Airtable
    err = capsys.readouterr().err
    assert "Traceback" not in err and lines_with(err, "unreachable")
    assert len(emulator.requests) == 0


# ---------------------------------------------------------------------------
# 8. secrets
# ---------------------------------------------------------------------------


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def test_the_token_never_appears_in_output_logs_reports_or_caches(harness, emulator):
    emulator.add_fault(kind="read", table=EVENTS, status=503, times=1)
    emulator.add_fault(kind="write", table=EVENTS, apply=True, drop=True, times=1)
    emulator.add_fault(kind="write", table=MESSAGES, status=429, headers={"Retry-After": "0"}, times=1)
    proc = spawn(harness, "-v")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err  # U12's 422 on the way
    assert " DEBUG " in err  # -v really was on
    streams = [out, err]
    # an exit-3 run too: the 403 and its exception text go to every output
    emulator.clear_faults()
    emulator.add_fault(kind="write", status=403, times=None)
    proc = spawn(harness, "-v")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    streams += [out, err]
    for text in streams:
        assert TOKEN not in text
    outputs = files_under(harness.reports_dir) + files_under(harness.cache_dir)
    names = {p.name for p in outputs}
    assert "airtable_sync.log" in names and {f"airtable_{t}.json" for t in ("users", "events", "messages")} <= names
    assert len(harness.reports()) == 2
    for path in outputs:
        data = path.read_bytes()
        assert TOKEN.encode() not in data, path
    for path in outputs:  # caches, reports, log and lock: owner only
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    settings = sync.settings_from(sync.build_arg_parser().parse_args(harness.argv()), harness.env)
    assert TOKEN not in repr(settings)


def test_a_dotenv_readable_by_others_gets_a_warning(harness, emulator, tmp_path):
    tool = tmp_path / "tool"
    tool.mkdir()
    script = tool / "airtable_sync.py"
    shutil.copy(ROOT / "airtable_sync.py", script)
    dotenv = tool / ".env"
    dotenv.write_text(f"AIRTABLE_API_KEY={TOKEN}\n")
    env = {k: v for k, v in harness.env.items() if k != "AIRTABLE_API_KEY"}
    harness.env = env  # the token comes from .env only

    dotenv.chmod(0o644)
    proc = spawn(harness, script=script)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err  # the token from .env worked
    warning = lines_with(err, str(dotenv))
    assert len(warning) == 1 and "readable by group or others" in warning[0] and "chmod 600" in warning[0]
    assert TOKEN not in out + err
    log_text = (harness.reports_dir / "airtable_sync.log").read_text()
    assert "readable by group or others" in log_text  # cron's log file tells too

    dotenv.chmod(0o600)
    proc = spawn(harness, script=script)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert str(dotenv) not in err and "readable by group" not in err
    assert TOKEN not in out + err


# ---------------------------------------------------------------------------
# 9. the report, however the run ends
# ---------------------------------------------------------------------------


def test_the_report_is_written_when_airtable_fails_midway(harness, emulator):
    emulator.add_fault(kind="write", table=EVENTS, status=503, times=None)
    assert harness.run(env={"AIRTABLE_MAX_RETRIES": "2"}) == 1  # users were written
    report = harness.report()
    assert report["ended"] == "Airtable error" and report["exit_code"] == 1
    assert "writing events" in report["message"] and "HTTP 503" in report["message"]
    assert "gave up after 2 retries" in report["message"]
    assert "scopes" not in report["message"]  # a 503 is not a token problem: no misleading hint
    assert report["requests"] == {"total": 21, "read": 5, "write": 16, "retried": 2, "rate_limited": 0,
                                  "last_30_days": 21}
    figures = table_figures(report, ["created", "updated", "skipped", "errors", "not_attempted"])
    assert figures == {
        "users": {"created": 9, "updated": 8, "skipped": 12, "errors": 1, "not_attempted": 0},
        "events": {"created": 0, "updated": 0, "skipped": 4, "errors": 8, "not_attempted": 4},
        "messages": {"created": 0, "updated": 0, "skipped": 17, "errors": 23, "not_attempted": 23},
    }
    not_synced = [e for e in report["errors"] if e["message"].startswith("not synced")]
    assert len(not_synced) == 27
    # The refused create batch may have been applied before its 503s: its records say so.
    unknown = [e for e in report["errors"] if e["message"].startswith("outcome unknown")]
    assert [e["table"] for e in unknown] == ["events"] * 4
    md = harness.reports()[-1].with_suffix(".md").read_text()
    assert "AIRTABLE ERROR" in md and "exit code 1" in md
    # the caches hold what the run did write
    cached = json.loads((harness.cache_dir / "airtable_users.json").read_text())
    assert len(cached) == len(emulator.records(USERS)) == 33


# ---------------------------------------------------------------------------
# schema refused: types inferred, rejected fields dropped
# ---------------------------------------------------------------------------


def test_without_the_schema_types_are_inferred_and_rejected_fields_dropped(harness, emulator, clean):
    emulator.add_fault(kind="meta", status=403, times=None)
    assert harness.run() == 1
    report = harness.report()
    assert table_figures(report) == EXPECTED  # same outcome; the lists come from Airtable's 422s
    assert [e["mongo_id"] for e in report["errors"]] == [U12]
    # Each rejected field costs exactly one refused request, then is never sent again.
    rejected = [r for r in writes(emulator) if r.status == 422 and r.records > 1]
    assert [(r.table, r.records) for r in rejected] == [(USERS, 10), (USERS, 10), (EVENTS, 4), (MESSAGES, 10)]
    for field_name, table in (("updatedAt", USERS), ("participant_top_occupations", EVENTS),
                              ("character_count", MESSAGES)):
        carrying = [r for r in writes(emulator, table)
                    if any(field_name in rec["fields"] for rec in r.body["records"])]
        assert len(carrying) == 1 and carrying[0].status == 422, field_name
    # Every write, in order: (table, records, status). Planned without the schema, all 20 matched
    # users and 11 messages differ from Airtable, 12 and 1 of them only in a dropped field: they
    # become skips, and the rest go out in full batches of 8 and 10.
    sent = [(r.table, r.records, r.status) for r in writes(emulator)]
    assert sent == ([(USERS, 10, 422), (USERS, 10, 422)]  # updatedAt refused, then U12's email
                    + [(USERS, 1, 200)] * 4 + [(USERS, 1, 422)] + [(USERS, 1, 200)] * 5
                    + [(USERS, 8, 200)]
                    + [(EVENTS, 4, 422), (EVENTS, 4, 200), (EVENTS, 4, 200)]
                    + [(MESSAGES, 10, 422), (MESSAGES, 10, 200), (MESSAGES, 3, 200),
                       (MESSAGES, 10, 200)])
    assert report["requests"] == {"total": 24, "read": 4, "write": 20, "retried": 0, "rate_limited": 0,
                                  "last_30_days": 24}
    # The plan is reported as made: every matched user differs in the computed updatedAt.
    assert report["tables"]["users"]["planned"] == {"create": 10, "update": 20, "skip": 0, "error": 0}
    assert_like_a_clean_run(emulator, clean)


def test_a_netrc_entry_for_the_host_never_replaces_the_token(harness, emulator, tmp_path, monkeypatch):
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password not-the-token\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert harness.run() == 1  # U12 alone: every request carried the token
    assert emulator.count(status=401) == 0


def test_a_stop_during_a_tables_last_page_ends_the_read_there(harness, emulator):
    """No request follows the last page for the transport to notice the stop at: the read does."""
    settings = sync.settings_from(sync.build_arg_parser().parse_args(harness.argv()), harness.env)
    stop = threading.Event()
    airtable = sync.connect(settings, stop)
    emulator.add_fault(kind="read", delay_s=1.0, times=1)  # the users fit in one page: it is the last
    threading.Timer(0.1, stop.set).start()
    with pytest.raises(sync.RunInterrupted):
        sync.pull_table(airtable, "users", stop, True)
    assert [r.kind for r in emulator.requests] == ["read"]
