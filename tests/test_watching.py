"""The watch's judgement over a window: one failed probe is not a verdict; a streak is, once it has
lasted enough probes AND enough time; a streak still open at the end is watched to its end."""

from __future__ import annotations

from airlock.watching import WatchJudge


def test_a_short_streak_recovers_and_is_remembered():
    judge = WatchJudge(consecutive_failures=2, unhealthy_seconds=10)
    assert judge.passed(0.0) is None
    assert not judge.failed(1.0)
    assert not judge.failed(2.0)  # two in a row, but unhealthy for 1 s only
    assert judge.passed(4.0) == 3.0
    assert (judge.probes, judge.failures, judge.recovered_after_seconds) == (4, 0, [3.0])


def test_a_streak_is_a_verdict_only_with_enough_probes_and_enough_time():
    many_quick = WatchJudge(consecutive_failures=3, unhealthy_seconds=60)
    assert not any(many_quick.failed(float(t)) for t in range(10))  # 10 failures within 9 s
    assert many_quick.failed(61.0)
    few_long = WatchJudge(consecutive_failures=3, unhealthy_seconds=5)
    assert not few_long.failed(0.0)
    assert not few_long.failed(100.0)  # long enough, but only two probes
    assert few_long.failed(101.0)


def test_the_watch_ends_only_when_its_time_is_up_and_no_streak_is_open():
    judge = WatchJudge(consecutive_failures=3, unhealthy_seconds=60)
    judge.passed(0.0)
    assert not judge.done(29.0, ends=30.0)
    judge.failed(30.0)
    assert not judge.done(31.0, ends=30.0)  # an open streak is watched to its end
    judge.passed(32.0)
    assert judge.done(32.0, ends=30.0)
