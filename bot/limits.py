"""Fairness: a per-user cooldown and caps on jobs in flight per user and per guild."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from models.errors import UserError


class LimitError(UserError):
    """The person (or their server) is over a fairness limit; the sentence says when to retry."""


class Limiter:
    def __init__(self, cooldown_s: float, per_user: int, per_guild: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.cooldown_s, self.per_user, self.per_guild = cooldown_s, per_user, per_guild
        self.clock = clock
        self.last_start: dict[int, float] = {}
        self.user_jobs: Counter[int] = Counter()
        self.guild_jobs: Counter[int] = Counter()

    def acquire(self, user_id: int, guild_id: int | None) -> Slot:
        """Take a slot or raise LimitError; the slot must be released when the job ends, however it ends."""
        now = self.clock()
        wait = self.last_start.get(user_id, -1e9) + self.cooldown_s - now
        if wait > 0:
            raise LimitError(f"You're on cooldown; try again in {max(1, round(wait))} s.")
        if self.user_jobs[user_id] >= self.per_user:
            running = "a request" if self.user_jobs[user_id] == 1 else f"{self.user_jobs[user_id]} requests"
            raise LimitError(f"You already have {running} running; wait for it to finish." if running == "a request"
                             else f"You already have {running} running; wait for one to finish.")
        if guild_id is not None and self.guild_jobs[guild_id] >= self.per_guild:
            raise LimitError("This server has many requests running right now; please try again in a moment.")
        self.last_start[user_id] = now
        self.user_jobs[user_id] += 1
        if guild_id is not None:
            self.guild_jobs[guild_id] += 1
        return Slot(self, user_id, guild_id)

    def in_flight(self) -> int:
        return sum(self.user_jobs.values())


class Slot:
    def __init__(self, limiter: Limiter, user_id: int, guild_id: int | None) -> None:
        self.limiter, self.user_id, self.guild_id = limiter, user_id, guild_id
        self.released = False

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        self.limiter.user_jobs[self.user_id] -= 1
        if self.guild_id is not None:
            self.limiter.guild_jobs[self.guild_id] -= 1
