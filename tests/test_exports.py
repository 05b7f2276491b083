"""Loading exports: every layout mongoexport writes, and Extended JSON from every writer.

The fixtures are generated here with pymongo's bson.json_util (MongoDB's own Extended JSON
writer for Python), in canonical, relaxed and legacy modes, and laid out as mongoexport lays
out its output (mongo-tools, mongoexport/json.go):
- default: one compact document a line;
- --jsonArray: "[" + documents joined by "," + "]\n", on one line;
- --pretty: each document indented with tabs, documents joined by "\n", then "\n";
- --jsonArray --pretty: "[" + indented documents joined by ",\n" + "]\n" + "\n".
mongoexport itself (mongo-tools 100.x) writes a subtype 4 UUID as {"$uuid": "<hyphenated>"};
pymongo cannot, so the "mongoexport" writers below are pymongo's output with that one change.
"""
from __future__ import annotations

import base64
import json
import math
import re
import uuid
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from bson import Binary, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp, json_util
from bson.binary import UuidRepresentation
from bson.datetime_ms import DatetimeMS
from bson.json_util import CANONICAL_JSON_OPTIONS, LEGACY_JSON_OPTIONS, RELAXED_JSON_OPTIONS

import airtable_sync as sync
from conftest import load_export, parse_export
from airtable_sync import Invalid

UTC = timezone.utc
STANDARD = UuidRepresentation.STANDARD
PYTHON_LEGACY = UuidRepresentation.PYTHON_LEGACY

USER_UUID = uuid.UUID("c8edabc3-f738-4ca3-b68d-ab92a91478a3")
ID_UUID = uuid.UUID("0f8fad5b-d9cb-469f-a165-70867728950e")
NESTED_UUID = uuid.UUID("7c9e6679-7425-40de-944b-e07fc1f90ae7")
OID = ObjectId("57e193d7a9cc81b4027498b5")
NESTED_OID = ObjectId("665c89eb52a198e847c54d7e")
MOMENT = datetime(2024, 3, 5, 18, 30, 0, 537000, tzinfo=UTC)


def documents() -> list[dict]:
    """Documents holding every BSON type the exports can carry."""
    return [
        {
            "_id": OID,
            "email": "maria.lopez@example.com",
            "user_id": USER_UUID,
            "long": Int64(2**40 + 1),
            "int": 42,
            "double": 2.5,
            "whole_double": 3.0,
            "nan": float("nan"),
            "inf": float("inf"),
            "ninf": float("-inf"),
            "decimal": Decimal128("645.50"),
            "createdAt": MOMENT,
            "epoch": datetime(1970, 1, 1, tzinfo=UTC),
            "birthDay": datetime(1960, 5, 14, 23, 59, 59, 1000, tzinfo=UTC),  # before 1970
            "ancient": datetime(1, 1, 1, tzinfo=UTC),
            "far_future": datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC),
            "past_9999": DatetimeMS(253402300800000 + 86_400_000),  # no Python datetime holds it
            "nested": {"when": MOMENT, "ids": [NESTED_OID, NESTED_UUID], "n": Int64(5), "d": Decimal128("1.10")},
            "tags": ["Cooking", Int64(7), 2.5],
            "null": None,
            "flag": True,
            # kept as the writer wrote them
            "blob": Binary(b"\x00\x01binary", 0),
            "old_uuid": Binary(USER_UUID.bytes, 3),
            "user_defined": Binary(b"123", 0x80),
            "ts": Timestamp(42, 1),
            "regex": Regex("^foo.*", "ix"),
            "min": MinKey(),
            "max": MaxKey(),
        },
        {"_id": ID_UUID, "email": "u2@example.com", "createdAt": datetime(2025, 2, 28, 9, tzinfo=UTC)},
        {"id": "U03", "_id": NESTED_OID, "email": "u3@example.com", "event_count": Int64(0)},
    ]


def mongoexport_uuids(value):
    """pymongo's subtype 4 $binary -> mongoexport's {"$uuid": "<hyphenated>"} (mongoexport/json.go), recursively."""
    if isinstance(value, list):
        return [mongoexport_uuids(v) for v in value]
    if not isinstance(value, dict):
        return value
    binary = value.get("$binary")
    if len(value) == 1 and isinstance(binary, dict) and binary.get("subType") == "04":
        return {"$uuid": str(uuid.UUID(bytes=base64.b64decode(binary["base64"])))}
    return {k: mongoexport_uuids(v) for k, v in value.items()}


WRITERS = {
    # name: (JSONOptions, post-processing)
    "canonical": (CANONICAL_JSON_OPTIONS.with_options(uuid_representation=STANDARD), None),
    "relaxed": (RELAXED_JSON_OPTIONS.with_options(uuid_representation=STANDARD), None),
    # pymongo's legacy mode writes {"$uuid": "<32 hex, no hyphens>"}, $date as ms, bare NaN/Infinity
    "legacy": (LEGACY_JSON_OPTIONS.with_options(uuid_representation=STANDARD), None),
    # ... and with strict_uuid the legacy two-key {"$binary": b, "$type": "04"}
    "legacy-strict-uuid": (LEGACY_JSON_OPTIONS.with_options(uuid_representation=STANDARD, strict_uuid=True), None),
    "mongoexport-relaxed": (RELAXED_JSON_OPTIONS.with_options(uuid_representation=STANDARD), mongoexport_uuids),
    "mongoexport-canonical": (CANONICAL_JSON_OPTIONS.with_options(uuid_representation=STANDARD), mongoexport_uuids),
}


def dump(doc: dict, writer: str, **kwargs) -> str:
    options, post = WRITERS[writer]
    if post is None:
        return json_util.dumps(doc, json_options=options, **kwargs)
    return json.dumps(post(json.loads(json_util.dumps(doc, json_options=options))), **kwargs)


def compact(doc: dict, writer: str) -> str:
    return dump(doc, writer, separators=(",", ":"))  # Go's Extended JSON writer has no spaces


def indented(doc: dict, writer: str) -> str:
    return dump(doc, writer, indent="\t")  # Go's json.Indent(dst, src, "", "\t")


LAYOUTS = {
    "json-lines": lambda docs, w: "".join(compact(d, w) + "\n" for d in docs),
    "jsonArray": lambda docs, w: "[" + ",".join(compact(d, w) for d in docs) + "]\n",
    "pretty": lambda docs, w: "\n".join(indented(d, w) for d in docs) + "\n",
    "jsonArray-pretty": lambda docs, w: "[" + ",\n".join(indented(d, w) for d in docs) + "]\n\n",
}

COMBINATIONS = [(w, layout) for w in WRITERS for layout in LAYOUTS]


def load(tmp_path: Path, text: str, name: str = "users.json") -> list[sync.ExportRecord]:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return load_export(path, limit=None)


# Fields and the Airtable types they are compared through: unwrapped values must convert the same
# whoever wrote them.
CONVERTED = [
    ("email", "singleLineText"), ("user_id", "singleLineText"), ("long", "number"), ("long", "singleLineText"),
    ("int", "number"), ("double", "number"), ("double", "singleLineText"), ("whole_double", "number"),
    ("nan", "number"), ("inf", "number"), ("ninf", "singleLineText"), ("decimal", "number"),
    ("decimal", "singleLineText"), ("createdAt", "dateTime"), ("createdAt", "date"),
    ("createdAt", "singleLineText"), ("epoch", "dateTime"), ("birthDay", "dateTime"), ("birthDay", "date"),
    ("ancient", "dateTime"), ("far_future", "dateTime"), ("far_future", "multilineText"),
    ("past_9999", "multilineText"), ("nested", "multilineText"), ("tags", "multilineText"),
    ("tags", "multipleSelects"), ("null", "singleLineText"), ("flag", "checkbox"), ("ts", "multilineText"),
    ("min", "multilineText"), ("max", "multilineText"),
]


def converted(record: sync.ExportRecord) -> dict:
    out = {}
    for name, field_type in CONVERTED:
        if name in record.doc:
            try:
                out[name, field_type] = sync.convert_value(record.doc[name], field_type)
            except Invalid:
                out[name, field_type] = Invalid
    return out


EXPECTED_FIRST = {
    ("email", "singleLineText"): "maria.lopez@example.com",
    ("user_id", "singleLineText"): str(USER_UUID),
    ("long", "number"): 2**40 + 1,
    ("long", "singleLineText"): str(2**40 + 1),
    ("int", "number"): 42,
    ("double", "number"): 2.5,
    ("double", "singleLineText"): "2.5",
    ("whole_double", "number"): 3.0,
    ("nan", "number"): None,
    ("inf", "number"): None,
    ("ninf", "singleLineText"): None,
    ("decimal", "number"): 645.5,
    ("decimal", "singleLineText"): "645.50",
    ("createdAt", "dateTime"): "2024-03-05T18:30:00.537Z",
    ("createdAt", "date"): "2024-03-05",
    ("createdAt", "singleLineText"): "2024-03-05T18:30:00.537Z",
    ("epoch", "dateTime"): "1970-01-01T00:00:00.000Z",
    ("birthDay", "dateTime"): "1960-05-14T23:59:59.001Z",
    ("birthDay", "date"): "1960-05-14",
    ("ancient", "dateTime"): "0001-01-01T00:00:00.000Z",
    ("far_future", "dateTime"): "9999-12-31T23:59:59.999Z",
    ("far_future", "multilineText"): "9999-12-31T23:59:59.999Z",
    # beyond what a date can hold: kept, and the same text from every writer
    ("past_9999", "multilineText"): '{"$date":253402387200000}',
    ("nested", "multilineText"): json.dumps({"when": "2024-03-05T18:30:00.537Z", "ids": [str(NESTED_OID),
                                             str(NESTED_UUID)], "n": 5, "d": 1.1},
                                            sort_keys=True, separators=(",", ":")),
    ("tags", "multilineText"): "Cooking, 7, 2.5",
    ("tags", "multipleSelects"): ["Cooking", "7", "2.5"],
    ("null", "singleLineText"): None,
    ("flag", "checkbox"): True,
    ("ts", "multilineText"): '{"$timestamp":{"i":1,"t":42}}',
    ("min", "multilineText"): '{"$minKey":1}',
    ("max", "multilineText"): '{"$maxKey":1}',
}


@pytest.mark.parametrize("writer, layout", COMBINATIONS)
def test_every_writer_and_layout_loads_to_the_same_plain_records(tmp_path, writer, layout):
    records = load(tmp_path, LAYOUTS[layout](documents(), writer))
    assert [r.index for r in records] == [0, 1, 2]
    assert [r.mongo_id for r in records] == [str(OID), str(ID_UUID), "U03"]
    first = records[0].doc
    assert first["user_id"] == str(USER_UUID)
    assert first["nested"]["ids"] == [str(NESTED_OID), str(NESTED_UUID)]
    assert first["createdAt"] == MOMENT and first["birthDay"] == datetime(1960, 5, 14, 23, 59, 59, 1000, tzinfo=UTC)
    assert first["long"] == 2**40 + 1 and type(first["long"]) is int
    assert first["decimal"] == Decimal("645.50")
    assert math.isnan(first["nan"]) and first["inf"] == math.inf and first["ninf"] == -math.inf
    assert converted(records[0]) == EXPECTED_FIRST
    assert converted(records[1]) == {("email", "singleLineText"): "u2@example.com"} | {
        ("createdAt", t): v for t, v in [("dateTime", "2025-02-28T09:00:00.000Z"), ("date", "2025-02-28"),
                                         ("singleLineText", "2025-02-28T09:00:00.000Z")]}
    assert records[2].doc["_id"] == str(NESTED_OID) and records[2].doc["event_count"] == 0


def test_all_combinations_agree_record_for_record(tmp_path):
    seen = {}
    for writer, layout in COMBINATIONS:
        records = load(tmp_path, LAYOUTS[layout](documents(), writer))
        seen[writer, layout] = [(r.mongo_id, converted(r)) for r in records]
    reference = seen["canonical", "json-lines"]
    assert all(result == reference for result in seen.values())


KEPT = ["blob", "old_uuid", "user_defined", "ts", "regex", "min", "max"]


@pytest.mark.parametrize("writer, layout", COMBINATIONS)
def test_other_wrappers_are_kept_as_the_writer_wrote_them(tmp_path, writer, layout):
    doc = documents()[0]
    records = load(tmp_path, LAYOUTS[layout]([doc], writer))
    for name in KEPT:
        as_written = json.loads(compact({name: doc[name]}, writer))[name]
        assert records[0].doc[name] == as_written, name


def test_the_writers_really_differ_in_how_they_spell_uuids_and_kept_wrappers():
    """Guards the fixtures: each writer spells a UUID its own way, and legacy spells kept wrappers differently."""
    doc = {"u": USER_UUID, "r": Regex("a", "i"), "b": Binary(b"123", 0)}
    spelled = {w: json.loads(compact(doc, w)) for w in WRITERS}
    assert spelled["canonical"]["u"] == {"$binary": {"base64": "yO2rw/c4TKO2jauSqRR4ow==", "subType": "04"}}
    assert spelled["legacy"]["u"] == {"$uuid": "c8edabc3f7384ca3b68dab92a91478a3"}
    assert spelled["legacy-strict-uuid"]["u"] == {"$binary": "yO2rw/c4TKO2jauSqRR4ow==", "$type": "04"}
    assert spelled["mongoexport-relaxed"]["u"] == {"$uuid": str(USER_UUID)}
    assert spelled["canonical"]["r"] == {"$regularExpression": {"pattern": "a", "options": "i"}}
    assert spelled["legacy"]["r"] == {"$regex": "a", "$options": "i"}
    assert spelled["legacy"]["b"] == {"$binary": "MTIz", "$type": "00"}
    for layout in LAYOUTS.values():
        text = layout([doc], "mongoexport-relaxed")
        assert str(USER_UUID) in text and '"04"' not in text  # mongoexport's $uuid, in every layout


def test_old_drivers_subtype_3_uuids_are_kept_as_written(tmp_path):
    """pymongo with PYTHON_LEGACY writes a UUID as Binary subtype 3 in canonical and relaxed mode; its byte
    order depends on the driver, so it is kept. (Its legacy mode writes any UUID as $uuid, a UUID.)"""
    doc = {"_id": OID, "ref": USER_UUID}
    for options in (CANONICAL_JSON_OPTIONS, RELAXED_JSON_OPTIONS):
        text = json_util.dumps(doc, json_options=options.with_options(uuid_representation=PYTHON_LEGACY))
        (record,) = load(tmp_path, text + "\n")
        assert record.doc["ref"] == {"$binary": {"base64": "yO2rw/c4TKO2jauSqRR4ow==", "subType": "03"}}
    text = json_util.dumps(doc, json_options=LEGACY_JSON_OPTIONS.with_options(uuid_representation=PYTHON_LEGACY))
    assert load(tmp_path, text)[0].doc["ref"] == str(USER_UUID)


def test_a_kept_wrapper_as_id_is_its_sorted_json_not_python_repr():
    doc = sync.unwrap_extended_json({"_id": {"$binary": {"subType": "03", "base64": "yO2rw/c4TKO2jauSqRR4ow=="}}})
    assert sync.mongo_id_of(doc) == '{"$binary":{"base64":"yO2rw/c4TKO2jauSqRR4ow==","subType":"03"}}'
    assert sync.mongo_id_of({"_id": MOMENT}) == "2024-03-05T18:30:00.537Z"


# -- UUID and other forms, one by one -------------------------------------------------

HYPHENATED = str(USER_UUID)
B64 = base64.b64encode(USER_UUID.bytes).decode()


@pytest.mark.parametrize("wrapper", [
    {"$uuid": HYPHENATED},
    {"$uuid": HYPHENATED.upper()},
    {"$uuid": USER_UUID.hex},
    {"$uuid": "urn:uuid:" + HYPHENATED},
    {"$binary": {"base64": B64, "subType": "04"}},
    {"$binary": {"base64": B64, "subType": "4"}},
    {"$binary": {"subType": "04", "base64": B64}},
    {"$binary": B64, "$type": "04"},
    {"$binary": B64, "$type": "4"},
    {"$type": "04", "$binary": B64},
])
def test_every_uuid_form_becomes_the_lowercase_hyphenated_string(wrapper):
    assert sync.unwrap_extended_json({"v": wrapper}) == {"v": HYPHENATED}
    assert parse_export(Path("u.json"), json.dumps({"v": wrapper}).encode()) == [{"v": HYPHENATED}]


@pytest.mark.parametrize("wrapper", [
    {"$uuid": "c8edabc3-f738-4ca3b68d-ab92a91478a3"},  # hyphens in some places only
    {"$uuid": "c8edabc3f7384ca3b68dab92a91478a"},  # 31 digits
    {"$uuid": 5},
    {"$binary": {"base64": base64.b64encode(b"fifteen bytes!!").decode(), "subType": "04"}},
    {"$binary": {"base64": "not base64!", "subType": "04"}},
    {"$binary": {"base64": B64, "subType": "03"}},
    {"$binary": {"base64": B64, "subType": "004"}},
    {"$binary": {"base64": B64, "subType": 4}},
    {"$binary": B64, "$type": "03"},
    {"$binary": B64, "$type": 4},
    {"$binary": {"base64": B64, "subType": "04", "extra": 1}},
    {"$type": "string"},  # the $type query operator
    {"$regex": "^a", "$options": "i"},
])
def test_a_uuid_lookalike_or_another_binary_is_kept(wrapper):
    assert sync.unwrap_extended_json({"v": wrapper}) == {"v": wrapper}


def test_non_finite_doubles_in_every_spelling():
    out = sync.unwrap_extended_json({"a": {"$numberDouble": "Infinity"}, "b": {"$numberDouble": "-Infinity"},
                                     "c": {"$numberDouble": "NaN"}})
    assert out["a"] == math.inf and out["b"] == -math.inf and math.isnan(out["c"])
    legacy = parse_export(Path("l.json"), b'{"a": NaN, "b": -Infinity, "c": Infinity}\n')
    assert math.isnan(legacy[0]["a"]) and legacy[0]["b"] == -math.inf and legacy[0]["c"] == math.inf


def test_dates_in_milliseconds_are_exact():
    ms = -315_619_199_999  # 1960-01-01T00:00:00.001Z
    for wrapper in ({"$date": ms}, {"$date": {"$numberLong": str(ms)}}):
        assert sync.unwrap_extended_json(wrapper) == datetime(1960, 1, 1, 0, 0, 0, 1000, tzinfo=UTC)


# -- layouts and their errors -----------------------------------------------------------

def test_documents_one_after_another_on_one_line_or_spread_over_many():
    raw = b'{"a": 1} {"a": 2}\n\n  {\n  "a": 3\n}\r\n{"a":\n4}'
    assert parse_export(Path("x.json"), raw) == [{"a": 1}, {"a": 2}, {"a": 3}, {"a": 4}]


def pretty_file(tmp_path: Path) -> tuple[Path, str]:
    docs = [{"_id": ObjectId(), "n": i, "email": f"u{i}@example.com", "tags": ["a", "b"]} for i in range(3)]
    text = LAYOUTS["pretty"](docs, "relaxed")
    return tmp_path / "users.json", text


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    pos = -1
    for _ in range(occurrence):
        pos = text.index(needle, pos + 1)
    return text.count("\n", 0, pos) + 1


def error_of(path: Path, text: str) -> str:
    path.write_text(text)
    with pytest.raises(sync.UsageError) as caught:
        load_export(path, limit=None)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    return message


def test_an_error_in_a_pretty_file_names_its_line_and_column(tmp_path):
    path, text = pretty_file(tmp_path)
    assert len(parse_export(path, text.encode())) == 3
    broken = text.replace('"n": 1,', '"n": 1', 1)  # the second document loses a comma
    line = line_of(broken, '"email": "u1@')
    assert re.search(rf": line {line}: not valid JSON: Expecting ',' delimiter \(column 2, "
                     rf"in the document from line {line_of(broken, chr(10) + '{') + 1}\)$", error_of(path, broken))


def test_a_pretty_file_cut_short_names_the_last_line(tmp_path):
    path, text = pretty_file(tmp_path)
    cut = text[:text.rindex('"tags"')]
    last_line = cut.count("\n") + 1
    assert f": line {last_line}: not valid JSON: " in error_of(path, cut)


def test_a_json_lines_line_missing_its_brace_is_named(tmp_path):
    path = tmp_path / "messages.json"
    message = error_of(path, '{"id": "m1"}\n{"id": "m2"\n{"id": "m3"}\n')
    assert ": line 3: not valid JSON: Expecting ',' delimiter (column 1, in the document from line 2)" in message


def test_a_value_that_is_not_a_document_in_a_pretty_file_names_its_line(tmp_path):
    path, text = pretty_file(tmp_path)
    message = error_of(path, text + "\n[1, 2]\n")
    assert message.endswith(f": line {text.count(chr(10)) + 2} is not a JSON object (list)")


def test_documents_without_whitespace_between_them_are_refused(tmp_path):
    message = error_of(tmp_path / "events.json", '{"a": 1}\n{"a": 2}{"a": 3}\n')
    assert message.endswith(": line 2: not valid JSON: a document follows the previous one without whitespace "
                            "between them (column 9)")


def test_an_array_error_names_line_and_column(tmp_path):
    # The tool promises the file, the line and the column; the reason between them is the json
    # module's own wording, which Python 3.13 changed for this very case ("Illegal trailing comma
    # before end of object", pointing at the comma rather than at the brace after it).
    path = tmp_path / "users.json"
    text = '[\n  {"a": 1},\n  {"a": 2,}\n]\n'
    message = error_of(path, text)
    found = re.fullmatch(rf"{re.escape(str(path))}: line 3: not valid JSON: \S.* \(column (\d+)\)", message)
    assert found, message
    assert text.splitlines()[2][int(found[1]) - 1] in ",}"  # the trailing comma, or the brace it stands before


def test_bad_utf8_names_its_line_and_offset_after_a_bom(tmp_path):
    path = tmp_path / "users.json"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\n{"a": "Jos\xe9"}\n')
    with pytest.raises(sync.UsageError, match=r"users.json: line 2: not valid UTF-8 \(byte 0xe9 at offset 22\)$"):
        load_export(path, limit=None)
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\n')
    assert load_export(path, limit=None)[0].doc == {"a": 1}


def test_the_limit_applies_to_pretty_files(tmp_path):
    path, text = pretty_file(tmp_path)
    path.write_text(text)
    assert [r.doc["n"] for r in load_export(path, limit=2)] == [0, 1]


def test_a_large_pretty_export_loads(tmp_path):
    docs = [{"_id": ObjectId(), "user_id": uuid.uuid4(), "n": Int64(i), "at": MOMENT} for i in range(20_000)]
    records = load(tmp_path, LAYOUTS["pretty"](docs, "canonical"))
    assert len(records) == 20_000 and records[-1].doc["n"] == 19_999
    assert records[-1].doc["user_id"] == str(docs[-1]["user_id"])


# -- a stream, not a whole file ------------------------------------------------------------

@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_documents_cut_by_every_chunk_boundary_load_the_same(tmp_path, monkeypatch, layout, encoding):
    """The export is read a chunk at a time: a document, a string, a number or a UTF-8 character
    cut by a chunk's end is read whole, for chunks of any size. Each record is read again from
    where the first pass found it in the file, after a BOM and characters of 2 to 4 bytes."""
    docs = [{"_id": ObjectId(), "n": Int64(i), "name": "José 北京菜 café 🍜", "at": MOMENT} for i in range(4)]
    path = tmp_path / "users.json"
    path.write_text(LAYOUTS[layout](docs, "canonical"), encoding=encoding)
    whole = load_export(path, limit=None)
    for chunk in (1, 2, 3, 7, 64):
        monkeypatch.setattr(sync, "READ_CHUNK", chunk)
        assert load_export(path, limit=None) == whole
    assert [r.doc["n"] for r in whole] == [0, 1, 2, 3] and whole[0].doc["name"] == "José 北京菜 café 🍜"


@pytest.mark.parametrize("chunk", [1, 5, 1 << 20])
def test_errors_name_the_same_line_and_column_whatever_the_chunk(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(sync, "READ_CHUNK", chunk)
    path = tmp_path / "users.json"
    # The file, the line and the column are the tool's promise; json's wording is not (Python 3.13
    # says "Illegal trailing comma" and points at the comma, column 10, where 3.11 points at the brace).
    trailing = error_of(path, '[\n  {"a": 1},\n  {"a": 2,}\n]\n')
    assert trailing.startswith(f"{path}: line 3: not valid JSON: ")
    assert trailing.endswith(("(column 10)", "(column 11)"))
    assert error_of(path, '[{"a": 1} {"a": 2}]') == f"{path}: line 1: not valid JSON: Expecting ',' delimiter (column 11)"
    assert error_of(path, '[{"a": 1}] x') == f"{path}: line 1: not valid JSON: Extra data (column 12)"
    assert error_of(path, '{"a": 1} {"a": 2}{"a": 3}\n').endswith(
        ": line 1: not valid JSON: a document follows the previous one without whitespace between them (column 18)")
    message = error_of(tmp_path / "messages.json", '{"id": "m1"}\n{"id": "m2"\n{"id": "m3"}\n')
    assert ": line 3: not valid JSON: Expecting ',' delimiter (column 1, in the document from line 2)" in message
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\n{"a": "Jos\xe9"}\n')
    with pytest.raises(sync.UsageError, match=r"users.json: line 2: not valid UTF-8 \(byte 0xe9 at offset 22\)$"):
        load_export(path, limit=None)


def test_the_export_is_parsed_whole_even_past_the_limit(tmp_path):
    path = tmp_path / "users.json"
    path.write_text('{"id": "a"}\n{"id": "b"}\n{"id": \n')
    with pytest.raises(sync.UsageError, match="line 4: not valid JSON: Expecting value .column 1, in the document from line 3."):
        load_export(path, limit=1)


# -- read again from the file, which must not change meanwhile -------------------------------

def test_records_are_read_again_from_the_export_itself_with_only_where_they_are_in_memory(tmp_path):
    text = LAYOUTS["jsonArray-pretty"]([{"_id": ObjectId(), "name": "Zoë 北京", "n": i} for i in range(3)], "relaxed")
    path = tmp_path / "users.json"
    path.write_text(text, encoding="utf-8-sig")
    index = sync.index_export(path, limit=None)
    try:
        raw = path.read_bytes()
        texts = [raw[o:o + n] for o, n in zip(index.offsets, index.sizes)]
        assert [json.loads(t)["n"] for t in texts] == [0, 1, 2]  # each is exactly one document's bytes
        assert [index.load(i).doc["name"] for i in range(3)] == ["Zoë 北京"] * 3
        assert list(tmp_path.iterdir()) == [path]  # no copy of the export anywhere
    finally:
        index.close()


def test_an_export_rewritten_while_the_run_reads_it_stops_before_anything_is_written(tmp_path):
    """An exporter that rewrites the file in place while a run reads it would hand the plan other
    records than the ones checked: the record's digest says so, and the run stops (exit 2)."""
    path = tmp_path / "messages.json"
    path.write_text("".join(json.dumps({"id": f"m{i}", "status": "sent"}) + "\n" for i in range(3)))
    index = sync.index_export(path, limit=None)
    try:
        with open(path, "r+b") as rewrite:  # same inode, same length, other content
            rewrite.seek(index.offsets[1] + index.sizes[1] - 7)
            rewrite.write(b"draft\"}")
        assert index.load(0).doc == {"id": "m0", "status": "sent"}
        with pytest.raises(sync.UsageError, match=r"messages.json: the file changed while this run read it \(record 2 "):
            index.load(1)
    finally:
        index.close()


def test_an_export_replaced_by_a_new_file_meanwhile_is_read_as_it_was(tmp_path):
    """An exporter that writes a new file and renames it over the old one leaves the run its own
    open file: the run syncs the export it checked."""
    path = tmp_path / "messages.json"
    path.write_text('{"id": "m0", "status": "sent"}\n')
    index = sync.index_export(path, limit=None)
    try:
        (tmp_path / "new.json").write_text('{"id": "m0", "status": "draft"}\n')
        (tmp_path / "new.json").replace(path)
        assert index.load(0).doc == {"id": "m0", "status": "sent"}
    finally:
        index.close()


# -- an export checked before, byte for byte ---------------------------------------------------

def saved_index(tmp_path: Path, text: str, limit: int | None = None) -> tuple[Path, Path, sync.ExportIndex]:
    path, saved = tmp_path / "messages.json", tmp_path / "export_messages.index"
    path.write_text(text, encoding="utf-8")
    index = sync.index_export(path, limit)
    saved.write_text(index.saved(limit))
    index.close()
    return path, saved, index


MESSAGES = "".join(json.dumps({"_id": {"$oid": f"66000000000000000000000{i}"}, "status": "sent", "text": "Zoë 🍜"},
                              ensure_ascii=False) + "\n" for i in range(5))


def test_the_index_of_an_export_checked_before_is_taken_instead_of_a_parse(tmp_path, monkeypatch):
    path, saved, first = saved_index(tmp_path, MESSAGES)
    monkeypatch.setattr(sync, "iter_documents_text", lambda *a, **k: pytest.fail("parsed again"))
    again = sync.index_export(path, None, saved)
    try:
        assert again.reused and again.mongo_ids == first.mongo_ids == [f"66000000000000000000000{i}" for i in range(5)]
        assert (again.offsets, again.sizes, again.digests, again.carried) == \
               (first.offsets, first.sizes, first.digests, first.carried)
        assert again.load(4).doc == {"_id": "660000000000000000000004", "status": "sent", "text": "Zoë 🍜"}
    finally:
        again.close()


@pytest.mark.parametrize("change", ["a byte", "the limit", "the tool", "the Python", "a broken index", "an index changed"])
def test_an_export_is_parsed_again_unless_its_bytes_rules_and_limit_are_those_indexed(tmp_path, monkeypatch, change):
    path, saved, _ = saved_index(tmp_path, MESSAGES)
    limit = None
    if change == "a byte":  # same size, one status changed: only the whole file's digest tells
        path.write_text(MESSAGES.replace('"sent"', '"SENT"', 1), encoding="utf-8")
    elif change == "the limit":
        limit = 2
    elif change == "the tool":
        monkeypatch.setattr(sync, "source_digest", lambda: b"another version")
    elif change == "the Python":
        monkeypatch.setattr(sync.sys, "version", "3.99.0")
    elif change == "a broken index":
        saved.write_bytes(saved.read_bytes()[:-40])
    else:  # the ids swapped: the index no longer matches its own digest
        check, body = saved.read_text().split("\n", 1)
        data = json.loads(body)
        saved.write_text(check + "\n" + json.dumps({**data, "mongo_ids": data["mongo_ids"][::-1]}))
    parsed = []
    first_pass = sync.iter_documents_text
    monkeypatch.setattr(sync, "iter_documents_text", lambda *a, **k: parsed.append(1) or first_pass(*a, **k))
    index = sync.index_export(path, limit, saved)
    try:
        assert parsed == [1] and not index.reused and len(index) == (2 if limit else 5)
        assert index.load(0).doc["status"] == ("SENT" if change == "a byte" else "sent")
    finally:
        index.close()
