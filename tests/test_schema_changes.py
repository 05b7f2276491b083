"""People reshaping the base between runs, end to end over HTTP: the sync binds each mapped field
to its Airtable field id the first time it sees it, and keeps filling it whatever it is called
now. Each test checks the base itself, not only the report."""
from __future__ import annotations

import json

import airtable_sync as sync
from conftest import field_ids
from test_change_tracking import EVENTS, MESSAGES, USERS, clean_start, mongo_id, state_of, tracking
from test_faults import writes


def log_text(harness) -> str:
    return (harness.reports_dir / "airtable_sync.log").read_text()


def change_export(harness, name: str, change) -> list[dict]:
    docs = harness.read_export(name)
    change(docs)
    harness.write_export(name, docs)
    return docs


def record_of(emulator, table: str, mongo: str) -> dict:
    """The record the sync matches to a Mongo id: the first listed (the fixtures hold a duplicate)."""
    return next(r for r in emulator.records(table) if r["fields"].get("id") == mongo)


# -- a mapped column renamed ------------------------------------------------------------------

def test_a_renamed_column_keeps_filling_costs_one_schema_request_and_is_warned(harness, emulator):
    clean_start(harness)
    emulator.client.rename_field(USERS, "occupation", "Job title")
    users = change_export(harness, "users.json", lambda docs: docs[0].update(occupation="Sommelier"))
    first = mongo_id(users[0])
    emulator.clear_log()
    assert harness.run() == 0
    report = harness.report()
    assert report["change_tracking"]["mode"] == "webhook"  # the snapshot is keyed by id: still exact
    assert emulator.count(kind="meta") == 1 and emulator.count(kind="read") == 0
    assert report["requests"]["read"] == 3  # the webhook, one page of payloads, the schema
    assert report["tables"]["users"]["renamed_fields"] == [{"mapped": "occupation", "airtable": "Job title"}]
    assert report["tables"]["users"]["missing_in_airtable"] == []
    assert record_of(emulator, USERS, first)["fields"]["Job title"] == "Sommelier"
    warnings = [line for line in log_text(harness).splitlines() if "WARNING" in line and "is called 'Job title'" in line]
    assert len(warnings) == 1 and "users:" in warnings[0] and "'occupation'" in warnings[0]
    assert "users.occupation renamed to 'Job title'" in log_text(harness).splitlines()[-1]  # the attention line
    markdown = harness.reports()[-1].with_suffix(".md").read_text()
    assert "occupation" in markdown and "Job title" in markdown
    # A person's edit in the renamed column is set back, and the next quiet night costs two requests.
    emulator.client.update(USERS, record_of(emulator, USERS, first)["id"], {"Job title": "Astronaut"})
    assert harness.run() == 0
    assert harness.report()["tables"]["users"]["reverted_edits"] == 1
    assert record_of(emulator, USERS, first)["fields"]["Job title"] == "Sommelier"
    emulator.clear_log()
    assert harness.run() == 0
    assert harness.report()["requests"]["total"] == 2 and writes(emulator) == []


def test_two_renames_in_a_row_are_both_followed(harness, emulator):
    clean_start(harness)
    emulator.client.rename_field(USERS, "occupation", "Job")
    assert harness.run() == 0
    emulator.client.rename_field(USERS, "Job", "Job title")
    users = change_export(harness, "users.json", lambda docs: docs[1].update(occupation="Baker"))
    assert harness.run() == 0
    assert harness.report()["tables"]["users"]["renamed_fields"] == [{"mapped": "occupation", "airtable": "Job title"}]
    assert record_of(emulator, USERS, mongo_id(users[1]))["fields"]["Job title"] == "Baker"
    assert harness.report()["change_tracking"]["mode"] == "webhook"


def test_the_key_columns_and_a_link_renamed_with_changes_a_new_record_and_a_typed_row(harness, emulator):
    """The merge key (`id`), the natural key (Events `Name`) and a link (Messages `Users`) renamed
    in one night, with Mongo changes, a new user, a new message and a row a person typed for a new
    event: nothing doubled, every value in its column."""
    clean_start(harness)
    before = {t: len(emulator.records(t)) for t in (USERS, EVENTS, MESSAGES)}
    emulator.client.rename_field(USERS, "id", "Mongo ID")
    emulator.client.rename_field(EVENTS, "Name", "Event")
    emulator.client.rename_field(MESSAGES, "Users", "Guest")
    # A person types the row of an event that is about to appear in the export.
    typed = emulator.client.create(EVENTS, {"Event": "Harvest Supper", "location": "typed by hand"})
    users = change_export(harness, "users.json", lambda docs: (
        docs[2].update(occupation="Chef"),
        docs.append({"_id": {"$oid": "6900000000000000000000aa"}, "email": "new.person@example.com",
                     "firstName": "New"})))
    change_export(harness, "events.json", lambda docs: docs.append(
        {"_id": {"$oid": "6900000000000000000000bb"}, "name": "harvest supper", "location": "Queens"}))
    change_export(harness, "messages.json", lambda docs: docs.append(
        {"_id": {"$oid": "6900000000000000000000cc"}, "message_text": "Join us!", "user_id": "6900000000000000000000aa",
         "event_id": "6900000000000000000000bb"}))
    assert harness.run() == 0
    report = harness.report()
    assert {t: r["created"] for t, r in report["tables"].items()} == {"users": 1, "events": 0, "messages": 1}
    assert report["tables"]["events"]["renamed_fields"] == [{"mapped": "Name", "airtable": "Event"}]
    assert report["tables"]["messages"]["renamed_fields"] == [{"mapped": "Users", "airtable": "Guest"}]
    after = {t: len(emulator.records(t)) for t in (USERS, EVENTS, MESSAGES)}
    assert after == {USERS: before[USERS] + 1, EVENTS: before[EVENTS] + 1, MESSAGES: before[MESSAGES] + 1}
    new_user = next(r for r in emulator.records(USERS) if r["fields"].get("Mongo ID") == "6900000000000000000000aa")
    claimed = next(r for r in emulator.records(EVENTS) if r["id"] == typed)
    assert claimed["fields"]["id"] == "6900000000000000000000bb" and claimed["fields"]["location"] == "Queens"
    message = next(r for r in emulator.records(MESSAGES) if r["fields"].get("id") == "6900000000000000000000cc")
    assert message["fields"]["Guest"] == [new_user["id"]] and message["fields"]["Events"] == [typed]
    assert next(r for r in emulator.records(USERS) if r["fields"].get("Mongo ID") == mongo_id(users[2])
                )["fields"]["occupation"] == "Chef"
    emulator.clear_log()
    assert harness.run() == 0 and writes(emulator) == []  # settled: a rerun writes nothing


# -- deleted, re-created, taken over, retyped ---------------------------------------------------

def test_a_deleted_column_is_reported_missing_and_a_recreated_one_is_bound_and_filled(harness, emulator):
    clean_start(harness)
    emulator.client.delete_field(USERS, "occupation")
    users = change_export(harness, "users.json", lambda docs: docs[0].update(firstName="Renamed"))
    assert harness.run() == 0
    report = harness.report()
    assert report["tables"]["users"]["missing_in_airtable"] == ["occupation"]
    assert record_of(emulator, USERS, mongo_id(users[0]))["fields"]["firstName"] == "Renamed"  # the rest syncs
    assert "field 'occupation' was deleted in Airtable" in log_text(harness)
    assert "occupation" not in state_of(harness)["bindings"]["users"]
    new_id = emulator.client.create_field(USERS, "occupation", "singleLineText")
    assert harness.run() == 0
    assert harness.report()["tables"]["users"]["missing_in_airtable"] == []
    assert state_of(harness)["bindings"]["users"]["occupation"] == new_id
    filled = {mongo_id(u): u["occupation"] for u in users if u.get("occupation")}
    assert filled and {m: record_of(emulator, USERS, m)["fields"].get("occupation") for m in filled} == filled


def test_a_bound_column_renamed_away_keeps_the_data_when_another_takes_its_name(harness, emulator):
    clean_start(harness)
    old_id = field_ids(emulator, USERS)["occupation"]
    emulator.client.rename_field(USERS, "occupation", "Old occupation")
    emulator.client.create_field(USERS, "occupation", "singleLineText")
    users = change_export(harness, "users.json", lambda docs: docs[0].update(occupation="Potter"))
    assert harness.run() == 0
    rec = record_of(emulator, USERS, mongo_id(users[0]))["fields"]
    assert rec["Old occupation"] == "Potter" and "occupation" not in rec
    assert state_of(harness)["bindings"]["users"]["occupation"] == old_id
    assert "the other field now called 'occupation' is not synced" in log_text(harness)


def test_a_column_renamed_to_another_mapped_columns_name_keeps_serving_its_own(harness, emulator):
    clean_start(harness)
    emulator.client.rename_field(USERS, "occupation", "Job")
    emulator.client.rename_field(USERS, "homeNeighborhood", "occupation")
    users = change_export(harness, "users.json", lambda docs: docs[0].update(
        occupation="Weaver", homeNeighborhood="Astoria"))
    assert harness.run() == 0
    rec = record_of(emulator, USERS, mongo_id(users[0]))["fields"]
    assert rec["Job"] == "Weaver" and rec["occupation"] == "Astoria"
    assert sorted(harness.report()["tables"]["users"]["renamed_fields"], key=lambda r: r["mapped"]) == [
        {"mapped": "homeNeighborhood", "airtable": "occupation"}, {"mapped": "occupation", "airtable": "Job"}]
    assert "is not synced" not in log_text(harness)


def test_a_retyped_column_is_converted_by_its_new_type_and_then_left_alone(harness, emulator):
    clean_start(harness)
    emulator.client.change_field_type(USERS, "event_count", "singleLineText")
    assert harness.run() == 0
    assert tracking(harness)["mode"] == "full"  # Airtable converted the cells: read them again
    users = harness.read_export("users.json")
    counted = [u for u in users if sync.unwrap_extended_json(u).get("event_count") is not None]
    for user in counted:
        assert record_of(emulator, USERS, mongo_id(user))["fields"]["event_count"] == \
            str(sync.unwrap_extended_json(user)["event_count"])
    emulator.clear_log()
    assert harness.run() == 0 and writes(emulator) == []


# -- the state, dry runs, --check ---------------------------------------------------------------

def test_a_dry_run_reports_the_rename_and_saves_no_binding(harness, emulator):
    clean_start(harness)
    emulator.client.rename_field(USERS, "occupation", "Job title")
    saved = (harness.cache_dir / "airtable_state.json").read_text()
    emulator.clear_log()
    assert harness.run("--dry-run") == 0
    assert harness.report()["tables"]["users"]["renamed_fields"] == [{"mapped": "occupation", "airtable": "Job title"}]
    assert (harness.cache_dir / "airtable_state.json").read_text() == saved
    assert writes(emulator) == []


def test_with_the_state_lost_after_a_rename_the_binding_falls_back_to_names(harness, emulator):
    clean_start(harness)
    emulator.client.rename_field(USERS, "occupation", "Job title")
    (harness.cache_dir / "airtable_state.json").unlink()
    users = change_export(harness, "users.json", lambda docs: docs[0].update(occupation="Sculptor"))
    count = len(emulator.records(USERS))
    assert harness.run() == 0
    report = harness.report()
    assert report["tables"]["users"]["missing_in_airtable"] == ["occupation"]
    assert record_of(emulator, USERS, mongo_id(users[0]))["fields"]["Job title"] != "Sculptor"
    assert len(emulator.records(USERS)) == count  # nothing doubled
    # Renaming the column back binds it again, and it fills.
    emulator.client.rename_field(USERS, "Job title", "occupation")
    assert harness.run() == 0
    assert record_of(emulator, USERS, mongo_id(users[0]))["fields"]["occupation"] == "Sculptor"


def test_a_state_from_before_bindings_is_migrated_with_one_full_read(harness, emulator):
    clean_start(harness)
    path = harness.cache_dir / "airtable_state.json"
    old = json.loads(path.read_text())
    del old["bindings"]
    old["version"] = 1
    path.write_text(json.dumps(old))
    emulator.client.rename_field(USERS, "occupation", "Job title")  # after the old version's last run
    users = change_export(harness, "users.json", lambda docs: docs[0].update(occupation="Glazier"))
    assert harness.run() == 0
    assert "earlier version" in tracking(harness)["reason"]
    assert record_of(emulator, USERS, mongo_id(users[0]))["fields"]["Job title"] == "Glazier"
    assert harness.run() == 0 and tracking(harness)["mode"] == "webhook"


def test_bindings_are_kept_with_change_tracking_off(harness, emulator):
    off = {"AIRTABLE_CHANGE_TRACKING": "off"}
    assert harness.run(env=off) == 1  # the fixtures' one bad email
    emulator.client.rename_field(USERS, "occupation", "Job title")
    users = change_export(harness, "users.json", lambda docs: docs[0].update(occupation="Cooper"))
    harness.run(env=off)
    assert record_of(emulator, USERS, mongo_id(users[0]))["fields"]["Job title"] == "Cooper"
    assert state_of(harness)["webhook_id"] is None and "occupation" in state_of(harness)["bindings"]["users"]


def test_check_shows_renames_deleted_fields_and_fields_the_export_lacks(harness, emulator, capsys):
    clean_start(harness)
    emulator.client.rename_field(USERS, "occupation", "Job title")
    emulator.client.delete_field(USERS, "homeNeighborhood")
    change_export(harness, "users.json", lambda docs: [d.pop("gender", None) for d in docs])
    capsys.readouterr()
    assert harness.run("--check") == 0
    out = capsys.readouterr().out
    assert "occupation" in out and "renamed to 'Job title'" in out
    assert "homeNeighborhood" in out and "missing in Airtable (its field was deleted)" in out
    assert "mapped Mongo fields no exported record carries: gender" in out


# -- the Mongo side ---------------------------------------------------------------------------

def test_a_field_the_exporter_renamed_is_warned_and_airtable_keeps_its_values(harness, emulator):
    clean_start(harness)
    users = change_export(harness, "users.json", lambda docs: [d.update(job=d.pop("occupation")) for d in docs
                                                                if "occupation" in d])
    kept = {mongo_id(u): record_of(emulator, USERS, mongo_id(u))["fields"].get("occupation") for u in users}
    emulator.clear_log()
    assert harness.run() == 0
    result = harness.report()["tables"]["users"]
    assert result["absent_in_export"] == ["occupation"] and "job" in result["unmapped_fields"]
    assert writes(emulator) == []
    assert {m: record_of(emulator, USERS, m)["fields"].get("occupation") for m in kept} == kept
    assert "mapped Mongo fields that no exported record carries" in log_text(harness)
    assert harness.report()["tables"]["events"]["absent_in_export"] == []


def test_a_table_set_up_by_name_keeps_syncing_after_a_person_renames_it(harness, emulator):
    by_name = {"AIRTABLE_USERS_TABLE": "Users"}
    assert harness.run(env=by_name) == 1  # the fixtures' one bad email
    emulator.client.rename_table(USERS, "People")
    users = change_export(harness, "users.json", lambda docs: docs[0].update(occupation="Florist"))
    emulator.clear_log()
    assert harness.run(env=by_name) == 1
    assert harness.report()["change_tracking"]["mode"] == "webhook"
    assert record_of(emulator, USERS, mongo_id(users[0]))["fields"]["occupation"] == "Florist"
    assert all(r.table == USERS for r in emulator.requests if r.kind == "write")  # by its id, not the old name


def test_use_cache_without_the_schema_reads_the_table_instead_of_a_cache_keyed_by_field_id(harness, emulator):
    clean_start(harness)
    emulator.add_fault(kind="meta", status=403, times=None)  # the token lost schema.bases:read
    emulator.clear_log()
    assert harness.run("--use-cache") == 0
    assert emulator.count(kind="read") == 3 and "the cache names fields by id" in log_text(harness)
    # As a --full run without the schema: nothing created or updated, one probe a table finds its computed field.
    assert all(t["created"] == t["updated"] == 0 for t in harness.report()["tables"].values())
    assert len(writes(emulator)) == 3


def test_use_cache_reads_the_table_instead_of_a_cache_an_earlier_version_keyed_by_name(harness, emulator):
    clean_start(harness)
    (harness.cache_dir / "airtable_users.json").write_text(json.dumps(emulator.records(USERS)))
    emulator.clear_log()
    assert harness.run("--use-cache") == 0
    assert emulator.count(kind="read", table=USERS) == 1 and writes(emulator) == []
    assert "the cache names fields by name" in log_text(harness)
