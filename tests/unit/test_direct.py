"""The directly written C-STORE: its command set, where a Part-10 file's data set starts, and
PDUs that pynetdicom's own decoder reads back as the same message."""

from __future__ import annotations

import threading
import time
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.filereader import read_dataset
from pynetdicom import _config
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.pdu import P_DATA_TF

from edge.common.direct import _pdu, c_store_command, data_set_offset, reactor_paused


def test_c_store_command_set() -> None:
    raw = c_store_command(
        9, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", originator_aet="WS1", originator_id=7
    )
    cmd = read_dataset(BytesIO(raw), True, True)
    assert cmd.CommandGroupLength == len(raw) - 12
    assert (cmd.CommandField, cmd.MessageID, cmd.Priority) == (0x0001, 9, 0)
    assert cmd.AffectedSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert cmd.AffectedSOPInstanceUID == "1.2.3.4"
    assert (cmd.MoveOriginatorApplicationEntityTitle, cmd.MoveOriginatorMessageID) == ("WS1", 7)
    assert cmd.CommandDataSetType != 0x0101
    assert "MoveOriginatorApplicationEntityTitle" not in read_dataset(
        BytesIO(c_store_command(1, "1.2", "1.3")), True, True
    )


def test_data_set_offset_skips_exactly_the_file_meta(tmp_path: Path) -> None:
    path = Path(str(get_testdata_file("CT_small.dcm")))
    with open(path, "rb") as f:
        offset = data_set_offset(f)
        assert offset is not None
        f.seek(offset)
        rest = f.read()
    ds = dcmread(path)
    again = read_dataset(BytesIO(rest), False, True)  # CT_small is Explicit VR Little Endian
    assert again.SOPInstanceUID == ds.SOPInstanceUID
    assert len(again) == len(ds)
    bare = tmp_path / "bare.dcm"
    bare.write_bytes(rest)
    with open(bare, "rb") as f:
        assert data_set_offset(f) is None  # no preamble: left to pynetdicom


def test_pdus_decode_as_one_c_store_request(monkeypatch: pytest.MonkeyPatch) -> None:
    # Decoded in memory: the listener, when imported, has pynetdicom spool C-STOREs to files.
    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", False)
    command = c_store_command(3, "1.2.840.10008.5.1.4.1.1.2", "1.2.3")
    data = bytes(range(256)) * 40
    pdus = [_pdu(1, 0x03, command)]
    pdus += [_pdu(1, 0x00, data[:4000]), _pdu(1, 0x00, data[4000:8000]), _pdu(1, 0x02, data[8000:])]
    message = C_STORE_RQ()
    done = False
    for raw in pdus:
        pdu = P_DATA_TF()
        pdu.decode(raw)
        assert pdu.pdu_length == len(raw) - 6
        done = message.decode_msg(pdu.to_primitive())
    assert done
    req = message.message_to_primitive()
    assert (req.MessageID, req.AffectedSOPInstanceUID) == (3, "1.2.3")
    assert req.DataSet.getvalue() == data


class _Reactor(threading.Thread):
    """pynetdicom's association reactor loop as ``Association._run_reactor`` writes it: a flag
    set before the checkpoint's wait and cleared after, then the DIMSE queue read. It counts the
    turns that read the queue while a sender held it paused."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self._reactor_checkpoint = threading.Event()
        self._reactor_checkpoint.set()
        self._is_paused = False
        self._kill = False
        self.sending = False
        self.stolen = 0
        self.turns = 0

    def run(self) -> None:
        while not self._kill:
            time.sleep(0.00005)
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False
            self.turns += 1
            if self.sending:  # here pynetdicom would take the sender's response
                self.stolen += 1


def test_a_paused_reactor_never_reads_during_back_to_back_sends() -> None:
    reactor = _Reactor()
    reactor.start()
    try:
        for n in range(400):  # one pause right after another, as a C-MOVE sends from memory
            if n % 20 == 0:
                time.sleep(0.002)  # now and then a pause between two sends: the reactor runs
            with reactor_paused(reactor):
                reactor.sending = True
                time.sleep(0.0002)  # the send and the wait for its response
                reactor.sending = False
        assert reactor.turns > 0
        assert reactor.stolen == 0
    finally:
        reactor._kill = True
        reactor._reactor_checkpoint.set()
        reactor.join(5)


def test_the_reactor_itself_pauses_without_waiting_for_itself() -> None:
    seen: list[bool] = []

    class Serving(_Reactor):
        def run(self) -> None:  # a handler running in the reactor's thread sends
            with reactor_paused(self):
                seen.append(self._reactor_checkpoint.is_set())

    reactor = Serving()
    reactor.start()
    reactor.join(5)
    assert seen == [False]
    assert reactor._reactor_checkpoint.is_set()
