"""What study.arrived and study.updated say, from the catalog's view of a study."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from edge.common.catalog import DueStudy, PreviousAnnouncement, SeriesState
from edge.common.events import StudyArrived, StudyUpdated
from edge.ingestion.announce import announcement, summary_of

T0 = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
CT = "1.2.840.10008.5.1.4.1.1.2"
SR = "1.2.840.10008.5.1.4.1.1.88.22"


def series(
    uid: str, modality: str, n: int, *, digest: str = "d", classes: tuple[str, ...] = (CT,)
) -> SeriesState:
    return SeriesState(
        series_uid=uid,
        modality=modality,
        sop_class_uids=list(classes),
        instances=n,
        bytes=n * 1000,
        digest=digest,
        first_received_at=T0 + timedelta(seconds=int(uid[-1])),
        last_received_at=T0 + timedelta(minutes=int(uid[-1])),
        calling_aes=["CT1"] if modality == "CT" else ["PACS", "CT1"],
    )


def due(previous: PreviousAnnouncement | None = None) -> DueStudy:
    return DueStudy(pk=1, study_uid="1.2.3", previous=previous, trace_context={})


def test_first_announcement_is_study_arrived_with_totals() -> None:
    state = [series("1.2.3.1", "CT", 3), series("1.2.3.2", "SR", 1, classes=(SR,))]

    event = announcement(due(), state)

    assert type(event) is StudyArrived
    assert event.study_uid == "1.2.3"
    assert [(s.series_uid, s.modality, s.instance_count, s.bytes) for s in event.series] == [
        ("1.2.3.1", "CT", 3, 3000),
        ("1.2.3.2", "SR", 1, 1000),
    ]
    assert (event.series_count, event.instance_count, event.bytes) == (2, 4, 4000)
    assert event.modalities == ["CT", "SR"]
    assert event.sop_class_uids == sorted([CT, SR])
    assert event.object_key_prefix == "studies/1.2.3/"
    assert event.first_received_at == T0 + timedelta(seconds=1)
    assert event.last_received_at == T0 + timedelta(minutes=2)
    assert event.calling_aes == ["CT1", "PACS"]


def test_later_announcement_is_study_updated_with_what_changed() -> None:
    before = [series("1.2.3.1", "CT", 3, digest="a"), series("1.2.3.2", "SR", 1, digest="b")]
    after = [
        series("1.2.3.1", "CT", 5, digest="a2"),  # two added
        series("1.2.3.2", "SR", 1, digest="b"),  # untouched
        series("1.2.3.3", "CT", 2, digest="c"),  # new series
    ]
    previous = PreviousAnnouncement(summary_of(before), sequence=41, replaced_since=1)

    event = announcement(due(previous), after)

    assert isinstance(event, StudyUpdated)
    assert event.instance_count == 8
    assert event.changes.series_added == ["1.2.3.3"]
    assert event.changes.series_changed == ["1.2.3.1"]
    assert event.changes.instances_added == 4
    assert event.changes.instances_replaced == 1
    assert event.changes.bytes_added == 4000
    assert event.changes.previous_sequence == 41


def test_replacement_only_changes_the_digest_not_the_count() -> None:
    before = [series("1.2.3.1", "CT", 3, digest="a")]
    after = [series("1.2.3.1", "CT", 3, digest="a-replaced")]
    previous = PreviousAnnouncement(summary_of(before), sequence=None, replaced_since=1)

    event = announcement(due(previous), after)

    assert isinstance(event, StudyUpdated)
    assert event.changes.series_changed == ["1.2.3.1"]
    assert (event.changes.instances_added, event.changes.instances_replaced) == (0, 1)
    assert event.changes.previous_sequence is None


def test_announcement_carries_no_demographics() -> None:
    data = announcement(due(), [series("1.2.3.1", "CT", 1)]).data()
    text = repr(data).lower()
    for word in ("patient", "name", "birth", "sex"):
        assert word not in text
