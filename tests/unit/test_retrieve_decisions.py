"""C-MOVE/C-GET decisions without a network: destinations, contexts, routes, counts and the
final status."""

from __future__ import annotations

import pytest
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    MRImageStorage,
)

from edge.auth.registry import RemoteAE
from edge.common.outbound import (
    Instance,
    Outcome,
    Route,
    SubResult,
    choose_route,
    outcome_of,
    proposed_contexts,
)
from edge.common.suboperations import Progress
from edge.listener.move_scp import _unavailable
from edge.listener.retrieve_service import RetrieveResponse
from edge.retrieval.move import destination_of, move_host

EXPLICIT, IMPLICIT = str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)


def _instance(sop: str = "1.2.3", sop_class: str = CTImageStorage, ts: str = EXPLICIT) -> Instance:
    return Instance(sop, str(sop_class), str(ts), "studies/1/series/2/instances/3.dcm", 10, "0")


@pytest.mark.parametrize(
    ("hosts", "expected"),
    [
        (("10.1.2.3",), "10.1.2.3"),
        (("10.0.0.0/16", "10.1.2.3/32"), "10.1.2.3"),
        (("10.0.0.0/16", "pacs.example.org"), "pacs.example.org"),
        (("10.0.0.0/8",), None),
    ],
)
def test_move_host_is_the_first_entry_naming_one_host(
    hosts: tuple[str, ...], expected: str | None
) -> None:
    assert move_host(hosts) == expected


def test_destination_comes_from_the_registry_or_is_unknown() -> None:
    ae = RemoteAE("PACS", ("10.1.2.3",), 104, frozenset({"store"}))
    destination = destination_of(ae)
    assert destination is not None
    assert (destination.ae_title, destination.host, destination.port) == ("PACS", "10.1.2.3", 104)
    assert destination_of(None) is None
    not_dest = RemoteAE("PACS", ("10.1.2.3",), 104, frozenset({"store"}), move_destination=False)
    assert destination_of(not_dest) is None
    assert destination_of(RemoteAE("PACS", ("10.0.0.0/8",), 104)) is None


def test_contexts_offer_the_stored_compressed_syntax_alone_and_uncompressed_per_class() -> None:
    contexts = proposed_contexts(
        [
            _instance(ts=EXPLICIT),
            _instance(ts=str(JPEG2000Lossless)),
            _instance(sop_class=MRImageStorage, ts=IMPLICIT),
        ]
    )
    offered = [(str(cx.abstract_syntax), [str(t) for t in cx.transfer_syntax]) for cx in contexts]
    assert offered == [
        (str(CTImageStorage), [EXPLICIT, IMPLICIT]),
        (str(CTImageStorage), [str(JPEG2000Lossless)]),
        (str(MRImageStorage), [EXPLICIT, IMPLICIT]),
    ]


def test_contexts_stop_at_128() -> None:
    instances = [_instance(sop_class=f"1.2.840.10008.5.1.4.1.1.{n}") for n in range(200)]
    assert len(proposed_contexts(instances)) == 128


def test_route_is_as_stored_when_accepted_else_re_encoded_or_decompressed() -> None:
    ct = str(CTImageStorage)
    jpeg = _instance(ts=str(JPEGBaseline8Bit))
    assert choose_route([(ct, str(JPEGBaseline8Bit))], jpeg) is Route.AS_STORED
    assert choose_route([(ct, EXPLICIT)], jpeg) is Route.DECOMPRESS
    assert choose_route([(ct, IMPLICIT)], _instance(ts=EXPLICIT)) is Route.REENCODE
    assert choose_route([(ct, EXPLICIT)], _instance(ts=EXPLICIT)) is Route.AS_STORED
    assert choose_route([(str(MRImageStorage), EXPLICIT)], jpeg) is None


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (0x0000, Outcome.COMPLETED),
        (0xB000, Outcome.WARNING),
        (0xB007, Outcome.WARNING),
        (0xA700, Outcome.FAILED),
        (0x0122, Outcome.FAILED),
        (None, Outcome.FAILED),
    ],
)
def test_c_store_status_outcome(status: int | None, outcome: Outcome) -> None:
    assert outcome_of(status) is outcome


def _progress(completed: int, failed: int, warning: int, total: int) -> Progress:
    progress = Progress(total)
    for n in range(completed):
        progress.add(SubResult(f"1.{n}", Outcome.COMPLETED, 0))
    for n in range(failed):
        progress.add(SubResult(f"2.{n}", Outcome.FAILED, 0xA700))
    for n in range(warning):
        progress.add(SubResult(f"3.{n}", Outcome.WARNING, 0xB000))
    return progress


def test_final_status_decisions() -> None:
    assert _progress(3, 0, 0, 3).final(cancelled=False, reached=True)["status"] == 0x0000
    assert _progress(0, 0, 0, 0).final(cancelled=False, reached=False)["status"] == 0x0000
    partial = _progress(2, 1, 0, 3).final(cancelled=False, reached=True)
    assert partial["status"] == 0xB000 and partial["failed_uids"] == ["2.0"]
    assert _progress(2, 0, 1, 3).final(cancelled=False, reached=True)["status"] == 0xB000
    cancel = _progress(1, 0, 0, 3).final(cancelled=True, reached=True)
    assert cancel["status"] == 0xFE00 and cancel["remaining"] == 2
    # A cancel that came after the last sub-operation changes nothing.
    assert _progress(3, 0, 0, 3).final(cancelled=True, reached=True)["status"] == 0x0000
    down = _progress(0, 3, 0, 3).final(cancelled=False, reached=False)
    assert down["status"] == 0xA702 and down["failed"] == 3


def test_pending_reply_becomes_a_response_with_remaining_and_no_uid_list() -> None:
    pending = RetrieveResponse.from_reply(_progress(1, 1, 0, 5).pending())
    assert (pending.status, pending.remaining, pending.completed, pending.failed) == (
        0xFF00,
        3,
        1,
        1,
    )
    assert pending.failed_uids == ()
    final = RetrieveResponse.from_reply(_progress(4, 1, 0, 5).final(cancelled=False, reached=True))
    assert final.remaining is None and final.failed_uids == ("2.0",)


def test_retrieval_service_gone_mid_move_fails_what_remains() -> None:
    response = _unavailable({"remaining": 4, "completed": 2, "failed": 1, "warning": 0}, "gone")
    assert (response.status, response.completed, response.failed) == (0xA702, 2, 5)
    assert _unavailable(None, "gone").failed is None
