"""A task's options, declared once: name, type, range or choices, default and description.

The task reads and checks a job's options with them; the slash commands (`bot/commands/`),
the command line (`models/cli.py`) and /help are built from the same declarations, so a range
or a default is written in exactly one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from models.errors import UserError


class OptionError(UserError):
    """An option is missing or out of range; the message names it."""


@dataclass(frozen=True)
class Option:
    name: str  # the key in Job.options
    kind: type  # int, float, bool or str
    default: Any  # None: optional, absent unless given
    description: str  # what it does, for people: slash command, --help, /help
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] = ()

    def span(self) -> str:
        """'0-1', '1-16' or 'grid, variations, morph': the accepted values in words."""
        if self.choices:
            return ", ".join(self.choices)
        return f"{_num(self.lo)}-{_num(self.hi)}" if self.lo is not None and self.hi is not None else ""

    def help(self) -> str:
        """The description with range and default, as the slash command and --help show it."""
        if self.kind is bool:
            return self.description
        default = "" if self.default is None else f"default {_num(self.default)}"
        parts = [part for part in (self.span(), default) if part]
        return f"{self.description} ({', '.join(parts)})" if parts else self.description

    def read(self, options: Mapping[str, Any]) -> Any:
        """The option's value from a job, checked; the default when absent. Raises OptionError."""
        value = options.get(self.name, self.default)
        if value is None or self.kind is bool:
            return value if value is None else bool(value)
        if self.choices:
            if str(value) not in self.choices:
                raise OptionError(f"{self.name} must be one of {self.span()}.")
            return str(value)
        if self.kind is str:
            return value  # free-form (a preset blend): the task parses it
        if self.kind is int:
            return self._in_range(_whole(value, self))
        return self._in_range(_number(value, self))

    def _in_range(self, value: float) -> Any:
        if self.lo is not None and self.hi is not None and not self.lo <= value <= self.hi:
            raise OptionError(f"{self.name} must be between {_num(self.lo)} and {_num(self.hi)}, not {_num(value)}.")
        return value


def _num(value: Any) -> str:
    """1, 0.8, 9007199254740991: whole numbers in full, others as short as they go."""
    return f"{value:g}" if isinstance(value, float) and not value.is_integer() else str(int(value)) if isinstance(value, int | float) else str(value)


def _whole(value: Any, option: Option) -> int:
    if isinstance(value, bool) or not isinstance(value, int) and not (isinstance(value, str) and value.lstrip("-").isdigit()):
        raise OptionError(f"{option.name} must be a whole number between {option.span().replace('-', ' and ', 1)}.")
    return int(value)


def _number(value: Any, option: Option) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise OptionError(f"{option.name} must be a number between {option.span().replace('-', ' and ', 1)}.") from None
