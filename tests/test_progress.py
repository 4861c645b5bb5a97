"""Progress lines: what, how much of how much, the rate, and the time left where it can be known."""

import logging
import time

from airlock.progress import clock, progress_line, ticking


def test_a_line_says_how_much_of_how_much_the_rate_and_the_time_left():
    line = progress_line("loading backup b1 into scratch", 10.0, done=40e6, total=100e6)
    assert line == ("loading backup b1 into scratch: 10 s so far, 40.0 of 100.0 MB (40%), 4.0 MB/s, "
                    "about 15 s left")


def test_without_a_total_the_time_left_comes_from_how_long_it_took_before():
    assert progress_line("migrating", 30.0, expected_seconds=100.0) == \
        "migrating: 30 s so far, about 1 min 10 s left (it took 1 min 40 s before)"
    assert progress_line("migrating", 130.0, expected_seconds=100.0) == \
        "migrating: 2 min 10 s so far, longer than the 1 min 40 s it took before"
    assert progress_line("dumping db", 4.0, done=8e6, detail="3 of 19 tables started") == \
        "dumping db: 4 s so far, 8.0 MB, 2.0 MB/s, 3 of 19 tables started"


def test_clock_reads_like_a_person_would_say_it():
    assert [clock(s) for s in (0.4, 59, 61, 3599, 3600 * 26 + 300)] == ["0 s", "59 s", "1 min 01 s", "59 min 59 s",
                                                                         "26 h 05 min"]


def test_ticking_logs_at_a_steady_rate_while_the_step_runs_then_once_at_the_end(monkeypatch, caplog):
    monkeypatch.setenv("AIRLOCK_PROGRESS_SECONDS", "0.2")
    done = {"bytes": 0}
    with caplog.at_level(logging.INFO, logger="airlock.progress"), \
            ticking("copying", measure=lambda: done["bytes"], total=10e6):
        for _ in range(10):
            time.sleep(0.1)
            done["bytes"] += 1e6
    lines = [r.getMessage() for r in caplog.records if r.name == "airlock.progress"]
    assert 3 <= len(lines) - 1 <= 6, lines  # about one line per 0.2 s of a 1 s step
    assert all(" of 10.0 MB (" in line and "left" in line for line in lines[:-1]), lines
    assert lines[-1].startswith("copying: done in ")


def test_a_broken_measure_does_not_break_the_step(monkeypatch, caplog):
    monkeypatch.setenv("AIRLOCK_PROGRESS_SECONDS", "0.05")
    with caplog.at_level(logging.INFO, logger="airlock.progress"), ticking("x", measure=lambda: 1 / 0):
        time.sleep(0.2)
    assert any("progress unavailable: division by zero" in r.getMessage() for r in caplog.records)


def test_a_bad_interval_is_said_and_the_default_used_not_a_failed_backup_or_a_busy_loop(monkeypatch, caplog):
    from airlock.progress import DEFAULT_SECONDS, every_seconds

    for bad in ("abc", "0", "-3", "nan"):
        monkeypatch.setenv("AIRLOCK_PROGRESS_SECONDS", bad)
        with caplog.at_level(logging.WARNING, logger="airlock.progress"):
            assert every_seconds() == DEFAULT_SECONDS
        assert f"AIRLOCK_PROGRESS_SECONDS={bad!r} is not a positive number" in caplog.text
    monkeypatch.setenv("AIRLOCK_PROGRESS_SECONDS", "0.5")
    assert every_seconds() == 0.5
