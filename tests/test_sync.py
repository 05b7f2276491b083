"""End-to-end tests of the sync through pyairtable over HTTP against the local emulator.

The fixtures and their expected outcomes are described in tests/fixtures/README.md;
expected.json and expected_records.json hold them as data.
"""
from __future__ import annotations

import fcntl
import json
import os
import stat
import subprocess
import sys
from collections import Counter


import pytest

import airtable_sync
from conftest import FIXTURES, ROOT, TOKEN, by_field_id, field_ids

EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
EXPECTED_RECORDS = json.loads((FIXTURES / "expected_records.json").read_text())
TABLE_IDS = {"users": "tblQ0OHBit2AqaACy", "events": "tblrscr87h8fbtQTk", "messages": "tbljma5S4NhUn1OYl"}
U12 = next(r for r in EXPECTED_RECORDS["users"]["records"] if r["label"] == "U12")["mongo_id"]
COMPUTED = {"users": {"Full Name", "updatedAt"}, "events": set(), "messages": {"character_count"}}


def by_id(emulator, table):
    """The table's records keyed by their `id` field (records without one under their record id)."""
    out = {}
    for rec in emulator.records(TABLE_IDS[table]):
        out.setdefault(rec["fields"].get("id") or rec["id"], []).append(rec)
    return out


def without_u12(harness):
    users = [u for u in harness.read_export("users.json")
             if airtable_sync.mongo_id_of(airtable_sync.unwrap_extended_json(u)) != U12]
    harness.write_export("users.json", users)


def writes(emulator, table=None):
    return emulator.count(kind="write", table=table and TABLE_IDS[table])


# -- the first sync --------------------------------------------------------------------

def test_first_sync_reports_exactly_the_expected_counts(harness, emulator):
    assert harness.run() == 1  # U12's invalid email fails alone
    report = harness.report()
    for table, expected in EXPECTED.items():
        got = report["tables"][table]
        assert {k: got[k] for k in expected} == expected, table
    assert report["errors"] == [{"table": "users", "mongo_id": U12,
                                 "message": 'INVALID_VALUE_FOR_COLUMN: Field "email" cannot accept the provided value'}]
    assert report["dry_run"] is False and report["ended"] == "finished with failed records"
    # Users: 10 creates = 1 batch, refused (422) then 10 one by one; 8 updates = 1 batch.
    # Events: 4 creates + 4 updates = 2. Messages: 13 creates = 2, 10 updates = 1.
    assert (writes(emulator, "users"), writes(emulator, "events"), writes(emulator, "messages")) == (12, 2, 3)
    # Plus change tracking's first run: list the webhooks, create the tool's one.
    assert report["requests"] == {"total": 23, "read": 5, "write": 18, "retried": 0, "rate_limited": 0,
                                  "last_30_days": 23}
    assert emulator.count(kind="read") == 3 and emulator.count(kind="meta") == 1
    assert [(r.method, r.status) for r in emulator.requests if r.kind == "webhook"] == [("GET", 200), ("POST", 200)]
    assert report["change_tracking"] == {"mode": "full", "reason": "no change-tracking state yet", "payloads": 0,
                                         "drift": None}
    creates = [r for r in emulator.requests if r.kind == "write" and r.method != "PATCH" or
               (r.body or {}).get("performUpsert")]
    # Merged on the `id` field by its field id, which a person renaming the column does not change.
    assert all(r.body["performUpsert"] == {"fieldsToMergeOn": [field_ids(emulator, r.table)["id"]]}
               and r.body["typecast"] and r.body["returnFieldsByFieldId"] for r in creates)


def test_first_sync_gives_exactly_the_expected_base(harness, emulator):
    harness.run()
    for table in ("users", "events", "messages"):
        records = by_id(emulator, table)
        created_ids = {}
        for expected in EXPECTED_RECORDS[table]["records"]:
            if expected["outcome"] == "created":
                assert len(records.get(expected["mongo_id"], [])) == 1, expected["label"]
                created_ids[expected["mongo_id"]] = records[expected["mongo_id"]][0]["id"]
        for expected in EXPECTED_RECORDS[table]["records"]:
            label, outcome = expected["label"], expected["outcome"]
            if outcome == "error":
                assert expected["mongo_id"] not in records, label
                continue
            if outcome == "created":
                [record] = records[expected["mongo_id"]]
            else:  # U08's id is on two records: the first listed is the one matched
                [record] = [r for r in records[expected["mongo_id"]] if r["id"] == expected["airtable_id"]]
            wanted = expected["values"] if outcome == "created" else expected.get("changes", {})
            for name, value in wanted.items():
                got = record["fields"].get(name)
                if isinstance(value, list) and value and str(value[0]).startswith("<record created"):
                    target_table, target = {"Users": "users", "Events": "events"}[name], value[0].split()[-1][:-1]
                    [linked] = by_id(emulator, target_table)[target]
                    value = [linked["id"]]
                if value in (None, "", [], False):
                    assert got in (None, "", [], False), (label, name, got)
                else:
                    assert got == value, (label, name, got, value)
        orphans = EXPECTED_RECORDS[table]["orphans"]
        all_records = {r["id"]: r for r in emulator.records(TABLE_IDS[table])}
        snapshot = {r["id"]: r for t in json.loads((FIXTURES / "base.json").read_text())["tables"]
                    if t["id"] == TABLE_IDS[table] for r in t["records"]}
        for orphan in orphans:
            rec_id = orphan["airtable_id"] if isinstance(orphan, dict) else orphan
            got = {k: v for k, v in all_records[rec_id]["fields"].items() if k not in COMPUTED[table]}
            before = {k: v for k, v in snapshot[rec_id]["fields"].items() if k not in COMPUTED[table]}
            assert got == before, rec_id  # orphans are never changed


def test_message_links_resolve_to_records_matched_or_created_in_the_same_run(harness, emulator):
    harness.run()
    users = {rec["id"]: rec["fields"].get("id") for rec in emulator.records(TABLE_IDS["users"])}
    events = {rec["id"]: rec["fields"].get("id") for rec in emulator.records(TABLE_IDS["events"])}
    docs = [airtable_sync.unwrap_extended_json(d) for d in harness.read_export("messages.json")]
    exported = {airtable_sync.mongo_id_of(d): d for d in docs}
    checked = 0
    for mongo_id, [message] in by_id(emulator, "messages").items():
        doc = exported.get(mongo_id)
        if doc is None:
            continue
        user_ref = doc.get("user_id") or doc.get("senderId")
        event_ref = doc.get("event_id") or doc.get("eventId")
        if user_ref and user_ref in users.values():
            assert [users[r] for r in message["fields"]["Users"]] == [user_ref], mongo_id
            checked += 1
        if event_ref and event_ref in events.values():
            assert [events[r] for r in message["fields"]["Events"]] == [event_ref], mongo_id
            checked += 1
    assert checked >= 60


def test_no_duplicates_after_the_first_sync(harness, emulator):
    harness.run()
    for table in TABLE_IDS:
        ids = Counter(r["fields"].get("id") for r in emulator.records(TABLE_IDS[table]) if r["fields"].get("id"))
        duplicated = {k for k, n in ids.items() if n > 1}
        assert duplicated == ({"668a834093b270c043a655ee"} if table == "users" else set())  # U08, in the base


# -- reruns ------------------------------------------------------------------------------

def test_a_rerun_with_no_changes_writes_nothing(harness, emulator):
    without_u12(harness)
    assert harness.run() == 0
    emulator.clear_log()
    assert harness.run() == 0
    assert writes(emulator) == 0
    report = harness.report()
    # The change feed: one request to check the webhook, one page of payloads (the first run's
    # own 7 write requests, which change nothing when replayed).
    assert report["requests"] == {"total": 2, "read": 2, "write": 0, "retried": 0, "rate_limited": 0,
                                  "last_30_days": 15}  # and the first run's 13
    assert report["change_tracking"]["mode"] == "webhook" and report["change_tracking"]["payloads"] == 7
    assert {t: (v["created"], v["updated"], v["skipped"], v["reverted_edits"])
            for t, v in report["tables"].items()} == {
        "users": (0, 0, 29, 0), "events": (0, 0, 12, 0), "messages": (0, 0, 40, 0)}


def test_the_failed_record_is_retried_on_the_next_run_alone(harness, emulator):
    harness.run()
    emulator.clear_log()
    assert harness.run() == 1
    assert writes(emulator) == 1
    assert harness.report()["tables"]["users"]["errors"] == 1


def test_changing_five_percent_of_records_updates_exactly_those(harness, emulator):
    without_u12(harness)
    assert harness.run() == 0
    users = harness.read_export("users.json")
    events = harness.read_export("events.json")
    messages = harness.read_export("messages.json")
    changed = {"users": [0, 7], "events": [3], "messages": [5]}  # 4 of 81 records, about 5%
    for i in changed["users"]:
        users[i]["occupation"] = f"Sommelier {i}"
    for i in changed["events"]:
        events[i]["maxCapacity"] = 99
    for i in changed["messages"]:
        messages[i]["status"] = "sent" if messages[i].get("status") != "sent" else "approved"
    harness.write_export("users.json", users)
    harness.write_export("events.json", events)
    harness.write_export("messages.json", messages)
    emulator.clear_log()
    assert harness.run() == 0
    report = harness.report()
    assert {t: (v["created"], v["updated"]) for t, v in report["tables"].items()} == {
        "users": (0, 2), "events": (0, 1), "messages": (0, 1)}
    assert report["requests"]["write"] == 3
    patches = [r for r in emulator.requests if r.kind == "write"]
    names = {t: {i: n for n, i in field_ids(emulator, t).items()} for t in TABLE_IDS.values()}
    sent = {r.table: [(rec["id"], sorted(names[r.table][k] for k in rec["fields"])) for rec in r.body["records"]]
            for r in patches}
    assert [f for _, f in sent[TABLE_IDS["users"]]] == [["occupation"], ["occupation"]]
    assert [f for _, f in sent[TABLE_IDS["events"]]] == [["maxCapacity"]]
    assert [f for _, f in sent[TABLE_IDS["messages"]]] == [["status"]]


# -- modes -------------------------------------------------------------------------------

def test_dry_run_writes_nothing_and_reports_the_plan(harness, emulator):
    before = emulator.snapshot()
    assert harness.run("--dry-run") == 0
    assert writes(emulator) == 0
    assert emulator.snapshot() == before
    report = harness.report()
    assert report["dry_run"] is True
    planned = {t: (v["created"], v["updated"], v["skipped"], v["unresolved_links"]) for t, v in report["tables"].items()}
    # U12's 422 cannot be foreseen: a dry run counts it as a create.
    assert planned == {"users": (10, 8, 12, 0), "events": (4, 4, 4, 0), "messages": (13, 10, 17, 3)}
    assert report["requests"]["write"] == 0
    markdown = harness.reports()[-1].with_suffix(".md").read_text()
    assert "dry run (nothing written)" in markdown and "would create 27" in markdown


def test_limit_and_tables_restrict_the_run(harness, emulator):
    assert harness.run("--tables", "events", "--limit", "3") == 0
    report = harness.report()
    assert list(report["tables"]) == ["events"]
    assert report["tables"]["events"]["total"] == 3
    assert writes(emulator, "users") == 0 and writes(emulator, "messages") == 0


def test_messages_alone_still_resolve_links_against_users_and_events(harness, emulator):
    assert harness.run("--tables", "messages") == 0
    report = harness.report()
    assert list(report["tables"]) == ["messages"]
    # Users and Events are read for the links but not written; links to users and
    # events that this run did not create stay unresolved.
    assert emulator.count(kind="read", table=TABLE_IDS["users"]) == 1
    assert writes(emulator, "users") == writes(emulator, "events") == 0
    assert report["tables"]["messages"]["unresolved_links"] > EXPECTED["messages"]["unresolved_links"]


def test_use_cache_reuses_the_cache_and_a_rerun_does_not_duplicate(harness, emulator):
    without_u12(harness)
    assert harness.run("--use-cache") == 0  # no cache yet: pulls
    emulator.clear_log()
    assert harness.run("--use-cache") == 0
    assert emulator.count(kind="read") == 0 and emulator.count(kind="meta") == 1
    assert writes(emulator) == 0
    for table in TABLE_IDS:
        cached = json.loads((harness.cache_dir / f"airtable_{table}.json").read_text())
        assert sorted(r["id"] for r in cached) == sorted(r["id"] for r in emulator.records(TABLE_IDS[table]))


def test_a_stale_cache_does_not_duplicate_creates(harness, emulator):
    """Caches that predate every record (empty): each create is an upsert merged on `id`,
    so it lands on the record that is already there, and the report calls it an update."""
    without_u12(harness)
    assert harness.run() == 0
    before = {t: len(emulator.records(TABLE_IDS[t])) for t in TABLE_IDS}
    for t in TABLE_IDS:
        airtable_sync.write_cache(harness.cache_dir / f"airtable_{t}.json", airtable_sync.TableSnapshot.of([]))
    emulator.clear_log()
    # U08's id is on two Airtable records: its upsert matches both, and Airtable refuses it
    # rather than pick one; it fails alone (its batch is retried record by record).
    assert harness.run("--use-cache", "--tables", "users") == 1
    assert {t: len(emulator.records(TABLE_IDS[t])) for t in TABLE_IDS} == before
    run = harness.report()
    report = run["tables"]["users"]
    assert (report["created"], report["updated"], report["errors"], report["planned"]["create"]) == (0, 28, 1, 29)
    assert [e["mongo_id"] for e in run["errors"]] == ["668a834093b270c043a655ee"]
    assert emulator.count(kind="write") == 3 + 10 and emulator.count(kind="read") == 0


def test_caches_are_private(harness):
    harness.run()
    for table in TABLE_IDS:
        mode = stat.S_IMODE((harness.cache_dir / f"airtable_{table}.json").stat().st_mode)
        assert mode == 0o600


def test_check_compares_the_mapping_with_the_schema_and_writes_nothing(harness, emulator, capsys):
    assert harness.run("--check") == 0
    out = capsys.readouterr().out
    assert "users (tblQ0OHBit2AqaACy): reachable" in out
    assert "updatedAt" in out and "computed (lastModifiedTime): never written" in out
    assert "participant_top_occupations" in out and "missing in Airtable" in out
    assert "ok (email)" in out and "character_count" in out
    assert writes(emulator) == 0
    assert not harness.reports_dir.exists() or not list(harness.reports_dir.glob("sync_report_*"))


# -- exit codes (the full set, with faults, is in test_faults.py) ------------------------

def test_a_missing_export_skips_its_table_with_a_warning(harness, emulator, caplog):
    (harness.mongo_dir / "events.json").unlink()
    assert harness.run() == 1  # U12 still fails
    report = harness.report()
    assert report["tables"]["events"]["total"] == 0 and "events.json not found" in report["tables"]["events"]["note"]
    assert writes(emulator, "events") == 0


def test_a_second_run_while_the_lock_is_held_exits_at_once(harness, emulator):
    harness.cache_dir.mkdir(parents=True, exist_ok=True)
    with open(harness.cache_dir / ".airtable_sync.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert harness.run() == airtable_sync.EXIT_LOCKED
    assert emulator.requests == []
    assert not harness.reports_dir.exists() or not harness.reports()


# -- outputs -------------------------------------------------------------------------------

def test_info_logs_name_records_by_id_and_never_leak_values_or_the_token(harness, emulator, capsys):
    harness.run()
    streams = capsys.readouterr()
    log_text = (harness.reports_dir / "airtable_sync.log").read_text()
    assert U12 in log_text
    for text in (streams.out, streams.err, log_text):
        assert "not-an-email" not in text and "maria.lopez@example.com" not in text
        assert TOKEN not in text


def test_the_token_never_appears_in_any_output_file(harness, emulator, capsys):
    harness.run("-v")
    streams = capsys.readouterr()
    assert TOKEN not in streams.out + streams.err
    for folder in (harness.reports_dir, harness.cache_dir):
        for path in folder.rglob("*"):
            if path.is_file():
                assert TOKEN not in path.read_text(errors="replace"), path


def test_markdown_report_leads_with_a_summary(harness):
    harness.run()
    markdown = harness.reports()[-1].with_suffix(".md").read_text()
    lines = markdown.splitlines()
    assert lines[0].startswith("# Airtable sync report")
    assert "created 26" in lines[2] and "1 failed" in lines[2]
    assert "| table | total | created | updated | skipped | errors | orphans | deleted | deletions held | " \
           "reverted edits | unresolved links | invalid values |" in markdown
    assert "| users | 30 | 9 | 8 | 12 | 1 | 4 | 0 | 0 | - | 0 | 2 |" in markdown  # no reverted edits on a full read
    assert "Read every record (no change-tracking state yet); 0 payloads." in markdown
    assert "Orphans (in Airtable, in no export): 4: rec" in markdown
    assert U12 in markdown and "participant_top_occupations" in markdown


# -- the demo ------------------------------------------------------------------------------

def test_the_demo_runs_from_the_repository_with_no_token(tmp_path):
    repo_outputs = lambda: sorted((ROOT / "reports").iterdir()) + sorted((ROOT / "data").iterdir())  # noqa: E731
    before = repo_outputs()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRTABLE_")}
    env["TMPDIR"] = str(tmp_path)
    result = subprocess.run([sys.executable, str(ROOT / "airtable_sync.py"), "--demo"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "First run: exit 1; users: 9 created, 8 updated, 12 skipped, 1 failed" in result.stdout
    # The second run reads the change feed: 2 reads, and the one write that retries the bad user.
    assert "Second run, the exports unchanged: exit 1;" in result.stdout
    assert "3 requests (2 read, 1 write; change feed, " in result.stdout
    report = [line.split(": ", 1)[1] for line in result.stdout.splitlines() if line.startswith("Report: ")][0]
    assert report.startswith(str(tmp_path)) and os.path.isfile(report)
    assert repo_outputs() == before  # nothing outside the temporary folder was touched


def test_back_to_back_processes_share_the_rate_limit(harness, emulator, tmp_path):
    """`--check` and then the sync in two processes still stay under 5 requests a second."""
    emulator.set_rate_limit(5, penalty_s=30)
    env = {**os.environ, **harness.env, "AIRTABLE_MAX_RPS": "5"}
    without_u12(harness)
    for flags in (["--check"], []):
        result = subprocess.run([sys.executable, str(ROOT / "airtable_sync.py"), *harness.argv(*flags)],
                                env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
    assert emulator.count(status=429) == 0
    arrivals = [r.t_start for r in emulator.requests]
    # check: schema, 3 reads, the webhook list; sync: the same, the webhook's create, 7 writes
    assert len(arrivals) == 5 + 6 + 7
    assert max(sum(1 for t in arrivals if a - 1.0 < t <= a) for a in arrivals) <= 5


def test_records_without_an_id_are_created_apart_and_found_again_by_key(harness, emulator):
    without_u12(harness)
    users = harness.read_export("users.json")
    users.append({"email": "no.id.one@example.com", "firstName": "Noa"})
    users.append({"email": "No.Id.Two@example.com", "firstName": "Ida"})
    users.append({"_id": {"$oid": "6a0000000000000000000001"}, "email": "with.id@example.com"})
    harness.write_export("users.json", users)
    assert harness.run("--tables", "users") == 0
    user_writes = [r for r in emulator.requests if r.kind == "write" and r.table == TABLE_IDS["users"]]
    upserts = [r for r in user_writes if r.method == "PATCH" and r.body.get("performUpsert")]
    plain = [r for r in user_writes if r.method == "POST"]
    assert [r.records for r in upserts] == [10] and [r.records for r in plain] == [2]
    emulator.clear_log()
    assert harness.run("--tables", "users") == 0
    assert writes(emulator) == 0
    emails = Counter(r["fields"].get("email") for r in emulator.records(TABLE_IDS["users"]))
    assert emails["no.id.one@example.com"] == 1 and emails["No.Id.Two@example.com"] == 1


def test_the_token_is_masked_in_reports_even_when_an_error_quotes_it(harness, emulator, capsys):
    emulator.add_fault(kind="meta", status=400, times=None,
                       body={"error": {"type": "PROXY_ERROR", "message": f"rejected header: Bearer {TOKEN}"}})
    assert harness.run(env={"AIRTABLE_MAX_RETRIES": "0"}) == 3
    report_files = list(harness.reports_dir.glob("sync_report_*"))
    assert len(report_files) == 2
    for path in report_files:
        text = path.read_text()
        assert TOKEN not in text and "[token]" in text
    streams = capsys.readouterr()
    assert TOKEN not in streams.out + streams.err


def test_unusable_folders_are_one_line_usage_errors(harness, emulator, capsys):
    blocker = harness.tmp / "a-file"
    blocker.write_text("")
    assert airtable_sync.main(["--mongo-dir", str(harness.mongo_dir), "--cache-dir", str(blocker / "data"),
                               "--reports-dir", str(harness.reports_dir)], environ=harness.env) == 2
    assert "cache folder" in capsys.readouterr().err
    assert airtable_sync.main(["--mongo-dir", str(harness.mongo_dir), "--cache-dir", str(harness.cache_dir),
                               "--reports-dir", str(blocker / "reports")], environ=harness.env) == 2
    err = capsys.readouterr().err
    assert "reports folder" in err and "Traceback" not in err
    assert emulator.requests == []


def test_an_internal_error_is_one_line_a_report_and_exit_70(harness, emulator, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(airtable_sync, "plan_table", broken)
    assert harness.run() == airtable_sync.EXIT_CRASH
    report = harness.report()
    assert report["ended"] == "crashed" and "KeyError" in report["message"]
    err = capsys.readouterr().err
    assert "internal error: KeyError" in err and "Traceback" not in err
    assert emulator.count(kind="write") == 0


def test_a_stale_cache_never_hands_a_legacy_record_to_another_mongo_record(harness, emulator):
    """U06 and U07 share an email; the first sync gave the legacy record to U06. With a stale
    cache (taken before that sync) and U07 now first in the export, a natural-key match made
    against the cache would give U06's record to U07. Those matches are made against a fresh pull."""
    without_u12(harness)
    # The base before any write, as the tool's caches hold it.
    stale = {t: json.dumps(by_field_id(emulator, TABLE_IDS[t], emulator.records(TABLE_IDS[t]))) for t in TABLE_IDS}
    assert harness.run() == 0
    users = harness.read_export("users.json")
    labels = {r["mongo_id"]: r["label"] for r in EXPECTED_RECORDS["users"]["records"]}
    order = [labels.get(airtable_sync.mongo_id_of(airtable_sync.unwrap_extended_json(u))) for u in users]
    u06, u07 = order.index("U06"), order.index("U07")
    users[u06], users[u07] = users[u07], users[u06]
    harness.write_export("users.json", users)
    before = {t: sorted((r["id"], json.dumps(r["fields"], sort_keys=True))
                        for r in emulator.records(TABLE_IDS[t])) for t in TABLE_IDS}
    for t, text in stale.items():
        (harness.cache_dir / f"airtable_{t}.json").write_text(text)
    emulator.clear_log()
    assert harness.run("--use-cache") == 0
    assert writes(emulator) == 0  # nothing changed, nothing written
    assert emulator.count(kind="read", table=TABLE_IDS["users"]) == 1  # re-pulled for the key matches
    after = {t: sorted((r["id"], json.dumps(r["fields"], sort_keys=True))
                       for r in emulator.records(TABLE_IDS[t])) for t in TABLE_IDS}
    assert after == before


def test_a_second_export_record_with_one_id_fails_alone_and_claims_no_typed_row(harness, emulator):
    """Two exported users share a Mongo id; the second carries the email of a row a person typed
    (no id). Matching it by key would write that id into a second row: it fails alone, named by
    its Mongo id, and the typed row stays an orphan."""
    without_u12(harness)
    typed = emulator.client.create(TABLE_IDS["users"], {"email": "typed.by.hand@example.com", "firstName": "Tia"})
    users = harness.read_export("users.json")
    users.append({**users[0], "email": "typed.by.hand@example.com", "firstName": "Dup"})
    harness.write_export("users.json", users)
    assert harness.run("--tables", "users") == 1
    report = harness.report()
    mongo_id = airtable_sync.mongo_id_of(users[0])
    assert [(e["mongo_id"], "duplicate id" in e["message"]) for e in report["errors"]] == [(mongo_id, True)]
    assert {"record_id": typed, "mongo_id": None} in report["tables"]["users"]["orphan_records"]
    holders = [r for r in emulator.records(TABLE_IDS["users"]) if r["fields"].get("id") == mongo_id]
    assert len(holders) == 1
    assert next(r for r in emulator.records(TABLE_IDS["users"]) if r["id"] == typed)["fields"].get("id") is None


def test_a_bug_under_check_exits_70_in_one_line_with_the_traceback_in_the_log(harness, emulator, capsys):
    """A metadata answer pydantic cannot read (a field with no name or type) is a bug's path:
    --check ends as a sync does, not with a traceback and exit 1."""
    schema = {"tables": [{"id": TABLE_IDS["users"], "name": "Users", "primaryFieldId": "fldX",
                          "fields": [{"id": "fldX"}], "views": []}]}
    for flags in (["--check"], []):
        emulator.add_fault(kind="meta", status=200, body=schema, times=1)
        assert harness.run(*flags) == airtable_sync.EXIT_CRASH
        err = capsys.readouterr().err
        assert "Traceback" not in err
        [line] = [line for line in err.splitlines() if "ERROR" in line]
        assert "internal error" in line and str(harness.reports_dir / "airtable_sync.log") in line
    assert "Traceback" in (harness.reports_dir / "airtable_sync.log").read_text()


@pytest.mark.parametrize("verbose", [False, True])
def test_a_bug_s_traceback_in_the_log_never_holds_the_token_and_its_values_only_with_v(
        harness, emulator, monkeypatch, capsys, verbose):
    def broken(self):
        raise KeyError("maria.lopez" + "@example.com " + TOKEN)  # not as written here: the traceback quotes code

    monkeypatch.setattr(airtable_sync.SyncWriter, "apply", broken)
    assert harness.run(*(["-v"] if verbose else [])) == airtable_sync.EXIT_CRASH
    log = (harness.reports_dir / "airtable_sync.log").read_text()
    streams = capsys.readouterr()
    assert "Traceback (most recent call last" in log and "in broken" in log and "KeyError" in log  # where it was
    assert TOKEN not in log + streams.out + streams.err
    assert (log.count("maria.lopez@example.com") > 1) is verbose  # beyond the one line: only with -v
    assert ("Traceback" in streams.err) is verbose
