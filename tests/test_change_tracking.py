"""Change tracking end to end: the sync reads Airtable's change feed (the emulator's webhooks)
between full reads, through pyairtable over HTTP. Each test checks the base itself, not only the
report: the feed is only as good as the base it leaves."""
from __future__ import annotations

import json
import signal
import stat
from datetime import datetime, timedelta

import pytest

import airtable_sync as sync
from airtable_emulator import Emulator
from conftest import FIXTURES, TOKEN, field_ids, make_env
from test_faults import base_state, new_harness, spawn, wait_for, writes
from test_sync import without_u12

USERS, EVENTS, MESSAGES = "tblQ0OHBit2AqaACy", "tblrscr87h8fbtQTk", "tbljma5S4NhUn1OYl"
NO_WEBHOOKS = ("data.records:read", "data.records:write", "schema.bases:read")


def mongo_id(doc: dict) -> str:
    return sync.mongo_id_of(sync.unwrap_extended_json(doc))


def state_of(harness) -> dict:
    return json.loads((harness.cache_dir / "airtable_state.json").read_text())


def tracking(harness) -> dict:
    return harness.report()["change_tracking"]


def by_mongo_id(emulator, table) -> dict:
    return {r["fields"]["id"]: r for r in emulator.records(table) if r["fields"].get("id")}


def synced(harness, emulator, key) -> dict:
    """The records of a table that its export names (not the orphans the fixtures hold)."""
    exported = {mongo_id(doc) for doc in harness.read_export(sync.TABLE_SPECS[key].export_file)}
    table = {"users": USERS, "events": EVENTS, "messages": MESSAGES}[key]
    return {k: v for k, v in by_mongo_id(emulator, table).items() if k in exported}


def clean_start(harness):
    """The fixtures without the one user whose email Airtable refuses: every run exits 0."""
    without_u12(harness)
    assert harness.run() == 0
    assert tracking(harness)["mode"] == "full"


def reference_state(tmp_path_factory, exports: dict[str, list]) -> dict:
    """The base a clean full-read sync of these exports gives, on a fresh emulator."""
    with Emulator(FIXTURES / "base.json", token=TOKEN, rps=None) as emu:
        h = new_harness(emu, tmp_path_factory.mktemp("reference"))
        for name, docs in exports.items():
            h.write_export(name, docs)
        h.run(env={"AIRTABLE_CHANGE_TRACKING": "off"})
        return base_state(emu)


def run_on_the_feed_alone(harness, emulator, tmp_path_factory) -> dict:
    """A run that reads only the change feed (not one page of records) and leaves the base a
    clean full-read sync of the same exports would; its report."""
    emulator.clear_log()
    assert harness.run() == 0
    report = harness.report()
    assert report["change_tracking"]["mode"] == "webhook", report["change_tracking"]
    assert emulator.count(kind="read") == 0
    assert base_state(emulator) == reference_state(tmp_path_factory, exports_of(harness))
    return report


def exports_of(harness) -> dict[str, list]:
    return {name: harness.read_export(name) for name in ("users.json", "events.json", "messages.json")}


# -- cost ----------------------------------------------------------------------------------

def test_a_quiet_night_after_a_quiet_night_makes_two_requests(harness, emulator):
    clean_start(harness)
    assert harness.run() == 0  # reads the first run's own writes back from the feed
    assert tracking(harness)["mode"] == "webhook" and tracking(harness)["payloads"] > 0
    emulator.clear_log()
    assert harness.run() == 0
    assert [(r.method, r.path.rsplit("/", 1)[-1]) for r in emulator.requests] == [("GET", "webhooks"),
                                                                                   ("GET", "payloads")]
    report = harness.report()
    assert report["requests"]["total"] == 2 and report["requests"]["write"] == 0
    assert report["change_tracking"] == {"mode": "webhook", "reason": report["change_tracking"]["reason"],
                                         "payloads": 0, "drift": None}
    assert all(t["reverted_edits"] == 0 for t in report["tables"].values())


def test_a_quiet_night_does_not_rewrite_the_caches(harness):
    clean_start(harness)
    harness.run()  # the first run's own payloads: the snapshot is unchanged, so are its files
    before = {p.name: p.stat().st_mtime_ns for p in harness.cache_dir.glob("airtable_*.json")}
    assert harness.run() == 0
    after = {p.name: p.stat().st_mtime_ns for p in harness.cache_dir.glob("airtable_*.json")}
    assert {k: v for k, v in after.items() if k != "airtable_state.json"} == \
        {k: v for k, v in before.items() if k != "airtable_state.json"}


def test_mongo_changes_are_applied_exactly_from_the_feed(harness, emulator, tmp_path_factory):
    clean_start(harness)
    users = harness.read_export("users.json")
    users[0]["firstName"] = "Renamed"
    users[1]["event_count"] = 99
    users.append({"_id": {"$oid": "6a00000000000000000000aa"}, "email": "new.user@example.com", "firstName": "Neo"})
    harness.write_export("users.json", users)
    events = harness.read_export("events.json")
    events[0]["description"] = "A new description"
    harness.write_export("events.json", events)
    emulator.clear_log()
    assert harness.run() == 0
    report = harness.report()
    assert report["change_tracking"]["mode"] == "webhook"
    assert (report["tables"]["users"]["created"], report["tables"]["users"]["updated"]) == (1, 2)
    assert (report["tables"]["events"]["created"], report["tables"]["events"]["updated"]) == (0, 1)
    # The feed (2 reads), then users' upsert and update (creates and updates are never mixed), events' update.
    assert report["requests"]["read"] == 2 and report["requests"]["write"] == 3
    assert base_state(emulator) == reference_state(tmp_path_factory, exports_of(harness))
    emulator.clear_log()
    assert harness.run("--full") == 0
    assert writes(emulator) == [] and tracking(harness)["drift"] == 0


# -- people editing Airtable ------------------------------------------------------------------

def test_a_persons_edits_deletes_and_typed_rows_are_put_right_from_the_feed_alone(harness, emulator,
                                                                                   tmp_path_factory):
    clean_start(harness)
    assert harness.run() == 0  # settle the first run's own payloads
    users, events, messages = (synced(harness, emulator, t) for t in ("users", "events", "messages"))
    # Deleted: records the first sync created, so that Mongo holds all they had (a legacy row's
    # hand-typed cells would be lost with it, and a clean run would keep them).
    legacy_ids = {r["id"] for t in json.loads((FIXTURES / "base.json").read_text())["tables"] for r in t["records"]}
    edited_user = sorted(users)[0]
    linked_users = {rid for m in messages.values() for rid in m["fields"].get("Users", [])}
    deleted_user = next(k for k in sorted(users) if users[k]["id"] not in legacy_ids and k != edited_user
                        and users[k]["id"] in linked_users)
    edited_event = sorted(events)[0]
    linked = [m for m in messages.values() if m["fields"].get("Users")]
    cleared_message = linked[0]
    deleted_message = next(m for m in linked[1:] if m["id"] not in legacy_ids)
    emulator.client.update(USERS, users[edited_user]["id"], {"firstName": "Typo", "occupation": "Edited"})
    emulator.client.update(EVENTS, events[edited_event]["id"], {"location": "Somewhere else"})
    emulator.client.update(MESSAGES, cleared_message["id"], {"Users": []})
    emulator.client.delete(USERS, [users[deleted_user]["id"]])  # Airtable clears its messages' links too
    emulator.client.delete(MESSAGES, [deleted_message["id"]])
    # A legacy row typed by hand, whose email a new Mongo user has: claimed, not doubled.
    legacy = emulator.client.create(USERS, {"email": "walk.in@example.com", "firstName": "Wally"})
    export = harness.read_export("users.json")
    export.append({"_id": {"$oid": "6a00000000000000000000bb"}, "email": "Walk.In@example.com",
                   "firstName": "Wally"})
    harness.write_export("users.json", export)
    linked_to_deleted = {m["id"] for m in messages.values() if users[deleted_user]["id"] in m["fields"].get("Users", [])}
    linked_to_deleted.discard(deleted_message["id"])
    linked_to_deleted.discard(cleared_message["id"])
    assert linked_to_deleted  # the deleted user's messages lose their link in Airtable

    report = run_on_the_feed_alone(harness, emulator, tmp_path_factory)
    after = by_mongo_id(emulator, USERS)
    assert after["6a00000000000000000000bb"]["id"] == legacy  # the typed row was claimed
    assert after[deleted_user]["id"] != users[deleted_user]["id"]  # re-created
    assert by_mongo_id(emulator, MESSAGES)[cleared_message["fields"]["id"]]["fields"]["Users"]
    t = report["tables"]
    assert (t["users"]["reverted_edits"], t["events"]["reverted_edits"]) == (1, 1)
    # The cleared link, and the links Airtable cleared when the user was deleted.
    assert t["messages"]["reverted_edits"] == 1 + len(linked_to_deleted)
    log = (harness.reports_dir / "airtable_sync.log").read_text()
    assert f"(record {users[edited_user]['id']}): set back firstName, occupation, edited in Airtable" in log
    assert "Typo" not in log
    assert harness.run("--full") == 0 and tracking(harness)["drift"] == 0


def test_without_webhook_access_every_run_reads_in_full_and_ends_the_same(tmp_path, tmp_path_factory):
    with Emulator(FIXTURES / "base.json", token=TOKEN, rps=None, scopes=NO_WEBHOOKS) as emu:
        h = new_harness(emu, tmp_path)
        without_u12(h)
        for _ in range(2):
            emu.clear_log()
            assert h.run() == 0
            assert tracking(h)["mode"] == "full" and "may not manage webhooks" in tracking(h)["reason"]
            assert [r.status for r in emu.requests if r.kind == "webhook"] == [403]
            assert emu.count(kind="read") == 3
        log = (h.reports_dir / "airtable_sync.log").read_text()
        assert len([line for line in log.splitlines() if "change tracking unavailable" in line]) == 2
        assert base_state(emu) == reference_state(tmp_path_factory, exports_of(h))


def test_check_says_whether_change_tracking_is_available_and_creates_nothing(harness, emulator, capsys):
    assert harness.run("--check") == 0
    assert "change tracking: available" in capsys.readouterr().out
    assert emulator.webhooks() == []
    with Emulator(FIXTURES / "base.json", token=TOKEN, rps=None, scopes=NO_WEBHOOKS) as emu:
        assert sync.main(harness.argv("--check"), environ=make_env(emu)) == 0
        assert "change tracking: unavailable: the token may not manage webhooks" in capsys.readouterr().out


# -- when a run reads in full --------------------------------------------------------------------

def age_state(harness, days):
    data = state_of(harness)
    for key in ("last_run", "last_full_read"):
        data[key] = (datetime.fromisoformat(data[key]) - timedelta(days=days)).isoformat()
    (harness.cache_dir / "airtable_state.json").write_text(json.dumps(data))


def test_after_8_days_without_a_run_the_run_reads_in_full_and_keeps_one_webhook(harness, emulator):
    clean_start(harness)
    old = state_of(harness)["webhook_id"]
    emulator.advance_clock(days=8)
    age_state(harness, 8)
    users = harness.read_export("users.json")
    users[0]["firstName"] = "Eight days later"
    harness.write_export("users.json", users)
    assert harness.run() == 0
    assert tracking(harness)["mode"] == "full" and "8.0 days old" in tracking(harness)["reason"]
    assert by_mongo_id(emulator, USERS)[mongo_id(users[0])]["fields"]["firstName"] == "Eight days later"
    hooks = [h for h in emulator.webhooks() if h["isHookEnabled"]]
    assert [h["id"] for h in hooks] == [state_of(harness)["webhook_id"]] and hooks[0]["id"] != old
    assert old not in {h["id"] for h in emulator.webhooks()}  # the expired one was deleted, not left
    assert harness.run() == 0 and tracking(harness)["mode"] == "webhook"


def test_the_weekly_full_read_refreshes_and_keeps_the_webhook(harness, emulator):
    clean_start(harness)
    hook = state_of(harness)["webhook_id"]
    data = state_of(harness)
    data["last_full_read"] = (datetime.fromisoformat(data["last_full_read"]) - timedelta(days=7, hours=1)).isoformat()
    (harness.cache_dir / "airtable_state.json").write_text(json.dumps(data))
    assert harness.run() == 0
    assert "the last full read is 7.0 days old" in tracking(harness)["reason"]
    assert tracking(harness)["drift"] == 0 and state_of(harness)["webhook_id"] == hook
    assert [h["id"] for h in emulator.webhooks()] == [hook]


@pytest.mark.parametrize("how, reason", [
    ("deleted", "the webhook is gone"),
    ("disabled", "the webhook is disabled"),
    ("error payload", "the webhook is disabled"),  # INVALID_HOOK disables the hook it is pushed to
])
def test_a_broken_webhook_means_a_full_read_and_a_new_webhook(harness, emulator, how, reason):
    clean_start(harness)
    old = state_of(harness)["webhook_id"]
    if how == "deleted":
        import pyairtable
        pyairtable.Api(TOKEN, endpoint_url=emulator.url).base(emulator.base_id).webhook(old).delete()
    elif how == "disabled":
        emulator.disable_webhook(old)
    else:
        emulator.push_webhook_error(old, "INVALID_HOOK")
    assert harness.run() == 0
    assert tracking(harness)["mode"] == "full" and tracking(harness)["reason"] == reason
    new = state_of(harness)["webhook_id"]
    assert new != old and [h["id"] for h in emulator.webhooks() if h["isHookEnabled"]] == [new]
    assert harness.run() == 0 and tracking(harness)["mode"] == "webhook"


def test_an_error_payload_on_a_hook_still_enabled_means_one_full_read_on_the_same_hook(harness, emulator):
    clean_start(harness)
    hook = state_of(harness)["webhook_id"]
    emulator.push_webhook_error(hook, "INTERNAL_ERROR", disable=False)
    assert harness.run() == 0
    assert tracking(harness)["reason"] == "a payload carries an error (INTERNAL_ERROR)"
    assert state_of(harness)["webhook_id"] == hook and [h["id"] for h in emulator.webhooks()] == [hook]
    assert harness.run() == 0 and tracking(harness)["mode"] == "webhook"


def test_a_retyped_mapped_field_forces_a_full_read_and_an_unmapped_new_one_only_the_schema(harness, emulator):
    clean_start(harness)
    emulator.client.create_field(USERS, "Mood", "singleLineText")
    emulator.clear_log()
    assert harness.run() == 0
    assert tracking(harness)["mode"] == "webhook" and emulator.count(kind="meta") == 1
    emulator.client.change_field_type(USERS, "occupation", "multilineText")
    emulator.clear_log()
    assert harness.run() == 0
    assert tracking(harness)["mode"] == "full"
    assert tracking(harness)["reason"] == "field occupation of users was retyped"
    assert emulator.count(kind="read") == 3
    assert harness.report()["tables"]["users"]["missing_in_airtable"] == []


def test_an_edited_cache_means_a_full_read(harness, emulator):
    clean_start(harness)
    path = harness.cache_dir / "airtable_users.json"
    path.write_text(path.read_text().replace("Maria", "Mario"))
    assert harness.run() == 0
    assert "does not match the state" in tracking(harness)["reason"]


def test_drift_is_measured_and_logged_by_id_and_field_when_the_feed_missed_something(harness, emulator, caplog):
    clean_start(harness)
    assert harness.run() == 0
    # What a missed payload looks like: the snapshot (and its fingerprint in the state) disagree
    # with the base, for one record.
    path = harness.cache_dir / "airtable_events.json"
    records = json.loads(path.read_text())
    records[0]["fields"][field_ids(emulator, EVENTS)["location"]] = "Somewhere the feed never said"
    sync.write_cache(path, sync.TableSnapshot.of(records))
    data = state_of(harness)
    data["caches"]["events"] = sync.cache_fingerprint(path)
    (harness.cache_dir / "airtable_state.json").write_text(json.dumps(data))
    assert harness.run("--full") == 0  # drift is a warning: the fresh read already put it right
    assert tracking(harness)["drift"] == 1
    log = (harness.reports_dir / "airtable_sync.log").read_text()
    assert f"drift: events {records[0]['id']} differs from the change feed in location" in log
    assert "Somewhere the feed never said" not in log
    assert harness.run("--full") == 0 and tracking(harness)["drift"] == 0


def test_full_after_incremental_runs_with_peoples_edits_finds_no_drift(harness, emulator):
    clean_start(harness)
    for round_ in range(3):
        users = synced(harness, emulator, "users")
        first = sorted(users)[round_]
        emulator.client.update(USERS, users[first]["id"], {"occupation": f"edited {round_}"})
        emulator.client.create(EVENTS, {"Name": f"Hand-made event {round_}"})
        export = harness.read_export("events.json")
        export[round_]["maxCapacity"] = 20 + round_
        harness.write_export("events.json", export)
        assert harness.run() == 0 and tracking(harness)["mode"] == "webhook"
    assert harness.run("--full") == 0
    assert tracking(harness) == {"mode": "full", "reason": "--full", "payloads": tracking(harness)["payloads"],
                                 "drift": 0}
    assert tracking(harness)["payloads"] > 0


# -- dry runs, state files, faults ---------------------------------------------------------------

def test_a_dry_run_never_creates_a_webhook_nor_advances_the_state(harness, emulator):
    without_u12(harness)
    assert harness.run("--dry-run") == 0
    assert emulator.webhooks() == [] and not (harness.cache_dir / "airtable_state.json").exists()
    assert list(harness.cache_dir.glob("airtable_*.json")) == []
    assert harness.run() == 0
    files = {p.name: p.read_bytes() for p in harness.cache_dir.glob("airtable_*.json")}
    users = harness.read_export("users.json")
    users[0]["firstName"] = "Dry"
    harness.write_export("users.json", users)
    emulator.clear_log()
    assert harness.run("--dry-run") == 0
    assert harness.report()["tables"]["users"]["updated"] == 1 and tracking(harness)["mode"] == "webhook"
    assert [r.method for r in emulator.requests] == ["GET", "GET"]  # reads only
    assert {p.name: p.read_bytes() for p in harness.cache_dir.glob("airtable_*.json")} == files


def test_state_and_caches_are_private(harness):
    clean_start(harness)
    for path in harness.cache_dir.glob("airtable_*.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert TOKEN not in (harness.cache_dir / "airtable_state.json").read_text()


def test_a_lost_webhook_create_is_settled_by_listing_never_by_creating_another(harness, emulator):
    emulator.add_fault(kind="webhook", method="POST", drop=True, apply=True, times=1)
    clean_start(harness)
    hooks = emulator.webhooks()
    assert len(hooks) == 1 and state_of(harness)["webhook_id"] == hooks[0]["id"]
    assert [r.method for r in emulator.requests if r.kind == "webhook"] == ["GET", "POST", "GET"]
    assert harness.run() == 0 and tracking(harness)["mode"] == "webhook"


def test_an_unusable_webhook_that_would_not_go_is_not_taken_for_the_one_a_lost_create_made(harness, emulator):
    clean_start(harness)
    old = state_of(harness)["webhook_id"]
    emulator.disable_webhook(old)
    emulator.add_fault(kind="webhook", method="DELETE", status=403, times=None)
    emulator.add_fault(kind="webhook", method="POST", drop=True, apply=True, times=1)
    assert harness.run() == 0
    [made] = [h["id"] for h in emulator.webhooks() if h["id"] != old]
    assert state_of(harness)["webhook_id"] == made


def test_a_lost_state_adopts_the_tools_webhook(harness, emulator):
    clean_start(harness)
    hook = state_of(harness)["webhook_id"]
    (harness.cache_dir / "airtable_state.json").unlink()
    assert harness.run() == 0
    assert tracking(harness)["reason"] == "no change-tracking state yet"
    assert [h["id"] for h in emulator.webhooks()] == [hook] == [state_of(harness)["webhook_id"]]


def test_a_503_and_a_dropped_connection_on_the_payload_listing_are_retried(harness, emulator):
    clean_start(harness)
    emulator.add_fault(kind="webhook", method="GET", skip=1, status=503, times=1)  # 1st GET lists the webhooks
    emulator.add_fault(kind="webhook", method="GET", skip=2, drop=True, times=1)
    users = harness.read_export("users.json")
    users[0]["firstName"] = "Retried"
    harness.write_export("users.json", users)
    assert harness.run() == 0
    report = harness.report()
    assert report["change_tracking"]["mode"] == "webhook" and report["requests"]["retried"] == 2
    assert [r.status for r in emulator.requests if r.kind == "webhook" and "payloads" in r.path][-3:] == \
        [503, None, 200]
    assert by_mongo_id(emulator, USERS)[mongo_id(users[0])]["fields"]["firstName"] == "Retried"


def test_kill_9_during_an_incremental_runs_writes_then_a_rerun_leaves_a_clean_base(harness, emulator,
                                                                                     tmp_path_factory):
    clean_start(harness)
    assert harness.run() == 0
    users = harness.read_export("users.json")
    for doc in users[:25]:
        doc["occupation"] = "changed in Mongo"
    harness.write_export("users.json", users)
    state_before = (harness.cache_dir / "airtable_state.json").read_bytes()
    held = emulator.add_fault(kind="write", table=USERS, delay_s=1.0, skip=1, times=1)  # the 2nd users write
    proc = spawn(harness)
    try:
        wait_for(lambda: held.fired == 1 or proc.poll() is not None, 20, "the second users write")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.communicate(timeout=20)
    assert proc.returncode == -signal.SIGKILL
    assert (harness.cache_dir / "airtable_state.json").read_bytes() == state_before  # the dead run left it
    emulator.clear_faults()
    assert harness.run() == 0
    assert tracking(harness)["mode"] == "webhook"  # the dead run's writes come back as payloads
    assert base_state(emulator) == reference_state(tmp_path_factory, exports_of(harness))
    assert harness.run("--full") == 0 and tracking(harness)["drift"] == 0


# -- review follow-ups ---------------------------------------------------------------------------

def test_a_dry_run_never_refreshes_the_webhook(harness, emulator):
    clean_start(harness)
    data = state_of(harness)
    data["last_run"] = (datetime.fromisoformat(data["last_run"]) - timedelta(days=6, hours=12)).isoformat()
    (harness.cache_dir / "airtable_state.json").write_text(json.dumps(data))
    emulator.clear_log()
    assert harness.run("--dry-run") == 0
    assert tracking(harness)["mode"] == "full" and {r.method for r in emulator.requests} == {"GET"}


def test_full_with_the_feed_gone_after_the_listing_measures_no_drift_and_does_not_crash(harness, emulator):
    clean_start(harness)
    emulator.add_fault(kind="webhook", method="GET", skip=1, status=404, times=None)  # payloads, not the list
    assert harness.run("--full") == 0
    assert tracking(harness)["drift"] is None and harness.report()["ended"] == "ok"
    emulator.clear_faults()
    assert harness.run() == 0  # that webhook was not trusted: a full read, a working feed after
    assert harness.run() == 0 and tracking(harness)["mode"] == "webhook"


def test_a_full_read_of_one_table_keeps_the_others_in_the_snapshot(harness, emulator):
    clean_start(harness)
    assert harness.run("--tables", "users", "--full") == 0
    assert tracking(harness)["drift"] == 0
    assert set(state_of(harness)["tables"]) == {"users", "events", "messages"}
    emulator.clear_log()
    assert harness.run() == 0
    assert tracking(harness)["mode"] == "webhook" and emulator.count(kind="read") == 0
    assert harness.run("--full") == 0 and tracking(harness)["drift"] == 0


def test_payloads_read_before_falling_back_to_a_full_read_are_counted(harness, emulator):
    clean_start(harness)
    emulator.client.delete_field(USERS, "occupation")
    harness.run()
    assert tracking(harness)["mode"] == "full" and tracking(harness)["payloads"] >= 1


def test_an_internal_error_leaves_the_previous_state(harness, emulator, monkeypatch):
    clean_start(harness)
    before = {p.name: p.read_bytes() for p in harness.cache_dir.glob("airtable_*.json")}
    users = harness.read_export("users.json")
    users[0]["firstName"] = "Crash"
    harness.write_export("users.json", users)

    def broken(self):
        raise KeyError("a bug")

    monkeypatch.setattr(sync.SyncWriter, "apply", broken)
    assert harness.run() == sync.EXIT_CRASH
    assert {p.name: p.read_bytes() for p in harness.cache_dir.glob("airtable_*.json")} == before


def test_a_foreign_cache_used_with_use_cache_never_becomes_the_trusted_snapshot(harness, emulator):
    clean_start(harness)
    path = harness.cache_dir / "airtable_events.json"
    records = json.loads(path.read_text())
    records[0]["fields"]["location"] = "Edited by hand"
    path.write_text(json.dumps(records))
    events = harness.read_export("events.json")
    events[1]["description"] = "Changed in Mongo"
    harness.write_export("events.json", events)
    harness.run("--use-cache")
    assert harness.run() == 0
    assert "does not match the state" in tracking(harness)["reason"]


def test_check_names_a_broken_webhook(harness, emulator, capsys):
    clean_start(harness)
    emulator.disable_webhook(state_of(harness)["webhook_id"])
    capsys.readouterr()
    assert harness.run("--check") == 0
    assert "(the webhook is disabled: the next run reads in full and replaces it)" in capsys.readouterr().out


def test_the_night_after_a_run_replays_its_writes_and_rewrites_no_cache(harness):
    clean_start(harness)
    before = {p.name: p.stat().st_mtime_ns for p in harness.cache_dir.glob("airtable_[ume]*.json")}
    assert harness.run() == 0 and tracking(harness)["payloads"] > 0
    assert {p.name: p.stat().st_mtime_ns for p in harness.cache_dir.glob("airtable_[ume]*.json")} == before


def test_a_one_table_full_read_does_not_count_as_the_others_full_read(harness, emulator):
    clean_start(harness)
    data = state_of(harness)
    data["last_full_read"] = (datetime.fromisoformat(data["last_full_read"]) - timedelta(days=8)).isoformat()
    (harness.cache_dir / "airtable_state.json").write_text(json.dumps(data))
    assert harness.run("--tables", "users") == 0 and tracking(harness)["mode"] == "full"
    assert harness.run() == 0  # events and messages were carried over, not read: still due
    assert tracking(harness)["mode"] == "full" and "last full read" in tracking(harness)["reason"]
    assert harness.run() == 0 and tracking(harness)["mode"] == "webhook"
