"""QIDO-RS: query parameters become a query.find request (PS3.18 8.3.4), and the reply becomes
the HTTP answer (PS3.18 8.3.4.4.1, 10.6.3), tested in-process with a fake query service."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from edge.common.qidojson import render
from edge.common.rpc import RpcTimeout
from edge.listener.qido import (
    INSTANCE_KEYS,
    SERIES_KEYS,
    STUDY_KEYS,
    BadQuery,
    Search,
    attribute,
    find_payload,
    qido_routes,
)

STUDIES = Search("STUDY", STUDY_KEYS)
STUDY_UID = "1.2.3.4"


def payload(params: list[tuple[str, str]], search: Search = STUDIES, **kw: Any) -> dict[str, Any]:
    return find_payload(search, params, max_limit=kw.get("max_limit", 100), ae_title="EDGE")


def test_keyword_and_tag_name_the_same_attribute_with_its_dictionary_vr() -> None:
    by_keyword = payload([("PatientID", "P-1")])["identifier"]["00100020"]
    by_tag = payload([("00100020", "P-1")])["identifier"]["00100020"]
    assert by_keyword == by_tag == {"vr": "LO", "Value": ["P-1"]}
    assert payload([("0008103e", "CHEST")], Search("SERIES", SERIES_KEYS, study=STUDY_UID))[
        "identifier"
    ]["0008103E"] == {"vr": "LO", "Value": ["CHEST"]}


def test_values_take_the_json_form_of_their_vr() -> None:
    identifier = payload(
        [
            ("PatientName", "Yamada^Tarou=山田^太郎"),
            ("StudyDate", "20190101-20201231"),
            ("NumberOfStudyRelatedInstances", "3"),
            ("StudyInstanceUID", "1.2.3,1.2.4"),
        ]
    )["identifier"]
    assert identifier["00100010"] == {
        "vr": "PN",
        "Value": [{"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎"}],
    }
    assert identifier["00080020"] == {"vr": "DA", "Value": ["20190101-20201231"]}
    assert identifier["00201208"] == {"vr": "IS", "Value": [3]}
    assert identifier["0020000D"] == {"vr": "UI", "Value": ["1.2.3", "1.2.4"]}


def test_every_search_asks_for_its_levels_default_attributes() -> None:
    identifier = payload([])["identifier"]
    for keyword in STUDY_KEYS:
        assert identifier[attribute(keyword).key] == {"vr": attribute(keyword).vr}
    all_instances = payload([], Search("IMAGE", STUDY_KEYS + SERIES_KEYS + INSTANCE_KEYS))
    assert {"00080061", "00080060", "00280010", "00080056"} <= set(all_instances["identifier"])


def test_path_uids_are_single_value_keys_and_may_not_be_repeated() -> None:
    search = Search("IMAGE", INSTANCE_KEYS, study=STUDY_UID, series="1.2.3.4.5")
    identifier = payload([], search)["identifier"]
    assert identifier["0020000D"] == {"vr": "UI", "Value": [STUDY_UID]}
    assert identifier["0020000E"] == {"vr": "UI", "Value": ["1.2.3.4.5"]}
    with pytest.raises(BadQuery, match="more than once"):
        payload([("StudyInstanceUID", "9.9")], search)
    with pytest.raises(BadQuery, match="not a UID"):
        payload([], Search("SERIES", SERIES_KEYS, study="1.2.x"))


def test_includefield_is_repeatable_and_comma_separated_and_all_asks_for_everything() -> None:
    request = payload(
        [("includefield", "StudyDescription,00081030"), ("includefield", "PatientAge")]
    )
    assert request["identifier"]["00081030"] == {"vr": "LO"}
    assert request["identifier"]["00101010"] == {"vr": "AS"}
    assert request["include_all"] is False
    assert payload([("includefield", "all")])["include_all"] is True


def test_includefield_keeps_a_matching_value_of_the_same_attribute() -> None:
    request = payload([("PatientID", "P-1"), ("includefield", "PatientID")])
    assert request["identifier"]["00100020"] == {"vr": "LO", "Value": ["P-1"]}


def test_sequence_paths_build_one_item() -> None:
    request = payload(
        [
            ("RequestAttributesSequence.RequestedProcedureID", "RP-1"),
            ("00400275.00400009", "SPS-1"),
        ],
        Search("SERIES", SERIES_KEYS, study=STUDY_UID),
    )
    assert request["identifier"]["00400275"] == {
        "vr": "SQ",
        "Value": [
            {
                "00401001": {"vr": "SH", "Value": ["RP-1"]},
                "00400009": {"vr": "SH", "Value": ["SPS-1"]},
            }
        ],
    }


def test_paging_and_fuzzy_matching() -> None:
    request = payload([("limit", "10"), ("offset", "20"), ("fuzzymatching", "true")])
    assert (request["limit"], request["offset"], request["fuzzy"]) == (10, 20, True)
    assert payload([("limit", "5000")], max_limit=1000)["limit"] == 1000
    defaults = payload([], max_limit=1000)
    assert (defaults["limit"], defaults["offset"], defaults["fuzzy"]) == (1000, 0, False)
    assert defaults["model"] == "STUDY" and defaults["level"] == "STUDY"


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ([("PatientNam", "X")], "unknown attribute 'PatientNam'"),
        ([("0009ABCD", "X")], "unknown attribute"),
        ([("color", "red")], "unknown attribute"),
        ([("includefield", "NoSuchThing")], "unknown attribute"),
        ([("limit", "-1")], "limit must be an unsigned integer"),
        ([("limit", "ten")], "limit must be an unsigned integer"),
        ([("limit", "0")], "limit must be at least 1"),
        ([("offset", "1.5")], "offset must be an unsigned integer"),
        ([("limit", "1"), ("limit", "2")], "limit is given more than once"),
        ([("fuzzymatching", "yes")], "fuzzymatching must be true or false"),
        ([("PatientID", "A"), ("00100020", "B")], "more than once"),
        ([("NumberOfStudyRelatedSeries", "many")], "not a number"),
        ([("PixelData", "x")], "cannot be matched"),
        ([("SliceThickness", "nan")], "not a number"),
        ([("PatientName.PatientID", "x")], "PatientName is not a sequence"),
    ],
)
def test_bad_parameters_are_refused_with_the_reason(
    params: list[tuple[str, str]], reason: str
) -> None:
    with pytest.raises(BadQuery, match=reason):
        payload(params)


# --- the routes, over a fake query service ---------------------------------------------------

MATCH = {
    "00080052": {"vr": "CS", "Value": ["STUDY"]},
    "0020000D": {"vr": "UI", "Value": [STUDY_UID]},
    "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Müller^Jörg"}]},
}


async def get(reply: dict[str, Any] | Exception, url: str, **kw: Any) -> httpx.Response:
    asked: list[dict[str, Any]] = []

    async def find(request: dict[str, Any]) -> dict[str, Any]:
        asked.append(request)
        if isinstance(reply, Exception):
            raise reply
        return reply

    app = Starlette(routes=qido_routes(find, ae_title="EDGE", max_limit=100))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://edge:8080") as client:
        response = await client.get(url, **kw)
    response.extensions["asked"] = asked
    return response


async def test_matches_are_dicom_json_with_a_retrieve_url_and_no_query_level() -> None:
    response = await get(
        {"matches": [dict(MATCH)], "next": None, "capped": False}, "/dicom-web/studies"
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/dicom+json"
    assert "warning" not in response.headers
    [study] = response.json()
    assert study["00081190"] == {
        "vr": "UR",
        "Value": [f"http://edge:8080/dicom-web/studies/{STUDY_UID}"],
    }
    assert "00080052" not in study
    assert study["00100010"]["Value"] == [{"Alphabetic": "Müller^Jörg"}]


async def test_a_body_rendered_by_the_query_service_is_served_as_it_came() -> None:
    rendered = render([dict(MATCH)], "STUDY", "http://edge:8080/dicom-web")
    response = await get(
        {"body": rendered.decode(), "count": 1, "next": None, "capped": False},
        "/dicom-web/studies",
    )
    assert response.status_code == 200 and response.content == rendered
    [study] = response.json()
    assert "00080052" not in study and list(study) == sorted(study)
    assert study["00081190"]["Value"] == [f"http://edge:8080/dicom-web/studies/{STUDY_UID}"]
    # The listener asked for it, naming the service its Retrieve URLs are under.
    assert response.extensions["asked"][0]["render"] == {"qido": "http://edge:8080/dicom-web"}
    empty = await get({"body": "[]", "count": 0, "next": None}, "/dicom-web/studies")
    assert empty.status_code == 204 and empty.content == b""


async def test_instance_retrieve_url_names_study_series_and_instance() -> None:
    match = {
        "0020000D": {"vr": "UI", "Value": ["1.1"]},
        "0020000E": {"vr": "UI", "Value": ["1.2"]},
        "00080018": {"vr": "UI", "Value": ["1.3"]},
    }
    response = await get({"matches": [match], "next": None}, "/dicom-web/instances")
    assert response.json()[0]["00081190"]["Value"] == [
        "http://edge:8080/dicom-web/studies/1.1/series/1.2/instances/1.3"
    ]
    asked = response.extensions["asked"][0]
    assert asked["level"] == "IMAGE" and asked["relational"] is True


async def test_no_match_is_204_with_an_empty_payload() -> None:
    response = await get({"matches": [], "next": None, "capped": False}, "/dicom-web/series")
    assert response.status_code == 204 and response.content == b""


async def test_more_matches_than_the_page_give_a_warning() -> None:
    more = await get({"matches": [dict(MATCH)], "next": 7}, "/dicom-web/studies?limit=1")
    assert more.headers["warning"] == (
        "299 http://edge:8080/dicom-web: There are additional results that can be requested"
    )
    capped = await get(
        {"matches": [dict(MATCH)], "next": None, "capped": True}, "/dicom-web/studies"
    )
    assert capped.headers["warning"].startswith("299 http://edge:8080/dicom-web: The number")


@pytest.mark.parametrize(
    ("reply", "status"),
    [
        ({"error": {"status": 0xC000, "comment": "StudyDate: bad date 'x'"}}, 400),
        ({"error": {"status": 0xA900, "comment": "Modality is below the STUDY level"}}, 400),
        ({"error": {"status": 0xA700, "comment": "catalog unavailable"}}, 503),
        (RpcTimeout("no reply"), 503),
    ],
)
async def test_failures_are_problem_responses(reply: Any, status: int) -> None:
    response = await get(reply, "/dicom-web/studies")
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status and problem["title"] and problem["detail"]
    if isinstance(reply, dict):
        assert problem["detail"] == reply["error"]["comment"]


async def test_a_bad_parameter_never_reaches_the_query_service() -> None:
    response = await get({"matches": []}, "/dicom-web/studies?StudyDat=2020")
    assert response.status_code == 400
    assert response.json()["detail"] == "unknown attribute 'StudyDat'"
    assert response.extensions["asked"] == []


async def test_only_dicom_json_is_offered() -> None:
    xml = 'multipart/related; type="application/dicom+xml"'
    response = await get({"matches": []}, "/dicom-web/studies", headers={"accept": xml})
    assert response.status_code == 406
    ok = await get({"matches": []}, "/dicom-web/studies", headers={"accept": "application/json"})
    assert ok.status_code == 204


class RecordingAuditor:
    def __init__(self) -> None:
        self.queries: list[tuple[dict[str, Any], str | None, Any]] = []

    def query(self, requester: Any, sop_class_uid: str, keys: Any, **kw: Any) -> None:
        self.queries.append((dict(keys), kw.get("level"), kw.get("outcome")))


async def audited(url: str) -> tuple[int, list[tuple[dict[str, Any], str | None, Any]]]:
    audit = RecordingAuditor()

    async def find(request: dict[str, Any]) -> dict[str, Any]:
        return {"matches": [dict(MATCH)], "next": None, "capped": False}

    app = Starlette(routes=qido_routes(find, ae_title="EDGE", max_limit=100, audit=audit))  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://edge:8080") as client:
        response = await client.get(url)
    return response.status_code, audit.queries


async def test_a_search_is_audited_with_its_matching_keys_only() -> None:
    status, queries = await audited("/dicom-web/studies?PatientName=SMI*&limit=5&includefield=all")
    assert status == 200
    [(keys, level, _outcome)] = queries
    assert level == "STUDY"
    assert keys == {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "SMI*"}]}}


async def test_a_bad_search_is_audited_without_keys() -> None:
    status, queries = await audited("/dicom-web/studies?NoSuchAttribute=1")
    assert status == 400
    [(keys, level, _outcome)] = queries
    assert (keys, level) == ({}, "STUDY")
