"""--restore ARCHIVE end to end: records deleted by --delete-missing, archived, then put back,
against the emulator; and the restore's pure planning functions.

The deletions are test_deletion's: users U25, U26 and the base's own orphan (olivia), events E01
and the base's wine night, messages M01..M11 and the base's own orphan. Messages M09 and M10
link to U25 and U26, M01 and M07 to E01: links between records restored in one run.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import airtable_sync as sync
from conftest import FIXTURES, field_ids, parse_export
from test_faults import settle
from test_deletion import (
    EVENTS, GONE_EVENTS, GONE_MESSAGES, GONE_USERS, LOOSE, MESSAGES, TABLE_OF, TO_DELETE, USERS, archived,
    archives, record_ids, remove_from_exports,
)

U25, U26 = "678e1ea01d136380d1a8227a", "669aa298209ce73fa07d71fc"
M09, M10, M01, M07 = ("67b7604497c774659ab28a5f", "67b834d88b005467a612758c", "67b6f0b42bfa16d01e00555e",
                      "67b74eec59f885a51cd6953f")
ARCHIVED = {key: len(ids) for key, ids in TO_DELETE.items()}  # users 3, events 2, messages 12
E01_RECORD = next(iter(GONE_EVENTS.values()))  # E01, the event M01 and M07 link to


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def delete_gone_records(harness) -> Path:
    """--delete-missing after the REMOVED documents left the exports: the archive it wrote."""
    remove_from_exports(harness)
    assert harness.run("--delete-missing", env=LOOSE) == 1  # U12's invalid email fails, as always
    archive, = archives(harness)
    return archive


def restore(harness, archive: Path, *flags: str, env: dict | None = None) -> int:
    harness.emulator.clear_log()
    return harness.run("--restore", str(archive), *flags, env=env)


def restore_reports(harness) -> list[Path]:
    return sorted(harness.reports_dir.glob("restore_report_*.json"), key=lambda p: p.stat().st_mtime_ns)


def restore_report(harness) -> dict:
    return json.loads(restore_reports(harness)[-1].read_text())


def requests_of(emulator, kind: str) -> list:
    return [r for r in list(emulator.requests) if r.kind == kind]


def writes(emulator) -> list[tuple]:
    return [(r.method, r.table, r.records) for r in requests_of(emulator, "write")]


def live(emulator, table: str) -> dict[str, dict]:
    return {r["id"]: r for r in emulator.records(table)}


def by_mongo_id(emulator, table: str) -> dict[str, dict]:
    return {r["fields"]["id"]: r for r in emulator.records(table) if r["fields"].get("id")}


def writable(emulator, table: str) -> set[str]:
    tables = {t["id"]: t for t in emulator.schema()["tables"]}
    return {f["name"] for f in tables[table]["fields"] if f["type"] in sync.WRITABLE_TYPES}


def add_notes(emulator) -> None:
    """An Airtable-only field a person fills in by hand: nothing in Mongo maps to it."""
    emulator.client.create_field(USERS, "notes", "multilineText")
    emulator.client.update(USERS, GONE_USERS[U25], {"notes": "met at the supper club"})
    emulator.client.update(USERS, GONE_USERS[U26], {"notes": "prefers Sundays"})


def exports_back(harness) -> None:
    for name in ("users.json", "events.json", "messages.json"):
        shutil.copy(FIXTURES / name, harness.mongo_dir / name)


# ---------------------------------------------------------------------------
# restore, and restore again
# ---------------------------------------------------------------------------


def test_a_restore_brings_back_every_deleted_record_with_its_links_and_a_second_creates_nothing(harness, emulator):
    add_notes(emulator)
    archive = delete_gone_records(harness)
    lines = archived(harness)
    assert restore(harness, archive) == 0
    # The schema, one lookup per table (a formula of the archive's ids), then ten records a write,
    # each an upsert merged on the `id` field's id.
    assert [(r.method, r.kind) for r in emulator.requests][:4] == [("GET", "meta")] + [("GET", "read")] * 3
    assert writes(emulator) == [("PATCH", USERS, 3), ("PATCH", EVENTS, 2), ("PATCH", MESSAGES, 10),
                                ("PATCH", MESSAGES, 2)]
    for request in requests_of(emulator, "write"):
        assert request.body["performUpsert"] == {"fieldsToMergeOn": [field_ids(emulator, request.table)["id"]]}
    assert len(emulator.requests) == 8

    report = restore_report(harness)
    assert report["restore"] == str(archive) and report["dry_run"] is False and report["exit_code"] == 0
    new_id = {}
    for key in TABLE_OF:
        figures = report["tables"][key]
        assert (figures["archived"], figures["restored"], figures["refilled"], figures["skipped"],
                figures["errors"], figures["links_left_out"], figures["fields_left_out"]) == (
            ARCHIVED[key], ARCHIVED[key], 0, 0, 0, 0, [])
        assert sorted(r["archived_id"] for r in figures["restored_records"]) == sorted(TO_DELETE[key].values())
        new_id.update({r["archived_id"]: r["record_id"] for r in figures["restored_records"]})
    # Each record as the archive had it, new ids in its links to records restored with it.
    for line in lines:
        table = TABLE_OF[line["table"]]
        now = live(emulator, table)[new_id[line["id"]]]
        names = writable(emulator, table)
        expected = {k: [new_id.get(x, x) for x in v] if k in ("Users", "Events") else v
                    for k, v in line["fields"].items() if k in names}
        assert {k: v for k, v in now["fields"].items() if k in names} == expected, line["id"]
    assert live(emulator, USERS)[new_id[GONE_USERS[U25]]]["fields"]["notes"] == "met at the supper club"
    messages = by_mongo_id(emulator, MESSAGES)
    assert messages[M09]["fields"]["Users"] == [new_id[GONE_USERS[U25]]]
    assert messages[M10]["fields"]["Users"] == [new_id[GONE_USERS[U26]]]
    assert messages[M01]["fields"]["Events"] == messages[M07]["fields"]["Events"] == [new_id[GONE_EVENTS[
        "678e1ea074b4e0c586558f4a"]]]
    counts = {key: len(emulator.records(table)) for key, table in TABLE_OF.items()}

    # Again: the same lookups, no write, every record complete already.
    assert restore(harness, archive) == 0
    assert requests_of(emulator, "write") == [] and len(emulator.requests) == 4
    again = restore_report(harness)
    for key in TABLE_OF:
        figures = again["tables"][key]
        assert (figures["restored"], figures["refilled"], figures["skipped"]) == (0, 0, ARCHIVED[key])
    assert {key: len(emulator.records(table)) for key, table in TABLE_OF.items()} == counts
    assert len(restore_reports(harness)) == 2 and not list(harness.reports_dir.glob("sync_report_*_2.*"))


def test_the_last_line_and_the_markdown_give_the_counts(harness, emulator, capsys):
    archive = delete_gone_records(harness)
    capsys.readouterr()
    assert restore(harness, archive) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("ok: users: 3 restored, 0 refilled, 0 skipped, 0 failed; events: 2 restored, ")
    assert "messages: 12 restored, 0 refilled, 0 skipped, 0 failed; 8 requests (4 read, 4 write; restore)" in last
    assert last.endswith(str(restore_reports(harness)[-1].with_suffix(".md")))
    markdown = restore_reports(harness)[-1].with_suffix(".md").read_text()
    assert "17 restored, 0 refilled, 0 skipped (already complete), 0 failed, 0 links left out" in markdown
    assert "| messages | 12 | 12 | 0 | 0 | 0 | 0 | - |" in markdown
    assert "reclZd87MerMxFojS -> " in markdown  # archived id -> new id, by id only
    assert "@" not in markdown  # no email: ids and counts only
    assert oct(restore_reports(harness)[-1].stat().st_mode & 0o777) == "0o600"


# ---------------------------------------------------------------------------
# records that came back from Mongo
# ---------------------------------------------------------------------------


def test_records_back_from_mongo_get_only_their_empty_airtable_only_cells(harness, emulator):
    add_notes(emulator)
    archive = delete_gone_records(harness)
    exports_back(harness)
    assert harness.run() == 1  # the sync re-creates U25, U26, E01, M01..M11 from Mongo (U12 fails)
    users = by_mongo_id(emulator, USERS)
    u25, u26 = users[U25]["id"], users[U26]["id"]
    assert "notes" not in users[U25]["fields"] and users[U26]["fields"]["lastName"]
    emulator.client.update(USERS, u25, {"notes": "typed again"})  # not empty: kept
    emulator.client.update(USERS, u26, {"lastName": None})  # mapped: the sync's to set, never refilled
    assert restore(harness, archive) == 0
    # Users: olivia (not in Mongo) re-created, U26's notes refilled; events and messages: the base's
    # own orphans re-created, the others complete already (all their fields are mapped).
    assert writes(emulator) == [("PATCH", USERS, 1), ("PATCH", USERS, 1), ("PATCH", EVENTS, 1),
                                ("PATCH", MESSAGES, 1)]
    refill = requests_of(emulator, "write")[1]
    assert "performUpsert" not in refill.body
    assert refill.body["records"] == [{"id": u26, "fields": {field_ids(emulator, USERS)["notes"]: "prefers Sundays"}}]
    users = by_mongo_id(emulator, USERS)
    assert users[U25]["fields"]["notes"] == "typed again"
    assert users[U26]["fields"]["notes"] == "prefers Sundays" and "lastName" not in users[U26]["fields"]
    report = restore_report(harness)
    figures = {key: report["tables"][key] for key in TABLE_OF}
    assert [(f["restored"], f["refilled"], f["skipped"]) for f in figures.values()] == [(1, 1, 1), (1, 0, 1),
                                                                                       (1, 0, 11)]
    assert figures["users"]["refilled_records"] == [{"record_id": u26, "mongo_id": U26, "fields": ["notes"]}]
    assert figures["users"]["restored_records"] == [{"archived_id": "rec8PuJ3JWcxpNcPS",
                                                     "record_id": by_mongo_id(emulator, USERS)[
                                                         "651a94a0cdcf941ab320282e"]["id"],
                                                     "mongo_id": "651a94a0cdcf941ab320282e"}]
    assert restore(harness, archive) == 0 and requests_of(emulator, "write") == []


# ---------------------------------------------------------------------------
# links between records restored in one run
# ---------------------------------------------------------------------------


def pair_users_with_messages(emulator) -> None:
    """Messages.Users with its inverse, Users.Messages, as Airtable creates a link field."""
    emulator.client.delete_field(MESSAGES, "Users")
    emulator.client.create_field(MESSAGES, "Users", "multipleRecordLinks", {"linkedTableId": USERS})


def test_a_users_inverse_link_to_messages_restored_after_it_comes_back_without_a_request(harness, emulator):
    pair_users_with_messages(emulator)
    assert harness.run() == 1  # the sync fills Messages.Users; Airtable fills Users.Messages
    assert by_mongo_id(emulator, USERS)[U25]["fields"]["Messages"] == [GONE_MESSAGES[M09]]
    archive = delete_gone_records(harness)
    assert restore(harness, archive) == 0
    assert writes(emulator) == [("PATCH", USERS, 3), ("PATCH", EVENTS, 2), ("PATCH", MESSAGES, 10),
                                ("PATCH", MESSAGES, 2)]
    users, messages = by_mongo_id(emulator, USERS), by_mongo_id(emulator, MESSAGES)
    for user, message in ((U25, M09), (U26, M10)):
        assert users[user]["fields"]["Messages"] == [messages[message]["id"]]
        assert messages[message]["fields"]["Users"] == [users[user]["id"]]


def test_a_link_to_a_record_restored_later_is_left_to_its_inverse_or_sent_last(harness, emulator):
    """An archive whose user was deleted before its message (a person's deletion, say): the user's
    links name a message restored after it. Users.Messages is the inverse of the message's Users
    link, so Airtable fills it; a one-way link field has no inverse: sent once the message exists."""
    pair_users_with_messages(emulator)
    emulator.client.create_field(USERS, "Favourite message", "multipleRecordLinks", {"linkedTableId": MESSAGES})
    emulator.client.delete_field(MESSAGES, "Users 2")  # its inverse: the field is now one-way
    assert harness.run() == 1
    user, message = GONE_USERS[U25], GONE_MESSAGES[M09]
    emulator.client.update(USERS, user, {"Favourite message": [message]})
    before = {USERS: live(emulator, USERS)[user], MESSAGES: live(emulator, MESSAGES)[message]}
    assert before[USERS]["fields"]["Messages"] == [message] and before[MESSAGES]["fields"]["Users"] == [user]
    harness.reports_dir.mkdir(exist_ok=True)
    archive = harness.reports_dir / "deleted_20261201_021500.jsonl"
    archive.write_text("".join(json.dumps({"table": key, **before[table]}) + "\n"
                               for key, table in (("users", USERS), ("messages", MESSAGES))))
    emulator.client.delete(USERS, [user])
    emulator.client.delete(MESSAGES, [message])

    assert restore(harness, archive) == 0
    ids = field_ids(emulator, USERS)
    assert writes(emulator) == [("PATCH", USERS, 1), ("PATCH", MESSAGES, 1), ("PATCH", USERS, 1)]
    first, _, last = requests_of(emulator, "write")
    assert not {ids["Messages"], ids["Favourite message"]} & set(first.body["records"][0]["fields"])
    users, messages = by_mongo_id(emulator, USERS), by_mongo_id(emulator, MESSAGES)
    new_user, new_message = users[U25]["id"], messages[M09]["id"]
    assert last.body["records"] == [{"id": new_user, "fields": {ids["Favourite message"]: [new_message]}}]
    assert users[U25]["fields"]["Messages"] == users[U25]["fields"]["Favourite message"] == [new_message]
    assert messages[M09]["fields"]["Users"] == [new_user]
    assert restore_report(harness)["tables"]["users"]["links_left_out"] == 0


def test_restoring_one_table_at_a_time_links_to_what_an_earlier_restore_made(harness, emulator):
    archive = delete_gone_records(harness)
    messages_before = record_ids(emulator, MESSAGES)
    assert restore(harness, archive, "--tables", "users") == 0
    assert writes(emulator) == [("PATCH", USERS, 3)] and len(emulator.requests) == 3  # schema, users, write
    assert record_ids(emulator, MESSAGES) == messages_before
    assert list(restore_report(harness)["tables"]) == ["users"]

    assert restore(harness, archive, "--tables", "messages") == 0
    # Lookups: messages, and the users and events its links name, one request each.
    assert sorted(r.table for r in requests_of(emulator, "read")) == sorted([MESSAGES, USERS, EVENTS])
    assert writes(emulator) == [("PATCH", MESSAGES, 10), ("PATCH", MESSAGES, 2)]
    users, messages = by_mongo_id(emulator, USERS), by_mongo_id(emulator, MESSAGES)
    assert messages[M09]["fields"]["Users"] == [users[U25]["id"]]  # made by the first restore
    assert messages[M10]["fields"]["Users"] == [users[U26]["id"]]
    # E01 is neither in Airtable nor restored by this run: M01's and M07's links to it are left out.
    assert "Events" not in messages[M01]["fields"] and "Events" not in messages[M07]["fields"]
    figures = restore_report(harness)["tables"]["messages"]
    assert (figures["restored"], figures["links_left_out"]) == (12, 2)
    assert sorted((r["mongo_id"], r["field"], r["target"]) for r in figures["left_out_links"]) == sorted(
        [(M01, "Events", E01_RECORD), (M07, "Events", E01_RECORD)])
    markdown = restore_reports(harness)[-1].with_suffix(".md").read_text()
    assert "2 links left out, to records that are gone: " in markdown and E01_RECORD in markdown


# ---------------------------------------------------------------------------
# an outage midway, and the sync after a restore
# ---------------------------------------------------------------------------


def test_an_outage_midway_stops_the_restore_and_the_next_finishes_it_without_duplicates(harness, emulator):
    archive = delete_gone_records(harness)
    # Messages' first request is applied, but every answer is lost: retried (an upsert may be), then given up.
    emulator.add_fault(kind="write", table=MESSAGES, status=503, apply=True, times=None)
    assert restore(harness, archive, env={"AIRTABLE_MAX_RETRIES": "1"}) == 1  # users and events were written
    settle(emulator)
    assert writes(emulator) == [("PATCH", USERS, 3), ("PATCH", EVENTS, 2), ("PATCH", MESSAGES, 10),
                                ("PATCH", MESSAGES, 10)]
    first = restore_report(harness)
    assert first["ended"] == "Airtable error"
    assert [(e["table"], e["message"][:28]) for e in first["errors"]] == \
        [("messages", "outcome unknown (restoring m")] * 10 + [("messages", "not restored: restoring mess")] * 2
    emulator.clear_faults()
    assert restore(harness, archive) == 0
    assert writes(emulator) == [("PATCH", MESSAGES, 2)]  # the ten applied are found again
    figures = restore_report(harness)["tables"]["messages"]
    assert (figures["restored"], figures["skipped"]) == (2, 10)
    ids = [r["fields"].get("id") for r in emulator.records(MESSAGES)]
    assert all(ids.count(m) == 1 for m in TO_DELETE["messages"])


def test_the_next_sync_takes_the_restore_from_the_change_feed_and_links_records_still_in_mongo(harness, emulator):
    archive = delete_gone_records(harness)
    assert restore(harness, archive) == 0
    restored = {r["mongo_id"]: r["record_id"] for key in TABLE_OF
                for r in restore_report(harness)["tables"][key]["restored_records"]}
    assert harness.run() == 1  # U12, as always; nothing deleted without --delete-missing
    report = harness.report()
    assert report["change_tracking"]["mode"] == "webhook"
    for key in TABLE_OF:
        orphans = {r["record_id"] for r in report["tables"][key]["orphan_records"]}
        assert {restored[mongo_id] for mongo_id in TO_DELETE[key]} <= orphans  # still not in Mongo: untouched
    # Messages still exported whose user or event was restored: their links, cleared by the deletion
    # and unresolved since, resolve again (a sync's count of reverted edits includes them).
    messages = by_mongo_id(emulator, MESSAGES)
    relinked = 0
    path = harness.mongo_dir / "messages.json"
    for doc in parse_export(path, path.read_bytes()):
        for link in sync.TABLE_SPECS["messages"].links:
            if (ref := sync.link_reference(doc, link)) in restored:
                assert messages[sync.mongo_id_of(doc)]["fields"][link.airtable_field] == [restored[ref]]
                relinked += 1
    assert relinked == report["tables"]["messages"]["updated"] == 3
    assert harness.run("--full") == 1
    assert harness.report()["change_tracking"]["drift"] == 0


# ---------------------------------------------------------------------------
# a dry run
# ---------------------------------------------------------------------------


def test_a_dry_run_reads_and_reports_and_writes_nothing(harness, emulator, capsys):
    archive = delete_gone_records(harness)
    before = {table: live(emulator, table) for table in TABLE_OF.values()}
    capsys.readouterr()
    assert restore(harness, archive, "--dry-run") == 0
    assert requests_of(emulator, "write") == [] and len(emulator.requests) == 4
    assert {table: live(emulator, table) for table in TABLE_OF.values()} == before
    report = restore_report(harness)
    assert report["dry_run"] is True
    for key in TABLE_OF:
        figures = report["tables"][key]
        assert (figures["restored"], figures["skipped"], figures["links_left_out"]) == (ARCHIVED[key], 0, 0)
        assert all(r["record_id"] is None for r in figures["restored_records"])
    assert "dry run (nothing written)" in restore_reports(harness)[-1].with_suffix(".md").read_text()
    assert "users: 3 restored" in capsys.readouterr().out


# ---------------------------------------------------------------------------
# a bad archive, bad usage, refused access, the lock
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("damage, line, says", [
    ("not JSON", 3, "not valid JSON"),
    ("truncated last line", 17, "a truncated archive?"),
    ("not an object", 5, "not an archived record"),
    ("no fields", 1, "not an archived record"),
    ("unknown table", 2, "unknown table 'orders'"),
    ("bad fieldIds", 4, "fieldIds is not an object of field ids"),
])
def test_a_bad_line_stops_the_restore_before_any_request(harness, emulator, damage, line, says):
    archive = delete_gone_records(harness)
    lines = archive.read_text().splitlines(keepends=True)
    assert len(lines) == 17
    record = json.loads(lines[line - 1])
    lines[line - 1] = {
        "not JSON": "{not json\n",
        "truncated last line": lines[line - 1][:len(lines[line - 1]) // 2],
        "not an object": "[1, 2]\n",
        "no fields": json.dumps({"table": "users", "id": record["id"]}) + "\n",
        "unknown table": json.dumps({**record, "table": "orders"}) + "\n",
        "bad fieldIds": json.dumps({**record, "fieldIds": ["fld1"]}) + "\n",
    }[damage]
    archive.write_text("".join(lines))
    before = {table: live(emulator, table) for table in TABLE_OF.values()}
    assert restore(harness, archive) == 2
    assert list(emulator.requests) == []  # not even the schema
    assert {table: live(emulator, table) for table in TABLE_OF.values()} == before
    log = (harness.reports_dir / "airtable_sync.log").read_text().splitlines()
    error, = [x for x in log if " ERROR " in x and str(archive) in x]
    assert f"{archive}: line {line}: " in error and says in error
    report = restore_report(harness)
    assert (report["exit_code"], report["ended"]) == (2, "input error") and f"line {line}" in report["message"]


@pytest.mark.parametrize("flag", [["--delete-missing"], ["--full"], ["--use-cache"], ["--limit", "5"], ["--check"]])
def test_restore_with_a_sync_option_is_a_usage_error(harness, emulator, flag, capsys):
    archive = delete_gone_records(harness)
    capsys.readouterr()
    assert restore(harness, archive, *flag) == 2
    assert list(emulator.requests) == []
    error, = capsys.readouterr().err.strip().splitlines()
    assert error.endswith(f"ERROR --restore replays an archive and does not go with {flag[0]}")


def test_a_missing_archive_is_a_usage_error(harness, emulator):
    assert restore(harness, harness.reports_dir / "deleted_20200101_000000.jsonl") == 2
    assert list(emulator.requests) == []
    assert "deleted_20200101_000000.jsonl: cannot read the archive" in restore_report(harness)["message"]


def test_a_restore_needs_no_mongo_dir(harness, emulator):
    archive = delete_gone_records(harness)
    shutil.rmtree(harness.mongo_dir)
    assert restore(harness, archive, "--dry-run") == 0


def test_a_refused_token_exits_3_and_writes_nothing(harness, emulator):
    archive = delete_gone_records(harness)
    assert restore(harness, archive, env={"AIRTABLE_API_KEY": "patWRONG.token"}) == 3
    assert requests_of(emulator, "write") == []
    assert restore_report(harness)["ended"] == "Airtable error"


def test_a_held_lock_exits_75_and_does_nothing(harness, emulator):
    archive = delete_gone_records(harness)
    with sync.run_lock(harness.cache_dir):
        assert restore(harness, archive) == 75
    assert list(emulator.requests) == []


def test_a_record_airtable_refuses_fails_alone_and_links_to_it_are_left_out(harness, emulator):
    archive = delete_gone_records(harness)
    lines = [json.loads(x) for x in archive.read_text().splitlines()]
    for line in lines:
        if line["id"] == GONE_USERS[U25]:
            line["fields"]["email"] = "not an email"
    archive.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert restore(harness, archive) == 1
    # The users request is refused, then sent record by record: only U25 fails.
    assert writes(emulator) == [("PATCH", USERS, 3)] + [("PATCH", USERS, 1)] * 3 + [
        ("PATCH", EVENTS, 2), ("PATCH", MESSAGES, 10), ("PATCH", MESSAGES, 2)]
    report = restore_report(harness)
    error, = report["errors"]
    assert (error["table"], error["mongo_id"], error["archived_id"]) == ("users", U25, GONE_USERS[U25])
    assert error["message"].startswith("INVALID_VALUE_FOR_COLUMN")
    assert [report["tables"][k]["restored"] for k in TABLE_OF] == [2, 2, 12]
    assert report["tables"]["users"]["errors"] == 1
    assert report["tables"]["messages"]["links_left_out"] == 1  # M09's link to U25
    assert report["tables"]["messages"]["left_out_links"] == [{"archived_id": GONE_MESSAGES[M09], "mongo_id": M09,
                                                               "field": "Users", "target": GONE_USERS[U25]}]
    assert "Users" not in by_mongo_id(emulator, MESSAGES)[M09]["fields"]
    assert U25 not in by_mongo_id(emulator, USERS)


# ---------------------------------------------------------------------------
# fields renamed or gone since the deletion (archives with fieldIds)
# ---------------------------------------------------------------------------


def test_field_ids_find_renamed_fields_and_fields_gone_are_left_out_and_named(harness, emulator):
    add_notes(emulator)
    emulator.client.create_field(USERS, "nickname", "singleLineText")
    emulator.client.update(USERS, GONE_USERS[U25], {"nickname": "Fati"})
    ids = field_ids(emulator, USERS)
    archive = delete_gone_records(harness)
    # The archive as the sync writes it once fields are bound by id.
    lines = [json.loads(x) for x in archive.read_text().splitlines()]
    for line in lines:
        table_ids = field_ids(emulator, TABLE_OF[line["table"]]) if line["table"] != "users" else ids
        line["fieldIds"] = {name: table_ids[name] for name in line["fields"]}
    archive.write_text("".join(json.dumps(x) + "\n" for x in lines))
    emulator.client.rename_field(USERS, "notes", "Notes (kept)")
    emulator.client.rename_field(USERS, "occupation", "Job")
    emulator.client.delete_field(USERS, "nickname")
    occupation = next(x for x in lines if x["id"] == GONE_USERS[U25])["fields"]["occupation"]
    assert restore(harness, archive) == 0
    user = by_mongo_id(emulator, USERS)[U25]["fields"]
    assert (user["Notes (kept)"], user["Job"]) == ("met at the supper club", occupation)
    assert restore_report(harness)["tables"]["users"]["fields_left_out"] == ["nickname"]


# ---------------------------------------------------------------------------
# the pure parts
# ---------------------------------------------------------------------------


def test_parse_archive_reads_every_line_and_names_a_bad_one():
    good = {"table": "users", "id": "recA", "createdTime": None, "fields": {"id": "u1", "notes": "half \ud83d"}}
    raw = (json.dumps(good, ensure_ascii=False) + "\n\n").encode("utf-8", "surrogatepass")
    records = sync.parse_archive(Path("a.jsonl"), raw + raw.rstrip(b"\n"))  # the last line without its newline
    assert [(r.table, r.record_id, r.line, r.field_ids) for r in records] == [("users", "recA", 1, {}),
                                                                             ("users", "recA", 3, {})]
    assert records[0].fields["notes"] == "half \ud83d"  # as the Deleter wrote it
    with pytest.raises(sync.UsageError, match=r"^a.jsonl: line 2: not valid UTF-8 \(byte 0xff at column 2\)"):
        sync.parse_archive(Path("a.jsonl"), raw.rstrip(b"\n") + b"\n{\xff}\n")
    with pytest.raises(sync.UsageError, match=r"^a.jsonl: line 3: not valid JSON: .* \(column \d+\)$"):
        sync.parse_archive(Path("a.jsonl"), raw + b'{"table": "users",\n' + raw)
    with pytest.raises(sync.UsageError, match=r"line 2: not valid JSON: .*\(column \d+\) \(the last line stops"):
        sync.parse_archive(Path("a.jsonl"), raw.rstrip(b"\n") + b'\n{"table": "users", "id": "re')
    assert sync.parse_archive(Path("a.jsonl"), b"") == []


def field_(fid: str, name: str, ftype: str = "singleLineText", links_to: str = "", inverse: str = "") -> sync.FieldInfo:
    return sync.FieldInfo(name, ftype, fid, links_to, inverse)


def schema_of(**tables: list[sync.FieldInfo]) -> dict[str, sync.LiveTable]:
    ids = {"users": "tblU", "events": "tblE", "messages": "tblM"}
    return {key: sync.LiveTable(ids[key], {f.name: f for f in fields}) for key, fields in tables.items()}


USERS_SCHEMA = [field_("fI", "id"), field_("fE", "email", "email"), field_("fN", "notes", "multilineText"),
                field_("fF", "Full Name", "formula"), field_("fA", "photo", "multipleAttachments"),
                field_("fM", "Messages", "multipleRecordLinks", "tblM", "fU"),
                field_("fR", "Referred", "multipleRecordLinks", "tblU")]
MESSAGES_SCHEMA = [field_("gI", "id"), field_("gT", "message", "multilineText"),
                   field_("fU", "Users", "multipleRecordLinks", "tblU", "fM")]


def archived_(table: str, rec_id: str, fields: dict, field_ids: dict | None = None) -> sync.ArchivedRecord:
    return sync.ArchivedRecord(table, rec_id, fields, field_ids or {}, 1)


def test_archived_cells_keep_writable_fields_by_id_else_by_name():
    table = schema_of(users=USERS_SCHEMA)["users"]
    rec = archived_("users", "recA", {"id": "u1", "Notes": "hi", "Full Name": "A B", "photo": [{"url": "x"}],
                                      "gone": 1, "email": "a@b.c"}, {"Notes": "fN"})
    cells = sync.archived_cells(rec, table)
    assert cells.cells == {"fI": "u1", "fN": "hi", "fE": "a@b.c"}  # the formula is Airtable's to compute
    assert cells.left_out == ["photo", "gone"]
    assert (cells.key, cells.mongo_id, cells.key_field.id) == ("u1", "u1", "fI")
    assert "fN" not in cells.mapped and {"fI", "fE"} <= cells.mapped
    no_id = sync.archived_cells(archived_("users", "recB", {"email": "a@b.c"}), table)
    assert (no_id.key, no_id.key_field.id, no_id.mongo_id) == ("a@b.c", "fE", None)
    assert sync.archived_cells(archived_("users", "recC", {"notes": "x"}), table).key is None


def test_lookup_formulas_batch_a_hundred_terms_a_request_and_escape_values():
    table = schema_of(users=USERS_SCHEMA)["users"]
    wanted = [sync.archived_cells(archived_("users", f"rec{n}", {"id": f"u{n}'"}), table) for n in range(150)]
    formulas = sync.lookup_formulas(wanted, {"tblM": {"recX", "recY"}})
    assert [len(f.split("{id}=")) - 1 for f in formulas["tblU"]] == [100, 50]
    assert formulas["tblU"][0].startswith("OR({id}='u0\\'', {id}='u1\\''")
    assert formulas["tblM"] == ["OR(RECORD_ID()='recX', RECORD_ID()='recY')"]


def plan(records: list[sync.ArchivedRecord], found: dict, restored=("users", "messages")) -> sync.RestorePlan:
    tables = schema_of(users=USERS_SCHEMA, messages=MESSAGES_SCHEMA)
    archive = {r.record_id: sync.archived_cells(r, tables[r.table]) for r in records}
    wanted, elsewhere = sync.what_to_look_up(archive, restored, tables)
    assert {c.record.record_id for c in wanted} >= {r.record_id for r in records if r.table in restored}
    return sync.plan_restore(archive, restored, tables, found)


def test_plan_refills_only_empty_airtable_only_cells_and_restores_the_rest():
    records = [archived_("users", "recOld1", {"id": "u1", "email": "a@b.c", "notes": "typed", "Referred": ["recLive"]}),
               archived_("users", "recOld2", {"id": "u2", "email": "b@b.c", "notes": "kept"}),
               archived_("users", "recOld3", {"id": "u3", "email": "c@b.c", "notes": "n"}),
               archived_("users", "recOld4", {"id": "u3", "email": "d@b.c"})]  # the same Mongo id again
    found = {"tblU": [{"id": "recBack1", "fields": {"fI": "u1", "fE": "other@b.c"}},
                      {"id": "recBack2", "fields": {"fI": "u2", "fN": "new"}},
                      {"id": "recLive", "fields": {}}]}
    writes = plan(records, found).writes["users"]
    assert [(w.action, w.record_id) for w in writes] == [("refill", "recBack1"), ("skip", "recBack2"),
                                                         ("restore", None), ("skip", None)]
    assert writes[0].fields == {"fN": "typed", "fR": ["recLive"]}  # not email: mapped, the sync's
    assert writes[2].fields == {"fI": "u3", "fE": "c@b.c", "fN": "n"}
    assert "same id as archived record recOld3" in writes[3].note


def test_plan_maps_links_to_what_exists_holds_the_key_or_is_restored_and_leaves_out_the_rest():
    records = [archived_("users", "recU1", {"id": "u1"}),  # restored
               archived_("users", "recU2", {"id": "u2"}),  # back from Mongo as recNewU2
               archived_("messages", "recM1", {"id": "m1", "Users": ["recU1", "recU2", "recLive", "recGone"]})]
    found = {"tblU": [{"id": "recNewU2", "fields": {"fI": "u2"}}, {"id": "recLive", "fields": {}}]}
    result = plan(records, found)
    message, = result.writes["messages"]
    assert message.fields["fU"] == [sync.Pending("recU1"), "recNewU2", "recLive"]
    assert len(message.left_out_links) == 1 and message.links_later == {}  # recU1 is written before it
    # Only users: the links to messages not restored, and not in Airtable, are left out.
    result = plan(records + [archived_("users", "recU3", {"id": "u3", "Messages": ["recM1"]})], found,
                  restored=("users",))
    assert "fM" not in result.writes["users"][2].fields and len(result.writes["users"][2].left_out_links) == 1


def test_plan_leaves_a_link_to_a_later_record_to_its_inverse_or_sends_it_last():
    records = [archived_("users", "recU1", {"id": "u1", "Messages": ["recM1"], "Referred": ["recU2"]}),
               archived_("users", "recU2", {"id": "u2", "Referred": ["recU1"]}),
               archived_("messages", "recM1", {"id": "m1", "Users": ["recU1"]}),
               archived_("messages", "recM2", {"id": "m2"})]
    users = plan(records, {}).writes["users"]
    # U1 -> M1: M1 is written later and its Users link (U1) makes Airtable fill U1.Messages.
    # U1 <-> U2 in the same request, one-way field: both wait, sent once both exist.
    assert users[0].fields == {"fI": "u1"} and users[1].fields == {"fI": "u2"}
    assert users[0].links_later == {"fR": [sync.Pending("recU2")]}
    assert users[1].links_later == {"fR": [sync.Pending("recU1")]}
    # A message that does not link back: the user's link to it is sent last.
    records[0] = archived_("users", "recU1", {"id": "u1", "Messages": ["recM2"]})
    assert plan(records, {}).writes["users"][0].links_later == {"fM": [sync.Pending("recM2")]}


def test_plan_without_a_key_fails_and_a_natural_key_stands_in_for_the_id():
    records = [archived_("users", "recA", {"notes": "no id, no email"}),
               archived_("users", "recB", {"email": "a@b.c", "notes": "x"}),
               archived_("users", "recC", {"email": "z@b.c", "notes": "y"})]
    found = {"tblU": [{"id": "recHas", "fields": {"fE": "a@b.c"}}]}
    writes = plan(records, found).writes["users"]
    assert [w.action for w in writes] == ["error", "refill", "restore"]
    assert writes[0].note.startswith("no id and no email")
    assert sync.restore_groups(writes)[1] == [writes[2]]  # created plainly, not upserted


def test_a_restore_after_the_id_column_was_renamed_finds_it_by_the_syncs_binding(harness, emulator):
    """The archive was written after a person renamed `id` to "Mongo ID": it names the cell
    "Mongo ID", yet the restore merges on that field (the sync's binding) and a second restore
    creates nothing."""
    assert harness.run() == 1  # the first sync binds the fields by the names it finds
    emulator.client.rename_field(USERS, "id", "Mongo ID")
    archive = delete_gone_records(harness)
    assert {tuple(line["fields"]).count("Mongo ID") for line in archived(harness) if line["table"] == "users"} == {1}
    assert restore(harness, archive) == 0
    upserts = [r.body for r in requests_of(emulator, "write") if r.table == USERS]
    assert upserts and all(b["performUpsert"] == {"fieldsToMergeOn": [field_ids(emulator, USERS)["Mongo ID"]]}
                           for b in upserts)
    restored = [r for r in emulator.records(USERS) if r["fields"].get("Mongo ID") in GONE_USERS]
    assert len(restored) == len(GONE_USERS)
    count = len(emulator.records(USERS))
    assert restore(harness, archive) == 0
    assert len(emulator.records(USERS)) == count and writes(emulator) == []


def test_a_links_batch_refused_whole_gives_each_record_its_own_note(harness, emulator):
    """The links sent last for two re-created users fail as one request (HTTP 400): each user's
    note names its own new id, not the one before it in the batch."""
    pair_users_with_messages(emulator)
    emulator.client.create_field(USERS, "Favourite message", "multipleRecordLinks", {"linkedTableId": MESSAGES})
    emulator.client.delete_field(MESSAGES, "Users 2")  # its inverse: the field is now one-way
    assert harness.run() == 1
    pairs = [(GONE_USERS[U25], GONE_MESSAGES[M09]), (GONE_USERS[U26], GONE_MESSAGES[M10])]
    for user, message in pairs:
        emulator.client.update(USERS, user, {"Favourite message": [message]})
    lines = []
    for user, message in pairs:
        lines.append({"table": "users", **live(emulator, USERS)[user]})
    for user, message in pairs:
        lines.append({"table": "messages", **live(emulator, MESSAGES)[message]})
    harness.reports_dir.mkdir(exist_ok=True)
    archive = harness.reports_dir / "deleted_20261201_021500.jsonl"
    archive.write_text("".join(json.dumps(line) + "\n" for line in lines))
    emulator.client.delete(USERS, [user for user, _ in pairs])
    emulator.client.delete(MESSAGES, [message for _, message in pairs])

    emulator.add_fault(kind="write", table=USERS, status=400, skip=1, times=1)  # the links, sent last
    assert restore(harness, archive) == 1
    users = by_mongo_id(emulator, USERS)
    notes = {e["mongo_id"]: e["message"] for e in restore_report(harness)["errors"]}
    assert set(notes) == {U25, U26}
    for mongo_id, note in notes.items():
        assert note.startswith(f"written as {users[mongo_id]['id']}, but not its links") and note.count("written as") == 1
