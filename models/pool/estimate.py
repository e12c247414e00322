"""Queue-wait estimates from measured speeds: how long until a job would be done."""

from __future__ import annotations

from collections.abc import Iterable


class WaitEstimator:
    """Seconds per unit of cost, per task, learnt from finished batches (a moving average)."""

    def __init__(self, smoothing: float = 0.3) -> None:
        self.smoothing = smoothing
        self.seconds_per_cost: dict[str, float] = {}

    def learn(self, task: str, cost: float, seconds: float) -> None:
        rate = seconds / (cost or 1e-6)
        old = self.seconds_per_cost.get(task)
        self.seconds_per_cost[task] = rate if old is None else (1 - self.smoothing) * old + self.smoothing * rate

    def wait_s(self, task: str, cost: float, ahead: Iterable[tuple[str, float]], devices: int = 1) -> float | None:
        """Seconds until a job of `cost` is done behind the (task, cost) jobs `ahead`, shared over
        `devices`; None until every task involved has been measured once."""
        rates = self.seconds_per_cost
        ahead = list(ahead)
        if task not in rates or any(name not in rates for name, _ in ahead):
            return None
        queued = sum(c * rates[name] for name, c in ahead)
        return queued / max(1, devices) + cost * rates[task]
