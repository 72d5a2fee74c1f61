"""The directly written C-STORE: its command set, where a Part-10 file's data set starts, and
PDUs that pynetdicom's own decoder reads back as the same message."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.filereader import read_dataset
from pynetdicom import _config
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.pdu import P_DATA_TF

from edge.common.direct import _pdu, c_store_command, data_set_offset


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
