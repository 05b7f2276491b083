#!/usr/bin/env python3
"""What the changes archive costs: the benchmark's 10k (or 100k) set, synced by this code and by
another version of airtable_sync.py (by default the commit just before the archive came, from git),
night by night.

    python tests/benchmark_changes.py [--size 10k|100k] [--other PATH] [--rps N]

Nights: the first sync, the night after it (its own payloads read back), 1% changed in Mongo,
then every user's `days_inactive` moved by one (the exporter computes it from today: every user
changes, every night). For each run: requests, wall and CPU seconds, peak RSS, and the changes
archive's size on disk.
docs/BENCHMARK.md has the figures.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import benchmark as bench

BEFORE_ARCHIVE = "17f0efd"  # the last commit without the changes archive (issue 20 came after it)
NIGHTS = ("first sync", "night after the first sync", "1% changed", "every user changed")


def every_user_changed(data: dict) -> None:
    """A day later: the exporter's days_inactive, computed from today, is one more for every user."""
    for doc in data["users"]:
        value = doc["days_inactive"]
        doc["days_inactive"] = {"$numberInt": str(int(value["$numberInt"] if isinstance(value, dict) else value) + 1)}


def run_arm(script: Path, data_size: str, rps: float, root: Path) -> list[dict]:
    data = bench.generate(data_size)
    mongo, base = root / "mongo", root / "BASE.json"
    bench.write_exports(data, mongo)
    bench.empty_base(base)
    emulator = bench.EmulatorProcess(base, rps, root / "emulator.log")
    rows = []
    try:
        for night in NIGHTS:
            if night == "1% changed":
                bench.change_one_percent(data, 42)
                bench.write_exports(data, mongo)
            elif night == "every user changed":
                every_user_changed(data)
                bench.write_exports(data, mongo)
            cmd = [sys.executable, str(script), "--mongo-dir", str(mongo), "--cache-dir", str(root / "data"),
                   "--reports-dir", str(root / "reports")]
            emulator.stats()
            child = bench.run_child(cmd, bench.sync_env(emulator, rps, "webhook"), root, root / "sync.log")
            server = emulator.stats()
            archives = sorted((root / "reports").glob("changed_*.jsonl"))
            size = archives[-1].stat().st_size if archives and night != "first sync" else 0
            lines = sum(1 for _ in open(archives[-1], "rb")) if size else 0
            rows.append({"night": night, "code": child.code, "requests": server.get("total"), "wall_s": child.wall_s,
                         "cpu_s": child.cpu_s, "rss_mb": child.rss_mb, "archive_bytes": size, "archive_lines": lines})
            for path in archives:
                path.rename(path.with_suffix(".done"))
    finally:
        emulator.close()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--other", type=Path, help="the other airtable_sync.py (default: the code just before the "
                        f"changes archive, {BEFORE_ARCHIVE[:7]}, from git)")
    parser.add_argument("--rps", type=float, default=200.0)
    parser.add_argument("--size", choices=("10k", "100k"), default="10k")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_changes_") as tmp:
        work = Path(tmp)
        other = args.other
        if other is None:
            other = work / "other" / "airtable_sync.py"
            other.parent.mkdir()
            other.write_bytes(subprocess.run(["git", "show", f"{BEFORE_ARCHIVE}:airtable_sync.py"], cwd=bench.ROOT,
                                             capture_output=True, check=True).stdout)
        for name, script in (("this code", bench.SYNC), (f"other ({other})", other)):
            (work / name[:4]).mkdir()
            print(f"\n== {name}", flush=True)
            print("| night | exit | requests | wall s | CPU s | peak RSS MB | archive | archive lines |")
            print("|---|---|---|---|---|---|---|---|")
            for row in run_arm(script, args.size, args.rps, work / name[:4]):
                print(f"| {row['night']} | {row['code']} | {row['requests']} | {row['wall_s']:.1f} | {row['cpu_s']:.2f} "
                      f"| {row['rss_mb']:.1f} | {row['archive_bytes'] / 1e6:.2f} MB | {row['archive_lines']:,} |",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
