"""Shared library of DICOM Edge: settings, events, bus, RPC, store, catalog, DICOM helpers."""
