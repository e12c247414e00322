"""Queue-wait estimates from measured speeds: how long until a job would be done."""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Iterable

RECENT = 15  # batches remembered per task and device: the estimate is their (lower) median
SETTLED = 3  # measurements after which one odd one no longer moves the estimate


class WaitEstimator:
    """Seconds per unit of cost, per task and device, learnt from finished batches.

    Robust by construction: each device's rate for a task is the lower median of its last RECENT
    measurements. So once SETTLED measurements are in, one odd job (costs are estimates, and a
    machine has slow moments) cannot move the estimate past its neighbours, let alone by orders
    of magnitude, and a real change of speed is followed within half of RECENT batches. Before
    that the estimate is a guess: the pool does not refuse a job on it alone (`settled`).
    """

    def __init__(self) -> None:
        self._recent: dict[tuple[str, str], deque[float]] = {}

    def learn(self, task: str, device: str, cost: float, seconds: float) -> None:
        if cost > 0:
            self._recent.setdefault((task, device), deque(maxlen=RECENT)).append(seconds / cost)

    def settled(self, task: str) -> bool:
        """Enough measurements of the task that a single odd one does not decide its estimate."""
        return sum(len(r) for (name, _), r in self._recent.items() if name == task) >= SETTLED

    def rate(self, task: str) -> float | None:
        """Seconds per unit on one device, as the pool's devices run this task together (their
        speeds add up, so this is the harmonic mean); None until some device has measured it."""
        rates = [statistics.median_low(r) for (name, _), r in self._recent.items() if name == task]
        return len(rates) / sum(1 / r for r in rates) if rates else None

    def rates(self) -> dict[str, float]:
        """Every measured task's rate (for /status and metrics)."""
        return {task: rate for task in dict.fromkeys(name for name, _ in self._recent) if (rate := self.rate(task)) is not None}

    def wait_s(self, task: str, cost: float, ahead: Iterable[tuple[str, float]], devices: int = 1) -> float | None:
        """Seconds until a job of `cost` is done behind the (task, cost) jobs `ahead`, shared over
        `devices`; None until every task involved has been measured once."""
        rates = self.rates()
        ahead = list(ahead)
        if task not in rates or any(name not in rates for name, _ in ahead):
            return None
        queued = sum(c * rates[name] for name, c in ahead)
        return queued / max(1, devices) + cost * rates[task]
