"""A daily quota per person, in the pool's units of work, kept in a small SQLite file so a restart forgets nothing.

The unit is the plan's cost (megapixel-equivalents: what the pool batches by), so a 2048² /fix
counts more than a 256² /stylize. A request is refused once the day's use has reached the quota;
the work of a request that started below it is counted in full when it succeeds (a cancelled or
failed request costs nothing). Days are UTC days; `clock` (seconds since the epoch) is injectable.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from models.errors import EaselError


class QuotaError(EaselError):
    """The person has used their day's quota; the sentence says when it resets."""

    outcome = "quota"


class Quota:
    def __init__(self, path: Path, limit: float, clock: Callable[[], float] = time.time) -> None:
        """`limit` 0 means no quota (and no file is made)."""
        self.path, self.limit, self.clock = path, limit, clock
        self._db: sqlite3.Connection | None = None
        if limit > 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path)
            self._db.execute("CREATE TABLE IF NOT EXISTS used (user INTEGER, day TEXT, units REAL, PRIMARY KEY (user, day))")
            self._db.commit()

    def _day(self) -> tuple[str, int]:
        """Today's UTC date, and when it ends (a Unix time)."""
        now = datetime.fromtimestamp(self.clock(), UTC)
        midnight = datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)
        return now.date().isoformat(), int(midnight.timestamp())

    def used(self, user: int) -> float:
        if self._db is None:
            return 0.0
        row = self._db.execute("SELECT units FROM used WHERE user = ? AND day = ?", (user, self._day()[0])).fetchone()
        return row[0] if row else 0.0

    def check(self, user: int) -> None:
        """Raise QuotaError if the person has used up today's quota."""
        if self._db is not None and self.used(user) >= self.limit:
            resets = self._day()[1]
            raise QuotaError(f"You've used today's quota of {self.limit:g} units of work; it resets <t:{resets}:R> (<t:{resets}:t>).")

    def charge(self, user: int, units: float) -> None:
        """Count a finished request's work against today's quota."""
        if self._db is None:
            return
        self._db.execute("INSERT INTO used VALUES (?, ?, ?) ON CONFLICT (user, day) DO UPDATE SET units = units + excluded.units",
                         (user, self._day()[0], units))
        self._db.commit()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
