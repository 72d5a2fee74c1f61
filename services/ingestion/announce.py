"""What a study announcement says: ``study.arrived`` the first time a study goes quiet,
``study.updated`` (with what changed) each later time. Pure decisions; no transport here."""

from __future__ import annotations

from typing import Any

from edge.common.catalog import DueStudy, SeriesState
from edge.common.dicom import study_prefix
from edge.common.events import SeriesSummary, StudyArrived, StudyChanges, StudyUpdated


def summary_of(series: list[SeriesState]) -> dict[str, Any]:
    """What the catalog remembers of an announcement, to tell the next one what changed."""
    return {
        "instances": sum(s.instances for s in series),
        "bytes": sum(s.bytes for s in series),
        "series": {
            s.series_uid: {"instances": s.instances, "bytes": s.bytes, "digest": s.digest}
            for s in series
        },
    }


def announcement(study: DueStudy, series: list[SeriesState]) -> StudyArrived:
    """The event announcing ``study`` as its ``series`` stand now (a ``StudyUpdated`` when the
    study was announced before). Demographics never enter: the catalog rows it is built from
    carry UIDs, modalities, SOP classes, sizes, times and AE titles only."""
    fields: dict[str, Any] = {
        "study_uid": study.study_uid,
        "series": [
            SeriesSummary(
                series_uid=s.series_uid,
                modality=s.modality,
                sop_class_uids=list(s.sop_class_uids),
                instance_count=s.instances,
                bytes=s.bytes,
            )
            for s in series
        ],
        "modalities": sorted({s.modality for s in series if s.modality}),
        "sop_class_uids": sorted({uid for s in series for uid in s.sop_class_uids}),
        "series_count": len(series),
        "instance_count": sum(s.instances for s in series),
        "bytes": sum(s.bytes for s in series),
        "object_key_prefix": study_prefix(study.study_uid),
        "first_received_at": min(s.first_received_at for s in series),
        "last_received_at": max(s.last_received_at for s in series),
        "calling_aes": sorted({ae for s in series for ae in s.calling_aes}),
    }
    if study.previous is None:
        return StudyArrived(**fields)
    before: dict[str, Any] = dict(study.previous.summary.get("series", {}))
    now = summary_of(series)
    changes = StudyChanges(
        series_added=sorted(uid for uid in now["series"] if uid not in before),
        series_changed=sorted(
            uid
            for uid, state in now["series"].items()
            if uid in before and before[uid].get("digest") != state["digest"]
        ),
        instances_added=max(0, now["instances"] - int(study.previous.summary.get("instances", 0))),
        instances_replaced=study.previous.replaced_since,
        bytes_added=now["bytes"] - int(study.previous.summary.get("bytes", 0)),
        previous_sequence=study.previous.sequence,
    )
    return StudyUpdated(**fields, changes=changes)
