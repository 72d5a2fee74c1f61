"""OpenTelemetry tracing: SDK set-up from ``OTEL_*``, context in AMQP headers, safe attributes.

Every service calls :func:`configure_tracing` once (``configure_telemetry`` does it). Code that
makes spans uses the plain OpenTelemetry API and never needs this module to start a span::

    from opentelemetry import trace
    from edge.common.tracing import safe_attributes

    tracer = trace.get_tracer(__name__)

    with tracer.start_as_current_span(
        "catalog upsert", attributes=safe_attributes(**{"dicom.study_uid": study_uid})
    ):
        ...

Crossing the broker
    W3C trace context (``traceparent``/``tracestate``) travels in AMQP headers. ``AioPikaBus``
    and the RPC client/server do it already; other code that sends or receives AMQP messages
    by hand uses the same pair::

        headers: dict[str, object] = {}
        inject(headers)                      # the current span becomes the remote parent
        ...
        parent = extract(message.headers)    # a Context; bytes header values are fine
        with tracer.start_as_current_span("relay study.arrived", context=parent):
            ...

    A context can also be kept and resumed later (the outbox relay publishing what a
    transaction wrote): store the dict ``inject`` filled next to the row and hand it to
    ``extract`` when the row is published, or link to it (``links=[Link(span_context)]``).

Crossing threads
    The context is a ``contextvars`` value: a thread pool or ``run_coroutine_threadsafe`` does
    not carry it by itself. Wrap the callable with :func:`carry_context` (thread pools), or run
    the coroutine under :func:`in_context` (from a thread onto the event loop).

No PHI in spans
    Span attributes carry AE titles, UIDs, sizes, statuses, counts, queue names and object
    keys, never patient names, IDs, birth dates or other demographics. :func:`safe_attributes`
    enforces it by construction: a key not in :data:`ALLOWED_ATTRIBUTES` is a programming error
    (``ValueError``), and a ``*_uid`` value that is not a valid UID is replaced by
    ``"<invalid>"``, so free text from a peer cannot ride in under a UID key. Exceptions are
    recorded by type only (:func:`record_failure`): their messages can quote data (a database
    error repeats the key it refused).

Configuration (standard variables; the SDK reads the ``OTEL_EXPORTER_OTLP_*`` ones itself)
    - ``OTEL_SDK_DISABLED=true``: no SDK, every span is a no-op (context still propagates).
    - ``OTEL_SERVICE_NAME`` (or ``service.name`` in ``OTEL_RESOURCE_ATTRIBUTES``); default
      ``edge-<service>``.
    - ``OTEL_TRACES_EXPORTER``: comma list of ``otlp``, ``console`` (one JSON span per line on
      stdout), ``none``. Unset: ``otlp`` when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
      ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set, else ``none``. The specification's
      default is ``otlp`` to localhost:4318, which on a developer machine is a collector that
      is not there and an export error every few seconds; every deployment sets the endpoint.
      With ``none`` spans are still made, so log lines carry trace and span ids and the
      context still crosses the broker.
    - ``OTEL_EXPORTER_OTLP_PROTOCOL`` / ``..._TRACES_PROTOCOL``: ``http/protobuf`` (default,
      installed). ``grpc`` works only where ``opentelemetry-exporter-otlp-proto-grpc`` is
      installed; otherwise the export is switched off with an error in the log.
    - ``OTEL_BSP_*`` (batching), ``OTEL_TRACES_SAMPLER*``, ``OTEL_PROPAGATORS``: as the SDK
      defines them.
"""

from __future__ import annotations

import contextvars
import functools
import json
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Mapping, MutableMapping
from typing import Any, ParamSpec, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.environment_variables import OTEL_TRACES_EXPORTER
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.environment_variables import (
    OTEL_EXPORTER_OTLP_ENDPOINT,
    OTEL_EXPORTER_OTLP_PROTOCOL,
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
    OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
    OTEL_SDK_DISABLED,
)
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import Span, StatusCode

from edge.common.dicom import is_valid_uid

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

AttributeValue = str | bool | int | float

# The only span attribute keys the suite writes. Add a key here (and have it reviewed) rather
# than bypassing the list: this is where "no PHI in spans" is decided.
ALLOWED_ATTRIBUTES: frozenset[str] = frozenset(
    {
        # DICOM network and instances (PS3.7/PS3.8 terms; UIDs are validated as UIDs).
        "dicom.calling_ae",
        "dicom.called_ae",
        "dicom.association.outcome",
        "dicom.sop_class_uid",
        "dicom.sop_instance_uid",
        "dicom.study_uid",
        "dicom.series_uid",
        "dicom.transfer_syntax_uid",
        "dicom.status",
        "dicom.size",
        "dicom.modality",
        "dicom.instance_count",
        "dicom.series_count",
        "dicom.move_destination",
        "network.peer.address",
        "network.peer.port",
        # Messaging (OpenTelemetry semantic conventions) and the event envelope.
        "messaging.system",
        "messaging.operation.type",
        "messaging.destination.name",
        "messaging.rabbitmq.destination.routing_key",
        "messaging.message.id",
        "messaging.message.body.size",
        "messaging.consumer.group.name",
        "edge.queue",
        "edge.event",
        "edge.event.type",
        "edge.sequence",
        "edge.delivery_count",
        "edge.outcome",
        "edge.count",
        "edge.failed",
        # RPC over the broker and S3 (rpc.* and aws.s3.* semantic conventions).
        "rpc.system",
        "rpc.service",
        "rpc.method",
        "aws.s3.bucket",
        "aws.s3.key",
        "edge.object.size",
        # HTTP (http.* semantic conventions): the route template and the status, never a query.
        "http.route",
        "http.response.status_code",
        # Database (db.* semantic conventions): operation names, never statements or values.
        "db.system.name",
        "db.operation.name",
        "db.collection.name",
        "db.namespace",
        # Failures: the exception's type, never its message.
        "error.type",
        "exception.type",
    }
)

INVALID = "<invalid>"


def safe_attributes(
    attributes: Mapping[str, object] | None = None, /, **kw: object
) -> dict[str, AttributeValue]:
    """Span attributes from the allow-list only; ``None`` values are left out.

    Keys are dotted (``dicom.study_uid``), so pass them as a mapping or ``**{...}``. Raises
    ``ValueError`` for a key that is not in :data:`ALLOWED_ATTRIBUTES` or a value that is not a
    string, number or bool. A ``*_uid`` value that is not a valid UID becomes ``"<invalid>"``.
    """
    merged = {**(attributes or {}), **kw}
    safe: dict[str, AttributeValue] = {}
    for key, value in merged.items():
        if key not in ALLOWED_ATTRIBUTES:
            raise ValueError(f"span attribute {key!r} is not in the allow-list (no PHI in spans)")
        if value is None:
            continue
        if not isinstance(value, str | bool | int | float):
            raise ValueError(f"span attribute {key!r} must be str, bool, int or float")
        if key.endswith("_uid") and not (isinstance(value, str) and is_valid_uid(value)):
            value = INVALID
        safe[key] = value
    return safe


def record_failure(span: Span, exc: BaseException) -> None:
    """Mark ``span`` failed with the exception's type only (its message may quote data)."""
    name = type(exc).__name__
    span.set_attribute("error.type", name)
    span.set_status(StatusCode.ERROR, name)


# -- context across the broker -----------------------------------------------------------------


class _AmqpHeaderGetter(Getter[Mapping[str, Any]]):
    """Reads AMQP headers, whose string values may arrive as bytes."""

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        value = carrier.get(key)
        if value is None:
            return None
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        return [str(value)]

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return list(carrier.keys())


_GETTER = _AmqpHeaderGetter()


def inject(headers: MutableMapping[str, Any], context: Context | None = None) -> None:
    """Write the current (or given) trace context into ``headers`` (W3C ``traceparent``...)."""
    propagate.inject(headers, context=context)


def extract(headers: Mapping[str, Any] | None) -> Context:
    """The context a sender injected into ``headers``; an empty one when there is none."""
    return propagate.extract(headers or {}, getter=_GETTER)


# -- context across threads --------------------------------------------------------------------


def carry_context(fn: Callable[P, T]) -> Callable[P, T]:
    """``fn`` bound to the caller's context, for a thread pool: ``submit(carry_context(f))``."""
    ctx = contextvars.copy_context()

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        return ctx.copy().run(fn, *args, **kwargs)

    return run


async def in_context(coro: Coroutine[Any, Any, T], context: Context) -> T:
    """Await ``coro`` with ``context`` current: for ``run_coroutine_threadsafe`` from a thread."""
    token = otel_context.attach(context)
    try:
        return await coro
    finally:
        otel_context.detach(token)


# -- SDK set-up ----------------------------------------------------------------------------------


def _one_line(span: ReadableSpan) -> str:
    # One span per line, so that a log file holding spans can be read line by line.
    return json.dumps(json.loads(span.to_json()), separators=(",", ":")) + "\n"


def _exporter_names() -> list[str]:
    configured = os.environ.get(OTEL_TRACES_EXPORTER, "").strip()
    if configured:
        return [name.strip().lower() for name in configured.split(",") if name.strip()]
    if os.environ.get(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) or os.environ.get(
        OTEL_EXPORTER_OTLP_ENDPOINT
    ):
        return ["otlp"]
    return ["none"]


def _otlp_exporter() -> SpanExporter | None:
    protocol = (
        os.environ.get(OTEL_EXPORTER_OTLP_TRACES_PROTOCOL)
        or os.environ.get(OTEL_EXPORTER_OTLP_PROTOCOL)
        or "http/protobuf"
    ).strip()
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found]
                OTLPSpanExporter as GrpcExporter,
            )
        except ImportError:
            log.error(
                "OTEL_EXPORTER_OTLP_PROTOCOL=grpc but only the OTLP/HTTP exporter is installed; "
                "traces are not exported (set http/protobuf and the collector's :4318 endpoint)"
            )
            return None
        return GrpcExporter()  # type: ignore[no-any-return]
    if protocol != "http/protobuf":
        log.error("OTLP protocol %r is not supported; traces are not exported", protocol)
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()  # reads OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, HEADERS, TIMEOUT...


def _exporters() -> list[SpanExporter]:
    exporters: list[SpanExporter] = []
    for name in _exporter_names():
        if name == "none":
            continue
        if name == "console":
            exporters.append(ConsoleSpanExporter(out=sys.stdout, formatter=_one_line))
        elif name == "otlp":
            exporter = _otlp_exporter()
            if exporter is not None:
                exporters.append(exporter)
        else:
            log.error("OTEL_TRACES_EXPORTER %r is not supported (otlp, console, none)", name)
    return exporters


def tracer_provider() -> TracerProvider | None:
    """The SDK provider installed in this process, or None (SDK disabled or not configured)."""
    provider = trace.get_tracer_provider()
    return provider if isinstance(provider, TracerProvider) else None


def _sdk_disabled() -> bool:
    return os.environ.get(OTEL_SDK_DISABLED, "").strip().lower() == "true"


def _provider(service: str) -> TracerProvider | None:
    existing = tracer_provider()
    if existing is not None or _sdk_disabled():
        return existing
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: f"edge-{service}"}))
    # Shut down (flushed) by shutdown_tracing, not by an atexit hook racing the logging one.
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    trace.set_tracer_provider(provider)
    return provider


def configure_tracing(service: str) -> TracerProvider | None:
    """Install the SDK tracer provider for ``service`` with the exporters ``OTEL_*`` asks for.

    Idempotent per process: a second call adds nothing. Returns None when
    ``OTEL_SDK_DISABLED=true`` (the API's no-op tracer stays in place).
    """
    if tracer_provider() is not None:
        return tracer_provider()
    provider = _provider(service)
    if provider is None:
        return None
    for exporter in _exporters():
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def add_span_exporter(exporter: SpanExporter, *, service: str = "test") -> TracerProvider:
    """Send every span of this process to ``exporter`` as it ends (tests: in-memory exporter).

    Installs a provider first if none is installed, whatever ``OTEL_SDK_DISABLED`` says.
    """
    provider = tracer_provider()
    if provider is None:
        provider = TracerProvider(
            resource=Resource.create({SERVICE_NAME: f"edge-{service}"}), shutdown_on_exit=False
        )
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def shutdown_tracing(timeout_millis: int = 5000) -> None:
    """Export what is still batched and stop the exporters (graceful shutdown)."""
    provider = tracer_provider()
    if provider is not None:
        provider.force_flush(timeout_millis)
        provider.shutdown()
