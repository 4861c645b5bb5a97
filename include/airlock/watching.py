"""How production is judged after its upgrade, one probe at a time. Pure: the triggerer's watch feeds
it each probe's outcome and the time.

One failed probe is not a verdict: a failure streak becomes one only once it has lasted
`consecutive_failures` probes AND `unhealthy_seconds` (a pod restarting recovers within it). A streak
still open when the watch's time is up is watched on until it recovers or becomes a verdict.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class WatchJudge:
    consecutive_failures: int
    unhealthy_seconds: float
    probes: int = 0
    failures: int = 0
    streak_started: float | None = None
    recovered_after_seconds: list[float] = field(default_factory=list)

    def passed(self, now: float) -> float | None:
        """A probe passed; how long the streak it ends lasted, if it ended one."""
        self.probes += 1
        ended = None
        if self.streak_started is not None:
            ended = round(now - self.streak_started, 1)
            self.recovered_after_seconds.append(ended)
        self.failures, self.streak_started = 0, None
        return ended

    def failed(self, now: float) -> bool:
        """A probe failed; True once the streak is a verdict."""
        self.probes += 1
        self.failures += 1
        self.streak_started = self.streak_started if self.streak_started is not None else now
        return self.failures >= self.consecutive_failures and self.unhealthy_for(now) >= self.unhealthy_seconds

    def unhealthy_for(self, now: float) -> float:
        return 0.0 if self.streak_started is None else now - self.streak_started

    def done(self, now: float, ends: float) -> bool:
        """The watch may end: its time is up and no streak is open."""
        return now >= ends and self.streak_started is None
