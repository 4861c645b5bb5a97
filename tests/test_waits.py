"""How a step's waits are run outside Airflow (run_waits): met, timed out, refused, or riding out a
transient error; and how a step composes a driver call that may or may not wait (waits_of)."""

from __future__ import annotations

import pytest
from airlock.waits import CheckFailed, Wait, WaitFailed, run_waits, waits_of

ANSWERS: dict[str, list] = {}
"""What each check below answers, in turn (the last answer repeats)."""


def scripted_check(name: str) -> dict:
    answer = ANSWERS[name].pop(0) if len(ANSWERS[name]) > 1 else ANSWERS[name][0]
    if isinstance(answer, Exception):
        raise answer
    return answer


class Clock:
    """Time that moves only when the runner sleeps."""

    def __init__(self):
        self.now, self.slept = 0.0, []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def wait_for(name: str, answers: list, timeout: float = 10) -> Wait:
    ANSWERS[name] = answers
    return Wait(what=f"{name} ready", check="test_waits:scripted_check", kwargs={"name": name},
                timeout_seconds=timeout, poll_interval=2, hint="Look at the thing")


def a_step(*waits: Wait):
    """Yields each wait and returns what every check said when it was met."""
    seen = []
    for wait in waits:
        seen.append((yield wait))
    return {"seen": seen}


def test_a_plain_result_passes_through():
    assert run_waits({"done": "already"}) == {"done": "already"}


def test_each_wait_is_polled_until_met_and_the_step_gets_the_checks_answer():
    clock = Clock()
    result = run_waits(a_step(wait_for("a", [{"done": False}, {"done": False}, {"done": True, "at": 3}]),
                              wait_for("b", [{"done": True, "at": 0}])), clock=clock, sleep=clock.sleep)
    assert result == {"seen": [{"done": True, "at": 3}, {"done": True, "at": 0}]}
    assert clock.slept == [2, 2]


def test_a_transient_error_is_looked_at_again():
    clock = Clock()
    result = run_waits(a_step(wait_for("flaky", [ConnectionResetError("reset"), {"done": True}])), clock=clock,
                       sleep=clock.sleep)
    assert result == {"seen": [{"done": True}]}
    assert clock.slept == [4]  # backing off: 2 poll intervals after the first error


def test_a_transient_error_polled_here_is_logged_with_when_it_is_tried_again(caplog):
    """As the triggerer logs it: on-call reading a slow rollback's log sees why it is not done yet."""
    clock = Clock()
    caplog.set_level("INFO", logger="airlock.waits")
    run_waits(a_step(wait_for("flaky", [ConnectionResetError("reset by peer")] * 2 + [{"done": True}])),
              clock=clock, sleep=clock.sleep)
    assert [record.getMessage() for record in caplog.records if record.levelname == "WARNING"] == [
        "flaky ready: the last look failed (reset by peer), 1 in a row; trying again in 4 s",
        "flaky ready: the last look failed (reset by peer), 2 in a row; trying again in 8 s"]


def test_errors_in_a_row_fail_the_wait_as_the_triggerer_does_not_at_the_timeout():
    clock = Clock()
    with pytest.raises(WaitFailed) as failed:
        run_waits(a_step(wait_for("down", [ConnectionRefusedError("refused")], timeout=3600)), clock=clock,
                  sleep=clock.sleep)
    assert str(failed.value) == "down ready: refused (failed 6 times in a row). Look at the thing"
    assert clock.slept == [4, 8, 16, 32, 60]


def test_a_wait_not_met_in_time_says_what_when_and_where_to_look():
    clock = Clock()
    with pytest.raises(WaitFailed) as failed:
        run_waits(a_step(wait_for("slow", [{"done": False, "replicas": 1}], timeout=10)), clock=clock,
                  sleep=clock.sleep)
    assert str(failed.value) == "slow ready: not within 10 s (last seen: {'replicas': 1}). Look at the thing"
    assert clock.now == 10


def test_a_verdict_fails_the_wait_at_once():
    clock = Clock()
    with pytest.raises(WaitFailed) as failed:
        run_waits(a_step(wait_for("gone", [CheckFailed("the snapshot failed")])), clock=clock, sleep=clock.sleep)
    assert str(failed.value) == "gone ready: the snapshot failed. Look at the thing"
    assert clock.slept == []


def test_waits_of_lets_a_step_take_either_kind_of_driver_call():
    def step(call):
        return (yield from waits_of(call))

    assert run_waits(step({"launched": True})) == {"launched": True}
    assert run_waits(step(a_step(wait_for("c", [{"done": True, "n": 0}])))) == {"seen": [{"done": True, "n": 0}]}


def test_a_hold_ends_its_task_in_the_triggerer_in_success_whatever_the_outcome():
    """The production slot's hold must never resume on a worker (it would need a pool slot again)
    nor fail (it is a leaf: the run's outcome is the report's)."""
    import asyncio
    from datetime import UTC, datetime, timedelta

    from airflow.triggers.base import TaskSuccessEvent
    from airlock.triggers import HoldTrigger

    def first_event(answers: list, deadline: datetime):
        ANSWERS["hold"] = answers
        trigger = HoldTrigger("test_waits:scripted_check", {"name": "hold"}, 0.01, deadline.isoformat())
        assert trigger.serialize()[0] == "airlock.triggers.HoldTrigger"

        async def first():
            return await anext(trigger.run())

        return asyncio.run(first())

    later, past = datetime.now(UTC) + timedelta(hours=1), datetime.now(UTC) - timedelta(seconds=1)
    ended = first_event([{"done": False}, {"done": True, "still_going": []}], later)
    assert isinstance(ended, TaskSuccessEvent)
    assert ended.xcoms == {"return_value": {"held": True, "released": {"status": "done", "still_going": [],
                                                                       "polls": 2}}}
    timed_out = first_event([{"done": False, "still_going": ["conclude.report"]}], past)
    assert isinstance(timed_out, TaskSuccessEvent)
    assert timed_out.xcoms["return_value"]["released"]["status"] == "timeout"


def test_a_wait_polled_here_says_how_it_stands_every_few_seconds_whatever_its_poll_interval(monkeypatch, caplog):
    monkeypatch.setenv("AIRLOCK_PROGRESS_SECONDS", "5")
    clock = Clock()
    caplog.set_level("INFO", logger="airlock.waits")
    result = run_waits(a_step(wait_for("rollout", [{"done": False, "progress": "1 of 2 replicas ready"}] * 6
                                       + [{"done": True}], timeout=60)), clock=clock, sleep=clock.sleep)
    assert result == {"seen": [{"done": True}]}
    assert clock.slept == [2] * 6  # polled every 2 s, said at 0 s and 6 s
    assert [record.getMessage() for record in caplog.records] == [
        "rollout ready: 0 s so far, 1 of 2 replicas ready; gives up in 1 min 00 s",
        "rollout ready: 6 s so far, 1 of 2 replicas ready; gives up in 54 s"]


def test_a_wait_in_the_triggerer_logs_its_progress_at_most_every_few_seconds(monkeypatch, capfd):
    import asyncio
    from datetime import UTC, datetime, timedelta

    from airlock.triggers import PollTrigger

    monkeypatch.setenv("AIRLOCK_PROGRESS_SECONDS", "3600")
    ANSWERS["drain"] = [{"done": False, "progress": "1 run(s) still going on staging: nightly"}] * 20 + [
        {"done": True}]
    trigger = PollTrigger("test_waits:scripted_check", {"name": "drain"}, 0.001,
                          (datetime.now(UTC) + timedelta(hours=1)).isoformat())

    async def first():
        return await anext(trigger.run())

    assert asyncio.run(first()).payload["polls"] == 21
    out, err = capfd.readouterr()  # the triggerer's log (structlog) goes to the output
    lines = [line for line in (out + err).splitlines() if "so far" in line]
    assert len(lines) == 1, lines  # 20 polls not done, one line
    assert "waiting (scripted_check): 0 s so far, 1 run(s) still going on staging: nightly; gives up in " in lines[0]
