"""Log lines as JSON carry the trace and span ids of the request being served; text stays as it was."""

from __future__ import annotations

import io
import json
import logging

import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from funnel.serving.logs import JsonFormatter, TraceContext, configure_logging


def test_a_json_line_names_the_service_and_the_trace_of_the_request() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(TraceContext())
    handler.setFormatter(JsonFormatter("gateway"))
    logger = logging.getLogger("test.logs")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("outside any request")
        span = NonRecordingSpan(SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(1)))
        with trace.use_span(span):
            logger.warning("ranking call failed: %s", "UNAVAILABLE")
    finally:
        logger.removeHandler(handler)
    outside, inside = (json.loads(line) for line in out.getvalue().splitlines())
    assert outside["trace_id"] == "" and outside["service"] == "gateway" and outside["level"] == "WARNING"
    assert inside["message"] == "ranking call failed: UNAVAILABLE"
    assert (inside["trace_id"], inside["span_id"]) == (f"{0xABC:032x}", f"{0xDEF:016x}")


def test_an_unknown_log_format_is_refused_naming_the_setting() -> None:
    with pytest.raises(ValueError, match="FUNNEL_LOG_FORMAT: expected one of"):
        configure_logging("gateway", "xml")
