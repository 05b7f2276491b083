"""The change-tracking and deletion rules as pure functions (no HTTP): when a run reads in full,
how payloads patch the snapshot, what drift and set-back edits are, what may be deleted."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

import airtable_sync as sync
from airtable_sync import BaseSchema, ChangeState, FieldInfo

NOW = datetime(2026, 12, 1, 2, 15, tzinfo=timezone.utc)
TABLES = {"users": "tblQ0OHBit2AqaACy", "events": "tblrscr87h8fbtQTk", "messages": "tbljma5S4NhUn1OYl"}


def settings(**over) -> sync.Settings:
    args = sync.build_arg_parser().parse_args(["--mongo-dir", "."])  # every option at its default
    for key in ("full", "delete_missing", "force_delete", "limit", "tables"):
        if key in over:
            setattr(args, key, over.pop(key))
    env = {"AIRTABLE_API_KEY": "k", "AIRTABLE_ENDPOINT_URL": "http://127.0.0.1:1", **over}
    return sync.settings_from(args, env)


def schema() -> BaseSchema:
    fields = {
        "users": [("fldUid", "id", "singleLineText"), ("fldUemail", "email", "email"),
                  ("fldUseg", "user_segment", "singleSelect"), ("fldUint", "interests", "multipleSelects"),
                  ("fldUcount", "event_count", "number"), ("fldUnotes", "Notes", "multilineText")],
        "events": [("fldEid", "id", "singleLineText"), ("fldEname", "Name", "singleLineText")],
        "messages": [("fldMid", "id", "singleLineText"), ("fldMmsg", "message", "multilineText"),
                     ("fldMusers", "Users", "multipleRecordLinks"), ("fldMevents", "Events", "multipleRecordLinks")],
    }
    return BaseSchema(dict(TABLES), {k: {n: FieldInfo(n, t, i) for i, n, t in v} for k, v in fields.items()})


# The mapped fields of schema(), bound by the names they had when first seen.
BOUND = {key: {name: f.id for name, f in fields.items() if name in sync.TABLE_SPECS[key].airtable_fields}
         for key, fields in schema().fields.items()}


def state(**over) -> ChangeState:
    values = dict(endpoint_url="http://127.0.0.1:1", base_id=sync.DEFAULT_BASE_ID, tables=dict(TABLES),
                  schema=schema(), webhook_id="achAAAAAAAAAAAAAA", cursor=5,
                  last_full_read=NOW - timedelta(days=2), last_run=NOW - timedelta(hours=20), bindings=BOUND)
    values.update(over)
    return ChangeState(**values)


# -- when a run reads in full ---------------------------------------------------------------

def test_a_valid_state_reads_the_change_feed():
    assert sync.full_read_reason(state(), settings(), TABLES, NOW) == (None, True)


@pytest.mark.parametrize("make, expected, exact", [
    (lambda: (None, settings()), "no change-tracking state yet", False),
    (lambda: (state(), settings(AIRTABLE_CHANGE_TRACKING="off")), "change tracking is off", False),
    (lambda: (state(base_id="appOTHERxxxxxxxxx"), settings()), "another base or endpoint", False),
    (lambda: (state(endpoint_url="https://api.airtable.com"), settings()), "another base or endpoint", False),
    (lambda: (state(tables={"users": TABLES["users"]}), settings()), "another set of tables", False),
    (lambda: (state(), settings(AIRTABLE_USERS_TABLE="Users")), "another set of tables", False),
    (lambda: (state(webhook_id=None), settings()), "no webhook yet", False),
    (lambda: (state(), settings(full=True)), "--full", True),
    (lambda: (state(last_full_read=NOW - timedelta(days=7, hours=1)), settings()), "last full read is 7.0 days", True),
    (lambda: (state(last_full_read=NOW - timedelta(days=3)), settings(AIRTABLE_FULL_SYNC_DAYS="2")),
     "AIRTABLE_FULL_SYNC_DAYS=2", True),
    (lambda: (state(last_run=NOW - timedelta(days=6, hours=1), last_full_read=NOW - timedelta(days=6, hours=1)),
              settings()), "Airtable keeps payloads 7 days", False),
])
def test_each_reason_to_read_in_full(make, expected, exact):
    st, conf = make()
    reason, still_exact = sync.full_read_reason(st, conf, TABLES, NOW)
    assert expected in reason and still_exact is exact


def test_a_run_needing_fewer_tables_than_the_state_holds_still_reads_the_feed():
    assert sync.full_read_reason(state(), settings(tables="users"), ["users"], NOW) == (None, True)


def test_the_webhooks_own_problems():
    hook = SimpleNamespace(is_hook_enabled=True, expiration_time=NOW + timedelta(days=3))
    assert sync.webhook_problem(hook, NOW) is None
    assert sync.webhook_problem(None, NOW) == "the webhook is gone"
    assert sync.webhook_problem(SimpleNamespace(is_hook_enabled=False, expiration_time=None), NOW) == \
        "the webhook is disabled"
    assert sync.webhook_problem(SimpleNamespace(is_hook_enabled=True, expiration_time=NOW), NOW) == \
        "the webhook expired"


def test_the_state_survives_its_json():
    st = state(caches={"users": [10, 20]})
    again = ChangeState.from_json(__import__("json").loads(__import__("json").dumps(st.as_json())))
    assert again == st


def test_a_state_from_before_bindings_binds_the_names_its_schema_knew_and_reads_in_full():
    old = state().as_json()
    del old["bindings"]
    old["version"] = 1
    migrated = ChangeState.from_json(old)
    assert migrated.bindings == BOUND
    reason, exact = sync.full_read_reason(migrated, settings(), TABLES, NOW)
    assert "earlier version" in reason and exact is False


# -- payloads -------------------------------------------------------------------------------

def test_webhook_cell_formats_become_the_records_formats():
    assert sync.record_cell({"id": "selX", "name": "VIP", "color": "blueLight2"}, "singleSelect") == "VIP"
    assert sync.record_cell([{"id": "sel1", "name": "wine"}, {"id": "sel2", "name": "jazz"}],
                            "multipleSelects") == ["wine", "jazz"]
    assert sync.record_cell([{"id": "recA", "name": "Ada"}], "multipleRecordLinks") == ["recA"]
    assert sync.record_cell(["recA"], "multipleRecordLinks") == ["recA"]
    assert sync.record_cell("2026-01-01T00:00:00.000Z", "dateTime") == "2026-01-01T00:00:00.000Z"


def snapshot():
    """The snapshot keys cells by field id, as the tool reads records (returnFieldsByFieldId)."""
    return {
        "users": [{"id": "recU1", "createdTime": "2026-01-01T00:00:00.000Z",
                   "fields": {"fldUid": "u1", "fldUemail": "a@x.io", "fldUseg": "VIP", "fldUcount": 3}},
                  {"id": "recU2", "createdTime": "2026-01-01T00:00:00.000Z",
                   "fields": {"fldUid": "u2", "fldUemail": "b@x.io"}}],
        "events": [],
        "messages": [{"id": "recM1", "createdTime": "2026-01-01T00:00:00.000Z",
                      "fields": {"fldMid": "m1", "fldMmsg": "hi", "fldMusers": ["recU1"]}}],
    }


def apply_payloads(records, payloads, schema):
    """The snapshot patched with every payload, as the change feed applies them one at a time."""
    snapshots = {key: sync.TableSnapshot.of(recs) for key, recs in records.items()}  # on disk, as a run keeps it
    patch = sync.SnapshotPatch(snapshots, schema)
    for p in payloads:
        patch.apply(p)
    result = patch.finish()
    for key, recs in records.items():
        recs[:] = list(snapshots[key])
    return result


def payload(cursor, tables, source="client"):
    return {"cursor": cursor, "baseTransactionNumber": cursor, "payloadFormat": "v0",
            "actionMetadata": {"source": source}, "changedTablesById": tables}


def test_payloads_create_change_and_destroy_records_in_order():
    records = snapshot()
    payloads = [
        payload(5, {TABLES["users"]: {
            "createdRecordsById": {"recU3": {"createdTime": "2026-12-01T00:00:00.000Z",
                                             "cellValuesByFieldId": {"fldUemail": "c@x.io",
                                                                     "fldUseg": {"id": "s", "name": "New"}}}},
            "changedRecordsById": {"recU1": {"current": {"cellValuesByFieldId": {
                "fldUseg": {"id": "s2", "name": "Churned"}, "fldUcount": None}}}}}}),
        payload(6, {TABLES["users"]: {"destroyedRecordIds": ["recU2"]},
                    TABLES["messages"]: {"changedRecordsById": {"recM1": {"current": {"cellValuesByFieldId": {
                        "fldMusers": []}}}}}}),
        payload(7, {"tblSomeOtherTable0": {"destroyedRecordIds": ["recZ"]}}),
    ]
    edited, touched = apply_payloads(records, payloads, schema())
    assert [r["id"] for r in records["users"]] == ["recU1", "recU3"]
    assert records["users"][0]["fields"] == {"fldUid": "u1", "fldUemail": "a@x.io", "fldUseg": "Churned"}
    assert records["users"][1] == {"id": "recU3", "createdTime": "2026-12-01T00:00:00.000Z",
                                   "fields": {"fldUemail": "c@x.io", "fldUseg": "New"}}
    assert records["messages"][0]["fields"] == {"fldMid": "m1", "fldMmsg": "hi"}  # the cleared link is gone
    assert touched == {"users", "messages"}
    # Cells changed on records that existed: edits by someone else (created/destroyed are not).
    assert edited == {"users": {"recU1": {"fldUseg", "fldUcount"}}, "messages": {"recM1": {"fldMusers"}}}


def test_replaying_the_tools_own_writes_changes_nothing_and_is_no_edit():
    records = snapshot()
    own = payload(5, {TABLES["users"]: {"changedRecordsById": {"recU1": {"current": {"cellValuesByFieldId": {
        "fldUseg": {"id": "s", "name": "VIP"}, "fldUcount": 3}}}}}}, source="publicApi")
    edited, _ = apply_payloads(records, [own, own], schema())
    assert edited == {} and records == snapshot()


def test_an_edit_then_set_back_within_the_feed_is_no_edit():
    records = snapshot()
    person = payload(5, {TABLES["users"]: {"changedRecordsById": {"recU1": {"current": {"cellValuesByFieldId": {
        "fldUemail": "typo@x.io"}}}}}})
    tool = payload(6, {TABLES["users"]: {"changedRecordsById": {"recU1": {"current": {"cellValuesByFieldId": {
        "fldUemail": "a@x.io"}}}}}}, source="publicApi")
    edited, _ = apply_payloads(records, [person, tool], schema())
    assert edited == {}


def test_an_unmapped_cell_edit_is_kept_and_never_set_back():
    records = snapshot()
    notes = payload(5, {TABLES["users"]: {"changedRecordsById": {"recU1": {"current": {"cellValuesByFieldId": {
        "fldUnotes": "called her"}}}}}})
    edited, touched = apply_payloads(records, [notes], schema())
    assert records["users"][0]["fields"]["fldUnotes"] == "called her" and touched == {"users"}
    # An edited cell, but no plan sends the unmapped field, so no run counts it as set back.
    assert edited == {"users": {"recU1": {"fldUnotes"}}}


def test_patching_never_changes_a_record_dict_shared_with_the_caller():
    records = snapshot()
    shared = records["users"][0]["fields"]
    apply_payloads(records, [payload(5, {TABLES["users"]: {"changedRecordsById": {"recU1": {
        "current": {"cellValuesByFieldId": {"fldUemail": "new@x.io"}}}}}})], schema())
    assert shared["fldUemail"] == "a@x.io"


@pytest.mark.parametrize("change, reason", [
    ({"destroyedFieldIds": ["fldUemail"]}, "field email of users was deleted"),
    ({"createdFieldsById": {"fldNew": {"name": "phone", "type": "phoneNumber"}}}, "field phone of users was created"),
    ({"changedFieldsById": {"fldUcount": {"current": {"type": "singleLineText"}, "previous": {"type": "number"}}}},
     "field event_count of users was retyped"),
    ({"changedFieldsById": {"fldUcount": {"current": {"name": "Events", "type": "singleLineText"},
                                          "previous": {"name": "event_count", "type": "number"}}}},
     "field event_count of users was retyped"),
])
def test_a_bound_field_deleted_or_retyped_or_one_created_under_a_mapped_name_forces_a_full_read(change, reason):
    got, _ = sync.feed_schema_change(payload(5, {TABLES["users"]: change}), schema(), BOUND)
    assert got is not None and reason in got


@pytest.mark.parametrize("change", [
    {"changedFieldsById": {"fldUemail": {"current": {"name": "Email"}, "previous": {"name": "email"}}}},
    {"changedFieldsById": {"fldUnotes": {"current": {"name": "event_count"}, "previous": {"name": "Notes"}}}},
    {"createdFieldsById": {"fldX": {"name": "Mood", "type": "singleLineText"}}},
    {"destroyedFieldIds": ["fldUnotes"]},
    {"changedFieldsById": {"fldUnotes": {"current": {"type": "richText"}, "previous": {"type": "multilineText"}}}},
])
def test_renames_and_unmapped_field_changes_only_reread_the_schema(change):
    # A rename follows the field id: the snapshot is keyed by id, so it stays exact.
    assert sync.feed_schema_change(payload(5, {TABLES["users"]: change}), schema(), BOUND) == (None, True)


def test_without_a_binding_a_deleted_field_is_no_mapped_field():
    deleted = payload(5, {TABLES["users"]: {"destroyedFieldIds": ["fldUemail"]}})
    assert sync.feed_schema_change(deleted, schema(), {}) == (None, True)


def test_typecast_options_and_other_tables_are_no_field_change():
    options = payload(5, {TABLES["users"]: {"changedFieldsById": {"fldUseg": {
        "current": {"options": {"choices": [{"id": "s", "name": "Brand new"}]}}}}}})
    assert sync.feed_schema_change(options, schema(), BOUND) == (None, False)
    other_table = payload(5, {"tblNotSyncedHere00": {"destroyedFieldIds": ["fldUemail"]}})
    assert sync.feed_schema_change(other_table, schema(), BOUND) == (None, False)


def test_an_error_payload_or_a_deleted_table_forces_a_full_read():
    assert "INVALID_FILTERS" in sync.feed_schema_change({"cursor": 5, "error": True, "code": "INVALID_FILTERS"},
                                                        schema(), BOUND)[0]
    assert "users was deleted" in sync.feed_schema_change({"cursor": 5, "destroyedTableIds": [TABLES["users"]]},
                                                          schema(), BOUND)[0]


def test_a_bound_field_gone_or_retyped_between_two_schema_reads_is_a_mapped_change():
    renamed = schema()
    renamed.fields["users"] = {("Mail" if n == "email" else n): (FieldInfo("Mail", f.type, f.id) if n == "email" else f)
                               for n, f in renamed.fields["users"].items()}
    assert sync.mapped_fields_changed(schema(), renamed, BOUND) is None
    retyped = schema()
    retyped.fields["users"]["event_count"] = FieldInfo("event_count", "singleLineText", "fldUcount")
    assert sync.mapped_fields_changed(schema(), retyped, BOUND) == "users"
    gone = schema()
    del gone.fields["messages"]["Users"]
    assert sync.mapped_fields_changed(schema(), gone, BOUND) == "messages"


def test_drift_counts_records_that_differ_in_mapped_fields_only_and_skips_later_changes(caplog):
    patched = snapshot()
    fresh = snapshot()
    fresh["users"][0]["fields"]["fldUemail"] = "z@x.io"  # drift, logged by id and field name only
    fresh["users"][1]["fields"]["fldUnotes"] = "unmapped"  # not drift
    fresh["messages"].append({"id": "recM2", "createdTime": "x", "fields": {"fldMid": "m2"}})  # missing from the feed
    columns = sync.table_bindings(schema(), BOUND, TABLES)
    patched, fresh = ({k: sync.TableSnapshot.of(v) for k, v in tables.items()} for tables in (patched, fresh))
    assert sync.count_drift(patched, fresh, columns, {}) == 2
    assert "recU1" in caplog.text and "in email" in caplog.text and "z@x.io" not in caplog.text
    assert sync.count_drift(patched, fresh, columns, {"users": {"recU1"}, "messages": {"recM2"}}) == 0


def test_touched_records_by_table():
    touching = payload(5, {TABLES["users"]: {"changedRecordsById": {"recU1": {}}, "destroyedRecordIds": ["recU2"]},
                           "tblElsewhere000000": {"destroyedRecordIds": ["recQ"]}})
    assert sync.touched_records(touching, schema()) == {"users": {"recU1", "recU2"}}


# -- deletion -------------------------------------------------------------------------------

def table_plan(key, orphans, writes=(), has_id_field=True):
    spec = sync.TABLE_SPECS[key]
    columns = sync.bind_columns(spec, {"id": FieldInfo("id", "singleLineText", "id")} if has_id_field else {}, {})
    return sync.TablePlan(spec, columns, {}, columns.id_key, list(writes), orphans, [], [], [])


def rec(rid, mongo_id):
    return {"id": rid, "createdTime": "2026-01-01T00:00:00.000Z", "fields": {"id": mongo_id} if mongo_id else {}}


def kept(n):
    return [sync.PlannedWrite(sync.ExportRecord(i, f"u{i}", {}), "skip", record_id=f"recK{i}", matched_by="id")
            for i in range(n)]


def test_deletes_only_records_whose_id_left_the_export_in_child_first_order():
    plans = {"users": table_plan("users", [rec("recGone", "gone1"), rec("recHand", None), rec("recDup", "u1")],
                                 kept(100)),
             "messages": table_plan("messages", [rec("recM", "m-gone")], kept(100))}
    exported = {"users": {f"u{i}" for i in range(100)}, "messages": {f"u{i}" for i in range(100)}}
    got = sync.plan_deletions(plans, exported, settings(delete_missing=True))
    assert list(got) == ["messages", "users"]
    assert [r["id"] for r in got["users"].records] == ["recGone"]  # never an empty id; u1 is still exported
    assert got["users"].held is False and got["users"].with_id == 102 and got["users"].limit == 5


def test_the_safety_cap_holds_a_table_back_and_force_lifts_it():
    gone = [rec(f"recG{i}", f"g{i}") for i in range(6)]
    plans = {"users": table_plan("users", gone, kept(100))}
    exported = {"users": {f"u{i}" for i in range(100)}}
    held = sync.plan_deletions(plans, exported, settings(delete_missing=True))["users"]
    assert held.held and held.limit == 5 and held.with_id == 106
    assert not sync.plan_deletions(plans, exported, settings(delete_missing=True, force_delete=True))["users"].held
    loose = sync.plan_deletions(plans, exported, settings(delete_missing=True, AIRTABLE_MAX_DELETE_FRACTION="0.1"))
    assert not loose["users"].held


def test_creates_count_toward_the_cap():
    creates = [sync.PlannedWrite(sync.ExportRecord(i, f"n{i}", {}), "create") for i in range(20)]
    plans = {"users": table_plan("users", [rec(f"recG{i}", f"g{i}") for i in range(5)], kept(80) + creates)}
    exported = {"users": {f"u{i}" for i in range(80)} | {f"n{i}" for i in range(20)}}
    assert not sync.plan_deletions(plans, exported, settings(delete_missing=True))["users"].held  # 5 of 105


@pytest.mark.parametrize("case", ["no flag", "limit", "empty export", "not synced", "no id field"])
def test_never_deletes(case):
    plans = {"users": table_plan("users", [rec("recGone", "gone")], kept(100), has_id_field=case != "no id field")}
    exported = {"users": {f"u{i}" for i in range(100)}}
    conf = settings(delete_missing=case != "no flag", limit=5 if case == "limit" else None)
    if case == "empty export":
        exported = {"users": set()}
    if case == "not synced":
        plans = {}
    assert sync.plan_deletions(plans, exported, conf) == {}


def test_force_delete_needs_delete_missing():
    with pytest.raises(sync.UsageError, match="--force-delete goes with --delete-missing"):
        settings(force_delete=True)


def test_old_archives_are_pruned_and_nothing_else(tmp_path):
    now = datetime(2026, 12, 1, 12, 0, 0)
    names = ["deleted_20261030_120000.jsonl", "deleted_20261101_130000.jsonl", "deleted_20261120_000000.jsonl",
             "sync_report_20250101_000000.json", "deleted_20250101_000000.jsonl.bak", "airtable_sync.log"]
    for name in names:
        (tmp_path / name).write_text("x")
    sync.prune_archives(tmp_path, 30, now)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[1:])


def test_the_cap_is_exact_at_its_edge():
    gone = [rec(f"recG{i}", f"g{i}") for i in range(29)]
    plans = {"users": table_plan("users", gone, kept(71))}
    exported = {"users": {f"u{i}" for i in range(71)}}
    at_cap = sync.plan_deletions(plans, exported, settings(delete_missing=True, AIRTABLE_MAX_DELETE_FRACTION="0.29"))
    assert at_cap["users"].limit == 29 and not at_cap["users"].held  # 29 of 100 is not more than 29%


def test_an_archive_name_that_is_no_date_is_left_alone(tmp_path):
    (tmp_path / "deleted_20241399_000000.jsonl").write_text("x")
    sync.prune_archives(tmp_path, 30, datetime(2026, 12, 1))
    assert (tmp_path / "deleted_20241399_000000.jsonl").exists()


def read_cache(path):
    """A cache's records, as a run's snapshot reads them; None when missing or unreadable."""
    snapshot = sync.TableSnapshot.from_cache(path)
    if snapshot is None:
        return None
    try:
        return list(snapshot)
    finally:
        snapshot.close()


@pytest.mark.parametrize("records", [
    [],
    [{"id": "rec1", "fields": {"message": "ends with a bracket ]\n,", "x": "日本語, ],\n"}}],
    [{"id": f"rec{i}", "fields": {"n": i, "s": "a,\\n]" * i}} for i in range(5)],
])
def test_a_cache_reads_back_as_written(tmp_path, records):
    path = tmp_path / "airtable_users.json"
    sync.write_cache(path, sync.TableSnapshot.of(records))
    assert read_cache(path) == records


def test_a_hand_made_cache_array_is_read_whole(tmp_path):
    path = tmp_path / "airtable_users.json"
    path.write_text('[{"id": "rec1", "fields": {}},\n  {"id": "rec2", "fields": {"a": 1}}]')
    assert [r["id"] for r in read_cache(path)] == ["rec1", "rec2"]
    path.write_text('[{"id": "rec1"')
    assert read_cache(path) is None


def test_replayed_writes_leave_no_table_changed():
    records = snapshot()
    own = payload(5, {TABLES["users"]: {"changedRecordsById": {"recU1": {"current": {"cellValuesByFieldId": {
        "fldUcount": 3}}}}}}, source="publicApi")
    assert apply_payloads(records, [own], schema()) == ({}, set())


def test_a_cache_cut_short_is_unreadable(tmp_path):
    path = tmp_path / "airtable_users.json"
    sync.write_cache(path, sync.TableSnapshot.of({"id": f"rec{i}", "fields": {}} for i in range(3)))
    path.write_text(path.read_text().rsplit("\n", 3)[0] + "\n")  # lost its last record and the bracket
    assert read_cache(path) is None


def test_half_an_emoji_survives_the_cache(tmp_path):
    path = tmp_path / "airtable_messages.json"
    records = [{"id": "rec1", "fields": {"message": "cut mid-emoji \ud83d"}}]
    sync.write_cache(path, sync.TableSnapshot.of(records))
    assert read_cache(path) == records
    assert [p.name for p in tmp_path.iterdir()] == ["airtable_messages.json"]  # no tmp file left


def test_an_indented_hand_made_cache_is_read_whole(tmp_path):
    path = tmp_path / "airtable_users.json"
    records = [{"id": "rec1", "fields": {"a": [1, 2]}}, {"id": "rec2", "fields": {}}]
    path.write_text(__import__("json").dumps(records, indent=2))
    assert read_cache(path) == records


@pytest.mark.parametrize("name, value, message", [
    ("AIRTABLE_CHANGE_TRACKING", "hourly", "choose webhook or off"),
    ("AIRTABLE_FULL_SYNC_DAYS", "0", "greater than zero"),
    ("AIRTABLE_FULL_SYNC_DAYS", "weekly", "is not a number"),
    ("AIRTABLE_MAX_DELETE_FRACTION", "1.5", "between 0 and 1"),
    ("AIRTABLE_MAX_DELETE_FRACTION", "-0.1", "zero or more"),
    ("AIRTABLE_ARCHIVE_DAYS", "-3", "greater than zero"),
])
def test_bad_change_tracking_and_deletion_settings_are_usage_errors(name, value, message):
    with pytest.raises(sync.UsageError, match=message):
        settings(**{name: value})


def test_the_new_settings_defaults_and_values():
    default = settings()
    assert (default.change_tracking, default.full_sync_days, default.max_delete_fraction, default.archive_days) == \
        (True, 7.0, 0.05, 30.0)
    chosen = settings(AIRTABLE_CHANGE_TRACKING="OFF", AIRTABLE_FULL_SYNC_DAYS="1.5",
                      AIRTABLE_MAX_DELETE_FRACTION="0", AIRTABLE_ARCHIVE_DAYS="90")
    assert (chosen.change_tracking, chosen.full_sync_days, chosen.max_delete_fraction, chosen.archive_days) == \
        (False, 1.5, 0.0, 90.0)


def test_a_snapshot_reads_matching_cells_from_its_lines_as_a_parse_would(tmp_path):
    records = [{"id": "rec1", "createdTime": "x", "fields": {"fldId": "u1", "fldKey": 'Qu"o\\te é \ud83d'}},
               {"id": "rec2", "createdTime": "x", "fields": {"fldId": 7, "fldKey": ["a"]}},  # not text: parsed
               {"id": "rec3", "createdTime": "x", "fields": {"fldOther": '"fldId": "fake"'}},  # escaped: not a cell
               {"id": "rec4", "createdTime": "x", "fields": {}}]
    path = tmp_path / "airtable_users.json"
    sync.write_cache(path, sync.TableSnapshot.of(records))
    snapshot = sync.TableSnapshot.from_cache(path, tmp_path)
    # Up to the first cell that is not blank: a record with an id is matched by it, not its key.
    assert list(snapshot.cells(["fldId", "fldKey"])) == [("rec1", ["u1", None]), ("rec2", [7, None]),
                                                          ("rec3", [None, None]), ("rec4", [None, None])]
    assert list(snapshot.cells(["fldKey", "fldId"])) == [("rec1", ['Qu"o\\te é \ud83d', None]), ("rec2", [["a"], None]),
                                                          ("rec3", [None, None]), ("rec4", [None, None])]
    blank_id = {"id": "rec5", "createdTime": "x", "fields": {"fldId": "", "fldKey": "k"}}
    snapshot.put(blank_id)
    assert list(snapshot.cells(["fldId", "fldKey"]))[-1] == ("rec5", ["", "k"])
    assert list(snapshot) == records + [blank_id]
    snapshot.put({**records[0], "fields": {"fldId": "u9"}})  # put again: the spill, same place in the order
    assert [rec_id for rec_id, _ in snapshot.cells(["fldId"])] == ["rec1", "rec2", "rec3", "rec4", "rec5"]
    assert snapshot.get("rec1")["fields"] == {"fldId": "u9"} and snapshot.pop("rec3")["id"] == "rec3"
    sync.write_cache(path, snapshot)
    assert [r["id"] for r in read_cache(path)] == ["rec1", "rec2", "rec4", "rec5"]
    snapshot.close()
    assert [p.name for p in tmp_path.iterdir()] == ["airtable_users.json"]  # the spill left nothing behind
