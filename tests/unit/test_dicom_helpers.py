"""UID validation (PS3.5 9.1) and the object keys built from UIDs."""

from __future__ import annotations

import pytest

from edge.common.dicom import (
    MAX_UID_LENGTH,
    InvalidUID,
    Status,
    instance_key,
    is_valid_uid,
    study_prefix,
    validate_uid,
)
from edge.common.store import validate_key

VALID = {
    "root_only": "1",
    "typical": "1.2.840.10008.5.1.4.1.1.2",
    "zero_component": "1.2.0.3",
    "leading_zero_tolerated": "1.2.03",  # non-conformant, but sent by real modalities
    "64_chars": "1." + "2" * 62,
}

INVALID = {
    "empty": "",
    "relative_path": "../1",
    "parent_segment": "1/../2",
    "letter": "1.2.a",
    "65_chars": "1." + "2" * 63,
    "embedded_nul": "1.2\x003",
    "trailing_nul": "1.2.3\x00",
    "trailing_space": "1.2.3 ",
    "leading_dot": ".1.2",
    "trailing_dot": "1.2.",
    "double_dot": "1..2",
    "slash": "1.2/3",
    "backslash_multivalue": "1.2\\1.3",
    "newline": "1.2\n",
    "negative": "-1.2",
    "unicode_digit": "1.\u0662",  # Arabic-Indic two: str.isdigit() but not [0-9]
}


@pytest.mark.parametrize("uid", list(VALID.values()), ids=list(VALID))
def test_conformant_uid_is_valid_and_returned_unchanged(uid: str) -> None:
    assert is_valid_uid(uid)
    assert validate_uid(uid) == uid


@pytest.mark.parametrize("uid", list(INVALID.values()), ids=list(INVALID))
def test_non_conformant_uid_is_invalid(uid: str) -> None:
    assert not is_valid_uid(uid)
    with pytest.raises(InvalidUID):
        validate_uid(uid, "StudyInstanceUID")


@pytest.mark.parametrize("value", [None, 12, 1.2, b"1.2.3", ["1.2"]], ids=repr)
def test_value_that_is_not_a_string_is_invalid(value: object) -> None:
    assert not is_valid_uid(value)
    with pytest.raises(InvalidUID):
        validate_uid(value)


def test_max_uid_length_is_the_standard_64() -> None:
    assert MAX_UID_LENGTH == 64


def test_invalid_uid_error_names_the_attribute_and_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="SeriesInstanceUID"):
        validate_uid("x", "SeriesInstanceUID")


def test_invalid_uid_error_shows_at_most_80_characters_of_the_value() -> None:
    with pytest.raises(InvalidUID) as caught:
        validate_uid("9" * 10_000)

    assert "9" * 81 not in str(caught.value)


def test_instance_key_places_the_instance_under_its_study_and_series() -> None:
    key = instance_key("1.2.3", "1.2.3.4", "1.2.3.4.5")

    assert key == "studies/1.2.3/series/1.2.3.4/instances/1.2.3.4.5.dcm"
    assert key.startswith(study_prefix("1.2.3"))
    assert validate_key(key) == key


@pytest.mark.parametrize("position", [0, 1, 2], ids=["study", "series", "sop"])
@pytest.mark.parametrize("bad", ["../1", "1.2.a", "1/2", "", "1." + "2" * 63], ids=repr)
def test_instance_key_refuses_any_non_conformant_uid(position: int, bad: str) -> None:
    uids = ["1.2.3", "1.2.3.4", "1.2.3.4.5"]
    uids[position] = bad

    with pytest.raises(InvalidUID):
        instance_key(*uids)


def test_study_prefix_refuses_a_non_conformant_uid() -> None:
    with pytest.raises(InvalidUID):
        study_prefix("..")


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (Status.SUCCESS, 0x0000),
        (Status.NOT_AUTHORIZED, 0x0124),
        (Status.OUT_OF_RESOURCES, 0xA700),
        (Status.DATASET_DOES_NOT_MATCH, 0xA900),
        (Status.CANNOT_UNDERSTAND, 0xC000),
        (Status.INVALID_UID, 0xC001),
        (Status.TOO_LARGE, 0xC002),
        (Status.PROCESSING_FAILURE, 0x0110),
    ],
    ids=lambda v: v.name if isinstance(v, Status) else f"{v:04X}",
)
def test_status_codes_have_their_ps3_4_values(status: Status, code: int) -> None:
    assert status == code
