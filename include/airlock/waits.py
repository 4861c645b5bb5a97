"""Waits a step hands over instead of sleeping in a worker slot.

A step that must wait for something outside it (a server to answer, a rollout, replicas gone, an RDS
instance available) is a generator: it yields a `Wait` and gets the check's last result back once
the wait is met. In the DAG the StepOperator checks once and, if not met, defers to the triggerer
(no worker slot held) and runs the step again when it fires; steps are idempotent, so the rerun
passes what is done and finds the wait met. Outside Airflow (the demo, tests) `run_waits` polls in
the process."""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any

from airlock.progress import Every, wait_line

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_ERRORS = 6
"""Transient errors in a row a wait rides out (backing off up to BACKOFF_CAP_SECONDS) before failing."""
BACKOFF_CAP_SECONDS = 60.0

Waiting = Generator["Wait", dict, Any]
"""A step or driver call that may wait: yields Waits, receives each one's last check result."""


@dataclass(frozen=True)
class Wait:
    """Call `check` ("module:function", run in the triggerer) with `kwargs` (stored by Airflow: never
    a secret; connections are named by id) every `poll_interval` seconds until it returns
    {"done": True, …}, for at most `timeout_seconds`. `what` says what is awaited, for the log and
    the error; `hint` what to look at when it does not happen."""

    what: str
    check: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    timeout_seconds: float = 300
    poll_interval: float = 2
    hint: str = ""
    on_failure: str = ""
    """"module:function" run on the worker with `kwargs` when the wait fails: what it returns (a server's
    last log lines) ends the error, and it may clean up (stop a server that never answered)."""

    def reported(self, failure: WaitFailed) -> WaitFailed:
        """The failure with what `on_failure` adds; a report that cannot be had is said, not raised."""
        if not self.on_failure:
            return failure
        try:
            report = load_check(self.on_failure)(**self.kwargs)
        except Exception as error:
            report = f"(nothing more could be reported: {error})"
        return WaitFailed(f"{failure}\n{report}" if report else str(failure))

    def failed(self, reason: str) -> WaitFailed:
        return WaitFailed(f"{self.what}: {reason}" + (f". {self.hint}" if self.hint else ""))

    def timed_out(self, last: dict | None) -> WaitFailed:
        state = {key: value for key, value in (last or {}).items() if key not in ("done", "status", "polls")}
        return self.failed(f"not within {self.timeout_seconds:.0f} s (last seen: {state or 'no answer'})")


class WaitFailed(RuntimeError):
    """A wait that timed out or whose check gave a verdict (a failed snapshot, a vanished instance)."""


class CheckFailed(RuntimeError):
    """A check's verdict (a snapshot that failed, a Job that vanished): fails the wait at once. Any
    other exception is taken as transient (a reset, a 500, a timeout) and retried with backoff."""


def load_check(path: str):
    module, _, name = path.partition(":")
    return getattr(import_module(module), name)


def waits_of(outcome: Any) -> Waiting:
    """A call's waits, whether it has some (a generator) or not (a plain result): `yield from` it."""
    if inspect.isgenerator(outcome):
        return (yield from outcome)
    return outcome


def look_once(check: str, kwargs: dict) -> dict:
    """One look at a wait's check: its result, or, for a transient error (a reset, a 500, a timeout),
    a not-yet that carries it under "transient_error". A verdict (CheckFailed) is raised."""
    try:
        return load_check(check)(**kwargs)
    except CheckFailed:
        raise
    except Exception as error:
        return {"done": False, "transient_error": str(error)}


def backoff_seconds(poll_interval: float, errors: int) -> float:
    """How long to wait after `errors` transient errors in a row: 2, 4, 8 … poll intervals, capped."""
    return min(poll_interval * 2 ** errors, BACKOFF_CAP_SECONDS)


def run_waits(outcome: Any, clock=time.monotonic, sleep=time.sleep) -> Any:
    """Run a step to its end in this process, polling each of its waits here (outside Airflow) by
    the triggerer's rules: transient errors back off and fail the wait after MAX_CONSECUTIVE_ERRORS
    in a row."""
    if not inspect.isgenerator(outcome):
        return outcome
    try:
        wait = next(outcome)
        while True:
            wait = outcome.send(poll_here(wait, clock, sleep))
    except StopIteration as finished:
        return finished.value


def poll_here(wait: Wait, clock, sleep) -> dict:
    """Poll one wait in this process until it is met; its failure or timeout raises WaitFailed, with
    what the wait's `on_failure` reports."""
    started, errors, every = clock(), 0, Every(clock=clock)
    deadline = started + wait.timeout_seconds
    while True:
        try:
            last = look_once(wait.check, wait.kwargs)
        except CheckFailed as verdict:
            raise wait.reported(wait.failed(str(verdict))) from None
        errors = errors + 1 if "transient_error" in last else 0
        if errors >= MAX_CONSECUTIVE_ERRORS:
            raise wait.reported(wait.failed(f"{last['transient_error']} (failed {errors} times in a row)"))
        if last["done"]:
            return last
        if clock() >= deadline:
            raise wait.reported(wait.timed_out(last))
        if errors:
            backoff = backoff_seconds(wait.poll_interval, errors)
            log.warning("%s: the last look failed (%s), %d in a row; trying again in %.0f s", wait.what,
                        last["transient_error"], errors, backoff)
            sleep(backoff)
            continue
        if every.due():
            log.info(wait_line(wait.what, clock() - started, deadline - clock(), last))
        sleep(wait.poll_interval)
