#!/usr/bin/env python3
"""Benchmark: airtable_sync.py against the local Airtable emulator, at the rate limit.

    python tests/benchmark.py [--size small|10k|100k|all] [--rps N] [--rerun-rps N] [--keep]

Generates a large, realistic dataset (seeded, same kinds of values as tests/fixtures/),
starts two emulators, each its own process on a free 127.0.0.1 port with its rate limit on,
and syncs the same exports into both, side by side: one with change tracking
(AIRTABLE_CHANGE_TRACKING=webhook, the default) and one with full reads (off). Each sync is
its own process. Five nights, each run on both bases:

  1. first sync into an empty base (the schema of tests/fixtures/base.json, no records);
  2. the night after it (change tracking reads the first sync's own payloads);
  3. a quiet night after a quiet night;
  4. 1% of the records of each export changed in Mongo;
  5. another 1% changed, plus 0.1% of each table's records edited by a person in Airtable
     (the same edits in both bases; the sync sets them back).

For each run it prints the requests by kind against the lower bound, 429s, wall time
against requests/rps, the sync process's CPU seconds and peak RSS, and the change-tracking
run's ratio to the full-read run. At the end it compares the two final bases. Every target
is printed as PASS or FAIL; the exit status is 0 only when all pass.

Time may be scaled: the emulator's limit and AIRTABLE_MAX_RPS are raised together (--rps
for the first sync, --rerun-rps for the nights after it). Request counts do not depend on the
scale; wall times do, since local work does not shrink with it, so by default the nights
run at Airtable's own 5 requests/s.
docs/BENCHMARK.md has the figures and how to read them.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SYNC = ROOT / "airtable_sync.py"
FIXTURES = ROOT / "tests" / "fixtures"
TOKEN = "patBENCHMARK0000.not-a-real-secret-0123456789abcdef"
TABLES = ("users", "events", "messages")
TABLE_IDS = {"users": "tblQ0OHBit2AqaACy", "events": "tblrscr87h8fbtQTk", "messages": "tbljma5S4NhUn1OYl"}
REAL_RPS = 5  # Airtable's limit per base
PER_WRITE, PER_PAGE, PAYLOADS_PER_PAGE = 10, 100, 50
SEED = 20250301

SIZES = {  # users, events, messages
    "small": (1_000, 50, 2_000),
    "10k": (10_000, 500, 20_000),
    "100k": (100_000, 5_000, 200_000),  # proportionate: 10x every export
}
DEFAULT_RPS = {"small": 50, "10k": 50, "100k": 100}
# The reruns are read-bound (one page per 100 records): at a 10x time scale their few seconds
# of local work (start-up, loading, planning) would weigh 10x in the wall ratio, so by
# default they run at Airtable's real rate, where the ratio means what a user sees.
DEFAULT_RERUN_RPS = {"small": REAL_RPS, "10k": REAL_RPS, "100k": 100}

# Targets (issue 4)
MAX_WALL_RATIO = 1.10
# The 2 s CPU target for the 10k first sync is retired: at 5 requests/s its CPU is ~1% of the
# run's wall time (docs/BENCHMARK.md). CPU is still measured, printed and held to the scaling target.
MAX_RSS_MB = 300.0
MAX_SCALE = 10.0
# Targets (issue 15): memory that stays flat as the base grows. Every night after the first sync,
# with change tracking and with full reads: peak RSS at most these, and at most MAX_SLOPE_KB a
# record between the 10k and the 100k set; the first sync (once) at most MAX_RSS_FIRST_MB at 100k.
MAX_RSS_AFTER_FIRST_MB = {"10k": 150.0, "100k": 500.0}
MAX_RSS_FIRST_MB = {"100k": 1000.0}
MAX_SLOPE_KB = 1.0  # (RSS at 100k - RSS at 10k) / (records at 100k - records at 10k)
MAX_QUIET_CPU_S = {"100k": 10.0}  # a quiet night after a quiet night, by the change feed



# ---------------------------------------------------------------------------
# Emulator process (this file re-run with --serve-emulator)
# ---------------------------------------------------------------------------

# A person's edit in Airtable's UI: one mapped, writable text cell of a record.
EDIT_FIELDS = {"users": "summary", "events": "description", "messages": "reasoning"}


def route_of(method: str, path: str) -> str:
    """The request's kind as the change-tracking lower bound counts it."""
    if "/meta/" in path:
        return "schema"
    if "/webhooks" in path:
        return "payloads" if path.rstrip("/").endswith("/payloads") else "webhook"
    if method == "GET" or path.rstrip("/").endswith("/listRecords"):
        return "pages"
    return "writes"


def people_edit(emu, fraction: float, seed: int) -> dict[str, list[str]]:
    """Edit `fraction` of each table's records (at least one) as a person in Airtable's UI would:
    deterministic by the records' `id` field and the seed, so two bases with the same records get
    the same edits. Returns the Mongo ids edited, per table."""
    edited = {}
    for n, key in enumerate(TABLES):
        table = TABLE_IDS[key]
        records = sorted((r["fields"].get("id", ""), r["id"]) for r in emu.records(table))
        picked = random.Random(seed * 1000 + n).sample(records, max(1, round(len(records) * fraction)))
        for _mongo_id, record_id in picked:
            emu.client.update(table, record_id, {EDIT_FIELDS[key]: f"Edited in Airtable by a person (#{seed})"})
        edited[key] = sorted(mongo_id for mongo_id, _ in picked)
    return edited


def dump_base(emu) -> dict[str, list[str]]:
    """Per table, each record's writable fields (no record ids; links as the linked record's `id`
    field), one JSON text a record, sorted: two bases are equal when these lists are."""
    from airtable_emulator.common import COMPUTED_TYPES
    tables = emu.schema()["tables"]
    rendered = {t["id"]: emu.records(t["id"]) for t in tables}
    mongo_ids = {tid: {r["id"]: r["fields"].get("id") for r in recs} for tid, recs in rendered.items()}
    out = {}
    for t in tables:
        writable = {f["name"]: f for f in t["fields"] if f["type"] not in COMPUTED_TYPES}
        rows = []
        for rec in rendered[t["id"]]:
            fields = {}
            for name, value in rec["fields"].items():
                f = writable.get(name)
                if f is None:
                    continue
                if f["type"] == "multipleRecordLinks":
                    value = [mongo_ids[f["options"]["linkedTableId"]].get(v) for v in value]
                fields[name] = value
            rows.append(json.dumps(fields, sort_keys=True, ensure_ascii=False))
        out[t["name"]] = sorted(rows)
    return out


def serve_emulator(base: str, rps: float, token: str) -> int:
    """Serve the emulator (quiet) until stdin says quit. Commands, one JSON line answered each:
    "stats" (the requests since the last stats), "rate N", "edit FRACTION SEED" (a person's edits,
    see people_edit), "dump PATH" (the base as dump_base gives it, written to PATH)."""
    sys.path.insert(0, str(ROOT / "tests"))
    import airtable_emulator as ae

    emu = ae.Emulator(base, token=token, rps=rps or None, penalty_s=30.0, verbose=False)
    emu.start(0)
    print(json.dumps({"url": emu.url, "base_id": emu.base_id}), flush=True)
    try:
        for line in sys.stdin:
            command = line.strip()
            if command == "stats":
                with emu._log_lock:
                    entries = list(emu.requests)
                    emu.requests.clear()
                done = [e for e in entries if e.t_end is not None]
                routes = [route_of(e.method, e.path) for e in entries]
                stats = {
                    "total": len(entries),
                    "by_kind": {k: sum(1 for e in entries if e.kind == k) for k in {e.kind for e in entries}},
                    "by_route": {k: routes.count(k) for k in set(routes)},
                    "by_status": {str(s): sum(1 for e in entries if e.status == s) for s in {e.status for e in entries}},
                    "first_start": min((e.t_start for e in entries), default=None),
                    "last_end": max((e.t_end for e in done), default=None),
                    "server_s": sum(e.t_end - e.t_start for e in done),
                    "server_s_by_kind": {k: sum(e.t_end - e.t_start for e in done if e.kind == k)
                                         for k in {e.kind for e in done}},
                }
                print(json.dumps(stats), flush=True)
            elif command.startswith("rate "):
                rate = float(command.split()[1])
                emu.set_rate_limit(rate or None)
                print(json.dumps({"rps": rate}), flush=True)
            elif command.startswith("edit "):
                _, fraction, seed = command.split()
                print(json.dumps(people_edit(emu, float(fraction), int(seed))), flush=True)
            elif command.startswith("dump "):
                path = Path(command.split(" ", 1)[1])
                dumped = dump_base(emu)
                path.write_text(json.dumps(dumped, ensure_ascii=False), encoding="utf-8")
                print(json.dumps({k: len(v) for k, v in dumped.items()}), flush=True)
            elif command == "quit":
                break
    finally:
        emu.stop()
    return 0


class EmulatorProcess:
    def __init__(self, base_path: Path, rps: float, log_path: Path):
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve-emulator", str(base_path), "--rps", str(rps)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, cwd=base_path.parent)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the emulator did not start; see {log_path}")
        info = json.loads(line)
        self.url, self.base_id = info["url"], info["base_id"]

    def set_rate(self, rps: float) -> None:
        self.proc.stdin.write(f"rate {rps}\n")
        self.proc.stdin.flush()
        json.loads(self.proc.stdout.readline())

    def command(self, text: str) -> Any:
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the emulator died on {text!r}; see its log")
        return json.loads(line)

    def stats(self) -> dict:
        return self.command("stats")

    def edit(self, fraction: float, seed: int) -> dict[str, list[str]]:
        return self.command(f"edit {fraction} {seed}")

    def dump(self, path: Path) -> dict[str, list[str]]:
        self.command(f"dump {path}")
        return json.loads(path.read_text(encoding="utf-8"))

    def close(self) -> None:
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# ---------------------------------------------------------------------------
# Data: seeded, with the kinds of values of tests/fixtures/
# ---------------------------------------------------------------------------

FIRST = ["Maria", "José", "Zoë", "Noah", "Aisha", "Liam", "Mei", "Sam", "Olivia", "Kenji", "Fatima", "Lucas",
         "Ava", "Mateo", "Priya", "Chloé", "Björn", "Amara", "Diego", "Yuki", "Sofía", "Omar", "Hana", "Ethan",
         "Léa", "Nikolai", "Thandiwe", "Wei", "Siobhán", "Ngozi"]
LAST = ["Lopez", "Hernández", "Chen-Whitfield", "Okafor", "Rahman", "Kowalski", "Nakamura", "Bennett", "García",
        "Müller", "O'Brien", "Ivanova", "Nguyen", "Dubois", "Patel", "Kim", "Rossi", "Haddad", "Søndergaard",
        "Takahashi", "Mensah", "Silva", "Zhang", "Cohen", "Bello", "O'Connor"]
ASCII = str.maketrans("éèëöüøóíñåáç", "eeeouooinaac")
NEIGHBORHOODS = ["Jackson Heights", "Bushwick", "Park Slope", "Williamsburg", "Astoria", "Harlem", "Greenpoint",
                 "Crown Heights", "Red Hook", "West Village", "Carroll Gardens", "Long Island City", "Sunset Park",
                 "Flushing", "Bed-Stuy", "Chinatown", "East Village", "Fort Greene"]
OCCUPATIONS = ["Pediatric Nurse", "Line Cook at Cosme", "Editor, Penguin Random House", "Software Engineer",
               "Architect", "Teacher", "Product Designer", "Barista", "Data Scientist", "Photographer", "Lawyer",
               "Sommelier", "Graduate Student", "Startup Founder", "Physical Therapist", "Musician", "Bartender"]
INTERESTS = ["Natural Wine", "Jazz", "Cooking", "Travel", "Photography", "Hiking", "Art", "Books", "Cocktails",
             "Startups", "Yoga", "Film", "Vegan Food", "Board Games", "Running", "Live Music", "Coffee", "Dancing"]
NEW_INTERESTS = ["Pottery", "Mahjong"]  # not choices in the base: typecast creates them
CUISINES = ["Mexican", "Oaxacan", "Italian", "Japanese", "Korean", "Ethiopian", "Farm-to-Table", "Seafood",
            "Vegan", "French", "Levantine", "Chinese", "Peruvian"]
EVENT_KINDS = [  # name, eventType, cuisines, hook, location
    ("Sunday Supper Club", "supper_club", ["Farm-to-Table"], "a long communal table and a natural-wine pairing",
     "The Loft at 55 Bethune St, West Village"),
    ("Chef's Table: Oaxaca", "chefs_table", ["Mexican", "Oaxacan"], "seven moles and a mezcal flight",
     "Casa Enrique back room, Long Island City"),
    ("Chef's Table: 北京 Cuisine", "chefs_table", "北京菜", "Peking duck carved tableside",
     "Flushing, Main St (upstairs at Dragon Pearl)"),
    ("Red Hook Oyster Brunch", "brunch", ["Seafood"], "oysters and a Bloody Mary bar in Red Hook", "Red Hook pier"),
    ("Ethiopian Coffee Supper", "dinner", ["Ethiopian"], "a traditional coffee ceremony after dinner", "Harlem"),
    ("Omakase Counter", "tasting", ["Japanese"], "a six-seat omakase counter", "East Village"),
    ("Trattoria Night: Cacio e Pepe", "dinner", ["Italian"], "a hands-on cacio e pepe class", "Carroll Gardens"),
    ("Soup Dumpling Workshop", "workshop", ["Chinese"], "folding soup dumplings with Auntie Mei", "Chinatown"),
    ("Levantine Mezze Night", "dinner", ["Levantine"], "twenty mezze plates and fresh pita", "Astoria"),
    ("Peruvian Ceviche Night", "dinner", ["Peruvian", "Seafood"], "ceviche and pisco sours", "Sunset Park"),
]
STATUSES = ["draft", "approved", "sent", "scheduled"]  # "scheduled" is a new choice
BASE_TS = 1_704_067_200  # 2024-01-01T00:00:00Z
ISO = "%Y-%m-%dT%H:%M:%S"


def iso(ts: float, millis: int | None = None) -> str:
    text = time.strftime(ISO, time.gmtime(ts))
    return text + (f".{millis:03d}Z" if millis is not None else "Z")


def oid(ts: int, n: int, salt: int) -> str:
    return f"{ts:08x}{salt:010x}{n % (1 << 24):06x}"


def days_since(doc: dict, exported: dt.date) -> int:
    """The seed's exporter (mongodb_pull.py): days_inactive is the whole days from last_active to
    the export's date, so every user's value rises by one every night."""
    return (exported - dt.date.fromisoformat(doc["last_active"]["$date"][:10])).days


def export_days_inactive(users: list[dict], exported: dt.date) -> None:
    """The users as exported on `exported` (the value's type varies as make_users made it)."""
    for i, doc in enumerate(users):
        days = days_since(doc, exported)
        doc["days_inactive"] = {"$numberInt": str(days)} if i % 50 else str(days)


def make_users(rng: random.Random, n: int, exported: dt.date | None = None) -> list[dict]:
    """`exported`: the export's date, which days_inactive counts to (default today, UTC)."""
    exported = exported or dt.datetime.now(dt.timezone.utc).date()
    users = []
    for i in range(n):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        created = BASE_TS + rng.randrange(400 * 86400)
        doc: dict = {}
        if i % 97 == 5:
            doc["id"] = f"usr_{i:07d}{rng.choice('ABCDEFGHJKLMNPQRSTUVWXYZ')}"  # plain string id, no _id
        else:
            doc["_id"] = {"$oid": oid(created, i, 0x5A17C0FFEE)}
        doc["firstName"], doc["lastName"] = first, last
        r = rng.random()
        email = f"{first}.{last}.{i}@example.com".lower().translate(ASCII).replace("'", "")
        if r < 0.01:
            pass  # no email key
        elif r < 0.02:
            doc["email"] = None
        elif r < 0.03:
            doc["email"] = ""
        else:
            doc["email"] = email if rng.random() > 0.05 else email.capitalize()
        doc["phone"] = f"+1 (917) 555-{i % 10000:04d}"
        doc["role"] = "user" if rng.random() > 0.06 else rng.choice(["host", "admin"])
        doc["gender"] = rng.choice(["female", "male", "non-binary", "female", "male", "prefer_not_to_say"])
        birth = -315_619_200 + rng.randrange(45 * 365 * 86400)  # 1960..2005
        birth -= birth % 86400
        r = rng.random()
        doc["birthDay"] = ({"$date": iso(birth)} if r < 0.7 else {"$date": {"$numberLong": str(birth * 1000)}}
                           if r < 0.9 else {"$date": birth * 1000})
        doc["occupation"] = rng.choice(OCCUPATIONS) if rng.random() > 0.05 else None
        doc["homeNeighborhood"] = rng.choice(NEIGHBORHOODS)
        interests = rng.sample(INTERESTS, rng.randint(1, 4))
        if rng.random() < 0.02:
            interests.append(rng.choice(NEW_INTERESTS))
        doc["interests"] = interests if rng.random() > 0.05 else interests[0]  # a scalar sometimes
        doc["tableTypePreference"] = rng.choice(["communal", "intimate", "mixed"])
        events = rng.randrange(0, 30)
        doc["event_count"] = ({"$numberLong": str(events)} if i % 3 else {"$numberDouble": f"{events}.0"})
        doc["order_count"] = {"$numberInt": str(events + rng.randrange(0, 5))} if i % 500 != 7 else "n/a"
        doc["total_spent"] = {"$numberDecimal": f"{events * rng.choice([45, 75, 85, 145])}.{rng.choice(['00', '50'])}"}
        active = created + rng.randrange(30 * 86400)
        doc["last_active"] = {"$date": iso(active, rng.randrange(1000))}
        rng.randrange(0, 120)  # drawn as before days_inactive was modelled, so the rest of the data is as it was
        days = days_since(doc, exported)
        doc["days_inactive"] = {"$numberInt": str(days)} if i % 50 else str(days)
        doc["engagement_status"] = rng.choice(["new", "active", "at_risk", "dormant"])
        doc["journey_stage"] = rng.choice(["signed_up", "first_event", "repeat_guest", "ambassador"])
        doc["value_segment"] = rng.choice(["low", "medium", "high"])
        doc["user_segment"] = rng.choice(["newcomer", "foodie_explorer", "social_connector", "regular"])
        doc["churn_risk"] = rng.choice(["low", "medium", "high"])
        doc["profile_completeness"] = {"$numberInt": str(rng.randrange(40, 101, 5))}
        doc["profile_ready"] = rng.random() > 0.3
        if rng.random() > 0.1:
            occupation = doc["occupation"] or "guest"
            doc["summary"] = (f"{first} {last}, {occupation} from {doc['homeNeighborhood']}; into "
                              f"{', '.join(interests)}. {events} events so far.")
        doc["createdAt"] = ({"$date": iso(created)} if i % 2 else {"$date": {"$numberLong": str(created * 1000)}})
        doc["updatedAt"] = {"$date": iso(active + 3600)}
        doc["password_hash"] = "$2b$12$" + "".join(rng.choices("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789./", k=53))
        doc["__v"] = {"$numberInt": "0"}
        if rng.random() < 0.3:
            doc["stripeCustomerId"] = "cus_" + "".join(rng.choices("ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz23456789", k=14))
        if rng.random() < 0.2:
            doc["preferences"] = {"dietary": rng.sample(["pescatarian", "vegan", "halal", "no pork", "gluten-free"], 1),
                                  "notifications": {"sms": rng.random() > 0.5, "email": rng.random() > 0.5}}
        users.append(doc)
    return users


def make_events(rng: random.Random, n: int) -> list[dict]:
    events = []
    for i in range(n):
        name, event_type, cuisine, _hook, location = EVENT_KINDS[i % len(EVENT_KINDS)]
        created = BASE_TS + rng.randrange(400 * 86400)
        start = created + rng.randrange(7, 60) * 86400 + rng.choice([19, 20, 23]) * 3600
        capacity = rng.choice([6, 8, 10, 12, 14, 16])
        joined = rng.randrange(0, capacity + 1)
        doc: dict = {"_id": {"$oid": oid(created, i, 0xE7E27C0DE5)}}
        doc["name"] = name if i < len(EVENT_KINDS) * 2 else f"{name} #{i // len(EVENT_KINDS)}"
        doc["slug"] = doc["name"].lower().replace(" ", "-").replace(":", "").replace("'", "")
        doc["description"] = (f"{name}: {_hook}. Edition {i}, {capacity} seats." if i % 40 != 3 else None)
        r = rng.random()
        doc["startDate"] = ({"$date": iso(start)} if r < 0.6 else {"$date": start * 1000} if r < 0.8
                            else {"$date": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(start))})  # naive = UTC
        end = start + rng.choice([2, 3, 3.5]) * 3600
        doc["endDate"] = ({"$date": {"$numberLong": str(int(end * 1000))}} if i % 250 != 11 else "TBD")
        doc["location"] = location
        doc["eventType"] = event_type
        doc["cuisine"] = cuisine if isinstance(cuisine, str) else sorted(set(cuisine + rng.sample(CUISINES, rng.randint(0, 1))))
        doc["tableType"] = rng.choice(["communal", "intimate", "mixed"])
        doc["maxCapacity"] = {"$numberInt": str(capacity)} if i % 7 else {"$numberLong": str(capacity)}
        doc["price"] = {"$numberDecimal": f"{rng.choice([45, 49, 75, 85, 135, 145])}.{rng.choice(['00', '50'])}"}
        doc["participantCount"] = {"$numberInt": str(joined)} if i % 9 else str(joined)
        doc["participationPercentage"] = {"$numberDouble": f"{100 * joined / capacity:.1f}"}
        doc["participant_top_interests"] = rng.sample(INTERESTS, rng.randint(0, 3))
        doc["participant_top_occupations"] = rng.sample(OCCUPATIONS, 3)
        doc["qualifies_seat_newcomers"] = rng.random() > 0.4
        doc["qualifies_fill_the_table"] = joined < capacity / 2
        doc["summary"] = f"{doc['name']} at {location}: {capacity} seats, {joined} joined."
        doc["createdAt"] = {"$date": iso(created)}
        doc["updatedAt"] = {"$date": iso(created + 86400, rng.randrange(1000))}
        doc["hostId"] = {"$oid": oid(created - 86400, i, 0x4057)}
        doc["participants"] = [{"$oid": oid(created, j, 0x9A27)} for j in range(rng.randrange(0, 4))]
        doc["__v"] = {"$numberInt": "1"}
        events.append(doc)
    return events


def mongo_id(doc: dict) -> str:
    value = doc.get("id") or doc.get("_id")
    return value["$oid"] if isinstance(value, dict) else value


def make_messages(rng: random.Random, n: int, users: list[dict], events: list[dict]) -> list[dict]:
    messages = []
    for i in range(n):
        user = users[rng.randrange(len(users))]
        event_index = rng.randrange(len(events))
        event = events[event_index]
        hook = EVENT_KINDS[event_index % len(EVENT_KINDS)][3]
        uid, eid = mongo_id(user), mongo_id(event)
        interests = user["interests"] if isinstance(user["interests"], list) else [user["interests"]]
        first = user["firstName"]
        text = (f"Hi {first}! We're hosting {event['name']} and thought of you: {hook}, with guests who share "
                f"your love of {interests[0].lower()}. It's a short trip from {user['homeNeighborhood']}. "
                f"Want us to save you a seat?")
        created = BASE_TS + 420 * 86400 + i * 37
        doc: dict = {"_id": {"$oid": oid(created, i, 0x3E55A6E)}}
        r = rng.random()
        if r < 0.05 and "_id" in user:
            doc["senderId"], doc["eventId"] = {"$oid": uid}, event["_id"]  # only the alternative references
        else:
            doc["user_id"] = {"$oid": uid} if (r < 0.10 and "_id" in user) else uid
            doc["event_id"] = eid if i % 1000 != 17 else "65c0ffee0000000000%06x" % i  # a few dangling refs
        doc["user_name"] = f"{user['firstName']} {user['lastName']}"
        doc["event_name"] = event["name"]
        doc["user_email"] = user.get("email") or ""
        doc["user_phone"] = user["phone"]
        doc["user_summary"] = user.get("summary", "")
        doc["event_summary"] = event["summary"]
        if i % 50 == 13:
            doc["message"] = text  # old exports: `message` instead of `message_text`
        else:
            doc["message_text"] = text
        r = rng.random()
        if r < 0.7:
            doc["personalization_notes"] = f"Hook: {hook}; shared interest: {interests[0]}; neighbourhood: {user['homeNeighborhood']}."
        elif r < 0.9:
            doc["personalization_notes"] = {
                "tone": rng.choice(["warm", "playful", "concise"]), "hook": hook,
                "last_event": {"name": event["name"], "date": {"$date": iso(created - 86400 * 20)}},
                "mentions": [user["homeNeighborhood"], interests[-1]],
                "score_components": {"interest_overlap": {"$numberDouble": f"{rng.random():.1f}"},
                                     "distance_km": {"$numberInt": str(rng.randrange(1, 20))}}}
        else:
            doc["personalization_notes"] = [interests[0], "first Supper Club", "café 同桌"]
        doc["character_count"] = {"$numberInt": str(len(text))}
        score = rng.randrange(40, 100)
        doc["similarity_score"] = {"$numberDouble": f"0.{score:02d}"}
        doc["confidence_percentage"] = ({"$numberInt": str(score)} if i % 20 else str(score)) if i % 700 != 5 else "high"
        doc["reasoning"] = f"{first} matches the event on {interests[0]} and lives close to the venue."
        doc["status"] = rng.choice(STATUSES) if i % 100 != 61 else None
        r = rng.random()
        doc["generated_at"] = ({"$date": iso(created, rng.randrange(1000))} if r < 0.8 else {"$date": created * 1000}
                               if r < 0.9 else {"$date": {"$numberLong": str(created * 1000)}})
        doc["campaign"] = "spring_2025_dinners"
        doc["updatedAt"] = {"$date": iso(created + 60)}
        doc["model"] = "gpt-4o-mini-2024-07-18"
        doc["__v"] = {"$numberInt": "0"}
        messages.append(doc)
    return messages


def generate(size: str) -> dict[str, list[dict]]:
    n_users, n_events, n_messages = SIZES[size]
    rng = random.Random(SEED)
    users = make_users(rng, n_users)
    events = make_events(rng, n_events)
    messages = make_messages(rng, n_messages, users, events)
    return {"users": users, "events": events, "messages": messages}


CHANGE_EVERY = 100  # the 1% change: records whose index % 100 == at (42, then 43 the next night)
EDIT_FRACTION = 0.001  # the people's edits in Airtable: 0.1% of each table's records, at least one


def change_one_percent(data: dict[str, list[dict]], at: int = 42) -> dict[str, set[str]]:
    """Change one mapped, writable field of 1% of the records of each export; returns their Mongo ids."""
    changed = {}
    for key, docs in data.items():
        ids = set()
        for i in range(at, len(docs), CHANGE_EVERY):
            doc = docs[i]
            if key == "users":
                doc["summary"] = (doc.get("summary") or "") + " Profile reviewed."
            elif key == "events":
                doc["description"] = (doc.get("description") or "") + " (Menu updated.)"
            else:
                doc["status"] = STATUSES[(STATUSES.index(doc["status"]) + 1) % len(STATUSES)] if doc.get("status") else "draft"
            ids.add(mongo_id(doc))
        changed[key] = ids
    return changed


def write_exports(data: dict[str, list[dict]], mongo_dir: Path) -> None:
    """users/events as a JSON array (mongoexport --jsonArray), messages as JSON Lines."""
    mongo_dir.mkdir(parents=True, exist_ok=True)
    for key in ("users", "events"):
        (mongo_dir / f"{key}.json").write_text(json.dumps(data[key], ensure_ascii=False), encoding="utf-8")
    with open(mongo_dir / "messages.json", "w", encoding="utf-8") as out:
        for doc in data["messages"]:
            out.write(json.dumps(doc, ensure_ascii=False, separators=(",", ":")))
            out.write("\n")


# What a person makes of the day counter once a night's report names it (issue 21).
DAYS_INACTIVE_FORMULA = "DATETIME_DIFF(TODAY(), {last_active}, 'days')"


def empty_base(path: Path, days_inactive_formula: bool = False) -> str:
    """The fixtures' schema with no records; with `days_inactive_formula`, Users' days_inactive is
    the formula field a person made of it, which the sync never writes."""
    base = json.loads((FIXTURES / "base.json").read_text(encoding="utf-8"))
    for table in base["tables"]:
        table["records"] = []
        for f in table["fields"]:
            if days_inactive_formula and f["name"] == "days_inactive":
                f.update(type="formula", options={"formula": DAYS_INACTIVE_FORMULA})
    path.write_text(json.dumps(base), encoding="utf-8")
    return base["id"]


# ---------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------

@dataclass
class Child:
    code: int
    wall_s: float
    cpu_s: float
    rss_mb: float
    started: float
    ended: float


# Linux keeps a process's peak RSS across exec, and a child made by fork or vfork starts with its
# parent's resident pages: a sync spawned straight from this process (which holds the generated
# exports, hundreds of MB at 100k) or from a test process would report this process's RSS as its
# own peak. So each run goes through a small, fresh Python process that spawns it and reports its
# rusage: the sync's peak is then at least only that launcher's ~10 MB.
LAUNCHER = """
import json, os, subprocess, sys, time
out, cmd = sys.argv[1], sys.argv[2:]
started = time.monotonic()
proc = subprocess.Popen(cmd)
_, status, usage = os.wait4(proc.pid, 0)
ended = time.monotonic()
with open(out, "w") as f:
    json.dump({"code": os.waitstatus_to_exitcode(status), "cpu_s": usage.ru_utime + usage.ru_stime,
               "rss_kb": usage.ru_maxrss, "started": started, "ended": ended}, f)
"""


def run_child(cmd: list[str], env: dict, cwd: Path, log_path: Path) -> Child:
    """Run one process through LAUNCHER; its own rusage (CPU user+sys, peak RSS) from wait4."""
    usage_path = log_path.with_name(log_path.name + ".rusage.json")
    with open(log_path, "ab") as log:
        subprocess.run([sys.executable, "-c", LAUNCHER, str(usage_path), *cmd], env=env, cwd=cwd,
                       stdout=log, stderr=subprocess.STDOUT, check=True)
    usage = json.loads(usage_path.read_text())
    usage_path.unlink()
    return Child(usage["code"], usage["ended"] - usage["started"], usage["cpu_s"], usage["rss_kb"] / 1024,
                 usage["started"], usage["ended"])


@dataclass
class Run:
    name: str
    arm: str  # "webhook" (AIRTABLE_CHANGE_TRACKING=webhook, the default) or "off" (full reads)
    child: Child
    report: dict
    server: dict
    expected: dict[str, tuple[int, int]]  # table -> (created, updated) the data calls for
    airtable_before: dict[str, int]  # records in each Airtable table when the run started
    rps: float
    expected_total: dict[str, int] = field(default_factory=dict)
    edited: int = 0  # records people edited in Airtable before this run

    @property
    def requests(self) -> dict:
        return self.report["requests"]

    @property
    def tables(self) -> dict:
        return self.report["tables"]

    @property
    def tracking(self) -> dict:
        return self.report.get("change_tracking") or {}

    @property
    def feed(self) -> bool:
        """Read by the change feed (else every record was read)."""
        return self.tracking.get("mode") == "webhook"

    @property
    def payloads(self) -> int:
        return self.tracking.get("payloads") or 0

    def by_route(self, route: str) -> int:
        return self.server.get("by_route", {}).get(route, 0)

    def pages(self) -> int:
        """A full read's lower bound of reads: one page per 100 records (at least one) per table, plus the schema."""
        return 1 + sum(max(1, math.ceil(n / PER_PAGE)) for n in self.airtable_before.values())

    def min_writes(self) -> int:
        return sum(math.ceil(t["created"] / PER_WRITE) + math.ceil(t["updated"] / PER_WRITE)
                   for t in self.tables.values())

    def lower_bound(self) -> int:
        """Reads by the feed: the webhook check plus max(1, ceil(payloads/50)) pages of payloads (the
        issue's 1 + ceil(payloads/50) counts a last, empty page that Airtable's mightHaveMore spares;
        the schema only when fields changed, which no run here does). A full read: its pages and the
        schema, plus listing and creating the webhook when change tracking is on. Then the writes."""
        if self.feed:
            return 1 + max(1, math.ceil(self.payloads / PAYLOADS_PER_PAGE)) + self.min_writes()
        return self.pages() + (2 if self.arm == "webhook" else 0) + self.min_writes()

    def ideal_s(self) -> float:
        return self.requests["total"] / self.rps

    def wall_ratio(self) -> float:
        return self.child.wall_s / self.ideal_s()

    def projected_ratio(self, rps: float = REAL_RPS) -> float | None:
        """The ratio at `rps` (Airtable's 5): the request phase stretches by the time scale, local work does not."""
        s = self.server
        if not s.get("first_start") or not s.get("last_end"):
            return None
        span = s["last_end"] - s["first_start"]
        scale = self.rps / rps
        return (self.child.wall_s - span + span * scale) / (self.ideal_s() * scale)

    def naive_requests(self) -> tuple[int, int]:
        """The naive plan: one write per exported record, every run (no change detection), same reads."""
        return self.pages(), sum(self.expected_total.values())


def sync_env(emulator: EmulatorProcess, rps: float, arm: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")}
    env.update({
        "AIRTABLE_API_KEY": TOKEN, "AIRTABLE_ENDPOINT_URL": emulator.url, "AIRTABLE_BASE_ID": emulator.base_id,
        "AIRTABLE_MAX_RPS": str(rps), "AIRTABLE_TIMEOUT_S": "30",
        "AIRTABLE_USERS_TABLE": TABLE_IDS["users"], "AIRTABLE_EVENTS_TABLE": TABLE_IDS["events"],
        "AIRTABLE_MESSAGES_TABLE": TABLE_IDS["messages"], "PYTHONDONTWRITEBYTECODE": "1",
        "AIRTABLE_CHANGE_TRACKING": arm,
    })
    return env


def startup_cost(work: Path) -> Child:
    """Python start-up plus importing the tool (pyairtable, pydantic, requests): paid by every run."""
    return run_child([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); import airtable_sync"],
                     {"PATH": os.environ.get("PATH", "")}, work, work / "startup.log")


ARMS = ("webhook", "off")  # change tracking (the default), full reads
# name, what happens before it: Mongo changes (at: the 1% offset), people's edits in Airtable (seed)
NIGHTS = [
    ("first sync", None, None),
    ("night after the first sync", None, None),
    ("quiet night after a quiet night", None, None),
    ("1% changed in Mongo", 42, None),
    ("1% changed + 0.1% edited in Airtable", 43, 1),
]
QUIET, CHANGED = 2, (3, 4)  # indexes into NIGHTS


# The nights run minutes apart, and the sync tells a day counter by the run's date (within a day):
# night k is exported as of today + (k - COUNTER_DAY) days, so the nights after the first rewrite
# (2, 3, 4) are within a day of the run's date and each export is one day later than the last.
COUNTER_DAY = 3
FIRST_NAMED = 2  # the second night whose updates write the counter: the first that may name it


def bench_size(size: str, rps: float, rerun_rps: float, work: Path, out, days_inactive: str = "exported") -> dict:
    """The five nights, each run on two bases side by side: one with change tracking, one with full
    reads, the same exports and the same people's edits applied to both. `days_inactive`:
    "exported" (a number column the sync fills, as the seed's base has it) or "formula" (the
    column a person made a formula, as the report advises)."""
    n_users, n_events, n_messages = SIZES[size]
    say = lambda *a: print(*a, file=out, flush=True)  # noqa: E731
    say(f"\n== size {size}: {n_users:,} users, {n_events:,} events, {n_messages:,} messages; "
        f"emulator and AIRTABLE_MAX_RPS at {rps:g} requests/s for the first sync, {rerun_rps:g} for the reruns "
        f"(Airtable: {REAL_RPS}); two bases: AIRTABLE_CHANGE_TRACKING=webhook and off ==")
    root = work / size
    mongo = root / "mongo"
    root.mkdir(parents=True)
    t0 = time.monotonic()
    data = generate(size)
    write_exports(data, mongo)
    sizes_mb = sum((mongo / f"{k}.json").stat().st_size for k in TABLES) / 1e6
    say(f"generated the exports in {time.monotonic() - t0:.1f} s ({sizes_mb:.1f} MB) in {mongo}")
    totals = {k: len(v) for k, v in data.items()}
    emulators: dict[str, EmulatorProcess] = {}
    runs: dict[str, list[Run]] = {arm: [] for arm in ARMS}
    bases_equal: tuple[bool, str] = (False, "not compared")
    try:
        for arm in ARMS:
            (root / arm).mkdir()
            empty_base(root / arm / "BASE.json", days_inactive_formula=days_inactive == "formula")
            emulators[arm] = EmulatorProcess(root / arm / "BASE.json", rps, root / arm / "emulator.log")
        airtable_count = {arm: {k: 0 for k in TABLES} for arm in ARMS}
        for night, (name, change_at, edit_seed) in enumerate(NIGHTS):
            touched = {k: set() for k in TABLES}
            export_days_inactive(data["users"], dt.datetime.now(dt.timezone.utc).date()
                                 + dt.timedelta(days=night - COUNTER_DAY))
            if night and days_inactive == "exported":  # every user's counter rose by one
                touched["users"] = {mongo_id(doc) for doc in data["users"]}
            if change_at is not None:
                for k, ids in change_one_percent(data, change_at).items():
                    touched[k] |= ids
            write_exports(data, mongo)
            edited: dict[str, dict] = {}
            if edit_seed is not None:
                edited = {arm: emulators[arm].edit(EDIT_FRACTION, edit_seed) for arm in ARMS}
                if edited["webhook"] != edited["off"]:
                    raise RuntimeError("the people's edits differ between the two bases")
                # An edit is set back only where the export carries the field (the Mongo field has
                # the Airtable field's name here): a field absent from a document is never written,
                # and Airtable keeps its value. About 10% of the generated users have no summary.
                for k, ids in edited["webhook"].items():
                    carried = {mongo_id(doc) for doc in data[k] if EDIT_FIELDS[k] in doc}
                    edited["webhook"][k] = [i for i in ids if i in carried]
                    touched[k] |= set(edited["webhook"][k])
            if night == 0:
                expected = {k: (n, 0) for k, n in totals.items()}
            else:
                expected = {k: (0, len(touched[k])) for k in TABLES}
            n_edited = sum(len(v) for v in edited.get("webhook", {}).values())
            run_rps = rps if night == 0 else rerun_rps
            for arm in ARMS:
                emulator = emulators[arm]
                emulator.set_rate(run_rps)
                emulator.stats()  # forget any request made outside the run
                cmd = [sys.executable, str(SYNC), "--mongo-dir", str(mongo), "--cache-dir", str(root / arm / "data"),
                       "--reports-dir", str(root / arm / "reports")]
                say(f"  {name} [{arm}]: running ...")
                child = run_child(cmd, sync_env(emulator, run_rps, arm), root / arm, root / arm / "sync.log")
                server = emulator.stats()
                report_files = sorted((root / arm / "reports").glob("sync_report_*.json"),
                                      key=lambda p: p.stat().st_mtime_ns)
                report = json.loads(report_files[-1].read_text(encoding="utf-8")) if report_files else {}
                if child.code != 0 or not report:
                    say(f"  {name} [{arm}]: the sync exited {child.code}; log: {root / arm / 'sync.log'}")
                run = Run(name, arm, child, report, server, expected, dict(airtable_count[arm]), run_rps,
                          expected_total=totals, edited=n_edited)
                runs[arm].append(run)
                for k in TABLES:
                    airtable_count[arm][k] += report.get("tables", {}).get(k, {}).get("created", 0)
                say(f"  {name} [{arm}]: {child.wall_s:.1f} s, {run.requests['total'] if report else '?'} requests")
        dumps = {arm: emulators[arm].dump(root / arm / "final_base.json") for arm in ARMS}
        differ = {t: len(set(dumps["webhook"][t]) ^ set(dumps["off"][t])) or int(dumps["webhook"][t] != dumps["off"][t])
                  for t in dumps["off"]}
        bases_equal = (dumps["webhook"] == dumps["off"],
                       ", ".join(f"{t}: {len(dumps['webhook'][t])} vs {len(dumps['off'][t])} records, "
                                 f"{differ[t]} differing" for t in dumps["off"]))
    finally:
        for emulator in emulators.values():
            emulator.close()
    return {"size": size, "rps": rps, "rerun_rps": rerun_rps, "runs": runs, "totals": totals, "root": root,
            "bases_equal": bases_equal, "days_inactive": days_inactive}


# ---------------------------------------------------------------------------
# Figures, targets
# ---------------------------------------------------------------------------

@dataclass
class Verdict:
    name: str
    ok: bool
    detail: str


def table_rows(result: dict) -> list[str]:
    """Each night side by side: change tracking, then full reads, and the ratio of the first to the second."""
    head = ("| night | reads | requests: schema + webhook + payload pages + record pages + writes | payloads "
            "| total | lower bound | total / bound | 429s | wall s | wall / (requests/rps) | CPU s | peak RSS MB "
            "| wall / full-read | CPU / full-read | RSS / full-read |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for tracked, full in zip(result["runs"]["webhook"], result["runs"]["off"]):
        for run in (tracked, full):
            label = "change feed" if run.feed else ("full (tracking on)" if run.arm == "webhook" else "full (tracking off)")
            if not run.report:
                lines.append(f"| {run.name} | {label} | sync failed (exit {run.child.code}) |" + " |" * 12)
                continue
            req = run.requests
            kinds = " + ".join(str(run.by_route(k)) for k in ("schema", "webhook", "payloads", "pages", "writes"))
            ratios = " | | |"
            if run is tracked and full.report:
                ratios = (f" {run.child.wall_s / full.child.wall_s:.3f} | {run.child.cpu_s / full.child.cpu_s:.3f} "
                          f"| {run.child.rss_mb / full.child.rss_mb:.3f} |")
            lines.append(
                f"| {run.name} | {label} | {kinds} | {run.payloads if run.arm == 'webhook' else ''} | {req['total']} "
                f"| {run.lower_bound()} | {req['total'] / run.lower_bound():.3f} | {req.get('rate_limited', 0)} "
                f"| {run.child.wall_s:.1f} | {run.wall_ratio():.3f} | {run.child.cpu_s:.2f} | {run.child.rss_mb:.0f} "
                f"|{ratios}")
    return lines


def detail_rows(result: dict) -> list[str]:
    lines = ["| night | tracking | table | total | created | updated | skipped | errors | expected created/updated "
             "| reverted edits | write requests ceil(c/10)+ceil(u/10) | invalid values | unresolved links |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for arm in ARMS:
        for run in result["runs"][arm]:
            for key in TABLES:
                t = run.tables.get(key) if run.report else None
                if t is None:
                    continue
                exp = run.expected[key]
                lines.append(f"| {run.name} | {arm} | {key} | {t['total']} | {t['created']} | {t['updated']} "
                             f"| {t['skipped']} | {t['errors']} | {exp[0]}/{exp[1]} | {t.get('reverted_edits')} "
                             f"| {math.ceil(t['created'] / 10) + math.ceil(t['updated'] / 10)} "
                             f"| {t['invalid_values']} | {t['unresolved_links']} |")
    return lines


def time_breakdown(run: Run) -> str:
    s = run.server
    if not s.get("first_start") or not s.get("last_end"):
        return f"{run.name} [{run.arm}]: no request reached the emulator"
    startup = s["first_start"] - run.child.started
    span = s["last_end"] - s["first_start"]
    tail = run.child.ended - s["last_end"]
    by_kind = ", ".join(f"{k} {v:.1f} s" for k, v in sorted(s["server_s_by_kind"].items()))
    return (f"{run.name} [{run.arm}]: wall {run.child.wall_s:.1f} s = start-up, load, plan until the first request {startup:.2f} s"
            f" + requests {span:.1f} s (ideal {run.ideal_s():.1f} s; of it the emulator handling {s['server_s']:.1f} s:"
            f" {by_kind}; the rest is the client and the throttle's waits) + report and cache after the last"
            f" response {tail:.2f} s")


MAX_QUIET_REQUESTS = 2  # a quiet night: the webhook check and one page of payloads
MAX_CHANGED_BOUND = 1.10  # a 1%-changed night: requests / lower bound
MAX_QUIET_WALL = 0.10  # a quiet night's wall time against the full-read quiet night's


def verdicts(result: dict, check_absolute: bool) -> list[Verdict]:
    size = result["size"]
    arms: dict[str, list[Run]] = result["runs"]
    runs = [r for arm in ARMS for r in arms[arm]]
    out: list[Verdict] = []
    if any(not r.report or r.child.code != 0 for r in runs):
        bad = ", ".join(f"{r.name} [{r.arm}] exit {r.child.code}" for r in runs if not r.report or r.child.code != 0)
        return [Verdict(f"[{size}] every sync run succeeds", False, bad)]
    counts_ok = all((run.tables[k]["created"], run.tables[k]["updated"]) == run.expected[k] and run.tables[k]["errors"] == 0
                    for run in runs for k in TABLES)
    out.append(Verdict(f"[{size}] created/updated equal what the data calls for, both bases (first: all created; "
                       f"quiet: none; then exactly the records changed in Mongo or edited in Airtable)", counts_ok,
                       "; ".join(f"{r.name} [{r.arm}]: " + ", ".join(
                           f"{k} {r.tables[k]['created']}/{r.tables[k]['updated']} (want {r.expected[k][0]}/"
                           f"{r.expected[k][1]})" for k in TABLES) for r in runs
                           if any((r.tables[k]["created"], r.tables[k]["updated"]) != r.expected[k] for k in TABLES))
                       or "all equal"))
    for run in runs:
        req = run.requests
        server_writes = run.by_route("writes")
        ok = (server_writes == run.min_writes() and run.server["total"] == req["total"] and req.get("retried", 0) == 0
              and (run.feed or run.by_route("pages") + run.by_route("schema") == run.pages()))
        out.append(Verdict(
            f"[{size}] {run.name} [{run.arm}]: record writes = lower bound"
            + ("" if run.feed else ", page reads = pages") + ", the emulator's log agrees, 0 retried", ok,
            f"writes {server_writes} vs {run.min_writes()}, reads {run.by_route('pages') + run.by_route('schema')}"
            f" (full read: {run.pages()}); the emulator saw {run.server['total']}, the report {req['total']};"
            f" {req.get('retried', 0)} retried"))
    limited = sum(r.requests.get("rate_limited", 0) for r in runs)
    server_429 = sum(r.server["by_status"].get("429", 0) for r in runs)
    out.append(Verdict(f"[{size}] zero 429s", limited == 0 and server_429 == 0,
                       f"{limited} reported by the sync, {server_429} sent by the emulator"))
    for run in runs:
        if not run.feed:  # full reads: hundreds of requests; a night by the feed makes a handful
            out.append(Verdict(f"[{size}] {run.name} [{run.arm}]: wall / (requests/rps) <= {MAX_WALL_RATIO:.2f}",
                               run.wall_ratio() <= MAX_WALL_RATIO,
                               f"{run.child.wall_s:.1f} s / {run.ideal_s():.1f} s = {run.wall_ratio():.3f}"))
    quiet, quiet_full = arms["webhook"][QUIET], arms["off"][QUIET]
    if result["days_inactive"] == "exported":  # no night is quiet: the report must say why, and give the formula
        out += counter_verdicts(result)
    else:
        for arm in ARMS:
            for run in arms[arm][1:QUIET + 1]:
                out.append(Verdict(f"[{size}] {run.name} [{arm}]: zero write requests", run.requests["write"] == 0,
                                   f"{run.requests['write']} write requests"))
        out.append(Verdict(f"[{size}] a quiet night makes at most {MAX_QUIET_REQUESTS} requests",
                           quiet.requests["total"] <= MAX_QUIET_REQUESTS,
                           f"{quiet.requests['total']} requests (full reads: {quiet_full.requests['total']})"))
    for night in CHANGED:
        run = arms["webhook"][night]
        out.append(Verdict(f"[{size}] {run.name}: requests <= {MAX_CHANGED_BOUND:g} x the lower bound",
                           run.requests["total"] <= MAX_CHANGED_BOUND * run.lower_bound(),
                           f"{run.requests['total']} vs {run.lower_bound()} (1 + max(1, ceil({run.payloads}/50)) + "
                           f"{run.min_writes()} writes) = {run.requests['total'] / run.lower_bound():.3f}"))
    ratio = quiet.child.wall_s / quiet_full.child.wall_s
    if result["days_inactive"] == "formula":
        out.append(Verdict(f"[{size}] a quiet night's wall time <= {MAX_QUIET_WALL:.0%} of the full-read quiet night's "
                           f"(at {quiet.rps:g} requests/s)", ratio <= MAX_QUIET_WALL,
                           f"{quiet.child.wall_s:.2f} s vs {quiet_full.child.wall_s:.2f} s = {ratio:.1%}"))
    edited_night = arms["webhook"][CHANGED[-1]]
    reverted = sum(t.get("reverted_edits") or 0 for t in edited_night.tables.values())
    out.append(Verdict(f"[{size}] {edited_night.name}: reverted_edits = the records people edited",
                       reverted == edited_night.edited, f"{reverted} vs {edited_night.edited}"))
    equal, detail = result["bases_equal"]
    out.append(Verdict(f"[{size}] the final base equals the full-read run's (writable fields, links by `id`)",
                       equal, detail))
    if check_absolute:
        for arm in ARMS:
            peak = max(r.child.rss_mb for r in arms[arm])
            out.append(Verdict(f"[{size}] peak RSS <= {MAX_RSS_MB:g} MB [{arm}]", peak <= MAX_RSS_MB,
                               ", ".join(f"{r.name} {r.child.rss_mb:.0f} MB" for r in arms[arm])))
    for arm in ARMS:
        first, *after = arms[arm]
        if size in MAX_RSS_FIRST_MB:
            limit = MAX_RSS_FIRST_MB[size]
            out.append(Verdict(f"[{size}] {first.name} [{arm}]: peak RSS <= {limit:g} MB", first.child.rss_mb <= limit,
                               f"{first.child.rss_mb:.0f} MB"))
        if size in MAX_RSS_AFTER_FIRST_MB:
            limit = MAX_RSS_AFTER_FIRST_MB[size]
            for run in after:
                out.append(Verdict(f"[{size}] {run.name} [{arm}]: peak RSS <= {limit:g} MB", run.child.rss_mb <= limit,
                                   f"{run.child.rss_mb:.0f} MB"))
    if size in MAX_QUIET_CPU_S:
        out.append(Verdict(f"[{size}] {quiet.name} [webhook]: CPU <= {MAX_QUIET_CPU_S[size]:g} s",
                           quiet.child.cpu_s <= MAX_QUIET_CPU_S[size], f"{quiet.child.cpu_s:.2f} s"))
    return out


def counter_verdicts(result: dict) -> list[Verdict]:
    """Issue 21: the counter's first rewrite is not named; from the second on, every night's report
    names users.days_inactive as a day counter since last_active (its formula on the attention line)."""
    out = []
    for arm in ARMS:
        for night, run in enumerate(result["runs"][arm][1:], 1):
            named = [v for v in run.tables["users"].get("volatile_fields", []) if v["field"] == "days_inactive"]
            want = night >= FIRST_NAMED
            ok = (bool(named) == want and (not want or (named[0]["counts_days"]
                                                        and named[0]["counts_days_since"] == "last_active")))
            out.append(Verdict(f"[{result['size']}] {run.name} [{arm}]: users.days_inactive "
                               + ("named as a day counter since last_active" if want else "not named yet"), ok,
                               json.dumps(named) if named else "not named"))
    return out


def month_lines(result: dict) -> list[str]:
    """Each night after the first sync at Airtable's 5 requests/s, and a month of such nights
    against Team's 100,000 calls: requests, and wall time = requests / 5 + the sync's CPU."""
    lines = []
    for run in result["runs"]["webhook"][1:]:
        wall = run.requests["total"] / REAL_RPS + run.child.cpu_s
        month = 30 * run.requests["total"]
        lines.append(f"  {run.name}: {run.requests['total']:,} requests ({run.requests['write']:,} write), "
                     f"{wall:.1f} s at {REAL_RPS} requests/s; 30 such nights {month:,} calls, "
                     f"{month / TEAM_MONTHLY_CALLS:.1%} of Team's {TEAM_MONTHLY_CALLS:,}")
    return lines


TEAM_MONTHLY_CALLS = 100_000


def figures(result: dict) -> dict:
    """What the slope needs of a size's runs, for --figures and --slope-against."""
    return {"size": result["size"], "records": sum(result["totals"].values()),
            "runs": {arm: [{"name": r.name, "cpu_s": r.child.cpu_s, "rss_mb": r.child.rss_mb, "wall_s": r.child.wall_s,
                            "requests": r.requests["total"] if r.report else None} for r in result["runs"][arm]]
                     for arm in ARMS}}


def slope_verdicts(small: dict, big: dict) -> list[Verdict]:
    """Issue 15: per night after the first sync and per arm, (RSS big - RSS small) / (records big -
    records small) at most MAX_SLOPE_KB; the first sync's slope is printed, not held to it."""
    out = []
    records = big["records"] - small["records"]
    for arm in ARMS:
        for night, (a, b) in enumerate(zip(small["runs"][arm], big["runs"][arm])):
            slope_kb = (b["rss_mb"] - a["rss_mb"]) * 1024 / records  # MB -> KB, per record
            detail = (f"({b['rss_mb']:.0f} - {a['rss_mb']:.0f} MB) / ({big['records']:,} - {small['records']:,} records)"
                      f" = {slope_kb:.2f} KB a record")
            if night == 0:
                print(f"  slope, {a['name']} [{arm}] (no target: it happens once): {detail}")
                continue
            out.append(Verdict(f"[{small['size']} -> {big['size']}] {a['name']} [{arm}]: slope <= {MAX_SLOPE_KB:g} KB a record",
                               slope_kb <= MAX_SLOPE_KB, detail))
    return out


def scale_verdicts(small: dict, big: dict) -> list[Verdict]:
    first_a, first_b = small["runs"]["off"][0], big["runs"]["off"][0]
    cpu_a, cpu_b = first_a.child.cpu_s, first_b.child.cpu_s
    rss_a = max(r.child.rss_mb for arm in ARMS for r in small["runs"][arm])
    rss_b = max(r.child.rss_mb for arm in ARMS for r in big["runs"][arm])
    return [
        Verdict(f"[{big['size']} vs {small['size']}] CPU of the first sync <= {MAX_SCALE:g}x", cpu_b <= MAX_SCALE * cpu_a,
                f"{cpu_b:.2f} s vs {cpu_a:.2f} s = {cpu_b / cpu_a:.2f}x"),
        Verdict(f"[{big['size']} vs {small['size']}] peak RSS <= {MAX_SCALE:g}x", rss_b <= MAX_SCALE * rss_a,
                f"{rss_b:.0f} MB vs {rss_a:.0f} MB = {rss_b / rss_a:.2f}x"),
    ]


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs (nproc), {model}, Python {sys.version.split()[0]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("small", "10k", "100k", "all"), default="10k",
                        help="small 1,000/50/2,000; 10k 10,000/500/20,000 (default); 100k 100,000/5,000/200,000; "
                             "all: 10k then 100k and the scaling target")
    parser.add_argument("--rps", type=float, help="requests/s for the emulator and AIRTABLE_MAX_RPS "
                        f"(default {DEFAULT_RPS['10k']} for small/10k, {DEFAULT_RPS['100k']} for 100k)")
    parser.add_argument("--rerun-rps", type=float, help="requests/s for the nights after the first sync (default "
                        f"{REAL_RPS}, Airtable's own, for small/10k; {DEFAULT_RERUN_RPS['100k']} for 100k)")
    parser.add_argument("--days-inactive", choices=("exported", "formula"), default="exported",
                        help="exported (default): Users' days_inactive is a number column the sync fills, and the "
                        "export moves it every night, as the seed's exporter does; formula: the column is the "
                        f"formula {DAYS_INACTIVE_FORMULA}, which the sync never writes")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (exports, reports, logs)")
    parser.add_argument("--figures", metavar="PATH", help="write each size's peak RSS, CPU and wall time per night "
                        "to PATH (JSON), for --slope-against")
    parser.add_argument("--slope-against", metavar="PATH", help="with --size 100k: the 10k figures written by an "
                        "earlier --figures run, for the memory slope (--size all measures both)")
    parser.add_argument("--serve-emulator", metavar="BASE_JSON", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_emulator:
        return serve_emulator(args.serve_emulator, args.rps or 0, TOKEN)

    sizes = ["10k", "100k"] if args.size == "all" else [args.size]
    work = Path(tempfile.mkdtemp(prefix="airtable-sync-bench-"))
    out = sys.stdout
    print(f"Machine: {machine()}", flush=True)
    print(f"Command: python tests/benchmark.py --size {args.size}" + (f" --rps {args.rps:g}" if args.rps else "")
          + (f" --rerun-rps {args.rerun_rps:g}" if args.rerun_rps else "")
          + f" --days-inactive {args.days_inactive}", flush=True)
    print(f"Work folder: {work}", flush=True)
    results = {}
    try:
        startup = startup_cost(work)
        print(f"Python start-up + importing airtable_sync: {startup.cpu_s:.2f} s CPU, {startup.rss_mb:.0f} MB RSS "
              f"(included in every run's figures)", flush=True)
        for size in sizes:
            results[size] = bench_size(size, args.rps or DEFAULT_RPS[size],
                                       args.rerun_rps or DEFAULT_RERUN_RPS[size], work, out, args.days_inactive)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    if args.figures:
        Path(args.figures).write_text(json.dumps({size: figures(r) for size, r in results.items()}, indent=1))
    all_verdicts: list[Verdict] = []
    for size, result in results.items():
        print(f"\n### {size}: {result['totals']['users']:,} users, {result['totals']['events']:,} events, "
              f"{result['totals']['messages']:,} messages at {result['rps']:g} requests/s "
              f"(reruns at {result['rerun_rps']:g})\n")
        print("\n".join(table_rows(result)))
        print()
        print("\n".join(detail_rows(result)))
        print(f"\nThe nights at Airtable's {REAL_RPS} requests/s, days_inactive {result['days_inactive']}:")
        print("\n".join(month_lines(result)))
        print()
        for arm in ARMS:
            for run in result["runs"][arm]:
                print("time: " + time_breakdown(run))
        # The absolute RSS target is for the 10k set (and holds a fortiori for small); 100k is held to
        # 10x the 10k figures, or 10x the 10k RSS target when the 10k set was not run.
        v = verdicts(result, check_absolute=size != "100k")
        if size == "100k":
            small = figures(results["10k"]) if "10k" in results else (
                json.loads(Path(args.slope_against).read_text())["10k"] if args.slope_against else None)
            if small is not None:
                print()
                v += slope_verdicts(small, figures(result))
            if "10k" in results:
                v += scale_verdicts(results["10k"], result)
            else:
                peak = max(r.child.rss_mb for arm in ARMS for r in result["runs"][arm])
                v += [Verdict(f"[100k] peak RSS <= {MAX_SCALE:g}x the 10k target (10k not run)",
                              peak <= MAX_SCALE * MAX_RSS_MB, f"{peak:.0f} MB")]
        all_verdicts += v
        if any(not x.ok and "wall" in x.name for x in v):
            print("\nA wall-time target missed; where the time goes is above (time: ...).")
    print(f"\nAt Airtable's real {REAL_RPS} requests/s: " + "; ".join(
        f"{size} {run.name} [{run.arm}] {run.requests['total'] / REAL_RPS / 60:.1f} min"
        for size, result in results.items() for arm in ARMS for run in result["runs"][arm] if run.report))
    print("\nTargets:")
    for v in all_verdicts:
        print(f"  {'PASS' if v.ok else 'FAIL'}  {v.name}: {v.detail}")
    ok = all(v.ok for v in all_verdicts)
    print(f"\n{'ALL TARGETS PASS' if ok else 'SOME TARGETS FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
