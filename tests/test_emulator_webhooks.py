"""Strictness tests of the emulator's Webhooks API (through pyairtable and raw HTTP), its
test controls (clock, UI client) and the requests Airtable.js sends."""

from __future__ import annotations

import base64
import datetime as dt
import json

import pytest
import requests
from pyairtable import Api

from airtable_emulator import Emulator
from test_emulator import BASE_ID, T_COMPANIES, T_CONTACTS, expect_error, make_base

DATA = {"options": {"filters": {"dataTypes": ["tableData"]}}}
FIELDS = {"options": {"filters": {"dataTypes": ["tableFields"]}}}
ADA, BOB, ACME = "recAda00000000001", "recBob00000000001", "recAcme0000000001"
F_NAME, F_STATUS, F_TAGS, F_COMPANY, F_ACTIVE = (
    "fldName0000000001", "fldStatus00000001", "fldTags0000000001", "fldCompany0000001", "fldActive00000001")
F_AGE, F_PEOPLE, F_LOOKUP, F_MODIFIED = "fldAge00000000001", "fldPeople00000001", "fldLookup00000001", "fldModified000001"


@pytest.fixture
def emu():
    with Emulator(make_base(), rps=None) as e:
        yield e


@pytest.fixture
def api(emu):
    return Api(emu.token, endpoint_url=emu.url, retry_strategy=None)


@pytest.fixture
def base(api):
    return api.base(BASE_ID)


@pytest.fixture
def contacts(api):
    return api.table(BASE_ID, "Contacts")


def raw(emu, method: str, path: str, **kwargs) -> requests.Response:
    headers = {"Authorization": f"Bearer {emu.token}", **kwargs.pop("headers", {})}
    return requests.request(method, emu.url + path, headers=headers, timeout=10, **kwargs)


def hook_url(hook_id: str = "", suffix: str = "") -> str:
    return f"/v0/bases/{BASE_ID}/webhooks" + (f"/{hook_id}" if hook_id else "") + suffix


def parse_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def emu_now(emu) -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc) + emu._clock_offset


def payload_tables(payload: dict) -> dict:
    return payload["changedTablesById"]


# --------------------------------------------------------------------------------------
# Create / list / delete / refresh / notifications
# --------------------------------------------------------------------------------------


def test_create_answers_id_secret_and_expiry_and_list_shows_the_documented_object(emu, base):
    created = base.add_webhook(None, DATA)
    assert created.id.startswith("ach") and len(created.id) == 17
    assert len(base64.b64decode(created.mac_secret_base64)) >= 16
    assert abs((created.expiration_time - emu_now(emu)) - dt.timedelta(days=7)) < dt.timedelta(seconds=5)
    body = raw(emu, "GET", hook_url()).json()
    assert body == {"webhooks": [{
        "id": created.id, "areNotificationsEnabled": False, "cursorForNextPayload": 1, "isHookEnabled": True,
        "lastSuccessfulNotificationTime": None, "notificationUrl": None,
        "expirationTime": body["webhooks"][0]["expirationTime"], "lastNotificationResult": None,
        "specification": DATA,
    }]}
    assert parse_time(body["webhooks"][0]["expirationTime"]) == created.expiration_time
    [hook] = base.webhooks()  # pyairtable parses the list into its Webhook model
    assert hook.id == created.id and hook.is_hook_enabled and hook.specification.options.filters.data_types == ["tableData"]
    assert emu.webhooks() == body["webhooks"]


def test_notification_url_and_enable_notifications(emu, base):
    created = base.add_webhook("https://example.com/ping", DATA)
    hook = base.webhook(created.id)
    assert hook.notification_url == "https://example.com/ping" and hook.are_notifications_enabled
    hook.disable_notifications()
    assert emu.webhooks()[0]["areNotificationsEnabled"] is False
    hook.enable_notifications()
    assert emu.webhooks()[0]["areNotificationsEnabled"] is True
    r = raw(emu, "POST", hook_url(created.id, "/enableNotifications"), json={"enable": "yes"})
    assert r.status_code == 422
    r = raw(emu, "POST", hook_url(), json={"notificationUrl": "not a url", "specification": DATA})
    assert r.status_code == 422


@pytest.mark.parametrize("spec", [
    {},
    {"options": {}},
    {"options": {"filters": {}}},
    {"options": {"filters": {"dataTypes": []}}},
    {"options": {"filters": {"dataTypes": ["records"]}}},
    {"options": {"filters": {"dataTypes": ["tableData"], "recordChangeScope": "Contacts"}}},
    {"options": {"filters": {"dataTypes": ["tableData"], "recordChangeScope": "tblNoSuchTable001"}}},
    {"options": {"filters": {"dataTypes": ["tableData"], "tables": [T_CONTACTS]}}},
    {"options": {"filters": {"dataTypes": ["tableData"], "changeTypes": ["create"]}}},
    {"options": {"filters": {"dataTypes": ["tableData"], "fromSources": ["ui"]}}},
    {"options": {"filters": {"dataTypes": ["tableData"], "watchDataInFieldIds": ["Name"]}}},
    {"options": {"filters": {"dataTypes": ["tableData"], "recordChangeScope": T_COMPANIES,
                             "watchDataInFieldIds": [F_NAME]}}},
    {"options": {"filters": {"dataTypes": ["tableData"]}, "includes": {"includeEverything": True}}},
    {"options": {"filters": {"dataTypes": ["tableData"]}, "includes": {"includePreviousCellValues": "yes"}}},
    {"options": {"filters": {"dataTypes": ["tableData"]}, "includes": {"includeCellValuesInFieldIds": "some"}}},
    {"options": {"filters": {"dataTypes": ["tableData"]}}, "extra": 1},
])
def test_invalid_specifications_are_refused(emu, spec):
    r = raw(emu, "POST", hook_url(), json={"notificationUrl": None, "specification": spec})
    assert r.status_code == 422, r.text
    assert emu.webhooks() == []


def test_valid_specifications_with_every_option(emu, base):
    view_id = emu.schema()["tables"][0]["views"][0]["id"]
    for spec in (
        {"options": {"filters": {"dataTypes": ["tableData", "tableFields", "tableMetadata"], "recordChangeScope": view_id,
                                 "changeTypes": ["add", "remove", "update"], "fromSources": ["client", "publicApi"],
                                 "watchDataInFieldIds": [F_NAME], "watchSchemasOfFieldIds": [F_NAME]},
                     "includes": {"includeCellValuesInFieldIds": "all", "includePreviousCellValues": True,
                                  "includePreviousFieldDefinitions": True}}},
        {"options": {"filters": {"dataTypes": ["tableData"], "sourceOptions": {"formSubmission": {"viewId": view_id}}},
                     "includes": {"includeCellValuesInFieldIds": [F_NAME, F_AGE]}}},
    ):
        created = base.add_webhook(None, spec)
        assert base.webhook(created.id).specification.model_dump(by_alias=True, exclude_unset=True) == spec


def test_at_most_10_webhooks_per_base(emu, base):
    ids = [base.add_webhook(None, DATA).id for _ in range(10)]
    expect_error(lambda: base.add_webhook(None, DATA), 422, "TOO_MANY_WEBHOOKS_IN_BASE")
    base.webhook(ids[0]).delete()
    base.add_webhook(None, DATA)
    assert len(base.webhooks()) == 10


def test_delete_removes_the_webhook_and_its_payloads(emu, base, contacts):
    hook = base.webhook(base.add_webhook(None, DATA).id)
    contacts.update(ADA, {"Age": 37})
    hook.delete()
    assert base.webhooks() == []
    for method, suffix in (("DELETE", ""), ("POST", "/refresh"), ("GET", "/payloads")):
        assert raw(emu, method, hook_url(hook.id, suffix)).status_code == 403
    assert raw(emu, "GET", "/v0/bases/appNoSuchBase0001/webhooks").status_code == 403
    assert raw(emu, "PUT", hook_url()).status_code == 404


def test_token_without_webhook_manage_is_refused_everywhere():
    scopes = ["data.records:read", "data.records:write", "schema.bases:read"]
    with Emulator(make_base(), rps=None, scopes=scopes) as emu:
        api = Api(emu.token, endpoint_url=emu.url, retry_strategy=None)
        assert api.whoami()["scopes"] == scopes
        expect_error(lambda: api.base(BASE_ID).add_webhook(None, DATA), 403, "INVALID_PERMISSIONS_OR_MODEL_NOT_FOUND")
        for method, suffix in (("GET", ""), ("DELETE", "/achNoSuchHook0001"), ("POST", "/achNoSuchHook0001/refresh"),
                               ("GET", "/achNoSuchHook0001/payloads"),
                               ("POST", "/achNoSuchHook0001/enableNotifications")):
            r = raw(emu, method, hook_url() + suffix, json={"enable": True} if "enable" in suffix else None)
            assert r.status_code == 403, (method, suffix)
        assert len(api.table(BASE_ID, "Contacts").all()) == 4  # records scopes still work


def test_data_types_need_their_scopes_and_whoami_reports_the_default_scopes():
    with Emulator(make_base(), rps=None, scopes=["webhook:manage", "schema.bases:read"]) as emu:
        api = Api(emu.token, endpoint_url=emu.url, retry_strategy=None)
        expect_error(lambda: api.base(BASE_ID).add_webhook(None, DATA), 403)
        api.base(BASE_ID).add_webhook(None, FIELDS)
        expect_error(lambda: api.table(BASE_ID, "Contacts").all(), 403)  # no data.records:read
    with Emulator(make_base(), rps=None) as emu:
        api = Api(emu.token, endpoint_url=emu.url, retry_strategy=None)
        assert "webhook:manage" in api.whoami()["scopes"]


# --------------------------------------------------------------------------------------
# Expiry, refresh, retention (the emulator's clock)
# --------------------------------------------------------------------------------------


def test_webhook_expires_after_7_days_then_is_gone_7_days_later(emu, base, contacts):
    created = base.add_webhook(None, DATA)
    emu.advance_clock(days=6, seconds=86000)
    assert base.webhook(created.id).is_hook_enabled
    emu.advance_clock(seconds=401)
    [listed] = emu.webhooks()
    assert listed["isHookEnabled"] is False  # expired and disabled, still listed
    contacts.update(ADA, {"Age": 50})
    assert emu.payloads(created.id) == []  # an expired hook gets no payloads
    expect_error(lambda: base.webhook(created.id).extend_expiration(), 422)
    assert raw(emu, "GET", hook_url(created.id, "/payloads")).status_code == 200  # still readable
    emu.advance_clock(days=7)
    assert base.webhooks() == []
    assert raw(emu, "GET", hook_url(created.id, "/payloads")).status_code == 403


def test_refresh_extends_the_life_by_7_days_from_now(emu, base):
    hook = base.webhook(base.add_webhook(None, DATA).id)
    emu.advance_clock(days=6)
    r = raw(emu, "POST", hook_url(hook.id, "/refresh"))
    assert r.status_code == 200 and set(r.json()) == {"expirationTime"}
    expected = emu_now(emu) + dt.timedelta(days=7)
    assert abs(parse_time(r.json()["expirationTime"]) - expected) < dt.timedelta(seconds=5)
    emu.advance_clock(days=6)
    hook.extend_expiration()  # pyairtable's refresh
    emu.advance_clock(days=6)
    assert base.webhook(hook.id).is_hook_enabled


def test_listing_payloads_extends_the_life(emu, base):
    hook = base.webhook(base.add_webhook(None, DATA).id)
    for _ in range(3):
        emu.advance_clock(days=6)
        assert list(hook.payloads()) == []
    assert base.webhook(hook.id).is_hook_enabled
    assert parse_time(emu.webhooks()[0]["expirationTime"]) > emu_now(emu) + dt.timedelta(days=6)


def test_payloads_are_dropped_after_7_days_and_the_cursor_is_never_reset(emu, base, contacts):
    hook_id = base.add_webhook(None, DATA).id
    contacts.update(ADA, {"Age": 1})
    emu.advance_clock(days=4)
    contacts.update(ADA, {"Age": 2})
    assert raw(emu, "GET", hook_url(hook_id, "/payloads")).status_code == 200  # keeps the hook alive
    emu.advance_clock(days=3, seconds=10)
    r = raw(emu, "GET", hook_url(hook_id, "/payloads"), params={"cursor": 1}).json()
    assert [p["baseTransactionNumber"] for p in r["payloads"]] == [2]
    assert r["cursor"] == 3 and r["mightHaveMore"] is False
    assert emu.webhooks()[0]["cursorForNextPayload"] == 3
    emu.advance_clock(days=4)
    r = raw(emu, "GET", hook_url(hook_id, "/payloads"), params={"cursor": 1}).json()
    assert r == {"payloads": [], "cursor": 1, "mightHaveMore": False}
    contacts.update(ADA, {"Age": 3})
    assert [p.cursor for p in base.webhook(hook_id).payloads(3)] == [3]


def test_advance_clock_moves_created_time(emu, contacts):
    emu.advance_clock(days=30)
    rec = contacts.create({"Name": "Later"})
    assert abs(parse_time(rec["createdTime"]) - emu_now(emu)) < dt.timedelta(seconds=5)
    assert parse_time(rec["createdTime"]) > dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=29)


# --------------------------------------------------------------------------------------
# Payloads: one per transaction, cell formats, links, filters, includes
# --------------------------------------------------------------------------------------


def test_one_payload_per_api_write_a_batch_being_one(emu, base, contacts):
    hook = base.webhook(base.add_webhook(None, DATA).id)
    created = contacts.batch_create([{"Name": "C1"}, {"Name": "C2"}, {"Name": "C3"}])
    contacts.batch_update([{"id": created[0]["id"], "fields": {"Age": 1}}, {"id": created[1]["id"], "fields": {"Age": 2}}])
    contacts.batch_upsert([{"fields": {"Key": "k-new", "Name": "N"}}, {"fields": {"Key": "k-bob", "Age": 42}}],
                          key_fields=["Key"])
    contacts.update(BOB, {"Age": 42})  # the same value: nothing changes, no payload
    expect_error(lambda: contacts.batch_update([{"id": BOB, "fields": {"Age": "x"}}]), 422)  # refused: none
    contacts.update(created[2]["id"], {"Name": "C3b"}, replace=True)
    contacts.batch_delete([c["id"] for c in created])
    payloads = list(hook.payloads())
    assert [p.cursor for p in payloads] == [1, 2, 3, 4, 5]
    assert [p.base_transaction_number for p in payloads] == [1, 2, 3, 4, 5]
    assert {p.action_metadata.source for p in payloads} == {"publicApi"}
    tables = [p.changed_tables_by_id[T_CONTACTS] for p in payloads]
    assert set(tables[0].created_records_by_id) == {c["id"] for c in created}
    assert set(tables[1].changed_records_by_id) == {created[0]["id"], created[1]["id"]}
    assert len(tables[2].created_records_by_id) == 1 and set(tables[2].changed_records_by_id) == {BOB}
    assert tables[4].destroyed_record_ids == [c["id"] for c in created]
    raw_payload = emu.payloads(hook.id)[0]
    assert raw_payload["payloadFormat"] == "v0" and raw_payload["timestamp"].endswith("Z")
    assert raw_payload["actionMetadata"]["sourceMetadata"]["user"]["id"].startswith("usr")


def test_cells_use_the_webhook_cell_formats(emu, base, contacts):
    hook_id = base.add_webhook(None, DATA).id
    rec = contacts.create({"Name": "Cy", "Status": "Active", "Tags": ["a", "c"], "Company": [ACME], "Active": True,
                           "Age": 7})
    [payload] = emu.payloads(hook_id)
    cells = payload_tables(payload)[T_CONTACTS]["createdRecordsById"][rec["id"]]["cellValuesByFieldId"]
    assert cells[F_STATUS] == {"id": "selActive0000001", "name": "Active", "color": "greenLight2"}
    assert [c["name"] for c in cells[F_TAGS]] == ["a", "c"] and all(set(c) == {"id", "name", "color"} for c in cells[F_TAGS])
    assert cells[F_COMPANY] == [{"id": ACME, "name": "Acme"}]
    assert cells[F_ACTIVE] is True and cells[F_AGE] == 7 and cells[F_NAME] == "Cy"
    assert cells[F_LOOKUP] == {"valuesByLinkedRecordId": {ACME: ["Acme"]}, "linkedRecordIds": [ACME]}
    created_time = payload_tables(payload)[T_CONTACTS]["createdRecordsById"][rec["id"]]["createdTime"]
    assert created_time == rec["createdTime"]
    # The inverse link field of the company changed in the same transaction.
    people = payload_tables(payload)[T_COMPANIES]["changedRecordsById"][ACME]["current"]["cellValuesByFieldId"]
    assert people[F_PEOPLE] == [{"id": ADA, "name": "Ada"}, {"id": rec["id"], "name": "Cy"}]


def test_deleting_a_record_reports_the_link_cells_it_clears_in_the_same_payload(emu, base, api):
    hook_id = base.add_webhook(None, {"options": {"filters": {"dataTypes": ["tableData"]},
                                                  "includes": {"includePreviousCellValues": True}}}).id
    api.table(BASE_ID, "Companies").delete(ACME)
    [payload] = emu.payloads(hook_id)
    assert payload_tables(payload)[T_COMPANIES]["destroyedRecordIds"] == [ACME]
    ada = payload_tables(payload)[T_CONTACTS]["changedRecordsById"][ADA]
    assert ada["current"]["cellValuesByFieldId"][F_COMPANY] is None
    assert ada["previous"]["cellValuesByFieldId"][F_COMPANY] == [{"id": ACME, "name": "Acme"}]


def test_ui_delete_clears_links_in_the_same_client_payload(emu, base):
    hook_id = base.add_webhook(None, DATA).id
    emu.client.delete("Contacts", [ADA])
    [payload] = emu.payloads(hook_id)
    assert payload["actionMetadata"]["source"] == "client"
    assert payload_tables(payload)[T_CONTACTS]["destroyedRecordIds"] == [ADA]
    # The link cell is cleared (null) and the count field computed from it changes with it.
    assert payload_tables(payload)[T_COMPANIES]["changedRecordsById"][ACME]["current"]["cellValuesByFieldId"] == {
        F_PEOPLE: None, "fldCount000000001": 0}


def test_filters_scope_sources_change_types_and_watched_fields(emu, base, contacts, api):
    only_companies = base.add_webhook(None, {"options": {"filters": {"dataTypes": ["tableData"],
                                                                     "recordChangeScope": T_COMPANIES}}}).id
    only_client = base.add_webhook(None, {"options": {"filters": {"dataTypes": ["tableData"],
                                                                  "fromSources": ["client"]}}}).id
    only_adds = base.add_webhook(None, {"options": {"filters": {"dataTypes": ["tableData"], "changeTypes": ["add"]}}}).id
    watch_age = base.add_webhook(None, {"options": {"filters": {"dataTypes": ["tableData"],
                                                                "watchDataInFieldIds": [F_AGE]}}}).id
    contacts.update(BOB, {"Notes": "hello"})  # Contacts only, publicApi, update, not Age
    assert [emu.payloads(h) for h in (only_companies, only_client, only_adds, watch_age)] == [[], [], [], []]
    emu.client.update("Contacts", BOB, {"Age": 50})
    assert [len(emu.payloads(h)) for h in (only_companies, only_client, only_adds, watch_age)] == [0, 1, 0, 1]
    [watched] = emu.payloads(watch_age)
    assert payload_tables(watched)[T_CONTACTS]["changedRecordsById"][BOB]["current"]["cellValuesByFieldId"] == {F_AGE: 50}
    api.table(BASE_ID, "Companies").create({"Name": "Initech"})
    assert [len(emu.payloads(h)) for h in (only_companies, only_client, only_adds, watch_age)] == [1, 1, 1, 1]


def test_includes_previous_and_unchanged_cell_values(emu, base, contacts):
    plain = base.add_webhook(None, DATA).id
    rich = base.add_webhook(None, {"options": {"filters": {"dataTypes": ["tableData"]}, "includes": {
        "includePreviousCellValues": True, "includeCellValuesInFieldIds": [F_NAME, F_AGE]}}}).id
    contacts.update(ADA, {"Age": 40})
    [p_plain], [p_rich] = emu.payloads(plain), emu.payloads(rich)
    change = payload_tables(p_plain)[T_CONTACTS]["changedRecordsById"][ADA]
    assert set(change) == {"current"}
    assert change["current"]["cellValuesByFieldId"][F_AGE] == 40
    assert F_MODIFIED in change["current"]["cellValuesByFieldId"]  # the lastModifiedTime cell changed too
    change = payload_tables(p_rich)[T_CONTACTS]["changedRecordsById"][ADA]
    assert change["previous"]["cellValuesByFieldId"][F_AGE] == 36
    assert change["unchanged"] == {"cellValuesByFieldId": {F_NAME: "Ada"}}


def test_unchanged_is_left_out_when_every_listed_field_changed(emu, base, contacts):
    hook_id = base.add_webhook(None, {"options": {"filters": {"dataTypes": ["tableData"]}, "includes": {
        "includeCellValuesInFieldIds": [F_AGE]}}}).id
    contacts.update(ADA, {"Age": 41})
    [payload] = emu.payloads(hook_id)
    change = payload_tables(payload)[T_CONTACTS]["changedRecordsById"][ADA]
    assert "unchanged" not in change and change["current"]["cellValuesByFieldId"][F_AGE] == 41


def test_a_large_transaction_is_split_into_payloads_of_the_same_transaction(emu, base, contacts):
    hook = base.webhook(base.add_webhook(None, {"options": {"filters": {"dataTypes": ["tableData"]}}}).id)
    view_id = emu.schema()["tables"][0]["views"][0]["id"]
    in_view = base.add_webhook(None, {"options": {"filters": {"dataTypes": ["tableData"], "recordChangeScope": view_id}}}).id
    emu.split_payloads_over = 3
    created = contacts.batch_create([{"Name": f"S{i}"} for i in range(8)])  # one request, 8 records
    contacts.update(ADA, {"Age": 1})  # one record: not split
    payloads = emu.payloads(hook.id)
    assert len(payloads) == 4  # 8 created contacts (3 + 3 + 2), then Ada's change
    split, last = payloads[:3], payloads[3]
    assert [len(payload_tables(p)[T_CONTACTS]["createdRecordsById"]) for p in split] == [3, 3, 2]
    ids = [rid for p in split for rid in payload_tables(p)[T_CONTACTS]["createdRecordsById"]]
    assert ids == [c["id"] for c in created]
    for key in ("timestamp", "baseTransactionNumber", "actionMetadata", "payloadFormat"):
        assert len({json.dumps(p[key]) for p in split}) == 1, key
    assert last["baseTransactionNumber"] == split[0]["baseTransactionNumber"] + 1
    assert [p.cursor for p in hook.payloads()] == [1, 2, 3, 4]  # each piece is a payload of its own
    # A view-scoped hook: each piece's changedViewsById holds that piece's records.
    for p in emu.payloads(in_view)[:3]:
        table = payload_tables(p)[T_CONTACTS]
        assert table["changedViewsById"] == {view_id: {"createdRecordsById": table["createdRecordsById"]}}


def _delete_with_split(split: int | None) -> list[dict]:
    with Emulator(make_base(), rps=None) as emu:
        base = Api(emu.token, endpoint_url=emu.url, retry_strategy=None).base(BASE_ID)
        hook_id = base.add_webhook(None, DATA).id
        emu.split_payloads_over = split
        base.table("Contacts").batch_delete([ADA, BOB, "recDup10000000001", "recDup20000000001"])
        return emu.payloads(hook_id)


def test_split_counts_created_changed_and_destroyed_records_over_every_table():
    # Deleting Ada clears Acme's link: 4 destroyed contacts and 1 changed company.
    [unsplit] = _delete_with_split(None)
    pieces = _delete_with_split(2)
    counts = [[(tid, key, len(value)) for tid, table in payload_tables(p).items() for key, value in table.items()]
              for p in pieces]
    assert counts == [[(T_CONTACTS, "destroyedRecordIds", 2)], [(T_CONTACTS, "destroyedRecordIds", 2)],
                      [(T_COMPANIES, "changedRecordsById", 1)]]
    merged: dict = {}
    for p in pieces:
        for tid, table in payload_tables(p).items():
            for key, value in table.items():
                if isinstance(value, list):
                    merged.setdefault(tid, {}).setdefault(key, []).extend(value)
                else:
                    merged.setdefault(tid, {}).setdefault(key, {}).update(value)
    assert json.dumps(merged) == json.dumps(payload_tables(unsplit))  # key order included


def test_split_keeps_field_changes_in_the_first_piece(emu, base):
    hook_id = base.add_webhook(None, {"options": {"filters": {"dataTypes": ["tableData", "tableFields"]}}}).id
    emu.split_payloads_over = 1
    emu.client.change_field_type("Contacts", "Key", "number")  # a field change and every record's cell
    payloads = emu.payloads(hook_id)
    assert len(payloads) == len(emu.records("Contacts")) > 1
    assert "changedFieldsById" in payload_tables(payloads[0])[T_CONTACTS]
    assert all("changedFieldsById" not in payload_tables(p)[T_CONTACTS] for p in payloads[1:])
    assert all(len(payload_tables(p)[T_CONTACTS]["changedRecordsById"]) == 1 for p in payloads)


def test_client_actions_as_other_sources_carry_their_action_metadata(emu, base):
    every = base.add_webhook(None, DATA).id
    automations = base.add_webhook(None, {"options": {"filters": {"dataTypes": ["tableData"],
                                                                  "fromSources": ["automation"]}}}).id
    forms = base.add_webhook(None, {"options": {"filters": {"dataTypes": ["tableData"],
                                                            "fromSources": ["formSubmission", "sync"]}}}).id
    people = base.add_webhook(None, {"options": {"filters": {"dataTypes": ["tableData"], "fromSources": ["client"]}}}).id
    view_id = emu.schema()["tables"][0]["views"][0]["id"]
    emu.client.update("Contacts", BOB, {"Age": 60}, source="automation")
    rid = emu.client.create("Contacts", {"Name": "Form"}, source="formSubmission")
    emu.client.update("Contacts", rid, {"Age": 3}, source="automation", source_metadata={"automationId": "wflOther000000001"})
    emu.client.delete("Contacts", [rid], source="sync")
    emu.client.update("Contacts", BOB, {"Age": 61}, source="system")
    emu.client.update("Contacts", BOB, {"Age": 62}, source="anonymousUser")
    emu.client.update("Contacts", BOB, {"Age": 63}, source="unknown")
    emu.client.create("Contacts", {"Name": "Page"}, source="formPageSubmission")
    assert [p["actionMetadata"] for p in emu.payloads(every)] == [
        {"source": "automation", "sourceMetadata": {"automationId": "wflEmulatorAuto01"}},
        {"source": "formSubmission", "sourceMetadata": {"viewId": view_id}},
        {"source": "automation", "sourceMetadata": {"automationId": "wflOther000000001"}},
        {"source": "sync"}, {"source": "system"}, {"source": "anonymousUser"}, {"source": "unknown"},
        {"source": "formPageSubmission", "sourceMetadata": {"pageId": "pagEmulatorPage01"}},
    ]
    # fromSources: only the named sources' changes.
    assert [p["baseTransactionNumber"] for p in emu.payloads(automations)] == [1, 3]
    assert [p["baseTransactionNumber"] for p in emu.payloads(forms)] == [2, 4]
    assert emu.payloads(people) == []
    # pyairtable reads every variant (sourceMetadata is optional in its model).
    assert [p.action_metadata.source for p in base.webhook(every).payloads()][:2] == ["automation", "formSubmission"]
    # Refused before any change: a form that edits, metadata of the wrong shape, an unknown source.
    for bad in (lambda: emu.client.update("Contacts", BOB, {"Age": 1}, source="formSubmission"),
                lambda: emu.client.update("Contacts", BOB, {"Age": 1}, source="system", source_metadata={"user": {}}),
                lambda: emu.client.update("Contacts", BOB, {"Age": 1}, source="automation", source_metadata={"viewId": "v"}),
                lambda: emu.client.delete("Contacts", [BOB], source="ui")):
        with pytest.raises(ValueError):
            bad()
    assert len(emu.payloads(every)) == 8 and next(r for r in emu.records("Contacts") if r["id"] == BOB)["fields"]["Age"] == 63


def test_ui_field_created_renamed_deleted_are_field_changes(emu, base):
    fields = base.add_webhook(None, FIELDS).id
    fields_prev = base.add_webhook(None, {"options": {"filters": {"dataTypes": ["tableFields"]},
                                                      "includes": {"includePreviousFieldDefinitions": True}}}).id
    data_only = base.add_webhook(None, DATA).id
    fid = emu.client.create_field("Contacts", "Nickname", "singleLineText")
    emu.client.rename_field(T_CONTACTS, "Nickname", "Alias")
    emu.client.delete_field("Contacts", fid)
    created, renamed, deleted = emu.payloads(fields)
    assert payload_tables(created)[T_CONTACTS] == {"createdFieldsById": {fid: {"name": "Nickname", "type": "singleLineText"}}}
    assert payload_tables(renamed)[T_CONTACTS] == {"changedFieldsById": {fid: {"current": {"name": "Alias"}}}}
    assert payload_tables(deleted)[T_CONTACTS] == {"destroyedFieldIds": [fid]}
    assert {p["actionMetadata"]["source"] for p in (created, renamed, deleted)} == {"client"}
    assert payload_tables(emu.payloads(fields_prev)[1])[T_CONTACTS]["changedFieldsById"][fid] == {
        "current": {"name": "Alias"}, "previous": {"name": "Nickname"}}
    assert emu.payloads(data_only) == []
    assert all(f["id"] != fid for f in emu.schema()["tables"][0]["fields"])


ALL_TYPES = {"options": {"filters": {"dataTypes": ["tableData", "tableFields", "tableMetadata"]}}}
DATA_AND_FIELDS = {"options": {"filters": {"dataTypes": ["tableData", "tableFields"]}}}  # the sync's spec
METADATA = {"options": {"filters": {"dataTypes": ["tableMetadata"]}}}
F_FULL, F_EMAIL, F_KEY = "fldFull0000000001", "fldEmail000000001", "fldKey00000000001"


def test_ui_table_rename_is_table_metadata_only(emu, base):
    every = base.add_webhook(None, ALL_TYPES).id
    metadata = base.add_webhook(None, METADATA).id
    data_and_fields = base.add_webhook(None, DATA_AND_FIELDS).id
    other_table = base.add_webhook(None, {"options": {"filters": {"dataTypes": ["tableMetadata"],
                                                                  "recordChangeScope": T_COMPANIES}}}).id
    no_updates = base.add_webhook(None, {"options": {"filters": {"dataTypes": ["tableMetadata"],
                                                                 "changeTypes": ["add", "remove"]}}}).id
    emu.client.rename_table("Contacts", "People")
    emu.client.rename_table(T_CONTACTS, "People")  # the name it has: no change, no payload
    [payload] = emu.payloads(every)
    # webhooks-table-changed: changedMetadata {current, previous}, here the name only.
    assert payload_tables(payload) == {T_CONTACTS: {"changedMetadata": {"current": {"name": "People"},
                                                                        "previous": {"name": "Contacts"}}}}
    assert payload["actionMetadata"]["source"] == "client" and payload["baseTransactionNumber"] == 1
    assert emu.payloads(metadata) == [payload]
    # dataTypes tableData + tableFields (what the sync watches) get nothing for a table rename.
    assert emu.payloads(data_and_fields) == emu.payloads(other_table) == emu.payloads(no_updates) == []
    [parsed] = base.webhook(every).payloads()
    assert parsed.changed_tables_by_id[T_CONTACTS].changed_metadata.previous.name == "Contacts"
    # The rename was a transaction of the base: the next one is number 2.
    emu.client.update("People", BOB, {"Age": 1})
    assert [p["baseTransactionNumber"] for p in emu.payloads(data_and_fields)] == [2]


def test_ui_field_deleted_then_created_again_under_its_name(emu, base):
    fields = base.add_webhook(None, FIELDS).id
    data = base.add_webhook(None, DATA).id
    emu.client.delete_field("Contacts", "Age")
    new_age = emu.client.create_field("Contacts", "Age", "number")
    deleted, created = emu.payloads(fields)
    assert payload_tables(deleted) == {T_CONTACTS: {"destroyedFieldIds": [F_AGE]}}
    assert payload_tables(created) == {T_CONTACTS: {"createdFieldsById": {new_age: {"name": "Age", "type": "number"}}}}
    assert new_age != F_AGE
    # The deleted cells are no record changes (UNCONFIRMED, see client.delete_field) and an
    # empty new field changes no cell: a tableData hook gets nothing.
    assert emu.payloads(data) == []


def test_ui_field_deleted_reports_the_formula_cells_it_breaks_not_its_own(emu, base):
    data = base.add_webhook(None, {"options": {"filters": {"dataTypes": ["tableData"]},
                                               "includes": {"includePreviousCellValues": True}}}).id
    emu.client.delete_field("Contacts", "Email")  # Full is {Name} & ' <' & {Email} & '>'
    [payload] = emu.payloads(data)
    changed = payload_tables(payload)[T_CONTACTS]["changedRecordsById"]
    assert changed[ADA] == {"current": {"cellValuesByFieldId": {F_FULL: None}},
                            "previous": {"cellValuesByFieldId": {F_FULL: "Ada <ada@example.com>"}}}
    assert len(changed) == len(emu.records("Contacts"))
    assert all(set(c["current"]["cellValuesByFieldId"]) == {F_FULL} for c in changed.values())


def test_ui_field_created_with_values_reports_the_field_and_its_cells_in_one_payload(emu, base):
    # webhooks-payload: "If the new field affects multiple records, such as a Formula field,
    # then the second payload will contain both the field change and the records affected."
    hook = base.add_webhook(None, DATA_AND_FIELDS).id
    fid = emu.client.create_field("Contacts", "Greeting", "formula", {"formula": "'Hi ' & {Name}"})
    [payload] = emu.payloads(hook)
    table = payload_tables(payload)[T_CONTACTS]
    assert table["createdFieldsById"] == {fid: {"name": "Greeting", "type": "formula"}}
    assert table["changedRecordsById"][ADA] == {"current": {"cellValuesByFieldId": {fid: "Hi Ada"}}}
    assert len(table["changedRecordsById"]) == len(emu.records("Contacts"))


def test_ui_field_rename_changes_no_cell_even_of_a_formula_naming_it(emu, base):
    emu.client.create_field("Contacts", "Greeting", "formula", {"formula": "'Hi ' & {Name}"})
    hook = base.add_webhook(None, DATA_AND_FIELDS).id
    emu.client.rename_field("Contacts", "Name", "First name")
    emu.client.rename_field("Contacts", "First name", "First name")  # no change, no payload
    [payload] = emu.payloads(hook)
    assert payload_tables(payload) == {T_CONTACTS: {"changedFieldsById": {F_NAME: {"current": {"name": "First name"}}}}}


def test_ui_retype_routes_the_field_change_and_the_converted_cells_by_data_type(emu, base):
    with_previous = base.add_webhook(None, {"options": {"filters": {"dataTypes": ["tableData", "tableFields"]}, "includes": {
        "includePreviousCellValues": True, "includePreviousFieldDefinitions": True}}}).id
    fields = base.add_webhook(None, FIELDS).id
    data = base.add_webhook(None, DATA).id
    watching_other = base.add_webhook(None, {"options": {"filters": {
        "dataTypes": ["tableData", "tableFields"], "watchDataInFieldIds": [F_AGE], "watchSchemasOfFieldIds": [F_AGE]}}}).id
    metadata = base.add_webhook(None, METADATA).id
    emu.client.change_field_type("Contacts", "Status", "singleLineText")  # Ada's is the select "Active"
    [payload] = emu.payloads(with_previous)
    table = payload_tables(payload)[T_CONTACTS]
    # changedFieldsById: the changed property only, previous with includePreviousFieldDefinitions.
    assert table["changedFieldsById"] == {F_STATUS: {"current": {"type": "singleLineText"},
                                                     "previous": {"type": "singleSelect"}}}
    # The converted cell, its previous value in the format of the field as it was (a select).
    assert set(table["changedRecordsById"]) == {ADA}
    ada = table["changedRecordsById"][ADA]
    assert ada["current"]["cellValuesByFieldId"][F_STATUS] == "Active"
    assert ada["previous"]["cellValuesByFieldId"][F_STATUS] == {"id": "selActive0000001", "name": "Active",
                                                                "color": "greenLight2"}
    # tableFields alone: the field change; tableData alone: the cells; neither: nothing.
    assert payload_tables(emu.payloads(fields)[0]) == {T_CONTACTS: {"changedFieldsById": {
        F_STATUS: {"current": {"type": "singleLineText"}}}}}
    assert set(payload_tables(emu.payloads(data)[0])[T_CONTACTS]) == {"changedRecordsById"}
    assert emu.payloads(watching_other) == emu.payloads(metadata) == []
    # Back to a select: the text becomes a select cell again (typecast makes the choice).
    emu.client.change_field_type("Contacts", "Status", "singleSelect")
    cell = payload_tables(emu.payloads(data)[1])[T_CONTACTS]["changedRecordsById"][ADA]["current"]["cellValuesByFieldId"]
    assert cell[F_STATUS]["name"] == "Active" and cell[F_STATUS]["id"].startswith("sel")
    # A retype that shows every cell as it was (text to long text) changes no cell.
    emu.client.change_field_type("Contacts", "Name", "multilineText")
    assert len(emu.payloads(data)) == 2 and len(emu.payloads(fields)) == 3


def test_ui_record_actions_bypass_the_request_log_and_the_rate_limit(emu, base):
    emu.set_rate_limit(1)
    hook_id = base.add_webhook(None, DATA).id
    emu.clear_log()
    rid = emu.client.create("Contacts", {"Name": "Dee", "Status": "Lead"})
    for age in range(5):
        emu.client.update(T_CONTACTS, rid, {"Age": age})
    assert emu.requests == []
    assert len(emu.payloads(hook_id)) == 6
    with pytest.raises(Exception):
        emu.client.update("Contacts", rid, {"Status": "No such choice"})
    assert len(emu.payloads(hook_id)) == 6
    assert next(r for r in emu.records("Contacts") if r["id"] == rid)["fields"]["Age"] == 4


def test_change_field_type_converts_cells_in_one_payload(emu, base):
    hook_id = base.add_webhook(None, {"options": {"filters": {"dataTypes": ["tableData", "tableFields"]}}}).id
    emu.client.change_field_type("Contacts", "Key", "number")
    [payload] = emu.payloads(hook_id)
    table = payload_tables(payload)[T_CONTACTS]
    assert table["changedFieldsById"]["fldKey00000000001"] == {"current": {"type": "number"}}
    assert table["changedRecordsById"][ADA]["current"]["cellValuesByFieldId"]["fldKey00000000001"] is None


def test_payload_pages_hold_50_and_say_might_have_more(emu, base):
    hook = base.webhook(base.add_webhook(None, DATA).id)
    for age in range(60):
        emu.client.update("Contacts", BOB, {"Age": age})
    first = raw(emu, "GET", hook_url(hook.id, "/payloads")).json()
    assert len(first["payloads"]) == 50 and first["cursor"] == 51 and first["mightHaveMore"] is True
    second = raw(emu, "GET", hook_url(hook.id, "/payloads"), params={"cursor": 51}).json()
    assert len(second["payloads"]) == 10 and second["cursor"] == 61 and second["mightHaveMore"] is False
    small = raw(emu, "GET", hook_url(hook.id, "/payloads"), params={"cursor": 59, "limit": 5}).json()
    assert len(small["payloads"]) == 2 and small["cursor"] == 61
    # "A maximum of 50 payloads can be returned in a single request": a cap, not an error.
    capped = raw(emu, "GET", hook_url(hook.id, "/payloads"), params={"limit": 51})
    assert capped.status_code == 200
    assert len(capped.json()["payloads"]) == 50 and capped.json()["cursor"] == 51 and capped.json()["mightHaveMore"]
    for params in ({"limit": 0}, {"cursor": 0}, {"cursor": "x"}, {"offset": 1}):
        assert raw(emu, "GET", hook_url(hook.id, "/payloads"), params=params).status_code == 422, params
    assert [p.cursor for p in hook.payloads()] == list(range(1, 61))
    assert base.webhook(hook.id).cursor_for_next_payload == 61


def test_error_payload_and_disabled_hook(emu, base, contacts):
    hook = base.webhook(base.add_webhook(None, DATA).id)
    contacts.update(ADA, {"Age": 1})
    emu.push_webhook_error(hook.id, "INVALID_FILTERS")
    contacts.update(ADA, {"Age": 2})  # a disabled hook gets nothing more
    payloads = list(hook.payloads())
    assert [p.error for p in payloads] == [None, True] and payloads[1].error_code == "INVALID_FILTERS"
    assert emu.payloads(hook.id)[1]["error"] is True and emu.payloads(hook.id)[1]["code"] == "INVALID_FILTERS"
    assert base.webhook(hook.id).is_hook_enabled is False
    expect_error(lambda: hook.extend_expiration(), 422)
    other = base.webhook(base.add_webhook(None, DATA).id)
    emu.disable_webhook(other.id)
    assert base.webhook(other.id).is_hook_enabled is False


def test_webhook_requests_are_logged_with_their_own_kind(emu, base):
    emu.clear_log()
    base.add_webhook(None, DATA)
    base.webhooks()
    assert emu.count(kind="webhook") == 2
    emu.add_fault(status=503, kind="webhook", times=1)
    expect_error(lambda: base.webhooks(), 503)


# --------------------------------------------------------------------------------------
# Requests shaped like Airtable.js 0.12's
# --------------------------------------------------------------------------------------


def test_airtable_js_trailing_slash_on_table_routes(emu):
    # table.ts: create and batch update/replace go to "/v0/{baseId}/{table}/?" (empty query).
    r = raw(emu, "POST", f"/v0/{BASE_ID}/Contacts/?", json={"records": [{"fields": {"Name": "Js"}}]})
    assert r.status_code == 200, r.text
    rid = r.json()["records"][0]["id"]
    r = raw(emu, "PATCH", f"/v0/{BASE_ID}/Contacts/?", json={"records": [{"id": rid, "fields": {"Age": 3}}]})
    assert r.status_code == 200 and r.json()["records"][0]["fields"]["Age"] == 3
    r = raw(emu, "PUT", f"/v0/{BASE_ID}/Contacts/?", json={"records": [{"id": rid, "fields": {"Name": "Js2"}}]})
    assert r.status_code == 200 and r.json()["records"][0]["fields"] == {
        k: v for k, v in r.json()["records"][0]["fields"].items() if k not in ("Age",)}
    r = raw(emu, "GET", f"/v0/{BASE_ID}/Contacts/?pageSize=2")  # table.ts list(): GET ".../{table}/"
    assert r.status_code == 200 and len(r.json()["records"]) == 2
    for path in (f"/v0/{BASE_ID}//Contacts", f"/v0/{BASE_ID}/Contacts//", f"/v0//{BASE_ID}/Contacts/"):
        assert raw(emu, "GET", path).status_code == 404, path


def test_airtable_js_method_key_in_list_requests(emu):
    # query.ts: select({method: "post"}) POSTs ".../listRecords" with the params, method included.
    r = raw(emu, "POST", f"/v0/{BASE_ID}/Contacts/listRecords?",
            json={"method": "post", "pageSize": 2, "fields": ["Name"]})
    assert r.status_code == 200, r.text
    assert len(r.json()["records"]) == 2 and all(set(x["fields"]) <= {"Name"} for x in r.json()["records"])
    # select({method: "get"}) leaves "method=get" in the query string of the GET.
    r = raw(emu, "GET", f"/v0/{BASE_ID}/Contacts?method=get&pageSize=3")
    assert r.status_code == 200 and len(r.json()["records"]) == 3
    assert raw(emu, "POST", f"/v0/{BASE_ID}/Contacts/listRecords", json={"method": 1}).status_code == 422
    assert raw(emu, "GET", f"/v0/{BASE_ID}/Contacts?method=get&method=post").status_code == 422
    assert raw(emu, "GET", f"/v0/{BASE_ID}/Contacts?mode=get").status_code == 422  # other unknowns still refused


# --------------------------------------------------------------------------------------
# Cost: a write diffs only the records it can change (and still gives the same payloads)
# --------------------------------------------------------------------------------------


def test_a_record_write_snapshots_only_the_records_it_can_change(monkeypatch):
    base_json = make_base()
    big = next(t for t in base_json["tables"] if t["name"] == "Big")
    big["records"] = [{"fields": {"N": i}} for i in range(5000)]
    visited: list[str] = []
    state_cell = Emulator._state_cell

    def counting(self, t, rec, f):
        visited.append(rec.id)
        return state_cell(self, t, rec, f)

    monkeypatch.setattr(Emulator, "_state_cell", counting)
    with Emulator(base_json, rps=None) as emu:
        api = Api(emu.token, endpoint_url=emu.url, retry_strategy=None)
        hook_id = api.base(BASE_ID).add_webhook(None, DATA).id
        contacts = api.table(BASE_ID, "Contacts")
        n_fields = len(emu.schema()["tables"][0]["fields"])
        contacts.update(BOB, {"Age": 50})
        assert set(visited) == {BOB} and len(visited) == 2 * n_fields  # before and after
        visited.clear()
        contacts.update(ADA, {"Company": []})  # the company's inverse link changes with it
        assert set(visited) == {ADA, ACME}
        visited.clear()
        rid = emu.records("Big")[1234]["id"]
        api.table(BASE_ID, "Big").update(rid, {"N": -1})
        assert visited == [rid, rid]
        visited.clear()
        api.table(BASE_ID, "Big").create({"N": 5000})
        api.table(BASE_ID, "Big").delete(rid)
        assert len(visited) == 2 and rid in visited
        assert len(emu.payloads(hook_id)) == 5


def _linked_base() -> dict:
    """make_base plus cross-table reads: lookups of lookups, formulas showing links (one of
    them a primary field), a lookup of a formula over such a formula, one-way links (one
    that nothing reads through)."""
    from test_emulator import _field

    base_json = make_base()
    contacts = next(t for t in base_json["tables"] if t["id"] == T_CONTACTS)
    contacts["fields"] += [
        _field("fldPinned00000001", "Pinned", "multipleRecordLinks", linkedTableId="tblNotesTest00001"),
        _field("fldPinText0000001", "PinnedText", "formula", formula="LOWER({Pinned})"),
    ]
    companies = next(t for t in base_json["tables"] if t["id"] == T_COMPANIES)
    companies["fields"] += [
        _field("fldPNames00000001", "PeopleNames", "multipleLookupValues",
               recordLinkFieldId="fldPeople00000001", fieldIdInLinkedTable="fldName0000000001"),
        _field("fldPComp000000001", "PeopleCompanies", "multipleLookupValues",
               recordLinkFieldId="fldPeople00000001", fieldIdInLinkedTable="fldLookup00000001"),
        _field("fldPText000000001", "PeopleText", "formula", formula="{People}"),
        _field("fldCNotes00000001", "Notes", "multipleRecordLinks", linkedTableId="tblNotesTest00001"),
        _field("fldCShout00000001", "NoteShouts", "multipleLookupValues",
               recordLinkFieldId="fldCNotes00000001", fieldIdInLinkedTable="fldNShout00000001"),
        _field("fldCTagged0000001", "Tagged", "multipleRecordLinks", linkedTableId=T_CONTACTS),
    ]
    companies["records"] += [{"id": "recInitech0000001", "fields": {"Name": "Initech"}},
                             {"id": "recGlobex00000001", "fields": {"Name": "Globex"}}]
    base_json["tables"].append({
        "id": "tblNotesTest00001", "name": "Notes", "primaryFieldId": "fldNLabel00000001",
        "fields": [
            _field("fldNLabel00000001", "Label", "formula", formula="{Title} & ': ' & {Who}"),
            _field("fldNTitle00000001", "Title", "singleLineText"),
            _field("fldNWho0000000001", "Who", "multipleRecordLinks", linkedTableId=T_CONTACTS),
            _field("fldNFull000000001", "WhoFull", "multipleLookupValues",
                   recordLinkFieldId="fldNWho0000000001", fieldIdInLinkedTable="fldFull0000000001"),
            _field("fldNComp000000001", "WhoCompany", "multipleLookupValues",
                   recordLinkFieldId="fldNWho0000000001", fieldIdInLinkedTable="fldLookup00000001"),
            _field("fldNCount00000001", "WhoCount", "count", recordLinkFieldId="fldNWho0000000001"),
            _field("fldNShout00000001", "Shout", "formula", formula="UPPER({Label})"),
        ],
        "records": [{"id": f"recNote{i:010d}", "fields": {"Title": f"n{i}", "Who": [ADA, BOB][: i % 3]}}
                    for i in range(6)],
    })
    return base_json


def _random_session(emu, seed: int, clock: list[int]) -> list[list[dict]]:
    """A seeded mix of API writes and UI actions, one second apart on ``clock``; returns
    every hook's payloads."""
    import random

    rng = random.Random(seed)
    api = Api(emu.token, endpoint_url=emu.url, retry_strategy=None)
    base_api = api.base(BASE_ID)
    hooks = [base_api.add_webhook(None, spec).id for spec in (
        DATA,
        {"options": {"filters": {"dataTypes": ["tableData", "tableFields"]}, "includes": {
            "includePreviousCellValues": True, "includeCellValuesInFieldIds": "all"}}},
        {"options": {"filters": {"dataTypes": ["tableData"], "recordChangeScope": T_COMPANIES},
                     "includes": {"includePreviousCellValues": True}}},
    )]
    contacts, companies, notes = (api.table(BASE_ID, n) for n in ("Contacts", "Companies", "Notes"))

    def ids(table: str) -> list[str]:
        return [r["id"] for r in emu.records(table)]

    def some(table: str, k: int) -> list[str]:
        pool = ids(table)
        return rng.sample(pool, min(k, len(pool)))

    for step in range(160):
        clock[0] = step + 1
        op = rng.randrange(13)
        if op == 0:
            contacts.batch_create([{"Name": f"c{step}-{i}", "Age": rng.randrange(90), "Company": some("Companies", 2)}
                                   for i in range(rng.randint(1, 3))])
        elif op in (1, 2):
            updates = []
            for rid in some("Contacts", rng.randint(1, 3)):
                fields = rng.choice([{"Name": f"r{step}"}, {"Age": rng.randrange(3)}, {"Company": some("Companies", 2)},
                                     {"Company": []}, {"Email": f"e{step}@x.org", "Status": "Lead"},
                                     {"Pinned": some("Notes", 2)}])
                updates.append({"id": rid, "fields": fields})
            contacts.batch_update(updates)
        elif op == 3:
            [rid] = some("Contacts", 1)
            contacts.update(rid, {"Name": f"p{step}", "Company": some("Companies", 1)}, replace=True)
        elif op == 4:
            contacts.batch_upsert([{"fields": {"Key": rng.choice(["k-ada", "k-bob", f"k{step}"]), "Age": step,
                                               "Company": [rng.choice(["Acme", "Globex", f"New {step}"])]}}],
                                  key_fields=["Key"], typecast=True)
        elif op == 5 and len(ids("Contacts")) > 3:
            contacts.batch_delete(some("Contacts", rng.randint(1, 2)))
        elif op == 6:
            [rid] = some("Companies", 1)
            companies.update(rid, rng.choice([{"Name": rng.choice(["Acme", f"co{step}"]), "Notes": some("Notes", 2)},
                                              {"Tagged": some("Contacts", 3)}]))
        elif op == 7 and len(ids("Companies")) > 2:
            companies.delete(some("Companies", 1)[0])
        elif op == 8:
            notes.create({"Title": f"t{step}", "Who": some("Contacts", 2)})
        elif op == 9:
            [rid] = some("Notes", 1)
            notes.update(rid, rng.choice([{"Title": f"u{step}"}, {"Who": some("Contacts", 3)}]))
        elif op == 10 and len(ids("Notes")) > 2:
            notes.delete(some("Notes", 1)[0])
        elif op == 11:
            action = rng.randrange(4)
            if action == 0:
                emu.client.create("Contacts", {"Name": f"ui{step}", "Company": some("Companies", 1)})
            elif action == 1:
                emu.client.update("Contacts", some("Contacts", 1)[0], {"Name": f"ui{step}"})
            elif action == 2 and len(ids("Contacts")) > 3:
                emu.client.delete("Contacts", some("Contacts", 1))
            else:
                emu.client.update("Companies", some("Companies", 1)[0], {"Name": f"uic{step}"})
        elif op == 12:
            action = rng.randrange(3)
            if action == 0:
                emu.client.create_field("Notes", f"F{step}", "formula", {"formula": "{Who} & '!'"})
            elif action == 1:
                emu.client.rename_field("Contacts", "Notes", f"Notes{step}")
                emu.client.rename_field("Contacts", f"Notes{step}", "Notes")
            else:
                emu.client.change_field_type("Notes", "Title", rng.choice(["singleLineText", "multilineText"]))
        else:
            [rec] = rng.sample(emu.records("Contacts"), 1)
            contacts.update(rec["id"], {"Name": rec["fields"].get("Name")})  # a no-op: no payload
    return [emu.payloads(h) for h in hooks]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_touched_records_give_the_payloads_of_a_whole_base_comparison(monkeypatch, seed):
    import itertools

    import airtable_emulator.client
    import airtable_emulator.records
    import airtable_emulator.webhooks

    clock = [0]  # the same ids and times in both runs
    start = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
    monkeypatch.setattr(Emulator, "_now", lambda self: start + dt.timedelta(seconds=clock[0]))
    results = []
    for whole_base in (True, False):
        counter = itertools.count()
        fake_id = lambda prefix: f"{prefix}{next(counter):014d}"  # noqa: E731
        for module in (airtable_emulator.records, airtable_emulator.client, airtable_emulator.webhooks):
            monkeypatch.setattr(module, "new_id", fake_id)
        clock[0] = 0
        with Emulator(_linked_base(), rps=None) as emu:
            emu._txn_whole_base = whole_base
            results.append(_random_session(emu, seed, clock))
    reference, touched = results
    assert [len(p) for p in touched] == [len(p) for p in reference]
    for hook, (got, want) in enumerate(zip(touched, reference)):
        for n, (a, b) in enumerate(zip(got, want)):
            if json.dumps(a) != json.dumps(b):  # byte for byte: key order included
                pytest.fail(f"hook {hook}, payload {n}:\n{json.dumps(a)}\n!=\n{json.dumps(b)}")
    # The session did exercise the reads through links: a contact's change reported in the
    # notes that look it up, and a company's lookup of a lookup changing with it.
    tables = [p["changedTablesById"] for p in reference[0] if "changedTablesById" in p]
    assert len(tables) > 100
    assert any("fldNComp000000001" in c["current"]["cellValuesByFieldId"]
               for t in tables for c in t.get("tblNotesTest00001", {}).get("changedRecordsById", {}).values())
    assert any("fldPComp000000001" in c["current"]["cellValuesByFieldId"]
               for t in tables for c in t.get(T_COMPANIES, {}).get("changedRecordsById", {}).values())
    assert any("fldPinText0000001" in c["current"]["cellValuesByFieldId"] and "fldPinned00000001" not in c["current"]["cellValuesByFieldId"]
               for t in tables for c in t.get(T_CONTACTS, {}).get("changedRecordsById", {}).values())
