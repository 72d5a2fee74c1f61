"""The C-FIND handler's decisions with a fake query service: paging, cancel, errors, charset."""

from __future__ import annotations

from base64 import b64encode
from concurrent.futures import Future
from queue import Queue
from types import SimpleNamespace
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
)

from edge.common.findwire import IMPLICIT_VR_LITTLE_ENDIAN, encode_identifier
from edge.listener.find_encode import PendingSender
from edge.listener.find_scp import FindDeps, Match, matches, on_c_find, response_charset


def study(uid: str, name: str = "Doe^J") -> dict[str, Any]:
    return {
        "00080052": {"vr": "CS", "Value": ["STUDY"]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": name}]},
        "0020000D": {"vr": "UI", "Value": [uid]},
    }


class FakeQuery:
    """Pages of matches, recording every payload it is asked."""

    def __init__(self, pages: list[dict[str, Any]]) -> None:
        self.pages = pages
        self.asked: list[dict[str, Any]] = []

    def __call__(self, payload: dict[str, Any]) -> Future[dict[str, Any]]:
        self.asked.append(dict(payload))
        answered: Future[dict[str, Any]] = Future()
        answered.set_result(self.pages[len(self.asked) - 1])
        return answered


def event(*, permissions: frozenset[str] = frozenset({"find"}), cancel_after: int | None = None):
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.SpecificCharacterSet = "ISO_IR 100"
    identifier.PatientName = "DOE*"
    identifier.StudyInstanceUID = ""
    state = {"seen": 0}

    class Event(SimpleNamespace):
        @property
        def is_cancelled(self) -> bool:
            return cancel_after is not None and state["seen"] >= cancel_after

    ev = Event(
        assoc=SimpleNamespace(
            edge_permissions=permissions, requestor=SimpleNamespace(ae_title="WS1")
        ),
        request=SimpleNamespace(AffectedSOPClassUID=StudyRootQueryRetrieveInformationModelFind),
        identifier=identifier,
    )
    return ev, state


def run(ev: Any, state: dict[str, int], deps: FindDeps) -> list[tuple[int, Dataset | None]]:
    out = []
    for status, match in matches(ev, deps):
        code = int(status.Status) if isinstance(status, Dataset) else int(status)
        assert isinstance(match, Match | None)
        out.append((code, match.to_dataset() if match is not None else status))
        state["seen"] += 1
    return out


def test_pages_are_asked_for_until_the_last_and_every_match_is_pending() -> None:
    query = FakeQuery(
        [
            {"matches": [study("1.1"), study("1.2")], "next": 42, "capped": False},
            {"matches": [study("1.3")], "next": None, "capped": False},
        ]
    )
    ev, state = event()
    out = run(ev, state, FindDeps(query, "EDGE"))
    assert [code for code, _ in out] == [0xFF00, 0xFF00, 0xFF00, 0x0000]
    assert [str(ds.StudyInstanceUID) for _, ds in out[:3]] == ["1.1", "1.2", "1.3"]
    assert query.asked[0]["model"] == "STUDY" and query.asked[0]["level"] == "STUDY"
    assert query.asked[0]["retrieve_ae_title"] == "EDGE"
    assert query.asked[0]["identifier"]["00100010"]["Value"] == [{"Alphabetic": "DOE*"}]
    assert "after" not in query.asked[0]
    assert (query.asked[1]["after"], query.asked[1]["returned"]) == (42, 2)
    assert (query.asked[0]["limit"], query.asked[1]["limit"]) == (100, 1000)


def test_the_next_page_is_asked_for_before_this_one_is_sent() -> None:
    query = FakeQuery(
        [
            {"matches": [study("1.1"), study("1.2")], "next": 42, "capped": False},
            {"matches": [study("1.3")], "next": None, "capped": False},
        ]
    )
    ev, _ = event()
    responses = matches(ev, FindDeps(query, "EDGE"))
    code, _match = next(responses)
    assert code == 0xFF00 and len(query.asked) == 2


def test_cancel_ends_with_fe00_and_asks_for_nothing_past_the_page_ahead() -> None:
    query = FakeQuery(
        [
            {"matches": [study("1.1"), study("1.2")], "next": 42, "capped": False},
            {"matches": [study("1.3")], "next": None, "capped": False},
        ]
    )
    ev, state = event(cancel_after=1)
    out = run(ev, state, FindDeps(query, "EDGE"))
    assert [code for code, _ in out] == [0xFF00, 0xFE00]
    assert len(query.asked) == 2  # the page asked for ahead, and no other


def test_engine_error_becomes_the_final_status_with_its_comment() -> None:
    query = FakeQuery([{"error": {"status": 0xA900, "comment": "StudyInstanceUID must be given"}}])
    ev, state = event()
    [(code, status)] = run(ev, state, FindDeps(query, "EDGE"))
    assert code == 0xA900
    assert status.ErrorComment == "StudyInstanceUID must be given"


def test_query_service_down_is_a_refusal_not_a_hang() -> None:
    def down(payload: dict[str, Any]) -> Future[dict[str, Any]]:
        failed: Future[dict[str, Any]] = Future()
        failed.set_exception(TimeoutError("no reply"))
        return failed

    ev, state = event()
    [(code, status)] = run(ev, state, FindDeps(down, "EDGE"))
    assert code == 0xA700 and "unavailable" in status.ErrorComment


def test_without_find_permission_nothing_is_asked() -> None:
    query = FakeQuery([])
    ev, state = event(permissions=frozenset({"store"}))
    [(code, status)] = run(ev, state, FindDeps(query, "EDGE"))
    assert code == 0x0124 and "WS1" in status.ErrorComment
    assert query.asked == []


def test_capped_results_end_with_a_refusal() -> None:
    query = FakeQuery([{"matches": [study("1.1")], "next": None, "capped": True}])
    ev, state = event()
    out = run(ev, state, FindDeps(query, "EDGE"))
    assert [code for code, _ in out] == [0xFF00, 0xA700]
    assert "more than 1" in out[-1][1].ErrorComment


def test_response_character_set() -> None:
    assert response_charset(study("1.1", "Doe^J"), ["ISO_IR 100"]) is None
    assert response_charset(study("1.1", "Müller^Jörg"), ["ISO_IR 100"]) == "ISO_IR 100"
    assert response_charset(study("1.1", "Müller^Jörg"), []) == "ISO_IR 192"
    assert response_charset(study("1.1", "山田^太郎"), ["ISO_IR 100"]) == "ISO_IR 192"


def test_encoded_identifiers_are_asked_for_and_passed_on_as_they_came() -> None:
    first = encode_identifier(study("1.1"), [], IMPLICIT_VR_LITTLE_ENDIAN)
    assert first is not None
    query = FakeQuery(
        [
            {
                # one encoded by the query service, one it left as DICOM JSON
                "identifiers": [b64encode(first).decode(), study("1.2", "Müller^Jörg")],
                "next": None,
                "capped": False,
            }
        ]
    )
    ev, _ = event()
    out = list(matches(ev, FindDeps(query, "EDGE"), transfer_syntax=IMPLICIT_VR_LITTLE_ENDIAN))
    assert query.asked[0]["render"] == {
        "cfind": {"transfer_syntax": IMPLICIT_VR_LITTLE_ENDIAN, "charsets": ["ISO_IR 100"]}
    }
    [(_, one), (_, two), (final, none)] = out
    assert isinstance(one, Match) and isinstance(two, Match) and (final, none) == (0, None)
    assert one.encode(IMPLICIT_VR_LITTLE_ENDIAN) == first
    assert two.encode(IMPLICIT_VR_LITTLE_ENDIAN) == encode_identifier(
        study("1.2", "Müller^Jörg"), ["ISO_IR 100"], IMPLICIT_VR_LITTLE_ENDIAN
    )


class NotYet(Future):  # type: ignore[type-arg]
    """A page not there yet when it is looked at (its result is, once waited for)."""

    def done(self) -> bool:
        return False


def test_what_is_gathered_is_written_before_waiting_for_a_page_not_there_yet() -> None:
    pages = [
        {"matches": [study("1.1")], "next": 7, "capped": False},
        {"matches": [study("1.2")], "next": 8, "capped": False},
        {"matches": [], "next": None, "capped": False},
    ]
    flushed: list[int] = []
    calls: list[str] = []

    def query(payload: dict[str, Any]) -> Future[dict[str, Any]]:
        page: Future[dict[str, Any]] = NotYet() if len(calls) == 1 else Future()
        page.set_result(pages[len(calls)])
        calls.append("asked")
        return page

    ev, _ = event()
    responses = matches(ev, FindDeps(query, "EDGE"), before_wait=lambda: flushed.append(1))
    assert next(responses)[0] == 0xFF00 and flushed == []  # the first page was there
    assert next(responses)[0] == 0xFF00 and flushed == [1]  # the second was not: flushed
    assert next(responses)[0] == 0x0000 and flushed == [1]  # the third was there


class FakeSocket:
    def __init__(self) -> None:
        self.written = b""

    def send(self, data: bytes) -> None:
        self.written += data


def scp_event(cancel_after_writes: int | None = None) -> tuple[Any, FakeSocket]:
    """An EVT_C_FIND event over a fake association whose socket records what is written;
    a C-CANCEL arrives (``is_cancelled``) once that many writes were made."""
    ev, _ = event()
    sock = FakeSocket()
    writes = {"n": 0}

    def send(data: bytes) -> None:
        writes["n"] += 1
        sock.send(data)

    ev.assoc.dul = SimpleNamespace(socket=SimpleNamespace(send=send), to_provider_queue=Queue())
    ev.assoc.is_established = True
    ev.assoc.requestor.maximum_length = 16384
    ev.assoc.requestor.address = "127.0.0.1"
    ev.assoc.requestor.port = 104
    ev.context = SimpleNamespace(context_id=1, transfer_syntax=IMPLICIT_VR_LITTLE_ENDIAN)
    ev.request.MessageID = 9
    type(ev).is_cancelled = property(  # type: ignore[assignment]
        lambda self: cancel_after_writes is not None and writes["n"] >= cancel_after_writes
    )
    return ev, sock


def written_pendings(stream: bytes) -> int:
    """Pending responses in what was written: PDVs that end a data set (PS3.8 E.2)."""
    count = 0
    while stream:
        assert stream[0] == 0x04  # P-DATA-TF
        length = int.from_bytes(stream[2:6], "big")
        items, stream = stream[6 : 6 + length], stream[6 + length :]
        while items:
            size = int.from_bytes(items[:4], "big")
            count += items[5] == 0x02
            items = items[4 + size :]
    return count


def test_pendings_are_written_to_the_socket_before_the_final_response() -> None:
    uids = [f"1.{n}" for n in range(40)]
    query = FakeQuery([{"matches": [study(u) for u in uids], "next": None, "capped": False}])
    ev, sock = scp_event()
    out = list(on_c_find(ev, FindDeps(query, "EDGE")))
    assert [int(code) for code, _ in out] == [0x0000]  # only the final goes through pynetdicom
    assert query.asked[0]["render"]["cfind"]["transfer_syntax"] == IMPLICIT_VR_LITTLE_ENDIAN
    assert written_pendings(sock.written) == 40


def test_a_cancel_is_seen_within_one_batch_of_pendings() -> None:
    uids = [f"1.{n}" for n in range(200)]
    query = FakeQuery([{"matches": [study(u) for u in uids], "next": None, "capped": False}])
    ev, sock = scp_event(cancel_after_writes=1)
    out = list(on_c_find(ev, FindDeps(query, "EDGE")))
    assert [int(code) for code, _ in out] == [0xFE00]
    assert written_pendings(sock.written) == PendingSender.BATCH_COUNT
