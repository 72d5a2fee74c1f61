"""Shared library of DICOM Edge: settings, events, bus, RPC, object store, catalog, DICOM helpers."""
