"""--delete-missing end to end (docs/DELETION.md): the sync
against the emulator, with records removed from the fixture exports to make orphans.

The fixture base already holds one record per table whose `id` left Mongo (users
rec8PuJ3JWcxpNcPS, events recn7Op9U6VGXA9fJ, messages recBzPU11jEH94ivL) and rows typed by
hand (no `id`), which are never deleted. Most tests raise AIRTABLE_MAX_DELETE_FRACTION so the
cap does not hold; the cap has its own tests with the default 0.05.
"""
from __future__ import annotations

import json
import re
import stat
import threading

import pytest

import airtable_sync as sync
from conftest import field_ids
from test_faults import settle, wait_for

USERS, EVENTS, MESSAGES = "tblQ0OHBit2AqaACy", "tblrscr87h8fbtQTk", "tbljma5S4NhUn1OYl"
TABLE_OF = {"users": USERS, "events": EVENTS, "messages": MESSAGES}
U12 = "67bee6204876d36d86afa056"  # invalid email: its create fails (exit 1) unless removed

# Records already in the base whose Mongo document we remove from the export (Mongo id -> record).
GONE_USERS = {"678e1ea01d136380d1a8227a": "reclZd87MerMxFojS",  # U25
              "669aa298209ce73fa07d71fc": "recRM5DISz6CSUvm8"}  # U26
GONE_EVENTS = {"678e1ea074b4e0c586558f4a": "recy0HIT2JSSdcXRA"}  # E01
GONE_MESSAGES = {  # M01..M11: with the base's own orphan, 12 deletions, two requests
    "67b6f0b42bfa16d01e00555e": "recCBV0IKqlgH4wFf", "67b70068ded84d7c752644d3": "recRVr2xVXjIiKwsl",
    "67b7101c0ff2cb65dc8d05a0": "rectpgJup3FPUx4a7", "67b71fd0ef406e7e992e7e66": "reczgafAB7hxcE4zz",
    "67b72f84642da1be60f72688": "reclQXgerVtIdLRzj", "67b73f382d97352c9290597b": "reci2IL7PNQdVIbYy",
    "67b74eec59f885a51cd6953f": "rec80BFeq1jndjHU0", "67b75ea0ee10f0a2a24e0556": "recsyibrMQTGJTqAD",
    "67b7604497c774659ab28a5f": "recV7hQRN8PtPjFu7", "67b834d88b005467a612758c": "rec8hjsDuy7UHPSNf",
    "msg_2025_02_21_noah": "recB35iJ93OOyNEXX",
}
# The base's own records whose `id` is in no export.
LEFT_BEFORE = {"users": {"651a94a0cdcf941ab320282e": "rec8PuJ3JWcxpNcPS"},
               "events": {"evt_2024_1214_wine": "recn7Op9U6VGXA9fJ"},
               "messages": {"67af14201cd431bef67aa7d8": "recBzPU11jEH94ivL"}}
# Orphans never deleted: rows typed by hand (no id), and the second record with U08's id (U08 is
# still exported: matched to its first record, the other is an orphan but its id did not leave).
KEPT_ORPHANS = {
    "users": [{"record_id": "recYIQ4BCm3pf7edI", "mongo_id": None},
              {"record_id": "recm5ofqxQ3hgr9c1", "mongo_id": None},
              {"record_id": "recfd8qLFCaKaKWa1", "mongo_id": "668a834093b270c043a655ee"}],
    "events": [{"record_id": "rec0L9CXuXAzlsoBC", "mongo_id": None}],
    "messages": [{"record_id": "recG0THNgfr518W5D", "mongo_id": None},
                 {"record_id": "reccsDwOQKkFTp2tb", "mongo_id": None}],
}
REMOVED = {"users": GONE_USERS, "events": GONE_EVENTS, "messages": GONE_MESSAGES}
# Every record --delete-missing should delete once the REMOVED documents left the exports.
TO_DELETE = {k: {**LEFT_BEFORE[k], **REMOVED[k]} for k in REMOVED}
LOOSE = {"AIRTABLE_MAX_DELETE_FRACTION": "0.5"}
ARCHIVE_NAME = re.compile(r"deleted_\d{8}_\d{6}\.jsonl")


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def mongo_id(doc: dict) -> str:
    return str(sync.unwrap_extended_json(doc["id"] if "id" in doc else doc["_id"]))


def remove_from_exports(harness, removed=REMOVED) -> None:
    for key, gone in removed.items():
        name = f"{key}.json"
        harness.write_export(name, [d for d in harness.read_export(name) if mongo_id(d) not in gone])


def refs(mapping: dict) -> list[dict]:
    return [{"record_id": rec, "mongo_id": mid} for mid, rec in mapping.items()]


def by_record(items) -> list:
    return sorted(items, key=lambda r: r["record_id"])


def record_ids(emulator, table: str) -> set[str]:
    return {r["id"] for r in emulator.records(table)}


def deletes(emulator) -> list:
    return [r for r in list(emulator.requests) if r.method == "DELETE" and r.table is not None]


def archives(harness) -> list:
    return sorted(p for p in harness.reports_dir.glob("deleted_*.jsonl"))


def archived(harness) -> list[dict]:
    return [json.loads(line) for path in archives(harness) for line in path.read_text().splitlines()]


def on_request(emulator, predicate, action) -> threading.Thread:
    """Run `action` (in a thread) as soon as a request matching `predicate` is in flight:
    the sync runs in the main thread, its signal handlers need it."""
    def watch():
        wait_for(lambda: any(predicate(r) and r.t_end is None for r in list(emulator.requests)),
                 what="the request to be in flight")
        action()
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


# ---------------------------------------------------------------------------
# without the flag
# ---------------------------------------------------------------------------


def test_without_the_flag_nothing_is_deleted_and_every_orphan_is_named(harness, emulator):
    remove_from_exports(harness)
    before = {k: record_ids(emulator, t) for k, t in TABLE_OF.items()}
    assert harness.run(env=LOOSE) == 1  # U12 fails, as in every fixture run
    assert deletes(emulator) == []
    report = harness.report()
    for key, table in TABLE_OF.items():
        figures = report["tables"][key]
        expected = refs(TO_DELETE[key]) + KEPT_ORPHANS[key]
        assert by_record(figures["orphan_records"]) == by_record(expected), key
        assert figures["orphans"] == len(expected)
        assert (figures["deleted"], figures["deleted_records"], figures["deletions_held"]) == (0, [], 0)
        assert before[key] <= record_ids(emulator, table)
    markdown = harness.reports()[-1].with_suffix(".md").read_text()
    line = next(x for x in markdown.splitlines() if x.startswith("- Orphans") and "recBzPU11jEH94ivL" in x
                or x.startswith("- Orphans") and "recCBV0IKqlgH4wFf" in x)
    messages = report["tables"]["messages"]["orphan_records"]
    assert f": {len(messages)}: " in line and f"and {len(messages) - 5} more" in line
    assert "(all in the JSON report)" in line
    shown = re.findall(r"(rec\w{14}) \(([^)]*)\)", line)
    assert shown == [(r["record_id"], r["mongo_id"] or "no id") for r in messages[:5]]
    users_line = next(x for x in markdown.splitlines() if x.startswith("- Orphans") and "recYIQ4BCm3pf7edI" in x)
    assert "recYIQ4BCm3pf7edI (no id)" in users_line and "rec8PuJ3JWcxpNcPS (651a94a0cdcf941ab320282e)" in users_line


# ---------------------------------------------------------------------------
# what is deleted, when, how
# ---------------------------------------------------------------------------


def test_deletes_after_every_write_messages_then_events_then_users_ten_a_request(harness, emulator):
    remove_from_exports(harness)
    assert harness.run("--delete-missing", env=LOOSE) == 1  # U12
    log = list(emulator.requests)
    dels = [i for i, r in enumerate(log) if r.method == "DELETE" and r.table is not None]
    record_writes = [i for i, r in enumerate(log) if r.kind == "write" and r.table is not None
                     and r.method in ("POST", "PATCH", "PUT")]
    assert record_writes and dels and max(record_writes) < min(dels)
    assert all(log[min(dels)].t_start >= log[i].t_end for i in record_writes)
    assert [(log[i].table, log[i].records) for i in dels] == [
        (MESSAGES, 10), (MESSAGES, 2), (EVENTS, 2), (USERS, 3)]
    assert all(log[i].status == 200 for i in dels)
    sent = {key: [x for i in dels if log[i].table == table for x in log[i].query["records[]"]]
            for key, table in TABLE_OF.items()}
    report = harness.report()
    for key, table in TABLE_OF.items():
        figures = report["tables"][key]
        assert sorted(sent[key]) == sorted(TO_DELETE[key].values()), key
        assert figures["deleted"] == len(TO_DELETE[key])
        assert by_record(figures["deleted_records"]) == by_record(refs(TO_DELETE[key]))
        assert by_record(figures["orphan_records"]) == by_record(KEPT_ORPHANS[key])  # no-id rows stay
        assert figures["orphans"] == len(KEPT_ORPHANS[key]) and figures["deletions_held"] == 0
        left = record_ids(emulator, table)
        assert not left & set(TO_DELETE[key].values())
        assert {r["record_id"] for r in KEPT_ORPHANS[key]} <= left
    markdown = harness.reports()[-1].with_suffix(".md").read_text()
    assert "- Deleted: 3: " in markdown and "rec8PuJ3JWcxpNcPS (651a94a0cdcf941ab320282e)" in markdown
    assert "- Deleted: 12: " in markdown and "and 7 more (all in the JSON report)" in markdown

    # A rerun deletes nothing more.
    emulator.clear_log()
    assert harness.run("--delete-missing", env=LOOSE) == 1
    assert deletes(emulator) == []
    rerun = harness.report()
    for key in TABLE_OF:
        figures = rerun["tables"][key]
        assert (figures["deleted"], figures["deleted_records"]) == (0, [])
        assert by_record(figures["orphan_records"]) == by_record(KEPT_ORPHANS[key])
    assert len(archives(harness)) == 1


def test_each_batch_is_archived_before_its_delete_is_sent(harness, emulator):
    remove_from_exports(harness)
    before = {key: {r["id"]: r for r in emulator.records(table)} for key, table in TABLE_OF.items()}
    seen_in_flight: list = []

    def look():
        request = next(r for r in list(emulator.requests) if r.method == "DELETE" and r.t_end is None)
        seen_in_flight.append((list(request.query["records[]"]), archived(harness)))

    emulator.add_fault(method="DELETE", table=MESSAGES, delay_s=0.4, times=1)
    watcher = on_request(emulator, lambda r: r.method == "DELETE", look)
    assert harness.run("--delete-missing", env=LOOSE) == 1
    watcher.join(5)
    (batch, lines), = seen_in_flight
    assert len(batch) == 10 and [line["id"] for line in lines] == batch  # on disk while the DELETE waits

    paths = archives(harness)
    assert len(paths) == 1 and ARCHIVE_NAME.fullmatch(paths[0].name)
    stamp = harness.report()["started"].replace("-", "").replace("T", "_").replace(":", "")
    assert paths[0].name == f"deleted_{stamp}.jsonl"
    assert stat.S_IMODE(paths[0].stat().st_mode) == 0o600
    lines = archived(harness)
    assert [line["table"] for line in lines] == ["messages"] * 12 + ["events"] * 2 + ["users"] * 3
    ids = {key: field_ids(emulator, table) for key, table in TABLE_OF.items()}
    for line in lines:
        was = before[line["table"]][line["id"]]
        # The cells by name as a person reads them, and each name's field id for --restore.
        assert line == {"table": line["table"], "id": was["id"], "createdTime": was["createdTime"],
                        "fields": was["fields"], "fieldIds": {n: ids[line["table"]][n] for n in was["fields"]}}
    assert {line["id"] for line in lines} == {r for m in TO_DELETE.values() for r in m.values()}


# ---------------------------------------------------------------------------
# the safety cap
# ---------------------------------------------------------------------------
# Fixtures without U12 (so nothing else fails) and nothing else removed: each table has one record
# whose id left Mongo. With the default 0.05 the cap allows users 1 (of 32 with an id), events 0
# (of 13), messages 2 (of 41): only events is held.


def capped(harness):
    remove_from_exports(harness, {"users": {U12: None}})


def test_the_cap_holds_a_table_back_and_the_others_still_delete(harness, emulator):
    capped(harness)
    assert harness.run("--delete-missing") == 1
    report = harness.report()
    events, users, messages = (report["tables"][k] for k in ("events", "users", "messages"))
    assert (events["deleted"], events["deletions_held"], events["deleted_records"]) == (0, 1, [])
    assert refs(LEFT_BEFORE["events"])[0] in events["orphan_records"] and events["orphans"] == 2
    assert "recn7Op9U6VGXA9fJ" in record_ids(emulator, EVENTS)
    assert [r.table for r in deletes(emulator)] == [MESSAGES, USERS]
    for figures, key in ((users, "users"), (messages, "messages")):
        assert figures["deleted_records"] == refs(LEFT_BEFORE[key]) and figures["deletions_held"] == 0
    assert report["errors"] == [] and report["exit_code"] == 1
    log = (harness.reports_dir / "airtable_sync.log").read_text()
    line, = [x for x in log.splitlines() if "safety cap" in x and "AIRTABLE_MAX_DELETE_FRACTION" in x]
    for needle in ("events", "1 records", "cap of 0", "AIRTABLE_MAX_DELETE_FRACTION=0.05", "of 13 records",
                   "--force-delete", "--dry-run"):
        assert needle in line
    assert "deletions held back by the safety cap" in harness.reports()[-1].with_suffix(".md").read_text()


def test_force_delete_lifts_the_cap(harness, emulator):
    capped(harness)
    assert harness.run("--delete-missing", "--force-delete") == 0
    report = harness.report()
    for key in TABLE_OF:
        figures = report["tables"][key]
        assert (figures["deleted_records"], figures["deletions_held"]) == (refs(LEFT_BEFORE[key]), 0)
    assert "recn7Op9U6VGXA9fJ" not in record_ids(emulator, EVENTS)


@pytest.mark.parametrize("env, code", [({}, 1), ({"AIRTABLE_MAX_DELETE_FRACTION": "0.1"}, 0)])
def test_a_dry_run_reports_what_would_go_and_deletes_nothing(harness, emulator, env, code):
    capped(harness)
    before = {key: record_ids(emulator, table) for key, table in TABLE_OF.items()}
    assert harness.run("--dry-run", "--delete-missing", env=env) == code
    assert [r for r in list(emulator.requests) if r.kind == "write" and r.table is not None] == []
    assert archives(harness) == []
    report = harness.report()
    assert report["dry_run"] is True
    for key, table in TABLE_OF.items():
        figures = report["tables"][key]
        held = code == 1 and key == "events"
        assert figures["deleted_records"] == ([] if held else refs(LEFT_BEFORE[key]))
        assert (figures["deleted"], figures["deletions_held"]) == ((0, 1) if held else (1, 0))
        assert record_ids(emulator, table) == before[key]
    markdown = harness.reports()[-1].with_suffix(".md").read_text()
    assert "- Deleted (would be): 1: rec8PuJ3JWcxpNcPS (651a94a0cdcf941ab320282e)" in markdown


# ---------------------------------------------------------------------------
# never
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["missing export", "empty export", "--tables", "--limit"])
def test_never_deletes(harness, emulator, case):
    remove_from_exports(harness)
    flags = ["--delete-missing"]
    if case == "missing export":
        (harness.mongo_dir / "events.json").unlink()
    elif case == "empty export":
        harness.write_export("events.json", [])
    elif case == "--tables":
        flags += ["--tables", "users,messages"]
    else:
        flags += ["--limit", "1000"]
    events_before = record_ids(emulator, EVENTS)
    code = harness.run(*flags, env={"AIRTABLE_MAX_DELETE_FRACTION": "1"})
    assert code in (0, 1)
    assert all(r.table != EVENTS for r in deletes(emulator))
    assert events_before <= record_ids(emulator, EVENTS)  # creates only
    report = harness.report()
    if case == "--limit":
        assert deletes(emulator) == [] and archives(harness) == []
        assert all(t.get("deleted", 0) == 0 for t in report["tables"].values())
    else:  # the other tables still delete
        assert [r.table for r in deletes(emulator)] == [MESSAGES, MESSAGES, USERS]
        assert report["tables"]["users"]["deleted"] == 3
    events = report["tables"].get("events", {})
    assert events.get("deleted", 0) == 0 and events.get("deletions_held", 0) == 0


# ---------------------------------------------------------------------------
# records already gone, and lost answers
# ---------------------------------------------------------------------------


def test_a_record_a_person_deleted_meanwhile_counts_as_deleted(harness, emulator):
    remove_from_exports(harness)
    person_deletes = GONE_MESSAGES["67b7101c0ff2cb65dc8d05a0"]  # M03
    # The person deletes it while the run is writing, after the run read the table: the re-read
    # just before the deletes finds it gone, and no request names it.
    emulator.add_fault(kind="write", table=MESSAGES, delay_s=0.2, times=1)
    watcher = on_request(emulator, lambda r: r.kind == "write" and r.table == MESSAGES,
                         lambda: emulator.client.delete(MESSAGES, [person_deletes]))
    assert harness.run("--delete-missing", env=LOOSE) == 1
    watcher.join(5)
    statuses = [(r.status, r.records) for r in deletes(emulator) if r.table == MESSAGES]
    assert statuses == [(200, 10), (200, 1)]
    figures = harness.report()["tables"]["messages"]
    assert by_record(figures["deleted_records"]) == by_record(refs(TO_DELETE["messages"]))
    assert figures["deleted"] == 12 and figures["errors"] == 0
    assert not record_ids(emulator, MESSAGES) & set(TO_DELETE["messages"].values())
    assert person_deletes not in {line["id"] for line in archived(harness)}


def test_a_record_gone_after_the_reread_fails_its_batch_and_the_others_go_one_by_one(harness, emulator):
    remove_from_exports(harness)
    person_deletes = GONE_MESSAGES["67b7101c0ff2cb65dc8d05a0"]  # M03, in the first delete batch
    # Deleted by the person while the first delete request waits to be processed.
    emulator.add_fault(method="DELETE", table=MESSAGES, delay_s=0.2, times=1)
    watcher = on_request(emulator, lambda r: r.method == "DELETE" and r.table == MESSAGES,
                         lambda: emulator.client.delete(MESSAGES, [person_deletes]))
    assert harness.run("--delete-missing", env=LOOSE) == 1
    watcher.join(5)
    statuses = [(r.status, r.records) for r in deletes(emulator) if r.table == MESSAGES]
    assert statuses[0] == (404, 10)  # the batch with the gone record, then its records one by one
    assert sorted(statuses[1:11]) == [(200, 1)] * 9 + [(404, 1)] and statuses[11:] == [(200, 2)]
    figures = harness.report()["tables"]["messages"]
    assert figures["deleted"] == 12 and figures["errors"] == 0
    assert not record_ids(emulator, MESSAGES) & set(TO_DELETE["messages"].values())


def test_a_row_a_person_keeps_by_clearing_its_id_is_not_deleted(harness, emulator):
    remove_from_exports(harness)
    kept = GONE_MESSAGES["67b7101c0ff2cb65dc8d05a0"]  # M03
    emulator.add_fault(kind="write", table=MESSAGES, delay_s=0.2, times=1)
    watcher = on_request(emulator, lambda r: r.kind == "write" and r.table == MESSAGES,
                         lambda: emulator.client.update(MESSAGES, kept, {"id": None, "status": "approved"}))
    assert harness.run("--delete-missing", env=LOOSE) == 1
    watcher.join(5)
    assert kept in record_ids(emulator, MESSAGES)
    figures = harness.report()["tables"]["messages"]
    assert figures["deleted"] == 11 and kept not in {r["record_id"] for r in figures["deleted_records"]}
    assert kept not in {line["id"] for line in archived(harness)}


def test_the_archive_holds_what_a_person_typed_after_the_read(harness, emulator):
    remove_from_exports(harness)
    edited = GONE_MESSAGES["67b7101c0ff2cb65dc8d05a0"]  # M03
    emulator.add_fault(kind="write", table=MESSAGES, delay_s=0.2, times=1)
    watcher = on_request(emulator, lambda r: r.kind == "write" and r.table == MESSAGES,
                         lambda: emulator.client.update(MESSAGES, edited, {"personalization_notes": "typed late"}))
    assert harness.run("--delete-missing", env=LOOSE) == 1
    watcher.join(5)
    line = next(line for line in archived(harness) if line["id"] == edited)
    assert line["fields"]["personalization_notes"] == "typed late"


def expected_base(emulator_records: dict) -> dict:
    return {k: v - set(TO_DELETE[k].values()) for k, v in emulator_records.items()}


@pytest.mark.parametrize("fault", [dict(drop=True, apply=True, times=1), dict(status=503, apply=True, times=1),
                                   dict(status=503, apply=True, times=None)],
                         ids=["dropped, retried", "503, retried", "503, retries exhausted"])
def test_a_delete_whose_answer_was_lost_is_settled_by_the_next_run(harness, emulator, fault):
    remove_from_exports(harness)
    # What the base should hold: what the first run would leave without any fault.
    emulator.add_fault(method="DELETE", table=MESSAGES, **fault)
    first_code = harness.run("--delete-missing", env={**LOOSE, "AIRTABLE_MAX_RETRIES": "1"})
    settle(emulator)
    first = harness.report()
    assert first_code == 1
    emulator.clear_faults()
    harness.run("--delete-missing", env=LOOSE)
    second = harness.report()
    settle(emulator)
    for key, table in TABLE_OF.items():
        left = record_ids(emulator, table)
        assert not left & set(TO_DELETE[key].values()), key  # all gone
        assert {r["record_id"] for r in KEPT_ORPHANS[key]} <= left  # nothing else
        # Counted as deleted exactly once over the two runs (a lost batch may count in neither:
        # its records are gone, and the next run's read cannot tell who deleted them).
        counted = [r["record_id"] for rep in (first, second) for r in rep["tables"][key]["deleted_records"]]
        assert len(counted) == len(set(counted)) and set(counted) <= set(TO_DELETE[key].values())
        assert by_record(second["tables"][key]["orphan_records"]) == by_record(KEPT_ORPHANS[key])
    # The archive has every deleted record, once.
    ids = [line["id"] for line in archived(harness)]
    assert sorted(ids) == sorted(r for m in TO_DELETE.values() for r in m.values())
    if fault["times"] == 1:  # retried within the run: the batch's 404 means deleted
        for key in TABLE_OF:
            assert len(first["tables"][key]["deleted_records"]) == len(TO_DELETE[key])
        assert second["tables"]["messages"]["deleted"] == 0
    else:
        assert first["ended"] == "Airtable error"
        unknown = [e for e in first["errors"] if e["message"] == "delete unknown; the next run settles it"]
        assert [e["table"] for e in unknown] == ["messages"] * 10  # the lost batch, named by Mongo id
        assert {e["mongo_id"] for e in unknown} <= set(TO_DELETE["messages"])
        assert second["exit_code"] == 1 and second["ended"] == "finished with failed records"  # U12 only
        assert second["tables"]["users"]["deleted"] == 3  # not reached by the first run


# ---------------------------------------------------------------------------
# change tracking
# ---------------------------------------------------------------------------


def test_deletions_keep_the_change_tracking_snapshot_exact(harness, emulator):
    remove_from_exports(harness)
    assert harness.run("--delete-missing", env=LOOSE) == 1
    # An incremental run that deletes again (one more message left Mongo).
    m12, m12_record = "67b854408ddb5fb04c0e044d", "recQ7iu16pcPy9gJF"
    remove_from_exports(harness, {"messages": {m12: None}})
    # Someone edits it first: the run knows it from the change feed, and archives it as Airtable has it.
    emulator.client.update(MESSAGES, m12_record, {"status": "approved", "Users": ["recPrN5AHSPuny2mj"],
                                                  "similarity_score": 0.5, "message": "edited"})
    as_airtable_has_it = next(r for r in emulator.records(MESSAGES) if r["id"] == m12_record)
    assert harness.run("--delete-missing", env=LOOSE) == 1
    incremental = harness.report()
    assert incremental["change_tracking"]["mode"] == "webhook"
    assert [r["mongo_id"] for r in incremental["tables"]["messages"]["deleted_records"]] == [m12]
    line, = [x for x in archived(harness) if x["id"] == m12_record]
    assert line.pop("fieldIds") == {n: field_ids(emulator, MESSAGES)[n] for n in as_airtable_has_it["fields"]}
    assert line == {"table": "messages", **as_airtable_has_it}
    assert incremental["tables"]["users"]["deleted"] == 0
    # Links Airtable cleared because the first run deleted their target are nobody's edit.
    assert {k: t["reverted_edits"] for k, t in incremental["tables"].items()} == dict.fromkeys(TABLE_OF, 0)
    assert incremental["requests"]["write"] == 2  # no update: U12's create (failing again) and the DELETE
    assert harness.run("--delete-missing", env=LOOSE) == 1
    assert harness.report()["change_tracking"]["mode"] == "webhook"
    assert harness.run("--full", "--delete-missing", env=LOOSE) == 1
    full = harness.report()
    assert full["change_tracking"]["mode"] == "full" and full["change_tracking"]["drift"] == 0
    assert all(t["deleted"] == 0 for t in full["tables"].values())


# ---------------------------------------------------------------------------
# the archive's retention
# ---------------------------------------------------------------------------


def test_every_run_but_a_dry_run_prunes_old_archives_and_nothing_else(harness, emulator):
    from datetime import datetime, timedelta
    harness.reports_dir.mkdir()
    recent = f"deleted_{datetime.now() - timedelta(days=29):%Y%m%d_%H%M%S}.jsonl"
    old = f"deleted_{datetime.now() - timedelta(days=31):%Y%m%d_%H%M%S}.jsonl"
    others = [recent, "deleted_20200101_000000.jsonl.bak", "old_deleted_20200101_000000.jsonl",
              "deleted_2020.jsonl", "sync_report_20200101_000000.json"]
    for name in [old, *others]:
        (harness.reports_dir / name).write_text("{}\n")
    assert harness.run("--dry-run") == 0  # a dry run cannot see U12 fail
    assert (harness.reports_dir / old).exists()
    assert harness.run() == 1  # without --delete-missing too
    assert not (harness.reports_dir / old).exists()
    assert all((harness.reports_dir / name).exists() for name in others)


def test_failed_deletes_fail_the_run(harness, emulator):
    remove_from_exports(harness)
    users = [u for u in harness.read_export("users.json") if "67bee6204876d36d86afa056" not in json.dumps(u)]
    harness.write_export("users.json", users)  # without U12, only the deletes can fail
    emulator.add_fault(method="DELETE", status=422, times=None,
                       body={"error": {"type": "INVALID_REQUEST_UNKNOWN", "message": "refused"}})
    assert harness.run("--delete-missing", env=LOOSE) == 1
    report = harness.report()
    assert report["ended"] == "finished with failed records"
    assert report["tables"]["messages"]["errors"] == 12 and report["tables"]["messages"]["deleted"] == 0


def test_a_delete_refused_with_429_after_the_retries_stops_the_run_with_3_and_nothing_in_doubt(harness, emulator):
    users = [u for u in harness.read_export("users.json") if "67bee6204876d36d86afa056" not in json.dumps(u)]
    harness.write_export("users.json", users)  # without U12: the sync before writes everything it plans
    assert harness.run() == 0
    remove_from_exports(harness)
    emulator.add_fault(method="DELETE", status=429, times=None)
    assert harness.run("--delete-missing", env={**LOOSE, "AIRTABLE_MAX_RETRIES": "0"}) == 3
    report = harness.report()
    assert report["ended"] == "Airtable error" and report["errors"] == []  # not applied: no delete in doubt
    assert all(t["deleted"] == 0 and t["errors"] == 0 for t in report["tables"].values())
