"""The suite's own helpers, where a fault in them would hang a test instead of failing it."""

from __future__ import annotations

import sqlite3
import time

from harness import GateAnswerer


class LockedAtFirst(GateAnswerer):
    """The metadata database answers "locked" twice (SQLite under dag.test and this thread), then
    shows no gate."""

    def __init__(self):
        super().__init__("airlock_upgrade__any", "Approve", timeout=30)
        self.looks = 0

    def pending_gates(self) -> list[str]:
        self.looks += 1
        if self.looks <= 2:
            raise sqlite3.OperationalError("database is locked")
        return []


def test_the_gate_answerer_looks_again_after_a_failed_look_instead_of_dying():
    answerer = LockedAtFirst()
    answerer.start()
    try:
        deadline = time.monotonic() + 20
        while answerer.looks < 4 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert answerer.is_alive() and answerer.looks >= 4
        assert answerer.errors == ["OperationalError: database is locked"] * 2
    finally:
        answerer.stop_event.set()
        answerer.join(timeout=5)
