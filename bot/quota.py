"""A daily quota per person, in the pool's units of work, kept in a small SQLite file so a restart forgets nothing.

The unit is the plan's cost (megapixel-equivalents of work: what the pool batches by), so a
2048² /fix counts more than a 256² /stylize. A request's cost is reserved when the pool admits
it, and only while the day's use plus what is reserved is under the quota; the reservation
becomes use when the result is delivered, and is released if the request fails or is cancelled.
So concurrent requests cannot overshoot: the day's use passes the quota by at most the cost of
the one request admitted last below it. Reservations live in the same file, so bot processes
sharing it share them too; one left by a process that died expires with its interaction token.
Days are UTC days; `clock` (seconds since the epoch) is injectable.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from models.errors import EaselError

RESERVATION_S = 15 * 60 + 60  # an interaction's token lives 15 minutes: no request outlives that


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
            self._db = sqlite3.connect(path, isolation_level=None)  # transactions are explicit (BEGIN IMMEDIATE)
            self._db.execute("CREATE TABLE IF NOT EXISTS used (user INTEGER, day TEXT, units REAL, PRIMARY KEY (user, day))")
            self._db.execute("CREATE TABLE IF NOT EXISTS reserved (id TEXT PRIMARY KEY, user INTEGER, units REAL, expires REAL)")

    def _day(self) -> tuple[str, int]:
        """Today's UTC date, and when it ends (a Unix time)."""
        now = datetime.fromtimestamp(self.clock(), UTC)
        midnight = datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)
        return now.date().isoformat(), int(midnight.timestamp())

    def used(self, user: int) -> float:
        """Today's delivered work."""
        if self._db is None:
            return 0.0
        row = self._db.execute("SELECT units FROM used WHERE user = ? AND day = ?", (user, self._day()[0])).fetchone()
        return row[0] if row else 0.0

    def _committed(self, user: int) -> float:
        """Today's use plus the reservations of requests in flight."""
        assert self._db is not None
        (held,) = self._db.execute("SELECT COALESCE(SUM(units), 0) FROM reserved WHERE user = ? AND expires > ?",
                                   (user, self.clock())).fetchone()
        return self.used(user) + held

    def _refuse_if_spent(self, user: int) -> None:
        if self._committed(user) >= self.limit:
            resets = self._day()[1]
            raise QuotaError(f"You've used today's quota of {self.limit:g} units of work; it resets <t:{resets}:R> (<t:{resets}:t>).")

    def check(self, user: int) -> None:
        """Raise QuotaError if today's use and the requests in flight have reached the quota (before any download)."""
        if self._db is not None:
            self._refuse_if_spent(user)

    def hold(self, user: int) -> Hold:
        """A request's claim on the quota, made when its cost is known."""
        return Hold(self, user)

    def _reserve(self, user: int, units: float) -> str | None:
        if self._db is None:
            return None
        self._db.execute("BEGIN IMMEDIATE")  # check and reserve as one step, across processes too
        try:
            self._refuse_if_spent(user)
            reservation = uuid.uuid4().hex
            self._db.execute("INSERT INTO reserved VALUES (?, ?, ?, ?)", (reservation, user, units, self.clock() + RESERVATION_S))
            self._db.execute("DELETE FROM reserved WHERE expires <= ?", (self.clock(),))
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        return reservation

    def _settle(self, reservation: str, charge: bool) -> None:
        """The request ended: its reservation goes, and becomes today's use if its result was delivered."""
        assert self._db is not None
        self._db.execute("BEGIN IMMEDIATE")
        row = self._db.execute("DELETE FROM reserved WHERE id = ? RETURNING user, units", (reservation,)).fetchone()
        if charge and row is not None:
            self._db.execute("INSERT INTO used VALUES (?, ?, ?) ON CONFLICT (user, day) DO UPDATE SET units = units + excluded.units",
                             (row[0], self._day()[0], row[1]))
        self._db.execute("COMMIT")

    def close(self) -> None:
        if self._db is not None:
            self._db.close()


class Hold:
    """One request's claim: `reserve(cost)` when the pool admits it, then `deliver()` or `release()`."""

    def __init__(self, quota: Quota, user: int) -> None:
        self.quota, self.user = quota, user
        self.reservation: str | None = None

    def reserve(self, units: float) -> None:
        """Raise QuotaError if the quota has no room left; else hold `units` of it."""
        self.reservation = self.quota._reserve(self.user, units)

    def deliver(self) -> None:
        """The result reached the person: its work counts against today's quota."""
        self._end(charge=True)

    def release(self) -> None:
        """The request ended without a result (failed, cancelled, refused): it costs nothing."""
        self._end(charge=False)

    def _end(self, charge: bool) -> None:
        if self.reservation is not None:
            self.quota._settle(self.reservation, charge)
            self.reservation = None
