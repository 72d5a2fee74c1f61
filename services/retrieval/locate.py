"""``retrieval.locate``: which instances a retrieval names, and where their bytes are.

Two shapes of request. WADO-RS names a study, optionally a series and an instance, by UID. C-MOVE
and C-GET send a Query/Retrieve identifier, which is matched by the query engine's own rules
(PS3.4 C.4.2.2.1 for the hierarchical model): only the unique keys count, the unique key of every
level above the retrieve level with one value, the key of the retrieve level with one value or a
list of UIDs. The answer is a page of instances, ordered by study, series, instance number and
catalog key, with the key to continue after.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection, sql

from edge.common.dicom import is_valid_uid
from edge.query.attributes import UNIQUE_KEY, Level, Model
from edge.query.engine import FindRequest, plan
from edge.query.matching import (
    NOT_MATCHING_SOP_CLASS,
    UNABLE_TO_PROCESS,
    QueryError,
    Where,
    has_wildcard,
)

QUERY_RETRIEVE_LEVEL = "00080052"
# Order of the answer: study, series, instance number (unnumbered last), catalog key. The cursor
# is the catalog key of the last instance returned; the next page starts after its position.
_ORDER = "s.pk, r.pk, COALESCE(i.instance_number, 2147483647), i.pk"
_AFTER = (
    f"({_ORDER}) > (SELECT r2.study_pk, i2.series_pk,"
    " COALESCE(i2.instance_number, 2147483647), i2.pk"
    " FROM instance i2 JOIN series r2 ON r2.pk = i2.series_pk WHERE i2.pk = %s)"
)
_FROM = (
    "FROM instance i JOIN series r ON r.pk = i.series_pk JOIN study s ON s.pk = r.study_pk"
    " JOIN patient p ON p.pk = s.patient_pk"
)
_COLUMNS = (
    "i.pk, s.study_instance_uid, r.series_instance_uid, i.sop_instance_uid, i.sop_class_uid,"
    " i.transfer_syntax_uid, i.object_key, i.size, i.sha256, i.instance_number"
)


@dataclass(frozen=True)
class LocateRequest:
    where: Where
    with_header: bool = False
    after: int | None = None
    limit: int = 5000


def _uid(payload: dict[str, Any], name: str, *, required: bool) -> str | None:
    value = payload.get(name)
    if value is None and not required:
        return None
    if not is_valid_uid(value):
        raise QueryError(UNABLE_TO_PROCESS, f"{name}: not a UID")
    return str(value)


def wado_conditions(payload: dict[str, Any]) -> Where:
    """Study, series and instance UIDs of a WADO-RS request as conditions."""
    where = Where()
    where.add("s.study_instance_uid = %s", _uid(payload, "study", required=True))
    series = _uid(payload, "series", required=False)
    sop = _uid(payload, "sop", required=False)
    if sop is not None and series is None:
        raise QueryError(UNABLE_TO_PROCESS, "sop needs series")
    if series is not None:
        where.add("r.series_instance_uid = %s", series)
    if sop is not None:
        where.add("i.sop_instance_uid = %s", sop)
    return where


def _text(element: Any) -> str:
    if not isinstance(element, dict):
        return ""
    values = element.get("Value") or []
    return "\\".join(str(v) for v in values if v is not None).strip()


def retrieve_conditions(model_name: Any, level_name: Any, identifier: Any) -> Where:
    """A C-MOVE/C-GET identifier as conditions: its unique keys through the query engine's
    hierarchical rules. Other keys are not matched (PS3.4 C.4.2.2.1: a retrieve names entities
    by their unique keys only); a key below the retrieve level with a value is an error."""
    try:
        model = Model(model_name or "STUDY")
        if not isinstance(identifier, dict):
            raise TypeError("identifier is not an object")
        level = Level[str(level_name or _text(identifier.get(QUERY_RETRIEVE_LEVEL))).strip()]
    except (KeyError, ValueError, TypeError) as exc:
        raise QueryError(NOT_MATCHING_SOP_CLASS, f"bad retrieve request: {exc}") from None
    if level not in model.levels():
        raise QueryError(NOT_MATCHING_SOP_CLASS, f"level {level.name} not in this model")
    keys = {UNIQUE_KEY[lv].key for lv in model.levels()}
    unique = {k: v for k, v in identifier.items() if k in keys}
    own = UNIQUE_KEY[level]
    value = _text(unique.get(own.key))
    # The retrieve level's key must name something: an empty or wildcard key would retrieve
    # everything under the level above.
    if not value or has_wildcard(value) or (level is Level.PATIENT and "\\" in value):
        raise QueryError(NOT_MATCHING_SOP_CLASS, f"{own.keyword} must be given (no wildcards)")
    if own.vr == "UI" and not all(is_valid_uid(v) for v in value.split("\\")):
        raise QueryError(UNABLE_TO_PROCESS, f"{own.keyword}: not a UID")
    request = FindRequest(model=model, level=level, identifier=unique, limit=1)
    return plan(request).where


def parse(payload: Any, *, default_limit: int, max_limit: int) -> LocateRequest:
    """The ``retrieval.locate`` request; raises QueryError on a malformed one."""
    if not isinstance(payload, dict):
        raise QueryError(UNABLE_TO_PROCESS, "request is not an object")
    if "identifier" in payload:
        where = retrieve_conditions(
            payload.get("model"), payload.get("level"), payload["identifier"]
        )
    else:
        where = wado_conditions(payload)
    try:
        after = payload.get("after")
        limit = payload.get("limit")
        limit = default_limit if limit is None else int(limit)
        after = None if after is None else int(after)
    except (TypeError, ValueError):
        raise QueryError(UNABLE_TO_PROCESS, "after and limit must be integers") from None
    if not 1 <= limit <= max_limit:
        raise QueryError(UNABLE_TO_PROCESS, f"limit must be 1..{max_limit}")
    return LocateRequest(where, bool(payload.get("with_header")), after, limit)


def _instance(row: tuple[Any, ...], with_header: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "study": row[1],
        "series": row[2],
        "sop": row[3],
        "sop_class": row[4],
        "transfer_syntax": row[5],
        "object_key": row[6],
        "size": int(row[7]),
        "sha256": row[8],
        "number": row[9],
    }
    if with_header:
        out["header"] = row[10]
    return out


async def locate(
    conn: AsyncConnection[Any], request: LocateRequest
) -> tuple[list[dict[str, Any]], int | None]:
    """One page of instances and the cursor for the next (None when this was the last)."""
    where = Where(list(request.where.sql), list(request.where.params))
    if request.after is not None:
        where.add(_AFTER, request.after)
    columns = _COLUMNS + (", i.header" if request.with_header else "")
    query = f"SELECT {columns} {_FROM} WHERE {where.text()} ORDER BY {_ORDER} LIMIT %s"
    cur = await conn.execute(
        sql.SQL(query),  # type: ignore[arg-type]  # fixed text; values are bound
        [*where.params, request.limit + 1],
    )
    rows = await cur.fetchall()
    more = len(rows) > request.limit
    rows = rows[: request.limit]
    instances = [_instance(row, request.with_header) for row in rows]
    return instances, int(rows[-1][0]) if more and rows else None
