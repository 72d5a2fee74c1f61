"""retrieval.locate's request decisions, without a database."""

from __future__ import annotations

import pytest

from edge.query.matching import QueryError
from edge.retrieval.locate import parse, retrieve_conditions, wado_conditions

STUDY = "1.2.826.0.1.3680043.8.498.1"
SERIES = "1.2.826.0.1.3680043.8.498.2"


def _identifier(level: str, **tags: str) -> dict:
    identifier = {"00080052": {"vr": "CS", "Value": [level]}}
    for tag, value in tags.items():
        identifier[tag] = {"vr": "UI", "Value": value.split("\\")}
    return identifier


def test_wado_request_binds_each_uid_as_a_parameter() -> None:
    where = wado_conditions({"study": STUDY, "series": SERIES})
    assert where.params == [STUDY, SERIES]
    assert all("%s" in c for c in where.sql)


def test_study_level_identifier_with_a_list_of_uids_is_one_condition() -> None:
    where = retrieve_conditions(
        "STUDY", "STUDY", _identifier("STUDY", **{"0020000D": f"{STUDY}\\{SERIES}"})
    )
    assert where.params == [[STUDY, SERIES]]


def test_level_comes_from_the_identifier_when_not_given() -> None:
    where = retrieve_conditions(None, None, _identifier("STUDY", **{"0020000D": STUDY}))
    assert where.params == [[STUDY]]


def test_a_non_uid_at_the_retrieve_level_is_unable_to_process() -> None:
    with pytest.raises(QueryError) as info:
        retrieve_conditions("STUDY", "STUDY", _identifier("STUDY", **{"0020000D": "1.2.abc"}))
    assert info.value.status == 0xC000


def test_paging_defaults_and_limits() -> None:
    request = parse({"study": STUDY}, default_limit=50, max_limit=100)
    assert (request.limit, request.after, request.with_header) == (50, None, False)
    request = parse({"study": STUDY, "after": 7, "limit": 100}, default_limit=50, max_limit=100)
    assert (request.limit, request.after) == (100, 7)
    with pytest.raises(QueryError):
        parse({"study": STUDY, "limit": 101}, default_limit=50, max_limit=100)
    with pytest.raises(QueryError):
        parse(["not", "an", "object"], default_limit=50, max_limit=100)
