"""Memory that stays flat as the base grows (issue 15): tests that count, never time.

- A run's peak memory, measured as the peak RSS of the real tool in its own process (os.wait4's
  ru_maxrss) against the emulator, at two sizes of the benchmark's generated data: the growth a
  record stays under a set amount, on a night by the change feed and on a full read.
- The plan for an unchanged export holds no per-record write object: unchanged records are counted.
"""
from __future__ import annotations

import json
import os
import random
import stat
import sys
import threading
from pathlib import Path

import pytest

import airtable_sync as sync
import benchmark
from airtable_emulator import Emulator
from conftest import TOKEN, make_env

ROOT = Path(__file__).resolve().parent.parent

# Per record, what a run may hold at most as the base grows. The design holds about 0.5 KB (where
# each record's line is, and the matching indexes); the design before it held 7-13 KB (every
# document and every cached record as dicts).
MAX_GROWTH_KB_A_RECORD = 2.0
SIZES = (500, 2_500)  # users; events a twentieth, messages twice as many (the benchmark's shape)


def generated(n_users: int) -> dict[str, list[dict]]:
    rng = random.Random(benchmark.SEED)
    users = benchmark.make_users(rng, n_users)
    events = benchmark.make_events(rng, max(1, n_users // 20))
    return {"users": users, "events": events, "messages": benchmark.make_messages(rng, 2 * n_users, users, events)}


def peak_rss_kb(tmp: Path, emulator, tracking: str) -> int:
    """One run of the real tool in its own process: its peak RSS in KB. Spawned through the
    benchmark's launcher: spawned from this process (which holds the emulator), its peak would
    start at this process's RSS (Linux keeps the peak across fork and exec)."""
    env = {**make_env(emulator), "AIRTABLE_CHANGE_TRACKING": tracking, "PATH": os.environ.get("PATH", "")}
    cmd = [sys.executable, str(ROOT / "airtable_sync.py"), "--mongo-dir", str(tmp / "mongo"),
           "--cache-dir", str(tmp / "data"), "--reports-dir", str(tmp / "reports")]
    child = benchmark.run_child(cmd, env, tmp, tmp / "sync.log")
    assert child.code == 0, (tmp / "sync.log").read_text()[-2000:]
    return round(child.rss_mb * 1024)


def nights(tmp: Path, n_users: int, tracking: str) -> tuple[int, list[int]]:
    """A first sync into an empty base, then two nights with nothing changed: (records, peak RSS of those two)."""
    data = generated(n_users)
    benchmark.write_exports(data, tmp / "mongo")
    benchmark.empty_base(tmp / "base.json")
    with Emulator(tmp / "base.json", token=TOKEN, rps=None) as emulator:
        peak_rss_kb(tmp, emulator, tracking)
        quiet = [peak_rss_kb(tmp, emulator, tracking) for _ in range(2)]
        report = json.loads(sorted((tmp / "reports").glob("sync_report_*.json"))[-1].read_text())
    assert all(t["created"] == t["updated"] == 0 for t in report["tables"].values())
    assert report["change_tracking"]["mode"] == ("webhook" if tracking == "webhook" else "full")
    return sum(len(v) for v in data.values()), quiet


@pytest.mark.parametrize("tracking", ["webhook", "off"])
def test_peak_memory_grows_less_than_a_set_amount_a_record(tmp_path, tracking):
    (small_records, small), (big_records, big) = (nights(tmp_path / str(n), n, tracking) for n in SIZES)
    for night, (a, b) in enumerate(zip(small, big)):
        growth_kb = (b - a) / (big_records - small_records)
        assert growth_kb < MAX_GROWTH_KB_A_RECORD, (
            f"night {night + 2} [{tracking}]: {a} KB at {small_records} records, {b} KB at {big_records}: "
            f"{growth_kb:.2f} KB a record")


@pytest.mark.parametrize("tracking", ["webhook", "off"])
def test_the_plan_for_an_unchanged_export_holds_no_write_objects(tmp_path, tracking):
    data = generated(200)
    benchmark.write_exports(data, tmp_path / "mongo")
    benchmark.empty_base(tmp_path / "base.json")
    with Emulator(tmp_path / "base.json", token=TOKEN, rps=None) as emulator:
        env = {**make_env(emulator), "AIRTABLE_CHANGE_TRACKING": tracking}
        argv = ["--mongo-dir", str(tmp_path / "mongo"), "--cache-dir", str(tmp_path / "data"),
                "--reports-dir", str(tmp_path / "reports")]
        assert sync.main(argv, environ=env) == 0  # the first sync: everything created
        settings = sync.settings_from(sync.build_arg_parser().parse_args(argv), env)
        stop = threading.Event()
        now = sync.datetime.now(sync.timezone.utc)
        run = sync.Sync(settings, stop, sync.RunReport(False, now))
        exports = run.load_exports()
        airtable = sync.connect(settings, stop)
        read = sync.BaseReader(airtable, stop, now).read(list(sync.TABLE_ORDER))
        assert read.mode == ("webhook" if tracking == "webhook" else "full")
        plans = run.plan(exports, read, airtable)
    for key, plan in plans.items():
        assert plan.writes == []  # not one object per record: unchanged records are a count
        assert plan.skipped == plan.planned["skip"] == len(data[key]) > 0
        assert plan.orphans == [] and plan.planned["create"] == plan.planned["update"] == 0


@pytest.mark.parametrize("tracking", ["webhook", "off"])
def test_a_record_in_sync_since_the_last_run_is_skipped_unparsed_and_a_change_on_either_side_is_not(
        tmp_path, monkeypatch, tracking):
    data = generated(100)
    benchmark.write_exports(data, tmp_path / "mongo")
    benchmark.empty_base(tmp_path / "base.json")
    argv = ["--mongo-dir", str(tmp_path / "mongo"), "--cache-dir", str(tmp_path / "data"),
            "--reports-dir", str(tmp_path / "reports")]
    parsed = []  # the Mongo ids of the export records a plan parsed again from the file
    load = sync.ExportIndex.load
    monkeypatch.setattr(sync.ExportIndex, "load", lambda self, i: parsed.append(self.mongo_ids[i]) or load(self, i))
    with Emulator(tmp_path / "base.json", token=TOKEN, rps=None) as emulator:
        env = {**make_env(emulator), "AIRTABLE_CHANGE_TRACKING": tracking}
        assert sync.main(argv, environ=env) == 0  # the first sync: every record created, none in sync yet
        assert sync.main(argv, environ=env) == 0  # every record diffed, found in sync: remembered
        # Remembered: every record in sync, but those with an invalid value or a dangling link (the
        # generated data has a few), which are planned every run so that the report counts them.
        kept = sum((tmp_path / "data" / f"airtable_{k}.memo").stat().st_size // 8 for k in data)
        total = sum(len(v) for v in data.values())
        assert total * 0.9 < kept < total
        parsed.clear()
        assert sync.main(argv, environ=env) == 0
        unremembered = set(parsed)  # in sync on both sides since: no other document parsed again
        assert len(parsed) == len(unremembered) == total - kept
        assert all(t["skipped"] == len(data[t_key]) and t["updated"] == 0
                   for t_key, t in json.loads(sorted((tmp_path / "reports").glob("*.json"))[-1].read_text())["tables"].items())
        # One user changed in Mongo, another edited in Airtable: those two, and only they, are planned again.
        mongo, edited = [i for i, doc in enumerate(data["users"]) if benchmark.mongo_id(doc) not in unremembered][:2]
        data["users"][mongo]["summary"] = "changed in Mongo"
        benchmark.write_exports(data, tmp_path / "mongo")
        rec = next(r for r in emulator.records("Users") if r["fields"].get("id") == benchmark.mongo_id(data["users"][edited]))
        emulator.client.update("Users", rec["id"], {"summary": "edited in Airtable"})
        parsed.clear()
        assert sync.main(argv, environ=env) == 0
        report = json.loads(sorted((tmp_path / "reports").glob("*.json"))[-1].read_text())
        assert report["tables"]["users"]["updated"] == 2 and report["tables"]["messages"]["updated"] == 0
        changed = {benchmark.mongo_id(data["users"][i]) for i in (mongo, edited)}
        assert not changed & unremembered and set(parsed) == unremembered | changed
        by_id = {r["fields"].get("id"): r["fields"] for r in emulator.records("Users")}
        assert by_id[benchmark.mongo_id(data["users"][mongo])]["summary"] == "changed in Mongo"
        assert by_id[benchmark.mongo_id(data["users"][edited])]["summary"] == data["users"][edited]["summary"]


def test_an_export_with_the_same_bytes_as_last_run_is_not_parsed_again_and_a_changed_one_is(tmp_path, monkeypatch):
    """An export that came out byte for byte as the one the last run checked (a quiet night, or a
    run more frequent than the exporter) passes the same checks: its saved index is taken instead
    of a parse. A dry run saves none; a changed export is parsed again."""
    data = generated(50)
    benchmark.write_exports(data, tmp_path / "mongo")
    benchmark.empty_base(tmp_path / "base.json")
    argv = ["--mongo-dir", str(tmp_path / "mongo"), "--cache-dir", str(tmp_path / "data"),
            "--reports-dir", str(tmp_path / "reports")]
    parsed = []  # the exports the runs parsed
    first_pass = sync.iter_documents_text
    monkeypatch.setattr(sync, "iter_documents_text", lambda path, *a, **k: parsed.append(path.name) or first_pass(path, *a, **k))
    saved = [tmp_path / "data" / f"export_{k}.index" for k in data]
    with Emulator(tmp_path / "base.json", token=TOKEN, rps=None) as emulator:
        env = make_env(emulator)
        assert sync.main(argv + ["--dry-run"], environ=env) == 0
        assert sorted(parsed) == ["events.json", "messages.json", "users.json"] and not any(p.exists() for p in saved)
        assert sync.main(argv, environ=env) == 0
        assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in saved)
        parsed.clear()
        assert sync.main(argv, environ=env) == 0
        assert parsed == []
        data["events"][0]["description"] = "changed in Mongo"
        benchmark.write_exports(data, tmp_path / "mongo")
        assert sync.main(argv, environ=env) == 0
        assert parsed == ["events.json"]
        report = json.loads(sorted((tmp_path / "reports").glob("*.json"))[-1].read_text())
        assert report["tables"]["events"]["updated"] == 1 and report["tables"]["users"]["updated"] == 0
        assert any(r["fields"].get("description") == "changed in Mongo" for r in emulator.records("Events"))
