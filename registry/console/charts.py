"""The console's two pictures, computed here and drawn as inline SVG by the templates: the
decisions chart (allowed, warned and denied per time bucket, stacked bars) and the lineage
picture (each library tag on the left, the images built on it on the right)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

WIDTH = 720
HEIGHT = 160
AXIS = 24  # room below the bars for time labels
LEFT = 36  # room left of the bars for counts


@dataclass
class Bar:
    """One bucket's stacked bar: (outcome, y, height) segments bottom up."""

    x: float
    width: float
    label: str
    title: str
    segments: list[tuple[str, float, float]] = field(default_factory=list)


@dataclass
class Chart:
    """The decisions chart."""

    width: int
    height: int
    top: int
    bars: list[Bar]
    ticks: list[tuple[float, str]]  # (y, count label)
    baseline: float


def _label(moment: float, span: float) -> str:
    pattern = "%H:%M" if span <= 2 * 86400 else "%m-%d"
    return time.strftime(pattern, time.gmtime(moment))


def decisions_chart(summary: dict[str, Any]) -> Chart:
    """Stacked bars of `GET /api/v1/decisions/summary`."""
    buckets = summary["buckets"]
    span = float(summary["until"]) - float(summary["since"])
    peak = max([b["allow"] + b["warn"] + b["deny"] for b in buckets] + [1])
    plot = HEIGHT - AXIS - 8
    baseline = HEIGHT - AXIS
    step = (WIDTH - LEFT) / max(len(buckets), 1)
    every = max(1, len(buckets) // 8)
    bars = []
    for index, bucket in enumerate(buckets):
        x = LEFT + index * step
        bar = Bar(
            x=x + 1,
            width=max(step - 2, 1),
            label=_label(bucket["start"], span) if index % every == 0 else "",
            title=(
                f"{_label(bucket['start'], span)}: {bucket['allow']} allowed, "
                f"{bucket['warn']} warned, {bucket['deny']} denied"
            ),
        )
        y = baseline
        for outcome in ("allow", "warn", "deny"):
            height = plot * bucket[outcome] / peak
            if height > 0:
                y -= height
                bar.segments.append((outcome, y, height))
        bars.append(bar)
    ticks = [(baseline - plot * f, str(round(peak * f))) for f in (0.0, 0.5, 1.0)]
    return Chart(WIDTH, HEIGHT, 8, bars, ticks, baseline)


@dataclass
class Node:
    """A box in the lineage picture."""

    x: float
    y: float
    label: str
    href: str
    stale: bool = False


@dataclass
class Lineage:
    """The lineage picture: library tags, images, and edges between them."""

    width: int
    height: int
    bases: list[Node]
    images: list[Node]
    edges: list[tuple[float, float, float, float, bool]]  # x1, y1, x2, y2, stale


ROW = 30
BOX_W = 260


def lineage_picture(groups: list[tuple[str, str, list[dict[str, Any]]]]) -> Lineage:
    """Boxes for each (library tag, link, consumers) group, images stacked beside their base."""
    bases: list[Node] = []
    images: list[Node] = []
    edges: list[tuple[float, float, float, float, bool]] = []
    y = 10.0
    left, right = 10.0, 430.0
    for label, href, consumers in groups:
        rows = max(len(consumers), 1)
        base_y = y + (rows - 1) * ROW / 2
        bases.append(Node(left, base_y, label, href))
        for index, consumer in enumerate(consumers):
            image_y = y + index * ROW
            stale = not consumer["current"]
            images.append(
                Node(
                    right,
                    image_y,
                    f"{consumer['repository']}:{consumer['tag']}",
                    f"/console/repositories/{consumer['repository']}/-/{consumer['digest']}",
                    stale,
                )
            )
            edges.append((left + BOX_W, base_y + 11, right, image_y + 11, stale))
        y += rows * ROW + 14
    return Lineage(right + BOX_W + 10, int(y), bases, images, edges)
