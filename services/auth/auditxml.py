"""Audit events as DICOM audit message XML (PS3.15 A.5.1: ``AuditMessage`` with
``EventIdentification``, ``ActiveParticipant``, ``AuditSourceIdentification`` and
``ParticipantObjectIdentification``, in the schema's order; coded values as ``csd-code``,
``codeSystemName``, ``originalText``).

Input is the event as the trail stores it (``{"id", "type", "time", "data"}``, see
:func:`edge.auth.auditlog.canonical`). Several messages are wrapped in ``<AuditMessages>``: the
schema defines one message per document, so each child is one schema-valid message.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any
from xml.etree import ElementTree as ET

# RFC 3881 AuditSourceTypeCode 4: application server process tier.
_SOURCE_TYPE = {"csd-code": "4", "codeSystemName": "RFC-3881", "originalText": "Application Server"}


def _coded(parent: ET.Element, tag: str, code: dict[str, Any]) -> ET.Element:
    return ET.SubElement(
        parent,
        tag,
        {
            "csd-code": str(code["code"]),
            "codeSystemName": str(code.get("system") or "DCM"),
            "originalText": str(code["meaning"]),
        },
    )


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def audit_message(stored: dict[str, Any]) -> ET.Element:
    """One ``AuditMessage`` element for one stored event."""
    data = stored["data"]
    message = ET.Element("AuditMessage")
    ident = ET.SubElement(
        message,
        "EventIdentification",
        {
            "EventActionCode": str(data["action"]),
            "EventDateTime": str(stored["time"]),
            "EventOutcomeIndicator": str(data["outcome"]),
        },
    )
    _coded(ident, "EventID", data["event"])
    for code in data.get("event_types") or []:
        _coded(ident, "EventTypeCode", code)
    if data.get("outcome_description"):
        ET.SubElement(ident, "EventOutcomeDescription").text = str(data["outcome_description"])
    for participant in data.get("participants") or []:
        attributes = {
            "UserID": str(participant["user_id"]),
            "UserIsRequestor": "true" if participant.get("is_requestor") else "false",
        }
        if participant.get("network_access_point"):
            attributes["NetworkAccessPointID"] = str(participant["network_access_point"])
            attributes["NetworkAccessPointTypeCode"] = str(
                participant.get("network_access_point_type") or 2
            )
        active = ET.SubElement(message, "ActiveParticipant", attributes)
        for role in participant.get("roles") or []:
            _coded(active, "RoleIDCode", role)
    source = ET.SubElement(
        message, "AuditSourceIdentification", {"AuditSourceID": str(data["source"])}
    )
    ET.SubElement(source, "AuditSourceTypeCode", _SOURCE_TYPE)
    for obj in data.get("objects") or []:
        attributes = {
            "ParticipantObjectID": str(obj["object_id"]),
            "ParticipantObjectTypeCode": str(obj["type_code"]),
            "ParticipantObjectTypeCodeRole": str(obj["role"]),
        }
        if obj.get("lifecycle") is not None:
            attributes["ParticipantObjectDataLifeCycle"] = str(obj["lifecycle"])
        element = ET.SubElement(message, "ParticipantObjectIdentification", attributes)
        _coded(element, "ParticipantObjectIDTypeCode", obj["id_type"])
        for detail in obj.get("details") or []:
            ET.SubElement(
                element,
                "ParticipantObjectDetail",
                {"type": str(detail["type"]), "value": _b64(str(detail["value"]))},
            )
        for sop in obj.get("sop_classes") or []:
            ET.SubElement(
                element,
                "SOPClass",
                {"UID": str(sop["uid"]), "NumberOfInstances": str(sop["count"])},
            )
    return message


def render(events: Iterable[dict[str, Any]]) -> bytes:
    """``<AuditMessages>`` holding one ``AuditMessage`` per event, UTF-8 with a declaration."""
    root = ET.Element("AuditMessages")
    for stored in events:
        root.append(audit_message(stored))
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)
