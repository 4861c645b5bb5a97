"""Progress lines a person can follow at 3 a.m.: every few seconds ($AIRLOCK_PROGRESS_SECONDS, default
5) a long step logs what it does, how much is done, the rate, and the time left where it can be known
(a known total, or how long the same step took before)."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger("airlock.progress")


DEFAULT_SECONDS = 5.0


def every_seconds() -> float:
    """$AIRLOCK_PROGRESS_SECONDS; a value that is not a positive number is said and replaced by the
    default: a progress setting must neither fail a backup nor log in a busy loop."""
    text = os.environ.get("AIRLOCK_PROGRESS_SECONDS") or str(DEFAULT_SECONDS)
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        log.warning("AIRLOCK_PROGRESS_SECONDS=%r is not a positive number of seconds: using %g", text,
                    DEFAULT_SECONDS)
        return DEFAULT_SECONDS
    return seconds


def clock(seconds: float) -> str:
    """1 h 05 min, 3 min 20 s, 12 s: how a person reads a wait."""
    seconds = max(round(seconds), 0)
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds} s"


def progress_line(what: str, elapsed: float, done: float | None = None, total: float | None = None,
                  expected_seconds: float | None = None, unit: str = "MB", scale: float = 1e6,
                  detail: str = "") -> str:
    """`what`: how much of how much, the rate, and the time left (from the total, else from the
    expected duration); `detail` adds what only the caller knows (tables started, runs still going)."""
    parts = [f"{what}: {clock(elapsed)} so far"]
    if done is not None:
        amount = f"{done / scale:,.1f}" + (f" of {total / scale:,.1f}" if total else "") + f" {unit}"
        if total:
            amount += f" ({min(done / total, 1):.0%})"
        parts.append(f"{amount}, {done / scale / max(elapsed, 1e-6):,.1f} {unit}/s")
    if total and done:
        parts.append(f"about {clock((total - done) * elapsed / done)} left")
    elif expected_seconds:
        left = expected_seconds - elapsed
        parts.append(f"about {clock(left)} left (it took {clock(expected_seconds)} before)" if left > 0 else
                     f"longer than the {clock(expected_seconds)} it took before")
    if detail:
        parts.append(detail)
    return ", ".join(parts)


class Every:
    """True at most once every `seconds` ($AIRLOCK_PROGRESS_SECONDS by default), the first time at
    once: how often a polling loop (a wait for a server, a drain) logs its progress line, whatever
    its poll interval."""

    def __init__(self, seconds: float | None = None, clock: Callable[[], float] = time.monotonic):
        self.seconds, self.clock, self.last = seconds or every_seconds(), clock, None

    def due(self) -> bool:
        now = self.clock()
        if self.last is not None and now - self.last < self.seconds:
            return False
        self.last = now
        return True


def wait_line(what: str, elapsed: float, remaining: float, last: dict) -> str:
    """A wait's progress line: what, for how long, what its check last said, when it gives up."""
    return f"{progress_line(what, elapsed, detail=last.get('progress', ''))}; gives up in {clock(remaining)}"


@contextmanager
def ticking(what: str, measure: Callable[[], float] | None = None, total: float | None = None,
            expected_seconds: float | None = None, detail: Callable[[], str] | None = None,
            unit: str = "MB", scale: float = 1e6, logger: logging.Logger = log) -> Iterator[None]:
    """Log a progress line every few seconds while the block runs (`measure()` says how much is done),
    then one line with how long it took."""
    every, stop, started = every_seconds(), threading.Event(), time.monotonic()

    def line() -> str:
        return progress_line(what, time.monotonic() - started, measure() if measure else None, total,
                             expected_seconds, unit, scale, detail() if detail else "")

    def report() -> None:
        while not stop.wait(every):
            try:
                logger.info("%s", line())
            except Exception as error:  # a progress line must never break the step it follows
                logger.info("%s: %s so far (progress unavailable: %s)", what, clock(time.monotonic() - started),
                            error)

    thread = threading.Thread(target=report, daemon=True, name="airlock-progress")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
    logger.info("%s: done in %s", what, clock(time.monotonic() - started))
