"""Unit tests of the pure rules: conversion, Extended JSON, matching, equality, links, retry policy."""
from __future__ import annotations

import math
import re
import threading
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import pytest
import requests

import airtable_sync as sync
from conftest import load_export, parse_export
from airtable_sync import ExportRecord, Invalid, LinkRef, PENDING, TABLE_SPECS

UTC = timezone.utc


# -- Extended JSON -------------------------------------------------------------

def test_unwraps_every_extended_json_wrapper():
    doc = {
        "_id": {"$oid": "64b7f0c2a1b2c3d4e5f60718"},
        "iso": {"$date": "2024-03-05T18:30:00.123Z"},
        "ms": {"$date": 1709663400123},
        "long_ms": {"$date": {"$numberLong": "1709663400123"}},
        "long": {"$numberLong": "9007199254740993"},
        "int": {"$numberInt": "42"},
        "double": {"$numberDouble": "2.5"},
        "nan": {"$numberDouble": "NaN"},
        "decimal": {"$numberDecimal": "49.50"},
        "nested": {"when": {"$date": "2024-01-01T00:00:00Z"}, "tags": [{"$numberInt": "1"}]},
    }
    out = sync.unwrap_extended_json(doc)
    moment = datetime(2024, 3, 5, 18, 30, 0, 123000, tzinfo=UTC)
    assert out["_id"] == "64b7f0c2a1b2c3d4e5f60718"
    assert out["iso"] == moment and out["ms"] == moment and out["long_ms"] == moment
    assert out["long"] == 9007199254740993 and out["int"] == 42 and out["double"] == 2.5
    assert math.isnan(out["nan"])
    assert out["decimal"] == Decimal("49.50")
    assert out["nested"] == {"when": datetime(2024, 1, 1, tzinfo=UTC), "tags": [1]}


def test_a_dict_that_only_looks_like_extended_json_is_kept():
    assert sync.unwrap_extended_json({"$oid": 5}) == {"$oid": 5}
    assert sync.unwrap_extended_json({"$date": "soon"}) == {"$date": "soon"}
    assert sync.unwrap_extended_json({"$oid": "a", "x": 1}) == {"$oid": "a", "x": 1}


def test_mongo_id_prefers_id_then_underscore_id():
    assert sync.mongo_id_of({"id": "a", "_id": "b"}) == "a"
    assert sync.mongo_id_of({"_id": "b"}) == "b"
    assert sync.mongo_id_of({"id": "", "_id": 7}) == "7"
    assert sync.mongo_id_of({"email": "x"}) is None


# -- loading exports -------------------------------------------------------------

def test_parses_a_json_array_and_json_lines_alike():
    path = Path("x.json")
    array = b'[{"_id": {"$oid": "a1"}}, {"id": "b2"}]'
    lines = b'{"_id": {"$oid": "a1"}}\n\n{"id": "b2"}\n'
    assert parse_export(path, array) == parse_export(path, lines)
    assert parse_export(path, b"\xef\xbb\xbf[]") == []  # a UTF-8 BOM is not an error


@pytest.mark.parametrize("raw, message", [
    (b"", "file is empty"),
    (b"  \n", "file is empty"),
    (b"[{\"a\": 1},", "not valid JSON"),
    (b"{\"a\": 1}\n{\"a\": ", "line 2: not valid JSON"),
    (b"\"users\"", "expected a JSON array or JSON Lines"),
    (b"[1, {\"a\": 1}]", "record 1 is not a JSON object (int)"),
    (b"{\"a\": 1}\n[2]", "line 2 is not a JSON object (list)"),
    (b"[{\"name\": \"Jos\xe9\"}]", "not valid UTF-8 (byte 0xe9 at offset 14)"),
])
def test_unusable_exports_get_a_one_line_error_naming_the_file(raw, message):
    with pytest.raises(sync.UsageError) as caught:
        parse_export(Path("data/users.json"), raw)
    text = str(caught.value)
    assert text.startswith("data/users.json: ") and message in text and "\n" not in text


def test_load_export_applies_the_limit_and_reports_a_missing_file(tmp_path):
    (tmp_path / "users.json").write_text('[{"id": "a"}, {"id": "b"}, {"id": "c"}]')
    records = load_export(tmp_path / "users.json", limit=2)
    assert [r.mongo_id for r in records] == ["a", "b"]
    assert load_export(tmp_path / "missing.json", limit=None) is None


# -- conversion --------------------------------------------------------------------

MOMENT = datetime(2024, 3, 5, 18, 30, 0, 537000, tzinfo=UTC)


@pytest.mark.parametrize("value, field_type, expected", [
    ("plain", "singleLineText", "plain"),
    (42, "singleLineText", "42"),
    (True, "multilineText", "True"),
    (MOMENT, "singleLineText", "2024-03-05T18:30:00.537Z"),
    (["a", "b", 3], "multilineText", "a, b, 3"),
    ({"b": 1, "a": {"when": MOMENT}, "c": "é"}, "multilineText",
     '{"a":{"when":"2024-03-05T18:30:00.537Z"},"b":1,"c":"é"}'),
    ([{"x": 1}, {"y": float("nan")}], "multilineText", '[{"x":1},{"y":null}]'),
    (7, "number", 7),
    (7.5, "currency", 7.5),
    ("12", "number", 12),
    (" 49.50 ", "currency", 49.5),
    (Decimal("49.50"), "currency", 49.5),
    (Decimal("3"), "number", 3),
    ("", "number", None),
    (float("nan"), "number", None),
    (float("inf"), "percent", None),
    (1, "checkbox", True),
    (0, "checkbox", False),
    ("yes", "checkbox", True),
    (MOMENT, "date", "2024-03-05"),
    ("1990-05-17", "date", "1990-05-17"),
    ("2024-03-05T23:30:00-05:00", "date", "2024-03-06"),
    (MOMENT, "dateTime", "2024-03-05T18:30:00.537Z"),
    ("2024-03-05T18:30:00", "dateTime", "2024-03-05T18:30:00.000Z"),
    ("2024-03-05T13:30:00-05:00", "dateTime", "2024-03-05T18:30:00.000Z"),
    ("vip", "singleSelect", "vip"),
    (["a", "b", "a"], "multipleSelects", ["a", "b"]),
    ("solo", "multipleSelects", ["solo"]),
    (None, "number", None),
    (None, "singleLineText", None),
])
def test_converts_by_airtable_field_type(value, field_type, expected):
    assert sync.convert_value(value, field_type) == expected


@pytest.mark.parametrize("value, field_type", [
    ("n/a", "number"), ("twelve", "currency"), ("1_000", "number"), (True, "number"), ([1], "number"),
    ("not a date", "date"), (20240305, "dateTime"), ({"a": 1}, "singleSelect"), ([{"a": 1}], "multipleSelects"),
])
def test_invalid_values_raise(value, field_type):
    with pytest.raises(Invalid):
        sync.convert_value(value, field_type)


def test_infers_types_from_airtable_values_then_the_mongo_value():
    assert sync.infer_type([True], "x") == "checkbox"
    assert sync.infer_type([3], None) == "number"
    assert sync.infer_type(["2024-01-01"], None) == "date"
    assert sync.infer_type(["2024-01-01T10:00:00.000Z"], None) == "dateTime"
    assert sync.infer_type([["a", "b"]], None) == "multipleSelects"
    assert sync.infer_type([], MOMENT) == "dateTime"
    assert sync.infer_type([], 4.5) == "number"
    assert sync.infer_type([], False) == "checkbox"
    assert sync.infer_type([], "text") == "multilineText"


# -- equality ----------------------------------------------------------------------

@pytest.mark.parametrize("new, old, field_type", [
    (None, None, "singleLineText"), ("", None, "singleLineText"), ([], None, "multipleSelects"),
    (None, "", "multilineText"), (False, None, "checkbox"),
    (5.0, 5, "number"), (5, 5.0, "currency"),
    ("2024-03-05T18:30:00.537Z", "2024-03-05T18:30:00.000Z", "dateTime"),
    ("2024-03-05", "2024-03-05", "date"),
    (["a", "b"], ["a", "b"], "multipleSelects"),
    ("x", "x", "singleLineText"),
])
def test_equal_values(new, old, field_type):
    assert sync.values_equal(new, old, field_type)


@pytest.mark.parametrize("new, old, field_type", [
    (None, "x", "singleLineText"), ("x", None, "singleLineText"), (True, None, "checkbox"),
    (None, 0, "number"), (False, None, "singleLineText"),
    (5.5, 5, "number"),
    ("2024-03-05T18:30:01.000Z", "2024-03-05T18:30:00.000Z", "dateTime"),
    (["b", "a"], ["a", "b"], "multipleSelects"),
    (["a"], ["a", "b"], "multipleRecordLinks"),
    ("X", "x", "singleLineText"),
])
def test_unequal_values(new, old, field_type):
    assert not sync.values_equal(new, old, field_type)


def test_changed_fields_keeps_only_differences():
    types = {"a": "number", "b": "singleLineText", "c": "checkbox"}
    assert sync.changed_fields({"a": 1.0, "b": None, "c": False}, {"a": 1, "b": "gone"}, types) == {"b": None}


# -- matching ----------------------------------------------------------------------

def rec(rec_id, **fields):
    return {"id": rec_id, "createdTime": "2025-01-01T00:00:00.000Z", "fields": fields}


class ExportList(list):
    """Export records in memory, with the interface plan_table reads an ExportIndex through."""

    load = list.__getitem__

    def __init__(self, records):
        super().__init__(records)
        self.mongo_ids = [r.mongo_id for r in self]
        self.carried = {k for r in self for k in r.doc}


def exported(*docs):
    return ExportList(ExportRecord(i, sync.mongo_id_of(d), d) for i, d in enumerate(docs))


def matched(docs, airtable, key="users", id_field=True):
    """The matching plan_table does, as (Mongo id, the Airtable record claimed or None, how), and
    the orphans' ids. Each record changes a cell, so that a matched one is an update, not a skip."""
    changing = {"users": "firstName", "messages": "status"}[key]
    types = {"id": "singleLineText", "email": "email", "message": "multilineText", changing: "singleLineText"}
    if not id_field:
        del types["id"]
    docs = ExportList(ExportRecord(r.index, r.mongo_id, {**r.doc, changing: "changed"}) for r in docs)
    plan = sync.plan_table(TABLE_SPECS[key], docs, sync.TableSnapshot.of(airtable), columns(key, types), {})
    return ([(w.record.mongo_id, w.record_id, w.matched_by or w.action) for w in plan.writes],
            [o["id"] for o in plan.orphans])


def test_pass_one_matches_by_id_and_the_first_listed_duplicate_wins():
    airtable = [rec("rec1", id="u1"), rec("rec2", id="u1"), rec("rec3", id="u2")]
    writes, orphans = matched(exported({"id": "u1", "firstName": "A"}, {"id": "u2", "firstName": "B"}), airtable)
    assert writes == [("u1", "rec1", "id"), ("u2", "rec3", "id")] and orphans == ["rec2"]


def test_pass_two_matches_normalised_keys_first_come_first_served():
    airtable = [rec("recA", email="  Maria.Lopez@Example.com "), rec("recB", email="maria.lopez@example.com"),
                rec("recC", id="other", email="sam@x.com"), rec("recD", email="")]
    docs = exported({"id": "u1", "email": "maria.lopez@EXAMPLE.com"}, {"id": "u2", "email": "Maria.Lopez@example.com"},
                    {"id": "u3", "email": "maria.lopez@example.com"}, {"id": "u4", "email": "sam@x.com"},
                    {"id": "u5", "email": ""}, {"id": "u6"})
    writes, orphans = matched(docs, airtable)
    assert writes == [
        ("u1", "recA", "key"), ("u2", "recB", "key"), ("u3", None, "create"),
        ("u4", None, "create"),  # recC has an id: it is not a pass-two candidate
        ("u5", None, "create"), ("u6", None, "create")]  # an empty key never matches
    assert sorted(orphans) == ["recC", "recD"]


def test_id_match_takes_precedence_over_an_earlier_key_claim():
    airtable = [rec("recLegacy", email="a@x.com"), rec("recOwn", id="u2", email="a@x.com")]
    writes, orphans = matched(exported({"id": "u1", "email": "a@x.com"}, {"id": "u2", "email": "a@x.com"}), airtable)
    assert [w[1] for w in writes] == ["recLegacy", "recOwn"] and orphans == []


def test_a_second_export_record_with_the_same_id_fails_and_claims_nothing():
    """Matching it by key would give a typed row the Mongo id the first record's row holds: two
    rows with one id. It fails alone, and the typed row stays an orphan for a later claim."""
    airtable = [rec("recOwn", id="u1", email="a@x.com"), rec("recTyped", email="b@x.com")]
    docs = exported({"id": "u1", "email": "a@x.com"}, {"id": "u1", "email": "b@x.com"})
    writes, orphans = matched(docs, airtable)
    assert writes == [("u1", "recOwn", "id"), ("u1", None, "error")] and orphans == ["recTyped"]


def test_without_an_id_field_only_pass_two_runs_against_all_records():
    airtable = [rec("rec1", id="zzz", message="Hi Ana"), rec("rec2", message="hi bo")]
    docs = exported({"id": "m1", "message": "HI ANA "}, {"id": "m2", "message_text": "Hi Bo"})
    writes, _ = matched(docs, airtable, "messages", id_field=False)
    assert [w[1] for w in writes] == ["rec1", "rec2"]


def test_natural_key_falls_back_to_the_next_field():
    assert sync.natural_key({"message_text": "", "message": " Hello "}, ("message_text", "message")) == "hello"
    assert sync.natural_key({"message_text": None}, ("message_text", "message")) == ""


# -- links and planning ------------------------------------------------------------

def test_link_reference_falls_back_to_sender_and_event_ids():
    users, events = TABLE_SPECS["messages"].links
    assert sync.link_reference({"user_id": "u1", "senderId": "u9"}, users) == "u1"
    assert sync.link_reference({"senderId": "u9"}, users) == "u9"
    assert sync.link_reference({"event_id": None, "eventId": "e2"}, events) == "e2"
    assert sync.link_reference({}, events) is None


def columns(key: str, types: dict[str, str]) -> sync.TableColumns:
    """A table's columns bound from a schema whose field ids are the field names, so that the
    plans' keys read as names here (the binding itself is tested in test_schema_changes.py)."""
    return sync.bind_columns(TABLE_SPECS[key], {n: sync.FieldInfo(n, t, n) for n, t in types.items()}, {})


MESSAGE_SCHEMA = columns("messages", {
    "id": "singleLineText", "message": "multilineText", "status": "singleSelect", "character_count": "formula",
    "Users": "multipleRecordLinks", "Events": "multipleRecordLinks", "similarity_score": "number"})


def test_plan_resolves_links_to_existing_pending_and_unknown_records():
    docs = exported(
        {"id": "m1", "message_text": "a", "user_id": "u1", "eventId": "e1"},
        {"id": "m2", "message_text": "b", "senderId": "u-new", "event_id": "e-gone"},
        {"id": "m3", "message_text": "c", "similarity_score": "junk", "status": None},
    )
    airtable = [rec("recM1", id="m1", message="a", Users=["recU1"], Events=["recE1"]),
                rec("recM3", id="m3", message="c", status="sent")]
    link_index = {"users": {"u1": "recU1", "u-new": PENDING}, "events": {"e1": "recE1"}}
    plan = sync.plan_table(TABLE_SPECS["messages"], docs, sync.TableSnapshot.of(airtable), MESSAGE_SCHEMA, link_index)
    # m1 is unchanged: counted, not kept
    assert [(w.record.mongo_id, w.action) for w in plan.writes] == [("m2", "create"), ("m3", "update")]
    assert plan.skipped == 1 and plan.planned["skip"] == 1
    assert plan.writes[0].fields == {"id": "m2", "message": "b", "Users": [LinkRef("users", "u-new")]}
    assert plan.writes[1].fields == {"status": None}
    assert plan.unresolved_links == 1 and plan.invalid_values == 1
    assert plan.read_only == ["character_count"]
    assert set(plan.missing_in_airtable) >= {"user_name", "updatedAt"}


def test_plan_fails_records_without_id_or_key_and_duplicate_ids():
    docs = exported({"firstName": "No key"}, {"id": "u1", "email": "a@x.com"}, {"id": "u1", "email": "b@x.com"},
                    {"email": "keyed@x.com"}, {"id": "u2", "summary": "x" * (sync.TEXT_LIMIT + 1)})
    schema = columns("users", {"id": "singleLineText", "email": "email", "firstName": "singleLineText",
                               "summary": "multilineText"})
    plan = sync.plan_table(TABLE_SPECS["users"], docs, sync.TableSnapshot.of([]), schema, {})
    actions = [(w.action, w.error) for w in plan.writes]
    assert actions[0] == ("error", "record #1 has no id and no email")
    assert actions[1] == ("create", None)
    assert actions[2][0] == "error" and "duplicate id" in actions[2][1]
    assert actions[3] == ("create", None) and plan.writes[3].fields == {"email": "keyed@x.com"}
    assert actions[4][0] == "error" and "over Airtable's 100000 limit" in actions[4][1]


def test_build_link_index_prefers_this_runs_matches():
    airtable = [rec("recA", id="u1"), rec("recB", id="u1"), rec("recC", email="x")]
    plan = sync.TablePlan(TABLE_SPECS["users"], columns("users", {"id": "singleLineText"}), {}, "id", [
        sync.PlannedWrite(ExportRecord(0, "u2", {}), "update", record_id="recC"),
        sync.PlannedWrite(ExportRecord(1, "u3", {}), "create"),
        sync.PlannedWrite(ExportRecord(2, "u4", {}), "error")], [], [], [], [])
    assert sync.build_link_index(airtable, plan, "id") == {"u1": "recA", "u2": "recC", "u3": PENDING}


def test_unmapped_fields_exclude_id_sources_and_link_sources():
    docs = exported({"_id": "m1", "message_text": "x", "senderId": "u", "eventId": "e", "message": "x", "__v": 0})
    plan = sync.plan_table(TABLE_SPECS["messages"], docs, sync.TableSnapshot.of([]), MESSAGE_SCHEMA, {})
    assert plan.unmapped_fields == ["__v", "message"]


def test_rejected_field_parses_airtable_messages():
    assert sync.rejected_field("UNKNOWN_FIELD_NAME", 'Unknown field name: "participant_top_occupations"') == (
        "participant_top_occupations", "missing")
    assert sync.rejected_field("INVALID_VALUE_FOR_COLUMN",
                               'Field "updatedAt" cannot accept a value because the field is computed') == (
        "updatedAt", "read_only")
    assert sync.rejected_field("INVALID_VALUE_FOR_COLUMN", 'Field "email" cannot accept the provided value') is None


# -- retry policy and throttle ----------------------------------------------------

def retry(status=None, error=None, method="PATCH", path="/v0/app/tbl", attempt=0, headers=None):
    return sync.retry_delay(attempt, 5, method, path, status, headers or {}, error)


def test_retry_policy():
    assert retry(429) == 30.0
    assert retry(429, headers={"Retry-After": "2"}) == 2.0
    assert retry(429, headers={"Retry-After": "3600"}) == 30.0  # only ever sooner than the penalty
    assert retry(429, headers={"Retry-After": "Wed, 21 Oct 2026 07:28:00 GMT"}) == 30.0
    assert retry(503, headers={"Retry-After": "4"}) == 4.0 and retry(503, headers={"Retry-After": "600"}) == 30.0
    assert retry(429, method="POST") == 30.0  # a 429 was not processed: safe to re-send a create
    assert retry(503) == 0.5 and retry(502, attempt=2) == 2.0
    assert retry(503, method="POST") is None  # a plain create may have been applied
    assert retry(503, method="POST", path="/v0/app/tbl/listRecords") == 0.5
    assert retry(error=requests.ReadTimeout()) == 0.5
    assert retry(error=requests.ReadTimeout(), method="POST") is None
    assert retry(error=requests.ConnectTimeout(), method="POST") == 0.5
    assert retry(422) is None and retry(401) is None and retry(200) is None
    assert retry(503, attempt=5) is None


def test_throttle_never_lets_more_than_rate_requests_into_a_rolling_second():
    now = [0.0]
    stop = threading.Event()
    throttle = sync.Throttle(3, stop, clock=lambda: now[0])
    starts = []

    def fake_wait(delay):
        now[0] += delay
        return False

    stop.wait = fake_wait  # the clock jumps instead of sleeping
    for _ in range(10):
        throttle.acquire()
        starts.append(now[0])
        now[0] += 0.05  # request latency
        throttle.release()
    for i, start in enumerate(starts):
        in_window = [s for s in starts if start - 1.0 < s <= start]
        assert len(in_window) <= 3, (i, starts)
    assert starts[3] >= starts[0] + 0.05 + 1.0  # counted from completion, not start


def test_duplicate_ids_fail_before_matching_and_claim_no_legacy_record():
    docs = exported({"id": "u1", "email": "a@x.com"}, {"id": "u1", "email": "legacy@x.com"},
                    {"id": "u2", "email": "legacy@x.com"})
    airtable = [rec("recOwn", id="u1", email="a@x.com"), rec("recLegacy", email="Legacy@x.com")]
    schema = columns("users", {"id": "singleLineText", "email": "email"})
    plan = sync.plan_table(TABLE_SPECS["users"], docs, sync.TableSnapshot.of(airtable), schema, {})
    assert [(w.record.mongo_id, w.action, w.record_id) for w in plan.writes] == [
        ("u1", "error", None), ("u2", "update", "recLegacy")]
    assert plan.skipped == 1 and plan.orphans == []  # u1 matched recOwn by id, unchanged


# -- settings -----------------------------------------------------------------------

def settings(env, *argv):
    args = sync.build_arg_parser().parse_args(["--mongo-dir", ".", *argv])
    return sync.settings_from(args, {"AIRTABLE_API_KEY": "patSECRET", **env})


def test_settings_defaults_follow_the_contract():
    s = settings({})
    assert (s.base_id, s.table_ids, s.endpoint_url, s.max_rps, s.timeout_s) == (
        "appaquqFN7vvvZGcq",
        {"users": "tblQ0OHBit2AqaACy", "events": "tblrscr87h8fbtQTk", "messages": "tbljma5S4NhUn1OYl"},
        "https://api.airtable.com", 5.0, 30.0)
    assert s.cache_dir == sync.SCRIPT_DIR / "data" and s.reports_dir == sync.SCRIPT_DIR / "reports"
    assert s.tables == ("users", "events", "messages")
    assert "patSECRET" not in repr(s)  # the token is kept out of reprs


@pytest.mark.parametrize("env, argv, message", [
    ({"AIRTABLE_API_KEY": " "}, [], "AIRTABLE_API_KEY is not set"),
    ({"AIRTABLE_BASE_ID": "app123"}, [], "is not a base id"),
    ({"AIRTABLE_USERS_TABLE": "tblShort"}, [], "is not a table id"),
    ({"AIRTABLE_MAX_RPS": "fast"}, [], "is not a number"),
    ({"AIRTABLE_TIMEOUT_S": "0"}, [], "must be greater than zero"),
    ({"AIRTABLE_MAX_RETRIES": "-1"}, [], "must be zero or more"),
    ({"AIRTABLE_MAX_RETRIES": "2.5"}, [], "is not a whole number"),
    ({"AIRTABLE_ENDPOINT_URL": "api.airtable.com"}, [], "is not an http(s) URL"),
    ({}, ["--tables", "users,orders"], "choose from users,events,messages"),
    ({}, ["--limit", "-1"], "--limit must be zero or more"),
])
def test_bad_settings_are_usage_errors(env, argv, message):
    with pytest.raises(sync.UsageError, match=re.escape(message)):
        settings(env, *argv)


def test_zero_retries_is_a_valid_setting():
    assert settings({"AIRTABLE_MAX_RETRIES": "0"}).max_retries == 0


def test_a_table_may_be_named_and_tables_keep_sync_order():
    s = settings({"AIRTABLE_EVENTS_TABLE": "Events"}, "--tables", "messages,users")
    assert s.table_ids["events"] == "Events" and s.tables == ("users", "messages")


def test_the_environment_wins_over_dotenv_and_a_readable_dotenv_is_warned(tmp_path, monkeypatch, caplog):
    dotenv = tmp_path / ".env"
    dotenv.write_text("AIRTABLE_API_KEY=from-file\nAIRTABLE_BASE_ID=appFROMFILE0000000\n")
    dotenv.chmod(0o644)
    monkeypatch.setenv("AIRTABLE_BASE_ID", "appFROMENV00000000")
    monkeypatch.delenv("AIRTABLE_API_KEY", raising=False)
    env = sync.read_environment(dotenv)
    assert env["AIRTABLE_API_KEY"] == "from-file" and env["AIRTABLE_BASE_ID"] == "appFROMENV00000000"
    assert "readable by group or others" in caplog.text
    caplog.clear()
    dotenv.chmod(0o600)
    sync.read_environment(dotenv)
    assert "readable" not in caplog.text


# -- edge cases found in review -----------------------------------------------------

def test_whole_second_equality_holds_before_1970():
    assert sync.values_equal("1958-07-04T10:00:00.250Z", "1958-07-04T10:00:00.000Z", "dateTime")
    assert not sync.values_equal("1958-07-04T10:00:01.250Z", "1958-07-04T10:00:00.000Z", "dateTime")


@pytest.mark.parametrize("value, field_type", [
    ("0001-01-01T00:00:00+01:00", "dateTime"), ("0001-01-01T00:00:00+01:00", "date"),
])
def test_dates_out_of_range_are_invalid_not_a_crash(value, field_type):
    with pytest.raises(Invalid):
        sync.convert_value(value, field_type)


def test_extreme_extended_json_and_numbers_never_crash():
    assert sync.unwrap_extended_json({"$date": float("inf")}) == {"$date": float("inf")}
    assert sync.unwrap_extended_json({"$date": 1e20}) == {"$date": 1e20}
    assert sync.convert_value({"a": Decimal("Infinity"), "b": Decimal("NaN")}, "multilineText") == '{"a":null,"b":null}'
    assert sync.convert_value(2**60, "number") == float(2**60)  # what Airtable's doubles give back
    assert repr(sync.convert_value(str(2**53 + 1), "number")) == repr(float(2**53 + 1))  # as text too
    assert sync.convert_value(Decimal("1E+400"), "number") is None
    assert sync.convert_value(Decimal("12"), "number") == 12


def test_nan_inside_lists_is_null():
    assert sync.convert_value([1, float("nan"), "a", None], "multilineText") == "1, a"
    assert sync.convert_value(["a", float("inf")], "multipleSelects") == ["a"]


def test_only_a_computed_field_error_drops_a_field():
    assert sync.rejected_field("INVALID_VALUE_FOR_COLUMN",
                               'Field "computed_score" cannot accept the provided value') is None


def test_a_null_line_in_json_lines_is_not_a_document():
    with pytest.raises(sync.UsageError, match="line 2 is not a JSON object"):
        parse_export(Path("m.json"), b'{"id": "m1"}\nnull\n')


def test_without_an_id_field_a_keyless_record_fails_instead_of_doubling_each_run():
    schema = columns("events", {"Name": "singleLineText", "location": "singleLineText"})
    docs = exported({"id": "e1", "location": "Harlem"}, {"id": "e2", "name": "Supper"})
    plan = sync.plan_table(TABLE_SPECS["events"], docs, sync.TableSnapshot.of([]), schema, {})
    assert [(w.action, w.error) for w in plan.writes] == [
        ("error", "no name, and the Airtable table has no id field to find it by"), ("create", None)]


@pytest.mark.parametrize("rate, slots, window", [(2.5, 2, 1.0), (0.5, 1, 2.0), (5, 5, 1.0)])
def test_throttle_with_a_fractional_rate_stays_under_it(rate, slots, window):
    now = [0.0]
    stop = threading.Event()
    throttle = sync.Throttle(rate, stop, clock=lambda: now[0])

    def fake_wait(delay):
        now[0] += delay
        return False

    stop.wait = fake_wait
    starts = []
    for _ in range(12):
        throttle.acquire()
        starts.append(now[0])
        now[0] += 0.01
        throttle.release()
    for start in starts:  # never more than `rate` requests in any window of `window` seconds
        assert sum(1 for s in starts if start - window < s <= start) <= slots
    assert len(starts) / (starts[-1] - starts[0] + window) <= rate
