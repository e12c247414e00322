"""The batch queue: jobs waiting for a device, served fairly, and which of them form the next batch.

Servers take turns (round-robin), and so do people within a server; one person's jobs keep
their order. So one server's burst cannot starve another server, nor one person their
neighbours: a newcomer waits for at most one job of each party ahead of them per turn.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import Generic, Protocol, TypeVar


class Waiting(Protocol):
    """What the queue needs of a job: who asked, and what it can share a batch with."""

    @property
    def guild(self) -> str: ...  # the party that takes turns (a server, or a person outside servers)
    @property
    def user(self) -> str: ...
    @property
    def key(self) -> Hashable: ...  # equal keys may share a batch
    @property
    def cost(self) -> float: ...  # megapixel-equivalents, for the batch budget


T = TypeVar("T", bound=Waiting)


def _interleave(sequences: Iterable[list[T]]) -> Iterator[T]:
    """Round-robin: the first of each, then the second of each, and so on."""
    pending = [s for s in sequences if s]
    for turn in range(max(map(len, pending), default=0)):
        yield from (s[turn] for s in pending if turn < len(s))


class FairQueue(Generic[T]):
    """Jobs in turn order. A party's turn comes round again only after every other party's."""

    def __init__(self) -> None:
        self._parties: dict[str, dict[str, deque[T]]] = {}  # dict order is turn order, servers and people alike

    def __len__(self) -> int:
        return sum(len(jobs) for people in self._parties.values() for jobs in people.values())

    def __bool__(self) -> bool:
        return bool(self._parties)

    def push(self, item: T) -> None:
        self._parties.setdefault(item.guild, {}).setdefault(item.user, deque()).append(item)

    def remove(self, item: T) -> bool:
        """Take a job out without it counting as a turn (cancelled, timed out); False if it was not queued."""
        people = self._parties.get(item.guild, {})
        jobs = people.get(item.user)
        if jobs is None or item not in jobs:
            return False
        jobs.remove(item)
        self._prune(item)
        return True

    def take(self, served: list[T]) -> None:
        """Remove jobs handed to a device; their server and person go to the back of the turn order."""
        for item in served:
            people = self._parties.pop(item.guild)
            jobs = people.pop(item.user)
            jobs.remove(item)
            people[item.user] = jobs
            self._parties[item.guild] = people
            self._prune(item)

    def _prune(self, item: T) -> None:
        people = self._parties[item.guild]
        if not people[item.user]:
            del people[item.user]
        if not people:
            del self._parties[item.guild]

    def order(self) -> list[T]:
        """Every waiting job in the order it will be served (before batching)."""
        return list(_interleave([list(_interleave([list(jobs) for jobs in people.values()]))
                                 for people in self._parties.values()]))


def next_batch(order: list[T], max_batch: int, max_cost: float, room: Callable[[str], int]) -> tuple[list[T], bool]:
    """The first job whose party has room to run, and the jobs after it that can join its batch.

    Mates share the head's key and keep the queue's order, up to `max_batch` jobs and `max_cost`
    in total (the head alone may exceed it); `room(guild)` is how many more of a party's jobs may
    run now. Returns the batch and whether it is full (no point waiting for company).
    """
    left: dict[str, int] = {}
    batch: list[T] = []
    total = 0.0
    for item in order:
        if left.setdefault(item.guild, room(item.guild)) <= 0 or batch and item.key != batch[0].key:
            continue
        if batch and total + item.cost > max_cost:
            return batch, True
        batch.append(item)
        total += item.cost
        left[item.guild] -= 1
        if len(batch) == max_batch:
            return batch, True
    return batch, False
