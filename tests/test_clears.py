"""The clear cap, the changes archive and its restore (docs/DELETION.md, "Cells"), end to end
against the emulator, and their pure rules.

Every test starts from a clean first sync of the fixtures without U12 (whose invalid email fails on
purpose), then changes the users' export: `summary` null for every user is a column wiped
upstream, far over the cap; a few nulls are a normal night's clears.
"""
from __future__ import annotations

import json
import stat
from datetime import datetime

import pytest

import airtable_sync as sync
from conftest import field_ids
from test_deletion import USERS, on_request
from test_operations import lines_with, spawn_with_file_limit, stray_files, without_u12


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def first_sync(harness) -> None:
    """A clean first sync, and its changes archive set aside (it updated the base's own records)."""
    without_u12(harness)
    assert harness.run() == 0
    for path in changes_archives(harness):
        path.rename(path.with_suffix(".first"))


def mongo_id(doc: dict) -> str:
    return sync.mongo_id_of(sync.unwrap_extended_json(doc))


def change_users(harness, change) -> list[dict]:
    """The users' export after `change(doc, index)` on each document; the documents changed."""
    users = harness.read_export("users.json")
    for index, doc in enumerate(users):
        change(doc, index)
    harness.write_export("users.json", users)
    return users


def wipe(doc: dict, index: int) -> None:
    doc["summary"] = None


def by_mongo_id(emulator) -> dict[str, dict]:
    """The first record holding each Mongo id, as the sync matches them (the base has U08 twice)."""
    found: dict[str, dict] = {}
    for rec in emulator.records(USERS):
        if rec["fields"].get("id"):
            found.setdefault(rec["fields"]["id"], rec)
    return found


def summaries(emulator) -> dict[str, str | None]:
    return {mid: rec["fields"].get("summary") for mid, rec in by_mongo_id(emulator).items()}


def user_writes(emulator) -> list:
    return [r for r in list(emulator.requests) if r.kind == "write" and r.table == USERS]


def changes_archives(harness) -> list:
    return sorted(harness.reports_dir.glob("changed_*.jsonl"))


def changes_archived(harness) -> list[dict]:
    return [json.loads(line) for path in changes_archives(harness) for line in path.read_text().splitlines()]


def holding_summary(emulator, users) -> int:
    """The users the export names whose summary Airtable holds: the clears a wiped column makes."""
    exported = {mongo_id(u) for u in users}
    return sum(1 for mid, value in summaries(emulator).items() if mid in exported and value)


# ---------------------------------------------------------------------------
# the cap
# ---------------------------------------------------------------------------


def test_a_column_wiped_upstream_is_held_and_the_records_other_changes_land(harness, emulator, capsys):
    first_sync(harness)
    before = summaries(emulator)

    def wipe_and_rename(doc, index):
        wipe(doc, index)
        if index == 0:
            doc["firstName"] = "Renamed"

    users = change_users(harness, wipe_and_rename)
    cleared = holding_summary(emulator, users)
    assert cleared > 10
    capsys.readouterr()
    emulator.clear_log()
    assert harness.run() == 1
    out, err = capsys.readouterr()
    # One request, one record: the rename; the clears held.
    [request] = user_writes(emulator)
    assert request.method == "PATCH" and request.records == 1
    assert list(request.body["records"][0]["fields"]) == [field_ids(emulator, USERS)["firstName"]]
    assert summaries(emulator) == before
    assert by_mongo_id(emulator)[mongo_id(users[0])]["fields"]["firstName"] == "Renamed"
    report = harness.report()
    figures = report["tables"]["users"]
    assert figures["clears_held"] == {"summary": cleared}
    assert (figures["updated"], figures["skipped"], figures["errors"]) == (1, len(users) - 1, 0)
    assert report["exit_code"] == 1
    assert report["tables"]["events"]["clears_held"] == {} == report["tables"]["messages"]["clears_held"]
    [warning] = lines_with(err, "clears of summary")
    limit = 10  # 5% of some thirty users is one: the floor of ten applies
    assert f"users: {cleared} clears of summary held, over the safety cap of {limit} " in warning
    assert "AIRTABLE_MAX_CLEAR_FRACTION=0.05 of" in warning and "--force-clear" in warning
    attention = out.splitlines()[-1]
    assert attention.startswith(f"attention: users.summary: {cleared} clears held by the safety cap, ")
    markdown = harness.reports()[-1].with_suffix(".md").read_text()
    assert f"Clears held back by the safety cap, not written (see the log line; --force-clear writes them): " \
           f"summary {cleared}" in markdown
    # Only the rename was archived: a held clear overwrites nothing.
    [line] = changes_archived(harness)
    assert line["after"] == {"firstName": "Renamed"}


def test_a_few_clears_under_the_cap_are_written_as_usual(harness, emulator):
    first_sync(harness)
    users = change_users(harness, lambda doc, i: wipe(doc, i) if i < 3 else None)
    emulator.clear_log()
    assert harness.run() == 0
    [request] = user_writes(emulator)
    assert request.records == 3
    now = summaries(emulator)
    assert [now[mongo_id(u)] for u in users[:3]] == [None] * 3
    assert harness.report()["tables"]["users"]["clears_held"] == {}


def test_a_field_absent_from_the_export_is_never_a_clear(harness, emulator):
    first_sync(harness)
    before = summaries(emulator)
    change_users(harness, lambda doc, i: doc.pop("summary", None))
    emulator.clear_log()
    assert harness.run() == 0
    assert user_writes(emulator) == [] and summaries(emulator) == before
    figures = harness.report()["tables"]["users"]
    assert figures["clears_held"] == {} and figures["absent_in_export"] == ["summary"]


def test_force_clear_writes_them_and_archives_every_value_it_clears(harness, emulator):
    first_sync(harness)
    before = summaries(emulator)
    users = change_users(harness, wipe)
    cleared = holding_summary(emulator, users)
    emulator.clear_log()
    assert harness.run("--force-clear") == 0
    assert len(user_writes(emulator)) == -(-cleared // 10)
    assert not any(summaries(emulator)[mongo_id(u)] for u in users)
    assert harness.report()["tables"]["users"]["clears_held"] == {}
    lines = changes_archived(harness)
    assert len(lines) == cleared
    assert all(line["before"] == {"summary": before[line["mongo_id"]]} and line["after"] == {"summary": None}
               for line in lines)


def test_a_dry_run_reports_what_would_be_held_and_exits_1(harness, emulator, caplog):
    first_sync(harness)
    users = change_users(harness, wipe)
    cleared = holding_summary(emulator, users)
    emulator.clear_log()
    assert harness.run("--dry-run") == 1
    assert emulator.count(kind="write") == 0 and changes_archives(harness) == []
    report = harness.report()
    assert report["dry_run"] and report["tables"]["users"]["clears_held"] == {"summary": cleared}
    assert report["tables"]["users"]["updated"] == 0
    assert any("would be held" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


def test_a_held_clear_is_held_again_each_run_until_forced(harness, emulator):
    """Nothing remembers a held clear as in sync (the snapshot, the memo of records in sync, the
    change feed's state): with change tracking on, the next run holds it again."""
    first_sync(harness)
    before = summaries(emulator)
    users = change_users(harness, wipe)
    cleared = holding_summary(emulator, users)
    for run in (2, 3):
        emulator.clear_log()
        assert harness.run() == 1, run
        report = harness.report()
        assert report["change_tracking"]["mode"] == "webhook", run
        assert report["tables"]["users"]["clears_held"] == {"summary": cleared}, run
        assert user_writes(emulator) == [] and summaries(emulator) == before, run
    emulator.clear_log()
    assert harness.run("--force-clear") == 0
    assert len(user_writes(emulator)) == -(-cleared // 10)
    emulator.clear_log()
    assert harness.run() == 0 and user_writes(emulator) == []
    assert harness.report()["tables"]["users"]["clears_held"] == {}


def test_an_export_set_right_again_is_quiet(harness, emulator):
    """After held runs, the export fixed: nothing to write, and no hold."""
    first_sync(harness)
    good = harness.read_export("users.json")
    change_users(harness, wipe)
    assert harness.run() == 1
    harness.write_export("users.json", good)
    emulator.clear_log()
    assert harness.run() == 0 and user_writes(emulator) == []


# ---------------------------------------------------------------------------
# the changes archive
# ---------------------------------------------------------------------------


def test_each_update_request_is_archived_before_it_is_sent(harness, emulator):
    first_sync(harness)
    was = by_mongo_id(emulator)
    ids = field_ids(emulator, USERS)

    def edit(doc, index):
        if index == 0:
            doc["firstName"] = "Renamed"
        elif index == 1:
            doc["summary"], doc["event_count"] = None, 99

    users = change_users(harness, edit)
    assert harness.run("--dry-run") == 0 and changes_archives(harness) == []  # a dry run writes none
    seen_in_flight = []
    emulator.add_fault(method="PATCH", table=USERS, delay_s=0.4, times=1)
    watcher = on_request(emulator, lambda r: r.method == "PATCH", lambda: seen_in_flight.append(changes_archived(harness)))
    assert harness.run() == 0
    watcher.join(5)
    [path] = changes_archives(harness)
    assert seen_in_flight == [changes_archived(harness)]  # on disk while the update waited
    stamp = harness.report()["started"].replace("-", "").replace("T", "_").replace(":", "")
    assert path.name == f"changed_{stamp}.jsonl" and stat.S_IMODE(path.stat().st_mode) == 0o600
    first, second = (was[mongo_id(u)] for u in users[:2])
    assert changes_archived(harness) == [
        {"table": "users", "id": first["id"], "mongo_id": mongo_id(users[0]), "fieldIds": {"firstName": ids["firstName"]},
         "before": {"firstName": first["fields"]["firstName"]}, "after": {"firstName": "Renamed"}},
        {"table": "users", "id": second["id"], "mongo_id": mongo_id(users[1]),
         "fieldIds": {"event_count": ids["event_count"], "summary": ids["summary"]},
         "before": {"event_count": second["fields"]["event_count"], "summary": second["fields"]["summary"]},
         "after": {"event_count": 99, "summary": None}},
    ]
    # A quiet night archives nothing.
    assert harness.run() == 0 and len(changes_archives(harness)) == 1


def test_a_full_disk_while_archiving_exits_74_and_the_update_is_not_sent(harness, emulator):
    first_sync(harness)
    change_users(harness, lambda doc, i: doc.update(summary="x" * 25_000) if i == 0 else None)
    emulator.clear_log()
    done = spawn_with_file_limit(harness, 20_000, "--tables", "users")  # the archive's line is over 25 kB
    assert done.returncode == sync.EXIT_IOERR, done.stderr
    [line] = lines_with(done.stderr, "cannot write")
    assert f"cannot write {harness.reports_dir}/changed_" in line and ".jsonl: File too large" in line
    assert user_writes(emulator) == []
    assert changes_archives(harness) == [] and stray_files(harness.cache_dir, harness.reports_dir) == []
    assert harness.run("--tables", "users") == 0 and len(user_writes(emulator)) == 1


def test_a_second_archive_in_the_same_second_gets_its_own_name(tmp_path):
    started = datetime(2026, 12, 1, 6, 0, 0)
    (tmp_path / "changed_20261201_060000.jsonl").write_text("")
    (tmp_path / "changed_20261201_060000_2.jsonl").write_text("")
    plan = sync.TablePlan(sync.TABLE_SPECS["users"], sync.TableColumns({}), {}, None, [], [], [], [], [])
    write = sync.PlannedWrite(sync.ExportRecord(0, "u1", {}), "update", record_id="rec1", fields={"summary": None},
                              before={"summary": "kept"})
    archive = sync.ChangesArchive(tmp_path, started)
    archive.add(plan, [(write, dict(write.fields))])
    archive.add(plan, [(write, dict(write.fields))])  # sent again alone (its request refused): archived once
    assert archive.path == tmp_path / "changed_20261201_060000_3.jsonl"
    assert [json.loads(x) for x in archive.path.read_text().splitlines()] == [
        {"table": "users", "id": "rec1", "mongo_id": "u1", "fieldIds": {"summary": "summary"},
         "before": {"summary": "kept"}, "after": {"summary": None}}]


def test_changes_archives_are_pruned_with_the_deletion_archives(tmp_path):
    now = datetime(2026, 12, 1, 12, 0, 0)
    old = ["changed_20261030_120000.jsonl", "changed_20261030_120000_2.jsonl", "deleted_20261030_120000.jsonl"]
    kept = ["changed_20261120_000000.jsonl", "changed_20261030_120000.jsonl.bak", "changed_x.jsonl"]
    for name in old + kept:
        (tmp_path / name).write_text("x")
    sync.prune_archives(tmp_path, 30, now)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)


# ---------------------------------------------------------------------------
# pure rules
# ---------------------------------------------------------------------------


def test_a_clear_empties_a_cell():
    assert [sync.is_clear(v) for v in (None, "", [], False, 0, "x", ["a"])] == [True] * 3 + [False] * 4


@pytest.mark.parametrize("clears, holding, fraction, over", [
    (10, 10, 0.05, {}),  # ten clears are always allowed
    (11, 11, 0.05, {"f": 10}),
    (11, 220, 0.05, {}),  # 5% of 220 is 11: at the cap, not over it
    (12, 220, 0.05, {"f": 11}),
    (29, 100, 0.29, {}),  # exact: in floats 0.29 * 100 < 29
    (30, 100, 0.29, {"f": 29}),
    (500, 1000, 0, {"f": 10}),
])
def test_the_clear_cap_is_over_ten_and_over_the_share_exactly(clears, holding, fraction, over):
    assert sync.clear_limits({"f": clears}, {"f": holding}, fraction) == over


def test_held_clears_leave_the_records_other_changes():
    plan = sync.TablePlan(sync.TABLE_SPECS["users"], sync.TableColumns({}), {}, "id", [], [], [], [], [],
                          planned={"create": 0, "update": 3, "skip": 0, "error": 0})
    both = sync.PlannedWrite(sync.ExportRecord(0, "u1", {}), "update", "rec1", fields={"summary": None, "role": "x"},
                             before={"summary": "s", "role": "y"})
    alone = sync.PlannedWrite(sync.ExportRecord(1, "u2", {}), "update", "rec2", fields={"summary": ""},
                              before={"summary": "s"})
    rewritten = sync.PlannedWrite(sync.ExportRecord(2, "u3", {}), "update", "rec3", fields={"summary": "new"},
                                  before={"summary": "s"})
    plan.writes = [both, alone, rewritten]
    sync.hold_back(plan, {"summary"})
    assert plan.writes == [both, rewritten]  # the update left with nothing to send is no write
    assert (both.fields, both.before) == ({"role": "x"}, {"role": "y"})
    assert rewritten.fields == {"summary": "new"}  # not a clear
    assert (plan.skipped, plan.skipped_with_id) == (1, 1)
    assert plan.planned == {"create": 0, "update": 2, "skip": 1, "error": 0}


def test_max_clear_fraction_is_a_share():
    args = sync.build_arg_parser().parse_args(["--mongo-dir", "."])
    assert sync.settings_from(args, {"AIRTABLE_API_KEY": "k"}).max_clear_fraction == 0.05
    assert sync.settings_from(args, {"AIRTABLE_API_KEY": "k", "AIRTABLE_MAX_CLEAR_FRACTION": "0"}).max_clear_fraction == 0
    for bad in ("1.5", "-0.1", "x"):
        with pytest.raises(sync.UsageError, match="AIRTABLE_MAX_CLEAR_FRACTION"):
            sync.settings_from(args, {"AIRTABLE_API_KEY": "k", "AIRTABLE_MAX_CLEAR_FRACTION": bad})


# ---------------------------------------------------------------------------
# restoring a changes archive
# ---------------------------------------------------------------------------


def force_cleared(harness, emulator) -> tuple:
    """The summary column wiped upstream and forced through: (the archive, the summaries before)."""
    first_sync(harness)
    before = summaries(emulator)
    change_users(harness, wipe)
    assert harness.run("--force-clear") == 0
    [archive] = changes_archives(harness)
    return archive, before


def restore_report(harness) -> dict:
    paths = sorted(harness.reports_dir.glob("restore_report_*.json"), key=lambda p: p.stat().st_mtime_ns)
    return json.loads(paths[-1].read_text())


def test_a_changes_archive_is_put_back_and_a_second_restore_writes_nothing(harness, emulator, capsys):
    archive, before = force_cleared(harness, emulator)
    cleared = len(changes_archived(harness))
    emulator.clear_log()
    capsys.readouterr()
    assert harness.run("--restore", str(archive)) == 0
    assert summaries(emulator) == before
    # The schema, the archive's records by id (a hundred a request), ten records a write.
    assert (emulator.count(kind="meta"), emulator.count(kind="read"), emulator.count(kind="write")) == \
        (1, 1, -(-cleared // 10))
    report = restore_report(harness)
    users = report["tables"]["users"]
    assert report["archive_kind"] == "changes" and report["exit_code"] == 0
    assert (users["archived"], users["put_back"], users["cells_put_back"], users["changed_since"], users["gone"]) == \
        (cleared, cleared, cleared, 0, 0)
    assert report["note"].startswith("The next sync writes Mongo's values again unless the export has changed")
    out = capsys.readouterr().out
    assert "events: 0 records put back, 0 cells" in out and "; the next sync writes Mongo's values again unless the export " \
        "has changed; 5 requests" in out

    emulator.clear_log()
    assert harness.run("--restore", str(archive)) == 0
    assert emulator.count(kind="write") == 0
    users = restore_report(harness)["tables"]["users"]
    assert (users["put_back"], users["already_back"]) == (0, cleared)
    # And the next sync, the export still wiped: the cap holds the clears again.
    emulator.clear_log()
    assert harness.run() == 1 and user_writes(emulator) == []


def test_a_restore_leaves_alone_a_cell_edited_since_and_a_record_deleted_since(harness, emulator):
    archive, before = force_cleared(harness, emulator)
    lines = changes_archived(harness)
    edited, deleted = lines[0], lines[1]
    emulator.client.update(USERS, edited["id"], {"summary": "Typed by a person"})
    emulator.client.delete(USERS, [deleted["id"]])
    emulator.clear_log()
    assert harness.run("--restore", str(archive)) == 0
    now = {r["id"]: r["fields"].get("summary") for r in emulator.records(USERS)}
    assert now[edited["id"]] == "Typed by a person"
    assert all(now[line["id"]] == line["before"]["summary"] for line in lines[2:])
    report = restore_report(harness)
    users = report["tables"]["users"]
    assert (users["put_back"], users["changed_since"], users["gone"]) == (len(lines) - 2, 1, 1)
    assert users["changed_since_cells"] == [{"record_id": edited["id"], "mongo_id": edited["mongo_id"], "field": "summary"}]
    assert users["gone_records"] == [{"record_id": deleted["id"], "mongo_id": deleted["mongo_id"]}]


def test_a_dry_run_of_a_changes_archive_writes_nothing(harness, emulator):
    archive, _ = force_cleared(harness, emulator)
    emulator.clear_log()
    assert harness.run("--restore", str(archive), "--dry-run") == 0
    assert emulator.count(kind="write") == 0
    report = restore_report(harness)
    assert report["dry_run"] and report["tables"]["users"]["put_back"] == len(changes_archived(harness))
    markdown = sorted(harness.reports_dir.glob("restore_report_*.md"))[-1].read_text()
    assert "would be put back" in markdown and "The next sync writes Mongo's values again" in markdown


@pytest.mark.parametrize("line, message", [
    ('{"table": "users", "id": "rec1", "mongo_id": "u1", "before": {"a": 1}', "line 2: not valid JSON"),
    ('{"table": "users", "id": "rec1", "mongo_id": "u1", "before": {"a": 1}, "after": {}}', "line 2: not a changed record"),
    ('{"table": "pets", "id": "rec1", "mongo_id": "u1", "before": {}, "after": {}}', "line 2: unknown table 'pets'"),
    ('{"table": "users", "id": "rec1", "before": {"a": 1}, "after": {"a": 2}}', "line 2: not a changed record"),
    ('{"table": "users", "id": "rec1", "createdTime": null, "fields": {}}', "line 2: not the kind of line 1 is"),
])
def test_a_broken_changes_line_is_exit_2_naming_the_file_and_line_and_nothing_is_sent(
        harness, emulator, capsys, line, message):
    archive, before = force_cleared(harness, emulator)
    first = archive.read_text().splitlines()[0]
    archive.write_text(first + "\n" + line + "\n")
    emulator.clear_log()
    assert harness.run("--restore", str(archive)) == 2
    assert f"{archive}: {message}" in capsys.readouterr().err
    assert len(emulator.requests) == 0


def test_put_back_compares_as_change_detection_does():
    table = sync.LiveTable("tblU", {"n": sync.FieldInfo("n", "number", "fldN"),
                                    "d": sync.FieldInfo("d", "dateTime", "fldD"),
                                    "f": sync.FieldInfo("f", "formula", "fldF")})
    line = sync.ChangedRecord("users", "rec1", "u1", {"n": "fldN", "d": "fldD", "f": "fldF"},
                              before={"n": 1, "d": None, "f": "x"}, after={"n": 2, "d": "2026-01-01T00:00:00.000Z", "f": "y"},
                              line=1)
    found = {"tblU": [{"id": "rec1", "fields": {"fldN": 2.0, "fldD": "2026-01-01T00:00:00Z"}}]}
    [write] = sync.plan_put_back([line], {"users": table}, found)
    assert write.fields == {"fldN": 1, "fldD": None} and write.left_out == ["f"] and not write.gone
    found = {"tblU": [{"id": "rec1", "fields": {"fldN": 1, "fldD": "2026-02-02T00:00:00Z"}}]}
    [write] = sync.plan_put_back([line], {"users": table}, found)
    assert (write.fields, write.already_back, write.changed_since) == ({}, ["n"], ["d"])
    [write] = sync.plan_put_back([line], {"users": table}, {})
    assert write.gone and write.fields == {}


def test_the_report_names_only_the_cells_put_back_not_those_back_already():
    table = sync.LiveTable("tblU", {"n": sync.FieldInfo("n", "number", "fldN"),
                                    "m": sync.FieldInfo("m", "number", "fldM")})
    line = sync.ChangedRecord("users", "rec1", "u1", {"n": "fldN", "m": "fldM"},
                              before={"n": 1, "m": 1}, after={"n": 2, "m": 2}, line=1)
    [write] = sync.plan_put_back([line], {"users": table}, {"tblU": [{"id": "rec1", "fields": {"fldN": 2, "fldM": 1}}]})
    result = sync.summarize_put_back([write], {}, dry_run=True)
    assert (result.cells_put_back, result.already_back) == (1, 1)
    assert result.put_back_records == [{"record_id": "rec1", "mongo_id": "u1", "fields": ["n"]}]
