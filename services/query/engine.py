"""One matching engine for C-FIND and QIDO-RS: a request (model, level, identifier as DICOM
JSON) becomes one parameterised SQL query over the catalog, and its rows DICOM JSON results.

Hierarchical rules (PS3.4 C.4.1.2.1): the unique keys of the levels above the query level must
be given, with a single value; keys below the query level may be present only empty (they are
not returned). Keys of the levels above, and of the query level, are matched and returned.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from psycopg import AsyncConnection, sql

from edge.common import findwire
from edge.query import matching
from edge.query.attributes import (
    BY_TAG,
    CONTROL_KEYS,
    INSTANCE_AVAILABILITY,
    RETRIEVE_AE_TITLE,
    UNIQUE_KEY,
    Attr,
    Level,
    Model,
    header_attr,
)
from edge.query.matching import NOT_MATCHING_SOP_CLASS, QueryError, Where

_TAG_KEY = re.compile(r"^[0-9A-F]{8}$")  # DICOM JSON keys (PS3.18 F.2.1.1): 8 upper-case hex
STUDY_DATE = 0x00080020
STUDY_TIME = 0x00080030

_FROM = {
    Level.PATIENT: "FROM patient p",
    Level.STUDY: "FROM study s JOIN patient p ON p.pk = s.patient_pk",
    Level.SERIES: "FROM series r JOIN study s ON s.pk = r.study_pk"
    " JOIN patient p ON p.pk = s.patient_pk",
    Level.IMAGE: "FROM instance i JOIN series r ON r.pk = i.series_pk"
    " JOIN study s ON s.pk = r.study_pk JOIN patient p ON p.pk = s.patient_pk",
}
# The first instance catalogued under the matched entity (the lowest key, found on
# instance_series_pk_pk_idx without reading a header): where attributes without a column are
# read from (its header is the DICOM JSON of the instance, without bulk data).
_REPRESENTATIVE_PK = {
    Level.PATIENT: "(SELECT min(z.pk) FROM study x JOIN series y ON y.study_pk = x.pk"
    " JOIN instance z ON z.series_pk = y.pk WHERE x.patient_pk = p.pk)",
    Level.STUDY: "(SELECT min(z.pk) FROM series y JOIN instance z ON z.series_pk = y.pk"
    " WHERE y.study_pk = s.pk)",
    Level.SERIES: "(SELECT min(z.pk) FROM instance z WHERE z.series_pk = r.pk)",
}


def _header_join(level: Level) -> str:
    """A join that makes ``rep.header`` available to conditions (matching on the header)."""
    if level is Level.IMAGE:
        return ""
    return (
        "LEFT JOIN LATERAL (SELECT h.header FROM instance h"
        f" WHERE h.pk = {_REPRESENTATIVE_PK[level]}) rep ON true"
    )


def _header_select(level: Level, keys: list[str] | None) -> str:
    """The select-list expression of the representative header, or of just ``keys`` of it
    (8-hex-digit tags, checked by the planner). A scalar subquery: PostgreSQL evaluates it
    after the sort and the limit, so for the returned rows only."""
    header = "i.header" if level is Level.IMAGE else "h.header"
    value = header
    if keys is not None:
        value = "jsonb_build_object({})".format(
            ", ".join(f"'{k}', {header} -> '{k}'" for k in keys)
        )
    if level is Level.IMAGE:
        return value
    return f"(SELECT {value} FROM instance h WHERE h.pk = {_REPRESENTATIVE_PK[level]})"


_HEADER = {
    Level.PATIENT: "rep.header",
    Level.STUDY: "rep.header",
    Level.SERIES: "rep.header",
    Level.IMAGE: "i.header",
}


@dataclass(frozen=True)
class FindRequest:
    model: Model
    level: Level
    identifier: dict[str, Any]  # DICOM JSON: "GGGGEEEE" -> {"vr": ..., "Value": [...]}
    limit: int
    offset: int = 0
    after: int | None = None  # keyset paging: only entities whose key is above this
    fuzzy: bool = False
    include_all: bool = False
    retrieve_ae_title: str | None = None
    # QIDO-RS's /series and /instances search across studies (PS3.18 10.6): the unique keys of
    # the levels above are not required. C-FIND stays hierarchical (no extended negotiation).
    relational: bool = False

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> FindRequest:
        """The ``query.find`` RPC request; raises QueryError on a malformed one."""
        try:
            model = Model(payload.get("model", "STUDY"))
            identifier = payload["identifier"]
            if not isinstance(identifier, dict):
                raise TypeError("identifier is not an object")
            level_name = payload.get("level") or _value_text(identifier.get("00080052"))
            level = Level[str(level_name).strip()]
            return cls(
                model=model,
                level=level,
                identifier=identifier,
                limit=int(payload["limit"]),
                offset=int(payload.get("offset") or 0),
                after=None if payload.get("after") is None else int(payload["after"]),
                fuzzy=bool(payload.get("fuzzy")),
                include_all=bool(payload.get("include_all")),
                retrieve_ae_title=payload.get("retrieve_ae_title"),
                relational=bool(payload.get("relational")),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise QueryError(NOT_MATCHING_SOP_CLASS, f"bad query request: {exc}") from None


@dataclass(frozen=True)
class Wire:
    """C-FIND identifiers wanted ready to write: the presentation context's transfer syntax and
    the character sets the requester named (the response's is chosen from them)."""

    transfer_syntax: str
    requested_charsets: tuple[str, ...] = ()


@dataclass
class FindPage:
    # DICOM JSON; with a ``Wire``, each match's encoded identifier instead (or its DICOM JSON
    # where the encoder does not cover it).
    matches: list[Any]
    next_after: int | None  # pass as ``after`` for the next page; None when this was the last


@dataclass
class _Plan:
    where: Where = field(default_factory=Where)
    returns: list[Attr] = field(default_factory=list)
    match_header: bool = False  # a condition reads the representative header
    header_keys: list[str] = field(default_factory=list)  # return keys read from it
    include_all: bool = False  # the whole header is returned


def _value_text(element: Any) -> str | None:
    """A string or number element's values joined by backslashes; None when empty."""
    if not isinstance(element, dict):
        return None
    values = element.get("Value")
    if not values:
        return None
    if element.get("vr") == "PN":
        return "\\".join(_pn_text(v) for v in values)
    return "\\".join("" if v is None else str(v) for v in values)


def _pn_text(value: Any) -> str:
    if not isinstance(value, dict):
        return str(value)
    groups = [value.get(k, "") for k in ("Alphabetic", "Ideographic", "Phonetic")]
    while groups and not groups[-1]:
        groups.pop()
    return "=".join(groups)


def _effective_level(attr: Attr, model: Model) -> Level:
    # In the Study Root model the patient's attributes are attributes of the study.
    if model is Model.STUDY_ROOT and attr.level is Level.PATIENT:
        return Level.STUDY
    return attr.level


def plan(request: FindRequest, *, case_sensitive_names: bool = False) -> _Plan:
    """Check the identifier against the model and level, and turn it into conditions and
    return keys."""
    model, level = request.model, request.level
    if level not in model.levels():
        raise QueryError(NOT_MATCHING_SOP_CLASS, f"level {level.name} not in this model")
    result = _Plan()
    identifier = request.identifier
    for above in model.levels():
        if above.value >= level.value or request.relational:
            break
        unique = UNIQUE_KEY[above]
        value = _value_text(identifier.get(unique.key))
        if value is None or "\\" in value or matching.has_wildcard(value):
            raise QueryError(
                NOT_MATCHING_SOP_CLASS, f"{unique.keyword} must be given with a single value"
            )
    header = _HEADER[level]
    date_value = _value_text(identifier.get(f"{STUDY_DATE:08X}"))
    time_value = _value_text(identifier.get(f"{STUDY_TIME:08X}"))
    combined = date_value is not None and time_value is not None and level is not Level.PATIENT
    for key, element in sorted(identifier.items()):
        if not isinstance(key, str) or not _TAG_KEY.match(key):
            raise QueryError(NOT_MATCHING_SOP_CLASS, f"bad key {str(key)[:12]!r}")
        tag = int(key, 16)
        if tag in CONTROL_KEYS or (tag >> 16) in (0x0000, 0x0002) or tag & 0xFFFF == 0:
            continue
        attr = BY_TAG.get(tag) or header_attr(tag, (element or {}).get("vr"), level)
        attr_level = _effective_level(attr, model)
        value = _value_text(element) if attr.vr != "SQ" else None
        items = (element or {}).get("Value") if attr.vr == "SQ" else None
        if attr_level.value > level.value:
            if value is not None or items:
                raise QueryError(
                    NOT_MATCHING_SOP_CLASS, f"{attr.keyword} is below the {level.name} level"
                )
            continue
        result.returns.append(attr)
        in_header = attr.column is None and attr.computed is None
        if in_header:
            result.header_keys.append(attr.key)
        if combined and tag in (STUDY_DATE, STUDY_TIME):
            continue
        if value is not None:
            result.match_header |= in_header
            _condition(result.where, attr, value, header, request.fuzzy, case_sensitive_names)
        elif items and isinstance(items[0], dict):
            result.match_header = True
            matching.sequence(result.where, header, attr.keyword, attr.key, items[0])
    if combined:
        assert date_value is not None and time_value is not None
        matching.date_time_range(
            result.where, "s.study_date", "s.study_time_t", date_value, time_value
        )
    for above in model.levels():
        if above.value > level.value:
            break
        if UNIQUE_KEY[above] not in result.returns:
            result.returns.append(UNIQUE_KEY[above])
    result.include_all = request.include_all
    return result


def _condition(
    where: Where, attr: Attr, value: str, header: str, fuzzy: bool, case_sensitive: bool
) -> None:
    kw = attr.keyword
    if attr.match_exists is not None:  # ModalitiesInStudy, SOPClassesInStudy
        assert attr.match_column is not None
        inner = Where()
        if attr.vr == "UI":
            matching.uid(inner, attr.match_column, kw, value)
        else:
            matching.text(inner, attr.match_column, kw, value)
        if inner.sql:
            where.add(attr.match_exists.format(cond=inner.text()), *inner.params)
        return
    if attr.computed is not None:
        matching.number(where, attr.computed, kw, value)
        return
    if attr.column is None:
        _header_condition(where, attr, value, header, fuzzy, case_sensitive)
        return
    if attr.vr == "PN":
        assert attr.norm is not None
        matching.person_name(
            where,
            kw,
            value,
            norm=attr.norm,
            groups=attr.groups,
            raw=attr.column,
            fuzzy=fuzzy,
            case_sensitive=case_sensitive,
        )
    elif attr.vr == "UI":
        matching.uid(where, attr.column, kw, value)
    elif attr.vr == "DA":
        matching.date_range(where, attr.column, kw, value)
    elif attr.vr == "TM" and attr.time is not None:
        matching.time_range(where, attr.time, kw, value)
    elif attr.vr in ("IS", "US", "UL", "SS", "SL"):
        matching.number(where, attr.column, kw, value)
    else:
        matching.text(
            where,
            attr.column,
            kw,
            value,
            multi_valued=attr.vr not in matching.SINGLE_VALUED_VRS,
        )


def _header_condition(
    where: Where, attr: Attr, value: str, header: str, fuzzy: bool, case_sensitive: bool
) -> None:
    first = f"({header} -> '{attr.key}' -> 'Value' ->> 0)"
    kw = attr.keyword
    if attr.vr == "PN":
        raw = f"({header} -> '{attr.key}' -> 'Value' -> 0 ->> 'Alphabetic')"
        matching.person_name(
            where,
            kw,
            value,
            norm=f"upper({raw})",
            groups=None,
            raw=raw,
            fuzzy=fuzzy,
            case_sensitive=case_sensitive,
            upper_in_sql=True,
        )
    elif attr.vr == "UI":
        matching.uid(where, first, kw, value)
    elif attr.vr == "DA":
        # A stored value that is not a date is no match, never an error (edge_parse_da).
        matching.date_range(where, f"edge_parse_da({first})", kw, value)
    elif attr.vr == "DT":
        matching.dt_text_range(where, first, kw, value)
    elif attr.vr == "TM":
        matching.time_range(where, f"edge_parse_tm({first})", kw, value)
    else:
        matching.text(
            where, first, kw, value, multi_valued=attr.vr not in matching.SINGLE_VALUED_VRS
        )


async def find(
    conn: AsyncConnection[Any],
    request: FindRequest,
    *,
    case_sensitive_names: bool = False,
    wire: Wire | None = None,
) -> FindPage:
    """One page of matches, in the order of the level's catalog key: DICOM JSON, or with
    ``wire`` the C-FIND identifiers encoded (:class:`_WireRenderer`)."""
    planned = plan(request, case_sensitive_names=case_sensitive_names)
    level = request.level
    key_column = f"{level.alias}.pk"
    columns = [key_column]
    for attr in planned.returns:
        columns.append(attr.computed or attr.column or "NULL")
    reads_header = planned.include_all or bool(planned.header_keys)
    if reads_header:
        columns.append(_header_select(level, None if planned.include_all else planned.header_keys))
    where = planned.where
    if request.after is not None:
        where.add(f"{key_column} > %s", request.after)
    query = (
        f"SELECT {', '.join(columns)} {_FROM[level]}"
        f" {_header_join(level) if planned.match_header else ''}"
        f" WHERE {where.text()} ORDER BY {key_column} LIMIT %s OFFSET %s"
    )
    cur = await conn.execute(
        sql.SQL(query),  # type: ignore[arg-type]  # fixed text from attributes.py
        [*where.params, request.limit + 1, request.offset],
    )
    rows = await cur.fetchall()
    more = len(rows) > request.limit
    rows = rows[: request.limit]
    render: Any = _Renderer(request, planned)
    if wire is not None:
        render = _WireRenderer(render, wire)
    matches = [render(row) for row in rows]
    return FindPage(matches, int(rows[-1][0]) if more and rows else None)


class _Renderer:
    """Rows of one query into DICOM JSON results, keys in ascending order (PS3.18 F.2.1.1).

    Everything that is the same for every row — which column goes to which key, how its value
    is converted, the constant elements — is decided once per query, not once per row."""

    def __init__(self, request: FindRequest, planned: _Plan) -> None:
        self.include_all = planned.include_all
        self.has_header = planned.include_all or bool(planned.header_keys)
        self.below = (
            {a.key for a in BY_TAG.values() if a.level.value > request.level.value}
            if planned.include_all
            else set()
        )
        constants: dict[str, dict[str, Any]] = {
            "00080052": {"vr": "CS", "Value": [request.level.name]}
        }
        identifier = request.identifier
        if f"{RETRIEVE_AE_TITLE:08X}" in identifier or request.include_all:
            if request.retrieve_ae_title:
                constants[f"{RETRIEVE_AE_TITLE:08X}"] = {
                    "vr": "AE",
                    "Value": [request.retrieve_ae_title],
                }
        if f"{INSTANCE_AVAILABILITY:08X}" in identifier or request.include_all:
            constants[f"{INSTANCE_AVAILABILITY:08X}"] = {"vr": "CS", "Value": ["ONLINE"]}
        self.constants = constants
        # (key, column index or None for the header, converter or VR), in key order.
        slots: dict[str, tuple[int | None, Any]] = {}
        self.vrs: dict[int, str] = {}  # column index -> VR
        for index, attr in enumerate(planned.returns, start=1):
            self.vrs[index] = attr.vr
            if attr.column is None and attr.computed is None:
                slots[attr.key] = (None, attr.vr)
            else:
                slots[attr.key] = (index, _CONVERTERS.get(attr.vr) or _text_of(attr.vr))
        for key in constants:
            slots.pop(key, None)
        self.order = sorted([*slots, *constants])
        self.slots = slots
        # What to do for each key, in key order: (key, column index, converter); index None
        # for a header key (the converter is then its VR), -1 for a constant (the element).
        self.program: list[tuple[str, int | None, Any]] = [
            (key, -1, constants[key]) if key in constants else (key, *slots[key])
            for key in self.order
        ]

    def __call__(self, row: tuple[Any, ...]) -> dict[str, Any]:
        header: dict[str, Any] = (row[-1] or {}) if self.has_header else {}
        out: dict[str, Any] = {}
        for key, index, how in self.program:
            if index is None:
                out[key] = header.get(key) or {"vr": how}
            elif index < 0:
                out[key] = how
            else:
                out[key] = how(row[index])
        if self.include_all:
            below = self.below
            extra = {k: v for k, v in header.items() if k not in below and k not in out}
            if extra:
                out.update(extra)
                return dict(sorted(out.items()))
        return out


def _text_of(vr: str) -> Any:
    def convert(value: Any) -> dict[str, Any]:
        if type(value) is str and value:  # the common case first
            return {"vr": vr, "Value": [value]}
        if value is None or value == "" or value == []:
            return {"vr": vr}
        if isinstance(value, list):
            return {"vr": vr, "Value": [str(v) for v in value]}
        return {"vr": vr, "Value": [str(value)]}

    return convert


def _int_of(vr: str) -> Any:
    def convert(value: Any) -> dict[str, Any]:
        if value is None or value == "" or value == []:
            return {"vr": vr}
        values = value if isinstance(value, list) else [value]
        return {"vr": vr, "Value": [int(v) for v in values]}

    return convert


_DA_TEXT: dict[date, str] = {}  # a large answer repeats its dates; strftime costs ~2 us


def _da_text(value: Any) -> str:
    """A date as DICOM DA text (YYYYMMDD); anything else as its text."""
    if not isinstance(value, date):
        return str(value)
    text = _DA_TEXT.get(value)
    if text is None:
        text = f"{value.year:04d}{value.month:02d}{value.day:02d}"
        if len(_DA_TEXT) < 100_000:
            _DA_TEXT[value] = text
    return text


def _date(value: Any) -> dict[str, Any]:
    if value is None or value == "" or value == []:
        return {"vr": "DA"}
    values = value if isinstance(value, list) else [value]
    return {"vr": "DA", "Value": [_da_text(v) for v in values]}


def _person_name(value: Any) -> dict[str, Any]:
    if type(value) is str and value and "=" not in value and "\\" not in value:
        return {"vr": "PN", "Value": [{"Alphabetic": value}]}
    if value is None or value == "" or value == []:
        return {"vr": "PN"}
    return {"vr": "PN", "Value": [_pn_json(v) for v in str(value).split("\\")]}


_CONVERTERS: dict[str, Any] = {
    "PN": _person_name,
    "DA": _date,
    **{vr: _int_of(vr) for vr in ("IS", "US", "UL", "SS", "SL")},
    **{vr: _text_of(vr) for vr in ("AE", "CS", "DS", "DT", "LO", "SH", "TM", "UI")},
}


def _pn_json(value: str) -> dict[str, str]:
    if "=" not in value:  # the common case: one component group
        return {"Alphabetic": value} if value else {}
    names = ("Alphabetic", "Ideographic", "Phonetic")
    return {name: group for name, group in zip(names, value.split("="), strict=False) if group}


# -- C-FIND identifiers, encoded -------------------------------------------------------------

_EMPTY: tuple[Any, ...] = (None, "", [])
_CONST, _COLUMN, _HEADER_KEY = 0, 1, 2


def _wire_pn(value: Any) -> str:
    # As _person_name then the encoder's PN text: empty trailing component groups dropped.
    text = str(value)
    if "=" not in text:
        return text
    return "\\".join("=".join(v.split("=")[:3]).rstrip("=") for v in text.split("\\"))


def _wire_date(value: Any) -> str:
    if isinstance(value, list):
        return "\\".join(_da_text(v) for v in value)
    return _da_text(value)


def _wire_text(value: Any) -> str:
    if isinstance(value, list):
        return "\\".join(str(v) for v in value)
    return str(value)


def _wire_int(value: Any) -> str:
    if isinstance(value, list):
        return "\\".join(str(int(v)) for v in value)
    return str(int(value))


class _WireRenderer:
    """Rows of one query straight into C-FIND identifiers (the elements' bytes, in tag order),
    as :func:`edge.common.findwire.encode_identifier` would encode what :class:`_Renderer`
    makes of them, without building the DICOM JSON in between (~0.1 ms a match less).

    The fast path writes ASCII only; a row with any other character, or anything the fast path
    does not cover (binary VRs, sequences in the header, the whole header asked for), goes the
    general way: DICOM JSON, then the shared encoder (which chooses the character set), or
    the DICOM JSON itself when that encoder does not cover it either."""

    def __init__(self, json_renderer: _Renderer, wire: Wire) -> None:
        self.json = json_renderer
        self.requested = list(wire.requested_charsets)
        self.transfer_syntax = wire.transfer_syntax
        explicit = findwire.explicit_vr(wire.transfer_syntax)
        self.fast = explicit is not None and not json_renderer.include_all
        self.program: list[tuple[int, Any, Any, Any, Any]] = []
        if not self.fast:
            return
        assert explicit is not None
        for key in json_renderer.order:
            tag = int(key, 16)
            const = json_renderer.constants.get(key)
            if const is not None:
                encoded = findwire.encode_identifier({key: const}, [], wire.transfer_syntax)
                if encoded is None or not str(const).isascii():
                    self.fast = False
                    return
                self.program.append((_CONST, encoded, None, None, None))
                continue
            index, how = json_renderer.slots[key]
            vr = how if index is None else json_renderer.vrs.get(index)
            if vr is None or vr in findwire.BINARY or vr in findwire.OPAQUE or vr == "SQ":
                if index is not None:  # a column of a binary VR: not on the fast path
                    self.fast = False
                    return
            head = findwire.element_head(tag, vr or "UN", explicit)
            long = not explicit or (vr or "UN") in findwire.LONG_VRS
            pack = _U32 if long else _U16
            pad = b"\0" if vr == "UI" else b" "
            if index is None:
                self.program.append((_HEADER_KEY, key, (tag, vr), head, (pack, pad, long)))
            else:
                convert = _WIRE_CONVERTERS.get(vr or "") or _wire_text
                self.program.append((_COLUMN, index, convert, head, (pack, pad, long)))

    def __call__(self, row: tuple[Any, ...]) -> Any:
        if self.fast:
            try:
                encoded = self._fast(row)
            except (UnicodeEncodeError, _NotCovered):
                encoded = None
            if encoded is not None:
                return encoded
        match = self.json(row)
        encoded = findwire.encode_identifier(match, self.requested, self.transfer_syntax)
        return match if encoded is None else encoded

    def _fast(self, row: tuple[Any, ...]) -> bytes:
        parts: list[bytes] = []
        header: dict[str, Any] | None = None
        for kind, a, b, head, how in self.program:
            if kind == _CONST:
                parts.append(a)
                continue
            pack, pad, long = how
            if kind == _COLUMN:
                value = row[a]
                raw = b"" if value in _EMPTY else b(value).encode("ascii")
            else:
                if header is None:
                    header = row[-1] or {}
                element = header.get(a)
                if not element:
                    raw = b""
                else:
                    got = findwire.json_element(b[0], element)
                    if got is None or got[0] != b[1]:
                        raise _NotCovered
                    value = got[1]
                    raw = value.encode("ascii") if isinstance(value, str) else value
            if len(raw) & 1:
                raw += pad
            if not long and len(raw) > 0xFFFF:
                raise _NotCovered
            parts.append(head + pack(len(raw)) + raw)
        return b"".join(parts)


class _NotCovered(Exception):
    """A row the fast path does not write."""


_U16 = struct.Struct("<H").pack
_U32 = struct.Struct("<I").pack


_WIRE_CONVERTERS: dict[str, Any] = {
    "PN": _wire_pn,
    "DA": _wire_date,
    "IS": _wire_int,
}
