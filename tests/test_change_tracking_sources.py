"""Change tracking end to end against two things Airtable's change feed does that plain UI
edits do not show: one transaction split across several payloads (webhooks-payload: "this
action may be split across multiple payloads ... the same timestamp, baseTransactionNumber,
and actionMetadata"), and changes made by other sources than a person or the API (an
automation, a form; webhooks-action-metadata: no sourceMetadata.user for them)."""
from __future__ import annotations

import json
from collections import Counter

from conftest import FIXTURES
from test_change_tracking import (EVENTS, MESSAGES, USERS, by_mongo_id, clean_start, run_on_the_feed_alone,
                                  state_of, synced, tracking)
from test_faults import writes

SPLIT = 3


def split_transactions(emulator, harness, since: int = 1) -> Counter:
    """Per baseTransactionNumber, how many payloads of the tool's webhook carry it (from cursor
    ``since`` on): more than one is a split transaction."""
    hook = state_of(harness)["webhook_id"]
    numbers = Counter(p["baseTransactionNumber"] for p in emulator.payloads(hook)[since - 1:])
    return Counter({n: c for n, c in numbers.items() if c > 1})


def test_split_payloads_of_the_tools_writes_and_of_peoples_edits_and_deletions(harness, emulator,
                                                                             tmp_path_factory):
    emulator.split_payloads_over = SPLIT
    clean_start(harness)  # writes batches of 10 records: each comes back as payloads of 3, 3, 3, 1
    first_writes = len(writes(emulator))
    assert split_transactions(emulator, harness)  # the first run's own batches were split
    report = run_on_the_feed_alone(harness, emulator, tmp_path_factory)  # reads them back, split
    assert report["change_tracking"]["payloads"] > first_writes
    assert writes(emulator) == []
    assert all(t["reverted_edits"] == 0 for t in report["tables"].values())

    # People: one deletion of two users (which also clears their messages' links, in the same
    # transaction), one deletion of four messages, and an edit.
    cursor = state_of(harness)["cursor"]
    users, messages = synced(harness, emulator, "users"), synced(harness, emulator, "messages")
    legacy_ids = {r["id"] for t in json.loads((FIXTURES / "base.json").read_text())["tables"] for r in t["records"]}
    linked_users = Counter(rid for m in messages.values() for rid in m["fields"].get("Users", []))
    gone_users = [k for k in sorted(users) if users[k]["id"] not in legacy_ids and users[k]["id"] in linked_users][:2]
    assert len(gone_users) == 2
    gone_user_ids = {users[k]["id"] for k in gone_users}
    gone_messages = [m["id"] for m in messages.values() if m["id"] not in legacy_ids
                     and not gone_user_ids & set(m["fields"].get("Users", []))][:4]
    assert len(gone_messages) == 4
    unlinked = {m["id"] for m in messages.values() if gone_user_ids & set(m["fields"].get("Users", []))}
    assert 2 + len(unlinked) > SPLIT  # the users' deletion names more records than a piece holds
    edited = next(k for k in sorted(users) if k not in gone_users)
    emulator.client.delete(USERS, [users[k]["id"] for k in gone_users])
    emulator.client.delete(MESSAGES, gone_messages)
    emulator.client.update(USERS, users[edited]["id"], {"occupation": "Edited"})
    assert len(split_transactions(emulator, harness, since=cursor)) == 2  # both deletions

    report = run_on_the_feed_alone(harness, emulator, tmp_path_factory)
    t = report["tables"]
    assert (t["users"]["created"], t["messages"]["created"]) == (2, 4)  # deleted rows made again
    assert t["users"]["reverted_edits"] == 1
    assert t["messages"]["reverted_edits"] == len(unlinked)  # the links Airtable cleared, set back
    emulator.clear_log()
    assert harness.run("--full") == 0
    assert writes(emulator) == [] and tracking(harness)["drift"] == 0


def test_edits_by_an_automation_and_a_form_submitted_row_are_handled_like_a_persons(harness, emulator,
                                                                                  tmp_path_factory):
    clean_start(harness)
    assert harness.run() == 0  # settle the first run's own payloads
    users, events = synced(harness, emulator, "users"), synced(harness, emulator, "events")
    edited_user, edited_event = sorted(users)[0], sorted(events)[0]
    emulator.client.update(USERS, users[edited_user]["id"], {"occupation": "Automated"}, source="automation")
    emulator.client.update(EVENTS, events[edited_event]["id"], {"location": "Automated"}, source="automation")
    # A row a form created, whose email a new Mongo user has: claimed, not doubled.
    form_row = emulator.client.create(USERS, {"email": "form.entry@example.com", "firstName": "Formy"},
                                      source="formSubmission")
    export = harness.read_export("users.json")
    export.append({"_id": {"$oid": "6a00000000000000000000cc"}, "email": "Form.Entry@example.com",
                   "firstName": "Formy"})
    harness.write_export("users.json", export)
    hook = state_of(harness)["webhook_id"]
    sources = [p["actionMetadata"] for p in emulator.payloads(hook)[state_of(harness)["cursor"] - 1:]]
    assert [s["source"] for s in sources] == ["automation", "automation", "formSubmission"]
    assert not any("user" in (s.get("sourceMetadata") or {}) for s in sources)

    report = run_on_the_feed_alone(harness, emulator, tmp_path_factory)
    assert by_mongo_id(emulator, USERS)["6a00000000000000000000cc"]["id"] == form_row  # claimed
    t = report["tables"]
    assert (t["users"]["reverted_edits"], t["events"]["reverted_edits"]) == (1, 1)
    assert t["users"]["created"] == 0  # the form's row was claimed, not a new one made
    emulator.clear_log()
    assert harness.run("--full") == 0
    assert writes(emulator) == [] and tracking(harness)["drift"] == 0
