"""The picture of the last hours: builds finished per minute (bars) and the queue's depth
(a line), as the numbers an inline SVG needs. Pure."""

from __future__ import annotations

import datetime

import attrs

from buildmaster.store.views import FarmHistory

__all__ = ["Chart", "chart_of"]

WIDTH = 720
HEIGHT = 140
#: room for the axis labels
LEFT = 44
RIGHT = 44
TOP = 10
BOTTOM = 20


@attrs.frozen
class Bar:
    x: float
    y: float
    width: float
    height: float
    title: str


@attrs.frozen
class Chart:
    width: int
    height: int
    plot_left: int
    plot_right: int
    plot_top: int
    plot_bottom: int
    bars: tuple[Bar, ...]
    #: the queue's depth: an SVG polyline's points ("" without samples)
    line: str
    max_finished: int
    max_waiting: int
    #: the labels under the time axis: (x, text)
    ticks: tuple[tuple[float, str], ...]
    samples: int
    total_finished: int
    last_waiting: int | None
    hours: float


def _nice(value: int) -> int:
    """The axis's top: 1, 2, 5, 10, 20, 50, ... at least ``value``."""
    top = 1
    while True:
        for step in (1, 2, 5):
            if top * step >= value:
                return top * step
        top *= 10


def chart_of(history: FarmHistory) -> Chart:
    minutes = max(1, int((history.until - history.since).total_seconds() // 60))
    plot_w = WIDTH - LEFT - RIGHT
    plot_h = HEIGHT - TOP - BOTTOM
    step = plot_w / minutes
    samples = history.samples
    max_finished = _nice(max((s.finished for s in samples), default=0))
    max_waiting = _nice(max((s.waiting for s in samples), default=0))
    bottom = TOP + plot_h

    def x_of(minute: datetime.datetime) -> float:
        return LEFT + (minute - history.since).total_seconds() / 60 * step

    bars = []
    points = []
    for s in samples:
        x = x_of(s.minute)
        if s.finished:
            h = plot_h * s.finished / max_finished
            when = s.minute.strftime("%H:%M")
            bars.append(
                Bar(
                    round(x, 1),
                    round(bottom - h, 1),
                    round(max(step - 0.5, 0.8), 1),
                    round(h, 1),
                    f"{when}: {s.finished} finished, {s.waiting} waiting",
                )
            )
        y = bottom - plot_h * s.waiting / max_waiting
        points.append(f"{x + step / 2:.1f},{y:.1f}")
    hours = minutes / 60
    ticks = []
    every = 1 if hours <= 6 else 2 if hours <= 12 else 6
    h = 0
    while h <= hours:
        label = "now" if h == 0 else f"−{h} h"
        ticks.append((round(LEFT + plot_w - h * 60 * step, 1), label))
        h += every
    return Chart(
        width=WIDTH,
        height=HEIGHT,
        plot_left=LEFT,
        plot_right=LEFT + plot_w,
        plot_top=TOP,
        plot_bottom=bottom,
        bars=tuple(bars),
        line=" ".join(points),
        max_finished=max_finished,
        max_waiting=max_waiting,
        ticks=tuple(ticks),
        samples=len(samples),
        total_finished=sum(s.finished for s in samples),
        last_waiting=samples[-1].waiting if samples else None,
        hours=hours,
    )
