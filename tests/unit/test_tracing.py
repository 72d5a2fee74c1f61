"""Tracing helpers: context through AMQP headers and threads, the attribute allow-list, log ids."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from edge.common import tracing
from edge.common.telemetry import JsonFormatter
from edge.common.tracing import (
    INVALID,
    add_span_exporter,
    carry_context,
    extract,
    in_context,
    inject,
    safe_attributes,
)

tracer = trace.get_tracer(__name__)

STUDY_UID = "1.2.826.0.1.3680043.8.498.1"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    add_span_exporter(exporter)
    yield exporter
    exporter.shutdown()  # a shut-down exporter keeps nothing more


def test_injected_context_is_extracted_as_the_remote_parent(spans: InMemorySpanExporter) -> None:
    headers: dict[str, object] = {"ce-id": "x"}
    with tracer.start_as_current_span("publish") as producer:
        inject(headers)
    assert str(headers["traceparent"]).startswith("00-")
    with tracer.start_as_current_span("process", context=extract(headers)) as consumer:
        pass
    sent, received = producer.get_span_context(), consumer.get_span_context()
    assert received.trace_id == sent.trace_id
    [finished] = [s for s in spans.get_finished_spans() if s.name == "process"]
    assert finished.parent is not None and finished.parent.span_id == sent.span_id
    assert finished.parent.is_remote


def test_extract_reads_header_values_that_arrive_as_bytes(spans: InMemorySpanExporter) -> None:
    headers: dict[str, object] = {}
    with tracer.start_as_current_span("publish") as producer:
        inject(headers)
    as_bytes = {key: str(value).encode() for key, value in headers.items()}
    parent = trace.get_current_span(extract(as_bytes)).get_span_context()
    assert parent.trace_id == producer.get_span_context().trace_id


def test_extract_without_headers_gives_no_parent() -> None:
    assert not trace.get_current_span(extract(None)).get_span_context().is_valid
    assert not trace.get_current_span(extract({"ce-id": b"1"})).get_span_context().is_valid


@pytest.mark.parametrize(
    "key",
    [
        "dicom.patient_name",
        "dicom.patient_id",
        "dicom.patient_birth_date",
        "PatientName",
        "patient.name",
        "db.query.text",
        "exception.message",
    ],
)
def test_allow_list_refuses_demographics_and_free_text_keys(key: str) -> None:
    with pytest.raises(ValueError, match="allow-list"):
        safe_attributes({key: "SENTINEL^PHI^NAME"})


def test_allow_list_keeps_allowed_keys_and_drops_none() -> None:
    attributes = safe_attributes(
        {"dicom.calling_ae": "MODALITY", "dicom.study_uid": STUDY_UID, "dicom.size": 12},
        **{"dicom.series_uid": None},
    )
    assert attributes == {
        "dicom.calling_ae": "MODALITY",
        "dicom.study_uid": STUDY_UID,
        "dicom.size": 12,
    }


def test_a_uid_key_never_carries_free_text() -> None:
    attributes = safe_attributes({"dicom.sop_instance_uid": "DOE^JOHN", "dicom.study_uid": "1.2"})
    assert attributes == {"dicom.sop_instance_uid": INVALID, "dicom.study_uid": "1.2"}


def test_attribute_values_must_be_plain_scalars() -> None:
    with pytest.raises(ValueError, match="must be"):
        safe_attributes({"edge.count": [1, 2]})


def test_record_failure_keeps_the_exception_type_not_its_message(
    spans: InMemorySpanExporter,
) -> None:
    with tracer.start_as_current_span("failing") as span:
        tracing.record_failure(span, ValueError("Key (patient_id)=(SENTINELPID123) exists"))
    [finished] = [s for s in spans.get_finished_spans() if s.name == "failing"]
    assert "SENTINEL" not in json.dumps(finished.to_json())
    assert finished.attributes is not None and finished.attributes["error.type"] == "ValueError"


def _log_line(logger: logging.Logger, message: str) -> dict[str, object]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("test"))
    logger.addHandler(handler)
    try:
        logger.warning(message)
    finally:
        logger.removeHandler(handler)
    return json.loads(stream.getvalue())  # type: ignore[no-any-return]


def test_log_lines_carry_trace_and_span_ids_inside_a_span(spans: InMemorySpanExporter) -> None:
    logger = logging.getLogger("edge.test.tracing")
    with tracer.start_as_current_span("work") as span:
        entry = _log_line(logger, "inside")
    context = span.get_span_context()
    assert entry["trace_id"] == f"{context.trace_id:032x}"
    assert entry["span_id"] == f"{context.span_id:016x}"
    assert "trace_id" not in _log_line(logger, "outside")


def test_carry_context_takes_the_span_into_a_worker_thread(spans: InMemorySpanExporter) -> None:
    def current_trace_id() -> int:
        return trace.get_current_span().get_span_context().trace_id

    with tracer.start_as_current_span("c-store") as span, ThreadPoolExecutor(1) as pool:
        plain = pool.submit(current_trace_id).result()
        carried = pool.submit(carry_context(current_trace_id)).result()
    assert carried == span.get_span_context().trace_id
    assert plain != carried


def test_in_context_runs_a_coroutine_from_a_thread_under_the_callers_span(
    spans: InMemorySpanExporter,
) -> None:
    async def current_trace_id() -> int:
        return trace.get_current_span().get_span_context().trace_id

    loop = asyncio.new_event_loop()
    try:
        with tracer.start_as_current_span("association") as span:
            context = otel_context.get_current()
        seen = loop.run_until_complete(in_context(current_trace_id(), context))
    finally:
        loop.close()
    assert seen == span.get_span_context().trace_id


def test_exporters_default_to_none_without_an_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "OTEL_TRACES_EXPORTER",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ):
        monkeypatch.delenv(name, raising=False)
    assert tracing._exporter_names() == ["none"]
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    assert tracing._exporter_names() == ["otlp"]
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console, none")
    assert tracing._exporter_names() == ["console", "none"]


def test_configured_exporters_follow_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console,otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_PROTOCOL", raising=False)
    kinds = [type(e) for e in tracing._exporters()]
    assert kinds == [ConsoleSpanExporter, OTLPSpanExporter]
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    try:
        import opentelemetry.exporter.otlp.proto.grpc  # noqa: F401
    except ImportError:
        assert tracing._exporters() == []  # refused with an error in the log, not a crash


def test_console_spans_are_one_json_object_per_line(spans: InMemorySpanExporter) -> None:
    with tracer.start_as_current_span("line", attributes=safe_attributes({"edge.count": 2})):
        pass
    [finished] = [s for s in spans.get_finished_spans() if s.name == "line"]
    text = tracing._one_line(finished)
    assert text.endswith("\n") and text.count("\n") == 1
    assert json.loads(text)["attributes"] == {"edge.count": 2}


def test_queue_lag_is_the_age_of_the_event_time() -> None:
    from datetime import UTC, datetime, timedelta

    from edge.common.bus import _queue_lag

    sent = (datetime.now(UTC) - timedelta(seconds=3)).isoformat()
    lag = _queue_lag({"ce-time": sent.encode()})
    assert lag is not None and 3 <= lag < 10
    assert _queue_lag({"ce-time": "not a time"}) is None
    assert _queue_lag({}) is None
