"""Strictness tests of the Airtable emulator, every one through pyairtable over real HTTP."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from pyairtable import Api

sys.path.insert(0, str(Path(__file__).resolve().parent))
from airtable_emulator import Emulator  # noqa: E402

BASE_ID = "appEmulatorTest01"
T_CONTACTS = "tblContactsTest01"
T_COMPANIES = "tblCompaniesTst01"
T_BIG = "tblBigTableTest01"
T_ODD = "tblOddNameTest001"


def _field(fid: str, name: str, type_: str, **options) -> dict:
    f = {"id": fid, "name": name, "type": type_}
    if options:
        f["options"] = options
    return f


def make_base() -> dict:
    contacts_fields = [
        _field("fldName0000000001", "Name", "singleLineText"),
        _field("fldKey00000000001", "Key", "singleLineText"),
        _field("fldEmail000000001", "Email", "email"),
        _field("fldAge00000000001", "Age", "number", precision=0),
        _field("fldScore000000001", "Score", "currency", precision=2, symbol="$"),
        _field("fldRatio000000001", "Ratio", "percent", precision=0),
        _field("fldStars000000001", "Stars", "rating", max=5, icon="star", color="yellowBright"),
        _field("fldDur00000000001", "Duration", "duration", durationFormat="h:mm"),
        _field("fldActive00000001", "Active", "checkbox", color="greenBright", icon="check"),
        _field("fldBday0000000001", "Birthday", "date", dateFormat={"name": "iso", "format": "YYYY-MM-DD"}),
        _field("fldSeen0000000001", "LastSeen", "dateTime"),
        _field("fldNotes000000001", "Notes", "multilineText"),
        _field("fldStatus00000001", "Status", "singleSelect",
               choices=[{"id": "selActive0000001", "name": "Active", "color": "greenLight2"}, {"name": "Lead"}]),
        _field("fldTags0000000001", "Tags", "multipleSelects", choices=["a", "b", "c"]),
        _field("fldCompany0000001", "Company", "multipleRecordLinks",
               linkedTableId=T_COMPANIES, inverseLinkFieldId="fldPeople00000001"),
        _field("fldFull0000000001", "Full", "formula",
               formula="{fldName0000000001} & ' <' & {fldEmail000000001} & '>'", isValid=True,
               referencedFieldIds=["fldName0000000001", "fldEmail000000001"],
               result={"type": "singleLineText"}),
        _field("fldCreated0000001", "Created", "createdTime"),
        _field("fldModified000001", "Modified", "lastModifiedTime"),
        _field("fldNum00000000001", "Num", "autoNumber"),
        _field("fldRollup00000001", "Rollup", "rollup"),
        _field("fldLookup00000001", "CompanyName", "multipleLookupValues",
               recordLinkFieldId="fldCompany0000001", fieldIdInLinkedTable="fldCName000000001"),
    ]
    companies_fields = [
        _field("fldCName000000001", "Name", "singleLineText"),
        _field("fldPeople00000001", "People", "multipleRecordLinks",
               linkedTableId=T_CONTACTS, inverseLinkFieldId="fldCompany0000001"),
        _field("fldCount000000001", "Headcount", "count", recordLinkFieldId="fldPeople00000001", isValid=True),
    ]
    return {
        "id": BASE_ID,
        "name": "Emulator test base",
        "tables": [
            {
                "id": T_CONTACTS, "name": "Contacts", "primaryFieldId": "fldName0000000001",
                "fields": contacts_fields,
                "records": [
                    {"id": "recAda00000000001", "createdTime": "2024-01-01T10:00:00.000Z",
                     "fields": {"Name": "Ada", "Key": "k-ada", "Email": "ada@example.com", "Age": 36,
                                "Status": "Active", "Tags": ["a", "b"], "Company": ["recAcme0000000001"]}},
                    {"id": "recBob00000000001", "createdTime": "2024-01-02T10:00:00.000Z",
                     "fields": {"Name": "Bob", "Key": "k-bob", "Age": 41, "Active": True}},
                    {"id": "recDup10000000001", "fields": {"Name": "Dup", "Key": "k-dup"}},
                    {"id": "recDup20000000001", "fields": {"Name": "Dup", "Key": "k-dup"}},
                ],
            },
            {
                "id": T_COMPANIES, "name": "Companies", "primaryFieldId": "fldCName000000001",
                "fields": companies_fields,
                "records": [{"id": "recAcme0000000001", "fields": {"Name": "Acme", "People": ["recAda00000000001"]}}],
            },
            {
                "id": T_BIG, "name": "Big",
                "fields": [_field("fldBigN0000000001", "N", "number", precision=0)],
                "records": [{"fields": {"N": i}} for i in range(250)],
            },
            {
                "id": T_ODD, "name": "Odd / Name & Co",
                "fields": [_field("fldOddName0000001", "Title", "singleLineText")],
                "records": [{"fields": {"Title": "odd"}}],
            },
        ],
    }


@pytest.fixture
def emu():
    with Emulator(make_base(), rps=None) as e:
        yield e


@pytest.fixture
def api(emu):
    return Api(emu.token, endpoint_url=emu.url, retry_strategy=None)


@pytest.fixture
def contacts(api):
    return api.table(BASE_ID, "Contacts")


def error_of(excinfo) -> tuple[int, dict]:
    response = excinfo.value.response
    return response.status_code, response.json()


def expect_error(call, status: int, type_: str | None = None, message: str | None = None) -> dict:
    with pytest.raises(requests.HTTPError) as excinfo:
        call()
    got_status, body = error_of(excinfo)
    assert got_status == status, body
    if type_ is not None:
        assert body["error"]["type"] == type_, body
    if message is not None:
        assert body["error"]["message"] == message, body
    return body


# --------------------------------------------------------------------------------------
# Schema, auth, routing
# --------------------------------------------------------------------------------------


def test_schema_validates_through_pyairtable(api, emu):
    schema = api.base(BASE_ID).schema()
    contacts = schema.table("Contacts")
    assert contacts.id == T_CONTACTS
    assert contacts.primary_field_id == "fldName0000000001"
    assert contacts.field("Status").options.choices[1].name == "Lead"
    assert contacts.field("Company").options.linked_table_id == T_COMPANIES
    assert contacts.field("Birthday").options.date_format.format == "YYYY-MM-DD"
    assert contacts.views and contacts.views[0].visible_field_ids
    assert emu.schema()["tables"][0]["fields"][0] == {"id": "fldName0000000001", "name": "Name", "type": "singleLineText"}
    assert api.table(BASE_ID, "Contacts").schema().field("Tags").options.choices[0].name == "a"
    assert [b.id for b in api.bases()] == [BASE_ID]
    assert api.whoami()["id"].startswith("usr")


def test_wrong_or_missing_token_is_401(emu):
    bad = Api("wrong-token", endpoint_url=emu.url, retry_strategy=None)
    body = expect_error(lambda: bad.table(BASE_ID, "Contacts").all(), 401)
    assert body == {"error": {"type": "AUTHENTICATION_REQUIRED", "message": "Authentication required"}}
    anonymous = Api(emu.token, endpoint_url=emu.url, retry_strategy=None)
    anonymous.session.headers.pop("Authorization")
    expect_error(lambda: anonymous.base(BASE_ID).schema(), 401, "AUTHENTICATION_REQUIRED")
    assert emu.count(status=401) == 2


def test_unknown_base_or_table_is_403(api):
    message = ("Invalid permissions, or the requested model was not found. Check that both your user and "
               "your token have the required permissions, and that the model names and/or ids are correct.")
    expect_error(lambda: api.table("appNoSuchBase0001", "Contacts").all(), 403,
                 "INVALID_PERMISSIONS_OR_MODEL_NOT_FOUND", message)
    expect_error(lambda: api.table(BASE_ID, "Nope").all(), 403, "INVALID_PERMISSIONS_OR_MODEL_NOT_FOUND")
    expect_error(lambda: api.table(BASE_ID, "tblNoSuchTable001").create({}), 403)
    expect_error(lambda: api.base("appNoSuchBase0001").schema(), 403, "INVALID_PERMISSIONS_OR_MODEL_NOT_FOUND")


def test_unsupported_route_and_method_are_404(api, emu):
    with pytest.raises(requests.HTTPError) as excinfo:
        api.request("GET", api.build_url("nothing", "here", "at", "all"))
    assert error_of(excinfo) == (404, {"error": "NOT_FOUND"})
    with pytest.raises(requests.HTTPError) as excinfo:
        api.request("POST", api.build_url(BASE_ID, T_CONTACTS, "recAda00000000001"), json={})
    assert error_of(excinfo)[0] == 404
    assert emu.count(kind="other") == 2


def test_invalid_json_body_is_rejected(api, emu, contacts):
    response = api.session.post(contacts.urls.records, data=b"{not json",
                                headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "INVALID_REQUEST_UNKNOWN"
    response = api.session.post(contacts.urls.records, json=[1, 2])
    assert response.status_code == 422
    assert len(emu.records("Contacts")) == 4


def test_table_addressed_by_url_encoded_name(api, emu):
    odd = api.table(BASE_ID, "Odd / Name & Co")
    assert [r["fields"] for r in odd.all()] == [{"Title": "odd"}]
    odd.create({"Title": "new"})
    assert emu.requests[-1].table == T_ODD
    assert emu.count(table="Odd / Name & Co", kind="write") == 1


# --------------------------------------------------------------------------------------
# Write validation
# --------------------------------------------------------------------------------------


def test_more_than_10_or_zero_records_is_invalid_records(api, emu, contacts):
    eleven = [{"fields": {"Name": f"n{i}"}} for i in range(11)]
    expect_error(lambda: api.post(contacts.urls.records, json={"records": eleven}), 422, "INVALID_RECORDS")
    expect_error(lambda: api.post(contacts.urls.records, json={"records": []}), 422, "INVALID_RECORDS")
    expect_error(lambda: api.patch(contacts.urls.records, json={"records": [
        {"id": "recAda00000000001", "fields": {}}] * 11}), 422, "INVALID_RECORDS")
    expect_error(lambda: api.delete(contacts.urls.records, params={"records[]": ["recAda00000000001"] * 11}),
                 422, "INVALID_RECORDS", '"records" must be an array of up to 10 record IDs.')
    assert len(emu.records("Contacts")) == 4


def test_unknown_field_name(contacts):
    expect_error(lambda: contacts.create({"Nmae": "x"}), 422, "UNKNOWN_FIELD_NAME", 'Unknown field name: "Nmae"')
    expect_error(lambda: contacts.all(fields=["Name", "Nope"]), 422, "UNKNOWN_FIELD_NAME", 'Unknown field name: "Nope"')
    expect_error(lambda: contacts.all(sort=["-Nope"]), 422, "UNKNOWN_FIELD_NAME")
    # Field names are case-sensitive.
    expect_error(lambda: contacts.update("recAda00000000001", {"name": "x"}), 422, "UNKNOWN_FIELD_NAME")


@pytest.mark.parametrize("name", ["Full", "Created", "Modified", "Num", "Rollup", "CompanyName"])
def test_computed_fields_cannot_be_written(contacts, emu, name):
    message = f'Field "{name}" cannot accept a value because the field is computed'
    expect_error(lambda: contacts.create({"Name": "x", name: "v"}), 422, "INVALID_VALUE_FOR_COLUMN", message)
    expect_error(lambda: contacts.update("recAda00000000001", {name: None}), 422, "INVALID_VALUE_FOR_COLUMN", message)
    assert len(emu.records("Contacts")) == 4


def test_computed_count_field_in_other_table(api):
    companies = api.table(BASE_ID, "Companies")
    expect_error(lambda: companies.create({"Headcount": 3}), 422, "INVALID_VALUE_FOR_COLUMN",
                 'Field "Headcount" cannot accept a value because the field is computed')


@pytest.mark.parametrize("name,value", [
    ("Age", "36"), ("Age", True), ("Age", [1]), ("Score", "1.5"), ("Ratio", {}), ("Duration", "60"),
    ("Stars", 6), ("Stars", 2.5), ("Active", "yes"), ("Active", 1),
    ("Birthday", "2024-02-30"), ("Birthday", "2024-01-01T00:00:00Z"), ("Birthday", "01/02/2024"), ("Birthday", 20240101),
    ("LastSeen", "yesterday"), ("LastSeen", "2024-13-01T00:00:00Z"), ("LastSeen", 1700000000),
    ("Name", 5), ("Notes", ["x"]), ("Name", "x" * 100_001), ("Email", "not-an-email"), ("Email", 3),
    ("Status", 3), ("Tags", "a"), ("Tags", [1]), ("Company", "recAcme0000000001"), ("Company", [{"id": "recAcme0000000001"}]),
], ids=lambda v: repr(v)[:24])
def test_wrong_value_types_are_rejected(contacts, emu, name, value):
    body = expect_error(lambda: contacts.create({"Name": "ok", name: value}), 422, "INVALID_VALUE_FOR_COLUMN")
    assert f'"{name}"' in body["error"]["message"]
    assert len(emu.records("Contacts")) == 4


def test_typecast_converts_strings(contacts):
    rec = contacts.create({"Name": 7, "Age": "36", "Score": "1,234.50", "Stars": "4", "Active": "true",
                           "Birthday": "2024-03-04T22:00:00Z", "LastSeen": "2024-03-04"}, typecast=True)
    assert rec["fields"] == {"Name": "7", "Age": 36, "Score": 1234.5, "Stars": 4, "Active": True,
                             "Birthday": "2024-03-04", "LastSeen": "2024-03-04T00:00:00.000Z",
                             "Full": "7 <>", "Created": rec["createdTime"], "Modified": rec["createdTime"],
                             "Num": 5}
    # A non-numeric string is not a number, even with typecast (strict choice).
    expect_error(lambda: contacts.create({"Age": "thirty"}, typecast=True), 422, "INVALID_VALUE_FOR_COLUMN",
                 'Field "Age" cannot accept the provided value')


def test_datetime_inputs_without_offset_follow_the_field_time_zone(api, emu):
    # field-model docs (dateTime): ambiguous inputs like "2020-09-05T07:00:00" and "2020-09-08"
    # are read in the field's timeZone unless it is utc/client; inputs with an offset are exact.
    # Both are accepted without typecast.
    base = make_base()
    base["tables"][0]["fields"].append(
        _field("fldSeenLA00000001", "SeenLA", "dateTime", timeZone="America/Los_Angeles",
               dateFormat={"name": "iso", "format": "YYYY-MM-DD"}, timeFormat={"name": "24hour", "format": "HH:mm"}))
    with Emulator(base, rps=None) as e:
        table = Api(e.token, endpoint_url=e.url, retry_strategy=None).table(BASE_ID, "Contacts")
        rec = table.create({"Name": "tz", "LastSeen": "2020-09-08", "SeenLA": "2020-09-05T07:00:00"})
        assert rec["fields"]["LastSeen"] == "2020-09-08T00:00:00.000Z"
        assert rec["fields"]["SeenLA"] == "2020-09-05T14:00:00.000Z"
        rec = table.update(rec["id"], {"LastSeen": "2020-09-05T07:00:00", "SeenLA": "2020-09-08"})
        assert rec["fields"]["LastSeen"] == "2020-09-05T07:00:00.000Z"
        assert rec["fields"]["SeenLA"] == "2020-09-08T07:00:00.000Z"
        rec = table.update(rec["id"], {"SeenLA": "2020-09-08T00:00:00-07:00", "LastSeen": "2020-09-05T07:00:00.000Z"})
        assert rec["fields"]["SeenLA"] == "2020-09-08T07:00:00.000Z"
        assert rec["fields"]["LastSeen"] == "2020-09-05T07:00:00.000Z"


def test_visible_field_ids_only_on_grid_views_and_only_when_asked(emu):
    # get-base-schema docs: include "visibleFieldIds (for views of type grid only)"; the view
    # model: "Available on grid views only ... when requested with include query parameter".
    base = make_base()
    base["tables"][0]["views"] = [{"id": "viwGrid0000000001", "name": "Grid", "type": "grid"},
                                  {"id": "viwForm0000000001", "name": "Form", "type": "form"}]
    with Emulator(base, rps=None) as e:
        api = Api(e.token, endpoint_url=e.url, retry_strategy=None)
        views = api.base(BASE_ID).schema().table("Contacts").views  # pyairtable sends include=visibleFieldIds
        assert views[0].visible_field_ids and views[1].visible_field_ids is None
        assert e.requests[-1].query == {"include": ["visibleFieldIds"]}
        plain = api.session.get(f"{e.url}/v0/meta/bases/{BASE_ID}/tables").json()
        assert all("visibleFieldIds" not in v for v in plain["tables"][0]["views"])
        assert all("visibleFieldIds" not in v for t in e.schema()["tables"] for v in t["views"])


def test_null_clears_every_writable_field(contacts):
    writable = ["Key", "Email", "Age", "Score", "Ratio", "Stars", "Duration", "Active", "Birthday", "LastSeen",
                "Notes", "Status", "Tags", "Company"]
    rec = contacts.update("recAda00000000001", {name: None for name in writable})
    assert set(rec["fields"]) == {"Name", "Full", "Created", "Modified", "Num"}


def test_select_choice_must_exist_unless_typecast(api, emu, contacts):
    expect_error(lambda: contacts.create({"Status": "Churned"}), 422, "INVALID_MULTIPLE_CHOICE_OPTIONS",
                 'Insufficient permissions to create new select option ""Churned""')
    expect_error(lambda: contacts.create({"Tags": ["a", "zzz"]}), 422, "INVALID_MULTIPLE_CHOICE_OPTIONS")
    expect_error(lambda: contacts.create({"Status": "active"}), 422, "INVALID_MULTIPLE_CHOICE_OPTIONS")
    assert "Churned" not in [c["name"] for c in emu.schema()["tables"][0]["fields"][12]["options"]["choices"]]
    rec = contacts.create({"Status": "Churned", "Tags": ["c", "new", "a", "new"]}, typecast=True)
    assert rec["fields"]["Status"] == "Churned"
    assert rec["fields"]["Tags"] == ["c", "new", "a"]  # order kept, duplicates dropped
    schema = api.base(BASE_ID).schema(force=True).table("Contacts")
    churned = [c for c in schema.field("Status").options.choices if c.name == "Churned"]
    assert len(churned) == 1 and churned[0].id.startswith("sel") and len(churned[0].id) == 17
    assert "new" in [c.name for c in schema.field("Tags").options.choices]
    contacts.create({"Status": "Churned"})  # now an existing choice


def test_failed_typecast_batch_creates_no_choices(contacts, emu, api):
    records = [{"fields": {"Status": "Brand new"}}, {"fields": {"Age": "x"}}]
    expect_error(lambda: api.post(contacts.urls.records, json={"records": records, "typecast": True}), 422)
    status = [f for f in emu.schema()["tables"][0]["fields"] if f["name"] == "Status"][0]
    assert [c["name"] for c in status["options"]["choices"]] == ["Active", "Lead"]


def test_record_links_must_exist_in_linked_table(api, contacts, emu):
    expect_error(lambda: contacts.create({"Company": ["recNoSuchRecord01"]}), 422, "ROW_DOES_NOT_EXIST")
    expect_error(lambda: contacts.create({"Company": ["recBob00000000001"]}), 422)  # wrong table
    expect_error(lambda: contacts.create({"Company": ["Acme"]}), 422, "INVALID_VALUE_FOR_COLUMN")
    rec = contacts.create({"Name": "Cy", "Company": ["recAcme0000000001", "recAcme0000000001"]})
    assert rec["fields"]["Company"] == ["recAcme0000000001"]
    assert rec["fields"]["CompanyName"] == ["Acme"]
    acme = api.table(BASE_ID, "Companies").get("recAcme0000000001")
    assert acme["fields"]["People"] == ["recAda00000000001", rec["id"]]  # inverse link kept in step
    assert acme["fields"]["Headcount"] == 2
    # typecast links by primary field value, creating the linked record when needed
    rec2 = contacts.create({"Name": "Di", "Company": ["Acme", "Globex"]}, typecast=True)
    names = {r["id"]: r["fields"]["Name"] for r in emu.records("Companies")}
    assert [names[x] for x in rec2["fields"]["Company"]] == ["Acme", "Globex"]


def test_missing_records(api, contacts, emu):
    expect_error(lambda: contacts.get("recNoSuchRecord01"), 404, "MODEL_ID_NOT_FOUND")
    expect_error(lambda: contacts.get("recAcme0000000001"), 404)  # exists, but in another table
    expect_error(lambda: contacts.update("recNoSuchRecord01", {"Name": "x"}), 404, "MODEL_ID_NOT_FOUND")
    expect_error(lambda: contacts.delete("recNoSuchRecord01"), 404)
    before = emu.records("Contacts")
    expect_error(lambda: contacts.batch_update([
        {"id": "recAda00000000001", "fields": {"Name": "Changed"}},
        {"id": "recNoSuchRecord01", "fields": {"Name": "x"}},
    ]), 422, "ROW_DOES_NOT_EXIST", "Record ID recNoSuchRecord01 does not exist in this table")
    expect_error(lambda: contacts.batch_delete(["recAda00000000001", "recNoSuchRecord01"]), 404)
    assert emu.records("Contacts") == before  # failed batches are atomic


def test_batch_is_atomic_when_one_record_is_invalid(api, contacts, emu):
    records = [{"fields": {"Name": "good"}}, {"fields": {"Name": "bad", "Age": "x"}}]
    expect_error(lambda: contacts.batch_create([r["fields"] for r in records]), 422)
    assert len(emu.records("Contacts")) == 4


# --------------------------------------------------------------------------------------
# Record shape and normalisation
# --------------------------------------------------------------------------------------


def test_records_are_normalised_like_airtable(contacts, emu):
    rec = contacts.create({"Name": "Eve", "Key": "", "Notes": "", "Tags": [], "Active": False, "Age": None,
                           "Email": "eve@example.com", "Score": 2.0, "LastSeen": "2024-05-06T07:08:09.987654+02:00",
                           "Birthday": "1990-12-31"})
    assert len(rec["id"]) == 17 and rec["id"].startswith("rec") and rec["id"][3:].isalnum()
    assert rec["createdTime"].endswith(".000Z") and len(rec["createdTime"]) == 24
    fields = rec["fields"]
    assert fields["LastSeen"] == "2024-05-06T05:08:09.000Z"
    assert fields["Birthday"] == "1990-12-31"
    assert fields["Score"] == 2 and isinstance(fields["Score"], int)
    for absent in ("Key", "Notes", "Tags", "Active", "Age", "Status", "Company", "Rollup"):
        assert absent not in fields
    assert fields["Full"] == "Eve <eve@example.com>"
    assert emu.records("Contacts")[-1] == rec
    assert contacts.get(rec["id"]) == rec
    assert emu.records(T_CONTACTS)[0]["fields"]["Tags"] == ["a", "b"]


def test_patch_merges_and_put_replaces(contacts):
    merged = contacts.update("recAda00000000001", {"Age": 37})
    assert merged["fields"]["Email"] == "ada@example.com" and merged["fields"]["Age"] == 37
    replaced = contacts.update("recAda00000000001", {"Name": "Ada L."}, replace=True)
    assert {k for k in replaced["fields"]} == {"Name", "Full", "Created", "Modified", "Num"}
    out = contacts.batch_update([{"id": "recBob00000000001", "fields": {"Age": 42}}], replace=True)
    assert out[0]["fields"].get("Name") is None and out[0]["fields"]["Age"] == 42


def test_return_fields_by_field_id(contacts):
    rec = contacts.create({"fldName0000000001": "ById"}, use_field_ids=True)
    assert rec["fields"]["fldName0000000001"] == "ById"
    listed = contacts.all(use_field_ids=True, fields=["fldName0000000001"], max_records=1)
    assert listed[0]["fields"] == {"fldName0000000001": "Ada"}


# --------------------------------------------------------------------------------------
# Field ids: writes, upserts and reads (create-records, update-multiple-records: cell values
# "keyed by either field name or field id"; fieldsToMergeOn takes "field names or IDs";
# returnFieldsByFieldId on every write and read)
# --------------------------------------------------------------------------------------

F_NAME, F_KEY, F_EMAIL, F_AGE, F_STATUS = (
    "fldName0000000001", "fldKey00000000001", "fldEmail000000001", "fldAge00000000001", "fldStatus00000001")
ADA, BOB = "recAda00000000001", "recBob00000000001"


def test_writes_take_field_ids_and_names_mixed(contacts, emu):
    made = contacts.create({F_NAME: "Cy", "Age": 30, F_STATUS: "Lead"})
    assert {k: made["fields"][k] for k in ("Name", "Age", "Status")} == {"Name": "Cy", "Age": 30, "Status": "Lead"}
    assert emu.requests[-1].body["returnFieldsByFieldId"] is False
    [di] = contacts.batch_create([{F_NAME: "Di", F_AGE: 5}], use_field_ids=True)
    assert di["fields"][F_NAME] == "Di" and di["fields"][F_AGE] == 5 and "Name" not in di["fields"]
    assert emu.requests[-1].body["returnFieldsByFieldId"] is True
    patched = contacts.update(made["id"], {F_AGE: 31, "Email": "cy@example.com"}, use_field_ids=True)
    assert emu.requests[-1].method == "PATCH" and emu.requests[-1].body["returnFieldsByFieldId"] is True
    assert {k: patched["fields"][k] for k in (F_NAME, F_AGE, F_EMAIL)} == {
        F_NAME: "Cy", F_AGE: 31, F_EMAIL: "cy@example.com"}
    [batch] = contacts.batch_update([{"id": made["id"], "fields": {F_KEY: "k-cy", "Notes": "n"}}], use_field_ids=True)
    assert batch["fields"][F_KEY] == "k-cy" and batch["fields"]["fldNotes000000001"] == "n"
    replaced = contacts.update(made["id"], {F_NAME: "Cy 2", "Key": "k-cy"}, replace=True, use_field_ids=True)
    assert emu.requests[-1].method == "PUT"
    assert F_AGE not in replaced["fields"] and replaced["fields"][F_NAME] == "Cy 2"
    by_name = contacts.update(made["id"], {F_AGE: 1})
    assert by_name["fields"]["Age"] == 1 and F_AGE not in by_name["fields"]
    assert next(r for r in emu.records("Contacts") if r["id"] == made["id"])["fields"]["Key"] == "k-cy"


def test_upsert_merges_on_field_ids(api, contacts, emu):
    out = contacts.batch_upsert([{"fields": {F_KEY: "k-bob", F_AGE: 50}}, {"fields": {F_KEY: "k-new", "Name": "New"}}],
                                key_fields=[F_KEY], use_field_ids=True)
    assert out["updatedRecords"] == [BOB] and len(out["createdRecords"]) == 1
    assert out["records"][0]["id"] == BOB and out["records"][0]["fields"][F_AGE] == 50
    assert out["records"][0]["fields"][F_NAME] == "Bob"  # a merge updates: the other cells stay
    assert all(key.startswith("fld") for r in out["records"] for key in r["fields"])
    body = emu.requests[-1].body
    assert body["performUpsert"] == {"fieldsToMergeOn": [F_KEY]} and body["returnFieldsByFieldId"] is True
    # Merged on an id while the records name the field (pyairtable would not send this, so raw).
    raw = api.patch(contacts.urls.records, json={"performUpsert": {"fieldsToMergeOn": [F_KEY]},
                                                 "records": [{"fields": {"Key": "k-new", "Age": 2}}]})
    assert raw["createdRecords"] == [] and raw["updatedRecords"] == out["createdRecords"]
    assert raw["records"][0]["fields"] == {k: v for k, v in raw["records"][0]["fields"].items() if not k.startswith("fld")}
    # Names and ids mixed in fieldsToMergeOn; the answer by name without returnFieldsByFieldId.
    again = contacts.batch_upsert([{"fields": {"Key": "k-new", F_NAME: "New", "Age": 3}}], key_fields=["Key", F_NAME])
    assert again["updatedRecords"] == out["createdRecords"] and again["records"][0]["fields"]["Age"] == 3
    assert len(emu.records("Contacts")) == 5


def test_reads_return_fields_by_field_id_on_get_and_post(contacts, emu):
    emu.clear_log()
    listed = contacts.all(use_field_ids=True, fields=[F_NAME, "Age"], sort=[F_NAME])
    assert listed[0]["fields"] == {F_NAME: "Ada", F_AGE: 36}
    assert emu.requests[-1].method == "GET" and emu.requests[-1].query["returnFieldsByFieldId"] == ["1"]
    formula = "OR(" + ",".join(f"{{Key}}='k-{i:05d}-padding-padding'" for i in range(500)) + ",{Name}='Bob')"
    rows = contacts.all(formula=formula, fields=[F_NAME, "Age"], use_field_ids=True)
    assert [r["fields"] for r in rows] == [{F_NAME: "Bob", F_AGE: 41}]
    assert emu.requests[-1].method == "POST" and emu.requests[-1].path.endswith("/listRecords")
    assert emu.requests[-1].body["returnFieldsByFieldId"] is True
    assert contacts.get(ADA, use_field_ids=True)["fields"][F_EMAIL] == "ada@example.com"
    assert emu.requests[-1].query["returnFieldsByFieldId"] == ["1"]
    assert contacts.all(fields=[F_NAME], max_records=1)[0]["fields"] == {"Name": "Ada"}  # names by default


def test_an_unknown_field_id_in_a_write_is_unknown_field_name(contacts, emu):
    # The id of no field, and the id of another table's field.
    for key in ("fldNoSuchField001", "fldCName000000001"):
        message = f'Unknown field name: "{key}"'
        expect_error(lambda: contacts.create({key: "x"}), 422, "UNKNOWN_FIELD_NAME", message)  # noqa: B023
        expect_error(lambda: contacts.update(ADA, {F_NAME: "Ada 2", key: "x"}), 422,  # noqa: B023
                     "UNKNOWN_FIELD_NAME", message)
        expect_error(lambda: contacts.batch_upsert([{"fields": {F_KEY: "k-z", key: "x"}}],  # noqa: B023
                                                   key_fields=[F_KEY]), 422, "UNKNOWN_FIELD_NAME", message)
        expect_error(lambda: contacts.batch_upsert([{"fields": {key: "x"}}], key_fields=[key]),  # noqa: B023
                     422, "UNKNOWN_FIELD_NAME", message)
    # One field given twice, by its name and its id: refused (STRICT), not one value winning.
    expect_error(lambda: contacts.create({"Name": "a", F_NAME: "b"}), 422, "INVALID_REQUEST_UNKNOWN")
    assert len(emu.records("Contacts")) == 4 and emu.records("Contacts")[0]["fields"]["Name"] == "Ada"
    assert emu.count(status=200) == 0


# --------------------------------------------------------------------------------------
# Upsert
# --------------------------------------------------------------------------------------


def test_upsert_creates_then_updates(contacts, emu):
    first = contacts.batch_upsert([{"fields": {"Key": "k-new", "Name": "New"}},
                                   {"fields": {"Key": "k-bob", "Age": 50}}], key_fields=["Key"])
    assert len(first["createdRecords"]) == 1 and first["updatedRecords"] == ["recBob00000000001"]
    assert first["records"][1]["fields"]["Name"] == "Bob" and first["records"][1]["fields"]["Age"] == 50
    again = contacts.batch_upsert([{"fields": {"Key": "k-new", "Name": "New 2"}}], key_fields=["Key"])
    assert again["createdRecords"] == [] and again["updatedRecords"] == first["createdRecords"]
    assert len(emu.records("Contacts")) == 5
    by_id = contacts.batch_upsert([{"id": "recAda00000000001", "fields": {"Age": 1}}], key_fields=["Key"])
    assert by_id["updatedRecords"] == ["recAda00000000001"]
    replaced = contacts.batch_upsert([{"fields": {"Key": "k-ada", "Name": "Ada"}}], key_fields=["Key"], replace=True)
    assert "Age" not in replaced["records"][0]["fields"]


def test_upsert_sees_merge_keys_changed_by_other_writes(contacts, emu):
    """The upsert look-up follows every change of a merge field: update, create, delete."""
    assert contacts.batch_upsert([{"fields": {"Key": "k-x"}}], key_fields=["Key"])["createdRecords"]
    [bob] = [r for r in emu.records("Contacts") if r["fields"].get("Key") == "k-bob"]
    contacts.batch_update([{"id": bob["id"], "fields": {"Key": "k-robert"}}])
    moved = contacts.batch_upsert([{"fields": {"Key": "k-robert", "Age": 51}}], key_fields=["Key"])
    assert moved["updatedRecords"] == [bob["id"]]
    fresh = contacts.batch_upsert([{"fields": {"Key": "k-bob", "Name": "Another Bob"}}], key_fields=["Key"])
    assert fresh["createdRecords"] and fresh["createdRecords"] != [bob["id"]]
    contacts.create({"Key": "k-twice"})
    contacts.create({"Key": "k-twice"})
    expect_error(lambda: contacts.batch_upsert([{"fields": {"Key": "k-twice"}}], key_fields=["Key"]), 422)
    contacts.batch_delete([fresh["createdRecords"][0]])
    again = contacts.batch_upsert([{"fields": {"Key": "k-bob"}}], key_fields=["Key"])
    assert again["createdRecords"] and again["createdRecords"] != fresh["createdRecords"]


def test_upsert_errors(api, contacts, emu):
    expect_error(lambda: contacts.batch_upsert([{"fields": {"Key": "k-dup"}}], key_fields=["Key"]), 422)
    expect_error(lambda: contacts.batch_upsert([{"id": "recNoSuchRecord01", "fields": {"Key": "z"}}],
                                               key_fields=["Key"]), 422, "ROW_DOES_NOT_EXIST")
    # A record missing a merge field (pyairtable checks this itself, so send the raw request).
    body = {"records": [{"fields": {"Name": "no key"}}], "performUpsert": {"fieldsToMergeOn": ["Key"]}}
    expect_error(lambda: api.patch(contacts.urls.records, json=body), 422)
    expect_error(lambda: contacts.batch_upsert([{"fields": {"Full": "x"}}], key_fields=["Full"]), 422)
    expect_error(lambda: contacts.batch_upsert([{"fields": {"Nope": "x"}}], key_fields=["Nope"]), 422,
                 "UNKNOWN_FIELD_NAME")
    expect_error(lambda: contacts.batch_upsert([{"fields": {"Key": "same"}}, {"fields": {"Key": "same"}}],
                                               key_fields=["Key"]), 422)
    # Without performUpsert a record needs an id.
    expect_error(lambda: api.patch(contacts.urls.records, json={"records": [{"fields": {"Key": "x"}}]}), 422,
                 "INVALID_RECORDS")
    assert len(emu.records("Contacts")) == 4


def test_upsert_merge_field_types_are_the_documented_ones(contacts, emu):
    # update-multiple-records docs: fieldsToMergeOn "must be one of the following types: number,
    # text, long text, single select, multiple select, date" (read literally).
    for name, value in (("Email", "a@b.co"), ("Score", 1), ("Ratio", 0.5), ("LastSeen", "2024-01-01T00:00:00.000Z")):
        expect_error(lambda: contacts.batch_upsert([{"fields": {name: value}}], key_fields=[name]), 422,
                     "INVALID_REQUEST_UNKNOWN")
    assert len(emu.records("Contacts")) == 4
    for name, value in (("Notes", "n"), ("Age", 99), ("Status", "Lead"), ("Tags", ["c"]), ("Birthday", "2001-02-03")):
        result = contacts.batch_upsert([{"fields": {"Name": "m", name: value}}], key_fields=[name], typecast=True)
        assert len(result["createdRecords"]) == 1 and result["updatedRecords"] == []


def test_concurrent_upserts_of_one_key_create_one_record(emu):
    barrier = threading.Barrier(8)
    errors = []

    def worker(i: int) -> None:
        table = Api(emu.token, endpoint_url=emu.url, retry_strategy=None).table(BASE_ID, "Contacts")
        barrier.wait()
        try:
            table.batch_upsert([{"fields": {"Key": "k-race", "Age": i}}], key_fields=["Key"])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [r["fields"]["Key"] for r in emu.records("Contacts")].count("k-race") == 1


# --------------------------------------------------------------------------------------
# Delete
# --------------------------------------------------------------------------------------


def test_delete_single_and_batch_and_links_are_cleaned(api, contacts, emu):
    assert contacts.delete("recBob00000000001") == {"id": "recBob00000000001", "deleted": True}
    assert contacts.batch_delete(["recDup10000000001", "recDup20000000001"]) == [
        {"id": "recDup10000000001", "deleted": True}, {"id": "recDup20000000001", "deleted": True}]
    api.table(BASE_ID, "Companies").delete("recAcme0000000001")
    ada = contacts.get("recAda00000000001")
    assert "Company" not in ada["fields"] and "CompanyName" not in ada["fields"]
    assert [r["id"] for r in emu.records("Contacts")] == ["recAda00000000001"]


# --------------------------------------------------------------------------------------
# Listing
# --------------------------------------------------------------------------------------


def test_listing_pages_and_request_counts(api, emu):
    big = api.table(BASE_ID, "Big")
    emu.clear_log()
    rows = big.all()
    assert [r["fields"]["N"] for r in rows] == list(range(250))
    assert emu.count(kind="read") == 3 and emu.count(kind="read", table="Big") == 3
    pages = list(big.iterate(page_size=100))
    assert [len(p) for p in pages] == [100, 100, 50]
    assert len(big.all(max_records=120, page_size=50)) == 120
    assert big.first()["fields"]["N"] == 0
    expect_error(lambda: big.all(page_size=101), 422)
    expect_error(lambda: big.all(page_size=0), 422)


def test_unknown_offset_is_422(api):
    big = api.table(BASE_ID, "Big")
    body = expect_error(lambda: big.all(offset="itrNoSuchIterat01/recNoSuchRecord01"), 422,
                        "LIST_RECORDS_ITERATOR_NOT_AVAILABLE")
    # list-records docs, "Iteration timeout (422)": the body has a type and no message.
    assert body == {"error": {"type": "LIST_RECORDS_ITERATOR_NOT_AVAILABLE"}}


@pytest.mark.parametrize("formula,expected", [
    ("{Name}='Ada'", ["Ada"]),
    ('{Name}="Bob"', ["Bob"]),
    ("{Age}=41", ["Bob"]),
    ("{Age}>40", ["Bob"]),
    ("OR({Name}='Ada', {Name}='Bob')", ["Ada", "Bob"]),
    ("AND({Key}='k-dup', {Name}='Dup')", ["Dup", "Dup"]),
    ("AND(OR({Age}=36,{Age}=41),NOT({Active}))", ["Ada"]),
    ("{Active}", ["Bob"]),
    ("{Email}=''", ["Bob", "Dup", "Dup"]),
    ("{Tags}='a, b'", ["Ada"]),
    ("{Status}='Active'", ["Ada"]),
    ("RECORD_ID()='recBob00000000001'", ["Bob"]),
    ("{Name}='It\\'s'", []),
])
def test_filter_by_formula(contacts, formula, expected):
    assert [r["fields"]["Name"] for r in contacts.all(formula=formula)] == expected


def test_filter_by_formula_from_pyairtable_helpers(contacts):
    from pyairtable.formulas import match

    assert [r["id"] for r in contacts.all(formula=match({"Key": "k-bob", "Age": 41}))] == ["recBob00000000001"]


@pytest.mark.parametrize("formula", ["{Name}=", "FOO({Name})", "{Nope}='x'", "{Name}='x", "AND()"])
def test_invalid_formula_is_422(contacts, formula):
    expect_error(lambda: contacts.all(formula=formula), 422, "INVALID_FILTER_BY_FORMULA")


def test_list_options(contacts):
    assert [r["fields"]["Name"] for r in contacts.all(sort=["-Age"])][:2] == ["Bob", "Ada"]
    assert contacts.all(fields=["Name"], max_records=1) == [
        {"id": "recAda00000000001", "createdTime": "2024-01-01T10:00:00.000Z", "fields": {"Name": "Ada"}}]
    assert contacts.all(view="Grid view", max_records=1)[0]["id"] == "recAda00000000001"
    expect_error(lambda: contacts.all(view="No such view"), 422)
    expect_error(lambda: contacts.all(cell_format="string"), 422)
    rows = contacts.all(cell_format="string", time_zone="Europe/Paris", user_locale="en-gb", max_records=1)
    assert rows[0]["fields"]["Tags"] == "a, b" and rows[0]["fields"]["Age"] == "36"
    assert contacts.all(count_comments=True, max_records=1)[0]["commentCount"] == 0


def test_long_formula_falls_back_to_post_list_records(contacts, emu):
    formula = "OR(" + ",".join(f"{{Key}}='k-{i:05d}-padding-padding'" for i in range(500)) + ",{Name}='Bob')"
    emu.clear_log()
    rows = contacts.all(formula=formula, fields=["Name"])
    assert [r["fields"] for r in rows] == [{"Name": "Bob"}]
    assert emu.requests[-1].method == "POST" and emu.requests[-1].path.endswith("/listRecords")
    assert emu.count(kind="read") == 1 and emu.count(kind="write") == 0


def test_url_of_16000_characters_or_more_is_refused(api, contacts, emu):
    # list-records docs: "Airtable's API only accepts request with a URL shorter than 16,000
    # characters" -- counted on the real host, https://api.airtable.com.  A GET that skips
    # pyairtable's POST fallback is refused; the same query a little shorter is served.
    path = f"/v0/{BASE_ID}/{T_CONTACTS}?filterByFormula="
    room = 16_000 - len("https://api.airtable.com") - len(path)
    refused = api.session.get(emu.url + path + "1" * room)
    assert refused.status_code == 414 and refused.json()["error"]["type"] == "INVALID_REQUEST_UNKNOWN"
    served = api.session.get(emu.url + path + "1" * (room - 1))
    assert served.status_code == 200 and len(served.json()["records"]) == 4


# --------------------------------------------------------------------------------------
# Rate limit
# --------------------------------------------------------------------------------------


def test_rate_limit_and_penalty_window(api, emu, contacts):
    emu.set_rate_limit(2, penalty_s=0.5)
    contacts.get("recAda00000000001")
    contacts.get("recAda00000000001")
    body = expect_error(lambda: contacts.create({"Name": "limited"}), 429)
    assert body["error"]["type"] == "RATE_LIMIT_REACHED"
    time.sleep(0.3)  # the window has moved on, but the penalty has not expired
    expect_error(lambda: contacts.get("recAda00000000001"), 429)
    time.sleep(0.35)
    assert contacts.get("recAda00000000001")["id"] == "recAda00000000001"
    assert "limited" not in [r["fields"].get("Name") for r in emu.records("Contacts")]  # 429 = not processed
    assert emu.count(status=429) == 2


def test_rate_limit_retry_after_header_is_opt_in(emu):
    emu.set_rate_limit(1, penalty_s=0.3)
    raw = Api(emu.token, endpoint_url=emu.url, retry_strategy=None).table(BASE_ID, "Contacts")
    raw.get("recAda00000000001")
    with pytest.raises(requests.HTTPError) as excinfo:
        raw.get("recAda00000000001")
    assert "Retry-After" not in excinfo.value.response.headers
    emu.set_rate_limit(1, penalty_s=2.5, retry_after=True)
    raw.get("recAda00000000001")
    with pytest.raises(requests.HTTPError) as excinfo:
        raw.get("recAda00000000001")
    assert excinfo.value.response.headers["Retry-After"] == "3"
    emu.set_rate_limit(None)
    assert raw.get("recAda00000000001")


def test_pyairtable_default_retry_gives_up_inside_a_30s_penalty(emu):
    emu.set_rate_limit(1)  # default 30 s penalty: pyairtable's 5 quick retries all get 429
    table = Api(emu.token, endpoint_url=emu.url).table(BASE_ID, "Contacts")
    table.get("recAda00000000001")
    with pytest.raises(requests.exceptions.RetryError):
        table.get("recAda00000000001")
    assert emu.count(status=429) == 6


def test_rate_limit_counts_every_request(emu):
    emu.set_rate_limit(3, penalty_s=0.2)
    bad = Api("wrong", endpoint_url=emu.url, retry_strategy=None).table(BASE_ID, "Contacts")
    statuses = []
    for _ in range(4):
        try:
            bad.all()
        except requests.HTTPError as exc:
            statuses.append(exc.response.status_code)
    assert statuses == [401, 401, 401, 429]


# --------------------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------------------


def test_status_fault_with_skip_and_times(contacts, emu):
    fault = emu.add_fault(status=503, kind="write", skip=1, times=2)
    contacts.create({"Name": "w1"})
    body = expect_error(lambda: contacts.create({"Name": "w2"}), 503, "RETRIABLE_ERROR")
    # The 503 example of https://airtable.com/developers/web/api/errors, verbatim.
    assert body == {"error": {"type": "RETRIABLE_ERROR", "message": "Server encountered an error while "
                              "processing your request, and it is safe to retry the request"}}
    expect_error(lambda: contacts.create({"Name": "w3"}), 503)
    contacts.get("recAda00000000001")  # reads do not match
    contacts.create({"Name": "w4"})
    assert fault.seen == 4 and fault.fired == 2
    names = [r["fields"]["Name"] for r in emu.records("Contacts")]
    assert "w1" in names and "w4" in names and "w2" not in names and "w3" not in names
    assert emu.count(status=503) == 2
    assert [r.fault for r in emu.requests if r.status == 503] == ["status 503", "status 503"]


def test_502_on_reads_of_one_table_every_time(api, emu):
    emu.add_fault(status=502, kind="read", table="Big", times=None)
    for _ in range(3):
        expect_error(lambda: api.table(BASE_ID, "Big").all(), 502)
    assert api.table(BASE_ID, "Contacts").all()
    emu.clear_faults()
    assert len(api.table(BASE_ID, "Big").all()) == 250


def test_429_burst_is_retried_by_pyairtable(emu):
    emu.add_fault(status=429, times=2, method="POST")
    table = Api(emu.token, endpoint_url=emu.url).table(BASE_ID, "Contacts")  # default retry strategy
    rec = table.create({"Name": "after burst"})
    assert rec["fields"]["Name"] == "after burst"
    assert [r.status for r in emu.requests] == [429, 429, 200]
    assert [r["fields"]["Name"] for r in emu.records("Contacts")].count("after burst") == 1


def test_slow_response_times_out_but_is_applied_later(emu):
    emu.add_fault(delay_s=1.2, kind="write")
    table = Api(emu.token, endpoint_url=emu.url, timeout=(1, 0.5), retry_strategy=None).table(BASE_ID, "Contacts")
    with pytest.raises(requests.exceptions.ReadTimeout):
        table.create({"Name": "late"})
    assert "late" not in [r["fields"]["Name"] for r in emu.records("Contacts")]
    deadline = time.monotonic() + 5
    while emu.requests[-1].t_end is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "late" in [r["fields"]["Name"] for r in emu.records("Contacts")]
    assert emu.requests[-1].t_end - emu.requests[-1].t_start >= 1.2
    assert table.get("recAda00000000001")["id"] == "recAda00000000001"  # other requests still served


def test_delayed_request_does_not_block_others(emu, contacts):
    emu.add_fault(delay_s=0.8, kind="write")
    results = []
    slow = threading.Thread(target=lambda: results.append(contacts.create({"Name": "slow"})))
    slow.start()
    time.sleep(0.1)
    fast = Api(emu.token, endpoint_url=emu.url, retry_strategy=None).table(BASE_ID, "Contacts")
    t0 = time.monotonic()
    fast.get("recAda00000000001")
    assert time.monotonic() - t0 < 0.5
    slow.join()
    assert results[0]["fields"]["Name"] == "slow"


def test_dropped_connection_is_not_processed(contacts, emu):
    emu.add_fault(drop=True, kind="write")
    with pytest.raises(requests.exceptions.ConnectionError):
        contacts.create({"Name": "dropped"})
    assert "dropped" not in [r["fields"]["Name"] for r in emu.records("Contacts")]
    assert emu.requests[-1].status is None and emu.requests[-1].fault == "drop"
    contacts.create({"Name": "next"})  # the client reconnects


def test_apply_then_503_and_apply_then_drop(contacts, emu):
    emu.add_fault(status=503, apply=True, kind="write")
    expect_error(lambda: contacts.create({"Name": "applied-503"}), 503)
    emu.add_fault(drop=True, apply=True, kind="write")
    with pytest.raises(requests.exceptions.ConnectionError):
        contacts.create({"Name": "applied-drop"})
    names = [r["fields"]["Name"] for r in emu.records("Contacts")]
    assert "applied-503" in names and "applied-drop" in names
    assert [r.fault for r in emu.requests] == ["apply then status 503", "apply then drop"]


def test_default_retry_after_drop_duplicates_a_create(emu):
    """What the sync must defend against: pyairtable retries a dropped POST by itself."""
    emu.add_fault(drop=True, apply=True, kind="write")
    table = Api(emu.token, endpoint_url=emu.url).table(BASE_ID, "Contacts")
    table.create({"Name": "twice"})
    assert [r["fields"]["Name"] for r in emu.records("Contacts")].count("twice") == 2


def test_metadata_403(api, emu, contacts):
    emu.add_fault(status=403, kind="meta", times=None)
    expect_error(lambda: api.base(BASE_ID).schema(), 403, "INVALID_PERMISSIONS_OR_MODEL_NOT_FOUND")
    assert contacts.all(max_records=1)  # records still work without schema.bases:read


def test_match_selects_by_body_and_custom_body_and_headers(contacts, emu):
    emu.add_fault(status=422, match=lambda b: any(r["fields"].get("Name") == "poison" for r in b.get("records", [])),
                  times=None, body={"error": {"type": "CUSTOM", "message": "nope"}}, headers={"X-Test": "1"})
    contacts.batch_create([{"Name": "fine"}])
    with pytest.raises(requests.HTTPError) as excinfo:
        contacts.batch_create([{"Name": "ok"}, {"Name": "poison"}])
    assert excinfo.value.response.json() == {"error": {"type": "CUSTOM", "message": "nope"}}
    assert excinfo.value.response.headers["X-Test"] == "1"
    assert [r["fields"]["Name"] for r in emu.records("Contacts")][-1] == "fine"


# --------------------------------------------------------------------------------------
# Request log and state
# --------------------------------------------------------------------------------------


def test_request_log_counts_and_fields(contacts, emu):
    emu.clear_log()
    contacts.batch_create([{"Name": f"n{i}"} for i in range(25)])
    writes = [r for r in emu.requests if r.kind == "write"]
    assert emu.count(kind="write") == 3 and [r.records for r in writes] == [10, 10, 5]
    assert emu.count(method="post", table=T_CONTACTS, status=200) == 3
    first = writes[0]
    assert first.table == T_CONTACTS and first.path == f"/v0/{BASE_ID}/Contacts"
    assert first.body["records"][0] == {"fields": {"Name": "n0"}} and first.body["typecast"] is False
    assert first.t_start <= first.t_end and first.fault is None
    contacts.batch_delete([r["id"] for r in emu.records("Contacts")[-12:]])
    assert [r.records for r in emu.requests[-2:]] == [10, 2]
    assert emu.requests[-1].query["records[]"][:1] and emu.count(kind="meta") == 0


def test_keep_alive_reuses_one_connection(api, emu, contacts):
    for _ in range(5):
        contacts.get("recAda00000000001")
    contacts.create({"Name": "keep-alive"})
    manager = api.session.get_adapter(emu.url).poolmanager
    pools = [manager.pools[key] for key in manager.pools.keys()]
    assert [(p.num_connections, p.num_requests) for p in pools] == [(1, 6)]


def test_state_accessors_return_copies_and_snapshot_roundtrips(emu, contacts):
    records = emu.records("Contacts")
    records[0]["fields"]["Name"] = "mutated"
    assert emu.records("Contacts")[0]["fields"]["Name"] == "Ada"
    contacts.create({"Name": "Snap", "Status": "Brand new"}, typecast=True)
    snap = emu.snapshot()
    assert json.loads(json.dumps(snap)) == snap
    with Emulator(snap, rps=None) as clone:
        assert clone.records("Contacts") == emu.records("Contacts")
        assert clone.schema() == emu.schema()
    with pytest.raises(KeyError):
        emu.records("Nope")


def test_bad_base_json_is_rejected():
    base = make_base()
    base["tables"][0]["records"].append({"fields": {"Nope": 1}})
    with pytest.raises(ValueError):
        Emulator(base)


# --------------------------------------------------------------------------------------
# A person changing the schema in the UI (emu.client): what the API sees afterwards
# --------------------------------------------------------------------------------------


def test_writes_by_field_id_survive_renames_and_a_deleted_fields_id_is_unknown(contacts, emu):
    emu.client.rename_field("Contacts", "Age", "Years")
    emu.client.rename_field(T_CONTACTS, F_KEY, "External id")
    assert contacts.update(ADA, {F_AGE: 37}, use_field_ids=True)["fields"][F_AGE] == 37
    assert contacts.get(ADA)["fields"]["Years"] == 37
    expect_error(lambda: contacts.update(ADA, {"Age": 38}), 422, "UNKNOWN_FIELD_NAME", 'Unknown field name: "Age"')
    upserted = contacts.batch_upsert([{"fields": {F_KEY: "k-bob", F_AGE: 1}}], key_fields=[F_KEY])
    assert upserted["updatedRecords"] == [BOB] and upserted["records"][0]["fields"]["Years"] == 1
    expect_error(lambda: contacts.batch_upsert([{"fields": {"Key": "k-bob"}}], key_fields=["Key"]), 422,
                 "UNKNOWN_FIELD_NAME", 'Unknown field name: "Key"')
    # Deleted, then created again under the same name: a new id; the old one is unknown.
    emu.client.delete_field("Contacts", "Email")
    new_email = emu.client.create_field("Contacts", "Email", "email")
    assert new_email != F_EMAIL and new_email.startswith("fld") and len(new_email) == 17
    expect_error(lambda: contacts.update(ADA, {F_EMAIL: "a@example.com"}), 422, "UNKNOWN_FIELD_NAME",
                 f'Unknown field name: "{F_EMAIL}"')
    assert contacts.update(ADA, {"Email": "a@example.com"}, use_field_ids=True)["fields"][new_email] == "a@example.com"
    assert "Email" not in contacts.get(BOB)["fields"]  # the old cells went with the old field
    # Retyped: same id, cells converted, writes take the new type.
    emu.client.change_field_type("Contacts", "Years", "singleLineText")
    assert contacts.get(ADA, use_field_ids=True)["fields"][F_AGE] == "37"
    expect_error(lambda: contacts.update(ADA, {F_AGE: 38}), 422, "INVALID_VALUE_FOR_COLUMN")
    assert contacts.update(ADA, {F_AGE: "thirty-eight"})["fields"]["Years"] == "thirty-eight"


def test_a_renamed_table_answers_to_its_id_and_new_name_only(api, emu):
    emu.client.rename_table("Contacts", "People")
    message = ("Invalid permissions, or the requested model was not found. Check that both your user and "
               "your token have the required permissions, and that the model names and/or ids are correct.")
    old = api.table(BASE_ID, "Contacts")
    expect_error(lambda: old.all(), 403, "INVALID_PERMISSIONS_OR_MODEL_NOT_FOUND", message)
    expect_error(lambda: old.create({"Name": "x"}), 403, "INVALID_PERMISSIONS_OR_MODEL_NOT_FOUND", message)
    expect_error(lambda: old.batch_upsert([{"fields": {"Key": "k-ada"}}], key_fields=["Key"]), 403)
    assert len(emu.records("People")) == 4
    assert len(api.table(BASE_ID, T_CONTACTS).all()) == 4
    assert api.table(BASE_ID, "People").create({"Name": "Eve"})["fields"]["Name"] == "Eve"
    schema = api.base(BASE_ID).schema(force=True)
    assert schema.table(T_CONTACTS).name == "People" and [t.name for t in schema.tables][:2] == ["People", "Companies"]
    assert schema.table("Companies").field("People").options.linked_table_id == T_CONTACTS  # links are by id
    # Another table's name (in any case) and an empty name are refused; the old name is gone.
    for bad in ("companies", " "):
        with pytest.raises(ValueError):
            emu.client.rename_table("People", bad)
    with pytest.raises(KeyError):
        emu.client.rename_table("Contacts", "Anything")
    emu.client.rename_table(T_CONTACTS, "Contacts")  # and back
    assert len(api.table(BASE_ID, "Contacts").all()) == 5


def test_formulas_follow_a_renamed_field_and_break_on_a_deleted_one(contacts, emu):
    fid = emu.client.create_field("Contacts", "Greeting", "formula", {"formula": "'Hi ' & {Name} & {Key}"})
    assert contacts.get(ADA)["fields"]["Greeting"] == "Hi Adak-ada"
    emu.client.rename_field("Contacts", "Name", "First name")
    assert contacts.get(ADA)["fields"]["Greeting"] == "Hi Adak-ada"

    def greeting() -> dict:
        return next(f for f in emu.schema()["tables"][0]["fields"] if f["id"] == fid)["options"]

    # The API shows a formula's fields by id (field-model, Formula): the renamed one is now so.
    assert greeting()["formula"] == "'Hi ' & {fldName0000000001} & {Key}" and greeting()["isValid"] is True
    emu.client.delete_field("Contacts", "Key")
    assert greeting()["formula"] == "'Hi ' & {fldName0000000001} & {fldKey00000000001}"
    assert greeting()["isValid"] is False and "Greeting" not in contacts.get(ADA)["fields"]
    emu.client.create_field("Contacts", "Key", "singleLineText")  # a new field, a new id
    contacts.update(ADA, {"Key": "k"})
    assert "Greeting" not in contacts.get(ADA)["fields"]


def test_deleting_a_field_invalidates_what_reads_it_and_leaves_the_views():
    base_json = make_base()
    base_json["tables"][0]["views"] = [{"id": "viwGridTest000001", "name": "Grid", "type": "grid",
                                        "visibleFieldIds": [F_NAME, "fldCompany0000001", F_AGE]}]
    with Emulator(base_json, rps=None) as emu:
        api = Api(emu.token, endpoint_url=emu.url, retry_strategy=None)
        assert api.table(BASE_ID, "Contacts").get(ADA)["fields"]["CompanyName"] == ["Acme"]
        emu.client.delete_field("Contacts", "Company")
        schema = api.base(BASE_ID).schema(force=True)
        contacts = schema.table(T_CONTACTS)
        assert contacts.field("CompanyName").options.is_valid is False
        assert schema.table(T_COMPANIES).field("Headcount").options.is_valid is True  # counts People, kept
        assert contacts.views[0].visible_field_ids == [F_NAME, F_AGE]
        assert "CompanyName" not in api.table(BASE_ID, "Contacts").get(ADA)["fields"]
        emu.client.delete_field("Companies", "People")
        assert api.base(BASE_ID).schema(force=True).table(T_COMPANIES).field("Headcount").options.is_valid is False


# --------------------------------------------------------------------------------------
# Standalone
# --------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_standalone_subprocess(tmp_path):
    base_path = tmp_path / "BASE.json"
    base_path.write_text(json.dumps(make_base()))
    port = _free_port()
    script = Path(__file__).resolve().parent / "airtable_emulator"
    proc = subprocess.Popen(
        [sys.executable, str(script), "--port", str(port), "--base", str(base_path), "--rps", "5",
         "--penalty-s", "1", "--token", "tok"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "emulator did not start"
                time.sleep(0.05)
        api = Api("tok", endpoint_url=f"http://127.0.0.1:{port}", retry_strategy=None)
        assert api.table(BASE_ID, "Contacts").get("recAda00000000001")["fields"]["Name"] == "Ada"
        assert api.base(BASE_ID).schema().table("Big").id == T_BIG
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=10)
    assert f"serving base {BASE_ID}" in stderr
    assert "GET /v0/appEmulatorTest01/Contacts/recAda00000000001 -> 200 (read)" in stderr


def test_a_field_made_a_formula_is_computed_by_date_functions_and_refuses_writes(contacts, emu):
    import datetime as dt
    today = dt.datetime.now(dt.timezone.utc).date()
    seen = dt.datetime.combine(today - dt.timedelta(days=3), dt.time(22, 41), tzinfo=dt.timezone.utc)
    contacts.update(ADA, {"LastSeen": seen.isoformat().replace("+00:00", "Z"), "Age": 7})
    emu.client.change_field_to_formula("Contacts", "Age", "DATETIME_DIFF(TODAY(), {LastSeen}, 'days')")
    age = next(f for f in emu.schema()["tables"][0]["fields"] if f["name"] == "Age")
    assert age["id"] == "fldAge00000000001" and age["type"] == "formula"
    assert age["options"]["referencedFieldIds"] == ["fldSeen0000000001"]
    # TODAY() is today at 00:00 UTC: 2 days and 1 h 19 min after LastSeen, cut to whole days.
    assert contacts.get(ADA)["fields"]["Age"] == 2
    emu.advance_clock(days=1)
    assert contacts.get(ADA)["fields"]["Age"] == 3
    expect_error(lambda: contacts.update(ADA, {"Age": 5}), 422, "INVALID_VALUE_FOR_COLUMN")


@pytest.mark.parametrize("unit, expected", [("days", 2), ("d", 2), ("hours", 49), ("weeks", 0), ("months", 0),
                                            (None, 177540), ("bogus", 177540000)])
def test_datetime_diff_units(unit, expected):
    import datetime as dt
    from airtable_emulator.formulas import _datetime_diff
    utc = dt.timezone.utc
    later, earlier = dt.datetime(2025, 3, 1, tzinfo=utc), dt.datetime(2025, 2, 26, 22, 41, tzinfo=utc)
    assert _datetime_diff(later, earlier, unit) == expected
    assert _datetime_diff(earlier, later, unit) == -expected
    assert _datetime_diff(dt.datetime(2025, 3, 31, tzinfo=utc), dt.datetime(2024, 1, 31, tzinfo=utc), "Q") == 4
