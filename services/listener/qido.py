"""QIDO-RS, the DICOMweb search transaction (PS3.18 10.6), under ``/dicom-web``.

The listener does no matching of its own: the path and the query parameters become one
``query.find`` request for the query service, whose engine also answers C-FIND (Study Root
model, PS3.4 C.6.2), and its matches come back as DICOM JSON (PS3.18 F.2) with a Retrieve URL
each. :func:`find_payload` is the translation, a plain function; the routes only carry it over
HTTP and map the reply to a status code.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import Histogram
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from edge.common.audit import MINOR_FAILURE, SERIOUS_FAILURE, SUCCESS, Auditor
from edge.common.dicom import is_valid_uid
from edge.common.http import problem
from edge.common.qidojson import render
from edge.common.rpc import RpcError, RpcTimeout
from edge.listener.auditing import http_requester

log = logging.getLogger(__name__)

PREFIX = "/dicom-web"
DICOM_JSON = "application/dicom+json"

# The attributes every match carries, by level (PS3.18 Tables 10.6.3-3, -4 and -5); Retrieve URL
# is added here, from the request's base URL.
STUDY_KEYS = (
    "StudyDate", "StudyTime", "AccessionNumber", "InstanceAvailability", "ModalitiesInStudy",
    "ReferringPhysicianName", "TimezoneOffsetFromUTC", "PatientName", "PatientID",
    "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID",
    "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
)  # fmt: skip
SERIES_KEYS = (
    "Modality", "TimezoneOffsetFromUTC", "SeriesDescription", "SeriesInstanceUID",
    "SeriesNumber", "NumberOfSeriesRelatedInstances", "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime", "RequestAttributesSequence",
)  # fmt: skip
INSTANCE_KEYS = (
    "SOPClassUID", "SOPInstanceUID", "InstanceAvailability", "TimezoneOffsetFromUTC",
    "InstanceNumber", "Rows", "Columns", "BitsAllocated", "NumberOfFrames",
)  # fmt: skip

_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")
_INTEGER_VRS = frozenset({"IS", "SL", "SS", "UL", "US", "SV", "UV"})
_DECIMAL_VRS = frozenset({"DS", "FL", "FD"})
_UNMATCHABLE_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN", "SQ"})
_CONTROL = frozenset({"limit", "offset", "fuzzymatching", "includefield"})

QIDO_SECONDS = Histogram(
    "edge_qido_seconds",
    "QIDO-RS search handling time, by HTTP status",
    ["status"],
    buckets=(0.005, 0.01, 0.015, 0.02, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

# Call ``query.find`` with a payload and return its reply; raises RpcTimeout or RpcError.
Find = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class BadQuery(ValueError):
    """A search request that cannot become a query: the message is the problem's detail."""


@dataclass(frozen=True)
class Search:
    """One search resource (PS3.18 10.6.1): the level it lists, the UIDs its path gives, and
    the attributes each match carries."""

    level: str  # STUDY, SERIES or IMAGE (the engine's Query/Retrieve Level)
    defaults: tuple[str, ...]
    study: str | None = None
    series: str | None = None


@dataclass(frozen=True)
class Attribute:
    key: str  # GGGGEEEE, the DICOM JSON key
    keyword: str
    vr: str


def attribute(name: str) -> Attribute:
    """A keyword or a tag (PS3.18 8.3.4.1), known to the data dictionary (PS3.6)."""
    tag = int(name, 16) if _TAG.match(name) else tag_for_keyword(name)
    try:
        if tag is None:
            raise KeyError(name)
        vr = dictionary_VR(tag)
    except KeyError:
        raise BadQuery(f"unknown attribute {name[:64]!r}") from None
    # "US or SS" and the like: DICOM JSON needs one VR, and the first is the usual one.
    return Attribute(f"{tag:08X}", keyword_for_tag(tag) or f"{tag:08X}", vr.split(" ")[0])


def _attribute_path(name: str) -> list[Attribute]:
    """``Seq.Attr``: a sequence and an attribute of its items (PS3.18 8.3.4.1)."""
    return [attribute(part) for part in name.split(".")]


def person_name(value: str) -> dict[str, str]:
    """A PN query value as DICOM JSON (PS3.18 F.2.2): component groups split at ``=``."""
    names = ("Alphabetic", "Ideographic", "Phonetic")
    return {n: group for n, group in zip(names, value.split("="), strict=False) if group}


def element(attr: Attribute, value: str) -> dict[str, Any]:
    """A matching key as a DICOM JSON element; empty ``value``: a return key."""
    if value == "":
        return {"vr": attr.vr}
    if attr.vr in _UNMATCHABLE_VRS:
        raise BadQuery(f"{attr.keyword} cannot be matched (VR {attr.vr})")
    if attr.vr == "UI":  # PS3.18 8.3.4.1: a comma-separated list of UIDs matches any of them
        return {"vr": "UI", "Value": [v.strip() for v in value.split(",")]}
    if attr.vr == "PN":
        return {"vr": "PN", "Value": [person_name(value)]}
    try:
        if attr.vr in _INTEGER_VRS:
            return {"vr": attr.vr, "Value": [int(value)]}
        if attr.vr in _DECIMAL_VRS:
            number = float(value)
            if not math.isfinite(number):  # NaN and infinities have no DICOM JSON form
                raise ValueError(value)
            return {"vr": attr.vr, "Value": [number]}
    except ValueError:
        raise BadQuery(f"{attr.keyword}: not a number: {value[:16]!r}") from None
    return {"vr": attr.vr, "Value": [value]}


def _uint(name: str, value: str) -> int:
    if not value.isascii() or not value.isdigit() or len(value) > 18:
        raise BadQuery(f"{name} must be an unsigned integer, got {value[:20]!r}")
    return int(value)


def _set_item(identifier: dict[str, Any], path: list[Attribute], value: str) -> None:
    """``identifier[seq].Value[0][attr] = value``, through as many sequences as ``path`` names."""
    *sequences, last = path
    target = identifier
    for seq in sequences:
        if seq.vr != "SQ":
            raise BadQuery(f"{seq.keyword} is not a sequence")
        items = target.get(seq.key, {}).get("Value") or [{}]
        target[seq.key] = {"vr": "SQ", "Value": items}
        target = items[0]
    target[last.key] = element(last, value)


def find_payload(
    search: Search, params: Sequence[tuple[str, str]], *, max_limit: int, ae_title: str
) -> dict[str, Any]:
    """The ``query.find`` request for a search and its query parameters (PS3.18 8.3.4); raises
    :class:`BadQuery` for a parameter it cannot use."""
    identifier: dict[str, Any] = {}
    for keyword in search.defaults:
        attr = attribute(keyword)
        identifier[attr.key] = {"vr": attr.vr}
    given: set[str] = set()  # attribute paths given a value, by the path or a match parameter
    for keyword, uid in (("StudyInstanceUID", search.study), ("SeriesInstanceUID", search.series)):
        if uid is not None:
            if not is_valid_uid(uid):
                raise BadQuery(f"{keyword} in the path is not a UID: {uid[:64]!r}")
            unique = attribute(keyword)
            _set_item(identifier, [unique], uid)
            given.add(unique.key)
    limit, offset, fuzzy, include_all = max_limit, 0, False, False
    controls: set[str] = set()
    for name, value in params:
        if name in controls and name != "includefield":
            raise BadQuery(f"{name} is given more than once")
        if name in _CONTROL:
            controls.add(name)
        if name == "limit":
            limit = _uint(name, value)
            if limit < 1:
                raise BadQuery("limit must be at least 1")
        elif name == "offset":
            offset = _uint(name, value)
        elif name == "fuzzymatching":
            if value.lower() not in ("true", "false"):
                raise BadQuery(f"fuzzymatching must be true or false, got {value[:20]!r}")
            fuzzy = value.lower() == "true"
        elif name == "includefield":  # PS3.18 8.3.4.3: repeatable, comma-separated, or "all"
            for field in (f.strip() for f in value.split(",")):
                if field == "all":
                    include_all = True
                    continue
                top = _attribute_path(field)[0]  # a sequence comes back whole
                identifier.setdefault(top.key, {"vr": top.vr})
        else:
            path = _attribute_path(name)
            key = ".".join(a.key for a in path)
            if key in given:
                raise BadQuery(f"{name[:64]} is given more than once (or by the path)")
            given.add(key)
            _set_item(identifier, path, value)
    return {
        "model": "STUDY",
        "level": search.level,
        "identifier": identifier,
        "limit": min(limit, max_limit),
        "offset": offset,
        "fuzzy": fuzzy,
        "include_all": include_all,
        "retrieve_ae_title": ae_title,
        # All Series, All Instances and a Study's Instances name no UID of the level above:
        # its keys are matched like any other (PS3.4 C.4.1.2.2, relational queries).
        "relational": True,
    }


def acceptable(accept: str | None) -> bool:
    """Whether the Accept header allows DICOM JSON, the one media type answered here."""
    if not accept:
        return True
    ranges = {part.split(";")[0].strip().lower() for part in accept.split(",")}
    return bool(ranges & {DICOM_JSON, "application/json", "application/*", "*/*"})


def _failure(error: dict[str, Any]) -> Response:
    status, comment = int(error.get("status", 0)), str(error.get("comment", ""))
    if status >> 8 == 0xA7:  # out of resources: the catalog or the engine is overloaded
        return problem(503, "Search unavailable", comment or "the query service is busy")
    return problem(400, "Bad search request", comment)


def _payload(request: Request, search: Search, **options: Any) -> dict[str, Any] | BadQuery:
    """The search's ``query.find`` payload (:func:`find_payload`), or why there is none: made
    once, for the search and for its audit event."""
    try:
        return find_payload(search, request.query_params.multi_items(), **options)
    except BadQuery as exc:
        return exc


async def _search(
    request: Request, search: Search, find: Find, payload: dict[str, Any] | BadQuery
) -> Response:
    if not acceptable(request.headers.get("accept")):
        return problem(406, "Not acceptable", f"search results are {DICOM_JSON} only")
    if isinstance(payload, BadQuery):
        return problem(400, "Bad search request", str(payload))
    payload = {**payload}  # the render option is the search's, not the audit event's
    service = str(request.base_url).rstrip("/") + PREFIX
    payload["render"] = {"qido": service}
    try:
        reply = await find(payload)
    except RpcTimeout:
        return problem(503, "Search unavailable", "the query service did not answer in time")
    except RpcError:
        log.exception("QIDO-RS: query.find failed")
        return problem(500, "Search failed", "the query service failed")
    if reply.get("error"):
        return _failure(reply["error"])
    # The query service renders the body when asked (edge.common.qidojson); a reply with the
    # matches as objects is rendered here.
    body: bytes | None = None
    if isinstance(reply.get("body"), str):
        body = reply["body"].encode() if reply.get("count") else None
    elif reply.get("matches"):
        body = render(reply["matches"], search.level, service)
    if body is None:
        return Response(status_code=204)  # PS3.18 8.3.4.4.1: no results, an empty payload
    headers = {}
    if reply.get("capped"):
        headers["Warning"] = (
            f"299 {service}: The number of results exceeded the maximum supported by the"
            " server; narrow the search to see the others"
        )
    elif reply.get("next") is not None:  # PS3.18 8.3.4.4.1 (the engine does not count them)
        headers["Warning"] = f"299 {service}: There are additional results that can be requested"
    return Response(body, headers=headers, media_type=DICOM_JSON)


# QIDO-RS searches are the Study Root model's queries (PS3.18 10.6); the audit trail names it.
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"


def audit_search(
    audit: Auditor | None,
    request: Request,
    search: Search,
    payload: dict[str, Any] | BadQuery,
    status: int,
) -> None:
    """The search in the audit trail (Query): its matching keys, values hashed."""
    if audit is None:
        return
    keys = {}
    if not isinstance(payload, BadQuery):
        keys = {k: v for k, v in payload["identifier"].items() if "Value" in v}
    outcome = SUCCESS if status < 400 else MINOR_FAILURE if status < 500 else SERIOUS_FAILURE
    audit.query(http_requester(request), STUDY_ROOT_FIND, keys, level=search.level, outcome=outcome)


def qido_routes(
    find: Find, *, ae_title: str, max_limit: int, audit: Auditor | None = None
) -> list[BaseRoute]:
    """The six search resources of the Studies Service (PS3.18 10.6.1)."""

    def route(path: str, level: str, *defaults: tuple[str, ...]) -> Route:
        async def endpoint(request: Request) -> Response:
            started = time.monotonic()
            search = Search(
                level,
                tuple(dict.fromkeys(k for keys in defaults for k in keys)),
                study=request.path_params.get("study"),
                series=request.path_params.get("series"),
            )
            payload = _payload(request, search, max_limit=max_limit, ae_title=ae_title)
            response = await _search(request, search, find, payload)
            audit_search(audit, request, search, payload, response.status_code)
            QIDO_SECONDS.labels(str(response.status_code)).observe(time.monotonic() - started)
            return response

        return Route(PREFIX + path, endpoint, methods=["GET"])

    return [
        route("/studies", "STUDY", STUDY_KEYS),
        route("/studies/{study}/series", "SERIES", SERIES_KEYS),
        # PS3.18 10.6.3.3.2, .3: a search across studies also returns the study's attributes,
        # and one across series the series' attributes.
        route("/series", "SERIES", STUDY_KEYS, SERIES_KEYS),
        route("/studies/{study}/series/{series}/instances", "IMAGE", INSTANCE_KEYS),
        route("/studies/{study}/instances", "IMAGE", SERIES_KEYS, INSTANCE_KEYS),
        route("/instances", "IMAGE", STUDY_KEYS, SERIES_KEYS, INSTANCE_KEYS),
    ]
