"""PS3.4 C.2.2.2 matching as SQL conditions: single value, list of UIDs (and of values),
universal, wildcard, range (DA, TM, DT, combined date and time), sequence, person name.

Every value is a bound parameter; what is pasted into SQL comes from :mod:`attributes` or is a
tag in hex. ``%``, ``_`` and ``\\`` in a value match themselves: they are escaped before ``*``
and ``?`` become LIKE's wildcards.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, time
from typing import Any

MAX_VALUE_LENGTH = 1024  # characters of one matching value (the longest VR, UT, aside)
_TAG_KEY = re.compile(r"^[0-9A-F]{8}$")


class QueryError(Exception):
    """A request the engine will not run: ``status`` is the C-FIND failure status (0xA900 for
    an identifier that does not fit the model or level, 0xC000 for a value it cannot use),
    ``comment`` the Error Comment (and the QIDO problem's detail)."""

    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment[:64]


NOT_MATCHING_SOP_CLASS = 0xA900
UNABLE_TO_PROCESS = 0xC000


def bad_value(keyword: str, why: str) -> QueryError:
    return QueryError(UNABLE_TO_PROCESS, f"{keyword}: {why}")


@dataclass
class Where:
    """Conditions joined by AND, with their parameters in order."""

    sql: list[str] = field(default_factory=list)
    params: list[Any] = field(default_factory=list)

    def add(self, condition: str, *params: Any) -> None:
        self.sql.append(condition)
        self.params.extend(params)

    def text(self) -> str:
        return " AND ".join(f"({c})" for c in self.sql) if self.sql else "TRUE"


def has_wildcard(value: str) -> bool:
    return "*" in value or "?" in value


def like_pattern(value: str) -> str:
    """A LIKE pattern (escape character ``\\``) matching ``value`` with PS3.4 wildcards."""
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def check_value(keyword: str, value: str) -> str:
    if "\x00" in value:
        raise bad_value(keyword, "value contains NUL")
    if len(value) > MAX_VALUE_LENGTH:
        raise bad_value(keyword, f"value longer than {MAX_VALUE_LENGTH}")
    return value


def split_values(value: str) -> list[str]:
    """Backslash-separated values (a list to match any of); empty ones dropped, so a list
    that holds nothing else is universal."""
    return [v for v in value.split("\\") if v]


# --- strings, UIDs, numbers -----------------------------------------------------------------


# VRs whose single value may itself contain a backslash (PS3.5 6.2): never a list.
SINGLE_VALUED_VRS = frozenset({"ST", "LT", "UT", "UR"})


def text(where: Where, expr: str, keyword: str, value: str, *, multi_valued: bool = True) -> None:
    """Single value, wildcard or list (any of) on a text expression; ``*`` alone is universal."""
    check_value(keyword, value)
    values = split_values(value) if multi_valued else [value]
    if not values or any(v == "*" for v in values):
        return
    exact = [v for v in values if not has_wildcard(v)]
    patterns = [like_pattern(v) for v in values if has_wildcard(v)]
    parts: list[str] = []
    params: list[Any] = []
    if exact:
        parts.append(f"{expr} = ANY(%s)")
        params.append(exact)
    for pattern in patterns:
        parts.append(f"{expr} LIKE %s")
        params.append(pattern)
    where.add(" OR ".join(parts), *params)


def uid(where: Where, expr: str, keyword: str, value: str) -> None:
    """Single value or list of UIDs (PS3.4 C.2.2.2.2): wildcards are not UID matching."""
    values = [v.strip() for v in split_values(check_value(keyword, value)) if v.strip()]
    if values == ["*"] or not values:
        return
    where.add(f"{expr} = ANY(%s)", values)


def number(where: Where, expr: str, keyword: str, value: str) -> None:
    values = split_values(check_value(keyword, value))
    try:
        numbers = [int(v.strip()) for v in values if v.strip()]
    except ValueError:
        raise bad_value(keyword, "not an integer") from None
    if numbers:
        where.add(f"{expr} = ANY(%s)", numbers)


# --- dates, times, date-times ---------------------------------------------------------------

_DA = re.compile(r"^\d{8}$")
_TM = re.compile(r"^(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?$")
_DT = re.compile(r"^\d{4,14}(\.\d{1,6})?([+-]\d{4})?$")


def parse_da(keyword: str, value: str) -> date:
    value = value.strip().replace(".", "") if len(value.strip()) == 10 else value.strip()
    if not _DA.match(value):
        raise bad_value(keyword, f"bad date {value[:12]!r}")
    try:
        return datetime.strptime(value, "%Y%m%d").date()
    except ValueError:
        raise bad_value(keyword, f"bad date {value[:12]!r}") from None


def parse_tm(keyword: str, value: str, *, upper: bool) -> time:
    """A TM as a time; a partial one is its earliest instant, or its latest when ``upper``."""
    m = _TM.match(value.strip().replace(":", ""))
    if not m:
        raise bad_value(keyword, f"bad time {value[:16]!r}")
    hh, mm, ss, frac = m.groups()
    fill = "9" if upper else "0"
    micro = int(frac.ljust(6, fill)) if frac else (999999 if upper else 0)
    try:
        if upper:
            return time(int(hh), int(mm) if mm else 59, int(ss) if ss else 59, micro)
        return time(int(hh), int(mm or 0), int(ss or 0), micro)
    except ValueError:
        raise bad_value(keyword, f"bad time {value[:16]!r}") from None


def split_range(keyword: str, value: str) -> tuple[str, str] | None:
    """``(low, high)`` of a range ``a-b``, ``-b`` or ``a-`` (empty for an open end), None if
    ``value`` is a single value."""
    if value.count("-") != 1:
        if value.count("-") > 1:
            raise bad_value(keyword, "bad range")
        return None
    low, high = value.split("-")
    if not low.strip() and not high.strip():
        raise bad_value(keyword, "range without bounds")
    return low.strip(), high.strip()


def _range(
    where: Where,
    expr: str,
    keyword: str,
    value: str,
    low_of: Callable[[str], Any],
    high_of: Callable[[str], Any],
) -> None:
    """Range matching (PS3.4 C.2.2.2.5) of each listed value: ``a-b``, ``-b``, ``a-``; a single
    value is the range from its earliest to its latest instant (the same for a date)."""
    items = split_values(check_value(keyword, value))
    if not items:
        return
    parts: list[str] = []
    params: list[Any] = []
    for item in items:
        bounds = split_range(keyword, item)
        low, high = (item, item) if bounds is None else bounds
        if low and high:
            parts.append(f"{expr} BETWEEN %s AND %s")
            params += [low_of(low), high_of(high)]
        elif low:
            parts.append(f"{expr} >= %s")
            params.append(low_of(low))
        else:
            parts.append(f"{expr} <= %s")
            params.append(high_of(high))
    where.add(" OR ".join(parts), *params)


def date_range(where: Where, expr: str, keyword: str, value: str) -> None:
    def day(v: str) -> date:
        return parse_da(keyword, v)

    _range(where, expr, keyword, value, day, day)


def time_range(where: Where, expr: str, keyword: str, value: str) -> None:
    _range(
        where,
        expr,
        keyword,
        value,
        lambda v: parse_tm(keyword, v, upper=False),
        lambda v: parse_tm(keyword, v, upper=True),
    )


def date_time_range(
    where: Where,
    date_expr: str,
    time_expr: str,
    date_value: str,
    time_value: str,
) -> None:
    """StudyDate and StudyTime together (PS3.4 C.2.2.2.5.1): one range of date-times, from the
    start time on the start date to the end time on the end date."""
    check_value("StudyDate", date_value)
    check_value("StudyTime", time_value)
    dates = split_range("StudyDate", date_value) or (date_value, date_value)
    times = split_range("StudyTime", time_value) or (time_value, time_value)
    expr = f"({date_expr} + coalesce({time_expr}, time '00:00'))"
    low_d, high_d = dates
    low_t, high_t = times
    if low_d:
        low = datetime.combine(
            parse_da("StudyDate", low_d),
            parse_tm("StudyTime", low_t, upper=False) if low_t else time.min,
        )
        where.add(f"{expr} >= %s", low)
    if high_d:
        high = datetime.combine(
            parse_da("StudyDate", high_d),
            parse_tm("StudyTime", high_t, upper=True) if high_t else time.max,
        )
        where.add(f"{expr} <= %s", high)


_DT_OFFSET = re.compile(r"^(\d{4,14}(?:\.\d{1,6})?)([+-])(\d{2})(\d{2})$")


def _dt_bounds(keyword: str, item: str) -> tuple[str, str] | None:
    """Like :func:`split_range`, but a ``-HHMM`` UTC offset (HH up to 14) ending a date-time is
    its offset, not the start of an upper bound: ``20200615101500-0500`` is one value."""
    m = _DT_OFFSET.match(item)
    if m and int(m[3]) <= 14 and int(m[4]) < 60:
        return None
    return split_range(keyword, item)


def dt_text_range(where: Where, expr: str, keyword: str, value: str) -> None:
    """DT kept as text in the header: compared on its first 14 digits (YYYYMMDDHHMMSS)."""
    expr14 = f"rpad(left({expr}, 14), 14, '0')"
    parts: list[str] = []
    params: list[Any] = []
    items = split_values(check_value(keyword, value))
    if not items:
        return
    for item in items:
        bounds = _dt_bounds(keyword, item)
        low, high = (item, item) if bounds is None else bounds
        for bound in (low, high):
            if bound and not _DT.match(bound):
                raise bad_value(keyword, f"bad date-time {bound[:26]!r}")
        if low and high:
            parts.append(f"{expr14} BETWEEN %s AND %s")
            params += [low[:14].ljust(14, "0"), high[:14].ljust(14, "9")]
        elif low:
            parts.append(f"{expr14} >= %s")
            params.append(low[:14].ljust(14, "0"))
        else:
            parts.append(f"{expr14} <= %s")
            params.append(high[:14].ljust(14, "9"))
    where.add(" OR ".join(parts), *params)


# --- person names ---------------------------------------------------------------------------


def person_name(
    where: Where,
    keyword: str,
    value: str,
    *,
    norm: str,
    groups: str | None,
    raw: str,
    fuzzy: bool,
    case_sensitive: bool,
    upper_in_sql: bool = False,
) -> None:
    """PN matching: case-insensitive (unless configured), tolerant of missing trailing
    components (``SMITH`` matches ``SMITH^JOHN``), wildcards spanning components, any component
    group (alphabetic, ideographic, phonetic) for non-ASCII queries, and with ``fuzzy`` every
    query word matching the start of some component.

    ``norm`` is the stored matching form (upper-cased first group) and ``groups`` every group so
    normalised, joined by ``=``; ``raw`` the value as stored. With ``upper_in_sql`` (a value read
    from a header) the stored side is upper-cased by Postgres, so the query is too: Python and
    Postgres do not upper-case every letter alike (``ß``).
    """
    check_value(keyword, value)
    items = split_values(value)
    if not items or any(item.strip() in ("", "*") for item in items):
        return
    first_group = f"split_part(split_part({raw}, '\\', 1), '=', 1)"
    target = first_group if case_sensitive else norm
    param = "upper(%s)" if upper_in_sql and not case_sensitive else "%s"
    parts: list[str] = []
    params: list[Any] = []
    for item in items:
        query = _pn_query(item, upper=not (case_sensitive or upper_in_sql))
        use_groups = groups is not None and not case_sensitive and not query.isascii()
        if fuzzy:
            haystack = groups if use_groups else target
            words = [w for w in re.split(r"[\^ =]+", query.replace("*", " ")) if w]
            cond = f"('^' || translate({haystack}, ' =', '^^')) LIKE {param}"
            parts.append(" AND ".join(cond for _ in words) or "TRUE")
            params += ["%^" + like_pattern(w) + "%" for w in words]
            continue
        pattern = like_pattern(query)
        if has_wildcard(query):
            alternatives = [(f"{target} LIKE {param}", [pattern])]
            if use_groups:
                alternatives.append((f"('=' || {groups} || '=') LIKE %s", [f"%={pattern}=%"]))
        else:
            alternatives = [
                (f"{target} = {param} OR {target} LIKE {param}", [query, pattern + "^%"])
            ]
            if use_groups:
                alternatives.append(
                    (
                        f"('=' || {groups} || '=') LIKE %s OR ('=' || {groups} || '=') LIKE %s",
                        [f"%={pattern}=%", f"%={pattern}^%"],
                    )
                )
        parts += [sql for sql, _ in alternatives]
        params += [p for _, ps in alternatives for p in ps]
    where.add(" OR ".join(f"({p})" for p in parts), *params)


def _pn_components(group: str) -> str:
    """A component group as stored for matching, without the case change: components trimmed,
    trailing empty ones dropped."""
    components = [c.strip() for c in group.split("^")]
    while components and not components[-1]:
        components.pop()
    return "^".join(components)


def _pn_query(item: str, *, upper: bool) -> str:
    """The query value in the stored matching form (its first non-empty group); wildcards kept."""
    groups = [g for g in item.split("=") if g.strip("^ ")]
    first = _pn_components(groups[0] if groups else item)
    return first.upper() if upper else first


# --- sequences -------------------------------------------------------------------------------


def _jsonpath_regex(value: str) -> str:
    """A jsonpath string literal holding an anchored regex that matches ``value`` with PS3.4
    wildcards; everything else in it is literal."""
    regex = (
        "^" + "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in value) + "$"
    )
    return '"' + regex.replace("\\", "\\\\").replace('"', '\\"') + '"'


def sequence(where: Where, header: str, keyword: str, key: str, item: dict[str, Any]) -> None:
    """Sequence matching (PS3.4 C.2.2.2.6): some item of the stored sequence matches every
    non-empty key of the request's item. Each key: single value, list (any of), wildcard; PN
    case-insensitive. Item values are bound as jsonpath variables, or, for wildcards and PN,
    written as an escaped regex literal."""
    conditions: list[str] = []
    variables: dict[str, Any] = {}
    for sub_key, element in sorted(item.items()):
        if not _TAG_KEY.match(sub_key):
            raise QueryError(UNABLE_TO_PROCESS, f"{keyword}: bad item key")
        values = element.get("Value") or []
        if not values or element.get("vr") == "SQ":
            continue
        is_pn = element.get("vr") == "PN"
        texts = [
            (v.get("Alphabetic", "") if isinstance(v, dict) else v) for v in values if v is not None
        ]
        if any(isinstance(t, str) and t.strip() in ("", "*") for t in texts):
            continue  # universal
        path = f'@."{sub_key}".Value[0]' + (".Alphabetic" if is_pn else "")
        alternatives = []
        for value in texts:
            if isinstance(value, str):
                check_value(keyword, value)
            if isinstance(value, str) and (is_pn or has_wildcard(value)):
                flag = ' flag "i"' if is_pn else ""
                alternatives.append(f"{path} like_regex {_jsonpath_regex(value)}{flag}")
                continue
            name = f"v{len(variables)}"
            variables[name] = value
            alternatives.append(f"{path} == ${name}")
        conditions.append("(" + " || ".join(alternatives) + ")")
    if not conditions:
        return
    path = f'$."{key}".Value[*] ? ({" && ".join(conditions)})'
    where.add(f"jsonb_path_exists({header}, %s::jsonpath, %s::jsonb)", path, json.dumps(variables))
