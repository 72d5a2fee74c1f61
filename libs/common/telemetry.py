"""Logging as JSON lines and OpenTelemetry tracing, one call per service."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from opentelemetry import trace
from pynetdicom import _config as pynetdicom_config

from edge.common.tracing import configure_tracing


class JsonFormatter(logging.Formatter):
    """One JSON object per line. Messages carry UIDs and AE titles, never demographics.

    A line logged inside a span carries the span's ``trace_id`` and ``span_id`` (hex, as trace
    back ends show them), so logs and traces meet on one id.
    """

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        # Handlers format in the thread that logs, so the current span is the record's.
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            entry["trace_id"] = trace.format_trace_id(context.trace_id)
            entry["span_id"] = trace.format_span_id(context.span_id)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_telemetry(service: str, level: str = "INFO") -> None:
    """Configure logging and tracing (``OTEL_*``, see ``edge.common.tracing``) for ``service``;
    called by every service's entry point."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # pynetdicom logs every PDU at INFO (and identifiers at DEBUG): keep it to warnings. Its
    # standard DIMSE handlers only ever log at those levels, yet format every message first
    # (~7 % of the retrieval service's Python time in a C-MOVE): not bound at all.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    pynetdicom_config.LOG_HANDLER_LEVEL = "none"
    logging.getLogger("aio_pika").setLevel(logging.WARNING)
    logging.getLogger("aiormq").setLevel(logging.WARNING)
    configure_tracing(service)
