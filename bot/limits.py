"""Fairness at the door: a per-user cooldown and a cap on one person's requests in flight.

Fairness between people and servers once admitted is the pool's queue's job (round-robin).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from models.errors import UserError


class LimitError(UserError):
    """The person is over a fairness limit; the sentence says when to retry."""

    outcome = "limited"


class Limiter:
    def __init__(self, cooldown_s: float, per_user: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.cooldown_s, self.per_user = cooldown_s, per_user
        self.clock = clock
        self.last_start: dict[int, float] = {}
        self.user_jobs: Counter[int] = Counter()

    def acquire(self, user_id: int) -> Slot:
        """Take a slot or raise LimitError; the slot must be released when the job ends, however it ends."""
        now = self.clock()
        wait = self.last_start.get(user_id, -1e9) + self.cooldown_s - now
        if wait > 0:
            raise LimitError(f"You're on cooldown; try again in {max(1, round(wait))} s.")
        if self.user_jobs[user_id] >= self.per_user:
            running = "a request" if self.user_jobs[user_id] == 1 else f"{self.user_jobs[user_id]} requests"
            raise LimitError(f"You already have {running} running; wait for it to finish." if running == "a request"
                             else f"You already have {running} running; wait for one to finish.")
        self.last_start[user_id] = now
        self.user_jobs[user_id] += 1
        return Slot(self, user_id)

    def in_flight(self) -> int:
        return sum(self.user_jobs.values())


class Slot:
    def __init__(self, limiter: Limiter, user_id: int) -> None:
        self.limiter, self.user_id = limiter, user_id
        self.released = False

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        self.limiter.user_jobs[self.user_id] -= 1
