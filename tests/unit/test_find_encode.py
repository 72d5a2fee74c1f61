"""The direct C-FIND response encoder gives what pydicom would: same elements, same values,
same character set, for both little-endian transfer syntaxes; what it does not cover is None."""

from __future__ import annotations

from io import BytesIO
from queue import Queue
from types import SimpleNamespace
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pynetdicom.dimse_messages import C_FIND_RSP
from pynetdicom.dsutils import encode
from pynetdicom.pdu import P_DATA_TF

from edge.common.findwire import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    encode_identifier,
)
from edge.listener.find_encode import PendingSender, pending_command
from edge.listener.find_scp import Match

SYNTAXES = (IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN)


def study(name: str = "Doe^John", **extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "00080020": {"vr": "DA", "Value": ["20240131"]},
        "00080030": {"vr": "TM", "Value": ["093000.5"]},
        "00080050": {"vr": "SH"},
        "00080052": {"vr": "CS", "Value": ["STUDY"]},
        "00080061": {"vr": "CS", "Value": ["CT", "MR"]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": name}]},
        "00100020": {"vr": "LO", "Value": ["P1"]},
        "0020000D": {"vr": "UI", "Value": ["1.2.3"]},
        "00201206": {"vr": "IS", "Value": [3]},
        "00201208": {"vr": "IS", "Value": [12]},
        **extra,
    }


def decoded(data: bytes, syntax: str) -> Dataset:
    implicit = syntax == IMPLICIT_VR_LITTLE_ENDIAN
    ds = read_dataset(BytesIO(data), implicit, True)
    ds.decode()  # by its own Specific Character Set
    return ds


def pydicom_way(match: dict[str, Any], requested: list[str], syntax: str) -> bytes:
    ds = Match(match, requested).to_dataset()
    out = encode(ds, syntax == IMPLICIT_VR_LITTLE_ENDIAN, True)
    assert out is not None
    return out


@pytest.mark.parametrize("syntax", SYNTAXES)
@pytest.mark.parametrize(
    ("name", "requested", "charset"),
    [
        ("Doe^John", ["ISO_IR 100"], None),
        ("Müller^Jörg", ["ISO_IR 100"], "ISO_IR 100"),
        ("Müller^Jörg", [], "ISO_IR 192"),
        ("Yamada^Tarou=山田^太郎=やまだ^たろう", ["ISO_IR 100"], "ISO_IR 192"),
    ],
)
def test_same_data_set_as_pydicom(
    syntax: str, name: str, requested: list[str], charset: str | None
) -> None:
    match = study(
        name,
        **{
            "00081030": {"vr": "LO", "Value": ["Thorax, abdomen"]},
            "00280030": {"vr": "DS", "Value": [0.5, 0.25]},
            "00280010": {"vr": "US", "Value": [512]},
            "00540016": {"vr": "SQ"},
        },
    )
    ours = encode_identifier(match, requested, syntax)
    assert ours is not None
    theirs = decoded(pydicom_way(match, requested, syntax), syntax)
    mine = decoded(ours, syntax)
    assert mine.get("SpecificCharacterSet") == charset
    assert [e.tag for e in mine] == [e.tag for e in theirs]
    for element in theirs:
        assert mine[element.tag].VR == element.VR, element.keyword
        assert mine[element.tag].value == element.value, element.keyword


def test_byte_identical_for_plain_ascii() -> None:
    for syntax in SYNTAXES:
        assert encode_identifier(study(), [], syntax) == pydicom_way(study(), [], syntax)


def test_what_it_does_not_cover_goes_the_slow_way() -> None:
    item = {"00080100": {"vr": "SH", "Value": ["X"]}}
    assert (
        encode_identifier(study(**{"00081032": {"vr": "SQ", "Value": [item]}}), [], SYNTAXES[0])
        is None
    )
    assert (
        encode_identifier(
            study(**{"7FE00010": {"vr": "OB", "InlineBinary": "AAAA"}}), [], SYNTAXES[0]
        )
        is None
    )
    assert encode_identifier(study(), [], "1.2.840.10008.1.2.2") is None  # big endian
    long_text = {"00081030": {"vr": "LO", "Value": ["x" * 70_000]}}
    assert encode_identifier(study(**long_text), [], EXPLICIT_VR_LITTLE_ENDIAN) is None


def test_pending_command_set() -> None:
    cmd = read_dataset(BytesIO(pending_command(7, "1.2.840.10008.5.1.4.1.2.2.1")), True, True)
    assert cmd.CommandGroupLength == len(pending_command(7, "1.2.840.10008.5.1.4.1.2.2.1")) - 12
    assert cmd.AffectedSOPClassUID == "1.2.840.10008.5.1.4.1.2.2.1"
    assert (cmd.CommandField, cmd.MessageIDBeingRespondedTo) == (0x8020, 7)
    assert (cmd.CommandDataSetType, cmd.Status) == (0x0001, 0xFF00)


class FakeSocket:
    def __init__(self) -> None:
        self.written = b""
        self.writes = 0

    def send(self, data: bytes) -> None:
        self.written += data
        self.writes += 1


class FakeDul:
    def __init__(self) -> None:
        self.to_provider_queue: Queue[Any] = Queue()
        self.socket = FakeSocket()


def pdus(stream: bytes) -> list[P_DATA_TF]:
    """The P-DATA-TF PDUs of a byte stream, as pynetdicom's receiving side decodes them."""
    out = []
    while stream:
        assert stream[0] == 0x04
        length = int.from_bytes(stream[2:6], "big")
        pdu = P_DATA_TF()
        pdu.decode(stream[: 6 + length])
        out.append(pdu)
        stream = stream[6 + length :]
    return out


def responses(stream: bytes) -> list[tuple[Any, Dataset]]:
    """Every C-FIND-RSP in the stream: its primitive and its identifier."""
    out = []
    message = C_FIND_RSP()
    for pdu in pdus(stream):
        if message.decode_msg(pdu.to_primitive()):
            rsp = message.message_to_primitive()
            assert message.context_id == 5
            out.append((rsp, decoded(rsp.Identifier.getvalue(), IMPLICIT_VR_LITTLE_ENDIAN)))
            message = C_FIND_RSP()
    return out


def sender_for(max_pdu: int) -> tuple[PendingSender, FakeDul]:
    dul = FakeDul()
    assoc = SimpleNamespace(
        dul=dul, is_established=True, requestor=SimpleNamespace(maximum_length=max_pdu)
    )
    command = pending_command(3, "1.2.840.10008.5.1.4.1.2.2.1")
    return PendingSender(assoc, 5, IMPLICIT_VR_LITTLE_ENDIAN, command), dul


@pytest.mark.parametrize("max_pdu", [0, 16384, 200, 64])
def test_written_pendings_decode_as_c_find_responses(max_pdu: int) -> None:
    sender, dul = sender_for(max_pdu)
    names = ["Müller^Jörg", "Doe^John", "Smith^Ann"]
    for name in names:
        identifier = encode_identifier(study(name), ["ISO_IR 100"], IMPLICIT_VR_LITTLE_ENDIAN)
        assert identifier is not None
        assert sender.send(identifier) is True
    assert dul.socket.written == b""  # gathered until the batch is full or flushed
    sender.flush()
    got = responses(dul.socket.written)
    assert [(r.MessageIDBeingRespondedTo, r.Status) for r, _ in got] == [(3, 0xFF00)] * 3
    assert [str(ds.PatientName) for _, ds in got] == names
    assert got[0][1].SpecificCharacterSet == "ISO_IR 100"
    for pdu in pdus(dul.socket.written):  # none longer than the peer takes
        assert max_pdu == 0 or len(pdu.encode()) - 6 <= max_pdu


def test_a_batch_is_written_when_full_so_a_cancel_is_seen_between_writes() -> None:
    sender, dul = sender_for(16384)
    identifier = encode_identifier(study(), [], IMPLICIT_VR_LITTLE_ENDIAN)
    assert identifier is not None
    for _ in range(PendingSender.BATCH_COUNT * 2 + 1):
        sender.send(identifier)
    assert dul.socket.writes == 2
    sender.flush()
    assert dul.socket.writes == 3
    assert len(responses(dul.socket.written)) == PendingSender.BATCH_COUNT * 2 + 1


def test_nothing_is_written_once_the_association_is_gone() -> None:
    sender, dul = sender_for(16384)
    identifier = encode_identifier(study(), [], IMPLICIT_VR_LITTLE_ENDIAN)
    assert identifier is not None
    sender.assoc.is_established = False
    assert sender.send(identifier) is False
    sender.flush()
    assert dul.socket.written == b""
