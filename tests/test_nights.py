"""What a night's writes were for (issue 21), end to end over HTTP and rule by rule.

The exporter computes `days_inactive` from `last_active` and today, so it moves in every record
every night. The sync counts what each night's updates wrote (`writes_by_field`), names a field
that two runs in a row rewrote in nearly every record (`volatile_fields`), and gives a day
counter the formula that lets Airtable compute it for free; once a person has made it a formula,
it is never written and a quiet night costs two requests again."""
from __future__ import annotations

import json
import random
from datetime import date, datetime, time, timedelta, timezone

import airtable_sync as sync
from conftest import field_ids
from test_faults import writes

UTC = timezone.utc
USERS = "tblQ0OHBit2AqaACy"
TODAY = datetime.now(UTC).date()
COUNTER = "users.days_inactive counts days since last_active: 15 requests a night; make it a formula in Airtable: " \
          "DATETIME_DIFF(TODAY(), {last_active}, 'days')"


def last_active(i: int) -> datetime:
    return datetime.combine(TODAY - timedelta(days=10 + i % 60), time(i % 24, 7), tzinfo=UTC)


def exported_users(n: int = 150, days_ago: int = 0, *, last_active_exported: bool = True,
                   score_seed: int | None = None) -> list[dict]:
    """n users as the seed's exporter writes them `days_ago` days before today: `days_inactive` is
    the whole days from `last_active` to the export's date. `score_seed`: a profile_completeness
    that changes every night without counting anything."""
    rng = random.Random(score_seed)
    docs = []
    for i in range(n):
        seen = last_active(i)
        doc = {"_id": {"$oid": f"{0x6a0000000000000000000000 + i:024x}"}, "email": f"user{i}@example.com",
               "firstName": f"User {i}", "days_inactive": (TODAY - timedelta(days=days_ago) - seen.date()).days,
               "createdAt": {"$date": f"{TODAY - timedelta(days=400 + i)}T09:00:00Z"},
               "profile_completeness": 50 if score_seed is None else rng.randrange(0, 101)}
        if last_active_exported:
            doc["last_active"] = {"$date": seen.isoformat().replace("+00:00", "Z")}
        docs.append(doc)
    return docs


def night(harness, docs: list[dict], *extra: str) -> dict:
    """One run of the users table with this export; its report's users table."""
    harness.write_export("users.json", docs)
    assert harness.run("--tables", "users", *extra) in (0, 1)
    return harness.report()["tables"]["users"]


def a_day_passes(harness) -> None:
    """The state as a run of yesterday left it: the next run is a night later."""
    path = harness.cache_dir / "airtable_state.json"
    state = json.loads(path.read_text())
    for key in ("last_run", "last_full_read"):
        state[key] = (datetime.fromisoformat(state[key]) - timedelta(days=1)).isoformat()
    path.write_text(json.dumps(state))


def log_lines(harness) -> list[str]:
    return (harness.reports_dir / "airtable_sync.log").read_text().splitlines()


def last_run_log(harness) -> list[str]:
    lines = log_lines(harness)
    start = max(i for i, line in enumerate(lines) if "airtable_sync: base" in line)
    return lines[start:]


def attention(harness) -> str:
    return next((line for line in reversed(last_run_log(harness)) if "attention:" in line), "")


def two_counter_nights(harness, **export) -> tuple[dict, dict]:
    """The first sync, then two nights, each a day later, in which every user's counter rose by one."""
    night(harness, exported_users(days_ago=2, **export))
    a_day_passes(harness)
    first = night(harness, exported_users(days_ago=1, **export))
    a_day_passes(harness)
    return first, night(harness, exported_users(days_ago=0, **export))


# -- end to end --------------------------------------------------------------------------------

def test_two_counter_nights_name_the_counter_on_the_second_with_its_formula(harness, emulator):
    first, second = two_counter_nights(harness)
    assert first["updated"] == 150 and first["writes_by_field"] == {"days_inactive": {"cells": 150, "alone": 150}}
    assert first["volatile_fields"] == []
    assert second["writes_by_field"] == {"days_inactive": {"cells": 150, "alone": 150}}
    assert second["volatile_fields"] == [{"field": "days_inactive", "share": 1.0, "requests": 15,
                                          "counts_days": True, "counts_days_since": "last_active"}]
    assert attention(harness).endswith(COUNTER)
    warnings = [line for line in last_run_log(harness) if "WARNING" in line and "counts days since" in line]
    assert len(warnings) == 2  # the one WARNING, and the attention line that closes the run
    markdown = harness.reports()[-1].with_suffix(".md").read_text()
    assert "## What the writes were for" in markdown and "| users | days_inactive | 150 | 150 |" in markdown
    # What the next run needs, and no more: a share per table and field.
    assert json.loads((harness.cache_dir / "airtable_state.json").read_text())["writes"] == {
        "users": {"days_inactive": 1.0}}


def test_the_first_counter_night_does_not_name_it(harness, emulator):
    night(harness, exported_users(days_ago=1))
    a_day_passes(harness)
    report = night(harness, exported_users(days_ago=0))
    assert report["writes_by_field"]["days_inactive"]["cells"] == 150
    assert report["volatile_fields"] == []
    assert "days_inactive" not in attention(harness)


def test_the_hourly_pattern_runs_that_do_not_write_it_keep_it_volatile(harness, emulator):
    night(harness, exported_users(days_ago=2))
    a_day_passes(harness)
    docs = exported_users(days_ago=1)
    night(harness, docs)
    for hour in range(2):  # the hourly runs of one day: the counter has not moved
        docs[hour]["firstName"] = f"Renamed at {hour}"
        report = night(harness, docs)
        assert report["writes_by_field"] == {"firstName": {"cells": 1, "alone": 1}}
        assert report["volatile_fields"] == []
    report = night(harness, exported_users(days_ago=0))  # the next day's first run
    assert [v["field"] for v in report["volatile_fields"]] == ["days_inactive"]
    assert report["volatile_fields"][0]["counts_days"] and report["volatile_fields"][0]["counts_days_since"] == "last_active"


def test_a_one_off_bulk_fix_is_not_volatile_and_a_small_night_in_between_resets_it(harness, emulator):
    docs = exported_users()
    night(harness, docs)
    for doc in docs:
        doc["role"] = "host"
    assert night(harness, docs)["volatile_fields"] == []  # every record, once
    for doc in docs[:5]:
        doc["role"] = "admin"
    assert night(harness, docs)["writes_by_field"] == {"role": {"cells": 5, "alone": 5}}
    for doc in docs:
        doc["role"] = "user"
    report = night(harness, docs)  # every record again, but the last run that wrote it wrote 3%
    assert report["writes_by_field"]["role"]["cells"] == 150 and report["volatile_fields"] == []
    assert "role" not in attention(harness)


def test_fewer_than_a_hundred_records_are_never_volatile(harness, emulator):
    for days_ago in (2, 1, 0):
        report = night(harness, exported_users(99, days_ago))
        a_day_passes(harness)
    assert report["writes_by_field"] == {"days_inactive": {"cells": 99, "alone": 99}}
    assert report["volatile_fields"] == [] and "days_inactive" not in attention(harness)


def test_a_counter_with_no_date_to_count_from_is_named_without_a_formula(harness, emulator):
    _, second = two_counter_nights(harness, last_active_exported=False)
    assert second["volatile_fields"] == [{"field": "days_inactive", "share": 1.0, "requests": 15,
                                          "counts_days": True, "counts_days_since": None}]
    assert "users.days_inactive counts days: 15 requests a night" in attention(harness)
    assert "DATETIME_DIFF" not in attention(harness)


def test_a_score_that_changes_every_night_is_named_with_no_formula(harness, emulator):
    night(harness, exported_users(score_seed=1))
    a_day_passes(harness)
    night(harness, exported_users(score_seed=2))
    a_day_passes(harness)
    report = night(harness, exported_users(score_seed=3))
    scores = [v for v in report["volatile_fields"] if v["field"] == "profile_completeness"]
    written = report["writes_by_field"]["profile_completeness"]
    assert written["cells"] >= 135  # a few records drew the same score twice
    assert scores == [{"field": "profile_completeness", "share": round(written["cells"] / 150, 4),
                       "requests": -(-written["alone"] // 10), "counts_days": False, "counts_days_since": None}]
    assert "users.profile_completeness is rewritten in" in attention(harness)
    assert "formula" not in attention(harness)


def test_once_it_is_a_formula_it_is_never_written_and_a_quiet_night_costs_two_requests(harness, emulator, capsys):
    two_counter_nights(harness)
    emulator.client.change_field_to_formula(USERS, "days_inactive", "DATETIME_DIFF(TODAY(), {last_active}, 'days')")
    a_day_passes(harness)
    emulator.clear_log()
    report = night(harness, exported_users(days_ago=-1))  # the exporter still moves it
    assert "days_inactive" in report["read_only"] and report["volatile_fields"] == []
    assert report["writes_by_field"] == {} and writes(emulator) == []
    assert "days_inactive" not in attention(harness)
    assert not [line for line in last_run_log(harness) if "WARNING" in line and "days_inactive" in line]
    days = field_ids(emulator, USERS)["days_inactive"]
    record = next(r for r in emulator.records(USERS) if r["fields"].get("email") == "user0@example.com")
    assert record["fields"]["days_inactive"] in range((TODAY - last_active(0).date()).days - 1,
                                                      (TODAY - last_active(0).date()).days + 1)
    a_day_passes(harness)
    emulator.clear_log()
    report = night(harness, exported_users(days_ago=-2))
    assert harness.report()["requests"]["total"] == 2 and writes(emulator) == []
    assert report["updated"] == 0 and "days_inactive" in report["read_only"]
    assert not any(days in json.dumps(r.body or {}) for r in emulator.requests)
    assert harness.run("--check", "--tables", "users") == 0
    assert "computed (formula): never written" in capsys.readouterr().out


def test_a_dry_run_reports_the_counter_and_saves_nothing(harness, emulator):
    night(harness, exported_users(days_ago=2))
    a_day_passes(harness)
    night(harness, exported_users(days_ago=1))
    a_day_passes(harness)
    state = (harness.cache_dir / "airtable_state.json").read_bytes()
    emulator.clear_log()
    report = night(harness, exported_users(days_ago=0), "--dry-run")
    assert report["writes_by_field"] == {"days_inactive": {"cells": 150, "alone": 150}}
    assert [v["field"] for v in report["volatile_fields"]] == ["days_inactive"]
    assert attention(harness).endswith(COUNTER)
    assert writes(emulator) == [] and (harness.cache_dir / "airtable_state.json").read_bytes() == state


# -- the rules, directly ------------------------------------------------------------------------

def columns(*names: str, renamed: dict | None = None) -> sync.TableColumns:
    renamed = renamed or {}
    return sync.TableColumns({n: sync.Column(n, f"fld{n}", renamed.get(n, n), "number") for n in names})


def tally(elapsed: int | None = 1) -> sync.DayTally:
    return sync.DayTally(elapsed, {"fldcount": "number", "fldscore": "percent", "fldseen": "dateTime",
                                   "fldborn": "date"})


def test_a_day_counter_is_told_from_counts_alone():
    days = tally()
    for i in range(100):
        seen = f"2025-03-{1 + i % 8:02d}T23:00:00.000Z"
        count = (date(2025, 3, 10) - date(2025, 3, 1 + i % 8)).days
        days.add({"fldcount": count, "fldscore": 0.5 + i}, {"fldcount": count - 1, "fldscore": 0.1, "fldseen": seen},
                 {"fldborn": "1990-01-01"})
    assert days.counts_days("fldcount") and days.counts_from("fldcount") == "fldseen"
    assert not days.counts_days("fldscore") and days.counts_from("fldscore") is None
    assert vars(days)["changed"] == {"fldcount": 100, "fldscore": 100}  # counters a field, nothing per record
    assert all(len(ends) <= sync.DAYS_COUNTED_TO_KEPT for ends in days.counted_to.values())  # however scattered


def test_a_counter_from_an_export_of_another_day_counts_from_its_date_and_one_in_ten_off_is_too_many():
    stale, scattered = tally(), tally()
    for i in range(100):
        seen = f"2025-01-{1 + i % 28:02d}"
        count = (date(2025, 2, 1) - date(2025, 1, 1 + i % 28)).days  # exported on 1 February, or the next day
        stale.add({"fldcount": count + i % 2}, {"fldseen": seen}, {})
        scattered.add({"fldcount": count + (5 if i % 9 == 0 else 0)}, {"fldseen": seen}, {})
    assert stale.counts_from("fldcount") == "fldseen"
    assert scattered.counts_from("fldcount") is None  # 88 of 100 within a day


def test_a_day_counter_needs_nine_in_ten_and_a_previous_run():
    days = tally()
    for i in range(10):
        days.add({"fldcount": 5 if i < 8 else 9}, {"fldcount": 4}, {})
    assert not days.counts_days("fldcount")  # 8 of 10
    first = tally(elapsed=None)
    first.add({"fldcount": 5}, {"fldcount": 4}, {})
    assert not first.counts_days("fldcount")
    cleared = tally()
    cleared.add({"fldcount": None}, {"fldcount": 4}, {})
    assert cleared.changed == {}


def test_volatile_takes_this_run_and_the_last_that_wrote_it():
    cols = columns("count", "score", "seen", renamed={"seen": "Last seen"})
    days = tally()
    for _ in range(100):
        days.add({"fldcount": 10}, {"fldcount": 9, "fldseen": "2025-02-28"}, {})
    days.dates = ("fldseen",)
    written = {"count": {"cells": 100, "alone": 95}, "score": {"cells": 100, "alone": 0}}
    found = sync.volatile_fields(written, 110, {"count": 0.95, "score": 0.5}, days, cols)
    assert found == [sync.VolatileField("count", 0.9091, 10, True, "Last seen")]  # its Airtable name
    assert sync.volatile_fields(written, 112, {"count": 0.95}, days, cols) == []  # 89% this run
    assert sync.volatile_fields({"count": {"cells": 99, "alone": 99}}, 99, {"count": 1.0}, days, cols) == []
    assert sync.volatile_fields(written, 100, {}, days, cols) == []  # no earlier run wrote it


def test_the_warning_gives_the_cost_and_the_formula_as_the_contract_words_it():
    counter = sync.VolatileField("days_inactive", 1.0, 1000, True, "last_active")
    assert sync.volatile_text("users", counter) == (
        "users.days_inactive counts days since last_active: 1,000 requests a night; make it a formula in "
        "Airtable: DATETIME_DIFF(TODAY(), {last_active}, 'days')")
    assert sync.volatile_text("users", sync.VolatileField("score", 0.97, 1, False, None)) == (
        "users.score is rewritten in 97% of the records each night: 1 request a night")


def test_writes_by_field_counts_updates_done_and_alone_largest_first():
    record = sync.ExportRecord(0, "m", {})

    def write(*keys: str, action: str = "update") -> sync.PlannedWrite:
        return sync.PlannedWrite(record, action, fields={f"fld{k}": 1 for k in keys})

    a, ab, b, ac, create = write("a"), write("a", "b"), write("b"), write("a", "c"), write("a", action="create")
    plan = sync.TablePlan(sync.TABLE_SPECS["users"], columns("a", "b", "c"), {}, None, [a, ab, b, ac, create],
                          [], [], [], [])
    planned = sync.writes_by_field(plan, sync.Applied())  # a dry run: every update as planned
    assert planned == {"a": {"cells": 3, "alone": 1}, "b": {"cells": 2, "alone": 1}, "c": {"cells": 1, "alone": 0}}
    assert list(planned) == ["a", "b", "c"]  # largest first
    applied = sync.Applied(dropped={"users": {"fldc": "read_only"}})  # Airtable refused c midway
    applied.results.update({w: sync.Written(sync.Outcome.DONE) for w in (a, ab, ac, create)})
    applied.results[b] = sync.Written(sync.Outcome.FAILED)
    assert sync.writes_by_field(plan, applied) == {"a": {"cells": 3, "alone": 2}, "b": {"cells": 1, "alone": 0}}
