"""Shared test set-up: the tool and the emulator importable, and a running emulator per test."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import json
import shutil
from dataclasses import dataclass, field

import pytest

FIXTURES = ROOT / "tests" / "fixtures"
TOKEN = "patTESTtoken00000.not-a-real-secret-0123456789abcdef"


@dataclass
class SyncHarness:
    """Runs airtable_sync.main() in-process against an emulator, in a temporary folder."""

    emulator: object
    tmp: Path
    env: dict = field(default_factory=dict)

    @property
    def mongo_dir(self) -> Path:
        return self.tmp / "mongo"

    @property
    def reports_dir(self) -> Path:
        return self.tmp / "reports"

    @property
    def cache_dir(self) -> Path:
        return self.tmp / "data"

    def argv(self, *extra: str) -> list[str]:
        return ["--mongo-dir", str(self.mongo_dir), "--cache-dir", str(self.cache_dir),
                "--reports-dir", str(self.reports_dir), *extra]

    def run(self, *extra: str, env: dict | None = None) -> int:
        import airtable_sync
        return airtable_sync.main(self.argv(*extra), environ={**self.env, **(env or {})})

    def reports(self) -> list[Path]:
        return sorted(self.reports_dir.glob("sync_report_*.json"), key=lambda p: p.stat().st_mtime_ns)

    def report(self) -> dict:
        return json.loads(self.reports()[-1].read_text())

    def write_export(self, name: str, docs: list[dict]) -> None:
        (self.mongo_dir / name).write_text(json.dumps(docs))

    def read_export(self, name: str) -> list[dict]:
        text = (self.mongo_dir / name).read_text()
        if text.lstrip().startswith("["):
            return json.loads(text)
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def parse_export(path: Path, raw: bytes) -> list[dict]:
    """An export's documents from its bytes, as the tool reads them."""
    import hashlib
    import io
    import airtable_sync
    documents = airtable_sync.iter_documents_text(path, io.BytesIO(raw), hashlib.blake2b())  # a digest no one reads
    return [airtable_sync.unwrap_extended_json(doc) for doc, _, _ in documents]


def load_export(path: Path, limit: int | None) -> list | None:
    """An export's records in memory, as the tool indexes them; None when the file is missing."""
    import airtable_sync
    index = airtable_sync.index_export(path, limit)
    if index is None:
        return None
    try:
        return list(index)
    finally:
        index.close()


def field_ids(emulator, table: str) -> dict[str, str]:
    """A table's field name -> field id, from the emulator's schema (the tool reads and writes by id)."""
    meta = next(t for t in emulator.schema()["tables"] if table in (t["id"], t["name"]))
    return {f["name"]: f["id"] for f in meta["fields"]}


def by_field_id(emulator, table: str, records: list[dict]) -> list[dict]:
    """Records as the API renders them with returnFieldsByFieldId, as the tool's caches hold them."""
    ids = field_ids(emulator, table)
    return [{**rec, "fields": {ids[name]: value for name, value in rec["fields"].items()}} for rec in records]


def make_env(emulator) -> dict:
    return {
        "AIRTABLE_API_KEY": emulator.token,
        "AIRTABLE_ENDPOINT_URL": emulator.url,
        "AIRTABLE_BASE_ID": emulator.base_id,
        "AIRTABLE_MAX_RPS": "1000",
        "AIRTABLE_TIMEOUT_S": "5",
        "AIRTABLE_MAX_RETRIES": "3",
    }


@pytest.fixture
def emulator():
    from airtable_emulator import Emulator
    with Emulator(FIXTURES / "base.json", token=TOKEN, rps=None) as emu:
        yield emu


@pytest.fixture
def harness(emulator, tmp_path) -> SyncHarness:
    h = SyncHarness(emulator, tmp_path, make_env(emulator))
    h.mongo_dir.mkdir()
    for name in ("users.json", "events.json", "messages.json"):
        shutil.copy(FIXTURES / name, h.mongo_dir / name)
    return h
