"""Slash-command parameters from the tasks' option declarations (`models/options.py`)."""

from __future__ import annotations

from typing import Any

from discord import app_commands

from models.options import Option


def slash_range(option: Option) -> Any:
    """`app_commands.Range` for a declared option, so Discord's own UI enforces its range."""
    return app_commands.Range[option.kind, option.lo, option.hi]


def descriptions(**options: Option) -> dict[str, str]:
    """`app_commands.describe` texts: each parameter's declared description, range and default."""
    return {parameter: option.help() for parameter, option in options.items()}
