"""Which parser reads a report: named by `?format=`, or recognised by its shape."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from registry.scans import generic, grype, trivy
from registry.scans.report_fields import ReportError
from storage.scan_reports import ParsedReport

PARSERS: dict[str, Callable[[Mapping[str, Any]], ParsedReport]] = {
    "trivy": trivy.parse,
    "grype": grype.parse,
    "generic": generic.parse,
}


def parse_report(body: bytes, format_name: str | None = None) -> ParsedReport:
    """Parse a report body; `ReportError` with a precise message when it cannot be read."""
    if format_name is not None and format_name not in PARSERS:
        raise ReportError(f"format {format_name!r} is not known; use {', '.join(PARSERS)}")
    try:
        document = json.loads(body)
    except UnicodeDecodeError:
        raise ReportError("the body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ReportError(
            f"the body is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    if not isinstance(document, dict):
        raise ReportError("the report must be a JSON object")
    if format_name is None:
        for name, module in (("generic", generic), ("trivy", trivy), ("grype", grype)):
            if module.looks_like(document):
                format_name = name
                break
        else:
            raise ReportError(
                "not a report we recognise: expected a Trivy report (SchemaVersion, Results), "
                'a Grype report (matches, descriptor) or {"format": "trustyard.scan.v1", ...}'
            )
    return PARSERS[format_name](document)
