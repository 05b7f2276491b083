"""The operator's side (issue 14): the API budget, a spent monthly quota, the attention line,
and a full disk.

Pure rules are tested directly; behaviour through HTTP against the emulator, in-process
(`harness.run`) or, where a file-size limit must apply to the tool alone, as a real process.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests

import airtable_sync as sync
from airtable_emulator import Emulator
from conftest import FIXTURES, ROOT, TOKEN, SyncHarness, field_ids
from test_faults import PREEXISTING_DUPLICATES, base_state, duplicate_ids, new_harness

USERS, EVENTS, MESSAGES = "tblQ0OHBit2AqaACy", "tblrscr87h8fbtQTk", "tbljma5S4NhUn1OYl"
U12 = "67bee6204876d36d86afa056"  # invalid email: fails alone with a 422
SPENT = "the workspace's monthly API calls are spent"


def without_u12(harness: SyncHarness) -> None:
    """The fixtures without the one user that fails on purpose: a clean run exits 0."""
    users = [u for u in harness.read_export("users.json") if sync.mongo_id_of(sync.unwrap_extended_json(u)) != U12]
    harness.write_export("users.json", users)


def lines_with(text: str, needle: str) -> list[str]:
    return [line for line in text.splitlines() if needle in line]


def budget_file(harness: SyncHarness) -> Path:
    return harness.cache_dir / sync.REQUEST_BUDGET_FILE


def budget_key(emulator) -> str:
    return f"{emulator.url} {emulator.base_id}"


def utc_day(days_ago: int) -> str:
    return (datetime.now(timezone.utc).date() - timedelta(days=days_ago)).isoformat()


def stray_files(*folders: Path) -> list[Path]:
    """Temporary files a writer left behind."""
    return [p for folder in folders if folder.exists() for p in folder.rglob("*") if p.name.endswith(".tmp")]


# ---------------------------------------------------------------------------
# 1. the API budget: pure rules
# ---------------------------------------------------------------------------


def test_budget_counts_keep_30_days_and_add_today():
    today = datetime(2026, 5, 31, tzinfo=timezone.utc).date()
    counts = {"2026-05-01": 4, "2026-05-02": 5, "2026-04-30": 100, "2026-05-31": 1, "not a day": 9, "2026-05-03": "x"}
    # The 30 days are 05-02 to 05-31; anything that is not a day and a count is dropped.
    assert sync.budget_counts(counts, today) == {"2026-05-02": 5, "2026-05-31": 1}
    assert sync.budget_counts(counts, today, add=7) == {"2026-05-02": 5, "2026-05-31": 8}
    assert sync.budget_counts({}, today, add=0) == {}


def test_budget_text_and_the_80_percent_warning():
    assert sync.budget_text(1234, 100000) == "1,234 requests in the last 30 days, 1.2% of AIRTABLE_MONTHLY_CALLS=100000"
    assert sync.budget_text(1, None) == "1 request in the last 30 days"
    assert sync.budget_text(0, None) == "0 requests in the last 30 days"
    assert not sync.budget_high(79_999, 100_000) and sync.budget_high(80_000, 100_000)
    assert sync.budget_high(120, 100) and not sync.budget_high(10**9, None)


@pytest.mark.parametrize("raw, message", [
    ("0", "AIRTABLE_MONTHLY_CALLS='0' must be greater than zero"),
    ("-5", "AIRTABLE_MONTHLY_CALLS='-5' must be greater than zero"),
    ("1.5", "AIRTABLE_MONTHLY_CALLS='1.5' is not a whole number"),
    ("lots", "AIRTABLE_MONTHLY_CALLS='lots' is not a whole number"),
])
def test_a_bad_monthly_calls_setting_exits_2_before_any_request(harness, emulator, capsys, raw, message):
    assert harness.run(env={"AIRTABLE_MONTHLY_CALLS": raw}) == 2
    err = capsys.readouterr().err
    assert len(lines_with(err, "AIRTABLE_MONTHLY_CALLS")) == 1 and message in err
    assert emulator.requests == []


@pytest.mark.parametrize("name", ["AIRTABLE_MAX_DELETE_FRACTION", "AIRTABLE_MAX_CLEAR_FRACTION"])
def test_a_safety_cap_over_1_is_the_error_named_even_with_the_mongo_folder_missing(harness, emulator, capsys, name):
    shutil.rmtree(harness.mongo_dir)
    assert harness.run(env={name: "2"}) == 2
    err = capsys.readouterr().err
    assert f"{name}=2.0 must be between 0 and 1" in err and "Mongo data folder" not in err
    assert emulator.requests == []


def test_the_monthly_calls_setting_is_optional_and_documented():
    args = sync.build_arg_parser().parse_args(["--mongo-dir", str(FIXTURES)])
    assert sync.settings_from(args, {"AIRTABLE_API_KEY": "k"}).monthly_calls is None
    assert sync.settings_from(args, {"AIRTABLE_API_KEY": "k", "AIRTABLE_MONTHLY_CALLS": " 100000 "}).monthly_calls == 100000
    assert "AIRTABLE_MONTHLY_CALLS" in sync.EXIT_CODES_HELP and "\n  74 " in sync.EXIT_CODES_HELP
    assert "AIRTABLE_MONTHLY_CALLS" in (ROOT / ".env.example").read_text()


# ---------------------------------------------------------------------------
# 1. the API budget, through HTTP
# ---------------------------------------------------------------------------


def test_every_run_adds_its_requests_to_the_base_s_30_days(harness, emulator, capsys):
    key = budget_key(emulator)
    harness.cache_dir.mkdir(parents=True)
    budget_file(harness).write_text(json.dumps({
        key: {utc_day(31): 500, utc_day(28): 7},  # the first has left the 30 days
        "https://api.airtable.com appOTHERBASE00000": {utc_day(40): 3, utc_day(2): 2},
    }))
    assert harness.run() == 1  # U12
    first = harness.report()["requests"]
    assert first["total"] == 23 and first["last_30_days"] == 7 + 23
    assert "API budget: 30 requests in the last 30 days to this base by this tool" in harness.reports()[-1].with_suffix(
        ".md").read_text()

    assert harness.run("--dry-run") == 0  # a dry run cannot meet U12's 422
    dry = harness.report()["requests"]
    assert dry["write"] == 0 and dry["last_30_days"] == 30 + dry["total"]

    capsys.readouterr()
    assert harness.run("--check") == 0
    out = capsys.readouterr().out
    check_total = len(emulator.requests) - 23 - dry["total"]
    assert f"{check_total} requests, nothing written" in out
    assert f"API budget: {30 + dry['total'] + check_total} requests in the last 30 days" in out

    saved = json.loads(budget_file(harness).read_text())
    assert sum(saved[key].values()) == 7 + 23 + dry["total"] + check_total == len(emulator.requests) + 7
    assert utc_day(31) not in saved[key]
    assert saved["https://api.airtable.com appOTHERBASE00000"] == {utc_day(2): 2}  # another base's, pruned too
    assert stat.S_IMODE(budget_file(harness).stat().st_mode) == 0o600
    assert TOKEN not in budget_file(harness).read_text()


def test_at_80_percent_of_the_monthly_calls_the_log_the_report_and_check_warn(harness, emulator, capsys):
    without_u12(harness)  # and Users alone: nothing else needs a person
    harness.cache_dir.mkdir(parents=True)
    budget_file(harness).write_text(json.dumps({budget_key(emulator): {utc_day(1): 100}}))
    assert harness.run("--tables", "users", env={"AIRTABLE_MONTHLY_CALLS": "120"}) == 0
    out, err = capsys.readouterr()
    report = harness.report()
    used = report["requests"]["last_30_days"]
    assert used == 100 + report["requests"]["total"] and used >= 96
    share = f"{used:,} requests in the last 30 days, {used / 120:.1%} of AIRTABLE_MONTHLY_CALLS=120"
    markdown = harness.reports()[-1].with_suffix(".md").read_text()
    assert f"API budget: {share} to this base by this tool" in markdown and "**Warning**" in markdown
    [warning] = lines_with(err, "WARNING API budget")
    assert share in warning
    attention = f"attention: API budget at {used / 120:.0%} of AIRTABLE_MONTHLY_CALLS=120"
    assert out.splitlines()[-1] == attention
    log = (harness.reports_dir / "airtable_sync.log").read_text().splitlines()
    assert log[-1].endswith(f"WARNING {attention}")

    assert harness.run("--check", "--tables", "users", env={"AIRTABLE_MONTHLY_CALLS": "120"}) == 0
    out, err = capsys.readouterr()
    assert lines_with(out, "% of AIRTABLE_MONTHLY_CALLS=120 to this base by this tool, this check included")
    assert lines_with(err, "WARNING API budget")

    # Well under the cap: the share, and no warning.
    assert harness.run("--tables", "users", env={"AIRTABLE_MONTHLY_CALLS": "100000"}) == 0
    out, err = capsys.readouterr()
    assert "% of AIRTABLE_MONTHLY_CALLS=100000 to this base" in harness.reports()[-1].with_suffix(".md").read_text()
    assert not lines_with(err, "WARNING") and "attention" not in out


# ---------------------------------------------------------------------------
# 2. a spent monthly quota
# ---------------------------------------------------------------------------


def test_the_emulator_refuses_data_requests_once_the_month_s_calls_are_spent(emulator):
    def get(path: str, token: str = TOKEN):
        return requests.get(f"{emulator.url}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=5)

    records, webhooks = f"/v0/{emulator.base_id}/{USERS}", f"/v0/bases/{emulator.base_id}/webhooks"
    emulator.set_monthly_calls_left(2)
    assert get(records).status_code == 200 and get(webhooks).status_code == 200
    refused = get(records)
    assert refused.status_code == 429 and "Retry-After" not in refused.headers
    assert refused.json()["error"]["type"] == "PUBLIC_API_BILLING_LIMIT_EXCEEDED"
    assert get(webhooks).status_code == 429
    assert get(f"/v0/meta/bases/{emulator.base_id}/tables").status_code == 200  # metadata: left alone
    assert get(records, token="wrong").status_code == 401  # who asks is checked first
    emulator.set_monthly_calls_left(None)  # the month turned
    assert get(records).status_code == 200


def test_only_the_billing_limit_429_is_a_spent_month():
    spent = {"error": {"type": "PUBLIC_API_BILLING_LIMIT_EXCEEDED", "message": "m"}}
    assert sync.is_billing_limit(429, spent)
    assert not sync.is_billing_limit(429, {"error": {"type": "RATE_LIMIT_REACHED", "message": "m"}})
    assert not sync.is_billing_limit(429, None) and not sync.is_billing_limit(503, spent)
    assert sync.is_billing_limit(429, {"error": "PUBLIC_API_BILLING_LIMIT_EXCEEDED"})


def test_a_month_spent_midway_stops_at_once_and_the_next_run_finishes_the_job(harness, emulator, capsys, tmp_path):
    without_u12(harness)
    # The first run's data requests: list and create the webhook, read 3 tables, then write Users
    # (2 requests) and the first of Events' two. The next one is refused.
    emulator.set_monthly_calls_left(2 + 3 + 2 + 1)
    assert harness.run() == 1  # records were written before the month ran out
    out, err = capsys.readouterr()
    assert len(lines_with(err, SPENT)) == 1
    [line] = lines_with(err, SPENT)
    assert "wait for the new month, or move the workspace to a plan with more calls" in line.lower()
    assert "Traceback" not in err and "retrying" not in err
    # No retry and no request after the refusal: it is the last thing the emulator saw.
    refused = [r for r in emulator.requests if r.status == 429]
    assert len(refused) == 1 and emulator.requests[-1] is refused[0] and refused[0].table == EVENTS
    report = harness.report()
    assert report["exit_code"] == 1 and SPENT in report["message"]
    assert report["requests"]["retried"] == 0 and report["requests"]["total"] == len(emulator.requests)
    assert SPENT in harness.reports()[-1].with_suffix(".md").read_text()
    figures = {k: (t["created"], t["updated"], t["not_attempted"]) for k, t in report["tables"].items()}
    assert figures == {"users": (9, 8, 0), "events": (4, 0, 4), "messages": (0, 0, 23)}
    # The writes it never made did not fail: the next run makes them.
    assert out.splitlines()[-1].startswith("attention: 27 writes not attempted, ")
    # What was written stays written: the base had 24 users, 10 events and 30 messages.
    assert [len(emulator.records(t)) for t in (USERS, EVENTS, MESSAGES)] == [24 + 9, 10 + 4, 30]

    emulator.set_monthly_calls_left(None)  # the month turned
    assert harness.run() == 0
    assert duplicate_ids(emulator) == PREEXISTING_DUPLICATES
    # The same base as one clean run of the same exports.
    with Emulator(FIXTURES / "base.json", token=TOKEN, rps=None) as fresh:
        (tmp_path / "clean").mkdir()
        clean = new_harness(fresh, tmp_path / "clean")
        without_u12(clean)
        assert clean.run() == 0
        assert base_state(emulator) == base_state(fresh)
        assert [len(emulator.records(t)) for t in (USERS, EVENTS, MESSAGES)] == \
               [len(fresh.records(t)) for t in (USERS, EVENTS, MESSAGES)]
    emulator.clear_log()
    assert harness.run() == 0 and emulator.count(kind="write") == 0


def test_a_month_spent_before_the_run_exits_3_after_one_refused_request(harness, emulator, capsys):
    emulator.set_monthly_calls_left(0)
    assert harness.run() == 3
    err = capsys.readouterr().err
    assert len(lines_with(err, SPENT)) == 1
    # The schema (a metadata call, which a spent month leaves alone), then the first data request.
    assert [(r.kind, r.status) for r in emulator.requests] == [("meta", 200), ("webhook", 429)]
    assert harness.report()["ended"] == "Airtable error" and emulator.count(kind="write") == 0
    emulator.clear_log()
    assert harness.run("--check") == 3
    assert len(lines_with(capsys.readouterr().err, SPENT)) == 1
    assert [r.status for r in emulator.requests][-1] == 429 and emulator.count(status=429) == 1


# ---------------------------------------------------------------------------
# 3. the attention line
# ---------------------------------------------------------------------------


def run_report(tables: dict[str, sync.TableResult], drift: int | None = None, last_30_days: int = 0,
               monthly_calls: int | None = None) -> sync.RunReport:
    report = sync.RunReport(dry_run=False, started=datetime(2026, 5, 1), tables=tables, monthly_calls=monthly_calls)
    report.change_tracking = {"mode": "full", "reason": "r", "payloads": 0, "drift": drift}
    report.requests.last_30_days = last_30_days
    return report


def test_the_attention_line_names_what_needs_a_person():
    report = run_report({"users": sync.TableResult(errors=1, reverted_edits=31, missing_in_airtable=["occupation"])})
    assert sync.attention_line(report) == "attention: 1 failed record, 31 reverted edits, users.occupation missing in Airtable"


def test_the_attention_line_lists_every_kind_in_order():
    report = run_report({
        "users": sync.TableResult(errors=5, not_attempted=3, reverted_edits=1, deletions_held=40,
                                  missing_in_airtable=["occupation"],
                                  renamed_fields=[{"mapped": "role", "airtable": "Role (old)"}],
                                  absent_in_export=["gender"]),
        "events": sync.TableResult(reverted_edits=None, deletions_held=1),
        "messages": sync.TableResult(unresolved_links=5),
    }, drift=3, last_30_days=85_000, monthly_calls=100_000)
    assert sync.attention_line(report) == (
        "attention: 2 failed records, 3 writes not attempted, 41 deletions held by the safety cap, "
        "1 reverted edit, 3 drifted records, "
        "5 unresolved links, users.occupation missing in Airtable, users.role renamed to 'Role (old)', "
        "users.gender absent from the export, API budget at 85% of AIRTABLE_MONTHLY_CALLS=100000")


def test_the_attention_line_is_empty_when_nothing_needs_a_person():
    quiet = sync.TableResult(total=30, created=3, updated=2, skipped=25, orphans=4, reverted_edits=0,
                             unmapped_fields=["__v"], read_only=["updatedAt"], invalid_values=2)
    assert sync.attention_line(run_report({"users": quiet}, drift=0, last_30_days=79, monthly_calls=100)) == ""
    assert sync.attention_line(run_report({"users": sync.TableResult(reverted_edits=None)}, drift=None)) == ""
    assert sync.attention_line(run_report({})) == ""


def test_the_attention_line_counts_a_table_s_fields_past_three():
    missing = ["a", "b", "c", "d", "e"]
    report = run_report({"events": sync.TableResult(missing_in_airtable=missing, absent_in_export=["x", "y", "z"])})
    assert sync.attention_line(report) == ("attention: 5 events fields missing in Airtable, events.x absent from the "
                                           "export, events.y absent from the export, events.z absent from the export")


def test_the_markdown_lists_renamed_fields_and_fields_absent_from_the_export():
    report = run_report({"users": sync.TableResult(renamed_fields=[{"mapped": "occupation", "airtable": "Job"}],
                                                   absent_in_export=["gender", "role"])})
    markdown = report.markdown()
    assert "- Mapped fields renamed in Airtable (still synced): occupation is now 'Job'" in markdown
    assert "- Mapped Mongo fields absent from the export (Airtable keeps its values): gender, role" in markdown
    assert json.loads(json.dumps(report.as_dict()))["tables"]["users"]["renamed_fields"] == [
        {"mapped": "occupation", "airtable": "Job"}]


def test_the_last_line_printed_and_logged_is_the_attention_line(harness, emulator, capsys):
    assert harness.run() == 1
    out = capsys.readouterr().out.splitlines()
    expected = "attention: 1 failed record, 3 unresolved links, events.participant_top_occupations missing in Airtable"
    assert out[-1] == expected and out[-2].startswith("finished with failed records: users: 9 created")
    log = (harness.reports_dir / "airtable_sync.log").read_text().splitlines()
    assert log[-1].endswith(f"WARNING {expected}") and " INFO finished with failed records: users:" in log[-2]
    # Nothing needs a person: no attention line at all.
    without_u12(harness)
    assert harness.run("--tables", "users") == 0
    out = capsys.readouterr().out
    assert "attention" not in out and out.splitlines()[-1].startswith("ok: users: ")


# ---------------------------------------------------------------------------
# 4. a local file that cannot be written
# ---------------------------------------------------------------------------


def spawn_with_file_limit(harness: SyncHarness, limit: int, *flags: str) -> subprocess.CompletedProcess:
    """The sync as a process whose files may not grow past `limit` bytes (RLIMIT_FSIZE, with
    SIGXFSZ ignored, so a write past it fails with EFBIG, as on a full disk: no root needed)."""
    bootstrap = ("import resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
                 f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
                 "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRTABLE_", "MONGODB_"))}
    env.update(harness.env, PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run([sys.executable, "-c", bootstrap, str(ROOT / "airtable_sync.py"), *harness.argv(*flags)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_a_full_disk_exits_74_naming_the_file_and_the_next_run_recovers(harness, emulator):
    without_u12(harness)
    assert harness.run() == 0
    # Two changes in Mongo: a user's name, and a new user.
    users = harness.read_export("users.json")
    changed = sync.mongo_id_of(sync.unwrap_extended_json(users[0]))
    users[0]["firstName"] = "Renamed"
    newcomer = dict(users[1], _id={"$oid": "6a0000000000000000000001"}, email="newcomer@example.com")
    harness.write_export("users.json", users + [newcomer])
    state_before = (harness.cache_dir / sync.STATE_FILE).read_bytes()
    caches_before = {p.name: p.read_bytes() for p in harness.cache_dir.glob("airtable_*.json")}
    emulator.clear_log()

    # Files may not grow past 20,000 bytes: the log, the report and the state fit, the users
    # cache (29 kB) does not.
    done = spawn_with_file_limit(harness, 20_000)
    assert done.returncode == sync.EXIT_IOERR, done.stderr
    [line] = lines_with(done.stderr, "cannot write")
    assert f"cannot write {harness.cache_dir / 'airtable_users.json'}: File too large" in line
    assert "Traceback" not in done.stderr
    assert emulator.count(kind="write", table=USERS) == 2  # the writes landed before the disk filled
    assert stray_files(harness.cache_dir, harness.reports_dir) == []
    # The state still names the snapshot it had: it claims nothing the failed run did not write.
    assert (harness.cache_dir / sync.STATE_FILE).read_bytes() == state_before
    assert {p.name: p.read_bytes() for p in harness.cache_dir.glob("airtable_*.json")} == caches_before
    report = harness.report()
    assert report["exit_code"] == 74 and report["ended"] == "local write failed" and "airtable_users.json" in report["message"]

    # With room again: nothing to write, nothing doubled, and the snapshot is whole.
    emulator.clear_log()
    assert harness.run() == 0
    assert emulator.count(kind="write") == 0
    by_id = Counter(r["fields"].get("id") for r in emulator.records(USERS))
    assert by_id["6a0000000000000000000001"] == 1 and duplicate_ids(emulator) == PREEXISTING_DUPLICATES
    [record] = [r for r in emulator.records(USERS) if r["fields"].get("id") == changed]
    assert record["fields"]["firstName"] == "Renamed"
    cached = {r["id"]: r["fields"] for r in json.loads((harness.cache_dir / "airtable_users.json").read_text())}
    assert set(cached) == {r["id"] for r in emulator.records(USERS)} and cached[record["id"]][field_ids(emulator, USERS)["firstName"]] == "Renamed"
    emulator.clear_log()
    assert harness.run() == 0 and emulator.count(kind="write") == 0


def test_a_full_disk_under_the_runs_temporary_files_exits_74_and_the_next_run_recovers(harness, emulator):
    """An export is never copied: one far larger than the room on the disk is read where it is.
    The records a run writes are kept in a temporary file in the cache dir past
    SCRATCH_IN_MEMORY_BYTES; when that file cannot grow, the run stops with exit 74 naming the
    folder, and the next run finishes with no duplicate."""
    without_u12(harness)
    users = harness.read_export("users.json")
    for user in users:  # long enough that the creates, sent first, fill the disk before any update is archived
        user["summary"] = "x" * 60_000
    harness.write_export("users.json", users)
    assert (harness.mongo_dir / "users.json").stat().st_size > 2 * 200_000 > 2 * sync.SCRATCH_IN_MEMORY_BYTES / 5
    before = Counter(r["fields"].get("id") for r in emulator.records(USERS))
    done = spawn_with_file_limit(harness, 200_000)
    assert done.returncode == sync.EXIT_IOERR, done.stderr
    [line] = lines_with(done.stderr, "cannot write")
    assert f"cannot write {harness.cache_dir / '(a temporary file of this run)'}: File too large" in line
    assert "Traceback" not in done.stderr
    assert emulator.count(kind="write", table=USERS) > 0  # past the exports and the reads: failed on what it wrote
    assert stray_files(harness.cache_dir, harness.reports_dir) == []
    assert harness.run() == 0
    after = Counter(r["fields"].get("id") for r in emulator.records(USERS))
    assert all(after[sync.mongo_id_of(sync.unwrap_extended_json(u))] == max(1, before[sync.mongo_id_of(
        sync.unwrap_extended_json(u))]) for u in users)  # each once (the fixture's base has one twice)


def test_an_export_rewritten_in_place_during_a_run_stops_it_before_any_write(harness, emulator, monkeypatch):
    """The plan reads each record again from the export: an exporter rewriting the file in place
    meanwhile would hand it records other than the ones checked. The run stops with exit 2 and
    writes nothing; a rerun syncs the export as it then is."""
    without_u12(harness)
    users = harness.read_export("users.json")
    users[0]["firstName"] = "Before"
    harness.write_export("users.json", users)
    path = harness.mongo_dir / "users.json"
    read = sync.BaseReader.read

    def rewrite_then_read(self, *args, **kwargs):
        path.write_bytes(path.read_bytes().replace(b'"Before"', b'"Later!"'))  # same inode, same length
        return read(self, *args, **kwargs)

    monkeypatch.setattr(sync.BaseReader, "read", rewrite_then_read)
    assert harness.run() == sync.EXIT_USAGE
    report = harness.report()
    assert report["ended"] == "input error" and emulator.count(kind="write") == 0
    assert report["message"].startswith(f"{path}: the file changed while this run read it (record 1 is not what it was)")
    monkeypatch.setattr(sync.BaseReader, "read", read)
    assert harness.run() == 0
    assert any(r["fields"].get("firstName") == "Later!" for r in emulator.records(USERS))


def test_a_month_spent_midway_on_a_full_disk_says_both(harness, emulator):
    without_u12(harness)
    emulator.set_monthly_calls_left(2 + 3 + 2 + 1)  # as above: the second Events write is refused
    done = spawn_with_file_limit(harness, 20_000)  # and the messages cache (50 kB) cannot be saved
    assert done.returncode == sync.EXIT_IOERR, done.stderr
    assert len(lines_with(done.stderr, SPENT)) == 1
    [line] = lines_with(done.stderr, "cannot write")
    assert str(harness.cache_dir / "airtable_messages.json") in line
    assert emulator.count(status=429) == 1 and emulator.requests[-1].status == 429
    assert not (harness.cache_dir / sync.STATE_FILE).exists()  # the first run's state: never written
    emulator.set_monthly_calls_left(None)
    assert harness.run() == 0 and duplicate_ids(emulator) == PREEXISTING_DUPLICATES
    assert [len(emulator.records(t)) for t in (USERS, EVENTS, MESSAGES)] == [24 + 9, 10 + 4, 30 + 13]


def test_a_deletion_archive_that_cannot_be_written_stops_the_deletes(harness, emulator):
    without_u12(harness)
    assert harness.run() == 0
    messages = harness.read_export("messages.json")
    harness.write_export("messages.json", messages[20:])
    kept = {sync.mongo_id_of(sync.unwrap_extended_json(m)) for m in messages[20:]}
    gone = {r["fields"]["id"] for r in emulator.records(MESSAGES) if r["fields"].get("id")} - kept
    assert len(gone) == 21  # 20, and a record whose Mongo document was never in the export
    emulator.clear_log()

    done = spawn_with_file_limit(harness, 8_000, "--tables", "messages", "--delete-missing", "--force-delete")
    assert done.returncode == sync.EXIT_IOERR, done.stderr
    [line] = lines_with(done.stderr, "cannot write")
    assert f"cannot write {harness.reports_dir}/deleted_" in line and ".jsonl: File too large" in line
    assert emulator.count(method="DELETE") == 0  # nothing deleted that is not archived
    assert list(harness.reports_dir.glob("deleted_*.jsonl")) == []  # no half line left
    assert stray_files(harness.cache_dir, harness.reports_dir) == []

    assert harness.run("--tables", "messages", "--delete-missing", "--force-delete") == 0
    [archive] = harness.reports_dir.glob("deleted_*.jsonl")
    archived = [json.loads(line) for line in archive.read_text().splitlines()]
    assert {r["fields"]["id"] for r in archived} == gone
    assert not gone & {r["fields"].get("id") for r in emulator.records(MESSAGES)}


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_log_file_on_a_full_disk_exits_74_and_the_report_says_so(harness, emulator, capsys):
    harness.reports_dir.mkdir()
    (harness.reports_dir / "airtable_sync.log").symlink_to("/dev/full")  # every write: ENOSPC
    assert harness.run() == sync.EXIT_IOERR
    out, err = capsys.readouterr()
    [line] = lines_with(err, "cannot write")
    assert f"cannot write {harness.reports_dir / 'airtable_sync.log'}: No space left on device" in line
    assert "Logging error" not in err and "Traceback" not in err
    report = harness.report()
    assert report["exit_code"] == 74 and report["ended"] == "local write failed"
    assert report["tables"]["users"]["created"] == 9  # the sync itself ran to its end
    assert out.splitlines()[-2].startswith("local write failed: users: 9 created")


def test_a_report_is_its_two_files_or_neither(tmp_path):
    report = run_report({"users": sync.TableResult()})
    # A folder where the Markdown's tmp file goes: that write fails (EISDIR) after the JSON's.
    blocker = tmp_path / f".sync_report_20260501_000000.md.{os.getpid()}.tmp"
    blocker.mkdir()
    with pytest.raises(sync.LocalWriteError) as raised:
        sync.write_report(report, tmp_path, "secret")
    assert raised.value.path == tmp_path / "sync_report_20260501_000000.md"
    assert list(tmp_path.iterdir()) == [blocker]  # and no JSON without its Markdown


def test_write_private_leaves_the_old_file_and_no_tmp_when_it_fails(tmp_path):
    target = tmp_path / "airtable_users.json"
    target.write_text("old")

    def chunks():
        yield "new, half"
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(sync.LocalWriteError) as raised:
        sync.write_private(target, chunks())
    assert raised.value.errno == errno.ENOSPC and str(target) in str(raised.value)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["airtable_users.json"]
