"""filterByFormula and formula fields: a small subset of Airtable's formula language
(parser, evaluator and the value conversions formulas use)."""

from __future__ import annotations

import datetime as dt
import math
import re
from typing import TYPE_CHECKING, Any

from .common import MSG_BAD_FORMULA, NUMERIC_RE, ApiError, clean_number, format_datetime

if TYPE_CHECKING:
    from .records import _Record, _Table

# --------------------------------------------------------------------------------------
# filterByFormula: a small subset of Airtable's formula language
# --------------------------------------------------------------------------------------


class FormulaError(Exception):
    """The formula cannot be parsed (-> 422 INVALID_FILTER_BY_FORMULA)."""


class _EvalError(Exception):
    """Evaluation error (#ERROR!): the record is excluded / the formula cell is empty."""


#: function name -> (min args, max args or None)
_FUNCTIONS: dict[str, tuple[int, int | None]] = {
    "AND": (1, None), "OR": (1, None), "XOR": (1, None), "NOT": (1, 1), "IF": (2, 3),
    "TRUE": (0, 0), "FALSE": (0, 0), "BLANK": (0, 0), "RECORD_ID": (0, 0),
    "LOWER": (1, 1), "UPPER": (1, 1), "LEN": (1, 1), "TRIM": (1, 1), "VALUE": (1, 1),
    "FIND": (2, 3), "SEARCH": (2, 3), "CONCATENATE": (1, None),
    "NOW": (0, 0), "TODAY": (0, 0), "DATETIME_DIFF": (2, 3),
}
_TOKEN_RE = re.compile(
    r"""\s*(?:
        (?P<num>\d+(?:\.\d*)?|\.\d+)
      | (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
      | (?P<field>\{(?:[^}\\]|\\.)*\})
      | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<op><=|>=|!=|=|<|>|&|\+|-|\*|/)
      | (?P<punct>[(),])
    )""",
    re.VERBOSE,
)


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), text)


class _FormulaParser:
    """Recursive descent parser producing a tuple AST.  Grammar::

        expr   := concat (("=" | "!=" | "<" | ">" | "<=" | ">=") concat)?
        concat := sum ("&" sum)*
        sum    := prod (("+" | "-") prod)*
        prod   := unary (("*" | "/") unary)*
        unary  := "-" unary | atom
        atom   := number | string | {field} | NAME "(" args ")" | "(" expr ")"
    """

    def __init__(self, text: str, table: _Table):
        self.table = table
        self.tokens: list[tuple[str, str]] = []
        self.unknown: list[str] = []
        pos, text = 0, text.strip()
        while pos < len(text):
            m = _TOKEN_RE.match(text, pos)
            if not m or m.end() == pos:
                raise FormulaError(MSG_BAD_FORMULA)
            kind = m.lastgroup or ""
            self.tokens.append((kind, m.group(kind)))
            pos = m.end()
        self.pos = 0

    def parse(self) -> tuple:
        if not self.tokens:
            raise FormulaError(MSG_BAD_FORMULA)
        node = self._expr()
        if self.pos != len(self.tokens):
            raise FormulaError(MSG_BAD_FORMULA)
        if self.unknown:
            # Text reported for unknown names in formulas (Make community thread on
            # INVALID_FILTER_BY_FORMULA).  UNCONFIRMED.
            raise FormulaError(
                "The formula for filtering records is invalid: Unknown field names: " + ", ".join(self.unknown)
            )
        return node

    def _peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _next(self) -> tuple[str, str]:
        tok = self._peek()
        if tok is None:
            raise FormulaError(MSG_BAD_FORMULA)
        self.pos += 1
        return tok

    def _accept(self, *values: str) -> str | None:
        tok = self._peek()
        if tok and tok[0] in ("op", "punct") and tok[1] in values:
            self.pos += 1
            return tok[1]
        return None

    def _expr(self) -> tuple:
        left = self._concat()
        op = self._accept("=", "!=", "<", ">", "<=", ">=")
        return ("cmp", op, left, self._concat()) if op else left

    def _concat(self) -> tuple:
        node = self._sum()
        while self._accept("&"):
            node = ("cat", node, self._sum())
        return node

    def _sum(self) -> tuple:
        node = self._prod()
        while op := self._accept("+", "-"):
            node = ("arith", op, node, self._prod())
        return node

    def _prod(self) -> tuple:
        node = self._unary()
        while op := self._accept("*", "/"):
            node = ("arith", op, node, self._unary())
        return node

    def _unary(self) -> tuple:
        if self._accept("-"):
            return ("neg", self._unary())
        return self._atom()

    def _atom(self) -> tuple:
        kind, text = self._next()
        if kind == "num":
            return ("lit", clean_number(float(text)))
        if kind == "str":
            return ("lit", _unescape(text[1:-1]))
        if kind == "field":
            name = _unescape(text[1:-1])
            f = self.table.field(name)
            if f is None:
                self.unknown.append(name)
                return ("lit", None)
            return ("field", f["id"])
        if kind == "ident":
            name = text.upper()
            if name not in _FUNCTIONS or not self._accept("("):
                raise FormulaError(MSG_BAD_FORMULA)
            args: list[tuple] = []
            if not self._accept(")"):
                args.append(self._expr())
                while self._accept(","):
                    args.append(self._expr())
                if not self._accept(")"):
                    raise FormulaError(MSG_BAD_FORMULA)
            low, high = _FUNCTIONS[name]
            if len(args) < low or (high is not None and len(args) > high):
                raise FormulaError(MSG_BAD_FORMULA)
            return ("call", name, args)
        if kind == "punct" and text == "(":
            node = self._expr()
            if not self._accept(")"):
                raise FormulaError(MSG_BAD_FORMULA)
            return node
        raise FormulaError(MSG_BAD_FORMULA)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _to_num(v: Any) -> float | int:
    if v is None or v == "":
        return 0
    if isinstance(v, bool):
        return int(v)
    if _is_num(v):
        return v
    if isinstance(v, str) and NUMERIC_RE.fullmatch(v.strip()):
        return clean_number(float(v))
    raise _EvalError("not a number")


def _to_str(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "1" if v else "0"
    if _is_num(v):
        return str(clean_number(v))
    return str(v)


def _truthy(v: Any) -> bool:
    if v is None or v is False:
        return False
    if _is_num(v):
        return v != 0 and not math.isnan(v)
    if isinstance(v, str):
        return v != ""
    return bool(v)


def _equal(a: Any, b: Any) -> bool:
    a = int(a) if isinstance(a, bool) else a
    b = int(b) if isinstance(b, bool) else b
    if a is None or b is None:
        other = b if a is None else a
        return other is None or other == "" or (_is_num(other) and other == 0)
    if _is_num(a) and _is_num(b):
        return a == b
    if _is_num(a) != _is_num(b):
        num, text = (a, b) if _is_num(a) else (b, a)
        return bool(NUMERIC_RE.fullmatch(text.strip())) and float(text) == num
    return _to_str(a) == _to_str(b)


def _compare(op: str, a: Any, b: Any) -> bool:
    if op in ("=", "!="):
        return _equal(a, b) == (op == "=")
    try:
        x, y = _to_num(a), _to_num(b)
    except _EvalError:
        x, y = _to_str(a), _to_str(b)  # type: ignore[assignment]
    return {"<": x < y, ">": x > y, "<=": x <= y, ">=": x >= y}[op]



# Date functions.  Airtable's formula field reference (support.airtable.com/docs/formula-field-reference,
# as recalled: the stored copies searched did not show that page, UNCONFIRMED): NOW() is the current
# date and time, TODAY() the current date (its time 00:00, in GMT), both recomputed as time passes;
# DATETIME_DIFF([date1], [date2], 'units') is date1 minus date2 in the units, negative when date2
# is later.  Units and their abbreviations, from
# https://support.airtable.com/docs/supported-unit-specifiers-for-datetime-diff: 'milliseconds'
# 'ms', 'seconds' 's', 'minutes' 'm', 'hours' 'h', 'days' 'd', 'weeks' 'w', 'months' 'M',
# 'quarters' 'Q', 'years' 'y'; with no unit the result is in seconds, and with a unit it does
# not recognise, in milliseconds (that page's notes).  The result is a whole number of units,
# cut toward zero (moment.js's diff, which Airtable's formulas are built on: UNCONFIRMED).
_DIFF_UNITS = {"milliseconds": "ms", "seconds": "s", "minutes": "m", "hours": "h", "days": "d", "weeks": "w",
               "months": "M", "quarters": "Q", "years": "y"}
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def _to_datetime(v: Any) -> dt.datetime:
    """A date or dateTime cell (ISO text, as the API renders them) as a UTC datetime."""
    text = _to_str(v).strip()
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise _EvalError("not a date") from None
    return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)


def _datetime_diff(a: dt.datetime, b: dt.datetime, unit: str | None) -> int:
    unit = "s" if unit is None else _DIFF_UNITS.get(unit, unit)
    if unit in ("M", "Q", "y"):
        sign = 1 if a >= b else -1
        late, early = (a, b) if sign > 0 else (b, a)
        months = (late.year - early.year) * 12 + late.month - early.month
        if (late.day, late.time()) < (early.day, early.time()):
            months -= 1  # a month not yet whole
        return sign * (months // {"M": 1, "Q": 3, "y": 12}[unit])
    delta_ms = round((a - b) / dt.timedelta(milliseconds=1))
    return int(delta_ms / _UNIT_MS.get(unit, 1))  # an unknown unit: milliseconds


def _display(value: Any) -> str:
    if isinstance(value, dict):
        if "filename" in value:
            return f"{value['filename']} ({value.get('url', '')})"
        return str(value.get("name") or value.get("email") or value.get("text") or value.get("id") or "")
    return _to_str(value)



class FormulaMixin:
    """Emulator methods: evaluating formulas against records."""

    # ---- formula ---------------------------------------------------------------------

    @staticmethod
    def _parse_formula(table: _Table, text: str) -> tuple:
        try:
            return _FormulaParser(text, table).parse()
        except FormulaError as exc:
            raise ApiError(422, "INVALID_FILTER_BY_FORMULA", str(exc)) from None

    def _formula_truthy(self, table: _Table, rec: _Record, ast: tuple) -> bool:
        try:
            return _truthy(self._eval(table, rec, ast, 0))
        except (_EvalError, ZeroDivisionError, TypeError, ValueError):
            return False  # #ERROR! is falsy: the record is not returned

    def _eval(self, table: _Table, rec: _Record, node: tuple, depth: int) -> Any:
        op = node[0]
        if op == "lit":
            return node[1]
        if op == "field":
            return self._formula_field_value(table, rec, table.field_by_id(node[1]), depth)
        if op == "neg":
            return -_to_num(self._eval(table, rec, node[1], depth))
        if op == "cat":
            return _to_str(self._eval(table, rec, node[1], depth)) + _to_str(self._eval(table, rec, node[2], depth))
        if op == "arith":
            a = _to_num(self._eval(table, rec, node[2], depth))
            b = _to_num(self._eval(table, rec, node[3], depth))
            return clean_number({"+": a + b, "-": a - b, "*": a * b}[node[1]] if node[1] != "/" else a / b)
        if op == "cmp":
            return _compare(node[1], self._eval(table, rec, node[2], depth), self._eval(table, rec, node[3], depth))
        return self._call(table, rec, node[1], node[2], depth)

    def _call(self, table: _Table, rec: _Record, name: str, args: list[tuple], depth: int) -> Any:
        ev = lambda n: self._eval(table, rec, n, depth)  # noqa: E731
        if name == "IF":
            if _truthy(ev(args[0])):
                return ev(args[1])
            return ev(args[2]) if len(args) > 2 else None
        if name == "AND":
            return all(_truthy(ev(a)) for a in args)
        if name == "OR":
            return any(_truthy(ev(a)) for a in args)
        if name == "XOR":
            return sum(_truthy(ev(a)) for a in args) % 2 == 1
        if name == "NOT":
            return not _truthy(ev(args[0]))
        if name in ("TRUE", "FALSE"):
            return name == "TRUE"
        if name == "BLANK":
            return None
        if name == "RECORD_ID":
            return rec.id
        if name in ("NOW", "TODAY"):
            now = self._now()
            return format_datetime(now if name == "NOW" else now.replace(hour=0, minute=0, second=0, microsecond=0))
        values = [ev(a) for a in args]
        if name == "LOWER":
            return _to_str(values[0]).lower()
        if name == "UPPER":
            return _to_str(values[0]).upper()
        if name == "LEN":
            return len(_to_str(values[0]))
        if name == "TRIM":
            return _to_str(values[0]).strip()
        if name == "VALUE":
            return _to_num(values[0])
        if name == "CONCATENATE":
            return "".join(_to_str(v) for v in values)
        if name == "DATETIME_DIFF":
            if values[0] in (None, "") or values[1] in (None, ""):
                return None  # an empty date: an empty cell
            return _datetime_diff(_to_datetime(values[0]), _to_datetime(values[1]),
                                  _to_str(values[2]) if len(values) > 2 else None)
        needle, hay = _to_str(values[0]), _to_str(values[1])
        start = int(_to_num(values[2])) - 1 if len(values) > 2 else 0
        if name == "SEARCH":
            pos = hay.lower().find(needle.lower(), max(start, 0))
            return pos + 1 if pos >= 0 else None
        return hay.find(needle, max(start, 0)) + 1  # FIND: 0 when absent

    def _formula_field_value(self, table: _Table, rec: _Record, f: dict, depth: int) -> Any:
        """A cell as formulas see it: lists become comma-joined text, checkboxes 1/0."""
        value = self._cell(table, rec, f, depth + 1)
        if f["type"] == "checkbox":
            return 1 if value else 0
        if f["type"] == "multipleRecordLinks":
            linked = self._require_table(f["options"]["linkedTableId"])
            prim = linked.field_by_id(linked.primary_field_id)
            names = []
            for rid in value or []:
                other = linked.index.get(rid)
                names.append(_to_str(self._cell(linked, other, prim, depth + 1)) if other else rid)
            return ", ".join(names) if names else None
        if isinstance(value, list):
            parts = [_display(v) for v in value]
            return ", ".join(parts) if parts else None
        if isinstance(value, dict):
            return _display(value)
        return value

