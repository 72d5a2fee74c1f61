"""DICOM JSON (PS3.18 F.2) to the Native DICOM Model XML (PS3.19 A.1), for WADO-RS metadata
requested as ``multipart/related; type="application/dicom+xml"``. A plain function over one
instance's attributes; no I/O.
"""

from __future__ import annotations

from typing import Any
from xml.etree import ElementTree as ET

from pydicom.datadict import keyword_for_tag

XML_SPACE = "{http://www.w3.org/XML/1998/namespace}space"
NAMESPACE = "http://dicom.nema.org/PS3.19/models/NativeDICOM"
# PS3.19 A.1.1: the person name components, in order, of each of the three representations.
NAME_COMPONENTS = ("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix")
NAME_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _person_name(parent: ET.Element, number: int, value: Any) -> None:
    name = ET.SubElement(parent, "PersonName", number=str(number))
    if not isinstance(value, dict):
        return
    for group in NAME_GROUPS:
        text = value.get(group)
        if not text:
            continue
        element = ET.SubElement(name, group)
        for component, part in zip(NAME_COMPONENTS, str(text).split("^"), strict=False):
            if part:
                ET.SubElement(element, component).text = part


def _private_creator(attributes: dict[str, Any], tag: int) -> str | None:
    """The Private Creator of a private data element (PS3.5 7.8.1): (gggg,00xx) for (gggg,xxyy)."""
    group, element = tag >> 16, tag & 0xFFFF
    if not group % 2 or element < 0x1000:
        return None
    creator = attributes.get(f"{group:04X}00{element >> 8:02X}", {})
    values = creator.get("Value") or []
    return str(values[0]) if values else None


def _attributes(parent: ET.Element, attributes: dict[str, Any]) -> None:
    for key in sorted(attributes):
        item = attributes[key]
        if not isinstance(item, dict):
            continue
        tag = int(key, 16)
        vr = str(item.get("vr", "UN"))
        fields = {"tag": key.upper(), "vr": vr}
        keyword = keyword_for_tag(tag)
        if keyword:
            fields["keyword"] = keyword
        creator = _private_creator(attributes, tag)
        if creator:
            fields["privateCreator"] = creator
        element = ET.SubElement(parent, "DicomAttribute", fields)
        if "BulkDataURI" in item:
            ET.SubElement(element, "BulkData", uri=str(item["BulkDataURI"]))
        elif "InlineBinary" in item:
            ET.SubElement(element, "InlineBinary").text = str(item["InlineBinary"])
        for number, value in enumerate(item.get("Value") or [], start=1):
            if vr == "SQ":
                sub = ET.SubElement(element, "Item", number=str(number))
                _attributes(sub, value if isinstance(value, dict) else {})
            elif vr == "PN":
                _person_name(element, number, value)
            else:
                text = ET.SubElement(element, "Value", number=str(number))
                if value is not None:
                    text.text = _text(value)


def native_model(attributes: dict[str, Any]) -> bytes:
    """One instance's attributes (DICOM JSON) as a PS3.19 ``NativeDicomModel`` document."""
    root = ET.Element("NativeDicomModel", {"xmlns": NAMESPACE, XML_SPACE: "preserve"})
    _attributes(root, attributes)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)
